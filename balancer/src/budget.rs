//! Retry budgets (linkerd2-proxy's default: retries may add 20% to the
//! requests, plus 10 per second so a quiet service can still retry).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// A token bucket: each response that is not a failure deposits `ratio`
/// of a token (as linkerd2-proxy's retry policy deposits for a response it
/// would not retry), time adds `min_per_second`, and a retry spends one
/// whole token.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    /// At most this many tokens are banked (the reserve plus the ratio's
    /// share of 1000 requests), so a long quiet spell does not fund a
    /// retry storm.
    cap: f64,
    tokens: Cell<f64>,
    refilled: Cell<Instant>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 10.0, Duration::from_secs(10), Instant::now())
    }
}

impl RetryBudget {
    /// A budget that starts with its reserve, `ttl` worth of the floor
    /// (tower's `TpsBudget`, which linkerd2-proxy's budgets are: 10 per
    /// second over 10 s, 100 retries), time refilling it at the floor.
    pub fn new(ratio: f64, min_per_second: f64, ttl: Duration, now: Instant) -> Self {
        let reserve = min_per_second * ttl.as_secs_f64();
        Self {
            ratio,
            min_per_second,
            cap: reserve + ratio * 1000.0,
            tokens: Cell::new(reserve),
            refilled: Cell::new(now),
        }
    }

    /// A response that was not a failure.
    pub fn deposit(&self) {
        self.tokens
            .set((self.tokens.get() + self.ratio).min(self.cap));
    }

    /// Takes a token for a retry if there is one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled.get());
        self.refilled.set(now);
        let t = (self.tokens.get() + elapsed.as_secs_f64() * self.min_per_second).min(self.cap);
        if t >= 1.0 {
            self.tokens.set(t - 1.0);
            true
        } else {
            self.tokens.set(t);
            false
        }
    }

    /// Gives back a token withdrawn for a retry that was not made.
    pub fn refund(&self) {
        self.tokens.set((self.tokens.get() + 1.0).min(self.cap));
    }

    /// Whether a retry could be paid for now (without spending).
    pub fn can_withdraw(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled.get());
        self.tokens.get() + elapsed.as_secs_f64() * self.min_per_second >= 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_bounded_by_ratio_plus_floor() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.2, 10.0, Duration::from_secs(10), t0);
        // The reserve: 10 per second over the 10 s ttl, no more.
        let mut n = 0;
        while b.withdraw(t0) {
            n += 1;
        }
        assert_eq!(n, 100, "the starting reserve");
        // 1000 requests in the same instant buy 200 retries, no more.
        for _ in 0..1000 {
            b.deposit();
        }
        let mut n = 0;
        while b.withdraw(t0) {
            n += 1;
        }
        assert!((199..=200).contains(&n), "{n}");
        // With no requests, the floor: 10 per second.
        let mut n = 0;
        for ms in 1..=1000 {
            if b.withdraw(t0 + Duration::from_millis(ms)) {
                n += 1;
            }
        }
        assert!((9..=10).contains(&n), "{n}");
    }
}
