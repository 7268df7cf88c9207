//! The upstream connector: connecting (with a timeout) and the labels a
//! new upstream connection is counted under. TLS will be added here.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::TcpStream;
use ringmesh_discovery::Service;

use ringmesh_admin::telemetry::{ConnMeter, DstLabels, HttpKey, Peer, TcpKey, TlsStatus};

use crate::worker::Worker;

/// Discovery's metric labels for `svc`, if it has any.
pub(crate) fn dst_labels(svc: &Service) -> Option<DstLabels> {
    (!svc.labels.is_empty()).then(|| svc.labels.clone())
}

/// Connects with a timeout (reported as `ErrorKind::TimedOut`).
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}

/// Counts a new upstream connection to `addr`, made for a request labelled
/// `key`, in the worker's `peer="dst"` TCP series. Its TLS status is the
/// connection's own, not `key.tls` (an inbound request's label set has the
/// client's): plain until the connector does TLS.
pub(crate) fn upstream_meter(w: &Worker, key: &HttpKey, addr: SocketAddr) -> ConnMeter {
    w.telemetry.tcp.borrow_mut().open(TcpKey {
        direction: key.direction,
        peer: Peer::Dst,
        target: addr,
        tls: TlsStatus::NO_PROXY_IDENTITY,
        authority: key.authority.clone(),
        dst_labels: key.dst_labels.clone(),
    })
}
