//! Regexes the control plane sends (route paths, header and query values),
//! compiled within bounds: a pattern longer than [`MAX_PATTERN`] is refused
//! without being parsed (parsing a few megabytes of pattern took hundreds
//! of megabytes), a compiled one may take [`MAX_COMPILED`] bytes, and a
//! refused pattern is named in errors by its first characters only.
//!
//! Kubernetes' Gateway API bounds these values at 1024 characters (paths)
//! and 4096 (header values); the bound here is the larger.

/// The longest pattern compiled, in bytes.
pub(crate) const MAX_PATTERN: usize = 4096;

/// The most memory one compiled regex may take.
const MAX_COMPILED: usize = 1 << 20;

/// `re` anchored at both ends, for text (paths).
pub(crate) fn regex(what: &str, re: &str) -> Result<regex::Regex, String> {
    bounded(what, re)?;
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(MAX_COMPILED)
        .build()
        .map_err(|e| refused(what, re, &e))
}

/// `re` anchored at both ends, for bytes (header and query values).
pub(crate) fn bytes_regex(what: &str, re: &str) -> Result<regex::bytes::Regex, String> {
    bounded(what, re)?;
    regex::bytes::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(MAX_COMPILED)
        .build()
        .map_err(|e| refused(what, re, &e))
}

fn bounded(what: &str, re: &str) -> Result<(), String> {
    if re.len() > MAX_PATTERN {
        return Err(format!(
            "{what} {}: {} bytes, longer than {MAX_PATTERN}",
            shown(re),
            re.len()
        ));
    }
    Ok(())
}

fn refused(what: &str, re: &str, e: &regex::Error) -> String {
    // The regex crate's error quotes the pattern; a size error does not.
    let why = match e {
        regex::Error::Syntax(s) if s.len() > 1024 => {
            format!("{}…", &s[..s.floor_char_boundary(1024)])
        }
        e => e.to_string(),
    };
    format!("{what} {}: {why}", shown(re))
}

/// The pattern as errors name it: its first 64 characters, quoted.
fn shown(re: &str) -> String {
    match re.char_indices().nth(64) {
        Some((at, _)) => format!("{:?}…", &re[..at]),
        None => format!("{re:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_bounded_and_named_briefly() {
        assert!(regex("path regex", "/api/v[0-9]+")
            .unwrap()
            .is_match("/api/v2"));
        assert!(!regex("path regex", "/api").unwrap().is_match("/api/x"));
        let long = "a".repeat(MAX_PATTERN + 1);
        let e = regex("path regex", &long).unwrap_err();
        assert!(e.len() < 200, "{e}");
        assert!(e.contains("longer than 4096"), "{e}");
        // Within the length, too big once compiled.
        let e = bytes_regex("header regex", "(?:\\w{100}){100}").unwrap_err();
        assert!(e.len() < 1200, "{e}");
        let e = regex("path regex", &format!("({}", "b".repeat(2000))).unwrap_err();
        assert!(e.starts_with("path regex \"(bbb"), "{e}");
        assert!(e.len() < 1400, "{} bytes", e.len());
    }
}
