//! The one thing the proxy reads out of a certificate itself: its validity
//! period (renewal is scheduled from it, and metrics show it). rustls and
//! webpki verify certificates but do not expose their dates, so this walks
//! just enough DER to reach `tbsCertificate.validity` (RFC 5280 §4.1).
//! It is a parser of untrusted bytes: bounds are checked at every step and
//! it is fuzzed (`fuzz/fuzz_targets/x509_validity.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a certificate's validity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct X509Error(&'static str);

/// A certificate's `notBefore` and `notAfter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION_TAG: u8 = 0xa0;

/// Reads the validity of a DER certificate.
pub fn validity(der: &[u8]) -> Result<Validity, X509Error> {
    let (cert, _) = tlv(der, SEQUENCE)?;
    let (tbs, _) = tlv(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION_TAG) {
        rest = skip(rest)?;
    }
    rest = skip(rest)?; // serialNumber
    rest = skip(rest)?; // signature AlgorithmIdentifier
    rest = skip(rest)?; // issuer
    let (validity, _) = tlv(rest, SEQUENCE)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Ok(Validity {
        not_before,
        not_after,
    })
}

const EXTENSIONS_TAG: u8 = 0xa3;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const DNS_NAME_TAG: u8 = 0x82;
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The DNS names of a DER certificate's subjectAltName extension (in
/// order; empty when it has none). A mesh identity is the first.
pub fn dns_names(der: &[u8]) -> Result<Vec<String>, X509Error> {
    let (cert, _) = tlv(der, SEQUENCE)?;
    let (tbs, _) = tlv(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION_TAG) {
        rest = skip(rest)?;
    }
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    for _ in 0..6 {
        rest = skip(rest)?;
    }
    // Optional issuerUniqueID [1] and subjectUniqueID [2], then [3].
    while let Some(&tag) = rest.first() {
        if tag == EXTENSIONS_TAG {
            break;
        }
        rest = skip(rest)?;
    }
    let mut names = Vec::new();
    if rest.is_empty() {
        return Ok(names);
    }
    let (explicit, _) = tlv(rest, EXTENSIONS_TAG)?;
    let (mut exts, _) = tlv(explicit, SEQUENCE)?;
    while !exts.is_empty() {
        let (ext, next) = tlv(exts, SEQUENCE)?;
        exts = next;
        let (oid, mut fields) = tlv(ext, OID)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if fields.first() == Some(&BOOLEAN) {
            fields = skip(fields)?;
        }
        let (value, _) = tlv(fields, OCTET_STRING)?;
        let (mut general_names, _) = tlv(value, SEQUENCE)?;
        while !general_names.is_empty() {
            let tag = general_names[0];
            let (contents, next) = element(general_names)?;
            general_names = next;
            if tag == DNS_NAME_TAG {
                let name = std::str::from_utf8(contents)
                    .map_err(|_| X509Error("a DNS name is not text"))?;
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// One element of `tag`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), X509Error> {
    match input.first() {
        Some(t) if *t == tag => element(input),
        Some(_) => Err(X509Error("unexpected tag")),
        None => Err(X509Error("truncated")),
    }
}

/// Skips one element, whatever its tag.
fn skip(input: &[u8]) -> Result<&[u8], X509Error> {
    element(input).map(|(_, rest)| rest)
}

/// Splits off one element (tag at `input[0]`; single-byte tags only, as
/// every field read here has).
fn element(input: &[u8]) -> Result<(&[u8], &[u8]), X509Error> {
    let truncated = X509Error("truncated");
    let first = *input.get(1).ok_or(truncated.clone())?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(X509Error("unsupported length"));
        }
        let bytes = input.get(2..2 + n).ok_or(truncated.clone())?;
        let len = bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len).ok_or(truncated.clone())?;
    let contents = input.get(header..end).ok_or(truncated)?;
    Ok((contents, &input[end..]))
}

/// A UTCTime or GeneralizedTime (`…Z` forms, as RFC 5280 requires).
fn time(input: &[u8]) -> Result<(SystemTime, &[u8]), X509Error> {
    let tag = *input.first().ok_or(X509Error("truncated"))?;
    let (text, rest) = element(input)?;
    let bad = X509Error("bad time");
    let (year, digits) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = number(&text[..2]).ok_or(bad.clone())?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (number(&text[..4]).ok_or(bad.clone())?, &text[4..]),
        _ => return Err(bad),
    };
    if digits[10] != b'Z' {
        return Err(bad);
    }
    let field = |i: usize| number(&digits[i..i + 2]).ok_or(bad.clone());
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(bad);
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec);
    let at = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    Ok((at, rest))
}

fn number(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn unix(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // 2026-12-02 and 2051-01-01 (after 2049: GeneralizedTime).
        let v = validity(&cert((2026, 12, 2), (2051, 1, 1))).unwrap();
        assert_eq!(v.not_before, unix(1_796_169_600));
        assert_eq!(v.not_after, unix(2_556_144_000));
        let v = validity(&cert((1975, 1, 1), (2000, 2, 29))).unwrap();
        assert_eq!(v.not_before, unix(157_766_400));
        assert_eq!(v.not_after, unix(951_782_400));
    }

    #[test]
    fn reads_the_dns_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![
            "web.ns.serviceaccount.identity.linkerd.cluster.local".into(),
            "other.example".into(),
        ])
        .unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(
            dns_names(&der).unwrap(),
            [
                "web.ns.serviceaccount.identity.linkerd.cluster.local",
                "other.example"
            ]
        );
        let none = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        assert!(dns_names(none.self_signed(&key).unwrap().der())
            .unwrap()
            .is_empty());
        for cut in 0..der.len() {
            assert!(dns_names(&der[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let good = cert((2026, 1, 1), (2027, 1, 1));
        for cut in 0..good.len() {
            assert!(validity(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(validity(b"\x30\x84\xff\xff\xff\xff").is_err());
        assert!(validity(b"not a certificate").is_err());
    }
}
