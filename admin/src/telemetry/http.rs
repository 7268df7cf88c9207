//! linkerd2-proxy's HTTP families (`request_total`, `response_total`,
//! `response_latency_ms`) and ringmesh's `ringmesh_retries_total`, counted
//! per label set in a worker's [`HttpShard`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::keyed_hash::KeyedState;
use std::sync::Arc;

use super::labels::{
    push_dst_labels, push_label, target_labels, AuthorityLabel, Direction, DstLabels, PolicyLabels,
};
use super::tls::TlsStatus;
use super::{cap_hit, family, MAX_SERIES};

/// linkerd2-proxy's `response_latency_ms` bucket bounds.
pub const LATENCY_BUCKETS_MS: [u64; 25] = [
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000,
    10000, 20000, 30000, 40000, 50000,
];

/// One HTTP label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpKey {
    pub direction: Direction,
    /// The TLS of the connection the requests came in on (inbound) or went
    /// out on (outbound).
    pub tls: TlsStatus,
    pub authority: Option<AuthorityLabel>,
    pub target: Option<SocketAddr>,
    pub dst_labels: Option<DstLabels>,
    /// The service profile's route the request matched (`rt_route`).
    pub route: Option<Arc<str>>,
    /// Inbound: the server, route and authorization that admitted the
    /// request (`srv_*`, `route_*`, `authz_*`, as linkerd2-proxy labels its
    /// inbound HTTP series); `None` before it was judged.
    pub policy: Option<PolicyLabels>,
}

/// gRPC's UNKNOWN: also what a gRPC response that carried no status, or
/// a code over 16, is counted with (as linkerd2-proxy counts them).
pub const GRPC_UNKNOWN: u32 = 2;

impl HttpKey {
    /// Whether the requests of this label set are in `request_total`,
    /// `response_total` and `response_latency_ms`, as linkerd2-proxy counts
    /// them at its endpoint and inbound-route stacks: not an outbound
    /// request answered before it had an endpoint (no endpoints, a name not
    /// resolved, no route: no `target_addr`), nor an inbound one refused by
    /// policy (judged by a server, admitted by no authorization: denied, or
    /// no route matched). Those are still counted: in the error and
    /// authorization families.
    pub fn reported(&self) -> bool {
        match self.direction {
            Direction::Outbound => self.target.is_some(),
            Direction::Inbound => self.policy.as_ref().is_none_or(|p| p.authz.is_some()),
        }
    }
}

/// The gRPC statuses that are failures, as linkerd2-proxy's default gRPC
/// classification (`client_policy::grpc::Codes`) has them: UNKNOWN,
/// DEADLINE_EXCEEDED, PERMISSION_DENIED, INTERNAL, UNAVAILABLE, DATA_LOSS,
/// and any code gRPC does not define (read as UNKNOWN). The others
/// (NOT_FOUND, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) are the
/// application's answers.
pub fn grpc_failure(code: u32) -> bool {
    matches!(code, 2 | 4 | 7 | 13 | 14 | 15) || code > 16
}

/// Why the proxy answered a request itself (the `error` label of
/// `response_total`); `None` for responses that came from upstream.
pub type ErrorLabel = Option<&'static str>;

/// The `error` label of a response the upstream began and then failed
/// (cut short, malformed, or its stream reset): a failure whatever its
/// status, as linkerd2-proxy classifies a response body's error.
pub const RESPONSE_BODY_FAILED: &str = "response_body";

/// The `error` label of a request whose HTTP/2 upstream reset (or did not
/// process) its stream before any response: counted as a 502 (what an
/// HTTP/1 client is answered), the client's stream reset as the
/// upstream's was.
pub const STREAM_RESET: &str = "stream_reset";

/// What a response is counted as: its status, the gRPC status its trailers
/// (or trailers-only headers) carried, and the proxy's own error if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResponseClass {
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub error: ErrorLabel,
    /// A failure or not as the request's route's response classes say
    /// (a ServiceProfile's `responseClasses`); `None`: by the status.
    pub classified: Option<bool>,
}

impl ResponseClass {
    pub fn http(status: u16, error: ErrorLabel) -> Self {
        Self {
            status,
            grpc_status: None,
            error,
            classified: None,
        }
    }

    /// The class of a response the upstream sent whole: by its status and
    /// `grpc_status`; to a gRPC request (`grpc`) that got no gRPC status,
    /// UNKNOWN and not a failure unless a 5xx, as linkerd2-proxy counts a
    /// gRPC stream that ended without one (`Class::Grpc(Ok(Unknown))`).
    pub fn grpc_or_http(status: u16, grpc_status: Option<u32>, grpc: bool) -> Self {
        let unknown = grpc && grpc_status.is_none();
        Self {
            status,
            grpc_status: if unknown {
                Some(GRPC_UNKNOWN)
            } else {
                grpc_status
            },
            error: None,
            classified: unknown.then_some(status >= 500),
        }
    }

    /// The class of a response whose upstream failed after `status` was
    /// sent.
    pub fn broken(status: u16, grpc_status: Option<u32>) -> Self {
        Self {
            status,
            grpc_status,
            error: Some(RESPONSE_BODY_FAILED),
            classified: None,
        }
    }

    /// A response the upstream failed to finish is one; else what the
    /// route's response classes say, when one matched; else 5xx or a gRPC
    /// status linkerd2-proxy counts as a failure.
    fn is_failure(&self) -> bool {
        if self.error == Some(RESPONSE_BODY_FAILED) {
            return true;
        }
        self.classified
            .unwrap_or_else(|| self.status >= 500 || self.grpc_status.is_some_and(grpc_failure))
    }

    /// `status_code`, `classification`, then `grpc_status` and `error`
    /// when present (as `response_total` has them).
    fn labels(&self) -> String {
        let outcome = if self.is_failure() {
            "failure"
        } else {
            "success"
        };
        let mut s = format!(
            "status_code=\"{}\",classification=\"{outcome}\"",
            self.status
        );
        self.push_details(&mut s);
        s
    }

    fn push_details(&self, s: &mut String) {
        if let Some(g) = self.grpc_status {
            let _ = write!(s, ",grpc_status=\"{g}\"");
        }
        if let Some(e) = self.error {
            let _ = write!(s, ",error=\"{e}\"");
        }
    }
}

/// Responses with one status code (and proxy error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusCounters {
    pub total: u64,
    /// Counts per bucket of [`LATENCY_BUCKETS_MS`], plus +Inf last.
    pub buckets: [u64; 26],
    pub sum_ms: u64,
}

impl StatusCounters {
    fn add(&mut self, other: &Self) {
        self.total += other.total;
        self.sum_ms += other.sum_ms;
        for (b, o) in self.buckets.iter_mut().zip(other.buckets) {
            *b += o;
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCounters {
    pub last_used: Instant,
    pub requests: u64,
    /// Requests sent again to another endpoint after this one answered
    /// 502/503 (the label set's `target_addr` is the one that answered).
    pub retries: u64,
    pub by_status: HashMap<ResponseClass, StatusCounters, KeyedState>,
}

impl Default for HttpCounters {
    fn default() -> Self {
        Self {
            last_used: Instant::now(),
            requests: 0,
            retries: 0,
            by_status: HashMap::default(),
        }
    }
}

/// A worker's HTTP metrics; also the merged copy a scrape encodes.
///
/// Keyed by a fast keyed hash ([`KeyedState`]): looked up per request.
#[derive(Clone, Debug, Default)]
pub struct HttpShard(pub HashMap<HttpKey, HttpCounters, KeyedState>);

impl HttpShard {
    /// Counts one request and its response.
    pub fn record(&mut self, key: &HttpKey, class: ResponseClass, latency_ms: u64) {
        self.record_at(key, class, latency_ms, Instant::now());
    }

    /// As [`record`](Self::record), the label set last used at `now` (a
    /// clock read the caller already made).
    pub fn record_at(
        &mut self,
        key: &HttpKey,
        class: ResponseClass,
        latency_ms: u64,
        now: Instant,
    ) {
        // No key clone (reference counts touched) for a known label set,
        // and one lookup (the key is hashed per request).
        let c = match self.0.get_mut(key) {
            Some(c) => c,
            None => {
                if self.0.len() >= MAX_SERIES {
                    cap_hit("http");
                    return;
                }
                self.0.entry(key.clone()).or_default()
            }
        };
        c.last_used = now;
        c.requests += 1;
        let s = c.by_status.entry(class).or_default();
        s.total += 1;
        s.sum_ms += latency_ms;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| latency_ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        s.buckets[i] += 1;
    }

    /// Counts a request that ended with no response (its client went
    /// away first): in `request_total`, as linkerd2-proxy counts every
    /// request, and in no `response_total`.
    pub fn record_request_only(&mut self, key: &HttpKey, now: Instant) {
        let Some(c) = self.counters(key) else { return };
        c.last_used = now;
        c.requests += 1;
    }

    /// `key`'s counters, made when new (`None` past the series cap). (Two
    /// lookups for a known label set: [`Self::record_at`], per request,
    /// makes one.)
    fn counters(&mut self, key: &HttpKey) -> Option<&mut HttpCounters> {
        if !self.0.contains_key(key) && self.0.len() >= MAX_SERIES {
            cap_hit("http");
            return None;
        }
        Some(self.0.entry(key.clone()).or_default())
    }

    /// Drops the label sets not used for `retain`, and returns them: their
    /// counts stay in the process's series while another worker still has
    /// it ([`Self::merge_residue`]).
    pub fn evict_idle(&mut self, retain: Duration) -> HttpShard {
        HttpShard(
            self.0
                .extract_if(|_, c| c.last_used.elapsed() >= retain)
                .collect(),
        )
    }

    /// Adds what workers evicted (`residue`) to the label sets this merged
    /// shard still has; with `prune`, forgets the rest (gone from every
    /// worker: the series ends). Without (a worker's copy is missing from
    /// this scrape), they are kept for the next.
    /// Returns what was forgotten.
    pub fn merge_residue(&mut self, residue: &mut HttpShard, prune: bool) -> HttpShard {
        if prune {
            let gone = residue
                .0
                .extract_if(|k, _| !self.0.contains_key(k))
                .collect();
            self.merge(residue);
            return HttpShard(gone);
        }
        let present = residue.0.iter().filter(|(k, _)| self.0.contains_key(*k));
        let present = HttpShard(present.map(|(k, c)| (k.clone(), c.clone())).collect());
        self.merge(&present);
        HttpShard::default()
    }

    /// Counts a retry away from `key`'s endpoint.
    pub fn retried(&mut self, key: &HttpKey) {
        let Some(c) = self.counters(key) else { return };
        c.last_used = Instant::now();
        c.retries += 1;
    }

    /// Adds another worker's copy into this one.
    pub fn merge(&mut self, other: &HttpShard) {
        for (k, o) in &other.0 {
            let c = self.0.entry(k.clone()).or_default();
            c.requests += o.requests;
            c.retries += o.retries;
            for (st, os) in &o.by_status {
                let s = c.by_status.entry(*st).or_default();
                s.total += os.total;
                s.sum_ms += os.sum_ms;
                for (a, b) in s.buckets.iter_mut().zip(os.buckets.iter()) {
                    *a += b;
                }
            }
        }
    }

    /// Appends the Prometheus text for the (merged) shard: the label sets
    /// linkerd2-proxy has series for (see [`HttpKey::reported`]).
    pub fn encode(&self, out: &mut String) {
        let mut keys: Vec<&HttpKey> = self.0.keys().filter(|k| k.reported()).collect();
        keys.sort();
        family(
            out,
            "request_total",
            "counter",
            "Total count of HTTP requests.",
        );
        for k in &keys {
            let _ = writeln!(
                out,
                "request_total{{{}}} {}",
                http_labels(k),
                self.0[*k].requests
            );
        }
        family(
            out,
            "ringmesh_retries_total",
            "counter",
            "HTTP requests retried on another endpoint after this one answered 502/503 (any 5xx on a retryable profile route).",
        );
        for k in keys.iter().filter(|k| self.0[**k].retries > 0) {
            let _ = writeln!(
                out,
                "ringmesh_retries_total{{{}}} {}",
                http_labels(k),
                self.0[*k].retries
            );
        }
        family(
            out,
            "response_total",
            "counter",
            "Total count of HTTP responses.",
        );
        for k in &keys {
            let mut st: Vec<_> = self.0[*k].by_status.iter().collect();
            st.sort_by_key(|(s, _)| **s);
            for (class, c) in st {
                let _ = writeln!(
                    out,
                    "response_total{{{},{}}} {}",
                    http_labels(k),
                    class.labels(),
                    c.total
                );
            }
        }
        family(
            out,
            "response_latency_ms",
            "histogram",
            "Elapsed times between a request's headers being received and its response stream completing.",
        );
        for k in &keys {
            // By status code alone, as linkerd2-proxy's histogram: the
            // classes that share one are summed.
            let mut by_code: Vec<(u16, StatusCounters)> = Vec::new();
            for (class, c) in &self.0[*k].by_status {
                match by_code.iter_mut().find(|(code, _)| *code == class.status) {
                    Some((_, sum)) => sum.add(c),
                    None => by_code.push((class.status, c.clone())),
                }
            }
            by_code.sort_by_key(|(code, _)| *code);
            for (code, c) in by_code {
                let l = format!("{},status_code=\"{code}\"", http_labels(k));
                let mut cum = 0;
                for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
                    cum += c.buckets[i];
                    let _ = writeln!(out, "response_latency_ms_bucket{{{l},le=\"{b}\"}} {cum}");
                }
                cum += c.buckets[LATENCY_BUCKETS_MS.len()];
                let _ = writeln!(out, "response_latency_ms_bucket{{{l},le=\"+Inf\"}} {cum}");
                let _ = writeln!(out, "response_latency_ms_sum{{{l}}} {}", c.sum_ms);
                let _ = writeln!(out, "response_latency_ms_count{{{l}}} {}", c.total);
            }
        }
    }
}

fn http_labels(k: &HttpKey) -> String {
    let mut s = format!("direction=\"{}\"", k.direction.as_str());
    k.tls.push_labels(&mut s);
    if let Some(a) = &k.authority {
        push_label(&mut s, "authority", a);
    }
    if let Some(t) = k.target {
        s.push(',');
        s.push_str(&target_labels(t));
    }
    if let Some(p) = &k.policy {
        p.push_labels(&mut s);
    }
    push_dst_labels(&mut s, k.dst_labels.as_ref());
    if let Some(r) = &k.route {
        push_label(&mut s, "rt_route", r);
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(port: u16) -> HttpKey {
        HttpKey {
            direction: Direction::Outbound,
            tls: TlsStatus::NO_PROXY_IDENTITY,
            authority: None,
            target: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            dst_labels: None,
            route: None,
            policy: None,
        }
    }

    /// A series one worker evicted as idle keeps its counts in the merged
    /// totals while another worker still has it; once gone from every
    /// worker it ends (and a new one starts from zero).
    #[test]
    fn evicted_counts_stay_while_another_worker_has_the_series() {
        let (mut a, mut b) = (HttpShard::default(), HttpShard::default());
        let ok = ResponseClass::http(200, None);
        for _ in 0..5 {
            a.record(&key(1), ok, 1);
        }
        for _ in 0..2 {
            b.record(&key(1), ok, 1);
        }
        let mut residue = HttpShard::default();
        let mut scrape = |a_retain: Duration, b_retain: Duration| {
            let (gone_a, gone_b) = (a.evict_idle(a_retain), b.evict_idle(b_retain));
            residue.merge(&gone_a);
            residue.merge(&gone_b);
            let mut merged = HttpShard::default();
            merged.merge(&a);
            merged.merge(&b);
            merged.merge_residue(&mut residue, true);
            merged.0.get(&key(1)).map(|c| c.requests)
        };
        let (idle, kept) = (Duration::ZERO, Duration::from_secs(600));
        assert_eq!(scrape(kept, kept), Some(7));
        // The first worker's copy evicted: the total stays.
        assert_eq!(scrape(idle, kept), Some(7));
        assert_eq!(scrape(idle, kept), Some(7));
        // Then the second's: the series is gone, and so is what was kept.
        assert_eq!(scrape(idle, idle), None);
        assert!(residue.0.is_empty());
    }

    /// A scrape missing a worker's copy (it answered late) keeps what was
    /// evicted of series only that worker has, for the next scrape.
    #[test]
    fn an_incomplete_scrape_keeps_the_residue() {
        let ok = ResponseClass::http(200, None);
        let (mut a, mut b) = (HttpShard::default(), HttpShard::default());
        a.record(&key(1), ok, 1);
        b.record(&key(1), ok, 1);
        b.record(&key(1), ok, 1);
        let mut residue = a.evict_idle(Duration::ZERO);
        // `b` is late: only `a`'s (now empty) copy is in.
        let mut merged = HttpShard::default();
        merged.merge(&a);
        merged.merge_residue(&mut residue, false);
        assert!(merged.0.is_empty());
        assert_eq!(residue.0[&key(1)].requests, 1, "kept");
        // `b` answers again.
        let mut merged = HttpShard::default();
        merged.merge(&a);
        merged.merge(&b);
        merged.merge_residue(&mut residue, true);
        assert_eq!(merged.0[&key(1)].requests, 3);
    }

    #[test]
    fn series_cap_is_never_exceeded() {
        let mut h = HttpShard::default();
        for i in 0..(MAX_SERIES + 50) {
            h.record(
                &key((i % 65535) as u16 + 1),
                ResponseClass::http(200, None),
                1,
            );
        }
        assert_eq!(h.0.len(), MAX_SERIES);
        // Known label sets still count.
        h.record(&key(1), ResponseClass::http(200, None), 1);
        assert_eq!(h.0[&key(1)].requests, 2);
    }

    #[test]
    fn latency_buckets_and_merge() {
        let mut a = HttpShard::default();
        a.record(&key(1), ResponseClass::http(200, None), 0);
        a.record(&key(1), ResponseClass::http(200, None), 7);
        a.record(
            &key(1),
            ResponseClass::http(503, Some("no_endpoints")),
            60_000,
        );
        let mut b = HttpShard::default();
        b.record(&key(1), ResponseClass::http(200, None), 1000);
        a.merge(&b);
        let c = &a.0[&key(1)];
        assert_eq!(c.requests, 4);
        let ok = &c.by_status[&ResponseClass::http(200, None)];
        assert_eq!((ok.total, ok.sum_ms), (3, 1007));
        assert_eq!(ok.buckets[0], 1); // ≤ 1 ms
        assert_eq!(ok.buckets[5], 1); // ≤ 10 ms
        assert_eq!(ok.buckets[15], 1); // ≤ 1000 ms
        assert_eq!(
            c.by_status[&ResponseClass::http(503, Some("no_endpoints"))].buckets[25],
            1
        ); // +Inf
        let mut out = String::new();
        a.encode(&mut out);
        assert!(out.contains("response_latency_ms_bucket{direction=\"outbound\",tls=\"no_identity\",target_addr=\"127.0.0.1:1\",target_ip=\"127.0.0.1\",target_port=\"1\",status_code=\"200\",le=\"+Inf\"} 3"), "{out}");
        assert!(
            out.contains("classification=\"failure\",error=\"no_endpoints\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn grpc_status_labels_and_classifies() {
        let mut h = HttpShard::default();
        let grpc = |g| ResponseClass {
            status: 200,
            grpc_status: Some(g),
            error: None,
            classified: None,
        };
        h.record(&key(1), grpc(0), 1);
        h.record(&key(1), grpc(5), 1);
        h.record(&key(1), grpc(13), 1);
        let mut out = String::new();
        h.encode(&mut out);
        assert!(
            out.contains("status_code=\"200\",classification=\"success\",grpc_status=\"0\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("status_code=\"200\",classification=\"success\",grpc_status=\"5\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("status_code=\"200\",classification=\"failure\",grpc_status=\"13\"} 1"),
            "{out}"
        );
        for code in [2, 4, 7, 13, 14, 15, 17, 99] {
            assert!(grpc_failure(code), "{code}");
        }
        for code in [0, 1, 3, 5, 6, 8, 9, 10, 11, 12, 16] {
            assert!(!grpc_failure(code), "{code}");
        }
        // The histogram is by status code alone, the classes summed.
        assert!(out.contains("status_code=\"200\",le=\"+Inf\"} 3"), "{out}");
        assert_eq!(
            out.matches("response_latency_ms_count{").count(),
            1,
            "{out}"
        );
    }

    #[test]
    fn dst_labels_are_prefixed_and_escaped() {
        let mut k = key(1);
        k.dst_labels = Some(Arc::from(vec![
            ("namespace".to_string(), "prod".to_string()),
            ("service".to_string(), "we\"b".to_string()),
        ]));
        let mut h = HttpShard::default();
        h.record(&k, ResponseClass::http(200, None), 1);
        let mut out = String::new();
        h.encode(&mut out);
        assert!(
            out.contains(",dst_namespace=\"prod\",dst_service=\"we\\\"b\"}"),
            "{out}"
        );
    }

    #[test]
    fn tls_labels_follow_direction_in_every_family() {
        let id = "api.prod.serviceaccount.identity.linkerd.cluster.local";
        let mut k = key(1);
        k.tls = TlsStatus::Connected {
            server_id: id.into(),
        };
        let mut h = HttpShard::default();
        h.record(&k, ResponseClass::http(502, Some("connect_failed")), 1);
        h.retried(&k);
        let mut out = String::new();
        h.encode(&mut out);
        let labels = format!("direction=\"outbound\",tls=\"true\",server_id=\"{id}\",target_addr=\"127.0.0.1:1\",target_ip=\"127.0.0.1\",target_port=\"1\"");
        for line in [
            format!("request_total{{{labels}}} 1"),
            format!("ringmesh_retries_total{{{labels}}} 1"),
            format!("response_total{{{labels},status_code=\"502\",classification=\"failure\",error=\"connect_failed\"}} 1"),
            format!("response_latency_ms_count{{{labels},status_code=\"502\"}} 1"),
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} missing:\n{out}");
        }
    }

    /// Inbound series carry the server, route and authorization that
    /// admitted the request, as linkerd2-proxy's `RouteAuthzLabels`.
    #[test]
    fn inbound_series_carry_policy_labels() {
        use super::super::labels::{PolicyLabels, PolicyMeta};
        let meta = |group: &str, kind: &str, name: &str| PolicyMeta {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
        };
        let mut k = key(8080);
        k.direction = Direction::Inbound;
        k.tls = TlsStatus::Accepted {
            client_id: Some("a.ns.serviceaccount.identity.linkerd.cluster.local".into()),
        };
        k.policy = Some(PolicyLabels {
            server: meta("policy.linkerd.io", "server", "web"),
            port: 8080,
            route: Some(meta("", "default", "default")),
            authz: Some(meta("policy.linkerd.io", "authorizationpolicy", "we\"b")),
        });
        let mut h = HttpShard::default();
        h.record(&k, ResponseClass::http(200, None), 1);
        let mut out = String::new();
        h.encode(&mut out);
        let labels = "direction=\"inbound\",tls=\"true\",client_id=\"a.ns.serviceaccount.identity.linkerd.cluster.local\",target_addr=\"127.0.0.1:8080\",target_ip=\"127.0.0.1\",target_port=\"8080\",srv_group=\"policy.linkerd.io\",srv_kind=\"server\",srv_name=\"web\",srv_port=\"8080\",route_group=\"\",route_kind=\"default\",route_name=\"default\",authz_group=\"policy.linkerd.io\",authz_kind=\"authorizationpolicy\",authz_name=\"we\\\"b\"";
        for line in [
            format!("request_total{{{labels}}} 1"),
            format!("response_total{{{labels},status_code=\"200\",classification=\"success\"}} 1"),
            format!("response_latency_ms_count{{{labels},status_code=\"200\"}} 1"),
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} missing:\n{out}");
        }
    }
}
