//! Linkerd's inbound policy API (`InboundServerPolicies.WatchPort`), run
//! on the control core: who may reach each application port.
//!
//! # What it owns
//!
//! - One `WatchPort { workload: LINKERD2_PROXY_POLICY_WORKLOAD, port }`
//!   stream per inbound port: those in `LINKERD2_PROXY_INBOUND_PORTS`
//!   from the start, any other when a worker first meets it
//!   ([`PolicyClient::watch`]). All streams share one connection to
//!   `LINKERD2_PROXY_POLICY_SVC_ADDR` and the control-stream rules
//!   (`stream.rs`: limits, backoff, the last state kept).
//! - The `Server` each stream last sent, as a [`ServerPolicy`]: its
//!   authorizations (client networks with exceptions; unauthenticated,
//!   any mesh TLS, or identities by name and suffix) and the server's and
//!   authorizations' `kind`/`name` labels. Published to the workers as
//!   [`InboundPolicies`] through the lock-free channel.
//! - A port whose stream failed before any answer is published as "use
//!   the default policy" (`None`), so connections do not wait on it.
//!
//! Workers decide per connection ([`crate::authz`]): a port with a server
//! is judged by its authorizations, else by the default policy.
//!
//! The server's protocol applies too: `opaque` (and `tls`) ports are
//! relayed without detection, `http1`/`http2`/`grpc` ports are taken as
//! that protocol.
//!
//! Not yet: route-level
//! authorizations (HTTP is judged by the server's authorizations alone: a
//! server whose authorizations are all on routes denies, it never admits
//! more), rate limits.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use linkerd2_proxy_api::inbound::{authn, PortSpec, Server};
use ringmesh_discovery::channel::{Cache, Published, Publisher, Subscriber};
use ringmesh_discovery::Protocol;

use crate::authz::{Authn, Authorization, InboundRoute, ServerPolicy};
use crate::config::{PolicyConfig, StreamLimits};
use crate::identity::IdentityState;
use crate::ratelimit::{Gcra, LocalRateLimit};
use crate::stream::{self, Client, StreamCounters};
use linkerd2_proxy_api::http_route::HostMatch;
use linkerd2_proxy_api::inbound::Authz;
use linkerd2_proxy_api::meta::Metadata;
use ringmesh_discovery::profile::{RequestMatch, RouteFilter};

const WATCH_PORT_PATH: &str = "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort";

/// Every watched port's server: `None` until the API answers (or after
/// it failed without an answer): the default policy applies.
#[derive(Debug, Default)]
pub(crate) struct InboundPolicies {
    pub ports: HashMap<u16, Option<Arc<ServerPolicy>>>,
    /// As many ports as allowed are watched: one not watched is not
    /// asked about, and its connections are denied (it might have a
    /// server the default policy would admit more than).
    pub full: bool,
}

impl Published for InboundPolicies {}

pub(crate) type PolicyCache = Cache<InboundPolicies>;

/// The policy client on the control core.
pub(crate) struct PolicyClient {
    client: Client,
    workload: String,
    limits: StreamLimits,
    publisher: RefCell<Publisher<InboundPolicies>>,
    watched: RefCell<HashSet<u16>>,
    /// `LINKERD2_PROXY_INBOUND_PORTS`: always watched.
    declared: HashSet<u16>,
    /// Ports watched besides the declared ones, at most.
    max_other: usize,
    counters: Arc<StreamCounters>,
}

impl PolicyClient {
    pub(crate) fn new(
        cfg: &PolicyConfig,
        limits: StreamLimits,
        identity: &Subscriber<IdentityState>,
        publisher: Publisher<InboundPolicies>,
        counters: Arc<StreamCounters>,
    ) -> Rc<Self> {
        Rc::new(Self {
            client: Client::new(cfg.svc_addr.clone(), cfg.svc_name.clone(), identity),
            workload: cfg.workload.clone(),
            limits,
            publisher: RefCell::new(publisher),
            watched: RefCell::new(HashSet::new()),
            declared: cfg.ports.iter().copied().collect(),
            max_other: cfg.max_other_ports,
            counters,
        })
    }

    /// Starts watching `port` (once): a declared port always; another
    /// while fewer than the limit of them are watched. Past it the
    /// workers are told (once) to deny ports not watched: a client
    /// probing every port cannot open a stream per port.
    pub(crate) fn watch(self: &Rc<Self>, port: u16) {
        let mut watched = self.watched.borrow_mut();
        if watched.contains(&port) {
            return;
        }
        if !self.declared.contains(&port) {
            let others = watched
                .iter()
                .filter(|p| !self.declared.contains(p))
                .count();
            if others >= self.max_other {
                drop(watched);
                let mut publisher = self.publisher.borrow_mut();
                if !publisher.current().full {
                    tracing::warn!(port, limit = self.max_other, "inbound ports watched at their limit (RINGMESH_INBOUND_POLICY_MAX_PORTS); connections to other ports are denied");
                    let ports = publisher.current().ports.clone();
                    publisher.publish(InboundPolicies { ports, full: true });
                }
                return;
            }
        }
        watched.insert(port);
        monoio::spawn(self.clone().follow(port));
    }

    async fn follow(self: Rc<Self>, port: u16) {
        let req = PortSpec {
            workload: self.workload.clone(),
            port: u32::from(port),
        };
        let answered = std::cell::Cell::new(false);
        stream::follow(
            &self.client,
            WATCH_PORT_PATH,
            req,
            self.limits,
            &self.counters,
            &format_args!("inbound port {port}"),
            |server: Server, _fresh| {
                let policy = server_policy(port, server);
                tracing::debug!(port, server = %policy.name, authorizations = policy.authorizations.len(), "inbound policy");
                answered.set(true);
                self.publish(port, Some(Arc::new(policy)));
            },
            || {
                if !answered.get() {
                    // The default policy, so connections do not wait.
                    answered.set(true);
                    self.publish(port, None);
                }
            },
        )
        .await;
    }

    fn publish(&self, port: u16, server: Option<Arc<ServerPolicy>>) {
        let mut publisher = self.publisher.borrow_mut();
        let mut ports = publisher.current().ports.clone();
        ports.insert(port, server);
        let full = publisher.current().full;
        publisher.publish(InboundPolicies { ports, full });
    }
}

/// A label of a server or authorization (`kind`, `name`), shared.
fn label(labels: &HashMap<String, String>, key: &str, default: &str) -> Arc<str> {
    Arc::from(labels.get(key).map_or(default, String::as_str))
}

/// The workers' form of a `Server`; unusable authorizations (no network
/// that parses, no authentication) are dropped, which only ever admits
/// fewer clients.
fn server_policy(port: u16, s: Server) -> ServerPolicy {
    let authorizations: Vec<Authorization> = s
        .authorizations
        .into_iter()
        .filter_map(|a| authorization(port, a))
        .collect();
    use linkerd2_proxy_api::inbound::proxy_protocol::Kind;
    let kind = s.protocol.and_then(|p| p.kind);
    let protocol = match &kind {
        Some(Kind::Opaque(_) | Kind::Tls(_)) => Some(Protocol::Opaque),
        Some(Kind::Http1(_)) => Some(Protocol::Http1),
        Some(Kind::Http2(_) | Kind::Grpc(_)) => Some(Protocol::Http2),
        Some(Kind::Detect(_)) | None => None,
    };
    let rate_limit = match &kind {
        Some(Kind::Detect(d)) => d.http_local_rate_limit.as_ref(),
        Some(Kind::Http1(h)) => h.local_rate_limit.as_ref(),
        Some(Kind::Http2(h)) => h.local_rate_limit.as_ref(),
        _ => None,
    }
    .map(rate_limit)
    .filter(|l| !l.is_empty())
    .map(Arc::new);
    let http_routes = match kind {
        Some(Kind::Detect(d)) => http_routes(port, d.http_routes, &authorizations),
        Some(Kind::Http1(h)) => http_routes(port, h.routes, &authorizations),
        Some(Kind::Http2(h)) => http_routes(port, h.routes, &authorizations),
        Some(Kind::Grpc(g)) => grpc_routes(port, g.routes, &authorizations),
        _ => Vec::new(),
    };
    ServerPolicy {
        kind: label(&s.labels, "kind", "default"),
        name: label(&s.labels, "name", ""),
        authorizations,
        protocol,
        http_routes,
        rate_limit,
    }
}

/// A server's local rate limit (a limit of 0 requests per second is none,
/// as linkerd2-proxy reads it).
fn rate_limit(l: &linkerd2_proxy_api::inbound::HttpLocalRateLimit) -> LocalRateLimit {
    let rps = |l: Option<&linkerd2_proxy_api::inbound::http_local_rate_limit::Limit>| {
        l.map(|l| l.requests_per_second).filter(|r| *r > 0)
    };
    LocalRateLimit {
        total: rps(l.total.as_ref()).map(Gcra::new),
        per_identity: rps(l.identity.as_ref()).map(LocalRateLimit::per_identity),
        overrides: l
            .overrides
            .iter()
            .filter_map(|o| {
                let ids = o
                    .clients
                    .as_ref()?
                    .identities
                    .iter()
                    .map(|i| i.name.clone())
                    .collect();
                Some((ids, Gcra::new(rps(o.limit.as_ref())?)))
            })
            .collect(),
    }
}

/// One authorization, or `None` when it cannot be used (logged).
fn authorization(port: u16, a: linkerd2_proxy_api::inbound::Authz) -> Option<Authorization> {
    let name = label(&a.labels, "name", "");
    let networks: Vec<_> = a
        .networks
        .into_iter()
        .filter_map(|n| {
            let net = ipnet::IpNet::try_from(n.net?).ok()?;
            let except = n
                .except
                .into_iter()
                .filter_map(|e| ipnet::IpNet::try_from(e).ok())
                .collect();
            Some((net, except))
        })
        .collect();
    let authn = match a.authentication.and_then(|a| a.permit) {
        Some(authn::Permit::Unauthenticated(_)) => Authn::Unauthenticated,
        Some(authn::Permit::MeshTls(m)) => match m.clients {
            Some(authn::permit_mesh_tls::Clients::Unauthenticated(_)) => Authn::AnyTls,
            Some(authn::permit_mesh_tls::Clients::Identities(ids)) => Authn::Identities {
                names: ids.identities.into_iter().map(|i| i.name).collect(),
                suffixes: ids
                    .suffixes
                    .into_iter()
                    .map(|s| {
                        if s.parts.is_empty() {
                            String::new()
                        } else {
                            format!(".{}", s.parts.join("."))
                        }
                    })
                    .collect(),
            },
            None => {
                tracing::warn!(port, authorization = %name, "mesh TLS authorization without clients; dropped");
                return None;
            }
        },
        None => {
            tracing::warn!(port, authorization = %name, "authorization without authentication; dropped");
            return None;
        }
    };
    Some(Authorization {
        networks,
        authn,
        kind: label(&a.labels, "kind", "default"),
        name,
    })
}

/// A route's `route_kind` and `route_name` labels.
fn route_labels(m: Option<&linkerd2_proxy_api::meta::Metadata>) -> (Arc<str>, Arc<str>) {
    use linkerd2_proxy_api::meta::metadata::Kind;
    match m.and_then(|m| m.kind.as_ref()) {
        Some(Kind::Resource(r)) => (r.kind.as_str().into(), r.name.as_str().into()),
        Some(Kind::Default(name)) => ("default".into(), name.as_str().into()),
        None => ("default".into(), "default".into()),
    }
}

/// A route's authorizations: its own, then the server's (linkerd2-proxy
/// extends the server's list with the route's).
fn route_authorizations(
    port: u16,
    own: Vec<linkerd2_proxy_api::inbound::Authz>,
    server: &[Authorization],
) -> Vec<Authorization> {
    own.into_iter()
        .filter_map(|a| authorization(port, a))
        .chain(server.iter().cloned())
        .collect()
}

/// A rule's matches and filters, converted (or why it cannot be used).
type Rule = Result<(Vec<RequestMatch>, Option<Arc<[RouteFilter]>>), String>;

/// A route's rules as inbound routes, one per rule, under the route's
/// labels, hosts and authorizations (its own, then the server's); a rule
/// that cannot be used is skipped, logged: it admits no request, which
/// fails closed.
fn push_rules(
    out: &mut Vec<InboundRoute>,
    port: u16,
    (meta, hosts, own): (Option<&Metadata>, &[HostMatch], Vec<Authz>),
    server: &[Authorization],
    rules: impl Iterator<Item = Rule>,
) {
    let (kind, name) = route_labels(meta);
    let hosts = crate::outbound::hosts(hosts);
    let authorizations = route_authorizations(port, own, server);
    for rule in rules {
        match rule {
            Ok((matches, filters)) => out.push(InboundRoute {
                condition: crate::outbound::condition(hosts.clone(), matches),
                kind: kind.clone(),
                name: name.clone(),
                authorizations: authorizations.clone(),
                filters,
            }),
            Err(why) => tracing::warn!(port, route = %name, why, "inbound route rule skipped"),
        }
    }
}

/// A server's HTTP routes.
fn http_routes(
    port: u16,
    routes: Vec<linkerd2_proxy_api::inbound::HttpRoute>,
    server: &[Authorization],
) -> Vec<InboundRoute> {
    use linkerd2_proxy_api::http_route::HttpRouteMatch;
    use linkerd2_proxy_api::inbound::http_route::filter::Kind as In;
    use linkerd2_proxy_api::outbound::http_route::{filter::Kind as Out, Filter};
    let mut out = Vec::new();
    for r in routes {
        let rules = r.rules.into_iter().map(|rule| -> Rule {
            let matches: Vec<_> = match &rule.matches[..] {
                [] => vec![crate::outbound::http_match(&HttpRouteMatch::default())?],
                ms => ms
                    .iter()
                    .map(crate::outbound::http_match)
                    .collect::<Result<_, _>>()?,
            };
            // The outbound filter type carries the same filters.
            let filters: Vec<Filter> = rule
                .filters
                .into_iter()
                .map(|f| Filter {
                    kind: f.kind.map(|k| match k {
                        In::FailureInjector(f) => Out::FailureInjector(f),
                        In::RequestHeaderModifier(m) => Out::RequestHeaderModifier(m),
                        In::Redirect(r) => Out::Redirect(r),
                    }),
                })
                .collect();
            Ok((matches, crate::route_filter::http(&filters, &rule.matches)?))
        });
        let route = (r.metadata.as_ref(), &r.hosts[..], r.authorizations);
        push_rules(&mut out, port, route, server, rules);
    }
    out
}

/// A gRPC server's routes.
fn grpc_routes(
    port: u16,
    routes: Vec<linkerd2_proxy_api::inbound::GrpcRoute>,
    server: &[Authorization],
) -> Vec<InboundRoute> {
    use linkerd2_proxy_api::inbound::grpc_route::filter::Kind as In;
    use linkerd2_proxy_api::outbound::grpc_route::{filter::Kind as Out, Filter};
    let mut out = Vec::new();
    for r in routes {
        let rules = r.rules.into_iter().map(|rule| -> Rule {
            let matches = rule
                .matches
                .iter()
                .map(crate::outbound::grpc_match)
                .collect::<Result<_, _>>()?;
            let filters: Vec<Filter> = rule
                .filters
                .into_iter()
                .map(|f| Filter {
                    kind: f.kind.map(|k| match k {
                        In::FailureInjector(f) => Out::FailureInjector(f),
                        In::RequestHeaderModifier(m) => Out::RequestHeaderModifier(m),
                    }),
                })
                .collect();
            Ok((matches, crate::route_filter::grpc(&filters)?))
        });
        let route = (r.metadata.as_ref(), &r.hosts[..], r.authorizations);
        push_rules(&mut out, port, route, server, rules);
    }
    out
}

#[cfg(fuzzing)]
pub(crate) mod fuzzing {
    use prost::Message as _;

    pub(crate) fn server(bytes: &[u8]) {
        let Ok(s) = super::Server::decode(bytes) else {
            return;
        };
        let p = std::sync::Arc::new(super::server_policy(8080, s));
        let req = ringmesh_discovery::profile::Req {
            method: "GET",
            path: "/api/v1/x",
            host: Some("web.ns.svc.cluster.local"),
            headers: &[("x-canary", "1")],
        };
        for tls in [
            ringmesh_admin::telemetry::TlsStatus::NO_PROXY_IDENTITY,
            ringmesh_admin::telemetry::TlsStatus::Accepted { client_id: None },
            ringmesh_admin::telemetry::TlsStatus::Accepted {
                client_id: Some("a.ns.serviceaccount.identity.linkerd.cluster.local".into()),
            },
        ] {
            for ip in ["10.0.0.1", "::1"] {
                let v = p.check(ip.parse().unwrap(), &tls);
                // A request judged by its route, and its rate limit.
                let v = v.for_request(&req).unwrap_or(v);
                let _ = v.rate_limited(&tls);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::inbound::{
        authn::permit_mesh_tls, authn::PermitMeshTls, Authn as PAuthn, Authz, IdentitySuffix,
        Network,
    };
    use ringmesh_admin::telemetry::TlsStatus;

    fn net(cidr: &str) -> linkerd2_proxy_api::net::IpNetwork {
        cidr.parse::<ipnet::IpNet>().unwrap().into()
    }

    #[test]
    fn servers_become_policies() {
        let labels = |kind: &str, name: &str| {
            [
                ("kind".to_string(), kind.to_string()),
                ("name".to_string(), name.to_string()),
            ]
            .into()
        };
        let server = Server {
            labels: labels("server", "web-http"),
            authorizations: vec![
                Authz {
                    networks: vec![Network {
                        net: Some(net("10.0.0.0/8")),
                        except: vec![net("10.9.0.0/16")],
                    }],
                    authentication: Some(PAuthn {
                        permit: Some(authn::Permit::MeshTls(PermitMeshTls {
                            clients: Some(permit_mesh_tls::Clients::Identities(
                                permit_mesh_tls::PermitClientIdentities {
                                    identities: vec![],
                                    suffixes: vec![IdentitySuffix {
                                        parts: vec!["ns".into(), "serviceaccount".into()],
                                    }],
                                },
                            )),
                        })),
                    }),
                    labels: labels("authorizationpolicy", "web-authz"),
                    ..Default::default()
                },
                // No authentication: dropped.
                Authz {
                    networks: vec![Network {
                        net: Some(net("0.0.0.0/0")),
                        except: vec![],
                    }],
                    authentication: None,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let p = Arc::new(server_policy(8080, server));
        assert_eq!((&*p.kind, &*p.name), ("server", "web-http"));
        assert_eq!(p.authorizations.len(), 1);
        let meshed = |id: &str| TlsStatus::Accepted {
            client_id: Some(id.into()),
        };
        let v = p.check("10.1.1.1".parse().unwrap(), &meshed("a.ns.serviceaccount"));
        assert!(v.allowed);
        assert_eq!(
            (&*v.authz_kind, &*v.authz_name),
            ("authorizationpolicy", "web-authz")
        );
        assert!(
            !p.check("10.9.1.1".parse().unwrap(), &meshed("a.ns.serviceaccount"))
                .allowed,
            "excepted network"
        );
        assert!(
            !p.check("192.0.2.1".parse().unwrap(), &meshed("a.ns.serviceaccount"))
                .allowed
        );
        assert!(
            !p.check(
                "10.1.1.1".parse().unwrap(),
                &meshed("a.other.serviceaccount")
            )
            .allowed
        );
        assert!(
            !p.check("10.1.1.1".parse().unwrap(), &TlsStatus::NO_PROXY_IDENTITY)
                .allowed
        );
    }

    /// A server's HTTP routes judge each request: the most specific route
    /// that matches, its authorizations then the server's; no route: 404.
    #[test]
    fn routes_judge_each_request() {
        use linkerd2_proxy_api::http_route::{path_match, HttpRouteMatch, PathMatch};
        use linkerd2_proxy_api::inbound::{http_route, proxy_protocol, HttpRoute, ProxyProtocol};
        use linkerd2_proxy_api::meta::{metadata, Metadata, Resource};
        let anyone = Authz {
            networks: vec![Network {
                net: Some(net("0.0.0.0/0")),
                except: vec![],
            }],
            authentication: Some(PAuthn {
                permit: Some(authn::Permit::Unauthenticated(Default::default())),
            }),
            labels: [("name".to_string(), "open".to_string())].into(),
            ..Default::default()
        };
        let route = |name: &str, prefix: &str, authz: Vec<Authz>| HttpRoute {
            metadata: Some(Metadata {
                kind: Some(metadata::Kind::Resource(Resource {
                    kind: "HTTPRoute".into(),
                    name: name.into(),
                    ..Default::default()
                })),
            }),
            authorizations: authz,
            rules: vec![http_route::Rule {
                matches: vec![HttpRouteMatch {
                    path: Some(PathMatch {
                        kind: Some(path_match::Kind::Prefix(prefix.into())),
                    }),
                    ..Default::default()
                }],
                filters: vec![],
            }],
            ..Default::default()
        };
        let server = Server {
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                    http_routes: vec![
                        route("public", "/", vec![anyone]),
                        route("private", "/admin", vec![]),
                    ],
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let p = Arc::new(server_policy(8080, server));
        assert_eq!(p.http_routes.len(), 2);
        let client: std::net::IpAddr = "10.1.1.1".parse().unwrap();
        let conn = p.check(client, &TlsStatus::NO_PROXY_IDENTITY);
        assert!(!conn.allowed, "the server itself admits no one");
        let judge = |path| {
            let req = ringmesh_discovery::profile::Req {
                method: "GET",
                path,
                host: Some("web"),
                headers: &[],
            };
            conn.for_request(&req).expect("judged by route")
        };
        let v = judge("/index.html");
        assert!(v.allowed && !v.no_route);
        assert_eq!(
            (&*v.route_kind, &*v.route_name, &*v.authz_name),
            ("HTTPRoute", "public", "open")
        );
        let v = judge("/admin/x");
        assert!(!v.allowed && !v.no_route, "the longer prefix wins");
        assert_eq!(&*v.route_name, "private");
        // Without routes, the connection's verdict stands.
        let plain = Arc::new(server_policy(8080, Server::default()));
        let req = ringmesh_discovery::profile::Req {
            method: "GET",
            path: "/index.html",
            host: Some("web"),
            headers: &[],
        };
        assert!(plain
            .check(client, &TlsStatus::NO_PROXY_IDENTITY)
            .for_request(&req)
            .is_none());
    }
}
