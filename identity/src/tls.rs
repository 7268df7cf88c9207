//! rustls configurations for mutual TLS between proxies: TLS 1.3 only,
//! ECDSA/Ed25519/RSA signatures as aws-lc-rs verifies them, the peer
//! verified against the mesh's trust anchors.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::bounded::{BoundedClientVerifier, BoundedServerVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN of Linkerd's transport header (connections to a peer proxy's
/// opaque-transport port).
pub const TRANSPORT_HEADER_ALPN: &[u8] = b"transport.l5d.io/v1";

/// ALPN of HTTP/2, which gRPC servers (Linkerd's control plane) require
/// of TLS clients.
pub const H2_ALPN: &[u8] = b"h2";

/// Why certificate material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no trust anchors")]
    NoTrustAnchors,
    #[error("trust anchor rejected")]
    TrustAnchor(#[source] rustls::Error),
    #[error("certificate or key rejected")]
    Material(#[source] rustls::Error),
    #[error("certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The crypto provider every config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// The identity a certificate proves: its first DNS name that is a valid
/// identity (how linkerd2-proxy names a client).
pub fn dns_name(cert: &CertificateDer<'_>) -> Option<crate::Name> {
    crate::x509::dns_names(cert)
        .ok()?
        .iter()
        .find_map(|n| crate::Name::parse(n).ok())
}

/// The mesh's trust anchors from DER certificates.
pub fn trust_anchors(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(TlsError::TrustAnchor)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    Ok(Arc::new(roots))
}

/// The server verifier of every client config: the mesh's trust anchors
/// (webpki, as `with_root_certificates` makes it), behind the bound on
/// intermediates.
fn server_verifier(roots: Arc<RootCertStore>) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(TlsError::Verifier)?;
    Ok(Arc::new(BoundedServerVerifier(webpki)))
}

/// The config for connections this proxy originates: presents `chain`
/// (leaf first) with `key`, verifies the server against `roots` and the
/// name it is asked for (SNI); `alpn` offered as given.
pub fn client_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Material)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier(roots)?)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::Material)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A client config with no certificate of its own, verifying the server
/// against `roots` (the identity service, before this proxy has one);
/// `alpn` offered as given.
pub fn anonymous_client_config(
    roots: Arc<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Material)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier(roots)?)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The config for connections this proxy terminates: presents `chain`
/// with `key`, asks for the client's certificate and verifies it against
/// `roots` when given (a client without one is still accepted, as
/// unauthenticated; policy decides what it may do).
pub fn server_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)?;
    let verifier = Arc::new(BoundedClientVerifier(verifier));
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Material)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Material)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivatePkcs8KeyDer;

    fn ca() -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        CertificateDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        (rcgen::Issuer::new(params, key), der)
    }

    #[test]
    fn configs_build_from_a_ca_and_a_leaf() {
        let (issuer, ca_der) = ca();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![
            "web.ns.serviceaccount.identity.linkerd.cluster.local".into(),
        ])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
        let roots = trust_anchors([ca_der]).unwrap();
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let c = client_config(
            roots.clone(),
            vec![leaf.der().clone()],
            key(),
            &[TRANSPORT_HEADER_ALPN],
        )
        .unwrap();
        assert_eq!(c.alpn_protocols, vec![TRANSPORT_HEADER_ALPN.to_vec()]);
        server_config(roots, vec![leaf.der().clone()], key(), &[]).unwrap();
    }

    /// A peer presenting more intermediates than the bound is refused
    /// before any of them is verified; the bound itself is served.
    #[test]
    fn long_client_chains_are_refused_unverified() {
        let (issuer, ca_der) = ca();
        let roots = trust_anchors([ca_der.clone()]).unwrap();
        let make = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.into()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (cert.der().clone(), key)
        };
        let (server_cert, server_key) = make("b.example");
        let server = server_config(roots.clone(), vec![server_cert], server_key, &[]).unwrap();
        let handshake = |intermediates: usize| {
            let (cert, key) = make("a.example");
            let mut chain = vec![cert];
            chain.extend(std::iter::repeat_n(ca_der.clone(), intermediates));
            let client = client_config(roots.clone(), chain, key, &[]).unwrap();
            let mut c =
                rustls::ClientConnection::new(client, "b.example".try_into().unwrap()).unwrap();
            let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
            for _ in 0..10 {
                let mut buf = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut buf).unwrap();
                }
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets()?;
                let mut buf = Vec::new();
                while s.wants_write() {
                    s.write_tls(&mut buf).unwrap();
                }
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets().unwrap();
                if !s.is_handshaking() {
                    return Ok::<_, rustls::Error>(s.peer_certificates().map(<[_]>::len));
                }
            }
            panic!("no end to the handshake");
        };
        let max = crate::MAX_INTERMEDIATES;
        assert_eq!(handshake(max).unwrap(), Some(max + 1));
        let e = handshake(max + 1).unwrap_err();
        assert!(e.to_string().contains("TooManyIntermediates"), "{e}");
    }

    #[test]
    fn no_anchor_or_a_key_that_does_not_match_is_refused() {
        assert!(matches!(trust_anchors([]), Err(TlsError::NoTrustAnchors)));
        let (issuer, ca_der) = ca();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let wrong = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other_key.serialize_der()));
        let roots = trust_anchors([ca_der]).unwrap();
        assert!(matches!(
            client_config(roots, vec![leaf.der().clone()], wrong, &[]),
            Err(TlsError::Material(_))
        ));
    }
}
