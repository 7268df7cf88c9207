//! The engine's side of the admin server: readiness, metrics gathered from
//! the workers by message (never by sharing their state; merged and encoded
//! by `ringmesh_admin::telemetry`), shutdown and the log level, behind
//! `ringmesh_admin::AdminBackend`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use ringmesh_admin::telemetry::{HttpShard, ProcessInfo, Scrape, TcpSnapshot, WorkerStats};
use ringmesh_admin::AdminBackend;

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

/// One worker's answer to a scrape: its counters and copies of its shards.
pub(crate) type ShardCopy = (WorkerStats, TcpSnapshot, HttpShard);

/// What the admin side asks of the workers, by message only. Implemented
/// where the workers' channels are made (`proxy.rs`), so this module needs
/// nothing of the worker's insides.
pub(crate) trait Workers: Send + Sync {
    /// Asks every worker for a [`ShardCopy`], answered on `reply`; returns
    /// how many workers were asked.
    fn ask_for_shards(&self, reply: &mpsc::Sender<ShardCopy>) -> usize;
    /// Starts the graceful drain on every worker.
    fn shutdown(&self);
}

pub(crate) struct EngineAdmin {
    pub workers: Box<dyn Workers>,
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

    fn metrics(&self, out: &mut String) {
        // One message per worker; each answers with a copy of its shard.
        let (tx, rx) = mpsc::channel();
        let asked = self.workers.ask_for_shards(&tx);
        drop(tx);
        let mut scrape = Scrape::default();
        for _ in 0..asked {
            let Ok((stats, tcp, http)) = rx.recv_timeout(Duration::from_secs(1)) else {
                break;
            };
            scrape.add(stats, &tcp, &http);
        }
        let process = ProcessInfo {
            started: self.started,
            version: env!("CARGO_PKG_VERSION"),
        };
        scrape.encode(out, &process);
    }

    fn shutdown(&self) {
        match &self.hooks.shutdown {
            Some(f) => f(),
            None => self.workers.shutdown(),
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
