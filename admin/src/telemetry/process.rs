//! The standard process families (as Prometheus client libraries name them)
//! and `proxy_build_info`, read from `/proc/self` at scrape time.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::family;

/// What the process families need that `/proc` does not say.
#[derive(Clone, Copy, Debug)]
pub struct ProcessInfo {
    pub started: SystemTime,
    /// `proxy_build_info`'s `version` label.
    pub version: &'static str,
}

/// A process gauge: its HELP and TYPE, then its one sample.
fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

pub(crate) fn encode(out: &mut String, info: &ProcessInfo) {
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
            // vsize (field 23, bytes) and num_threads (field 20): linkerd's
            // health dashboard reads the first.
            if let Some(v) = f.get(20).and_then(|v| v.parse::<u64>().ok()) {
                gauge(
                    out,
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    v,
                );
            }
            if let Some(n) = f.get(17).and_then(|n| n.parse::<u64>().ok()) {
                gauge(
                    out,
                    "process_threads",
                    "Number of OS threads in the process.",
                    n,
                );
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
        {
            gauge(
                out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss * page,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            fds.count(),
        );
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(max) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
        {
            gauge(
                out,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max,
            );
        }
    }
    let start = info
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge(
        out,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        start,
    );
    family(out, "proxy_build_info", "gauge", "Proxy build information.");
    let _ = writeln!(
        out,
        "proxy_build_info{{version=\"{}\",vendor=\"ringmesh\"}} 1",
        info.version
    );
}
