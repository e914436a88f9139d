//! Leases issued for a token presented as the password, reused by later connections with the
//! same token: a connection pool configured with a token makes one lease, not one per connection.
//!
//! An entry is keyed by HMAC-SHA256 (a key derived from the server key) of the token, the chosen
//! policy and the database — the token itself is never kept. Connections with the same key take
//! turns on the entry, so a burst of them issues one lease. A lease is handed to a new connection
//! only while the state store says it is active, it is the connection's policy and identity, and
//! it has more than a tenth of its lifetime left (a new connection should not start on a lease
//! about to end); otherwise a new lease replaces it. The token is verified at every connection, so
//! an expired token gets nothing. The table holds at most `[proxy] token_lease_cache` entries
//! (0 turns reuse off): when it is full, entries whose lease or token has ended go first, then the
//! least recently used one that no connection is using; if every entry is in use, the connection
//! gets a lease of its own, not cached. Each pgid instance keeps its own table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::keys::ServerKey;
use crate::store::{LeaseRow, LeaseState};

/// A lease in the last 1/`LAST_PART` of its lifetime is not handed to new connections.
const LAST_PART: i32 = 10;

pub type Key = [u8; 32];

/// The lease a token got, and until when the entry can serve at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub lease: Uuid,
    /// The earlier of the lease's expiry and the token's.
    pub until: DateTime<Utc>,
}

/// One token's place in the table; holding its lock is a connection's turn.
pub struct Slot {
    pub lease: tokio::sync::Mutex<Option<Entry>>,
    used: AtomicU64,
}

pub struct TokenLeases {
    key: [u8; 32],
    capacity: usize,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    clock: AtomicU64,
}

impl TokenLeases {
    pub fn new(server_key: &ServerKey, capacity: usize) -> TokenLeases {
        TokenLeases {
            key: server_key.derive(b"pgid token-as-password lease cache"),
            capacity,
            slots: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    /// The entry's key: a keyed hash of the token with the policy and database it is used for.
    pub fn key(&self, token: &str, policy: &str, database: &str) -> Key {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in [token, policy, database] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// The slot for `key`, made if missing; `None` when reuse is off or the table is full of
    /// slots in use.
    pub fn slot(&self, key: Key) -> Option<Arc<Slot>> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap();
        if let Some(s) = slots.get(&key) {
            s.used.store(tick, Ordering::Relaxed);
            return Some(s.clone());
        }
        if self.capacity == 0 {
            return None;
        }
        if slots.len() >= self.capacity {
            let now = Utc::now();
            // A slot only the table holds is idle, and then its lock is free.
            slots.retain(|_, s| Arc::strong_count(s) > 1 || !ended(s, now));
        }
        if slots.len() >= self.capacity {
            let victim = slots
                .iter()
                .filter(|(_, s)| Arc::strong_count(s) == 1)
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(k, _)| *k)?;
            slots.remove(&victim);
        }
        let s = Arc::new(Slot {
            lease: tokio::sync::Mutex::new(None),
            used: AtomicU64::new(tick),
        });
        slots.insert(key, s.clone());
        Some(s)
    }

    pub fn len(&self) -> usize {
        self.slots.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ended(s: &Slot, now: DateTime<Utc>) -> bool {
    match s.lease.try_lock() {
        Ok(e) => e.is_none_or(|e| e.until <= now),
        Err(_) => false,
    }
}

/// Whether `row` — the state store's current word on a cached lease — may serve a new
/// connection of `issuer`/`subject` under `policy` at `now`.
pub fn reusable(
    row: &LeaseRow,
    entry: &Entry,
    policy: &str,
    issuer: &str,
    subject: &str,
    now: DateTime<Utc>,
) -> bool {
    let lifetime = row.expires_at - row.created_at;
    row.id == entry.lease
        && row.state == LeaseState::Active
        && row.policy == policy
        && row.issuer == issuer
        && row.subject == subject
        && entry.until > now
        && row.expires_at - now > lifetime / LAST_PART
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn table(capacity: usize) -> TokenLeases {
        TokenLeases::new(&ServerKey::from_bytes([7; 32]), capacity)
    }

    #[test]
    fn keys_separate_tokens_policies_and_databases_and_hide_the_token() {
        let t = table(10);
        let k = t.key("aaa.bbb.ccc", "p", "app");
        assert_eq!(k, t.key("aaa.bbb.ccc", "p", "app"));
        assert_ne!(k, t.key("aaa.bbb.ccd", "p", "app"));
        assert_ne!(k, t.key("aaa.bbb.ccc", "q", "app"));
        assert_ne!(k, t.key("aaa.bbb.ccc", "p", "other"));
        // Length-prefixed: moving a boundary changes the key.
        assert_ne!(t.key("ab", "c", "d"), t.key("a", "bc", "d"));
        // Keyed by the server key: another deployment's key differs.
        let other = TokenLeases::new(&ServerKey::from_bytes([8; 32]), 10);
        assert_ne!(k, other.key("aaa.bbb.ccc", "p", "app"));
    }

    fn keys_of(t: &TokenLeases) -> Vec<Key> {
        let mut k: Vec<Key> = t.slots.lock().unwrap().keys().copied().collect();
        k.sort();
        k
    }

    /// Takes `key`'s slot (a use) and gives it an entry valid until `until`.
    fn fill(t: &TokenLeases, key: Key, until: DateTime<Utc>) {
        let s = t.slot(key).unwrap();
        *s.lease.try_lock().unwrap() = Some(Entry {
            lease: Uuid::nil(),
            until,
        });
    }

    #[test]
    fn the_table_is_bounded_and_evicts_ended_then_least_recently_used() {
        let t = table(2);
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let later = Utc::now() + Duration::hours(1);
        fill(&t, a, later);
        fill(&t, b, later);
        // `a` is in use: `b` goes for `c`, though `a` was used first.
        let held = t.slot(a).unwrap();
        fill(&t, c, later);
        assert_eq!(keys_of(&t), [a, c]);
        drop(held);
        // Both idle: `c` was used before `a`, so `c` goes.
        drop(t.slot(a));
        fill(&t, b, later);
        assert_eq!(keys_of(&t), [a, b]);
        // An ended entry goes before a less recently used one.
        fill(&t, a, Utc::now() - Duration::seconds(1));
        fill(&t, c, later);
        assert_eq!(keys_of(&t), [b, c]);
        // Every slot in use: no slot, never a third entry.
        let (hb, hc) = (t.slot(b).unwrap(), t.slot(c).unwrap());
        assert!(t.slot(a).is_none());
        assert_eq!(t.len(), 2);
        drop((hb, hc));
    }

    #[test]
    fn capacity_zero_turns_reuse_off() {
        assert!(table(0).slot([1; 32]).is_none());
    }

    #[test]
    fn reusable_only_while_active_current_and_not_near_its_end() {
        let now = Utc::now();
        let mut row = crate::store::test_lease();
        row.id = Uuid::from_u128(1);
        row.state = LeaseState::Active;
        row.policy = "p".into();
        row.issuer = "https://idp".into();
        row.subject = "agent".into();
        row.created_at = now - Duration::minutes(5);
        row.expires_at = now + Duration::minutes(10);
        let entry = Entry {
            lease: row.id,
            until: row.expires_at,
        };
        let ok = |row: &LeaseRow, entry: &Entry, now| {
            reusable(row, entry, "p", "https://idp", "agent", now)
        };
        assert!(ok(&row, &entry, now));
        assert!(!reusable(&row, &entry, "q", "https://idp", "agent", now));
        assert!(!reusable(&row, &entry, "p", "https://idp", "other", now));
        // Lifetime 15 min: not in its last 90 s.
        assert!(ok(&row, &entry, now + Duration::seconds(500)));
        assert!(!ok(&row, &entry, now + Duration::seconds(511)));
        // The token's end ends the entry.
        let short = Entry {
            until: now + Duration::seconds(30),
            ..entry
        };
        assert!(!ok(&row, &short, now + Duration::seconds(30)));
        for state in [
            LeaseState::Revoking,
            LeaseState::Revoked,
            LeaseState::Expired,
        ] {
            row.state = state;
            assert!(!ok(&row, &entry, now), "{state:?}");
        }
        row.state = LeaseState::Active;
        let other = Entry {
            lease: Uuid::from_u128(2),
            ..entry
        };
        assert!(!ok(&row, &other, now));
    }
}
