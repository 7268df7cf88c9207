//! Start-up and the handle the binary (and in-process tests) hold.
//!
//! Order matters: configuration is already valid; discovery produces its
//! first snapshot; every listener is bound (so a busy port fails start-up
//! before any thread exists); then the workers start and report ready.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::SystemTime;

use futures_channel::mpsc::{unbounded, UnboundedSender};
use ringmesh_admin::telemetry::WorkerStats;
use ringmesh_discovery::dns::DnsConfig;
use ringmesh_discovery::{DiscoveryConfig, DiscoveryError, SnapshotSubscriber};

use crate::admin::{EngineAdmin, Hooks};
use crate::config::{Config, IoDriver};
use crate::control::{Control, ControlError};
use crate::inbox::WorkerMsg;
use crate::l4::ListenerKind;
use crate::listen::OwnListener;
use crate::listen::{self, BindError};
use crate::run::{self, ActiveDriver, WorkerSetup};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("io_uring was requested (RINGMESH_IO_DRIVER=uring) but the kernel refused it: {0}")]
    UringUnavailable(std::io::Error),
    #[error("cannot start worker {worker}: {reason}")]
    Worker { worker: usize, reason: String },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

struct WorkerHandle {
    tx: UnboundedSender<WorkerMsg>,
    thread: JoinHandle<()>,
}

pub struct Proxy {
    workers: Vec<WorkerHandle>,
    control: Control,
    driver: ActiveDriver,
    outbound: Option<SocketAddr>,
    also_outbound: Option<SocketAddr>,
    inbound: Option<SocketAddr>,
    forwards: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    tap: Option<SocketAddr>,
    /// Set when the drain begins: `/ready` answers 503 from then on.
    draining: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(cfg: Config) -> Result<Self, StartError> {
        Self::start_with(cfg, Hooks::default())
    }

    /// Like [`Proxy::start`], with the embedding program's hooks (log level
    /// control and how `POST /shutdown` drains).
    pub fn start_with(mut cfg: Config, hooks: Hooks) -> Result<Self, StartError> {
        let driver = choose_driver(cfg.io_driver)?;
        let available = available_cores();
        // As linkerd2-proxy: more workers than CPUs only contend (a
        // thread, ring and listener each), so the CPUs are the limit.
        let (n, capped) = cfg.workers(available);
        if capped {
            tracing::warn!(
                available,
                "LINKERD2_PROXY_CORES (or _CORES_MIN, _CORES_MAX) is more than the CPUs available; using {available}"
            );
        }
        // Workers share limits by this count.
        cfg.cores = Some(n);
        tracing::info!(workers = n, driver = %driver, "starting");

        if cfg.discovery.dns.servers.is_empty() {
            let sys = DnsConfig::system();
            cfg.discovery.dns.servers = sys.servers;
            cfg.discovery.dns.search = sys.search;
            cfg.discovery.dns.ndots = sys.ndots;
        }
        let (control, subscriber) = start_control(driver, &cfg)?;
        let mut bound = Bound::bind(&cfg, n)?;
        let workers = start_workers(n, driver, &mut bound, &subscriber, &control, &cfg)?;
        if let Some((limit, reserve)) = crate::fd_limit::init() {
            tracing::debug!(
                limit,
                reserve,
                "descriptors: the data path leaves the reserve free"
            );
        }
        let draining = Arc::new(AtomicBool::new(false));

        let Bound {
            admin_listener,
            admin,
            tap_listener,
            tap,
            outbound,
            also_outbound,
            inbound,
            forwards,
            ..
        } = bound;
        if let Some(listener) = admin_listener {
            control.serve_admin(
                listener,
                EngineAdmin {
                    workers: workers.iter().map(|w| w.tx.clone()).collect(),
                    // Workers reported ready and the first snapshot was
                    // published before they started; with an identity,
                    // ready once a certificate is held.
                    ready: control.identity_ready(),
                    draining: draining.clone(),
                    started: SystemTime::now(),
                    configured_log: cfg.log.clone(),
                    shutdown_enabled: cfg.admin.shutdown_endpoint_enabled,
                    hooks,
                    cert_metrics: control.cert_metrics(),
                    destination_metrics: control.destination_metrics(),
                    policy_counters: control.policy_counters(),
                    tap_metrics: tap_listener.as_ref().map(|_| control.tap_metrics()),
                    scrapes: Default::default(),
                    residue: Default::default(),
                    last: Default::default(),
                    identity: std::cell::RefCell::new(control.identity().cache()),
                },
            );
        }
        if let Some(listener) = tap_listener {
            control.serve_tap(
                listener,
                workers.len(),
                cfg.admin.tap.allow_loopback,
                cfg.admin.tap.svc_name.clone(),
            );
        }
        tracing::info!(
            ?outbound,
            ?also_outbound,
            ?inbound,
            ?forwards,
            ?admin,
            "ready"
        );
        Ok(Self {
            workers,
            control,
            driver,
            outbound,
            also_outbound,
            inbound,
            forwards,
            admin,
            tap,
            draining,
        })
    }

    pub fn driver(&self) -> ActiveDriver {
        self.driver
    }

    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound
    }

    /// The second outbound listener's (`LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS`
    /// naming two addresses).
    pub fn also_outbound_addr(&self) -> Option<SocketAddr> {
        self.also_outbound
    }

    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The tap server's address, when it runs.
    pub fn tap_addr(&self) -> Option<SocketAddr> {
        self.tap
    }

    /// Bound forward listeners, in `RINGMESH_TCP_FORWARD` order.
    pub fn forward_addrs(&self) -> &[SocketAddr] {
        &self.forwards
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Asks every worker for its counters (waits at most 1s per worker).
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        let (tx, rx) = mpsc::channel();
        for w in &self.workers {
            let _ = w.tx.unbounded_send(WorkerMsg::Stats(tx.clone()));
        }
        drop(tx);
        let mut out: Vec<WorkerStats> = (0..self.workers.len())
            .map_while(|_| rx.recv_timeout(Duration::from_secs(1)).ok())
            .collect();
        out.sort_by_key(|s| s.worker);
        out
    }

    /// Starts the graceful drain: workers stop accepting at once and exit
    /// when their open connections finish or the grace period ends.
    pub fn shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        for w in &self.workers {
            let _ = w.tx.unbounded_send(WorkerMsg::Shutdown);
        }
    }

    /// Waits for every worker to finish, then stops the control core
    /// (discovery and the admin server).
    pub fn wait(mut self) {
        for w in std::mem::take(&mut self.workers) {
            let _ = w.thread.join();
        }
        self.control.stop();
    }
}

/// The control core first: its discovery makes the first snapshot,
/// complete before any worker starts.
fn start_control(
    driver: ActiveDriver,
    cfg: &Config,
) -> Result<(Control, SnapshotSubscriber), StartError> {
    Control::start(
        driver == ActiveDriver::Uring,
        DiscoveryConfig {
            static_file: cfg.discovery.static_file.clone(),
            static_poll_interval: cfg.discovery.static_poll_interval,
            dns: cfg.discovery.dns.clone(),
            hosts_file: Some(ringmesh_discovery::hosts::SYSTEM_HOSTS_FILE.into()),
            max_names: cfg.discovery.max_names,
            local_ips: cfg.inbound.ips.clone(),
            idle_timeout: cfg.discovery.idle_timeout,
        },
        cfg.watched_names().into_iter().collect(),
        cfg.identity.clone(),
        cfg.destination.clone().map(|d| (d, cfg.control_streams)),
        cfg.policy
            .clone()
            .map(|p| (p, cfg.control_streams, cfg.policy_networks())),
    )
    .map_err(|e| match e {
        ControlError::Discovery(e) => StartError::Discovery(e),
        ControlError::Start(e) => StartError::Thread(e),
    })
}

/// Every listening socket, bound before any thread starts.
struct Bound {
    /// Single-owner: no SO_REUSEPORT.
    admin_listener: Option<TcpListener>,
    admin: Option<SocketAddr>,
    /// The tap server's, when it runs.
    tap_listener: Option<TcpListener>,
    tap: Option<SocketAddr>,
    /// Each data-plane listener's group: one socket per worker.
    groups: Vec<(ListenerKind, Vec<TcpListener>)>,
    outbound: Option<SocketAddr>,
    also_outbound: Option<SocketAddr>,
    inbound: Option<SocketAddr>,
    forwards: Vec<SocketAddr>,
}

impl Bound {
    fn bind(cfg: &Config, n: usize) -> Result<Self, StartError> {
        let admin_listener = match cfg.admin.listen {
            Some(addr) => Some(listen::bind_exclusive(addr, "admin listener")?),
            None => None,
        };
        let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let tap_listener = match cfg.admin.tap.listen.filter(|_| cfg.admin.tap.enabled()) {
            Some(addr) => Some(listen::bind_exclusive(addr, "tap listener")?),
            None => None,
        };
        let tap = tap_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut groups: Vec<(ListenerKind, Vec<TcpListener>)> = Vec::new();
        let mut outbound = None;
        let mut also_outbound = None;
        let mut inbound = None;
        let mut forwards = Vec::new();
        if let Some(addr) = cfg.outbound.listen {
            let g = listen::bind_group(addr, n, "outbound listener", &cfg.outbound.accept)?;
            outbound = Some(local_addr(&g));
            groups.push((ListenerKind::Outbound, g));
        }
        if let Some(addr) = cfg.outbound.also_listen {
            let g = listen::bind_group(addr, n, "outbound listener", &cfg.outbound.accept)?;
            also_outbound = Some(local_addr(&g));
            groups.push((ListenerKind::Outbound, g));
        }
        if let Some(addr) = cfg.inbound.listen {
            let g = listen::bind_group(addr, n, "inbound listener", &cfg.inbound.accept)?;
            inbound = Some(local_addr(&g));
            groups.push((ListenerKind::Inbound, g));
        }
        for f in &cfg.forwards {
            let g = listen::bind_group(f.listen, n, "TCP forward", &cfg.outbound.accept)?;
            forwards.push(local_addr(&g));
            groups.push((ListenerKind::Forward(f.target.clone()), g));
        }
        Ok(Self {
            admin_listener,
            admin,
            tap_listener,
            tap,
            groups,
            outbound,
            also_outbound,
            inbound,
            forwards,
        })
    }

    /// Every address this process listens on, for loop detection.
    fn own_listeners(&self) -> Vec<OwnListener> {
        let own = |proxies| move |addr| OwnListener { addr, proxies };
        self.outbound
            .into_iter()
            .chain(self.also_outbound)
            .chain(self.inbound)
            .chain(self.forwards.iter().copied())
            .map(own(true))
            .chain(self.admin.into_iter().chain(self.tap).map(own(false)))
            .collect()
    }

    /// One worker's share: a socket of each group.
    fn take_worker_share(&mut self) -> Vec<(ListenerKind, TcpListener)> {
        self.groups
            .iter_mut()
            .map(|(kind, g)| (kind.clone(), g.pop().expect("one listener per worker")))
            .collect()
    }
}

/// Starts `n` worker threads, each pinned to a core in turn with its share
/// of the listeners, and waits until every one reports ready.
fn start_workers(
    n: usize,
    driver: ActiveDriver,
    bound: &mut Bound,
    subscriber: &SnapshotSubscriber,
    control: &Control,
    cfg: &Config,
) -> Result<Vec<WorkerHandle>, StartError> {
    let own_listeners = bound.own_listeners();
    // Read here, once, rather than on a worker's first loop check.
    crate::listen::host_ips();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut workers = Vec::with_capacity(n);
    for id in 0..n {
        let (tx, rx) = unbounded();
        let setup = WorkerSetup {
            id,
            core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
            driver,
            listeners: bound.take_worker_share(),
            own_listeners: own_listeners.clone(),
            snapshots: subscriber.cache(),
            identity: control.identity().cache(),
            policies: control.inbound_policies().map(|s| s.cache()),
            taps: control.taps().cache(),
            control: control.sender(),
            cfg: cfg.clone(),
            rx,
            ready: ready_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("ringmesh-worker-{id}"))
            .spawn(move || run::run(setup))
            .map_err(StartError::Thread)?;
        workers.push(WorkerHandle { tx, thread });
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok((_, Ok(()))) => {}
            Ok((worker, Err(reason))) => return Err(StartError::Worker { worker, reason }),
            Err(_) => {
                return Err(StartError::Worker {
                    worker: 0,
                    reason: "did not report ready within 10s".into(),
                })
            }
        }
    }
    Ok(workers)
}

fn local_addr(group: &[TcpListener]) -> SocketAddr {
    group[0]
        .local_addr()
        .expect("bound listener has an address")
}

/// The CPUs this process may use: those of its affinity mask, fewer when
/// its cgroup's CPU quota (a container's CPU limit, cgroup v1 or v2,
/// rounded up: 1.5 CPUs is 2) allows fewer, as linkerd2-proxy counts them
/// (`num_cpus::get()`; the standard library's count rounds down).
fn available_cores() -> usize {
    let mask = core_affinity::get_core_ids()
        .map(|c| c.len())
        .filter(|&n| n > 0);
    let quota = Some(num_cpus::get()).filter(|&n| n > 0);
    match (mask, quota) {
        (Some(m), Some(q)) => m.min(q),
        (m, q) => m.or(q).unwrap_or(1),
    }
}

fn choose_driver(want: IoDriver) -> Result<ActiveDriver, StartError> {
    // On a thread of its own: a thread that created a ring gets the
    // kernel's task work when the ring is torn down, which interrupts a
    // blocking socket read with a timeout there (EINTR); the caller (main,
    // or a test's thread) must not get that.
    let probe = || {
        std::thread::spawn(|| {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(256)
                .build()
                .map(drop)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("io_uring probe panicked")))
    };
    match want {
        IoDriver::Epoll => Ok(ActiveDriver::Epoll),
        IoDriver::Uring => probe()
            .map(|()| ActiveDriver::Uring)
            .map_err(StartError::UringUnavailable),
        IoDriver::Auto => match probe() {
            Ok(()) => Ok(ActiveDriver::Uring),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; falling back to epoll");
                Ok(ActiveDriver::Epoll)
            }
        },
    }
}
