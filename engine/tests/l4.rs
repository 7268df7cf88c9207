//! The L4 data path through an explicit forward, on both io drivers: bulk
//! integrity, concurrency across workers, half-close, failover, snapshot
//! updates under open connections.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringmesh_engine::IoDriver;

const BULK: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

/// Writes `total` bytes of pattern `seed`.
fn send_pattern(s: &mut TcpStream, seed: u64, total: usize) {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK);
        p.fill(&mut buf[..n]);
        s.write_all(&buf[..n]).unwrap();
        left -= n;
    }
}

/// Reads exactly `total` bytes and checks them against pattern `seed`;
/// returns the FNV checksum of what arrived and of what was expected.
fn check_pattern(s: &mut TcpStream, seed: u64, total: usize) -> (u64, u64) {
    let mut p = Pattern::new(seed);
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let (mut h_got, mut h_want) = (Fnv::default(), Fnv::default());
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK);
        s.read_exact(&mut got[..n]).unwrap();
        p.fill(&mut want[..n]);
        h_got.update(&got[..n]);
        h_want.update(&want[..n]);
        left -= n;
    }
    (h_got.0, h_want.0)
}

fn bulk_both_ways(driver: IoDriver) {
    bulk_with(driver, "false");
}
both_drivers!(bulk_64mib_each_way, super::bulk_both_ways);

fn bulk_both_ways_spliced(driver: IoDriver) {
    bulk_with(driver, "true");
}
both_drivers!(bulk_64mib_each_way_spliced, super::bulk_both_ways_spliced);

fn bulk_with(driver: IoDriver, splice: &str) {
    // The backend checks the client's stream, sends its own, then reports
    // the checksums of what it received and what it expected.
    let backend = Backend::start(|mut s| {
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || send_pattern(&mut w, 2, BULK));
        let (got, want) = check_pattern(&mut s, 1, BULK);
        let mut rest = [0u8; 1];
        assert_eq!(
            s.read(&mut rest).unwrap(),
            0,
            "client sent more than expected"
        );
        writer.join().unwrap();
        s.write_all(&got.to_le_bytes()).unwrap();
        s.write_all(&want.to_le_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("RINGMESH_TCP_SPLICE", splice),
        ],
    );
    let addr = proxy.forward_addrs()[0];

    let started = Instant::now();
    let mut c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        send_pattern(&mut w, 1, BULK);
        // Half-close: the reply must still arrive after our FIN.
        w.shutdown(Shutdown::Write).unwrap();
    });
    let (got, want) = check_pattern(&mut c, 2, BULK);
    writer.join().unwrap();
    let mut report = [0u8; 16];
    c.read_exact(&mut report).unwrap();
    let mut end = [0u8; 1];
    assert_eq!(
        c.read(&mut end).unwrap(),
        0,
        "expected EOF after the report"
    );
    let backend_got = u64::from_le_bytes(report[..8].try_into().unwrap());
    let backend_want = u64::from_le_bytes(report[8..].try_into().unwrap());
    assert_eq!(got, want, "server→client checksum");
    assert_eq!(backend_got, backend_want, "client→server checksum");
    eprintln!(
        "{} (splice {splice}): 64 MiB each way in {:?}, checksums {got:016x} / {backend_got:016x}",
        driver_name(driver),
        started.elapsed()
    );
    proxy.shutdown();
    proxy.wait();
}

fn concurrent_connections(driver: IoDriver) {
    const N: usize = 500;
    let backend = Backend::echo();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(driver, &[("RINGMESH_TCP_FORWARD", &fwd)]);
    assert_eq!(proxy.workers(), 2);
    let addr = proxy.forward_addrs()[0];

    // All N are connected and have echoed once before any closes.
    let barrier = Arc::new(Barrier::new(N + 1));
    // A client that fails still takes part in both barrier rounds, so a
    // failure is reported instead of hanging the test.
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let barrier = barrier.clone();
            thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || -> Result<(), String> {
                    let mut c = connect(addr);
                    let msg = format!("hello from client {i}\n");
                    let mut back = vec![0u8; msg.len()];
                    let first = c
                        .write_all(msg.as_bytes())
                        .and_then(|()| c.read_exact(&mut back))
                        .map_err(|e| format!("client {i}: {e}"));
                    barrier.wait();
                    barrier.wait();
                    first?;
                    if back != msg.as_bytes() {
                        return Err(format!("client {i}: echo mismatch"));
                    }
                    c.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                    let mut rest = Vec::new();
                    c.read_to_end(&mut rest).map_err(|e| e.to_string())?;
                    if !rest.is_empty() {
                        return Err(format!("client {i}: unexpected bytes"));
                    }
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    barrier.wait();
    let during = proxy.worker_stats();
    barrier.wait();
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {N} clients failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!(
        "{}: per-worker while {N} were open: {during:?}",
        driver_name(driver)
    );
    assert_eq!(during.len(), 2);
    assert_eq!(during.iter().map(|s| s.open).sum::<u64>(), N as u64);
    assert_eq!(during.iter().map(|s| s.accepted).sum::<u64>(), N as u64);
    for s in &during {
        // The kernel hashes connections over the SO_REUSEPORT group; with
        // 500 connections each worker gets a substantial share.
        assert!(
            s.accepted >= N as u64 / 10,
            "worker {} got only {} of {N}",
            s.worker,
            s.accepted
        );
    }
    assert!(eventually(Duration::from_secs(5), || proxy
        .worker_stats()
        .iter()
        .all(|s| s.open == 0)));
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    concurrent_500_over_both_workers,
    super::concurrent_connections
);

fn half_close(driver: IoDriver) {
    half_close_with(driver, "false");
}

fn half_close_spliced(driver: IoDriver) {
    half_close_with(driver, "true");
}
both_drivers!(
    half_close_spliced_keeps_the_other_direction,
    super::half_close_spliced
);

fn half_close_with(driver: IoDriver, splice: &str) {
    // The server reads the whole request (until FIN), waits, then answers.
    let backend = Backend::start(|mut s| {
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        thread::sleep(Duration::from_millis(200));
        s.write_all(format!("got {} bytes\n", req.len()).as_bytes())
            .unwrap();
        s.write_all(&vec![b'x'; 100_000]).unwrap();
    });
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("RINGMESH_TCP_SPLICE", splice),
        ],
    );
    let mut c = connect(proxy.forward_addrs()[0]);
    c.write_all(&[b'q'; 5000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let head = b"got 5000 bytes\n";
    assert_eq!(&resp[..head.len()], head);
    assert_eq!(resp.len(), head.len() + 100_000);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(half_close_keeps_the_other_direction, super::half_close);

fn failover(driver: IoDriver) {
    let dir = TempDir::new("l4");
    let live = Backend::named("live");
    let (_held, dead) = refusing_port();
    let file = dir.join("discovery.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"db.test:5432\"\nendpoints = [\"{dead}\", \"{}\"]\n",
            live.addr
        ),
    )
    .unwrap();
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=db.test:5432"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    for _ in 0..20 {
        let mut c = connect(addr);
        assert_eq!(read_name(&mut c), "live");
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(failover_to_a_live_endpoint, super::failover);

fn all_down(driver: IoDriver) {
    let dir = TempDir::new("l4");
    let file = dir.join("discovery.toml");
    let [a, b] = closed_ports();
    std::fs::write(
        &file,
        format!("[[service]]\nname = \"db.test:5432\"\nendpoints = [\"{a}\", \"{b}\"]\n"),
    )
    .unwrap();
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=db.test:5432"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "1s"),
        ],
    );
    let started = Instant::now();
    let mut c = connect(proxy.forward_addrs()[0]);
    let mut buf = [0u8; 16];
    // Closed (EOF or reset), promptly: well under timeout × endpoints.
    let r = c.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "expected the connection closed, got {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(all_endpoints_down_closes_promptly, super::all_down);

/// linkerd2-proxy's outbound TCP queue: a connection to a service with no
/// endpoint waits (up to `LINKERD2_PROXY_OUTBOUND_TCP_FAILFAST_TIMEOUT`,
/// 3 s) for one rather than being closed, and is relayed when one appears;
/// past the timeout it is closed, and the service fails fast.
fn waits_for_endpoints(driver: IoDriver) {
    let dir = TempDir::new(&format!("l4-queue-{}", driver_name(driver)));
    let echo = Backend::echo();
    let file = service_file(&dir, "db.test:5432", &[], "");
    let start = |more: &[(&str, &str)]| {
        let mut vars = vec![
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=db.test:5432"),
            ("RINGMESH_OUTBOUND_OPAQUE_PORTS", "5432"),
            ("RINGMESH_DISCOVERY_STATIC", file.as_str()),
            ("RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL", "50ms"),
        ];
        vars.extend_from_slice(more);
        start_proxy(driver, &vars)
    };
    let proxy = start(&[]);
    let mut c = connect(proxy.forward_addrs()[0]);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"hello").unwrap();
    thread::sleep(Duration::from_millis(500));
    service_file(&dir, "db.test:5432", &[echo.addr], "");
    let mut back = [0u8; 5];
    c.read_exact(&mut back)
        .expect("the connection waited for an endpoint and was relayed");
    assert_eq!(&back, b"hello");
    drop((c, proxy));

    service_file(&dir, "db.test:5432", &[], "");
    let proxy = start(&[("LINKERD2_PROXY_OUTBOUND_TCP_FAILFAST_TIMEOUT", "300ms")]);
    let started = Instant::now();
    let mut c = connect(proxy.forward_addrs()[0]);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = c.read(&mut back);
    let waited = started.elapsed();
    assert!(matches!(r, Ok(0) | Err(_)), "expected a close, got {r:?}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    drop(proxy);
}
both_drivers!(
    tcp_to_a_service_without_endpoints_waits_for_one,
    super::waits_for_endpoints
);

fn snapshot_update(driver: IoDriver) {
    let dir = TempDir::new("l4");
    let file = dir.join("discovery.toml");
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let write = |addr| {
        // Write a new file and rename it into place, as editors and config
        // management do.
        let tmp = dir.join("discovery.toml.tmp");
        std::fs::write(
            &tmp,
            format!("[[service]]\nname = \"web.test:80\"\nendpoints = [\"{addr}\"]\n"),
        )
        .unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(a.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL", "50ms"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let mut open: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut c = connect(addr);
            assert_eq!(read_name(&mut c), "a");
            c
        })
        .collect();
    write(b.addr);
    assert!(
        eventually(Duration::from_secs(5), || read_name(&mut connect(addr))
            == "b"),
        "new connections never moved to the new endpoint"
    );
    // Every new connection now goes to b, on both workers.
    for _ in 0..20 {
        assert_eq!(read_name(&mut connect(addr)), "b");
    }
    // The connections opened before the change still work.
    for (i, c) in open.iter_mut().enumerate() {
        let msg = format!("still here {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    // A bad edit is ignored: the last good snapshot stays.
    std::fs::write(
        &file,
        "[[service]]\nname = \"web.test:80\"\nendpoints = [\"not an address\"]\n",
    )
    .unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(read_name(&mut connect(addr)), "b");
    drop(open);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    snapshot_update_reroutes_new_and_keeps_open,
    super::snapshot_update
);

fn not_redirected(driver: IoDriver) {
    let app = Backend::named("app");
    let target = app.addr.to_string();
    // Outbound and inbound listeners on ephemeral ports; no iptables here, so
    // connections arrive with no original destination.
    let proxy = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_INBOUND_TARGET", &target),
        ],
    );
    // Outbound: never looped back into the proxy; closed.
    let mut c = connect(proxy.outbound_addr().unwrap());
    let mut buf = [0u8; 8];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    // Inbound: sent to RINGMESH_INBOUND_TARGET.
    let mut c = connect(proxy.inbound_addr().unwrap());
    assert_eq!(read_name(&mut c), "app");
    drop(c);
    proxy.shutdown();
    proxy.wait();

    // Inbound without a target: closed.
    let proxy = start_proxy(
        driver,
        &[("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0")],
    );
    let mut c = connect(proxy.inbound_addr().unwrap());
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(not_redirected_connections, super::not_redirected);

/// An opaque service whose endpoints are this proxy's own listeners, as
/// Linux would connect them (unspecified, IPv4-mapped): refused, never
/// connected (a gateway's opaque sessions go this way: a remote client
/// reached the admin server as a loopback client, or the outbound proxy).
fn opaque_endpoints_that_are_this_proxy_are_refused(driver: IoDriver) {
    let dir = TempDir::new(&format!("l4-opaque-loop-{}", driver_name(driver)));
    let (out, admin) = (closed_port(), closed_port());
    let endpoints: Vec<SocketAddr> = [
        format!("0.0.0.0:{}", admin.port()),
        format!("[::ffff:127.0.0.1]:{}", admin.port()),
        // (And the admin address as written: the IPv4-mapped one above is
        // it, so the static file refuses both listed.)
        format!("0.0.0.0:{}", out.port()),
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let file = service_file(&dir, "loop.test:80", &endpoints, "protocol = \"opaque\"");
    let proxy = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", &out.to_string()),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin.to_string()),
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=loop.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", file.as_str()),
        ],
    );
    for _ in 0..3 {
        let mut c = connect(proxy.forward_addrs()[0]);
        c.write_all(b"PUT /proxy-log-level HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\ntrace")
            .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.is_empty(), "reached this proxy: {answer}");
    }
    let stats = proxy.worker_stats();
    assert_eq!(
        stats.iter().map(|s| s.accepted).sum::<u64>(),
        3,
        "{stats:?}"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    opaque_service_endpoints_that_are_this_proxy_are_refused,
    super::opaque_endpoints_that_are_this_proxy_are_refused
);

fn forward_loop_refused(driver: IoDriver) {
    // Forwards whose target is the proxy's own outbound listener, or its
    // admin server, named as Linux would still connect them back here: as
    // they are, unspecified (`0.0.0.0` is this host), IPv4-mapped.
    let (out, admin) = (closed_port(), closed_port());
    let targets = [
        out.to_string(),
        format!("0.0.0.0:{}", out.port()),
        format!("[::ffff:127.0.0.1]:{}", out.port()),
        format!("0.0.0.0:{}", admin.port()),
        format!("[::ffff:127.0.0.1]:{}", admin.port()),
    ];
    let fwd: Vec<String> = targets.iter().map(|t| format!("127.0.0.1:0={t}")).collect();
    let proxy = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", &out.to_string()),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin.to_string()),
            ("RINGMESH_TCP_FORWARD", &fwd.join(",")),
        ],
    );
    for (addr, target) in proxy.forward_addrs().iter().zip(&targets) {
        // An admin request a loopback client may make: never reaches it
        // as one.
        let mut c = connect(*addr);
        c.write_all(b"PUT /proxy-log-level HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\ntrace")
            .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 502"),
            "to {target}: {answer}"
        );
    }
    let stats = proxy.worker_stats();
    // Only the forwards' connections were accepted: nothing looped.
    assert_eq!(
        stats.iter().map(|s| s.accepted).sum::<u64>(),
        targets.len() as u64,
        "{stats:?}"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    forward_to_own_listener_is_refused,
    super::forward_loop_refused
);
