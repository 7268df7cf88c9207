//! ringmesh-admin: telemetry and the admin HTTP server (and, later, tap).
//!
//! [`telemetry`] owns the metric shard types the workers write (TCP and
//! HTTP label sets with their TLS status, per-connection meters, latency
//! histograms, the per-worker series cap and idle eviction) and the
//! Prometheus text encoder that merges the workers' copies into `/metrics`.
//! It holds no worker: the engine asks its workers for their shards (by
//! message) and hands the copies to a [`telemetry::Scrape`].
//!
//! The server runs on its own thread with blocking std sockets, never on a
//! data-path worker. What it serves comes from the engine through
//! [`AdminBackend`]; this crate knows nothing of workers or discovery
//! (a service's name reaches a label set as a plain shared string). It
//! parses requests with the HTTP/1 codec from `ringmesh-protocols`, whose
//! relay outcome also names a closed connection's `errno` label.
//!
//! Serves `/live`, `/ready`, `/metrics` (linkerd2-proxy's request, response
//! and TCP families, per-worker and process series; gzip when asked),
//! `POST /shutdown`, `GET|PUT /proxy-log-level`. Not built: tap.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod server;
pub mod telemetry;

pub use server::{route_for_tests, serve, AdminBackend, Reply};
