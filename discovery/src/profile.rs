//! A service's routing profile: its routes, each with a timeout, whether
//! its requests may be retried and possibly backends of its own; the retry
//! budget; traffic split across other services. Built from Linkerd's
//! `DestinationProfile` or from an outbound policy (its HTTP and gRPC
//! routes), published beside the services in the snapshot; workers match
//! a request against it.

use std::sync::Arc;
use std::time::Duration;

use crate::Authority;

/// What route matching needs to know of a request.
pub trait RequestInfo {
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The authority's host, without the port.
    fn host(&self) -> Option<&str>;
    /// The first value of the header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The authority as the request gave it (`host[:port]`), for a
    /// redirect's location.
    fn authority(&self) -> Option<&str> {
        self.host()
    }
    /// The path with its query, for a redirect's location.
    fn path_and_query(&self) -> &str {
        self.path()
    }
    /// `http` or `https`.
    fn scheme(&self) -> &str {
        "http"
    }
    /// The query (after `?`), if any.
    fn query(&self) -> Option<&str> {
        self.path_and_query().split_once('?').map(|(_, q)| q)
    }
}

/// A plain request description (tests, fuzzing).
pub struct Req<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
}

impl RequestInfo for Req<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// How a header's value must look.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(Vec<u8>),
    /// The whole value matches (anchored).
    Regex(regex::bytes::Regex),
}

impl ValueMatch {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Self::Exact(e) => e == v,
            Self::Regex(re) => re.is_match(v),
        }
    }
}

/// What a request must look like for a route to apply.
#[derive(Clone, Debug)]
pub enum RequestMatch {
    All(Vec<RequestMatch>),
    Any(Vec<RequestMatch>),
    Not(Box<RequestMatch>),
    /// The path matches the whole regex (anchored).
    Path(regex::Regex),
    PathExact(String),
    /// The path starts with this prefix at a segment boundary (`/v2`
    /// matches `/v2` and `/v2/x`, not `/v20`).
    PathPrefix(String),
    /// The method, uppercase.
    Method(String),
    /// A header (lowercase name) is present with a matching value.
    Header(String, ValueMatch),
    /// The host is this name, or is under it with `suffix` (lowercase, no
    /// port, no trailing dot).
    Host {
        name: String,
        suffix: bool,
    },
    /// A query parameter (its name and value form-decoded) has this name
    /// and a matching value.
    Query(String, ValueMatch),
    /// A gRPC call: a `POST` to `/service/method`, the service and the
    /// method these when given.
    Rpc {
        service: Option<String>,
        method: Option<String>,
    },
}

/// How specifically a request matched a route, as the Gateway API ranks
/// matches (and linkerd2-proxy with it): the host first (an exact host
/// over a suffix, a longer one over a shorter), then the path's matched
/// length (a gRPC call's: the service's, then the method's), then how many
/// headers, then query parameters, then whether the method was matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    host: HostSpecificity,
    path: usize,
    rpc_method: usize,
    headers: usize,
    query: usize,
    method: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum HostSpecificity {
    /// The route names no host.
    #[default]
    Any,
    Suffix(usize),
    Exact(usize),
}

impl Specificity {
    /// Both matched (an `All`): each part from whichever gave it.
    fn and(self, o: Self) -> Self {
        Self {
            host: self.host.max(o.host),
            path: self.path.max(o.path),
            rpc_method: self.rpc_method.max(o.rpc_method),
            headers: self.headers + o.headers,
            query: self.query + o.query,
            method: self.method || o.method,
        }
    }
}

/// Whether `path` starts with `prefix` at a segment boundary (`/v2`
/// matches `/v2` and `/v2/x`, not `/v20`), as a route's prefix match.
/// `/` is every request's prefix, as linkerd2-proxy's: `OPTIONS *` and a
/// `CONNECT`'s authority-form target too.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    p.is_empty()
        || path.starts_with(p)
            && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'))
}

impl RequestMatch {
    pub fn matches(&self, req: &dyn RequestInfo) -> bool {
        match self {
            Self::All(ms) => ms.iter().all(|m| m.matches(req)),
            Self::Any(ms) => ms.iter().any(|m| m.matches(req)),
            Self::Not(m) => !m.matches(req),
            Self::Path(re) => re.is_match(req.path()),
            Self::PathExact(p) => req.path() == p,
            Self::PathPrefix(p) => path_has_prefix(req.path(), p),
            Self::Method(m) => m.eq_ignore_ascii_case(req.method()),
            Self::Header(name, v) => req.header(name).is_some_and(|h| v.matches(h)),
            Self::Host { name, suffix } => host_matches(req, name, *suffix),
            Self::Query(name, v) => query_matches(req, name, v),
            Self::Rpc { service, method } => rpc_matches(req, service, method).is_some(),
        }
    }

    /// How specifically `req` matches, or `None` when it does not (see
    /// [`Specificity`]). A `Not` that holds counts as matching nothing in
    /// particular.
    pub fn specificity(&self, req: &dyn RequestInfo) -> Option<Specificity> {
        let none = Specificity::default();
        match self {
            Self::All(ms) => ms
                .iter()
                .try_fold(none, |acc, m| Some(acc.and(m.specificity(req)?))),
            Self::Any(ms) => ms.iter().filter_map(|m| m.specificity(req)).max(),
            Self::Not(_) => self.matches(req).then_some(none),
            Self::Path(_) => self.matches(req).then(|| Specificity {
                path: req.path().len(),
                ..none
            }),
            Self::PathExact(p) => self.matches(req).then_some(Specificity {
                path: p.len(),
                ..none
            }),
            Self::PathPrefix(p) => self.matches(req).then_some(Specificity {
                path: if p == "/" {
                    1
                } else {
                    p.trim_end_matches('/').len()
                },
                ..none
            }),
            Self::Method(_) => self.matches(req).then_some(Specificity {
                method: true,
                ..none
            }),
            Self::Header(..) => self
                .matches(req)
                .then_some(Specificity { headers: 1, ..none }),
            Self::Query(..) => self
                .matches(req)
                .then_some(Specificity { query: 1, ..none }),
            Self::Host { name, suffix } => self.matches(req).then_some(Specificity {
                host: if *suffix {
                    HostSpecificity::Suffix(name.len())
                } else {
                    HostSpecificity::Exact(name.len())
                },
                ..none
            }),
            Self::Rpc { service, method } => {
                rpc_matches(req, service, method).map(|(s, m)| Specificity {
                    path: s,
                    rpc_method: m,
                    ..none
                })
            }
        }
    }
}

fn host_matches(req: &dyn RequestInfo, name: &str, suffix: bool) -> bool {
    req.host().is_some_and(|h| {
        let h = h.trim_end_matches('.');
        if suffix {
            h.len() > name.len()
                && h[h.len() - name.len()..].eq_ignore_ascii_case(name)
                && h.as_bytes()[h.len() - name.len() - 1] == b'.'
        } else {
            h.eq_ignore_ascii_case(name)
        }
    })
}

/// Whether one of the query's parameters is `name` with a value `v`
/// matches (both form-decoded: `%XX` and `+`).
fn query_matches(req: &dyn RequestInfo, name: &str, v: &ValueMatch) -> bool {
    req.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(n, value)| n == name && v.matches(value.as_bytes()))
    })
}

/// A gRPC call's match: the lengths of the service and method names
/// matched (0 for one not asked for), or `None`.
fn rpc_matches(
    req: &dyn RequestInfo,
    service: &Option<String>,
    method: &Option<String>,
) -> Option<(usize, usize)> {
    if req.method() != "POST" {
        return None;
    }
    let mut parts = req.path().split('/');
    if !parts.next()?.is_empty() {
        return None;
    }
    let (s, m) = (parts.next()?, parts.next()?);
    let len = |want: &Option<String>, got: &str| match want {
        None => Some(0),
        Some(w) => (w == got).then_some(w.len()),
    };
    Some((len(service, s)?, len(method, m)?))
}

/// Which responses of a route are failures (a ServiceProfile's
/// `responseClasses`): the first class whose condition matches a
/// response's status decides; none matching, 5xx are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseClassRule {
    pub condition: ResponseMatch,
    pub failure: bool,
}

/// A condition on a response's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseMatch {
    All(Vec<ResponseMatch>),
    Any(Vec<ResponseMatch>),
    Not(Box<ResponseMatch>),
    /// `min..=max`.
    Status {
        min: u16,
        max: u16,
    },
}

impl ResponseMatch {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            Self::All(ms) => ms.iter().all(|m| m.matches(status)),
            Self::Any(ms) => ms.iter().any(|m| m.matches(status)),
            Self::Not(m) => !m.matches(status),
            Self::Status { min, max } => (*min..=*max).contains(&status),
        }
    }
}

/// Whether `classes` make a response with `status` a failure: the first
/// matching class's word; `None` when none matches (the default: 5xx).
pub fn classify(classes: &[ResponseClassRule], status: u16) -> Option<bool> {
    classes
        .iter()
        .find(|c| c.condition.matches(status))
        .map(|c| c.failure)
}

/// The statuses (100–599, as inclusive ranges) `classes` make failures,
/// 5xx where no class matches: what a retryable route retries.
pub fn failure_ranges(classes: &[ResponseClassRule]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for status in 100..=599u16 {
        if !classify(classes, status).unwrap_or(status >= 500) {
            continue;
        }
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == status => *hi = status,
            _ => out.push((status, status)),
        }
    }
    out
}

/// One route of a profile.
#[derive(Clone, Debug)]
pub struct ProfileRoute {
    pub condition: RequestMatch,
    /// The `rt_route` metric label (the route's `route` metric label).
    pub name: Option<Arc<str>>,
    /// When a failed request goes again to another endpoint (`None`: only
    /// as every request may, on 502/503 when idempotent).
    pub retry: Option<Arc<RetryPolicy>>,
    /// The request's budget, head to response head: past it, 504.
    pub timeout: Option<Duration>,
    /// Requests may set their own timeout and retries with Linkerd's
    /// `l5d-timeout` / `l5d-retry-*` headers (an outbound policy's
    /// `allow_l5d_request_headers`).
    pub l5d_headers: bool,
    /// The route's own backends, drawn by weight (an outbound policy's
    /// distribution); empty: the service's.
    pub backends: Vec<(Authority, u32)>,
    /// What the route does to its requests and responses, in order (an
    /// outbound policy's filters); `None`: nothing.
    pub filters: Option<Arc<[RouteFilter]>>,
    /// For each backend with filters of its own, every filter its
    /// requests get: the route's, then its own (in the order of
    /// `backends`; empty when no backend has any).
    pub backend_filters: Vec<Option<Arc<[RouteFilter]>>>,
    /// Which of its responses are failures (a ServiceProfile route's
    /// response classes); `None`: 5xx.
    pub classes: Option<Arc<[ResponseClassRule]>>,
}

/// One filter of a route (Linkerd's outbound policy, after the Gateway
/// API's `HTTPRoute` / `GRPCRoute` filters), applied in the policy's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteFilter {
    /// `numerator / denominator` of the route's requests are answered by
    /// the proxy with `status` (an HTTP route) or, with `grpc`, that
    /// `grpc-status` (a gRPC route), `message` as the reason, instead of
    /// being forwarded.
    Fail {
        status: u16,
        grpc: Option<u32>,
        message: Arc<str>,
        numerator: u32,
        denominator: u32,
    },
    /// Requests are answered with a redirect.
    Redirect(Redirect),
    /// Fields added, set and removed on requests before they go upstream.
    RequestHeaders(HeaderEdit),
    /// Fields added, set and removed on responses on their way back.
    ResponseHeaders(HeaderEdit),
    /// Every request is answered by the proxy: an outbound policy's
    /// request that no route matches, a rule with no backends, or a
    /// policy that cannot be used (as linkerd2-proxy answers them).
    Refuse(Refusal),
}

/// Why a policy's request is answered instead of forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No route of the policy matches the request (404, gRPC NOT_FOUND).
    NoRoute,
    /// The rule's distribution is empty: no backend to send it to (503).
    NoBackends,
    /// The policy is invalid, for this reason (500).
    Invalid(Arc<str>),
}

/// A redirect: the `location` is the request's URL with the parts given
/// replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<Arc<str>>,
    pub host: Option<Arc<str>>,
    pub port: Option<u16>,
    pub path: Option<RedirectPath>,
    /// 3xx (301 unless the policy says).
    pub status: u16,
}

/// How a redirect's path is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectPath {
    /// This path replaces the request's (and its query).
    Full(Arc<str>),
    /// This replaces the path prefix the route matched (the query kept);
    /// `matched` are the rule's path prefixes, empty when some match of
    /// the rule is not a path prefix (then the redirect cannot be made:
    /// its requests get 500, as linkerd2-proxy answers).
    Prefix {
        replace: Arc<str>,
        matched: Vec<Arc<str>>,
    },
}

/// Header fields to change: `add` appends a field, `set` replaces every
/// field of its name, `remove` drops a name, in that order. Names are
/// lowercase and valid; values are valid field values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdit {
    pub add: Vec<(Arc<str>, Arc<[u8]>)>,
    pub set: Vec<(Arc<str>, Arc<[u8]>)>,
    pub remove: Vec<Arc<str>>,
}

impl HeaderEdit {
    /// Names every field of which goes (set or removed).
    pub fn replaced(&self) -> impl Iterator<Item = &str> {
        self.set
            .iter()
            .map(|(n, _)| &**n)
            .chain(self.remove.iter().map(|n| &**n))
    }

    /// Fields to append, after the [`Self::replaced`] names are gone: the
    /// added and set ones, except those a later part removes or replaces.
    pub fn appended(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let removed = |n: &str| self.remove.iter().any(|r| **r == *n);
        let set = |n: &str| self.set.iter().any(|(s, _)| **s == *n);
        // A name set twice: the last value wins (as linkerd2-proxy inserts
        // each in turn).
        let set_later = |i: usize, n: &str| self.set[i + 1..].iter().any(|(s, _)| **s == *n);
        self.add
            .iter()
            .filter(move |(n, _)| !removed(n) && !set(n))
            .chain(
                self.set
                    .iter()
                    .enumerate()
                    .filter(move |(i, (n, _))| !removed(n) && !set_later(*i, n))
                    .map(|(_, f)| f),
            )
            .map(|(n, v)| (&**n, &**v))
    }
}

/// Which failed requests on a route go again, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries per request.
    pub limit: u32,
    /// HTTP statuses that are retried (inclusive ranges).
    pub statuses: Vec<(u16, u16)>,
    /// gRPC status codes (of a trailers-only response) that are retried:
    /// bit `n` for code `n`.
    pub grpc: u32,
    /// Each attempt that could still be followed by a retry must have its
    /// response head within this; past it the attempt is given up and the
    /// request goes again to another endpoint (the last attempt waits
    /// for the route's own timeout only).
    pub timeout: Option<Duration>,
    /// The pause before each retry.
    pub backoff: Option<RetryBackoff>,
    /// The largest request body kept so the request can go again (a
    /// larger one streams, and the request is not retried).
    pub max_request_bytes: u64,
}

/// An exponential backoff, as Linkerd's: the `n`th retry (from 0) waits
/// `min · 2ⁿ` (at most `max`) plus up to `jitter` times that again, drawn
/// at random (never past `max`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBackoff {
    pub min: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl RetryBackoff {
    /// Linkerd's for retries a request's own `l5d-retry-*` headers ask
    /// for: 25 ms doubling to 250 ms, jittered by up to 100 %.
    pub const L5D_HEADERS: Self = Self {
        min: Duration::from_millis(25),
        max: Duration::from_millis(250),
        jitter: 1.0,
    };

    /// The pause before retry `n` (from 0), with `r` in `[0, 1)` drawn at
    /// random.
    pub fn delay(&self, n: u32, r: f64) -> Duration {
        let base = self
            .min
            .checked_mul(2u32.saturating_pow(n))
            .unwrap_or(self.max)
            .min(self.max);
        let extra = base.mul_f64((r * self.jitter).clamp(0.0, 100.0));
        base + extra.min(self.max.saturating_sub(base))
    }
}

/// gRPC status codes a retry policy may name.
pub mod grpc_code {
    pub const CANCELLED: u32 = 1;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;

    /// A code by its name in Linkerd's `l5d-retry-grpc` header and
    /// `retry.linkerd.io/grpc` annotation (`deadline-exceeded`, …).
    pub fn named(name: &str) -> Option<u32> {
        [
            ("cancelled", CANCELLED),
            ("deadline-exceeded", DEADLINE_EXCEEDED),
            ("internal", INTERNAL),
            ("resource-exhausted", RESOURCE_EXHAUSTED),
            ("unavailable", UNAVAILABLE),
        ]
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|(_, c)| *c)
    }
}

impl RetryPolicy {
    /// Retries per request when nothing says otherwise (GetProfile's
    /// retryable routes; 502/503 answers on any route).
    pub const DEFAULT_LIMIT: u32 = 2;
    /// The most retries per request a policy or a request's headers may
    /// ask for (the retry budget bounds them further).
    pub const MAX_LIMIT: u32 = 10;
    /// The largest body kept for a retry when nothing says otherwise (as
    /// linkerd2-proxy's for GetProfile routes and `l5d-retry-*` headers).
    pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 64 * 1024;
    /// The most a policy may ask to keep per request (a bound on the
    /// memory that retries pin: this times a core's requests in flight).
    pub const MAX_REQUEST_BYTES_CAP: u64 = 1024 * 1024;

    /// Retries on any 5xx (a GetProfile route's `is_retryable`).
    pub fn on_5xx(limit: u32) -> Self {
        Self {
            limit,
            statuses: vec![(500, 599)],
            grpc: 0,
            timeout: None,
            backoff: None,
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
        }
    }

    /// Whether an answer with HTTP status `status` is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.statuses
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// Whether a trailers-only gRPC answer with `code` is retried.
    pub fn retries_grpc(&self, code: u32) -> bool {
        code < 32 && self.grpc & (1 << code) != 0
    }
}

/// An outbound policy's opaque route (its one rule): each connection goes
/// to one of its backends, drawn by weight, unless a filter refuses it.
#[derive(Clone, Debug, PartialEq)]
pub struct OpaqueRoute {
    /// The route's name (`rt_route`-like, for logs).
    pub name: Option<Arc<str>>,
    /// Destination.Get paths or addresses, with their weights.
    pub backends: Vec<(Authority, u32)>,
    /// Why a connection drawn to the backend of the same index is refused
    /// (its own `forbidden` or `invalid` filter); empty when no backend
    /// has one.
    pub backend_refused: Vec<Option<Arc<str>>>,
    /// Why every connection is refused (the rule's `forbidden` or
    /// `invalid` filter); `None`: they go to a backend.
    pub refused: Option<Arc<str>>,
}

impl OpaqueRoute {
    /// The backend a connection goes to (`r`: a uniform draw in [0, 1)),
    /// or why it goes nowhere.
    pub fn pick(&self, r: f64) -> Result<&Authority, &str> {
        if let Some(why) = &self.refused {
            return Err(why);
        }
        let i = pick_index(&self.backends, r).ok_or("the opaque route has no backend")?;
        match self.backend_refused.get(i) {
            Some(Some(why)) => Err(why),
            _ => Ok(&self.backends[i].0),
        }
    }
}

/// An outbound policy's TLS route: the SNIs it takes (`None`: any, the
/// least specific) and where their connections go.
#[derive(Clone, Debug)]
pub struct TlsRoute {
    /// Exact names and wildcard suffixes ([`RequestMatch::Host`]s).
    pub snis: Option<RequestMatch>,
    pub route: OpaqueRoute,
}

/// The retry budget: retries may add `ratio` of the requests, plus
/// `min_per_second`, counted over `ttl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetSpec {
    pub ratio: f32,
    pub min_per_second: u32,
    pub ttl: Duration,
}

/// A service's profile.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// The routes: the first that matches a request applies (a service
    /// profile's order), or with `most_specific` the one that matches it
    /// most specifically, the first of equals (an outbound policy's
    /// routes, ranked as the Gateway API ranks them).
    pub routes: Vec<ProfileRoute>,
    pub most_specific: bool,
    /// The filters of a request no route matches (an outbound policy's:
    /// answered 404, or 500 for an invalid policy); `None`: it goes to
    /// the target (a service profile's).
    pub unrouted: Option<Arc<[RouteFilter]>>,
    pub retry_budget: Option<RetryBudgetSpec>,
    /// Traffic split: each request goes to one of these services, drawn
    /// by weight (empty: the service itself).
    pub dst_overrides: Vec<(Authority, u32)>,
    /// The service's port is opaque: no protocol detection.
    pub opaque: bool,
    /// Where its opaque connections go (an outbound policy's opaque
    /// route, for an opaque target, or a detecting one's traffic that is
    /// not HTTP); `None`: the target itself.
    pub opaque_route: Option<Arc<OpaqueRoute>>,
    /// A TLS target's routes (an outbound policy's TLSRoutes): each
    /// connection goes by the route its ClientHello's SNI matches most
    /// specifically ([`Profile::tls_route`]).
    pub tls_routes: Vec<TlsRoute>,
    /// How the endpoints of the services its requests go to are ejected
    /// (an outbound policy's failure accrual); `None`: the proxy's own
    /// setting.
    pub accrual: Option<AccrualSpec>,
    /// How requests wait for a backend with no endpoint (an outbound
    /// policy's per-backend queue), by backend; a backend not listed: the
    /// proxy's own fail-fast settings.
    pub queues: Vec<(Authority, QueueSpec)>,
    /// A service profile (GetProfile) of a named service with routes or a
    /// traffic split: it wins over the target's outbound policy, as
    /// linkerd2-proxy's `should_override_policy` decides.
    pub overrides_policy: bool,
}

/// A backend's request queue: while it has no endpoint, at most
/// `capacity` requests (per core) wait for one, each at most `failfast`;
/// after that the backend fails fast (503 at once) until one appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub capacity: usize,
    pub failfast: Duration,
}

/// Consecutive-failure accrual: `consecutive` failures in a row eject an
/// endpoint for a backoff from `min_backoff` doubling to `max_backoff`,
/// scaled by a random factor in [1 − jitter, 1 + jitter].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AccrualSpec {
    pub consecutive: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub jitter: f64,
}

impl Profile {
    /// The route a request takes, if any matches.
    pub fn route(&self, req: &dyn RequestInfo) -> Option<&ProfileRoute> {
        if !self.most_specific {
            return self.routes.iter().find(|r| r.condition.matches(req));
        }
        let mut best: Option<(Specificity, &ProfileRoute)> = None;
        for r in &self.routes {
            if let Some(s) = r.condition.specificity(req) {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, r));
                }
            }
        }
        best.map(|(_, r)| r)
    }

    /// The TLS route a connection whose ClientHello named `sni` takes:
    /// of the routes that match it, the most specific (an exact name over
    /// a wildcard, a longer one over a shorter, any over none), the first
    /// of equals; `None` when none does.
    pub fn tls_route(&self, sni: Option<&str>) -> Option<&OpaqueRoute> {
        let req = Req {
            method: "",
            path: "",
            host: sni,
            headers: &[],
        };
        let mut best: Option<(Specificity, &TlsRoute)> = None;
        for r in &self.tls_routes {
            let s = match &r.snis {
                None => Some(Specificity::default()),
                Some(m) => m.specificity(&req),
            };
            if let Some(s) = s {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, r));
                }
            }
        }
        best.map(|(_, r)| &r.route)
    }

    /// The queue settings for requests to `backend`, if the profile has
    /// its own.
    pub fn queue(&self, backend: &Authority) -> Option<QueueSpec> {
        self.queues
            .iter()
            .find(|(name, _)| name == backend)
            .map(|(_, q)| *q)
    }

    /// One of the overrides, drawn by weight with `r` in `[0, 1)`; `None`
    /// without overrides (or when every weight is 0).
    pub fn split(&self, r: f64) -> Option<&Authority> {
        pick(&self.dst_overrides, r)
    }
}

/// One of `weighted`, drawn by weight with `r` in `[0, 1)`; `None` when
/// empty or when every weight is 0.
pub fn pick(weighted: &[(Authority, u32)], r: f64) -> Option<&Authority> {
    pick_index(weighted, r).map(|i| &weighted[i].0)
}

/// As [`pick`]: the index of the one drawn.
pub fn pick_index(weighted: &[(Authority, u32)], r: f64) -> Option<usize> {
    let total: u64 = weighted.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut at = (r.clamp(0.0, 1.0) * total as f64) as u64;
    for (i, (_, w)) in weighted.iter().enumerate() {
        let w = u64::from(*w);
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    Some(weighted.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name set twice in one modifier: the last value wins, as
    /// linkerd2-proxy inserts each in turn; added values of a set name go.
    #[test]
    fn a_name_set_twice_keeps_the_last_value() {
        let f = |n: &str, v: &str| (Arc::<str>::from(n), Arc::<[u8]>::from(v.as_bytes()));
        let e = HeaderEdit {
            add: vec![f("x-d", "0"), f("x-a", "a")],
            set: vec![f("x-d", "1"), f("x-e", "e"), f("x-d", "2")],
            remove: vec![],
        };
        let got: Vec<(&str, &[u8])> = e.appended().collect();
        assert_eq!(
            got,
            vec![("x-a", &b"a"[..]), ("x-e", &b"e"[..]), ("x-d", &b"2"[..])]
        );
    }

    /// The first class that matches decides; none matching, 5xx are
    /// failures; the ranges a retryable route retries follow.
    #[test]
    fn response_classes_decide_failures() {
        let class = |condition, failure| ResponseClassRule { condition, failure };
        let status = |min, max| ResponseMatch::Status { min, max };
        let classes = [
            class(
                ResponseMatch::All(vec![
                    status(400, 499),
                    ResponseMatch::Not(Box::new(status(404, 404))),
                ]),
                true,
            ),
            class(
                ResponseMatch::Any(vec![status(503, 503), status(404, 404)]),
                false,
            ),
            class(status(500, 599), true),
        ];
        assert_eq!(classify(&classes, 429), Some(true));
        assert_eq!(classify(&classes, 404), Some(false));
        assert_eq!(classify(&classes, 503), Some(false));
        assert_eq!(classify(&classes, 200), None);
        assert_eq!(
            failure_ranges(&classes),
            [(400, 403), (405, 502), (504, 599)]
        );
        assert_eq!(failure_ranges(&[]), [(500, 599)]);
    }

    #[test]
    fn routes_match_in_order_and_split_follows_weights() {
        let re = |s: &str| regex::Regex::new(&format!("^(?:{s})$")).unwrap();
        let p = Profile {
            routes: vec![
                ProfileRoute {
                    condition: RequestMatch::All(vec![
                        RequestMatch::Method("GET".into()),
                        RequestMatch::Path(re("/slow/.*")),
                    ]),
                    name: Some("slow".into()),
                    retry: None,
                    timeout: Some(Duration::from_millis(100)),
                    l5d_headers: false,
                    backends: vec![],
                    filters: None,
                    backend_filters: vec![],
                    classes: None,
                },
                ProfileRoute {
                    condition: RequestMatch::Not(Box::new(RequestMatch::Path(re("/admin")))),
                    name: Some("rest".into()),
                    retry: Some(Arc::new(RetryPolicy::on_5xx(2))),
                    timeout: None,
                    l5d_headers: false,
                    backends: vec![],
                    filters: None,
                    backend_filters: vec![],
                    classes: None,
                },
            ],
            dst_overrides: vec![
                (Authority::parse("a.test:80").unwrap(), 1),
                (Authority::parse("b.test:80").unwrap(), 3),
            ],
            ..Profile::default()
        };
        let name = |method, path| {
            let req = Req {
                method,
                path,
                host: None,
                headers: &[],
            };
            p.route(&req).and_then(|r| r.name.as_deref())
        };
        assert_eq!(name("GET", "/slow/x"), Some("slow"));
        assert_eq!(name("POST", "/slow/x"), Some("rest"));
        assert_eq!(name("GET", "/admin"), None);
        assert_eq!(name("get", "/slowx"), Some("rest"));
        let n = 4000;
        let b = (0..n)
            .filter(|i| p.split(*i as f64 / n as f64).unwrap().as_str() == "b.test:80")
            .count();
        assert_eq!(b, 3000);
        assert!(Profile::default().split(0.5).is_none());
    }

    #[test]
    fn prefixes_hosts_and_headers() {
        let req = |path, host, headers| Req {
            method: "GET",
            path,
            host,
            headers,
        };
        let prefix = RequestMatch::PathPrefix("/v2".into());
        assert!(prefix.matches(&req("/v2", None, &[])));
        assert!(prefix.matches(&req("/v2/x", None, &[])));
        assert!(!prefix.matches(&req("/v20", None, &[])));
        assert!(RequestMatch::PathPrefix("/".into()).matches(&req("/anything", None, &[])));
        // `/` is every request's prefix: `OPTIONS *`, a CONNECT's target.
        for target in ["*", "web.test:443"] {
            assert!(RequestMatch::PathPrefix("/".into()).matches(&req(target, None, &[])));
            assert!(!RequestMatch::PathPrefix("/v2".into()).matches(&req(target, None, &[])));
        }
        let host = RequestMatch::Host {
            name: "example.org".into(),
            suffix: true,
        };
        assert!(host.matches(&req("/", Some("a.Example.org"), &[])));
        assert!(!host.matches(&req("/", Some("example.org"), &[])));
        assert!(!host.matches(&req("/", Some("badexample.org"), &[])));
        let canary = RequestMatch::Header("x-canary".into(), ValueMatch::Exact(b"1".to_vec()));
        assert!(canary.matches(&req("/", None, &[("X-Canary", "1")])));
        assert!(!canary.matches(&req("/", None, &[("x-canary", "0")])));
    }

    /// A request described fully, for the ranking tests.
    struct Full<'a> {
        method: &'a str,
        target: &'a str,
        host: &'a str,
        headers: &'a [(&'a str, &'a str)],
    }

    impl RequestInfo for Full<'_> {
        fn method(&self) -> &str {
            self.method
        }
        fn path(&self) -> &str {
            self.target.split_once('?').map_or(self.target, |(p, _)| p)
        }
        fn host(&self) -> Option<&str> {
            Some(self.host)
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
        fn path_and_query(&self) -> &str {
            self.target
        }
    }

    fn route(name: &str, condition: RequestMatch) -> ProfileRoute {
        ProfileRoute {
            condition,
            name: Some(name.into()),
            retry: None,
            timeout: None,
            l5d_headers: false,
            backends: vec![],
            filters: None,
            backend_filters: vec![],
            classes: None,
        }
    }

    fn exact(v: &str) -> ValueMatch {
        ValueMatch::Exact(v.as_bytes().to_vec())
    }

    #[test]
    fn the_most_specific_route_wins_whatever_its_place() {
        use RequestMatch::*;
        let host = |name: &str, suffix| Host {
            name: name.into(),
            suffix,
        };
        let routes = vec![
            route("root", All(vec![PathPrefix("/".into())])),
            route("api", All(vec![PathPrefix("/api".into())])),
            route("api-v1", All(vec![PathPrefix("/api/v1/".into())])),
            route(
                "api-canary",
                All(vec![
                    PathPrefix("/api".into()),
                    Header("x-canary".into(), exact("1")),
                ]),
            ),
            route(
                "api-debug",
                All(vec![
                    PathPrefix("/api".into()),
                    Query("debug".into(), exact("on now")),
                ]),
            ),
            route(
                "api-post",
                All(vec![PathPrefix("/api".into()), Method("POST".into())]),
            ),
            route("exact", All(vec![PathExact("/api/v1/x".into())])),
            route(
                "suffix-host",
                All(vec![host("example.org", true), PathPrefix("/".into())]),
            ),
            route(
                "exact-host",
                All(vec![host("web.example.org", false), PathPrefix("/".into())]),
            ),
        ];
        let mut p = Profile {
            routes,
            most_specific: true,
            ..Profile::default()
        };
        let name = |p: &Profile, method, target, host, headers| {
            let req = Full {
                method,
                target,
                host,
                headers,
            };
            p.route(&req)
                .and_then(|r| r.name.as_deref())
                .map(str::to_string)
        };
        let at = |p: &Profile, target| name(p, "GET", target, "svc", &[]);
        assert_eq!(at(&p, "/").as_deref(), Some("root"));
        assert_eq!(at(&p, "/apix").as_deref(), Some("root"));
        assert_eq!(at(&p, "/api/x").as_deref(), Some("api"));
        assert_eq!(at(&p, "/api/v1/y").as_deref(), Some("api-v1"));
        // An exact path longer than every prefix.
        assert_eq!(at(&p, "/api/v1/x").as_deref(), Some("exact"));
        // A header beats a query parameter, which beats a method.
        let canary = &[("x-canary", "1")][..];
        assert_eq!(
            name(&p, "POST", "/api/x?debug=on+now", "svc", canary).as_deref(),
            Some("api-canary")
        );
        assert_eq!(
            name(&p, "POST", "/api/x?a=1&debug=on%20now", "svc", &[]).as_deref(),
            Some("api-debug")
        );
        assert_eq!(at(&p, "/api/x?debug=off").as_deref(), Some("api"));
        assert_eq!(
            name(&p, "POST", "/api/x", "svc", &[]).as_deref(),
            Some("api-post")
        );
        // Any host beats none; an exact host beats a suffix.
        assert_eq!(at(&p, "/").as_deref(), Some("root"));
        let on = |host| name(&p, "GET", "/api/v1/x", host, &[]);
        assert_eq!(on("a.example.org").as_deref(), Some("suffix-host"));
        assert_eq!(on("web.example.org").as_deref(), Some("exact-host"));
        // In a service profile's order, the first that matches.
        p.most_specific = false;
        assert_eq!(at(&p, "/api/v1/x").as_deref(), Some("root"));
        // Equals: the first.
        let twice = Profile {
            routes: vec![
                route("one", All(vec![PathPrefix("/a".into())])),
                route("two", All(vec![PathPrefix("/a/".into())])),
            ],
            most_specific: true,
            ..Profile::default()
        };
        assert_eq!(at(&twice, "/a/b").as_deref(), Some("one"));
    }

    #[test]
    fn grpc_calls_rank_by_service_then_method() {
        use RequestMatch::*;
        let rpc = |s: Option<&str>, m: Option<&str>| Rpc {
            service: s.map(Into::into),
            method: m.map(Into::into),
        };
        let p = Profile {
            routes: vec![
                route("any", All(vec![rpc(None, None)])),
                route("method", All(vec![rpc(None, Some("Get"))])),
                route("service", All(vec![rpc(Some("pkg.Svc"), None)])),
                route("both", All(vec![rpc(Some("pkg.Svc"), Some("Get"))])),
            ],
            most_specific: true,
            ..Profile::default()
        };
        let call = |method, path| {
            let req = Full {
                method,
                target: path,
                host: "svc",
                headers: &[],
            };
            p.route(&req)
                .and_then(|r| r.name.as_deref())
                .map(str::to_string)
        };
        assert_eq!(call("POST", "/pkg.Svc/Get").as_deref(), Some("both"));
        assert_eq!(call("POST", "/pkg.Svc/Put").as_deref(), Some("service"));
        assert_eq!(call("POST", "/other.Svc/Get").as_deref(), Some("method"));
        assert_eq!(call("POST", "/other.Svc/Put").as_deref(), Some("any"));
        // Not a gRPC call: not a POST, or no method in the path.
        assert_eq!(call("GET", "/pkg.Svc/Get"), None);
        assert_eq!(call("POST", "/pkg.Svc"), None);
    }

    /// Linkerd's exponential backoff: doubling from the minimum to the
    /// maximum, the jitter adding up to that share again (never past the
    /// maximum).
    #[test]
    fn retry_backoff_doubles_and_jitters_within_its_maximum() {
        let ms = Duration::from_millis;
        let b = RetryBackoff {
            min: ms(25),
            max: ms(250),
            jitter: 0.0,
        };
        let steps: Vec<_> = (0..6).map(|n| b.delay(n, 0.5)).collect();
        assert_eq!(steps, [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)]);
        assert_eq!(b.delay(u32::MAX, 0.5), ms(250), "no overflow");
        let j = RetryBackoff::L5D_HEADERS;
        assert_eq!(j.delay(0, 0.0), ms(25));
        assert_eq!(j.delay(0, 0.5), ms(25) + ms(25) / 2);
        assert_eq!(j.delay(3, 0.9), ms(250), "200 ms + 180 ms, capped");
        for n in 0..8 {
            let d = j.delay(n, fastrand::f64());
            assert!(ms(25) <= d && d <= ms(250), "{d:?}");
        }
    }

    #[test]
    fn query_parameters_are_form_decoded() {
        let q = |name: &str, v| RequestMatch::Query(name.into(), v);
        let req = |target| Full {
            method: "GET",
            target,
            host: "svc",
            headers: &[],
        };
        let re = ValueMatch::Regex(regex::bytes::Regex::new("^(?:v[0-9]+)$").unwrap());
        assert!(q("version", re.clone()).matches(&req("/?version=v12")));
        assert!(!q("version", re.clone()).matches(&req("/?version=v12x")));
        assert!(!q("version", re).matches(&req("/version=v12")));
        assert!(q("a b", exact("c&d")).matches(&req("/x?a+b=c%26d")));
        assert!(q("flag", exact("")).matches(&req("/x?flag")));
        assert!(!q("flag", exact("")).matches(&req("/x")));
        // Any of its occurrences.
        assert!(q("k", exact("2")).matches(&req("/x?k=1&k=2")));
    }
}
