//! Approval requests as reviewers list them: filtered by the rules whose approvers the reviewer
//! matches *before* any limit, newest first, in pages. A flood of one rule's requests therefore
//! never pushes another rule's out of its reviewers' view.
//!
//! Each distinct approvers value is kept once in `pgid.approval_rules` under its key (md5 of the
//! canonical JSON, also on every request), so finding a reviewer's rules reads that small table,
//! not the requests.

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use super::approvals::{row, ApprovalRow, Approvals, COLUMNS};
use super::StoreError;

/// Whose requests a list holds.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every request (broker admins).
    All,
    /// Requests of the rules with these approvers keys.
    Rules(&'a [String]),
}

impl Scope<'_> {
    fn keys(&self) -> Option<Vec<String>> {
        match self {
            Scope::All => None,
            Scope::Rules(k) => Some(k.to_vec()),
        }
    }
}

/// Where a page ends: the last request's time and id (requests are ordered by both, newest
/// first). Written `<microseconds since 1970>.<id>` in the API's `next` and `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub requested_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn after(r: &ApprovalRow) -> Cursor {
        Cursor {
            requested_at: r.requested_at,
            id: r.id,
        }
    }

    pub fn encode(&self) -> String {
        format!("{}.{}", self.requested_at.timestamp_micros(), self.id)
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let (micros, id) = text.split_once('.')?;
        Some(Cursor {
            requested_at: Utc.timestamp_micros(micros.parse().ok()?).single()?,
            id: id.parse().ok()?,
        })
    }
}

impl Approvals {
    /// The distinct approvers of every request made so far: (key, approvers as JSON).
    pub async fn rules(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let c = self.pool.get().await?;
        let rows = c
            .query("SELECT key, approvers FROM pgid.approval_rules", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Up to `limit` requests of `scope` in `state` (all when `None`; `pending` means waiting
    /// and not yet past its deadline), newest first, from after `before`.
    pub async fn list(
        &self,
        scope: Scope<'_>,
        state: Option<&str>,
        before: Option<Cursor>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let c = self.pool.get().await?;
        let (at, id) = match before {
            Some(b) => (Some(b.requested_at), Some(b.id)),
            None => (None, None),
        };
        let rows = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM pgid.approvals
                     WHERE ($1::text[] IS NULL OR approvers_key = ANY($1))
                       AND ($2::text IS NULL OR state = $2)
                       AND ($2::text IS DISTINCT FROM 'pending' OR expires_at > now())
                       AND ($3::timestamptz IS NULL OR (requested_at, id) < ($3, $4::uuid))
                     ORDER BY requested_at DESC, id DESC
                     LIMIT $5"
                ),
                &[&scope.keys(), &state, &at, &id, &limit],
            )
            .await?;
        Ok(rows.iter().map(row).collect())
    }

    /// Every request waiting for review now (the approval page's live feed filters these per
    /// reviewer). Bounded by the limits on pending requests.
    pub async fn pending_now(&self) -> Result<Vec<ApprovalRow>, StoreError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM pgid.approvals
                     WHERE state = 'pending' AND expires_at > now()
                     ORDER BY requested_at DESC, id DESC"
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(row).collect())
    }

    /// The `per_rule` requests of each rule in `scope` decided last (decided, expired or
    /// withdrawn), newest decision first: enough to show any reviewer their own latest.
    pub async fn recently_decided(
        &self,
        scope: Scope<'_>,
        per_rule: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let columns: Vec<String> = COLUMNS
            .split(',')
            .map(|c| format!("d.{}", c.trim()))
            .collect();
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {} FROM pgid.approval_rules r
                     CROSS JOIN LATERAL (
                         SELECT * FROM pgid.approvals a
                         WHERE a.approvers_key = r.key AND a.state <> 'pending'
                         ORDER BY a.decided_at DESC NULLS LAST
                         LIMIT $2) d
                     WHERE $1::text[] IS NULL OR r.key = ANY($1)
                     ORDER BY d.decided_at DESC NULLS LAST, d.id DESC",
                    columns.join(", ")
                ),
                &[&scope.keys(), &per_rule],
            )
            .await?;
        Ok(rows.iter().map(row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let c = Cursor {
            requested_at: Utc.timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: Uuid::from_u128(7),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        for junk in [
            "",
            "1",
            "x.y",
            "1.not-a-uuid",
            "abc.00000000-0000-0000-0000-000000000007",
        ] {
            assert_eq!(Cursor::parse(junk), None, "{junk}");
        }
    }
}
