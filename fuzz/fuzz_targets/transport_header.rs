//! `transport_header::decode` on arbitrary bytes (what a meshed peer
//! writes after the TLS handshake), and encode/decode round trips.
//!
//! Checks: never panics; `Done` consumed no more than it was given and a
//! header re-encoded decodes to itself; `Incomplete(n)` asks for a number
//! of bytes that keeps the header within its size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_protocols::transport_header::{decode, Decoded, MAX_HEADER_LEN, PREFACE};

fuzz_target!(|data: &[u8]| {
    // Also try the bytes behind a valid preface, to reach the message.
    let mut prefaced = PREFACE.to_vec();
    prefaced.extend_from_slice(data);
    for input in [data, &prefaced[..]] {
        match decode(input) {
            Ok(Decoded::Done(h, used)) => {
                assert!(used <= input.len());
                let mut again = Vec::new();
                h.encode(&mut again);
                assert_eq!(decode(&again), Ok(Decoded::Done(h, again.len())));
            }
            Ok(Decoded::Incomplete(more)) => {
                assert!(more > 0);
                assert!(input.len() + more <= PREFACE.len() + 4 + MAX_HEADER_LEN);
            }
            Err(_) => {}
        }
    }
});
