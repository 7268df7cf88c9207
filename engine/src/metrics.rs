//! Per-worker TCP metric shards. Each worker is the only writer of its
//! shard (plain integers in a `RefCell`, no atomics); a scrape asks every
//! worker for a copy and the admin thread merges and encodes them with
//! linkerd2-proxy's family and label names.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringmesh_discovery::Authority;
use ringmesh_protocols::tcp::RelayEnd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// One label set: where proxied connections went.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TcpKey {
    pub direction: Direction,
    /// The endpoint connected to.
    pub target: SocketAddr,
    /// The discovered service, when there was one.
    pub authority: Option<Authority>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TcpCounters {
    /// Last time this label set changed (for idle eviction).
    pub last_used: Instant,
    pub open_total: u64,
    pub open: u64,
    /// Closes by reason: "" for a clean close, else the error kind.
    pub close_total: HashMap<&'static str, u64>,
    /// Bytes read from the client (`peer="src"`) and from the server (`"dst"`).
    pub read_src: u64,
    pub read_dst: u64,
    pub write_src: u64,
    pub write_dst: u64,
}

impl Default for TcpCounters {
    fn default() -> Self {
        Self {
            last_used: Instant::now(),
            open_total: 0,
            open: 0,
            close_total: HashMap::new(),
            read_src: 0,
            read_dst: 0,
            write_src: 0,
            write_dst: 0,
        }
    }
}

/// At most this many label sets per family per worker; beyond it new label
/// sets are not recorded, and that is logged (once per worker).
pub(crate) const MAX_SERIES: usize = 10_000;

/// A worker's TCP metrics.
#[derive(Clone, Debug, Default)]
pub(crate) struct TcpShard(pub HashMap<TcpKey, TcpCounters>);

impl TcpShard {
    pub(crate) fn opened(&mut self, key: &TcpKey) {
        if !self.0.contains_key(key) && self.0.len() >= MAX_SERIES {
            cap_hit("tcp");
            return;
        }
        let c = self.0.entry(key.clone()).or_default();
        c.last_used = Instant::now();
        c.open_total += 1;
        c.open += 1;
    }

    pub(crate) fn closed(&mut self, key: &TcpKey, up: u64, down: u64, end: RelayEnd) {
        // Not recorded when opening hit the cap.
        let Some(c) = self.0.get_mut(key) else {
            return;
        };
        c.last_used = Instant::now();
        c.open = c.open.saturating_sub(1);
        *c.close_total.entry(errno_label(end)).or_default() += 1;
        c.read_src += up;
        c.write_dst += up;
        c.read_dst += down;
        c.write_src += down;
    }

    /// Drops label sets with no open connection that have not changed for
    /// `retain` (`LINKERD2_PROXY_METRICS_RETAIN_IDLE`).
    pub(crate) fn evict_idle(&mut self, retain: Duration) {
        self.0
            .retain(|_, c| c.open > 0 || c.last_used.elapsed() < retain);
    }

    /// Adds another worker's shard into this one.
    pub(crate) fn merge(&mut self, other: &TcpShard) {
        for (k, o) in &other.0 {
            let c = self.0.entry(k.clone()).or_default();
            c.open_total += o.open_total;
            c.open += o.open;
            for (e, n) in &o.close_total {
                *c.close_total.entry(e).or_default() += n;
            }
            c.read_src += o.read_src;
            c.read_dst += o.read_dst;
            c.write_src += o.write_src;
            c.write_dst += o.write_dst;
        }
    }

    /// Appends the Prometheus text for the merged shard.
    pub(crate) fn encode(&self, out: &mut String) {
        let mut keys: Vec<&TcpKey> = self.0.keys().collect();
        keys.sort_by_key(|k| (k.direction.as_str(), k.target, k.authority.clone()));
        let fam = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        fam(
            out,
            "tcp_open_total",
            "counter",
            "Total count of opened connections.",
        );
        for k in &keys {
            let _ = writeln!(
                out,
                "tcp_open_total{{{},peer=\"dst\"}} {}",
                labels(k),
                self.0[*k].open_total
            );
        }
        fam(
            out,
            "tcp_open_connections",
            "gauge",
            "Number of currently-open connections.",
        );
        for k in &keys {
            let _ = writeln!(
                out,
                "tcp_open_connections{{{},peer=\"dst\"}} {}",
                labels(k),
                self.0[*k].open
            );
        }
        fam(
            out,
            "tcp_close_total",
            "counter",
            "Total count of closed connections.",
        );
        for k in &keys {
            let mut closes: Vec<_> = self.0[*k].close_total.iter().collect();
            closes.sort();
            for (errno, n) in closes {
                let _ = writeln!(
                    out,
                    "tcp_close_total{{{},peer=\"dst\",errno=\"{errno}\"}} {n}",
                    labels(k)
                );
            }
        }
        fam(
            out,
            "tcp_read_bytes_total",
            "counter",
            "Total count of bytes read from peers.",
        );
        for k in &keys {
            let c = &self.0[*k];
            let _ = writeln!(
                out,
                "tcp_read_bytes_total{{{},peer=\"src\"}} {}",
                labels(k),
                c.read_src
            );
            let _ = writeln!(
                out,
                "tcp_read_bytes_total{{{},peer=\"dst\"}} {}",
                labels(k),
                c.read_dst
            );
        }
        fam(
            out,
            "tcp_write_bytes_total",
            "counter",
            "Total count of bytes written to peers.",
        );
        for k in &keys {
            let c = &self.0[*k];
            let _ = writeln!(
                out,
                "tcp_write_bytes_total{{{},peer=\"src\"}} {}",
                labels(k),
                c.write_src
            );
            let _ = writeln!(
                out,
                "tcp_write_bytes_total{{{},peer=\"dst\"}} {}",
                labels(k),
                c.write_dst
            );
        }
    }
}

fn labels(k: &TcpKey) -> String {
    let mut s = format!(
        "direction=\"{}\",target_addr=\"{}\",target_ip=\"{}\",target_port=\"{}\",tls=\"no_identity\"",
        k.direction.as_str(),
        k.target,
        k.target.ip(),
        k.target.port()
    );
    if let Some(a) = &k.authority {
        let _ = write!(s, ",authority=\"{a}\"");
    }
    s
}

fn errno_label(end: RelayEnd) -> &'static str {
    use std::io::ErrorKind::*;
    let kind = match end {
        RelayEnd::Closed => return "",
        RelayEnd::Idle => return "ETIMEDOUT",
        RelayEnd::ClientError(k) | RelayEnd::ServerError(k) => k,
    };
    match kind {
        ConnectionReset => "ECONNRESET",
        BrokenPipe => "EPIPE",
        ConnectionAborted => "ECONNABORTED",
        TimedOut => "ETIMEDOUT",
        NotConnected => "ENOTCONN",
        _ => "EIO",
    }
}

/// linkerd2-proxy's `response_latency_ms` bucket bounds.
pub(crate) const LATENCY_BUCKETS_MS: [u64; 25] = [
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000,
    10000, 20000, 30000, 40000, 50000,
];

/// One HTTP label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HttpKey {
    pub direction: Direction,
    pub authority: Option<Authority>,
    pub target: Option<SocketAddr>,
}

/// Responses with one status code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatusCounters {
    pub total: u64,
    /// Counts per bucket of [`LATENCY_BUCKETS_MS`], plus +Inf last.
    pub buckets: [u64; 26],
    pub sum_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpCounters {
    pub last_used: Instant,
    pub requests: u64,
    pub by_status: HashMap<u16, StatusCounters>,
}

impl Default for HttpCounters {
    fn default() -> Self {
        Self {
            last_used: Instant::now(),
            requests: 0,
            by_status: HashMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct HttpShard(pub HashMap<HttpKey, HttpCounters>);

impl HttpShard {
    /// Counts one request and its response.
    pub(crate) fn record(&mut self, key: &HttpKey, status: u16, latency_ms: u64) {
        if !self.0.contains_key(key) && self.0.len() >= MAX_SERIES {
            cap_hit("http");
            return;
        }
        let c = self.0.entry(key.clone()).or_default();
        c.last_used = Instant::now();
        c.requests += 1;
        let s = c.by_status.entry(status).or_default();
        s.total += 1;
        s.sum_ms += latency_ms;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| latency_ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        s.buckets[i] += 1;
    }

    pub(crate) fn evict_idle(&mut self, retain: Duration) {
        self.0.retain(|_, c| c.last_used.elapsed() < retain);
    }

    pub(crate) fn merge(&mut self, other: &HttpShard) {
        for (k, o) in &other.0 {
            let c = self.0.entry(k.clone()).or_default();
            c.requests += o.requests;
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

    pub(crate) fn encode(&self, out: &mut String) {
        let mut keys: Vec<&HttpKey> = self.0.keys().collect();
        keys.sort_by_key(|k| (k.direction.as_str(), k.authority.clone(), k.target));
        let _ = writeln!(
            out,
            "# HELP request_total Total count of HTTP requests.\n# TYPE request_total counter"
        );
        for k in &keys {
            let _ = writeln!(
                out,
                "request_total{{{}}} {}",
                http_labels(k),
                self.0[*k].requests
            );
        }
        let _ = writeln!(
            out,
            "# HELP response_total Total count of HTTP responses.\n# TYPE response_total counter"
        );
        for k in &keys {
            let mut st: Vec<_> = self.0[*k].by_status.iter().collect();
            st.sort_by_key(|(s, _)| **s);
            for (status, c) in st {
                let class = if *status >= 500 { "failure" } else { "success" };
                let _ = writeln!(
                    out,
                    "response_total{{{},status_code=\"{status}\",classification=\"{class}\"}} {}",
                    http_labels(k),
                    c.total
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP response_latency_ms Elapsed times between a request's headers being received and its response stream completing.\n# TYPE response_latency_ms histogram"
        );
        for k in &keys {
            let mut st: Vec<_> = self.0[*k].by_status.iter().collect();
            st.sort_by_key(|(s, _)| **s);
            for (status, c) in st {
                let l = format!("{},status_code=\"{status}\"", http_labels(k));
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

fn cap_hit(family: &'static str) {
    thread_local! {
        static LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOGGED.with(|l| l.replace(true)) {
        tracing::warn!(
            family,
            max = MAX_SERIES,
            "metrics series cap reached on this worker; new label sets are not recorded"
        );
    }
}

fn http_labels(k: &HttpKey) -> String {
    let mut s = format!("direction=\"{}\",tls=\"no_identity\"", k.direction.as_str());
    if let Some(a) = &k.authority {
        let _ = write!(s, ",authority=\"{a}\"");
    }
    if let Some(t) = k.target {
        let _ = write!(
            s,
            ",target_addr=\"{t}\",target_ip=\"{}\",target_port=\"{}\"",
            t.ip(),
            t.port()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> HttpKey {
        HttpKey {
            direction: Direction::Outbound,
            authority: None,
            target: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        }
    }

    #[test]
    fn series_cap_is_never_exceeded() {
        let mut h = HttpShard::default();
        for i in 0..(MAX_SERIES + 50) {
            h.record(&key((i % 65535) as u16 + 1), 200, 1);
        }
        assert_eq!(h.0.len(), MAX_SERIES);
        // Known label sets still count.
        h.record(&key(1), 200, 1);
        assert_eq!(h.0[&key(1)].requests, 2);
    }

    #[test]
    fn latency_buckets_and_merge() {
        let mut a = HttpShard::default();
        a.record(&key(1), 200, 0);
        a.record(&key(1), 200, 7);
        a.record(&key(1), 503, 60_000);
        let mut b = HttpShard::default();
        b.record(&key(1), 200, 1000);
        a.merge(&b);
        let c = &a.0[&key(1)];
        assert_eq!(c.requests, 4);
        let ok = &c.by_status[&200];
        assert_eq!((ok.total, ok.sum_ms), (3, 1007));
        assert_eq!(ok.buckets[0], 1); // ≤ 1 ms
        assert_eq!(ok.buckets[5], 1); // ≤ 10 ms
        assert_eq!(ok.buckets[15], 1); // ≤ 1000 ms
        assert_eq!(c.by_status[&503].buckets[25], 1); // +Inf
        let mut out = String::new();
        a.encode(&mut out);
        assert!(out.contains("response_latency_ms_bucket{direction=\"outbound\",tls=\"no_identity\",target_addr=\"127.0.0.1:1\",target_ip=\"127.0.0.1\",target_port=\"1\",status_code=\"200\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("classification=\"failure\"} 1"), "{out}");
    }

    #[test]
    fn idle_tcp_sets_go_open_ones_stay() {
        let k = |port| TcpKey {
            direction: Direction::Inbound,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            authority: None,
        };
        let mut t = TcpShard::default();
        t.opened(&k(1));
        t.opened(&k(2));
        t.closed(&k(2), 10, 20, RelayEnd::Closed);
        t.evict_idle(Duration::ZERO);
        assert!(t.0.contains_key(&k(1)), "an open connection's series stays");
        assert!(!t.0.contains_key(&k(2)));
    }
}
