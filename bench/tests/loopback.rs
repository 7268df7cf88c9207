//! The harness itself, without the proxy: every backend answers its client
//! over loopback, in both load modes, with no errors, and the open loop
//! never sends more than its schedule.

use std::time::Duration;

use ringmesh_bench::backend::{Backend, Handler};
use ringmesh_bench::load::{self, LoadSpec, Mode};
use ringmesh_bench::scenario::{self, BackendKind};

fn handler(kind: BackendKind) -> Option<Handler> {
    match kind {
        BackendKind::TcpEcho => Some(ringmesh_bench::tcp_echo::serve),
        BackendKind::Http1 => Some(ringmesh_bench::http1::serve),
        BackendKind::WebSocket => Some(ringmesh_bench::websocket::serve),
        BackendKind::Http2 => None,
    }
}

#[test]
fn every_runnable_scenario_works_direct_in_both_modes() {
    let mut ran = 0;
    for sc in scenario::all() {
        if sc.workload.not_run_reason().is_some() {
            assert!(handler(sc.workload.backend()).is_none());
            continue;
        }
        let backend = Backend::spawn(
            "test",
            handler(sc.workload.backend()).expect("a runnable scenario has a backend"),
        )
        .expect("backend starts");
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
    assert_eq!(ran, 4);
}

#[test]
fn a_refused_connection_fails_the_run_with_the_address() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sc = &scenario::all()[0];
    let spec = LoadSpec {
        connections: 2,
        mode: Mode::MaxThroughput,
        warmup: Duration::ZERO,
        window: Duration::from_millis(50),
    };
    let err = match load::run::<()>(addr, &sc.workload.connector(), &spec, None) {
        Ok(_) => panic!("connecting to a closed port succeeded"),
        Err(e) => e,
    };
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
