//! This proxy's identity on the control core: where its certificate comes
//! from (static PEM files, or Linkerd's identity service), and publishing
//! the TLS configurations built from it to the workers.
//!
//! Workers read [`IdentityCache`] (one atomic load per connection when
//! nothing changed); they never touch a file, a key or a certificate.
//! Until the first certificate is held the state is empty: connections stay
//! plain (inbound TLS is relayed as is) and `/ready` answers 503.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringmesh_discovery::channel::{Cache, Published, Publisher};
use ringmesh_identity::{Credentials, TlsConfigs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::certify::{self, CertMetrics, CertifyConfig};
use crate::config::{IdentityConfig, LocalIdentity};

/// What workers see: the current TLS configurations, if any.
#[derive(Default)]
pub(crate) struct IdentityState(pub Option<Arc<TlsConfigs>>);

impl Published for IdentityState {}

pub(crate) type IdentityPublisher = Publisher<IdentityState>;
pub(crate) type IdentityCache = Cache<IdentityState>;

/// How often the static mode looks at its files.
const STATIC_POLL: Duration = Duration::from_secs(1);

/// Publishes good credentials: builds the configs, marks the proxy ready.
pub(crate) struct Sink {
    publisher: IdentityPublisher,
    roots: Arc<RootCertStore>,
    ready: Arc<AtomicBool>,
    metrics: Arc<CertMetrics>,
}

impl Sink {
    pub(crate) fn new(
        publisher: IdentityPublisher,
        roots: Arc<RootCertStore>,
        ready: Arc<AtomicBool>,
        metrics: Arc<CertMetrics>,
    ) -> Self {
        Self {
            publisher,
            roots,
            ready,
            metrics,
        }
    }

    /// Whether the credentials are now in use.
    pub(crate) fn publish(&mut self, creds: &Credentials) -> bool {
        match TlsConfigs::new(creds, &self.roots) {
            Ok(cfgs) => {
                let expiry = cfgs.validity.not_after;
                self.publisher.publish(IdentityState(Some(Arc::new(cfgs))));
                self.ready.store(true, Ordering::Release);
                tracing::info!(identity = %creds.name, expires_unix = unix_seconds(expiry), "certified");
                true
            }
            Err(e) => {
                tracing::error!(identity = %creds.name, error = %e, "cannot build TLS configurations from the new certificate; keeping the current one");
                false
            }
        }
    }
}

/// The trust anchors as a root store (checked when the config was read).
pub(crate) fn roots(local: &LocalIdentity) -> Arc<RootCertStore> {
    ringmesh_identity::tls::trust_anchors(local.trust_anchors.iter().cloned())
        .unwrap_or_else(|_| Arc::new(RootCertStore::empty()))
}

/// Runs the configured identity source on the control core (forever).
pub(crate) async fn run(cfg: IdentityConfig, mut sink: Sink) {
    match cfg {
        IdentityConfig::Disabled => {}
        IdentityConfig::Static { local, cert, key } => {
            watch_static(&local, &cert, &key, &mut sink).await
        }
        IdentityConfig::Certify {
            local,
            dir,
            token_file,
            svc_addr,
            svc_name,
            min_refresh,
            max_refresh,
        } => {
            let cfg = CertifyConfig {
                svc_addr,
                local_name: local.name.clone(),
                token_file,
                dir,
                roots: sink.roots.clone(),
                min_refresh,
                max_refresh,
                svc_name,
            };
            // Certify keeps the metrics itself (each attempt's outcome).
            let metrics = sink.metrics.clone();
            certify::run(cfg, metrics, move |creds| {
                sink.publish(&creds);
            })
            .await
        }
    }
}

/// What the two files held at the last look, or why they could not be read.
/// Their bytes, not their modification times, say whether they changed: some
/// filesystems keep whole seconds, and a certificate renewed twice within one
/// (same length, as renewed certificates usually are) would go unnoticed.
type Seen = Result<(Vec<u8>, Vec<u8>), String>;

fn read_both(cert: &std::path::Path, key: &std::path::Path) -> Seen {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    Ok((read(cert)?, read(key)?))
}

/// Loads the PEM files, then again whenever they change. Bad new files are
/// logged (once for their contents) and the current certificate kept;
/// files that failed are checked again every poll while unchanged, so a
/// certificate refused only for its time (not valid yet: a renewal written
/// with a little clock skew) is taken once it is valid. A held
/// certificate that expires is logged once.
async fn watch_static(
    local: &LocalIdentity,
    cert: &std::path::Path,
    key: &std::path::Path,
    sink: &mut Sink,
) {
    let mut seen: Option<Seen> = None;
    // The files' contents were refused: looked at again each poll.
    let mut refused = false;
    let mut held_until: Option<SystemTime> = None;
    loop {
        let now = read_both(cert, key);
        let changed = seen.as_ref() != Some(&now);
        if changed || refused {
            let loaded = now.clone().and_then(|(chain_pem, key_pem)| {
                verify_static(local, cert, key, &chain_pem, &key_pem)
            });
            refused = true;
            match loaded {
                Ok(creds) if sink.publish(&creds) => {
                    refused = false;
                    held_until = Some(creds.validity.not_after);
                    sink.metrics
                        .refreshed(SystemTime::now(), creds.validity.not_after)
                }
                Ok(_) => {
                    if changed {
                        sink.metrics.failed()
                    }
                }
                Err(e) if changed => {
                    sink.metrics.failed();
                    tracing::error!(
                    cert = %cert.display(),
                    key = %key.display(),
                    "identity certificate not loaded (checked again every {}s while the files stay as they are): {e}",
                    STATIC_POLL.as_secs()
                    )
                }
                Err(_) => {}
            }
            seen = Some(now);
        }
        if held_until.is_some_and(|t| t <= SystemTime::now()) {
            tracing::error!(
                cert = %cert.display(),
                expired_unix = held_until.map_or(0, unix_seconds),
                "the identity certificate in use has expired and no valid replacement was found; meshed peers will refuse it"
            );
            held_until = None;
        }
        monoio::time::sleep(STATIC_POLL).await;
    }
}

/// Verifies the static certificate chain and key, as read from these files.
fn verify_static(
    local: &LocalIdentity,
    cert: &std::path::Path,
    key: &std::path::Path,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Credentials, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    Credentials::verify(
        local.name.clone(),
        chain,
        key_der,
        &roots(local),
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())
}

/// Seconds since the Unix epoch, for logs.
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
