//! The upstream connector: connecting (with a timeout) and the labels a
//! new upstream connection is counted under. TLS will be added here.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::TcpStream;
use ringmesh_discovery::Service;

use ringmesh_admin::telemetry::DstLabels;

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
