//! Binding listeners.
//!
//! Data-plane addresses get one `SO_REUSEPORT` socket per worker, so the
//! kernel spreads connections across workers. `SO_REUSEPORT` would also let a
//! second process (same uid) silently share a busy port, so before binding the
//! group we bind the address once *without* it: that fails if anyone else
//! holds the port, and it fixes the port number when the address asks for
//! port 0.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

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

/// Binds `workers` listeners sharing `addr` with `SO_REUSEPORT`.
pub fn bind_group(
    addr: SocketAddr,
    workers: usize,
    what: &str,
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
            s.listen(BACKLOG).map_err(err)?;
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

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only lets us rebind over TIME_WAIT leftovers; it does not
    // allow sharing a listening port on Linux.
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// True when `dst` would reach listener `l` (which may be a wildcard).
pub(crate) fn same_endpoint(l: SocketAddr, dst: SocketAddr) -> bool {
    l.port() == dst.port()
        && (l.ip() == dst.ip()
            || (l.ip().is_unspecified() && l.is_ipv4() == dst.is_ipv4() && is_local(dst)))
}

pub(crate) fn is_local(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_shares_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3, "test").unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(group.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn busy_port_is_refused_even_with_reuseport_holders() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 1, "first").unwrap();
        let addr = first[0].local_addr().unwrap();
        let e = bind_group(addr, 1, "second").unwrap_err();
        assert!(matches!(e, BindError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("already in use"));
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_group(plain.local_addr().unwrap(), 2, "third").unwrap_err();
        assert!(matches!(e, BindError::InUse { .. }));
        assert!(matches!(
            bind_exclusive(addr, "admin"),
            Err(BindError::InUse { .. })
        ));
    }
}
