//! ringmesh-identity: workload identity and TLS.
//!
//! Owns identity names ([`Name`]) and the rustls configurations built from
//! a workload's certificate material ([`tls`]): TLS 1.3 only, on the
//! aws-lc-rs provider, as linkerd2-proxy. Configs are built on the control
//! core and handed to workers ready-made (a worker never does certificate
//! work); the engine's upstream connector uses the client config.
//!
//! Not built yet (issue 15): loading `LINKERD2_PROXY_IDENTITY_*` material,
//! the CSR + Certify client and renewal, inbound termination. Until then no
//! configuration produces a config, so every connection is plain.
//!
//! Must not: do I/O (callers own sockets), or depend on the engine.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod name;
pub mod tls;

pub use name::{Name, NameError};
