//! The transport between the HTTP/1 codec and the upstream pool: response
//! after response on one connection, as `engine/src/http1.rs` reads them —
//! parse a head from the buffered bytes, drop it, scan the body from what
//! follows in reads of a fuzzer-chosen size, keep what is left for the
//! next response when the connection can be reused. Each response is also
//! written for the client as the engine does and parsed again.
//!
//! Input: a selector byte per exchange comes from the first bytes (request
//! method and read size), the rest is what the upstream sent.
//!
//! Checks: never panics; a scan never consumes more than it was given;
//! the bytes consumed by heads and bodies never exceed the stream; a
//! Content-Length body ends after exactly its length; an empty body (HEAD,
//! 1xx, 204, 304) consumes nothing; only a reusable response (its body
//! delimited, not close-delimited, not a tunnel) lets the next one be read;
//! the head written for the client parses again to the same status and
//! framing, with at most one Content-Length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_protocols::http1::{
    write_response_head, BodyFraming, BodyScanner, Limits, Method, RequestContext, ResponseHead,
    WriteOptions,
};

const EXCHANGES: usize = 8;

fuzz_target!(|data: &[u8]| {
    if data.len() < EXCHANGES {
        return;
    }
    let (selectors, stream) = data.split_at(EXCHANGES);
    let limits = Limits::default().with_max_head_bytes(4096);
    let mut head = ResponseHead::new();
    let mut again = ResponseHead::new();
    let mut out = Vec::new();
    // What the engine keeps of the upstream's bytes (`ubuf`).
    let mut pos = 0;
    for &sel in selectors {
        let method = match sel % 3 {
            0 => Method::Get,
            1 => Method::Head,
            _ => Method::Post,
        };
        let ctx = RequestContext {
            method,
            upgrade: false,
        };
        let step = usize::from(sel / 3).max(1);
        // Response heads: interim ones first, then the final one.
        let framing = loop {
            head.clear();
            let n = match head.parse(&stream[pos..], ctx, &limits) {
                Ok(Some(n)) => n,
                // Incomplete or refused: the engine answers 502 and drops
                // the connection.
                _ => return,
            };
            assert!(n > 0 && n <= stream.len() - pos, "head of {n} bytes");
            pos += n;
            check_written(&head, &mut again, &mut out, ctx, &limits);
            if !head.is_interim() {
                break if method == Method::Head {
                    BodyFraming::Empty
                } else {
                    head.framing()
                };
            }
        };
        let mut scanner = BodyScanner::new(framing, &limits);
        let start = pos;
        let mut done = scanner.is_done();
        // Reads of `step` bytes appended to what the scanner left unread
        // (a chunk-size line cut by a read), until the body ends or EOF.
        let mut end = pos;
        while !done && end < stream.len() {
            end = (end + step).min(stream.len());
            let input = &stream[pos..end];
            let p = match scanner.scan(input) {
                Ok(p) => p,
                Err(_) => return,
            };
            assert!(
                p.consumed <= input.len(),
                "consumed {} of {}",
                p.consumed,
                input.len()
            );
            pos += p.consumed;
            done = p.done;
        }
        assert!(pos <= stream.len());
        match framing {
            BodyFraming::ContentLength(n) if done => {
                assert_eq!(
                    (pos - start) as u64,
                    n,
                    "Content-Length body of another length"
                )
            }
            BodyFraming::Empty => {
                assert!(done && pos == start, "an empty body consumed bytes")
            }
            BodyFraming::CloseDelimited | BodyFraming::Tunnel => {
                assert!(!done, "a close-delimited body ended");
                return; // the connection ends with it
            }
            _ => {}
        }
        if !done || !head.keep_alive() {
            return;
        }
    }
});

/// The head as the engine forwards it to the client parses again to the
/// same status and framing, with one `Content-Length` at most.
fn check_written(
    head: &ResponseHead,
    again: &mut ResponseHead,
    out: &mut Vec<u8>,
    ctx: RequestContext,
    limits: &Limits,
) {
    out.clear();
    if write_response_head(head, out, &WriteOptions::default()).is_err() {
        return;
    }
    again.clear();
    let big = Limits::default().with_max_head_bytes(limits.max_head_bytes() * 2 + 1024);
    match again.parse(out, ctx, &big) {
        Ok(Some(n)) => assert_eq!(n, out.len(), "written head parsed short"),
        other => panic!(
            "written head does not parse: {other:?}\n{:?}",
            String::from_utf8_lossy(out)
        ),
    }
    assert_eq!(again.status(), head.status());
    assert_eq!(
        again.framing(),
        head.framing(),
        "{:?}",
        String::from_utf8_lossy(out)
    );
    let lengths = again
        .headers()
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .count();
    assert!(lengths <= 1, "{lengths} Content-Length fields written");
}
