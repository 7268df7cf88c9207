//! The `ringmesh` binary as users run it: configuration errors, busy ports,
//! logging of failures, and graceful shutdown on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::proc::*;
use common::*;
use nix::sys::signal::Signal;

fn free_port() -> SocketAddr {
    closed_port()
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_64() {
    let out = ringmesh(
        "auto",
        &[
            ("LINKERD2_PROXY_CORES", "zero"),
            ("RINGMESH_IO_DRIVER", "kqueue"),
            ("LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT", "10 parsecs"),
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:15432"),
            ("RINGMESH_DISCOVERY_STATIC", "/nonexistent/ringmesh.toml"),
            ("LINKERD2_PROXY_LOG", "ringmesh=loud["),
            ("LINKERD2_PROXY_LOG_FORMAT", "logfmt"),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr.contains("invalid configuration (7 problems):"),
        "{stderr}"
    );
    for var in [
        "LINKERD2_PROXY_CORES",
        "RINGMESH_IO_DRIVER",
        "LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT",
        "RINGMESH_TCP_FORWARD",
        "RINGMESH_DISCOVERY_STATIC",
        "LINKERD2_PROXY_LOG",
        "LINKERD2_PROXY_LOG_FORMAT",
    ] {
        assert!(stderr.contains(var), "{var} not reported:\n{stderr}");
    }
}

#[test]
fn bad_static_file_content_exits_64_with_every_problem() {
    let dir = TempDir::new("bad");
    let path = dir.join("static.toml");
    std::fs::write(
        &path,
        "[[service]]\nname = \"a.test:80\"\nendpoints = [\"nope\"]\n[[service]]\nname = \"b.test\"\nendpoints = []\n",
    )
    .unwrap();
    let out = ringmesh(
        "auto",
        &[("RINGMESH_DISCOVERY_STATIC", path.to_str().unwrap())],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(stderr.contains("b.test"), "{stderr}");

    // With a bad setting besides: both are listed in the one run (the
    // file's problems came only once the settings were fixed).
    let out = ringmesh(
        "auto",
        &[
            ("RINGMESH_DISCOVERY_STATIC", path.to_str().unwrap()),
            ("LINKERD2_PROXY_CORES", "many"),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    for needle in ["LINKERD2_PROXY_CORES", "nope", "b.test"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // A directory is said to be one.
    let out = ringmesh(
        "auto",
        &[("RINGMESH_DISCOVERY_STATIC", dir.path().to_str().unwrap())],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("a directory"), "{stderr}");
}

/// Identity from Linkerd's identity service needs the documents Linkerd's
/// init container leaves (`key.p8`, `csr.der`) and the token at start, as
/// linkerd2-proxy does: missing or empty, each is listed and the proxy
/// exits 64 (it retried Certify for ever, never ready).
#[test]
fn identity_documents_missing_at_start_exit_64() {
    let dir = TempDir::new("id-docs");
    let id_dir = dir.join("identity");
    std::fs::create_dir(&id_dir).unwrap();
    std::fs::write(id_dir.join("key.p8"), b"").unwrap();
    let anchors = "-----BEGIN CERTIFICATE-----\nMIIBWzCCAQGgAwIBAgIUQ7ZzvE0bBcGj4H0N2j6ZB3rFgKQwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
    let out = ringmesh(
        "auto",
        &[
            ("LINKERD2_PROXY_IDENTITY_DIR", id_dir.to_str().unwrap()),
            ("LINKERD2_PROXY_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
            ("LINKERD2_PROXY_IDENTITY_SVC_ADDR", "127.0.0.1:8080"),
            (
                "LINKERD2_PROXY_IDENTITY_LOCAL_NAME",
                "web.ns.serviceaccount.identity.linkerd.cluster.local",
            ),
            ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", anchors),
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(64));
    for why in [
        "key.p8 is empty",
        "csr.der: No such file",
        "/nonexistent/token",
    ] {
        assert!(stderr.contains(why), "{why} not reported:\n{stderr}");
    }
}

fn port_in_use(driver: &str) {
    // Held by another process-like owner, once plainly and once with
    // SO_REUSEPORT (which must not let ringmesh silently share it).
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let shared = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        s.listen(16).unwrap();
        s
    };
    for held in [
        plain.local_addr().unwrap(),
        shared.local_addr().unwrap().as_socket().unwrap(),
    ] {
        let out = ringmesh(
            driver,
            &[("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", &held.to_string())],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{stderr}");
        assert!(stderr.contains("already in use"), "{stderr}");
        assert!(stderr.contains(&held.to_string()), "{stderr}");
    }
}

#[test]
fn port_in_use_fails_start_uring() {
    port_in_use("uring");
}

#[test]
fn port_in_use_fails_start_epoll() {
    port_in_use("epoll");
}

fn sigterm_drains(driver: &str) {
    let backend = Backend::echo();
    let listen = free_port();
    let fwd = format!("{listen}={}", backend.addr);
    let mut p = Running::spawn(ringmesh(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "10s"),
        ],
    ));
    assert!(
        p.wait_for("ready", Duration::from_secs(10)),
        "proxy never became ready"
    );
    assert!(p.seen.iter().any(|l| l.contains(if driver == "uring" {
        "io_uring"
    } else {
        "epoll"
    })));

    let mut open = connect(listen);
    open.write_all(b"before\n").unwrap();
    let mut back = [0u8; 7];
    open.read_exact(&mut back).unwrap();

    p.signal(Signal::SIGTERM);
    assert!(p.wait_for("shutting down", Duration::from_secs(5)));
    // New connections are refused once the listeners are gone.
    assert!(eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(listen).is_err()
    }));
    // The open connection still works during the drain.
    open.write_all(b"during\n").unwrap();
    let mut back = [0u8; 7];
    open.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"during\n");
    assert_eq!(
        p.child.try_wait().unwrap(),
        None,
        "exited before the connection closed"
    );
    drop(open);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn sigterm_drains_then_exits_0_uring() {
    sigterm_drains("uring");
}

#[test]
fn sigterm_drains_then_exits_0_epoll() {
    sigterm_drains("epoll");
}

#[test]
fn grace_period_bounds_the_drain() {
    let backend = Backend::echo();
    let listen = free_port();
    let fwd = format!("{listen}={}", backend.addr);
    let mut p = Running::spawn(ringmesh(
        "auto",
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "500ms"),
        ],
    ));
    assert!(p.wait_for("ready", Duration::from_secs(10)));
    // A relay in use (an undecided, silent connection would be closed at
    // once by the drain).
    let mut open = connect(listen);
    open.write_all(b"\x00relay me").unwrap();
    let mut echoed = [0u8; 9];
    open.read_exact(&mut echoed).unwrap();
    let started = Instant::now();
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(p.wait_for("grace period over", Duration::from_secs(1)));
}

/// Relays cut off by the grace period while their multishot receives are
/// armed (io_uring): the receives are cancelled as the worker's runtime is
/// dropped, the buffer ring is unregistered, and the process still exits 0.
#[test]
fn grace_period_ends_relays_with_armed_receives() {
    let backend = Backend::echo();
    let listen = free_port();
    let fwd = format!("{listen}={}", backend.addr);
    let mut p = Running::spawn(ringmesh(
        "uring",
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "300ms"),
        ],
    ));
    assert!(p.wait_for("ready", Duration::from_secs(10)));
    let open: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut c = connect(listen);
            let msg = format!("relay {i} is up");
            let mut back = vec![0u8; msg.len()];
            c.write_all(msg.as_bytes()).unwrap();
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes());
            c
        })
        .collect();
    let started = Instant::now();
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(p.wait_for("grace period over", Duration::from_secs(1)));
    // The relays are gone: each client sees its connection end.
    for mut c in open {
        let mut buf = [0u8; 1];
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }
}

#[test]
fn all_endpoints_down_is_logged() {
    let [a, b] = closed_ports();
    let dir = TempDir::new("down");
    let path = dir.join("static.toml");
    std::fs::write(
        &path,
        format!("[[service]]\nname = \"db.test:5432\"\nendpoints = [\"{a}\", \"{b}\"]\n"),
    )
    .unwrap();
    let listen = free_port();
    let fwd = format!("{listen}=db.test:5432");
    let mut p = Running::spawn(ringmesh(
        "auto",
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("RINGMESH_DISCOVERY_STATIC", path.to_str().unwrap()),
        ],
    ));
    assert!(p.wait_for("ready", Duration::from_secs(10)));
    let mut c = connect(listen);
    let mut buf = [0u8; 1];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    assert!(p.wait_for("all 2 endpoints failed", Duration::from_secs(5)));
    assert!(p.seen.iter().any(|l| l.contains("db.test:5432")));
}

/// `LINKERD2_PROXY_LOG_FORMAT=json` (as linkerd2-proxy, any case): every
/// line on stderr, from start to exit, is one JSON object with the
/// event's level, target, thread and fields (the message among them).
#[test]
fn json_log_lines() {
    let listen = free_port();
    let fwd = format!("{listen}={}", closed_port());
    let mut p = Running::spawn(ringmesh(
        "auto",
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_LOG_FORMAT", "JSON"),
        ],
    ));
    assert!(p.wait_for("\"ready\"", Duration::from_secs(10)));
    // A connection to a dead endpoint: a warning with fields.
    let mut c = connect(listen);
    let mut buf = [0u8; 1];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    assert!(p.wait_for("\"WARN\"", Duration::from_secs(5)));
    p.signal(Signal::SIGTERM);
    assert!(p.wait_for("\"stopped\"", Duration::from_secs(10)));
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    for line in &p.seen {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for key in ["timestamp", "level", "target", "threadName"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let warn = p.seen.iter().find(|l| l.contains("\"WARN\"")).unwrap();
    let warn: serde_json::Value = serde_json::from_str(warn).unwrap();
    assert!(
        warn["fields"].as_object().unwrap().len() > 1,
        "the warning's fields are fields, not text: {warn}"
    );
}

/// Makes io_uring_setup fail with EPERM in the child, as Docker's default
/// seccomp profile does.
fn deny_io_uring(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two prctl calls on data that lives on the stack of this closure.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    let backend = Backend::echo();
    let listen = free_port();
    let fwd = format!("{listen}={}", backend.addr);
    let mut cmd = ringmesh("auto", &[("RINGMESH_TCP_FORWARD", &fwd)]);
    deny_io_uring(&mut cmd);
    let mut p = Running::spawn(cmd);
    assert!(
        p.wait_for("ready", Duration::from_secs(10)),
        "proxy never became ready"
    );
    assert!(p.seen.iter().any(|l| l.contains("falling back to epoll")));
    assert!(p.seen.iter().any(|l| l.contains("driver=epoll")));
    // And it proxies.
    let mut c = connect(listen);
    c.write_all(b"hi\n").unwrap();
    let mut back = [0u8; 3];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hi\n");
}

#[test]
fn uring_demanded_but_refused_fails_start_clearly() {
    let mut cmd = ringmesh("uring", &[]);
    deny_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("io_uring was requested"), "{stderr}");
}

/// The proxy takes no arguments: `--help` prints its usage and exits 0,
/// `--version` its version; anything else is refused (exit 64) before
/// anything listens, rather than starting on the default ports.
#[test]
fn arguments_help_or_are_refused() {
    let admin = closed_port().to_string();
    let run = |arg: &str| {
        ringmesh("auto", &[("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin)])
            .arg(arg)
            .output()
            .unwrap()
    };
    let help = run("--help");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("usage: ringmesh") && text.contains("ringmesh tap"),
        "{text}"
    );
    let version = run("--version");
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("ringmesh "));
    let bad = run("--bogus");
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown argument \"--bogus\""));
}

/// `ringmesh tap --help` (or `-h`) prints the tap command's help on
/// stdout, every flag docs/TAP.md describes named, and exits 0.
#[test]
fn tap_help_names_every_flag() {
    for arg in ["--help", "-h"] {
        let out = ringmesh("auto", &[]).args(["tap", arg]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{arg}: {out:?}");
        assert!(out.stderr.is_empty(), "{arg}: {out:?}");
        for flag in [
            "--addr HOST:PORT",
            "--method M",
            "--path PREFIX",
            "--authority A",
            "--to IP[/BITS] | IP:PORT | :PORT",
            "--limit N",
            "--headers",
            "-o, --output json|text",
            "-h, --help",
        ] {
            assert!(text.contains(flag), "{arg}: {flag} not named:\n{text}");
        }
    }
}

/// One bad setting is "1 problem", not "1 problems".
#[test]
fn one_configuration_problem_is_singular() {
    let out = ringmesh("auto", &[("LINKERD2_PROXY_CORES", "zero")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("invalid configuration (1 problem):"),
        "{stderr}"
    );
}

/// Out of file descriptors, a request gets 503 (`load_shed`: the proxy is
/// out of resources) and no endpoint is blamed: once descriptors are back,
/// the service's healthy endpoints serve at once. (Each failure used to
/// count against the endpoint it was trying: ten requests ejected both.)
#[test]
fn running_out_of_descriptors_blames_no_endpoint() {
    use std::io::{BufRead, BufReader, Read, Write};
    let (a, b) = (http::origin("a"), http::origin("b"));
    let dir = TempDir::new("emfile");
    let file = service_file(&dir, "web.test:80", &[a.addr, b.addr], "");
    let fwd = closed_port();
    let forward = format!("{fwd}=web.test:80");
    let (p, _) = Running::spawn_ready(|admin| {
        let admin = admin.to_string();
        ringmesh(
            "auto",
            &[
                ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin),
                ("LINKERD2_PROXY_CORES", "1"),
                ("RINGMESH_DISCOVERY_STATIC", &file),
                ("RINGMESH_TCP_FORWARD", &forward),
                // Every request connects anew (no pooled connection).
                ("LINKERD2_PROXY_OUTBOUND_MAX_IDLE_CONNS_PER_ENDPOINT", "0"),
            ],
        )
    });
    let pid = p.child.id() as i32;
    let nofile = |n: u64| {
        let limit = libc::rlimit {
            rlim_cur: n,
            rlim_max: 4096,
        };
        #[allow(unsafe_code)]
        // SAFETY: `limit` outlives the call; no old value is asked for.
        let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
        assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    // A request on `c`: its status and `l5d-proxy-error`.
    let get = |c: &mut BufReader<std::net::TcpStream>| -> (u16, String) {
        c.get_mut()
            .write_all(b"GET /hello HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .unwrap();
        let mut status = String::new();
        assert!(c.read_line(&mut status).unwrap() > 0, "closed");
        let (mut len, mut error) = (0, String::new());
        loop {
            let mut line = String::new();
            assert!(c.read_line(&mut line).unwrap() > 0, "closed");
            let l = line.to_ascii_lowercase();
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if let Some(v) = l.strip_prefix("l5d-proxy-error:") {
                error = v.trim().to_string();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).unwrap();
        (status.split(' ').nth(1).unwrap().parse().unwrap(), error)
    };
    let client = || {
        let c = connect(fwd);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(c)
    };
    // Ten clients served, then no descriptor left (below the lowest free
    // one: none comes free as connections close).
    let mut clients: Vec<_> = (0..10).map(|_| client()).collect();
    for c in &mut clients {
        assert_eq!(get(c).0, 200);
    }
    nofile(3);
    for c in &mut clients {
        let (code, error) = get(c);
        assert_eq!(code, 503, "{error}");
        assert!(error.contains("out of resources"), "{error}");
    }
    nofile(4096);
    let mut c = client();
    for _ in 0..4 {
        let (code, error) = get(&mut c);
        assert_eq!(code, 200, "an endpoint was blamed: {error}");
    }
    drop(p);
}

/// Forwards to a name the static file defines and to one DNS resolves,
/// together: the proxy starts (it waited for ever: the static name never
/// left discovery's pending names, and nothing woke the wait when the
/// DNS name's answer came).
#[test]
fn forwards_to_static_and_dns_names_start() {
    let dir = TempDir::new("binary-static-and-dns");
    let file = dir.path().join("static.toml");
    std::fs::write(
        &file,
        "[[service]]\nname = \"echo.test:8080\"\nendpoints = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let ns = common::dns::Nameserver::start([127, 0, 0, 1]);
    let servers = ns.addr.to_string();
    let file = file.display().to_string();
    let (_p, _listen) = Running::spawn_ready(|listen| {
        let other = closed_port();
        let fwd = format!("{listen}=echo.test:8080,{other}=db.test:5432");
        ringmesh(
            "uring",
            &[
                ("LINKERD2_PROXY_CORES", "1"),
                ("RINGMESH_DISCOVERY_STATIC", &file),
                ("RINGMESH_DNS_SERVERS", &servers),
                ("RINGMESH_TCP_FORWARD", &fwd),
            ],
        )
    });
}

/// SIGTERM while the proxy starts (waiting for a nameserver that never
/// answers) ends it at once, not once the start is over.
#[test]
fn a_signal_while_starting_ends_the_process() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let servers = silent.local_addr().unwrap().to_string();
    let fwd = format!("{}=db.test:5432", closed_port());
    let mut p = Running::spawn(ringmesh(
        "uring",
        &[
            ("LINKERD2_PROXY_CORES", "1"),
            ("RINGMESH_DNS_SERVERS", &servers),
            ("RINGMESH_TCP_FORWARD", &fwd),
        ],
    ));
    assert!(p.wait_for("starting", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    p.signal(Signal::SIGTERM);
    let code = p.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(code, Some(128 + 15), "{:?}", p.seen);
    assert!(
        took < Duration::from_millis(1500),
        "exited {took:?} after the signal (the start takes 4 s)"
    );
    assert!(!p.seen.iter().any(|l| l.contains("ready")), "{:?}", p.seen);
    drop(silent);
}

/// A value that is not UTF-8 is refused, not taken for unset (a `deny`
/// policy with a stray byte started as the default, allow-all), and a
/// duration too large for the clock is refused at start, not a panic at
/// the first deadline (or at SIGTERM, for the grace period).
#[test]
fn non_utf8_and_huge_values_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let policy = std::ffi::OsStr::from_bytes(b"deny\xff");
    let out = ringmesh("uring", &[])
        .env("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", policy)
        .env(
            "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD",
            "18446744073709551615s",
        )
        .env("RINGMESH_HTTP_REQUEST_TIMEOUT", "5124095576030432h")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for var in [
        "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
        "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD",
        "RINGMESH_HTTP_REQUEST_TIMEOUT",
    ] {
        assert!(err.contains(var), "{var} not named:\n{err}");
    }
    assert!(err.contains("too large"), "{err}");
}

/// More workers asked for than there are CPUs: as many as there are CPUs
/// run, with a warning (a thousand asked for made a thousand threads,
/// rings and listeners on two CPUs).
#[test]
fn workers_are_capped_at_the_cpus() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (p, _listen) = Running::spawn_ready(|listen| {
        let fwd = format!("{listen}=127.0.0.1:9");
        ringmesh(
            "uring",
            &[
                ("LINKERD2_PROXY_CORES", "500"),
                ("RINGMESH_TCP_FORWARD", &fwd),
            ],
        )
    });
    let starting = p.seen.iter().find(|l| l.contains("starting")).unwrap();
    assert!(starting.contains(&format!("workers={cpus}")), "{starting}");
    assert!(
        p.seen.iter().any(|l| l.contains("more than the CPUs")),
        "{:?}",
        p.seen
    );
}

/// What Linkerd's injector renders runs as linkerd2-proxy reads it: the
/// worker limits of `proxy.runtime.workers` (`_CORES_MAX`, with
/// `_CORES` unset: one worker, not one per CPU) and its default log filter,
/// whose `linkerd=info` shows ringmesh's own info lines.
#[test]
fn linkerd_worker_limits_and_log_targets() {
    let (p, _listen) = Running::spawn_ready(|listen| {
        let fwd = format!("{listen}=127.0.0.1:9");
        let mut cmd = ringmesh(
            "uring",
            &[
                (
                    "LINKERD2_PROXY_LOG",
                    "warn,linkerd=info,hickory=error,[{headers}]=off,[{request}]=off",
                ),
                ("LINKERD2_PROXY_CORES_MIN", "1"),
                ("LINKERD2_PROXY_CORES_MAX", "1"),
                ("RINGMESH_TCP_FORWARD", &fwd),
            ],
        );
        cmd.env_remove("LINKERD2_PROXY_CORES");
        cmd
    });
    let starting = p.seen.iter().find(|l| l.contains("starting"));
    let starting = starting.unwrap_or_else(|| panic!("an info line: {:?}", p.seen));
    assert!(starting.contains("workers=1"), "{starting}");
}

/// INFO lines a peer can cause once per connection are rate-limited like
/// the warnings (10 per 10 s per worker and kind, then a count): 200
/// plaintext connections straight to the inbound port with no
/// `RINGMESH_INBOUND_TARGET` made 200 lines (12 700 a second in a flood).
#[test]
fn per_connection_info_lines_are_limited() {
    let (mut p, listen) = Running::spawn_ready(|listen| {
        ringmesh(
            "uring",
            &[
                ("LINKERD2_PROXY_CORES", "1"),
                ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", &listen.to_string()),
                ("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "1s"),
            ],
        )
    });
    for _ in 0..200 {
        let mut c = std::net::TcpStream::connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // Closed by the proxy.
        let _ = c.read(&mut [0u8; 64]);
    }
    p.wait_for("no such line", Duration::from_millis(500));
    let lines = p
        .seen
        .iter()
        .filter(|l| l.contains("was not redirected"))
        .count();
    assert!(
        (1..=10).contains(&lines),
        "{lines} lines for 200 connections"
    );
}

/// The `audit` default policy admits every client and logs each admission
/// (as linkerd2-proxy logs "Request allowed" at INFO); the `deny` default
/// closes connections, HTTP ones too, without a 403 (linkerd2-proxy takes
/// it as an opaque server with no authorization), counted in
/// `inbound_tcp_authz_deny_total`.
#[test]
fn audit_logs_admissions_and_deny_closes_connections() {
    let app = Backend::start(|mut s| {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    });
    let target = app.addr.to_string();
    let admin = closed_port();
    let admin_addr = admin.to_string();
    let get = |inbound: SocketAddr| {
        let mut s = TcpStream::connect(inbound).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let start = |policy: &str| {
        Running::spawn_ready(|listen| {
            ringmesh(
                "uring",
                &[
                    ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", &listen.to_string()),
                    ("RINGMESH_INBOUND_TARGET", &target),
                    ("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", policy),
                    ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin_addr),
                ],
            )
        })
    };
    let (mut audit, inbound) = start("audit");
    let answer = get(inbound);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        audit.wait_for("allowed by the audit policy", Duration::from_secs(5)),
        "{:?}",
        audit.seen
    );
    drop(audit);
    let (deny, inbound) = start("deny");
    let answer = get(inbound);
    assert_eq!(answer, "", "a deny default answers nothing");
    let m = Command::new("curl")
        .args(["-sS", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&m.stdout);
    assert!(
        m.lines()
            .any(|l| l.starts_with("inbound_tcp_authz_deny_total{")
                && l.contains("srv_kind=\"default\",srv_name=\"deny\"")),
        "{m}"
    );
    assert!(!m.contains("inbound_http_authz_deny_total"), "{m}");
    drop(deny);
}

/// A CPU cgroup of the test's own with a quota of `quota` µs per 100 ms
/// (cgroup v1's `cpu` controller, or v2's `cpu.max`), removed on drop.
struct CpuCgroup(std::path::PathBuf);

impl CpuCgroup {
    fn new(quota: u32) -> Self {
        let name = format!("ringmesh-test-{}-{quota}", std::process::id());
        let (v1_quota, v2_max) = (quota.to_string(), format!("{quota} 100000"));
        let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let (dir, files): (_, Vec<(&str, &str)>) = if v1.join("cpu.cfs_quota_us").exists() {
            (
                v1.join(&name),
                vec![
                    ("cpu.cfs_period_us", "100000"),
                    ("cpu.cfs_quota_us", &v1_quota),
                ],
            )
        } else if std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            (v2.join(&name), vec![("cpu.max", &v2_max)])
        } else {
            panic!("this test needs a CPU cgroup it can create (root; cgroup v1 `cpu` or v2 with `cpu` delegated)");
        };
        std::fs::create_dir(&dir).expect("creating a cgroup needs root");
        for (file, value) in files {
            std::fs::write(dir.join(file), value).unwrap();
        }
        Self(dir)
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A container's CPU limit bounds the workers as the CPUs do, rounded up,
/// as linkerd2-proxy counts them (`num_cpus`): with a one-CPU quota, one
/// worker though two are asked for and the machine has more; with 1.5
/// CPUs, two.
#[test]
fn a_cpu_quota_bounds_the_workers() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs at least 2 CPUs (has {cpus})");
    for (quota, workers) in [(100_000, 1), (150_000, 2)] {
        let cgroup = CpuCgroup::new(quota);
        let procs = cgroup.0.join("cgroup.procs");
        // The shell joins the cgroup, then becomes the binary.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo $$ > \"$1\" && exec \"$0\"", BIN])
            .arg(&procs)
            .env_clear()
            .env("LINKERD2_PROXY_LOG", "info")
            .env("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "")
            .env("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "")
            .env("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "")
            .env("LINKERD2_PROXY_CORES", "2")
            .env("RINGMESH_DNS_SERVERS", "127.0.0.1:1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut p = Running::spawn(cmd);
        assert!(
            p.wait_for("starting", Duration::from_secs(10)),
            "the proxy never started"
        );
        let starting = p.seen.iter().find(|l| l.contains("starting")).unwrap();
        assert!(
            starting.contains(&format!("workers={workers}")),
            "quota {quota}: {starting}"
        );
        let capped = p
            .seen
            .iter()
            .any(|l| l.contains("more than the CPUs available"));
        assert_eq!(capped, workers == 1, "{:?}", p.seen);
        p.signal(Signal::SIGKILL);
        let _ = p.wait_exit(Duration::from_secs(5));
    }
}
