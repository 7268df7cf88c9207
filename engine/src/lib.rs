//! ringmesh-engine: the process skeleton and the L4 data path.
//!
//! Owns start-up (configuration, binding, driver choice), the worker threads
//! (one monoio event loop pinned per core, each with its own listeners,
//! balancer replicas and buffers), the control core (a monoio runtime on a
//! thread of its own running discovery's resolvers, the worker events queue
//! and the admin server; see `control.rs`), graceful shutdown, and the
//! opaque TCP proxy paths (outbound, inbound, explicit forwards).
//!
//! Workers share nothing but the snapshot channel: every other piece of state
//! a worker touches is `Rc`/`Cell` owned by that worker's thread.
#![deny(rust_2018_idioms)]

mod admin;
pub mod config;
mod control;
mod detect;
mod http1;
mod http2;
mod inbox;
mod l4;
pub mod listen;
mod memory;
mod metrics;
pub mod orig_dst;
mod pool;
mod proxy;
mod route;
mod server_first;
mod stop;
mod translate;
mod undecided;
mod warn_limit;
mod worker;

pub use admin::{Hooks, LogLevel};
pub use config::{Config, ConfigError, IoDriver};
pub use inbox::WorkerStats;
pub use proxy::{ActiveDriver, Proxy, StartError};

/// Entry points for `ringmesh-bench`'s micro-benchmarks into worker-private
/// pieces. Not an API: nothing else should use it.
#[doc(hidden)]
pub mod bench_hooks {
    use std::net::SocketAddr;

    use crate::metrics::{
        ConnMeter, Direction, HttpKey, HttpShard, Peer, ResponseClass, TcpKey, TcpShard,
    };

    /// A worker's metric shards with one label set in use.
    pub struct MetricsRecorder {
        http: HttpShard,
        tcp: TcpShard,
        key: HttpKey,
        meter: ConnMeter,
    }

    impl Default for MetricsRecorder {
        fn default() -> Self {
            let target = SocketAddr::from(([127, 0, 0, 1], 8080));
            let mut tcp = TcpShard::default();
            let meter = tcp.open(TcpKey {
                direction: Direction::Outbound,
                peer: Peer::Dst,
                target,
                authority: None,
                dst_labels: None,
            });
            Self {
                http: HttpShard::default(),
                tcp,
                key: HttpKey {
                    direction: Direction::Outbound,
                    authority: None,
                    target: Some(target),
                    dst_labels: None,
                },
                meter,
            }
        }
    }

    impl MetricsRecorder {
        /// What each proxied HTTP response costs its worker's shard.
        pub fn record_response(&mut self, status: u16, latency_ms: u64) {
            self.http
                .record(&self.key, ResponseClass::http(status, None), latency_ms);
        }

        /// What each read or write costs a connection's meter.
        pub fn count_bytes(&self, n: usize) {
            self.meter.read(n);
        }

        /// A scrape of this shard: copy, merge, encode; the text's length.
        pub fn scrape(&self) -> usize {
            let mut out = String::new();
            let mut tcp = crate::metrics::TcpSnapshot::default();
            tcp.merge(&self.tcp.snapshot());
            let mut http = HttpShard::default();
            http.merge(&self.http);
            http.encode(&mut out);
            tcp.encode(&mut out);
            out.len()
        }
    }
}
