//! Tap's request matching (`io.linkerd.proxy.tap.Tap/Observe`): an
//! `ObserveRequest` checked and compiled, on the control core, into a
//! [`Tap`] that workers evaluate per request while it is installed.
//!
//! What a match can say, as the proto defines it: `all` / `any` / `not`;
//! the source or destination address (a netmask, or a port range); a
//! destination or route label; the HTTP scheme, method, authority or path
//! (exact or prefix). A request is described to it by [`TapRequest`].
//!
//! Refused (the client gets `INVALID_ARGUMENT` with the reason): a
//! missing match or an empty one (no field set, `all`/`any` of nothing),
//! nesting deeper than [`MAX_DEPTH`] or more than [`MAX_NODES`] parts, a
//! limit of 0 or above [`MAX_LIMIT`], a netmask longer than its address, a
//! port range outside 0..=65535 or upside down, a method or scheme that is
//! not one.

use std::net::{IpAddr, SocketAddr};

use linkerd2_proxy_api::tap::observe_request::{self, r#match};
use linkerd2_proxy_api::tap::ObserveRequest;

/// Most requests one tap may ask for.
pub const MAX_LIMIT: u32 = 10_000_000;
/// Deepest nesting of `all` / `any` / `not`.
pub const MAX_DEPTH: usize = 16;
/// Most parts in one match.
pub const MAX_NODES: usize = 256;

/// Why an `ObserveRequest` is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTap {
    #[error("the request has no match")]
    NoMatch,
    #[error("a match has no condition (a field missing, or all/any of nothing)")]
    Empty,
    #[error("limit must be between 1 and {MAX_LIMIT}, not {0}")]
    Limit(u32),
    #[error("the match nests deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("the match has more than {MAX_NODES} parts")]
    TooLarge,
    #[error("invalid netmask: {0}")]
    Netmask(String),
    #[error("invalid port range {0}..={1}")]
    Ports(u32, u32),
    #[error("invalid HTTP method")]
    Method,
    #[error("invalid scheme")]
    Scheme,
}

/// One request as tap matching sees it (the destination is the endpoint
/// chosen for it, or the local application inbound).
pub struct TapRequest<'a> {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// The destination's labels (`dst_*` without the prefix: `service`,
    /// `namespace`, `pod` …).
    pub dst_labels: &'a [(String, String)],
    /// The route's labels (`route`: the route's name).
    pub route_labels: &'a [(&'a str, &'a str)],
}

/// What a request's head says, before its destination is known.
pub struct HeadRequest<'a> {
    pub source: SocketAddr,
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
}

/// A compiled `ObserveRequest`.
#[derive(Clone, Debug)]
pub struct Tap {
    pub matcher: Match,
    /// How many requests it wants (then its stream ends).
    pub limit: u32,
    /// Whether events carry the request's and response's headers.
    pub headers: bool,
}

impl Tap {
    /// Checks and compiles a request.
    pub fn new(req: &ObserveRequest) -> Result<Self, InvalidTap> {
        if req.limit == 0 || req.limit > MAX_LIMIT {
            return Err(InvalidTap::Limit(req.limit));
        }
        let m = req.r#match.as_ref().ok_or(InvalidTap::NoMatch)?;
        let mut nodes = 0;
        let matcher = Match::compile(m, 0, &mut nodes)?;
        let headers = matches!(
            req.extract.as_ref().and_then(|e| e.extract.as_ref()),
            Some(observe_request::extract::Extract::Http(h))
                if matches!(h.extract, Some(observe_request::extract::http::Extract::Headers(_)))
        );
        Ok(Self {
            matcher,
            limit: req.limit,
            headers,
        })
    }
}

/// A request condition.
#[derive(Clone, Debug)]
pub enum Match {
    All(Vec<Match>),
    Any(Vec<Match>),
    Not(Box<Match>),
    Source(TcpMatch),
    Destination(TcpMatch),
    DestinationLabel(String, String),
    RouteLabel(String, String),
    Scheme(String),
    /// Uppercase.
    Method(String),
    Authority(StringMatch),
    Path(StringMatch),
}

#[derive(Clone, Debug)]
pub enum TcpMatch {
    Net(ipnet::IpNet),
    Ports(u16, u16),
}

#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
}

impl StringMatch {
    fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(e) => s == e,
            Self::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

impl TcpMatch {
    fn compile(t: &r#match::Tcp) -> Result<Self, InvalidTap> {
        use r#match::tcp::Match as T;
        match t.r#match.as_ref().ok_or(InvalidTap::Empty)? {
            T::Netmask(n) => {
                let ip =
                    n.ip.and_then(|ip| IpAddr::try_from(ip).ok())
                        .ok_or_else(|| InvalidTap::Netmask("no address".into()))?;
                let len = u8::try_from(n.mask)
                    .map_err(|_| InvalidTap::Netmask(format!("mask {}", n.mask)))?;
                let net = ipnet::IpNet::new(ip, len)
                    .map_err(|_| InvalidTap::Netmask(format!("{ip}/{}", n.mask)))?;
                Ok(Self::Net(net.trunc()))
            }
            T::Ports(p) => {
                // A range without a maximum is its minimum alone.
                let max = if p.max == 0 { p.min } else { p.max };
                match (u16::try_from(p.min), u16::try_from(max)) {
                    (Ok(lo), Ok(hi)) if lo <= hi => Ok(Self::Ports(lo, hi)),
                    _ => Err(InvalidTap::Ports(p.min, p.max)),
                }
            }
        }
    }

    fn matches(&self, addr: SocketAddr) -> bool {
        match self {
            Self::Net(net) => net.contains(&addr.ip()),
            Self::Ports(lo, hi) => (*lo..=*hi).contains(&addr.port()),
        }
    }
}

fn string_match(s: &r#match::http::StringMatch) -> Result<StringMatch, InvalidTap> {
    use r#match::http::string_match::Match as S;
    match s.r#match.as_ref().ok_or(InvalidTap::Empty)? {
        S::Exact(e) => Ok(StringMatch::Exact(e.clone())),
        S::Prefix(p) => Ok(StringMatch::Prefix(p.clone())),
    }
}

impl Match {
    fn compile(
        m: &observe_request::Match,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Self, InvalidTap> {
        use r#match::Match as M;
        if depth > MAX_DEPTH {
            return Err(InvalidTap::TooDeep);
        }
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(InvalidTap::TooLarge);
        }
        let seq = |s: &r#match::Seq, nodes: &mut usize| -> Result<Vec<Match>, InvalidTap> {
            if s.matches.is_empty() {
                return Err(InvalidTap::Empty);
            }
            s.matches
                .iter()
                .map(|m| Match::compile(m, depth + 1, nodes))
                .collect()
        };
        Ok(match m.r#match.as_ref().ok_or(InvalidTap::Empty)? {
            M::All(s) => Self::All(seq(s, nodes)?),
            M::Any(s) => Self::Any(seq(s, nodes)?),
            M::Not(inner) => Self::Not(Box::new(Self::compile(inner, depth + 1, nodes)?)),
            M::Source(t) => Self::Source(TcpMatch::compile(t)?),
            M::Destination(t) => Self::Destination(TcpMatch::compile(t)?),
            M::DestinationLabel(l) => Self::DestinationLabel(l.key.clone(), l.value.clone()),
            M::RouteLabel(l) => Self::RouteLabel(l.key.clone(), l.value.clone()),
            M::Http(h) => {
                use r#match::http::Match as H;
                match h.r#match.as_ref().ok_or(InvalidTap::Empty)? {
                    H::Scheme(s) => {
                        let scheme = http::uri::Scheme::try_from(s.clone())
                            .map_err(|_| InvalidTap::Scheme)?;
                        Self::Scheme(scheme.as_str().to_ascii_lowercase())
                    }
                    H::Method(m) => {
                        let method =
                            http::Method::try_from(m.clone()).map_err(|_| InvalidTap::Method)?;
                        Self::Method(method.as_str().to_ascii_uppercase())
                    }
                    H::Authority(s) => Self::Authority(string_match(s)?),
                    H::Path(s) => Self::Path(string_match(s)?),
                }
            }
        })
    }

    /// Whether a request could match, from its head alone (before its
    /// destination is known): `Some(false)` when it cannot whatever its
    /// destination, `Some(true)` when it does whatever its destination,
    /// `None` when that decides.
    pub fn matches_head(&self, head: &HeadRequest<'_>) -> Option<bool> {
        match self {
            Self::All(ms) => {
                let mut known = Some(true);
                for m in ms {
                    match m.matches_head(head) {
                        Some(false) => return Some(false),
                        Some(true) => {}
                        None => known = None,
                    }
                }
                known
            }
            Self::Any(ms) => {
                let mut known = Some(false);
                for m in ms {
                    match m.matches_head(head) {
                        Some(true) => return Some(true),
                        Some(false) => {}
                        None => known = None,
                    }
                }
                known
            }
            Self::Not(m) => m.matches_head(head).map(|b| !b),
            Self::Destination(_) | Self::DestinationLabel(..) | Self::RouteLabel(..) => None,
            Self::Source(t) => Some(t.matches(head.source)),
            Self::Scheme(s) => Some(head.scheme.eq_ignore_ascii_case(s)),
            Self::Method(m) => Some(head.method.eq_ignore_ascii_case(m)),
            Self::Authority(s) => Some(s.matches(head.authority)),
            Self::Path(s) => Some(s.matches(head.path)),
        }
    }

    /// Whether `req` is one the tap wants.
    pub fn matches(&self, req: &TapRequest<'_>) -> bool {
        match self {
            Self::All(ms) => ms.iter().all(|m| m.matches(req)),
            Self::Any(ms) => ms.iter().any(|m| m.matches(req)),
            Self::Not(m) => !m.matches(req),
            Self::Source(t) => t.matches(req.source),
            Self::Destination(t) => t.matches(req.destination),
            Self::DestinationLabel(k, v) => {
                req.dst_labels.iter().any(|(lk, lv)| lk == k && lv == v)
            }
            Self::RouteLabel(k, v) => req.route_labels.iter().any(|(lk, lv)| lk == k && lv == v),
            Self::Scheme(s) => req.scheme.eq_ignore_ascii_case(s),
            Self::Method(m) => req.method.eq_ignore_ascii_case(m),
            Self::Authority(s) => s.matches(req.authority),
            Self::Path(s) => s.matches(req.path),
        }
    }
}

/// Events one worker may have waiting for one tap; beyond it they are
/// dropped and counted (a slow tap client never slows a request).
pub(crate) const QUEUE_CAPACITY: usize = 4096;

/// A tap while it is installed: its match, the requests it may still
/// take, and one bounded queue per worker to the control core.
pub(crate) struct Installed {
    pub(crate) tap: Tap,
    remaining: std::sync::atomic::AtomicU32,
    /// Requests it saw that have ended (their events queued or dropped).
    finished: std::sync::atomic::AtomicU32,
    queues: Vec<ringmesh_discovery::events::EventSender<TapMsg>>,
}

impl Installed {
    pub(crate) fn new(
        tap: Tap,
        queues: Vec<ringmesh_discovery::events::EventSender<TapMsg>>,
    ) -> Self {
        Self {
            remaining: std::sync::atomic::AtomicU32::new(tap.limit),
            finished: std::sync::atomic::AtomicU32::new(0),
            tap,
            queues,
        }
    }

    /// Requests it saw that have ended.
    pub(crate) fn finished(&self) -> u32 {
        self.finished.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes one of the requests the tap may still see.
    fn claim(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Queues an event from `worker` (dropped and counted when full).
    fn send(&self, worker: usize, msg: TapMsg) {
        if let Some(q) = self.queues.get(worker) {
            let _ = q.send(msg);
        }
    }
}

/// The taps installed now, as workers see them (published by the tap
/// server on the control core).
#[derive(Default)]
pub(crate) struct TapSet {
    pub(crate) taps: Vec<std::sync::Arc<Installed>>,
}

impl ringmesh_discovery::channel::Published for TapSet {}

impl TapSet {
    /// Whether some tap may want a request with this head (one whose
    /// match cannot be true, or whose limit is used up, does not).
    pub(crate) fn may_want(&self, source: SocketAddr, head: &dyn TapHead) -> bool {
        let h = HeadRequest {
            source,
            method: head.method(),
            scheme: "http",
            authority: head.authority(),
            path: head.path(),
        };
        self.taps.iter().any(|t| {
            t.remaining.load(std::sync::atomic::Ordering::Relaxed) > 0
                && t.tap.matcher.matches_head(&h) != Some(false)
        })
    }
}

/// A worker's view of the installed taps, and its request numbers.
pub(crate) struct WorkerTaps {
    cache: std::cell::RefCell<ringmesh_discovery::channel::Cache<TapSet>>,
    next: std::cell::Cell<u64>,
}

impl WorkerTaps {
    pub(crate) fn new(cache: ringmesh_discovery::channel::Cache<TapSet>) -> Self {
        Self {
            cache: std::cell::RefCell::new(cache),
            next: std::cell::Cell::new(0),
        }
    }

    /// The installed taps, if any (one atomic load when nothing changed).
    pub(crate) fn active(&self) -> Option<std::sync::Arc<TapSet>> {
        let mut c = self.cache.borrow_mut();
        c.refresh();
        let set = c.get();
        (!set.taps.is_empty()).then(|| set.clone())
    }

    /// The next request's id on worker `worker`.
    pub(crate) fn next_id(&self, worker: usize) -> StreamId {
        let n = self.next.get() + 1;
        self.next.set(n);
        (u32::try_from(worker).unwrap_or(u32::MAX), n)
    }
}

/// A request's id in tap events: the worker, and the request's number on
/// it.
pub(crate) type StreamId = (u32, u64);

/// What a worker tells a tap.
pub(crate) enum TapMsg {
    Request(StreamId, Box<RequestMeta>),
    /// The response's head arrived `since_request` after the request was
    /// seen (its fields when the tap extracts them).
    Response {
        id: StreamId,
        status: u16,
        since_request: std::time::Duration,
        headers: Option<Box<Fields>>,
    },
    /// The request ended `since_request_end` after it was seen, its
    /// response's body `bytes` long. `status`: the response's when no head
    /// was announced (the proxy's own answer; 0: none at all).
    End {
        id: StreamId,
        status: u16,
        since_request: std::time::Duration,
        since_request_end: std::time::Duration,
        bytes: u64,
        eos: TapEos,
        /// Its trailers, for a tap that extracts fields.
        trailers: Option<Box<Fields>>,
    },
}

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

/// Header fields as tap events carry them (lowercase names).
pub(crate) type Fields = Vec<(String, Vec<u8>)>;

/// An HTTP/1 message's fields, names lowercased.
pub(crate) fn h1_fields(h: ringmesh_protocols::http1::Headers<'_>) -> Fields {
    h.iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
        .collect()
}

/// An HTTP/2 message's fields.
pub(crate) fn h2_fields(h: &http::HeaderMap) -> Fields {
    h.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// A tapped request's description.
pub(crate) struct RequestMeta {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
    pub(crate) inbound: bool,
    pub(crate) method: String,
    pub(crate) scheme: &'static str,
    pub(crate) authority: String,
    pub(crate) path: String,
    /// Only when the tap asked for them.
    pub(crate) headers: Option<Vec<(String, Vec<u8>)>>,
    pub(crate) dst_labels: Option<std::sync::Arc<[(String, String)]>>,
    pub(crate) route: Option<std::sync::Arc<str>>,
    /// The client's identity (inbound, mutual TLS), or the server's
    /// (outbound, mutual TLS).
    pub(crate) client_id: Option<std::sync::Arc<str>>,
    pub(crate) server_id: Option<std::sync::Arc<str>>,
}

/// A request's head as tap sees it (either HTTP version).
pub(crate) trait TapHead {
    fn method(&self) -> &str;
    fn authority(&self) -> &str;
    fn path(&self) -> &str;
    fn headers(&self) -> Fields;
}

/// Most taps a request is matched against (bits of `Pending::matched`).
pub(crate) const MAX_MATCHED: usize = 128;

/// The taps of `set` whose bit is set in `mask`.
fn matched(set: &TapSet, mask: u128) -> impl Iterator<Item = &Installed> {
    let on = move |i: usize| i < MAX_MATCHED && mask >> i & 1 == 1;
    set.taps
        .iter()
        .enumerate()
        .filter(move |(i, _)| on(*i))
        .map(|(_, t)| &**t)
}

/// A request some tap may want, known from its head; matched once its
/// destination is known.
pub(crate) struct Pending {
    taps: std::sync::Arc<TapSet>,
    source: SocketAddr,
    method: String,
    authority: String,
    path: String,
    headers: Option<Fields>,
    /// Matched and claimed: the taps that see this request.
    /// (Bit `i`: `taps.taps[i]`; no allocation per request.)
    matched: u128,
    id: StreamId,
    /// The worker it runs on (its queue, once matched).
    worker: usize,
    seen: std::time::Instant,
    response_at: std::cell::Cell<Option<std::time::Instant>>,
    /// Bytes of the response's body relayed so far.
    bytes: std::cell::Cell<u64>,
    /// The response's stream was reset with this code.
    reset: std::cell::Cell<Option<u32>>,
    /// The response's trailers, when a tap extracts fields.
    trailers: std::cell::RefCell<Option<Box<Fields>>>,
    decided: bool,
}

impl Pending {
    pub(crate) fn new(
        taps: std::sync::Arc<TapSet>,
        source: SocketAddr,
        head: &dyn TapHead,
        id: StreamId,
    ) -> Self {
        let headers = taps
            .taps
            .iter()
            .any(|t| t.tap.headers)
            .then(|| head.headers());
        Self {
            taps,
            source,
            method: head.method().to_string(),
            authority: head.authority().to_string(),
            path: head.path().to_string(),
            headers,
            matched: 0,
            id,
            worker: id.0 as usize,
            seen: std::time::Instant::now(),
            response_at: std::cell::Cell::new(None),
            bytes: std::cell::Cell::new(0),
            reset: std::cell::Cell::new(None),
            trailers: std::cell::RefCell::new(None),
            decided: false,
        }
    }

    /// The request's destination is known: the taps that match it (and
    /// still want requests) get its `RequestInit`. `false`: none does.
    /// (Nothing is copied unless a tap matches; with one, the head's
    /// strings move into its event.)
    pub(crate) fn decide(
        &mut self,
        destination: SocketAddr,
        inbound: bool,
        dst_labels: Option<&std::sync::Arc<[(String, String)]>>,
        route: Option<&std::sync::Arc<str>>,
        tls: &ringmesh_admin::telemetry::TlsStatus,
    ) -> bool {
        use ringmesh_admin::telemetry::TlsStatus;
        if self.decided {
            return self.matched != 0;
        }
        self.decided = true;
        let route_pair = route.map(|r| ("route", &**r));
        let req = TapRequest {
            source: self.source,
            destination,
            method: &self.method,
            scheme: "http",
            authority: &self.authority,
            path: &self.path,
            dst_labels: dst_labels.map_or(&[], |l| &l[..]),
            route_labels: route_pair.as_slice(),
        };
        // (At most `MAX_MATCHED` taps are looked at; the tap server
        // installs fewer.)
        for (i, t) in self.taps.taps.iter().take(MAX_MATCHED).enumerate() {
            if t.tap.matcher.matches(&req) && t.claim() {
                self.matched |= 1 << i;
            }
        }
        let (client_id, server_id) = match tls {
            TlsStatus::Accepted { client_id } => (client_id.clone(), None),
            TlsStatus::Connected { server_id } => (None, Some(server_id.clone())),
            _ => (None, None),
        };
        let n = self.matched.count_ones() as usize;
        for (i, t) in matched(&self.taps, self.matched).enumerate() {
            // The last tap takes the strings; others get copies.
            let take = |s: &mut String| {
                if i + 1 == n {
                    std::mem::take(s)
                } else {
                    s.clone()
                }
            };
            let meta = RequestMeta {
                source: self.source,
                destination,
                inbound,
                method: take(&mut self.method),
                scheme: "http",
                authority: take(&mut self.authority),
                path: take(&mut self.path),
                headers: if t.tap.headers {
                    self.headers.clone()
                } else {
                    None
                },
                dst_labels: dst_labels.cloned(),
                route: route.cloned(),
                client_id: client_id.clone(),
                server_id: server_id.clone(),
            };
            t.send(self.worker, TapMsg::Request(self.id, Box::new(meta)));
        }
        n > 0
    }

    /// Whether the taps that see it were chosen (its destination known).
    pub(crate) fn is_decided(&self) -> bool {
        self.decided
    }

    /// The taps that see this request.
    fn taps(&self) -> impl Iterator<Item = &Installed> {
        matched(&self.taps, self.matched)
    }

    /// The response's head arrived with `status`: the taps see it (its
    /// fields, from `fields`, only those that extract them).
    pub(crate) fn response(&self, status: u16, fields: impl FnOnce() -> Fields) {
        let now = std::time::Instant::now();
        if self.response_at.get().is_some() {
            return;
        }
        self.response_at.set(Some(now));
        let since_request = now.saturating_duration_since(self.seen);
        let want = self.taps().any(|t| t.tap.headers);
        let fields = want.then(|| Box::new(fields()));
        for t in self.taps() {
            t.send(
                self.worker,
                TapMsg::Response {
                    id: self.id,
                    status,
                    since_request,
                    headers: fields.clone().filter(|_| t.tap.headers),
                },
            );
        }
    }

    /// `n` more bytes of the response's body went to the client.
    pub(crate) fn data(&self, n: usize) {
        self.bytes.set(self.bytes.get() + n as u64);
    }

    /// The response ended with trailers: kept for the taps that extract
    /// fields.
    pub(crate) fn trailers(&self, fields: impl FnOnce() -> Fields) {
        if self.taps().any(|t| t.tap.headers) {
            *self.trailers.borrow_mut() = Some(Box::new(fields()));
        }
    }

    /// The response's stream was reset with `code` (the client sees it
    /// cut short).
    pub(crate) fn reset(&self, code: u32) {
        self.reset.set(Some(code));
    }

    /// The request ended with `status` (0: no response) and, for gRPC,
    /// `grpc_status`.
    pub(crate) fn end(self, status: u16, grpc_status: Option<u32>) {
        let now = std::time::Instant::now();
        let head = self.response_at.get().unwrap_or(now);
        let eos = match (self.reset.get(), grpc_status) {
            (Some(code), _) => TapEos::Reset(code),
            (None, Some(g)) => TapEos::Grpc(g),
            (None, None) => TapEos::None,
        };
        // The head was announced already: its status is not repeated.
        let status = if self.response_at.get().is_some() {
            0
        } else {
            status
        };
        let trailers = self.trailers.take();
        for t in self.taps() {
            t.finished.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            t.send(
                self.worker,
                TapMsg::End {
                    id: self.id,
                    status,
                    since_request: head.saturating_duration_since(self.seen),
                    since_request_end: now.saturating_duration_since(self.seen),
                    bytes: self.bytes.get(),
                    eos,
                    trailers: trailers.clone().filter(|_| t.tap.headers),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::http_types::{http_method, scheme, HttpMethod, Scheme};
    use linkerd2_proxy_api::tap::observe_request::r#match::{
        http as mh, tcp, Http, Label, Seq, Tcp,
    };
    use linkerd2_proxy_api::tap::observe_request::Match as PbMatch;

    fn m(x: r#match::Match) -> PbMatch {
        PbMatch { r#match: Some(x) }
    }
    fn all(ms: Vec<PbMatch>) -> PbMatch {
        m(r#match::Match::All(Seq { matches: ms }))
    }
    fn any(ms: Vec<PbMatch>) -> PbMatch {
        m(r#match::Match::Any(Seq { matches: ms }))
    }
    fn not(x: PbMatch) -> PbMatch {
        m(r#match::Match::Not(Box::new(x)))
    }
    fn http(x: mh::Match) -> PbMatch {
        m(r#match::Match::Http(Http { r#match: Some(x) }))
    }
    fn path_prefix(p: &str) -> PbMatch {
        http(mh::Match::Path(mh::StringMatch {
            r#match: Some(mh::string_match::Match::Prefix(p.into())),
        }))
    }
    fn authority(a: &str) -> PbMatch {
        http(mh::Match::Authority(mh::StringMatch {
            r#match: Some(mh::string_match::Match::Exact(a.into())),
        }))
    }
    fn method(x: http_method::Registered) -> PbMatch {
        http(mh::Match::Method(HttpMethod {
            r#type: Some(http_method::Type::Registered(x.into())),
        }))
    }
    fn dst_ports(min: u32, max: u32) -> PbMatch {
        m(r#match::Match::Destination(Tcp {
            r#match: Some(tcp::Match::Ports(tcp::PortRange { min, max })),
        }))
    }
    fn src_net(ip: &str, mask: u32) -> PbMatch {
        let ip: IpAddr = ip.parse().unwrap();
        m(r#match::Match::Source(Tcp {
            r#match: Some(tcp::Match::Netmask(tcp::Netmask {
                ip: Some(ip.into()),
                mask,
            })),
        }))
    }
    fn tap(x: PbMatch, limit: u32) -> Result<Tap, InvalidTap> {
        Tap::new(&ObserveRequest {
            limit,
            r#match: Some(x),
            extract: None,
        })
    }

    fn req<'a>(method: &'a str, path: &'a str, labels: &'a [(String, String)]) -> TapRequest<'a> {
        TapRequest {
            source: "10.1.2.3:40000".parse().unwrap(),
            destination: "10.9.9.9:8080".parse().unwrap(),
            method,
            scheme: "http",
            authority: "web.ns.svc.cluster.local:8080",
            path,
            dst_labels: labels,
            route_labels: &[("route", "slow")],
        }
    }

    #[test]
    fn matches_as_the_proto_says() {
        let labels = vec![("service".to_string(), "web".to_string())];
        let t = tap(
            all(vec![
                path_prefix("/api"),
                method(http_method::Registered::Get),
                authority("web.ns.svc.cluster.local:8080"),
                dst_ports(8000, 8999),
                src_net("10.1.0.0", 16),
                m(r#match::Match::DestinationLabel(Label {
                    key: "service".into(),
                    value: "web".into(),
                })),
                m(r#match::Match::RouteLabel(Label {
                    key: "route".into(),
                    value: "slow".into(),
                })),
                not(path_prefix("/api/private")),
                http(mh::Match::Scheme(Scheme {
                    r#type: Some(scheme::Type::Registered(scheme::Registered::Http.into())),
                })),
            ]),
            10,
        )
        .unwrap();
        assert!(t.matcher.matches(&req("GET", "/api/x", &labels)));
        assert!(!t.matcher.matches(&req("POST", "/api/x", &labels)));
        assert!(!t.matcher.matches(&req("GET", "/apx", &labels)));
        assert!(!t.matcher.matches(&req("GET", "/api/private/1", &labels)));
        assert!(!t.matcher.matches(&req("GET", "/api/x", &[])));
        let other = tap(any(vec![path_prefix("/a"), dst_ports(80, 0)]), 1).unwrap();
        assert!(!other.matcher.matches(&req("GET", "/b/a", &labels)));
        assert!(other.matcher.matches(&req("GET", "/a", &labels)));
        // A port range without a maximum is its minimum.
        let one = tap(dst_ports(8080, 0), 1).unwrap();
        assert!(one.matcher.matches(&req("GET", "/", &labels)));
        assert!(!t.headers && !one.headers);
    }

    /// A request's head alone rules a tap out, in, or leaves it to the
    /// destination; a request ruled out by every tap is never copied.
    #[test]
    fn a_head_alone_decides_what_it_can() {
        let head = |path| HeadRequest {
            source: "10.1.2.3:40000".parse().unwrap(),
            method: "GET",
            scheme: "http",
            authority: "web.ns.svc.cluster.local:8080",
            path,
        };
        let by_path = tap(path_prefix("/api"), 1).unwrap().matcher;
        assert_eq!(by_path.matches_head(&head("/api/x")), Some(true));
        assert_eq!(by_path.matches_head(&head("/other")), Some(false));
        let with_dst = tap(all(vec![path_prefix("/api"), dst_ports(80, 0)]), 1)
            .unwrap()
            .matcher;
        assert_eq!(with_dst.matches_head(&head("/api/x")), None);
        assert_eq!(with_dst.matches_head(&head("/other")), Some(false));
        let either = tap(any(vec![path_prefix("/api"), dst_ports(80, 0)]), 1)
            .unwrap()
            .matcher;
        assert_eq!(either.matches_head(&head("/api/x")), Some(true));
        assert_eq!(either.matches_head(&head("/other")), None);
        let negated = tap(not(with_dst_only()), 1).unwrap().matcher;
        assert_eq!(negated.matches_head(&head("/")), None);
        let not_path = tap(not(path_prefix("/api")), 1).unwrap().matcher;
        assert_eq!(not_path.matches_head(&head("/api/x")), Some(false));
        let from = tap(src_net("10.2.0.0", 16), 1).unwrap().matcher;
        assert_eq!(from.matches_head(&head("/")), Some(false));
    }

    fn with_dst_only() -> PbMatch {
        dst_ports(8080, 0)
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert_eq!(tap(path_prefix("/"), 0).unwrap_err(), InvalidTap::Limit(0));
        assert_eq!(
            tap(path_prefix("/"), MAX_LIMIT + 1).unwrap_err(),
            InvalidTap::Limit(MAX_LIMIT + 1)
        );
        let none = ObserveRequest {
            limit: 1,
            r#match: None,
            extract: None,
        };
        assert_eq!(Tap::new(&none).unwrap_err(), InvalidTap::NoMatch);
        assert_eq!(tap(PbMatch::default(), 1).unwrap_err(), InvalidTap::Empty);
        assert_eq!(tap(all(vec![]), 1).unwrap_err(), InvalidTap::Empty);
        assert_eq!(
            tap(any(vec![PbMatch::default()]), 1).unwrap_err(),
            InvalidTap::Empty
        );
        assert!(matches!(
            tap(src_net("10.0.0.0", 33), 1),
            Err(InvalidTap::Netmask(_))
        ));
        assert!(matches!(
            tap(src_net("::1", 129), 1),
            Err(InvalidTap::Netmask(_))
        ));
        assert_eq!(
            tap(dst_ports(90, 80), 1).unwrap_err(),
            InvalidTap::Ports(90, 80)
        );
        assert_eq!(
            tap(dst_ports(1, 70_000), 1).unwrap_err(),
            InvalidTap::Ports(1, 70_000)
        );
        let bad_method = http(mh::Match::Method(HttpMethod {
            r#type: Some(http_method::Type::Unregistered("BAD METHOD".into())),
        }));
        assert_eq!(tap(bad_method, 1).unwrap_err(), InvalidTap::Method);
        // Deep nesting of `not`, and too many parts.
        let mut deep = path_prefix("/");
        for _ in 0..=MAX_DEPTH {
            deep = not(deep);
        }
        assert_eq!(tap(deep, 1).unwrap_err(), InvalidTap::TooDeep);
        let wide = any((0..=MAX_NODES).map(|_| path_prefix("/")).collect());
        assert_eq!(tap(wide, 1).unwrap_err(), InvalidTap::TooLarge);
    }
}
