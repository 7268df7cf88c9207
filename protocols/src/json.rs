//! JSON text the proxy writes itself (the access log's lines, `ringmesh
//! tap -o json`, the admin's `/env.json`): strings, escaped; nothing here
//! parses JSON.

use std::fmt::Write as _;

/// `s` as a JSON string (quoted and escaped) at the end of `out`.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        super::push_str(&mut s, "/a\"b\\c\u{1}é");
        assert_eq!(s, "\"/a\\\"b\\\\c\\u0001é\"");
    }
}
