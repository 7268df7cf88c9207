//! A bound on how many of something run at once on one thread (the
//! control core's DNS exchanges: each holds a socket), the rest waiting
//! their turn in arrival order.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// At most `max` permits out at once; single-threaded (`!Sync`).
pub(crate) struct Limit {
    max: usize,
    used: Cell<usize>,
    next: Cell<u64>,
    /// Those waiting, by arrival: the first is woken when a permit
    /// returns.
    waiters: RefCell<BTreeMap<u64, Waker>>,
}

/// One of a [`Limit`]'s permits, returned when dropped.
pub(crate) struct Permit<'a>(&'a Limit);

impl Limit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            used: Cell::new(0),
            next: Cell::new(0),
            waiters: RefCell::default(),
        }
    }

    /// Permits out now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.get()
    }

    /// Waits for a permit.
    pub(crate) async fn acquire(&self) -> Permit<'_> {
        // Registered while waiting; leaving (acquired, or dropped while
        // waiting) takes it out, and a dropped waiter passes its turn on.
        struct Turn<'a> {
            limit: &'a Limit,
            id: Option<u64>,
        }
        impl Drop for Turn<'_> {
            fn drop(&mut self) {
                if let Some(id) = self.id.take() {
                    self.limit.waiters.borrow_mut().remove(&id);
                    self.limit.wake_first_if_free();
                }
            }
        }
        let mut turn = Turn {
            limit: self,
            id: None,
        };
        poll_fn(|cx| {
            if self.used.get() < self.max {
                self.used.set(self.used.get() + 1);
                if let Some(id) = turn.id.take() {
                    self.waiters.borrow_mut().remove(&id);
                }
                // Another permit may be free too (two returned before the
                // first waiter ran): its waiter is woken as well.
                self.wake_first_if_free();
                return Poll::Ready(());
            }
            let id = *turn.id.get_or_insert_with(|| {
                let id = self.next.get();
                self.next.set(id + 1);
                id
            });
            self.waiters.borrow_mut().insert(id, cx.waker().clone());
            Poll::Pending
        })
        .await;
        Permit(self)
    }

    fn wake_first_if_free(&self) {
        if self.used.get() < self.max {
            if let Some(w) = self.waiters.borrow().values().next() {
                w.wake_by_ref();
            }
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.used.set(self.0.used.get() - 1);
        self.0.wake_first_if_free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// Never more than `max` at once; every one gets its turn, also when
    /// some waiters go away before theirs.
    #[test]
    fn at_most_max_and_everyone_gets_a_turn() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let limit = Rc::new(Limit::new(3));
            let (peak, done) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
            let mut tasks = Vec::new();
            for i in 0..40u64 {
                let (limit, peak, done) = (limit.clone(), peak.clone(), done.clone());
                tasks.push(monoio::spawn(async move {
                    let _p = limit.acquire().await;
                    peak.set(peak.get().max(limit.used()));
                    monoio::time::sleep(Duration::from_millis(1 + i % 3)).await;
                    done.set(done.get() + 1);
                }));
            }
            // Waiters that leave before their turn (their wait cut short
            // by a timeout) pass it on.
            for _ in 0..10 {
                let limit = limit.clone();
                tasks.push(monoio::spawn(async move {
                    let waited =
                        monoio::time::timeout(Duration::from_micros(300), limit.acquire()).await;
                    assert!(waited.is_err(), "a permit was free at once");
                }));
            }
            for t in tasks {
                t.await;
            }
            assert_eq!(done.get(), 40);
            assert_eq!(peak.get(), 3);
        });
    }
}
