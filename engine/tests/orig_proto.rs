//! HTTP/1 ↔ HTTP/2 translation with real sockets:
//! - two ringmesh instances (outbound of one → inbound of the other) carry an
//!   HTTP/1 client's requests over one HTTP/2 connection (`l5d-orig-proto`),
//!   and the HTTP/1 origin behind the second sees plain HTTP/1.1;
//! - an HTTP/2 client reaches an HTTP/1-only service (`protocol = "http1"`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use ringmesh_engine::{IoDriver, Proxy};

/// `client → A (outbound, forward) ==h2==> B (inbound) → origin (HTTP/1)`.
struct Mesh {
    origin: Backend,
    a: Proxy,
    b: Proxy,
    /// A's static file; dropped after the proxies.
    _dir: TempDir,
}

fn mesh(driver: IoDriver, tag: &str) -> Mesh {
    let origin = http::origin("app");
    let target = origin.addr.to_string();
    let b = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    );
    let (dir, a) = h2_forward(driver, tag, b.inbound_addr().unwrap());
    Mesh {
        origin,
        a,
        b,
        _dir: dir,
    }
}

/// A proxy with one worker forwarding to `web.test:80`, whose one
/// endpoint `to` is hinted HTTP/2 (so HTTP/1 clients ride HTTP/2 to it);
/// first, its static file's directory, to drop after it.
fn h2_forward(driver: IoDriver, tag: &str, to: SocketAddr) -> (TempDir, Proxy) {
    let dir = TempDir::new(&format!("orig-proto-{tag}-{}", driver_name(driver)));
    let file = service_file(&dir, "web.test:80", &[to], "protocol_hint = \"h2\"\n");
    let a = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    (dir, a)
}

/// One HTTP/1.1 exchange on `s`: (status, head, body). Handles
/// Content-Length and chunked answers.
fn exchange(r: &mut BufReader<TcpStream>, request: &[u8]) -> (u16, String, Vec<u8>) {
    let (status, head, body, _) = exchange_with_trailers(r, request);
    (status, head, body)
}

/// As [`exchange`], also returning a chunked answer's trailer lines.
fn exchange_with_trailers(
    r: &mut BufReader<TcpStream>,
    request: &[u8],
) -> (u16, String, Vec<u8>, String) {
    r.get_mut().write_all(request).unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let status: u16 = head[9..12].parse().unwrap();
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    let mut trailers = String::new();
    if request.starts_with(b"HEAD ") {
        // No body, whatever Content-Length says.
    } else if let Some(len) = field("content-length") {
        body.resize(
            len.parse()
                .unwrap_or_else(|_| panic!("bad length in {head}")),
            0,
        );
        r.read_exact(&mut body)
            .unwrap_or_else(|e| panic!("{e}: body of {head}"));
    } else if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    trailers.push_str(&line);
                }
                break;
            }
            let at = body.len();
            body.resize(at + size, 0);
            r.read_exact(&mut body[at..]).unwrap();
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).unwrap();
        }
    }
    (status, head, body, trailers)
}

fn client(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

fn metrics(admin: SocketAddr) -> String {
    let mut r = client(admin);
    let (status, _, body) = exchange(
        &mut r,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// The sum of the series named `name` holding every one of `labels`
/// (`None` when there is none).
fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

fn http1_over_http2_between_two_proxies(driver: IoDriver) {
    let m = mesh(driver, "two");
    let addr = m.a.forward_addrs()[0];
    let mut c = client(addr);

    // The origin sees plain HTTP/1.1, without the mark, with the authority.
    let (status, _, body) = exchange(
        &mut c,
        b"GET /echo-head HTTP/1.1\r\nHost: web.test:80\r\nX-Custom: 1\r\n\r\n",
    );
    assert_eq!(status, 200);
    let seen = String::from_utf8(body).unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("get /echo-head http/1.1\r\n"), "{seen}");
    assert!(seen.contains("host: web.test:80\r\n"), "{seen}");
    assert!(seen.contains("x-custom: 1\r\n"), "{seen}");
    assert!(
        !seen.contains("l5d-orig-proto"),
        "the mark is removed: {seen}"
    );

    // Bodies both ways, both framings, on the same client connection.
    let mut upload = vec![0u8; 300_000];
    Pattern::new(3).fill(&mut upload);
    let mut sum = Fnv::default();
    sum.update(&upload);
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: web.test:80\r\nContent-Length: {}\r\n\r\n",
        upload.len()
    )
    .into_bytes();
    req.extend_from_slice(&upload);
    let (status, _, body) = exchange(&mut c, &req);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("{} {:016x}\n", upload.len(), sum.0)
    );

    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: web.test:80\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for part in upload.chunks(70_000) {
        req.extend_from_slice(format!("{:x};x=y\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, _, body) = exchange(&mut c, &req);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("{} {:016x}\n", upload.len(), sum.0),
        "a chunked upload arrives whole"
    );

    let (status, head, body) = exchange(
        &mut c,
        b"GET /download/2000000 HTTP/1.1\r\nHost: web.test:80\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 2000000"),
        "{head}"
    );
    let mut want = vec![0u8; 2_000_000];
    Pattern::new(7).fill(&mut want);
    assert!(body == want, "2 MB download intact");

    // Trailers cross both translations (HTTP/1 chunked → HTTP/2 trailers
    // in B, back to chunked in A), both ways.
    let (status, head, body, trailers) = exchange_with_trailers(
        &mut c,
        b"GET /chunked HTTP/1.1\r\nHost: web.test:80\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        !head.to_ascii_lowercase().contains("l5d-orig-proto"),
        "{head}"
    );
    assert_eq!(body, b"hello world");
    assert_eq!(trailers.to_ascii_lowercase(), "x-trailer: yes\r\n");
    let (status, _, body) = exchange(
        &mut c,
        b"POST /echo-trailers HTTP/1.1\r\nHost: web.test:80\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\nX-Checksum: 42\r\nKeep-Alive: timeout=5\r\nX-Multi: a\r\nx-multi: b\r\n\r\n",
    );
    assert_eq!(status, 200);
    let echoed = String::from_utf8(body).unwrap().to_ascii_lowercase();
    assert!(echoed.contains("x-checksum: 42\r\n"), "{echoed}");
    assert!(
        echoed.contains("x-multi: a\r\n") && echoed.contains("x-multi: b\r\n"),
        "{echoed}"
    );
    assert!(
        !echoed.contains("keep-alive"),
        "connection-specific fields do not cross HTTP/2: {echoed}"
    );

    let (status, _, _) = exchange(
        &mut c,
        b"GET /status/503 HTTP/1.1\r\nHost: web.test:80\r\n\r\n",
    );
    assert_eq!(status, 503);
    let (status, _, body) = exchange(&mut c, b"HEAD /x HTTP/1.1\r\nHost: web.test:80\r\n\r\n");
    assert_eq!((status, body.len()), (200, 0));

    // 16 concurrent keep-alive clients: all answered, over ONE connection
    // between the two proxies (HTTP/1 would need one per client).
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = client(addr);
                for _ in 0..20 {
                    let (status, _, body) = exchange(
                        &mut c,
                        format!(
                            "GET /hello HTTP/1.1\r\nHost: web.test:80\r\nX-Client: {i}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    assert_eq!((status, body.as_slice()), (200, &b"hello from app\n"[..]));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = metrics(m.b.admin_addr().unwrap());
    let opened = series(
        &text,
        "tcp_open_total",
        &["direction=\"inbound\"", "peer=\"src\""],
    )
    .expect("inbound connections counted");
    assert_eq!(
        opened, 1.0,
        "one HTTP/2 connection between the proxies:\n{text}"
    );
    let requests = series(&text, "request_total", &["direction=\"inbound\""]).unwrap();
    assert_eq!(requests, 328.0, "every request went through B: {requests}");
    drop(m.origin);
}
both_drivers!(two_proxies, super::http1_over_http2_between_two_proxies);

/// 8 clients with a request each in flight at once (the origin takes 100
/// ms to answer): how many connections did B accept from A? (With A's and
/// B's metrics, to show when it is not the number expected.)
fn connections_between_proxies(hint: bool) -> (f64, String) {
    let origin = lb::backend(b'o', Duration::from_millis(100));
    let target = origin.addr.to_string();
    // The client proxy speaks first, so the tests' short detection
    // timeout (100 ms) is not needed here; with it, a worker stalled that
    // long on a loaded machine could miss the deadline and not serve the
    // connection as HTTP/2, and the client proxy connected again (a CI run
    // counted two connections, every request still answered).
    let b = start_proxy(
        IoDriver::Uring,
        &[
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "10s"),
        ],
    );
    let dir = TempDir::new(&format!("orig-proto-conns-{hint}"));
    let file = service_file(
        &dir,
        "web.test:80",
        &[b.inbound_addr().unwrap()],
        if hint { "protocol_hint = \"h2\"\n" } else { "" },
    );
    let a = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("LINKERD2_PROXY_CORES", "1"),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    );
    let addr = a.forward_addrs()[0];
    let mut clients: Vec<_> = (0..8).map(|_| client(addr)).collect();
    for _ in 0..2 {
        for c in clients.iter_mut() {
            c.get_mut()
                .write_all(b"GET / HTTP/1.1\r\nHost: web.test:80\r\n\r\n")
                .unwrap();
        }
        for c in clients.iter_mut() {
            let (status, name) = lb::read_answer(c);
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            assert_eq!(name, b'o');
        }
    }
    let text = metrics(b.admin_addr().unwrap());
    assert_eq!(
        series(&text, "request_total", &["direction=\"inbound\""]),
        Some(16.0)
    );
    let opened = series(
        &text,
        "tcp_open_total",
        &["direction=\"inbound\"", "peer=\"src\""],
    )
    .unwrap();
    let a_text = a.admin_addr().map(metrics).unwrap_or_default();
    (opened, format!("B:\n{text}\nA:\n{a_text}"))
}

/// The hint is what turns the upgrade on: with it, concurrent requests
/// share one HTTP/2 connection; without it, HTTP/1 needs one per request
/// in flight.
#[test]
fn the_hint_multiplexes_concurrent_requests() {
    let (with_hint, m) = connections_between_proxies(true);
    assert_eq!(with_hint, 1.0, "{m}");
    let (without, m) = connections_between_proxies(false);
    assert_eq!(without, 8.0, "{m}");
}

/// An HTTP/1 origin behind a forward to `web.test:80`, which discovery
/// marks `protocol = "http1"` (so HTTP/2 clients are translated); with
/// its static file's directory, to drop after the proxy.
fn http1_service_forward(driver: IoDriver, tag: &str) -> (Backend, TempDir, Proxy) {
    let origin = http::origin("app");
    let (dir, proxy) = http1_service(driver, tag, origin.addr);
    (origin, dir, proxy)
}

/// A proxy forwarding to `web.test:80`, an HTTP/1-only service
/// (`protocol = "http1"`) of the origin at `addr`.
fn http1_service(driver: IoDriver, tag: &str, addr: SocketAddr) -> (TempDir, Proxy) {
    let dir = TempDir::new(&format!("orig-proto-{tag}-{}", driver_name(driver)));
    let file = service_file(&dir, "web.test:80", &[addr], "protocol = \"http1\"\n");
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
        ],
    );
    (dir, proxy)
}

/// An HTTP/2 client, a service discovery marks `protocol = "http1"`: the
/// origin gets HTTP/1.1 and the client HTTP/2 answers, bodies intact.
fn http2_client_to_http1_service(driver: IoDriver) {
    let (origin, _dir, proxy) = http1_service_forward(driver, "h2h1");
    let addr = proxy.forward_addrs()[0];
    common::h2::runtime().block_on(async move {
        let send = common::h2::connect(addr).await;
        let a = common::h2::request(&send, "GET", "/hello", None)
            .await
            .unwrap();
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, &b"hello from app\n"[..])
        );

        let a = common::h2::request(&send, "GET", "/echo-head", None)
            .await
            .unwrap();
        let seen = String::from_utf8(a.body).unwrap();
        assert!(seen.starts_with("GET /echo-head HTTP/1.1\r\n"), "{seen}");
        assert!(seen.to_ascii_lowercase().contains("\r\nhost: "), "{seen}");

        // A streamed upload (no content-length: chunked to the origin).
        let mut upload = vec![0u8; 500_000];
        Pattern::new(5).fill(&mut upload);
        let mut sum = Fnv::default();
        sum.update(&upload);
        let a = common::h2::request(&send, "POST", "/upload", Some(upload.clone()))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(
            String::from_utf8(a.body).unwrap(),
            format!("{} {:016x}\n", upload.len(), sum.0)
        );

        let a = common::h2::request(&send, "GET", "/download/3000000", None)
            .await
            .unwrap();
        let mut want = vec![0u8; 3_000_000];
        Pattern::new(7).fill(&mut want);
        assert!(a.status == 200 && a.body == want, "3 MB download intact");

        let a = common::h2::request(&send, "GET", "/chunked", None)
            .await
            .unwrap();
        assert_eq!(a.body, b"hello world");
        let trailers = a.trailers.expect("the chunked trailers as HTTP/2 trailers");
        assert_eq!(trailers.get("x-trailer").unwrap(), "yes");
        let a = common::h2::request(&send, "GET", "/close-delimited", None)
            .await
            .unwrap();
        assert_eq!(a.body, b"until the end");

        // Many streams at once share the pooled HTTP/1 connections.
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let send = send.clone();
                monoio::spawn(
                    async move { common::h2::request(&send, "GET", "/hello", None).await },
                )
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap().status, 200);
        }
    });
    drop(origin);
}
both_drivers!(h2_to_http1, super::http2_client_to_http1_service);

/// `content-length` twice over HTTP/2, translated to HTTP/1: values that
/// differ are refused (RST_STREAM PROTOCOL_ERROR; the origin would have
/// read one of them, perhaps not the one the body was checked against),
/// identical ones reach the origin as one field.
fn two_content_lengths(driver: IoDriver) {
    let (origin, _dir, proxy) = http1_service_forward(driver, "cl");
    let addr = proxy.forward_addrs()[0];
    common::h2::runtime().block_on(async move {
        let send = common::h2::connect(addr).await;
        for (second, ok) in [("6", false), ("5", true)] {
            let req = ::http::Request::builder()
                .method("POST")
                .uri("http://web.test/echo-head")
                .header("content-length", "5")
                .header("content-length", second)
                .body(())
                .unwrap();
            let mut s = send.clone().ready().await.unwrap();
            let (resp, mut body) = s.send_request(req, false).unwrap();
            body.send_data(bytes::Bytes::from_static(b"hello"), true)
                .unwrap();
            match resp.await {
                Err(e) => assert!(
                    !ok && e.reason() == Some(monoio_http::h2::Reason::PROTOCOL_ERROR),
                    "{second}: {e}"
                ),
                Ok(r) => {
                    assert!(ok && r.status() == 200, "{second}: {}", r.status());
                    let mut b = r.into_body();
                    let mut seen = Vec::new();
                    while let Some(chunk) = b.data().await {
                        seen.extend_from_slice(&chunk.unwrap());
                    }
                    let seen = String::from_utf8(seen).unwrap().to_ascii_lowercase();
                    assert_eq!(seen.matches("content-length: 5\r\n").count(), 1, "{seen}");
                    assert!(!seen.contains("content-length: 6"), "{seen}");
                }
            }
        }
    });
    drop(origin);
}
both_drivers!(two_content_lengths_over_http2, super::two_content_lengths);

/// An HTTP/2 upstream that fails a response after its head, in the same
/// read (so before anything reaches the client): a connection error, or
/// RST_STREAM NO_ERROR after part of the body. The HTTP/1 client gets a
/// 502 saying why. (The library counted the stream closed by the error as
/// ended, so the first read as a whole, empty 200; the second closed the
/// client's connection without a word.)
fn cut_after_head(driver: IoDriver) {
    use common::raw_h2::{raw_h2_origin, CUT_AFTER_HEAD};
    for (what, answer) in CUT_AFTER_HEAD {
        let origin = raw_h2_origin(answer);
        let (_dir, proxy) = h2_forward(driver, "cut", origin.addr);
        let mut s = TcpStream::connect(proxy.forward_addrs()[0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("the connection closes");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 502"), "{what}: {got:?}");
        assert!(got.contains("l5d-proxy-error"), "{what}: {got:?}");
        proxy.shutdown();
        proxy.wait();
    }
}
both_drivers!(
    a_response_cut_after_its_head_is_a_502,
    super::cut_after_head
);

/// A drain of A that begins while a request travels over HTTP/2: the
/// HTTP/1 response A writes is the client connection's last and says so
/// (`Connection: close`), arrives whole, and the connection then ends.
fn drain_closes_after_the_last_translated_response(driver: IoDriver) {
    let (got, requests) = std::sync::mpsc::channel();
    let release = std::sync::Arc::new(std::sync::Barrier::new(2));
    let gate = release.clone();
    let origin = Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line != "\r\n" {
                continue;
            }
            // A whole (bodyless) request: answer once the test says so.
            let _ = got.send(());
            gate.wait();
            if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast")
                .is_err()
            {
                return;
            }
        }
    });
    let target = origin.addr.to_string();
    let b = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_INBOUND_TARGET", &target),
        ],
    );
    let (_dir, a) = h2_forward(driver, "drain", b.inbound_addr().unwrap());
    let addr = a.forward_addrs()[0];
    let mut c = client(addr);
    let get = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n";
    // Served: no `Connection` header while A is not draining.
    c.get_mut().write_all(get).unwrap();
    requests.recv_timeout(Duration::from_secs(10)).unwrap();
    release.wait();
    let (status, head, body) = exchange(&mut c, b"");
    assert_eq!(status, 200, "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");
    assert_eq!(body, b"last");
    // The next request is at the origin when A starts draining.
    c.get_mut().write_all(get).unwrap();
    requests.recv_timeout(Duration::from_secs(10)).unwrap();
    a.shutdown();
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(
        addr
    )
    .is_err()));
    release.wait();
    let (status, head, body) = exchange(&mut c, b"");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close\r\n"),
        "the last response does not say so: {head}"
    );
    assert_eq!(body, b"last");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    a.wait();
    // B is left to the end of the process, as in the tests above.
    drop(b);
}
both_drivers!(
    drain_marks_the_last_translated_response_connection_close,
    super::drain_closes_after_the_last_translated_response
);

/// HTTP/1 clients that ask for large responses and stop reading them share
/// one upstream HTTP/2 connection (HTTP/1 over HTTP/2, one worker) with
/// everyone else; each stalled response keeps its stream window's worth
/// (64 KiB), more than the connection's 1 MiB window for 24 of them. They
/// do not hold the connection window, so another client's requests on the
/// same upstream connection are still answered. Without that, none was.
fn stalled_http1_clients_do_not_stop_the_upstream_connection(driver: IoDriver) {
    let origin = common::h2::origin(None);
    let (_dir, a) = h2_forward(driver, "stall", origin.addr);
    let addr = a.forward_addrs()[0];
    let hello = |what: &str| {
        let mut r = BufReader::new(connect(addr));
        r.get_mut()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (status, _, body) = exchange(&mut r, b"GET /hello HTTP/1.1\r\nHost: web.test\r\n\r\n");
        assert_eq!((status, &body[..]), (200, &b"hello from h2"[..]), "{what}");
    };
    hello("before");
    let streams0 = origin
        .counters
        .streams
        .load(std::sync::atomic::Ordering::Relaxed);
    // Small receive buffers, so the proxy's writes block soon; 16 MiB
    // answers, more than the sockets take.
    let stalled: Vec<TcpStream> = (0..24)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&addr.into()).unwrap();
            let mut s: TcpStream = s.into();
            s.write_all(b"GET /bytes/16777216 HTTP/1.1\r\nHost: web.test\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || origin
            .counters
            .streams
            .load(std::sync::atomic::Ordering::Relaxed)
            >= streams0 + 24),
        "the stalled clients' requests reached the origin"
    );
    // Their responses fill what the sockets take, then their streams'.
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..5 {
        hello(&format!("beside 24 stalled clients, request {i}"));
    }
    drop(stalled);
    a.shutdown();
    a.wait();
}
both_drivers!(
    stalled_http1_clients,
    super::stalled_http1_clients_do_not_stop_the_upstream_connection
);

/// An inbound proxy in front of `to` (admin on).
fn inbound_in_front(to: &Backend) -> Proxy {
    let target = to.addr.to_string();
    start_proxy(
        IoDriver::Uring,
        &[
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_INBOUND_TARGET", &target),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
            ("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "10s"),
        ],
    )
}

/// A one-worker proxy forwarding to the service `web.test:80` over
/// `endpoints` (its static file, with `extra` lines, in `dir`), admin on.
fn web_proxy(dir: &TempDir, endpoints: &[SocketAddr], extra: &str) -> Proxy {
    let file = service_file(dir, "web.test:80", endpoints, extra);
    start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("LINKERD2_PROXY_CORES", "1"),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0"),
        ],
    )
}

/// A 503 (or a status the route retries) is retried on another endpoint
/// whatever the protocols on either side: an HTTP/1 client's request
/// carried over HTTP/2 to meshed endpoints (their inbound proxies in front
/// of a healthy and a failing backend), and an HTTP/2 client's request to
/// an HTTP/1-only service. The client sees only the healthy backend's
/// answers; the failing one was asked (a retry counted against it).
#[test]
fn answers_503_are_retried_across_translations() {
    let delay = Duration::from_micros(100);
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (good, bad) = (
        lb::backend(b'a', delay),
        lb::switchable(b'c', delay, failing),
    );
    let (b_good, b_bad) = (inbound_in_front(&good), inbound_in_front(&bad));
    let retries = |a: &Proxy, endpoint: SocketAddr| {
        let text = metrics(a.admin_addr().unwrap());
        let target = format!("target_addr=\"{endpoint}\"");
        series(&text, "ringmesh_retries_total", &[&target]).unwrap_or(0.0)
    };

    // HTTP/1 client, HTTP/2 between the proxies.
    let dir = TempDir::new("orig-proto-retry-h1");
    let eps = [
        b_good.inbound_addr().unwrap(),
        b_bad.inbound_addr().unwrap(),
    ];
    let a = web_proxy(&dir, &eps, "protocol_hint = \"h2\"\n");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally = std::sync::Arc::new(lb::Tally::default());
    let clients = lb::answers_counted(a.forward_addrs()[0], 4, stop.clone(), false, tally.clone());
    tally.wait(Duration::from_secs(10), |t| t.answers() > 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<_> = clients
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(seen.len() > 50, "{} answers", seen.len());
    let failed = seen.iter().filter(|(_, bad, n)| *bad || *n != b'a').count();
    assert_eq!(
        failed,
        0,
        "of {} answers, {failed} were not the healthy backend's",
        seen.len()
    );
    assert!(
        retries(&a, eps[1]) >= 1.0,
        "no retry counted against the failing endpoint"
    );
    drop(a);

    // HTTP/2 client, HTTP/1-only service.
    let dir2 = TempDir::new("orig-proto-retry-h2");
    let a = web_proxy(&dir2, &[good.addr, bad.addr], "protocol = \"http1\"\n");
    let addr = a.forward_addrs()[0];
    let bodies = common::h2::runtime().block_on(async move {
        let send = common::h2::connect(addr).await;
        let calls: Vec<_> = (0..60)
            .map(|_| {
                let send = send.clone();
                monoio::spawn(async move { common::h2::request(&send, "GET", "/", None).await })
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            let a = c.await.unwrap();
            out.push((a.status, a.body));
        }
        out
    });
    let failed = bodies
        .iter()
        .filter(|(s, b)| *s != 200 || b != b"a")
        .count();
    assert_eq!(
        failed, 0,
        "{failed} of 60 HTTP/2 requests failed: {bodies:?}"
    );
    assert!(
        retries(&a, bad.addr) >= 1.0,
        "no retry counted against the failing endpoint"
    );
}

/// A kept body (a declared length within the retry limit) goes again
/// with its request across the translations: a PUT from an HTTP/1 client
/// carried over HTTP/2 to meshed endpoints, and from an HTTP/2 client to
/// an HTTP/1-only service. Every answer is the healthy backend's, which
/// got each body whole; the failing one got bodies too (it was asked).
/// Four concurrent clients, until the failing backend was asked 3 times
/// (bounded): one client alone would leave it after its first answer.
#[test]
fn kept_bodies_are_retried_across_translations() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let delay = Duration::from_micros(100);
    let failing = Arc::new(AtomicBool::new(true));
    let healthy = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (good, bad) = (
        lb::body_backend(b'a', delay, healthy, tx.clone()),
        lb::body_backend(b'c', delay, failing, tx),
    );
    let body: Arc<Vec<u8>> = Arc::new((0..3000).map(common::h2::pattern_byte).collect());
    // Runs `client` on 4 threads until the failing backend got 3 bodies
    // (at most 10 s); checks every body a backend got, and returns the
    // clients' answers.
    let run = |what: &str, client: &(dyn Fn(&AtomicBool) -> Vec<String> + Sync)| {
        let stop = AtomicBool::new(false);
        let (answers, got) = std::thread::scope(|s| {
            let clients: Vec<_> = (0..4).map(|_| s.spawn(|| client(&stop))).collect();
            let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while got.iter().filter(|(n, _)| *n == b'c').count() < 3
                && std::time::Instant::now() < deadline
            {
                if let Ok(b) = rx.recv_timeout(Duration::from_millis(50)) {
                    got.push(b);
                }
            }
            stop.store(true, Ordering::Relaxed);
            let answers: Vec<String> = clients
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect();
            got.extend(rx.try_iter());
            (answers, got)
        });
        assert!(
            got.iter().all(|(_, b)| *b == *body),
            "{what}: a backend got a body cut or changed"
        );
        let to_c = got.iter().filter(|(n, _)| *n == b'c').count();
        assert!(
            to_c >= 3,
            "{what}: the failing backend was asked {to_c} times"
        );
        answers
    };

    // HTTP/1 client, HTTP/2 between the proxies.
    let (b_good, b_bad) = (inbound_in_front(&good), inbound_in_front(&bad));
    let dir = TempDir::new("orig-proto-retry-body-h1");
    let eps = [
        b_good.inbound_addr().unwrap(),
        b_bad.inbound_addr().unwrap(),
    ];
    let a = web_proxy(&dir, &eps, "protocol_hint = \"h2\"\n");
    let addr = a.forward_addrs()[0];
    let head = format!(
        "PUT / HTTP/1.1\r\nHost: web.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let request = [head.as_bytes(), &body].concat();
    let answers = run("HTTP/1 over HTTP/2", &|stop| {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            w.write_all(&request).unwrap();
            let (status, text) = lb::read_body_answer(&mut r);
            answers.push(format!("{} {text}", status.trim_end()));
        }
        answers
    });
    assert!(
        answers.iter().all(|a| a == "HTTP/1.1 200 OK a 3000"),
        "HTTP/1 over HTTP/2: {answers:?}"
    );
    drop((a, b_good, b_bad));

    // HTTP/2 client (curl: a declared length), HTTP/1-only service.
    let dir2 = TempDir::new("orig-proto-retry-body-h2");
    let a = web_proxy(&dir2, &[good.addr, bad.addr], "protocol = \"http1\"\n");
    let upload = dir2.path().join("body");
    std::fs::write(&upload, &*body).unwrap();
    let url = format!("http://{}/", a.forward_addrs()[0]);
    let answers = run("HTTP/2 to HTTP/1", &|stop| {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let out = std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--http2-prior-knowledge",
                    "-X",
                    "PUT",
                    "--data-binary",
                ])
                .arg(format!("@{}", upload.display()))
                .args(["-w", " %{http_code}", "--max-time", "10", &url])
                .output()
                .unwrap();
            answers.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        answers
    });
    assert!(
        answers.iter().all(|a| a == "a 3000 200"),
        "HTTP/2 to HTTP/1: {answers:?}"
    );
}

/// Data segments `s` has received (`TCP_INFO`'s `tcpi_data_segs_in`).
fn data_segs_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // struct tcp_info: tcpi_data_segs_in is the u32 at byte 152 (Linux 4.6+).
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is valid for `len` bytes; the kernel writes at most that.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len >= 156,
        "TCP_INFO too short ({len} bytes) for tcpi_data_segs_in"
    );
    u32::from_ne_bytes(info[152..156].try_into().unwrap())
}

/// A small message translated between HTTP/1 and HTTP/2 travels in one
/// TCP segment: a response to the HTTP/1 client (head, body and a chunked
/// body's end in one write, not a head and then a body), and a request
/// with a small body to the HTTP/1 origin (head and body together). Each
/// split is an extra send, segment and wake-up on both ends, paid by every
/// meshed HTTP/1 request. The client and origin write each message in one
/// write, so each proxy gets it whole.
#[test]
fn small_translated_messages_are_one_segment() {
    const EACH: usize = 20;
    // Answers GETs alternately with a length and chunked; a POST with its
    // connection's number and the data segments it has received so far.
    static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let origin = Backend::start(|s| {
        let conn = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let (mut n, mut length) = (0, 0);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => {}
                Ok(_) => {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    continue;
                }
            }
            let answer = if length > 0 {
                let mut body = vec![0; length];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                length = 0;
                let segs = format!("{conn} {}", data_segs_in(&w));
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{segs}",
                    segs.len()
                )
            } else {
                n += 1;
                if n % 2 == 1 {
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_string()
                } else {
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n"
                        .to_string()
                }
            };
            if w.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    });
    let b = inbound_in_front(&origin);
    let (_dir, a) = h2_forward(IoDriver::Uring, "segments", b.inbound_addr().unwrap());
    let mut c = client(a.forward_addrs()[0]);
    let get = b"GET / HTTP/1.1\r\nHost: web.test:80\r\n\r\n";
    // The first exchanges open the connections between the proxies and
    // to the origin.
    for _ in 0..2 {
        let (status, _, body) = exchange(&mut c, get);
        assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
    }
    let before = data_segs_in(c.get_ref());
    for _ in 0..2 * EACH {
        let (status, head, body) = exchange(&mut c, get);
        assert_eq!((status, &body[..]), (200, &b"ok\n"[..]), "{head}");
    }
    let segments = data_segs_in(c.get_ref()) - before;
    // One per response (a stray split allowed); a head apart from its
    // body makes it 2 per length-framed and 3 per chunked response.
    assert!(
        segments as usize <= 2 * EACH + 2,
        "{segments} segments for {} responses",
        2 * EACH
    );

    let mut post = b"POST / HTTP/1.1\r\nHost: web.test:80\r\nContent-Length: 100\r\n\r\n".to_vec();
    post.extend_from_slice(&[b'x'; 100]);
    let mut seen = Vec::new();
    for _ in 0..EACH + 1 {
        let (status, head, body) = exchange(&mut c, &post);
        assert_eq!(status, 200, "{head}");
        let body = String::from_utf8(body).unwrap();
        let (conn, segs) = body.split_once(' ').unwrap();
        seen.push((conn.to_string(), segs.parse::<u32>().unwrap()));
    }
    // Differences on one origin connection (it saw the GETs too).
    let per_request: Vec<u32> = seen
        .windows(2)
        .filter(|p| p[0].0 == p[1].0)
        .map(|p| p[1].1 - p[0].1)
        .collect();
    assert!(
        per_request.len() >= EACH / 2,
        "POSTs spread over connections: {seen:?}"
    );
    let split = per_request.iter().filter(|&&d| d > 1).count();
    assert!(
        split <= 1,
        "segments per request at the origin: {per_request:?}"
    );
}

/// An HTTP/1 client that goes away while its request, carried over HTTP/2
/// to a meshed endpoint, waits for an answer that does not come: the
/// upstream stream is reset (RST_STREAM CANCEL) instead of being held until
/// the upstream answers. (Before, the client's connection sat in
/// CLOSE-WAIT and the stream stayed open upstream.)
fn leaving_client_resets(driver: IoDriver) {
    use common::raw_h2::raw_h2_origin_seeing;
    let (resets, seen) = std::sync::mpsc::channel();
    let origin = raw_h2_origin_seeing(
        |_| Vec::new(),
        move |kind, id| {
            if kind == 3 {
                let _ = resets.send(id);
            }
        },
    );
    let (_dir, proxy) = h2_forward(driver, "leave", origin.addr);
    let mut s = TcpStream::connect(proxy.forward_addrs()[0]).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(s);
    let reset = seen.recv_timeout(Duration::from_secs(4));
    assert_eq!(reset.ok(), Some(1), "the upstream stream was not reset");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_client_that_leaves_resets_its_stream,
    super::leaving_client_resets
);

/// An HTTP/2 client whose request goes to an HTTP/1-only service
/// (`protocol = "http1"`) resets its stream, or closes its connection,
/// while the origin has not answered, or has sent a head and part of the
/// body and then nothing: the HTTP/1 request is cancelled and its upstream
/// connection closed, as for HTTP/2 upstreams. (Before, the upstream
/// connection was held until the origin sent more.)
fn leaving_h2_client_cancels(driver: IoDriver) {
    use common::raw_h2::frame;
    let (events, seen) = std::sync::mpsc::channel::<&'static str>();
    let silent = Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut partial = false;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line == "\r\n" => {
                    if partial {
                        let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc");
                    }
                    let _ = events.send("request");
                }
                Ok(_) => partial |= line.starts_with("GET /partial"),
            }
        }
        let _ = events.send("closed");
    });
    let dir = TempDir::new(&format!("orig-proto-leave-h2-{}", driver_name(driver)));
    let file = service_file(
        &dir,
        "web.test:80",
        &[silent.addr],
        "protocol = \"http1\"\n",
    );
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
        ],
    );
    for (reset, path) in [
        (true, "/slow"),
        (false, "/slow"),
        (true, "/partial"),
        (false, "/partial"),
    ] {
        let mut c = TcpStream::connect(proxy.forward_addrs()[0]).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        let mut head = b"\x82\x86\x04".to_vec();
        head.push(path.len() as u8);
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b"\x01\x08web.test");
        out.extend(frame(1, 5, 1, &head));
        c.write_all(&out).unwrap();
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(5)).ok(),
            Some("request")
        );
        if reset {
            c.write_all(&frame(3, 0, 1, &8u32.to_be_bytes())).unwrap();
        } else {
            drop(c.try_clone().unwrap());
            c.shutdown(std::net::Shutdown::Both).unwrap();
        }
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(3)).ok(),
            Some("closed"),
            "{path}, reset {reset}: the HTTP/1 upstream connection was held"
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    an_http2_client_that_leaves_cancels_its_http1_request,
    super::leaving_h2_client_cancels
);

/// An HTTP/1 origin that answers every request with its head (as the
/// body) and tells `seen` its request line.
fn head_echo(seen: std::sync::mpsc::Sender<String>) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => head.push_str(&line),
                }
                if line == "\r\n" {
                    break;
                }
            }
            let _ = seen.send(head.lines().next().unwrap_or("").to_string());
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
                head.len()
            );
            if w.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// HTTP/2 requests that have no HTTP/1 form, sent raw (hand-made HPACK)
/// to an HTTP/1 service (`protocol = "http1"`), never reach it: a
/// `:authority` with userinfo, a `:path` that is a query alone, `*` for
/// another method than OPTIONS (RST_STREAM PROTOCOL_ERROR, RFC 9113
/// §8.3.1), and a CONNECT tunnel (501: its bytes would have gone as a
/// chunked body of `CONNECT / HTTP/1.1`, read by the origin as requests
/// of their own). `OPTIONS *` still goes; a request without any authority
/// gets an empty `Host` (RFC 9112 §3.2), which HTTP/1 servers require.
fn h2_requests_without_an_http1_form(driver: IoDriver) {
    use common::raw_h2::{frame, read_frame};
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let origin = head_echo(seen_tx);
    let (_dir, proxy) = http1_service(driver, "no-h1-form", origin.addr);
    // (HPACK: 0x82 GET, 0x86 http; 0x01 :authority, 0x02 :method and
    // 0x04 :path as literal values of static names.)
    let lit = |index: u8, value: &str| {
        let mut v = vec![index, value.len() as u8];
        v.extend_from_slice(value.as_bytes());
        v
    };
    let get = |authority: &str, path: &str| {
        let mut b = b"\x82\x86".to_vec();
        b.extend(lit(4, path));
        if !authority.is_empty() {
            b.extend(lit(1, authority));
        }
        b
    };
    let mut options = lit(2, "OPTIONS");
    options.extend(b"\x86");
    options.extend(lit(4, "*"));
    options.extend(lit(1, "web.test"));
    let mut connect = lit(2, "CONNECT");
    connect.extend(lit(1, "web.test:80"));
    // (What the client gets: RST_STREAM's code, or the status byte.)
    let cases: [(&str, Vec<u8>, &str, Option<&str>); 6] = [
        ("userinfo", get("evil@web.test", "/echo"), "reset 1", None),
        ("query alone", get("web.test", "?a=b"), "reset 1", None),
        ("GET *", get("web.test", "*"), "reset 1", None),
        ("CONNECT", connect, "status 501", None),
        (
            "OPTIONS *",
            options,
            "status 200",
            Some("OPTIONS * HTTP/1.1"),
        ),
        (
            "no authority",
            get("", "/echo"),
            "status 200",
            Some("GET /echo HTTP/1.1"),
        ),
    ];
    for (what, block, outcome, line) in cases {
        let mut c = TcpStream::connect(proxy.forward_addrs()[0]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        out.extend(frame(1, 5, 1, &block));
        c.write_all(&out).unwrap();
        let mut body = Vec::new();
        let got = loop {
            let Some((kind, flags, stream, payload)) = read_frame(&mut c) else {
                break "closed".to_string();
            };
            match (kind, stream) {
                (3, 1) => {
                    break format!(
                        "reset {}",
                        u32::from_be_bytes(payload[..4].try_into().unwrap())
                    )
                }
                // A 200 head (0x88) with a body to come: read on.
                (1, 1) if payload.first() == Some(&0x88) && flags & 1 == 0 => {}
                (1, 1) => {
                    // (Not Huffman-coded: the proxy's encoder writes a
                    // status outside the static table as its digits.)
                    let status = match payload.first() {
                        Some(0x88) => "200".to_string(),
                        _ => payload
                            .windows(3)
                            .find(|w| w.iter().all(u8::is_ascii_digit))
                            .map(|w| String::from_utf8_lossy(w).into_owned())
                            .unwrap_or_default(),
                    };
                    break format!("status {status}");
                }
                (0, 1) => {
                    body.extend_from_slice(&payload);
                    if flags & 1 != 0 {
                        break "status 200".to_string();
                    }
                }
                _ => {}
            }
        };
        assert_eq!(got, outcome, "{what}");
        let reached = seen.recv_timeout(Duration::from_millis(300)).ok();
        assert_eq!(reached.as_deref(), line, "{what}: what reached the origin");
        if what == "no authority" {
            let body = String::from_utf8_lossy(&body).to_ascii_lowercase();
            assert!(body.contains("\r\nhost: \r\n"), "{body:?}");
        }
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    http2_requests_without_an_http1_form_are_refused,
    super::h2_requests_without_an_http1_form
);

/// A client's request trailers never carry `l5d-client-id` on (the
/// identity the proxy vouches for: removed from the head, and so from
/// trailers), nor, written as an HTTP/1 chunked trailer section, fields a
/// trailer must not hold (RFC 9110 §6.5.1: `host`, `content-length`,
/// `authorization` ...): HTTP/2 to an HTTP/1 service, and HTTP/2 to
/// HTTP/2 (where only `l5d-client-id` goes).
#[test]
fn request_trailers_are_filtered() {
    let h1 = http::origin("app");
    let h2 = common::h2::origin(None);
    for (tag, addr, extra, path) in [
        ("h1", h1.addr, "protocol = \"http1\"\n", "/echo-trailers"),
        ("h2", h2.addr, "", "/headers"),
    ] {
        let dir = TempDir::new(&format!("orig-proto-trailers-{tag}"));
        let file = service_file(&dir, "web.test:80", &[addr], extra);
        let proxy = start_proxy(
            IoDriver::Uring,
            &[
                ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
                ("RINGMESH_DISCOVERY_STATIC", &file),
            ],
        );
        let fwd = proxy.forward_addrs()[0];
        let seen = common::h2::runtime().block_on(async move {
            let send = common::h2::connect(fwd).await;
            let req = ::http::Request::builder()
                .method("POST")
                .uri(format!("http://web.test{path}"))
                .body(())
                .unwrap();
            let mut s = send.ready().await.unwrap();
            let (resp, mut body) = s.send_request(req, false).unwrap();
            body.send_data(bytes::Bytes::from_static(b"hello"), false)
                .unwrap();
            let mut t = ::http::HeaderMap::new();
            for (n, v) in [
                ("x-ok", "1"),
                (
                    "l5d-client-id",
                    "admin.ns.serviceaccount.identity.linkerd.cluster.local",
                ),
                ("host", "evil.example"),
                ("content-length", "999"),
                ("authorization", "Bearer x"),
            ] {
                t.insert(n, v.parse().unwrap());
            }
            body.send_trailers(t).unwrap();
            let r = resp.await.unwrap();
            assert_eq!(r.status(), 200, "{tag}");
            let mut b = r.into_body();
            let mut seen = Vec::new();
            while let Some(chunk) = b.data().await {
                seen.extend_from_slice(&chunk.unwrap());
            }
            String::from_utf8(seen).unwrap().to_ascii_lowercase()
        });
        assert!(seen.contains("x-ok: 1"), "{tag}: {seen}");
        assert!(!seen.contains("l5d-client-id"), "{tag}: {seen}");
        if tag == "h1" {
            for gone in ["evil.example", "999", "bearer"] {
                assert!(!seen.contains(gone), "{tag}: {gone} in {seen}");
            }
        }
        proxy.shutdown();
        proxy.wait();
    }
}

/// Trailers re-encoded from HTTP/1 to HTTP/2 are filtered as the other
/// way: a chunked request's trailer section sent over HTTP/2 to an
/// `h2`-hinted origin, and a chunked response's from an HTTP/1-only
/// service to an HTTP/2 client, lose `l5d-client-id` and the fields a
/// trailer must not carry; others go on. (Before, all went on.)
#[test]
fn trailers_translated_to_http2_are_filtered() {
    let forbidden = "L5d-Client-Id: admin.ns.serviceaccount.identity.linkerd.cluster.local\r\nHost: evil.example\r\nContent-Length: 99\r\n";
    // The request's, to an HTTP/2 origin that lists them.
    let h2_origin = common::h2::origin(None);
    let (_dir, proxy) = h2_forward(IoDriver::Uring, "trailers-to-h2", h2_origin.addr);
    let mut c = BufReader::new(TcpStream::connect(proxy.forward_addrs()[0]).unwrap());
    let req = format!(
        "POST /headers HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Ok: 1\r\n{forbidden}\r\n"
    );
    let (status, _, body) = exchange(&mut c, req.as_bytes());
    let body = String::from_utf8_lossy(&body).to_ascii_lowercase();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("trailer x-ok: 1"), "{body}");
    for gone in ["l5d-client-id", "evil.example", "trailer content-length"] {
        assert!(!body.contains(gone), "{gone} in {body}");
    }
    proxy.shutdown();
    proxy.wait();
    // The response's, from an HTTP/1 origin, to an HTTP/2 client.
    let origin = Backend::answering(format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\nX-T: ok\r\n{forbidden}\r\n"
    ));
    let (_dir, proxy) = http1_service(IoDriver::Uring, "trailers-from-h1", origin.addr);
    let fwd = proxy.forward_addrs()[0];
    let answer = common::h2::runtime().block_on(async move {
        let send = common::h2::connect(fwd).await;
        common::h2::request(&send, "GET", "/", None).await.unwrap()
    });
    assert_eq!(answer.status, 200);
    let trailers = answer.trailers.expect("trailers");
    assert_eq!(trailers.get("x-t").map(|v| v.as_bytes()), Some(&b"ok"[..]));
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    proxy.shutdown();
    proxy.wait();
}

/// A 204 never reaches a client with `Content-Length` (RFC 9110 §8.6; a
/// lenient client taking it for a length would read the next response as
/// its body): from an HTTP/2 origin to an HTTP/1 client (`h2`-hinted
/// service), from an HTTP/1 origin to an HTTP/2 client (HTTP/1-only
/// service) and HTTP/1 to HTTP/1; the client's next request is answered.
#[test]
fn a_204_loses_its_content_length() {
    use common::raw_h2::{frame, raw_h2_origin};
    // `:status: 204` (static 9), `content-length: 12` (a literal of
    // static name 28).
    let h2_origin = raw_h2_origin(|id| frame(1, 5, id, b"\x89\x0f\x0d\x0212"));
    let h1_origin =
        Backend::answering(&b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"[..]);
    let dir = TempDir::new("orig-proto-204-plain");
    let plain = service_file(&dir, "web.test:80", &[h1_origin.addr], "");
    let (_d1, to_h2) = h2_forward(IoDriver::Uring, "204-to-h2", h2_origin.addr);
    let to_h1 = start_proxy(
        IoDriver::Uring,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &plain),
        ],
    );
    for (what, proxy) in [("HTTP/2 origin", &to_h2), ("HTTP/1 origin", &to_h1)] {
        let s = TcpStream::connect(proxy.forward_addrs()[0]).unwrap();
        // (A client reading the length as a body's waits for it.)
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut c = BufReader::new(s);
        for _ in 0..2 {
            let (status, head, body) =
                exchange(&mut c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
            assert_eq!(status, 204, "{what}: {head}");
            assert!(
                !head.to_ascii_lowercase().contains("content-length"),
                "{what}: {head}"
            );
            assert!(body.is_empty(), "{what}");
        }
    }
    let (_d2, to_h1_service) = http1_service(IoDriver::Uring, "204-from-h1", h1_origin.addr);
    let fwd = to_h1_service.forward_addrs()[0];
    let answer = common::h2::runtime().block_on(async move {
        let send = common::h2::connect(fwd).await;
        common::h2::request(&send, "GET", "/", None).await.unwrap()
    });
    assert_eq!(answer.status, 204);
    assert!(
        answer.headers.get("content-length").is_none(),
        "{:?}",
        answer.headers
    );
    for p in [to_h2, to_h1, to_h1_service] {
        p.shutdown();
        p.wait();
    }
}

/// A peer proxy's answer fields (linkerd2-proxy's inbound sends
/// `l5d-proxy-error` and `l5d-proxy-connection: close` with some of its
/// own answers) are consumed, as linkerd2-proxy's outbound does: the
/// HTTP/1 client gets the response without them, and, the endpoint being
/// a balanced service's, its connection stays open (linkerd2-proxy closes
/// it only for a pod reached directly).
#[test]
fn a_peer_proxys_answer_fields_are_consumed() {
    use common::raw_h2::{frame, raw_h2_origin};
    // `:status: 502` (a literal of static name 8), then
    // `l5d-proxy-connection: close`, `l5d-proxy-error: boom` and
    // `content-length: 0` (static 28).
    let origin = raw_h2_origin(|id| {
        let mut block = b"\x08\x03502".to_vec();
        block.extend(b"\x00\x14l5d-proxy-connection\x05close");
        block.extend(b"\x00\x0fl5d-proxy-error\x04boom");
        block.extend(b"\x0f\x0d\x010");
        frame(1, 5, id, &block)
    });
    let (_dir, proxy) = h2_forward(IoDriver::Uring, "peer-close", origin.addr);
    let s = TcpStream::connect(proxy.forward_addrs()[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = BufReader::new(s);
    for _ in 0..2 {
        let (status, head, _) = exchange(&mut c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
        assert_eq!(status, 502, "{head}");
        let head = head.to_ascii_lowercase();
        assert!(!head.contains("l5d-proxy-connection"), "{head}");
        assert!(!head.contains("boom"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    // An HTTP/2 client (HTTP/2 to HTTP/2) does not get them either.
    h2_client_gets_no_peer_fields(proxy.forward_addrs()[0]);
    proxy.shutdown();
    proxy.wait();
}

/// The same fields from an HTTP/1 upstream (a linkerd2-proxy peer over
/// HTTP/1), to an HTTP/2 client of an HTTP/1 service: consumed too.
#[test]
fn a_peer_proxys_answer_fields_stop_at_http2_clients_of_http1_services() {
    let backend = Backend::answering(
        "HTTP/1.1 502 Bad Gateway\r\nl5d-proxy-error: boom\r\nl5d-proxy-connection: close\r\nContent-Length: 0\r\n\r\n",
    );
    let dir = TempDir::new("orig-proto-peer-fields-h1");
    let p = web_proxy(&dir, &[backend.addr], "protocol = \"http1\"\n");
    h2_client_gets_no_peer_fields(p.forward_addrs()[0]);
}

/// An HTTP/2 client (curl) of `addr` gets the 502 without the peer's
/// answer fields (`l5d-proxy-error: boom`, `l5d-proxy-connection`).
fn h2_client_gets_no_peer_fields(addr: SocketAddr) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--http2-prior-knowledge", "--max-time", "10"])
        .arg(format!("http://{addr}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 502"), "{text}");
    assert!(
        !text.contains("boom") && !text.contains("l5d-proxy-connection"),
        "{text}"
    );
}

/// The same field reaching an HTTP/2 client (a meshed peer's answer on the
/// HTTP/2 → HTTP/2 path) is removed: it speaks of the connection between
/// the proxies, and an HTTP/2 client's connection carries other streams.
#[test]
fn a_peer_proxys_connection_field_stops_at_http2_clients() {
    let origin = h2::origin(None);
    let dir = TempDir::new("orig-proto-peer-close-h2");
    let p = web_proxy(&dir, &[origin.addr], "protocol_hint = \"h2\"\n");
    let url = format!("http://{}/peer-close", p.forward_addrs()[0]);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
            &url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(text.ends_with("closing"), "{text}");
    assert!(!text.contains("l5d-proxy-connection"), "{text}");
}

/// A raw HTTP/2 connection to `addr` with a `GET path` (authority
/// `web.test`, END_STREAM) on each stream of `ids`.
fn h2_gets(addr: SocketAddr, path: &str, ids: &[u32]) -> TcpStream {
    use common::raw_h2::frame;
    let mut c = TcpStream::connect(addr).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    // :method GET, :scheme http (indexed); :path and :authority literal.
    let mut head = vec![0x82, 0x86, 0x04, path.len() as u8];
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b"\x01\x08web.test");
    for &id in ids {
        out.extend(frame(1, 5, id, &head));
    }
    c.write_all(&out).unwrap();
    c
}

/// A raw HTTP/2 connection to `addr` with stream 1 begun: `POST path` to
/// `authority` (HEADERS with END_HEADERS only) and `data` (a DATA frame
/// without END_STREAM): the request's body is still open.
fn h2_post_begun(addr: SocketAddr, path: &str, authority: &str, data: &[u8]) -> TcpStream {
    use common::raw_h2::frame;
    let mut c = TcpStream::connect(addr).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    // :method POST, :scheme http (indexed); :path and :authority literal.
    let mut head = vec![0x83, 0x86, 0x04, path.len() as u8];
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(&[0x01, authority.len() as u8]);
    head.extend_from_slice(authority.as_bytes());
    out.extend(frame(1, 4, 1, &head));
    out.extend(frame(0, 0, 1, data));
    c.write_all(&out).unwrap();
    c
}

/// The response timeout holds while the client's body is still coming,
/// across translations: an HTTP/1 client of an `h2`-hinted service, and an
/// HTTP/2 client of an HTTP/1-only one, each sending part of a body and
/// then nothing, get their 504 at the timeout (the wait was the client's).
#[test]
fn a_stalled_request_body_does_not_hold_off_the_timeout() {
    use common::raw_h2::read_frame;
    let (h2_origin, h1_origin) = (h2::origin(None), http::origin("app"));
    let dir = TempDir::new("orig-proto-stalled-body");
    let h2_file = service_file(
        &dir,
        "h2.test:80",
        &[h2_origin.addr],
        "protocol_hint = \"h2\"\n",
    );
    let h1_dir = TempDir::new("orig-proto-stalled-body-h1");
    let h1_file = service_file(
        &h1_dir,
        "h1.test:80",
        &[h1_origin.addr],
        "protocol = \"http1\"\n",
    );
    let proxy = |file: &str, name: &str| {
        start_proxy(
            IoDriver::Uring,
            &[
                ("RINGMESH_TCP_FORWARD", &format!("127.0.0.1:0={name}")),
                ("RINGMESH_DISCOVERY_STATIC", file),
                ("RINGMESH_HTTP_RESPONSE_TIMEOUT", "300ms"),
            ],
        )
    };
    // HTTP/1 → HTTP/2: `/hang` never answers.
    let p = proxy(&h2_file, "h2.test:80");
    let started = Instant::now();
    let mut r = client(p.forward_addrs()[0]);
    r.get_mut()
        .write_all(b"POST /hang HTTP/1.1\r\nHost: h2.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 504"), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // HTTP/2 → HTTP/1: `/never` never answers.
    let p = proxy(&h1_file, "h1.test:80");
    let started = Instant::now();
    let mut c = h2_post_begun(p.forward_addrs()[0], "/never", "h1.test", b"hello");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let status = loop {
        match read_frame(&mut c) {
            // A HEADERS frame on stream 1: its first field, `:status`.
            Some((1, _, 1, block)) => break block,
            Some(_) => continue,
            None => panic!("no answer within 5 s ({:?})", started.elapsed()),
        }
    };
    // 504 is not in HPACK's static table: a literal `:status` (index 8).
    assert!(status.windows(3).any(|w| w == b"504"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A client's own broken request body, carried over HTTP/2 to an
/// `h2`-hinted service, is the client's failure, not the endpoint's or
/// anyone else's: a malformed chunked body gets 400 (as over HTTP/1), and
/// its stream, reset before its HEADERS were written, never reaches the
/// upstream as a reset of a stream it has not seen (a connection error
/// there, closing the connection every client's requests share); uploads
/// cut off by clients that leave are theirs (499). After twenty of them
/// the one upstream connection still serves, and no request counted as an
/// upstream failure.
#[test]
fn a_clients_broken_body_is_not_the_endpoints_failure() {
    let origin = h2::origin(None);
    let dir = TempDir::new("orig-proto-client-body");
    let p = web_proxy(&dir, &[origin.addr], "protocol_hint = \"h2\"\n");
    let fwd = p.forward_addrs()[0];
    let get = || {
        let mut r = client(fwd);
        let (status, _, body) = exchange(
            &mut r,
            b"GET /hello HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
        );
        assert_eq!((status, &body[..]), (200, &b"hello from h2"[..]));
    };
    get();

    let mut r = client(fwd);
    r.get_mut()
        .write_all(b"POST /a HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        .unwrap();
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");

    for _ in 0..20 {
        let mut s = TcpStream::connect(fwd).unwrap();
        s.write_all(
            b"POST /headers HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\n0123456789",
        )
        .unwrap();
        // The stream is open upstream before the client leaves.
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        get();
    }
    assert_eq!(
        origin
            .counters
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the upstream connection was closed (a connection error) and made again"
    );
    let text = metrics(p.admin_addr().unwrap());
    let failed = series(&text, "response_total", &["error=\"upstream_failed\""]);
    assert_eq!(failed, None, "clients' bodies counted as upstream failures");
    let left = series(&text, "response_total", &["status_code=\"499\""]);
    assert_eq!(left, Some(20.0), "the clients that left: {text}");
}

/// An HTTP/1 upstream answering before the request's body has ended (an
/// early 413, a duplex application) is heard at once by an HTTP/2 client
/// whose body is still coming, and the rest of the body still reaches the
/// upstream: the answer does not wait for the body.
#[test]
fn an_early_answer_reaches_the_client_before_its_body_ends() {
    use common::raw_h2::{frame, read_frame};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = l.local_addr().unwrap();
    let (tx, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        r.get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
            .unwrap();
        // The body, chunked, to its last chunk.
        let mut body = Vec::new();
        let mut b = [0u8; 1];
        while !body.ends_with(b"0\r\n\r\n") && r.read(&mut b).unwrap_or(0) == 1 {
            body.push(b[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
    });
    let (_dir, p) = http1_service(IoDriver::Uring, "early-answer", origin);
    let mut c = h2_post_begun(p.forward_addrs()[0], "/early", "web.test", b"part1");
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut answered = None;
    loop {
        match read_frame(&mut c) {
            Some((1, _, 1, _)) => answered = Some(started.elapsed()),
            Some((0, flags, 1, data)) => {
                answer.extend_from_slice(&data);
                if flags & 1 == 1 {
                    break;
                }
            }
            Some(_) => continue,
            None => panic!(
                "no answer while the body was open ({:?})",
                started.elapsed()
            ),
        }
    }
    assert!(answered.is_some(), "DATA without a response head");
    assert_eq!(answer, b"early");
    c.write_all(&frame(0, 1, 1, b"part2")).unwrap();
    let body = got.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(body, "5\r\npart1\r\n5\r\npart2\r\n0\r\n\r\n");
}

/// An upstream HTTP/2 connection with no stream for 5 s is closed (a
/// burst's extra connections, or those to an endpoint no longer used, do
/// not stay open for ever), and the next request makes a new one.
#[test]
fn idle_upstream_http2_connections_are_closed() {
    let origin = h2::origin(None);
    let dir = TempDir::new("orig-proto-h2-idle");
    let p = web_proxy(&dir, &[origin.addr], "protocol_hint = \"h2\"\n");
    let get = || {
        let mut r = client(p.forward_addrs()[0]);
        let (status, _, _) = exchange(
            &mut r,
            b"GET /hello HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
    };
    let open_upstream = || {
        let text = metrics(p.admin_addr().unwrap());
        series(&text, "tcp_open_connections", &["peer=\"dst\""]).unwrap_or(0.0)
    };
    get();
    let started = Instant::now();
    assert_eq!(open_upstream(), 1.0);
    while open_upstream() > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "an idle upstream HTTP/2 connection stayed open"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed before its time: {:?}",
        started.elapsed()
    );
    get();
    let made = origin
        .counters
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(made, 2);
}

/// The same after its last stream was reset: a reset stream kept until
/// its reset expires (which an idle connection never gets to) does not
/// hold the connection open.
#[test]
fn an_upstream_connection_idle_after_a_reset_is_closed() {
    use common::raw_h2::frame;
    let origin = h2::origin(None);
    let dir = TempDir::new("orig-proto-h2-idle-reset");
    let p = web_proxy(&dir, &[origin.addr], "protocol = \"http2\"\n");
    let mut c = h2_gets(p.forward_addrs()[0], "/hang", &[1]);
    let reset_seen = || {
        origin
            .counters
            .resets_seen
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let open_upstream = || {
        let text = metrics(p.admin_addr().unwrap());
        series(&text, "tcp_open_connections", &["peer=\"dst\""]).unwrap_or(0.0)
    };
    let started = Instant::now();
    while open_upstream() < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no upstream stream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // RST_STREAM CANCEL: the proxy resets the upstream stream.
    c.write_all(&frame(3, 0, 1, &8u32.to_be_bytes())).unwrap();
    while reset_seen() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the reset did not go upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reset_at = Instant::now();
    while open_upstream() > 0.0 {
        assert!(
            reset_at.elapsed() < Duration::from_secs(10),
            "an upstream connection idle after a reset stayed open"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(c);
}

/// A service whose endpoints speak HTTP/2 only (`protocol = "http2"`, not
/// meshed) serves HTTP/1.1 clients: their requests go as HTTP/2 streams
/// without `l5d-orig-proto` (the server is no proxy), a client's
/// `TE: trailers` goes with them (gRPC servers require it), and a chunked
/// body's answer comes back with its trailers. An HTTP/2 client's own
/// `l5d-orig-proto` naming no HTTP/1 version is ignored: its stream stays
/// HTTP/2 (it went as HTTP/1.1 to the HTTP/2 server, and failed).
#[test]
fn http1_clients_reach_http2_only_services() {
    let origin = h2::origin(None);
    let dir = TempDir::new("orig-proto-h2-only");
    let p = web_proxy(&dir, &[origin.addr], "protocol = \"http2\"\n");
    let mut c = client(p.forward_addrs()[0]);
    let (status, _, body) = exchange(
        &mut c,
        b"GET /headers HTTP/1.1\r\nHost: web.test\r\nTE: trailers\r\nConnection: te\r\n\r\n",
    );
    let seen = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{seen}");
    assert!(seen.lines().any(|l| l == "te: trailers"), "{seen}");
    assert!(!seen.contains("l5d-orig-proto"), "{seen}");
    assert!(!seen.contains("connection"), "{seen}");

    // The same connection again: a chunked upload, echoed with trailers.
    let (status, head, body, trailers) = exchange_with_trailers(
        &mut c,
        b"POST /echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"hello world");
    assert!(trailers.contains("x-echo-bytes: 11"), "{trailers:?}");
    assert_eq!(
        origin
            .counters
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let url = format!("http://{}/hello", p.forward_addrs()[0]);
    for mark in ["l5d-orig-proto: bogus", "l5d-orig-proto: HTTP/2"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-H", mark])
            .args(["-w", " %{http_code}", "--max-time", "10", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text, "hello from h2 200", "{mark}: {text}");
    }
}

/// Streams reset and kept only until their reset expires hold none of the
/// peer's stream slots: a connection whose peer allows 4 streams, with 4
/// reset streams on it, still takes the next request (a second connection
/// was opened for it, as if those 4 were open).
#[test]
fn reset_streams_leave_room_on_their_connection() {
    use common::raw_h2::frame;
    let origin = h2::origin_with(None, Some(4));
    let dir = TempDir::new("orig-proto-h2-reset-room");
    let p = web_proxy(&dir, &[origin.addr], "protocol = \"http2\"\n");
    let mut c = h2_gets(p.forward_addrs()[0], "/hang", &[1, 3, 5, 7]);
    let origin_streams = || {
        origin
            .counters
            .streams
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let started = Instant::now();
    while origin_streams() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the streams did not reach the origin"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // RST_STREAM CANCEL on each: the proxy resets its upstream streams.
    for id in [1, 3, 5, 7] {
        c.write_all(&frame(3, 0, id, &8u32.to_be_bytes())).unwrap();
    }
    while origin
        .counters
        .resets_seen
        .load(std::sync::atomic::Ordering::Relaxed)
        < 4
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the resets did not go upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut r = client(p.forward_addrs()[0]);
    let (status, _, body) = exchange(
        &mut r,
        b"GET /hello HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, &body[..]), (200, &b"hello from h2"[..]));
    let made = origin
        .counters
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(made, 1, "a new connection beside one with room");
    drop(c);
}

/// gRPC statuses are counted whatever the translation: an HTTP/1 client's
/// calls to an HTTP/2 service (a trailers-only answer, and one whose
/// status comes in trailers, relayed as chunked trailer fields), and an
/// HTTP/2 client's call to an
/// HTTP/1-only service whose answer carries the status in its head. Each
/// is in `response_total` with its `grpc_status`, and classified as
/// linkerd2-proxy does (INTERNAL a failure, NOT_FOUND not). They were
/// counted as plain HTTP 200 successes.
#[test]
fn grpc_statuses_are_counted_across_translations() {
    let origin = h2::origin(None);
    let dir = TempDir::new("orig-proto-grpc-status");
    let p = web_proxy(&dir, &[origin.addr], "protocol = \"http2\"\n");
    let mut c = client(p.forward_addrs()[0]);
    for (path, chunked) in [
        ("/grpc-only/13", false),
        ("/grpc-trailer/13", true),
        ("/grpc-trailer/5", true),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: web.test\r\nContent-Type: application/grpc\r\n\
             TE: trailers\r\nContent-Length: 0\r\n\r\n"
        );
        let (status, head, _, trailers) = exchange_with_trailers(&mut c, request.as_bytes());
        assert_eq!(status, 200, "{path}: {head}");
        let code = path.rsplit('/').next().unwrap();
        if chunked {
            assert!(
                trailers.contains(&format!("grpc-status: {code}")),
                "{path}: {trailers:?}"
            );
        } else {
            assert!(
                head.contains(&format!("grpc-status: {code}")),
                "{path}: {head}"
            );
        }
    }
    let text = metrics(p.admin_addr().unwrap());
    let count = |labels: &[&str]| series(&text, "response_total", labels).unwrap_or(0.0);
    assert_eq!(
        count(&["classification=\"failure\"", "grpc_status=\"13\""]),
        2.0,
        "{text}"
    );
    assert_eq!(
        count(&["classification=\"success\"", "grpc_status=\"5\""]),
        1.0,
        "{text}"
    );
    drop(p);

    // HTTP/2 client, HTTP/1-only service answering with the status in its
    // head.
    let h1 = Backend::start(|mut s| {
        if read_head(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n",
        );
    });
    let dir = TempDir::new("orig-proto-grpc-status-h1");
    let p = web_proxy(&dir, &[h1.addr], "protocol = \"http1\"\n");
    let url = format!("http://{}/svc/Call", p.forward_addrs()[0]);
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--http2-prior-knowledge", "-X", "POST"])
        .args([
            "-H",
            "content-type: application/grpc",
            "--max-time",
            "10",
            &url,
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("grpc-status: 14"), "{answer}");
    let text = metrics(p.admin_addr().unwrap());
    assert_eq!(
        series(
            &text,
            "response_total",
            &["classification=\"failure\"", "grpc_status=\"14\""]
        ),
        Some(1.0),
        "{text}"
    );
}

/// A request whose client leaves before any response is still counted in
/// `request_total` (as linkerd2-proxy counts every request), and in no
/// `response_total`: it was in neither.
#[test]
fn a_request_its_client_cancels_is_counted() {
    use common::raw_h2::frame;
    let origin = h2::origin(None);
    let dir = TempDir::new("orig-proto-cancel-counted");
    let p = web_proxy(&dir, &[origin.addr], "protocol = \"http2\"\n");
    let mut c = h2_gets(p.forward_addrs()[0], "/hang", &[1]);
    let started = Instant::now();
    while origin
        .counters
        .streams
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no upstream stream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // RST_STREAM CANCEL: the client leaves.
    c.write_all(&frame(3, 0, 1, &8u32.to_be_bytes())).unwrap();
    let admin = p.admin_addr().unwrap();
    let counted = || series(&metrics(admin), "request_total", &["web.test"]).unwrap_or(0.0);
    while counted() < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the cancelled request was not counted:\n{}",
            metrics(admin)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = metrics(admin);
    assert_eq!(counted(), 1.0, "{text}");
    assert_eq!(
        series(&text, "response_total", &["web.test"]),
        None,
        "{text}"
    );
    drop(c);
}

/// gRPC responses are classified as linkerd2-proxy's default gRPC
/// classification does, by the request's `content-type` whatever the HTTP
/// version: PERMISSION_DENIED is a failure; a code gRPC does not define
/// is UNKNOWN (`grpc_status="2"`), a failure; a gRPC response with no
/// status is UNKNOWN, not a failure. gRPC-Web over HTTP/1.1 is gRPC too,
/// its status read from the response head. `response_latency_ms` is by
/// status code alone. (PERMISSION_DENIED was a success, 17 its own label,
/// gRPC-Web over HTTP/1.1 plain HTTP, the histogram split by gRPC status.)
#[test]
fn grpc_responses_are_classified_as_linkerd2_proxy() {
    // HTTP/2 client, HTTP/2 service.
    let origin = h2::origin(None);
    let dir = TempDir::new("grpc-classes-h2");
    let p = web_proxy(&dir, &[origin.addr], "protocol = \"http2\"\n");
    for path in ["/grpc-trailer/17", "/grpc-only/7", "/hello"] {
        let url = format!("http://{}{path}", p.forward_addrs()[0]);
        let status = post_status(&url, "--http2-prior-knowledge", "application/grpc");
        assert_eq!(status, "200", "{path}");
    }
    let text = metrics(p.admin_addr().unwrap());
    let count = |labels: &[&str]| series(&text, "response_total", labels).unwrap_or(0.0);
    for (labels, n) in [
        (["classification=\"failure\"", "grpc_status=\"2\""], 1.0),
        (["classification=\"failure\"", "grpc_status=\"7\""], 1.0),
        (["classification=\"success\"", "grpc_status=\"2\""], 1.0),
    ] {
        assert_eq!(count(&labels), n, "{labels:?}:\n{text}");
    }
    assert!(!text.contains("grpc_status=\"17\""), "{text}");
    let latency: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("response_latency_ms_count{"))
        .collect();
    assert_eq!(
        latency.len(),
        1,
        "one histogram for status 200: {latency:?}"
    );
    assert!(
        latency[0].ends_with(",status_code=\"200\"} 3"),
        "{latency:?}"
    );
    drop(p);

    // gRPC-Web over HTTP/1.1 to an HTTP/1 service: the status in the head,
    // or none.
    let h1 = Backend::start(|mut s| {
        let Some(seen) = read_head(&mut s) else {
            return;
        };
        let status = if seen.starts_with(b"POST /unavailable ") {
            "grpc-status: 14\r\n"
        } else {
            ""
        };
        let _ = s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\n{status}\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
    });
    let dir = TempDir::new("grpc-classes-web");
    let p = web_proxy(&dir, &[h1.addr], "protocol = \"http1\"\n");
    for path in ["/unavailable", "/streamed"] {
        let url = format!("http://{}{path}", p.forward_addrs()[0]);
        let status = post_status(&url, "--http1.1", "application/grpc-web+proto");
        assert_eq!(status, "200", "{path}");
    }
    let text = metrics(p.admin_addr().unwrap());
    let count = |labels: &[&str]| series(&text, "response_total", labels).unwrap_or(0.0);
    assert_eq!(
        count(&["classification=\"failure\"", "grpc_status=\"14\""]),
        1.0,
        "{text}"
    );
    assert_eq!(
        count(&["classification=\"success\"", "grpc_status=\"2\""]),
        1.0,
        "{text}"
    );
}

/// The status of an empty `POST` to `url` with `content-type` by curl
/// speaking `version` (`--http1.1`, `--http2-prior-knowledge`).
fn post_status(url: &str, version: &str, content_type: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args([version, "-X", "POST", "--max-time", "10"])
        .args(["-H", &format!("content-type: {content_type}"), url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
