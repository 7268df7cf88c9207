//! The HTTP/1 proxy in the real binary, driven by wrk, Python `websockets`
//! and curl with 1 GiB bodies (memory bounded).

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::http::origin;
use common::proc::*;
use common::*;

fn start(driver: &str, target: &str) -> (Running, std::net::SocketAddr) {
    Running::spawn_ready(|listen| {
        let fwd = format!("{listen}={target}");
        ringmesh(driver, &[("RINGMESH_TCP_FORWARD", &fwd)])
    })
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn wrk_zero_errors(driver: &str) {
    let origin = origin("o");
    let (p, listen) = start(driver, &origin.addr.to_string());
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c16",
            "-d2s",
            "--timeout",
            "5s",
            &format!("http://{listen}/hello"),
        ])
        .output()
        .expect("wrk is installed (scripts/install-test-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success());
    let requests: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .expect("wrk summary line");
    assert!(requests > 100, "only {requests} requests");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    drop(p);
}

#[test]
fn wrk_bounded_run_has_zero_errors_uring() {
    wrk_zero_errors("uring");
}

#[test]
fn wrk_bounded_run_has_zero_errors_epoll() {
    wrk_zero_errors("epoll");
}

const WS_SCRIPT: &str = r#"
import asyncio, sys
import websockets

async def echo(ws):
    async for msg in ws:
        await ws.send(msg)

async def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "server":
        async with websockets.serve(echo, "127.0.0.1", port):
            print("listening", flush=True)
            await asyncio.sleep(60)
    else:
        async with websockets.connect(f"ws://127.0.0.1:{port}/chat") as ws:
            await ws.send("hello text")
            assert await ws.recv() == "hello text"
            blob = bytes(range(256)) * 1000
            await ws.send(blob)
            assert await ws.recv() == blob
            for i in range(50):
                await ws.send(f"msg {i}")
                assert await ws.recv() == f"msg {i}"
        print("ok", flush=True)

asyncio.run(main())
"#;

fn websockets_echo(driver: &str) {
    let port = closed_port().port();
    let mut server = Command::new("/usr/bin/python3")
        .args(["-c", WS_SCRIPT, "server", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian's python3 with python3-websockets");
    // Wait for "listening".
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    let (p, listen) = start(driver, &format!("127.0.0.1:{port}"));
    let out = Command::new("timeout")
        .args([
            "20",
            "/usr/bin/python3",
            "-c",
            WS_SCRIPT,
            "client",
            &listen.port().to_string(),
        ])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    drop(p);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn websockets_text_and_binary_frames_uring() {
    websockets_echo("uring");
}

#[test]
fn websockets_text_and_binary_frames_epoll() {
    websockets_echo("epoll");
}

/// 1 GiB up and 1 GiB down through the proxy: the proxy's peak RSS stays
/// within 64 MiB (buffers are per connection, bodies are never held).
fn gib_bodies_bounded_memory(driver: &str) {
    const GIB: u64 = 1 << 30;
    const LIMIT_KIB: u64 = 64 * 1024;
    let origin = origin("o");
    let (p, listen) = start(driver, &origin.addr.to_string());
    let pid = p.child.id();
    let before = peak_rss_kib(pid);
    // Upload from a sparse 1 GiB file (no disk used); curl streams it.
    let dir = TempDir::new(&format!("gib-{driver}"));
    let file = dir.join("up.bin");
    std::fs::File::create(&file).unwrap().set_len(GIB).unwrap();
    let up = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "-H",
            "Expect:",
            "-T",
            file.to_str().unwrap(),
            &format!("http://{listen}/sink"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&up.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let down = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("http://{listen}/zeros/{GIB}"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&down.stdout), GIB.to_string());
    let peak = peak_rss_kib(pid);
    eprintln!(
        "{driver}: proxy peak RSS {before} KiB at start, {peak} KiB after 1 GiB up + 1 GiB down"
    );
    assert!(peak < LIMIT_KIB, "peak RSS {peak} KiB");
    drop(p);
}

#[test]
fn gib_bodies_bounded_memory_uring() {
    gib_bodies_bounded_memory("uring");
}

#[test]
fn gib_bodies_bounded_memory_epoll() {
    gib_bodies_bounded_memory("epoll");
}

/// The binary (io_uring, two workers) with RLIMIT_NOFILE at `n`, ready.
fn with_nofile(n: u32, vars: &[(&str, &str)]) -> Running {
    let plain = ringmesh("uring", vars);
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={n}:{n}"))
        .arg(plain.get_program());
    cmd.env_clear()
        .envs(plain.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = Running::spawn(cmd);
    assert!(p.wait_for("ready", Duration::from_secs(10)));
    p
}

/// A limit so low that what the proxy opens at start (rings, listeners,
/// the control core's) passes a tenth of it: the reserve shrinks to half
/// of what is free, so the proxy still serves, and it warns.
#[test]
fn a_low_descriptor_limit_still_serves() {
    let origin = origin("o");
    let listen = closed_port();
    let fwd = format!("{listen}={}", origin.addr);
    let mut p = with_nofile(40, &[("RINGMESH_TCP_FORWARD", &fwd)]);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{listen}/hello"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from o\n");
    assert!(p.wait_for("leaves room for few connections", Duration::from_secs(1)));
}

/// With RLIMIT_NOFILE at 200 and clients holding requests to an upstream
/// that never answers (a client and an upstream descriptor each), the
/// proxy keeps the last tenth of its descriptors free: its admin server
/// still answers probes, what is past the data path's share is refused at
/// once (a closed connection, or a 503), and it serves again once they
/// leave. Without the reserve every descriptor was taken and `/ready`
/// could not be reached.
#[test]
fn held_requests_leave_the_admin_its_descriptors() {
    use std::io::{Read, Write};
    let hold = Backend::start(|mut s| {
        let mut b = [0u8; 4096];
        while s.read(&mut b).is_ok_and(|n| n > 0) {}
    });
    let origin = origin("o");
    let [held, served, admin] = closed_ports();
    let fwd = format!("{held}={},{served}={}", hold.addr, origin.addr);
    let p = with_nofile(
        200,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin.to_string()),
        ],
    );
    let pid = p.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let mut clients = Vec::new();
    for _ in 0..150 {
        let Ok(mut c) = std::net::TcpStream::connect(held) else {
            continue;
        };
        if c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").is_ok() {
            clients.push(c);
        }
    }
    thread::sleep(Duration::from_millis(500));
    let open = fds();
    assert!(open < 200, "{open} descriptors open");
    let probe = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{admin}/ready"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout),
        "200",
        "/ready with {open} descriptors open"
    );
    // Past the share: refused at once, not held (a 503 from a shed
    // upstream connect, or the connection closed).
    let refused = clients
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut b = [0u8; 12];
            match (&mut &**c).read(&mut b) {
                Ok(0) => true,
                Ok(n) => b[..n].starts_with(b"HTTP/1.1 503"),
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        })
        .count();
    assert!(refused > 0, "nothing refused with {open} descriptors open");
    drop(clients);
    let page = eventually(Duration::from_secs(5), || {
        Command::new("curl")
            .args(["-sS", "--max-time", "2"])
            .arg(format!("http://{served}/hello"))
            .output()
            .is_ok_and(|o| o.stdout == b"hello from o\n")
    });
    assert!(page, "not served after the clients left");
    let metrics = Command::new("curl")
        .arg(format!("http://{admin}/metrics"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("ringmesh_worker_fd_reserve_refused_total"),
        "{text}"
    );
    drop(p);
}
