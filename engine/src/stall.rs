//! Responses stalled on their HTTP/2 client's flow control, and the
//! worker's bound on what they hold.
//!
//! A response whose client does not open its window keeps what its
//! upstream sent before the window closed (up to the upstream stream
//! window on HTTP/2, a read buffer and a socket's worth on HTTP/1) for as
//! long as the client waits, and one client connection can open a
//! thousand such streams with a few bytes each. Each worker charges every
//! stalled response what it can hold; past the worker's budget
//! (`RINGMESH_HTTP2_MAX_STALLED_BYTES`) the responses stalled longest are
//! reset (RST_STREAM `ENHANCE_YOUR_CALM` to the client, which frees the
//! upstream's side too) and counted. A response that moves again leaves
//! the set, so it is a client that reads nothing for longest that loses
//! its streams first, not a busy one.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use bytes::Bytes;
use monoio_http::h2::{Reason, SendStream};

/// The responses stalled now on one worker, oldest stall first.
pub(crate) struct Stalls {
    budget: usize,
    /// The charges of the responses in `waiting`.
    held: Cell<usize>,
    next: Cell<u64>,
    waiting: RefCell<BTreeMap<u64, Waiting>>,
    /// Responses reset to stay within the budget.
    resets: Cell<u64>,
}

struct Waiting {
    charge: usize,
    waker: Waker,
}

impl Stalls {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Cell::new(0),
            next: Cell::new(0),
            waiting: RefCell::new(BTreeMap::new()),
            resets: Cell::new(0),
        }
    }

    /// Responses stalled now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Responses reset so far to stay within the budget.
    pub(crate) fn resets(&self) -> u64 {
        self.resets.get()
    }

    /// A response starts waiting, holding `charge` bytes; past the budget,
    /// the oldest waiting ones (this one too, should it be the only one)
    /// are told to give up.
    fn enter(&self, charge: usize, waker: &Waker) -> u64 {
        let seq = self.next.get();
        self.next.set(seq + 1);
        let mut waiting = self.waiting.borrow_mut();
        waiting.insert(
            seq,
            Waiting {
                charge,
                waker: waker.clone(),
            },
        );
        self.held.set(self.held.get() + charge);
        while self.held.get() > self.budget {
            let Some((_, oldest)) = waiting.pop_first() else {
                break;
            };
            self.held.set(self.held.get() - oldest.charge);
            self.resets.set(self.resets.get() + 1);
            oldest.waker.wake();
        }
        seq
    }

    /// False once the response `seq` was told to give up; else it waits on.
    fn still_waiting(&self, seq: u64, waker: &Waker) -> bool {
        match self.waiting.borrow_mut().get_mut(&seq) {
            Some(w) => {
                if !w.waker.will_wake(waker) {
                    w.waker = waker.clone();
                }
                true
            }
            None => false,
        }
    }

    /// The response `seq` moves again (or ended).
    fn leave(&self, seq: u64) {
        if let Some(w) = self.waiting.borrow_mut().remove(&seq) {
            self.held.set(self.held.get() - w.charge);
        }
    }
}

/// A response's place in [`Stalls`] while it waits; leaves on drop.
struct Stalled<'a> {
    stalls: &'a Stalls,
    seq: u64,
}

impl Drop for Stalled<'_> {
    fn drop(&mut self) {
        self.stalls.leave(self.seq);
    }
}

/// Where a response's capacity wait is charged: the worker's stalls, and
/// what it does when it stalls: let go of what it can (an HTTP/2
/// upstream's connection window) and tell what it still holds beyond the
/// bytes it waits to send (the upstream's buffered data, a read buffer).
pub(crate) struct Charge<'a> {
    pub stalls: &'a Stalls,
    pub on_stall: &'a mut dyn FnMut() -> usize,
}

/// Capacity to send up to `want` bytes on the client stream `to`
/// (reserved by the caller): while there is none the response counts as
/// stalled, charged `want` plus what it holds upstream. Told to give up
/// (the worker is past its budget and this stall is the oldest), it resets
/// the client's stream with `ENHANCE_YOUR_CALM`.
pub(crate) async fn capacity(
    to: &mut SendStream<Bytes>,
    want: usize,
    charge: Option<&mut Charge<'_>>,
) -> Result<usize, Reason> {
    let mut stalled: Option<Stalled<'_>> = None;
    let mut charge = charge;
    let got = poll_fn(|cx| {
        // Told to give up, it does, even should its window have opened
        // since (it was counted as reset).
        if let Some(s) = &stalled {
            if !s.stalls.still_waiting(s.seq, cx.waker()) {
                return Poll::Ready(None);
            }
        }
        if let Poll::Ready(r) = to.poll_capacity(cx) {
            return Poll::Ready(Some(r));
        }
        let Some(c) = charge.as_deref_mut() else {
            return Poll::Pending;
        };
        if stalled.is_none() {
            let seq = c.stalls.enter(want + (c.on_stall)(), cx.waker());
            let s = stalled.insert(Stalled {
                stalls: c.stalls,
                seq,
            });
            // Over the budget alone.
            if !s.stalls.still_waiting(seq, cx.waker()) {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await;
    match got {
        Some(Some(Ok(n))) => Ok(n),
        Some(Some(Err(e))) => Err(e.reason().unwrap_or(Reason::CANCEL)),
        Some(None) => Err(Reason::CANCEL),
        None => {
            tracing::debug!(
                "reset a response its HTTP/2 client did not read: the worker's stalled responses were over budget"
            );
            to.send_reset(Reason::ENHANCE_YOUR_CALM);
            Err(Reason::ENHANCE_YOUR_CALM)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_oldest_stalls_give_way_past_the_budget() {
        let s = Stalls::new(100);
        let wakes: Vec<_> = (0..4)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<Waker> = wakes.iter().map(|c| Waker::from(c.clone())).collect();
        let a = s.enter(40, &wakers[0]);
        let b = s.enter(40, &wakers[1]);
        assert_eq!((s.len(), s.resets()), (2, 0));
        // 120 > 100: the oldest (a) gives way, and is woken to learn it.
        let c = s.enter(40, &wakers[2]);
        assert!(!s.still_waiting(a, &wakers[0]));
        assert_eq!(wakes[0].0.load(Ordering::Relaxed), 1);
        assert!(s.still_waiting(b, &wakers[1]) && s.still_waiting(c, &wakers[2]));
        assert_eq!((s.len(), s.resets(), s.held.get()), (2, 1, 80));
        // b moves again: it leaves, and c's next neighbour fits.
        s.leave(b);
        let d = s.enter(60, &wakers[3]);
        assert_eq!((s.len(), s.resets(), s.held.get()), (2, 1, 100));
        // Leaving twice (given up, then dropped) changes nothing.
        s.leave(a);
        s.leave(c);
        s.leave(d);
        assert_eq!((s.len(), s.held.get()), (0, 0));
    }

    #[test]
    fn one_stall_over_the_whole_budget_gives_way_itself() {
        let s = Stalls::new(10);
        let w = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let a = s.enter(11, &w);
        assert!(!s.still_waiting(a, &w));
        assert_eq!((s.len(), s.resets(), s.held.get()), (0, 1, 0));
    }
}
