//! Discovery updates while HTTP requests flow: endpoints added to the
//! static file start taking requests, removed ones stop, and no request
//! fails on the way (issue 7). POSTs, so no retry can hide a failure.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
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
