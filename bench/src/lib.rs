//! ringmesh-bench: the `cargo bench` latency reports and the load-test harness
//! scripts (`bench/scripts/`) that compare ringmesh with peers.
//!
//! # What this crate owns
//!
//! - Loopback backends on their own threads ([`backend`]): a TCP echo server
//!   ([`tcp_echo`]), an HTTP/1.1 keep-alive server with a small and a 1 MiB
//!   response ([`http1`]) and a WebSocket echo server ([`websocket`]) on
//!   blocking sockets, and an h2c server with a small response and a gRPC
//!   unary echo ([`http2`], [`grpc`] framing) on a monoio runtime; each
//!   module holds both sides of its protocol.
//! - The real `ringmesh` binary as a child process under test ([`proxy`]):
//!   free ports, environment, readiness, CPU pinning ([`pin`]), killed when
//!   dropped.
//! - CPU accounting from `/proc` ([`cpu`]): the proxy's CPU per request, and
//!   how much other work shared the proxy's and the load's CPUs (so a noisy
//!   run on a shared machine is flagged, not believed).
//! - Load generators ([`load`]): open loop at a fixed rate (latency measured
//!   from each request's *scheduled* send time, so a slow response cannot
//!   hide the requests queued behind it — no coordinated omission) and closed
//!   loop at maximum throughput, both recording into `hdrhistogram`s and
//!   bounded in time.
//! - The scenario table ([`scenario`]) and the reports ([`report`]: table on
//!   stdout, JSON, CSV; [`plot`]: latency-distribution SVG).
//!
//! The bench targets are in `benches/`: `e2e` (the end-to-end scenarios) and
//! `micro` (criterion micro-benchmarks of the hot-path building blocks).
//!
//! # What it must not do
//!
//! No async runtime where blocking sockets do (the load should not share a
//! design with the thing it measures), and never a second one: HTTP/2,
//! whose multiplexing a blocking client cannot do without its own h2 stack,
//! runs on monoio like the proxy ([`http2`] says why). No fixed ports, no
//! traffic off loopback, and no load loop without a deadline.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod cpu;
pub mod grpc;
pub mod http1;
pub mod http2;
pub mod load;
pub mod pin;
pub mod plot;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod tcp_echo;
pub mod websocket;

use std::net::TcpStream;
use std::time::Duration;

/// Reads and writes on benchmark sockets give up after this long, so a stuck
/// peer ends a connection with an error instead of hanging the run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Latency-sensitive socket settings shared by every client and backend.
pub fn tune(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(())
}
