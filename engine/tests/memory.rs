//! Memory of the binary with one worker (issue 13, item 6): idle RSS,
//! what each idle HTTP/1 keep-alive client connection costs, and that a
//! burst's memory goes back to the OS once its connections close. Both io
//! drivers; real sockets on loopback; every wait bounded.
//!
//! Before the fix (commit message has the numbers): 13–16 MiB idle, 18–43
//! KiB per idle connection, and nothing given back after they closed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::origin;
use common::proc::*;
use common::*;

/// Idle keep-alive connections held at once (the per-connection figure is
/// the RSS growth over them; enough of them to rise above noise).
const CONNS: usize = 4000;
/// Targets, from the issue.
const MAX_IDLE_RSS_KIB: u64 = 10 * 1024;
/// Debug builds: idle anonymous memory (heap, stacks), 1 MiB measured.
const MAX_IDLE_ANON_KIB: u64 = 4 * 1024;
const MAX_BYTES_PER_CONN: u64 = 4096;
const MAX_RELEASED_OVER_IDLE: f64 = 0.20;

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `RssAnon:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Lets this process (and the proxy it starts) hold the connections.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(want.max(lim.rlim_cur));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= want,
        "RLIMIT_NOFILE hard limit {} < {want}",
        lim.rlim_max
    );
}

/// One keep-alive request on `s`; panics unless the answer arrives.
fn hello(s: &mut TcpStream) {
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: memory.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"hello from o\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "proxy closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

fn idle_connections_cost_little_and_are_given_back(driver: &str) {
    raise_fd_limit(CONNS as u64 * 2 + 1000);
    let origin = origin("o");
    let (p, listen) = Running::spawn_ready(|listen| {
        let fwd = format!("{listen}={}", origin.addr);
        ringmesh(
            driver,
            &[
                ("LINKERD2_PROXY_CORES", "1"),
                ("RINGMESH_TCP_FORWARD", &fwd),
            ],
        )
    });
    let pid = p.child.id();

    // Idle: after one request, so the worker's lazily built state exists.
    let mut first = connect(listen);
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    hello(&mut first);
    drop(first);
    // Settled: the figure stops moving (the closed connection is gone).
    let mut idle = rss_kib(pid);
    eventually(Duration::from_secs(3), || {
        let now = rss_kib(pid);
        let settled = now == idle;
        idle = now;
        settled
    });
    let idle_anon = status_kib(pid, "RssAnon:");
    eprintln!("{driver}: idle RSS {idle} KiB ({idle_anon} KiB anonymous)");

    // Held: CONNS connections, each after one request, all idle.
    let started = Instant::now();
    let mut held = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "opening connections took too long"
        );
        let mut s = connect(listen);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        hello(&mut s);
        held.push(s);
    }
    // Each connection's last bytes were handled before its answer came,
    // so this is the idle state.
    let with = rss_kib(pid);
    let per_conn = (with.saturating_sub(idle)) * 1024 / CONNS as u64;
    eprintln!(
        "{driver}: {CONNS} idle keep-alive connections: RSS {with} KiB, {per_conn} bytes each"
    );

    // Released: every connection closed.
    drop(held);
    let limit = (idle as f64 * (1.0 + MAX_RELEASED_OVER_IDLE)) as u64;
    let mut released = 0;
    let back = eventually(Duration::from_secs(30), || {
        released = rss_kib(pid);
        released <= limit
    });
    eprintln!(
        "{driver}: after closing: RSS {released} KiB in {:?}",
        started.elapsed()
    );

    // The unoptimised test build's code alone is ~6 MiB more resident
    // than the release binary's; its heap is what this can check.
    if cfg!(debug_assertions) {
        assert!(
            idle_anon <= MAX_IDLE_ANON_KIB,
            "{driver}: idle anonymous RSS {idle_anon} KiB > {MAX_IDLE_ANON_KIB} KiB"
        );
    } else {
        assert!(
            idle <= MAX_IDLE_RSS_KIB,
            "{driver}: idle RSS {idle} KiB > {MAX_IDLE_RSS_KIB} KiB"
        );
    }
    assert!(
        per_conn <= MAX_BYTES_PER_CONN,
        "{driver}: {per_conn} bytes per idle keep-alive connection > {MAX_BYTES_PER_CONN}"
    );
    assert!(
        back,
        "{driver}: RSS {released} KiB 30 s after the connections closed, idle was {idle} KiB"
    );
    // Still serving after all that.
    let mut s = connect(listen);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    hello(&mut s);
}

#[test]
fn idle_connections_cost_little_and_are_given_back_uring() {
    idle_connections_cost_little_and_are_given_back("uring");
}

#[test]
fn idle_connections_cost_little_and_are_given_back_epoll() {
    idle_connections_cost_little_and_are_given_back("epoll");
}
