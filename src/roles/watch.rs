//! Live view of lease lifetimes for the proxy: each lease with sessions has a `watch` channel
//! carrying its current expiry, or why it ended. The lease service publishes renewals and ends
//! here first (so sessions close before the role is dropped); other pgid instances' changes
//! arrive through LISTEN/NOTIFY and are published the same way.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

/// Why a lease's sessions must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    Revoked,
}

impl EndReason {
    pub fn message(self) -> &'static str {
        match self {
            EndReason::Expired => "pgid: credential expired",
            EndReason::Revoked => "pgid: credential revoked",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Active { expires_at: DateTime<Utc> },
    Ended(EndReason),
}

impl LeaseStatus {
    /// `<lease id> active <expiry>` / `<lease id> expired` / `<lease id> revoked`: the payload of
    /// a lease event between instances.
    pub fn encode(id: Uuid, status: LeaseStatus) -> String {
        match status {
            LeaseStatus::Active { expires_at } => {
                format!("{id} active {}", expires_at.to_rfc3339())
            }
            LeaseStatus::Ended(EndReason::Expired) => format!("{id} expired"),
            LeaseStatus::Ended(EndReason::Revoked) => format!("{id} revoked"),
        }
    }

    /// What a lease row says its sessions may do at `now`; None while it is being created.
    /// A lease past its expiry, or being removed because it expired, has expired; one revoked,
    /// being revoked, or whose creation failed, is revoked.
    pub fn of(row: &crate::store::LeaseRow, now: DateTime<Utc>) -> Option<LeaseStatus> {
        use crate::store::LeaseState as S;
        match row.final_state.unwrap_or(row.state) {
            S::Creating => None,
            S::Active if row.expires_at <= now => Some(LeaseStatus::Ended(EndReason::Expired)),
            S::Active => Some(LeaseStatus::Active {
                expires_at: row.expires_at,
            }),
            S::Expired => Some(LeaseStatus::Ended(EndReason::Expired)),
            S::Revoking | S::Revoked | S::Failed => Some(LeaseStatus::Ended(EndReason::Revoked)),
        }
    }

    pub fn decode(payload: &str) -> Option<(Uuid, LeaseStatus)> {
        let mut parts = payload.split(' ');
        let id = parts.next()?.parse().ok()?;
        let status = match parts.next()? {
            "active" => LeaseStatus::Active {
                expires_at: parts.next()?.parse().ok()?,
            },
            "expired" => LeaseStatus::Ended(EndReason::Expired),
            "revoked" => LeaseStatus::Ended(EndReason::Revoked),
            _ => return None,
        };
        Some((id, status))
    }
}

/// Ended leases are remembered this long, so a session that subscribes just after the end
/// still sees it.
const ENDED_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// A lease's channel, and when it ended (if it has).
type Entry = (watch::Sender<LeaseStatus>, Option<std::time::Instant>);

#[derive(Default)]
pub struct LeaseWatch {
    leases: Mutex<HashMap<Uuid, Entry>>,
}

impl LeaseWatch {
    /// A receiver for `id`, starting from `status` if nobody watches it yet.
    pub fn subscribe(&self, id: Uuid, status: LeaseStatus) -> watch::Receiver<LeaseStatus> {
        let mut map = self.leases.lock().unwrap();
        map.retain(|_, (tx, ended)| {
            tx.receiver_count() > 0 || ended.is_some_and(|t| t.elapsed() < ENDED_MEMORY)
        });
        map.entry(id)
            .or_insert_with(|| (watch::channel(status).0, None))
            .0
            .subscribe()
    }

    pub fn publish(&self, id: Uuid, status: LeaseStatus) {
        let mut map = self.leases.lock().unwrap();
        if let LeaseStatus::Ended(_) = status {
            let entry = map
                .entry(id)
                .or_insert_with(|| (watch::channel(status).0, None));
            entry.1 = Some(std::time::Instant::now());
        }
        if let Some((tx, _)) = map.get(&id) {
            tx.send_if_modified(|cur| {
                // An ended lease stays ended.
                if matches!(cur, LeaseStatus::Ended(_)) || *cur == status {
                    return false;
                }
                *cur = status;
                true
            });
        }
    }

    /// Leases some session here watches (re-read after events from other instances may have
    /// been missed).
    pub fn watched_ids(&self) -> Vec<Uuid> {
        self.leases
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (tx, ended))| tx.receiver_count() > 0 && ended.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn watched(&self) -> usize {
        self.leases
            .lock()
            .unwrap()
            .values()
            .filter(|(tx, _)| tx.receiver_count() > 0)
            .count()
    }
}

/// Resolves when the lease ends: revoked, or expired (renewals move the deadline).
pub async fn lease_ended(mut watch: watch::Receiver<LeaseStatus>) -> EndReason {
    loop {
        let status = *watch.borrow_and_update();
        let deadline = match status {
            LeaseStatus::Ended(reason) => return reason,
            LeaseStatus::Active { expires_at } => {
                let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
                if left.is_zero() {
                    return EndReason::Expired;
                }
                tokio::time::Instant::now() + left
            }
        };
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    return EndReason::Revoked;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let id = Uuid::new_v4();
        for s in [
            LeaseStatus::Active {
                expires_at: Utc::now(),
            },
            LeaseStatus::Ended(EndReason::Expired),
            LeaseStatus::Ended(EndReason::Revoked),
        ] {
            assert_eq!(
                LeaseStatus::decode(&LeaseStatus::encode(id, s)),
                Some((id, s))
            );
        }
        assert_eq!(LeaseStatus::decode("garbage"), None);
    }

    #[test]
    fn ended_is_final_and_renewals_propagate() {
        let w = LeaseWatch::default();
        let id = Uuid::new_v4();
        let t = Utc::now();
        let rx = w.subscribe(id, LeaseStatus::Active { expires_at: t });
        let later = t + chrono::Duration::minutes(5);
        w.publish(id, LeaseStatus::Active { expires_at: later });
        assert_eq!(*rx.borrow(), LeaseStatus::Active { expires_at: later });
        w.publish(id, LeaseStatus::Ended(EndReason::Revoked));
        w.publish(id, LeaseStatus::Active { expires_at: later });
        assert_eq!(*rx.borrow(), LeaseStatus::Ended(EndReason::Revoked));
        assert_eq!(w.watched(), 1);
        drop(rx);
        assert_eq!(w.watched(), 0);
        // An end published before anyone watches is still seen by a late subscriber.
        let other = Uuid::new_v4();
        w.publish(other, LeaseStatus::Ended(EndReason::Expired));
        let late = w.subscribe(other, LeaseStatus::Active { expires_at: t });
        assert_eq!(*late.borrow(), LeaseStatus::Ended(EndReason::Expired));
    }

    #[test]
    fn a_rows_state_says_what_its_sessions_may_do() {
        use crate::store::LeaseState as S;
        let now = Utc::now();
        let mut row = crate::store::test_lease();
        row.expires_at = now + chrono::Duration::minutes(5);
        let of = |state, final_state, row: &crate::store::LeaseRow| {
            let mut r = row.clone();
            r.state = state;
            r.final_state = final_state;
            LeaseStatus::of(&r, now)
        };
        let ended = |r| Some(LeaseStatus::Ended(r));
        assert_eq!(
            of(S::Active, None, &row),
            Some(LeaseStatus::Active {
                expires_at: row.expires_at
            })
        );
        assert_eq!(of(S::Creating, None, &row), None);
        assert_eq!(
            of(S::Revoking, Some(S::Expired), &row),
            ended(EndReason::Expired)
        );
        assert_eq!(
            of(S::Revoking, Some(S::Revoked), &row),
            ended(EndReason::Revoked)
        );
        assert_eq!(
            of(S::Revoked, Some(S::Revoked), &row),
            ended(EndReason::Revoked)
        );
        assert_eq!(
            of(S::Expired, Some(S::Expired), &row),
            ended(EndReason::Expired)
        );
        assert_eq!(
            of(S::Failed, Some(S::Failed), &row),
            ended(EndReason::Revoked)
        );
        row.expires_at = now;
        assert_eq!(of(S::Active, None, &row), ended(EndReason::Expired));
    }
}
