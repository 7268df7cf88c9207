//! End-to-end latency scenarios: the real `ringmesh` binary on loopback
//! against in-process backends, each scenario measured through the proxy and
//! direct to the backend, at a fixed request rate (open loop) and at maximum
//! throughput (closed loop).
//!
//! ```sh
//! cargo bench -p ringmesh-bench --bench e2e                # ~2 minutes
//! cargo bench -p ringmesh-bench --bench e2e -- --quick     # or RINGMESH_BENCH_QUICK=1; < 40 s
//! cargo bench -p ringmesh-bench --bench e2e -- http1       # only scenarios whose name contains "http1"
//! ```
//!
//! Environment: `RINGMESH_BIN` (use this binary instead of building one),
//! `RINGMESH_BENCH_CORES` (the proxy's `LINKERD2_PROXY_CORES`, default 1),
//! `RINGMESH_BENCH_QUICK=1`, `RINGMESH_IO_DRIVER` (passed through).
//!
//! Placement: with more CPUs allowed than proxy cores, the proxy is started
//! with an affinity mask of the last `RINGMESH_BENCH_CORES` CPUs (ringmesh
//! pins its workers inside its mask) and the load generator and backends
//! run on the others; on this project's 2-core machine: proxy on cpu 1,
//! everything else on cpu 0. Otherwise nothing is pinned and the report
//! says so.
//!
//! Outputs: the table on stdout, and `<target>/bench/e2e.json`,
//! `<target>/bench/e2e.csv`, `<target>/bench/e2e-latency.svg`.

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringmesh_bench::backend::Backend;
use ringmesh_bench::cpu::CpuProbe;
use ringmesh_bench::load::{self, LoadSpec, Mode};
use ringmesh_bench::pin::{self, Placement};
use ringmesh_bench::proxy::{self, Proxy, ProxyConfig};
use ringmesh_bench::report::{Measurement, Report, RunInfo, Via};
use ringmesh_bench::scenario::{self, BackendKind};

struct Options {
    quick: bool,
    filters: Vec<String>,
    proxy_cores: usize,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut quick = std::env::var("RINGMESH_BENCH_QUICK")
            .map(|v| !v.is_empty() && v != "0" && v != "false")
            .unwrap_or(false);
        let mut filters = Vec::new();
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => quick = true,
                // cargo passes `--bench`; other harness flags mean nothing here.
                a if a.starts_with('-') => {}
                a => filters.push(a.to_string()),
            }
        }
        let proxy_cores = match std::env::var("RINGMESH_BENCH_CORES") {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(format!(
                        "RINGMESH_BENCH_CORES={v:?}: expected a number >= 1"
                    ))
                }
            },
            Err(_) => 1,
        };
        Ok(Self {
            quick,
            filters,
            proxy_cores,
        })
    }
}

fn main() -> ExitCode {
    proxy::kill_child_on_panic();
    let opts = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("e2e bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("e2e bench: some runs failed (see the errors column and notes above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("e2e bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)` when a run failed or saw errors (the reports are still
/// written).
fn run(opts: &Options) -> io::Result<bool> {
    let began = Instant::now();
    let (warmup, window) = if opts.quick {
        (Duration::from_millis(200), Duration::from_millis(500))
    } else {
        (Duration::from_secs(1), Duration::from_secs(5))
    };
    let bin = proxy::locate_binary()?;
    let placement = Placement::decide(opts.proxy_cores)?;
    // Backends and load threads inherit this thread's mask.
    pin::pin_current_thread(&placement.load_cpus)?;

    let scenarios: Vec<_> = scenario::all()
        .into_iter()
        .filter(|sc| {
            opts.filters.is_empty() || opts.filters.iter().any(|f| sc.name.contains(f.as_str()))
        })
        .collect();
    if scenarios.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no scenario matches {:?}", opts.filters),
        ));
    }
    // The backends the chosen scenarios need; one proxy forward each
    // (forward i -> backends[i]).
    let mut kinds: Vec<BackendKind> = Vec::new();
    for sc in &scenarios {
        if !kinds.contains(&sc.workload.backend()) {
            kinds.push(sc.workload.backend());
        }
    }
    let backends = kinds
        .iter()
        .map(|k| Ok((*k, k.start()?)))
        .collect::<io::Result<Vec<(BackendKind, Backend)>>>()?;
    let io_driver = std::env::var("RINGMESH_IO_DRIVER")
        .ok()
        .filter(|d| !d.is_empty());
    let proxy = Proxy::start(&ProxyConfig {
        bin: bin.clone(),
        forward_targets: backends.iter().map(|(_, b)| b.addr()).collect(),
        // The echo client's bytes are not HTTP, but relaying them without
        // detection is what an opaque port does; say so rather than rely on
        // detection's verdict. HTTP/2 is detected from its preface.
        opaque_ports: backends
            .iter()
            .filter(|(k, _)| *k == BackendKind::TcpEcho)
            .map(|(_, b)| b.addr().port())
            .collect(),
        cores: opts.proxy_cores,
        cpus: placement.proxy_cpus.clone(),
        extra_env: io_driver
            .iter()
            .map(|d| ("RINGMESH_IO_DRIVER".to_string(), d.clone()))
            .collect(),
    })?;
    eprintln!(
        "bench: ringmesh pid {} ready (admin {}); {}",
        proxy.pid(),
        proxy.admin_addr(),
        placement.description
    );

    let cpu = CpuProbe {
        clock_ticks: ringmesh_bench::cpu::clock_ticks()?,
        proxy_pid: Some(proxy.pid()),
        proxy_cpus: placement.proxy_cpus.clone(),
        load_cpus: placement.load_cpus.clone(),
    };
    let mut report = Report {
        run: RunInfo {
            quick: opts.quick,
            warmup_s: warmup.as_secs_f64(),
            window_s: window.as_secs_f64(),
            proxy_cores: opts.proxy_cores,
            placement: placement.description.clone(),
            ringmesh_bin: bin.display().to_string(),
            io_driver: io_driver.unwrap_or_else(|| "auto".to_string()),
            started_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            clock_ticks_per_s: cpu.clock_ticks,
        },
        measurements: Vec::new(),
    };
    let mut all_ok = true;
    let cpu_probe = || cpu.sample();
    for sc in &scenarios {
        let forward = backends
            .iter()
            .position(|(k, _)| *k == sc.workload.backend())
            .expect("a backend was started for every chosen scenario");
        let connect = sc.workload.connector();
        let streams = sc.workload.streams();
        let modes = [
            (
                Mode::FixedRate {
                    per_second: sc.fixed_rate,
                },
                sc.fixed_connections,
            ),
            (Mode::MaxThroughput, sc.max_connections),
        ];
        for (mode, connections) in modes {
            for via in [Via::Direct, Via::Proxy] {
                let addr = match via {
                    Via::Direct => backends[forward].1.addr(),
                    Via::Proxy => proxy.forward_addr(forward),
                };
                let spec = LoadSpec {
                    connections,
                    mode,
                    warmup,
                    window,
                };
                eprintln!(
                    "bench: {} / {} / {} ({connections} connections x {streams} in flight)",
                    sc.name,
                    mode.label(),
                    via.as_str()
                );
                // Sampled on direct runs too: the noise on the load's CPUs
                // matters there as much.
                let m = match load::run(addr, &connect, &spec, Some(&cpu_probe)) {
                    Ok(r) => Measurement::from_run(sc.name, mode, via, connections, streams, r),
                    Err(e) => {
                        Measurement::failed(sc.name, mode, via, connections, streams, window, &e)
                    }
                };
                all_ok &= m.errors == 0 && m.requests > 0;
                report.measurements.push(m);
            }
        }
    }
    drop(proxy);
    report.pair_up();

    print!("{}", report.table());
    let out_dir = proxy::target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", out_dir.display())))?;
    let json = out_dir.join("e2e.json");
    let csv = out_dir.join("e2e.csv");
    let svg = out_dir.join("e2e-latency.svg");
    report.write_json(&json)?;
    report.write_csv(&csv)?;
    ringmesh_bench::plot::write_svg(&svg, &report.measurements)?;
    println!(
        "wrote {}, {}, {} ({:.1} s total)",
        json.display(),
        csv.display(),
        svg.display(),
        began.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}
