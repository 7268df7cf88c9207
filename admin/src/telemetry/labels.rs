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
