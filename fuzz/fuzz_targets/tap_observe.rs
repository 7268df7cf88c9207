//! Tap's `ObserveRequest` as ringmesh's tap server takes it in: decoded,
//! checked and compiled into a match (nesting and size bounded), then
//! evaluated against a request.
//!
//! Input: the request's protobuf.
//!
//! Checks: never panics, never hangs, never recurses without bound (a tap
//! client may send anything the protobuf decoder accepts).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringmesh_engine::fuzzing::tap_observe(data);
});
