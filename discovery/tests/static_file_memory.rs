//! Parsing a large static file holds memory in proportion to one service
//! table at a time, not to the whole file's TOML tree. Its own test binary:
//! the global allocator below counts this process's heap.
// A counting allocator is the one way to see the heap's peak from inside.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain atomics and never touch the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn parse_memory_is_proportional_to_the_result() {
    let mut text = String::new();
    for i in 0..20_000u32 {
        let (a, b) = (i >> 8 & 0xff, i & 0xff);
        writeln!(
            text,
            "[[service]]\nname = \"s{i}.test:80\"\nendpoints = [\"10.1.{a}.{b}:80\"]"
        )
        .unwrap();
    }
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let services = ringmesh_discovery::static_file::parse(&text).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let kept = NOW.load(Ordering::Relaxed) - before;
    assert_eq!(services.len(), 20_000);
    eprintln!(
        "text {} KiB, result {} KiB, peak while parsing {} KiB",
        text.len() / 1024,
        kept / 1024,
        peak / 1024
    );
    // The whole file's tree took ~33 bytes per byte of text (450 MB for a
    // 13.5 MB file); one table's at a time adds little to the result.
    assert!(
        peak < 2 * kept + (1 << 20),
        "peak {peak} bytes for a result of {kept} bytes"
    );
}
