//! Binding listeners.
//!
//! Data-plane addresses get one `SO_REUSEPORT` socket per worker, so the
//! kernel spreads connections across workers. `SO_REUSEPORT` would also let a
//! second process (same uid) silently share a busy port, so before binding the
//! group we bind the address once *without* it: that fails if anyone else
//! holds the port, and it fixes the port number when the address asks for
//! port 0.
//!
//! An address in use is tried again for [`IN_USE_GRACE`] before the
//! proxy gives up: with io_uring, the kernel releases a killed process's
//! listeners only when it tears its rings down, after the process is
//! gone (an accept still queued holds the socket), so a proxy restarted at
//! once in the same network namespace would otherwise find its own old
//! ports taken.
//!
//! A data-plane listener also carries its connections' TCP options
//! (Nagle off, keepalive, user timeout): Linux copies them from the
//! listening socket to every connection it accepts, so no connection
//! needs a system call of its own for them.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::config::AcceptConfig;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr} ({what}): the address is already in use by another process")]
    InUse { addr: SocketAddr, what: String },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Other {
        addr: SocketAddr,
        what: String,
        #[source]
        source: io::Error,
    },
}

const BACKLOG: i32 = 4096;

/// How long an address in use is tried again (see the module's note).
pub const IN_USE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds `workers` listeners sharing `addr` with `SO_REUSEPORT`, their
/// connections' options set from `opts`.
pub fn bind_group(
    addr: SocketAddr,
    workers: usize,
    what: &str,
    opts: &AcceptConfig,
) -> Result<Vec<TcpListener>, BindError> {
    let err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            BindError::InUse {
                addr,
                what: what.to_string(),
            }
        } else {
            BindError::Other {
                addr,
                what: what.to_string(),
                source,
            }
        }
    };
    // Exclusive probe: fails when another process holds the port, with or
    // without SO_REUSEPORT.
    let probe = socket(addr, false).map_err(err)?;
    let bound = probe
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| err(io::Error::other("not an inet socket")))?;
    drop(probe);
    (0..workers)
        .map(|_| {
            let s = socket(bound, true).map_err(err)?;
            set_accept_options(&s, opts).map_err(err)?;
            s.listen(i32::try_from(opts.backlog).unwrap_or(i32::MAX))
                .map_err(err)?;
            Ok(s.into())
        })
        .collect()
}

/// Binds a single-owner listener (no `SO_REUSEPORT`).
pub fn bind_exclusive(addr: SocketAddr, what: &str) -> Result<TcpListener, BindError> {
    let s = socket(addr, false).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            BindError::InUse {
                addr,
                what: what.to_string(),
            }
        } else {
            BindError::Other {
                addr,
                what: what.to_string(),
                source,
            }
        }
    })?;
    s.listen(BACKLOG).map_err(|source| BindError::Other {
        addr,
        what: what.to_string(),
        source,
    })?;
    Ok(s.into())
}

/// The options accepted connections inherit: Nagle off, keepalive on
/// (with `opts`' idle time when set, as linkerd2-proxy sets it on each
/// connection), and `opts`' user timeout when set.
fn set_accept_options(s: &Socket, opts: &AcceptConfig) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut ka = TcpKeepalive::new();
    if let Some(idle) = opts.keepalive {
        ka = ka.with_time(idle);
    }
    s.set_tcp_keepalive(&ka)?;
    if let Some(t) = opts.user_timeout {
        s.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only lets us rebind over TIME_WAIT leftovers; it does not
    // allow sharing a listening port on Linux.
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // `[::]` takes IPv4 too (IPv4-mapped), as linkerd2-proxy's listeners
    // do on Linux: Linkerd's injector writes `[::]:4143`, `[::]:4191` and
    // `[::]:4190` on dual-stack pods, and the kubelet's probes and
    // redirected IPv4 connections arrive there. A specific IPv6 address
    // is IPv6 only.
    if addr.is_ipv6() {
        s.set_only_v6(!addr.ip().is_unspecified())?;
    }
    s.set_nonblocking(true)?;
    let until = std::time::Instant::now() + IN_USE_GRACE;
    loop {
        match s.bind(&addr.into()) {
            // (Once bound, a group's sockets share the port by design.)
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && !reuse_port
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            r => return r.map(|()| s),
        }
    }
}

/// An accepted connection's address as the rest of the proxy sees it: an
/// IPv4 client of a dual-stack (`[::]`) listener arrives as an
/// IPv4-mapped IPv6 address (`::ffff:10.0.0.1`), which is its IPv4
/// address (policies, loopback checks, metric labels, the original
/// destination all speak IPv4 for it).
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// One of this process's listeners, as loop checks see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnListener {
    pub(crate) addr: SocketAddr,
    /// It proxies what it accepts (outbound, inbound, forwards): reached
    /// through any of this host's addresses it is a loop. The admin and tap
    /// servers answer themselves; they are a loop only as loopback, where
    /// they would take the proxy for a local client.
    pub(crate) proxies: bool,
}

impl OwnListener {
    /// Whether connecting to `dst` would reach this listener.
    pub(crate) fn reached_by(&self, dst: SocketAddr) -> bool {
        let host = if self.proxies { host_ips() } else { &[] };
        same_endpoint_on(self.addr, dst, host)
    }
}

/// True when connecting to `dst` would reach listener `l` (which may be a
/// wildcard), `host` being this host's addresses. `dst` is taken as Linux
/// connects to it: an IPv4-mapped IPv6 address is its IPv4 address, and an
/// unspecified one (`0.0.0.0`, `::`) is this host's loopback.
fn same_endpoint_on(l: SocketAddr, dst: SocketAddr, host: &[IpAddr]) -> bool {
    let (lip, dip) = (l.ip().to_canonical(), dst.ip().to_canonical());
    // `[::]` listens on IPv4 as well (see `socket`).
    let dual = l.is_ipv6() && lip.is_unspecified();
    if l.port() != dst.port() || (!dual && lip.is_ipv4() != dip.is_ipv4()) {
        return false;
    }
    lip == dip
        || (lip.is_unspecified() && is_local_on(dip, host))
        || (dip.is_unspecified() && lip.is_loopback())
}

/// Whether connecting to `ip` stays on this host.
fn is_local_on(ip: IpAddr, host: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || host.contains(&ip)
}

/// This host's interface addresses (a pod's own IPs among them), read once:
/// a sidecar's addresses are set before it starts.
pub(crate) fn host_ips() -> &'static [IpAddr] {
    static IPS: std::sync::OnceLock<Vec<IpAddr>> = std::sync::OnceLock::new();
    IPS.get_or_init(|| match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let a = a.address?;
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .map(|ip| ip.to_canonical())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses; loop checks know loopback only");
            Vec::new()
        }
    })
}

/// A socket's TCP options as tests check them: Nagle off, keepalive on,
/// keepalive idle time, user timeout.
#[cfg(test)]
pub(crate) fn tcp_options(
    s: socket2::SockRef<'_>,
) -> (bool, bool, std::time::Duration, Option<std::time::Duration>) {
    (
        s.nodelay().unwrap(),
        s.keepalive().unwrap(),
        s.keepalive_time().unwrap(),
        s.tcp_user_timeout().unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What loop checks take for this process's own listeners.
    #[test]
    fn own_listeners_are_reached_as_linux_connects() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let pod: IpAddr = "10.0.0.5".parse().unwrap();
        let reached = |l: &str, dst: &str, host: &[IpAddr]| same_endpoint_on(a(l), a(dst), host);
        // The same address, or another port.
        assert!(reached("127.0.0.1:4140", "127.0.0.1:4140", &[]));
        assert!(!reached("127.0.0.1:4140", "127.0.0.1:4141", &[]));
        // Unspecified and IPv4-mapped destinations are this host's.
        assert!(reached("127.0.0.1:4140", "0.0.0.0:4140", &[]));
        assert!(reached("127.0.0.1:4140", "[::ffff:127.0.0.1]:4140", &[]));
        assert!(reached("[::1]:4140", "[::]:4140", &[]));
        assert!(!reached("127.0.0.1:4140", "[::]:4140", &[]));
        // A wildcard listener, through loopback or this host's addresses.
        assert!(reached("0.0.0.0:4143", "127.0.0.9:4143", &[]));
        assert!(reached("0.0.0.0:4143", "0.0.0.0:4143", &[]));
        assert!(reached("0.0.0.0:4143", "10.0.0.5:4143", &[pod]));
        assert!(reached("0.0.0.0:4143", "[::ffff:10.0.0.5]:4143", &[pod]));
        assert!(!reached("0.0.0.0:4143", "10.0.0.6:4143", &[pod]));
        // The admin server is reached by a pod address as from elsewhere.
        let admin = OwnListener {
            addr: a("0.0.0.0:4191"),
            proxies: false,
        };
        assert!(admin.reached_by(a("127.0.0.1:4191")));
        assert!(admin.reached_by(a("0.0.0.0:4191")));
        // And this host's own addresses are known.
        assert!(
            host_ips().iter().any(|ip| ip.is_loopback()),
            "{:?}",
            host_ips()
        );
    }

    #[test]
    fn group_shares_one_port() {
        let group = bind_group(
            "127.0.0.1:0".parse().unwrap(),
            3,
            "test",
            &AcceptConfig::default(),
        )
        .unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(group.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    /// What the data path relies on instead of a system call per
    /// connection: accepted connections carry the listener's options.
    #[test]
    fn accepted_connections_inherit_the_listeners_options() {
        use std::time::Duration;
        // A connection accepted by a listener bound with `opts`.
        let accepted = |opts: &AcceptConfig| {
            let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, "test", opts).unwrap();
            group[0].set_nonblocking(false).unwrap();
            let client = std::net::TcpStream::connect(group[0].local_addr().unwrap()).unwrap();
            (group[0].accept().unwrap().0, client)
        };
        let opts = AcceptConfig {
            keepalive: Some(Duration::from_secs(10)),
            user_timeout: Some(Duration::from_millis(30_500)),
            backlog: 16,
        };
        let (conn, _client) = accepted(&opts);
        assert_eq!(
            tcp_options(socket2::SockRef::from(&conn)),
            (
                true,
                true,
                Duration::from_secs(10),
                Some(Duration::from_millis(30_500))
            )
        );
        // Unset: Nagle still off, keepalive on with the kernel's idle time.
        let (conn, _client) = accepted(&AcceptConfig::default());
        let (nodelay, keepalive, _, user_timeout) = tcp_options(socket2::SockRef::from(&conn));
        assert_eq!((nodelay, keepalive, user_timeout), (true, true, None));
    }

    /// An address held for a moment (as a killed io_uring process's
    /// listeners are until the kernel tears its rings down) is bound once
    /// it is let go, within the grace; one held longer is refused.
    #[test]
    fn an_address_let_go_within_the_grace_is_bound() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(IN_USE_GRACE / 4);
            drop(held);
        });
        let started = std::time::Instant::now();
        bind_exclusive(addr, "admin").expect("bound once let go");
        assert!(started.elapsed() < IN_USE_GRACE);
        release.join().unwrap();
        let group = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = group.local_addr().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(IN_USE_GRACE / 4);
            drop(group);
        });
        bind_group(addr, 2, "outbound", &AcceptConfig::default()).expect("bound once let go");
        release.join().unwrap();
    }

    #[test]
    fn busy_port_is_refused_even_with_reuseport_holders() {
        let first = bind_group(
            "127.0.0.1:0".parse().unwrap(),
            1,
            "first",
            &AcceptConfig::default(),
        )
        .unwrap();
        let addr = first[0].local_addr().unwrap();
        let e = bind_group(addr, 1, "second", &AcceptConfig::default()).unwrap_err();
        assert!(matches!(e, BindError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("already in use"));
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_group(
            plain.local_addr().unwrap(),
            2,
            "third",
            &AcceptConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(e, BindError::InUse { .. }));
        assert!(matches!(
            bind_exclusive(addr, "admin"),
            Err(BindError::InUse { .. })
        ));
    }
}
