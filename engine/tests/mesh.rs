//! Mesh interoperability: two pods in network namespaces, each with a
//! sidecar proxy, Linkerd's iptables and a fake Linkerd control plane
//! (`tests/mesh/fake_cp.py`), talking mutual TLS across a veth pair. Needs
//! root (CI runs as root); without it, or a tool it drives, it fails, never
//! skips. Topology and harness: `tests/mesh/harness.rs`;
//! docs/MESH-TESTING.md.
//!
//! Every pairing — linkerd2-proxy → linkerd2-proxy (the reference),
//! ringmesh → linkerd2-proxy, linkerd2-proxy → ringmesh, ringmesh →
//! ringmesh — is held to the same: HTTP/1.1, HTTP/2, gRPC and opaque TCP
//! cross, the server app sees the client's identity in `l5d-client-id`,
//! both proxies' metrics name the peer's identity, and the bytes on the
//! wire between the pods are TLS. ringmesh certifies its identity with the
//! same fake control plane (Certify); it has no Destination client yet, so
//! it reads the same facts from a static discovery file the harness writes.

mod common;
#[path = "mesh/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::Backend;
use harness::{
    client_hellos, contains, in_ns, metric_lines, within, Capture, CpConfig, Destination, Mesh,
    Proc, Sidecar,
};

const HTTP1_PORT: u16 = 8080;
const HTTP2_PORT: u16 = 8081;
const GRPC_PORT: u16 = 9090;
/// Marked opaque (discovery and inbound policy): the transport header path.
const OPAQUE_PORT: u16 = 7070;
/// Not marked: the client's first bytes are not HTTP, so detection decides.
const DETECTED_TCP_PORT: u16 = 7071;

const GRPC_ECHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/echo.py");

/// The apps in pod B, listening on B's address.
struct Apps {
    _http1: Backend,
    _h2: common::h2::Origin,
    _grpc: Proc,
    _opaque: Backend,
    _detected: Backend,
}

fn start_apps(mesh: &Mesh) -> Apps {
    let b = &mesh.b.info;
    let bind = |port: u16| {
        let addr = b.addr(port);
        within(&b.ns, move || common::listen(addr))
    };
    let http1 = common::http::origin_on(bind(HTTP1_PORT), "b");
    let h2 = common::h2::origin_on(bind(HTTP2_PORT), None, None);
    let opaque = Backend::echo_on(bind(OPAQUE_PORT));
    let detected = Backend::echo_on(bind(DETECTED_TCP_PORT));

    let mut cmd = in_ns(&b.ns, "/usr/bin/python3");
    cmd.args([GRPC_ECHO, "serve", &b.addr(GRPC_PORT).to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let grpc = Proc::spawn("b/grpc-echo", cmd);
    if let Err(e) = grpc.wait_for(&GRPC_PORT.to_string(), Duration::from_secs(15)) {
        panic!("{e}\n{}", grpc.tail(20));
    }
    Apps {
        _http1: http1,
        _h2: h2,
        _grpc: grpc,
        _opaque: opaque,
        _detected: detected,
    }
}

/// Asserts, with every process's log tail on failure.
macro_rules! check {
    ($mesh:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            panic!("{}\n{}", format!($($fmt)+), $mesh.logs());
        }
    };
}

/// The header lines of an HTTP head or of h2 `/headers`, lowercased names.
fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Sends `payload` over a plain TCP connection from pod A to `port` on pod
/// B (redirected to A's sidecar), and returns what the echo sent back.
fn tcp_echo(mesh: &Mesh, port: u16, payload: &'static [u8]) -> std::io::Result<Vec<u8>> {
    let addr = mesh.b.info.addr(port);
    within(&mesh.a.info.ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(payload)?;
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back)?;
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        back.extend_from_slice(&rest);
        Ok(back)
    })
}

fn curl(mesh: &Mesh, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["-sS", "--noproxy", "*", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = mesh.run_in(&mesh.a, Duration::from_secs(15), "curl", &all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The outbound side (A) connected to B's `port` over TLS to B's identity,
/// and the inbound side (B) accepted it as A's identity.
fn assert_mtls_metrics(mesh: &Mesh, a_metrics: &str, b_metrics: &str, port: u16) {
    let target = format!("target_addr=\"{}\"", mesh.b.info.addr(port));
    let server_id = format!("tls=\"true\",server_id=\"{}\"", mesh.b.info.identity);
    let client_id = format!("tls=\"true\",client_id=\"{}\"", mesh.a.info.identity);
    let out = metric_lines(
        a_metrics,
        "tcp_open_total",
        &[
            "direction=\"outbound\"",
            "peer=\"dst\"",
            &target,
            &server_id,
        ],
    );
    check!(
        mesh,
        !out.is_empty(),
        "A's metrics show no mTLS connection to {target} with {server_id}; outbound peer=dst lines:\n{}",
        metric_lines(a_metrics, "tcp_open_total", &["direction=\"outbound\"", "peer=\"dst\""]).join("\n")
    );
    let inb = metric_lines(
        b_metrics,
        "tcp_open_total",
        &["direction=\"inbound\"", "peer=\"src\"", &target, &client_id],
    );
    check!(
        mesh,
        !inb.is_empty(),
        "B's metrics show no mTLS connection from A's identity to {target}; inbound peer=src lines:\n{}",
        metric_lines(b_metrics, "tcp_open_total", &["direction=\"inbound\"", "peer=\"src\""]).join("\n")
    );
}

#[test]
fn linkerd2_proxy_to_linkerd2_proxy() {
    meshed_pair(Sidecar::linkerd2_proxy(), Sidecar::linkerd2_proxy());
}

#[test]
fn ringmesh_to_linkerd2_proxy() {
    meshed_pair(Sidecar::ringmesh("uring"), Sidecar::linkerd2_proxy());
}

/// B (ringmesh) also writes Linkerd's access log: its line for the HTTP/1.1
/// request names A's identity.
#[test]
fn linkerd2_proxy_to_ringmesh() {
    meshed_pair(
        Sidecar::linkerd2_proxy(),
        Sidecar::ringmesh("uring").with_env("LINKERD2_PROXY_ACCESS_LOG", "json"),
    );
}

#[test]
fn ringmesh_to_ringmesh() {
    meshed_pair(Sidecar::ringmesh("uring"), Sidecar::ringmesh("epoll"));
}

/// The pairing's acceptance: HTTP/1.1, HTTP/2, gRPC and opaque TCP from pod
/// A's client to pod B's apps, through A's sidecar and B's over mTLS; the
/// apps see A's identity; both sidecars' metrics name the peer; the veth
/// carries TLS only.
fn meshed_pair(a: Sidecar, b: Sidecar) {
    let b_access_log = b.env.iter().any(|(k, _)| k == "LINKERD2_PROXY_ACCESS_LOG");
    let mesh = Mesh::start(a, b, |_a, b| {
        CpConfig::default()
            .with_meshed(b, HTTP1_PORT, false)
            .with_meshed(b, HTTP2_PORT, false)
            .with_meshed(b, GRPC_PORT, false)
            .with_meshed(b, OPAQUE_PORT, true)
            .with_meshed(b, DETECTED_TCP_PORT, false)
    });
    let _apps = start_apps(&mesh);
    let (a_id, b) = (mesh.a.info.identity.clone(), mesh.b.info.clone());
    let capture = Capture::start(&mesh.a.info);

    // HTTP/1.1: A's sidecar upgrades it to HTTP/2 over mTLS, B's turns it
    // back and adds the client's identity.
    let marker1 = format!("MESH-HTTP1-PLAINTEXT-{}", mesh.n);
    let (ok, body, err) = curl(
        &mesh,
        &[
            "--http1.1",
            "-H",
            &format!("x-mesh-marker: {marker1}"),
            &format!("http://{}/echo-head", b.addr(HTTP1_PORT)),
        ],
    );
    check!(mesh, ok, "HTTP/1.1 through the mesh failed: {err}");
    check!(
        mesh,
        body.starts_with("GET /echo-head HTTP/1.1"),
        "the app did not get an HTTP/1.1 request: {body}"
    );
    check!(
        mesh,
        header(&body, "l5d-client-id") == Some(a_id.as_str()),
        "HTTP/1.1: the app saw no l5d-client-id: {a_id}; it got:\n{body}"
    );
    check!(
        mesh,
        header(&body, "x-mesh-marker") == Some(marker1.as_str()),
        "HTTP/1.1: the request's own header did not arrive:\n{body}"
    );
    // Its `Host` too (a linkerd2-proxy inbound rebuilds the HTTP/1 request
    // from the HTTP/2 one's fields: the `host` field must travel with it).
    let host = b.addr(HTTP1_PORT).to_string();
    check!(
        mesh,
        header(&body, "host") == Some(host.as_str()),
        "HTTP/1.1: the app saw no Host {host}:\n{body}"
    );
    if b_access_log {
        let client = format!("\"client.id\":\"{a_id}\"");
        let line = mesh.b.proxy.wait_for(&client, Duration::from_secs(5));
        check!(
            mesh,
            line.as_ref().is_ok_and(|l| l.contains("/echo-head")
                && l.contains("\"version\":\"HTTP/1.1\"")
                && l.contains("\"status\":200")),
            "B's access log has no line for the request with A's identity: {line:?}"
        );
    }

    // HTTP/2 (prior knowledge, h2c to the app).
    let marker2 = format!("MESH-HTTP2-PLAINTEXT-BODY-{}", mesh.n);
    let (ok, body, err) = curl(
        &mesh,
        &[
            "--http2-prior-knowledge",
            "--data-binary",
            &marker2,
            "-w",
            "\nversion=%{http_version}\n",
            &format!("http://{}/headers", b.addr(HTTP2_PORT)),
        ],
    );
    check!(mesh, ok, "HTTP/2 through the mesh failed: {err}");
    check!(
        mesh,
        body.contains("version=2"),
        "HTTP/2: curl did not speak HTTP/2: {body}"
    );
    check!(
        mesh,
        header(&body, "l5d-client-id") == Some(a_id.as_str()),
        "HTTP/2: the app saw no l5d-client-id: {a_id}; it got:\n{body}"
    );

    // gRPC: every call type of tests/grpc/echo.py, from pod A.
    let out = mesh.run_in(
        &mesh.a,
        Duration::from_secs(40),
        "/usr/bin/python3",
        &[GRPC_ECHO, "client", &b.addr(GRPC_PORT).to_string()],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check!(
        mesh,
        out.status.success(),
        "gRPC through the mesh failed:\n{text}"
    );

    // Opaque TCP, on the port marked opaque (transport header) and on one
    // where detection finds no HTTP.
    for (port, payload) in [
        (OPAQUE_PORT, &b"MESH-OPAQUE-PLAINTEXT-MARKER\r\n"[..]),
        (
            DETECTED_TCP_PORT,
            &b"MESH-DETECTED-TCP-PLAINTEXT-MARKER\r\n"[..],
        ),
    ] {
        let back = tcp_echo(&mesh, port, payload);
        check!(
            mesh,
            back.as_deref().ok() == Some(payload),
            "opaque TCP to port {port}: sent {:?}, got {back:?}",
            String::from_utf8_lossy(payload)
        );
    }

    // A positive control for the capture: B's admin port is outside the mesh
    // (iptables leave it to the proxy itself, discovery knows no such
    // service), so A's sidecar forwards this request in plaintext.
    let control = format!("MESH-CONTROL-PLAINTEXT-{}", mesh.n);
    let (ok, _, err) = curl(
        &mesh,
        &[
            "-H",
            &format!("x-mesh-control: {control}"),
            &format!("http://{}/ready", b.addr(harness::ADMIN_PORT)),
        ],
    );
    check!(
        mesh,
        ok,
        "plaintext control request to B's admin failed: {err}"
    );

    let pcap = capture.finish();
    check!(
        mesh,
        contains(&pcap, control.as_bytes()),
        "the capture missed the plaintext control request ({} bytes captured): it proves nothing",
        pcap.len()
    );
    for marker in [
        marker1.as_bytes(),
        marker2.as_bytes(),
        b"MESH-OPAQUE-PLAINTEXT-MARKER",
        b"MESH-DETECTED-TCP-PLAINTEXT-MARKER",
    ] {
        check!(
            mesh,
            !contains(&pcap, marker),
            "plaintext {:?} crossed the veth between the pods",
            String::from_utf8_lossy(marker)
        );
    }
    check!(
        mesh,
        client_hellos(&pcap) >= 1,
        "no TLS ClientHello on the veth between the pods"
    );
    check!(
        mesh,
        contains(&pcap, b.identity.as_bytes()),
        "no ClientHello named B's identity (SNI {})",
        b.identity
    );
    // The gRPC client streams 4 MiB: all of it crossed, encrypted.
    check!(
        mesh,
        pcap.len() > 4 << 20,
        "only {} bytes captured; the 4 MiB gRPC stream is missing",
        pcap.len()
    );

    let (a_metrics, b_metrics) = (mesh.a.metrics(), mesh.b.metrics());
    // A ringmesh client routed all of it from the control plane, as
    // linkerd2-proxy does: outbound policies for the targets, their
    // backends through Destination.Get; a ringmesh server watched its
    // ports' inbound policies.
    let counter = |m: &str, name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    if mesh.a.sidecar.name == "ringmesh" {
        for family in ["outbound_policy_updates_total", "destination_updates_total"] {
            check!(mesh, counter(&a_metrics, family) > 0, "A: no {family}");
        }
    }
    if mesh.b.sidecar.name == "ringmesh" {
        check!(
            mesh,
            counter(&b_metrics, "inbound_policy_updates_total") > 0,
            "B: no inbound policy"
        );
    }
    for port in [
        HTTP1_PORT,
        HTTP2_PORT,
        GRPC_PORT,
        OPAQUE_PORT,
        DETECTED_TCP_PORT,
    ] {
        assert_mtls_metrics(&mesh, &a_metrics, &b_metrics, port);
    }
    // HTTP requests are counted with the peer's identity on both sides.
    let requests = metric_lines(
        &b_metrics,
        "request_total",
        &[
            "direction=\"inbound\"",
            &format!("client_id=\"{a_id}\""),
            &format!("target_addr=\"{}\"", b.addr(HTTP1_PORT)),
        ],
    );
    check!(
        mesh,
        !requests.is_empty(),
        "B counted no inbound HTTP request from A's identity"
    );
}

/// The fake control plane's identity failures, and certificate renewal, as
/// linkerd2-proxy lives through them: it retries until Certify answers,
/// renews at 70% of the leaf's lifetime, rides out an
/// identity outage with the certificate it has, and the mesh keeps working
/// on renewed certificates.
#[test]
fn linkerd2_proxy_identity_retry_and_renewal() {
    // Retries and renewals every 200 ms at the soonest, not 10 s.
    let sidecar =
        || Sidecar::linkerd2_proxy().with_env("LINKERD2_PROXY_IDENTITY_MIN_REFRESH", "200ms");
    let mesh = Mesh::builder(sidecar(), sidecar())
        .with_cp_args(&["--identity-fail-first", "2", "--cert-lifetime", "3"])
        .start(|_a, b| CpConfig::default().with_meshed(b, HTTP1_PORT, false));
    for pod in [&mesh.a, &mesh.b] {
        let limit = Duration::from_secs(5);
        check!(
            mesh,
            pod.cp
                .wait_for_count("UNAVAILABLE (fail-first 2)", 2, limit)
                && pod.cp.wait_for_count("-> ok", 1, limit),
            "{}: expected two refused Certify calls, then a certificate",
            pod.info.name
        );
    }
    let b = mesh.b.info.clone();
    let _app = common::http::origin_on(
        {
            let addr = b.addr(HTTP1_PORT);
            within(&b.ns, move || common::listen(addr))
        },
        "b",
    );
    let client_id = || {
        let (ok, body, err) = curl(
            &mesh,
            &[
                "--http1.1",
                &format!("http://{}/echo-head", b.addr(HTTP1_PORT)),
            ],
        );
        check!(mesh, ok, "HTTP/1.1 through the mesh failed: {err}");
        header(&body, "l5d-client-id").map(str::to_string)
    };
    check!(
        mesh,
        client_id().as_deref() == Some(mesh.a.info.identity.as_str()),
        "no l5d-client-id before renewal"
    );

    // A 3 s leaf is renewed at ~2.1 s.
    for pod in [&mesh.a, &mesh.b] {
        check!(
            mesh,
            pod.cp.wait_for_count("-> ok", 2, Duration::from_secs(8)),
            "{} did not renew its certificate",
            pod.info.name
        );
    }

    // An outage: renewals are refused, the proxies keep asking.
    mesh.identity_outage(true);
    for pod in [&mesh.a, &mesh.b] {
        check!(
            mesh,
            pod.cp.wait_for_count("exists)", 2, Duration::from_secs(8)),
            "{} did not retry through the identity outage",
            pod.info.name
        );
    }
    let oks = [mesh.a.cp.count("-> ok"), mesh.b.cp.count("-> ok")];
    mesh.identity_outage(false);
    for (pod, n) in [(&mesh.a, oks[0]), (&mesh.b, oks[1])] {
        check!(
            mesh,
            pod.cp
                .wait_for_count("-> ok", n + 1, Duration::from_secs(8)),
            "{} got no certificate after the outage",
            pod.info.name
        );
    }
    check!(
        mesh,
        client_id().as_deref() == Some(mesh.a.info.identity.as_str()),
        "no l5d-client-id on renewed certificates"
    );
}

/// Discovery as it changes, and the identities both sides check: a pod-IP
/// target (policy NOT_FOUND, the profile names the endpoint) is meshed too.
/// When Destination re-announces B's endpoint expecting another identity,
/// no request reaches the app: with B's name as SNI, A refuses B's
/// certificate; with the other name as SNI, B refuses the handshake (not
/// its name). Announced with B's identity again, requests flow with
/// `l5d-client-id`.
#[test]
fn linkerd2_proxy_discovery_updates_and_identity_checks() {
    discovery_updates_and_identity_checks(Sidecar::linkerd2_proxy());
}

/// The same, ringmesh on A driven by the same fake control plane through
/// Destination.Get (it sends the identity as SNI; a `server_name` that
/// differs is not used).
#[test]
fn ringmesh_discovery_updates_and_identity_checks() {
    discovery_updates_and_identity_checks(Sidecar::ringmesh("uring"));
}

fn discovery_updates_and_identity_checks(a: Sidecar) {
    const POD_IP_PORT: u16 = 8082;
    let config = |b: &harness::PodInfo, identity: &str, sni: Option<&str>| {
        CpConfig::default()
            .with_destination(
                b,
                HTTP1_PORT,
                Destination {
                    tls_identity: Some(identity.to_string()),
                    server_name: sni.map(str::to_string),
                    ..Destination::meshed(b, false)
                },
            )
            .with_destination(
                b,
                POD_IP_PORT,
                Destination {
                    policy: "not-found",
                    ..Destination::meshed(b, false)
                },
            )
    };
    let mesh = Mesh::start(a, Sidecar::linkerd2_proxy(), |_a, b| {
        config(b, &b.identity, None)
    });
    let (a_id, b) = (mesh.a.info.identity.clone(), mesh.b.info.clone());
    let _apps = [HTTP1_PORT, POD_IP_PORT].map(|port| {
        let addr = b.addr(port);
        common::http::origin_on(within(&b.ns, move || common::listen(addr)), "b")
    });
    // (HTTP status, l5d-client-id the app saw)
    let get = |port: u16| {
        let (ok, out, err) = curl(
            &mesh,
            &[
                "--http1.1",
                "-w",
                "\nstatus=%{http_code}",
                &format!("http://{}/echo-head", b.addr(port)),
            ],
        );
        check!(mesh, ok, "curl to port {port} failed: {err}");
        let status = out
            .rsplit_once("status=")
            .map(|(_, s)| s.trim().to_string());
        (status, header(&out, "l5d-client-id").map(str::to_string))
    };
    let meshed = (Some("200".to_string()), Some(a_id.clone()));
    for port in [HTTP1_PORT, POD_IP_PORT] {
        let got = get(port);
        check!(mesh, got == meshed, "port {port}: {got:?}, want {meshed:?}");
    }
    let metrics = mesh.a.metrics();
    check!(
        mesh,
        !metric_lines(
            &metrics,
            "tcp_open_total",
            &[
                "peer=\"dst\"",
                &format!("target_addr=\"{}\"", b.addr(POD_IP_PORT)),
                &format!("server_id=\"{}\"", b.identity),
            ],
        )
        .is_empty(),
        "the pod-IP target was not reached over mTLS"
    );

    let wrong = "c.default.serviceaccount.identity.linkerd.cluster.local";
    for (sni, who) in [
        (
            Some(b.identity.as_str()),
            "A did not refuse B's certificate",
        ),
        (None, "B did not refuse a handshake for another name"),
    ] {
        mesh.update_config(&config(&b, wrong, sni));
        let refused = common::eventually(Duration::from_secs(20), || {
            let (status, id) = get(HTTP1_PORT);
            status.as_deref() != Some("200") && id.is_none()
        });
        check!(
            mesh,
            refused,
            "{who}: requests still flowed after Destination said B is {wrong} (SNI {sni:?})"
        );
        mesh.update_config(&config(&b, &b.identity, None));
        let back = common::eventually(Duration::from_secs(20), || get(HTTP1_PORT) == meshed);
        check!(
            mesh,
            back,
            "requests did not flow again once B's identity was restored"
        );
    }
}

/// The inbound policy's HTTP routes on B's sidecar, each with its own
/// authorization (the server's admits no one): the route a request matches
/// decides — anyone, A's identity only, another identity only, a failure
/// injection — and a request no route matches gets 404. linkerd2-proxy is
/// the reference; ringmesh must answer the same, but for the failure
/// injection, which ringmesh answers with the filter's status.
#[test]
fn linkerd2_proxy_inbound_routes() {
    // (linkerd2-proxy's inbound side answers its own failure injection
    // with 500: its error rescue does not know the injected failure.)
    inbound_routes(Sidecar::linkerd2_proxy(), "500");
}

/// The same, ringmesh on B.
#[test]
fn ringmesh_inbound_routes() {
    inbound_routes(Sidecar::ringmesh("uring"), "418");
}

fn inbound_routes(b: Sidecar, injected: &str) {
    let mesh = Mesh::start(Sidecar::linkerd2_proxy(), b, |a, b| {
        let other = "c.default.serviceaccount.identity.linkerd.cluster.local";
        let server = format!(
            r#"{{"server": {{"name": "web-http", "identities": []}}, "routes": [
                {{"name": "hello", "path_exact": "/hello", "unauthenticated": true}},
                {{"name": "private", "path_prefix": "/echo-head", "identities": ["{other}"]}},
                {{"name": "a-only", "path_prefix": "/status", "identities": ["{a}"]}},
                {{"name": "teapot", "path_exact": "/teapot", "unauthenticated": true,
                  "filters": [{{"fail": {{"status": 418, "message": "short and stout"}}}}]}}
            ]}}"#,
            a = a.identity
        );
        CpConfig::default()
            .with_meshed(b, HTTP1_PORT, false)
            .with_inbound(HTTP1_PORT, &server)
    });
    let b = mesh.b.info.clone();
    let addr = b.addr(HTTP1_PORT);
    let _app = common::http::origin_on(within(&b.ns, move || common::listen(addr)), "b");
    let status = |path: &str| {
        let (ok, out, err) = curl(
            &mesh,
            &[
                "--http1.1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{addr}{path}"),
            ],
        );
        check!(mesh, ok, "curl {path} failed: {err}");
        out.trim().to_string()
    };
    let ready = common::eventually(Duration::from_secs(20), || status("/hello") == "200");
    check!(
        mesh,
        ready,
        "the open route never answered: {}",
        status("/hello")
    );
    for (path, want) in [
        ("/hello", "200"),
        ("/echo-head", "403"),
        ("/status/202", "202"),
        ("/teapot", injected),
        ("/other", "404"),
    ] {
        let got = status(path);
        check!(mesh, got == want, "{path}: {got}, not {want}");
    }
}

/// An outbound policy's route filters on A's sidecar, from the fake
/// control plane: failure injection, a redirect replacing the matched
/// prefix, request and response header modifiers on a route to B over
/// mTLS. linkerd2-proxy is the reference; ringmesh must answer the same.
#[test]
fn linkerd2_proxy_route_filters() {
    route_filters(Sidecar::linkerd2_proxy());
}

/// The same, ringmesh on A.
#[test]
fn ringmesh_route_filters() {
    route_filters(Sidecar::ringmesh("uring"));
}

fn route_filters(a: Sidecar) {
    let mesh = Mesh::start(a, Sidecar::linkerd2_proxy(), |_a, b| {
        let service = Destination::service_authority(b, HTTP1_PORT);
        // Precedence: the most specific match wins wherever it is listed
        // (each answers its own status, so the client sees which).
        let precedence = [
            r#""path_prefix": "/p""#,
            r#""path_prefix": "/p/api""#,
            r#""path_exact": "/p/api/x""#,
            r#""path_prefix": "/p/api", "query": {"debug": "on now"}"#,
            r#""path_prefix": "/p/api", "query": {"v": {"regex": "v[0-9]+"}}"#,
            r#""path_prefix": "/p/api", "headers": {"x-canary": "1"}"#,
            r#""path_prefix": "/p/api", "method": "POST""#,
        ]
        .iter()
        .zip(410..)
        .map(|(m, status)| {
            format!(
                r#"{{"name": "p{status}", {m}, "backends": [{{"authority": "{service}"}}],
                  "filters": [{{"fail": {{"status": {status}}}}}]}}"#
            )
        })
        .collect::<Vec<_>>()
        .join(",");
        let routes = format!(
            r#"[
            {{"name": "chaos", "path_exact": "/fail", "backends": [{{"authority": "{service}"}}],
              "filters": [{{"fail": {{"status": 418, "message": "chaos test"}}}}]}},
            {{"name": "moved", "path_prefix": "/old", "backends": [{{"authority": "{service}"}}],
              "filters": [{{"redirect": {{"prefix": "/new", "status": 302}}}}]}},
            {{"name": "split", "path_prefix": "/echo-head", "headers": {{"x-split": "1"}},
              "backends": [{{"authority": "{service}",
                "filters": [{{"request_headers": {{"set": {{"x-order": "backend"}}}}}}]}}],
              "filters": [{{"request_headers": {{"set": {{"x-order": "route"}}, "add": {{"x-route": "1"}}}}}}]}},
            {{"name": "edits", "path_prefix": "/echo-head", "backends": [{{"authority": "{service}"}}],
              "filters": [
                {{"request_headers": {{"add": {{"x-added": "yes"}}, "set": {{"x-set": "new"}}, "remove": ["x-secret"]}}}},
                {{"response_headers": {{"add": {{"x-resp": "added"}}}}}}
              ]}},
            {precedence}
            ]"#
        );
        CpConfig::default().with_destination(
            b,
            HTTP1_PORT,
            Destination {
                http_routes: Some(routes),
                ..Destination::meshed(b, false)
            },
        )
    });
    let b = mesh.b.info.clone();
    let addr = b.addr(HTTP1_PORT);
    let _app = common::http::origin_on(within(&b.ns, move || common::listen(addr)), "b");
    let get_with = |path: &str, extra: &str| {
        let (ok, out, err) = curl(
            &mesh,
            &[
                "--http1.1",
                "-D",
                "-",
                "-H",
                "x-secret: s",
                "-H",
                "x-set: old",
                "-H",
                extra,
                &format!("http://{addr}{path}"),
            ],
        );
        check!(mesh, ok, "curl {path} failed: {err}");
        out.to_ascii_lowercase()
    };
    let get = |path: &str| get_with(path, "x-none: 1");
    let applied = common::eventually(Duration::from_secs(20), || {
        get("/fail").starts_with("http/1.1 418")
    });
    check!(
        mesh,
        applied,
        "the failure injection never applied: {}",
        get("/fail")
    );
    let out = get("/fail");
    check!(mesh, out.contains("l5d-proxy-error: chaos test"), "{out}");
    let out = get("/old/page?q=1");
    check!(
        mesh,
        out.starts_with("http/1.1 302")
            && out.contains(&format!("location: http://{addr}/new/page?q=1")),
        "{out}"
    );
    let out = get("/echo-head");
    check!(mesh, out.starts_with("http/1.1 200"), "{out}");
    check!(mesh, out.contains("x-resp: added"), "{out}");
    check!(
        mesh,
        out.contains("x-added: yes") && out.contains("x-set: new"),
        "{out}"
    );
    check!(
        mesh,
        !out.contains("x-secret") && !out.contains("x-set: old"),
        "{out}"
    );
    // Through B's sidecar too: the request went over mTLS.
    check!(mesh, out.contains("l5d-client-id:"), "{out}");
    // A backend's own filters, after the route's.
    let out = get_with("/echo-head", "x-split: 1");
    check!(
        mesh,
        out.contains("x-order: backend") && !out.contains("x-order: route"),
        "{out}"
    );
    check!(mesh, out.contains("x-route: 1"), "{out}");
    // Route precedence, query parameters included.
    for (status, path, extra, method) in [
        (410, "/p/x", "x-none: 1", "GET"),
        (411, "/p/api/y", "x-none: 1", "GET"),
        (412, "/p/api/x", "x-none: 1", "GET"),
        (413, "/p/api/y?a=1&debug=on+now", "x-none: 1", "GET"),
        (414, "/p/api/y?v=v12", "x-none: 1", "GET"),
        (411, "/p/api/y?v=v12x", "x-none: 1", "GET"),
        (415, "/p/api/y?debug=on%20now", "x-canary: 1", "GET"),
        (416, "/p/api/y?v=nope", "x-none: 1", "POST"),
        (413, "/p/api/y?debug=on+now", "x-none: 1", "POST"),
    ] {
        let (ok, out, err) = curl(
            &mesh,
            &[
                "--http1.1",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                "-H",
                extra,
                &format!("http://{addr}{path}"),
            ],
        );
        check!(mesh, ok, "curl {path} failed: {err}");
        check!(
            mesh,
            out.trim() == status.to_string(),
            "{method} {path} ({extra}): {out}, not {status}"
        );
    }
}

/// A client outside the mesh (here pod A's proxy user, which A's
/// iptables let through as a pod without a sidecar) reaches B's ports
/// marked opaque (one also in
/// `LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION`, the other by
/// its inbound policy alone), whose servers speak first (as MySQL or
/// SMTP do): the banner comes at once, as linkerd2-proxy relays such
/// ports without waiting for a ClientHello (`no_tls_reason="port_skipped"`).
/// linkerd2-proxy is the reference.
#[test]
fn linkerd2_proxy_server_first_opaque_ports() {
    server_first_opaque_ports(Sidecar::linkerd2_proxy());
}

/// The same, ringmesh on B.
#[test]
fn ringmesh_server_first_opaque_ports() {
    server_first_opaque_ports(Sidecar::ringmesh("uring"));
}

fn server_first_opaque_ports(b: Sidecar) {
    const LISTED: u16 = 3306;
    // (The ports the injector lists as the pod's: linkerd2-proxy panics on
    // a policy-opaque port it was not told of.)
    let b = b
        .with_env(
            "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION",
            &LISTED.to_string(),
        )
        .with_env(
            "LINKERD2_PROXY_INBOUND_PORTS",
            &format!("{LISTED},{OPAQUE_PORT}"),
        );
    // (The opaque-ports annotation is both the listed port's environment
    // and its server's protocol, as Linkerd's injector and policy
    // controller read it; the other port is opaque by policy alone.)
    let mesh = Mesh::start(Sidecar::linkerd2_proxy(), b, |_, b| {
        CpConfig::default()
            .with_meshed(b, LISTED, true)
            .with_meshed(b, OPAQUE_PORT, true)
    });
    let info = mesh.b.info.clone();
    let banner = |port: u16| {
        let addr = info.addr(port);
        common::Backend::on(within(&info.ns, move || common::listen(addr)), |mut s| {
            let _ = s.write_all(b"220 ready\r\n");
            let mut line = [0u8; 64];
            // Then echo one line, so both directions are seen.
            if let Ok(n) = s.read(&mut line) {
                let _ = s.write_all(&line[..n]);
            }
        })
    };
    let _apps = [banner(LISTED), banner(OPAQUE_PORT)];
    for port in [LISTED, OPAQUE_PORT] {
        let to = mesh.b.info.addr(port).to_string();
        // A silent client: the banner within 3 s (the detect timeout is
        // 10 s), then its line echoed.
        let script = format!(
            "import socket,sys,time\n\
             s=socket.create_connection(('{ip}',{port}),timeout=3)\n\
             t=time.time(); b=s.recv(64)\n\
             s.sendall(b'QUIT\\r\\n'); e=s.recv(64)\n\
             print(repr(b), repr(e), round(time.time()-t,2))\n",
            ip = mesh.b.info.ip,
        );
        let mut cmd = in_ns(&mesh.a.info.ns, "setpriv");
        cmd.args([
            "--reuid",
            &harness::PROXY_UID.to_string(),
            "--regid",
            &harness::PROXY_UID.to_string(),
            "--clear-groups",
            "timeout",
            "10",
            "/usr/bin/python3",
            "-c",
            &script,
        ]);
        let out = cmd.output().expect("python3 runs");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        check!(
            mesh,
            said.starts_with("b'220 ready\\r\\n' b'QUIT\\r\\n'"),
            "{to}: no banner at once from a port marked opaque: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let m = mesh.b.metrics();
    check!(
        mesh,
        m.lines().any(|l| l.starts_with("tcp_open_total{")
            && l.contains("peer=\"src\"")
            && l.contains(&format!(":{LISTED}\""))
            && l.contains("no_tls_reason=\"port_skipped\"")),
        "no port_skipped series for the listed port:\n{m}"
    );
}
