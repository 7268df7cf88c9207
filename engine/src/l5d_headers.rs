//! Linkerd's per-request timeout and retry headers, honoured on routes
//! whose outbound policy allows them (`allow_l5d_request_headers`), as
//! linkerd2-proxy reads them:
//!
//! - `l5d-timeout` / `l5d-request-timeout` (the latter wins): the
//!   request's timeout; `l5d-response-timeout` bounds it too (ringmesh has
//!   one request timeout, head to response head);
//! - `l5d-retry-limit`: retries per request;
//! - `l5d-retry-http`: statuses that are retried, a comma-separated list
//!   of `5xx`, `gateway-error` (502–504), a code, or a range `500-504`;
//! - `l5d-retry-grpc`: gRPC codes that are retried: `cancelled`,
//!   `deadline-exceeded`, `internal`, `resource-exhausted`,
//!   `unavailable`.
//!
//! Durations are an integer and a unit (`ms`, `s`, `m`, `h`, `d`), or `0`.
//! A value that does not parse is ignored (the route's setting stays).
//! The headers are removed before the request goes upstream; on routes
//! that do not allow them they are left alone (they mean nothing there).
//! `l5d-retry-timeout` is the per-attempt timeout (the response head of an
//! attempt that could be retried must arrive within it).
//!
//! Must not: allocate for requests that carry none of them.

use std::sync::Arc;
use std::time::Duration;

use ringmesh_discovery::profile::{RequestInfo, RetryBackoff, RetryPolicy};

/// The header naming a meshed client's identity to the application (set
/// by the inbound side only).
pub(crate) const CLIENT_ID: &str = "l5d-client-id";

/// What a peer proxy's response carries to have the client's connection
/// closed after it (`close`; linkerd2-proxy's `l5d-proxy-connection`).
pub(crate) const PROXY_CONNECTION: &str = "l5d-proxy-connection";

/// The reason a proxy gives in its own error answers.
pub(crate) const PROXY_ERROR: &str = "l5d-proxy-error";

/// What a peer proxy's response says to the proxy in front of it: its
/// error's reason and whether the client's connection should close.
/// Outbound, they are consumed here and never reach the application, as
/// linkerd2-proxy's `handle_proxy_error_headers` does (which closes the
/// client's connection for `l5d-proxy-connection: close` only when the
/// endpoint is a pod reached directly rather than through a balancer: an
/// endpoint ringmesh reaches plainly, so never here).
pub(crate) const PEER_ANSWER: &[&str] = &[PROXY_ERROR, PROXY_CONNECTION];

/// The header that names a request's destination in ingress mode
/// (`route::resolve`).
pub(crate) const DST_OVERRIDE: &str = "l5d-dst-override";

/// The header by which an outbound request requires its endpoint's
/// identity ([`RequiredId`]).
pub(crate) const REQUIRE_ID: &str = "l5d-require-id";

/// What an outbound request's `l5d-require-id` says, as linkerd2-proxy
/// reads it: an identity the endpoint the request goes to must have
/// (mutual TLS to that name), else the request fails with 502. A value
/// that is no identity (not a DNS name, nor a URI such as a SPIFFE ID) is
/// ignored. Either way the header goes no further than this proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RequiredId {
    /// A DNS-like identity, lowercased; or a URI, which no endpoint's
    /// (DNS) identity can be.
    Id(Box<str>),
    /// The header was sent, with no identity in it.
    Ignored,
}

impl RequiredId {
    /// The request's `l5d-require-id`, if it has one.
    pub(crate) fn of(req: &dyn RequestInfo) -> Option<Self> {
        let value = req.header(REQUIRE_ID)?;
        let Ok(text) = std::str::from_utf8(value) else {
            return Some(Self::Ignored);
        };
        let text = text.trim();
        // A DNS name without a trailing dot (linkerd2-proxy's
        // `Id::parse_dns_name`) ...
        if !text.ends_with('.') {
            if let Ok(name) = ringmesh_identity::Name::parse(text) {
                return Some(Self::Id(name.as_str().into()));
            }
        }
        // ... else a URI (`scheme:rest`).
        Some(if is_uri(text) {
            Self::Id(text.into())
        } else {
            Self::Ignored
        })
    }

    /// Whether a request requiring this may go to an endpoint whose proxy
    /// proves identity `found` (`None`: reached without mutual TLS).
    pub(crate) fn allows(&self, found: Option<&str>) -> Result<(), crate::error::ProxyError> {
        match self {
            Self::Ignored => Ok(()),
            Self::Id(required) if found == Some(&**required) => Ok(()),
            Self::Id(required) => Err(crate::error::ProxyError::identity_required(required, found)),
        }
    }
}

/// Whether `s` is an absolute URI as a URL parser takes one: a scheme (a
/// letter, then letters, digits, `+`, `-`, `.`), `:`, and no whitespace or
/// control character.
fn is_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// [`NAMES`] and ingress mode's [`DST_OVERRIDE`] (last), for a request
/// both apply to.
pub(crate) const NAMES_AND_DST_OVERRIDE: &[&str] = &[
    "l5d-timeout",
    "l5d-request-timeout",
    "l5d-response-timeout",
    "l5d-retry-limit",
    "l5d-retry-http",
    "l5d-retry-grpc",
    "l5d-retry-timeout",
    DST_OVERRIDE,
];

/// The headers removed from requests on routes that honour them (all but
/// the last of the above).
pub(crate) const NAMES: &[&str] = NAMES_AND_DST_OVERRIDE
    .split_at(NAMES_AND_DST_OVERRIDE.len() - 1)
    .0;

/// Retries a request's own retry headers ask for when its route has no
/// retry policy (as linkerd2-proxy).
const DEFAULT_LIMIT: u32 = 1;
/// The most retries a request may ask for (as a policy).
const MAX_LIMIT: u32 = RetryPolicy::MAX_LIMIT;

/// Whether a trailer field named `name` (lowercase) may go on when the
/// proxy re-encodes a trailer section (HTTP/2 trailers into an HTTP/1
/// chunked body, or the reverse). Left out: fields a trailer
/// must not carry (RFC 9110 §6.5.1: framing, routing, authentication,
/// request modifiers, content metadata; the list hyper keeps out),
/// connection-specific ones, and the identity the proxy vouches for
/// (`l5d-client-id`), which a client could otherwise set in its own
/// trailers past the removal from the head.
pub(crate) fn trailer_allowed(name: &str) -> bool {
    !matches!(
        name,
        "authorization"
            | "cache-control"
            | "connection"
            | "content-encoding"
            | "content-length"
            | "content-range"
            | "content-type"
            | "expect"
            | "host"
            | "keep-alive"
            | "max-forwards"
            | "proxy-connection"
            | "set-cookie"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | CLIENT_ID
    )
}

/// Whether the proxy's own error answers say why (`l5d-proxy-error`, a
/// text body, `grpc-message`): inbound only to a client proxy (mutual TLS
/// naming the client), as linkerd2-proxy emits them, so a client that is
/// no proxy learns nothing of the pod's insides; outbound as configured
/// (`outbound_informational`).
pub(crate) fn informational(
    inbound: bool,
    client: &ringmesh_admin::telemetry::TlsStatus,
    outbound_informational: bool,
) -> bool {
    use ringmesh_admin::telemetry::TlsStatus;
    if inbound {
        matches!(client, TlsStatus::Accepted { client_id: Some(_) })
    } else {
        outbound_informational
    }
}

/// Whether `name` is one of [`NAMES`].
pub(crate) fn is_l5d_header(name: &str) -> bool {
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The request's timeout and retry policy, as its headers adjust the
/// route's `timeout` and `retry`.
pub(crate) fn apply(
    req: &dyn RequestInfo,
    timeout: Option<Duration>,
    retry: Option<Arc<RetryPolicy>>,
) -> (Option<Duration>, Option<Arc<RetryPolicy>>) {
    let text = |name| req.header(name).and_then(|v| std::str::from_utf8(v).ok());
    let mut t = timeout;
    if let Some(d) = text("l5d-timeout").and_then(duration) {
        t = Some(d);
    }
    if let Some(d) = text("l5d-request-timeout").and_then(duration) {
        t = Some(d);
    }
    if let Some(d) = text("l5d-response-timeout").and_then(duration) {
        t = Some(t.map_or(d, |t| t.min(d)));
    }
    // A zero timeout is none (as a route's).
    let t = t.filter(|d| !d.is_zero());

    let statuses = text("l5d-retry-http").map(http_statuses);
    let grpc = text("l5d-retry-grpc").map(grpc_codes);
    let limit = text("l5d-retry-limit").and_then(|v| v.trim().parse::<u32>().ok());
    let attempt_timeout = text("l5d-retry-timeout").and_then(duration);
    if statuses.is_none() && grpc.is_none() && limit.is_none() && attempt_timeout.is_none() {
        return (t, retry);
    }
    let base = retry.as_deref();
    let policy = RetryPolicy {
        // A zero per-attempt timeout is none.
        timeout: attempt_timeout
            .or(base.and_then(|r| r.timeout))
            .filter(|d| !d.is_zero()),
        // The route's pause between retries; retries the headers alone
        // ask for pause as linkerd2-proxy's do.
        backoff: match base {
            Some(r) => r.backoff,
            None => Some(RetryBackoff::L5D_HEADERS),
        },
        limit: limit
            .or(base.map(|r| r.limit))
            .unwrap_or(DEFAULT_LIMIT)
            .min(MAX_LIMIT),
        statuses: statuses
            .or_else(|| base.map(|r| r.statuses.clone()))
            .unwrap_or_default(),
        grpc: grpc.or(base.map(|r| r.grpc)).unwrap_or(0),
        max_request_bytes: base.map_or(RetryPolicy::DEFAULT_MAX_REQUEST_BYTES, |r| {
            r.max_request_bytes
        }),
    };
    let retry = (policy.limit > 0).then(|| Arc::new(policy));
    (t, retry)
}

/// `l5d-retry-http`'s list (items that do not parse are skipped).
fn http_statuses(v: &str) -> Vec<(u16, u16)> {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..600).contains(c))
    };
    v.split(',')
        .filter_map(|item| {
            let item = item.trim();
            if item.eq_ignore_ascii_case("5xx") {
                return Some((500, 599));
            }
            if item.eq_ignore_ascii_case("gateway-error") {
                return Some((502, 504));
            }
            if let Some(c) = code(item) {
                return Some((c, c));
            }
            let (lo, hi) = item.split_once('-')?;
            let (lo, hi) = (code(lo)?, code(hi)?);
            (lo <= hi).then_some((lo, hi))
        })
        .collect()
}

/// `l5d-retry-grpc`'s list, as a set of codes (bit `n`: code `n`).
fn grpc_codes(v: &str) -> u32 {
    v.split(',')
        .filter_map(ringmesh_discovery::profile::grpc_code::named)
        .fold(0, |bits, c| bits | 1 << c)
}

/// A Linkerd duration: an integer and a unit (`ms`, `s`, `m`, `h`, `d`),
/// or a bare `0`.
pub(crate) fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "" if n == 0 => 0,
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_discovery::profile::Req;

    fn req<'a>(headers: &'a [(&'a str, &'a str)]) -> Req<'a> {
        Req {
            method: "GET",
            path: "/",
            host: None,
            headers,
        }
    }

    #[test]
    fn durations_as_linkerd_writes_them() {
        assert_eq!(duration("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(duration(" 2s "), Some(Duration::from_secs(2)));
        assert_eq!(duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(duration("0"), Some(Duration::ZERO));
        for bad in [
            "",
            "5",
            "1.5s",
            "-1s",
            "10us",
            "s",
            "99999999999999999999d",
            "1x",
        ] {
            assert_eq!(duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn status_and_grpc_lists() {
        assert_eq!(
            http_statuses("5xx, gateway-error,429,500-504,600,504-500,x"),
            [(500, 599), (502, 504), (429, 429), (500, 504)]
        );
        assert_eq!(grpc_codes("unavailable,Internal,bogus"), 1 << 14 | 1 << 13);
    }

    #[test]
    fn headers_adjust_the_route() {
        let route = Some(Arc::new(RetryPolicy::on_5xx(2)));
        let t = Some(Duration::from_secs(5));
        // None of them: as the route says, the same policy.
        let (to, r) = apply(&req(&[("x", "y")]), t, route.clone());
        assert_eq!(to, t);
        assert!(Arc::ptr_eq(r.as_ref().unwrap(), route.as_ref().unwrap()));

        let (to, r) = apply(
            &req(&[
                ("l5d-timeout", "300ms"),
                ("l5d-retry-http", "429"),
                ("l5d-retry-limit", "50"),
            ]),
            t,
            route.clone(),
        );
        assert_eq!(to, Some(Duration::from_millis(300)));
        let r = r.unwrap();
        assert_eq!((r.limit, &r.statuses[..]), (MAX_LIMIT, &[(429, 429)][..]));

        // No route policy: the request's own, one retry by default.
        let (_, r) = apply(&req(&[("l5d-retry-grpc", "unavailable")]), None, None);
        let r = r.unwrap();
        assert_eq!(r.limit, 1);
        assert!(r.retries_grpc(14) && !r.retries_status(500));

        // A limit of 0 turns retries off; a bad timeout is ignored; the
        // response timeout bounds the request's.
        let (to, r) = apply(
            &req(&[
                ("l5d-retry-limit", "0"),
                ("l5d-timeout", "soon"),
                ("l5d-response-timeout", "1s"),
            ]),
            t,
            route,
        );
        assert_eq!((to, r), (Some(Duration::from_secs(1)), None));

        // `l5d-retry-timeout`: the per-attempt timeout, over the route's
        // policy (its backoff kept); alone, it makes a policy of its own
        // with linkerd2-proxy's backoff for header-made retries.
        let mut own = RetryPolicy::on_5xx(2);
        own.timeout = Some(Duration::from_secs(3));
        own.backoff = Some(RetryBackoff {
            min: Duration::from_millis(1),
            max: Duration::from_millis(2),
            jitter: 0.0,
        });
        let routed = Some(Arc::new(own.clone()));
        let (_, r) = apply(&req(&[("l5d-retry-timeout", "150ms")]), t, routed.clone());
        let r = r.unwrap();
        assert_eq!(r.timeout, Some(Duration::from_millis(150)));
        assert_eq!((r.limit, r.backoff), (2, own.backoff));
        let (_, r) = apply(&req(&[("l5d-retry-limit", "3")]), t, routed);
        assert_eq!(r.unwrap().timeout, Some(Duration::from_secs(3)));
        let (_, r) = apply(&req(&[("l5d-retry-timeout", "1s")]), None, None);
        let r = r.unwrap();
        assert_eq!(r.timeout, Some(Duration::from_secs(1)));
        assert_eq!((r.limit, r.backoff), (1, Some(RetryBackoff::L5D_HEADERS)));
        let (_, r) = apply(&req(&[("l5d-retry-timeout", "0")]), None, None);
        assert_eq!(r.unwrap().timeout, None, "zero is none");
    }

    #[test]
    fn required_identity_as_linkerd_parses_it() {
        let of = |v: &str| RequiredId::of(&req(&[("l5d-require-id", v)]));
        let id = |s: &str| Some(RequiredId::Id(s.into()));
        assert_eq!(RequiredId::of(&req(&[])), None);
        assert_eq!(
            of("Web.NS.serviceaccount.identity.linkerd.cluster.local"),
            id("web.ns.serviceaccount.identity.linkerd.cluster.local")
        );
        assert_eq!(of("hey-its-me"), id("hey-its-me"));
        assert_eq!(of("spiffe://cluster/ns/web"), id("spiffe://cluster/ns/web"));
        for ignored in ["", "web.ns.", "a b", "10.0.0.1", "-x", "1x:y", "x:a b"] {
            assert_eq!(of(ignored), Some(RequiredId::Ignored), "{ignored:?}");
        }
    }

    #[test]
    fn required_identity_against_the_endpoints() {
        let web = RequiredId::Id("web.ns".into());
        assert!(web.allows(Some("web.ns")).is_ok());
        let other = web.allows(Some("db.ns")).unwrap_err();
        assert_eq!((other.status(), other.label()), (502, "identity_required"));
        assert!(other.reason().contains("db.ns"), "{}", other.reason());
        assert!(web.allows(None).is_err(), "plaintext endpoint");
        assert!(RequiredId::Ignored.allows(None).is_ok());
    }
}
