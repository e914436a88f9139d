//! What an audit record says (DESIGN §8). One struct for every kind; absent fields are omitted.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
pub enum Kind {
    #[serde(rename = "credential.issued")]
    CredentialIssued,
    #[serde(rename = "credential.denied")]
    CredentialDenied,
    #[serde(rename = "credential.renewed")]
    CredentialRenewed,
    #[serde(rename = "credential.revoked")]
    CredentialRevoked,
    #[serde(rename = "credential.expired")]
    CredentialExpired,
    #[serde(rename = "session.start")]
    SessionStart,
    #[serde(rename = "session.refused")]
    SessionRefused,
    #[serde(rename = "session.end")]
    SessionEnd,
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    #[serde(rename = "approval.decided")]
    ApprovalDecided,
    #[serde(rename = "approval.refused")]
    ApprovalRefused,
    /// Retry mode: an approved statement ran (its approval is used up).
    #[serde(rename = "approval.used")]
    ApprovalUsed,
    /// The policy files were read again (SIGHUP); `reason` says what changed.
    #[serde(rename = "policy.reloaded")]
    PolicyReloaded,
    /// A reviewer signed in to the approval page.
    #[serde(rename = "reviewer.signin")]
    ReviewerSignin,
    /// A reviewer signed out: their session ended on every instance.
    #[serde(rename = "reviewer.signout")]
    ReviewerSignout,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub time: DateTime<Utc>,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Uuid>,
    /// Approvals: who decided (or tried to), `issuer` + subject, and what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewer_issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// A summary record: how many events it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Event {
    pub fn new(kind: Kind) -> Event {
        Event {
            time: Utc::now(),
            kind,
            lease_id: None,
            subject: None,
            issuer: None,
            policy: None,
            role: None,
            database: None,
            client_addr: None,
            session_id: None,
            via: None,
            reason: None,
            expires_at: None,
            approval_id: None,
            reviewer_issuer: None,
            reviewer: None,
            decision: None,
            comment: None,
            count: None,
        }
    }

    /// Fills the lease's fields from its row.
    pub fn lease(mut self, row: &crate::store::LeaseRow) -> Event {
        self.lease_id = Some(row.id);
        self.subject = Some(row.subject.clone());
        self.issuer = Some(row.issuer.clone());
        self.policy = Some(row.policy.clone());
        self.role = Some(row.role_name.clone());
        self.database = Some(row.database.clone());
        self.expires_at = Some(row.expires_at);
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Event {
        self.reason = Some(reason.into());
        self
    }
}
