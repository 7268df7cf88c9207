//! Idle upstream HTTP/1 connections of one worker, per endpoint (address
//! and server identity, [`Endpoint`]).
//!
//! HTTP/1 has no request ids: a response belongs to a request only because
//! it is the next thing read on the connection the request was written to.
//! So a byte an upstream sends that answers no request (a second response,
//! a body on a 204 or a HEAD answer, anything after the response ended)
//! would be taken for the response to whatever request is written next on
//! that connection, possibly another client's. This module keeps that from
//! happening:
//!
//! - [`Pool::release`] takes a connection back after an exchange only when
//!   nothing was read past the response; otherwise the connection is
//!   closed and counted (stray bytes are never parsed as anything).
//! - While a connection sits idle, a receive stays armed on it: on io_uring
//!   the connection's own multishot receive into the worker's
//!   provided-buffer ring ([`UpRead`]: armed when it opens, it also reads
//!   each response head, so reuse submits nothing and cancels nothing; no
//!   buffer is held until a byte arrives), on epoll a non-blocking peek
//!   when the connection is taken. Any byte or EOF makes the connection
//!   dead, whenever it arrives: [`Pool::take`] never returns it, and on
//!   io_uring the worker's [`Pool::reap`] task closes it as soon as the
//!   completion arrives.
//!
//! What no proxy can tell apart: bytes that arrive after the next request
//! was written are indistinguishable from its response.
//!
//! Also here, as the worker's other per-request HTTP/1 state: the pool of
//! request scratch ([`ScratchPool`]: parsed heads and the write buffer, held
//! by a connection only while it has a request in hand) and [`read_more`].
//!
//! Must not: block, or hold a connection with unread bytes in the pool.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::multishot::RecvMulti;
use nix::sys::socket::{recv, MsgFlags};
use ringmesh_admin::telemetry::{ConnMeter, Direction, KeyedState};
use ringmesh_protocols::http1::{RequestHead, ResponseHead};

use crate::config::PoolLimits;
use crate::connect::Endpoint;
use crate::stop::Stop;
use crate::tls::SessionState;
use crate::transport::{DeadlineRead, TransportRd, TransportWr};

/// A connection's halves, client or upstream (plain or TLS).
pub(crate) type Rd = TransportRd;
pub(crate) type Wr = TransportWr;

/// How often the reaper closes expired connections (dead ones it closes as
/// their completion arrives, on io_uring).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// An upstream HTTP/1 connection, kept split so reuse costs nothing.
pub(crate) struct Upstream {
    pub(crate) rd: UpRead,
    pub(crate) wr: Wr,
    /// The TCP socket (under TLS, if any), for `shutdown`; owned by
    /// `rd`/`wr`.
    pub(crate) fd: RawFd,
    /// Taken from the pool (may have been closed by the upstream).
    pub(crate) reused: bool,
    /// Counts this connection in the `peer="dst"` TCP series.
    pub(crate) meter: ConnMeter,
    /// Its endpoint: the pool key (the identity its server proved, its
    /// transport port and gateway name; no HTTP/2 settings).
    pub(crate) key: std::rc::Rc<Endpoint>,
}

/// Something a body or head can be read from, a read at a time.
pub(crate) trait ReadMore {
    /// Appends what arrives to `buf` (grown up to `max` when full); 0 at
    /// EOF; `ECANCELED` when `deadline` passed first.
    async fn read_more(
        &mut self,
        meter: &ConnMeter,
        buf: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> io::Result<usize>;
}

impl ReadMore for Rd {
    async fn read_more(
        &mut self,
        meter: &ConnMeter,
        buf: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        read_more(self, meter, buf, max, deadline).await
    }
}

/// The read half of an upstream connection.
///
/// Plain, on io_uring: one multishot receive is armed when the connection opens
/// and stays armed across requests: it reads each response head (one
/// completion, no receive submitted per request) and, while the connection
/// sits in the pool, it is the idle watch. It is stopped for a response
/// body that did not come with the head (a body streams with plain reads
/// into the connection's buffer, so a slow client holds no ring buffers)
/// and armed again when the connection goes back to the pool.
pub(crate) struct UpRead {
    /// Declared first: cancelled before `rd` closes the socket.
    ring: Ring,
    rd: Rd,
    fd: RawFd,
}

enum Ring {
    /// Receiving into the worker's buffer ring.
    Armed(RecvMulti),
    /// Cancelled: what it got before the cancel is still handed out, then
    /// the socket is read the ordinary way.
    Stopping(RecvMulti),
    /// Plain reads (epoll driver, no ring, stopped, or TLS: a TLS
    /// connection's bytes are read through its session only).
    Off,
}

impl UpRead {
    pub(crate) fn new(rd: TransportRd, fd: RawFd) -> Self {
        let mut me = Self {
            ring: Ring::Off,
            rd,
            fd,
        };
        me.arm();
        me
    }

    /// Arms the receive if none is (no-op without a buffer ring, or for
    /// TLS).
    fn arm(&mut self) {
        if let (Ring::Off, true) = (&self.ring, self.rd.is_plain()) {
            if let Ok(r) = RecvMulti::new(self.fd) {
                self.ring = Ring::Armed(r);
            }
        }
    }

    /// Stops the receive: what follows is read with plain reads.
    pub(crate) fn stop_ring(&mut self) {
        if let Ring::Armed(r) = std::mem::replace(&mut self.ring, Ring::Off) {
            let mut r = r;
            r.cancel();
            self.ring = Ring::Stopping(r);
        }
    }

    /// The read half for a tunnel, read the ordinary way from now on;
    /// bytes the receive had already taken from the socket are appended
    /// to `buf`, in order.
    pub(crate) async fn into_reader(mut self, buf: &mut Vec<u8>) -> TransportRd {
        self.stop_ring();
        while let Ring::Stopping(r) = &mut self.ring {
            match r.next().await {
                Ok(Some(data)) => buf.extend_from_slice(&data),
                // EOF (the plain read sees it again), ECANCELED, or an
                // error the plain read reports again.
                _ => self.ring = Ring::Off,
            }
        }
        let Self { ring, rd, .. } = self;
        drop(ring);
        rd
    }

    /// What arrived while the connection was idle; on io_uring `cx`'s task
    /// is woken when something does.
    fn poll_seen(&mut self, cx: &mut Context<'_>) -> Seen {
        // Bytes already decrypted into a TLS session never show on the
        // socket (its peek sees only what rustls has not read).
        match self.rd.session_state() {
            SessionState::Quiet => {}
            SessionState::Plaintext => return Seen::Bytes,
            SessionState::Closed => return Seen::Closed,
        }
        loop {
            let r = match &mut self.ring {
                Ring::Armed(r) | Ring::Stopping(r) => r,
                Ring::Off => return peek(self.fd),
            };
            let polled = pin!(r.next()).poll(cx);
            match polled {
                Poll::Pending => return Seen::Nothing,
                Poll::Ready(Ok(Some(_))) => return Seen::Bytes,
                Poll::Ready(Ok(None)) => return Seen::Closed,
                // The ring was empty (other connections' receives held its
                // buffers for a moment): nothing was read and the receive
                // is over; what is pending decides, and from now on the
                // connection is watched by peeking until it is reused.
                Poll::Ready(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    self.ring = Ring::Off;
                    return peek(self.fd);
                }
                // A stopped receive has handed out all it got: re-arm.
                Poll::Ready(Err(e)) if e.raw_os_error() == Some(nix::libc::ECANCELED) => {
                    self.ring = Ring::Off;
                    self.arm();
                    if let Ring::Off = self.ring {
                        return peek(self.fd);
                    }
                }
                Poll::Ready(Err(_)) => return Seen::Closed,
            }
        }
    }
}

impl ReadMore for UpRead {
    async fn read_more(
        &mut self,
        meter: &ConnMeter,
        buf: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        loop {
            let r = match &mut self.ring {
                Ring::Armed(r) | Ring::Stopping(r) => r,
                Ring::Off => return read_more(&mut self.rd, meter, buf, max, deadline).await,
            };
            let got = match deadline {
                None => r.next().await,
                Some(d) => match monoio::time::timeout_at(d.into(), r.next()).await {
                    Ok(got) => got,
                    // `next` is cancel-safe: nothing is lost by giving up.
                    Err(_) => return Err(io::Error::from_raw_os_error(nix::libc::ECANCELED)),
                },
            };
            match got {
                Ok(Some(data)) => {
                    buf.extend_from_slice(&data);
                    meter.read(data.len());
                    return Ok(data.len());
                }
                Ok(None) => {
                    self.ring = Ring::Off;
                    return Ok(0);
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    // The ring was empty: one plain read, then receive
                    // again (a stopped receive just ends).
                    let armed = matches!(self.ring, Ring::Armed(_));
                    self.ring = Ring::Off;
                    let n = read_more(&mut self.rd, meter, buf, max, deadline).await;
                    if armed && matches!(n, Ok(1..)) {
                        self.arm();
                    }
                    return n;
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::ECANCELED) => self.ring = Ring::Off,
                Err(e) => {
                    self.ring = Ring::Off;
                    return Err(e);
                }
            }
        }
    }
}

/// What an idle connection's watch saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Nothing,
    /// Bytes no request asked for.
    Bytes,
    /// EOF or an error: the upstream closed it.
    Closed,
}

/// Non-blocking peek: what an idle socket has pending.
fn peek(fd: RawFd) -> Seen {
    let mut probe = [0u8; 1];
    match recv(fd, &mut probe, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Err(nix::errno::Errno::EAGAIN) => Seen::Nothing,
        Ok(n) if n > 0 => Seen::Bytes,
        _ => Seen::Closed,
    }
}

/// An idle connection; its receive (`up.rd`) is the watch.
struct Idle {
    up: Upstream,
    /// When its side's idle timeout closes it.
    expires: Instant,
}

/// Counters of connections the pool refused or closed, read by the
/// worker's stats.
#[derive(Default)]
pub(crate) struct PoolCounters {
    /// Closed because bytes arrived that answered no request.
    pub(crate) stray_bytes: Cell<u64>,
    /// Idle connections the upstream closed.
    pub(crate) closed_idle: Cell<u64>,
}

/// Idle upstream connections per endpoint, owned by one worker.
#[derive(Default)]
pub(crate) struct Pool {
    idle: RefCell<HashMap<std::rc::Rc<Endpoint>, Vec<Idle>, KeyedState>>,
    /// Each side's limits (inbound, outbound), this worker's share.
    limits: [PoolLimits; 2],
    /// The reaper task's waker: new watches report to it.
    reaper: RefCell<Option<Waker>>,
    pub(crate) counters: PoolCounters,
}

impl Pool {
    /// A pool keeping each side's (inbound, outbound) idle connections
    /// within `limits`, whose counts are shared between `workers`
    /// (rounded up).
    pub(crate) fn new(limits: [PoolLimits; 2], workers: usize) -> Self {
        let share = |l: PoolLimits| PoolLimits {
            max_idle: l.max_idle.div_ceil(workers.max(1)),
            ..l
        };
        Self {
            limits: [share(limits[0]), share(limits[1])],
            ..Self::default()
        }
    }

    /// An idle connection to `ep` on which nothing arrived since it was
    /// released. Its receive stays armed: it reads the response.
    pub(crate) fn take(&self, ep: &Endpoint) -> Option<Upstream> {
        let addr = ep.addr;
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(ep)?;
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        while let Some(mut entry) = list.pop() {
            if now >= entry.expires {
                continue;
            }
            let seen = entry.up.rd.poll_seen(&mut cx);
            if self.note(addr, seen) {
                let mut up = entry.up;
                up.reused = true;
                return Some(up);
            }
        }
        None
    }

    /// Gives a connection back after a complete exchange. `leftover` is
    /// what was read from it past the response: if anything, the
    /// connection is closed, never pooled; so it is past `side`'s limit.
    pub(crate) fn release(&self, side: Direction, mut up: Upstream, leftover: &[u8]) {
        let addr = up.key.addr;
        if !leftover.is_empty() {
            self.note(addr, Seen::Bytes);
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let ep = up.key.clone();
        let limits = self.limits[crate::config::side_index(side)];
        let list = idle.entry(ep).or_default();
        if list.len() >= limits.max_idle {
            return;
        }
        up.rd.arm();
        // What arrived already is judged now; the reaper's waker (if it
        // runs) is registered with the receive for what arrives later.
        let seen = match self.reaper.borrow().as_ref() {
            Some(waker) => up.rd.poll_seen(&mut Context::from_waker(waker)),
            None => up.rd.poll_seen(&mut Context::from_waker(Waker::noop())),
        };
        if !self.note(addr, seen) {
            return;
        }
        list.push(Idle {
            up,
            expires: Instant::now() + limits.idle_timeout,
        });
    }

    /// Counts and logs what a watch saw; true when the connection is fine.
    fn note(&self, addr: SocketAddr, seen: Seen) -> bool {
        let c = &self.counters;
        match seen {
            Seen::Nothing => return true,
            Seen::Bytes => {
                c.stray_bytes.set(c.stray_bytes.get() + 1);
                tracing::debug!(upstream = %addr, "upstream sent bytes that answer no request; connection closed");
            }
            Seen::Closed => {
                c.closed_idle.set(c.closed_idle.get() + 1);
                tracing::debug!(upstream = %addr, "idle pooled connection closed by the upstream");
            }
        }
        false
    }

    /// Closes dead and expired idle connections; on io_uring registers
    /// `cx` with every watch, so the next arrival wakes the reaper.
    fn sweep(&self, cx: &mut Context<'_>) {
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        idle.retain(|ep, list| {
            list.retain_mut(|e| now < e.expires && self.note(ep.addr, e.up.rd.poll_seen(cx)));
            !list.is_empty()
        });
    }

    /// The worker's reaper task: closes idle connections as soon as the
    /// upstream sends or closes (io_uring), and expired ones every
    /// [`REAP_INTERVAL`]. Ends, closing every idle connection, when the
    /// worker stops.
    pub(crate) async fn reap(&self, stop: Stop) {
        loop {
            let sweep = std::future::poll_fn(|cx| {
                *self.reaper.borrow_mut() = Some(cx.waker().clone());
                self.sweep(cx);
                Poll::<()>::Pending
            });
            monoio::select! {
                _ = sweep => {}
                _ = monoio::time::sleep(REAP_INTERVAL) => {}
                _ = stop.wait() => break,
            }
        }
        self.clear();
    }

    /// Closes the idle connections to `addr` (whatever their identity);
    /// returns how many.
    pub(crate) fn close_to(&self, addr: SocketAddr) -> usize {
        let mut closed = 0;
        self.idle.borrow_mut().retain(|ep, list| {
            if ep.addr == addr {
                closed += list.len();
                return false;
            }
            true
        });
        closed
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        self.reaper.borrow_mut().take();
        self.idle.borrow_mut().clear();
    }
}

/// Idle per-request states kept per worker (beyond this, freed).
pub(crate) const MAX_IDLE_SCRATCH: usize = 64;

/// A request's working state: parsed heads (which keep their buffers) and
/// the buffer heads are written into.
pub(crate) struct Scratch {
    pub(crate) req: RequestHead,
    pub(crate) resp: ResponseHead,
    pub(crate) out: Vec<u8>,
}

/// A worker's idle [`Scratch`]es: a connection holds one only while it
/// has a request in hand.
#[derive(Default)]
// Boxed: a connection holds its `Scratch` by pointer (cheap to move).
#[allow(clippy::vec_box)]
pub(crate) struct ScratchPool(RefCell<Vec<Box<Scratch>>>);

impl ScratchPool {
    pub(crate) fn take(&self) -> Box<Scratch> {
        self.0.borrow_mut().pop().unwrap_or_else(|| {
            Box::new(Scratch {
                req: RequestHead::new(),
                resp: ResponseHead::new(),
                out: Vec::with_capacity(1024),
            })
        })
    }

    pub(crate) fn put(&self, s: Box<Scratch>) {
        let mut free = self.0.borrow_mut();
        if free.len() < MAX_IDLE_SCRATCH {
            free.push(s);
        }
    }

    /// Frees every idle one (after a burst).
    pub(crate) fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// Appends what `rd` has to `buf`, growing it up to `max` when full; the
/// read is given up at `deadline`.
pub(crate) async fn read_more(
    rd: &mut impl DeadlineRead,
    meter: &ConnMeter,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Option<Instant>,
) -> io::Result<usize> {
    if buf.len() == buf.capacity() {
        let grow = buf
            .capacity()
            .max(4096)
            .min(max.saturating_sub(buf.len()).max(1));
        buf.reserve(grow);
    }
    let len = buf.len();
    let (res, slice) = rd
        .read_until(std::mem::take(buf).slice_mut(len..), deadline)
        .await;
    *buf = slice.into_inner();
    if let Ok(n) = res {
        meter.read(n);
    }
    res
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use ringmesh_identity::Name;

    use crate::config::ConnectConfig;

    use monoio::io::Splitable;
    use monoio::net::TcpStream;

    use super::*;
    use crate::connect::Session;

    /// A loopback pair on an io_uring runtime with a buffer ring: the
    /// proxy's upstream read half and the std "server" side.
    fn with_upstream(f: impl AsyncFnOnce(UpRead, std::net::TcpStream)) {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring (these tests need it)");
        rt.block_on(async {
            monoio::io::multishot::register_buf_ring(8, 4096).expect("a buffer ring");
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (server, _) = l.accept().unwrap();
            let fd = s.as_raw_fd();
            let (rd, wr) = s.into_split();
            let up = UpRead::new(TransportRd::Plain(rd), fd);
            assert!(
                matches!(up.ring, Ring::Armed(_)),
                "no multishot receive armed"
            );
            f(up, server).await;
            drop(wr);
        });
    }

    async fn settle() {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Bytes the receive took before a tunnel starts are handed over, in
    /// order, ahead of what the plain read half reads next.
    #[test]
    fn into_plain_keeps_received_bytes() {
        with_upstream(async |mut up, mut server| {
            let meter = ConnMeter::none();
            let mut buf = Vec::with_capacity(64);
            server.write_all(b"head").unwrap();
            assert_eq!(up.read_more(&meter, &mut buf, 64, None).await.unwrap(), 4);
            // Arrives while nobody reads: only the receive has it.
            server.write_all(b"early").unwrap();
            settle().await;
            let mut rest = Vec::new();
            let mut rd = up.into_reader(&mut rest).await;
            assert_eq!(rest, b"early");
            server.write_all(b"later").unwrap();
            let mut later = Vec::with_capacity(64);
            let n = read_more(&mut rd, &meter, &mut later, 64, None)
                .await
                .unwrap();
            assert_eq!(&later[..n], b"later");
        });
    }

    /// A stopped receive still hands out what it had, then the rest comes
    /// by plain reads; afterwards the connection can be armed again and
    /// its idle watch sees new bytes and EOF.
    #[test]
    fn stop_then_rearm() {
        with_upstream(async |mut up, mut server| {
            let meter = ConnMeter::none();
            let mut buf = Vec::with_capacity(4096);
            server.write_all(b"one").unwrap();
            settle().await;
            up.stop_ring();
            server.write_all(b"two").unwrap();
            let mut got = Vec::new();
            while got.len() < 6 {
                buf.clear();
                let n = up.read_more(&meter, &mut buf, 4096, None).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"onetwo");
            // Back in the pool: armed again (at once, or once the stopped
            // receive has reported its end).
            settle().await;
            up.arm();
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(up.poll_seen(&mut cx), Seen::Nothing);
            assert!(matches!(up.ring, Ring::Armed(_)), "not armed again");
            server.write_all(b"stray").unwrap();
            settle().await;
            assert_eq!(up.poll_seen(&mut cx), Seen::Bytes);
        });
        with_upstream(async |mut up, server| {
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(up.poll_seen(&mut cx), Seen::Nothing);
            drop(server);
            settle().await;
            assert_eq!(up.poll_seen(&mut cx), Seen::Closed);
        });
    }

    /// Each side's count is shared between workers, rounded up; 0 stays
    /// 0 (nothing kept), and idle timeouts are not divided.
    #[test]
    fn limits_are_shared_between_workers() {
        let t = Duration::from_secs(3);
        let lim = |max_idle| PoolLimits {
            max_idle,
            idle_timeout: t,
        };
        let pool = Pool::new([lim(10_000), lim(0)], 3);
        assert_eq!(pool.limits, [lim(3334), lim(0)]);
        assert_eq!(Pool::new([lim(1), lim(5)], 2).limits, [lim(1), lim(3)]);
    }

    /// Pools are keyed by endpoint, identity included: a connection whose
    /// server proved one identity (or none) is never handed out for a
    /// request to the same address that needs another.
    #[test]
    fn connections_are_pooled_per_identity() {
        with_upstream(async |up, _server| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let s = TcpStream::connect(addr).await.unwrap();
            let (_accepted, _) = l.accept().unwrap();
            let (_, wr) = s.into_split();
            let pool = Pool::default();
            let id = Name::parse("web.ns.serviceaccount.identity.linkerd.cluster.local").unwrap();
            let up = Upstream {
                rd: up,
                wr: TransportWr::Plain(wr),
                fd: -1,
                reused: false,
                meter: ConnMeter::none(),
                key: std::rc::Rc::new(Endpoint {
                    identity: Some(id.clone()),
                    ..Endpoint::plain(addr)
                }),
            };
            pool.release(Direction::Outbound, up, &[]);
            let other = Name::parse("db.ns.serviceaccount.identity.linkerd.cluster.local").unwrap();
            assert!(
                pool.take(&Endpoint::plain(addr)).is_none(),
                "plain request got an mTLS connection"
            );
            assert!(
                pool.take(&Endpoint {
                    identity: Some(other),
                    ..Endpoint::plain(addr)
                })
                .is_none(),
                "another identity's connection was reused"
            );
            let taken = pool.take(&Endpoint {
                identity: Some(id.clone()),
                ..Endpoint::plain(addr)
            });
            assert_eq!(taken.map(|u| u.key.identity.clone()), Some(Some(id)));
        });
    }

    /// A TLS upstream's idle watch: bytes rustls already decrypted never
    /// show on the socket, so the session is asked too. Plaintext left in
    /// it (a response longer than it said) makes the connection dead, as
    /// stray bytes on a plain one do; a quiet session does not; the
    /// peer's close_notify is a close.
    #[test]
    fn tls_sessions_are_watched_too() {
        use crate::testing::{both_drivers, finished, TestCa};
        const NAME: &str = "web.ns.serviceaccount.identity.linkerd.cluster.local";
        both_drivers(async || {
            let ca = TestCa::new();
            let cfg = ca.server(NAME);
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let (go_on, wait) = std::sync::mpsc::channel::<()>();
            let server = std::thread::spawn(move || {
                let (sock, _) = l.accept().unwrap();
                let mut tls =
                    rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), sock);
                let mut req = [0u8; 4];
                std::io::Read::read_exact(&mut tls, &mut req).unwrap();
                // The answer and 5 bytes no request asked for, in one record.
                tls.write_all(b"answerEXTRA").unwrap();
                tls.flush().unwrap();
                wait.recv().unwrap();
                tls.conn.send_close_notify();
                tls.flush().unwrap();
                wait.recv().unwrap();
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
            let conn = crate::connect::open(
                &ep,
                &[],
                Some(&ca.configs("c.example")),
                Session::Opaque,
                ConnectConfig::with_timeout(Duration::from_secs(5)),
            )
            .await
            .unwrap();
            let fd = conn.raw_fd();
            let (rd, mut wr) = conn.split();
            let mut up = UpRead::new(rd, fd);
            assert!(
                matches!(up.ring, Ring::Off),
                "a ring receive on a TLS socket"
            );
            use monoio::io::AsyncWriteRentExt;
            wr.write_all(b"ask!".to_vec()).await.0.unwrap();
            let meter = ConnMeter::none();
            let mut buf = Vec::with_capacity(6);
            assert_eq!(up.read_more(&meter, &mut buf, 6, None).await.unwrap(), 6);
            assert_eq!(buf, b"answer");
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(
                up.poll_seen(&mut cx),
                Seen::Bytes,
                "plaintext left in the session"
            );
            let mut rest = Vec::with_capacity(16);
            assert_eq!(up.read_more(&meter, &mut rest, 16, None).await.unwrap(), 5);
            assert_eq!(up.poll_seen(&mut cx), Seen::Nothing);
            go_on.send(()).unwrap();
            // Until the close_notify has crossed loopback (5 s at most).
            let mut seen = Seen::Nothing;
            for _ in 0..500 {
                seen = up.poll_seen(&mut cx);
                if seen != Seen::Nothing {
                    break;
                }
                settle().await;
            }
            assert_eq!(seen, Seen::Bytes, "close_notify on the socket");
            go_on.send(()).unwrap();
            finished(server).await;
        });
    }
}
