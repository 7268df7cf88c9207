//! ringmesh-balancer: load-balancing algorithms with no I/O.
//!
//! Owns endpoint choice: power-of-two-choices over a per-endpoint load, with
//! weights, exclusion of endpoints already tried, and endpoint-set updates
//! that keep the state of endpoints that stay. Each worker owns its own
//! replica (`Rc`/`Cell`, no atomics): this crate must never lock, allocate per
//! pick, or touch a socket.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod l4;

pub use l4::{EndpointState, L4Balancer, OpenGuard};
