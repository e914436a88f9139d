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
}
