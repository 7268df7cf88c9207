//! Linkerd's Destination API as a discovery resolver (`Destination.Get`),
//! run on the control core.
//!
//! # What it owns
//!
//! - Which targets it answers for ([`DestinationConfig::claims`]): names
//!   under `LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES`, and `ip:port`
//!   original destinations in `_PROFILE_NETWORKS`. DNS leaves those alone.
//! - One `Get` stream per watched target, all on one HTTP/2 connection
//!   to the service ([`Client`]: plaintext to a loopback address, mutual
//!   TLS as `_SVC_NAME` otherwise, with this proxy's certificate).
//! - The endpoint set each stream builds from `Add` / `Remove` /
//!   `NoEndpoints` ([`EndpointSet`]), reported to the [`Table`] as a
//!   service: addresses, weights, `tls_identity` (the identity mutual TLS
//!   to the endpoint must prove), the `h2` hint, the opaque-transport port,
//!   and the set's `metric_labels` (`dst_*` labels).
//! - Reconnection: a stream that fails is opened again after an
//!   exponential backoff with jitter (100 ms doubling to 10 s, reset by a
//!   message). Meanwhile the last state stays published: an outage never
//!   empties a service. The first message of a new stream replaces the
//!   old state (the controller starts every stream with the whole set).
//! - Linkerd's stream limits (`LINKERD2_PROXY_CONTROL_STREAM_*`): first
//!   message within the initial timeout, each next within the idle one, a
//!   new stream after the lifetime.
//! - Counters: [`DestinationMetrics`].
//!
//! # What it must not do
//!
//! Block the control core, or trust what it is sent: an address without
//! an IP or with port 0, an identity that is not a DNS-like name, are
//! skipped (logged, counted) and the rest of the update applied; a message
//! that does not decode ends the stream (the state is kept, the stream
//! opened again).
//!
//! An `ip:port` target the API has no endpoints for (or no answer yet)
//! is published with that address as its one endpoint: connections to it
//! go where they were going, as linkerd2-proxy forwards them.
//!
//! - Per address: its own `metric_labels` (merged over the set's, so
//!   `dst_pod` and the like label its requests) and `authority_override`
//!   (the `Host` / `:authority` requests to it carry).
//!
//! - Per address: its HTTP/2 client parameters (`H2Params`), validated.
//! - A name the API answers `NoEndpoints { exists: false }` for is handed
//!   to DNS (`Table::disown`) until the API sends endpoints for it.
//!
//! (A watch nobody used for a while is dropped by the table:
//! `Table::sweep`.)

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linkerd2_proxy_api::destination::{
    protocol_hint, tls_identity, update, DestinationProfile, GetDestination, Http2ClientParams,
    NoEndpoints, Update, WeightedAddr,
};
use ringmesh_discovery::channel::Subscriber;
use ringmesh_discovery::profile::{
    failure_ranges, Profile, ProfileRoute, RequestMatch, ResponseClassRule, ResponseMatch,
    RetryBudgetSpec, RetryPolicy,
};
use ringmesh_discovery::snapshot::{H2KeepAlive, H2Params};
use ringmesh_discovery::{Authority, Endpoint, Resolver, Table};
use ringmesh_identity::Name;

use crate::config::{DestinationConfig, StreamLimits};
use crate::identity::IdentityState;
use crate::stream::{self, Client, StreamCounters};

const GET_PATH: &str = "/io.linkerd.proxy.destination.Destination/Get";
const GET_PROFILE_PATH: &str = "/io.linkerd.proxy.destination.Destination/GetProfile";

/// The resolver, before it runs.
pub(crate) struct DestinationResolver {
    cfg: DestinationConfig,
    limits: StreamLimits,
    identity: Subscriber<IdentityState>,
    metrics: Arc<DestinationMetrics>,
}

impl DestinationResolver {
    pub(crate) fn new(
        cfg: DestinationConfig,
        limits: StreamLimits,
        identity: Subscriber<IdentityState>,
        metrics: Arc<DestinationMetrics>,
    ) -> Self {
        Self {
            cfg,
            limits,
            identity,
            metrics,
        }
    }
}

impl Resolver for DestinationResolver {
    /// Follows every watched target it claims, each in a task of its own.
    fn run(self: Box<Self>, table: Table) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            let this = *self;
            let client = Rc::new(Client::new(
                this.cfg.svc_addr.clone(),
                this.cfg.svc_name.clone(),
                &this.identity,
            ));
            let watch = Rc::new(Watch {
                client,
                table: table.clone(),
                context: this.cfg.context.clone(),
                limits: this.limits,
                metrics: this.metrics,
            });
            let mut cursor = table.watch_cursor();
            loop {
                let seen = table.watched().generation();
                let names = table.watched_since(&mut cursor);
                for name in names.into_iter().filter(|n| this.cfg.claims(n)) {
                    monoio::spawn(watch.clone().follow(name));
                }
                table.watched().changed_since(seen).await;
            }
        })
    }
}

/// What every target's stream shares.
struct Watch {
    client: Rc<Client>,
    table: Table,
    context: String,
    limits: StreamLimits,
    metrics: Arc<DestinationMetrics>,
}

/// One target's state, shared by its `Get` and `GetProfile` streams.
#[derive(Default)]
struct Target {
    set: RefCell<EndpointSet>,
    /// The profile says the port is opaque.
    opaque: Cell<bool>,
    /// Something was reported for the target (the table waits for a
    /// first answer).
    answered: Cell<bool>,
}

impl Watch {
    /// Keeps `name` resolved, and its profile followed, for as long as the
    /// control core runs.
    async fn follow(self: Rc<Self>, name: Authority) {
        let Some(id) = self.table.watch_id(&name) else {
            return;
        };
        self.metrics.watches.fetch_add(1, Ordering::Relaxed);
        let target = Rc::new(Target::default());
        let profile = self.clone().follow_profile(name.clone(), target.clone());
        let table = self.table.clone();
        let profile_name = name.clone();
        monoio::spawn(async move {
            monoio::select! {
                _ = profile => {}
                _ = table.dropped(&profile_name, id) => {}
            }
        });
        let req = self.request(&name);
        let endpoints = stream::follow(
            &self.client,
            GET_PATH,
            req,
            self.limits,
            &self.metrics.streams,
            &name,
            |update: Update, fresh| {
                // A name the API does not know (outside the cluster, say):
                // DNS resolves it until the API knows it.
                let unknown = name.socket_addr().is_none()
                    && matches!(
                        update.update,
                        Some(update::Update::NoEndpoints(NoEndpoints { exists: false }))
                    );
                let invalid = target.set.borrow_mut().apply(&name, update, fresh);
                self.metrics
                    .invalid
                    .fetch_add(invalid as u64, Ordering::Relaxed);
                if unknown {
                    target.answered.set(true);
                    if self.table.disown(&name) {
                        tracing::info!(%name, "the Destination API does not know this name; resolving it with DNS");
                    }
                    return;
                }
                if self.table.reclaim(&name) {
                    tracing::info!(%name, "the Destination API knows this name now; DNS no longer resolves it");
                }
                let changed = self.report(&name, &target);
                tracing::debug!(%name, changed, "destination update");
            },
            |_| {
                if !target.answered.get() {
                    // Nothing known yet: the target has no endpoints
                    // (requests fail fast) rather than a pending lookup
                    // forever.
                    self.report(&name, &target);
                }
                true
            },
        );
        // Until the watch is dropped (no request used it for the idle
        // timeout): the streams end with it.
        monoio::select! {
            _ = endpoints => {}
            _ = self.table.dropped(&name, id) => {}
        }
        self.metrics.watches.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(%name, "destination watch dropped");
    }

    /// Follows the target's profile.
    async fn follow_profile(self: Rc<Self>, name: Authority, target: Rc<Target>) {
        let req = self.request(&name);
        stream::follow(
            &self.client,
            GET_PROFILE_PATH,
            req,
            self.limits,
            &self.metrics.streams,
            &name,
            |p: DestinationProfile, _fresh| {
                let profile = profile(&name, p);
                if profile.opaque != target.opaque.get() {
                    target.opaque.set(profile.opaque);
                    if target.answered.get() {
                        self.report(&name, &target);
                    }
                }
                let has = !profile.routes.is_empty()
                    || !profile.dst_overrides.is_empty()
                    || profile.retry_budget.is_some();
                tracing::debug!(%name, routes = profile.routes.len(), overrides = profile.dst_overrides.len(), "destination profile");
                self.table
                    .report_profile(&name, has.then(|| Arc::new(profile)));
            },
            // No profile (NOT_FOUND) stands, as linkerd2-proxy's.
            |error| !stream::not_found(error),
        )
        .await;
    }

    fn request(&self, name: &Authority) -> GetDestination {
        GetDestination {
            scheme: "k8s".into(),
            path: name.to_string(),
            context_token: self.context.clone(),
        }
    }

    /// Reports the target's endpoints as a service.
    fn report(&self, name: &Authority, target: &Target) -> bool {
        let set = target.set.borrow();
        let protocol = set.protocol().or(target
            .opaque
            .get()
            .then_some(ringmesh_discovery::Protocol::Opaque));
        target.answered.set(true);
        self.table
            .report_service(name, set.endpoints(name), protocol, set.labels.clone())
    }
}

/// A profile from the Destination API's message; routes whose condition
/// cannot be used (a bad regex, no condition) are skipped and logged.
fn profile(name: &Authority, p: DestinationProfile) -> Profile {
    let routes: Vec<ProfileRoute> = p
        .routes
        .into_iter()
        .filter_map(|r| {
            let route_name = r.metrics_labels.get("route").map(|n| Arc::<str>::from(n.as_str()));
            let condition = match r.condition.map(request_match) {
                Some(Ok(c)) => c,
                Some(Err(why)) => {
                    tracing::warn!(%name, route = ?route_name, why, "profile route skipped");
                    return None;
                }
                None => {
                    tracing::warn!(%name, route = ?route_name, "profile route without a condition skipped");
                    return None;
                }
            };
            // As linkerd2-proxy reads them: a class or a part of one it
            // cannot use is left out, not the route.
            let classes: Vec<ResponseClassRule> = r
                .response_classes
                .into_iter()
                .filter_map(|c| {
                    Some(ResponseClassRule {
                        condition: c.condition.and_then(response_match)?,
                        failure: c.is_failure,
                    })
                })
                .collect();
            // A retryable route retries what its classes make failures.
            let retry = r.is_retryable.then(|| {
                Arc::new(RetryPolicy {
                    statuses: failure_ranges(&classes),
                    ..RetryPolicy::on_5xx(RetryPolicy::DEFAULT_LIMIT)
                })
            });
            Some(ProfileRoute {
                condition,
                name: route_name,
                retry,
                timeout: r.timeout.and_then(duration).filter(|d| !d.is_zero()),
                l5d_headers: false,
                backends: Vec::new(),
                filters: None,
                backend_filters: Vec::new(),
                classes: (!classes.is_empty()).then(|| classes.into()),
            })
        })
        .collect();
    let retry_budget = p.retry_budget.map(|b| RetryBudgetSpec {
        ratio: if b.retry_ratio.is_finite() {
            b.retry_ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        },
        min_per_second: b.min_retries_per_second,
        ttl: b
            .ttl
            .and_then(duration)
            .unwrap_or(Duration::from_secs(10))
            .clamp(Duration::from_secs(1), Duration::from_secs(60)),
    });
    let dst_overrides: Vec<(Authority, u32)> = p
        .dst_overrides
        .into_iter()
        .filter_map(|d| {
            let parsed = Authority::parse(&d.authority).or_else(|_| {
                Authority::parse(&format!("{}:{}", d.authority.trim_end_matches('.'), name.port()))
            });
            match parsed {
                Ok(a) => Some((a, d.weight)),
                Err(e) => {
                    tracing::warn!(%name, authority = d.authority, error = %e, "traffic split backend skipped");
                    None
                }
            }
        })
        .collect();
    // linkerd2-proxy uses a profile instead of the outbound policy when it
    // names a service (a logical address) and says something of its own:
    // routes, or a traffic split.
    let overrides_policy = !p.fully_qualified_name.is_empty()
        && (!routes.is_empty() || dst_overrides.iter().any(|(_, w)| *w > 0));
    Profile {
        overrides_policy,
        routes,
        // A service profile's routes apply in their order.
        most_specific: false,
        // A request no route matches goes to the service.
        unrouted: None,
        retry_budget,
        dst_overrides,
        opaque: p.opaque_protocol,
        opaque_route: None,
        tls_routes: Vec::new(),
        // GetProfile has no accrual or queue settings: the proxy's apply.
        accrual: None,
        queues: Vec::new(),
    }
}

pub(crate) fn duration(d: prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(secs, nanos))
}

/// A response class's condition, as linkerd2-proxy converts it: parts it
/// cannot use (a status outside 100–999, an empty list) are left out, and
/// a condition left with nothing is none.
fn response_match(m: linkerd2_proxy_api::destination::ResponseMatch) -> Option<ResponseMatch> {
    use linkerd2_proxy_api::destination::response_match::Match;
    let all = |ms: Vec<linkerd2_proxy_api::destination::ResponseMatch>| {
        let ms: Vec<ResponseMatch> = ms.into_iter().filter_map(response_match).collect();
        (!ms.is_empty()).then_some(ms)
    };
    let status = |s: u32| u16::try_from(s).ok().filter(|s| (100..=999).contains(s));
    Some(match m.r#match? {
        Match::All(seq) => ResponseMatch::All(all(seq.matches)?),
        Match::Any(seq) => ResponseMatch::Any(all(seq.matches)?),
        Match::Not(inner) => ResponseMatch::Not(Box::new(response_match(*inner)?)),
        Match::Status(r) => ResponseMatch::Status {
            min: status(r.min)?,
            max: status(r.max)?,
        },
    })
}

fn request_match(m: linkerd2_proxy_api::destination::RequestMatch) -> Result<RequestMatch, String> {
    use linkerd2_proxy_api::destination::request_match::Match;
    let all = |ms: Vec<linkerd2_proxy_api::destination::RequestMatch>| {
        ms.into_iter()
            .map(request_match)
            .collect::<Result<Vec<_>, _>>()
    };
    match m.r#match {
        Some(Match::All(seq)) => Ok(RequestMatch::All(all(seq.matches)?)),
        Some(Match::Any(seq)) => Ok(RequestMatch::Any(all(seq.matches)?)),
        Some(Match::Not(inner)) => Ok(RequestMatch::Not(Box::new(request_match(*inner)?))),
        Some(Match::Path(p)) => {
            crate::patterns::regex("path regex", &p.regex).map(RequestMatch::Path)
        }
        Some(Match::Method(m)) => http::Method::try_from(m)
            .map(|m| RequestMatch::Method(m.as_str().to_string()))
            .map_err(|e| format!("method: {e}")),
        None => Err("an empty match".into()),
    }
}

/// A target's endpoints as the updates of its stream built them.
#[derive(Default)]
struct EndpointSet {
    eps: BTreeMap<SocketAddr, Endpoint>,
    /// Endpoints with the `opaque` protocol hint (their port is marked
    /// opaque where they run).
    opaque: std::collections::BTreeSet<SocketAddr>,
    labels: Arc<[(String, String)]>,
}

impl EndpointSet {
    /// Applies one update (the first of a stream, `fresh`, replaces what
    /// was there); returns how many addresses were skipped as invalid.
    fn apply(&mut self, name: &Authority, update: Update, fresh: bool) -> usize {
        if fresh {
            self.eps.clear();
            self.opaque.clear();
        }
        let mut invalid = 0;
        match update.update {
            Some(update::Update::Add(set)) => {
                let set_labels = labels(set.metric_labels);
                if set_labels.is_some() || fresh {
                    self.labels = set_labels.clone().unwrap_or_else(|| Arc::new([]));
                }
                for wa in set.addrs {
                    match endpoint(wa) {
                        Ok((mut ep, opaque)) => {
                            // This Add's set labels under the address's
                            // own, kept with it (as linkerd2-proxy's
                            // `to_addr_meta`: a later Add's set labels
                            // are its addresses' only).
                            ep.labels = match (&set_labels, ep.labels.take()) {
                                (Some(set), Some(own)) => Some(merged(set, &own)),
                                (set, own) => own.or_else(|| set.clone()),
                            };
                            if opaque {
                                self.opaque.insert(ep.addr);
                            } else {
                                self.opaque.remove(&ep.addr);
                            }
                            self.eps.insert(ep.addr, ep);
                        }
                        Err(why) => {
                            invalid += 1;
                            tracing::warn!(%name, why, "destination sent an invalid address; skipped");
                        }
                    }
                }
            }
            Some(update::Update::Remove(set)) => {
                for a in set.addrs {
                    match socket_addr(a) {
                        Some(addr) => {
                            self.eps.remove(&addr);
                            self.opaque.remove(&addr);
                        }
                        None => invalid += 1,
                    }
                }
            }
            Some(update::Update::NoEndpoints(_)) => {
                self.eps.clear();
                self.opaque.clear();
            }
            None => {
                invalid += 1;
                tracing::warn!(%name, "destination sent an empty update; ignored");
            }
        }
        invalid
    }

    /// Opaque when every endpoint is hinted so: connections skip
    /// detection, as for a port marked opaque (`GetProfile`'s
    /// `opaque_protocol` says the same, later).
    fn protocol(&self) -> Option<ringmesh_discovery::Protocol> {
        (!self.eps.is_empty() && self.opaque.len() == self.eps.len())
            .then_some(ringmesh_discovery::Protocol::Opaque)
    }

    /// What workers route `name` to: the set; for an original
    /// destination the Destination API has no endpoints for, the address
    /// itself (forwarded as it is, as linkerd2-proxy does).
    fn endpoints(&self, name: &Authority) -> Vec<Endpoint> {
        match name.socket_addr() {
            Some(addr) if self.eps.is_empty() => vec![Endpoint::unmeshed(addr, 1)],
            _ => self.eps.values().cloned().collect(),
        }
    }
}

/// An endpoint's address; none for port 0, or an IP no endpoint has
/// (unspecified: Linux would connect it to this host; multicast,
/// broadcast).
fn socket_addr(a: linkerd2_proxy_api::net::TcpAddress) -> Option<SocketAddr> {
    let port = u16::try_from(a.port).ok().filter(|p| *p != 0)?;
    let ip = std::net::IpAddr::try_from(a.ip?).ok()?.to_canonical();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}

/// An endpoint from the Destination API's description of it, and whether
/// it carries the `opaque` hint.
fn endpoint(wa: WeightedAddr) -> Result<(Endpoint, bool), &'static str> {
    let addr = wa
        .addr
        .and_then(socket_addr)
        .ok_or("no address, an unspecified, multicast or broadcast one, or port 0")?;
    let identity = match wa.tls_identity.and_then(|t| t.strategy) {
        None => None,
        Some(tls_identity::Strategy::DnsLikeIdentity(id)) => {
            Some(Name::parse(&id.name).map_err(|_| "tls_identity is not a DNS-like name")?)
        }
        // Mutual TLS cannot prove a URI identity here: refused rather
        // than sent in plaintext.
        Some(tls_identity::Strategy::UriLikeIdentity(_)) => {
            return Err("URI tls_identity is not supported")
        }
    };
    let (h2_hint, opaque, transport_port) = match wa.protocol_hint {
        None => (false, false, None),
        Some(h) => (
            matches!(h.protocol, Some(protocol_hint::Protocol::H2(_))),
            matches!(h.protocol, Some(protocol_hint::Protocol::Opaque(_))),
            h.opaque_transport
                .and_then(|t| u16::try_from(t.inbound_port).ok())
                .filter(|p| *p != 0),
        ),
    };
    let authority_override = match wa.authority_override {
        None => None,
        Some(o) if o.authority_override.is_empty() => None,
        Some(o) => {
            let a = http::uri::Authority::try_from(o.authority_override.as_str())
                .map_err(|_| "authority_override is not an authority")?;
            Some(Arc::from(a.as_str()))
        }
    };
    let ep = Endpoint {
        addr,
        // linkerd's controller sends 10000 by default; 0 is "no weight".
        weight: wa.weight.max(1),
        h2_hint,
        // The transport header only goes with mutual TLS.
        opaque_transport_port: transport_port.filter(|_| identity.is_some()),
        identity,
        // The address's own labels (merged over its set's by the caller).
        labels: labels(wa.metric_labels),
        authority_override,
        h2_params: wa.http2.and_then(h2_params),
        local: false,
    };
    Ok((ep, opaque))
}

/// Largest stream window taken from the control plane: memory a peer may
/// fill before the proxy reads it.
const MAX_STREAM_WINDOW: u32 = 16 << 20;
/// Largest send buffer per stream taken from the control plane.
const MAX_SEND_BUF: u32 = 16 << 20;
/// Keep-alive PINGs at most this often, and a PING's answer awaited at
/// least this long.
const MIN_KEEP_ALIVE: Duration = Duration::from_millis(100);
/// A PING's answer is awaited this long when the control plane gives an
/// interval and no timeout.
const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The endpoint's HTTP/2 client settings from the Destination API's
/// `Http2ClientParams`. proto3 zeroes mean "not set"; values HTTP/2
/// forbids (a frame size outside 16 KiB ..= 16 MiB − 1) are dropped, a
/// large window or send buffer capped. Adaptive flow control is not built: with it
/// set, the proxy's own windows apply (as its other window settings are
/// ignored then). `None` when nothing is set.
fn h2_params(p: Http2ClientParams) -> Option<Arc<H2Params>> {
    let nonzero = |v: u32| (v != 0).then_some(v);
    let mut out = H2Params::default();
    if let Some(fc) = p.flow_control.filter(|fc| !fc.adaptive_flow_control) {
        // (The connection window is not taken: see `H2Params`.)
        out.stream_window =
            nonzero(fc.initial_stream_window_size).map(|w| w.min(MAX_STREAM_WINDOW));
    }
    if let Some(i) = p.internals {
        out.max_frame_size = nonzero(i.max_frame_size).filter(|f| (1 << 14..1 << 24).contains(f));
        out.max_concurrent_reset_streams = nonzero(i.max_concurrent_reset_streams)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        out.max_send_buf_size = nonzero(i.max_send_buf_size)
            .map(|n| usize::try_from(n.min(MAX_SEND_BUF)).unwrap_or(usize::MAX));
    }
    if let Some(k) = p.keep_alive {
        let interval = k.interval.and_then(duration).filter(|d| !d.is_zero());
        out.keep_alive = interval.map(|interval| H2KeepAlive {
            interval: interval.max(MIN_KEEP_ALIVE),
            timeout: k
                .timeout
                .and_then(duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_KEEP_ALIVE_TIMEOUT)
                .max(MIN_KEEP_ALIVE),
            while_idle: k.while_idle,
        });
    }
    (out != H2Params::default()).then(|| Arc::new(out))
}

/// Valid metric labels, sorted by name (`None` when there are none).
fn labels(labels: impl IntoIterator<Item = (String, String)>) -> Option<Arc<[(String, String)]>> {
    let mut v: Vec<(String, String)> = labels
        .into_iter()
        .filter(|(k, _)| is_label_name(k))
        .collect();
    v.sort();
    (!v.is_empty()).then(|| v.into())
}

/// An endpoint's labels over its set's (the endpoint's win a name both
/// have).
fn merged(set: &[(String, String)], own: &[(String, String)]) -> Arc<[(String, String)]> {
    let mut m: BTreeMap<&str, &str> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    m.extend(own.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    m.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A Prometheus label name (`dst_` is prefixed when rendered).
fn is_label_name(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The Destination resolver's counters, rendered by the admin server.
#[derive(Default)]
pub(crate) struct DestinationMetrics {
    /// Targets followed.
    watches: AtomicU64,
    /// `Get` and `GetProfile` streams.
    streams: StreamCounters,
    /// Addresses skipped as invalid.
    invalid: AtomicU64,
}

impl DestinationMetrics {
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP destination_watches Targets followed through the Destination API.\n# TYPE destination_watches gauge\ndestination_watches {}",
            self.watches.load(Ordering::Relaxed)
        );
        self.streams
            .render(out, "destination", "Destination.Get and GetProfile");
        let _ = writeln!(
            out,
            "# HELP destination_invalid_addresses_total Addresses in Destination updates skipped as invalid.\n# TYPE destination_invalid_addresses_total counter\ndestination_invalid_addresses_total {}",
            self.invalid.load(Ordering::Relaxed)
        );
    }
}

#[cfg(fuzzing)]
pub(crate) mod fuzzing {
    use super::*;
    use prost::Message as _;

    pub(crate) fn update(bytes: &[u8]) {
        let Ok(update) = Update::decode(bytes) else {
            return;
        };
        for name in ["web.default.svc.cluster.local:80", "10.0.0.1:80"] {
            let name = Authority::parse(name).unwrap();
            let mut set = EndpointSet::default();
            set.apply(&name, update.clone(), true);
            set.apply(&name, update.clone(), false);
            let _ = (set.endpoints(&name), set.protocol());
        }
    }

    pub(crate) fn profile(bytes: &[u8]) {
        let Ok(p) = DestinationProfile::decode(bytes) else {
            return;
        };
        let name = Authority::parse("web.default.svc.cluster.local:80").unwrap();
        let p = super::profile(&name, p);
        for (method, path) in [("GET", "/"), ("POST", "/a/b?c"), ("PATCH", "")] {
            let req = ringmesh_discovery::profile::Req {
                method,
                path,
                host: Some("web"),
                headers: &[("x-a", "b")],
            };
            let _ = p.route(&req);
        }
        for r in [0.0, 0.5, 0.999_999] {
            let _ = p.split(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::destination::{
        AddrSet, NoEndpoints, ProtocolHint, TlsIdentity, WeightedAddrSet,
    };
    use linkerd2_proxy_api::net::TcpAddress;

    /// Bad or hostile HTTP/2 client parameters never reach the HTTP/2
    /// library as they are (an out-of-range frame size would panic it).
    #[test]
    fn http2_client_params_are_validated() {
        use linkerd2_proxy_api::destination::http2_client_params::{
            FlowControl, Internals, KeepAlive,
        };
        let d = |ms: i32| prost_types::Duration {
            seconds: 0,
            nanos: ms * 1_000_000,
        };
        // Nothing set (proto3 zeroes): the proxy's own settings.
        assert_eq!(h2_params(Http2ClientParams::default()), None);
        let zeroes = Http2ClientParams {
            flow_control: Some(FlowControl::default()),
            keep_alive: Some(KeepAlive::default()),
            internals: Some(Internals::default()),
        };
        assert_eq!(h2_params(zeroes), None);
        for (frame, taken) in [
            (5, None),
            (16_383, None),
            (16_384, Some(16_384)),
            ((1 << 24) - 1, Some((1 << 24) - 1)),
            (1 << 24, None),
        ] {
            let p = Http2ClientParams {
                internals: Some(Internals {
                    max_frame_size: frame,
                    ..Default::default()
                }),
                ..Default::default()
            };
            assert_eq!(
                h2_params(p).and_then(|p| p.max_frame_size),
                taken,
                "{frame}"
            );
        }
        let p = h2_params(Http2ClientParams {
            flow_control: Some(FlowControl {
                initial_stream_window_size: u32::MAX,
                initial_connection_window_size: 1,
                adaptive_flow_control: false,
            }),
            keep_alive: Some(KeepAlive {
                interval: Some(d(1)),
                timeout: None,
                while_idle: false,
            }),
            internals: Some(Internals {
                max_send_buf_size: u32::MAX,
                ..Default::default()
            }),
        })
        .unwrap();
        assert_eq!(p.stream_window, Some(MAX_STREAM_WINDOW));
        assert_eq!(p.max_send_buf_size, Some(MAX_SEND_BUF as usize));
        let k = p.keep_alive.unwrap();
        assert_eq!(
            (k.interval, k.timeout),
            (MIN_KEEP_ALIVE, DEFAULT_KEEP_ALIVE_TIMEOUT)
        );
        // Adaptive flow control (not built): the other window settings
        // are ignored, as linkerd2-proxy ignores them then.
        let adaptive = Http2ClientParams {
            flow_control: Some(FlowControl {
                initial_stream_window_size: 1 << 20,
                initial_connection_window_size: 1 << 22,
                adaptive_flow_control: true,
            }),
            ..Default::default()
        };
        assert_eq!(h2_params(adaptive), None);
    }

    fn wa(addr: &str, weight: u32) -> WeightedAddr {
        WeightedAddr {
            addr: Some(TcpAddress::from(addr.parse::<SocketAddr>().unwrap())),
            weight,
            ..Default::default()
        }
    }

    fn add(addrs: Vec<WeightedAddr>, labels: &[(&str, &str)]) -> Update {
        Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs,
                metric_labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
        }
    }

    fn addrs(s: &EndpointSet) -> Vec<String> {
        s.eps.keys().map(|a| a.to_string()).collect()
    }

    #[test]
    fn add_remove_no_endpoints_and_a_fresh_stream_replacing() {
        let name = Authority::parse("web.default.svc.cluster.local:80").unwrap();
        let mut s = EndpointSet::default();
        let n = s.apply(
            &name,
            add(
                vec![wa("10.0.0.1:80", 10000), wa("10.0.0.2:80", 0)],
                &[
                    ("service", "web"),
                    ("namespace", "default"),
                    ("bad-name", "x"),
                ],
            ),
            true,
        );
        assert_eq!(n, 0);
        assert_eq!(addrs(&s), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(
            s.eps.values().map(|e| e.weight).collect::<Vec<_>>(),
            [10000, 1]
        );
        assert_eq!(
            &*s.labels,
            [
                ("namespace".to_string(), "default".to_string()),
                ("service".to_string(), "web".to_string())
            ]
        );
        s.apply(&name, add(vec![wa("10.0.0.3:80", 1)], &[]), false);
        assert_eq!(addrs(&s).len(), 3, "added to the set");
        assert_eq!(s.labels.len(), 2, "labels kept by an Add without any");
        let remove = Update {
            update: Some(update::Update::Remove(AddrSet {
                addrs: vec![TcpAddress::from(
                    "10.0.0.1:80".parse::<SocketAddr>().unwrap(),
                )],
            })),
        };
        s.apply(&name, remove, false);
        assert_eq!(addrs(&s), ["10.0.0.2:80", "10.0.0.3:80"]);
        // A reconnected stream's first Add is the whole set.
        s.apply(&name, add(vec![wa("10.0.0.9:80", 1)], &[]), true);
        assert_eq!(addrs(&s), ["10.0.0.9:80"]);
        assert!(s.labels.is_empty());
        let none = Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: true })),
        };
        s.apply(&name, none, false);
        assert!(s.eps.is_empty());
        assert_eq!(s.protocol(), None);
        // Every endpoint hinted opaque: the service skips detection.
        let mut o = wa("10.0.0.7:80", 1);
        o.protocol_hint = Some(ProtocolHint {
            protocol: Some(protocol_hint::Protocol::Opaque(protocol_hint::Opaque {})),
            opaque_transport: None,
        });
        s.apply(&name, add(vec![o], &[]), false);
        assert_eq!(s.protocol(), Some(ringmesh_discovery::Protocol::Opaque));
        s.apply(&name, add(vec![wa("10.0.0.8:80", 1)], &[]), false);
        assert_eq!(s.protocol(), None, "not every endpoint is opaque");
    }

    /// Each Add's set labels are its own addresses' (under each
    /// address's own), as linkerd2-proxy's: a later Add neither relabels
    /// the endpoints before it nor leaves its set labels to the next.
    #[test]
    fn an_adds_set_labels_are_its_addresses() {
        let name = Authority::parse("web.default.svc.cluster.local:80").unwrap();
        let mut s = EndpointSet::default();
        let mut a = wa("10.0.0.1:80", 1);
        a.metric_labels = [("pod".to_string(), "a".to_string())].into();
        s.apply(&name, add(vec![a], &[("service", "web")]), true);
        s.apply(
            &name,
            add(vec![wa("10.0.0.2:80", 1)], &[("service", "web2")]),
            false,
        );
        s.apply(&name, add(vec![wa("10.0.0.3:80", 1)], &[]), false);
        let of = |addr: &str| -> Vec<(String, String)> {
            let eps = s.endpoints(&name);
            let ep = eps.iter().find(|e| e.addr.to_string() == addr).unwrap();
            ep.labels.as_deref().unwrap_or_default().to_vec()
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            of("10.0.0.1:80"),
            [pair("pod", "a"), pair("service", "web")]
        );
        assert_eq!(of("10.0.0.2:80"), [pair("service", "web2")]);
        assert_eq!(of("10.0.0.3:80"), []);
    }

    #[test]
    fn invalid_addresses_are_skipped_and_the_rest_applied() {
        let name = Authority::parse("web.default.svc.cluster.local:80").unwrap();
        let mut s = EndpointSet::default();
        let mut no_ip = wa("10.0.0.1:80", 1);
        no_ip.addr.as_mut().unwrap().ip = None;
        let mut big_port = wa("10.0.0.1:80", 1);
        big_port.addr.as_mut().unwrap().port = 70_000;
        let port0 = wa("10.0.0.1:0", 1);
        let mut bad_id = wa("10.0.0.4:80", 1);
        bad_id.tls_identity = Some(TlsIdentity {
            strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                tls_identity::DnsLikeIdentity {
                    name: "not a name!".into(),
                },
            )),
            server_name: None,
        });
        let mut meshed = wa("10.0.0.5:80", 1);
        meshed.tls_identity = Some(TlsIdentity {
            strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                tls_identity::DnsLikeIdentity {
                    name: "web.default.serviceaccount.identity.linkerd.cluster.local".into(),
                },
            )),
            server_name: None,
        });
        meshed.protocol_hint = Some(ProtocolHint {
            protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})),
            opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: 4143 }),
        });
        let mut plain_transport = wa("10.0.0.6:80", 1);
        plain_transport.protocol_hint = Some(ProtocolHint {
            protocol: None,
            opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: 4143 }),
        });
        // Addresses no endpoint has (Linux connects unspecified ones to
        // this host); an IPv4-mapped one is its IPv4 address.
        let nowhere = [
            "0.0.0.0:80",
            "[::]:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[ff02::1]:80",
        ]
        .map(|a| wa(a, 1));
        let mapped = wa("[::ffff:10.0.0.7]:80", 1);
        let mut sent = vec![
            no_ip,
            big_port,
            port0,
            bad_id,
            meshed,
            plain_transport,
            mapped,
        ];
        sent.extend(nowhere);
        let n = s.apply(&name, add(sent, &[]), true);
        assert_eq!(n, 9);
        assert_eq!(addrs(&s), ["10.0.0.5:80", "10.0.0.6:80", "10.0.0.7:80"]);
        let m = &s.eps[&"10.0.0.5:80".parse().unwrap()];
        assert!(m.h2_hint);
        assert_eq!(m.opaque_transport_port, Some(4143));
        assert_eq!(
            m.identity.as_ref().map(|n| n.as_str()),
            Some("web.default.serviceaccount.identity.linkerd.cluster.local")
        );
        let p = &s.eps[&"10.0.0.6:80".parse().unwrap()];
        assert_eq!(
            p.opaque_transport_port, None,
            "no transport header without mTLS"
        );
        assert_eq!(s.apply(&name, Update { update: None }, false), 1);
        assert_eq!(addrs(&s).len(), 3, "an empty update changes nothing");
    }

    #[test]
    fn profiles_skip_unusable_routes_and_name_backends() {
        use linkerd2_proxy_api::destination::{
            request_match, PathMatch, RequestMatch as Pm, Route, WeightedDst,
        };
        let name = Authority::parse("web.default.svc.cluster.local:8080").unwrap();
        let path = |re: &str| Pm {
            r#match: Some(request_match::Match::Path(PathMatch { regex: re.into() })),
        };
        let route = |m: Option<Pm>, label: &str| Route {
            condition: m,
            metrics_labels: [("route".to_string(), label.to_string())].into(),
            is_retryable: true,
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            ..Default::default()
        };
        let p = profile(
            &name,
            DestinationProfile {
                routes: vec![
                    route(Some(path("/ok/.*")), "ok"),
                    route(Some(path("(unclosed")), "bad-regex"),
                    route(None, "no-condition"),
                    route(Some(Pm { r#match: None }), "empty"),
                ],
                dst_overrides: vec![
                    WeightedDst {
                        authority: "web-v2.default.svc.cluster.local.".into(),
                        weight: 5,
                        ..Default::default()
                    },
                    WeightedDst {
                        authority: "bad host!".into(),
                        weight: 5,
                        ..Default::default()
                    },
                ],
                opaque_protocol: true,
                ..Default::default()
            },
        );
        assert_eq!(p.routes.len(), 1);
        let req = |path| ringmesh_discovery::profile::Req {
            method: "GET",
            path,
            host: None,
            headers: &[],
        };
        let r = p.route(&req("/ok/x")).unwrap();
        assert_eq!(r.name.as_deref(), Some("ok"));
        assert_eq!(r.timeout, Some(Duration::from_millis(250)));
        assert!(r.retry.as_ref().is_some_and(|r| r.retries_status(500)));
        assert!(p.route(&req("/ok")).is_none(), "anchored");
        assert_eq!(
            p.dst_overrides
                .iter()
                .map(|(a, w)| (a.as_str(), *w))
                .collect::<Vec<_>>(),
            [("web-v2.default.svc.cluster.local:8080", 5)]
        );
        assert!(p.opaque);
    }
}
