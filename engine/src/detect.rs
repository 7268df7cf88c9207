//! Reading a client's first bytes until protocol detection decides, bounded
//! by the detect timeout (or, for a partial HTTP/1 request, the header-read
//! timeout) and by eviction; and, when an upstream connection was opened
//! early, waiting for whichever side speaks first. Nothing is lost: the
//! bytes read are handed back for the chosen protocol path to send on.

use std::io;
use std::time::{Duration, Instant};

use crate::undecided::Eviction;
use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use ringmesh_protocols::detect::{detect, stalled, Detection, Protocol};

/// Why detection stopped without a verdict from the bytes themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Undecided {
    /// The timeout passed (e.g. a server-speaks-first protocol).
    Timeout,
    /// The client half-closed before deciding.
    Eof,
    /// The buffer filled without a verdict.
    Full,
}

/// What detection found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Detected {
    /// When `undecided` is set, [`stalled`]'s verdict on the bytes read.
    pub protocol: Protocol,
    pub undecided: Option<Undecided>,
    /// When the client's first byte arrived: an HTTP/1 request head must be
    /// complete within the header-read timeout of it.
    pub first_byte: Option<Instant>,
}

/// Reads into `buf` (which may already hold bytes that arrived at
/// `first_byte`) until the prefix decides, the client stops sending, or
/// `deadline` passes. Bytes that can only be the start of an HTTP/1 request
/// are bounded by `header_timeout` from their first byte instead, when
/// that is sooner: the HTTP/1 server then answers 408 at once. `Ok(None)`:
/// evicted (too many undecided connections).
pub(crate) async fn read_and_detect(
    client: &mut impl EvictableRead,
    mut buf: Vec<u8>,
    mut first_byte: Option<Instant>,
    detect_deadline: Instant,
    header_timeout: Duration,
    eviction: &Eviction,
) -> (io::Result<Option<Detected>>, Vec<u8>) {
    let undecided = |why, buf: &[u8], first_byte| {
        Ok(Some(Detected {
            protocol: stalled(buf),
            undecided: Some(why),
            first_byte,
        }))
    };
    loop {
        let mut deadline = detect_deadline;
        if let Some(first) = first_byte {
            if let Detection::Decided(protocol) = detect(&buf) {
                let found = Detected {
                    protocol,
                    undecided: None,
                    first_byte,
                };
                return (Ok(Some(found)), buf);
            }
            if stalled(&buf) == Protocol::Http1 {
                deadline = deadline.min(first + header_timeout);
            }
        }
        if buf.len() == buf.capacity() {
            return (undecided(Undecided::Full, &buf, first_byte), buf);
        }
        let len = buf.len();
        let (res, slice) = client
            .read_or_evict(buf.slice_mut(len..), deadline, eviction)
            .await;
        buf = slice.into_inner();
        match res {
            Some(Ok(0)) => return (undecided(Undecided::Eof, &buf, first_byte), buf),
            Some(Ok(_)) => {
                first_byte.get_or_insert_with(Instant::now);
            }
            Some(Err(e)) if is_cancelled(&e) => {
                return (undecided(Undecided::Timeout, &buf, first_byte), buf)
            }
            Some(Err(e)) => return (Err(e), buf),
            None => return (Ok(None), buf),
        }
    }
}

/// A connection detection reads from.
pub(crate) trait EvictableRead {
    /// [`read_until`] that also gives up when `eviction` fires (`None`).
    async fn read_or_evict<T: IoBufMut>(
        &mut self,
        buf: T,
        deadline: Instant,
        eviction: &Eviction,
    ) -> (Option<io::Result<usize>>, T);
}

impl EvictableRead for TcpStream {
    async fn read_or_evict<T: IoBufMut>(
        &mut self,
        buf: T,
        deadline: Instant,
        eviction: &Eviction,
    ) -> (Option<io::Result<usize>>, T) {
        read_or_evict(self, buf, deadline, eviction).await
    }
}

/// [`read_until`] that also gives up when `eviction` fires (`None`).
async fn read_or_evict<T: IoBufMut>(
    rd: &mut TcpStream,
    buf: T,
    deadline: Instant,
    eviction: &Eviction,
) -> (Option<io::Result<usize>>, T) {
    let canceller = Canceller::new();
    let mut read = std::pin::pin!(rd.cancelable_read(buf, canceller.handle()));
    let wait = deadline.saturating_duration_since(Instant::now());
    let evicted = monoio::select! {
        r = read.as_mut() => return (Some(r.0), r.1),
        _ = monoio::time::sleep(wait) => false,
        _ = eviction.wait() => true,
    };
    let _ = canceller.cancel();
    let (res, buf) = read.as_mut().await;
    if evicted {
        (None, buf)
    } else {
        (Some(res), buf)
    }
}

/// Who spoke first on a connection whose upstream was opened early.
#[derive(Debug)]
pub(crate) enum FirstWord {
    /// The server sent bytes (in the server buffer); any the client sent
    /// meanwhile are in the client buffer.
    Server,
    /// The client sent bytes first (in the client buffer).
    Client,
    /// The client closed without a byte, or the server closed or failed
    /// without one: relay what is left.
    Closed,
    /// Neither spoke before the deadline.
    Silent,
    /// Too many undecided connections: close this one.
    Evicted,
}

/// Waits for the first of the client and the server to send. The other
/// read is cancelled and awaited, so bytes that raced the cancel are kept.
pub(crate) async fn first_word(
    client: &mut TcpStream,
    mut cbuf: Vec<u8>,
    server: &mut TcpStream,
    sbuf: Vec<u8>,
    deadline: Instant,
    eviction: &Eviction,
) -> (io::Result<FirstWord>, Vec<u8>, Vec<u8>) {
    let (cc, sc) = (Canceller::new(), Canceller::new());
    let len = cbuf.len();
    let mut cread = std::pin::pin!(client.cancelable_read(cbuf.slice_mut(len..), cc.handle()));
    let mut sread = std::pin::pin!(server.cancelable_read(sbuf, sc.handle()));
    let wait = deadline.saturating_duration_since(Instant::now());
    enum Woke {
        Client(monoio::BufResult<usize, monoio::buf::SliceMut<Vec<u8>>>),
        Server(monoio::BufResult<usize, Vec<u8>>),
        Timeout,
        Evicted,
    }
    let woke = monoio::select! {
        r = cread.as_mut() => Woke::Client(r),
        r = sread.as_mut() => Woke::Server(r),
        _ = monoio::time::sleep(wait) => Woke::Timeout,
        _ = eviction.wait() => Woke::Evicted,
    };
    let (cres, cslice, sres, sbuf, stopped) = match woke {
        Woke::Client((cres, cslice)) => {
            let _ = sc.cancel();
            let (sres, sbuf) = sread.as_mut().await;
            (cres, cslice, sres, sbuf, None)
        }
        Woke::Server((sres, sbuf)) => {
            let _ = cc.cancel();
            let (cres, cslice) = cread.as_mut().await;
            (cres, cslice, sres, sbuf, None)
        }
        Woke::Timeout | Woke::Evicted => {
            let (_, _) = (cc.cancel(), sc.cancel());
            let (cres, cslice) = cread.as_mut().await;
            let (sres, sbuf) = sread.as_mut().await;
            let why = if matches!(woke, Woke::Evicted) {
                FirstWord::Evicted
            } else {
                FirstWord::Silent
            };
            (cres, cslice, sres, sbuf, Some(why))
        }
    };
    cbuf = cslice.into_inner();
    let word = match (cres, sres) {
        (_, Ok(n)) if n > 0 => Ok(FirstWord::Server),
        (Err(e), _) if !is_cancelled(&e) => Err(e),
        (Ok(n), _) if n > 0 => Ok(FirstWord::Client),
        _ if matches!(stopped, Some(FirstWord::Evicted)) => Ok(FirstWord::Evicted),
        (Ok(0), _) => Ok(FirstWord::Closed),
        (_, Ok(0)) => Ok(FirstWord::Closed),
        (_, Err(e)) if !is_cancelled(&e) => Ok(FirstWord::Closed),
        _ => Ok(stopped.unwrap_or(FirstWord::Silent)),
    };
    (word, cbuf, sbuf)
}

/// One read that is cancelled at `deadline` (never, when `None`).
/// Cancelling (rather than dropping the read) matters on io_uring: a
/// dropped read could still complete in the kernel and its bytes would be
/// lost. A cancelled read returns an error for which [`is_cancelled`] holds.
pub(crate) async fn read_until<R: CancelableAsyncReadRent, T: IoBufMut>(
    rd: &mut R,
    buf: T,
    deadline: Option<Instant>,
) -> (io::Result<usize>, T) {
    let canceller = Canceller::new();
    let mut read = std::pin::pin!(rd.cancelable_read(buf, canceller.handle()));
    let Some(deadline) = deadline else {
        return read.await;
    };
    let wait = deadline.saturating_duration_since(Instant::now());
    monoio::select! {
        r = read.as_mut() => r,
        _ = monoio::time::sleep(wait) => {
            let _ = canceller.cancel();
            // Completes with ECANCELED, or with bytes that raced the cancel.
            read.as_mut().await
        }
    }
}

pub(crate) fn is_cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::errno::Errno::ECANCELED as i32)
}
