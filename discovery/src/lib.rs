//! ringmesh-discovery: where traffic may go, and the channels between the
//! control core and the workers.
//!
//! Owns the resolvers, run as tasks on the control core's monoio runtime
//! behind one [`Resolver`] trait: the static endpoints file (reloaded when
//! it changes) and DNS A/AAAA with TTLs (one task per watched name, monoio
//! sockets; the wire format is hickory-proto's, sans I/O). The Destination
//! gRPC API is the next resolver on the same seam. They report into one
//! [`Table`], which merges their answers (the static file wins) and
//! publishes the immutable [`Snapshot`].
//!
//! The channels: [`channel()`] publishes any state to the workers lock-free
//! (one atomic pointer swap; a worker's [`Cache`] checks a version counter)
//! — discovery snapshots today, TLS material and policy next, each in a
//! channel of its own; [`events`] carries what workers tell the control
//! core in a bounded queue that drops and counts instead of blocking.
//!
//! It must not do I/O on a worker: everything here that touches the network
//! or the file system runs on the control core, and nothing there may block
//! its event loop. Workers only read caches and send events.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod channel;
mod discovery;
pub mod dns;
mod dns_resolver;
pub mod events;
mod file_resolver;
pub mod hosts;
mod limit;
pub mod profile;
mod resolver;
pub mod snapshot;
pub mod static_file;
pub mod table;

pub use channel::{
    channel, Cache, Published, Publisher, SnapshotCache, SnapshotPublisher, SnapshotSubscriber,
    Subscriber,
};
pub use discovery::Discovery;
#[cfg(fuzzing)]
pub use file_resolver::fuzzing::StaticLoader;
pub use profile::Profile;
pub use resolver::{DiscoveryConfig, DiscoveryError, Resolver};
pub use snapshot::{Authority, AuthorityError, Endpoint, Protocol, Service, Snapshot};
pub use table::{Claim, Table};
