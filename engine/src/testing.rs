//! Test support shared by the unit tests of the TLS and control-plane
//! pieces: a throwaway CA, runtimes of both drivers, waiting for a helper
//! thread without blocking the runtime, temporary directories, and Python
//! helper servers (Debian's python3) read line by line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

// Also the integration tests' (`tests/common` includes the file), which
// use what the unit tests do not (`join`).
#[allow(dead_code)]
mod temp_dir;
pub(crate) use temp_dir::TempDir;

/// A CA of its own (each has its own name, so another CA's leaf has an
/// unknown issuer) and the leaves it signs.
pub(crate) struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) roots: Arc<RootCertStore>,
    /// The CA's certificate and key, PEM (for helper servers that sign).
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let n = N.fetch_add(1, Ordering::Relaxed);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("ringmesh test CA {n}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let roots = ringmesh_identity::tls::trust_anchors([cert.der().clone()]).unwrap();
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: rcgen::Issuer::new(params, key),
            roots,
        }
    }

    /// A certificate for `name` (a DNS SAN) and its key.
    pub(crate) fn leaf(
        &self,
        name: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    /// A client config presenting a certificate for `name`.
    pub(crate) fn client(&self, name: &str) -> Arc<ClientConfig> {
        let (chain, key) = self.leaf(name);
        ringmesh_identity::tls::client_config(self.roots.clone(), chain, key, &[]).unwrap()
    }

    /// The TLS configurations of a proxy whose identity is `name`.
    pub(crate) fn configs(&self, name: &str) -> ringmesh_identity::TlsConfigs {
        let (chain, key) = self.leaf(name);
        let id = ringmesh_identity::Name::parse(name).unwrap();
        let creds = ringmesh_identity::Credentials::verify(
            id,
            chain,
            key,
            &self.roots,
            std::time::SystemTime::now(),
        )
        .unwrap();
        ringmesh_identity::TlsConfigs::new(&creds, &self.roots).unwrap()
    }

    /// A server config presenting a certificate for `name`.
    pub(crate) fn server(&self, name: &str) -> Arc<ServerConfig> {
        let (chain, key) = self.leaf(name);
        ringmesh_identity::tls::server_config(self.roots.clone(), chain, key, &[]).unwrap()
    }
}

/// Runs `f` on an io_uring runtime, then on an epoll one.
pub(crate) fn both_drivers(f: impl AsyncFn()) {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring (these tests need it)");
    rt.block_on(f());
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(f());
}

/// A helper thread's result, the runtime running meanwhile (a socket's
/// close on io_uring is itself an operation, so blocking on the join
/// could wait for ever).
pub(crate) async fn finished<T>(t: thread::JoinHandle<T>) -> T {
    while !t.is_finished() {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    t.join().unwrap()
}

/// Waits (the runtime running) until `cond` holds, at most `limit`.
pub(crate) async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A helper server run by Debian's python3 (`engine/tests/grpc/*.py`),
/// its stdout lines collected by a thread; killed on drop.
pub(crate) struct PyServer {
    child: Child,
    /// Held so the server (which serves until stdin closes) stays up.
    _stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl PyServer {
    /// Runs `engine/tests/grpc/{script}` with `args`.
    pub(crate) fn spawn(script: &str, args: &[&str]) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/grpc")
            .join(script);
        let mut child = Command::new("/usr/bin/python3")
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("Debian's python3 (scripts/install-test-deps.sh)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Every line printed so far.
    pub(crate) fn lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// The first line (seen or to come, within 30 s) starting with
    /// `prefix`, without the prefix.
    pub(crate) async fn line(&mut self, prefix: &str) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.lines().iter().find_map(|l| l.strip_prefix(prefix)) {
                return l.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the helper server exited ({status}) before printing {prefix:?}");
            }
            assert!(
                Instant::now() < end,
                "no {prefix:?} line from the helper server"
            );
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
