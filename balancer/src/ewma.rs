//! Peak-EWMA latency estimates (as linkerd2-proxy's balancer keeps them).
//!
//! An observation above the estimate replaces it at once (the peak), so a
//! slowing endpoint is avoided immediately; one below it is blended in with
//! a weight that grows with the time since the last observation (decay
//! `tau`). When read, the estimate also decays toward zero with the time
//! since the last observation, so an endpoint nobody has tried for a while
//! looks cheap again and gets probed. The default estimate stands in for
//! missing data only: the first observation replaces it outright (blending
//! it in would keep a fresh endpoint set near the default for tens of
//! seconds, sending a slow endpoint a share of traffic all that time).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// linkerd2-proxy's defaults: the estimate for an endpoint never observed,
/// and the decay time constant.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// One endpoint's latency estimate.
#[derive(Debug)]
pub struct PeakEwma {
    estimate_ns: Cell<f64>,
    stamp: Cell<Instant>,
    /// No observation yet: the estimate is the default.
    unobserved: Cell<bool>,
}

impl PeakEwma {
    pub fn new(initial: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: Cell::new(initial.as_nanos() as f64),
            stamp: Cell::new(now),
            unobserved: Cell::new(true),
        }
    }

    /// Folds in one observed latency.
    pub fn observe(&self, rtt: Duration, now: Instant, tau: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let current = self.estimate_ns.get();
        let first = self.unobserved.replace(false);
        let next = if rtt > current || first {
            rtt
        } else {
            let w = decay(now.saturating_duration_since(self.stamp.get()), tau);
            current * w + rtt * (1.0 - w)
        };
        self.estimate_ns.set(next);
        self.stamp.set(now);
    }

    /// Back to no observation (the next one replaces the estimate): what
    /// was observed no longer says anything (a penalty for a connection
    /// that failed, once one succeeds).
    pub fn forget(&self, now: Instant) {
        self.unobserved.set(true);
        self.estimate_ns.set(DEFAULT_RTT.as_nanos() as f64);
        self.stamp.set(now);
    }

    /// Whether an observation has replaced the initial estimate.
    pub fn is_observed(&self) -> bool {
        !self.unobserved.get()
    }

    /// The estimate in nanoseconds, decayed for the time since the last
    /// observation.
    pub fn get(&self, now: Instant, tau: Duration) -> f64 {
        self.estimate_ns.get() * decay(now.saturating_duration_since(self.stamp.get()), tau)
    }
}

/// e^(-elapsed/tau): 1 just after an observation, toward 0 long after.
fn decay(elapsed: Duration, tau: Duration) -> f64 {
    let tau = tau.as_nanos().max(1) as f64;
    (-(elapsed.as_nanos() as f64) / tau).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peaks_at_once_and_decays_slowly() {
        let t0 = Instant::now();
        let e = PeakEwma::new(30 * MS, t0);
        e.observe(100 * MS, t0, DEFAULT_DECAY);
        assert_eq!(
            e.get(t0, DEFAULT_DECAY),
            100e6,
            "a peak replaces the estimate"
        );
        // A fast answer a moment later moves it only a little.
        let t1 = t0 + 10 * MS;
        e.observe(MS, t1, DEFAULT_DECAY);
        let v = e.get(t1, DEFAULT_DECAY);
        assert!(v > 99e6 && v < 100e6, "{v}");
        // Many fast answers over seconds bring it down.
        let mut t = t1;
        for _ in 0..200 {
            t += 100 * MS;
            e.observe(MS, t, DEFAULT_DECAY);
        }
        let v = e.get(t, DEFAULT_DECAY);
        assert!(v < 20e6, "{v}");
    }

    #[test]
    fn the_first_observation_replaces_the_default() {
        let t0 = Instant::now();
        let e = PeakEwma::new(30 * MS, t0);
        e.observe(MS / 5, t0, DEFAULT_DECAY);
        assert_eq!(e.get(t0, DEFAULT_DECAY), 200e3);
    }

    #[test]
    fn unobserved_estimates_decay_toward_zero() {
        let t0 = Instant::now();
        let e = PeakEwma::new(50 * MS, t0);
        let later = e.get(t0 + DEFAULT_DECAY, DEFAULT_DECAY);
        assert!((later - 50e6 / std::f64::consts::E).abs() < 1e3, "{later}");
        assert!(e.get(t0 + 10 * DEFAULT_DECAY, DEFAULT_DECAY) < 5e3);
    }
}
