//! Failure accrual: an endpoint that fails too many times in a row is
//! ejected (not picked) for a backoff that grows with each ejection, then
//! probed by the next pick after it; a success restores it.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// When to eject and for how long (linkerd2-proxy's shape: consecutive
/// failures, exponential backoff with jitter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AccrualPolicy {
    /// Consecutive failures that eject an endpoint.
    pub consecutive: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Each backoff is scaled by a random factor in [1 - jitter, 1 + jitter].
    pub jitter: f64,
}

impl Default for AccrualPolicy {
    fn default() -> Self {
        Self {
            consecutive: 7,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: 0.5,
        }
    }
}

/// What a recorded outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The endpoint was just ejected, for this long.
    Ejected(Duration),
    /// A success after an ejection: the endpoint is back.
    Restored,
}

/// One endpoint's failure count and ejection.
#[derive(Debug, Default)]
pub struct Accrual {
    failures: Cell<u32>,
    ejected_until: Cell<Option<Instant>>,
    /// The last ejection's (unjittered) backoff; zero when healthy.
    backoff: Cell<Duration>,
}

impl Accrual {
    /// Ejected now (its backoff has not run out).
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.get().is_some_and(|t| now < t)
    }

    pub fn failure(&self, now: Instant, policy: &AccrualPolicy) -> Transition {
        let failures = self.failures.get().saturating_add(1);
        self.failures.set(failures);
        // While ejected, failures of requests picked earlier change nothing.
        if failures < policy.consecutive.max(1) || self.is_ejected(now) {
            return Transition::None;
        }
        let backoff = match self.backoff.get() {
            d if d.is_zero() => policy.min_backoff,
            d => (d * 2).min(policy.max_backoff),
        };
        self.backoff.set(backoff);
        let jitter = policy.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter + 2.0 * jitter * fastrand::f64();
        let wait = backoff.mul_f64(factor);
        self.ejected_until.set(Some(now + wait));
        Transition::Ejected(wait)
    }

    pub fn success(&self) -> Transition {
        self.failures.set(0);
        let was = !self.backoff.get().is_zero();
        self.backoff.set(Duration::ZERO);
        self.ejected_until.set(None);
        if was {
            Transition::Restored
        } else {
            Transition::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_consecutive_failures_and_backs_off() {
        let p = AccrualPolicy {
            jitter: 0.0,
            ..AccrualPolicy::default()
        };
        let a = Accrual::default();
        let t0 = Instant::now();
        for _ in 0..6 {
            assert_eq!(a.failure(t0, &p), Transition::None);
        }
        assert_eq!(
            a.failure(t0, &p),
            Transition::Ejected(Duration::from_secs(1))
        );
        assert!(a.is_ejected(t0));
        assert!(!a.is_ejected(t0 + Duration::from_secs(1)));
        // The probe fails: ejected again, twice as long.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            a.failure(t1, &p),
            Transition::Ejected(Duration::from_secs(2))
        );
        // ... up to the maximum.
        let mut t = t1;
        for _ in 0..10 {
            t += Duration::from_secs(61);
            a.failure(t, &p);
        }
        assert_eq!(
            a.failure(t + Duration::from_secs(61), &p),
            Transition::Ejected(Duration::from_secs(60))
        );
        assert_eq!(a.success(), Transition::Restored);
        assert!(!a.is_ejected(t));
        assert_eq!(a.success(), Transition::None);
    }

    #[test]
    fn a_success_resets_the_count() {
        let p = AccrualPolicy::default();
        let a = Accrual::default();
        let now = Instant::now();
        for _ in 0..100 {
            for _ in 0..6 {
                a.failure(now, &p);
            }
            a.success();
        }
        assert!(!a.is_ejected(now));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let p = AccrualPolicy::default();
        for _ in 0..200 {
            let a = Accrual::default();
            let now = Instant::now();
            let mut last = Transition::None;
            for _ in 0..7 {
                last = a.failure(now, &p);
            }
            let Transition::Ejected(d) = last else {
                panic!("not ejected: {last:?}");
            };
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(1500),
                "{d:?}"
            );
        }
    }
}
