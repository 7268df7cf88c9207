//! An upstream's bytes that answer no request never reach a client: a
//! second response for one request, a body on a 204/304 or on a HEAD
//! answer, bytes arriving while the connection idles in the pool, and an
//! upstream closing an idle pooled connection. Raw-socket backends play
//! the broken server; several keep-alive clients (spread over both
//! workers) each check that every response is their own.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use ringmesh_engine::{IoDriver, Proxy};

/// What the backend sends after (or instead of the body of) each response.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// A second complete response, in the same write.
    SecondResponse,
    /// A 204 followed by a response's bytes.
    BodyOn204,
    /// A 304 followed by a response's bytes.
    BodyOn304,
    /// A HEAD answer with a content-length, followed by that many bytes.
    BodyOnHead,
    /// A correct response; a stray response 5 ms later.
    LateBytes,
    /// A correct response; the connection closed 5 ms later.
    LateClose,
}

/// What a confused proxy would hand to the next request.
const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nx-path: /stray\r\ncontent-length: 5\r\n\r\nSTRAY";

/// `late` counts the late writes (stray bytes or closes) done.
fn backend(m: Misbehaviour, late: Arc<AtomicUsize>) -> Backend {
    Backend::start(move |s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        loop {
            let Some((method, path)) = read_request(&mut r) else {
                return;
            };
            let own = |status: &str| {
                format!(
                    "HTTP/1.1 {status}\r\nx-path: {path}\r\ncontent-length: {}\r\n\r\n{path}",
                    path.len()
                )
            };
            let mut out = Vec::new();
            match m {
                Misbehaviour::SecondResponse => {
                    out.extend_from_slice(own("200 OK").as_bytes());
                    out.extend_from_slice(STRAY);
                }
                Misbehaviour::BodyOn204 | Misbehaviour::BodyOn304 => {
                    let status = match m {
                        Misbehaviour::BodyOn204 => "204 No Content",
                        _ => "304 Not Modified",
                    };
                    out.extend_from_slice(
                        format!("HTTP/1.1 {status}\r\nx-path: {path}\r\n\r\n").as_bytes(),
                    );
                    out.extend_from_slice(STRAY);
                }
                Misbehaviour::BodyOnHead => {
                    assert_eq!(method, "HEAD");
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 200 OK\r\nx-path: {path}\r\ncontent-length: {}\r\n\r\n",
                            STRAY.len()
                        )
                        .as_bytes(),
                    );
                    out.extend_from_slice(STRAY);
                }
                Misbehaviour::LateBytes | Misbehaviour::LateClose => {
                    out.extend_from_slice(own("200 OK").as_bytes());
                }
            }
            if w.write_all(&out).is_err() {
                return;
            }
            match m {
                Misbehaviour::LateBytes => {
                    thread::sleep(Duration::from_millis(5));
                    let written = w.write_all(STRAY).is_ok();
                    late.fetch_add(1, Ordering::SeqCst);
                    if !written {
                        return;
                    }
                }
                Misbehaviour::LateClose => {
                    thread::sleep(Duration::from_millis(5));
                    drop((r, w));
                    late.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                _ => {}
            }
        }
    })
}

/// Method and target of the next request head; `None` at EOF.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some((method, path));
        }
    }
}

/// The `x-path` of the next response on `r` (status line, headers, and a
/// content-length body unless `bodiless`).
fn response_path(r: &mut BufReader<TcpStream>, bodiless: bool) -> String {
    let mut path = None;
    let mut len = 0usize;
    let mut status = String::new();
    r.read_line(&mut status).expect("a response");
    assert!(
        status.starts_with("HTTP/1.1 "),
        "not a response: {status:?}"
    );
    loop {
        let mut h = String::new();
        assert!(r.read_line(&mut h).unwrap() > 0, "EOF in a response head");
        if h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("x-path:") {
            path = Some(v.trim().to_string());
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    if !bodiless {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
    }
    path.unwrap_or_else(|| panic!("response without x-path: {status:?}"))
}

/// The body of the next response on `r`, which must be a 200 with a
/// content-length.
fn read_ok_body(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    let mut len = 0;
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
    body
}

fn proxy_to(driver: IoDriver, b: &Backend) -> (Proxy, SocketAddr) {
    let fwd = format!("127.0.0.1:0={}", b.addr);
    let proxy = start_proxy(driver, &[("RINGMESH_TCP_FORWARD", fwd.as_str())]);
    let addr = proxy.forward_addrs()[0];
    (proxy, addr)
}

const CLIENTS: usize = 6;
const ROUNDS: usize = 12;

/// `CLIENTS` keep-alive connections (spread over both workers) take turns,
/// `ROUNDS` requests each, so each request meets the upstream connection
/// the previous one (often another client's) left in the pool; every
/// answer must be the client's own. For the late variants, each request
/// waits until the backend has sent its late bytes for every earlier one
/// (then 20 ms more), so they sit in an idle pooled connection.
fn own_answers_only(driver: IoDriver, m: Misbehaviour) {
    let late = Arc::new(AtomicUsize::new(0));
    let b = backend(m, late.clone());
    let (proxy, addr) = proxy_to(driver, &b);
    let (method, bodiless) = match m {
        Misbehaviour::BodyOnHead => ("HEAD", true),
        Misbehaviour::BodyOn204 | Misbehaviour::BodyOn304 => ("GET", true),
        _ => ("GET", false),
    };
    // Connected just before their first request: a silent client would
    // meet the (short, in tests) detect timeout and be relayed as opaque.
    let mut clients: Vec<(BufReader<TcpStream>, TcpStream)> = Vec::new();
    let mut answered = 0;
    for i in 0..ROUNDS {
        for c in 0..CLIENTS {
            if i == 0 {
                let s = connect(addr);
                clients.push((BufReader::new(s.try_clone().unwrap()), s));
            }
            let (r, w) = &mut clients[c];
            if matches!(m, Misbehaviour::LateBytes) {
                assert!(eventually(Duration::from_secs(5), || {
                    late.load(Ordering::SeqCst) >= answered
                }));
                thread::sleep(Duration::from_millis(20));
            }
            let path = format!("/c{c}-r{i}");
            write!(w, "{method} {path} HTTP/1.1\r\nhost: stray.test\r\n\r\n").unwrap();
            let got = response_path(r, bodiless);
            assert_eq!(got, path, "client {c} got another answer ({m:?})");
            answered += 1;
        }
    }
    let stray: u64 = proxy
        .worker_stats()
        .iter()
        .map(|s| s.http1_stray_bytes)
        .sum();
    assert!(
        stray > 0,
        "the stray bytes were not noticed and counted ({m:?})"
    );
    proxy.shutdown();
}

fn second_response(driver: IoDriver) {
    own_answers_only(driver, Misbehaviour::SecondResponse);
}
both_drivers!(second_response_reaches_nobody, super::second_response);

fn body_on_204(driver: IoDriver) {
    own_answers_only(driver, Misbehaviour::BodyOn204);
}
both_drivers!(body_on_204_reaches_nobody, super::body_on_204);

fn body_on_304(driver: IoDriver) {
    own_answers_only(driver, Misbehaviour::BodyOn304);
}
both_drivers!(body_on_304_reaches_nobody, super::body_on_304);

fn body_on_head(driver: IoDriver) {
    own_answers_only(driver, Misbehaviour::BodyOnHead);
}
both_drivers!(body_on_head_answer_reaches_nobody, super::body_on_head);

/// The stray bytes come 5 ms after the response, while the connection is
/// idle in the pool; the next request comes some 20 ms later, well inside
/// the 250 ms the pool once trusted a connection without looking.
fn late_bytes(driver: IoDriver) {
    own_answers_only(driver, Misbehaviour::LateBytes);
}
both_drivers!(late_bytes_kill_the_idle_connection, super::late_bytes);

/// An upstream that closes an idle pooled connection: on io_uring the
/// armed receive sees the EOF and the connection is closed at once,
/// before any request wants it; on epoll the take notices. No request
/// fails either way.
fn late_close(driver: IoDriver) {
    let late = Arc::new(AtomicUsize::new(0));
    let b = backend(Misbehaviour::LateClose, late.clone());
    let (proxy, addr) = proxy_to(driver, &b);
    let closed = |p: &Proxy| -> u64 { p.worker_stats().iter().map(|s| s.http1_pool_closed).sum() };
    let s = connect(addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for i in 0..5 {
        let path = format!("/r{i}");
        write!(w, "GET {path} HTTP/1.1\r\nhost: stray.test\r\n\r\n").unwrap();
        assert_eq!(response_path(&mut r, false), path);
        if driver == IoDriver::Uring {
            assert!(
                eventually(Duration::from_secs(2), || closed(&proxy) > i as u64),
                "the idle connection's EOF was not noticed while it idled"
            );
        } else {
            assert!(eventually(Duration::from_secs(5), || {
                late.load(Ordering::SeqCst) > i
            }));
        }
    }
    assert!(closed(&proxy) >= 4, "closed idle connections not counted");
    proxy.shutdown();
}
both_drivers!(idle_close_is_noticed, super::late_close);

/// A provided-buffer ring that runs dry (2 buffers; HTTP/1 clients'
/// receives between requests and the pool's idle watches share it) makes
/// a pooled connection's receive end with ENOBUFS: nothing was read, so it
/// is no stray byte and the connection stays pooled. Before the fix every
/// such connection was closed and counted as stray (42 792 in 3 s of wrk).
fn dry_ring(driver: IoDriver) {
    let origin = common::http::origin("o");
    let fwd = format!("127.0.0.1:0={}", origin.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", fwd.as_str()),
            ("RINGMESH_TCP_RING_BUFFERS", "2"),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let clients: Vec<_> = (0..32)
        .map(|_| {
            thread::spawn(move || {
                let s = connect(addr);
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let end = std::time::Instant::now() + Duration::from_secs(2);
                let mut n = 0;
                while n < 300 && std::time::Instant::now() < end {
                    w.write_all(b"GET /hello HTTP/1.1\r\nhost: ring.test\r\n\r\n")
                        .unwrap();
                    read_ok_body(&mut r);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let done: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let stray: u64 = proxy
        .worker_stats()
        .iter()
        .map(|s| s.http1_stray_bytes)
        .sum();
    eprintln!("{done} requests, {stray} upstream connections closed as stray");
    assert!(done > 0);
    assert_eq!(stray, 0, "a dry ring was taken for stray bytes");
    proxy.shutdown();
}
both_drivers!(a_dry_ring_is_no_stray_bytes, super::dry_ring);

/// One keep-alive client alternates small responses (read whole with the
/// head) and 1 MiB ones that trickle in (the upstream's receive is stopped
/// for the body, which streams with plain reads): every body arrives
/// intact, nothing is taken for stray bytes, and the one upstream
/// connection is reused throughout (its receive re-armed each time it goes
/// back to the pool).
fn mixed_sizes(driver: IoDriver) {
    const BIG: usize = 1 << 20;
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let b = Backend::start(move |s| {
        counted.fetch_add(1, Ordering::SeqCst);
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        while let Some((_, path)) = read_request(&mut r) {
            let len = if path.starts_with("/big") {
                BIG
            } else {
                path.len()
            };
            let head =
                format!("HTTP/1.1 200 OK\r\nx-path: {path}\r\ncontent-length: {len}\r\n\r\n");
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            if len == BIG {
                let mut p = Pattern::new(len as u64);
                let mut chunk = vec![0u8; 64 * 1024];
                for _ in 0..BIG / chunk.len() {
                    p.fill(&mut chunk);
                    if w.write_all(&chunk).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            } else if w.write_all(path.as_bytes()).is_err() {
                return;
            }
        }
    });
    let fwd = format!("127.0.0.1:0={}", b.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", fwd.as_str()),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    let s = connect(proxy.forward_addrs()[0]);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for i in 0..10 {
        let path = if i % 2 == 1 {
            format!("/big{i}")
        } else {
            format!("/s{i}")
        };
        write!(w, "GET {path} HTTP/1.1\r\nhost: mixed.test\r\n\r\n").unwrap();
        let body = read_ok_body(&mut r);
        let len = body.len();
        if len == BIG {
            let mut want = vec![0u8; BIG];
            let mut p = Pattern::new(BIG as u64);
            for c in want.chunks_mut(64 * 1024) {
                p.fill(c);
            }
            assert!(body == want, "big body {i} corrupted");
        } else {
            assert_eq!(body, path.as_bytes());
        }
    }
    let stats = proxy.worker_stats();
    let stray: u64 = stats.iter().map(|s| s.http1_stray_bytes).sum();
    let closed: u64 = stats.iter().map(|s| s.http1_pool_closed).sum();
    assert_eq!((stray, closed), (0, 0), "a healthy connection was dropped");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the upstream connection was not reused after a streamed body"
    );
    proxy.shutdown();
}
both_drivers!(streamed_bodies_keep_the_connection, super::mixed_sizes);

/// An upstream that speaks right after its 101 (a separate write): those bytes may already be in the connection's receive when the
/// tunnel starts; they reach the client first, in order, and the tunnel
/// works both ways. Twenty connections, to meet the race both ways.
fn bytes_after_101(driver: IoDriver) {
    let b = Backend::start(|s| {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        if read_request(&mut r).is_none() {
            return;
        }
        let _ = w.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        );
        let _ = w.write_all(b"server-first;");
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            if w.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let (proxy, addr) = proxy_to(driver, &b);
    for i in 0..20 {
        let s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        w.write_all(
            b"GET /ws HTTP/1.1\r\nhost: ws.test\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        )
        .unwrap();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
        }
        let mut first = [0u8; 13];
        r.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"server-first;", "connection {i}");
        let msg = format!("ping {i}");
        w.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        r.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes(), "connection {i}");
    }
    proxy.shutdown();
}
both_drivers!(bytes_after_101_reach_the_client, super::bytes_after_101);
