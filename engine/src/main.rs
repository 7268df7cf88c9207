//! The `ringmesh` binary: configuration from the environment, logging,
//! signals, and the [`Proxy`] lifecycle.

use std::process::ExitCode;

use ringmesh_engine::{Config, Proxy};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits' EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// sysexits' EX_UNAVAILABLE: start-up failed for another reason.
const EXIT_START: u8 = 69;

fn main() -> ExitCode {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "ringmesh: invalid configuration ({} problems):",
                e.problems.len()
            );
            for p in &e.problems {
                eprintln!("  - {p}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // Register before starting so an early signal is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringmesh: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let proxy = match Proxy::start(cfg) {
        Ok(p) => p,
        Err(e @ ringmesh_engine::StartError::Discovery(_)) => {
            eprintln!("ringmesh: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("ringmesh: cannot start: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down gracefully");
    }
    proxy.shutdown();
    proxy.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
