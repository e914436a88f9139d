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
//! NULL stays NULL whatever the method.

use hmac::{Hmac, Mac};
use sha2::Sha256;

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

/// The canonical text form of a value, for hashing (so text and binary results hash alike).
fn text_form(value: &[u8], type_oid: u32, binary: bool) -> Option<Vec<u8>> {
    if !binary {
        return Some(value.to_vec());
    }
    if is_text(type_oid) {
        return Some(value.to_vec());
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
/// format. `key` is the deployment's masking key (used by `hash`).
pub fn apply(
    method: MaskMethod,
    keep: usize,
    key: &[u8],
    type_oid: u32,
    binary: bool,
    value: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let value = value?;
    match method {
        MaskMethod::Null => None,
        MaskMethod::Redact => is_text(type_oid).then(|| REDACTED.as_bytes().to_vec()),
        MaskMethod::Partial => {
            if !is_text(type_oid) {
                return None;
            }
            let text = String::from_utf8_lossy(value);
            let chars: Vec<char> = text.chars().collect();
            let tail: String = chars[chars.len().saturating_sub(keep)..].iter().collect();
            // Nothing shown when the value is no longer than what would be kept.
            let tail = if chars.len() > keep {
                tail
            } else {
                String::new()
            };
            Some(format!("****{tail}").into_bytes())
        }
        MaskMethod::Hash => {
            let canonical = text_form(value, type_oid, binary)?;
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

    fn text(v: Option<Vec<u8>>) -> Option<String> {
        v.map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn redact_is_type_aware() {
        let r = |oid, v: &[u8]| apply(MaskMethod::Redact, 0, KEY, oid, false, Some(v));
        assert_eq!(text(r(25, b"ada@example.com")).unwrap(), REDACTED);
        assert_eq!(text(r(1043, b"x")).unwrap(), REDACTED);
        assert_eq!(r(23, b"42"), None);
        assert_eq!(r(1082, b"2026-01-01"), None);
        assert_eq!(apply(MaskMethod::Redact, 0, KEY, 25, false, None), None);
    }

    #[test]
    fn hash_is_stable_keyed_and_equal_across_formats() {
        let h = |key: &[u8], oid, binary, v: &[u8]| {
            apply(MaskMethod::Hash, 0, key, oid, binary, Some(v)).unwrap()
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
            apply(MaskMethod::Hash, 0, KEY, 1082, false, Some(b"x")),
            None
        );
    }

    #[test]
    fn partial_keeps_the_last_characters_only() {
        let p = |v: &[u8]| text(apply(MaskMethod::Partial, 4, KEY, 25, false, Some(v))).unwrap();
        assert_eq!(p(b"4111111111111111"), "****1111");
        assert_eq!(p(b"123"), "****");
        assert_eq!(p("ünïcødé".as_bytes()), "****cødé");
        assert_eq!(
            apply(MaskMethod::Partial, 4, KEY, 23, false, Some(b"1234567")),
            None
        );
    }

    #[test]
    fn null_is_null() {
        assert_eq!(apply(MaskMethod::Null, 0, KEY, 25, false, Some(b"x")), None);
    }
}
