//! The end-to-end scenario table. A scenario names a workload (which
//! backend, which client) and its load shape; adding one is a
//! [`Workload`] (variant or parameters) and a new entry in [`all`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::backend::Backend;
use crate::http2::{Call, Http2Client};
use crate::load::{Client, Connect};

/// What a scenario's connections speak, and so which backend serves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Fixed-size messages echoed back (opaque TCP through the proxy).
    TcpEcho { message: usize },
    /// `GET <path>` on a keep-alive connection, `body` bytes back
    /// (layer-7 HTTP/1 proxying).
    Http1 { path: &'static str, body: usize },
    /// Masked text frames echoed back after an HTTP/1.1 upgrade (the proxy
    /// forwards the upgrade, then tunnels).
    WebSocket { message: usize },
    /// `GET <path>` on h2c connections with up to `streams` requests in
    /// flight on each, `body` bytes back (the proxy detects HTTP/2 from the
    /// preface and multiplexes the streams onto its upstream connections).
    Http2 {
        path: &'static str,
        body: usize,
        streams: usize,
    },
    /// gRPC unary calls with a `message`-byte message echoed back, up to
    /// `streams` in flight per connection.
    GrpcUnary { message: usize, streams: usize },
}

/// The backend a workload needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    TcpEcho,
    Http1,
    WebSocket,
    Http2,
}

impl BackendKind {
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::TcpEcho => "tcp-echo",
            BackendKind::Http1 => "http1",
            BackendKind::WebSocket => "websocket",
            BackendKind::Http2 => "http2",
        }
    }

    /// Starts this backend on a free loopback port.
    pub fn start(&self) -> io::Result<Backend> {
        let name = self.name();
        match self {
            BackendKind::TcpEcho => Backend::spawn(name, crate::tcp_echo::serve),
            BackendKind::Http1 => Backend::spawn(name, crate::http1::serve),
            BackendKind::WebSocket => Backend::spawn(name, crate::websocket::serve),
            BackendKind::Http2 => Backend::spawn_server(name, crate::http2::serve),
        }
    }
}

impl Workload {
    pub fn backend(&self) -> BackendKind {
        match self {
            Workload::TcpEcho { .. } => BackendKind::TcpEcho,
            Workload::Http1 { .. } => BackendKind::Http1,
            Workload::WebSocket { .. } => BackendKind::WebSocket,
            Workload::Http2 { .. } | Workload::GrpcUnary { .. } => BackendKind::Http2,
        }
    }

    /// Requests in flight per connection, at most.
    pub fn streams(&self) -> usize {
        match *self {
            Workload::Http2 { streams, .. } | Workload::GrpcUnary { streams, .. } => streams,
            _ => 1,
        }
    }

    /// The client factory.
    pub fn connector(&self) -> Connect {
        match *self {
            Workload::TcpEcho { message } => Arc::new(move |addr: SocketAddr| {
                crate::tcp_echo::EchoClient::connect(addr, message)
                    .map(|c| Box::new(c) as Box<dyn Client>)
            }),
            Workload::Http1 { path, body } => Arc::new(move |addr: SocketAddr| {
                crate::http1::Http1Client::connect(addr, path, body)
                    .map(|c| Box::new(c) as Box<dyn Client>)
            }),
            Workload::WebSocket { message } => Arc::new(move |addr: SocketAddr| {
                crate::websocket::WebSocketClient::connect(addr, message)
                    .map(|c| Box::new(c) as Box<dyn Client>)
            }),
            Workload::Http2 {
                path,
                body,
                streams,
            } => Arc::new(move |addr: SocketAddr| {
                Http2Client::connect(addr, Call::Get { path, body }, streams)
                    .map(|c| Box::new(c) as Box<dyn Client>)
            }),
            Workload::GrpcUnary { message, streams } => Arc::new(move |addr: SocketAddr| {
                Http2Client::connect(addr, Call::Unary { message }, streams)
                    .map(|c| Box::new(c) as Box<dyn Client>)
            }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    /// Stable name, used in the outputs and as the command-line filter.
    pub name: &'static str,
    pub workload: Workload,
    /// Open-loop mode: total requests per second and connections.
    pub fixed_rate: f64,
    pub fixed_connections: usize,
    /// Closed-loop (maximum throughput) connections. HTTP/2 workloads keep
    /// [`Workload::streams`] requests in flight on each, in both modes.
    pub max_connections: usize,
}

/// Every scenario, in report order. Rates are modest on purpose: the fixed
/// rate shows latency at a load both paths carry easily on 2 cores; the
/// maximum-throughput mode shows where they saturate. 32 connections for
/// small messages, as the README's wrk comparisons use (`-c32`): with fewer
/// the proxy sees one event per wake-up and its CPU per request rises.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "tcp-echo-64B",
            workload: Workload::TcpEcho { message: 64 },
            fixed_rate: 2000.0,
            fixed_connections: 4,
            max_connections: 32,
        },
        Scenario {
            name: "http1-small",
            workload: Workload::Http1 {
                path: "/",
                body: crate::http1::SMALL_BODY.len(),
            },
            fixed_rate: 2000.0,
            fixed_connections: 4,
            max_connections: 32,
        },
        Scenario {
            name: "http1-1MiB",
            workload: Workload::Http1 {
                path: "/1m",
                body: crate::http1::LARGE_BODY_LEN,
            },
            fixed_rate: 100.0,
            fixed_connections: 2,
            max_connections: 2,
        },
        Scenario {
            name: "websocket-echo-32B",
            workload: Workload::WebSocket { message: 32 },
            fixed_rate: 2000.0,
            fixed_connections: 4,
            max_connections: 32,
        },
        // 4 connections x 16 streams, as peers.sh's h2load runs
        // (`-c4 -m16`).
        Scenario {
            name: "http2-many-streams",
            workload: Workload::Http2 {
                path: "/",
                body: crate::http1::SMALL_BODY.len(),
                streams: 16,
            },
            fixed_rate: 2000.0,
            fixed_connections: 4,
            max_connections: 4,
        },
        Scenario {
            name: "grpc-unary",
            workload: Workload::GrpcUnary {
                message: 64,
                streams: 8,
            },
            fixed_rate: 2000.0,
            fixed_connections: 4,
            max_connections: 4,
        },
    ]
}
