//! ringmesh-identity: workload identity and TLS.
//!
//! Owns identity names ([`Name`]), a workload's verified [`Credentials`]
//! and the rustls configurations built from them ([`TlsConfigs`], [`tls`]):
//! TLS 1.3 only, on the aws-lc-rs provider, as linkerd2-proxy. Configs are
//! built on the control core and handed to workers ready-made (a worker
//! never does certificate work).
//!
//! Must not: do I/O (callers own sockets and files), or depend on the
//! engine.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod bounded;
mod creds;
mod name;
pub mod tls;
pub mod x509;

pub use bounded::{TooManyIntermediates, MAX_INTERMEDIATES};
pub use creds::{Credentials, CredsError, TlsConfigs};
pub use name::{Name, NameError};
