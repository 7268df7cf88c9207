//! Shared pieces of the engine's integration tests: real backends on
//! loopback (std threads, blocking sockets) and a proxy started in-process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_engine::{Config, IoDriver, Proxy};

pub mod cp;
pub mod dns;
pub mod h2;
pub mod http;
pub mod lb;
pub mod proc;
pub mod raw_h2;
pub mod tap;
#[path = "../../src/testing/temp_dir.rs"]
mod temp_dir;

pub use temp_dir::TempDir;

/// Runs a test body once per io driver. CI has io_uring: a missing
/// io_uring fails the uring variant loudly instead of skipping it.
#[macro_export]
macro_rules! both_drivers {
    ($name:ident, $body:path) => {
        mod $name {
            #[test]
            fn uring() {
                $body(ringmesh_engine::IoDriver::Uring);
            }
            #[test]
            fn epoll() {
                $body(ringmesh_engine::IoDriver::Epoll);
            }
        }
    };
}

pub fn driver_name(d: IoDriver) -> &'static str {
    match d {
        IoDriver::Uring => "uring",
        IoDriver::Epoll => "epoll",
        IoDriver::Auto => "auto",
    }
}

/// A proxy with no outbound/inbound listeners (they would collide between
/// parallel tests) plus the given variables.
pub fn start_proxy(driver: IoDriver, vars: &[(&str, &str)]) -> Proxy {
    let mut src: BTreeMap<&str, &str> = BTreeMap::new();
    src.insert("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "");
    src.insert("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "");
    src.insert("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "");
    src.insert("LINKERD2_PROXY_CORES", "2");
    src.insert("RINGMESH_IO_DRIVER", driver_name(driver));
    // Several backends here speak first; don't make every test wait out
    // the 10s detect timeout (detection has its own tests).
    src.insert("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "100ms");
    src.insert("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "100ms");
    for (k, v) in vars {
        src.insert(k, v);
    }
    let cfg = Config::from_source(&src).expect("valid test configuration");
    Proxy::start(cfg).expect("proxy starts")
}

/// Writes a static discovery file (`d.toml` in `dir`) with one service
/// `name` over `endpoints`, plus `extra` TOML lines (weights, protocol,
/// ...), and returns its path. Written to a new file renamed into place,
/// as config management does, so calling it again with the same `dir`
/// updates a running proxy's discovery atomically.
pub fn service_file(dir: &TempDir, name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let (tmp, file) = (dir.join("d.toml.tmp"), dir.join("d.toml"));
    std::fs::write(
        &tmp,
        format!(
            "[[service]]\nname = \"{name}\"\nendpoints = [{}]\n{extra}",
            list.join(", ")
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    file.to_str().unwrap().to_string()
}

/// A backend that accepts until dropped, running `handler` per connection
/// on its own thread.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start<F>(handler: F) -> Self
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Self::on(listen("127.0.0.1:0".parse().unwrap()), handler)
    }

    /// Serves on a listener the test bound itself (e.g. inside a netns).
    pub fn on<F>(listener: TcpListener, handler: F) -> Self
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let flag = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(s) = conn {
                    // Test servers write in pieces; without this, Nagle plus
                    // delayed ACKs add 40ms to exchanges.
                    let _ = s.set_nodelay(true);
                    let h = handler.clone();
                    thread::spawn(move || h(s));
                }
            }
        });
        Self { addr, stop }
    }

    /// An HTTP/1 origin answering every request head it reads (bodies
    /// are not read) with the same `answer` bytes, on a kept connection.
    pub fn answering(answer: impl Into<Vec<u8>>) -> Self {
        let answer = answer.into();
        Self::start(move |s| {
            let mut w = s.try_clone().unwrap();
            let mut r = io::BufReader::new(s);
            let mut line = String::new();
            while io::BufRead::read_line(&mut r, &mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" && w.write_all(&answer).is_err() {
                    return;
                }
                line.clear();
            }
        })
    }

    /// Echoes every byte back; passes a FIN on once everything is echoed.
    pub fn echo() -> Self {
        Self::echo_on(listen("127.0.0.1:0".parse().unwrap()))
    }

    /// As [`Backend::echo`], on a listener the test bound itself.
    pub fn echo_on(listener: TcpListener) -> Self {
        Self::on(listener, |mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// Sends `name` and a newline first, then echoes.
    pub fn named(name: &'static str) -> Self {
        Self::start(move |mut s| {
            if s.write_all(format!("{name}\n").as_bytes()).is_err() {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A listening socket with a deep backlog, so bursts of connects from the
/// proxy are never dropped by the test's own backend.
pub fn listen(addr: SocketAddr) -> TcpListener {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(4096).unwrap();
    s.into()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads the first line a `Backend::named` sends.
pub fn read_name(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => out.push(b[0]),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading backend name: {e}"),
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads from `s` until a whole HTTP/1 head has arrived (a raw backend's
/// view of a request): the bytes read, or `None` if the connection ended
/// or failed first.
#[allow(dead_code)] // (not every test binary has a raw backend)
pub fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some(seen)
}

/// A port on 127.0.0.1 where nothing listens (bound then released).
pub fn closed_port() -> SocketAddr {
    let [a] = closed_ports();
    a
}

/// A port that refuses connections (RST to a SYN) for as long as the
/// returned socket lives: bound, never listening, so no other test can
/// take it meanwhile (as it could a [`closed_port`]).
pub fn refusing_port() -> (socket2::Socket, SocketAddr) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    (sock, addr)
}

/// `N` distinct closed ports: bound together, so the kernel cannot hand
/// out the same one twice (two `closed_port()` calls can).
pub fn closed_ports<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

/// Connections whose protocol is not decided yet, on every worker.
pub fn undecided(proxy: &Proxy) -> u64 {
    proxy
        .worker_stats()
        .iter()
        .map(|s| s.detect_undecided)
        .sum()
}

/// Polls `f` every 20ms until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A deterministic byte stream (xorshift), so each side can check the
/// other's bytes without storing them.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// FNV-1a, enough to compare two byte streams.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// linkerd2-proxy-api's `proto/` directory (the version in Cargo.lock,
/// in cargo's registry sources), for protoc.
pub fn proto_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"linkerd2-proxy-api\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("linkerd2-proxy-api in Cargo.lock");
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let crate_dir = format!("linkerd2-proxy-api-{version}");
    std::fs::read_dir(home.join("registry/src"))
        .expect("cargo's registry sources")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(&crate_dir).join("proto"))
        .find(|p| p.join("identity.proto").is_file())
        .unwrap_or_else(|| panic!("{crate_dir}/proto under {}", home.display()))
}

/// Linkerd's transport header for `port`, session protocol HTTP/1, then
/// `extra` protobuf bytes (fields a test adds).
#[allow(dead_code)]
pub fn transport_header(port: u16, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![0x08];
    let mut p = u32::from(port);
    while p >= 0x80 {
        body.push((p as u8) | 0x80);
        p >>= 7;
    }
    body.push(p as u8);
    body.extend_from_slice(&[0x1a, 0x02, 0x0a, 0x00]); // session_protocol { http1 {} }
    body.extend_from_slice(extra);
    let mut out = b"transport.l5d.io/v1\r\n\r\n".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// `n` requests for `/hello` (with the `extra` header lines) one after
/// another on one keep-alive connection, each answered 200 and read whole.
pub fn keep_alive_gets(addr: SocketAddr, n: u64, extra: &str) {
    let s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    // One write per request (`write!` would make several small ones).
    let request = format!("GET /hello HTTP/1.1\r\nhost: web.test\r\n{extra}\r\n");
    for _ in 0..n {
        w.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("200"), "{line}");
        let mut len = 0;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
    }
}
