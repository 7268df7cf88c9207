//! Configuration: raw strings from a [`ConfigSource`] (the environment, or a
//! map in tests) validated into a typed [`Config`] before anything starts.
//! Every bad variable is reported, not just the first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ringmesh_admin::telemetry::Direction;
use ringmesh_discovery::dns::DnsConfig;
use ringmesh_discovery::Authority;
use ringmesh_identity::Name;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Where raw configuration comes from.
pub trait ConfigSource {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl ConfigSource for Env {
    /// A value that is not UTF-8 is read lossily (its bad bytes become
    /// U+FFFD), so it is refused as an invalid value rather than taken for
    /// unset (a `deny` policy with a stray byte became the default, allow).
    fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    }
}

impl ConfigSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl ConfigSource for BTreeMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).map(|s| s.to_string())
    }
}

pub const LOG: &str = "LINKERD2_PROXY_LOG";
pub const LOG_FORMAT: &str = "LINKERD2_PROXY_LOG_FORMAT";
pub const ACCESS_LOG: &str = "LINKERD2_PROXY_ACCESS_LOG";
pub const CORES: &str = "LINKERD2_PROXY_CORES";
pub const CORES_MIN: &str = "LINKERD2_PROXY_CORES_MIN";
pub const CORES_MAX: &str = "LINKERD2_PROXY_CORES_MAX";
pub const CORES_MAX_RATIO: &str = "LINKERD2_PROXY_CORES_MAX_RATIO";
pub const IO_DRIVER: &str = "RINGMESH_IO_DRIVER";
pub const OUTBOUND_LISTEN_ADDR: &str = "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR";
pub const INBOUND_LISTEN_ADDR: &str = "LINKERD2_PROXY_INBOUND_LISTEN_ADDR";
pub const OUTBOUND_LISTEN_ADDRS: &str = "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS";
pub const OUTBOUND_CONNECT_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT";
pub const INBOUND_CONNECT_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT";
pub const INBOUND_ACCEPT_KEEPALIVE: &str = "LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE";
pub const OUTBOUND_ACCEPT_KEEPALIVE: &str = "LINKERD2_PROXY_OUTBOUND_ACCEPT_KEEPALIVE";
pub const INBOUND_CONNECT_KEEPALIVE: &str = "LINKERD2_PROXY_INBOUND_CONNECT_KEEPALIVE";
pub const OUTBOUND_CONNECT_KEEPALIVE: &str = "LINKERD2_PROXY_OUTBOUND_CONNECT_KEEPALIVE";
pub const INBOUND_ACCEPT_USER_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_ACCEPT_USER_TIMEOUT";
pub const OUTBOUND_ACCEPT_USER_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_ACCEPT_USER_TIMEOUT";
pub const INBOUND_CONNECT_USER_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_CONNECT_USER_TIMEOUT";
pub const OUTBOUND_CONNECT_USER_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_CONNECT_USER_TIMEOUT";
pub const INBOUND_TCP_LISTEN_BACKLOG: &str = "LINKERD2_PROXY_INBOUND_TCP_LISTEN_BACKLOG";
pub const OUTBOUND_TCP_LISTEN_BACKLOG: &str = "LINKERD2_PROXY_OUTBOUND_TCP_LISTEN_BACKLOG";
pub const INBOUND_IPS: &str = "LINKERD2_PROXY_INBOUND_IPS";
pub const INBOUND_GATEWAY_SUFFIXES: &str = "LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES";
pub const DISCOVERY_STATIC: &str = "RINGMESH_DISCOVERY_STATIC";
pub const DISCOVERY_STATIC_POLL_INTERVAL: &str = "RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL";
pub const TCP_FORWARD: &str = "RINGMESH_TCP_FORWARD";
pub const DISCOVERY_MAX_NAMES: &str = "RINGMESH_DISCOVERY_MAX_NAMES";
pub const INBOUND_TARGET: &str = "RINGMESH_INBOUND_TARGET";
pub const TCP_IDLE_TIMEOUT: &str = "RINGMESH_TCP_IDLE_TIMEOUT";
pub const TCP_BUFFER_SIZE: &str = "RINGMESH_TCP_BUFFER_SIZE";
pub const TCP_SPLICE: &str = "RINGMESH_TCP_SPLICE";
pub const TCP_BULK_BUFFER_SIZE: &str = "RINGMESH_TCP_BULK_BUFFER_SIZE";
pub const TCP_BULK_MEMORY: &str = "RINGMESH_TCP_BULK_MEMORY";
pub const TCP_RING_BUFFERS: &str = "RINGMESH_TCP_RING_BUFFERS";
pub const SHUTDOWN_GRACE_PERIOD: &str = "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD";
pub const DNS_MIN_TTL: &str = "LINKERD2_PROXY_DNS_MIN_TTL";
pub const DNS_MAX_TTL: &str = "LINKERD2_PROXY_DNS_MAX_TTL";
pub const DNS_SERVERS: &str = "RINGMESH_DNS_SERVERS";
pub const INBOUND_DETECT_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT";
pub const OUTBOUND_DETECT_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT";
pub const FAILURE_ACCRUAL_CONSECUTIVE: &str = "RINGMESH_FAILURE_ACCRUAL_CONSECUTIVE";
pub const HTTP2_INITIAL_STREAM_WINDOW_SIZE: &str =
    "LINKERD2_PROXY_HTTP2_INITIAL_STREAM_WINDOW_SIZE";
pub const HTTP2_INITIAL_CONNECTION_WINDOW_SIZE: &str =
    "LINKERD2_PROXY_HTTP2_INITIAL_CONNECTION_WINDOW_SIZE";
/// The prefixes of linkerd2-proxy's HTTP/2 server settings of each side:
/// `_MAX_CONCURRENT_STREAMS`, `_KEEP_ALIVE_INTERVAL`, `_KEEP_ALIVE_TIMEOUT`,
/// `_INITIAL_STREAM_WINDOW_SIZE`, `_INITIAL_CONNECTION_WINDOW_SIZE`,
/// `_MAX_FRAME_SIZE`, `_MAX_HEADER_LIST_SIZE`.
pub const INBOUND_SERVER_HTTP2: &str = "LINKERD2_PROXY_INBOUND_SERVER_HTTP2";
pub const OUTBOUND_SERVER_HTTP2: &str = "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2";
/// The largest `_MAX_HEADER_LIST_SIZE` (the `h2` crate's default).
pub const MAX_HEADER_LIST_SIZE: u32 = 16 << 20;
pub const HTTP2_MAX_STALLED_BYTES: &str = "RINGMESH_HTTP2_MAX_STALLED_BYTES";
pub const HTTP_MAX_IN_FLIGHT_HEAD_BYTES: &str = "RINGMESH_HTTP_MAX_IN_FLIGHT_HEAD_BYTES";
pub const INBOUND_OPAQUE_PORTS: &str = "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION";
pub const OUTBOUND_OPAQUE_PORTS: &str = "RINGMESH_OUTBOUND_OPAQUE_PORTS";
pub const INGRESS_MODE: &str = "LINKERD2_PROXY_INGRESS_MODE";
pub const OUTBOUND_DISABLE_INFORMATIONAL_HEADERS: &str =
    "LINKERD2_PROXY_OUTBOUND_DISABLE_INFORMATIONAL_HEADERS";
pub const ADMIN_LISTEN_ADDR: &str = "LINKERD2_PROXY_ADMIN_LISTEN_ADDR";
pub const SHUTDOWN_ENDPOINT_ENABLED: &str = "LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED";
pub const CONTROL_LISTEN_ADDR: &str = "LINKERD2_PROXY_CONTROL_LISTEN_ADDR";
pub const TAP_SVC_NAME: &str = "LINKERD2_PROXY_TAP_SVC_NAME";
pub const TAP_ALLOW_LOOPBACK: &str = "RINGMESH_TAP_ALLOW_LOOPBACK";
pub const METRICS_RETAIN_IDLE: &str = "LINKERD2_PROXY_METRICS_RETAIN_IDLE";
pub const DETECT_MAX_UNDECIDED: &str = "RINGMESH_DETECT_MAX_UNDECIDED";
pub const HTTP_HEADER_READ_TIMEOUT: &str = "RINGMESH_HTTP_HEADER_READ_TIMEOUT";
pub const HTTP_RESPONSE_TIMEOUT: &str = "RINGMESH_HTTP_RESPONSE_TIMEOUT";
pub const HTTP_REQUEST_TIMEOUT: &str = "RINGMESH_HTTP_REQUEST_TIMEOUT";
pub const HTTP_FAILFAST_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_HTTP_FAILFAST_TIMEOUT";
pub const HTTP_QUEUE_CAPACITY: &str = "LINKERD2_PROXY_OUTBOUND_HTTP_QUEUE_CAPACITY";
pub const TCP_FAILFAST_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_TCP_FAILFAST_TIMEOUT";
pub const TCP_QUEUE_CAPACITY: &str = "LINKERD2_PROXY_OUTBOUND_TCP_QUEUE_CAPACITY";
pub const INBOUND_MAX_IN_FLIGHT: &str = "LINKERD2_PROXY_INBOUND_MAX_IN_FLIGHT";
pub const OUTBOUND_MAX_IN_FLIGHT: &str = "LINKERD2_PROXY_OUTBOUND_MAX_IN_FLIGHT";
/// linkerd2-proxy's names: the inbound one has no `INBOUND_`.
pub const INBOUND_MAX_IDLE_CONNS: &str = "LINKERD2_PROXY_MAX_IDLE_CONNS_PER_ENDPOINT";
pub const OUTBOUND_MAX_IDLE_CONNS: &str = "LINKERD2_PROXY_OUTBOUND_MAX_IDLE_CONNS_PER_ENDPOINT";
pub const INBOUND_POOL_IDLE_TIMEOUT: &str =
    "LINKERD2_PROXY_INBOUND_HTTP1_CONNECTION_POOL_IDLE_TIMEOUT";
pub const OUTBOUND_POOL_IDLE_TIMEOUT: &str =
    "LINKERD2_PROXY_OUTBOUND_HTTP1_CONNECTION_POOL_IDLE_TIMEOUT";
pub const POLICY_SVC_ADDR: &str = "LINKERD2_PROXY_POLICY_SVC_ADDR";
pub const POLICY_SVC_NAME: &str = "LINKERD2_PROXY_POLICY_SVC_NAME";
pub const POLICY_WORKLOAD: &str = "LINKERD2_PROXY_POLICY_WORKLOAD";
pub const INBOUND_PORTS: &str = "LINKERD2_PROXY_INBOUND_PORTS";
pub const INBOUND_POLICY_MAX_PORTS: &str = "RINGMESH_INBOUND_POLICY_MAX_PORTS";
pub const INBOUND_DEFAULT_POLICY: &str = "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY";
pub const POLICY_CLUSTER_NETWORKS: &str = "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS";
pub const INBOUND_PORTS_REQUIRE_IDENTITY: &str = "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY";
pub const INBOUND_PORTS_REQUIRE_TLS: &str = "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_TLS";
/// Linkerd's chart default for the cluster networks: where the policy API
/// is asked about original destinations when the variable is unset (the
/// `cluster-*` default policies have no networks then, as linkerd2-proxy's).
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";
pub const DESTINATION_SVC_ADDR: &str = "LINKERD2_PROXY_DESTINATION_SVC_ADDR";
pub const DESTINATION_SVC_NAME: &str = "LINKERD2_PROXY_DESTINATION_SVC_NAME";
pub const DESTINATION_CONTEXT: &str = "LINKERD2_PROXY_DESTINATION_CONTEXT";
pub const DESTINATION_PROFILE_SUFFIXES: &str = "LINKERD2_PROXY_DESTINATION_PROFILE_SUFFIXES";
pub const DESTINATION_PROFILE_NETWORKS: &str = "LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS";
pub const OUTBOUND_DISCOVERY_IDLE_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT";
pub const CONTROL_STREAM_INITIAL_TIMEOUT: &str = "LINKERD2_PROXY_CONTROL_STREAM_INITIAL_TIMEOUT";
pub const CONTROL_STREAM_IDLE_TIMEOUT: &str = "LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT";
pub const CONTROL_STREAM_LIFETIME: &str = "LINKERD2_PROXY_CONTROL_STREAM_LIFETIME";
pub const IDENTITY_DISABLED: &str = "LINKERD2_PROXY_IDENTITY_DISABLED";
pub const IDENTITY_DIR: &str = "LINKERD2_PROXY_IDENTITY_DIR";
pub const IDENTITY_TRUST_ANCHORS: &str = "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS";
pub const IDENTITY_LOCAL_NAME: &str = "LINKERD2_PROXY_IDENTITY_LOCAL_NAME";
pub const IDENTITY_TOKEN_FILE: &str = "LINKERD2_PROXY_IDENTITY_TOKEN_FILE";
pub const IDENTITY_SVC_ADDR: &str = "LINKERD2_PROXY_IDENTITY_SVC_ADDR";
pub const IDENTITY_SVC_NAME: &str = "LINKERD2_PROXY_IDENTITY_SVC_NAME";
pub const IDENTITY_MIN_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MIN_REFRESH";
pub const IDENTITY_MAX_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";
pub const IDENTITY_CERT: &str = "RINGMESH_IDENTITY_CERT";
pub const IDENTITY_KEY: &str = "RINGMESH_IDENTITY_KEY";
pub const TLS_HANDSHAKE_TIMEOUT: &str = "RINGMESH_TLS_HANDSHAKE_TIMEOUT";

/// Server-speaks-first ports (SMTP, submission, MySQL, Galera, Postgres,
/// Redis, Elasticsearch transport, memcached): detection would only stall them.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

pub const DEFAULT_LOG: &str = "warn,ringmesh=info";

/// How log lines are written (`LINKERD2_PROXY_LOG_FORMAT`, as
/// linkerd2-proxy: `plain` or `json`, any case).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing's default human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line: timestamp, level, fields, target, thread,
    /// and the list of spans the event happened in.
    Json,
}

/// The format of `LINKERD2_PROXY_ACCESS_LOG` (`apache` or `json`, as
/// linkerd2-proxy), written by `access_log.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `<client addr> <client id or -> - [<timestamp>] "<method> <uri> <version>" <status>`
    Apache,
    /// One JSON object per request: `client.addr`, `client.id`,
    /// `timestamp`, `method`, `uri`, `version`, `trace_id`,
    /// `request_bytes`, `status`, `response_bytes`, `total_ns`,
    /// `processing_ns`, `user_agent`, `host`.
    Json,
}

/// Which io driver workers run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring, or epoll when the kernel refuses io_uring.
    Auto,
    Uring,
    Epoll,
}

/// An explicit TCP forward: every worker listens on `listen` and relays to
/// `target` (a discovered service, or a literal address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpForward {
    pub listen: SocketAddr,
    pub target: Authority,
}

/// A set of TCP ports, from a list like `25,587,8000-8100`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let port = |p: &str| match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "{item:?} is not a port (1-65535) or a range like 8000-8100"
                )),
                Ok(n) => Ok(n),
            };
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => (port(item)?, port(item)?),
            };
            if lo > hi {
                return Err(format!("range {item:?} is reversed"));
            }
            ranges.push((lo, hi));
        }
        Ok(Self(ranges))
    }

    /// Every port in the set, in order.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|&(a, b)| a..=b)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }
}

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

/// The whole configuration, read from the environment (linkerd2-proxy's
/// variable names where the meaning is the same), in sections.
#[derive(Clone, Debug)]
pub struct Config {
    pub log: String,
    pub log_format: LogFormat,
    /// An access log line per inbound HTTP request, in this format.
    pub access_log: Option<AccessLogFormat>,
    /// Number of workers; `None` = one per CPU the process may run on
    /// (unless the limits below say otherwise, [`Config::workers`]).
    pub cores: Option<usize>,
    /// linkerd2-proxy's worker limits (`_CORES_MIN`, `_CORES_MAX`,
    /// `_CORES_MAX_RATIO`), as its injector renders
    /// `proxy.runtime.workers`.
    pub cores_limits: CoreLimits,
    pub io_driver: IoDriver,
    /// The outbound side (the application's connections out).
    pub outbound: OutboundConfig,
    /// The inbound side (connections to the application).
    pub inbound: InboundConfig,
    /// Explicit TCP forwards (`RINGMESH_TCP_FORWARD`); outbound settings.
    pub forwards: Vec<TcpForward>,
    pub admin: AdminConfig,
    pub discovery: DiscoveryConfig,
    pub tcp: TcpConfig,
    /// Connections per worker still detecting (silent, slow, or waiting
    /// for either side's first bytes); past it the oldest is closed.
    pub detect_max_undecided: usize,
    pub http: HttpConfig,
    pub http2: Http2Config,
    pub balancing: BalancingConfig,
    pub shutdown_grace_period: Duration,
    pub identity: IdentityConfig,
    /// Linkerd's Destination API; `None`: discovery is the static file
    /// and DNS only.
    pub destination: Option<DestinationConfig>,
    /// Limits on every control-plane stream (Destination, policy).
    pub control_streams: StreamLimits,
    /// Who may reach the application through the inbound side.
    pub inbound_policy: InboundPolicy,
    /// Linkerd's inbound policy API; `None`: the default policy only.
    pub policy: Option<PolicyConfig>,
}

/// Where a control-plane service is (`LINKERD2_PROXY_*_SVC_ADDR`): an
/// `ip:port`, or a DNS name and port as Linkerd's injector writes them
/// (`linkerd-dst-headless.linkerd.svc.cluster.local.:8086`), resolved with
/// the proxy's DNS settings (`dns`) each time a connection is made.
#[derive(Clone, Debug)]
pub enum ControlAddr {
    Ip(SocketAddr),
    Name {
        host: String,
        port: u16,
        dns: DnsConfig,
    },
}

impl ControlAddr {
    fn parse(s: &str, dns: &DnsConfig) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self::Ip(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or("expected ip:port or name:port")?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("invalid port")?;
        let bare = host.strip_suffix('.').unwrap_or(host);
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label) {
            return Err("expected ip:port or name:port (the name is not a DNS name)".into());
        }
        Ok(Self::Name {
            host: host.to_ascii_lowercase(),
            port,
            dns: dns.clone(),
        })
    }

    /// On this host (an address on loopback, or `localhost`): spoken to in
    /// plaintext.
    pub fn is_loopback(&self) -> bool {
        match self {
            Self::Ip(a) => a.ip().is_loopback(),
            Self::Name { host, .. } => host.trim_end_matches('.') == "localhost",
        }
    }
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Name { host, port, .. } => write!(f, "{host}:{port}"),
        }
    }
}

/// Linkerd's policy service.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub svc_addr: ControlAddr,
    /// Spoken to over mutual TLS as this name (an address off loopback).
    pub svc_name: Option<Name>,
    /// `LINKERD2_PROXY_POLICY_WORKLOAD`, sent with every port.
    pub workload: String,
    /// Other ports watched at most (on first use); past it, connections
    /// to a port not watched are denied (`RINGMESH_INBOUND_POLICY_MAX_PORTS`).
    pub max_other_ports: usize,
    /// `LINKERD2_PROXY_INBOUND_PORTS`: watched from the start.
    pub ports: Vec<u16>,
}

/// Linkerd's Destination service, and which targets it is asked about.
#[derive(Clone, Debug)]
pub struct DestinationConfig {
    pub svc_addr: ControlAddr,
    /// Spoken to over mutual TLS as this name (an address off loopback).
    pub svc_name: Option<Name>,
    /// `LINKERD2_PROXY_DESTINATION_CONTEXT`, sent as every lookup's
    /// `context_token`.
    pub context: String,
    /// Names under these suffixes are looked up (lowercase, no trailing
    /// dot; an empty suffix matches every name).
    pub suffixes: Vec<String>,
    /// Original destinations in these networks are looked up by `ip:port`.
    pub networks: Vec<ipnet::IpNet>,
    /// A watch no request used for this long is dropped.
    pub idle_timeout: Duration,
}

impl DestinationConfig {
    /// Whether the Destination API is asked about `name` (DNS is not).
    pub fn claims(&self, name: &Authority) -> bool {
        if let Some(addr) = name.socket_addr() {
            return self.networks.iter().any(|n| n.contains(&addr.ip()));
        }
        under_suffixes(&self.suffixes, name.host())
    }
}

/// Whether `host` is one of `suffixes` or under one (at a dot); the empty
/// suffix takes every name.
fn under_suffixes(suffixes: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.');
    suffixes.iter().any(|s| {
        s.is_empty()
            || host == s
            || (host.len() > s.len()
                && host.ends_with(s.as_str())
                && host.as_bytes()[host.len() - s.len() - 1] == b'.')
    })
}

/// Linkerd's control-stream limits: the first message within `initial`,
/// each next within `idle`, a new stream after `lifetime` (`None`: no
/// limit, as linkerd2-proxy when unset).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamLimits {
    pub initial: Option<Duration>,
    pub idle: Option<Duration>,
    pub lifetime: Option<Duration>,
}

/// This proxy's workload identity: where its certificate comes from.
#[derive(Clone, Debug)]
pub enum IdentityConfig {
    /// No identity (no identity variable set, or
    /// `LINKERD2_PROXY_IDENTITY_DISABLED`): every connection is plain and
    /// TLS arriving inbound is relayed untouched.
    Disabled,
    /// Certificate and key from PEM files (`RINGMESH_IDENTITY_CERT`,
    /// `RINGMESH_IDENTITY_KEY`), reloaded when they change: a mesh without
    /// a control plane.
    Static {
        local: LocalIdentity,
        cert: PathBuf,
        key: PathBuf,
    },
    /// Linkerd's identity service: a CSR from `LINKERD2_PROXY_IDENTITY_DIR`
    /// sent to `Identity.Certify`, renewed before it expires.
    Certify {
        local: LocalIdentity,
        dir: PathBuf,
        token_file: PathBuf,
        svc_addr: ControlAddr,
        /// The service's identity (TLS to it); `None` for a loopback
        /// address, spoken to in plaintext.
        svc_name: Option<Name>,
        min_refresh: Duration,
        max_refresh: Duration,
    },
}

/// What every identity mode shares: the name and the mesh's trust anchors.
#[derive(Clone, Debug)]
pub struct LocalIdentity {
    pub name: Name,
    /// DER certificates from `LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS`.
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// How long a client has to complete a TLS handshake.
    pub handshake_timeout: Duration,
}

impl IdentityConfig {
    pub fn local(&self) -> Option<&LocalIdentity> {
        match self {
            Self::Disabled => None,
            Self::Static { local, .. } | Self::Certify { local, .. } => Some(local),
        }
    }
}

/// The outbound side's listener and its connections' settings.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// `None` when disabled (the variable set to the empty string).
    pub listen: Option<SocketAddr>,
    /// A second outbound listener (`LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS`
    /// naming two addresses: IPv4 and IPv6 loopback on a dual-stack pod).
    pub also_listen: Option<SocketAddr>,
    /// The options of the connections the listeners accept.
    pub accept: AcceptConfig,
    /// How connections to endpoints are made.
    pub connect: ConnectConfig,
    /// How long to wait for a client's first bytes before treating the
    /// connection as opaque TCP.
    pub detect_timeout: Duration,
    /// Destination ports whose connections skip detection (opaque TCP at
    /// once).
    pub opaque_ports: PortSet,
    /// Linkerd's ingress mode (`LINKERD2_PROXY_INGRESS_MODE`): an HTTP
    /// request with an `l5d-dst-override` header goes to the service it
    /// names, not to the connection's destination (the header is removed).
    pub ingress_mode: bool,
    /// Whether the proxy's own error responses on this side say why
    /// (`l5d-proxy-error`, gRPC's `grpc-message`, a text body): off with
    /// `LINKERD2_PROXY_OUTBOUND_DISABLE_INFORMATIONAL_HEADERS`, and by
    /// default in ingress mode (the clients are outside the mesh).
    pub informational_headers: bool,
    /// An opaque connection to a service with no endpoint waits this long
    /// for one (`LINKERD2_PROXY_OUTBOUND_TCP_FAILFAST_TIMEOUT`), at most
    /// this many per service and worker (`_TCP_QUEUE_CAPACITY`); then it
    /// is closed, and the service fails fast until an endpoint appears.
    pub tcp_failfast_timeout: Duration,
    pub tcp_queue_capacity: usize,
}

/// The inbound side's listener and its connections' settings.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub listen: Option<SocketAddr>,
    pub accept: AcceptConfig,
    /// How connections to the application are made.
    pub connect: ConnectConfig,
    /// `LINKERD2_PROXY_INBOUND_IPS`: when not empty, only connections
    /// whose original destination is one of these addresses are served
    /// (the pod's own; others are closed, as linkerd2-proxy refuses them).
    pub ips: Vec<IpAddr>,
    pub detect_timeout: Duration,
    pub opaque_ports: PortSet,
    /// Where connections that were not redirected go.
    pub target: Option<SocketAddr>,
    /// Being a multicluster gateway (`LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES`):
    /// a meshed connection whose transport header names a host under one
    /// of these suffixes (lowercase, no trailing dot) goes to that service,
    /// as an outbound connection would. Empty: not a gateway.
    pub gateway_suffixes: Vec<String>,
}

impl InboundConfig {
    /// Whether this proxy is a gateway for `host`.
    pub fn gateway_for(&self, host: &str) -> bool {
        under_suffixes(&self.gateway_suffixes, &host.to_ascii_lowercase())
    }
}

/// The TCP options of a listener's connections, as linkerd2-proxy sets
/// them (`*_ACCEPT_KEEPALIVE`, `*_ACCEPT_USER_TIMEOUT`,
/// `*_TCP_LISTEN_BACKLOG`). They are set once on the listening sockets,
/// which Linux copies to each connection it accepts (no system call per
/// connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptConfig {
    /// `SO_KEEPALIVE` is always on; this is the idle time before the first
    /// probe (`TCP_KEEPIDLE`; `None`: the kernel's, two hours by default).
    pub keepalive: Option<Duration>,
    /// `TCP_USER_TIMEOUT`: how long sent data may go unacknowledged
    /// before the connection is dropped (`None`: the kernel's).
    pub user_timeout: Option<Duration>,
    /// The listen queue's length (the kernel caps it at `somaxconn`).
    pub backlog: u32,
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self {
            keepalive: None,
            user_timeout: None,
            backlog: 4096,
        }
    }
}

/// How upstream connections are made from one side: the timeout
/// (`*_CONNECT_TIMEOUT`) and the TCP options linkerd2-proxy sets
/// (`*_CONNECT_KEEPALIVE`, `*_CONNECT_USER_TIMEOUT`; `None`: not set, the
/// kernel's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectConfig {
    pub timeout: Duration,
    pub keepalive: Option<Duration>,
    pub user_timeout: Option<Duration>,
}

impl ConnectConfig {
    pub const fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            keepalive: None,
            user_timeout: None,
        }
    }
}

/// The admin server.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// `None`: disabled.
    pub listen: Option<SocketAddr>,
    pub shutdown_endpoint_enabled: bool,
    /// Metric label sets idle this long are dropped.
    pub metrics_retain_idle: Duration,
    /// The tap server (`LINKERD2_PROXY_CONTROL_LISTEN_ADDR`).
    pub tap: TapConfig,
}

/// The tap server: it runs when `LINKERD2_PROXY_TAP_SVC_NAME` is set or
/// loopback clients are allowed.
#[derive(Clone, Debug)]
pub struct TapConfig {
    pub listen: Option<SocketAddr>,
    /// The identity tap clients must prove (mutual TLS).
    pub svc_name: Option<Name>,
    /// Plaintext clients from loopback may tap.
    pub allow_loopback: bool,
}

impl TapConfig {
    pub fn enabled(&self) -> bool {
        self.listen.is_some() && (self.svc_name.is_some() || self.allow_loopback)
    }
}

/// Where endpoints come from.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub static_file: Option<PathBuf>,
    pub static_poll_interval: Duration,
    pub dns: DnsConfig,
    /// At most this many names (DNS, Destination) are watched at once.
    pub max_names: usize,
    /// A watched name no request used for this long is dropped
    /// (`LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT`); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How often workers report the services they used (a fraction of the
    /// idle timeout); `None` without one.
    pub usage_report: Option<Duration>,
}

/// The opaque TCP relay.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    pub idle_timeout: Duration,
    pub buffer_size: usize,
    /// A relay direction whose reads fill `buffer_size` switches to a
    /// buffer this big (bulk transfers).
    pub bulk_buffer_size: usize,
    /// Bytes of bulk buffers all relays may hold at once, shared evenly
    /// between workers; past it a bulk transfer keeps its small buffer.
    pub bulk_memory: usize,
    /// Buffers of `buffer_size` in each io_uring worker's provided-buffer
    /// ring, which the relay's multishot receives fill; 0 = plain receives.
    pub ring_buffers: u16,
    /// Relay with splice(2) instead of user-space copies.
    pub splice: bool,
}

/// HTTP (both versions).
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// A client must send a whole request head within this time of its
    /// first byte (slow-loris defence).
    pub header_read_timeout: Duration,
    /// How long to wait for an upstream's response head; `None`: no limit.
    pub response_timeout: Option<Duration>,
    /// A request's whole budget, from its head arriving to its response
    /// head: past it the client gets 504. `None`: no limit.
    pub request_timeout: Option<Duration>,
    /// How long a request waits for a service with no endpoint to get one.
    pub failfast_timeout: Duration,
    /// Requests per worker that may wait so.
    pub queue_capacity: usize,
    /// Requests in flight at most, inbound and outbound
    /// (`LINKERD2_PROXY_*_MAX_IN_FLIGHT`, linkerd2-proxy's 100 000 by
    /// default), shared evenly between workers: past it a request is
    /// answered 503 at once.
    pub max_in_flight: [usize; 2],
    /// Bytes of request heads in flight at most, both sides, shared evenly
    /// between workers: past it a request is answered 503 at once (a
    /// request holds a few times its head's size while in flight, and
    /// large heads are cheap to send).
    pub max_in_flight_head_bytes: usize,
    /// Idle upstream HTTP/1 connections kept for reuse, inbound and
    /// outbound (linkerd2-proxy's settings and defaults).
    pub pool: [PoolLimits; 2],
}

/// Where `d`'s value is in a per-side setting (`[inbound, outbound]`, as
/// `HttpConfig::max_in_flight` and `HttpConfig::pool`).
pub(crate) fn side_index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

/// How idle upstream HTTP/1 connections of one side are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// At most this many per endpoint (`*_MAX_IDLE_CONNS_PER_ENDPOINT`,
    /// default 10 000), shared evenly between workers; 0: none are kept.
    pub max_idle: usize,
    /// Closed after this long idle
    /// (`*_HTTP1_CONNECTION_POOL_IDLE_TIMEOUT`, default 3 s: under the
    /// 5 s keep-alive of common servers, so the proxy seldom reuses a
    /// connection its server is closing).
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_idle: 10_000,
            idle_timeout: Duration::from_secs(3),
        }
    }
}

/// HTTP/2.
#[derive(Clone, Debug)]
pub struct Http2Config {
    /// Flow-control windows ringmesh advertises to upstreams, and to
    /// clients unless a side's server settings say otherwise.
    pub stream_window: u32,
    pub connection_window: u32,
    /// What responses stalled on their HTTP/2 clients' windows may hold
    /// per worker (`crate::stall`).
    pub max_stalled_bytes: usize,
    /// The HTTP/2 server settings of the inbound and the outbound listeners
    /// (`[inbound, outbound]`, see [`side_index`]): linkerd2-proxy's
    /// `LINKERD2_PROXY_{INBOUND,OUTBOUND}_SERVER_HTTP2_*`. An outbound
    /// variable left unset takes its inbound one.
    pub server: [H2Server; 2],
}

/// The HTTP/2 server settings of one side's listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Server {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// PING clients this often (`None`: never) and close the connection
    /// when the answer takes longer than the timeout.
    pub keep_alive_interval: Option<Duration>,
    pub keep_alive_timeout: Duration,
    /// SETTINGS_INITIAL_WINDOW_SIZE and the connection window (default:
    /// `LINKERD2_PROXY_HTTP2_INITIAL_*_WINDOW_SIZE`).
    pub stream_window: u32,
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame a client may send.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a request whose header list is larger
    /// gets 431.
    pub max_header_list_size: u32,
}

impl Http2Config {
    /// The server settings of the inbound (`outbound == false`) or the
    /// outbound listeners.
    pub fn server(&self, outbound: bool) -> H2Server {
        let d = if outbound {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        self.server[side_index(d)]
    }
}

impl Default for H2Server {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 200,
            keep_alive_interval: None,
            keep_alive_timeout: Duration::from_secs(3),
            stream_window: 65_535,
            connection_window: 1 << 20,
            max_frame_size: 16_384,
            // hyper's server default (linkerd2-proxy sets none).
            max_header_list_size: 16 * 1024,
        }
    }
}

/// Load balancing.
#[derive(Clone, Debug)]
pub struct BalancingConfig {
    /// Consecutive failures that eject an endpoint.
    pub failure_accrual_consecutive: u32,
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// linkerd2-proxy's limits on its worker count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CoreLimits {
    /// At least this many (`LINKERD2_PROXY_CORES` when unset).
    pub min: Option<usize>,
    /// At most this many ...
    pub max: Option<usize>,
    /// ... or this share of the CPUs, rounded (`max` wins).
    pub max_ratio: Option<f64>,
}

impl Config {
    /// How many workers to run on `available` CPUs, and whether more were
    /// asked for than there are. With none of linkerd2-proxy's worker
    /// variables set, one per CPU (the thread-per-core design); with any,
    /// as linkerd2-proxy counts: the maximum (`_CORES_MAX`, else
    /// `_CORES_MAX_RATIO` of the CPUs, else 1), raised to the minimum
    /// (`_CORES_MIN`, else `_CORES`), at most the CPUs.
    pub fn workers(&self, available: usize) -> (usize, bool) {
        let available = available.max(1);
        let l = &self.cores_limits;
        if self.cores.is_none() && *l == CoreLimits::default() {
            return (available, false);
        }
        let ratio = || {
            let r = l.max_ratio?;
            let n = (available as f64 * r).round() as usize;
            (n > 0).then_some(n)
        };
        let want = l
            .max
            .or_else(ratio)
            .unwrap_or(1)
            .max(l.min.or(self.cores).unwrap_or(1));
        (want.min(available), want > available)
    }

    /// Defaults, as linkerd2-proxy's where the meaning is the same.
    pub fn defaults() -> Self {
        Self {
            log: DEFAULT_LOG.to_string(),
            log_format: LogFormat::Plain,
            access_log: None,
            cores: None,
            cores_limits: CoreLimits::default(),
            io_driver: IoDriver::Auto,
            outbound: OutboundConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 4140))),
                also_listen: None,
                accept: AcceptConfig::default(),
                connect: ConnectConfig::with_timeout(Duration::from_secs(1)),
                detect_timeout: Duration::from_secs(10),
                opaque_ports: PortSet::parse(DEFAULT_OPAQUE_PORTS).unwrap_or_default(),
                ingress_mode: false,
                informational_headers: true,
                tcp_failfast_timeout: Duration::from_secs(3),
                tcp_queue_capacity: 10_000,
            },
            inbound: InboundConfig {
                listen: Some(SocketAddr::from(([0, 0, 0, 0], 4143))),
                accept: AcceptConfig::default(),
                // linkerd2-proxy's `DEFAULT_INBOUND_CONNECT_TIMEOUT`.
                connect: ConnectConfig::with_timeout(Duration::from_millis(300)),
                ips: Vec::new(),
                detect_timeout: Duration::from_secs(10),
                // None when unset, as linkerd2-proxy's (the injector always
                // writes the variable; a chart without opaque ports omits it).
                opaque_ports: PortSet::default(),
                target: None,
                gateway_suffixes: Vec::new(),
            },
            forwards: Vec::new(),
            admin: AdminConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 4191))),
                shutdown_endpoint_enabled: false,
                metrics_retain_idle: Duration::from_secs(600),
                tap: TapConfig {
                    listen: Some(SocketAddr::from(([0, 0, 0, 0], 4190))),
                    svc_name: None,
                    allow_loopback: false,
                },
            },
            discovery: DiscoveryConfig {
                static_file: None,
                static_poll_interval: Duration::from_secs(1),
                dns: DnsConfig::default(),
                max_names: 10_000,
                idle_timeout: None,
                usage_report: None,
            },
            tcp: TcpConfig {
                idle_timeout: Duration::from_secs(3600),
                buffer_size: 16 * 1024,
                bulk_buffer_size: 1024 * 1024,
                bulk_memory: 256 << 20,
                ring_buffers: 256,
                splice: false,
            },
            detect_max_undecided: 10_000,
            http: HttpConfig {
                header_read_timeout: Duration::from_secs(10),
                response_timeout: None,
                request_timeout: None,
                failfast_timeout: Duration::from_secs(3),
                queue_capacity: 10_000,
                max_in_flight: [100_000, 100_000],
                max_in_flight_head_bytes: 64 << 20,
                pool: [PoolLimits::default(); 2],
            },
            http2: Http2Config {
                stream_window: 65_535,
                connection_window: 1 << 20,
                max_stalled_bytes: 32 << 20,
                server: [H2Server::default(); 2],
            },
            balancing: BalancingConfig {
                failure_accrual_consecutive: 7,
            },
            shutdown_grace_period: Duration::from_secs(120),
            identity: IdentityConfig::Disabled,
            destination: None,
            control_streams: StreamLimits::default(),
            // No cluster networks unless given, as linkerd2-proxy's.
            inbound_policy: InboundPolicy::default(),
            policy: None,
        }
    }

    /// Where the policy API is asked about original destinations: the
    /// cluster networks, else Linkerd's chart default for them.
    pub fn policy_networks(&self) -> Vec<ipnet::IpNet> {
        match &self.inbound_policy.cluster_networks {
            n if n.is_empty() => DEFAULT_CLUSTER_NETWORKS
                .split(',')
                .filter_map(|n| n.parse().ok())
                .collect(),
            n => n.clone(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env)
    }

    /// Reads every variable, section by section (the order problems are
    /// listed in), then checks the listeners against each other.
    pub fn from_source(src: &dyn ConfigSource) -> Result<Self, ConfigError> {
        let mut p = Parser {
            src,
            problems: Vec::new(),
            read: Default::default(),
        };
        let mut c = Self::defaults();
        p.read_process(&mut c);
        p.read_listeners(&mut c);
        p.read_sockets(&mut c);
        p.read_static_discovery(&mut c);
        p.read_tcp(&mut c);
        p.duration(SHUTDOWN_GRACE_PERIOD, &mut c.shutdown_grace_period);
        p.read_detection(&mut c);
        p.duration(METRICS_RETAIN_IDLE, &mut c.admin.metrics_retain_idle);
        p.read_http(&mut c);
        p.read_http2(&mut c);
        p.read_balancing(&mut c);
        p.read_dns(&mut c.discovery.dns);
        c.identity = p.read_identity(&c.discovery.dns);
        c.control_streams = p.read_stream_limits();
        c.destination = p.read_destination(&c.identity, &c.discovery.dns);
        // Watched names are dropped when idle, whether the Destination API
        // or DNS resolves them.
        let idle = match &c.destination {
            Some(d) => d.idle_timeout,
            None => {
                let mut idle = Duration::from_secs(5);
                p.positive_duration(OUTBOUND_DISCOVERY_IDLE_TIMEOUT, &mut idle);
                idle
            }
        };
        c.discovery.idle_timeout = Some(idle);
        c.discovery.usage_report = Some((idle / 4).max(Duration::from_millis(100)));
        p.read_inbound_policy(&mut c.inbound_policy);
        c.policy = p.read_policy_api(&c.identity, &c.discovery.dns);
        p.check_unread();
        p.check_listener_collisions(&c);
        if c.admin.tap.svc_name.is_some() && c.identity.local().is_none() {
            p.problems.push(format!(
                "{TAP_SVC_NAME} needs this proxy's own identity (LINKERD2_PROXY_IDENTITY_*): tap clients are served over mutual TLS"
            ));
        }
        if p.problems.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError {
                problems: p.problems,
            })
        }
    }

    /// Names that discovery must resolve before workers start.
    pub fn watched_names(&self) -> Vec<Authority> {
        self.forwards
            .iter()
            .filter(|f| f.target.socket_addr().is_none())
            .map(|f| f.target.clone())
            .collect()
    }
}

/// A check of one value ([`Parser::check_unread`]).
type Check = dyn Fn(&str) -> Result<(), String>;

struct Parser<'a> {
    src: &'a dyn ConfigSource,
    problems: Vec<String>,
    /// The variables read so far.
    read: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl Parser<'_> {
    fn raw(&self, key: &str) -> Option<String> {
        self.read.borrow_mut().insert(key.to_string());
        self.src.get(key).map(|v| v.trim().to_string())
    }

    /// Variables read only with another (identity, the Destination and
    /// policy APIs): checked anyway when that one is not set, so a bad
    /// value is refused now rather than on the day the other is set.
    fn check_unread(&mut self) {
        let duration = |s: &str| parse_duration(s).map(drop);
        let checks: [(&str, &Check); 8] = [
            (IDENTITY_MIN_REFRESH, &duration),
            (IDENTITY_MAX_REFRESH, &duration),
            (TLS_HANDSHAKE_TIMEOUT, &duration),
            (DESTINATION_PROFILE_NETWORKS, &|s| {
                parse_networks(s).map(drop)
            }),
            (INBOUND_PORTS, &|s| PortSet::parse(s).map(drop)),
            (INBOUND_POLICY_MAX_PORTS, &|s| {
                s.parse::<usize>()
                    .map(drop)
                    .map_err(|_| "expected a number of ports".to_string())
            }),
            (DESTINATION_SVC_NAME, &|s| {
                Name::parse(s).map(drop).map_err(|e| e.to_string())
            }),
            (POLICY_SVC_NAME, &|s| {
                Name::parse(s).map(drop).map_err(|e| e.to_string())
            }),
        ];
        for (key, check) in checks {
            if self.read.borrow().contains(key) {
                continue;
            }
            self.parse_with(key, |s| if s.is_empty() { Ok(()) } else { check(s) });
        }
    }

    fn bad(&mut self, key: &str, value: &str, why: &str) {
        self.problems.push(format!("{key}={value:?}: {why}"));
    }

    fn parse_with<T>(&mut self, key: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let v = self.raw(key)?;
        match f(&v) {
            Ok(t) => Some(t),
            Err(why) => {
                self.bad(key, &v, &why);
                None
            }
        }
    }

    /// `Some(None)` when set to the empty string (disabled).
    fn optional_addr(&mut self, key: &str) -> Option<Option<SocketAddr>> {
        self.parse_with(key, |s| {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse()
                    .map(|a| Some(canonical(a)))
                    .map_err(|_| "expected ip:port (IPv6 in brackets)".to_string())
            }
        })
    }

    fn duration(&mut self, key: &str, into: &mut Duration) {
        if let Some(d) = self.parse_with(key, parse_duration) {
            *into = d;
        }
    }

    /// A duration where zero means nothing (a timeout that fires at once,
    /// a poll in a loop): refused.
    fn positive_duration(&mut self, key: &str, into: &mut Duration) {
        let positive = |s: &str| {
            parse_duration(s).and_then(|d| {
                if d.is_zero() {
                    Err("must be more than 0".into())
                } else {
                    Ok(d)
                }
            })
        };
        if let Some(d) = self.parse_with(key, positive) {
            *into = d;
        }
    }

    fn forwards(&mut self, v: &str) -> Vec<TcpForward> {
        let mut out = Vec::new();
        for entry in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((listen, target)) = entry.split_once('=') else {
                self.bad(
                    TCP_FORWARD,
                    entry,
                    "expected listen_ip:port=target_host:port",
                );
                continue;
            };
            let listen = match listen.trim().parse::<SocketAddr>() {
                Ok(a) => Some(canonical(a)),
                Err(_) => {
                    self.bad(TCP_FORWARD, entry, "listen address is not ip:port");
                    None
                }
            };
            let target = match Authority::parse(target.trim()) {
                Ok(t) if t.port() == 0 => {
                    self.bad(TCP_FORWARD, entry, "target port must not be 0");
                    None
                }
                Ok(t) => Some(t),
                Err(e) => {
                    self.bad(TCP_FORWARD, entry, &format!("target: {e}"));
                    None
                }
            };
            if let (Some(listen), Some(target)) = (listen, target) {
                out.push(TcpForward { listen, target });
            }
        }
        out
    }
}

/// The value among `choices` that `s` names, in any case (as
/// linkerd2-proxy reads its format variables), or what was expected.
fn one_of<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    match choices
        .iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
    {
        Some(&(_, v)) => Ok(v),
        None => {
            let names: Vec<&str> = choices.iter().map(|&(name, _)| name).collect();
            Err(format!("expected {}", names.join(" or ")))
        }
    }
}

/// The sections of [`Config::from_source`]: each reads its variables into
/// the config, recording every problem.
impl Parser<'_> {
    /// Logging, workers and their io driver.
    fn read_process(&mut self, c: &mut Config) {
        if let Some(v) = self.raw(LOG) {
            // tracing-subscriber's parser can panic on some non-ASCII input
            // (found by fuzzing); filters are ASCII, so refuse the rest.
            if !v.is_ascii() {
                self.bad(LOG, &v, "a log filter must be ASCII");
            } else {
                match tracing_subscriber::EnvFilter::try_new(&v) {
                    Ok(_) => c.log = v,
                    Err(e) => self.bad(LOG, &v, &e.to_string()),
                }
            }
        }
        let log_formats = [("plain", LogFormat::Plain), ("json", LogFormat::Json)];
        if let Some(f) = self.parse_with(LOG_FORMAT, |s| one_of(s, &log_formats)) {
            c.log_format = f;
        }
        let access_logs = [
            ("apache", AccessLogFormat::Apache),
            ("json", AccessLogFormat::Json),
        ];
        c.access_log = self.parse_with(ACCESS_LOG, |s| one_of(s, &access_logs));
        let count = |s: &str| match s.parse::<usize>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(n) => Ok(n),
            Err(_) => Err("expected a positive integer".into()),
        };
        c.cores = self.parse_with(CORES, count);
        c.cores_limits = CoreLimits {
            min: self.parse_with(CORES_MIN, count),
            max: self.parse_with(CORES_MAX, count),
            max_ratio: self.parse_with(CORES_MAX_RATIO, |s| match s.parse::<f64>() {
                Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
                _ => Err("expected a ratio above 0 and at most 1".into()),
            }),
        };
        if let Some(d) = self.parse_with(IO_DRIVER, |s| match s {
            "auto" => Ok(IoDriver::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(IoDriver::Uring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            _ => Err("expected auto, uring or epoll".into()),
        }) {
            c.io_driver = d;
        }
    }

    /// The data-plane and admin listeners, and the admin's shutdown endpoint.
    fn read_listeners(&mut self, c: &mut Config) {
        if let Some(a) = self.optional_addr(OUTBOUND_LISTEN_ADDR) {
            c.outbound.listen = a;
        }
        // As linkerd2-proxy: one or two addresses here win over the single
        // address above.
        if let Some(addrs) = self.parse_with(OUTBOUND_LISTEN_ADDRS, parse_listen_addrs) {
            if let Some(&first) = addrs.first() {
                c.outbound.listen = Some(first);
                c.outbound.also_listen = addrs.get(1).copied();
            }
        }
        if let Some(a) = self.optional_addr(INBOUND_LISTEN_ADDR) {
            c.inbound.listen = a;
        }
        if let Some(a) = self.optional_addr(ADMIN_LISTEN_ADDR) {
            c.admin.listen = a;
        }
        if let Some(b) = self.parse_with(SHUTDOWN_ENDPOINT_ENABLED, |s| match s {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err("expected true or false".into()),
        }) {
            c.admin.shutdown_endpoint_enabled = b;
        }
        if let Some(a) = self.optional_addr(CONTROL_LISTEN_ADDR) {
            c.admin.tap.listen = a;
        }
        if let Some(n) =
            self.parse_with(TAP_SVC_NAME, |s| Name::parse(s).map_err(|e| e.to_string()))
        {
            c.admin.tap.svc_name = Some(n);
        }
        if let Some(b) = self.parse_with(TAP_ALLOW_LOOPBACK, |s| match s {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err("expected true or false".into()),
        }) {
            c.admin.tap.allow_loopback = b;
        }
    }

    /// The listeners' and connectors' TCP options, and the inbound side's
    /// allowed addresses.
    fn read_sockets(&mut self, c: &mut Config) {
        let sides = [
            (
                &mut c.outbound.accept,
                &mut c.outbound.connect,
                [
                    OUTBOUND_ACCEPT_KEEPALIVE,
                    OUTBOUND_ACCEPT_USER_TIMEOUT,
                    OUTBOUND_TCP_LISTEN_BACKLOG,
                ],
                [
                    OUTBOUND_CONNECT_TIMEOUT,
                    OUTBOUND_CONNECT_KEEPALIVE,
                    OUTBOUND_CONNECT_USER_TIMEOUT,
                ],
            ),
            (
                &mut c.inbound.accept,
                &mut c.inbound.connect,
                [
                    INBOUND_ACCEPT_KEEPALIVE,
                    INBOUND_ACCEPT_USER_TIMEOUT,
                    INBOUND_TCP_LISTEN_BACKLOG,
                ],
                [
                    INBOUND_CONNECT_TIMEOUT,
                    INBOUND_CONNECT_KEEPALIVE,
                    INBOUND_CONNECT_USER_TIMEOUT,
                ],
            ),
        ];
        for (accept, connect, [a_ka, a_ut, backlog], [c_to, c_ka, c_ut]) in sides {
            accept.keepalive = self.parse_with(a_ka, parse_keepalive).flatten();
            accept.user_timeout = self.parse_with(a_ut, parse_user_timeout).flatten();
            if let Some(n) = self.parse_with(backlog, |s| match s.parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err("expected a positive integer".into()),
            }) {
                accept.backlog = n;
            }
            self.positive_duration(c_to, &mut connect.timeout);
            connect.keepalive = self.parse_with(c_ka, parse_keepalive).flatten();
            connect.user_timeout = self.parse_with(c_ut, parse_user_timeout).flatten();
        }
        if let Some(ips) = self.parse_with(INBOUND_IPS, |s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map(|ip| ip.to_canonical())
                        .map_err(|_| format!("{ip:?} is not an IP address"))
                })
                .collect::<Result<Vec<_>, _>>()
        }) {
            c.inbound.ips = ips;
        }
        if let Some(suffixes) = self.parse_with(INBOUND_GATEWAY_SUFFIXES, |s| Ok(split_suffixes(s)))
        {
            c.inbound.gateway_suffixes = suffixes;
        }
    }

    /// The static discovery file and how often it is re-read.
    fn read_static_discovery(&mut self, c: &mut Config) {
        if let Some(n) = self.parse_with(DISCOVERY_MAX_NAMES, |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "expected a positive number".to_string())
        }) {
            c.discovery.max_names = n;
        }
        c.discovery.static_file = self
            .raw(DISCOVERY_STATIC)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if let Some(path) = &c.discovery.static_file {
            // Its problems are listed with every other setting's (discovery
            // reads it again to start; a file that changed in between is
            // checked then too).
            let shown = path.display().to_string();
            if path.is_dir() {
                self.bad(DISCOVERY_STATIC, &shown, "a directory, not a file");
            } else if !path.exists() {
                self.bad(DISCOVERY_STATIC, &shown, "no such file");
            } else {
                match std::fs::read_to_string(path) {
                    Err(e) => self.bad(DISCOVERY_STATIC, &shown, &format!("cannot read it: {e}")),
                    Ok(text) => {
                        if let Err(e) = ringmesh_discovery::static_file::parse(&text) {
                            for p in e.problems {
                                self.problems
                                    .push(format!("{DISCOVERY_STATIC} ({shown}): {p}"));
                            }
                        }
                    }
                }
            }
        }
        self.positive_duration(
            DISCOVERY_STATIC_POLL_INTERVAL,
            &mut c.discovery.static_poll_interval,
        );
    }

    /// TCP forwards, the inbound target and the relay's settings.
    fn read_tcp(&mut self, c: &mut Config) {
        if let Some(v) = self.raw(TCP_FORWARD) {
            c.forwards = self.forwards(&v);
        }
        c.inbound.target = self.optional_addr(INBOUND_TARGET).flatten();
        self.positive_duration(TCP_IDLE_TIMEOUT, &mut c.tcp.idle_timeout);
        if let Some(n) = self.parse_with(TCP_BUFFER_SIZE, |s| match s.parse::<usize>() {
            Ok(n) if (1024..=16 << 20).contains(&n) => Ok(n),
            _ => Err("expected a byte count between 1024 and 16777216".into()),
        }) {
            c.tcp.buffer_size = n;
        }
        if let Some(n) = self.parse_with(TCP_BULK_BUFFER_SIZE, |s| match s.parse::<usize>() {
            Ok(n) if (1024..=16 << 20).contains(&n) => Ok(n),
            _ => Err("expected a byte count between 1024 and 16777216".into()),
        }) {
            c.tcp.bulk_buffer_size = n;
        }
        if let Some(n) = self.parse_with(TCP_BULK_MEMORY, |s| {
            s.parse::<usize>()
                .map_err(|_| "expected a byte count (0: no bulk buffers)".to_string())
        }) {
            c.tcp.bulk_memory = n;
        }
        if let Some(n) = self.parse_with(TCP_RING_BUFFERS, |s| match s.parse::<u16>() {
            Ok(n) if n == 0 || (n.is_power_of_two() && n <= 32768) => Ok(n),
            _ => Err("expected 0 or a power of two up to 32768".into()),
        }) {
            c.tcp.ring_buffers = n;
        }
        if let Some(b) = self.parse_with(TCP_SPLICE, |s| match s {
            "true" | "1" | "on" => Ok(true),
            "false" | "0" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        }) {
            c.tcp.splice = b;
        }
    }

    /// Protocol detection: its timeouts, opaque ports, the cap on
    /// undecided connections, and the slow-loris bound on request heads.
    fn read_detection(&mut self, c: &mut Config) {
        self.positive_duration(INBOUND_DETECT_TIMEOUT, &mut c.inbound.detect_timeout);
        self.positive_duration(OUTBOUND_DETECT_TIMEOUT, &mut c.outbound.detect_timeout);
        if let Some(ports) = self.parse_with(INBOUND_OPAQUE_PORTS, PortSet::parse) {
            c.inbound.opaque_ports = ports;
        }
        if let Some(ports) = self.parse_with(OUTBOUND_OPAQUE_PORTS, PortSet::parse) {
            c.outbound.opaque_ports = ports;
        }
        if let Some(b) = self.parse_with(INGRESS_MODE, parse_flag) {
            c.outbound.ingress_mode = b;
        }
        c.outbound.informational_headers = !self
            .parse_with(OUTBOUND_DISABLE_INFORMATIONAL_HEADERS, parse_flag)
            .unwrap_or(c.outbound.ingress_mode);
        if let Some(n) = self.parse_with(DETECT_MAX_UNDECIDED, |s| match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err("expected a positive integer".to_string()),
        }) {
            c.detect_max_undecided = n;
        }
        self.positive_duration(HTTP_HEADER_READ_TIMEOUT, &mut c.http.header_read_timeout);
    }

    /// HTTP timeouts and the fail-fast queue.
    fn read_http(&mut self, c: &mut Config) {
        if let Some(t) = self.parse_with(HTTP_RESPONSE_TIMEOUT, |s| match s {
            "" | "off" | "0" => Ok(None),
            s => parse_duration(s).map(Some),
        }) {
            c.http.response_timeout = t;
        }
        if let Some(t) = self.parse_with(HTTP_REQUEST_TIMEOUT, |s| match s {
            "" | "off" | "0" => Ok(None),
            s => parse_duration(s).map(Some),
        }) {
            c.http.request_timeout = t;
        }
        self.duration(HTTP_FAILFAST_TIMEOUT, &mut c.http.failfast_timeout);
        if let Some(n) = self.parse_with(HTTP_QUEUE_CAPACITY, |s| {
            s.parse::<usize>()
                .map_err(|_| "expected a non-negative integer".to_string())
        }) {
            c.http.queue_capacity = n;
        }
        self.duration(TCP_FAILFAST_TIMEOUT, &mut c.outbound.tcp_failfast_timeout);
        if let Some(n) = self.parse_with(TCP_QUEUE_CAPACITY, |s| {
            s.parse::<usize>()
                .map_err(|_| "expected a non-negative integer".to_string())
        }) {
            c.outbound.tcp_queue_capacity = n;
        }
        for (i, key) in [INBOUND_MAX_IN_FLIGHT, OUTBOUND_MAX_IN_FLIGHT]
            .into_iter()
            .enumerate()
        {
            if let Some(n) = self.parse_with(key, |s| match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err("expected a positive integer".into()),
            }) {
                c.http.max_in_flight[i] = n;
            }
        }
        if let Some(n) = self.parse_with(HTTP_MAX_IN_FLIGHT_HEAD_BYTES, |s| {
            match s.parse::<usize>() {
                Ok(n) if n >= 1 << 20 => Ok(n),
                _ => Err("expected a number of bytes, at least 1048576".to_string()),
            }
        }) {
            c.http.max_in_flight_head_bytes = n;
        }
        for (i, key) in [INBOUND_MAX_IDLE_CONNS, OUTBOUND_MAX_IDLE_CONNS]
            .into_iter()
            .enumerate()
        {
            if let Some(n) = self.parse_with(key, |s| {
                s.parse::<usize>()
                    .map_err(|_| "expected a non-negative integer".to_string())
            }) {
                c.http.pool[i].max_idle = n;
            }
        }
        for (i, key) in [INBOUND_POOL_IDLE_TIMEOUT, OUTBOUND_POOL_IDLE_TIMEOUT]
            .into_iter()
            .enumerate()
        {
            self.duration(key, &mut c.http.pool[i].idle_timeout);
        }
    }

    /// HTTP/2 windows, stream cap and keep-alive.
    fn read_http2(&mut self, c: &mut Config) {
        // RFC 9113 §6.9.1: windows are at most 2^31-1.
        let window = |s: &str| match s.parse::<u32>() {
            Ok(n) if (65_535..=(1 << 31) - 1).contains(&n) => Ok(n),
            _ => Err("expected a window size between 65535 and 2147483647".to_string()),
        };
        if let Some(n) = self.parse_with(HTTP2_INITIAL_STREAM_WINDOW_SIZE, window) {
            c.http2.stream_window = n;
        }
        if let Some(n) = self.parse_with(HTTP2_INITIAL_CONNECTION_WINDOW_SIZE, window) {
            c.http2.connection_window = n;
        }
        let streams = |s: &str| match s.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err("expected a positive integer".to_string()),
        };
        let interval = |s: &str| match s {
            "" | "off" | "0" => Ok(None),
            s => parse_duration(s).map(Some),
        };
        // RFC 9113 §6.5.2.
        let frame = |s: &str| match s.parse::<u32>() {
            Ok(n) if (16_384..=(1 << 24) - 1).contains(&n) => Ok(n),
            _ => Err("expected a frame size between 16384 and 16777215".to_string()),
        };
        let header_list = |s: &str| match s.parse::<u32>() {
            Ok(n) if (1024..=MAX_HEADER_LIST_SIZE).contains(&n) => Ok(n),
            _ => Err(format!(
                "expected a number of bytes between 1024 and {MAX_HEADER_LIST_SIZE}"
            )),
        };
        // Inbound first: an outbound variable left unset takes its value.
        let mut side = H2Server {
            stream_window: c.http2.stream_window,
            connection_window: c.http2.connection_window,
            ..H2Server::default()
        };
        for (d, prefix) in [
            (Direction::Inbound, INBOUND_SERVER_HTTP2),
            (Direction::Outbound, OUTBOUND_SERVER_HTTP2),
        ] {
            let key = |name: &str| format!("{prefix}_{name}");
            if let Some(n) = self.parse_with(&key("MAX_CONCURRENT_STREAMS"), streams) {
                side.max_concurrent_streams = n;
            }
            if let Some(t) = self.parse_with(&key("KEEP_ALIVE_INTERVAL"), interval) {
                side.keep_alive_interval = t;
            }
            self.positive_duration(&key("KEEP_ALIVE_TIMEOUT"), &mut side.keep_alive_timeout);
            if let Some(n) = self.parse_with(&key("INITIAL_STREAM_WINDOW_SIZE"), window) {
                side.stream_window = n;
            }
            if let Some(n) = self.parse_with(&key("INITIAL_CONNECTION_WINDOW_SIZE"), window) {
                side.connection_window = n;
            }
            if let Some(n) = self.parse_with(&key("MAX_FRAME_SIZE"), frame) {
                side.max_frame_size = n;
            }
            if let Some(n) = self.parse_with(&key("MAX_HEADER_LIST_SIZE"), header_list) {
                side.max_header_list_size = n;
            }
            c.http2.server[side_index(d)] = side;
        }
        if let Some(n) = self.parse_with(HTTP2_MAX_STALLED_BYTES, |s| match s.parse::<usize>() {
            Ok(n) if n >= 1 << 20 => Ok(n),
            _ => Err("expected a number of bytes, at least 1048576".to_string()),
        }) {
            c.http2.max_stalled_bytes = n;
        }
    }

    /// When balancing ejects an endpoint.
    fn read_balancing(&mut self, c: &mut Config) {
        if let Some(n) = self.parse_with(FAILURE_ACCRUAL_CONSECUTIVE, |s| match s.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err("expected a positive integer".to_string()),
        }) {
            c.balancing.failure_accrual_consecutive = n;
        }
    }

    /// DNS: TTL bounds and the nameservers.
    fn read_dns(&mut self, dns: &mut DnsConfig) {
        let mut given = |key: &str, into: &mut Duration| {
            self.parse_with(key, parse_duration)
                .map(|d| *into = d)
                .is_some()
        };
        let min = given(DNS_MIN_TTL, &mut dns.min_ttl);
        let max = given(DNS_MAX_TTL, &mut dns.max_ttl);
        // One bound given past the other's default moves the default (as
        // linkerd2-proxy, which has neither, takes any one bound).
        match (min, max) {
            (true, false) => dns.max_ttl = dns.max_ttl.max(dns.min_ttl),
            (false, true) => dns.min_ttl = dns.min_ttl.min(dns.max_ttl),
            _ => {}
        }
        if dns.min_ttl > dns.max_ttl {
            self.problems.push(format!(
                "{DNS_MIN_TTL} ({:?}) is greater than {DNS_MAX_TTL} ({:?})",
                dns.min_ttl, dns.max_ttl
            ));
        }
        if let Some(servers) = self.parse_with(DNS_SERVERS, |s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<SocketAddr>()
                        .or_else(|_| {
                            s.parse::<std::net::IpAddr>()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .map_err(|_| format!("{s:?} is not an ip or ip:port"))
                })
                .collect::<Result<Vec<_>, _>>()
        }) {
            dns.servers = servers;
        }
    }

    /// The identity mode, from which variables are set: `_DISABLED` wins;
    /// then the static files; then Linkerd's identity service. Every
    /// variable a mode needs and lacks is listed.
    fn read_identity(&mut self, dns: &DnsConfig) -> IdentityConfig {
        // Checked in every mode (a bad value is listed even where it is
        // not used).
        let mut handshake_timeout = Duration::from_secs(10);
        self.positive_duration(TLS_HANDSHAKE_TIMEOUT, &mut handshake_timeout);
        let mut min_refresh = Duration::from_secs(10);
        let mut max_refresh = Duration::from_secs(24 * 3600);
        self.positive_duration(IDENTITY_MIN_REFRESH, &mut min_refresh);
        self.positive_duration(IDENTITY_MAX_REFRESH, &mut max_refresh);
        if min_refresh > max_refresh {
            self.problems.push(format!(
                "{IDENTITY_MIN_REFRESH} ({min_refresh:?}) is greater than {IDENTITY_MAX_REFRESH} ({max_refresh:?})"
            ));
        }
        let flag = |s: &str| match s {
            "" | "false" | "0" | "off" => Ok(false),
            _ => Ok(true),
        };
        if self.parse_with(IDENTITY_DISABLED, flag) == Some(true) {
            return IdentityConfig::Disabled;
        }
        let is_set = |p: &Self, k: &str| p.raw(k).is_some_and(|v| !v.is_empty());
        let static_mode = is_set(self, IDENTITY_CERT) || is_set(self, IDENTITY_KEY);
        let certify_vars = [
            IDENTITY_DIR,
            IDENTITY_TOKEN_FILE,
            IDENTITY_SVC_ADDR,
            IDENTITY_LOCAL_NAME,
            IDENTITY_TRUST_ANCHORS,
        ];
        if !static_mode && !certify_vars.iter().any(|k| is_set(self, k)) {
            return IdentityConfig::Disabled;
        }
        let require = |p: &mut Self, k: &str, mode: &str| {
            let v = p.raw(k).filter(|v| !v.is_empty());
            if v.is_none() {
                p.problems.push(format!("{k} must be set ({mode})"));
            }
            v
        };
        let mode = if static_mode {
            "the static identity mode"
        } else {
            "identity from Linkerd's identity service"
        };
        let name = require(self, IDENTITY_LOCAL_NAME, mode).and_then(|v| {
            Name::parse(&v)
                .map_err(|e| self.bad(IDENTITY_LOCAL_NAME, &v, &e.to_string()))
                .ok()
        });
        let anchors = require(self, IDENTITY_TRUST_ANCHORS, mode).and_then(|v| {
            parse_trust_anchors(&v)
                .map_err(|e| self.bad(IDENTITY_TRUST_ANCHORS, "<PEM>", &e))
                .ok()
        });
        if static_mode {
            let cert = require(self, IDENTITY_CERT, mode);
            let key = require(self, IDENTITY_KEY, mode);
            let (Some(name), Some(trust_anchors), Some(cert), Some(key)) =
                (name, anchors, cert, key)
            else {
                return IdentityConfig::Disabled;
            };
            return IdentityConfig::Static {
                local: LocalIdentity {
                    name,
                    trust_anchors,
                    handshake_timeout,
                },
                cert: cert.into(),
                key: key.into(),
            };
        }
        // As linkerd2-proxy: the documents Linkerd's init container left
        // and the token must be there at start (an empty or unreadable
        // one is a configuration problem, not a Certify call failing for
        // ever). They are read again when used: the token rotates.
        let dir = require(self, IDENTITY_DIR, mode).filter(|d| {
            let problems: Vec<_> = ["key.p8", "csr.der"]
                .iter()
                .filter_map(|f| nonempty_file(&Path::new(d).join(f)).err())
                .collect();
            for why in &problems {
                self.bad(IDENTITY_DIR, d, why);
            }
            problems.is_empty()
        });
        let token_file = require(self, IDENTITY_TOKEN_FILE, mode).filter(|t| {
            nonempty_file(Path::new(t))
                .map_err(|why| self.bad(IDENTITY_TOKEN_FILE, t, &why))
                .is_ok()
        });
        let svc_addr = require(self, IDENTITY_SVC_ADDR, mode).and_then(|v| {
            ControlAddr::parse(&v, dns)
                .map_err(|why| self.bad(IDENTITY_SVC_ADDR, &v, &why))
                .ok()
        });
        let svc_name = self.parse_with(IDENTITY_SVC_NAME, |s| {
            Name::parse(s).map_err(|e| e.to_string())
        });
        if let Some(addr) = &svc_addr {
            if !addr.is_loopback() && svc_name.is_none() {
                self.problems.push(format!(
                    "{IDENTITY_SVC_NAME} must be set: the identity service at {addr} is not on loopback, so it is spoken to over TLS as that name"
                ));
            }
        }
        let (Some(name), Some(trust_anchors), Some(dir), Some(token_file), Some(svc_addr)) =
            (name, anchors, dir, token_file, svc_addr)
        else {
            return IdentityConfig::Disabled;
        };
        IdentityConfig::Certify {
            local: LocalIdentity {
                name,
                trust_anchors,
                handshake_timeout,
            },
            dir: dir.into(),
            token_file: token_file.into(),
            svc_name: svc_name.filter(|_| !svc_addr.is_loopback()),
            svc_addr,
            min_refresh,
            max_refresh,
        }
    }

    /// Linkerd's control-stream limits; unset or empty: no limit.
    fn read_stream_limits(&mut self) -> StreamLimits {
        let opt = |p: &mut Self, key: &str| {
            p.parse_with(key, |s| {
                if s.is_empty() {
                    Ok(None)
                } else {
                    parse_duration(s).map(Some)
                }
            })
            .flatten()
        };
        let limits = StreamLimits {
            initial: opt(self, CONTROL_STREAM_INITIAL_TIMEOUT),
            idle: opt(self, CONTROL_STREAM_IDLE_TIMEOUT),
            lifetime: opt(self, CONTROL_STREAM_LIFETIME),
        };
        if let (Some(i), Some(d)) = (limits.initial, limits.idle) {
            if i > d {
                self.problems.push(format!(
                    "{CONTROL_STREAM_INITIAL_TIMEOUT} ({i:?}) must not be greater than {CONTROL_STREAM_IDLE_TIMEOUT} ({d:?})"
                ));
            }
        }
        limits
    }

    /// The inbound authorization settings.
    fn read_inbound_policy(&mut self, p: &mut InboundPolicy) {
        if let Some(d) = self.parse_with(INBOUND_DEFAULT_POLICY, |s| s.parse()) {
            p.default = d;
        }
        if let Some(n) = self.parse_with(POLICY_CLUSTER_NETWORKS, parse_networks) {
            p.cluster_networks = n;
        }
        // As linkerd2-proxy: a cluster-scoped default needs the networks.
        if matches!(
            p.default,
            DefaultPolicy::ClusterAuthenticated | DefaultPolicy::ClusterUnauthenticated
        ) && p.cluster_networks.is_empty()
        {
            self.problems.push(format!(
                "{INBOUND_DEFAULT_POLICY}={} needs {POLICY_CLUSTER_NETWORKS} (unset or empty)",
                p.default.name()
            ));
        }
        if let Some(ports) = self.parse_with(INBOUND_PORTS_REQUIRE_IDENTITY, PortSet::parse) {
            p.require_identity = ports;
        }
        if let Some(ports) = self.parse_with(INBOUND_PORTS_REQUIRE_TLS, PortSet::parse) {
            p.require_tls = ports;
        }
    }

    /// A control-plane service's address and name (`<addr_key>`,
    /// `<name_key>`): `None` when the address is unset. Off loopback it is
    /// spoken to over mutual TLS as that name, which then needs this
    /// proxy's identity; every problem is listed. The name is kept only
    /// off loopback.
    fn read_control_service(
        &mut self,
        (addr_key, name_key, what): (&str, &str, &str),
        identity: &IdentityConfig,
        dns: &DnsConfig,
    ) -> Option<(Option<ControlAddr>, Option<Name>)> {
        let addr = self.raw(addr_key).filter(|v| !v.is_empty())?;
        let svc_addr = ControlAddr::parse(&addr, dns)
            .map_err(|why| self.bad(addr_key, &addr, &why))
            .ok();
        let svc_name = self.parse_with(name_key, |s| Name::parse(s).map_err(|e| e.to_string()));
        if let Some(a) = svc_addr.as_ref().filter(|a| !a.is_loopback()) {
            if svc_name.is_none() {
                self.problems.push(format!(
                    "{name_key} must be set: the {what} service at {a} is not on loopback, so it is spoken to over mutual TLS as that name"
                ));
            } else if identity.local().is_none() {
                self.problems.push(format!(
                    "the {what} service at {a} is spoken to over mutual TLS: this proxy needs an identity (LINKERD2_PROXY_IDENTITY_*)"
                ));
            }
        }
        let off_loopback = svc_addr.as_ref().is_some_and(|a| !a.is_loopback());
        Some((svc_addr, svc_name.filter(|_| off_loopback)))
    }

    /// The inbound policy API, when `_POLICY_SVC_ADDR` is set.
    fn read_policy_api(
        &mut self,
        identity: &IdentityConfig,
        dns: &DnsConfig,
    ) -> Option<PolicyConfig> {
        let (svc_addr, svc_name) =
            self.read_control_service((POLICY_SVC_ADDR, POLICY_SVC_NAME, "policy"), identity, dns)?;
        let workload = self.raw(POLICY_WORKLOAD).unwrap_or_default();
        if workload.is_empty() {
            self.problems.push(format!(
                "{POLICY_WORKLOAD} must be set with {POLICY_SVC_ADDR}"
            ));
        }
        let ports = self
            .parse_with(INBOUND_PORTS, PortSet::parse)
            .map(|set| set.ports().take(1024).collect())
            .unwrap_or_default();
        let max_other_ports = self
            .parse_with(INBOUND_POLICY_MAX_PORTS, |s| {
                s.parse::<usize>()
                    .map_err(|_| "expected a number of ports".to_string())
            })
            .unwrap_or(256);
        Some(PolicyConfig {
            svc_addr: svc_addr?,
            svc_name,
            workload,
            max_other_ports,
            ports,
        })
    }

    /// The Destination API, when `_DESTINATION_SVC_ADDR` is set.
    fn read_destination(
        &mut self,
        identity: &IdentityConfig,
        dns: &DnsConfig,
    ) -> Option<DestinationConfig> {
        let (svc_addr, svc_name) = self.read_control_service(
            (DESTINATION_SVC_ADDR, DESTINATION_SVC_NAME, "Destination"),
            identity,
            dns,
        )?;
        let context = self.raw(DESTINATION_CONTEXT).unwrap_or_default();
        let suffixes = self
            .parse_with(DESTINATION_PROFILE_SUFFIXES, |s| Ok(split_suffixes(s)))
            .unwrap_or_else(|| split_suffixes("svc.cluster.local."));
        let networks = self
            .parse_with(DESTINATION_PROFILE_NETWORKS, parse_networks)
            .unwrap_or_default();
        let mut idle_timeout = Duration::from_secs(5);
        self.positive_duration(OUTBOUND_DISCOVERY_IDLE_TIMEOUT, &mut idle_timeout);
        Some(DestinationConfig {
            svc_addr: svc_addr?,
            svc_name,
            context,
            suffixes,
            networks,
            idle_timeout,
        })
    }

    /// Listeners must not collide with each other.
    fn check_listener_collisions(&mut self, c: &Config) {
        let mut seen: Vec<(SocketAddr, String)> = Vec::new();
        let named = [
            (c.outbound.listen, OUTBOUND_LISTEN_ADDR.to_string()),
            (c.outbound.also_listen, OUTBOUND_LISTEN_ADDRS.to_string()),
            (c.inbound.listen, INBOUND_LISTEN_ADDR.to_string()),
            (c.admin.listen, ADMIN_LISTEN_ADDR.to_string()),
            (
                c.admin.tap.listen.filter(|_| c.admin.tap.enabled()),
                CONTROL_LISTEN_ADDR.to_string(),
            ),
        ];
        let forwards = c
            .forwards
            .iter()
            .map(|f| (Some(f.listen), format!("{TCP_FORWARD} entry {}", f.listen)));
        for (addr, who) in named.into_iter().chain(forwards) {
            let Some(addr) = addr else { continue };
            if addr.port() != 0 {
                if let Some((a, other)) = seen.iter().find(|(a, _)| overlaps(*a, addr)) {
                    let on = if *a == addr {
                        addr.to_string()
                    } else {
                        format!("{a} and {addr}")
                    };
                    self.problems
                        .push(format!("{who} and {other} both listen on {on}"));
                }
            }
            seen.push((addr, who));
        }
    }
}

/// Whether two listeners on these addresses take the same connections:
/// the same port, and the same address or a wildcard over the other's
/// (`0.0.0.0` over IPv4 addresses, `[::]` over every address).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: SocketAddr, o: SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || w.is_ipv4() == o.is_ipv4())
    };
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// `Ok` when `path` can be read and holds something.
fn nonempty_file(path: &Path) -> Result<(), String> {
    match std::fs::read(path) {
        Ok(b) if b.is_empty() => Err(format!("{} is empty", path.display())),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// PEM certificates (the mesh's trust anchors): at least one, every
/// block a well-formed certificate.
pub fn parse_trust_anchors(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    ringmesh_identity::tls::trust_anchors(certs.iter().cloned()).map_err(|e| {
        format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    })?;
    Ok(certs)
}

/// `LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS`: one or two `ip:port`,
/// comma-separated (empty: as if unset).
/// An IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]:4140`) as the IPv4
/// address it maps (a socket cannot bind the mapped form; it names the
/// same listener, endpoint or peer).
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            SocketAddr::new(v6.ip().to_canonical(), v6.port())
        }
        a => a,
    }
}

fn parse_listen_addrs(s: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs = s
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse::<SocketAddr>()
                .map(canonical)
                .map_err(|_| format!("{a:?}: expected ip:port (IPv6 in brackets)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match addrs.as_slice() {
        [a, b] if a == b => Err("the same address twice".into()),
        [_, _, _, ..] => Err("at most two addresses (one IPv4, one IPv6)".into()),
        _ => Ok(addrs),
    }
}

/// A TCP keepalive idle time: a duration; `0` or empty leaves the
/// kernel's (keepalive stays on). `TCP_KEEPIDLE` takes whole seconds, at
/// least one.
fn parse_keepalive(s: &str) -> Result<Option<Duration>, String> {
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Ok(None);
    }
    if d.as_secs() > 32_767 {
        return Err("at most 32767s (TCP_KEEPIDLE's limit)".into());
    }
    Ok(Some(d.max(Duration::from_secs(1))))
}

/// `TCP_USER_TIMEOUT`: a duration in milliseconds' precision; `0` or
/// empty leaves the kernel's.
fn parse_user_timeout(s: &str) -> Result<Option<Duration>, String> {
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    let d = parse_duration(s)?;
    if d.as_millis() > u128::from(i32::MAX as u32) {
        return Err("at most 2147483647ms".into());
    }
    Ok((!d.is_zero()).then_some(d))
}

/// `100ms`, `1s`, `2m`, `1h`, `1d` (a unit is required, as linkerd2-proxy
/// does; at most 100 years).
/// A comma-separated list of CIDRs.
fn parse_networks(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| format!("{n:?} is not a network (CIDR)"))
        })
        .collect()
}

/// `svc.cluster.local.,example.com` → lowercase suffixes without their
/// trailing dot; `.` (every name) becomes the empty suffix.
fn split_suffixes(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// A boolean variable: `true` or `1`, `false`, `0` or empty.
fn parse_flag(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    // A bare zero needs no unit, as in linkerd2-proxy (its injector may
    // write `LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD=0`).
    if !s.is_empty() && s.bytes().all(|b| b == b'0') {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "a unit is required (ms, s, m, h or d)".to_string())?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err("expected a whole number followed by ms, s, m, h or d".into());
    }
    let too_large = || format!("too large (at most {}d)", MAX_DURATION.as_secs() / 86_400);
    let n: u64 = num.parse().map_err(|_| too_large())?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ if unit.starts_with('.') => {
            return Err("expected a whole number (write 1500ms, not 1.5s)".into())
        }
        _ => return Err(format!("unknown unit {unit:?} (expected ms, s, m, h or d)")),
    };
    let d = n
        .checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(too_large)?;
    Ok(d)
}

/// The longest duration any setting takes (a deadline this far off is
/// "never"; one much further would overflow the clock).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_log_filter_is_refused_not_a_panic() {
        let src: BTreeMap<&str, &str> = [(LOG, ",\u{3000}a=")].into_iter().collect();
        let err = Config::from_source(&src).unwrap_err();
        assert!(err.problems[0].contains(LOG), "{err}");
    }

    /// linkerd2-proxy's values in any case (its injector writes `plain`);
    /// anything else is listed as a problem.
    #[test]
    fn log_formats() {
        let format = |v: &str| {
            let src: BTreeMap<&str, &str> = [(LOG_FORMAT, v)].into_iter().collect();
            Config::from_source(&src).map(|c| c.log_format)
        };
        assert_eq!(
            Config::from_source(&BTreeMap::new()).unwrap().log_format,
            LogFormat::Plain
        );
        assert_eq!(format("plain").unwrap(), LogFormat::Plain);
        assert_eq!(format("PLAIN").unwrap(), LogFormat::Plain);
        assert_eq!(format("json").unwrap(), LogFormat::Json);
        assert_eq!(format("Json").unwrap(), LogFormat::Json);
        let err = format("text").unwrap_err();
        assert!(err.problems[0].contains(LOG_FORMAT), "{err}");
    }

    #[test]
    fn port_sets() {
        let p = PortSet::parse("25, 587,8000-8100").unwrap();
        assert!(p.contains(25) && p.contains(587) && p.contains(8000) && p.contains(8100));
        assert!(!p.contains(26) && !p.contains(8101));
        assert!(PortSet::parse("").unwrap() == PortSet::default());
        assert!(PortSet::parse("0").is_err());
        assert!(PortSet::parse("70000").is_err());
        assert!(PortSet::parse("9-8").is_err());
        assert!(PortSet::parse("http").is_err());
        let defaults = PortSet::parse(DEFAULT_OPAQUE_PORTS).unwrap();
        for port in [25, 587, 3306, 4444, 5432, 6379, 9300, 11211] {
            assert!(defaults.contains(port));
        }
    }

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        Config::from_source(&map)
    }

    #[test]
    fn tap_settings() {
        let c = parse(&[]).unwrap();
        assert!(!c.admin.tap.enabled(), "off by default");
        assert_eq!(c.admin.tap.listen, Some("0.0.0.0:4190".parse().unwrap()));
        let c = parse(&[
            (TAP_ALLOW_LOOPBACK, "true"),
            (CONTROL_LISTEN_ADDR, "127.0.0.1:0"),
        ])
        .unwrap();
        assert!(c.admin.tap.enabled() && c.admin.tap.allow_loopback);
        let err = parse(&[(
            TAP_SVC_NAME,
            "tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local",
        )])
        .unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.contains(TAP_SVC_NAME) && p.contains("identity")),
            "{err}"
        );
        let err =
            parse(&[(TAP_ALLOW_LOOPBACK, "maybe"), (TAP_SVC_NAME, "not a name!")]).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.contains(TAP_ALLOW_LOOPBACK)),
            "{err}"
        );
        assert!(
            err.problems.iter().any(|p| p.contains(TAP_SVC_NAME)),
            "{err}"
        );
    }

    #[test]
    fn defaults_match_linkerd() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.outbound.listen, Some("127.0.0.1:4140".parse().unwrap()));
        assert_eq!(c.inbound.listen, Some("0.0.0.0:4143".parse().unwrap()));
        assert_eq!(c.outbound.connect.timeout, Duration::from_secs(1));
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(120));
        assert_eq!(c.log, "warn,ringmesh=info");
        assert_eq!(c.io_driver, IoDriver::Auto);
        assert_eq!(c.cores, None);
        // hyper's server default; linkerd2-proxy removes the limit when
        // the variable is unset (kept here: README, CONFIGURATION.md).
        assert_eq!(c.http2.server(false).max_concurrent_streams, 200);
        // linkerd2-proxy's `DEFAULT_INBOUND_CONNECT_TIMEOUT`; hyper's
        // header list limit; no inbound opaque ports or cluster networks
        // unless given.
        assert_eq!(c.inbound.connect.timeout, Duration::from_millis(300));
        assert_eq!(c.http2.server(true).max_header_list_size, 16 * 1024);
        assert!(c.inbound.opaque_ports == PortSet::default());
        assert!(c.inbound_policy.cluster_networks.is_empty());
    }

    #[test]
    fn cluster_scoped_default_policies_need_the_networks() {
        for policy in ["cluster-unauthenticated", "cluster-authenticated"] {
            for networks in [None, Some(""), Some(" ")] {
                let mut vars = vec![(INBOUND_DEFAULT_POLICY, policy)];
                vars.extend(networks.map(|n| (POLICY_CLUSTER_NETWORKS, n)));
                let err = parse(&vars).unwrap_err().to_string();
                assert!(err.contains(POLICY_CLUSTER_NETWORKS), "{err}");
            }
            let c = parse(&[
                (INBOUND_DEFAULT_POLICY, policy),
                (POLICY_CLUSTER_NETWORKS, "10.0.0.0/8"),
            ])
            .unwrap();
            assert_eq!(c.inbound_policy.cluster_networks.len(), 1);
        }
        assert!(parse(&[(INBOUND_DEFAULT_POLICY, "audit")]).is_ok());
    }

    #[test]
    fn one_dns_ttl_bound_moves_the_others_default() {
        let ttl = |vars: &[(&'static str, &'static str)]| {
            let d = parse(vars).unwrap().discovery.dns;
            (d.min_ttl.as_secs(), d.max_ttl.as_secs())
        };
        assert_eq!(ttl(&[]), (5, 300));
        assert_eq!(ttl(&[(DNS_MIN_TTL, "600s")]), (600, 600));
        assert_eq!(ttl(&[(DNS_MAX_TTL, "2s")]), (2, 2));
        assert_eq!(ttl(&[(DNS_MIN_TTL, "1s"), (DNS_MAX_TTL, "2s")]), (1, 2));
        // Both given, the wrong way round: refused.
        assert!(parse(&[(DNS_MIN_TTL, "3s"), (DNS_MAX_TTL, "2s")]).is_err());
    }

    #[test]
    fn parses_every_variable() {
        let c = parse(&[
            (CORES, "2"),
            (IO_DRIVER, "epoll"),
            (OUTBOUND_LISTEN_ADDR, "[::1]:0"),
            (INBOUND_LISTEN_ADDR, ""),
            (OUTBOUND_CONNECT_TIMEOUT, "250ms"),
            (
                TCP_FORWARD,
                "127.0.0.1:15432=db.test:5432, 127.0.0.1:16379=127.0.0.1:6379",
            ),
            (INBOUND_TARGET, "127.0.0.1:8080"),
            (TCP_IDLE_TIMEOUT, "2m"),
            (SHUTDOWN_GRACE_PERIOD, "1h"),
            (DNS_SERVERS, "127.0.0.1:5353,10.0.0.1"),
            (DETECT_MAX_UNDECIDED, "500"),
            (HTTP2_MAX_STALLED_BYTES, "8388608"),
            (OUTBOUND_MAX_IN_FLIGHT, "500"),
        ])
        .unwrap();
        assert_eq!(c.http.max_in_flight, [100_000, 500]);
        assert_eq!(c.detect_max_undecided, 500);
        assert_eq!(c.http2.max_stalled_bytes, 8 << 20);
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.io_driver, IoDriver::Epoll);
        assert_eq!(c.outbound.listen, Some("[::1]:0".parse().unwrap()));
        assert_eq!(c.inbound.listen, None);
        assert_eq!(c.outbound.connect.timeout, Duration::from_millis(250));
        assert_eq!(c.forwards.len(), 2);
        assert_eq!(c.forwards[0].target.as_str(), "db.test:5432");
        assert_eq!(c.watched_names().len(), 1);
        assert_eq!(c.inbound.target, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.tcp.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(3600));
        assert_eq!(
            c.discovery.dns.servers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
    }

    /// IPv4-mapped addresses are read as the IPv4 ones they map: a
    /// listener binds them, overlaps are found, `INBOUND_IPS` matches.
    #[test]
    fn mapped_addresses_are_ipv4() {
        let c = parse(&[
            (OUTBOUND_LISTEN_ADDR, "[::ffff:127.0.0.1]:4140"),
            (ADMIN_LISTEN_ADDR, "[::ffff:127.0.0.1]:4191"),
            (INBOUND_IPS, "::ffff:10.0.0.7, ::1"),
            (TCP_FORWARD, "[::ffff:127.0.0.1]:15432=db.test:5432"),
        ])
        .unwrap();
        assert_eq!(c.admin.listen, Some("127.0.0.1:4191".parse().unwrap()));
        assert_eq!(
            c.inbound.ips,
            vec![
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(c.forwards[0].listen, "127.0.0.1:15432".parse().unwrap());
        let err = parse(&[
            (OUTBOUND_LISTEN_ADDR, "127.0.0.1:7000"),
            (ADMIN_LISTEN_ADDR, "[::ffff:127.0.0.1]:7000"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains(ADMIN_LISTEN_ADDR), "{err}");
    }

    #[test]
    fn worker_count_as_linkerd2_proxy_counts_it() {
        let n = |vars: &[(&'static str, &'static str)], cpus| parse(vars).unwrap().workers(cpus);
        assert_eq!(n(&[], 8), (8, false), "one per CPU by default");
        assert_eq!(n(&[(CORES, "2")], 8), (2, false));
        assert_eq!(n(&[(CORES, "16")], 8), (8, true));
        assert_eq!(n(&[(CORES_MAX, "4")], 8), (4, false));
        assert_eq!(n(&[(CORES_MAX_RATIO, "0.5")], 8), (4, false));
        assert_eq!(n(&[(CORES_MAX_RATIO, "0.01")], 8), (1, false));
        assert_eq!(
            n(&[(CORES_MAX, "2"), (CORES_MAX_RATIO, "1")], 8),
            (2, false)
        );
        assert_eq!(n(&[(CORES_MIN, "4"), (CORES_MAX, "2")], 8), (4, false));
        assert_eq!(
            n(&[(CORES, "1"), (CORES_MIN, "1"), (CORES_MAX, "2")], 8),
            (2, false)
        );
        assert_eq!(
            n(&[(CORES_MIN, "3"), (CORES, "1")], 8),
            (3, false),
            "_MIN wins over _CORES"
        );
        assert_eq!(n(&[(CORES_MIN, "2")], 8), (2, false));
        let err = parse(&[(CORES_MAX_RATIO, "1.5"), (CORES_MIN, "0"), (CORES_MAX, "x")])
            .unwrap_err()
            .to_string();
        for key in [CORES_MAX_RATIO, CORES_MIN, CORES_MAX] {
            assert!(err.contains(key), "{key} in {err}");
        }
    }

    #[test]
    fn reports_every_problem() {
        let err = parse(&[
            (CORES, "0"),
            (IO_DRIVER, "kqueue"),
            (OUTBOUND_LISTEN_ADDR, "localhost:4140"),
            (OUTBOUND_CONNECT_TIMEOUT, "5"),
            (SHUTDOWN_GRACE_PERIOD, "3 days"),
            (TCP_FORWARD, "127.0.0.1:1=db.test,nonsense,x:1=a.test:1"),
            (DISCOVERY_STATIC, "/nonexistent/ringmesh.toml"),
            (LOG, "[[["),
            (TCP_BUFFER_SIZE, "1"),
            (TCP_RING_BUFFERS, "100"),
            (HTTP2_INITIAL_STREAM_WINDOW_SIZE, "100"),
            (HTTP2_INITIAL_CONNECTION_WINDOW_SIZE, "4294967295"),
            (
                "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_MAX_CONCURRENT_STREAMS",
                "0",
            ),
            (FAILURE_ACCRUAL_CONSECUTIVE, "none"),
            (DETECT_MAX_UNDECIDED, "0"),
            (HTTP2_MAX_STALLED_BYTES, "1000"),
            (INBOUND_MAX_IN_FLIGHT, "0"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for key in [
            HTTP2_INITIAL_STREAM_WINDOW_SIZE,
            HTTP2_INITIAL_CONNECTION_WINDOW_SIZE,
            "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_MAX_CONCURRENT_STREAMS",
            FAILURE_ACCRUAL_CONSECUTIVE,
            DETECT_MAX_UNDECIDED,
            HTTP2_MAX_STALLED_BYTES,
            INBOUND_MAX_IN_FLIGHT,
            CORES,
            IO_DRIVER,
            OUTBOUND_LISTEN_ADDR,
            OUTBOUND_CONNECT_TIMEOUT,
            SHUTDOWN_GRACE_PERIOD,
            DISCOVERY_STATIC,
            LOG,
            TCP_BUFFER_SIZE,
            TCP_RING_BUFFERS,
        ] {
            assert!(text.contains(key), "{key} not reported:\n{text}");
        }
        assert_eq!(
            err.problems
                .iter()
                .filter(|p| p.starts_with(TCP_FORWARD))
                .count(),
            3,
            "{text}"
        );
    }

    /// The socket settings Linkerd's injector writes, read as
    /// linkerd2-proxy reads them.
    #[test]
    fn linkerd_socket_settings() {
        let c = parse(&[
            (OUTBOUND_LISTEN_ADDR, "127.0.0.1:9999"),
            (OUTBOUND_LISTEN_ADDRS, "127.0.0.1:4140,[::1]:4140"),
            (INBOUND_ACCEPT_KEEPALIVE, "10000ms"),
            (OUTBOUND_CONNECT_KEEPALIVE, "10s"),
            (INBOUND_CONNECT_KEEPALIVE, "0"),
            (OUTBOUND_ACCEPT_USER_TIMEOUT, "30s"),
            (INBOUND_CONNECT_USER_TIMEOUT, "1500ms"),
            (INBOUND_TCP_LISTEN_BACKLOG, "128"),
            (INBOUND_CONNECT_TIMEOUT, "2s"),
            (INBOUND_IPS, "10.1.2.3, fd00::3"),
        ])
        .unwrap();
        // _ADDRS wins over _ADDR, as in linkerd2-proxy.
        assert_eq!(c.outbound.listen, Some("127.0.0.1:4140".parse().unwrap()));
        assert_eq!(c.outbound.also_listen, Some("[::1]:4140".parse().unwrap()));
        assert_eq!(c.inbound.accept.keepalive, Some(Duration::from_secs(10)));
        assert_eq!(c.inbound.accept.backlog, 128);
        assert_eq!(c.outbound.accept.backlog, 4096);
        assert_eq!(
            c.outbound.accept.user_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            c.outbound.connect,
            ConnectConfig {
                timeout: Duration::from_secs(1),
                keepalive: Some(Duration::from_secs(10)),
                user_timeout: None,
            }
        );
        assert_eq!(
            c.inbound.connect,
            ConnectConfig {
                timeout: Duration::from_secs(2),
                keepalive: None,
                user_timeout: Some(Duration::from_millis(1500)),
            }
        );
        assert_eq!(
            c.inbound.ips,
            vec![
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse().unwrap()
            ]
        );
        // One address; an empty list is as if unset.
        let c = parse(&[(OUTBOUND_LISTEN_ADDRS, "127.0.0.1:4140")]).unwrap();
        assert_eq!(c.outbound.also_listen, None);
        let c = parse(&[
            (OUTBOUND_LISTEN_ADDRS, ""),
            (OUTBOUND_LISTEN_ADDR, "127.0.0.1:1"),
        ])
        .unwrap();
        assert_eq!(c.outbound.listen, Some("127.0.0.1:1".parse().unwrap()));
        // A keepalive under a second is a second (TCP_KEEPIDLE's unit).
        let c = parse(&[(OUTBOUND_ACCEPT_KEEPALIVE, "10ms")]).unwrap();
        assert_eq!(c.outbound.accept.keepalive, Some(Duration::from_secs(1)));

        let err = parse(&[
            (OUTBOUND_LISTEN_ADDRS, "127.0.0.1:1,127.0.0.1:2,[::1]:3"),
            (INBOUND_ACCEPT_KEEPALIVE, "10"),
            (OUTBOUND_CONNECT_KEEPALIVE, "10h"),
            (INBOUND_CONNECT_USER_TIMEOUT, "forever"),
            (OUTBOUND_TCP_LISTEN_BACKLOG, "0"),
            (INBOUND_IPS, "10.1.2.3,pod"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for key in [
            OUTBOUND_LISTEN_ADDRS,
            INBOUND_ACCEPT_KEEPALIVE,
            OUTBOUND_CONNECT_KEEPALIVE,
            INBOUND_CONNECT_USER_TIMEOUT,
            OUTBOUND_TCP_LISTEN_BACKLOG,
            INBOUND_IPS,
        ] {
            assert!(text.contains(key), "{key} not reported:\n{text}");
        }
        let err = parse(&[(OUTBOUND_LISTEN_ADDRS, "[::1]:4140,[::1]:4140")]).unwrap_err();
        assert!(err.to_string().contains(OUTBOUND_LISTEN_ADDRS), "{err}");
    }

    /// The outbound listeners' HTTP/2 server settings: the inbound ones
    /// unless their own are set; the windows default to the global ones.
    #[test]
    fn http2_server_settings_per_side() {
        const IN: &str = "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_";
        const OUT: &str = "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_";
        // `parse` takes the test's static strings.
        let var = |prefix: &str, name: &str| -> &'static str {
            Box::leak(format!("{prefix}{name}").into_boxed_str())
        };
        let c = parse(&[]).unwrap();
        assert_eq!(c.http2.server(false), H2Server::default());
        assert_eq!(c.http2.server(true), H2Server::default());
        let vars = [
            (var(IN, "MAX_CONCURRENT_STREAMS"), "50"),
            (var(IN, "KEEP_ALIVE_INTERVAL"), "10s"),
            (var(IN, "MAX_FRAME_SIZE"), "65536"),
            (var(IN, "MAX_HEADER_LIST_SIZE"), "131072"),
            (HTTP2_INITIAL_STREAM_WINDOW_SIZE, "1048576"),
        ];
        let c = parse(&vars).unwrap();
        let inbound = H2Server {
            max_concurrent_streams: 50,
            keep_alive_interval: Some(Duration::from_secs(10)),
            max_frame_size: 65_536,
            max_header_list_size: 131_072,
            stream_window: 1 << 20,
            ..H2Server::default()
        };
        assert_eq!(c.http2.server(false), inbound);
        assert_eq!(c.http2.server(true), inbound);
        let mut more = vars.to_vec();
        more.extend([
            (var(OUT, "MAX_CONCURRENT_STREAMS"), "7"),
            (var(OUT, "KEEP_ALIVE_INTERVAL"), "off"),
            (var(OUT, "KEEP_ALIVE_TIMEOUT"), "1s"),
            (var(OUT, "INITIAL_STREAM_WINDOW_SIZE"), "70000"),
            (var(OUT, "INITIAL_CONNECTION_WINDOW_SIZE"), "4194304"),
            (var(OUT, "MAX_FRAME_SIZE"), "16384"),
            (var(OUT, "MAX_HEADER_LIST_SIZE"), "2048"),
        ]);
        let c = parse(&more).unwrap();
        assert_eq!(c.http2.server(false), inbound);
        assert_eq!(
            c.http2.server(true),
            H2Server {
                max_concurrent_streams: 7,
                keep_alive_interval: None,
                keep_alive_timeout: Duration::from_secs(1),
                stream_window: 70_000,
                connection_window: 4 << 20,
                max_frame_size: 16_384,
                max_header_list_size: 2048,
            }
        );
        // The client side keeps the global windows.
        assert_eq!(
            (c.http2.stream_window, c.http2.connection_window),
            (1 << 20, 1 << 20)
        );
        let bad = [
            (var(OUT, "MAX_CONCURRENT_STREAMS"), "0"),
            (var(OUT, "KEEP_ALIVE_TIMEOUT"), "soon"),
            (var(IN, "MAX_FRAME_SIZE"), "16383"),
            (var(OUT, "MAX_FRAME_SIZE"), "16777216"),
            (var(IN, "MAX_HEADER_LIST_SIZE"), "100"),
            (var(OUT, "MAX_HEADER_LIST_SIZE"), "16777217"),
            (var(IN, "INITIAL_STREAM_WINDOW_SIZE"), "2147483648"),
            (var(OUT, "INITIAL_CONNECTION_WINDOW_SIZE"), "-1"),
        ];
        let err = parse(&bad).unwrap_err().to_string();
        for (key, _) in bad {
            assert!(err.contains(key), "{key} not reported:\n{err}");
        }
    }

    /// Gateway suffixes: none by default; names under one (at a dot), any
    /// case, with or without a trailing dot.
    #[test]
    fn gateway_suffixes() {
        let c = parse(&[]).unwrap();
        assert!(!c.inbound.gateway_for("web.ns.svc.cluster.local"));
        let c = parse(&[(INBOUND_GATEWAY_SUFFIXES, "svc.cluster.local., example.org")]).unwrap();
        for (host, yes) in [
            ("web.ns.svc.cluster.local", true),
            ("WEB.NS.SVC.CLUSTER.LOCAL.", true),
            ("svc.cluster.local", true),
            ("a.example.org", true),
            ("web.ns.svc.cluster.localx", false),
            ("xsvc.cluster.local", false),
            ("example.com", false),
        ] {
            assert_eq!(c.inbound.gateway_for(host), yes, "{host}");
        }
        let c = parse(&[(INBOUND_GATEWAY_SUFFIXES, ".")]).unwrap();
        assert!(c.inbound.gateway_for("anything.at.all"));
    }

    /// linkerd2-proxy's outbound TCP queue settings and defaults.
    #[test]
    fn outbound_tcp_queue() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            (
                c.outbound.tcp_failfast_timeout,
                c.outbound.tcp_queue_capacity
            ),
            (Duration::from_secs(3), 10_000)
        );
        let c = parse(&[(TCP_FAILFAST_TIMEOUT, "250ms"), (TCP_QUEUE_CAPACITY, "0")]).unwrap();
        assert_eq!(
            (
                c.outbound.tcp_failfast_timeout,
                c.outbound.tcp_queue_capacity
            ),
            (Duration::from_millis(250), 0)
        );
        let err = parse(&[(TCP_FAILFAST_TIMEOUT, "soon"), (TCP_QUEUE_CAPACITY, "-1")])
            .unwrap_err()
            .to_string();
        for key in [TCP_FAILFAST_TIMEOUT, TCP_QUEUE_CAPACITY] {
            assert!(err.contains(key), "{key} not reported:\n{err}");
        }
    }

    /// Ingress mode turns the outbound informational headers off unless
    /// they are asked for.
    #[test]
    fn ingress_mode_and_informational_headers() {
        let c = parse(&[]).unwrap();
        assert!(!c.outbound.ingress_mode && c.outbound.informational_headers);
        let c = parse(&[(INGRESS_MODE, "true")]).unwrap();
        assert!(c.outbound.ingress_mode && !c.outbound.informational_headers);
        let c = parse(&[
            (INGRESS_MODE, "true"),
            (OUTBOUND_DISABLE_INFORMATIONAL_HEADERS, "false"),
        ])
        .unwrap();
        assert!(c.outbound.ingress_mode && c.outbound.informational_headers);
        let c = parse(&[(OUTBOUND_DISABLE_INFORMATIONAL_HEADERS, "1")]).unwrap();
        assert!(!c.outbound.ingress_mode && !c.outbound.informational_headers);
        let err = parse(&[
            (INGRESS_MODE, "yes please"),
            (OUTBOUND_DISABLE_INFORMATIONAL_HEADERS, "2"),
        ])
        .unwrap_err()
        .to_string();
        for key in [INGRESS_MODE, OUTBOUND_DISABLE_INFORMATIONAL_HEADERS] {
            assert!(err.contains(key), "{key} not reported:\n{err}");
        }
    }

    /// The relays' bulk buffer size and budget (0: no bulk buffers).
    #[test]
    fn tcp_bulk_settings() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            (c.tcp.bulk_buffer_size, c.tcp.bulk_memory),
            (1 << 20, 256 << 20)
        );
        let c = parse(&[(TCP_BULK_BUFFER_SIZE, "262144"), (TCP_BULK_MEMORY, "0")]).unwrap();
        assert_eq!((c.tcp.bulk_buffer_size, c.tcp.bulk_memory), (262_144, 0));
        let err = parse(&[(TCP_BULK_BUFFER_SIZE, "10"), (TCP_BULK_MEMORY, "lots")])
            .unwrap_err()
            .to_string();
        for key in [TCP_BULK_BUFFER_SIZE, TCP_BULK_MEMORY] {
            assert!(err.contains(key), "{key} not reported:\n{err}");
        }
    }

    /// linkerd2-proxy's HTTP/1 pool settings, per side, and their bad
    /// values listed.
    #[test]
    fn http1_pool_settings() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.http.pool, [PoolLimits::default(); 2]);
        assert_eq!(
            PoolLimits::default(),
            PoolLimits {
                max_idle: 10_000,
                idle_timeout: Duration::from_secs(3)
            }
        );
        let c = parse(&[
            (INBOUND_MAX_IDLE_CONNS, "0"),
            (OUTBOUND_MAX_IDLE_CONNS, "20"),
            (INBOUND_POOL_IDLE_TIMEOUT, "500ms"),
            (OUTBOUND_POOL_IDLE_TIMEOUT, "1m"),
        ])
        .unwrap();
        assert_eq!(
            c.http.pool,
            [
                PoolLimits {
                    max_idle: 0,
                    idle_timeout: Duration::from_millis(500)
                },
                PoolLimits {
                    max_idle: 20,
                    idle_timeout: Duration::from_secs(60)
                }
            ]
        );
        let err = parse(&[
            (INBOUND_MAX_IDLE_CONNS, "-1"),
            (OUTBOUND_MAX_IDLE_CONNS, "many"),
            (INBOUND_POOL_IDLE_TIMEOUT, "3"),
            (OUTBOUND_POOL_IDLE_TIMEOUT, "soon"),
        ])
        .unwrap_err()
        .to_string();
        for key in [
            INBOUND_MAX_IDLE_CONNS,
            OUTBOUND_MAX_IDLE_CONNS,
            INBOUND_POOL_IDLE_TIMEOUT,
            OUTBOUND_POOL_IDLE_TIMEOUT,
        ] {
            assert!(err.contains(key), "{key} not reported:\n{err}");
        }
    }

    #[test]
    fn colliding_listeners_are_rejected() {
        let err = parse(&[
            (OUTBOUND_LISTEN_ADDR, "127.0.0.1:7000"),
            (TCP_FORWARD, "127.0.0.1:7000=127.0.0.1:1"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("both listen on 127.0.0.1:7000"));
    }

    /// Control-plane addresses as Linkerd's injector writes them: DNS
    /// names (resolved when connecting) need `_SVC_NAME` off loopback;
    /// `localhost` is loopback (plaintext).
    #[test]
    fn control_plane_names() {
        let c = parse(&[
            (DESTINATION_SVC_ADDR, "localhost:8086"),
            (DNS_SERVERS, "127.0.0.1:5353"),
        ])
        .unwrap();
        let d = c.destination.unwrap();
        assert!(d.svc_addr.is_loopback() && d.svc_name.is_none());
        assert_eq!(d.svc_addr.to_string(), "localhost:8086");
        match &d.svc_addr {
            ControlAddr::Name { dns, .. } => {
                assert_eq!(dns.servers, ["127.0.0.1:5353".parse().unwrap()])
            }
            other => panic!("{other:?}"),
        }

        let err = parse(&[(
            DESTINATION_SVC_ADDR,
            "linkerd-dst-headless.linkerd.svc.cluster.local.:8086",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("LINKERD2_PROXY_DESTINATION_SVC_NAME must be set"),
            "{err}"
        );

        for bad in [
            "bad name:8086",
            "dst.linkerd:0",
            "dst.linkerd",
            "-x.linkerd:80",
            ":80",
        ] {
            let err = parse(&[(POLICY_SVC_ADDR, bad), (POLICY_WORKLOAD, "{}")])
                .unwrap_err()
                .to_string();
            assert!(err.contains(POLICY_SVC_ADDR), "{bad}: {err}");
        }
    }

    /// Durations that must be positive are, whatever the identity mode
    /// (zero was accepted without an identity, or in the static mode).
    #[test]
    fn identity_durations_are_positive_in_every_mode() {
        for mode in [
            &[][..],
            &[(IDENTITY_CERT, "/c.pem"), (IDENTITY_KEY, "/k.pem")][..],
        ] {
            let mut vars = vec![(TLS_HANDSHAKE_TIMEOUT, "0"), (IDENTITY_MIN_REFRESH, "0s")];
            vars.extend_from_slice(mode);
            let err = parse(&vars).unwrap_err();
            for key in [TLS_HANDSHAKE_TIMEOUT, IDENTITY_MIN_REFRESH] {
                let n = err.problems.iter().filter(|p| p.starts_with(key)).count();
                assert_eq!(n, 1, "{key}: {err}");
            }
        }
    }

    /// Variables read only with another one are checked without it too,
    /// once each.
    #[test]
    fn settings_of_what_is_off_are_checked_too() {
        let src: BTreeMap<&str, &str> = [
            (IDENTITY_MIN_REFRESH, "xyz"),
            (TLS_HANDSHAKE_TIMEOUT, "soon"),
            (DESTINATION_PROFILE_NETWORKS, "garbage"),
            (INBOUND_PORTS, "abc"),
            (DESTINATION_SVC_NAME, "bad name"),
        ]
        .into_iter()
        .collect();
        let err = Config::from_source(&src).unwrap_err();
        for key in [
            IDENTITY_MIN_REFRESH,
            TLS_HANDSHAKE_TIMEOUT,
            DESTINATION_PROFILE_NETWORKS,
            INBOUND_PORTS,
            DESTINATION_SVC_NAME,
        ] {
            let n = err.problems.iter().filter(|p| p.starts_with(key)).count();
            assert_eq!(n, 1, "{key}: {err}");
        }
        let fine: BTreeMap<&str, &str> = [
            (IDENTITY_MIN_REFRESH, "10s"),
            (DESTINATION_PROFILE_NETWORKS, "10.0.0.0/8"),
            (INBOUND_PORTS, "8080,9000-9002"),
        ]
        .into_iter()
        .collect();
        assert!(Config::from_source(&fine).is_ok());
    }

    /// Zero where it means nothing is refused (a header read timeout of 0
    /// answered 408 to any request whose head came in two reads; a poll
    /// interval of 0 read the static file in a loop).
    #[test]
    fn zero_is_refused_where_it_means_nothing() {
        for key in [
            HTTP_HEADER_READ_TIMEOUT,
            DISCOVERY_STATIC_POLL_INTERVAL,
            TCP_IDLE_TIMEOUT,
            OUTBOUND_DETECT_TIMEOUT,
            OUTBOUND_DISCOVERY_IDLE_TIMEOUT,
        ] {
            let src: BTreeMap<&str, &str> = [(key, "0ms")].into_iter().collect();
            let err = Config::from_source(&src).unwrap_err();
            assert!(err.problems[0].contains("more than 0"), "{key}: {err}");
        }
        let src: BTreeMap<&str, &str> = [(SHUTDOWN_GRACE_PERIOD, "0s")].into_iter().collect();
        assert!(
            Config::from_source(&src).is_ok(),
            "a grace period of 0 drains at once"
        );
    }

    /// A wildcard listener and another on the same port are a collision
    /// (it failed to bind, said as a port another process holds).
    #[test]
    fn wildcard_listeners_overlap() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("0.0.0.0:4143"), a("127.0.0.1:4143")));
        assert!(overlaps(a("127.0.0.1:4143"), a("[::]:4143")));
        assert!(!overlaps(a("0.0.0.0:4143"), a("[::1]:4143")));
        assert!(!overlaps(a("127.0.0.1:4143"), a("127.0.0.2:4143")));
        assert!(!overlaps(a("0.0.0.0:4143"), a("0.0.0.0:4191")));
        let src: BTreeMap<&str, &str> = [
            (ADMIN_LISTEN_ADDR, "0.0.0.0:31143"),
            (INBOUND_LISTEN_ADDR, "127.0.0.1:31143"),
        ]
        .into_iter()
        .collect();
        let err = Config::from_source(&src).unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.contains(ADMIN_LISTEN_ADDR) && p.contains(INBOUND_LISTEN_ADDR)),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(2 * 86_400)));
        assert!(parse_duration("3").is_err());
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 00 "), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("1.5s").unwrap_err().contains("1500ms"));
        // Past the clock's range: refused, not a panic at the first
        // deadline computed from it.
        for huge in [
            "18446744073709551615s",
            "99999999999999999999s",
            "5124095576030432h",
            "36501d",
        ] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too large"),
                "{huge}"
            );
        }
        assert!(parse_duration("36500d").is_ok());
    }
}
