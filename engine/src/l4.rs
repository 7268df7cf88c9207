//! The opaque TCP paths: where an accepted connection goes, connecting there
//! (balanced, with failover), and relaying bytes.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authz::Verdict;
use monoio::buf::IoBufMut;
use monoio::net::TcpStream;
use ringmesh_admin::telemetry::{AuthzProto, ProxyErrorKind};
use ringmesh_balancer::{Balancer, OpenGuard};
use ringmesh_discovery::profile::QueueSpec;
use ringmesh_discovery::{Authority, Protocol as DiscoveredProtocol, Service};
use ringmesh_protocols::buffer::BufferPool;
use ringmesh_protocols::detect::{is_h2_server_preface, Protocol};
use ringmesh_protocols::tcp::{relay, relay_splice, RelayEnd, SplicePipes};

use monoio::io::{AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use ringmesh_admin::telemetry::{
    relayed, AuthorityLabel, ConnMeter, Direction, DstLabels, NoTlsReason, Peer, PolicyLabels,
    TcpKey, TlsStatus,
};
use ringmesh_identity::tls::TRANSPORT_HEADER_ALPN;
use ringmesh_identity::TlsConfigs;
use ringmesh_protocols::tcp::RelayStats;
use ringmesh_protocols::transport_header::{self, Decoded, SessionProtocol, TransportHeader};

use crate::config::{Config, ConnectConfig, PortSet};
use crate::connect::{dst_labels, open, Endpoint, Session};
use crate::detect::EvictableRead;
use crate::detect::{first_word, is_cancelled, read_and_detect, Detected, FirstWord, Undecided};
use crate::error::ProxyError;
use crate::hello::Peeked;
use crate::orig_dst::orig_dst_addr;
use crate::route::{Dst, HttpDst};
use crate::server_first::Dest;
use crate::transport::{relay_any, Transport};
use crate::undecided::Eviction;
use crate::warn_limit::{warn_limited, Warning};
use crate::worker::{Routes, Worker};
use crate::{http1, http2};

/// What a listener is for.
#[derive(Clone, Debug)]
pub(crate) enum ListenerKind {
    /// Redirected application traffic leaving the pod.
    Outbound,
    /// Redirected traffic arriving for the local application.
    Inbound,
    /// An explicit forward to a fixed destination.
    Forward(Authority),
}

impl ListenerKind {
    fn name(&self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Forward(_) => "forward",
        }
    }

    /// Forwards count as outbound: they leave for another service.
    fn direction(&self) -> Direction {
        match self {
            Self::Inbound => Direction::Inbound,
            Self::Outbound | Self::Forward(_) => Direction::Outbound,
        }
    }

    /// This listener's side of the settings that differ by direction.
    fn settings<'c>(&self, cfg: &'c Config) -> SideSettings<'c> {
        match self.direction() {
            Direction::Inbound => SideSettings {
                opaque_ports: &cfg.inbound.opaque_ports,
                detect_timeout: cfg.inbound.detect_timeout,
                dial: cfg.inbound.connect,
            },
            Direction::Outbound => SideSettings {
                opaque_ports: &cfg.outbound.opaque_ports,
                detect_timeout: cfg.outbound.detect_timeout,
                dial: cfg.outbound.connect,
            },
        }
    }
}

/// The settings an accepted connection reads that differ between inbound
/// and outbound (the configuration keeps them as flat pairs).
#[derive(Clone, Copy)]
struct SideSettings<'c> {
    /// Ports whose connections skip detection.
    opaque_ports: &'c PortSet,
    /// How long the client has to show its protocol.
    detect_timeout: Duration,
    dial: ConnectConfig,
}

/// Where one connection goes.
enum Target {
    /// A discovered service: balance over its endpoints.
    Service(Arc<Service>, Rc<RefCell<Balancer>>),
    /// A plain address.
    Addr(SocketAddr),
    /// Not redirected: only HTTP can say where it goes (its authority).
    ByAuthority,
}

/// Counts the connection as open on its worker for as long as it lives.
struct OpenConn(Rc<Worker>);

impl OpenConn {
    fn new(w: &Rc<Worker>) -> Self {
        w.telemetry.open.set(w.telemetry.open.get() + 1);
        w.telemetry
            .open_peak
            .set(w.telemetry.open_peak.get().max(w.telemetry.open.get()));
        Self(w.clone())
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.telemetry.open.set(self.0.telemetry.open.get() - 1);
    }
}

/// One accepted connection as the steps serving it see it: its worker,
/// listener, addresses and settings (references and copies only).
#[derive(Clone, Copy)]
struct Conn<'a> {
    w: &'a Rc<Worker>,
    kind: &'a ListenerKind,
    peer: SocketAddr,
    local: SocketAddr,
    /// Where the client meant to connect (`SO_ORIGINAL_DST`, else `local`).
    orig: SocketAddr,
    side: SideSettings<'a>,
}

/// The labels every TCP series of one connection shares.
struct ConnLabels {
    direction: Direction,
    authority: Option<AuthorityLabel>,
    dst_labels: Option<DstLabels>,
    /// The service, when its endpoints have labels of their own (the
    /// upstream end's series take its endpoint's).
    per_endpoint: Option<Arc<Service>>,
    /// Inbound: the server of the application's port (the accepted end's
    /// `srv_*` labels).
    server: Option<PolicyLabels>,
}

impl ConnLabels {
    fn new(kind: &ListenerKind, target: &Target) -> Self {
        let (authority, dst_labels, per_endpoint) = match target {
            Target::Service(svc, _) => (
                Some(svc.name.to_shared()),
                dst_labels(svc),
                svc.per_endpoint().then(|| svc.clone()),
            ),
            _ => (None, None, None),
        };
        Self {
            direction: kind.direction(),
            authority,
            dst_labels,
            per_endpoint,
            server: None,
        }
    }

    /// The accepted end's series name the inbound server of `port`.
    async fn with_server(mut self, w: &Worker, port: u16) -> Self {
        let server = inbound_server(w, port).await;
        self.server = Some(w.routes.server_labels(server.as_deref(), port));
        self
    }

    /// Opens the series of one end of the connection, secured as `tls`.
    /// The accepted end's name the connection's target (and inbound, its
    /// server) alone, as linkerd2-proxy's client-side series: the service
    /// and its `dst_*` labels are the endpoint end's, so that sums by
    /// `dst_service` (`linkerd viz stat`'s) count each connection once.
    fn open(&self, w: &Worker, peer: Peer, target: SocketAddr, tls: &TlsStatus) -> ConnMeter {
        let (authority, dst_labels, policy) = match peer {
            Peer::Src => (None, None, self.server.clone()),
            Peer::Dst => {
                let own = self
                    .per_endpoint
                    .as_ref()
                    .and_then(|svc| svc.endpoint(target).and_then(|e| e.labels.clone()));
                (
                    self.authority.clone(),
                    own.or_else(|| self.dst_labels.clone()),
                    None,
                )
            }
        };
        w.telemetry.tcp.borrow_mut().open(TcpKey {
            direction: self.direction,
            peer,
            target,
            tls: tls.clone(),
            authority,
            dst_labels,
            policy,
        })
    }
}

/// The policy API's server of the inbound `port` (`None` without the API).
/// Boxed: the wait's timer would otherwise size every connection's task.
async fn inbound_server(w: &Worker, port: u16) -> Option<Arc<crate::authz::ServerPolicy>> {
    match w.routes.policies {
        Some(_) => Box::pin(w.routes.inbound_server(port)).await,
        None => None,
    }
}

/// Whether the inbound `port` is opaque: its server from the policy API
/// says so; without one, it is listed in
/// `LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION` (as
/// linkerd2-proxy, where the list is only the default policy's).
async fn inbound_opaque(c: &Conn<'_>, port: u16) -> bool {
    match inbound_server(c.w, port).await {
        Some(server) => server.protocol == Some(DiscoveredProtocol::Opaque),
        None => c.side.opaque_ports.contains(port),
    }
}

/// Serves an accepted connection: routes it, decides its protocol, then
/// hands it to an HTTP server or relays it. `local`: the connection's
/// local address when the listener's own says it (not a wildcard).
pub(crate) async fn serve(
    w: Rc<Worker>,
    kind: Rc<ListenerKind>,
    client: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) {
    let open = OpenConn::new(&w);
    // Nagle is off already: the listener's options (`listen`).
    let local = match local.map_or_else(|| client.local_addr(), Ok) {
        Ok(a) => crate::listen::canonical(a),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection gone before it was routed");
            return;
        }
    };
    // Read once: every path routes by it.
    let orig = orig_dst_addr(&client, local).0;
    if matches!(*kind, ListenerKind::Inbound) && !w.cfg.inbound.ips.is_empty() {
        // As linkerd2-proxy: the inbound side serves only the pod's own
        // addresses, or a redirected connection to any address would make
        // it an open relay.
        if !w.cfg.inbound.ips.contains(&orig.ip()) {
            warn_limited!(w, Warning::NotInboundIp, %peer, %orig, "inbound connection to an address not in LINKERD2_PROXY_INBOUND_IPS; closing");
            count_error(&w, Direction::Inbound, orig, ProxyErrorKind::Unexpected);
            return;
        }
    }
    let c = Conn {
        w: &w,
        kind: &kind,
        peer,
        local,
        orig,
        side: kind.settings(&w.cfg),
    };
    // An inbound port marked opaque skips TLS detection too, as
    // linkerd2-proxy's (`port_skipped`): its clients (a server that speaks
    // first among them) are relayed at once. Meshed clients reach the
    // proxy's own port, never redirected.
    let skipped = matches!(*kind, ListenerKind::Inbound)
        && w.pools.tls().is_some()
        && orig != local
        && inbound_opaque(&c, orig.port()).await;
    // How the client's connection is secured (its series' labels).
    let status = match (&*kind, w.pools.tls()) {
        (_, None) => TlsStatus::NO_PROXY_IDENTITY,
        (ListenerKind::Inbound, Some(_)) if skipped => {
            TlsStatus::NoIdentity(NoTlsReason::PortSkipped)
        }
        (ListenerKind::Inbound, Some(cfgs)) => {
            // Mutual TLS for this proxy is terminated here; TLS for
            // another name is relayed as it is.
            let deadline = Instant::now() + c.side.detect_timeout;
            let undecided = w.detection.undecided.enter();
            match crate::hello::peek(&client, Some(&cfgs.name), deadline, &undecided.eviction).await
            {
                Peeked::Mesh => {
                    drop(undecided);
                    Box::pin(serve_meshed(&c, client, &cfgs, open)).await;
                    return;
                }
                Peeked::OtherTls(Some(sni)) => TlsStatus::Opaque { sni: sni.into() },
                Peeked::OtherTls(None) | Peeked::Plain => {
                    TlsStatus::NoIdentity(NoTlsReason::NoTlsFromRemote)
                }
                Peeked::Gone => {
                    tracing::debug!(%peer, "client gone before its first bytes said what they are");
                    return;
                }
                Peeked::TimedOut => {
                    warn_limited!(w, Warning::TlsHandshake, %peer, timeout = ?c.side.detect_timeout, "no whole ClientHello (or no first bytes) within the detect timeout; closing");
                    count_error(
                        &w,
                        Direction::Inbound,
                        orig,
                        ProxyErrorKind::TlsDetectTimeout,
                    );
                    return;
                }
            }
        }
        // The application's own connections, on this host.
        (_, Some(_)) => TlsStatus::NoIdentity(NoTlsReason::Loopback),
    };
    // An address the control plane knows of (its networks), as the
    // original destination or a forward's target: asked about and waited
    // for (bounded) the first time.
    let known_addr = match &*kind {
        _ if !w.routes.discovers() => None,
        ListenerKind::Outbound if orig != local => Some(orig),
        ListenerKind::Forward(name) => name.socket_addr(),
        _ => None,
    };
    if let Some(addr) = known_addr.filter(|a| w.routes.must_discover(*a)) {
        crate::route::await_addr(&w.routes, addr).await;
    }
    let Some(mut route) = route(&w, &kind, orig, local, peer) else {
        return;
    };
    let mut labels = ConnLabels::new(&kind, &route.target);
    if let HttpDst::Local(target, _) = &route.http {
        // The port's server: its labels, and it may name the port's
        // protocol (no detection).
        let server = inbound_server(&w, target.port()).await;
        labels.server = Some(w.routes.server_labels(server.as_deref(), target.port()));
        if let Some(p) = server.and_then(|s| s.protocol) {
            route.hint = Some(p);
        }
    }
    // From here on the connection is a transport.
    let mut client = Transport::plain_as(client, status);
    let src_meter = labels.open(&w, Peer::Src, route.addr, client.tls());
    let Some(decided) = decide_protocol(&c, &mut client, &route).await else {
        return;
    };
    serve_decided(&c, client, route, labels, src_meter, decided, open).await;
}

/// Serves a connection once its destination and protocol are known.
async fn serve_decided(
    c: &Conn<'_>,
    client: Transport,
    route: Route,
    labels: ConnLabels,
    src_meter: ConnMeter,
    mut decided: Decided,
    open: OpenConn,
) {
    let (w, peer) = (c.w, c.peer);
    let dial = c.side.dial;
    let mut route = route;
    // Inbound: who may reach the application, decided once for the
    // connection (HTTP requests are answered 403 one by one; an opaque
    // connection is closed).
    if let HttpDst::Local(target, verdict) = &mut route.http {
        **verdict = if w.routes.policies.is_some() {
            // Boxed: the wait's timer would otherwise size every
            // connection's task.
            Box::pin(w.routes.authorize(target.port(), peer.ip(), client.tls())).await
        } else {
            w.routes
                .policy
                .check(target.port(), peer.ip(), client.tls())
        };
        // The `deny` default policy judges connections, whatever their
        // protocol (linkerd2-proxy takes it as an opaque server with no
        // authorization: no 403, the connection is closed).
        if matches!(decided.protocol, Protocol::Tls | Protocol::Opaque) || verdict.denies_all() {
            let key = crate::authz::key(AuthzProto::Tcp, *target, verdict, client.tls());
            w.telemetry.authz.borrow_mut().record(&key);
            if verdict.is_audit() {
                crate::warn_limit::info_limited!(w, Warning::Audit, client = %peer, %target, tls = ?client.tls(), "Connection allowed by the audit policy");
            }
            if !verdict.allowed {
                warn_limited!(w, Warning::Unauthorized, %peer, target = %target, policy = &*verdict.srv_name, "inbound connection denied by policy; closing");
                // Counted in the authorization families alone (not an
                // error family), as linkerd2-proxy.
                return;
            }
        }
    }
    match decided.protocol {
        Protocol::Http1 => {
            close_early(c, &labels, decided.early.take());
            let Decided {
                prefix,
                head_started,
                ..
            } = decided;
            let http = route.http;
            // Its own task (taking the open-connection count with it): this
            // one, sized for detection and the relay, ends here, so a
            // long-lived keep-alive connection costs only the HTTP/1 task.
            let w = w.clone();
            monoio::spawn(async move {
                let _open = open;
                http1::serve(w, client, prefix, head_started, peer, http, dial, src_meter).await;
            });
        }
        Protocol::Http2 => {
            close_early(c, &labels, decided.early.take());
            Box::pin(http2::serve(
                w.clone(),
                client,
                decided.prefix,
                peer,
                route.http,
                dial,
                src_meter,
            ))
            .await;
        }
        Protocol::Tls | Protocol::Opaque => {
            let dst = route.addr;
            let target = match route.opaque {
                OpaqueChoice::Target => Ok(route.target),
                choice => Box::pin(opaque_target(c, &client, &decided.prefix, choice)).await,
            };
            let target = match target {
                Ok(t) => t,
                Err(why) => {
                    tracing::info!(%peer, %dst, reason = &*why, "opaque connection refused by its outbound policy; closing");
                    close_early(c, &labels, decided.early.take());
                    w.pools.bufs.put(decided.prefix);
                    return;
                }
            };
            // Inbound, judged by the policy API's server: closed if an
            // update stops admitting it.
            let revocable = match &route.http {
                HttpDst::Local(t, v) if v.may_change() => Some((*t, (**v).clone())),
                _ => None,
            };
            relay_opaque(c, client, &target, &labels, src_meter, decided, revocable).await;
        }
    }
}

/// Mutual TLS for this proxy: the handshake (within the handshake
/// timeout), then Linkerd's transport header when the client negotiated
/// ALPN `transport.l5d.io/v1` (the port it names on the address the
/// connection arrived on, and the protocol, no detection), else the
/// connection's original destination with the protocol detected inside.
async fn serve_meshed(c: &Conn<'_>, tcp: TcpStream, cfgs: &TlsConfigs, open: OpenConn) {
    let (w, peer) = (c.w, c.peer);
    let timeout = w
        .cfg
        .identity
        .local()
        .map_or(Duration::from_secs(10), |l| l.handshake_timeout);
    let orig = c.orig;
    let accepted = monoio::time::timeout(
        timeout,
        Transport::tls_accept(tcp, cfgs.server.clone(), &[]),
    )
    .await;
    let mut client = match accepted {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            warn_limited!(w, Warning::TlsHandshake, %peer, error = %e, "inbound TLS handshake failed; closing");
            count_error(w, Direction::Inbound, orig, ProxyErrorKind::Io);
            return;
        }
        Err(_) => {
            warn_limited!(w, Warning::TlsHandshake, %peer, ?timeout, "inbound TLS handshake timed out; closing");
            count_error(
                w,
                Direction::Inbound,
                orig,
                ProxyErrorKind::TlsDetectTimeout,
            );
            return;
        }
    };
    let deadline = Instant::now() + c.side.detect_timeout;
    let header = client.alpn().as_deref() == Some(TRANSPORT_HEADER_ALPN);
    let mut prefix = w.pools.bufs.get();
    let (target, protocol, head_started) = if header {
        let undecided = w.detection.undecided.enter();
        let (res, buf) =
            read_transport_header(&mut client, prefix, deadline, &undecided.eviction).await;
        prefix = buf;
        match res {
            Ok(h) if !h.name.is_empty() => {
                // A name asks for a gateway: the service it names, not a
                // local port.
                let protocol = session_protocol(h.protocol);
                Box::pin(serve_gateway(c, client, &h, protocol, prefix, open)).await;
                return;
            }
            Ok(h) => {
                let target = SocketAddr::new(c.local.ip(), h.port);
                (target, session_protocol(h.protocol), None)
            }
            Err(e) => {
                warn_limited!(w, Warning::TlsHandshake, %peer, error = %e, "bad transport header; closing");
                count_error(w, Direction::Inbound, orig, ProxyErrorKind::Io);
                w.pools.bufs.put(prefix);
                return;
            }
        }
    } else {
        let target = if orig != c.local {
            orig
        } else if let Some(t) = w.cfg.inbound.target {
            t
        } else {
            crate::warn_limit::info_limited!(w, crate::warn_limit::Warning::NotRedirected, %peer, local = %c.local, "meshed connection without a transport header was not redirected and RINGMESH_INBOUND_TARGET is unset; closing");
            w.pools.bufs.put(prefix);
            return;
        };
        let undecided = w.detection.undecided.enter();
        let header_timeout = w.cfg.http.header_read_timeout;
        let (res, buf) = read_and_detect(
            &mut client,
            prefix,
            None,
            deadline,
            header_timeout,
            &undecided.eviction,
        )
        .await;
        prefix = buf;
        match res {
            Ok(Some(found)) => {
                let p = match found.protocol {
                    Protocol::Tls => Protocol::Opaque,
                    p => p,
                };
                (target, p, found.first_byte)
            }
            Ok(None) | Err(_) => {
                tracing::debug!(%peer, "meshed client sent nothing usable; closing");
                w.pools.bufs.put(prefix);
                return;
            }
        }
    };
    if w.routes.is_own_listener(target) {
        warn_limited!(w, Warning::Loop, listener = c.kind.name(), %peer, dst = %target, "destination is one of ringmesh's own listeners; refusing the loop");
        count_error(w, Direction::Inbound, orig, ProxyErrorKind::Unexpected);
        w.pools.bufs.put(prefix);
        return;
    }
    let route = Route {
        opaque: OpaqueChoice::Target,
        target: Target::Addr(target),
        addr: target,
        port: target.port(),
        hint: None,
        http: HttpDst::Local(target, Box::new(Verdict::unchecked())),
    };
    let labels = ConnLabels::new(c.kind, &route.target)
        .with_server(w, target.port())
        .await;
    let src_meter = labels.open(w, Peer::Src, target, client.tls());
    let decided = Decided {
        protocol,
        prefix,
        head_started,
        early: None,
    };
    serve_decided(c, client, route, labels, src_meter, decided, open).await;
}

/// The protocol a transport header says its session speaks (none: opaque).
fn session_protocol(p: Option<SessionProtocol>) -> Protocol {
    match p {
        Some(SessionProtocol::Http1) => Protocol::Http1,
        Some(SessionProtocol::Http2) => Protocol::Http2,
        None => Protocol::Opaque,
    }
}

/// A multicluster gateway's connection (linkerd2-proxy's, with
/// `LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES`): a meshed client's transport
/// header names a service under one of the suffixes, and the connection
/// goes there as an outbound one would (discovery, balancing, mutual TLS
/// to its endpoints, the outbound connect settings), its HTTP requests
/// routed to that service. Refused (closed): a name under no suffix (or no
/// gateway configured), a client without an identity, a client that is
/// this proxy (a loop), a name nothing resolves.
async fn serve_gateway(
    c: &Conn<'_>,
    client: Transport,
    h: &TransportHeader,
    protocol: Protocol,
    prefix: Vec<u8>,
    open: OpenConn,
) {
    let (w, peer) = (c.w, c.peer);
    let (name, target) = match gateway_target(w, client.tls(), h).await {
        Ok(found) => found,
        Err((kind, why)) => {
            warn_limited!(w, Warning::TlsHandshake, %peer, name = %h.name, port = h.port, "gateway connection refused: {why}; closing");
            count_error(w, Direction::Inbound, c.orig, kind);
            w.pools.bufs.put(prefix);
            return;
        }
    };
    // The outbound side's settings: the connection leaves this pod.
    let gateway = Conn {
        w: c.w,
        kind: c.kind,
        peer,
        local: c.local,
        orig: c.orig,
        side: SideSettings {
            opaque_ports: &w.cfg.outbound.opaque_ports,
            detect_timeout: w.cfg.outbound.detect_timeout,
            dial: w.cfg.outbound.connect,
        },
    };
    let route = Route {
        opaque: OpaqueChoice::Target,
        target,
        addr: c.local,
        port: h.port,
        hint: None,
        http: HttpDst::Forward(name),
    };
    let labels = ConnLabels::new(c.kind, &route.target);
    let src_meter = labels.open(w, Peer::Src, c.local, client.tls());
    let decided = Decided {
        protocol,
        prefix,
        head_started: None,
        early: None,
    };
    serve_decided(&gateway, client, route, labels, src_meter, decided, open).await;
}

/// Where a gateway connection goes, or why it is refused.
async fn gateway_target(
    w: &Worker,
    tls: &TlsStatus,
    h: &TransportHeader,
) -> Result<(Authority, Target), (ProxyErrorKind, String)> {
    use ProxyErrorKind::{GatewayDomainInvalid, GatewayIdentityRequired, GatewayLoop};
    if !w.cfg.inbound.gateway_for(&h.name) {
        return Err((GatewayDomainInvalid, "not a gateway for this name".into()));
    }
    let TlsStatus::Accepted {
        client_id: Some(client_id),
    } = tls
    else {
        return Err((
            GatewayIdentityRequired,
            "the client proved no identity".into(),
        ));
    };
    if w.cfg.identity.local().map(|l| l.name.as_str()) == Some(&**client_id) {
        return Err((GatewayLoop, "the client is this gateway (a loop)".into()));
    }
    let Ok(name) = Authority::parse(&format!("{}:{}", h.name, h.port)) else {
        return Err((GatewayDomainInvalid, "not a valid name".into()));
    };
    let link_local = |a: SocketAddr| {
        is_link_local(a.ip()).then(|| {
            (
                ProxyErrorKind::Unexpected,
                format!("{a} is link-local (a gateway forwards off its host only)"),
            )
        })
    };
    match crate::route::service_named(&w.routes, &name).await {
        Ok(Dst::Service(svc, balancer)) => {
            match svc.endpoints.iter().find_map(|e| link_local(e.addr)) {
                Some(why) => Err(why),
                None => Ok((name, Target::Service(svc, balancer))),
            }
        }
        Ok(Dst::Addr(a)) => match link_local(a) {
            Some(why) => Err(why),
            None => Ok((name, Target::Addr(a))),
        },
        Err(e) => Err((ProxyErrorKind::FailFast, e.reason().to_string())),
    }
}

/// Link-local addresses (169.254.0.0/16, fe80::/10): a cloud's metadata
/// service lives there, and a gateway's remote clients have no business on
/// its link.
fn is_link_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Reads Linkerd's transport header (bounded in size, and by `deadline`);
/// what follows it stays in the buffer.
async fn read_transport_header(
    client: &mut Transport,
    mut buf: Vec<u8>,
    deadline: Instant,
    eviction: &Eviction,
) -> (io::Result<TransportHeader>, Vec<u8>) {
    loop {
        match transport_header::decode(&buf) {
            Ok(Decoded::Done(h, n)) => {
                buf.drain(..n);
                return (Ok(h), buf);
            }
            Ok(Decoded::Incomplete(_)) => {}
            Err(e) => return (Err(io::Error::new(io::ErrorKind::InvalidData, e)), buf),
        }
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        // After what is already there: a header may come in several reads.
        let len = buf.len();
        let (read, b) = client
            .read_or_evict(buf.slice_mut(len..), deadline, eviction)
            .await;
        buf = b.into_inner();
        match read {
            None | Some(Err(_)) if Instant::now() >= deadline => {
                let e = io::Error::new(io::ErrorKind::TimedOut, "no transport header in time");
                return (Err(e), buf);
            }
            None => {
                let e = io::Error::other("evicted while waiting for the transport header");
                return (Err(e), buf);
            }
            Some(Ok(0)) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the transport header",
                );
                return (Err(e), buf);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return (Err(e), buf),
        }
    }
}

/// What detection decided for a connection, and what it read.
struct Decided {
    protocol: Protocol,
    /// The client's bytes read so far (a buffer from the worker's pool).
    prefix: Vec<u8>,
    /// When an HTTP/1 request head began arriving.
    head_started: Option<Instant>,
    /// An upstream connection opened while detecting.
    early: Option<Early>,
}

/// Decides what the connection speaks, or logs why it is closed (`None`).
///
/// Opaque ports (or discovery saying so) skip detection, and so do
/// destinations seen speaking first. Otherwise, when the destination is
/// known, an upstream connection is opened while waiting for the client
/// (after a short grace, so HTTP clients, which speak at once, rarely cost
/// one): whichever side speaks first decides.
async fn decide_protocol(c: &Conn<'_>, client: &mut Transport, route: &Route) -> Option<Decided> {
    let w = c.w;
    let mut prefix = w.pools.bufs.get();
    let dest = match &route.target {
        Target::Addr(a) => Some(Dest::Addr(*a)),
        Target::Service(svc, _) => Some(Dest::Service(svc.name.clone())),
        Target::ByAuthority => None,
    };
    let speaks_first = dest.as_ref().is_some_and(|d| {
        w.detection
            .server_first
            .borrow_mut()
            .contains_at(d, Instant::now())
    });
    let mut head_started = None;
    let mut early: Option<Early> = None;
    let protocol = match route.hint {
        Some(DiscoveredProtocol::Opaque) => Protocol::Opaque,
        None if c.side.opaque_ports.contains(route.port) => Protocol::Opaque,
        None if speaks_first => {
            tracing::debug!(listener = c.kind.name(), peer = %c.peer, "destination speaks first; relaying without detection");
            w.telemetry
                .server_first_relays
                .set(w.telemetry.server_first_relays.get() + 1);
            Protocol::Opaque
        }
        _ => {
            let undecided = w.detection.undecided.enter();
            // (Not to an opaque route's backend still to be resolved, or
            // for a connection the route refuses.)
            let early_target = (route.hint.is_none()
                && matches!(route.opaque, OpaqueChoice::Target))
            .then_some(&route.target);
            let (res, buf) = match client.plain_mut() {
                Some(tcp) => {
                    detect_protocol(
                        c,
                        tcp,
                        prefix,
                        early_target,
                        &undecided.eviction,
                        &mut early,
                    )
                    .await
                }
                // Behind TLS: the client speaks first (no early connect).
                None => {
                    let deadline = Instant::now() + c.side.detect_timeout;
                    let header_timeout = c.w.cfg.http.header_read_timeout;
                    read_and_detect(
                        client,
                        prefix,
                        None,
                        deadline,
                        header_timeout,
                        &undecided.eviction,
                    )
                    .await
                }
            };
            prefix = buf;
            match res {
                Ok(Some(found)) => {
                    head_started = found.first_byte;
                    verdict(c, &found, route.hint, dest, &early)
                }
                Ok(None) => {
                    tracing::debug!(listener = c.kind.name(), peer = %c.peer, "closing an undecided connection (evicted, or idle on both sides)");
                    w.pools.bufs.put(prefix);
                    return None;
                }
                Err(e) => {
                    tracing::debug!(listener = c.kind.name(), peer = %c.peer, error = %e, "client failed during detection");
                    w.pools.bufs.put(prefix);
                    return None;
                }
            }
        }
    };
    tracing::debug!(listener = c.kind.name(), peer = %c.peer, ?protocol, "protocol");
    Some(Decided {
        protocol,
        prefix,
        head_started,
        early,
    })
}

/// What a detection result means for the connection. A server that spoke
/// first makes it a relay (and is remembered for `dest`). Otherwise an HTTP
/// hint says what the destination speaks; the client's own protocol is
/// still detected (HTTP clients speak first, so this costs no wait) so that
/// HTTP/2 clients of an HTTP/1 service get translated. What detection
/// cannot tell is taken to be the hinted protocol.
fn verdict(
    c: &Conn<'_>,
    found: &Detected,
    hint: Option<DiscoveredProtocol>,
    dest: Option<Dest>,
    early: &Option<Early>,
) -> Protocol {
    let fallback = match hint {
        Some(DiscoveredProtocol::Http1) => Protocol::Http1,
        Some(DiscoveredProtocol::Http2) => Protocol::Http2,
        _ => Protocol::Opaque,
    };
    let p = found.protocol;
    if let Some(why) = found.undecided {
        tracing::debug!(listener = c.kind.name(), peer = %c.peer, ?why, verdict = ?p, fallback = ?fallback, "no protocol detected");
    }
    if let Some(early) = early.as_ref().filter(|e| e.spoke_first()) {
        if let Some(d) = dest.filter(|_| !early.answered_as_http()) {
            c.w.detection
                .server_first
                .borrow_mut()
                .remember_at(d, Instant::now());
        }
        c.w.telemetry
            .server_first_relays
            .set(c.w.telemetry.server_first_relays.get() + 1);
        tracing::debug!(listener = c.kind.name(), peer = %c.peer, "server spoke first; relaying");
        Protocol::Opaque
    } else if p == Protocol::Http1 {
        // Begins as HTTP/1 (even if it stalled): the HTTP/1 server
        // validates it.
        p
    } else if found.undecided.is_some()
        || (hint.is_some() && matches!(p, Protocol::Opaque | Protocol::Tls))
    {
        fallback
    } else {
        p
    }
}

/// The HTTP servers connect per request (pooled): an upstream connection
/// opened while detecting is closed, counted as opened and closed.
fn close_early(c: &Conn<'_>, labels: &ConnLabels, early: Option<Early>) {
    if let Some(e) = early {
        let _meter = labels.open(c.w, Peer::Dst, e.addr, e.server.tls());
        c.w.pools.bufs.put(e.banner);
    }
}

/// Relays an opaque (or TLS) connection: to the upstream connection opened
/// while detecting, or to one opened now.
async fn relay_opaque(
    c: &Conn<'_>,
    mut client: Transport,
    target: &Target,
    labels: &ConnLabels,
    src_meter: ConnMeter,
    decided: Decided,
    revocable: Option<(SocketAddr, Verdict)>,
) {
    let (w, peer) = (c.w, c.peer);
    let Decided {
        protocol,
        prefix,
        early,
        ..
    } = decided;
    if matches!(target, Target::ByAuthority) {
        crate::warn_limit::info_limited!(w, crate::warn_limit::Warning::NotRedirected, %peer, local = %c.local, ?protocol, "outbound connection was not redirected and is not HTTP/1; closing");
        w.pools.bufs.put(prefix);
        return;
    }
    let (server, addr, guard, banner) = match early {
        Some(e) => (e.server, e.addr, e.guard, e.banner),
        None => match connect_target(
            &w.routes,
            match target {
                // Boxed, and only then: its timer would size every relay.
                Target::Service(svc, _) if svc.endpoints.is_empty() => {
                    Box::pin(with_endpoints(w, target)).await
                }
                _ => None,
            }
            .as_ref()
            .unwrap_or(target),
            w.pools.tls().as_deref(),
            &w.cfg.inbound.ips,
            c.side.dial,
        )
        .await
        {
            Ok((s, a, g)) => (s, a, g, w.pools.bufs.get()),
            Err(failure) => {
                warn_limited!(w, Warning::ConnectFailed, listener = c.kind.name(), %peer, "{failure}; closing the client connection");
                count_error(w, c.kind.direction(), c.orig, failure.kind());
                w.pools.bufs.put(prefix);
                return;
            }
        },
    };
    let dst_meter = labels.open(w, Peer::Dst, addr, server.tls());
    let banner_len = banner.len() as u64;
    if !send_banner(&w.pools.bufs, &mut client, banner, peer, &src_meter).await {
        w.pools.bufs.put(prefix);
        return;
    }
    let tls = client.tls().clone();
    let relay = relay_bytes(w, client, server, prefix, &guard);
    let stats = match revocable {
        None => relay.await,
        // (Boxed, and only then: the check's timer would size every
        // relay.)
        Some((app, verdict)) => {
            let revoked = Box::pin(revoked(w, app, verdict));
            monoio::select! {
                stats = relay => stats,
                denied = revoked => {
                    // The relay, dropped, closes both connections.
                    let key = crate::authz::key(AuthzProto::TcpTerminated, app, &denied, &tls);
                    w.telemetry.authz.borrow_mut().record(&key);
                    warn_limited!(w, Warning::Unauthorized, %peer, target = %app, policy = &*denied.srv_name, "open inbound connection no longer authorized by policy; closing");
                    return;
                }
            }
        }
    };
    let stats = RelayStats {
        server_to_client: stats.server_to_client + banner_len,
        ..stats
    };
    relayed(&src_meter, &dst_meter, &stats);
    match stats.end {
        RelayEnd::Closed => {}
        RelayEnd::Idle => tracing::debug!(%peer, "idle timeout"),
        end => tracing::debug!(%peer, ?end, "relay ended with an error"),
    }
    tracing::trace!(%peer, up = stats.client_to_server, down = stats.server_to_client, "connection closed");
}

/// How often an open inbound opaque connection is judged again by its
/// port's server (a policy update that no longer admits it closes it
/// within this).
const REVALIDATE_EVERY: Duration = Duration::from_secs(1);

/// Ends (with the denial) when the port's server, changed by a policy
/// update, no longer admits the connection `verdict` admitted.
async fn revoked(w: &Worker, app: SocketAddr, mut verdict: Verdict) -> Verdict {
    loop {
        monoio::time::sleep(REVALIDATE_EVERY).await;
        if let Some(v) = w.routes.revalidated(app.port(), &verdict) {
            if !v.allowed {
                return v;
            }
            verdict = v;
        }
    }
}

/// For a service with no endpoint, the same service once it has one: the
/// connection waits in the service's queue for up to the outbound TCP
/// fail-fast timeout, as linkerd2-proxy's does. `None`: `target` as it is
/// (no service, or no endpoint appeared: its connect then fails).
async fn with_endpoints(w: &Worker, target: &Target) -> Option<Target> {
    let Target::Service(svc, _) = target else {
        return None;
    };
    let queue = QueueSpec {
        capacity: w.cfg.outbound.tcp_queue_capacity,
        failfast: w.cfg.outbound.tcp_failfast_timeout,
    };
    let (svc, balancer) = crate::route::await_service(&w.routes, &svc.name, queue).await?;
    Some(Target::Service(svc, balancer))
}

/// What a server that spoke first said goes to the client before the relay
/// starts. Returns the buffer to the pool; `false`: the client is gone.
async fn send_banner(
    bufs: &BufferPool,
    client: &mut Transport,
    banner: Vec<u8>,
    peer: SocketAddr,
    src_meter: &ConnMeter,
) -> bool {
    let banner = if banner.is_empty() {
        banner
    } else {
        let (res, banner) = client.write_all(banner).await;
        if let Err(e) = res {
            tracing::debug!(%peer, error = %e, "client gone before the server's first bytes reached it");
            src_meter.failed(&e);
            bufs.put(banner);
            return false;
        }
        banner
    };
    bufs.put(banner);
    true
}

/// Relays both ways until the connection ends (with splice(2) when
/// configured and possible, else copying), `prefix` first to the server.
async fn relay_bytes(
    w: &Worker,
    client: Transport,
    server: Transport,
    prefix: Vec<u8>,
    guard: &Option<OpenGuard>,
) -> RelayStats {
    let (client, server) = match (client.into_plain(), server.into_plain()) {
        (Ok(c), Ok(s)) => (c, s),
        // TLS on a side: the copying relay over the session(s).
        (c, s) => {
            let plain = |tcp| Transport::plain(tcp, NoTlsReason::NoProxyIdentity);
            let (c, s) = (c.map_or_else(|t| t, plain), s.map_or_else(|t| t, plain));
            return Box::pin(relay_tls(w, c, s, prefix)).await;
        }
    };
    let pipes = if w.cfg.tcp.splice {
        SplicePipes::new()
            .map_err(|e| tracing::warn!(error = %e, "cannot create splice pipes; copying instead"))
            .ok()
    } else {
        None
    };
    // The endpoint's first answer teaches the balancer its latency.
    let learn = |latency: Duration| {
        if let Some(g) = guard {
            crate::feedback::first_answer(g.endpoint(), latency);
        }
    };
    match pipes {
        Some(pipes) => {
            let (stats, prefix) = Box::pin(relay_splice(
                client,
                server,
                pipes,
                prefix,
                w.cfg.tcp.idle_timeout,
                &learn,
            ))
            .await;
            w.pools.bufs.put(prefix);
            stats
        }
        None => {
            let bufs = (prefix, w.pools.bufs.get());
            let (stats, bufs) = Box::pin(relay(
                client,
                server,
                bufs,
                w.cfg.tcp.idle_timeout,
                w.cfg.tcp.bulk_buffer_size,
                &learn,
                &w.telemetry.relay_counters,
            ))
            .await;
            w.pools.bufs.put(bufs.0);
            w.pools.bufs.put(bufs.1);
            stats
        }
    }
}

/// Relays when a side's bytes come through TLS (no splice or multishot
/// receive: they read the socket itself).
async fn relay_tls(
    w: &Worker,
    client: Transport,
    server: Transport,
    prefix: Vec<u8>,
) -> RelayStats {
    let fds = [client.raw_fd(), server.raw_fd()];
    let (mut crd, mut cwr) = client.split();
    let (mut srd, mut swr) = server.split();
    let (stats, bufs) = relay_any(
        (&mut crd, &mut cwr),
        (&mut srd, &mut swr),
        (prefix, w.pools.bufs.get()),
        w.cfg.tcp.idle_timeout,
        fds,
    )
    .await;
    w.pools.bufs.put(bufs.0);
    w.pools.bufs.put(bufs.1);
    stats
}

/// Where a connection goes, the port that decides whether it is opaque,
/// and what discovery says it speaks.
struct Route {
    /// Where it is relayed when opaque (and connected to early while its
    /// protocol is detected), unless `opaque` says otherwise.
    target: Target,
    /// An outbound policy's opaque route's say, when it was not already
    /// folded into `target`.
    opaque: OpaqueChoice,
    /// Where the client was going: its original destination, or the
    /// listener's address when it was not redirected.
    addr: SocketAddr,
    port: u16,
    hint: Option<DiscoveredProtocol>,
    /// How HTTP requests on this connection are routed.
    http: HttpDst,
}

/// What an outbound policy's opaque route chose for a connection, beyond
/// a target already resolved.
enum OpaqueChoice {
    /// `target` (the route chose nothing else, or a backend resolved now).
    Target,
    /// The route refuses the connection (a filter, or no backend).
    Refused(Arc<str>),
    /// A backend the snapshot does not have yet: watched and waited for
    /// when the connection turns out opaque.
    Pending(Authority),
    /// A TLS target's routes: by the SNI of the client's ClientHello.
    BySni(Arc<ringmesh_discovery::Profile>),
}

/// Where an opaque connection goes when its outbound policy's route said
/// more than a target (`OpaqueChoice`), or why it goes nowhere.
async fn opaque_target(
    c: &Conn<'_>,
    client: &Transport,
    prefix: &[u8],
    choice: OpaqueChoice,
) -> Result<Target, Arc<str>> {
    let w = c.w;
    let name = match choice {
        OpaqueChoice::Target => unreachable!("resolved by the caller"),
        OpaqueChoice::Refused(why) => return Err(why),
        OpaqueChoice::Pending(name) => name,
        OpaqueChoice::BySni(profile) => {
            // The ClientHello: read by detection already, or peeked (left
            // for the server) within the detection timeout.
            let sni = match client.plain_socket() {
                _ if !prefix.is_empty() => match ringmesh_protocols::client_hello::parse(prefix) {
                    ringmesh_protocols::client_hello::Hello::Complete { sni } => sni,
                    _ => None,
                },
                Some(tcp) => {
                    let undecided = w.detection.undecided.enter();
                    let deadline = Instant::now() + c.side.detect_timeout;
                    match crate::hello::peek(tcp, None, deadline, &undecided.eviction).await {
                        crate::hello::Peeked::OtherTls(sni) => sni,
                        crate::hello::Peeked::Gone | crate::hello::Peeked::TimedOut => {
                            return Err(Arc::from("no ClientHello"))
                        }
                        _ => None,
                    }
                }
                None => None,
            };
            let Some(route) = profile.tls_route(sni.as_deref()) else {
                return Err(Arc::from(format!("no TLS route for SNI {sni:?}")));
            };
            let name = route.pick(fastrand::f64()).map_err(Arc::from)?;
            if let Some(t) = backend_target(w, &w.routes.snapshot(), name) {
                return Ok(t);
            }
            name.clone()
        }
    };
    match crate::route::service_named(&w.routes, &name).await {
        Ok(Dst::Service(svc, balancer)) => Ok(Target::Service(svc, balancer)),
        Ok(Dst::Addr(a)) => Ok(Target::Addr(a)),
        Err(e) => Err(Arc::from(format!(
            "the route's backend {name} is not resolved: {}",
            e.reason()
        ))),
    }
}

/// The backend `name` of an opaque route as a target now: a service in
/// the snapshot, or an address (forwarded to, or balanced when discovery
/// knows it); `None` when the name must be watched first.
fn backend_target(
    w: &Worker,
    snap: &ringmesh_discovery::Snapshot,
    name: &Authority,
) -> Option<Target> {
    if let Some(svc) = snap.service(name) {
        return Some(Target::Service(svc.clone(), w.routes.balancer(svc)));
    }
    let addr = name.socket_addr()?;
    Some(match snap.service_by_addr(addr) {
        Some(svc) => Target::Service(svc.clone(), w.routes.balancer(svc)),
        None => Target::Addr(addr),
    })
}

/// Decides where a connection goes, or logs why it goes nowhere.
fn route(
    w: &Worker,
    kind: &ListenerKind,
    orig: SocketAddr,
    local: SocketAddr,
    peer: SocketAddr,
) -> Option<Route> {
    let snap = w.routes.snapshot();
    let mut hint = None;
    let http;
    // An outbound policy's opaque route, or TLS routes, for an address it
    // covers.
    let mut opaque_route = None;
    let mut tls_profile = None;
    let target = match kind {
        ListenerKind::Outbound => {
            if orig == local {
                // An explicit-proxy client: HTTP routes by authority.
                return Some(Route {
                    opaque: OpaqueChoice::Target,
                    target: Target::ByAuthority,
                    addr: local,
                    port: local.port(),
                    hint: None,
                    http: HttpDst::ByAuthority,
                });
            }
            http = HttpDst::OrigDst(orig);
            // An outbound policy may say the target is opaque.
            if let Some(p) = snap.profile_by_addr(orig) {
                if p.opaque {
                    hint = Some(DiscoveredProtocol::Opaque);
                }
                opaque_route = p.opaque_route.clone();
                if !p.tls_routes.is_empty() {
                    tls_profile = Some(p.clone());
                }
                // Its watch stays while connections use it.
                w.routes.used_addrs.borrow_mut().insert(orig);
            }
            match snap.service_by_addr(orig) {
                Some(svc) => {
                    hint = hint.or(svc.protocol);
                    Target::Service(svc.clone(), w.routes.balancer(svc))
                }
                None => Target::Addr(orig),
            }
        }
        ListenerKind::Inbound => {
            if orig != local {
                http = HttpDst::Local(orig, Box::new(Verdict::unchecked()));
                Target::Addr(orig)
            } else if let Some(t) = w.cfg.inbound.target {
                http = HttpDst::Local(t, Box::new(Verdict::unchecked()));
                Target::Addr(t)
            } else {
                crate::warn_limit::info_limited!(w, crate::warn_limit::Warning::NotRedirected, %peer, %local, "inbound connection was not redirected and RINGMESH_INBOUND_TARGET is unset; closing");
                return None;
            }
        }
        ListenerKind::Forward(name) => {
            http = HttpDst::Forward(name.clone());
            // A forward to an address an outbound policy covers: its
            // opaque route, as for a redirected connection.
            if let Some(p) = name.socket_addr().and_then(|a| snap.profile_by_addr(a)) {
                if p.opaque {
                    hint = Some(DiscoveredProtocol::Opaque);
                }
                opaque_route = p.opaque_route.clone();
                if !p.tls_routes.is_empty() {
                    tls_profile = Some(p.clone());
                }
            }
            match snap.service(name) {
                Some(svc) => {
                    hint = svc.protocol;
                    Target::Service(svc.clone(), w.routes.balancer(svc))
                }
                None => match name.socket_addr() {
                    Some(addr) => match snap.service_by_addr(addr) {
                        Some(svc) => {
                            hint = svc.protocol;
                            Target::Service(svc.clone(), w.routes.balancer(svc))
                        }
                        None => Target::Addr(addr),
                    },
                    None => {
                        warn_limited!(w, Warning::ForwardUnresolved, %peer, service = %name, "forward target is not resolved (yet); closing");
                        count_error(w, kind.direction(), orig, ProxyErrorKind::FailFast);
                        return None;
                    }
                },
            }
        }
    };
    // The logical destination's port decides opacity (the original
    // destination, or the forward's target), as linkerd2-proxy does.
    let port = match (&target, kind) {
        (_, ListenerKind::Forward(name)) => name.port(),
        (Target::Addr(a), _) => a.port(),
        (Target::Service(svc, _), _) => svc.name.port(),
        (Target::ByAuthority, _) => local.port(),
    };
    // The opaque route's backend, drawn now (per connection).
    let mut opaque = OpaqueChoice::Target;
    let mut target = target;
    if let Some(p) = tls_profile {
        opaque = OpaqueChoice::BySni(p);
    } else if let Some(r) = opaque_route {
        match r.pick(fastrand::f64()) {
            Err(why) => opaque = OpaqueChoice::Refused(Arc::from(why)),
            Ok(name) => match backend_target(w, &snap, name) {
                Some(t) => target = t,
                None => opaque = OpaqueChoice::Pending(name.clone()),
            },
        }
    }
    if let Target::Addr(addr) = target {
        if w.routes.is_own_listener(addr) || addr == local {
            warn_limited!(w, Warning::Loop, listener = kind.name(), %peer, dst = %addr, "destination is one of ringmesh's own listeners; refusing the loop");
            count_error(w, kind.direction(), orig, ProxyErrorKind::Unexpected);
            return None;
        }
    }
    Some(Route {
        target,
        opaque,
        addr: orig,
        port,
        hint,
        http,
    })
}

#[derive(Debug)]
struct ConnectFailure {
    tried: usize,
    last: Option<ProxyError>,
}

impl ConnectFailure {
    /// Its `*_tcp_errors_total` kind: no endpoint to try is a fail-fast,
    /// endpoints that failed an I/O error.
    fn kind(&self) -> ProxyErrorKind {
        match &self.last {
            None => ProxyErrorKind::FailFast,
            Some(e) => ProxyErrorKind::of_http(Direction::Outbound, e.label())
                .unwrap_or(ProxyErrorKind::Unexpected),
        }
    }
}

/// Counts a connection to `target` (its original destination) the proxy
/// could not serve, in `inbound_tcp_errors_total` or
/// `outbound_tcp_errors_total`.
fn count_error(w: &Worker, direction: Direction, target: SocketAddr, kind: ProxyErrorKind) {
    w.telemetry.errors.borrow_mut().tcp(direction, target, kind);
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.last {
            None => f.write_str("service has no endpoints"),
            Some(e) => write!(f, "all {} endpoints failed (last error: {e})", self.tried),
        }
    }
}

/// Picks endpoints (P2C) until one accepts the connection; each endpoint is
/// tried at most once per client connection.
async fn connect_balanced(
    routes: &Routes,
    (svc, balancer): (&Service, &RefCell<Balancer>),
    tls: Option<&TlsConfigs>,
    dial: ConnectConfig,
) -> Result<(Transport, SocketAddr, OpenGuard), ConnectFailure> {
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last = None;
    loop {
        let Some(ep) = balancer.borrow().pick_untried(&tried) else {
            break;
        };
        let addr = ep.addr();
        // Counted as open while connecting, so concurrent picks see the load.
        let guard = OpenGuard::new(ep);
        let started = Instant::now();
        let endpoint = Endpoint::in_service(svc, addr);
        match open(&endpoint, &routes.own_listeners, tls, Session::Opaque, dial).await {
            Ok(s) => {
                crate::feedback::connected(guard.endpoint(), started.elapsed());
                return Ok((s, addr, guard));
            }
            Err(e) if e.proxy_exhausted() => {
                tried.push(addr);
                last = Some(e);
                break;
            }
            Err(e) => {
                crate::feedback::connect_failed(guard.endpoint(), started.elapsed());
                tracing::debug!(endpoint = %addr, error = %e, "endpoint connect failed; trying another");
                tried.push(addr);
                last = Some(e);
            }
        }
    }
    Err(ConnectFailure {
        tried: tried.len(),
        last,
    })
}

/// Connects to where an opaque connection goes: balanced with failover for
/// a service, else the address.
async fn connect_target(
    routes: &Routes,
    target: &Target,
    tls: Option<&TlsConfigs>,
    local_ips: &[IpAddr],
    dial: ConnectConfig,
) -> Result<(Transport, SocketAddr, Option<OpenGuard>), TargetFailure> {
    let failed = |kind, why| TargetFailure { kind, why };
    match target {
        Target::Addr(addr) => {
            match open(
                &Endpoint::forward(*addr, local_ips),
                &routes.own_listeners,
                tls,
                Session::Opaque,
                dial,
            )
            .await
            {
                Ok(s) => Ok((s, *addr, None)),
                Err(e) => Err(failed(
                    ProxyErrorKind::of_http(Direction::Outbound, e.label())
                        .unwrap_or(ProxyErrorKind::Unexpected),
                    format!("cannot connect to {addr}: {e}"),
                )),
            }
        }
        Target::ByAuthority => Err(failed(ProxyErrorKind::Unexpected, "no destination".into())),
        Target::Service(svc, balancer) => {
            match connect_balanced(routes, (svc, balancer), tls, dial).await {
                Ok((s, a, g)) => Ok((s, a, Some(g))),
                Err(failure) => Err(failed(
                    failure.kind(),
                    format!("service {}: {failure}", svc.name),
                )),
            }
        }
    }
}

/// Why [`connect_target`] found no connection: its `*_tcp_errors_total`
/// kind, and what the log says.
#[derive(Debug)]
struct TargetFailure {
    kind: ProxyErrorKind,
    why: String,
}

impl TargetFailure {
    fn kind(&self) -> ProxyErrorKind {
        self.kind
    }
}

impl std::fmt::Display for TargetFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// An upstream connection opened while detecting, and what its server
/// sent before the client spoke (empty when it did not).
struct Early {
    server: Transport,
    /// The endpoint it went to.
    addr: SocketAddr,
    guard: Option<OpenGuard>,
    banner: Vec<u8>,
}

impl Early {
    /// Whether its server sent bytes before the client that make it a
    /// server-speaks-first protocol (anything but an HTTP/2 server's
    /// connection preface, which HTTP/2 servers send without waiting).
    fn spoke_first(&self) -> bool {
        !self.banner.is_empty() && !is_h2_server_preface(&self.banner)
    }

    /// Whether what it sent is an HTTP/1 response: an HTTP server's answer
    /// to a client that said nothing in time (a 408 from Apache's
    /// `RequestReadTimeout`, Envoy's or HAProxy's request timeout), not a
    /// server-speaks-first protocol. Relayed to this client, but not
    /// remembered for the destination.
    fn answered_as_http(&self) -> bool {
        let n = self.banner.len().min(5);
        self.banner[..n] == b"HTTP/"[..n]
    }
}

/// How long a client may take to send its first bytes before the upstream
/// connection is opened in parallel (HTTP clients write at once after
/// connecting; server-first protocols then still see their first bytes
/// relayed in well under 100 ms).
const EARLY_CONNECT_GRACE: Duration = Duration::from_millis(20);

/// Detects the client's protocol. With `early_target`, an upstream
/// connection is opened after [`EARLY_CONNECT_GRACE`] if the client has
/// not spoken, left in `early`; if its server speaks before the client,
/// its bytes are in `early`'s banner and detection stops (no verdict from
/// the client's bytes is needed: the connection is relayed). A connection
/// where neither side speaks stays undecided up to the TCP idle timeout
/// (bounded by the per-worker cap, `eviction`). `Ok(None)`: close it.
async fn detect_protocol(
    c: &Conn<'_>,
    client: &mut TcpStream,
    prefix: Vec<u8>,
    early_target: Option<&Target>,
    eviction: &Eviction,
    early: &mut Option<Early>,
) -> (std::io::Result<Option<Detected>>, Vec<u8>) {
    let deadline = Instant::now() + c.side.detect_timeout;
    let header_timeout = c.w.cfg.http.header_read_timeout;
    let Some(target) = early_target.filter(|t| !matches!(t, Target::ByAuthority)) else {
        return read_and_detect(client, prefix, None, deadline, header_timeout, eviction).await;
    };
    // 1. The client's first bytes, or an upstream connection, whichever
    //    comes first.
    let tls = c.w.pools.tls();
    let tls = tls.as_deref();
    let (first, prefix, read_res) = read_or_connect(
        client,
        prefix,
        (&c.w.routes, target, tls, &c.w.cfg.inbound.ips),
        c.side.dial,
        deadline,
        eviction,
    )
    .await;
    let client_bytes = match read_res {
        Ok(0) => None,
        Ok(_) => Some(Instant::now()),
        Err(ref e) if is_cancelled(e) => None,
        Err(e) => return (Err(e), prefix),
    };
    let client_eof = matches!(read_res, Ok(0));
    match first {
        First::Stopped { evicted: true } => return (Ok(None), prefix),
        First::Connected(Ok((server, addr, guard))) => {
            *early = Some(Early {
                server,
                addr,
                guard,
                banner: c.w.pools.bufs.get(),
            });
        }
        First::Connected(Err(failure)) => {
            tracing::debug!("{failure} (connecting while detecting)");
        }
        First::Read | First::Stopped { evicted: false } => {}
    }
    if client_eof {
        let found = Detected {
            protocol: Protocol::Opaque,
            undecided: Some(Undecided::Eof),
            first_byte: None,
        };
        return (Ok(Some(found)), prefix);
    }
    // 2. Connected and the client still silent: whoever speaks first.
    if client_bytes.is_none() {
        if let Some(e) = early.as_mut() {
            return first_to_speak(client, prefix, e, deadline, header_timeout, eviction).await;
        }
    }
    read_and_detect(
        client,
        prefix,
        client_bytes,
        deadline,
        header_timeout,
        eviction,
    )
    .await
}

/// What ended the wait for a client's first bytes.
enum First {
    Read,
    Connected(Result<(Transport, SocketAddr, Option<OpenGuard>), TargetFailure>),
    Stopped { evicted: bool },
}

/// Reads the client's first bytes into `prefix` while connecting to
/// `target` (after [`EARLY_CONNECT_GRACE`]), until either finishes, the
/// deadline passes or the connection is evicted; a read still pending then
/// is cancelled and its result returned with the winner.
async fn read_or_connect(
    client: &mut TcpStream,
    prefix: Vec<u8>,
    (routes, target, tls, local_ips): (&Routes, &Target, Option<&TlsConfigs>, &[IpAddr]),
    dial: ConnectConfig,
    deadline: Instant,
    eviction: &Eviction,
) -> (First, Vec<u8>, io::Result<usize>) {
    let canceller = Canceller::new();
    let mut read = std::pin::pin!(client.cancelable_read(prefix, canceller.handle()));
    let mut connecting = std::pin::pin!(async {
        monoio::time::sleep(EARLY_CONNECT_GRACE).await;
        connect_target(routes, target, tls, local_ips, dial).await
    });
    let wait = deadline.saturating_duration_since(Instant::now());
    let won = monoio::select! {
        r = read.as_mut() => Ok(r),
        c = connecting.as_mut() => Err(First::Connected(c)),
        _ = monoio::time::sleep(wait) => Err(First::Stopped { evicted: false }),
        _ = eviction.wait() => Err(First::Stopped { evicted: true }),
    };
    match won {
        Ok((res, buf)) => (First::Read, buf, res),
        Err(other) => {
            let _ = canceller.cancel();
            let (res, buf) = read.as_mut().await;
            (other, buf, res)
        }
    }
}

/// Connected early and the client still silent: waits for whichever side
/// speaks first. The server: relayed (its bytes in `early`'s banner),
/// unless what it sent is an HTTP/2 server's SETTINGS (the client is then
/// waited for and detected, the SETTINGS kept in case it is relayed). The
/// client: detected. Neither by the detect timeout: nothing tells what this
/// is, and both connections are closed (a silent flood holds backend
/// connections for that long at most).
async fn first_to_speak(
    client: &mut TcpStream,
    prefix: Vec<u8>,
    early: &mut Early,
    deadline: Instant,
    header_timeout: Duration,
    eviction: &Eviction,
) -> (std::io::Result<Option<Detected>>, Vec<u8>) {
    // A server behind TLS is not waited for: what speaks first is told on
    // plain connections only.
    let Some(server) = early.server.plain_mut() else {
        return read_and_detect(client, prefix, None, deadline, header_timeout, eviction).await;
    };
    let banner = std::mem::take(&mut early.banner);
    let (word, prefix, banner) =
        first_word(client, prefix, server, banner, deadline, eviction).await;
    early.banner = banner;
    let found = |undecided| {
        Ok(Some(Detected {
            protocol: Protocol::Opaque,
            undecided,
            first_byte: None,
        }))
    };
    match word {
        // An HTTP/2 server's SETTINGS: it did not wait for the client, but
        // the client still decides the protocol.
        Ok(FirstWord::Server) if !early.spoke_first() => {
            read_and_detect(client, prefix, None, deadline, header_timeout, eviction).await
        }
        Ok(FirstWord::Server) => (found(None), prefix),
        Ok(FirstWord::Closed) => (found(Some(Undecided::Eof)), prefix),
        Ok(FirstWord::Silent | FirstWord::Evicted) => (Ok(None), prefix),
        Ok(FirstWord::Client) => {
            read_and_detect(
                client,
                prefix,
                Some(Instant::now()),
                deadline,
                header_timeout,
                eviction,
            )
            .await
        }
        Err(err) => (Err(err), prefix),
    }
}
