//! One retry decision for every HTTP path (HTTP/1, HTTP/2 and the
//! translations between them).
//!
//! A request may go again only when nothing of it is lost and nothing of
//! a response reached the client:
//! - **answered 502/503** by an endpoint of a service: again to another
//!   endpoint (never one that already answered), when the method is
//!   idempotent (the first endpoint did receive it), the request had no
//!   body or a kept one, at most [`MAX_ANSWER_RETRIES`] times, paid from the
//!   service's per-worker budget (20 % of the responses that were not
//!   failures, plus 10 per second: during an outage, the floor alone, as
//!   linkerd2-proxy's). An answer held back from an HTTP/1 client for a
//!   retry has its token taken when its head is seen (as linkerd2-proxy
//!   withdraws when it decides to retry): without one it is not held but
//!   relayed as it is (held, unread, it could not be given to the client
//!   after all);
//! - **answered as a route's retry policy says** (a ServiceProfile's
//!   retryable route, an outbound policy's retry conditions): any method,
//!   up to the route's limit, from the same budget; through the balancer
//!   again, as linkerd2-proxy's retries go: endpoints that already
//!   answered are avoided while another is left, then picked again (a
//!   service of one endpoint is retried on it);
//! - **stale**: a pooled HTTP/1 connection failed before any response byte
//!   (the upstream had closed it): once, on a new connection; a method
//!   that is not idempotent only when writing it failed (the connection
//!   was gone before it could be sent). Once its bytes went out, a POST
//!   is never sent again: the upstream may have taken it and died working
//!   on it (as nginx and hyper, linkerd2-proxy's client, decide);
//! - **unprocessed**: an HTTP/2 stream the upstream refused or left above a
//!   GOAWAY's last stream id: again, up to [`MAX_TRIES`] attempts in all.
//!
//! Must not: do I/O; the caller makes the attempts.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ringmesh_balancer::Balancer;
use ringmesh_discovery::profile::RetryPolicy;

use crate::route::Dst;

/// Retries after 502/503 answers, per request.
pub(crate) const MAX_ANSWER_RETRIES: usize = RetryPolicy::DEFAULT_LIMIT as usize;
/// Attempts per request when HTTP/2 upstreams leave its stream unprocessed.
pub(crate) const MAX_TRIES: u32 = 3;

/// A response held back from the client for a retry: which statuses are
/// held, and the one that was.
pub(crate) struct Held {
    /// The route's retry policy (its statuses are held too, not only
    /// 502/503).
    pub route: Option<Arc<RetryPolicy>>,
    pub status: Cell<Option<u16>>,
    /// The service whose budget pays for the retry of a held answer,
    /// when the attempt's answer may be held ([`Attempts::hold_answer`]).
    budget: std::cell::RefCell<Option<Rc<RefCell<Balancer>>>>,
    /// A token was taken for the held answer's retry.
    paid: Cell<bool>,
}

impl Held {
    pub(crate) fn new(route: Option<Arc<RetryPolicy>>) -> Self {
        Self {
            route,
            status: Cell::new(None),
            budget: std::cell::RefCell::new(None),
            paid: Cell::new(false),
        }
    }

    /// Whether `status` is one the route (or 502/503) retries.
    pub(crate) fn wants(&self, status: u16) -> bool {
        retryable_status(status, self.route.as_deref())
    }

    /// Whether an answer with `status` is held back from the client for
    /// a retry: a status to retry, and a budget token for it, taken now
    /// (as linkerd2-proxy withdraws when it decides to retry). Without a
    /// token the answer goes to the client as it is.
    pub(crate) fn take_for_retry(&self, status: u16, now: Instant) -> bool {
        if !self.wants(status) {
            return false;
        }
        let paid = self
            .budget
            .borrow()
            .as_ref()
            .is_some_and(|b| b.borrow().budget.withdraw(now));
        self.paid.set(paid);
        paid
    }
}

/// 502/503 always (when the request may go again at all); the route's
/// statuses.
fn retryable_status(status: u16, route: Option<&RetryPolicy>) -> bool {
    matches!(status, 502 | 503) || route.is_some_and(|r| r.retries_status(status))
}

/// One request's attempts: what it allows, and what was tried.
pub(crate) struct Attempts {
    /// Idempotent method (an endpoint that answered did receive it).
    idempotent: bool,
    /// No body, or a kept one: nothing is lost by sending it again.
    repeatable: bool,
    /// The service's endpoint count and balancer (budget); `None` for a
    /// literal address, which has no other endpoint to go to.
    service: Option<(usize, Rc<RefCell<Balancer>>)>,
    /// Endpoints that answered 502/503.
    answered: Vec<SocketAddr>,
    stale_retried: bool,
    tries: u32,
    /// The route's retry policy: any method, its statuses and gRPC
    /// codes, its limit.
    route: Option<Arc<RetryPolicy>>,
}

impl Attempts {
    /// Starts a request to `dst` (its responses that are not failures pay
    /// into the service's retry budget: `Observer::endpoint_outcome`).
    pub(crate) fn new(dst: &Dst, idempotent: bool, repeatable: bool) -> Self {
        let service = match dst {
            Dst::Service(svc, b) => Some((svc.endpoints.len(), b.clone())),
            Dst::Addr(_) => None,
        };
        Self::with_service(service, idempotent, repeatable)
    }

    fn with_service(
        service: Option<(usize, Rc<RefCell<Balancer>>)>,
        idempotent: bool,
        repeatable: bool,
    ) -> Self {
        Self {
            idempotent,
            repeatable,
            service,
            answered: Vec::new(),
            stale_retried: false,
            tries: 0,
            route: None,
        }
    }

    /// The request's route allows retries: any method, and the answers
    /// its policy names, go again (still only when nothing of it is lost,
    /// within its limit and the budget).
    pub(crate) fn on_route(mut self, route: &crate::route::RoutePolicy) -> Self {
        self.route = route.retry.clone();
        self
    }

    /// The route's retry policy (which answers are held for a retry).
    pub(crate) fn route(&self) -> Option<Arc<RetryPolicy>> {
        self.route.clone()
    }

    /// Retries allowed after answers: the route's limit, else
    /// [`MAX_ANSWER_RETRIES`].
    fn limit(&self) -> usize {
        self.route
            .as_ref()
            .map_or(MAX_ANSWER_RETRIES, |r| r.limit as usize)
    }

    /// Endpoints not to pick again: those that answered, until they are
    /// every endpoint of the service (a route's retries then pick among
    /// all of them again).
    pub(crate) fn avoid(&self) -> &[SocketAddr] {
        match &self.service {
            Some((endpoints, _)) if self.answered.len() >= *endpoints => &[],
            _ => &self.answered,
        }
    }

    /// Whether a 502/503 answer to the next attempt would be retried (so
    /// the caller holds it back from the client). Spends nothing.
    pub(crate) fn would_retry_answer(&self, now: Instant) -> bool {
        self.allowed()
            && self
                .service
                .as_ref()
                .is_some_and(|(_, b)| b.borrow().budget.can_withdraw(now))
    }

    /// Whether another attempt after an answer is allowed (budget aside).
    fn allowed(&self) -> bool {
        let Some((endpoints, _)) = &self.service else {
            return false;
        };
        // The proxy's own 502/503 retries need an endpoint that has not
        // answered; a route's go to any (linkerd2-proxy's retry the
        // request through the balancer).
        let another = self.route.is_some() || *endpoints > self.answered.len() + 1;
        (self.idempotent || self.route.is_some())
            && self.repeatable
            && self.answered.len() < self.limit()
            && another
    }

    /// Whether the next attempt's answer may be held for a retry
    /// ([`Self::would_retry_answer`]): if so, `held` takes the retry's
    /// budget token when the answer's head shows a status to retry
    /// ([`Held::take_for_retry`]), so a held answer is retried for sure,
    /// and one that cannot be paid for reaches the client as it is.
    pub(crate) fn hold_answer(&self, now: Instant, held: &Held) -> bool {
        if !self.would_retry_answer(now) {
            return false;
        }
        *held.budget.borrow_mut() = self.service.as_ref().map(|(_, b)| b.clone());
        true
    }

    /// As [`Self::retry_answer`], for an answer that was held: paid for
    /// when it was held.
    pub(crate) fn retry_held(&mut self, status: u16, addr: SocketAddr, held: &Held) -> bool {
        if !(held.paid.get() && retryable_status(status, self.route.as_deref()) && self.allowed()) {
            return false;
        }
        held.paid.set(false);
        self.answered.push(addr);
        true
    }

    /// The endpoint at `addr` answered `status`: true when the request goes
    /// again to another endpoint (the retry is paid for and `addr` avoided).
    pub(crate) fn retry_answer(&mut self, status: u16, addr: SocketAddr, now: Instant) -> bool {
        if !retryable_status(status, self.route.as_deref()) {
            return false;
        }
        self.retry(addr, now)
    }

    /// The endpoint at `addr` answered with gRPC status `code` (a
    /// trailers-only response): true when the route retries that code and
    /// the request goes again to another endpoint.
    pub(crate) fn retry_grpc(&mut self, code: u32, addr: SocketAddr, now: Instant) -> bool {
        if !self.route.as_ref().is_some_and(|r| r.retries_grpc(code)) {
            return false;
        }
        self.retry(addr, now)
    }

    /// Another attempt after `addr` answered, if allowed and paid for.
    fn retry(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if !self.would_retry_answer(now) {
            return false;
        }
        let paid = self
            .service
            .as_ref()
            .is_some_and(|(_, b)| b.borrow().budget.withdraw(now));
        if paid {
            self.answered.push(addr);
        }
        paid
    }

    /// When the next attempt's response head must have arrived: the
    /// route's per-attempt timeout from `now` when a retry could follow
    /// it (else the request's `deadline`), and whether that cuts the
    /// attempt short of the request's deadline.
    pub(crate) fn attempt_deadline(
        &self,
        now: Instant,
        deadline: Option<Instant>,
    ) -> (Option<Instant>, bool) {
        let per_attempt = self.route.as_ref().and_then(|r| r.timeout);
        match per_attempt {
            Some(t) if self.would_retry_answer(now) => {
                let cut = now + t;
                match deadline {
                    Some(d) if d <= cut => (Some(d), false),
                    _ => (Some(cut), true),
                }
            }
            _ => (deadline, false),
        }
    }

    /// The attempt on `addr` had no response head by its per-attempt
    /// timeout: true when the request goes again to another endpoint (as
    /// for an answer: allowed, paid for, `addr` avoided).
    pub(crate) fn retry_timed_out(&mut self, addr: SocketAddr, now: Instant) -> bool {
        self.route.as_ref().is_some_and(|r| r.timeout.is_some()) && self.retry(addr, now)
    }

    /// The pause before the retry just granted (the route's backoff; none
    /// without one).
    pub(crate) fn backoff(&self) -> Option<std::time::Duration> {
        let b = self.route.as_ref()?.backoff?;
        let n = self.answered.len().saturating_sub(1) as u32;
        Some(b.delay(n, fastrand::f64()))
    }

    /// An attempt on a pooled (`reused`) connection failed before any
    /// response byte (`unsent`: writing the request failed): true when it
    /// goes again, once, on a new connection (a method that is not
    /// idempotent only when unsent).
    pub(crate) fn retry_stale(&mut self, reused: bool, unsent: bool) -> bool {
        if !reused || !self.repeatable || self.stale_retried {
            return false;
        }
        if !self.idempotent && !unsent {
            return false;
        }
        self.stale_retried = true;
        true
    }

    /// Counts one attempt to open an HTTP/2 stream.
    pub(crate) fn count_try(&mut self) {
        self.tries += 1;
    }

    /// An HTTP/2 upstream left the stream unprocessed: true when it goes
    /// again. `body_sent`: some of the request body had already gone (it
    /// is lost unless it was kept).
    pub(crate) fn retry_unprocessed(&self, body_sent: bool) -> bool {
        (!body_sent || self.repeatable) && self.tries < MAX_TRIES
    }
}

/// Pauses before a granted retry, as `attempts`' route asks (never past
/// the request's `deadline`); `Err` when the deadline came meanwhile.
pub(crate) async fn pause(
    attempts: &Attempts,
    deadline: Option<Instant>,
) -> Result<(), crate::error::ProxyError> {
    if let Some(d) = attempts.backoff() {
        let until = Instant::now() + d;
        let until = deadline.map_or(until, |dl| dl.min(until));
        monoio::time::sleep_until(until.into()).await;
    }
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(crate::error::ProxyError::timeout(
            "request timed out between retries",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringmesh_balancer::RetryBudget;

    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    /// A service of `n` endpoints whose budget starts at `t0` (virtual
    /// clock: every `now` below is `t0` plus an offset).
    fn service(n: u8, t0: Instant) -> Option<(usize, Rc<RefCell<Balancer>>)> {
        let mut b = Balancer::new((1..=n).map(|i| (addr(i), 1)));
        b.budget = RetryBudget::new(0.2, 10.0, Duration::from_secs(10), t0);
        Some((n as usize, Rc::new(RefCell::new(b))))
    }

    #[test]
    fn answered_5xx_goes_to_other_endpoints_at_most_twice() {
        let t0 = Instant::now();
        let mut a = Attempts::with_service(service(4, t0), true, true);
        assert!(a.would_retry_answer(t0));
        assert!(!a.retry_answer(500, addr(1), t0), "only 502/503");
        assert!(!a.retry_answer(404, addr(1), t0));
        assert!(a.retry_answer(503, addr(1), t0));
        assert!(a.retry_answer(502, addr(2), t0));
        assert_eq!(a.avoid(), &[addr(1), addr(2)]);
        assert!(!a.would_retry_answer(t0), "two retries at most");
        assert!(!a.retry_answer(503, addr(3), t0));
    }

    #[test]
    fn answered_5xx_needs_another_endpoint() {
        let t0 = Instant::now();
        let mut a = Attempts::with_service(service(2, t0), true, true);
        assert!(a.retry_answer(503, addr(1), t0));
        assert!(!a.retry_answer(503, addr(2), t0), "every endpoint answered");
        let mut a = Attempts::with_service(service(1, t0), true, true);
        assert!(!a.retry_answer(503, addr(1), t0));
        let mut a = Attempts::with_service(None, true, true);
        assert!(!a.retry_answer(503, addr(1), t0), "a literal address");
    }

    #[test]
    fn answered_5xx_needs_idempotent_and_repeatable() {
        let t0 = Instant::now();
        let mut post = Attempts::with_service(service(3, t0), false, true);
        assert!(!post.would_retry_answer(t0));
        assert!(!post.retry_answer(503, addr(1), t0));
        let mut streamed = Attempts::with_service(service(3, t0), true, false);
        assert!(!streamed.retry_answer(503, addr(1), t0));
    }

    /// The budget (shared by the service's requests on a worker): spent,
    /// no retry; time refills it at 10 per second; requests add 20 %.
    #[test]
    fn budget_on_a_virtual_clock() {
        let t0 = Instant::now();
        let svc = service(3, t0);
        let b = svc.as_ref().unwrap().1.clone();
        while b.borrow().budget.withdraw(t0) {}
        let mut a = Attempts::with_service(svc.clone(), true, true);
        assert!(!a.would_retry_answer(t0), "budget spent");
        assert!(!a.retry_answer(503, addr(1), t0));
        // 100 ms at 10/s is one token; a request's deposit (0.2) was not.
        let later = t0 + Duration::from_millis(100);
        assert!(a.would_retry_answer(later));
        assert!(a.retry_answer(503, addr(1), later));
        assert!(!a.retry_answer(503, addr(2), later), "the token is spent");
        // Requests alone deposit nothing (an outage's failures fund no
        // retries); five answers that were not failures, one token.
        for _ in 0..5 {
            let _ = Attempts::with_service(svc.clone(), true, true);
        }
        let mut a = Attempts::with_service(svc.clone(), true, true);
        assert!(
            !a.retry_answer(502, addr(1), later),
            "no deposit per request"
        );
        for _ in 0..5 {
            b.borrow().budget.deposit();
        }
        assert!(a.retry_answer(502, addr(1), later), "deposits fund a retry");
    }

    /// An answer held for a retry takes its token when its head is seen,
    /// no earlier (a request waiting for its answer holds none): held, it
    /// is retried for sure; without a token it is not held at all (it
    /// goes to the client as it is).
    #[test]
    fn a_held_answer_is_paid_when_held() {
        let t0 = Instant::now();
        let svc = service(3, t0);
        let b = svc.as_ref().unwrap().1.clone();
        while b.borrow().budget.withdraw(t0) {}
        b.borrow().budget.refund();
        let mut a = Attempts::with_service(svc.clone(), true, true);
        let held = Held::new(None);
        assert!(a.hold_answer(t0, &held));
        assert!(b.borrow().budget.can_withdraw(t0), "nothing taken ahead");
        assert!(!held.take_for_retry(200, t0), "not a status to retry");
        assert!(held.take_for_retry(503, t0), "the token is taken");
        assert!(!b.borrow().budget.can_withdraw(t0));
        let other = Held::new(None);
        assert!(!a.hold_answer(t0, &other), "no token left to hold for");
        assert!(
            a.retry_held(503, addr(1), &held),
            "the held answer goes again"
        );
        // A token spent between the attempt and its answer: not held.
        b.borrow().budget.refund();
        let held = Held::new(None);
        assert!(a.hold_answer(t0, &held));
        assert!(b.borrow().budget.withdraw(t0));
        assert!(!held.take_for_retry(503, t0), "relayed as it is");
        assert!(!a.retry_held(503, addr(2), &held));
    }

    /// A route's policy: its statuses (any method), its limit, its gRPC
    /// codes; 502/503 still.
    #[test]
    fn route_policy_statuses_codes_and_limit() {
        let t0 = Instant::now();
        let policy = RetryPolicy {
            limit: 3,
            statuses: vec![(429, 429), (500, 500)],
            grpc: 1 << 14,
            timeout: None,
            backoff: None,
            max_request_bytes: 0,
        };
        let route = crate::route::RoutePolicy {
            retry: Some(Arc::new(policy)),
            ..Default::default()
        };
        let mut post = Attempts::with_service(service(6, t0), false, true).on_route(&route);
        assert!(Held::new(post.route()).wants(429));
        assert!(!Held::new(post.route()).wants(504));
        assert!(!post.retry_answer(504, addr(1), t0), "not its status");
        assert!(post.retry_answer(429, addr(1), t0), "any method");
        assert!(post.retry_answer(503, addr(2), t0));
        assert!(!post.retry_grpc(13, addr(3), t0), "not its code");
        assert!(post.retry_grpc(14, addr(3), t0));
        assert!(!post.retry_answer(500, addr(4), t0), "three retries");
        // Without a route: 502/503 only, idempotent only, twice.
        let mut get = Attempts::with_service(service(6, t0), true, true);
        assert!(!Held::new(get.route()).wants(500));
        assert!(!get.retry_grpc(14, addr(1), t0));
    }

    /// A route's retries go through the balancer again, as
    /// linkerd2-proxy's: endpoints that answered are avoided while another
    /// is left, then picked again, up to the route's limit; the proxy's own
    /// 502/503 retries never go back to one.
    #[test]
    fn route_retries_pick_answered_endpoints_when_no_other_is_left() {
        let t0 = Instant::now();
        let route = crate::route::RoutePolicy {
            retry: Some(Arc::new(RetryPolicy::on_5xx(3))),
            ..Default::default()
        };
        let mut one = Attempts::with_service(service(1, t0), false, true).on_route(&route);
        assert!(
            one.retry_answer(500, addr(1), t0),
            "one endpoint: again on it"
        );
        assert_eq!(one.avoid(), &[] as &[SocketAddr]);
        assert!(one.retry_answer(503, addr(1), t0));
        assert!(one.retry_answer(500, addr(1), t0));
        assert!(!one.retry_answer(500, addr(1), t0), "the route's limit");
        let mut two = Attempts::with_service(service(2, t0), false, true).on_route(&route);
        assert!(two.retry_answer(500, addr(1), t0));
        assert_eq!(two.avoid(), &[addr(1)], "the other first");
        assert!(two.retry_answer(500, addr(2), t0));
        assert_eq!(two.avoid(), &[] as &[SocketAddr], "then either");
        // Without a route, one endpoint is not asked twice.
        let mut own = Attempts::with_service(service(1, t0), true, true);
        assert!(!own.retry_answer(503, addr(1), t0));
    }

    /// The per-attempt timeout cuts an attempt short only while a retry
    /// could follow it (and never past the request's own deadline); a
    /// timed-out attempt goes again as an answer would.
    #[test]
    fn attempt_timeouts_while_a_retry_could_follow() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let policy = RetryPolicy {
            timeout: Some(ms(200)),
            backoff: Some(ringmesh_discovery::profile::RetryBackoff {
                min: ms(10),
                max: ms(40),
                jitter: 0.0,
            }),
            ..RetryPolicy::on_5xx(2)
        };
        let route = crate::route::RoutePolicy {
            retry: Some(Arc::new(policy)),
            ..Default::default()
        };
        let mut a = Attempts::with_service(service(3, t0), false, true).on_route(&route);
        assert_eq!(a.attempt_deadline(t0, None), (Some(t0 + ms(200)), true));
        assert_eq!(
            a.attempt_deadline(t0, Some(t0 + ms(100))),
            (Some(t0 + ms(100)), false),
            "the request's deadline comes first"
        );
        assert_eq!(
            a.attempt_deadline(t0, Some(t0 + ms(900))),
            (Some(t0 + ms(200)), true)
        );
        assert!(a.retry_timed_out(addr(1), t0));
        assert_eq!(a.backoff(), Some(ms(10)));
        assert!(a.retry_answer(503, addr(2), t0));
        assert_eq!(a.backoff(), Some(ms(20)), "doubled");
        // Every other endpoint answered: no retry could follow, no cut.
        assert_eq!(a.attempt_deadline(t0, None), (None, false));
        assert!(!a.retry_timed_out(addr(3), t0));
        // Without a per-attempt timeout, a timeout is final.
        let plain = crate::route::RoutePolicy {
            retry: Some(Arc::new(RetryPolicy::on_5xx(2))),
            ..Default::default()
        };
        let mut a = Attempts::with_service(service(3, t0), true, true).on_route(&plain);
        assert_eq!(a.attempt_deadline(t0, None), (None, false));
        assert!(!a.retry_timed_out(addr(1), t0));
        assert_eq!(a.backoff(), None);
    }

    #[test]
    fn stale_connection_once_when_repeatable() {
        let (unsent, sent) = (true, false);
        let mut a = Attempts::with_service(None, false, true);
        assert!(
            !a.retry_stale(false, unsent),
            "a new connection is not stale"
        );
        assert!(a.retry_stale(true, unsent), "any method, once, when unsent");
        assert!(!a.retry_stale(true, unsent));
        let mut streamed = Attempts::with_service(None, true, false);
        assert!(!streamed.retry_stale(true, unsent), "its body is gone");
        // Failed after it was written: a POST may have been worked on.
        let mut post = Attempts::with_service(None, false, true);
        assert!(!post.retry_stale(true, sent));
        let mut get = Attempts::with_service(None, true, true);
        assert!(get.retry_stale(true, sent), "idempotent: written or not");
    }

    #[test]
    fn unprocessed_streams_up_to_three_tries() {
        let mut a = Attempts::with_service(None, false, false);
        a.count_try();
        assert!(a.retry_unprocessed(false));
        assert!(!a.retry_unprocessed(true), "a streamed body was consumed");
        a.count_try();
        assert!(a.retry_unprocessed(false));
        a.count_try();
        assert!(!a.retry_unprocessed(false), "three tries in all");
    }
}
