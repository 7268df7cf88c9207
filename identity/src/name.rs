//! Identity names: DNS-like names such as
//! `web.default.serviceaccount.identity.linkerd.cluster.local`, which a
//! server's certificate must carry and which SNI asks for.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::ServerName;

/// A workload identity, validated as a DNS name (cheap to clone).
#[derive(Clone)]
pub struct Name(Arc<Inner>);

struct Inner {
    text: Arc<str>,
    server: ServerName<'static>,
}

/// Why a string is not an identity name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid identity name {0:?}: not a DNS name")]
pub struct NameError(pub String);

impl Name {
    /// Parses `s` (case-insensitive: kept lowercased, as certificates
    /// compare names; a trailing dot is dropped).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let lower = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        match ServerName::try_from(lower.clone()) {
            Ok(server @ ServerName::DnsName(_)) => Ok(Self(Arc::new(Inner {
                text: lower.into(),
                server,
            }))),
            _ => Err(NameError(s.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The name as a shared string (metric labels keep it).
    pub fn to_shared(&self) -> Arc<str> {
        self.0.text.clone()
    }

    /// The name as rustls' server name: SNI, and what the peer's
    /// certificate is verified against.
    pub fn server_name(&self) -> ServerName<'static> {
        self.0.server.clone()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for Name {}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.text.hash(h);
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0.text, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linkerd_identities_parse_lowercased() {
        let n = Name::parse("Web.Default.serviceaccount.identity.linkerd.cluster.local.").unwrap();
        assert_eq!(
            n.as_str(),
            "web.default.serviceaccount.identity.linkerd.cluster.local"
        );
        assert!(matches!(n.server_name(), ServerName::DnsName(_)));
    }

    #[test]
    fn non_names_are_rejected() {
        for bad in ["", "10.0.0.1", "a b.example", "bad_-.", "x..y"] {
            assert_eq!(Name::parse(bad), Err(NameError(bad.to_owned())), "{bad:?}");
        }
    }
}
