//! Label values shared by the TCP and HTTP families, and how a label value
//! is written (Prometheus text escaping).

use std::fmt::Write as _;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Which side of the proxy a connection is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Accepted from a client.
    Src,
    /// Opened by the proxy to an endpoint.
    Dst,
}

impl Peer {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Src => "src",
            Self::Dst => "dst",
        }
    }
}

/// The discovered service a series belongs to (`authority` label): its
/// normalised `host:port` name, shared with discovery's copy so building a
/// label set per request copies no string.
pub type AuthorityLabel = Arc<str>;

/// Discovery's metric labels for a service (rendered as `dst_<name>`).
pub type DstLabels = Arc<[(String, String)]>;

/// A policy resource (an inbound server, route or authorization) as its
/// metadata names it: group, kind and name (shared strings: a label set
/// copies no text).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyMeta {
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

/// The inbound server a request or connection reached, and the route and
/// authorization that judged it, labelled as linkerd2-proxy's
/// `ServerLabel`, `RouteLabels` and `ServerAuthzLabels`: `srv_group`,
/// `srv_kind`, `srv_name`, `srv_port`, then `route_*` (HTTP) and `authz_*`
/// (allowed) when known.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyLabels {
    pub server: PolicyMeta,
    /// The server's port (`srv_port`).
    pub port: u16,
    pub route: Option<PolicyMeta>,
    pub authz: Option<PolicyMeta>,
}

impl PolicyLabels {
    /// Appends the labels, each after a comma.
    pub(crate) fn push_labels(&self, s: &mut String) {
        push_meta(s, "srv", &self.server);
        let _ = write!(s, ",srv_port=\"{}\"", self.port);
        if let Some(r) = &self.route {
            push_meta(s, "route", r);
        }
        if let Some(a) = &self.authz {
            push_meta(s, "authz", a);
        }
    }
}

/// Appends `<prefix>_group`, `<prefix>_kind` and `<prefix>_name`.
fn push_meta(s: &mut String, prefix: &str, m: &PolicyMeta) {
    for (what, value) in [("group", &m.group), ("kind", &m.kind), ("name", &m.name)] {
        let _ = write!(s, ",{prefix}_{what}=\"");
        push_escaped(s, value);
        s.push('"');
    }
}

/// An address's labels, as linkerd2-proxy's `TargetAddr`: `target_addr`,
/// `target_ip`, `target_port`.
pub(crate) fn target_labels(t: std::net::SocketAddr) -> String {
    format!(
        "target_addr=\"{t}\",target_ip=\"{}\",target_port=\"{}\"",
        t.ip(),
        t.port()
    )
}

/// Appends `,name="value"`, the value escaped.
pub(crate) fn push_label(s: &mut String, name: &str, value: &str) {
    let _ = write!(s, ",{name}=\"");
    push_escaped(s, value);
    s.push('"');
}

/// Appends `dst_<name>="<value>"` for each discovery label, escaped.
pub(crate) fn push_dst_labels(s: &mut String, labels: Option<&DstLabels>) {
    for (name, value) in labels.iter().flat_map(|l| l.iter()) {
        let _ = write!(s, ",dst_{name}=\"");
        push_escaped(s, value);
        s.push('"');
    }
}

/// A label value as the text format wants it: backslash, double quote and
/// line feed escaped.
fn push_escaped(s: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let mut s = String::new();
        push_label(&mut s, "sni", "a\"b\\c\nd");
        assert_eq!(s, r#",sni="a\"b\\c\nd""#);
    }
}
