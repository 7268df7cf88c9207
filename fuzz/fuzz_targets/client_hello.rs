//! `client_hello::parse` on arbitrary bytes (what any inbound client may
//! send first).
//!
//! Checks: never panics; a complete hello stays complete with the same
//! server name when more bytes follow it (the parser reads one message);
//! a server name is lowercase ASCII without a trailing dot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_protocols::client_hello::{parse, Hello};

fuzz_target!(|data: &[u8]| {
    let first = parse(data);
    if let Hello::Complete { sni } = &first {
        let mut more = data.to_vec();
        more.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        assert_eq!(
            parse(&more),
            first,
            "bytes after a whole hello changed the answer"
        );
        if let Some(name) = sni {
            assert!(name.is_ascii() && !name.ends_with('.'), "{name:?}");
            assert_eq!(name, &name.to_ascii_lowercase());
        }
    }
});
