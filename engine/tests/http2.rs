//! HTTP/2 (h2c) through the proxy with real clients and servers: a Rust
//! HTTP/2 origin and client (monoio-http), h2load, nghttp, and gRPC with
//! python grpcio.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::h2::{self, pattern_byte};
use common::proc::*;
use common::raw_h2::{
    frame, raw_h2_origin, raw_h2_origin_seeing, raw_h2_origin_then_close, read_frame, Frame,
    RawAnswer, CUT_AFTER_HEAD,
};
use common::*;
use ringmesh_engine::IoDriver;

fn forward_to(driver: IoDriver, origin: std::net::SocketAddr) -> ringmesh_engine::Proxy {
    forward_with(driver, origin, &[])
}

/// As [`forward_to`], with more of the environment.
fn forward_with(
    driver: IoDriver,
    origin: std::net::SocketAddr,
    vars: &[(&str, &str)],
) -> ringmesh_engine::Proxy {
    let fwd = format!("127.0.0.1:0={origin}");
    let mut all = vec![
        ("RINGMESH_TCP_FORWARD", fwd.as_str()),
        // The clients here speak HTTP/2 at once, but a loaded machine may
        // delay a Python client's preface past start_proxy's short
        // detect timeout: the connection would then be relayed.
        ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
    ];
    all.extend_from_slice(vars);
    start_proxy(driver, &all)
}

/// A client of its own connection to `addr` asking for /hello every 2 ms
/// while attacks go on beside it; every request must get a 200.
struct NormalClient {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl NormalClient {
    fn start(addr: std::net::SocketAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, served) = (stop.clone(), served.clone());
            move || {
                h2::runtime().block_on(async move {
                    let send = h2::connect(addr).await;
                    while !stop.load(Ordering::Relaxed) {
                        let a = h2::request(&send, "GET", "/hello", None)
                            .await
                            .expect("the normal client is served meanwhile");
                        assert_eq!(a.status, 200);
                        served.fetch_add(1, Ordering::Relaxed);
                        monoio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            }
        });
        Self {
            stop,
            served,
            thread,
        }
    }

    /// Requests answered so far.
    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// More than 10 requests beyond `since` are answered within 5 s.
    fn kept_being_served(&self, since: usize) -> bool {
        eventually(Duration::from_secs(5), || self.served() > since + 10)
    }

    /// Stops it; it never failed.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the normal client never failed");
    }
}

/// Requests, 8 MiB bodies both ways with trailers, 200 concurrent streams on
/// one client connection, statuses.
fn streams_bodies_and_trailers(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let a = h2::request(&send, "GET", "/hello", None).await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello from h2"[..]));

        let upload: Vec<u8> = (0..8 << 20).map(|i| (i * 7 % 256) as u8).collect();
        let a = h2::request(&send, "POST", "/echo", Some(upload.clone()))
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert!(a.body == upload, "8 MiB echoed intact");
        let t = a.trailers.expect("trailers passed through");
        assert_eq!(t["x-echo-bytes"], "8388608");
        assert_eq!(t["grpc-status"], "0");

        let a = h2::request(&send, "GET", "/bytes/8388608", None)
            .await
            .unwrap();
        assert_eq!(a.body.len(), 8 << 20);
        assert!(a
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i)));

        let a = h2::request(&send, "GET", "/status/503", None)
            .await
            .unwrap();
        assert_eq!(a.status, 503);

        let calls: Vec<_> = (0..200)
            .map(|_| {
                let send = send.clone();
                monoio::spawn(async move { h2::request(&send, "GET", "/hello", None).await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap().status, 200);
        }
    });
    // Each client stream became an upstream stream; upstream connections
    // were shared (far fewer than streams).
    assert!(origin.counters.streams.load(Ordering::Relaxed) >= 204);
    assert!(origin.counters.connections.load(Ordering::Relaxed) <= 8);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    streams_bodies_and_trailers,
    super::streams_bodies_and_trailers
);

/// An upstream reset reaches the client; a client reset reaches the
/// upstream.
fn resets_propagate(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let counters = origin.counters.clone();
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let e = h2::request(&send, "GET", "/reset", None)
            .await
            .err()
            .expect("the upstream's reset reaches the client");
        assert_eq!(
            e.reason(),
            Some(monoio_http::h2::Reason::INTERNAL_ERROR),
            "{e}"
        );

        // A request the origin never answers, then the client gives up.
        let req = ::http::Request::builder()
            .uri("http://test/hang")
            .body(())
            .unwrap();
        let mut s = send.clone().ready().await.unwrap();
        let (resp, mut stream) = s.send_request(req, false).unwrap();
        monoio::time::sleep(Duration::from_millis(200)).await;
        stream.send_reset(monoio_http::h2::Reason::CANCEL);
        drop(resp);
        for _ in 0..100 {
            if counters.resets_seen.load(Ordering::Relaxed) == 1 {
                break;
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        // The connection still serves other streams.
        let a = h2::request(&send, "GET", "/hello", None).await.unwrap();
        assert_eq!(a.status, 200);
    });
    assert_eq!(
        origin.counters.resets_seen.load(Ordering::Relaxed),
        1,
        "the client's RST_STREAM cancelled the upstream stream"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(resets_propagate, super::resets_propagate);

/// A request without `:authority` (RFC 9113 §8.3.1) reaches the upstream
/// without one, as linkerd2-proxy forwards it (it was a 502 "request URI
/// missing scheme and authority"); one with an authority keeps it.
fn request_without_authority(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        // (The client library sends a URI without an authority only for
        // a request marked HTTP/1.1: `:scheme` http, `:path`, no more.)
        let req = ::http::Request::builder()
            .uri("/authority")
            .version(::http::Version::HTTP_11)
            .body(())
            .unwrap();
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _) = s.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(String::from_utf8_lossy(&got), "none");
        let a = h2::request(&send, "GET", "/authority", None).await.unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"test"[..]));
    });
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_request_without_authority_goes_on_without_one,
    super::request_without_authority
);

/// A head that ends its stream but announces a body (`content-length: 5`)
/// is malformed (RFC 9113 §8.1.1): the stream is reset with
/// PROTOCOL_ERROR, never passed on (an HTTP/1 upstream would wait for five
/// bytes that never come); `content-length: 0` passes.
fn end_stream_with_a_length(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let streams = origin.counters.clone();
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        for (length, ok) in [("5", false), ("0", true)] {
            let req = ::http::Request::builder()
                .method("POST")
                .uri("http://test/hello")
                .header("content-length", length)
                .body(())
                .unwrap();
            let mut s = send.clone().ready().await.unwrap();
            let (resp, _) = s.send_request(req, true).unwrap();
            match resp.await {
                Ok(r) => assert!(ok && r.status() == 200, "{length}: {}", r.status()),
                Err(e) => assert!(
                    !ok && e.reason() == Some(monoio_http::h2::Reason::PROTOCOL_ERROR),
                    "{length}: {e}"
                ),
            }
        }
    });
    assert_eq!(
        streams.streams.load(Ordering::Relaxed),
        1,
        "only the good one went on"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_head_ending_its_stream_with_a_length_is_reset,
    super::end_stream_with_a_length
);

/// `RINGMESH_HTTP_REQUEST_TIMEOUT`: a stream the upstream never answers
/// gets 504, and the upstream stream is cancelled.
fn request_timeout(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(
        driver,
        origin.addr,
        &[("RINGMESH_HTTP_REQUEST_TIMEOUT", "300ms")],
    );
    let addr = proxy.forward_addrs()[0];
    let t = std::time::Instant::now();
    let a = h2::runtime()
        .block_on(async move {
            let send = h2::connect(addr).await;
            h2::request(&send, "GET", "/hang", None).await
        })
        .unwrap();
    assert_eq!(a.status, 504);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(2), || origin
            .counters
            .resets_seen
            .load(Ordering::Relaxed)
            == 1),
        "the upstream stream was cancelled"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(request_timeout_gives_504, super::request_timeout);

/// An upstream that answers before it reads the request body (413 at once,
/// its end of the stream closed): the proxy cancels the upstream stream and
/// tells the client to stop its upload with RST_STREAM NO_ERROR once the
/// answer is complete (RFC 9113 §8.1, as `h2` does for linkerd2-proxy):
/// the client's upload (16× the stream window) stops early instead of
/// going on for nothing, the connection stays usable, and the proxy
/// drains at once on shutdown.
fn early_response_drains_the_body(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let ((status, stopped, reset), after) = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let req = ::http::Request::builder()
            .method("POST")
            .uri("http://test/status/413")
            .body(())
            .unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        let (resp, mut up) = ready.send_request(req, false).unwrap();
        let status = resp.await.unwrap().status().as_u16();
        let upload = async {
            for _ in 0..16 {
                h2::send_all(&mut up, bytes::Bytes::from(vec![7u8; 64 * 1024])).await?;
            }
            up.send_data(bytes::Bytes::new(), true).map_err(|_| ())
        };
        let stopped = monoio::time::timeout(Duration::from_secs(5), upload).await;
        let reset = std::future::poll_fn(|cx| up.poll_reset(cx));
        let reset = monoio::time::timeout(Duration::from_secs(5), reset).await;
        let reset = reset.ok().and_then(Result::ok);
        let after = h2::request(&send, "GET", "/hello", None).await.unwrap();
        ((status, stopped, reset), after)
    });
    assert_eq!(status, 413);
    assert_eq!(stopped, Ok(Err(())), "the upload was not stopped");
    assert_eq!(reset, Some(monoio_http::h2::Reason::NO_ERROR));
    assert_eq!(
        (after.status, &after.body[..]),
        (200, &b"hello from h2"[..])
    );
    let t = std::time::Instant::now();
    proxy.shutdown();
    proxy.wait();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        t.elapsed()
    );
}
both_drivers!(
    early_response_drains_the_request_body,
    super::early_response_drains_the_body
);

/// An upstream that sends GOAWAY every 50 streams (as nginx does): new
/// streams move to fresh connections and none fails.
fn upstream_goaway_fails_nothing(driver: IoDriver) {
    let origin = h2::origin(Some(50));
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        for _ in 0..20 {
            let calls: Vec<_> = (0..50)
                .map(|_| {
                    let send = send.clone();
                    monoio::spawn(async move { h2::request(&send, "GET", "/hello", None).await })
                })
                .collect();
            for c in calls {
                let a = c.await.expect("no stream fails across GOAWAYs");
                assert_eq!(a.status, 200);
            }
        }
    });
    assert!(origin.counters.connections.load(Ordering::Relaxed) >= 20);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    upstream_goaway_fails_nothing,
    super::upstream_goaway_fails_nothing
);

/// Draining: the client gets a GOAWAY, a stream in flight still completes.
fn drain_finishes_open_streams(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        h2::runtime().block_on(async move {
            let send = h2::connect(addr).await;
            let slow = monoio::spawn({
                let send = send.clone();
                async move { h2::request(&send, "GET", "/slow/600", None).await }
            });
            tx.send(()).unwrap();
            slow.await
        })
    });
    rx.recv().unwrap();
    // In flight: it reached the origin (a fixed pause lost the race on a
    // busy machine, and the drain came first).
    assert!(
        eventually(Duration::from_secs(5), || origin
            .counters
            .streams
            .load(Ordering::Relaxed)
            >= 1),
        "the stream never reached the origin"
    );
    proxy.shutdown();
    let a = client
        .join()
        .unwrap()
        .expect("the in-flight stream completes");
    assert_eq!((a.status, a.body.as_slice()), (200, &b"slow"[..]));
    proxy.wait();
}
both_drivers!(
    drain_finishes_open_streams,
    super::drain_finishes_open_streams
);

/// h2load, bounded, zero errors; nghttp downloads 32 MiB intact.
#[test]
fn h2load_and_nghttp() {
    let origin = h2::origin(None);
    let proxy = forward_to(IoDriver::Uring, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let out = Command::new("timeout")
        .args(["60", "h2load", "-n", "20000", "-c", "4", "-m", "16"])
        .arg(format!("http://{addr}/hello"))
        .output()
        .expect("h2load (nghttp2-client) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 20000 2xx"), "{text}");

    let size = 32 << 20;
    let out = Command::new("timeout")
        .args(["60", "nghttp"])
        .arg(format!("http://{addr}/bytes/{size}"))
        .output()
        .expect("nghttp (nghttp2-client) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), size);
    assert!(out
        .stdout
        .iter()
        .enumerate()
        .all(|(i, b)| *b == pattern_byte(i)));
    proxy.shutdown();
    proxy.wait();
}

/// gRPC through the binary: unary, server/client streaming, bidi in lock
/// step, a non-OK status with its details and trailers; then the metrics
/// show the gRPC statuses.
#[test]
fn grpc_calls_and_statuses() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/echo.py");
    let mut server = Command::new("/usr/bin/python3")
        .args([script, "serve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian python3 with python3-grpcio");
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port: u16 = port.trim().parse().expect("the gRPC server's port");
    let listen = closed_port();
    let admin = closed_port();
    let fwd = format!("{listen}=127.0.0.1:{port}");
    let mut p = Running::spawn(ringmesh(
        "uring",
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin.to_string()),
        ],
    ));
    assert!(p.wait_for("ready", Duration::from_secs(10)));
    let out = Command::new("timeout")
        .args([
            "60",
            "/usr/bin/python3",
            script,
            "client",
            &listen.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = Command::new("curl")
        .args(["-sS", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&metrics.stdout);
    let find = |needle: &str| {
        body.lines()
            .filter(|l| l.starts_with("response_total{") && l.contains(needle))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    // As linkerd2-proxy: only UNKNOWN, DEADLINE_EXCEEDED, PERMISSION_DENIED,
    // INTERNAL, UNAVAILABLE and DATA_LOSS are failures.
    assert_eq!(
        find("classification=\"success\",grpc_status=\"5\""),
        1,
        "the NOT_FOUND call is no failure:\n{body}"
    );
    assert_eq!(
        find("classification=\"failure\",grpc_status=\"7\""),
        1,
        "the PERMISSION_DENIED call is a failure:\n{body}"
    );
    assert_eq!(
        find("classification=\"failure\",grpc_status=\"13\""),
        1,
        "the INTERNAL call is a failure:\n{body}"
    );
    assert_eq!(
        find("classification=\"success\",grpc_status=\"0\""),
        4,
        "four OK calls:\n{body}"
    );
    drop(server.stdin.take());
    let _ = server.wait();
    drop(p);
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// linkerd2-proxy's `LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_*` apply to the
/// outbound listeners (a forward here), the `INBOUND_` ones to the
/// inbound listener; an outbound one left unset takes its inbound one. The
/// SETTINGS and the connection window are read off the wire.
fn server_settings_per_side(driver: IoDriver) {
    use std::collections::HashMap;
    let origin = h2::origin(None);
    let target = origin.addr.to_string();
    let inbound = [
        ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0"),
        ("RINGMESH_INBOUND_TARGET", target.as_str()),
        (
            "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_MAX_CONCURRENT_STREAMS",
            "50",
        ),
        (
            "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_INITIAL_STREAM_WINDOW_SIZE",
            "1048576",
        ),
        (
            "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_INITIAL_CONNECTION_WINDOW_SIZE",
            "4194304",
        ),
        (
            "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_MAX_FRAME_SIZE",
            "65536",
        ),
        (
            "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_MAX_HEADER_LIST_SIZE",
            "131072",
        ),
    ];
    let mut vars = inbound.to_vec();
    vars.extend([
        (
            "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_CONCURRENT_STREAMS",
            "7",
        ),
        (
            "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_INITIAL_STREAM_WINDOW_SIZE",
            "100000",
        ),
        (
            "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_INITIAL_CONNECTION_WINDOW_SIZE",
            "200000",
        ),
        (
            "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_FRAME_SIZE",
            "32768",
        ),
        (
            "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_HEADER_LIST_SIZE",
            "2048",
        ),
    ]);
    // SETTINGS_MAX_CONCURRENT_STREAMS = 3, INITIAL_WINDOW_SIZE = 4,
    // MAX_FRAME_SIZE = 5, MAX_HEADER_LIST_SIZE = 6.
    let settings = |a: &h2::Advertised| {
        [3u16, 4, 5, 6]
            .iter()
            .map(|id| a.settings.get(id).copied())
            .collect::<Vec<_>>()
    };
    let proxy = forward_with(driver, origin.addr, &vars);
    let out = h2::advertised(proxy.forward_addrs()[0], Duration::ZERO);
    assert_eq!(
        settings(&out),
        [Some(7), Some(100_000), Some(32_768), Some(2048)],
        "{:?}",
        out.settings
    );
    assert_eq!(out.connection_window_increment, 200_000 - 65_535);
    let inb = h2::advertised(proxy.inbound_addr().unwrap(), Duration::ZERO);
    assert_eq!(
        settings(&inb),
        [Some(50), Some(1 << 20), Some(65_536), Some(131_072)],
        "{:?}",
        inb.settings
    );
    assert_eq!(inb.connection_window_increment, (4 << 20) - 65_535);
    drop(proxy);
    // Outbound unset: the inbound values.
    let proxy = forward_with(driver, origin.addr, &inbound);
    let out = h2::advertised(proxy.forward_addrs()[0], Duration::ZERO);
    assert_eq!(settings(&out), settings(&inb), "{:?}", out.settings);
    assert_eq!(out.connection_window_increment, (4 << 20) - 65_535);
    drop(proxy);
    // None set: the defaults.
    let proxy = forward_to(driver, origin.addr);
    let out = h2::advertised(proxy.forward_addrs()[0], Duration::ZERO);
    let expected: HashMap<u16, u32> = [(3, 200), (4, 65_535), (5, 16_384), (6, 16_384)]
        .into_iter()
        .collect();
    let got: HashMap<u16, u32> = out
        .settings
        .iter()
        .filter(|(id, _)| [3, 4, 5, 6].contains(*id))
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(out.connection_window_increment, (1 << 20) - 65_535);
}
both_drivers!(
    http2_server_settings_per_side,
    super::server_settings_per_side
);

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Sends `POST /echo` on stream 1 with a `content-length` of
/// `body.len()`, an `x-big` field of `big` bytes (its header block cut
/// into `frame_size` pieces), and the body in one DATA frame; then reads
/// until stream 1 ends, is reset, or the connection gets GOAWAY (or
/// closes).
fn post_raw(addr: std::net::SocketAddr, big: usize, body: &[u8], frame_size: usize) -> Vec<Frame> {
    let mut block = b"\x83\x86\x04\x05/echo\x01\x04test".to_vec();
    let length = body.len().to_string();
    block.extend_from_slice(b"\x0f\x0d");
    hpack_int(&mut block, 0, 7, length.len());
    block.extend_from_slice(length.as_bytes());
    if big > 0 {
        block.extend_from_slice(b"\x00\x05x-big");
        hpack_int(&mut block, 0, 7, big);
        block.extend(std::iter::repeat_n(b'a', big));
    }
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let pieces: Vec<&[u8]> = block.chunks(frame_size).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let kind = if i == 0 { 1 } else { 9 };
        let end_headers = if i + 1 == pieces.len() { 4 } else { 0 };
        out.extend(frame(kind, end_headers, 1, piece));
    }
    out.extend(frame(0, 1, 1, body));
    // A slow server may refuse before reading it all.
    let _ = s.write_all(&out);
    read_frames(&mut s)
}

/// The frames read until stream 1 ends, is reset, or the connection gets
/// GOAWAY (or closes).
fn read_frames(s: &mut std::net::TcpStream) -> Vec<Frame> {
    read_frames_past_goaway(s, true)
}

/// As [`read_frames`]; GOAWAY ends the reading only if `goaway_ends`.
fn read_frames_past_goaway(s: &mut std::net::TcpStream, goaway_ends: bool) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = read_frame(s) {
        let (kind, flags, stream) = (f.0, f.1, f.2);
        frames.push(f);
        if (kind == 7 && goaway_ends) || (stream == 1 && (kind == 3 || flags & 1 == 1)) {
            break;
        }
    }
    frames
}

/// The response's status on stream 1 (`:status 200` is HPACK's indexed
/// 0x88; others, not Huffman-coded at three digits, read as text), the
/// bytes of its DATA, and the GOAWAY's error code if one came.
fn outcome(frames: &[Frame]) -> (Option<String>, usize, Option<u32>) {
    let mut status = None;
    let mut data = 0;
    let mut goaway = None;
    for (kind, _, stream, payload) in frames {
        match (kind, stream) {
            (1, 1) if status.is_none() => {
                status = Some(if payload.first() == Some(&0x88) {
                    "200".to_string()
                } else {
                    payload
                        .windows(3)
                        .find(|w| w.iter().all(u8::is_ascii_digit))
                        .map(|w| String::from_utf8_lossy(w).into_owned())
                        .unwrap_or_else(|| format!("{payload:?}"))
                });
            }
            (0, 1) => data += payload.len(),
            (7, 0) => goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
            _ => {}
        }
    }
    (status, data, goaway)
}

/// An upstream's malformed response head (no `:status`; two
/// `content-length`s that differ) is a 502 saying so, at once: the
/// first read as a 200, the second left the client waiting for ever
/// (the library reset the upstream stream without telling the request).
fn malformed_response_heads(driver: IoDriver) {
    let cases: [(&str, RawAnswer); 2] = [
        ("no :status", |id| frame(1, 5, id, b"\x00\x03x-a\x011")),
        ("content-length 3 and 4", |id| {
            let mut f = frame(1, 4, id, b"\x88\x0f\x0d\x013\x0f\x0d\x014");
            f.extend(frame(0, 1, id, b"abc"));
            f
        }),
    ];
    for (what, answer) in cases {
        let origin = raw_h2_origin(answer);
        let proxy = forward_to(driver, origin.addr);
        let addr = proxy.forward_addrs()[0];
        h2::runtime().block_on(async move {
            let send = h2::connect(addr).await;
            let call = h2::request(&send, "GET", "/hello", None);
            let a = monoio::time::timeout(Duration::from_secs(5), call)
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer in 5 s"))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(a.status, 502, "{what}");
            let why = a
                .headers
                .get("l5d-proxy-error")
                .map(|v| v.to_str().unwrap().to_string());
            assert!(why.is_some_and(|w| w.contains("protocol error")), "{what}");
        });
        proxy.shutdown();
        proxy.wait();
    }
}
both_drivers!(
    malformed_upstream_response_heads_are_502,
    super::malformed_response_heads
);

/// An upstream that fails a response after its head, in the same read as
/// the head so that the failure is there before the proxy relays it: a
/// connection error, or a RST_STREAM NO_ERROR after part of the body. The
/// client's stream is reset, or gets a 502. Never a 200 that ends as if
/// whole. (The library counted a stream closed by an error or a reset as
/// ended: the head, or the body's first bytes, went to the client with
/// END_STREAM.)
fn cut_after_head(driver: IoDriver) {
    for (what, answer) in CUT_AFTER_HEAD {
        let origin = raw_h2_origin(answer);
        let proxy = forward_to(driver, origin.addr);
        let addr = proxy.forward_addrs()[0];
        h2::runtime().block_on(async move {
            for _ in 0..5 {
                let send = h2::connect(addr).await;
                let call = h2::request(&send, "GET", "/hello", None);
                let answer = monoio::time::timeout(Duration::from_secs(5), call)
                    .await
                    .unwrap_or_else(|_| panic!("{what}: no answer in 5 s"));
                match answer {
                    Err(e) => assert!(e.is_reset(), "{what}: {e}"),
                    Ok(a) => assert_eq!(a.status, 502, "{what}: a response cut short ended whole"),
                }
            }
        });
        proxy.shutdown();
        proxy.wait();
    }
}
both_drivers!(
    a_response_cut_after_its_head_is_not_whole,
    super::cut_after_head
);

/// GOAWAY on a stream (not the connection's stream 0) is a connection
/// error, PROTOCOL_ERROR (RFC 9113 §6.8, as `h2` 0.4.20): it was taken
/// for the client's GOAWAY.
fn goaway_on_a_stream(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let mut s = connect(proxy.forward_addrs()[0]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(7, 0, 1, &[0; 8]));
    s.write_all(&out).unwrap();
    let (_, _, goaway) = outcome(&read_frames(&mut s));
    assert_eq!(goaway, Some(1), "GOAWAY PROTOCOL_ERROR");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_goaway_on_a_stream_is_a_protocol_error,
    super::goaway_on_a_stream
);

/// RFC 9113's error codes for frames a client gets wrong (found by a
/// conformance probe): a preface not followed by SETTINGS is a
/// PROTOCOL_ERROR; a fixed-size frame of another size a FRAME_SIZE_ERROR
/// (a PRIORITY's only for its stream, §6.3); a header block HPACK cannot
/// decode a COMPRESSION_ERROR (§4.3); trailers with a pseudo-header, and
/// a CONNECT without `:authority`, are malformed: their stream is reset
/// PROTOCOL_ERROR and the connection goes on. (Before: the preface was
/// served, every code was PROTOCOL_ERROR for the connection, the trailers'
/// pseudo-header was dropped and the rest passed on, and the CONNECT was
/// a 502.)
fn frame_error_codes(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let preface = || b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let get = frame(1, 5, 1, b"\x82\x86\x84\x01\x04test");
    let exchange = |bytes: Vec<u8>| {
        let mut s = connect(proxy.forward_addrs()[0]);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&bytes).unwrap();
        read_frames(&mut s)
    };
    let goaway = |bytes: Vec<u8>| outcome(&exchange(bytes)).2;
    // No SETTINGS first.
    let mut b = preface();
    b.extend(&get);
    assert_eq!(goaway(b), Some(0x1), "no SETTINGS first");
    // Fixed-size frames of another size.
    for (what, bad) in [
        ("PING of 6", frame(6, 0, 0, &[0; 6])),
        ("WINDOW_UPDATE of 3", frame(8, 0, 0, &[0, 0, 1])),
        ("RST_STREAM of 5", frame(3, 0, 1, &[0; 5])),
        ("SETTINGS ACK with a payload", frame(4, 1, 0, &[0; 6])),
        ("SETTINGS of 3", frame(4, 0, 0, &[0; 3])),
    ] {
        let mut b = preface();
        b.extend(frame(4, 0, 0, &[]));
        b.extend(bad);
        assert_eq!(goaway(b), Some(0x6), "{what}: FRAME_SIZE_ERROR");
    }
    // HPACK: an index past both tables.
    let mut b = preface();
    b.extend(frame(4, 0, 0, &[]));
    b.extend(frame(1, 5, 1, b"\x82\x86\x84\xfe"));
    assert_eq!(goaway(b), Some(0x9), "COMPRESSION_ERROR");
    // Stream errors; the connection still serves the next stream.
    let trailers_with_pseudo = {
        let mut b = frame(1, 4, 1, b"\x83\x86\x84\x01\x04test");
        b.extend(frame(0, 0, 1, b"hi"));
        b.extend(frame(1, 5, 1, b"\x84\x40\x03x-t\x01\x31"));
        b
    };
    for (what, bad, code) in [
        ("PRIORITY of 4", frame(2, 0, 1, &[0; 4]), 0x6),
        ("trailers with :path", trailers_with_pseudo, 0x1),
        (
            "CONNECT without :authority",
            frame(1, 4, 1, b"\x02\x07CONNECT"),
            0x1,
        ),
    ] {
        let mut b = preface();
        b.extend(frame(4, 0, 0, &[]));
        b.extend(bad);
        b.extend(frame(1, 5, 3, b"\x82\x86\x84\x01\x04test"));
        let mut s = connect(proxy.forward_addrs()[0]);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&b).unwrap();
        let mut reset = None;
        let mut answered = false;
        while let Some((kind, flags, stream, payload)) = read_frame(&mut s) {
            assert_ne!(kind, 7, "{what}: a connection error");
            match (kind, stream) {
                (3, 1) => reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap())),
                (1 | 0, 3) if flags & 1 == 1 => {
                    answered = true;
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(reset, Some(code), "{what}");
        assert!(answered, "{what}: the next stream was not served");
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    frames_a_client_gets_wrong_get_rfc_9113s_codes,
    super::frame_error_codes
);

/// A client's GOAWAY (last stream 0: "I open no more streams") while its
/// request is in flight: the request is answered (RFC 9113 §6.8; GOAWAY's
/// last stream id is about streams the GOAWAY's receiver opened, here
/// none). The library failed every stream above it, the client's own too,
/// as `h2` before 0.4.14 did: the response was lost.
fn client_goaway_in_flight(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let mut s = connect(proxy.forward_addrs()[0]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 5, 1, b"\x82\x86\x04\x08/slow/50\x01\x04test"));
    out.extend(frame(7, 0, 0, &[0; 8]));
    s.write_all(&out).unwrap();
    let (status, data, _) = outcome(&read_frames_past_goaway(&mut s, false));
    assert_eq!(
        (status.as_deref(), data),
        (Some("200"), 4),
        "answered whole"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_client_goaway_lets_its_requests_finish,
    super::client_goaway_in_flight
);

/// A client that gives up on an upload while the proxy waits for the
/// upstream connection's window (the origin does not read): the proxy
/// cancels its upstream stream, and other clients' uploads on the same
/// upstream connection then go whole. (The library gave the connection
/// back capacity the cancelled stream had asked for but never held; the
/// next upload's frame overran the connection window and the worker
/// panicked on the library's assertion of it: the proxy died.)
fn cancelled_waiting_upload(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    h2::runtime().block_on(async move {
        for round in 0..3 {
            // 200 KB to /hang: 64 KiB reach the origin, which does not read
            // them; the rest waits for the upstream connection's window.
            let gone = h2::connect(addr).await;
            let req = ::http::Request::builder()
                .method("POST")
                .uri("http://test/hang")
                .body(())
                .unwrap();
            let mut ready = gone.clone().ready().await.unwrap();
            let (resp, mut up) = ready.send_request(req, false).unwrap();
            let bytes = bytes::Bytes::from(vec![1u8; 200_000]);
            let stuck = h2::send_all(&mut up, bytes);
            let waited = monoio::time::timeout(Duration::from_millis(300), stuck).await;
            assert!(
                waited.is_err(),
                "round {round}: the upload waits for the window"
            );
            up.send_reset(monoio_http::h2::Reason::CANCEL);
            drop((resp, up, ready, gone));
            monoio::time::sleep(Duration::from_millis(100)).await;
            let send = h2::connect(addr).await;
            let body = vec![7u8; 300_000];
            let echo = h2::request(&send, "POST", "/echo", Some(body.clone()));
            let a = monoio::time::timeout(Duration::from_secs(10), echo)
                .await
                .unwrap_or_else(|_| panic!("round {round}: no answer in 10 s"))
                .unwrap_or_else(|e| panic!("round {round}: the next upload failed: {e}"));
            assert_eq!(a.status, 200, "round {round}");
            assert_eq!(a.body.len(), body.len(), "round {round}: echoed whole");
        }
    });
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_cancelled_waiting_upload_leaves_the_connection_window_true,
    super::cancelled_waiting_upload
);

/// A client whose stream the library resets while the proxy waits for
/// that stream's window (the client sends a malformed second head on it):
/// the proxy's response pump wakes and cancels the upstream stream at
/// once. (The reset woke the stream's receiver but not
/// its sender, as in `h2` before 0.4.14: the pump waited for a window
/// that would never come, holding the upstream stream.)
fn reset_while_waiting_for_window(driver: IoDriver) {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    // An origin answering with a head and 60 000 bytes (within the
    // proxy's windows), counting the RST_STREAMs it gets.
    let resets = Arc::new(AtomicUsize::new(0));
    let seen = resets.clone();
    let answer: RawAnswer = |id| {
        let mut f = frame(1, 4, id, b"\x88");
        for _ in 0..4 {
            f.extend(frame(0, 0, id, &[b'x'; 15_000]));
        }
        f
    };
    let origin = raw_h2_origin_seeing(answer, move |kind, _| {
        if kind == 3 {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    let proxy = forward_to(driver, origin.addr);
    let mut s = connect(proxy.forward_addrs()[0]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE 1000: the proxy can send 1000 bytes of
    // the body, then waits for this client's window.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[0, 4, 0, 0, 0x03, 0xe8]));
    out.extend(frame(1, 5, 1, b"\x82\x86\x84\x01\x04test"));
    s.write_all(&out).unwrap();
    // The head and the first 1000 bytes.
    let mut got = 0;
    while got < 1000 {
        let (kind, _, _, p) = read_frame(&mut s).expect("the response begins");
        if kind == 0 {
            got += p.len();
        }
    }
    assert_eq!(
        resets.load(Ordering::Relaxed),
        0,
        "the upstream stream is open"
    );
    // A second head without END_STREAM on a stream the client ended:
    // malformed, the library resets the stream (PROTOCOL_ERROR).
    s.write_all(&frame(1, 4, 1, b"\x00\x03x-a\x01b")).unwrap();
    assert!(
        eventually(Duration::from_secs(3), || resets.load(Ordering::Relaxed)
            == 1),
        "the upstream stream is cancelled"
    );
    drop(s);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_stream_reset_while_waiting_for_its_window_is_let_go,
    super::reset_while_waiting_for_window
);

/// A client that resets its stream, or closes its connection, while the
/// upstream has sent a head and part of the body and then nothing: the
/// upstream stream is reset at once. (The response pump waited for the
/// upstream's next DATA, holding the upstream stream for as long as the
/// upstream stayed silent.)
fn leaving_mid_body(driver: IoDriver) {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let resets = Arc::new(AtomicUsize::new(0));
    let seen = resets.clone();
    let answer: RawAnswer = |id| {
        let mut f = frame(1, 4, id, b"\x88");
        f.extend(frame(0, 0, id, b"abc"));
        f
    };
    let origin = raw_h2_origin_seeing(answer, move |kind, _| {
        if kind == 3 {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    let proxy = forward_to(driver, origin.addr);
    for (round, reset) in [true, false].into_iter().enumerate() {
        let mut s = connect(proxy.forward_addrs()[0]);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        out.extend(frame(1, 5, 1, b"\x82\x86\x84\x01\x04test"));
        s.write_all(&out).unwrap();
        // The head and the three bytes.
        loop {
            let (kind, _, _, _) = read_frame(&mut s).expect("the response begins");
            if kind == 0 {
                break;
            }
        }
        if reset {
            s.write_all(&frame(3, 0, 1, &8u32.to_be_bytes())).unwrap();
        } else {
            drop(s.try_clone().unwrap());
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }
        assert!(
            eventually(Duration::from_secs(3), || resets.load(Ordering::Relaxed)
                > round),
            "reset {reset}: the upstream stream was held"
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_client_leaving_mid_body_cancels_the_upstream_stream,
    super::leaving_mid_body
);

/// A Python origin (`python3 args…`, printing "port N" on stderr) and a
/// healthy HTTP/2 origin, behind a one-worker proxy with a forward to
/// each (the Python one's first).
fn beside_a_healthy_origin(
    driver: IoDriver,
    args: &[&str],
) -> (Running, h2::Origin, ringmesh_engine::Proxy) {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(args).stderr(Stdio::piped());
    let mut python = Running::spawn(cmd);
    assert!(python.wait_for("port ", Duration::from_secs(10)));
    let port: u16 = python.seen.last().unwrap()["port ".len()..]
        .parse()
        .unwrap();
    let healthy = h2::origin(None);
    let fwd = format!("127.0.0.1:0=127.0.0.1:{port},127.0.0.1:0={}", healthy.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_CORES", "1"),
        ],
    );
    (python, healthy, proxy)
}

/// Random HTTP/2 on both sides (`tests/grpc/h2_chaos.py`): a hostile
/// upstream answering with random frame sequences (heads, DATA past
/// windows, resets, WINDOW_UPDATEs that overflow, SETTINGS that shrink
/// windows, GOAWAYs, PUSH_PROMISEs ...) while clients upload, download
/// and cancel through the proxy for 8 s. The worker lives through it and
/// serves a client of a healthy origin afterwards. (Before the fix of the
/// cancelled stream's reclaimed capacity, the worker panicked in its flow
/// control within a second, for every seed tried.)
fn chaos_on_both_sides(driver: IoDriver) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_chaos.py");
    let (_chaos, _healthy, proxy) = beside_a_healthy_origin(driver, &[script, "origin", "1"]);
    let (to_chaos, to_healthy) = (proxy.forward_addrs()[0], proxy.forward_addrs()[1]);
    for seed in ["1", "2"] {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args([script, "clients", &to_chaos.to_string(), "4", seed])
            .stderr(Stdio::piped());
        let mut clients = Running::spawn(cmd);
        assert!(
            clients.wait_for("connections ", Duration::from_secs(20)),
            "the clients ran"
        );
    }
    let a = h2::runtime().block_on(async move {
        let send = h2::connect(to_healthy).await;
        let call = h2::request(&send, "GET", "/hello", None);
        monoio::time::timeout(Duration::from_secs(5), call).await
    });
    let a = a.expect("an answer in 5 s").expect("served");
    assert_eq!(a.status, 200);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    random_http2_on_both_sides_is_survived,
    super::chaos_on_both_sides
);

/// Padded DATA frames count whole against the windows (RFC 9113 §6.1),
/// and the proxy gives the padding back: a client sending 5000 frames of
/// 10 bytes, each padded with 255, while its windows allow (1.3 MB of
/// flow control, more than the proxy's windows) gets the 50 000 bytes
/// echoed. (Counted as data only, the padding was never given back: the
/// client's windows shrank until it stalled.)
fn padded_data(driver: IoDriver) {
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
    use std::sync::Arc;
    const FRAMES: usize = 5000;
    const DATA: usize = 10;
    const FLOW: i64 = (1 + DATA + 255) as i64;
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let mut s = connect(proxy.forward_addrs()[0]);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 4, 1, b"\x83\x86\x04\x05/echo\x01\x04test"));
    s.write_all(&out).unwrap();
    // The windows the proxy gives (connection, stream 1), from its SETTINGS
    // and WINDOW_UPDATEs; what came back on stream 1.
    let (conn, stream) = (
        Arc::new(AtomicI64::new(65_535)),
        Arc::new(AtomicI64::new(65_535)),
    );
    let (echoed, ended) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let reader = {
        let (mut r, conn, stream) = (s.try_clone().unwrap(), conn.clone(), stream.clone());
        let (echoed, ended) = (echoed.clone(), ended.clone());
        std::thread::spawn(move || loop {
            let Some((kind, flags, id, p)) = read_frame(&mut r) else {
                return;
            };
            match (kind, id) {
                (4, 0) if flags & 1 == 0 => {
                    for set in p.chunks(6) {
                        if set[..2] == [0, 4] {
                            let v = u32::from_be_bytes(set[2..6].try_into().unwrap());
                            stream.fetch_add(i64::from(v) - 65_535, Ordering::SeqCst);
                        }
                    }
                }
                (8, _) => {
                    let inc = i64::from(u32::from_be_bytes(p[..4].try_into().unwrap()));
                    if id == 0 { &conn } else { &stream }.fetch_add(inc, Ordering::SeqCst);
                }
                (0, 1) => {
                    echoed.fetch_add(p.len(), Ordering::SeqCst);
                    if flags & 1 == 1 {
                        ended.store(true, Ordering::SeqCst);
                    }
                }
                (1, 1) if flags & 1 == 1 => ended.store(true, Ordering::SeqCst),
                (3 | 7, _) => return,
                _ => {}
            }
        })
    };
    let mut payload = vec![255u8];
    payload.extend(std::iter::repeat_n(b'p', DATA));
    payload.extend(std::iter::repeat_n(0u8, 255));
    for i in 0..FRAMES {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while conn.load(Ordering::SeqCst) < FLOW || stream.load(Ordering::SeqCst) < FLOW {
            assert!(
                std::time::Instant::now() < deadline,
                "stalled after {i} frames: windows {} / {}",
                conn.load(Ordering::SeqCst),
                stream.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        conn.fetch_sub(FLOW, Ordering::SeqCst);
        stream.fetch_sub(FLOW, Ordering::SeqCst);
        let end = if i + 1 == FRAMES { 1 } else { 0 };
        s.write_all(&frame(0, 0x8 | end, 1, &payload)).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || ended.load(Ordering::SeqCst)),
        "the echo did not end"
    );
    assert_eq!(echoed.load(Ordering::SeqCst), FRAMES * DATA);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(padded_data_is_flow_controlled_whole, super::padded_data);

/// A header list of more distinct fields than a header map holds (40 000;
/// the map's bound is 32 768), under the largest allowed limit (16 MiB,
/// linkerd2-proxy's default): 431, and the proxy goes on serving. (The
/// library's `append` panicked: the worker, and the proxy, died.)
fn more_fields_than_a_map_holds(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(
        driver,
        origin.addr,
        &[(
            "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_HEADER_LIST_SIZE",
            "16777216",
        )],
    );
    let addr = proxy.forward_addrs()[0];
    let mut block = b"\x82\x86\x84\x01\x04test".to_vec();
    for i in 0..40_000 {
        block.extend_from_slice(b"\x00\x06");
        block.extend_from_slice(format!("x{i:05}").as_bytes());
        block.push(0);
    }
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(4, 1, 0, &[]));
    let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let kind = if i == 0 { 1 } else { 9 };
        let flags = if i + 1 == pieces.len() { 4 } else { 0 } | u8::from(i == 0);
        out.extend(frame(kind, flags, 1, piece));
    }
    s.write_all(&out).unwrap();
    let (status, _, goaway) = outcome(&read_frames(&mut s));
    assert_eq!((status.as_deref(), goaway), (Some("431"), None));
    let a = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        h2::request(&send, "GET", "/hello", None).await
    });
    assert_eq!(a.expect("served after it").status, 200);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    more_fields_than_a_map_holds_are_431,
    super::more_fields_than_a_map_holds
);

/// `LINKERD2_PROXY_*_SERVER_HTTP2_MAX_FRAME_SIZE` and `_MAX_HEADER_LIST_SIZE`
/// are what the listener accepts: a 32 KiB DATA frame and a 100 KB header
/// list are served where they are set (a 600 KB one with a 1 MiB limit),
/// and refused by default (GOAWAY FRAME_SIZE_ERROR; 431 past 16 KiB).
fn frame_and_header_list_limits(driver: IoDriver) {
    let origin = h2::origin(None);
    let body = vec![b'x'; 32 * 1024];
    let big = 100_000;
    let proxy = forward_with(
        driver,
        origin.addr,
        &[
            (
                "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_FRAME_SIZE",
                "65536",
            ),
            (
                "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_HEADER_LIST_SIZE",
                "262144",
            ),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let frames = post_raw(addr, big, &body, 65_536);
    assert_eq!(
        outcome(&frames),
        (Some("200".to_string()), body.len(), None),
        "{:?}",
        frames
            .iter()
            .map(|f| (f.0, f.1, f.2, f.3.len()))
            .collect::<Vec<_>>()
    );
    drop(proxy);
    // A header list past the frame guard's own bound (256 KiB in 32
    // CONTINUATIONs): the guard grows with the limit.
    let proxy = forward_with(
        driver,
        origin.addr,
        &[(
            "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_MAX_HEADER_LIST_SIZE",
            "1048576",
        )],
    );
    let addr = proxy.forward_addrs()[0];
    let (status, _, goaway) = outcome(&post_raw(addr, 600_000, b"", 16_384));
    assert_eq!((status.as_deref(), goaway), (Some("200"), None));
    drop(proxy);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let (status, _, goaway) = outcome(&post_raw(addr, big, b"", 16_384));
    assert_eq!((status.as_deref(), goaway), (Some("431"), None));
    // The default is hyper's (linkerd2-proxy's when unset): 16 KiB.
    let (status, _, goaway) = outcome(&post_raw(addr, 20_000, b"", 16_384));
    assert_eq!((status.as_deref(), goaway), (Some("431"), None));
    // FRAME_SIZE_ERROR = 6.
    let (_, data, goaway) = outcome(&post_raw(addr, 0, &body, 16_384));
    assert_eq!((data, goaway), (0, Some(6)));
    // And a request within the defaults is served.
    let (status, data, _) = outcome(&post_raw(addr, 1000, &body[..16_000], 16_384));
    assert_eq!((status.as_deref(), data), (Some("200"), 16_000));
}
both_drivers!(
    http2_frame_and_header_list_limits,
    super::frame_and_header_list_limits
);

/// `tests/grpc/h2_attack.py ATTACK ADDR` (Debian python3 with
/// python3-h2; bounded by 30 s): what it printed, and its errors.
fn h2_attack(attack: &str, addr: std::net::SocketAddr) -> (String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    let out = Command::new("timeout")
        .args(["30", "/usr/bin/python3", script, attack, &addr.to_string()])
        .output()
        .expect("Debian python3 with python3-h2");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A busy client that cancels streams it was already answered on (Go's
/// net/http does when a body is closed early), well over the 200 resets a
/// second the rapid-reset defence allows: they are cancels, not an attack
/// (as `h2` counts only resets of streams not yet taken up), so its
/// connection and the slow request open on it live on.
fn cancels_of_answered_streams_keep_the_connection(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(driver, origin.addr, &[]);
    let addr = proxy.forward_addrs()[0];
    let (text, errors) = h2_attack("cancel-answered", addr);
    let cancels: u32 = text
        .trim()
        .strip_prefix("response 200 after ")
        .and_then(|t| t.strip_suffix(" cancels"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the slow request was lost: {text}{errors}"));
    assert!(cancels > 400, "only {cancels} cancels in 2 s");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    cancels_of_answered_streams_keep_the_connection,
    super::cancels_of_answered_streams_keep_the_connection
);

/// HTTP/2 attacks from a raw frame client (python h2): each attacker is cut
/// off the way the RFCs say, while a normal client on another connection is
/// served throughout without a single failure.
fn attacks_are_cut_off_while_others_are_served(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(
        driver,
        origin.addr,
        &[(
            "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_MAX_CONCURRENT_STREAMS",
            "10",
        )],
    );
    let addr = proxy.forward_addrs()[0];
    let normal = NormalClient::start(addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    // GOAWAY ENHANCE_YOUR_CALM = 11; RST_STREAM REFUSED_STREAM = 7.
    for (attack, expected) in [
        ("rapid-reset", "goaway 11"),
        ("continuation-flood", "goaway 11"),
        ("ping-flood", "goaway 11"),
        ("window-update-flood", "goaway 11"),
        ("settings-flood", "goaway 11"),
        // A header list over the limit: refused with 431, connection kept.
        ("big-headers", "response 431"),
        // Streams over SETTINGS_MAX_CONCURRENT_STREAMS are refused.
        ("too-many-streams", "reset 7"),
        // A client asking for a 2 GiB HPACK table is clamped and served.
        ("table-size", "response 200"),
    ] {
        let before = normal.served();
        let out = Command::new("timeout")
            .args(["30", "/usr/bin/python3", script, attack, &addr.to_string()])
            .output()
            .expect("Debian python3 with python3-h2");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            expected,
            "{attack}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            normal.kept_being_served(before),
            "{attack}: the normal client kept being served"
        );
    }
    normal.finish();
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    attacks_are_cut_off_while_others_are_served,
    super::attacks_are_cut_off_while_others_are_served
);

/// Keep-alive PINGs (`LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_*`): a
/// client that never answers is closed after interval + timeout; one that
/// answers (any real HTTP/2 client) stays connected while idle.
#[test]
fn keep_alive_pings_close_silent_clients() {
    let origin = h2::origin(None);
    let proxy = forward_with(
        IoDriver::Uring,
        origin.addr,
        &[
            (
                "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL",
                "200ms",
            ),
            (
                "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT",
                "300ms",
            ),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let (text, _) = h2_attack("silent", addr);
    let secs: f64 = text
        .trim()
        .strip_prefix("closed after ")
        .and_then(|t| t.strip_suffix(" s"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(secs < 3.0, "closed after {secs} s");
    // A client that answers PINGs is still served after idling well past
    // interval + timeout.
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        assert_eq!(
            h2::request(&send, "GET", "/hello", None)
                .await
                .unwrap()
                .status,
            200
        );
        monoio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            h2::request(&send, "GET", "/hello", None)
                .await
                .unwrap()
                .status,
            200
        );
    });
    proxy.shutdown();
    proxy.wait();
}

/// Sends `body` with its `content-length` on one stream; (status, body).
async fn put(
    send: &monoio_http::h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let req = ::http::Request::builder()
        .method(method)
        .uri(format!("http://web.test{path}"))
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut up) = send.send_request(req, false).unwrap();
    let upload = monoio::spawn(async move {
        for piece in body.chunks(16 * 1024) {
            if h2::send_all(&mut up, bytes::Bytes::copy_from_slice(piece))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = up.send_data(bytes::Bytes::new(), true);
    });
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut rb = resp.into_body();
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = rb.data().await {
        let _ = rb.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    // The whole body went (the proxy reads what an early answer left).
    upload.await;
    (status, out)
}

/// Two endpoints, one answering 503 to everything: a PUT with a small body
/// (kept) is retried on the other and echoed whole; a POST, or a PUT with
/// a body over 64 KiB (streamed, not kept), gets its 503.
fn bodies_up_to_64k_are_retried(driver: IoDriver) {
    let good = h2::origin(None);
    let bad = h2::origin(None);
    // The failing endpoint weighs so much that it is always picked first.
    let dir = TempDir::new(&format!("h2-retry-{}", driver_name(driver)));
    let file = service_file(
        &dir,
        "web.test:80",
        &[good.addr, bad.addr],
        "weights = [1, 1000]\n",
    );
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=web.test:80"),
            ("RINGMESH_DISCOVERY_STATIC", &file),
            ("LINKERD2_PROXY_CORES", "1"),
            // Keep the failing endpoint in rotation for the whole test.
            ("RINGMESH_FAILURE_ACCRUAL_CONSECUTIVE", "1000"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let path = format!("/only/{}", good.addr.port());
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let small: Vec<u8> = (0..60_000).map(|i| (i % 253) as u8).collect();
        // (Within the retry budget's 10 retries a second.)
        for _ in 0..8 {
            let (status, body) = put(&send, "PUT", &path, small.clone()).await;
            assert_eq!(status, 200, "a kept body is retried on the good endpoint");
            assert!(body == small, "and arrives whole");
        }
        let big: Vec<u8> = vec![7; 100_000];
        for _ in 0..5 {
            let (status, _) = put(&send, "POST", &path, small.clone()).await;
            assert_eq!(status, 503, "a POST is not retried");
            let (status, _) = put(&send, "PUT", &path, big.clone()).await;
            assert_eq!(status, 503, "a body over 64 KiB is not kept");
        }
    });
    assert_eq!(bad.counters.refused.load(Ordering::Relaxed), 18);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    bodies_up_to_64k_are_retried,
    super::bodies_up_to_64k_are_retried
);

/// MadeYouReset (CVE-2025-8671): a client that makes the proxy reset its
/// streams itself — a WINDOW_UPDATE overflowing the stream, a zero
/// WINDOW_UPDATE, a malformed request, a body shorter than its
/// content-length — 5000 times on one connection gets GOAWAY
/// `ENHANCE_YOUR_CALM` after at most 1024 such resets (a zero WINDOW_UPDATE
/// or DATA after END_STREAM: GOAWAY `PROTOCOL_ERROR` at once); a stream reset before it was forwarded never reaches the origin;
/// a normal client on another connection is served throughout.
fn made_you_reset_is_cut_off(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let normal = NormalClient::start(addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    // What the attacker gets, and whether its streams are reset before
    // they could be forwarded (the request in DATA-after-END_STREAM is
    // complete first: it may go).
    for (attack, expected, before_forwarding) in [
        ("reset-window-overflow", "goaway 11", true),
        // A zero increment is a connection error at once (PROTOCOL_ERROR).
        ("reset-zero-window-update", "goaway 1", true),
        ("reset-malformed", "goaway 11", true),
        // DATA after END_STREAM: a connection error at once, too.
        ("reset-data-after-end", "goaway 1", false),
        // A body shorter than its content-length: found at its end.
        ("reset-content-length", "goaway 11", false),
    ] {
        let (served0, streams0) = (
            normal.served(),
            origin.counters.streams.load(Ordering::Relaxed),
        );
        let out = Command::new("timeout")
            .args(["30", "/usr/bin/python3", script, attack, &addr.to_string()])
            .output()
            .expect("Debian python3 with python3-h2");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            expected,
            "{attack}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            normal.kept_being_served(served0),
            "{attack}: the normal client kept being served"
        );
        // The origin's streams, less the normal client's.
        // One normal request may straddle the first reading.
        let forwarded = (origin.counters.streams.load(Ordering::Relaxed) - streams0)
            .saturating_sub(normal.served() - served0);
        let _ = writeln!(
            std::io::stderr(),
            "{attack}: {forwarded} attack streams reached the origin"
        );
        if before_forwarding {
            assert!(
                forwarded <= 8,
                "{attack}: {forwarded} streams reset before forwarding reached the origin"
            );
        } else {
            assert!(
                forwarded <= 1100,
                "{attack}: {forwarded} reached the origin"
            );
        }
    }
    normal.finish();
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(made_you_reset_is_cut_off, super::made_you_reset_is_cut_off);

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Floods of frames that do no work (empty DATA, PRIORITY, unknown types,
/// PING ACKs, empty header block fragments, a mix of them, and two of them
/// per 1-byte DATA frame), 20 000 batches each behind an open request on
/// one connection: each ends in GOAWAY `ENHANCE_YOUR_CALM`, memory stays
/// bounded, a normal client is served throughout. A SETTINGS_INITIAL_WINDOW_SIZE
/// of 2^31 is a FLOW_CONTROL_ERROR (RFC 9113 §6.5.2).
fn idle_frame_floods_are_cut_off(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_to(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let normal = NormalClient::start(addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    let rss0 = rss_kib();
    // GOAWAY ENHANCE_YOUR_CALM = 11, FLOW_CONTROL_ERROR = 3.
    for (attack, expected) in [
        ("idle-empty-data", "goaway 11"),
        ("idle-priority", "goaway 11"),
        ("idle-unknown", "goaway 11"),
        ("idle-ping-ack", "goaway 11"),
        ("idle-empty-headers", "goaway 11"),
        ("idle-mixed", "goaway 11"),
        ("idle-with-work", "goaway 11"),
        ("settings-window-overflow", "goaway 3"),
    ] {
        let before = normal.served();
        let out = Command::new("timeout")
            .args(["30", "/usr/bin/python3", script, attack, &addr.to_string()])
            .output()
            .expect("Debian python3 with python3-h2");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            expected,
            "{attack}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            normal.kept_being_served(before),
            "{attack}: the normal client kept being served"
        );
        let grown = rss_kib().saturating_sub(rss0);
        let _ = writeln!(std::io::stderr(), "{attack}: RSS +{grown} KiB");
        assert!(grown < 64 * 1024, "{attack}: RSS grew {grown} KiB");
    }
    normal.finish();
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    idle_frame_floods_are_cut_off,
    super::idle_frame_floods_are_cut_off
);

/// A hostile HTTP/2 origin's floods, each after a request on its
/// connection (PING, SETTINGS, CONTINUATION that never ends the block,
/// PRIORITY, empty DATA, unknown frames, informational heads without end:
/// more than 64, WINDOW_UPDATEs for nothing): the proxy cuts the connection off
/// with GOAWAY `ENHANCE_YOUR_CALM` at once, the request gets a 502 saying
/// why, and a client of a healthy origin on the same (single) worker is
/// served throughout. Before the upstream guard, the origin's floods ran
/// their whole course, with the worker pinned at 100 % CPU for the
/// CONTINUATION, PRIORITY, empty DATA and unknown-frame ones.
fn hostile_upstreams_are_cut_off(driver: IoDriver) {
    const FLOOD_SECS: &str = "20";
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/grpc/h2_hostile_origin.py"
    );
    let (mut hostile, _origin, proxy) = beside_a_healthy_origin(driver, &[script, FLOOD_SECS]);
    let (to_hostile, to_origin) = (proxy.forward_addrs()[0], proxy.forward_addrs()[1]);
    let normal = NormalClient::start(to_origin);
    for flood in [
        "/ping",
        "/settings",
        "/continuation",
        "/priority",
        "/empty-data",
        "/unknown",
        "/interim",
        "/window-update",
    ] {
        let before = normal.served();
        let started = std::time::Instant::now();
        let answer = h2::runtime().block_on(async move {
            let send = h2::connect(to_hostile).await;
            h2::request(&send, "GET", flood, None).await
        });
        let took = started.elapsed();
        if flood == "/empty-data" {
            // Its response had begun (a 200 head): the stream is reset.
            // Unless the flood came in the same read as the head, which
            // then never reached the client: a 502, as for the others.
            // Never a response that ends as if whole.
            match answer {
                Err(e) => assert!(e.is_reset(), "{flood}: {e}"),
                Ok(a) => {
                    let body = String::from_utf8_lossy(&a.body);
                    assert_eq!(a.status, 502, "{flood}: a response cut short ended: {body}");
                    assert!(body.contains("cut off"), "{flood}: {body}");
                }
            }
        } else {
            let a = answer.unwrap_or_else(|e| panic!("{flood}: no answer: {e}"));
            let body = String::from_utf8_lossy(&a.body);
            assert_eq!(a.status, 502, "{flood}: {body}");
            // (Informational heads are counted by the HTTP/2 library,
            // which fails the connection with its own GOAWAY.)
            let why = if flood == "/interim" {
                "excessive"
            } else {
                "cut off"
            };
            assert!(body.contains(why), "{flood}: the 502 says why: {body}");
        }
        assert!(
            took < Duration::from_secs(5),
            "{flood}: answered in {took:?}"
        );
        let cut = format!("{flood} goaway 11 ");
        assert!(
            hostile.wait_for(&cut, Duration::from_secs(5)),
            "{flood}: the origin saw {:?}",
            hostile.seen.last()
        );
        assert!(
            normal.kept_being_served(before),
            "{flood}: the normal client kept being served"
        );
    }
    // The healthy requests still go to the hostile origin's other paths.
    let a = h2::runtime().block_on(async move {
        let send = h2::connect(to_hostile).await;
        h2::request(&send, "GET", "/fine", None).await.unwrap()
    });
    assert_eq!((a.status, &a.body[..]), (200, &b"ok"[..]));
    normal.finish();
    drop(hostile);
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    hostile_upstreams_are_cut_off,
    super::hostile_upstreams_are_cut_off
);

/// Requests `h2load` completes in `secs` seconds of /hello through `addr`
/// (4 connections × 8 streams).
fn h2load_done(addr: std::net::SocketAddr, secs: u32) -> u64 {
    let out = Command::new("timeout")
        .arg((secs + 20).to_string())
        .args(["h2load", "-c", "4", "-m", "8", "-D", &secs.to_string()])
        .arg(format!("http://{addr}/hello"))
        .output()
        .expect("h2load (nghttp2-client) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: N total, N started, N done, N succeeded, ..."
    text.lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|f| f.strip_suffix(" succeeded")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// One slow reader (48 streams of 1 MiB responses, windows 0 and never
/// opened: more than the 1 MiB connection window's worth of 64 KiB stream
/// windows) shares the one worker's pooled upstream connection with
/// everyone else; h2load on other connections keeps being served at a
/// good share of its rate without the slow reader. Again with an origin
/// that allows 32 concurrent streams per connection, fewer than the slow
/// reader holds.
fn slow_reader_costs_only_its_own_streams(driver: IoDriver) {
    slow_reader_beside_h2load(driver, None);
    slow_reader_beside_h2load(driver, Some(32));
}

fn slow_reader_beside_h2load(driver: IoDriver, origin_max_streams: Option<u32>) {
    let origin = h2::origin_with(None, origin_max_streams);
    // One worker: one pool, so every client shares its upstream connection.
    let proxy = forward_with(driver, origin.addr, &[("LINKERD2_PROXY_CORES", "1")]);
    let addr = proxy.forward_addrs()[0];
    let baseline = h2load_done(addr, 2);
    assert!(baseline > 1000, "h2load alone: {baseline} requests");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    let streams = 48;
    let streams0 = origin.counters.streams.load(Ordering::Relaxed);
    // Bounded by its own argument (30 s), killed at the end.
    let mut slow = Command::new("/usr/bin/python3")
        .args([script, "slow-reader"])
        .args([addr.to_string(), streams.to_string(), "30".into()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian python3");
    let mut line = String::new();
    BufReader::new(slow.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the slow reader starts");
    assert_eq!(line.trim(), "holding");
    // Its streams reached the origin (as many as one connection takes, at
    // least), whose responses fill what the proxy takes of them.
    let one_connection = origin_max_streams.map_or(streams, |n| streams.min(n as usize));
    assert!(
        eventually(Duration::from_secs(10), || origin
            .counters
            .streams
            .load(Ordering::Relaxed)
            >= streams0 + one_connection),
        "the slow reader's streams reached the origin"
    );
    let during = h2load_done(addr, 2);
    let _ = writeln!(
        std::io::stderr(),
        "{} (origin stream limit {origin_max_streams:?}): h2load alone {baseline}, beside a slow reader {during} requests in 2 s",
        driver_name(driver)
    );
    let _ = slow.kill();
    let _ = slow.wait();
    assert!(
        during * 4 > baseline,
        "a slow reader's streams stalled everyone else: {during} requests in 2 s against {baseline} alone"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    slow_reader_costs_only_its_own_streams,
    super::slow_reader_costs_only_its_own_streams
);

/// Streams that stalled (the client's windows at 0: in the proxy they stop
/// holding the upstream connection's window) and then are read to the end
/// give the upstream connection its whole window back: 48 × 1 MiB, 48
/// times its 1 MiB window, all arrive, and h2load on the same upstream
/// connection keeps its rate afterwards. Capacity not given back to the
/// connection would starve it.
fn stalled_streams_that_resume_give_the_window_back(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(driver, origin.addr, &[("LINKERD2_PROXY_CORES", "1")]);
    let addr = proxy.forward_addrs()[0];
    let before = h2load_done(addr, 2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    for _ in 0..2 {
        let out = Command::new("timeout")
            .args(["60", "/usr/bin/python3", script, "stall-then-read"])
            .args([addr.to_string(), "48".into(), "1".into()])
            .output()
            .expect("Debian python3");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), format!("complete {}", 48 << 20), "{text}");
    }
    let after = h2load_done(addr, 2);
    let _ = writeln!(
        std::io::stderr(),
        "{}: h2load {before} before, {after} after the stalled streams resumed (requests in 2 s)",
        driver_name(driver)
    );
    assert!(
        after * 2 > before,
        "the upstream connection starved after stalled streams resumed: {after} against {before}"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    stalled_streams_resume,
    super::stalled_streams_that_resume_give_the_window_back
);

/// Past the stall budget, the client holding the most loses its streams,
/// not whoever stalled first: a client's one response, stalled before a
/// slow reader opens 100 streams, survives the resets the slow reader's
/// streams cause and arrives whole once the client reads.
fn stall_budget_spares_other_clients(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(
        driver,
        origin.addr,
        &[
            ("LINKERD2_PROXY_CORES", "1"),
            ("RINGMESH_HTTP2_MAX_STALLED_BYTES", "2097152"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/h2_attack.py");
    let victim = Command::new("timeout")
        .args(["60", "/usr/bin/python3", script, "stall-then-read"])
        .args([addr.to_string(), "1".into(), "3".into()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian python3");
    // Its stream stalls first (the oldest stall of the worker).
    std::thread::sleep(Duration::from_millis(700));
    let mut slow = Command::new("/usr/bin/python3")
        .args([script, "slow-reader"])
        .args([addr.to_string(), "100".into(), "20".into()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian python3");
    let out = victim.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let _ = slow.kill();
    let _ = slow.wait();
    assert_eq!(
        text.trim(),
        format!("complete {}", 1 << 20),
        "the first client's stalled response was reset for another client's stalls"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    stall_budget_spares_other_clients,
    super::stall_budget_spares_other_clients
);

/// A client that stays connected but silent through a drain (it neither
/// closes after the GOAWAY nor answers the PING the library sends with it),
/// with no stream open, is closed at the drain's last look: the worker
/// stops in well under its 30 s grace period. Before, it held the drain for
/// the whole grace period (the cause of `bodies_up_to_64k_are_retried`'s
/// occasional 120 s wait, whose test client's socket can outlive its
/// runtime).
fn drain_closes_a_silent_idle_client(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(
        driver,
        origin.addr,
        &[("LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD", "30s")],
    );
    let addr = proxy.forward_addrs()[0];
    // Preface and an empty SETTINGS, then nothing: no ACK, no reads.
    let mut silent = connect(addr);
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    // A normal client is served meanwhile (so the silent one is past the
    // handshake when the drain starts).
    h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let a = h2::request(&send, "GET", "/hello", None).await.unwrap();
        assert_eq!(a.status, 200);
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    proxy.shutdown();
    proxy.wait();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the drain waited {took:?} for a silent idle HTTP/2 client"
    );
    drop(silent);
}
both_drivers!(
    drain_closes_a_silent_idle_client,
    super::drain_closes_a_silent_idle_client
);

/// A burst of streams on a new upstream connection, to a server that
/// allows 4 at once: no more than its limit go before its SETTINGS says
/// so (they went at once, and it refused the rest; a request whose body
/// was on its way could not go again and failed).
#[test]
fn a_burst_on_a_new_connection_keeps_to_the_servers_limit() {
    let origin = h2::origin_with(None, Some(4));
    let proxy = forward_to(IoDriver::Uring, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let answers = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let send = send.clone();
                monoio::spawn(async move {
                    let body = vec![b'a' + (i % 26) as u8; 3000];
                    let a = h2::request(&send, "POST", "/echo", Some(body.clone())).await;
                    a.map(|a| (a.status, a.body == body))
                })
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await);
        }
        out
    });
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, true))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 40 failed: {failed:?}",
        failed.len()
    );
}

/// `RINGMESH_HTTP_RESPONSE_TIMEOUT` bounds an HTTP/2 upstream's response
/// head as it bounds an HTTP/1 one: 504 when it passes (the HTTP/2 → HTTP/2
/// path waited for the upstream for ever, only the request timeout applied).
#[test]
fn the_response_timeout_bounds_http2_upstreams() {
    let origin = h2::origin(None);
    let proxy = forward_with(
        IoDriver::Uring,
        origin.addr,
        &[("RINGMESH_HTTP_RESPONSE_TIMEOUT", "500ms")],
    );
    let addr = proxy.forward_addrs()[0];
    let started = std::time::Instant::now();
    let a = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        h2::request(&send, "GET", "/slow/3000", None).await
    });
    let took = started.elapsed();
    let a = a.expect("an answer");
    assert_eq!(a.status, 504, "{:?}", String::from_utf8_lossy(&a.body));
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // A quick answer is untouched.
    let a = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        h2::request(&send, "GET", "/slow/100", None).await
    });
    assert_eq!(a.expect("an answer").status, 200);
}

/// HTTP/2 clients are held to the same clocks as HTTP/1 ones: a header
/// block not finished within `RINGMESH_HTTP_HEADER_READ_TIMEOUT` of its
/// HEADERS (a slowloris: the codec holds what came, ~145 KB a stream)
/// gets GOAWAY `ENHANCE_YOUR_CALM` and the close; a connection idle for
/// `RINGMESH_TCP_IDLE_TIMEOUT` gets GOAWAY `NO_ERROR` and the close; one
/// with requests coming now and then stays. Before, all three stayed open
/// for as long as their clients liked.
fn stuck_and_idle_clients(driver: IoDriver) {
    use std::io::Write;
    let origin = common::h2::origin(None);
    let proxy = forward_with(
        driver,
        origin.addr,
        &[
            ("RINGMESH_HTTP_HEADER_READ_TIMEOUT", "1s"),
            ("RINGMESH_TCP_IDLE_TIMEOUT", "2s"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let open = |first: &[u8]| {
        let mut s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        out.extend_from_slice(first);
        s.write_all(&out).unwrap();
        s
    };
    // GET / over http to a:1, without END_HEADERS: the block never ends.
    let stuck = open(&frame(1, 1, 1, b"\x82\x86\x84"));
    // A whole request, then nothing.
    let idle = open(&frame(1, 5, 1, b"\x82\x86\x84\x01\x01a"));
    // (Past the idle one's response: until GOAWAY, or the end.)
    let goaway_of = |mut s: std::net::TcpStream| {
        let t = Instant::now();
        while let Some((kind, _, _, payload)) = read_frame(&mut s) {
            if kind == 7 {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                return (Some(code), t.elapsed());
            }
        }
        (None, t.elapsed())
    };
    let busy = std::thread::spawn(move || {
        common::h2::runtime().block_on(async move {
            let send = common::h2::connect(addr).await;
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                let a = common::h2::request(&send, "GET", "/hello", None).await;
                assert_eq!(a.expect("a busy connection is served").status, 200);
                monoio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    });
    let (stuck_code, stuck_after) = goaway_of(stuck);
    assert_eq!(
        stuck_code,
        Some(0xb),
        "ENHANCE_YOUR_CALM for the stuck block"
    );
    assert!(stuck_after < Duration::from_secs(4), "{stuck_after:?}");
    let (idle_code, idle_after) = goaway_of(idle);
    assert_eq!(idle_code, Some(0), "NO_ERROR for the idle connection");
    assert!(idle_after < Duration::from_secs(6), "{idle_after:?}");
    busy.join().expect("the busy connection stayed");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    stuck_and_idle_clients_are_closed,
    super::stuck_and_idle_clients
);

/// A response head past the proxy's header list limit is refused by the
/// proxy's own HTTP/2 library (a local REFUSED_STREAM): the upstream did
/// process the request, so it does not go again (a POST ran three times,
/// taken for the upstream's refusal); the client gets a 502.
fn a_local_refusal_is_not_retried(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(driver, origin.addr, &[]);
    let addr = proxy.forward_addrs()[0];
    let got = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        h2::request(&send, "POST", "/big-head", None).await
    });
    let status = got.map(|a| a.status).unwrap_or(0);
    assert_eq!(status, 502);
    assert_eq!(
        origin
            .counters
            .streams
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the request went again"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_local_refusal_is_not_retried,
    super::a_local_refusal_is_not_retried
);

/// The proxy's own answer to a gRPC client is a trailers-only response
/// with HTTP status 200 and its outcome in `grpc-status` (grpc-go and
/// grpc-java read a non-200 status as the outcome, whatever `grpc-status`
/// says), as linkerd2-proxy answers; its response timeout is
/// DEADLINE_EXCEEDED, not UNAVAILABLE.
fn grpc_clients_get_trailers_only_answers(driver: IoDriver) {
    let origin = h2::origin(None);
    let proxy = forward_with(
        driver,
        origin.addr,
        &[("RINGMESH_HTTP_RESPONSE_TIMEOUT", "200ms")],
    );
    let addr = proxy.forward_addrs()[0];
    let (status, headers) = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let req = ::http::Request::builder()
            .method("POST")
            .uri("http://test/hang")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        (resp.status().as_u16(), resp.headers().clone())
    });
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    assert_eq!(headers["content-type"], "application/grpc");
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    grpc_clients_get_trailers_only_answers,
    super::grpc_clients_get_trailers_only_answers
);

/// [`forward_with`] and an admin server, at the address returned.
fn forward_with_admin(
    driver: IoDriver,
    origin: std::net::SocketAddr,
) -> (ringmesh_engine::Proxy, std::net::SocketAddr) {
    let admin = closed_port();
    let admin_addr = admin.to_string();
    let proxy = forward_with(
        driver,
        origin,
        &[("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", &admin_addr)],
    );
    (proxy, admin)
}

/// The admin server's `/metrics` page, as curl gets it.
fn curl_metrics(admin: std::net::SocketAddr) -> String {
    let page = Command::new("curl")
        .args(["-sS", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&page.stdout).into_owned()
}

/// An HTTP/2 upstream whose connection is lost after a response's head
/// and first bytes: the client's stream is reset with INTERNAL_ERROR (as
/// hyper does), not CANCEL (which a gRPC client reads as the caller's own
/// cancellation); a gRPC call ends with trailers saying UNAVAILABLE, as
/// linkerd2-proxy's gRPC rescue ends it (decided by the request: a client
/// that did not ask for gRPC is not told a cut body ended well, whatever
/// the response's type).
fn an_upstream_lost_mid_body(driver: IoDriver) {
    for grpc in [false, true] {
        let origin = raw_h2_origin_then_close(|id| {
            // :status 200, content-type: application/grpc, then a message.
            let mut head = vec![0x88, 0x0f, 0x10, 16];
            head.extend(b"application/grpc");
            let mut f = frame(1, 4, id, &head);
            f.extend(frame(0, 0, id, b"\0\0\0\0\x03abc"));
            f
        });
        let (proxy, admin) = forward_with_admin(driver, origin.addr);
        let addr = proxy.forward_addrs()[0];
        let got = h2::runtime().block_on(async move {
            let send = h2::connect(addr).await;
            let content_type = if grpc {
                "application/grpc"
            } else {
                "application/octet-stream"
            };
            let req = ::http::Request::builder()
                .method("POST")
                .uri("http://test/pkg.Svc/Call")
                .header("content-type", content_type)
                .header("te", "trailers")
                .body(())
                .unwrap();
            let mut send = send.ready().await.unwrap();
            let (resp, _) = send.send_request(req, true).unwrap();
            let mut body = resp.await.unwrap().into_body();
            while let Some(chunk) = body.data().await {
                if let Err(e) = chunk {
                    return Err(e.reason());
                }
            }
            match body.trailers().await {
                Ok(t) => Ok(t.and_then(|t| t.get("grpc-status").cloned())),
                Err(e) => Err(e.reason()),
            }
        });
        if grpc {
            assert_eq!(got, Ok(Some(::http::HeaderValue::from_static("14"))));
        } else {
            assert_eq!(got, Err(Some(monoio_http::h2::Reason::INTERNAL_ERROR)));
        }
        // Counted as the client saw it: a failed body, with the gRPC status
        // its trailers said.
        let page = curl_metrics(admin);
        assert!(
            page.lines().any(|l| l.starts_with("response_total{")
                && l.contains("classification=\"failure\"")
                && l.contains("error=\"response_body\"")
                && l.contains("grpc_status=\"14\"") == grpc
                && l.ends_with(" 1")),
            "{page}"
        );
        proxy.shutdown();
        proxy.wait();
    }
}
both_drivers!(an_upstream_lost_mid_body, super::an_upstream_lost_mid_body);

/// A request the upstream did not process (its GOAWAY's last stream id is
/// below the stream: a graceful restart) and that cannot go again (its
/// body streamed): the client's stream is refused (REFUSED_STREAM, which
/// says the request was not processed, so a gRPC client sends it again
/// itself), not answered with a 502.
fn unprocessed_and_not_replayable_is_refused(driver: IoDriver) {
    // GOAWAY: last stream 0, NO_ERROR.
    let origin = raw_h2_origin_then_close(|_| frame(7, 0, 0, &[0; 8]));
    let (proxy, admin) = forward_with_admin(driver, origin.addr);
    let addr = proxy.forward_addrs()[0];
    let got = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        h2::request(&send, "POST", "/pkg.Svc/Call", Some(vec![7u8; 100]))
            .await
            .map(|a| a.status)
            .map_err(|e| e.reason())
    });
    assert_eq!(got, Err(Some(monoio_http::h2::Reason::REFUSED_STREAM)));
    // A failure for the success rate (it was a request with no response).
    let page = curl_metrics(admin);
    assert!(
        page.lines().any(|l| l.starts_with("response_total{")
            && l.contains("status_code=\"502\",classification=\"failure\",error=\"stream_reset\"")
            && l.ends_with(" 1")),
        "{page}"
    );
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    unprocessed_and_not_replayable_is_refused,
    super::unprocessed_and_not_replayable_is_refused
);

/// Streams that shared a failed connection attempt fail as it did: the
/// same status and reason (they were told a string and made a new
/// "upstream connection failed: upstream connection failed: ..." of it,
/// a timeout or the proxy out of descriptors becoming a refusal).
fn a_shared_connection_failure_keeps_its_kind(driver: IoDriver) {
    let (_held, dead) = refusing_port();
    let proxy = forward_with(driver, dead, &[]);
    let addr = proxy.forward_addrs()[0];
    let answers = h2::runtime().block_on(async move {
        let send = h2::connect(addr).await;
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let send = send.clone();
                monoio::spawn(async move {
                    let a = h2::request(&send, "GET", "/", None).await.unwrap();
                    let why = a.headers["l5d-proxy-error"].to_str().unwrap().to_string();
                    (a.status, why)
                })
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await);
        }
        out
    });
    for (status, why) in &answers {
        assert_eq!(*status, 502, "{answers:?}");
        assert_eq!(
            why.matches("upstream connection failed").count(),
            1,
            "{answers:?}"
        );
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    a_shared_connection_failure_keeps_its_kind,
    super::a_shared_connection_failure_keeps_its_kind
);
