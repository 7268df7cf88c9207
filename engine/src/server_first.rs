//! Destinations seen speaking first (MySQL, SMTP, NATS, SSH ... on ports
//! not marked opaque), remembered per worker for a while so that later
//! connections to them are relayed at once, without detection.
//!
//! Bounded: at most [`MAX_ENTRIES`] per worker; when full, expired entries
//! go, then the one closest to expiry. `_at(now)` so tests need no clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringmesh_discovery::Authority;

/// How long a destination stays known as server-first.
pub(crate) const TTL: Duration = Duration::from_secs(600);
/// Destinations remembered per worker.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// A logical destination: what the client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dest {
    Addr(SocketAddr),
    Service(Authority),
}

#[derive(Default)]
pub(crate) struct ServerFirst {
    until: HashMap<Dest, Instant>,
}

impl ServerFirst {
    pub(crate) fn contains_at(&mut self, dest: &Dest, now: Instant) -> bool {
        match self.until.get(dest) {
            Some(t) if *t > now => true,
            Some(_) => {
                self.until.remove(dest);
                false
            }
            None => false,
        }
    }

    pub(crate) fn remember_at(&mut self, dest: Dest, now: Instant) {
        if self.until.len() >= MAX_ENTRIES && !self.until.contains_key(&dest) {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= MAX_ENTRIES {
                let soonest = self
                    .until
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(d, _)| d.clone());
                if let Some(d) = soonest {
                    self.until.remove(&d);
                }
            }
        }
        self.until.insert(dest, now + TTL);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Dest {
        Dest::Addr(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn remembered_until_expiry() {
        let mut t = ServerFirst::default();
        let now = Instant::now();
        assert!(!t.contains_at(&addr(1), now));
        t.remember_at(addr(1), now);
        assert!(t.contains_at(&addr(1), now + TTL - Duration::from_secs(1)));
        assert!(!t.contains_at(&addr(1), now + TTL));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn bounded() {
        let mut t = ServerFirst::default();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            t.remember_at(addr(i as u16), now + Duration::from_millis(i as u64));
        }
        assert_eq!(t.len(), MAX_ENTRIES);
        // The newest is kept; the first (soonest to expire) went.
        let last = now + Duration::from_millis(MAX_ENTRIES as u64 + 9);
        assert!(t.contains_at(&addr((MAX_ENTRIES + 9) as u16), last));
        assert!(!t.contains_at(&addr(0), now));
    }
}
