//! Load generators: N connections, one blocking thread each, a warm-up and a
//! measured window, every loop ending at a deadline.
//!
//! - [`Mode::FixedRate`] is open loop: connection *j* of *N* schedules its
//!   *k*-th request at `start + (k + j/N) / (rate/N)` and latency is taken
//!   from that scheduled time, not from when the request was actually sent.
//!   A response that arrives late therefore also delays (and is charged to)
//!   the requests queued behind it, as wrk2 does, instead of the generator
//!   quietly sending fewer requests (coordinated omission).
//! - [`Mode::MaxThroughput`] is closed loop: each connection sends its next
//!   request as soon as the previous response is in; latency is send to
//!   last byte received.
//!
//! Each thread records into its own histogram; they are merged after the
//! threads are joined (nothing is shared while measuring).

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One connection of a scenario's protocol.
pub trait Client: Send {
    /// One request and its complete response.
    fn round_trip(&mut self) -> io::Result<()>;
}

/// Opens a connection to the address (the proxy's or the backend's).
pub type Connect = Arc<dyn Fn(SocketAddr) -> io::Result<Box<dyn Client>> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Open loop at this many requests per second in total.
    FixedRate { per_second: f64 },
    /// Closed loop, as fast as the connections go.
    MaxThroughput,
}

impl Mode {
    pub fn label(&self) -> String {
        match self {
            Mode::FixedRate { per_second } => format!("fixed {per_second}/s"),
            Mode::MaxThroughput => "max".to_string(),
        }
    }

    /// The open-loop rate, if this is the fixed-rate mode.
    pub fn target_rps(&self) -> Option<f64> {
        match self {
            Mode::FixedRate { per_second } => Some(*per_second),
            Mode::MaxThroughput => None,
        }
    }

    /// Short stable name for machine-readable output.
    pub fn key(&self) -> &'static str {
        match self {
            Mode::FixedRate { .. } => "fixed_rate",
            Mode::MaxThroughput => "max_throughput",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub connections: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub window: Duration,
}

/// What one load run measured; `S` is what the probe samples.
pub struct LoadResult<S = ()> {
    /// Latencies in nanoseconds, requests in the measured window only.
    pub histogram: Histogram<u64>,
    /// Requests completed in the measured window.
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    /// [`run`]'s probe read at the start and at the end of the measured
    /// window.
    pub probes: Option<(S, S)>,
}

impl<S> LoadResult<S> {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }
}

/// A histogram for latencies in nanoseconds (1 ns .. 100 s, 3 significant
/// digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

struct ThreadResult {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs one load: connects every connection first (a failure there is an
/// error for the whole run), then warms up, then measures. `probe` is read
/// at the start and the end of the measured window (the proxy's CPU time;
/// `None` for a direct run). Blocks for warm-up + window + the time the
/// last responses take (each bounded by [`crate::IO_TIMEOUT`]).
pub fn run<S>(
    addr: SocketAddr,
    connect: &Connect,
    spec: &LoadSpec,
    probe: Option<&dyn Fn() -> io::Result<S>>,
) -> io::Result<LoadResult<S>> {
    let n = spec.connections.max(1);
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let mut start_txs = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    for j in 0..n {
        let (start_tx, start_rx) = mpsc::channel::<Instant>();
        start_txs.push(start_tx);
        let ready_tx = ready_tx.clone();
        let connect = connect.clone();
        let spec = spec.clone();
        let t = std::thread::Builder::new()
            .name(format!("load-{j}"))
            .spawn(move || -> Option<ThreadResult> {
                let client = match connect(addr) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return None;
                    }
                };
                // The run is called off when the sender is dropped.
                let start = start_rx.recv().ok()?;
                Some(drive(client, &spec, j, n, start))
            })?;
        threads.push(t);
    }
    drop(ready_tx);

    let mut connect_error = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                connect_error.get_or_insert(e);
            }
            Err(_) => {
                connect_error
                    .get_or_insert(io::Error::other("a load thread died while connecting"));
            }
        }
    }
    if let Some(e) = connect_error {
        drop(start_txs);
        for t in threads {
            let _ = t.join();
        }
        return Err(io::Error::new(
            e.kind(),
            format!("connecting to {addr}: {e}"),
        ));
    }

    let start = Instant::now();
    for tx in &start_txs {
        let _ = tx.send(start);
    }
    let measure_start = start + spec.warmup;
    let measure_end = measure_start + spec.window;
    sleep_until(measure_start);
    let before = probe.map(|p| p()).transpose()?;
    sleep_until(measure_end);
    let after = probe.map(|p| p()).transpose()?;

    let mut histogram = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    for t in threads {
        let Ok(Some(r)) = t.join() else {
            errors += 1;
            first_error.get_or_insert_with(|| "a load thread panicked".to_string());
            continue;
        };
        histogram
            .add(&r.histogram)
            .expect("histograms with the same bounds merge");
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    Ok(LoadResult {
        requests: histogram.len(),
        histogram,
        errors,
        first_error,
        window: spec.window,
        probes: before.zip(after),
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One connection's loop. Stops at the end of the measured window or at its
/// first error (the connection is then in an unknown state).
fn drive(
    mut client: Box<dyn Client>,
    spec: &LoadSpec,
    j: usize,
    n: usize,
    start: Instant,
) -> ThreadResult {
    let measure_start = start + spec.warmup;
    let measure_end = measure_start + spec.window;
    let mut histogram = new_histogram();
    let result = |histogram, error: Option<io::Error>| ThreadResult {
        histogram,
        errors: u64::from(error.is_some()),
        first_error: error.map(|e| e.to_string()),
    };
    match spec.mode {
        Mode::FixedRate { per_second } => {
            // Sleeps are the pacing here: ask the kernel for precise wake-ups
            // (the default 50 µs timer slack would show up as latency).
            let _ = nix::sys::prctl::set_timerslack(1_000);
            let interval = Duration::from_secs_f64(n as f64 / per_second);
            let offset = interval.mul_f64(j as f64 / n as f64);
            for k in 0u32.. {
                let scheduled = start + offset + interval * k;
                if scheduled >= measure_end {
                    break;
                }
                sleep_until(scheduled);
                if let Err(e) = client.round_trip() {
                    return result(histogram, Some(e));
                }
                if scheduled >= measure_start {
                    let ns = scheduled.elapsed().as_nanos();
                    histogram.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
                }
            }
        }
        Mode::MaxThroughput => loop {
            let sent = Instant::now();
            if sent >= measure_end {
                break;
            }
            if let Err(e) = client.round_trip() {
                return result(histogram, Some(e));
            }
            if sent >= measure_start {
                let ns = sent.elapsed().as_nanos();
                histogram.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
            }
        },
    }
    result(histogram, None)
}
