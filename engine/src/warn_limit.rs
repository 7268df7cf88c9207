//! Rate-limited warnings for what can fail once per request or connection
//! (a failing backend made 6 700 WARN lines a second): per worker and per
//! kind of warning, the first [`WarnLimit::PER_INTERVAL`] in each
//! [`WarnLimit::INTERVAL`] are logged, the rest counted, and the count is
//! logged as one summary line when the kind next warns in a later interval
//! (or when [`WarnLimit::flush_at`] finds a finished interval).
//!
//! Only log lines are dropped: the metrics that count failures are written
//! before and regardless of this. Per worker, like everything on a worker:
//! plain `Cell`s, no lock, no atomic.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The warnings that can repeat at the rate of requests or connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Warning {
    /// An HTTP/1 request answered with the proxy's own error.
    RequestFailed,
    /// No connection to any endpoint of an HTTP/1 request's service.
    UpstreamUnavailable,
    /// An HTTP/2 stream answered with the proxy's own error.
    Http2RequestFailed,
    /// An HTTP/2 client cut off for flooding (Rapid Reset and the like).
    Http2Calm,
    /// An upstream HTTP/2 server cut off for flooding.
    Http2UpstreamCalm,
    /// An opaque TCP connection closed: its upstream could not be reached.
    ConnectFailed,
    /// A forward's service has no endpoints (yet).
    ForwardUnresolved,
    /// A connection to one of ringmesh's own listeners.
    Loop,
    /// `accept(2)` failed (out of descriptors and the like).
    AcceptFailed,
    /// An accepted connection closed at once: the data path's share of
    /// descriptors is used up (`fd_limit`).
    DescriptorsExhausted,
    /// An inbound mutual-TLS handshake or transport header failed.
    TlsHandshake,
    /// An inbound connection denied by the authorization policy.
    Unauthorized,
    /// An inbound connection to an address not in
    /// `LINKERD2_PROXY_INBOUND_IPS`.
    NotInboundIp,
    /// A connection with nowhere to go (not redirected, and nothing it
    /// names): closed (logged at INFO).
    NotRedirected,
    /// A client's request head or body not in time (INFO).
    ClientTimeout,
    /// A request or connection the `audit` default policy admitted:
    /// logged (INFO), as linkerd2-proxy logs each audit admission, within
    /// the limit.
    Audit,
}

impl Warning {
    const ALL: [Warning; 16] = [
        Warning::RequestFailed,
        Warning::UpstreamUnavailable,
        Warning::Http2RequestFailed,
        Warning::Http2Calm,
        Warning::Http2UpstreamCalm,
        Warning::ConnectFailed,
        Warning::ForwardUnresolved,
        Warning::Loop,
        Warning::AcceptFailed,
        Warning::DescriptorsExhausted,
        Warning::TlsHandshake,
        Warning::Unauthorized,
        Warning::NotInboundIp,
        Warning::NotRedirected,
        Warning::ClientTimeout,
        Warning::Audit,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Warning::RequestFailed => "request failed",
            Warning::UpstreamUnavailable => "upstream unavailable",
            Warning::Http2RequestFailed => "HTTP/2 request failed",
            Warning::Http2Calm => "HTTP/2 client cut off",
            Warning::Http2UpstreamCalm => "HTTP/2 upstream cut off",
            Warning::ConnectFailed => "cannot connect",
            Warning::ForwardUnresolved => "forward target not resolved",
            Warning::Loop => "loop refused",
            Warning::AcceptFailed => "accept failed",
            Warning::DescriptorsExhausted => "descriptors near the limit",
            Warning::TlsHandshake => "inbound TLS failed",
            Warning::Unauthorized => "connection denied by policy",
            Warning::NotInboundIp => "inbound address not allowed",
            Warning::NotRedirected => "connection not redirected",
            Warning::ClientTimeout => "client too slow",
            Warning::Audit => "allowed by the audit policy",
        }
    }
}

/// What to do with one warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log it; first log a summary of `suppressed` warnings of its kind
    /// dropped in the earlier interval when that is not 0.
    Log { suppressed: u64 },
    /// Drop it (counted for the next summary).
    Suppress,
}

#[derive(Default)]
struct Window {
    /// When the current interval began; `None` before the first warning.
    start: Cell<Option<Instant>>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

/// One worker's limits, one window per [`Warning`].
pub(crate) struct WarnLimit {
    windows: [Window; Warning::ALL.len()],
}

impl Default for WarnLimit {
    fn default() -> Self {
        Self {
            windows: std::array::from_fn(|_| Window::default()),
        }
    }
}

impl WarnLimit {
    /// Warnings of one kind logged per interval before the rest are counted.
    pub(crate) const PER_INTERVAL: u32 = 10;
    pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) fn check(&self, kind: Warning) -> Verdict {
        self.check_at(kind, Instant::now())
    }

    pub(crate) fn check_at(&self, kind: Warning, now: Instant) -> Verdict {
        let w = &self.windows[kind as usize];
        let mut suppressed = 0;
        if w.start.get().is_none_or(|s| now >= s + Self::INTERVAL) {
            w.start.set(Some(now));
            w.logged.set(0);
            suppressed = w.suppressed.replace(0);
        }
        if w.logged.get() < Self::PER_INTERVAL {
            w.logged.set(w.logged.get() + 1);
            Verdict::Log { suppressed }
        } else {
            w.suppressed.set(w.suppressed.get().saturating_add(1));
            Verdict::Suppress
        }
    }

    /// Whether a warning of `kind` is to be logged now (a summary of the
    /// earlier ones dropped is logged first).
    pub(crate) fn admit(&self, kind: Warning) -> bool {
        match self.check(kind) {
            Verdict::Log { suppressed } => {
                if suppressed > 0 {
                    summarise(kind, suppressed);
                }
                true
            }
            Verdict::Suppress => false,
        }
    }

    /// The kinds whose interval is over with warnings still counted, and
    /// their counts (taken: each is reported once). For a periodic task, so
    /// a flood that stops is still summarised.
    pub(crate) fn flush_at(&self, now: Instant) -> impl Iterator<Item = (Warning, u64)> + '_ {
        Warning::ALL.into_iter().filter_map(move |kind| {
            let w = &self.windows[kind as usize];
            let over = w.start.get().is_some_and(|s| now >= s + Self::INTERVAL);
            let n = if over { w.suppressed.replace(0) } else { 0 };
            (n > 0).then_some((kind, n))
        })
    }
}

/// Logs the summary line for `suppressed` dropped warnings of `kind`.
pub(crate) fn summarise(kind: Warning, suppressed: u64) {
    tracing::warn!(
        warning = kind.name(),
        suppressed,
        interval = ?WarnLimit::INTERVAL,
        "similar warnings suppressed (at most {} a kind per interval are logged; metrics count them all)",
        WarnLimit::PER_INTERVAL
    );
}

/// `tracing::warn!` through a worker's [`WarnLimit`]:
///
/// ```ignore
/// warn_limited!(w, Warning::RequestFailed, peer = %c.peer, reason, "request failed");
/// ```
///
/// `$worker` is anything with a `warnings: WarnLimit` field (the worker);
/// the remaining arguments are `tracing::warn!`'s.
macro_rules! warn_limited {
    ($worker:expr, $kind:expr, $($arg:tt)+) => {
        if $worker.telemetry.warnings.admit($kind) {
            tracing::warn!($($arg)+);
        }
    };
}
pub(crate) use warn_limited;

/// As [`warn_limited!`], for INFO lines that can repeat per connection (a
/// peer can make them at will): the same limits, per kind.
macro_rules! info_limited {
    ($worker:expr, $kind:expr, $($arg:tt)+) => {
        if $worker.telemetry.warnings.admit($kind) {
            tracing::info!($($arg)+);
        }
    };
}
pub(crate) use info_limited;

#[cfg(test)]
mod tests {
    use super::*;

    const N: u32 = WarnLimit::PER_INTERVAL;

    #[test]
    fn first_n_per_interval_then_one_summary_with_the_count() {
        let limit = WarnLimit::default();
        let t0 = Instant::now();
        // 6 700 a second for 3 seconds, as under the failing backend.
        let mut logged = 0;
        for i in 0..20_100u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 150);
            match limit.check_at(Warning::RequestFailed, now) {
                Verdict::Log { suppressed } => {
                    assert_eq!(suppressed, 0);
                    logged += 1;
                }
                Verdict::Suppress => {}
            }
        }
        assert_eq!(logged, N);
        // The next interval: the first warning carries the count dropped.
        let later = t0 + WarnLimit::INTERVAL;
        assert_eq!(
            limit.check_at(Warning::RequestFailed, later),
            Verdict::Log {
                suppressed: u64::from(20_100 - N)
            }
        );
        // Reported once.
        for _ in 1..N {
            assert_eq!(
                limit.check_at(Warning::RequestFailed, later),
                Verdict::Log { suppressed: 0 }
            );
        }
        assert_eq!(
            limit.check_at(Warning::RequestFailed, later),
            Verdict::Suppress
        );
    }

    #[test]
    fn kinds_are_limited_apart() {
        let limit = WarnLimit::default();
        let now = Instant::now();
        for _ in 0..100 {
            limit.check_at(Warning::ConnectFailed, now);
        }
        assert_eq!(
            limit.check_at(Warning::RequestFailed, now),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            limit.check_at(Warning::ConnectFailed, now),
            Verdict::Suppress
        );
    }

    #[test]
    fn quiet_rates_are_never_suppressed() {
        let limit = WarnLimit::default();
        let t0 = Instant::now();
        // One a second, for ten minutes.
        for s in 0..600 {
            assert_eq!(
                limit.check_at(Warning::AcceptFailed, t0 + Duration::from_secs(s)),
                Verdict::Log { suppressed: 0 }
            );
        }
    }

    #[test]
    fn flush_reports_a_flood_that_stopped_once() {
        let limit = WarnLimit::default();
        let t0 = Instant::now();
        for _ in 0..N + 7 {
            limit.check_at(Warning::Loop, t0);
        }
        assert_eq!(limit.flush_at(t0 + Duration::from_secs(1)).count(), 0);
        let later = t0 + WarnLimit::INTERVAL;
        assert_eq!(
            limit.flush_at(later).collect::<Vec<_>>(),
            [(Warning::Loop, 7)]
        );
        assert_eq!(limit.flush_at(later).count(), 0);
        assert_eq!(
            limit.check_at(Warning::Loop, later),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn every_kind_has_its_own_window() {
        for (i, kind) in Warning::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
        }
    }
}
