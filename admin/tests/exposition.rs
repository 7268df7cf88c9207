//! The TCP and HTTP exposition of a fixed set of shards, byte for byte.
//!
//! `data/shards.prom` was written by the encoder before it moved out of the
//! engine (and before label sets carried a TLS status): family order, HELP
//! and TYPE lines, label order, escaping and series order are what
//! dashboards and the engine's tests already read, and must not drift.
//! A change on purpose rewrites it: `RINGMESH_UPDATE_EXPOSITION=1 cargo
//! test -p ringmesh-admin --test exposition`, and the diff is reviewed.

use std::net::SocketAddr;
use std::sync::Arc;

use ringmesh_admin::telemetry::{
    Direction, DstLabels, HttpKey, HttpShard, Peer, ResponseClass, TcpKey, TcpShard, TcpSnapshot,
    TlsStatus,
};
use ringmesh_protocols::tcp::RelayEnd;

fn exposition() -> String {
    let a = |s: &str| Some(Arc::<str>::from(s));
    let labels: DstLabels = Arc::from(vec![
        ("namespace".to_string(), "prod".to_string()),
        ("service".to_string(), "we\"b\\x\ny".to_string()),
    ]);
    let t4 = SocketAddr::from(([10, 0, 0, 7], 8080));
    let t6: SocketAddr = "[fd00::1]:443".parse().unwrap();
    let tls = TlsStatus::NO_PROXY_IDENTITY;

    // Five TCP label sets; on each, three connections (one closed cleanly,
    // one reset, one still open) and one that idled out.
    let mut tcp = TcpShard::default();
    let mut open = Vec::new();
    for (direction, peer, target, authority, dst_labels) in [
        (
            Direction::Outbound,
            Peer::Src,
            t4,
            a("web.test:80"),
            Some(labels.clone()),
        ),
        (
            Direction::Outbound,
            Peer::Dst,
            t4,
            a("web.test:80"),
            Some(labels.clone()),
        ),
        (Direction::Inbound, Peer::Src, t6, None, None),
        (Direction::Inbound, Peer::Dst, t6, None, None),
        (
            Direction::Outbound,
            Peer::Src,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            None,
            None,
        ),
    ] {
        let key = TcpKey {
            direction,
            peer,
            target,
            tls: tls.clone(),
            authority,
            dst_labels,
            policy: None,
        };
        for i in 0..3 {
            let m = tcp.open(key.clone());
            m.read(10 * (i + 1));
            m.wrote(7);
            match i {
                0 => drop(m),
                1 => m.ended(RelayEnd::ClientError(std::io::ErrorKind::ConnectionReset)),
                _ => open.push(m),
            }
        }
        tcp.open(key).ended(RelayEnd::Idle);
    }
    // Two workers' copies.
    let mut snap = TcpSnapshot::default();
    snap.merge(&tcp.snapshot());
    snap.merge(&tcp.snapshot());

    // Five HTTP label sets, each with responses of every kind at latencies
    // across the buckets; retries on three.
    let mut http = HttpShard::default();
    let key = |direction, authority, target, dst_labels| HttpKey {
        direction,
        tls: tls.clone(),
        authority,
        target,
        dst_labels,
        route: None,
        policy: None,
    };
    let keys = [
        key(
            Direction::Outbound,
            a("web.test:80"),
            Some(t4),
            Some(labels.clone()),
        ),
        key(
            Direction::Outbound,
            a("web.test:80"),
            None,
            Some(labels.clone()),
        ),
        key(Direction::Outbound, None, Some(t6), None),
        key(Direction::Inbound, None, None, None),
        key(Direction::Inbound, a("[::1]:80"), Some(t4), None),
    ];
    for (n, k) in keys.iter().enumerate() {
        for (j, latency) in [0, 1, 3, 7, 55, 999, 1001, 60_000].into_iter().enumerate() {
            let class = match (n + j) % 5 {
                0 => ResponseClass::http(200, None),
                1 => ResponseClass::http(503, Some("no_endpoints")),
                2 => ResponseClass {
                    status: 200,
                    grpc_status: Some(0),
                    error: None,
                    classified: None,
                },
                3 => ResponseClass {
                    status: 200,
                    grpc_status: Some(14),
                    error: None,
                    classified: None,
                },
                _ => ResponseClass::http(502, Some("connect_failed")),
            };
            http.record(k, class, latency);
        }
        if n % 2 == 0 {
            http.retried(k);
        }
    }
    let mut merged = HttpShard::default();
    merged.merge(&http);
    merged.merge(&http);

    let mut out = String::new();
    merged.encode(&mut out);
    snap.encode(&mut out);
    drop(open);
    out
}

#[test]
fn exposition_is_unchanged() {
    let expected = include_str!("data/shards.prom");
    let out = exposition();
    if std::env::var_os("RINGMESH_UPDATE_EXPOSITION").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/shards.prom");
        std::fs::write(path, &out).unwrap();
        return;
    }
    if out != expected {
        let first = out
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(out.lines().count().min(expected.lines().count()));
        panic!(
            "exposition differs from data/shards.prom at line {}:\n  got:      {:?}\n  expected: {:?}",
            first + 1,
            out.lines().nth(first),
            expected.lines().nth(first)
        );
    }
}
