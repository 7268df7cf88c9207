//! DNS stub resolver for the control core: A and AAAA lookups with TTLs,
//! the resolv.conf search list and failover between nameservers.
//!
//! Owns the resolver configuration ([`DnsConfig`], read from resolv.conf text),
//! the UDP exchange with TCP fallback on truncation, and the interpretation of
//! answers (CNAME chains, TTL clamping, negative TTLs from the SOA record).
//! hickory-proto does the wire format, sans I/O; the exchanges are monoio
//! sockets and timers, so a lookup waits without blocking the control core's
//! event loop (other resolvers, the admin server) while it waits.
//!
//! It must not run on a worker: a lookup may wait seconds. Each wait is
//! bounded by [`DnsConfig::timeout`], so one [`DnsResolver::resolve`] takes at
//! most about `candidates × attempts × servers × 3 × timeout`: per server one
//! UDP wait for A and AAAA together, then a TCP retry for each of the two if
//! its UDP answer was truncated. Nothing received from the network
//! can make it panic: malformed or unexpected datagrams are ignored or turned
//! into a [`DnsError`].
//!
//! Not done here: caching (the caller refreshes on the TTL we return), EDNS
//! (answers over 512 bytes come back truncated and are fetched again over
//! TCP), DNSSEC, `options rotate`/`single-request`, `RES_OPTIONS`/`LOCALDOMAIN`,
//! and IPv6 nameservers scoped by interface name (`fe80::1%eth0`), which would
//! need `if_nametoindex`; a numeric scope (`fe80::1%2`) works.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use hickory_proto::error::ProtoError;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::udp::UdpSocket;
use monoio::net::TcpStream;

const DNS_PORT: u16 = 53;
/// glibc's `MAXNS`: later `nameserver` lines are ignored.
const MAX_NAMESERVERS: usize = 3;
/// glibc's caps on `options ndots:`, `timeout:` (seconds) and `attempts:`.
const MAX_NDOTS: usize = 15;
const MAX_TIMEOUT_SECS: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;
/// The largest DNS message: TCP's length prefix is 16 bits.
const MAX_MESSAGE: usize = u16::MAX as usize;
/// A longer CNAME chain in one answer is a loop or an attack; stop following.
const MAX_CNAME_HOPS: usize = 16;
/// Longest presentation name without the trailing dot (RFC 1035's 255 wire
/// octets).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// How to reach the nameservers and how to treat their answers.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Nameservers in the order they are tried. Empty in [`Default`]; the
    /// proxy then fills them from [`DnsConfig::system`].
    pub servers: Vec<SocketAddr>,
    /// How long one exchange with one nameserver may take.
    pub timeout: Duration,
    /// Rounds over the whole server list.
    pub attempts: u32,
    /// Answers are cached no shorter than this (`LINKERD2_PROXY_DNS_MIN_TTL`).
    pub min_ttl: Duration,
    /// Answers are cached no longer than this (`LINKERD2_PROXY_DNS_MAX_TTL`).
    pub max_ttl: Duration,
    /// Search domains, without trailing dots.
    pub search: Vec<String>,
    /// Names with fewer dots than this try the search list first.
    pub ndots: usize,
}

impl Default for DnsConfig {
    /// glibc's defaults except the timeout: 5 s per attempt holds the control
    /// core too long, so 2 s.
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            search: Vec::new(),
            ndots: 1,
        }
    }
}

impl DnsConfig {
    /// Parses resolv.conf text: `nameserver`, `search`, `domain` and
    /// `options ndots:N timeout:N attempts:N`. Everything else, and any value
    /// that does not parse, is ignored, as glibc ignores it. Without a usable
    /// `nameserver` line the local host (127.0.0.1:53) is the server, as in
    /// glibc.
    pub fn from_resolv_conf(text: &str) -> Self {
        let mut cfg = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let Some(word) = words.next() else { continue };
                    match parse_nameserver(word) {
                        Some(addr) if cfg.servers.len() < MAX_NAMESERVERS => cfg.servers.push(addr),
                        Some(_) => tracing::debug!(
                            nameserver = word,
                            "more than 3 nameservers; ignored as glibc does"
                        ),
                        None => tracing::warn!(
                            nameserver = word,
                            "unusable nameserver in resolv.conf; ignored"
                        ),
                    }
                }
                // `search` and `domain` replace each other: the last one wins.
                Some("search") => cfg.search = words.filter_map(normalize_domain).collect(),
                Some("domain") => {
                    cfg.search = words
                        .next()
                        .and_then(normalize_domain)
                        .into_iter()
                        .collect()
                }
                Some("options") => words.for_each(|opt| cfg.apply_option(opt)),
                _ => {}
            }
        }
        if cfg.servers.is_empty() {
            cfg.servers
                .push(SocketAddr::from((Ipv4Addr::LOCALHOST, DNS_PORT)));
        }
        cfg
    }

    /// The host's configuration from `/etc/resolv.conf`. When that cannot be
    /// read, the defaults with glibc's fallback server (127.0.0.1:53), which is
    /// what the C library would use too.
    pub fn system() -> Self {
        match std::fs::read_to_string("/etc/resolv.conf") {
            Ok(text) => Self::from_resolv_conf(&text),
            Err(error) => {
                tracing::warn!(%error, "cannot read /etc/resolv.conf; using 127.0.0.1:53");
                Self::from_resolv_conf("")
            }
        }
    }

    fn apply_option(&mut self, opt: &str) {
        let Some((key, value)) = opt.split_once(':') else {
            return;
        };
        let Ok(n) = value.parse::<u64>() else { return };
        match key {
            "ndots" => self.ndots = usize::try_from(n).unwrap_or(MAX_NDOTS).min(MAX_NDOTS),
            "timeout" => self.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT_SECS)),
            "attempts" => {
                self.attempts = u32::try_from(n)
                    .unwrap_or(MAX_ATTEMPTS)
                    .clamp(1, MAX_ATTEMPTS)
            }
            _ => {}
        }
    }

    /// Keeps `ttl` within `[min_ttl, max_ttl]`. Written without
    /// `Duration::clamp`, which panics when a misconfiguration puts min above
    /// max; then max wins.
    fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.max(self.min_ttl).min(self.max_ttl)
    }
}

/// An IP address, or an IPv6 address with a numeric scope (`fe80::1%2`).
fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    let (ip, scope) = word.split_once('%')?;
    let ip = ip.parse::<Ipv6Addr>().ok()?;
    let scope = scope.parse::<u32>().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope)))
}

/// `example.com.` → `example.com`; `.` (systemd-resolved's "no search
/// domain") → nothing.
fn normalize_domain(word: &str) -> Option<String> {
    let d = word.trim_end_matches('.');
    (!d.is_empty()).then(|| d.to_ascii_lowercase())
}

/// The addresses a name has, and how long they may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// IPv4 addresses first, then IPv6, each in answer order.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the records used, clamped to the configured range.
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Every candidate name is NXDOMAIN or has neither A nor AAAA records.
    /// Ask again after `negative_ttl`.
    #[error("dns name {name} does not exist")]
    NotFound {
        name: String,
        negative_ttl: Duration,
    },
    #[error("invalid dns name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no dns nameservers configured")]
    NoServers,
    #[error("dns nameserver {server} did not answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    /// SERVFAIL, REFUSED and every other error code.
    #[error("dns nameserver {server} answered {}", .code.to_str().to_ascii_lowercase())]
    Server {
        server: SocketAddr,
        code: ResponseCode,
    },
    #[error("malformed response from dns nameserver {server}")]
    Malformed {
        server: SocketAddr,
        #[source]
        source: ProtoError,
    },
    #[error("dns nameserver {server} answered a different question")]
    Mismatched { server: SocketAddr },
    #[error("dns i/o with nameserver {server} failed")]
    Io {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Resolves host names to addresses over monoio sockets. Every lookup has
/// its own sockets and buffers, so one resolver serves any number of
/// concurrent lookups on the control core; at most
/// [`MAX_CONCURRENT_EXCHANGES`] of their exchanges (a socket each) run at
/// once, the rest wait their turn.
pub struct DnsResolver {
    cfg: DnsConfig,
    exchanges: crate::limit::Limit,
}

/// DNS exchanges with nameservers at once, per resolver. Each holds a
/// socket: a client naming thousands of hosts against a nameserver that
/// never answers otherwise held thousands of descriptors (every one the
/// process had, the admin server's too) for the timeout.
pub const MAX_CONCURRENT_EXCHANGES: usize = 128;

/// A name's SRV answer: where the service runs, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvResolution {
    /// Each address of each target of the lowest priority, with the
    /// target's port and weight (0 counted as 1), in answer order.
    pub targets: Vec<(SocketAddr, u32)>,
    /// The smallest TTL of the records used, clamped to the configured range.
    pub ttl: Duration,
}

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: Name,
    ttl: u32,
}

/// One record type's answer from one nameserver.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    /// SRV records owned by the query name (an SRV query).
    srv: Vec<Srv>,
    /// Addresses the additional section gives for names (an SRV
    /// answer's targets), with their TTLs.
    extra: Vec<(Name, IpAddr, u32)>,
    /// Addresses owned by the query name or by a name its CNAME chain reaches.
    addrs: Vec<IpAddr>,
    /// Minimum TTL (seconds) of the address records and the CNAMEs used;
    /// `None` when there are no addresses.
    ttl: Option<u32>,
    /// `min(SOA TTL, SOA minimum)` from the authority section, for caching a
    /// negative answer (RFC 2308).
    negative_ttl: Option<u32>,
}

/// What one candidate name turned out to be.
enum Lookup {
    Found(Resolution),
    NotFound { negative_ttl: Duration },
}

/// A query's progress within one exchange with one server.
enum Slot {
    Waiting,
    NeedsTcp,
    Done(Result<Answer, DnsError>),
}

impl DnsResolver {
    pub fn new(cfg: DnsConfig) -> Self {
        Self {
            cfg,
            exchanges: crate::limit::Limit::new(MAX_CONCURRENT_EXCHANGES),
        }
    }

    pub fn config(&self) -> &DnsConfig {
        &self.cfg
    }

    /// Resolves `host` to its A and AAAA addresses. An IP literal (also
    /// `[v6]`) is returned as it is, valid for `max_ttl`.
    ///
    /// Candidates from the search list are tried in glibc's order; the first
    /// that has addresses wins. A transient failure (timeout, SERVFAIL, ...)
    /// on a candidate stops the search with that error, as musl does: trying
    /// the next candidate could resolve a different service while the
    /// intended one is merely unreachable.
    ///
    /// Must be awaited inside a monoio runtime with timers enabled.
    pub async fn resolve(&self, host: &str) -> Result<Resolution, DnsError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(Resolution {
                addrs: vec![ip],
                ttl: self.cfg.max_ttl,
            });
        }
        let candidates = candidates(host, &self.cfg.search, self.cfg.ndots)?;
        if self.cfg.servers.is_empty() {
            return Err(DnsError::NoServers);
        }
        let mut negative_ttl: Option<Duration> = None;
        for name in &candidates {
            match self.lookup(name).await? {
                Lookup::Found(res) => return Ok(res),
                Lookup::NotFound { negative_ttl: t } => {
                    tracing::trace!(%name, "no such name");
                    negative_ttl = Some(negative_ttl.map_or(t, |n| n.min(t)));
                }
            }
        }
        Err(DnsError::NotFound {
            name: host.to_string(),
            negative_ttl: negative_ttl.unwrap_or(self.cfg.min_ttl),
        })
    }

    /// Resolves `host`'s SRV records (`_service._proto.name`): the
    /// targets of the lowest priority, each target's addresses from the
    /// answer's additional section or else looked up (A/AAAA), with the
    /// record's port and weight. A target of `.` (the service is not
    /// offered there) is skipped. Search list and errors as [`Self::resolve`].
    pub async fn resolve_srv(&self, host: &str) -> Result<SrvResolution, DnsError> {
        let candidates = candidates(host, &self.cfg.search, self.cfg.ndots)?;
        if self.cfg.servers.is_empty() {
            return Err(DnsError::NoServers);
        }
        let mut negative_ttl: Option<Duration> = None;
        for name in &candidates {
            let answer = self.ask(name, RecordType::SRV).await?;
            let usable: Vec<&Srv> = answer.srv.iter().filter(|r| !r.target.is_root()).collect();
            let Some(best) = usable.iter().map(|r| r.priority).min() else {
                let t = answer.negative_ttl.map_or(self.cfg.min_ttl, |s| {
                    self.cfg.clamp_ttl(Duration::from_secs(s.into()))
                });
                negative_ttl = Some(negative_ttl.map_or(t, |n| n.min(t)));
                continue;
            };
            let mut targets = Vec::new();
            let mut ttl = u32::MAX;
            let mut resolved_ttl = self.cfg.max_ttl;
            for r in usable.into_iter().filter(|r| r.priority == best) {
                ttl = ttl.min(r.ttl);
                let mut addrs: Vec<IpAddr> = answer
                    .extra
                    .iter()
                    .filter(|(n, _, _)| *n == r.target)
                    .map(|(_, ip, t)| {
                        ttl = ttl.min(*t);
                        *ip
                    })
                    .collect();
                if addrs.is_empty() {
                    match self.resolve(&r.target.to_ascii()).await {
                        Ok(res) => {
                            resolved_ttl = resolved_ttl.min(res.ttl);
                            addrs = res.addrs;
                        }
                        Err(error) => {
                            tracing::debug!(%name, target = %r.target, %error, "srv target not resolved");
                        }
                    }
                }
                for ip in addrs {
                    let at = (SocketAddr::new(ip, r.port), u32::from(r.weight).max(1));
                    if !targets.iter().any(|(a, _)| *a == at.0) {
                        targets.push(at);
                    }
                }
            }
            if targets.is_empty() {
                return Err(DnsError::NotFound {
                    name: host.to_string(),
                    negative_ttl: self.cfg.min_ttl,
                });
            }
            let ttl = self
                .cfg
                .clamp_ttl(Duration::from_secs(ttl.into()))
                .min(resolved_ttl);
            return Ok(SrvResolution { targets, ttl });
        }
        Err(DnsError::NotFound {
            name: host.to_string(),
            negative_ttl: negative_ttl.unwrap_or(self.cfg.min_ttl),
        })
    }

    /// One record type for one name: each server in turn, `attempts`
    /// rounds, until one answers.
    async fn ask(&self, name: &Name, qtype: RecordType) -> Result<Answer, DnsError> {
        let mut last_error = None;
        for _ in 0..self.cfg.attempts.max(1) {
            for &server in &self.cfg.servers {
                for (_, result) in self.exchange(server, name, &[qtype]).await {
                    match result {
                        Ok(answer) => return Ok(answer),
                        Err(error) => {
                            tracing::debug!(%name, %qtype, %error, "dns query failed");
                            last_error = Some(error);
                        }
                    }
                }
            }
        }
        Err(last_error.unwrap_or(DnsError::NoServers))
    }

    /// Asks for A and AAAA of one fully qualified name: each server in turn,
    /// `attempts` rounds, until both types have an answer.
    async fn lookup(&self, name: &Name) -> Result<Lookup, DnsError> {
        let mut a: Option<Answer> = None;
        let mut aaaa: Option<Answer> = None;
        let mut last_error = None;
        // A family whose replies were garbage while the other was answered
        // is not asked again: its answer is not waited for (a server that
        // garbles AAAA would hold every lookup until the deadline).
        let mut given_up = [false; 2];
        'rounds: for _ in 0..self.cfg.attempts.max(1) {
            for &server in &self.cfg.servers {
                let mut todo = Vec::with_capacity(2);
                if a.is_none() && !given_up[0] {
                    todo.push(RecordType::A);
                }
                if aaaa.is_none() && !given_up[1] {
                    todo.push(RecordType::AAAA);
                }
                if todo.is_empty() {
                    break 'rounds;
                }
                let results = self.exchange(server, name, &todo).await;
                for (qtype, result) in results {
                    match result {
                        Ok(answer) if qtype == RecordType::A => a = Some(answer),
                        Ok(answer) => aaaa = Some(answer),
                        Err(error) => {
                            tracing::debug!(%name, %qtype, %error, "dns query failed");
                            if matches!(error, DnsError::Malformed { .. }) {
                                given_up[usize::from(qtype != RecordType::A)] = true;
                            }
                            last_error = Some(error);
                        }
                    }
                }
                // Garbage is given up on only beside an answer.
                if a.is_none() && aaaa.is_none() {
                    given_up = [false; 2];
                }
            }
        }

        let found: Vec<&Answer> = [&a, &aaaa].into_iter().flatten().collect();
        let addrs: Vec<IpAddr> = found
            .iter()
            .flat_map(|ans| ans.addrs.iter().copied())
            .collect();
        if !addrs.is_empty() {
            if a.is_none() || aaaa.is_none() {
                // Some servers drop AAAA queries. The addresses of the family
                // that answered beat none; the other family's are picked up at
                // the next refresh.
                tracing::debug!(%name, "one address family got no answer; using the other");
            }
            let ttl = found.iter().filter_map(|ans| ans.ttl).min().unwrap_or(0);
            return Ok(Lookup::Found(Resolution {
                addrs,
                ttl: self.cfg.clamp_ttl(Duration::from_secs(ttl.into())),
            }));
        }
        if a.is_none() || aaaa.is_none() {
            // One family said "nothing" and the other never answered: we
            // cannot tell that the name is gone.
            return Err(last_error.unwrap_or(DnsError::NoServers));
        }
        let negative_ttl = found
            .iter()
            .map(|ans| match ans.negative_ttl {
                Some(secs) => self.cfg.clamp_ttl(Duration::from_secs(secs.into())),
                None => self.cfg.min_ttl,
            })
            .min()
            .unwrap_or(self.cfg.min_ttl);
        Ok(Lookup::NotFound { negative_ttl })
    }

    /// Sends every query in `qtypes` to `server` over one UDP socket and
    /// collects the answers within one timeout; truncated answers are asked
    /// again over TCP.
    async fn exchange(
        &self,
        server: SocketAddr,
        name: &Name,
        qtypes: &[RecordType],
    ) -> Vec<(RecordType, Result<Answer, DnsError>)> {
        let _turn = self.exchanges.acquire().await;
        let timeout = self.timeout();
        let mut ids: Vec<u16> = Vec::with_capacity(qtypes.len());
        while ids.len() < qtypes.len() {
            let id = fastrand::u16(..);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut slots: Vec<Slot> = qtypes.iter().map(|_| Slot::Waiting).collect();
        if let Err(error) = self
            .udp_exchange(server, name, qtypes, &ids, &mut slots)
            .await
        {
            for slot in &mut slots {
                if matches!(slot, Slot::Waiting) {
                    *slot = Slot::Done(Err(io_error(server, timeout, &error)));
                }
            }
        }
        let mut out = Vec::with_capacity(qtypes.len());
        for (&qtype, slot) in qtypes.iter().zip(slots) {
            let result = match slot {
                Slot::Done(result) => result,
                Slot::Waiting => Err(DnsError::Timeout { server, timeout }),
                Slot::NeedsTcp => {
                    tracing::debug!(%name, %qtype, %server, "truncated udp answer; asking over tcp");
                    self.tcp_exchange(server, name, qtype).await
                }
            };
            out.push((qtype, result));
        }
        out
    }

    /// Fills `slots` from the replies that arrive before the deadline. An
    /// `Err` means the socket itself failed; slots still `Waiting` then.
    async fn udp_exchange(
        &self,
        server: SocketAddr,
        name: &Name,
        qtypes: &[RecordType],
        ids: &[u16],
        slots: &mut [Slot],
    ) -> io::Result<()> {
        let deadline = monoio::time::Instant::now() + self.timeout();
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // A fresh socket per exchange gets a fresh random source port, and a
        // connected one makes the kernel drop datagrams from other peers and
        // report ICMP port-unreachable, so a dead server fails fast.
        let socket = UdpSocket::bind(local)?;
        socket.connect(server).await?;
        for (&qtype, &id) in qtypes.iter().zip(ids) {
            let query = encode_query(id, name, qtype).map_err(io::Error::other)?;
            let (sent, _) = socket.send(query).await;
            sent?;
        }
        // One receive buffer for the exchange: a UDP answer is at most
        // 64 KiB, and the kernel cuts anything longer.
        let mut buf: Vec<u8> = Vec::with_capacity(MAX_MESSAGE);
        // A datagram with a query's id that does not parse is skipped, as
        // hickory's UDP client does (one forged or broken datagram must not
        // decide the lookup); it is the query's error only if no good reply
        // follows before the deadline.
        let mut garbled: Vec<Option<DnsError>> = slots.iter().map(|_| None).collect();
        let ended = loop {
            // Done when no query waits, or when those that do have only had
            // garbage while another family was answered: the good answer is
            // used at once (as when their reply was an error), not held
            // back until the deadline.
            let answered = slots.iter().any(|s| matches!(s, Slot::Done(Ok(_))));
            let waiting = slots
                .iter()
                .zip(&garbled)
                .any(|(s, g)| matches!(s, Slot::Waiting) && !(answered && g.is_some()));
            if !waiting {
                break Ok(());
            }
            buf.clear();
            let (got, back) = match monoio::time::timeout_at(deadline, socket.recv(buf)).await {
                Ok(received) => received,
                // The buffer went with the cancelled receive; we are done.
                Err(_elapsed) => break Ok(()),
            };
            buf = back;
            match got {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
            let datagram = &buf[..];
            let Some(i) = datagram
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .and_then(|id| ids.iter().position(|&want| want == id))
                .filter(|&i| matches!(slots[i], Slot::Waiting))
            else {
                continue; // a late answer to an earlier query, or noise
            };
            let msg = match Message::from_vec(datagram) {
                Ok(msg) => msg,
                Err(source) => {
                    tracing::debug!(%name, %server, error = %source, "malformed dns reply skipped");
                    garbled[i] = Some(DnsError::Malformed { server, source });
                    continue;
                }
            };
            if !answers_query(&msg, ids[i], name, qtypes[i]) {
                continue;
            }
            slots[i] = if msg.truncated() {
                Slot::NeedsTcp
            } else {
                Slot::Done(interpret(&msg, server, name, qtypes[i]))
            };
        };
        for (slot, garbled) in slots.iter_mut().zip(garbled) {
            if let (Slot::Waiting, Some(error)) = (&slot, garbled) {
                *slot = Slot::Done(Err(error));
            }
        }
        ended
    }

    /// One query over TCP (RFC 1035 4.2.2: a 2-byte length prefix), within one
    /// timeout from connect to the last byte.
    async fn tcp_exchange(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Answer, DnsError> {
        let timeout = self.timeout();
        let id = fastrand::u16(..);
        let query = encode_query(id, name, qtype)
            .map_err(|source| DnsError::Malformed { server, source })?;
        let exchange = async {
            let mut stream = TcpStream::connect_addr(server).await?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            // encode_query's output is one question; it always fits the prefix.
            framed.extend_from_slice(&u16::try_from(query.len()).unwrap_or(u16::MAX).to_be_bytes());
            framed.extend_from_slice(&query);
            let (written, _) = stream.write_all(framed).await;
            written?;
            let (read, prefix) = stream.read_exact(vec![0u8; 2]).await;
            read?;
            let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            let (read, body) = stream.read_exact(vec![0u8; len]).await;
            read?;
            io::Result::Ok(body)
        };
        let body = match monoio::time::timeout(timeout, exchange).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => return Err(io_error(server, timeout, &e)),
            Err(_elapsed) => return Err(DnsError::Timeout { server, timeout }),
        };
        let msg =
            Message::from_vec(&body).map_err(|source| DnsError::Malformed { server, source })?;
        if !answers_query(&msg, id, name, qtype) {
            return Err(DnsError::Mismatched { server });
        }
        interpret(&msg, server, name, qtype)
    }

    fn timeout(&self) -> Duration {
        // A zero timeout would make every socket call fail with InvalidInput.
        self.cfg.timeout.max(Duration::from_millis(1))
    }
}

/// The fully qualified names to try for `host`, in order (glibc's
/// `res_search`): a name ending in `.` is only itself; one with at least
/// `ndots` dots is tried as it is, then with each search domain; one with
/// fewer dots is tried with each search domain first, then as it is.
fn candidates(host: &str, search: &[String], ndots: usize) -> Result<Vec<Name>, DnsError> {
    if let Some(absolute) = host.strip_suffix('.') {
        return Ok(vec![
            to_name(absolute).map_err(|reason| invalid(host, reason))?
        ]);
    }
    let as_is = to_name(host).map_err(|reason| invalid(host, reason))?;
    // A domain that makes the name too long (or a bad one in resolv.conf) is
    // skipped, as glibc skips it.
    let searched = search
        .iter()
        .filter_map(|domain| to_name(&format!("{host}.{domain}")).ok());
    let mut out: Vec<Name> = Vec::with_capacity(search.len() + 1);
    if host.matches('.').count() >= ndots {
        out.push(as_is);
        out.extend(searched);
    } else {
        out.extend(searched);
        out.push(as_is);
    }
    let mut unique: Vec<Name> = Vec::with_capacity(out.len());
    for name in out {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    Ok(unique)
}

fn invalid(host: &str, reason: &'static str) -> DnsError {
    DnsError::InvalidName {
        name: host.to_string(),
        reason,
    }
}

/// A host name (letters, digits, `-`, `_`; labels of 1 to 63 bytes) as a
/// fully qualified [`Name`]. Internationalized names must come as `xn--`.
fn to_name(text: &str) -> Result<Name, &'static str> {
    if text.is_empty() {
        return Err("empty name");
    }
    if text.len() > MAX_NAME_LEN {
        return Err("longer than 253 bytes");
    }
    for label in text.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-' and '_' are allowed");
        }
    }
    let mut name = Name::from_ascii(text).map_err(|_| "not encodable")?;
    name.set_fqdn(true);
    Ok(name)
}

fn encode_query(id: u16, name: &Name, qtype: RecordType) -> Result<Vec<u8>, ProtoError> {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), qtype));
    msg.to_vec()
}

/// Whether `msg` is the reply to our query `id` for `name`/`qtype`: a
/// response carrying exactly our question, so that a stray or forged datagram
/// with a guessed id is not taken for the answer.
fn answers_query(msg: &Message, id: u16, name: &Name, qtype: RecordType) -> bool {
    msg.id() == id
        && msg.message_type() == MessageType::Response
        && msg.op_code() == OpCode::Query
        && matches!(msg.queries(), [q] if q.name() == name && q.query_type() == qtype && q.query_class() == DNSClass::IN)
}

/// Turns a matching response into an answer, or the error that sends us to
/// the next server.
fn interpret(
    msg: &Message,
    server: SocketAddr,
    name: &Name,
    qtype: RecordType,
) -> Result<Answer, DnsError> {
    match msg.response_code() {
        ResponseCode::NoError => Ok(extract(msg, name, qtype)),
        ResponseCode::NXDomain => {
            // The name does not exist, whatever records came along.
            let mut answer = extract(msg, name, qtype);
            answer.addrs.clear();
            answer.srv.clear();
            answer.ttl = None;
            Ok(answer)
        }
        code => Err(DnsError::Server { server, code }),
    }
}

/// The addresses of type `qtype` for `qname` in the answer section, following
/// CNAMEs: only records owned by `qname` or by a name its CNAME chain reaches
/// count, so that unrelated records a server adds are never used.
fn extract(msg: &Message, qname: &Name, qtype: RecordType) -> Answer {
    let records = msg.answers();
    let mut chain: Vec<&Name> = vec![qname];
    let mut cname_ttl: Option<u32> = None;
    for _ in 0..MAX_CNAME_HOPS {
        let Some(current) = chain.last().copied() else {
            break;
        };
        let next = records.iter().find_map(|r| match r.data() {
            Some(RData::CNAME(target)) if r.dns_class() == DNSClass::IN && r.name() == current => {
                Some((r.ttl(), &target.0))
            }
            _ => None,
        });
        let Some((ttl, target)) = next else { break };
        if chain.contains(&target) {
            break; // a CNAME loop
        }
        cname_ttl = Some(cname_ttl.map_or(ttl, |t| t.min(ttl)));
        chain.push(target);
    }

    let mut addrs = Vec::new();
    let mut srv = Vec::new();
    let mut ttl: Option<u32> = None;
    for r in records {
        if let (RecordType::SRV, Some(RData::SRV(s))) = (qtype, r.data()) {
            if r.dns_class() == DNSClass::IN && chain.contains(&r.name()) {
                srv.push(Srv {
                    priority: s.priority(),
                    weight: s.weight(),
                    port: s.port(),
                    target: s.target().clone(),
                    ttl: r.ttl(),
                });
            }
            continue;
        }
        if r.record_type() != qtype || r.dns_class() != DNSClass::IN || !chain.contains(&r.name()) {
            continue;
        }
        let addr = match r.data() {
            Some(RData::A(a)) => IpAddr::V4(a.0),
            // An IPv4-mapped answer is its IPv4 address (judged and
            // connected to as that).
            Some(RData::AAAA(aaaa)) => IpAddr::V6(aaaa.0).to_canonical(),
            _ => continue,
        };
        // No endpoint has these: Linux connects an unspecified address to
        // this host (a loop, or a loopback client of its own admin).
        let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
        if addr.is_unspecified() || addr.is_multicast() || broadcast {
            continue;
        }
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        ttl = Some(ttl.map_or(r.ttl(), |t| t.min(r.ttl())));
    }
    if let (Some(t), Some(c)) = (ttl, cname_ttl) {
        ttl = Some(t.min(c));
    }

    // RFC 2308 §5: a negative answer lives for min(SOA TTL, SOA MINIMUM). The
    // SOA must be for a zone that holds a name we asked about.
    let negative_ttl = msg.name_servers().iter().find_map(|r| match r.data() {
        Some(RData::SOA(soa)) if chain.iter().any(|n| r.name().zone_of(n)) => {
            Some(r.ttl().min(soa.minimum()))
        }
        _ => None,
    });
    // Addresses the server added for an SRV answer's targets.
    let extra = if srv.is_empty() {
        Vec::new()
    } else {
        msg.additionals()
            .iter()
            .filter(|r| r.dns_class() == DNSClass::IN && srv.iter().any(|s| s.target == *r.name()))
            .filter_map(|r| match r.data() {
                Some(RData::A(a)) => Some((r.name().clone(), IpAddr::V4(a.0), r.ttl())),
                Some(RData::AAAA(a)) => {
                    Some((r.name().clone(), IpAddr::V6(a.0).to_canonical(), r.ttl()))
                }
                _ => None,
            })
            .collect()
    };
    Answer {
        srv,
        extra,
        addrs,
        ttl,
        negative_ttl,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_error(server: SocketAddr, timeout: Duration, e: &io::Error) -> DnsError {
    if is_timeout(e) {
        DnsError::Timeout { server, timeout }
    } else {
        DnsError::Io {
            server,
            source: io::Error::new(e.kind(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
    use hickory_proto::rr::Record;
    use proptest::prelude::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(qname: &str, qtype: RecordType, code: ResponseCode) -> Message {
        let mut msg = Message::new();
        msg.set_id(7)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_response_code(code)
            .add_query(Query::query(name(qname), qtype));
        msg
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A::from(Ipv4Addr::from(ip))))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        let data = SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        Record::from_rdata(name(zone), ttl, RData::SOA(data))
    }

    /// Encodes and decodes, so the test sees what the wire would carry.
    fn wire(msg: &Message) -> Message {
        Message::from_vec(&msg.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn resolv_conf() {
        let cfg = DnsConfig::from_resolv_conf(
            "# generated\n\
             nameserver 10.96.0.10\n\
             nameserver 2001:db8::53 # trailing comment\n\
             ; another comment style\n\
             search default.svc.cluster.local svc.cluster.local. cluster.local\n\
             options ndots:5 timeout:3 attempts:4 rotate edns0\n\
             sortlist 10.0.0.0/8\n\
             nameserver fe80::1%2\n\
             nameserver 192.0.2.99\n",
        );
        assert_eq!(
            cfg.servers,
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ],
            "at most three servers, like glibc"
        );
        assert_eq!(
            cfg.search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(cfg.ndots, 5);
        assert_eq!(cfg.timeout, Duration::from_secs(3));
        assert_eq!(cfg.attempts, 4);
        assert_eq!(cfg.min_ttl, Duration::from_secs(5));
        assert_eq!(cfg.max_ttl, Duration::from_secs(300));
    }

    #[test]
    fn resolv_conf_domain_and_search_replace_each_other() {
        let cfg = DnsConfig::from_resolv_conf("search a.test b.test\ndomain C.Test.\n");
        assert_eq!(cfg.search, ["c.test"]);
        let cfg = DnsConfig::from_resolv_conf("domain c.test\nsearch a.test b.test\n");
        assert_eq!(cfg.search, ["a.test", "b.test"]);
        let cfg = DnsConfig::from_resolv_conf("search .\n");
        assert!(cfg.search.is_empty());
    }

    #[test]
    fn resolv_conf_without_nameserver_uses_loopback() {
        let cfg = DnsConfig::from_resolv_conf("nameserver not-an-ip\nnameserver fe80::1%eth0\n");
        assert_eq!(cfg.servers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(cfg.ndots, 1);
        assert_eq!(cfg.timeout, Duration::from_secs(2));
        assert_eq!(cfg.attempts, 2);
        assert!(DnsConfig::default().servers.is_empty());
    }

    #[test]
    fn resolv_conf_options_are_capped_and_bad_ones_ignored() {
        let cfg = DnsConfig::from_resolv_conf("options ndots:99 timeout:0 attempts:100\n");
        assert_eq!(
            (cfg.ndots, cfg.timeout, cfg.attempts),
            (15, Duration::from_secs(1), 5)
        );
        let cfg = DnsConfig::from_resolv_conf("options ndots:-1 timeout:x attempts ndots\n");
        assert_eq!(
            (cfg.ndots, cfg.timeout, cfg.attempts),
            (1, Duration::from_secs(2), 2)
        );
    }

    #[test]
    fn ttl_is_clamped() {
        let cfg = DnsConfig::default();
        assert_eq!(
            cfg.clamp_ttl(Duration::from_secs(0)),
            Duration::from_secs(5)
        );
        assert_eq!(
            cfg.clamp_ttl(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            cfg.clamp_ttl(Duration::from_secs(86400)),
            Duration::from_secs(300)
        );
        let inverted = DnsConfig {
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(1),
            ..DnsConfig::default()
        };
        assert_eq!(
            inverted.clamp_ttl(Duration::from_secs(5)),
            Duration::from_secs(1),
            "no panic; max wins"
        );
    }

    #[test]
    fn cname_chain_is_followed_and_strays_ignored() {
        let mut msg = response("www.test.", RecordType::A, ResponseCode::NoError);
        msg.add_answer(cname("www.test.", 120, "edge.cdn.test."))
            .add_answer(cname("EDGE.cdn.test.", 90, "pop1.cdn.test."))
            .add_answer(a("pop1.cdn.test.", 200, [192, 0, 2, 1]))
            .add_answer(a("pop1.cdn.test.", 300, [192, 0, 2, 2]))
            // Not reachable from www.test.: must not be used.
            .add_answer(a("evil.test.", 1, [198, 51, 100, 66]))
            .add_answer(cname("other.test.", 1, "pop1.cdn.test."));
        let ans = extract(&wire(&msg), &name("www.test."), RecordType::A);
        assert_eq!(
            ans.addrs,
            vec![IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2])]
        );
        assert_eq!(ans.ttl, Some(90), "the smallest TTL along the chain");
    }

    #[test]
    fn records_of_another_type_or_owner_are_ignored() {
        let mut msg = response("web.test.", RecordType::AAAA, ResponseCode::NoError);
        msg.add_answer(a("web.test.", 60, [192, 0, 2, 1]))
            .add_answer(Record::from_rdata(
                name("web.test."),
                30,
                RData::AAAA(AAAA::from("2001:db8::1".parse::<Ipv6Addr>().unwrap())),
            ));
        let ans = extract(&wire(&msg), &name("web.test."), RecordType::AAAA);
        assert_eq!(ans.addrs, vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(ans.ttl, Some(30));
    }

    /// Addresses no endpoint has are dropped: an unspecified one would
    /// connect back to this host.
    #[test]
    fn unspecified_multicast_and_broadcast_answers_are_dropped() {
        let mut msg = response("web.test.", RecordType::A, ResponseCode::NoError);
        for ip in [
            [0, 0, 0, 0],
            [224, 0, 0, 1],
            [255, 255, 255, 255],
            [192, 0, 2, 7],
        ] {
            msg.add_answer(a("web.test.", 60, ip));
        }
        let ans = extract(&wire(&msg), &name("web.test."), RecordType::A);
        assert_eq!(ans.addrs, vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
    }

    /// An IPv4-mapped AAAA answer is its IPv4 address: judged as that
    /// (`::ffff:0.0.0.0` is unspecified) and connected to as that.
    #[test]
    fn mapped_answers_are_ipv4() {
        let mut msg = response("web.test.", RecordType::AAAA, ResponseCode::NoError);
        for ip in ["::ffff:0.0.0.0", "::ffff:192.0.2.9"] {
            let ip = ip.parse::<Ipv6Addr>().unwrap();
            msg.add_answer(Record::from_rdata(
                name("web.test."),
                60,
                RData::AAAA(AAAA::from(ip)),
            ));
        }
        let ans = extract(&wire(&msg), &name("web.test."), RecordType::AAAA);
        assert_eq!(ans.addrs, vec!["192.0.2.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn cname_loop_terminates() {
        let mut msg = response("a.test.", RecordType::A, ResponseCode::NoError);
        msg.add_answer(cname("a.test.", 60, "b.test."))
            .add_answer(cname("b.test.", 60, "a.test."));
        let ans = extract(&wire(&msg), &name("a.test."), RecordType::A);
        assert!(ans.addrs.is_empty());
        assert_eq!(ans.ttl, None);
    }

    #[test]
    fn negative_ttl_from_soa() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut msg = response("gone.example.test.", RecordType::A, ResponseCode::NXDomain);
        msg.add_name_server(soa("example.test.", 3600, 45));
        let ans = interpret(
            &wire(&msg),
            server,
            &name("gone.example.test."),
            RecordType::A,
        )
        .unwrap();
        assert!(ans.addrs.is_empty());
        assert_eq!(ans.negative_ttl, Some(45), "min(SOA ttl, SOA minimum)");

        let mut msg = response("gone.example.test.", RecordType::A, ResponseCode::NoError);
        msg.add_name_server(soa("example.test.", 20, 600));
        let ans = interpret(
            &wire(&msg),
            server,
            &name("gone.example.test."),
            RecordType::A,
        )
        .unwrap();
        assert_eq!(ans.negative_ttl, Some(20));

        // An SOA for an unrelated zone says nothing about our name.
        let mut msg = response("gone.example.test.", RecordType::A, ResponseCode::NXDomain);
        msg.add_name_server(soa("elsewhere.test.", 10, 10));
        let ans = interpret(
            &wire(&msg),
            server,
            &name("gone.example.test."),
            RecordType::A,
        )
        .unwrap();
        assert_eq!(ans.negative_ttl, None);
    }

    #[test]
    fn nxdomain_discards_addresses_and_servfail_is_an_error() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut msg = response("x.test.", RecordType::A, ResponseCode::NXDomain);
        msg.add_answer(a("x.test.", 60, [192, 0, 2, 1]));
        let ans = interpret(&wire(&msg), server, &name("x.test."), RecordType::A).unwrap();
        assert!(ans.addrs.is_empty());

        let msg = response("x.test.", RecordType::A, ResponseCode::ServFail);
        let err = interpret(&wire(&msg), server, &name("x.test."), RecordType::A).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dns nameserver 127.0.0.1:53 answered server failure"
        );
    }

    #[test]
    fn only_the_reply_to_our_question_is_accepted() {
        let q = name("web.test.");
        let msg = wire(&response("web.test.", RecordType::A, ResponseCode::NoError));
        assert!(answers_query(&msg, 7, &q, RecordType::A));
        assert!(
            answers_query(&msg, 7, &name("WEB.Test."), RecordType::A),
            "names compare case-insensitively"
        );
        assert!(!answers_query(&msg, 8, &q, RecordType::A));
        assert!(!answers_query(&msg, 7, &q, RecordType::AAAA));
        assert!(!answers_query(&msg, 7, &name("other.test."), RecordType::A));
        let mut query = msg.clone();
        query.set_message_type(MessageType::Query);
        assert!(!answers_query(&query, 7, &q, RecordType::A));
    }

    #[test]
    fn search_order_follows_glibc() {
        let search = ["ns.svc.test".to_string(), "svc.test".to_string()];
        let names = |host: &str, ndots| -> Vec<String> {
            candidates(host, &search, ndots)
                .unwrap()
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(
            names("api", 1),
            ["api.ns.svc.test.", "api.svc.test.", "api."]
        );
        assert_eq!(
            names("api.ns", 1),
            ["api.ns.", "api.ns.ns.svc.test.", "api.ns.svc.test."]
        );
        assert_eq!(
            names("api.ns", 5),
            ["api.ns.ns.svc.test.", "api.ns.svc.test.", "api.ns."]
        );
        assert_eq!(names("api.", 5), ["api."]);
        assert_eq!(
            names("api.svc.test", 5),
            [
                "api.svc.test.ns.svc.test.",
                "api.svc.test.svc.test.",
                "api.svc.test."
            ]
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in ["", ".", "a..b", "spa ce", "sl/ash", "ünï", "a\\065"] {
            let err = candidates(bad, &[], 1).unwrap_err();
            assert!(
                matches!(err, DnsError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        let long_label = "a".repeat(64);
        assert!(candidates(&long_label, &[], 1).is_err());
        let long_name = ["a".repeat(63).as_str(); 4].join(".");
        assert!(candidates(&long_name, &[], 1).is_err());
        // A search domain that makes the name too long is skipped.
        let near = ["a".repeat(63).as_str(); 3].join(".");
        let names = candidates(&near, &["b".repeat(63)], 5).unwrap();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn ip_literals_need_no_query() {
        let r = DnsResolver::new(DnsConfig::default());
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let res = rt.block_on(r.resolve("[2001:db8::1]")).unwrap();
        assert_eq!(res.addrs, vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(res.ttl, Duration::from_secs(300));
        assert!(matches!(
            rt.block_on(r.resolve("web.test")),
            Err(DnsError::NoServers)
        ));
    }

    proptest! {
        #[test]
        fn resolv_conf_parser_never_panics(text in "\\PC*(\n\\PC*){0,8}") {
            let cfg = DnsConfig::from_resolv_conf(&text);
            prop_assert!(!cfg.servers.is_empty() && cfg.servers.len() <= MAX_NAMESERVERS);
        }

        /// Corrupts a realistic answer (CNAME chain, addresses, SOA) byte by
        /// byte and cuts it short: whatever still decodes must be handled.
        #[test]
        fn any_datagram_is_handled_without_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
            let q = name("www.test.");
            let mut msg = response("www.test.", RecordType::A, ResponseCode::NoError);
            msg.add_answer(cname("www.test.", 60, "edge.test."))
                .add_answer(a("edge.test.", 30, [192, 0, 2, 1]))
                .add_name_server(soa("test.", 60, 30));
            let mut bytes = msg.to_vec().unwrap();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok(msg) = Message::from_vec(&bytes) {
                let _ = answers_query(&msg, msg.id(), &q, RecordType::A);
                let _ = interpret(&msg, server, &q, RecordType::A);
                let _ = interpret(&msg, server, &q, RecordType::AAAA);
            }
        }

        #[test]
        fn candidates_never_panic(host in "[a-z0-9._\\-]{0,300}", ndots in 0usize..6) {
            let _ = candidates(&host, &["svc.test".to_string()], ndots);
        }
    }
}
