//! The snapshot channel: one writer (the control core), many readers (the
//! workers). Publishing is one atomic pointer swap plus a version bump;
//! reading is one atomic load of the version, and an `ArcSwap` load only when
//! the version moved. Nobody ever blocks or locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::Snapshot;

struct Shared {
    current: ArcSwap<Snapshot>,
    version: AtomicU64,
}

/// Creates the channel with an initial snapshot (version 1).
pub fn channel(mut initial: Snapshot) -> (SnapshotPublisher, SnapshotSubscriber) {
    initial.set_version(1);
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(initial),
        version: AtomicU64::new(1),
    });
    (
        SnapshotPublisher {
            shared: shared.clone(),
            next: 2,
        },
        SnapshotSubscriber { shared },
    )
}

/// The control core's end. There is exactly one.
pub struct SnapshotPublisher {
    shared: Arc<Shared>,
    next: u64,
}

impl SnapshotPublisher {
    /// Publishes a snapshot and returns its version.
    pub fn publish(&mut self, mut snapshot: Snapshot) -> u64 {
        let version = self.next;
        self.next += 1;
        snapshot.set_version(version);
        self.shared.current.store(Arc::new(snapshot));
        // Release pairs with the Acquire in `SnapshotCache::refresh`: a reader
        // that sees the new version also sees the new pointer.
        self.shared.version.store(version, Ordering::Release);
        version
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }
}

/// A handle workers are built from; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct SnapshotSubscriber {
    shared: Arc<Shared>,
}

impl SnapshotSubscriber {
    /// A per-worker reader holding the snapshot it last saw.
    pub fn cache(&self) -> SnapshotCache {
        SnapshotCache {
            local: self.shared.current.load_full(),
            shared: self.shared.clone(),
        }
    }
}

/// A worker's view: the snapshot it routes with until it asks again.
pub struct SnapshotCache {
    shared: Arc<Shared>,
    local: Arc<Snapshot>,
}

impl SnapshotCache {
    /// Picks up a newer snapshot if one was published. Returns true when the
    /// snapshot changed. Costs one atomic load when nothing changed.
    pub fn refresh(&mut self) -> bool {
        let v = self.shared.version.load(Ordering::Acquire);
        if v == self.local.version() {
            return false;
        }
        self.local = self.shared.current.load_full();
        true
    }

    pub fn get(&self) -> &Arc<Snapshot> {
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
