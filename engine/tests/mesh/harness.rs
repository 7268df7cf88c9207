//! Two meshed "pods" in network namespaces, each a sidecar proxy with
//! Linkerd's iptables, identity documents and its own fake control plane
//! (`fake_cp.py`), for mutual-TLS interoperability tests. Needs root; fails,
//! never skips, without it or a tool it drives.
//!
//! ```text
//!   netns POD A (10.78.N.1)                     netns POD B (10.78.N.2)
//!   clients (root) ──iptables──▶ :4140 sidecar ═mTLS═▶ :4143 sidecar ──▶ apps
//!   fake_cp 127.0.0.1:8090                      fake_cp 127.0.0.1:8090
//!                         ◀──── veth rmma<N> / rmmb<N> ────▶
//! ```
//!
//! The sidecar of each pod is a parameter ([`Sidecar`]): a binary plus the
//! environment it takes on top of the Linkerd one [`Pod::proxy_env`]
//! builds, so the same harness runs linkerd2-proxy or ringmesh on either
//! side. Everything it starts is killed, and the namespaces deleted, on drop
//! (a panicking test included).
#![allow(dead_code)]

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::TempDir;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The uid every sidecar runs as; Linkerd's iptables let its traffic out.
pub const PROXY_UID: u32 = 2102;
pub const OUTBOUND_PORT: u16 = 4140;
pub const INBOUND_PORT: u16 = 4143;
pub const ADMIN_PORT: u16 = 4191;
pub const CONTROL_PORT: u16 = 4190;
/// Where each pod's fake control plane listens (the proxies speak plaintext
/// gRPC only to a loopback control plane).
pub const CONTROL_PLANE: &str = "127.0.0.1:8090";

const FAKE_CP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mesh/fake_cp.py");
const PYTHON: &str = "/usr/bin/python3";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The real linkerd2-proxy: `$RINGMESH_LINKERD2_PROXY`, else the one in
/// `shared/peers/` beside the repository.
pub fn linkerd2_proxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGMESH_LINKERD2_PROXY") {
        return PathBuf::from(p);
    }
    // shared/ beside the repository (where CI and the workspace keep it),
    // or beside the directory the repository is in.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        repo.join("../shared/peers/linkerd2-proxy"),
        repo.join("../../shared/peers/linkerd2-proxy"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "linkerd2-proxy not found at {} (shared/peers/ beside the repository, or set RINGMESH_LINKERD2_PROXY)",
                candidates[0].display()
            )
        })
}

/// The proxy a pod runs and what it needs beyond [`Pod::proxy_env`].
#[derive(Clone, Debug)]
pub struct Sidecar {
    pub name: &'static str,
    pub bin: PathBuf,
    /// Added to, or overriding, the Linkerd environment.
    pub env: Vec<(String, String)>,
}

impl Sidecar {
    pub fn linkerd2_proxy() -> Self {
        Self {
            name: "linkerd2-proxy",
            bin: linkerd2_proxy_bin(),
            env: Vec::new(),
        }
    }

    /// ringmesh reads the same LINKERD2_PROXY_* variables.
    pub fn ringmesh(driver: &str) -> Self {
        Self {
            name: "ringmesh",
            bin: PathBuf::from(env!("CARGO_BIN_EXE_ringmesh")),
            env: vec![("RINGMESH_IO_DRIVER".into(), driver.into())],
        }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Who a pod is, known before anything runs (the control plane's config
/// is written from it).
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub name: &'static str,
    pub ns: String,
    pub dev: String,
    pub ip: Ipv4Addr,
    /// The pod's identity, e.g. `a.default.serviceaccount.identity.linkerd.cluster.local`.
    pub identity: String,
}

impl PodInfo {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
}

/// What the fake control plane says about one `IP:port` target
/// (docs/MESH-TESTING.md, "Config").
#[derive(Clone, Debug)]
pub struct Destination {
    /// Opaque for discovery (profile, outbound policy, hint) and inbound
    /// policy.
    pub opaque: bool,
    /// The outbound policy's answer: `service` (a balancer resolving the
    /// Service's name), `not-found` (the proxy forwards to the profile's
    /// endpoint, as for a pod IP) or `egress`.
    pub policy: &'static str,
    /// The endpoint's expected server identity; `None`: no mTLS.
    pub tls_identity: Option<String>,
    /// The SNI the client sends, when not the identity itself.
    pub server_name: Option<String>,
    /// The outbound policy's configured HTTP routes, a JSON array as
    /// `fake_cp.py`'s `configured_route` reads them.
    pub http_routes: Option<String>,
}

impl Destination {
    /// As Linkerd's destination controller describes a meshed pod: its
    /// proxy's identity, the H2 (or opaque) hint, and the opaque transport
    /// on the pod's inbound port.
    pub fn meshed(pod: &PodInfo, opaque: bool) -> Self {
        Self {
            opaque,
            policy: "service",
            tls_identity: Some(pod.identity.clone()),
            server_name: None,
            http_routes: None,
        }
    }

    /// The name the policy's backends resolve `pod`'s `port` by (the
    /// fake's Service for an IP target).
    pub fn service_authority(pod: &PodInfo, port: u16) -> String {
        let ip = pod.ip.to_string().replace('.', "-");
        format!("svc-{ip}.default.svc.cluster.local:{port}")
    }
}

/// The fake control plane's JSON config (docs/MESH-TESTING.md).
#[derive(Clone, Default)]
pub struct CpConfig {
    destinations: Vec<String>,
    opaque_ports: Vec<u16>,
    /// Inbound ports with a `Server` and HTTP routes of their own: the
    /// port and its JSON (`fake_cp.py`'s `Inbound.server` reads it).
    inbound_ports: Vec<(u16, String)>,
}

impl CpConfig {
    /// `pod`'s `port`, meshed ([`Destination::meshed`]).
    pub fn with_meshed(self, pod: &PodInfo, port: u16, opaque: bool) -> Self {
        self.with_destination(pod, port, Destination::meshed(pod, opaque))
    }

    /// `pod`'s `port` as `d` describes it; one endpoint, the pod itself.
    pub fn with_destination(mut self, pod: &PodInfo, port: u16, d: Destination) -> Self {
        let hint = if d.opaque { "opaque" } else { "h2" };
        let ip = pod.ip;
        // The transport header rides only inside mesh TLS.
        let sni = d
            .server_name
            .map(|n| format!(r#""server_name": "{n}", "#))
            .unwrap_or_default();
        let identity = d
            .tls_identity
            .as_ref()
            .map(|id| {
                format!(
                    r#""tls_identity": "{id}", {sni}"opaque_transport_inbound_port": {INBOUND_PORT}, "#
                )
            })
            .unwrap_or_default();
        let routes = d
            .http_routes
            .map(|r| format!(r#""http_routes": {r}, "#))
            .unwrap_or_default();
        self.destinations.push(format!(
            r#""{ip}:{port}": {{{routes}"opaque": {opaque}, "policy": "{policy}", "endpoints": [{{"addr": "{ip}", "port": {port}, {identity}"protocol_hint": "{hint}", "labels": {{"pod": "{name}-0"}}}}]}}"#,
            opaque = d.opaque,
            policy = d.policy,
            name = pod.name,
        ));
        if d.opaque {
            self.opaque_ports.push(port);
        }
        self
    }

    /// The inbound `port`'s server as `json` describes it (`"server"`,
    /// `"routes"`, ...: docs/MESH-TESTING.md).
    pub fn with_inbound(mut self, port: u16, json: &str) -> Self {
        self.inbound_ports.push((port, json.to_string()));
        self
    }

    pub fn to_json(&self) -> String {
        let ports: Vec<String> = self
            .opaque_ports
            .iter()
            .map(|p| format!(r#""{p}": {{"protocol": "opaque"}}"#))
            .chain(
                self.inbound_ports
                    .iter()
                    .map(|(p, json)| format!(r#""{p}": {json}"#)),
            )
            .collect();
        format!(
            "{{\"destinations\": {{\n  {}\n}},\n\"inbound\": {{\"ports\": {{{}}}}}}}\n",
            self.destinations.join(",\n  "),
            ports.join(", ")
        )
    }
}

/// A child process with its stdout and stderr lines collected (and echoed
/// to the test's output, which cargo shows when a test fails).
pub struct Proc {
    pub name: String,
    child: RefCell<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: RefCell<Vec<String>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (pipe, tx) in [
            (Box::new(out) as Box<dyn Read + Send>, tx.clone()),
            (Box::new(err), tx),
        ] {
            let name = name.to_string();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("  {name}| {line}");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Self {
            name: name.to_string(),
            child: RefCell::new(child),
            stdin,
            lines,
            seen: RefCell::new(Vec::new()),
        }
    }

    fn drain(&self) {
        let mut seen = self.seen.borrow_mut();
        while let Ok(l) = self.lines.try_recv() {
            seen.push(l);
        }
    }

    /// Waits for a line containing `needle` (also among those already
    /// seen), failing early if the process exits.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Result<String, String> {
        let end = Instant::now() + limit;
        loop {
            self.drain();
            if let Some(l) = self.seen.borrow().iter().find(|l| l.contains(needle)) {
                return Ok(l.clone());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before printing {needle:?}",
                    self.name
                ));
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return Err(format!(
                    "{} did not print {needle:?} within {limit:?}",
                    self.name
                ));
            };
            if let Ok(l) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.seen.borrow_mut().push(l);
            }
        }
    }

    /// Waits until `n` lines containing `needle` have been seen.
    pub fn wait_for_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.count(needle) >= n {
                return true;
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return false;
            };
            if let Ok(l) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.seen.borrow_mut().push(l);
            }
        }
    }

    /// Lines seen so far containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.drain();
        self.seen
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn exited(&self) -> Option<String> {
        match self.child.borrow_mut().try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        self.drain();
        let seen = self.seen.borrow();
        let mut out = format!(
            "--- last {} lines of {} ---\n",
            n.min(seen.len()),
            self.name
        );
        for l in &seen[seen.len().saturating_sub(n)..] {
            let _ = writeln!(out, "{l}");
        }
        out
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&self, grace: Duration) {
        let pid = Pid::from_raw(self.child.borrow().id() as i32);
        if self.exited().is_some() {
            return;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if self.exited().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let mut child = self.child.borrow_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        self.stop(Duration::from_millis(500));
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Root and every tool the harness drives; fails loudly, never skips.
pub fn require_root_and_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the mesh tests need root (network namespaces, iptables, setpriv); CI runs them as root"
    );
    for tool in [
        "ip", "iptables", "setpriv", "tcpdump", "curl", "protoc", "timeout",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed (scripts/install-test-deps.sh installs it)"
        );
    }
    let py = Command::new(PYTHON)
        .args(["-c", "import grpc, google.protobuf, cryptography"])
        .output();
    assert!(
        py.map(|o| o.status.success()).unwrap_or(false),
        "{PYTHON} lacks grpc, protobuf or cryptography (python3-grpcio, python3-protobuf, python3-cryptography: scripts/install-test-deps.sh)"
    );
}

/// Runs `f` on a thread that entered namespace `ns`; sockets it creates
/// stay in that namespace wherever they are used afterwards.
pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(format!("/run/netns/{ns}")).expect("namespace exists");
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// A command run inside `ns`, with a clean environment.
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).env_clear();
    for key in ["PATH", "HOME", "CARGO_HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd
}

/// GET `path` on `addr` inside `ns` (HTTP/1.1, connection close):
/// (status, body).
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_string();
    within(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // One write: linkerd2-proxy decides "HTTP or not" on its first read,
        // and a write! split into pieces ("GET ", path, ...) can arrive as a
        // 4-byte segment, which it takes for not-HTTP and resets.
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The test CA: ECDSA P-256, what the fake control plane signs with and the
/// proxies trust.
pub struct TestCa {
    pub cert_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl TestCa {
    fn write(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "root.linkerd.cluster.local");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            cert_pem: cert.pem(),
            cert_path,
            key_path,
        }
    }
}

/// What Linkerd's identity init container leaves for the proxy: `key.p8`
/// (PKCS#8 DER) and `csr.der` (CN and DNS SAN = the local name), plus a
/// token file; readable by the proxy's uid only.
fn write_identity(dir: &Path, identity: &str) -> (PathBuf, PathBuf) {
    let id_dir = dir.join("identity");
    fs::create_dir_all(&id_dir).unwrap();
    let key = rcgen::KeyPair::generate().expect("pod key");
    let mut params = rcgen::CertificateParams::new(vec![identity.to_string()]).expect("CSR");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity);
    let csr = params.serialize_request(&key).expect("CSR signs");
    fs::write(id_dir.join("key.p8"), key.serialize_der()).unwrap();
    fs::write(id_dir.join("csr.der"), csr.der().as_ref()).unwrap();
    let token = dir.join("token");
    fs::write(&token, format!("token-for-{identity}")).unwrap();
    for p in [
        &id_dir,
        &id_dir.join("key.p8"),
        &id_dir.join("csr.der"),
        &token,
    ] {
        std::os::unix::fs::chown(p, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    }
    fs::set_permissions(&id_dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(id_dir.join("key.p8"), fs::Permissions::from_mode(0o600)).unwrap();
    (id_dir, token)
}

/// A running pod: its fake control plane and its sidecar.
pub struct Pod {
    pub info: PodInfo,
    pub sidecar: Sidecar,
    pub dir: PathBuf,
    // Declared in stop order: the proxy first.
    pub proxy: Proc,
    pub cp: Proc,
}

impl Pod {
    /// The environment Linkerd's injector gives the proxy container
    /// (checked against linkerd2-proxy's linkerd/app/src/env.rs).
    pub fn proxy_env(
        info: &PodInfo,
        ca: &TestCa,
        id_dir: &Path,
        token: &Path,
    ) -> Vec<(String, String)> {
        let workload = format!(r#"{{"ns":"default","pod":"{}-0"}}"#, info.name);
        let log = std::env::var("RINGMESH_MESH_LOG").unwrap_or_else(|_| "warn,linkerd=info".into());
        [
            ("LINKERD2_PROXY_LOG", log.as_str()),
            ("LINKERD2_PROXY_LOG_FORMAT", "plain"),
            ("LINKERD2_PROXY_CORES", "1"),
            ("LINKERD2_PROXY_IDENTITY_DIR", id_dir.to_str().unwrap()),
            (
                "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
                ca.cert_pem.as_str(),
            ),
            ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", info.identity.as_str()),
            (
                "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
                token.to_str().unwrap(),
            ),
            // On loopback: plaintext, no _SVC_NAME.
            ("LINKERD2_PROXY_IDENTITY_SVC_ADDR", CONTROL_PLANE),
            ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", CONTROL_PLANE),
            ("LINKERD2_PROXY_DESTINATION_CONTEXT", &workload),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", CONTROL_PLANE),
            ("LINKERD2_PROXY_POLICY_WORKLOAD", &workload),
            ("LINKERD2_PROXY_DESTINATION_PROFILE_NETWORKS", "10.0.0.0/8"),
            ("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", "10.0.0.0/8"),
            (
                "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
                "all-unauthenticated",
            ),
            ("LINKERD2_PROXY_INBOUND_IPS", &info.ip.to_string()),
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:4140"),
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "0.0.0.0:4143"),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0:4191"),
            ("LINKERD2_PROXY_CONTROL_LISTEN_ADDR", "0.0.0.0:4190"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The proxy's admin endpoint, from inside the pod.
    pub fn admin(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(
            &self.info.ns,
            SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
            path,
        )
    }

    pub fn metrics(&self) -> String {
        match self.admin("/metrics") {
            Ok((200, body)) => body,
            other => panic!(
                "{} /metrics: {other:?}\n{}",
                self.info.name,
                self.proxy.tail(40)
            ),
        }
    }

    pub fn logs(&self) -> String {
        format!("{}{}", self.proxy.tail(40), self.cp.tail(20))
    }
}

/// Two pods, A (client side) and B (server side), joined by a veth pair.
pub struct Mesh {
    pub a: Pod,
    pub b: Pod,
    pub ca: TestCa,
    pub dir: PathBuf,
    pub n: u32,
    config: PathBuf,
    outage: PathBuf,
    // Dropped after the pods, so their processes are gone first.
    _nets: [Netns; 2],
    _dir: TempDir,
}

/// A mesh to start: the two sidecars and extra fake_cp flags.
pub struct MeshBuilder {
    a: Sidecar,
    b: Sidecar,
    cp_args: Vec<String>,
}

impl MeshBuilder {
    /// Flags for both pods' fake control planes (e.g. `--cert-lifetime 3`,
    /// `--identity-fail-first 2`).
    pub fn with_cp_args(mut self, args: &[&str]) -> Self {
        self.cp_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets up the namespaces, iptables, CA and identities, writes the
    /// control plane's config from `config(a, b)`, starts both control
    /// planes and sidecars, and waits (bounded) until both proxies are ready
    /// (identity certified).
    pub fn start(self, config: impl FnOnce(&PodInfo, &PodInfo) -> CpConfig) -> Mesh {
        let Self { a, b, cp_args } = self;
        require_root_and_tools();
        let pid = std::process::id();
        let n = (pid % 200 + NEXT.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
        let info = |name: &'static str, host: u8| PodInfo {
            name,
            ns: format!("rm-mesh-{name}-{pid}-{n}"),
            dev: format!("rmm{name}{n}"),
            ip: Ipv4Addr::new(10, 78, n as u8, host),
            identity: format!("{name}.default.serviceaccount.identity.linkerd.cluster.local"),
        };
        let (ia, ib) = (info("a", 1), info("b", 2));

        let temp = TempDir::new(&format!("mesh-{n}"));
        let dir = temp.path().to_path_buf();
        // The proxies (uid 2102) walk into their pod directories.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();

        sh(&["ip", "netns", "add", &ia.ns]);
        let net_a = Netns(ia.ns.clone());
        sh(&["ip", "netns", "add", &ib.ns]);
        let net_b = Netns(ib.ns.clone());
        sh(&[
            "ip", "link", "add", &ia.dev, "netns", &ia.ns, "type", "veth", "peer", "name", &ib.dev,
            "netns", &ib.ns,
        ]);
        for pod in [&ia, &ib] {
            let ip = |args: &[&str]| {
                let mut v = vec!["ip", "-n", pod.ns.as_str()];
                v.extend_from_slice(args);
                sh(&v);
            };
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", &format!("{}/24", pod.ip), "dev", &pod.dev]);
            ip(&["link", "set", &pod.dev, "up"]);
            linkerd_iptables(&pod.ns);
        }
        for pod in [&ia, &ib] {
            let up = crate::common::eventually(Duration::from_secs(10), || {
                let out = Command::new("ip")
                    .args(["-n", &pod.ns, "addr", "show", "dev", &pod.dev])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                text.contains("state UP") || text.contains(",UP,LOWER_UP")
            });
            assert!(up, "veth {} in {} never came up", pod.dev, pod.ns);
        }

        let ca = TestCa::write(&dir);
        let outage = dir.join("identity-outage");
        let config_path = dir.join("cp.json");
        let cp_config = config(&ia, &ib);
        fs::write(&config_path, cp_config.to_json()).unwrap();

        let start_pod = |info: PodInfo, sidecar: Sidecar| -> Pod {
            let pod_dir = dir.join(info.name);
            fs::create_dir_all(&pod_dir).unwrap();
            fs::set_permissions(&pod_dir, fs::Permissions::from_mode(0o755)).unwrap();
            let (id_dir, token) = write_identity(&pod_dir, &info.identity);

            let mut cmd = in_ns(&info.ns, PYTHON);
            cmd.arg(FAKE_CP)
                .args(["--listen", CONTROL_PLANE, "--config"])
                .arg(&config_path)
                .arg("--ca-cert")
                .arg(&ca.cert_path)
                .arg("--ca-key")
                .arg(&ca.key_path)
                .arg("--identity-fail-file")
                .arg(&outage)
                .args(&cp_args)
                .env("PYTHONDONTWRITEBYTECODE", "1");
            let cp = Proc::spawn(&format!("{}/fake_cp", info.name), cmd);

            let mut cmd = in_ns(&info.ns, "setpriv");
            cmd.args([
                "--reuid",
                &PROXY_UID.to_string(),
                "--regid",
                &PROXY_UID.to_string(),
                "--clear-groups",
            ])
            .arg(&sidecar.bin)
            .env_clear()
            .envs(Mesh::env(&info, &ca, &id_dir, &token, &sidecar));
            // The proxy starts after its control plane listens, as in a pod
            // where the control plane is up before the workload.
            if let Err(e) = cp.wait_for("ready ", Duration::from_secs(20)) {
                panic!("{e}\n{}", cp.tail(40));
            }
            let proxy = Proc::spawn(&format!("{}/{}", info.name, sidecar.name), cmd);
            Pod {
                info,
                sidecar,
                dir: pod_dir,
                proxy,
                cp,
            }
        };
        let pod_a = start_pod(ia, a);
        let pod_b = start_pod(ib, b);
        let mesh = Mesh {
            a: pod_a,
            b: pod_b,
            ca,
            dir,
            n,
            config: config_path,
            outage,
            _nets: [net_a, net_b],
            _dir: temp,
        };
        for pod in [&mesh.a, &mesh.b] {
            mesh.wait_ready(pod, Duration::from_secs(20));
        }
        mesh
    }
}

impl Mesh {
    pub fn builder(a: Sidecar, b: Sidecar) -> MeshBuilder {
        MeshBuilder {
            a,
            b,
            cp_args: Vec::new(),
        }
    }

    /// [`MeshBuilder::start`] with the default control planes.
    pub fn start(
        a: Sidecar,
        b: Sidecar,
        config: impl FnOnce(&PodInfo, &PodInfo) -> CpConfig,
    ) -> Self {
        Self::builder(a, b).start(config)
    }

    /// While on, both control planes answer Certify with UNAVAILABLE.
    pub fn identity_outage(&self, on: bool) {
        if on {
            fs::write(&self.outage, b"").unwrap();
        } else {
            let _ = fs::remove_file(&self.outage);
        }
    }

    fn env(
        info: &PodInfo,
        ca: &TestCa,
        id_dir: &Path,
        token: &Path,
        sidecar: &Sidecar,
    ) -> Vec<(String, String)> {
        let mut env = Pod::proxy_env(info, ca, id_dir, token);
        for (k, v) in &sidecar.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Polls the admin `/ready` until 200: the proxy has its certificate.
    pub fn wait_ready(&self, pod: &Pod, limit: Duration) {
        let end = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < end {
            if let Some(status) = pod.proxy.exited() {
                panic!(
                    "{} exited ({status}) before it was ready\n{}",
                    pod.proxy.name,
                    self.logs()
                );
            }
            match pod.admin("/ready") {
                Ok((200, _)) => return,
                other => last = format!("{other:?}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} not ready within {limit:?} (last /ready: {last})\n{}",
            pod.proxy.name,
            self.logs()
        );
    }

    /// Replaces the control plane's config and waits until both control
    /// planes have loaded it.
    pub fn update_config(&self, config: &CpConfig) {
        let before = [
            self.a.cp.count("config: loaded"),
            self.b.cp.count("config: loaded"),
        ];
        let tmp = self.config.with_extension("tmp");
        fs::write(&tmp, config.to_json()).unwrap();
        fs::rename(&tmp, &self.config).unwrap();
        for (pod, n) in [(&self.a, before[0]), (&self.b, before[1])] {
            let ok = crate::common::eventually(Duration::from_secs(5), || {
                pod.cp.count("config: loaded") > n
            });
            assert!(
                ok,
                "{} did not reload its config\n{}",
                pod.cp.name,
                pod.cp.tail(20)
            );
        }
    }

    /// Every process's log tail, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}{}", self.a.logs(), self.b.logs())
    }

    /// Runs `program args` inside `pod` as root (so its outbound traffic is
    /// redirected to the sidecar), bounded by `timeout`.
    pub fn run_in(&self, pod: &Pod, limit: Duration, program: &str, args: &[&str]) -> Output {
        let mut cmd = in_ns(&pod.info.ns, "timeout");
        cmd.args([
            "--kill-after=2",
            &format!("{}", limit.as_secs().max(1)),
            program,
        ])
        .args(args)
        .stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", pod.info.ns))
    }
}

/// Linkerd's proxy-init rules in `ns` (nat table): inbound TCP to 4143
/// except the proxy's own admin and control ports; outbound TCP from any
/// uid but the proxy's, and not over loopback, to 4140.
fn linkerd_iptables(ns: &str) {
    let ipt = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat"];
        v.extend_from_slice(args);
        sh(&v);
    };
    let (inb, out, admin) = (
        INBOUND_PORT.to_string(),
        OUTBOUND_PORT.to_string(),
        format!("{CONTROL_PORT},{ADMIN_PORT}"),
    );
    ipt(&["-N", "PROXY_INIT_REDIRECT"]);
    ipt(&[
        "-A",
        "PROXY_INIT_REDIRECT",
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
        &admin,
        "-j",
        "RETURN",
    ]);
    ipt(&[
        "-A",
        "PROXY_INIT_REDIRECT",
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &inb,
    ]);
    ipt(&["-A", "PREROUTING", "-j", "PROXY_INIT_REDIRECT"]);
    ipt(&["-N", "PROXY_INIT_OUTPUT"]);
    ipt(&[
        "-A",
        "PROXY_INIT_OUTPUT",
        "-m",
        "owner",
        "--uid-owner",
        &PROXY_UID.to_string(),
        "-j",
        "RETURN",
    ]);
    ipt(&["-A", "PROXY_INIT_OUTPUT", "-o", "lo", "-j", "RETURN"]);
    ipt(&[
        "-A",
        "PROXY_INIT_OUTPUT",
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &out,
    ]);
    ipt(&["-A", "OUTPUT", "-j", "PROXY_INIT_OUTPUT"]);
}

/// A tcpdump of every TCP packet on a pod's veth, as pcap bytes.
pub struct Capture {
    proc: Proc,
    bytes: Arc<AtomicUsize>,
    data: mpsc::Receiver<Vec<u8>>,
}

impl Capture {
    /// Starts capturing on `pod`'s veth; returns once tcpdump listens.
    pub fn start(pod: &PodInfo) -> Self {
        let mut cmd = in_ns(&pod.ns, "tcpdump");
        // --immediate-mode: packets reach tcpdump as they come, not in blocks
        // flushed every second (which lost the last ones at SIGINT); -U: it
        // writes each one out at once; -Z root: no privilege drop.
        cmd.args([
            "-i",
            &pod.dev,
            "--immediate-mode",
            // 128 MiB of kernel buffer (32 MiB still dropped 77 packets once
            // in a CI run): the 4 MiB gRPC burst overran the 2 MiB
            // default on a loaded machine, and a dropped packet could hide a
            // plaintext one.
            "-B",
            "131072",
            "-s",
            "0",
            "-U",
            "-n",
            "-Z",
            "root",
            "-w",
            "-",
            "tcp",
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("tcpdump starts");
        let mut out = child.stdout.take().unwrap();
        let bytes = Arc::new(AtomicUsize::new(0));
        let (tx, data) = mpsc::channel();
        let counter = bytes.clone();
        thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                counter.store(all.len(), Ordering::Relaxed);
            }
            let _ = tx.send(all);
        });
        // Re-wrap to collect stderr (tcpdump says "listening on ..." there).
        let (ltx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("  tcpdump| {line}");
                if ltx.send(line).is_err() {
                    break;
                }
            }
        });
        let proc = Proc {
            name: "tcpdump".into(),
            child: RefCell::new(child),
            stdin: None,
            lines,
            seen: RefCell::new(Vec::new()),
        };
        if let Err(e) = proc.wait_for("listening on", Duration::from_secs(10)) {
            panic!("{e}\n{}", proc.tail(10));
        }
        Self { proc, bytes, data }
    }

    /// Stops the capture once it has seen no new packet for 300 ms (at most
    /// 3 s), and returns the pcap bytes.
    pub fn finish(self) -> Vec<u8> {
        let end = Instant::now() + Duration::from_secs(3);
        let mut last = (self.bytes.load(Ordering::Relaxed), Instant::now());
        while Instant::now() < end {
            let now = self.bytes.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= Duration::from_millis(300) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let pid = Pid::from_raw(self.proc.child.borrow().id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let data = self
            .data
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("tcpdump did not stop\n{}", self.proc.tail(10)));
        // "N packets dropped by kernel", printed as it exits.
        let stats = self
            .proc
            .wait_for("dropped by kernel", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.proc.tail(10)));
        assert!(
            stats.trim_start().starts_with("0 packets"),
            "tcpdump lost packets ({stats}): the capture cannot show what crossed"
        );
        assert!(
            data.len() >= 24,
            "tcpdump wrote no pcap header\n{}",
            self.proc.tail(10)
        );
        data
    }
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// TLS ClientHello records in `bytes`: a handshake record (0x16, version
/// 3.x) whose first message is a ClientHello (type 1).
pub fn client_hellos(bytes: &[u8]) -> usize {
    bytes
        .windows(6)
        .filter(|w| w[0] == 0x16 && w[1] == 0x03 && w[2] <= 0x04 && w[5] == 0x01)
        .count()
}

/// The Prometheus lines of `metric` whose labels contain every fragment.
pub fn metric_lines<'a>(text: &'a str, metric: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .collect()
}
