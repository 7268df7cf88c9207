//! Protocol detection on arbitrary first bytes.
//!
//! Checks: never panics, and the verdict is stable: once a prefix decides,
//! every longer prefix gives the same answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_protocols::detect::{detect, Detection};

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for i in 0..=data.len().min(256) {
        match (detect(&data[..i]), decided) {
            (Detection::Decided(p), None) => decided = Some(p),
            (Detection::Decided(p), Some(q)) => assert_eq!(p, q),
            (Detection::NeedMore, Some(q)) => panic!("undecided again after {q:?}"),
            (Detection::NeedMore, None) => {}
        }
    }
});
