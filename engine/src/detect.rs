//! Reading a client's first bytes until protocol detection decides, bounded
//! by the detect timeout. Nothing is lost: the bytes read are handed back
//! for the chosen protocol path to send on.

use std::io;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use ringmesh_protocols::detect::{detect, Detection, Protocol};

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

/// Reads into `buf` until the prefix decides, the client stops sending, or
/// `timeout` passes; the last two count as opaque TCP.
pub(crate) async fn read_and_detect(
    client: &mut TcpStream,
    mut buf: Vec<u8>,
    timeout: Duration,
) -> (io::Result<(Protocol, Option<Undecided>)>, Vec<u8>) {
    let deadline = Instant::now() + timeout;
    loop {
        if buf.len() == buf.capacity() {
            return (Ok((Protocol::Opaque, Some(Undecided::Full))), buf);
        }
        let len = buf.len();
        let (res, slice) = read_until(client, buf.slice_mut(len..), Some(deadline)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Ok((Protocol::Opaque, Some(Undecided::Eof))), buf),
            Ok(_) => {
                if let Detection::Decided(p) = detect(&buf) {
                    return (Ok((p, None)), buf);
                }
            }
            Err(e) if is_cancelled(&e) => {
                return (Ok((Protocol::Opaque, Some(Undecided::Timeout))), buf)
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
