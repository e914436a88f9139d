//! Signed cookie values: `base64url(json) "." base64url(HMAC-SHA256(key, purpose, json))`.
//!
//! The approval page keeps its state in the browser so that any pgid instance sharing the
//! server key can serve a reviewer: the sign-in in progress (state, nonce, PKCE verifier) and
//! the signed-in reviewer. Values are signed, not encrypted: they hold nothing the reviewer may
//! not see, and they only travel over the broker's TLS in `HttpOnly` cookies. Each value says
//! what it is for (`purpose`), so one kind can never be replayed as another, and carries its own
//! expiry.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Browsers keep cookies up to about 4 KB; a value past this is refused rather than cut.
pub const MAX_SEALED_BYTES: usize = 3800;

#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    exp: i64,
    v: T,
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { key }
    }

    fn mac(&self, purpose: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(body);
        mac
    }

    /// Signs `value` for `purpose`, valid until the unix time `exp`. `None` when the result
    /// would not fit in a cookie.
    pub fn seal<T: Serialize>(&self, purpose: &str, exp: i64, value: &T) -> Option<String> {
        let body = serde_json::to_vec(&Envelope { exp, v: value }).ok()?;
        let tag = self.mac(purpose, &body).finalize().into_bytes();
        let out = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(tag)
        );
        (out.len() <= MAX_SEALED_BYTES).then_some(out)
    }

    /// The value sealed for `purpose`, if the signature holds and `now` is before its expiry.
    pub fn open<T: DeserializeOwned>(&self, purpose: &str, now: i64, text: &str) -> Option<T> {
        if text.len() > MAX_SEALED_BYTES {
            return None;
        }
        let (body, tag) = text.split_once('.')?;
        let body = URL_SAFE_NO_PAD.decode(body).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // verify_slice compares in constant time.
        self.mac(purpose, &body).verify_slice(&tag).ok()?;
        let env: Envelope<T> = serde_json::from_slice(&body).ok()?;
        (now < env.exp).then_some(env.v)
    }
}

/// Constant-time equality for short secrets (CSRF tokens, OAuth state).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = Sealer::new([7; 32]);
        let text = s.seal("session", 100, &("alice", 3)).unwrap();
        assert_eq!(
            s.open::<(String, i32)>("session", 99, &text),
            Some(("alice".into(), 3))
        );
        // Expired, wrong purpose, other key.
        assert_eq!(s.open::<(String, i32)>("session", 100, &text), None);
        assert_eq!(s.open::<(String, i32)>("login", 99, &text), None);
        assert_eq!(
            Sealer::new([8; 32]).open::<(String, i32)>("session", 99, &text),
            None
        );
        // Every changed character breaks it.
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            if t != text {
                assert_eq!(s.open::<(String, i32)>("session", 99, &t), None, "{i}");
            }
        }
        // A different body with the old tag.
        let other = s.seal("session", 100, &("mallory", 3)).unwrap();
        let forged = format!(
            "{}.{}",
            other.split_once('.').unwrap().0,
            text.split_once('.').unwrap().1
        );
        assert_eq!(s.open::<(String, i32)>("session", 99, &forged), None);
    }

    #[test]
    fn too_large_values_are_refused() {
        let s = Sealer::new([1; 32]);
        assert!(s.seal("x", 1, &"a".repeat(4000)).is_none());
        assert!(s.open::<String>("x", 0, &"a".repeat(4000)).is_none());
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
