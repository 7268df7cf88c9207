//! ringmesh-engine: the process skeleton and the L4 data path.
//!
//! Owns start-up (configuration, binding, driver choice), the worker threads
//! (one monoio event loop pinned per core, each with its own listeners,
//! balancer replicas and buffers), the control core (a monoio runtime on a
//! thread of its own running discovery's resolvers, the worker events queue
//! and the admin server; see `control.rs`), graceful shutdown, and the
//! opaque TCP proxy paths (outbound, inbound, explicit forwards).
//!
//! Workers share nothing but the snapshot channel: every other piece of state
//! a worker touches is `Rc`/`Cell` owned by that worker's thread.
//!
//! Telemetry types are not here: each worker writes metric shards defined in
//! `ringmesh_admin::telemetry` (building their label sets, the TLS status
//! included, on the data path); the engine's part of a scrape is asking every
//! worker for a copy by message (`admin.rs`) and handing the copies to the
//! admin crate's encoder.
#![deny(rust_2018_idioms)]

mod admin;
pub mod config;
mod control;
mod detect;
mod error;
mod http1;
mod http2;
mod inbox;
mod l4;
pub mod listen;
mod memory;
pub mod orig_dst;
mod pool;
mod proxy;
mod retry;
mod route;
mod server_first;
mod stop;
mod translate;
mod undecided;
mod warn_limit;
mod worker;

pub use admin::{Hooks, LogLevel};
pub use config::{Config, ConfigError, IoDriver};
pub use proxy::{ActiveDriver, Proxy, StartError};
/// One worker's counters ([`Proxy::worker_stats`]); the type lives with the
/// other metric types in `ringmesh-admin`.
pub use ringmesh_admin::telemetry::WorkerStats;
