//! Protocol detection on accepted connections: opaque ports skip it, the
//! detect timeout bounds it, and whatever was read is forwarded intact.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringmesh_engine::{IoDriver, Proxy};

/// A server-speaks-first backend (like MySQL or SMTP): it greets, then echoes.
fn banner_backend() -> Backend {
    Backend::named("220 banner")
}

fn time_to_banner(driver: IoDriver, vars: &[(&str, &str)], backend: &Backend) -> Duration {
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let mut all = vec![("RINGMESH_TCP_FORWARD", fwd.as_str())];
    all.extend_from_slice(vars);
    let proxy = start_proxy(driver, &all);
    let started = Instant::now();
    let mut c = connect(proxy.forward_addrs()[0]);
    assert_eq!(read_name(&mut c), "220 banner");
    let took = started.elapsed();
    // The connection is fully usable afterwards.
    c.write_all(b"EHLO x\n").unwrap();
    let mut back = [0u8; 7];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"EHLO x\n");
    drop(c);
    proxy.shutdown();
    proxy.wait();
    took
}

fn opaque_port_skips_detection(driver: IoDriver) {
    let backend = banner_backend();
    let port = backend.addr.port().to_string();
    let took = time_to_banner(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
            ("RINGMESH_OUTBOUND_OPAQUE_PORTS", &port),
        ],
        &backend,
    );
    assert!(
        took < Duration::from_secs(1),
        "greeting took {took:?} on an opaque port"
    );
}
both_drivers!(
    opaque_port_skips_detection,
    super::opaque_port_skips_detection
);

fn discovery_opaque_skips_detection(driver: IoDriver) {
    let backend = banner_backend();
    let dir = TempDir::new("detect");
    let file = dir.join("d.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"mail.test:2525\"\nendpoints = [\"{}\"]\nprotocol = \"opaque\"\n",
            backend.addr
        ),
    )
    .unwrap();
    let proxy = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=mail.test:2525"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
        ],
    );
    let started = Instant::now();
    let mut c = connect(proxy.forward_addrs()[0]);
    assert_eq!(read_name(&mut c), "220 banner");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    drop(c);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    discovery_opaque_skips_detection,
    super::discovery_opaque_skips_detection
);

/// A forward to `backend` through one worker (what it learns applies to
/// the next connection), with the 10 s detect timeout and no opaque port,
/// plus `extra`.
fn one_worker_forward(driver: IoDriver, backend: SocketAddr, extra: &[(&str, &str)]) -> Proxy {
    let fwd = format!("127.0.0.1:0={backend}");
    let mut vars = vec![
        ("RINGMESH_TCP_FORWARD", fwd.as_str()),
        ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "10s"),
        ("RINGMESH_OUTBOUND_OPAQUE_PORTS", ""),
        ("LINKERD2_PROXY_CORES", "1"),
    ];
    vars.extend_from_slice(extra);
    start_proxy(driver, &vars)
}

/// A server-speaks-first backend on a port not marked opaque, with the
/// 10 s detect timeout: its banner reaches a silent client at once (the
/// upstream connection is opened while waiting for the client), and the
/// destination is remembered, so the next connection is relayed without
/// detection: bytes that would get a 400 from the HTTP/1 server reach the
/// backend instead.
fn server_first_is_relayed_at_once(driver: IoDriver) {
    let backend = banner_backend();
    let proxy = one_worker_forward(driver, backend.addr, &[]);
    let addr = proxy.forward_addrs()[0];
    let started = Instant::now();
    let mut c = connect(addr);
    assert_eq!(read_name(&mut c), "220 banner");
    let took = started.elapsed();
    println!("{driver:?}: banner after {took:?}");
    assert!(took < Duration::from_secs(1), "banner after {took:?}");
    c.write_all(b"EHLO x\n").unwrap();
    let mut back = [0u8; 7];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"EHLO x\n");
    drop(c);
    assert_eq!(proxy.worker_stats()[0].server_first, 1);

    // Remembered: no detection, so even malformed HTTP is relayed.
    let started = Instant::now();
    let mut c = connect(addr);
    c.write_all(b"GET  / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_name(&mut c), "220 banner");
    println!(
        "{driver:?}: remembered, banner after {:?}",
        started.elapsed()
    );
    let mut back = [0u8; 19];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"GET  / HTTP/1.1\r\n\r\n");
    assert_eq!(proxy.worker_stats()[0].server_first, 2);
    drop(c);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    server_first_is_relayed_at_once,
    super::server_first_is_relayed_at_once
);

/// An HTTP server that answers a silent client with a 408 (Apache's
/// `RequestReadTimeout`, Envoy's or HAProxy's request timeout) spoke
/// first on that connection, which is relayed; but its destination is not
/// remembered as server-speaks-first: the next connection is detected (its
/// malformed request gets the proxy's 400, not a relay to the backend).
fn an_http_servers_408_is_not_server_first(driver: IoDriver) {
    let backend = Backend::start(|s| {
        let mut w = s.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        match std::io::BufRead::read_line(&mut r, &mut line) {
            Ok(n) if n > 0 => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
            }
            _ => {
                let _ = w.write_all(
                    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    let proxy = one_worker_forward(driver, backend.addr, &[]);
    let addr = proxy.forward_addrs()[0];
    let mut silent = connect(addr);
    let mut got = String::new();
    let _ = silent.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    let mut c = connect(addr);
    c.write_all(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = String::new();
    let _ = c.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");
    drop((silent, c));
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    an_http_servers_408_is_not_server_first,
    super::an_http_servers_408_is_not_server_first
);

/// An HTTP/2 server sends its SETTINGS as soon as it accepts. A client
/// that waits before its preface (past the early connect's grace) must
/// still reach the proxy's HTTP/2 server, not be relayed to the origin as a
/// server-speaks-first connection, and the destination must not be
/// remembered as one.
fn h2_servers_settings_do_not_make_it_server_first(driver: IoDriver) {
    let origin = h2::origin(None);
    // Only the proxy advertises a stream limit: whose SETTINGS the client
    // gets tells who answered.
    let streams = (
        "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_CONCURRENT_STREAMS",
        "7",
    );
    let proxy = one_worker_forward(driver, origin.addr, &[streams]);
    let addr = proxy.forward_addrs()[0];
    let slow = h2::advertised_streams_after(addr, Duration::from_millis(300));
    assert_eq!(
        slow,
        Some(7),
        "a slow HTTP/2 client reached the proxy's server"
    );
    assert_eq!(
        h2::advertised_streams(addr),
        Some(7),
        "and the next client too"
    );
    assert_eq!(proxy.worker_stats()[0].server_first, 0);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    h2_servers_settings_do_not_make_it_server_first,
    super::h2_servers_settings_do_not_make_it_server_first
);

/// A client-first backend (it only reads) and how many connections it
/// has open now.
fn client_first_backend() -> (Backend, Arc<AtomicUsize>) {
    let open = Arc::new(AtomicUsize::new(0));
    let seen = open.clone();
    let backend = Backend::start(move |mut s| {
        seen.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 1024];
        while let Ok(1..) = s.read(&mut buf) {}
        seen.fetch_sub(1, Ordering::SeqCst);
    });
    (backend, open)
}

/// Silent clients of a backend that waits for them (client-first) stay
/// undecided, each holding one upstream connection opened early; past
/// RINGMESH_DETECT_MAX_UNDECIDED the oldest are closed and counted, so the
/// upstream connections held stay at the cap.
fn silent_connections_are_capped(driver: IoDriver) {
    const CAP: usize = 20;
    const CLIENTS: usize = 50;
    let (backend, open_upstream) = client_first_backend();
    let cap = CAP.to_string();
    let proxy = one_worker_forward(
        driver,
        backend.addr,
        &[("RINGMESH_DETECT_MAX_UNDECIDED", &cap)],
    );
    let addr = proxy.forward_addrs()[0];
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(connect(addr));
        // Accepted in order, so "oldest" is well defined.
        assert!(
            eventually(Duration::from_secs(5), || proxy.worker_stats()[0].accepted
                == i as u64 + 1),
            "connection {i} not accepted"
        );
    }
    let stats = || proxy.worker_stats()[0];
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = stats();
            s.detect_evicted == (CLIENTS - CAP) as u64 && s.detect_undecided == CAP as u64
        }),
        "{:?}",
        stats()
    );
    // The upstream connections held settle at the cap (each evicted
    // connection closed its own).
    assert!(
        eventually(Duration::from_secs(5), || open_upstream
            .load(Ordering::SeqCst)
            == CAP),
        "{} upstream connections open",
        open_upstream.load(Ordering::SeqCst)
    );
    println!(
        "{driver:?}: {:?}, upstream connections open: {}",
        stats(),
        open_upstream.load(Ordering::SeqCst)
    );
    // Oldest first: the first CLIENTS - CAP were closed, the rest are open.
    for (i, c) in clients.iter_mut().enumerate() {
        if i < CLIENTS - CAP {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            assert!(
                matches!(c.read(&mut b), Ok(0) | Err(_)) && !is_timeout(c),
                "client {i} was not closed"
            );
        } else {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let r = c.read(&mut b);
            assert!(
                matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "client {i} should still be open: {r:?}"
            );
        }
    }
    drop(clients);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    silent_connections_are_capped,
    super::silent_connections_are_capped
);

/// Neither side speaking by the detect timeout: the client connection and
/// the upstream connection opened early are both closed then (a silent
/// flood holds backend connections that long at most, not for the TCP
/// idle timeout).
fn silent_on_both_sides_closed_at_detect_timeout(driver: IoDriver) {
    const CLIENTS: usize = 10;
    let (backend, open_upstream) = client_first_backend();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "500ms"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let started = std::time::Instant::now();
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    assert!(
        eventually(Duration::from_secs(5), || open_upstream
            .load(Ordering::SeqCst)
            == CLIENTS),
        "early upstream connections not opened"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(c.read(&mut b), Ok(0) | Err(_)) && !is_timeout(c),
            "client {i} not closed"
        );
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(450) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}, not at the 500 ms detect timeout"
    );
    assert!(
        eventually(Duration::from_secs(3), || open_upstream
            .load(Ordering::SeqCst)
            == 0),
        "{} upstream connections still open",
        open_upstream.load(Ordering::SeqCst)
    );
    println!("{driver:?}: silent clients closed after {closed_after:?}");
    proxy.shutdown();
}
both_drivers!(
    silent_on_both_sides_closed_at_detect_timeout,
    super::silent_on_both_sides_closed_at_detect_timeout
);

/// Whether a read on `c` times out now (i.e. it is still open and silent).
fn is_timeout(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut b = [0u8; 1];
    matches!(c.read(&mut b), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// Whatever the client sent first reaches the server byte for byte, also
/// when it arrives in pieces during detection.
fn detected_bytes_are_forwarded(driver: IoDriver) {
    let backend = Backend::echo();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let client_hello: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
    // (HTTP/1 and HTTP/2 are proxied, not relayed: engine/tests/http1.rs,
    // engine/tests/http2.rs.)
    let cases: [&[&[u8]]; 3] = [
        &[b"SET ke", b"y value\r\n"],
        &[&client_hello[..1], &client_hello[1..]],
        &[b"\x00\x01binary", b"more"],
    ];
    for pieces in cases {
        let mut c = connect(addr);
        let mut sent = Vec::new();
        for p in pieces {
            c.write_all(p).unwrap();
            sent.extend_from_slice(p);
            thread::sleep(Duration::from_millis(30));
        }
        let mut back = vec![0u8; sent.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, sent);
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    detected_bytes_are_forwarded,
    super::detected_bytes_are_forwarded
);

/// A backend that counts the connections it accepts and the bytes it
/// receives, and never answers.
fn counting_backend() -> (Backend, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let (c, b) = (conns.clone(), bytes.clone());
    let backend = Backend::start(move |mut s| {
        c.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            b.fetch_add(n, Ordering::SeqCst);
        }
    });
    (backend, conns, bytes)
}

/// Reads what the proxy answers until it closes (bounded by the read
/// timeout).
fn read_answer(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes that begin as an HTTP/1 request but do not parse are answered 400
/// by the HTTP/1 server; none of them reaches the backend (before, each was
/// relayed to it as opaque TCP).
fn malformed_http_gets_400(driver: IoDriver) {
    let (backend, _, bytes) = counting_backend();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let cases: [&[u8]; 7] = [
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
    ];
    for case in cases {
        let mut c = connect(addr);
        c.write_all(case).unwrap();
        let answer = read_answer(&mut c);
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{:?} was answered {answer:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(bytes.load(Ordering::SeqCst), 0, "the backend saw bytes");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(malformed_http_gets_400, super::malformed_http_gets_400);

/// A request line that stalls part-way is HTTP that stalled: 408 at the
/// header-read timeout from its first byte (not an opaque relay after the
/// detect timeout), and the backend sees nothing.
fn stalled_request_line_gets_408(driver: IoDriver) {
    let (backend, _, bytes) = counting_backend();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "10s"),
            ("RINGMESH_HTTP_HEADER_READ_TIMEOUT", "400ms"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    // Decided at once ("GET /"), undecided ("GE"), and a slow sender whose
    // line never ends.
    let cases: [&[&[u8]]; 3] = [&[b"GET /slow"], &[b"GE"], &[b"G", b"ET /a", b"bc"]];
    for pieces in cases {
        let mut c = connect(addr);
        let started = Instant::now();
        for p in pieces {
            c.write_all(p).unwrap();
            thread::sleep(Duration::from_millis(50));
        }
        let answer = read_answer(&mut c);
        let took = started.elapsed();
        println!("{driver:?} {pieces:?}: 408 after {took:?}");
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "{pieces:?} was answered {answer:?} after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(3),
            "{pieces:?}: 408 after {took:?}"
        );
        let _ = c.shutdown(Shutdown::Both);
    }
    assert_eq!(bytes.load(Ordering::SeqCst), 0, "the backend saw bytes");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    stalled_request_line_gets_408,
    super::stalled_request_line_gets_408
);

/// A drain does not wait for silent connections: they have no exchange in
/// flight, so they close at once instead of holding the grace period.
fn drain_closes_undecided_connections(driver: IoDriver) {
    let (backend, _, _) = counting_backend();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "10s"),
            ("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "30s"),
        ],
    );
    let mut c = connect(proxy.forward_addrs()[0]);
    assert!(eventually(Duration::from_secs(5), || undecided(&proxy) == 1));
    let started = Instant::now();
    proxy.shutdown();
    proxy.wait();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "drain took {took:?}");
    let mut b = [0u8; 1];
    assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
}
both_drivers!(
    drain_closes_undecided_connections,
    super::drain_closes_undecided_connections
);
