//! `HostsFile::parse` on arbitrary UTF-8 text, then `lookup` of every
//! whitespace-separated token.
//!
//! Checks: never panics; a lookup never returns the same address twice; it
//! ignores ASCII case and one trailing dot; and every name on a line that
//! starts with an IP address finds that address (the file's own promise,
//! checked against a plain reading of each line).
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use ringmesh_discovery::hosts::HostsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let hosts = HostsFile::parse(text);
    for token in text.split_whitespace() {
        let found = hosts.lookup(token);
        for (i, ip) in found.iter().enumerate() {
            assert!(!found[..i].contains(ip), "{token:?}: {ip} returned twice");
        }
        assert_eq!(
            hosts.lookup(&token.to_ascii_uppercase()),
            found,
            "{token:?}: case matters"
        );
        if !token.ends_with('.') {
            assert_eq!(
                hosts.lookup(&format!("{token}.")),
                found,
                "{token:?}: a trailing dot matters"
            );
        }
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in fields.filter(|n| *n != ".") {
            assert!(
                hosts.lookup(name).contains(&ip),
                "{name:?} does not find {ip} from line {line:?}"
            );
        }
    }
    assert_eq!(hosts.is_empty(), hosts == HostsFile::default());
});
