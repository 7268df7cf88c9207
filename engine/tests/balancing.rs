//! Latency-aware balancing end to end: real HTTP/1 backends on loopback, one
//! of them slow, a bounded load through the proxy.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringmesh_engine::IoDriver;

/// A keep-alive HTTP/1.1 backend that answers every request with its
/// `name` (one byte) after `delay`.
fn backend(name: u8, delay: Duration) -> Backend {
    switchable(name, delay, Arc::new(AtomicBool::new(false)))
}

/// As [`backend`], answering 503 while `failing` is set.
fn switchable(name: u8, delay: Duration, failing: Arc<AtomicBool>) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut line = String::new();
            // Request head: lines until the empty one.
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            thread::sleep(delay);
            let status: &[u8] = if failing.load(Ordering::Relaxed) {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"
            };
            let resp = [status, &[name]].concat();
            if w.write_all(&resp).is_err() {
                return;
            }
        }
    })
}

/// `clients` keep-alive clients for `secs`: latencies and hits per backend.
fn load(addr: SocketAddr, clients: usize, secs: u64) -> (Vec<Duration>, [usize; 3]) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let c = connect(addr);
                c.set_nodelay(true).unwrap();
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                let (mut lat, mut hits) = (Vec::new(), [0usize; 3]);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    w.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
                        .unwrap();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut name = [0u8; 1];
                    r.read_exact(&mut name).unwrap();
                    lat.push(t.elapsed());
                    hits[usize::from(name[0] - b'a')] += 1;
                }
                (lat, hits)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut hits) = (Vec::new(), [0usize; 3]);
    for h in handles {
        let (l, n) = h.join().unwrap();
        all.extend(l);
        for i in 0..3 {
            hits[i] += n[i];
        }
    }
    all.sort();
    (all, hits)
}

fn p99(lat: &[Duration]) -> Duration {
    lat[lat.len() * 99 / 100]
}

fn proxy_to(driver: IoDriver, backends: &[&Backend], tag: &str) -> ringmesh_engine::Proxy {
    let dir = std::env::temp_dir().join(format!("ringmesh-balancing-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("d.toml");
    let eps: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"web.test:80\"\nendpoints = [{}]\n",
            eps.join(", ")
        ),
    )
    .unwrap();
    start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    )
}

/// Three backends, one 50 ms slower: at least 85% of requests go to the
/// fast two, and p99 stays within 2× the all-fast baseline. Baseline and
/// mixed runs alternate (three times each, the best p99 of each kept) so
/// machine noise hits both; both drivers run in this one test, one after the other,
/// so they do not disturb each other's latencies.
#[test]
fn slow_backend_is_avoided() {
    for driver in [IoDriver::Uring, IoDriver::Epoll] {
        let fast = Duration::from_micros(200);
        let (a, b, c) = (
            backend(b'a', fast),
            backend(b'b', fast),
            backend(b'c', fast),
        );
        let slow = backend(b'c', Duration::from_millis(50));
        let baseline = proxy_to(driver, &[&a, &b, &c], "fast");
        let mixed = proxy_to(driver, &[&a, &b, &slow], "mixed");
        let (mut base_p99, mut mixed_p99) = (Duration::MAX, Duration::MAX);
        let mut hits = [0usize; 3];
        for _ in 0..3 {
            let (lat, _) = load(baseline.forward_addrs()[0], 8, 1);
            base_p99 = base_p99.min(p99(&lat));
            let (lat, h) = load(mixed.forward_addrs()[0], 8, 1);
            mixed_p99 = mixed_p99.min(p99(&lat));
            for i in 0..3 {
                hits[i] += h[i];
            }
        }
        let total: usize = hits.iter().sum();
        let fast_share = (hits[0] + hits[1]) as f64 / total as f64;
        eprintln!(
            "{driver:?}: {total} requests {hits:?}, fast share {fast_share:.4}; p99 {mixed_p99:?} vs all-fast {base_p99:?}"
        );
        assert!(fast_share >= 0.85, "{driver:?}: {hits:?}");
        assert!(
            mixed_p99 <= base_p99 * 2,
            "{driver:?}: p99 {mixed_p99:?} vs all-fast {base_p99:?}"
        );
        for p in [baseline, mixed] {
            p.shutdown();
            p.wait();
        }
    }
}

/// Runs `clients` keep-alive clients until `stop` is set; every answer is
/// reported as (when, was it a 503, which backend).
fn answers(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<(Instant, bool, u8)>>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let conn = connect(addr);
                conn.set_nodelay(true).unwrap();
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    w.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
                        .unwrap();
                    let mut status = String::new();
                    r.read_line(&mut status).unwrap();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut name = [0u8; 1];
                    r.read_exact(&mut name).unwrap();
                    seen.push((Instant::now(), status.contains(" 503 "), name[0]));
                }
                seen
            })
        })
        .collect()
}

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

    // 4 clients for 300 ms: c answers 503 until its seventh failure in a
    // row ejects it (a few requests already sent to it may still fail),
    // then, for the rest of its first backoff (>= 500 ms), nothing reaches it.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 4, stop.clone());
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
    let clients = answers(addr, 4, stop.clone());
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

/// A backend (nginx) killed with SIGKILL in the middle of a bounded wrk
/// run: fewer than 0.1% of requests fail (stale pooled connections are
/// retried on a fresh one, refused connects fail over to another endpoint)
/// and the dead endpoint is ejected so traffic moves to the others.
#[test]
fn killed_backend_costs_almost_nothing() {
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("ringmesh-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| closed_port().port()).collect();
    let mut nginx = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let conf = dir.join(format!("n{i}.conf"));
        let tmp = dir.join(format!("t{i}"));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1; daemon off; pid {d}/n{i}.pid; error_log {d}/n{i}.err warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; keepalive_requests 100000000;\n\
                 client_body_temp_path {t}/b; proxy_temp_path {t}/p; fastcgi_temp_path {t}/f; uwsgi_temp_path {t}/u; scgi_temp_path {t}/s;\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"n{i}\"; }} }} }}\n",
                d = dir.display(),
                t = tmp.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed");
        nginx.push(child);
    }
    for port in &ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        assert!(
            eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "nginx on {port} did not start"
        );
    }
    let file = dir.join("d.toml");
    let eps: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"web.test:80\"\nendpoints = [{}]\n",
            eps.join(", ")
        ),
    )
    .unwrap();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
        ],
    );
    let url = format!("http://{}/", proxy.forward_addrs()[0]);
    let wrk = Command::new("timeout")
        .args(["30", "wrk", "-t1", "-c20", "-d4s", &url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("wrk is installed");
    thread::sleep(Duration::from_millis(1500));
    // SIGKILL the master and its worker: connections die mid-stream.
    let victim = &mut nginx[0];
    let pid = victim.id();
    let _ = Command::new("pkill")
        .args(["-KILL", "-P", &pid.to_string()])
        .status();
    victim.kill().unwrap();
    let _ = victim.wait();
    let dead = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(
            dead
        )
        .is_err()),
        "the victim is really gone"
    );
    let out = wrk.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for mut n in nginx.into_iter().skip(1) {
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &n.id().to_string()])
            .status();
        let _ = n.kill();
        let _ = n.wait();
    }
    let requests: u64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{text}"));
    let mut failed: u64 = 0;
    for l in text.lines() {
        if let Some(n) = l.trim().strip_prefix("Non-2xx or 3xx responses:") {
            failed += n.trim().parse::<u64>().unwrap();
        }
        if let Some(rest) = l.trim().strip_prefix("Socket errors:") {
            failed += rest
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    eprintln!("{requests} requests, {failed} failed\n{text}");
    assert!(requests > 1000, "{text}");
    assert!(
        failed * 1000 < requests,
        "{failed} of {requests} failed:\n{text}"
    );
    proxy.shutdown();
    proxy.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
