//! linkerd2-proxy's proxy-error families: `inbound_tcp_errors_total` and
//! `outbound_tcp_errors_total` (connections the proxy could not serve,
//! labelled `target_addr` and `error`), counted per worker in an
//! [`ErrorShard`]; and `inbound_http_errors_total` /
//! `outbound_http_errors_total` (requests the proxy answered with an error
//! of its own, labelled `error`), read from the HTTP shard's `error` labels
//! when encoded, so a request pays nothing more for them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use super::http::HttpShard;
use super::labels::Direction;
use super::{cap_hit, family, MAX_SERIES};

/// Why a connection or request could not be served, with linkerd2-proxy's
/// `error` label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyErrorKind {
    /// No endpoint within the fail-fast timeout, or a name not resolved.
    FailFast,
    /// A failed read, write or connect (a TLS handshake's failure too, as
    /// linkerd2-proxy's TLS errors are I/O errors).
    Io,
    /// No complete ClientHello, or no handshake, within its timeout.
    TlsDetectTimeout,
    /// Denied by the inbound policy.
    Unauthorized,
    /// No response head in time (outbound).
    ResponseTimeout,
    GatewayDomainInvalid,
    GatewayIdentityRequired,
    GatewayLoop,
    Unexpected,
}

impl ProxyErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailFast => "failfast",
            Self::Io => "i/o",
            Self::TlsDetectTimeout => "tls detection timeout",
            Self::Unauthorized => "unauthorized",
            Self::ResponseTimeout => "response timeout",
            Self::GatewayDomainInvalid => "gateway domain invalid",
            Self::GatewayIdentityRequired => "gateway identity required",
            Self::GatewayLoop => "gateway loop",
            Self::Unexpected => "unexpected",
        }
    }

    /// The kind of an HTTP answer the proxy made, from its
    /// `response_total` `error` label; `None` for a client's own fault (a
    /// malformed request, which linkerd2-proxy's HTTP server refuses
    /// before any of its stacks).
    pub fn of_http(direction: Direction, error: &str) -> Option<Self> {
        Some(match error {
            "bad_request" => return None,
            "no_endpoints" | "unresolved" => Self::FailFast,
            "connect_failed" | "connect_timeout" | "tls_failed" | "upstream_failed" => Self::Io,
            "response_timeout" if direction == Direction::Outbound => Self::ResponseTimeout,
            "unauthorized" if direction == Direction::Inbound => Self::Unauthorized,
            _ => Self::Unexpected,
        })
    }
}

/// A worker's counts of connections it could not serve.
#[derive(Clone, Debug, Default)]
pub struct ErrorShard(pub HashMap<(Direction, SocketAddr, ProxyErrorKind), u64>);

impl ErrorShard {
    /// Counts a connection to `target` (its original destination) that
    /// the proxy could not serve.
    pub fn tcp(&mut self, direction: Direction, target: SocketAddr, kind: ProxyErrorKind) {
        let key = (direction, target, kind);
        if let Some(n) = self.0.get_mut(&key) {
            *n += 1;
            return;
        }
        if self.0.len() >= MAX_SERIES {
            cap_hit("tcp_errors");
            return;
        }
        self.0.insert(key, 1);
    }

    pub fn merge(&mut self, other: &ErrorShard) {
        for (k, n) in &other.0 {
            *self.0.entry(*k).or_default() += n;
        }
    }

    /// Appends the TCP error families, then the HTTP ones read from
    /// `http`'s answers; each only when it has a series (as
    /// linkerd2-proxy).
    pub fn encode(&self, http: &HttpShard, out: &mut String) {
        let mut tcp: Vec<_> = self
            .0
            .iter()
            .map(|((d, target, kind), n)| (*d, format!("target_addr=\"{target}\","), *kind, *n))
            .collect();
        tcp.sort();
        encode_families(out, "tcp", "TCP connections", &tcp);
        let mut by_kind: HashMap<(Direction, ProxyErrorKind), u64> = HashMap::new();
        for (key, counters) in &http.0 {
            for (class, c) in &counters.by_status {
                let Some(kind) = class
                    .error
                    .and_then(|e| ProxyErrorKind::of_http(key.direction, e))
                else {
                    continue;
                };
                *by_kind.entry((key.direction, kind)).or_default() += c.total;
            }
        }
        let mut http: Vec<_> = by_kind
            .into_iter()
            .map(|((d, kind), n)| (d, String::new(), kind, n))
            .collect();
        http.sort();
        encode_families(out, "http", "HTTP requests", &http);
    }
}

/// `{inbound,outbound}_{proto}_errors_total` from `rows` (sorted: their
/// direction, the labels before `error`, the error, the count), each
/// family only when it has a series.
fn encode_families(
    out: &mut String,
    proto: &str,
    what: &str,
    rows: &[(Direction, String, ProxyErrorKind, u64)],
) {
    for direction in [Direction::Inbound, Direction::Outbound] {
        let mut of = rows.iter().filter(|r| r.0 == direction).peekable();
        if of.peek().is_none() {
            continue;
        }
        let name = format!("{}_{proto}_errors_total", direction.as_str());
        let help = format!(
            "The total number of {} {what} that could not be processed due to a proxy error.",
            direction.as_str()
        );
        family(out, &name, "counter", &help);
        for (_, labels, kind, n) in of {
            let _ = writeln!(out, "{name}{{{labels}error=\"{}\"}} {n}", kind.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{HttpKey, ResponseClass, TlsStatus};

    #[test]
    fn families_as_linkerd2_proxy_writes_them() {
        let mut shard = ErrorShard::default();
        let target: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        shard.tcp(Direction::Inbound, target, ProxyErrorKind::TlsDetectTimeout);
        shard.tcp(Direction::Inbound, target, ProxyErrorKind::TlsDetectTimeout);
        let mut other = ErrorShard::default();
        other.tcp(Direction::Outbound, target, ProxyErrorKind::Io);
        shard.merge(&other);
        let mut http = HttpShard::default();
        let key = HttpKey {
            direction: Direction::Outbound,
            tls: TlsStatus::NO_PROXY_IDENTITY,
            authority: None,
            target: None,
            dst_labels: None,
            route: None,
        };
        http.record(&key, ResponseClass::http(503, Some("no_endpoints")), 1);
        http.record(&key, ResponseClass::http(502, Some("connect_failed")), 1);
        http.record(&key, ResponseClass::http(400, Some("bad_request")), 1);
        http.record(&key, ResponseClass::http(200, None), 1);
        let mut out = String::new();
        shard.encode(&http, &mut out);
        assert!(out.contains(
            "inbound_tcp_errors_total{target_addr=\"10.0.0.1:8080\",error=\"tls detection timeout\"} 2\n"
        ));
        assert!(out.contains(
            "outbound_tcp_errors_total{target_addr=\"10.0.0.1:8080\",error=\"i/o\"} 1\n"
        ));
        assert!(out.contains("outbound_http_errors_total{error=\"failfast\"} 1\n"));
        assert!(out.contains("outbound_http_errors_total{error=\"i/o\"} 1\n"));
        assert!(!out.contains("inbound_http_errors_total"), "{out}");
        assert_eq!(out.matches("# TYPE").count(), 3, "{out}");
    }
}
