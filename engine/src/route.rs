//! Where an HTTP request goes: the listener's fixed destination, or the
//! request's authority looked up in the discovery snapshot (asking the
//! control core to watch a name it has not seen), and the endpoint pick with
//! failover. Shared by the HTTP/1 and HTTP/2
//! proxies.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_balancer::{AccrualPolicy, Balancer, OpenGuard};
use ringmesh_discovery::profile::{
    pick_index, AccrualSpec, ProfileRoute, QueueSpec, RequestInfo, RetryPolicy, RouteFilter,
};
use ringmesh_discovery::{Authority, Service, Snapshot};
use ringmesh_protocols::http1::Authority as RequestAuthority;

use crate::error::ProxyError;
use crate::route_filter::Message;
use crate::worker::Routes;

/// How long a request waits for discovery to resolve a new authority.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);

/// An HTTP/1 request as route matching sees it.
pub(crate) struct H1Req<'a>(pub &'a ringmesh_protocols::http1::RequestHead);

impl RequestInfo for H1Req<'_> {
    fn method(&self) -> &str {
        self.0.method_str()
    }
    fn path(&self) -> &str {
        let p = self.0.path();
        p.split_once('?').map_or(p, |(p, _)| p)
    }
    fn host(&self) -> Option<&str> {
        self.0.authority().map(|a| a.host)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .headers()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    fn authority(&self) -> Option<&str> {
        self.0.authority().map(|a| a.raw)
    }
    fn path_and_query(&self) -> &str {
        self.0.path()
    }
}

impl crate::tap::TapHead for H1Req<'_> {
    fn method(&self) -> &str {
        self.0.method_str()
    }
    fn authority(&self) -> &str {
        self.0.authority().map_or("", |a| a.raw)
    }
    fn path(&self) -> &str {
        self.0.path()
    }
    fn scheme(&self) -> &str {
        "http"
    }
    fn headers(&self) -> crate::tap::Fields {
        crate::tap::h1_fields(self.0.headers())
    }
    fn field(&self, name: &str) -> Option<&[u8]> {
        RequestInfo::header(self, name)
    }
    fn version(&self) -> &'static str {
        self.0.version().as_str()
    }
}

/// An HTTP/2 request (or one converted to it) as route matching sees it.
pub(crate) struct H2Req<'a, B>(pub &'a http::Request<B>);

impl<B> RequestInfo for H2Req<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn path(&self) -> &str {
        self.0.uri().path()
    }
    fn host(&self) -> Option<&str> {
        self.0.uri().host().or_else(|| {
            let h = self.0.headers().get(http::header::HOST)?.to_str().ok()?;
            // Without the port (and the brackets of an IPv6 literal).
            Some(match h.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => h,
            })
        })
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.headers().get(name).map(|v| v.as_bytes())
    }
    fn authority(&self) -> Option<&str> {
        Some(crate::tap::TapHead::authority(self)).filter(|a| !a.is_empty())
    }
    fn path_and_query(&self) -> &str {
        self.0.uri().path_and_query().map_or("/", |p| p.as_str())
    }
    fn scheme(&self) -> &str {
        self.0.uri().scheme_str().unwrap_or("http")
    }
}

impl<B> crate::tap::TapHead for H2Req<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn authority(&self) -> &str {
        match self.0.uri().authority() {
            Some(a) => a.as_str(),
            None => self
                .0
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        }
    }
    fn path(&self) -> &str {
        self.0.uri().path_and_query().map_or("/", |p| p.as_str())
    }
    fn scheme(&self) -> &str {
        RequestInfo::scheme(self)
    }
    fn headers(&self) -> crate::tap::Fields {
        crate::tap::h2_fields(self.0.headers())
    }
    fn field(&self, name: &str) -> Option<&[u8]> {
        RequestInfo::header(self, name)
    }
    fn version(&self) -> &'static str {
        // An HTTP/1 request carried over HTTP/2 between proxies: the
        // version its client spoke (and its server will see).
        if let Some(orig) = self.0.headers().get("l5d-orig-proto") {
            return if orig.as_bytes() == b"HTTP/1.0" {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            };
        }
        match self.0.version() {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_11 => "HTTP/1.1",
            _ => "HTTP/2.0",
        }
    }
}

/// How requests on one connection find their destination.
pub(crate) enum HttpDst {
    /// Fixed by the listener: a redirected connection's original
    /// destination (a discovered service if one has that address).
    OrigDst(SocketAddr),
    /// An explicit forward's target.
    Forward(Authority),
    /// The local application (inbound), and whether the client may reach
    /// it (decided once per connection by the inbound policy).
    Local(SocketAddr, Box<crate::authz::Verdict>),
    /// The request's authority (absolute-form target or Host): a client
    /// using ringmesh as an explicit HTTP proxy.
    ByAuthority,
}

/// Where one request goes.
pub(crate) enum Dst {
    Service(Arc<Service>, Rc<RefCell<Balancer>>),
    Addr(SocketAddr),
}

/// The request's destination as its inbound route judges it, when the
/// port's server has HTTP routes (the connection's verdict otherwise
/// stands): who may send it, and the route's filters.
pub(crate) fn judged(dst: &HttpDst, req: &dyn RequestInfo) -> Option<HttpDst> {
    match dst {
        HttpDst::Local(addr, v) => v
            .for_request(req)
            .map(|v| HttpDst::Local(*addr, Box::new(v))),
        _ => None,
    }
}

/// What the service's profile says of one request: its route's timeout
/// and whether it may be retried (nothing without a profile or a
/// matching route).
#[derive(Clone, Debug, Default)]
pub(crate) struct RoutePolicy {
    pub timeout: Option<Duration>,
    /// Which failed requests go again (beyond 502/503 when idempotent).
    pub retry: Option<Arc<RetryPolicy>>,
    /// The route's name: requests are labelled `rt_route` with it.
    pub name: Option<Arc<str>>,
    /// The route honours Linkerd's `l5d-timeout` / `l5d-retry-*` request
    /// headers: they were applied, and are removed before the request goes
    /// upstream.
    pub l5d_headers: bool,
    /// Linkerd's ingress mode: the request has an `l5d-dst-override`
    /// (which chose its destination when it names one), removed before
    /// the request goes upstream.
    pub dst_override: bool,
    /// Linkerd's `l5d-require-id` (outbound): the identity the request's
    /// endpoint must have; the header is removed before the request goes
    /// upstream.
    pub require_id: Option<crate::l5d_headers::RequiredId>,
    /// The route's filters (`route_filter.rs`).
    pub filters: Option<Arc<[RouteFilter]>>,
    /// Which responses are failures (a ServiceProfile route's response
    /// classes); `None`: 5xx.
    pub classes: Option<Arc<[ringmesh_discovery::profile::ResponseClassRule]>>,
}

impl RoutePolicy {
    /// What `route` says of `req`, its `l5d-*` headers applied where the
    /// route allows them.
    fn of(route: &ProfileRoute, req: &dyn RequestInfo) -> Self {
        let (timeout, retry) = if route.l5d_headers {
            crate::l5d_headers::apply(req, route.timeout, route.retry.clone())
        } else {
            (route.timeout, route.retry.clone())
        };
        Self {
            timeout,
            retry,
            name: route.name.clone(),
            l5d_headers: route.l5d_headers,
            dst_override: false,
            require_id: None,
            filters: route.filters.clone(),
            classes: route.classes.clone(),
        }
    }

    /// The filters, when some header modifier among them changes `m`.
    pub(crate) fn edits(&self, m: Message) -> Option<&[RouteFilter]> {
        let f = self.filters.as_deref()?;
        crate::route_filter::edits(f, m)
            .next()
            .is_some()
            .then_some(f)
    }

    /// Applies the header modifiers for `m` to an HTTP/2 (or translated)
    /// message's fields.
    pub(crate) fn edit(&self, m: Message, h: &mut http::HeaderMap) {
        if let Some(f) = self.edits(m) {
            crate::route_filter::edit_map(f, m, h);
        }
    }

    /// Whether the route retries failed requests (any method).
    pub(crate) fn retryable(&self) -> bool {
        self.retry.is_some()
    }

    /// The largest request body kept whole so the request can go again:
    /// the route's retry policy's `max_request_bytes`, else 64 KiB (as
    /// linkerd2-proxy's). Larger bodies stream and are never retried.
    pub(crate) fn replay_limit(&self) -> u64 {
        self.retry.as_ref().map_or(
            ringmesh_discovery::profile::RetryPolicy::DEFAULT_MAX_REQUEST_BYTES,
            |r| r.max_request_bytes,
        )
    }

    /// The request's deadline: the configured request timeout or the
    /// route's, whichever ends first.
    pub(crate) fn deadline(
        &self,
        configured: Option<Duration>,
        started: Instant,
    ) -> Option<Instant> {
        match (configured, self.timeout) {
            (Some(a), Some(b)) => Some(started + a.min(b)),
            (a, b) => a.or(b).map(|t| started + t),
        }
    }
}

/// Picks the destination for one request: the service or address the
/// listener or the request names, or, when its profile (GetProfile, or an
/// outbound policy) says so, one of the backends of the route the request
/// matches or of the service's traffic split, drawn by weight; and what
/// the route says of the request.
pub(crate) async fn resolve(
    r: &Routes,
    dst: &HttpDst,
    authority: Option<RequestAuthority<'_>>,
    req: &dyn RequestInfo,
) -> Result<(Dst, RoutePolicy), ProxyError> {
    let overridden = dst_override(r, dst, req)?;
    let d = match overridden {
        Some(name) => resolve_logical(r, &HttpDst::ByAuthority, Some(name)).await?,
        None => resolve_logical(r, dst, authority).await?,
    };
    let (next, mut policy, accrual) = choose(r, d, req);
    // Removed whether it chose the destination or was ignored (no
    // authority), as linkerd2-proxy's ingress strips it from every request.
    policy.dst_override = overridden.is_some()
        || (r.ingress
            && matches!(dst, HttpDst::OrigDst(_) | HttpDst::ByAuthority)
            && req.header(crate::l5d_headers::DST_OVERRIDE).is_some());
    match dst {
        // An inbound route's filters.
        HttpDst::Local(_, v) => {
            if v.filters.is_some() {
                policy.filters = v.filters.clone();
            }
        }
        _ => policy.require_id = crate::l5d_headers::RequiredId::of(req),
    }
    // The route's failure injection or redirect answers before a backend
    // is waited for.
    if let Some(answer) = policy
        .filters
        .as_deref()
        .and_then(|f| crate::route_filter::answer(f, req))
    {
        return Err(answer.on_route(policy.name.clone()));
    }
    let dst = match next {
        Next::Ready(dst) => dst,
        Next::Queue {
            backend,
            queue,
            watch,
        } => Box::pin(await_endpoints(r, &backend, queue, watch))
            .await
            .map_err(|why| match why {
                Some(why) => ProxyError::unresolved_because(&backend, &why),
                None => ProxyError::no_endpoints(&backend),
            })?,
    };
    Ok((with_accrual(dst, accrual), policy))
}

/// In ingress mode, the authority a request's `l5d-dst-override` names
/// (a host name, port 80 unless given), for requests on the outbound
/// listeners; `None` without the header (the connection's destination, as
/// always). As linkerd2-proxy reads it: a value that is no URI authority
/// (a space, `%`) is ignored (the connection's destination); an
/// authority's userinfo is dropped; an authority whose host is no DNS name
/// (an address, `!`) or whose port is 0 or no number is refused (400).
fn dst_override<'a>(
    r: &Routes,
    dst: &HttpDst,
    req: &'a dyn RequestInfo,
) -> Result<Option<RequestAuthority<'a>>, ProxyError> {
    if !r.ingress || !matches!(dst, HttpDst::OrigDst(_) | HttpDst::ByAuthority) {
        return Ok(None);
    }
    let Some(value) = req.header(crate::l5d_headers::DST_OVERRIDE) else {
        return Ok(None);
    };
    let Some(raw) = std::str::from_utf8(value)
        .ok()
        .map(str::trim)
        .filter(|v| http::uri::Authority::try_from(*v).is_ok())
    else {
        return Ok(None);
    };
    let raw = raw.rsplit_once('@').map_or(raw, |(_, hostport)| hostport);
    let invalid = || ProxyError::malformed(400, "l5d-dst-override does not name a host");
    // A name, as linkerd2-proxy requires: a client of the ingress must not
    // steer the proxy to any address it likes.
    let is_name = |host: &str| {
        !host.is_empty()
            && host.parse::<std::net::IpAddr>().is_err()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match split_authority(raw, 80) {
        Some((host, port)) if port != 0 && is_name(host) => {
            Ok(Some(RequestAuthority { host, port, raw }))
        }
        _ => Err(invalid()),
    }
}

/// An opaque connection to `name`, a service with no endpoint: waits in
/// its queue, as a request does ([`await_endpoints`]), for one.
pub(crate) async fn await_service(
    r: &Routes,
    name: &Authority,
    queue: QueueSpec,
) -> Option<(Arc<Service>, Rc<RefCell<Balancer>>)> {
    match await_endpoints(r, name, queue, false).await {
        Ok(Dst::Service(svc, b)) => Some((svc, b)),
        _ => None,
    }
}

/// Where [`choose`] sends a request.
enum Next {
    Ready(Dst),
    /// A backend not resolved yet (`watch`), or with no endpoint: the
    /// request waits in its queue.
    Queue {
        backend: Authority,
        queue: QueueSpec,
        watch: bool,
    },
}

/// The profile's say on a request to `d`: where it goes, its route's
/// policy and the failure accrual for its endpoints. Synchronous: the
/// snapshot `resolve_logical` just refreshed is borrowed, not cloned.
fn choose(r: &Routes, d: Dst, req: &dyn RequestInfo) -> (Next, RoutePolicy, Option<AccrualSpec>) {
    let cache = r.snapshots.borrow();
    let snap = cache.get();
    let profile = match &d {
        Dst::Service(svc, _) => snap.profile(&svc.name),
        Dst::Addr(addr) => {
            let p = snap.profile_by_addr(*addr);
            if p.is_some() {
                // Its watch stays while requests use it.
                r.used_addrs.borrow_mut().insert(*addr);
            }
            p
        }
    };
    let Some(profile) = profile else {
        return (Next::Ready(d), RoutePolicy::default(), None);
    };
    let route = profile.route(req);
    let mut policy = route
        .map(|route| RoutePolicy::of(route, req))
        .unwrap_or_default();
    if route.is_none() {
        // An outbound policy's request that no route matches is answered
        // (404, or 500 for an invalid policy).
        if let Some(f) = &profile.unrouted {
            policy.filters = Some(f.clone());
        }
    }
    let draw = fastrand::f64();
    let picked = route.and_then(|route| Some((route, pick_index(&route.backends, draw)?)));
    // A backend with filters of its own: the route's and its own, merged
    // when the policy was read.
    if let Some(all) = picked.and_then(|(route, i)| route.backend_filters.get(i)?.as_ref()) {
        policy.filters = Some(all.clone());
    }
    let backend = picked
        .map(|(route, i)| &route.backends[i].0)
        .or_else(|| profile.split(draw));
    let next = match backend {
        None => Next::Ready(d),
        Some(backend) if is_target(&d, backend) => Next::Ready(d),
        Some(backend) => match (snap.service(backend), backend.socket_addr()) {
            (Some(b), _) if !b.endpoints.is_empty() => {
                if !r.failing_fast.borrow().is_empty() {
                    r.failing_fast.borrow_mut().remove(backend);
                }
                Next::Ready(Dst::Service(b.clone(), r.balancer(b)))
            }
            // A backend that forwards to an address.
            (None, Some(addr)) => Next::Ready(Dst::Addr(addr)),
            (found, _) => Next::Queue {
                backend: backend.clone(),
                queue: profile.queue(backend).unwrap_or(QueueSpec {
                    capacity: r.queue_capacity,
                    failfast: r.failfast_timeout,
                }),
                watch: found.is_none(),
            },
        },
    };
    (next, policy, profile.accrual)
}

/// The policy's failure accrual governs the endpoints its requests go to
/// (the last policy to route there wins, when several do).
fn with_accrual(dst: Dst, accrual: Option<AccrualSpec>) -> Dst {
    if let (Some(a), Dst::Service(_, b)) = (accrual, &dst) {
        b.borrow_mut().set_accrual(AccrualPolicy {
            consecutive: a.consecutive,
            min_backoff: a.min_backoff,
            max_backoff: a.max_backoff,
            jitter: a.jitter,
        });
    }
    dst
}

/// Whether `backend` names the target `d` itself.
fn is_target(d: &Dst, backend: &Authority) -> bool {
    match d {
        Dst::Service(svc, _) => svc.name == *backend,
        Dst::Addr(addr) => backend.socket_addr() == Some(*addr),
    }
}

/// The destination the listener or the request names.
async fn resolve_logical(
    r: &Routes,
    dst: &HttpDst,
    authority: Option<RequestAuthority<'_>>,
) -> Result<Dst, ProxyError> {
    match resolve_now(r, dst, authority).await? {
        Dst::Service(svc, b) if svc.endpoints.is_empty() => {
            // Still empty after the wait: returned as is, so the request is
            // labelled with the service and fails as having no endpoints.
            // Boxed, as the wait below: the future of every request
            // would otherwise carry a timer's room (its size is copied
            // per request).
            let queue = QueueSpec {
                capacity: r.queue_capacity,
                failfast: r.failfast_timeout,
            };
            match Box::pin(await_endpoints(r, &svc.name, queue, false)).await {
                Ok(d) => Ok(d),
                Err(Some(why)) => Err(ProxyError::unresolved_because(&svc.name, &why)),
                Err(None) => Ok(Dst::Service(svc, b)),
            }
        }
        d => {
            if let Dst::Service(svc, _) = &d {
                r.failing_fast.borrow_mut().remove(&svc.name);
            }
            Ok(d)
        }
    }
}

/// Fail-fast (linkerd2-proxy's): a request for a service with no endpoint
/// waits in the service's bounded queue (per core) for one to appear, up
/// to the queue's fail-fast timeout. When that runs out the service is
/// failing fast: its requests get 503 at once until an endpoint returns.
/// `watch`: the snapshot does not have the name yet; the control core is
/// asked for it. `Err(None)`: no endpoint (yet); `Err(Some(why))`: none,
/// for the reason its resolver gave (a DNS name that does not exist):
/// not waited for.
async fn await_endpoints(
    r: &Routes,
    name: &Authority,
    queue: QueueSpec,
    watch: bool,
) -> Result<Dst, Option<Arc<str>>> {
    let unresolved = |snap: &Snapshot| -> Option<Arc<str>> {
        snap.service(name)
            .filter(|svc| svc.endpoints.is_empty())
            .and_then(|svc| svc.unresolved())
            .map(Arc::from)
    };
    if let Some(why) = unresolved(&r.snapshot()) {
        return Err(Some(why));
    }
    if r.failing_fast.borrow().contains(name) {
        return Err(None);
    }
    let waiting = r.queued.borrow().get(name).copied().unwrap_or(0);
    if waiting >= queue.capacity {
        tracing::debug!(service = %name, capacity = queue.capacity, "fail-fast queue full");
        return Err(None);
    }
    if watch {
        let _ = r
            .control
            .send(crate::control::ControlMsg::Watch(name.clone()));
    }
    *r.queued.borrow_mut().entry(name.clone()).or_default() += 1;
    let deadline = Instant::now() + queue.failfast;
    let found = loop {
        let snap = r.snapshot();
        match snap.service(name) {
            Some(svc) if !svc.endpoints.is_empty() => {
                break Ok(Dst::Service(svc.clone(), r.balancer(svc)))
            }
            Some(svc) if svc.unresolved().is_some() => break Err(unresolved(&snap)),
            _ if Instant::now() >= deadline => break Err(None),
            _ => {}
        }
        drop(snap);
        monoio::time::sleep(Duration::from_millis(10)).await;
    };
    {
        let mut queued = r.queued.borrow_mut();
        match queued.get_mut(name) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                queued.remove(name);
            }
        }
    }
    match &found {
        Ok(_) => {
            r.failing_fast.borrow_mut().remove(name);
        }
        // Not a fail-fast: the next request looks at the reason again.
        Err(Some(_)) => {}
        Err(None) => {
            tracing::warn!(service = %name, "no endpoints within the fail-fast timeout; failing fast until one appears");
            r.failing_fast.borrow_mut().insert(name.clone());
        }
    }
    found
}

/// The destination as the current snapshot has it (waiting, bounded, only
/// for a name discovery has not seen yet).
async fn resolve_now(
    r: &Routes,
    dst: &HttpDst,
    authority: Option<RequestAuthority<'_>>,
) -> Result<Dst, ProxyError> {
    let mut snap = r.snapshot();
    // A literal address the control plane knows of (its networks): asked
    // about and waited for (bounded) the first time.
    // (Nothing to look at without a control plane: no parsing per request.)
    let literal = match dst {
        _ if !r.discovers() => None,
        HttpDst::OrigDst(_) | HttpDst::Local(..) => None,
        HttpDst::Forward(name) => name.socket_addr(),
        HttpDst::ByAuthority => authority.as_ref().and_then(|a| {
            let host = a.host.trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = host.parse().ok()?;
            Some(SocketAddr::new(ip, a.port))
        }),
    };
    if let Some(addr) = literal.filter(|a| r.must_discover(*a)) {
        drop(snap);
        Box::pin(await_addr(r, addr)).await;
        snap = r.snapshot();
    }
    let by_addr = |addr: SocketAddr| match snap.service_by_addr(addr) {
        Some(svc) => Dst::Service(svc.clone(), r.balancer(svc)),
        None => Dst::Addr(addr),
    };
    match dst {
        HttpDst::OrigDst(addr) => Ok(by_addr(*addr)),
        HttpDst::Local(addr, v) if v.allowed => Ok(Dst::Addr(*addr)),
        HttpDst::Local(_, v) if v.no_route => Err(ProxyError::no_route()),
        HttpDst::Local(_, v) => Err(ProxyError::forbidden(v.reason)),
        HttpDst::Forward(name) => match snap.service(name) {
            Some(svc) => Ok(Dst::Service(svc.clone(), r.balancer(svc))),
            None => match name.socket_addr() {
                Some(addr) => Ok(by_addr(addr)),
                None => Err(ProxyError::unresolved(name.to_string())),
            },
        },
        HttpDst::ByAuthority => {
            let Some(auth) = authority else {
                return Err(ProxyError::unresolved("a request without an authority"));
            };
            let name = Authority::parse(&format!("{}:{}", auth.host, auth.port))
                .map_err(|_| ProxyError::unresolved(auth.raw.to_string()))?;
            if let Some(svc) = snap.service(&name) {
                return Ok(Dst::Service(svc.clone(), r.balancer(svc)));
            }
            if let Some(addr) = name.socket_addr() {
                return Ok(by_addr(addr));
            }
            drop(snap);
            Box::pin(await_watched(r, name)).await
        }
    }
}

/// The service `name`, from the snapshot, or watched and waited for
/// (bounded) when the snapshot does not have it yet.
pub(crate) async fn service_named(r: &Routes, name: &Authority) -> Result<Dst, ProxyError> {
    {
        let snap = r.snapshot();
        if let Some(svc) = snap.service(name) {
            return Ok(Dst::Service(svc.clone(), r.balancer(svc)));
        }
    }
    Box::pin(await_watched(r, name.clone())).await
}

/// A name discovery has not seen: asks the control core, waits (bounded)
/// for the snapshot to carry it. Asked again every [`WATCH_AGAIN`] while
/// it waits: a name whose first answer is slow (a nameserver that takes
/// seconds) is kept watched by the requests waiting for it, not dropped
/// as idle before it answers.
async fn await_watched(r: &Routes, name: Authority) -> Result<Dst, ProxyError> {
    let watch = || {
        let _ = r
            .control
            .send(crate::control::ControlMsg::Watch(name.clone()));
    };
    watch();
    let start = Instant::now();
    let (deadline, mut again) = (start + RESOLVE_WAIT, start + WATCH_AGAIN);
    loop {
        monoio::time::sleep(Duration::from_millis(10)).await;
        let snap = r.snapshot();
        if let Some(svc) = snap.service(&name) {
            return Ok(Dst::Service(svc.clone(), r.balancer(svc)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ProxyError::unresolved(name.to_string()));
        }
        if now >= again {
            watch();
            again = now + WATCH_AGAIN;
        }
    }
}

/// How often a request waiting for a name's first answer says it still
/// wants it (well under the discovery idle timeout's 5 s default).
const WATCH_AGAIN: Duration = Duration::from_millis(500);

/// An original destination the Destination API knows of and the snapshot
/// does not have yet: asks the control core to watch it and waits
/// (bounded) for its answer. Without one the connection goes to the
/// address as it is.
pub(crate) async fn await_addr(r: &Routes, addr: SocketAddr) {
    let _ = r
        .control
        .send(crate::control::ControlMsg::Watch(Authority::from_addr(
            addr,
        )));
    let deadline = Instant::now() + RESOLVE_WAIT;
    while Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
        if r.known(addr) {
            return;
        }
    }
    tracing::debug!(%addr, "no answer from the Destination API in time; forwarding as is");
}

/// Picks endpoints of `svc` for one request (peak-EWMA P2C, skipping
/// `avoid`) and gets a connection from `connect` (pooled or new), trying
/// each endpoint at most once and [`MAX_CONNECT_ATTEMPTS`] in all. An endpoint that fails (a loop among
/// them: `connect::open` refuses this proxy's own listeners) counts toward
/// its ejection. The guard keeps the request in flight on the endpoint until
/// dropped.
pub(crate) async fn failover<T, F, Fut>(
    svc: &Service,
    balancer: &RefCell<Balancer>,
    avoid: &[SocketAddr],
    mut connect: F,
) -> Result<(T, SocketAddr, OpenGuard), ProxyError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProxyError>>,
{
    let mut tried: Vec<SocketAddr> = avoid.to_vec();
    let mut last = None;
    for _ in 0..MAX_CONNECT_ATTEMPTS {
        // (A statement, so the RefCell borrow ends before any await.) When
        // only endpoints to avoid are left (the service shrank since the
        // retry was allowed), one of them rather than no answer.
        let picked = {
            let b = balancer.borrow();
            b.pick_request(&tried)
                .or_else(|| b.pick_request(&tried[avoid.len()..]))
        };
        let Some(ep) = picked else {
            break;
        };
        let addr = ep.addr();
        let started = Instant::now();
        let guard = OpenGuard::request(ep, started);
        match connect(addr).await {
            Ok(conn) => {
                // Reached (a new connection or a pooled one): a past
                // failure's penalty is forgotten.
                guard.endpoint().connect_succeeded(Instant::now());
                return Ok((conn, addr, guard));
            }
            // Out of descriptors or memory here: every endpoint would fail
            // alike, and none is to blame. The endpoint picked is not the
            // identity the request requires: the request fails, as
            // linkerd2-proxy's, and the endpoint is not to blame either.
            Err(e) if e.proxy_exhausted() || e.is_identity_required() => return Err(e),
            Err(e) => {
                crate::feedback::connect_failed(guard.endpoint(), started.elapsed());
                tracing::debug!(endpoint = %addr, error = e.reason(), "endpoint failed; trying another");
                tried.push(addr);
                last = Some(e.at(addr));
            }
        }
    }
    Err(last.unwrap_or_else(|| match svc.unresolved() {
        Some(why) => ProxyError::unresolved_because(&svc.name, why),
        None => ProxyError::no_endpoints(&svc.name),
    }))
}

/// Endpoints one request tries to connect to at most: a service whose
/// every endpoint refuses (a DNS answer of thousands of dead addresses)
/// costs a request a few connects, not one per endpoint (4,000 took a
/// worker 7 s). Failed endpoints are ejected meanwhile, so the next
/// requests skip them.
const MAX_CONNECT_ATTEMPTS: usize = 8;

/// `host[:port]` → host (brackets kept for IPv6) and port.
pub(crate) fn split_authority(a: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &a[..end + 2];
        return match &rest[end + 1..] {
            "" => Some((host, default_port)),
            p => p.strip_prefix(':')?.parse().ok().map(|p| (host, p)),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) => p.parse().ok().map(|p| (h, p)),
        None => Some((a, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use ringmesh_discovery::Endpoint;

    use super::*;

    /// A service whose every endpoint refuses: one request tries a few of
    /// them, not all (each a connect, for thousands of endpoints).
    #[test]
    fn a_request_tries_a_few_endpoints_not_all() {
        let addrs: Vec<SocketAddr> = (1..=50)
            .map(|i| format!("10.0.0.{i}:80").parse().unwrap())
            .collect();
        let svc = Service::new(
            Authority::parse("dead.test:80").unwrap(),
            addrs.iter().map(|a| Endpoint::unmeshed(*a, 1)).collect(),
            None,
            std::sync::Arc::new([]),
        );
        let balancer = RefCell::new(Balancer::new(addrs.iter().map(|a| (*a, 1))));
        let tries = Cell::new(0);
        let refused = || {
            tries.set(tries.get() + 1);
            let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            async move { Err::<(), _>(ProxyError::connect(&e)) }
        };
        let r = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(failover(&svc, &balancer, &[], |_| refused()));
        assert!(r.is_err());
        assert_eq!(tries.get(), MAX_CONNECT_ATTEMPTS);
    }
}
