//! Criterion micro-benchmarks of the per-request building blocks: HTTP/1
//! head parsing, the L4 balancer's pick, and the snapshot channel's
//! pick-up. `RINGMESH_BENCH_QUICK=1` (or criterion's own `--quick`) keeps a
//! run to a few seconds.
//!
//! ```sh
//! cargo bench -p ringmesh-bench --bench micro
//! RINGMESH_BENCH_QUICK=1 cargo bench -p ringmesh-bench --bench micro
//! ```

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ringmesh_balancer::Balancer;
use ringmesh_discovery::{Authority, Endpoint, Service, Snapshot};
use ringmesh_protocols::http1::{Limits, RequestHead};

/// A request as a browser or curl-like client sends it through a sidecar.
const TYPICAL_REQUEST: &[u8] = b"GET /api/v1/users/12345?fields=name,email HTTP/1.1\r\n\
Host: users.default.svc.cluster.local:8080\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-GB,en;q=0.9\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl\r\n\
X-Request-Id: 5f0c6a1e-8e0b-4d1b-9a53-2f6f1f0f4c2a\r\n\
Connection: keep-alive\r\n\
\r\n";

fn http1_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut head = RequestHead::new();
    // Checked once so the benchmark cannot silently measure an error path.
    assert_eq!(
        head.parse(TYPICAL_REQUEST, &limits)
            .expect("the request is valid"),
        Some(TYPICAL_REQUEST.len())
    );
    let mut g = c.benchmark_group("http1");
    g.throughput(criterion::Throughput::Bytes(TYPICAL_REQUEST.len() as u64));
    g.bench_function("parse_typical_request", |b| {
        // One head reused per connection, as the proxy does.
        b.iter(|| head.parse(black_box(TYPICAL_REQUEST), &limits))
    });
    g.finish();
}

fn endpoints(n: usize) -> Vec<(SocketAddr, u32)> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1);
            (SocketAddr::from((ip, 8080)), 1 + (i % 3) as u32)
        })
        .collect()
}

fn balancer_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_pick");
    for n in [3usize, 100, 1000] {
        let b = Balancer::new(endpoints(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &b, |bench, b| {
            bench.iter(|| b.pick(|_| false))
        });
        g.bench_with_input(BenchmarkId::new("peak_ewma", n), &b, |bench, b| {
            bench.iter(|| b.pick_request(&[]))
        });
    }
    g.finish();
}

/// A control-plane update of a service's `n` endpoints, every one kept
/// (each worker does it for every update): linear in `n`. Before
/// 2026-12-06 it was quadratic, and a 300 000-endpoint set sent 20 000 at a
/// time stalled a worker for seconds.
fn balancer_update(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_update");
    for n in [10usize, 1000, 50_000] {
        let set = endpoints(n);
        let mut b = Balancer::new(set.clone());
        g.bench_with_input(BenchmarkId::from_parameter(n), &set, |bench, set| {
            bench.iter(|| b.update(set.iter().copied()))
        });
    }
    g.finish();
}

fn snapshot_with(n: usize, tag: u16) -> Snapshot {
    Snapshot::new((0..n).map(|i| {
        Arc::new(Service::new(
            Authority::parse(&format!("svc{i}.test:{}", 8000 + tag)).expect("valid name"),
            endpoints(3)
                .into_iter()
                .map(|(addr, weight)| Endpoint::unmeshed(addr, weight))
                .collect(),
            None,
            Arc::new([]),
        ))
    }))
}

fn snapshot_pickup(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    // The common case on a worker: nothing new (one atomic load).
    let (_tx, rx) = ringmesh_discovery::channel(snapshot_with(10, 0));
    let mut cache = rx.cache();
    g.bench_function("check_unchanged", |b| b.iter(|| cache.refresh()));

    // A publish and one subscriber picking it up. Building the snapshot is
    // the control core's work and stays out of the measurement.
    let (mut tx, rx) = ringmesh_discovery::channel(snapshot_with(10, 0));
    let mut cache = rx.cache();
    g.bench_function("publish_and_pick_up", |b| {
        b.iter_batched(
            || snapshot_with(10, 1),
            |s| {
                tx.publish(s);
                assert!(cache.refresh());
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A worker's metric shards: one HTTP response recorded (counters and the
/// latency bucket), bytes counted on a connection's meter, and a scrape.
fn metrics_record(c: &mut Criterion) {
    use ringmesh_admin::telemetry::{
        Direction, HttpKey, HttpShard, Peer, ResponseClass, TcpKey, TcpShard, TcpSnapshot,
        TlsStatus,
    };
    let mut g = c.benchmark_group("metrics");
    // One label set in use on each shard, as on a worker serving one service.
    let target = SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut tcp = TcpShard::default();
    let meter = tcp.open(TcpKey {
        direction: Direction::Outbound,
        peer: Peer::Dst,
        target,
        tls: TlsStatus::NO_PROXY_IDENTITY,
        authority: None,
        dst_labels: None,
        policy: None,
    });
    let key = HttpKey {
        direction: Direction::Outbound,
        tls: TlsStatus::NO_PROXY_IDENTITY,
        authority: None,
        target: Some(target),
        dst_labels: None,
        route: None,
        policy: None,
    };
    let mut http = HttpShard::default();
    let mut ms = 0u64;
    g.bench_function("record_response", |b| {
        b.iter(|| {
            ms = (ms + 7) % 200;
            http.record(&key, ResponseClass::http(200, None), ms)
        })
    });
    g.bench_function("count_bytes", |b| b.iter(|| meter.read(1460)));
    // Copy, merge, encode (the admin side's work per worker); the text's
    // length.
    g.bench_function("scrape_one_series", |b| {
        b.iter(|| {
            let mut out = String::new();
            let mut t = TcpSnapshot::default();
            t.merge(&tcp.snapshot());
            let mut h = HttpShard::default();
            h.merge(&http);
            h.encode(&mut out);
            t.encode(&mut out);
            out.len()
        })
    });
    g.finish();
}

fn config() -> Criterion {
    let quick = std::env::var("RINGMESH_BENCH_QUICK")
        .map(|v| !v.is_empty() && v != "0" && v != "false")
        .unwrap_or(false);
    let c = Criterion::default().without_plots();
    if quick {
        c.warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500))
            .sample_size(10)
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    }
}

criterion_group! {
    name = micro;
    config = config();
    targets = http1_parse, balancer_pick, balancer_update, snapshot_pickup, metrics_record
}
criterion_main!(micro);
