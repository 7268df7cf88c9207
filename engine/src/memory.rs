//! Giving memory back to the OS after a burst of connections.
//!
//! The binary allocates with mimalloc, which keeps freed pages of a
//! thread's heap for reuse and purges them only when that thread calls
//! into the allocator again. A worker that served a burst of connections
//! and then went quiet would keep the burst's memory resident. Each worker
//! therefore watches its open-connection count and, once it has fallen well
//! below its peak, asks mimalloc to collect its heap and purge what is free
//! ([`collect`]; the worker's task that watches is
//! `worker::trim_after_bursts`). Without mimalloc as the global allocator (the library's
//! own tests) the call only touches mimalloc's unused heap: harmless.
//!
//! Must not: run on every connection close (a collect walks the heap), or
//! block.

use std::time::Duration;

/// How often a worker looks at its connection count.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Connections that must have closed since the peak for a collect: small
/// churn is served from what mimalloc keeps anyway.
const MIN_CLOSED: u64 = 256;

/// Bytes that stalled responses must have let go of since their peak for a
/// collect (what each holds is mostly buffers of 16–64 KiB).
const MIN_STALLED_FREED: usize = 4 << 20;

/// Whether a worker whose stalled responses held `peak` bytes at most and
/// hold `now` should give memory back.
pub(crate) fn should_collect_stalled(peak: usize, now: usize) -> bool {
    fell_by_a_quarter(peak as u64, now as u64, MIN_STALLED_FREED as u64)
}

/// Whether a worker whose open connections peaked at `peak` and are now
/// `open` should give memory back.
pub(crate) fn should_collect(peak: u64, open: u64) -> bool {
    fell_by_a_quarter(peak, open, MIN_CLOSED)
}

/// Whether `now` is below `peak` by a quarter of it, and by `at_least`.
fn fell_by_a_quarter(peak: u64, now: u64, at_least: u64) -> bool {
    peak.saturating_sub(now) >= at_least.max(peak / 4)
}

/// Collects this thread's mimalloc heap and returns free memory to the OS
/// at once (not after mimalloc's purge delay).
pub(crate) fn collect() {
    // SAFETY: mi_collect only walks and releases the calling thread's heap
    // and the arenas' free memory; it has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_only_after_a_real_drop() {
        assert!(!should_collect(0, 0));
        assert!(!should_collect(100, 0), "small churn");
        assert!(should_collect(10_000, 0));
        assert!(should_collect(10_000, 7_000));
        assert!(!should_collect(10_000, 9_000), "a quarter must have closed");
        assert!(!should_collect(500, 300));
        assert!(should_collect(500, 200));
    }

    #[test]
    fn collects_after_stalled_responses_let_go() {
        assert!(!should_collect_stalled(0, 0));
        assert!(!should_collect_stalled(1 << 20, 0), "a few stalls");
        assert!(should_collect_stalled(16 << 20, 0));
        assert!(should_collect_stalled(16 << 20, 12 << 20));
        assert!(!should_collect_stalled(32 << 20, 28 << 20), "a quarter");
    }
}
