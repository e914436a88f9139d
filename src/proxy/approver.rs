//! Statements an `[[approval]]` rule holds, on their way through a session: the planner's
//! estimate (`min_rows`), the request in the state database (audited, announced), and then —
//! wait mode — the NoticeResponse and the wait for a decision (woken by NOTIFY; a client cancel
//! or the lease's end withdraws the request), or — retry mode — the use of an approval given for
//! this very statement.

use crate::metrics::StatementDecision;
use bytes::BytesMut;
use chrono::Utc;

use super::inspect::Hold;
use super::stream::{send, Flow};
use super::upstream::Upstream;
use super::wire::backend::{self, Severity};
use super::Proxy;
use crate::audit::{AuditLog, Event, Kind};
use crate::guard::Verdict;
use crate::metrics::ApprovalOutcome;
use crate::policy::ApprovalMode;
use crate::roles::{EndReason, LeaseStatus};

/// A held statement that will not run, and why (`pgid: approval <reason>`).
fn refused(reason: String) -> Verdict {
    Verdict::Deny {
        rule: "approval",
        reason,
    }
}

/// How often a held statement re-reads its request when no NOTIFY wakes it.
const APPROVAL_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a held statement may use of its session while it is screened and waits.
pub(super) struct Io<'s> {
    pub client: &'s mut super::stream::ClientStream,
    /// Where bytes the client sends meanwhile go (its next messages, read after the wait).
    pub incoming: &'s mut super::wire::framing::ClientFrames,
    pub audit: &'s AuditLog,
    /// The upstream connection, when nothing is in flight on it.
    pub idle: Option<&'s mut Upstream>,
}

/// Most bytes a client may send while its statement waits; beyond this pgid stops reading
/// until the wait ends (the client's own send then waits, as with any slow server).
const MAX_INCOMING_WHILE_WAITING: usize = 1 << 20;

/// Holds statements for a reviewer: makes the request, tells the client, waits for the decision.
pub(super) struct Approver<'a> {
    pub proxy: &'a Proxy,
    pub lease: &'a crate::store::LeaseRow,
    pub session_id: uuid::Uuid,
    /// The session's cancel key: while a statement waits, a CancelRequest withdraws it.
    pub cancel: &'a super::cancel::CancelKey,
    /// The lease's status: its end (expiry, revocation) withdraws the request too.
    pub lease_watch: &'a tokio::sync::watch::Receiver<LeaseStatus>,
    /// pgid stopping: a wait still undecided at the drain timeout is withdrawn, as a busy
    /// session's statement would be cut.
    pub shutdown: &'a tokio_util::sync::CancellationToken,
}

impl Approver<'_> {
    /// What becomes of a held statement: `wait` holds it for a reviewer; `retry` runs it if an
    /// approval of this very statement is at hand, and otherwise refuses it and asks for one.
    pub(super) async fn resolve(&self, hold: &Hold, io: &mut Io<'_>) -> Result<Verdict, Flow> {
        let metrics = &self.proxy.leases.metrics().proxy;
        metrics.statement(StatementDecision::Held, hold.class);
        let _pending = crate::metrics::Open::new(&metrics.approvals_pending);
        match hold.rule.mode {
            ApprovalMode::Wait => self.wait(hold, io).await,
            ApprovalMode::Retry => self.retry(hold, io).await,
        }
    }

    /// `min_rows` and the planner's estimate: `None` when the statement is small enough to run
    /// without review, else the estimate the reviewer sees (if there is one). An estimate below
    /// `min_rows` counts only when every relation the plan scans has statistics
    /// ([`super::statistics`]): on a table never analysed the planner guesses; and only for a
    /// predicate the planner estimates from them (`Hold::estimable`, decided when the statement was
    /// analysed).
    async fn screen(&self, hold: &Hold, io: &mut Io<'_>) -> Result<Option<Option<i64>>, Flow> {
        let sql = &hold.sql;
        let estimate = match io.idle.as_deref_mut() {
            Some(up) => super::estimate::on_session(up, io.client, &hold.raw_sql, &hold.exact)
                .await
                .map_err(|e| match e {
                    super::estimate::Broken::Upstream => Flow::Upstream,
                    super::estimate::Broken::Client => Flow::ClientGone,
                })?,
            None => {
                super::estimate::on_new_connection(self.proxy, self.lease, sql, &hold.exact).await
            }
        };
        if let (Some(min), Some(e)) = (hold.rule.min_rows, &estimate) {
            if e.rows < min as f64 && hold.estimable && self.statistics_known(&e.scans).await {
                return Ok(None);
            }
        }
        Ok(Some(estimate.map(|e| e.rows.round() as i64)))
    }

    /// Whether the planner knows every relation it scans (read with the admin connection of the
    /// lease's database).
    async fn statistics_known(&self, scans: &[super::estimate::Scan]) -> bool {
        match self.proxy.leases.databases().get(&self.lease.database) {
            Some(db) => super::statistics::all_known(&db.pool, scans).await,
            None => false,
        }
    }

    fn review_link(&self, id: uuid::Uuid) -> String {
        self.proxy
            .approval_notifier
            .review_link(&id.to_string())
            .unwrap_or_else(|| format!("POST /v1/approvals/{id}/approve or /deny on pgid's broker"))
    }

    /// Makes the request, records it, and announces it; a statement that cannot be requested is
    /// refused (the `Err`).
    async fn request(
        &self,
        hold: &Hold,
        estimated_rows: Option<i64>,
        audit: &AuditLog,
    ) -> Result<crate::store::ApprovalRow, Verdict> {
        let store = &self.proxy.approvals;
        let id = uuid::Uuid::new_v4();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(hold.rule.timeout).unwrap_or(chrono::Duration::MAX);
        let retry = hold.rule.mode == ApprovalMode::Retry;
        let request = crate::store::NewApproval {
            id,
            lease_id: self.lease.id,
            issuer: &self.lease.issuer,
            subject: &self.lease.subject,
            policy: &self.lease.policy,
            database: &self.lease.database,
            statement: &hold.statement,
            parameters: hold.parameters.as_ref().map(|p| serde_json::json!(p)),
            tables: hold.tables.clone(),
            estimated_rows,
            mode: if retry { "retry" } else { "wait" },
            approvers: serde_json::to_value(&hold.rule.approvers).unwrap_or_default(),
            expires_at,
            instance_id: self.proxy.instance_id,
            fingerprint: retry.then(|| hold.fingerprint.clone()),
        };
        let row = match store.create(&request).await {
            Ok(row) => row,
            Err(crate::store::CreateError::Full(full)) => {
                self.proxy
                    .leases
                    .metrics()
                    .approval_request_refused(full.key().0);
                return Err(Verdict::Deny {
                    rule: "approval_limit",
                    reason: format!("too many pending approval requests: {full}"),
                });
            }
            Err(crate::store::CreateError::Store(e)) => {
                tracing::error!(error = %crate::errors::Chain(&e), "cannot make an approval request");
                return Err(refused(
                    "could not be requested: the state database is unavailable".into(),
                ));
            }
        };
        let mut event = Event::new(Kind::ApprovalRequested).lease(self.lease);
        event.session_id = Some(self.session_id);
        event.approval_id = Some(id);
        event.reason = Some(hold.audited.clone());
        if let Err(e) = audit.record(&event).await {
            tracing::error!(error = %crate::errors::Chain(&e), "cannot audit an approval request");
            let _ = store.withdraw(id).await;
            return Err(refused(
                "could not be requested: the audit log is unavailable".into(),
            ));
        }
        self.proxy.approval_notifier.requested(
            &row,
            hold.rule
                .webhooks
                .as_ref()
                .map(|(names, _)| names.as_slice()),
        );
        Ok(row)
    }

    /// Retry mode: an approval of this statement (same canonical text and parameters, same
    /// lease, within the window, not used yet) lets it run once; otherwise it is refused, and a
    /// request is made unless one is already waiting.
    async fn retry(&self, hold: &Hold, io: &mut Io<'_>) -> Result<Verdict, Flow> {
        let audit = io.audit;
        let store = &self.proxy.approvals;
        let unavailable = |e: crate::store::StoreError| {
            tracing::error!(error = %crate::errors::Chain(&e), "cannot read approval requests");
            refused("could not be checked: the state database is unavailable".into())
        };
        match store
            .use_approved(self.lease.id, &hold.fingerprint, hold.rule.window)
            .await
        {
            Ok(Some(row)) => {
                let mut event = Event::new(Kind::ApprovalUsed).lease(self.lease);
                event.session_id = Some(self.session_id);
                event.approval_id = Some(row.id);
                event.reviewer_issuer = row.reviewer_issuer;
                event.reviewer = row.reviewer;
                event.reason = Some(hold.audited.clone());
                if let Err(e) = audit.record(&event).await {
                    tracing::error!(error = %crate::errors::Chain(&e), "cannot audit the use of an approval");
                    return Ok(refused(
                        "could not be used: the audit log is unavailable".into(),
                    ));
                }
                return Ok(Verdict::Allow);
            }
            Ok(None) => {}
            Err(e) => return Ok(unavailable(e)),
        }
        match store.pending_retry(self.lease.id, &hold.fingerprint).await {
            Ok(Some(row)) => {
                return Ok(refused(format!(
                    "required: request {} still waits for review; run the same statement again \
                     once it is approved; review: {}",
                    row.id,
                    self.review_link(row.id)
                )))
            }
            Ok(None) => {}
            Err(e) => return Ok(unavailable(e)),
        }
        let Some(estimated_rows) = self.screen(hold, io).await? else {
            return Ok(Verdict::Allow);
        };
        Ok(match self.request(hold, estimated_rows, audit).await {
            Ok(row) => refused(format!(
                "required: request {} was sent for review; once it is approved, run the same \
                 statement again within {}; review: {}",
                row.id,
                humantime::format_duration(hold.rule.window),
                self.review_link(row.id)
            )),
            Err(v) => v,
        })
    }

    async fn wait(&self, hold: &Hold, io: &mut Io<'_>) -> Result<Verdict, Flow> {
        // A cancel that arrived before this statement (for an earlier one) does not count; one
        // that arrives from here on withdraws the request.
        {
            let stale = self.cancel.cancelled.notified();
            tokio::pin!(stale);
            let _ = futures::poll!(stale.as_mut());
        }
        // min_rows: a statement the planner expects to touch fewer rows runs without review.
        let Some(estimated_rows) = self.screen(hold, io).await? else {
            return Ok(Verdict::Allow);
        };
        // pgid is stopping: no reviewer could answer within the drain.
        if self.shutdown.is_cancelled() {
            return Ok(refused("pgid is shutting down".into()));
        }
        // From here until the wait ends nothing of the session runs upstream: a cancel withdraws
        // the request and is not forwarded (it could reach the server late and hit what follows).
        let _held = self.cancel.hold();
        let row = match self.request(hold, estimated_rows, io.audit).await {
            Ok(row) => row,
            Err(v) => return Ok(v),
        };
        let id = row.id;
        let asked = std::time::Instant::now();
        let waits = &self.proxy.leases.metrics().proxy;
        let mut notice = BytesMut::new();
        backend::error_response(
            &mut notice,
            Severity::Notice,
            "00000",
            &format!(
                "pgid: the statement waits for approval {id} (up to {}s); review: {}",
                hold.rule.timeout.as_secs(),
                self.review_link(id)
            ),
        );
        send(io.client, &notice).await?;
        let woken = self.proxy.approval_waits.register(id);
        let decision = self.decision(id, &woken);
        tokio::pin!(decision);
        let ended = crate::roles::lease_ended(self.lease_watch.clone());
        tokio::pin!(ended);
        let drained = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(self.proxy.settings.drain_timeout).await;
        };
        tokio::pin!(drained);
        let verdict = loop {
            tokio::select! {
                v = &mut decision => break v,
                _ = self.cancel.cancelled.notified() => {
                    break self.withdraw(id, &woken, "the client cancelled the statement").await;
                }
                _ = &mut drained => {
                    break self.withdraw(id, &woken, "pgid is shutting down").await;
                }
                reason = &mut ended => {
                    // The session ends right after; the statement must not run on a dead lease.
                    let why = match reason {
                        EndReason::Expired => "the credential expired",
                        EndReason::Revoked => "the credential was revoked",
                    };
                    break match self.withdraw(id, &woken, why).await {
                        Verdict::Allow => refused(format!("withdrawn: {why}")),
                        v => v,
                    };
                }
                // A client that goes away has given up on its statement: it must not run later
                // for nobody. What it sends meanwhile is kept for after the wait.
                r = io.incoming.fill(io.client), if io.incoming.buffered() < MAX_INCOMING_WHILE_WAITING => {
                    if r.is_err() {
                        let _ = self.withdraw(id, &woken, "the client disconnected").await;
                        self.proxy.approval_waits.forget(id);
                        waits.observe_approval_wait(ApprovalOutcome::Abandoned, asked.elapsed());
                        return Err(Flow::ClientGone);
                    }
                }
            }
        };
        self.proxy.approval_waits.forget(id);
        let outcome = match verdict {
            Verdict::Allow => ApprovalOutcome::Approved,
            _ => ApprovalOutcome::Refused,
        };
        waits.observe_approval_wait(outcome, asked.elapsed());
        Ok(verdict)
    }

    /// Withdraws a pending request; one decided in the meantime keeps its decision. A request
    /// that cannot be withdrawn (the state database does not answer) is refused all the same —
    /// the statement does not run while its fate is unknown, and the request expires unanswered
    /// — rather than waiting for the database while the client, the lease or pgid has ended.
    async fn withdraw(&self, id: uuid::Uuid, woken: &tokio::sync::Notify, why: &str) -> Verdict {
        match self.proxy.approvals.withdraw(id).await {
            Ok(false) => self.decision(id, woken).await,
            Ok(true) | Err(_) => refused(format!("withdrawn: {why}")),
        }
    }

    /// Waits for the request's decision: woken by its NOTIFY, re-reading the row now and then.
    async fn decision(&self, id: uuid::Uuid, woken: &tokio::sync::Notify) -> Verdict {
        let store = &self.proxy.approvals;
        loop {
            tokio::select! {
                _ = woken.notified() => {}
                _ = tokio::time::sleep(APPROVAL_POLL) => {}
            }
            let row = match store.get(id).await {
                Ok(Some(r)) => r,
                Ok(None) => return refused("request vanished".into()),
                Err(e) => {
                    tracing::warn!(error = %crate::errors::Chain(&e), "cannot read an approval request; retrying");
                    continue;
                }
            };
            match row.state.as_str() {
                "approved" => return Verdict::Allow,
                "denied" => {
                    let who = row.reviewer.unwrap_or_default();
                    return refused(match row.comment.filter(|c| !c.is_empty()) {
                        Some(c) => format!("denied by {who}: {c}"),
                        None => format!("denied by {who}"),
                    });
                }
                "pending" if Utc::now() < row.expires_at => {}
                "withdrawn" => return refused("withdrawn".into()),
                _ => {
                    let _ = store.expire().await;
                    return refused("timed out".into());
                }
            }
        }
    }
}
