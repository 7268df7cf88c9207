//! ringmesh-identity: workload identity and TLS.
//!
//! Will own rustls configurations, identity names, certificate loading, the
//! CSR + Certify client and renewal, all on the control core; workers only
//! receive ready-made TLS configs through the snapshot channel.
//!
//! Not built yet: mutual TLS is absent from ringmesh today (see README,
//! "Status"). The crate exists so the workspace has its final shape.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
