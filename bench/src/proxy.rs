//! The proxy under test: the real `ringmesh` binary as a child process, on
//! free loopback ports, killed when dropped.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long the proxy may take to answer `GET /ready` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The workspace root, from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// `$CARGO_TARGET_DIR` (relative to the workspace root when relative), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

/// `$RINGMESH_BIN` if set, else builds the binary with
/// `cargo build --release --locked -p ringmesh-engine --bin ringmesh` and
/// returns `<target>/release/ringmesh`.
pub fn locate_binary() -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("RINGMESH_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("RINGMESH_BIN={} is not a file", bin.display()),
            ));
        }
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    eprintln!("bench: building ringmesh (cargo build --release --locked -p ringmesh-engine --bin ringmesh)");
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "ringmesh-engine",
            "--bin",
            "ringmesh",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", Path::new(&cargo).display()),
            )
        })?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "`cargo build --release -p ringmesh-engine --bin ringmesh` failed ({status}) in {}",
            root.display()
        )));
    }
    let bin = target_dir().join("release").join("ringmesh");
    if !bin.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the build succeeded but {} is missing (set RINGMESH_BIN to the binary)",
                bin.display()
            ),
        ));
    }
    Ok(bin)
}

/// A loopback port nobody is listening on right now (bound, read, closed).
/// The proxy binds it a moment later; another process could take it in
/// between, which on a bench machine is unlikely and fails loudly.
pub fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub bin: PathBuf,
    /// `RINGMESH_TCP_FORWARD` targets; each gets a listener on a free port.
    pub forward_targets: Vec<SocketAddr>,
    /// `RINGMESH_OUTBOUND_OPAQUE_PORTS`: forward target ports relayed as
    /// bytes, without protocol detection.
    pub opaque_ports: Vec<u16>,
    /// `LINKERD2_PROXY_CORES`.
    pub cores: usize,
    /// CPUs the child is started on (its affinity mask; ringmesh pins its
    /// workers inside it). `None`: inherit.
    pub cpus: Option<Vec<usize>>,
    /// Extra environment, e.g. `RINGMESH_IO_DRIVER`. Other `RINGMESH_*` and
    /// `LINKERD2_PROXY_*` variables of the caller are not passed on.
    pub extra_env: Vec<(String, String)>,
}

/// Set while a proxy child runs, so the panic hook can kill it even if a
/// panic does not unwind to [`Proxy`]'s `Drop`: cargo builds bench targets
/// with unwinding today, but the workspace's release profile says
/// `panic = "abort"` and a build that honoured it would skip `Drop`.
static CHILD_PID: AtomicI32 = AtomicI32::new(0);

/// Installs a panic hook that kills the running proxy child, then runs the
/// default hook. Call once at start.
pub fn kill_child_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let pid = CHILD_PID.swap(0, Ordering::AcqRel);
        if pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        default(info);
    }));
}

/// A running ringmesh.
pub struct Proxy {
    child: Child,
    admin: SocketAddr,
    forwards: Vec<SocketAddr>,
}

impl Proxy {
    /// Starts the child and waits until its admin server answers `/ready`.
    pub fn start(cfg: &ProxyConfig) -> io::Result<Self> {
        let admin = free_port()?;
        let outbound = free_port()?;
        let inbound = free_port()?;
        let forwards = cfg
            .forward_targets
            .iter()
            .map(|_| free_port())
            .collect::<io::Result<Vec<_>>>()?;
        let forward_env = forwards
            .iter()
            .zip(&cfg.forward_targets)
            .map(|(listen, target)| format!("{listen}={target}"))
            .collect::<Vec<_>>()
            .join(",");
        let opaque = cfg
            .opaque_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");

        let mut cmd = Command::new(&cfg.bin);
        // Only the configuration below: a stray variable in the caller's
        // environment (a discovery file, a forward) would change what is
        // measured.
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("RINGMESH_") || key_str.starts_with("LINKERD2_PROXY_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("RINGMESH_TCP_FORWARD", &forward_env)
            .env("LINKERD2_PROXY_CORES", cfg.cores.to_string())
            .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", admin.to_string())
            .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", outbound.to_string())
            .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", inbound.to_string())
            .env("LINKERD2_PROXY_LOG", "warn")
            .envs(cfg.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if !opaque.is_empty() {
            cmd.env("RINGMESH_OUTBOUND_OPAQUE_PORTS", &opaque);
        }

        // The child inherits this thread's affinity at fork: switch to the
        // proxy's CPUs for the spawn, then back.
        let child = match &cfg.cpus {
            Some(cpus) => {
                let before = crate::pin::allowed_cpus()?;
                crate::pin::pin_current_thread(cpus)?;
                let spawned = cmd.spawn();
                crate::pin::pin_current_thread(&before)?;
                spawned
            }
            None => cmd.spawn(),
        }
        .map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", cfg.bin.display()))
        })?;
        CHILD_PID.store(i32::try_from(child.id()).unwrap_or(0), Ordering::Release);
        let mut proxy = Self {
            child,
            admin,
            forwards,
        };
        proxy.wait_ready()?;
        Ok(proxy)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "ringmesh exited before it was ready ({status}); its stderr is above"
                )));
            }
            match http_get_status(self.admin, "/ready") {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("/ready answered {code}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "ringmesh not ready on {} after {READY_TIMEOUT:?}: {last}",
                self.admin
            ),
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The listener of the `i`-th forward target.
    pub fn forward_addr(&self, i: usize) -> SocketAddr {
        self.forwards[i]
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        CHILD_PID.store(0, Ordering::Release);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot `GET` with `Connection: close`; the status code.
pub fn http_get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let line = resp.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))
}
