//! ringmesh-protocols: wire formats and per-connection data paths.
//!
//! Owns what happens to bytes on one connection: the TCP relay (this issue),
//! and later protocol detection, the HTTP/1 codec, HTTP/2, upgrades and gRPC
//! framing. It must not know about discovery, balancing or policy: callers
//! hand it connected sockets and limits.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod buffer;
pub mod client_hello;
pub mod detect;
pub mod h2guard;
pub mod http1;
pub mod json;
pub mod tcp;
pub mod transport_header;
