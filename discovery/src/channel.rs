//! The publish/subscribe channel: one writer (the control core), many
//! readers (the workers), for any state the control core learns and the
//! workers route with: discovery [`Snapshot`]s today, TLS material and
//! policy next, each in a channel of its own.
//!
//! Publishing is one atomic pointer swap plus a version bump; reading is
//! one atomic load of the version, and an `ArcSwap` load only when the
//! version moved. Nobody ever blocks or locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::Snapshot;

/// A value published through a [`channel`]. `stamp` lets a value carry
/// the version it was published as (a [`Snapshot`] does, for logs and
/// tests); most types need nothing and take the default.
pub trait Published: Send + Sync + 'static {
    fn stamp(&mut self, _version: u64) {}
}

impl Published for Snapshot {
    fn stamp(&mut self, version: u64) {
        self.set_version(version);
    }
}

/// The control core's end of the discovery channel.
pub type SnapshotPublisher = Publisher<Snapshot>;
/// What discovery's readers are built from.
pub type SnapshotSubscriber = Subscriber<Snapshot>;
/// A worker's view of discovery.
pub type SnapshotCache = Cache<Snapshot>;

struct Shared<T> {
    current: ArcSwap<T>,
    version: AtomicU64,
}

/// Creates a channel holding `initial` as version 1.
pub fn channel<T: Published>(mut initial: T) -> (Publisher<T>, Subscriber<T>) {
    initial.stamp(1);
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(initial),
        version: AtomicU64::new(1),
    });
    (
        Publisher {
            shared: shared.clone(),
            next: 2,
        },
        Subscriber { shared },
    )
}

/// The control core's end. There is exactly one per channel.
pub struct Publisher<T> {
    shared: Arc<Shared<T>>,
    next: u64,
}

impl<T: Published> Publisher<T> {
    /// Publishes a value and returns its version.
    pub fn publish(&mut self, mut value: T) -> u64 {
        let version = self.next;
        self.next += 1;
        value.stamp(version);
        self.shared.current.store(Arc::new(value));
        // Release pairs with the Acquire in `Cache::refresh`: a reader
        // that sees the new version also sees the new pointer.
        self.shared.version.store(version, Ordering::Release);
        version
    }

    pub fn current(&self) -> Arc<T> {
        self.shared.current.load_full()
    }

    /// A reader handle for this channel.
    pub fn subscriber(&self) -> Subscriber<T> {
        Subscriber {
            shared: self.shared.clone(),
        }
    }
}

/// A handle workers are built from; cheap to clone, `Send + Sync`.
pub struct Subscriber<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Subscriber<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Subscriber<T> {
    /// A per-worker reader holding the value it last saw.
    pub fn cache(&self) -> Cache<T> {
        // The version first: if a publish lands between the two loads, the
        // cache holds the newer value under the older version and merely
        // loads it once more at the next refresh. The other order could pair
        // an old value with the new version and miss the update.
        let seen = self.shared.version.load(Ordering::Acquire);
        Cache {
            local: self.shared.current.load_full(),
            seen,
            shared: self.shared.clone(),
        }
    }

    /// The value published last.
    pub fn current(&self) -> Arc<T> {
        self.shared.current.load_full()
    }
}

/// A worker's view: the value it routes with until it asks again.
pub struct Cache<T> {
    shared: Arc<Shared<T>>,
    local: Arc<T>,
    /// The version `local` was loaded at (or a later one).
    seen: u64,
}

impl<T> Cache<T> {
    /// Picks up a newer value if one was published. Returns true when the
    /// value changed. Costs one atomic load when nothing changed.
    pub fn refresh(&mut self) -> bool {
        let v = self.shared.version.load(Ordering::Acquire);
        if v == self.seen {
            return false;
        }
        self.local = self.shared.current.load_full();
        self.seen = v;
        true
    }

    pub fn get(&self) -> &Arc<T> {
        &self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, Service};

    fn snap(name: &str) -> Snapshot {
        Snapshot::new([Arc::new(Service::new(
            Authority::parse(name).unwrap(),
            vec![],
            None,
            Arc::new([]),
        ))])
    }

    #[test]
    fn readers_see_new_versions_only_after_refresh() {
        let (mut tx, rx) = channel(snap("a.test:1"));
        let mut cache = rx.cache();
        assert_eq!(cache.get().version(), 1);
        assert!(!cache.refresh());
        assert_eq!(tx.publish(snap("b.test:1")), 2);
        // The cached snapshot is stable until refresh.
        assert!(cache
            .get()
            .service(&Authority::parse("a.test:1").unwrap())
            .is_some());
        assert!(cache.refresh());
        assert_eq!(cache.get().version(), 2);
        assert!(cache
            .get()
            .service(&Authority::parse("b.test:1").unwrap())
            .is_some());
        assert!(!cache.refresh());
    }

    /// Anything else the control core hands workers (TLS material,
    /// policy) goes through the same channel type.
    #[test]
    fn other_state_is_published_the_same_way() {
        #[derive(Debug, PartialEq)]
        struct Identity(&'static str);
        impl Published for Identity {}

        let (mut tx, rx) = channel(Identity("none"));
        let mut cache = rx.cache();
        assert_eq!(**cache.get(), Identity("none"));
        assert!(!cache.refresh());
        assert_eq!(tx.publish(Identity("web.ns")), 2);
        assert_eq!(**cache.get(), Identity("none"), "stable until refresh");
        assert!(cache.refresh());
        assert_eq!(**cache.get(), Identity("web.ns"));
        assert!(!cache.refresh());
        // A cache made later starts at the current value.
        let mut late = tx.subscriber().cache();
        assert_eq!(**late.get(), Identity("web.ns"));
        assert!(!late.refresh());
        assert_eq!(*rx.current(), Identity("web.ns"));
    }

    #[test]
    fn concurrent_readers_never_see_torn_state() {
        let (mut tx, rx) = channel(snap("v1.test:1"));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut cache = rx.cache();
                    let mut last = 0;
                    while last < 500 {
                        cache.refresh();
                        let s = cache.get();
                        // Every snapshot holds exactly the service named after its version.
                        let v = s.version();
                        assert!(v >= last);
                        last = v;
                        let name = Authority::parse(&format!("v{v}.test:1")).unwrap();
                        assert!(s.service(&name).is_some(), "version {v} torn");
                    }
                })
            })
            .collect();
        for v in 2..=500 {
            assert_eq!(tx.publish(snap(&format!("v{v}.test:1"))), v);
        }
        for r in readers {
            r.join().unwrap();
        }
    }
}
