//! ringmesh-admin: the admin HTTP server (and, later, metric shards, the
//! Prometheus encoder for them, and tap).
//!
//! The server runs on its own thread with blocking std sockets, never on a
//! data-path worker. What it serves comes from the engine through
//! [`AdminBackend`]; this crate knows nothing of workers or discovery.
//! It parses requests with the HTTP/1 codec from `ringmesh-protocols`.
//!
//! Built so far (issue 4, first slice): `/live`, `/ready`, `/metrics` (process
//! and per-worker connection series), `POST /shutdown`, `GET|PUT
//! /proxy-log-level`. Not built: linkerd's request/response/TCP families and
//! per-worker metric shards, gzip, cardinality limits.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod server;

pub use server::{route_for_tests, serve, AdminBackend, Reply};
