//! Tap (issue 17): `io.linkerd.proxy.tap.Tap/Observe` on the control
//! port, driven by a real gRPC client (`tests/grpc/tap_client.py`: Debian
//! python3-grpcio with the linkerd2-proxy-api protos) against the running
//! proxy: matching requests appear exactly once with their events,
//! others not; `limit` ends the call cleanly; headers only when asked;
//! bad requests get `INVALID_ARGUMENT`; a client that never reads drops
//! events, never requests; a client that leaves takes its tap off the
//! workers.
//!
//! Needs Debian's python3 with grpcio and protobuf, and protoc
//! (`scripts/install-test-deps.sh`); fails without them. No root.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringmesh_engine::{IoDriver, Proxy};
use serde_json::Value;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/tap_client.py");

/// tap.proto's descriptor set, made once per test process with protoc
/// and kept in memory (protoc writes it to its stdout), so no file outlives
/// the tests.
fn descriptors() -> &'static [u8] {
    static SET: OnceLock<Vec<u8>> = OnceLock::new();
    SET.get_or_init(|| {
        let out = Command::new("protoc")
            .arg("-I")
            .arg(proto_dir())
            .arg("--include_imports")
            .arg("--descriptor_set_out=/dev/stdout")
            .arg("tap.proto")
            .output()
            .expect("protoc (protobuf-compiler, scripts/install-test-deps.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    })
}

/// A running tap call: its output lines as they come.
struct TapCall {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl TapCall {
    fn start(tap: SocketAddr, request: &str) -> Self {
        Self::start_with(tap, request, &[])
    }

    /// With more of the client's arguments (its TLS settings).
    fn start_with(tap: SocketAddr, request: &str, extra: &[String]) -> Self {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(CLIENT)
            .args(["--descriptors", "/dev/stdin"])
            .args(["--addr", &tap.to_string(), "--request", request])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("python3 with grpcio (scripts/install-test-deps.sh)");
        // A few KiB, within a pipe's buffer; closed after, so the client
        // reads to its end. A client that died first fails below, on its
        // missing first line.
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(descriptors());
        drop(stdin);
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let call = Self { child, lines };
        let first = call
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the tap client starts");
        assert_eq!(first, "open");
        call
    }

    /// Every line until the call's status (which is returned last).
    fn finish(&self, limit: Duration) -> (Vec<String>, String) {
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the call did not end; events so far: {events:#?}"));
            if line.starts_with("status ") {
                return (events, line);
            }
            events.push(line);
        }
    }
}

impl Drop for TapCall {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy(origin: SocketAddr, extra: &[(&str, &str)]) -> Proxy {
    let forward = format!("127.0.0.1:0={origin}");
    let mut vars = vec![
        ("RINGMESH_TCP_FORWARD", forward.as_str()),
        ("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "127.0.0.1:0"),
        ("RINGMESH_TAP_ALLOW_LOOPBACK", "true"),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
    ];
    vars.extend_from_slice(extra);
    start_proxy(IoDriver::Uring, &vars)
}

fn metric(proxy: &Proxy, name: &str) -> u64 {
    let mut s = connect(proxy.admin_addr().unwrap());
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{out}"))
}

fn wait_installed(proxy: &Proxy, n: u64) {
    assert!(
        eventually(Duration::from_secs(5), || metric(proxy, "tap_installed")
            == n),
        "tap_installed never became {n}"
    );
}

/// `GET path` on a new connection: the status line.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: web.test\r\nx-tap-me: yes\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_string()
}

/// `path` on `addr` with curl over h2c (prior knowledge), `extra` its
/// further arguments: "<status> <HTTP version>".
fn curl_h2(addr: SocketAddr, path: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "10"])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A JSON field path in one event line.
fn field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// A JSON number, or the string protobuf's JSON uses for 64-bit ones.
fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Matching requests appear exactly once each, with their three events
/// (same id), in order, with the request's fields and timings; requests
/// that do not match do not appear; the call ends cleanly after `limit`
/// requests, and its tap leaves the workers.
#[test]
fn matching_requests_appear_once_and_limit_ends_the_call() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().expect("the tap server runs");
    let call = TapCall::start(
        tap,
        r#"{"limit": 3, "match": {"http": {"path": {"prefix": "/hello"}}}}"#,
    );
    wait_installed(&proxy, 1);
    let addr = proxy.forward_addrs()[0];
    assert!(get(addr, "/status/404").contains("404"));
    for _ in 0..3 {
        assert!(get(addr, "/hello").contains("200"));
    }
    let (events, status) = call.finish(Duration::from_secs(10));
    assert_eq!(status.trim(), "status 0", "{events:#?}");
    // Past the limit: not tapped, and the tap is gone.
    assert!(get(addr, "/hello").contains("200"));
    wait_installed(&proxy, 0);

    let parsed: Vec<Value> = events.iter().map(|l| parse(l)).collect();
    assert_eq!(parsed.len(), 9, "{events:#?}");
    let mut ids = Vec::new();
    for ev in &parsed {
        let http = field(ev, &["http"]).expect("an HTTP event");
        assert_eq!(
            field(ev, &["proxyDirection"]).and_then(|v| v.as_str()),
            Some("OUTBOUND")
        );
        let dst_port = field(ev, &["destination", "port"]).and_then(as_u64);
        assert_eq!(dst_port, Some(u64::from(origin.addr.port())), "{ev:?}");
        assert!(field(ev, &["source", "port"]).is_some());
        if let Some(init) = field(http, &["requestInit"]) {
            assert_eq!(
                field(init, &["path"]).and_then(|v| v.as_str()),
                Some("/hello")
            );
            assert_eq!(
                field(init, &["method", "registered"]).and_then(|v| v.as_str()),
                Some("GET")
            );
            assert_eq!(
                field(init, &["authority"]).and_then(|v| v.as_str()),
                Some("web.test")
            );
            assert!(
                field(init, &["headers"]).is_none(),
                "headers only when asked"
            );
            ids.push(field(init, &["id"]).map(|v| format!("{v:?}")).unwrap());
        } else if let Some(rsp) = field(http, &["responseInit"]) {
            assert_eq!(field(rsp, &["httpStatus"]).and_then(as_u64), Some(200));
            assert!(field(rsp, &["sinceRequestInit"]).is_some());
        } else {
            let end = field(http, &["responseEnd"]).expect("a ResponseEnd");
            assert!(field(end, &["sinceRequestInit"]).is_some());
            // "hello from app\n": the body's bytes.
            let bytes = field(end, &["responseBytes"]).and_then(as_u64);
            assert_eq!(bytes, Some(15), "{ev:?}");
        }
    }
    assert_eq!(ids.len(), 3);
    ids.dedup();
    assert_eq!(ids.len(), 3, "one RequestInit per request");
    // Each request's events in order: init, response, end, same id.
    for id in &ids {
        let kinds: Vec<&str> = parsed
            .iter()
            .filter_map(|ev| {
                let http = field(ev, &["http"])?;
                ["requestInit", "responseInit", "responseEnd"]
                    .into_iter()
                    .find(|k| {
                        field(http, &[k, "id"]).map(|v| format!("{v:?}")).as_ref() == Some(id)
                    })
            })
            .collect();
        assert_eq!(kinds, ["requestInit", "responseInit", "responseEnd"]);
    }
}

/// `extract.http.headers` includes the request's headers; without it
/// there are none.
#[test]
fn headers_only_when_extracted() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let call = TapCall::start(
        tap,
        r#"{"limit": 1, "match": {"http": {"path": {"exact": "/hello"}}}, "extract": {"http": {"headers": {}}}}"#,
    );
    wait_installed(&proxy, 1);
    assert!(get(proxy.forward_addrs()[0], "/hello").contains("200"));
    let (events, status) = call.finish(Duration::from_secs(10));
    assert_eq!(status.trim(), "status 0");
    let init = events
        .iter()
        .map(|l| parse(l))
        .find_map(|ev| field(&ev, &["http", "requestInit"]).cloned())
        .expect("a RequestInit");
    let headers = format!("{:?}", field(&init, &["headers"]).expect("headers"));
    assert!(headers.contains("x-tap-me"), "{headers}");
}

/// Each request's events, by id: (RequestInit, ResponseInit or null when
/// none came, ResponseEnd) in the order the requests started. A request's
/// events must come in that order.
fn by_request(events: &[String]) -> Vec<[Value; 3]> {
    let parsed: Vec<Value> = events.iter().map(|l| parse(l)).collect();
    let id = |ev: &Value, kind: &str| field(ev, &["http", kind, "id"]).map(|v| v.to_string());
    parsed
        .iter()
        .filter_map(|ev| id(ev, "requestInit").map(|i| (i, ev)))
        .map(|(i, init)| {
            let at = |kind: &str| {
                parsed
                    .iter()
                    .position(|ev| id(ev, kind).as_ref() == Some(&i))
            };
            let (rsp_at, end_at) = (at("responseInit"), at("responseEnd"));
            let init_at = at("requestInit");
            assert!(
                init_at < rsp_at.or(end_at) && rsp_at < end_at,
                "{events:#?}"
            );
            let of = |kind: &str| {
                let ev = &parsed[at(kind)?];
                field(ev, &["http", kind]).cloned()
            };
            let init = field(init, &["http", "requestInit"]).unwrap().clone();
            let end = of("responseEnd");
            let end = end.unwrap_or_else(|| panic!("no ResponseEnd for {i}: {events:#?}"));
            [init, of("responseInit").unwrap_or(Value::Null), end]
        })
        .collect()
}

/// A call's requests by path (requests on different workers may be
/// reported in either order).
struct ByPath {
    events: Vec<String>,
    reqs: Vec<[Value; 3]>,
}

impl ByPath {
    /// The call's events once it ended cleanly, with `n` requests.
    fn finish(call: &TapCall, n: usize) -> Self {
        let (events, status) = call.finish(Duration::from_secs(10));
        assert_eq!(status.trim(), "status 0");
        let reqs = by_request(&events);
        assert_eq!(reqs.len(), n, "{events:#?}");
        Self { events, reqs }
    }

    fn get(&self, path: &str) -> &[Value; 3] {
        let r = self
            .reqs
            .iter()
            .find(|r| r[0]["path"].as_str() == Some(path));
        r.unwrap_or_else(|| panic!("no {path}: {:#?}", self.events))
    }

    /// Its response's body bytes.
    fn bytes(&self, path: &str) -> Option<u64> {
        field(&self.get(path)[2], &["responseBytes"]).and_then(as_u64)
    }
}

/// A response's head and body as tap reports them: the response's
/// fields in its ResponseInit when extracted; the body's bytes in its
/// ResponseEnd, chunk framing excluded (HTTP/1 to HTTP/1 here).
#[test]
fn response_fields_and_body_bytes() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let call = TapCall::start(
        tap,
        r#"{"limit": 3, "match": {"http": {"path": {"prefix": "/"}}}, "extract": {"http": {"headers": {}}}}"#,
    );
    wait_installed(&proxy, 1);
    let addr = proxy.forward_addrs()[0];
    for path in ["/chunked", "/echo-head", "/zeros/100000"] {
        assert!(get(addr, path).contains("200"), "{path}");
    }
    let reqs = ByPath::finish(&call, 3);
    let of = |path: &str| reqs.get(path);
    let bytes = |path: &str| reqs.bytes(path);
    // "hello world" in two chunks, framing and trailer not counted.
    let events = &reqs.events;
    assert_eq!(bytes("/chunked"), Some(11), "{events:#?}");
    assert!(bytes("/echo-head").is_some_and(|n| n > 50), "{events:#?}");
    assert_eq!(bytes("/zeros/100000"), Some(100_000), "{events:#?}");
    let rsp_headers = field(&of("/echo-head")[1], &["headers"]).expect("headers");
    let rsp_headers = format!("{rsp_headers:?}");
    assert!(rsp_headers.contains("x-server-mixed"), "{rsp_headers}");
    assert!(!rsp_headers.contains("x-tap-me"), "{rsp_headers}");
    for r in &reqs.reqs {
        assert_eq!(field(&r[1], &["httpStatus"]).and_then(as_u64), Some(200));
        // An HTTP/1 response ends without a gRPC status or a reset.
        assert!(field(&r[2], &["eos"]).is_none(), "{r:?}");
    }
}

/// A response's ResponseInit is sent when its head arrives, not when it
/// ends: a body that stalls after its head does not hold it back.
#[test]
fn the_response_head_is_reported_before_the_body_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let origin = Backend::start(move |mut s| {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
        let until = Instant::now() + Duration::from_secs(10);
        while !held.load(Ordering::Acquire) && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = s.write_all(b"world");
    });
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let call = TapCall::start(
        tap,
        r#"{"limit": 1, "match": {"http": {"path": {"prefix": "/"}}}}"#,
    );
    wait_installed(&proxy, 1);
    let addr = proxy.forward_addrs()[0];
    let client = thread::spawn(move || get(addr, "/stream"));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.iter().any(|l: &String| l.contains("responseInit")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = call
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no ResponseInit while the body was held: {seen:#?}"));
        assert!(!line.contains("responseEnd"), "{line}");
        seen.push(line);
    }
    release.store(true, Ordering::Release);
    assert!(client.join().unwrap().contains("200"));
    let (events, status) = call.finish(Duration::from_secs(10));
    assert_eq!(status.trim(), "status 0");
    let end = events
        .iter()
        .map(|l| parse(l))
        .find_map(|ev| field(&ev, &["http", "responseEnd"]).cloned());
    let end = end.expect("a ResponseEnd");
    assert_eq!(field(&end, &["responseBytes"]).and_then(as_u64), Some(10));
    // Its response began well before it ended.
    let since_init = field(&end, &["sinceResponseInit"]).expect("sinceResponseInit");
    assert!(
        since_init.is_object() || since_init.is_string(),
        "{since_init:?}"
    );
}

/// A proxy forwarding to `web.test:80`, a service of `addr` (its static
/// file's `extra` lines), with a tap of one request (fields extracted)
/// installed.
fn service_with_tap(dir: &TempDir, addr: SocketAddr, extra: &str) -> (Proxy, TapCall) {
    let file = service_file(dir, "web.test:80", &[addr], extra);
    let proxy = proxy(
        addr,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
        ],
    );
    let call = TapCall::start(
        proxy.tap_addr().unwrap(),
        r#"{"limit": 1, "match": {"http": {"path": {"prefix": "/"}}}, "extract": {"http": {"headers": {}}}}"#,
    );
    wait_installed(&proxy, 1);
    (proxy, call)
}

/// Requests translated between HTTP versions are tapped with their
/// responses' bytes: HTTP/1 carried over HTTP/2 (an `h2`-hinted service,
/// here an HTTP/2 origin), and HTTP/2 to an HTTP/1 service.
#[test]
fn translated_requests_are_tapped() {
    let h2_origin = common::h2::origin(None);
    let h1_origin = http::origin("app");
    let cases = [
        (
            "h2",
            h2_origin.addr,
            "protocol_hint = \"h2\"\n",
            "/hello",
            13,
        ),
        (
            "h1",
            h1_origin.addr,
            "protocol = \"http1\"\n",
            "/chunked",
            11,
        ),
    ];
    for (tag, addr, extra, path, len) in cases {
        let dir = TempDir::new(&format!("tap-translated-{tag}"));
        let (proxy, call) = service_with_tap(&dir, addr, extra);
        let fwd = proxy.forward_addrs()[0];
        if tag == "h2" {
            assert!(get(fwd, path).contains("200"), "{tag}");
        } else {
            let code = curl_h2(fwd, path, &[]);
            assert_eq!(code.split(' ').next(), Some("200"), "{tag}");
        }
        let (events, status) = call.finish(Duration::from_secs(10));
        assert_eq!(status.trim(), "status 0", "{tag}");
        let reqs = by_request(&events);
        assert_eq!(reqs.len(), 1, "{tag}: {events:#?}");
        let [init, rsp, end] = &reqs[0];
        assert_eq!(init["path"].as_str(), Some(path), "{tag}");
        assert_eq!(
            field(rsp, &["httpStatus"]).and_then(as_u64),
            Some(200),
            "{tag}"
        );
        assert!(field(rsp, &["headers"]).is_some(), "{tag}: {rsp:?}");
        let bytes = field(end, &["responseBytes"]).and_then(as_u64);
        assert_eq!(bytes, Some(len), "{tag}: {end:?}");
    }
}

/// Trailers reach `ResponseEnd` whatever the versions on either side
/// (with fields extracted): a chunked response's trailer section relayed
/// to an HTTP/1 client; an HTTP/2 origin's trailers made chunked trailers
/// for an HTTP/1 client (an `h2`-hinted service); and a chunked HTTP/1
/// response's trailer section made HTTP/2 trailers for an HTTP/2 client
/// (a `protocol = "http1"` service).
#[test]
fn trailers_are_tapped_whatever_the_versions() {
    let h2_origin = common::h2::origin(None);
    let h1_origin = http::origin("app");
    let cases = [
        ("h1", h1_origin.addr, "", "/chunked", "x-trailer", false),
        (
            "h2",
            h2_origin.addr,
            "protocol_hint = \"h2\"\n",
            "/echo",
            "x-echo-bytes",
            false,
        ),
        (
            "h2-client",
            h1_origin.addr,
            "protocol = \"http1\"\n",
            "/chunked",
            "x-trailer",
            true,
        ),
    ];
    for (tag, addr, extra, path, trailer, h2_client) in cases {
        let dir = TempDir::new(&format!("tap-trailers-{tag}"));
        let (proxy, call) = service_with_tap(&dir, addr, extra);
        let forward = proxy.forward_addrs()[0];
        if h2_client {
            assert_eq!(curl_h2(forward, path, &[]), "200 2", "{tag}");
        } else {
            assert!(get(forward, path).contains("200"), "{tag}");
        }
        let (events, status) = call.finish(Duration::from_secs(10));
        assert_eq!(status.trim(), "status 0", "{tag}");
        let reqs = by_request(&events);
        assert_eq!(reqs.len(), 1, "{tag}: {events:#?}");
        let end = &reqs[0][2];
        let trailers = field(end, &["trailers"]).unwrap_or_else(|| panic!("{tag}: {end:?}"));
        assert!(
            format!("{trailers:?}").contains(trailer),
            "{tag}: {trailers:?}"
        );
    }
}

/// Bad `ObserveRequest`s get `INVALID_ARGUMENT` (3) with a reason, and
/// the proxy serves on.
#[test]
fn bad_requests_are_refused() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let mut deep = r#"{"http": {"path": {"prefix": "/"}}}"#.to_string();
    for _ in 0..40 {
        deep = format!(r#"{{"not": {deep}}}"#);
    }
    for request in [
        r#"{"limit": 0, "match": {"http": {"path": {"prefix": "/"}}}}"#.to_string(),
        r#"{"limit": 4000000000, "match": {"http": {"path": {"prefix": "/"}}}}"#.to_string(),
        r#"{"limit": 1}"#.to_string(),
        r#"{"limit": 1, "match": {}}"#.to_string(),
        r#"{"limit": 1, "match": {"destinationLabel": {"key": "", "value": "web"}}}"#.to_string(),
        format!(r#"{{"limit": 1, "match": {deep}}}"#),
    ] {
        let call = TapCall::start(tap, &request);
        let (events, status) = call.finish(Duration::from_secs(10));
        assert!(events.is_empty());
        assert!(status.starts_with("status 3 "), "{request}: {status}");
    }
    assert_eq!(metric(&proxy, "tap_installed"), 0);
    assert!(get(proxy.forward_addrs()[0], "/hello").contains("200"));
}

/// A tap client that never reads (`common::tap::never_reading_tap`): requests all
/// succeed at full speed (the events past what the workers' queues hold
/// are dropped and counted), and once the client goes away its tap leaves
/// the workers.
#[test]
fn a_client_that_never_reads_costs_requests_nothing() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[("LINKERD2_PROXY_CORES", "1")]);
    let tap = proxy.tap_addr().unwrap();
    let c = common::tap::never_reading_tap(tap, None);
    wait_installed(&proxy, 1);
    // Keep-alive requests, far past what the queue holds.
    const REQUESTS: u64 = 6000;
    let addr = proxy.forward_addrs()[0];
    let started = Instant::now();
    keep_alive_gets(addr, REQUESTS, "");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(metric(&proxy, "tap_installed"), 1);
    assert!(
        metric(&proxy, "tap_events_total") < 100,
        "the client's window holds a few events at most"
    );
    // The drops are counted as they happen, not when the tap ends (an
    // operator sees a tap falling behind while it does).
    assert!(
        eventually(Duration::from_secs(2), || metric(
            &proxy,
            "tap_events_dropped_total"
        ) > 0),
        "no drop counted while the tap is installed"
    );
    // The client leaves: the tap is removed and its drops counted.
    drop(c);
    wait_installed(&proxy, 0);
    let dropped = metric(&proxy, "tap_events_dropped_total");
    // Each request is three events (its start, its response's head, its
    // end), each at least 65 bytes here: all but what the queue held (512
    // KiB), the window took, what the call took from the queue to wait
    // for the window with (64 KiB and one worker's batch of 128 KiB at
    // most) and the batch the worker was gathering (128 KiB) are dropped.
    let held = (512 * 1024 + 100 + (64 + 2 * 129) * 1024) / 65;
    assert!(
        dropped >= 3 * REQUESTS - held,
        "the queue holds 512 KiB of events; the rest are dropped: {dropped}"
    );
}

/// The queues are bounded in bytes, not only in events: with header
/// fields extracted, requests with 30 KiB heads to a tap whose client
/// never reads fill a worker's 512 KiB in a few events, and the rest are
/// dropped and counted (not thousands of events of 30 KiB each held).
#[test]
fn large_heads_fill_a_stuck_tap_by_bytes() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[("LINKERD2_PROXY_CORES", "1")]);
    let headers = linkerd2_proxy_api::tap::observe_request::Extract {
        extract: Some(
            linkerd2_proxy_api::tap::observe_request::extract::Extract::Http(
                linkerd2_proxy_api::tap::observe_request::extract::Http {
                    extract: Some(
                        linkerd2_proxy_api::tap::observe_request::extract::http::Extract::Headers(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
    };
    let c = common::tap::never_reading_tap(proxy.tap_addr().unwrap(), Some(headers));
    wait_installed(&proxy, 1);
    const REQUESTS: u64 = 200;
    let big = "x".repeat(30 * 1024);
    let addr = proxy.forward_addrs()[0];
    keep_alive_gets(addr, REQUESTS, &format!("x-big: {big}\r\n"));
    drop(c);
    wait_installed(&proxy, 0);
    let dropped = metric(&proxy, "tap_events_dropped_total");
    // Each request's start carries its 30 KiB field: the queue (512 KiB),
    // what the call took to wait for the window with (64 KiB and one
    // batch of 128 KiB) and the batch being gathered hold 28 starts at
    // most; the others are dropped (and, with them, most of their
    // responses' events). (Counted in events, 4096 of them would have
    // held every one of the 600.)
    assert!(
        dropped >= REQUESTS - 28,
        "512 KiB of events are held at most; the rest are dropped: {dropped}"
    );
}

/// Ten taps at once each see every matching request; when their clients
/// leave, the workers forget them all.
#[test]
fn ten_concurrent_taps() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let calls: Vec<TapCall> = (0..10)
        .map(|_| {
            TapCall::start(
                tap,
                r#"{"limit": 2, "match": {"http": {"path": {"prefix": "/hello"}}}}"#,
            )
        })
        .collect();
    wait_installed(&proxy, 10);
    for _ in 0..2 {
        assert!(get(proxy.forward_addrs()[0], "/hello").contains("200"));
    }
    for call in &calls {
        let (events, status) = call.finish(Duration::from_secs(10));
        assert_eq!(status.trim(), "status 0");
        assert_eq!(events.len(), 6, "{events:#?}");
    }
    wait_installed(&proxy, 0);
}

/// HTTP/2 requests (curl with prior knowledge, to an HTTP/2 origin) are
/// tapped as HTTP/1 ones are: their bodies' bytes counted, a reset stream
/// reported as such, a gRPC status and the trailers (extracted) from the
/// trailers.
#[test]
fn http2_requests_are_tapped() {
    let origin = common::h2::origin(None);
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let call = TapCall::start(
        tap,
        r#"{"limit": 4, "match": {"all": {"matches": [{"http": {"path": {"prefix": "/"}}}, {"not": {"http": {"path": {"exact": "/status/404"}}}}]}}, "extract": {"http": {"headers": {}}}}"#,
    );
    wait_installed(&proxy, 1);
    let curl = |path: &str, extra: &[&str]| curl_h2(proxy.forward_addrs()[0], path, extra);
    assert_eq!(curl("/status/404", &[]), "404 2");
    assert_eq!(curl("/hello", &[]), "200 2");
    assert_eq!(curl("/bytes/50000", &[]), "200 2");
    curl("/reset", &[]);
    assert_eq!(curl("/echo", &["--data-binary", "0123456789"]), "200 2");
    let reqs = ByPath::finish(&call, 4);
    let of = |path: &str| reqs.get(path);
    let bytes = |path: &str| reqs.bytes(path);
    let hello = of("/hello");
    assert_eq!(hello[0]["method"]["registered"].as_str(), Some("GET"));
    assert_eq!(
        field(&hello[1], &["httpStatus"]).and_then(as_u64),
        Some(200)
    );
    assert_eq!(bytes("/hello"), Some(13), "hello from h2");
    assert_eq!(bytes("/bytes/50000"), Some(50_000));
    // The origin reset the stream (INTERNAL_ERROR, 2): so did the proxy.
    let reset = field(&of("/reset")[2], &["eos", "resetErrorCode"]).and_then(as_u64);
    assert_eq!(reset, Some(2), "{:?}", of("/reset"));
    assert!(of("/reset")[1].is_null(), "no response head");
    assert_eq!(bytes("/echo"), Some(10));
    let grpc = field(&of("/echo")[2], &["eos", "grpcStatusCode"]).and_then(as_u64);
    assert_eq!(grpc, Some(0), "{:?}", of("/echo"));
    // Its trailers, extracted.
    let trailers = field(&of("/echo")[2], &["trailers"]).expect("trailers");
    assert!(
        format!("{trailers:?}").contains("x-echo-bytes"),
        "{trailers:?}"
    );
    assert!(field(&of("/hello")[2], &["trailers"]).is_none());
}

/// As linkerd2-proxy's tap, which `linkerd viz tap` drives: an `all` of
/// nothing (what Linkerd's tap controller sends when no filter narrows
/// the tap) matches every request; a request's path is matched and
/// reported without its query; both ends' metadata always has `tls`
/// (here the application's loopback, and this proxy without an identity:
/// `disabled`); HTTP/2 requests' extracted fields start with their
/// pseudo-header fields, responses' with `:status`; the scheme is the
/// request's.
#[test]
fn taps_match_and_describe_requests_as_linkerd2_proxy() {
    let origin = common::h2::origin(None);
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let everything = TapCall::start(
        tap,
        r#"{"limit": 2, "match": {"all": {}}, "extract": {"http": {"headers": {}}}}"#,
    );
    let exact = TapCall::start(
        tap,
        r#"{"limit": 1, "match": {"any": {"matches": [{}, {"http": {"path": {"exact": "/hello"}}}]}}}"#,
    );
    wait_installed(&proxy, 2);
    let addr = proxy.forward_addrs()[0];
    assert_eq!(curl_h2(addr, "/hello?token=secret", &[]), "200 2");
    assert_eq!(curl_h2(addr, "/status/404?x=1", &[]), "404 2");
    let mut seen = Vec::new();
    for call in [&everything, &exact] {
        let (events, status) = call.finish(Duration::from_secs(10));
        assert_eq!(status.trim(), "status 0", "{events:#?}");
        assert!(!events.iter().any(|e| e.contains("secret")), "{events:#?}");
        for ev in events.iter().map(|l| parse(l)) {
            let tls = |meta: &str| field(&ev, &[meta, "labels", "tls"]).cloned();
            assert_eq!(tls("sourceMeta"), Some("loopback".into()), "{ev}");
            assert_eq!(tls("destinationMeta"), Some("disabled".into()), "{ev}");
        }
        seen.push(events);
    }
    assert_eq!(by_request(&seen[1]).len(), 1, "{:#?}", seen[1]);
    let reqs = by_request(&seen[0]);
    let paths: Vec<_> = reqs.iter().map(|r| r[0]["path"].clone()).collect();
    assert_eq!(paths, ["/hello", "/status/404"]);
    let hello = &reqs[0];
    assert_eq!(hello[0]["scheme"]["registered"].as_str(), Some("HTTP"));
    let names = |v: &Value| -> Vec<String> {
        v["headers"]["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["name"].as_str().map(str::to_string))
            .collect()
    };
    let request = names(&hello[0]);
    assert_eq!(
        request[..4],
        [":method", ":scheme", ":authority", ":path"],
        "{request:?}"
    );
    let response = names(&hello[1]);
    assert_eq!(
        response.first().map(String::as_str),
        Some(":status"),
        "{response:?}"
    );
}

/// `ringmesh tap` (the binary) prints one line per event as `linkerd viz
/// tap` does, only for requests its filters match, and ends after
/// `--limit` requests; `-o json` prints one JSON object per event; bad
/// arguments exit 64.
/// A tap server that accepts the connection and never answers: the
/// command gives up after its 5 s, with an error and exit code 69.
#[test]
fn the_tap_command_gives_up_on_a_silent_server() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let hold = thread::spawn(move || silent.accept().map(|(s, _)| s));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(["tap", "--addr", &addr])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringmesh tap still waiting after 15 s");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("did not answer"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(hold.join().unwrap());
}

#[test]
fn the_tap_command_prints_events() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap().to_string();
    let addr = proxy.forward_addrs()[0];
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
            .args(["tap", "--addr", &tap, "--path", "/hello", "--limit", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_installed(&proxy, 1);
        assert!(get(addr, "/status/404").contains("404"));
        assert!(get(addr, "/hello").contains("200"));
        assert!(get(addr, "/hello").contains("200"));
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
        wait_installed(&proxy, 0);
        out
    };
    let out = run(&[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    let port = origin.addr.port();
    // Each request's lines in order (two requests' lines may interleave
    // when they ran on different workers).
    let id_of = |l: &str| l.split(' ').nth(1).unwrap_or("").to_string();
    let mut ids: Vec<String> = lines.iter().map(|l| id_of(l)).collect();
    ids.dedup();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "{out}");
    for id in &ids {
        let own: Vec<&str> = lines.iter().copied().filter(|l| id_of(l) == *id).collect();
        assert_eq!(own.len(), 3, "{out}");
        assert!(own[0].starts_with("req id="), "{out}");
        assert!(own[0].contains(" proxy=out "), "{out}");
        assert!(own[0].contains(&format!(" dst=127.0.0.1:{port} ")), "{out}");
        assert!(
            own[0].ends_with(":method=GET :authority=web.test :path=/hello"),
            "{out}"
        );
        assert!(own[1].starts_with("rsp id="), "{out}");
        assert!(own[1].contains(" :status=200 latency="), "{out}");
        assert!(own[2].starts_with("end id="), "{out}");
        assert!(own[2].contains(" duration="), "{out}");
        assert!(own[2].ends_with(" response-length=15B"), "{out}");
    }
    let out = run(&["-o", "json"]);
    let events: Vec<Value> = out.lines().map(parse).collect();
    assert_eq!(events.len(), 6, "{out}");
    let first = &events[0];
    let own: Vec<&Value> = events.iter().filter(|e| e["id"] == first["id"]).collect();
    assert_eq!(own.len(), 3, "{out}");
    assert_eq!(own[0]["event"], "requestInit");
    assert_eq!(own[0]["path"], "/hello");
    assert_eq!(own[0]["proxyDirection"], "outbound");
    assert_eq!(own[1]["status"], 200);
    assert_eq!(own[2]["event"], "responseEnd");

    let bad = Command::new(env!("CARGO_BIN_EXE_ringmesh"))
        .args(["tap", "--limit", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
}

/// A throwaway CA's certificate and leaves for `names`, as PEM files in a
/// directory of the test's own: `ca.pem`, `<i>.pem`, `<i>.key`.
fn pki(tag: &str, names: &[&str]) -> TempDir {
    let dir = TempDir::new(&format!("tap-{tag}"));
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringmesh tap test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    for (i, name) in names.iter().enumerate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        // A subject of its own (OpenSSL, in grpcio, takes a leaf with its
        // issuer's subject for self-signed).
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, *name);
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{i}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{i}.key")), key.serialize_pem()).unwrap();
    }
    dir
}

/// A tap of one request is installed, sees it (three events) and ends
/// cleanly: the tap port serves.
fn a_tap_is_served(proxy: &Proxy, tap: std::net::SocketAddr) {
    let call = TapCall::start(
        tap,
        r#"{"limit": 1, "match": {"http": {"path": {"prefix": "/"}}}}"#,
    );
    wait_installed(proxy, 1);
    assert!(get(proxy.forward_addrs()[0], "/hello").contains("200"));
    let (events, status) = call.finish(Duration::from_secs(10));
    assert_eq!(status.trim(), "status 0");
    assert_eq!(events.len(), 3, "{events:#?}");
}

/// The tap port holds at most 64 client connections: a newcomer past them
/// closes the one idle longest (no call open), so connections that only
/// sit there (unfinished handshakes, clients that open no call) cannot lock
/// the tap client out. Such a connection is closed after 10 s anyway.
#[test]
fn idle_and_excess_tap_connections_are_closed() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    let mut silent: Vec<std::net::TcpStream> = (0..63).map(|_| connect(tap)).collect();
    // One finishes the HTTP/2 handshake and opens no call.
    let mut idle = connect(tap);
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let closed_within = |s: &mut std::net::TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let until = Instant::now() + limit;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                // (The server's SETTINGS, and its ack.)
                Ok(_) if Instant::now() < until => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                _ => return false,
            }
        }
    };
    thread::sleep(Duration::from_millis(300));
    // With all 64 held, a tap is served: the connection idle longest made
    // room for it.
    let started = Instant::now();
    a_tap_is_served(&proxy, tap);
    assert!(
        closed_within(&mut silent[0], Duration::from_secs(2)),
        "the connection idle longest was not closed for room"
    );
    // The proxy serves on meanwhile.
    assert!(get(proxy.forward_addrs()[0], "/hello").contains("200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(15)),
        "an idle connection is closed"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "not before its time"
    );
    for s in &mut silent[1..] {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "a silent connection is closed"
        );
    }
    // The room is back: a tap is served.
    a_tap_is_served(&proxy, tap);
}

/// The tap port reads its clients through the HTTP/2 attack defences, as
/// the data path does: a flood (PING, SETTINGS, CONTINUATION, frames that
/// do no work, WINDOW_UPDATEs for nothing) gets GOAWAY `ENHANCE_YOUR_CALM` rather than the control
/// core's time; taps are served after.
#[test]
fn floods_on_the_tap_port_are_cut_off() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[]);
    let tap = proxy.tap_addr().unwrap();
    for attack in [
        "ping-flood",
        "settings-flood",
        "continuation-flood",
        "idle-priority",
        "window-update-flood",
    ] {
        assert_eq!(
            common::h2::attack(attack, &tap.to_string()),
            "goaway 11",
            "{attack}"
        );
    }
    a_tap_is_served(&proxy, tap);
}

/// A request whose upstream refuses the connection is tapped with the
/// proxy's own answer: its start, a 502 response, its end.
#[test]
fn a_failed_upstream_is_tapped_with_the_proxys_answer() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let proxy = proxy(dead, &[]);
    let call = TapCall::start(
        proxy.tap_addr().unwrap(),
        r#"{"limit": 1, "match": {"http": {"path": {"prefix": "/"}}}}"#,
    );
    wait_installed(&proxy, 1);
    let url = format!("http://{}/hello", proxy.forward_addrs()[0]);
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            &url,
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, size) = answer.split_once(' ').unwrap();
    assert_eq!(code, "502", "{answer}");
    let size: u64 = size.parse().unwrap();
    assert!(size > 0, "the answer says why: {answer}");
    let (events, status) = call.finish(Duration::from_secs(10));
    assert_eq!(status.trim(), "status 0");
    let reqs = by_request(&events);
    assert_eq!(reqs.len(), 1, "{events:#?}");
    let [init, rsp, end] = &reqs[0];
    assert_eq!(init["path"].as_str(), Some("/hello"));
    assert_eq!(
        field(rsp, &["httpStatus"]).and_then(as_u64),
        Some(502),
        "{events:#?}"
    );
    // Its body is the bytes the client got (it was reported as none).
    assert_eq!(
        field(end, &["responseBytes"]).and_then(as_u64),
        Some(size),
        "{events:#?}"
    );
}

/// Meshed traffic is tapped on both proxies with the identities mutual
/// TLS proved: outbound, the endpoint's (`destination_meta`: `tls`,
/// `server_id`); inbound, the client's (`source_meta`: `tls`,
/// `client_id`), as `INBOUND` to the local application.
#[test]
fn meshed_requests_are_tapped_with_their_identities() {
    const A: &str = "a.ns.serviceaccount.identity.linkerd.cluster.local";
    const B: &str = "b.ns.serviceaccount.identity.linkerd.cluster.local";
    let dir = pki("meshed", &[A, B]);
    let path = |f: String| dir.join(f).to_str().unwrap().to_string();
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let origin = http::origin("app");
    let (cert_a, key_a, cert_b, key_b) = (
        path("0.pem".into()),
        path("0.key".into()),
        path("1.pem".into()),
        path("1.key".into()),
    );
    let common = [
        ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", ca_pem.as_str()),
        ("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "127.0.0.1:0"),
        ("RINGMESH_TAP_ALLOW_LOOPBACK", "true"),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
    ];
    let mut vars_b = common.to_vec();
    vars_b.extend([
        ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", B),
        ("RINGMESH_IDENTITY_CERT", &cert_b),
        ("RINGMESH_IDENTITY_KEY", &key_b),
        ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
    ]);
    let b = start_proxy(IoDriver::Uring, &vars_b);
    // A reaches the application through B's inbound port (Linkerd's
    // opaque transport), proving A's identity and expecting B's.
    let extra = format!(
        "identity = \"{B}\"\nopaque_transport_port = {}\n",
        b.inbound_addr().unwrap().port()
    );
    let file = service_file(&dir, "web.test:80", &[origin.addr], &extra);
    let mut vars_a = common.to_vec();
    vars_a.extend([
        ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", A),
        ("RINGMESH_IDENTITY_CERT", &cert_a),
        ("RINGMESH_IDENTITY_KEY", &key_a),
        ("RINGMESH_DISCOVERY_STATIC", &file),
        ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
    ]);
    let a = start_proxy(IoDriver::Uring, &vars_a);
    let request = r#"{"limit": 1, "match": {"http": {"path": {"exact": "/hello"}}}}"#;
    let (call_a, call_b) = (
        TapCall::start(a.tap_addr().unwrap(), request),
        TapCall::start(b.tap_addr().unwrap(), request),
    );
    wait_installed(&a, 1);
    wait_installed(&b, 1);
    let fwd = a.forward_addrs()[0];
    assert!(
        eventually(Duration::from_secs(5), || get(fwd, "/hello")
            .contains("200")),
        "the meshed request is answered"
    );
    let first = |call: &TapCall| {
        let (events, status) = call.finish(Duration::from_secs(10));
        assert_eq!(status.trim(), "status 0", "{events:#?}");
        parse(&events[0])
    };
    let (ev_a, ev_b) = (first(&call_a), first(&call_b));
    let label = |ev: &Value, meta: &str, k: &str| {
        field(ev, &[meta, "labels", k])
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    assert_eq!(ev_a["proxyDirection"], "OUTBOUND", "{ev_a}");
    assert_eq!(
        label(&ev_a, "destinationMeta", "tls").as_deref(),
        Some("true")
    );
    assert_eq!(
        label(&ev_a, "destinationMeta", "server_id").as_deref(),
        Some(B)
    );
    assert_eq!(ev_b["proxyDirection"], "INBOUND", "{ev_b}");
    assert_eq!(label(&ev_b, "sourceMeta", "tls").as_deref(), Some("true"));
    assert_eq!(label(&ev_b, "sourceMeta", "client_id").as_deref(), Some(A));
    let dst_port = field(&ev_b, &["destination", "port"]).and_then(as_u64);
    assert_eq!(dst_port, Some(u64::from(origin.addr.port())), "{ev_b}");
}

/// Without the loopback setting, tap is served over mutual TLS only, to a
/// client proving `LINKERD2_PROXY_TAP_SVC_NAME`'s identity: another
/// identity, or a plaintext client, is refused and sees nothing.
#[test]
fn only_the_tap_identity_may_tap() {
    const PROXY: &str = "web.ns.serviceaccount.identity.linkerd.cluster.local";
    const TAP: &str = "tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local";
    const OTHER: &str = "other.ns.serviceaccount.identity.linkerd.cluster.local";
    let dir = pki("mtls", &[PROXY, TAP, OTHER]);
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let origin = http::origin("app");
    let forward = format!("127.0.0.1:0={}", origin.addr);
    let (cert, key) = (path("0.pem"), path("0.key"));
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", &forward),
            ("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_TAP_SVC_NAME", TAP),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", PROXY),
            ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", &ca_pem),
            ("RINGMESH_IDENTITY_CERT", &cert),
            ("RINGMESH_IDENTITY_KEY", &key),
        ],
    );
    let tap = proxy.tap_addr().expect("the tap server runs");
    let tls = |i: usize| {
        vec![
            "--ca".to_string(),
            path("ca.pem"),
            "--cert".into(),
            path(&format!("{i}.pem")),
            "--key".into(),
            path(&format!("{i}.key")),
            "--server-name".into(),
            PROXY.into(),
            "--timeout".into(),
            "10".into(),
        ]
    };
    let request = r#"{"limit": 1, "match": {"http": {"path": {"exact": "/hello"}}}}"#;
    // Refused: another identity, and plaintext (from loopback, without
    // RINGMESH_TAP_ALLOW_LOOPBACK).
    for extra in [tls(2), vec!["--timeout".to_string(), "5".into()]] {
        let call = TapCall::start_with(tap, request, &extra);
        let (events, status) = call.finish(Duration::from_secs(20));
        assert!(events.is_empty(), "{events:?}");
        assert!(status.starts_with("status 14 "), "{extra:?}: {status}");
    }
    assert_eq!(metric(&proxy, "tap_installed"), 0);
    // The tap service's identity: served.
    let call = TapCall::start_with(tap, request, &tls(1));
    wait_installed(&proxy, 1);
    assert!(get(proxy.forward_addrs()[0], "/hello").contains("200"));
    let (events, status) = call.finish(Duration::from_secs(10));
    assert_eq!(status.trim(), "status 0");
    assert_eq!(events.len(), 3, "{events:#?}");
}

/// An HTTP/2 client that resets its stream (CANCEL) mid-body, while the
/// upstream is silent, is tapped as its cancel (`resetErrorCode` 8), both
/// when the upstream is HTTP/1 (a `protocol = "http1"` service) and when
/// it is HTTP/2. (Before, the HTTP/1 case was reported as the proxy's
/// own INTERNAL_ERROR.)
#[test]
fn a_client_cancel_mid_body_is_tapped_as_a_cancel() {
    use common::raw_h2::{frame, raw_h2_origin, read_frame};
    // Heads and the first 3 bytes of 100, then nothing.
    let h1_origin = Backend::answering(&b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc"[..]);
    let h2_origin = raw_h2_origin(|id| {
        let mut f = frame(1, 4, id, b"\x88");
        f.extend(frame(0, 0, id, b"abc"));
        f
    });
    let cases = [
        ("h1", h1_origin.addr, "protocol = \"http1\"\n"),
        ("h2", h2_origin.addr, ""),
    ];
    for (tag, addr, extra) in cases {
        let dir = TempDir::new(&format!("tap-client-cancel-{tag}"));
        let (proxy, call) = service_with_tap(&dir, addr, extra);
        let mut c = TcpStream::connect(proxy.forward_addrs()[0]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        // GET http://web.test/slow, END_STREAM.
        out.extend(frame(1, 5, 1, b"\x82\x86\x04\x05/slow\x01\x08web.test"));
        c.write_all(&out).unwrap();
        // Until the body's first bytes arrive.
        loop {
            let f = read_frame(&mut c).unwrap_or_else(|| panic!("{tag}: no DATA"));
            if f.0 == 0 && f.2 == 1 {
                assert_eq!(f.3, b"abc", "{tag}");
                break;
            }
        }
        c.write_all(&frame(3, 0, 1, &8u32.to_be_bytes())).unwrap();
        let (events, status) = call.finish(Duration::from_secs(10));
        assert_eq!(status.trim(), "status 0", "{tag}");
        let reqs = by_request(&events);
        assert_eq!(reqs.len(), 1, "{tag}: {events:#?}");
        let end = &reqs[0][2];
        let code = field(end, &["eos", "resetErrorCode"]).and_then(as_u64);
        assert_eq!(code, Some(8), "{tag}: {end:?}");
        assert_eq!(
            field(end, &["responseBytes"]).and_then(as_u64),
            Some(3),
            "{tag}"
        );
        drop(c);
        proxy.shutdown();
        proxy.wait();
    }
}

/// A tap open while the proxy stops ends with `UNAVAILABLE` "the proxy is
/// shutting down", after the events of requests already served (it was
/// cut off: the client saw a closed socket and no status).
#[test]
fn a_tap_ends_with_a_status_when_the_proxy_stops() {
    let origin = http::origin("app");
    let proxy = proxy(origin.addr, &[("LINKERD2_PROXY_CORES", "1")]);
    let call = TapCall::start(
        proxy.tap_addr().unwrap(),
        r#"{"limit": 100, "match": {"http": {"path": {"prefix": "/"}}}}"#,
    );
    wait_installed(&proxy, 1);
    assert!(get(proxy.forward_addrs()[0], "/hello").contains("200"));
    proxy.shutdown();
    proxy.wait();
    let (events, status) = call.finish(Duration::from_secs(10));
    assert_eq!(
        status.trim(),
        "status 14 the proxy is shutting down",
        "{events:#?}"
    );
    assert_eq!(by_request(&events).len(), 1, "{events:#?}");
}
