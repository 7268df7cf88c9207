//! Linkerd's HTTP access log (`LINKERD2_PROXY_ACCESS_LOG`) through the real
//! binary: one line per inbound request on stderr, Apache-style or JSON,
//! none for outbound requests, none with the log off.

mod common;

use std::process::Command;
use std::time::Duration;

use common::proc::*;
use common::*;
use nix::sys::signal::Signal;

/// The binary with an inbound listener (its address handed out by
/// `spawn_ready`) whose connections go to `backend`, an outbound forward
/// `forward` to it as well, and `vars`.
fn start(
    backend: std::net::SocketAddr,
    forward: std::net::SocketAddr,
    vars: &[(&str, &str)],
) -> (Running, String) {
    let target = backend.to_string();
    let fwd = format!("{forward}={backend}");
    let (p, inbound) = Running::spawn_ready(|addr| {
        let addr = addr.to_string();
        let mut all = vec![
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", addr.as_str()),
            ("RINGMESH_INBOUND_TARGET", target.as_str()),
            ("RINGMESH_TCP_FORWARD", fwd.as_str()),
        ];
        all.extend_from_slice(vars);
        ringmesh("auto", &all)
    });
    (p, inbound.to_string())
}

/// curl's status for `url` (`flags` first).
fn curl(flags: &[&str], url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(flags)
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of `p` that are access log lines (`marker` in them), once
/// the proxy has stopped (so every line is out).
fn stopped_lines(mut p: Running, marker: &str) -> Vec<String> {
    p.signal(Signal::SIGTERM);
    assert!(p.wait_for("ringmesh: stopped", Duration::from_secs(10)));
    std::mem::take(&mut p.seen)
        .into_iter()
        .filter(|l| l.contains(marker))
        .collect()
}

#[test]
fn apache_lines_for_inbound_requests_only() {
    let origin = http::origin("app");
    let forward = closed_port();
    let (p, inbound) = start(
        origin.addr,
        forward,
        &[("LINKERD2_PROXY_ACCESS_LOG", "apache")],
    );
    assert_eq!(
        curl(
            &["-H", "user-agent: probe/1"],
            &format!("http://{inbound}/hello")
        ),
        "200"
    );
    // Outbound (an explicit forward): not logged, as linkerd2-proxy.
    assert_eq!(curl(&[], &format!("http://{forward}/hello")), "200");
    let lines = stopped_lines(p, "\"GET ");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = regex::Regex::new(
        r#"^127\.0\.0\.1:\d+ - - \[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\] "GET http://127\.0\.0\.1:\d+/hello HTTP/1\.1" 200$"#,
    )
    .unwrap();
    assert!(line.is_match(&lines[0]), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("http://{inbound}/hello")),
        "{}",
        lines[0]
    );
}

#[test]
fn json_lines_carry_linkerds_fields() {
    let origin = http::origin("app");
    let forward = closed_port();
    let (p, inbound) = start(
        origin.addr,
        forward,
        &[("LINKERD2_PROXY_ACCESS_LOG", "json")],
    );
    let url = format!("http://{inbound}/hello");
    assert_eq!(
        curl(
            &["-H", "x-request-id: req-\"7\"", "-H", "user-agent: probe/1"],
            &url
        ),
        "200"
    );
    // HTTP/2 to an HTTP/1-only target: the proxy's own 502 is logged too,
    // with its body's length (none: inbound, a client that is no proxy
    // gets the status alone, as from linkerd2-proxy).
    let answered = curl(
        &[
            "--http2-prior-knowledge",
            "-w",
            "%{http_code} %{size_download}",
        ],
        &format!("{url}?h2"),
    );
    let (status, body_len) = answered.split_once(' ').unwrap();
    assert_eq!(status, "502");
    assert_eq!(body_len, "0", "{answered}");
    // HTTP/1 carried over HTTP/2 (as from a peer proxy): the target hears
    // HTTP/1.1.
    assert_eq!(
        curl(
            &[
                "--http2-prior-knowledge",
                "-H",
                "l5d-orig-proto: HTTP/1.1",
                "-H",
                "user-agent: orig/1"
            ],
            &url
        ),
        "200"
    );
    let lines = stopped_lines(p, "\"client.addr\"");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    // Lines come in the order their workers write them out.
    let line = |marker: &str| -> serde_json::Value {
        let l = lines
            .iter()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no line with {marker}: {lines:#?}"));
        serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
    };
    let (h1, h2, orig) = (line("probe/1"), line("/hello?h2"), line("orig/1"));
    assert_eq!(h1["method"], "GET");
    assert_eq!(h1["uri"], url);
    assert_eq!(h1["version"], "HTTP/1.1");
    assert_eq!(h1["status"], 200);
    assert_eq!(h1["client.id"], "-");
    assert_eq!(h1["trace_id"], "req-\"7\"");
    assert_eq!(h1["user_agent"], "probe/1");
    assert_eq!(h1["host"], inbound.as_str());
    assert!(h1["client.addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let ns = |v: &serde_json::Value, k: &str| -> u64 { v[k].as_str().unwrap().parse().unwrap() };
    assert!(
        ns(&h1, "total_ns") > 0 && ns(&h1, "processing_ns") <= ns(&h1, "total_ns"),
        "{h1}"
    );
    // The response's `content-length` ("hello from app\n"), as linkerd2-proxy.
    assert_eq!(h1["response_bytes"], "15");
    assert_eq!(h2["version"], "HTTP/2.0");
    assert_eq!(h2["status"], 502);
    assert_eq!(h2["response_bytes"], body_len);
    assert_eq!(h2["uri"], format!("{url}?h2"));
    assert_eq!(orig["version"], "HTTP/1.1");
    assert_eq!(orig["status"], 200);
    assert_eq!(orig["response_bytes"], "15");
}

#[test]
fn nothing_is_logged_without_it_and_bad_values_are_refused() {
    let origin = http::origin("app");
    let forward = closed_port();
    let (p, inbound) = start(origin.addr, forward, &[]);
    assert_eq!(curl(&[], &format!("http://{inbound}/hello")), "200");
    assert!(stopped_lines(p, "/hello").is_empty());
    let out = ringmesh("auto", &[("LINKERD2_PROXY_ACCESS_LOG", "combined")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LINKERD2_PROXY_ACCESS_LOG"));
}

/// A request the proxy refuses before routing it (here: the default
/// policy denies every plaintext client) is logged too, with the proxy's
/// status.
#[test]
fn refused_requests_are_logged() {
    let origin = http::origin("app");
    let forward = closed_port();
    let (p, inbound) = start(
        origin.addr,
        forward,
        &[
            ("LINKERD2_PROXY_ACCESS_LOG", "apache"),
            ("LINKERD2_PROXY_INBOUND_DEFAULT_POLICY", "all-authenticated"),
        ],
    );
    assert_eq!(curl(&[], &format!("http://{inbound}/hello")), "403");
    assert_eq!(
        curl(
            &["--http2-prior-knowledge"],
            &format!("http://{inbound}/hello?h2")
        ),
        "403"
    );
    let lines = stopped_lines(p, "\"GET ");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.ends_with("/hello HTTP/1.1\" 403")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("/hello?h2 HTTP/2.0\" 403")),
        "{lines:#?}"
    );
}
