//! The control core: a single-threaded monoio runtime on a thread of its own
//! (`ringmesh-control`, never a worker and never pinned to a worker's core),
//! running everything that is not on the data path as tasks:
//!
//! - discovery's resolvers (`ringmesh_discovery::Resolver`: the static
//!   file, DNS with one task per name), which publish snapshots to the
//!   workers through the lock-free channel;
//! - the worker events task, which takes what workers report from the
//!   bounded [`ControlSender`] queue (a name to resolve; tap events next);
//!   a full queue drops and counts, so workers never wait for the core;
//! - the admin server (HTTP/1.1 and HTTP/2 on one port), whose scrapes
//!   await the workers' answers.
//!
//! Nothing here blocks the loop: DNS goes through monoio sockets and
//! timers, admin clients are bounded by timeouts, the static file is a small
//! local read. Long-lived control-plane streams (Destination, policy,
//! identity: HTTP/2 with monoio-http) are the next tasks to run here.
//!
//! The runtime uses the workers' io driver, so `RINGMESH_IO_DRIVER` and the
//! tests run on each driver cover it too. Workers wake it through the
//! queues' atomic wakers (monoio's `sync` feature turns a wake from another
//! thread into an eventfd write the loop is parked on).

use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_core::Stream;
use ringmesh_discovery::events::{self, EventReceiver, EventSender};
use ringmesh_discovery::{
    Authority, Discovery, DiscoveryConfig, DiscoveryError, SnapshotSubscriber, Table,
};

use crate::admin::EngineAdmin;
use crate::certify::CertMetrics;
use crate::config::{DestinationConfig, IdentityConfig, PolicyConfig, StreamLimits};
use crate::destination::{DestinationMetrics, DestinationResolver};
use crate::identity::{self, IdentityState, Sink};
use crate::outbound::OutboundPolicyResolver;
use crate::policy::{InboundPolicies, PolicyClient};
use crate::stream::StreamCounters;
use ringmesh_discovery::channel::{self, Subscriber};

/// What workers tell the control core.
pub(crate) enum ControlMsg {
    /// A worker met a name the snapshot lacks (an HTTP authority): resolve
    /// it and publish.
    Watch(Authority),
    /// A worker met an inbound port whose policy it does not have.
    WatchPort(u16),
    /// Services a worker's requests used lately (watches stay).
    Used(Vec<Authority>),
}

/// A worker's end of the events queue: never blocks; drops and counts
/// when full.
pub(crate) type ControlSender = EventSender<ControlMsg>;

/// Events waiting at most; a burst beyond this is dropped (and counted)
/// rather than queued without bound.
const EVENTS_CAPACITY: usize = 1024;

/// What the process (not the workers) asks of the control core.
enum Command {
    /// Serve the admin API on this listener.
    Admin(TcpListener, Box<EngineAdmin>),
    /// Serve tap on this listener, for this many workers; whether
    /// plaintext loopback clients may tap, and the identity TLS clients
    /// must prove.
    Tap(TcpListener, usize, bool, Option<ringmesh_identity::Name>),
    Stop,
}

/// The running control core.
pub(crate) struct Control {
    events: ControlSender,
    commands: UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    identity: Subscriber<IdentityState>,
    identity_ready: Arc<AtomicBool>,
    cert_metrics: Option<Arc<CertMetrics>>,
    destination_metrics: Option<Arc<DestinationMetrics>>,
    /// Inbound policies, with the policy API, and both policy clients'
    /// stream counters (inbound, outbound).
    policies: Option<(
        Subscriber<InboundPolicies>,
        Arc<StreamCounters>,
        Arc<StreamCounters>,
    )>,
    /// The taps installed, as workers see them, and tap's counters.
    taps: Subscriber<crate::tap::TapSet>,
    tap_metrics: Arc<crate::tap_server::TapMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot start the control core: {0}")]
    Start(io::Error),
}

impl Control {
    /// Starts the control thread and returns once discovery's first
    /// snapshot is complete (the static file loaded, `names` resolved).
    pub(crate) fn start(
        uring: bool,
        discovery: DiscoveryConfig,
        names: Vec<Authority>,
        identity_cfg: IdentityConfig,
        destination: Option<(DestinationConfig, StreamLimits)>,
        policy: Option<(PolicyConfig, StreamLimits, Vec<ipnet::IpNet>)>,
    ) -> Result<(Self, SnapshotSubscriber), ControlError> {
        let destination_metrics = destination
            .as_ref()
            .map(|_| Arc::new(DestinationMetrics::default()));
        let (events, events_rx) = events::bounded(EVENTS_CAPACITY);
        // Ready at once without an identity; else once a certificate is held.
        let identity_ready = Arc::new(AtomicBool::new(identity_cfg.local().is_none()));
        let (identity_pub, identity) = channel::channel(IdentityState::default());
        let cert_metrics = identity_cfg
            .local()
            .map(|_| Arc::new(CertMetrics::default()));
        let identity_task = identity_cfg
            .local()
            .zip(cert_metrics.clone())
            .map(|(local, m)| {
                let sink = Sink::new(
                    identity_pub,
                    identity::roots(local),
                    identity_ready.clone(),
                    m,
                );
                (identity_cfg.clone(), sink)
            });
        let destination = destination
            .zip(destination_metrics.clone())
            .map(|((cfg, limits), metrics)| (cfg, limits, identity.clone(), metrics));
        let (policy_task, policies) = match policy {
            Some((cfg, limits, networks)) => {
                let (publisher, subscriber) = channel::channel(InboundPolicies::default());
                let counters = Arc::new(StreamCounters::default());
                let outbound = Arc::new(StreamCounters::default());
                (
                    Some(PolicyTask {
                        cfg,
                        limits,
                        networks,
                        identity: identity.clone(),
                        publisher,
                        counters: counters.clone(),
                        outbound: outbound.clone(),
                    }),
                    Some((subscriber, counters, outbound)),
                )
            }
            None => (None, None),
        };
        let (tap_publisher, taps) = channel::channel(crate::tap::TapSet::default());
        let tap_metrics = Arc::new(crate::tap_server::TapMetrics::default());
        let core_tap_metrics = tap_metrics.clone();
        let tap_identity = identity.clone();
        let (commands, commands_rx) = unbounded();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ringmesh-control".into())
            .spawn(move || {
                let report = ready_tx.clone();
                let fail = |e: io::Error| report.send(Err(ControlError::Start(e)));
                let core = Core {
                    discovery,
                    names,
                    identity: identity_task,
                    destination,
                    policy: policy_task,
                    events: events_rx,
                    commands: commands_rx,
                    ready: ready_tx,
                    tap: Some((tap_publisher, core_tap_metrics, tap_identity)),
                };
                if uring {
                    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .with_entries(256)
                        .enable_timer()
                        .build()
                    {
                        Ok(mut rt) => rt.block_on(core.run()),
                        Err(e) => drop(fail(e)),
                    }
                } else {
                    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .with_entries(256)
                        .enable_timer()
                        .build()
                    {
                        Ok(mut rt) => rt.block_on(core.run()),
                        Err(e) => drop(fail(e)),
                    }
                }
            })
            .map_err(ControlError::Start)?;
        let mut control = Self {
            events,
            commands,
            thread: Some(thread),
            identity,
            identity_ready,
            cert_metrics,
            destination_metrics,
            policies,
            taps,
            tap_metrics,
        };
        // Blocks the starting thread only, until the first snapshot is done.
        match ready_rx.recv() {
            Ok(Ok(subscriber)) => Ok((control, subscriber)),
            Ok(Err(e)) => {
                control.stop();
                Err(e)
            }
            Err(_) => {
                control.stop();
                Err(ControlError::Start(io::Error::other(
                    "the control thread ended during start-up",
                )))
            }
        }
    }

    /// A worker's view of this proxy's TLS configurations.
    pub(crate) fn identity(&self) -> Subscriber<IdentityState> {
        self.identity.clone()
    }

    /// True once the proxy holds a certificate (at once without identity).
    pub(crate) fn identity_ready(&self) -> Arc<AtomicBool> {
        self.identity_ready.clone()
    }

    /// The identity certificate's metrics, when the proxy has an identity.
    pub(crate) fn cert_metrics(&self) -> Option<Arc<CertMetrics>> {
        self.cert_metrics.clone()
    }

    /// The Destination resolver's counters, when it runs.
    pub(crate) fn destination_metrics(&self) -> Option<Arc<DestinationMetrics>> {
        self.destination_metrics.clone()
    }

    /// A worker's view of the inbound policies (with the policy API).
    pub(crate) fn inbound_policies(&self) -> Option<Subscriber<InboundPolicies>> {
        self.policies.as_ref().map(|(s, _, _)| s.clone())
    }

    /// The policy streams' counters, inbound and outbound (with the
    /// policy API).
    pub(crate) fn policy_counters(&self) -> Option<(Arc<StreamCounters>, Arc<StreamCounters>)> {
        self.policies
            .as_ref()
            .map(|(_, i, o)| (i.clone(), o.clone()))
    }

    /// A sender for a worker.
    pub(crate) fn sender(&self) -> ControlSender {
        self.events.clone()
    }

    /// What workers are built with: the taps installed.
    pub(crate) fn taps(&self) -> &Subscriber<crate::tap::TapSet> {
        &self.taps
    }

    pub(crate) fn tap_metrics(&self) -> Arc<crate::tap_server::TapMetrics> {
        self.tap_metrics.clone()
    }

    /// Serves tap on `listener` from now on.
    pub(crate) fn serve_tap(
        &self,
        listener: TcpListener,
        workers: usize,
        allow_loopback: bool,
        svc_name: Option<ringmesh_identity::Name>,
    ) {
        let _ =
            self.commands
                .unbounded_send(Command::Tap(listener, workers, allow_loopback, svc_name));
    }

    /// Serves the admin API on `listener` from now on.
    pub(crate) fn serve_admin(&self, listener: TcpListener, backend: EngineAdmin) {
        let _ = self
            .commands
            .unbounded_send(Command::Admin(listener, Box::new(backend)));
    }

    /// Stops the control core (discovery, admin) and waits for its thread.
    pub(crate) fn stop(&mut self) {
        let _ = self.commands.unbounded_send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The policy client's parts, moved onto the control thread.
struct PolicyTask {
    cfg: PolicyConfig,
    limits: StreamLimits,
    /// Original destinations in these networks get outbound policies.
    networks: Vec<ipnet::IpNet>,
    identity: Subscriber<IdentityState>,
    publisher: channel::Publisher<InboundPolicies>,
    counters: Arc<StreamCounters>,
    outbound: Arc<StreamCounters>,
}

/// The control thread's state, moved onto it.
struct Core {
    discovery: DiscoveryConfig,
    names: Vec<Authority>,
    identity: Option<(IdentityConfig, Sink)>,
    destination: Option<(
        DestinationConfig,
        StreamLimits,
        Subscriber<IdentityState>,
        Arc<DestinationMetrics>,
    )>,
    policy: Option<PolicyTask>,
    events: EventReceiver<ControlMsg>,
    commands: UnboundedReceiver<Command>,
    ready: mpsc::Sender<Result<SnapshotSubscriber, ControlError>>,
    /// Tap's publisher and counters, until the tap server starts.
    tap: Option<(
        channel::Publisher<crate::tap::TapSet>,
        Arc<crate::tap_server::TapMetrics>,
        Subscriber<IdentityState>,
    )>,
}

impl Core {
    async fn run(self) {
        let Core {
            discovery,
            names,
            identity,
            destination,
            policy,
            events,
            mut commands,
            ready,
            mut tap,
        } = self;
        if let Some((cfg, sink)) = identity {
            monoio::spawn(identity::run(cfg, sink));
        }
        // Idle watches are dropped (linkerd2-proxy's discovery idle
        // timeout), whoever resolves them: names DNS alone resolves too,
        // or one-off names would hold the cap's slots for good.
        let idle_timeout = discovery.idle_timeout;
        let table = match Discovery::new(discovery, names) {
            Ok((mut discovery, subscriber)) => {
                if let Some(p) = &policy {
                    let networks = p.networks.clone();
                    discovery.add_resolver(
                        Box::new(OutboundPolicyResolver::new(
                            p.cfg.clone(),
                            p.networks.clone(),
                            p.limits,
                            p.identity.clone(),
                            p.outbound.clone(),
                        )),
                        Rc::new(move |name: &Authority| {
                            OutboundPolicyResolver::claims(&networks, name)
                        }),
                    );
                }
                if let Some((cfg, limits, identity, metrics)) = destination {
                    let claims = cfg.clone();
                    discovery.add_resolver(
                        Box::new(DestinationResolver::new(cfg, limits, identity, metrics)),
                        Rc::new(move |name: &Authority| claims.claims(name)),
                    );
                }
                let table = discovery.start().await;
                let _ = ready.send(Ok(subscriber));
                table
            }
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let policy = policy.map(|p| {
            let client = PolicyClient::new(&p.cfg, p.limits, &p.identity, p.publisher, p.counters);
            for port in &p.cfg.ports {
                client.watch(*port);
            }
            client
        });
        if let Some(idle) = idle_timeout {
            monoio::spawn(sweep_idle(table.clone(), idle));
        }
        monoio::spawn(worker_events(events, table, policy));
        let mut tap_server: Option<Rc<crate::tap_server::TapServer>> = None;
        // Until told to stop (or the process's handle is gone); returning
        // drops the runtime and with it every task.
        while let Some(command) =
            std::future::poll_fn(|cx| Pin::new(&mut commands).poll_next(cx)).await
        {
            match command {
                Command::Admin(listener, backend) => {
                    match monoio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            monoio::spawn(ringmesh_admin::serve(
                                listener,
                                Rc::new(*backend),
                                ringmesh_admin::Settings::default(),
                            ));
                        }
                        Err(e) => tracing::error!(error = %e, "cannot serve the admin listener"),
                    }
                }
                Command::Tap(listener, workers, allow_loopback, svc_name) => {
                    let Some((publisher, metrics, identity)) = tap.take() else {
                        continue;
                    };
                    match monoio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let server = Rc::new(crate::tap_server::TapServer::new(
                                publisher,
                                workers,
                                (allow_loopback, svc_name),
                                &identity,
                                metrics,
                            ));
                            tap_server = Some(server.clone());
                            monoio::spawn(crate::tap_server::serve(listener, server));
                        }
                        Err(e) => tracing::error!(error = %e, "cannot serve the tap listener"),
                    }
                }
                Command::Stop => {
                    // Tap calls end with a status, not a cut connection.
                    if let Some(server) = &tap_server {
                        server.stop(TAP_STOP).await;
                    }
                    break;
                }
            }
        }
    }
}

/// How long tap calls get to end when the proxy stops.
const TAP_STOP: std::time::Duration = std::time::Duration::from_secs(1);

/// Drops the watches no request used for `idle`, checking every quarter
/// of it.
async fn sweep_idle(table: Table, idle: std::time::Duration) {
    let every = (idle / 4).max(std::time::Duration::from_millis(100));
    loop {
        monoio::time::sleep(every).await;
        table.sweep(idle);
    }
}

/// Takes what workers report, in order; says when some were dropped.
async fn worker_events(
    mut events: EventReceiver<ControlMsg>,
    table: Table,
    policy: Option<Rc<PolicyClient>>,
) {
    let mut dropped = 0;
    while let Some(event) = events.recv().await {
        match event {
            ControlMsg::Watch(name) => {
                table.watch(name);
            }
            ControlMsg::WatchPort(port) => {
                if let Some(p) = &policy {
                    p.watch(port);
                }
            }
            ControlMsg::Used(names) => table.touch(&names),
        }
        let now = events.dropped();
        if now > dropped {
            tracing::warn!(
                dropped = now - dropped,
                total = now,
                "worker events dropped: the control core's queue was full"
            );
            dropped = now;
        }
    }
}
