//! The engine's side of the admin server: readiness, metrics gathered from
//! the workers by message (never by sharing their state; merged and encoded
//! by `ringmesh_admin::telemetry`), shutdown and the log level, behind
//! `ringmesh_admin::AdminBackend`. Runs on the control core: a scrape
//! awaits the workers' answers, it never blocks the loop.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_channel::mpsc::UnboundedSender;
use futures_channel::oneshot;
use ringmesh_admin::telemetry::{ProcessInfo, Scrape};
use ringmesh_admin::{AdminBackend, H2Socket, Page};

use crate::h2guarded::GuardedIo;
use crate::inbox::WorkerMsg;

/// How long a scrape waits for the workers' answers.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// Collections of the workers' shards start at most this often.
const MIN_COLLECTION_INTERVAL: Duration = Duration::from_millis(50);

/// Scrapes share collections: a scrape joins the next collection if one
/// is waiting to start, else it makes that collection itself, no sooner
/// than [`MIN_COLLECTION_INTERVAL`] after the last one started. Every
/// scrape still gets numbers collected after it arrived, but however many
/// clients scrape (the admin port is open to the cluster in Linkerd's
/// deployments), the workers copy their shards at most 20 times a second.
#[derive(Default)]
pub(crate) struct Scrapes {
    /// The scrapes waiting for the next collection (the first of them
    /// makes it).
    next: RefCell<Option<Vec<oneshot::Sender<Arc<Page>>>>>,
    last_start: Cell<Option<monoio::time::Instant>>,
    /// Collections made (`ringmesh_admin_metrics_collections_total`).
    collections: AtomicU64,
}

/// A scrape's part in the next collection.
enum Turn<'a> {
    /// Another scrape makes it; its text arrives here.
    Wait(oneshot::Receiver<Arc<Page>>),
    /// This one makes it, for the others waiting.
    Lead(Lead<'a>),
}

/// The scrape making the next collection. Dropped before it started (its
/// client went away), the waiting scrapes are told and collect themselves.
struct Lead<'a> {
    scrapes: &'a Scrapes,
    started: bool,
}

impl Scrapes {
    fn join(&self) -> Turn<'_> {
        let mut next = self.next.borrow_mut();
        match next.as_mut() {
            Some(waiting) => {
                let (tx, rx) = oneshot::channel();
                waiting.push(tx);
                Turn::Wait(rx)
            }
            None => {
                *next = Some(Vec::new());
                Turn::Lead(Lead {
                    scrapes: self,
                    started: false,
                })
            }
        }
    }
}

impl Lead<'_> {
    /// Waits out the interval since the last collection, then starts this
    /// one: the scrapes that joined it so far are its to answer.
    async fn start(&mut self) -> Vec<oneshot::Sender<Arc<Page>>> {
        let s = self.scrapes;
        if let Some(at) = s.last_start.get().map(|t| t + MIN_COLLECTION_INTERVAL) {
            if at > monoio::time::Instant::now() {
                monoio::time::sleep_until(at).await;
            }
        }
        self.started = true;
        s.last_start.set(Some(monoio::time::Instant::now()));
        s.next.borrow_mut().take().unwrap_or_default()
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.started {
            self.scrapes.next.borrow_mut().take();
        }
    }
}

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
    /// The drain has begun: not ready any more (as Envoy's `/ready`), so a
    /// health checker stops sending before connections are refused.
    pub draining: Arc<AtomicBool>,
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
    pub scrapes: Scrapes,
    /// What workers evicted of series other workers still have
    /// (`ringmesh_admin::telemetry::Evicted`).
    pub residue: std::cell::RefCell<ringmesh_admin::telemetry::Evicted>,
    /// Each worker's last copy of its shards, standing in for it when it
    /// answers a scrape late.
    pub last: std::cell::RefCell<Vec<Option<crate::inbox::WorkerCopy>>>,
    /// This proxy's TLS configurations (meshed clients of the admin port).
    pub identity: std::cell::RefCell<crate::identity::IdentityCache>,
}

impl AdminBackend for EngineAdmin {
    type H2Io = GuardedIo<H2Socket>;

    /// The data path's HTTP/2 attack defences (the admin port is reachable
    /// from the whole cluster in Linkerd's deployments); a cut-off is
    /// logged each time (the control core has few connections).
    fn h2_io(&self, io: H2Socket, peer: std::net::SocketAddr) -> Self::H2Io {
        GuardedIo::client(io, peer, None)
    }

    type Tls = crate::transport::Transport;
    type H2TlsIo = GuardedIo<monoio::io::PrefixedReadIo<Self::Tls, std::io::Cursor<Vec<u8>>>>;

    fn h2_tls_io(
        &self,
        io: monoio::io::PrefixedReadIo<Self::Tls, std::io::Cursor<Vec<u8>>>,
        peer: std::net::SocketAddr,
    ) -> Self::H2TlsIo {
        GuardedIo::client(io, peer, None)
    }

    /// As linkerd2-proxy's admin server: mutual TLS terminated for a client
    /// asking for this proxy's identity (a client certificate is verified
    /// when given, as inbound), the client's ALPN ignored.
    async fn accept_tls(
        &self,
        s: monoio::net::TcpStream,
        hello: Vec<u8>,
        sni: Option<&str>,
        peer: std::net::SocketAddr,
    ) -> Option<Self::Tls> {
        let configs = {
            let mut cache = self.identity.borrow_mut();
            cache.refresh();
            cache.get().0.clone()
        };
        let Some(configs) = configs else {
            tracing::debug!(%peer, "admin TLS client refused: this proxy has no certificate yet");
            return None;
        };
        if sni != Some(configs.name.as_str()) {
            tracing::debug!(%peer, ?sni, "admin TLS client refused: it did not ask for this proxy's identity");
            return None;
        }
        let accepted =
            crate::transport::Transport::tls_accept(s, configs.server_http.clone(), &hello).await;
        match accepted {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                None
            }
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    async fn metrics(&self) -> Arc<Page> {
        match self.scrapes.join() {
            Turn::Wait(rx) => match rx.await {
                Ok(page) => page,
                // The scrape that was to collect went away first.
                Err(_) => {
                    let mut out = String::with_capacity(16 * 1024);
                    Box::pin(self.collect(&mut out)).await;
                    Page::new(out)
                }
            },
            Turn::Lead(mut lead) => {
                let waiting = lead.start().await;
                let mut out = String::with_capacity(16 * 1024);
                Box::pin(self.collect(&mut out)).await;
                // One page for every scrape waiting: shared, not copied.
                let page = Page::new(out);
                for w in waiting {
                    let _ = w.send(page.clone());
                }
                page
            }
        }
    }

    fn shutdown(&self) {
        match &self.hooks.shutdown {
            Some(f) => f(),
            None => {
                self.draining.store(true, Ordering::Release);
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

impl EngineAdmin {
    /// One collection: each worker's shard (by message, never by sharing
    /// its state), merged and encoded with the control core's own series.
    async fn collect(&self, out: &mut String) {
        self.scrapes.collections.fetch_add(1, Ordering::Relaxed);
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
        let mut got = Vec::with_capacity(answers.len());
        for answer in answers {
            let answer = monoio::time::timeout_at(deadline, answer).await;
            got.push(answer.ok().and_then(Result::ok));
        }
        let mut scrape = Scrape::default();
        let mut last = self.last.borrow_mut();
        last.resize_with(got.len(), || None);
        let mut residue = self.residue.borrow_mut();
        let mut complete = true;
        for (answer, last) in got.into_iter().zip(last.iter_mut()) {
            if let Some((stats, tcp, http, authz, errors, gone)) = answer {
                residue.merge(&gone);
                *last = Some((stats, tcp, http, authz, errors));
            }
            // A worker late this time: its last copy stands in (its
            // counts must not drop out of the totals for a scrape).
            let Some((stats, tcp, http, authz, errors)) = last else {
                complete = false;
                continue;
            };
            scrape.add(*stats, tcp, http);
            scrape.add_authz(authz);
            scrape.add_errors(errors);
        }
        scrape.keep_residue(&mut residue, complete);
        drop((last, residue));
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
        let n = self.scrapes.collections.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP ringmesh_admin_metrics_collections_total Collections of the workers' metric shards (scrapes that arrive together share one).\n\
             # TYPE ringmesh_admin_metrics_collections_total counter\n\
             ringmesh_admin_metrics_collections_total {n}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scrapes that arrive while a collection waits to start join it; the
    /// next one after it started leads a new one, which waits out the
    /// interval; a lead that goes away lets its followers collect.
    #[test]
    fn scrapes_share_collections() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Scrapes::default();
            let Turn::Lead(mut first) = s.join() else {
                panic!("the first scrape leads")
            };
            let Turn::Wait(mut joined) = s.join() else {
                panic!("a scrape arriving before the collection starts joins it")
            };
            let waiting = first.start().await;
            assert_eq!(waiting.len(), 1);
            let Turn::Lead(mut second) = s.join() else {
                panic!("once started, the next scrape leads a new collection")
            };
            for w in waiting {
                w.send(Page::new("text".into())).unwrap();
            }
            assert_eq!(
                joined.try_recv().unwrap().as_deref().map(Page::text),
                Some("text")
            );
            let t = monoio::time::Instant::now();
            assert!(second.start().await.is_empty());
            assert!(t.elapsed() >= MIN_COLLECTION_INTERVAL - Duration::from_millis(5));
            drop((first, second));
            // A lead dropped before it started: its followers learn it.
            let Turn::Lead(third) = s.join() else {
                panic!()
            };
            let Turn::Wait(follower) = s.join() else {
                panic!()
            };
            drop(third);
            assert!(follower.await.is_err());
            assert!(matches!(s.join(), Turn::Lead(_)));
        });
    }
}
