//! The opaque TCP relay: bytes both ways between two connected sockets.
//!
//! - Each direction writes out what it read before it reads again (no
//!   unbounded buffering; a slow reader slows the writer).
//! - On io_uring, with the worker's provided-buffer ring registered, a
//!   direction receives with one multishot receive: armed once, the kernel
//!   fills a ring buffer per arrival, and the buffer goes back to the ring
//!   once written. At most the ring's buffers are ever filled and unsent per
//!   worker; the kernel stops the receive when the ring is empty (`ENOBUFS`),
//!   and the direction reads once into its own buffer and re-arms. A read
//!   that fills a buffer marks a bulk transfer: the receive is cancelled and
//!   the direction continues with plain reads (below).
//! - Otherwise (epoll, no ring, bulk) each direction reads into its own
//!   reused buffer, switching once to a bigger one for bulk transfers.
//! - A FIN in one direction is forwarded as a write shutdown on the other
//!   socket; the other direction keeps flowing until it ends too.
//! - An error in either direction, or no bytes either way for the idle
//!   timeout, shuts both sockets down so the whole relay ends promptly.
//!
//! Two variants: [`relay`] copies through two reused user-space buffers (the
//! default), [`relay_splice`] moves bytes with `splice(2)` through pipes.
//! Which one wins is measured in `bench/scripts/tcp-forward.sh` (README,
//! Performance); the engine picks with `RINGMESH_TCP_SPLICE`.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::multishot::RecvMulti;
use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::unix::{new_pipe, Pipe};
use monoio::net::TcpStream;
use nix::sys::socket::{shutdown, Shutdown};

/// What one relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes read from the client and written to the server.
    pub client_to_server: u64,
    /// Bytes read from the server and written to the client.
    pub server_to_client: u64,
    pub end: RelayEnd,
}

/// A worker's running counts of how its relays received, and its budget
/// for bulk buffers (shared by all its relays; single threaded).
#[derive(Debug)]
pub struct RelayCounters {
    /// Reads delivered by a multishot receive into the buffer ring.
    pub ring_receives: Cell<u64>,
    /// Times the ring was empty (`ENOBUFS`) and a read went into the
    /// connection's own buffer instead.
    pub ring_exhausted: Cell<u64>,
    /// Bytes of bulk buffers the worker's relays hold now...
    pub bulk_bytes: Cell<usize>,
    /// ... and the most they may hold (`RINGMESH_TCP_BULK_MEMORY`, the
    /// worker's share): past it a bulk transfer keeps its small buffer, so
    /// many clients pushing bulk at once cannot make the worker allocate a
    /// bulk buffer each.
    pub bulk_limit: Cell<usize>,
    /// Bulk transfers that kept their small buffer for the limit (counted
    /// once per direction).
    pub bulk_refused: Cell<u64>,
}

impl Default for RelayCounters {
    fn default() -> Self {
        Self {
            ring_receives: Cell::new(0),
            ring_exhausted: Cell::new(0),
            bulk_bytes: Cell::new(0),
            bulk_limit: Cell::new(usize::MAX),
            bulk_refused: Cell::new(0),
        }
    }
}

impl RelayCounters {
    fn add(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }

    /// Takes `n` bytes of the bulk budget, if they are left.
    fn take_bulk(&self, n: usize) -> bool {
        let now = self.bulk_bytes.get();
        match now.checked_add(n) {
            Some(after) if after <= self.bulk_limit.get() => {
                self.bulk_bytes.set(after);
                true
            }
            _ => false,
        }
    }

    fn give_bulk(&self, n: usize) {
        self.bulk_bytes.set(self.bulk_bytes.get().saturating_sub(n));
    }
}

/// Why a relay ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their write side cleanly.
    #[default]
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The client side failed (reset, broken pipe, ...).
    ClientError(io::ErrorKind),
    /// The server side failed.
    ServerError(io::ErrorKind),
}

/// Relays until both directions are done. `bufs.0` may already hold bytes
/// read from the client (during protocol detection): they are sent to the
/// server first. Returns the buffers so the caller can pool them.
///
/// `first_response` is told, once, how long the server took to send its
/// first bytes: from the client's first bytes reaching it (or from the
/// start, for a server that speaks first). The balancer learns the
/// endpoint's latency from it.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    bufs: (Vec<u8>, Vec<u8>),
    idle_timeout: Duration,
    bulk_buffer: usize,
    first_response: &dyn Fn(Duration),
    counters: &RelayCounters,
) -> (RelayStats, (Vec<u8>, Vec<u8>)) {
    let fds = [client.as_raw_fd(), server.as_raw_fd()];
    let now = Instant::now();
    let activity = Activity {
        last: Cell::new(now),
        idle_fired: Cell::new(false),
        start: now,
        first_up: Cell::new(None),
        first_response: Cell::new(Some(first_response)),
        counters: Some(counters),
    };
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();

    let up = copy_one_way(
        client_rd,
        server_wr,
        bufs.0,
        bulk_buffer,
        &activity,
        fds,
        Dir::Up,
    );
    let down = copy_one_way(
        server_rd,
        client_wr,
        bufs.1,
        bulk_buffer,
        &activity,
        fds,
        Dir::Down,
    );
    let idle = idle_watch(&activity, idle_timeout, fds);

    // `idle` never completes: when it fires it shuts both sockets down, which
    // ends both copies; dropping it when they end cancels its timer.
    let both = async { monoio::join!(up, down) };
    let ((up_n, up_res, buf0), (down_n, down_res, buf1)) = monoio::select! {
        r = both => r,
        never = idle => match never {},
    };
    (
        RelayStats {
            client_to_server: up_n,
            server_to_client: down_n,
            end: relay_end(&activity, up_res, down_res),
        },
        (buf0, buf1),
    )
}

/// The two pipes a spliced relay moves bytes through (four fds).
pub struct SplicePipes {
    up: (Pipe, Pipe),
    down: (Pipe, Pipe),
}

impl SplicePipes {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            up: new_pipe()?,
            down: new_pipe()?,
        })
    }
}

/// Like [`relay`], but moves bytes socket → pipe → socket with `splice(2)`,
/// never through user space. `prefix` (bytes already read from the client)
/// is written to the server first and handed back for pooling.
/// `first_response` is told the server's first-byte latency as in [`relay`].
pub async fn relay_splice(
    client: TcpStream,
    server: TcpStream,
    pipes: SplicePipes,
    prefix: Vec<u8>,
    idle_timeout: Duration,
    first_response: &dyn Fn(Duration),
) -> (RelayStats, Vec<u8>) {
    let SplicePipes {
        up: up_pipe,
        down: down_pipe,
    } = pipes;
    let fds = [client.as_raw_fd(), server.as_raw_fd()];
    let now = Instant::now();
    let activity = Activity {
        last: Cell::new(now),
        idle_fired: Cell::new(false),
        start: now,
        first_up: Cell::new(None),
        first_response: Cell::new(Some(first_response)),
        counters: None,
    };
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let up = async {
        let mut server_wr = server_wr;
        let mut sent = 0;
        let mut prefix = prefix;
        if !prefix.is_empty() {
            let n = prefix.len() as u64;
            activity.moved(Dir::Up);
            let (res, p) = server_wr.write_all(prefix).await;
            prefix = p;
            if let Err(e) = res {
                abort(fds);
                return (0, Err(Side::Write(e.kind())), prefix);
            }
            sent = n;
        }
        let (n, res) = splice_one_way(client_rd, server_wr, up_pipe, &activity, fds, Dir::Up).await;
        (sent + n, res, prefix)
    };
    let down = splice_one_way(server_rd, client_wr, down_pipe, &activity, fds, Dir::Down);
    let idle = idle_watch(&activity, idle_timeout, fds);
    let both = async { monoio::join!(up, down) };
    let ((up_n, up_res, prefix), (down_n, down_res)) = monoio::select! {
        r = both => r,
        never = idle => match never {},
    };
    (
        RelayStats {
            client_to_server: up_n,
            server_to_client: down_n,
            end: relay_end(&activity, up_res, down_res),
        },
        prefix,
    )
}

fn relay_end(activity: &Activity<'_>, up: Result<(), Side>, down: Result<(), Side>) -> RelayEnd {
    match (up, down) {
        _ if activity.idle_fired.get() => RelayEnd::Idle,
        (Err(Side::Read(k)), _) | (_, Err(Side::Write(k))) => RelayEnd::ClientError(k),
        (Err(Side::Write(k)), _) | (_, Err(Side::Read(k))) => RelayEnd::ServerError(k),
        (Ok(()), Ok(())) => RelayEnd::Closed,
    }
}

/// A pipe's default capacity: one splice in moves at most this much.
const PIPE_CHUNK: u32 = 64 * 1024;

async fn splice_one_way<R, W>(
    mut rd: R,
    mut wr: W,
    (mut pipe_rd, mut pipe_wr): (Pipe, Pipe),
    activity: &Activity<'_>,
    fds: [RawFd; 2],
    dir: Dir,
) -> (u64, Result<(), Side>)
where
    R: SpliceSource,
    W: SpliceDestination + AsyncWriteRent,
{
    let mut total = 0u64;
    loop {
        let n = match rd.splice_to_pipe(&mut pipe_wr, PIPE_CHUNK).await {
            Ok(0) => {
                let _ = wr.shutdown().await;
                return (total, Ok(()));
            }
            Ok(n) => n,
            Err(e) => {
                abort(fds);
                return (total, Err(Side::Read(e.kind())));
            }
        };
        activity.moved(dir);
        // Drain the pipe completely before reading more: the pipe is the
        // only buffer, so a slow writer holds the reader back.
        let mut left = n;
        while left > 0 {
            match wr.splice_from_pipe(&mut pipe_rd, left).await {
                Ok(0) => {
                    abort(fds);
                    return (total, Err(Side::Write(io::ErrorKind::WriteZero)));
                }
                Ok(m) => left -= m,
                Err(e) => {
                    abort(fds);
                    return (total, Err(Side::Write(e.kind())));
                }
            }
        }
        total += u64::from(n);
    }
}

struct Activity<'a> {
    last: Cell<Instant>,
    idle_fired: Cell<bool>,
    start: Instant,
    /// When the client's first bytes went to the server.
    first_up: Cell<Option<Instant>>,
    /// Told of the server's first bytes; taken when called.
    first_response: Cell<Option<&'a dyn Fn(Duration)>>,
    /// The worker's receive counters (copying relays only).
    counters: Option<&'a RelayCounters>,
}

impl Activity<'_> {
    /// `n` bytes were read in direction `dir`.
    fn moved(&self, dir: Dir) {
        let now = Instant::now();
        self.last.set(now);
        match dir {
            Dir::Up => {
                if self.first_up.get().is_none() {
                    self.first_up.set(Some(now));
                }
            }
            Dir::Down => {
                if let Some(tell) = self.first_response.take() {
                    let from = self.first_up.get().unwrap_or(self.start);
                    tell(now.saturating_duration_since(from));
                }
            }
        }
    }
}

/// Which way a copy moves bytes.
#[derive(Clone, Copy)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

enum Never {}

enum Side {
    Read(io::ErrorKind),
    Write(io::ErrorKind),
}

/// Copies one direction. A read that fills the buffer marks a bulk
/// transfer: the direction switches once to a `bulk_buffer`-sized buffer
/// (fewer reads and writes per byte: bulk throughput through the proxy
/// doubled with 256 KiB, see README "Performance"), while request/response
/// traffic keeps the small pooled one. The pooled buffer is what is returned.
async fn copy_one_way<R: AsyncReadRent, W: AsyncWriteRent>(
    mut rd: R,
    mut wr: W,
    buf: Vec<u8>,
    bulk_buffer: usize,
    activity: &Activity<'_>,
    fds: [RawFd; 2],
    dir: Dir,
) -> (u64, Result<(), Side>, Vec<u8>) {
    // The bulk buffer (if any) is freed here; the pooled one goes back.
    let (total, res, _bulk, pooled) =
        copy_loop(&mut rd, &mut wr, buf, bulk_buffer, activity, fds, dir).await;
    (total, res, pooled)
}

async fn copy_loop<R: AsyncReadRent, W: AsyncWriteRent>(
    rd: &mut R,
    wr: &mut W,
    mut buf: Vec<u8>,
    bulk_buffer: usize,
    activity: &Activity<'_>,
    fds: [RawFd; 2],
    dir: Dir,
) -> (u64, Result<(), Side>, Vec<u8>, Vec<u8>) {
    let mut pooled: Option<Vec<u8>> = None;
    let mut total = 0u64;
    // A bulk buffer is taken from the worker's budget (without counters:
    // none) and given back when the direction ends; refused, the direction
    // goes on with its small buffer and asks again at its next full read.
    let mut refused = false;
    let mut to_bulk = |buf: &mut Vec<u8>, pooled: &mut Option<Vec<u8>>| {
        if pooled.is_some() || bulk_buffer <= buf.capacity() {
            return;
        }
        if let Some(c) = activity.counters {
            if !c.take_bulk(bulk_buffer) {
                if !std::mem::replace(&mut refused, true) {
                    RelayCounters::add(&c.bulk_refused);
                }
                return;
            }
        }
        *pooled = Some(std::mem::replace(buf, Vec::with_capacity(bulk_buffer)));
    };
    macro_rules! done {
        ($res:expr) => {{
            let (used, pooled) = match pooled {
                Some(p) => {
                    if let Some(c) = activity.counters {
                        c.give_bulk(bulk_buffer);
                    }
                    (buf, p)
                }
                None => (Vec::new(), buf),
            };
            return (total, $res, used, pooled);
        }};
    }
    // Bytes already read (during protocol detection) go out first.
    if !buf.is_empty() {
        let n = buf.len() as u64;
        activity.moved(dir);
        let (res, b) = wr.write_all(buf).await;
        buf = b;
        if let Err(e) = res {
            abort(fds);
            done!(Err(Side::Write(e.kind())));
        }
        total = n;
    }
    // Small reads go through the worker's multishot receive while it has
    // one; a bulk transfer (or anything it cannot do) continues below.
    match copy_multishot(rd, wr, &mut buf, bulk_buffer, activity, fds, dir).await {
        Multishot::Done(n, res) => {
            total += n;
            done!(res)
        }
        Multishot::Bulk(n) => {
            total += n;
            to_bulk(&mut buf, &mut pooled);
        }
        Multishot::Unavailable => {}
    }
    loop {
        match copy_once(rd, wr, &mut buf, activity, fds, dir).await {
            Ok(n) => {
                total += n as u64;
                if n == buf.capacity() {
                    to_bulk(&mut buf, &mut pooled);
                }
            }
            Err(end) => done!(end),
        }
    }
}

/// One plain read into `buf` and its write. `Ok(n)`: `n` bytes moved (a
/// read that filled `buf` has `n == buf.capacity()`); `Err(end)`: the
/// direction is over — EOF passed on as a write shutdown (half-close: the
/// other direction stays open), or an error after both sockets were shut
/// down.
async fn copy_once<R: AsyncReadRent, W: AsyncWriteRent>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut Vec<u8>,
    activity: &Activity<'_>,
    fds: [RawFd; 2],
    dir: Dir,
) -> Result<usize, Result<(), Side>> {
    buf.clear();
    let (res, b) = rd.read(std::mem::take(buf)).await;
    *buf = b;
    let n = match res {
        Ok(0) => {
            let _ = wr.shutdown().await;
            return Err(Ok(()));
        }
        Ok(n) => n,
        Err(e) => {
            abort(fds);
            return Err(Err(Side::Read(e.kind())));
        }
    };
    activity.moved(dir);
    let (res, b) = wr.write_all(std::mem::take(buf)).await;
    *buf = b;
    if let Err(e) = res {
        abort(fds);
        return Err(Err(Side::Write(e.kind())));
    }
    Ok(n)
}

/// How the multishot phase of one direction ended.
enum Multishot {
    /// The direction is over (EOF passed on, or an error): bytes moved and
    /// how it ended.
    Done(u64, Result<(), Side>),
    /// A read filled a whole buffer: go on with ordinary reads into a bulk
    /// buffer (the receive was cancelled and everything it got was sent).
    Bulk(u64),
    /// No buffer ring on this worker (epoll driver, old kernel, disabled).
    Unavailable,
}

/// Copies one direction with a multishot receive into the worker's buffer
/// ring: armed once, one completion per arrival, no poll re-arming or
/// submission per read, and no buffer held by an idle connection. When the
/// ring runs dry (`ENOBUFS`) one read goes into the connection's own buffer
/// and the receive is re-armed.
#[allow(clippy::too_many_arguments)]
async fn copy_multishot<R: AsyncReadRent, W: AsyncWriteRent>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut Vec<u8>,
    bulk_buffer: usize,
    activity: &Activity<'_>,
    fds: [RawFd; 2],
    dir: Dir,
) -> Multishot {
    let fd = match dir {
        Dir::Up => fds[0],
        Dir::Down => fds[1],
    };
    // Fails without a ring (epoll driver, old kernel, disabled).
    let Ok(mut rx) = RecvMulti::new(fd) else {
        return Multishot::Unavailable;
    };
    let mut total = 0u64;
    let mut bulk = false;
    loop {
        let data = match rx.next().await {
            Ok(Some(data)) => data,
            Ok(None) => {
                let _ = wr.shutdown().await;
                return Multishot::Done(total, Ok(()));
            }
            Err(e) if bulk && e.raw_os_error() == Some(nix::libc::ECANCELED) => {
                return Multishot::Bulk(total);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                if let Some(c) = activity.counters {
                    RelayCounters::add(&c.ring_exhausted);
                }
                let n = match copy_once(rd, wr, buf, activity, fds, dir).await {
                    Ok(n) => n,
                    Err(end) => return Multishot::Done(total, end),
                };
                total += n as u64;
                if n == buf.capacity() || rx.rearm().is_err() {
                    return Multishot::Bulk(total);
                }
                continue;
            }
            Err(e) => {
                abort(fds);
                return Multishot::Done(total, Err(Side::Read(e.kind())));
            }
        };
        activity.moved(dir);
        if let Some(c) = activity.counters {
            RelayCounters::add(&c.ring_receives);
        }
        let n = data.len();
        if !bulk && n == data.capacity() && bulk_buffer > n {
            // Bulk: stop the receive; what it already got still comes
            // through `next` (in order) before it reports the cancel.
            bulk = true;
            rx.cancel();
        }
        // The buffer goes back to the ring when the write hands it back.
        let (res, _) = wr.write_all(data).await;
        if let Err(e) = res {
            abort(fds);
            return Multishot::Done(total, Err(Side::Write(e.kind())));
        }
        total += n as u64;
    }
}

/// Ends both directions: pending reads return EOF, writes fail.
fn abort(fds: [RawFd; 2]) {
    for fd in fds {
        // ENOTCONN when the peer already went away is fine.
        let _ = shutdown(fd, Shutdown::Both);
    }
}

async fn idle_watch(activity: &Activity<'_>, timeout: Duration, fds: [RawFd; 2]) -> Never {
    loop {
        let deadline = activity.last.get() + timeout;
        let now = Instant::now();
        if now >= deadline {
            activity.idle_fired.set(true);
            abort(fds);
            std::future::pending::<()>().await;
        }
        monoio::time::sleep(deadline - now).await;
    }
}
