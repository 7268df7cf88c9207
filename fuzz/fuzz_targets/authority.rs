//! `Authority::parse` on arbitrary UTF-8 text.
//!
//! Checks: never panics; on `Ok` the value is in normal form (re-parsing
//! `as_str()` gives an equal value, `Display` is `as_str()`), `host()` and
//! `port()` say the same as `as_str()` (`host:port`, or `[host]:port` for an
//! IPv6 literal) with a non-empty lowercase host, and an IP literal
//! round-trips through `socket_addr()`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_discovery::Authority;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(authority) = Authority::parse(text) else {
        return;
    };
    let again = Authority::parse(authority.as_str());
    assert_eq!(again.as_ref(), Ok(&authority), "{text:?} is not normalised");
    assert_eq!(authority.to_string(), authority.as_str());

    let (host, port) = (authority.host(), authority.port());
    let joined = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    assert_eq!(
        authority.as_str(),
        joined,
        "{text:?}: host() {host:?} and port() {port} disagree with as_str()"
    );
    assert!(!host.is_empty(), "{text:?}: empty host()");
    assert!(
        !host.bytes().any(|b| b.is_ascii_uppercase()),
        "{text:?}: host() {host:?} is not lowercase"
    );
    if let Some(addr) = authority.socket_addr() {
        assert_eq!(addr.port(), port);
        assert_eq!(Authority::from_addr(addr), authority);
    }
});
