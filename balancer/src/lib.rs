//! ringmesh-balancer: load-balancing algorithms with no I/O.
//!
//! Owns endpoint choice: power-of-two-choices over a per-endpoint load
//! (peak-EWMA latency × outstanding work, as linkerd2-proxy), with
//! weights, exclusion of endpoints already tried, and endpoint-set updates
//! that keep the state of endpoints that stay. Each worker owns its own
//! replica (`Rc`/`Cell`, no atomics): this crate must never lock, allocate per
//! pick, or touch a socket.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod accrual;
pub mod budget;
pub mod ewma;
mod p2c;

pub use accrual::{AccrualPolicy, Transition};
pub use budget::RetryBudget;
pub use p2c::{Balancer, EndpointState, OpenGuard};
