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
//! ```
//!
//! Parsing reports every problem in the file, not just the first.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::{Authority, Endpoint, Protocol, Service};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<RawService>,
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
    let raw: RawFile = toml::from_str(text).map_err(|e| StaticFileError {
        problems: vec![format!("invalid TOML: {}", e.message())],
    })?;
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut services = Vec::with_capacity(raw.service.len());
    for (i, svc) in raw.service.into_iter().enumerate() {
        let at = format!("service[{i}] ({:?})", svc.name);
        let name = match Authority::parse(&svc.name) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("{at}: name: {e}"));
                continue;
            }
        };
        if !seen.insert(name.clone()) {
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
        let mut endpoints = Vec::with_capacity(svc.endpoints.len());
        let mut addrs = HashSet::new();
        for ep in &svc.endpoints {
            match ep.parse::<SocketAddr>() {
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
        services.push(Service::new(
            name,
            endpoints,
            protocol,
            svc.labels.into_iter().collect(),
        ));
    }
    if problems.is_empty() {
        Ok(services)
    } else {
        Err(StaticFileError { problems })
    }
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

    #[test]
    fn empty_file_is_no_services() {
        assert_eq!(parse("").unwrap(), vec![]);
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
            labels = { "bad-name" = "x" }
            "#,
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "has no port",
            "\"bad\" is not an ip:port",
            "listed twice",
            "weight 0 must be",
            "unknown protocol \"smtp\"",
            "unknown protocol_hint \"h3\"",
            "duplicate service name",
            "2 weights for 1 endpoints",
            "label \"bad-name\" is not a Prometheus label name",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
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
