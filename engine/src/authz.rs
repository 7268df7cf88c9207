//! Inbound authorization without a policy API: Linkerd's default policies
//! (`LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`) and the per-port requirements
//! (`LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY`, `_REQUIRE_TLS`),
//! decided once per connection from the client's address and how it was
//! secured.
//!
//! A denied opaque connection is closed; a denied HTTP request gets 403
//! (gRPC: `PERMISSION_DENIED`) with `l5d-proxy-error` ([`ProxyError`]'s
//! `Forbidden`). Outcomes are counted in linkerd2-proxy's
//! `inbound_{http,tcp}_authz_{allow,deny}_total` with `srv_kind="default"`
//! and the policy's name, as linkerd2-proxy labels its default servers.
//!
//! The policy API (`InboundServerPolicies.WatchPort`: servers,
//! authorizations by network and identity, routes) is not built yet; it is
//! meant to replace [`InboundPolicy::check`]'s table with the port's
//! server.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ringmesh_admin::telemetry::{AuthzKey, AuthzProto, TlsStatus};

use crate::config::PortSet;

/// Linkerd's default inbound policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    Deny,
    /// Everything allowed; labelled `audit`.
    Audit,
}

impl DefaultPolicy {
    pub fn name(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }

    /// The policy with authentication required (a port that requires
    /// identity): unauthenticated variants become authenticated.
    fn authenticated(self) -> Self {
        match self {
            Self::AllUnauthenticated | Self::Audit => Self::AllAuthenticated,
            Self::ClusterUnauthenticated => Self::ClusterAuthenticated,
            p => p,
        }
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all-unauthenticated" => Self::AllUnauthenticated,
            "all-authenticated" => Self::AllAuthenticated,
            "cluster-unauthenticated" => Self::ClusterUnauthenticated,
            "cluster-authenticated" => Self::ClusterAuthenticated,
            "deny" => Self::Deny,
            "audit" => Self::Audit,
            other => {
                return Err(format!(
                    "unknown policy {other:?} (expected all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or audit)"
                ))
            }
        })
    }
}

/// The inbound side's authorization settings.
#[derive(Clone, Debug)]
pub struct InboundPolicy {
    pub default: DefaultPolicy,
    /// `LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS`: the `cluster-*` policies
    /// allow clients from these networks only.
    pub cluster_networks: Vec<ipnet::IpNet>,
    /// Ports whose clients must prove an identity (mutual TLS).
    pub require_identity: PortSet,
    /// Ports whose clients must use TLS terminated here (an identity or
    /// not).
    pub require_tls: PortSet,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        Self {
            default: DefaultPolicy::AllUnauthenticated,
            cluster_networks: Vec::new(),
            require_identity: PortSet::default(),
            require_tls: PortSet::default(),
        }
    }
}

/// One connection's authorization: which policy judged it and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The policy's name (`srv_name`, and `authz_name` when allowed).
    pub policy: &'static str,
    /// Why a denial (the `l5d-proxy-error` text).
    pub reason: &'static str,
}

impl Verdict {
    /// Outbound, and inbound before a check: nothing to authorize.
    pub const UNCHECKED: Verdict = Verdict {
        allowed: true,
        policy: "all-unauthenticated",
        reason: "",
    };
}

impl InboundPolicy {
    /// Whether a client at `client`, secured as `tls`, may use `port`.
    pub fn check(&self, port: u16, client: IpAddr, tls: &TlsStatus) -> Verdict {
        let mut policy = self.default;
        if self.require_identity.contains(port) {
            policy = policy.authenticated();
        }
        let (tls_ok, identity_ok) = match tls {
            TlsStatus::Accepted { client_id } => (true, client_id.is_some()),
            _ => (false, false),
        };
        let in_cluster = || self.cluster_networks.iter().any(|n| n.contains(&client));
        let deny = |reason| Verdict {
            allowed: false,
            policy: policy.name(),
            reason,
        };
        if self.require_tls.contains(port) && !tls_ok {
            return deny("unauthorized connection on server: TLS required on this port");
        }
        let ok = match policy {
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => true,
            DefaultPolicy::AllAuthenticated => identity_ok,
            DefaultPolicy::ClusterUnauthenticated => in_cluster(),
            DefaultPolicy::ClusterAuthenticated => identity_ok && in_cluster(),
            DefaultPolicy::Deny => false,
        };
        if ok {
            return Verdict {
                allowed: true,
                policy: policy.name(),
                reason: "",
            };
        }
        deny(match policy {
            DefaultPolicy::Deny => "unauthorized request on route: the server denies all",
            DefaultPolicy::ClusterUnauthenticated => {
                "unauthorized request on route: the client is not in the cluster networks"
            }
            _ if !identity_ok => {
                "unauthorized request on route: a meshed client identity is required"
            }
            _ => "unauthorized request on route: the client is not in the cluster networks",
        })
    }
}

/// The metric label set of one authorization outcome (`srv_kind` and
/// `authz_kind` are `default`: Linkerd's default policies).
pub(crate) fn key(proto: AuthzProto, target: SocketAddr, v: &Verdict, tls: &TlsStatus) -> AuthzKey {
    AuthzKey {
        proto,
        allowed: v.allowed,
        target,
        srv_kind: Cow::Borrowed("default"),
        srv_name: Cow::Borrowed(v.policy),
        authz_kind: Cow::Borrowed("default"),
        authz_name: Cow::Borrowed(v.policy),
        tls: tls.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: &str) -> InboundPolicy {
        InboundPolicy {
            default: default.parse().unwrap(),
            cluster_networks: vec!["10.0.0.0/8".parse().unwrap()],
            require_identity: PortSet::parse("9000").unwrap(),
            require_tls: PortSet::parse("9100").unwrap(),
        }
    }

    #[test]
    fn default_policies_and_port_requirements() {
        let meshed = TlsStatus::Accepted {
            client_id: Some("a.ns.serviceaccount.identity.linkerd.cluster.local".into()),
        };
        let tls_anon = TlsStatus::Accepted { client_id: None };
        let plain = TlsStatus::NO_PROXY_IDENTITY;
        let inside: IpAddr = "10.1.1.1".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = |p: &InboundPolicy, port, ip, tls| p.check(port, ip, tls).allowed;

        let p = policy("all-unauthenticated");
        assert!(allowed(&p, 80, outside, &plain));
        assert!(
            !allowed(&p, 9000, outside, &plain),
            "port requires identity"
        );
        assert!(!allowed(&p, 9000, inside, &tls_anon));
        assert!(allowed(&p, 9000, outside, &meshed));
        assert_eq!(p.check(9000, outside, &meshed).policy, "all-authenticated");
        assert!(!allowed(&p, 9100, inside, &plain), "port requires TLS");
        assert!(allowed(&p, 9100, inside, &tls_anon));

        let p = policy("all-authenticated");
        assert!(!allowed(&p, 80, inside, &plain));
        assert!(!allowed(&p, 80, inside, &tls_anon));
        assert!(allowed(&p, 80, outside, &meshed));

        let p = policy("cluster-unauthenticated");
        assert!(allowed(&p, 80, inside, &plain));
        assert!(!allowed(&p, 80, outside, &meshed));
        assert_eq!(
            p.check(9000, inside, &plain).policy,
            "cluster-authenticated"
        );

        let p = policy("cluster-authenticated");
        assert!(!allowed(&p, 80, inside, &plain));
        assert!(allowed(&p, 80, inside, &meshed));
        assert!(!allowed(&p, 80, outside, &meshed));

        let p = policy("deny");
        assert!(!allowed(&p, 80, inside, &meshed));
        let p = policy("audit");
        assert!(allowed(&p, 80, outside, &plain));
        assert_eq!(p.check(80, outside, &plain).policy, "audit");
        assert!("allow".parse::<DefaultPolicy>().is_err());
    }
}
