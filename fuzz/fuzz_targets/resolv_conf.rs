//! `DnsConfig::from_resolv_conf` on arbitrary UTF-8 text.
//!
//! Checks: never panics, and whatever the text says the result is usable and
//! within glibc's limits: 1 to 3 servers on port 53, `ndots` ≤ 15, 1 to 5
//! attempts, a timeout of 1 to 30 s, search domains non-empty, lowercase,
//! without spaces or a trailing dot; the TTL bounds (not resolv.conf's
//! business) keep their defaults.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringmesh_discovery::dns::DnsConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = DnsConfig::from_resolv_conf(text);
    assert!(!cfg.servers.is_empty(), "no nameserver");
    assert!(cfg.servers.len() <= 3, "more than MAXNS servers");
    assert!(
        cfg.servers.iter().all(|s| s.port() == 53),
        "{:?}",
        cfg.servers
    );
    assert!(cfg.ndots <= 15, "ndots {}", cfg.ndots);
    assert!((1..=5).contains(&cfg.attempts), "attempts {}", cfg.attempts);
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(30)).contains(&cfg.timeout),
        "timeout {:?}",
        cfg.timeout
    );
    for domain in &cfg.search {
        assert!(!domain.is_empty(), "empty search domain");
        assert!(
            !domain.ends_with('.'),
            "search domain {domain:?} ends in a dot"
        );
        assert!(
            !domain.chars().any(char::is_whitespace),
            "search domain {domain:?} has whitespace"
        );
        assert!(
            !domain.bytes().any(|b| b.is_ascii_uppercase()),
            "search domain {domain:?} is not lowercase"
        );
    }
    let defaults = DnsConfig::default();
    assert_eq!(cfg.min_ttl, defaults.min_ttl);
    assert_eq!(cfg.max_ttl, defaults.max_ttl);
});
