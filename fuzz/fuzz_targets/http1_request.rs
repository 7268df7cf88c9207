//! HTTP/1 request parsing as the proxy drives it: a byte stream split at
//! fuzzer-chosen points, heads parsed, bodies scanned, pipelined requests
//! one after another.
//!
//! Checks: never panics; the parse of a prefix is "incomplete" or an error
//! exactly when the whole input would not give a head ending inside it;
//! a parsed head re-serialises and parses back to the same method, target
//! and framing; body scanning consumes no more than it is given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_protocols::http1::{
    write_request_head, BodyScanner, Limits, RequestHead, WriteOptions,
};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default().with_max_head_bytes(4096);
    let mut head = RequestHead::new();
    let mut again = RequestHead::new();
    let mut input = data;
    let mut out = Vec::new();
    for _ in 0..8 {
        let n = match head.parse(input, &limits) {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => return,
        };
        assert!(n <= input.len());
        // Every strict prefix of a complete head is incomplete (or an error
        // the full head would also give, which cannot be: it parsed).
        if n > 1 {
            assert!(
                matches!(again.parse(&input[..n - 1], &limits), Ok(None) | Err(_)),
                "a prefix parsed as a whole head"
            );
        }
        out.clear();
        // Written with the request's own version, as the proxy forwards it
        // (an HTTP/1.0 request may lack Host).
        let opts = WriteOptions {
            origin_form: false,
            version: head.version(),
            ..WriteOptions::default()
        };
        if write_request_head(&head, &mut out, &opts).is_ok() {
            match again.parse(&out, &limits) {
                Ok(Some(m)) => {
                    assert_eq!(m, out.len());
                    assert_eq!(again.method_str(), head.method_str());
                    assert_eq!(again.target(), head.target());
                    assert_eq!(again.framing(), head.framing());
                }
                other => panic!("re-serialised head does not parse: {other:?}"),
            }
        }
        input = &input[n..];
        let mut body = BodyScanner::new(head.framing(), &limits);
        match body.scan(input) {
            Ok(p) => {
                assert!(p.consumed <= input.len());
                if !p.done {
                    return;
                }
                input = &input[p.consumed..];
            }
            Err(_) => return,
        }
    }
});
