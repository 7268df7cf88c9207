//! The `ringmesh` binary: configuration from the environment, logging,
//! signals, and the [`Proxy`] lifecycle; `ringmesh tap …` watches a
//! running proxy's requests instead (`tap_cli.rs`).

use std::process::ExitCode;

use std::sync::Arc;

use arc_swap::ArcSwap;

use ringmesh_engine::{Config, Hooks, LogFormat, LogLevel, Proxy};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits' EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// sysexits' EX_UNAVAILABLE: start-up failed for another reason.
const EXIT_START: u8 = 69;

const USAGE: &str = "\
usage: ringmesh               run the proxy, configured by the environment
       ringmesh tap [...]     watch a running proxy's requests (ringmesh tap --help)
       ringmesh --version

Settings are linkerd2-proxy's environment variables (LINKERD2_PROXY_*) and
ringmesh's own (RINGMESH_*): docs/CONFIGURATION.md. An invalid setting is
reported with every other one and exits 64.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("tap") => return ExitCode::from(ringmesh_engine::tap_cli::main(&args[1..])),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("ringmesh {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        // The proxy takes no arguments (its settings are the environment's):
        // anything else is a mistake, not a reason to start on defaults.
        Some(other) => {
            eprintln!("ringmesh: unknown argument {other:?}\n\n{USAGE}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            let n = e.problems.len();
            let s = if n == 1 { "" } else { "s" };
            eprintln!("ringmesh: invalid configuration ({n} problem{s}):");
            for p in &e.problems {
                eprintln!("  - {p}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The filter sits behind a reload layer so `PUT /proxy-log-level` can
    // change it on every thread at run time.
    let (filter, reload) = tracing_subscriber::reload::Layer::new(
        filter_builder().parse_lossy(with_own_targets(&cfg.log)),
    );
    let plain = (cfg.log_format == LogFormat::Plain).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_thread_names(true)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    // As linkerd2-proxy's: the spans as a list, not the current one again.
    let json = (cfg.log_format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_span_list(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_thread_names(true)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
        .init();
    let hooks = Hooks {
        log_level: Some(Arc::new(LogFilter {
            reload,
            current: ArcSwap::from_pointee(cfg.log.clone()),
        })),
        // The same drain as SIGTERM: the signal loop below handles it.
        shutdown: Some(Arc::new(|| {
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
        })),
    };

    // Register before starting so an early signal is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringmesh: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    // A signal while starting (discovery may wait on a slow nameserver)
    // ends the process at once; after, the drain below handles it.
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (signalled, signal_rx) = std::sync::mpsc::channel();
    {
        let started = started.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if !started.load(std::sync::atomic::Ordering::SeqCst) {
                    eprintln!("ringmesh: signal {sig} while starting; exiting");
                    std::process::exit(128 + sig);
                }
                if signalled.send(sig).is_err() {
                    return;
                }
            }
        });
    }
    let proxy = match Proxy::start_with(cfg, hooks) {
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
    started.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Ok(sig) = signal_rx.recv() {
        tracing::info!(signal = sig, "shutting down gracefully");
    }
    proxy.shutdown();
    proxy.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Log filters as linkerd2-proxy builds them: what no directive names logs
/// at `warn` (an empty filter too; `EnvFilter`'s own default is `error`),
/// and a field's value is matched as it is written, not as a regular
/// expression (so a filter selects the same lines as there, and a
/// `PUT /proxy-log-level` cannot make the proxy compile one).
fn filter_builder() -> tracing_subscriber::filter::Builder {
    EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
        .with_regex(false)
}

/// linkerd2-proxy's own log targets name ringmesh's too: a directive for
/// `linkerd` or `linkerd2_proxy` (its injector sets `warn,linkerd=info,...`)
/// is followed by the same for `ringmesh`, whose events are targeted by
/// its crates' paths.
fn with_own_targets(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len() * 2);
    // Directives are split at the commas outside spans' `[...]`.
    let (mut depth, mut start) = (0i32, 0);
    let mut directives = Vec::new();
    for (i, c) in filter.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth <= 0 => {
                directives.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    directives.push(&filter[start..]);
    for (i, d) in directives.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(d);
        let t = d.trim_start();
        let end = t.find(['[', '=']).unwrap_or(t.len());
        let target = &t[..end];
        // (A bare level names no target: `info` stays as it is.)
        if target == "linkerd" || target == "linkerd2_proxy" {
            out.push_str(",ringmesh");
            out.push_str(&t[end..]);
        }
    }
    out
}

/// `/proxy-log-level`: the current filter string and the reload handle.
struct LogFilter {
    reload: reload::Handle<EnvFilter, Registry>,
    current: ArcSwap<String>,
}

impl LogLevel for LogFilter {
    fn current(&self) -> String {
        self.current.load().as_ref().clone()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        if !filter.is_ascii() {
            return Err("a log filter must be ASCII".into());
        }
        let new = filter_builder()
            .parse(with_own_targets(filter))
            .map_err(|e| format!("invalid log filter: {e}"))?;
        self.reload.reload(new).map_err(|e| e.to_string())?;
        self.current.store(Arc::new(filter.to_string()));
        tracing::info!(filter, "log level changed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::filter::LevelFilter;

    /// linkerd2-proxy's targets reach ringmesh's events.
    #[test]
    fn linkerd_targets_name_ringmeshs() {
        use super::with_own_targets as w;
        assert_eq!(
            w("warn,linkerd=info,hickory=error,[{headers}]=off,[{request}]=off"),
            "warn,linkerd=info,ringmesh=info,hickory=error,[{headers}]=off,[{request}]=off"
        );
        assert_eq!(
            w("linkerd2_proxy=debug"),
            "linkerd2_proxy=debug,ringmesh=debug"
        );
        assert_eq!(
            w("linkerd[conn{a=1,b=2}]=trace"),
            "linkerd[conn{a=1,b=2}]=trace,ringmesh[conn{a=1,b=2}]=trace"
        );
        assert_eq!(w("info,linkerd_app=debug"), "info,linkerd_app=debug");
        assert_eq!(w(""), "");
        let f = super::filter_builder()
            .parse(w("warn,linkerd=info"))
            .unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::INFO));
    }

    /// An empty filter, or one naming targets only, leaves the rest at
    /// `warn`, as linkerd2-proxy's (`EnvFilter`'s own default is `error`).
    #[test]
    fn what_no_directive_names_logs_at_warn() {
        let empty = super::filter_builder().parse("").unwrap();
        assert_eq!(empty.max_level_hint(), Some(LevelFilter::WARN));
        let debug = super::filter_builder().parse("debug").unwrap();
        assert_eq!(debug.max_level_hint(), Some(LevelFilter::DEBUG));
        assert!(super::filter_builder().parse("ringmesh=[").is_err());
    }

    /// Field values are literal, as linkerd2-proxy's: one that is no
    /// regular expression is a filter like any other (and one that is
    /// would not be compiled: a large one took minutes).
    #[test]
    fn field_values_are_not_regular_expressions() {
        assert!(super::filter_builder().parse("[{f=(x}]=trace").is_ok());
    }
}
