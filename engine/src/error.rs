//! Every answer the proxy makes itself, as one type.
//!
//! A request that gets no response from an upstream ends in a
//! [`ProxyError`]: what went wrong ([`Kind`]), on which side ([`Side`]),
//! whether the request may go again on another connection, and a reason
//! for people. Everything the client and the metrics see follows from it,
//! each decided here and nowhere else: the status code, the
//! `l5d-proxy-error` text, the `error` label of `response_total`, the gRPC
//! status a gRPC client gets, and whether an HTTP/1 connection is closed
//! afterwards. How a request ended when the proxy could not answer (the
//! response had started, or an HTTP/2 stream was reset) is [`Failure`].
//!
//! Must not: do I/O, or know which protocol carries the answer.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use monoio_http::h2::Reason;
use ringmesh_admin::telemetry::ResponseClass;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The client's request is malformed; the status is the codec's
    /// (400, 414 URI too long, 431 fields too large).
    Malformed(u16),
    /// The request head did not arrive within the header-read timeout.
    HeadTimeout,
    /// The destination is a service with no endpoint.
    NoEndpoints,
    /// The destination name cannot be resolved.
    Unresolved,
    /// The destination is one of this proxy's own listeners.
    Loop,
    /// Connecting to the endpoint failed.
    ConnectFailed,
    /// Connecting to the endpoint timed out.
    ConnectTimeout,
    /// The TLS handshake with the endpoint failed: its certificate is not
    /// trusted or does not name the identity discovery gave it.
    TlsFailed,
    /// The upstream failed before a response: closed, reset, or sent
    /// something that is not a response.
    UpstreamFailed,
    /// No response within the response or request timeout.
    ResponseTimeout,
    /// The endpoint answered with this status (502/503), which was held
    /// back for a retry that then could not be made.
    Answered(u16),
    /// Inbound authorization denied the client (policy).
    Forbidden,
    /// No HTTP route of the inbound server matches the request: 404.
    NoRoute,
    /// The inbound server's local rate limit is exceeded: 429.
    RateLimited,
    /// The worker's share of `LINKERD2_PROXY_*_MAX_IN_FLIGHT` is in
    /// flight: load shed.
    Overloaded,
    /// A route's failure injection answered with this status (an outbound
    /// policy's filter).
    Injected(u16),
    /// A gRPC route's failure injection answered with this `grpc-status`.
    InjectedGrpc(u16),
    /// A route's redirect: this 3xx, with a `location`.
    Redirect(u16),
    /// A route's filter cannot be applied to the request (a redirect's
    /// prefix replacement on a route matched otherwise): 500.
    BadFilter,
    /// The request's `l5d-require-id` names an identity its endpoint does
    /// not have: 502, as linkerd2-proxy's `IdentityRequired`.
    IdentityRequired,
}

/// Whose fault it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client (malformed or slow request).
    Downstream,
    /// The endpoint or the network to it.
    Upstream,
    /// Routing: discovery has nowhere to send it.
    Internal,
}

/// An answer the proxy makes itself. (Cloned only to tell the streams
/// sharing a failed connection attempt why it failed.)
#[derive(Clone, Debug)]
pub(crate) struct ProxyError {
    kind: Kind,
    reason: Cow<'static, str>,
    /// The upstream failed before any byte of a response: the request may
    /// go again on another connection if nothing of it was lost (which
    /// the caller knows; see `retry`).
    retryable: bool,
    /// Writing the request failed: the upstream cannot have taken it
    /// whole, so even a method that is not idempotent may go again.
    unsent: bool,
    /// What a route filter's answer carries, and the endpoint a failure
    /// was met at (boxed: one pointer in every error, which connection
    /// tasks hold).
    filter: Option<Box<FilterAnswer>>,
}

/// An error's extras: a route filter's answer's, the endpoint's.
#[derive(Clone, Debug, Default)]
struct FilterAnswer {
    /// The endpoint the request failed at (its connection refused, or its
    /// TLS handshake failed): the request's series are that endpoint's.
    endpoint: Option<SocketAddr>,
    /// A redirect's `location`.
    location: Option<Box<str>>,
    /// The route whose filter made the answer (its `rt_route` label).
    route: Option<std::sync::Arc<str>>,
}

/// gRPC's UNAVAILABLE: what a gRPC client gets when the proxy answers.
pub(crate) const GRPC_UNAVAILABLE: u32 = 14;
/// gRPC DEADLINE_EXCEEDED: the proxy's response and connect timeouts (as
/// linkerd2-proxy's `gateway_timeout`).
pub(crate) const GRPC_DEADLINE_EXCEEDED: u32 = 4;
pub(crate) use ringmesh_admin::telemetry::GRPC_UNKNOWN;

/// A `grpc-status` value's code, read as linkerd2-proxy's `grpc_code`
/// reads it (a `u16`, nothing around it; a value that is not one is no
/// status); one gRPC does not define (over 16) is UNKNOWN, as tonic's
/// `Code::from_i32` makes it.
pub(crate) fn grpc_code(value: &[u8]) -> Option<u32> {
    let code = std::str::from_utf8(value).ok()?.parse::<u16>().ok()?;
    Some(if code > 16 {
        GRPC_UNKNOWN
    } else {
        u32::from(code)
    })
}
/// gRPC ABORTED: a loop (as linkerd2-proxy's `loop_detected`).
pub(crate) const GRPC_ABORTED: u32 = 10;
/// gRPC's PERMISSION_DENIED: an authorization denial.
pub(crate) const GRPC_PERMISSION_DENIED: u32 = 7;
/// `NOT_FOUND`.
pub(crate) const GRPC_NOT_FOUND: u32 = 5;
/// `RESOURCE_EXHAUSTED`: a rate limit.
pub(crate) const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
/// `FAILED_PRECONDITION`: a route's injected HTTP failure, to a gRPC client
/// (linkerd2-proxy's `SyntheticHttpResponse::response`).
pub(crate) const GRPC_FAILED_PRECONDITION: u32 = 9;
/// `INTERNAL`: a route filter that cannot apply.
pub(crate) const GRPC_INTERNAL: u32 = 13;

impl ProxyError {
    pub(crate) fn new(kind: Kind, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            retryable: false,
            unsent: false,
            filter: None,
        }
    }

    /// The answer was made on `route` (a filter's).
    pub(crate) fn on_route(mut self, route: Option<std::sync::Arc<str>>) -> Self {
        self.filter.get_or_insert_with(Box::default).route = route;
        self
    }

    /// The failure was met at endpoint `addr`.
    pub(crate) fn at(mut self, addr: SocketAddr) -> Self {
        self.filter.get_or_insert_with(Box::default).endpoint = Some(addr);
        self
    }

    /// See [`Self::at`].
    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        self.filter.as_ref()?.endpoint
    }

    /// See [`Self::on_route`].
    pub(crate) fn route(&self) -> Option<&std::sync::Arc<str>> {
        self.filter.as_ref()?.route.as_ref()
    }

    /// A redirect to `location` with `status` (a route's filter).
    pub(crate) fn redirect(status: u16, location: String) -> Self {
        let mut e = Self::new(
            Kind::Redirect(status),
            format!("request redirected to {location}"),
        );
        e.filter.get_or_insert_with(Box::default).location = Some(location.into_boxed_str());
        e
    }

    /// A redirect's `location`.
    pub(crate) fn location(&self) -> Option<&str> {
        self.filter.as_ref()?.location.as_deref()
    }

    /// An answer a route's filter made (failure injection, redirect), not
    /// a failure of the proxy's: counted by its status, without an
    /// `error` label.
    pub(crate) fn by_filter(&self) -> bool {
        matches!(
            self.kind,
            Kind::Injected(_) | Kind::InjectedGrpc(_) | Kind::Redirect(_)
        )
    }

    pub(crate) fn no_endpoints(service: impl fmt::Display) -> Self {
        Self::new(
            Kind::NoEndpoints,
            format!("no endpoints available for {service}"),
        )
    }

    /// As linkerd2-proxy words it.
    pub(crate) fn overloaded() -> Self {
        Self::new(Kind::Overloaded, "proxy max-concurrency exhausted")
    }

    /// The proxy itself is out of room (its request bound, or descriptors
    /// or memory for a connection): no endpoint is to blame.
    pub(crate) fn proxy_exhausted(&self) -> bool {
        matches!(self.kind, Kind::Overloaded)
    }

    /// The request requires an identity (`l5d-require-id`) that the
    /// endpoint picked for it does not have (`found`, when it has one).
    pub(crate) fn identity_required(required: &str, found: Option<&str>) -> Self {
        let reason = match found {
            Some(id) => format!("required identity {required}; the endpoint is {id}"),
            None => format!("required identity {required}; the endpoint has none"),
        };
        Self::new(Kind::IdentityRequired, reason)
    }

    /// See [`Self::identity_required`]: the request fails, whichever
    /// endpoint would be tried next, and the endpoint is not to blame.
    pub(crate) fn is_identity_required(&self) -> bool {
        matches!(self.kind, Kind::IdentityRequired)
    }

    pub(crate) fn unresolved(name: impl fmt::Display) -> Self {
        Self::new(Kind::Unresolved, format!("cannot resolve {name}"))
    }

    /// `name` has no endpoints, for the reason its resolver gave.
    pub(crate) fn unresolved_because(name: impl fmt::Display, why: &str) -> Self {
        Self::new(Kind::Unresolved, format!("cannot resolve {name}: {why}"))
    }

    pub(crate) fn looped(addr: SocketAddr) -> Self {
        Self::new(
            Kind::Loop,
            format!("destination {addr} is this proxy (loop)"),
        )
    }

    pub(crate) fn connect(e: &std::io::Error) -> Self {
        // The proxy's own resources (descriptors, buffers): not the
        // endpoint's doing, and every other endpoint would fail the same.
        const LOCAL: [i32; 4] = [
            nix::libc::EMFILE,
            nix::libc::ENFILE,
            nix::libc::ENOBUFS,
            nix::libc::ENOMEM,
        ];
        if e.raw_os_error().is_some_and(|n| LOCAL.contains(&n)) {
            return Self::new(Kind::Overloaded, format!("proxy out of resources: {e}"));
        }
        match e.kind() {
            std::io::ErrorKind::TimedOut => {
                Self::new(Kind::ConnectTimeout, "upstream connect timed out")
            }
            _ => Self::new(
                Kind::ConnectFailed,
                format!("upstream connection failed: {e}"),
            ),
        }
    }

    /// The TLS handshake with the endpoint that should be `identity`
    /// failed (a timeout is a connect timeout).
    pub(crate) fn tls(identity: impl fmt::Display, e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::TimedOut => {
                Self::new(Kind::ConnectTimeout, "upstream TLS handshake timed out")
            }
            _ => Self::new(
                Kind::TlsFailed,
                format!("TLS to {identity} failed: {}", tls_cause(e)),
            ),
        }
    }

    pub(crate) fn rate_limited(reason: String) -> Self {
        Self::new(Kind::RateLimited, reason)
    }

    pub(crate) fn no_route() -> Self {
        Self::new(Kind::NoRoute, "no route found for request")
    }

    pub(crate) fn forbidden(reason: &'static str) -> Self {
        Self::new(Kind::Forbidden, reason)
    }

    pub(crate) fn upstream(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Kind::UpstreamFailed, reason)
    }

    pub(crate) fn timeout(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Kind::ResponseTimeout, reason)
    }

    /// No response head in time (the request's or an attempt's timeout).
    pub(crate) fn timed_out(&self) -> bool {
        matches!(self.kind, Kind::ResponseTimeout)
    }

    pub(crate) fn malformed(status: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Kind::Malformed(status), reason)
    }

    /// Marks the request as safe to send again (see [`Self::retryable`]).
    pub(crate) fn or_retry(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Marks the failure as the request's write's: it never reached the
    /// upstream whole (see [`Self::unsent`]).
    pub(crate) fn on_write(mut self) -> Self {
        self.unsent = true;
        self
    }

    /// Whether writing the request failed (so it was not taken).
    pub(crate) fn unsent(&self) -> bool {
        self.unsent
    }

    /// The same error, said differently (the cause was found elsewhere).
    pub(crate) fn because(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = reason.into();
        self
    }

    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }

    /// Nothing of a response arrived (see the field).
    pub(crate) fn retryable(&self) -> bool {
        self.retryable
    }

    pub(crate) fn side(&self) -> Side {
        match self.kind {
            Kind::Malformed(_)
            | Kind::HeadTimeout
            | Kind::Forbidden
            | Kind::NoRoute
            | Kind::RateLimited => Side::Downstream,
            Kind::Injected(_) | Kind::InjectedGrpc(_) | Kind::Redirect(_) | Kind::BadFilter => {
                Side::Internal
            }
            Kind::NoEndpoints
            | Kind::Unresolved
            | Kind::Loop
            | Kind::Overloaded
            | Kind::IdentityRequired => Side::Internal,
            Kind::ConnectFailed
            | Kind::ConnectTimeout
            | Kind::TlsFailed
            | Kind::UpstreamFailed
            | Kind::ResponseTimeout
            | Kind::Answered(_) => Side::Upstream,
        }
    }

    /// The response's status code.
    pub(crate) fn status(&self) -> u16 {
        match self.kind {
            Kind::Malformed(status)
            | Kind::Answered(status)
            | Kind::Injected(status)
            | Kind::Redirect(status) => status,
            // gRPC carries the failure in `grpc-status`.
            Kind::InjectedGrpc(_) => 200,
            Kind::BadFilter => 500,
            Kind::HeadTimeout => 408,
            Kind::Forbidden => 403,
            Kind::NoRoute => 404,
            Kind::RateLimited => 429,
            Kind::NoEndpoints | Kind::Unresolved | Kind::Overloaded => 503,
            Kind::Loop
            | Kind::ConnectFailed
            | Kind::TlsFailed
            | Kind::UpstreamFailed
            | Kind::IdentityRequired => 502,
            Kind::ConnectTimeout | Kind::ResponseTimeout => 504,
        }
    }

    /// The `error` label of `response_total` and `response_latency_ms`.
    pub(crate) fn label(&self) -> &'static str {
        match self.kind {
            Kind::Malformed(_) | Kind::HeadTimeout => "bad_request",
            Kind::Forbidden => "unauthorized",
            Kind::NoRoute => "route_not_found",
            Kind::RateLimited => "rate_limited",
            Kind::NoEndpoints => "no_endpoints",
            Kind::Overloaded => "load_shed",
            Kind::Unresolved => "unresolved",
            Kind::Loop => "loop",
            Kind::ConnectFailed => "connect_failed",
            Kind::ConnectTimeout => "connect_timeout",
            Kind::TlsFailed => "tls_failed",
            Kind::UpstreamFailed | Kind::Answered(_) => "upstream_failed",
            Kind::ResponseTimeout => "response_timeout",
            Kind::Injected(_) | Kind::InjectedGrpc(_) => "failure_injected",
            Kind::Redirect(_) => "redirect",
            Kind::BadFilter => "invalid_policy",
            Kind::IdentityRequired => "identity_required",
        }
    }

    /// The `l5d-proxy-error` value: the reason with every byte a header
    /// cannot carry safely (controls, non-ASCII) replaced by a space.
    pub(crate) fn header_value(&self) -> String {
        self.reason
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
            .collect()
    }

    /// The body of the proxy's answer (plain text; a gRPC answer has none).
    pub(crate) fn body(&self) -> String {
        format!("ringmesh: {}\n", self.header_value())
    }

    /// The bytes of the body of this answer as the proxy sends it: the
    /// reason, to a client told reasons (`informational`) that is not a
    /// gRPC client (whose answer is trailers-only); else none.
    pub(crate) fn answer_body_len(&self, grpc: bool, informational: bool) -> usize {
        if grpc || !informational {
            0
        } else {
            self.body().len()
        }
    }

    /// The `grpc-status` a gRPC client gets with the answer: linkerd2-proxy's
    /// pairing of its synthetic responses' HTTP and gRPC statuses (504:
    /// DEADLINE_EXCEEDED, an injected HTTP failure: FAILED_PRECONDITION, a
    /// redirect: NOT_FOUND, a filter that cannot apply: INTERNAL, ...).
    pub(crate) fn grpc_status(&self) -> u32 {
        match self.kind {
            Kind::Forbidden => GRPC_PERMISSION_DENIED,
            Kind::NoRoute | Kind::Redirect(_) => GRPC_NOT_FOUND,
            Kind::RateLimited => GRPC_RESOURCE_EXHAUSTED,
            Kind::InjectedGrpc(code) => u32::from(code),
            Kind::Injected(_) => GRPC_FAILED_PRECONDITION,
            Kind::BadFilter => GRPC_INTERNAL,
            Kind::ResponseTimeout | Kind::ConnectTimeout => GRPC_DEADLINE_EXCEEDED,
            Kind::Loop => GRPC_ABORTED,
            _ => GRPC_UNAVAILABLE,
        }
    }

    /// The HTTP status of the answer to a client: a gRPC client's is 200,
    /// its outcome in `grpc-status` (a trailers-only response, as gRPC and
    /// linkerd2-proxy answer: grpc-go and grpc-java read a non-200 status
    /// as the call's outcome, whatever `grpc-status` says).
    pub(crate) fn status_for(&self, grpc: bool) -> u16 {
        if grpc {
            200
        } else {
            self.status()
        }
    }

    /// Whether an HTTP/1 client connection is closed after the answer:
    /// always for a fault, since the request's body may be unread or its
    /// framing is what failed, and the client cannot know which. A
    /// route filter's answer, and a policy's refusal (403, 404 for no
    /// route, 429), which linkerd2-proxy answers without closing, leave it
    /// to the caller (it stays open after a request without a body).
    pub(crate) fn closes_connection(&self) -> bool {
        !(self.by_filter()
            || matches!(
                self.kind,
                Kind::Forbidden | Kind::NoRoute | Kind::RateLimited
            ))
    }
}

/// The innermost cause of a handshake error (rustls' own words, e.g.
/// "invalid peer certificate: certificate not valid for name ...").
fn tls_cause(e: &std::io::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// How a request ended without a complete response from upstream.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing of a response reached the client: the proxy answers.
    Answer(ProxyError),
    /// The response had started (this status was sent) and was cut short:
    /// an HTTP/1 client connection closes, an HTTP/2 stream is reset.
    /// `upstream`: the upstream failed (else the client did).
    Broken {
        status: u16,
        reason: String,
        upstream: bool,
    },
    /// The HTTP/2 stream ends with this reset (the client reset it, or
    /// left); there is nothing to answer.
    Reset(Reason),
    /// The upstream reset the stream, or did not process it, before any
    /// response: the client's stream is reset with this reason, and it
    /// counts as a failure (`error="stream_reset"`).
    Refused(Reason),
}

impl Failure {
    /// What a failure after the response started is counted as (the
    /// status that was sent; a failure when the upstream's doing), and why
    /// the response was cut short. An answer is its own status.
    pub(crate) fn after_response(self) -> (ResponseClass, String) {
        match self {
            Failure::Answer(e) => (ResponseClass::http(e.status(), None), e.reason.into_owned()),
            Failure::Broken {
                status,
                reason,
                upstream,
            } => {
                let class = match upstream {
                    true => ResponseClass::broken(status, None),
                    false => ResponseClass::http(status, None),
                };
                (class, reason)
            }
            // An HTTP/2 upstream's stream reset.
            Failure::Reset(r) => (
                ResponseClass::broken(502, None),
                format!("stream reset: {r:?}"),
            ),
            Failure::Refused(r) => (
                ResponseClass::http(502, Some(ringmesh_admin::telemetry::STREAM_RESET)),
                format!("the upstream reset the stream before a response: {r:?}"),
            ),
        }
    }
}

impl From<ProxyError> for Failure {
    fn from(e: ProxyError) -> Self {
        Failure::Answer(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's status, label and side, in one table: the contract the
    /// metrics and clients see.
    /// A route filter's answers: their own status (a gRPC injection's in
    /// `grpc-status`), no `error` label, the connection not closed for
    /// them.
    #[test]
    fn filter_answers() {
        let cases = [
            (Kind::Injected(418), 418, 9, true),
            (Kind::InjectedGrpc(5), 200, 5, true),
            (Kind::Redirect(302), 302, 5, true),
            (Kind::BadFilter, 500, 13, false),
        ];
        for (kind, status, grpc, by_filter) in cases {
            let e = ProxyError::new(kind, "x");
            assert_eq!((e.status(), e.grpc_status()), (status, grpc), "{kind:?}");
            assert_eq!(e.by_filter(), by_filter, "{kind:?}");
            assert_eq!(e.closes_connection(), !by_filter, "{kind:?}");
        }
        let e = ProxyError::redirect(301, "http://web/x".into());
        assert_eq!((e.status(), e.location()), (301, Some("http://web/x")));
        // (Connection tasks hold errors: they stay small.)
        assert!(std::mem::size_of::<ProxyError>() <= 40);
    }

    #[test]
    fn kind_to_status_label_side() {
        let cases = [
            (Kind::Malformed(400), 400, "bad_request", Side::Downstream),
            (Kind::Malformed(431), 431, "bad_request", Side::Downstream),
            (Kind::Malformed(414), 414, "bad_request", Side::Downstream),
            (Kind::HeadTimeout, 408, "bad_request", Side::Downstream),
            (Kind::NoEndpoints, 503, "no_endpoints", Side::Internal),
            (Kind::Unresolved, 503, "unresolved", Side::Internal),
            (Kind::Loop, 502, "loop", Side::Internal),
            (Kind::ConnectFailed, 502, "connect_failed", Side::Upstream),
            (Kind::ConnectTimeout, 504, "connect_timeout", Side::Upstream),
            (Kind::TlsFailed, 502, "tls_failed", Side::Upstream),
            (
                Kind::IdentityRequired,
                502,
                "identity_required",
                Side::Internal,
            ),
            (Kind::UpstreamFailed, 502, "upstream_failed", Side::Upstream),
            (
                Kind::ResponseTimeout,
                504,
                "response_timeout",
                Side::Upstream,
            ),
            (Kind::Answered(503), 503, "upstream_failed", Side::Upstream),
            (Kind::Answered(502), 502, "upstream_failed", Side::Upstream),
            (Kind::Forbidden, 403, "unauthorized", Side::Downstream),
            (Kind::NoRoute, 404, "route_not_found", Side::Downstream),
            (Kind::RateLimited, 429, "rate_limited", Side::Downstream),
            (Kind::Overloaded, 503, "load_shed", Side::Internal),
        ];
        for (kind, status, label, side) in cases {
            let e = ProxyError::new(kind, "x");
            assert_eq!(
                (e.status(), e.label(), e.side()),
                (status, label, side),
                "{kind:?}"
            );
            let grpc = match kind {
                Kind::Forbidden => GRPC_PERMISSION_DENIED,
                Kind::NoRoute => GRPC_NOT_FOUND,
                Kind::RateLimited => GRPC_RESOURCE_EXHAUSTED,
                Kind::ResponseTimeout | Kind::ConnectTimeout => GRPC_DEADLINE_EXCEEDED,
                Kind::Loop => GRPC_ABORTED,
                _ => GRPC_UNAVAILABLE,
            };
            assert_eq!(e.grpc_status(), grpc, "{kind:?}");
            let refusal = matches!(kind, Kind::Forbidden | Kind::NoRoute | Kind::RateLimited);
            assert_eq!(e.closes_connection(), !refusal, "{kind:?}");
            assert!(!e.retryable(), "{kind:?} retryable by default");
        }
    }

    #[test]
    fn grpc_codes_are_read_as_linkerd2_proxy_reads_them() {
        for (value, code) in [
            (&b"0"[..], Some(0)),
            (b"7", Some(7)),
            (b"16", Some(16)),
            (b"17", Some(GRPC_UNKNOWN)),
            (b"65535", Some(GRPC_UNKNOWN)),
            (b"65536", None),
            (b"-1", None),
            (b" 7", None),
            (b"7a", None),
            (b"", None),
            (b"\xff", None),
        ] {
            assert_eq!(grpc_code(value), code, "{value:?}");
        }
    }

    #[test]
    fn constructors() {
        let e = ProxyError::connect(&std::io::ErrorKind::TimedOut.into());
        assert_eq!((e.status(), e.label()), (504, "connect_timeout"));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = ProxyError::connect(&refused);
        assert_eq!((e.status(), e.label()), (502, "connect_failed"));
        assert!(e.reason().starts_with("upstream connection failed"));
        let bad = std::io::Error::other(std::io::Error::other("certificate not valid for name"));
        let e = ProxyError::tls("web.ns.serviceaccount.identity.linkerd.cluster.local", &bad);
        assert_eq!((e.status(), e.label()), (502, "tls_failed"));
        assert_eq!(
            e.reason(),
            "TLS to web.ns.serviceaccount.identity.linkerd.cluster.local failed: certificate not valid for name"
        );
        let e = ProxyError::tls("a.example", &std::io::ErrorKind::TimedOut.into());
        assert_eq!((e.status(), e.label()), (504, "connect_timeout"));
        let e = ProxyError::no_endpoints("web.ns.svc:80");
        assert_eq!(e.reason(), "no endpoints available for web.ns.svc:80");
        let e = ProxyError::looped("127.0.0.1:4140".parse().unwrap());
        assert_eq!((e.status(), e.label()), (502, "loop"));
        let e = ProxyError::upstream("gone").or_retry(true);
        assert!(e.retryable());
        let e = e.because("client request body failed");
        assert_eq!(e.reason(), "client request body failed");
        assert!(e.retryable(), "rewording keeps the retry safety");
    }

    /// One sanitiser for both protocols: no control character (CR/LF
    /// would split the header) and no non-ASCII byte reaches the header.
    #[test]
    fn header_value_is_safe() {
        let e = ProxyError::upstream("bad\r\nx-injected: 1\tand é\0end");
        let v = e.header_value();
        assert_eq!(v, "bad  x-injected: 1 and   end");
        assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)));
        assert!(http::HeaderValue::from_str(&v).is_ok());
    }
}
