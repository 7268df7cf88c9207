//! Load generators: N connections, one thread each, a warm-up and a
//! measured window, every loop ending at a deadline.
//!
//! - [`Mode::FixedRate`] is open loop: connection *j* of *N* schedules its
//!   *k*-th request at `start + (k + j/N) / (rate/N)` ([`Plan::scheduled`])
//!   and latency is taken from that scheduled time, not from when the
//!   request was actually sent. A response that arrives late therefore also
//!   delays (and is charged to) the requests queued behind it, as wrk2 does,
//!   instead of the generator quietly sending fewer requests (coordinated
//!   omission).
//! - [`Mode::MaxThroughput`] is closed loop: each connection sends its next
//!   request as soon as the previous response is in; latency is send to
//!   last byte received.
//!
//! A protocol with one request in flight per connection implements
//! [`RoundTrip`] and is driven here, on blocking sockets. A multiplexed one
//! (HTTP/2: many streams per connection) implements [`Client`] itself and
//! follows the same [`Plan`] with several requests in flight; see
//! the `http2` module.
//!
//! Each thread records into its own histogram; they are merged after the
//! threads are joined (nothing is shared while measuring).

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One connection of a scenario's protocol. It is opened and driven on the
/// same load thread, so it need not be `Send`.
pub trait Client {
    /// Runs this connection's share of the load as `plan` says, recording
    /// the requests of the measured window, and returns once the window is
    /// over and the last responses are in (each bounded by
    /// [`crate::IO_TIMEOUT`]).
    fn drive(self: Box<Self>, plan: &Plan) -> ConnectionResult;
}

/// A protocol with one request in flight per connection; [`Client`] comes
/// with it (the loop below).
pub trait RoundTrip {
    /// One request and its complete response.
    fn round_trip(&mut self) -> io::Result<()>;
}

impl<T: RoundTrip> Client for T {
    fn drive(self: Box<Self>, plan: &Plan) -> ConnectionResult {
        drive_round_trips(*self, plan)
    }
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

/// What one connection's part of the run is: its place among the
/// connections and the run's clock.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub mode: Mode,
    /// This connection is `index` of `connections`.
    pub index: usize,
    pub connections: usize,
    /// Warm-up starts here.
    pub start: Instant,
    pub measure_start: Instant,
    pub measure_end: Instant,
}

impl Plan {
    /// Open loop: when this connection's `k`-th request is due, `None` once
    /// that is past the measured window (and always in closed loop).
    pub fn scheduled(&self, k: u32) -> Option<Instant> {
        let Mode::FixedRate { per_second } = self.mode else {
            return None;
        };
        let n = self.connections.max(1) as f64;
        let interval = Duration::from_secs_f64(n / per_second);
        let offset = interval.mul_f64(self.index as f64 / n);
        let due = self.start + offset + interval * k;
        (due < self.measure_end).then_some(due)
    }

    /// Whether a request due (open loop) or sent (closed loop) at `t` is
    /// measured, rather than warm-up.
    pub fn measures(&self, t: Instant) -> bool {
        t >= self.measure_start
    }
}

/// What one connection measured.
pub struct ConnectionResult {
    pub histogram: Histogram<u64>,
    /// Failed requests (a [`RoundTrip`] connection stops at its first).
    pub errors: u64,
    pub first_error: Option<String>,
}

impl ConnectionResult {
    pub fn new() -> Self {
        Self {
            histogram: new_histogram(),
            errors: 0,
            first_error: None,
        }
    }

    /// A completed request, latency measured from `since`.
    pub fn record_since(&mut self, since: Instant) {
        let ns = since.elapsed().as_nanos();
        self.histogram
            .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
    }

    pub fn record_error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }
}

impl Default for ConnectionResult {
    fn default() -> Self {
        Self::new()
    }
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
            .spawn(move || -> Option<ConnectionResult> {
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
                let measure_start = start + spec.warmup;
                Some(client.drive(&Plan {
                    mode: spec.mode,
                    index: j,
                    connections: n,
                    start,
                    measure_start,
                    measure_end: measure_start + spec.window,
                }))
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

/// Sleeps until `t` (returns at once if it is past).
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// For a thread whose sleeps are the pacing: ask the kernel for precise
/// wake-ups (the default 50 µs timer slack would show up as latency).
pub fn precise_sleeps() {
    let _ = nix::sys::prctl::set_timerslack(1_000);
}

/// One [`RoundTrip`] connection's loop. Stops at the end of the measured
/// window or at its first error (the connection is then in an unknown
/// state).
fn drive_round_trips(mut client: impl RoundTrip, plan: &Plan) -> ConnectionResult {
    let mut result = ConnectionResult::new();
    match plan.mode {
        Mode::FixedRate { .. } => {
            precise_sleeps();
            let mut k = 0;
            while let Some(scheduled) = plan.scheduled(k) {
                k += 1;
                sleep_until(scheduled);
                if let Err(e) = client.round_trip() {
                    result.record_error(e);
                    break;
                }
                if plan.measures(scheduled) {
                    result.record_since(scheduled);
                }
            }
        }
        Mode::MaxThroughput => loop {
            let sent = Instant::now();
            if sent >= plan.measure_end {
                break;
            }
            if let Err(e) = client.round_trip() {
                result.record_error(e);
                break;
            }
            if plan.measures(sent) {
                result.record_since(sent);
            }
        },
    }
    result
}
