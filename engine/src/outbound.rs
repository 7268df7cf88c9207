//! Linkerd's outbound policy API (`OutboundPolicies.Watch`) as a
//! discovery resolver on the control core.
//!
//! # What it owns
//!
//! - Which targets it is asked about: original destinations (`ip:port`)
//!   in `LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS`, watched on first use, one
//!   `Watch { source_workload: LINKERD2_PROXY_POLICY_WORKLOAD, target }`
//!   stream each on the policy service's shared connection (`stream.rs`:
//!   limits, backoff, the last policy kept during an outage).
//! - The policy, reported to the [`Table`] as the target's routing
//!   [`Profile`] (it wins over GetProfile's for the same target):
//!   - the protocol: `opaque` (and `tls`) targets are relayed without
//!     detection; an opaque route (`opaque`'s, or `detect`'s for traffic
//!     that is not HTTP) sends each connection to one of its backends, or
//!     refuses it (`l4.rs`);
//!   - HTTP routes (`detect`'s HTTP/1 and HTTP/2 routes, or `http1`,
//!     `http2`) and gRPC routes: each rule one route, matching its hosts
//!     (exact, suffix), paths (exact, prefix, regex), methods and headers
//!     (exact, regex); gRPC service and method as the path;
//!   - each rule's backends: `first-available` (the first) or
//!     `random-available` (weighted), each a Destination.Get path (watched
//!     through Destination) or an address to forward to;
//!   - each rule's request timeout, and its retry policy (its limit, at
//!     most [`RetryPolicy::MAX_LIMIT`], its HTTP status ranges or gRPC codes;
//!     within the budget), and whether requests may adjust both with
//!     Linkerd's `l5d-*` headers (`l5d_headers.rs`).
//! - Each backend's queue (capacity, fail-fast timeout): how requests wait
//!   for a backend with no endpoint (`route.rs`).
//! - The protocol's failure accrual (consecutive failures), which the
//!   workers apply to the balancers of the services the target's requests
//!   go to (`route.rs`).
//! - A target the API has no policy for (`NOT_FOUND`, or no answer before
//!   the stream failed) is reported with an empty profile: it is known,
//!   and routed by Destination or as it is.
//!
//! - Each rule's filters (failure injection, redirects, header
//!   modifiers: `route_filter.rs`).
//!
//!   A backend's own filters apply, after the rule's, to the requests
//!   sent to it.
//!
//! - A `tls` target's routes, by the SNI of its ClientHello (`l4.rs`).
//!
//! Not yet: `authority` targets.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use linkerd2_proxy_api::destination::WeightedAddr;
use linkerd2_proxy_api::http_route::{self as hr, HttpRouteMatch};
use linkerd2_proxy_api::meta::{metadata, Metadata};
use linkerd2_proxy_api::outbound::{
    backend, failure_accrual, grpc_route, http_route, proxy_protocol, traffic_spec, Backend,
    FailureAccrual, GrpcRoute, HttpRoute, OutboundPolicy, TrafficSpec,
};
use ringmesh_discovery::channel::Subscriber;
use ringmesh_discovery::profile::{
    grpc_code, AccrualSpec, OpaqueRoute, Profile, ProfileRoute, QueueSpec, Refusal, RequestMatch,
    RetryBackoff, RetryPolicy, RouteFilter, TlsRoute, ValueMatch,
};
use ringmesh_discovery::{Authority, Resolver, Table};

use crate::config::{PolicyConfig, StreamLimits};
use crate::identity::IdentityState;
use crate::stream::{self, Client, StreamCounters};

const WATCH_PATH: &str = "/io.linkerd.proxy.outbound.OutboundPolicies/Watch";

/// The resolver, before it runs.
pub(crate) struct OutboundPolicyResolver {
    cfg: PolicyConfig,
    networks: Vec<ipnet::IpNet>,
    limits: StreamLimits,
    identity: Subscriber<IdentityState>,
    counters: Arc<StreamCounters>,
}

impl OutboundPolicyResolver {
    pub(crate) fn new(
        cfg: PolicyConfig,
        networks: Vec<ipnet::IpNet>,
        limits: StreamLimits,
        identity: Subscriber<IdentityState>,
        counters: Arc<StreamCounters>,
    ) -> Self {
        Self {
            cfg,
            networks,
            limits,
            identity,
            counters,
        }
    }

    /// The targets it is asked about.
    pub(crate) fn claims(networks: &[ipnet::IpNet], name: &Authority) -> bool {
        name.socket_addr()
            .is_some_and(|a| networks.iter().any(|n| n.contains(&a.ip())))
    }
}

impl Resolver for OutboundPolicyResolver {
    fn run(self: Box<Self>, table: Table) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            let this = Rc::new(*self);
            let client = Rc::new(Client::new(
                this.cfg.svc_addr.clone(),
                this.cfg.svc_name.clone(),
                &this.identity,
            ));
            let mut cursor = table.watch_cursor();
            loop {
                let seen = table.watched().generation();
                let names = table.watched_since(&mut cursor);
                for name in names {
                    let Some(addr) = name.socket_addr() else {
                        continue;
                    };
                    if Self::claims(&this.networks, &name) {
                        monoio::spawn(follow(
                            this.clone(),
                            client.clone(),
                            table.clone(),
                            name,
                            addr,
                        ));
                    }
                }
                table.watched().changed_since(seen).await;
            }
        })
    }
}

async fn follow(
    this: Rc<OutboundPolicyResolver>,
    client: Rc<Client>,
    table: Table,
    name: Authority,
    addr: SocketAddr,
) {
    let req = TrafficSpec {
        source_workload: this.cfg.workload.clone(),
        target: Some(traffic_spec::Target::Addr(addr.into())),
    };
    let Some(id) = table.watch_id(&name) else {
        return;
    };
    let answered = std::cell::Cell::new(false);
    let policy_stream = stream::follow(
        &client,
        WATCH_PATH,
        req,
        this.limits,
        &this.counters,
        &name,
        |p: OutboundPolicy, _fresh| {
            let profile = policy(&name, p);
            tracing::debug!(%name, routes = profile.routes.len(), opaque = profile.opaque, "outbound policy");
            answered.set(true);
            table.report_policy(&name, Arc::new(profile));
        },
        |error| {
            if !answered.get() {
                // No policy (NOT_FOUND, or no answer yet): known, empty.
                answered.set(true);
                table.report_policy(&name, Arc::new(Profile::default()));
            }
            // NOT_FOUND (the controller's answer for a pod's address, say)
            // stands, as linkerd2-proxy's: not asked again while the target
            // is watched.
            !stream::not_found(error)
        },
    );
    // Until the watch is dropped (idle).
    monoio::select! {
        _ = policy_stream => {}
        _ = table.dropped(&name, id) => {}
    }
}

/// The workers' form of an outbound policy; one linkerd2-proxy would
/// reject (`ClientPolicy::try_from`) becomes, as there, a policy that
/// answers every request 500 and refuses every connection: a policy read
/// in part could send traffic where it was not meant to go (a skipped
/// rule's requests to a broader one, an empty rule's to the target).
fn policy(target: &Authority, p: OutboundPolicy) -> Profile {
    match checked_policy(target, p) {
        Ok(profile) => profile,
        Err(why) => {
            tracing::warn!(%target, why, "invalid outbound policy; its requests are answered 500 and its connections refused");
            invalid_policy(&why)
        }
    }
}

/// The policy that stands for an invalid one (`why`, cut to
/// [`MAX_INVALID_REASON`] bytes: it goes into answers' headers).
fn invalid_policy(why: &str) -> Profile {
    let mut end = why.len().min(MAX_INVALID_REASON);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    let why: Arc<str> = why[..end].into();
    Profile {
        most_specific: true,
        unrouted: Some(Arc::new([RouteFilter::Refuse(Refusal::Invalid(
            why.clone(),
        ))])),
        opaque_route: Some(Arc::new(OpaqueRoute {
            name: None,
            backends: Vec::new(),
            backend_refused: Vec::new(),
            refused: Some(refused_by(Some(&why))),
        })),
        ..Profile::default()
    }
}

/// The longest reason an invalid policy's answers give.
const MAX_INVALID_REASON: usize = 256;

/// An outbound policy as the workers use it, or why it cannot be.
fn checked_policy(target: &Authority, p: OutboundPolicy) -> Result<Profile, String> {
    use proxy_protocol::Kind;
    p.metadata.as_ref().ok_or("missing metadata")?;
    let mut profile = Profile {
        most_specific: true,
        ..Profile::default()
    };
    let kind = p.protocol.and_then(|p| p.kind).ok_or("missing protocol")?;
    if let Kind::Detect(d) = &kind {
        d.timeout.ok_or("detect: missing timeout")?;
        if d.http1.is_none() || d.http2.is_none() || d.opaque.is_none() {
            return Err("detect: missing its http1, http2 or opaque part".into());
        }
    }
    profile.accrual = match &kind {
        Kind::Detect(d) => d
            .http1
            .as_ref()
            .and_then(|h| h.failure_accrual)
            .or_else(|| d.http2.as_ref().and_then(|h| h.failure_accrual)),
        Kind::Http1(h) => h.failure_accrual,
        Kind::Http2(h) => h.failure_accrual,
        Kind::Grpc(g) => g.failure_accrual,
        _ => None,
    }
    .map(accrual)
    .transpose()?
    .flatten();
    // A request no route matches is answered 404 (linkerd2-proxy's
    // `NoRoute`), never sent to the target.
    if matches!(
        kind,
        Kind::Detect(_) | Kind::Http1(_) | Kind::Http2(_) | Kind::Grpc(_)
    ) {
        profile.unrouted = Some(Arc::new([RouteFilter::Refuse(Refusal::NoRoute)]));
    }
    let queues = &mut profile.queues;
    profile.routes = match kind {
        Kind::Opaque(o) => {
            profile.opaque = true;
            profile.opaque_route = Some(Arc::new(opaque_route(target, o.routes)));
            Vec::new()
        }
        Kind::Tls(t) => {
            profile.opaque = true;
            profile.tls_routes = tls_routes(target, t.routes);
            // No route at all: connections go nowhere (linkerd2-proxy's
            // "no route"), as for an opaque policy without one.
            if profile.tls_routes.is_empty() {
                profile.opaque_route = Some(Arc::new(no_route(None)));
            }
            Vec::new()
        }
        Kind::Detect(d) => {
            // Traffic that is not HTTP goes by its opaque route.
            if let Some(o) = d.opaque {
                profile.opaque_route = Some(Arc::new(opaque_route(target, o.routes)));
            }
            let routes = d.http1.map(|h| h.routes).into_iter().flatten();
            let routes = routes.chain(d.http2.map(|h| h.routes).into_iter().flatten());
            every_route(routes, queues, http_routes)?
        }
        Kind::Http1(h) => every_route(h.routes, queues, http_routes)?,
        Kind::Http2(h) => every_route(h.routes, queues, http_routes)?,
        Kind::Grpc(g) => every_route(g.routes, queues, grpc_routes)?,
    };
    Ok(profile)
}

/// The backends' queues a policy gives, by backend.
type Queues = Vec<(Authority, QueueSpec)>;

/// Every route's rules as profile routes (`convert`: one route's); the
/// first route that cannot be used makes the policy invalid.
fn every_route<R>(
    routes: impl IntoIterator<Item = R>,
    queues: &mut Queues,
    convert: fn(R, &mut Queues) -> Result<Vec<ProfileRoute>, String>,
) -> Result<Vec<ProfileRoute>, String> {
    let mut all = Vec::new();
    for r in routes {
        all.extend(convert(r, queues)?);
    }
    Ok(all)
}

/// The refusal a connection route's filters make (its first filter:
/// `forbidden`, or `invalid` with its message), as a closure over a filter
/// list. The opaque and TLS protos have the same filters in types of their
/// own (`$route`: the `opaque_route` or `tls_route` module).
macro_rules! connection_refusal {
    ($route:ident) => {
        |filters: &[$route::Filter]| {
            filters.first().map(|f| match &f.kind {
                Some($route::filter::Kind::Forbidden(_)) => refused_by(None),
                Some($route::filter::Kind::Invalid(i)) => refused_by(Some(&i.message)),
                None => refused_by(Some("a filter of no kind")),
            })
        }
    };
}

/// An opaque or TLS rule's backends ([`ChosenBackend`]s) from its
/// distribution: `first-available` the first that names a target,
/// `random-available` each with its weight. The opaque and TLS protos have
/// the same shape in types of their own (`$dist`: the `distribution`
/// module of either); `$refusal` reads a backend's filters.
macro_rules! chosen_backends {
    ($dist:ident, $distribution:expr, $refusal:expr) => {
        match $distribution.and_then(|d| d.kind.as_ref()) {
            Some($dist::Kind::FirstAvailable(f)) => f
                .backends
                .iter()
                .find(|b| {
                    b.backend
                        .as_ref()
                        .is_some_and(|b| backend_authority(b).is_ok())
                })
                .map(|b| (b.backend.as_ref(), 1, $refusal(&b.filters)))
                .into_iter()
                .collect::<Vec<ChosenBackend<'_>>>(),
            Some($dist::Kind::RandomAvailable(r)) => r
                .backends
                .iter()
                .filter_map(|w| {
                    let rb = w.backend.as_ref()?;
                    Some((rb.backend.as_ref(), w.weight, $refusal(&rb.filters)))
                })
                .collect(),
            Some($dist::Kind::Empty(_)) | None => Vec::new(),
        }
    };
}

/// An opaque policy's route: linkerd2-proxy takes exactly one route of
/// one rule (more is refused there; here the first is used, logged). No
/// route, or no backend: connections go nowhere (closed), as
/// linkerd2-proxy's "no route". A `forbidden` or `invalid` filter refuses
/// them: the rule's every connection, a backend's those drawn to it.
fn opaque_route(
    target: &Authority,
    routes: Vec<linkerd2_proxy_api::outbound::OpaqueRoute>,
) -> OpaqueRoute {
    use linkerd2_proxy_api::outbound::opaque_route::{self, distribution};
    let refusal = connection_refusal!(opaque_route);
    if routes.len() > 1 {
        tracing::warn!(%target, routes = routes.len(), "an opaque policy should have one route; using the first");
    }
    let Some(route) = routes.into_iter().next() else {
        return no_route(None);
    };
    let name = route_name(route.metadata.as_ref());
    if route.rules.len() != 1 {
        tracing::warn!(%target, route = ?name, rules = route.rules.len(), "an opaque route should have one rule; using the first");
    }
    let Some(rule) = route.rules.into_iter().next() else {
        return no_route(name);
    };
    let chosen = chosen_backends!(distribution, rule.backends.as_ref(), refusal);
    connection_route(name, refusal(&rule.filters), chosen)
}

/// A TLS policy's routes, each by the SNIs it matches, its first rule
/// (linkerd2-proxy's TLS routes have one rule, as opaque ones).
fn tls_routes(
    target: &Authority,
    routes: Vec<linkerd2_proxy_api::outbound::TlsRoute>,
) -> Vec<TlsRoute> {
    use linkerd2_proxy_api::outbound::tls_route::{self, distribution};
    use linkerd2_proxy_api::tls_route::sni_match::Match;
    let refusal = connection_refusal!(tls_route);
    routes
        .into_iter()
        .map(|route| {
            let name = route_name(route.metadata.as_ref());
            // As an HTTP route's hosts: exact names, wildcard suffixes.
            let snis = (!route.snis.is_empty()).then(|| {
                RequestMatch::Any(
                    route
                        .snis
                        .iter()
                        .filter_map(|m| match m.r#match.as_ref()? {
                            Match::Exact(n) => Some(exact_host(n)),
                            Match::Suffix(s) => Some(host_suffix(&s.reverse_labels)),
                        })
                        .collect(),
                )
            });
            if route.rules.len() != 1 {
                tracing::warn!(%target, route = ?name, rules = route.rules.len(), "a TLS route should have one rule; using the first");
            }
            let Some(rule) = route.rules.into_iter().next() else {
                return TlsRoute {
                    snis,
                    route: no_route(name),
                };
            };
            let chosen = chosen_backends!(distribution, rule.backends.as_ref(), refusal);
            TlsRoute {
                snis,
                route: connection_route(name, refusal(&rule.filters), chosen),
            }
        })
        .collect()
}

/// Why a `forbidden` (`None`) or `invalid` filter refuses a connection.
fn refused_by(invalid: Option<&str>) -> Arc<str> {
    match invalid {
        None => Arc::from("forbidden by the route"),
        Some(why) => Arc::from(format!("the route is invalid: {why}")),
    }
}

/// A route that sends connections nowhere.
fn no_route(name: Option<Arc<str>>) -> OpaqueRoute {
    OpaqueRoute {
        name,
        backends: Vec::new(),
        backend_refused: Vec::new(),
        refused: None,
    }
}

/// A connection route's backend as the policy gives it: the backend (if
/// any), its weight, and why its own filter refuses connections.
type ChosenBackend<'a> = (Option<&'a Backend>, u32, Option<Arc<str>>);

/// An opaque or TLS route's rule: its refusal, and its backends with
/// their weights and refusals.
fn connection_route(
    name: Option<Arc<str>>,
    refused: Option<Arc<str>>,
    chosen: Vec<ChosenBackend<'_>>,
) -> OpaqueRoute {
    let mut backends = Vec::with_capacity(chosen.len());
    let mut backend_refused = Vec::with_capacity(chosen.len());
    for (b, weight, why) in chosen {
        // (Its queue is not taken: a connection waits for a backend's
        // endpoints as the proxy's TCP fail-fast settings say, and the
        // HTTP routes' queues for the same backend stay theirs.)
        let Some((authority, _queue)) = b.and_then(|b| backend_authority(b).ok()) else {
            continue;
        };
        backends.push((authority, weight));
        backend_refused.push(why);
    }
    if backend_refused.iter().all(Option::is_none) {
        backend_refused.clear();
    }
    OpaqueRoute {
        name,
        backends,
        backend_refused,
        refused,
    }
}

/// The policy's failure accrual: consecutive failures (also the unified
/// kind's; its success-rate threshold is not applied). No failures given
/// (0): never ejected. Without a backoff it is invalid (as in
/// linkerd2-proxy).
fn accrual(fa: FailureAccrual) -> Result<Option<AccrualSpec>, String> {
    use failure_accrual::Kind;
    let Some(kind) = fa.kind else {
        return Ok(None);
    };
    let (max, backoff) = match kind {
        Kind::ConsecutiveFailures(c) => (c.max_failures, c.backoff),
        Kind::Unified(u) => (u.max_consecutive_failures, u.backoff),
    };
    let backoff = backoff.ok_or("failure accrual without a backoff")?;
    let min = backoff
        .min_backoff
        .and_then(crate::destination::duration)
        .unwrap_or(std::time::Duration::from_secs(1));
    let max_backoff = backoff
        .max_backoff
        .and_then(crate::destination::duration)
        .unwrap_or(std::time::Duration::from_secs(60))
        .max(min);
    let jitter = if backoff.jitter_ratio.is_finite() {
        f64::from(backoff.jitter_ratio).clamp(0.0, 1.0)
    } else {
        0.0
    };
    Ok(Some(AccrualSpec {
        consecutive: if max == 0 { u32::MAX } else { max },
        min_backoff: min,
        max_backoff,
        jitter,
    }))
}

fn route_name(m: Option<&Metadata>) -> Option<Arc<str>> {
    match m?.kind.as_ref()? {
        metadata::Kind::Default(n) => Some(n.as_str().into()),
        metadata::Kind::Resource(r) => Some(r.name.as_str().into()),
    }
}

pub(crate) fn hosts(hosts: &[hr::HostMatch]) -> Result<Option<RequestMatch>, String> {
    if hosts.is_empty() {
        return Ok(None);
    }
    let any = hosts
        .iter()
        .map(|h| match h.r#match.as_ref() {
            Some(hr::host_match::Match::Exact(n)) => Ok(exact_host(n)),
            Some(hr::host_match::Match::Suffix(s)) => Ok(host_suffix(&s.reverse_labels)),
            None => Err("a host match without a match".to_string()),
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(RequestMatch::Any(any)))
}

/// A host (or SNI) match on one exact name.
fn exact_host(name: &str) -> RequestMatch {
    RequestMatch::Host {
        name: name.trim_end_matches('.').to_ascii_lowercase(),
        suffix: false,
    }
}

/// A host (or SNI) match on a wildcard: names under the one whose labels
/// the policy gives in reverse (`["com", "example"]`: `*.example.com`).
fn host_suffix(reverse_labels: &[String]) -> RequestMatch {
    let labels: Vec<&str> = reverse_labels.iter().rev().map(String::as_str).collect();
    RequestMatch::Host {
        name: labels.join(".").to_ascii_lowercase(),
        suffix: true,
    }
}

fn header(h: &hr::HeaderMatch) -> Result<RequestMatch, String> {
    let value = match &h.value {
        Some(hr::header_match::Value::Exact(v)) => ValueMatch::Exact(v.clone()),
        Some(hr::header_match::Value::Regex(re)) => {
            ValueMatch::Regex(crate::patterns::bytes_regex("header regex", re)?)
        }
        None => return Err(format!("header {:?} without a value", h.name)),
    };
    Ok(RequestMatch::Header(h.name.to_ascii_lowercase(), value))
}

/// One HTTP route match (all of its parts). Without a path, the prefix
/// `/`: the Gateway API's default, which ranks it as such.
pub(crate) fn http_match(m: &HttpRouteMatch) -> Result<RequestMatch, String> {
    let mut all = Vec::new();
    match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(hr::path_match::Kind::Exact(p)) => all.push(RequestMatch::PathExact(p.clone())),
        Some(hr::path_match::Kind::Prefix(p)) => all.push(RequestMatch::PathPrefix(p.clone())),
        Some(hr::path_match::Kind::Regex(re)) => all.push(RequestMatch::Path(
            crate::patterns::regex("path regex", re)?,
        )),
        None => all.push(RequestMatch::PathPrefix("/".into())),
    }
    if let Some(method) = m.method.clone() {
        let method = http::Method::try_from(method).map_err(|e| format!("method: {e}"))?;
        all.push(RequestMatch::Method(method.as_str().to_string()));
    }
    for h in &m.headers {
        all.push(header(h)?);
    }
    for q in &m.query_params {
        all.push(query_param(q)?);
    }
    Ok(RequestMatch::All(all))
}

/// A query parameter match: a name, and an exact value or a regex the
/// whole (decoded) value matches.
fn query_param(q: &hr::QueryParamMatch) -> Result<RequestMatch, String> {
    if q.name.is_empty() {
        return Err("a query parameter match without a name".into());
    }
    let value = match &q.value {
        Some(hr::query_param_match::Value::Exact(v)) => ValueMatch::Exact(v.clone().into_bytes()),
        Some(hr::query_param_match::Value::Regex(re)) => {
            ValueMatch::Regex(crate::patterns::bytes_regex("query parameter regex", re)?)
        }
        None => return Err(format!("query parameter {:?} without a value", q.name)),
    };
    Ok(RequestMatch::Query(q.name.clone(), value))
}

/// One gRPC route match: a `POST` to `/service/method` (either may be
/// left out, matching any) and its headers.
pub(crate) fn grpc_match(
    m: &linkerd2_proxy_api::grpc_route::GrpcRouteMatch,
) -> Result<RequestMatch, String> {
    let rpc = m.rpc.as_ref().ok_or("a gRPC match without an RPC match")?;
    let name = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut all = vec![RequestMatch::Rpc {
        service: name(&rpc.service),
        method: name(&rpc.method),
    }];
    for h in &m.headers {
        all.push(header(h)?);
    }
    Ok(RequestMatch::All(all))
}

/// A rule's condition: its hosts (if any) and any of its matches (none:
/// every request).
pub(crate) fn condition(hosts: Option<RequestMatch>, matches: Vec<RequestMatch>) -> RequestMatch {
    let mut all = Vec::new();
    all.extend(hosts);
    if !matches.is_empty() {
        all.push(RequestMatch::Any(matches));
    }
    RequestMatch::All(all)
}

/// What a backend names, and its queue settings (as the policy gives
/// them: with a zero fail-fast timeout, the proxy's own settings apply);
/// or why linkerd2-proxy would reject it (no metadata, no queue, nothing
/// it names).
fn backend_authority(b: &Backend) -> Result<(Authority, Option<QueueSpec>), String> {
    b.metadata.as_ref().ok_or("a backend without metadata")?;
    let q = b.queue.ok_or("a backend without a queue")?;
    let failfast = q
        .failfast_timeout
        .ok_or("a backend queue without a fail-fast timeout")?;
    let queue = crate::destination::duration(failfast)
        .filter(|d| !d.is_zero())
        .map(|failfast| QueueSpec {
            capacity: usize::try_from(q.capacity).unwrap_or(usize::MAX),
            failfast,
        });
    let name = match b.kind.as_ref().ok_or("a backend without a kind")? {
        backend::Kind::Balancer(p2c) => {
            let discovery = p2c
                .discovery
                .as_ref()
                .and_then(|d| d.kind.as_ref())
                .ok_or("a balancer without discovery")?;
            match discovery {
                backend::endpoint_discovery::Kind::Dst(d) => Authority::parse(&d.path)
                    .map_err(|_| format!("a backend's Destination path {:?}", d.path))?,
            }
        }
        backend::Kind::Forward(WeightedAddr { addr, .. }) => {
            let addr: SocketAddr = (*addr)
                .ok_or("a forward backend without an address")?
                .try_into()
                .map_err(|_| "a forward backend's address")?;
            Authority::from_addr(addr)
        }
    };
    Ok((name, queue))
}

/// A rule's backends, each with its weight, queue settings and filters;
/// `None`: its distribution is empty (no request can go anywhere).
type Backends = Vec<(Authority, u32, Option<QueueSpec>, Filters)>;

type Filters = Option<Arc<[ringmesh_discovery::profile::RouteFilter]>>;

/// `first-available`: the first backend (each must be valid).
fn first_available<'a>(
    backends: impl Iterator<Item = (Option<&'a Backend>, Result<Filters, String>)>,
) -> Result<Option<Backends>, String> {
    let mut first = None;
    for (b, filters) in backends {
        let (a, q) = backend_authority(b.ok_or("a route backend without a backend")?)?;
        let filters = filters?;
        first.get_or_insert((a, 1, q, filters));
    }
    let first = first.ok_or("a first-available distribution without backends")?;
    Ok(Some(vec![first]))
}

/// `random-available`: every backend (each must be valid), with its
/// weight; not all of weight 0.
fn random_available<'a>(
    backends: impl Iterator<Item = (Option<&'a Backend>, u32, Result<Filters, String>)>,
) -> Result<Option<Backends>, String> {
    let mut out = Vec::new();
    for (b, w, filters) in backends {
        let (a, q) = backend_authority(b.ok_or("a route backend without a backend")?)?;
        out.push((a, w, q, filters?));
    }
    if out.is_empty() {
        return Err("a random-available distribution without backends".into());
    }
    if out.iter().all(|b| b.1 == 0) {
        return Err("a random-available distribution whose backends all weigh 0".into());
    }
    Ok(Some(out))
}

/// A rule's backends from its distribution, HTTP or gRPC alike (the two
/// protos have the same shape in types of their own: `$dist` is the
/// `distribution` module of either); `$filters` reads a backend's.
macro_rules! rule_backends {
    ($dist:ident, $distribution:expr, $filters:expr) => {
        match $distribution
            .ok_or("a rule without a distribution")?
            .kind
            .as_ref()
            .ok_or("a distribution without a kind")?
        {
            $dist::Kind::FirstAvailable(f) => {
                first_available(f.backends.iter().map(|b| (b.backend.as_ref(), $filters(b))))
            }
            $dist::Kind::RandomAvailable(r) => random_available(r.backends.iter().map(|w| {
                let rb = w.backend.as_ref();
                (
                    rb.and_then(|rb| rb.backend.as_ref()),
                    w.weight,
                    rb.map_or(Ok(None), $filters),
                )
            })),
            $dist::Kind::Empty(_) => Ok(None),
        }
    };
}

/// An HTTP rule's backends; `matches`: the rule's (for a backend's
/// redirect).
fn http_backends(
    d: Option<&http_route::Distribution>,
    matches: &[HttpRouteMatch],
) -> Result<Option<Backends>, String> {
    use http_route::distribution;
    let filters = |b: &http_route::RouteBackend| crate::route_filter::http(&b.filters, matches);
    rule_backends!(distribution, d, filters)
}

/// A gRPC rule's backends.
fn grpc_backends(d: Option<&grpc_route::Distribution>) -> Result<Option<Backends>, String> {
    use grpc_route::distribution;
    let filters = |b: &grpc_route::RouteBackend| crate::route_filter::grpc(&b.filters);
    rule_backends!(distribution, d, filters)
}

/// A rule's timeout: the shortest of its request and response timeouts
/// and the deprecated rule-level request timeout (zero: none).
fn timeout(
    timeouts: Option<&hr::Timeouts>,
    legacy: Option<prost_types::Duration>,
) -> Option<std::time::Duration> {
    [
        timeouts.and_then(|t| t.request),
        timeouts.and_then(|t| t.response),
        legacy,
    ]
    .into_iter()
    .flatten()
    .filter_map(crate::destination::duration)
    .filter(|d| !d.is_zero())
    .min()
}

/// One route rule, HTTP or gRPC alike: `matches` (or why they cannot be
/// used: the rule is skipped and logged), its retryability, timeouts and
/// backends.
struct Rule {
    matches: Result<Vec<RequestMatch>, String>,
    retry: Result<Option<Arc<RetryPolicy>>, String>,
    timeout: Option<std::time::Duration>,
    l5d_headers: bool,
    /// Its backends (`None`: an empty distribution), or why they cannot
    /// be used.
    backends: Result<Option<Backends>, String>,
    /// Its filters (`route_filter.rs`), or why they cannot be applied.
    filters: Result<Filters, String>,
}

/// An HTTP rule's retry policy: its status ranges (an empty list retries
/// no status); without conditions, or with a range outside 100–599, it is
/// invalid (as in linkerd2-proxy).
fn http_retry(r: &http_route::Retry) -> Result<Option<Arc<RetryPolicy>>, String> {
    let ranges = &r
        .conditions
        .as_ref()
        .ok_or("a retry without conditions")?
        .status_ranges;
    let statuses = ranges
        .iter()
        .map(|s| {
            let (lo, hi) = (u16::try_from(s.start), u16::try_from(s.end));
            match (lo, hi) {
                (Ok(lo), Ok(hi)) if 1 <= lo && lo <= hi && hi <= 599 => Ok((lo, hi)),
                _ => Err(format!("a retry status range {}-{}", s.start, s.end)),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if r.max_retries == 0 {
        return Ok(None);
    }
    Ok(Some(Arc::new(RetryPolicy {
        limit: r.max_retries.min(RetryPolicy::MAX_LIMIT),
        statuses,
        grpc: 0,
        timeout: attempt_timeout(r.timeout),
        backoff: retry_backoff(r.backoff.as_ref()),
        max_request_bytes: max_request_bytes(r.max_request_bytes),
    })))
}

/// The largest body a retry policy keeps: as the policy says (0: only
/// requests without a body go again), at most
/// [`RetryPolicy::MAX_REQUEST_BYTES_CAP`].
fn max_request_bytes(n: u32) -> u64 {
    u64::from(n).min(RetryPolicy::MAX_REQUEST_BYTES_CAP)
}

/// A retry's per-attempt timeout (zero: none).
fn attempt_timeout(t: Option<prost_types::Duration>) -> Option<std::time::Duration> {
    t.and_then(crate::destination::duration)
        .filter(|d| !d.is_zero())
}

/// A retry's backoff: none without one, or with a zero maximum; a minimum
/// above the maximum is the maximum; the jitter is at most 100 (as
/// linkerd2-proxy bounds it), a non-finite one none.
fn retry_backoff(
    b: Option<&linkerd2_proxy_api::outbound::ExponentialBackoff>,
) -> Option<RetryBackoff> {
    let b = b?;
    let max = b.max_backoff.and_then(crate::destination::duration)?;
    if max.is_zero() {
        return None;
    }
    let min = b
        .min_backoff
        .and_then(crate::destination::duration)
        .unwrap_or_default()
        .min(max);
    let jitter = f64::from(b.jitter_ratio);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 100.0)
    } else {
        0.0
    };
    Some(RetryBackoff { min, max, jitter })
}

/// A gRPC rule's retry policy: its status codes (none given:
/// `UNAVAILABLE`, `INTERNAL` and `RESOURCE_EXHAUSTED`).
fn grpc_retry(r: &grpc_route::Retry) -> Option<Arc<RetryPolicy>> {
    use grpc_code::*;
    if r.max_retries == 0 {
        return None;
    }
    let grpc = match &r.conditions {
        None => 1 << UNAVAILABLE | 1 << INTERNAL | 1 << RESOURCE_EXHAUSTED,
        Some(c) => [
            (c.cancelled, CANCELLED),
            (c.deadine_exceeded, DEADLINE_EXCEEDED),
            (c.resource_exhausted, RESOURCE_EXHAUSTED),
            (c.internal, INTERNAL),
            (c.unavailable, UNAVAILABLE),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, code)| bits | 1 << code),
    };
    Some(Arc::new(RetryPolicy {
        limit: r.max_retries.min(RetryPolicy::MAX_LIMIT),
        statuses: Vec::new(),
        grpc,
        timeout: attempt_timeout(r.timeout),
        backoff: retry_backoff(r.backoff.as_ref()),
        max_request_bytes: max_request_bytes(r.max_request_bytes),
    }))
}

/// A route's rules as profile routes, each under the route's hosts and
/// name; or why one cannot be used (the whole policy is then invalid, as
/// in linkerd2-proxy: a rule left out would let its requests fall to a
/// broader one).
fn routes(
    (name, hosts): (Option<Arc<str>>, Option<RequestMatch>),
    rules: impl Iterator<Item = Rule>,
    queues: &mut Queues,
) -> Result<Vec<ProfileRoute>, String> {
    let mut out = Vec::new();
    for rule in rules {
        let bad = |why: String| format!("route {}: {why}", name.as_deref().unwrap_or("(unnamed)"));
        let matches = rule.matches.map_err(bad)?;
        let mut rule_filters = rule.filters.map_err(bad)?;
        let Some(rule_backends) = rule.backends.map_err(bad)? else {
            // An empty distribution: its requests go nowhere (503), never
            // to the target — after the rule's own filters (a redirect or
            // a failure injection answers first, as in linkerd2-proxy,
            // where the distribution is reached after the filters).
            let refuse = RouteFilter::Refuse(Refusal::NoBackends);
            rule_filters = Some(
                rule_filters
                    .iter()
                    .flat_map(|f| f.iter().cloned())
                    .chain(std::iter::once(refuse))
                    .collect(),
            );
            out.push(ProfileRoute {
                condition: condition(hosts.clone(), matches),
                name: name.clone(),
                retry: None,
                timeout: rule.timeout,
                l5d_headers: rule.l5d_headers,
                backends: Vec::new(),
                backend_filters: Vec::new(),
                classes: None,
                filters: rule_filters,
            });
            continue;
        };
        let retry = rule.retry.map_err(bad)?;
        let mut backends = Vec::with_capacity(rule_backends.len());
        let mut backend_filters = Vec::new();
        let any_filters = rule_backends.iter().any(|b| b.3.is_some());
        for (backend, weight, queue, filters) in rule_backends {
            if let Some(q) = queue {
                if !queues.iter().any(|(b, _)| *b == backend) {
                    queues.push((backend.clone(), q));
                }
            }
            backends.push((backend, weight));
            if any_filters {
                // The rule's filters, then the backend's: merged here,
                // once, not per request on the workers.
                backend_filters.push(filters.map(|own| {
                    let rule = rule_filters.as_deref().unwrap_or(&[]);
                    rule.iter().chain(own.iter()).cloned().collect::<Arc<[_]>>()
                }));
            }
        }
        out.push(ProfileRoute {
            condition: condition(hosts.clone(), matches),
            name: name.clone(),
            retry,
            timeout: rule.timeout,
            l5d_headers: rule.l5d_headers,
            backends,
            backend_filters,
            filters: rule_filters,
            classes: None,
        });
    }
    Ok(out)
}

/// A route's name, and its hosts; a route without metadata is invalid.
fn route_head(
    m: Option<&Metadata>,
    h: &[hr::HostMatch],
) -> Result<(Option<Arc<str>>, Option<RequestMatch>), String> {
    m.ok_or("a route without metadata")?;
    Ok((route_name(m), hosts(h)?))
}

fn http_routes(r: HttpRoute, queues: &mut Queues) -> Result<Vec<ProfileRoute>, String> {
    let route = route_head(r.metadata.as_ref(), &r.hosts)?;
    let rules = r.rules.into_iter().map(|rule| Rule {
        // No matches: every request, ranked as the prefix `/`.
        matches: match &rule.matches[..] {
            [] => http_match(&HttpRouteMatch::default()).map(|m| vec![m]),
            ms => ms.iter().map(http_match).collect(),
        },
        retry: rule.retry.as_ref().map_or(Ok(None), http_retry),
        // (The deprecated rule-level request timeout, as linkerd2-proxy
        // still reads it.)
        #[allow(deprecated)]
        timeout: timeout(rule.timeouts.as_ref(), rule.request_timeout),
        l5d_headers: rule.allow_l5d_request_headers,
        filters: crate::route_filter::http(&rule.filters, &rule.matches),
        backends: http_backends(rule.backends.as_ref(), &rule.matches),
    });
    routes(route, rules, queues)
}

fn grpc_routes(r: GrpcRoute, queues: &mut Queues) -> Result<Vec<ProfileRoute>, String> {
    let route = route_head(r.metadata.as_ref(), &r.hosts)?;
    let rules = r.rules.into_iter().map(|rule| Rule {
        matches: rule.matches.iter().map(grpc_match).collect(),
        retry: Ok(rule.retry.as_ref().and_then(grpc_retry)),
        // (The deprecated rule-level request timeout, as linkerd2-proxy
        // still reads it.)
        #[allow(deprecated)]
        timeout: timeout(rule.timeouts.as_ref(), rule.request_timeout),
        l5d_headers: rule.allow_l5d_request_headers,
        filters: crate::route_filter::grpc(&rule.filters),
        backends: grpc_backends(rule.backends.as_ref()),
    });
    routes(route, rules, queues)
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::grpc_route as gr;
    use linkerd2_proxy_api::outbound::ProxyProtocol;
    use ringmesh_discovery::profile::{Req, RequestInfo};

    fn forward(port: u16) -> Backend {
        Backend {
            kind: Some(backend::Kind::Forward(WeightedAddr {
                addr: Some(linkerd2_proxy_api::net::TcpAddress {
                    ip: Some(std::net::IpAddr::from([10, 0, 0, 2]).into()),
                    port: u32::from(port),
                }),
                weight: 1,
                ..Default::default()
            })),
            metadata: named("b"),
            queue: Some(linkerd2_proxy_api::outbound::Queue {
                capacity: 100,
                failfast_timeout: Some(prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
            }),
        }
    }

    fn named(name: &str) -> Option<Metadata> {
        Some(Metadata {
            kind: Some(metadata::Kind::Default(name.into())),
        })
    }

    fn routed<'a>(p: &'a Profile, method: &'a str, path: &'a str) -> Option<&'a str> {
        let req = Req {
            method,
            path,
            host: Some("web"),
            headers: &[],
        };
        p.route(&req).and_then(|r| r.name.as_deref())
    }

    /// An HTTP/1 policy of one route per `(matches, port)`, each to a
    /// forward to that port.
    fn http_policy(rules: Vec<(Vec<HttpRouteMatch>, u16)>) -> Profile {
        let target = Authority::parse("10.0.0.1:80").unwrap();
        policy(&target, http_proto(rules))
    }

    fn http_proto(rules: Vec<(Vec<HttpRouteMatch>, u16)>) -> OutboundPolicy {
        let routes = rules
            .into_iter()
            .map(|(matches, port)| HttpRoute {
                metadata: named(&format!("r{port}")),
                rules: vec![http_route::Rule {
                    matches,
                    backends: Some(http_route::Distribution {
                        kind: Some(http_route::distribution::Kind::FirstAvailable(
                            http_route::distribution::FirstAvailable {
                                backends: vec![http_route::RouteBackend {
                                    backend: Some(forward(port)),
                                    ..Default::default()
                                }],
                            },
                        )),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        OutboundPolicy {
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                    routes,
                    ..Default::default()
                })),
            }),
            metadata: named("web"),
        }
    }

    fn prefix(p: &str) -> HttpRouteMatch {
        HttpRouteMatch {
            path: Some(hr::PathMatch {
                kind: Some(hr::path_match::Kind::Prefix(p.into())),
            }),
            ..Default::default()
        }
    }

    fn query(name: &str, value: hr::query_param_match::Value) -> HttpRouteMatch {
        HttpRouteMatch {
            query_params: vec![hr::QueryParamMatch {
                name: name.into(),
                value: Some(value),
            }],
            ..prefix("/api")
        }
    }

    /// An outbound policy's HTTP routes are ranked as linkerd2-proxy
    /// ranks them (a rule without matches as the prefix `/`), query
    /// parameters included; a query match that cannot be used makes the
    /// policy invalid.
    #[test]
    fn http_rules_rank_and_query_parameters_match() {
        use hr::query_param_match::Value;
        let rules = vec![
            (vec![], 1),
            (vec![HttpRouteMatch::default()], 2),
            (vec![prefix("/api")], 3),
            (vec![query("v", Value::Regex("v[0-9]+".into()))], 4),
            (vec![query("debug", Value::Exact("1".into()))], 5),
        ];
        for bad in [
            query("", Value::Exact("1".into())),
            query("x", Value::Regex("(".into())),
        ] {
            let mut with_bad = rules.clone();
            with_bad.push((vec![bad], 6));
            assert_invalid(&http_policy(with_bad), "a bad query match");
        }
        let p = http_policy(rules);
        assert_eq!(p.routes.len(), 5);
        assert_eq!(routed(&p, "GET", "/"), Some("r1"));
        assert_eq!(routed(&p, "GET", "/api/x"), Some("r3"));
        let req = |target| Req {
            method: "GET",
            path: target,
            host: None,
            headers: &[],
        };
        // (`Req` has no query of its own: `path` is the whole target.)
        let with_query = |target: &'static str| {
            struct Q(Req<'static>);
            impl RequestInfo for Q {
                fn method(&self) -> &str {
                    self.0.method
                }
                fn path(&self) -> &str {
                    self.0.path.split_once('?').map_or(self.0.path, |(p, _)| p)
                }
                fn host(&self) -> Option<&str> {
                    None
                }
                fn header(&self, _: &str) -> Option<&[u8]> {
                    None
                }
                fn path_and_query(&self) -> &str {
                    self.0.path
                }
            }
            p.route(&Q(req(target)))
                .and_then(|r| r.name.as_deref())
                .map(str::to_string)
        };
        assert_eq!(with_query("/api/x?v=v2").as_deref(), Some("r4"));
        assert_eq!(with_query("/api/x?debug=1").as_deref(), Some("r5"));
        assert_eq!(with_query("/api/x?debug=2").as_deref(), Some("r3"));
        assert_eq!(with_query("/other?debug=1").as_deref(), Some("r1"));
    }

    /// gRPC routes: only `POST`s to `/service/method`, the more specific
    /// RPC match first; a match without an RPC skips its rule.
    #[test]
    fn grpc_rules_match_calls_by_service_then_method() {
        let rule = |rpc: Option<(&str, &str)>, port: u16| GrpcRoute {
            metadata: named(&format!("g{port}")),
            rules: vec![grpc_route::Rule {
                matches: vec![gr::GrpcRouteMatch {
                    rpc: rpc.map(|(service, method)| gr::GrpcRpcMatch {
                        service: service.into(),
                        method: method.into(),
                    }),
                    headers: vec![],
                }],
                backends: Some(grpc_route::Distribution {
                    kind: Some(grpc_route::distribution::Kind::FirstAvailable(
                        grpc_route::distribution::FirstAvailable {
                            backends: vec![grpc_route::RouteBackend {
                                backend: Some(forward(port)),
                                ..Default::default()
                            }],
                        },
                    )),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let target = Authority::parse("10.0.0.1:80").unwrap();
        let p = policy(
            &target,
            OutboundPolicy {
                protocol: Some(ProxyProtocol {
                    kind: Some(proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
                        routes: vec![
                            rule(Some(("", "")), 1),
                            rule(Some(("", "Get")), 2),
                            rule(Some(("pkg.Svc", "")), 3),
                            rule(Some(("pkg.Svc", "Get")), 4),
                        ],
                        ..Default::default()
                    })),
                }),
                metadata: named("web"),
            },
        );
        assert_eq!(p.routes.len(), 4);
        assert_eq!(routed(&p, "POST", "/pkg.Svc/Get"), Some("g4"));
        assert_eq!(routed(&p, "POST", "/pkg.Svc/Put"), Some("g3"));
        assert_eq!(routed(&p, "POST", "/x.Y/Get"), Some("g2"));
        assert_eq!(routed(&p, "POST", "/x.Y/Z"), Some("g1"));
        assert_eq!(routed(&p, "GET", "/pkg.Svc/Get"), None);
        assert_eq!(routed(&p, "POST", "/pkg.Svc"), None);
    }

    /// An opaque policy's route: its backends by weight; a backend's
    /// `forbidden` filter refuses the connections drawn to it, the rule's
    /// every one; no route at all: none goes anywhere.
    #[test]
    fn opaque_routes_pick_backends_or_refuse() {
        use linkerd2_proxy_api::opaque_route::Forbidden;
        use linkerd2_proxy_api::outbound::{opaque_route as or, OpaqueRoute as Route};
        let forbid = || or::Filter {
            kind: Some(or::filter::Kind::Forbidden(Forbidden {})),
        };
        let backend = |port, weight, forbidden: bool| or::WeightedRouteBackend {
            backend: Some(or::RouteBackend {
                backend: Some(forward(port)),
                filters: if forbidden { vec![forbid()] } else { vec![] },
            }),
            weight,
        };
        let route = |backends, filters| Route {
            metadata: named("tcp"),
            rules: vec![or::Rule {
                backends: Some(or::Distribution {
                    kind: Some(or::distribution::Kind::RandomAvailable(
                        or::distribution::RandomAvailable { backends },
                    )),
                }),
                filters,
            }],
        };
        let target = Authority::parse("10.0.0.1:80").unwrap();
        let r = opaque_route(
            &target,
            vec![route(
                vec![backend(1, 3, false), backend(2, 1, true)],
                vec![],
            )],
        );
        assert_eq!(r.name.as_deref(), Some("tcp"));
        assert_eq!(r.pick(0.1).unwrap().to_string(), "10.0.0.2:1");
        assert!(r.pick(0.9).is_err(), "the forbidden backend's share");
        let r = opaque_route(
            &target,
            vec![route(vec![backend(1, 1, false)], vec![forbid()])],
        );
        assert!(r.pick(0.1).is_err());
        let r = opaque_route(&target, Vec::new());
        assert_eq!(r.pick(0.1), Err("the opaque route has no backend"));
    }

    /// A retry's `max_request_bytes` is kept as given (0: bodiless
    /// requests only), at most 1 MiB; HTTP and gRPC alike.
    #[test]
    fn retry_max_request_bytes_is_bounded() {
        let http = |n| {
            http_retry(&http_route::Retry {
                max_retries: 1,
                max_request_bytes: n,
                conditions: Some(Default::default()),
                ..Default::default()
            })
            .unwrap()
            .unwrap()
            .max_request_bytes
        };
        assert_eq!(http(0), 0);
        assert_eq!(http(100), 100);
        assert_eq!(http(u32::MAX), RetryPolicy::MAX_REQUEST_BYTES_CAP);
        let grpc = grpc_retry(&grpc_route::Retry {
            max_retries: 1,
            max_request_bytes: 5000,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(grpc.max_request_bytes, 5000);
    }

    /// The policy that stands for an invalid one: every request answered
    /// 500, no route.
    fn assert_invalid(p: &Profile, what: &str) {
        assert!(p.routes.is_empty(), "{what}: {:?}", p.routes.len());
        assert!(
            matches!(
                p.unrouted.as_deref(),
                Some([RouteFilter::Refuse(Refusal::Invalid(_))])
            ),
            "{what}: {:?}",
            p.unrouted
        );
    }

    /// A request no route matches is answered 404 (never sent to the
    /// target), and an empty distribution's requests 503.
    #[test]
    fn unrouted_requests_and_empty_rules_are_answered() {
        let p = http_policy(vec![(vec![prefix("/a")], 1)]);
        assert_eq!(
            p.unrouted.as_deref(),
            Some(&[RouteFilter::Refuse(Refusal::NoRoute)][..])
        );
        let mut proto = http_proto(vec![(vec![prefix("/a")], 1)]);
        if let Some(proxy_protocol::Kind::Http1(h)) =
            proto.protocol.as_mut().and_then(|p| p.kind.as_mut())
        {
            h.routes[0].rules[0].backends = Some(http_route::Distribution {
                kind: Some(http_route::distribution::Kind::Empty(Default::default())),
            });
            // The rule's own failure injection answers first.
            h.routes[0].rules[0].filters = vec![http_route::Filter {
                kind: Some(http_route::filter::Kind::FailureInjector(
                    hr::HttpFailureInjector {
                        status: 418,
                        ..Default::default()
                    },
                )),
            }];
        }
        let p = policy(&Authority::parse("10.0.0.1:80").unwrap(), proto);
        assert_eq!(p.routes.len(), 1);
        assert!(p.routes[0].backends.is_empty());
        assert_eq!(
            p.routes[0].filters.as_deref().and_then(|f| f.last()),
            Some(&RouteFilter::Refuse(Refusal::NoBackends)),
            "after the rule's own filters"
        );
        assert!(matches!(
            p.routes[0].filters.as_deref().and_then(|f| f.first()),
            Some(RouteFilter::Fail { status: 418, .. })
        ));
    }

    /// What linkerd2-proxy rejects makes the whole policy invalid, not a
    /// part of it dropped (a skipped rule's requests would fall to a
    /// broader one, an empty one's go to the target).
    #[test]
    fn invalid_policies_are_refused_whole() {
        let target = Authority::parse("10.0.0.1:80").unwrap();
        type Edit = fn(&mut OutboundPolicy);
        fn rule(p: &mut OutboundPolicy) -> &mut http_route::Rule {
            match p.protocol.as_mut().and_then(|p| p.kind.as_mut()) {
                Some(proxy_protocol::Kind::Http1(h)) => &mut h.routes[0].rules[0],
                _ => unreachable!(),
            }
        }
        fn first_backend(p: &mut OutboundPolicy) -> &mut Backend {
            match rule(p).backends.as_mut().and_then(|d| d.kind.as_mut()) {
                Some(http_route::distribution::Kind::FirstAvailable(f)) => {
                    f.backends[0].backend.as_mut().unwrap()
                }
                _ => unreachable!(),
            }
        }
        let cases: [(&str, Edit); 11] = [
            ("no metadata", |p| p.metadata = None),
            ("no protocol", |p| p.protocol = None),
            ("a route without metadata", |p| {
                if let Some(proxy_protocol::Kind::Http1(h)) =
                    p.protocol.as_mut().and_then(|p| p.kind.as_mut())
                {
                    h.routes[0].metadata = None;
                }
            }),
            ("no distribution", |p| rule(p).backends = None),
            ("an empty first-available", |p| {
                rule(p).backends = Some(http_route::Distribution {
                    kind: Some(http_route::distribution::Kind::FirstAvailable(
                        Default::default(),
                    )),
                })
            }),
            ("a backend without a queue", |p| {
                first_backend(p).queue = None
            }),
            ("a backend without metadata", |p| {
                first_backend(p).metadata = None
            }),
            ("a backend without a kind", |p| first_backend(p).kind = None),
            ("a retry without conditions", |p| {
                rule(p).retry = Some(http_route::Retry {
                    max_retries: 2,
                    ..Default::default()
                })
            }),
            ("a retry status range past 599", |p| {
                rule(p).retry = Some(http_route::Retry {
                    max_retries: 2,
                    conditions: Some(http_route::retry::Conditions {
                        status_ranges: vec![http_route::retry::conditions::StatusRange {
                            start: 500,
                            end: 600,
                        }],
                    }),
                    ..Default::default()
                })
            }),
            ("a failure injector status past 999", |p| {
                rule(p).filters = vec![http_route::Filter {
                    kind: Some(http_route::filter::Kind::FailureInjector(
                        hr::HttpFailureInjector {
                            status: 1000,
                            ..Default::default()
                        },
                    )),
                }]
            }),
        ];
        for (what, edit) in cases {
            let mut proto = http_proto(vec![(vec![prefix("/a")], 1)]);
            assert!(!policy(&target, proto.clone()).routes.is_empty());
            edit(&mut proto);
            assert_invalid(&policy(&target, proto), what);
        }
        // An empty list of retried statuses retries none (not 5xx).
        let none = http_retry(&http_route::Retry {
            max_retries: 2,
            conditions: Some(Default::default()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert!(none.statuses.is_empty());
    }
}

#[cfg(fuzzing)]
pub(crate) mod fuzzing {
    use prost::Message as _;

    pub(crate) fn policy(bytes: &[u8]) {
        let Ok(p) = super::OutboundPolicy::decode(bytes) else {
            return;
        };
        let target = super::Authority::parse("10.0.0.1:80").unwrap();
        use crate::route_filter::Message;
        let p = super::policy(&target, p);
        let req = ringmesh_discovery::profile::Req {
            method: "GET",
            path: "/a/b",
            host: Some("web.ns.svc.cluster.local"),
            headers: &[("x-canary", "1")],
        };
        if let Some(r) = p.route(&req) {
            let _ = ringmesh_discovery::profile::pick(&r.backends, 0.5);
            if let Some(f) = r.filters.as_deref() {
                let _ = crate::route_filter::answer(f, &req);
                let mut h = http::HeaderMap::new();
                for m in [Message::Request, Message::Response] {
                    crate::route_filter::edit_map(f, m, &mut h);
                    let _ = crate::route_filter::h1_fields(f, m, &[], &[]);
                }
            }
        }
    }
}
