//! A worker-local one-shot signal: "stop accepting". Set once by the
//! worker's control task, awaited by every accept loop on the same thread
//! and by every connection waiting between requests.
//!
//! Each waiting [`Wait`] owns one slot for its waker and frees it when
//! dropped: a waker keeps its task's memory alive, so slots that outlived
//! their waits would pin every connection that ever waited (a keep-alive
//! connection waits between each of its requests) until the worker stops.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Clone, Default)]
pub(crate) struct Stop(Rc<Inner>);

#[derive(Default)]
struct Inner {
    stopped: Cell<bool>,
    waiters: RefCell<Waiters>,
}

/// Wakers by slot; freed slots are reused.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    fn insert(&mut self, w: Waker) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(w);
                i
            }
            None => {
                self.slots.push(Some(w));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            if slot.take().is_some() {
                self.free.push(i);
            }
        }
        // All waits gone (e.g. after a burst): give the memory back.
        if self.free.len() == self.slots.len() && self.slots.capacity() > 64 {
            *self = Waiters::default();
        }
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Stop {
    pub(crate) fn trigger(&self) {
        self.0.stopped.set(true);
        let waiters = std::mem::take(&mut *self.0.waiters.borrow_mut());
        for w in waiters.slots.into_iter().flatten() {
            w.wake();
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.0.stopped.get()
    }

    /// Resolves once [`Stop::trigger`] has been called.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            stop: self,
            slot: None,
        }
    }

    /// Waits currently registered (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.0.waiters.borrow().live()
    }
}

pub(crate) struct Wait<'a> {
    stop: &'a Stop,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = &self.stop.0;
        if inner.stopped.get() {
            return Poll::Ready(());
        }
        let mut waiters = inner.waiters.borrow_mut();
        match self.slot {
            Some(i) => {
                if let Some(Some(w)) = waiters.slots.get_mut(i) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                }
            }
            None => {
                let i = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        // After a trigger the slots are gone (and none are handed out).
        if let (Some(i), false) = (self.slot, self.stop.0.stopped.get()) {
            self.stop.0.waiters.borrow_mut().remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll_once(w: &mut Wait<'_>) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(w).poll(&mut cx)
    }

    #[test]
    fn a_dropped_wait_frees_its_slot() {
        let stop = Stop::default();
        for _ in 0..1000 {
            let mut w = stop.wait();
            assert!(poll_once(&mut w).is_pending());
            assert!(poll_once(&mut w).is_pending(), "polled again: same slot");
            assert_eq!(stop.waiting(), 1);
        }
        assert_eq!(stop.waiting(), 0, "every wait was dropped");
        let mut waits: Vec<_> = (0..100).map(|_| stop.wait()).collect();
        for w in &mut waits {
            assert!(poll_once(w).is_pending());
        }
        assert_eq!(stop.waiting(), 100);
        waits.truncate(40);
        assert_eq!(stop.waiting(), 40);
        stop.trigger();
        for w in &mut waits {
            assert!(poll_once(w).is_ready());
        }
        drop(waits);
        assert!(stop.wait().now_or_never_ready());
    }

    impl Wait<'_> {
        fn now_or_never_ready(mut self) -> bool {
            poll_once(&mut self).is_ready()
        }
    }
}
