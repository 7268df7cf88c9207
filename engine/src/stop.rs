//! A worker-local one-shot signal: "stop accepting". Set once by the
//! worker's control task, awaited by every accept loop on the same thread.

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
    waiters: RefCell<Vec<Waker>>,
}

impl Stop {
    pub(crate) fn trigger(&self) {
        self.0.stopped.set(true);
        for w in self.0.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.0.stopped.get()
    }

    /// Resolves once [`Stop::trigger`] has been called.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait(self)
    }
}

pub(crate) struct Wait<'a>(&'a Stop);

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = &(self.0).0;
        if inner.stopped.get() {
            return Poll::Ready(());
        }
        let mut waiters = inner.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
