//! Which path a routed request takes: the one place that chooses between
//! proxying in the client's own protocol and translating, so the servers
//! (`http1`, `http2`) reach `translate` only through here and never each
//! other.
//!
//! - A plain HTTP/1.1 request (no upgrade, no CONNECT) goes over HTTP/2
//!   with `l5d-orig-proto` when every endpoint of its service is hinted as
//!   meshed (a service with mixed endpoints stays HTTP/1), and without the
//!   mark when the service speaks HTTP/2 only (`protocol = "http2"`).
//! - An HTTP/2 stream goes upstream as HTTP/1.1 when a peer proxy carried
//!   it (`l5d-orig-proto: HTTP/1.x`, removed here; another value is removed
//!   and ignored, as linkerd2-proxy ignores it) or the service speaks
//!   HTTP/1 only; otherwise it stays HTTP/2.
//!
//! Must not: do I/O (the paths themselves are `h1forward`, `h2client` and
//! `translate`).

use http::{HeaderMap, HeaderName};
use ringmesh_discovery::{Protocol as DiscoveredProtocol, Service};
use ringmesh_protocols::http1::{RequestHead, Version};

use crate::route::Dst;
pub(crate) use crate::translate::{h1_over_h2, h2_to_h1};

/// The path of a request that came in as HTTP/1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Http1Path {
    Http1,
    /// As an HTTP/2 stream (`h1_over_h2`); `mark`: to a meshed endpoint,
    /// whose proxy restores HTTP/1.1 (`l5d-orig-proto`), else to a server
    /// that speaks HTTP/2 itself.
    OverHttp2 {
        mark: bool,
    },
    /// To a service that speaks HTTP/2 alone (`protocol = "http2"`, no
    /// peer proxy in front): a request that cannot become an HTTP/2
    /// stream (HTTP/1.0, an upgrade, CONNECT) is answered, not sent to it
    /// as HTTP/1 bytes; the value is the status (505 or 501).
    Refused(u16),
}

/// The path of a stream that came in as HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Http2Path {
    Http2,
    /// As HTTP/1.1 (`h2_to_h1`); `orig_proto`: a peer proxy carried it.
    Http1 {
        orig_proto: bool,
    },
}

/// Parsed once: a `&str` key is parsed into a name on every lookup.
const ORIG_PROTO: HeaderName = HeaderName::from_static(crate::translate::ORIG_PROTO);

pub(crate) fn http1(target: &Dst, req: &RequestHead) -> Http1Path {
    http1_to(service(target), req)
}

/// Also removes `l5d-orig-proto` from `headers` (it is for this hop).
pub(crate) fn http2(target: &Dst, headers: &mut HeaderMap) -> Http2Path {
    http2_to(service(target), headers)
}

fn service(target: &Dst) -> Option<&Service> {
    match target {
        Dst::Service(svc, _) => Some(svc),
        Dst::Addr(_) => None,
    }
}

fn http1_to(svc: Option<&Service>, req: &RequestHead) -> Http1Path {
    let Some(svc) = svc else {
        return Http1Path::Http1;
    };
    let plain = req.version() == Version::Http11 && !req.is_connect() && req.upgrade().is_none();
    if !plain {
        if svc.protocol == Some(DiscoveredProtocol::Http2) && !svc.all_h2_hint() {
            let status = if req.version() == Version::Http11 {
                501
            } else {
                505
            };
            return Http1Path::Refused(status);
        }
        Http1Path::Http1
    } else if svc.all_h2_hint() {
        Http1Path::OverHttp2 { mark: true }
    } else if svc.protocol == Some(DiscoveredProtocol::Http2) {
        Http1Path::OverHttp2 { mark: false }
    } else {
        Http1Path::Http1
    }
}

/// Whether an `l5d-orig-proto` value names an HTTP/1 version (a peer's
/// `HTTP/1.1`, possibly with `; absolute-form`).
fn marks_http1(value: &[u8]) -> bool {
    value.starts_with(b"HTTP/1.1") || value.starts_with(b"HTTP/1.0")
}

fn http2_to(svc: Option<&Service>, headers: &mut HeaderMap) -> Http2Path {
    let orig_proto = match headers.remove(ORIG_PROTO) {
        Some(v) if marks_http1(v.as_bytes()) => true,
        Some(v) => {
            tracing::debug!(value = ?v, "l5d-orig-proto names no HTTP/1 version; ignored");
            false
        }
        None => false,
    };
    let http1_only = svc.is_some_and(|s| s.protocol == Some(DiscoveredProtocol::Http1));
    if orig_proto || http1_only {
        Http2Path::Http1 { orig_proto }
    } else {
        Http2Path::Http2
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderValue;
    use ringmesh_discovery::{Authority, Endpoint};
    use ringmesh_protocols::http1::Limits;

    use super::*;

    fn service(h2_hints: &[bool], protocol: Option<DiscoveredProtocol>) -> Service {
        let endpoints = h2_hints
            .iter()
            .enumerate()
            .map(|(i, &h2_hint)| Endpoint {
                h2_hint,
                ..Endpoint::unmeshed(format!("10.0.0.{}:80", i + 1).parse().unwrap(), 1)
            })
            .collect();
        let name = Authority::parse("web.ns.svc.cluster.local:80").unwrap();
        Service::new(name, endpoints, protocol, Arc::new([]))
    }

    fn request(head: &str) -> RequestHead {
        let mut req = RequestHead::new();
        let n = req.parse(head.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(n, Some(head.len()), "{head:?}");
        req
    }

    #[test]
    fn http1_goes_over_http2_only_to_all_meshed_services_when_plain() {
        let get = request("GET / HTTP/1.1\r\nHost: web\r\n\r\n");
        let meshed = service(&[true, true], None);
        let mixed = service(&[true, false], None);
        let h2_only = service(&[false, false], Some(DiscoveredProtocol::Http2));
        let h1_only = service(&[false], Some(DiscoveredProtocol::Http1));
        let meshed_h2 = service(&[true], Some(DiscoveredProtocol::Http2));
        let marked = Http1Path::OverHttp2 { mark: true };
        assert_eq!(http1_to(Some(&meshed), &get), marked);
        assert_eq!(http1_to(Some(&meshed_h2), &get), marked);
        assert_eq!(
            http1_to(Some(&h2_only), &get),
            Http1Path::OverHttp2 { mark: false }
        );
        assert_eq!(http1_to(Some(&h1_only), &get), Http1Path::Http1);
        assert_eq!(http1_to(Some(&mixed), &get), Http1Path::Http1);
        assert_eq!(http1_to(None, &get), Http1Path::Http1, "a plain address");
        // What cannot become an HTTP/2 stream goes as HTTP/1 to meshed
        // endpoints (their proxy takes HTTP/1), and is answered by the
        // proxy for a service that speaks HTTP/2 alone.
        for (head, refused) in [
            ("GET / HTTP/1.0\r\nHost: web\r\n\r\n", 505),
            (
                "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                501,
            ),
            ("CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n", 501),
        ] {
            let req = request(head);
            assert_eq!(http1_to(Some(&meshed), &req), Http1Path::Http1, "{head:?}");
            assert_eq!(
                http1_to(Some(&h2_only), &req),
                Http1Path::Refused(refused),
                "{head:?}"
            );
        }
    }

    #[test]
    fn http2_goes_as_http1_when_carried_or_to_http1_only_services() {
        let h2 = service(&[true], None);
        let h1_only = service(&[false], Some(DiscoveredProtocol::Http1));
        let mut plain = HeaderMap::new();
        assert_eq!(http2_to(Some(&h2), &mut plain), Http2Path::Http2);
        assert_eq!(http2_to(None, &mut plain), Http2Path::Http2);
        assert_eq!(
            http2_to(Some(&h1_only), &mut plain),
            Http2Path::Http1 { orig_proto: false }
        );
        let mut carried = HeaderMap::new();
        carried.insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        assert_eq!(
            http2_to(Some(&h2), &mut carried),
            Http2Path::Http1 { orig_proto: true }
        );
        assert!(carried.is_empty(), "l5d-orig-proto goes no further");
        for (value, http1) in [
            ("HTTP/1.0", true),
            ("HTTP/1.1; absolute-form", true),
            ("HTTP/2", false),
            ("h2", false),
            ("", false),
        ] {
            let mut carried = HeaderMap::new();
            carried.insert(ORIG_PROTO, HeaderValue::from_static(value));
            let path = http2_to(Some(&h2), &mut carried);
            let want = if http1 {
                Http2Path::Http1 { orig_proto: true }
            } else {
                Http2Path::Http2
            };
            assert_eq!(path, want, "{value:?}");
            assert!(carried.is_empty(), "{value:?} goes no further");
        }
    }
}
