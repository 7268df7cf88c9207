//! The `ringmesh` binary as a child process, with its log lines collected.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");

/// The binary with a clean environment: no outbound/inbound listeners unless
/// the test sets them, and info logs without colour.
pub fn ringmesh(driver: &str, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("LINKERD2_PROXY_LOG", "info")
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "")
        .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "")
        .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "")
        .env("LINKERD2_PROXY_CORES", "2")
        .env("RINGMESH_IO_DRIVER", driver)
        .env("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "100ms")
        .env("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "100ms")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// A running binary whose stderr lines are collected in the background.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  ringmesh| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts the binary `cmd` builds for a free loopback address (a new
    /// one each try) and waits until it is ready. The address is probed
    /// free and then bound by the child; should another process take it
    /// in between (an ephemeral port given to some connection, or the same
    /// port probed again for another of the child's listeners), the child
    /// cannot start and is started again on another, up to 5 times.
    pub fn spawn_ready(
        mut cmd: impl FnMut(std::net::SocketAddr) -> Command,
    ) -> (Self, std::net::SocketAddr) {
        for _ in 0..5 {
            let addr = super::closed_port();
            let mut p = Self::spawn(cmd(addr));
            if p.wait_for("ready", Duration::from_secs(10)) {
                return (p, addr);
            }
            // Taken by another process, or handed out again to the
            // caller's own probe for another listener (a collision the
            // configuration check names).
            let mine = addr.to_string();
            let taken = p
                .seen
                .iter()
                .any(|l| l.contains("already in use") || l.contains(&mine));
            assert!(taken, "proxy never became ready:\n{}", p.seen.join("\n"));
        }
        panic!("the ports tried were all taken");
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
