//! The way back: workers tell the control core things (a name to resolve,
//! tap events next) through a bounded queue that never blocks and never
//! locks. When it is full the event is dropped and counted: a worker must
//! not wait for the control core, and a control core that falls behind
//! must not make workers queue without bound.
//!
//! The queue is futures-channel's unbounded MPSC queue (lock-free pushes,
//! an atomic waker that wakes the control core's event loop from any
//! thread) with a reservation counter in front that bounds it. A message
//! may weigh more than one (a batch of events, or its bytes): it counts
//! as its weight against the bound, and is dropped whole.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_core::Stream;

struct Counts {
    capacity: usize,
    /// Events sent and not yet received (a batch counts its events).
    queued: AtomicUsize,
    /// Events dropped because the queue was full, since it was made.
    dropped: AtomicU64,
}

/// A queue holding at most `capacity` events.
pub fn bounded<T>(capacity: usize) -> (EventSender<T>, EventReceiver<T>) {
    let (tx, rx) = unbounded();
    let counts = Arc::new(Counts {
        capacity,
        queued: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
    });
    (
        EventSender {
            tx,
            counts: counts.clone(),
        },
        EventReceiver { rx, counts },
    )
}

/// Why an event was not queued; it comes back with the error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError<T> {
    #[error("event queue full; event dropped")]
    Full(T),
    #[error("event queue closed")]
    Closed(T),
}

/// A worker's end; cheap to clone, `Send + Sync`.
pub struct EventSender<T> {
    tx: UnboundedSender<(T, usize)>,
    counts: Arc<Counts>,
}

impl<T> Clone for EventSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            counts: self.counts.clone(),
        }
    }
}

impl<T> EventSender<T> {
    /// Queues `event` without waiting; when the queue is full the event is
    /// dropped and counted.
    pub fn send(&self, event: T) -> Result<(), SendError<T>> {
        self.send_batch(event, 1)
    }

    /// Queues a message that counts as `events` against the bound (its
    /// events, or its bytes), when it fits; otherwise it is dropped and
    /// `events` are counted as dropped.
    pub fn send_batch(&self, batch: T, events: usize) -> Result<(), SendError<T>> {
        let cap = self.counts.capacity;
        if self
            .counts
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + events <= cap).then_some(n + events)
            })
            .is_err()
        {
            self.counts
                .dropped
                .fetch_add(events as u64, Ordering::Relaxed);
            return Err(SendError::Full(batch));
        }
        self.tx.unbounded_send((batch, events)).map_err(|e| {
            self.counts.queued.fetch_sub(events, Ordering::AcqRel);
            SendError::Closed(e.into_inner().0)
        })
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }
}

/// The control core's end. There is exactly one.
pub struct EventReceiver<T> {
    rx: UnboundedReceiver<(T, usize)>,
    counts: Arc<Counts>,
}

impl<T> EventReceiver<T> {
    /// The next event; `None` once every sender is gone and the queue is
    /// empty.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`EventReceiver::recv`] as a poll, for a task taking from several
    /// queues at once.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        let event = std::task::ready!(Pin::new(&mut self.rx).poll_next(cx));
        std::task::Poll::Ready(event.map(|(e, n)| {
            self.counts.queued.fetch_sub(n, Ordering::AcqRel);
            e
        }))
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting now (a batch counts its events).
    pub fn len(&self) -> usize {
        self.counts.queued.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// Polls once: the queue never needs a runtime to answer what it holds.
    fn now<F: Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_frees_room_as_it_drains() {
        let (tx, mut rx) = bounded::<u32>(3);
        for i in 0..3 {
            assert_eq!(tx.send(i), Ok(()));
        }
        assert_eq!(tx.send(3), Err(SendError::Full(3)));
        assert_eq!(tx.clone().send(4), Err(SendError::Full(4)));
        assert_eq!((tx.dropped(), rx.dropped(), rx.len()), (2, 2, 3));
        assert_eq!(now(rx.recv()), Some(Some(0)));
        assert_eq!(tx.send(5), Ok(()), "room again after one receive");
        assert_eq!(tx.send(6), Err(SendError::Full(6)));
        assert_eq!(tx.dropped(), 3);
        let got: Vec<u32> = (0..3).filter_map(|_| now(rx.recv()).flatten()).collect();
        assert_eq!(got, [1, 2, 5], "in order, the dropped ones absent");
        assert!(rx.is_empty());
        assert_eq!(now(rx.recv()), None, "empty: the receive waits");
    }

    #[test]
    fn senders_on_other_threads_never_exceed_the_bound() {
        let (tx, mut rx) = bounded::<u64>(64);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    (0..1000).filter(|i| tx.send(t * 1000 + i).is_ok()).count() as u64
                })
            })
            .collect();
        let sent: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let mut received = 0;
        while let Some(Some(_)) = now(rx.recv()) {
            received += 1;
        }
        assert_eq!(received, 64, "nothing received meanwhile: exactly full");
        assert_eq!(sent, 64);
        assert_eq!(rx.dropped(), 4000 - 64);
    }

    #[test]
    fn a_batch_counts_its_events_against_the_bound() {
        let (tx, mut rx) = bounded::<&str>(10);
        assert_eq!(tx.send_batch("six", 6), Ok(()));
        assert_eq!(tx.send_batch("five", 5), Err(SendError::Full("five")));
        assert_eq!((rx.len(), rx.dropped()), (6, 5), "dropped whole, counted");
        assert_eq!(tx.send_batch("four", 4), Ok(()), "exactly full");
        assert_eq!(tx.send("one"), Err(SendError::Full("one")));
        assert_eq!(now(rx.recv()), Some(Some("six")));
        assert_eq!(rx.len(), 4);
        assert_eq!(tx.send_batch("six again", 6), Ok(()));
        assert_eq!(rx.dropped(), 6);
    }

    #[test]
    fn sending_after_the_receiver_is_gone_fails_without_counting_a_drop() {
        let (tx, rx) = bounded::<u8>(1);
        drop(rx);
        assert_eq!(tx.send(1), Err(SendError::Closed(1)));
        assert_eq!(tx.dropped(), 0);
    }
}
