//! `ringmesh tap`: watches a proxy's requests through its tap port, one
//! line per event as `linkerd viz tap` prints them, or JSON.
//!
//! ```text
//! ringmesh tap [--addr HOST:PORT] [--method M] [--path PREFIX]
//!              [--authority A] [--to IP[/BITS] | IP:PORT | :PORT]
//!              [--limit N] [--headers] [-o json]
//! ```
//!
//! The filters are ANDed; with none every request matches. The call ends
//! after `--limit` requests (default [`crate::tap::MAX_LIMIT`]), when the
//! proxy goes away, or on Ctrl-C.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::http_types::HttpMethod;
use linkerd2_proxy_api::tap::eos::End as Eos;
use linkerd2_proxy_api::tap::observe_request::{self, r#match};
use linkerd2_proxy_api::tap::tap_event::{self, http as th};
use linkerd2_proxy_api::tap::{ObserveRequest, TapEvent};

use crate::grpc::{self, Channel};

const OBSERVE_PATH: &str = "/io.linkerd.proxy.tap.Tap/Observe";

const USAGE: &str = "usage: ringmesh tap [--addr HOST:PORT] [--method M] [--path PREFIX] \
[--authority A] [--to IP[/BITS] | IP:PORT | :PORT] [--limit N] [--headers] [-o json]";

/// `ringmesh tap --help`: the flags as docs/TAP.md describes them.
fn help() -> String {
    format!(
        "\
usage: ringmesh tap [--addr HOST:PORT] [--method M] [--path PREFIX] [--authority A]
                    [--to IP[/BITS] | IP:PORT | :PORT] [--limit N] [--headers] [-o json]

Watches a running proxy's requests through its tap port, one line per
event as `linkerd viz tap` prints them (docs/TAP.md). Filters are ANDed;
with none every request matches.

  --addr HOST:PORT          the proxy's tap port (default 127.0.0.1:4190)
  --method M                requests with this method
  --path PREFIX             requests whose path starts with PREFIX
  --authority A             requests with this authority (exact)
  --to IP[/BITS] | IP:PORT | :PORT
                            requests to this destination address, network or port
  --limit N                 end after N requests (default and most: {max})
  --headers                 ask for the requests' headers too (printed with -o json)
  -o, --output json|text    json: one JSON object per event; text: lines (default)
  -h, --help                this help

The call also ends when the proxy goes away, or on Ctrl-C. Exit codes:
0 done; 64 bad arguments or a request the proxy refuses; 69 the proxy
cannot be reached or does not answer within 5 s.
",
        max = crate::tap::MAX_LIMIT
    )
}

/// Why the command line runs no tap.
#[derive(Debug, PartialEq)]
enum ArgsError {
    /// `-h`/`--help`: print the help, exit 0.
    Help,
    /// A mistake, said in these words.
    Bad(String),
}

impl From<String> for ArgsError {
    fn from(why: String) -> Self {
        Self::Bad(why)
    }
}

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    request: ObserveRequest,
    json: bool,
}

fn http_match(m: r#match::http::Match) -> observe_request::Match {
    observe_request::Match {
        r#match: Some(r#match::Match::Http(r#match::Http { r#match: Some(m) })),
    }
}

fn tcp_match(m: r#match::tcp::Match) -> observe_request::Match {
    observe_request::Match {
        r#match: Some(r#match::Match::Destination(r#match::Tcp {
            r#match: Some(m),
        })),
    }
}

fn ports(min: u16, max: u16) -> observe_request::Match {
    tcp_match(r#match::tcp::Match::Ports(r#match::tcp::PortRange {
        min: u32::from(min),
        max: u32::from(max),
    }))
}

/// `--to`: a destination address, network or port.
fn destination(v: &str) -> Result<Vec<observe_request::Match>, String> {
    let net = |ip: IpAddr, bits: u8| -> Result<observe_request::Match, String> {
        ipnet::IpNet::new(ip, bits).map_err(|e| format!("--to {v}: {e}"))?;
        // An IPv4-mapped network is the IPv4 one (events carry IPv4
        // addresses as such).
        let (ip, bits) = match ip {
            IpAddr::V6(v6) if bits >= 96 && v6.to_ipv4_mapped().is_some() => {
                (ip.to_canonical(), bits - 96)
            }
            _ => (ip, bits),
        };
        if bits == 0 {
            // Every address: no condition (a netmask of 0 is no mask to
            // the proxy, as to linkerd2-proxy).
            return Ok(observe_request::Match {
                r#match: Some(r#match::Match::All(r#match::Seq::default())),
            });
        }
        Ok(tcp_match(r#match::tcp::Match::Netmask(
            r#match::tcp::Netmask {
                ip: Some(ip.into()),
                mask: u32::from(bits),
            },
        )))
    };
    // (`::1` and `::/0` start with a colon too: `:PORT` is digits only.)
    if let Some(port) = v
        .strip_prefix(':')
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        let p: u16 = port.parse().map_err(|_| format!("--to {v}: bad port"))?;
        return Ok(vec![ports(p, p)]);
    }
    if let Ok(addr) = v.parse::<SocketAddr>() {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        return Ok(vec![net(addr.ip(), bits)?, ports(addr.port(), addr.port())]);
    }
    if let Ok(n) = v.parse::<ipnet::IpNet>() {
        return Ok(vec![net(n.addr(), n.prefix_len())?]);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(vec![net(ip, bits)?]);
    }
    Err(format!("--to {v}: expected IP[/BITS], IP:PORT or :PORT"))
}

fn parse(args: &[String]) -> Result<Args, ArgsError> {
    let mut addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4190));
    let mut limit = crate::tap::MAX_LIMIT;
    let mut json = false;
    let mut headers = false;
    // Every request has a destination port: the match with no filters.
    let mut all = vec![ports(1, u16::MAX)];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--addr" => {
                let v = value("--addr")?;
                addr = v
                    .parse()
                    .map_err(|_| format!("--addr {v}: expected HOST:PORT"))?;
            }
            "--method" => {
                let v = value("--method")?;
                let m = http::Method::from_bytes(v.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("--method {v}: not a method"))?;
                all.push(http_match(r#match::http::Match::Method(HttpMethod::from(
                    m,
                ))));
            }
            "--path" => {
                let v = value("--path")?;
                all.push(http_match(r#match::http::Match::Path(
                    r#match::http::StringMatch {
                        r#match: Some(r#match::http::string_match::Match::Prefix(v)),
                    },
                )));
            }
            "--authority" => {
                let v = value("--authority")?;
                all.push(http_match(r#match::http::Match::Authority(
                    r#match::http::StringMatch {
                        r#match: Some(r#match::http::string_match::Match::Exact(v)),
                    },
                )));
            }
            "--to" => all.extend(destination(&value("--to")?)?),
            "--limit" => {
                let v = value("--limit")?;
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=crate::tap::MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!("--limit {v}: expected 1..={}", crate::tap::MAX_LIMIT)
                    })?;
            }
            "--headers" => headers = true,
            "-o" | "--output" => match value("-o")?.as_str() {
                "json" => json = true,
                "wide" | "text" => json = false,
                other => return Err(format!("-o {other}: expected json or text").into()),
            },
            "-h" | "--help" => return Err(ArgsError::Help),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    use observe_request::extract;
    Ok(Args {
        addr,
        json,
        request: ObserveRequest {
            limit,
            r#match: Some(observe_request::Match {
                r#match: Some(r#match::Match::All(r#match::Seq { matches: all })),
            }),
            extract: headers.then_some(observe_request::Extract {
                extract: Some(extract::Extract::Http(extract::Http {
                    extract: Some(extract::http::Extract::Headers(extract::http::Headers {})),
                })),
            }),
        },
    })
}

/// Runs `ringmesh tap ARGS`; the process's exit code.
pub fn main(args: &[String]) -> u8 {
    let args = match parse(args) {
        Ok(a) => a,
        Err(ArgsError::Help) => {
            print!("{}", help());
            return 0;
        }
        Err(ArgsError::Bad(why)) => {
            eprintln!("ringmesh tap: {why}\n{USAGE}");
            return 64;
        }
    };
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringmesh tap: cannot start: {e}");
            return 69;
        }
    };
    rt.block_on(async move {
        match observe(&args).await {
            Ok(()) => 0,
            Err(e) => {
                // The message may be the server's own words.
                eprintln!("ringmesh tap: {}", shown(&e.to_string()));
                if e.code == grpc::Code::InvalidArgument {
                    64
                } else {
                    69
                }
            }
        }
    })
}

async fn observe(args: &Args) -> Result<(), grpc::GrpcError> {
    // Connected and answered (the response's head) within 5 s; the
    // events then come when they come.
    let deadline = Instant::now() + Duration::from_secs(5);
    let channel = Channel::connect(args.addr, deadline).await?;
    let call =
        grpc::server_streaming::<_, TapEvent>(&channel, OBSERVE_PATH, args.request.clone(), None);
    let mut events = monoio::time::timeout_at(monoio::time::Instant::from_std(deadline), call)
        .await
        .map_err(|_| {
            grpc::GrpcError::new(
                grpc::Code::DeadlineExceeded,
                format!("{} did not answer the call within 5 s", args.addr),
            )
        })??;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = events.message().await? {
        let line = if args.json { json(&ev) } else { text(&ev) };
        if let Some(line) = line {
            use std::io::Write as _;
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(()); // the reader went away (a pipe closed)
            }
        }
    }
    Ok(())
}

fn addr(a: Option<&linkerd2_proxy_api::net::TcpAddress>) -> String {
    a.and_then(|a| {
        let ip = IpAddr::try_from(a.ip?).ok()?;
        Some(SocketAddr::new(ip, u16::try_from(a.port).ok()?).to_string())
    })
    .unwrap_or_else(|| "-".into())
}

fn micros(d: Option<&prost_types::Duration>) -> u64 {
    d.and_then(|d| Duration::try_from(*d).ok())
        .map_or(0, |d| d.as_micros() as u64)
}

fn id(i: Option<&th::StreamId>) -> String {
    i.map_or_else(|| "-".into(), |i| format!("{}:{}", i.base, i.stream))
}

/// The parts every line starts with: id, direction, addresses, TLS.
fn prefix(kind: &str, ev: &TapEvent, sid: Option<&th::StreamId>) -> String {
    let proxy = match tap_event::ProxyDirection::try_from(ev.proxy_direction) {
        Ok(tap_event::ProxyDirection::Inbound) => "in",
        Ok(tap_event::ProxyDirection::Outbound) => "out",
        _ => "-",
    };
    let meta =
        |m: Option<&tap_event::EndpointMeta>, k: &str| m.and_then(|m| m.labels.get(k)).cloned();
    let tls = meta(ev.source_meta.as_ref(), "tls")
        .or_else(|| meta(ev.destination_meta.as_ref(), "tls"))
        .unwrap_or_else(|| "no_identity".into());
    format!(
        "{kind} id={} proxy={proxy} src={} dst={} tls={}",
        id(sid),
        addr(ev.source.as_ref()),
        addr(ev.destination.as_ref()),
        shown(&tls)
    )
}

/// `s` as a terminal may show it: control characters (a line break that
/// would forge a line of its own, an escape sequence) escaped, as Rust
/// writes them (`\n`, `\u{1b}`). The fields are the tapped requests' own.
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A `RequestInit`'s method, as text.
fn method(r: &th::RequestInit) -> Option<String> {
    let m = http::Method::try_from(r.method.clone()?).ok()?;
    Some(m.to_string())
}

/// One event as `linkerd viz tap` prints it.
fn text(ev: &TapEvent) -> Option<String> {
    let tap_event::Event::Http(h) = ev.event.as_ref()?;
    Some(match h.event.as_ref()? {
        th::Event::RequestInit(r) => {
            let method = method(r).unwrap_or_else(|| "-".into());
            format!(
                "{} :method={method} :authority={} :path={}",
                prefix("req", ev, r.id.as_ref()),
                shown(&r.authority),
                shown(&r.path)
            )
        }
        th::Event::ResponseInit(r) => format!(
            "{} :status={} latency={}µs",
            prefix("rsp", ev, r.id.as_ref()),
            r.http_status,
            micros(r.since_request_init.as_ref())
        ),
        th::Event::ResponseEnd(r) => {
            let mut s = prefix("end", ev, r.id.as_ref());
            match r.eos.as_ref().and_then(|e| e.end.as_ref()) {
                Some(Eos::GrpcStatusCode(c)) => {
                    let _ = write!(s, " grpc-status={}", grpc::Code::from_number(*c).as_str());
                }
                Some(Eos::ResetErrorCode(c)) => {
                    let _ = write!(s, " reset-error={}", reset_name(*c));
                }
                None => {}
            }
            let _ = write!(
                s,
                " duration={}µs response-length={}B",
                micros(r.since_response_init.as_ref()),
                r.response_bytes
            );
            s
        }
    })
}

/// A JSON string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    ringmesh_protocols::json::push_str(&mut out, s);
    out
}

/// One event as a JSON object on one line.
fn json(ev: &TapEvent) -> Option<String> {
    let tap_event::Event::Http(h) = ev.event.as_ref()?;
    let direction = match tap_event::ProxyDirection::try_from(ev.proxy_direction) {
        Ok(tap_event::ProxyDirection::Inbound) => "inbound",
        Ok(tap_event::ProxyDirection::Outbound) => "outbound",
        _ => "unknown",
    };
    let labels = |m: Option<&tap_event::EndpointMeta>| {
        let mut kv: Vec<_> = m.map(|m| m.labels.iter().collect()).unwrap_or_default();
        kv.sort();
        let fields: Vec<String> = kv
            .into_iter()
            .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
            .collect();
        format!("{{{}}}", fields.join(","))
    };
    let common = format!(
        "\"source\":{},\"destination\":{},\"proxyDirection\":{},\"sourceMeta\":{},\"destinationMeta\":{}",
        quote(&addr(ev.source.as_ref())),
        quote(&addr(ev.destination.as_ref())),
        quote(direction),
        labels(ev.source_meta.as_ref()),
        labels(ev.destination_meta.as_ref()),
    );
    Some(match h.event.as_ref()? {
        th::Event::RequestInit(r) => {
            let method = method(r).unwrap_or_default();
            let headers: Vec<String> = r
                .headers
                .iter()
                .flat_map(|h| &h.headers)
                .map(|h| {
                    format!(
                        "[{},{}]",
                        quote(&h.name),
                        quote(&String::from_utf8_lossy(&h.value))
                    )
                })
                .collect();
            format!(
                "{{\"event\":\"requestInit\",\"id\":{},{common},\"method\":{},\"authority\":{},\"path\":{},\"headers\":[{}]}}",
                quote(&id(r.id.as_ref())),
                quote(&method),
                quote(&r.authority),
                quote(&r.path),
                headers.join(",")
            )
        }
        th::Event::ResponseInit(r) => format!(
            "{{\"event\":\"responseInit\",\"id\":{},{common},\"status\":{},\"latencyMicros\":{}}}",
            quote(&id(r.id.as_ref())),
            r.http_status,
            micros(r.since_request_init.as_ref())
        ),
        th::Event::ResponseEnd(r) => {
            let (grpc, reset) = match r.eos.as_ref().and_then(|e| e.end.as_ref()) {
                Some(Eos::GrpcStatusCode(c)) => (c.to_string(), "null".into()),
                Some(Eos::ResetErrorCode(c)) => ("null".into(), c.to_string()),
                None => ("null".into(), "null".into()),
            };
            format!(
                "{{\"event\":\"responseEnd\",\"id\":{},{common},\"sinceRequestInitMicros\":{},\"sinceResponseInitMicros\":{},\"responseBytes\":{},\"grpcStatus\":{grpc},\"resetErrorCode\":{reset}}}",
                quote(&id(r.id.as_ref())),
                micros(r.since_request_init.as_ref()),
                micros(r.since_response_init.as_ref()),
                r.response_bytes
            )
        }
    })
}

/// An HTTP/2 error code's name (RFC 9113 §7), or its number.
fn reset_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or_else(|| code.to_string(), |n| (*n).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response's end says how its stream ended: a gRPC status, or the
    /// reset's error code.
    #[test]
    fn end_lines_say_how_the_stream_ended() {
        let end = |eos: Option<Eos>| TapEvent {
            event: Some(tap_event::Event::Http(tap_event::Http {
                event: Some(th::Event::ResponseEnd(th::ResponseEnd {
                    id: Some(th::StreamId { base: 1, stream: 2 }),
                    response_bytes: 13,
                    eos: eos.map(|e| linkerd2_proxy_api::tap::Eos { end: Some(e) }),
                    ..Default::default()
                })),
            })),
            ..Default::default()
        };
        let reset = end(Some(Eos::ResetErrorCode(2)));
        let line = text(&reset).unwrap();
        assert!(line.starts_with("end id=1:2 "), "{line}");
        assert!(line.contains(" reset-error=INTERNAL_ERROR "), "{line}");
        assert!(line.ends_with(" response-length=13B"), "{line}");
        let j: serde_json::Value = serde_json::from_str(&json(&reset).unwrap()).unwrap();
        assert_eq!(
            (j["resetErrorCode"].as_u64(), j["grpcStatus"].is_null()),
            (Some(2), true)
        );
        let grpc = end(Some(Eos::GrpcStatusCode(14)));
        assert!(text(&grpc).unwrap().contains(" grpc-status=UNAVAILABLE "));
        let j: serde_json::Value = serde_json::from_str(&json(&grpc).unwrap()).unwrap();
        assert_eq!(
            (j["grpcStatus"].as_u64(), j["resetErrorCode"].is_null()),
            (Some(14), true)
        );
        let plain = text(&end(None)).unwrap();
        assert!(!plain.contains("grpc-status") && !plain.contains("reset-error"));
        assert_eq!(reset_name(99), "99");
    }

    /// A tapped request's fields are the client's: control characters in
    /// them are shown escaped, never written to the terminal, and cannot
    /// forge a line.
    #[test]
    fn control_characters_are_escaped() {
        let mut labels = std::collections::HashMap::new();
        labels.insert("tls".to_string(), "true\u{1b}]0;title\u{7}".to_string());
        let ev = TapEvent {
            source_meta: Some(tap_event::EndpointMeta { labels }),
            event: Some(tap_event::Event::Http(tap_event::Http {
                event: Some(th::Event::RequestInit(th::RequestInit {
                    id: Some(th::StreamId { base: 1, stream: 2 }),
                    authority: "web\u{1b}[2J".into(),
                    path: "/a\nreq id=9:9 :path=/forged".into(),
                    ..Default::default()
                })),
            })),
            ..Default::default()
        };
        let line = text(&ev).unwrap();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains(r":authority=web\u{1b}[2J"), "{line}");
        assert!(line.contains(r":path=/a\nreq id=9:9"), "{line}");
        assert!(line.contains(r"tls=true\u{1b}]0;title\u{7}"), "{line}");
        assert_eq!(shown("/plain/ütf-8"), "/plain/ütf-8");
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn arguments_build_the_match() {
        let a = parse(&args(
            "--addr 127.0.0.1:9 --method get --path /api --to 10.0.0.0/8 --limit 5 -o json",
        ))
        .unwrap();
        assert_eq!(a.addr, "127.0.0.1:9".parse().unwrap());
        assert!(a.json);
        let tap = crate::tap::Tap::new(&a.request).unwrap();
        assert_eq!(tap.limit, 5);
        let req = |method, path, dst: &str| crate::tap::TapRequest {
            source: "127.0.0.1:1".parse().unwrap(),
            destination: dst.parse().unwrap(),
            method,
            scheme: "http",
            authority: "a",
            path,
            dst_labels: &[],
            route_labels: &[],
        };
        assert!(tap.matcher.matches(&req("GET", "/api/x", "10.1.2.3:80")));
        assert!(!tap.matcher.matches(&req("POST", "/api/x", "10.1.2.3:80")));
        assert!(!tap.matcher.matches(&req("GET", "/x", "10.1.2.3:80")));
        assert!(!tap.matcher.matches(&req("GET", "/api", "11.1.2.3:80")));
        // No filters: everything.
        let all = crate::tap::Tap::new(&parse(&[]).unwrap().request).unwrap();
        assert!(all.matcher.matches(&req("PUT", "/", "1.2.3.4:1")));
        assert_eq!(all.limit, crate::tap::MAX_LIMIT);
        for bad in [
            "--limit 0",
            "--to nowhere",
            "--method",
            "--frob",
            "-o yaml",
            "--to :x",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    /// `-h`/`--help` asks for the help (wherever it is, unless it is a
    /// flag's value), and the help names every flag `parse` takes.
    #[test]
    fn help_is_asked_for_and_names_every_flag() {
        assert_eq!(parse(&args("--help")).unwrap_err(), ArgsError::Help);
        assert_eq!(parse(&args("--limit 3 -h")).unwrap_err(), ArgsError::Help);
        assert!(parse(&args("--path --help")).is_ok());
        let help = help();
        for flag in [
            "--addr",
            "--method",
            "--path",
            "--authority",
            "--to",
            "--limit",
            "--headers",
            "-o",
            "--output",
            "--help",
        ] {
            assert!(help.contains(&format!("{flag} ")), "{flag}: {help}");
        }
    }

    /// IPv6 filters starting with `::` are addresses and networks, not
    /// `:PORT`; a mapped one matches the IPv4 destination it maps.
    #[test]
    fn ipv6_destinations() {
        let dst = |to: &str, d: &str| {
            let a = parse(&args(&format!("--to {to}"))).unwrap();
            let tap = crate::tap::Tap::new(&a.request).unwrap();
            tap.matcher.matches(&crate::tap::TapRequest {
                source: "127.0.0.1:1".parse().unwrap(),
                destination: d.parse().unwrap(),
                method: "GET",
                scheme: "http",
                authority: "a",
                path: "/",
                dst_labels: &[],
                route_labels: &[],
            })
        };
        assert!(dst("::1", "[::1]:80"));
        assert!(!dst("::1", "127.0.0.1:80"));
        assert!(dst("::/0", "[2001:db8::1]:80"));
        assert!(dst("::1/128", "[::1]:80"));
        assert!(dst("::ffff:127.0.0.1/128", "127.0.0.1:80"));
        assert!(dst("[::ffff:127.0.0.1]:80", "127.0.0.1:80"));
        assert!(dst(":80", "[::1]:80"));
        assert!(!dst(":81", "[::1]:80"));
    }
}
