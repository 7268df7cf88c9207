//! Results: the table printed on stdout, and the machine-readable JSON and
//! CSV files. Latencies are reported in microseconds.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::CpuSample;
use crate::load::{LoadResult, Mode};

/// Above this share of the window spent on other work on the proxy's CPUs,
/// a run is flagged as noisy.
pub const NOISY_PCT: f64 = 5.0;

/// Percentiles every report shows, with their column names.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)];

/// A latency summary in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50_us: us(h.value_at_percentile(50.0)),
            p90_us: us(h.value_at_percentile(90.0)),
            p99_us: us(h.value_at_percentile(99.0)),
            p999_us: us(h.value_at_percentile(99.9)),
            max_us: us(h.max()),
        }
    }

    pub fn values(&self) -> [f64; 5] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
        ]
    }

    /// `self - other` at each percentile.
    pub fn minus(&self, other: &Latency) -> Latency {
        Latency {
            p50_us: self.p50_us - other.p50_us,
            p90_us: self.p90_us - other.p90_us,
            p99_us: self.p99_us - other.p99_us,
            p999_us: self.p999_us - other.p999_us,
            max_us: self.max_us - other.max_us,
        }
    }
}

/// How the load reached the backend: through the proxy, or straight to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Direct,
    Proxy,
}

impl Via {
    pub fn as_str(&self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Proxy => "proxy",
        }
    }
}

/// One scenario, in one mode, on one path.
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub scenario: String,
    /// `fixed_rate` or `max_throughput`.
    pub mode: &'static str,
    /// Human label of the mode (`fixed 2000/s`, `max`).
    pub mode_label: String,
    /// The open-loop rate asked for (fixed-rate mode only).
    pub target_rps: Option<f64>,
    pub via: Via,
    pub connections: usize,
    /// Requests in flight per connection, at most (HTTP/2 streams; 1 for
    /// the others).
    pub streams_per_connection: usize,
    pub window_s: f64,
    /// Requests completed in the measured window.
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub rps: f64,
    pub latency_us: Latency,
    /// Proxy rows: proxy latency minus the direct row's, per percentile.
    pub added_latency_us: Option<Latency>,
    /// Proxy rows: the proxy's utime + stime over the window, per request.
    pub proxy_cpu_us_per_req: Option<f64>,
    /// Proxy rows: how much of the window the proxy's CPUs spent on anything
    /// but the proxy (other processes, interrupts), in percent. High values
    /// mean the machine was not quiet and the proxy's tail is suspect.
    pub proxy_cpus_other_busy_pct: Option<f64>,
    /// The same for the load generator's CPUs (anything but this process,
    /// and the proxy when it shares them).
    pub load_cpus_other_busy_pct: Option<f64>,
    /// Latencies in nanoseconds, for the plot.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl Measurement {
    /// From a completed load run, with the CPU probe's samples.
    pub fn from_run(
        scenario: &str,
        mode: Mode,
        via: Via,
        connections: usize,
        streams: usize,
        r: LoadResult<CpuSample>,
    ) -> Self {
        let usage = r.probes.as_ref().map(|(a, b)| b.usage_since(a));
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / r.window.as_secs_f64();
        let proxied = via == Via::Proxy;
        Self {
            scenario: scenario.to_string(),
            mode: mode.key(),
            mode_label: mode.label(),
            target_rps: mode.target_rps(),
            via,
            connections,
            streams_per_connection: streams,
            window_s: r.window.as_secs_f64(),
            rps: r.requests_per_second(),
            requests: r.requests,
            errors: r.errors,
            latency_us: Latency::from_histogram(&r.histogram),
            added_latency_us: None,
            proxy_cpu_us_per_req: usage
                .and_then(|u| u.proxy)
                .filter(|_| proxied && r.requests > 0)
                .map(|p| p.as_secs_f64() * 1e6 / r.requests as f64),
            proxy_cpus_other_busy_pct: usage
                .and_then(|u| u.others_on_proxy_cpus)
                .filter(|_| proxied)
                .map(pct),
            load_cpus_other_busy_pct: usage.map(|u| pct(u.others_on_load_cpus)),
            first_error: r.first_error,
            histogram: r.histogram,
        }
    }

    /// A run that could not start (its connections failed).
    pub fn failed(
        scenario: &str,
        mode: Mode,
        via: Via,
        connections: usize,
        streams: usize,
        window: Duration,
        error: &io::Error,
    ) -> Self {
        let histogram = crate::load::new_histogram();
        Self {
            scenario: scenario.to_string(),
            mode: mode.key(),
            mode_label: mode.label(),
            target_rps: mode.target_rps(),
            via,
            connections,
            streams_per_connection: streams,
            window_s: window.as_secs_f64(),
            requests: 0,
            errors: 1,
            first_error: Some(error.to_string()),
            rps: 0.0,
            latency_us: Latency::from_histogram(&histogram),
            added_latency_us: None,
            proxy_cpu_us_per_req: None,
            proxy_cpus_other_busy_pct: None,
            load_cpus_other_busy_pct: None,
            histogram,
        }
    }
}

/// How the run was set up, written at the top of every output.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub quick: bool,
    pub warmup_s: f64,
    pub window_s: f64,
    pub proxy_cores: usize,
    pub placement: String,
    pub ringmesh_bin: String,
    /// `RINGMESH_IO_DRIVER` as passed to the proxy (`auto` when unset).
    pub io_driver: String,
    /// Unix seconds when the run started.
    pub started_unix_s: u64,
    pub clock_ticks_per_s: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub run: RunInfo,
    pub measurements: Vec<Measurement>,
}

impl Report {
    /// Fills each proxy row's added latency from the direct row of the same
    /// scenario and mode.
    pub fn pair_up(&mut self) {
        let direct: Vec<(String, &'static str, Latency)> = self
            .measurements
            .iter()
            .filter(|m| m.via == Via::Direct && m.requests > 0)
            .map(|m| (m.scenario.clone(), m.mode, m.latency_us))
            .collect();
        for m in self
            .measurements
            .iter_mut()
            .filter(|m| m.via == Via::Proxy && m.requests > 0)
        {
            if let Some((_, _, d)) = direct
                .iter()
                .find(|(s, mode, _)| *s == m.scenario && *mode == m.mode)
            {
                m.added_latency_us = Some(m.latency_us.minus(d));
            }
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let r = &self.run;
        let _ = writeln!(
            out,
            "ringmesh e2e bench{}: warm-up {:.1} s, window {:.1} s per run; {} proxy core(s); {}",
            if r.quick { " (quick)" } else { "" },
            r.warmup_s,
            r.window_s,
            r.proxy_cores,
            r.placement
        );
        let _ = writeln!(
            out,
            "binary: {} (io driver: {})",
            r.ringmesh_bin, r.io_driver
        );
        let _ = writeln!(
            out,
            "latency in µs (fixed-rate: from the scheduled send time); added = proxy - direct; CPU = proxy utime+stime / requests; \
             conns CxS = C connections with up to S requests in flight on each (HTTP/2 streams)"
        );
        let _ = writeln!(
            out,
            "max = closed loop: the load generator and backends share one CPU and saturate it first, so there \
             compare req/s and CPU µs/req; latency is mostly that CPU's run queue"
        );
        if r.quick {
            let tick_us = 1e6 / r.clock_ticks_per_s as f64;
            let _ = writeln!(
                out,
                "quick mode: the proxy's CPU time is counted in {:.0} ms ticks, so CPU µs/req is good to ±{tick_us:.0}/requests \
                 (±{:.0} µs/req over the 1000 requests of a 2000/s window)",
                tick_us / 1000.0,
                tick_us / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "{:<20} {:<13} {:<6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
            "scenario",
            "mode",
            "via",
            "conns",
            "req/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "CPU µs/req",
            "errors"
        );
        let mut last: Option<(&str, &str)> = None;
        // Errors and notes go under their group (scenario and mode), so the
        // direct, proxy and added rows stay together.
        let mut notes = String::new();
        for m in &self.measurements {
            let key = (m.scenario.as_str(), m.mode);
            let (scenario, mode) = if last == Some(key) {
                ("", "")
            } else {
                out.push_str(&notes);
                notes.clear();
                (m.scenario.as_str(), m.mode_label.as_str())
            };
            last = Some(key);
            let lat = m.latency_us.values();
            let conns = match m.streams_per_connection {
                1 => m.connections.to_string(),
                s => format!("{}x{s}", m.connections),
            };
            let _ = write!(
                out,
                "{:<20} {:<13} {:<6} {:>5} {:>9.0}",
                scenario,
                mode,
                m.via.as_str(),
                conns,
                m.rps
            );
            for v in lat {
                if m.requests == 0 {
                    let _ = write!(out, " {:>9}", "-");
                } else {
                    let _ = write!(out, " {v:>9.1}");
                }
            }
            match m.proxy_cpu_us_per_req {
                Some(c) => {
                    let _ = write!(out, " {c:>10.1}");
                }
                None => {
                    let _ = write!(out, " {:>10}", "");
                }
            }
            let _ = writeln!(out, " {:>6}", m.errors);
            if let Some(a) = &m.added_latency_us {
                let _ = write!(
                    out,
                    "{:<20} {:<13} {:<6} {:>5} {:>9}",
                    "", "", "added", "", ""
                );
                for v in a.values() {
                    let _ = write!(out, " {v:>+9.1}");
                }
                let _ = writeln!(out);
            }
            if let Some(e) = &m.first_error {
                let _ = writeln!(notes, "    first error ({}): {e}", m.via.as_str());
            }
            let noise = [
                ("the proxy's", m.proxy_cpus_other_busy_pct),
                ("the load generator's", m.load_cpus_other_busy_pct),
            ];
            for (whose, pct) in noise {
                if let Some(pct) = pct.filter(|&p| p > NOISY_PCT) {
                    let _ = writeln!(
                        notes,
                        "    note ({}): other work kept {whose} CPU {pct:.0}% busy during this run; its tail latency is suspect",
                        m.via.as_str()
                    );
                }
            }
            if let Some(target) = m.target_rps {
                // An open-loop run that could not keep its schedule measured
                // a queue, not the path: say so next to the numbers.
                if m.requests > 0 && m.rps < 0.95 * target {
                    let _ = writeln!(
                        notes,
                        "    note ({}): achieved {:.0} of {target:.0} req/s; latencies include queueing",
                        m.via.as_str(),
                        m.rps
                    );
                }
            }
        }
        out.push_str(&notes);
        out
    }

    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(path, json + "\n")
    }

    pub fn write_csv(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.csv())
    }

    /// One row per measurement; `note` is its first error, if any.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "scenario,mode,target_rps,via,connections,streams_per_connection,window_s,requests,errors,rps,\
             p50_us,p90_us,p99_us,p999_us,max_us,\
             added_p50_us,added_p90_us,added_p99_us,added_p999_us,added_max_us,\
             proxy_cpu_us_per_req,proxy_cpus_other_busy_pct,load_cpus_other_busy_pct,note\n",
        );
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        for m in &self.measurements {
            let lat = m.latency_us.values().map(|v| format!("{v:.3}")).join(",");
            let added = match &m.added_latency_us {
                Some(a) => a.values().map(|v| format!("{v:.3}")).join(","),
                None => ",,,,".to_string(),
            };
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{:.3},{},{},{:.1},{lat},{added},{},{},{},{}",
                csv_field(&m.scenario),
                m.mode,
                opt(m.target_rps),
                m.via.as_str(),
                m.connections,
                m.streams_per_connection,
                m.window_s,
                m.requests,
                m.errors,
                m.rps,
                opt(m.proxy_cpu_us_per_req),
                opt(m.proxy_cpus_other_busy_pct),
                opt(m.load_cpus_other_busy_pct),
                csv_field(m.first_error.as_deref().unwrap_or_default()),
            );
        }
        out
    }
}

/// RFC 4180 quoting when needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn csv_rows_have_as_many_fields_as_the_header() {
        let mut h = crate::load::new_histogram();
        h.record(10_000).unwrap();
        let m = |via| Measurement {
            scenario: "s".into(),
            mode: "fixed_rate",
            mode_label: "fixed 10/s".into(),
            target_rps: Some(10.0),
            via,
            connections: 1,
            streams_per_connection: 4,
            window_s: 1.0,
            requests: 1,
            errors: 0,
            first_error: Some("x, y".into()),
            rps: 1.0,
            latency_us: Latency::from_histogram(&h),
            added_latency_us: None,
            proxy_cpu_us_per_req: None,
            proxy_cpus_other_busy_pct: None,
            load_cpus_other_busy_pct: Some(50.0),
            histogram: h.clone(),
        };
        let mut r = Report {
            run: RunInfo {
                quick: true,
                warmup_s: 0.1,
                window_s: 1.0,
                proxy_cores: 1,
                placement: "p".into(),
                ringmesh_bin: "b".into(),
                io_driver: "auto".into(),
                started_unix_s: 0,
                clock_ticks_per_s: 100,
            },
            measurements: vec![m(Via::Direct), m(Via::Proxy)],
        };
        r.pair_up();
        assert_eq!(r.measurements[1].added_latency_us.unwrap().p50_us, 0.0);
        let csv = r.csv();
        let fields = |line: &str| {
            // Count commas outside quotes.
            let mut quoted = false;
            line.chars()
                .filter(|&c| {
                    if c == '"' {
                        quoted = !quoted;
                    }
                    c == ',' && !quoted
                })
                .count()
        };
        let mut lines = csv.lines();
        let header = fields(lines.next().unwrap());
        for l in lines {
            assert_eq!(fields(l), header, "{l}");
        }
        let table = r.table();
        assert!(table.contains("load generator's CPU 50% busy"), "{table}");
        assert!(table.contains(" 1x4 "), "{table}");
    }
}
