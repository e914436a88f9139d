//! The relay: messages pass between client and upstream untouched, in whole frames, while pgid
//! tracks what it must know — transaction status and outstanding requests (to reuse an idle
//! upstream), reported parameters — and ends the session when the lease does.

use bytes::BytesMut;
use chrono::Utc;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::cancel::CancelTarget;
use std::collections::HashMap;
use std::sync::Arc;

use super::enforce::{Enforcer, EnforcerSetup, Hold, Reconfigure};
use super::handshake::Established;
use super::limits::{Action, ExportLimit, LIMIT_SQLSTATE};
use super::upstream::Upstream;
use super::wire::backend::{self, Severity};
use super::wire::framing::{frame_at, MAX_MESSAGE_BYTES};
use super::Proxy;
use crate::audit::statement::SessionRecords;
use crate::audit::{AuditLog, Event, Kind};
use crate::guard::Verdict;
use crate::policy::ApprovalMode;
use crate::roles::{EndReason, LeaseStatus};
use crate::sql::Dialect;

enum End {
    /// The client left (Terminate or closed socket).
    ClientGone,
    /// pgid ends the session and tells the client why.
    Fatal(&'static str, String),
    /// The upstream closed or broke.
    UpstreamGone,
}

/// Resolves when the lease ends: revoked, or expired (renewals move the deadline).
async fn lease_end(mut watch: tokio::sync::watch::Receiver<LeaseStatus>) -> EndReason {
    loop {
        let status = *watch.borrow_and_update();
        let deadline = match status {
            LeaseStatus::Ended(reason) => return reason,
            LeaseStatus::Active { expires_at } => {
                let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
                if left.is_zero() {
                    return EndReason::Expired;
                }
                Instant::now() + left
            }
        };
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    return EndReason::Revoked;
                }
            }
            _ = sleep_until(deadline) => {}
        }
    }
}

pub async fn run(p: &Proxy, est: Established, shutdown: CancellationToken) {
    let Established {
        mut client,
        mut frames,
        mut upstream,
        lease,
        cancel,
        watch,
        session_id,
        peer,
    } = est;
    frames.set_max(MAX_MESSAGE_BYTES);
    // Read before the set: a reload in between is noticed at the first statement.
    let mut policy_generation = p
        .policy_generation
        .load(std::sync::atomic::Ordering::Acquire);
    let policy_set = p.policies.read().unwrap().clone();
    let refuse = |code: &'static str, message: &'static str| {
        let mut out = BytesMut::new();
        backend::error_response(&mut out, Severity::Fatal, code, message);
        out
    };
    // A lease whose policy is gone (removed by a reload) gets no session: its rules are unknown.
    let Some(policy) = policy_set.get(&lease.policy).cloned() else {
        let _ = client
            .write_all(&refuse(
                "57P01",
                "pgid: the lease's policy no longer exists",
            ))
            .await;
        let _ = client.shutdown().await;
        super::pool::close(upstream);
        return;
    };
    let (rules, audit_rules) = (policy.guardrails.clone(), policy.audit);
    let approval_rules = policy.approvals.clone();
    // Masked columns as the database knows them; no session if they cannot be looked up.
    let masks = if p.settings.inspect {
        match session_masks(p, &policy, &lease).await {
            Ok(m) => m,
            Err(()) => {
                let _ = client.write_all(&refuse("58000", MASKS_UNRESOLVED)).await;
                let _ = client.shutdown().await;
                super::pool::close(upstream);
                return;
            }
        }
    } else {
        None
    };
    let mut limit = ExportLimit::new(rules.max_rows, rules.max_bytes);
    let mut enforcer = p.settings.inspect.then(|| {
        Enforcer::new(EnforcerSetup {
            rules,
            audit: audit_rules,
            analyzer: p.analyzer.clone(),
            records: SessionRecords::new(&lease, session_id, &peer.to_string()),
            masks,
            approvals: approval_rules,
        })
    });
    let audit = p.leases.audit().clone();
    let cancel_target = p
        .leases
        .databases()
        .get(&lease.database)
        .map(|db| CancelTarget {
            addr: db.upstream.clone(),
            pid: upstream.pid,
            secret: upstream.secret,
        });
    // Requests (Query, Sync, FunctionCall) that have not yet been answered by ReadyForQuery.
    let mut pending: i64 = 0;
    let mut status = b'I';
    // Created once: re-creating timers and waiters per message would cost on every round trip.
    let lease_watch = watch.clone();
    let lease_end = lease_end(watch);
    tokio::pin!(lease_end);
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    let drain = sleep_until(Instant::now() + std::time::Duration::from_secs(86_400 * 365));
    tokio::pin!(drain);
    let mut draining = false;
    let mut ended: Option<EndReason> = None;

    let end = loop {
        tokio::select! {
            biased;
            r = frames.fill(&mut client) => {
                if r.is_err() {
                    break End::ClientGone;
                }
                // A reloaded policy applies from the next statement on.
                if let Some(e) = enforcer.as_mut() {
                    let now = p.policy_generation.load(std::sync::atomic::Ordering::Acquire);
                    if now != policy_generation {
                        policy_generation = now;
                        let current = p.policies.read().unwrap().clone();
                        if let Err(m) = reconfigure(p, &lease, &current, e, &mut limit, dialect(&upstream.params)).await {
                            break End::Fatal("57P01", m.into());
                        }
                    }
                }
                let approver = Approver { proxy: p, lease: &lease, session_id, cancelled: &cancel.cancelled, lease_watch: &lease_watch };
                match client_to_server(&mut frames.buf, &mut upstream, &mut client, &mut pending, status, enforcer.as_mut(), &audit, &approver).await {
                    Ok(true) => {}
                    Ok(false) => break End::ClientGone,
                    Err(Flow::Upstream) => break End::UpstreamGone,
                    Err(Flow::Protocol(m)) => break End::Fatal("08P01", format!("pgid: invalid message from client: {m}")),
                }
            }
            r = upstream.frames.fill(&mut upstream.stream) => {
                if r.is_err() {
                    break End::UpstreamGone;
                }
                let Some(target) = cancel_target.as_ref() else { break End::UpstreamGone };
                let relay = Relay { pending: &mut pending, status: &mut status, enforcer: enforcer.as_mut(), limit: &mut limit, cancel: target, audit: &audit };
                match server_to_client(&mut upstream, &mut client, relay).await {
                    Ok(()) => {}
                    Err(Flow::Upstream) => break End::UpstreamGone,
                    Err(Flow::Protocol(_)) => break End::ClientGone,
                }
            }
            reason = &mut lease_end => {
                ended = Some(reason);
                break End::Fatal("57P01", reason.message().into());
            }
            _ = &mut shutting_down, if !draining => {
                draining = true;
                drain.as_mut().reset(Instant::now() + p.settings.drain_timeout);
            }
            _ = &mut drain, if draining => break End::Fatal("57P01", "pgid: server shutting down".into()),
        }
    };
    drop(cancel);
    let why = match &end {
        End::ClientGone => "client disconnected".to_string(),
        End::UpstreamGone => "database closed the connection".to_string(),
        End::Fatal(_, m) => m.clone(),
    };
    let mut event = Event::new(Kind::SessionEnd).lease(&lease).reason(why);
    event.session_id = Some(session_id);
    event.client_addr = Some(peer.to_string());
    if let Err(e) = p.leases.audit().record(&event).await {
        tracing::error!(error = %e, "cannot audit a session end");
    }
    match end {
        End::ClientGone if pending == 0 && status == b'I' && upstream.frames.buf.is_empty() => {
            p.pool.give_back(upstream).await;
        }
        End::ClientGone | End::UpstreamGone => {
            super::pool::close(upstream);
            let _ = client.shutdown().await;
        }
        End::Fatal(code, message) => {
            tracing::info!(lease = %lease.id, reason = %message, "closing session");
            let mut out = BytesMut::new();
            backend::error_response(&mut out, Severity::Fatal, code, &message);
            let _ = client.write_all(&out).await;
            let _ = client.flush().await;
            let _ = client.shutdown().await;
            super::pool::close(upstream);
            if ended.is_some() {
                p.pool.forget_lease(lease.id);
                p.salts.forget(lease.id);
            }
        }
    }
}

const MASKS_UNRESOLVED: &str =
    "pgid: masked columns cannot be resolved in the database; try again later";

/// The lease's masks as the database knows them (`None`: the policy masks nothing).
async fn session_masks(
    p: &Proxy,
    policy: &crate::policy::Policy,
    lease: &crate::store::LeaseRow,
) -> Result<Option<Arc<super::catalog::MaskSetup>>, ()> {
    let Some(db) = p.leases.databases().get(&lease.database) else {
        return Ok(None);
    };
    let key = p.leases.key().derive(b"pgid mask hash");
    p.mask_catalog
        .resolve(policy, &db.pool, &p.analyzer, key)
        .await
        .map_err(
            |e| tracing::error!(error = %e, "cannot resolve masked columns; closing the session"),
        )
}

/// Applies the reloaded policy set to a live session; `Err` ends the session with that message.
async fn reconfigure(
    p: &Proxy,
    lease: &crate::store::LeaseRow,
    set: &crate::policy::PolicySet,
    enforcer: &mut Enforcer,
    limit: &mut ExportLimit,
    dialect: Dialect,
) -> Result<(), &'static str> {
    let policy = set
        .get(&lease.policy)
        .ok_or("pgid: the lease's policy was removed")?;
    let masks = session_masks(p, policy, lease)
        .await
        .map_err(|()| MASKS_UNRESOLVED)?;
    limit.set_limits(policy.guardrails.max_rows, policy.guardrails.max_bytes);
    enforcer
        .reconfigure(
            Reconfigure {
                rules: policy.guardrails.clone(),
                audit: policy.audit,
                masks,
                approvals: policy.approvals.clone(),
            },
            dialect,
        )
        .await;
    tracing::info!(lease = %lease.id, policy = %policy.name, "session follows the reloaded policy");
    Ok(())
}

enum Flow {
    Upstream,
    Protocol(String),
}

/// Writes to the client and flushes.
async fn send(client: &mut super::stream::ClientStream, bytes: &[u8]) -> Result<(), Flow> {
    client
        .write_all(bytes)
        .await
        .map_err(|e| Flow::Protocol(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| Flow::Protocol(e.to_string()))
}

/// A held statement that will not run, and why (`pgid: approval <reason>`).
fn refused(reason: String) -> Verdict {
    Verdict::Deny {
        rule: "approval",
        reason,
    }
}

/// How often a held statement re-reads its request when no NOTIFY wakes it.
const APPROVAL_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Holds statements for a reviewer: makes the request, tells the client, waits for the decision.
struct Approver<'a> {
    proxy: &'a Proxy,
    lease: &'a crate::store::LeaseRow,
    session_id: uuid::Uuid,
    /// The session's CancelRequest signal: a cancel withdraws the request.
    cancelled: &'a tokio::sync::Notify,
    /// The lease's status: its end (expiry, revocation) withdraws the request too.
    lease_watch: &'a tokio::sync::watch::Receiver<LeaseStatus>,
}

impl Approver<'_> {
    /// What becomes of a held statement: `wait` holds it for a reviewer; `retry` runs it if an
    /// approval of this very statement is at hand, and otherwise refuses it and asks for one.
    /// `idle`: the session's upstream connection, when nothing is in flight on it.
    async fn resolve(
        &self,
        hold: &Hold,
        client: &mut super::stream::ClientStream,
        audit: &AuditLog,
        idle: Option<&mut Upstream>,
    ) -> Result<Verdict, Flow> {
        match hold.rule.mode {
            ApprovalMode::Wait => self.wait(hold, client, audit, idle).await,
            ApprovalMode::Retry => self.retry(hold, client, audit, idle).await,
        }
    }

    /// `min_rows` and the planner's estimate: `None` when the statement is small enough to run
    /// without review, else the estimate the reviewer sees (if there is one).
    async fn screen(
        &self,
        hold: &Hold,
        client: &mut super::stream::ClientStream,
        idle: Option<&mut Upstream>,
    ) -> Result<Option<Option<i64>>, Flow> {
        let sql = &hold.sql;
        let rows = match idle {
            Some(up) => super::estimate::on_session(up, client, sql, &hold.raw)
                .await
                .map_err(|e| match e {
                    super::estimate::Broken::Upstream => Flow::Upstream,
                    super::estimate::Broken::Client(m) => Flow::Protocol(m),
                })?,
            None => {
                super::estimate::on_new_connection(self.proxy, self.lease, sql, &hold.raw).await
            }
        };
        Ok(match (hold.rule.min_rows, rows) {
            (Some(min), Some(rows)) if rows < min as f64 => None,
            (_, rows) => Some(rows.map(|r| r.round() as i64)),
        })
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
            Err(e) => {
                tracing::error!(error = %e, "cannot make an approval request");
                return Err(refused(
                    "could not be requested: the state database is unavailable".into(),
                ));
            }
        };
        let mut event = Event::new(Kind::ApprovalRequested).lease(self.lease);
        event.session_id = Some(self.session_id);
        event.approval_id = Some(id);
        event.reason = Some(hold.statement.clone());
        if let Err(e) = audit.record(&event).await {
            tracing::error!(error = %e, "cannot audit an approval request");
            let _ = store.withdraw(id).await;
            return Err(refused(
                "could not be requested: the audit log is unavailable".into(),
            ));
        }
        self.proxy.approval_notifier.requested(&row);
        Ok(row)
    }

    /// Retry mode: an approval of this statement (same canonical text and parameters, same
    /// lease, within the window, not used yet) lets it run once; otherwise it is refused, and a
    /// request is made unless one is already waiting.
    async fn retry(
        &self,
        hold: &Hold,
        client: &mut super::stream::ClientStream,
        audit: &AuditLog,
        idle: Option<&mut Upstream>,
    ) -> Result<Verdict, Flow> {
        let store = &self.proxy.approvals;
        let unavailable = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "cannot read approval requests");
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
                event.reason = Some(hold.statement.clone());
                if let Err(e) = audit.record(&event).await {
                    tracing::error!(error = %e, "cannot audit the use of an approval");
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
        let Some(estimated_rows) = self.screen(hold, client, idle).await? else {
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

    async fn wait(
        &self,
        hold: &Hold,
        client: &mut super::stream::ClientStream,
        audit: &AuditLog,
        idle: Option<&mut Upstream>,
    ) -> Result<Verdict, Flow> {
        // A cancel that arrived before this statement (for an earlier one) does not count; one
        // that arrives from here on withdraws the request.
        {
            let stale = self.cancelled.notified();
            tokio::pin!(stale);
            let _ = futures::poll!(stale.as_mut());
        }
        // min_rows: a statement the planner expects to touch fewer rows runs without review.
        let Some(estimated_rows) = self.screen(hold, client, idle).await? else {
            return Ok(Verdict::Allow);
        };
        let row = match self.request(hold, estimated_rows, audit).await {
            Ok(row) => row,
            Err(v) => return Ok(v),
        };
        let id = row.id;
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
        send(client, &notice).await?;
        let woken = self.proxy.approval_waits.register(id);
        let verdict = tokio::select! {
            v = self.decision(id, &woken) => v,
            _ = self.cancelled.notified() => {
                self.withdraw(id, &woken, "the client cancelled the statement").await
            }
            reason = lease_end(self.lease_watch.clone()) => {
                // The session ends right after; the statement must not run on a dead lease.
                let why = match reason {
                    EndReason::Expired => "the credential expired",
                    EndReason::Revoked => "the credential was revoked",
                };
                match self.withdraw(id, &woken, why).await {
                    Verdict::Allow => refused(format!("withdrawn: {why}")),
                    v => v,
                }
            }
        };
        self.proxy.approval_waits.forget(id);
        Ok(verdict)
    }

    /// Withdraws a pending request; one decided in the meantime keeps its decision.
    async fn withdraw(&self, id: uuid::Uuid, woken: &tokio::sync::Notify, why: &str) -> Verdict {
        if matches!(self.proxy.approvals.withdraw(id).await, Ok(true)) {
            refused(format!("withdrawn: {why}"))
        } else {
            self.decision(id, woken).await
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
                    tracing::warn!(error = %e, "cannot read an approval request; retrying");
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

/// Whether the server reads string literals with backslash escapes.
fn dialect(params: &[(String, String)]) -> Dialect {
    let off = params
        .iter()
        .any(|(k, v)| k == "standard_conforming_strings" && v == "off");
    Dialect {
        backslash_escapes: off,
    }
}

/// Judges and forwards the client's complete messages, their decision records durable first.
/// `Ok(false)` on Terminate.
#[allow(clippy::too_many_arguments)]
async fn client_to_server(
    buf: &mut BytesMut,
    upstream: &mut Upstream,
    client: &mut super::stream::ClientStream,
    pending: &mut i64,
    status: u8,
    enforcer: Option<&mut Enforcer>,
    audit: &AuditLog,
    approver: &Approver<'_>,
) -> Result<bool, Flow> {
    // Nothing in flight and no transaction open: pgid may use the connection in between.
    let idle = *pending == 0 && status == b'I' && upstream.frames.buf.is_empty();
    let mut end = 0;
    let mut terminate = false;
    loop {
        match frame_at(buf, end, MAX_MESSAGE_BYTES) {
            Ok(Some((tag, total))) => {
                match tag {
                    b'X' => {
                        terminate = true;
                        break;
                    }
                    b'Q' | b'S' | b'F' => *pending += 1,
                    _ => {}
                }
                end += total;
            }
            Ok(None) => break,
            Err(e) => return Err(Flow::Protocol(e.to_string())),
        }
    }
    if end > 0 {
        let chunk = buf.split_to(end);
        let replaced = match enforcer {
            None => None,
            Some(enforcer) => {
                let d = dialect(&upstream.params);
                let mut decided = HashMap::new();
                let mut judged = enforcer
                    .client_frames(&chunk, d, false, &decided)
                    .await
                    .map_err(Flow::Protocol)?;
                if !judged.holds.is_empty() {
                    // Nothing of this batch goes on until its held statements are decided;
                    // then it is judged again with those decisions.
                    let _ = enforcer.rewind(&judged);
                    for hold in &judged.holds {
                        let own = idle.then_some(&mut *upstream);
                        let verdict = approver.resolve(hold, client, audit, own).await?;
                        decided.insert(hold.message, verdict);
                    }
                    judged = enforcer
                        .client_frames(&chunk, d, false, &decided)
                        .await
                        .map_err(Flow::Protocol)?;
                }
                let records = std::mem::take(&mut judged.records);
                if let Err(e) = audit.record_lines(records).await {
                    tracing::error!(error = %e, "cannot record statements; refusing them");
                    for record in enforcer.rewind(&judged) {
                        audit.submit(record);
                    }
                    judged = enforcer
                        .client_frames(&chunk, d, true, &decided)
                        .await
                        .map_err(Flow::Protocol)?;
                }
                enforcer.forwarding(&judged);
                judged.frames
            }
        };
        let bytes: &[u8] = replaced.as_deref().unwrap_or(&chunk);
        upstream
            .stream
            .write_all(bytes)
            .await
            .map_err(|_| Flow::Upstream)?;
        upstream.stream.flush().await.map_err(|_| Flow::Upstream)?;
    }
    if terminate {
        buf.clear();
        return Ok(false);
    }
    Ok(true)
}

/// Forwards the server's complete messages, noting ReadyForQuery and ParameterStatus, turning
/// stand-in errors into pgid's refusals, and enforcing the export limits.
struct Relay<'a> {
    pending: &'a mut i64,
    status: &'a mut u8,
    enforcer: Option<&'a mut Enforcer>,
    limit: &'a mut ExportLimit,
    cancel: &'a CancelTarget,
    audit: &'a AuditLog,
}

async fn server_to_client(
    upstream: &mut Upstream,
    client: &mut super::stream::ClientStream,
    relay: Relay<'_>,
) -> Result<(), Flow> {
    let Relay {
        pending,
        status,
        mut enforcer,
        limit,
        cancel,
        audit,
    } = relay;
    let mut end = 0;
    // Built only once a message is dropped or replaced; until then the bytes go out as they came.
    let mut out: Option<BytesMut> = None;
    loop {
        let (tag, total) = match frame_at(&upstream.frames.buf, end, MAX_MESSAGE_BYTES) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return Err(Flow::Upstream),
        };
        match tag {
            b'Z' if total == 6 => {
                *pending = (*pending - 1).max(0);
                *status = upstream.frames.buf[end + 5];
                if let Some(e) = enforcer.as_mut() {
                    e.ready_for_query();
                }
            }
            b'S' => {
                if let Ok((k, v)) =
                    backend::parse_parameter_status(&upstream.frames.buf[end + 5..end + total])
                {
                    upstream.set_param(k, v);
                }
            }
            _ => {}
        }
        let frame = &upstream.frames.buf[end..end + total];
        let (mut action, cancel_now) = limit.on_message(tag, total);
        if cancel_now {
            let t = cancel.clone();
            tokio::spawn(async move { super::cancel::send(&t).await });
        }
        if let Some(enforcer) = enforcer.as_mut() {
            let limited = matches!(action, Action::Replace(_)).then_some(LIMIT_SQLSTATE);
            if tag == b'E' && action == Action::Pass {
                if let Some(err) = enforcer.refusal_for(&frame[5..]) {
                    action = Action::Replace(err);
                }
            }
            if action == Action::Pass {
                action = enforcer.mask_message(tag, &frame[5..]);
            }
            for record in enforcer.server_message(tag, &frame[5..], limited) {
                audit.submit(record);
            }
        }
        match action {
            Action::Pass => {
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(frame);
                }
            }
            Action::Drop => {
                out.get_or_insert_with(|| BytesMut::from(&upstream.frames.buf[..end]));
            }
            Action::Replace(bytes) => {
                out.get_or_insert_with(|| BytesMut::from(&upstream.frames.buf[..end]))
                    .extend_from_slice(&bytes);
            }
        }
        end += total;
    }
    if end > 0 {
        let chunk = upstream.frames.buf.split_to(end);
        let bytes: &[u8] = out.as_deref().unwrap_or(&chunk);
        if !bytes.is_empty() {
            send(client, bytes).await?;
        }
    }
    Ok(())
}
