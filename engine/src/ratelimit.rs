//! An inbound server's local rate limit (Linkerd's
//! `HTTPLocalRateLimitPolicy`, sent with the server by the policy API):
//! requests per second for all of the server's traffic, for each client
//! identity, and for listed identities (overrides). Past a limit the
//! request is answered 429 (gRPC `RESOURCE_EXHAUSTED`) instead of being
//! forwarded.
//!
//! Each limit is a GCRA cell (the generic cell rate algorithm, as the
//! `governor` crate linkerd2-proxy uses): a burst of up to one second's
//! worth of requests, then one every `1/rps` seconds. The cells are
//! atomics in the server's policy, shared by every worker, so the limit is
//! the server's whatever core a connection landed on; a request under no
//! limit pays one branch. Per-identity cells are a fixed table indexed by
//! a hash of the identity, keyed at random per process (clients sharing a
//! slot share a limit: rare, never more than the limit between them, and
//! not to be arranged: which identities share a slot is known to no one
//! outside the process), so a client cannot grow the proxy's memory by
//! presenting new identities.
//!
//! Must not: lock, or allocate per request.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Per-identity cells (a power of two).
const IDENTITY_SLOTS: usize = 1024;

/// One limit: `rps` requests per second, a burst of `rps`.
#[derive(Debug)]
pub struct Gcra {
    rps: u32,
    /// Nanoseconds between requests at the limit.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run: the
    /// burst, less one request.
    tolerance: u64,
    /// The theoretical arrival time of the next request (nanoseconds since
    /// the process's clock base).
    tat: AtomicU64,
}

impl Gcra {
    pub fn new(rps: u32) -> Self {
        let rps = rps.max(1);
        let interval = 1_000_000_000 / u64::from(rps);
        Self {
            rps,
            interval,
            tolerance: interval * u64::from(rps - 1),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes one request at `now` (nanoseconds); false when over the limit
    /// (nothing is taken then).
    fn take(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Why a request was refused (the `l5d-proxy-error` text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Total(u32),
    PerIdentity(u32),
    Override(u32),
}

impl Exceeded {
    pub fn reason(self) -> String {
        match self {
            Self::Total(rps) => format!("total rate limit exceeded: {rps}rps"),
            Self::PerIdentity(rps) => format!("per-identity rate limit exceeded: {rps}rps"),
            Self::Override(rps) => format!("override rate limit exceeded: {rps}rps"),
        }
    }
}

/// A server's limits.
#[derive(Debug, Default)]
pub struct LocalRateLimit {
    pub total: Option<Gcra>,
    /// The per-identity limit's cells (one `rps` for all).
    pub per_identity: Option<Box<[Gcra]>>,
    /// Identities with a limit of their own, instead of the per-identity
    /// one (several identities may share one override's cell).
    pub overrides: Vec<(Vec<String>, Gcra)>,
}

impl PartialEq for LocalRateLimit {
    /// The same limit (a verdict compares by identity).
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for LocalRateLimit {}

impl LocalRateLimit {
    /// The per-identity limit, `rps` for each client identity.
    pub fn per_identity(rps: u32) -> Box<[Gcra]> {
        (0..IDENTITY_SLOTS).map(|_| Gcra::new(rps)).collect()
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.total.is_none() && self.per_identity.is_none() && self.overrides.is_empty()
    }

    /// Takes one request from a client of `identity` (none: an
    /// unauthenticated client), as linkerd2-proxy checks: the total, then
    /// the client's override if it has one, else the per-identity limit.
    pub fn check(&self, identity: Option<&str>) -> Result<(), Exceeded> {
        self.check_at(identity, now())
    }

    fn check_at(&self, identity: Option<&str>, now: u64) -> Result<(), Exceeded> {
        if let Some(t) = &self.total {
            if !t.take(now) {
                return Err(Exceeded::Total(t.rps));
            }
        }
        if let Some(id) = identity {
            if let Some((_, o)) = self
                .overrides
                .iter()
                .find(|(ids, _)| ids.iter().any(|i| i == id))
            {
                return if o.take(now) {
                    Ok(())
                } else {
                    Err(Exceeded::Override(o.rps))
                };
            }
        }
        if let Some(cells) = &self.per_identity {
            let cell = &cells[slot(identity)];
            if !cell.take(now) {
                return Err(Exceeded::PerIdentity(cell.rps));
            }
        }
        Ok(())
    }
}

/// The per-identity cell of `identity`. The hash is keyed at random per
/// process: with a fixed key anyone choosing an identity (a service account
/// name) could find, offline, one that shares a victim's cell and throttle
/// it.
fn slot(identity: Option<&str>) -> usize {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let h = KEY
        .get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one(identity);
    (h as usize) & (IDENTITY_SLOTS - 1)
}

/// Nanoseconds since the process's clock base.
fn now() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    // Starts a second in, so a fresh cell (TAT 0) has its whole burst.
    Instant::now().duration_since(base).as_nanos() as u64 + 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots are not the fixed-key hash's (which anyone can compute
    /// offline, to pick an identity sharing a victim's slot).
    #[test]
    fn slots_are_keyed_per_process() {
        use std::hash::{Hash, Hasher};
        let fixed = |id: &str| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            Some(id).hash(&mut h);
            (h.finish() as usize) & (IDENTITY_SLOTS - 1)
        };
        let ids: Vec<String> = (0..64)
            .map(|i| format!("sa{i}.ns.serviceaccount.identity.linkerd.cluster.local"))
            .collect();
        assert!(ids.iter().any(|id| slot(Some(id)) != fixed(id)));
        // Stable within the process.
        assert!(ids.iter().all(|id| slot(Some(id)) == slot(Some(id))));
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let g = Gcra::new(5);
        let t0 = 10 * SEC;
        assert_eq!((0..8).filter(|_| g.take(t0)).count(), 5, "the burst");
        assert!(!g.take(t0 + SEC / 10), "a tenth of a second: nothing yet");
        assert!(g.take(t0 + SEC / 5), "one per 200 ms");
        assert!(!g.take(t0 + SEC / 5));
        // Idle for a while: the burst again, no more.
        let later = t0 + 10 * SEC;
        assert_eq!((0..8).filter(|_| g.take(later)).count(), 5);
    }

    #[test]
    fn total_then_override_else_per_identity() {
        let l = LocalRateLimit {
            total: Some(Gcra::new(100)),
            per_identity: Some(LocalRateLimit::per_identity(2)),
            overrides: vec![(vec!["vip.ns".into()], Gcra::new(4))],
        };
        let t = 10 * SEC;
        let ok = |id: Option<&str>, n: usize| (0..n).filter(|_| l.check_at(id, t).is_ok()).count();
        assert_eq!(ok(Some("a.ns"), 5), 2, "per identity");
        assert_eq!(ok(Some("b.ns"), 5), 2, "each identity its own");
        assert_eq!(ok(None, 5), 2, "the unauthenticated share one");
        assert_eq!(ok(Some("vip.ns"), 6), 4, "an override instead");
        assert_eq!(l.check_at(Some("vip.ns"), t), Err(Exceeded::Override(4)));
        assert_eq!(l.check_at(Some("a.ns"), t), Err(Exceeded::PerIdentity(2)));
        // The total (100) bounds them all: 10 taken so far, plus refused
        // ones that took nothing.
        let total = LocalRateLimit {
            total: Some(Gcra::new(3)),
            ..Default::default()
        };
        assert_eq!(
            (0..5).filter(|_| total.check_at(None, t).is_ok()).count(),
            3
        );
        assert_eq!(total.check_at(Some("x"), t), Err(Exceeded::Total(3)));
        assert!(LocalRateLimit::default().is_empty());
    }

    /// Workers share a cell: from several threads at once, no more than
    /// the burst is taken.
    #[test]
    fn shared_by_threads_without_overshoot() {
        let g = std::sync::Arc::new(Gcra::new(1000));
        let t = 10 * SEC;
        let taken: usize = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..1000).filter(|_| g.take(t)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 1000);
    }
}
