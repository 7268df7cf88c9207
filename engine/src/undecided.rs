//! The connections a worker has not yet decided a protocol for, capped:
//! past the cap the oldest is told to close (and counted), so silent or
//! slow clients cannot pin unbounded client and upstream connections.
//!
//! Per worker (`Rc`, `Cell`): no locks, no atomics.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// The cap and the live registrations, oldest first.
pub(crate) struct UndecidedSet {
    cap: usize,
    next: Cell<u64>,
    live: RefCell<BTreeMap<u64, Rc<Eviction>>>,
    /// Set when the worker drains: undecided connections have nothing in
    /// flight to finish, so they close at once.
    draining: Cell<bool>,
    /// Connections closed because the set was full (never reset).
    pub(crate) evicted: Cell<u64>,
}

/// Set when a connection must give up detection and close.
#[derive(Default)]
pub(crate) struct Eviction {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Eviction {
    /// Resolves once the connection is evicted (never, otherwise).
    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    pub(crate) fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// One connection's place in the set; leaving it (decided, closed) is
/// dropping this.
pub(crate) struct Undecided {
    set: Rc<UndecidedSet>,
    id: u64,
    pub(crate) eviction: Rc<Eviction>,
}

impl Drop for Undecided {
    fn drop(&mut self) {
        self.set.live.borrow_mut().remove(&self.id);
    }
}

impl UndecidedSet {
    pub(crate) fn new(cap: usize) -> Rc<Self> {
        Rc::new(Self {
            cap: cap.max(1),
            next: Cell::new(0),
            live: RefCell::default(),
            draining: Cell::new(false),
            evicted: Cell::new(0),
        })
    }

    /// Adds a connection; if that goes over the cap, the oldest is evicted.
    pub(crate) fn enter(self: &Rc<Self>) -> Undecided {
        let id = self.next.get();
        self.next.set(id + 1);
        let eviction = Rc::new(Eviction::default());
        if self.draining.get() {
            eviction.fire();
        }
        let mut live = self.live.borrow_mut();
        live.insert(id, eviction.clone());
        while live.len() > self.cap {
            let Some((_, oldest)) = live.pop_first() else {
                break;
            };
            oldest.fire();
            self.evicted.set(self.evicted.get() + 1);
        }
        drop(live);
        Undecided {
            set: self.clone(),
            id,
            eviction,
        }
    }

    /// Closes every undecided connection, now and from now on (not
    /// counted as evictions).
    pub(crate) fn drain(&self) {
        self.draining.set(true);
        let live = std::mem::take(&mut *self.live.borrow_mut());
        for eviction in live.values() {
            eviction.fire();
        }
    }

    /// Connections undecided now.
    pub(crate) fn len(&self) -> usize {
        self.live.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_is_evicted_first_and_counted() {
        let set = UndecidedSet::new(2);
        let a = set.enter();
        let b = set.enter();
        assert!(!a.eviction.fired.get() && !b.eviction.fired.get());
        let c = set.enter();
        assert!(a.eviction.fired.get());
        assert!(!b.eviction.fired.get() && !c.eviction.fired.get());
        assert_eq!((set.len(), set.evicted.get()), (2, 1));
        drop(a); // already gone from the set: nothing changes
        drop(b);
        assert_eq!(set.len(), 1);
        let _d = set.enter();
        assert!(!c.eviction.fired.get());
        assert_eq!((set.len(), set.evicted.get()), (2, 1));
    }

    #[test]
    fn drain_closes_all_without_counting() {
        let set = UndecidedSet::new(10);
        let a = set.enter();
        set.drain();
        let b = set.enter();
        assert!(a.eviction.fired.get() && b.eviction.fired.get());
        assert_eq!(set.evicted.get(), 0);
    }
}
