//! The immutable view of discovery that workers route with.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

/// How a destination speaks, when discovery knows better than detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http1" => Ok(Protocol::Http1),
            "http2" => Ok(Protocol::Http2),
            "opaque" => Ok(Protocol::Opaque),
            other => Err(format!(
                "unknown protocol {other:?} (expected http1, http2 or opaque)"
            )),
        }
    }
}

/// One address a service may be reached at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative share of traffic; never zero.
    pub weight: u32,
    /// The endpoint's proxy accepts HTTP/2 from another ringmesh or
    /// linkerd2-proxy (the Destination API's `ProtocolHint::H2`): HTTP/1
    /// requests to it may travel over HTTP/2 with `l5d-orig-proto`.
    pub h2_hint: bool,
    /// The identity the endpoint's proxy proves (mutual TLS to it).
    pub identity: Option<ringmesh_identity::Name>,
    /// The endpoint's proxy takes meshed connections on this port, behind
    /// Linkerd's transport header (with `identity` only).
    pub opaque_transport_port: Option<u16>,
    /// The endpoint's own metric labels merged over its service's (the
    /// Destination API's per-address `metric_labels`: `dst_pod` and the
    /// like), sorted by name; `None`: the service's labels apply.
    pub labels: Option<Arc<[(String, String)]>>,
    /// Requests to this endpoint carry this authority (`Host` /
    /// `:authority`) instead of their own: the Destination API's
    /// `authority_override` (a multicluster gateway, say).
    pub authority_override: Option<Arc<str>>,
    /// How HTTP/2 connections to this endpoint are set up (the Destination
    /// API's `Http2ClientParams`); `None`: the proxy's own settings.
    pub h2_params: Option<Arc<H2Params>>,
    /// The endpoint is this pod itself (one of `LINKERD2_PROXY_INBOUND_IPS`):
    /// reached plainly at its own port, as linkerd2-proxy does (no TLS,
    /// `no_tls_reason="loopback"`, no HTTP/2 upgrade, no transport port or
    /// authority override). Set by the table, never by a resolver.
    pub local: bool,
}

/// HTTP/2 client settings for one endpoint's connections, each `None`
/// where the proxy's own apply. Validated where they are read: the
/// window is at most 2^31 − 1, the frame size within HTTP/2's bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct H2Params {
    /// The initial stream-level flow-control window. (The connection's
    /// window is the proxy's own, `LINKERD2_PROXY_HTTP2_INITIAL_CONNECTION_WINDOW_SIZE`.)
    pub stream_window: Option<u32>,
    /// The largest frame payload this proxy accepts.
    pub max_frame_size: Option<u32>,
    /// Streams reset locally that are remembered (h2's reset-flood guard).
    pub max_concurrent_reset_streams: Option<usize>,
    /// Bytes buffered per stream before sending waits for the peer.
    pub max_send_buf_size: Option<usize>,
    pub keep_alive: Option<H2KeepAlive>,
}

/// HTTP/2 PINGs on an upstream connection: one every `interval` (only
/// while streams are open, unless `while_idle`); a PING not answered
/// within `timeout` ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct H2KeepAlive {
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub while_idle: bool,
}

impl Endpoint {
    /// An endpoint known only by its address (DNS, or a file without
    /// mesh settings).
    pub fn unmeshed(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight,
            h2_hint: false,
            identity: None,
            opaque_transport_port: None,
            labels: None,
            authority_override: None,
            h2_params: None,
            local: false,
        }
    }

    /// Makes this endpoint the pod's own: discovery's mesh settings for it
    /// are dropped (see [`Endpoint::local`]).
    pub fn make_local(&mut self) {
        self.local = true;
        self.h2_hint = false;
        self.identity = None;
        self.opaque_transport_port = None;
        self.authority_override = None;
    }
}

/// A logical destination and its current endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The authority clients use, normalised (`host:port`, host lowercase).
    pub name: Authority,
    pub endpoints: Vec<Endpoint>,
    pub protocol: Option<Protocol>,
    /// Metric labels for traffic to this service, sorted by name; rendered
    /// as `dst_<name>` (the Destination API's metric labels, or the static
    /// file's `labels` table). Empty when discovery has none.
    pub labels: Arc<[(String, String)]>,
    /// Every endpoint carries the `h2` hint (and there is one): computed
    /// once by [`Service::new`], on the control core, not per request.
    all_h2_hint: bool,
    /// Some endpoint has labels or an authority of its own: a request
    /// looks its endpoint up once picked (else it need not).
    per_endpoint: bool,
    /// Why the service has no endpoints, when its resolver knows (a DNS
    /// name that does not exist, a nameserver that fails): its requests
    /// fail at once with it rather than waiting out the fail-fast queue.
    unresolved: Option<Arc<str>>,
}

impl Service {
    pub fn new(
        name: Authority,
        endpoints: Vec<Endpoint>,
        protocol: Option<Protocol>,
        labels: Arc<[(String, String)]>,
    ) -> Self {
        let all_h2_hint = !endpoints.is_empty() && endpoints.iter().all(|e| e.h2_hint);
        let per_endpoint = endpoints
            .iter()
            .any(|e| e.labels.is_some() || e.authority_override.is_some());
        Self {
            name,
            endpoints,
            protocol,
            labels,
            all_h2_hint,
            per_endpoint,
            unresolved: None,
        }
    }

    /// The service with no endpoints because of `why` (see
    /// [`Service::unresolved`]).
    pub fn unresolvable(name: Authority, why: Arc<str>) -> Self {
        let mut svc = Self::new(name, Vec::new(), None, Arc::new([]));
        svc.unresolved = Some(why);
        svc
    }

    /// Why the service has no endpoints, if its resolver said.
    pub fn unresolved(&self) -> Option<&str> {
        self.unresolved.as_deref()
    }

    /// Whether some endpoint has labels or an authority of its own.
    pub fn per_endpoint(&self) -> bool {
        self.per_endpoint
    }

    /// The endpoint at `addr`, if it is one of this service's.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }

    /// Whether every endpoint is meshed (takes HTTP/1 carried over HTTP/2).
    pub fn all_h2_hint(&self) -> bool {
        self.all_h2_hint
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("{0:?} has no port (expected host:port)")]
    NoPort(String),
    #[error("{0:?} has an invalid port")]
    BadPort(String),
    #[error("{0:?} has an empty host")]
    EmptyHost(String),
    #[error("{0:?}: the host is neither an IP address nor a DNS name")]
    BadHost(String),
}

/// A normalised `host:port` name: lowercase host, no trailing dot, IPv6
/// literals in brackets. Literal socket addresses keep their parsed form so a
/// worker can look a service up by original destination without formatting.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Authority(Arc<str>);

impl Authority {
    pub fn parse(s: &str) -> Result<Self, AuthorityError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::from_addr(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| AuthorityError::NoPort(s.to_string()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| AuthorityError::BadPort(s.to_string()))?;
        // One trailing dot: the name is fully qualified.
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.contains(':') {
            return Err(AuthorityError::EmptyHost(s.to_string()));
        }
        // A DNS name: labels of 1 to 63 letters, digits, '-' and '_',
        // joined by dots, 253 bytes at most. (IP literals, bracketed IPv6
        // included, were handled above.) Anything else is refused here,
        // not watched as a name no resolver can look up.
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(AuthorityError::BadHost(s.to_string()));
        }
        Ok(Self(format!("{}:{port}", host.to_ascii_lowercase()).into()))
    }

    /// An address's name; an IPv4-mapped IPv6 address is its IPv4 one
    /// (`[::ffff:10.0.0.1]:80` names the service `10.0.0.1:80` does, as
    /// a redirected IPv4 connection's original destination reads).
    pub fn from_addr(addr: SocketAddr) -> Self {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        Self(addr.to_string().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string, without copying it (a metric label set
    /// is built per request).
    pub fn to_shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The host part, without brackets for IPv6 literals.
    pub fn host(&self) -> &str {
        let (host, _) = self.0.rsplit_once(':').unwrap_or((&self.0, ""));
        host.trim_start_matches('[').trim_end_matches(']')
    }

    pub fn port(&self) -> u16 {
        self.0
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// The socket address, if the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a worker needs to route, frozen at one moment. Published by the
/// control core; never mutated after that.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    by_name: HashMap<Authority, Arc<Service>>,
    /// Services whose name is an `ip:port` literal, for routing by original
    /// destination without formatting a string per connection.
    by_addr: HashMap<SocketAddr, Arc<Service>>,
    /// Profiles (routes, traffic split) by service name...
    profiles: HashMap<Authority, Arc<crate::Profile>>,
    /// ... and those of `ip:port` names by address.
    profiles_by_addr: HashMap<SocketAddr, Arc<crate::Profile>>,
}

impl Snapshot {
    pub fn new(services: impl IntoIterator<Item = Arc<Service>>) -> Self {
        let mut by_name = HashMap::new();
        let mut by_addr = HashMap::new();
        for svc in services {
            if let Some(addr) = svc.name.socket_addr() {
                by_addr.insert(addr, svc.clone());
            }
            by_name.insert(svc.name.clone(), svc);
        }
        Self {
            version: 0,
            by_name,
            by_addr,
            profiles: HashMap::new(),
            profiles_by_addr: HashMap::new(),
        }
    }

    /// The same, with these profiles.
    pub fn with_profiles(mut self, profiles: HashMap<Authority, Arc<crate::Profile>>) -> Self {
        self.profiles_by_addr = profiles
            .iter()
            .filter_map(|(n, p)| Some((n.socket_addr()?, p.clone())))
            .collect();
        self.profiles = profiles;
        self
    }

    /// The profile of an `ip:port` target (an outbound policy's, or
    /// GetProfile's), if it has one.
    pub fn profile_by_addr(&self, addr: SocketAddr) -> Option<&Arc<crate::Profile>> {
        self.profiles_by_addr.get(&addr)
    }

    /// The profile of the service named `name`, if it has one.
    pub fn profile(&self, name: &Authority) -> Option<&Arc<crate::Profile>> {
        self.profiles.get(name)
    }

    /// Set by the channel when published; 0 for a snapshot never published.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub(crate) fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    pub fn service(&self, name: &Authority) -> Option<&Arc<Service>> {
        self.by_name.get(name)
    }

    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<&Arc<Service>> {
        self.by_addr.get(&addr)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_must_be_names_or_ip_literals() {
        for bad in ["[a]:1", "[:1", "]:1", "a b:80", "a\u{0}:80", "\u{3000}:80"] {
            assert!(Authority::parse(bad).is_err(), "{bad:?} accepted");
        }
        let v6 = Authority::parse("[::1]:8080").unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 8080));
        let name = Authority::parse("Web_1.Test.:80").unwrap();
        assert_eq!(name.as_str(), "web_1.test:80");
        // IPv4-mapped: the IPv4 address's name.
        let mapped = Authority::parse("[::ffff:127.0.0.1]:80").unwrap();
        assert_eq!(mapped.as_str(), "127.0.0.1:80");
        assert_eq!(mapped, Authority::parse("[::ffff:7f00:1]:80").unwrap());
    }

    #[test]
    fn authority_normalises() {
        assert_eq!(
            Authority::parse("Web.Test.:8080").unwrap().as_str(),
            "web.test:8080"
        );
        let v6 = Authority::parse("[::1]:80").unwrap();
        assert_eq!(v6.as_str(), "[::1]:80");
        assert_eq!(v6.host(), "::1");
        assert_eq!(v6.port(), 80);
        assert_eq!(v6.socket_addr(), Some("[::1]:80".parse().unwrap()));
        assert!(matches!(
            Authority::parse("web.test"),
            Err(AuthorityError::NoPort(_))
        ));
        assert!(matches!(
            Authority::parse("web.test:99999"),
            Err(AuthorityError::BadPort(_))
        ));
        assert!(matches!(
            Authority::parse(":80"),
            Err(AuthorityError::EmptyHost(_))
        ));
        // Names no resolver can look up are refused, not watched.
        let long_label = format!("{}.test:80", "a".repeat(64));
        let long_name = format!("{}test:80", "abcdefghi.".repeat(26));
        for bad in [
            "a..test:80",
            ".test:80",
            "x.test..:80",
            long_label.as_str(),
            long_name.as_str(),
            "we b.test:80",
        ] {
            assert!(
                matches!(Authority::parse(bad), Err(AuthorityError::BadHost(_))),
                "{bad}"
            );
        }
        let ok_label = format!("{}.test:80", "a".repeat(63));
        assert!(Authority::parse(&ok_label).is_ok());
    }

    #[test]
    fn lookup_by_addr_and_name() {
        let svc = Arc::new(Service::new(
            Authority::parse("10.0.0.1:80").unwrap(),
            vec![],
            None,
            Arc::new([]),
        ));
        let snap = Snapshot::new([svc]);
        assert!(snap
            .service_by_addr("10.0.0.1:80".parse().unwrap())
            .is_some());
        assert!(snap
            .service(&Authority::parse("10.0.0.1:80").unwrap())
            .is_some());
        assert!(snap
            .service_by_addr("10.0.0.1:81".parse().unwrap())
            .is_none());
    }
}
