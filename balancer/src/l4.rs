//! Layer-4 balancing: P2C over open connections.
//!
//! Two candidates are drawn with probability proportional to their weight;
//! the one with fewer open connections per unit of weight wins, and a tie
//! goes to the first draw. So an idle set is shared by weight, and a loaded
//! set converges to open connections proportional to weight.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

/// One endpoint's state in one worker's replica.
#[derive(Debug)]
pub struct EndpointState {
    addr: SocketAddr,
    weight: Cell<u32>,
    open: Cell<u32>,
}

impl EndpointState {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn weight(&self) -> u32 {
        self.weight.get()
    }

    /// Connections currently open to this endpoint from this worker.
    pub fn open(&self) -> u32 {
        self.open.get()
    }
}

/// Counts a connection as open on its endpoint until dropped. Holding the
/// `Rc` keeps the count correct even after the endpoint leaves the set.
#[derive(Debug)]
pub struct OpenGuard(Rc<EndpointState>);

impl OpenGuard {
    pub fn new(ep: Rc<EndpointState>) -> Self {
        ep.open.set(ep.open.get() + 1);
        Self(ep)
    }

    pub fn endpoint(&self) -> &Rc<EndpointState> {
        &self.0
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
    }
}

/// A worker's replica of one service's balancer.
#[derive(Debug, Default)]
pub struct L4Balancer {
    endpoints: Vec<Rc<EndpointState>>,
    /// Running sums of weights, for O(log n) weighted draws.
    cumulative: Vec<u64>,
}

impl L4Balancer {
    pub fn new(endpoints: impl IntoIterator<Item = (SocketAddr, u32)>) -> Self {
        let mut b = Self::default();
        b.update(endpoints);
        b
    }

    /// Replaces the endpoint set. Endpoints that stay (same address) keep
    /// their state (the same `Rc`); a changed weight takes effect at once.
    pub fn update(&mut self, endpoints: impl IntoIterator<Item = (SocketAddr, u32)>) {
        let old = std::mem::take(&mut self.endpoints);
        for (addr, weight) in endpoints {
            let weight = weight.max(1);
            // Same `Rc` for an endpoint that stays, so guards of connections
            // already open keep counting against it.
            let ep = match old.iter().find(|e| e.addr == addr) {
                Some(e) => {
                    e.weight.set(weight);
                    e.clone()
                }
                None => Rc::new(EndpointState {
                    addr,
                    weight: Cell::new(weight),
                    open: Cell::new(0),
                }),
            };
            self.endpoints.push(ep);
        }
        let mut sum = 0;
        self.cumulative = self
            .endpoints
            .iter()
            .map(|e| {
                sum += u64::from(e.weight.get());
                sum
            })
            .collect();
    }

    pub fn endpoints(&self) -> &[Rc<EndpointState>] {
        &self.endpoints
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Picks an endpoint index, skipping those for which `excluded(i)` is
    /// true (endpoints already tried for this connection). `None` when no
    /// endpoint is left.
    pub fn pick(&self, excluded: impl Fn(usize) -> bool) -> Option<usize> {
        let a = self.draw(&excluded)?;
        let Some(b) = self.draw(&excluded) else {
            return Some(a);
        };
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        // open_a / w_a <= open_b / w_b, without division.
        let cost_a = u64::from(ea.open.get()) * u64::from(eb.weight.get());
        let cost_b = u64::from(eb.open.get()) * u64::from(ea.weight.get());
        Some(if cost_b < cost_a { b } else { a })
    }

    /// Picks an endpoint whose address is not in `tried` (the endpoints a
    /// connection or request already failed on).
    pub fn pick_untried(&self, tried: &[SocketAddr]) -> Option<Rc<EndpointState>> {
        let i = self.pick(|i| tried.contains(&self.endpoints[i].addr))?;
        Some(self.endpoints[i].clone())
    }

    /// A weighted random draw among endpoints not excluded.
    fn draw(&self, excluded: &impl Fn(usize) -> bool) -> Option<usize> {
        let total = *self.cumulative.last()?;
        // Rejection sampling is O(log n) per try and exclusions are few (the
        // endpoints tried for one connection); fall back to a scan.
        for _ in 0..8 {
            let r = fastrand::u64(0..total);
            let i = self.cumulative.partition_point(|&c| c <= r);
            if !excluded(i) {
                return Some(i);
            }
        }
        let remaining: u64 = (0..self.endpoints.len())
            .filter(|&i| !excluded(i))
            .map(|i| u64::from(self.endpoints[i].weight.get()))
            .sum();
        if remaining == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..remaining);
        for (i, ep) in self.endpoints.iter().enumerate() {
            if excluded(i) {
                continue;
            }
            let w = u64::from(ep.weight.get());
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_untried_skips_failed_endpoints() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let bal = L4Balancer::new([(a, 1), (b, 1), (c, 5)]);
        for _ in 0..100 {
            assert_eq!(bal.pick_untried(&[a, c]).unwrap().addr(), b);
        }
        assert!(bal.pick_untried(&[a, b, c]).is_none());
        assert!(L4Balancer::default().pick_untried(&[]).is_none());
    }
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn empty_picks_nothing() {
        assert_eq!(L4Balancer::new([]).pick(|_| false), None);
    }

    #[test]
    fn idle_share_follows_weights() {
        let b = L4Balancer::new([(addr(1), 3), (addr(2), 1)]);
        let mut hits = [0u32; 2];
        for _ in 0..40_000 {
            hits[b.pick(|_| false).unwrap()] += 1;
        }
        let share = f64::from(hits[0]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn loaded_share_follows_weights() {
        // Long-lived connections: the open counts converge to the weights.
        let b = L4Balancer::new([(addr(1), 3), (addr(2), 1)]);
        let guards: Vec<_> = (0..400)
            .map(|_| OpenGuard::new(b.endpoints()[b.pick(|_| false).unwrap()].clone()))
            .collect();
        let open0 = b.endpoints()[0].open();
        assert!((280..=320).contains(&open0), "open {open0}");
        drop(guards);
        assert_eq!(b.endpoints()[0].open() + b.endpoints()[1].open(), 0);
    }

    #[test]
    fn prefers_the_less_loaded() {
        let b = L4Balancer::new([(addr(1), 1), (addr(2), 1)]);
        let _busy: Vec<_> = (0..10)
            .map(|_| OpenGuard::new(b.endpoints()[0].clone()))
            .collect();
        let mut to_idle = 0;
        for _ in 0..1000 {
            if b.pick(|_| false) == Some(1) {
                to_idle += 1;
            }
        }
        // Only a draw of (0, 0) can choose the busy one: ~25%.
        assert!(to_idle > 650, "{to_idle}");
    }

    #[test]
    fn update_keeps_state_of_endpoints_that_stay() {
        let mut b = L4Balancer::new([(addr(1), 1), (addr(2), 1)]);
        let g = OpenGuard::new(b.endpoints()[1].clone());
        b.update([(addr(2), 1), (addr(3), 1)]);
        assert_eq!(b.endpoints()[0].addr(), addr(2));
        assert_eq!(b.endpoints()[0].open(), 1);
        assert!(Rc::ptr_eq(g.endpoint(), &b.endpoints()[0]));
        assert_eq!(b.endpoints()[1].open(), 0);
        drop(g);
        assert_eq!(b.endpoints()[0].open(), 0);
    }

    proptest! {
        #[test]
        fn never_picks_excluded(weights in proptest::collection::vec(1u32..100, 1..20),
                                excluded in proptest::collection::vec(any::<bool>(), 20)) {
            let b = L4Balancer::new(weights.iter().enumerate().map(|(i, w)| (addr(i as u16 + 1), *w)));
            let any_left = (0..weights.len()).any(|i| !excluded[i]);
            for _ in 0..50 {
                match b.pick(|i| excluded[i]) {
                    Some(i) => prop_assert!(!excluded[i] && i < weights.len()),
                    None => prop_assert!(!any_left),
                }
            }
        }

        #[test]
        fn open_counts_return_to_zero(ops in proptest::collection::vec(any::<bool>(), 1..200)) {
            let mut b = L4Balancer::new([(addr(1), 2), (addr(2), 1), (addr(3), 1)]);
            let mut guards = Vec::new();
            for (n, open) in ops.into_iter().enumerate() {
                if open || guards.is_empty() {
                    let i = b.pick(|_| false).unwrap();
                    guards.push(OpenGuard::new(b.endpoints()[i].clone()));
                } else {
                    guards.swap_remove(n % guards.len());
                }
                if n % 17 == 0 {
                    b.update([(addr(2), 1), (addr(3), 3), (addr(4), 1)]);
                }
            }
            drop(guards);
            prop_assert!(b.endpoints().iter().all(|e| e.open() == 0));
        }
    }
}
