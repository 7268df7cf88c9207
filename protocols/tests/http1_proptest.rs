//! Property tests for the HTTP/1 codec: the chunked scanner finds exactly
//! the end of any valid body however it is split, parsing never panics, and
//! a written head parses back to the same request minus hop-by-hop fields.

use proptest::collection::vec;
use proptest::prelude::*;
use ringmesh_protocols::http1::{
    write_request_head, write_response_head, BodyFraming, ChunkedScanner, Limits, Method,
    RequestContext, RequestHead, ResponseHead, WriteOptions,
};

const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn token(max: usize) -> impl Strategy<Value = String> {
    vec(proptest::sample::select(TCHARS), 1..=max)
        .prop_map(|b| String::from_utf8(b).expect("tchars are ASCII"))
}

/// A field value as httparse hands it back: visible text with inner
/// spaces, no leading or trailing whitespace.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[!-~]([ -~]{0,20}[!-~])?",]
}

#[derive(Debug, Clone)]
struct Chunk {
    data: Vec<u8>,
    leading_zeros: usize,
    upper: bool,
    extension: Option<String>,
}

fn extension() -> impl Strategy<Value = String> {
    prop_oneof![
        token(8).prop_map(|n| format!(";{n}")),
        (token(8), token(8)).prop_map(|(n, v)| format!(";{n}={v}")),
        (token(8), "[ !#-\\[\\]-~]{0,10}").prop_map(|(n, v)| format!(" ;{n}=\"{v}\"")),
        (token(4), token(4), token(4)).prop_map(|(a, b, c)| format!(";{a};{b}={c}")),
    ]
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (
        vec(any::<u8>(), 1..80),
        0usize..4,
        any::<bool>(),
        proptest::option::of(extension()),
    )
        .prop_map(|(data, leading_zeros, upper, extension)| Chunk {
            data,
            leading_zeros,
            upper,
            extension,
        })
}

fn encode(chunks: &[Chunk], last_ext: &Option<String>, trailers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let size = if c.upper {
            format!("{:X}", c.data.len())
        } else {
            format!("{:x}", c.data.len())
        };
        out.extend(std::iter::repeat_n(b'0', c.leading_zeros));
        out.extend_from_slice(size.as_bytes());
        if let Some(ext) = &c.extension {
            out.extend_from_slice(ext.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&c.data);
        out.extend_from_slice(b"\r\n");
    }
    out.push(b'0');
    if let Some(ext) = last_ext {
        out.extend_from_slice(ext.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Feeds `input` in pieces cut at `cuts`; returns where the scanner said
/// the body ended, checking it consumes everything before that.
fn scan_in_pieces(input: &[u8], cuts: &[usize]) -> Option<usize> {
    let mut scanner = ChunkedScanner::new(&Limits::default());
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut start = 0;
    for end in points {
        let piece = &input[start..end];
        let progress = scanner.scan(piece).expect("valid body");
        if progress.done {
            return Some(start + progress.consumed);
        }
        assert_eq!(progress.consumed, piece.len());
        start = end;
    }
    None
}

fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
}

/// Header names the generated requests must not use by accident: they
/// would change the request's framing or validity.
fn reserved(name: &str) -> bool {
    hop_by_hop(name)
        || ["host", "content-length", "expect", "x-hop"]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
}

fn owned(head: &RequestHead) -> Vec<(String, Vec<u8>)> {
    head.headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunked_scanner_finds_the_end(
        chunks in vec(chunk(), 0..6),
        last_ext in proptest::option::of(extension()),
        trailers in vec((token(12), field_value()), 0..4),
        next in vec(any::<u8>(), 0..40),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let body = encode(&chunks, &last_ext, &trailers);
        let mut input = body.clone();
        input.extend_from_slice(&next);
        prop_assert_eq!(scan_in_pieces(&input, &cuts), Some(body.len()));
        // And every strict prefix is not yet the end.
        let mut scanner = ChunkedScanner::new(&Limits::default());
        let progress = scanner.scan(&body[..body.len() - 1]).expect("valid prefix");
        prop_assert!(!progress.done);
        prop_assert_eq!(progress.consumed, body.len() - 1);
    }

    #[test]
    fn chunked_scanner_never_panics(input in vec(any::<u8>(), 0..256), cuts in vec(any::<usize>(), 0..4)) {
        let mut scanner = ChunkedScanner::new(&Limits::default());
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let mut start = 0;
        for end in points {
            match scanner.scan(&input[start..end]) {
                Ok(p) => {
                    prop_assert!(p.consumed <= end - start);
                    if p.done { break; }
                }
                Err(_) => break,
            }
            start = end;
        }
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(input in vec(any::<u8>(), 0..512)) {
        let limits = Limits::default();
        let mut req = RequestHead::new();
        if let Ok(Some(n)) = req.parse(&input, &limits) {
            prop_assert!(n <= input.len());
            let mut out = Vec::new();
            write_request_head(&req, &mut out, &WriteOptions::default()).expect("no extra headers");
        }
        let mut res = ResponseHead::new();
        for method in [Method::Get, Method::Head, Method::Connect] {
            for upgrade in [false, true] {
                if let Ok(Some(n)) = res.parse(&input, RequestContext { method, upgrade }, &limits) {
                    prop_assert!(n <= input.len());
                    let mut out = Vec::new();
                    write_response_head(&res, &mut out, &WriteOptions::default()).expect("no extra headers");
                }
            }
        }
    }

    #[test]
    fn parsing_mutated_requests_never_panics(
        tail in vec(prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b": ".to_vec()),
            Just(b"Transfer-Encoding".to_vec()),
            Just(b"Content-Length".to_vec()),
            Just(b"Connection".to_vec()),
            Just(b"Host".to_vec()),
            Just(b"chunked".to_vec()),
            Just(b"close, upgrade".to_vec()),
            vec(any::<u8>(), 0..6),
        ], 0..24),
        start in prop_oneof![
            Just(&b"GET / HTTP/1.1\r\n"[..]),
            Just(&b"CONNECT a:1 HTTP/1.1\r\n"[..]),
            Just(&b"GET http://a:1/ HTTP/1.0\r\n"[..]),
            Just(&b"HTTP/1.1 200 OK\r\n"[..]),
        ],
    ) {
        let mut input = start.to_vec();
        for t in tail {
            input.extend_from_slice(&t);
        }
        let limits = Limits::default();
        let mut req = RequestHead::new();
        if let Ok(Some(_)) = req.parse(&input, &limits) {
            let mut out = Vec::new();
            write_request_head(&req, &mut out, &WriteOptions::default()).expect("no extra headers");
            // What we write parses again.
            let mut again = RequestHead::new();
            prop_assert!(matches!(again.parse(&out, &limits), Ok(Some(n)) if n == out.len()));
        }
        let mut res = ResponseHead::new();
        let ctx = RequestContext { method: Method::Get, upgrade: false };
        if let Ok(Some(_)) = res.parse(&input, ctx, &limits) {
            let mut out = Vec::new();
            write_response_head(&res, &mut out, &WriteOptions::default()).expect("no extra headers");
            let mut again = ResponseHead::new();
            prop_assert!(matches!(again.parse(&out, ctx, &limits), Ok(Some(n)) if n == out.len()));
        }
    }

    #[test]
    fn written_heads_parse_back_without_hop_by_hop(
        method in proptest::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"][..]),
        path in "(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,12}){1,4}(\\?[a-z0-9=&]{0,12})?",
        absolute in proptest::option::of(("[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5})?", proptest::option::of(1u16..))),
        headers in vec((token(16), field_value()), 0..12),
        hop in vec(proptest::sample::select(&[
            "Connection: keep-alive, X-Hop",
            "X-Hop: secret",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Upgrade: websocket",
            "connection: Upgrade",
        ][..]), 0..4),
        host_case in proptest::sample::select(&["Host", "host", "HOST"][..]),
        chunked in any::<bool>(),
    ) {
        let headers: Vec<(String, String)> = headers.into_iter().filter(|(n, _)| !reserved(n)).collect();
        let (target, authority) = match &absolute {
            Some((host, port)) => {
                let auth = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
                (format!("http://{auth}{path}"), auth)
            }
            None => (path.clone(), "origin.example".to_string()),
        };
        let mut raw = format!("{method} {target} HTTP/1.1\r\n{host_case}: origin.example\r\n");
        for (n, v) in &headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        for h in &hop {
            raw.push_str(h);
            raw.push_str("\r\n");
        }
        if chunked {
            raw.push_str("Transfer-Encoding: chunked\r\n");
        }
        raw.push_str("\r\n");

        let limits = Limits::default();
        let mut head = RequestHead::new();
        let n = head.parse(raw.as_bytes(), &limits).expect("valid request").expect("complete");
        prop_assert_eq!(n, raw.len());
        let mut out = Vec::new();
        write_request_head(&head, &mut out, &WriteOptions::default()).expect("no extra headers");

        let mut again = RequestHead::new();
        let m = again.parse(&out, &limits).expect("written head parses").expect("complete");
        prop_assert_eq!(m, out.len());
        prop_assert_eq!(again.method_str(), method);
        prop_assert_eq!(again.target(), path.as_str());
        prop_assert_eq!(again.version(), ringmesh_protocols::http1::Version::Http11);
        prop_assert_eq!(again.framing(), if chunked { BodyFraming::Chunked } else { BodyFraming::Empty });
        prop_assert_eq!(again.authority().map(|a| a.raw.to_string()), Some(authority.clone()));
        prop_assert_eq!(again.upgrade(), None);

        // Same fields, same order, same name case, minus the hop-by-hop ones
        // (and X-Hop when Connection named it); Host replaced for
        // absolute-form; Transfer-Encoding written again at the end.
        let mut expected: Vec<(String, Vec<u8>)> = vec![(host_case.to_string(), authority.into_bytes())];
        expected.extend(headers.iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())));
        let x_hop_named = hop.contains(&"Connection: keep-alive, X-Hop");
        for h in &hop {
            let (n, v) = h.split_once(": ").expect("name: value");
            let dropped = hop_by_hop(n) || (n == "X-Hop" && x_hop_named);
            if !dropped {
                expected.push((n.to_string(), v.as_bytes().to_vec()));
            }
        }
        if chunked {
            expected.push(("Transfer-Encoding".to_string(), b"chunked".to_vec()));
        }
        prop_assert_eq!(owned(&again), expected);
    }

    #[test]
    fn every_prefix_of_a_head_is_partial(
        headers in vec((token(10), field_value()), 0..6),
        body in vec(any::<u8>(), 0..20),
    ) {
        let mut raw = b"POST /p HTTP/1.1\r\nHost: h\r\n".to_vec();
        for (n, v) in headers.iter().filter(|(n, _)| !reserved(n)) {
            raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        let head_len = raw.len();
        raw.extend_from_slice(&body);
        let limits = Limits::default();
        let mut head = RequestHead::new();
        for end in 0..head_len {
            prop_assert_eq!(head.parse(&raw[..end], &limits), Ok(None));
        }
        prop_assert_eq!(head.parse(&raw, &limits), Ok(Some(head_len)));
        prop_assert_eq!(head.framing(), BodyFraming::ContentLength(body.len() as u64));
    }
}
