//! Power-of-two-choices balancing over a weighted endpoint set.
//!
//! Two distinct candidates are drawn with probability proportional to their
//! weight; the one with the lower cost wins, and a tie (costs within
//! [`TIE`] of each other) goes to the first draw. Costs, as linkerd2-proxy's, with the load counted per unit of
//! weight:
//! - layer 7 ([`Balancer::pick_request`]): peak-EWMA of response latency
//!   (to the first response byte) × (requests in flight / weight + 1);
//! - layer 4 ([`Balancer::pick_untried`]): the larger of the connect and
//!   first-bytes latency peak-EWMAs × (open connections / weight + 1).
//!
//! A loaded set converges to load proportional to weight and a slow
//! endpoint is avoided at once. Idle, endpoints of equal latency tie and
//! the weighted draw shares them by weight; the layer-7 cost otherwise
//! sends one request at a time to the endpoint with the best latency (as
//! in linkerd2-proxy).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::accrual::{Accrual, AccrualPolicy, Transition};
use crate::budget::RetryBudget;
use crate::ewma::{PeakEwma, DEFAULT_DECAY, DEFAULT_RTT};

/// One endpoint's state in one worker's replica.
#[derive(Debug)]
pub struct EndpointState {
    addr: SocketAddr,
    weight: Cell<u32>,
    open: Cell<u32>,
    /// Response latency, to the first response byte.
    response: PeakEwma,
    /// Connect latency.
    connect: PeakEwma,
    accrual: Accrual,
    policy: Cell<AccrualPolicy>,
    /// Connections that failed in a row, and when the last did: after
    /// [`probe_after`] the penalty the failure put in its latency estimate
    /// is set aside for one pick (a probe), so an endpoint that came back
    /// is found again in a second or so, not once the penalty has decayed
    /// (about a minute).
    connect_failures: Cell<u32>,
    failed_at: Cell<Option<Instant>>,
}

/// How long after its `n`th connection failure in a row an endpoint is
/// probed: 1 s, doubling, at most 30 s (a probe of an endpoint that
/// swallows connections costs a request its connect timeout).
fn probe_after(n: u32) -> Duration {
    Duration::from_secs(1 << n.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

impl EndpointState {
    fn new(addr: SocketAddr, weight: u32, now: Instant, policy: AccrualPolicy) -> Self {
        Self {
            addr,
            weight: Cell::new(weight),
            open: Cell::new(0),
            response: PeakEwma::new(DEFAULT_RTT, now),
            connect: PeakEwma::new(DEFAULT_RTT, now),
            accrual: Accrual::default(),
            policy: Cell::new(policy),
            connect_failures: Cell::new(0),
            failed_at: Cell::new(None),
        }
    }

    /// A connection to it failed at `now` (its latency penalty is the
    /// caller's): it is probed again after [`probe_after`].
    pub fn connect_failed(&self, now: Instant) {
        self.connect_failures
            .set(self.connect_failures.get().saturating_add(1));
        self.failed_at.set(Some(now));
    }

    /// A connection to it succeeded: a failure's penalty is forgotten, in
    /// both estimates (its next answers and connections set them).
    pub fn connect_succeeded(&self, now: Instant) {
        if self.connect_failures.replace(0) > 0 {
            self.failed_at.set(None);
            self.response.forget(now);
            self.connect.forget(now);
        }
    }

    /// Due for a probe after connection failures.
    fn on_probation(&self, now: Instant) -> bool {
        self.failed_at
            .get()
            .is_some_and(|t| now >= t + probe_after(self.connect_failures.get()))
    }

    /// A failed request or connection (connect error, 5xx, gRPC
    /// UNAVAILABLE): counts toward ejection.
    pub fn record_failure(&self) -> Transition {
        self.accrual.failure(Instant::now(), &self.policy.get())
    }

    /// A successful one: resets the count, restores an ejected endpoint.
    pub fn record_success(&self) -> Transition {
        self.accrual.success()
    }

    /// Out of rotation after too many failures in a row.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.accrual.is_ejected(now)
    }

    /// Records the time from sending a request to its first response byte.
    pub fn observe_response(&self, latency: Duration) {
        self.observe_response_at(latency, Instant::now());
    }

    /// As [`Self::observe_response`], at a given time (simulations).
    pub fn observe_response_at(&self, latency: Duration, now: Instant) {
        self.response.observe(latency, now, DEFAULT_DECAY);
    }

    /// Records how long a connection took to establish.
    pub fn observe_connect(&self, latency: Duration) {
        self.connect.observe(latency, Instant::now(), DEFAULT_DECAY);
    }

    /// The layer-7 cost's parts: the response-latency estimate (`None`
    /// before the first response) and requests in flight.
    fn request_load(&self, now: Instant) -> (Option<f64>, f64) {
        let estimate = (self.response.is_observed() && !self.on_probation(now))
            .then(|| self.response.get(now, DEFAULT_DECAY));
        (estimate, f64::from(self.open.get()))
    }

    /// The layer-4 cost's parts: the latency estimate — the larger of the
    /// connect latency and the latency of the server's first bytes on a
    /// relayed connection (`None` before either was seen) — and open
    /// connections.
    fn connection_load(&self, now: Instant) -> (Option<f64>, f64) {
        let probing = self.on_probation(now);
        let observed =
            |e: &PeakEwma| (e.is_observed() && !probing).then(|| e.get(now, DEFAULT_DECAY));
        let estimate = match (observed(&self.connect), observed(&self.response)) {
            (Some(c), Some(r)) => Some(c.max(r)),
            (c, r) => c.or(r),
        };
        (estimate, f64::from(self.open.get()))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn weight(&self) -> u32 {
        self.weight.get()
    }

    /// Connections currently open to this endpoint from this worker.
    pub fn open(&self) -> u32 {
        self.open.get()
    }
}

/// How much cheaper the second candidate must be to win over the first
/// draw: costs closer than this are a tie (two endpoints answering in 1.0
/// and 1.1 ms are alike; without it the one a little faster took every
/// idle request, whatever the weights).
const TIE: f64 = 1.25;

/// Counts a connection as open on its endpoint until dropped. Holding the
/// `Rc` keeps the count correct even after the endpoint leaves the set.
#[derive(Debug)]
pub struct OpenGuard {
    ep: Rc<EndpointState>,
    /// A request's guard: when it was picked, and whether its endpoint
    /// answered.
    request: Option<(Instant, Cell<bool>)>,
}

impl OpenGuard {
    pub fn new(ep: Rc<EndpointState>) -> Self {
        ep.open.set(ep.open.get() + 1);
        Self { ep, request: None }
    }

    /// A request's: dropped before [`Self::answered`] (the client gave up,
    /// a timeout), the time it waited counts as the endpoint's latency, as
    /// linkerd2-proxy's peak-EWMA counts a cancelled request (an endpoint
    /// that swallows requests otherwise looked as good as new, and kept
    /// catching them).
    /// `picked`: when it was picked (a clock read the caller made).
    pub fn request(ep: Rc<EndpointState>, picked: Instant) -> Self {
        let mut g = Self::new(ep);
        g.request = Some((picked, Cell::new(false)));
        g
    }

    /// The endpoint answered (its latency was observed).
    pub fn answered(&self) {
        if let Some((_, a)) = &self.request {
            a.set(true);
        }
    }

    pub fn endpoint(&self) -> &Rc<EndpointState> {
        &self.ep
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.ep.open.set(self.ep.open.get().saturating_sub(1));
        if let Some((picked, answered)) = &self.request {
            if !answered.get() {
                self.ep.observe_response(picked.elapsed());
            }
        }
    }
}

/// A worker's replica of one service's balancer.
#[derive(Debug, Default)]
pub struct Balancer {
    endpoints: Vec<Rc<EndpointState>>,
    policy: AccrualPolicy,
    /// Retries to this service, shared by its requests on this worker.
    pub budget: RetryBudget,
    /// Running sums of weights, for O(log n) weighted draws.
    cumulative: Vec<u64>,
}

impl Balancer {
    pub fn new(endpoints: impl IntoIterator<Item = (SocketAddr, u32)>) -> Self {
        Self::with_accrual(endpoints, AccrualPolicy::default())
    }

    /// A balancer whose endpoints are ejected by `policy`.
    pub fn with_accrual(
        endpoints: impl IntoIterator<Item = (SocketAddr, u32)>,
        policy: AccrualPolicy,
    ) -> Self {
        let mut b = Self {
            policy,
            ..Self::default()
        };
        b.update(endpoints);
        b
    }

    /// Ejects endpoints by `policy` from now on (endpoints already ejected
    /// stay so until their backoff runs out).
    pub fn set_accrual(&mut self, policy: AccrualPolicy) {
        if self.policy == policy {
            return;
        }
        self.policy = policy;
        for e in &self.endpoints {
            e.policy.set(policy);
        }
    }

    /// Replaces the endpoint set. Endpoints that stay (same address) keep
    /// their state (the same `Rc`); a changed weight takes effect at once.
    /// New endpoints start with no estimate (see [`Self::pick_request`]).
    /// Linear in the sizes of both sets: a control plane sending a large
    /// set in many updates must not cost the worker the square of it.
    pub fn update(&mut self, endpoints: impl IntoIterator<Item = (SocketAddr, u32)>) {
        let old = std::mem::take(&mut self.endpoints);
        // A small set (the usual) is searched; a large one indexed once.
        let index: Option<HashMap<SocketAddr, &Rc<EndpointState>>> = (old.len() > 32).then(|| {
            // The first of repeated addresses wins, as the search finds it.
            old.iter().rev().map(|e| (e.addr, e)).collect()
        });
        let kept = |addr: SocketAddr| match &index {
            Some(index) => index.get(&addr).copied(),
            None => old.iter().find(|e| e.addr == addr),
        };
        let now = Instant::now();
        for (addr, weight) in endpoints {
            let weight = weight.max(1);
            // Same `Rc` for an endpoint that stays, so guards of connections
            // already open keep counting against it.
            let ep = match kept(addr) {
                Some(e) => {
                    e.weight.set(weight);
                    e.clone()
                }
                None => Rc::new(EndpointState::new(addr, weight, now, self.policy)),
            };
            self.endpoints.push(ep);
        }
        let mut sum = 0;
        self.cumulative = self
            .endpoints
            .iter()
            .map(|e| {
                sum += u64::from(e.weight.get());
                sum
            })
            .collect();
    }

    pub fn endpoints(&self) -> &[Rc<EndpointState>] {
        &self.endpoints
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Picks an endpoint index by layer-4 cost, skipping those for which
    /// `excluded(i)` is true (endpoints already tried for this connection).
    /// `None` when no endpoint is left.
    pub fn pick(&self, excluded: impl Fn(usize) -> bool) -> Option<usize> {
        let now = Instant::now();
        self.pick_by(&excluded, now, |e| e.connection_load(now))
    }

    /// Picks an endpoint for a connection (layer-4 cost) whose address is
    /// not in `tried` (the endpoints it already failed on).
    pub fn pick_untried(&self, tried: &[SocketAddr]) -> Option<Rc<EndpointState>> {
        let i = self.pick(|i| tried.contains(&self.endpoints[i].addr))?;
        Some(self.endpoints[i].clone())
    }

    /// Picks an endpoint for a request (peak-EWMA layer-7 cost) whose
    /// address is not in `tried`.
    pub fn pick_request(&self, tried: &[SocketAddr]) -> Option<Rc<EndpointState>> {
        self.pick_request_at(tried, Instant::now())
    }

    /// As [`Self::pick_request`], at a given time (simulations).
    pub fn pick_request_at(&self, tried: &[SocketAddr], now: Instant) -> Option<Rc<EndpointState>> {
        let excluded = |i: usize| tried.contains(&self.endpoints[i].addr);
        let i = self.pick_by(&excluded, now, |e| e.request_load(now))?;
        Some(self.endpoints[i].clone())
    }

    /// P2C: two distinct weighted draws, the lower cost per weight wins;
    /// a cost is a latency estimate × a load factor (`cost` gives both).
    /// An endpoint with no estimate yet (new, never answered) borrows its
    /// rival's, so the two compare on load alone: it gets its first
    /// requests at once (and its first answer sets its own estimate) instead
    /// of sitting at [`DEFAULT_RTT`] while faster peers win every draw, for
    /// the tens of seconds their estimates take to decay. Two without an
    /// estimate both take the default. Ejected endpoints are skipped while
    /// any other is left; when every candidate is ejected they are used
    /// anyway (failing everything would be worse than trying).
    fn pick_by(
        &self,
        excluded: &impl Fn(usize) -> bool,
        now: Instant,
        cost: impl Fn(&EndpointState) -> (Option<f64>, f64),
    ) -> Option<usize> {
        let healthy = |i: usize| excluded(i) || self.endpoints[i].is_ejected(now);
        let picked = self
            .pick_among(&healthy, &cost)
            .or_else(|| self.pick_among(excluded, &cost))?;
        // One probe per interval: the next picks see its penalty again.
        let ep = &self.endpoints[picked];
        if ep.on_probation(now) {
            ep.failed_at.set(Some(now));
        }
        Some(picked)
    }

    fn pick_among(
        &self,
        excluded: &impl Fn(usize) -> bool,
        cost: &impl Fn(&EndpointState) -> (Option<f64>, f64),
    ) -> Option<usize> {
        let a = self.draw(excluded)?;
        let Some(b) = self.draw(&|i| i == a || excluded(i)) else {
            return Some(a);
        };
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let ((est_a, load_a), (est_b, load_b)) = (cost(ea), cost(eb));
        let default = DEFAULT_RTT.as_nanos() as f64;
        let est_a_or = est_a.or(est_b).unwrap_or(default);
        let est_b_or = est_b.or(est_a).unwrap_or(default);
        // Requests: latency × (in flight + 1); connections: latency × (open
        // + 1), so idle endpoints tie (the weighted draw shares them by
        // weight, as least-connections does), a slow server is not picked
        // just for having nothing open, and fewer open wins beyond the tie.
        // Connections count the `+ 1` too: with latency × open alone, one
        // connection still closing when the next is balanced (back-to-back
        // short connections: the close is seen a moment after the next
        // accept) made its endpoint infinitely dearer than an idle one, and
        // the next always went to the other: a [1, 9] pair split 30/70.
        let extra = 1.0;
        // The load counts per unit of weight; the latency, and the `+ 1`
        // of an idle endpoint, do not. The draws are by weight already: at
        // a tie (equal latencies, nothing in flight) the first draw wins,
        // so idle traffic is shared by weight, and under load the work in
        // flight settles proportional to weight. (Dividing the whole cost
        // by the weight counted the weight twice: idle, a [1, 9] pair sent
        // the first nothing.)
        // Costs within [`TIE`] of each other tie (latencies differ by
        // noise; the weighted first draw then shares them by weight). A
        // lighter second draw must also beat the first by their weights'
        // ratio: a weight says how much traffic an endpoint is meant to
        // take, and a light endpoint a little faster must not take the
        // heavy one's share.
        let (wa, wb) = (f64::from(ea.weight.get()), f64::from(eb.weight.get()));
        let cost_a = est_a_or * (load_a / wa + extra);
        let cost_b = est_b_or * (load_b / wb + extra);
        let bias = (wa / wb).max(1.0);
        Some(if cost_b * TIE * bias < cost_a { b } else { a })
    }

    /// A weighted random draw among endpoints not excluded.
    fn draw(&self, excluded: &impl Fn(usize) -> bool) -> Option<usize> {
        let total = *self.cumulative.last()?;
        // Rejection sampling is O(log n) per try and exclusions are few (the
        // endpoints tried for one connection); fall back to a scan.
        for _ in 0..8 {
            let r = fastrand::u64(0..total);
            let i = self.cumulative.partition_point(|&c| c <= r);
            if !excluded(i) {
                return Some(i);
            }
        }
        let remaining: u64 = (0..self.endpoints.len())
            .filter(|&i| !excluded(i))
            .map(|i| u64::from(self.endpoints[i].weight.get()))
            .sum();
        if remaining == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..remaining);
        for (i, ep) in self.endpoints.iter().enumerate() {
            if excluded(i) {
                continue;
            }
            let w = u64::from(ep.weight.get());
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_slow_to_answer_gets_no_connection_for_being_idle() {
        let b = Balancer::new([(addr(1), 1), (addr(2), 1), (addr(3), 1)]);
        for (i, e) in b.endpoints().iter().enumerate() {
            e.observe_connect(Duration::from_micros(50));
            // First bytes of a relayed connection: endpoint 3 takes 50 ms.
            let first = if i == 2 { 50_000 } else { 200 };
            e.observe_response(Duration::from_micros(first));
        }
        // The fast two are busy, the slow one has nothing open.
        let _busy: Vec<_> = [0, 0, 1]
            .iter()
            .map(|&i| OpenGuard::new(b.endpoints()[i].clone()))
            .collect();
        let to_slow = (0..3000)
            .filter(|_| b.pick_untried(&[]).unwrap().addr() == addr(3))
            .count();
        assert_eq!(to_slow, 0);
    }

    #[test]
    fn similar_latencies_leave_connections_to_least_open() {
        // Within 2x of each other: the idle endpoint wins every draw it is
        // in (2 of 3 pairs), as least-connections would.
        let b = Balancer::new([(addr(1), 1), (addr(2), 1), (addr(3), 1)]);
        for (i, e) in b.endpoints().iter().enumerate() {
            e.observe_connect(Duration::from_micros(50));
            e.observe_response(Duration::from_micros(if i == 2 { 300 } else { 200 }));
        }
        let _busy: Vec<_> = [0, 1]
            .iter()
            .map(|&i| OpenGuard::new(b.endpoints()[i].clone()))
            .collect();
        let to_idle = (0..3000)
            .filter(|_| b.pick_untried(&[]).unwrap().addr() == addr(3))
            .count();
        assert!(to_idle > 1800, "{to_idle}");
    }

    /// Back-to-back short connections, each still open when the next is
    /// balanced (its close seen a moment later): shared by weight, not
    /// flipped to whichever endpoint has none open.
    #[test]
    fn back_to_back_connections_share_by_weight() {
        for (weights, light_share) in [([1, 9], 0.10), ([1, 1], 0.5)] {
            let b = Balancer::new([(addr(1), weights[0]), (addr(2), weights[1])]);
            for e in b.endpoints() {
                e.observe_connect(Duration::from_micros(50));
            }
            let mut previous: Option<OpenGuard> = None;
            let mut light = 0;
            let n = 4000;
            for _ in 0..n {
                let ep = b.pick_untried(&[]).unwrap();
                light += usize::from(ep.addr() == addr(1));
                let next = OpenGuard::new(ep);
                // The previous one closes only now.
                previous = Some(next);
            }
            drop(previous);
            let share = light as f64 / f64::from(n);
            assert!(
                (share - light_share).abs() < 0.05,
                "{weights:?}: the first endpoint took {share:.2}"
            );
        }
    }

    #[test]
    fn one_request_at_a_time_still_reaches_every_endpoint() {
        // Sequential requests: in-flight counts are always zero, so without
        // the borrowed estimate the first endpoint to answer (0.3 ms)
        // would beat the others' 30 ms default in every draw.
        let eps = [addr(1), addr(2), addr(3)];
        let b = Balancer::new(eps.map(|a| (a, 1)));
        let mut hits = [0usize; 3];
        for _ in 0..3000 {
            let ep = b.pick_request(&[]).unwrap();
            ep.observe_response(Duration::from_micros(300));
            hits[eps.iter().position(|a| *a == ep.addr()).unwrap()] += 1;
        }
        assert!(hits.iter().all(|h| *h > 600), "{hits:?}");
    }

    #[test]
    fn an_endpoint_added_to_a_fast_set_is_probed_at_once() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let mut bal = Balancer::new([(a, 1), (b, 1)]);
        for e in bal.endpoints() {
            e.observe_response(Duration::from_micros(300));
            e.observe_connect(Duration::from_micros(50));
        }
        bal.update([(a, 1), (b, 1), (c, 1)]);
        let to_c = (0..3000)
            .filter(|_| bal.pick_request(&[]).unwrap().addr() == c)
            .count();
        // At the 30 ms default it would never win against 0.3 ms.
        assert!(to_c > 600, "{to_c} of 3000");
        // Its first observation replaces the borrowed estimate.
        let ep = bal.endpoints()[2].clone();
        ep.observe_response(Duration::from_millis(50));
        let to_c = (0..3000)
            .filter(|_| bal.pick_request(&[]).unwrap().addr() == c)
            .count();
        assert_eq!(to_c, 0, "a slow newcomer is avoided after one answer");
    }

    #[test]
    fn pick_untried_skips_failed_endpoints() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let bal = Balancer::new([(a, 1), (b, 1), (c, 5)]);
        for _ in 0..100 {
            assert_eq!(bal.pick_untried(&[a, c]).unwrap().addr(), b);
        }
        assert!(bal.pick_untried(&[a, b, c]).is_none());
        assert!(Balancer::default().pick_untried(&[]).is_none());
    }
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn empty_picks_nothing() {
        assert_eq!(Balancer::new([]).pick(|_| false), None);
    }

    #[test]
    fn idle_share_follows_weights() {
        let b = Balancer::new([(addr(1), 3), (addr(2), 1)]);
        let mut hits = [0u32; 2];
        for _ in 0..40_000 {
            hits[b.pick(|_| false).unwrap()] += 1;
        }
        let share = f64::from(hits[0]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    /// Idle requests to endpoints of equal latency go by weight (the
    /// weight counted once: a [1, 9] pair sent the first none).
    #[test]
    fn idle_requests_share_by_weight() {
        let b = Balancer::new([(addr(1), 1), (addr(2), 9)]);
        for e in b.endpoints() {
            e.observe_response(Duration::from_millis(1));
            e.observe_connect(Duration::from_micros(100));
        }
        let t = Instant::now();
        let (mut req, mut conn) = (0u32, 0u32);
        for _ in 0..20_000 {
            req += u32::from(b.pick_request_at(&[], t).unwrap().addr() == addr(1));
            conn += u32::from(b.pick(|_| false) == Some(0));
        }
        for (what, n) in [("requests", req), ("connections", conn)] {
            let share = f64::from(n) / 20_000.0;
            assert!((share - 0.1).abs() < 0.02, "{what}: share {share}");
        }
    }

    /// An endpoint whose connection failed (its latency penalised) is
    /// probed after a second, once per interval, and a connection that
    /// succeeds forgets the penalty: an endpoint that came back takes
    /// traffic again at once (it took about a minute of decay).
    #[test]
    fn a_failed_endpoint_is_probed_and_restored() {
        let b = Balancer::new([(addr(1), 1), (addr(2), 1)]);
        let t0 = Instant::now();
        for e in b.endpoints() {
            e.observe_response_at(Duration::from_millis(1), t0);
        }
        let dead = &b.endpoints()[0];
        dead.observe_response_at(Duration::from_secs(1), t0);
        dead.connect_failed(t0);
        let to_dead = |at: Instant, n: usize| {
            (0..n)
                .filter(|_| b.pick_request_at(&[], at).unwrap().addr() == addr(1))
                .count()
        };
        assert_eq!(to_dead(t0 + Duration::from_millis(500), 1000), 0);
        // A second on: one probe, then the penalty again.
        assert_eq!(to_dead(t0 + Duration::from_millis(1100), 1000), 1);
        // The probe failed: the next one waits twice as long.
        let t1 = t0 + Duration::from_millis(1100);
        dead.connect_failed(t1);
        assert_eq!(to_dead(t1 + Duration::from_millis(1500), 1000), 0);
        assert_eq!(to_dead(t1 + Duration::from_millis(2100), 1000), 1);
        // It came back: a connection succeeds, its answers count again.
        let t2 = t1 + Duration::from_millis(2100);
        dead.connect_succeeded(t2);
        dead.observe_response_at(Duration::from_millis(1), t2);
        for e in b.endpoints() {
            e.observe_response_at(Duration::from_millis(1), t2);
        }
        let n = to_dead(t2, 10_000);
        assert!((4000..6000).contains(&n), "{n} of 10000 after it came back");
    }

    /// A request given up on before its endpoint answered counts the time
    /// it waited; one that was answered counts its answer only.
    #[test]
    fn a_request_given_up_on_counts_its_wait() {
        let b = Balancer::new([(addr(1), 1), (addr(2), 1)]);
        for e in b.endpoints() {
            e.observe_response(Duration::from_micros(500));
        }
        let hole = b.endpoints()[0].clone();
        let g = OpenGuard::request(hole.clone(), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        drop(g);
        let now = Instant::now();
        assert!(
            hole.request_load(now).0.unwrap() > 25e6,
            "the wait was counted"
        );
        let other = b.endpoints()[1].clone();
        let g = OpenGuard::request(other.clone(), Instant::now());
        other.observe_response(Duration::from_micros(500));
        g.answered();
        std::thread::sleep(Duration::from_millis(30));
        drop(g);
        assert!(other.request_load(Instant::now()).0.unwrap() < 1e6);
        // Requests avoid the one that swallowed a request.
        let to_hole = (0..1000)
            .filter(|_| b.pick_request(&[]).unwrap().addr() == addr(1))
            .count();
        assert_eq!(to_hole, 0);
    }

    #[test]
    fn loaded_share_follows_weights() {
        // Long-lived connections: the open counts converge to the weights.
        let b = Balancer::new([(addr(1), 3), (addr(2), 1)]);
        let guards: Vec<_> = (0..400)
            .map(|_| OpenGuard::new(b.endpoints()[b.pick(|_| false).unwrap()].clone()))
            .collect();
        let open0 = b.endpoints()[0].open();
        assert!((280..=320).contains(&open0), "open {open0}");
        drop(guards);
        assert_eq!(b.endpoints()[0].open() + b.endpoints()[1].open(), 0);
    }

    #[test]
    fn prefers_the_less_loaded() {
        let b = Balancer::new([(addr(1), 1), (addr(2), 1)]);
        let _busy: Vec<_> = (0..10)
            .map(|_| OpenGuard::new(b.endpoints()[0].clone()))
            .collect();
        let mut to_idle = 0;
        for _ in 0..1000 {
            if b.pick(|_| false) == Some(1) {
                to_idle += 1;
            }
        }
        // The two draws are distinct: the idle one always wins.
        assert_eq!(to_idle, 1000);
    }

    #[test]
    fn update_keeps_state_of_endpoints_that_stay() {
        let mut b = Balancer::new([(addr(1), 1), (addr(2), 1)]);
        let g = OpenGuard::new(b.endpoints()[1].clone());
        b.update([(addr(2), 1), (addr(3), 1)]);
        assert_eq!(b.endpoints()[0].addr(), addr(2));
        assert_eq!(b.endpoints()[0].open(), 1);
        assert!(Rc::ptr_eq(g.endpoint(), &b.endpoints()[0]));
        assert_eq!(b.endpoints()[1].open(), 0);
        drop(g);
        assert_eq!(b.endpoints()[0].open(), 0);
    }

    /// The same for a set large enough to be indexed, with an address
    /// repeated (the first of them is the one kept).
    #[test]
    fn update_of_a_large_set_keeps_state_of_endpoints_that_stay() {
        let mut b = Balancer::new((1..=100).map(|p| (addr(p), 1)));
        let g = OpenGuard::new(b.endpoints()[49].clone());
        b.update((50..=150).chain([50]).map(|p| (addr(p), 2)));
        assert_eq!(b.len(), 102);
        assert_eq!(b.endpoints()[0].addr(), addr(50));
        assert!(Rc::ptr_eq(g.endpoint(), &b.endpoints()[0]));
        assert!(Rc::ptr_eq(g.endpoint(), &b.endpoints()[101]));
        assert_eq!(b.endpoints()[0].open(), 1);
        assert_eq!(b.endpoints()[0].weight.get(), 2);
        assert_eq!(b.endpoints()[60].open(), 0);
    }

    /// Runs `n` requests through `b`, closed loop with `concurrency` in
    /// flight, on a virtual clock: endpoint `i` answers in `latency(i)`.
    /// Returns requests per endpoint.
    fn simulate(
        b: &Balancer,
        n: usize,
        concurrency: usize,
        latency: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let t0 = Instant::now();
        let mut hits = vec![0; b.len()];
        // (finish time, sequence, endpoint index)
        let mut done: BinaryHeap<Reverse<(Duration, usize, usize)>> = BinaryHeap::new();
        let mut guards: Vec<Option<OpenGuard>> = Vec::new();
        let mut now = Duration::ZERO;
        for k in 0..n {
            if done.len() == concurrency {
                let Reverse((t, seq, i)) = done.pop().unwrap();
                now = t;
                if let Some(g) = guards[seq].take() {
                    g.endpoint().observe_response_at(latency(i), t0 + now);
                }
            }
            let ep = b.pick_request_at(&[], t0 + now).unwrap();
            let i = b
                .endpoints()
                .iter()
                .position(|e| Rc::ptr_eq(e, &ep))
                .unwrap();
            hits[i] += 1;
            guards.push(Some(OpenGuard::new(ep)));
            done.push(Reverse((now + latency(i), k, i)));
        }
        hits
    }

    #[test]
    fn slow_endpoint_is_avoided() {
        let ms = Duration::from_millis(1);
        let latency = |i| if i == 2 { 50 * ms } else { ms };
        // 30 s of traffic at 8 in flight.
        let b = Balancer::new([(addr(1), 1), (addr(2), 1), (addr(3), 1)]);
        let hits = simulate(&b, 200_000, 8, latency);
        assert!((hits[0] + hits[1]) * 100 >= 99 * 200_000, "{hits:?}");
        assert!(
            hits[0] > 80_000 && hits[1] > 80_000,
            "fast ones share: {hits:?}"
        );
        // One or two at a time, where in-flight counts say nothing (P2C over
        // in-flight alone sends the slow one 33% and 2% here).
        for conc in [1, 2] {
            let b = Balancer::new([(addr(1), 1), (addr(2), 1), (addr(3), 1)]);
            let hits = simulate(&b, 30_000 * conc, conc, latency);
            assert!(
                hits[2] * 1000 <= 30_000 * conc,
                "{conc} at a time: {hits:?}"
            );
        }
    }

    /// A new accrual policy applies to the endpoints there are (their
    /// failure counts kept) and to those added later.
    #[test]
    fn set_accrual_applies_to_every_endpoint() {
        let mut b = Balancer::new([(addr(1), 1), (addr(2), 1)]);
        b.endpoints()[0].record_failure();
        b.set_accrual(AccrualPolicy {
            consecutive: 2,
            ..AccrualPolicy::default()
        });
        assert!(matches!(
            b.endpoints()[0].record_failure(),
            Transition::Ejected(_)
        ));
        b.update([(addr(1), 1), (addr(2), 1), (addr(3), 1)]);
        b.endpoints()[2].record_failure();
        assert!(matches!(
            b.endpoints()[2].record_failure(),
            Transition::Ejected(_)
        ));
        assert!(matches!(
            b.endpoints()[1].record_failure(),
            Transition::None
        ));
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_all_are() {
        let b = Balancer::new([(addr(1), 1), (addr(2), 1), (addr(3), 1)]);
        for _ in 0..7 {
            b.endpoints()[0].record_failure();
        }
        for _ in 0..1000 {
            assert_ne!(b.pick_request(&[]).unwrap().addr(), addr(1));
            assert_ne!(b.pick_untried(&[]).unwrap().addr(), addr(1));
        }
        // Only the ejected one left: it is used rather than nothing.
        assert_eq!(b.pick_request(&[addr(2), addr(3)]).unwrap().addr(), addr(1));
        assert_eq!(b.endpoints()[0].record_success(), Transition::Restored);
        let back = (0..1000).any(|_| b.pick_request(&[]).unwrap().addr() == addr(1));
        assert!(back, "restored endpoints are picked again");
    }

    proptest! {
        #[test]
        fn never_picks_an_ejected_one_while_a_healthy_one_exists(
            n in 2usize..8,
            ejected in proptest::collection::vec(any::<bool>(), 8),
            tried in proptest::collection::vec(any::<bool>(), 8),
        ) {
            let b = Balancer::new((0..n).map(|i| (addr(i as u16 + 1), 1 + i as u32)));
            for (i, ep) in b.endpoints().iter().enumerate() {
                if ejected[i] {
                    for _ in 0..7 {
                        ep.record_failure();
                    }
                }
            }
            let tried: Vec<SocketAddr> = (0..n).filter(|&i| tried[i]).map(|i| addr(i as u16 + 1)).collect();
            let healthy_left = (0..n).any(|i| !ejected[i] && !tried.contains(&addr(i as u16 + 1)));
            for _ in 0..50 {
                match b.pick_request(&tried) {
                    Some(ep) => {
                        let i = usize::from(ep.addr().port()) - 1;
                        prop_assert!(!tried.contains(&ep.addr()));
                        prop_assert!(!healthy_left || !ejected[i], "picked ejected {i}");
                    }
                    None => prop_assert_eq!(tried.len(), n),
                }
            }
        }

        #[test]
        fn equal_latencies_share_by_weight(w in proptest::collection::vec(1u32..5, 2..5)) {
            let b = Balancer::new(w.iter().enumerate().map(|(i, w)| (addr(i as u16 + 1), *w)));
            let ms = Duration::from_millis(1);
            let total: u32 = w.iter().sum();
            // Enough in flight that the in-flight term decides.
            let hits = simulate(&b, 20_000, 4 * total as usize, |_| ms);
            for (i, h) in hits.iter().enumerate() {
                let want = f64::from(w[i]) / f64::from(total);
                let got = *h as f64 / 20_000.0;
                prop_assert!((got - want).abs() < 0.1, "endpoint {i}: {got} vs {want} ({hits:?})");
            }
        }

        #[test]
        fn in_flight_returns_to_zero(ops in proptest::collection::vec(any::<bool>(), 1..200)) {
            let mut b = Balancer::new([(addr(1), 2), (addr(2), 1), (addr(3), 1)]);
            let mut guards = Vec::new();
            for (n, start) in ops.into_iter().enumerate() {
                if start || guards.is_empty() {
                    guards.push(OpenGuard::new(b.pick_request(&[]).unwrap()));
                } else {
                    let g: OpenGuard = guards.swap_remove(n % guards.len());
                    g.endpoint().observe_response(Duration::from_micros(n as u64));
                }
                if n % 13 == 0 {
                    b.update([(addr(2), 1), (addr(3), 3), (addr(4), 1)]);
                }
            }
            drop(guards);
            prop_assert!(b.endpoints().iter().all(|e| e.open() == 0));
        }

        #[test]
        fn never_picks_excluded(weights in proptest::collection::vec(1u32..100, 1..20),
                                excluded in proptest::collection::vec(any::<bool>(), 20)) {
            let b = Balancer::new(weights.iter().enumerate().map(|(i, w)| (addr(i as u16 + 1), *w)));
            let any_left = (0..weights.len()).any(|i| !excluded[i]);
            for _ in 0..50 {
                match b.pick(|i| excluded[i]) {
                    Some(i) => prop_assert!(!excluded[i] && i < weights.len()),
                    None => prop_assert!(!any_left),
                }
            }
        }

        #[test]
        fn open_counts_return_to_zero(ops in proptest::collection::vec(any::<bool>(), 1..200)) {
            let mut b = Balancer::new([(addr(1), 2), (addr(2), 1), (addr(3), 1)]);
            let mut guards = Vec::new();
            for (n, open) in ops.into_iter().enumerate() {
                if open || guards.is_empty() {
                    let i = b.pick(|_| false).unwrap();
                    guards.push(OpenGuard::new(b.endpoints()[i].clone()));
                } else {
                    guards.swap_remove(n % guards.len());
                }
                if n % 17 == 0 {
                    b.update([(addr(2), 1), (addr(3), 3), (addr(4), 1)]);
                }
            }
            drop(guards);
            prop_assert!(b.endpoints().iter().all(|e| e.open() == 0));
        }
    }
}
