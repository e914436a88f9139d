//! The approval page's live-update streams open on this instance: at most `per_session` for one
//! sign-in and `max` in all, each with a handle that closes it when its session ends (sign-out
//! here, or seen ended in the state database). A stream is counted from the moment it is
//! admitted until its [`Admitted`] handle is dropped with the response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This sign-in already has `max_streams_per_session` open.
    Session,
    /// This instance already has `max_streams` open.
    Instance,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Session => "session_limit",
            Refused::Instance => "instance_limit",
        }
    }
}

struct Session {
    open: usize,
    /// Cancelled when the session ends: its streams say `signedout` and close.
    ended: CancellationToken,
}

#[derive(Default)]
struct Open {
    total: usize,
    sessions: HashMap<Uuid, Session>,
}

pub struct Streams {
    max: usize,
    per_session: usize,
    open: Mutex<Open>,
    metrics: Arc<Metrics>,
}

/// An admitted stream; dropping it frees its place.
pub struct Admitted {
    streams: Arc<Streams>,
    session: Uuid,
    pub ended: CancellationToken,
}

impl Streams {
    pub fn new(max: usize, per_session: usize, metrics: Arc<Metrics>) -> Streams {
        Streams {
            max,
            per_session,
            open: Mutex::default(),
            metrics,
        }
    }

    /// Admits one more stream of `session`, within both limits.
    pub fn admit(self: &Arc<Self>, session: Uuid) -> Result<Admitted, Refused> {
        let mut open = self.open.lock().unwrap();
        let mine = open.sessions.get(&session).map_or(0, |s| s.open);
        if mine >= self.per_session {
            return Err(Refused::Session);
        }
        if open.total >= self.max {
            return Err(Refused::Instance);
        }
        open.total += 1;
        let s = open.sessions.entry(session).or_insert_with(|| Session {
            open: 0,
            ended: CancellationToken::new(),
        });
        s.open += 1;
        let ended = s.ended.clone();
        self.metrics.approval_streams.set(open.total as i64);
        Ok(Admitted {
            streams: self.clone(),
            session,
            ended,
        })
    }

    /// Session `id` has ended: its streams close.
    pub fn end(&self, id: Uuid) {
        if let Some(s) = self.open.lock().unwrap().sessions.get(&id) {
            s.ended.cancel();
        }
    }

    /// The sessions with streams open here.
    pub fn sessions(&self) -> Vec<Uuid> {
        self.open.lock().unwrap().sessions.keys().copied().collect()
    }

    pub fn total(&self) -> usize {
        self.open.lock().unwrap().total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap();
        open.total -= 1;
        if let Some(s) = open.sessions.get_mut(&self.session) {
            s.open -= 1;
            if s.open == 0 {
                open.sessions.remove(&self.session);
            }
        }
        self.streams.metrics.approval_streams.set(open.total as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_session_and_in_all_and_places_come_back() {
        let metrics = Arc::new(Metrics::default());
        let s = Arc::new(Streams::new(3, 2, metrics.clone()));
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let a1 = s.admit(a).unwrap();
        let a2 = s.admit(a).unwrap();
        assert_eq!(s.admit(a).err(), Some(Refused::Session));
        let b1 = s.admit(b).unwrap();
        assert_eq!(s.admit(b).err(), Some(Refused::Instance));
        assert_eq!(metrics.approval_streams.get(), 3);
        drop(a1);
        assert_eq!(s.total(), 2);
        let b2 = s.admit(b).unwrap();
        // Ending a session closes its streams, not the others'.
        s.end(a);
        assert!(a2.ended.is_cancelled());
        assert!(!b1.ended.is_cancelled() && !b2.ended.is_cancelled());
        drop((a2, b1, b2));
        assert_eq!(s.total(), 0);
        assert!(s.sessions().is_empty());
        assert_eq!(metrics.approval_streams.get(), 0);
        // A session that signs in again after its streams closed starts afresh.
        let again = s.admit(a).unwrap();
        assert!(!again.ended.is_cancelled());
    }
}
