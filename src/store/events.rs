//! Events between pgid instances travel over LISTEN/NOTIFY on the state database, where any role
//! that can connect may NOTIFY any channel and LISTEN to any — agents included when the state
//! lives in the database they use. So every payload is sealed with a MAC under a key derived
//! from the server key, and a payload without a valid one is dropped unread. And events are hints
//! only: a lease event makes the receiver read the lease row, an approval event makes waiters read
//! the request, so a genuine event replayed later (payloads are visible to every listener) says
//! nothing the state database does not say.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::ServerKey;

/// Bytes of the MAC carried in a payload (hex: twice as many characters).
const TAG_BYTES: usize = 16;

#[derive(Clone)]
pub struct EventKey([u8; 32]);

impl std::fmt::Debug for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventKey([redacted])")
    }
}

impl EventKey {
    pub fn new(key: &ServerKey) -> EventKey {
        EventKey(key.derive(b"pgid instance events\0"))
    }

    fn mac(&self, channel: &str, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(channel.as_bytes());
        mac.update(b"\0");
        mac.update(body.as_bytes());
        mac
    }

    /// `<body> <tag>`: the payload to NOTIFY on `channel`.
    pub fn seal(&self, channel: &str, body: &str) -> String {
        let tag = self.mac(channel, body).finalize().into_bytes();
        format!("{body} {}", hex::encode(&tag[..TAG_BYTES]))
    }

    /// The body of a payload sealed for `channel` with this key; None for anything else.
    pub fn open<'a>(&self, channel: &str, payload: &'a str) -> Option<&'a str> {
        let (body, tag) = payload.rsplit_once(' ')?;
        let tag = hex::decode(tag).ok().filter(|t| t.len() == TAG_BYTES)?;
        self.mac(channel, body)
            .verify_truncated_left(&tag)
            .ok()
            .map(|()| body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> EventKey {
        EventKey([seed; 32])
    }

    #[test]
    fn only_sealed_payloads_open() {
        let k = key(1);
        let sealed = k.seal(
            "pgid_lease_events",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427 revoked",
        );
        assert_eq!(
            k.open("pgid_lease_events", &sealed),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427 revoked")
        );
        // Forged, altered, for another channel, or under another key: dropped.
        assert_eq!(
            k.open(
                "pgid_lease_events",
                "1b4e28ba-2fa1-11d2-883f-0016d3cca427 revoked"
            ),
            None
        );
        assert_eq!(k.open("pgid_approval_events", &sealed), None);
        assert_eq!(key(2).open("pgid_lease_events", &sealed), None);
        let altered = sealed.replacen("revoked", "expired", 1);
        assert_eq!(k.open("pgid_lease_events", &altered), None);
        let short = &sealed[..sealed.len() - 2];
        assert_eq!(k.open("pgid_lease_events", short), None);
        assert_eq!(k.open("pgid_lease_events", ""), None);
    }
}
