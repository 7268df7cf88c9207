//! ringmesh-admin: telemetry, the admin server (and, later, tap).
//!
//! [`telemetry`] owns the metric shard types the workers write (TCP and
//! HTTP label sets with their TLS status, per-connection meters, latency
//! histograms, the per-worker series cap and idle eviction) and the
//! Prometheus text encoder that merges the workers' copies into `/metrics`.
//! It holds no worker: the engine asks its workers for their shards (by
//! message) and hands the copies to a [`telemetry::Scrape`].
//!
//! The server is a set of tasks on the control core's single-threaded monoio
//! runtime, never on a data-path worker: HTTP/1.1 and HTTP/2 (h2c with prior
//! knowledge, so gRPC for tap can be served on the same port next) on one
//! listener, every wait for a client bounded, the number of connections
//! capped. What it serves comes from the engine through [`AdminBackend`],
//! whose `metrics` is async: the engine asks its workers and waits for their
//! answers without blocking the loop. This crate knows nothing of workers or
//! discovery. It parses HTTP/1 with the codec from `ringmesh-protocols`.
//!
//! Endpoints: `/live`, `/ready`, `/metrics` (linkerd2-proxy's request,
//! response and TCP families, per-worker and process series; gzip when
//! asked), `POST /shutdown` (loopback only, when enabled), `GET|PUT
//! /proxy-log-level`. Not built: tap.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod server;
pub mod slots;
pub mod telemetry;

pub use server::{route_for_tests, serve, AdminBackend, Body, H2Socket, Page, Reply, Settings};
