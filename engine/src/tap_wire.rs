//! Tap events as they go on the wire: each a `TapEvent` protobuf message
//! in a gRPC frame, written by the worker that saw the request (the
//! control core only forwards the bytes).
//!
//! A request's addresses and metadata (the fields every one of its events
//! repeats) are encoded once, by hand, when it is matched; each event is
//! those bytes followed by its HTTP event (a protobuf message is the
//! concatenation of its fields).
//!
//! The HTTP events are written by hand too, straight from what the worker
//! holds: no message values, no strings copied but into the batch.
//! The unit tests check them byte for byte against prost's encoding.

use std::net::SocketAddr;
use std::time::Duration;

use linkerd2_proxy_api::tap::tap_event;

/// A request's id in tap events: the worker, and the request's number on
/// it.
pub(crate) type StreamId = (u32, u64);

/// Header fields as tap events carry them (lowercase names).
pub(crate) type Fields = Vec<(String, Vec<u8>)>;

/// How a tapped response's stream ended (the proto's `Eos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TapEos {
    /// Its body ended (nothing more to say, or an HTTP/1 response).
    None,
    /// With this gRPC status.
    Grpc(u32),
    /// Reset with this HTTP/2 error code.
    Reset(u32),
}

/// What every event of one request says of it.
pub(crate) struct Common<'a> {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
    pub(crate) inbound: bool,
    /// The destination's labels (`service`, `namespace`, `pod` …).
    pub(crate) dst_labels: Option<&'a [(String, String)]>,
    /// The profile route's name.
    pub(crate) route: Option<&'a str>,
    /// How the client's connection is secured (`source_meta`).
    pub(crate) src_tls: TapTls<'a>,
    /// How the destination's connection is secured (`destination_meta`).
    pub(crate) dst_tls: TapTls<'a>,
}

/// An endpoint's `tls` label in a tap event and the one that goes with
/// it, as linkerd2-proxy writes them: always present.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TapTls<'a> {
    /// No TLS: `tls` is the reason (`loopback`, `no_tls_from_remote`,
    /// `disabled` …).
    No(&'static str),
    /// Mutual TLS this proxy terminated: `tls="true"`, `client_id`.
    Client(&'a str),
    /// Mutual TLS this proxy originated: `tls="true"`, `server_id`.
    Server(&'a str),
}

impl<'a> TapTls<'a> {
    fn labels(self) -> impl Iterator<Item = (&'a str, &'a str)> + Clone {
        let (tls, second) = match self {
            Self::No(why) => (why, None),
            Self::Client(id) => ("true", Some(("client_id", id))),
            Self::Server(id) => ("true", Some(("server_id", id))),
        };
        std::iter::once(("tls", tls)).chain(second)
    }
}

/// The fields every event of a request repeats, encoded as `TapEvent`
/// fields into `out` (cleared first): its addresses, `source_meta` (`tls`,
/// `client_id` for a meshed inbound client), `destination_meta` (the
/// destination's labels, `tls` and `server_id` for a meshed outbound
/// endpoint), `route_meta` and `proxy_direction`. Written straight from
/// the request's description: no maps or copies of its labels.
pub(crate) fn common_fields(c: &Common<'_>, out: &mut Vec<u8>) {
    out.clear();
    put_tcp_address(out, 1, c.source);
    put_tcp_address(out, 2, c.destination);
    let dst = c
        .dst_labels
        .iter()
        .flat_map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .filter(|(k, _)| !matches!(*k, "tls" | "server_id"))
        .chain(c.dst_tls.labels());
    put_labels(out, 4, dst);
    put_labels(out, 5, c.src_tls.labels());
    let direction = if c.inbound {
        tap_event::ProxyDirection::Inbound
    } else {
        tap_event::ProxyDirection::Outbound
    };
    put_enum(out, 6, direction as u32);
    if let Some(r) = c.route {
        put_labels(out, 7, [("route", r)].into_iter());
    }
}

/// Field `tag`, a `TcpAddress { IPAddress ip = 1; uint32 port = 2 }`,
/// its `IPAddress` a oneof of `fixed32 ipv4 = 1` (the address's octets
/// as a big-endian number) and `IPv6 ipv6 = 2` (`fixed64 first = 1;
/// fixed64 last = 2`, its first and last eight octets likewise).
fn put_tcp_address(out: &mut Vec<u8>, tag: u32, addr: SocketAddr) {
    nested(out, tag, |out| {
        nested(out, 1, |out| match addr.ip() {
            std::net::IpAddr::V4(ip) => {
                put_key(out, 1, FIXED32);
                out.extend_from_slice(&u32::from(ip).to_le_bytes());
            }
            std::net::IpAddr::V6(ip) => nested(out, 2, |out| {
                let bits = u128::from(ip);
                for (tag, half) in [(1, (bits >> 64) as u64), (2, bits as u64)] {
                    if half != 0 {
                        put_key(out, tag, FIXED64);
                        out.extend_from_slice(&half.to_le_bytes());
                    }
                }
            }),
        });
        put_uint(out, 2, u64::from(addr.port()));
    });
}

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;
const FIXED32: u32 = 5;

/// A base-128 varint, byte by byte (most here, tags, lengths and small
/// numbers, take one; a copy of a few bytes would be a `memcpy` call).
#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field's key: its tag and wire type.
#[inline]
fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: u32) {
    put_varint(out, u64::from(tag << 3 | wire_type));
}

/// A message of one `map<string, string> labels = 1` field (`EndpointMeta`,
/// `RouteMeta`) as field `tag`.
fn put_labels<'a>(
    out: &mut Vec<u8>,
    tag: u32,
    labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    let string_len = |s: &str| 1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len();
    let entry_len = |k: &str, v: &str| string_len(k) + string_len(v);
    let put_string = |out: &mut Vec<u8>, tag: u32, s: &str| {
        put_key(out, tag, LENGTH_DELIMITED);
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    };
    let inner: usize = labels
        .clone()
        .map(|(k, v)| {
            let e = entry_len(k, v);
            1 + prost::encoding::encoded_len_varint(e as u64) + e
        })
        .sum();
    put_key(out, tag, LENGTH_DELIMITED);
    put_varint(out, inner as u64);
    for (k, v) in labels {
        put_key(out, 1, LENGTH_DELIMITED);
        put_varint(out, entry_len(k, v) as u64);
        put_string(out, 1, k);
        put_string(out, 2, v);
    }
}

/// One HTTP event of a request, borrowed from what the worker holds.
pub(crate) enum HttpEvent<'a> {
    /// The request's start.
    RequestInit {
        method: &'a str,
        /// Its URI's scheme (`http` when it names none).
        scheme: &'a str,
        authority: &'a str,
        path: &'a str,
        headers: Option<&'a [(String, Vec<u8>)]>,
    },
    /// The response's head, `since_request` after the request was seen.
    ResponseInit {
        since_request: Duration,
        status: u16,
        headers: Option<&'a [(String, Vec<u8>)]>,
    },
    /// The request's end: its response's head `since.0` and its end
    /// `since.1` after the request was seen.
    ResponseEnd {
        since: (Duration, Duration),
        bytes: u64,
        eos: TapEos,
        trailers: Option<&'a [(String, Vec<u8>)]>,
    },
}

/// Appends one gRPC message to `out`: a `TapEvent` of a request's
/// `common` fields and its HTTP event `ev`, written by hand (no message
/// values built, no string copied but into `out`).
pub(crate) fn put_event(out: &mut Vec<u8>, common: &[u8], id: StreamId, ev: &HttpEvent<'_>) {
    out.push(0);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(common);
    // TapEvent.http = 3; Http.event: request_init = 1, response_init = 2,
    // response_end = 3.
    let kind = match ev {
        HttpEvent::RequestInit { .. } => 1,
        HttpEvent::ResponseInit { .. } => 2,
        HttpEvent::ResponseEnd { .. } => 3,
    };
    nested(out, 3, |out| nested(out, kind, |out| put_http(out, id, ev)));
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The fields of `RequestInit`, `ResponseInit` or `ResponseEnd`, in
/// their tags' order (as prost writes them).
fn put_http(out: &mut Vec<u8>, (base, stream): StreamId, ev: &HttpEvent<'_>) {
    // Every one's field 1 is its `StreamId { base = 1, stream = 2 }`.
    nested(out, 1, |out| {
        put_uint(out, 1, u64::from(base));
        put_uint(out, 2, stream);
    });
    match *ev {
        HttpEvent::RequestInit {
            method,
            scheme,
            authority,
            path,
            headers,
        } => {
            match registered_method(method) {
                Some(m) => nested(out, 2, |out| put_enum(out, 1, m)),
                None if http::Method::from_bytes(method.as_bytes()).is_ok() => {
                    nested(out, 2, |out| put_bytes(out, 2, method.as_bytes()))
                }
                None => {}
            }
            // Scheme { registered = 1 (HTTP = 0, HTTPS = 1) | unregistered = 2 }.
            nested(out, 3, |out| match scheme {
                "http" => put_enum(out, 1, 0),
                "https" => put_enum(out, 1, 1),
                other => put_bytes(out, 2, other.as_bytes()),
            });
            put_bytes(out, 4, authority.as_bytes());
            put_bytes(out, 5, path.as_bytes());
            put_headers(out, 6, headers);
        }
        HttpEvent::ResponseInit {
            since_request,
            status,
            headers,
        } => {
            put_duration(out, 2, since_request);
            put_uint(out, 3, u64::from(status));
            put_headers(out, 4, headers);
        }
        HttpEvent::ResponseEnd {
            since: (head, end),
            bytes,
            eos,
            trailers,
        } => {
            put_duration(out, 2, end);
            put_duration(out, 3, end.saturating_sub(head));
            put_uint(out, 4, bytes);
            // Eos { grpc_status_code = 1 | reset_error_code = 2 }.
            match eos {
                TapEos::None => {}
                TapEos::Grpc(c) => nested(out, 5, |out| put_enum(out, 1, c)),
                TapEos::Reset(c) => nested(out, 5, |out| put_enum(out, 2, c)),
            }
            put_headers(out, 6, trailers);
        }
    }
}

/// The `HttpMethod.Registered` value of a method `http` names.
fn registered_method(m: &str) -> Option<u32> {
    Some(match m {
        "GET" => 0,
        "POST" => 1,
        "PUT" => 2,
        "DELETE" => 3,
        "PATCH" => 4,
        "OPTIONS" => 5,
        "CONNECT" => 6,
        "HEAD" => 7,
        "TRACE" => 8,
        _ => return None,
    })
}

/// Field `tag`, a message whose fields `body` writes. Its length is
/// written after it: one byte is kept for it, and the body moved on when
/// it takes more (only for bodies of 128 bytes or more).
fn nested(out: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    put_key(out, tag, LENGTH_DELIMITED);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        // (Rare, so prost's writer, into the stack.)
        let mut prefix = [0u8; 10];
        let n = {
            let mut rest = &mut prefix[..];
            prost::encoding::encode_varint(len as u64, &mut rest);
            10 - rest.len()
        };
        out.splice(at..at + 1, prefix[..n].iter().copied());
    }
}

/// A scalar field (proto3: left out when zero).
fn put_uint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        put_key(out, tag, VARINT);
        put_varint(out, v);
    }
}

/// A varint member of a oneof: written even when zero.
fn put_enum(out: &mut Vec<u8>, tag: u32, v: u32) {
    put_key(out, tag, VARINT);
    put_varint(out, u64::from(v));
}

/// A string or bytes field (proto3: left out when empty).
fn put_bytes(out: &mut Vec<u8>, tag: u32, v: &[u8]) {
    if !v.is_empty() {
        put_key(out, tag, LENGTH_DELIMITED);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// A `google.protobuf.Duration` (seconds = 1, nanos = 2).
fn put_duration(out: &mut Vec<u8>, tag: u32, d: Duration) {
    // (A duration beyond i64 seconds is not one prost could write
    // either: left out.)
    if i64::try_from(d.as_secs()).is_err() {
        return;
    }
    nested(out, tag, |out| {
        put_uint(out, 1, d.as_secs());
        put_uint(out, 2, u64::from(d.subsec_nanos()));
    });
}

/// `Headers { repeated Header headers = 1 }`, each `Header { name = 1,
/// value = 2 }`.
fn put_headers(out: &mut Vec<u8>, tag: u32, fields: Option<&[(String, Vec<u8>)]>) {
    let Some(fields) = fields else { return };
    nested(out, tag, |out| {
        for (name, value) in fields {
            nested(out, 1, |out| {
                put_bytes(out, 1, name.as_bytes());
                put_bytes(out, 2, value);
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::http_types::{HttpMethod, Scheme};
    use linkerd2_proxy_api::net::TcpAddress;
    use linkerd2_proxy_api::tap::tap_event::http as th;
    use linkerd2_proxy_api::tap::{eos, Eos, TapEvent};
    use prost::Message;

    const SERVER_ID: &str = "web.default.serviceaccount.identity.linkerd.cluster.local";

    fn labels() -> Vec<(String, String)> {
        vec![
            ("service".to_string(), "web".to_string()),
            ("namespace".to_string(), "default".to_string()),
        ]
    }

    fn common(labels: &[(String, String)]) -> Common<'_> {
        Common {
            source: "10.0.0.1:40000".parse().unwrap(),
            destination: "[fd00::2]:8080".parse().unwrap(),
            inbound: false,
            dst_labels: Some(labels),
            route: Some("get-a"),
            src_tls: TapTls::No("loopback"),
            dst_tls: TapTls::Server(SERVER_ID),
        }
    }

    /// The common fields, written by hand, decode as the message prost
    /// would have written.
    #[test]
    fn common_fields_decode_as_a_tap_event() {
        let labels = labels();
        let c = common(&labels);
        let mut out = Vec::new();
        common_fields(&c, &mut out);
        let ev = TapEvent::decode(&out[..]).unwrap();
        assert_eq!(ev.source, Some(TcpAddress::from(c.source)));
        assert_eq!(ev.destination, Some(TcpAddress::from(c.destination)));
        let dst = ev.destination_meta.unwrap().labels;
        assert_eq!(dst.len(), 4, "{dst:?}");
        assert_eq!(dst["service"], "web");
        assert_eq!(dst["namespace"], "default");
        assert_eq!(dst["tls"], "true");
        assert_eq!(dst["server_id"], SERVER_ID);
        let src = ev.source_meta.unwrap().labels;
        assert_eq!((src.len(), &*src["tls"]), (1, "loopback"), "{src:?}");
        assert_eq!(ev.route_meta.unwrap().labels["route"], "get-a");
        assert_eq!(
            ev.proxy_direction,
            tap_event::ProxyDirection::Outbound as i32
        );

        let inbound = Common {
            inbound: true,
            dst_labels: None,
            route: None,
            src_tls: TapTls::Client("client.ns.serviceaccount"),
            dst_tls: TapTls::No("loopback"),
            ..common(&labels)
        };
        common_fields(&inbound, &mut out);
        let ev = TapEvent::decode(&out[..]).unwrap();
        let src = ev.source_meta.unwrap().labels;
        assert_eq!(src["client_id"], "client.ns.serviceaccount");
        assert_eq!(src["tls"], "true");
        let dst = ev.destination_meta.unwrap().labels;
        assert_eq!((dst.len(), &*dst["tls"]), (1, "loopback"), "{dst:?}");
        assert!(ev.route_meta.is_none());
        assert_eq!(
            ev.proxy_direction,
            tap_event::ProxyDirection::Inbound as i32
        );
    }

    /// Varints and addresses, written by hand, are byte for byte what
    /// prost writes: every length of varint, IPv4 and IPv6 (either half
    /// zero, or both), port zero and the largest.
    #[test]
    fn varints_and_addresses_are_written_as_prost_would() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, u64::MAX >> shift] {
                let mut ours = Vec::new();
                put_varint(&mut ours, v);
                let mut theirs = Vec::new();
                prost::encoding::encode_varint(v, &mut theirs);
                assert_eq!(ours, theirs, "{v}");
            }
        }
        for a in [
            "0.0.0.0:0",
            "10.0.0.1:40000",
            "255.255.255.255:65535",
            "[::]:0",
            "[::1]:80",
            "[fd00::]:8080",
            "[fd00::2]:1",
            "[::ffff:10.1.2.3]:443",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut ours = Vec::new();
            put_tcp_address(&mut ours, 2, addr);
            let mut theirs = Vec::new();
            prost::encoding::message::encode(2, &TcpAddress::from(addr), &mut theirs);
            assert_eq!(ours, theirs, "{a}");
        }
    }

    /// The message prost would write for `ev` (what the hand-written
    /// encoder must match).
    fn prost_event(id: StreamId, ev: &HttpEvent<'_>) -> th::Event {
        let id = Some(th::StreamId {
            base: id.0,
            stream: id.1,
        });
        let duration = |d: Duration| prost_types::Duration::try_from(d).ok();
        let headers = |f: Option<&[(String, Vec<u8>)]>| {
            f.map(|f| linkerd2_proxy_api::http_types::Headers {
                headers: f
                    .iter()
                    .map(|(n, v)| linkerd2_proxy_api::http_types::headers::Header {
                        name: n.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            })
        };
        match *ev {
            HttpEvent::RequestInit {
                method,
                scheme,
                authority,
                path,
                headers: h,
            } => th::Event::RequestInit(th::RequestInit {
                id,
                method: http::Method::from_bytes(method.as_bytes())
                    .map(HttpMethod::from)
                    .ok(),
                scheme: Some(Scheme::from(scheme)),
                authority: authority.into(),
                path: path.into(),
                headers: headers(h),
            }),
            HttpEvent::ResponseInit {
                since_request,
                status,
                headers: h,
            } => th::Event::ResponseInit(th::ResponseInit {
                id,
                since_request_init: duration(since_request),
                http_status: u32::from(status),
                headers: headers(h),
            }),
            HttpEvent::ResponseEnd {
                since: (head, end),
                bytes,
                eos,
                trailers,
            } => th::Event::ResponseEnd(th::ResponseEnd {
                id,
                since_request_init: duration(end),
                since_response_init: duration(end.saturating_sub(head)),
                response_bytes: bytes,
                eos: match eos {
                    TapEos::None => None,
                    TapEos::Grpc(c) => Some(eos::End::GrpcStatusCode(c)),
                    TapEos::Reset(c) => Some(eos::End::ResetErrorCode(c)),
                }
                .map(|e| Eos { end: Some(e) }),
                trailers: headers(trailers),
            }),
        }
    }

    /// Every kind of event, written by hand, is byte for byte what prost
    /// writes for the same message: registered and unregistered methods,
    /// empty strings, zero ids and times, both kinds of end, and header
    /// sections long enough that their lengths take two or three bytes.
    #[test]
    fn events_are_written_as_prost_would() {
        let few = vec![
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("x-empty".to_string(), Vec::new()),
        ];
        let long = vec![("x-long".to_string(), vec![b'v'; 200])];
        let huge: Vec<_> = (0..300)
            .map(|i| (format!("x-field-{i}"), vec![b'a'; 64]))
            .collect();
        let ms = Duration::from_millis;
        let events = [
            HttpEvent::RequestInit {
                method: "GET",
                scheme: "http",
                authority: "web.test",
                path: "/a",
                headers: None,
            },
            HttpEvent::RequestInit {
                method: "PURGE",
                scheme: "https",
                authority: "",
                path: "",
                headers: Some(&few),
            },
            HttpEvent::RequestInit {
                method: "TRACE",
                scheme: "ftp",
                authority: "web.test:8080",
                path: "/long",
                headers: Some(&long),
            },
            HttpEvent::RequestInit {
                method: "POST",
                scheme: "http",
                authority: "web.test",
                path: "/huge",
                headers: Some(&huge),
            },
            HttpEvent::ResponseInit {
                since_request: Duration::ZERO,
                status: 200,
                headers: None,
            },
            HttpEvent::ResponseInit {
                since_request: Duration::new(3, 5),
                status: 503,
                headers: Some(&long),
            },
            HttpEvent::ResponseEnd {
                since: (ms(2), ms(5)),
                bytes: 0,
                eos: TapEos::None,
                trailers: None,
            },
            HttpEvent::ResponseEnd {
                since: (ms(2), Duration::new(70, 999_999_999)),
                bytes: 1 << 40,
                eos: TapEos::Grpc(0),
                trailers: Some(&few),
            },
            HttpEvent::ResponseEnd {
                since: (ms(9), ms(1)),
                bytes: 42,
                eos: TapEos::Reset(8),
                trailers: Some(&huge),
            },
        ];
        for (i, ev) in events.iter().enumerate() {
            for id in [(0, 0), (1, 7), (u32::MAX, u64::MAX)] {
                let mut ours = Vec::new();
                put_event(&mut ours, &[], id, ev);
                let theirs = TapEvent {
                    event: Some(tap_event::Event::Http(tap_event::Http {
                        event: Some(prost_event(id, ev)),
                    })),
                    ..TapEvent::default()
                }
                .encode_to_vec();
                assert_eq!(ours[0], 0, "event {i}: uncompressed");
                let len = u32::from_be_bytes(ours[1..5].try_into().unwrap()) as usize;
                assert_eq!(len, ours.len() - 5, "event {i}: the frame's length");
                assert!(ours[5..] == theirs[..], "event {i}, id {id:?}");
            }
        }
    }

    /// Events appended one after another are gRPC messages, each the
    /// common fields followed by its HTTP event, decoding as one
    /// `TapEvent`.
    #[test]
    fn events_are_grpc_messages_of_the_common_fields_and_the_http_event() {
        let labels = labels();
        let c = common(&labels);
        let mut common_bytes = Vec::new();
        common_fields(&c, &mut common_bytes);
        let mut out = Vec::new();
        let init = HttpEvent::RequestInit {
            method: "GET",
            scheme: "http",
            authority: "web.test",
            path: "/a",
            headers: None,
        };
        put_event(&mut out, &common_bytes, (1, 7), &init);
        let trailers = vec![("grpc-status".to_string(), b"0".to_vec())];
        let end = HttpEvent::ResponseEnd {
            since: (Duration::from_millis(2), Duration::from_millis(5)),
            bytes: 42,
            eos: TapEos::Grpc(0),
            trailers: Some(&trailers),
        };
        put_event(&mut out, &common_bytes, (1, 7), &end);

        let mut events = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0, "uncompressed");
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            events.push(TapEvent::decode(&rest[5..5 + len]).unwrap());
            rest = &rest[5 + len..];
        }
        assert_eq!(events.len(), 2);
        for ev in &events {
            assert_eq!(ev.destination, Some(TcpAddress::from(c.destination)));
        }
        let http = |ev: &TapEvent| match &ev.event {
            Some(tap_event::Event::Http(tap_event::Http { event: Some(e) })) => e.clone(),
            other => panic!("{other:?}"),
        };
        let th::Event::RequestInit(init) = http(&events[0]) else {
            panic!("{:?}", events[0])
        };
        assert_eq!(
            (init.authority.as_str(), init.path.as_str()),
            ("web.test", "/a")
        );
        assert_eq!(init.id, Some(th::StreamId { base: 1, stream: 7 }));
        let th::Event::ResponseEnd(end) = http(&events[1]) else {
            panic!("{:?}", events[1])
        };
        assert_eq!(end.response_bytes, 42);
        assert_eq!(
            end.since_response_init,
            prost_types::Duration::try_from(Duration::from_millis(3)).ok()
        );
        assert_eq!(
            end.eos.and_then(|e| e.end),
            Some(eos::End::GrpcStatusCode(0))
        );
        assert_eq!(end.trailers.unwrap().headers[0].name, "grpc-status");
    }
}
