//! Failure accrual and retries end to end: real HTTP/1 backends on
//! loopback, one failing, bounded load through the proxy.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::lb::*;
use common::*;
use ringmesh_engine::IoDriver;

/// A backend answering 503 is ejected after 7 failures in a row (its
/// traffic moves to the healthy one); once it recovers and its backoff runs
/// out, a probe succeeds and it is back in rotation.
#[test]
fn failing_backend_is_ejected_then_restored() {
    let delay = Duration::from_micros(200);
    let failing = Arc::new(AtomicBool::new(true));
    let (a, c) = (
        backend(b'a', delay),
        switchable(b'c', delay, failing.clone()),
    );
    let proxy = proxy_to(IoDriver::Uring, &[&a, &c], "accrual");
    let addr = proxy.forward_addrs()[0];

    // 4 clients (POSTs, so no retry hides the 503s) for 300 ms: c answers
    // 503 until its seventh failure in a row ejects it (a few requests already sent to it may still fail),
    // then, for the rest of its first backoff (>= 500 ms), nothing reaches it.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 4, stop.clone(), true);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut seen: Vec<(Instant, bool, u8)> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seen.sort_by_key(|(t, _, _)| *t);
    let failures: Vec<Instant> = seen
        .iter()
        .filter(|(_, bad, _)| *bad)
        .map(|(t, _, _)| *t)
        .collect();
    assert!(
        (7..=7 + 4).contains(&failures.len()),
        "{} failures",
        failures.len()
    );
    let ejected_at = *failures.last().unwrap();
    let after: Vec<_> = seen.iter().filter(|(t, _, _)| *t > ejected_at).collect();
    assert!(
        after.len() > 50,
        "{} answers after the ejection",
        after.len()
    );
    assert!(
        after.iter().all(|(_, bad, n)| !bad && *n == b'a'),
        "an ejected endpoint got a request"
    );

    // Recovered: after the backoff (at most 1.5 s) a probe reaches it and
    // it takes traffic again.
    failing.store(false, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 4, stop.clone(), true);
    thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<(Instant, bool, u8)> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(seen.iter().all(|(_, bad, _)| !bad));
    let to_c = seen.iter().filter(|(_, _, n)| *n == b'c').count();
    assert!(
        to_c > 100,
        "the recovered backend is back in rotation: {to_c} of {}",
        seen.len()
    );
    proxy.shutdown();
    proxy.wait();
}

/// Bodiless requests answered 503 by one endpoint are sent again to
/// another (within the retry budget): the client sees only 200s, although
/// the failing backend was asked. A request with a body is not retried.
#[test]
fn answers_503_are_retried_on_another_endpoint() {
    let delay = Duration::from_micros(100);
    let failing = Arc::new(AtomicBool::new(true));
    let (a, c) = (backend(b'a', delay), switchable(b'c', delay, failing));
    let admin = closed_port();
    let admin_addr = admin.to_string();
    let proxy = proxy_with(
        IoDriver::Uring,
        &[&a, &c],
        "retry",
        &[("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin_addr)],
    );
    let addr = proxy.forward_addrs()[0];
    // Concurrent clients so both endpoints are tried from the start.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 4, stop.clone(), false);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<(Instant, bool, u8)> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(seen.len() > 100);
    assert!(
        seen.iter().all(|(_, bad, n)| !bad && *n == b'a'),
        "every 503 was retried on the healthy endpoint"
    );
    // Counted against the endpoint that answered 503, and per worker.
    let metrics = std::process::Command::new("curl")
        .args(["-sS", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&metrics.stdout);
    let sum = |prefix: &str, needle: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(needle))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let per_endpoint = sum(
        "ringmesh_retries_total{",
        &format!("target_addr=\"{}\"", c.addr),
    );
    assert!(per_endpoint >= 1, "{body}");
    assert_eq!(sum("ringmesh_retries_total{", ""), per_endpoint, "{body}");
    assert_eq!(
        sum("ringmesh_worker_retries_total{", ""),
        per_endpoint,
        "{body}"
    );
    proxy.shutdown();
    proxy.wait();

    // A POST (not idempotent, and the endpoint did receive it) is not
    // retried, even without a body: its 503 reaches the client.
    let failing = Arc::new(AtomicBool::new(true));
    let (a2, c2) = (backend(b'a', delay), switchable(b'c', delay, failing));
    let proxy = proxy_to(IoDriver::Uring, &[&a2, &c2], "retry-post");
    // Concurrent clients, so both endpoints are tried from the start.
    let addr2 = proxy.forward_addrs()[0];
    let handles: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let conn = connect(addr2);
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(300) {
                    w.write_all(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                    let (status, _) = read_answer(&mut r);
                    if status.contains(" 503 ") {
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    let saw: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let saw_503 = saw.contains(&true);
    assert!(
        saw_503,
        "a POST answered 503 was passed through, not retried"
    );
    proxy.shutdown();
    proxy.wait();

    // Only the failing endpoint: nothing to retry on, its 503 passes through.
    let failing = Arc::new(AtomicBool::new(true));
    let only = switchable(b'c', delay, failing);
    let proxy = proxy_to(IoDriver::Uring, &[&only], "retry-one");
    let conn = connect(proxy.forward_addrs()[0]);
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    w.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 503 "), "{status}");
    proxy.shutdown();
    proxy.wait();
}
