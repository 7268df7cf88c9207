//! The fake Linkerd control plane (`tests/mesh/fake_cp.py`: real grpcio,
//! the linkerd2-proxy-api protos) as a test fixture on loopback: its config
//! file (rewritten to push updates), its fault directory, its output.
//! Needs Debian's python3 with grpcio and protobuf, and protoc.

use std::cell::RefCell;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use super::TempDir;

const FAKE_CP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mesh/fake_cp.py");
const PYTHON: &str = "/usr/bin/python3";

/// The fake control plane: its config file, fault directory and output.
pub struct Cp {
    /// Removed on drop, after the process is stopped.
    pub dir: TempDir,
    pub addr: SocketAddr,
    /// Its mutual-TLS listener, when started with one.
    pub tls_addr: Option<SocketAddr>,
    /// Arguments given to every start (the TLS listener's).
    args: Vec<String>,
    child: Option<Child>,
    /// Its output lines, as the reader threads pass them on.
    lines: (Sender<String>, Receiver<String>),
    log: RefCell<Vec<String>>,
}

impl Cp {
    /// Started with an empty config (`{}`).
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, Vec::new())
    }

    /// Also serving over mutual TLS on loopback with this certificate and
    /// key (PEM files), clients' certificates verified against `ca`.
    pub fn start_tls(tag: &str, cert: &Path, key: &Path, ca: &Path) -> Self {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let args = vec![
            "--tls-listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            path(cert),
            "--tls-key".into(),
            path(key),
            "--tls-ca".into(),
            path(ca),
        ];
        Self::start_with(tag, args)
    }

    fn start_with(tag: &str, args: Vec<String>) -> Self {
        let dir = TempDir::new(&format!("dst-{tag}"));
        fs::create_dir_all(dir.join("faults")).unwrap();
        let mut cp = Self {
            dir,
            addr: "127.0.0.1:0".parse().unwrap(),
            tls_addr: None,
            args,
            child: None,
            lines: channel(),
            log: RefCell::default(),
        };
        cp.write("{}");
        cp.spawn();
        cp
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("cp.json")
    }

    /// Starts the process (again, on the same port after a stop).
    pub fn spawn(&mut self) {
        let mut child = Command::new(PYTHON)
            .arg(FAKE_CP)
            .args(["--listen", &self.addr.to_string()])
            .arg("--config")
            .arg(self.config())
            .arg("--fault-dir")
            .arg(self.dir.join("faults"))
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PYTHON} {FAKE_CP}: {e}"));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            line.clear();
            let n = out.read_line(&mut line).unwrap();
            assert!(
                n > 0 && Instant::now() < deadline,
                "fake_cp ended before it was ready (python3-grpcio, python3-protobuf, protoc: scripts/install-test-deps.sh)"
            );
            if let Some(addr) = line.trim().strip_prefix("tls-ready ") {
                self.tls_addr = Some(addr.parse().unwrap());
            }
            if let Some(addr) = line.trim().strip_prefix("ready ") {
                self.addr = addr.parse().unwrap();
                break;
            }
        }
        let tx = self.lines.0.clone();
        thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Replaces the config (renamed into place; the fake notices within
    /// 100 ms and sends open streams the difference).
    pub fn write(&self, json: &str) {
        let tmp = self.dir.join("cp.json.tmp");
        fs::write(&tmp, json).unwrap();
        fs::rename(&tmp, self.config()).unwrap();
    }

    /// [`Cp::write`], then waits (at most 5 s) until the fake has loaded
    /// it, so what it answers next follows it.
    pub fn write_loaded(&self, json: &str) {
        let before = self.log_count("config: loaded");
        self.write(json);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.log_count("config: loaded") == before {
            assert!(
                Instant::now() < deadline,
                "the fake control plane did not load its config:\n{}",
                self.tail()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn fault(&self, name: &str) -> PathBuf {
        let p = self.dir.join("faults").join(name);
        fs::write(&p, "").unwrap();
        p
    }

    pub fn log_count(&self, needle: &str) -> usize {
        let mut log = self.log.borrow_mut();
        log.extend(self.lines.1.try_iter());
        log.iter().filter(|l| l.contains(needle)).count()
    }

    pub fn tail(&self) -> String {
        let mut log = self.log.borrow_mut();
        log.extend(self.lines.1.try_iter());
        log[log.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        self.stop();
    }
}
