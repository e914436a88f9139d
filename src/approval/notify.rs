//! Announcing new approval requests to webhooks (generic JSON, or Slack-compatible `{"text"}`).
//! Delivery runs in its own task with retries and backoff until it succeeds or the request
//! expires; it never delays the statement or the decision. A rule may name the webhooks its
//! requests go to (`[[approval]] webhooks`); otherwise every webhook hears of them.
//!
//! Everything in a message that comes from a request (statement, subject, policy…) is
//! attacker-controlled text and is escaped for its target: JSON by serde; Slack's mrkdwn by
//! [`slack_text`], so no statement can close its code block, mention `<!channel>` or make a
//! link.

use std::time::Duration;

use serde_json::json;

use crate::config::Webhook;
use crate::store::ApprovalRow;

/// Backoff between delivery attempts: doubles from this, capped at the maximum.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of the statement a Slack message shows (Slack cuts messages at 40,000).
const SLACK_STATEMENT_CHARS: usize = 3000;

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

    /// Announces `row` in the background to the webhooks named in `only` (every webhook when
    /// `None`: a rule that names none).
    pub fn requested(&self, row: &ApprovalRow, only: Option<&[String]>) {
        let link = self.review_link(&row.id.to_string());
        for hook in chosen(&self.hooks, only) {
            let body = if hook.slack {
                json!({ "text": slack_text(row, link.as_deref()) })
            } else {
                json!({
                    "event": "approval.requested",
                    "approval": row,
                    "review_url": link,
                })
            };
            let (http, url, deadline) = (self.http.clone(), hook.url.clone(), row.expires_at);
            tokio::spawn(async move { deliver(http, url, body, deadline).await });
        }
    }
}

/// The webhooks a rule's requests go to.
fn chosen<'a>(
    hooks: &'a [Webhook],
    only: Option<&'a [String]>,
) -> impl Iterator<Item = &'a Webhook> {
    hooks.iter().filter(move |h| match only {
        None => true,
        Some(names) => h.name.as_ref().is_some_and(|n| names.contains(n)),
    })
}

/// The Slack message for a request: names in inline code, the statement in a code block, every
/// piece escaped for mrkdwn.
pub fn slack_text(row: &ApprovalRow, link: Option<&str>) -> String {
    let statement: String = row.statement.chars().take(SLACK_STATEMENT_CHARS).collect();
    let cut = row
        .statement
        .chars()
        .count()
        .saturating_sub(SLACK_STATEMENT_CHARS);
    let more = if cut > 0 {
        format!("\n… {cut} more characters: see the review page")
    } else {
        String::new()
    };
    format!(
        "pgid: {} (policy {}) wants to run on {}:\n{}{more}\nApprove or deny by {}{}",
        inline_code(&row.subject),
        inline_code(&row.policy),
        inline_code(&row.database),
        code_block(&statement),
        row.expires_at.format("%H:%M:%S UTC"),
        link.map(|l| format!(" at {}", mrkdwn(l)))
            .unwrap_or_default()
    )
}

/// Text that Slack shows as written: `&`, `<` and `>` are its control characters (mentions,
/// links, dates are `<…>`), escaped as Slack documents.
pub fn mrkdwn(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// A backtick would end the code span or block it is in; mrkdwn has no escape for it inside
/// code, so it becomes U+02CB (ˋ), which reads the same.
fn no_backticks(s: &str) -> String {
    s.replace('`', "\u{2cb}")
}

/// One line of inline code (a line break would end the span).
fn inline_code(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("`{}`", mrkdwn(&no_backticks(&one_line)))
}

fn code_block(s: &str) -> String {
    format!("```\n{}\n```", mrkdwn(&no_backticks(s)))
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
                tracing::warn!(error = %crate::errors::Chain(&e.without_url()), "approval webhook unreachable; retrying")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(subject: &str, statement: &str) -> ApprovalRow {
        let now = chrono::Utc::now();
        ApprovalRow {
            id: uuid::Uuid::nil(),
            state: "pending".into(),
            lease_id: uuid::Uuid::nil(),
            issuer: "https://idp".into(),
            subject: subject.into(),
            policy: "p".into(),
            database: "app".into(),
            statement: statement.into(),
            parameters: None,
            tables: vec![],
            estimated_rows: None,
            mode: "wait".into(),
            approvers: serde_json::Value::Null,
            approvers_key: String::new(),
            requested_at: now,
            expires_at: now,
            decided_at: None,
            reviewer_issuer: None,
            reviewer: None,
            comment: None,
            used_at: None,
        }
    }

    #[test]
    fn slack_messages_keep_markup_from_requests_inert() {
        let text = slack_text(
            &row(
                "agent:`x` <!here>\n*bold*",
                "DELETE FROM t WHERE n = '```\n<!channel> <https://evil.example/|Approve> & `x`'",
            ),
            Some("https://pgid.example/approvals/1?a=1&b=2"),
        );
        for live in ["<!channel>", "<!here>", "<https://", "|Approve>"] {
            assert!(!text.contains(live), "{live} in {text}");
        }
        assert!(text.contains("&lt;!channel&gt; &lt;https://evil.example/|Approve&gt; &amp;"));
        // The only backticks are pgid's own: three inline spans and one block.
        assert_eq!(text.matches('`').count(), 3 * 2 + 2 * 3, "{text}");
        assert!(text.contains("`agent:ˋxˋ &lt;!here&gt; *bold*`"), "{text}");
        assert!(text.contains("approvals/1?a=1&amp;b=2"), "{text}");
    }

    #[test]
    fn long_statements_are_cut_for_slack() {
        let text = slack_text(&row("a", &"x".repeat(SLACK_STATEMENT_CHARS + 5)), None);
        assert!(text.contains("… 5 more characters"), "{text}");
        assert!(text.len() < SLACK_STATEMENT_CHARS + 300);
    }

    #[test]
    fn rules_choose_their_webhooks() {
        let hook = |name: Option<&str>| Webhook {
            name: name.map(String::from),
            url: "https://h".into(),
            slack: false,
        };
        let hooks = [hook(Some("dba")), hook(Some("ops")), hook(None)];
        let names = |only: Option<&[String]>| {
            chosen(&hooks, only)
                .map(|h| h.name.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(None), ["dba", "ops", ""]);
        assert_eq!(names(Some(&["ops".to_string()])), ["ops"]);
        assert!(names(Some(&[])).is_empty());
    }
}
