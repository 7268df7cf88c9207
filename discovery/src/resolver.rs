//! Discovery on the control core: resolvers run as tasks behind one
//! [`Resolver`] trait and report into one [`Table`], which publishes a new
//! snapshot whenever what workers would see changes.
//!
//! Resolvers today: the static file (`file_resolver.rs`) and DNS
//! (`dns_resolver.rs`, one task per watched name). The Destination
//! API fits the same seam: a task that follows [`Table::watched`], holds a
//! long-lived stream per name and calls [`Table::report`] with each update.
//! A resolver must never block the thread: it shares the control core's
//! event loop with every other resolver and the admin server.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use crate::dns::DnsConfig;
use crate::static_file::StaticFileError;
use crate::table::Table;

/// A source of services, run as a task on the control core's runtime.
pub trait Resolver {
    /// Runs for as long as the control core does (the task is dropped with
    /// its runtime). Everything it learns goes into `table`.
    fn run(self: Box<Self>, table: Table) -> Pin<Box<dyn Future<Output = ()>>>;
}

#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    pub static_file: Option<PathBuf>,
    /// How often the static file's metadata is checked for changes.
    pub static_poll_interval: Duration,
    pub dns: DnsConfig,
    pub hosts_file: Option<PathBuf>,
    /// At most this many names are watched at once.
    pub max_names: usize,
    /// The pod's own addresses (`LINKERD2_PROXY_INBOUND_IPS`): endpoints
    /// there are reached plainly (see `Endpoint::local`).
    pub local_ips: Vec<std::net::IpAddr>,
    /// A watched name no request used for this long is dropped (its
    /// resolver stops; the next request watches it again); `None`: never.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read static discovery file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("static discovery file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: StaticFileError,
    },
}
