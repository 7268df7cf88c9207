//! A series' TLS labels: how the connection behind it was secured, with
//! linkerd2-proxy's label names and values (`tls`, then `no_tls_reason`,
//! `client_id`, `server_id` or `sni`), so dashboards that split traffic by
//! mTLS keep working.

use std::sync::Arc;

use super::labels::push_label;

/// How the connection a series counts was secured. Part of every TCP and
/// HTTP label set: a TCP series takes its own connection's status, an HTTP
/// series the status of the connection its requests came in on (inbound) or
/// went out on (outbound).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsStatus {
    /// No TLS: `tls="no_identity"`, and `no_tls_reason="…"` when the
    /// reason has a label.
    NoIdentity(NoTlsReason),
    /// Mutual TLS this proxy terminated (an accepted connection, and the
    /// requests on it): `tls="true",client_id="<identity>"`, the identity
    /// empty when the client presented none.
    Accepted { client_id: Option<Arc<str>> },
    /// Mutual TLS this proxy originated to an endpoint:
    /// `tls="true",server_id="<identity>"`.
    Connected { server_id: Arc<str> },
    /// TLS relayed without being terminated here (not meant for this
    /// proxy): `tls="opaque",sni="<server name>"`.
    Opaque { sni: Arc<str> },
}

/// Why a connection has no TLS (linkerd2-proxy's `no_tls_reason` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoTlsReason {
    /// This proxy has no identity, so it neither offers nor accepts mTLS.
    /// No `no_tls_reason` label: the bare `tls="no_identity"` ringmesh has
    /// always exported (linkerd2-proxy says `tls="disabled"` in this state;
    /// the identity work decides whether to follow it).
    NoProxyIdentity,
    /// A connection within this host (from the application on the outbound
    /// side, to it on the inbound side): `loopback`.
    Loopback,
    /// A port configured to skip protocol detection: `port_skipped`.
    PortSkipped,
    /// The client did not start a TLS handshake: `no_tls_from_remote`.
    NoTlsFromRemote,
    /// Discovery named no identity for the endpoint:
    /// `not_provided_by_service_discovery`.
    NotProvidedByServiceDiscovery,
}

impl NoTlsReason {
    fn label(self) -> Option<&'static str> {
        match self {
            Self::NoProxyIdentity => None,
            Self::Loopback => Some("loopback"),
            Self::PortSkipped => Some("port_skipped"),
            Self::NoTlsFromRemote => Some("no_tls_from_remote"),
            Self::NotProvidedByServiceDiscovery => Some("not_provided_by_service_discovery"),
        }
    }
}

impl NoTlsReason {
    /// The reason as linkerd2-proxy writes it where it always names one
    /// (tap's `tls` label): this proxy without an identity is `disabled`.
    pub fn as_str(self) -> &'static str {
        self.label().unwrap_or("disabled")
    }
}

impl TlsStatus {
    /// Every connection until ringmesh has an identity of its own.
    pub const NO_PROXY_IDENTITY: Self = Self::NoIdentity(NoTlsReason::NoProxyIdentity);

    /// Appends `,tls="…"` and the labels that go with it.
    pub(crate) fn push_labels(&self, s: &mut String) {
        match self {
            Self::NoIdentity(why) => {
                s.push_str(",tls=\"no_identity\"");
                if let Some(why) = why.label() {
                    push_label(s, "no_tls_reason", why);
                }
            }
            Self::Accepted { client_id } => {
                s.push_str(",tls=\"true\"");
                push_label(s, "client_id", client_id.as_deref().unwrap_or(""));
            }
            Self::Connected { server_id } => {
                s.push_str(",tls=\"true\"");
                push_label(s, "server_id", server_id);
            }
            Self::Opaque { sni } => {
                s.push_str(",tls=\"opaque\"");
                push_label(s, "sni", sni);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(tls: TlsStatus) -> String {
        let mut s = String::new();
        tls.push_labels(&mut s);
        s
    }

    #[test]
    fn no_identity_without_a_reason_label_is_todays_label() {
        assert_eq!(labels(TlsStatus::NO_PROXY_IDENTITY), ",tls=\"no_identity\"");
    }

    #[test]
    fn no_identity_reasons() {
        for (why, label) in [
            (NoTlsReason::Loopback, "loopback"),
            (NoTlsReason::PortSkipped, "port_skipped"),
            (NoTlsReason::NoTlsFromRemote, "no_tls_from_remote"),
            (
                NoTlsReason::NotProvidedByServiceDiscovery,
                "not_provided_by_service_discovery",
            ),
        ] {
            assert_eq!(
                labels(TlsStatus::NoIdentity(why)),
                format!(",tls=\"no_identity\",no_tls_reason=\"{label}\"")
            );
        }
    }

    #[test]
    fn accepted_carries_the_client_identity() {
        let id = "web.prod.serviceaccount.identity.linkerd.cluster.local";
        assert_eq!(
            labels(TlsStatus::Accepted {
                client_id: Some(id.into())
            }),
            format!(",tls=\"true\",client_id=\"{id}\"")
        );
        assert_eq!(
            labels(TlsStatus::Accepted { client_id: None }),
            ",tls=\"true\",client_id=\"\""
        );
    }

    #[test]
    fn connected_carries_the_server_identity() {
        let id = "api.prod.serviceaccount.identity.linkerd.cluster.local";
        assert_eq!(
            labels(TlsStatus::Connected {
                server_id: id.into()
            }),
            format!(",tls=\"true\",server_id=\"{id}\"")
        );
    }

    #[test]
    fn opaque_carries_the_sni_escaped() {
        // The SNI comes from the client, unchecked.
        assert_eq!(
            labels(TlsStatus::Opaque {
                sni: "a\"b\\c".into()
            }),
            r#",tls="opaque",sni="a\"b\\c""#
        );
    }
}
