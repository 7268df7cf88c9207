//! ringmesh-bench: `cargo bench` latency reports and the load-test harness
//! scripts (`bench/scripts/`) that compare ringmesh with peers.
//!
//! The `cargo bench` scenarios come with their own issue; today this crate
//! holds only the harness scripts (see README, "Performance").
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
