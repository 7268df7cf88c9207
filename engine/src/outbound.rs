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
    grpc_code, AccrualSpec, OpaqueRoute, Profile, ProfileRoute, QueueSpec, RequestMatch,
    RetryBackoff, RetryPolicy, TlsRoute, ValueMatch,
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
        || {
            if !answered.get() {
                // No policy (NOT_FOUND, or no answer yet): known, empty.
                answered.set(true);
                table.report_policy(&name, Arc::new(Profile::default()));
            }
        },
    );
    // Until the watch is dropped (idle).
    monoio::select! {
        _ = policy_stream => {}
        _ = table.dropped(&name, id) => {}
    }
}

/// The workers' form of an outbound policy.
fn policy(target: &Authority, p: OutboundPolicy) -> Profile {
    use proxy_protocol::Kind;
    let mut profile = Profile {
        most_specific: true,
        ..Profile::default()
    };
    let kind = p.protocol.and_then(|p| p.kind);
    profile.accrual = match &kind {
        Some(Kind::Detect(d)) => d
            .http1
            .as_ref()
            .and_then(|h| h.failure_accrual)
            .or_else(|| d.http2.as_ref().and_then(|h| h.failure_accrual)),
        Some(Kind::Http1(h)) => h.failure_accrual,
        Some(Kind::Http2(h)) => h.failure_accrual,
        Some(Kind::Grpc(g)) => g.failure_accrual,
        _ => None,
    }
    .and_then(accrual);
    let queues = &mut profile.queues;
    profile.routes = match kind {
        Some(Kind::Opaque(o)) => {
            profile.opaque = true;
            profile.opaque_route = Some(Arc::new(opaque_route(target, o.routes)));
            Vec::new()
        }
        Some(Kind::Tls(t)) => {
            profile.opaque = true;
            profile.tls_routes = tls_routes(target, t.routes);
            // No route at all: connections go nowhere (linkerd2-proxy's
            // "no route"), as for an opaque policy without one.
            if profile.tls_routes.is_empty() {
                profile.opaque_route = Some(Arc::new(no_route(None)));
            }
            Vec::new()
        }
        Some(Kind::Detect(d)) => {
            // Traffic that is not HTTP goes by its opaque route.
            if let Some(o) = d.opaque {
                profile.opaque_route = Some(Arc::new(opaque_route(target, o.routes)));
            }
            let routes = d.http1.map(|h| h.routes).into_iter().flatten();
            let routes = routes.chain(d.http2.map(|h| h.routes).into_iter().flatten());
            routes
                .flat_map(|r| http_routes(target, r, queues))
                .collect()
        }
        Some(Kind::Http1(h)) => h
            .routes
            .into_iter()
            .flat_map(|r| http_routes(target, r, queues))
            .collect(),
        Some(Kind::Http2(h)) => h
            .routes
            .into_iter()
            .flat_map(|r| http_routes(target, r, queues))
            .collect(),
        Some(Kind::Grpc(g)) => g
            .routes
            .into_iter()
            .flat_map(|r| grpc_routes(target, r, queues))
            .collect(),
        None => Vec::new(),
    };
    profile
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
                .find(|b| b.backend.as_ref().and_then(backend_authority).is_some())
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
        let Some((authority, _queue)) = b.and_then(backend_authority) else {
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
/// (0): never ejected.
fn accrual(fa: FailureAccrual) -> Option<AccrualSpec> {
    use failure_accrual::Kind;
    let (max, backoff) = match fa.kind? {
        Kind::ConsecutiveFailures(c) => (c.max_failures, c.backoff),
        Kind::Unified(u) => (u.max_consecutive_failures, u.backoff),
    };
    let backoff = backoff.unwrap_or_default();
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
    Some(AccrualSpec {
        consecutive: if max == 0 { u32::MAX } else { max },
        min_backoff: min,
        max_backoff,
        jitter,
    })
}

fn route_name(m: Option<&Metadata>) -> Option<Arc<str>> {
    match m?.kind.as_ref()? {
        metadata::Kind::Default(n) => Some(n.as_str().into()),
        metadata::Kind::Resource(r) => Some(r.name.as_str().into()),
    }
}

pub(crate) fn hosts(hosts: &[hr::HostMatch]) -> Option<RequestMatch> {
    if hosts.is_empty() {
        return None;
    }
    let any = hosts
        .iter()
        .filter_map(|h| match h.r#match.as_ref()? {
            hr::host_match::Match::Exact(n) => Some(exact_host(n)),
            hr::host_match::Match::Suffix(s) => Some(host_suffix(&s.reverse_labels)),
        })
        .collect();
    Some(RequestMatch::Any(any))
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
/// them: without a fail-fast timeout, the proxy's own settings apply).
fn backend_authority(b: &Backend) -> Option<(Authority, Option<QueueSpec>)> {
    let queue = b.queue.and_then(|q| {
        let failfast = q
            .failfast_timeout
            .and_then(crate::destination::duration)
            .filter(|d| !d.is_zero())?;
        Some(QueueSpec {
            capacity: usize::try_from(q.capacity).unwrap_or(usize::MAX),
            failfast,
        })
    });
    let name = match b.kind.as_ref()? {
        backend::Kind::Balancer(p2c) => match p2c.discovery.as_ref()?.kind.as_ref()? {
            backend::endpoint_discovery::Kind::Dst(d) => Authority::parse(&d.path).ok(),
        },
        backend::Kind::Forward(WeightedAddr { addr, .. }) => {
            let addr: SocketAddr = (*addr)?.try_into().ok()?;
            Some(Authority::from_addr(addr))
        }
    }?;
    Some((name, queue))
}

/// A rule's backends, each with its weight, queue settings and filters.
type Backends = Vec<(Authority, u32, Option<QueueSpec>, Filters)>;

type Filters = Option<Arc<[ringmesh_discovery::profile::RouteFilter]>>;

/// `first-available`: the first backend that names a target.
fn first_available<'a>(
    backends: impl Iterator<Item = (Option<&'a Backend>, Result<Filters, String>)>,
) -> Result<Backends, String> {
    for (b, filters) in backends {
        if let Some((a, q)) = b.and_then(backend_authority) {
            return Ok(vec![(a, 1, q, filters?)]);
        }
    }
    Ok(Vec::new())
}

/// `random-available`: every backend that names a target, with its weight.
fn random_available<'a>(
    backends: impl Iterator<Item = (Option<&'a Backend>, u32, Result<Filters, String>)>,
) -> Result<Backends, String> {
    let mut out = Vec::new();
    for (b, w, filters) in backends {
        if let Some((a, q)) = b.and_then(backend_authority) {
            out.push((a, w, q, filters?));
        }
    }
    Ok(out)
}

/// An HTTP rule's backends; `matches`: the rule's (for a backend's
/// redirect).
fn http_backends(
    d: Option<&http_route::Distribution>,
    matches: &[HttpRouteMatch],
) -> Result<Backends, String> {
    use http_route::distribution::Kind;
    let filters = |b: &http_route::RouteBackend| crate::route_filter::http(&b.filters, matches);
    match d.and_then(|d| d.kind.as_ref()) {
        Some(Kind::FirstAvailable(f)) => {
            first_available(f.backends.iter().map(|b| (b.backend.as_ref(), filters(b))))
        }
        Some(Kind::RandomAvailable(r)) => random_available(r.backends.iter().filter_map(|w| {
            let rb = w.backend.as_ref()?;
            Some((rb.backend.as_ref(), w.weight, filters(rb)))
        })),
        Some(Kind::Empty(_)) | None => Ok(Vec::new()),
    }
}

/// A gRPC rule's backends.
fn grpc_backends(d: Option<&grpc_route::Distribution>) -> Result<Backends, String> {
    use grpc_route::distribution::Kind;
    let filters = |b: &grpc_route::RouteBackend| crate::route_filter::grpc(&b.filters);
    match d.and_then(|d| d.kind.as_ref()) {
        Some(Kind::FirstAvailable(f)) => {
            first_available(f.backends.iter().map(|b| (b.backend.as_ref(), filters(b))))
        }
        Some(Kind::RandomAvailable(r)) => random_available(r.backends.iter().filter_map(|w| {
            let rb = w.backend.as_ref()?;
            Some((rb.backend.as_ref(), w.weight, filters(rb)))
        })),
        Some(Kind::Empty(_)) | None => Ok(Vec::new()),
    }
}

fn timeout(timeouts: Option<&hr::Timeouts>) -> Option<std::time::Duration> {
    timeouts
        .and_then(|t| t.request)
        .and_then(crate::destination::duration)
        .filter(|d| !d.is_zero())
}

/// One route rule, HTTP or gRPC alike: `matches` (or why they cannot be
/// used: the rule is skipped and logged), its retryability, timeouts and
/// backends.
struct Rule {
    matches: Result<Vec<RequestMatch>, String>,
    retry: Option<Arc<RetryPolicy>>,
    timeout: Option<std::time::Duration>,
    l5d_headers: bool,
    /// Its backends, or why one's filters cannot be applied.
    backends: Result<Backends, String>,
    /// Its filters (`route_filter.rs`), or why they cannot be applied.
    filters: Result<Filters, String>,
}

/// An HTTP rule's retry policy: its status ranges (none given: 5xx).
fn http_retry(r: &http_route::Retry) -> Option<Arc<RetryPolicy>> {
    if r.max_retries == 0 {
        return None;
    }
    let ranges = r
        .conditions
        .as_ref()
        .map(|c| &c.status_ranges[..])
        .unwrap_or(&[]);
    let statuses = if ranges.is_empty() {
        vec![(500, 599)]
    } else {
        ranges
            .iter()
            .filter_map(|s| {
                let (lo, hi) = (u16::try_from(s.start).ok()?, u16::try_from(s.end).ok()?);
                (100 <= lo && lo <= hi && hi <= 599).then_some((lo, hi))
            })
            .collect()
    };
    Some(Arc::new(RetryPolicy {
        limit: r.max_retries.min(RetryPolicy::MAX_LIMIT),
        statuses,
        grpc: 0,
        timeout: attempt_timeout(r.timeout),
        backoff: retry_backoff(r.backoff.as_ref()),
        max_request_bytes: max_request_bytes(r.max_request_bytes),
    }))
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
/// name.
fn routes(
    target: &Authority,
    (name, hosts): (Option<Arc<str>>, Option<RequestMatch>),
    rules: impl Iterator<Item = Rule>,
    queues: &mut Vec<(Authority, QueueSpec)>,
) -> Vec<ProfileRoute> {
    rules
        .filter_map(|rule| {
            let usable = rule
                .matches
                .and_then(|m| Ok((m, rule.filters?, rule.backends?)));
            let (matches, rule_filters, rule_backends) = match usable {
                Ok(m) => m,
                Err(why) => {
                    tracing::warn!(%target, route = ?name, why, "outbound route rule skipped");
                    return None;
                }
            };
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
            Some(ProfileRoute {
                condition: condition(hosts.clone(), matches),
                name: name.clone(),
                retry: rule.retry,
                timeout: rule.timeout,
                l5d_headers: rule.l5d_headers,
                backends,
                backend_filters,
                filters: rule_filters,
            })
        })
        .collect()
}

fn http_routes(
    target: &Authority,
    r: HttpRoute,
    queues: &mut Vec<(Authority, QueueSpec)>,
) -> Vec<ProfileRoute> {
    let rules = r.rules.into_iter().map(|rule| Rule {
        // No matches: every request, ranked as the prefix `/`.
        matches: match &rule.matches[..] {
            [] => http_match(&HttpRouteMatch::default()).map(|m| vec![m]),
            ms => ms.iter().map(http_match).collect(),
        },
        retry: rule.retry.as_ref().and_then(http_retry),
        timeout: timeout(rule.timeouts.as_ref()),
        l5d_headers: rule.allow_l5d_request_headers,
        filters: crate::route_filter::http(&rule.filters, &rule.matches),
        backends: http_backends(rule.backends.as_ref(), &rule.matches),
    });
    let route = (route_name(r.metadata.as_ref()), hosts(&r.hosts));
    routes(target, route, rules, queues)
}

fn grpc_routes(
    target: &Authority,
    r: GrpcRoute,
    queues: &mut Vec<(Authority, QueueSpec)>,
) -> Vec<ProfileRoute> {
    let rules = r.rules.into_iter().map(|rule| Rule {
        matches: rule.matches.iter().map(grpc_match).collect(),
        retry: rule.retry.as_ref().and_then(grpc_retry),
        timeout: timeout(rule.timeouts.as_ref()),
        l5d_headers: rule.allow_l5d_request_headers,
        filters: crate::route_filter::grpc(&rule.filters),
        backends: grpc_backends(rule.backends.as_ref()),
    });
    let route = (route_name(r.metadata.as_ref()), hosts(&r.hosts));
    routes(target, route, rules, queues)
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
            ..Default::default()
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

    fn http_policy(rules: Vec<(Vec<HttpRouteMatch>, u16)>) -> Profile {
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
        let target = Authority::parse("10.0.0.1:80").unwrap();
        policy(
            &target,
            OutboundPolicy {
                protocol: Some(ProxyProtocol {
                    kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                        routes,
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            },
        )
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
    /// parameters included; a query match that cannot be used skips its
    /// rule.
    #[test]
    fn http_rules_rank_and_query_parameters_match() {
        use hr::query_param_match::Value;
        let p = http_policy(vec![
            (vec![], 1),
            (vec![HttpRouteMatch::default()], 2),
            (vec![prefix("/api")], 3),
            (vec![query("v", Value::Regex("v[0-9]+".into()))], 4),
            (vec![query("debug", Value::Exact("1".into()))], 5),
            (vec![query("", Value::Exact("1".into()))], 6),
            (vec![query("x", Value::Regex("(".into()))], 7),
        ]);
        assert_eq!(p.routes.len(), 5, "the two bad rules are skipped");
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
                            rule(None, 5),
                        ],
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            },
        );
        assert_eq!(p.routes.len(), 4, "the rule without an RPC is skipped");
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
                ..Default::default()
            })
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
