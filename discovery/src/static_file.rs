//! The static endpoints file (`RINGMESH_DISCOVERY_STATIC`):
//!
//! ```toml
//! [[service]]
//! name = "web.test:8080"
//! endpoints = ["127.0.0.1:18081", "127.0.0.1:18082"]
//! weights = [3, 1]        # optional, one per endpoint, each > 0
//! protocol = "http1"      # optional: http1 | http2 | opaque
//! labels = { namespace = "web" }  # optional: metric labels, as dst_namespace
//! protocol_hint = "h2"    # optional: the endpoints are meshed (their proxy
//!                         # takes HTTP/1 carried over HTTP/2, l5d-orig-proto)
//! identity = "web.ns.serviceaccount.identity.linkerd.cluster.local"
//!                         # optional: the endpoints' proxy proves this
//!                         # identity; connections to them are mutual TLS
//! opaque_transport_port = 4143  # optional (with identity): the endpoints'
//!                         # proxy port for meshed connections, which open
//!                         # with Linkerd's transport header
//! ```
//!
//! A file that lists no service must say so with a top-level
//! `empty = true` (before any `[[service]]`); without it, a file with no
//! services is refused, because that is what a file caught mid-write looks
//! like (truncated to nothing, or to its comments). `empty = true` next to a
//! service is refused too.
//!
//! Parsing reports every problem in the file, not just the first.
//!
//! Memory: the file is parsed one `[[service]]` table at a time (its
//! headers found with `toml_parser`'s lexer, so a header inside a
//! multi-line string is not one), so what parsing holds besides the text and
//! the result is one table's TOML tree, not the whole file's: 200 000
//! services (13.5 MB) peaked at 450 MB parsed whole, see
//! `examples/static_file_rss.rs`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;
use toml_parser::lexer::TokenKind;

use crate::{Authority, Endpoint, Protocol, Service};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    service: Option<Vec<RawService>>,
    /// The file lists no service on purpose.
    #[serde(default)]
    empty: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    #[serde(default)]
    endpoints: Vec<String>,
    weights: Option<Vec<i64>>,
    protocol: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    protocol_hint: Option<String>,
    identity: Option<String>,
    opaque_transport_port: Option<i64>,
    authority_override: Option<String>,
}

/// Every problem found in one file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct StaticFileError {
    pub problems: Vec<String>,
}

impl fmt::Display for StaticFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

/// Parses and validates the file's text.
pub fn parse(text: &str) -> Result<Vec<Service>, StaticFileError> {
    let mut check = Check::default();
    let mut empty = false;
    let mut line = 1;
    let mut previous = 0;
    let mut headers = service_headers(text).peekable();
    let mut start = 0;
    let mut preamble = true;
    // The preamble (top-level keys), then one document per `[[service]]`.
    loop {
        let end = headers.peek().copied().unwrap_or(text.len());
        line += text[previous..start]
            .bytes()
            .filter(|&b| b == b'\n')
            .count();
        previous = start;
        let part = &text[start..end];
        match toml::from_str::<RawFile>(part) {
            Ok(raw) => {
                if preamble {
                    empty = raw.empty;
                    if raw.service.is_some() && end < text.len() {
                        check.problems.push(
                            "invalid TOML: `service` defined before a [[service]] table".into(),
                        );
                    }
                }
                for svc in raw.service.into_iter().flatten() {
                    check.service(svc);
                }
            }
            // (Each bad field named; else the decoder's first word.)
            Err(_) if !preamble && check.undecoded(part, line) => {}
            Err(e) => {
                let at = e.span().map_or(line, |span| {
                    line + part[..span.start.min(part.len())]
                        .bytes()
                        .filter(|&b| b == b'\n')
                        .count()
                });
                check
                    .problems
                    .push(format!("invalid TOML at line {at}: {}", e.message()));
                // The table's services are unknown: count one, so later
                // services keep their index in messages.
                check.index += usize::from(!preamble);
            }
        }
        if end == text.len() {
            break;
        }
        start = end;
        preamble = false;
        headers.next();
    }
    if check.problems.is_empty() {
        if empty && !check.services.is_empty() {
            check.problems.push(format!(
                "`empty = true` but {} services are listed",
                check.services.len()
            ));
        } else if !empty && check.services.is_empty() {
            check.problems.push(
                "no services: a file that lists none on purpose says `empty = true` \
                 (an empty file is taken for one caught mid-write)"
                    .into(),
            );
        }
    }
    if check.problems.is_empty() {
        Ok(check.services)
    } else {
        Err(StaticFileError {
            problems: check.problems,
        })
    }
}

/// Lines after `part`'s first where a line sets `key` (`key =`), if one
/// does.
fn key_line(part: &str, key: &str) -> Option<usize> {
    part.lines().position(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

/// The byte offsets of the lines that open a `[[service]]` table: a line
/// (outside strings, which the lexer keeps whole) whose first token opens
/// an array of tables named exactly `service` (bare or quoted; not
/// `[[service.x]]`, which belongs to the table before it).
fn service_headers(text: &str) -> impl Iterator<Item = usize> + '_ {
    let mut line_start = true;
    toml_parser::Source::new(text)
        .lex()
        .filter_map(move |token| {
            let kind = token.kind();
            let at = token.span().start();
            let opens = line_start
                && kind == TokenKind::LeftSquareBracket
                && is_service_header(&text[at..]);
            line_start = match kind {
                TokenKind::Newline => true,
                TokenKind::Whitespace => line_start,
                _ => false,
            };
            opens.then_some(at)
        })
}

fn is_service_header(rest: &str) -> bool {
    let Some(rest) = rest.strip_prefix("[[") else {
        return false;
    };
    let rest = rest.trim_start_matches([' ', '\t']);
    let Some(rest) = ["service", "\"service\"", "'service'"]
        .iter()
        .find_map(|key| rest.strip_prefix(key))
    else {
        return false;
    };
    rest.trim_start_matches([' ', '\t']).starts_with("]]")
}

/// Validation of the services as they are parsed.
#[derive(Default)]
struct Check {
    problems: Vec<String>,
    seen: HashSet<Authority>,
    services: Vec<Service>,
    /// The next service's position in the file.
    index: usize,
}

impl Check {
    fn service(&mut self, svc: RawService) {
        let i = self.index;
        self.index += 1;
        let problems = &mut self.problems;
        let at = format!("service[{i}] ({:?})", svc.name);
        // A bad name is one problem; the rest of the service is still
        // checked (and the service not kept).
        let name = match Authority::parse(&svc.name) {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(format!("{at}: name: {e}"));
                None
            }
        };
        if name.as_ref().is_some_and(|n| !self.seen.insert(n.clone())) {
            problems.push(format!("{at}: duplicate service name"));
        }
        let h2_hint = match svc.protocol_hint.as_deref() {
            None => false,
            Some("h2") => true,
            Some(other) => {
                problems.push(format!(
                    "{at}: unknown protocol_hint {other:?} (expected \"h2\")"
                ));
                false
            }
        };
        let identity = svc.identity.as_deref().and_then(|id| {
            ringmesh_identity::Name::parse(id)
                .map_err(|e| problems.push(format!("{at}: identity {id:?}: {e}")))
                .ok()
        });
        let opaque_transport_port = svc.opaque_transport_port.and_then(|p| {
            if identity.is_none() && svc.identity.is_none() {
                problems.push(format!(
                    "{at}: opaque_transport_port needs an identity (the port takes mutual TLS only)"
                ));
            }
            match u16::try_from(p) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    problems.push(format!(
                        "{at}: opaque_transport_port {p} is not a port (1-65535)"
                    ));
                    None
                }
            }
        });
        let authority_override = svc.authority_override.as_deref().and_then(|a| {
            Authority::parse(a)
                .map(|a| std::sync::Arc::from(a.as_str()))
                .map_err(|e| problems.push(format!("{at}: authority_override {a:?}: {e}")))
                .ok()
        });
        let mut endpoints = Vec::with_capacity(svc.endpoints.len());
        let mut addrs = HashSet::new();
        for ep in &svc.endpoints {
            // An IPv4-mapped address is its IPv4 address (one endpoint,
            // whichever way it is written).
            let parsed = ep
                .parse::<SocketAddr>()
                .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
            match parsed {
                Ok(addr) if addr.port() == 0 => {
                    problems.push(format!("{at}: endpoint {ep:?} has port 0"))
                }
                Ok(addr) => {
                    if !addrs.insert(addr) {
                        problems.push(format!("{at}: endpoint {ep:?} listed twice"));
                    }
                    endpoints.push(Endpoint {
                        addr,
                        weight: 1,
                        h2_hint,
                        identity: identity.clone(),
                        opaque_transport_port,
                        labels: None,
                        authority_override: authority_override.clone(),
                        h2_params: None,
                        local: false,
                    });
                }
                Err(_) => problems.push(format!("{at}: endpoint {ep:?} is not an ip:port address")),
            }
        }
        if let Some(weights) = &svc.weights {
            if weights.len() != svc.endpoints.len() {
                problems.push(format!(
                    "{at}: {} weights for {} endpoints",
                    weights.len(),
                    svc.endpoints.len()
                ));
            } else {
                for (ep, w) in endpoints.iter_mut().zip(weights) {
                    match u32::try_from(*w) {
                        Ok(w) if w > 0 => ep.weight = w,
                        _ => problems.push(format!(
                            "{at}: weight {w} must be between 1 and {}",
                            u32::MAX
                        )),
                    }
                }
            }
        }
        let protocol = match svc.protocol.as_deref().map(str::parse::<Protocol>) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                problems.push(format!("{at}: {e}"));
                None
            }
        };
        for label in svc.labels.keys() {
            if !is_label_name(label) {
                problems.push(format!(
                    "{at}: label {label:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                ));
            }
        }
        if let Some(name) = name {
            self.services.push(Service::new(
                name,
                endpoints,
                protocol,
                svc.labels.into_iter().collect(),
            ));
        }
    }

    /// A `[[service]]` table that did not decode (`part`, from `line`):
    /// each of its fields on its own, so every bad one is named, then the
    /// service's other checks on the fields that are fine. False when the
    /// part is not even TOML (its decoder's message is then the problem).
    fn undecoded(&mut self, part: &str, line: usize) -> bool {
        let Ok(doc) = part.parse::<toml::Table>() else {
            return false;
        };
        let (problems, index) = (self.problems.len(), self.index);
        let Some(toml::Value::Array(tables)) = doc.get("service") else {
            return false;
        };
        for table in tables {
            let Some(table) = table.as_table() else {
                return false;
            };
            let name = match table.get("name") {
                Some(toml::Value::String(n)) => Some(n.clone()),
                _ => None,
            };
            let shown = name.clone().unwrap_or_default();
            let at = format!("service[{}] ({shown:?})", self.index);
            let mut good = toml::Table::new();
            for (key, value) in table {
                let mut one = toml::Table::new();
                one.insert("name".into(), toml::Value::String(shown.clone()));
                one.insert(key.clone(), value.clone());
                match one.try_into::<RawService>() {
                    Ok(_) => {
                        good.insert(key.clone(), value.clone());
                    }
                    Err(e) => {
                        let at_line = line + key_line(part, key).unwrap_or(0);
                        self.problems
                            .push(format!("{at} at line {at_line}: {}", e.message()));
                    }
                }
            }
            if !table.contains_key("name") {
                self.problems
                    .push(format!("{at} at line {line}: missing field `name`"));
            }
            // The other checks need a name to run under.
            match good.try_into::<RawService>() {
                Ok(svc) if name.is_some() => self.service(svc),
                _ => self.index += 1,
            }
        }
        if self.problems.len() == problems {
            // Nothing named: the decoder's message says what it is.
            self.index = index;
            return false;
        }
        true
    }
}

/// The whole file parsed as one TOML document, with the same validation:
/// what `parse` did before it went one table at a time, and must agree
/// with (the fuzz target `static_loader` compares them). `None` where
/// `parse` gives an error.
#[cfg(any(test, fuzzing))]
pub fn parse_whole_document(text: &str) -> Option<Vec<Service>> {
    let raw: RawFile = toml::from_str(text).ok()?;
    let mut check = Check::default();
    for svc in raw.service.into_iter().flatten() {
        check.service(svc);
    }
    let marked = raw.empty == check.services.is_empty();
    (check.problems.is_empty() && marked).then_some(check.services)
}

fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let svcs = parse(
            r#"
            [[service]]
            name = "web.test:8080"
            endpoints = ["127.0.0.1:18081", "[::1]:18082"]
            weights = [3, 1]
            protocol = "http2"
            labels = { service = "web", namespace = "prod" }
            protocol_hint = "h2"

            [[service]]
            name = "10.1.2.3:5432"
            endpoints = ["127.0.0.1:5432"]
            "#,
        )
        .unwrap();
        assert_eq!(svcs.len(), 2);
        assert_eq!(svcs[0].name.as_str(), "web.test:8080");
        assert_eq!(svcs[0].endpoints[0].weight, 3);
        assert_eq!(svcs[0].endpoints[1].addr, "[::1]:18082".parse().unwrap());
        assert_eq!(svcs[0].protocol, Some(Protocol::Http2));
        assert_eq!(svcs[1].endpoints[0].weight, 1);
        assert_eq!(svcs[1].protocol, None);
        assert!(svcs[0].endpoints.iter().all(|e| e.h2_hint));
        assert!(!svcs[1].endpoints[0].h2_hint);
        let labels: Vec<(&str, &str)> = svcs[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("namespace", "prod"), ("service", "web")]);
        assert!(svcs[1].labels.is_empty());
    }

    /// Every bad field of a table is named, and the table's other checks
    /// still run (one decoding error hid the rest; a bad name skipped the
    /// service's other checks).
    #[test]
    fn every_bad_field_of_a_table_is_named() {
        let err = parse(
            r#"
            [[service]]
            name = "web.test:80"
            endpoint = ["127.0.0.1:1"]
            protocl = "http2"
            labels = { ok = 5 }
            weights = ["x"]
            protocol = "bogus"

            [[service]]
            name = "no port"
            endpoints = ["nope"]
            "#,
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "`endpoint`",
            "`protocl`",
            "labels",
            "weights",
            "bogus",
            "service[1] (\"no port\"): name",
            "\"nope\" is not an ip:port",
        ] {
            assert!(all.contains(needle), "{needle}:\n{all}");
        }
        assert_eq!(parse_whole_document("[[service]]\nname = 5\n"), None);
    }

    #[test]
    fn no_services_needs_the_empty_marker() {
        for partial in ["", "\n", "# static discovery\n", "   "] {
            let err = parse(partial).unwrap_err();
            assert!(
                err.problems[0].contains("empty = true"),
                "{partial:?}: {err}"
            );
        }
        assert_eq!(parse("empty = true\n").unwrap(), vec![]);
        assert_eq!(
            parse("# nothing yet\nempty = true # on purpose\n").unwrap(),
            vec![]
        );
        let err = parse("empty = true\n[[service]]\nname = \"a.test:1\"\n").unwrap_err();
        assert!(err.problems[0].contains("1 services are listed"), "{err}");
        // After a header the key belongs to the service: unknown there.
        let err = parse("[[service]]\nname = \"a.test:1\"\nempty = true\n").unwrap_err();
        assert!(err.problems[0].contains("unknown field"), "{err}");
        assert_eq!(
            parse("empty = false\n[[service]]\nname = \"a.test:1\"\n")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn one_table_at_a_time_reads_what_the_whole_document_says() {
        let texts = [
            // Headers in strings and comments are not headers.
            "[[service]]\nname = \"a.test:1\"\nendpoints = [\"127.0.0.1:1\"]\nlabels = { note = \"\"\"\n[[service]]\nname = 'x'\n\"\"\" }\n# [[service]]\n",
            // Quoted and spaced header forms, a sub-table of the previous one.
            "[[ service ]]\nname = \"a.test:1\"\n[service.labels]\nteam = \"x\"\n[[\"service\"]] # b\nname = \"b.test:1\"\n\t[['service']]\nname = \"c.test:1\"\n",
            // The inline form.
            "service = [{ name = \"a.test:1\" }, { name = \"b.test:1\", endpoints = [\"127.0.0.1:2\"] }]\n",
            "\u{feff}[[service]]\nname = \"a.test:1\"\n",
            "[[service]]\r\nname = \"a.test:1\"\r\n[[service]]\r\nname = \"b.test:1\"\r\n",
        ];
        for text in texts {
            let whole = parse_whole_document(text).expect(text);
            assert_eq!(parse(text).as_ref(), Ok(&whole), "{text:?}");
        }
        let sub = parse(texts[1]).unwrap();
        assert_eq!(sub.len(), 3);
        assert_eq!(sub[0].labels.len(), 1);
        assert!(parse(texts[0]).unwrap()[0].labels[0]
            .1
            .contains("[[service]]"));
        // Invalid documents stay invalid.
        for text in [
            "service = []\n[[service]]\nname = \"a.test:1\"\n",
            "[[service]]\nname = \"a.test:1\"\n[service]\nname = \"b.test:1\"\n",
            "[[service]]\nname = \"a.test:1\"\nname = \"b.test:1\"\n",
        ] {
            assert!(parse_whole_document(text).is_none(), "{text:?}");
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn toml_errors_name_their_line_and_every_table() {
        let err = parse(
            "[[service]]\nname = \"a.test:1\"\n\n[[service]]\nname = \"b.test:1\nendpoints = []\n[[service]]\nname = 3\n",
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[0].contains("line 5"), "{err}");
        assert!(err.problems[1].contains("line 8"), "{err}");
    }

    #[test]
    fn reports_every_problem() {
        let err = parse(
            r#"
            [[service]]
            name = "nope"
            endpoints = []

            [[service]]
            name = "a.test:1"
            endpoints = ["127.0.0.1:1", "bad", "127.0.0.1:1"]
            weights = [1, 0, 2]
            protocol = "smtp"
            protocol_hint = "h3"

            [[service]]
            name = "A.test:1"
            endpoints = ["127.0.0.1:2"]
            weights = [1, 2]

            [[service]]
            name = "mapped.test:1"
            endpoints = ["127.0.0.3:1", "[::ffff:127.0.0.3]:1"]
            labels = { "bad-name" = "x" }
            authority_override = "no port"
            "#,
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "has no port",
            "\"bad\" is not an ip:port",
            "listed twice",
            "endpoint \"[::ffff:127.0.0.3]:1\" listed twice",
            "weight 0 must be",
            "unknown protocol \"smtp\"",
            "unknown protocol_hint \"h3\"",
            "duplicate service name",
            "2 weights for 1 endpoints",
            "label \"bad-name\" is not a Prometheus label name",
            "authority_override \"no port\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    /// A service's `authority_override` goes to each of its endpoints.
    #[test]
    fn authority_override_applies_to_every_endpoint() {
        let svcs = parse(
            "[[service]]\nname = \"a.test:1\"\nendpoints = [\"10.0.0.1:4143\", \"10.0.0.2:4143\"]\nauthority_override = \"Web.East:80\"\n",
        )
        .unwrap();
        for ep in &svcs[0].endpoints {
            assert_eq!(ep.authority_override.as_deref(), Some("web.east:80"));
        }
    }

    #[test]
    fn rejects_unknown_keys_and_bad_toml() {
        assert!(parse("[[service]]\nname = \"a.test:1\"\nendpoint = []\n")
            .unwrap_err()
            .problems[0]
            .contains("unknown field"));
        assert!(parse("[[service]\n").unwrap_err().problems[0].contains("invalid TOML"));
    }
}
