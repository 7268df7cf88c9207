//! Tap events as they go on the wire: each a `TapEvent` protobuf message
//! in a gRPC frame, written by the worker that saw the request (the
//! control core only forwards the bytes).
//!
//! A request's addresses and metadata (the fields every one of its events
//! repeats) are encoded once, by hand, when it is matched; each event is
//! those bytes followed by its HTTP event (a protobuf message is the
//! concatenation of its fields).
//!
//! Must not: allocate per event beyond what prost's message types need
//! (the HTTP event's strings move in; header fields are copied only for a
//! tap that extracts them).

use std::net::SocketAddr;
use std::time::Duration;

use linkerd2_proxy_api::http_types::{HttpMethod, Scheme};
use linkerd2_proxy_api::net::TcpAddress;
use linkerd2_proxy_api::tap::tap_event::{self, http as th};
use linkerd2_proxy_api::tap::{eos, Eos, TapEvent};
use prost::Message as _;

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
    /// The client's identity (inbound, mutual TLS).
    pub(crate) client_id: Option<&'a str>,
    /// The server's identity (outbound, mutual TLS).
    pub(crate) server_id: Option<&'a str>,
}

/// The fields every event of a request repeats, encoded as `TapEvent`
/// fields into `out` (cleared first): its addresses, `source_meta` (`tls`,
/// `client_id` for a meshed inbound client), `destination_meta` (the
/// destination's labels, `tls` and `server_id` for a meshed outbound
/// endpoint), `route_meta` and `proxy_direction`. Written straight from
/// the request's description: no maps or copies of its labels.
pub(crate) fn common_fields(c: &Common<'_>, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, message, WireType};
    out.clear();
    message::encode(1, &TcpAddress::from(c.source), out);
    message::encode(2, &TcpAddress::from(c.destination), out);
    let dst_tls = c.server_id.map(|id| [("tls", "true"), ("server_id", id)]);
    let dst = c
        .dst_labels
        .iter()
        .flat_map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .chain(dst_tls.into_iter().flatten());
    put_labels(out, 4, dst);
    let src_tls = c.client_id.map(|id| [("tls", "true"), ("client_id", id)]);
    put_labels(out, 5, src_tls.into_iter().flatten());
    let direction = if c.inbound {
        tap_event::ProxyDirection::Inbound
    } else {
        tap_event::ProxyDirection::Outbound
    };
    encode_key(6, WireType::Varint, out);
    encode_varint(direction as u64, out);
    if let Some(r) = c.route {
        put_labels(out, 7, [("route", r)].into_iter());
    }
}

/// A message of one `map<string, string> labels = 1` field (`EndpointMeta`,
/// `RouteMeta`) as field `tag`.
fn put_labels<'a>(
    out: &mut Vec<u8>,
    tag: u32,
    labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let string_len = |s: &str| 1 + encoded_len_varint(s.len() as u64) + s.len();
    let entry_len = |k: &str, v: &str| string_len(k) + string_len(v);
    let put_string = |out: &mut Vec<u8>, tag: u32, s: &str| {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    };
    let inner: usize = labels
        .clone()
        .map(|(k, v)| {
            let e = entry_len(k, v);
            1 + encoded_len_varint(e as u64) + e
        })
        .sum();
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(inner as u64, out);
    for (k, v) in labels {
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(entry_len(k, v) as u64, out);
        put_string(out, 1, k);
        put_string(out, 2, v);
    }
}

/// Appends one gRPC message to `out`: a `TapEvent` of a request's
/// `common` fields and the HTTP event.
pub(crate) fn put_event(out: &mut Vec<u8>, common: &[u8], ev: th::Event) {
    let http = TapEvent {
        event: Some(tap_event::Event::Http(tap_event::Http { event: Some(ev) })),
        ..TapEvent::default()
    };
    let len = common.len() + http.encoded_len();
    out.reserve(5 + len);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(common);
    // (Into a `Vec` with room reserved: cannot fail.)
    let _ = http.encode(out);
}

/// The request's start (its strings move into the event).
pub(crate) fn request_init(
    id: StreamId,
    method: &str,
    authority: String,
    path: String,
    headers: Option<&[(String, Vec<u8>)]>,
) -> th::Event {
    let method = http::Method::from_bytes(method.as_bytes())
        .map(HttpMethod::from)
        .ok();
    th::Event::RequestInit(th::RequestInit {
        id: Some(stream_id(id)),
        method,
        scheme: Some(Scheme::from("http")),
        authority,
        path,
        headers: headers.map(pb_headers),
    })
}

/// The response's head, `since_request` after the request was seen.
pub(crate) fn response_init(
    id: StreamId,
    status: u16,
    since_request: Duration,
    headers: Option<&[(String, Vec<u8>)]>,
) -> th::Event {
    th::Event::ResponseInit(th::ResponseInit {
        id: Some(stream_id(id)),
        since_request_init: duration(since_request),
        http_status: u32::from(status),
        headers: headers.map(pb_headers),
    })
}

/// The request's end: `since_request_end` after it was seen, its
/// response's head `since_request` after.
pub(crate) fn response_end(
    id: StreamId,
    (since_request, since_request_end): (Duration, Duration),
    bytes: u64,
    eos: TapEos,
    trailers: Option<&[(String, Vec<u8>)]>,
) -> th::Event {
    let end = match eos {
        TapEos::None => None,
        TapEos::Grpc(c) => Some(eos::End::GrpcStatusCode(c)),
        TapEos::Reset(c) => Some(eos::End::ResetErrorCode(c)),
    };
    th::Event::ResponseEnd(th::ResponseEnd {
        id: Some(stream_id(id)),
        since_request_init: duration(since_request_end),
        since_response_init: duration(since_request_end.saturating_sub(since_request)),
        response_bytes: bytes,
        eos: end.map(|e| Eos { end: Some(e) }),
        trailers: trailers.map(pb_headers),
    })
}

/// Header fields as the proto carries them.
fn pb_headers(fields: &[(String, Vec<u8>)]) -> linkerd2_proxy_api::http_types::Headers {
    linkerd2_proxy_api::http_types::Headers {
        headers: fields
            .iter()
            .map(|(n, v)| linkerd2_proxy_api::http_types::headers::Header {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn stream_id((base, stream): StreamId) -> th::StreamId {
    th::StreamId { base, stream }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            client_id: None,
            server_id: Some(SERVER_ID),
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
        assert!(ev.source_meta.unwrap().labels.is_empty());
        assert_eq!(ev.route_meta.unwrap().labels["route"], "get-a");
        assert_eq!(
            ev.proxy_direction,
            tap_event::ProxyDirection::Outbound as i32
        );

        let inbound = Common {
            inbound: true,
            dst_labels: None,
            route: None,
            client_id: Some("client.ns.serviceaccount"),
            server_id: None,
            ..common(&labels)
        };
        common_fields(&inbound, &mut out);
        let ev = TapEvent::decode(&out[..]).unwrap();
        let src = ev.source_meta.unwrap().labels;
        assert_eq!(src["client_id"], "client.ns.serviceaccount");
        assert_eq!(src["tls"], "true");
        assert!(ev.destination_meta.unwrap().labels.is_empty());
        assert!(ev.route_meta.is_none());
        assert_eq!(
            ev.proxy_direction,
            tap_event::ProxyDirection::Inbound as i32
        );
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
        let init = request_init((1, 7), "GET", "web.test".into(), "/a".into(), None);
        put_event(&mut out, &common_bytes, init);
        let trailers = vec![("grpc-status".to_string(), b"0".to_vec())];
        let end = response_end(
            (1, 7),
            (Duration::from_millis(2), Duration::from_millis(5)),
            42,
            TapEos::Grpc(0),
            Some(&trailers),
        );
        put_event(&mut out, &common_bytes, end);

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
        assert_eq!(end.since_response_init, duration(Duration::from_millis(3)));
        assert_eq!(
            end.eos.and_then(|e| e.end),
            Some(eos::End::GrpcStatusCode(0))
        );
        assert_eq!(end.trailers.unwrap().headers[0].name, "grpc-status");
    }
}
