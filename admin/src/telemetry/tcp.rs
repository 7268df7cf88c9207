//! linkerd2-proxy's TCP families (`tcp_open_total`, `tcp_open_connections`,
//! `tcp_close_total`, `tcp_read_bytes_total`, `tcp_write_bytes_total`) for
//! the two sides of a proxied connection: the accepted one (`peer="src"`,
//! `target_addr` = where the client was going) and each connection the proxy
//! opened (`peer="dst"`, `target_addr` = the endpoint). A connection holds a
//! [`ConnMeter`] that points straight at its label set's counters, so
//! counting bytes costs no lookup.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringmesh_protocols::tcp::{RelayEnd, RelayStats};

use super::labels::{
    push_dst_labels, push_label, AuthorityLabel, Direction, DstLabels, Peer, PolicyLabels,
};
use super::tls::TlsStatus;
use super::{cap_hit, family, MAX_SERIES};

/// One TCP label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub direction: Direction,
    pub peer: Peer,
    pub target: SocketAddr,
    /// This connection's TLS.
    pub tls: TlsStatus,
    /// The discovered service, when there was one.
    pub authority: Option<AuthorityLabel>,
    pub dst_labels: Option<DstLabels>,
    /// Inbound, accepted connections: the server of the port they reached
    /// (`srv_*`, as linkerd2-proxy labels its inbound server series).
    pub policy: Option<PolicyLabels>,
}

/// The live counters of one label set, shared by the connections feeding it.
#[derive(Debug)]
struct TcpCell {
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
pub struct ConnMeter {
    /// `None` when the series cap kept this label set out.
    cell: Option<Rc<TcpCell>>,
    errno: Cell<&'static str>,
}

impl ConnMeter {
    /// A meter that counts nothing.
    pub fn none() -> Self {
        Self {
            cell: None,
            errno: Cell::new(""),
        }
    }

    pub fn read(&self, n: usize) {
        if let Some(c) = &self.cell {
            add(&c.read, n as u64);
        }
    }

    pub fn wrote(&self, n: usize) {
        if let Some(c) = &self.cell {
            add(&c.write, n as u64);
        }
    }

    /// Records how the connection ended when it was not a clean close.
    pub fn ended(&self, end: RelayEnd) {
        self.errno.set(errno_label(end));
    }

    /// Records an I/O error as the reason the connection ends.
    pub fn failed(&self, e: &std::io::Error) {
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
pub fn relayed(src: &ConnMeter, dst: &ConnMeter, stats: &RelayStats) {
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

/// A worker's live TCP metrics.
#[derive(Debug, Default)]
pub struct TcpShard(HashMap<TcpKey, Rc<TcpCell>>);

impl TcpShard {
    /// Counts a new connection under `key`; the meter closes it on drop.
    pub fn open(&mut self, key: TcpKey) -> ConnMeter {
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
    /// Returns them (see `HttpShard::evict_idle`).
    pub fn evict_idle(&mut self, retain: Duration) -> TcpSnapshot {
        TcpSnapshot(
            self.0
                .extract_if(|_, c| c.open.get() == 0 && c.last_used.get().elapsed() >= retain)
                .map(|(k, c)| (k, c.stats()))
                .collect(),
        )
    }

    /// A copy that can leave the worker.
    pub fn snapshot(&self) -> TcpSnapshot {
        TcpSnapshot(self.0.iter().map(|(k, c)| (k.clone(), c.stats())).collect())
    }
}

impl TcpCell {
    fn stats(&self) -> TcpStats {
        TcpStats {
            open_total: self.open_total.get(),
            open: self.open.get(),
            close_total: self.close_total.borrow().iter().copied().collect(),
            read: self.read.get(),
            write: self.write.get(),
        }
    }
}

/// One label set's counters at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    pub open_total: u64,
    pub open: u64,
    pub close_total: HashMap<&'static str, u64>,
    pub read: u64,
    pub write: u64,
}

/// TCP metrics copied out of workers, merged and encoded off the data path.
#[derive(Clone, Debug, Default)]
pub struct TcpSnapshot(pub HashMap<TcpKey, TcpStats>);

impl TcpSnapshot {
    /// As `HttpShard::merge_residue`.
    pub fn merge_residue(&mut self, residue: &mut TcpSnapshot, prune: bool) {
        if prune {
            residue.0.retain(|k, _| self.0.contains_key(k));
            return self.merge(residue);
        }
        let present = residue.0.iter().filter(|(k, _)| self.0.contains_key(*k));
        let present = TcpSnapshot(present.map(|(k, c)| (k.clone(), c.clone())).collect());
        self.merge(&present);
    }

    /// Adds another worker's copy into this one.
    pub fn merge(&mut self, other: &TcpSnapshot) {
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
    pub fn encode(&self, out: &mut String) {
        let mut rows: Vec<(&TcpKey, &TcpStats, String)> =
            self.0.iter().map(|(k, c)| (k, c, tcp_labels(k))).collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let simple = |out: &mut String, name: &str, get: fn(&TcpStats) -> u64| {
            for (_, c, l) in &rows {
                let _ = writeln!(out, "{name}{{{l}}} {}", get(c));
            }
        };
        family(
            out,
            "tcp_open_total",
            "counter",
            "Total count of opened connections.",
        );
        simple(out, "tcp_open_total", |c| c.open_total);
        family(
            out,
            "tcp_open_connections",
            "gauge",
            "Number of currently-open connections.",
        );
        simple(out, "tcp_open_connections", |c| c.open);
        family(
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
        family(
            out,
            "tcp_read_bytes_total",
            "counter",
            "Total count of bytes read from peers.",
        );
        simple(out, "tcp_read_bytes_total", |c| c.read);
        family(
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
        "direction=\"{}\",peer=\"{}\",target_addr=\"{}\",target_ip=\"{}\",target_port=\"{}\"",
        k.direction.as_str(),
        k.peer.as_str(),
        k.target,
        k.target.ip(),
        k.target.port()
    );
    k.tls.push_labels(&mut s);
    if let Some(p) = &k.policy {
        p.push_labels(&mut s);
    }
    if let Some(a) = &k.authority {
        push_label(&mut s, "authority", a);
    }
    push_dst_labels(&mut s, k.dst_labels.as_ref());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_key(peer: Peer, port: u16) -> TcpKey {
        TcpKey {
            direction: Direction::Inbound,
            peer,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: TlsStatus::NO_PROXY_IDENTITY,
            authority: None,
            dst_labels: None,
            policy: None,
        }
    }

    #[test]
    fn series_cap_is_never_exceeded() {
        let mut t = TcpShard::default();
        let meters: Vec<ConnMeter> = (0..MAX_SERIES + 5)
            .map(|i| t.open(tcp_key(Peer::Src, (i % 65535) as u16 + 1)))
            .collect();
        assert_eq!(t.0.len(), MAX_SERIES);
        assert!(meters.last().is_some_and(|m| m.cell.is_none()));
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

    #[test]
    fn each_tls_status_is_its_own_series_labelled_in_place() {
        let mut t = TcpShard::default();
        let plain = t.open(tcp_key(Peer::Src, 1));
        let mut accepted = tcp_key(Peer::Src, 1);
        accepted.tls = TlsStatus::Accepted {
            client_id: Some("web.prod.serviceaccount.identity.linkerd.cluster.local".into()),
        };
        accepted.authority = Some("web.prod:80".into());
        let m = t.open(accepted);
        let mut out = String::new();
        t.snapshot().encode(&mut out);
        assert!(out.contains("tcp_open_total{direction=\"inbound\",peer=\"src\",target_addr=\"127.0.0.1:1\",target_ip=\"127.0.0.1\",target_port=\"1\",tls=\"no_identity\"} 1\n"), "{out}");
        assert!(out.contains("tcp_open_total{direction=\"inbound\",peer=\"src\",target_addr=\"127.0.0.1:1\",target_ip=\"127.0.0.1\",target_port=\"1\",tls=\"true\",client_id=\"web.prod.serviceaccount.identity.linkerd.cluster.local\",authority=\"web.prod:80\"} 1\n"), "{out}");
        drop((plain, m));
    }
}
