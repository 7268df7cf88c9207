//! The engine's side of the admin server: readiness, metrics gathered from
//! the workers by message (never by sharing their state), shutdown and the
//! log level, behind `ringmesh_admin::AdminBackend`. Runs on the control
//! core: a scrape awaits the workers' answers, it never blocks the loop.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_channel::mpsc::UnboundedSender;
use futures_channel::oneshot;
use ringmesh_admin::AdminBackend;

use crate::inbox::{WorkerMsg, WorkerStats};
use crate::metrics::{HttpShard, TcpSnapshot};

/// How long a scrape waits for the workers' answers.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// Reading and changing the process's log filter at run time (the binary
/// wires it to its tracing subscriber).
pub trait LogLevel: Send + Sync {
    fn current(&self) -> String;
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// What the embedding program adds to the proxy.
#[derive(Default)]
pub struct Hooks {
    /// `None`: `/proxy-log-level` reports the configured filter and refuses
    /// changes.
    pub log_level: Option<Arc<dyn LogLevel>>,
    /// How `POST /shutdown` starts the drain; `None`: the workers are told
    /// directly (in-process use).
    pub shutdown: Option<Arc<dyn Fn() + Send + Sync>>,
}

pub(crate) struct EngineAdmin {
    pub workers: Vec<UnboundedSender<WorkerMsg>>,
    pub ready: Arc<AtomicBool>,
    pub started: SystemTime,
    pub configured_log: String,
    pub shutdown_enabled: bool,
    pub hooks: Hooks,
}

impl AdminBackend for EngineAdmin {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    async fn metrics(&self, out: &mut String) {
        // One message per worker; each answers with a copy of its shard.
        // A worker that does not answer in time is left out.
        let answers: Vec<_> = self
            .workers
            .iter()
            .map(|w| {
                let (tx, rx) = oneshot::channel();
                let _ = w.unbounded_send(WorkerMsg::Metrics(tx));
                rx
            })
            .collect();
        let deadline = monoio::time::Instant::now() + SCRAPE_WAIT;
        let mut stats = Vec::with_capacity(self.workers.len());
        let mut tcp = TcpSnapshot::default();
        let mut http = HttpShard::default();
        for answer in answers {
            let Ok(Ok((s, t, h))) = monoio::time::timeout_at(deadline, answer).await else {
                continue;
            };
            stats.push(s);
            tcp.merge(&t);
            http.merge(&h);
        }
        stats.sort_by_key(|s| s.worker);
        http.encode(out);
        tcp.encode(out);
        let per_worker = |out: &mut String,
                          name: &str,
                          kind: &str,
                          help: &str,
                          value: fn(&WorkerStats) -> u64| {
            family(out, name, kind, help);
            for s in &stats {
                let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", s.worker, value(s));
            }
        };
        per_worker(
            out,
            "ringmesh_worker_accepted_connections_total",
            "counter",
            "Connections accepted by each worker.",
            |s| s.accepted,
        );
        per_worker(
            out,
            "ringmesh_worker_requests_total",
            "counter",
            "HTTP requests handled by each worker.",
            |s| s.requests,
        );
        per_worker(
            out,
            "ringmesh_worker_retries_total",
            "counter",
            "HTTP requests each worker sent again to another endpoint after a 502/503 (within the retry budget).",
            |s| s.retries,
        );
        per_worker(
            out,
            "ringmesh_worker_open_connections",
            "gauge",
            "Connections each worker is proxying now.",
            |s| s.open,
        );
        per_worker(
            out,
            "ringmesh_worker_relay_ring_receives_total",
            "counter",
            "TCP relay reads delivered by io_uring multishot receives into each worker's buffer ring.",
            |s| s.ring_receives,
        );
        per_worker(
            out,
            "ringmesh_worker_relay_ring_exhausted_total",
            "counter",
            "Times each worker's buffer ring was empty and a TCP relay read went into the connection's own buffer.",
            |s| s.ring_exhausted,
        );
        per_worker(
            out,
            "ringmesh_worker_http1_upstream_stray_bytes_total",
            "counter",
            "Upstream HTTP/1 connections each worker closed because the upstream sent bytes that answered no request (past a response, or while the connection was idle in the pool).",
            |s| s.http1_stray_bytes,
        );
        per_worker(
            out,
            "ringmesh_worker_http1_pool_closed_total",
            "counter",
            "Idle pooled upstream HTTP/1 connections each worker found closed by the upstream.",
            |s| s.http1_pool_closed,
        );
        per_worker(
            out,
            "ringmesh_worker_detect_undecided_connections",
            "gauge",
            "Connections each worker is still detecting a protocol for (silent, slow, or waiting for either side to speak).",
            |s| s.detect_undecided,
        );
        per_worker(
            out,
            "ringmesh_worker_detect_evicted_total",
            "counter",
            "Undecided connections each worker closed, oldest first, because RINGMESH_DETECT_MAX_UNDECIDED were open.",
            |s| s.detect_evicted,
        );
        per_worker(
            out,
            "ringmesh_worker_server_first_total",
            "counter",
            "Connections each worker relayed because the server spoke first (seen, or remembered for the destination).",
            |s| s.server_first,
        );
        per_worker(
            out,
            "ringmesh_worker_uring_enters_total",
            "counter",
            "io_uring_enter calls by each worker's ring (submit, wait or both; 0 on the epoll driver).",
            |s| s.uring_enters,
        );
        per_worker(
            out,
            "ringmesh_worker_uring_completions_total",
            "counter",
            "Completions each worker reaped from its io_uring (0 on the epoll driver).",
            |s| s.uring_completions,
        );
        family(
            out,
            "ringmesh_worker_busy_seconds_total",
            "counter",
            "CPU time each worker's event loop has used (user + system).",
        );
        for s in &stats {
            let _ = writeln!(
                out,
                "ringmesh_worker_busy_seconds_total{{worker=\"{}\"}} {:.6}",
                s.worker,
                s.busy_ns as f64 / 1e9
            );
        }
        process_metrics(out, self.started);
    }

    fn shutdown(&self) {
        match &self.hooks.shutdown {
            Some(f) => f(),
            None => {
                for w in &self.workers {
                    let _ = w.unbounded_send(WorkerMsg::Shutdown);
                }
            }
        }
    }

    fn shutdown_enabled(&self) -> bool {
        self.shutdown_enabled
    }

    fn log_level(&self) -> String {
        match &self.hooks.log_level {
            Some(l) => l.current(),
            None => self.configured_log.clone(),
        }
    }

    fn set_log_level(&self, filter: &str) -> Result<(), String> {
        match &self.hooks.log_level {
            Some(l) => l.set(filter),
            None => Err("the log level cannot be changed in this process".into()),
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The standard process families (as Prometheus client libraries name them).
fn process_metrics(out: &mut String, started: SystemTime) {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat(5): 11, 12 here.
            if let (Some(u), Some(s)) = (f.get(11), f.get(12)) {
                let cpu =
                    (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / ticks;
                family(
                    out,
                    "process_cpu_seconds_total",
                    "counter",
                    "Total user and system CPU time spent in seconds.",
                );
                let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
        {
            family(
                out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {}", rss * page);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
        {
            family(
                out,
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
            );
            let _ = writeln!(out, "process_max_fds {max}");
        }
    }
    let start = started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    family(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    let _ = writeln!(out, "process_start_time_seconds {start}");
    family(out, "proxy_build_info", "gauge", "Proxy build information.");
    let _ = writeln!(
        out,
        "proxy_build_info{{version=\"{}\",vendor=\"ringmesh\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}
