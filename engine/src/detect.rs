//! Reading a client's first bytes until protocol detection decides, bounded
//! by the detect timeout. Nothing is lost: the bytes read are handed back
//! for the chosen protocol path to send on.

use std::io;
use std::time::{Duration, Instant};

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

/// Reads into `buf` until the prefix decides, the client stops sending, or
/// `timeout` passes. Bytes that can only be the start of an HTTP/1 request
/// are bounded by `header_timeout` from their first byte instead, when
/// that is sooner: the HTTP/1 server then answers 408 at once.
pub(crate) async fn read_and_detect(
    client: &mut TcpStream,
    mut buf: Vec<u8>,
    timeout: Duration,
    header_timeout: Duration,
) -> (io::Result<Detected>, Vec<u8>) {
    let detect_deadline = Instant::now() + timeout;
    let mut first_byte = None;
    let mut deadline = detect_deadline;
    let undecided = |why, buf: &[u8], first_byte| Detected {
        protocol: stalled(buf),
        undecided: Some(why),
        first_byte,
    };
    loop {
        if buf.len() == buf.capacity() {
            return (Ok(undecided(Undecided::Full, &buf, first_byte)), buf);
        }
        let len = buf.len();
        let (res, slice) = read_until(client, buf.slice_mut(len..), Some(deadline)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Ok(undecided(Undecided::Eof, &buf, first_byte)), buf),
            Ok(_) => {
                let first = *first_byte.get_or_insert_with(Instant::now);
                if let Detection::Decided(protocol) = detect(&buf) {
                    let found = Detected {
                        protocol,
                        undecided: None,
                        first_byte,
                    };
                    return (Ok(found), buf);
                }
                deadline = if stalled(&buf) == Protocol::Http1 {
                    detect_deadline.min(first + header_timeout)
                } else {
                    detect_deadline
                };
            }
            Err(e) if is_cancelled(&e) => {
                return (Ok(undecided(Undecided::Timeout, &buf, first_byte)), buf)
            }
            Err(e) => return (Err(e), buf),
        }
    }
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
