//! The HTTP/1.1 proxy with real clients (curl, raw sockets) and a real
//! origin server, on both io drivers.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::http::origin;
use common::*;
use ringmesh_engine::{IoDriver, Proxy};

/// A proxy with one forward to `target` (a service name or address).
fn forward_proxy(driver: IoDriver, target: &str, extra: &[(&str, &str)]) -> (Proxy, SocketAddr) {
    let fwd = format!("127.0.0.1:0={target}");
    let mut vars = vec![("RINGMESH_TCP_FORWARD", fwd.as_str())];
    vars.extend_from_slice(extra);
    let proxy = start_proxy(driver, &vars);
    let addr = proxy.forward_addrs()[0];
    (proxy, addr)
}

/// A static discovery file of `body`, `d.toml` in `dir`.
fn discovery_file(dir: &TempDir, body: &str) -> std::path::PathBuf {
    let file = dir.join("d.toml");
    std::fs::write(&file, body).unwrap();
    file
}

/// Reads one response: (head, body). Handles Content-Length, chunked (raw
/// bytes kept) and close-delimited bodies.
fn read_response(r: &mut BufReader<TcpStream>, head_request: bool) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "connection closed before a full response head: {head:?}"
        );
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if head_request || head.starts_with("HTTP/1.1 1") || head.starts_with("HTTP/1.1 204") {
        return (head, body);
    }
    if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
    {
        body.resize(cl, 0);
        r.read_exact(&mut body).unwrap();
    } else if lower.contains("transfer-encoding: chunked") {
        // Keep the raw chunked bytes: the test checks them verbatim.
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).unwrap();
            body.extend_from_slice(&line);
            if line.starts_with(b"0") {
                loop {
                    let mut t = Vec::new();
                    r.read_until(b'\n', &mut t).unwrap();
                    body.extend_from_slice(&t);
                    if t == b"\r\n" {
                        return (head, body);
                    }
                }
            }
            let size = usize::from_str_radix(
                std::str::from_utf8(&line)
                    .unwrap()
                    .trim()
                    .split(';')
                    .next()
                    .unwrap(),
                16,
            )
            .unwrap();
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    (head, body)
}

fn request(addr: SocketAddr, raw: &[u8]) -> (String, Vec<u8>) {
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    w.write_all(raw).unwrap();
    read_response(&mut BufReader::new(c), raw.starts_with(b"HEAD"))
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn per_request_balancing(driver: IoDriver) {
    let (a, b) = (origin("a"), origin("b"));
    let dir = TempDir::new(&format!("http-bal-{}", driver_name(driver)));
    let file = discovery_file(
        &dir,
        &format!(
            "[[service]]\nname = \"web.test:80\"\nendpoints = [\"{}\"]\n",
            a.addr
        ),
    );
    let (proxy, addr) = forward_proxy(
        driver,
        "web.test:80",
        &[
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL", "50ms"),
        ],
    );
    // One client connection, many requests: each is routed and balanced on
    // its own, so when the endpoint set changes, the next request on the
    // same connection goes to the new endpoint.
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut ask = || {
        w.write_all(b"GET /hello HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .unwrap();
        let (head, body) = read_response(&mut r, false);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        String::from_utf8(body).unwrap()
    };
    for _ in 0..5 {
        assert!(ask().contains('a'));
    }
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"web.test:80\"\nendpoints = [\"{}\", \"{}\"]\nweights = [1, 1000]\n",
            a.addr, b.addr
        ),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || ask().contains('b')),
        "the same keep-alive connection reached the new endpoint"
    );
    // curl with several URLs on one connection works too.
    let url = format!("http://{addr}/hello");
    let out = curl(&[&url, &url, &url]);
    assert_eq!(out.lines().count(), 3, "{out}");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    per_request_balancing_on_one_connection,
    super::per_request_balancing
);

fn header_case_and_hop_by_hop(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(driver, &origin.addr.to_string(), &[]);
    let (head, body) = request(
        addr,
        b"GET /echo-head HTTP/1.1\r\nHost: o.test\r\nX-MiXeD-Case: Value\r\nConnection: keep-alive, X-Hop\r\n\
          X-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("X-Server-MiXeD: yes"),
        "response header case lost: {head}"
    );
    let seen = String::from_utf8(body).unwrap();
    assert!(
        seen.contains("X-MiXeD-Case: Value\r\n"),
        "request header case lost: {seen}"
    );
    assert!(seen.contains("Host: o.test\r\n"), "{seen}");
    for hop in [
        "X-Hop",
        "Keep-Alive",
        "Proxy-Connection",
        "TE:",
        "Connection",
    ] {
        assert!(!seen.contains(hop), "{hop} forwarded: {seen}");
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    header_case_kept_and_hop_by_hop_removed,
    super::header_case_and_hop_by_hop
);

/// An h2c upgrade is not forwarded (the request goes on as HTTP/1.1, as
/// linkerd2-proxy forwards it), and an HTTP/1.0 client hears HTTP/1.0, in
/// answers relayed and in the proxy's own, and may not CONNECT.
fn h2c_upgrade_and_http10(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(driver, &origin.addr.to_string(), &[]);
    for raw in [
        &b"GET /echo-head HTTP/1.1\r\nHost: o.test\r\nUpgrade: h2c\r\n\
           HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"
            [..],
        // `HTTP2-Settings` is hop-by-hop even when `Connection` leaves it out.
        b"GET /echo-head HTTP/1.1\r\nHost: o.test\r\nUpgrade: H2C\r\nHTTP2-Settings: AAMA\r\n\
           Connection: upgrade\r\n\r\n",
    ] {
        let (head, body) = request(addr, raw);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let seen = String::from_utf8(body).unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("get /echo-head http/1.1\r\n"), "{seen}");
        for hop in ["upgrade", "http2-settings", "connection"] {
            assert!(!seen.contains(hop), "{hop} forwarded: {seen}");
        }
    }
    // A WebSocket upgrade still is forwarded.
    let (_, body) = request(
        addr,
        b"GET /echo-head HTTP/1.1\r\nHost: o.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    );
    let seen = String::from_utf8(body).unwrap().to_ascii_lowercase();
    assert!(seen.contains("upgrade: websocket"), "{seen}");

    let (h, b) = request(addr, b"GET /hello HTTP/1.0\r\nHost: o\r\n\r\n");
    assert!(h.starts_with("HTTP/1.0 200"), "{h}");
    assert_eq!(b, b"hello from o\n");
    // The origin's `100 Continue` is not passed to an HTTP/1.0 client
    // (RFC 9110 §15.2): its first head is the answer.
    let (h, b) = request(
        addr,
        b"POST /hello HTTP/1.0\r\nHost: o\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(h.starts_with("HTTP/1.0 200"), "{h}");
    assert_eq!(b, b"hello from o\n");
    for raw in [
        &b"CONNECT o.test:80 HTTP/1.0\r\nHost: o.test\r\n\r\n"[..],
        b"CONNECT o.test HTTP/1.0\r\nHost: o.test\r\n\r\n",
        b"GET /a\x01b HTTP/1.0\r\nHost: o\r\n\r\n",
    ] {
        let (h, _) = request(addr, raw);
        assert!(
            h.starts_with("HTTP/1.0 400"),
            "{:?} → {h}",
            String::from_utf8_lossy(raw)
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    h2c_upgrades_are_dropped_and_http10_hears_http10,
    super::h2c_upgrade_and_http10
);

fn chunked_trailers_pipelining_head(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(driver, &origin.addr.to_string(), &[]);
    // Chunk extensions and trailers pass through verbatim.
    let (head, body) = request(addr, b"GET /chunked HTTP/1.1\r\nHost: o\r\n\r\n");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(
        body,
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    );

    // Three pipelined requests in one write, answered in order; the HEAD
    // response has no body although it announces a length.
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: o\r\n\r\nHEAD /x HTTP/1.1\r\nHost: o\r\n\r\nGET /hello HTTP/1.1\r\nHost: o\r\n\r\n",
    )
    .unwrap();
    assert!(read_response(&mut r, false).0.starts_with("HTTP/1.1 201"));
    let (h, b) = read_response(&mut r, true);
    assert!(
        h.starts_with("HTTP/1.1 200") && h.contains("Content-Length: 1234") && b.is_empty(),
        "{h}"
    );
    assert_eq!(read_response(&mut r, false).1, b"hello from o\n");

    // HTTP/1.0 without keep-alive: answered, then closed.
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET /hello HTTP/1.0\r\n\r\n").unwrap();
    let (h, b) = read_response(&mut r, false);
    // (In HTTP/1.0, as linkerd2-proxy answers an HTTP/1.0 client.)
    assert!(h.starts_with("HTTP/1.0 200"), "{h}");
    assert_eq!(b, b"hello from o\n");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // A close-delimited response reaches the client whole, then EOF.
    let (h, b) = request(addr, b"GET /close-delimited HTTP/1.1\r\nHost: o\r\n\r\n");
    assert!(h.to_ascii_lowercase().contains("connection: close"), "{h}");
    assert_eq!(b, b"until the end");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    chunked_trailers_pipelining_head_http10,
    super::chunked_trailers_pipelining_head
);

fn bad_requests(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(driver, &origin.addr.to_string(), &[]);
    let cases: [(&[u8], &str); 7] = [
        (b"GET /hello HTTP/1.1\nHost: o\n\n", "400"),
        (b"GET /hello HTTP/1.1\r\nHost: o\nX-A: b\r\n\r\n", "400"),
        (
            b"POST /upload HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nHost: o\r\nBad Header\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        (
            b"POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "400",
        ),
    ];
    for (raw, status) in cases {
        let (h, _) = request(addr, raw);
        assert!(
            h.starts_with(&format!("HTTP/1.1 {status}")),
            "{:?} → {h}",
            String::from_utf8_lossy(raw)
        );
    }
    // A head larger than 64 KiB → 431.
    let mut big = b"GET / HTTP/1.1\r\nHost: o\r\n".to_vec();
    for i in 0..2000 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(40)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let (h, _) = request(addr, &big);
    assert!(h.starts_with("HTTP/1.1 431"), "{h}");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(bad_requests_get_400_and_431, super::bad_requests);

/// The `Content-Length` lines of a head, lowercased and trimmed.
fn content_lengths(head: &str) -> Vec<String> {
    head.lines()
        .map(|l| l.to_ascii_lowercase())
        .filter(|l| l.starts_with("content-length:"))
        .collect()
}

/// A raw backend that hands every request it reads (head and body) to the
/// test and answers `/dup` with a doubled `Content-Length` (a list and a
/// repeat) and `/conflict` with two different ones.
fn capturing_backend() -> (Backend, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let len: usize = content_lengths(&head)
                .first()
                .map(|l| {
                    l["content-length:".len()..]
                        .split(',')
                        .next()
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap()
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let answer: &[u8] = if head.starts_with("POST /conflict") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX-B: 1\r\ncontent-length: 5\r\n\r\nhello"
            };
            let _ = tx.send((head, body));
            if w.write_all(answer).is_err() {
                return;
            }
        }
    });
    (backend, rx)
}

fn duplicate_content_length(driver: IoDriver) {
    let (backend, seen) = capturing_backend();
    let (proxy, addr) = forward_proxy(driver, &backend.addr.to_string(), &[]);
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // Both forms on one keep-alive connection, each forwarded with one
    // normalised value both ways.
    for req in [
        &b"POST /dup HTTP/1.1\r\nHost: o\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        b"POST /dup HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nX-A: 1\r\ncontent-length: 5\r\n\r\nhello",
    ] {
        w.write_all(req).unwrap();
        let (head, body) = read_response(&mut r, false);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(content_lengths(&head), ["content-length: 5"], "{head}");
        assert_eq!(body, b"hello");
        let (up_head, up_body) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(content_lengths(&up_head), ["content-length: 5"], "{up_head}");
        assert_eq!(up_body, b"hello");
    }
    // Differing values stay errors: 400 for a request (never forwarded),
    // 502 for a response.
    let (h, _) = request(
        addr,
        b"POST /dup HTTP/1.1\r\nHost: o\r\nContent-Length: 5, 6\r\n\r\nhello",
    );
    assert!(h.starts_with("HTTP/1.1 400"), "{h}");
    let (h, _) = request(
        addr,
        b"POST /conflict HTTP/1.1\r\nHost: o\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(h.starts_with("HTTP/1.1 502"), "{h}");
    let (up_head, _) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        up_head.starts_with("POST /conflict"),
        "the 400 was forwarded: {up_head}"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    duplicate_content_length_is_forwarded_once,
    super::duplicate_content_length
);

fn upstream_failures(driver: IoDriver) {
    // Endpoint refuses → 502; empty endpoint set → 503.
    let (_held, dead) = refusing_port();
    let dir = TempDir::new(&format!("http-fail-{}", driver_name(driver)));
    let file = discovery_file(
        &dir,
        &format!(
            "[[service]]\nname = \"dead.test:80\"\nendpoints = [\"{dead}\"]\n\
             [[service]]\nname = \"empty.test:80\"\nendpoints = []\n"
        ),
    );
    let proxy = start_proxy(
        driver,
        &[
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=dead.test:80,127.0.0.1:0=empty.test:80",
            ),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("LINKERD2_PROXY_OUTBOUND_HTTP_FAILFAST_TIMEOUT", "100ms"),
        ],
    );
    let (h, b) = request(
        proxy.forward_addrs()[0],
        b"GET / HTTP/1.1\r\nHost: dead.test\r\n\r\n",
    );
    assert!(h.starts_with("HTTP/1.1 502"), "{h}");
    assert!(
        String::from_utf8_lossy(&b).contains("refused"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (h, b) = request(
        proxy.forward_addrs()[1],
        b"GET / HTTP/1.1\r\nHost: empty.test\r\n\r\n",
    );
    assert!(h.starts_with("HTTP/1.1 503"), "{h}");
    assert!(
        h.contains("l5d-proxy-error: no endpoints available for empty.test:80"),
        "{h}"
    );
    assert!(String::from_utf8_lossy(&b).contains("no endpoints"));
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(upstream_failures_get_502_and_503, super::upstream_failures);

/// Interim (1xx) responses: up to 64 before the final one are relayed
/// (HTTP/1 clients see them; HTTP/2 ones get the final response); a
/// backend that sends them without end gets its request a 502 saying why at
/// once, instead of keeping the worker busy for as long as it goes on.
fn interim_responses_are_bounded(driver: IoDriver) {
    let backend = Backend::start(|mut s| {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        if head.contains(" /flood ") {
            // For up to 20 s, or until the proxy closes.
            let until = std::time::Instant::now() + Duration::from_secs(20);
            let many = interim.repeat(64);
            while std::time::Instant::now() < until && s.write_all(&many).is_ok() {}
        } else {
            for _ in 0..64 {
                let _ = s.write_all(interim);
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let (proxy, addr) = forward_proxy(driver, &backend.addr.to_string(), &[]);
    let url = |path: &str| format!("http://{addr}{path}");
    let h1 = |path: &str| curl(&["-w", " %{http_code}", &url(path)]);
    // (An HTTP/2 client whose request goes to the backend as HTTP/1.1.)
    let h2_get = |path: &str| {
        curl(&[
            "--http2-prior-knowledge",
            "-H",
            "l5d-orig-proto: HTTP/1.1",
            "-w",
            " %{http_code}",
            &url(path),
        ])
    };
    assert_eq!(h1("/64"), "ok 200");
    assert_eq!(h2_get("/64"), "ok 200");
    for (client, h2) in [("HTTP/1.1", false), ("h2", true)] {
        let started = std::time::Instant::now();
        let answer = if h2 { h2_get("/flood") } else { h1("/flood") };
        assert!(answer.ends_with(" 502"), "{client}: {answer}");
        assert!(
            answer.contains("more than 64 interim (1xx) responses"),
            "{client}: {answer}"
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "{client}: answered in {took:?}"
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    interim_responses_are_bounded,
    super::interim_responses_are_bounded
);

/// Fail-fast: a request for a service with no endpoint waits for one (up to
/// the fail-fast timeout) and is served if one appears; once the timeout
/// ran out, requests get 503 at once until an endpoint returns.
fn fail_fast(driver: IoDriver) {
    let o = origin("o");
    let dir = TempDir::new(&format!("http-failfast-{}", driver_name(driver)));
    let empty = "[[service]]\nname = \"later.test:80\"\nendpoints = []\n";
    let file = discovery_file(&dir, empty);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=later.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL", "50ms"),
            ("LINKERD2_PROXY_OUTBOUND_HTTP_FAILFAST_TIMEOUT", "2s"),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let get = || request(addr, b"GET /hello HTTP/1.1\r\nHost: later.test\r\n\r\n");
    // An endpoint appears while the request waits: it is served.
    let with_endpoint = format!(
        "[[service]]\nname = \"later.test:80\"\nendpoints = [\"{}\"]\n",
        o.addr
    );
    let writer = {
        let (file, body) = (file.clone(), with_endpoint.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            std::fs::write(&file, body).unwrap();
        })
    };
    let (h, b) = get();
    writer.join().unwrap();
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(String::from_utf8_lossy(&b).contains("hello from o"));
    // No endpoint for the whole timeout: 503 after ~2 s, then at once.
    std::fs::write(&file, empty).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let (h, _) = get();
    assert!(h.starts_with("HTTP/1.1 503"), "{h}");
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    let t = std::time::Instant::now();
    let (h, _) = get();
    assert!(h.starts_with("HTTP/1.1 503"), "{h}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "failing fast: {:?}",
        t.elapsed()
    );
    // An endpoint returns: served again.
    std::fs::write(&file, with_endpoint).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || get()
            .0
            .starts_with("HTTP/1.1 200")),
        "served once an endpoint returns"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(fail_fast_waits_then_fails_fast, super::fail_fast);

fn explicit_proxy(driver: IoDriver) {
    let (a, b) = (origin("a"), origin("b"));
    let dir = TempDir::new(&format!("http-explicit-{}", driver_name(driver)));
    let file = discovery_file(
        &dir,
        &format!(
            "[[service]]\nname = \"web.test:8080\"\nendpoints = [\"{}\"]\n",
            a.addr
        ),
    );
    let proxy = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
        ],
    );
    let out = proxy.outbound_addr().unwrap();
    let px = format!("http://{out}");
    // By the service name in the absolute-form URI (curl -x).
    assert_eq!(
        curl(&["-x", &px, "http://web.test:8080/hello"]),
        "hello from a\n"
    );
    // By a literal address not in discovery.
    assert_eq!(
        curl(&["-x", &px, &format!("http://{}/hello", b.addr)]),
        "hello from b\n"
    );
    // A name nothing resolves: 503; the proxy itself: 502 (loop).
    let code = |url: &str| curl(&["-x", &px, "-o", "/dev/null", "-w", "%{http_code}", url]);
    assert_eq!(code("http://nothing.invalid:80/"), "503");
    assert_eq!(code(&format!("http://{out}/")), "502");
    // CONNECT: the proxy opens the tunnel itself.
    let c = connect(out);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    write!(w, "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n", b.addr, b.addr).unwrap();
    let (h, _) = read_response(&mut r, true);
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    w.write_all(b"GET /hello HTTP/1.1\r\nHost: b\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).1, b"hello from b\n");
    // (An open tunnel would hold the drain for the grace period.)
    drop((w, r));
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(explicit_proxy_routes_by_authority, super::explicit_proxy);

fn upgrade(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(driver, &origin.addr.to_string(), &[]);
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(
        b"GET /ws HTTP/1.1\r\nHost: o\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let (h, _) = read_response(&mut r, true);
    assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    assert!(h.to_ascii_lowercase().contains("upgrade: websocket"), "{h}");
    // After the 101 the connection is a raw tunnel both ways.
    for msg in [&b"\x81\x05hello"[..], &[0u8; 3000][..]] {
        w.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        r.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    proxy.shutdown();
    drop(w);
    drop(r);
    proxy.wait();
}
both_drivers!(websocket_upgrade_becomes_a_tunnel, super::upgrade);

fn large_bodies(driver: IoDriver) {
    const N: usize = 64 << 20;
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(driver, &origin.addr.to_string(), &[]);
    let dir = TempDir::new(&format!("bodies-{}", driver_name(driver)));
    let file = dir.join("up.bin");
    let mut data = vec![0u8; N];
    Pattern::new(3).fill(&mut data);
    std::fs::write(&file, &data).unwrap();
    let mut h = Fnv::default();
    h.update(&data);
    let want = format!("{N} {:016x}\n", h.0);
    let url = format!("http://{addr}/upload");
    let f = format!("@{}", file.display());
    // Content-Length upload (curl sends Expect: 100-continue for it).
    assert_eq!(curl(&["--data-binary", &f, &url]), want);
    // Chunked upload.
    assert_eq!(
        curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect:",
            "--data-binary",
            &f,
            &url
        ]),
        want
    );
    // Download.
    let out = dir.join("down.bin");
    curl(&[
        "-o",
        out.to_str().unwrap(),
        &format!("http://{addr}/download/{N}"),
    ]);
    let got = std::fs::read(&out).unwrap();
    let mut expect = vec![0u8; N];
    Pattern::new(7).fill(&mut expect);
    assert!(got == expect, "download differs ({} bytes)", got.len());
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(large_bodies_stream_both_ways, super::large_bodies);

#[test]
fn shutdown_closes_idle_keepalive_connections() {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(IoDriver::Uring, &origin.addr.to_string(), &[]);
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET /hello HTTP/1.1\r\nHost: o\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).1, b"hello from o\n");
    // The client keeps its connection open; the drain must not wait for it.
    let started = std::time::Instant::now();
    proxy.shutdown();
    proxy.wait();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain waited {:?}",
        started.elapsed()
    );
}

/// A drain that begins while a response is on its way: that response is
/// the connection's last, so it carries `Connection: close` (a client that
/// took it for a keep-alive one would send its next request into a closing
/// socket: wrk counted those as read errors), arrives whole, and the
/// connection then ends.
fn drain_closes_after_the_last_response(driver: IoDriver) {
    let (got, requests) = std::sync::mpsc::channel();
    let release = std::sync::Arc::new(std::sync::Barrier::new(2));
    let gate = release.clone();
    let backend = Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line != "\r\n" {
                continue;
            }
            // A whole (bodyless) request: answer once the test says so.
            let _ = got.send(());
            gate.wait();
            if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast")
                .is_err()
            {
                return;
            }
        }
    });
    let (proxy, addr) = forward_proxy(
        driver,
        &backend.addr.to_string(),
        &[("LINKERD2_PROXY_CORES", "1")],
    );
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // A keep-alive exchange first: no `Connection` header while serving.
    w.write_all(b"GET /a HTTP/1.1\r\nHost: o\r\n\r\n").unwrap();
    requests.recv_timeout(Duration::from_secs(10)).unwrap();
    release.wait();
    let (head, body) = read_response(&mut r, false);
    assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");
    assert_eq!(body, b"last");
    // The next request is at the backend when the drain starts.
    w.write_all(b"GET /b HTTP/1.1\r\nHost: o\r\n\r\n").unwrap();
    requests.recv_timeout(Duration::from_secs(10)).unwrap();
    proxy.shutdown();
    // The worker stopped accepting (its listener is gone): it is draining.
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(
        addr
    )
    .is_err()));
    release.wait();
    let (head, body) = read_response(&mut r, false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close\r\n"),
        "the last response does not say so: {head}"
    );
    assert_eq!(body, b"last");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    proxy.wait();
}
both_drivers!(
    drain_marks_the_last_response_connection_close,
    super::drain_closes_after_the_last_response
);

/// A request a keep-alive client sends just as the drain begins, while its
/// connection is idle, is served (with `Connection: close`) rather than
/// meeting a closed socket; a connection with nothing on its way is still
/// closed within a moment. So is the first request of a connection
/// accepted before the drain began.
fn drain_serves_a_request_already_on_its_way(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(
        driver,
        &origin.addr.to_string(),
        &[("LINKERD2_PROXY_CORES", "1")],
    );
    let get = b"GET /hello HTTP/1.1\r\nHost: o\r\n\r\n";
    let open = || {
        let c = connect(addr);
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut w = c;
        w.write_all(get).unwrap();
        let (head, _) = read_response(&mut r, false);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        (w, r)
    };
    let (mut busy_w, mut busy_r) = open();
    let (_idle_w, mut idle_r) = open();
    // Accepted, nothing sent yet (its protocol still undecided).
    let fresh = connect(addr);
    assert!(eventually(Duration::from_secs(5), || undecided(&proxy) == 1));
    proxy.shutdown();
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(
        addr
    )
    .is_err()));
    // Idle when the drain began; the next request arrives just after.
    busy_w.write_all(get).unwrap();
    let (head, body) = read_response(&mut busy_r, false);
    assert!(
        head.to_ascii_lowercase().contains("connection: close\r\n"),
        "{head}"
    );
    assert_eq!(body, b"hello from o\n");
    let mut rest = Vec::new();
    busy_r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // So is the first request of a connection accepted before the drain.
    let mut fresh_r = BufReader::new(fresh.try_clone().unwrap());
    (&fresh).write_all(get).unwrap();
    let (head, body) = read_response(&mut fresh_r, false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close\r\n"),
        "{head}"
    );
    assert_eq!(body, b"hello from o\n");
    // The other one sends nothing: closed.
    let started = std::time::Instant::now();
    idle_r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    proxy.wait();
}
both_drivers!(
    drain_serves_a_request_already_on_its_way,
    super::drain_serves_a_request_already_on_its_way
);

/// A response whose head went out before the drain began (so it could not
/// say `Connection: close`) and whose body ends after: the client, which
/// took the connection for a keep-alive one, sends its next request, and
/// that one is served, saying `Connection: close`; also when the body
/// ends after the drain's last look for idle connections has passed.
fn drain_mid_response_serves_the_next_request(driver: IoDriver) {
    let (got, halves) = std::sync::mpsc::channel();
    let release = std::sync::Arc::new(std::sync::Barrier::new(2));
    let gate = release.clone();
    let backend = Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut request_line = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if request_line.is_empty() {
                request_line = line.clone();
            }
            if line != "\r\n" {
                continue;
            }
            let slow = request_line.starts_with("GET /slow");
            request_line.clear();
            let sent = if slow {
                // Half the body, then the rest once the drain began.
                let head = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhalf");
                let _ = got.send(());
                gate.wait();
                head.and_then(|()| w.write_all(b"done"))
            } else {
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let (proxy, addr) = forward_proxy(
        driver,
        &backend.addr.to_string(),
        &[("LINKERD2_PROXY_CORES", "1")],
    );
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET /slow HTTP/1.1\r\nHost: o\r\n\r\n")
        .unwrap();
    halves.recv_timeout(Duration::from_secs(10)).unwrap();
    // The head is on its way to the client before the drain begins.
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    proxy.shutdown();
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(
        addr
    )
    .is_err()));
    // Past the worker's last look (500 ms after the drain began).
    std::thread::sleep(Duration::from_millis(800));
    release.wait();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");
    let mut body = [0; 8];
    r.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"halfdone");
    // Keep-alive as far as the client knows: the next request is served.
    w.write_all(b"GET /next HTTP/1.1\r\nHost: o\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut r, false);
    assert!(
        head.to_ascii_lowercase().contains("connection: close\r\n"),
        "{head}"
    );
    assert_eq!(body, b"next");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    proxy.wait();
}
both_drivers!(
    drain_mid_response_serves_the_next_request,
    super::drain_mid_response_serves_the_next_request
);

fn timeouts_and_limits(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(
        driver,
        &origin.addr.to_string(),
        &[
            ("RINGMESH_HTTP_HEADER_READ_TIMEOUT", "300ms"),
            ("RINGMESH_HTTP_RESPONSE_TIMEOUT", "300ms"),
        ],
    );
    // A slow client that never finishes its head: 408, then closed.
    let started = std::time::Instant::now();
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET / HTTP/1.1\r\nHost: o\r\nX-Slow: ")
        .unwrap();
    let (h, _) = read_response(&mut r, false);
    assert!(h.starts_with("HTTP/1.1 408"), "{h}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);

    // An upstream that never answers: 504 after the response timeout.
    let (h, _) = request(addr, b"GET /never HTTP/1.1\r\nHost: o\r\n\r\n");
    assert!(h.starts_with("HTTP/1.1 504"), "{h}");
    assert!(
        h.contains("l5d-proxy-error: upstream response timed out"),
        "{h}"
    );

    // The request timeout bounds the whole wait, however the response
    // timeout is set.
    let (p2, addr2) = forward_proxy(
        driver,
        &origin.addr.to_string(),
        &[("RINGMESH_HTTP_REQUEST_TIMEOUT", "300ms")],
    );
    let t = std::time::Instant::now();
    let (h, _) = request(addr2, b"GET /never HTTP/1.1\r\nHost: o\r\n\r\n");
    assert!(h.starts_with("HTTP/1.1 504"), "{h}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Also while the client's body is still coming (here: never): the
    // timeout is not put off until it ends. Then the connection closes
    // (the body was not read to its end).
    for to in [addr, addr2] {
        let t = std::time::Instant::now();
        let c = connect(to);
        let mut w = c.try_clone().unwrap();
        w.write_all(
            b"POST /never HTTP/1.1\r\nHost: o\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .unwrap();
        let mut r = BufReader::new(c);
        let (h, _) = read_response(&mut r, false);
        assert!(h.starts_with("HTTP/1.1 504"), "{h}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
    }
    p2.shutdown();
    p2.wait();

    // A request line over the 64 KiB head limit: 414.
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 70 * 1024));
    long.extend_from_slice(b" HTTP/1.1\r\nHost: o\r\n\r\n");
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let _ = w.write_all(&long);
    let (h, _) = read_response(&mut BufReader::new(c), false);
    assert!(h.starts_with("HTTP/1.1 414"), "{h}");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    header_timeout_response_timeout_414,
    super::timeouts_and_limits
);

fn stale_pooled_connection(driver: IoDriver) {
    let origin = origin("o");
    let (proxy, addr) = forward_proxy(
        driver,
        &origin.addr.to_string(),
        &[("LINKERD2_PROXY_CORES", "1")],
    );
    // The origin closes each connection right after answering, although it
    // said keep-alive: the next request must not fail on the dead pooled
    // connection.
    let c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for _ in 0..3 {
        w.write_all(b"GET /bye HTTP/1.1\r\nHost: o\r\n\r\n")
            .unwrap();
        let (h, b) = read_response(&mut r, false);
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(b, b"bye");
        // Idle long enough for the pool's liveness peek: a request with a
        // body (which cannot be retried once sent) gets a fresh connection.
        std::thread::sleep(Duration::from_millis(400));
        w.write_all(b"POST /upload HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        let (h, _) = read_response(&mut r, false);
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    }
    // Immediately after the close (the race the peek cannot see): retried.
    for _ in 0..5 {
        w.write_all(b"GET /bye HTTP/1.1\r\nHost: o\r\n\r\n")
            .unwrap();
        let (h, _) = read_response(&mut r, false);
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    }
    proxy.shutdown();
    drop((w, r));
    proxy.wait();
}
both_drivers!(
    stale_pooled_connection_is_not_used,
    super::stale_pooled_connection
);

/// linkerd2-proxy's HTTP/1 pool settings, per side: outbound with
/// `LINKERD2_PROXY_OUTBOUND_MAX_IDLE_CONNS_PER_ENDPOINT=0` keeps nothing
/// (a connection per request) while inbound, by default, reuses one; an
/// idle timeout closes a pooled connection, and a request after it opens
/// a new one.
fn pool_settings(driver: IoDriver) {
    use std::sync::atomic::Ordering::SeqCst;
    let (origin, accepted) = common::http::counting_origin("o");
    let target = origin.addr.to_string();
    let one = |addr: SocketAddr| {
        let mut s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    };
    let (proxy, fwd) = forward_proxy(
        driver,
        &target,
        &[
            ("LINKERD2_PROXY_CORES", "1"),
            ("LINKERD2_PROXY_OUTBOUND_MAX_IDLE_CONNS_PER_ENDPOINT", "0"),
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_INBOUND_TARGET", &target),
            (
                "LINKERD2_PROXY_INBOUND_HTTP1_CONNECTION_POOL_IDLE_TIMEOUT",
                "400ms",
            ),
        ],
    );
    for _ in 0..3 {
        one(fwd);
    }
    assert_eq!(accepted.load(SeqCst), 3, "outbound kept a connection");
    let inbound = proxy.inbound_addr().unwrap();
    for _ in 0..3 {
        one(inbound);
    }
    assert_eq!(
        accepted.load(SeqCst),
        4,
        "inbound did not reuse its connection"
    );
    // Past the inbound idle timeout: closed, and the next request opens
    // another (the origin sees the close: its count of open ones drops).
    std::thread::sleep(Duration::from_millis(700));
    one(inbound);
    assert_eq!(accepted.load(SeqCst), 5, "an expired connection was reused");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(http1_pool_settings_per_side, super::pool_settings);

/// An HTTP/1 backend that counts each request head it reads (`held`) and
/// answers `200 ok` only once `release` is set.
fn holding_backend() -> (
    Backend,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let (held, release) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let backend = {
        let (held, release) = (held.clone(), release.clone());
        Backend::start(move |s| {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut s = s;
            loop {
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                held.fetch_add(1, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    (backend, held, release)
}

/// `LINKERD2_PROXY_OUTBOUND_MAX_IN_FLIGHT`: with the bound's requests held
/// by an upstream that does not answer, the next one, HTTP/1 or HTTP/2,
/// is answered 503 at once with linkerd2-proxy's reason; once they finish,
/// requests pass again.
fn max_in_flight(driver: IoDriver) {
    use std::sync::atomic::Ordering;
    let (backend, held, release) = holding_backend();
    let (proxy, addr) = forward_proxy(
        driver,
        &backend.addr.to_string(),
        &[
            ("LINKERD2_PROXY_CORES", "1"),
            ("LINKERD2_PROXY_OUTBOUND_MAX_IN_FLIGHT", "2"),
        ],
    );
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || request(addr, b"GET /slow HTTP/1.1\r\nHost: o\r\n\r\n"))
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || held.load(Ordering::SeqCst) == 2),
        "the two requests never reached the backend"
    );
    let url = format!("http://{addr}/more");
    let head = |extra: &[&str]| {
        let mut args = vec!["-D", "-", "-o", "/dev/null"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args).to_ascii_lowercase()
    };
    // (The HTTP/2 client's request goes to the HTTP/1 backend as HTTP/1.1.)
    let h2: &[&str] = &["--http2-prior-knowledge", "-H", "l5d-orig-proto: HTTP/1.1"];
    for extra in [&[][..], h2] {
        let h = head(extra);
        assert!(h.contains(" 503"), "{extra:?}: {h}");
        assert!(
            h.contains("l5d-proxy-error: proxy max-concurrency exhausted"),
            "{extra:?}: {h}"
        );
    }
    assert_eq!(
        held.load(Ordering::SeqCst),
        2,
        "a shed request reached the backend"
    );
    release.store(true, Ordering::SeqCst);
    for w in waiting {
        let (h, b) = w.join().unwrap();
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(b, b"ok");
    }
    for extra in [&[][..], h2] {
        let h = head(extra);
        assert!(
            h.contains(" 200"),
            "{extra:?} after the others finished: {h}"
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(max_in_flight_sheds_load, super::max_in_flight);

/// `RINGMESH_HTTP_MAX_IN_FLIGHT_HEAD_BYTES`: requests with 50 KB heads
/// held by an upstream that does not answer fill the worker's bound on
/// head bytes (1 MiB here: 20 of them); the next large one is answered 503
/// at once, HTTP/1 or HTTP/2, a small one still fits, and once they finish
/// large ones pass again. (Before, only the count of requests bounded them:
/// 100 000 by default, each holding a few times its head, GBs.)
fn large_heads_in_flight(driver: IoDriver) {
    use std::sync::atomic::Ordering;
    let (backend, held, release) = holding_backend();
    let (proxy, addr) = forward_proxy(
        driver,
        &backend.addr.to_string(),
        &[
            ("LINKERD2_PROXY_CORES", "1"),
            ("RINGMESH_HTTP_MAX_IN_FLIGHT_HEAD_BYTES", "1048576"),
            // (HTTP/2 heads of 50 KB, past the 16 KiB default.)
            (
                "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_MAX_HEADER_LIST_SIZE",
                "131072",
            ),
        ],
    );
    let big = "b".repeat(50_000);
    let big_head = format!("GET /slow HTTP/1.1\r\nHost: o\r\nx-big: {big}\r\n\r\n");
    let fit = 1_048_576 / big_head.len();
    assert_eq!(fit, 20);
    let waiting: Vec<_> = (0..fit)
        .map(|_| {
            let head = big_head.clone();
            std::thread::spawn(move || request(addr, head.as_bytes()))
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || held.load(Ordering::SeqCst)
            == fit),
        "the large requests never reached the backend: {}",
        held.load(Ordering::SeqCst)
    );
    let url = format!("http://{addr}/more");
    let header = format!("x-big: {big}");
    let head = |extra: &[&str]| {
        let mut args = vec!["-D", "-", "-o", "/dev/null", "-H", header.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args).to_ascii_lowercase()
    };
    let h2: &[&str] = &["--http2-prior-knowledge", "-H", "l5d-orig-proto: HTTP/1.1"];
    for extra in [&[][..], h2] {
        let h = head(extra);
        assert!(h.contains(" 503"), "{extra:?}: {h}");
        assert!(
            h.contains("l5d-proxy-error: proxy max-concurrency exhausted"),
            "{h}"
        );
    }
    assert_eq!(
        held.load(Ordering::SeqCst),
        fit,
        "a shed request reached the backend"
    );
    // A small one fits in what is left.
    let small =
        std::thread::spawn(move || request(addr, b"GET /small HTTP/1.1\r\nHost: o\r\n\r\n"));
    assert!(
        eventually(Duration::from_secs(10), || held.load(Ordering::SeqCst)
            == fit + 1),
        "the small request was shed too"
    );
    release.store(true, Ordering::SeqCst);
    for w in waiting.into_iter().chain([small]) {
        let (h, b) = w.join().unwrap();
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert_eq!(b, b"ok");
    }
    for extra in [&[][..], h2] {
        let h = head(extra);
        assert!(
            h.contains(" 200"),
            "{extra:?} after the others finished: {h}"
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    large_heads_in_flight_are_bounded,
    super::large_heads_in_flight
);

/// A request counts its head against the bound until it is answered, not
/// until its response ends: 30 requests with 50 KB heads whose responses
/// have started (and not ended) fit in a 1 MiB bound that holds 20
/// unanswered ones. (Clients that left after the response's first bytes,
/// their connections lingering a moment, shed others far below the bound.)
fn answered_heads_are_not_held(driver: IoDriver) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let release = Arc::new(AtomicBool::new(false));
    let backend = {
        let release = release.clone();
        Backend::start(move |s| {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut s = s;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
            }
            // The head and half the body; the rest once released.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no");
            while !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = s.write_all(b"k");
        })
    };
    let (proxy, addr) = forward_proxy(
        driver,
        &backend.addr.to_string(),
        &[
            ("LINKERD2_PROXY_CORES", "1"),
            ("RINGMESH_HTTP_MAX_IN_FLIGHT_HEAD_BYTES", "1048576"),
        ],
    );
    let big = "b".repeat(50_000);
    let head = format!("GET /slow HTTP/1.1\r\nHost: o\r\nx-big: {big}\r\n\r\n");
    let mut open = Vec::new();
    for i in 0..30 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "request {i}: {status}");
        open.push((c, r));
    }
    release.store(true, Ordering::SeqCst);
    drop(open);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    answered_heads_are_not_held,
    super::answered_heads_are_not_held
);

/// A client that goes away while its request waits for a slow upstream:
/// the request is cancelled and the upstream connection closed (as nginx
/// and linkerd2-proxy's hyper do), instead of the proxy holding both until
/// the upstream answers, which a silent upstream never does. Closed
/// outright; half-closed with a pipelined request's first bytes unread
/// (`POLLRDHUP` sees the FIN behind them). A client that half-closes
/// before an answer that comes within the second still gets it. (Before,
/// the client connection sat in CLOSE-WAIT and the upstream connection
/// stayed open for as long as the upstream was silent.)
fn leaving_clients_cancel(driver: IoDriver) {
    let (events, seen) = std::sync::mpsc::channel::<&'static str>();
    let silent = Backend::start(move |s| {
        let mut r = BufReader::new(s);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line == "\r\n" => {
                    let _ = events.send("request");
                }
                Ok(_) => {}
            }
        }
        let _ = events.send("closed");
    });
    let (proxy, addr) = forward_proxy(driver, &silent.addr.to_string(), &[]);
    let expect = |what: &str, within: Duration| {
        assert_eq!(
            seen.recv_timeout(within).ok(),
            Some(what),
            "the upstream did not see its {what}"
        );
    };
    for half_close_with_unread in [false, true] {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: slow.test\r\n\r\n")
            .unwrap();
        expect("request", Duration::from_secs(5));
        if half_close_with_unread {
            c.write_all(b"GET /next HTTP/1.1\r\n").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
        } else {
            drop(c.try_clone().unwrap());
            c.shutdown(std::net::Shutdown::Both).unwrap();
        }
        let t = std::time::Instant::now();
        expect("closed", Duration::from_secs(4));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        drop(c);
    }
    // Answers within the second are not cut short by a half-close (this
    // one comes after 300 ms).
    let app = Backend::start(|s| {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = r
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    let (quick, quick_addr) = forward_proxy(driver, &app.addr.to_string(), &[]);
    let mut c = TcpStream::connect(quick_addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: quick.test\r\n\r\n")
        .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (head, body) = read_response(&mut BufReader::new(c), false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    quick.shutdown();
    quick.wait();
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_client_that_leaves_cancels_its_request,
    super::leaving_clients_cancel
);

/// An `Expect: 100-continue` request answered with a final status before
/// any 100 (an upstream refusing the upload without reading it): the
/// client gets the answer and the connection closes after it (RFC 9112
/// §9.6, RFC 9110 §10.1.1), the answer saying `close` even when the
/// upstream's did not; the client's body, never sent, is not waited for
/// (the connection stayed open for as long as the client kept it). A
/// request that got its 100 sends its body and keeps its connection.
fn expect_continue_refused(driver: IoDriver) {
    // `/refuse-close`: 417 with `Connection: close`, then closed;
    // `/refuse`: 417, kept alive; else 100, then the body, then 200.
    let app = Backend::start(|s| {
        let mut r = BufReader::new(s);
        loop {
            let mut line = String::new();
            let mut target = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if target.is_empty() {
                    target = line.split(' ').nth(1).unwrap_or("").to_string();
                }
                line.clear();
            }
            if target.is_empty() {
                return;
            }
            let w = r.get_mut();
            match target.as_str() {
                "/refuse-close" => {
                    let _ = w.write_all(
                        b"HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    );
                    return;
                }
                "/refuse" => {
                    let _ = w
                        .write_all(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n");
                }
                _ => {
                    let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                    let mut body = [0u8; 5];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = r
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            }
        }
    });
    let (proxy, addr) = forward_proxy(driver, &app.addr.to_string(), &[]);
    let post = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: up.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    };
    for path in ["/refuse-close", "/refuse"] {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(post(path).as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let (head, _) = read_response(&mut r, false);
        assert!(head.starts_with("HTTP/1.1 417"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{path}: {head}"
        );
        // Closed, not held until the client gives up.
        let mut rest = Vec::new();
        let t = std::time::Instant::now();
        let end = r.read_to_end(&mut rest);
        assert!(end.is_ok() && rest.is_empty(), "{path}: {end:?} {rest:?}");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{path}: {:?}",
            t.elapsed()
        );
    }
    // Continued: the body goes, the connection carries the next request.
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    for _ in 0..2 {
        c.write_all(post("/upload").as_bytes()).unwrap();
        let (head, _) = read_response(&mut r, false);
        assert!(head.starts_with("HTTP/1.1 100"), "{head}");
        c.write_all(b"hello").unwrap();
        let (head, body) = read_response(&mut r, false);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"ok");
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    an_expectation_refused_closes_the_connection,
    super::expect_continue_refused
);

/// An upstream's response with no length (delimited by its close) that is
/// cut by a reset reaches the client as a reset, not as a clean close that
/// would make the truncated body look whole; one that ends with a clean
/// close is relayed whole, ending with one.
fn close_delimited_reset(driver: IoDriver) {
    let app = Backend::start(|s| {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut target = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            if target.is_empty() {
                target = line.split(' ').nth(1).unwrap_or("").to_string();
            }
            line.clear();
        }
        let s = r.get_mut();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(&[b'x'; 1000]);
        std::thread::sleep(Duration::from_millis(100));
        if target == "/abort" {
            let v = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            #[allow(unsafe_code)]
            // SAFETY: the socket is open; the value lives through the call.
            let r = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&*s),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::addr_of!(v).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0);
        }
    });
    let (proxy, addr) = forward_proxy(driver, &app.addr.to_string(), &[]);
    for (path, whole) in [("/complete", true), ("/abort", false)] {
        for version in ["1.1", "1.0"] {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(c, "GET {path} HTTP/{version}\r\nHost: up.test\r\n\r\n").unwrap();
            let mut got = Vec::new();
            let end = c.read_to_end(&mut got);
            let text = String::from_utf8_lossy(&got);
            if whole {
                assert!(text.starts_with("HTTP/1."), "{path} {version}: {text}");
                assert!(end.is_ok(), "{path} {version}: {end:?}");
                assert!(text.ends_with(&"x".repeat(1000)), "{path} {version}");
            } else {
                assert_eq!(
                    end.map_err(|e| e.kind()).err(),
                    Some(std::io::ErrorKind::ConnectionReset),
                    "{path} {version}: a cut body ended as a clean close"
                );
            }
        }
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_close_delimited_body_cut_by_a_reset_is_reset,
    super::close_delimited_reset
);

/// A request on a pooled connection that the upstream takes, works on and
/// then closes without answering (a crash, a restart), at once or after
/// 300 ms: a GET goes again on a new connection; a POST does not (it may
/// have been acted on: a payment made twice), and the client gets a 502,
/// as nginx and linkerd2-proxy answer. Before, any method was sent again,
/// then any that failed within 10 ms: the POST ran on two endpoints.
fn late_close_replays_only_idempotent(driver: IoDriver) {
    let (log, seen) = std::sync::mpsc::channel::<String>();
    let log = std::sync::Arc::new(log);
    let app = Backend::start(move |s| {
        let log = log.clone();
        let mut r = BufReader::new(s);
        let mut served = 0;
        loop {
            let mut line = String::new();
            let mut request = String::new();
            let mut length = 0usize;
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if request.is_empty() {
                    request = line.trim_end().to_string();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            if request.is_empty() {
                return;
            }
            let mut body = vec![0u8; length];
            let _ = r.read_exact(&mut body);
            let _ = log.send(request.clone());
            served += 1;
            if served > 1 && request.contains("/work") {
                // Takes it, works on it (or not), dies.
                if !request.contains("/work/0") {
                    std::thread::sleep(Duration::from_millis(300));
                }
                return;
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let (proxy, addr) = forward_proxy(driver, &app.addr.to_string(), &[]);
    let cases = [
        ("POST", "/work/300", "502", 1),
        ("POST", "/work/0", "502", 1),
        ("GET", "/work/300", "200", 2),
        ("GET", "/work/0", "200", 2),
    ];
    for (method, path, status, times) in cases {
        while seen.try_recv().is_ok() {}
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        // The first request leaves its upstream connection in the pool.
        c.write_all(b"GET /warm HTTP/1.1\r\nHost: up.test\r\n\r\n")
            .unwrap();
        let (head, _) = read_response(&mut r, false);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // (Bodiless: a streamed body could not go twice anyway.)
        write!(c, "{method} {path} HTTP/1.1\r\nHost: up.test\r\n\r\n").unwrap();
        let (head, _) = read_response(&mut r, false);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path}: {head}"
        );
        let works = seen
            .try_iter()
            .filter(|l| l.starts_with(method) && l.contains(path))
            .count();
        assert_eq!(
            works, times,
            "{method} {path} reached the upstream {works} times"
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_request_worked_on_is_not_replayed_unless_idempotent,
    super::late_close_replays_only_idempotent
);

/// A python helper (`tests/grpc/*.py`) that prints "port N" when it
/// listens, and that port.
fn python_origin(args: &[&str]) -> (proc::Running, u16) {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(args).stderr(std::process::Stdio::piped());
    let mut python = proc::Running::spawn(cmd);
    assert!(python.wait_for("port ", Duration::from_secs(10)));
    let port = python.seen.last().unwrap()["port ".len()..]
        .parse()
        .unwrap();
    (python, port)
}

/// Random HTTP/1 on both sides (`tests/grpc/h1_chaos.py`): a hostile
/// HTTP/1 upstream answering at random (lying lengths and chunk sizes,
/// 1xx and 101, bodies on 204/304, bytes past the response, cuts,
/// garbage, silences) and clients sending random requests (smuggling
/// shapes, upgrades, CONNECT, Expect, pipelining, dribbling, garbage,
/// half-closes), on three paths for 4 s per seed: HTTP/1 → HTTP/1,
/// HTTP/1 → HTTP/2 (`protocol_hint = "h2"`, to `h2_chaos.py`'s random
/// HTTP/2 upstream) and HTTP/2 (random frames) → HTTP/1 (`protocol =
/// "http1"`). The worker lives through it, serves a client of a healthy
/// origin afterwards, and once every client has left holds none of their
/// connections. (Before the fixes of the cancelled requests, client
/// connections whose requests the upstream never answered stayed open in
/// CLOSE-WAIT.)
fn http1_chaos(driver: IoDriver) {
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc");
    let (h1, h2) = (
        format!("{scripts}/h1_chaos.py"),
        format!("{scripts}/h2_chaos.py"),
    );
    let (_h1_origin, h1_port) = python_origin(&[&h1, "origin", "1"]);
    let (_h2_origin, h2_port) = python_origin(&[&h2, "origin", "1"]);
    let healthy = origin("app");
    let dir = TempDir::new(&format!("http1-chaos-{}", driver_name(driver)));
    let file = discovery_file(
        &dir,
        &format!(
            "[[service]]\nname = \"chaos.test:80\"\nendpoints = [\"127.0.0.1:{h1_port}\"]\nprotocol = \"http1\"\n\
             [[service]]\nname = \"meshed.test:80\"\nendpoints = [\"127.0.0.1:{h2_port}\"]\nprotocol_hint = \"h2\"\n\
             [[service]]\nname = \"healthy.test:80\"\nendpoints = [\"{}\"]\n",
            healthy.addr
        ),
    );
    let proxy = start_proxy(
        driver,
        &[
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=chaos.test:80,127.0.0.1:0=meshed.test:80,127.0.0.1:0=healthy.test:80",
            ),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    let [to_chaos, to_meshed, to_healthy] = [0, 1, 2].map(|i| proxy.forward_addrs()[i].to_string());
    for seed in ["1", "2"] {
        let runs = [(&h1, &to_chaos), (&h1, &to_meshed), (&h2, &to_chaos)];
        let mut clients: Vec<_> = runs
            .iter()
            .map(|(script, to)| {
                let mut cmd = Command::new("/usr/bin/python3");
                cmd.args([script.as_str(), "clients", to.as_str(), "4", seed])
                    .stderr(std::process::Stdio::piped());
                proc::Running::spawn(cmd)
            })
            .collect();
        for c in &mut clients {
            assert!(
                c.wait_for("connections ", Duration::from_secs(30)),
                "the clients ran"
            );
        }
    }
    let mut c = TcpStream::connect(&to_healthy).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: healthy.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut BufReader::new(c), false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello from app\n");
    let open = || proxy.worker_stats().iter().map(|s| s.open).sum::<u64>();
    // What this looks for is a leak (a connection held for ever); the
    // legitimate bounds stack up to several seconds on a loaded machine
    // (the hang-up check, the origins' 2 s and 5 s read timeouts, the
    // 3 s TCP fail-fast), so the wait is generous.
    assert!(
        eventually(Duration::from_secs(20), || open() == 0),
        "{} client connections still open after every client left",
        open()
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(random_http1_on_both_sides_is_survived, super::http1_chaos);

/// An upstream that takes a request's head and never reads its body: the
/// body's write stops making progress, and after `RINGMESH_TCP_IDLE_TIMEOUT`
/// the request fails (502) and both connections go, instead of the proxy
/// holding them (and the kernel's send buffers) for as long as the
/// upstream stays silent, even after the client gave up.
fn stalled_body_write(driver: IoDriver) {
    let sink = Backend::start(|s| {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        // Holds the connection, reading nothing more (bounded).
        std::thread::sleep(Duration::from_secs(20));
    });
    let (proxy, addr) = forward_proxy(
        driver,
        &sink.addr.to_string(),
        &[("RINGMESH_TCP_IDLE_TIMEOUT", "2s")],
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let total = 64usize << 20;
    write!(
        c,
        "POST /upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let mut w = c.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..total / chunk.len() {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let took = started.elapsed();
    let head = String::from_utf8_lossy(&got);
    assert!(
        took < Duration::from_secs(10),
        "the stalled upload was held for {took:?}: {head}"
    );
    assert!(got.is_empty() || head.starts_with("HTTP/1.1 502"), "{head}");
    let _ = c.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(a_stalled_body_write_times_out, super::stalled_body_write);

/// The sum of the `/metrics` lines at `admin` that start with `prefix` and
/// contain `needle`.
fn scraped_sum(admin: SocketAddr, prefix: &str, needle: &str) -> u64 {
    let mut s = connect(admin);
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(needle))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// With two workers, a series one of them evicted as idle
/// (`LINKERD2_PROXY_METRICS_RETAIN_IDLE`) while the other still counts it
/// keeps its total: the counter never goes down between scrapes, and ends
/// at every request sent.
#[test]
fn idle_eviction_on_one_worker_keeps_the_total() {
    let origin = origin("o");
    let admin = closed_port();
    let (proxy, addr) = forward_proxy(
        IoDriver::Uring,
        &origin.addr.to_string(),
        &[
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin.to_string()),
            ("LINKERD2_PROXY_METRICS_RETAIN_IDLE", "1s"),
        ],
    );
    let get = b"GET /hello HTTP/1.1\r\nHost: o\r\n\r\n";
    let served =
        |proxy: &Proxy| -> Vec<u64> { proxy.worker_stats().iter().map(|s| s.requests).collect() };
    // A kept connection on each worker (the kernel picks the worker).
    let mut on: [Option<(TcpStream, BufReader<TcpStream>)>; 2] = [None, None];
    let mut sent = 0u64;
    for _ in 0..64 {
        if on.iter().all(Option::is_some) {
            break;
        }
        let before = served(&proxy);
        let mut w = connect(addr);
        let mut r = BufReader::new(w.try_clone().unwrap());
        w.write_all(get).unwrap();
        assert!(read_response(&mut r, false).0.starts_with("HTTP/1.1 200"));
        sent += 1;
        let after = served(&proxy);
        let worker = (0..2).find(|&i| after[i] > before[i]).unwrap();
        on[worker].get_or_insert((w, r));
    }
    let [Some(mut first), Some(mut second)] = on else {
        panic!("no connection landed on one of the workers");
    };
    let mut ask = |(w, r): &mut (TcpStream, BufReader<TcpStream>)| {
        w.write_all(get).unwrap();
        assert!(read_response(r, false).0.starts_with("HTTP/1.1 200"));
        sent += 1;
    };
    for _ in 0..5 {
        ask(&mut first);
    }
    let total = || scraped_sum(admin, "request_total{", "");
    // The first worker's copy goes idle (and is evicted at a scrape); the
    // second's goes on.
    let mut last = 0;
    let until = std::time::Instant::now() + Duration::from_millis(3000);
    while std::time::Instant::now() < until {
        ask(&mut second);
        let now = total();
        assert!(now >= last, "request_total went from {last} to {now}");
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(total(), sent);
    proxy.shutdown();
    proxy.wait();
}

/// `outbound_http_errors_total` counts by kind, over every label set: when
/// one service's series is evicted as idle (gone from every worker), its
/// errors stay in the count while another service's keep the series
/// alive; it never goes down between scrapes.
#[test]
fn http_error_counts_survive_eviction() {
    let (_held, dead) = refusing_port();
    let dir = TempDir::new("http-errors-evicted");
    let file = discovery_file(
        &dir,
        &format!(
            "[[service]]\nname = \"a.test:80\"\nendpoints = [\"{dead}\"]\n\
             [[service]]\nname = \"b.test:80\"\nendpoints = [\"{dead}\"]\n"
        ),
    );
    let admin = closed_port();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=a.test:80,127.0.0.1:0=b.test:80",
            ),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin.to_string()),
            ("LINKERD2_PROXY_METRICS_RETAIN_IDLE", "1s"),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    let (a, b) = (proxy.forward_addrs()[0], proxy.forward_addrs()[1]);
    let failed = |addr: SocketAddr, host: &str| {
        let (h, _) = request(
            addr,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert!(h.starts_with("HTTP/1.1 502"), "{h}");
    };
    let io_errors = || scraped_sum(admin, "outbound_http_errors_total{", "\"i/o\"");
    for _ in 0..3 {
        failed(a, "a.test");
    }
    let mut sent = 3;
    let mut last = 0;
    let until = std::time::Instant::now() + Duration::from_millis(3000);
    while std::time::Instant::now() < until {
        failed(b, "b.test");
        sent += 1;
        let now = io_errors();
        assert!(
            now >= last,
            "outbound_http_errors_total went from {last} to {now}"
        );
        last = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(io_errors(), sent);
    proxy.shutdown();
    proxy.wait();
}

/// What an HTTP/1.0 client could not read never reaches it: a backend's
/// chunked answer to its request (RFC 9112 §6.1) is a 502 saying why; a
/// service that speaks HTTP/2 only (`protocol = "http2"`) answers its
/// request 505, and an upgrade 501, instead of being sent HTTP/1 bytes it
/// cannot parse. (The chunk framing went to the client, which, kept
/// alive, waited for an end it could not see; the HTTP/2 server got
/// HTTP/1 bytes and the client a 502.)
#[test]
fn http10_clients_get_what_they_can_read() {
    let chunking = Backend::start(|mut s| {
        if read_head(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        let _ = s.read(&mut [0u8; 64]);
    });
    let h2 = common::h2::origin(None);
    let dir = TempDir::new("http10-clients");
    let file = discovery_file(
        &dir,
        &format!(
            "[[service]]\nname = \"chunks.test:80\"\nendpoints = [\"{}\"]\n\
             [[service]]\nname = \"h2only.test:80\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n",
            chunking.addr, h2.addr
        ),
    );
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=chunks.test:80,127.0.0.1:0=h2only.test:80",
            ),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
        ],
    );
    let (chunks, h2only) = (proxy.forward_addrs()[0], proxy.forward_addrs()[1]);
    let (h, b) = request(
        chunks,
        b"GET / HTTP/1.0\r\nHost: chunks.test\r\nConnection: keep-alive\r\n\r\n",
    );
    assert!(h.starts_with("HTTP/1.0 502"), "{h}");
    assert!(h.contains("chunked response to an HTTP/1.0 request"), "{h}");
    assert!(!String::from_utf8_lossy(&b).contains("hello"), "{b:?}");
    // An HTTP/1.1 client still gets the chunked answer.
    let (h, b) = request(chunks, b"GET / HTTP/1.1\r\nHost: chunks.test\r\n\r\n");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert_eq!(b, b"5\r\nhello\r\n0\r\n\r\n");

    let (h, _) = request(h2only, b"GET /hello HTTP/1.0\r\nHost: h2only.test\r\n\r\n");
    assert!(h.starts_with("HTTP/1.0 505"), "{h}");
    assert!(h.contains("speaks HTTP/2 only"), "{h}");
    let (h, _) = request(
        h2only,
        b"GET /hello HTTP/1.1\r\nHost: h2only.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert!(h.starts_with("HTTP/1.1 501"), "{h}");
    let (h, b) = request(h2only, b"GET /hello HTTP/1.1\r\nHost: h2only.test\r\n\r\n");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert_eq!(b, b"d\r\nhello from h2\r\n0\r\n\r\n", "translated, chunked");
    proxy.shutdown();
    proxy.wait();
}

/// An upstream's `Connection: close` is about the upstream connection:
/// the client's stays open, its next request going on a new upstream
/// connection, as in linkerd2-proxy (hyper's client and server connections
/// are apart). A peer proxy's answer fields (`l5d-proxy-error`,
/// `l5d-proxy-connection`) stop at the outbound proxy.
fn upstream_close_keeps_the_client(driver: IoDriver) {
    let backend = Backend::answering(
        "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nl5d-proxy-error: boom\r\nl5d-proxy-connection: close\r\nContent-Length: 2\r\n\r\nno",
    );
    let (_proxy, addr) = forward_proxy(driver, &backend.addr.to_string(), &[]);
    let s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..2 {
        w.write_all(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n").unwrap();
        let (head, body) = read_response(&mut r, false);
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 500"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        assert!(
            !head.contains("boom") && !head.contains("l5d-proxy-connection"),
            "{head}"
        );
        assert_eq!(body, b"no");
    }
}
both_drivers!(
    upstream_connection_close_keeps_the_client,
    super::upstream_close_keeps_the_client
);

/// An HTTP/1 origin answering each request (bodies not read) with what
/// `answer` makes of its request line, on a kept connection.
fn answering_by_line(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let (mut line, mut request_line) = (String::new(), String::new());
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            if request_line.is_empty() {
                request_line = line.clone();
            } else if line == "\r\n" {
                if w.write_all(&answer(&request_line)).is_err() {
                    return;
                }
                request_line.clear();
            }
            line.clear();
        }
    })
}

/// A forward on one core to the service `web.test:80` of `endpoints`.
fn one_core_service(tag: &str, endpoints: &[SocketAddr]) -> (TempDir, Proxy, SocketAddr) {
    let dir = TempDir::new(tag);
    let file = service_file(&dir, "web.test:80", endpoints, "");
    let (proxy, addr) = forward_proxy(
        IoDriver::Uring,
        "web.test:80",
        &[
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    (dir, proxy, addr)
}

/// A service whose every endpoint fails (503): retries are paid from the
/// budget's floor alone (linkerd2-proxy deposits for responses that are
/// not failures, so an outage funds none: the 100-token reserve and 10 a
/// second), and every answer the client gets is an endpoint's own, never
/// one the proxy made because a held answer's retry lost its token to
/// another request (the answer was held unread).
#[test]
fn an_outage_is_retried_from_the_floor_and_answered_by_the_endpoints() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let hits = Arc::new(AtomicUsize::new(0));
    let failing = || {
        let hits = hits.clone();
        answering_by_line(move |_| {
            hits.fetch_add(1, Ordering::SeqCst);
            b"HTTP/1.1 503 Service Unavailable\r\nx-from: endpoint\r\nContent-Length: 4\r\n\r\ndown"
                .to_vec()
        })
    };
    let (a, b) = (failing(), failing());
    let (_dir, _proxy, addr) = one_core_service("outage-budget", &[a.addr, b.addr]);
    let (requests, made_up) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (requests, made_up) = (requests.clone(), made_up.clone());
            std::thread::spawn(move || {
                let s = connect(addr);
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let (mut w, mut r) = (s.try_clone().unwrap(), BufReader::new(s));
                while started.elapsed() < Duration::from_secs(2) {
                    if w.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
                        .is_err()
                    {
                        break;
                    }
                    let (head, _) = read_response(&mut r, false);
                    requests.fetch_add(1, Ordering::SeqCst);
                    if !head.contains("x-from: endpoint") {
                        made_up.fetch_add(1, Ordering::SeqCst);
                    }
                    if head.to_ascii_lowercase().contains("connection: close") {
                        break;
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (requests, hits) = (requests.load(Ordering::SeqCst), hits.load(Ordering::SeqCst));
    assert!(requests > 500, "too few requests to judge: {requests}");
    assert_eq!(
        made_up.load(Ordering::SeqCst),
        0,
        "answers the proxy made up"
    );
    // The reserve (100) and 2 s of the floor (20), and slack for the clock.
    let retries = hits - requests;
    assert!(retries <= 130, "{retries} retries for {requests} requests");
}

/// Requests waiting for slow answers hold no retry budget: with more of
/// them in flight than the budget has tokens (120 against 100), a 503
/// from one endpoint is still retried on the other (the token is taken
/// when the answer to retry arrives, as linkerd2-proxy withdraws).
#[test]
fn slow_requests_in_flight_leave_the_budget_to_retries() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // `/slow`: 200 after 2 s; `/x`: 503 on two of three from `flaky`.
    let endpoint = |flaky: bool| {
        let n = Arc::new(AtomicUsize::new(0));
        answering_by_line(move |request_line| {
            let slow = request_line.starts_with("GET /slow");
            if slow {
                std::thread::sleep(Duration::from_secs(2));
            }
            let fail = !slow && flaky && !n.fetch_add(1, Ordering::SeqCst).is_multiple_of(3);
            let answer: &[u8] = if fail {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            };
            answer.to_vec()
        })
    };
    let (a, b) = (endpoint(true), endpoint(false));
    let (_dir, _proxy, addr) = one_core_service("slow-budget", &[a.addr, b.addr]);
    let get = move |path: &str| {
        let s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (mut w, mut r) = (s.try_clone().unwrap(), BufReader::new(s));
        write!(w, "GET {path} HTTP/1.1\r\nHost: web.test\r\n\r\n").unwrap();
        read_response(&mut r, false).0
    };
    let slow: Vec<_> = (0..120)
        .map(|_| std::thread::spawn(move || get("/slow")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let failed = (0..30)
        .filter(|_| !get("/x").starts_with("HTTP/1.1 200"))
        .count();
    for t in slow {
        assert!(t.join().unwrap().starts_with("HTTP/1.1 200"));
    }
    assert_eq!(failed, 0, "503s not retried while slow requests waited");
}
