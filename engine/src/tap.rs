//! Tap's request matching (`io.linkerd.proxy.tap.Tap/Observe`): an
//! `ObserveRequest` checked and compiled, on the control core, into a
//! [`Tap`] that workers evaluate per request while it is installed.
//!
//! What a match can say, as the proto defines it: `all` / `any` / `not`;
//! the source or destination address (a netmask, or a port range); a
//! destination or route label; the HTTP scheme, method, authority or path
//! (exact or prefix). A request is described to it by [`TapRequest`].
//!
//! Refused, as linkerd2-proxy refuses them (the client gets
//! `INVALID_ARGUMENT` with the reason): a missing match or an empty one (no
//! field set; an `all` or `any` entry with nothing set is skipped instead,
//! and `all` of nothing matches everything), a label with an empty key or
//! value, a netmask of 0 or longer than its address, a port range of
//! nothing, outside 0..=65535 or upside down, a method or scheme that is
//! not one; and, of ringmesh's own, nesting deeper than [`MAX_DEPTH`] or
//! more than [`MAX_NODES`] parts, a limit of 0 or above [`MAX_LIMIT`].
//!
//! A request's path is matched and reported without its query, as
//! linkerd2-proxy's (`uri.path()`); its scheme is the one its URI names
//! (HTTP/2's `:scheme`), else `http`.

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
    #[error("a match has no condition (a field missing or empty)")]
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
                // (A mask of 0 is no mask, as linkerd2-proxy reads it.)
                let len = match u8::try_from(n.mask) {
                    Ok(0) => return Err(InvalidTap::Empty),
                    Ok(len) => len,
                    Err(_) => return Err(InvalidTap::Netmask(format!("mask {}", n.mask))),
                };
                let net = ipnet::IpNet::new(ip, len)
                    .map_err(|_| InvalidTap::Netmask(format!("{ip}/{}", n.mask)))?;
                Ok(Self::Net(net.trunc()))
            }
            T::Ports(p) => {
                // As linkerd2-proxy's: a range without a minimum or a
                // maximum is the other alone; without either, nothing.
                let min = if p.min == 0 { p.max } else { p.min };
                let max = if p.max == 0 { p.min } else { p.max };
                match (u16::try_from(min), u16::try_from(max)) {
                    _ if min == 0 => Err(InvalidTap::Empty),
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

/// A label to match: its key and value, neither empty (as
/// linkerd2-proxy's).
fn label_match(l: &r#match::Label) -> Result<(String, String), InvalidTap> {
    if l.key.is_empty() || l.value.is_empty() {
        return Err(InvalidTap::Empty);
    }
    Ok((l.key.clone(), l.value.clone()))
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
        // As linkerd2-proxy's: entries with nothing set are skipped, and an
        // empty `all` matches every request (Linkerd's tap controller
        // sends `all` with no entry when nothing narrows the tap), an
        // empty `any` none.
        let seq = |s: &r#match::Seq, nodes: &mut usize| -> Result<Vec<Match>, InvalidTap> {
            s.matches
                .iter()
                .filter(|m| m.r#match.is_some())
                .map(|m| Match::compile(m, depth + 1, nodes))
                .collect()
        };
        Ok(match m.r#match.as_ref().ok_or(InvalidTap::Empty)? {
            M::All(s) => Self::All(seq(s, nodes)?),
            M::Any(s) => Self::Any(seq(s, nodes)?),
            M::Not(inner) => Self::Not(Box::new(Self::compile(inner, depth + 1, nodes)?)),
            M::Source(t) => Self::Source(TcpMatch::compile(t)?),
            M::Destination(t) => Self::Destination(TcpMatch::compile(t)?),
            M::DestinationLabel(l) => {
                let (k, v) = label_match(l)?;
                Self::DestinationLabel(k, v)
            }
            M::RouteLabel(l) => {
                let (k, v) = label_match(l)?;
                Self::RouteLabel(k, v)
            }
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

/// Bytes of events one worker may have waiting for one tap; beyond it
/// they are dropped and counted (a slow tap client never slows a request,
/// and, with header fields extracted, 64 KiB request heads do not make
/// each of thousands of queued events 64 KiB).
pub(crate) const QUEUE_BYTES: usize = 512 * 1024;

/// A worker hands a tap's events over once this many bytes are ready …
const HAND_OVER_BYTES: usize = 128 * 1024;
/// … or this long after the first of them (their delay, at most).
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// Encoded events from one worker for one tap: gRPC messages, ready to be
/// written to the tap's client as they are.
pub(crate) struct TapBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) events: u32,
}

/// A tap while it is installed: its match, the requests it may still
/// take, and one bounded queue per worker to the control core.
pub(crate) struct Installed {
    pub(crate) tap: Tap,
    remaining: std::sync::atomic::AtomicU32,
    /// Requests it saw that have ended (their events queued or dropped).
    finished: std::sync::atomic::AtomicU32,
    /// Events dropped because a worker's queue was full.
    dropped: std::sync::atomic::AtomicU64,
    /// The same, for every tap (`tap_events_dropped_total`, live).
    all_dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    queues: Vec<ringmesh_discovery::events::EventSender<TapBatch>>,
}

impl Installed {
    pub(crate) fn new(
        tap: Tap,
        queues: Vec<ringmesh_discovery::events::EventSender<TapBatch>>,
        all_dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self {
            remaining: std::sync::atomic::AtomicU32::new(tap.limit),
            finished: std::sync::atomic::AtomicU32::new(0),
            dropped: std::sync::atomic::AtomicU64::new(0),
            all_dropped,
            tap,
            queues,
        }
    }

    /// Requests it saw that have ended and whose events were handed over
    /// (queued or dropped).
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

    /// Events dropped because a worker's queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues `worker`'s events (dropped and counted when their bytes do
    /// not fit), then counts the requests whose last event they hold as
    /// finished: once the call sees `limit` finished, every event it will
    /// get is queued already.
    fn hand_over(&self, worker: usize, batch: TapBatch, ended: u32) {
        if let Some(q) = self.queues.get(worker) {
            let (bytes, events) = (batch.bytes.len(), batch.events);
            if let Err(ringmesh_discovery::events::SendError::Full(_)) = q.send_batch(batch, bytes)
            {
                self.dropped
                    .fetch_add(u64::from(events), std::sync::atomic::Ordering::Relaxed);
                self.all_dropped
                    .fetch_add(u64::from(events), std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.finished
            .fetch_add(ended, std::sync::atomic::Ordering::AcqRel);
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
            scheme: head.scheme(),
            authority: head.authority(),
            path: without_query(head.path()),
        };
        self.taps.iter().any(|t| {
            t.remaining.load(std::sync::atomic::Ordering::Relaxed) > 0
                && t.tap.matcher.matches_head(&h) != Some(false)
        })
    }
}

/// A worker's view of the installed taps, its request numbers, and its
/// events on their way out.
pub(crate) struct WorkerTaps {
    cache: std::cell::RefCell<ringmesh_discovery::channel::Cache<TapSet>>,
    next: std::cell::Cell<u64>,
    outbox: std::rc::Rc<Outbox>,
}

impl WorkerTaps {
    pub(crate) fn new(worker: usize, cache: ringmesh_discovery::channel::Cache<TapSet>) -> Self {
        Self {
            cache: std::cell::RefCell::new(cache),
            next: std::cell::Cell::new(0),
            outbox: std::rc::Rc::new(Outbox::new(worker)),
        }
    }

    /// The installed taps, if any (one atomic load when nothing changed).
    pub(crate) fn active(&self) -> Option<std::sync::Arc<TapSet>> {
        let mut c = self.cache.borrow_mut();
        c.refresh();
        let set = c.get();
        (!set.taps.is_empty()).then(|| set.clone())
    }

    /// Hands over every batch gathered now (the worker stops: its timer
    /// would not).
    pub(crate) fn flush(&self) {
        let all = std::mem::take(&mut *self.outbox.batches.borrow_mut());
        for b in all {
            self.outbox.hand_over(b);
        }
    }

    /// Whether any event was gathered since the last call (a tap that
    /// came and went between two looks at [`Self::active`] still counts).
    pub(crate) fn take_used(&self) -> bool {
        self.outbox.used.replace(false)
    }

    /// A request some tap of `taps` may want, from its head.
    pub(crate) fn pending(
        &self,
        taps: std::sync::Arc<TapSet>,
        source: SocketAddr,
        head: &dyn TapHead,
        seen: std::time::Instant,
    ) -> Pending {
        let n = self.next.get() + 1;
        self.next.set(n);
        let worker = self.outbox.worker;
        let id = (u32::try_from(worker).unwrap_or(u32::MAX), n);
        Pending::new(taps, self.outbox.clone(), source, head, id, seen)
    }
}

/// One tap's events gathered on a worker.
struct Batch {
    tap: std::sync::Arc<Installed>,
    bytes: Vec<u8>,
    events: u32,
    /// Requests whose last event it holds.
    ended: u32,
}

/// A worker's tap events on their way to the control core, encoded here
/// and gathered per tap: handed over when [`HAND_OVER_BYTES`] are ready,
/// or [`GATHER`] after the first. So the queue, its atomics and the
/// control core's wake-up are paid once per batch, not per event, and no
/// memory a worker allocates per request is freed by another thread.
pub(crate) struct Outbox {
    worker: usize,
    batches: std::cell::RefCell<Vec<Batch>>,
    /// A hand-over of everything gathered is scheduled.
    due: std::cell::Cell<bool>,
    /// Some event was put since [`WorkerTaps::take_used`] last looked.
    used: std::cell::Cell<bool>,
    /// States of tapped requests that ended, with their buffers, for the
    /// next ones (no allocation per tapped request once warm). (Kept
    /// boxed: a request's state moves in and out of here as a pointer.)
    #[allow(clippy::vec_box)]
    spare: std::cell::RefCell<Vec<Box<State>>>,
}

/// Spare states a worker keeps at most …
const SPARE_STATES: usize = 64;
/// … their buffers each at most this large (a long head's are freed).
const SPARE_BYTES: usize = 1024;

impl Outbox {
    fn new(worker: usize) -> Self {
        Self {
            worker,
            batches: std::cell::RefCell::default(),
            due: std::cell::Cell::new(false),
            used: std::cell::Cell::new(false),
            spare: std::cell::RefCell::default(),
        }
    }

    /// A new request's state: a spare one (its buffers emptied) when
    /// there is.
    fn state(&self, source: SocketAddr, id: StreamId, seen: std::time::Instant) -> Box<State> {
        let Some(mut s) = self.spare.borrow_mut().pop() else {
            return Box::new(State::new(
                source,
                id,
                seen,
                Vec::new(),
                String::new(),
                Vec::new(),
            ));
        };
        let (common, head) = (std::mem::take(&mut s.common), std::mem::take(&mut s.head));
        let h1_trailers = s.h1_trailers.take();
        *s = State::new(source, id, seen, common, head, h1_trailers);
        s
    }

    /// An ended request's state, kept for the next ones (its buffers
    /// emptied; those grown long are freed).
    fn recycle(&self, mut s: Box<State>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_STATES
            && s.head.capacity() <= SPARE_BYTES
            && s.common.capacity() <= SPARE_BYTES
            && s.h1_trailers.get_mut().capacity() <= SPARE_BYTES
        {
            s.head.clear();
            s.common.clear();
            s.h1_trailers.get_mut().clear();
            s.headers = None;
            *s.trailers.get_mut() = None;
            spare.push(s);
        }
    }

    /// Appends one event of a request (`common`: its common fields) for
    /// `tap`; `ends`: it is the request's last.
    fn put(
        self: &std::rc::Rc<Self>,
        tap: &std::sync::Arc<Installed>,
        common: &[u8],
        id: StreamId,
        ev: &crate::tap_wire::HttpEvent<'_>,
        ends: bool,
    ) {
        self.used.set(true);
        let mut batches = self.batches.borrow_mut();
        let i = match batches
            .iter()
            .position(|b| std::sync::Arc::ptr_eq(&b.tap, tap))
        {
            Some(i) => i,
            None => {
                batches.push(Batch {
                    tap: tap.clone(),
                    bytes: Vec::with_capacity(HAND_OVER_BYTES + 1024),
                    events: 0,
                    ended: 0,
                });
                batches.len() - 1
            }
        };
        let b = &mut batches[i];
        crate::tap_wire::put_event(&mut b.bytes, common, id, ev);
        b.events += 1;
        b.ended += u32::from(ends);
        if b.bytes.len() >= HAND_OVER_BYTES {
            let full = batches.swap_remove(i);
            drop(batches);
            self.hand_over(full);
            return;
        }
        drop(batches);
        if !self.due.replace(true) {
            let me = self.clone();
            monoio::spawn(async move {
                monoio::time::sleep(GATHER).await;
                me.due.set(false);
                let all = std::mem::take(&mut *me.batches.borrow_mut());
                for b in all {
                    me.hand_over(b);
                }
            });
        }
    }

    fn hand_over(&self, b: Batch) {
        let batch = TapBatch {
            bytes: b.bytes,
            events: b.events,
        };
        b.tap.hand_over(self.worker, batch, b.ended);
    }
}

pub(crate) use crate::tap_wire::{Fields, StreamId, TapEos};

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

/// An HTTP/2 message's pseudo-header fields, then its `fields`.
fn pseudo_fields<const N: usize>(pseudo: [(&str, &[u8]); N], fields: Fields) -> Fields {
    pseudo
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .chain(fields)
        .collect()
}

/// A chunked body's trailer field lines (`name: value` CRLF …, as the
/// chunked scanner validated them), names lowercased.
fn h1_trailer_fields(raw: &[u8]) -> Fields {
    ringmesh_protocols::http1::trailer_fields(raw)
        .filter_map(|(name, value)| {
            let name = std::str::from_utf8(name).ok()?;
            Some((name.to_ascii_lowercase(), value.to_vec()))
        })
        .collect()
}

/// A request's head as tap (and the access log) sees it (either HTTP
/// version).
pub(crate) trait TapHead {
    fn method(&self) -> &str;
    fn authority(&self) -> &str;
    /// Its path and query (tap takes the path alone).
    fn path(&self) -> &str;
    /// Its URI's scheme, `http` when it names none.
    fn scheme(&self) -> &str;
    fn headers(&self) -> Fields;
    /// One field's value (the first), by its lowercase name.
    fn field(&self, name: &str) -> Option<&[u8]>;
    /// `HTTP/1.1` and the like.
    fn version(&self) -> &'static str;
}

/// A request target's path without its query (tap matches and reports
/// the path alone, as linkerd2-proxy's `uri.path()`).
fn without_query(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// Most taps a request is matched against (bits of `Pending::matched`).
pub(crate) const MAX_MATCHED: usize = 128;

/// The taps of `set` whose bit is set in `mask`.
fn matched(set: &TapSet, mask: u128) -> impl Iterator<Item = &std::sync::Arc<Installed>> {
    let on = move |i: usize| i < MAX_MATCHED && mask >> i & 1 == 1;
    set.taps
        .iter()
        .enumerate()
        .filter(move |(i, _)| on(*i))
        .map(|(_, t)| t)
}

/// A request some tap may want, known from its head; matched once its
/// destination is known.
pub(crate) struct Pending {
    taps: std::sync::Arc<TapSet>,
    outbox: std::rc::Rc<Outbox>,
    /// (Boxed, so an untapped request's observer stays small; taken from
    /// and given back to the worker's spares.)
    s: Box<State>,
}

/// What a tapped request's events need, kept until it ends.
struct State {
    source: SocketAddr,
    /// Its common fields, encoded once matched.
    common: Vec<u8>,
    /// Its method, authority, path and scheme one after another (one
    /// copy).
    head: String,
    /// Where its authority, its path and its scheme start in `head`.
    head_at: (usize, usize, usize),
    /// It is an HTTP/2 request (extracted fields start with the
    /// pseudo-header fields, as linkerd2-proxy's).
    h2: bool,
    headers: Option<Fields>,
    /// Matched and claimed: the taps that see this request.
    /// (Bit `i`: `taps.taps[i]`; no allocation per request.)
    matched: u128,
    /// Some tap that sees it extracts header fields.
    fields: bool,
    id: StreamId,
    seen: std::time::Instant,
    response_at: std::cell::Cell<Option<std::time::Instant>>,
    /// Bytes of the response's body relayed so far.
    bytes: std::cell::Cell<u64>,
    /// The response's stream was reset with this code.
    reset: std::cell::Cell<Option<u32>>,
    /// The response's trailers, when a tap extracts fields.
    trailers: std::cell::RefCell<Option<Fields>>,
    /// An HTTP/1 chunked response's trailer lines as relayed, when a tap
    /// extracts fields (parsed at the end).
    h1_trailers: std::cell::RefCell<Vec<u8>>,
    decided: bool,
}

impl State {
    /// A new request's state, in the (empty) buffers given.
    fn new(
        source: SocketAddr,
        id: StreamId,
        seen: std::time::Instant,
        common: Vec<u8>,
        head: String,
        h1_trailers: Vec<u8>,
    ) -> Self {
        Self {
            source,
            common,
            head,
            head_at: (0, 0, 0),
            h2: false,
            headers: None,
            matched: 0,
            fields: false,
            id,
            seen,
            response_at: std::cell::Cell::new(None),
            bytes: std::cell::Cell::new(0),
            reset: std::cell::Cell::new(None),
            trailers: std::cell::RefCell::new(None),
            h1_trailers: std::cell::RefCell::new(h1_trailers),
            decided: false,
        }
    }
}

impl Pending {
    fn new(
        taps: std::sync::Arc<TapSet>,
        outbox: std::rc::Rc<Outbox>,
        source: SocketAddr,
        head: &dyn TapHead,
        id: StreamId,
        seen: std::time::Instant,
    ) -> Self {
        let mut s = outbox.state(source, id, seen);
        s.h2 = head.version() == "HTTP/2.0";
        if taps.taps.iter().any(|t| t.tap.headers) {
            s.headers = Some(match s.h2 {
                true => pseudo_fields(
                    [
                        (":method", head.method().as_bytes()),
                        (":scheme", head.scheme().as_bytes()),
                        (":authority", head.authority().as_bytes()),
                        (":path", head.path().as_bytes()),
                    ],
                    head.headers(),
                ),
                false => head.headers(),
            });
        }
        let (method, authority) = (head.method(), head.authority());
        let (path, scheme) = (without_query(head.path()), head.scheme());
        s.head.push_str(method);
        s.head.push_str(authority);
        s.head.push_str(path);
        s.head.push_str(scheme);
        let p = method.len() + authority.len();
        s.head_at = (method.len(), p, p + path.len());
        Self { taps, outbox, s }
    }

    /// The request's destination is known: the taps that match it (and
    /// still want requests) get its `RequestInit`. `false`: none does.
    /// (Nothing is encoded unless a tap matches.)
    pub(crate) fn decide(
        &mut self,
        destination: SocketAddr,
        inbound: bool,
        dst_labels: Option<&std::sync::Arc<[(String, String)]>>,
        route: Option<&std::sync::Arc<str>>,
        tls: &ringmesh_admin::telemetry::TlsStatus,
    ) -> bool {
        use ringmesh_admin::telemetry::TlsStatus;
        if self.s.decided {
            return self.s.matched != 0;
        }
        self.s.decided = true;
        let route_pair = route.map(|r| ("route", &**r));
        let (method, authority, path, scheme) = Self::parts(&self.s.head, self.s.head_at);
        let req = TapRequest {
            source: self.s.source,
            destination,
            method,
            scheme,
            authority,
            path,
            dst_labels: dst_labels.map_or(&[], |l| &l[..]),
            route_labels: route_pair.as_slice(),
        };
        // (At most `MAX_MATCHED` taps are looked at; the tap server
        // installs fewer.)
        for (i, t) in self.taps.taps.iter().take(MAX_MATCHED).enumerate() {
            if t.tap.matcher.matches(&req) && t.claim() {
                self.s.matched |= 1 << i;
            }
        }
        if self.s.matched == 0 {
            return false;
        }
        // As linkerd2-proxy's tap: inbound, the client's connection as
        // accepted and the application's over loopback; outbound, the
        // application's over loopback and the endpoint's as connected.
        use crate::tap_wire::TapTls;
        let theirs = match tls {
            TlsStatus::Accepted { client_id } => TapTls::Client(client_id.as_deref().unwrap_or("")),
            TlsStatus::Connected { server_id } => TapTls::Server(server_id),
            TlsStatus::NoIdentity(why) => TapTls::No(why.as_str()),
            TlsStatus::Opaque { .. } => TapTls::No("passthru"),
        };
        let loopback = TapTls::No("loopback");
        let (src_tls, dst_tls) = match inbound {
            true => (theirs, loopback),
            false => (loopback, theirs),
        };
        let common = crate::tap_wire::Common {
            source: self.s.source,
            destination,
            inbound,
            dst_labels: dst_labels.map(|l| &l[..]),
            route: route.map(|r| &**r),
            src_tls,
            dst_tls,
        };
        crate::tap_wire::common_fields(&common, &mut self.s.common);
        let fields = self.taps().any(|t| t.tap.headers);
        self.s.fields = fields;
        let (method, authority, path, scheme) = Self::parts(&self.s.head, self.s.head_at);
        for t in matched(&self.taps, self.s.matched) {
            let init = crate::tap_wire::HttpEvent::RequestInit {
                method,
                scheme,
                authority,
                path,
                headers: self.s.headers.as_deref().filter(|_| t.tap.headers),
            };
            self.outbox.put(t, &self.s.common, self.s.id, &init, false);
        }
        true
    }

    /// Its method, authority, path and scheme, from `head` and `head_at`.
    fn parts(head: &str, (a, p, s): (usize, usize, usize)) -> (&str, &str, &str, &str) {
        (&head[..a], &head[a..p], &head[p..s], &head[s..])
    }

    /// Whether the taps that see it were chosen (its destination known).
    pub(crate) fn is_decided(&self) -> bool {
        self.s.decided
    }

    /// The taps that see this request.
    fn taps(&self) -> impl Iterator<Item = &std::sync::Arc<Installed>> {
        matched(&self.taps, self.s.matched)
    }

    /// The response's head arrived with `status` at `now` (the clock read
    /// the balancer's latency was taken from): the taps see it (its fields,
    /// from `fields`, only those that extract them).
    pub(crate) fn response(
        &self,
        status: u16,
        now: std::time::Instant,
        fields: impl FnOnce() -> Fields,
    ) {
        if self.s.response_at.get().is_some() {
            return;
        }
        self.s.response_at.set(Some(now));
        let since_request = now.saturating_duration_since(self.s.seen);
        let fields = self.s.fields.then(|| match self.s.h2 {
            true => pseudo_fields([(":status", status.to_string().as_bytes())], fields()),
            false => fields(),
        });
        for t in self.taps() {
            let head = fields.as_deref().filter(|_| t.tap.headers);
            let init = crate::tap_wire::HttpEvent::ResponseInit {
                since_request,
                status,
                headers: head,
            };
            self.outbox.put(t, &self.s.common, self.s.id, &init, false);
        }
    }

    /// `n` more bytes of the response's body went to the client.
    pub(crate) fn data(&self, n: usize) {
        self.s.bytes.set(self.s.bytes.get() + n as u64);
    }

    /// The response ended with trailers: kept for the taps that extract
    /// fields.
    pub(crate) fn trailers(&self, fields: impl FnOnce() -> Fields) {
        if self.s.fields {
            *self.s.trailers.borrow_mut() = Some(fields());
        }
    }

    /// Bytes of an HTTP/1 chunked response's trailer field lines went to
    /// the client: kept for the taps that extract fields.
    pub(crate) fn h1_trailer_bytes(&self, bytes: &[u8]) {
        if self.s.fields {
            self.s.h1_trailers.borrow_mut().extend_from_slice(bytes);
        }
    }

    /// The response's stream was reset with `code` (the client sees it
    /// cut short).
    pub(crate) fn reset(&self, code: u32) {
        self.s.reset.set(Some(code));
    }

    /// The request ended with `status` (0: no response) and, for gRPC,
    /// `grpc_status`, at `now`. A status with no head announced is the
    /// proxy's own answer: its `ResponseInit` goes first.
    pub(crate) fn end(self, status: u16, grpc_status: Option<u32>, now: std::time::Instant) {
        let head = self.s.response_at.get().unwrap_or(now);
        let eos = match (self.s.reset.get(), grpc_status) {
            (Some(code), _) => TapEos::Reset(code),
            (None, Some(g)) => TapEos::Grpc(g),
            (None, None) => TapEos::None,
        };
        let answered = self.s.response_at.get().is_none() && status != 0;
        let since = (
            head.saturating_duration_since(self.s.seen),
            now.saturating_duration_since(self.s.seen),
        );
        let trailers = self.s.trailers.take().or_else(|| {
            let raw = self.s.h1_trailers.borrow();
            (!raw.is_empty()).then(|| h1_trailer_fields(&raw))
        });
        for t in self.taps() {
            if answered {
                let init = crate::tap_wire::HttpEvent::ResponseInit {
                    since_request: since.0,
                    status,
                    headers: None,
                };
                self.outbox.put(t, &self.s.common, self.s.id, &init, false);
            }
            let end = crate::tap_wire::HttpEvent::ResponseEnd {
                since,
                bytes: self.s.bytes.get(),
                eos,
                trailers: trailers.as_deref().filter(|_| t.tap.headers),
            };
            self.outbox.put(t, &self.s.common, self.s.id, &end, true);
        }
        self.discard();
    }

    /// No tap sees the request (any more): its state goes back to the
    /// worker's spares. (A `Pending` merely dropped frees it.)
    pub(crate) fn discard(self) {
        let Self { outbox, s, .. } = self;
        outbox.recycle(s);
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
    fn chunked_trailer_lines_become_fields() {
        assert_eq!(
            h1_trailer_fields(b"Grpc-Status: 0\r\nX-Sum:\tab c \r\n"),
            [
                ("grpc-status".to_string(), b"0".to_vec()),
                ("x-sum".to_string(), b"ab c".to_vec())
            ]
        );
        assert!(h1_trailer_fields(b"").is_empty());
    }

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

    /// Ended requests' states are reused, their buffers emptied; a long
    /// head's are freed, and no more than `SPARE_STATES` are kept.
    #[test]
    fn request_states_are_reused_within_bounds() {
        let outbox = Outbox::new(0);
        let (src, now) = ("10.0.0.1:5000".parse().unwrap(), std::time::Instant::now());
        let mut s = outbox.state(src, (0, 1), now);
        s.head.push_str("GETweb.test/a");
        s.common.extend_from_slice(&[1; 100]);
        s.matched = 1;
        s.bytes.set(7);
        let (cap, at) = (s.common.capacity(), &*s as *const State);
        outbox.recycle(s);
        let s = outbox.state(src, (0, 2), now);
        assert!(std::ptr::eq(&*s, at), "the same state again");
        assert!(s.head.is_empty() && s.common.is_empty());
        assert_eq!(s.common.capacity(), cap, "the same buffer again");
        assert_eq!((s.id, s.matched, s.bytes.get()), ((0, 2), 0, 0), "reset");
        let mut long = outbox.state(src, (0, 3), now);
        long.head.push_str(&"x".repeat(SPARE_BYTES + 1));
        outbox.recycle(long);
        assert!(outbox.spare.borrow().is_empty(), "a long head's are freed");
        let all: Vec<_> = (0..SPARE_STATES + 10)
            .map(|i| outbox.state(src, (0, i as u64), now))
            .collect();
        for s in all {
            outbox.recycle(s);
        }
        assert_eq!(outbox.spare.borrow().len(), SPARE_STATES);
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
        // As linkerd2-proxy's: `all`/`any` entries with nothing set are
        // skipped; `all` of nothing (what Linkerd's tap controller sends
        // when nothing narrows the tap) matches every request, `any` of
        // nothing none.
        let labels = vec![];
        let r = req("GET", "/x", &labels);
        let everything = tap(all(vec![PbMatch::default()]), 1).unwrap();
        assert!(everything.matcher.matches(&r));
        assert!(tap(all(vec![]), 1).unwrap().matcher.matches(&r));
        let skipped = all(vec![PbMatch::default(), path_prefix("/y")]);
        assert!(!tap(skipped, 1).unwrap().matcher.matches(&r));
        assert!(!tap(any(vec![]), 1).unwrap().matcher.matches(&r));
        let label = |key: &str, value: &str| {
            m(r#match::Match::DestinationLabel(r#match::Label {
                key: key.into(),
                value: value.into(),
            }))
        };
        assert_eq!(tap(label("", "web"), 1).unwrap_err(), InvalidTap::Empty);
        assert_eq!(tap(label("service", ""), 1).unwrap_err(), InvalidTap::Empty);
        assert_eq!(
            tap(src_net("10.0.0.0", 0), 1).unwrap_err(),
            InvalidTap::Empty
        );
        assert_eq!(tap(dst_ports(0, 0), 1).unwrap_err(), InvalidTap::Empty);
        // A range without a minimum is its maximum alone.
        let only = tap(dst_ports(0, 8080), 1).unwrap();
        assert!(only.matcher.matches(&r));
        let mut other = req("GET", "/x", &labels);
        other.destination.set_port(80);
        assert!(!only.matcher.matches(&other));
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
