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
//!   any mesh TLS, or identities by name and suffix), its HTTP and gRPC
//!   routes (each with its authorizations and filters), its local rate
//!   limit, and the server's, routes' and authorizations' metadata
//!   (`group`/`kind`/`name`, the metrics' labels). Published to the
//!   workers as [`InboundPolicies`] through the lock-free channel.
//! - A `Server` linkerd2-proxy would reject (no protocol, no `name`
//!   label, a detect without a timeout, an authorization without networks
//!   or authentication or with a network that does not parse, a route
//!   that cannot be used) becomes, as there, the `invalid` server, which
//!   admits no one: never a server that admits more than was meant.
//! - A port whose stream failed before any answer, or has not answered
//!   within [`POLICY_WAIT`], is published as "use the default
//!   policy" (`None`), so connections do not wait on it; the workers judge
//!   the connections admitted so anew when the answer comes.
//!
//! Workers decide per connection ([`crate::authz`]): a port with a server
//! is judged by its authorizations, else by the default policy.
//!
//! The server's protocol applies too: `opaque` (and `tls`) ports are
//! relayed without detection, `http1`/`http2`/`grpc` ports are taken as
//! that protocol.

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

/// How long a connection to a port waits for the policy API's first
/// answer about it (after as long, the control core publishes the port
/// as "the default policy, until the answer comes": later connections do
/// not wait).
pub(crate) const POLICY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

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
        let what = format!("inbound port {port}");
        let watch = stream::follow(
            &self.client,
            WATCH_PORT_PATH,
            req,
            self.limits,
            &self.counters,
            &what,
            |server: Server, _fresh| {
                let policy = match server_policy(server) {
                    Ok(policy) => {
                        tracing::debug!(port, server = %policy.name, authorizations = policy.authorizations.len(), "inbound policy");
                        Arc::new(policy)
                    }
                    Err(why) => {
                        tracing::warn!(port, why, "invalid inbound server from the policy API; no client is admitted to the port");
                        ServerPolicy::invalid()
                    }
                };
                answered.set(true);
                self.publish(port, Some(policy));
            },
            |_| {
                if !answered.get() {
                    // The default policy, so connections do not wait.
                    answered.set(true);
                    self.publish(port, None);
                }
                true
            },
        );
        // A stream held open without an answer: after as long as a
        // connection waits for it, the default policy applies (judged anew
        // when the answer comes), so later connections do not wait too.
        let unanswered = async {
            monoio::time::sleep(POLICY_WAIT).await;
            if !answered.get() {
                answered.set(true);
                tracing::info!(port, "no inbound policy from the policy API yet; the default policy applies until it comes");
                self.publish(port, None);
            }
            std::future::pending::<()>().await;
        };
        monoio::select! {
            () = watch => {}
            () = unanswered => {}
        }
    }

    fn publish(&self, port: u16, server: Option<Arc<ServerPolicy>>) {
        let mut publisher = self.publisher.borrow_mut();
        let mut ports = publisher.current().ports.clone();
        ports.insert(port, server);
        let full = publisher.current().full;
        publisher.publish(InboundPolicies { ports, full });
    }
}

/// Metadata (`group`, `kind`, `name`) as shared strings.
type Meta = (Arc<str>, Arc<str>, Arc<str>);

/// A server's or authorization's metadata from its labels, as
/// linkerd2-proxy reads them: `name` is required; `group` defaults to
/// `policy.linkerd.io` and `kind` to `default_kind`; an empty group with
/// kind `default`, or (without a kind) a name `default:x`, is a default
/// (empty group).
fn labels_meta(labels: &HashMap<String, String>, default_kind: &str) -> Result<Meta, String> {
    let name = labels.get("name").ok_or("missing 'name' label")?;
    let group = labels
        .get("group")
        .map_or("policy.linkerd.io", String::as_str);
    let default = |name: &str| -> Meta { ("".into(), "default".into(), name.into()) };
    if let Some(kind) = labels.get("kind") {
        if group.is_empty() && kind == "default" {
            return Ok(default(name));
        }
        return Ok((group.into(), kind.as_str().into(), name.as_str().into()));
    }
    Ok(match name.split_once(':') {
        Some(("default", name)) => default(name),
        Some((kind, name)) => (group.into(), kind.into(), name.into()),
        None => (group.into(), default_kind.into(), name.as_str().into()),
    })
}

/// A route's or authorization's `Metadata`.
fn metadata_meta(m: &Metadata) -> Result<Meta, String> {
    use linkerd2_proxy_api::meta::metadata::Kind;
    match m.kind.as_ref().ok_or("missing metadata")? {
        Kind::Resource(r) => Ok((
            r.group.as_str().into(),
            r.kind.as_str().into(),
            r.name.as_str().into(),
        )),
        Kind::Default(name) => Ok(("".into(), "default".into(), name.as_str().into())),
    }
}

/// The workers' form of a `Server`, or why linkerd2-proxy would reject it
/// (then no client is admitted to the port: [`ServerPolicy::invalid`]).
fn server_policy(s: Server) -> Result<ServerPolicy, String> {
    let authorizations: Vec<Authorization> = s
        .authorizations
        .into_iter()
        .map(authorization)
        .collect::<Result<_, _>>()?;
    use linkerd2_proxy_api::inbound::proxy_protocol::Kind;
    let kind = s
        .protocol
        .and_then(|p| p.kind)
        .ok_or("missing proxy protocol")?;
    let protocol = match &kind {
        Kind::Opaque(_) | Kind::Tls(_) => Some(Protocol::Opaque),
        Kind::Http1(_) => Some(Protocol::Http1),
        Kind::Http2(_) | Kind::Grpc(_) => Some(Protocol::Http2),
        Kind::Detect(d) => {
            let t = d
                .timeout
                .as_ref()
                .ok_or("missing protocol detection timeout")?;
            if t.seconds < 0 || t.nanos < 0 {
                return Err("invalid protocol detection timeout".into());
            }
            None
        }
    };
    let rate_limit = match &kind {
        Kind::Detect(d) => d.http_local_rate_limit.as_ref(),
        Kind::Http1(h) => h.local_rate_limit.as_ref(),
        Kind::Http2(h) => h.local_rate_limit.as_ref(),
        _ => None,
    }
    .map(rate_limit)
    .filter(|l| !l.is_empty())
    .map(Arc::new);
    let http_routes = match kind {
        Kind::Detect(d) => http_routes(d.http_routes, &authorizations)?,
        Kind::Http1(h) => http_routes(h.routes, &authorizations)?,
        Kind::Http2(h) => http_routes(h.routes, &authorizations)?,
        Kind::Grpc(g) => grpc_routes(g.routes, &authorizations)?,
        _ => Vec::new(),
    };
    let (group, kind, name) =
        labels_meta(&s.labels, "server").map_err(|e| format!("server: {e}"))?;
    Ok(ServerPolicy {
        group,
        kind,
        name,
        authorizations,
        protocol,
        http_routes,
        rate_limit,
    })
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

/// One authorization, or why linkerd2-proxy would reject it: no network,
/// a network or exception that does not parse, no authentication.
fn authorization(a: Authz) -> Result<Authorization, String> {
    let bad = |why: &str| format!("authorization {:?}: {why}", a.labels.get("name"));
    if a.networks.is_empty() {
        return Err(bad("missing networks"));
    }
    let mut networks = Vec::with_capacity(a.networks.len());
    for n in &a.networks {
        let net = n.net.ok_or_else(|| bad("missing network"))?;
        let net = ipnet::IpNet::try_from(net).map_err(|_| bad("invalid network"))?;
        let except = n
            .except
            .iter()
            .map(|e| ipnet::IpNet::try_from(*e).map_err(|_| bad("invalid network exception")))
            .collect::<Result<_, _>>()?;
        networks.push((net, except));
    }
    let authn = match a.authentication.as_ref().and_then(|a| a.permit.as_ref()) {
        Some(authn::Permit::Unauthenticated(_)) => Authn::Unauthenticated,
        Some(authn::Permit::MeshTls(m)) => match &m.clients {
            Some(authn::permit_mesh_tls::Clients::Unauthenticated(_)) => Authn::AnyTls,
            Some(authn::permit_mesh_tls::Clients::Identities(ids)) => Authn::Identities {
                names: ids.identities.iter().map(|i| i.name.clone()).collect(),
                suffixes: ids
                    .suffixes
                    .iter()
                    .map(|s| {
                        if s.parts.is_empty() {
                            String::new()
                        } else {
                            format!(".{}", s.parts.join("."))
                        }
                    })
                    .collect(),
            },
            None => return Err(bad("missing authentications")),
        },
        None => return Err(bad("missing authentications")),
    };
    // The metadata when it has one, else the labels.
    let meta = match &a.metadata {
        Some(m) => metadata_meta(m),
        None => labels_meta(&a.labels, "serverauthorization"),
    };
    let (group, kind, name) = meta.map_err(|e| bad(&e))?;
    Ok(Authorization {
        networks,
        authn,
        group,
        kind,
        name,
    })
}

/// A route's authorizations: its own, then the server's (linkerd2-proxy
/// extends the server's list with the route's).
fn route_authorizations(
    own: Vec<Authz>,
    server: &[Authorization],
) -> Result<Vec<Authorization>, String> {
    own.into_iter()
        .map(authorization)
        .chain(server.iter().cloned().map(Ok))
        .collect()
}

/// A rule's matches and filters, converted (or why it cannot be used).
type Rule = Result<(Vec<RequestMatch>, Option<Arc<[RouteFilter]>>), String>;

/// A route's rules as inbound routes, one per rule, under the route's
/// metadata, hosts and authorizations (its own, then the server's); or
/// why the route cannot be used (as linkerd2-proxy, the whole server is
/// then invalid: a rule left out would let its requests fall to a
/// broader route).
fn push_rules(
    out: &mut Vec<InboundRoute>,
    (meta, hosts, own): (Option<&Metadata>, &[HostMatch], Vec<Authz>),
    server: &[Authorization],
    rules: impl Iterator<Item = Rule>,
) -> Result<(), String> {
    let (group, kind, name) =
        metadata_meta(meta.ok_or("route: missing metadata")?).map_err(|e| format!("route: {e}"))?;
    let hosts = crate::outbound::hosts(hosts).map_err(|e| format!("route {name:?}: {e}"))?;
    let authorizations = route_authorizations(own, server)?;
    for rule in rules {
        let (matches, filters) = rule.map_err(|why| format!("route {name:?}: {why}"))?;
        out.push(InboundRoute {
            condition: crate::outbound::condition(hosts.clone(), matches),
            group: group.clone(),
            kind: kind.clone(),
            name: name.clone(),
            authorizations: authorizations.clone(),
            filters,
        });
    }
    Ok(())
}

/// A server's HTTP routes.
fn http_routes(
    routes: Vec<linkerd2_proxy_api::inbound::HttpRoute>,
    server: &[Authorization],
) -> Result<Vec<InboundRoute>, String> {
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
        push_rules(&mut out, route, server, rules)?;
    }
    Ok(out)
}

/// A gRPC server's routes.
fn grpc_routes(
    routes: Vec<linkerd2_proxy_api::inbound::GrpcRoute>,
    server: &[Authorization],
) -> Result<Vec<InboundRoute>, String> {
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
        push_rules(&mut out, route, server, rules)?;
    }
    Ok(out)
}

#[cfg(fuzzing)]
pub(crate) mod fuzzing {
    use prost::Message as _;

    pub(crate) fn server(bytes: &[u8]) {
        let Ok(s) = super::Server::decode(bytes) else {
            return;
        };
        let Ok(p) = super::server_policy(s) else {
            return;
        };
        let p = std::sync::Arc::new(p);
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

    fn labels(kind: &str, name: &str) -> HashMap<String, String> {
        [
            ("kind".to_string(), kind.to_string()),
            ("name".to_string(), name.to_string()),
        ]
        .into()
    }

    /// Protocol detection, with the timeout linkerd2-proxy requires.
    fn detect(
        http_routes: Vec<linkerd2_proxy_api::inbound::HttpRoute>,
    ) -> Option<linkerd2_proxy_api::inbound::ProxyProtocol> {
        use linkerd2_proxy_api::inbound::{proxy_protocol, ProxyProtocol};
        Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                http_routes,
                ..Default::default()
            })),
        })
    }

    fn unauthenticated(nets: &[&str]) -> Authz {
        Authz {
            networks: nets
                .iter()
                .map(|n| Network {
                    net: Some(net(n)),
                    except: vec![],
                })
                .collect(),
            authentication: Some(PAuthn {
                permit: Some(authn::Permit::Unauthenticated(Default::default())),
            }),
            labels: labels("authorizationpolicy", "open"),
            ..Default::default()
        }
    }

    #[test]
    fn servers_become_policies() {
        let server = Server {
            protocol: detect(vec![]),
            labels: labels("server", "web-http"),
            authorizations: vec![Authz {
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
            }],
            ..Default::default()
        };
        let p = Arc::new(server_policy(server).unwrap());
        assert_eq!(
            (&*p.group, &*p.kind, &*p.name),
            ("policy.linkerd.io", "server", "web-http")
        );
        assert_eq!(p.authorizations.len(), 1);
        let meshed = |id: &str| TlsStatus::Accepted {
            client_id: Some(id.into()),
        };
        let v = p.check("10.1.1.1".parse().unwrap(), &meshed("a.ns.serviceaccount"));
        assert!(v.allowed);
        assert_eq!(
            (&*v.authz_group, &*v.authz_kind, &*v.authz_name),
            ("policy.linkerd.io", "authorizationpolicy", "web-authz")
        );
        assert_eq!(&*v.srv_group, "policy.linkerd.io");
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
        use linkerd2_proxy_api::inbound::{http_route, HttpRoute};
        use linkerd2_proxy_api::meta::{metadata, Metadata, Resource};
        let anyone = unauthenticated(&["0.0.0.0/0"]);
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
            protocol: detect(vec![
                route("public", "/", vec![anyone]),
                route("private", "/admin", vec![]),
            ]),
            labels: labels("server", "web"),
            ..Default::default()
        };
        let p = Arc::new(server_policy(server).unwrap());
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
        let plain = Server {
            protocol: detect(vec![]),
            labels: labels("server", "plain"),
            ..Default::default()
        };
        let plain = Arc::new(server_policy(plain).unwrap());
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

    /// What linkerd2-proxy rejects is rejected (the port's server is then
    /// the `invalid` one, which admits no one), never read as a server
    /// that admits more: a bad exception, a bad or missing network, no
    /// authentication, no protocol, a detect without a timeout, no name,
    /// a route without metadata.
    #[test]
    fn invalid_servers_are_rejected() {
        use linkerd2_proxy_api::inbound::{proxy_protocol, HttpRoute, ProxyProtocol};
        let valid = || Server {
            protocol: detect(vec![]),
            labels: labels("server", "web"),
            authorizations: vec![unauthenticated(&["0.0.0.0/0"])],
            ..Default::default()
        };
        assert!(server_policy(valid()).is_ok());
        let mut bad_except = valid();
        let mut except = net("10.0.0.0/8");
        except.prefix_len = 77;
        bad_except.authorizations[0].networks[0].except.push(except);
        let mut bad_net = valid();
        bad_net.authorizations[0].networks[0]
            .net
            .as_mut()
            .unwrap()
            .prefix_len = 40;
        let mut no_net = valid();
        no_net.authorizations[0].networks[0].net = None;
        let mut no_networks = valid();
        no_networks.authorizations[0].networks.clear();
        let mut no_authn = valid();
        no_authn.authorizations[0].authentication = None;
        let mut no_protocol = valid();
        no_protocol.protocol = None;
        let mut no_timeout = valid();
        no_timeout.protocol = Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(Default::default())),
        });
        let mut no_name = valid();
        no_name.labels.remove("name");
        let mut route_without_metadata = valid();
        route_without_metadata.protocol = detect(vec![HttpRoute::default()]);
        for (what, server) in [
            ("bad exception", bad_except),
            ("bad network", bad_net),
            ("no network", no_net),
            ("no networks", no_networks),
            ("no authentication", no_authn),
            ("no protocol", no_protocol),
            ("no detect timeout", no_timeout),
            ("no name", no_name),
            ("route without metadata", route_without_metadata),
        ] {
            assert!(server_policy(server).is_err(), "{what}");
        }
        let invalid = ServerPolicy::invalid();
        let v = invalid.check("127.0.0.5".parse().unwrap(), &TlsStatus::NO_PROXY_IDENTITY);
        assert!(!v.allowed);
        assert_eq!((&*v.srv_kind, &*v.srv_name), ("default", "invalid"));
    }

    /// Metadata from labels, as linkerd2-proxy reads it.
    #[test]
    fn labels_give_group_kind_and_name() {
        let m = |pairs: &[(&str, &str)]| {
            let l: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels_meta(&l, "server").map(|(g, k, n)| (g.to_string(), k.to_string(), n.to_string()))
        };
        let t = |g: &str, k: &str, n: &str| Ok((g.to_string(), k.to_string(), n.to_string()));
        assert_eq!(
            m(&[
                ("group", ""),
                ("kind", "default"),
                ("name", "all-unauthenticated")
            ]),
            t("", "default", "all-unauthenticated")
        );
        assert_eq!(
            m(&[("kind", "server"), ("name", "web")]),
            t("policy.linkerd.io", "server", "web")
        );
        assert_eq!(
            m(&[("name", "web")]),
            t("policy.linkerd.io", "server", "web")
        );
        assert_eq!(m(&[("name", "default:deny")]), t("", "default", "deny"));
        assert_eq!(
            m(&[("name", "server:web")]),
            t("policy.linkerd.io", "server", "web")
        );
        assert!(m(&[("kind", "server")]).is_err());
    }
}
