//! The page's live updates (`/approvals/events`): one reader of the approvals for every open
//! stream on this instance. Each change (a NOTIFY on the approvals channel from any instance,
//! at most one read per [`MIN_GAP`], and every [`REFRESH`] while streams are open) becomes one
//! [`Snapshot`]; each stream shows its reviewer's part of it, rendered once per distinct view
//! and shared by the streams with that view. The same read tells which sessions have ended
//! (signed out on another instance): their streams close.
//!
//! Streams are for reviewers only (403 otherwise) and limited per sign-in and per instance
//! ([`super::streams`]); refusals close the connection, so a refused client holds nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::streams::{Admitted, Streams};
use super::{html, not_configured, now, session};
use crate::broker::BrokerState;
use crate::identity::VerifiedToken;
use crate::policy::IdentityMatch;
use crate::store::{ApprovalRow, Approvals, ReviewSessions, Scope};

/// Open pages are refreshed at least this often (expiry, missed notifications).
const REFRESH: Duration = Duration::from_secs(15);
/// Changes closer together than this are read once: a flood of notifications costs at most one
/// read of the approvals per gap, whatever the number of streams.
const MIN_GAP: Duration = Duration::from_millis(250);
/// Decided requests shown under "Recently decided".
pub(super) const RECENT: usize = 20;
/// Pending requests shown on the page; the API lists every one.
pub(super) const SHOWN_PENDING: usize = 200;
/// A refused stream is told to come back no sooner than this (seconds).
const RETRY_AFTER: &str = "30";

/// What a reviewer sees of the requests: the pending part and the recent part of the page.
#[derive(PartialEq, Eq)]
pub struct Fragments {
    pub pending: String,
    pub recent: String,
}

/// Renders a reviewer's part of the page from rows already filtered to what they may see.
/// `csrf`: the session's token for the forms, or `None` for shared live updates (the page's
/// script fills in its own).
pub(super) fn fragments(
    pending: &[&ApprovalRow],
    recent: &[&ApprovalRow],
    blocked: impl Fn(&ApprovalRow) -> Option<&'static str>,
    csrf: Option<&str>,
    now: DateTime<Utc>,
) -> Fragments {
    let cards: Vec<html::Card<'_>> = pending
        .iter()
        .filter(|r| r.expires_at > now)
        .take(SHOWN_PENDING)
        .map(|r| html::Card {
            row: r,
            blocked: blocked(r),
        })
        .collect();
    let waiting = pending.iter().filter(|r| r.expires_at > now).count();
    let recent: Vec<&ApprovalRow> = recent.iter().copied().take(RECENT).collect();
    Fragments {
        pending: html::pending(&cards, csrf, now, waiting > cards.len()),
        recent: html::recent(&recent),
    }
}

/// Why `who` cannot decide `r`, if they cannot.
pub(super) fn blocked(r: &ApprovalRow, who: &VerifiedToken) -> Option<&'static str> {
    let approvers = serde_json::from_value::<IdentityMatch>(r.approvers.clone()).ok()?;
    crate::approval::may_decide(
        &approvers,
        (&r.issuer, &r.subject),
        &who.issuer,
        &who.subject,
        &who.claims,
    )
    .err()
}

/// What one read of the approvals found, and the views rendered from it so far.
pub struct Snapshot {
    at: DateTime<Utc>,
    pending: Vec<ApprovalRow>,
    recent: Vec<ApprovalRow>,
    /// Every rule's approvers key, with its approvers (`None`: unreadable, matches nobody).
    rules: Vec<(String, Option<IdentityMatch>)>,
    views: Mutex<HashMap<View, Arc<Fragments>>>,
}

/// What tells two reviewers' views apart: the rules they see (all, for admins) and the
/// requests they see but may not decide.
#[derive(Clone, PartialEq, Eq, Hash)]
struct View {
    all: bool,
    rules: Vec<String>,
    blocked: Vec<(Uuid, &'static str)>,
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            at: Utc::now(),
            pending: Vec::new(),
            recent: Vec::new(),
            rules: Vec::new(),
            views: Mutex::default(),
        }
    }

    /// `who`'s part of the page (`admin`: sees every request), rendered once per view.
    pub fn fragments(&self, who: &VerifiedToken, admin: bool) -> Arc<Fragments> {
        let rules: Vec<String> = self
            .rules
            .iter()
            .filter(|(_, m)| {
                m.as_ref()
                    .is_some_and(|m| m.matches(&who.issuer, &who.subject, &who.claims))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let visible = |r: &&ApprovalRow| admin || rules.contains(&r.approvers_key);
        let pending: Vec<&ApprovalRow> = self.pending.iter().filter(visible).collect();
        let view = View {
            all: admin,
            blocked: pending
                .iter()
                .filter_map(|r| blocked(r, who).map(|why| (r.id, why)))
                .collect(),
            rules: rules.clone(),
        };
        if let Some(f) = self.views.lock().unwrap().get(&view) {
            return f.clone();
        }
        let recent: Vec<&ApprovalRow> = self.recent.iter().filter(visible).collect();
        let why: HashMap<Uuid, &'static str> = view.blocked.iter().copied().collect();
        let f = Arc::new(fragments(
            &pending,
            &recent,
            |r| why.get(&r.id).copied(),
            None,
            self.at,
        ));
        self.views.lock().unwrap().insert(view, f.clone());
        f
    }
}

/// The live feed of one instance.
pub struct Feed {
    approvals: Arc<Approvals>,
    sessions: Arc<ReviewSessions>,
    metrics: Arc<crate::metrics::Metrics>,
    pub streams: Arc<Streams>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Nothing has been read since the last change (no stream was open to need it).
    stale: AtomicBool,
    /// A stream opened on a stale snapshot: read now.
    kick: Notify,
}

/// What the feed is built from.
pub struct FeedSetup {
    pub approvals: Arc<Approvals>,
    pub sessions: Arc<ReviewSessions>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub max_streams: usize,
    pub max_streams_per_session: usize,
}

impl Feed {
    pub fn new(f: FeedSetup) -> Feed {
        Feed {
            streams: Arc::new(Streams::new(
                f.max_streams,
                f.max_streams_per_session,
                f.metrics.clone(),
            )),
            approvals: f.approvals,
            sessions: f.sessions,
            metrics: f.metrics,
            snapshot: watch::Sender::new(Arc::new(Snapshot::empty())),
            stale: AtomicBool::new(true),
            kick: Notify::new(),
        }
    }

    /// Reads the approvals once per change (`changes` ticks for every NOTIFY on the approvals
    /// channel) while streams are open, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut changes: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut last = tokio::time::Instant::now() - MIN_GAP;
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(REFRESH) => {}
                _ = self.kick.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.streams.total() == 0 {
                self.stale.store(true, Ordering::Release);
                // A stream admitted meanwhile may have seen the flag still clear: read for it.
                if self.streams.total() == 0 {
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(last + MIN_GAP) => {}
                _ = shutdown.cancelled() => return,
            }
            changes.borrow_and_update();
            last = tokio::time::Instant::now();
            self.refresh().await;
        }
    }

    async fn refresh(&self) {
        let read = async {
            let pending = self.approvals.pending_now().await?;
            let recent = self
                .approvals
                .recently_decided(Scope::All, RECENT as i64)
                .await?;
            let rules = self.approvals.rules().await?;
            let ended = self.sessions.ended_among(&self.streams.sessions()).await?;
            Ok::<_, crate::store::StoreError>((pending, recent, rules, ended))
        };
        match read.await {
            Ok((pending, recent, rules, ended)) => {
                for id in ended {
                    self.streams.end(id);
                }
                let rules = rules
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::from_value(v).ok()))
                    .collect();
                self.metrics.approval_feed_refreshes.inc();
                self.stale.store(false, Ordering::Release);
                self.snapshot.send_replace(Arc::new(Snapshot {
                    at: Utc::now(),
                    pending,
                    recent,
                    rules,
                    views: Mutex::default(),
                }));
            }
            Err(e) => {
                tracing::warn!(error = %crate::errors::Chain(&e), "approval page feed: cannot read the approvals")
            }
        }
    }
}

/// A refusal that also closes the connection: a refused client keeps no descriptor of pgid's.
fn refuse(status: StatusCode, text: &'static str) -> Response {
    let mut r = (status, text).into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::TOO_MANY_REQUESTS {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    }
    r
}

/// `GET /approvals/events`: one `update` event (pending and recent HTML) whenever what this
/// reviewer sees changes, and `signedout` when the session ends.
pub async fn events(State(s): State<BrokerState>, headers: HeaderMap) -> Response {
    if s.review.login.is_none() {
        return not_configured();
    }
    let sess = match session(&s, &headers).await {
        Ok(Some(sess)) => sess,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "signed out"),
        Err(r) => return r,
    };
    let who = sess.token();
    let metrics = s.leases.metrics();
    if !crate::broker::approvals::is_reviewer(&s, &who) {
        metrics.approval_stream_refused("not_a_reviewer");
        return refuse(
            StatusCode::FORBIDDEN,
            "no approval rule names you as an approver",
        );
    }
    let feed = s.review.feed.clone();
    let admitted = match feed.streams.admit(sess.sid) {
        Ok(a) => a,
        Err(why) => {
            metrics.approval_stream_refused(why.reason());
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many live-update streams are open",
            );
        }
    };
    let admin = s
        .admins
        .iter()
        .any(|m| m.matches(&who.issuer, &who.subject, &who.claims));
    let mut rx = feed.snapshot.subscribe();
    if feed.stale.load(Ordering::Acquire) {
        feed.kick.notify_one();
    } else {
        rx.mark_changed();
    }
    let following = Following {
        who,
        admin,
        exp: sess.exp,
        rx,
        admitted,
        shutdown: s.shutdown.clone(),
        last: None,
        done: false,
    };
    let mut r = Sse::new(updates(following))
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One open stream.
struct Following {
    who: VerifiedToken,
    admin: bool,
    exp: i64,
    rx: watch::Receiver<Arc<Snapshot>>,
    /// Its place under the limits, and the signal that its session ended.
    admitted: Admitted,
    shutdown: CancellationToken,
    last: Option<Arc<Fragments>>,
    done: bool,
}

fn updates(f: Following) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let signed_out = || Ok(SseEvent::default().event("signedout").data(""));
    futures::stream::unfold(f, move |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            let left = Duration::from_secs((f.exp - now()).max(0) as u64);
            tokio::select! {
                r = f.rx.changed() => if r.is_err() { return None },
                _ = f.admitted.ended.cancelled() => {
                    f.done = true;
                    return Some((signed_out(), f));
                }
                _ = tokio::time::sleep(left) => {
                    f.done = true;
                    return Some((signed_out(), f));
                }
                _ = f.shutdown.cancelled() => return None,
            }
            let snapshot = f.rx.borrow_and_update().clone();
            let view = snapshot.fragments(&f.who, f.admin);
            if f.last.as_ref().is_some_and(|l| **l == *view) {
                continue;
            }
            let data =
                serde_json::json!({ "pending": view.pending, "recent": view.recent }).to_string();
            f.last = Some(view);
            return Some((Ok(SseEvent::default().event("update").data(data)), f));
        }
    })
}
