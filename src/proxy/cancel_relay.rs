//! CancelRequests that reach the wrong instance: behind a load balancer a client's cancel
//! connection lands on any pgid instance, usually not the one that holds its session. An
//! instance that does not hold the key announces the request on the state database's
//! [`CANCEL_EVENTS_CHANNEL`]; the owner recognises it, cancels, and answers.
//!
//! The key never travels: an announcement carries the pid (public anyway: pg_stat_activity) and
//! a tag, HMAC(key derived from the server key, origin ‖ nonce ‖ pid ‖ secret), which only an
//! instance that holds the secret can match, and which differs for every request (a listener
//! cannot link two cancels of one session, nor learn anything to guess with). The whole payload
//! is sealed ([`crate::store::EventKey`]) like every event between instances; a sealed
//! announcement replayed later is refused by its age and its nonce.
//!
//! The per-address guessing budget ([`super::cancel::GUESSES`]) stays meaningful: the receiving
//! instance charges an announced request to the sender's address at once and refunds it when an
//! owner answers, so only requests for keys nobody holds use the budget up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::keys::ServerKey;
use crate::store::{EventKey, CANCEL_EVENTS_CHANNEL};

/// An announcement older than this (or from this far in the future: clocks differ) is ignored.
const MAX_AGE: Duration = Duration::from_secs(30);
/// Bytes of the key tag carried in an announcement.
const TAG_BYTES: usize = 16;
/// Announcements remembered (for their answer, against replays) at most.
const MAX_REMEMBERED: usize = 100_000;

/// What arrived on the cancel channel (its seal already checked).
#[derive(Debug, PartialEq, Eq)]
pub enum CancelEvent {
    /// Instance `origin` got a cancel for `pid` with `tag`.
    Ask {
        origin: i32,
        nonce: u64,
        sent: i64,
        pid: i32,
        tag: Vec<u8>,
    },
    /// The owner acted on `origin`'s request `nonce`.
    Done { origin: i32, nonce: u64 },
}

impl CancelEvent {
    pub fn encode(&self) -> String {
        match self {
            CancelEvent::Ask {
                origin,
                nonce,
                sent,
                pid,
                tag,
            } => format!(
                "ask {origin} {nonce:016x} {sent} {pid} {}",
                hex::encode(tag)
            ),
            CancelEvent::Done { origin, nonce } => format!("done {origin} {nonce:016x}"),
        }
    }

    pub fn decode(body: &str) -> Option<CancelEvent> {
        let mut parts = body.split(' ');
        let kind = parts.next()?;
        let origin = parts.next()?.parse().ok()?;
        let nonce = u64::from_str_radix(parts.next()?, 16).ok()?;
        let event = match kind {
            "ask" => CancelEvent::Ask {
                origin,
                nonce,
                sent: parts.next()?.parse().ok()?,
                pid: parts.next()?.parse().ok()?,
                tag: hex::decode(parts.next()?)
                    .ok()
                    .filter(|t| t.len() == TAG_BYTES)?,
            },
            "done" => CancelEvent::Done { origin, nonce },
            _ => return None,
        };
        parts.next().is_none().then_some(event)
    }
}

/// This instance's side of cancel routing.
pub struct CancelRelay {
    pool: deadpool_postgres::Pool,
    events: EventKey,
    tags: [u8; 32],
    pub instance: i32,
    /// Requests announced here and not answered yet: nonce → sender, when.
    pending: Mutex<HashMap<u64, (IpAddr, Instant)>>,
    /// Announcements acted on here: (origin, nonce) → when (a replay is ignored).
    seen: Mutex<HashMap<(i32, u64), Instant>>,
}

impl CancelRelay {
    pub fn new(pool: deadpool_postgres::Pool, key: &ServerKey, instance: i32) -> CancelRelay {
        CancelRelay {
            pool,
            events: EventKey::new(key),
            tags: key.derive(b"pgid cancel key tags\0"),
            instance,
            pending: Default::default(),
            seen: Default::default(),
        }
    }

    fn mac(&self, origin: i32, nonce: u64, pid: i32, secret: i32) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.tags).expect("HMAC takes any key");
        for part in [
            &origin.to_be_bytes()[..],
            &nonce.to_be_bytes(),
            &pid.to_be_bytes(),
            &secret.to_be_bytes(),
        ] {
            mac.update(part);
        }
        mac
    }

    /// The announcement of a cancel for (pid, secret) sent by `from`, remembered for its answer.
    pub fn ask(&self, pid: i32, secret: i32, from: IpAddr) -> String {
        let nonce: u64 = rand::thread_rng().gen();
        {
            let mut pending = self.pending.lock().unwrap();
            pending.retain(|_, (_, at)| at.elapsed() < MAX_AGE);
            if pending.len() < MAX_REMEMBERED {
                pending.insert(nonce, (from, Instant::now()));
            }
        }
        let tag = self.mac(self.instance, nonce, pid, secret).finalize();
        CancelEvent::Ask {
            origin: self.instance,
            nonce,
            sent: chrono::Utc::now().timestamp(),
            pid,
            tag: tag.into_bytes()[..TAG_BYTES].to_vec(),
        }
        .encode()
    }

    /// Whether a (genuine, sealed) announcement is fresh and new here: another instance's, not
    /// too old, its nonce not seen before.
    pub fn admit(&self, origin: i32, nonce: u64, sent: i64) -> bool {
        if origin == self.instance {
            return false;
        }
        let age = chrono::Utc::now().timestamp().abs_diff(sent);
        if age > MAX_AGE.as_secs() {
            return false;
        }
        let mut seen = self.seen.lock().unwrap();
        seen.retain(|_, at| at.elapsed() < MAX_AGE * 2);
        if seen.len() >= MAX_REMEMBERED {
            return false;
        }
        seen.insert((origin, nonce), Instant::now()).is_none()
    }

    /// Whether `tag` is the tag of (pid, secret) for this announcement.
    pub fn matches(&self, origin: i32, nonce: u64, pid: i32, secret: i32, tag: &[u8]) -> bool {
        self.mac(origin, nonce, pid, secret)
            .verify_truncated_left(tag)
            .is_ok()
    }

    /// The sender of request `nonce` of this instance, once (its answer arrived).
    pub fn answered(&self, nonce: u64) -> Option<IpAddr> {
        self.pending
            .lock()
            .unwrap()
            .remove(&nonce)
            .map(|(from, _)| from)
    }

    /// NOTIFYs a body on the cancel channel, sealed.
    pub async fn publish(&self, body: &str) {
        let payload = self.events.seal(CANCEL_EVENTS_CHANNEL, body);
        let sent = match self.pool.get().await {
            Ok(c) => c
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&CANCEL_EVENTS_CHANNEL, &payload],
                )
                .await
                .map(|_| ())
                .map_err(|e| crate::database::pg_message(&e)),
            Err(e) => Err(crate::database::pool_message(&e)),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot route a cancel request to the other instances");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(instance: i32) -> CancelRelay {
        let key = ServerKey::from_bytes([7; 32]);
        let (pool, _) = crate::database::pool("postgres://u@127.0.0.1:1/db", 1, None).unwrap();
        CancelRelay::new(pool, &key, instance)
    }

    #[tokio::test]
    async fn only_the_key_holder_matches_and_replays_are_refused() {
        let (here, owner) = (relay(1), relay(2));
        let from: IpAddr = "192.0.2.1".parse().unwrap();
        let body = here.ask(4242, 99, from);
        let Some(CancelEvent::Ask {
            origin,
            nonce,
            sent,
            pid,
            tag,
        }) = CancelEvent::decode(&body)
        else {
            panic!("{body}")
        };
        assert!(
            !body.split(' ').any(|field| field == "99"),
            "the secret never travels: {body}"
        );
        assert_eq!((origin, pid), (1, 4242));
        assert!(!here.admit(origin, nonce, sent), "one's own announcement");
        assert!(owner.admit(origin, nonce, sent));
        assert!(!owner.admit(origin, nonce, sent), "a replay");
        assert!(!owner.admit(origin, nonce + 1, sent - 120), "too old");
        assert!(owner.matches(origin, nonce, 4242, 99, &tag));
        assert!(!owner.matches(origin, nonce, 4242, 98, &tag));
        assert!(!owner.matches(origin, nonce + 1, 4242, 99, &tag));
        // Another deployment's key matches nothing.
        let stranger = CancelRelay::new(
            crate::database::pool("postgres://u@127.0.0.1:1/db", 1, None)
                .unwrap()
                .0,
            &ServerKey::from_bytes([8; 32]),
            3,
        );
        assert!(!stranger.matches(origin, nonce, 4242, 99, &tag));
        // The answer finds its sender once.
        assert_eq!(here.answered(nonce), Some(from));
        assert_eq!(here.answered(nonce), None);
        let done = CancelEvent::Done { origin: 1, nonce };
        assert_eq!(CancelEvent::decode(&done.encode()), Some(done));
        assert_eq!(CancelEvent::decode("ask 1 zz 0 1 00"), None);
    }
}
