//! The upstream connector: connecting (with a timeout), TLS when the
//! endpoint has an identity and this proxy has one of its own, and the
//! labels a new upstream connection is counted under.
//!
//! An [`Endpoint`] is what the pools key connections by: an address and
//! the identity its server must prove. Two endpoints at one address with
//! different identities never share a connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use ringmesh_admin::telemetry::{
    ConnMeter, DstLabels, HttpKey, NoTlsReason, Peer, TcpKey, TcpShard,
};
use ringmesh_discovery::snapshot::H2Params;
use ringmesh_discovery::Service;
use ringmesh_identity::tls::TRANSPORT_HEADER_ALPN;
use ringmesh_identity::{Name, TlsConfigs};
use ringmesh_protocols::transport_header::{SessionProtocol, TransportHeader};

use crate::config::ConnectConfig;
use crate::error::ProxyError;
use crate::listen::OwnListener;
use crate::transport::Transport;

/// Where an upstream connection goes. Compared and hashed by address,
/// identity and transport port only: `h2` shapes new connections, not
/// which pooled one a request may take.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// The identity the endpoint's certificate must name: mutual TLS when
    /// set (and this proxy has an identity), plain TCP when not. From the
    /// static file's `identity` (the Destination API's `tls_identity`
    /// next).
    pub(crate) identity: Option<Name>,
    /// The endpoint's proxy takes meshed connections on this port, each
    /// opened with Linkerd's transport header naming `addr`'s port (the
    /// static file's `opaque_transport_port`). Only with an identity.
    pub(crate) opaque_transport: Option<u16>,
    /// The endpoint's HTTP/2 client settings (the Destination API's),
    /// for new HTTP/2 connections to it.
    pub(crate) h2: Option<Arc<H2Params>>,
    /// The pod itself (one of `LINKERD2_PROXY_INBOUND_IPS`): reached
    /// plainly, its connections labelled `no_tls_reason="loopback"`.
    pub(crate) local: bool,
    /// A multicluster gateway's target: the Destination API's
    /// `authority_override` of a meshed endpoint. Its connections offer
    /// ALPN `transport.l5d.io/v1` and start with a transport header naming
    /// it (host and port), so the gateway can route them.
    pub(crate) gateway: Option<Arc<str>>,
    /// Discovery's metric labels of this endpoint (its set's and its
    /// own), when it has its own: its connections' `peer="dst"` series
    /// carry them, as its requests' do. Not part of the pool's key.
    pub(crate) labels: Option<DstLabels>,
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        (
            self.addr,
            &self.identity,
            self.opaque_transport,
            &self.gateway,
        ) == (
            other.addr,
            &other.identity,
            other.opaque_transport,
            &other.gateway,
        )
    }
}

impl Eq for Endpoint {}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            self.addr,
            &self.identity,
            self.opaque_transport,
            &self.gateway,
        )
            .hash(state);
    }
}

impl Endpoint {
    /// An endpoint without an identity (plain TCP).
    pub(crate) fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            opaque_transport: None,
            h2: None,
            local: false,
            gateway: None,
            labels: None,
        }
    }

    /// A connection's or request's own destination, found by no
    /// discovery: plain, and local when it is one of the pod's
    /// addresses (`inbound_ips`).
    pub(crate) fn forward(addr: SocketAddr, inbound_ips: &[IpAddr]) -> Self {
        Self {
            local: inbound_ips.contains(&addr.ip()),
            ..Self::plain(addr)
        }
    }

    /// `svc`'s endpoint at `addr`: with the identity and transport port
    /// discovery gave it (plain when it has none, or is gone).
    pub(crate) fn in_service(svc: &Service, addr: SocketAddr) -> Self {
        match svc.endpoints.iter().find(|e| e.addr == addr) {
            Some(ep) => Self {
                addr,
                identity: ep.identity.clone(),
                opaque_transport: ep.opaque_transport_port.filter(|_| ep.identity.is_some()),
                h2: ep.h2_params.clone(),
                local: ep.local,
                gateway: ep
                    .authority_override
                    .clone()
                    .filter(|_| ep.identity.is_some()),
                labels: ep.labels.clone(),
            },
            None => Self::plain(addr),
        }
    }
}

/// What a new upstream connection will carry (the transport header's
/// session protocol, when it has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Session {
    Http1,
    Http2,
    Opaque,
}

/// Discovery's metric labels for `svc`, if it has any.
pub(crate) fn dst_labels(svc: &Service) -> Option<DstLabels> {
    (!svc.labels.is_empty()).then(|| svc.labels.clone())
}

/// Connects with a timeout (reported as `ErrorKind::TimedOut`).
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        // Past the data path's share of descriptors: as if out of them
        // (`fd_limit`), before the reserve is gone too.
        Ok(Ok(s)) if crate::fd_limit::in_reserve(s.as_raw_fd()) => {
            Err(io::Error::from_raw_os_error(nix::libc::EMFILE))
        }
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}

/// Opens a connection to `ep` within `dial`'s timeout (TCP connect, TLS
/// handshake and transport header together), with `dial`'s TCP options:
/// mutual TLS when `ep` has an
/// identity and this proxy has TLS configurations (`tls`), else plain
/// TCP, its TLS status saying why. With an opaque-transport port the
/// connection goes to that port of the endpoint's host, offers ALPN
/// `transport.l5d.io/v1`, and starts with the transport header naming
/// `ep`'s port and `session`. Nagle is off either way.
///
/// An endpoint that is one of `own` (this process's listeners) is refused
/// as a loop, here, where every upstream connection of every path is
/// made. What is checked is the endpoint, not the opaque-transport port
/// it is reached through: a pod calling itself through the mesh reaches
/// its own inbound port with a header naming its application's port.
pub(crate) async fn open(
    ep: &Endpoint,
    own: &[OwnListener],
    tls: Option<&TlsConfigs>,
    session: Session,
    dial: ConnectConfig,
) -> Result<Transport, ProxyError> {
    if own.iter().any(|l| l.reached_by(ep.addr)) {
        return Err(ProxyError::looped(ep.addr));
    }
    let timeout = dial.timeout;
    let started = Instant::now();
    let meshed = match (&ep.identity, tls) {
        (Some(id), Some(cfgs)) => Some((id, cfgs)),
        _ => None,
    };
    let addr = match (meshed, ep.opaque_transport) {
        (Some(_), Some(port)) => SocketAddr::new(ep.addr.ip(), port),
        _ => ep.addr,
    };
    let s = connect(addr, timeout)
        .await
        .map_err(|e| ProxyError::connect(&e))?;
    set_options(&s, &dial);
    let Some((id, cfgs)) = meshed else {
        let why = if tls.is_some() && ep.local {
            NoTlsReason::Loopback
        } else if tls.is_some() {
            NoTlsReason::NotProvidedByServiceDiscovery
        } else {
            NoTlsReason::NoProxyIdentity
        };
        return Ok(Transport::plain(s, why));
    };
    let gateway = ep.gateway.as_deref().and_then(gateway_target);
    let header = ep.opaque_transport.is_some() || gateway.is_some();
    let config = if header {
        cfgs.client_transport_header.clone()
    } else {
        cfgs.client.clone()
    };
    let left = timeout.saturating_sub(started.elapsed());
    let handshake = async {
        let mut t = Transport::tls_connect(s, config, id).await?;
        if header {
            let (port, name) = gateway.unwrap_or((ep.addr.port(), None));
            write_transport_header(&mut t, port, name.unwrap_or_default(), session).await?;
        }
        Ok::<_, io::Error>(t)
    };
    match monoio::time::timeout(left, handshake).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(ProxyError::tls(id, &e)),
        Err(_) => Err(ProxyError::tls(id, &io::ErrorKind::TimedOut.into())),
    }
}

/// Nagle off, and the side's keepalive and user timeout when set
/// (linkerd2-proxy's `*_CONNECT_KEEPALIVE` and `*_CONNECT_USER_TIMEOUT`;
/// unset, the kernel's: no keepalive, which linkerd2-proxy turns on with
/// the kernel's two-hour idle time, a system call per connection spared).
/// A failure is logged, not fatal: the connection works without them.
fn set_options(s: &TcpStream, dial: &ConnectConfig) {
    #[allow(unsafe_code)]
    // SAFETY: the fd belongs to `s`, which outlives this borrow; only
    // socket options are set through it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(s.as_raw_fd()) };
    let sock = socket2::SockRef::from(&fd);
    let res = sock
        .set_nodelay(true)
        .and_then(|()| match dial.keepalive {
            Some(idle) => sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle)),
            None => Ok(()),
        })
        .and_then(|()| match dial.user_timeout {
            Some(t) => sock.set_tcp_user_timeout(Some(t)),
            None => Ok(()),
        });
    if let Err(e) = res {
        tracing::debug!(error = %e, "could not set an upstream connection's TCP options");
    }
}

/// Writes Linkerd's transport header for `port` and `session` on a TLS
/// connection whose server agreed to ALPN `transport.l5d.io/v1` (one that
/// did not would take the header for application bytes).
/// The port and name a transport header gives a gateway for `authority`
/// (`host:port`), as linkerd2-proxy writes them: only with a port; the
/// host as the name when it is a DNS name (an address literal is not
/// named). `None`: no gateway header.
fn gateway_target(authority: &str) -> Option<(u16, Option<&str>)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let literal = host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok();
    Some((port, (!literal && !host.is_empty()).then_some(host)))
}

async fn write_transport_header(
    t: &mut Transport,
    port: u16,
    name: &str,
    session: Session,
) -> io::Result<()> {
    if t.alpn().as_deref() != Some(TRANSPORT_HEADER_ALPN) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer did not negotiate ALPN transport.l5d.io/v1 on its opaque-transport port",
        ));
    }
    let header = TransportHeader {
        port,
        name: name.to_string(),
        protocol: match session {
            Session::Http1 => Some(SessionProtocol::Http1),
            Session::Http2 => Some(SessionProtocol::Http2),
            Session::Opaque => None,
        },
    };
    let mut buf = Vec::with_capacity(64);
    header.encode(&mut buf);
    let (res, _) = t.write_all(buf).await;
    res.map(|_| ())
}

/// Counts a new upstream connection `conn` to `ep`, made for a request
/// labelled `key`, in `tcp`'s `peer="dst"` series, under the connection's
/// own TLS status (not `key.tls`: an inbound request's label set has the
/// client's) and with the endpoint's own labels where it has them (the
/// request's are its service's until the endpoint is picked).
pub(crate) fn upstream_meter(
    tcp: &std::cell::RefCell<TcpShard>,
    key: &HttpKey,
    ep: &Endpoint,
    conn: &Transport,
) -> ConnMeter {
    tcp.borrow_mut().open(TcpKey {
        direction: key.direction,
        peer: Peer::Dst,
        target: ep.addr,
        tls: conn.tls().clone(),
        authority: key.authority.clone(),
        dst_labels: ep.labels.clone().or_else(|| key.dst_labels.clone()),
        policy: None,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
    use ringmesh_admin::telemetry::TlsStatus;

    use super::*;

    /// A gateway's target as linkerd2-proxy names it in the header: only
    /// with a port; a DNS host is the name, an address literal is not.
    #[test]
    fn gateway_targets() {
        assert_eq!(
            gateway_target("web.east.svc.cluster.local:8080"),
            Some((8080, Some("web.east.svc.cluster.local")))
        );
        assert_eq!(gateway_target("10.1.2.3:80"), Some((80, None)));
        assert_eq!(gateway_target("[fd00::1]:80"), Some((80, None)));
        assert_eq!(gateway_target("web.east"), None);
        assert_eq!(gateway_target("web.east:http"), None);
    }
    use crate::testing::{both_drivers, finished, TestCa};

    const WEB: &str = "web.ns.serviceaccount.identity.linkerd.cluster.local";
    const CLIENT: &str = "client.ns.serviceaccount.identity.linkerd.cluster.local";

    /// A rustls (std, blocking) server on loopback presenting `name`'s
    /// certificate from `ca`, serving one connection: it answers "ping"
    /// with "pong" and reports whether the client presented a certificate.
    fn tls_server(ca: &TestCa, name: &str) -> (SocketAddr, thread::JoinHandle<bool>) {
        let cfg = ca.server(name);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let conn = rustls::ServerConnection::new(cfg).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut ping = [0u8; 4];
            if tls.read_exact(&mut ping).is_err() {
                return false;
            }
            assert_eq!(&ping, b"ping");
            tls.write_all(b"pong").unwrap();
            tls.flush().unwrap();
            tls.conn.peer_certificates().is_some_and(|c| !c.is_empty())
        });
        (addr, t)
    }

    fn endpoint(addr: SocketAddr, id: &str) -> Endpoint {
        Endpoint {
            addr,
            identity: Some(Name::parse(id).unwrap()),
            opaque_transport: None,
            h2: None,
            local: false,
            gateway: None,
            labels: None,
        }
    }

    /// Mutual TLS to an endpoint whose certificate names its identity:
    /// the connection says so, and bytes go both ways through split halves.
    #[test]
    fn mtls_to_an_endpoint_that_proves_its_identity() {
        both_drivers(async || {
            let ca = TestCa::new();
            let (addr, server) = tls_server(&ca, WEB);
            let conn = open(
                &endpoint(addr, WEB),
                &[],
                Some(&ca.configs(CLIENT)),
                Session::Opaque,
                ConnectConfig::with_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap();
            assert_eq!(
                conn.tls(),
                &TlsStatus::Connected {
                    server_id: WEB.into()
                }
            );
            let (mut rd, mut wr) = conn.into_split();
            wr.write_all(b"ping".to_vec()).await.0.unwrap();
            let (n, buf) = rd.read(Vec::with_capacity(16)).await;
            assert_eq!((n.unwrap(), &buf[..]), (4, &b"pong"[..]));
            assert!(
                finished(server).await,
                "the client presented no certificate"
            );
        });
    }

    /// The side's TCP options on the connection made (plain here; TLS
    /// runs over the same socket): Nagle off, keepalive and user timeout
    /// when set, nothing more when not.
    #[test]
    fn connections_carry_the_sides_tcp_options() {
        both_drivers(async || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let read = |conn: &Transport| {
                #[allow(unsafe_code)]
                // SAFETY: the fd is `conn`'s, which outlives the borrow.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(conn.raw_fd()) };
                crate::listen::tcp_options(socket2::SockRef::from(&fd))
            };
            let dial = ConnectConfig {
                timeout: Duration::from_secs(5),
                keepalive: Some(Duration::from_secs(9)),
                user_timeout: Some(Duration::from_millis(1500)),
            };
            let conn = open(&Endpoint::plain(addr), &[], None, Session::Opaque, dial)
                .await
                .unwrap();
            assert_eq!(
                read(&conn),
                (
                    true,
                    true,
                    Duration::from_secs(9),
                    Some(Duration::from_millis(1500))
                )
            );
            let conn = open(
                &Endpoint::plain(addr),
                &[],
                None,
                Session::Opaque,
                ConnectConfig::with_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap();
            let (nodelay, keepalive, _, user_timeout) = read(&conn);
            assert_eq!((nodelay, keepalive, user_timeout), (true, false, None));
            drop(l);
        });
    }

    /// A server whose certificate names another identity: 502, the
    /// `tls_failed` label, and rustls' reason.
    #[test]
    fn a_certificate_for_another_identity_is_refused() {
        both_drivers(async || {
            let ca = TestCa::new();
            let (addr, server) =
                tls_server(&ca, "db.ns.serviceaccount.identity.linkerd.cluster.local");
            let e = open(
                &endpoint(addr, WEB),
                &[],
                Some(&ca.configs(CLIENT)),
                Session::Opaque,
                ConnectConfig::with_timeout(Duration::from_secs(5)),
            )
            .await
            .err()
            .expect("a certificate for another name was accepted");
            assert_eq!((e.status(), e.label()), (502, "tls_failed"));
            assert!(
                e.reason().starts_with(&format!("TLS to {WEB} failed: "))
                    && e.reason().contains("not valid for name"),
                "{}",
                e.reason()
            );
            assert!(!finished(server).await);
        });
    }

    /// A server certificate from a CA outside the trust anchors.
    #[test]
    fn an_untrusted_certificate_is_refused() {
        both_drivers(async || {
            let (ours, theirs) = (TestCa::new(), TestCa::new());
            let (addr, server) = tls_server(&theirs, WEB);
            let e = open(
                &endpoint(addr, WEB),
                &[],
                Some(&ours.configs(CLIENT)),
                Session::Opaque,
                ConnectConfig::with_timeout(Duration::from_secs(5)),
            )
            .await
            .err()
            .expect("an untrusted certificate was accepted");
            assert_eq!(e.label(), "tls_failed");
            assert!(e.reason().contains("UnknownIssuer"), "{}", e.reason());
            assert!(!finished(server).await);
        });
    }

    /// A server that accepts and never answers the ClientHello: the
    /// handshake shares the connect timeout (504).
    #[test]
    fn a_stalled_handshake_times_out() {
        both_drivers(async || {
            let ca = TestCa::new();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let started = Instant::now();
            let e = open(
                &endpoint(addr, WEB),
                &[],
                Some(&ca.configs(CLIENT)),
                Session::Opaque,
                ConnectConfig::with_timeout(Duration::from_millis(300)),
            )
            .await
            .err()
            .expect("a silent server completed a handshake");
            assert_eq!((e.status(), e.label()), (504, "connect_timeout"));
            assert!(started.elapsed() < Duration::from_secs(2));
            drop(l);
        });
    }

    /// No identity for the endpoint, or none of our own: plain TCP, the
    /// TLS status saying which.
    #[test]
    fn plain_when_either_side_has_no_identity() {
        both_drivers(async || {
            let ca = TestCa::new();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let t = Duration::from_secs(5);
            let conn = open(
                &Endpoint::plain(addr),
                &[],
                Some(&ca.configs(CLIENT)),
                Session::Opaque,
                ConnectConfig::with_timeout(t),
            )
            .await
            .unwrap();
            assert_eq!(
                conn.tls(),
                &TlsStatus::NoIdentity(NoTlsReason::NotProvidedByServiceDiscovery)
            );
            let conn = open(
                &endpoint(addr, WEB),
                &[],
                None,
                Session::Opaque,
                ConnectConfig::with_timeout(t),
            )
            .await
            .unwrap();
            assert_eq!(conn.tls(), &TlsStatus::NO_PROXY_IDENTITY);
            assert!(matches!(
                conn.split().0,
                crate::transport::TransportRd::Plain(_)
            ));
        });
    }

    /// Every path's upstream connection is made here, and here an endpoint
    /// that is one of this process's listeners is refused before any
    /// connect (as itself or through `0.0.0.0`). The endpoint is what is
    /// checked, not an opaque-transport port it names: a pod calling
    /// itself through the mesh reaches its own inbound port.
    #[test]
    fn own_listeners_are_refused_before_connecting() {
        both_drivers(async || {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            let addr = l.local_addr().unwrap();
            let own = [OwnListener {
                addr,
                proxies: true,
            }];
            let dial = ConnectConfig::with_timeout(Duration::from_secs(5));
            let unspecified = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            for to in [addr, unspecified] {
                let e = open(&Endpoint::plain(to), &own, None, Session::Opaque, dial)
                    .await
                    .err()
                    .expect("connected to its own listener");
                assert_eq!((e.status(), e.label()), (502, "loop"), "{to}");
            }
            assert_eq!(
                l.accept().err().map(|e| e.kind()),
                Some(io::ErrorKind::WouldBlock),
                "a refused loop still connected"
            );
            let app = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut ep = Endpoint::plain(app.local_addr().unwrap());
            ep.opaque_transport = Some(addr.port());
            open(&ep, &own, None, Session::Opaque, dial)
                .await
                .expect("refused for the transport port, which is not the endpoint");
        });
    }
}
