//! Room for a server's connections (the admin and tap servers, on the
//! control core): at most `max` are open. When every slot is taken, the
//! connection that has waited longest on its client (for a handshake, its
//! next request, its body, or room to write) is closed to make room for
//! the newcomer, so clients that only hold connections open cannot lock
//! others out (a kubelet probe, a scrape, the tap client). A connection is
//! closed for room only once it has waited [`GRACE`]: one that has just
//! been admitted, or is between two requests of a client that sends them
//! back to back, is not (else, with clients connecting hundreds of times a
//! second, every newcomer would in turn close the one before it before its
//! request arrived). A newcomer is refused when no connection can make
//! room (every one busy — answering a request; for the tap server, with a
//! call open — or waiting less than [`GRACE`]).
//!
//! The connection closed for room is one of the client (source address)
//! holding the most: a client opening connections without end closes its
//! own, not a kubelet's probe from another address.
//!
//! A set of slots that only ever serves one short request per connection
//! (the admin server's probe set) makes room instead by closing its
//! oldest connection that is not answering ([`Slots::oldest_first`]): a
//! client opening connections faster than the grace would otherwise hold
//! every slot with connections too young to close.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How long a connection must have waited on its client before it may be
/// closed for a newcomer.
pub const GRACE: Duration = Duration::from_millis(100);

/// The open connections of one server.
pub struct Slots {
    max: usize,
    grace: Duration,
    /// Room is made by closing the oldest connection not answering, not
    /// the one idle longest past the grace.
    oldest_first: bool,
    open: RefCell<Vec<Rc<Slot>>>,
}

/// One connection's place.
struct Slot {
    /// The client's address.
    peer: IpAddr,
    admitted: Instant,
    /// Since when it waits for its client; `None` while it answers.
    idle_since: Cell<Option<Instant>>,
    evicted: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

/// A connection's hold on its slot, given up when dropped.
pub struct Held {
    slots: Rc<Slots>,
    slot: Rc<Slot>,
}

impl Slots {
    pub fn new(max: usize) -> Rc<Self> {
        Self::with_grace(max, GRACE)
    }

    /// As [`Slots::new`], closing for room connections that waited
    /// `grace` (tests).
    pub fn with_grace(max: usize, grace: Duration) -> Rc<Self> {
        Rc::new(Self {
            max: max.max(1),
            grace,
            oldest_first: false,
            open: RefCell::default(),
        })
    }

    /// Room for connections that each serve one short request: when all
    /// are taken, the oldest one not answering is closed for a newcomer.
    pub fn oldest_first(max: usize) -> Rc<Self> {
        Rc::new(Self {
            max: max.max(1),
            grace: Duration::ZERO,
            oldest_first: true,
            open: RefCell::default(),
        })
    }

    /// A slot for a new connection (idle from now), making room by closing
    /// the connection idle longest when all are taken; `None` when none
    /// can make room (every one busy or idle less than the grace, or as
    /// many again still closing).
    pub fn admit(self: &Rc<Self>) -> Option<Held> {
        self.admit_from(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// As [`Slots::admit`], for a client at `peer`: room is made by
    /// closing a connection of the client holding the most (of those that
    /// may be closed), its idle longest (oldest, [`Slots::oldest_first`]).
    pub fn admit_from(self: &Rc<Self>, peer: IpAddr) -> Option<Held> {
        let mut open = self.open.borrow_mut();
        let live = open.iter().filter(|s| !s.evicted.get()).count();
        if live >= self.max {
            if open.len() >= 2 * self.max {
                return None;
            }
            let mut held_by: HashMap<IpAddr, usize> = HashMap::new();
            for s in open.iter().filter(|s| !s.evicted.get()) {
                *held_by.entry(s.peer).or_default() += 1;
            }
            let waited = Instant::now().checked_sub(self.grace);
            let victim = open
                .iter()
                .filter(|s| !s.evicted.get())
                .filter_map(|s| Some((s.idle_since.get()?, s)))
                .filter(|(since, _)| self.oldest_first || waited.is_some_and(|w| *since <= w))
                .max_by_key(|(since, s)| {
                    let at = if self.oldest_first {
                        s.admitted
                    } else {
                        *since
                    };
                    (held_by[&s.peer], std::cmp::Reverse(at))
                })
                .map(|(_, s)| s.clone())?;
            victim.evicted.set(true);
            if let Some(w) = victim.waker.take() {
                w.wake();
            }
        }
        let now = Instant::now();
        let slot = Rc::new(Slot {
            peer,
            admitted: now,
            idle_since: Cell::new(Some(now)),
            evicted: Cell::new(false),
            waker: Cell::new(None),
        });
        open.push(slot.clone());
        Some(Held {
            slots: self.clone(),
            slot,
        })
    }

    /// Connections open and not closing.
    pub fn open(&self) -> usize {
        self.open
            .borrow()
            .iter()
            .filter(|s| !s.evicted.get())
            .count()
    }
}

impl Held {
    /// The connection waits for its client: it may be closed for room.
    pub fn idle(&self) {
        if self.slot.idle_since.get().is_none() {
            self.slot.idle_since.set(Some(Instant::now()));
        }
    }

    /// The connection answers a request: it is not closed for room.
    pub fn busy(&self) {
        self.slot.idle_since.set(None);
    }

    /// Runs `f` (the connection) until it ends, or until this connection is
    /// closed to make room (`None`: `f` is dropped, and the socket with it).
    pub async fn run<F: Future>(&self, f: F) -> Option<F::Output> {
        let evicted = poll_fn(|cx| {
            if self.slot.evicted.get() {
                Poll::Ready(())
            } else {
                self.slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        });
        monoio::select! {
            biased;
            () = evicted => None,
            out = f => Some(out),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots
            .open
            .borrow_mut()
            .retain(|s| !Rc::ptr_eq(s, &self.slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full: the connection idle longest makes room; busy ones never do,
    /// and with every one busy a newcomer is refused.
    #[test]
    fn the_longest_idle_connection_makes_room() {
        let slots = Slots::with_grace(3, Duration::ZERO);
        let a = slots.admit().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = slots.admit().unwrap();
        let c = slots.admit().unwrap();
        b.busy();
        let d = slots.admit().expect("room made");
        assert!(a.slot.evicted.get(), "the longest idle was not closed");
        assert!(!b.slot.evicted.get() && !c.slot.evicted.get());
        assert_eq!(slots.open(), 3);
        drop(a);
        c.busy();
        d.busy();
        assert!(slots.admit().is_none(), "a busy connection was closed");
        d.idle();
        assert!(slots.admit().is_some());
        assert!(d.slot.evicted.get());
    }

    /// A connection that has waited less than the grace does not make
    /// room: one just admitted, or between two requests.
    #[test]
    fn connections_within_the_grace_stay() {
        let slots = Slots::with_grace(2, Duration::from_millis(50));
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        assert!(slots.admit().is_none(), "both just admitted");
        std::thread::sleep(Duration::from_millis(60));
        b.busy();
        b.idle();
        let c = slots.admit().expect("a waited past the grace");
        assert!(a.slot.evicted.get() && !b.slot.evicted.get());
        drop((a, c));
    }

    /// Oldest first: the oldest connection not answering makes room, however
    /// recently it was admitted or last answered.
    #[test]
    fn oldest_first_closes_the_oldest_not_answering() {
        let slots = Slots::oldest_first(3);
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        let c = slots.admit().unwrap();
        a.busy();
        b.busy();
        b.idle();
        let d = slots.admit().expect("room made at once");
        assert!(!a.slot.evicted.get(), "answering");
        assert!(b.slot.evicted.get(), "the oldest not answering");
        assert!(!c.slot.evicted.get());
        drop(b);
        c.busy();
        d.busy();
        assert!(slots.admit().is_none(), "every one answering");
    }

    /// The client holding the most connections gives one up, not another
    /// client's older one.
    #[test]
    fn the_client_holding_most_makes_room() {
        let slots = Slots::oldest_first(3);
        let (kubelet, flood) = ("10.0.0.1".parse().unwrap(), "10.9.9.9".parse().unwrap());
        let probe = slots.admit_from(kubelet).unwrap();
        let a = slots.admit_from(flood).unwrap();
        let b = slots.admit_from(flood).unwrap();
        let c = slots.admit_from(flood).expect("room made");
        assert!(
            !probe.slot.evicted.get(),
            "the other client's connection was closed"
        );
        assert!(a.slot.evicted.get() && !b.slot.evicted.get());
        drop((a, b, c));
    }

    /// A connection closed for room ends at once, its future dropped.
    #[test]
    fn an_evicted_connection_ends() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let slots = Slots::with_grace(1, Duration::ZERO);
            let a = slots.admit().unwrap();
            let run = a.run(std::future::pending::<()>());
            let _b = slots.admit().unwrap();
            assert_eq!(run.await, None);
        });
    }
}
