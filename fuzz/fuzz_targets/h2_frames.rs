//! The HTTP/2 attack defences' frame scanner on arbitrary client bytes.
//!
//! Checks: never panics, and the verdict does not depend on how the bytes
//! were split into reads (the first byte chooses the split size).
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use ringmesh_protocols::h2guard::{FrameGuard, GuardLimits, PREFACE};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(rest);
    let now = Instant::now();
    let whole = {
        let mut g = FrameGuard::new(GuardLimits::default());
        let mut b = bytes.clone();
        g.feed(&mut b, now).map(|_| g.last_stream_id())
    };
    let mut g = FrameGuard::new(GuardLimits::default());
    let mut split_result = Ok(());
    for chunk in bytes.chunks_mut(usize::from(split).max(1)) {
        split_result = g.feed(chunk, now);
        if split_result.is_err() {
            break;
        }
    }
    assert_eq!(whole, split_result.map(|_| g.last_stream_id()));
});
