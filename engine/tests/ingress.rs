//! Linkerd's ingress mode (`LINKERD2_PROXY_INGRESS_MODE`): on the outbound
//! listener, an HTTP request with `l5d-dst-override` goes to the service
//! the header names (the header removed on the way), one without it where
//! it would have gone anyway; and the proxy's own error answers do not say
//! why (`LINKERD2_PROXY_OUTBOUND_DISABLE_INFORMATIONAL_HEADERS`, on by
//! default in ingress mode). curl is the client, HTTP/1.1 and HTTP/2.

mod common;

use std::io::{BufReader, Read, Write};
use std::process::Command;

use common::*;
use ringmesh_engine::IoDriver;

/// An HTTP/1 backend answering every request with its name and the
/// request's head, lower-cased (what the proxy forwarded).
fn head_echo(name: &'static str) -> Backend {
    Backend::start(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while let Some(head) = http::head_lines(&mut r) {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let text = format!("{name}\n{head}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if w.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// curl's output (headers with `-i`) for `args`, to the proxy at `out`.
fn curl(out: std::net::SocketAddr, args: &[&str]) -> String {
    let url = format!("http://{out}/path");
    let o = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .arg(&url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n")
}

fn ingress(driver: IoDriver) {
    let (web, other) = (head_echo("web"), head_echo("other"));
    let dir = TempDir::new(&format!("ingress-{}", driver_name(driver)));
    let file = dir.join("d.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"web.test:8080\"\nendpoints = [\"{}\"]\nprotocol = \"http1\"\n\n\
             [[service]]\nname = \"other.test:80\"\nendpoints = [\"{}\"]\nprotocol = \"http1\"\n\n\
             [[service]]\nname = \"dead.test:80\"\nendpoints = [\"{}\"]\nprotocol = \"http1\"\n",
            web.addr,
            other.addr,
            closed_port()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let start = |more: &[(&str, &str)]| {
        let mut vars = vec![
            ("LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0"),
            ("RINGMESH_DISCOVERY_STATIC", file),
        ];
        vars.extend_from_slice(more);
        start_proxy(driver, &vars)
    };
    let host = ["-H", "Host: other.test:80"];
    let with = |extra: &[&'static str]| {
        let mut a = host.to_vec();
        a.extend_from_slice(extra);
        a
    };
    let override_web = ["-H", "l5d-dst-override: web.test:8080"];
    let h2 = "--http2-prior-knowledge";

    let proxy = start(&[("LINKERD2_PROXY_INGRESS_MODE", "true")]);
    let out = proxy.outbound_addr().unwrap();
    for version in [None, Some(h2)] {
        let v: Vec<&str> = version.into_iter().collect();
        // The override names the service; the header goes no further.
        let text = curl(out, &[with(&override_web), v.clone()].concat());
        assert!(
            text.contains("\n\nweb\nget /path http/1.1\n"),
            "{version:?}: {text}"
        );
        assert!(!text.contains("l5d-dst-override"), "{version:?}: {text}");
        // Without it: the request's own authority, as without ingress mode.
        let text = curl(out, &[with(&[]), v.clone()].concat());
        assert!(text.contains("\n\nother\n"), "{version:?}: {text}");
        // A port defaults to 80.
        let text = curl(
            out,
            &[with(&["-H", "l5d-dst-override: other.test"]), v.clone()].concat(),
        );
        assert!(text.contains("\n\nother\n"), "{version:?}: {text}");
        // As linkerd2-proxy reads the header: a value that is no URI
        // authority is ignored (the request's own authority)...
        for ignored in [
            "l5d-dst-override: web test",
            "l5d-dst-override: web\"test",
            "l5d-dst-override: x%00y:80",
        ] {
            let text = curl(out, &[&host[..], &["-H", ignored], &v[..]].concat());
            assert!(
                text.contains("\n\nother\n"),
                "{version:?} {ignored}: {text}"
            );
            // ... and removed all the same, as linkerd2-proxy's ingress.
            assert!(
                !text.contains("l5d-dst-override"),
                "{version:?} {ignored}: {text}"
            );
        }
        // ...an authority's userinfo is dropped...
        let text = curl(
            out,
            &[
                with(&["-H", "l5d-dst-override: user@web.test:8080"]),
                v.clone(),
            ]
            .concat(),
        );
        assert!(text.contains("\n\nweb\n"), "{version:?}: {text}");
        // ...and an authority whose host is an address or no DNS name, or
        // whose port is no number: 400.
        let other_addr = format!("l5d-dst-override: {}", other.addr);
        let bad_ones = [
            "l5d-dst-override: web.test:http",
            "l5d-dst-override: web!test:80",
            other_addr.as_str(),
        ];
        for bad in bad_ones {
            let text = curl(out, &[&host[..], &["-H", bad], &v[..]].concat());
            assert!(
                text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/2 400"),
                "{version:?} {bad}: {text}"
            );
        }
        // A failure's answer does not say why (ingress mode's default):
        // nothing listens at the endpoint of the service the override names.
        let header = "l5d-dst-override: dead.test:80".to_string();
        let text = curl(out, &[vec!["-H", header.as_str()], v.clone()].concat());
        let (head, body) = text.split_once("\n\n").unwrap();
        assert!(head.contains(" 502"), "{version:?}: {text}");
        assert!(!head.contains("l5d-proxy-error"), "{version:?}: {text}");
        assert_eq!(body, "", "{version:?}");
        // gRPC: the status alone, without grpc-message.
        if version.is_some() {
            let text = curl(
                out,
                &[
                    vec![
                        "-H",
                        header.as_str(),
                        "-H",
                        "content-type: application/grpc",
                    ],
                    v.clone(),
                ]
                .concat(),
            );
            assert!(text.contains("grpc-status: 14"), "{text}");
            assert!(!text.contains("grpc-message"), "{text}");
        }
    }
    drop(proxy);

    // Ingress mode with the informational headers asked for.
    let proxy = start(&[
        ("LINKERD2_PROXY_INGRESS_MODE", "true"),
        (
            "LINKERD2_PROXY_OUTBOUND_DISABLE_INFORMATIONAL_HEADERS",
            "false",
        ),
    ]);
    let out = proxy.outbound_addr().unwrap();
    let text = curl(out, &["-H", "l5d-dst-override: dead.test:80"]);
    assert!(text.contains("l5d-proxy-error: "), "{text}");
    drop(proxy);

    // Not in ingress mode: the header is nobody's business but the
    // application's; the request goes by its authority.
    let proxy = start(&[]);
    let out = proxy.outbound_addr().unwrap();
    for version in [None, Some(h2)] {
        let v: Vec<&str> = version.into_iter().collect();
        let text = curl(out, &[with(&override_web), v].concat());
        assert!(text.contains("\n\nother\n"), "{version:?}: {text}");
        assert!(
            text.contains("l5d-dst-override: web.test:8080"),
            "{version:?}: {text}"
        );
    }
    drop(proxy);
}
both_drivers!(ingress_mode, super::ingress);
