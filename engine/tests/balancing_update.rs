//! Discovery updates while HTTP requests flow: endpoints added to the
//! static file start taking requests, removed ones stop, and no request
//! fails on the way (issue 7). POSTs, so no retry can hide a failure.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::lb::{answers, backend};
use common::*;
use ringmesh_engine::IoDriver;

/// Up to three rounds, each with a new proxy and backends. What no noise
/// excuses (a failed request, a request to `c` before it was added or to
/// `a` after its removal had settled) fails at once; what depends on the
/// balancer's fairness (the added endpoint taking requests, both survivors
/// taking some after the removal) must hold in one round. A peak-EWMA
/// estimate holds a scheduling hiccup's peak for seconds, and with two
/// endpoints P2C then sends everything to the other one: one round can be
/// spoiled by noise, not three.
fn update_under_load(driver: IoDriver) {
    let mut fair = Vec::new();
    for round in 0..3 {
        match update_round(driver, round) {
            Ok(()) => return,
            Err(why) => fair.push(why),
        }
    }
    panic!("no round balanced as expected: {fair:#?}");
}

/// One round; `Err` says which fairness check failed.
fn update_round(driver: IoDriver, round: usize) -> Result<(), String> {
    let delay = Duration::from_micros(200);
    let (a, b, c) = (
        backend(b'a', delay),
        backend(b'b', delay),
        backend(b'c', delay),
    );
    let dir = TempDir::new(&format!("update-{}-{round}", driver_name(driver)));
    let write = |eps: &[&Backend]| {
        let eps: Vec<_> = eps.iter().map(|b| b.addr).collect();
        service_file(&dir, "web.test:80", &eps, "")
    };
    let file = write(&[&a, &b]);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL", "50ms"),
        ],
    );
    let addr = proxy.forward_addrs()[0];

    let stop = Arc::new(AtomicBool::new(false));
    let clients = answers(addr, 6, stop.clone(), true);
    thread::sleep(Duration::from_millis(400));
    write(&[&a, &b, &c]);
    let added = Instant::now();
    thread::sleep(Duration::from_millis(800));
    write(&[&b, &c]);
    let removed = Instant::now();
    thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    // A client whose request failed would have panicked reading it.
    let seen: Vec<(Instant, bool, u8)> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("no request failed"))
        .collect();
    proxy.shutdown();
    proxy.wait();

    assert!(seen.len() > 1000, "{} answers", seen.len());
    assert!(
        seen.iter().all(|(_, bad, _)| !bad),
        "no request failed across the updates"
    );
    let before: Vec<u8> = seen
        .iter()
        .filter(|(t, _, _)| *t < added)
        .map(|(_, _, n)| *n)
        .collect();
    assert!(before.iter().all(|n| *n != b'c'), "c was not there yet");
    // Polling every 50 ms: well within 300 ms every worker has the new set.
    let settled = removed + Duration::from_millis(300);
    let late: Vec<u8> = seen
        .iter()
        .filter(|(t, _, _)| *t > settled)
        .map(|(_, _, n)| *n)
        .collect();
    assert!(late.len() > 100, "{} answers after the removal", late.len());
    assert!(
        late.iter().all(|n| *n != b'a'),
        "the removed endpoint got new requests"
    );

    let to_c = seen
        .iter()
        .filter(|(t, _, n)| *t > added && *t < removed && *n == b'c')
        .count();
    let count = |name| late.iter().filter(|n| **n == name).count();
    let (late_b, late_c) = (count(b'b'), count(b'c'));
    if to_c <= 50 {
        Err(format!(
            "round {round}: the added endpoint took {to_c} requests"
        ))
    } else if late_b == 0 || late_c == 0 {
        Err(format!(
            "round {round}: after the removal b took {late_b} and c {late_c}"
        ))
    } else {
        Ok(())
    }
}
both_drivers!(discovery_update_under_load, super::update_under_load);

/// An HTTP/1 keep-alive backend answering `name`, counting its open
/// connections.
fn counting(name: u8) -> (Backend, Arc<AtomicUsize>) {
    let open = Arc::new(AtomicUsize::new(0));
    let n = open.clone();
    let b = Backend::start(move |s| {
        n.fetch_add(1, Ordering::Relaxed);
        let mut w = s.try_clone().unwrap();
        let mut r = std::io::BufReader::new(s);
        'conn: loop {
            let mut line = String::new();
            loop {
                line.clear();
                match std::io::BufRead::read_line(&mut r, &mut line) {
                    Ok(0) | Err(_) => break 'conn,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let answer = [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"[..],
                &[name],
            ]
            .concat();
            if std::io::Write::write_all(&mut w, &answer).is_err() {
                break;
            }
        }
        n.fetch_sub(1, Ordering::Relaxed);
    });
    (b, open)
}

/// An endpoint removed from its service loses its pooled connections
/// within a moment, as linkerd2-proxy's balancer drops a removed
/// endpoint's client: not at the pool's idle timeout (a minute here for
/// HTTP/1; 5 s for HTTP/2): a pod going away is not held by idle
/// connections. HTTP/1 (idle in the pool) and HTTP/2 (a multiplexed
/// connection, closed once its streams end).
fn removed_endpoints_lose_their_pooled_connections(driver: IoDriver) {
    let dir = TempDir::new(&format!("removed-conns-{}", driver_name(driver)));
    let ((a, a_open), (b, b_open)) = (counting(b'a'), counting(b'b'));
    let (h2a, h2b) = (common::h2::origin(None), common::h2::origin(None));
    let write = |h1: SocketAddr, h2: SocketAddr| {
        let second = format!("\n[[service]]\nname = \"h2.test:80\"\nendpoints = [\"{h2}\"]\n");
        service_file(&dir, "web.test:80", &[h1], &second)
    };
    let file = write(a.addr, h2a.addr);
    let proxy = start_proxy(
        driver,
        &[
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=web.test:80,127.0.0.1:0=h2.test:80",
            ),
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL", "50ms"),
            ("LINKERD2_PROXY_CORES", "1"),
            (
                "LINKERD2_PROXY_OUTBOUND_HTTP1_CONNECTION_POOL_IDLE_TIMEOUT",
                "60s",
            ),
            (
                "LINKERD2_PROXY_INBOUND_HTTP1_CONNECTION_POOL_IDLE_TIMEOUT",
                "60s",
            ),
        ],
    );
    let [h1_listen, h2_listen] = proxy.forward_addrs()[..] else {
        panic!("two forwards");
    };
    let get = || {
        let mut c = connect(h1_listen);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n").unwrap();
        let mut answer = [0u8; 39];
        std::io::Read::read_exact(&mut c, &mut answer).unwrap();
        answer[38]
    };
    let h2_get = || {
        common::h2::runtime().block_on(async move {
            let send = common::h2::connect(h2_listen).await;
            let a = common::h2::request(&send, "GET", "/hello", None)
                .await
                .expect("served");
            assert_eq!(a.status, 200);
        })
    };
    assert_eq!(get(), b'a');
    h2_get();
    let open = |o: &common::h2::Origin| {
        o.counters.connections.load(Ordering::Relaxed) - o.counters.closed.load(Ordering::Relaxed)
    };
    assert!(
        eventually(Duration::from_secs(2), || a_open.load(Ordering::Relaxed)
            == 1),
        "the proxy keeps its connection to a in the pool"
    );
    assert_eq!(open(&h2a), 1, "and its HTTP/2 connection to the origin");

    let removed = Instant::now();
    write(b.addr, h2b.addr);
    let closed = eventually(Duration::from_secs(3), || {
        a_open.load(Ordering::Relaxed) == 0 && open(&h2a) == 0
    });
    assert!(
        closed,
        "{:?} after the removal: {} HTTP/1 and {} HTTP/2 connections to the removed endpoints still open",
        removed.elapsed(),
        a_open.load(Ordering::Relaxed),
        open(&h2a)
    );
    // The service goes on with its new endpoints.
    assert_eq!(get(), b'b');
    h2_get();
    assert_eq!(h2b.counters.streams.load(Ordering::Relaxed), 1);
    assert!(eventually(Duration::from_secs(2), || b_open
        .load(Ordering::Relaxed)
        == 1));
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    removed_endpoints_lose_their_pooled_connections,
    super::removed_endpoints_lose_their_pooled_connections
);
