//! Inbound authorization, decided once per connection from the client's
//! address and how it was secured: by the port's server when the policy
//! API gave one ([`ServerPolicy::check`], `policy.rs` watches them), else
//! by Linkerd's default policies ([`InboundPolicy::check`]:
//! `LINKERD2_PROXY_INBOUND_DEFAULT_POLICY` and the per-port requirements
//! `LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY`, `_REQUIRE_TLS`; the
//! settings themselves are configuration, in `config.rs`).
//!
//! A denied opaque connection is closed; a denied HTTP request gets 403
//! (gRPC: `PERMISSION_DENIED`) with `l5d-proxy-error` (`ProxyError`'s
//! `Forbidden`). Outcomes are counted in linkerd2-proxy's
//! `inbound_{http,tcp}_authz_{allow,deny}_total`, labelled with the
//! server and the authorization (`srv_kind="default"` and the policy's
//! name for the default policies, as linkerd2-proxy labels them).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ringmesh_admin::telemetry::{AuthzKey, AuthzProto, PolicyLabels, PolicyMeta, TlsStatus};
use ringmesh_discovery::profile::{RequestInfo, RequestMatch, RouteFilter};

use crate::config::{DefaultPolicy, InboundPolicy};

impl DefaultPolicy {
    /// The policy with authentication required (a port that requires
    /// identity): unauthenticated variants become authenticated.
    fn authenticated(self) -> Self {
        match self {
            Self::AllUnauthenticated | Self::Audit => Self::AllAuthenticated,
            Self::ClusterUnauthenticated => Self::ClusterAuthenticated,
            p => p,
        }
    }
}

/// One connection's authorization: which server and authorization judged
/// it, and how (names are shared strings: a request's metric labels copy
/// no text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The server's metadata (`srv_group`, `srv_kind`, `srv_name`).
    pub srv_group: Arc<str>,
    pub srv_kind: Arc<str>,
    pub srv_name: Arc<str>,
    /// The authorization that allowed (empty for a denial).
    pub authz_group: Arc<str>,
    pub authz_kind: Arc<str>,
    pub authz_name: Arc<str>,
    /// Why a denial (the `l5d-proxy-error` text).
    pub reason: &'static str,
    /// The HTTP route that judged a request (`route_group`, `route_kind`,
    /// `route_name`; `default` for a server without routes, and for
    /// connections).
    pub route_group: Arc<str>,
    pub route_kind: Arc<str>,
    pub route_name: Arc<str>,
    /// No route of the server matches the request: 404, not 403.
    pub no_route: bool,
    /// The route's filters, applied to the request (failure injection,
    /// redirect, request header modifier).
    pub filters: Option<Arc<[RouteFilter]>>,
    /// A verdict of the policy API's server: the server and this
    /// connection's client, to judge each request by its route (when the
    /// server has HTTP routes) and to judge the connection anew when the
    /// port's server changes.
    pub per_request: Option<Arc<PerRequest>>,
    /// A verdict of the default policy made while the policy API had no
    /// server for the port (it had not answered yet, or has none): the
    /// client, to judge the connection anew by the server the API gives
    /// the port later (as linkerd2-proxy's default is only its policy
    /// watch's first value).
    pub provisional: Option<Arc<Judged>>,
    /// The server's local rate limit, which each admitted request takes
    /// from.
    pub rate_limit: Option<Arc<crate::ratelimit::LocalRateLimit>>,
}

/// What judging a connection's requests by route needs.
#[derive(Debug, PartialEq, Eq)]
pub struct PerRequest {
    server: Arc<ServerPolicy>,
    client: IpAddr,
    tls: TlsStatus,
}

/// The client a provisional verdict was made for.
#[derive(Debug, PartialEq, Eq)]
pub struct Judged {
    client: IpAddr,
    tls: TlsStatus,
}

impl Verdict {
    /// The verdict for one request on this connection: its route's, when
    /// the server judges requests by route (`None`: this one applies).
    pub fn for_request(&self, req: &dyn RequestInfo) -> Option<Verdict> {
        let p = self.per_request.as_ref()?;
        let s = &p.server;
        if s.http_routes.is_empty() {
            return None;
        }
        let Some(route) = best_route(&s.http_routes, req) else {
            let mut v = Verdict::of(s.meta(), None, "no route found for request");
            v.no_route = true;
            return Some(v);
        };
        let mut v = s.judge(&route.authorizations, p.client, &p.tls);
        v.rate_limit = s.rate_limit.clone();
        v.route_group = route.group.clone();
        v.route_kind = route.kind.clone();
        v.route_name = route.name.clone();
        v.filters = route.filters.clone();
        Some(v)
    }

    /// A denial by the `deny` default policy, which refuses connections
    /// rather than requests.
    pub fn denies_all(&self) -> bool {
        !self.allowed
            && self.per_request.is_none()
            && &*self.srv_kind == "default"
            && &*self.srv_name == DefaultPolicy::Deny.name()
    }

    /// Admitted by the `audit` default policy (logged, as linkerd2-proxy
    /// logs each audit admission).
    pub fn is_audit(&self) -> bool {
        self.allowed
            && &*self.authz_kind == "default"
            && &*self.authz_name == DefaultPolicy::Audit.name()
    }

    /// Whether a policy update may change it (a verdict of the policy
    /// API's server, or a provisional one of the default policy).
    pub fn may_change(&self) -> bool {
        self.per_request.is_some() || self.provisional.is_some()
    }

    /// The connection judged anew by `current`, the port's server now,
    /// when it is not the one this verdict came from (`None`: it stands;
    /// also for verdicts of the default policies made without the policy
    /// API, which do not change).
    pub fn revalidated(&self, current: &Arc<ServerPolicy>) -> Option<Verdict> {
        if let Some(p) = &self.per_request {
            if Arc::ptr_eq(&p.server, current) {
                return None;
            }
            return Some(current.check(p.client, &p.tls));
        }
        let j = self.provisional.as_ref()?;
        Some(current.check(j.client, &j.tls))
    }

    /// The connection judged anew by the default policy (`judge`) when the
    /// policy API no longer has a server for the port and this verdict
    /// came from one (`None`: it stands).
    pub fn to_default(&self, judge: impl FnOnce(IpAddr, &TlsStatus) -> Verdict) -> Option<Verdict> {
        let p = self.per_request.as_ref()?;
        Some(judge(p.client, &p.tls).provisionally(p.client, &p.tls))
    }

    /// This verdict of the default policy, marked as made while the policy
    /// API has no server for the port.
    pub fn provisionally(mut self, client: IpAddr, tls: &TlsStatus) -> Verdict {
        self.provisional = Some(Arc::new(Judged {
            client,
            tls: tls.clone(),
        }));
        self
    }
}

impl Verdict {
    /// An admitted request takes from the server's rate limit: the
    /// answer when over it (429).
    pub(crate) fn rate_limited(&self, tls: &TlsStatus) -> Option<crate::error::ProxyError> {
        let limit = self.rate_limit.as_ref().filter(|_| self.allowed)?;
        let id = match tls {
            TlsStatus::Accepted { client_id } => client_id.as_deref(),
            _ => None,
        };
        let exceeded = limit.check(id).err()?;
        Some(crate::error::ProxyError::rate_limited(exceeded.reason()))
    }
}

/// The route of `routes` that matches `req` most specifically (the first
/// of equals), as linkerd2-proxy picks an inbound route.
fn best_route<'r>(routes: &'r [InboundRoute], req: &dyn RequestInfo) -> Option<&'r InboundRoute> {
    let mut best: Option<(ringmesh_discovery::profile::Specificity, &InboundRoute)> = None;
    for r in routes {
        if let Some(s) = r.condition.specificity(req) {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, r));
            }
        }
    }
    best.map(|(_, r)| r)
}

thread_local! {
    static NAMES: Names = Names::default();
}

/// The default policies' names as shared strings, made once per thread.
struct Names {
    default: Arc<str>,
    by_policy: [Arc<str>; 6],
    empty: Arc<str>,
}

impl Default for Names {
    fn default() -> Self {
        let all = [
            DefaultPolicy::AllUnauthenticated,
            DefaultPolicy::AllAuthenticated,
            DefaultPolicy::ClusterUnauthenticated,
            DefaultPolicy::ClusterAuthenticated,
            DefaultPolicy::Deny,
            DefaultPolicy::Audit,
        ];
        Self {
            default: "default".into(),
            by_policy: all.map(|p| Arc::from(p.name())),
            empty: "".into(),
        }
    }
}

impl Verdict {
    /// Outbound, and inbound before a check: nothing to authorize.
    pub fn unchecked() -> Verdict {
        Self::by_default(true, DefaultPolicy::AllUnauthenticated, "")
    }

    fn by_default(allowed: bool, policy: DefaultPolicy, reason: &'static str) -> Verdict {
        NAMES.with(|n| {
            let name = &n.by_policy[policy as usize];
            let by = allowed.then_some((&n.default, name));
            let by = by.map(|(k, n2)| (&n.empty, k, n2));
            Verdict::of((&n.empty, &n.default, name), by, reason)
        })
    }

    /// The verdict of the server `(group, kind, name)`: admitted by the
    /// authorization `(group, kind, name)`, or (`None`) denied for
    /// `reason`; on the default route.
    fn of(server: MetaRef<'_>, authz: Option<MetaRef<'_>>, reason: &'static str) -> Verdict {
        NAMES.with(|n| Verdict {
            allowed: authz.is_some(),
            srv_group: server.0.clone(),
            srv_kind: server.1.clone(),
            srv_name: server.2.clone(),
            authz_group: authz.map_or_else(|| n.empty.clone(), |a| a.0.clone()),
            authz_kind: authz.map_or_else(|| n.empty.clone(), |a| a.1.clone()),
            authz_name: authz.map_or_else(|| n.empty.clone(), |a| a.2.clone()),
            reason,
            route_group: n.empty.clone(),
            route_kind: n.default.clone(),
            route_name: n.default.clone(),
            no_route: false,
            filters: None,
            per_request: None,
            provisional: None,
            rate_limit: None,
        })
    }
}

/// A server's, route's or authorization's metadata as its labels give
/// it: group, kind and name.
type MetaRef<'a> = (&'a Arc<str>, &'a Arc<str>, &'a Arc<str>);

/// How an authorization lets clients in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authn {
    /// Anyone, TLS or not.
    Unauthenticated,
    /// Any client whose TLS this proxy terminated, identity or not.
    AnyTls,
    /// Clients that proved one of these identities, or one under these
    /// suffixes (each `.`-prefixed; the empty suffix: any identity).
    Identities {
        names: Vec<String>,
        suffixes: Vec<String>,
    },
}

/// One authorization of a server.
#[derive(Clone, Debug)]
pub struct Authorization {
    /// Client networks, each with its exceptions; empty: no client.
    pub networks: Vec<(ipnet::IpNet, Vec<ipnet::IpNet>)>,
    pub authn: Authn,
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

/// A port's server, from the policy API.
#[derive(Clone, Debug)]
pub struct ServerPolicy {
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub name: Arc<str>,
    pub authorizations: Vec<Authorization>,
    /// The port's protocol when the server names one (no detection).
    pub protocol: Option<ringmesh_discovery::Protocol>,
    /// Its HTTP (or gRPC) routes, one per rule; empty: every request is
    /// judged by the server's authorizations (the default route).
    pub http_routes: Vec<InboundRoute>,
    /// Its local rate limit (requests per second), if it has one.
    pub rate_limit: Option<Arc<crate::ratelimit::LocalRateLimit>>,
}

impl PartialEq for ServerPolicy {
    /// The same server (a connection's verdict compares by identity).
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ServerPolicy {}

/// One rule of an inbound route: the requests it matches, who may send
/// them (the route's authorizations, then the server's, as linkerd2-proxy
/// merges them), and its filters.
#[derive(Clone, Debug)]
pub struct InboundRoute {
    pub condition: RequestMatch,
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub name: Arc<str>,
    pub authorizations: Vec<Authorization>,
    pub filters: Option<Arc<[RouteFilter]>>,
}

impl ServerPolicy {
    /// The policy of a port the proxy could not watch (too many are):
    /// nothing admitted, labelled `srv_name="unwatched"`.
    pub fn unwatched() -> Arc<Self> {
        Self::denying("unwatched")
    }

    /// The policy of a port whose server from the policy API is invalid
    /// (as linkerd2-proxy's): nothing admitted, `srv_name="invalid"`.
    pub fn invalid() -> Arc<Self> {
        Self::denying("invalid")
    }

    /// A default server (`srv_kind="default"`) named `name` that admits
    /// nothing.
    fn denying(name: &str) -> Arc<Self> {
        Arc::new(Self {
            group: Arc::from(""),
            kind: Arc::from("default"),
            name: Arc::from(name),
            authorizations: Vec::new(),
            protocol: None,
            http_routes: Vec::new(),
            rate_limit: None,
        })
    }

    /// Its metric labels on `port` (`srv_*`).
    pub fn labels(&self, port: u16) -> PolicyLabels {
        PolicyLabels {
            server: policy_meta(self.meta()),
            port,
            route: None,
            authz: None,
        }
    }

    /// Its metadata: group, kind and name.
    fn meta(&self) -> MetaRef<'_> {
        (&self.group, &self.kind, &self.name)
    }

    /// The connection's verdict: by the server's authorizations; with
    /// HTTP routes, each request is judged again by its route
    /// ([`Verdict::for_request`]).
    pub fn check(self: &Arc<Self>, client: IpAddr, tls: &TlsStatus) -> Verdict {
        let mut v = self.judge(&self.authorizations, client, tls);
        v.rate_limit = self.rate_limit.clone();
        v.per_request = Some(Arc::new(PerRequest {
            server: self.clone(),
            client,
            tls: tls.clone(),
        }));
        v
    }

    /// The first of `authorizations` that lets the client in, or a
    /// denial. (linkerd2-proxy also admits loopback clients always; in a
    /// pod none arrive, and ringmesh leaves them to the server, so a test
    /// on loopback sees what a remote client would.)
    fn judge(&self, authorizations: &[Authorization], client: IpAddr, tls: &TlsStatus) -> Verdict {
        let id = match tls {
            TlsStatus::Accepted { client_id } => Some(client_id.as_deref()),
            _ => None,
        };
        let found = authorizations.iter().find(|a| {
            let in_net = a.networks.iter().any(|(net, except)| {
                net.contains(&client) && !except.iter().any(|e| e.contains(&client))
            });
            in_net
                && match &a.authn {
                    Authn::Unauthenticated => true,
                    Authn::AnyTls => id.is_some(),
                    Authn::Identities { names, suffixes } => match id.flatten() {
                        None => false,
                        Some(id) => {
                            names.iter().any(|n| n == id)
                                || suffixes
                                    .iter()
                                    .any(|s| s.is_empty() || id.ends_with(s.as_str()))
                        }
                    },
                }
        });
        match found {
            Some(a) => Verdict::of(self.meta(), Some((&a.group, &a.kind, &a.name)), ""),
            None if &*self.kind == "default" && &*self.name == "invalid" => Verdict::of(
                self.meta(),
                None,
                "unauthorized request on route: the port's server from the policy API is invalid",
            ),
            None => Verdict::of(
                self.meta(),
                None,
                "unauthorized request on route: no authorization of the server admits the client",
            ),
        }
    }
}

impl InboundPolicy {
    /// Whether a client at `client`, secured as `tls`, may use `port`.
    pub fn check(&self, port: u16, client: IpAddr, tls: &TlsStatus) -> Verdict {
        let policy = self.for_port(port);
        let (tls_ok, identity_ok) = match tls {
            TlsStatus::Accepted { client_id } => (true, client_id.is_some()),
            _ => (false, false),
        };
        let in_cluster = || self.cluster_networks.iter().any(|n| n.contains(&client));
        if self.require_tls.contains(port) && !tls_ok {
            return Verdict::by_default(
                false,
                policy,
                "unauthorized connection on server: TLS required on this port",
            );
        }
        let ok = match policy {
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => true,
            DefaultPolicy::AllAuthenticated => identity_ok,
            DefaultPolicy::ClusterUnauthenticated => in_cluster(),
            DefaultPolicy::ClusterAuthenticated => identity_ok && in_cluster(),
            DefaultPolicy::Deny => false,
        };
        if ok {
            return Verdict::by_default(true, policy, "");
        }
        Verdict::by_default(
            false,
            policy,
            match policy {
                DefaultPolicy::Deny => "unauthorized request on route: the server denies all",
                DefaultPolicy::ClusterUnauthenticated => {
                    "unauthorized request on route: the client is not in the cluster networks"
                }
                _ if !identity_ok => {
                    "unauthorized request on route: a meshed client identity is required"
                }
                _ => "unauthorized request on route: the client is not in the cluster networks",
            },
        )
    }
}

impl InboundPolicy {
    /// The default policy that applies on `port` (authenticated where the
    /// port requires an identity).
    fn for_port(&self, port: u16) -> DefaultPolicy {
        match self.require_identity.contains(port) {
            true => self.default.authenticated(),
            false => self.default,
        }
    }

    /// The metric labels (`srv_*`) of the default server on `port`.
    pub fn server_labels(&self, port: u16) -> PolicyLabels {
        NAMES.with(|n| PolicyLabels {
            server: policy_meta((
                &n.empty,
                &n.default,
                &n.by_policy[self.for_port(port) as usize],
            )),
            port,
            route: None,
            authz: None,
        })
    }
}

/// Shared names as a label set's metadata.
fn policy_meta((group, kind, name): MetaRef<'_>) -> PolicyMeta {
    PolicyMeta {
        group: group.clone(),
        kind: kind.clone(),
        name: name.clone(),
    }
}

impl Verdict {
    /// The verdict's metric labels on `port`: the server, the route that
    /// judged (`http`: a request's) and the authorization that allowed.
    pub fn labels(&self, port: u16, http: bool) -> PolicyLabels {
        PolicyLabels {
            server: policy_meta((&self.srv_group, &self.srv_kind, &self.srv_name)),
            port,
            route: http
                .then(|| policy_meta((&self.route_group, &self.route_kind, &self.route_name))),
            authz: self
                .allowed
                .then(|| policy_meta((&self.authz_group, &self.authz_kind, &self.authz_name))),
        }
    }
}

/// The metric label set of one authorization outcome.
/// An HTTP request no route matched is counted apart, by its server alone
/// (linkerd2-proxy's `inbound_http_route_not_found_total`), not as a
/// denial.
pub(crate) fn key(proto: AuthzProto, target: SocketAddr, v: &Verdict, tls: &TlsStatus) -> AuthzKey {
    let proto = match proto {
        AuthzProto::Http if v.no_route => AuthzProto::HttpRouteNotFound,
        proto => proto,
    };
    AuthzKey {
        proto,
        allowed: v.allowed,
        target,
        policy: v.labels(target.port(), proto == AuthzProto::Http),
        tls: tls.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortSet;

    fn policy(default: &str) -> InboundPolicy {
        InboundPolicy {
            default: default.parse().unwrap(),
            cluster_networks: vec!["10.0.0.0/8".parse().unwrap()],
            require_identity: PortSet::parse("9000").unwrap(),
            require_tls: PortSet::parse("9100").unwrap(),
        }
    }

    #[test]
    fn default_policies_and_port_requirements() {
        let meshed = TlsStatus::Accepted {
            client_id: Some("a.ns.serviceaccount.identity.linkerd.cluster.local".into()),
        };
        let tls_anon = TlsStatus::Accepted { client_id: None };
        let plain = TlsStatus::NO_PROXY_IDENTITY;
        let inside: IpAddr = "10.1.1.1".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = |p: &InboundPolicy, port, ip, tls| p.check(port, ip, tls).allowed;

        let p = policy("all-unauthenticated");
        assert!(allowed(&p, 80, outside, &plain));
        assert!(
            !allowed(&p, 9000, outside, &plain),
            "port requires identity"
        );
        assert!(!allowed(&p, 9000, inside, &tls_anon));
        assert!(allowed(&p, 9000, outside, &meshed));
        assert_eq!(
            &*p.check(9000, outside, &meshed).srv_name,
            "all-authenticated"
        );
        assert!(!allowed(&p, 9100, inside, &plain), "port requires TLS");
        assert!(allowed(&p, 9100, inside, &tls_anon));

        let p = policy("all-authenticated");
        assert!(!allowed(&p, 80, inside, &plain));
        assert!(!allowed(&p, 80, inside, &tls_anon));
        assert!(allowed(&p, 80, outside, &meshed));

        let p = policy("cluster-unauthenticated");
        assert!(allowed(&p, 80, inside, &plain));
        assert!(!allowed(&p, 80, outside, &meshed));
        assert_eq!(
            &*p.check(9000, inside, &plain).srv_name,
            "cluster-authenticated"
        );

        let p = policy("cluster-authenticated");
        assert!(!allowed(&p, 80, inside, &plain));
        assert!(allowed(&p, 80, inside, &meshed));
        assert!(!allowed(&p, 80, outside, &meshed));

        let p = policy("deny");
        assert!(!allowed(&p, 80, inside, &meshed));
        let p = policy("audit");
        assert!(allowed(&p, 80, outside, &plain));
        assert_eq!(&*p.check(80, outside, &plain).authz_name, "audit");
        assert!("allow".parse::<DefaultPolicy>().is_err());
    }
}
