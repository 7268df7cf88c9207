//! Failure accrual and retries end to end: real HTTP/1 backends on
//! loopback, one failing, bounded load through the proxy.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
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
    let dir = TempDir::new("balancing-accrual");
    let proxy = proxy_to(IoDriver::Uring, &[&a, &c], &dir);
    let addr = proxy.forward_addrs()[0];

    // 4 clients (POSTs, so no retry hides the 503s): c answers 503 until
    // its seventh failure in a row ejects it (a few requests already sent to
    // it may still fail). The clients go on for up to 400 ms more, inside
    // c's first backoff (>= 500 ms), when nothing may reach it. Each phase
    // waits for what it needs (bounded), not a fixed time: a loaded machine
    // answers fewer requests in 300 ms than the check needs.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = answers_counted(addr, 4, stop.clone(), true, tally.clone());
    let ejected = tally.wait(Duration::from_secs(10), |t| t.failures() >= 7);
    let since = tally.answers();
    tally.wait(Duration::from_millis(400), |t| t.answers() >= since + 200);
    stop.store(true, Ordering::Relaxed);
    let mut seen: Vec<(Instant, bool, u8)> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(ejected, "{} failures in 10 s", tally.failures());
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
        after.len() >= 20,
        "{} answers after the ejection",
        after.len()
    );
    assert!(
        after.iter().all(|(_, bad, n)| !bad && *n == b'a'),
        "an ejected endpoint got a request"
    );

    // Recovered: after the backoff (at most 1.5 s) a probe reaches it and
    // it takes traffic again: 100 of its answers within 10 s.
    failing.store(false, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = answers_counted(addr, 4, stop.clone(), true, tally.clone());
    tally.wait(Duration::from_secs(10), |t| t.from(b'c') > 100);
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
    let dir = TempDir::new("balancing-retry");
    let proxy = proxy_with(
        IoDriver::Uring,
        &[&a, &c],
        &dir,
        &[("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin_addr)],
    );
    let addr = proxy.forward_addrs()[0];
    // Concurrent clients so both endpoints are tried from the start.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = answers_counted(addr, 4, stop.clone(), false, tally.clone());
    tally.wait(Duration::from_secs(10), |t| t.answers() > 100);
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<(Instant, bool, u8)> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(seen.len() > 100, "{} answers in 10 s", seen.len());
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
    let dir2 = TempDir::new("balancing-retry-post");
    let proxy = proxy_to(IoDriver::Uring, &[&a2, &c2], &dir2);
    // Concurrent clients, so both endpoints are tried from the start.
    let addr2 = proxy.forward_addrs()[0];
    let handles: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let conn = connect(addr2);
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) {
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
    let dir = TempDir::new("balancing-retry-one");
    let proxy = proxy_to(IoDriver::Uring, &[&only], &dir);
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

/// A service of a healthy endpoint `a` and one `c` answering 503, both
/// reporting the bodies they receive. `a` answers after 60 ms, so once `c`
/// has answered (fast) once, the balancer asks it first. The proxy's
/// static file is written in `dir`.
fn failing_and_slow(
    driver: IoDriver,
    dir: &TempDir,
) -> (
    Backend,
    Backend,
    mpsc::Receiver<(u8, Vec<u8>)>,
    ringmesh_engine::Proxy,
) {
    let (tx, rx) = mpsc::channel();
    let a = body_backend(
        b'a',
        Duration::from_millis(60),
        Arc::new(AtomicBool::new(false)),
        tx.clone(),
    );
    let c = body_backend(b'c', Duration::ZERO, Arc::new(AtomicBool::new(true)), tx);
    let proxy = proxy_to(driver, &[&a, &c], dir);
    (a, c, rx, proxy)
}

fn request(method: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "{method} /things/1 HTTP/1.1\r\nHost: web.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

fn client(proxy: &ringmesh_engine::Proxy) -> (TcpStream, BufReader<TcpStream>) {
    let conn = connect(proxy.forward_addrs()[0]);
    (conn.try_clone().unwrap(), BufReader::new(conn))
}

/// PUTs with a body of up to 64 KiB answered 503 are sent again, body and
/// all, to another endpoint; the client sees only the healthy answer, on a
/// keep-alive connection that also carries pipelined requests.
fn kept_bodies_are_retried(driver: IoDriver) {
    let dir = TempDir::new(&format!("balancing-retry-body-{}", driver_name(driver)));
    let (_a, _c, rx, proxy) = failing_and_slow(driver, &dir);
    let (mut w, mut r) = client(&proxy);
    let mut pattern = Pattern::new(7);
    for len in [1000, 60 * 1024] {
        let mut body = vec![0u8; len];
        pattern.fill(&mut body);
        // Until a request is asked of c first (an endpoint not yet
        // observed competes on load alone: each draw may pick either).
        let mut retried = false;
        for _ in 0..30 {
            w.write_all(&request("PUT", &body)).unwrap();
            let (status, answer) = read_body_answer(&mut r);
            assert!(status.contains(" 200 "), "{len}: {status}");
            assert_eq!(answer, format!("a {len}"));
            let got: Vec<_> = rx.try_iter().collect();
            assert!(got.iter().all(|(_, b)| *b == body), "{len}: a body changed");
            assert_eq!(got.last().map(|(n, _)| *n), Some(b'a'));
            if got.iter().any(|(n, _)| *n == b'c') {
                assert_eq!(got.len(), 2);
                retried = true;
                break;
            }
        }
        assert!(retried, "{len}: the failing endpoint was never asked");
    }
    // Two PUTs in one write: each is asked of c, then of a, in order, and
    // the answers come back in order.
    let (b1, b2) = (vec![b'1'; 1000], vec![b'2'; 2000]);
    w.write_all(&[request("PUT", &b1), request("PUT", &b2)].concat())
        .unwrap();
    let (s1, a1) = read_body_answer(&mut r);
    let (s2, a2) = read_body_answer(&mut r);
    assert!(s1.contains(" 200 ") && s2.contains(" 200 "), "{s1}{s2}");
    assert_eq!((a1.as_str(), a2.as_str()), ("a 1000", "a 2000"));
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        got,
        vec![
            (b'c', b1.clone()),
            (b'a', b1),
            (b'c', b2.clone()),
            (b'a', b2)
        ]
    );
    proxy.shutdown();
    drop((w, r));
    proxy.wait();
}
both_drivers!(
    kept_bodies_are_retried_on_another_endpoint,
    super::kept_bodies_are_retried
);

/// Sends `method` with `body` until the failing endpoint gets it: its 503
/// reaches the client (no retry) and it got the body intact.
fn until_503(
    w: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    rx: &mpsc::Receiver<(u8, Vec<u8>)>,
    method: &str,
    body: &[u8],
) {
    let len = body.len();
    for _ in 0..30 {
        w.write_all(&request(method, body)).unwrap();
        let (status, answer) = read_body_answer(r);
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got.len(), 1, "{method} {len}: asked once");
        assert!(got[0].1 == body, "{method} {len}: the body changed");
        if got[0].0 == b'c' {
            assert!(status.contains(" 503 "), "{method} {len}: {status}");
            assert_eq!(answer, format!("c {len}"));
            return;
        }
        assert!(status.contains(" 200 "), "{status}");
    }
    panic!("{method} {len}: the failing endpoint was never asked");
}

/// Not retried after a 503: a POST (not idempotent) although its body is
/// kept, and a PUT whose body (over 64 KiB) was streamed.
fn unsafe_or_streamed_bodies_are_not_retried(driver: IoDriver) {
    let dir = TempDir::new(&format!("balancing-no-retry-body-{}", driver_name(driver)));
    let (_a, _c, rx, proxy) = failing_and_slow(driver, &dir);
    let (mut w, mut r) = client(&proxy);
    let mut pattern = Pattern::new(9);
    let mut body = vec![0u8; 100 * 1024];
    pattern.fill(&mut body);
    until_503(&mut w, &mut r, &rx, "POST", &body[..1000]);
    until_503(&mut w, &mut r, &rx, "PUT", &body);
    proxy.shutdown();
    drop((w, r));
    proxy.wait();
}
both_drivers!(
    unsafe_or_streamed_bodies_are_not_retried_after_503,
    super::unsafe_or_streamed_bodies_are_not_retried
);

/// A POST whose body was kept goes again on a fresh connection when the
/// pooled one turns out closed before any response byte (the endpoint
/// closes each connection after answering, although it said keep-alive).
fn kept_post_survives_stale_connection(driver: IoDriver) {
    let (tx, rx) = mpsc::channel();
    let closing = Backend::start(move |s| {
        let mut r = BufReader::new(s);
        let Some(body) = read_request_body(&mut r) else {
            return;
        };
        let len = body.len();
        let _ = tx.send((b'o', body));
        let text = format!("o {len}");
        let _ = r.get_mut().write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
            .as_bytes(),
        );
    });
    let dir = TempDir::new(&format!("balancing-stale-post-{}", driver_name(driver)));
    let proxy = proxy_to(driver, &[&closing], &dir);
    let (mut w, mut r) = client(&proxy);
    let mut pattern = Pattern::new(11);
    let mut body = vec![0u8; 3000];
    for _ in 0..5 {
        // The endpoint's close reaches the proxy before the next request
        // (under load its thread may close late: the POST would then go
        // out on the open connection and, sent, never go again).
        std::thread::sleep(Duration::from_millis(20));
        pattern.fill(&mut body);
        w.write_all(&request("POST", &body)).unwrap();
        let (status, answer) = read_body_answer(&mut r);
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(answer, "o 3000");
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got, vec![(b'o', body.clone())]);
    }
    proxy.shutdown();
    drop((w, r));
    proxy.wait();
}
both_drivers!(
    kept_post_is_retried_on_a_fresh_connection,
    super::kept_post_survives_stale_connection
);

/// A kept body that does not arrive within the request timeout gets 504
/// (`RINGMESH_HTTP_REQUEST_TIMEOUT` counts from the head); a client that
/// closes mid-body just goes away. Neither reaches an endpoint.
fn partial_kept_body(driver: IoDriver) {
    let (tx, rx) = mpsc::channel();
    let a = body_backend(b'a', Duration::ZERO, Arc::new(AtomicBool::new(false)), tx);
    let dir = TempDir::new(&format!("balancing-partial-body-{}", driver_name(driver)));
    let proxy = proxy_with(
        driver,
        &[&a],
        &dir,
        &[("RINGMESH_HTTP_REQUEST_TIMEOUT", "300ms")],
    );
    let (mut w, mut r) = client(&proxy);
    let whole = request("PUT", &[b'x'; 1000]);
    let partial = &whole[..whole.len() - 10];
    w.write_all(partial).unwrap();
    let t = Instant::now();
    let mut answer = String::new();
    r.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // Closed mid-body: the proxy closes too, without an answer.
    let (mut w, mut r) = client(&proxy);
    w.write_all(partial).unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        rx.try_iter().next().is_none(),
        "a partial body went upstream"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    partial_kept_body_times_out_or_ends_the_connection,
    super::partial_kept_body
);

/// An endpoint that accepts requests and never answers, clients that give
/// up after 300 ms (no response timeout set): the wait of the first
/// request it swallowed counts as its latency, and the requests after go to
/// the endpoint that answers. (A request given up on taught the balancer
/// nothing: the hole kept borrowing its rival's estimate and caught about
/// half the requests, for good.)
#[test]
fn an_endpoint_that_swallows_requests_is_avoided() {
    let hole = Backend::start(|s| {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        // Reads and holds; never answers.
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
    });
    let good = backend(b'g', Duration::ZERO);
    let dir = TempDir::new("balancing-hole");
    let proxy = proxy_to(IoDriver::Uring, &[&hole, &good], &dir);
    let addr = proxy.forward_addrs()[0];
    let mut hung = 0;
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => assert!(buf[..n].ends_with(b"g"), "{:?}", &buf[..n]),
            _ => hung += 1,
        }
        // The client gives up: its request is cancelled.
        drop(s);
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        hung <= 2,
        "{hung} of 20 requests went to the endpoint that never answers"
    );
    proxy.shutdown();
    proxy.wait();
}
