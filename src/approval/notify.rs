//! Announcing new approval requests to webhooks (generic JSON, or Slack-compatible `{"text"}`).
//! Delivery runs in its own task with retries and backoff until it succeeds or the request
//! expires; it never delays the statement or the decision.

use std::time::Duration;

use serde_json::json;

use crate::config::Webhook;
use crate::store::ApprovalRow;

/// Backoff between delivery attempts: doubles from this, capped at the maximum.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Notifier {
    hooks: Vec<Webhook>,
    review_url: Option<String>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(hooks: Vec<Webhook>, review_url: Option<String>) -> Notifier {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(DELIVERY_TIMEOUT)
            .build()
            .unwrap_or_default();
        Notifier {
            hooks,
            review_url,
            http,
        }
    }

    /// The link a reviewer follows for request `id`.
    pub fn review_link(&self, id: &str) -> Option<String> {
        self.review_url
            .as_ref()
            .map(|base| format!("{}/{id}", base.trim_end_matches('/')))
    }

    /// Announces `row` to every webhook, in the background.
    pub fn requested(&self, row: &ApprovalRow) {
        for hook in &self.hooks {
            let body = if hook.slack {
                json!({ "text": format!(
                    "pgid: {} ({} policy) wants to run on {}: `{}` — approve or deny by {}{}",
                    row.subject,
                    row.policy,
                    row.database,
                    row.statement,
                    row.expires_at.format("%H:%M:%S UTC"),
                    self.review_link(&row.id.to_string())
                        .map(|l| format!(" at {l}"))
                        .unwrap_or_default()
                )})
            } else {
                json!({
                    "event": "approval.requested",
                    "approval": row,
                    "review_url": self.review_link(&row.id.to_string()),
                })
            };
            let (http, url, deadline) = (self.http.clone(), hook.url.clone(), row.expires_at);
            tokio::spawn(async move { deliver(http, url, body, deadline).await });
        }
    }
}

async fn deliver(
    http: reqwest::Client,
    url: String,
    body: serde_json::Value,
    deadline: chrono::DateTime<chrono::Utc>,
) {
    let mut wait = FIRST_RETRY;
    loop {
        match http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(status = %r.status(), "approval webhook refused the delivery; retrying")
            }
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "approval webhook unreachable; retrying")
            }
        }
        if chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default() > deadline {
            tracing::warn!("approval webhook: giving up, the request expires");
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RETRY);
    }
}
