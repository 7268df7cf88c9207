//! `Config::from_source` with arbitrary values for the known variables.
//!
//! The input is a list of (variable, value) pairs; the variable is an index
//! into every name `engine/src/config.rs` reads, so each run sets a mix of
//! them (a later pair for the same variable wins).
//!
//! Checks: never panics; the result does not depend on anything but the
//! input; an `Err` has at least one problem and each names the variable it is
//! about; an `Ok` holds only what validation promises (at least one core, a
//! buffer size in range, min TTL ≤ max TTL, no two listeners on one address,
//! forward targets with a port).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringmesh_engine::config::{self, Config};

const VARS: [&str; 18] = [
    config::LOG,
    config::CORES,
    config::IO_DRIVER,
    config::OUTBOUND_LISTEN_ADDR,
    config::INBOUND_LISTEN_ADDR,
    config::OUTBOUND_CONNECT_TIMEOUT,
    config::INBOUND_CONNECT_TIMEOUT,
    config::DISCOVERY_STATIC,
    config::DISCOVERY_STATIC_POLL_INTERVAL,
    config::TCP_FORWARD,
    config::INBOUND_TARGET,
    config::TCP_IDLE_TIMEOUT,
    config::TCP_BUFFER_SIZE,
    config::SHUTDOWN_GRACE_PERIOD,
    config::DNS_MIN_TTL,
    config::DNS_MAX_TTL,
    config::DNS_SERVERS,
    // Not one of ours: must be ignored.
    "RINGMESH_UNKNOWN",
];

#[derive(Debug, Arbitrary)]
struct Input {
    vars: Vec<(u8, String)>,
}

fuzz_target!(|input: Input| {
    let env: BTreeMap<&str, &str> = input
        .vars
        .iter()
        .map(|(i, v)| (VARS[usize::from(*i) % VARS.len()], v.as_str()))
        .collect();
    let result = Config::from_source(&env);
    assert_eq!(
        format!("{result:?}"),
        format!("{:?}", Config::from_source(&env)),
        "not deterministic"
    );
    let c = match result {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            for p in &e.problems {
                assert!(
                    VARS.iter().any(|v| p.contains(v)),
                    "problem names no variable: {p}"
                );
            }
            return;
        }
    };
    assert_ne!(c.cores, Some(0));
    assert!((1024..=16 << 20).contains(&c.tcp.buffer_size));
    assert!(c.discovery.dns.min_ttl <= c.discovery.dns.max_ttl);
    let mut listeners: Vec<_> = [c.outbound.listen, c.inbound.listen]
        .into_iter()
        .flatten()
        .chain(c.forwards.iter().map(|f| f.listen))
        .filter(|a| a.port() != 0)
        .collect();
    let before = listeners.len();
    listeners.sort();
    listeners.dedup();
    assert_eq!(listeners.len(), before, "two listeners share an address");
    for f in &c.forwards {
        assert_ne!(f.target.port(), 0, "forward to port 0: {}", f.target);
    }
    if let Some(log) = env.get(config::LOG) {
        assert_eq!(c.log, log.trim());
    }
    if c.discovery.static_file.is_some() {
        assert!(env
            .get(config::DISCOVERY_STATIC)
            .is_some_and(|v| !v.trim().is_empty()));
    }
});
