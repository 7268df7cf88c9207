//! The transport seam: a connection as the data paths see it, plain TCP
//! or TLS over TCP, carrying how it is secured ([`TlsStatus`]: the peer's
//! identity when there is one) for the metrics and the logs.
//!
//! Both kinds read and write through monoio's owned-buffer traits, and
//! split into halves the same way, so a path written against [`Transport`]
//! serves either. The plain-TCP fast paths (multishot receive into the
//! worker's buffer ring, splice, peek-based liveness of pooled
//! connections) need the socket itself: a path takes them only for the
//! plain halves ([`TransportRd::Plain`], [`TransportWr::Plain`]: monoio's
//! own), and falls back to ordinary reads and writes otherwise
//! ([`relay_any`] for tunnels).
//!
//! Must not: hold a TLS session's plaintext anywhere but in the session
//! (a TLS stream's bytes are only ever what rustls decrypted).

use std::io;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Split,
    Splitable,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use ringmesh_admin::telemetry::{NoTlsReason, TlsStatus};
use ringmesh_identity::Name;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use ringmesh_protocols::tcp::{RelayEnd, RelayStats};

use crate::detect::{read_until, EvictableRead};
use crate::tls::{SessionState, TlsRead, TlsStream, TlsWrite};
use crate::undecided::Eviction;

/// One connection, plain or TLS.
pub(crate) struct Transport {
    io: Io,
    tls: TlsStatus,
}

enum Io {
    Plain(TcpStream),
    /// TLS this proxy originated. Boxed: a session is ~1 KB and plain
    /// connections are the common case.
    Tls(Box<TlsStream<ClientConnection>>),
    /// TLS this proxy terminated (inbound mTLS).
    Server(Box<TlsStream<ServerConnection>>),
}

impl Transport {
    /// A plain connection; `why` says why it has no TLS.
    pub(crate) fn plain(s: TcpStream, why: NoTlsReason) -> Self {
        Self {
            io: Io::Plain(s),
            tls: TlsStatus::NoIdentity(why),
        }
    }

    /// A plain connection secured as `status` says (no TLS, or TLS for
    /// another server relayed untouched).
    pub(crate) fn plain_as(s: TcpStream, status: TlsStatus) -> Self {
        Self {
            io: Io::Plain(s),
            tls: status,
        }
    }

    /// Originates TLS on `s` to the server named `id`: the server's
    /// certificate must be valid for `id` under `config`'s trust anchors.
    pub(crate) async fn tls_connect(
        s: TcpStream,
        config: Arc<ClientConfig>,
        id: &Name,
    ) -> io::Result<Self> {
        let session = ClientConnection::new(config, id.server_name())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stream = TlsStream::handshake(s, session).await?;
        Ok(Self {
            io: Io::Tls(Box::new(stream)),
            tls: TlsStatus::Connected {
                server_id: id.to_shared(),
            },
        })
    }

    /// Terminates TLS on `s` whose first bytes (the ClientHello, already
    /// read) are `early`: our certificate from `config`, the client's
    /// verified against its trust anchors. The status names the client's
    /// identity (the first DNS name of its certificate), if it presented
    /// one.
    pub(crate) async fn tls_accept(
        s: TcpStream,
        config: Arc<ServerConfig>,
        early: &[u8],
    ) -> io::Result<Self> {
        let session = ServerConnection::new(config)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stream = TlsStream::accept(s, session, early).await?;
        let client_id = stream.with_session(|s| {
            s.peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| ringmesh_identity::tls::dns_name(leaf))
        });
        Ok(Self {
            io: Io::Server(Box::new(stream)),
            tls: TlsStatus::Accepted {
                client_id: client_id.map(|n| n.to_shared()),
            },
        })
    }

    /// The protocol ALPN settled on, if any.
    pub(crate) fn alpn(&self) -> Option<Vec<u8>> {
        match &self.io {
            Io::Plain(_) => None,
            Io::Tls(t) => t.with_session(|s| s.alpn_protocol().map(<[u8]>::to_vec)),
            Io::Server(t) => t.with_session(|s| s.alpn_protocol().map(<[u8]>::to_vec)),
        }
    }

    /// The TCP socket under the connection (for shutdown(2); a TLS
    /// connection's bytes are never read or written through it).
    pub(crate) fn raw_fd(&self) -> RawFd {
        match &self.io {
            Io::Plain(s) => s.as_raw_fd(),
            Io::Tls(t) => t.raw_fd(),
            Io::Server(t) => t.raw_fd(),
        }
    }

    /// How the connection is secured (the metrics' `tls` labels).
    pub(crate) fn tls(&self) -> &TlsStatus {
        &self.tls
    }
}

impl Transport {
    /// The socket, when the connection is plain.
    pub(crate) fn plain_socket(&self) -> Option<&TcpStream> {
        match &self.io {
            Io::Plain(s) => Some(s),
            Io::Tls(_) | Io::Server(_) => None,
        }
    }

    /// The socket, when the connection is plain (the fast paths' way in).
    pub(crate) fn plain_mut(&mut self) -> Option<&mut TcpStream> {
        match &mut self.io {
            Io::Plain(s) => Some(s),
            Io::Tls(_) => None,
            Io::Server(_) => None,
        }
    }

    /// The socket itself, when the connection is plain.
    pub(crate) fn into_plain(self) -> Result<TcpStream, Self> {
        match self.io {
            Io::Plain(s) => Ok(s),
            io => Err(Self { io, ..self }),
        }
    }
}

impl EvictableRead for Transport {
    async fn read_or_evict<T: IoBufMut>(
        &mut self,
        buf: T,
        deadline: Instant,
        eviction: &Eviction,
    ) -> (Option<io::Result<usize>>, T) {
        match &mut self.io {
            Io::Plain(s) => s.read_or_evict(buf, deadline, eviction).await,
            Io::Tls(t) => tls_read_or_evict(t, buf, deadline, eviction).await,
            Io::Server(t) => tls_read_or_evict(t, buf, deadline, eviction).await,
        }
    }
}

/// A TLS read given up at `deadline` (`ECANCELED`) or on eviction (`None`).
async fn tls_read_or_evict<C, SD, T>(
    t: &mut TlsStream<C>,
    buf: T,
    deadline: Instant,
    eviction: &Eviction,
) -> (Option<io::Result<usize>>, T)
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<SD>>,
    SD: rustls::SideData,
    T: IoBufMut,
{
    let evicted = Cell::new(false);
    let stop = async {
        monoio::select! {
            _ = monoio::time::sleep_until(deadline.into()) => {},
            _ = eviction.wait() => evicted.set(true),
        }
    };
    match t.read_or(buf, stop).await {
        (Some(r), buf) => (Some(r), buf),
        (None, buf) if evicted.get() => (None, buf),
        (None, buf) => (
            Some(Err(io::Error::from_raw_os_error(nix::libc::ECANCELED))),
            buf,
        ),
    }
}

// SAFETY: both kinds are safe to split: `TcpStream` is `Split`, and a
// `TlsStream`'s reads and writes borrow its session only between awaits
// (they wait for readiness, then move bytes synchronously), so a read and
// a write in flight at once never interleave inside the session.
#[allow(unsafe_code)]
unsafe impl Split for Transport {}

impl AsyncReadRent for Transport {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(t) => t.read(buf).await,
            Io::Server(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.readv(buf).await,
            Io::Tls(t) => t.readv(buf).await,
            Io::Server(t) => t.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Transport {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.write(buf).await,
            Io::Tls(t) => t.write(buf).await,
            Io::Server(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match &mut self.io {
            Io::Plain(s) => s.writev(buf).await,
            Io::Tls(t) => t.writev(buf).await,
            Io::Server(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.flush().await,
            Io::Tls(t) => t.flush().await,
            Io::Server(t) => t.flush().await,
        }
    }

    /// Plain: shuts the write side down. TLS: sends close_notify first.
    async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.io {
            Io::Plain(s) => s.shutdown().await,
            Io::Tls(t) => t.shutdown().await,
            Io::Server(t) => t.shutdown().await,
        }
    }
}

/// The read half of a [`Transport`].
pub(crate) enum TransportRd {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(TlsRead<ClientConnection>),
    Server(TlsRead<ServerConnection>),
}

/// The write half of a [`Transport`].
pub(crate) enum TransportWr {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(TlsWrite<ClientConnection>),
    Server(TlsWrite<ServerConnection>),
}

impl Transport {
    /// The read and write halves (a plain socket's are monoio's own, so
    /// the fast paths can still reach the socket).
    pub(crate) fn split(self) -> (TransportRd, TransportWr) {
        match self.io {
            Io::Plain(s) => {
                let (rd, wr) = s.into_split();
                (TransportRd::Plain(rd), TransportWr::Plain(wr))
            }
            Io::Tls(t) => {
                let (rd, wr) = t.split();
                (TransportRd::Tls(rd), TransportWr::Tls(wr))
            }
            Io::Server(t) => {
                let (rd, wr) = t.split();
                (TransportRd::Server(rd), TransportWr::Server(wr))
            }
        }
    }
}

impl TransportRd {
    /// One read into `buf`, given up at `deadline` with `ECANCELED`
    /// (nothing is lost either way: a plain read is cancelled in the
    /// kernel, a TLS read keeps what arrived in its session).
    pub(crate) async fn read_until<T: IoBufMut>(
        &mut self,
        buf: T,
        deadline: Option<Instant>,
    ) -> BufResult<usize, T> {
        match self {
            Self::Plain(rd) => read_until(rd, buf, deadline).await,
            Self::Tls(rd) => rd.read_until(buf, deadline).await,
            Self::Server(rd) => rd.read_until(buf, deadline).await,
        }
    }

    /// Whether the connection is plain (its socket can be read directly).
    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Self::Plain(_))
    }

    /// What a TLS session holds that its socket no longer shows
    /// (`Quiet` for a plain connection: its socket says it all). A pooled
    /// connection with unread plaintext or a close is not reusable.
    pub(crate) fn session_state(&self) -> SessionState {
        match self {
            Self::Plain(_) => SessionState::Quiet,
            Self::Tls(t) => t.state(),
            Self::Server(t) => t.state(),
        }
    }
}

/// One read, given up at a deadline (`ECANCELED`) without losing bytes.
pub(crate) trait DeadlineRead {
    async fn read_until<T: IoBufMut>(
        &mut self,
        buf: T,
        deadline: Option<Instant>,
    ) -> monoio::BufResult<usize, T>;
}

impl DeadlineRead for TransportRd {
    async fn read_until<T: IoBufMut>(
        &mut self,
        buf: T,
        deadline: Option<Instant>,
    ) -> monoio::BufResult<usize, T> {
        TransportRd::read_until(self, buf, deadline).await
    }
}

impl AsyncReadRent for TransportRd {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Tls(t) => t.read(buf).await,
            Self::Server(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.readv(buf).await,
            Self::Tls(t) => t.readv(buf).await,
            Self::Server(t) => t.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for TransportWr {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.write(buf).await,
            Self::Tls(t) => t.write(buf).await,
            Self::Server(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Self::Plain(s) => s.writev(buf).await,
            Self::Tls(t) => t.writev(buf).await,
            Self::Server(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush().await,
            Self::Tls(t) => t.flush().await,
            Self::Server(t) => t.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.shutdown().await,
            Self::Tls(t) => t.shutdown().await,
            Self::Server(t) => t.shutdown().await,
        }
    }
}

/// Relays both ways between two connections of any kind, for relays and
/// tunnels with TLS on a side (the fast relays, multishot and splice,
/// need two plain sockets). `bufs.0` may hold client bytes to send first. Ends
/// when both directions have, or when nothing moved either way for
/// `idle`; a failed side shuts both sockets (`fds`: client, upstream),
/// so the other direction ends too.
pub(crate) async fn relay_any(
    (crd, cwr): (&mut impl DeadlineRead, &mut impl AsyncWriteRent),
    (srd, swr): (&mut impl DeadlineRead, &mut impl AsyncWriteRent),
    bufs: (Vec<u8>, Vec<u8>),
    idle: Duration,
    fds: [RawFd; 2],
) -> (RelayStats, (Vec<u8>, Vec<u8>)) {
    let last = Cell::new(Instant::now());
    let up = copy_until_idle(crd, swr, bufs.0, &last, idle, fds);
    let down = copy_until_idle(srd, cwr, bufs.1, &last, idle, fds);
    let ((up_n, up_end, b0), (down_n, down_end, b1)) = monoio::join!(up, down);
    let end = match (up_end, down_end) {
        (Err(e), _) => RelayEnd::ClientError(e.kind()),
        (_, Err(e)) => RelayEnd::ServerError(e.kind()),
        (Ok(true), _) | (_, Ok(true)) => RelayEnd::Idle,
        _ => RelayEnd::Closed,
    };
    let stats = RelayStats {
        client_to_server: up_n,
        server_to_client: down_n,
        end,
    };
    (stats, (b0, b1))
}

/// One direction of [`relay_any`]: bytes copied, and how it ended
/// (`Ok(true)`: idle).
async fn copy_until_idle(
    rd: &mut impl DeadlineRead,
    wr: &mut impl AsyncWriteRent,
    mut buf: Vec<u8>,
    last: &Cell<Instant>,
    idle: Duration,
    fds: [RawFd; 2],
) -> (u64, io::Result<bool>, Vec<u8>) {
    let fail = |e: io::Error| {
        for fd in fds {
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        }
        Err(e)
    };
    let mut total = 0u64;
    if buf.capacity() < 16 * 1024 {
        buf.reserve(16 * 1024 - buf.len());
    }
    loop {
        if !buf.is_empty() {
            let (res, b) = wr.write_all(buf).await;
            buf = b;
            match res {
                Ok(n) => total += n as u64,
                Err(e) => return (total, fail(e), buf),
            }
            buf.clear();
        }
        let (res, b) = rd.read_until(buf, Some(last.get() + idle)).await;
        buf = b;
        match res {
            Ok(0) => {
                let _ = wr.shutdown().await;
                return (total, Ok(false), buf);
            }
            Ok(_) => last.set(Instant::now()),
            // The other direction may have moved meanwhile.
            Err(e) if crate::detect::is_cancelled(&e) => {
                if last.get().elapsed() >= idle {
                    for fd in fds {
                        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                    }
                    return (total, Ok(true), buf);
                }
            }
            Err(e) => return (total, fail(e), buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    use super::*;
    use crate::config::ConnectConfig;
    use crate::connect::Session;
    use crate::connect::{open, Endpoint};
    use crate::testing::{both_drivers, finished, TestCa};
    use ringmesh_identity::Name;

    const NAME: &str = "echo.ns.serviceaccount.identity.linkerd.cluster.local";

    fn configs() -> (ringmesh_identity::TlsConfigs, Arc<rustls::ServerConfig>) {
        let ca = TestCa::new();
        (ca.configs("client.example"), ca.server(NAME))
    }

    /// A TLS upstream that echoes what it reads until EOF, then closes.
    fn tls_echo(cfg: Arc<rustls::ServerConfig>) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let mut tls =
                rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), sock);
            let mut buf = [0u8; 4096];
            loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tls.write_all(&buf[..n]).unwrap();
                        tls.flush().unwrap();
                    }
                }
            }
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        (addr, t)
    }

    /// A plain client connection as the proxy holds it, and the
    /// application's end of it.
    async fn client_pair() -> (TcpStream, std::net::TcpStream) {
        let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let app = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (proxy_side, _) = l.accept().await.unwrap();
        (proxy_side, app)
    }

    /// Both ends of a tunnel as `relay_any` gets them: a plain client
    /// connection (with the application's end of it) and a TLS connection
    /// to an echo upstream.
    struct Tunnel {
        client: (TransportRd, TransportWr),
        upstream: (TransportRd, TransportWr),
        fds: [RawFd; 2],
        app: std::net::TcpStream,
        echo: thread::JoinHandle<()>,
    }

    async fn tunnel() -> Tunnel {
        let (client_cfg, server_cfg) = configs();
        let (addr, echo) = tls_echo(server_cfg);
        let ep = Endpoint {
            addr,
            identity: Some(Name::parse(NAME).unwrap()),
            opaque_transport: None,
            h2: None,
            local: false,
            gateway: None,
            labels: None,
        };
        let conn = open(
            &ep,
            &[],
            Some(&client_cfg),
            Session::Opaque,
            ConnectConfig::with_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        let ufd = conn.raw_fd();
        let (client, app) = client_pair().await;
        let cfd = client.as_raw_fd();
        Tunnel {
            client: Transport::plain(client, NoTlsReason::Loopback).split(),
            upstream: conn.split(),
            fds: [cfd, ufd],
            app,
            echo,
        }
    }

    /// A tunnel from a plain client to a TLS upstream: the client's bytes
    /// (the prefix first) reach the upstream through the session, the
    /// answer comes back, and half-closes pass both ways.
    #[test]
    fn relay_any_tunnels_to_a_tls_upstream() {
        both_drivers(async || {
            let Tunnel {
                mut client,
                mut upstream,
                fds,
                mut app,
                echo,
            } = tunnel().await;
            let app_side = thread::spawn(move || {
                app.write_all(b" world").unwrap();
                app.shutdown(std::net::Shutdown::Write).unwrap();
                let mut got = Vec::new();
                app.read_to_end(&mut got).unwrap();
                got
            });
            let (stats, _) = relay_any(
                (&mut client.0, &mut client.1),
                (&mut upstream.0, &mut upstream.1),
                (b"hello".to_vec(), Vec::new()),
                Duration::from_secs(5),
                fds,
            )
            .await;
            assert_eq!(finished(app_side).await, b"hello world");
            assert_eq!(
                (stats.client_to_server, stats.server_to_client, stats.end),
                (11, 11, RelayEnd::Closed)
            );
            finished(echo).await;
        });
    }

    /// Nothing moving either way ends the tunnel after the idle timeout.
    #[test]
    fn relay_any_ends_when_idle() {
        both_drivers(async || {
            let Tunnel {
                mut client,
                mut upstream,
                fds,
                app: _app,
                echo,
            } = tunnel().await;
            let started = Instant::now();
            let (stats, _) = relay_any(
                (&mut client.0, &mut client.1),
                (&mut upstream.0, &mut upstream.1),
                (Vec::new(), Vec::new()),
                Duration::from_millis(200),
                fds,
            )
            .await;
            assert_eq!(stats.end, RelayEnd::Idle);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            finished(echo).await;
        });
    }

    /// Detection reading through TLS: its deadline gives `ECANCELED`, an
    /// eviction gives `None`, neither loses the bytes that come later,
    /// and the protocol is detected from the decrypted bytes.
    #[test]
    fn detection_reads_through_tls() {
        both_drivers(async || {
            let ca = TestCa::new();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let cfg = ca.server(NAME);
            let server = thread::spawn(move || {
                let (sock, _) = l.accept().unwrap();
                let mut tls =
                    rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), sock);
                // Handshake now (a rustls stream does it lazily), then
                // stay silent for a while.
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).unwrap();
                }
                thread::sleep(Duration::from_millis(1000));
                tls.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
                tls.flush().unwrap();
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest);
            });
            let ep = Endpoint {
                addr,
                identity: Some(Name::parse(NAME).unwrap()),
                opaque_transport: None,
                h2: None,
                local: false,
                gateway: None,
                labels: None,
            };
            let mut conn = open(
                &ep,
                &[],
                Some(&ca.configs("client.example")),
                Session::Opaque,
                ConnectConfig::with_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap();
            let soon = Instant::now() + Duration::from_millis(50);
            let (res, buf) = conn
                .read_or_evict(Vec::with_capacity(256), soon, &Eviction::default())
                .await;
            let e = res.expect("not evicted").expect_err("nothing was sent yet");
            assert_eq!(e.raw_os_error(), Some(nix::libc::ECANCELED));
            let evicted = Eviction::default();
            evicted.fire();
            let later = Instant::now() + Duration::from_secs(5);
            let (res, buf) = conn.read_or_evict(buf, later, &evicted).await;
            assert!(res.is_none(), "an eviction was not seen");
            let (found, buf) = crate::detect::read_and_detect(
                &mut conn,
                buf,
                None,
                later,
                Duration::from_secs(5),
                &Eviction::default(),
            )
            .await;
            let found = found.unwrap().expect("not evicted");
            assert_eq!(found.protocol, ringmesh_protocols::detect::Protocol::Http1);
            assert!(buf.starts_with(b"GET / HTTP/1.1\r\n"), "{buf:?}");
            drop(conn);
            finished(server).await;
        });
    }
}
