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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::cp::Cp;
use common::lb::{answers, backend};
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
    let clients = answers(addr, 3, stop.clone(), true);
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
    cp.write(&serde_json(&[(b.addr, 10000), (c.addr, 10000)]));
    let moved = Instant::now();
    thread::sleep(Duration::from_secs(3));
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
    let late = after(&seen, moved, Duration::from_millis(2000));
    assert!(
        !late.is_empty() && late.iter().all(|b| *b == b'b' || *b == b'c'),
        "the update after the faults is applied"
    );
    let m = metrics(&proxy);
    assert_eq!(metric(&m, "destination_watches"), 1);
}

/// A keep-alive backend answering `GET <path>` by path: `/slow` after 2 s,
/// `/flaky*` with 500 when `fails`, anything else 200; the body is `name`.
fn path_backend(name: u8, fails: bool) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut first = String::new();
            if r.read_line(&mut first).unwrap_or(0) == 0 {
                return;
            }
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let path = first.split(' ').nth(1).unwrap_or("/").to_string();
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
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
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
    let cp_addr = cp.addr.to_string();
    let forward = format!("127.0.0.1:0={target}");
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", &forward),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &cp_addr),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", &cp_addr),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                r#"{"ns":"default","pod":"client-0"}"#,
            ),
            ("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "127.0.0.9/32"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let get = |path: &str, extra: &str| {
        let c = connect(addr);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: web\r\n{extra}\r\n").as_bytes())
            .unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        let code: u16 = status.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut line = String::new();
        let mut len = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
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
    // Unused: dropped within the timeout (plus a sweep).
    assert!(
        eventually(Duration::from_secs(5), || watches() == 0),
        "the idle watch was not dropped"
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
