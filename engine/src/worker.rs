//! A worker's context: what its connections and requests use of it — its
//! balancer replicas (kept in step with the discovery snapshot), pools,
//! buffers, metric shards, counters and settings. The thread that runs it
//! (listeners, accept loops, messages, drain) is `run.rs`. Other threads
//! reach a worker only through its message channel; it reads discovery only
//! through its [`SnapshotCache`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_admin::telemetry::{
    Direction, HttpKey, HttpShard, KeyedState, ResponseClass, TcpShard, WorkerStats,
};
use ringmesh_balancer::{AccrualPolicy, Balancer, EndpointState, RetryBudget};
use ringmesh_discovery::profile::RetryBudgetSpec;
use ringmesh_discovery::{Authority, Service, Snapshot, SnapshotCache};
use ringmesh_protocols::buffer::BufferPool;
use ringmesh_protocols::tcp::RelayCounters;

use crate::config::Config;
use crate::control::ControlSender;
use crate::feedback::record_outcome;
use crate::identity::IdentityCache;
use crate::policy::POLICY_WAIT;
use crate::pool::Pool;
use crate::server_first::ServerFirst;
use crate::stop::Stop;
use crate::undecided::UndecidedSet;
use crate::warn_limit::WarnLimit;
use ringmesh_identity::TlsConfigs;

/// A worker's replica of one service's balancer, rebuilt only when the
/// service's entry in the snapshot changes.
/// How long a draining worker still waits for a request on an idle
/// keep-alive connection: one already sent is served, with
/// `Connection: close`, instead of meeting a closed socket.
pub(crate) const DRAIN_LAST_LOOK: Duration = Duration::from_millis(500);

pub(crate) struct Replica {
    service: Arc<Service>,
    pub balancer: Rc<RefCell<Balancer>>,
    /// The retry budget the service's profile set, as applied.
    budget: Option<RetryBudgetSpec>,
    /// A request used the service since the last usage report.
    used: Cell<bool>,
}

impl Replica {
    /// Takes `svc`'s endpoints; those it no longer lists go to `gone`.
    fn update(&mut self, svc: &Arc<Service>, gone: &mut Vec<SocketAddr>) {
        let mut b = self.balancer.borrow_mut();
        let before = gone.len();
        gone.extend(b.endpoints().iter().map(|e| e.addr()));
        b.update(endpoints(svc));
        let now = b.endpoints();
        // A large set is indexed once (linear, as the balancer's update).
        if now.len() > 32 {
            let kept: std::collections::HashSet<SocketAddr> =
                now.iter().map(|e| e.addr()).collect();
            retain_from(gone, before, |a| !kept.contains(a));
        } else {
            retain_from(gone, before, |a| !now.iter().any(|e| e.addr() == *a));
        }
        drop(b);
        self.service = svc.clone();
    }

    /// Applies the profile's retry budget when it changed (the default
    /// one, 20 % plus 10 per second over 10 s, without). The floor and its
    /// reserve are the process's, shared evenly by its `workers` (each
    /// worker's requests deposit in its own share).
    fn sync_budget(&mut self, spec: Option<RetryBudgetSpec>, workers: usize) {
        if self.budget == spec {
            return;
        }
        self.budget = spec;
        let (ratio, min, ttl) = spec.map_or((0.2, 10.0, Duration::from_secs(10)), |s| {
            (f64::from(s.ratio), f64::from(s.min_per_second), s.ttl)
        });
        let min = min / workers.max(1) as f64;
        self.balancer.borrow_mut().budget = RetryBudget::new(ratio, min, ttl, Instant::now());
    }
}

/// A worker's context, in separately owned parts: functions take the part
/// they use (`route` takes [`Routes`], the pools' users [`Pools`], the
/// observer [`Telemetry`]).
pub(crate) struct Worker {
    pub id: usize,
    pub cfg: Config,
    /// Discovery's view and the balancer replicas.
    pub routes: Routes,
    /// Buffers, request scratch and upstream connections.
    pub pools: Pools,
    /// Counters and metric shards (this worker is their only writer).
    pub telemetry: Telemetry,
    /// Connections still detecting, and servers that speak first.
    pub detection: Detection,
    /// The taps installed now (tap's `Observe`).
    pub taps: crate::tap::WorkerTaps,
    /// Inbound requests' access log lines, when it is on.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// Responses waiting for their HTTP/2 client's window, and the bound
    /// on what they hold.
    pub stalls: crate::stall::Stalls,
    /// Requests in flight, and their bound (load shedding).
    pub in_flight: InFlight,
    /// Set when the worker starts draining.
    pub stop: Stop,
    /// Set at the drain's last look (`DRAIN_LAST_LOOK` after `stop`): idle
    /// keep-alive connections close then, so a request already on its way
    /// when the drain began is still served (with `Connection: close`).
    pub close_idle: Stop,
}

/// HTTP requests in flight on this worker by direction (inbound, outbound)
/// and the most each may have: this worker's share of
/// `LINKERD2_PROXY_*_MAX_IN_FLIGHT`. A request past it is answered 503 at
/// once, as linkerd2-proxy sheds load, so a flood of requests that never
/// finish cannot hold without bound what requests hold.
pub(crate) struct InFlight {
    now: [Cell<usize>; 2],
    max: [usize; 2],
    /// Bytes of their heads, and the most they may come to
    /// (`RINGMESH_HTTP_MAX_IN_FLIGHT_HEAD_BYTES`'s share).
    head_bytes: Cell<usize>,
    max_head_bytes: usize,
    /// The most in flight (both sides) since [`Self::take_peak`].
    peak: Cell<usize>,
}

impl InFlight {
    /// `limits` (inbound, outbound) shared between `workers`, rounded up.
    pub(crate) fn new(limits: [usize; 2], head_bytes: usize, workers: usize) -> Self {
        let share = |n: usize| n.div_ceil(workers.max(1)).max(1);
        Self {
            now: Default::default(),
            max: [share(limits[0]), share(limits[1])],
            head_bytes: Cell::new(0),
            max_head_bytes: share(head_bytes),
            peak: Cell::new(0),
        }
    }

    /// Requests in flight now (both sides).
    pub(crate) fn now(&self) -> usize {
        self.now[0].get() + self.now[1].get()
    }

    /// The most requests in flight since the last call; starts again from
    /// now.
    pub(crate) fn take_peak(&self) -> usize {
        self.peak.replace(self.now())
    }

    /// A request begins; false when it is one too many (it still counts
    /// until [`Self::leave`]).
    pub(crate) fn enter(&self, d: Direction, head: usize) -> bool {
        let c = &self.now[crate::config::side_index(d)];
        c.set(c.get() + 1);
        self.peak.set(self.peak.get().max(self.now()));
        self.head_bytes.set(self.head_bytes.get() + head);
        c.get() <= self.max[crate::config::side_index(d)]
            && self.head_bytes.get() <= self.max_head_bytes
    }

    /// `head` bytes of a request's head no longer count (it was answered).
    pub(crate) fn release_head(&self, head: usize) {
        self.head_bytes
            .set(self.head_bytes.get().saturating_sub(head));
    }

    /// A request with a head of `head` bytes (still counted) ended.
    pub(crate) fn leave(&self, d: Direction, head: usize) {
        let c = &self.now[crate::config::side_index(d)];
        c.set(c.get().saturating_sub(1));
        self.head_bytes
            .set(self.head_bytes.get().saturating_sub(head));
    }
}

/// Where requests go: the discovery snapshot (read lock-free), the
/// balancer replicas kept in step with it, and fail-fast state.
pub(crate) struct Routes {
    pub(crate) snapshots: RefCell<SnapshotCache>,
    pub(crate) replicas: RefCell<HashMap<Authority, Replica, KeyedState>>,
    /// Every address this process listens on, for loop detection.
    pub own_listeners: Vec<crate::listen::OwnListener>,
    /// How many workers the process runs (they share its retry budgets).
    pub workers: usize,
    /// Asks the control core to watch a name the snapshot lacks.
    pub control: ControlSender,
    /// Services whose requests get 503 at once (no endpoint within the
    /// fail-fast timeout) until an endpoint appears.
    pub failing_fast: RefCell<std::collections::HashSet<Authority>>,
    /// Requests waiting for a service to get an endpoint, by service
    /// (a name leaves when none waits).
    pub queued: RefCell<HashMap<Authority, usize, KeyedState>>,
    /// Failure accrual for new replicas.
    pub accrual: AccrualPolicy,
    /// How long a request waits for a service with no endpoint to get one,
    /// and how many may wait so.
    pub failfast_timeout: std::time::Duration,
    pub queue_capacity: usize,
    /// Original destinations in these networks are looked up through the
    /// Destination API (empty without one)...
    pub discover_networks: Vec<ipnet::IpNet>,
    /// ... and, in these, through the outbound policy API.
    pub policy_networks: Vec<ipnet::IpNet>,
    /// Addresses with an outbound policy (and no service) requests used
    /// since the last usage report.
    pub used_addrs: RefCell<std::collections::HashSet<SocketAddr>>,
    /// Who may reach the application (inbound): the default policy...
    pub policy: crate::config::InboundPolicy,
    /// ... unless the policy API gave the port a server.
    pub policies: Option<RefCell<crate::policy::PolicyCache>>,
    /// Linkerd's ingress mode: outbound requests go where their
    /// `l5d-dst-override` says (`route::resolve`).
    pub ingress: bool,
    /// Endpoints that left every replica since [`Routes::take_removed`]:
    /// their pooled connections are closed (as linkerd2-proxy's balancer
    /// drops a removed endpoint's client), not left to their idle timeout.
    pub removed: RefCell<Vec<SocketAddr>>,
}

/// What connections and requests borrow and give back.
pub(crate) struct Pools {
    pub bufs: BufferPool,
    /// Idle HTTP/1 per-request states.
    pub h1_scratch: crate::pool::ScratchPool,
    /// Idle upstream HTTP/1 connections.
    pub h1: Pool,
    /// Upstream HTTP/2 connections (multiplexed).
    pub h2: crate::h2pool::Pool,
    /// This proxy's TLS configurations, published by the control core;
    /// empty until the proxy holds a certificate (every connection plain).
    identity: RefCell<IdentityCache>,
}

/// The worker's counters and metric shards.
#[derive(Default)]
pub(crate) struct Telemetry {
    pub accepted: Cell<u64>,
    pub open: Cell<u64>,
    /// The most connections open since memory was last given back.
    pub open_peak: Cell<u64>,
    /// HTTP requests handled (never reset, unlike evictable label sets).
    pub requests: Cell<u64>,
    /// Requests sent again to another endpoint after a 502/503.
    pub retries: Cell<u64>,
    /// How this worker's TCP relays received (multishot or not).
    pub relay_counters: RelayCounters,
    /// Connections relayed because their server spoke first (seen now, or
    /// remembered).
    pub server_first_relays: Cell<u64>,
    /// Accepted connections closed at once: descriptors near the limit
    /// (`fd_limit`).
    pub fd_refused: Cell<u64>,
    pub tcp: RefCell<TcpShard>,
    pub http: RefCell<HttpShard>,
    /// Inbound authorization outcomes.
    pub authz: RefCell<ringmesh_admin::telemetry::AuthzShard>,
    /// Connections the worker could not serve (`*_tcp_errors_total`).
    pub errors: RefCell<ringmesh_admin::telemetry::ErrorShard>,
    /// Label sets evicted as idle that no scrape took yet.
    pub evicted: RefCell<ringmesh_admin::telemetry::Evicted>,
    /// Warnings that can repeat per request or connection, rate-limited.
    pub warnings: WarnLimit,
}

/// Protocol detection's per-worker state.
pub(crate) struct Detection {
    /// Connections still detecting, capped (oldest closed first).
    pub undecided: Rc<UndecidedSet>,
    /// Destinations seen speaking first.
    pub server_first: RefCell<ServerFirst>,
}

impl Pools {
    /// The current TLS configurations (one atomic load when unchanged).
    pub(crate) fn tls(&self) -> Option<Arc<TlsConfigs>> {
        let mut cache = self.identity.borrow_mut();
        cache.refresh();
        cache.get().0.clone()
    }

    /// Whether a request requiring `required` (its `l5d-require-id`) may
    /// go to `ep`: the identity it would be reached by (mutual TLS to the
    /// endpoint's identity, when this proxy holds a certificate) is the
    /// one required. Nothing is looked at for a request without one.
    pub(crate) fn require(
        &self,
        required: Option<&crate::l5d_headers::RequiredId>,
        ep: &crate::connect::Endpoint,
    ) -> Result<(), crate::error::ProxyError> {
        let Some(required) = required else {
            return Ok(());
        };
        let found = ep.identity.as_ref().filter(|_| self.has_identity());
        required
            .allows(found.map(|n| n.as_str()))
            .map_err(|e| e.at(ep.addr))
    }

    /// Whether this proxy holds a certificate now.
    pub(crate) fn has_identity(&self) -> bool {
        let mut cache = self.identity.borrow_mut();
        cache.refresh();
        cache.get().0.is_some()
    }

    pub(crate) fn new(bufs: BufferPool, identity: IdentityCache, h1: Pool) -> Self {
        Self {
            bufs,
            h1_scratch: Default::default(),
            h1,
            h2: Default::default(),
            identity: RefCell::new(identity),
        }
    }
}

impl Routes {
    /// The current snapshot, picking up a newer one if the control core
    /// published it (one atomic load when nothing changed).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        let mut cache = self.snapshots.borrow_mut();
        if cache.refresh() {
            self.sync_replicas(cache.get());
        }
        cache.get().clone()
    }

    /// Whether some control-plane API is asked about original
    /// destinations (its networks are set).
    pub(crate) fn discovers(&self) -> bool {
        !(self.discover_networks.is_empty() && self.policy_networks.is_empty())
    }

    /// Whether connections to `addr` wait for the control plane: a target
    /// in the Destination API's networks the snapshot has no service for
    /// yet, or in the policy API's networks it has no policy for yet. Both
    /// answers are waited for: routing by the first alone could send a
    /// meshed target's first connections without its identity.
    pub(crate) fn must_discover(&self, addr: SocketAddr) -> bool {
        let within = |nets: &[ipnet::IpNet]| nets.iter().any(|n| n.contains(&addr.ip()));
        let (dst, policy) = (
            within(&self.discover_networks),
            within(&self.policy_networks),
        );
        if !dst && !policy {
            return false;
        }
        let snap = self.snapshot();
        (dst && snap.service_by_addr(addr).is_none())
            || (policy && snap.profile_by_addr(addr).is_none())
    }

    /// Whether discovery has every answer it waits for about `addr`.
    pub(crate) fn known(&self, addr: SocketAddr) -> bool {
        !self.must_discover(addr)
    }

    /// The balancer replica for a service in the current snapshot.
    pub(crate) fn balancer(&self, service: &Arc<Service>) -> Rc<RefCell<Balancer>> {
        let mut replicas = self.replicas.borrow_mut();
        let replica = replicas.entry(service.name.clone()).or_insert_with(|| {
            let mut r = Replica {
                service: service.clone(),
                balancer: Rc::new(RefCell::new(Balancer::with_accrual(
                    endpoints(service),
                    self.accrual,
                ))),
                budget: None,
                used: Cell::new(false),
            };
            let snap = self.snapshots.borrow();
            r.sync_budget(
                snap.get()
                    .profile(&service.name)
                    .and_then(|p| p.retry_budget),
                self.workers,
            );
            r
        });
        let mut gone = Vec::new();
        if !Arc::ptr_eq(&replica.service, service) {
            replica.update(service, &mut gone);
        }
        replica.used.set(true);
        let balancer = replica.balancer.clone();
        self.note_removed(&replicas, gone);
        balancer
    }

    /// The endpoints that left every replica since the last call (picking
    /// up a newer snapshot first).
    pub(crate) fn take_removed(&self) -> Vec<SocketAddr> {
        self.snapshot();
        std::mem::take(&mut self.removed.borrow_mut())
    }

    /// Keeps, of `gone` (endpoints some replica dropped), those no replica
    /// still has.
    fn note_removed(
        &self,
        replicas: &HashMap<Authority, Replica, KeyedState>,
        gone: Vec<SocketAddr>,
    ) {
        if gone.is_empty() {
            return;
        }
        // One pass over the replicas' endpoints, whatever the number gone.
        // (A balancer borrowed now, by a caller up the stack, is taken to
        // have them all: a connection is left to its idle timeout rather
        // than closed under a user.)
        let mut gone: std::collections::HashSet<SocketAddr> = gone.into_iter().collect();
        for r in replicas.values() {
            match r.balancer.try_borrow() {
                Ok(b) => b.endpoints().iter().for_each(|e| {
                    gone.remove(&e.addr());
                }),
                Err(_) => return,
            }
            if gone.is_empty() {
                return;
            }
        }
        self.removed.borrow_mut().extend(gone);
    }

    /// The services requests used since the last call (the control core
    /// drops watches nobody uses).
    pub(crate) fn take_used(&self) -> Vec<Authority> {
        let mut used: Vec<Authority> = self
            .replicas
            .borrow()
            .iter()
            .filter(|(_, r)| r.used.replace(false))
            .map(|(name, _)| name.clone())
            .collect();
        used.extend(
            self.used_addrs
                .borrow_mut()
                .drain()
                .map(Authority::from_addr),
        );
        used
    }

    /// Updates replicas to a new snapshot: endpoints that stay keep their
    /// state; services that are gone are dropped (their open connections
    /// keep their own references until they close).
    fn sync_replicas(&self, snap: &Snapshot) {
        let mut replicas = self.replicas.borrow_mut();
        let mut gone = Vec::new();
        replicas.retain(|name, replica| match snap.service(name) {
            None => {
                if let Ok(b) = replica.balancer.try_borrow() {
                    gone.extend(b.endpoints().iter().map(|e| e.addr()));
                }
                false
            }
            Some(svc) => {
                if !Arc::ptr_eq(&replica.service, svc) {
                    replica.update(svc, &mut gone);
                }
                replica.sync_budget(
                    snap.profile(name).and_then(|p| p.retry_budget),
                    self.workers,
                );
                true
            }
        });
        self.note_removed(&replicas, gone);
    }

    /// Whether a client at `client`, secured as `tls`, may reach the
    /// application's `port`: the port's server from the policy API, else
    /// the default policy. A port the policy API has not answered for yet
    /// is asked about, and waited for (at most [`POLICY_WAIT`]; past it the
    /// control core publishes the port as the default policy's).
    pub(crate) async fn authorize(
        &self,
        port: u16,
        client: std::net::IpAddr,
        tls: &ringmesh_admin::telemetry::TlsStatus,
    ) -> crate::authz::Verdict {
        match self.inbound_server(port).await {
            Some(server) => server.check(client, tls),
            None => self.by_default(port, client, tls),
        }
    }

    /// The default policy's verdict; with the policy API, provisional: a
    /// server it gives the port later judges the connection anew.
    fn by_default(
        &self,
        port: u16,
        client: std::net::IpAddr,
        tls: &ringmesh_admin::telemetry::TlsStatus,
    ) -> crate::authz::Verdict {
        let v = self.policy.check(port, client, tls);
        match self.policies {
            Some(_) => v.provisionally(client, tls),
            None => v,
        }
    }

    /// An inbound connection's verdict made anew when its port's server
    /// changed since it was made (the policy API's updates reach open
    /// connections: a revoked client is refused from its next request
    /// on, as linkerd2-proxy checks each request against the current
    /// policy), also when the verdict was the default policy's because the
    /// API had not answered yet; `None`: it stands. One atomic load and
    /// one lookup, and only with the policy API.
    pub(crate) fn revalidated(
        &self,
        port: u16,
        verdict: &crate::authz::Verdict,
    ) -> Option<crate::authz::Verdict> {
        if !verdict.may_change() {
            return None;
        }
        let cache = self.policies.as_ref()?;
        let mut c = cache.borrow_mut();
        c.refresh();
        match c.get().ports.get(&port)? {
            Some(current) => verdict.revalidated(current),
            // The API has no server for the port (any more).
            None => verdict.to_default(|client, tls| self.policy.check(port, client, tls)),
        }
    }

    /// The metric labels (`srv_*`) of the server of an inbound `port`: the
    /// policy API's `server`, else the default policy's.
    pub(crate) fn server_labels(
        &self,
        server: Option<&crate::authz::ServerPolicy>,
        port: u16,
    ) -> ringmesh_admin::telemetry::PolicyLabels {
        match server {
            Some(s) => s.labels(port),
            None => self.policy.server_labels(port),
        }
    }

    /// The policy API's server for an inbound `port`: `None` without the
    /// API, when it has none for the port, or when it did not answer
    /// within [`POLICY_WAIT`] (asked on first use).
    pub(crate) async fn inbound_server(
        &self,
        port: u16,
    ) -> Option<std::sync::Arc<crate::authz::ServerPolicy>> {
        let cache = self.policies.as_ref()?;
        let deadline = std::time::Instant::now() + POLICY_WAIT;
        let mut asked = false;
        loop {
            {
                let mut c = cache.borrow_mut();
                c.refresh();
                let policies = c.get();
                if let Some(server) = policies.ports.get(&port) {
                    return server.clone();
                }
                if policies.full {
                    return Some(crate::authz::ServerPolicy::unwatched());
                }
            }
            if !asked {
                let _ = self
                    .control
                    .send(crate::control::ControlMsg::WatchPort(port));
                asked = true;
            }
            if std::time::Instant::now() >= deadline {
                tracing::debug!(
                    port,
                    "no inbound policy in time; the default policy applies until it comes"
                );
                return None;
            }
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Whether connecting to `addr` would loop back into this process.
    pub(crate) fn is_own_listener(&self, addr: SocketAddr) -> bool {
        self.own_listeners.iter().any(|l| l.reached_by(addr))
    }
}

impl Telemetry {
    /// Counts one HTTP request and its response in this worker's shard,
    /// ended at `now` (one clock read for the latency and the label
    /// set's last use).
    pub(crate) fn record_response(
        &self,
        key: &HttpKey,
        class: ResponseClass,
        started: Instant,
        now: Instant,
    ) {
        let ms = now.saturating_duration_since(started).as_millis() as u64;
        self.requests.set(self.requests.get() + 1);
        self.http.borrow_mut().record_at(key, class, ms, now);
    }

    /// Counts a request that ended with no response.
    pub(crate) fn record_request_only(&self, key: &HttpKey, now: Instant) {
        self.http.borrow_mut().record_request_only(key, now);
    }

    /// Counts a request that `ep` answered 502/503 and that goes again to
    /// another endpoint: against the endpoint (failure accrual), in the
    /// destination's retry series and the worker's total.
    pub(crate) fn note_retry(&self, key: &HttpKey, ep: &EndpointState) {
        record_outcome(ep, false);
        self.retries.set(self.retries.get() + 1);
        self.http.borrow_mut().retried(key);
    }
}

impl Worker {
    /// When an upstream's response head must have arrived: the sooner of
    /// the response timeout (from now) and the request's own deadline.
    pub(crate) fn response_deadline(&self, request_deadline: Option<Instant>) -> Option<Instant> {
        let response = self.cfg.http.response_timeout.map(|t| Instant::now() + t);
        match (response, request_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once the worker is draining: finish what is in flight, take
    /// nothing new (HTTP connections close after their current response).
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_stopped()
    }

    pub(crate) fn stats(&self) -> WorkerStats {
        let uring = monoio::io::multishot::uring_stats().unwrap_or_default();
        let t = &self.telemetry;
        let pool = &self.pools.h1.counters;
        let undecided = &self.detection.undecided;
        WorkerStats {
            worker: self.id,
            accepted: t.accepted.get(),
            open: t.open.get(),
            requests: t.requests.get(),
            retries: t.retries.get(),
            ring_receives: t.relay_counters.ring_receives.get(),
            ring_exhausted: t.relay_counters.ring_exhausted.get(),
            relay_bulk_bytes: t.relay_counters.bulk_bytes.get() as u64,
            relay_bulk_refused: t.relay_counters.bulk_refused.get(),
            http1_stray_bytes: pool.stray_bytes.get(),
            http1_pool_closed: pool.closed_idle.get(),
            detect_undecided: undecided.len() as u64,
            detect_evicted: undecided.evicted.get(),
            server_first: t.server_first_relays.get(),
            fd_refused: t.fd_refused.get(),
            http2_stalled: self.stalls.len() as u64,
            http2_stalled_resets: self.stalls.resets(),
            uring_enters: uring.enters,
            uring_completions: uring.completions,
            uring_submissions: uring.submissions,
            busy_ns: thread_cpu_ns(),
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Keeps, of `v`'s items from `from` on, those `keep` says.
fn retain_from<T>(v: &mut Vec<T>, from: usize, mut keep: impl FnMut(&T) -> bool) {
    let mut i = from;
    while i < v.len() {
        if keep(&v[i]) {
            i += 1;
        } else {
            v.swap_remove(i);
        }
    }
}

fn endpoints(svc: &Service) -> impl Iterator<Item = (SocketAddr, u32)> + '_ {
    svc.endpoints.iter().map(|e| (e.addr, e.weight))
}

impl crate::h2guarded::Warnings for Worker {
    fn admit(&self, kind: crate::warn_limit::Warning) -> bool {
        self.telemetry.warnings.admit(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each worker's share is rounded up (never 0), and a request past it
    /// is refused while it lasts.
    #[test]
    fn in_flight_shares_and_bounds() {
        let f = InFlight::new([5, 1], 1 << 20, 2);
        assert_eq!(f.max, [3, 1]);
        assert!(f.enter(Direction::Outbound, 100));
        assert!(!f.enter(Direction::Outbound, 100));
        f.leave(Direction::Outbound, 100);
        f.leave(Direction::Outbound, 100);
        assert!(f.enter(Direction::Outbound, 100));
        assert!((0..3).all(|_| f.enter(Direction::Inbound, 100)));
        assert!(!f.enter(Direction::Inbound, 100));
    }

    /// Past the worker's share of head bytes a request is refused too,
    /// however few are in flight; room comes back as they end.
    #[test]
    fn in_flight_head_bytes_are_bounded() {
        let f = InFlight::new([100, 100], 1 << 20, 2);
        let big = 60 << 10;
        let fit = (512 << 10) / big;
        assert!((0..fit).all(|_| f.enter(Direction::Inbound, big)));
        assert!(!f.enter(Direction::Outbound, big));
        f.leave(Direction::Outbound, big);
        assert!(f.enter(Direction::Outbound, 200), "a small one still fits");
        f.leave(Direction::Inbound, big);
        assert!(f.enter(Direction::Inbound, big));
    }

    /// The retry budget's floor and reserve are the process's: each of
    /// `workers` gets its share (Linkerd's default 10/s over 10 s: 100
    /// retries at once for the process, not per worker), and a profile's
    /// budget replaces the default.
    #[test]
    fn retry_budgets_are_shared_by_the_workers() {
        let svc = Arc::new(Service::new(
            Authority::parse("web.test:80").unwrap(),
            vec![],
            None,
            Arc::new([]),
        ));
        let reserve = |spec, workers| {
            let mut r = Replica {
                service: svc.clone(),
                balancer: Rc::new(RefCell::new(Balancer::new(endpoints(&svc)))),
                budget: Some(RetryBudgetSpec {
                    ratio: 0.5,
                    min_per_second: 99,
                    ttl: Duration::from_secs(1),
                }),
                used: Cell::new(false),
            };
            r.sync_budget(spec, workers);
            let now = Instant::now();
            let b = r.balancer.borrow();
            (0..1000).take_while(|_| b.budget.withdraw(now)).count()
        };
        assert_eq!(reserve(None, 1), 100);
        assert_eq!(reserve(None, 2), 50);
        assert_eq!(reserve(None, 4), 25);
        let spec = RetryBudgetSpec {
            ratio: 0.2,
            min_per_second: 20,
            ttl: Duration::from_secs(3),
        };
        assert_eq!(reserve(Some(spec), 2), 30);
    }
}
