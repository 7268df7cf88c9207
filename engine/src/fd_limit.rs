//! The process's descriptor limit (`RLIMIT_NOFILE`), and a reserve of it
//! the data path leaves free.
//!
//! Without one, a client holding requests open to an upstream that never
//! answers (each HTTP/2 stream to an HTTP/1 service pins a connection of
//! its own) takes every descriptor: accepts and connects then fail for
//! everyone, and the admin server cannot take a probe. So the workers
//! refuse a new connection, accepted or upstream, whose descriptor lands
//! in the top of the range ([`reserve`]): an accepted one is closed at
//! once, an upstream one fails as the proxy out of resources (503). The
//! control core (admin probes, discovery, identity) has the reserve.
//!
//! The kernel hands out the lowest free descriptor, so a new one numbered
//! `n` means `0..n` are all open: checking the number costs nothing and
//! never refuses while descriptors below the mark are free.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Descriptors numbered from here up are the reserve (`i32::MAX`: none,
/// before [`init`]).
static HIGH_WATER: AtomicI32 = AtomicI32::new(i32::MAX);

/// How many of `limit` descriptors the data path leaves free, `open`
/// being open already (listeners, rings, the control core's): a tenth of
/// the limit, at least 32 and at most 1024, but never more than half of
/// what is still free (a low limit must leave the data path something).
pub(crate) fn reserve(limit: u64, open: u64) -> u64 {
    (limit / 10)
        .clamp(32, 1024)
        .min(limit.saturating_sub(open) / 2)
}

/// Reads the soft descriptor limit and sets the mark below its reserve
/// (call once the listeners and workers are up: what they hold counts);
/// the limit and the reserve, or `None` when unlimited or unreadable.
pub(crate) fn init() -> Option<(u64, u64)> {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    if soft == nix::sys::resource::RLIM_INFINITY {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let reserve = reserve(soft, open);
    let high = soft.saturating_sub(reserve);
    HIGH_WATER.store(i32::try_from(high).unwrap_or(i32::MAX), Ordering::Relaxed);
    if high.saturating_sub(open) < 256 {
        tracing::warn!(
            limit = soft,
            open,
            "RLIMIT_NOFILE leaves room for few connections (a client and an upstream descriptor each); raise it (ulimit -n)"
        );
    }
    Some((soft, reserve))
}

/// Whether a new connection's descriptor `fd` is in the reserve.
pub(crate) fn in_reserve(fd: RawFd) -> bool {
    fd >= HIGH_WATER.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_a_tenth_within_bounds() {
        assert_eq!(reserve(256, 40), 32);
        assert_eq!(reserve(1024, 40), 102);
        assert_eq!(reserve(20_000, 40), 1024);
        assert_eq!(reserve(1 << 20, 40), 1024);
        // A low limit: half of what is free, so the data path has the rest.
        assert_eq!(reserve(64, 42), 11);
        assert_eq!(reserve(40, 42), 0);
    }
}
