//! HTTP/2 connections read through the attack defences of
//! [`ringmesh_protocols::h2guard`], both ways: a client's connection to
//! the proxy (`http2`, and the control core's tap and admin servers) and
//! the proxy's connections to upstream servers (`h2client`, and the
//! control core's gRPC channels to the control plane). A hostile backend's floods of frames that do no work
//! would otherwise pin its worker as surely as a client's. What is written
//! to the peer is counted too: its WINDOW_UPDATEs are allowed in
//! proportion.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::BufResult;
use ringmesh_protocols::h2guard::{
    goaway_frame, FrameGuard, GuardLimits, Violation, ENHANCE_YOUR_CALM,
};

use crate::warn_limit::Warning;

/// Where a cut-off is told: a worker's rate-limited warnings (`Worker`
/// implements it; this module does not depend on the worker's).
pub(crate) trait Warnings {
    /// Whether a warning of `kind` is to be logged now.
    fn admit(&self, kind: Warning) -> bool;
}

/// After its GOAWAY, a client cut off by the defences is read from (and
/// ignored) until it is quiet this long...
const LINGER: Duration = Duration::from_millis(500);
/// ...or this long at most, however fast it keeps sending, or until it
/// sent this much more.
const LINGER_MAX: Duration = Duration::from_secs(3);
const LINGER_MAX_BYTES: usize = 4 << 20;
/// An HTTP/2 connection whose peer's bytes are read through the attack
/// defences of [`ringmesh_protocols::h2guard`]: on a violation the peer
/// gets GOAWAY `ENHANCE_YOUR_CALM` and the read fails, which ends the
/// connection.
pub(crate) struct GuardedIo<I> {
    io: I,
    guard: FrameGuard,
    peer: SocketAddr,
    tripped: bool,
    /// Its rate limits for warnings (`None` on the control core, whose
    /// few connections warn each time).
    warnings: Option<Rc<dyn Warnings>>,
    /// Told, after each read, since when a header block has been coming
    /// (`None` between blocks): the connection's owner times it.
    head_watch: Option<Rc<std::cell::Cell<Option<Instant>>>>,
}

impl<I: AsyncReadRent + AsyncWriteRent> GuardedIo<I> {
    /// A client's connection (its bytes start with the preface): cut off
    /// with a lingering close, so the client reads why.
    pub(crate) fn client(io: I, peer: SocketAddr, warnings: Option<Rc<dyn Warnings>>) -> Self {
        Self::client_with(io, peer, warnings, GuardLimits::default())
    }

    /// As [`GuardedIo::client`], with other limits.
    pub(crate) fn client_with(
        io: I,
        peer: SocketAddr,
        warnings: Option<Rc<dyn Warnings>>,
        limits: GuardLimits,
    ) -> Self {
        Self::with(io, FrameGuard::new(limits), peer, warnings)
    }

    /// A connection to an upstream server at `peer` (a worker's pooled
    /// connection, or the control core's to a control-plane service): cut
    /// off at once (its flood is not read any further); the streams on it
    /// fail.
    pub(crate) fn upstream(io: I, peer: SocketAddr, warnings: Option<Rc<dyn Warnings>>) -> Self {
        let guard = FrameGuard::upstream(GuardLimits::default());
        Self::with(io, guard, peer, warnings)
    }

    fn with(
        io: I,
        guard: FrameGuard,
        peer: SocketAddr,
        warnings: Option<Rc<dyn Warnings>>,
    ) -> Self {
        Self {
            io,
            guard,
            peer,
            tripped: false,
            warnings,
            head_watch: None,
        }
    }

    /// Keeps `watch` told since when a header block has been coming (see
    /// [`FrameGuard::head_pending_since`]).
    pub(crate) fn with_head_watch(mut self, watch: Rc<std::cell::Cell<Option<Instant>>>) -> Self {
        self.head_watch = Some(watch);
        self
    }

    /// A client's resets of the streams `answered` names are cancels, not
    /// rapid resets ([`ringmesh_protocols::h2guard::AnsweredStreams`]).
    pub(crate) fn with_answered(
        mut self,
        answered: Rc<ringmesh_protocols::h2guard::AnsweredStreams>,
    ) -> Self {
        self.guard = self.guard.with_answered(answered);
        self
    }

    fn is_upstream(&self) -> bool {
        self.guard.is_upstream()
    }

    async fn check(&mut self, n: usize, bytes: &mut [u8]) -> std::io::Result<usize> {
        match self.guard.feed(bytes, Instant::now()) {
            Ok(()) => Ok(n),
            // Boxed: the cut-off (a write and a timed linger) would
            // otherwise make every frame read's future, which the codec
            // moves into place per frame, several times larger.
            Err(v) => Box::pin(self.cut_off(v)).await,
        }
    }

    async fn cut_off(&mut self, v: Violation) -> std::io::Result<usize> {
        self.tripped = true;
        let code = v.error_code();
        let goaway = goaway_frame(self.guard.last_stream_id(), code);
        let name = if code == ENHANCE_YOUR_CALM {
            "ENHANCE_YOUR_CALM"
        } else {
            "PROTOCOL_ERROR"
        };
        let peer = self.peer;
        let upstream = self.is_upstream();
        let kind = if upstream {
            Warning::Http2UpstreamCalm
        } else {
            Warning::Http2Calm
        };
        if self.warnings.as_ref().is_none_or(|w| w.admit(kind)) {
            if upstream {
                tracing::warn!(upstream = %peer, violation = %v, "HTTP/2 upstream cut off with GOAWAY {name}; its streams fail");
            } else {
                tracing::warn!(%peer, violation = %v, "HTTP/2 client cut off with GOAWAY {name}");
            }
        }
        if upstream {
            let _ = self.io.write_all(goaway.to_vec()).await;
            let _ = self.io.shutdown().await;
            return Err(std::io::Error::other(format!("upstream cut off: {v}")));
        }
        let _ = self.io.write_all(goaway.to_vec()).await;
        let _ = self.linger().await;
        Err(std::io::Error::other(v.to_string()))
    }

    /// Lingering close: FIN after the last frame (a GOAWAY), then discard
    /// what the client still sends for a moment, so closing with unread
    /// bytes does not turn into a RST that destroys the GOAWAY before the
    /// client reads it.
    ///
    /// A client still flooding when the linger started (its frames queued
    /// behind the ones that tripped the guard) is read until it pauses, so
    /// the close does not reset it before it reads the GOAWAY; bounded by
    /// [`LINGER_MAX`] and [`LINGER_MAX_BYTES`] (one that keeps flooding
    /// past that is not reading, and would keep the worker reading).
    async fn linger(&mut self) -> std::io::Result<()> {
        let res = self.io.shutdown().await;
        let until = Instant::now() + LINGER_MAX;
        let mut sink = Vec::with_capacity(16 * 1024);
        let mut discarded = 0;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || discarded > LINGER_MAX_BYTES {
                break;
            }
            match monoio::time::timeout(LINGER.min(left), self.io.read(sink)).await {
                Ok((Ok(n), b)) if n > 0 => {
                    discarded += n;
                    sink = b;
                }
                // EOF, an error, or quiet for `LINGER`.
                _ => break,
            }
        }
        res
    }
}

impl<I: AsyncReadRent + AsyncWriteRent> AsyncReadRent for GuardedIo<I> {
    #[allow(unsafe_code)]
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.tripped {
            return (Err(std::io::ErrorKind::ConnectionAborted.into()), buf);
        }
        let (res, mut buf) = self.io.read(buf).await;
        let n = match res {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        // SAFETY: monoio reads into a buffer from its write pointer and
        // marks the `n` bytes read as initialised (`set_init`), so they are
        // valid, and `buf` is exclusively ours until it is returned.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), n) };
        let res = self.check(n, bytes).await;
        if let Some(w) = &self.head_watch {
            w.set(self.guard.head_pending_since());
        }
        (res, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        // The HTTP/2 codec reads into one buffer; a vectored read goes
        // through that path one buffer at a time.
        let slice = match monoio::buf::IoVecWrapperMut::new(buf) {
            Ok(slice) => slice,
            Err(buf) => return (Ok(0), buf),
        };
        let (res, slice) = self.read(slice).await;
        let mut buf = slice.into_inner();
        if let Ok(n) = res {
            // SAFETY: `n` bytes were read into the first iovec (above).
            #[allow(unsafe_code)]
            unsafe {
                buf.set_init(n)
            };
        }
        (res, buf)
    }
}

impl<I: AsyncReadRent + AsyncWriteRent> AsyncWriteRent for GuardedIo<I> {
    // (Bytes written are what the peer's WINDOW_UPDATEs may answer.)
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.io.write(buf).await;
        if let Ok(n) = res {
            self.guard.wrote(n);
        }
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (res, buf) = self.io.writev(buf).await;
        if let Ok(n) = res {
            self.guard.wrote(n);
        }
        (res, buf)
    }

    fn flush(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> {
        self.io.flush()
    }

    /// The library closes the connection (after its own GOAWAY, such as
    /// `ENHANCE_YOUR_CALM` for too many streams reset for the client's
    /// errors): a client's lingering, so the client reads why.
    async fn shutdown(&mut self) -> std::io::Result<()> {
        if self.tripped {
            return Ok(());
        }
        self.tripped = true;
        if self.is_upstream() {
            return self.io.shutdown().await;
        }
        self.linger().await
    }
}
