//! Protocol detection from the first bytes a client sends.
//!
//! Pure classification over a byte prefix, no I/O. The caller reads (with
//! the detect timeout) until [`detect`] decides; when the client stops
//! sending first, [`stalled`] says what the bytes so far are.
//!
//! The verdict follows what the bytes are, not whether they parse: bytes
//! that begin like an HTTP/1 request (a known method and a space, or any
//! method token whose first line carries `HTTP/`, optionally after empty
//! lines) are HTTP/1 even when malformed, so the HTTP/1 server validates
//! them (400 on garbage, 408 when the head stalls) instead of a relay
//! passing them through unchecked. Everything else that speaks first —
//! TLS, binary protocols, short text protocols such as redis `PING` or
//! memcached `get k` — stays opaque, as with linkerd2-proxy's httparse
//! probe.

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How far we look for the end of an HTTP/1 request line before deciding.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// A TLS ClientHello: passed through opaquely (ringmesh does not
    /// terminate application TLS).
    Tls,
    Opaque,
}

/// The verdict on a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    Decided(Protocol),
    /// The prefix is consistent with more than one answer: read more.
    NeedMore,
}

/// Classifies the bytes a client sent first.
pub fn detect(buf: &[u8]) -> Detection {
    use Detection::*;
    if buf.is_empty() {
        return NeedMore;
    }
    // HTTP/2 prior knowledge.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Decided(Protocol::Http2)
        } else {
            NeedMore
        };
    }
    // TLS record header: handshake (22), major version 3, minor 0..=4.
    if buf[0] == 0x16 {
        return match buf.get(1..3) {
            None if buf.len() == 2 && buf[1] != 3 => Decided(Protocol::Opaque),
            None => NeedMore,
            Some([3, minor]) if *minor <= 4 => Decided(Protocol::Tls),
            Some(_) => Decided(Protocol::Opaque),
        };
    }
    request_line(buf)
}

/// Methods whose token and a space are enough to call the bytes HTTP/1:
/// no opaque protocol this proxy meets opens with one of them followed by a
/// target. Other method tokens need `HTTP/` on their first line.
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PRI",
];

/// The longest method token considered.
const MAX_METHOD: usize = 32;

/// Classifies bytes that are neither the HTTP/2 preface nor TLS.
fn request_line(buf: &[u8]) -> Detection {
    use Detection::*;
    let opaque = Decided(Protocol::Opaque);
    // RFC 9112 §2.2: empty lines before a request line are ignored.
    let line = skip_empty_lines(buf);
    if line.is_empty() {
        return NeedMore;
    }
    // Method: a token (RFC 9110 §5.6.2).
    let Some(end) = line.iter().take(MAX_METHOD + 1).position(|&b| !is_tchar(b)) else {
        return if line.len() <= MAX_METHOD {
            NeedMore
        } else {
            opaque
        };
    };
    if end == 0 || !matches!(line[end], b' ' | b'\t') {
        return opaque;
    }
    let known = KNOWN_METHODS.contains(&&line[..end]);
    // A known method before an origin-form or asterisk target (or more
    // whitespace: malformed, but HTTP) is HTTP/1 at once, so a client that
    // stalls inside its request line meets the header-read timeout.
    if known {
        match line.get(end + 1) {
            None => return NeedMore,
            Some(b'/' | b'*' | b' ' | b'\t') => return Decided(Protocol::Http1),
            Some(_) => {}
        }
    }
    // Otherwise the first line must name an HTTP version. Only the first
    // MAX_REQUEST_LINE bytes are looked at, so the verdict never changes
    // as more bytes arrive.
    let window = &line[..line.len().min(MAX_REQUEST_LINE)];
    let first_line = match window.iter().position(|&b| b == b'\n') {
        Some(lf) => &window[..lf],
        None => window,
    };
    if has_version(&first_line[end..]) {
        return Decided(Protocol::Http1);
    }
    if first_line.len() < window.len() {
        // The line ended without a version: some other text protocol.
        return opaque;
    }
    if window.len() < MAX_REQUEST_LINE {
        return NeedMore;
    }
    // An absurdly long line: with a known method, the HTTP/1 server
    // answers 414 rather than hiding it as opaque.
    if known {
        Decided(Protocol::Http1)
    } else {
        opaque
    }
}

/// What an undecided prefix is when the client stops sending (timeout, EOF
/// or a full buffer): HTTP/1 when it can only be the start of an HTTP/1
/// request — the HTTP/1 server then answers 408 (or closes on EOF) — and
/// opaque otherwise (nothing sent, a partial TLS record, an unknown token).
pub fn stalled(buf: &[u8]) -> Protocol {
    if let Detection::Decided(p) = detect(buf) {
        return p;
    }
    if buf.is_empty() || buf[0] == 0x16 {
        return Protocol::Opaque;
    }
    if H2_PREFACE.starts_with(buf) {
        return Protocol::Http1;
    }
    let line = skip_empty_lines(buf);
    if line.is_empty() {
        return Protocol::Http1;
    }
    let end = line
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(line.len());
    let method = &line[..end];
    let plausible = if end == line.len() {
        // Part of a method: one of the known ones, or a known one whole.
        KNOWN_METHODS.iter().any(|m| m.starts_with(method))
    } else {
        KNOWN_METHODS.contains(&method)
    };
    if plausible {
        Protocol::Http1
    } else {
        Protocol::Opaque
    }
}

/// True when a server's first bytes begin with an HTTP/2 server connection
/// preface: a SETTINGS frame (not an ACK) on stream 0 (RFC 9113 §3.4). HTTP/2
/// servers send it as soon as they accept, before the client's preface, so
/// it does not make the server a server-speaks-first protocol. The whole
/// 9-byte frame header must be there.
pub fn is_h2_server_preface(buf: &[u8]) -> bool {
    let Some(head) = buf.get(..9) else {
        return false;
    };
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
    // SETTINGS: type 4, no flags (ACK is 1), stream 0, 6 bytes a setting.
    head[3] == 0x4 && head[4] == 0 && head[5..9] == [0; 4] && len.is_multiple_of(6) && len <= 16_384
}

fn skip_empty_lines(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    &buf[start..]
}

/// True when `line` has whitespace followed by `HTTP/`.
fn has_version(line: &[u8]) -> bool {
    line.windows(6)
        .any(|w| matches!(w[0], b' ' | b'\t') && &w[1..] == b"HTTP/")
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Detection::*;
    use Protocol::*;

    #[test]
    fn h2_server_prefaces() {
        // Empty SETTINGS, and SETTINGS_MAX_CONCURRENT_STREAMS=100 followed by
        // a WINDOW_UPDATE.
        assert!(is_h2_server_preface(b"\0\0\0\x04\0\0\0\0\0"));
        let mut two = b"\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64".to_vec();
        two.extend_from_slice(b"\0\0\x04\x08\0\0\0\0\0\0\x0f\0\x01");
        assert!(is_h2_server_preface(&two));
        // A partial header, an ACK, another stream, a length that is not
        // whole settings, another frame type, text banners.
        assert!(!is_h2_server_preface(b"\0\0\0\x04\0\0\0\0"));
        assert!(!is_h2_server_preface(b"\0\0\0\x04\x01\0\0\0\0"));
        assert!(!is_h2_server_preface(b"\0\0\0\x04\0\0\0\0\x01"));
        assert!(!is_h2_server_preface(b"\0\0\x05\x04\0\0\0\0\0\0\0\0\0\0"));
        assert!(!is_h2_server_preface(b"\0\0\x08\x07\0\0\0\0\0"));
        assert!(!is_h2_server_preface(b"220 mail.example ESMTP\r\n"));
        assert!(!is_h2_server_preface(b""));
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Decided(Http1));
        assert_eq!(detect(b"POST /x?y=1 HTTP/1.0\r\n"), Decided(Http1));
        assert_eq!(detect(b"CONNECT a.test:443 HTTP/1.1\r\n"), Decided(Http1));
        assert_eq!(detect(b"GET http://a.test/ HTTP/1.1\n"), Decided(Http1));
        assert_eq!(detect(b"OPTIONS * HTTP/1.1\r\n"), Decided(Http1));
    }

    #[test]
    fn every_prefix_of_a_request_waits_for_more() {
        // A method this module does not know needs the version to decide.
        let req = b"PROPFIND /index.html HTTP/1.1\r\n";
        let decided_at = req.windows(5).position(|w| w == b"HTTP/").unwrap() + 5;
        for i in 1..decided_at {
            assert_eq!(
                detect(&req[..i]),
                NeedMore,
                "prefix {:?}",
                String::from_utf8_lossy(&req[..i])
            );
        }
        assert_eq!(detect(&req[..decided_at]), Decided(Http1));
    }

    #[test]
    fn a_known_method_and_a_target_decide_at_once() {
        assert_eq!(detect(b"GET"), NeedMore);
        assert_eq!(detect(b"GET "), NeedMore);
        assert_eq!(detect(b"GET /"), Decided(Http1));
        assert_eq!(detect(b"OPTIONS *"), Decided(Http1));
        assert_eq!(detect(b"GET http://a.test/"), NeedMore);
    }

    #[test]
    fn malformed_http_is_still_http1() {
        // The HTTP/1 server answers these with 400; relayed as opaque they
        // would skip all validation.
        for bytes in [
            &b"GET  / HTTP/1.1\r\n"[..],
            b"GET\t/ HTTP/1.1\r\n",
            b"GET / HTTP/1.2\r\n",
            b"GET / HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\n",
            b"\r\nGET / HTTP/1.1\r\n",
            b"\r\n\r\nFOO /x HTTP/9\r\n",
            b"BREW /pot HTTP/1.1\r\n",
        ] {
            assert_eq!(
                detect(bytes),
                Decided(Http1),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(detect(b"\r\n"), NeedMore);
    }

    #[test]
    fn h2_preface_and_its_prefixes() {
        assert_eq!(detect(H2_PREFACE), Decided(Http2));
        for i in 1..H2_PREFACE.len() {
            assert_eq!(detect(&H2_PREFACE[..i]), NeedMore);
        }
    }

    #[test]
    fn tls_client_hello() {
        assert_eq!(detect(&[0x16, 0x03, 0x01, 0x02, 0x00]), Decided(Tls));
        assert_eq!(detect(&[0x16, 0x03]), NeedMore);
        assert_eq!(detect(&[0x16]), NeedMore);
        assert_eq!(detect(&[0x16, 0x03, 0x09]), Decided(Opaque));
    }

    #[test]
    fn other_protocols_are_opaque() {
        for bytes in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..], // Postgres SSLRequest
            b"*1\r\n$4\r\nPING\r\n",                  // redis
            b"PING\r\n",                              // redis inline
            b"GET key\r\n",                           // redis inline, not a request line
            b"SET key value\r\n",
            b"get k\r\n", // memcached
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"EHLO mail.test\r\n",
            b"GE\x01T / HTTP/1.1\r\n",
            b"\r\n\x00\x01",
            &[b'A'; 40],
        ] {
            assert_eq!(
                detect(bytes),
                Decided(Opaque),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn long_targets_are_http1() {
        let mut req = b"GET http://a/".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(detect(&req), Decided(Http1));
        let mut other = b"FOO http://a/".to_vec();
        other.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(detect(&other), Decided(Opaque));
    }

    #[test]
    fn what_a_stalled_prefix_is() {
        // Partial HTTP/1: the HTTP/1 server answers 408.
        for bytes in [
            &b"G"[..],
            b"GE",
            b"POST",
            b"GET ",
            b"GET http://a.test/slo",
            b"\r\n",
            b"PRI * HTTP/2.0\r\n",
        ] {
            assert_eq!(
                stalled(bytes),
                Http1,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Silence, partial TLS, unknown tokens: opaque.
        for bytes in [&b""[..], &[0x16, 0x03], b"PI", b"FOO /x", b"SET k v"] {
            assert_eq!(
                stalled(bytes),
                Opaque,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_is_monotonic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            // Once decided, more bytes never change the answer.
            let mut decided = None;
            for i in 0..=data.len() {
                match (detect(&data[..i]), decided) {
                    (Decided(p), None) => decided = Some(p),
                    (Decided(p), Some(q)) => proptest::prop_assert_eq!(p, q),
                    (NeedMore, Some(q)) => proptest::prop_assert!(false, "undecided after {:?}", q),
                    (NeedMore, None) => {}
                }
            }
            // A stalled prefix keeps any verdict already reached.
            if let Some(p) = decided {
                proptest::prop_assert_eq!(stalled(&data), p);
            }
        }

        /// Whatever httparse reads as a request line (linkerd2-proxy's
        /// probe) is HTTP/1 here too, and no prefix of it is anything else.
        #[test]
        fn request_lines_are_http1(
            method in "[A-Z]{1,12}",
            target in "(/[a-z0-9/?=&.]{0,20}|\\*|http://[a-z]{1,8}/)",
            minor in 0u8..2,
            crlfs in 0usize..3,
        ) {
            let mut req = b"\r\n".repeat(crlfs);
            req.extend_from_slice(format!("{method} {target} HTTP/1.{minor}\r\nHost: a\r\n\r\n").as_bytes());
            let mut headers = [httparse::EMPTY_HEADER; 4];
            proptest::prop_assume!(httparse::Request::new(&mut headers).parse(&req).is_ok());
            proptest::prop_assert_eq!(detect(&req), Decided(Http1));
            for i in 1..req.len() {
                let d = detect(&req[..i]);
                proptest::prop_assert!(d == NeedMore || d == Decided(Http1), "{:?} at {}", d, i);
            }
        }
    }
}
