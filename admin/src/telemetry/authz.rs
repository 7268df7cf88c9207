//! Inbound authorization outcomes, with linkerd2-proxy's families:
//! `inbound_http_authz_allow_total` / `_deny_total` (per request) and
//! `inbound_tcp_authz_allow_total` / `_deny_total` (per opaque connection),
//! `inbound_tcp_authz_terminate_total` (open ones a policy update closed),
//! `inbound_http_route_not_found_total` (requests no route matched),
//! labelled by the target, the server (`srv_*`), the route (`route_*`, HTTP),
//! the authorization that allowed (`authz_*`) and the client's TLS.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use super::keyed_hash::KeyedState;
use super::labels::{target_labels, PolicyLabels};
use super::tls::TlsStatus;
use super::{cap_hit, family, MAX_SERIES};

/// What was authorized: a request, or an opaque connection; or an open
/// opaque connection closed because a policy update no longer admits it
/// (`inbound_tcp_authz_terminate_total`, counted as not allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuthzProto {
    Http,
    /// An inbound HTTP request no route of its server matched (404;
    /// `inbound_http_route_not_found_total`, by target, server and TLS).
    HttpRouteNotFound,
    Tcp,
    TcpTerminated,
}

/// One authorization label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthzKey {
    pub proto: AuthzProto,
    pub allowed: bool,
    pub target: SocketAddr,
    /// The server (`srv_*`: empty, `default` and the default policy's name
    /// without a policy API), the route that judged an HTTP request
    /// (`route_*`: `default` without routes; none for a connection) and
    /// the authorization that allowed (`authz_*`; none for a denial).
    pub policy: PolicyLabels,
    pub tls: TlsStatus,
}

/// A worker's authorization counters.
#[derive(Debug, Default, Clone)]
pub struct AuthzShard(pub HashMap<AuthzKey, u64, KeyedState>);

impl AuthzShard {
    pub fn record(&mut self, key: &AuthzKey) {
        if let Some(n) = self.0.get_mut(key) {
            *n += 1;
            return;
        }
        if self.0.len() >= MAX_SERIES {
            cap_hit("inbound_authz");
            return;
        }
        self.0.insert(key.clone(), 1);
    }

    pub fn merge(&mut self, other: &AuthzShard) {
        for (k, n) in &other.0 {
            *self.0.entry(k.clone()).or_default() += n;
        }
    }

    pub fn encode(&self, out: &mut String) {
        let mut rows: Vec<(&AuthzKey, u64)> = self.0.iter().map(|(k, n)| (k, *n)).collect();
        rows.sort();
        let families = [
            (
                AuthzProto::Http,
                true,
                "inbound_http_authz_allow_total",
                "The total number of inbound HTTP requests that were authorized.",
            ),
            (
                AuthzProto::Http,
                false,
                "inbound_http_authz_deny_total",
                "The total number of inbound HTTP requests that could not be processed due to a proxy error.",
            ),
            (
                AuthzProto::HttpRouteNotFound,
                false,
                "inbound_http_route_not_found_total",
                "The total number of inbound HTTP requests that could not be associated with a route.",
            ),
            (
                AuthzProto::Tcp,
                true,
                "inbound_tcp_authz_allow_total",
                "The total number of inbound TCP connections that were authorized.",
            ),
            (
                AuthzProto::Tcp,
                false,
                "inbound_tcp_authz_deny_total",
                "The total number of inbound TCP connections that were denied.",
            ),
            (
                AuthzProto::TcpTerminated,
                false,
                "inbound_tcp_authz_terminate_total",
                "The total number of inbound TCP connections that were terminated due to an authorization change.",
            ),
        ];
        for (proto, allowed, name, help) in families {
            let mut of = rows
                .iter()
                .filter(|(k, _)| k.proto == proto && k.allowed == allowed)
                .peekable();
            if of.peek().is_none() {
                continue;
            }
            family(out, name, "counter", help);
            for (k, n) in of {
                let _ = writeln!(out, "{name}{{{}}} {n}", labels(k));
            }
        }
    }
}

fn labels(k: &AuthzKey) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(&target_labels(k.target));
    // As linkerd2-proxy's `ServerLabel`, `RouteLabels` and
    // `ServerAuthzLabels`.
    k.policy.push_labels(&mut s);
    k.tls.push_labels(&mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::super::labels::PolicyMeta;
    use super::*;

    fn meta(kind: &str, name: &str) -> PolicyMeta {
        PolicyMeta {
            group: "policy.linkerd.io".into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn families_and_labels() {
        let mut a = AuthzShard::default();
        let key = |proto, allowed| AuthzKey {
            proto,
            allowed,
            target: "10.0.0.1:8080".parse().unwrap(),
            policy: PolicyLabels {
                server: meta("server", "web"),
                port: 8080,
                route: (proto == AuthzProto::Http).then(|| PolicyMeta {
                    group: "".into(),
                    kind: "default".into(),
                    name: "default".into(),
                }),
                authz: allowed.then(|| meta("authorizationpolicy", "web-authz")),
            },
            tls: TlsStatus::Accepted {
                client_id: Some("a.ns.serviceaccount.identity.linkerd.cluster.local".into()),
            },
        };
        a.record(&key(AuthzProto::Http, true));
        a.record(&key(AuthzProto::Http, true));
        let mut b = AuthzShard::default();
        b.record(&key(AuthzProto::Tcp, false));
        a.merge(&b);
        let mut out = String::new();
        a.encode(&mut out);
        assert!(out.contains("inbound_http_authz_allow_total{target_addr=\"10.0.0.1:8080\",target_ip=\"10.0.0.1\",target_port=\"8080\",srv_group=\"policy.linkerd.io\",srv_kind=\"server\",srv_name=\"web\",srv_port=\"8080\",route_group=\"\",route_kind=\"default\",route_name=\"default\",authz_group=\"policy.linkerd.io\",authz_kind=\"authorizationpolicy\",authz_name=\"web-authz\",tls=\"true\",client_id=\"a.ns.serviceaccount.identity.linkerd.cluster.local\"} 2"), "{out}");
        assert!(out.contains("inbound_tcp_authz_deny_total{target_addr=\"10.0.0.1:8080\",target_ip=\"10.0.0.1\",target_port=\"8080\",srv_group=\"policy.linkerd.io\",srv_kind=\"server\",srv_name=\"web\",srv_port=\"8080\",tls=\"true\","), "{out}");
        assert!(
            !out.contains("inbound_http_authz_deny_total"),
            "a family without series is left out"
        );
    }
}
