//! The approval page's HTML, rendered on the server (no front-end build step). Pure: rows and
//! the viewer in, text out. Every value from a request or a token goes through [`escape`].

use chrono::{DateTime, Utc};

pub use crate::html::escape;
use crate::store::ApprovalRow;

/// A banner above the list.
pub enum Flash {
    Done(String),
    Problem(String),
}

/// One request as the viewer sees it: may they decide it, and if not, why.
pub struct Card<'a> {
    pub row: &'a ApprovalRow,
    pub blocked: Option<&'static str>,
}

fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/approvals/page.css\"></head>\
         <body>{body}</body></html>\n",
        escape(title)
    )
}

/// A page with one message (errors, sign-out, not configured).
pub fn message(title: &str, text: &str) -> String {
    shell(
        title,
        &format!(
            "<header><h1>pgid approvals</h1></header><main><h2>{}</h2><p>{}</p>\
             <p><a href=\"/approvals\">Back to the approval page</a></p></main>",
            escape(title),
            escape(text)
        ),
    )
}

/// The whole page for a signed-in reviewer.
pub fn page(
    reviewer: &str,
    csrf: &str,
    flash: Option<&Flash>,
    pending: &str,
    recent: &str,
) -> String {
    let flash = match flash {
        None => String::new(),
        Some(Flash::Done(t)) => {
            format!("<p class=\"flash done\" role=\"status\">{}</p>", escape(t))
        }
        Some(Flash::Problem(t)) => format!(
            "<p class=\"flash problem\" role=\"alert\">{}</p>",
            escape(t)
        ),
    };
    shell(
        "pgid approvals",
        &format!(
            "<header><h1>pgid approvals</h1><form method=\"post\" action=\"/approvals/logout\">\
             <span class=\"who\">Signed in as <strong>{who}</strong></span>\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" class=\"link\">Sign out</button></form></header>\
             <main data-csrf=\"{csrf}\">{flash}<h2>Waiting for review \
             <span id=\"live\" class=\"live\" title=\"live updates\">live</span></h2>\
             <div id=\"pending\">{pending}</div><h2>Recently decided</h2>\
             <div id=\"recent\">{recent}</div></main>\
             <script src=\"/approvals/page.js\"></script>",
            who = escape(reviewer),
            csrf = escape(csrf),
        ),
    )
}

/// The pending requests (the part live updates replace). `csrf`: the session's token in each
/// form, or `None` in live updates shared between sessions (the page's script fills in its
/// own). `more`: more requests wait than are shown.
pub fn pending(cards: &[Card<'_>], csrf: Option<&str>, now: DateTime<Utc>, more: bool) -> String {
    if cards.is_empty() {
        return "<p class=\"empty\">Nothing is waiting for you.</p>".into();
    }
    let csrf = csrf.unwrap_or("");
    let mut out = String::new();
    if more {
        out.push_str(&format!(
            "<p class=\"more\" role=\"status\">More requests wait for you than the {} newest \
             shown here: <code>pgid approvals list</code> (or <code>GET /v1/approvals</code>) \
             lists every one.</p>",
            cards.len()
        ));
    }
    for c in cards {
        let r = c.row;
        let id = r.id.to_string();
        let params = match &r.parameters {
            Some(p) if !p.is_null() => format!(
                "<dt>Parameters</dt><dd><code>{}</code></dd>",
                escape(&p.to_string())
            ),
            _ => String::new(),
        };
        let estimate = r
            .estimated_rows
            .map(|n| format!("{n}"))
            .unwrap_or_else(|| "unknown".into());
        let actions = match c.blocked {
            Some(why) => format!("<p class=\"blocked\">You cannot decide this request: {}.</p>", escape(why)),
            None => format!(
                "<form method=\"post\" action=\"/approvals/decide\" class=\"decide\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                 <label>Comment <textarea name=\"comment\" rows=\"2\" maxlength=\"2000\"></textarea></label>\
                 <button type=\"submit\" name=\"action\" value=\"approve\" class=\"approve\">Approve</button>\
                 <button type=\"submit\" name=\"action\" value=\"deny\" class=\"deny\">Deny</button></form>",
                csrf = escape(csrf),
            ),
        };
        out.push_str(&format!(
            "<article class=\"request\" id=\"r-{id}\" data-id=\"{id}\"><pre class=\"sql\">{sql}</pre><dl>\
             <dt>Agent</dt><dd>{subject}</dd><dt>Policy</dt><dd>{policy}</dd>\
             <dt>Database</dt><dd>{database}</dd><dt>Tables</dt><dd>{tables}</dd>\
             <dt>Estimated rows</dt><dd>{estimate}</dd>{params}\
             <dt>Requested</dt><dd>{requested}</dd>\
             <dt>Time left</dt><dd class=\"left\" data-expires=\"{expires}\">{left}</dd>\
             <dt>Request</dt><dd><code>{id}</code></dd></dl>{actions}</article>",
            sql = escape(&r.statement),
            subject = escape(&r.subject),
            policy = escape(&r.policy),
            database = escape(&r.database),
            tables = escape(&r.tables.join(", ")),
            requested = r.requested_at.format("%Y-%m-%d %H:%M:%S UTC"),
            expires = r.expires_at.to_rfc3339(),
            left = time_left(r.expires_at, now),
        ));
    }
    out
}

/// Requests decided lately, newest first.
pub fn recent(rows: &[&ApprovalRow]) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">None yet.</p>".into();
    }
    let mut out = String::from(
        "<table><thead><tr><th>When</th><th>Outcome</th><th>Statement</th><th>Agent</th>\
         <th>Reviewer</th><th>Comment</th></tr></thead><tbody>",
    );
    for r in rows {
        out.push_str(&format!(
            "<tr data-id=\"{}\"><td>{}</td><td class=\"state {state}\">{state}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            r.id,
            r.decided_at
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_default(),
            escape(&shorten(&r.statement, 120)),
            escape(&r.subject),
            escape(r.reviewer.as_deref().unwrap_or("")),
            escape(r.comment.as_deref().unwrap_or("")),
            state = escape(&r.state),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

pub fn time_left(expires: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (expires - now).num_seconds();
    if s <= 0 {
        return "expired".into();
    }
    if s >= 3600 {
        format!("{}h {:02}m left", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m {:02}s left", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(statement: &str) -> ApprovalRow {
        let now = Utc::now();
        ApprovalRow {
            id: Uuid::nil(),
            state: "pending".into(),
            lease_id: Uuid::nil(),
            issuer: "https://idp".into(),
            subject: "agent:<x>".into(),
            policy: "p".into(),
            database: "app".into(),
            statement: statement.into(),
            parameters: Some(serde_json::json!(["<img src=x>"])),
            tables: vec!["crm.orders".into()],
            estimated_rows: Some(120),
            mode: "wait".into(),
            approvers: serde_json::Value::Null,
            approvers_key: String::new(),
            requested_at: now,
            expires_at: now + chrono::Duration::seconds(90),
            decided_at: None,
            reviewer_issuer: None,
            reviewer: None,
            comment: None,
            used_at: None,
        }
    }

    #[test]
    fn everything_from_requests_is_escaped() {
        let r = row("DELETE FROM crm.orders WHERE note = '</pre><script>alert(1)</script>'");
        let html = pending(
            &[Card {
                row: &r,
                blocked: None,
            }],
            Some("tok\"en"),
            Utc::now(),
            false,
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;/pre&gt;&lt;script&gt;"));
        assert!(html.contains("agent:&lt;x&gt;"));
        assert!(html.contains("value=\"tok&quot;en\""));
        assert!(html.contains("120"));
        assert!(
            html.contains("1m 30s left") || html.contains("1m 29s left"),
            "{html}"
        );
        let blocked = pending(
            &[Card {
                row: &r,
                blocked: Some("it is your own request"),
            }],
            Some("t"),
            Utc::now(),
            true,
        );
        assert!(!blocked.contains("<form"));
        assert!(blocked.contains("lists every one"));
        assert!(blocked.contains("it is your own request"));
    }

    #[test]
    fn page_and_recent() {
        let mut r = row("DELETE FROM t");
        r.state = "denied".into();
        r.reviewer = Some("<b>bob</b>".into());
        r.comment = Some("too wide".into());
        let html = recent(&[&r]);
        assert!(
            html.contains("&lt;b&gt;bob") && html.contains("too wide") && html.contains("denied")
        );
        let p = page("<me>", "c", Some(&Flash::Done("Approved".into())), "", "");
        assert!(p.contains("&lt;me&gt;") && p.contains("Approved") && p.contains("page.js"));
        assert_eq!(recent(&[]), "<p class=\"empty\">None yet.</p>");
    }

    #[test]
    fn time_left_reads_well() {
        let now = Utc::now();
        assert_eq!(time_left(now, now), "expired");
        assert_eq!(
            time_left(now + chrono::Duration::seconds(65), now),
            "1m 05s left"
        );
        assert_eq!(
            time_left(now + chrono::Duration::seconds(7300), now),
            "2h 01m left"
        );
        assert_eq!(shorten("abcdef", 3), "abc…");
    }
}
