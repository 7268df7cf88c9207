//! The control plane's messages as ringmesh's control core takes them in:
//! a Destination `Update` applied to an endpoint set (a fresh stream and
//! a running one; a name and an `ip:port` target), a `DestinationProfile`
//! turned into routes (regexes compiled under a size limit) and traffic
//! split, an inbound `Server` turned into authorizations and checked.
//!
//! Input: the first byte picks the message; the rest is its protobuf.
//!
//! Checks: never panics, never hangs (a hostile control plane may send
//! anything the protobuf decoder accepts).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringmesh_engine::fuzzing::control_plane_message(data);
});
