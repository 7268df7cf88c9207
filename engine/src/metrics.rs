//! Per-worker metric shards. Each worker is the only writer of its shard
//! (plain integers in `Cell`s and `RefCell`s, no atomics); a scrape asks
//! every worker for a copy and the admin thread merges and encodes them with
//! linkerd2-proxy's family and label names.
//!
//! TCP series follow linkerd2-proxy's two sides of a proxied connection: the
//! accepted one (`peer="src"`, `target_addr` = where the client was going)
//! and each connection the proxy opened (`peer="dst"`, `target_addr` = the
//! endpoint). A connection holds a [`ConnMeter`] that points straight at its
//! label set's counters, so counting bytes costs no lookup.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_discovery::Authority;
use ringmesh_protocols::tcp::{RelayEnd, RelayStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// Which side of the proxy a connection is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Peer {
    /// Accepted from a client.
    Src,
    /// Opened by the proxy to an endpoint.
    Dst,
}

impl Peer {
    fn as_str(self) -> &'static str {
        match self {
            Self::Src => "src",
            Self::Dst => "dst",
        }
    }
}

/// Discovery's metric labels for a service (rendered as `dst_<name>`).
pub(crate) type DstLabels = Arc<[(String, String)]>;

/// One TCP label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TcpKey {
    pub direction: Direction,
    pub peer: Peer,
    pub target: SocketAddr,
    /// The discovered service, when there was one.
    pub authority: Option<Authority>,
    pub dst_labels: Option<DstLabels>,
}

/// The live counters of one label set, shared by the connections feeding it.
#[derive(Debug)]
pub(crate) struct TcpCell {
    /// Last time a connection opened or closed (for idle eviction).
    last_used: Cell<Instant>,
    open_total: Cell<u64>,
    open: Cell<u64>,
    /// Closes by errno label, "" for a clean close.
    close_total: RefCell<Vec<(&'static str, u64)>>,
    read: Cell<u64>,
    write: Cell<u64>,
}

impl TcpCell {
    fn new() -> Self {
        Self {
            last_used: Cell::new(Instant::now()),
            open_total: Cell::new(0),
            open: Cell::new(0),
            close_total: RefCell::new(Vec::new()),
            read: Cell::new(0),
            write: Cell::new(0),
        }
    }
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// Counts one connection: opened when made, bytes as they move, closed
/// when dropped (with the errno label set by [`ConnMeter::ended`], if any).
#[derive(Debug)]
pub(crate) struct ConnMeter {
    /// `None` when the series cap kept this label set out.
    cell: Option<Rc<TcpCell>>,
    errno: Cell<&'static str>,
}

impl ConnMeter {
    /// A meter that counts nothing.
    pub(crate) fn none() -> Self {
        Self {
            cell: None,
            errno: Cell::new(""),
        }
    }

    pub(crate) fn read(&self, n: usize) {
        if let Some(c) = &self.cell {
            add(&c.read, n as u64);
        }
    }

    pub(crate) fn wrote(&self, n: usize) {
        if let Some(c) = &self.cell {
            add(&c.write, n as u64);
        }
    }

    /// Records how the connection ended when it was not a clean close.
    pub(crate) fn ended(&self, end: RelayEnd) {
        self.errno.set(errno_label(end));
    }

    /// Records an I/O error as the reason the connection ends.
    pub(crate) fn failed(&self, e: &std::io::Error) {
        self.errno.set(errno_label(RelayEnd::ServerError(e.kind())));
    }
}

impl Drop for ConnMeter {
    fn drop(&mut self) {
        let Some(c) = &self.cell else {
            return;
        };
        c.open.set(c.open.get().saturating_sub(1));
        c.last_used.set(Instant::now());
        let mut closes = c.close_total.borrow_mut();
        let errno = self.errno.get();
        match closes.iter_mut().find(|(e, _)| *e == errno) {
            Some((_, n)) => *n += 1,
            None => closes.push((errno, 1)),
        }
    }
}

/// Counts a finished relay on both sides: bytes each way, and the errno
/// on the side that failed.
pub(crate) fn relayed(src: &ConnMeter, dst: &ConnMeter, stats: &RelayStats) {
    let (up, down) = (
        stats.client_to_server as usize,
        stats.server_to_client as usize,
    );
    src.read(up);
    src.wrote(down);
    dst.read(down);
    dst.wrote(up);
    match stats.end {
        RelayEnd::Closed => {}
        RelayEnd::Idle => {
            src.ended(stats.end);
            dst.ended(stats.end);
        }
        RelayEnd::ClientError(_) => src.ended(stats.end),
        RelayEnd::ServerError(_) => dst.ended(stats.end),
    }
}

/// At most this many label sets per family per worker; beyond it new label
/// sets are not recorded, and that is logged (once per worker).
pub(crate) const MAX_SERIES: usize = 10_000;

/// A worker's live TCP metrics.
#[derive(Debug, Default)]
pub(crate) struct TcpShard(HashMap<TcpKey, Rc<TcpCell>>);

impl TcpShard {
    /// Counts a new connection under `key`; the meter closes it on drop.
    pub(crate) fn open(&mut self, key: TcpKey) -> ConnMeter {
        let cell = match self.0.get(&key) {
            Some(c) => c.clone(),
            None if self.0.len() >= MAX_SERIES => {
                cap_hit("tcp");
                return ConnMeter::none();
            }
            None => self
                .0
                .entry(key)
                .or_insert_with(|| Rc::new(TcpCell::new()))
                .clone(),
        };
        add(&cell.open_total, 1);
        add(&cell.open, 1);
        cell.last_used.set(Instant::now());
        ConnMeter {
            cell: Some(cell),
            errno: Cell::new(""),
        }
    }

    /// Drops label sets with no open connection that have not changed for
    /// `retain` (`LINKERD2_PROXY_METRICS_RETAIN_IDLE`).
    pub(crate) fn evict_idle(&mut self, retain: Duration) {
        self.0
            .retain(|_, c| c.open.get() > 0 || c.last_used.get().elapsed() < retain);
    }

    /// A copy that can leave the worker.
    pub(crate) fn snapshot(&self) -> TcpSnapshot {
        TcpSnapshot(
            self.0
                .iter()
                .map(|(k, c)| {
                    let stats = TcpStats {
                        open_total: c.open_total.get(),
                        open: c.open.get(),
                        close_total: c.close_total.borrow().iter().copied().collect(),
                        read: c.read.get(),
                        write: c.write.get(),
                    };
                    (k.clone(), stats)
                })
                .collect(),
        )
    }
}

/// One label set's counters at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpStats {
    pub open_total: u64,
    pub open: u64,
    pub close_total: HashMap<&'static str, u64>,
    pub read: u64,
    pub write: u64,
}

/// TCP metrics copied out of workers, merged and encoded off the data path.
#[derive(Clone, Debug, Default)]
pub(crate) struct TcpSnapshot(pub HashMap<TcpKey, TcpStats>);

impl TcpSnapshot {
    /// Adds another worker's copy into this one.
    pub(crate) fn merge(&mut self, other: &TcpSnapshot) {
        for (k, o) in &other.0 {
            let c = self.0.entry(k.clone()).or_default();
            c.open_total += o.open_total;
            c.open += o.open;
            for (e, n) in &o.close_total {
                *c.close_total.entry(e).or_default() += n;
            }
            c.read += o.read;
            c.write += o.write;
        }
    }

    /// Appends the Prometheus text for the merged snapshot.
    pub(crate) fn encode(&self, out: &mut String) {
        let mut rows: Vec<(&TcpKey, &TcpStats, String)> =
            self.0.iter().map(|(k, c)| (k, c, tcp_labels(k))).collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let fam = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let simple = |out: &mut String, name: &str, get: fn(&TcpStats) -> u64| {
            for (_, c, l) in &rows {
                let _ = writeln!(out, "{name}{{{l}}} {}", get(c));
            }
        };
        fam(
            out,
            "tcp_open_total",
            "counter",
            "Total count of opened connections.",
        );
        simple(out, "tcp_open_total", |c| c.open_total);
        fam(
            out,
            "tcp_open_connections",
            "gauge",
            "Number of currently-open connections.",
        );
        simple(out, "tcp_open_connections", |c| c.open);
        fam(
            out,
            "tcp_close_total",
            "counter",
            "Total count of closed connections.",
        );
        for (_, c, l) in &rows {
            let mut closes: Vec<_> = c.close_total.iter().collect();
            closes.sort();
            for (errno, n) in closes {
                let _ = writeln!(out, "tcp_close_total{{{l},errno=\"{errno}\"}} {n}");
            }
        }
        fam(
            out,
            "tcp_read_bytes_total",
            "counter",
            "Total count of bytes read from peers.",
        );
        simple(out, "tcp_read_bytes_total", |c| c.read);
        fam(
            out,
            "tcp_write_bytes_total",
            "counter",
            "Total count of bytes written to peers.",
        );
        simple(out, "tcp_write_bytes_total", |c| c.write);
    }
}

fn tcp_labels(k: &TcpKey) -> String {
    let mut s = format!(
        "direction=\"{}\",peer=\"{}\",target_addr=\"{}\",target_ip=\"{}\",target_port=\"{}\",tls=\"no_identity\"",
        k.direction.as_str(),
        k.peer.as_str(),
        k.target,
        k.target.ip(),
        k.target.port()
    );
    if let Some(a) = &k.authority {
        let _ = write!(s, ",authority=\"{a}\"");
    }
    push_dst_labels(&mut s, k.dst_labels.as_ref());
    s
}

/// Appends `dst_<name>="<value>"` for each discovery label, escaped.
fn push_dst_labels(s: &mut String, labels: Option<&DstLabels>) {
    for (name, value) in labels.iter().flat_map(|l| l.iter()) {
        let _ = write!(s, ",dst_{name}=\"");
        for ch in value.chars() {
            match ch {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct HttpKey {
    pub direction: Direction,
    pub authority: Option<Authority>,
    pub target: Option<SocketAddr>,
    pub dst_labels: Option<DstLabels>,
}

/// Why the proxy answered a request itself (the `error` label of
/// `response_total`); `None` for responses that came from upstream.
pub(crate) type ProxyError = Option<&'static str>;

/// What a response is counted as: its status, the gRPC status its trailers
/// (or trailers-only headers) carried, and the proxy's own error if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ResponseClass {
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub error: ProxyError,
}

impl ResponseClass {
    pub(crate) fn http(status: u16, error: ProxyError) -> Self {
        Self {
            status,
            grpc_status: None,
            error,
        }
    }

    /// 5xx, or a non-zero gRPC status, is a failure.
    fn is_failure(&self) -> bool {
        self.status >= 500 || self.grpc_status.is_some_and(|g| g != 0)
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

    /// As [`Self::labels`] without `classification` (as linkerd's
    /// `response_latency_ms` has them).
    fn labels_without_classification(&self) -> String {
        let mut s = format!("status_code=\"{}\"", self.status);
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
    /// Requests sent again to another endpoint after this one answered
    /// 502/503 (the label set's `target_addr` is the one that answered).
    pub retries: u64,
    pub by_status: HashMap<ResponseClass, StatusCounters>,
}

impl Default for HttpCounters {
    fn default() -> Self {
        Self {
            last_used: Instant::now(),
            requests: 0,
            retries: 0,
            by_status: HashMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct HttpShard(pub HashMap<HttpKey, HttpCounters>);

impl HttpShard {
    /// Counts one request and its response.
    pub(crate) fn record(&mut self, key: &HttpKey, class: ResponseClass, latency_ms: u64) {
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
        c.last_used = Instant::now();
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

    pub(crate) fn evict_idle(&mut self, retain: Duration) {
        self.0.retain(|_, c| c.last_used.elapsed() < retain);
    }

    /// Counts a retry away from `key`'s endpoint.
    pub(crate) fn retried(&mut self, key: &HttpKey) {
        if !self.0.contains_key(key) && self.0.len() >= MAX_SERIES {
            cap_hit("http");
            return;
        }
        let c = self.0.entry(key.clone()).or_default();
        c.last_used = Instant::now();
        c.retries += 1;
    }

    pub(crate) fn merge(&mut self, other: &HttpShard) {
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

    pub(crate) fn encode(&self, out: &mut String) {
        let mut keys: Vec<&HttpKey> = self.0.keys().collect();
        keys.sort();
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
            "# HELP ringmesh_retries_total HTTP requests retried on another endpoint after this one answered 502/503.\n# TYPE ringmesh_retries_total counter"
        );
        for k in keys.iter().filter(|k| self.0[**k].retries > 0) {
            let _ = writeln!(
                out,
                "ringmesh_retries_total{{{}}} {}",
                http_labels(k),
                self.0[*k].retries
            );
        }
        let _ = writeln!(
            out,
            "# HELP response_total Total count of HTTP responses.\n# TYPE response_total counter"
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
        let _ = writeln!(
            out,
            "# HELP response_latency_ms Elapsed times between a request's headers being received and its response stream completing.\n# TYPE response_latency_ms histogram"
        );
        for k in &keys {
            let mut st: Vec<_> = self.0[*k].by_status.iter().collect();
            st.sort_by_key(|(s, _)| **s);
            for (class, c) in st {
                let l = format!(
                    "{},{}",
                    http_labels(k),
                    class.labels_without_classification()
                );
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
    push_dst_labels(&mut s, k.dst_labels.as_ref());
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
            dst_labels: None,
        }
    }

    fn tcp_key(peer: Peer, port: u16) -> TcpKey {
        TcpKey {
            direction: Direction::Inbound,
            peer,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            authority: None,
            dst_labels: None,
        }
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

        let mut t = TcpShard::default();
        let meters: Vec<ConnMeter> = (0..MAX_SERIES + 5)
            .map(|i| t.open(tcp_key(Peer::Src, (i % 65535) as u16 + 1)))
            .collect();
        assert_eq!(t.0.len(), MAX_SERIES);
        assert!(meters.last().is_some_and(|m| m.cell.is_none()));
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
    fn meters_count_bytes_and_closes_by_reason() {
        let mut t = TcpShard::default();
        let a = t.open(tcp_key(Peer::Src, 1));
        let b = t.open(tcp_key(Peer::Src, 1));
        let d = t.open(tcp_key(Peer::Dst, 2));
        a.read(10);
        b.wrote(5);
        d.read(7);
        b.ended(RelayEnd::ClientError(std::io::ErrorKind::ConnectionReset));
        drop(b);
        let snap = t.snapshot();
        let src = &snap.0[&tcp_key(Peer::Src, 1)];
        assert_eq!(
            (src.open_total, src.open, src.read, src.write),
            (2, 1, 10, 5)
        );
        assert_eq!(src.close_total[&"ECONNRESET"], 1);
        drop(a);
        let mut merged = t.snapshot();
        merged.merge(&snap);
        let src = &merged.0[&tcp_key(Peer::Src, 1)];
        assert_eq!((src.open_total, src.open, src.read), (4, 1, 20));
        assert_eq!(src.close_total[&""], 1);
        let mut out = String::new();
        merged.encode(&mut out);
        assert!(out.contains("tcp_read_bytes_total{direction=\"inbound\",peer=\"dst\",target_addr=\"127.0.0.1:2\",target_ip=\"127.0.0.1\",target_port=\"2\",tls=\"no_identity\"} 14"), "{out}");
        assert!(out.contains("errno=\"ECONNRESET\"} 2"), "{out}");
        drop(d);
    }

    #[test]
    fn grpc_status_labels_and_classifies() {
        let mut h = HttpShard::default();
        let grpc = |g| ResponseClass {
            status: 200,
            grpc_status: Some(g),
            error: None,
        };
        h.record(&key(1), grpc(0), 1);
        h.record(&key(1), grpc(5), 1);
        let mut out = String::new();
        h.encode(&mut out);
        assert!(
            out.contains("status_code=\"200\",classification=\"success\",grpc_status=\"0\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("status_code=\"200\",classification=\"failure\",grpc_status=\"5\"} 1"),
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
    fn idle_tcp_sets_go_open_ones_stay() {
        let mut t = TcpShard::default();
        let _open = t.open(tcp_key(Peer::Dst, 1));
        drop(t.open(tcp_key(Peer::Dst, 2)));
        t.evict_idle(Duration::ZERO);
        assert!(
            t.0.contains_key(&tcp_key(Peer::Dst, 1)),
            "an open connection's series stays"
        );
        assert!(!t.0.contains_key(&tcp_key(Peer::Dst, 2)));
    }
}
