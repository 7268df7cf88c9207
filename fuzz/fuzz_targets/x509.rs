//! The certificate fields ringmesh reads itself (`x509::validity`,
//! `x509::dns_names`) on arbitrary bytes: a peer's certificate reaches
//! `dns_names` after verification, a file's reaches `validity`.
//!
//! Checks: never panics; a certificate whose validity reads has
//! `not_before` and `not_after` within the formats' range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_identity::x509;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = x509::validity(data) {
        let _ = v.not_after.duration_since(v.not_before);
    }
    if let Ok(names) = x509::dns_names(data) {
        for n in names {
            let _ = ringmesh_identity::Name::parse(&n);
        }
    }
});
