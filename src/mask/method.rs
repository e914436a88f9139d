//! What a masked value becomes, per method, for the column's type and wire format. Pure.
//!
//! - `null`: NULL.
//! - `redact`: text types → the marker `REDACTED`; any other type → NULL (a fixed value of an
//!   arbitrary type could be mistaken for data).
//! - `hash`: keyed HMAC-SHA-256 of the value's text form, so equal values stay equal (joins and
//!   GROUP BY on masked output still work) within a deployment and nothing outside it can
//!   rebuild them: text types → `h_` + 16 hex digits; integers → an integer of the same width;
//!   bytea → the 32 HMAC bytes; other types → NULL.
//! - `partial`: text types → `****` and the last `keep` characters; other types → NULL.
//!
//! Values arrive in the session's client encoding (text, and text types in binary format too):
//! `partial` counts characters in it and answers in it, and `hash` hashes the text as the server
//! stores it (UTF-8), so a value hashes alike whatever encoding a client reads it in. A value
//! that does not decode in the encoding shows no characters (`partial`) and hashes as its bytes.
//! Where the encoding is not known for sure (`None`: one pgid does not know, or rows sent after a
//! statement that may have changed it), only ASCII values are read: ASCII is the same text in
//! every encoding Postgres has.
//!
//! NULL stays NULL whatever the method.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::encoding::Encoding;
use crate::policy::MaskMethod;

pub const REDACTED: &str = "REDACTED";

/// Built-in text types: text, varchar, bpchar, name, unknown, and char.
pub fn is_text(type_oid: u32) -> bool {
    matches!(type_oid, 25 | 1043 | 1042 | 19 | 705 | 18)
}

fn int_width(type_oid: u32) -> Option<usize> {
    match type_oid {
        21 => Some(2),
        23 => Some(4),
        20 => Some(8),
        _ => None,
    }
}

/// The canonical text form of a value, for hashing (so text and binary results, and every client
/// encoding, hash alike).
fn text_form(
    value: &[u8],
    type_oid: u32,
    binary: bool,
    encoding: Option<Encoding>,
) -> Option<Vec<u8>> {
    if !binary || is_text(type_oid) {
        return Some(match encoding.map(|e| e.decode(value)) {
            Some(Ok(text)) => text.into_owned().into_bytes(),
            _ => value.to_vec(),
        });
    }
    if type_oid == 17 {
        return Some(format!("\\x{}", hex::encode(value)).into_bytes());
    }
    let width = int_width(type_oid)?;
    if value.len() != width {
        return None;
    }
    let mut b = [0u8; 8];
    b[8 - width..].copy_from_slice(value);
    let shift = 64 - 8 * width as u32;
    let n = (i64::from_be_bytes(b) << shift) >> shift;
    Some(n.to_string().into_bytes())
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The masked form of `value` (`None` = SQL NULL) for a column of `type_oid` in `binary` or text
/// format, in the client's `encoding` (`None`: one pgid does not know). `key` is the deployment's
/// masking key (used by `hash`).
pub fn apply(
    method: MaskMethod,
    keep: usize,
    key: &[u8],
    column: (u32, bool),
    encoding: Option<Encoding>,
    value: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let (type_oid, binary) = column;
    let value = value?;
    match method {
        MaskMethod::Null => None,
        MaskMethod::Redact => is_text(type_oid).then(|| REDACTED.as_bytes().to_vec()),
        MaskMethod::Partial => {
            if !is_text(type_oid) {
                return None;
            }
            let mut out = b"****".to_vec();
            let text = match encoding {
                Some(e) => e.decode(value).ok(),
                // An encoding pgid does not know (or not for sure): ASCII reads alike in every
                // encoding Postgres has, anything else shows nothing.
                None => std::str::from_utf8(value)
                    .ok()
                    .filter(|t| t.is_ascii())
                    .map(std::borrow::Cow::Borrowed),
            };
            let Some(text) = text else {
                return Some(out);
            };
            let chars: Vec<char> = text.chars().collect();
            // Nothing shown when the value is no longer than what would be kept.
            if chars.len() > keep {
                let tail: String = chars[chars.len() - keep..].iter().collect();
                match encoding {
                    Some(e) => out.extend_from_slice(&e.encode_lossy(&tail)),
                    None => out.extend_from_slice(tail.as_bytes()),
                }
            }
            Some(out)
        }
        MaskMethod::Hash => {
            let canonical = text_form(value, type_oid, binary, encoding)?;
            let digest = hmac(key, &canonical);
            if is_text(type_oid) {
                return Some(format!("h_{}", hex::encode(&digest[..8])).into_bytes());
            }
            if let Some(width) = int_width(type_oid) {
                let raw = i64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
                let n = match width {
                    2 => raw as i16 as i64,
                    4 => raw as i32 as i64,
                    _ => raw,
                };
                return Some(if binary {
                    n.to_be_bytes()[8 - width..].to_vec()
                } else {
                    n.to_string().into_bytes()
                });
            }
            if type_oid == 17 {
                return Some(if binary {
                    digest.to_vec()
                } else {
                    format!("\\x{}", hex::encode(digest)).into_bytes()
                });
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test key";
    const UTF8: Option<Encoding> = Some(Encoding::UTF8);

    fn text(v: Option<Vec<u8>>) -> Option<String> {
        v.map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn redact_is_type_aware() {
        let r = |oid, v: &[u8]| apply(MaskMethod::Redact, 0, KEY, (oid, false), UTF8, Some(v));
        assert_eq!(text(r(25, b"ada@example.com")).unwrap(), REDACTED);
        assert_eq!(text(r(1043, b"x")).unwrap(), REDACTED);
        assert_eq!(r(23, b"42"), None);
        assert_eq!(r(1082, b"2026-01-01"), None);
        assert_eq!(
            apply(MaskMethod::Redact, 0, KEY, (25, false), UTF8, None),
            None
        );
    }

    #[test]
    fn hash_is_stable_keyed_and_equal_across_formats() {
        let h = |key: &[u8], oid, binary, v: &[u8]| {
            apply(MaskMethod::Hash, 0, key, (oid, binary), UTF8, Some(v)).unwrap()
        };
        let a = h(KEY, 25, false, b"123-45-6789");
        assert_eq!(a, h(KEY, 25, true, b"123-45-6789"));
        assert_ne!(a, h(b"other key", 25, false, b"123-45-6789"));
        assert_ne!(a, h(KEY, 25, false, b"123-45-6780"));
        assert!(String::from_utf8(a).unwrap().starts_with("h_"));
        // Integers stay integers of their width; text and binary agree.
        let t = String::from_utf8(h(KEY, 23, false, b"7")).unwrap();
        let b = h(KEY, 23, true, &7i32.to_be_bytes());
        assert_eq!(b.len(), 4);
        assert_eq!(
            t.parse::<i32>().unwrap(),
            i32::from_be_bytes(b.try_into().unwrap())
        );
        assert_eq!(h(KEY, 17, true, b"\x00\x01").len(), 32);
        assert_eq!(
            apply(MaskMethod::Hash, 0, KEY, (1082, false), UTF8, Some(b"x")),
            None
        );
    }

    #[test]
    fn partial_keeps_the_last_characters_only() {
        let p = |v: &[u8]| {
            text(apply(
                MaskMethod::Partial,
                4,
                KEY,
                (25, false),
                UTF8,
                Some(v),
            ))
            .unwrap()
        };
        assert_eq!(p(b"4111111111111111"), "****1111");
        assert_eq!(p(b"123"), "****");
        assert_eq!(p("ünïcødé".as_bytes()), "****cødé");
        assert_eq!(
            apply(
                MaskMethod::Partial,
                4,
                KEY,
                (23, false),
                UTF8,
                Some(b"1234567")
            ),
            None
        );
    }

    #[test]
    fn null_is_null() {
        assert_eq!(
            apply(MaskMethod::Null, 0, KEY, (25, false), UTF8, Some(b"x")),
            None
        );
    }

    #[test]
    fn values_are_read_and_answered_in_the_clients_encoding() {
        let latin9 = Encoding::from_name("LATIN9");
        // "café €" in LATIN9: é = 0xE9, € = 0xA4.
        let value = b"caf\xe9 \xa4";
        let partial = apply(
            MaskMethod::Partial,
            2,
            KEY,
            (25, false),
            latin9,
            Some(value),
        );
        assert_eq!(partial.unwrap(), b"**** \xa4", "two characters, in LATIN9");
        let hash = |e, v: &[u8]| apply(MaskMethod::Hash, 0, KEY, (25, false), e, Some(v));
        assert_eq!(
            hash(latin9, value),
            hash(UTF8, "café €".as_bytes()),
            "a value hashes alike in every client encoding"
        );
        // Bytes that are not text in the encoding: no characters shown.
        let partial = apply(
            MaskMethod::Partial,
            2,
            KEY,
            (25, false),
            UTF8,
            Some(b"ab\xff"),
        );
        assert_eq!(partial.unwrap(), b"****");
        // An encoding pgid does not know for sure: ASCII reads alike in all of them, anything
        // else shows nothing (in EUC_KR `\xc0\xeb\xe5\xea` is two characters, in WIN1251 four).
        let partial = apply(MaskMethod::Partial, 2, KEY, (25, false), None, Some(b"abc"));
        assert_eq!(partial.unwrap(), b"****bc", "ASCII in any encoding");
        let partial = apply(
            MaskMethod::Partial,
            1,
            KEY,
            (25, false),
            None,
            Some(b"\xc0\xeb\xe5\xea"),
        );
        assert_eq!(
            partial.unwrap(),
            b"****",
            "an unknown encoding shows nothing else"
        );
    }
}
