//! ringmesh-admin: the admin server (and, later, metric shards, the
//! Prometheus encoder for them, and tap).
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
//! Endpoints: `/live`, `/ready`, `/metrics` (gzip when asked), `POST
//! /shutdown` (loopback only, when enabled), `GET|PUT /proxy-log-level`.
//! Not built here yet: metric shards, cardinality limits, tap.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod server;

pub use server::{route_for_tests, serve, AdminBackend, Reply, Settings};
