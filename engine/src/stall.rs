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
//! upstream's side too) and counted: the oldest stall of the client
//! connection whose stalls hold the most. So one client that stalls many
//! streams loses its own first, and a client with one stalled response
//! keeps it while another holds more. A response that moves again leaves
//! the set, so among a client's stalls it is the one that has read
//! nothing for longest that goes first, not a busy one.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::{Poll, Waker};

use bytes::Bytes;
use monoio_http::h2::{Reason, SendStream};

/// The responses stalled now on one worker, by client connection.
pub(crate) struct Stalls {
    budget: usize,
    /// The charges of the responses in `waiting`.
    held: Cell<usize>,
    next: Cell<u64>,
    waiting: RefCell<Waits>,
    /// Responses reset to stay within the budget.
    resets: Cell<u64>,
    /// The most `held` since [`Stalls::take_peak_held`].
    peak_held: Cell<usize>,
}

/// The stalls, and per client what they hold, largest findable at once.
#[derive(Default)]
struct Waits {
    by_seq: BTreeMap<u64, Waiting>,
    clients: HashMap<SocketAddr, Client>,
    /// (bytes held, client) of every client with a stall.
    by_held: BTreeSet<(usize, SocketAddr)>,
}

#[derive(Default)]
struct Client {
    held: usize,
    /// Its stalls, oldest first.
    seqs: BTreeSet<u64>,
}

struct Waiting {
    charge: usize,
    client: SocketAddr,
    waker: Waker,
}

impl Waits {
    fn insert(&mut self, seq: u64, w: Waiting) {
        let c = self.clients.entry(w.client).or_default();
        self.by_held.remove(&(c.held, w.client));
        c.held += w.charge;
        c.seqs.insert(seq);
        self.by_held.insert((c.held, w.client));
        self.by_seq.insert(seq, w);
    }

    fn remove(&mut self, seq: u64) -> Option<Waiting> {
        let w = self.by_seq.remove(&seq)?;
        if let Some(c) = self.clients.get_mut(&w.client) {
            self.by_held.remove(&(c.held, w.client));
            c.held -= w.charge;
            c.seqs.remove(&seq);
            if c.seqs.is_empty() {
                self.clients.remove(&w.client);
            } else {
                self.by_held.insert((c.held, w.client));
            }
        }
        Some(w)
    }

    /// The oldest stall of the client holding the most.
    fn victim(&self) -> Option<u64> {
        let (_, client) = self.by_held.last()?;
        self.clients.get(client)?.seqs.first().copied()
    }
}

impl Stalls {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Cell::new(0),
            next: Cell::new(0),
            waiting: RefCell::default(),
            resets: Cell::new(0),
            peak_held: Cell::new(0),
        }
    }

    /// The most bytes stalled responses held at once since the last call,
    /// and what they hold now: a fall from one to the other is memory a
    /// worker can give back.
    pub(crate) fn take_peak_held(&self) -> (usize, usize) {
        let now = self.held.get();
        (self.peak_held.replace(now), now)
    }

    /// Responses stalled now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.borrow().by_seq.len()
    }

    /// Responses reset so far to stay within the budget.
    pub(crate) fn resets(&self) -> u64 {
        self.resets.get()
    }

    /// A response of `client`'s starts waiting, holding `charge` bytes;
    /// past the budget, the oldest stalls of the clients holding the most
    /// (this one too, should it be the only one) are told to give up.
    fn enter(&self, charge: usize, client: SocketAddr, waker: &Waker) -> u64 {
        let seq = self.next.get();
        self.next.set(seq + 1);
        let mut waiting = self.waiting.borrow_mut();
        waiting.insert(
            seq,
            Waiting {
                charge,
                client,
                waker: waker.clone(),
            },
        );
        self.held.set(self.held.get() + charge);
        self.peak_held
            .set(self.peak_held.get().max(self.held.get().min(self.budget)));
        while self.held.get() > self.budget {
            let Some(victim) = waiting.victim().and_then(|s| waiting.remove(s)) else {
                break;
            };
            self.held.set(self.held.get() - victim.charge);
            self.resets.set(self.resets.get() + 1);
            victim.waker.wake();
        }
        seq
    }

    /// False once the response `seq` was told to give up; else it waits on.
    fn still_waiting(&self, seq: u64, waker: &Waker) -> bool {
        match self.waiting.borrow_mut().by_seq.get_mut(&seq) {
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
        if let Some(w) = self.waiting.borrow_mut().remove(seq) {
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

/// Whose stalls a response's waits are: the worker's, for this client
/// connection.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub stalls: &'a Stalls,
    pub client: SocketAddr,
}

/// Where a response's capacity wait is charged, and what it does when it
/// stalls: let go of what it can (an HTTP/2 upstream's connection window)
/// and tell what it still holds beyond the bytes it waits to send (the
/// upstream's buffered data, a read buffer).
pub(crate) struct Charge<'a> {
    pub scope: Scope<'a>,
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
            let Scope { stalls, client } = c.scope;
            let seq = stalls.enter(want + (c.on_stall)(), client, cx.waker());
            let s = stalled.insert(Stalled { stalls, seq });
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

    const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
    const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 2);

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
        let a = s.enter(40, A, &wakers[0]);
        let b = s.enter(40, A, &wakers[1]);
        assert_eq!((s.len(), s.resets()), (2, 0));
        // 120 > 100: the oldest (a) gives way, and is woken to learn it.
        let c = s.enter(40, A, &wakers[2]);
        assert!(!s.still_waiting(a, &wakers[0]));
        assert_eq!(wakes[0].0.load(Ordering::Relaxed), 1);
        assert!(s.still_waiting(b, &wakers[1]) && s.still_waiting(c, &wakers[2]));
        assert_eq!((s.len(), s.resets(), s.held.get()), (2, 1, 80));
        // b moves again: it leaves, and c's next neighbour fits.
        s.leave(b);
        let d = s.enter(60, A, &wakers[3]);
        assert_eq!((s.len(), s.resets(), s.held.get()), (2, 1, 100));
        // Leaving twice (given up, then dropped) changes nothing.
        s.leave(a);
        s.leave(c);
        s.leave(d);
        assert_eq!((s.len(), s.held.get()), (0, 0));
    }

    /// Past the budget it is the client holding the most that gives way
    /// (its oldest stall), not the oldest stall of all.
    #[test]
    fn the_client_holding_most_gives_way_first() {
        let s = Stalls::new(100);
        let w = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        // B's one stall is the oldest; A then stalls three.
        let b = s.enter(30, B, &w);
        let a: Vec<u64> = (0..2).map(|_| s.enter(30, A, &w)).collect();
        assert_eq!(s.resets(), 0);
        let a3 = s.enter(30, A, &w);
        // 120 > 100: A holds 90, B 30: A's oldest goes, B's stays.
        assert!(!s.still_waiting(a[0], &w));
        assert!(s.still_waiting(b, &w) && s.still_waiting(a[1], &w) && s.still_waiting(a3, &w));
        assert_eq!((s.len(), s.resets(), s.held.get()), (3, 1, 90));
        // Now B stalls more and holds the most: its oldest stall goes.
        s.leave(a3);
        let b2 = s.enter(50, B, &w);
        assert!(!s.still_waiting(b, &w), "B held 80 against A's 30");
        assert!(s.still_waiting(b2, &w) && s.still_waiting(a[1], &w));
        for seq in [a[1], b2] {
            s.leave(seq);
        }
        assert_eq!((s.len(), s.held.get()), (0, 0));
        let inner = s.waiting.borrow();
        assert!(inner.clients.is_empty() && inner.by_held.is_empty());
    }

    #[test]
    fn one_stall_over_the_whole_budget_gives_way_itself() {
        let s = Stalls::new(10);
        let w = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let a = s.enter(11, A, &w);
        assert!(!s.still_waiting(a, &w));
        assert_eq!((s.len(), s.resets(), s.held.get()), (0, 1, 0));
    }
}
