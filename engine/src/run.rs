//! A worker thread: its runtime (io_uring or epoll), its buffer ring,
//! its listeners and accept loops, the messages other threads send it, and
//! its drain. What a request or connection uses of the worker is the
//! context in `worker.rs`; this module starts, runs and stops it.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedReceiver;
use futures_core::stream::FusedStream;
use futures_core::Stream;
use monoio::net::TcpListener;
use ringmesh_balancer::AccrualPolicy;
use ringmesh_discovery::SnapshotCache;
use ringmesh_protocols::buffer::BufferPool;

use crate::config::Config;
use crate::control::ControlSender;
use crate::inbox::WorkerMsg;
use crate::l4::{self, ListenerKind};
use crate::memory;
use crate::stop::Stop;
use crate::undecided::UndecidedSet;
use crate::warn_limit::{summarise, warn_limited, WarnLimit, Warning};
use crate::worker::{Detection, Pools, Routes, Telemetry, Worker};

pub(crate) struct WorkerSetup {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    pub driver: ActiveDriver,
    pub listeners: Vec<(ListenerKind, std::net::TcpListener)>,
    /// Every address this process listens on, for loop detection.
    pub own_listeners: Vec<crate::listen::OwnListener>,
    pub snapshots: SnapshotCache,
    pub identity: crate::identity::IdentityCache,
    /// Inbound policies, with the policy API.
    pub policies: Option<crate::policy::PolicyCache>,
    /// The taps installed (tap's `Observe`).
    pub taps: ringmesh_discovery::channel::Cache<crate::tap::TapSet>,
    pub control: ControlSender,
    pub cfg: Config,
    pub rx: UnboundedReceiver<WorkerMsg>,
    pub ready: mpsc::Sender<(usize, Result<(), String>)>,
}

/// Idle buffers kept per worker (1 MiB at the default 16 KiB); beyond this,
/// returned buffers are freed, so a burst of connections does not pin its
/// buffers once it is over.
pub(crate) const MAX_IDLE_BUFFERS: usize = 64;

/// The io_uring setup for a worker's ring. Every ring is created and used
/// by exactly one thread, so the kernel can skip cross-thread machinery:
/// `SINGLE_ISSUER` and `COOP_TASKRUN` (Linux 6.0 / 5.19) stop completions
/// from interrupting the worker with IPIs; they are run when it next enters
/// the kernel anyway.
pub(crate) fn uring_builder(tuned: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if tuned {
        b.setup_coop_taskrun().setup_single_issuer();
    }
    b
}

/// Sets up this worker's provided-buffer ring, which the TCP relay's
/// multishot receives fill (io_uring only; the epoll driver and kernels
/// without buffer rings use plain receives).
pub(crate) fn register_buf_ring(worker: usize, cfg: &Config) {
    if cfg.tcp.ring_buffers == 0 || monoio::utils::is_legacy() {
        return;
    }
    let count = ring_buffers(cfg.tcp.ring_buffers, cfg.tcp.buffer_size);
    if count < cfg.tcp.ring_buffers {
        tracing::info!(
            worker,
            count,
            size = cfg.tcp.buffer_size,
            "buffer ring capped at {} MiB",
            MAX_RING_BYTES >> 20
        );
    }
    let size = u32::try_from(cfg.tcp.buffer_size).unwrap_or(u32::MAX);
    if let Err(e) = monoio::io::multishot::register_buf_ring(count, size) {
        tracing::info!(worker, error = %e, "no io_uring buffer ring; the TCP relay uses plain receives");
    }
}

/// At most this much memory in one worker's buffer ring.
pub(crate) const MAX_RING_BYTES: usize = 64 << 20;

/// `wanted` ring buffers of `size` bytes, or fewer (a power of two, at
/// least one) so the ring stays within [`MAX_RING_BYTES`]: big
/// `RINGMESH_TCP_BUFFER_SIZE` values would otherwise ask for gigabytes.
pub(crate) fn ring_buffers(wanted: u16, size: usize) -> u16 {
    let fit = (MAX_RING_BYTES / size.max(1)).max(1);
    let fit = (1usize << fit.ilog2()).min(32768);
    wanted.min(u16::try_from(fit).unwrap_or(32768))
}

/// Thread body: pin, build the runtime, serve until drained.
pub(crate) fn run(setup: WorkerSetup) {
    let id = setup.id;
    if let Some(core) = setup.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(worker = id, core = core.id, "cannot pin worker to its core");
        }
    }
    let ready = setup.ready.clone();
    let failed = |e: std::io::Error| {
        let _ = ready.send((
            id,
            Err(format!("cannot build the {} runtime: {e}", setup.driver)),
        ));
    };
    match setup.driver {
        ActiveDriver::Uring => {
            // With the ring tuned for one thread; without, on kernels that
            // refuse the flags.
            let build = |tuned: bool| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(4096)
                    .uring_builder(uring_builder(tuned))
                    .enable_timer()
                    .build()
            };
            match build(true).or_else(|_| build(false)) {
                Ok(mut rt) => rt.block_on(serve(setup)),
                Err(e) => failed(e),
            }
        }
        ActiveDriver::Epoll => {
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .with_entries(4096)
                .enable_timer()
                .build()
            {
                Ok(mut rt) => rt.block_on(serve(setup)),
                Err(e) => failed(e),
            }
        }
    }
}

/// A worker's life on its runtime: its context, its accept loops, then
/// the messages other threads send it until told to stop, then its drain.
pub(crate) async fn serve(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        listeners,
        own_listeners,
        snapshots,
        identity,
        policies,
        taps,
        control,
        cfg,
        mut rx,
        ready,
        ..
    } = setup;
    register_buf_ring(id, &cfg);
    let worker = new_worker(
        id,
        cfg,
        own_listeners,
        (snapshots, identity, policies, taps),
        control,
    );
    let stop = worker.stop.clone();
    let Some(listening) = start_accepting(&worker, listeners, &stop, &ready) else {
        return;
    };
    let _ = ready.send((id, Ok(())));
    drop(ready);
    // Closes pooled HTTP/1 connections the moment their upstream sends or
    // closes; ends (closing them all) when the worker stops.
    let reaper = worker.clone();
    let reaper_stop = stop.clone();
    monoio::spawn(async move { reaper.pools.h1.reap(reaper_stop).await });
    // Gives a burst's memory back to the OS once it is over.
    monoio::spawn(trim_after_bursts(worker.clone(), stop.clone()));
    // Closes pooled connections to endpoints discovery removed.
    monoio::spawn(close_to_removed(worker.clone(), stop.clone()));
    // Tells the control core which services requests use, so it can drop
    // the watches nobody uses.
    if let Some(every) = worker.cfg.discovery.usage_report {
        monoio::spawn(report_usage(worker.clone(), stop.clone(), every));
    }
    if worker.access_log.is_some() {
        monoio::spawn(flush_access_log(worker.clone()));
    }

    // Serve until told to stop (or the handle is gone).
    loop {
        match next(&mut rx).await {
            Some(WorkerMsg::Shutdown) | None => break,
            Some(msg) => answer(&worker, msg),
        }
    }
    drain(&worker, &mut rx, &listening, &stop).await;
    if let Some(log) = &worker.access_log {
        log.flush();
    }
}

/// Writes out the access log's lines at least every `FLUSH_EVERY` for as
/// long as the worker's runtime runs (through a drain too: requests still
/// end then; the last lines are written when the worker ends).
async fn flush_access_log(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(crate::access_log::FLUSH_EVERY).await;
        if let Some(log) = &worker.access_log {
            log.flush();
        }
    }
}

/// The worker's context, fresh: empty pools, counters at zero.
fn new_worker(
    id: usize,
    cfg: Config,
    own_listeners: Vec<crate::listen::OwnListener>,
    (snapshots, identity, policies, taps): (
        SnapshotCache,
        crate::identity::IdentityCache,
        Option<crate::policy::PolicyCache>,
        ringmesh_discovery::channel::Cache<crate::tap::TapSet>,
    ),
    control: ControlSender,
) -> Rc<Worker> {
    let max_undecided = cfg.detect_max_undecided;
    let (failfast_timeout, queue_capacity) = (cfg.http.failfast_timeout, cfg.http.queue_capacity);
    let policy = cfg.inbound_policy.clone();
    // Original destinations the control plane is asked about: the
    // Destination API's profile networks, the policy API's cluster
    // networks.
    let discover_networks = cfg
        .destination
        .as_ref()
        .map(|d| d.networks.clone())
        .unwrap_or_default();
    let policy_networks = if cfg.policy.is_some() {
        cfg.policy_networks()
    } else {
        Vec::new()
    };
    let access_log = cfg.access_log;
    let max_stalled = cfg.http2.max_stalled_bytes;
    let ingress = cfg.outbound.ingress_mode;
    let in_flight = crate::worker::InFlight::new(
        cfg.http.max_in_flight,
        cfg.http.max_in_flight_head_bytes,
        cfg.cores.unwrap_or(1),
    );
    let (bulk_memory, cfg_cores) = (cfg.tcp.bulk_memory, cfg.cores.unwrap_or(1));
    let accrual = AccrualPolicy {
        consecutive: cfg.balancing.failure_accrual_consecutive,
        ..AccrualPolicy::default()
    };
    Rc::new(Worker {
        id,
        pools: Pools::new(
            BufferPool::new(cfg.tcp.buffer_size, MAX_IDLE_BUFFERS),
            identity,
            crate::pool::Pool::new(cfg.http.pool, cfg.cores.unwrap_or(1)),
        ),
        cfg,
        routes: Routes {
            snapshots: RefCell::new(snapshots),
            replicas: RefCell::default(),
            own_listeners,
            workers: cfg_cores.max(1),
            control,
            failing_fast: RefCell::default(),
            queued: RefCell::default(),
            accrual,
            failfast_timeout,
            queue_capacity,
            discover_networks,
            policy_networks,
            used_addrs: RefCell::default(),
            policy,
            policies: policies.map(RefCell::new),
            ingress,
            removed: RefCell::default(),
        },
        telemetry: {
            let t = Telemetry::default();
            t.relay_counters
                .bulk_limit
                .set(bulk_memory.div_ceil(cfg_cores.max(1)));
            t
        },
        taps: crate::tap::WorkerTaps::new(id, taps),
        access_log: access_log.map(crate::access_log::AccessLog::new),
        stalls: crate::stall::Stalls::new(max_stalled),
        in_flight,
        detection: Detection {
            undecided: UndecidedSet::new(max_undecided),
            server_first: RefCell::default(),
        },
        stop: Stop::default(),
        close_idle: Stop::default(),
    })
}

/// Registers the worker's listeners on its runtime and spawns an accept
/// loop for each. Returns their sockets, to stop listening at once when
/// draining; `None` when one cannot be registered (reported on `ready`).
fn start_accepting(
    worker: &Rc<Worker>,
    listeners: Vec<(ListenerKind, std::net::TcpListener)>,
    stop: &Stop,
    ready: &mpsc::Sender<(usize, Result<(), String>)>,
) -> Option<Vec<RawFd>> {
    let mut listening = Vec::new();
    for (kind, std_listener) in listeners {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send((worker.id, Err(format!("cannot register listener: {e}"))));
                return None;
            }
        };
        listening.push(listener.as_raw_fd());
        monoio::spawn(accept_loop(
            worker.clone(),
            Rc::new(kind),
            listener,
            stop.clone(),
        ));
    }
    Some(listening)
}

/// Drain: no new connections; open ones get the grace period. Listening
/// stops first, before any response says `Connection: close`: a client
/// that reconnects at once is refused (another worker or instance takes
/// it) instead of landing in a backlog that nothing accepts from and that
/// the kernel resets when the accept loops drop their listeners.
async fn drain(
    worker: &Worker,
    rx: &mut UnboundedReceiver<WorkerMsg>,
    listening: &[RawFd],
    stop: &Stop,
) {
    let id = worker.id;
    for fd in listening {
        // Their accept loops own them until they see the stop below.
        let _ = nix::sys::socket::shutdown(*fd, nix::sys::socket::Shutdown::Read);
    }
    stop.trigger();
    let drain_started = Instant::now();
    let deadline = drain_started + worker.cfg.shutdown_grace_period;
    tracing::debug!(worker = id, open = worker.telemetry.open.get(), "draining");
    let mut looked = false;
    while worker.telemetry.open.get() > 0 && Instant::now() < deadline {
        if !looked && drain_started.elapsed() >= crate::worker::DRAIN_LAST_LOOK {
            looked = true;
            worker.close_idle.trigger();
            // Connections still detecting (silent ones may wait for either
            // side for the TCP idle timeout) have no exchange to finish;
            // like idle keep-alive ones, they get the last look first: a
            // client that connected just before the drain and sends its
            // request now is served.
            worker.detection.undecided.drain();
        }
        monoio::select! {
            _ = monoio::time::sleep(Duration::from_millis(20)) => {}
            msg = next(rx) => {
                if let Some(msg) = msg {
                    answer(worker, msg);
                }
            }
        }
    }
    // Idle pooled connections close inside the runtime that armed their
    // receives.
    worker.pools.h1.clear();
    // Tap events still gathering go to their taps (which end after).
    worker.taps.flush();
    // Whatever the limit still holds is reported before the worker goes.
    for (kind, n) in worker
        .telemetry
        .warnings
        .flush_at(Instant::now() + WarnLimit::INTERVAL)
    {
        summarise(kind, n);
    }
    let left = worker.telemetry.open.get();
    if left > 0 {
        tracing::warn!(
            worker = id,
            open = left,
            "grace period over; closing remaining connections"
        );
    }
    tracing::info!(
        worker = id,
        accepted = worker.telemetry.accepted.get(),
        "worker stopped"
    );
}

/// Per worker: gives memory back once the open connections, or the
/// requests in flight (a burst of HTTP/2 streams on a few connections),
/// or what stalled HTTP/2 responses hold, have fallen well below their peak
/// since the last time, or the last tap is gone (its queued events); ends
/// when the worker stops.
pub(crate) async fn trim_after_bursts(w: Rc<Worker>, stop: Stop) {
    let mut tapped = false;
    loop {
        monoio::select! {
            _ = monoio::time::sleep(memory::CHECK_INTERVAL) => {}
            _ = stop.wait() => return,
        }
        let open = w.telemetry.open.get();
        let requests = (w.in_flight.take_peak(), w.in_flight.now());
        // Taps seen at the last look, or events gathered since (a tap that
        // came and went in between), and none now.
        let was_tapped =
            w.taps.take_used() | std::mem::replace(&mut tapped, w.taps.active().is_some());
        let taps_gone = was_tapped && !tapped;
        let stalled = w.stalls.take_peak_held();
        if memory::should_collect(w.telemetry.open_peak.get(), open)
            || memory::should_collect(requests.0 as u64, requests.1 as u64)
            || memory::should_collect_stalled(stalled.0, stalled.1)
            || taps_gone
        {
            tracing::debug!(
                worker = w.id,
                peak = w.telemetry.open_peak.get(),
                open,
                requests_peak = requests.0,
                taps_gone,
                "giving memory back"
            );
            w.pools.bufs.clear();
            w.pools.h1_scratch.clear();
            monoio::io::multishot::shrink_driver();
            memory::collect();
            w.telemetry.open_peak.set(open);
        }
    }
}

/// How often a worker looks for endpoints discovery removed (and picks up
/// a newer snapshot, should no request have).
const REMOVED_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Per worker: closes the idle pooled connections to endpoints that left
/// every balancer replica, and lets the HTTP/2 ones close once their
/// streams end (linkerd2-proxy drops a removed endpoint's client with its
/// connections); a connection in use goes on until its exchange ends.
async fn close_to_removed(w: Rc<Worker>, stop: Stop) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(REMOVED_CHECK_INTERVAL) => {}
            _ = stop.wait() => return,
        }
        for addr in w.routes.take_removed() {
            let (h1, h2) = (w.pools.h1.close_to(addr), w.pools.h2.drain_to(addr));
            if h1 + h2 > 0 {
                tracing::debug!(worker = w.id, endpoint = %addr, idle_http1 = h1, http2 = h2, "endpoint removed: closing its pooled connections");
            }
        }
    }
}

/// Every `every`, the services used since the last report, to the control
/// core (a bounded queue: a full one drops the report, which only makes a
/// watch look idle a little sooner).
async fn report_usage(w: Rc<Worker>, stop: Stop, every: std::time::Duration) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(every) => {}
            _ = stop.wait() => return,
        }
        let used = w.routes.take_used();
        if !used.is_empty() {
            let _ = w
                .routes
                .control
                .send(crate::control::ControlMsg::Used(used));
        }
    }
}

/// Answers a query from another thread (stats, metrics scrape).
pub(crate) fn answer(worker: &Worker, msg: WorkerMsg) {
    // Messages (scrapes) come often enough to report a flood of warnings
    // that stopped, without a timer of its own.
    for (kind, n) in worker.telemetry.warnings.flush_at(Instant::now()) {
        summarise(kind, n);
    }
    match msg {
        WorkerMsg::Stats(reply) => {
            let _ = reply.send(worker.stats());
        }
        WorkerMsg::Metrics(reply) => {
            let retain = worker.cfg.admin.metrics_retain_idle;
            let t = &worker.telemetry;
            // What it evicts goes with the answer; kept for the next one
            // when this one is not taken (the scrape gave up waiting).
            let mut evicted = t.evicted.take();
            evicted.merge(&ringmesh_admin::telemetry::Evicted {
                tcp: t.tcp.borrow_mut().evict_idle(retain),
                http: t.http.borrow_mut().evict_idle(retain),
                errors: t.errors.borrow_mut().evict_idle(retain),
                http_errors_gone: Default::default(),
            });
            let answer = (
                worker.stats(),
                t.tcp.borrow().snapshot(),
                t.http.borrow().clone(),
                t.authz.borrow().clone(),
                t.errors.borrow().clone(),
                evicted,
            );
            if let Err(back) = reply.send(answer) {
                t.evicted.replace(back.5);
            }
        }
        WorkerMsg::Shutdown => {}
    }
}

/// The next control message; after the channel closed, never resolves
/// again (the drain loop keeps polling it).
pub(crate) async fn next(rx: &mut UnboundedReceiver<WorkerMsg>) -> Option<WorkerMsg> {
    if FusedStream::is_terminated(rx) {
        std::future::pending::<()>().await;
    }
    std::future::poll_fn(|cx| Pin::new(&mut *rx).poll_next(cx)).await
}

pub(crate) async fn accept_loop(
    worker: Rc<Worker>,
    kind: Rc<ListenerKind>,
    listener: TcpListener,
    stop: Stop,
) {
    // A listener on one address: every connection's local address is its
    // own (no getsockname(2) per connection). A wildcard one asks.
    let local = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = stop.wait() => break,
        };
        match accepted {
            Ok((stream, _)) if crate::fd_limit::in_reserve(stream.as_raw_fd()) => {
                // The data path's share of descriptors is used up: closed
                // at once (`fd_limit`), and accepting pauses a moment.
                drop(stream);
                worker
                    .telemetry
                    .fd_refused
                    .set(worker.telemetry.fd_refused.get() + 1);
                warn_limited!(
                    worker,
                    Warning::DescriptorsExhausted,
                    worker = worker.id,
                    "descriptors near the limit: connection closed at once"
                );
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok((stream, peer)) => {
                worker
                    .telemetry
                    .accepted
                    .set(worker.telemetry.accepted.get() + 1);
                let peer = crate::listen::canonical(peer);
                monoio::spawn(l4::serve(worker.clone(), kind.clone(), stream, peer, local));
            }
            // The listener was shut down for a drain.
            Err(_) if stop.is_stopped() => break,
            Err(e) => {
                // Out of fds and the like: back off instead of spinning.
                warn_limited!(worker, Warning::AcceptFailed, worker = worker.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if stop.is_stopped() {
            break;
        }
    }
}

/// The io driver the workers actually run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveDriver {
    Uring,
    Epoll,
}

impl std::fmt::Display for ActiveDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Uring => "io_uring",
            Self::Epoll => "epoll",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_stays_within_its_memory_cap() {
        // The defaults fit: 256 × 16 KiB = 4 MiB.
        assert_eq!(ring_buffers(256, 16 << 10), 256);
        assert_eq!(ring_buffers(32768, 1024), 32768);
        // 64 MiB / 1 MiB = 64 buffers; a 16 MiB buffer size leaves 4.
        assert_eq!(ring_buffers(256, 1 << 20), 64);
        assert_eq!(ring_buffers(256, 16 << 20), 4);
        // Not a power of two: rounded down (64 MiB / 3 MiB = 21 → 16).
        assert_eq!(ring_buffers(256, 3 << 20), 16);
        // Never zero.
        assert_eq!(ring_buffers(256, 1 << 30), 1);
    }
}
