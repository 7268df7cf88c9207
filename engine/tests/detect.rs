//! Protocol detection on accepted connections: opaque ports skip it, the
//! detect timeout bounds it, and whatever was read is forwarded intact.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringmesh_engine::IoDriver;

/// A server-speaks-first backend (like MySQL or SMTP): it greets, then echoes.
fn banner_backend() -> Backend {
    Backend::named("220 banner")
}

fn time_to_banner(driver: IoDriver, vars: &[(&str, &str)], backend: &Backend) -> Duration {
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let mut all = vec![("RINGMESH_TCP_FORWARD", fwd.as_str())];
    all.extend_from_slice(vars);
    let proxy = start_proxy(driver, &all);
    let started = Instant::now();
    let mut c = connect(proxy.forward_addrs()[0]);
    assert_eq!(read_name(&mut c), "220 banner");
    let took = started.elapsed();
    // The connection is fully usable afterwards.
    c.write_all(b"EHLO x\n").unwrap();
    let mut back = [0u8; 7];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"EHLO x\n");
    drop(c);
    proxy.shutdown();
    proxy.wait();
    took
}

fn opaque_port_skips_detection(driver: IoDriver) {
    let backend = banner_backend();
    let port = backend.addr.port().to_string();
    let took = time_to_banner(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
            ("RINGMESH_OUTBOUND_OPAQUE_PORTS", &port),
        ],
        &backend,
    );
    assert!(
        took < Duration::from_secs(1),
        "greeting took {took:?} on an opaque port"
    );
}
both_drivers!(
    opaque_port_skips_detection,
    super::opaque_port_skips_detection
);

fn discovery_opaque_skips_detection(driver: IoDriver) {
    let backend = banner_backend();
    let dir = std::env::temp_dir().join(format!(
        "ringmesh-detect-{}-{}",
        std::process::id(),
        backend.addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("d.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"mail.test:2525\"\nendpoints = [\"{}\"]\nprotocol = \"opaque\"\n",
            backend.addr
        ),
    )
    .unwrap();
    let proxy = start_proxy(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
            ("RINGMESH_TCP_FORWARD", "127.0.0.1:0=mail.test:2525"),
            ("RINGMESH_DISCOVERY_STATIC", file.to_str().unwrap()),
        ],
    );
    let started = Instant::now();
    let mut c = connect(proxy.forward_addrs()[0]);
    assert_eq!(read_name(&mut c), "220 banner");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    drop(c);
    proxy.shutdown();
    proxy.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
both_drivers!(
    discovery_opaque_skips_detection,
    super::discovery_opaque_skips_detection
);

fn detect_timeout_falls_back_to_opaque(driver: IoDriver) {
    let backend = banner_backend();
    let took = time_to_banner(
        driver,
        &[
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "600ms"),
            ("RINGMESH_OUTBOUND_OPAQUE_PORTS", ""),
        ],
        &backend,
    );
    assert!(
        took >= Duration::from_millis(550),
        "greeting after {took:?}: detection did not wait"
    );
    assert!(took < Duration::from_secs(3), "greeting after {took:?}");
}
both_drivers!(
    detect_timeout_falls_back_to_opaque,
    super::detect_timeout_falls_back_to_opaque
);

/// Whatever the client sent first reaches the server byte for byte, also
/// when it arrives in pieces during detection.
fn detected_bytes_are_forwarded(driver: IoDriver) {
    let backend = Backend::echo();
    let fwd = format!("127.0.0.1:0={}", backend.addr);
    let proxy = start_proxy(
        driver,
        &[
            ("RINGMESH_TCP_FORWARD", &fwd),
            ("LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT", "5s"),
        ],
    );
    let addr = proxy.forward_addrs()[0];
    let client_hello: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
    // (HTTP/1 and HTTP/2 are proxied, not relayed: engine/tests/http1.rs,
    // engine/tests/http2.rs.)
    let cases: [&[&[u8]]; 3] = [
        &[b"GET / HT", b"TP/2.0\r\nHost: a\r\n\r\n"],
        &[&client_hello[..1], &client_hello[1..]],
        &[b"\x00\x01binary", b"more"],
    ];
    for pieces in cases {
        let mut c = connect(addr);
        let mut sent = Vec::new();
        for p in pieces {
            c.write_all(p).unwrap();
            sent.extend_from_slice(p);
            thread::sleep(Duration::from_millis(30));
        }
        let mut back = vec![0u8; sent.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, sent);
    }
    proxy.shutdown();
    proxy.wait();
}
both_drivers!(
    detected_bytes_are_forwarded,
    super::detected_bytes_are_forwarded
);
