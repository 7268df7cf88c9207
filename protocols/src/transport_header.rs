//! Linkerd's transport header: what a proxy writes first on a meshed
//! connection to a peer proxy's opaque-transport port (inside mutual TLS
//! negotiated with ALPN `transport.l5d.io/v1`), telling the peer which
//! port of its workload the connection is for and what it carries.
//!
//! Wire: the preface `transport.l5d.io/v1\r\n\r\n`, a big-endian u32
//! length, then a protobuf `transport.l5d.io.Header { int32 port = 1;
//! string name = 2; SessionProtocol session_protocol = 3; }` where
//! `SessionProtocol { oneof kind { Http1 http1 = 1; Http2 http2 = 2; } }`
//! (linkerd2-proxy's `linkerd/transport-header/proto/header.proto`).
//!
//! Decoding is incremental ([`decode`] says how many more bytes it needs),
//! bounded ([`MAX_HEADER_LEN`]) and fuzzed (`fuzz_targets/transport_header.rs`).

use prost::Message;

/// The bytes every header starts with.
pub const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";

/// A header message longer than this is refused without reading it (a real
/// one is a few bytes plus an optional DNS name).
pub const MAX_HEADER_LEN: usize = 4096;

/// What the connection carries after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionProtocol {
    Http1,
    Http2,
}

/// A decoded transport header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    /// The workload port the connection is for.
    pub port: u16,
    /// A logical name (gateways); empty when not given.
    pub name: String,
    /// `None`: opaque bytes.
    pub protocol: Option<SessionProtocol>,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection does not start with the transport header preface")]
    NoPreface,
    #[error("transport header of {0} bytes is larger than the {MAX_HEADER_LEN}-byte limit")]
    TooLong(usize),
    #[error("malformed transport header: {0}")]
    Malformed(String),
    #[error("transport header port {0} is not 1-65535")]
    BadPort(i32),
}

/// Result of looking at the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// At least this many more bytes are needed.
    Incomplete(usize),
    /// The header, and how many bytes it took (the rest is the session).
    Done(TransportHeader, usize),
}

mod proto {
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Header {
        #[prost(int32, tag = "1")]
        pub port: i32,
        #[prost(string, tag = "2")]
        pub name: ::prost::alloc::string::String,
        #[prost(message, optional, tag = "3")]
        pub session_protocol: ::core::option::Option<SessionProtocol>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SessionProtocol {
        #[prost(oneof = "Kind", tags = "1, 2")]
        pub kind: ::core::option::Option<Kind>,
    }

    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Http1(Empty),
        #[prost(message, tag = "2")]
        Http2(Empty),
    }

    #[derive(Clone, Copy, PartialEq, ::prost::Message)]
    pub struct Empty {}
}

impl TransportHeader {
    /// Appends the prefaced, length-delimited header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let msg = proto::Header {
            port: i32::from(self.port),
            name: self.name.clone(),
            session_protocol: self.protocol.map(|p| proto::SessionProtocol {
                kind: Some(match p {
                    SessionProtocol::Http1 => proto::Kind::Http1(proto::Empty {}),
                    SessionProtocol::Http2 => proto::Kind::Http2(proto::Empty {}),
                }),
            }),
        };
        let len = msg.encoded_len();
        out.reserve(PREFACE.len() + 4 + len);
        out.extend_from_slice(PREFACE);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        msg.encode_raw(out);
    }
}

/// Decodes a header from the start of `buf`. Unknown fields are skipped,
/// as protobuf requires; a name that is not valid UTF-8, a port out of
/// range or a length over [`MAX_HEADER_LEN`] is refused.
pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    let seen = buf.len().min(PREFACE.len());
    if buf[..seen] != PREFACE[..seen] {
        return Err(HeaderError::NoPreface);
    }
    let fixed = PREFACE.len() + 4;
    if buf.len() < fixed {
        return Ok(Decoded::Incomplete(fixed - buf.len()));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&buf[PREFACE.len()..fixed]);
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong(len));
    }
    let total = fixed + len;
    if buf.len() < total {
        return Ok(Decoded::Incomplete(total - buf.len()));
    }
    let msg = proto::Header::decode(&buf[fixed..total])
        .map_err(|e| HeaderError::Malformed(e.to_string()))?;
    let port = u16::try_from(msg.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(HeaderError::BadPort(msg.port))?;
    let protocol = msg.session_protocol.and_then(|p| p.kind).map(|k| match k {
        proto::Kind::Http1(_) => SessionProtocol::Http1,
        proto::Kind::Http2(_) => SessionProtocol::Http2,
    });
    Ok(Decoded::Done(
        TransportHeader {
            port,
            name: msg.name,
            protocol,
        },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(port: u16, protocol: Option<SessionProtocol>) -> TransportHeader {
        TransportHeader {
            port,
            name: String::new(),
            protocol,
        }
    }

    #[test]
    fn round_trips_and_leaves_the_session_bytes() {
        for p in [
            None,
            Some(SessionProtocol::Http1),
            Some(SessionProtocol::Http2),
        ] {
            let h = header(8080, p);
            let mut buf = Vec::new();
            h.encode(&mut buf);
            let n = buf.len();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(decode(&buf), Ok(Decoded::Done(h, n)));
        }
    }

    #[test]
    fn known_bytes() {
        // port 80, http2: what linkerd2-proxy writes.
        let mut buf = Vec::new();
        header(80, Some(SessionProtocol::Http2)).encode(&mut buf);
        assert_eq!(&buf[..PREFACE.len()], PREFACE);
        assert_eq!(&buf[PREFACE.len()..], b"\0\0\0\x06\x08\x50\x1a\x02\x12\x00");
    }

    #[test]
    fn incomplete_says_how_much_more() {
        let mut buf = Vec::new();
        header(443, Some(SessionProtocol::Http1)).encode(&mut buf);
        for cut in 0..buf.len() {
            match decode(&buf[..cut]) {
                Ok(Decoded::Incomplete(more)) => assert!(more > 0 && cut + more <= buf.len()),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(decode(b"GET / HTTP/1.1"), Err(HeaderError::NoPreface));
        let mut huge = PREFACE.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&huge), Err(HeaderError::TooLong(u32::MAX as usize)));
        let mut zero = Vec::new();
        header(0, None).encode(&mut zero);
        assert_eq!(decode(&zero), Err(HeaderError::BadPort(0)));
        let mut junk = PREFACE.to_vec();
        junk.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(decode(&junk), Err(HeaderError::Malformed(_))));
        // Port 70000 (varint) does not fit.
        let mut big = PREFACE.to_vec();
        big.extend_from_slice(&[0, 0, 0, 4, 0x08, 0xf0, 0xa2, 0x04]);
        assert_eq!(decode(&big), Err(HeaderError::BadPort(70000)));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut buf = PREFACE.to_vec();
        // port 9000, then field 15 (varint 1) and field 14 (bytes "xy").
        let body = [0x08, 0xa8, 0x46, 0x78, 0x01, 0x72, 0x02, b'x', b'y'];
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(&body);
        assert_eq!(
            decode(&buf),
            Ok(Decoded::Done(header(9000, None), buf.len()))
        );
    }
}
