//! Reviewers' sessions on the approval page (`pgid.review_sessions`). The signed cookie names
//! its session; a session is live until it expires or its reviewer signs out, and every
//! request checks that — so a cookie kept after sign-out (or copied before) opens nothing, on
//! any instance.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::approvals::announce;
use super::{EventKey, StoreError};

/// Sessions ended or expired longer ago than this are deleted as new ones start.
const KEEP_ENDED_FOR: &str = "1 day";

/// Payload of the approvals NOTIFY sent at sign-out: every instance re-checks its open feeds.
/// (Not the session id: NOTIFY payloads are visible to other listeners.)
pub const SIGNED_OUT: &str = "review-session-ended";

pub struct ReviewSessions {
    pool: Pool,
    events: Option<EventKey>,
}

impl ReviewSessions {
    pub fn new(pool: Pool) -> ReviewSessions {
        ReviewSessions { pool, events: None }
    }

    /// Announces sign-outs, sealed with `key`.
    pub fn announcing(mut self, key: EventKey) -> ReviewSessions {
        self.events = Some(key);
        self
    }

    pub async fn start(
        &self,
        id: Uuid,
        issuer: &str,
        subject: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            &format!(
                "DELETE FROM pgid.review_sessions
                 WHERE expires_at < now() - interval '{KEEP_ENDED_FOR}'
                    OR ended_at < now() - interval '{KEEP_ENDED_FOR}'"
            ),
            &[],
        )
        .await?;
        c.execute(
            "INSERT INTO pgid.review_sessions (id, issuer, subject, expires_at)
             VALUES ($1, $2, $3, $4)",
            &[&id, &issuer, &subject, &expires_at],
        )
        .await?;
        Ok(())
    }

    /// Whether session `id` has neither ended nor expired.
    pub async fn is_live(&self, id: Uuid) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT 1 FROM pgid.review_sessions
             WHERE id = $1 AND ended_at IS NULL AND expires_at > now()",
            &[&id],
        )
        .await?
        .is_some())
    }

    /// Ends session `id` (sign-out) and tells every instance, whose open feeds of it close.
    pub async fn end(&self, id: Uuid) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE pgid.review_sessions SET ended_at = now()
                 WHERE id = $1 AND ended_at IS NULL",
                &[&id],
            )
            .await?;
        if n == 1 {
            announce(self.events.as_ref(), &**c, SIGNED_OUT).await?;
        }
        Ok(n == 1)
    }

    /// Those of `ids` that are no longer live.
    pub async fn ended_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.pool.get().await?;
        let live: Vec<Uuid> = c
            .query(
                "SELECT id FROM pgid.review_sessions
                 WHERE id = ANY($1) AND ended_at IS NULL AND expires_at > now()",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(ids.iter().filter(|i| !live.contains(i)).copied().collect())
    }
}
