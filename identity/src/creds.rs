//! A workload's credentials (its certificate chain and key) checked
//! against the mesh's trust anchors, and the rustls configurations made
//! from them, ready for workers to use.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::tls::{self, TlsError, H2_ALPN, TRANSPORT_HEADER_ALPN};
use crate::x509::{self, Validity, X509Error};
use crate::Name;

/// Why credentials were refused.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("no certificate")]
    NoCertificate,
    #[error(transparent)]
    X509(#[from] X509Error),
    #[error("the key does not match the certificate: {0}")]
    KeyMismatch(rustls::Error),
    #[error("the certificate is not valid for {name} under the trust anchors: {source}")]
    Untrusted { name: Name, source: rustls::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Peers would refuse it: more intermediates than they take, or a
    /// TLS Certificate message over the 64 KiB they read.
    #[error("the chain cannot be presented: {0}")]
    Unpresentable(String),
}

/// The largest handshake message rustls peers (linkerd2-proxy's among
/// them) read: a chain whose Certificate message is larger is refused by
/// every one of them.
const MAX_CERTIFICATE_MESSAGE: usize = 0xffff;

/// Whether peers could take `chain` (leaf first) as this proxy's.
fn presentable(chain: &[CertificateDer<'_>]) -> Result<(), CredsError> {
    let intermediates = chain.len().saturating_sub(1);
    if intermediates > crate::MAX_INTERMEDIATES {
        let why = crate::TooManyIntermediates(intermediates);
        return Err(CredsError::Unpresentable(why.to_string()));
    }
    // TLS 1.3 (RFC 8446 §4.4.2): a context length byte, a 3-byte list
    // length, and per certificate a 3-byte length and 2-byte extensions.
    let len = 4 + chain.iter().map(|c| 5 + c.len()).sum::<usize>();
    if len > MAX_CERTIFICATE_MESSAGE {
        return Err(CredsError::Unpresentable(format!(
            "a {len}-byte Certificate message; peers read at most {MAX_CERTIFICATE_MESSAGE}"
        )));
    }
    Ok(())
}

/// A certificate chain (leaf first) and its key, verified: the key is the
/// leaf's, and the chain is valid now for `name` under the trust anchors.
pub struct Credentials {
    pub name: Name,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub validity: Validity,
}

impl Credentials {
    /// Checks `chain` and `key` for `name` against `roots` at `now`.
    pub fn verify(
        name: Name,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: &Arc<RootCertStore>,
        now: SystemTime,
    ) -> Result<Self, CredsError> {
        let leaf = chain.first().ok_or(CredsError::NoCertificate)?;
        presentable(&chain)?;
        let validity = x509::validity(leaf)?;
        let provider = tls::provider();
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .map_err(CredsError::KeyMismatch)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(|e| CredsError::Tls(TlsError::Verifier(e)))?;
        let at = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        verifier
            .verify_server_cert(leaf, &chain[1..], &name.server_name(), &[], at)
            .map_err(|source| CredsError::Untrusted {
                name: name.clone(),
                source,
            })?;
        Ok(Self {
            name,
            chain,
            key,
            validity,
        })
    }
}

/// What a worker needs to speak mutual TLS as this workload.
pub struct TlsConfigs {
    /// This proxy's identity (inbound: the SNI it terminates).
    pub name: Name,
    /// Terminates meshed connections: our certificate, the client's asked
    /// for and verified, ALPN `transport.l5d.io/v1` accepted.
    pub server: Arc<ServerConfig>,
    /// The same, accepting ALPN `h2` instead: gRPC clients of this proxy's
    /// own servers (tap).
    pub server_h2: Arc<ServerConfig>,
    /// The same, without ALPN (a client's offer is ignored, as
    /// linkerd2-proxy's admin server does): HTTP clients of the admin
    /// server, HTTP/2 told by its preface.
    pub server_http: Arc<ServerConfig>,
    /// Originates mutual TLS to an endpoint with an identity (no ALPN).
    pub client: Arc<ClientConfig>,
    /// The same, offering ALPN `transport.l5d.io/v1` (a peer's
    /// opaque-transport port, where the transport header follows).
    pub client_transport_header: Arc<ClientConfig>,
    /// The same, offering ALPN `h2`: gRPC to the control plane.
    pub client_h2: Arc<ClientConfig>,
    /// When the certificate expires.
    pub validity: Validity,
}

impl TlsConfigs {
    /// Builds the configurations from verified credentials.
    pub fn new(creds: &Credentials, roots: &Arc<RootCertStore>) -> Result<Self, TlsError> {
        let client = |alpn: &[&[u8]]| {
            tls::client_config(
                roots.clone(),
                creds.chain.clone(),
                creds.key.clone_key(),
                alpn,
            )
        };
        Ok(Self {
            name: creds.name.clone(),
            server: tls::server_config(
                roots.clone(),
                creds.chain.clone(),
                creds.key.clone_key(),
                &[TRANSPORT_HEADER_ALPN],
            )?,
            server_h2: tls::server_config(
                roots.clone(),
                creds.chain.clone(),
                creds.key.clone_key(),
                &[H2_ALPN],
            )?,
            server_http: tls::server_config(
                roots.clone(),
                creds.chain.clone(),
                creds.key.clone_key(),
                &[],
            )?,
            client: client(&[])?,
            client_transport_header: client(&[TRANSPORT_HEADER_ALPN])?,
            client_h2: client(&[H2_ALPN])?,
            validity: creds.validity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use std::time::Duration;

    struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        roots: Arc<RootCertStore>,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let roots = tls::trust_anchors([cert.der().clone()]).unwrap();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            roots,
        }
    }

    fn leaf(
        ca: &Ca,
        name: &str,
        days: (u8, u8),
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.into()]).unwrap();
        // Days of December 2026; "now" is the 2nd.
        params.not_before = rcgen::date_time_ymd(2026, 12, days.0);
        params.not_after = rcgen::date_time_ymd(2026, 12, days.1);
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    fn at_2026_12_02() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_169_600 + 3600)
    }

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn good_credentials_build_configs() {
        let ca = ca();
        let id = "web.ns.serviceaccount.identity.linkerd.cluster.local";
        let (chain, key) = leaf(&ca, id, (1, 3));
        let creds = Credentials::verify(name(id), chain, key, &ca.roots, at_2026_12_02()).unwrap();
        let cfgs = TlsConfigs::new(&creds, &ca.roots).unwrap();
        assert!(cfgs.client.alpn_protocols.is_empty());
        assert_eq!(
            cfgs.client_transport_header.alpn_protocols,
            vec![TRANSPORT_HEADER_ALPN.to_vec()]
        );
        assert!(cfgs.validity.not_after > at_2026_12_02());
    }

    #[test]
    fn wrong_name_anchor_dates_or_key_are_refused() {
        let ca = ca();
        let id = "web.ns.serviceaccount.identity.linkerd.cluster.local";
        let now = at_2026_12_02();
        let (chain, key) = leaf(
            &ca,
            "other.ns.serviceaccount.identity.linkerd.cluster.local",
            (1, 3),
        );
        let e = Credentials::verify(name(id), chain, key, &ca.roots, now)
            .err()
            .unwrap();
        assert!(matches!(e, CredsError::Untrusted { .. }), "{e}");
        let (chain, key) = leaf(&ca, id, (1, 3));
        let e = Credentials::verify(name(id), chain, key, &self::ca().roots, now)
            .err()
            .unwrap();
        assert!(matches!(e, CredsError::Untrusted { .. }), "{e}");
        let (chain, key) = leaf(&ca, id, (1, 1));
        let e = Credentials::verify(name(id), chain, key, &ca.roots, now)
            .err()
            .unwrap();
        assert!(e.to_string().contains("xpired"), "{e}");
        let (chain, key) = leaf(&ca, id, (3, 5));
        let e = Credentials::verify(name(id), chain, key, &ca.roots, now)
            .err()
            .unwrap();
        assert!(matches!(e, CredsError::Untrusted { .. }), "{e}");
        let (chain, _) = leaf(&ca, id, (1, 3));
        let (_, other_key) = leaf(&ca, id, (1, 3));
        let e = Credentials::verify(name(id), chain, other_key, &ca.roots, now)
            .err()
            .unwrap();
        assert!(matches!(e, CredsError::KeyMismatch(_)), "{e}");
        let e = Credentials::verify(name(id), vec![], leaf(&ca, id, (1, 3)).1, &ca.roots, now)
            .err()
            .unwrap();
        assert!(matches!(e, CredsError::NoCertificate));
    }

    /// A chain peers would refuse is refused here, before it replaces a
    /// working one: too many intermediates, or over 64 KiB in all.
    #[test]
    fn chains_peers_would_refuse_are_refused() {
        let ca = ca();
        let id = "web.ns.serviceaccount.identity.linkerd.cluster.local";
        let now = at_2026_12_02();
        let (chain, key) = leaf(&ca, id, (1, 3));
        // Unused intermediates are no harm, up to the bound.
        let (other, _) = leaf(&ca, "other.example", (1, 3));
        let with = |n: usize| {
            let mut c = chain.clone();
            c.extend(std::iter::repeat_n(other[0].clone(), n));
            c
        };
        let max = crate::MAX_INTERMEDIATES;
        Credentials::verify(name(id), with(max), key.clone_key(), &ca.roots, now).unwrap();
        let e = Credentials::verify(name(id), with(max + 1), key.clone_key(), &ca.roots, now)
            .err()
            .unwrap();
        assert!(matches!(e, CredsError::Unpresentable(_)), "{e}");
        // A leaf with names enough to make the message over 64 KiB.
        let big_key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = std::iter::once(id.to_string())
            .chain((0..2000).map(|i| format!("n{i:05}.some-long-name.example.org")))
            .collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 12, 1);
        params.not_after = rcgen::date_time_ymd(2026, 12, 3);
        let big = params.signed_by(&big_key, &ca.issuer).unwrap();
        assert!(big.der().len() > 0xffff, "{}", big.der().len());
        let big_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(big_key.serialize_der()));
        let e = Credentials::verify(name(id), vec![big.der().clone()], big_key, &ca.roots, now)
            .err()
            .unwrap();
        assert!(e.to_string().contains("Certificate message"), "{e}");
    }
}
