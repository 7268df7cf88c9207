//! TLS over a TCP socket on monoio, cancel-safe.
//!
//! The data paths drop read and write futures all the time (a timeout, a
//! `select!` between the two directions, a drain): a plain socket loses
//! nothing when that happens, and a TLS stream must not either. A stream
//! that hands its ciphertext buffer to an io_uring read op loses the
//! buffer, and the bytes in flight, when the op's future is dropped (the
//! next read then fails or, worse, decrypts a gap). So this stream never
//! lends a buffer to the kernel across an await: it waits for readiness
//! (`readable`/`writable`, which lose nothing when dropped) and then moves
//! bytes with non-blocking `recv(2)`/`send(2)` between the socket and the
//! rustls session. Plaintext lives only in the session.
//!
//! Must not: borrow the session across an await, or block.

use std::cell::{Cell, RefCell};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use nix::sys::socket::{recv, send, MsgFlags};
use rustls::{ConnectionCommon, SideData};

/// Plaintext rustls buffers before a write waits for the socket.
const BUFFER_LIMIT: usize = 64 * 1024;

/// A TLS session over a TCP socket (`C`: a rustls client or server
/// connection). Splits into a read and a write half that share the
/// session; each borrows it only between awaits.
pub(crate) struct TlsStream<C> {
    shared: Rc<Shared<C>>,
}

struct Shared<C> {
    sock: TcpStream,
    fd: RawFd,
    session: RefCell<C>,
    /// The last receive emptied the socket (see [`Shared::receive`]).
    drained: Cell<bool>,
}

/// The read half of a [`TlsStream`].
pub(crate) struct TlsRead<C> {
    shared: Rc<Shared<C>>,
}

/// The write half of a [`TlsStream`].
pub(crate) struct TlsWrite<C> {
    shared: Rc<Shared<C>>,
}

/// What a TLS session holds beyond what was read from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionState {
    Quiet,
    /// Decrypted bytes nobody has read.
    Plaintext,
    /// The peer closed (close_notify), or the session failed.
    Closed,
}

/// The socket's non-blocking side, as rustls reads and writes it.
struct Nonblocking(RawFd);

impl io::Read for Nonblocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv(self.0, buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
    }
}

/// [`Nonblocking`] that also notes whether the read drained the socket
/// (it returned less than asked, or nothing yet).
struct Draining<'a>(RawFd, &'a Cell<bool>);

impl io::Read for Draining<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = recv(self.0, buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from);
        self.1.set(match &r {
            Ok(n) => *n < buf.len(),
            Err(e) => would_block(e),
        });
        r
    }
}

impl io::Write for Nonblocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl<C, SD> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Runs the handshake of `session` on `sock` to its end. No timeout
    /// of its own: the caller's (dropping the future is safe).
    pub(crate) async fn handshake(sock: TcpStream, session: C) -> io::Result<Self> {
        Self::accept(sock, session, &[]).await
    }

    /// Like [`TlsStream::handshake`], with `early`: bytes of the peer's
    /// first flight already read off the socket (a ClientHello read to
    /// see its server name), given to the session first.
    pub(crate) async fn accept(sock: TcpStream, mut session: C, early: &[u8]) -> io::Result<Self> {
        session.set_buffer_limit(Some(BUFFER_LIMIT));
        let mut rest = early;
        while !rest.is_empty() {
            let n = session.read_tls(&mut rest)?;
            if n == 0 {
                break;
            }
            session
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        let shared = Shared {
            fd: sock.as_raw_fd(),
            sock,
            session: RefCell::new(session),
            drained: Cell::new(false),
        };
        while shared.session.borrow().is_handshaking() {
            shared.send_pending().await?;
            let wants_read = {
                let s = shared.session.borrow();
                s.is_handshaking() && s.wants_read()
            };
            if wants_read && shared.receive().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                ));
            }
        }
        // The last flight (e.g. the client's Finished).
        shared.send_pending().await?;
        Ok(Self {
            shared: Rc::new(shared),
        })
    }

    /// Runs `f` on the session (between awaits only).
    pub(crate) fn with_session<R>(&self, f: impl FnOnce(&C) -> R) -> R {
        f(&self.shared.session.borrow())
    }

    /// The TCP socket under the session.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.shared.fd
    }

    /// The read and write halves (they share the session).
    pub(crate) fn split(self) -> (TlsRead<C>, TlsWrite<C>) {
        let shared = self.shared;
        (
            TlsRead {
                shared: shared.clone(),
            },
            TlsWrite { shared },
        )
    }
}

impl<C, SD> TlsRead<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Decrypted bytes into `buf`'s spare room, given up at `deadline`
    /// with `ECANCELED` (nothing is lost: the session keeps what arrived).
    pub(crate) async fn read_until<T: IoBufMut>(
        &mut self,
        buf: T,
        deadline: Option<std::time::Instant>,
    ) -> BufResult<usize, T> {
        let stop = async {
            match deadline {
                Some(d) => monoio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        match read_or(&self.shared, buf, stop).await {
            (Some(r), buf) => (r, buf),
            (None, buf) => (Err(io::Error::from_raw_os_error(nix::libc::ECANCELED)), buf),
        }
    }
}

impl<C, SD> TlsRead<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Waits, holding no buffer of the caller's, until the session has
    /// plaintext to read or the peer closed or failed (the read that
    /// follows says which). What arrives meanwhile (a partial record, a
    /// key update) stays in the session.
    pub(crate) async fn wait_plaintext(&self) -> io::Result<()> {
        loop {
            if self.state() != SessionState::Quiet || self.shared.receive().await? == 0 {
                return Ok(());
            }
        }
    }

    /// What the session holds beyond what was read from it (records
    /// already received are processed first).
    pub(crate) fn state(&self) -> SessionState {
        match self.shared.session.borrow_mut().process_new_packets() {
            Ok(io) if io.plaintext_bytes_to_read() > 0 => SessionState::Plaintext,
            Ok(io) if io.peer_has_closed() => SessionState::Closed,
            Ok(_) => SessionState::Quiet,
            Err(_) => SessionState::Closed,
        }
    }
}

impl<C, SD> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Decrypted bytes into `buf`'s spare room, or `None` if `stop`
    /// completes first (nothing is lost: the session keeps what arrived).
    pub(crate) async fn read_or<T: IoBufMut>(
        &mut self,
        buf: T,
        stop: impl std::future::Future<Output = ()>,
    ) -> (Option<io::Result<usize>>, T) {
        read_or(&self.shared, buf, stop).await
    }
}

/// A read into `buf`'s room through `shared`'s session, abandoned (safely:
/// the read only waits for readiness) when `stop` completes first.
async fn read_or<C, SD, T>(
    shared: &Shared<C>,
    mut buf: T,
    stop: impl std::future::Future<Output = ()>,
) -> (Option<io::Result<usize>>, T)
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
    T: IoBufMut,
{
    let res = monoio::select! {
        r = shared.read_plain(spare(&mut buf)) => Some(r),
        _ = stop => None,
    };
    match res {
        Some(r) => {
            let (r, buf) = filled(buf, r);
            (Some(r), buf)
        }
        None => (None, buf),
    }
}

impl<C, SD> Shared<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
    SD: SideData,
{
    /// Writes what the session has queued for the peer, waiting for the
    /// socket as needed.
    async fn send_pending(&self) -> io::Result<()> {
        loop {
            let res = {
                let mut s = self.session.borrow_mut();
                if !s.wants_write() {
                    return Ok(());
                }
                s.write_tls(&mut Nonblocking(self.fd))
            };
            match res {
                Ok(_) => {}
                Err(e) if would_block(&e) => self.sock.writable(false).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads ciphertext from the socket into the session (waiting for
    /// it) and processes it; 0 at EOF. Alerts or key updates the session
    /// has to answer are sent when the socket takes them.
    async fn receive(&self) -> io::Result<usize> {
        // The last read left the socket empty: a receive now would most
        // likely say EAGAIN, a syscall for nothing. Wait for readiness first
        // (an io_uring poll, batched with the loop's other operations).
        if self.drained.get() {
            self.sock.readable(false).await?;
        }
        loop {
            let res = {
                let mut s = self.session.borrow_mut();
                match s.read_tls(&mut Draining(self.fd, &self.drained)) {
                    Ok(n) => {
                        let processed = s.process_new_packets();
                        // Best effort: an alert explaining a failure, or
                        // an answer to the peer; a full socket leaves it
                        // queued.
                        let _ = s.write_tls(&mut Nonblocking(self.fd));
                        processed
                            .map(|_| n)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                    }
                    Err(e) => Err(e),
                }
            };
            match res {
                Err(e) if would_block(&e) => self.sock.readable(false).await?,
                r => return r,
            }
        }
    }

    /// Plaintext the session already holds, into `dst`.
    fn take_plain(&self, dst: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.session.borrow_mut().reader(), dst)
    }

    /// Decrypted bytes into `dst`; 0 at the peer's close_notify.
    async fn read_plain(&self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.take_plain(dst) {
                Ok(n) => return Ok(n),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
            if self.receive().await? == 0 {
                // EOF without close_notify: what is still buffered, else
                // the truncation is an error.
                return match self.take_plain(dst) {
                    Err(e) if would_block(&e) => Err(io::ErrorKind::UnexpectedEof.into()),
                    r => r,
                };
            }
        }
    }

    /// Encrypts as much of `src` as the session buffers and sends it.
    async fn write_plain(&self, src: &[&[u8]]) -> io::Result<usize> {
        // Earlier output first, so the session's buffer has room.
        self.send_pending().await?;
        let mut n = 0;
        {
            let mut s = self.session.borrow_mut();
            for part in src {
                let took = io::Write::write(&mut s.writer(), part)?;
                n += took;
                if took < part.len() {
                    break;
                }
            }
        }
        self.send_pending().await?;
        Ok(n)
    }

    async fn shutdown(&self) -> io::Result<()> {
        self.session.borrow_mut().send_close_notify();
        self.send_pending().await?;
        match nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Write) {
            // The peer is gone already: nothing left to shut.
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// `buf`'s room as an initialised slice (zeroed first).
fn spare<T: IoBufMut>(buf: &mut T) -> &mut [u8] {
    let total = buf.bytes_total();
    // SAFETY: `write_ptr` is valid for `bytes_total` bytes while `buf` is
    // borrowed; they are zeroed first, so the slice is initialised.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::write_bytes(buf.write_ptr(), 0, total);
        std::slice::from_raw_parts_mut(buf.write_ptr(), total)
    }
}

/// `buf` with the `n` bytes a read put in it marked initialised.
fn filled<T: IoBufMut>(mut buf: T, res: io::Result<usize>) -> BufResult<usize, T> {
    if let Ok(n) = res {
        // SAFETY: `n` bytes were written (and the whole room initialised).
        #[allow(unsafe_code)]
        unsafe {
            buf.set_init(n)
        };
    }
    (res, buf)
}

/// `buf`'s bytes as a slice.
fn bytes<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: `read_ptr` is valid for `bytes_init` initialised bytes
    // while `buf` is borrowed.
    #[allow(unsafe_code)]
    unsafe {
        std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init())
    }
}

/// The first non-empty buffer of `buf`'s iovecs, as [`spare`] gives it.
fn first_spare<T: IoVecBufMut>(buf: &mut T) -> Option<&mut [u8]> {
    let (ptr, len) = (buf.write_iovec_ptr(), buf.write_iovec_len());
    // SAFETY: the iovecs and the memory they point to are valid while
    // `buf` is borrowed; zeroed before use.
    #[allow(unsafe_code)]
    unsafe {
        std::slice::from_raw_parts(ptr, len)
            .iter()
            .find(|v| v.iov_len > 0)
            .map(|v| {
                let p = v.iov_base as *mut u8;
                std::ptr::write_bytes(p, 0, v.iov_len);
                std::slice::from_raw_parts_mut(p, v.iov_len)
            })
    }
}

/// `buf`'s iovecs as slices.
fn iovec_bytes<T: IoVecBuf>(buf: &T) -> Vec<&[u8]> {
    // SAFETY: the iovecs, and the initialised bytes they point to, are
    // valid while `buf` is borrowed.
    #[allow(unsafe_code)]
    unsafe {
        std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len())
            .iter()
            .map(|v| std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len))
            .collect()
    }
}

macro_rules! tls_read {
    ($t:ident) => {
        impl<C, SD> AsyncReadRent for $t<C>
        where
            C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
            SD: SideData,
        {
            async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
                let res = self.shared.read_plain(spare(&mut buf)).await;
                filled(buf, res)
            }

            async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
                // Into the first non-empty buffer (a short read is allowed).
                let res = match first_spare(&mut buf) {
                    Some(dst) => self.shared.read_plain(dst).await,
                    None => Ok(0),
                };
                if let Ok(n) = res {
                    // SAFETY: `n` bytes were written at the iovecs' start.
                    #[allow(unsafe_code)]
                    unsafe {
                        buf.set_init(n)
                    };
                }
                (res, buf)
            }
        }
    };
}

macro_rules! tls_write {
    ($t:ident) => {
        impl<C, SD> AsyncWriteRent for $t<C>
        where
            C: DerefMut + Deref<Target = ConnectionCommon<SD>>,
            SD: SideData,
        {
            async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
                let res = self.shared.write_plain(&[bytes(&buf)]).await;
                (res, buf)
            }

            async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
                let res = self.shared.write_plain(&iovec_bytes(&buf)).await;
                (res, buf)
            }

            async fn flush(&mut self) -> io::Result<()> {
                self.shared.send_pending().await
            }

            /// Sends close_notify, then shuts the socket's write side.
            async fn shutdown(&mut self) -> io::Result<()> {
                self.shared.shutdown().await
            }
        }
    };
}

tls_read!(TlsStream);
tls_read!(TlsRead);
tls_write!(TlsStream);
tls_write!(TlsWrite);

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::testing::{both_drivers, finished, TestCa};

    /// A client session to `server.example` at `addr`, handshaken.
    async fn connect(
        addr: std::net::SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
    ) -> io::Result<TlsStream<rustls::ClientConnection>> {
        let sock = TcpStream::connect_addr(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("server.example").unwrap();
        let session = rustls::ClientConnection::new(cfg, name).unwrap();
        TlsStream::handshake(sock, session).await
    }

    type Peer = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

    /// A blocking rustls server on loopback running `serve` on its one
    /// connection, in a thread.
    fn tls_peer<T: Send + 'static>(
        cfg: Arc<rustls::ServerConfig>,
        serve: impl FnOnce(Peer) -> T + Send + 'static,
    ) -> (std::net::SocketAddr, thread::JoinHandle<T>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            serve(rustls::StreamOwned::new(
                rustls::ServerConnection::new(cfg).unwrap(),
                sock,
            ))
        });
        (addr, t)
    }

    fn configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let ca = TestCa::new();
        (ca.client("client.example"), ca.server("server.example"))
    }

    /// Reads cut short by a timeout, again and again while the peer
    /// trickles a megabyte in small records, lose no byte: every byte
    /// arrives once, in order (a read that lent its buffer to the kernel
    /// would lose what was in flight, or fail the next read).
    #[test]
    fn cancelled_reads_lose_nothing() {
        both_drivers(async || {
            let (client_cfg, server_cfg) = configs();
            let (addr, server) = tls_peer(server_cfg, move |mut tls| {
                let mut i = 0u32;
                for chunk in 0..256u32 {
                    let data: Vec<u8> = (0..4096)
                        .map(|k| ((chunk * 4096 + k) % 251) as u8)
                        .collect();
                    tls.write_all(&data).unwrap();
                    tls.flush().unwrap();
                    i += 1;
                    if chunk % 16 == 0 {
                        thread::sleep(Duration::from_millis(10));
                    }
                }
                tls.conn.send_close_notify();
                tls.flush().unwrap();
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest);
                i
            });
            let mut tls = connect(addr, client_cfg).await.unwrap();
            let mut got = Vec::with_capacity(1 << 20);
            let mut cancelled = 0;
            loop {
                let read = tls.read(Vec::with_capacity(1500));
                match monoio::time::timeout(Duration::from_micros(200), read).await {
                    Err(_) => cancelled += 1,
                    Ok((Ok(0), _)) => break,
                    Ok((Ok(n), buf)) => got.extend_from_slice(&buf[..n]),
                    Ok((Err(e), _)) => panic!("read failed after {} bytes: {e}", got.len()),
                }
            }
            assert_eq!(got.len(), 256 * 4096);
            assert!(
                got.iter().enumerate().all(|(k, b)| *b == (k % 251) as u8),
                "bytes out of order"
            );
            assert!(
                cancelled > 0,
                "no read was cut short; the test proves nothing"
            );
            drop(tls);
            assert_eq!(finished(server).await, 256);
        });
    }

    /// The halves work at once: a read waits (and is given up at its
    /// deadline without losing anything) while the write half sends, and
    /// the echo comes back through the read half.
    #[test]
    fn halves_read_and_write_at_once() {
        both_drivers(async || {
            let (client_cfg, server_cfg) = configs();
            let (addr, server) = tls_peer(server_cfg, move |mut tls| {
                let mut buf = [0u8; 5];
                tls.read_exact(&mut buf).unwrap();
                thread::sleep(Duration::from_millis(100));
                tls.write_all(&buf).unwrap();
                tls.flush().unwrap();
            });
            let (mut rd, mut wr) = connect(addr, client_cfg).await.unwrap().split();
            let soon = std::time::Instant::now() + Duration::from_millis(30);
            let (res, buf) = rd.read_until(Vec::with_capacity(16), Some(soon)).await;
            let e = res.expect_err("nothing was sent yet");
            assert_eq!(e.raw_os_error(), Some(nix::libc::ECANCELED));
            let reading = rd.read_until(buf, None);
            let writing = async {
                wr.write(b"hello".to_vec()).await.0.unwrap();
            };
            let ((res, buf), ()) = monoio::join!(reading, writing);
            assert_eq!((res.unwrap(), &buf[..]), (5, &b"hello"[..]));
            wr.shutdown().await.unwrap();
            finished(server).await;
        });
    }

    /// A peer that is not TLS: the handshake fails with a clear error
    /// (no hang, no panic).
    #[test]
    fn garbage_instead_of_a_handshake_fails() {
        both_drivers(async || {
            let (client_cfg, _) = configs();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (mut sock, _) = l.accept().unwrap();
                sock.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
                let mut rest = Vec::new();
                let _ = sock.read_to_end(&mut rest);
            });
            let e = connect(addr, client_cfg)
                .await
                .err()
                .expect("not TLS, yet a handshake");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            finished(server).await;
        });
    }
}
