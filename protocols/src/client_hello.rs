//! Reads the server name (SNI) out of a TLS ClientHello without taking
//! part in the handshake: inbound, it decides whether a TLS connection is
//! for this proxy (terminate it) or for the workload (relay it untouched).
//!
//! The ClientHello may span several handshake records; the parser needs
//! the whole message (at most [`MAX_HELLO`] bytes of records) and says how
//! much more to read when it has not got it. Everything is bounds-checked:
//! it is fed by any client and fuzzed (`fuzz_targets/client_hello.rs`).

/// Bytes of records read at most while looking for the whole ClientHello.
pub const MAX_HELLO: usize = 16 * 1024 + 5;

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
    /// A ClientHello so far; more bytes are needed.
    Incomplete,
    /// A whole ClientHello: its server name, if it sent a valid one.
    Complete { sni: Option<String> },
}

/// Parses the ClientHello at the start of `buf` (raw bytes from the
/// client, records and all).
pub fn parse(buf: &[u8]) -> Hello {
    // Gather the handshake message from consecutive handshake records.
    let mut msg: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return if at >= MAX_HELLO {
                Hello::NotTls
            } else {
                Hello::Incomplete
            };
        };
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 + 256 {
            return Hello::NotTls;
        }
        let Some(fragment) = buf.get(at + 5..at + 5 + len) else {
            return if at + 5 + len > MAX_HELLO + 256 {
                Hello::NotTls
            } else {
                Hello::Incomplete
            };
        };
        msg.extend_from_slice(fragment);
        at += 5 + len;
        if msg.len() >= 4 {
            if msg[0] != CLIENT_HELLO {
                return Hello::NotTls;
            }
            let body_len =
                (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
            if body_len > MAX_HELLO {
                return Hello::NotTls;
            }
            if msg.len() >= 4 + body_len {
                return match server_name(&msg[4..4 + body_len]) {
                    Some(sni) => Hello::Complete { sni },
                    None => Hello::NotTls,
                };
            }
        }
    }
}

/// A cursor over bytes that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(len)
    }
}

/// The ClientHello body's server name: `Some(None)` when it has none (or
/// one that is not a valid name), `None` when the body is malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = Reader(r.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vec(2)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec(2)?;
            if name_type == HOST_NAME {
                return Some(
                    std::str::from_utf8(name)
                        .ok()
                        .filter(|n| !n.is_empty() && n.is_ascii())
                        .map(|n| n.trim_end_matches('.').to_ascii_lowercase()),
                );
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.3-style ClientHello record with `sni` (if any) and
    /// `pad` bytes of a padding extension, split into records of at most
    /// `record` bytes.
    fn hello(sni: Option<&str>, pad: usize, record: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![HOST_NAME];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&SERVER_NAME.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        exts.extend_from_slice(&21u16.to_be_bytes());
        exts.extend_from_slice(&(pad as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0, pad));
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0]); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in msg.chunks(record) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn complete(sni: Option<&str>) -> Hello {
        Hello::Complete {
            sni: sni.map(str::to_string),
        }
    }

    #[test]
    fn finds_the_server_name() {
        let name = "web.ns.serviceaccount.identity.linkerd.cluster.local";
        assert_eq!(parse(&hello(Some(name), 0, 16384)), complete(Some(name)));
        assert_eq!(
            parse(&hello(Some("Web.Example."), 10, 16384)),
            complete(Some("web.example"))
        );
        assert_eq!(parse(&hello(None, 10, 16384)), complete(None));
    }

    #[test]
    fn across_records_and_cut_anywhere() {
        let name = "a.example";
        let whole = hello(Some(name), 3000, 1000);
        assert_eq!(parse(&whole), complete(Some(name)));
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn not_tls_or_malformed() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(&[HANDSHAKE, 3, 1, 0, 0]), Hello::NotTls);
        // A server hello type inside a handshake record.
        let mut h = hello(Some("a.example"), 0, 16384);
        h[5] = 2;
        assert_eq!(parse(&h), Hello::NotTls);
        // An extension length running past the body.
        let mut h = hello(Some("a.example"), 0, 16384);
        let n = h.len();
        h[n - 1 - 4] = 0xff;
        assert_ne!(parse(&h), complete(Some("a.example")));
    }
}
