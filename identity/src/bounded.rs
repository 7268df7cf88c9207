//! Peer certificate verifiers that refuse a long chain before verifying
//! it.
//!
//! Path building tries every presented intermediate whose subject names
//! the issuer it looks for, and a peer chooses those names: fifty
//! intermediates all claiming to be the issuer cost the verifier about
//! ten times a normal handshake's CPU, and a client needs no valid
//! certificate to send them (only the proxy's SNI). Linkerd's chains are a
//! leaf and its issuer, so a few intermediates are plenty.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

/// The most intermediate certificates a peer's chain (or our own) may
/// carry.
pub const MAX_INTERMEDIATES: usize = 3;

/// Why a chain is refused unverified.
#[derive(Debug, thiserror::Error)]
#[error("{0} intermediate certificates; at most {MAX_INTERMEDIATES} are taken")]
pub struct TooManyIntermediates(pub usize);

fn bounded(intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    if intermediates.len() > MAX_INTERMEDIATES {
        let why = TooManyIntermediates(intermediates.len());
        return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(why)),
        )));
    }
    Ok(())
}

/// A client verifier (`inner`) behind the bound.
#[derive(Debug)]
pub(crate) struct BoundedClientVerifier(pub(crate) Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for BoundedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        bounded(intermediates)?;
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A server verifier (`inner`) behind the bound.
#[derive(Debug)]
pub(crate) struct BoundedServerVerifier(pub(crate) Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for BoundedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        bounded(intermediates)?;
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}
