//! Transparent mode: iptables REDIRECT in a network namespace the test
//! creates, as a sidecar's init container sets it up. Needs root (CI runs as
//! root); without it the test fails, it does not skip.
//!
//! Topology, one pair per test:
//!
//! ```text
//!   netns APP (proxy as uid 2102, client, app server)  ==veth==  netns PEER (remote server, remote client)
//!   10.77.N.1/24, fd77:N::1/64                                   10.77.N.2/24, fd77:N::2/64
//! ```
//! APP's nat table: OUTPUT tcp from uids other than 2102 → 4140 (outbound);
//! PREROUTING tcp arriving on the veth → 4143 (inbound).

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sched::{setns, CloneFlags};

const BIN: &str = env!("CARGO_BIN_EXE_ringmesh");
const PROXY_UID: &str = "2102";

static NEXT: AtomicU32 = AtomicU32::new(0);

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

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the transparent-mode tests need root (network namespaces, iptables); CI runs them as root"
    );
    for tool in ["ip", "iptables", "ip6tables", "setpriv"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is not installed (.ci/run installs iproute2, iptables, util-linux)"
        );
    }
}

/// Two namespaces joined by a veth pair, with the REDIRECT rules in APP.
struct Netns {
    app: String,
    peer: String,
    n: u32,
}

impl Netns {
    fn new() -> Self {
        require_root();
        let n = std::process::id() % 200 + NEXT.fetch_add(1, Ordering::Relaxed);
        let n = n % 250 + 1;
        let app = format!("rm-app-{}-{n}", std::process::id());
        let peer = format!("rm-peer-{}-{n}", std::process::id());
        let this = Self { app, peer, n };
        let (app, peer) = (this.app.as_str(), this.peer.as_str());
        let (va, vp) = (format!("rma{n}"), format!("rmp{n}"));
        sh(&["ip", "netns", "add", app]);
        sh(&["ip", "netns", "add", peer]);
        sh(&[
            "ip", "link", "add", &va, "netns", app, "type", "veth", "peer", "name", &vp, "netns",
            peer,
        ]);
        for (ns, dev, last) in [(app, &va, 1), (peer, &vp, 2)] {
            let x = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", ns];
                v.extend_from_slice(args);
                sh(&v);
            };
            x(&["ip", "link", "set", "lo", "up"]);
            x(&[
                "ip",
                "addr",
                "add",
                &format!("10.77.{n}.{last}/24"),
                "dev",
                dev,
            ]);
            x(&[
                "ip",
                "addr",
                "add",
                &format!("fd77:{n}::{last}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            x(&["ip", "link", "set", dev, "up"]);
        }
        // Wait until both ends are up and the IPv6 addresses are usable,
        // or the first SYN is dropped and costs a 1s retransmit.
        for (ns, dev) in [(app, &va), (peer, &vp)] {
            let ready = eventually(Duration::from_secs(10), || {
                let out = Command::new("ip")
                    .args(["-n", ns, "addr", "show", "dev", dev])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                text.contains("state UP") && !text.contains("tentative")
            });
            assert!(ready, "veth {dev} in {ns} never came up");
        }
        for ipt in ["iptables", "ip6tables"] {
            let lo = if ipt == "iptables" {
                "127.0.0.0/8"
            } else {
                "::1/128"
            };
            let x = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", app, ipt, "-w", "-t", "nat"];
                v.extend_from_slice(args);
                sh(&v);
            };
            x(&[
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "!",
                "-d",
                lo,
                "-m",
                "owner",
                "!",
                "--uid-owner",
                PROXY_UID,
                "-j",
                "REDIRECT",
                "--to-ports",
                "4140",
            ]);
            x(&[
                "-A",
                "PREROUTING",
                "-i",
                &va,
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                "4143",
            ]);
        }
        this
    }

    fn ip(&self, host: u8, v6: bool) -> IpAddr {
        if v6 {
            format!("fd77:{}::{host}", self.n).parse().unwrap()
        } else {
            format!("10.77.{}.{host}", self.n).parse().unwrap()
        }
    }

    /// Runs `f` on a thread that has entered namespace `ns`; sockets it
    /// creates stay in that namespace.
    fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(format!("/run/netns/{ns}")).unwrap();
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.app])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.peer])
            .status();
    }
}

/// A server that tells who connected to it, then echoes.
fn whoami_server(listener: TcpListener, name: &'static str) -> Backend {
    Backend::on(listener, move |mut s| {
        let peer = s.peer_addr().unwrap();
        let local = s.local_addr().unwrap();
        if s.write_all(format!("{name} at {local} from {}\n", peer.ip()).as_bytes())
            .is_err()
        {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

fn hello(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let line = read_name(s);
    s.write_all(b"ping\n").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping\n");
    line
}

/// A proxy running in a network namespace (its name kept).
struct ProxyProcess(Child, String);

impl Drop for ProxyProcess {
    /// Kills it, and waits (at most 5 s) until its ports (IPv4) can be
    /// bound again: with io_uring the kernel tears a killed process's
    /// rings down after the process is gone, and an accept still queued
    /// on a listener keeps it open until then, so a proxy started at
    /// once in the same namespace could find the port taken.
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let ns = self.1.clone();
        Netns::within(&ns, || {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            let free = || {
                ["127.0.0.1:4191", "127.0.0.1:4140", "0.0.0.0:4143"]
                    .iter()
                    .all(|a| TcpListener::bind(a).is_ok())
            };
            while !free() && std::time::Instant::now() < until {
                thread::sleep(Duration::from_millis(20));
            }
        });
    }
}

fn start_proxy_in(ns: &str, driver: &str, v6: bool, discovery: &str) -> ProxyProcess {
    start_proxy_with(ns, driver, v6, discovery, &[])
}

/// [`start_proxy_in`] with more environment (set after, so it can
/// override the listeners).
fn start_proxy_with(
    ns: &str,
    driver: &str,
    v6: bool,
    discovery: &str,
    extra: &[(&str, &str)],
) -> ProxyProcess {
    let (out, inb) = if v6 {
        ("[::1]:4140", "[::]:4143")
    } else {
        ("127.0.0.1:4140", "0.0.0.0:4143")
    };
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            BIN,
        ])
        .env_clear()
        .env("LINKERD2_PROXY_LOG", "info")
        .env("LINKERD2_PROXY_CORES", "2")
        .env("RINGMESH_IO_DRIVER", driver)
        .env("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "100ms")
        .env("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "100ms")
        .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", out)
        .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", inb)
        .env("RINGMESH_DISCOVERY_STATIC", discovery)
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  ringmesh| {line}");
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = end
            .checked_duration_since(Instant::now())
            .expect("proxy never became ready");
        let line = rx
            .recv_timeout(left)
            .expect("proxy exited before it was ready");
        if line.contains("ready") {
            break;
        }
    }
    ProxyProcess(child, ns.to_string())
}

fn transparent(driver: &str, v6: bool) {
    let net = Netns::new();
    let (app_ip, peer_ip) = (net.ip(1, v6), net.ip(2, v6));

    // The remote service lives in PEER on port 8080; the local app in APP on 9090.
    let remote = {
        let a = SocketAddr::new(peer_ip, 8080);
        Netns::within(&net.peer, move || TcpListener::bind(a).unwrap())
    };
    let _remote = whoami_server(remote, "remote");
    let app = {
        let a = SocketAddr::new(app_ip, 9090);
        Netns::within(&net.app, move || TcpListener::bind(a).unwrap())
    };
    let _app = whoami_server(app, "app");

    // A discovered service addressed by ip:port that nothing listens on:
    // reaching it proves the proxy routed the connection.
    let dir = TempDir::new(&format!("netns-{}", net.n));
    let file = dir.join("discovery.toml");
    let virt = SocketAddr::new(peer_ip, 8081);
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"{virt}\"\nendpoints = [\"{}\"]\n",
            SocketAddr::new(peer_ip, 8080)
        ),
    )
    .unwrap();
    // setpriv'd proxy must read it.
    sh(&["chmod", "-R", "a+rX", dir.path().to_str().unwrap()]);

    let proxy = start_proxy_in(&net.app, driver, v6, file.to_str().unwrap());

    // Outbound: an app in APP dials the remote; iptables sends it to 4140;
    // the proxy reads SO_ORIGINAL_DST and connects there.
    let direct = SocketAddr::new(peer_ip, 8080);
    let line = Netns::within(&net.app, move || {
        hello(&mut TcpStream::connect(direct).unwrap())
    });
    assert!(line.starts_with(&format!("remote at {direct}")), "{line}");
    let line = Netns::within(&net.app, move || {
        hello(&mut TcpStream::connect(virt).unwrap())
    });
    assert!(
        line.starts_with(&format!("remote at {direct}")),
        "discovered service not balanced: {line}"
    );

    // Inbound: a client in PEER dials the app; PREROUTING sends it to 4143;
    // the proxy connects to the original destination from inside APP, so the
    // app sees the connection coming from its own address, not PEER's.
    let app_addr = SocketAddr::new(app_ip, 9090);
    let line = Netns::within(&net.peer, move || {
        hello(&mut TcpStream::connect(app_addr).unwrap())
    });
    assert_eq!(line, format!("app at {app_addr} from {app_ip}"));

    // Without the proxy the redirected connections are refused: traffic
    // really went through it.
    // (The killed process's sockets may outlive it briefly while the kernel
    // tears down its io_uring instance, hence the retries.)
    drop(proxy);
    let refused = eventually(Duration::from_secs(5), || {
        Netns::within(&net.app, move || {
            TcpStream::connect_timeout(&direct, Duration::from_secs(1)).is_err()
        })
    });
    assert!(
        refused,
        "outbound connection succeeded without the proxy: not redirected"
    );
}

#[test]
fn transparent_ipv4_uring() {
    transparent("uring", false);
}

#[test]
fn transparent_ipv4_epoll() {
    transparent("epoll", false);
}

#[test]
fn transparent_ipv6_uring() {
    transparent("uring", true);
}

#[test]
fn transparent_ipv6_epoll() {
    transparent("epoll", true);
}

/// The socket settings Linkerd's injector writes for a dual-stack pod:
/// both loopbacks as outbound listeners
/// (`LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS`), `[::]` for the inbound and
/// admin listeners (IPv4 clients arrive there too, as IPv4-mapped
/// addresses: before, `[::]` was IPv6-only and every redirected IPv4
/// connection and IPv4 probe was refused), the pod's addresses as the only
/// inbound destinations (`LINKERD2_PROXY_INBOUND_IPS`), and keepalive on
/// the connections the proxy makes
/// (`LINKERD2_PROXY_INBOUND_CONNECT_KEEPALIVE`).
fn linkerd_socket_settings(driver: &str) {
    let net = Netns::new();
    let (app4, app6, peer4, peer6) = (
        net.ip(1, false),
        net.ip(1, true),
        net.ip(2, false),
        net.ip(2, true),
    );
    // A second address on APP's veth, not the pod's: what a relay through
    // the inbound side would be asked to reach.
    let other: IpAddr = format!("10.77.{}.3", net.n).parse().unwrap();
    sh(&[
        "ip",
        "-n",
        &net.app,
        "addr",
        "add",
        &format!("{other}/24"),
        "dev",
        &format!("rma{}", net.n),
    ]);
    let mut keep = Vec::new();
    for a in [SocketAddr::new(peer4, 8080), SocketAddr::new(peer6, 8080)] {
        let l = Netns::within(&net.peer, move || TcpListener::bind(a).unwrap());
        keep.push(whoami_server(l, "remote"));
    }
    for a in [
        SocketAddr::new(app4, 9090),
        SocketAddr::new(app6, 9090),
        SocketAddr::new(other, 9090),
    ] {
        let l = Netns::within(&net.app, move || TcpListener::bind(a).unwrap());
        keep.push(whoami_server(l, "app"));
    }
    let dir = TempDir::new(&format!("netns-sock-{}", net.n));
    let file = dir.join("discovery.toml");
    std::fs::write(&file, "empty = true\n").unwrap();
    sh(&["chmod", "-R", "a+rX", dir.path().to_str().unwrap()]);
    let inbound_ips = format!("{app4},{app6}");
    let _proxy = start_proxy_with(
        &net.app,
        driver,
        false,
        file.to_str().unwrap(),
        &[
            (
                "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDRS",
                "127.0.0.1:4140,[::1]:4140",
            ),
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "[::]:4143"),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "[::]:4191"),
            ("LINKERD2_PROXY_INBOUND_IPS", &inbound_ips),
            ("LINKERD2_PROXY_INBOUND_CONNECT_KEEPALIVE", "7s"),
            ("LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE", "11s"),
        ],
    );

    // Inbound over IPv6 to the dual-stack listener.
    let app6_addr = SocketAddr::new(app6, 9090);
    let line = Netns::within(&net.peer, move || {
        hello(&mut TcpStream::connect(app6_addr).unwrap())
    });
    assert_eq!(line, format!("app at {app6_addr} from {app6}"));
    // The admin server over IPv4 loopback: answered, and as loopback
    // (`/env.json` is for this host only: 403 to any other client).
    let env_json = Netns::within(&net.app, || {
        let mut s = TcpStream::connect("127.0.0.1:4191").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /env.json?LINKERD2_PROXY_CORES HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    assert!(
        env_json.starts_with("HTTP/1.1 200")
            && env_json.contains("{\"LINKERD2_PROXY_CORES\":\"2\"}"),
        "{env_json}"
    );

    // Outbound over both families: each is redirected to its loopback's
    // listener (the IPv6 one exists only through _ADDRS).
    for dst in [SocketAddr::new(peer4, 8080), SocketAddr::new(peer6, 8080)] {
        let line = Netns::within(&net.app, move || {
            hello(&mut TcpStream::connect(dst).unwrap())
        });
        assert!(line.starts_with(&format!("remote at {dst}")), "{line}");
    }

    // Inbound to the pod's address: served; the proxy's connection to the
    // application has keepalive on with the configured idle time, and the
    // accepted one the accept side's.
    let app_addr = SocketAddr::new(app4, 9090);
    let mut held = Netns::within(&net.peer, move || {
        let mut s = TcpStream::connect(app_addr).unwrap();
        assert_eq!(hello(&mut s), format!("app at {app_addr} from {app4}"));
        s
    });
    let ss = |filter: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.app,
                "ss",
                "-tnoH",
                "state",
                "established",
            ])
            .args(filter.split(' '))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // `timer:(keepalive,6.9sec,0)` once the connection is idle: the time
    // left is at most the idle time set.
    let keepalive_left = |line: &str| -> Option<f64> {
        let t = line.split("timer:(keepalive,").nth(1)?.split(',').next()?;
        eprintln!("keepalive timer: {t}");
        // iproute2 writes `6.996ms` meaning seconds (its "sec" unit
        // printed as "ms" by some versions), or `1min2sec`.
        let num: String = t
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        num.parse::<f64>().ok().filter(|_| !t.contains("min"))
    };
    // (A retransmission or delayed-ACK timer shows instead until the last
    // bytes are acknowledged.)
    let mut seen = (String::new(), String::new());
    let timers = eventually(Duration::from_secs(5), || {
        seen = (ss(&format!("dst {app_addr}")), ss("sport = :4143"));
        matches!(
            (keepalive_left(&seen.0), keepalive_left(&seen.1)),
            (Some(up), Some(acc)) if up > 0.0 && up <= 7.0 && acc > 7.0 && acc <= 11.0
        )
    });
    assert!(
        timers,
        "expected keepalive timers of at most 7s to the app and 7-11s on the accepted connection: {seen:?}"
    );
    held.write_all(b"x").unwrap();

    // Inbound to an address of the node that is not the pod's: redirected
    // to the proxy like any other, and closed there, never relayed.
    let not_pod = SocketAddr::new(other, 9090);
    let got = Netns::within(&net.peer, move || {
        let mut s = TcpStream::connect(not_pod).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        s.read(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    match got {
        Ok(s) => assert!(s.is_empty(), "a connection to {not_pod} was relayed: {s:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn linkerd_socket_settings_uring() {
    linkerd_socket_settings("uring");
}

#[test]
fn linkerd_socket_settings_epoll() {
    linkerd_socket_settings("epoll");
}

/// An HTTP/1 server answering each request with its name and whether the
/// request carried `l5d-dst-override`.
fn http_whoami(listener: TcpListener, name: &'static str) -> Backend {
    Backend::on(listener, move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some(head) = common::http::head_lines(&mut r) {
            let saw = head.contains("l5d-dst-override:");
            let body = format!("{name} override-seen={saw}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if w.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// One request on a new connection to `to` (redirected to the outbound
/// listener), with `extra` header lines; the response's body.
fn get(to: SocketAddr, extra: &str) -> String {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {to}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

/// Ingress mode on a redirected connection (an ingress controller's pod):
/// a request with `l5d-dst-override` goes to the service it names rather
/// than to the connection's original destination, without the header;
/// one without it goes to the original destination.
fn ingress_mode(driver: &str) {
    let net = Netns::new();
    let peer_ip = net.ip(2, false);
    let (orig, svc) = (
        SocketAddr::new(peer_ip, 8080),
        SocketAddr::new(peer_ip, 8082),
    );
    let orig_l = Netns::within(&net.peer, move || TcpListener::bind(orig).unwrap());
    let svc_l = Netns::within(&net.peer, move || TcpListener::bind(svc).unwrap());
    let _orig = http_whoami(orig_l, "orig");
    let _svc = http_whoami(svc_l, "web");
    let dir = TempDir::new(&format!("netns-ingress-{}", net.n));
    let file = dir.join("discovery.toml");
    std::fs::write(
        &file,
        format!("[[service]]\nname = \"web.ns.svc.cluster.local:80\"\nendpoints = [\"{svc}\"]\n"),
    )
    .unwrap();
    sh(&["chmod", "-R", "a+rX", dir.path().to_str().unwrap()]);
    let proxy = start_proxy_with(
        &net.app,
        driver,
        false,
        file.to_str().unwrap(),
        &[("LINKERD2_PROXY_INGRESS_MODE", "true")],
    );
    let (with, without) = Netns::within(&net.app, move || {
        (
            get(orig, "l5d-dst-override: web.ns.svc.cluster.local:80\r\n"),
            get(orig, ""),
        )
    });
    assert_eq!(with, "web override-seen=false");
    assert_eq!(without, "orig override-seen=false");
    drop(proxy);
    // Without ingress mode the header is the application's: the original
    // destination gets the request, header and all.
    let proxy = start_proxy_in(&net.app, driver, false, file.to_str().unwrap());
    let with = Netns::within(&net.app, move || {
        get(orig, "l5d-dst-override: web.ns.svc.cluster.local:80\r\n")
    });
    assert_eq!(with, "orig override-seen=true");
    drop(proxy);
}

#[test]
fn ingress_mode_uring() {
    ingress_mode("uring");
}

#[test]
fn ingress_mode_epoll() {
    ingress_mode("epoll");
}
