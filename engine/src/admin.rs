//! The engine's side of the admin server: readiness, metrics gathered from
//! the workers by message (never by sharing their state; merged and encoded
//! by `ringmesh_admin::telemetry`), shutdown and the log level, behind
//! `ringmesh_admin::AdminBackend`. Runs on the control core: a scrape
//! awaits the workers' answers, it never blocks the loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_channel::mpsc::UnboundedSender;
use futures_channel::oneshot;
use ringmesh_admin::telemetry::{ProcessInfo, Scrape};
use ringmesh_admin::{AdminBackend, H2Socket};

use crate::h2guarded::GuardedIo;
use crate::inbox::WorkerMsg;

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
    /// Linkerd's identity certificate series, with an identity.
    pub cert_metrics: Option<Arc<crate::certify::CertMetrics>>,
    pub destination_metrics: Option<Arc<crate::destination::DestinationMetrics>>,
    /// Tap's counters, when the tap server runs.
    pub tap_metrics: Option<Arc<crate::tap_server::TapMetrics>>,
    pub policy_counters: Option<(
        Arc<crate::stream::StreamCounters>,
        Arc<crate::stream::StreamCounters>,
    )>,
}

impl AdminBackend for EngineAdmin {
    type H2Io = GuardedIo<H2Socket>;

    /// The data path's HTTP/2 attack defences (the admin port is reachable
    /// from the whole cluster in Linkerd's deployments); a cut-off is
    /// logged each time (the control core has few connections).
    fn h2_io(&self, io: H2Socket, peer: std::net::SocketAddr) -> Self::H2Io {
        GuardedIo::client(io, peer, None)
    }

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
        let mut scrape = Scrape::default();
        for answer in answers {
            let Ok(Ok((stats, tcp, http, authz))) =
                monoio::time::timeout_at(deadline, answer).await
            else {
                continue;
            };
            scrape.add(stats, &tcp, &http);
            scrape.add_authz(&authz);
        }
        let process = ProcessInfo {
            started: self.started,
            version: env!("CARGO_PKG_VERSION"),
        };
        scrape.encode(out, &process);
        if let Some(m) = &self.cert_metrics {
            m.render(out);
        }
        if let Some(m) = &self.destination_metrics {
            m.render(out);
        }
        if let Some(m) = &self.tap_metrics {
            m.render(out);
        }
        if let Some((inbound, outbound)) = &self.policy_counters {
            inbound.render(out, "inbound_policy", "InboundServerPolicies.WatchPort");
            outbound.render(out, "outbound_policy", "OutboundPolicies.Watch");
        }
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
