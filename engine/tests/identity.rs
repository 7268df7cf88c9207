//! Mutual TLS between two ringmesh proxies on loopback, with the static
//! identity mode (`RINGMESH_IDENTITY_CERT`/`_KEY`): proxy A's forward sends
//! to a service whose endpoint is behind proxy B (`identity`,
//! `opaque_transport_port` in the static file), so A originates mTLS plus
//! Linkerd's transport header and B terminates it. Between them a recording
//! relay keeps every byte A sent, to prove the wire is TLS. Then the faults:
//! untrusted or misnamed peers, expired certificates, clients without a
//! certificate, garbage and stalls during the handshake, bad transport
//! headers. (Interop with a real linkerd2-proxy is `tests/mesh.rs`.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringmesh_engine::{IoDriver, Proxy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

const A: &str = "a.ns.serviceaccount.identity.linkerd.cluster.local";
const B: &str = "b.ns.serviceaccount.identity.linkerd.cluster.local";
const C: &str = "c.ns.serviceaccount.identity.linkerd.cluster.local";

/// A throwaway CA and the files the proxies read (declared before the
/// proxies, so its directory goes after them).
struct Pki {
    dir: TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(&format!("id-{tag}"));
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            dir,
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `name` valid from/until the given years, as PEM files
    /// `<file>.pem` / `<file>.key`; returns their paths and the DER forms.
    fn leaf(&self, file: &str, name: &str, years: (i32, i32)) -> Leaf {
        let (from, until) = (
            rcgen::date_time_ymd(years.0, 1, 1),
            rcgen::date_time_ymd(years.1, 1, 1),
        );
        self.leaf_between(file, name, from, until)
    }

    /// A leaf for `name` valid from `secs` seconds from now, for a year.
    fn valid_in(&self, file: &str, name: &str, secs: i64) -> Leaf {
        let from = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
        self.leaf_between(file, name, from, from + time::Duration::days(365))
    }

    fn leaf_between(
        &self,
        file: &str,
        name: &str,
        from: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        // A subject of its own: with rcgen's default, the CA's, OpenSSL
        // (the fake control plane's grpcio) takes the leaf for self-signed.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.not_before = from;
        params.not_after = until;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        // Written then renamed: a proxy watching the files never sees half.
        write_atomic(&cert_path, cert.pem().as_bytes());
        write_atomic(&key_path, key.serialize_pem().as_bytes());
        Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn good(&self, file: &str, name: &str) -> Leaf {
        self.leaf(file, name, (2020, 2099))
    }
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// A proxy with the static identity `name` from `leaf`, trusting `pki`'s CA,
/// an admin server and an inbound listener on ephemeral loopback ports.
fn meshed_proxy(
    driver: IoDriver,
    pki: &Pki,
    name: &str,
    leaf: &Leaf,
    extra: &[(&str, &str)],
) -> Proxy {
    let (cert, key) = (leaf.cert.to_str().unwrap(), leaf.key.to_str().unwrap());
    let mut vars = vec![
        ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", name),
        ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", pki.ca_pem.as_str()),
        ("RINGMESH_IDENTITY_CERT", cert),
        ("RINGMESH_IDENTITY_KEY", key),
        ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ("RINGMESH_TLS_HANDSHAKE_TIMEOUT", "500ms"),
    ];
    vars.extend_from_slice(extra);
    start_proxy(driver, &vars)
}

/// Proxy B (static identity) with the policy API at `cp_addr` and
/// `default_policy`, its inbound listener forwarding to `target`.
fn policy_api_proxy(pki: &Pki, target: &str, default_policy: &str, cp_addr: &str) -> Proxy {
    meshed_proxy(
        IoDriver::Uring,
        pki,
        B,
        &pki.good("b", B),
        &[
            ("RINGMESH_INBOUND_TARGET", target),
            ("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", default_policy),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", cp_addr),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                r#"{"ns":"default","pod":"b-0"}"#,
            ),
            ("LINKERD2_PROXY_CONTROL_STREAM_IDLE_TIMEOUT", "60s"),
        ],
    )
}

/// `GET path` on the admin server.
fn admin(proxy: &Proxy, path: &str) -> (u16, String) {
    let mut s = connect(proxy.admin_addr().unwrap());
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

fn wait_ready(proxy: &Proxy) {
    assert!(
        eventually(Duration::from_secs(5), || admin(proxy, "/ready").0 == 200),
        "the proxy never became ready with its certificate"
    );
}

/// One HTTP/1.1 request; the whole answer.
fn get(addr: SocketAddr, path: &str, extra: &str) -> String {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: web\r\n{extra}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A TCP relay that records what the client side sent (A → B).
struct Recorder {
    addr: SocketAddr,
    seen: mpsc::Receiver<Vec<u8>>,
}

impl Recorder {
    fn to(upstream: SocketAddr) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, seen) = mpsc::channel();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(down) = s else { return };
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let tx = tx.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let (mut down, mut up) = (down, up);
                    while let Ok(n) = down.read(&mut buf) {
                        if n == 0 || up.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let _ = tx.send(buf[..n].to_vec());
                    }
                    let _ = up.shutdown(Shutdown::Write);
                });
                thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut d2);
                    let _ = d2.shutdown(Shutdown::Write);
                });
            }
        });
        Self { addr, seen }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.try_iter().flatten().collect()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The static file of proxy A (`a.toml` in `dir`): `web` (HTTP), `h2` and
/// `tcp` (opaque), each one endpoint behind B, reached through `via` (B's
/// inbound, or a relay).
fn client_side_file(
    dir: &TempDir,
    services: &[(&str, SocketAddr, &str)],
    identity: &str,
    via: SocketAddr,
) -> String {
    let mut text = String::new();
    for (name, addr, extra) in services {
        text.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\nidentity = \"{identity}\"\nopaque_transport_port = {}\n{extra}\n",
            via.port()
        ));
    }
    let path = dir.join("a.toml");
    write_atomic(&path, text.as_bytes());
    path.to_str().unwrap().to_string()
}

fn meshed_pair(driver: IoDriver) {
    let pki = Pki::new(&format!("pair-{}", driver_name(driver)));
    let (leaf_a, leaf_b) = (pki.good("a", A), pki.good("b", B));
    let app = http::origin("app");
    let echo = Backend::echo();
    let h2 = h2::origin(None);
    let b = meshed_proxy(driver, &pki, B, &leaf_b, &[]);
    let rec = Recorder::to(b.inbound_addr().unwrap());
    let (web, h2_svc, tcp, upgraded) = (
        format!("web.test:{}", app.addr.port()),
        format!("h2.test:{}", h2.addr.port()),
        format!("tcp.test:{}", echo.addr.port()),
        format!("upgraded.test:{}", app.addr.port()),
    );
    let file = client_side_file(
        &pki.dir,
        &[
            (&web, app.addr, ""),
            (&h2_svc, h2.addr, "protocol = \"http2\""),
            (&tcp, echo.addr, "protocol = \"opaque\""),
            (&upgraded, app.addr, "protocol_hint = \"h2\""),
        ],
        B,
        rec.addr,
    );
    let forwards =
        format!("127.0.0.1:0={web},127.0.0.1:0={h2_svc},127.0.0.1:0={tcp},127.0.0.1:0={upgraded}");
    let a = meshed_proxy(
        driver,
        &pki,
        A,
        &leaf_a,
        &[
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("RINGMESH_TCP_FORWARD", &forwards),
        ],
    );
    wait_ready(&a);
    wait_ready(&b);
    let fwd = a.forward_addrs().to_vec();

    // HTTP/1.1: the application hears A's identity, proven by mTLS.
    let answer = get(fwd[0], "/echo-head", "l5d-client-id: spoofed\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("l5d-client-id: {A}")), "{answer}");
    assert!(
        !answer.contains("spoofed"),
        "a client's own l5d-client-id must not pass: {answer}"
    );

    // HTTP/2 (prior knowledge), through the transport header's http2.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg(format!("http://{}/hello", fwd[1]))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Opaque TCP: the echo answers through both proxies.
    let mut s = connect(fwd[2]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"opaque-marker-123").unwrap();
    let mut got = [0u8; 17];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"opaque-marker-123");
    drop(s);

    // HTTP/1.1 to a meshed endpoint hinted h2: over HTTP/2 inside the
    // mTLS connection (l5d-orig-proto), HTTP/1.1 again at the application.
    let answer = get(fwd[3], "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("l5d-client-id: {A}")), "{answer}");
    let (_, mb) = admin(&b, "/metrics");
    assert!(
        mb.lines().any(|l| l.starts_with("request_total{")
            && l.contains("direction=\"inbound\"")
            && l.contains(&format!("client_id=\"{A}\""))),
        "{mb}"
    );

    // The wire between the proxies is TLS: records, never the requests.
    let wire = rec.bytes();
    assert!(
        !wire.is_empty() && wire[0] == 0x16,
        "the first byte A sent is not a TLS handshake record"
    );
    for marker in [
        &b"echo-head"[..],
        b"opaque-marker-123",
        b"transport.l5d.io/v1\r\n",
    ] {
        assert!(
            !contains(&wire, marker),
            "{:?} crossed in plaintext",
            String::from_utf8_lossy(marker)
        );
    }

    // Both sides' metrics name the peer.
    let (_, ma) = admin(&a, "/metrics");
    let (_, mb) = admin(&b, "/metrics");
    let server_id = format!("tls=\"true\",server_id=\"{B}\"");
    let client_id = format!("tls=\"true\",client_id=\"{A}\"");
    let has = |m: &str, family: &str, direction: &str, tls: &str| {
        m.lines().any(|l| {
            l.starts_with(family)
                && l.contains(&format!("direction=\"{direction}\""))
                && l.contains(tls)
        })
    };
    for family in ["request_total{", "tcp_open_total{"] {
        assert!(
            has(&ma, family, "outbound", &server_id),
            "A lacks {family}{server_id}:\n{ma}"
        );
        assert!(
            has(&mb, family, "inbound", &client_id),
            "B lacks {family}{client_id}:\n{mb}"
        );
    }
    // A's application side is loopback, not mesh.
    assert!(
        ma.contains("tls=\"no_identity\",no_tls_reason=\"loopback\""),
        "{ma}"
    );
}
both_drivers!(meshed_pair_http1_http2_opaque, super::meshed_pair);

/// Proxies B (identity B) and A (identity A), ready, A's one forward
/// going to the service `svc`, whose endpoint `app` is behind B (its
/// transport port; `extra`: the service's other settings): B, A and A's
/// static file.
fn forward_through_b(pki: &Pki, svc: &str, app: SocketAddr, extra: &str) -> (Proxy, Proxy, String) {
    let (leaf_a, leaf_b) = (pki.good("a", A), pki.good("b", B));
    let b = meshed_proxy(IoDriver::Uring, pki, B, &leaf_b, &[]);
    let file = client_side_file(&pki.dir, &[(svc, app, extra)], B, b.inbound_addr().unwrap());
    let forward = format!("127.0.0.1:0={svc}");
    let a = meshed_proxy(
        IoDriver::Uring,
        pki,
        A,
        &leaf_a,
        &[
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("RINGMESH_TCP_FORWARD", &forward),
        ],
    );
    wait_ready(&a);
    wait_ready(&b);
    (b, a, file)
}

/// Endpoints at the pod's own addresses (`LINKERD2_PROXY_INBOUND_IPS`)
/// are reached plainly at their own port, as linkerd2-proxy does: no
/// mutual TLS or transport port though discovery names an identity, no
/// HTTP/2 upgrade though it hints h2, and `no_tls_reason="loopback"` on
/// the outbound series, for services and for forwards to an address.
/// The same file without the variable meshes them (the control).
fn own_addresses_are_reached_plainly(driver: IoDriver) {
    let pki = Pki::new(&format!("local-{}", driver_name(driver)));
    let (leaf_a, leaf_b) = (pki.good("a", A), pki.good("b", B));
    let app = http::origin("app");
    let echo = Backend::echo();
    let b = meshed_proxy(driver, &pki, B, &leaf_b, &[]);
    let rec = Recorder::to(b.inbound_addr().unwrap());
    let (web, tcp, upgraded) = (
        format!("web.test:{}", app.addr.port()),
        format!("tcp.test:{}", echo.addr.port()),
        format!("upgraded.test:{}", app.addr.port()),
    );
    let file = client_side_file(
        &pki.dir,
        &[
            (&web, app.addr, ""),
            (&tcp, echo.addr, "protocol = \"opaque\""),
            (&upgraded, app.addr, "protocol_hint = \"h2\""),
        ],
        B,
        rec.addr,
    );
    let forwards = format!(
        "127.0.0.1:0={web},127.0.0.1:0={tcp},127.0.0.1:0={upgraded},127.0.0.1:0={}",
        app.addr
    );
    let start = |extra: &[(&str, &str)]| {
        let mut vars = vec![
            ("RINGMESH_DISCOVERY_STATIC", file.as_str()),
            ("RINGMESH_TCP_FORWARD", forwards.as_str()),
        ];
        vars.extend_from_slice(extra);
        let p = meshed_proxy(driver, &pki, A, &leaf_a, &vars);
        wait_ready(&p);
        p
    };
    let outbound_loopback = |m: &str, family: &str| {
        m.lines().any(|l| {
            l.starts_with(family)
                && l.contains("direction=\"outbound\"")
                && l.contains("tls=\"no_identity\",no_tls_reason=\"loopback\"")
        })
    };

    // The control: without the variable the endpoints are B's, meshed.
    let meshed = start(&[]);
    let fwd = meshed.forward_addrs().to_vec();
    let answer = get(fwd[0], "/echo-head", "");
    assert!(answer.contains(&format!("l5d-client-id: {A}")), "{answer}");
    let (_, m) = admin(&meshed, "/metrics");
    assert!(!outbound_loopback(&m, "request_total{"), "{m}");
    drop(meshed);
    let sent_meshed = rec.bytes().len();
    assert!(sent_meshed > 0, "the control did not go through B");

    // With it: straight to the application, plainly.
    let a = start(&[("LINKERD2_PROXY_INBOUND_IPS", "127.0.0.1")]);
    let fwd = a.forward_addrs().to_vec();
    let answer = get(fwd[0], "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("l5d-client-id"), "{answer}");
    let answer = get(fwd[2], "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.contains("l5d-orig-proto") && !answer.contains("l5d-client-id"),
        "HTTP/1.1 to the pod itself is not upgraded: {answer}"
    );
    let mut s = connect(fwd[1]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"local-marker").unwrap();
    let mut got = [0u8; 12];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"local-marker");
    drop(s);
    // A forward to the address itself, no discovery.
    let answer = get(fwd[3], "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        rec.bytes().is_empty(),
        "a local endpoint was reached through B"
    );

    let (_, m) = admin(&a, "/metrics");
    for family in ["request_total{", "tcp_open_total{"] {
        assert!(outbound_loopback(&m, family), "no loopback {family}:\n{m}");
    }
    let target = format!("target_addr=\"{}\"", app.addr);
    assert!(
        m.lines().any(|l| l.starts_with("request_total{")
            && !l.contains("authority=")
            && l.contains(&target)
            && l.contains("no_tls_reason=\"loopback\"")),
        "the forward to the address is not labelled loopback:\n{m}"
    );
    assert!(
        !m.lines().any(|l| l.starts_with("request_total{")
            && l.contains("direction=\"outbound\"")
            && (l.contains("not_provided_by_service_discovery") || l.contains("tls=\"true\""))),
        "{m}"
    );
}
both_drivers!(
    own_addresses_plain,
    super::own_addresses_are_reached_plainly
);

/// A multicluster gateway (identity B) that records each connection's
/// transport header and answers what it got: an HTTP/1 session gets a 200
/// whose body is `name port host`, an opaque one is echoed.
struct Gateway {
    addr: SocketAddr,
    headers: mpsc::Receiver<ringmesh_protocols::transport_header::TransportHeader>,
}

impl Gateway {
    fn start(leaf: &Leaf) -> Self {
        use ringmesh_protocols::transport_header::{decode, Decoded, SessionProtocol};
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
        .unwrap();
        cfg.alpn_protocols = vec![b"transport.l5d.io/v1".to_vec()];
        let cfg = Arc::new(cfg);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, headers) = mpsc::channel();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(sock) = s else { return };
                let (cfg, tx) = (cfg.clone(), tx.clone());
                thread::spawn(move || {
                    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let conn = rustls::ServerConnection::new(cfg).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, sock);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (header, used) = loop {
                        match decode(&buf) {
                            Ok(Decoded::Done(h, n)) => break (h, n),
                            Ok(Decoded::Incomplete(_)) => {}
                            Err(_) => return,
                        }
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buf.drain(..used);
                    let _ = tx.send(header.clone());
                    if header.protocol != Some(SessionProtocol::Http1) {
                        let _ = tls.write_all(&buf);
                        while let Ok(n) = tls.read(&mut chunk) {
                            if n == 0 || tls.write_all(&chunk[..n]).is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    while !contains(&buf, b"\r\n\r\n") {
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let host = head
                        .lines()
                        .find_map(|l| l.strip_prefix("host: "))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    let body = format!("{} {} {host}", header.name, header.port);
                    let _ = write!(
                        tls,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        Self { addr, headers }
    }
}

/// Endpoints behind a multicluster gateway (`authority_override` with an
/// identity): their connections open with a transport header naming the
/// override's host and port, as linkerd2-proxy writes them, for HTTP and
/// opaque TCP alike; without an identity there is no header.
#[test]
fn gateway_endpoints_name_their_target_in_the_transport_header() {
    let pki = Pki::new("gateway");
    let gw = Gateway::start(&pki.good("gw", B));
    let leaf_a = pki.good("a", A);
    let override_ = "web.east.svc.cluster.local:8080";
    let file = pki.dir.join("gw.toml");
    write_atomic(
        &file,
        format!(
            "[[service]]\nname = \"web.test:80\"\nendpoints = [\"{gw}\"]\nidentity = \"{B}\"\nauthority_override = \"{override_}\"\n\n\
             [[service]]\nname = \"tcp.test:9000\"\nendpoints = [\"{gw}\"]\nidentity = \"{B}\"\nprotocol = \"opaque\"\nauthority_override = \"db.east.svc.cluster.local:5432\"\n",
            gw = gw.addr
        )
        .as_bytes(),
    );
    let a = meshed_proxy(
        IoDriver::Uring,
        &pki,
        A,
        &leaf_a,
        &[
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=web.test:80,127.0.0.1:0=tcp.test:9000",
            ),
        ],
    );
    wait_ready(&a);
    let fwd = a.forward_addrs().to_vec();

    let answer = get(fwd[0], "/", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(&format!("web.east.svc.cluster.local 8080 {override_}")),
        "the gateway did not get the target's name, port and authority: {answer}"
    );
    let h = gw.headers.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (h.name.as_str(), h.port),
        ("web.east.svc.cluster.local", 8080)
    );

    let mut s = connect(fwd[1]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"opaque-through-gateway").unwrap();
    let mut got = [0u8; 22];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"opaque-through-gateway");
    let h = gw.headers.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (h.name.as_str(), h.port, h.protocol),
        ("db.east.svc.cluster.local", 5432, None)
    );
}

/// ringmesh as the multicluster gateway (`LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES`):
/// A's endpoints sit behind gateway G (B's identity) with an authority
/// override; G resolves the name A's transport header carries in its own
/// discovery and sends HTTP/1 and opaque TCP there. A name under no suffix
/// is refused, as is every name by a proxy that is no gateway.
#[test]
fn ringmesh_as_a_gateway_routes_named_targets() {
    let pki = Pki::new("gw-ringmesh");
    let app = http::origin("east");
    let echo = Backend::echo();
    let g_file = pki.dir.join("g.toml");
    write_atomic(
        &g_file,
        format!(
            "[[service]]\nname = \"web.east.svc.cluster.local:8080\"\nendpoints = [\"{}\"]\n\n\
             [[service]]\nname = \"db.east.svc.cluster.local:5432\"\nendpoints = [\"{}\"]\nprotocol = \"opaque\"\n\n\
             [[service]]\nname = \"web.west.svc.cluster.local:8080\"\nendpoints = [\"{}\"]\n",
            app.addr, echo.addr, app.addr
        )
        .as_bytes(),
    );
    // G's discovery also sends one name back to G itself (opaque): G
    // refuses to connect to its own listener, so the loop never starts
    // (and were it reached another way, the second hop's client would be
    // G, refused).
    let g_in = closed_port();
    let loop_name = "loop.east.svc.cluster.local:7000";
    let mut g_text = std::fs::read_to_string(&g_file).unwrap();
    g_text.push_str(&format!(
        "\n[[service]]\nname = \"{loop_name}\"\nendpoints = [\"{g_in}\"]\nidentity = \"{B}\"\nprotocol = \"opaque\"\nauthority_override = \"{loop_name}\"\n"
    ));
    // And one name to a link-local address (where clouds keep their
    // metadata service; unscoped, so nothing is reached even if tried).
    let meta_name = "meta.east.svc.cluster.local:80";
    g_text.push_str(&format!(
        "\n[[service]]\nname = \"{meta_name}\"\nendpoints = [\"[fe80::1]:9\"]\nprotocol = \"opaque\"\n"
    ));
    write_atomic(&g_file, g_text.as_bytes());
    let g_in_text = g_in.to_string();
    let g_vars = [
        ("RINGMESH_DISCOVERY_STATIC", g_file.to_str().unwrap()),
        (
            "LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES",
            "east.svc.cluster.local.",
        ),
        ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", g_in_text.as_str()),
    ];
    let g = meshed_proxy(IoDriver::Uring, &pki, B, &pki.good("g", B), &g_vars);
    // The same, but no gateway.
    let plain = meshed_proxy(IoDriver::Uring, &pki, B, &pki.good("p", B), &g_vars[..1]);
    wait_ready(&g);
    wait_ready(&plain);
    let a_file = pki.dir.join("a.toml");
    let behind = |gw: SocketAddr| {
        format!(
            "[[service]]\nname = \"web.test:80\"\nendpoints = [\"{gw}\"]\nidentity = \"{B}\"\nauthority_override = \"web.east.svc.cluster.local:8080\"\n\n\
             [[service]]\nname = \"tcp.test:9000\"\nendpoints = [\"{gw}\"]\nidentity = \"{B}\"\nprotocol = \"opaque\"\nauthority_override = \"db.east.svc.cluster.local:5432\"\n\n\
             [[service]]\nname = \"west.test:80\"\nendpoints = [\"{gw}\"]\nidentity = \"{B}\"\nauthority_override = \"web.west.svc.cluster.local:8080\"\n\n\
             [[service]]\nname = \"loop.test:7000\"\nendpoints = [\"{gw}\"]\nidentity = \"{B}\"\nprotocol = \"opaque\"\nauthority_override = \"{loop_name}\"\n\n\
             [[service]]\nname = \"meta.test:80\"\nendpoints = [\"{gw}\"]\nidentity = \"{B}\"\nprotocol = \"opaque\"\nauthority_override = \"{meta_name}\"\n"
        )
    };
    write_atomic(&a_file, behind(g.inbound_addr().unwrap()).as_bytes());
    let a = meshed_proxy(
        IoDriver::Uring,
        &pki,
        A,
        &pki.good("a", A),
        &[
            ("RINGMESH_DISCOVERY_STATIC", a_file.to_str().unwrap()),
            ("RINGMESH_DISCOVERY_STATIC_POLL_INTERVAL", "50ms"),
            (
                "RINGMESH_TCP_FORWARD",
                "127.0.0.1:0=web.test:80,127.0.0.1:0=tcp.test:9000,127.0.0.1:0=west.test:80,127.0.0.1:0=loop.test:7000,127.0.0.1:0=meta.test:80",
            ),
        ],
    );
    wait_ready(&a);
    let fwd = a.forward_addrs().to_vec();

    // HTTP/1 through the gateway to the east service, its authority the
    // override.
    let answer = get(fwd[0], "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("host: web.east.svc.cluster.local:8080"),
        "{answer}"
    );
    assert!(get(fwd[0], "/hello", "").ends_with("hello from east\n"));
    // Opaque TCP through the gateway.
    let mut s = connect(fwd[1]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"opaque-through-gateway").unwrap();
    let mut got = [0u8; 22];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"opaque-through-gateway");
    drop(s);
    // A name under no gateway suffix: refused (A answers 502).
    let answer = get(fwd[2], "/hello", "");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // The loop: closed, without a connection from G to itself.
    let mut s = connect(fwd[3]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"round and round").unwrap();
    let r = s.read(&mut got);
    assert!(matches!(r, Ok(0) | Err(_)), "the loop was not cut: {r:?}");
    drop(s);
    let (_, m) = admin(&g, "/metrics");
    let loops: u64 = m
        .lines()
        .filter(|l| {
            l.starts_with("tcp_open_total{")
                && l.contains("peer=\"dst\"")
                && l.contains(&format!("authority=\"{loop_name}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(loops, 0, "G's connections to itself:\n{m}");
    // The link-local name: refused before G takes the connection on.
    let mut s = connect(fwd[4]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"metadata please").unwrap();
    let r = s.read(&mut got);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "a link-local target was served: {r:?}"
    );
    drop(s);
    let (_, m) = admin(&g, "/metrics");
    assert!(
        !m.contains(&format!("authority=\"{meta_name}\"")),
        "G took a connection on for a link-local target:\n{m}"
    );
    // The gateway's series: the requests went out to the east service.
    let (_, m) = admin(&g, "/metrics");
    assert!(
        m.lines()
            .any(|l| l.starts_with("response_total{direction=\"outbound\"")
                && l.contains("authority=\"web.east.svc.cluster.local:8080\"")
                && l.contains("status_code=\"200\"")),
        "{m}"
    );

    // A proxy that is no gateway refuses every name.
    write_atomic(&a_file, behind(plain.inbound_addr().unwrap()).as_bytes());
    assert!(
        eventually(Duration::from_secs(5), || get(fwd[0], "/hello", "")
            .starts_with("HTTP/1.1 502")),
        "a proxy without gateway suffixes served a named target"
    );
}

/// A plain client straight to B's inbound: no identity to claim.
#[test]
fn plaintext_inbound_strips_a_claimed_client_id() {
    let pki = Pki::new("plain");
    let app = http::origin("app");
    let target = app.addr.to_string();
    let b = meshed_proxy(
        IoDriver::Uring,
        &pki,
        B,
        &pki.good("b", B),
        &[("RINGMESH_INBOUND_TARGET", &target)],
    );
    wait_ready(&b);
    let answer = get(
        b.inbound_addr().unwrap(),
        "/echo-head",
        "l5d-client-id: evil.example\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("evil.example"), "{answer}");
    let (_, m) = admin(&b, "/metrics");
    assert!(
        m.contains(
            "direction=\"inbound\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\""
        ),
        "{m}"
    );
    // Without a policy API, the default policy is the server, route and
    // authorization its series name (as linkerd2-proxy's).
    let port = app.addr.port();
    let default = format!(
        "srv_group=\"\",srv_kind=\"default\",srv_name=\"all-unauthenticated\",srv_port=\"{port}\""
    );
    assert!(
        m.lines().any(|l| l.starts_with("request_total{direction=\"inbound\"")
            && l.contains(&format!("{default},route_group=\"\",route_kind=\"default\",route_name=\"default\",authz_group=\"\",authz_kind=\"default\",authz_name=\"all-unauthenticated\""))),
        "{m}"
    );
    assert!(
        m.lines().any(
            |l| l.starts_with("tcp_open_total{direction=\"inbound\",peer=\"src\"")
                && l.contains(&format!("no_tls_reason=\"no_tls_from_remote\",{default}"))
        ),
        "{m}"
    );
}

/// A's view of B is wrong: B proves another identity, or a CA A does not
/// trust. The request fails with a 502 naming TLS; nothing hangs.
#[test]
fn untrusted_or_misnamed_peers_are_refused() {
    let pki = Pki::new("refused");
    let other_ca = Pki::new("refused-other");
    let app = http::origin("app");
    let b = meshed_proxy(IoDriver::Uring, &pki, B, &pki.good("b", B), &[]);
    let b_other = meshed_proxy(IoDriver::Uring, &other_ca, B, &other_ca.good("b", B), &[]);
    wait_ready(&b);
    wait_ready(&b_other);
    for (tag, identity, via) in [
        ("misnamed", C, b.inbound_addr().unwrap()),
        ("untrusted", B, b_other.inbound_addr().unwrap()),
    ] {
        let web = format!("web.test:{}", app.addr.port());
        let dir = TempDir::new(&format!("id-refused-{tag}"));
        let file = client_side_file(&dir, &[(&web, app.addr, "")], identity, via);
        let fwd = format!("127.0.0.1:0={web}");
        let a = meshed_proxy(
            IoDriver::Uring,
            &pki,
            A,
            &pki.good("a", A),
            &[
                ("RINGMESH_DISCOVERY_STATIC", &file),
                ("RINGMESH_TCP_FORWARD", &fwd),
            ],
        );
        wait_ready(&a);
        let started = Instant::now();
        let answer = get(a.forward_addrs()[0], "/echo-head", "");
        assert!(answer.starts_with("HTTP/1.1 502"), "{tag}: {answer}");
        assert!(
            answer.to_lowercase().contains("tls"),
            "{tag}: the reason names TLS: {answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{tag}: took {:?}",
            started.elapsed()
        );
        let (_, m) = admin(&a, "/metrics");
        assert!(m.contains("error=\"tls_failed\""), "{tag}: {m}");
        assert!(
            m.contains("outbound_http_errors_total{error=\"i/o\"} 1\n"),
            "{tag}: {m}"
        );
        // Labelled as the endpoint it failed at: discovery gave it an
        // identity (not "not_provided_by_service_discovery").
        assert!(
            m.lines().any(|l| l.contains("error=\"tls_failed\"")
                && l.contains("tls=\"true\"")
                && l.contains(&format!("server_id=\"{identity}\""))),
            "{tag}: {m}"
        );
    }
}

/// An endpoint whose TLS handshakes stall (it accepts and never answers)
/// costs one request its connect timeout; the next requests go to the other
/// endpoint (the failure counts as a second of latency), not another six
/// until failure accrual ejects it.
#[test]
fn an_endpoint_whose_handshakes_stall_is_avoided_after_one() {
    let pki = Pki::new("stall-ep");
    let app = http::origin("app");
    let app_addr = app.addr.to_string();
    let b = meshed_proxy(
        IoDriver::Uring,
        &pki,
        B,
        &pki.good("b", B),
        &[("RINGMESH_INBOUND_TARGET", &app_addr)],
    );
    wait_ready(&b);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            for s in silent.incoming().map_while(Result::ok) {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.push(s);
            }
        });
    }
    let dir = TempDir::new("id-stall-ep");
    let file = dir.join("a.toml");
    write_atomic(
        &file,
        format!(
            "[[service]]\nname = \"web.test:80\"\nendpoints = [\"{}\", \"{silent_addr}\"]\nidentity = \"{B}\"\n",
            b.inbound_addr().unwrap()
        )
        .as_bytes(),
    );
    let a = meshed_proxy(
        IoDriver::Uring,
        &pki,
        A,
        &pki.good("a", A),
        &[
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    wait_ready(&a);
    for i in 0..10 {
        let answer = get(a.forward_addrs()[0], "/hello", "");
        assert!(
            answer.ends_with("hello from app\n"),
            "request {i}: {answer}"
        );
    }
    let tried = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        tried <= 1,
        "the stalling endpoint was tried {tried} times in 10 requests"
    );
}

/// An expired certificate is refused (not ready, logged); replacing the
/// files with a good one is picked up without a restart.
#[test]
fn expired_certificate_is_refused_and_replaced_files_are_reloaded() {
    let pki = Pki::new("expired");
    let leaf = pki.leaf("b", B, (2020, 2021));
    let b = meshed_proxy(IoDriver::Uring, &pki, B, &leaf, &[]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        admin(&b, "/ready").0,
        503,
        "ready with an expired certificate"
    );
    // Not yet valid: still refused. Padded, so the next one fits its length.
    pki.leaf("b", B, (2098, 2099));
    for p in [&leaf.cert, &leaf.key] {
        let mut data = std::fs::read(p).unwrap();
        data.resize(data.len() + 64, b'\n');
        write_atomic(p, &data);
    }
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        admin(&b, "/ready").0,
        503,
        "ready with a not-yet-valid certificate"
    );
    // The good certificate goes in as a filesystem that keeps whole
    // seconds would show it: same lengths, same modification times. Only
    // the bytes say it changed.
    let stamps = [&leaf.cert, &leaf.key].map(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    let good = pki.good("b-next", B);
    for ((from, to), mtime) in [(&good.cert, &leaf.cert), (&good.key, &leaf.key)]
        .into_iter()
        .zip(stamps)
    {
        replace_unstamped(to, &std::fs::read(from).unwrap(), mtime);
    }
    wait_ready(&b);
}

/// A static certificate refused only because it is not valid yet (a
/// renewal written with a little clock skew) is taken once it is valid,
/// though its files do not change again: at start, and replacing the one
/// in use (it was checked only when the files' bytes changed, and the
/// proxy stayed unready, or on its old certificate, for good).
#[test]
fn a_certificate_not_valid_yet_is_taken_once_valid() {
    let pki = Pki::new("not-yet");
    let leaf = pki.valid_in("b", B, 3);
    let b = meshed_proxy(IoDriver::Uring, &pki, B, &leaf, &[]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        admin(&b, "/ready").0,
        503,
        "ready before the certificate is valid"
    );
    assert!(
        eventually(Duration::from_secs(8), || admin(&b, "/ready").0 == 200),
        "the certificate was never taken once valid"
    );
    // A renewal that is not valid for a few seconds replaces the one in
    // use once it is: the certificate B presents changes.
    let presented = || {
        let mut s = tls_to(b.inbound_addr().unwrap(), client_config(&pki, None, false));
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        s.conn.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(presented(), leaf.der);
    let next = pki.valid_in("b-next", B, 3);
    for (from, to) in [(&next.cert, &leaf.cert), (&next.key, &leaf.key)] {
        write_atomic(to, &std::fs::read(from).unwrap());
    }
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        presented(),
        leaf.der,
        "a certificate not valid yet was used"
    );
    assert!(
        eventually(Duration::from_secs(8), || presented() == next.der),
        "the renewal was never taken once valid"
    );
}

/// Replaces `path` with `data` (padded with newlines, which PEM ignores, to
/// the old length) under the old modification time `mtime`.
fn replace_unstamped(path: &Path, data: &[u8], mtime: std::time::SystemTime) {
    let old_len = std::fs::metadata(path).unwrap().len() as usize;
    assert!(data.len() <= old_len, "the test pads its files long enough");
    let mut padded = data.to_vec();
    padded.resize(old_len, b'\n');
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &padded).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A rustls client to B's inbound (SNI = B), with or without a
/// certificate, offering ALPN `transport.l5d.io/v1` when `header`.
fn client_config(pki: &Pki, cert: Option<&Leaf>, header: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match cert {
        Some(l) => builder
            .with_client_auth_cert(
                vec![l.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    if header {
        cfg.alpn_protocols = vec![b"transport.l5d.io/v1".to_vec()];
    }
    Arc::new(cfg)
}

fn tls_to(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = connect(addr);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(cfg, ServerName::try_from(B).unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// One HTTP/1.1 `GET /echo-head` over mutual TLS to B's inbound, behind a
/// transport header for `port` (plus `extra` header fields), with the
/// request's own `extra_head` lines; the whole answer.
fn meshed_get(
    inbound: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    port: u16,
    (extra, extra_head): (&[u8], &str),
) -> String {
    let mut s = tls_to(inbound, cfg);
    s.write_all(&header(port, extra)).unwrap();
    write!(
        s,
        "GET /echo-head HTTP/1.1\r\nhost: web\r\n{extra_head}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// The transport header for `port`, HTTP/1, plus `extra` protobuf bytes.
fn header(port: u16, extra: &[u8]) -> Vec<u8> {
    transport_header(port, extra)
}

/// Reads until the peer closes or 5 s pass; whether it closed.
fn closes(s: &mut impl Read) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

#[test]
fn hostile_meshed_clients_are_cut_off_and_others_served() {
    let pki = Pki::new("hostile");
    let app = http::origin("app");
    let b = meshed_proxy(IoDriver::Uring, &pki, B, &pki.good("b", B), &[]);
    wait_ready(&b);
    let inbound = b.inbound_addr().unwrap();
    let leaf_a = pki.good("a", A);

    // No client certificate: served, as unauthenticated (no identity to
    // pass on; policy, when it lands, decides what such clients may do).
    let answer = meshed_get(
        inbound,
        client_config(&pki, None, true),
        app.addr.port(),
        (&[], "l5d-client-id: x.evil\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("l5d-client-id"), "{answer}");

    // Unknown header fields are skipped (protobuf); the request is served.
    let answer = meshed_get(
        inbound,
        client_config(&pki, Some(&leaf_a), true),
        app.addr.port(),
        (&[0x78, 0x01, 0x72, 0x02, b'x', b'y'], ""),
    );
    assert!(answer.contains(&format!("l5d-client-id: {A}")), "{answer}");

    // A header naming a gateway target (`name`, field 2): closed, never
    // sent to the local port (linkerd2-proxy refuses names it is not a
    // gateway for).
    let mut named = vec![0x12, 30];
    named.extend_from_slice(b"web.other.svc.cluster.local:80");
    let answer = meshed_get(
        inbound,
        client_config(&pki, Some(&leaf_a), true),
        app.addr.port(),
        (&named, ""),
    );
    assert!(
        answer.is_empty(),
        "a gateway header reached the app: {answer}"
    );

    // A header claiming 4 GiB: closed at once.
    let mut s = tls_to(inbound, client_config(&pki, Some(&leaf_a), true));
    let mut huge = b"transport.l5d.io/v1\r\n\r\n".to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&huge).unwrap();
    assert!(closes(&mut s), "a huge transport header was not refused");

    // A ClientHello, then garbage: the handshake fails and closes.
    let mut raw = connect(inbound);
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = rustls::ClientConnection::new(
        client_config(&pki, Some(&leaf_a), true),
        ServerName::try_from(B).unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    raw.write_all(&hello).unwrap();
    raw.write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    raw.write_all(&[0xde; 64]).unwrap();
    assert!(
        closes(&mut raw),
        "garbage after a ClientHello was not refused"
    );

    // A ClientHello, then silence: closed by the handshake timeout (500 ms).
    let mut raw = connect(inbound);
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(&hello).unwrap();
    let started = Instant::now();
    assert!(closes(&mut raw), "a stalled handshake was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // Half a ClientHello, then silence: closed by the detect timeout.
    let mut raw = connect(inbound);
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(&hello[..hello.len() / 2]).unwrap();
    assert!(closes(&mut raw), "half a ClientHello was held open");

    // And B still serves meshed clients.
    let answer = meshed_get(
        inbound,
        client_config(&pki, Some(&leaf_a), true),
        app.addr.port(),
        (&[], ""),
    );
    assert!(answer.contains(&format!("l5d-client-id: {A}")), "{answer}");

    // Each connection refused above is counted, as linkerd2-proxy counts
    // them: the huge header and the garbage as I/O errors, the stalled
    // handshake and the half hello as detection timeouts, the gateway
    // name as one this proxy is no gateway for.
    let count = |error: &str| {
        let (_, m) = admin(&b, "/metrics");
        let series =
            format!("inbound_tcp_errors_total{{target_addr=\"{inbound}\",target_ip=\"{}\",target_port=\"{}\",error=\"{error}\"}} ", inbound.ip(), inbound.port());
        m.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("i/o"), 2);
    assert_eq!(count("tls detection timeout"), 2);
    assert_eq!(count("gateway domain invalid"), 1);
}

/// A transport header that arrives in many TLS records, read by many reads
/// (a peer's TLS layer may cut it anywhere): read whole, then served.
#[test]
fn a_transport_header_in_many_records_is_read_whole() {
    let pki = Pki::new("drip");
    let app = http::origin("app");
    // The header has the detect timeout to arrive in (the tests' 100 ms
    // would cut this slow one short).
    let b = meshed_proxy(
        IoDriver::Uring,
        &pki,
        B,
        &pki.good("b", B),
        &[("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "10s")],
    );
    wait_ready(&b);
    let mut s = tls_to(
        b.inbound_addr().unwrap(),
        client_config(&pki, Some(&pki.good("a", A)), true),
    );
    s.sock.set_nodelay(true).unwrap();
    // One record per byte, each on its own: a read per byte.
    for (i, byte) in header(app.addr.port(), &[]).into_iter().enumerate() {
        s.write_all(&[byte])
            .unwrap_or_else(|e| panic!("byte {i}: {e}"));
        thread::sleep(Duration::from_millis(5));
    }
    s.write_all(b"GET /echo-head HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains(&format!("l5d-client-id: {A}")), "{answer}");
}

/// linkerd2-proxy-api's proto directory in cargo's registry (the version
/// Cargo.lock pins).
/// Linkerd's Identity service (`tests/grpc/identity_server.py`, signing
/// with `pki`'s CA) on `listen`; killed on drop.
struct IdentityService {
    child: std::process::Child,
    addr: SocketAddr,
}

impl IdentityService {
    fn start(pki: &Pki, ca_key_pem: &str, listen: &str) -> Self {
        let pb = pki.dir.join("identity.pb");
        if !pb.exists() {
            let status = Command::new("protoc")
                .arg("-I")
                .arg(proto_dir())
                .arg("--include_imports")
                .arg(format!("--descriptor_set_out={}", pb.display()))
                .arg("identity.proto")
                .status()
                .expect("protoc (protobuf-compiler, scripts/install-test-deps.sh)");
            assert!(status.success());
        }
        let (cert, key) = (pki.dir.join("ca.pem"), pki.dir.join("ca.key"));
        std::fs::write(&cert, &pki.ca_pem).unwrap();
        std::fs::write(&key, ca_key_pem).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/identity_server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--descriptors", pb.to_str().unwrap()])
            .args([
                "--ca-cert",
                cert.to_str().unwrap(),
                "--ca-key",
                key.to_str().unwrap(),
            ])
            .args(["--listen", listen, "--lifetime", "3600"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with grpcio (scripts/install-test-deps.sh)");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("identity server said {line:?}"))
            .parse()
            .unwrap();
        // Keep reading its lines so it never blocks on a full pipe.
        thread::spawn(move || {
            let mut sink = String::new();
            while std::io::BufRead::read_line(&mut out, &mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Self { child, addr }
    }
}

impl Drop for IdentityService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Linkerd's identity mode end to end: the identity service is down when
/// the proxy starts (not ready, retried), comes up, and the proxy holds a
/// certificate it asked for with its CSR and token: ready, Linkerd's
/// certificate series, and a meshed client sees it prove its identity.
#[test]
fn certify_mode_waits_for_the_identity_service_then_serves_meshed() {
    let pki = Pki::new("certify");
    // The CA key, for the identity service.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let ca_key_pem = ca_key.serialize_pem();
    let pki = Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        issuer: rcgen::Issuer::new(params, ca_key),
        dir: pki.dir,
    };
    // The identity directory, as Linkerd's init writes it.
    let id_dir = pki.dir.join("identity");
    std::fs::create_dir_all(&id_dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut csr = rcgen::CertificateParams::new(vec![B.to_string()]).unwrap();
    csr.distinguished_name.push(rcgen::DnType::CommonName, B);
    std::fs::write(id_dir.join("key.p8"), key.serialize_der()).unwrap();
    std::fs::write(
        id_dir.join("csr.der"),
        csr.serialize_request(&key).unwrap().der(),
    )
    .unwrap();
    let token = pki.dir.join("token");
    std::fs::write(&token, "a-token").unwrap();
    // A port with nothing on it yet.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = format!("127.0.0.1:{port}");
    let app = http::origin("app");
    let b = start_proxy(
        IoDriver::Uring,
        &[
            ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", B),
            ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", pki.ca_pem.as_str()),
            ("LINKERD2_PROXY_IDENTITY_DIR", id_dir.to_str().unwrap()),
            (
                "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
                token.to_str().unwrap(),
            ),
            ("LINKERD2_PROXY_IDENTITY_SVC_ADDR", &svc),
            ("LINKERD2_PROXY_IDENTITY_MIN_REFRESH", "1s"),
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(admin(&b, "/ready").0, 503, "ready without a certificate");
    let (_, m) = admin(&b, "/metrics");
    assert!(
        m.contains("control_identity_cert_expiration_timestamp_seconds 0"),
        "{m}"
    );

    let service = IdentityService::start(&pki, &ca_key_pem, &svc);
    assert_eq!(service.addr.to_string(), svc);
    wait_ready(&b);
    let (_, m) = admin(&b, "/metrics");
    assert!(
        m.contains("control_identity_cert_refreshes_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("control_identity_cert_expiration_timestamp_seconds 0\n"),
        "{m}"
    );
    assert!(
        m.lines().any(
            |l| l.starts_with("control_identity_cert_refreshes_total{result=\"error\"}")
                && !l.ends_with(" 0")
        ),
        "the failed attempts are counted: {m}"
    );

    // A meshed client: B proves B with the certificate it was given.
    let leaf_a = pki.good("a", A);
    let answer = meshed_get(
        b.inbound_addr().unwrap(),
        client_config(&pki, Some(&leaf_a), true),
        app.addr.port(),
        (&[], ""),
    );
    assert!(answer.contains(&format!("l5d-client-id: {A}")), "{answer}");
}

/// TLS for another name (the application's own TLS) is relayed untouched:
/// the bytes reach the application as sent, labelled `tls="opaque"` with
/// the name.
#[test]
fn tls_for_another_name_is_relayed_untouched() {
    let pki = Pki::new("passthru");
    let echo = Backend::echo();
    let target = echo.addr.to_string();
    let b = meshed_proxy(
        IoDriver::Uring,
        &pki,
        B,
        &pki.good("b", B),
        &[("RINGMESH_INBOUND_TARGET", &target)],
    );
    wait_ready(&b);
    let mut conn = rustls::ClientConnection::new(
        client_config(&pki, None, false),
        ServerName::try_from("app.example.com").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut s = connect(b.inbound_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(
        back, hello,
        "the ClientHello did not reach the application intact"
    );
    let (_, m) = admin(&b, "/metrics");
    assert!(
        m.lines().any(|l| l.starts_with("tcp_open_total{")
            && l.contains("direction=\"inbound\"")
            && l.contains("tls=\"opaque\",sni=\"app.example.com\"")),
        "{m}"
    );
}

/// Transport header for an opaque connection to `port` (no session
/// protocol).
fn opaque_header(port: u16) -> Vec<u8> {
    let mut out = header(port, &[]);
    // Drop the session protocol (4 bytes) and fix the length.
    out.truncate(out.len() - 4);
    let len = (out.len() - 27) as u32;
    out[23..27].copy_from_slice(&len.to_be_bytes());
    out
}

/// The inbound default policy `all-authenticated` (issue 16): a meshed
/// client with an identity is served; a plaintext client, and a TLS client
/// without a certificate, get 403 with `l5d-proxy-error` (HTTP/1, HTTP/2,
/// and gRPC's PERMISSION_DENIED); their opaque connections are closed
/// before reaching the app. linkerd2-proxy's authz families count both.
#[test]
fn inbound_policy_authorizes_meshed_clients_and_denies_others() {
    let pki = Pki::new("authz");
    let app = http::origin("app");
    let echo = Backend::echo();
    let target = app.addr.to_string();
    let b = meshed_proxy(
        IoDriver::Uring,
        &pki,
        B,
        &pki.good("b", B),
        &[
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", "all-authenticated"),
        ],
    );
    wait_ready(&b);
    let inbound = b.inbound_addr().unwrap();

    // Plaintext HTTP/1: refused, and not told why (a client that is no
    // proxy gets the status alone, as from linkerd2-proxy).
    let answer = get(inbound, "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("l5d-proxy-error"),
        "{answer}"
    );
    assert!(answer.contains("content-length: 0"), "{answer}");
    assert!(!answer.contains("app"), "the app was reached: {answer}");
    // Plaintext HTTP/2 and gRPC.
    let url = format!("http://{inbound}/echo-head");
    let out = Command::new("curl")
        .args(["-s", "-i", "--http2-prior-knowledge", "-m", "5", &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 403"), "{text}");
    let out = Command::new("curl")
        .args([
            "-s",
            "-i",
            "--http2-prior-knowledge",
            "-m",
            "5",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "",
            &format!("http://{inbound}/pkg.Svc/Method"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        text.contains("grpc-status: 7"),
        "gRPC PERMISSION_DENIED: {text}"
    );

    // Mutual TLS without a client certificate: TLS, no identity.
    let anon = meshed_get(
        inbound,
        client_config(&pki, None, true),
        app.addr.port(),
        (&[], ""),
    );
    assert!(anon.starts_with("HTTP/1.1 403"), "{anon}");
    // With A's identity: served, l5d-client-id set.
    let a_leaf = pki.good("a", A);
    let ok = meshed_get(
        inbound,
        client_config(&pki, Some(&a_leaf), true),
        app.addr.port(),
        (&[], ""),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains(&format!("l5d-client-id: {A}")), "{ok}");

    // Opaque: closed unless meshed with an identity.
    for (cert, served) in [(None, false), (Some(&a_leaf), true)] {
        let mut s = tls_to(inbound, client_config(&pki, cert, true));
        s.write_all(&opaque_header(echo.addr.port())).unwrap();
        let _ = s.write_all(b"ping");
        let mut got = [0u8; 4];
        let echoed = s.read_exact(&mut got).is_ok() && &got == b"ping";
        assert_eq!(echoed, served, "opaque with certificate {}", cert.is_some());
    }

    let (_, m) = admin(&b, "/metrics");
    let has = |family: &str, parts: &[&str]| {
        m.lines()
            .any(|l| l.starts_with(family) && parts.iter().all(|p| l.contains(p)))
    };
    let srv = "srv_kind=\"default\",srv_name=\"all-authenticated\"";
    assert!(
        has(
            "inbound_http_authz_deny_total{",
            &[srv, "tls=\"no_identity\""]
        ),
        "{m}"
    );
    assert!(has(
        "inbound_http_authz_deny_total{",
        &[srv, "tls=\"true\",client_id=\"\""]
    ));
    assert!(has(
        "inbound_http_authz_allow_total{",
        &[
            srv,
            "authz_name=\"all-authenticated\"",
            &format!("client_id=\"{A}\"")
        ]
    ));
    assert!(has("inbound_tcp_authz_deny_total{", &[srv]));
    assert!(has(
        "inbound_tcp_authz_allow_total{",
        &[
            &format!("target_addr=\"{}\"", echo.addr),
            &format!("client_id=\"{A}\"")
        ]
    ));
    // The refusals are in the authorization families alone, as
    // linkerd2-proxy counts them: no HTTP series, no error family.
    assert!(
        !has(
            "response_total{",
            &["direction=\"inbound\"", "status_code=\"403\""]
        ),
        "{m}"
    );
    assert!(!m.contains("error=\"unauthorized\""), "{m}");
}

/// A policy's refusal keeps the HTTP/1 connection for the next request,
/// so its answer must frame exactly: a HEAD's 403 has no body (a body
/// would be read as the next answer), an HTTP/1.0 keep-alive client is
/// told the connection stays; over HTTP/2 a HEAD's 403 has no DATA.
#[test]
fn refusals_on_kept_connections_frame_exactly() {
    let app = http::origin("app");
    let target = app.addr.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", "all-authenticated"),
        ],
    );
    let inbound = proxy.inbound_addr().unwrap();
    let mut s = connect(inbound);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"HEAD /x HTTP/1.1\r\nhost: web\r\n\r\nGET /y HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let answers: Vec<&str> = out.split("HTTP/1.1 ").filter(|a| !a.is_empty()).collect();
    assert_eq!(answers.len(), 2, "{out}");
    assert!(answers[0].starts_with("403"), "{out}");
    assert!(
        answers[0].ends_with("\r\n\r\n"),
        "the HEAD's answer carries a body: {out}"
    );
    assert!(answers[1].starts_with("403"), "{out}");
    assert!(answers[1].contains("content-length: 0"), "{out}");
    // HTTP/1.0 with keep-alive: told so, and the next request served.
    let mut s = connect(inbound);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /x HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let head = common::http::head_lines(&mut r).unwrap();
    assert!(head.starts_with("http/1.0 403"), "{head}");
    assert!(head.contains("connection: keep-alive"), "{head}");
    // HTTP/2: curl -I reads the HEAD's 403 without a protocol error.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-I",
            "--http2-prior-knowledge",
            "-m",
            "5",
            &format!("http://{inbound}/x"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        out.status.success() && text.starts_with("http/2 403"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cluster-unauthenticated` allows clients from the cluster networks only
/// (`LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS`), without identity; a port in
/// `LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_TLS` refuses plaintext whatever
/// the network.
#[test]
fn cluster_networks_and_required_tls_ports() {
    let app = http::origin("app");
    let target = app.addr.to_string();
    let port = app.addr.port().to_string();
    let with = |networks: &str, require_tls: &str| {
        start_proxy(
            IoDriver::Epoll,
            &[
                ("RINGMESH_INBOUND_TARGET", &target),
                ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
                (
                    "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
                    "cluster-unauthenticated",
                ),
                ("LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS", networks),
                ("LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_TLS", require_tls),
            ],
        )
    };
    let outside = with("10.0.0.0/8", "");
    let answer = get(outside.inbound_addr().unwrap(), "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let inside = with("10.0.0.0/8,127.0.0.0/8", "");
    let answer = get(inside.inbound_addr().unwrap(), "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let tls_port = with("127.0.0.0/8", &port);
    let answer = get(tls_port.inbound_addr().unwrap(), "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // (Why is told to a client proxy only.)
    assert!(!answer.contains("TLS required"), "{answer}");
}

/// The policy API (`InboundServerPolicies.WatchPort`, from the fake
/// control plane): the port's Server admits the identities its
/// authorization names, whatever the default policy (`deny` here); its
/// updates apply to new connections; the last policy stays while the
/// control plane is down. linkerd2-proxy's authz labels name the server
/// and the authorization.
#[test]
fn policy_api_servers_authorize_by_identity() {
    let pki = Pki::new("policy-api");
    let app = http::origin("app");
    let target = app.addr.to_string();
    let mut cp = common::cp::Cp::start("policy-api");
    let config = |ids: &[&str]| {
        let ids: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
        format!(
            r#"{{"inbound": {{"default_policy": "all-unauthenticated", "ports": {{"{}": {{"server": {{"name": "web-http", "identities": [{}]}}}}}}}}}}"#,
            app.addr.port(),
            ids.join(", ")
        )
    };
    cp.write_loaded(&config(&[A]));
    let cp_addr = cp.addr.to_string();
    let b = policy_api_proxy(&pki, &target, "deny", &cp_addr);
    wait_ready(&b);
    let inbound = b.inbound_addr().unwrap();
    let (a_leaf, c_leaf) = (pki.good("a", A), pki.good("c", C));
    let as_client = |leaf: &Leaf| {
        meshed_get(
            inbound,
            client_config(&pki, Some(leaf), true),
            app.addr.port(),
            (&[], ""),
        )
    };
    let ok = as_client(&a_leaf);
    assert!(
        ok.starts_with("HTTP/1.1 200"),
        "A is named by the server: {ok}"
    );
    let denied = as_client(&c_leaf);
    assert!(denied.starts_with("HTTP/1.1 403"), "C is not: {denied}");
    let plain = get(inbound, "/echo-head", "");
    assert!(plain.starts_with("HTTP/1.1 403"), "{plain}");

    let (_, m) = admin(&b, "/metrics");
    assert!(
        m.lines()
            .any(|l| l.starts_with("inbound_http_authz_allow_total{")
                && l.contains("srv_kind=\"server\",srv_name=\"web-http\"")
                && l.contains("authz_kind=\"authorizationpolicy\",authz_name=\"web-http-authz\"")
                && l.contains(&format!("client_id=\"{A}\""))),
        "{m}"
    );
    assert!(m
        .lines()
        .any(|l| l.starts_with("inbound_http_authz_deny_total{")
            && l.contains("srv_name=\"web-http\"")
            && l.contains(&format!("client_id=\"{C}\""))));
    assert!(m.contains("inbound_policy_streams_total 1"), "{m}");

    // An update admits C.
    cp.write(&config(&[A, C]));
    assert!(
        eventually(Duration::from_secs(5), || as_client(&c_leaf)
            .starts_with("HTTP/1.1 200")),
        "the policy update did not apply:\n{}",
        cp.tail()
    );
    // The control plane goes away: the last policy stays.
    cp.stop();
    thread::sleep(Duration::from_millis(500));
    assert!(as_client(&c_leaf).starts_with("HTTP/1.1 200"));
    assert!(get(inbound, "/echo-head", "").starts_with("HTTP/1.1 403"));
}

/// A policy API that holds its streams open without answering: the
/// first connection to a port waits for it (at most 3 s) once, later ones
/// not at all, and the default policy admits them — provisionally: when
/// the API answers with a server for the port that does not admit them,
/// the open keep-alive connections' next requests are refused (as
/// linkerd2-proxy's default is only its policy watch's first value; a
/// connection admitted by default kept it for good), and stays open for
/// the next one. The authz metrics carry the server's group and port, as
/// linkerd2-proxy's.
#[test]
fn a_late_policy_judges_open_connections() {
    let pki = Pki::new("policy-late");
    let app = http::origin("app");
    let target = app.addr.to_string();
    let cp = common::cp::Cp::start("policy-late");
    let silent = cp.fault("silent-policy");
    cp.write_loaded(&format!(
        r#"{{"inbound": {{"ports": {{"{}": {{"server": {{"name": "web-http", "identities": ["{A}"]}}}}}}}}}}"#,
        app.addr.port()
    ));
    let cp_addr = cp.addr.to_string();
    let b = policy_api_proxy(&pki, &target, "all-unauthenticated", &cp_addr);
    wait_ready(&b);
    let inbound = b.inbound_addr().unwrap();
    // One request on a keep-alive connection: its status line.
    let ask = |r: &mut BufReader<TcpStream>| -> String {
        r.get_mut()
            .write_all(b"GET /hello HTTP/1.1\r\nhost: web\r\n\r\n")
            .unwrap();
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return head;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).unwrap();
        head
    };
    let open = || {
        let s = connect(inbound);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(s)
    };
    let started = Instant::now();
    let mut first = open();
    assert!(ask(&mut first).starts_with("HTTP/1.1 200"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "the first connection did not wait for the policy: {waited:?}"
    );
    let started = Instant::now();
    let mut second = open();
    assert!(ask(&mut second).starts_with("HTTP/1.1 200"));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "a later connection waited for the silent policy API again: {waited:?}"
    );
    // The API answers: a server that admits only A's identity.
    std::fs::remove_file(&silent).unwrap();
    for (what, c) in [("first", &mut first), ("second", &mut second)] {
        let mut last = String::new();
        let refused = eventually(Duration::from_secs(10), || {
            last = ask(c);
            last.starts_with("HTTP/1.1 403")
        });
        assert!(
            refused,
            "the {what} connection, admitted by default, is still admitted: {last}\n{}",
            cp.tail()
        );
        // A refusal keeps the connection (as linkerd2-proxy's 403).
        let again = ask(c);
        assert!(again.starts_with("HTTP/1.1 403"), "{what}: {again}");
    }
    let (_, m) = admin(&b, "/metrics");
    let port = app.addr.port();
    assert!(
        m.lines().any(|l| l.starts_with("inbound_http_authz_deny_total{")
            && l.contains(&format!(
                "srv_group=\"policy.linkerd.io\",srv_kind=\"server\",srv_name=\"web-http\",srv_port=\"{port}\",route_group="
            ))),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("inbound_http_authz_allow_total{")
                && l.contains(
                    "srv_group=\"\",srv_kind=\"default\",srv_name=\"all-unauthenticated\""
                )
                && l.contains(
                    "authz_group=\"\",authz_kind=\"default\",authz_name=\"all-unauthenticated\""
                )),
        "{m}"
    );
}

/// The policy API's HTTP routes (`HTTPRoute`s of the server, each with an
/// `AuthorizationPolicy` of its own): each request is judged by the route
/// it matches most specifically — a route open to everyone, one for A's
/// identity only, a failure injection — while the server's own
/// authorizations admit no one; a request no route matches gets 404. The
/// authz metrics name the route.
#[test]
fn policy_api_routes_authorize_each_request() {
    let pki = Pki::new("policy-routes");
    let app = http::origin("app");
    let target = app.addr.to_string();
    let cp = common::cp::Cp::start("policy-routes");
    cp.write_loaded(&format!(
        r#"{{"inbound": {{"ports": {{"{}": {{
            "server": {{"name": "web-http", "identities": []}},
            "routes": [
                {{"name": "public", "path_prefix": "/", "unauthenticated": true}},
                {{"name": "private", "path_prefix": "/echo-head", "identities": ["{A}"]}},
                {{"name": "teapot", "path_exact": "/teapot", "unauthenticated": true,
                  "filters": [{{"fail": {{"status": 418, "message": "short and stout"}}}}]}},
                {{"name": "c-only", "path_exact": "/status/202", "identities": ["{C}"]}}
            ]}}}}}}}}"#,
        app.addr.port(),
    ));
    let cp_addr = cp.addr.to_string();
    let b = policy_api_proxy(&pki, &target, "deny", &cp_addr);
    wait_ready(&b);
    let inbound = b.inbound_addr().unwrap();
    let (a_leaf, c_leaf) = (pki.good("a", A), pki.good("c", C));
    let meshed = |leaf: &Leaf, path: &str| {
        let mut s = tls_to(inbound, client_config(&pki, Some(leaf), true));
        s.write_all(&header(app.addr.port(), &[])).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let status = |answer: &str| answer.get(9..12).unwrap_or("").to_string();
    // The public route: anyone, plaintext too.
    assert!(
        eventually(Duration::from_secs(5), || status(&get(
            inbound, "/hello", ""
        )) == "200"),
        "the public route never admitted a plaintext client: {}\n{}",
        get(inbound, "/hello", ""),
        cp.tail()
    );
    assert_eq!(status(&meshed(&c_leaf, "/hello")), "200");
    // The private route (a longer prefix than the public one): A only.
    assert_eq!(status(&meshed(&a_leaf, "/echo-head")), "200");
    let denied = meshed(&c_leaf, "/echo-head");
    assert_eq!(status(&denied), "403", "{denied}");
    assert_eq!(status(&get(inbound, "/echo-head", "")), "403");
    // An exact path, C only (A is not admitted by the server either).
    assert_eq!(status(&meshed(&c_leaf, "/status/202")), "202");
    assert_eq!(status(&meshed(&a_leaf, "/status/202")), "403");
    // The route's filter answers, for anyone; its message to a client
    // proxy only.
    let teapot = get(inbound, "/teapot", "");
    assert_eq!(status(&teapot), "418", "{teapot}");
    assert!(!teapot.contains("short and stout"), "{teapot}");
    let teapot = meshed(&c_leaf, "/teapot");
    assert_eq!(status(&teapot), "418", "{teapot}");
    assert!(teapot.contains("short and stout"), "{teapot}");

    let (_, m) = admin(&b, "/metrics");
    let allowed = |route: &str, authz: &str| {
        m.lines().any(|l| {
            l.starts_with("inbound_http_authz_allow_total{")
                && l.contains("srv_kind=\"server\",srv_name=\"web-http\"")
                && l.contains(&format!("route_kind=\"HTTPRoute\",route_name=\"{route}\""))
                && l.contains(&format!("authz_name=\"{authz}\""))
        })
    };
    assert!(allowed("public", "public-public"), "{m}");
    assert!(allowed("private", "private-authz"), "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("inbound_http_authz_deny_total{")
                && l.contains("route_name=\"private\"")
                && l.contains(&format!("client_id=\"{C}\""))),
        "{m}"
    );
    // The HTTP and accepted-connection series carry them too, as
    // linkerd2-proxy's inbound endpoint and server labels.
    let port = app.addr.port();
    let (server, route) = (
        format!("srv_group=\"policy.linkerd.io\",srv_kind=\"server\",srv_name=\"web-http\",srv_port=\"{port}\""),
        "route_group=\"policy.linkerd.io\",route_kind=\"HTTPRoute\",route_name=\"private\"",
    );
    for family in [
        "request_total{",
        "response_total{",
        "response_latency_ms_count{",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(family)
                && l.contains("direction=\"inbound\"")
                && l.contains(&format!(",{server},{route},authz_group=\"policy.linkerd.io\",authz_kind=\"authorizationpolicy\",authz_name=\"private-authz\""))
                && l.contains(&format!("client_id=\"{A}\""))),
            "no {family} series with the server, route and authorization:\n{m}"
        );
    }
    assert!(
        m.lines().any(|l| l.starts_with("tcp_open_total{")
            && l.contains("direction=\"inbound\",peer=\"src\"")
            && l.contains(&format!("client_id=\"{A}\",{server}"))),
        "no accepted-connection series with the server:\n{m}"
    );
    // The refusals are not errors (linkerd2-proxy's `ErrorKind::mk`
    // leaves policy refusals to the authorization families) nor requests
    // in the HTTP families.
    assert!(!m.contains("inbound_http_errors_total{"), "{m}");
    assert!(
        !m.lines().any(|l| l.starts_with("response_total{")
            && l.contains("direction=\"inbound\"")
            && l.contains("status_code=\"403\"")),
        "{m}"
    );
    drop(b);

    // Without the public route, a request no route matches: 404.
    cp.write(&format!(
        r#"{{"inbound": {{"ports": {{"{}": {{
            "server": {{"name": "web-http", "identities": []}},
            "routes": [{{"name": "private", "path_prefix": "/echo-head", "identities": ["{A}"]}}]
            }}}}}}}}"#,
        app.addr.port(),
    ));
    let b = meshed_proxy(
        IoDriver::Uring,
        &pki,
        B,
        &pki.good("b", B),
        &[
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", &cp_addr),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                r#"{"ns":"default","pod":"b-0"}"#,
            ),
        ],
    );
    wait_ready(&b);
    let inbound = b.inbound_addr().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || status(&get(
            inbound, "/other", ""
        )) == "404"),
        "no 404 for a request no route matches: {}",
        get(inbound, "/other", "")
    );
    assert_eq!(status(&get(inbound, "/echo-head", "")), "403");
    // Counted as linkerd2-proxy counts it: by target, server and TLS in
    // `inbound_http_route_not_found_total`, not as a denial. (The first
    // 404s may be the application's, while the old routes still apply.)
    assert!(
        eventually(Duration::from_secs(5), || {
            status(&get(inbound, "/other", "")) == "404"
                && admin(&b, "/metrics")
                    .1
                    .contains("inbound_http_route_not_found_total{")
        }),
        "no request counted as matching no route:\n{}",
        admin(&b, "/metrics").1
    );
    let (_, m) = admin(&b, "/metrics");
    let not_found: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("inbound_http_route_not_found_total{"))
        .collect();
    assert_eq!(not_found.len(), 1, "{m}");
    let srv = format!("srv_name=\"web-http\",srv_port=\"{}\"", app.addr.port());
    assert!(
        not_found[0].contains(&srv) && !not_found[0].contains("route_name"),
        "{not_found:?}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("inbound_http_authz_deny_total{")
                && l.contains("route_name=\"\"")),
        "{m}"
    );
}

/// The policy API's local rate limit (an `HTTPLocalRateLimitPolicy`):
/// each client identity gets its own requests per second (the
/// unauthenticated clients one between them), an identity with an
/// override its own, and the total bounds them all; past a limit, 429
/// with the reason. The limits hold across the proxy's two workers.
#[test]
fn policy_api_rate_limits_requests() {
    let pki = Pki::new("policy-ratelimit");
    let app = http::origin("app");
    let target = app.addr.to_string();
    let cp = common::cp::Cp::start("policy-ratelimit");
    let limits = |json: &str| {
        format!(
            r#"{{"inbound": {{"ports": {{"{}": {{"rate_limit": {json}}}}}}}}}"#,
            app.addr.port()
        )
    };
    cp.write_loaded(&limits(&format!(
        r#"{{"total": 1000, "identity": 4, "overrides": [{{"rps": 8, "identities": ["{A}"]}}]}}"#
    )));
    let cp_addr = cp.addr.to_string();
    let b = meshed_proxy(
        IoDriver::Uring,
        &pki,
        B,
        &pki.good("b", B),
        &[
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", &cp_addr),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                r#"{"ns":"default","pod":"b-0"}"#,
            ),
        ],
    );
    wait_ready(&b);
    let inbound = b.inbound_addr().unwrap();
    let (a_leaf, c_leaf) = (pki.good("a", A), pki.good("c", C));
    let meshed = |leaf: &Leaf| {
        let mut s = tls_to(inbound, client_config(&pki, Some(leaf), true));
        s.write_all(&header(app.addr.port(), &[])).unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    // `n` requests at once (each on its own connection, so both workers
    // take some): how many were answered 200, and the 429s' reasons.
    let burst = |n: usize, one: &(dyn Fn() -> String + Sync)| {
        let answers: Vec<String> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..n).map(|_| s.spawn(one)).collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let ok = answers
            .iter()
            .filter(|a| a.starts_with("HTTP/1.1 200"))
            .count();
        let limited: Vec<&String> = answers
            .iter()
            .filter(|a| a.starts_with("HTTP/1.1 429"))
            .collect();
        assert_eq!(ok + limited.len(), n, "only 200s and 429s: {answers:?}");
        (
            ok,
            limited
                .iter()
                .map(|a| {
                    a.lines()
                        .find(|l| l.starts_with("l5d-proxy-error"))
                        .unwrap_or("")
                        .to_string()
                })
                .collect::<Vec<_>>(),
        )
    };
    // The policy is known once a request is refused.
    let plain = || get(inbound, "/hello", "");
    assert!(
        eventually(Duration::from_secs(5), || burst(12, &plain).0 < 12),
        "the rate limit never applied:\n{}",
        cp.tail()
    );
    std::thread::sleep(Duration::from_millis(1100));
    // A burst of one second's worth, give or take what refills meanwhile
    // (the upper bounds leave a loaded machine a few hundred ms).
    let (ok, why) = burst(12, &plain);
    assert!(
        (4..=7).contains(&ok),
        "unauthenticated: {ok} of 12 admitted"
    );
    // (A client that is no proxy is not told why.)
    assert!(why.iter().all(|w| w.is_empty()), "{why:?}");
    let (ok, why) = burst(16, &|| meshed(&a_leaf));
    assert!((8..=12).contains(&ok), "A's override: {ok} of 16 admitted");
    assert!(
        why.iter()
            .all(|w| w.contains("override rate limit exceeded: 8rps")),
        "{why:?}"
    );
    let (ok, _) = burst(12, &|| meshed(&c_leaf));
    assert!(
        (4..=7).contains(&ok),
        "C, its own identity's limit: {ok} of 12 admitted"
    );

    // The total, for everyone together.
    cp.write(&limits(r#"{"total": 5}"#));
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, why) = burst(20, &|| meshed(&c_leaf));
    assert!(
        (5..=9).contains(&ok),
        "total: {ok} of 20 admitted ({why:?})"
    );
    assert!(
        why.iter()
            .all(|w| w.contains("total rate limit exceeded: 5rps")),
        "{why:?}"
    );
}

/// The policy API's server protocol: a port the server marks `opaque` is
/// relayed without protocol detection (an HTTP-looking request reaches
/// the echo backend as bytes and comes back as they were), where detection
/// would have taken it for HTTP.
#[test]
fn policy_api_opaque_ports_skip_detection() {
    let echo = Backend::echo();
    let target = echo.addr.to_string();
    let cp = common::cp::Cp::start("policy-opaque");
    let ask = b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n";
    let through = |proxy: &Proxy| {
        let mut s = connect(proxy.inbound_addr().unwrap());
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(ask).unwrap();
        let mut got = vec![0u8; ask.len()];
        let ok = s.read_exact(&mut got).is_ok();
        (ok, got)
    };
    let start = |cp: &common::cp::Cp| {
        let addr = cp.addr.to_string();
        start_proxy(
            IoDriver::Uring,
            &[
                ("RINGMESH_INBOUND_TARGET", &target),
                ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
                ("LINKERD2_PROXY_POLICY_SVC_ADDR", &addr),
                (
                    "LINKERD2_PROXY_POLICY_WORKLOAD",
                    r#"{"ns":"default","pod":"e-0"}"#,
                ),
            ],
        )
    };
    // Detected (the server says `detect`): taken for HTTP, not echoed.
    cp.write_loaded(r#"{"inbound": {"default_policy": "all-unauthenticated"}}"#);
    let detected = start(&cp);
    let (_, got) = through(&detected);
    assert_ne!(&got[..], &ask[..], "detection took the request for HTTP");
    drop(detected);
    cp.write_loaded(&format!(
        r#"{{"inbound": {{"default_policy": "all-unauthenticated", "ports": {{"{}": {{"protocol": "opaque"}}}}}}}}"#,
        echo.addr.port()
    ));
    let opaque = start(&cp);
    let (ok, got) = through(&opaque);
    assert!(
        ok && got == ask,
        "the opaque port relays bytes as they are: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// A policy update reaches connections already open: a keep-alive
/// HTTP/1.1 connection, and an HTTP/2 one, whose client the port's new
/// server no longer admits get 403 from their next request on (as
/// linkerd2-proxy judges each request by the current policy), and 200
/// again once it admits them.
#[test]
fn policy_api_updates_reach_open_connections() {
    let app = http::origin("app");
    let app2 = common::h2::origin(None);
    let cp = common::cp::Cp::start("policy-revoke");
    let policy = |p: &str| {
        format!(
            r#"{{"inbound": {{"default_policy": "all-unauthenticated", "ports": {{"{}": {{"default_policy": "{p}"}}, "{}": {{"default_policy": "{p}"}}}}}}}}"#,
            app.addr.port(),
            app2.addr.port(),
        )
    };
    cp.write_loaded(&policy("all-unauthenticated"));
    let cp_addr = cp.addr.to_string();
    let proxy_to = |target: &str| {
        start_proxy(
            IoDriver::Uring,
            &[
                ("RINGMESH_INBOUND_TARGET", target),
                ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
                ("LINKERD2_PROXY_POLICY_SVC_ADDR", &cp_addr),
                (
                    "LINKERD2_PROXY_POLICY_WORKLOAD",
                    r#"{"ns":"default","pod":"r-0"}"#,
                ),
                ("LINKERD2_PROXY_CORES", "1"),
            ],
        )
    };
    let (p1, p2) = (
        proxy_to(&app.addr.to_string()),
        proxy_to(&app2.addr.to_string()),
    );
    // One keep-alive HTTP/1.1 connection: each request's status line.
    let conn = connect(p1.inbound_addr().unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = std::io::BufReader::new(conn);
    let mut status = move || -> String {
        use std::io::BufRead;
        w.write_all(b"GET /hello HTTP/1.1\r\nhost: app\r\n\r\n")
            .unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        line.trim_end().to_string()
    };
    // One HTTP/2 connection: a stream now, and streams after the update.
    let rt_addr = p2.inbound_addr().unwrap();
    let (to_h2, from_h2) = mpsc::channel::<()>();
    let (statuses_tx, statuses) = mpsc::channel::<u16>();
    let h2_client = thread::spawn(move || {
        common::h2::runtime().block_on(async move {
            let send = common::h2::connect(rt_addr).await;
            // One stream per message on `from_h2`, until it closes.
            while from_h2.recv().is_ok() {
                let a = common::h2::request(&send, "GET", "/hello", None).await;
                let _ = statuses_tx.send(a.map_or(0, |a| a.status));
            }
        })
    });
    let h2 = |_: ()| -> u16 {
        to_h2.send(()).unwrap();
        statuses.recv_timeout(Duration::from_secs(10)).unwrap()
    };
    assert_eq!(status(), "HTTP/1.1 200 OK");
    assert_eq!(h2(()), 200);
    cp.write(&policy("deny"));
    assert!(
        eventually(Duration::from_secs(5), || status()
            == "HTTP/1.1 403 Forbidden"),
        "the open connection's requests still admitted after the update:\n{}",
        cp.tail()
    );
    assert!(
        eventually(Duration::from_secs(5), || h2(()) == 403),
        "the open HTTP/2 connection's streams still admitted"
    );
    drop(to_h2);
    h2_client.join().unwrap();
}

/// A policy update reaches open opaque connections too: one the port's
/// new server no longer admits is closed (within a second or so), and
/// counted in `inbound_tcp_authz_terminate_total`, as linkerd2-proxy does.
#[test]
fn policy_api_updates_close_revoked_opaque_connections() {
    let echo = Backend::echo();
    let target = echo.addr.to_string();
    let cp = common::cp::Cp::start("policy-terminate");
    let policy = |p: &str| {
        format!(
            r#"{{"inbound": {{"default_policy": "all-unauthenticated", "ports": {{"{}": {{"protocol": "opaque", "default_policy": "{p}"}}}}}}}}"#,
            echo.addr.port()
        )
    };
    cp.write_loaded(&policy("all-unauthenticated"));
    let cp_addr = cp.addr.to_string();
    let proxy = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_POLICY_SVC_ADDR", &cp_addr),
            (
                "LINKERD2_PROXY_POLICY_WORKLOAD",
                r#"{"ns":"default","pod":"t-0"}"#,
            ),
        ],
    );
    let mut s = connect(proxy.inbound_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let echoed = |s: &mut TcpStream| -> bool {
        if s.write_all(b"ping").is_err() {
            return false;
        }
        let mut got = [0u8; 4];
        s.read_exact(&mut got).is_ok() && &got == b"ping"
    };
    assert!(echoed(&mut s), "relayed while admitted");
    cp.write(&policy("deny"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after the update, not at the read timeout: {:?}",
        started.elapsed()
    );
    let (_, m) = admin(&proxy, "/metrics");
    assert!(
        m.lines()
            .any(|l| l.starts_with("inbound_tcp_authz_terminate_total{")
                && l.contains(&format!("target_port=\"{}\"", echo.addr.port()))
                && l.ends_with(" 1")),
        "{m}"
    );
    // A new connection is denied outright.
    let mut s2 = connect(proxy.inbound_addr().unwrap());
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(!echoed(&mut s2), "a new connection is refused");
}

/// `RINGMESH_INBOUND_POLICY_MAX_PORTS`: ports besides
/// `LINKERD2_PROXY_INBOUND_PORTS` are watched up to the limit, so a client
/// probing every port cannot open a policy stream per port; past it a
/// port not watched is denied (403), never given the default policy (its
/// server might admit fewer clients). A declared port is always watched.
#[test]
fn policy_api_watches_a_bounded_number_of_ports() {
    let echo = Backend::echo();
    let target = echo.addr.to_string();
    let port = echo.addr.port().to_string();
    let cp = common::cp::Cp::start("policy-cap");
    cp.write_loaded(r#"{"inbound": {"default_policy": "all-unauthenticated"}}"#);
    let addr = cp.addr.to_string();
    let start = |declared: &str| {
        start_proxy(
            IoDriver::Uring,
            &[
                ("RINGMESH_INBOUND_TARGET", &target),
                ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
                ("LINKERD2_PROXY_POLICY_SVC_ADDR", &addr),
                (
                    "LINKERD2_PROXY_POLICY_WORKLOAD",
                    r#"{"ns":"default","pod":"e-0"}"#,
                ),
                ("LINKERD2_PROXY_INBOUND_PORTS", declared),
                ("RINGMESH_INBOUND_POLICY_MAX_PORTS", "0"),
            ],
        )
    };
    let status = |proxy: &Proxy| {
        let mut s = connect(proxy.inbound_addr().unwrap());
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
            .unwrap();
        let mut got = [0u8; 12];
        let _ = s.read_exact(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    };
    let capped = start("");
    assert_eq!(status(&capped), "HTTP/1.1 403", "not watched: denied");
    drop(capped);
    let declared = start(&port);
    assert_ne!(
        status(&declared),
        "HTTP/1.1 403",
        "declared: watched, allowed"
    );
}

/// The Destination service's identity in the tests below.
const DST: &str = "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local";

/// A control plane reached by name (not loopback, not `localhost`) is
/// spoken to over mutual TLS: the proxy presents its own identity (the
/// fake logs the client certificate's name with each Destination call) and
/// requires the service's `_SVC_NAME`; a proxy expecting another name
/// refuses the service's certificate and learns nothing from it.
#[test]
fn a_control_plane_by_name_is_spoken_to_over_mutual_tls() {
    let pki = Pki::new("cp-mtls");
    let (leaf_b, leaf_dst) = (pki.good("b", B), pki.good("dst", DST));
    let ca = pki.dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let cp = common::cp::Cp::start_tls("cp-mtls", &leaf_dst.cert, &leaf_dst.key, &ca);
    let app = http::origin("app");
    let web = "web.default.svc.cluster.local:80";
    cp.write_loaded(&format!(
        r#"{{"destinations": {{"{web}": {{"service": "web", "namespace": "default",
            "endpoints": [{{"addr": "{}", "port": {}}}]}}}}}}"#,
        app.addr.ip(),
        app.addr.port()
    ));
    // The service's name resolves (test nameserver) to the TLS listener.
    let ns = common::dns::Nameserver::start([127, 0, 0, 1]);
    let tls_port = cp.tls_addr.expect("the fake's TLS listener").port();
    let svc_addr = format!("linkerd-dst-headless.linkerd.svc.cluster.local.:{tls_port}");
    let dns = ns.addr.to_string();
    let forward = format!("127.0.0.1:0={web}");
    let start = |svc_name: &str| {
        meshed_proxy(
            IoDriver::Uring,
            &pki,
            B,
            &leaf_b,
            &[
                ("RINGMESH_TCP_FORWARD", &forward),
                ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", &svc_addr),
                ("LINKERD2_PROXY_DESTINATION_SVC_NAME", svc_name),
                ("RINGMESH_DNS_SERVERS", &dns),
            ],
        )
    };
    let proxy = start(DST);
    let answer = get(proxy.forward_addrs()[0], "/hello", "");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        cp.tail()
    );
    assert!(
        cp.log_count(&format!("dst.get path={web} peer={B}")) >= 1,
        "the proxy presented its identity:\n{}",
        cp.tail()
    );
    assert_eq!(cp.log_count("peer=plaintext"), 0, "{}", cp.tail());
    drop(proxy);

    // Expecting another name: the service's certificate is refused, so no
    // call reaches it and the service has no endpoints.
    let calls = cp.log_count("dst.get");
    let proxy = start("other.linkerd.serviceaccount.identity.linkerd.cluster.local");
    let answer = get(proxy.forward_addrs()[0], "/hello", "");
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "routed without the service's identity: {answer}"
    );
    assert_eq!(cp.log_count("dst.get"), calls, "{}", cp.tail());
}

/// A client proxy's pooled HTTP/2 connection closed without TLS
/// close_notify (as ringmesh's and linkerd2-proxy's do when they drop an
/// idle or drained connection) is a clean close on the server side:
/// `tcp_close_total` with `errno=""`, not `EIO` (Linkerd's dashboards
/// chart `errno!=""` as failures; a probe saw every proxy-to-proxy
/// connection of a ringmesh pair counted so).
#[test]
fn pooled_mesh_connections_close_cleanly() {
    let pki = Pki::new("pooled-close");
    let app = http::origin("app");
    let svc = format!("upgraded.test:{}", app.addr.port());
    let (b, a, file) = forward_through_b(&pki, &svc, app.addr, "protocol_hint = \"h2\"");
    let answer = get(a.forward_addrs()[0], "/echo-head", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The service goes from A's discovery; A's pooled connection to B
    // with it.
    write_atomic(Path::new(&file), b"");
    let closed = |m: &str| -> Vec<String> {
        m.lines()
            .filter(|l| {
                l.starts_with("tcp_close_total{direction=\"inbound\",peer=\"src\"")
                    && l.contains("tls=\"true\"")
            })
            .map(str::to_string)
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || !closed(
            &admin(&b, "/metrics").1
        )
        .is_empty()),
        "B never saw the connection close:\n{}",
        admin(&b, "/metrics").1
    );
    let lines = closed(&admin(&b, "/metrics").1);
    assert!(lines.iter().all(|l| l.contains("errno=\"\"")), "{lines:#?}");
}

/// Linkerd's `l5d-require-id` (outbound): a request goes only to an
/// endpoint reached by mutual TLS to the identity it names, else it is
/// answered 502 without reaching one; the header never goes further. Over
/// each way a request can leave: HTTP/1 to HTTP/1, HTTP/2 to HTTP/2,
/// HTTP/1 upgraded to HTTP/2 between the proxies, HTTP/2 to HTTP/1, and to
/// an endpoint without identity.
#[test]
fn required_identity_is_enforced_and_removed() {
    let pki = Pki::new("require-id");
    let (leaf_a, leaf_b) = (pki.good("a", A), pki.good("b", B));
    let app = http::origin("app");
    let h2 = h2::origin(None);
    let b = meshed_proxy(IoDriver::Uring, &pki, B, &leaf_b, &[]);
    let (web, h2_svc, upgraded, plain) = (
        format!("web.test:{}", app.addr.port()),
        format!("h2.test:{}", h2.addr.port()),
        format!("upgraded.test:{}", app.addr.port()),
        format!("plain.test:{}", app.addr.port()),
    );
    let file = client_side_file(
        &pki.dir,
        &[
            (&web, app.addr, "protocol = \"http1\""),
            (&h2_svc, h2.addr, "protocol = \"http2\""),
            (&upgraded, app.addr, "protocol_hint = \"h2\""),
        ],
        B,
        b.inbound_addr().unwrap(),
    );
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "[[service]]\nname = \"{plain}\"\nendpoints = [\"{}\"]\n",
        app.addr
    ));
    write_atomic(Path::new(&file), text.as_bytes());
    let forwards = format!(
        "127.0.0.1:0={web},127.0.0.1:0={h2_svc},127.0.0.1:0={upgraded},127.0.0.1:0={plain}"
    );
    let a = meshed_proxy(
        IoDriver::Uring,
        &pki,
        A,
        &leaf_a,
        &[
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("RINGMESH_TCP_FORWARD", &forwards),
        ],
    );
    wait_ready(&a);
    wait_ready(&b);
    let fwd = a.forward_addrs().to_vec();
    let other = "other.ns.serviceaccount.identity.linkerd.cluster.local";
    let upper = B.to_ascii_uppercase();

    // HTTP/1 (to HTTP/1, and upgraded to HTTP/2 between the proxies): the
    // right identity (in any case) passes, the header stays here; a value
    // that is no identity is ignored and removed too.
    for f in [fwd[0], fwd[2]] {
        for value in [B, &upper, "not an identity"] {
            let answer = get(f, "/echo-head", &format!("l5d-require-id: {value}\r\n"));
            assert!(answer.starts_with("HTTP/1.1 200"), "{value}: {answer}");
            assert!(
                !answer.to_ascii_lowercase().contains("l5d-require-id"),
                "the header went upstream: {answer}"
            );
        }
        let answer = get(f, "/echo-head", &format!("l5d-require-id: {other}\r\n"));
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert!(
            answer.contains("l5d-proxy-error: required identity"),
            "{answer}"
        );
        assert!(
            !answer.contains("GET /echo-head"),
            "the app was reached: {answer}"
        );
    }
    // An endpoint without identity satisfies no requirement.
    let answer = get(fwd[3], "/echo-head", &format!("l5d-require-id: {B}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("has none"), "{answer}");
    assert!(get(fwd[3], "/hello", "").starts_with("HTTP/1.1 200"));

    // HTTP/2 to HTTP/2, and to HTTP/1.
    let curl = |f: SocketAddr, path: &str, value: &str| -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-w", "\n%{http_code}"])
            .args(["-H", &format!("l5d-require-id: {value}")])
            .arg(format!("http://{f}{path}"))
            .output()
            .expect("curl is installed (.ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap_or_default();
        (status.to_string(), body.to_string())
    };
    let streams = || {
        h2.counters
            .streams
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let (status, body) = curl(fwd[1], "/headers", B);
    assert_eq!(status, "200", "{body}");
    assert!(!body.contains("l5d-require-id"), "{body}");
    let before = streams();
    let (status, body) = curl(fwd[1], "/headers", other);
    assert_eq!(status, "502", "{body}");
    assert_eq!(streams(), before, "the HTTP/2 origin was reached");
    let (status, body) = curl(fwd[0], "/echo-head", B);
    assert_eq!(status, "200", "{body}");
    assert!(!body.contains("l5d-require-id"), "{body}");
    let (status, body) = curl(fwd[0], "/echo-head", other);
    assert_eq!(status, "502", "{body}");

    // The refusals are A's own answers, counted as such.
    let (_, ma) = admin(&a, "/metrics");
    assert!(
        ma.lines().any(|l| l.starts_with("response_total{")
            && l.contains("direction=\"outbound\"")
            && l.contains("error=\"identity_required\"")),
        "{ma}"
    );
}

/// The admin port takes meshed clients as linkerd2-proxy's does (a meshed
/// Prometheus scraping through its proxy): mutual TLS to this proxy's
/// identity is terminated and HTTP served inside, HTTP/1.1 or upgraded to
/// HTTP/2 by the client's proxy. A TLS client asking for another name is
/// closed; plaintext clients are served as before.
#[test]
fn admin_port_serves_meshed_clients() {
    let pki = Pki::new("admin-mtls");
    let (leaf_a, leaf_b) = (pki.good("a", A), pki.good("b", B));
    let b = meshed_proxy(IoDriver::Uring, &pki, B, &leaf_b, &[]);
    let admin_b = b.admin_addr().unwrap();
    let (plain, upgraded) = (
        format!("admin.test:{}", admin_b.port()),
        format!("admin-h2.test:{}", admin_b.port()),
    );
    let file = pki.dir.join("a.toml");
    write_atomic(
        &file,
        format!(
            "[[service]]\nname = \"{plain}\"\nendpoints = [\"{admin_b}\"]\nidentity = \"{B}\"\n\
             [[service]]\nname = \"{upgraded}\"\nendpoints = [\"{admin_b}\"]\nidentity = \"{B}\"\nprotocol_hint = \"h2\"\n"
        )
        .as_bytes(),
    );
    let forwards = format!("127.0.0.1:0={plain},127.0.0.1:0={upgraded}");
    let a = meshed_proxy(
        IoDriver::Uring,
        &pki,
        A,
        &leaf_a,
        &[
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
            ("RINGMESH_TCP_FORWARD", &forwards),
        ],
    );
    wait_ready(&a);
    wait_ready(&b);
    for f in a.forward_addrs().to_vec() {
        let answer = get(f, "/metrics", "");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("process_start_time_seconds"), "{answer}");
        let answer = get(f, "/ready", "");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // A's requests went meshed: its series name B.
    let (_, ma) = admin(&a, "/metrics");
    assert!(
        ma.lines().any(|l| l.starts_with("response_total{")
            && l.contains("direction=\"outbound\"")
            && l.contains(&format!("server_id=\"{B}\""))
            && l.contains("status_code=\"200\"")),
        "{ma}"
    );
    // Clients offering ALPN (http/1.1, curl's way; or another), asking
    // for B: the offer is ignored, as linkerd2-proxy's admin server does.
    for alpn in [&b"http/1.1"[..], b"transport.l5d.io/v1"] {
        let mut cfg = (*client_config(&pki, Some(&leaf_a), false)).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(admin_b).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = ServerName::try_from(B).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Another name: no handshake.
    let client = client_config(&pki, Some(&leaf_a), false);
    let tcp = TcpStream::connect(admin_b).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(client, ServerName::try_from(C).unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    assert!(
        tls.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
            .is_err()
            || tls.read(&mut [0u8; 64]).map_or(true, |n| n == 0),
        "a TLS client asking for another name was served"
    );
    // Plaintext as before.
    assert_eq!(admin(&b, "/ready").0, 200);
}

/// A response whose body ends with its connection (no length, no chunks),
/// across a meshed HTTP/1 hop: the inbound proxy ends the TLS connection
/// with close_notify, so the outbound one sees the body end cleanly and
/// its client gets it whole and a clean close, not a reset (before, the
/// TLS connection was dropped: a truncation to the outbound side).
#[test]
fn close_delimited_bodies_end_cleanly_across_a_meshed_hop() {
    let pki = Pki::new("close-delimited");
    let app = Backend::start(|mut s| {
        let _ = read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe whole body");
    });
    let svc = format!("web.test:{}", app.addr.port());
    let (_b, a, _) = forward_through_b(&pki, &svc, app.addr, "");
    for _ in 0..3 {
        let mut s = connect(a.forward_addrs()[0]);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /cd HTTP/1.1\r\nhost: web\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let read = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "{read:?} after {text}");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("the whole body"), "{text}");
    }
}
