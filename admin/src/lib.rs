//! ringmesh-admin: metrics shards, the Prometheus encoder, the admin HTTP
//! server and tap.
//!
//! Not built yet: ringmesh has no admin listener or metrics today (see
//! README, "Status"). The crate exists so the workspace has its final shape.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
