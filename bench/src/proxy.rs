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

/// Set while a proxy child runs, so the panic hook can kill it even when a
/// panic aborts instead of unwinding (the release profile uses
/// `panic = "abort"`, where `Drop` would not run).
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
    clock_ticks: u64,
    cpus: Option<Vec<usize>>,
}

/// CPU accounting at one moment, for differences over a measured window.
#[derive(Clone, Debug)]
pub struct CpuSample {
    /// The proxy's utime + stime.
    pub proxy: Duration,
    /// Non-idle time of the CPUs the proxy is pinned to, whoever ran there
    /// (`None` when it is not pinned).
    pub proxy_cpus_busy: Option<Duration>,
}

/// What happened between two [`CpuSample`]s.
#[derive(Clone, Copy, Debug)]
pub struct CpuUsage {
    /// The proxy's own CPU time.
    pub proxy: Duration,
    /// Time the proxy's CPUs spent on anything else (other processes,
    /// interrupts): noise in the proxy's latency on a shared machine.
    pub others_on_proxy_cpus: Option<Duration>,
}

impl CpuSample {
    pub fn usage_since(&self, earlier: &CpuSample) -> CpuUsage {
        let proxy = self.proxy.saturating_sub(earlier.proxy);
        CpuUsage {
            proxy,
            others_on_proxy_cpus: self
                .proxy_cpus_busy
                .zip(earlier.proxy_cpus_busy)
                .map(|(b, a)| b.saturating_sub(a).saturating_sub(proxy)),
        }
    }
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
        let clock_ticks = clock_ticks()?;

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
            clock_ticks,
            cpus: cfg.cpus.clone(),
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

    /// The child's user + system CPU time so far (all threads), from
    /// `/proc/<pid>/stat` (clock-tick resolution, usually 10 ms).
    pub fn cpu_time(&self) -> io::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected /proc/<pid>/stat format",
            )
        })?;
        Ok(self.ticks_to_duration(ticks))
    }
}

impl Proxy {
    /// The proxy's CPU time, and its CPUs' busy time from `/proc/stat`.
    pub fn cpu_sample(&self) -> io::Result<CpuSample> {
        let proxy = self.cpu_time()?;
        let proxy_cpus_busy = match &self.cpus {
            Some(cpus) => {
                let stat = std::fs::read_to_string("/proc/stat")?;
                let ticks = cpus
                    .iter()
                    .map(|&c| parse_cpu_busy_ticks(&stat, c))
                    .sum::<Option<u64>>()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/stat format")
                    })?;
                Some(self.ticks_to_duration(ticks))
            }
            None => None,
        };
        Ok(CpuSample {
            proxy,
            proxy_cpus_busy,
        })
    }

    fn ticks_to_duration(&self, ticks: u64) -> Duration {
        Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / self.clock_ticks)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        CHILD_PID.store(0, Ordering::Release);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc/<pid>/stat`'s CPU times.
pub fn clock_ticks() -> io::Result<u64> {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => Ok(t as u64),
        Ok(_) => Err(io::Error::other("sysconf(_SC_CLK_TCK) has no value")),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Non-idle ticks of one CPU in `/proc/stat`: user, nice, system, irq,
/// softirq and steal (guest time is already inside user).
pub fn parse_cpu_busy_ticks(stat: &str, cpu: usize) -> Option<u64> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| f.get(i).copied();
    Some(get(0)? + get(1)? + get(2)? + get(5)? + get(6)? + get(7).unwrap_or(0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_last_parenthesis() {
        let stat = "1234 (ring mesh) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn proc_stat_busy_ticks_skip_idle_and_iowait() {
        let stat = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 1 2 3 1000 50 4 5 6 0 0\ncpu1 7 0 0 9 0 0 0 0 0 0\nintr 1\n";
        assert_eq!(parse_cpu_busy_ticks(stat, 0), Some(1 + 2 + 3 + 4 + 5 + 6));
        assert_eq!(parse_cpu_busy_ticks(stat, 1), Some(7));
        assert_eq!(parse_cpu_busy_ticks(stat, 2), None);
        let real = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(parse_cpu_busy_ticks(&real, 0).is_some());
    }

    #[test]
    fn own_process_cpu_time_parses() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_cpu_ticks(&stat).is_some());
        assert!(clock_ticks().unwrap() > 0);
    }
}
