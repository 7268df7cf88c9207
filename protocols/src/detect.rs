//! Protocol detection from the first bytes a client sends.
//!
//! Pure classification over a byte prefix; the caller reads (with the detect
//! timeout) until [`detect`] decides, and treats a timeout or EOF as opaque
//! TCP, as linkerd2-proxy does.

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

/// `method SP target SP HTTP/1.x CRLF`, checked as far as the prefix goes.
fn request_line(buf: &[u8]) -> Detection {
    use Detection::*;
    let opaque = Decided(Protocol::Opaque);
    // Method: a token (RFC 9110 §5.6.2), at most 32 bytes.
    let Some(sp) = buf.iter().take(33).position(|&b| b == b' ') else {
        return if buf.len() < 33 && buf.iter().all(|&b| is_tchar(b)) {
            NeedMore
        } else {
            opaque
        };
    };
    if sp == 0 || !buf[..sp].iter().all(|&b| is_tchar(b)) {
        return opaque;
    }
    // Target: visible ASCII (and obs-text), up to the next SP.
    let rest = &buf[sp + 1..];
    let target_end = rest.iter().position(|&b| b == b' ');
    let target = &rest[..target_end.unwrap_or(rest.len())];
    if !target.iter().all(|&b| b > 0x20 && b != 0x7f) {
        return opaque;
    }
    let Some(te) = target_end else {
        // Long targets are fine; if the line is absurdly long, let the
        // HTTP/1 parser answer 414/431 rather than hide it as opaque.
        return if buf.len() >= MAX_REQUEST_LINE {
            Decided(Protocol::Http1)
        } else {
            NeedMore
        };
    };
    if te == 0 {
        return opaque;
    }
    let version = &rest[te + 1..];
    const V: &[u8] = b"HTTP/1.";
    let n = version.len().min(V.len());
    if version[..n] != V[..n] {
        return opaque;
    }
    match version.get(V.len()) {
        None => NeedMore,
        Some(b'0' | b'1') => match version.get(V.len() + 1) {
            None => NeedMore,
            Some(b'\r' | b'\n') => Decided(Protocol::Http1),
            Some(_) => opaque,
        },
        Some(_) => opaque,
    }
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
    fn http1_request_lines() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Decided(Http1));
        assert_eq!(detect(b"POST /x?y=1 HTTP/1.0\r\n"), Decided(Http1));
        assert_eq!(detect(b"CONNECT a.test:443 HTTP/1.1\r\n"), Decided(Http1));
        assert_eq!(detect(b"GET http://a.test/ HTTP/1.1\n"), Decided(Http1));
        assert_eq!(detect(b"OPTIONS * HTTP/1.1\r\n"), Decided(Http1));
    }

    #[test]
    fn every_prefix_of_a_request_waits_for_more() {
        let req = b"GET /index.html HTTP/1.1\r\n";
        for i in 1..req.len() - 1 {
            assert_eq!(
                detect(&req[..i]),
                NeedMore,
                "prefix {:?}",
                String::from_utf8_lossy(&req[..i])
            );
        }
    }

    #[test]
    fn h2_preface_and_its_prefixes() {
        assert_eq!(detect(H2_PREFACE), Decided(Http2));
        for i in 1..H2_PREFACE.len() {
            assert_eq!(detect(&H2_PREFACE[..i]), NeedMore);
        }
        // "PRI * HTTP/2.0" without the rest of the preface is not HTTP/1.
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Decided(Opaque));
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
        assert_eq!(detect(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Decided(Opaque)); // Postgres SSLRequest
        assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n"), Decided(Opaque)); // Redis
        assert_eq!(detect(b"SSH-2.0-OpenSSH_9.2\r\n"), Decided(Opaque));
        assert_eq!(detect(b"GET / HTTP/2.0\r\n"), Decided(Opaque));
        assert_eq!(detect(b"GET  / HTTP/1.1\r\n"), Decided(Opaque));
        assert_eq!(detect(b"GE\x01T / HTTP/1.1\r\n"), Decided(Opaque));
        assert_eq!(detect(&[b'A'; 40]), Decided(Opaque));
    }

    #[test]
    fn long_targets_are_http1() {
        let mut req = b"GET /".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(detect(&req), Decided(Http1));
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
        }
    }
}
