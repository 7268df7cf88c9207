//! The harness itself, without the proxy: every backend answers its client
//! over loopback, in both load modes, with no errors, and the open loop
//! never sends more than its schedule; HTTP/2 keeps several streams in
//! flight per connection and counts failed streams without giving up.

use std::time::Duration;

use ringmesh_bench::load::{self, LoadSpec, Mode};
use ringmesh_bench::scenario::{self, BackendKind, Workload};

#[test]
fn every_scenario_works_direct_in_both_modes() {
    let mut ran = 0;
    for sc in scenario::all() {
        let backend = sc.workload.backend().start().expect("backend starts");
        let connect = sc.workload.connector();
        let window = Duration::from_millis(200);
        for (mode, connections) in [
            (
                Mode::FixedRate {
                    per_second: sc.fixed_rate,
                },
                sc.fixed_connections,
            ),
            (Mode::MaxThroughput, sc.max_connections),
        ] {
            let spec = LoadSpec {
                connections,
                mode,
                warmup: Duration::from_millis(50),
                window,
            };
            let r = load::run::<()>(backend.addr(), &connect, &spec, None).expect("load runs");
            assert_eq!(r.errors, 0, "{} {mode:?}: {:?}", sc.name, r.first_error);
            assert!(r.requests > 0, "{} {mode:?}: no requests", sc.name);
            assert!(r.probes.is_none());
            if let Mode::FixedRate { per_second } = mode {
                let scheduled = per_second * window.as_secs_f64() + connections as f64;
                assert!(
                    r.requests as f64 <= scheduled,
                    "{}: {} requests, at most {scheduled} scheduled",
                    sc.name,
                    r.requests
                );
            }
        }
        ran += 1;
    }
    assert_eq!(ran, scenario::all().len());
    assert!(ran >= 6);
}

/// A stream that fails (here a 404) is counted and the connection carries
/// on: every scheduled request of the window is an error, none a latency.
#[test]
fn http2_counts_each_failed_stream_and_keeps_going() {
    let backend = BackendKind::Http2.start().unwrap();
    let w = Workload::Http2 {
        path: "/missing",
        body: 0,
        streams: 4,
    };
    let window = Duration::from_millis(200);
    let spec = LoadSpec {
        connections: 2,
        mode: Mode::FixedRate { per_second: 500.0 },
        warmup: Duration::from_millis(20),
        window,
    };
    let r = load::run::<()>(backend.addr(), &w.connector(), &spec, None).unwrap();
    assert_eq!(r.requests, 0);
    // (20 + 200 ms) x 500/s = 110 scheduled; allow for the edges.
    assert!((100..=112).contains(&r.errors), "{} errors", r.errors);
    let e = r.first_error.unwrap();
    assert!(e.contains("404"), "{e}");
}

#[test]
fn a_refused_connection_fails_the_run_with_the_address() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let spec = LoadSpec {
        connections: 2,
        mode: Mode::MaxThroughput,
        warmup: Duration::ZERO,
        window: Duration::from_millis(50),
    };
    for sc in scenario::all() {
        let err = match load::run::<()>(addr, &sc.workload.connector(), &spec, None) {
            Ok(_) => panic!("{}: connecting to a closed port succeeded", sc.name),
            Err(e) => e,
        };
        assert!(
            err.to_string().contains(&addr.to_string()),
            "{}: {err}",
            sc.name
        );
    }
}
