//! ringmesh-engine: the process skeleton and the data path.
//!
//! Owns start-up (configuration, binding, driver choice), the worker threads
//! (one monoio event loop pinned per core, each with its own listeners,
//! balancer replicas, pools and buffers), the control core (a monoio runtime
//! on a thread of its own running discovery's resolvers, the worker events
//! queue and the admin server; see `control.rs`), graceful shutdown, and every
//! proxy path: opaque TCP, HTTP/1, HTTP/2 and the translations between them.
//!
//! Workers share nothing but the snapshot channel: every other piece of state
//! a worker touches is `Rc`/`Cell` owned by that worker's thread.
//!
//! Modules, in layers: each uses only layers below it (`python3
//! ../shared/tools/modgraph.py engine/src` reports no cycle).
//! - **Process:** `proxy` (start-up, the public [`Proxy`]), `run` (a worker
//!   thread: runtime, buffer ring, accept loops, messages, drain), `control`
//!   (the control core), `admin` (the admin backend), `inbox` (what other
//!   threads ask a worker).
//! - **Control plane** (tasks on the control core): `certify` (Linkerd's
//!   identity client: the Certify loop, its refresh schedule and
//!   certificate metrics), `grpc` (a gRPC client, unary and
//!   server-streaming, over monoio-http HTTP/2). Built and tested; the
//!   control core starts them next.
//! - **Connections:** `l4` (an accepted connection: original destination,
//!   detection, the opaque relay, or a protocol server), `detect`,
//!   `server_first`, `undecided`, `orig_dst`.
//! - **Protocol servers:** `http1` (an HTTP/1 client connection: request
//!   heads, routing, the per-request choice of path), `http2` (an HTTP/2
//!   client connection: its streams, each routed and forwarded).
//! - **Request paths:** `dispatch` (which path a routed request takes: the
//!   servers' only way to `translate`), `h1forward` (HTTP/1 to an HTTP/1
//!   upstream, and the tunnels upgrades become), `translate` (HTTP/1 ↔
//!   HTTP/2), `h2client` (streams on HTTP/2 upstream connections).
//! - **Per request:** `route` (where a request goes; endpoint pick with
//!   failover), `retry` (the one retry decision), `error` (every answer the
//!   proxy makes itself), `observe` (the one request observer: metrics,
//!   balancer feedback, retry counts), `feedback` (what the balancer
//!   learns from connections and requests), `connect` (the upstream
//!   connector: endpoints as address + identity, mTLS when both sides have
//!   one).
//! - **Transport:** `transport` (a connection, plain TCP or TLS, with its
//!   TLS status), `tls` (the cancel-safe rustls stream).
//! - **Worker state:** `worker` (the per-worker context, in parts:
//!   `Routes`, `Pools`, `Telemetry`, `Detection`), `pool` (HTTP/1 upstream
//!   connections and request scratch), `h2pool`, `stop`, `warn_limit`,
//!   `memory`, `config` (in sections: outbound, inbound, admin, discovery,
//!   tcp, http, http2, balancing), `listen`.
//!
//! Telemetry types are not here: each worker writes metric shards defined in
//! `ringmesh_admin::telemetry` (building their label sets, the TLS status
//! included, on the data path); the engine's part of a scrape is asking every
//! worker for a copy by message (`admin.rs`) and handing the copies to the
//! admin crate's encoder.
#![deny(rust_2018_idioms)]

mod access_log;
mod admin;
pub mod authz;
mod certify;
pub mod config;
mod connect;
mod control;
mod destination;
mod detect;
mod dispatch;
mod error;
mod fd_limit;
mod feedback;
mod grpc;
mod h1forward;
mod h2client;
mod h2guarded;
mod h2pool;
mod hello;
mod http1;
mod http2;
mod identity;
mod inbox;
mod l4;
mod l5d_headers;
pub mod listen;
mod memory;
mod observe;
pub mod orig_dst;
mod outbound;
mod patterns;
mod policy;
mod pool;
mod proxy;
pub mod ratelimit;
mod retry;
mod route;
mod route_filter;
mod run;
mod server_first;
mod stall;
mod stop;
mod stream;
pub mod tap;
pub mod tap_cli;
mod tap_server;
mod tap_wire;
#[cfg(test)]
mod testing;
mod tls;
mod translate;
mod transport;
mod undecided;
mod warn_limit;
mod worker;

/// The control plane's messages as the control core takes them in, for
/// the `control_plane` fuzz target (built with `--cfg fuzzing` only).
#[cfg(fuzzing)]
pub mod fuzzing {
    /// Decodes `data[1..]` as the message `data[0]` picks (a Destination
    /// update, a profile, an inbound server, an outbound policy) and applies it as the
    /// control core would, then uses the result as a worker would.
    pub fn control_plane_message(data: &[u8]) {
        let Some((&which, bytes)) = data.split_first() else {
            return;
        };
        match which % 4 {
            0 => crate::destination::fuzzing::update(bytes),
            1 => crate::destination::fuzzing::profile(bytes),
            2 => crate::policy::fuzzing::server(bytes),
            _ => crate::outbound::fuzzing::policy(bytes),
        }
    }

    /// Decodes `data` as a tap `ObserveRequest`, compiles it as the tap
    /// server would and matches a request with it, as a worker would.
    pub fn tap_observe(data: &[u8]) {
        use prost::Message as _;
        let Ok(req) = linkerd2_proxy_api::tap::ObserveRequest::decode(data) else {
            return;
        };
        let Ok(tap) = crate::tap::Tap::new(&req) else {
            return;
        };
        let labels = [("service".to_string(), "web".to_string())];
        let _ = tap.matcher.matches(&crate::tap::TapRequest {
            source: std::net::SocketAddr::from(([10, 0, 0, 1], 40000)),
            destination: std::net::SocketAddr::from(([10, 0, 0, 2], 8080)),
            method: "GET",
            scheme: "http",
            authority: "web.ns.svc.cluster.local:8080",
            path: "/api/x",
            dst_labels: &labels,
            route_labels: &[("route", "r")],
        });
    }
}

pub use admin::{Hooks, LogLevel};
pub use config::{AccessLogFormat, Config, ConfigError, IoDriver, LogFormat};
pub use proxy::{Proxy, StartError};
/// One worker's counters ([`Proxy::worker_stats`]); the type lives with the
/// other metric types in `ringmesh-admin`.
pub use ringmesh_admin::telemetry::WorkerStats;
pub use run::ActiveDriver;
