//! Linkerd's Destination API (issue 16): ringmesh follows `Destination.Get`
//! from the fake control plane (`tests/mesh/fake_cp.py`, real grpcio with
//! the linkerd2-proxy-api protos), keeps routing through updates, outages
//! and garbage, and labels its metrics with the set's labels.
//!
//! Needs Debian's python3 with grpcio and protobuf, and protoc
//! (`scripts/install-test-deps.sh`); fails without them. No root.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::cp::Cp;
use common::lb::{answers, answers_counted, backend, Tally};
use common::*;

const WEB: &str = "web.default.svc.cluster.local:80";
use ringmesh_engine::IoDriver;

/// The fake's config: `web` with these endpoints (addr, weight).
fn serde_json(endpoints: &[(SocketAddr, u32)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| {
            format!(
                r#"{{"addr": "{}", "port": {}, "weight": {w}}}"#,
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        r#"{{"destinations": {{"{WEB}": {{"service": "web", "namespace": "default", "endpoints": [{}]}}}}}}"#,
        eps.join(", ")
    )
}

fn proxy(driver: IoDriver, cp: &Cp, extra: &[(&str, &str)]) -> ringmesh_engine::Proxy {
    let addr = cp.addr.to_string();
    let forward = format!("127.0.0.1:0={WEB}");
    let mut vars = vec![
        ("RINGMESH_TCP_FORWARD", forward.as_str()),
        ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", addr.as_str()),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ("LINKERD2_PROXY_CORES", "2"),
    ];
    vars.extend_from_slice(extra);
    start_proxy(driver, &vars)
}

/// A proxy forwarding a local port to `target` (an address in the policy's
/// cluster networks, 127.0.0.9/32), with the fake as its Destination and
/// policy service; `extra` settings after those.
fn policy_proxy(cp: &Cp, target: &str, extra: &[(&str, &str)]) -> ringmesh_engine::Proxy {
    let cp_addr = cp.addr.to_string();
    let forward = format!("127.0.0.1:0={target}");
    let mut vars = vec![
        ("RINGMESH_TCP_FORWARD", forward.as_str()),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", cp_addr.as_str()),
        ("LINKERD2_PROXY_POLICY_SVC_ADDR", cp_addr.as_str()),
        (
            "LINKERD2_PROXY_POLICY_WORKLOAD",
            r#"{"ns":"default","pod":"client-0"}"#,
        ),
        ("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "127.0.0.9/32"),
    ];
    vars.extend_from_slice(extra);
    start_proxy(IoDriver::Uring, &vars)
}

fn metrics(proxy: &ringmesh_engine::Proxy) -> String {
    let mut s = connect(proxy.admin_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Every answer so far, by backend, and whether any failed.
type Seen = Vec<(Instant, bool, u8)>;

fn after(seen: &Seen, t: Instant, settle: Duration) -> Vec<u8> {
    seen.iter()
        .filter(|(at, _, _)| *at > t + settle)
        .map(|(_, _, b)| *b)
        .collect()
}

fn wait_file_gone(p: &Path, limit: Duration) -> bool {
    eventually(limit, || !p.exists())
}

/// Endpoints added and removed by the control plane take traffic and stop
/// taking it within a second, with no request failing (POSTs: nothing is
/// retried); the set's labels label the metrics.
fn endpoints_follow_updates(driver: IoDriver) {
    let delay = Duration::from_micros(200);
    let (a, b, c) = (
        backend(b'a', delay),
        backend(b'b', delay),
        backend(b'c', delay),
    );
    let cp = Cp::start(&format!("follow-{}", driver_name(driver)));
    cp.write_loaded(&serde_json(&[(a.addr, 10000), (b.addr, 10000)]));
    let proxy = proxy(driver, &cp, &[]);
    let addr = proxy.forward_addrs()[0];

    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 4, stop.clone(), true);
    thread::sleep(Duration::from_millis(500));
    cp.write(&serde_json(&[
        (a.addr, 10000),
        (b.addr, 10000),
        (c.addr, 10000),
    ]));
    let added = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    cp.write(&serde_json(&[(b.addr, 10000), (c.addr, 10000)]));
    let removed = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let seen: Seen = clients
        .into_iter()
        .flat_map(|h| h.join().expect("no request failed"))
        .collect();
    assert!(seen.len() > 500, "{} answers", seen.len());
    assert!(seen.iter().all(|(_, bad, _)| !bad), "no request failed");
    let early: Vec<u8> = seen
        .iter()
        .filter(|(at, _, _)| *at < added)
        .map(|(_, _, b)| *b)
        .collect();
    assert!(!early.contains(&b'c'), "c before it was added");
    let mid: Vec<u8> = seen
        .iter()
        .filter(|(at, _, _)| *at > added + Duration::from_secs(1) && *at < removed)
        .map(|(_, _, b)| *b)
        .collect();
    assert!(
        mid.contains(&b'c'),
        "c takes traffic within a second of its Add"
    );
    let late = after(&seen, removed, Duration::from_secs(1));
    assert!(!late.is_empty());
    assert!(
        !late.contains(&b'a'),
        "a takes no traffic a second after its Remove"
    );

    let m = metrics(&proxy);
    assert!(
        m.lines().any(|l| l.starts_with("request_total{")
            && l.contains("dst_namespace=\"default\"")
            && l.contains("dst_service=\"web\"")),
        "the set's labels label the HTTP series:\n{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("tcp_open_total{") && l.contains("dst_service=\"web\"")),
        "and the TCP series"
    );
    assert_eq!(metric(&m, "destination_watches"), 1);
    assert!(metric(&m, "destination_updates_total") >= 3);
}

#[test]
fn endpoints_follow_updates_uring() {
    endpoints_follow_updates(IoDriver::Uring);
}

#[test]
fn endpoints_follow_updates_epoll() {
    endpoints_follow_updates(IoDriver::Epoll);
}

/// The control plane killed mid-traffic: no request fails, the last
/// endpoints stay, and the stream is opened again (counted) when it
/// returns, updates flowing again.
#[test]
fn control_plane_outage_keeps_the_last_state() {
    let delay = Duration::from_micros(200);
    let (a, b) = (backend(b'a', delay), backend(b'b', delay));
    let mut cp = Cp::start("outage");
    cp.write_loaded(&serde_json(&[(a.addr, 10000)]));
    let proxy = proxy(IoDriver::Uring, &cp, &[]);
    let addr = proxy.forward_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 3, stop.clone(), true);
    thread::sleep(Duration::from_millis(300));
    let before = metric(&metrics(&proxy), "destination_streams_total");
    cp.stop();
    thread::sleep(Duration::from_millis(1500));
    let down = metrics(&proxy);
    assert!(
        metric(&down, "destination_stream_errors_total") >= 1,
        "the broken stream is counted"
    );
    // Back, with another endpoint: the resumed stream brings it.
    cp.write(&serde_json(&[(a.addr, 10000), (b.addr, 10000)]));
    cp.spawn();
    let resumed = eventually(Duration::from_secs(15), || {
        metric(&metrics(&proxy), "destination_streams_total") > before
            && cp.log_count("dst.get path=") >= 2
    });
    assert!(resumed, "the stream is opened again:\n{}", cp.tail());
    let back = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let seen: Seen = clients
        .into_iter()
        .flat_map(|h| h.join().expect("no request failed"))
        .collect();
    assert!(seen.iter().all(|(_, bad, _)| !bad), "no request failed");
    assert!(seen.len() > 300, "{} answers", seen.len());
    assert!(
        after(&seen, back, Duration::from_millis(500)).contains(&b'b'),
        "the update after the outage is applied"
    );
}

/// Undecodable bytes on the stream, a stream ended with an error, and a
/// stream that never answers (the initial timeout): each is logged and
/// counted, the endpoints stay, the stream is opened again and follows
/// updates afterwards.
#[test]
fn garbage_resets_and_silence_keep_the_state() {
    let delay = Duration::from_micros(200);
    let (a, b, c) = (
        backend(b'a', delay),
        backend(b'b', delay),
        backend(b'c', delay),
    );
    let cp = Cp::start("garbage");
    cp.write_loaded(&serde_json(&[(a.addr, 10000)]));
    let proxy = proxy(
        IoDriver::Uring,
        &cp,
        &[
            ("LINKERD2_PROXY_CONTROL_STREAM_INITIAL_TIMEOUT", "300ms"),
            ("LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT", "60s"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = answers_counted(addr, 3, stop.clone(), true, tally.clone());
    thread::sleep(Duration::from_millis(300));

    let errors =
        |p: &ringmesh_engine::Proxy| metric(&metrics(p), "destination_stream_errors_total");
    let e0 = errors(&proxy);
    let garbage = cp.fault("garbage");
    assert!(
        wait_file_gone(&garbage, Duration::from_secs(5)),
        "garbage sent"
    );
    assert!(
        eventually(Duration::from_secs(5), || errors(&proxy) > e0),
        "the undecodable message ends the stream"
    );
    let e1 = errors(&proxy);
    let reset = cp.fault("reset");
    assert!(wait_file_gone(&reset, Duration::from_secs(5)), "reset sent");
    assert!(
        eventually(Duration::from_secs(5), || errors(&proxy) > e1),
        "the reset stream is counted"
    );
    // Silent: every new stream hangs; the initial timeout gives up on it.
    // (Once the stream after the reset is open and answered, so the next
    // reset reaches a stream that listens.)
    assert!(eventually(Duration::from_secs(5), || cp
        .log_count("dst.get path=")
        >= 3));
    thread::sleep(Duration::from_millis(300));
    let silent = cp.fault("silent");
    let e2 = errors(&proxy);
    let reset = cp.fault("reset");
    assert!(wait_file_gone(&reset, Duration::from_secs(5)));
    assert!(
        eventually(Duration::from_secs(8), || errors(&proxy) >= e2 + 3),
        "silent streams time out and are opened again:\n{}",
        cp.tail()
    );
    fs::remove_file(&silent).unwrap();
    // Then updates flow again.
    // (The stream may be in its reconnect backoff after the faults: the
    // wait is bounded, not fixed.)
    cp.write(&serde_json(&[(b.addr, 10000), (c.addr, 10000)]));
    let moved = Instant::now();
    let applied = tally.wait(Duration::from_secs(15), |t| t.from(b'b') + t.from(b'c') > 0);
    let switched = Instant::now();
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let seen: Seen = clients
        .into_iter()
        .flat_map(|h| h.join().expect("no request failed"))
        .collect();
    assert!(seen.iter().all(|(_, bad, _)| !bad), "no request failed");
    let during: Vec<u8> = seen
        .iter()
        .filter(|(at, _, _)| *at < moved)
        .map(|(_, _, b)| *b)
        .collect();
    assert!(during.len() > 100 && during.iter().all(|b| *b == b'a'));
    assert!(applied, "the update after the faults is applied (15 s)");
    let late = after(&seen, switched, Duration::from_millis(500));
    assert!(
        !late.is_empty() && late.iter().all(|b| *b == b'b' || *b == b'c'),
        "the update after the faults is applied, and only it"
    );
    let m = metrics(&proxy);
    assert_eq!(metric(&m, "destination_watches"), 1);
}

/// One request head on a test backend's connection: its path and its
/// header lines, lowercased. `None` once the client went away.
fn read_request(r: &mut BufReader<std::net::TcpStream>) -> Option<(String, Vec<String>)> {
    let mut first = String::new();
    if r.read_line(&mut first).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => headers.push(line.trim_end().to_ascii_lowercase()),
        }
    }
    // A body (by its declared length) is read and dropped.
    let len = headers
        .iter()
        .find_map(|h| h.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let path = first.split(' ').nth(1).unwrap_or("/").to_string();
    Some((path, headers))
}

/// One response on a client's keep-alive connection: status and body (by
/// `Content-Length`). `None` when the connection closed before a status.
fn read_response(r: &mut BufReader<std::net::TcpStream>) -> Option<(u16, Vec<u8>)> {
    let mut status = String::new();
    if r.read_line(&mut status).unwrap() == 0 {
        return None;
    }
    let code = status.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed mid-head");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    Some((code, body))
}

/// A keep-alive backend answering `GET <path>` by path: `/slow` after 2 s,
/// `/flaky*` with 500 when `fails`, anything else 200; the body is `name`.
fn path_backend(name: u8, fails: bool) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some((path, _)) = read_request(&mut r) {
            if path == "/slow" {
                thread::sleep(Duration::from_secs(2));
            }
            let status = if fails && path.starts_with("/flaky") {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 1\r\n\r\n");
            if w.write_all(&[resp.as_bytes(), &[name]].concat()).is_err() {
                return;
            }
        }
    })
}

/// One `GET path` on a keep-alive connection: (status code, body byte).
fn request(
    w: &mut std::net::TcpStream,
    r: &mut BufReader<std::net::TcpStream>,
    path: &str,
) -> (u16, u8) {
    // One write (a `write!` would send each piece apart).
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes())
        .unwrap();
    let (code, body) = read_response(r).expect("a response");
    (code, body.first().copied().unwrap_or(0))
}

fn keep_alive(addr: SocketAddr) -> (std::net::TcpStream, BufReader<std::net::TcpStream>) {
    let c = connect(addr);
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let w = c.try_clone().unwrap();
    (w, BufReader::new(c))
}

/// GetProfile's `dst_overrides`: requests to the service split across two
/// other services (each found through Destination.Get) by weight, within
/// 5 % over 2000 requests.
#[test]
fn traffic_split_follows_the_profile_weights() {
    let (a, b) = (path_backend(b'a', false), path_backend(b'b', false));
    let cp = Cp::start("split");
    let entry = |addr: SocketAddr, extra: &str| {
        format!(
            r#"{{"endpoints": [{{"addr": "{}", "port": {}}}]{extra}}}"#,
            addr.ip(),
            addr.port()
        )
    };
    let v1 = "web-v1.default.svc.cluster.local:80";
    let v2 = "web-v2.default.svc.cluster.local:80";
    cp.write_loaded(&format!(
        r#"{{"destinations": {{"{WEB}": {}, "{v1}": {}, "{v2}": {}}}}}"#,
        entry(
            a.addr,
            &format!(
                r#", "dst_overrides": [{{"authority": "{v1}", "weight": 250}}, {{"authority": "{v2}", "weight": 750}}]"#
            )
        ),
        entry(a.addr, ""),
        entry(b.addr, ""),
    ));
    let proxy = proxy(IoDriver::Uring, &cp, &[]);
    let (mut w, mut r) = keep_alive(proxy.forward_addrs()[0]);
    // The backends are watched once the profile names them.
    assert!(
        eventually(Duration::from_secs(5), || request(&mut w, &mut r, "/").1
            == b'b'),
        "the split never reached web-v2:\n{}",
        cp.tail()
    );
    let n = 2000;
    let to_b = (0..n)
        .filter(|_| {
            let (code, who) = request(&mut w, &mut r, "/");
            assert_eq!(code, 200);
            who == b'b'
        })
        .count();
    let share = to_b as f64 / n as f64;
    assert!(
        (0.70..=0.80).contains(&share),
        "web-v2 took {share:.3} of the requests, want 0.75 ± 0.05"
    );
}

/// GetProfile's routes: a route's timeout answers 504 when the endpoint is
/// slower; a retryable route's 500 goes again to another endpoint (every
/// request succeeds), while the same failure on a route that is not
/// retryable reaches the client.
#[test]
fn route_timeouts_and_retries() {
    let (a, b) = (path_backend(b'a', true), path_backend(b'b', false));
    let cp = Cp::start("routes");
    cp.write_loaded(&format!(
        r#"{{"destinations": {{"{WEB}": {{"endpoints": [{{"addr": "{}", "port": {}, "weight": 100000}}, {{"addr": "{}", "port": {}, "weight": 1}}],
            "routes": [{{"name": "slow", "method": "GET", "path_regex": "/slow", "timeout_ms": 300}},
                       {{"name": "flaky", "path_regex": "/flaky", "retryable": true}}]}}}}}}"#,
        a.addr.ip(),
        a.addr.port(),
        b.addr.ip(),
        b.addr.port()
    ));
    let proxy = proxy(IoDriver::Uring, &cp, &[]);
    let addr = proxy.forward_addrs()[0];
    // The profile arrives with (or just after) the endpoints.
    assert!(eventually(Duration::from_secs(5), || {
        let (mut w, mut r) = keep_alive(addr);
        let started = Instant::now();
        request(&mut w, &mut r, "/slow").0 == 504 && started.elapsed() < Duration::from_secs(1)
    }));
    let (mut w, mut r) = keep_alive(addr);
    let flaky: Vec<(u16, u8)> = (0..40).map(|_| request(&mut w, &mut r, "/flaky")).collect();
    assert!(
        flaky.iter().all(|(code, who)| *code == 200 && *who == b'b'),
        "a retryable route's 500s go to the other endpoint: {flaky:?}"
    );
    let plain: Vec<u16> = (0..40)
        .map(|_| {
            let (mut w, mut r) = keep_alive(addr);
            request(&mut w, &mut r, "/flaky-not-retried").0
        })
        .collect();
    assert!(
        plain.contains(&500),
        "without a retryable route the 500 reaches the client: {plain:?}"
    );
    let m = metrics(&proxy);
    let has = |parts: &[&str]| {
        m.lines()
            .any(|l| l.starts_with("response_total{") && parts.iter().all(|p| l.contains(p)))
    };
    assert!(has(&["rt_route=\"slow\"", "status_code=\"504\""]), "{m}");
    assert!(has(&["rt_route=\"flaky\"", "status_code=\"200\""]), "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("ringmesh_retries_total{") && l.contains("rt_route=\"flaky\"")),
        "the 500s were retried (not avoided): {m}"
    );
    assert!(
        m.lines()
            .filter(|l| l.contains("status_code=\"500\""))
            .all(|l| !l.contains("rt_route=")),
        "no route, no rt_route label"
    );
}

/// GetProfile's response classes: a route's classes say which responses
/// are failures, for the metrics' `classification` and for its retries (a
/// 429 made a failure is retried and counted a failure; a 500 made a
/// success is neither), as linkerd2-proxy classifies them.
#[test]
fn response_classes_classify_and_retry() {
    let hits = Arc::new(AtomicUsize::new(0));
    let a = policy_backend(b'a', false, hits.clone());
    let b = policy_backend(b'b', false, hits.clone());
    let cp = Cp::start("classes");
    cp.write_loaded(&format!(
        r#"{{"destinations": {{"{WEB}": {{"endpoints": [{{"addr": "{}", "port": {}}}, {{"addr": "{}", "port": {}}}],
            "routes": [{{"name": "lim", "path_regex": "/both/limited", "retryable": true,
                         "classes": [{{"min": 400, "max": 499, "failure": true}}]}},
                       {{"name": "soft", "path_regex": "/both/flaky", "retryable": true,
                         "classes": [{{"min": 500, "max": 599, "failure": false}}]}},
                       {{"name": "ok", "path_regex": "/ok"}}]}}}}}}"#,
        a.addr.ip(),
        a.addr.port(),
        b.addr.ip(),
        b.addr.port()
    ));
    let proxy = proxy(
        IoDriver::Uring,
        &cp,
        &[("RINGMESH_FAILURE_ACCRUAL_CONSECUTIVE", "100000")],
    );
    let addr = proxy.forward_addrs()[0];
    let (mut w, mut r) = keep_alive(addr);
    assert!(eventually(Duration::from_secs(5), || {
        request(&mut w, &mut r, "/ok");
        metrics(&proxy).contains("rt_route=\"ok\"")
    }));
    const N: usize = 10;
    let mut batch = |path: &str| {
        let before = hits.load(Ordering::Relaxed);
        let codes: Vec<u16> = (0..N).map(|_| request(&mut w, &mut r, path).0).collect();
        (codes, hits.load(Ordering::Relaxed) - before)
    };
    let (codes, sent) = batch("/both/limited");
    assert!(codes.iter().all(|c| *c == 429), "{codes:?}");
    assert_eq!(sent, 3 * N, "a 429 made a failure is retried twice");
    let (codes, sent) = batch("/both/flaky");
    assert!(codes.iter().all(|c| *c == 500), "{codes:?}");
    assert_eq!(sent, N, "a 500 made a success is not retried");
    let m = metrics(&proxy);
    let counted = |route: &str, status: &str, class: &str| {
        m.lines().any(|l| {
            l.starts_with("response_total{")
                && l.contains(&format!("rt_route=\"{route}\""))
                && l.contains(&format!(
                    "status_code=\"{status}\",classification=\"{class}\""
                ))
        })
    };
    assert!(counted("lim", "429", "failure"), "{m}");
    assert!(counted("soft", "500", "success"), "{m}");
    assert!(!counted("soft", "500", "failure"), "{m}");
}

/// GetProfile's `retry_budget`: with no budget at all, a retryable route's
/// failures are not retried. (The failing endpoint weighs far more, so
/// the balancer tries it first.)
#[test]
fn an_empty_retry_budget_allows_no_retry() {
    let (a, b) = (path_backend(b'a', true), path_backend(b'b', false));
    let cp = Cp::start("budget");
    cp.write_loaded(&format!(
        r#"{{"destinations": {{"{WEB}": {{"endpoints": [{{"addr": "{}", "port": {}, "weight": 100000}}, {{"addr": "{}", "port": {}, "weight": 1}}],
            "routes": [{{"name": "flaky", "path_regex": "/flaky", "retryable": true}}, {{"name": "ok", "path_regex": "/ok"}}],
            "retry_budget": {{"ratio": 0.0, "min_per_second": 0, "ttl_s": 10}}}}}}}}"#,
        a.addr.ip(),
        a.addr.port(),
        b.addr.ip(),
        b.addr.port()
    ));
    let proxy = proxy(IoDriver::Uring, &cp, &[]);
    let addr = proxy.forward_addrs()[0];
    // Once the profile is in (its route labels the requests; waited for
    // with requests that succeed, so failure accrual ejects no one)...
    let (mut w, mut r) = keep_alive(addr);
    assert!(eventually(Duration::from_secs(5), || {
        request(&mut w, &mut r, "/ok");
        metrics(&proxy).contains("rt_route=\"ok\"")
    }));
    // ... failures reach the client.
    let codes: Vec<u16> = (0..20)
        .map(|_| request(&mut w, &mut r, "/flaky").0)
        .collect();
    assert!(
        codes.contains(&500),
        "a 500 on a retryable route was retried without a budget: {codes:?}"
    );
}

/// A service profile with routes or a traffic split wins over the
/// target's outbound policy (linkerd2-proxy's `should_override_policy`);
/// one without either leaves the policy in charge.
#[test]
fn a_profile_with_routes_or_a_split_overrides_the_policy() {
    let (a, c) = (host_backend(b'a'), host_backend(b'c'));
    let cp = Cp::start("profile-over-policy");
    let target = "127.0.0.9:8080";
    let config = |profile: &str| {
        format!(
            r#"{{"destinations": {{
                "{target}": {{"service": "web", "fqn": "web.default.svc.cluster.local",
                    "endpoints": [{{"addr": "{}", "port": {}}}]{profile}}},
                "web2.default.svc.cluster.local:8080": {{"service": "web2",
                    "endpoints": [{{"addr": "{}", "port": {}}}]}}
            }}}}"#,
            a.addr.ip(),
            a.addr.port(),
            c.addr.ip(),
            c.addr.port(),
        )
    };
    cp.write_loaded(&config(""));
    let proxy = policy_proxy(
        &cp,
        target,
        &[(
            "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS",
            "127.0.0.9/32",
        )],
    );
    let addr = proxy.forward_addrs()[0];
    let body = |path: &str| h1_exchange(addr, path).1;
    assert!(
        eventually(Duration::from_secs(5), || body("/x").ends_with(" a")),
        "{:?}\n{}",
        body("/x"),
        cp.tail()
    );
    let routed = |m: &str, name: &str| {
        m.lines().any(|l| {
            l.starts_with("response_total{") && l.contains(&format!("rt_route=\"{name}\""))
        })
    };
    assert!(routed(&metrics(&proxy), "http"), "the policy's route");
    // Its route's `/` prefix is every request's, `OPTIONS *`'s too (as
    // linkerd2-proxy's; it was answered 404 no route).
    let mut c = connect(addr);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"OPTIONS * HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "OPTIONS *: {answer}");
    // The profile gains a route and a split to web2: it decides now.
    cp.write_loaded(&config(
        r#", "routes": [{"name": "prof-all", "path_regex": "/.*"}],
            "dst_overrides": [{"authority": "web2.default.svc.cluster.local:8080", "weight": 100}]"#,
    ));
    assert!(
        eventually(Duration::from_secs(5), || body("/y").ends_with(" c")),
        "the profile's split was not followed: {:?}\n{}",
        body("/y"),
        cp.tail()
    );
    assert!(routed(&metrics(&proxy), "prof-all"), "the profile's route");
    // Neither routes nor a split: the policy again.
    cp.write_loaded(&config(""));
    assert!(
        eventually(Duration::from_secs(5), || body("/z").ends_with(" a")),
        "{:?}",
        body("/z")
    );
    proxy.shutdown();
    proxy.wait();
}

/// An outbound policy's request that no route matches is answered 404
/// (linkerd2-proxy's `NoRoute`), never sent to the original destination;
/// a policy linkerd2-proxy would reject (here a rule whose distribution
/// has no backends) answers every request 500, its valid routes' too,
/// instead of being applied in part.
#[test]
fn unmatched_requests_and_invalid_policies_are_answered() {
    let app = common::http::origin("app");
    let cp = Cp::start("unrouted");
    let target = "127.0.0.9:8080";
    let config = |extra_route: &str| {
        format!(
            r#"{{"destinations": {{
                "{target}": {{"service": "web", "endpoints": [{{"addr": "{ip}", "port": {port}}}], "default_route": false, "http_routes": [
                    {{"name": "hello", "path_prefix": "/hello"}}{extra_route}
                ]}}
            }}}}"#,
            ip = app.addr.ip(),
            port = app.addr.port(),
        )
    };
    cp.write_loaded(&config(""));
    let proxy = policy_proxy(&cp, target, &[]);
    let addr = proxy.forward_addrs()[0];
    let status = |path: &str| {
        let (head, body) = h1_exchange(addr, path);
        (
            head.get(9..12).and_then(|c| c.parse::<u16>().ok()),
            head,
            body,
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || status("/hello").0 == Some(200)),
        "{:?}\n{}",
        status("/hello"),
        cp.tail()
    );
    let (code, head, _) = status("/elsewhere");
    assert_eq!(code, Some(404), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("l5d-proxy-error: no route"),
        "{head}"
    );
    // A rule with an empty random-available distribution: invalid.
    cp.write_loaded(&config(
        r#", {"name": "broken", "path_prefix": "/broken", "backends": []}"#,
    ));
    assert!(
        eventually(Duration::from_secs(5), || status("/hello").0 == Some(500)),
        "{:?}",
        status("/hello")
    );
    let (code, head, _) = status("/broken");
    assert_eq!(code, Some(500), "{head}");
    assert!(head.contains("invalid client policy"), "{head}");
}

/// OutboundPolicies.Watch for an original destination in the cluster
/// networks (a virtual service address nothing listens on): its HTTP
/// routes send requests by header, path prefix and exact path to the
/// backends they name (services found through Destination.Get), with the
/// route's timeout; requests no configured route matches take the default
/// route to the Service; `rt_route` names the route.
#[test]
fn outbound_policy_routes_requests() {
    let (a, b) = (path_backend(b'a', false), path_backend(b'b', false));
    let cp = Cp::start("outbound");
    let target = "127.0.0.9:8080";
    let web = "web.default.svc.cluster.local:8080";
    let v2 = "web-v2.default.svc.cluster.local:8080";
    let ep =
        |addr: SocketAddr| format!(r#"[{{"addr": "{}", "port": {}}}]"#, addr.ip(), addr.port());
    cp.write_loaded(&format!(
        r#"{{"destinations": {{
            "{target}": {{"service": "web", "endpoints": {a_ep}, "http_routes": [
                {{"name": "canary", "path_prefix": "/", "headers": {{"x-canary": "1"}}, "backends": [{{"authority": "{v2}"}}]}},
                {{"name": "v2-api", "path_prefix": "/v2", "backends": [{{"authority": "{v2}"}}]}},
                {{"name": "slow", "path_exact": "/slow", "backends": [{{"authority": "{web}"}}], "timeout_ms": 300}}
            ]}},
            "{v2}": {{"endpoints": {b_ep}}}
        }}}}"#,
        a_ep = ep(a.addr),
        b_ep = ep(b.addr),
    ));
    let proxy = policy_proxy(&cp, target, &[]);
    let addr = proxy.forward_addrs()[0];
    let get = |path: &str, extra: &str| {
        let c = connect(addr);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: web\r\n{extra}\r\n").as_bytes())
            .unwrap();
        let (code, body) = read_response(&mut r).expect("a response");
        (code, body.first().copied().unwrap_or(0))
    };
    // The backends are found once the policy names them.
    assert!(
        eventually(Duration::from_secs(5), || get("/v2/x", "") == (200, b'b')),
        "/v2 never reached web-v2:\n{}",
        cp.tail()
    );
    assert_eq!(get("/", ""), (200, b'a'), "the default route: the Service");
    assert_eq!(get("/v20", ""), (200, b'a'), "a prefix is whole segments");
    assert_eq!(get("/", "x-canary: 1\r\n"), (200, b'b'), "by header");
    let started = Instant::now();
    assert_eq!(get("/slow", "").0, 504, "the route's timeout");
    assert!(started.elapsed() < Duration::from_secs(1));
    let m = metrics(&proxy);
    for route in ["canary", "v2-api", "slow", "http"] {
        assert!(
            m.lines().any(|l| l.starts_with("response_total{")
                && l.contains(&format!("rt_route=\"{route}\""))),
            "rt_route={route}:\n{m}"
        );
    }
    assert!(m.contains("outbound_policy_streams_total"), "{m}");
}

/// A keep-alive backend that answers every request with its head's lines
/// as the body (lower-cased), and the response fields `x-upstream: 1`,
/// `x-drop: 1`.
fn head_backend() -> Backend {
    Backend::start(|s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some(head) = common::http::head_lines(&mut r) {
            let resp = format!(
                "HTTP/1.1 200 OK\r\nx-upstream: 1\r\nx-drop: 1\r\nContent-Length: {}\r\n\r\n{head}",
                head.len()
            );
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// One HTTP/1.1 request on a new connection: the response head's lines
/// (lower-cased) and its body.
fn h1_exchange(addr: SocketAddr, path: &str) -> (String, String) {
    let c = connect(addr);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: web:8080\r\nx-secret: s\r\nx-set: old\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let head = common::http::head_lines(&mut r).expect("a response");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// An outbound policy's route filters, as linkerd2-proxy applies them:
/// failure injection (every request, and a ratio of them), a redirect
/// replacing the matched path prefix, request and response header
/// modifiers (add, set, remove; the framing fields left alone) — for
/// HTTP/1.1 and HTTP/2 clients.
#[test]
fn outbound_policy_route_filters() {
    let app = head_backend();
    // (An HTTP/2 client's requests to an address go over HTTP/2.)
    let h2_app = common::h2::origin(None);
    let cp = Cp::start("filters");
    let target = "127.0.0.9:8080";
    cp.write_loaded(&format!(
        r#"{{"destinations": {{
            "{target}": {{"service": "web", "endpoints": [{{"addr": "{ip}", "port": {port}}}], "http_routes": [
                {{"name": "chaos", "path_exact": "/fail", "filters": [{{"fail": {{"status": 418, "message": "chaos test"}}}}]}},
                {{"name": "half", "path_prefix": "/half", "filters": [{{"fail": {{"status": 500, "ratio": [1, 2]}}}}]}},
                {{"name": "moved", "path_prefix": "/old", "filters": [{{"redirect": {{"prefix": "/new", "status": 302}}}}]}},
                {{"name": "elsewhere", "path_exact": "/away", "filters": [{{"redirect": {{"host": "other.test", "scheme": "https"}}}}]}},
                {{"name": "edits", "path_prefix": "/edit", "backends": [{{"forward": "{app}"}}], "filters": [
                    {{"request_headers": {{"add": {{"x-added": "yes"}}, "set": {{"x-set": "new", "content-length": "0"}}, "remove": ["x-secret"]}}}},
                    {{"response_headers": {{"add": {{"x-resp": "added"}}, "set": {{"x-upstream": "changed"}}, "remove": ["x-drop"]}}}}
                ]}},
                {{"name": "split", "path_prefix": "/split", "backends": [
                    {{"forward": "{app}", "filters": [{{"request_headers": {{"add": {{"x-backend": "one"}}, "set": {{"x-order": "backend"}}}}}}]}},
                    {{"forward": "{app}", "filters": [{{"request_headers": {{"add": {{"x-backend": "two"}}}}}}, {{"fail": {{"status": 503, "message": "backend two", "ratio": [1, 1]}}}}]}}
                  ], "filters": [{{"request_headers": {{"set": {{"x-order": "route"}}}}}}]}},
                {{"name": "edits-h2", "path_prefix": "/headers", "backends": [{{"forward": "{h2_app}"}}], "filters": [
                    {{"request_headers": {{"add": {{"x-added": "yes"}}, "set": {{"x-set": "new"}}, "remove": ["x-secret"]}}}},
                    {{"response_headers": {{"add": {{"x-resp": "added"}}, "set": {{"x-upstream": "changed"}}}}}}
                ]}}
            ]}}
        }}}}"#,
        ip = app.addr.ip(),
        port = app.addr.port(),
        app = app.addr,
        h2_app = h2_app.addr,
    ));
    let proxy = policy_proxy(&cp, target, &[]);
    let addr = proxy.forward_addrs()[0];
    let status = |head: &str| head.get(9..12).and_then(|c| c.parse::<u16>().ok());
    assert!(
        eventually(Duration::from_secs(5), || status(
            &h1_exchange(addr, "/fail").0
        ) == Some(418)),
        "the failure injection never applied:\n{}",
        cp.tail()
    );

    // HTTP/1.1.
    let (head, body) = h1_exchange(addr, "/fail");
    assert!(head.contains("l5d-proxy-error: chaos test"), "{head}");
    assert!(body.contains("chaos test"), "{body}");
    // The connection stays open after a filter's answer to a request
    // without a body: the next request on it is served.
    let (mut w, mut r) = keep_alive(addr);
    w.write_all(b"GET /old/x HTTP/1.1\r\nHost: web:8080\r\n\r\nGET /plain HTTP/1.1\r\nHost: web:8080\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).map(|(c, _)| c), Some(302));
    assert_eq!(read_response(&mut r).map(|(c, _)| c), Some(200));
    let fails = (0..200)
        .filter(|_| status(&h1_exchange(addr, "/half/x").0) == Some(500))
        .count();
    assert!(
        (60..=140).contains(&fails),
        "{fails} of 200 failed at a 1/2 ratio"
    );
    let (head, _) = h1_exchange(addr, "/old/page?q=1");
    assert_eq!(status(&head), Some(302), "{head}");
    assert!(
        head.contains("location: http://web:8080/new/page?q=1\n"),
        "{head}"
    );
    let (head, _) = h1_exchange(addr, "/away");
    assert_eq!(status(&head), Some(301), "{head}");
    assert!(
        head.contains("location: https://other.test:8080/away\n"),
        "{head}"
    );
    let (head, seen) = h1_exchange(addr, "/edit");
    assert_eq!(status(&head), Some(200), "{head}");
    assert!(
        seen.contains("x-added: yes\n") && seen.contains("x-set: new\n"),
        "{seen}"
    );
    assert!(
        !seen.contains("x-secret") && !seen.contains("x-set: old"),
        "{seen}"
    );
    assert!(
        !seen.contains("content-length"),
        "a framing field was set: {seen}"
    );
    assert!(
        head.contains("x-upstream: changed\n") && head.contains("x-resp: added\n"),
        "{head}"
    );
    assert!(
        !head.contains("x-drop") && !head.contains("x-upstream: 1"),
        "{head}"
    );
    // A backend's filters apply, after the route's, to requests sent to it
    // (half the requests here: the other backend fails them).
    let (mut one, mut two) = (0, 0);
    for _ in 0..60 {
        let (head, seen) = h1_exchange(addr, "/split");
        match status(&head) {
            Some(200) => {
                assert!(seen.contains("x-backend: one\n"), "{seen}");
                assert!(
                    seen.contains("x-order: backend\n") && !seen.contains("x-order: route"),
                    "{seen}"
                );
                one += 1;
            }
            Some(503) => {
                assert!(head.contains("l5d-proxy-error: backend two"), "{head}");
                two += 1;
            }
            other => panic!("{other:?}: {head}"),
        }
    }
    assert!(one >= 10 && two >= 10, "backend one {one}, two {two} of 60");
    // Other routes are untouched.
    let (head, seen) = h1_exchange(addr, "/plain");
    assert!(
        head.contains("x-upstream: 1\n") && seen.contains("x-secret: s\n"),
        "{head}{seen}"
    );

    // HTTP/2 (prior knowledge; the upstream speaks HTTP/1.1).
    let h2 = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-D",
                "-",
                "-H",
                "x-secret: s",
                "-H",
                "x-set: old",
            ])
            .arg(format!("http://{addr}{path}"))
            .arg("-H")
            .arg("host: web:8080")
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let out = h2("/fail");
    assert!(
        out.starts_with("http/2 418") && out.contains("l5d-proxy-error: chaos test"),
        "{out}"
    );
    let out = h2("/old/page?q=1");
    assert!(
        out.starts_with("http/2 302") && out.contains("location: http://web:8080/new/page?q=1"),
        "{out}"
    );
    let out = h2("/headers");
    assert!(out.starts_with("http/2 200"), "{out}");
    assert!(
        out.contains("x-added: yes\n") && out.contains("x-set: new\n"),
        "{out}"
    );
    assert!(
        !out.contains("x-secret") && !out.contains("x-set: old"),
        "{out}"
    );
    assert!(
        out.contains("x-upstream: changed") && out.contains("x-resp: added"),
        "{out}"
    );

    // Not the proxy's errors; and, answered before any endpoint, in no
    // endpoint series (as linkerd2-proxy, which counts them in its
    // route families only).
    let m = metrics(&proxy);
    assert!(
        !m.lines()
            .any(|l| l.starts_with("response_total{") && l.contains("status_code=\"418\"")),
        "{m}"
    );
    assert!(!m.contains("outbound_http_errors_total{"), "{m}");
}

/// `LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT`: a watch requests keep
/// using stays; once none has used it for the timeout it is dropped (its
/// streams end), and the next request watches it again.
#[test]
fn idle_watches_are_dropped_and_come_back() {
    let a = path_backend(b'a', false);
    let cp = Cp::start("idle");
    cp.write_loaded(&serde_json(&[(a.addr, 10000)]));
    let cp_addr = cp.addr.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &cp_addr),
            ("LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT", "1s"),
        ],
    );
    let out = proxy.outbound_addr().unwrap();
    let ask = || {
        let (mut w, mut r) = keep_alive(out);
        w.write_all(b"GET / HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\n\r\n")
            .unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        status
    };
    let watches = || metric(&metrics(&proxy), "destination_watches");
    assert!(ask().starts_with("HTTP/1.1 200"));
    assert_eq!(watches(), 1);
    // Used every 200 ms for 2.5 s: kept.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert!(ask().starts_with("HTTP/1.1 200"));
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(watches(), 1, "a used watch was dropped");
    let streams = cp.log_count("dst.get path=web.default");
    // Unused: dropped within the timeout (plus a report and a sweep, a
    // quarter of it each; the rest is room for a slow, shared machine).
    assert!(
        eventually(Duration::from_secs(10), || watches() == 0),
        "the idle watch was not dropped after 10 s:\n{}",
        metrics(&proxy)
    );
    // Asked for again: watched again, a new stream.
    assert!(ask().starts_with("HTTP/1.1 200"));
    assert_eq!(watches(), 1);
    assert!(cp.log_count("dst.get path=web.default") > streams);
}

/// Which targets the Destination API is asked about: names under the
/// profile suffixes (at a label boundary), addresses in the profile
/// networks; nothing is asked before a target is met.
#[test]
fn only_claimed_targets_are_asked() {
    let cp = Cp::start("claims");
    let dst = cp.addr.to_string();
    let cfg = ringmesh_engine::config::Config::from_source(
        &[
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", dst.as_str()),
            (
                "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES",
                "svc.cluster.local.,example.org",
            ),
            (
                "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS",
                "10.0.0.0/8, fd00::/8",
            ),
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap();
    let d = cfg.destination.unwrap();
    let claims = |s: &str| d.claims(&ringmesh_discovery::Authority::parse(s).unwrap());
    assert!(claims(WEB));
    assert!(claims("a.example.org:80") && claims("example.org:80"));
    assert!(!claims("badexample.org:80") && !claims("web.test:80"));
    assert!(claims("10.1.2.3:80") && claims("[fd00::1]:80"));
    assert!(!claims("127.0.0.1:80") && !claims("192.168.0.1:80"));
    assert_eq!(cp.log_count("dst.get"), 0);
}

/// A keep-alive backend whose body is the `Host` it was sent, ended by
/// `name` (so the test knows which endpoint answered).
fn host_backend(name: u8) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some((_, headers)) = read_request(&mut r) {
            let host = headers
                .iter()
                .find_map(|h| h.strip_prefix("host:"))
                .unwrap_or("")
                .trim();
            let body = format!("{host} {}", name as char);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// One request through the proxy at `addr` by curl (a new connection
/// each): the body.
fn curl_body(addr: SocketAddr) -> String {
    let url = format!("http://{addr}/x");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H", "Host: web", &url])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An address's own `metric_labels` label its requests over the set's
/// (`dst_pod` with `dst_service`), and its `authority_override` is the
/// `Host` its requests arrive with, on kept-alive and new connections
/// alike; the other endpoint gets the request's own.
#[test]
fn endpoint_labels_and_authority_override() {
    let (a, b) = (host_backend(b'a'), host_backend(b'b'));
    let cp = Cp::start("per-endpoint");
    cp.write_loaded(&format!(
        r#"{{"destinations": {{"{WEB}": {{"service": "web", "namespace": "default", "endpoints": [
            {{"addr": "{}", "port": {}, "labels": {{"pod": "web-a", "service": "web-override"}},
              "authority_override": "web.remote.example:4143"}},
            {{"addr": "{}", "port": {}, "labels": {{"pod": "web-b"}}}}]}}}}}}"#,
        a.addr.ip(),
        a.addr.port(),
        b.addr.ip(),
        b.addr.port()
    ));
    let proxy = proxy(IoDriver::Uring, &cp, &[]);
    let addr = proxy.forward_addrs()[0];

    let want: std::collections::BTreeSet<String> = [
        "web.remote.example:4143 a",
        "web b",
        "curl web.remote.example:4143 a",
        "curl web b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Requests until both endpoints have answered each client (the
    // balancer's latency estimates decide the order: one slow answer on a
    // busy machine keeps an endpoint away until its estimate decays, for
    // seconds; bounded by time).
    let (mut w, mut r) = keep_alive(addr);
    let mut hosts = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        if std::time::Instant::now() > until {
            break;
        }
        if i >= 600 {
            thread::sleep(Duration::from_millis(20));
        }
        let body = if i % 2 == 0 {
            w.write_all(b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n")
                .unwrap();
            let (code, body) = read_response(&mut r).expect("a response");
            assert_eq!(code, 200);
            String::from_utf8(body).unwrap()
        } else {
            format!("curl {}", curl_body(addr))
        };
        assert!(
            want.contains(&body),
            "the override goes to a only: {body:?}"
        );
        hosts.insert(body);
        if hosts == want {
            break;
        }
    }
    assert_eq!(hosts, want, "both endpoints answered both clients");

    let m = metrics(&proxy);
    let series = |pod: &str, service: &str| {
        m.lines().any(|l| {
            l.starts_with("response_total{")
                && l.contains(&format!("dst_pod=\"{pod}\""))
                && l.contains(&format!("dst_service=\"{service}\""))
                && l.contains("dst_namespace=\"default\"")
        })
    };
    assert!(
        series("web-a", "web-override"),
        "a's labels win over the set's:\n{m}"
    );
    assert!(series("web-b", "web"), "b's merged with the set's:\n{m}");
    // The connections to each endpoint carry its labels too (as
    // linkerd2-proxy's `peer="dst"` series do).
    for (pod, service) in [("web-a", "web-override"), ("web-b", "web")] {
        assert!(
            m.lines().any(|l| {
                l.starts_with("tcp_open_total{")
                    && l.contains("peer=\"dst\"")
                    && l.contains(&format!("dst_pod=\"{pod}\""))
                    && l.contains(&format!("dst_service=\"{service}\""))
            }),
            "{pod}'s connections lack its labels:\n{m}"
        );
    }
}

/// A keep-alive backend counting the requests it gets in `hits`:
/// `…limited…` → 429 and `…flaky…` → 500 when `fails` or the path has
/// `/both`; `…/slow` after 2 s; else 200. The body is `name`, then `!`
/// when the request carried any of Linkerd's `l5d-timeout` /
/// `l5d-retry-*` headers.
fn policy_backend(name: u8, fails: bool, hits: Arc<AtomicUsize>) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some((path, headers)) = read_request(&mut r) {
            let l5d = headers
                .iter()
                .any(|l| l.starts_with("l5d-retry-") || l.starts_with("l5d-timeout"));
            hits.fetch_add(1, Ordering::Relaxed);
            if path.ends_with("/slow") || (path.contains("/a-slow") && name == b'a') {
                thread::sleep(Duration::from_secs(2));
            }
            let failing = fails || path.contains("/both");
            let status = match () {
                _ if failing && path.contains("limited") => "429 Too Many Requests",
                _ if failing && path.contains("flaky") => "500 Internal Server Error",
                _ => "200 OK",
            };
            let body: &[u8] = if l5d { &[name, b'!'] } else { &[name] };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if w.write_all(&[resp.as_bytes(), body].concat()).is_err() {
                return;
            }
        }
    })
}

/// The web service's Destination.Get path in the retry tests.
const WEB_SVC: &str = "web.default.svc.cluster.local:8080";

/// A proxy (one worker, endpoints never ejected: they fail on purpose)
/// forwarding to 127.0.0.9:8080, whose outbound policy has `routes` (JSON
/// HTTP routes, usually to [`WEB_SVC`]) over the endpoints `a` and `b`.
fn retry_policy_proxy(
    tag: &str,
    routes: &str,
    a: &Backend,
    b: &Backend,
) -> (Cp, ringmesh_engine::Proxy) {
    let cp = Cp::start(tag);
    let target = "127.0.0.9:8080";
    cp.write_loaded(&format!(
        r#"{{"destinations": {{
            "{target}": {{"service": "web", "endpoints": [], "http_routes": [{routes}]}},
            "{WEB_SVC}": {{"endpoints": [{{"addr": "{}", "port": {}}}, {{"addr": "{}", "port": {}}}]}}
        }}}}"#,
        a.addr.ip(),
        a.addr.port(),
        b.addr.ip(),
        b.addr.port(),
    ));
    let proxy = policy_proxy(
        &cp,
        target,
        &[
            // One worker: one balancer replica and one retry budget.
            ("LINKERD2_PROXY_CORES", "1"),
            ("RINGMESH_FAILURE_ACCRUAL_CONSECUTIVE", "100000"),
        ],
    );
    (cp, proxy)
}

/// An outbound policy's retry conditions and limit, and Linkerd's
/// `l5d-retry-*` / `l5d-timeout` request headers: applied and removed on
/// a route that allows them, ignored and passed on where it does not.
/// Retries are counted at the backends: a request both endpoints fail
/// reaches them twice when it is retried, once when not.
#[test]
fn policy_retry_conditions_and_l5d_headers() {
    let hits = Arc::new(AtomicUsize::new(0));
    let a = policy_backend(b'a', true, hits.clone());
    let b = policy_backend(b'b', false, hits.clone());
    let (cp, proxy) = retry_policy_proxy(
        "policy-retry",
        &format!(
            r#"
                {{"name": "limited", "path_prefix": "/limited", "backends": [{{"authority": "{WEB_SVC}"}}],
                  "retry": {{"limit": 2, "statuses": [[429, 429]]}}}},
                {{"name": "hdr", "path_prefix": "/hdr", "backends": [{{"authority": "{WEB_SVC}"}}],
                  "allow_l5d_headers": true}},
                {{"name": "plain", "path_prefix": "/", "backends": [{{"authority": "{WEB_SVC}"}}]}}"#
        ),
        &a,
        &b,
    );
    let addr = proxy.forward_addrs()[0];
    let mut conn = keep_alive(addr);
    // A request on the keep-alive connection (a new one after the proxy
    // closed it): status and body; status 0 when it closed instead.
    let mut get = |path: &str, extra: &str| -> (u16, String) {
        let (w, r) = &mut conn;
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: web\r\n{extra}\r\n").as_bytes())
            .unwrap();
        match read_response(r) {
            Some((code, body)) => (code, String::from_utf8_lossy(&body).into_owned()),
            None => {
                conn = keep_alive(addr);
                (0, String::new())
            }
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || get("/x", "").0 == 200),
        "the policy's backend never answered:\n{}",
        cp.tail()
    );
    const N: usize = 20;
    // N requests to `path`: their answers, and how many reached a backend.
    let mut batch = |path: &str, extra: &str| {
        let before = hits.load(Ordering::Relaxed);
        let answers: Vec<(u16, String)> = (0..N).map(|_| get(path, extra)).collect();
        (answers, hits.load(Ordering::Relaxed) - before)
    };
    // 429 is the limited rule's condition: a's go again to b...
    let (answers, _) = batch("/limited", "");
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "b"),
        "{answers:?}"
    );
    // ...and when both answer 429, every request went three times: the
    // limit, the second retry to an endpoint that already answered (as
    // linkerd2-proxy's retries go through the balancer again).
    let (answers, sent) = batch("/limited/both", "");
    assert!(answers.iter().all(|(s, _)| *s == 429), "{answers:?}");
    assert_eq!(sent, 3 * N, "two retries each");
    // Another rule has no retry policy: 429 is passed on, never retried.
    let (answers, sent) = batch("/plain/both/limited", "");
    assert!(answers.iter().all(|(s, _)| *s == 429), "{answers:?}");
    assert_eq!(sent, N, "not retried");
    // The headers rule: no retries without the headers...
    let (_, sent) = batch("/hdr/both/flaky", "");
    assert_eq!(sent, N, "not retried");
    // ...with them, 5xx retried, and the headers never reach a backend.
    let asked = "l5d-retry-http: 5xx\r\nl5d-retry-limit: 1\r\n";
    let (answers, sent) = batch("/hdr/both/flaky", asked);
    assert_eq!(sent, 2 * N, "retried once each");
    assert!(
        answers.iter().all(|(s, b)| *s == 500 && !b.contains('!')),
        "{answers:?}"
    );
    let (answers, _) = batch("/hdr/flaky", asked);
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "b"),
        "{answers:?}"
    );
    // The same headers mean nothing on a rule that does not allow them:
    // not applied, passed on.
    let (answers, sent) = batch("/plain/both/flaky", asked);
    assert_eq!(sent, N, "not retried");
    assert!(
        answers.iter().all(|(s, b)| *s == 500 && b.ends_with('!')),
        "{answers:?}"
    );
    // Last: a timeout may end the connection.
    let started = Instant::now();
    assert_eq!(get("/hdr/slow", "l5d-timeout: 200ms\r\n").0, 504);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the header's timeout"
    );
}

/// A retry policy's `max_request_bytes`: a request whose body is no
/// larger is kept and goes again (a 429 retried on the other endpoint); a
/// larger one streams and is not retried. Without it in the policy,
/// 64 KiB (what Linkerd's policy controller sends).
#[test]
fn policy_retry_keeps_bodies_up_to_max_request_bytes() {
    let hits = Arc::new(AtomicUsize::new(0));
    let a = policy_backend(b'a', true, hits.clone());
    let b = policy_backend(b'b', false, hits.clone());
    let (cp, proxy) = retry_policy_proxy(
        "policy-retry-bytes",
        &format!(
            r#"
                {{"name": "small", "path_prefix": "/small", "backends": [{{"authority": "{WEB_SVC}"}}],
                  "retry": {{"limit": 2, "statuses": [[429, 429]], "max_request_bytes": 100}}}},
                {{"name": "default", "path_prefix": "/", "backends": [{{"authority": "{WEB_SVC}"}}],
                  "retry": {{"limit": 2, "statuses": [[429, 429]]}}}}"#
        ),
        &a,
        &b,
    );
    let addr = proxy.forward_addrs()[0];
    let mut conn = keep_alive(addr);
    let mut post = |path: &str, len: usize| -> u16 {
        let (w, r) = &mut conn;
        let head = format!("POST {path} HTTP/1.1\r\nHost: web\r\nContent-Length: {len}\r\n\r\n");
        w.write_all(&[head.as_bytes(), &vec![b'x'; len]].concat())
            .unwrap();
        read_response(r).expect("an answer").0
    };
    assert!(
        eventually(Duration::from_secs(5), || post("/ok", 1) == 200),
        "the policy's backend never answered:\n{}",
        cp.tail()
    );
    const N: usize = 20;
    // N POSTs: their statuses, and how many reached a backend.
    let mut batch = |path: &str, len: usize| {
        let before = hits.load(Ordering::Relaxed);
        let codes: Vec<u16> = (0..N).map(|_| post(path, len)).collect();
        (codes, hits.load(Ordering::Relaxed) - before)
    };
    // Both endpoints answer these 429: a retried request goes three times
    // (the limit: both endpoints, then one of them again), one not
    // retried reaches one.
    for (path, len, retried) in [
        ("/small/both/limited", 100, true),
        ("/small/both/limited", 101, false),
        ("/both/limited", 60 * 1024, true),
        ("/both/limited", 64 * 1024 + 1, false),
    ] {
        let (codes, sent) = batch(path, len);
        assert!(codes.iter().all(|c| *c == 429), "{path} {len}: {codes:?}");
        let want = if retried { 3 * N } else { N };
        assert_eq!(sent, want, "{path} {len}: retried: {retried}");
    }
    proxy.shutdown();
    proxy.wait();
}

/// A TCP backend that answers each connection's first line with its
/// `name` and the line, then closes.
fn line_backend(name: &'static str) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut line = String::new();
        if BufReader::new(s).read_line(&mut line).is_ok() {
            let _ = w.write_all(format!("{name}:{line}").as_bytes());
        }
    })
}

/// What a connection to `addr` answers to one line; empty when it closed
/// without answering.
fn tcp_line(addr: SocketAddr) -> String {
    let mut c = connect(addr);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hello\n").unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// An outbound policy's opaque route (a TCPRoute): the target's
/// connections go to the route's backends (drawn by weight per
/// connection), not to the target's own endpoints; a `forbidden` filter,
/// or a policy with no route, refuses them (closed); a detecting target's
/// traffic that is not HTTP takes its opaque route too.
#[test]
fn policy_opaque_routes_choose_the_backend() {
    let own = line_backend("own");
    let (b, c) = (line_backend("b"), line_backend("c"));
    let cp = Cp::start("policy-opaque");
    let ep = |x: &Backend| {
        format!(
            r#"{{"addr": "{}", "port": {}}}"#,
            x.addr.ip(),
            x.addr.port()
        )
    };
    let (tb, tc) = (
        "tcp-b.default.svc.cluster.local:9000",
        "tcp-c.default.svc.cluster.local:9000",
    );
    cp.write_loaded(&format!(
        r#"{{"destinations": {{
            "127.0.0.9:8080": {{"service": "split", "endpoints": [{own}], "opaque": true,
                "opaque_route": {{"backends": [{{"authority": "{tb}", "weight": 3}}, {{"authority": "{tc}", "weight": 1}}]}}}},
            "127.0.0.9:8081": {{"service": "denied", "endpoints": [{own}], "opaque": true,
                "opaque_route": {{"backends": [{{"authority": "{tb}"}}], "forbidden": true}}}},
            "127.0.0.9:8082": {{"service": "none", "endpoints": [{own}], "opaque": true,
                "opaque_route": {{"routes": 0}}}},
            "127.0.0.9:8083": {{"service": "detect", "endpoints": [{own}],
                "opaque_route": {{"backends": [{{"forward": "{c_addr}"}}]}}}},
            "{tb}": {{"endpoints": [{b_ep}]}},
            "{tc}": {{"endpoints": [{c_ep}]}}
        }}}}"#,
        own = ep(&own),
        b_ep = ep(&b),
        c_ep = ep(&c),
        c_addr = c.addr,
    ));
    let cp_addr = cp.addr.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=127.0.0.9:8080,127.0.0.1:0=127.0.0.9:8081,127.0.0.1:0=127.0.0.9:8082,127.0.0.1:0=127.0.0.9:8083",
            ),
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &cp_addr),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", &cp_addr),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                r#"{"ns":"default","pod":"client-0"}"#,
            ),
            ("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "127.0.0.9/32"),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    let fwd = proxy.forward_addrs();
    // The policy arrives with (or just after) the first connections.
    assert!(
        eventually(Duration::from_secs(10), || tcp_line(fwd[0])
            .starts_with("b:")
            || tcp_line(fwd[0]).starts_with("c:")),
        "the opaque route was never applied:\n{}",
        cp.tail()
    );
    let answers: Vec<String> = (0..80).map(|_| tcp_line(fwd[0])).collect();
    let to = |n: &str| {
        answers
            .iter()
            .filter(|a| *a == &format!("{n}:hello\n"))
            .count()
    };
    assert_eq!(to("b") + to("c"), 80, "{answers:?}");
    // 3 : 1 (60 : 20 expected; 6 sigma is about 23).
    assert!((40..=75).contains(&to("b")), "{answers:?}");
    assert!(to("c") >= 5, "{answers:?}");
    // Refused: closed without reaching any backend.
    for (i, what) in [(1, "forbidden"), (2, "no route")] {
        assert!(
            eventually(Duration::from_secs(10), || tcp_line(fwd[i]).is_empty()),
            "{what}: not refused"
        );
        for _ in 0..5 {
            assert_eq!(tcp_line(fwd[i]), "", "{what}");
        }
    }
    // Detecting: bytes that are not HTTP go by the opaque route.
    assert!(
        eventually(Duration::from_secs(10), || tcp_line(fwd[3]) == "c:hello\n"),
        "the detecting target's opaque route"
    );
    proxy.shutdown();
    proxy.wait();
}

/// A TCP backend that reads a connection's first bytes and answers with
/// its `name`, then closes.
fn name_backend(name: &'static str) -> Backend {
    Backend::start(move |mut s| {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).is_ok_and(|n| n > 0) {
            let _ = s.write_all(name.as_bytes());
        }
    })
}

/// A TLS ClientHello (rustls's) naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// An outbound policy's TLS routes (TLSRoutes): a connection goes by the
/// route its ClientHello's SNI matches most specifically (an exact name
/// over a wildcard, a longer wildcard over a shorter), with the bytes
/// untouched; a name no route matches, or a route's `forbidden` filter,
/// closes it.
#[test]
fn policy_tls_routes_go_by_sni() {
    let (exact, deep, wide) = (
        name_backend("exact"),
        name_backend("deep"),
        name_backend("wide"),
    );
    // The no-route target itself answers: a connection relayed to it
    // instead of closed would say so.
    let direct = Backend::on(listen("127.0.0.9:0".parse().unwrap()), |mut s| {
        let mut buf = [0u8; 4096];
        if s.read(&mut buf).is_ok_and(|n| n > 0) {
            let _ = s.write_all(b"direct");
        }
    });
    let cp = Cp::start("policy-tls");
    let fwd = |x: &Backend| format!(r#"{{"forward": "{}"}}"#, x.addr);
    cp.write_loaded(&format!(
        r#"{{"destinations": {{
            "127.0.0.9:443": {{"service": "tls", "endpoints": [], "tls_routes": [
                {{"name": "wide", "snis": ["*.example.com"], "backends": [{wide}]}},
                {{"name": "deep", "snis": ["*.api.example.com"], "backends": [{deep}]}},
                {{"name": "exact", "snis": ["v1.api.example.com"], "backends": [{exact}]}},
                {{"name": "closed", "snis": ["admin.example.com"], "backends": [{wide}], "forbidden": true}}
            ]}},
            "{direct}": {{"service": "tls-none", "endpoints": [], "tls_routes": []}}
        }}}}"#,
        wide = fwd(&wide),
        deep = fwd(&deep),
        exact = fwd(&exact),
        direct = direct.addr,
    ));
    let forwards = format!("127.0.0.1:0=127.0.0.9:443,127.0.0.1:0={}", direct.addr);
    let cp_addr = cp.addr.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", &forwards),
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &cp_addr),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", &cp_addr),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                r#"{"ns":"default","pod":"client-0"}"#,
            ),
            ("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "127.0.0.9/32"),
        ],
    );
    let (addr, none) = (proxy.forward_addrs()[0], proxy.forward_addrs()[1]);
    let tls_to = |addr: SocketAddr, sni: &str| -> String {
        let mut c = connect(addr);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&client_hello(sni)).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    let tls = |sni: &str| tls_to(addr, sni);
    assert!(
        eventually(Duration::from_secs(10), || tls("v1.api.example.com")
            == "exact"),
        "the TLS routes were never applied:\n{}",
        cp.tail()
    );
    for (sni, want) in [
        ("v1.api.example.com", "exact"),
        ("v2.api.example.com", "deep"),
        ("www.example.com", "wide"),
        ("a.b.example.com", "wide"),
        ("admin.example.com", ""),
        ("example.com", ""),
        ("other.test", ""),
    ] {
        for _ in 0..3 {
            assert_eq!(tls(sni), want, "{sni}");
        }
    }
    // A TLS policy with no route at all: nowhere (after the policy came,
    // which the first connection waits for).
    for _ in 0..3 {
        assert_eq!(tls_to(none, "v1.api.example.com"), "", "no route");
    }
    proxy.shutdown();
    proxy.wait();
}

/// An outbound policy's per-attempt timeout (`retry.timeout`, and a
/// request's `l5d-retry-timeout`): an attempt with no response head by
/// then goes to another endpoint, long before the slow one would answer;
/// and its backoff: every retried request paused at least that long.
#[test]
fn policy_retry_attempt_timeout_and_backoff() {
    let (a_hits, b_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = policy_backend(b'a', true, a_hits.clone());
    let b = policy_backend(b'b', false, b_hits.clone());
    let routes = format!(
        r#"
            {{"name": "attempt", "path_prefix": "/attempt", "backends": [{{"authority": "{WEB_SVC}"}}],
              "timeout_ms": 5000, "retry": {{"limit": 1, "timeout_ms": 200}}}},
            {{"name": "backoff", "path_prefix": "/backoff", "backends": [{{"authority": "{WEB_SVC}"}}],
              "retry": {{"limit": 1, "statuses": [[429, 429]], "backoff_ms": 300}}}},
            {{"name": "hdr", "path_prefix": "/hdr", "backends": [{{"authority": "{WEB_SVC}"}}],
              "timeout_ms": 5000, "allow_l5d_headers": true}},
            {{"name": "plain", "path_prefix": "/", "backends": [{{"authority": "{WEB_SVC}"}}]}}"#
    );
    let get = |addr: SocketAddr, path: &str, extra: &str| -> (u16, String, Duration) {
        let (mut w, mut r) = keep_alive(addr);
        let started = Instant::now();
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: web\r\n{extra}\r\n").as_bytes())
            .unwrap();
        let (code, body) = read_response(&mut r).unwrap_or((0, Vec::new()));
        (
            code,
            String::from_utf8_lossy(&body).into_owned(),
            started.elapsed(),
        )
    };
    // `n` requests at once, each on its own connection (so the balancer,
    // seeing the others in flight, spreads them over both endpoints).
    let at_once = |addr: SocketAddr, n: usize, path: &'static str, extra: &'static str| {
        let calls: Vec<_> = (0..n)
            .map(|_| thread::spawn(move || get(addr, path, extra)))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    };
    // A proxy of its own per part: an attempt that timed out on `a` counts
    // its wait as `a`'s latency, and the balancer then avoids `a` (and a
    // busy machine's slow answer may too), where each part needs `a` tried.
    let fresh = |tag: &str| {
        let (cp, proxy) = retry_policy_proxy(tag, &routes, &a, &b);
        let addr = proxy.forward_addrs()[0];
        assert!(
            eventually(Duration::from_secs(5), || get(addr, "/x", "").0 == 200),
            "the policy's backend never answered:\n{}",
            cp.tail()
        );
        (cp, proxy, addr)
    };
    // `a` takes 2 s to answer these.
    for (tag, path, extra) in [
        ("policy-retry-timeout", "/attempt/a-slow", ""),
        (
            "policy-retry-hdr",
            "/hdr/a-slow",
            "l5d-retry-timeout: 200ms\r\n",
        ),
    ] {
        let (_cp, _proxy, addr) = fresh(tag);
        let before = a_hits.load(Ordering::Relaxed);
        for (code, body, took) in at_once(addr, 8, path, extra) {
            assert_eq!((code, body.trim_end_matches('!')), (200, "b"), "{path}");
            assert!(took < Duration::from_millis(1500), "{path}: {took:?}");
        }
        assert!(
            a_hits.load(Ordering::Relaxed) > before,
            "{path}: the slow endpoint was never tried; the test proves nothing"
        );
    }
    // The backoff: a retried request (its first attempt answered 429 by
    // `a`) paused 300 ms before going to `b`.
    let (_cp, _proxy, addr) = fresh("policy-retry-backoff");
    let (a0, b0) = (
        a_hits.load(Ordering::Relaxed),
        b_hits.load(Ordering::Relaxed),
    );
    let answers = at_once(addr, 12, "/backoff/limited", "");
    let retried = a_hits.load(Ordering::Relaxed) - a0;
    assert_eq!(b_hits.load(Ordering::Relaxed) - b0, 12);
    assert!(
        retried > 0,
        "no request went to `a` first; the test proves nothing"
    );
    let paused = answers
        .iter()
        .inspect(|(code, body, _)| assert_eq!((*code, body.as_str()), (200, "b")))
        .filter(|(_, _, took)| *took >= Duration::from_millis(300))
        .count();
    assert!(
        paused >= retried,
        "{retried} retried, {paused} took 300 ms or more: {answers:?}"
    );
}

/// `_SVC_ADDR` as a name (as Linkerd's injector writes it): resolved when
/// connecting — `localhost` here, spoken to in plaintext — and the
/// Destination API answers through it.
#[test]
fn a_control_plane_named_by_host() {
    let a = path_backend(b'a', false);
    let cp = Cp::start("named");
    cp.write_loaded(&serde_json(&[(a.addr, 10000)]));
    let named = format!("localhost:{}", cp.addr.port());
    let forward = format!("127.0.0.1:0={WEB}");
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", forward.as_str()),
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", named.as_str()),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    );
    let (mut w, mut r) = keep_alive(proxy.forward_addrs()[0]);
    assert_eq!(request(&mut w, &mut r, "/"), (200, b'a'));
    assert_eq!(metric(&metrics(&proxy), "destination_watches"), 1);
}

/// A keep-alive backend answering every request with `status` after
/// `delay`, counting them in `hits`.
fn fixed_backend(status: &'static str, delay: Duration, hits: Arc<AtomicUsize>) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while read_request(&mut r).is_some() {
            hits.fetch_add(1, Ordering::Relaxed);
            thread::sleep(delay);
            let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// The outbound policy's failure accrual (consecutive failures): a fast
/// endpoint that always fails — which peak-EWMA would otherwise keep
/// picking over a 50 ms one — is ejected after exactly that many failures
/// and gets nothing more within the backoff; the proxy's own accrual is
/// off.
#[test]
fn policy_failure_accrual_ejects_endpoints() {
    let (bad_hits, good_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let bad = fixed_backend(
        "500 Internal Server Error",
        Duration::ZERO,
        bad_hits.clone(),
    );
    // Much slower than the failing one: a one-off hiccup in the failing
    // one's first latency sample (peak-EWMA keeps peaks) cannot tip the
    // balance, so without ejection nearly every request goes to it.
    let good = fixed_backend("200 OK", Duration::from_millis(50), good_hits.clone());
    let cp = Cp::start("accrual");
    let target = "127.0.0.9:8080";
    let web = "web.default.svc.cluster.local:8080";
    cp.write_loaded(&format!(
        r#"{{"destinations": {{
            "{target}": {{"service": "web", "endpoints": [],
                "failure_accrual": {{"max_failures": 3, "backoff_ms": 60000}},
                "http_routes": [{{"name": "all", "path_prefix": "/", "backends": [{{"authority": "{web}"}}]}}]}},
            "{web}": {{"endpoints": [{{"addr": "{}", "port": {}}}, {{"addr": "{}", "port": {}}}]}}
        }}}}"#,
        bad.addr.ip(),
        bad.addr.port(),
        good.addr.ip(),
        good.addr.port(),
    ));
    let proxy = policy_proxy(
        &cp,
        target,
        &[
            ("LINKERD2_PROXY_CORES", "1"),
            ("RINGMESH_FAILURE_ACCRUAL_CONSECUTIVE", "100000"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    // Until the policy is known the target itself is tried (nothing
    // listens there: 502, and the connection closes); then requests wait
    // in the backend's queue for its endpoints.
    assert!(
        eventually(Duration::from_secs(5), || {
            let (mut w, mut r) = keep_alive(addr);
            let (code, _) = request(&mut w, &mut r, "/warm-up");
            code != 502
        }),
        "the policy's backend never answered:\n{}",
        cp.tail()
    );
    let (mut w, mut r) = keep_alive(addr);
    let mut statuses = Vec::new();
    // POSTs: a 500 is never retried, so every failure is the client's.
    for _ in 0..40 {
        w.write_all(b"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let (code, _) = read_response(&mut r).expect("a response");
        statuses.push(code.to_string());
    }
    assert_eq!(
        bad_hits.load(Ordering::Relaxed),
        3,
        "ejected after three failures (warm-up included), not picked again within the backoff: {statuses:?}"
    );
    assert!(statuses[statuses.len() - 20..].iter().all(|s| s == "200"));
    assert!(good_hits.load(Ordering::Relaxed) >= 37);
}

/// The outbound policy's per-backend queue: while a route's backend has no
/// endpoint, at most `capacity` requests (per core) wait for one and only
/// for `failfast` (300 ms here; ringmesh's own default is 3 s), then get
/// 503; the backend then fails fast (503 at once) until an endpoint
/// appears, and the next request goes through.
#[test]
fn policy_backend_queue_and_fail_fast() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = fixed_backend("200 OK", Duration::ZERO, hits.clone());
    let cp = Cp::start("queue");
    let target = "127.0.0.9:8080";
    let web = "web.default.svc.cluster.local:8080";
    let config = |endpoints: &str| {
        format!(
            r#"{{"destinations": {{
            "{target}": {{"service": "web", "endpoints": [],
                "http_routes": [
                    {{"name": "warm", "path_prefix": "/warm", "backends": [{{"forward": "{}"}}]}},
                    {{"name": "q", "path_prefix": "/", "backends": [{{"authority": "{web}",
                        "queue": {{"capacity": 2, "failfast_ms": 300}}}}]}}]}},
            "{web}": {{"endpoints": [{endpoints}]}}
        }}}}"#,
            live.addr
        )
    };
    cp.write_loaded(&config(""));
    let proxy = policy_proxy(&cp, target, &[("LINKERD2_PROXY_CORES", "1")]);
    let addr = proxy.forward_addrs()[0];
    // The policy is known once /warm reaches its forward backend.
    assert!(
        eventually(Duration::from_secs(5), || {
            let (mut w, mut r) = keep_alive(addr);
            request(&mut w, &mut r, "/warm").0 == 200
        }),
        "the policy never applied:\n{}",
        cp.tail()
    );
    // Four at once: two wait out the fail-fast timeout, two find the queue
    // full and get 503 at once.
    let (ready, go) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (ready, go) = (ready.clone(), go.clone());
            thread::spawn(move || {
                let (mut w, mut r) = keep_alive(addr);
                ready.fetch_add(1, Ordering::SeqCst);
                while !go.load(Ordering::SeqCst) {
                    thread::yield_now();
                }
                let t = Instant::now();
                let (code, _) = request(&mut w, &mut r, "/x");
                (code, t.elapsed())
            })
        })
        .collect();
    while ready.load(Ordering::SeqCst) < 4 {
        thread::yield_now();
    }
    go.store(true, Ordering::SeqCst);
    let mut answers: Vec<(u16, Duration)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    answers.sort_by_key(|(_, t)| *t);
    assert!(answers.iter().all(|(c, _)| *c == 503), "{answers:?}");
    let waited: Vec<_> = answers
        .iter()
        .filter(|(_, t)| *t >= Duration::from_millis(250))
        .collect();
    assert_eq!(waited.len(), 2, "two queued, two refused: {answers:?}");
    assert!(
        waited.iter().all(|(_, t)| *t < Duration::from_secs(2)),
        "the policy's 300 ms fail-fast timeout, not the 3 s default: {answers:?}"
    );
    // Failing fast now: 503 at once.
    let (mut w, mut r) = keep_alive(addr);
    let t = Instant::now();
    assert_eq!(request(&mut w, &mut r, "/x").0, 503);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    // An endpoint appears: requests go through again.
    cp.write_loaded(&config(&format!(
        r#"{{"addr": "{}", "port": {}}}"#,
        live.addr.ip(),
        live.addr.port()
    )));
    let before = hits.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || {
            let (mut w, mut r) = keep_alive(addr);
            request(&mut w, &mut r, "/x").0 == 200
        }),
        "the backend's endpoint never took traffic:\n{}",
        cp.tail()
    );
    assert!(hits.load(Ordering::Relaxed) > before);
}

/// What a raw HTTP/2 upstream saw of one connection.
enum H2Event {
    /// A (non-ACK) SETTINGS frame's parameters.
    Settings(Vec<(u16, u32)>),
    Ping(Instant),
    Closed(Instant),
}

/// A bare HTTP/2 (h2c) upstream written from the frames up, so the test
/// sees exactly what the proxy's client sends: it reports SETTINGS, PINGs
/// (answered only when `answer_pings`) and the connection's end, and
/// answers each request (a HEADERS frame that ends its stream) with `200`
/// and no body.
fn raw_h2_upstream(answer_pings: bool) -> (SocketAddr, std::sync::mpsc::Receiver<H2Event>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let (Ok(mut s), tx) = (s, tx.clone()) else {
                continue;
            };
            thread::spawn(move || {
                let mut preface = [0u8; 24];
                let _ = s.read_exact(&mut preface);
                let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                let mut head = [0u8; 9];
                while s.read_exact(&mut head).is_ok() {
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let (kind, flags) = (head[3], head[4]);
                    let stream = &head[5..9];
                    let mut payload = vec![0u8; len];
                    if s.read_exact(&mut payload).is_err() {
                        break;
                    }
                    let reply: Vec<u8> = match kind {
                        4 if flags & 1 == 0 => {
                            let params = payload
                                .chunks_exact(6)
                                .map(|c| {
                                    let id = u16::from_be_bytes([c[0], c[1]]);
                                    (id, u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
                                })
                                .collect();
                            let _ = tx.send(H2Event::Settings(params));
                            vec![0, 0, 0, 4, 1, 0, 0, 0, 0]
                        }
                        6 if flags & 1 == 0 => {
                            let _ = tx.send(H2Event::Ping(Instant::now()));
                            if !answer_pings {
                                continue;
                            }
                            [&[0, 0, 8, 6, 1, 0, 0, 0, 0][..], &payload].concat()
                        }
                        // HEADERS ending its stream: `:status 200` (HPACK
                        // static index 8), END_STREAM | END_HEADERS.
                        1 if flags & 1 == 1 => [&[0, 0, 1, 1, 5][..], stream, &[0x88]].concat(),
                        _ => continue,
                    };
                    if s.write_all(&reply).is_err() {
                        break;
                    }
                }
                let _ = tx.send(H2Event::Closed(Instant::now()));
            });
        }
    });
    (addr, rx)
}

/// One HTTP/2 (prior knowledge) request by curl through the proxy at
/// `addr`: the status.
fn curl_h2_status(addr: SocketAddr) -> String {
    let url = format!("http://{addr}/x");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "10"])
        .args(["-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .expect("curl runs");
    String::from_utf8(out.stdout).unwrap()
}

/// The Destination API's `Http2ClientParams` for an endpoint shape the
/// proxy's HTTP/2 connections to it: its stream window and frame size are
/// in the SETTINGS the upstream gets, and keep-alive PINGs go out at the
/// interval; one left unanswered ends the connection within the timeout.
/// Without them (the endpoint updated), a new connection has the proxy's
/// own settings and no PINGs.
#[test]
fn http2_client_params_shape_upstream_connections() {
    let (up, events) = raw_h2_upstream(false);
    let cp = Cp::start("h2-params");
    let config = |http2: &str| {
        format!(
            r#"{{"destinations": {{"{WEB}": {{"service": "web", "namespace": "default", "endpoints": [
            {{"addr": "{}", "port": {}{http2}}}]}}}}}}"#,
            up.ip(),
            up.port()
        )
    };
    cp.write_loaded(&config(
        r#", "http2": {"stream_window": 1000000, "max_frame_size": 32768,
            "keep_alive": {"interval_ms": 300, "timeout_ms": 300, "while_idle": true}}"#,
    ));
    let proxy = proxy(IoDriver::Uring, &cp, &[("LINKERD2_PROXY_CORES", "1")]);
    let addr = proxy.forward_addrs()[0];
    let sent = Instant::now();
    assert_eq!(curl_h2_status(addr), "200", "{}", cp.tail());
    let mut settings = None;
    let mut pings = Vec::new();
    let closed = loop {
        match events.recv_timeout(Duration::from_secs(5)) {
            Ok(H2Event::Settings(p)) => settings = settings.or(Some(p)),
            Ok(H2Event::Ping(t)) => pings.push(t),
            Ok(H2Event::Closed(t)) => break t,
            Err(e) => panic!("the unanswered PING never ended the connection: {e}"),
        }
    };
    let settings = settings.expect("the proxy's SETTINGS");
    // SETTINGS_INITIAL_WINDOW_SIZE (4) and SETTINGS_MAX_FRAME_SIZE (5).
    assert!(settings.contains(&(4, 1_000_000)), "{settings:?}");
    assert!(settings.contains(&(5, 32768)), "{settings:?}");
    assert_eq!(pings.len(), 1, "one PING, unanswered: {pings:?}");
    let (ping, end) = (pings[0] - sent, closed - pings[0]);
    assert!(
        ping >= Duration::from_millis(250) && ping < Duration::from_secs(2),
        "the first PING after the 300 ms interval: {ping:?}"
    );
    assert!(
        end >= Duration::from_millis(250) && end < Duration::from_secs(2),
        "closed after the 300 ms timeout: {end:?}"
    );

    // Parameters gone: the next connection has the proxy's own settings
    // and sends no PING.
    cp.write_loaded(&config(""));
    thread::sleep(Duration::from_secs(1));
    assert_eq!(curl_h2_status(addr), "200");
    let settings = loop {
        match events.recv_timeout(Duration::from_secs(5)) {
            Ok(H2Event::Settings(p)) => break p,
            Ok(_) => {}
            Err(e) => panic!("no new connection: {e}"),
        }
    };
    assert!(!settings.contains(&(4, 1_000_000)), "{settings:?}");
    assert!(!settings.iter().any(|(id, _)| *id == 5), "{settings:?}");
    match events.recv_timeout(Duration::from_secs(1)) {
        Err(_) => {}
        Ok(H2Event::Ping(_)) => panic!("a PING without keep-alive"),
        Ok(H2Event::Closed(_)) => panic!("the connection ended"),
        Ok(H2Event::Settings(_)) => panic!("another connection"),
    }
}

/// A name under the profile suffixes that the Destination API does not
/// know (`NoEndpoints { exists: false }`: outside the cluster, say) is
/// resolved with DNS; once the API knows it its endpoints win, and when it
/// forgets it again DNS takes over again. No request fails meanwhile.
#[test]
fn names_the_destination_api_does_not_know_are_resolved_with_dns() {
    let delay = Duration::from_micros(200);
    let (a, b) = (backend(b'a', delay), backend(b'b', delay));
    // DNS: every name is 127.0.0.1, so `ext…:<a's port>` is a.
    let ns = common::dns::Nameserver::start([127, 0, 0, 1]);
    let name = format!("ext.default.svc.cluster.local:{}", a.addr.port());
    let known = format!(
        r#"{{"destinations": {{"{name}": {{"service": "ext", "namespace": "default",
            "endpoints": [{{"addr": "{}", "port": {}}}]}}}}}}"#,
        b.addr.ip(),
        b.addr.port()
    );
    let unknown = r#"{"destinations": {}}"#;
    let cp = Cp::start("dns-fallback");
    cp.write_loaded(unknown);
    let cp_addr = cp.addr.to_string();
    let forward = format!("127.0.0.1:0={name}");
    let dns = ns.addr.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", &forward),
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &cp_addr),
            ("RINGMESH_DNS_SERVERS", &dns),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 2, stop.clone(), true);
    thread::sleep(Duration::from_millis(1500));
    cp.write(&known);
    let added = Instant::now();
    thread::sleep(Duration::from_millis(2000));
    cp.write(unknown);
    let forgotten = Instant::now();
    thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    let seen: Seen = clients
        .into_iter()
        .flat_map(|h| h.join().expect("no request failed"))
        .collect();
    assert!(seen.iter().all(|(_, bad, _)| !bad), "no request failed");
    let early: Vec<u8> = seen
        .iter()
        .filter(|(at, _, _)| *at < added)
        .map(|(_, _, b)| *b)
        .collect();
    assert!(
        !early.is_empty() && early.iter().all(|b| *b == b'a'),
        "DNS's answer before the API knows the name: {}",
        cp.tail()
    );
    let mid: Vec<u8> = seen
        .iter()
        .filter(|(at, _, _)| *at > added + Duration::from_secs(1) && *at < forgotten)
        .map(|(_, _, b)| *b)
        .collect();
    assert!(
        !mid.is_empty() && mid.iter().all(|b| *b == b'b'),
        "the API's endpoint once it knows the name"
    );
    let late = after(&seen, forgotten, Duration::from_secs(1));
    assert!(
        !late.is_empty() && late.iter().all(|b| *b == b'a'),
        "DNS again once the API forgets it"
    );
    assert!(ns.answered.load(Ordering::SeqCst) >= 2, "DNS asked twice");
}

/// The policy controller answers NOT_FOUND for a target it has no policy
/// for (a pod's address, say): as linkerd2-proxy, that answer stands: the
/// target is proxied to its address with no policy, and the lookup is not
/// made again for each connection or retried with a backoff (it was, each
/// time with a warning: 11 lookups in 30 s for one target).
#[test]
fn a_policy_not_found_is_not_asked_again() {
    let backend = Backend::echo_on(listen("127.0.0.9:0".parse().unwrap()));
    let cp = Cp::start("policy-not-found");
    cp.write_loaded(r#"{"destinations": {}}"#);
    let target = backend.addr.to_string();
    let proxy = policy_proxy(&cp, &target, &[]);
    let addr = proxy.forward_addrs()[0];
    let started = Instant::now();
    for i in 0..8u8 {
        let mut c = connect(addr);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&[b'a' + i; 3]).unwrap();
        let mut back = [0u8; 3];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, [b'a' + i; 3], "{}", cp.tail());
        thread::sleep(Duration::from_millis(500));
    }
    let lookups = cp.log_count(&format!("policy.watch target={target}"));
    assert_eq!(
        lookups,
        1,
        "NOT_FOUND asked again in {:?}:\n{}",
        started.elapsed(),
        cp.tail()
    );
}
