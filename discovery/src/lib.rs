//! ringmesh-discovery: where traffic may go.
//!
//! Owns the resolvers (the static endpoints file, DNS A/AAAA with TTLs; the
//! Destination gRPC API comes later), the immutable [`Snapshot`] they produce,
//! and the lock-free publish/subscribe [`channel`] that carries snapshots from
//! the control core to the workers.
//!
//! It must not do I/O on a worker: everything here that touches the network or
//! the file system runs on the control core. Workers only read snapshots.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod channel;
pub mod dns;
mod dns_resolver;
pub mod events;
mod file_resolver;
pub mod hosts;
mod resolver;
pub mod snapshot;
pub mod static_file;
pub mod table;

pub use channel::{
    channel, Cache, Published, Publisher, SnapshotCache, SnapshotPublisher, SnapshotSubscriber,
    Subscriber,
};
pub use resolver::{Discovery, DiscoveryConfig, DiscoveryError, Resolver};
pub use table::Table;
pub use snapshot::{Authority, AuthorityError, Endpoint, Protocol, Service, Snapshot};
