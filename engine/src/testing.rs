//! Test support shared by the unit tests of the TLS pieces: a throwaway
//! CA, runtimes of both drivers, and waiting for a helper thread without
//! blocking the runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A CA of its own (each has its own name, so another CA's leaf has an
/// unknown issuer) and the leaves it signs.
pub(crate) struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) roots: Arc<RootCertStore>,
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
        let der = params.self_signed(&key).unwrap().der().clone();
        let roots = ringmesh_identity::tls::trust_anchors([der]).unwrap();
        Self {
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
