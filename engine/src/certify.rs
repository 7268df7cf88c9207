//! Linkerd's identity client: the Certify loop, run as a task on the
//! control core.
//!
//! # What it owns
//!
//! - The workload's documents, as the proxy injector leaves them:
//!   `key.p8` (PKCS#8 DER, never sent anywhere) and `csr.der` in
//!   `LINKERD2_PROXY_IDENTITY_DIR`, loaded once ([`Documents`]).
//! - The call: `io.linkerd.proxy.identity.Identity/Certify` with the
//!   service-account token (read from its file at every call, as
//!   linkerd2-proxy does: the kubelet rotates it), the identity and the
//!   CSR, over a [`Channel`] kept between calls and made anew when its
//!   connection ended or a call on it failed.
//! - Checking the answer: the chain (leaf, then the intermediates) must be
//!   valid now for this proxy's identity under the trust anchors and match
//!   the key ([`Credentials::verify`]), else it is refused; only verified
//!   credentials reach the `publish` callback.
//! - When to call again ([`refresh_in`]): at 70% of the time left before
//!   the certificate expires, clamped to `[min_refresh, max_refresh]`
//!   (linkerd2-proxy's schedule); after a failure, sooner ([`backoff`]).
//! - The certificate metrics ([`CertMetrics`]), with linkerd2-proxy's
//!   names.
//!
//! # What it must not do
//!
//! Publish anything unverified, or drop the credentials it has because a
//! refresh failed: until a refresh succeeds the workers keep the last
//! good ones (nothing is published). It does not build rustls configs or
//! reach the workers itself: `publish` does (the control core's wiring).
//!
//! # Retries
//!
//! linkerd2-proxy waits `min_refresh` after any failure before its first
//! certificate, and 70% of the remaining lifetime after one once it has a
//! certificate. Here a failure is retried sooner and more evenly: 100 ms,
//! doubling, capped at `max(min_refresh, 1 s)` (10 s with Linkerd's
//! default `min_refresh`), each wait drawn from [half of the step, the
//! step] so proxies restarted together do not call the identity service in
//! step. The first success resets it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use ringmesh_identity::{Credentials, CredsError, Name};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

use crate::grpc::{self, Channel, GrpcError};

/// The Identity service's one method.
pub(crate) const CERTIFY_PATH: &str = "/io.linkerd.proxy.identity.Identity/Certify";

/// One attempt (connecting included) gives up after this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The first retry's step; each failure doubles it.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Retries are never spaced more than `max(min_refresh, this)`.
const BACKOFF_CAP_FLOOR: Duration = Duration::from_secs(1);

/// What the Certify loop needs (the environment is parsed elsewhere).
pub(crate) struct CertifyConfig {
    /// The Identity service.
    pub(crate) svc_addr: crate::config::ControlAddr,
    /// This proxy's identity (`LINKERD2_PROXY_IDENTITY_LOCAL_NAME`).
    pub(crate) local_name: Name,
    /// The service-account token, read at every call.
    pub(crate) token_file: PathBuf,
    /// Holds `key.p8` (PKCS#8 DER) and `csr.der`.
    pub(crate) dir: PathBuf,
    /// The mesh's trust anchors.
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) min_refresh: Duration,
    pub(crate) max_refresh: Duration,
    /// The service's own identity when it is not on loopback: spoken to
    /// over TLS as that name (verified against `roots`; no client
    /// certificate, there is none yet).
    pub(crate) svc_name: Option<Name>,
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertifyError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("identity service: {0}")]
    Grpc(#[from] GrpcError),
    #[error("the response has no valid_until")]
    NoExpiry,
    #[error("the response's valid_until is out of range")]
    BadExpiry,
    #[error("the certificate has already expired")]
    Expired,
    #[error("the certificate was refused: {0}")]
    Refused(#[source] CredsError),
}

/// The workload's key and certificate signing request.
pub(crate) struct Documents {
    key_pkcs8: Vec<u8>,
    csr_der: Vec<u8>,
}

impl Documents {
    /// Reads `key.p8` and `csr.der` from `dir` (blocking: small local
    /// files). Missing, unreadable or empty files are errors naming the
    /// file.
    pub(crate) fn load(dir: &Path) -> Result<Self, CertifyError> {
        Ok(Self {
            key_pkcs8: read_nonempty(&dir.join("key.p8"))?,
            csr_der: read_nonempty(&dir.join("csr.der"))?,
        })
    }
}

fn read_nonempty(path: &Path) -> Result<Vec<u8>, CertifyError> {
    let bytes = std::fs::read(path).map_err(|source| CertifyError::Read {
        path: path.to_owned(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(CertifyError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// When to certify again after a certificate that expires at `expiry`:
/// 70% of the time left, clamped to `[min, max]` (`min` wins if the two
/// cross); `min` if it has already expired.
pub(crate) fn refresh_in(
    now: SystemTime,
    expiry: SystemTime,
    min: Duration,
    max: Duration,
) -> Duration {
    let left = expiry.duration_since(now).unwrap_or_default();
    (left * 7 / 10).min(max).max(min)
}

/// The step before retry number `failures` (1 for the first): `base`
/// doubled per earlier failure, at most `cap`.
pub(crate) fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1 << doublings).min(cap)
}

/// A wait drawn from `[step / 2, step]` by `r` in `[0, 1)`.
pub(crate) fn jitter(step: Duration, r: f64) -> Duration {
    step.mul_f64(0.5 + 0.5 * r.clamp(0.0, 1.0))
}

/// The certificate metrics, with linkerd2-proxy's names
/// (`linkerd/identity/src/metrics.rs`, registered under
/// `control_identity` + `cert`). Written by the Certify task, read by
/// the admin server's scrapes.
///
/// `refreshes_total{result="error"}` counts every failed attempt (no
/// answer, a failed call, a refused certificate); linkerd2-proxy counts
/// only refused certificates there and failed calls in its control
/// client's metrics, which ringmesh does not have.
#[derive(Debug, Default)]
pub(crate) struct CertMetrics {
    /// `f64` bits: seconds since the epoch.
    expiry: AtomicU64,
    refresh: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

const EXPIRATION: &str = "control_identity_cert_expiration_timestamp_seconds";
const REFRESH: &str = "control_identity_cert_refresh_timestamp_seconds";
const REFRESHES: &str = "control_identity_cert_refreshes_total";

impl CertMetrics {
    pub(crate) fn refreshed(&self, at: SystemTime, expiry: SystemTime) {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        };
        self.refresh.store(secs(at).to_bits(), Ordering::Relaxed);
        self.expiry.store(secs(expiry).to_bits(), Ordering::Relaxed);
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The families in Prometheus' text format (HELP and TYPE lines
    /// included). Both timestamps are 0 until the first certificate.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let gauge = |out: &mut String, name: &str, help: &str, bits: &AtomicU64| {
            let v = f64::from_bits(bits.load(Ordering::Relaxed));
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            out,
            EXPIRATION,
            "Time when this proxy's current mTLS identity certificate will expire (in seconds since the UNIX epoch).",
            &self.expiry,
        );
        gauge(
            out,
            REFRESH,
            "Time when this proxy's current mTLS identity certificate was last updated.",
            &self.refresh,
        );
        let _ = writeln!(
            out,
            "# HELP {REFRESHES} The total number of times this proxy's mTLS identity certificate has been refreshed by the Identity provider.\n\
             # TYPE {REFRESHES} counter\n\
             {REFRESHES}{{result=\"ok\"}} {}\n\
             {REFRESHES}{{result=\"error\"}} {}",
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        );
    }
}

/// How long to wait for one attempt, and the first retry's step.
#[derive(Clone, Copy, Debug)]
struct Timing {
    call_timeout: Duration,
    backoff_base: Duration,
}

impl Timing {
    const DEFAULT: Self = Self {
        call_timeout: CALL_TIMEOUT,
        backoff_base: BACKOFF_BASE,
    };
}

/// Certifies this proxy's identity for ever: every verified certificate
/// goes to `publish`, and `metrics` follow. Runs on the control core's
/// runtime; never returns.
#[allow(dead_code)] // wired by the control core next
pub(crate) async fn run(
    cfg: CertifyConfig,
    metrics: Arc<CertMetrics>,
    publish: impl FnMut(Credentials),
) {
    run_with(cfg, metrics, publish, Timing::DEFAULT).await
}

async fn run_with(
    cfg: CertifyConfig,
    metrics: Arc<CertMetrics>,
    mut publish: impl FnMut(Credentials),
    timing: Timing,
) {
    let cap = cfg.min_refresh.max(BACKOFF_CAP_FLOOR);
    let mut certifier = Certifier {
        cfg,
        timing,
        docs: None,
        channel: None,
    };
    let mut failures = 0u32;
    loop {
        let cfg = &certifier.cfg;
        tracing::debug!(identity = %cfg.local_name, server = %cfg.svc_addr, "certifying identity");
        let wait = match certifier.certify().await {
            Ok((creds, expiry)) => {
                let cfg = &certifier.cfg;
                failures = 0;
                let now = SystemTime::now();
                metrics.refreshed(now, expiry);
                let wait = refresh_in(now, expiry, cfg.min_refresh, cfg.max_refresh);
                tracing::info!(
                    identity = %cfg.local_name,
                    expires_in = ?whole_seconds(expiry.duration_since(now).unwrap_or_default()),
                    valid_until = expiry.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
                    refresh_in = ?whole_millis(wait),
                    "certified identity",
                );
                publish(creds);
                wait
            }
            Err(error) => {
                let cfg = &certifier.cfg;
                failures = failures.saturating_add(1);
                metrics.failed();
                let wait = jitter(backoff(failures, timing.backoff_base, cap), fastrand::f64());
                tracing::warn!(
                    identity = %cfg.local_name,
                    server = %cfg.svc_addr,
                    %error,
                    failures,
                    retry_in = ?whole_millis(wait),
                    "failed to certify identity",
                );
                wait
            }
        };
        monoio::time::sleep(wait).await;
    }
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

/// One proxy's Certify state between attempts.
struct Certifier {
    cfg: CertifyConfig,
    timing: Timing,
    /// Loaded by the first attempt that finds them.
    docs: Option<Documents>,
    /// Kept after a successful call; a failed call's channel is dropped.
    channel: Option<Channel>,
}

impl Certifier {
    /// One attempt: the verified credentials and when they expire.
    async fn certify(&mut self) -> Result<(Credentials, SystemTime), CertifyError> {
        let docs = match &mut self.docs {
            Some(docs) => docs,
            slot @ None => slot.insert(Documents::load(&self.cfg.dir)?),
        };
        let token = read_nonempty(&self.cfg.token_file)?;
        let deadline = Instant::now() + self.timing.call_timeout;
        let channel = match self.channel.take() {
            Some(c) if !c.is_closed() => c,
            _ => match &self.cfg.svc_name {
                None => {
                    let addr = Channel::resolve(&self.cfg.svc_addr, deadline).await?;
                    Channel::connect(addr, deadline).await?
                }
                Some(name) => {
                    let tls = ringmesh_identity::tls::anonymous_client_config(
                        self.cfg.roots.clone(),
                        &[ringmesh_identity::tls::H2_ALPN],
                    )
                    .map_err(|e| GrpcError::new(crate::grpc::Code::Internal, e.to_string()))?;
                    let addr = Channel::resolve(&self.cfg.svc_addr, deadline).await?;
                    Channel::connect_tls(addr, name, tls, deadline).await?
                }
            },
        };
        let req = CertifyRequest {
            identity: self.cfg.local_name.to_string(),
            token,
            certificate_signing_request: docs.csr_der.clone(),
        };
        let resp: CertifyResponse = grpc::unary(&channel, CERTIFY_PATH, req, deadline).await?;
        self.channel = Some(channel);

        let valid_until = resp.valid_until.ok_or(CertifyError::NoExpiry)?;
        let valid_until = SystemTime::try_from(valid_until).map_err(|_| CertifyError::BadExpiry)?;
        let now = SystemTime::now();
        if valid_until <= now {
            return Err(CertifyError::Expired);
        }
        let chain = std::iter::once(resp.leaf_certificate)
            .chain(resp.intermediate_certificates)
            .map(CertificateDer::from)
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(docs.key_pkcs8.clone()));
        let creds = Credentials::verify(
            self.cfg.local_name.clone(),
            chain,
            key,
            &self.cfg.roots,
            now,
        )
        .map_err(CertifyError::Refused)?;
        // Refresh by the earlier of the two, should the service's
        // valid_until outlive its certificate.
        let expiry = valid_until.min(creds.validity.not_after);
        Ok((creds, expiry))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::testing::{both_drivers, eventually, PyServer, TempDir, TestCa};
    use std::net::SocketAddr;

    const NAME: &str = "web.default.serviceaccount.identity.linkerd.cluster.local";

    /// Quick enough for tests: a 1 s call timeout, 50 ms first retry.
    const FAST: Timing = Timing {
        call_timeout: Duration::from_secs(1),
        backoff_base: Duration::from_millis(50),
    };

    #[test]
    fn refresh_at_70_percent_of_what_is_left_clamped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(24 * 3600));
        let at = |left: u64| refresh_in(now, now + Duration::from_secs(left), min, max);
        assert_eq!(at(3600), Duration::from_secs(2520));
        assert_eq!(at(24 * 3600), Duration::from_secs(60480));
        assert_eq!(at(1000 * 3600), max);
        assert_eq!(at(10), min);
        assert_eq!(at(0), min);
        assert_eq!(refresh_in(now, now - Duration::from_secs(5), min, max), min);
        assert_eq!(
            refresh_in(now, now + Duration::from_secs(3), Duration::ZERO, max),
            Duration::from_millis(2100)
        );
        // Crossed bounds: min wins (never refresh more often than min).
        let crossed = refresh_in(now, now + Duration::from_secs(100), max, min);
        assert_eq!(crossed, max);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_keeps_within_half() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(10));
        let steps: Vec<u128> = (1..=10)
            .map(|n| backoff(n, base, cap).as_millis())
            .collect();
        assert_eq!(
            steps,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        assert_eq!(backoff(0, base, cap), base);
        assert_eq!(backoff(u32::MAX, base, cap), cap);
        let step = Duration::from_secs(2);
        assert_eq!(jitter(step, 0.0), Duration::from_secs(1));
        assert!(jitter(step, 0.999_999) <= step);
        for _ in 0..1000 {
            let j = jitter(step, fastrand::f64());
            assert!(j >= step / 2 && j <= step, "{j:?}");
        }
    }

    #[test]
    fn metrics_render_linkerd_names_and_pass_promtool() {
        let m = CertMetrics::default();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("\ncontrol_identity_cert_expiration_timestamp_seconds 0\n"));
        assert!(out.contains("\ncontrol_identity_cert_refreshes_total{result=\"ok\"} 0\n"));
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        m.refreshed(at, at + Duration::from_secs(3600));
        m.failed();
        m.failed();
        let mut out = String::new();
        m.render(&mut out);
        let expected = [
            "# HELP control_identity_cert_expiration_timestamp_seconds Time when this proxy's current mTLS identity certificate will expire (in seconds since the UNIX epoch).",
            "# TYPE control_identity_cert_expiration_timestamp_seconds gauge",
            "control_identity_cert_expiration_timestamp_seconds 1700003600.5",
            "# HELP control_identity_cert_refresh_timestamp_seconds Time when this proxy's current mTLS identity certificate was last updated.",
            "# TYPE control_identity_cert_refresh_timestamp_seconds gauge",
            "control_identity_cert_refresh_timestamp_seconds 1700000000.5",
            "# HELP control_identity_cert_refreshes_total The total number of times this proxy's mTLS identity certificate has been refreshed by the Identity provider.",
            "# TYPE control_identity_cert_refreshes_total counter",
            "control_identity_cert_refreshes_total{result=\"ok\"} 1",
            "control_identity_cert_refreshes_total{result=\"error\"} 2",
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), expected);
        promtool_check(&out);
    }

    fn promtool_check(text: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed (scripts/install-test-deps.sh)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn missing_or_empty_documents_are_named() {
        let dir = TempDir::new("certify-docs");
        let e = Documents::load(dir.path()).map(drop).unwrap_err();
        assert!(matches!(e, CertifyError::Read { .. }), "{e}");
        assert!(e.to_string().contains("key.p8"), "{e}");
        std::fs::write(dir.path().join("key.p8"), b"k").unwrap();
        std::fs::write(dir.path().join("csr.der"), b"").unwrap();
        let e = Documents::load(dir.path()).map(drop).unwrap_err();
        assert!(matches!(e, CertifyError::Empty { .. }), "{e}");
        assert!(e.to_string().contains("csr.der"), "{e}");
    }

    /// A workload's identity directory (key.p8, csr.der), token file, and
    /// the Identity service's descriptor set, in a directory of its own.
    struct Workload {
        dir: TempDir,
        csr_hex: String,
    }

    impl Workload {
        fn new() -> Self {
            let dir = TempDir::new("certify");
            let key = rcgen::KeyPair::generate().unwrap();
            let csr = rcgen::CertificateParams::new(vec![NAME.to_owned()])
                .unwrap()
                .serialize_request(&key)
                .unwrap();
            let id = dir.path().join("identity");
            std::fs::create_dir(&id).unwrap();
            std::fs::write(id.join("key.p8"), key.serialize_der()).unwrap();
            std::fs::write(id.join("csr.der"), csr.der()).unwrap();
            let csr_hex = csr.der().iter().map(|b| format!("{b:02x}")).collect();
            let w = Self { dir, csr_hex };
            w.token("token-1");
            w.descriptors();
            w
        }

        fn token(&self, token: &str) {
            std::fs::write(self.dir.path().join("token"), token).unwrap();
        }

        fn config(&self, addr: SocketAddr, ca: &TestCa, min_refresh: Duration) -> CertifyConfig {
            CertifyConfig {
                svc_addr: crate::config::ControlAddr::Ip(addr),
                local_name: Name::parse(NAME).unwrap(),
                token_file: self.dir.path().join("token"),
                dir: self.dir.path().join("identity"),
                roots: ca.roots.clone(),
                min_refresh,
                max_refresh: Duration::from_secs(24 * 3600),
                svc_name: None,
            }
        }

        /// The message types for the Python server: protoc makes a
        /// descriptor set from linkerd2-proxy-api's own identity.proto.
        fn descriptors(&self) {
            let out = self.dir.path().join("identity.pb");
            let status = std::process::Command::new("protoc")
                .arg("-I")
                .arg(proto_dir())
                .arg("--include_imports")
                .arg(format!("--descriptor_set_out={}", out.display()))
                .arg("identity.proto")
                .status()
                .expect("protoc (protobuf-compiler, scripts/install-test-deps.sh)");
            assert!(status.success());
        }

        /// The Identity service, signing with `ca`, on `listen`.
        async fn server(
            &self,
            ca: &TestCa,
            listen: &str,
            extra: &[&str],
        ) -> (PyServer, SocketAddr) {
            let n = fastrand::u32(..);
            let cert = self.dir.path().join(format!("ca-{n}.pem"));
            let key = self.dir.path().join(format!("ca-key-{n}.pem"));
            std::fs::write(&cert, &ca.cert_pem).unwrap();
            std::fs::write(&key, &ca.key_pem).unwrap();
            let pb = self.dir.path().join("identity.pb");
            let mut args = vec![
                "--descriptors".to_owned(),
                pb.display().to_string(),
                "--ca-cert".to_owned(),
                cert.display().to_string(),
                "--ca-key".to_owned(),
                key.display().to_string(),
                "--listen".to_owned(),
                listen.to_owned(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut server = PyServer::spawn("identity_server.py", &args);
            let addr = server.line("ready ").await.parse().unwrap();
            (server, addr)
        }
    }

    /// linkerd2-proxy-api's `proto/` in cargo's registry sources, for the
    /// version Cargo.lock pins.
    fn proto_dir() -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"linkerd2-proxy-api\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"').to_owned())
            .expect("linkerd2-proxy-api in Cargo.lock");
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
            .expect("CARGO_HOME or HOME");
        let crate_dir = format!("linkerd2-proxy-api-{version}");
        std::fs::read_dir(home.join("registry/src"))
            .expect("cargo's registry sources")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join(&crate_dir).join("proto"))
            .find(|p| p.join("identity.proto").is_file())
            .unwrap_or_else(|| panic!("{crate_dir}/proto under {}", home.display()))
    }

    type Published = Rc<RefCell<Vec<(Credentials, Instant)>>>;

    /// Runs the Certify loop as a task; what it publishes lands in the
    /// returned list.
    fn start(cfg: CertifyConfig, metrics: &Arc<CertMetrics>) -> Published {
        let published: Published = Rc::default();
        let sink = published.clone();
        monoio::spawn(run_with(
            cfg,
            metrics.clone(),
            move |c| sink.borrow_mut().push((c, Instant::now())),
            FAST,
        ));
        published
    }

    fn counts(m: &CertMetrics) -> (u64, u64) {
        (
            m.ok.load(Ordering::Relaxed),
            m.errors.load(Ordering::Relaxed),
        )
    }

    const WAIT: Duration = Duration::from_secs(20);

    /// (a) A certificate is obtained (chain: leaf and intermediate),
    /// verified and published; the call carried the identity, the token and
    /// the CSR; the metrics say so.
    #[test]
    fn a_certificate_is_obtained_verified_and_published() {
        both_drivers(async || {
            let ca = TestCa::new();
            let w = Workload::new();
            let (mut server, addr) = w
                .server(
                    &ca,
                    "127.0.0.1:0",
                    &["--intermediate", "--lifetime", "3600"],
                )
                .await;
            let metrics = Arc::new(CertMetrics::default());
            let published = start(w.config(addr, &ca, Duration::from_secs(10)), &metrics);
            assert!(eventually(WAIT, || !published.borrow().is_empty()).await);
            let call = server.line("certify ").await;
            assert_eq!(
                call,
                format!("identity={NAME} token=token-1 csr={}", w.csr_hex)
            );
            let published = published.borrow();
            let creds = &published[0].0;
            assert_eq!(creds.name.as_str(), NAME);
            assert_eq!(creds.chain.len(), 2, "leaf and intermediate");
            let left = creds
                .validity
                .not_after
                .duration_since(SystemTime::now())
                .unwrap();
            assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
            assert_eq!(counts(&metrics), (1, 0));
            let expiry = f64::from_bits(metrics.expiry.load(Ordering::Relaxed));
            let not_after = creds
                .validity
                .not_after
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert_eq!(expiry, not_after);
        });
    }

    /// (b) A short-lived certificate is renewed at 70% of its life, before
    /// it expires, with the token read anew, on a new connection (the
    /// service restarted in between).
    #[test]
    fn a_certificate_is_renewed_before_it_expires() {
        both_drivers(async || {
            let ca = TestCa::new();
            let w = Workload::new();
            let (mut server, addr) = w.server(&ca, "127.0.0.1:0", &["--lifetime", "6"]).await;
            let metrics = Arc::new(CertMetrics::default());
            let published = start(w.config(addr, &ca, Duration::from_millis(100)), &metrics);
            assert!(eventually(WAIT, || published.borrow().len() == 1).await);
            assert!(server.line("certify ").await.contains("token=token-1"));
            let (first_expiry, first_at) = {
                let p = published.borrow();
                (p[0].0.validity.not_after, p[0].1)
            };
            w.token("token-2");
            drop(server);
            let (mut server, _) = w.server(&ca, &addr.to_string(), &["--lifetime", "6"]).await;
            assert!(eventually(WAIT, || published.borrow().len() == 2).await);
            assert!(server.line("certify ").await.contains("token=token-2"));
            let renewed = published.borrow()[1].1;
            // 70% of the 5-6 s left (X.509 times are whole seconds): long
            // enough for the restarted service to be up, even on a busy
            // machine.
            let after = renewed - first_at;
            assert!(
                after >= Duration::from_secs(3) && after < Duration::from_millis(5500),
                "renewed after {after:?}"
            );
            assert!(SystemTime::now() < first_expiry, "renewed before expiry");
            assert!(published.borrow()[1].0.validity.not_after > first_expiry);
            assert_eq!(counts(&metrics).0, 2);
        });
    }

    /// (c) The service is down at first: attempts fail and are retried
    /// with backoff (errors counted, nothing published); once it is up and
    /// after it answered UNAVAILABLE twice, the certificate is published.
    #[test]
    fn retries_until_the_service_answers() {
        both_drivers(async || {
            let ca = TestCa::new();
            let w = Workload::new();
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let metrics = Arc::new(CertMetrics::default());
            let start_at = Instant::now();
            let published = start(w.config(addr, &ca, Duration::from_millis(100)), &metrics);
            assert!(eventually(WAIT, || counts(&metrics).1 >= 4).await);
            // 50 + 100 + 200 ms steps, each drawn from its upper half.
            assert!(start_at.elapsed() >= Duration::from_millis(175));
            assert!(published.borrow().is_empty());
            let (mut server, _) = w
                .server(&ca, &addr.to_string(), &["--fail-first", "2"])
                .await;
            let errors = counts(&metrics).1;
            assert!(eventually(WAIT, || !published.borrow().is_empty()).await);
            assert!(counts(&metrics).1 >= errors);
            assert_eq!(
                first_words(&mut server, 4).await,
                ["ready", "failed", "failed", "certify"]
            );
            assert_eq!(counts(&metrics).0, 1);
        });
    }

    /// The first word of each of the server's first `n` lines (they come
    /// through a pipe and a thread: maybe after the proxy saw the answer
    /// they tell of).
    async fn first_words(server: &mut PyServer, n: usize) -> Vec<String> {
        eventually(WAIT, || server.lines().len() >= n).await;
        server
            .lines()
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    }

    /// (d) A certificate for another identity, or from another CA, is
    /// refused: not published, counted, retried; a good one then is.
    #[test]
    fn a_wrong_certificate_is_refused_and_retried() {
        both_drivers(async || {
            let ca = TestCa::new();
            let other_ca = TestCa::new();
            let w = Workload::new();
            let wrong_name = [
                "--name",
                "db.default.serviceaccount.identity.linkerd.cluster.local",
            ];
            let (mut server, addr) = w.server(&ca, "127.0.0.1:0", &wrong_name).await;
            let metrics = Arc::new(CertMetrics::default());
            let published = start(w.config(addr, &ca, Duration::from_millis(100)), &metrics);
            assert!(eventually(WAIT, || counts(&metrics).1 >= 2).await);
            // (See `first_words`.)
            let certified = |s: &mut PyServer| {
                s.lines()
                    .iter()
                    .filter(|l| l.starts_with("certify "))
                    .count()
            };
            assert!(eventually(WAIT, || certified(&mut server) >= 2).await);
            drop(server);
            let (mut server, _) = w.server(&other_ca, &addr.to_string(), &[]).await;
            let errors = counts(&metrics).1;
            assert!(eventually(WAIT, || counts(&metrics).1 >= errors + 2).await);
            assert!(eventually(WAIT, || certified(&mut server) >= 2).await);
            assert!(published.borrow().is_empty());
            assert_eq!(counts(&metrics).0, 0);
            drop(server);
            let (_server, _) = w.server(&ca, &addr.to_string(), &[]).await;
            assert!(eventually(WAIT, || !published.borrow().is_empty()).await);
            assert_eq!(counts(&metrics).0, 1);
        });
    }

    /// (e) A service that never answers: each attempt gives up at the call
    /// timeout and is retried; one that hangs once, then answers, gets the
    /// certificate published on the retry.
    #[test]
    fn a_silent_service_times_out_and_is_retried() {
        both_drivers(async || {
            let ca = TestCa::new();
            let w = Workload::new();
            // Accepts connections (the kernel's backlog) but never speaks.
            let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let metrics = Arc::new(CertMetrics::default());
            let started = Instant::now();
            let published = start(
                w.config(mute.local_addr().unwrap(), &ca, Duration::from_millis(100)),
                &metrics,
            );
            assert!(eventually(WAIT, || counts(&metrics).1 >= 2).await);
            let took = started.elapsed();
            assert!(
                took >= Duration::from_secs(2) && took < Duration::from_secs(6),
                "{took:?}"
            );
            assert!(published.borrow().is_empty());

            let (mut server, addr) = w.server(&ca, "127.0.0.1:0", &["--hang-first", "1"]).await;
            let metrics = Arc::new(CertMetrics::default());
            let started = Instant::now();
            let published = start(w.config(addr, &ca, Duration::from_millis(100)), &metrics);
            assert!(eventually(WAIT, || !published.borrow().is_empty()).await);
            assert!(started.elapsed() >= Duration::from_millis(900));
            assert_eq!(counts(&metrics), (1, 1));
            assert_eq!(
                first_words(&mut server, 3).await,
                ["ready", "hung", "certify"]
            );
        });
    }
}
