//! One request's observer: every HTTP path (HTTP/1 → HTTP/1, HTTP/1 →
//! HTTP/2, HTTP/2 → HTTP/2, HTTP/2 → HTTP/1) reports here when the request
//! starts, where it goes, each attempt's response head and how the
//! endpoint did, retries, and how the request ended. Nothing else writes a
//! request's metrics, the balancer's latency and failure feedback, or the
//! retry counts; tap will be fed from here too.
//!
//! The balancer feedback itself is `feedback.rs`, which connections (the
//! L4 relays, and connecting for any path) report to directly.
//!
//! Must not: do I/O, or decide anything (routing and retries are decided
//! elsewhere; this only records what happened).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::sync::Arc;

use ringmesh_admin::telemetry::{Direction, HttpKey, NoTlsReason, ResponseClass, TlsStatus};
use ringmesh_balancer::OpenGuard;
use ringmesh_discovery::Service;
use ringmesh_protocols::h2guard::AnsweredStreams;

use crate::connect::dst_labels;
use crate::error::ProxyError;
use crate::feedback::record_outcome;
use crate::route::Dst;
use crate::worker::Worker;

/// A request in flight on one worker.
pub(crate) struct Observer<'w> {
    w: &'w Worker,
    key: HttpKey,
    started: Instant,
    /// The service routed to, when its endpoints label the request:
    /// outbound with an identity (their identities: `server_id`), or
    /// endpoints with labels of their own (`dst_pod` and the like).
    service: Option<Arc<Service>>,
    /// The service's balancer replica (its retry budget), when the request
    /// goes to a service.
    balancer: Option<Rc<std::cell::RefCell<ringmesh_balancer::Balancer>>>,
    /// Outbound and this proxy has an identity.
    originates_tls: bool,
    /// What the service's profile says of the request.
    route: crate::route::RoutePolicy,
    /// The client's address (tap's source).
    peer: SocketAddr,
    /// Some tap may want the request (`None` without taps: one branch).
    tap: Option<crate::tap::Pending>,
    /// Its access log line (inbound, with the log on).
    access: Option<Box<crate::access_log::Entry>>,
    /// One request too many for the worker's in-flight bound.
    shed: bool,
    /// Its head's size, counted in flight until the response's head (or
    /// its end).
    head_bytes: std::cell::Cell<usize>,
    /// Its response was counted ([`Observer::end`]).
    ended: bool,
    /// An HTTP/2 client's stream: told when answered (its cancel is then
    /// no rapid reset).
    on_answer: Option<(Rc<AnsweredStreams>, u32)>,
}

impl<'w> Observer<'w> {
    /// The request's head has arrived on a connection secured as
    /// `client_tls`. Inbound requests are labelled with it (`client_id`);
    /// outbound ones with how their upstream connection is secured
    /// (`server_id`), known once the endpoint is.
    /// `head_bytes`: the size of its head (counted against the worker's
    /// in-flight bound on head bytes).
    pub(crate) fn start(
        w: &'w Worker,
        direction: Direction,
        client_tls: &TlsStatus,
        peer: SocketAddr,
        head_bytes: usize,
    ) -> Self {
        let shed = !w.in_flight.enter(direction, head_bytes);
        let (tls, originates_tls) = match direction {
            Direction::Inbound => (client_tls.clone(), false),
            Direction::Outbound if w.pools.has_identity() => (
                TlsStatus::NoIdentity(NoTlsReason::NotProvidedByServiceDiscovery),
                true,
            ),
            Direction::Outbound => (TlsStatus::NO_PROXY_IDENTITY, false),
        };
        Self {
            w,
            key: HttpKey {
                direction,
                tls,
                authority: None,
                target: None,
                dst_labels: None,
                route: None,
                policy: None,
            },
            started: Instant::now(),
            service: None,
            balancer: None,
            originates_tls,
            route: crate::route::RoutePolicy::default(),
            peer,
            tap: None,
            access: None,
            shed,
            head_bytes: std::cell::Cell::new(head_bytes),
            ended: false,
            on_answer: None,
        }
    }

    /// The request is an HTTP/2 client's stream `id`: `answered` is told
    /// once it is answered.
    pub(crate) fn on_answer(&mut self, answered: (Rc<AnsweredStreams>, u32)) {
        self.on_answer = Some(answered);
    }

    /// It is answered (the upstream's response head came, or the proxy
    /// answers itself).
    fn answering(&self) {
        if let Some((set, id)) = &self.on_answer {
            set.mark(*id);
        }
    }

    /// The client's address (its connection's peer).
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The 503 to answer with when the request is one too many for the
    /// worker's in-flight bound (`LINKERD2_PROXY_*_MAX_IN_FLIGHT`).
    pub(crate) fn shed(&self) -> Option<crate::error::ProxyError> {
        self.shed.then(crate::error::ProxyError::overloaded)
    }

    /// The request's head, routed: for tap, with some tap installed that
    /// may want it, kept until its destination is known (nothing is copied
    /// for a request no tap can want: its head already rules it out); for
    /// the access log, an inbound request's line begins.
    pub(crate) fn request_head(&mut self, head: &dyn crate::tap::TapHead) {
        self.access_head(head);
        if let Some(taps) = self.w.taps.active() {
            if !taps.may_want(self.peer, head) {
                return;
            }
            self.tap = Some(self.w.taps.pending(taps, self.peer, head, self.started));
        }
    }

    /// An inbound request's access log line begins, as soon as its head is
    /// read: one the proxy refuses before routing it (denied, no route,
    /// rate-limited) is logged too.
    pub(crate) fn access_head(&mut self, head: &dyn crate::tap::TapHead) {
        if self.w.access_log.is_some()
            && self.key.direction == Direction::Inbound
            && self.access.is_none()
        {
            self.access_begin(head);
        }
    }

    /// The access log's line begins (out of line: the log is off on the
    /// hot path).
    #[cold]
    #[inline(never)]
    fn access_begin(&mut self, head: &dyn crate::tap::TapHead) {
        let Some(log) = &self.w.access_log else {
            return;
        };
        let client_id = match &self.key.tls {
            TlsStatus::Accepted { client_id } => client_id.as_deref(),
            _ => None,
        };
        self.access = Some(log.begin(self.peer, client_id, head, self.started));
    }

    /// The access log's line ends with `status`.
    #[cold]
    #[inline(never)]
    fn access_end(&mut self, status: u16, now: Instant) {
        if let (Some(e), Some(log)) = (self.access.take(), &self.w.access_log) {
            log.end(*e, status, now);
        }
    }

    /// Tap: the taps that match the request, now that its destination is
    /// known, see it start.
    fn tap_decide(&mut self, destination: SocketAddr) {
        let Some(p) = self.tap.as_mut() else {
            return;
        };
        let inbound = self.key.direction == Direction::Inbound;
        if !p.decide(
            destination,
            inbound,
            self.key.dst_labels.as_ref(),
            self.route.name.as_ref(),
            &self.key.tls,
        ) {
            if let Some(p) = self.tap.take() {
                p.discard();
            }
        }
    }

    /// The request matched a profile route (its timeout, its retries).
    pub(crate) fn set_route(&mut self, route: crate::route::RoutePolicy) {
        self.key.route = route.name.clone();
        self.route = route;
    }

    pub(crate) fn route(&self) -> &crate::route::RoutePolicy {
        &self.route
    }

    /// The request's deadline: the configured request timeout or its
    /// route's, whichever ends first.
    pub(crate) fn deadline(&self, configured: Option<std::time::Duration>) -> Option<Instant> {
        self.route.deadline(configured, self.started)
    }

    /// Counts an inbound request's authorization (linkerd2-proxy's
    /// `inbound_http_authz_{allow,deny}_total`); the request's series carry
    /// the verdict's server, route and authorization (`srv_*`, `route_*`,
    /// `authz_*`).
    pub(crate) fn authorized(&mut self, target: std::net::SocketAddr, v: &crate::authz::Verdict) {
        self.key.policy = Some(v.labels(target.port(), true));
        // (Known before routing: a refused request is labelled too.)
        self.key.target = Some(target);
        if v.is_audit() {
            crate::warn_limit::info_limited!(self.w, crate::warn_limit::Warning::Audit, client = %self.peer, %target, tls = ?self.key.tls, "Request allowed by the audit policy");
        }
        self.w
            .telemetry
            .authz
            .borrow_mut()
            .record(&crate::authz::key(
                ringmesh_admin::telemetry::AuthzProto::Http,
                target,
                v,
                &self.key.tls,
            ));
    }

    /// The labels the request (and connections made for it) count under.
    pub(crate) fn key(&self) -> &HttpKey {
        &self.key
    }

    /// The request's destination is known.
    pub(crate) fn routed(&mut self, target: &Dst) {
        match target {
            Dst::Service(svc, b) => {
                self.balancer = Some(b.clone());
                self.key.authority = Some(svc.name.to_shared());
                self.key.dst_labels = dst_labels(svc);
                if self.originates_tls || svc.per_endpoint() {
                    self.service = Some(svc.clone());
                }
            }
            // Known before connecting, so a failed connect is labelled too.
            Dst::Addr(addr) => {
                self.key.target = Some(*addr);
                if self.originates_tls && self.w.cfg.inbound.ips.contains(&addr.ip()) {
                    self.key.tls = TlsStatus::NoIdentity(NoTlsReason::Loopback);
                }
            }
        }
    }

    /// The endpoint the current attempt goes to.
    pub(crate) fn endpoint(&mut self, addr: SocketAddr) {
        self.key.target = Some(addr);
        // (Taken and put back: no reference count touched per request.)
        if let Some(svc) = self.service.take() {
            self.endpoint_of(&svc, addr);
            self.service = Some(svc);
        }
        if self.tap.is_some() {
            self.tap_decide(addr);
        }
    }

    /// The request failed before reaching an endpoint: its series are those
    /// of the endpoint it failed at, when the error says (a connection or a
    /// TLS handshake refused), as for a request that reached it.
    pub(crate) fn failed_at(&mut self, e: &crate::error::ProxyError) {
        if let Some(addr) = e.endpoint() {
            self.endpoint(addr);
        }
    }

    /// The labels and identity of `svc`'s endpoint at `addr`.
    fn endpoint_of(&mut self, svc: &Service, addr: SocketAddr) {
        let ep = svc.endpoint(addr);
        if self.originates_tls {
            self.key.tls = match ep.and_then(|e| e.identity.as_ref()) {
                Some(id) => TlsStatus::Connected {
                    server_id: id.to_shared(),
                },
                None if ep.is_some_and(|e| e.local) => TlsStatus::NoIdentity(NoTlsReason::Loopback),
                None => TlsStatus::NoIdentity(NoTlsReason::NotProvidedByServiceDiscovery),
            };
        }
        if svc.per_endpoint() {
            self.key.dst_labels = match ep.and_then(|e| e.labels.clone()) {
                Some(own) => Some(own),
                None => dst_labels(svc),
            };
        }
    }

    /// The authority requests to the endpoint at `addr` must carry
    /// instead of their own (the Destination API's `authority_override`).
    pub(crate) fn authority_override(&self, addr: SocketAddr) -> Option<&Arc<str>> {
        let svc = self.service.as_ref().filter(|s| s.per_endpoint())?;
        svc.endpoint(addr)?.authority_override.as_ref()
    }

    /// An attempt's response began `latency` after it was sent: the
    /// balancer learns the endpoint's latency (peak-EWMA).
    pub(crate) fn response_head(&self, ep: Option<&OpenGuard>, latency: Duration) {
        self.release_head();
        self.answering();
        if let Some(g) = ep {
            g.answered();
            crate::feedback::first_answer(g.endpoint(), latency);
        }
        if let Some(e) = &self.access {
            e.answered(latency);
        }
    }

    /// The request's head no longer counts in flight: it was answered (a
    /// client that leaves early, whose connection lingers a moment, does
    /// not hold the bound on head bytes meanwhile).
    pub(crate) fn release_head(&self) {
        let n = self.head_bytes.replace(0);
        if n > 0 {
            self.w.in_flight.release_head(n);
        }
    }

    /// The response's `content-length` (`value`, asked only with the
    /// access log on), for the log's `response_bytes`.
    #[inline]
    pub(crate) fn response_length(&self, value: impl FnOnce() -> Option<u64>) {
        if let Some(e) = &self.access {
            e.response_length(value());
        }
    }

    /// The taps that see this request, if any (told of its response's
    /// head, body and reset by the path relaying it).
    pub(crate) fn tap(&self) -> Option<&crate::tap::Pending> {
        self.tap.as_ref()
    }

    /// The response's stream was reset (`reason`): the taps see it end so.
    pub(crate) fn reset(&self, reason: monoio_http::h2::Reason) {
        if let Some(p) = &self.tap {
            p.reset(u32::from(reason));
        }
    }

    /// How the endpoint did, for failure accrual: 5xx answers and upstream
    /// failures count against it; anything else resets its count. A
    /// response that is not a failure pays into the service's retry
    /// budget, as linkerd2-proxy's retry policy deposits for a response it
    /// would not retry (so an outage's failures fund no retries).
    pub(crate) fn endpoint_outcome(&self, ep: Option<&OpenGuard>, ok: bool) {
        if let Some(g) = ep {
            record_outcome(g.endpoint(), ok);
        }
        if ok {
            if let Some(b) = self.balancer.as_ref().and_then(|b| b.try_borrow().ok()) {
                b.budget.deposit();
            }
        }
    }

    /// The endpoint answered 502/503 and the request goes again to another
    /// endpoint: against the endpoint, in the retry series and counts.
    pub(crate) fn retrying(&self, ep: &OpenGuard) {
        self.w.telemetry.note_retry(&self.key, ep.endpoint());
    }

    /// The request ended with a response counted as `class` (from the
    /// upstream, or one cut short after it started).
    pub(crate) fn end(mut self, mut class: ResponseClass) {
        self.ended = true;
        // An upstream's response, classified by its route's classes.
        if let (None, Some(classes)) = (class.error, self.route.classes.as_deref()) {
            if let Some(failure) = ringmesh_discovery::profile::classify(classes, class.status) {
                class.classified = Some(failure);
            }
        }
        // One clock read for the latency and the tap's end.
        let now = Instant::now();
        if let Some(p) = self.tap.take() {
            p.end(class.status, class.grpc_status, now);
        }
        if self.access.is_some() {
            self.access_end(class.status, now);
        }
        self.w
            .telemetry
            .record_response(&self.key, class, self.started, now);
    }

    /// The upstream reset the request's stream before any response: no
    /// response reached the client (its taps see the reset and no
    /// response head, its access log line status 0), and the metrics
    /// count it as `class`, a failure.
    pub(crate) fn refused(mut self, class: ResponseClass) {
        self.ended = true;
        let now = Instant::now();
        if let Some(p) = self.tap.take() {
            p.end(0, None, now);
        }
        if self.access.is_some() {
            self.access_end(0, now);
        }
        self.w
            .telemetry
            .record_response(&self.key, class, self.started, now);
    }

    /// The request ended with a response of `status` from upstream.
    pub(crate) fn end_status(self, status: u16) {
        self.end(ResponseClass::http(status, None));
    }

    /// The request ended with the proxy's own answer; `grpc`: the client
    /// speaks gRPC and got the answer's gRPC status; `body`: the bytes of
    /// the answer's body.
    pub(crate) fn answered(mut self, e: &ProxyError, grpc: bool, body: usize) {
        self.answering();
        // Tap: a request to a known address that failed before an endpoint
        // was reported (its connection failed) is seen with the proxy's
        // answer, as one that reached its endpoint would be.
        if let (Some(p), Some(addr)) = (self.tap.as_ref(), self.key.target) {
            if !p.is_decided() {
                self.tap_decide(addr);
            }
        }
        // A route filter's answer is counted on its route.
        if self.key.route.is_none() {
            self.key.route = e.route().cloned();
        }
        // The access log's `response_bytes` and tap's response length: the
        // answer's body.
        self.response_length(|| Some(body as u64));
        if let Some(p) = &self.tap {
            p.data(body);
        }
        self.end(ResponseClass {
            status: e.status_for(grpc),
            grpc_status: grpc.then(|| e.grpc_status()),
            error: (!e.by_filter()).then(|| e.label()),
            classified: None,
        });
    }
}

impl Drop for Observer<'_> {
    /// A tapped request that never ended (its client went away): its
    /// taps see it end without a response.
    fn drop(&mut self) {
        self.w
            .in_flight
            .leave(self.key.direction, self.head_bytes.get());
        // A routed request whose client went away before any response:
        // still a request (`request_total`), with no response counted.
        if !self.ended && (self.key.target.is_some() || self.key.authority.is_some()) {
            self.w
                .telemetry
                .record_request_only(&self.key, Instant::now());
        }
        if let Some(p) = self.tap.take() {
            p.end(0, None, Instant::now());
        }
        // Its access log line says status 0.
        if self.access.is_some() {
            self.access_end(0, Instant::now());
        }
    }
}
