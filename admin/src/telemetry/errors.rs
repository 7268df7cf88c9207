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
use std::time::{Duration, Instant};

use super::http::HttpShard;
use super::labels::{target_labels, Direction};
use super::{cap_hit_then, family, MAX_SERIES};

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
            // A client's fault, or an upstream's response failing after it
            // began (not an answer the proxy made).
            "bad_request" | super::http::RESPONSE_BODY_FAILED | super::http::STREAM_RESET => {
                return None
            }
            "no_endpoints" | "unresolved" => Self::FailFast,
            "connect_failed" | "connect_timeout" | "tls_failed" | "upstream_failed" => Self::Io,
            "response_timeout" if direction == Direction::Outbound => Self::ResponseTimeout,
            // Policy refusals are counted in the authorization families
            // alone, as linkerd2-proxy's (`ErrorKind::mk`).
            "unauthorized" | "route_not_found" if direction == Direction::Inbound => return None,
            _ => Self::Unexpected,
        })
    }
}

/// A worker's counts of connections it could not serve, by direction,
/// original destination and error. Each direction's label sets are capped
/// alone at [`MAX_SERIES`] (a flood of one side's errors, to addresses a
/// client picks, must not hide the other's); past the cap a direction's
/// errors are still counted, under `target_addr="other"`. Label sets idle
/// for `LINKERD2_PROXY_METRICS_RETAIN_IDLE` are dropped ([`Self::evict_idle`]).
#[derive(Clone, Debug, Default)]
pub struct ErrorShard {
    series: HashMap<(Direction, Option<SocketAddr>, ProxyErrorKind), Count>,
    /// Label sets with a target, per direction (inbound, outbound).
    targets: [usize; 2],
}

#[derive(Clone, Copy, Debug)]
struct Count {
    n: u64,
    last: Instant,
}

fn side(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

impl ErrorShard {
    /// Counts a connection to `target` (its original destination) that
    /// the proxy could not serve.
    pub fn tcp(&mut self, direction: Direction, target: SocketAddr, kind: ProxyErrorKind) {
        let now = Instant::now();
        let mut key = (direction, Some(target), kind);
        if !self.series.contains_key(&key) {
            if self.targets[side(direction)] >= MAX_SERIES {
                cap_hit_then(
                    "tcp_errors",
                    "new label sets are counted under target_addr=\"other\"",
                );
                key.1 = None;
            } else {
                self.targets[side(direction)] += 1;
            }
        }
        let c = self.series.entry(key).or_insert(Count { n: 0, last: now });
        c.n += 1;
        c.last = now;
    }

    /// Drops the label sets that have not counted for `retain`, and
    /// returns them (see `HttpShard::evict_idle`).
    pub fn evict_idle(&mut self, retain: Duration) -> ErrorShard {
        let targets = &mut self.targets;
        let series = self
            .series
            .extract_if(|(d, target, _), c| {
                let evict = c.last.elapsed() >= retain;
                if evict && target.is_some() {
                    targets[side(*d)] -= 1;
                }
                evict
            })
            .collect();
        ErrorShard {
            series,
            targets: [0, 0],
        }
    }

    /// As `HttpShard::merge_residue`.
    pub fn merge_residue(&mut self, residue: &mut ErrorShard, prune: bool) {
        if prune {
            residue.series.retain(|k, _| self.series.contains_key(k));
            return self.merge(residue);
        }
        let present = residue
            .series
            .iter()
            .filter(|(k, _)| self.series.contains_key(*k));
        let present = ErrorShard {
            series: present.map(|(k, c)| (*k, *c)).collect(),
            targets: [0, 0],
        };
        self.merge(&present);
    }

    pub fn merge(&mut self, other: &ErrorShard) {
        for (k, c) in &other.series {
            let mine = self
                .series
                .entry(*k)
                .or_insert(Count { n: 0, last: c.last });
            mine.n += c.n;
            mine.last = mine.last.max(c.last);
        }
    }

    /// Appends the TCP error families, then the HTTP ones read from
    /// `http`'s answers; each only when it has a series (as
    /// linkerd2-proxy).
    /// `gone`: HTTP errors of label sets gone from every worker, which the
    /// HTTP error families keep counting (they are not per label set).
    pub fn encode(&self, http: &HttpShard, gone: &HttpErrors, out: &mut String) {
        let mut tcp: Vec<_> = self
            .series
            .iter()
            .map(|((d, target, kind), c)| {
                let label = match target {
                    Some(t) => format!("{},", target_labels(*t)),
                    None => "target_addr=\"other\",".to_string(),
                };
                (*d, label, *kind, c.n)
            })
            .collect();
        tcp.sort();
        encode_families(out, "tcp", "TCP connections", &tcp);
        let mut by_kind = gone.clone();
        count_http_errors(http, &mut by_kind);
        let mut http: Vec<_> = by_kind
            .into_iter()
            .map(|((d, labels, kind), n)| (d, labels, kind, n))
            .collect();
        http.sort();
        encode_families(out, "http", "HTTP requests", &http);
    }
}

/// HTTP requests the proxy answered itself, by direction, labels (each
/// followed by a comma) and kind.
pub type HttpErrors = HashMap<(Direction, String, ProxyErrorKind), u64>;

/// Adds `http`'s answers of the proxy's own to `into`, by kind (read from
/// `response_total`'s `error` label): inbound by target and server too
/// (`target_*`, `srv_*`), as linkerd2-proxy labels them; outbound by kind
/// alone, as there.
pub fn count_http_errors(http: &HttpShard, into: &mut HttpErrors) {
    for (key, counters) in &http.0 {
        let mut labels = None;
        for (class, c) in &counters.by_status {
            let Some(kind) = class
                .error
                .and_then(|e| ProxyErrorKind::of_http(key.direction, e))
            else {
                continue;
            };
            let labels = labels.get_or_insert_with(|| http_error_labels(key));
            *into
                .entry((key.direction, labels.clone(), kind))
                .or_default() += c.total;
        }
    }
}

/// An inbound HTTP error's labels before `error`: the target and the
/// server (linkerd2-proxy's `(TargetAddr, ServerLabel)`).
fn http_error_labels(key: &super::http::HttpKey) -> String {
    let mut s = String::new();
    if key.direction != Direction::Inbound {
        return s;
    }
    if let Some(t) = key.target {
        s.push_str(&target_labels(t));
        s.push(',');
    }
    if let Some(p) = &key.policy {
        let server = super::labels::PolicyLabels {
            route: None,
            authz: None,
            ..p.clone()
        };
        let mut l = String::new();
        server.push_labels(&mut l);
        // (`push_labels` writes each label after a comma.)
        s.push_str(&l[1..]);
        s.push(',');
    }
    s
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
            policy: None,
        };
        http.record(&key, ResponseClass::http(503, Some("no_endpoints")), 1);
        http.record(&key, ResponseClass::http(502, Some("connect_failed")), 1);
        http.record(&key, ResponseClass::http(400, Some("bad_request")), 1);
        http.record(&key, ResponseClass::http(200, None), 1);
        let mut out = String::new();
        shard.encode(&http, &HttpErrors::new(), &mut out);
        assert!(out.contains(
            "inbound_tcp_errors_total{target_addr=\"10.0.0.1:8080\",target_ip=\"10.0.0.1\",target_port=\"8080\",error=\"tls detection timeout\"} 2\n"
        ));
        assert!(out.contains(
            "outbound_tcp_errors_total{target_addr=\"10.0.0.1:8080\",target_ip=\"10.0.0.1\",target_port=\"8080\",error=\"i/o\"} 1\n"
        ));
        assert!(out.contains("outbound_http_errors_total{error=\"failfast\"} 1\n"));
        assert!(out.contains("outbound_http_errors_total{error=\"i/o\"} 1\n"));
        assert!(!out.contains("inbound_http_errors_total"), "{out}");
        assert_eq!(out.matches("# TYPE").count(), 3, "{out}");
    }

    /// A flood of one direction's errors to distinct targets: that
    /// direction's are capped and counted on under `target_addr="other"`;
    /// the other direction's still get their own series; idle ones go.
    #[test]
    fn each_direction_is_capped_alone_and_idle_series_go() {
        let mut shard = ErrorShard::default();
        let kind = ProxyErrorKind::TlsDetectTimeout;
        for i in 0..(MAX_SERIES as u32 + 500) {
            let ip = std::net::Ipv4Addr::from(0x7f00_0000 + i);
            shard.tcp(Direction::Inbound, SocketAddr::from((ip, 4143)), kind);
        }
        let target: SocketAddr = "10.0.0.1:80".parse().unwrap();
        for _ in 0..3 {
            shard.tcp(Direction::Outbound, target, ProxyErrorKind::FailFast);
        }
        let mut out = String::new();
        shard.encode(&HttpShard::default(), &HttpErrors::new(), &mut out);
        assert!(out.contains(
            "inbound_tcp_errors_total{target_addr=\"other\",error=\"tls detection timeout\"} 500\n"
        ));
        assert!(out.contains(
            "outbound_tcp_errors_total{target_addr=\"10.0.0.1:80\",target_ip=\"10.0.0.1\",target_port=\"80\",error=\"failfast\"} 3\n"
        ));
        let inbound: u64 = out
            .lines()
            .filter(|l| l.starts_with("inbound_tcp_errors_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(inbound, MAX_SERIES as u64 + 500, "every error counted");
        shard.evict_idle(Duration::ZERO);
        assert!(shard.series.is_empty());
        assert_eq!(shard.targets, [0, 0]);
        shard.tcp(Direction::Inbound, target, kind);
        assert_eq!(shard.targets, [1, 0], "room again once evicted");
    }
}
