//! HTTP/1 response parsing for each kind of request (GET, HEAD, CONNECT,
//! upgrade), then body scanning fed in fuzzer-sized pieces.
//!
//! Checks: never panics; feeding the body in pieces gives the same end,
//! the same content bytes and the same trailer lines as feeding it whole,
//! each line one named field;
//! consumed never exceeds what was fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_protocols::http1::{
    trailer_fields, BodyScanner, Limits, Method, RequestContext, ResponseHead,
};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (method, upgrade) = match sel % 4 {
        0 => (Method::Get, false),
        1 => (Method::Head, false),
        2 => (Method::Connect, false),
        _ => (Method::Get, true),
    };
    let ctx = RequestContext { method, upgrade };
    let limits = Limits::default().with_max_head_bytes(4096);
    let mut head = ResponseHead::new();
    let n = match head.parse(rest, ctx, &limits) {
        Ok(Some(n)) => n,
        _ => return,
    };
    let body = &rest[n..];
    let framing = if method == Method::Head {
        ringmesh_protocols::http1::BodyFraming::Empty
    } else {
        head.framing()
    };
    let mut whole = BodyScanner::new(framing, &limits);
    let (mut whole_data, mut whole_trailers) = (Vec::new(), Vec::new());
    let whole_end = whole
        .scan_parts(
            body,
            |r| whole_data.extend_from_slice(&body[r]),
            |r| whole_trailers.extend_from_slice(&body[r]),
        )
        .ok()
        .map(|p| (p.consumed, p.done));
    // The same bytes in pieces of `sel`-derived size.
    let step = usize::from(sel / 4).max(1);
    let mut pieces = BodyScanner::new(framing, &limits);
    let mut consumed = 0;
    let mut done = false;
    // An empty body is fed once, as an empty slice.
    let chunks: Vec<&[u8]> = if body.is_empty() {
        vec![body]
    } else {
        body.chunks(step).collect()
    };
    let (mut data, mut trailers) = (Vec::new(), Vec::new());
    for chunk in chunks {
        let scanned = pieces.scan_parts(
            chunk,
            |r| data.extend_from_slice(&chunk[r]),
            |r| trailers.extend_from_slice(&chunk[r]),
        );
        match scanned {
            Ok(p) => {
                assert!(p.consumed <= chunk.len());
                consumed += p.consumed;
                if p.done {
                    done = true;
                    break;
                }
            }
            Err(_) => {
                assert!(
                    whole_end.is_none() || whole_end.is_some_and(|(_, d)| !d),
                    "pieces failed where whole did not"
                );
                return;
            }
        }
    }
    if let Some((c, d)) = whole_end {
        if d {
            assert!(
                done && consumed == c,
                "pieces ended at {consumed} ({done}), whole at {c}"
            );
            assert_eq!(data, whole_data, "content bytes differ in pieces");
            assert_eq!(trailers, whole_trailers, "trailer lines differ in pieces");
            // Every validated trailer line is one field with a name.
            let lines = trailers.split(|&b| b == b'\n').count() - 1;
            let fields: Vec<_> = trailer_fields(&trailers).collect();
            assert_eq!(fields.len(), lines, "a field per trailer line");
            assert!(fields.iter().all(|(name, _)| !name.is_empty()));
        }
    }
});
