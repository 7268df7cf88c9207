//! Idle upstream HTTP/1 connections of one worker, per endpoint.
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
//!   a multishot receive into the worker's provided-buffer ring (armed
//!   once, no buffer held until a byte arrives, no syscall), on epoll a
//!   non-blocking peek when the connection is taken. Any byte or EOF
//!   makes the connection dead, whenever it arrives: [`Pool::take`] never
//!   returns it, and on io_uring the worker's [`Pool::reap`] task closes it
//!   as soon as the completion arrives.
//!
//! What no proxy can tell apart: bytes that arrive after the next request
//! was written are indistinguishable from its response.
//!
//! Must not: block, or hold a connection with unread bytes in the pool.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::multishot::RecvMulti;
use monoio::io::{OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use nix::sys::socket::{recv, MsgFlags};
use ringmesh_admin::telemetry::ConnMeter;

use crate::stop::Stop;

pub(crate) type Rd = OwnedReadHalf<TcpStream>;
pub(crate) type Wr = OwnedWriteHalf<TcpStream>;

/// At most this many idle connections per endpoint per worker.
const POOL_MAX_IDLE: usize = 64;
/// Idle connections older than this are closed rather than reused (servers
/// commonly close idle keep-alive connections after 60s or more).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the reaper closes expired connections (dead ones it closes as
/// their completion arrives, on io_uring).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// An upstream HTTP/1 connection, kept split so reuse costs nothing.
pub(crate) struct Upstream {
    pub(crate) rd: Rd,
    pub(crate) wr: Wr,
    /// For the idle watch and `shutdown`; owned by `rd`/`wr`.
    pub(crate) fd: RawFd,
    /// Taken from the pool (may have been closed by the upstream).
    pub(crate) reused: bool,
    /// Counts this connection in the `peer="dst"` TCP series.
    pub(crate) meter: ConnMeter,
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

/// A receive kept armed on an idle connection.
enum Watch {
    /// io_uring: a multishot receive; any completion means dead.
    Ring(RecvMulti, RawFd),
    /// epoll (or no buffer ring, or the ring ran dry): peek when taken.
    Peek(RawFd),
}

impl Watch {
    fn arm(fd: RawFd) -> Self {
        match RecvMulti::new(fd) {
            Ok(r) => Watch::Ring(r, fd),
            Err(_) => Watch::Peek(fd),
        }
    }

    /// What arrived so far; on io_uring `cx`'s task is woken when
    /// something does.
    fn poll_seen(&mut self, cx: &mut Context<'_>) -> Seen {
        let (r, fd) = match self {
            Watch::Ring(r, fd) => (r, *fd),
            Watch::Peek(fd) => return peek(*fd),
        };
        let polled = pin!(r.next()).poll(cx);
        match polled {
            Poll::Pending => Seen::Nothing,
            Poll::Ready(Ok(Some(_))) => Seen::Bytes,
            // The ring was empty (other connections' receives held its
            // buffers for a moment): nothing was read, and the receive is
            // over. What is pending decides, and from now on the
            // connection is watched by peeking.
            Poll::Ready(Err(e)) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                *self = Watch::Peek(fd);
                peek(fd)
            }
            Poll::Ready(Ok(None) | Err(_)) => Seen::Closed,
        }
    }
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

/// An idle connection. Field order matters: the watch is dropped (its
/// receive cancelled) before the connection is closed.
struct Idle {
    watch: Watch,
    up: Upstream,
    since: Instant,
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
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    /// The reaper task's waker: new watches report to it.
    reaper: RefCell<Option<Waker>>,
    pub(crate) counters: PoolCounters,
}

impl Pool {
    /// An idle connection to `addr` on which nothing arrived since it was
    /// released. Its watch is cancelled before it is returned, so the
    /// receive is gone before the caller writes a request.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(mut entry) = list.pop() {
            if entry.since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            let seen = entry.watch.poll_seen(&mut cx);
            if self.note(addr, seen) {
                let Idle { watch, mut up, .. } = entry;
                drop(watch);
                up.reused = true;
                return Some(up);
            }
        }
        None
    }

    /// Gives a connection back after a complete exchange. `leftover` is
    /// what was read from it past the response: if anything, the
    /// connection is closed, never pooled.
    pub(crate) fn release(&self, addr: SocketAddr, up: Upstream, leftover: &[u8]) {
        if !leftover.is_empty() {
            self.note(addr, Seen::Bytes);
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() >= POOL_MAX_IDLE {
            return;
        }
        let mut watch = Watch::arm(up.fd);
        if let Some(waker) = self.reaper.borrow().as_ref() {
            // Registers the reaper with the new receive (nothing arrived
            // yet, or it is seen at the next reap or take).
            let _ = watch.poll_seen(&mut Context::from_waker(waker));
        }
        list.push(Idle {
            watch,
            up,
            since: Instant::now(),
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
        idle.retain(|addr, list| {
            list.retain_mut(|e| {
                now.saturating_duration_since(e.since) < POOL_IDLE_TIMEOUT
                    && self.note(*addr, e.watch.poll_seen(cx))
            });
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

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        self.reaper.borrow_mut().take();
        self.idle.borrow_mut().clear();
    }
}
