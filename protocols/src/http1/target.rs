//! Request-target forms (RFC 9112 §3.2) and the URI authority grammar
//! (RFC 3986 §3.2) they and the `Host` field share.

use super::fields::Span;

/// The form of a request-target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`: the usual form sent to an origin server.
    Origin,
    /// `http://host:port/path?query`: sent to a forward proxy.
    Absolute,
    /// `host:port`: CONNECT only.
    Authority,
    /// `*`: server-wide OPTIONS only.
    Asterisk,
}

/// Where the authority parts lie in a head's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuthoritySpans {
    /// `host[:port]` as received.
    pub(crate) raw: Span,
    /// The host, with brackets for an IP literal.
    pub(crate) host: Span,
    pub(crate) port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParsedTarget {
    pub(crate) form: TargetForm,
    pub(crate) authority: Option<AuthoritySpans>,
    /// For absolute-form, the path and query (which may be empty, standing
    /// for `/`), to forward in origin-form.
    pub(crate) path: Span,
}

/// Parses the request-target at `target` in `buf`; `None` if the form is
/// invalid or does not go with the method.
pub(crate) fn parse_target(
    buf: &[u8],
    target: Span,
    connect: bool,
    options: bool,
) -> Option<ParsedTarget> {
    let bytes = target.get(buf);
    if connect {
        // CONNECT takes authority-form only, and the port is required.
        let (host, port) = parse_authority(bytes, None)?;
        return Some(ParsedTarget {
            form: TargetForm::Authority,
            authority: Some(AuthoritySpans {
                raw: target,
                host: target.sub(host.0, host.1),
                port,
            }),
            path: Span::default(),
        });
    }
    match bytes.first()? {
        b'/' => Some(ParsedTarget {
            form: TargetForm::Origin,
            authority: None,
            path: target,
        }),
        b'*' if bytes.len() == 1 && options => Some(ParsedTarget {
            form: TargetForm::Asterisk,
            authority: None,
            path: target,
        }),
        _ => parse_absolute(target, bytes),
    }
}

fn parse_absolute(target: Span, bytes: &[u8]) -> Option<ParsedTarget> {
    let scheme_end = bytes.windows(3).position(|w| w == b"://")?;
    let scheme = &bytes[..scheme_end];
    // A proxy can forward only what it speaks: http (and https, which a
    // client may hand a forward proxy in absolute-form).
    let default_port = if scheme.eq_ignore_ascii_case(b"http") {
        80
    } else if scheme.eq_ignore_ascii_case(b"https") {
        443
    } else {
        return None;
    };
    let auth_start = scheme_end + 3;
    let auth_end = bytes[auth_start..]
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .map_or(bytes.len(), |i| auth_start + i);
    let authority = &bytes[auth_start..auth_end];
    // userinfo in an http(s) URI is deprecated and a known phishing vector:
    // RFC 9110 §4.2.4 says to treat it as an error.
    if authority.is_empty() || authority.contains(&b'@') {
        return None;
    }
    let (host, port) = parse_authority(authority, Some(default_port))?;
    Some(ParsedTarget {
        form: TargetForm::Absolute,
        authority: Some(AuthoritySpans {
            raw: target.sub(auth_start, auth_end),
            host: target.sub(auth_start + host.0, auth_start + host.1),
            port,
        }),
        path: target.sub(auth_end, bytes.len()),
    })
}

/// Parses a `Host` field value; an empty value means "no authority"
/// (RFC 9112 §3.2), `Some(None)`. `None` if invalid.
pub(crate) fn parse_host_field(buf: &[u8], value: Span) -> Option<Option<AuthoritySpans>> {
    let bytes = value.get(buf);
    if bytes.is_empty() {
        return Some(None);
    }
    let (host, port) = parse_authority(bytes, Some(80))?;
    Some(Some(AuthoritySpans {
        raw: value,
        host: value.sub(host.0, host.1),
        port,
    }))
}

/// `host [ ":" port ]`: the host's range within `bytes` and the port. Without
/// a default, the port is required.
fn parse_authority(bytes: &[u8], default_port: Option<u16>) -> Option<((usize, usize), u16)> {
    let host_end = if bytes.first() == Some(&b'[') {
        let close = bytes.iter().position(|&b| b == b']')?;
        let inner = &bytes[1..close];
        if inner.is_empty() || !inner.iter().all(|&b| is_ip_literal_byte(b)) {
            return None;
        }
        close + 1
    } else {
        let end = bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len());
        if end == 0 || !is_reg_name(&bytes[..end]) {
            return None;
        }
        end
    };
    let port = match &bytes[host_end..] {
        [] => default_port?,
        [b':'] => default_port?,
        [b':', digits @ ..] => {
            if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: u32 = digits.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0'));
            u16::try_from(n).ok()?
        }
        _ => return None,
    };
    Some(((0, host_end), port))
}

/// reg-name / IPv4address: unreserved, pct-encoded, sub-delims.
fn is_reg_name(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if i + 2 >= bytes.len() {
                return false;
            }
            if !(bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(is_unreserved(b) || is_sub_delim(b)) {
            return false;
        }
        i += 1;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Inside `[...]`: IPv6 (hex, `:`, `.` for an embedded IPv4) or IPvFuture.
fn is_ip_literal_byte(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || b == b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (host, port, raw) of an authority.
    type Auth = Option<(String, u16, String)>;

    fn target(s: &str, connect: bool) -> Option<(TargetForm, Auth, String)> {
        let buf = s.as_bytes();
        let t = parse_target(buf, Span::new(0, buf.len()), connect, true)?;
        let auth = t.authority.map(|a| {
            (
                String::from_utf8(a.host.get(buf).to_vec()).unwrap(),
                a.port,
                String::from_utf8(a.raw.get(buf).to_vec()).unwrap(),
            )
        });
        Some((
            t.form,
            auth,
            String::from_utf8(t.path.get(buf).to_vec()).unwrap(),
        ))
    }

    fn auth(host: &str, port: u16, raw: &str) -> Auth {
        Some((host.into(), port, raw.into()))
    }

    #[test]
    fn origin_and_asterisk_forms() {
        assert_eq!(
            target("/a/b?c=d", false),
            Some((TargetForm::Origin, None, "/a/b?c=d".into()))
        );
        assert_eq!(
            target("*", false),
            Some((TargetForm::Asterisk, None, "*".into()))
        );
        let buf = b"*";
        assert_eq!(parse_target(buf, Span::new(0, 1), false, false), None);
        assert_eq!(target("**", false), None);
        assert_eq!(target("a/b", false), None);
    }

    #[test]
    fn absolute_form() {
        assert_eq!(
            target("http://example.com:8080/p?q", false),
            Some((
                TargetForm::Absolute,
                auth("example.com", 8080, "example.com:8080"),
                "/p?q".into()
            ))
        );
        assert_eq!(
            target("HTTP://Example.com", false),
            Some((
                TargetForm::Absolute,
                auth("Example.com", 80, "Example.com"),
                "".into()
            ))
        );
        assert_eq!(
            target("https://x?q", false),
            Some((TargetForm::Absolute, auth("x", 443, "x"), "?q".into()))
        );
        assert_eq!(
            target("http://[::1]:9/", false),
            Some((
                TargetForm::Absolute,
                auth("[::1]", 9, "[::1]:9"),
                "/".into()
            ))
        );
        assert_eq!(
            target("http://h:/", false),
            Some((TargetForm::Absolute, auth("h", 80, "h:"), "/".into()))
        );
        for bad in [
            "http:///p",
            "http://user@h/",
            "ftp://h/",
            "http://h:65536/",
            "http://h:8x/",
            "http://[::1/",
            "http://[]/",
            "http://h%zz/",
            "http://h%4/",
            "http://a b/",
        ] {
            assert_eq!(target(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn authority_form_requires_a_port() {
        assert_eq!(
            target("example.com:443", true),
            Some((
                TargetForm::Authority,
                auth("example.com", 443, "example.com:443"),
                "".into()
            ))
        );
        assert_eq!(
            target("[2001:db8::1]:443", true).map(|t| t.1),
            Some(auth("[2001:db8::1]", 443, "[2001:db8::1]:443"))
        );
        assert_eq!(target("example.com", true), None);
        assert_eq!(target("example.com:", true), None);
        assert_eq!(target("/path", true), None);
        assert_eq!(target("http://example.com:443/", true), None);
    }

    #[test]
    fn host_field() {
        let buf = b"h.example:81";
        let a = parse_host_field(buf, Span::new(0, buf.len()))
            .unwrap()
            .unwrap();
        assert_eq!(a.host.get(buf), b"h.example");
        assert_eq!(a.port, 81);
        assert_eq!(parse_host_field(b"", Span::new(0, 0)), Some(None));
        assert_eq!(parse_host_field(b"a/b", Span::new(0, 3)), None);
        assert_eq!(parse_host_field(b"a:b", Span::new(0, 3)), None);
        assert_eq!(
            parse_host_field(b"%41", Span::new(0, 3)).map(|a| a.is_some()),
            Some(true)
        );
    }
}
