//! An outbound policy's route filters (Linkerd's, after the Gateway API's
//! `HTTPRoute` and `GRPCRoute` filters): read from the policy on the
//! control core, applied by workers to the requests of the route.
//!
//! - Failure injection: a share of the route's requests (the filter's
//!   ratio) is answered by the proxy with the filter's HTTP status, or
//!   for a gRPC route its `grpc-status`, and its message.
//! - Redirect: a 3xx (301 unless given) whose `location` is the request's
//!   URL with the scheme, host, port and path the filter gives.
//! - Request and response header modifiers: fields added, set (every field
//!   of the name replaced) and removed, in that order.
//!
//! What is refused when the policy is read (the rule is skipped and
//! logged, as a rule with a match ringmesh cannot apply is): a ratio with
//! a zero denominator or above 1, a status outside 100–599 (a redirect's
//! outside 300–399), a relative redirect path, names or values that are
//! not valid HTTP fields. Header modifiers leave the fields that frame or
//! route the message alone (`content-length`, `transfer-encoding`,
//! `host`, hop-by-hop fields, Linkerd's `l5d-client-id`): changing those
//! would let a policy desynchronise the proxy's framing from the
//! upstream's; they are dropped from the modifier with a warning.
//! Several modifiers of one kind apply one after another, the route's
//! before its backend's (`RouteBackend.filters`, for requests sent to
//! that backend).
//!
//! Must not: do I/O.

use std::sync::Arc;

use linkerd2_proxy_api::http_route::{self as hr, HttpRouteMatch};
use linkerd2_proxy_api::outbound::{grpc_route, http_route};
use ringmesh_discovery::profile::{
    HeaderEdit, Redirect, RedirectPath, Refusal, RequestInfo, RouteFilter,
};

use crate::error::{Kind, ProxyError};

/// Fields a header modifier may not touch.
const FIXED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    crate::l5d_headers::CLIENT_ID,
];

type Filters = Option<Arc<[RouteFilter]>>;

/// An HTTP rule's filters; `matches`: the rule's matches (a redirect's
/// prefix replacement needs the prefix the request matched).
pub(crate) fn http(
    filters: &[http_route::Filter],
    matches: &[HttpRouteMatch],
) -> Result<Filters, String> {
    use http_route::filter::Kind as K;
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        out.push(match f.kind.as_ref().ok_or("a filter without a kind")? {
            K::FailureInjector(fi) => RouteFilter::Fail {
                // (Any status `http::StatusCode` takes, as linkerd2-proxy.)
                status: status(fi.status, 100..=999)?,
                grpc: None,
                message: fi.message.as_str().into(),
                numerator: ratio(fi.ratio.as_ref())?.0,
                denominator: ratio(fi.ratio.as_ref())?.1,
            },
            K::Redirect(r) => RouteFilter::Redirect(redirect(r, matches)?),
            K::RequestHeaderModifier(m) => {
                RouteFilter::RequestHeaders(edit(m.add.as_ref(), m.set.as_ref(), &m.remove)?)
            }
            K::ResponseHeaderModifier(m) => {
                RouteFilter::ResponseHeaders(edit(m.add.as_ref(), m.set.as_ref(), &m.remove)?)
            }
        });
    }
    Ok(done(out))
}

/// A gRPC rule's filters.
pub(crate) fn grpc(filters: &[grpc_route::Filter]) -> Result<Filters, String> {
    use grpc_route::filter::Kind as K;
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        out.push(match f.kind.as_ref().ok_or("a filter without a kind")? {
            K::FailureInjector(fi) => {
                let (numerator, denominator) = ratio(fi.ratio.as_ref())?;
                // (Codes past 16 are injected as they are, as linkerd2-proxy
                // does.)
                if fi.code > u32::from(u16::MAX) {
                    return Err(format!("gRPC status {} is out of range", fi.code));
                }
                RouteFilter::Fail {
                    status: 200,
                    grpc: Some(fi.code),
                    message: fi.message.as_str().into(),
                    numerator,
                    denominator,
                }
            }
            K::RequestHeaderModifier(m) => {
                RouteFilter::RequestHeaders(edit(m.add.as_ref(), m.set.as_ref(), &m.remove)?)
            }
        });
    }
    Ok(done(out))
}

fn done(filters: Vec<RouteFilter>) -> Filters {
    (!filters.is_empty()).then(|| filters.into())
}

fn status(s: u32, allowed: std::ops::RangeInclusive<u16>) -> Result<u16, String> {
    u16::try_from(s)
        .ok()
        .filter(|s| allowed.contains(s))
        .ok_or_else(|| format!("status {s} outside {allowed:?}"))
}

/// A failure injector's ratio (none: every request).
fn ratio(r: Option<&hr::Ratio>) -> Result<(u32, u32), String> {
    match r {
        None => Ok((1, 1)),
        Some(r) if r.denominator == 0 || r.numerator > r.denominator => Err(format!(
            "ratio {}/{} is not within [0, 1]",
            r.numerator, r.denominator
        )),
        Some(r) => Ok((r.numerator, r.denominator)),
    }
}

/// A URL part a policy gives: no controls, spaces or characters a
/// location field cannot carry.
fn url_part(what: &str, s: &str) -> Result<Arc<str>, String> {
    if s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.into())
    } else {
        Err(format!("redirect {what} {s:?} is not a URL part"))
    }
}

fn redirect(r: &hr::RequestRedirect, matches: &[HttpRouteMatch]) -> Result<Redirect, String> {
    use linkerd2_proxy_api::http_types::scheme::{Registered, Type};
    let scheme = match r.scheme.as_ref().and_then(|s| s.r#type.as_ref()) {
        None => None,
        Some(Type::Registered(n)) => match Registered::try_from(*n) {
            Ok(Registered::Http) => Some("http".into()),
            Ok(Registered::Https) => Some("https".into()),
            Err(_) => return Err(format!("unknown redirect scheme {n}")),
        },
        Some(Type::Unregistered(s)) if s == "http" || s == "https" => Some(s.as_str().into()),
        Some(Type::Unregistered(s)) => return Err(format!("redirect scheme {s:?}")),
    };
    let host = (!r.host.is_empty())
        .then(|| url_part("host", &r.host))
        .transpose()?;
    if host
        .as_deref()
        .is_some_and(|h| h.contains(['/', '?', '#', '@']))
    {
        return Err(format!("redirect host {:?}", r.host));
    }
    let port = match u16::try_from(r.port) {
        Ok(0) => None,
        Ok(p) => Some(p),
        Err(_) => return Err(format!("redirect port {}", r.port)),
    };
    let path = match r.path.as_ref().and_then(|p| p.replace.as_ref()) {
        None => None,
        Some(hr::path_modifier::Replace::Full(p)) if p.starts_with('/') => {
            Some(RedirectPath::Full(url_part("path", p)?))
        }
        Some(hr::path_modifier::Replace::Prefix(p)) if p.starts_with('/') => {
            Some(RedirectPath::Prefix {
                replace: url_part("path", p)?,
                matched: prefixes(matches),
            })
        }
        Some(_) => return Err("redirect paths must be absolute".into()),
    };
    let status = match r.status {
        0 => 301,
        s => status(s, 300..=399)?,
    };
    Ok(Redirect {
        scheme,
        host,
        port,
        path,
        status,
    })
}

/// The path prefixes of a rule's matches; empty when one of them matches
/// paths otherwise (a match without a path, like a rule without matches,
/// is the prefix `/`).
fn prefixes(matches: &[HttpRouteMatch]) -> Vec<Arc<str>> {
    if matches.is_empty() {
        return vec!["/".into()];
    }
    let mut out = Vec::with_capacity(matches.len());
    for m in matches {
        match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
            None => out.push("/".into()),
            Some(hr::path_match::Kind::Prefix(p)) => out.push(p.as_str().into()),
            Some(_) => return Vec::new(),
        }
    }
    out
}

fn edit(
    add: Option<&linkerd2_proxy_api::http_types::Headers>,
    set: Option<&linkerd2_proxy_api::http_types::Headers>,
    remove: &[String],
) -> Result<HeaderEdit, String> {
    let fields = |h: Option<&linkerd2_proxy_api::http_types::Headers>| {
        let mut out = Vec::new();
        for f in h.map(|h| &h.headers[..]).unwrap_or(&[]) {
            let name = field_name(&f.name)?;
            http::HeaderValue::from_bytes(&f.value)
                .map_err(|_| format!("header {:?}: a value it cannot carry", f.name))?;
            if let Some(name) = name {
                out.push((name, Arc::<[u8]>::from(&f.value[..])));
            }
        }
        Ok::<_, String>(out)
    };
    let mut names = Vec::with_capacity(remove.len());
    for n in remove {
        names.extend(field_name(n)?);
    }
    Ok(HeaderEdit {
        add: fields(add)?,
        set: fields(set)?,
        remove: names,
    })
}

/// A modifier's field name, lowercased; `None` (logged) for one it may
/// not touch.
fn field_name(n: &str) -> Result<Option<Arc<str>>, String> {
    let name =
        http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("header name {n:?}"))?;
    if FIXED.contains(&name.as_str()) {
        tracing::warn!(
            header = name.as_str(),
            "a route's header modifier may not change this field; left alone"
        );
        return Ok(None);
    }
    Ok(Some(name.as_str().into()))
}

/// The answer the route's filters make for `req` instead of forwarding
/// it (failure injection, a redirect), in the filters' order; `None`:
/// forward it.
pub(crate) fn answer(filters: &[RouteFilter], req: &dyn RequestInfo) -> Option<ProxyError> {
    for f in filters {
        match f {
            RouteFilter::Fail {
                status,
                grpc,
                message,
                numerator,
                denominator,
            } => {
                let hit = *numerator == *denominator || fastrand::u32(0..*denominator) < *numerator;
                if !hit {
                    continue;
                }
                return Some(match grpc {
                    // (Checked at most 16 when read.)
                    Some(code) => ProxyError::new(
                        Kind::InjectedGrpc(u16::try_from(*code).unwrap_or(u16::MAX)),
                        message.to_string(),
                    ),
                    None => ProxyError::new(Kind::Injected(*status), message.to_string()),
                });
            }
            RouteFilter::Redirect(r) => match location(r, req) {
                Ok(Some(location)) => return Some(ProxyError::redirect(r.status, location)),
                // The location is the request's own URL: no redirect.
                Ok(None) => {}
                Err(why) => return Some(ProxyError::new(Kind::BadFilter, why)),
            },
            RouteFilter::RequestHeaders(_) | RouteFilter::ResponseHeaders(_) => {}
            RouteFilter::Refuse(why) => {
                return Some(match why {
                    Refusal::NoRoute => {
                        ProxyError::new(Kind::NoRoute, "no route found for request")
                    }
                    Refusal::NoBackends => {
                        ProxyError::new(Kind::NoEndpoints, "the request's route has no backends")
                    }
                    Refusal::Invalid(why) => {
                        ProxyError::new(Kind::BadFilter, format!("invalid client policy: {why}"))
                    }
                })
            }
        }
    }
    None
}

/// Which message a header modifier changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Request,
    Response,
}

/// The header modifiers of `filters` for `m`, in order.
pub(crate) fn edits(filters: &[RouteFilter], m: Message) -> impl Iterator<Item = &HeaderEdit> {
    filters.iter().filter_map(move |f| match (f, m) {
        (RouteFilter::RequestHeaders(e), Message::Request)
        | (RouteFilter::ResponseHeaders(e), Message::Response) => Some(e),
        _ => None,
    })
}

/// The fields an HTTP/1 head writer drops and appends for the modifiers
/// of `filters` for `m`, one after another, with the proxy's own `remove`
/// and `extra`: every name a modifier sets or removes goes, and a field a
/// modifier appends stays unless a later one sets or removes its name.
pub(crate) fn h1_fields<'a>(
    filters: &'a [RouteFilter],
    m: Message,
    remove: &[&'a str],
    extra: &[(&'a str, &'a [u8])],
) -> (Vec<&'a str>, Vec<(&'a str, &'a [u8])>) {
    let all: Vec<&HeaderEdit> = edits(filters, m).collect();
    let drop = remove
        .iter()
        .copied()
        .chain(all.iter().flat_map(|e| e.replaced()))
        .collect();
    let mut add = Vec::new();
    for (i, e) in all.iter().enumerate() {
        let later = &all[i + 1..];
        add.extend(
            e.appended()
                .filter(|(n, _)| !later.iter().any(|l| l.replaced().any(|r| r == *n))),
        );
    }
    add.extend_from_slice(extra);
    (drop, add)
}

/// A redirect's location for `req`; `None` when it is the request's own
/// URL (linkerd2-proxy then forwards the request).
fn location(r: &Redirect, req: &dyn RequestInfo) -> Result<Option<String>, String> {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme());
    let authority = req.authority().ok_or("no authority to redirect to")?;
    if !authority.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the request's authority cannot be a location".into());
    }
    let (orig_host, orig_port) = split_port(authority);
    let default = |p: u16| (scheme == "http" && p == 80) || (scheme == "https" && p == 443);
    let host = r.host.as_deref().unwrap_or(orig_host);
    let port = match (r.port, orig_port) {
        (Some(p), _) if default(p) => None,
        (Some(p), _) => Some(p),
        // A new host keeps the request's port unless it is the default.
        (None, Some(p)) if !default(p) => Some(p),
        (None, _) => None,
    };
    let target = req.path_and_query();
    let path = match &r.path {
        None => target.to_string(),
        Some(RedirectPath::Full(p)) => p.to_string(),
        Some(RedirectPath::Prefix { replace, matched }) => {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            let prefix = matched
                .iter()
                .filter(|m| ringmesh_discovery::profile::path_has_prefix(path, m))
                .max_by_key(|m| m.len())
                .ok_or("a prefix redirect on a route not matched by a path prefix")?;
            let rest = &path[prefix.trim_end_matches('/').len()..];
            let mut p = replace.trim_end_matches('/').to_string();
            if !rest.is_empty() && !rest.starts_with('/') {
                p.push('/');
            }
            p.push_str(rest);
            // (`/old` to `/new`: `/new`, as linkerd2-proxy; never empty.)
            if p.is_empty() {
                p.push('/');
            }
            if let Some(q) = query {
                p.push('?');
                p.push_str(q);
            }
            p
        }
    };
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    if !location.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the redirect's location would not be a valid field value".into());
    }
    let same = location == format!("{}://{authority}{target}", req.scheme());
    Ok((!same).then_some(location))
}

/// `host` and its port, if given (an IPv6 literal keeps its brackets).
fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse() {
            Ok(p) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
            _ => (authority, None),
        },
        _ => (authority, None),
    }
}

/// Applies the modifiers of `filters` for `m`, in order, to an HTTP/2
/// (or translated) message's fields.
pub(crate) fn edit_map(filters: &[RouteFilter], m: Message, h: &mut http::HeaderMap) {
    for e in edits(filters, m) {
        for name in e.replaced() {
            h.remove(name);
        }
        for (name, value) in e.appended() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                h.append(n, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_discovery::profile::Req;

    fn req<'a>(host: &'a str, path: &'a str) -> ReqWith<'a> {
        ReqWith {
            inner: Req {
                method: "GET",
                path: path.split('?').next().unwrap(),
                host: Some(host),
                headers: &[],
            },
            authority: host,
            target: path,
        }
    }

    struct ReqWith<'a> {
        inner: Req<'a>,
        authority: &'a str,
        target: &'a str,
    }

    impl RequestInfo for ReqWith<'_> {
        fn method(&self) -> &str {
            self.inner.method()
        }
        fn path(&self) -> &str {
            self.inner.path()
        }
        fn host(&self) -> Option<&str> {
            self.inner.host()
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.inner.header(name)
        }
        fn authority(&self) -> Option<&str> {
            Some(self.authority)
        }
        fn path_and_query(&self) -> &str {
            self.target
        }
    }

    fn redirect_to(host: &str, port: u16, path: Option<RedirectPath>) -> Redirect {
        Redirect {
            scheme: None,
            host: (!host.is_empty()).then(|| host.into()),
            port: (port != 0).then_some(port),
            path,
            status: 302,
        }
    }

    #[test]
    fn redirect_locations_as_linkerd_makes_them() {
        let at = |r: &Redirect, host: &str, path: &str| location(r, &req(host, path)).unwrap();
        // Only the host: the request's non-default port stays.
        let r = redirect_to("new.test", 0, None);
        assert_eq!(
            at(&r, "web:8080", "/a?x=1").as_deref(),
            Some("http://new.test:8080/a?x=1")
        );
        assert_eq!(at(&r, "web:80", "/a").as_deref(), Some("http://new.test/a"));
        // Only the port.
        let r = redirect_to("", 9090, None);
        assert_eq!(at(&r, "web:8080", "/").as_deref(), Some("http://web:9090/"));
        // The request's own URL: no redirect.
        let r = redirect_to("web", 8080, None);
        assert_eq!(at(&r, "web:8080", "/"), None);
        // A full path.
        let r = redirect_to("", 0, Some(RedirectPath::Full("/moved".into())));
        assert_eq!(at(&r, "web", "/a/b?q").as_deref(), Some("http://web/moved"));
        // A prefix: the matched prefix replaced, the rest and the query kept.
        let prefix = |replace: &str, matched: &[&str]| {
            Some(RedirectPath::Prefix {
                replace: replace.into(),
                matched: matched.iter().map(|m| (*m).into()).collect(),
            })
        };
        let r = redirect_to("", 0, prefix("/v2", &["/v1", "/v1/old"]));
        assert_eq!(
            at(&r, "web", "/v1/x?q=1").as_deref(),
            Some("http://web/v2/x?q=1")
        );
        assert_eq!(
            at(&r, "web", "/v1/old/y").as_deref(),
            Some("http://web/v2/y")
        );
        // Nothing after the prefix: no slash added (as linkerd2-proxy).
        assert_eq!(at(&r, "web", "/v1").as_deref(), Some("http://web/v2"));
        // A path that a location cannot carry as it is.
        let r = redirect_to("new.test", 0, None);
        assert!(location(&r, &req("web", "/caf\u{e9}")).is_err());
        // A route matched otherwise cannot replace a prefix.
        let r = redirect_to("", 0, prefix("/v2", &[]));
        assert!(location(&r, &req("web", "/v1")).is_err());
    }

    #[test]
    fn failure_injection_follows_its_ratio() {
        let fail = |numerator, denominator| {
            [RouteFilter::Fail {
                status: 503,
                grpc: None,
                message: "injected".into(),
                numerator,
                denominator,
            }]
        };
        let r = req("web", "/");
        let hits = |f: &[RouteFilter]| (0..4000).filter(|_| answer(f, &r).is_some()).count();
        assert_eq!(hits(&fail(1, 1)), 4000);
        assert_eq!(hits(&fail(0, 1)), 0);
        let quarter = hits(&fail(1, 4));
        assert!((800..1200).contains(&quarter), "{quarter} of 4000");
        let e = answer(&fail(1, 1), &r).unwrap();
        assert_eq!(
            (e.status(), e.reason(), e.by_filter()),
            (503, "injected", true)
        );
    }

    #[test]
    fn grpc_failure_injection_answers_with_its_code() {
        let filter = |code| grpc_route::Filter {
            kind: Some(grpc_route::filter::Kind::FailureInjector(
                linkerd2_proxy_api::grpc_route::GrpcFailureInjector {
                    code,
                    message: "unavailable on purpose".into(),
                    ratio: None,
                },
            )),
        };
        // Past the codes gRPC defines: injected as it is (as linkerd2-proxy).
        assert!(grpc(&[filter(17)]).is_ok());
        assert!(grpc(&[filter(1 << 20)]).is_err());
        let f = grpc(&[filter(14)]).unwrap().unwrap();
        let e = answer(&f, &req("web", "/pkg.Svc/Call")).unwrap();
        assert_eq!((e.status(), e.grpc_status()), (200, 14));
        assert_eq!(e.reason(), "unavailable on purpose");
    }

    #[test]
    fn header_edits_add_then_set_then_remove() {
        let f = |n: &str, v: &str| (Arc::<str>::from(n), Arc::<[u8]>::from(v.as_bytes()));
        let e = HeaderEdit {
            add: vec![f("x-added", "1"), f("x-both", "added"), f("x-gone", "1")],
            set: vec![f("x-set", "new"), f("x-both", "set")],
            remove: vec!["x-gone".into(), "x-old".into()],
        };
        let mut h = http::HeaderMap::new();
        for (n, v) in [
            ("x-added", "0"),
            ("x-set", "old"),
            ("x-set", "old2"),
            ("x-old", "1"),
        ] {
            h.append(n, v.parse().unwrap());
        }
        edit_map(&[RouteFilter::RequestHeaders(e)], Message::Request, &mut h);
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-added"), ["0", "1"]);
        assert_eq!(all("x-set"), ["new"]);
        assert_eq!(all("x-both"), ["set"]);
        assert!(all("x-gone").is_empty() && all("x-old").is_empty());
    }

    /// Several modifiers one after another: for an HTTP/1 head (fields to
    /// drop and to append) as for a field map.
    #[test]
    fn modifiers_compose_in_order() {
        let f = |n: &str, v: &str| (Arc::<str>::from(n), Arc::<[u8]>::from(v.as_bytes()));
        let filters = [
            RouteFilter::RequestHeaders(HeaderEdit {
                add: vec![f("x-a", "1"), f("x-b", "1")],
                ..HeaderEdit::default()
            }),
            // A response modifier between them changes no request.
            RouteFilter::ResponseHeaders(HeaderEdit {
                remove: vec!["x-a".into()],
                ..HeaderEdit::default()
            }),
            RouteFilter::RequestHeaders(HeaderEdit {
                set: vec![f("x-a", "2")],
                remove: vec!["x-c".into()],
                ..HeaderEdit::default()
            }),
        ];
        let (drop, add) = h1_fields(&filters, Message::Request, &["l5d-x"], &[("l5d-y", b"1")]);
        assert_eq!(drop, ["l5d-x", "x-a", "x-c"]);
        let add: Vec<(&str, &str)> = add
            .iter()
            .map(|(n, v)| (*n, std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(add, [("x-b", "1"), ("x-a", "2"), ("l5d-y", "1")]);
        let mut h = http::HeaderMap::new();
        h.append("x-c", "0".parse().unwrap());
        edit_map(&filters, Message::Request, &mut h);
        let mut got: Vec<String> = h
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        got.sort();
        assert_eq!(got, ["x-a: 2", "x-b: 1"]);
    }

    #[test]
    fn bad_filters_are_refused_and_framing_fields_left_alone() {
        use linkerd2_proxy_api::http_types::{headers::Header, Headers};
        let fail = |status, ratio: Option<(u32, u32)>| http_route::Filter {
            kind: Some(http_route::filter::Kind::FailureInjector(
                hr::HttpFailureInjector {
                    status,
                    message: String::new(),
                    ratio: ratio.map(|(numerator, denominator)| hr::Ratio {
                        numerator,
                        denominator,
                    }),
                },
            )),
        };
        assert!(http(&[fail(503, None)], &[]).is_ok());
        assert!(http(&[fail(0, None)], &[]).is_err());
        assert!(http(&[fail(70000, None)], &[]).is_err());
        assert!(http(&[fail(503, Some((1, 0)))], &[]).is_err());
        assert!(http(&[fail(503, Some((3, 2)))], &[]).is_err());
        assert!(http(&[http_route::Filter { kind: None }], &[]).is_err());
        let redirect = |path: &str, status| http_route::Filter {
            kind: Some(http_route::filter::Kind::Redirect(hr::RequestRedirect {
                path: Some(hr::PathModifier {
                    replace: Some(hr::path_modifier::Replace::Full(path.into())),
                }),
                status,
                ..Default::default()
            })),
        };
        assert!(http(&[redirect("/x", 0)], &[]).is_ok());
        assert!(http(&[redirect("x", 0)], &[]).is_err());
        assert!(http(&[redirect("/x y", 0)], &[]).is_err());
        assert!(http(&[redirect("/x", 200)], &[]).is_err());
        let modifier = |name: &str, value: &[u8]| http_route::Filter {
            kind: Some(http_route::filter::Kind::RequestHeaderModifier(
                hr::RequestHeaderModifier {
                    set: Some(Headers {
                        headers: vec![Header {
                            name: name.into(),
                            value: value.to_vec(),
                        }],
                    }),
                    ..Default::default()
                },
            )),
        };
        assert!(http(&[modifier("bad name", b"v")], &[]).is_err());
        assert!(http(&[modifier("x-ok", b"a\r\nb")], &[]).is_err());
        let set = |f: &[RouteFilter]| edits(f, Message::Request).next().unwrap().set.clone();
        let kept = http(&[modifier("Content-Length", b"0")], &[])
            .unwrap()
            .unwrap();
        assert_eq!(set(&kept), vec![]);
        let kept = http(&[modifier("X-Ok", b"1")], &[]).unwrap().unwrap();
        assert_eq!(&*set(&kept)[0].0, "x-ok");
    }
}
