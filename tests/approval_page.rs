//! The approval page as a reviewer uses it: real headless Chromium (Debian's, driven by
//! playwright-core), signing in through a real OIDC provider (oidc-provider, authorization code
//! flow) to pgid's broker, while an agent's DELETE waits in the real proxy.

mod common;

use std::time::Duration;

use common::{Harness, NodeScript};
use serde_json::{json, Value};

const REVIEW_CLIENT: &str = "pgid-approvals";
const REVIEW_SECRET: &str = "a-long-review-client-secret-for-tests";

/// agent:x's DELETE on crm.orders waits for a reviewer in group dba (of this issuer, if given).
fn guarded(approvers_issuer: Option<&str>) -> String {
    let policy = common::GUARDED.replace("timeout = \"3s\"", "timeout = \"90s\"");
    match approvers_issuer {
        Some(i) => policy.replace(
            "approvers = { claims",
            &format!("approvers = {{ issuer = \"{i}\", claims"),
        ),
        None => policy,
    }
}

/// The provider, pgid (whose page signs reviewers in through it) and the provider's reviewers.
async fn setup() -> (Harness, NodeScript, String) {
    let idp_port = common::free_port();
    let idp = format!("http://127.0.0.1:{idp_port}");
    let h = Harness::start_with(
        &[&guarded(Some(&idp))],
        &format!(
            "[approvals.login]\nissuer = \"{idp}\"\nclient_id = \"{REVIEW_CLIENT}\"\n\
             client_secret = \"{REVIEW_SECRET}\"\nscopes = [\"openid\", \"profile\", \"groups\"]\n"
        ),
    )
    .await;
    // The provider only redirects to registered URLs: the broker's, now that its port is known.
    let mut provider = NodeScript::spawn(
        "tests/idp",
        "provider.mjs",
        &[
            ("PORT", idp_port.to_string()),
            ("REVIEW_CLIENT_ID", REVIEW_CLIENT.into()),
            ("REVIEW_CLIENT_SECRET", REVIEW_SECRET.into()),
            (
                "REVIEW_REDIRECT_URIS",
                format!("{}/approvals/callback", h.base),
            ),
            (
                "REVIEWERS",
                json!({
                    "alice": {"name": "Alice Reviewer", "groups": ["dba"]},
                    "mallory": {"name": "Mallory", "groups": ["dev"]},
                })
                .to_string(),
            ),
        ],
    );
    provider.line("ready", Duration::from_secs(30)).await;
    (h, provider, idp)
}

fn reviewer(h: &Harness, login: &str, mode: &str, extra: &[(&str, String)]) -> NodeScript {
    let mut env = vec![
        ("PAGE", format!("{}/approvals", h.base)),
        ("LOGIN", login.to_string()),
        ("MODE", mode.to_string()),
    ];
    env.extend(extra.iter().cloned());
    NodeScript::spawn("tests/browser", "review.mjs", &env)
}

async fn order_exists(h: &Harness, id: i32) -> bool {
    h.superuser()
        .await
        .query_opt("SELECT 1 FROM crm.orders WHERE id = $1", &[&id])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewer_signs_in_sees_the_waiting_delete_live_and_approves_it() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: apt-get install -y chromium (scripts/test does this)"
    );
    let (h, _provider, idp) = setup().await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("approval-page.png");
    let _ = std::fs::remove_file(&shot);

    // Alice opens the page first: the request must reach it live, without a reload.
    let mut alice = reviewer(
        &h,
        "alice",
        "approve",
        &[
            ("EXPECT", "DELETE FROM crm.orders WHERE id = 7".into()),
            ("COMMENT", "one order, checked with the customer".into()),
            ("SCREENSHOT", shot.display().to_string()),
        ],
    );
    alice.line("signed-in", Duration::from_secs(60)).await;

    let lease = h.lease("agent:x", json!({})).await;
    let agent = h.connect_proxy(&lease).await.unwrap();
    assert!(order_exists(&h, 7).await);
    let run = tokio::spawn(async move {
        let r = agent
            .simple_query("DELETE FROM crm.orders WHERE id = 7")
            .await;
        (agent, r)
    });

    let decided = alice.line("decided", Duration::from_secs(60)).await;
    assert!(
        alice.success(Duration::from_secs(30)).await,
        "browser script failed"
    );
    let (agent, result) = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the approved statement completes")
        .unwrap();
    let rows = result.expect("approved DELETE runs");
    let count = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(count, Some(1), "the agent gets its row count");
    assert!(!order_exists(&h, 7).await);
    // The agent's session carries on.
    let one = agent.simple_query("SELECT 1").await.unwrap();
    assert!(!one.is_empty());

    // Screenshots of the page with the request, and after the decision.
    for p in [
        shot.clone(),
        shot.with_file_name("approval-page-pending.png"),
    ] {
        let png = std::fs::read(&p).expect("screenshot saved");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            p.display()
        );
        println!("screenshot: {}", p.display());
    }

    // Audited: alice's sign-in and her decision, through the page, with her comment.
    let id = decided.trim_start_matches("decided ").to_string();
    let records = h.audit_records();
    assert!(records.iter().any(|r| r["kind"] == "reviewer.signin"
        && r["reviewer"] == "alice"
        && r["reviewer_issuer"] == idp.as_str()));
    let decision: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "approval.decided" && r["approval_id"] == id.as_str())
        .collect();
    assert_eq!(decision.len(), 1, "{records:?}");
    assert_eq!(decision[0]["reviewer"], "alice");
    assert_eq!(decision[0]["decision"], "approve");
    assert_eq!(decision[0]["via"], "page");
    assert_eq!(
        decision[0]["comment"],
        "one order, checked with the customer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn someone_without_the_approvers_claims_sees_nothing_and_cannot_decide() {
    let (h, _provider, _) = setup().await;
    let lease = h.lease("agent:x", json!({})).await;
    let agent = h.connect_proxy(&lease).await.unwrap();
    let run = tokio::spawn(async move {
        agent
            .simple_query("DELETE FROM crm.orders WHERE id = 8")
            .await
            .map(|_| ())
    });
    // The request, read from the state database.
    let db = h.superuser().await;
    let mut id = None;
    for _ in 0..100 {
        id = db
            .query_opt(
                "SELECT id::text FROM pgid.approvals WHERE state = 'pending'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0));
        if id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.expect("the DELETE is held");

    let mut mallory = reviewer(&h, "mallory", "look", &[("REQUEST", id.clone())]);
    let seen: Value =
        serde_json::from_str(&mallory.line("{", Duration::from_secs(60)).await).unwrap();
    assert!(mallory.success(Duration::from_secs(30)).await);
    let text = seen["text"].as_str().unwrap();
    assert!(
        text.contains("no approval rule names you as an approver"),
        "{text}"
    );
    assert!(
        !text.contains("crm.orders"),
        "the request is not shown: {text}"
    );
    assert_eq!(seen["forged"], 403, "not an approver");
    assert_eq!(seen["badCsrf"], 403, "a form from elsewhere");

    // Refused and audited; the statement still waits and the row is intact.
    let records = h.audit_records();
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "approval.refused" && r["approval_id"] == id.as_str())
        .collect();
    assert_eq!(refused.len(), 1, "{records:?}");
    assert_eq!(refused[0]["reviewer"], "mallory");
    assert_eq!(refused[0]["via"], "page");
    assert!(!run.is_finished());
    assert!(order_exists(&h, 8).await);
    run.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_requires_sign_in_and_says_when_it_is_not_configured() {
    // Not configured: a clear 503 page, not a broken redirect.
    let h = Harness::start(&[common::NIGHTLY]).await;
    let r = h
        .http
        .get(format!("{}/approvals", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("[approvals.login]"));

    let (h, _provider, idp) = setup().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    // Without a session: to sign-in, which goes to the provider with PKCE, state and nonce.
    let r = http
        .get(format!("{}/approvals", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/approvals/login");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let r = http
        .get(format!("{}/approvals/login", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(to.as_str().starts_with(&idp), "{to}");
    let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], REVIEW_CLIENT);
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q.contains_key("state") && q.contains_key("nonce"));
    assert_eq!(q["redirect_uri"], format!("{}/approvals/callback", h.base));
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-pgid-login="), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("Secure"));

    // A callback without the sign-in cookie, or with another state, signs nobody in.
    let r = http
        .get(format!("{}/approvals/callback?code=x&state=y", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let login_cookie = cookie.split(';').next().unwrap().to_string();
    let r = http
        .get(format!("{}/approvals/callback?code=x&state=forged", h.base))
        .header("cookie", &login_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("set-cookie").is_some());
    // A forged session cookie is no session; the live feed and decisions need one.
    let forged = "__Host-pgid-review=eyJleHAiOjk5OTk5OTk5OTl9.AAAA";
    for (method, path) in [("GET", "/approvals"), ("GET", "/approvals/events")] {
        let r = http
            .request(method.parse().unwrap(), format!("{}{path}", h.base))
            .header("cookie", forged)
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 303 || r.status() == 401,
            "{path}: {}",
            r.status()
        );
    }
    let r = http
        .post(format!("{}/approvals/decide", h.base))
        .header("cookie", forged)
        .form(&[("csrf", "x"), ("id", "y"), ("action", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Cookies a browser would keep: name → value, from Set-Cookie headers.
#[derive(Default)]
struct Jar(std::collections::HashMap<String, String>);

impl Jar {
    fn take(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let first = v.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = first.split_once('=').unwrap();
            if v.is_empty() {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_string(), v.to_string());
            }
        }
    }

    /// GET with these cookies: the body.
    async fn page(&self, http: &reqwest::Client, url: &str) -> String {
        http.get(url)
            .header("cookie", self.header())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_development_issuer_signs_reviewers_in_as_pgid_dev_does() {
    let h = Harness::start_with(
        &[&guarded(None)],
        "[approvals.login]\nissuer = \"{issuer}\"\nclient_id = \"pgid-approvals\"\n\
         client_secret = \"dev-review-secret\"\n",
    )
    .await;
    h.issuer.register_reviewer_client(pgid::dev::ReviewClient {
        id: "pgid-approvals".into(),
        secret: "dev-review-secret".into(),
        redirect_uris: vec![format!("{}/approvals/callback", h.base)],
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut jar = Jar::default();
    let location = |r: &reqwest::Response| r.headers()["location"].to_str().unwrap().to_string();

    // Sign in from a link to a request: pgid → the issuer's form → pgid's callback → that
    // request's page.
    let unknown = uuid::Uuid::new_v4();
    let r = http
        .get(format!("{}/approvals/{unknown}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), format!("/approvals/login?next={unknown}"));
    let r = http
        .get(format!("{}{}", h.base, location(&r)))
        .send()
        .await
        .unwrap();
    jar.take(&r);
    let authorize = url::Url::parse(&location(&r)).unwrap();
    let form = http.get(authorize.clone()).send().await.unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("Development only"));
    let mut fields: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    fields.push(("subject".into(), "dora@example.com".into()));
    fields.push(("name".into(), "Dora".into()));
    fields.push(("groups".into(), "ops, dba".into()));
    let r = http
        .post(format!("{}/authorize", h.issuer.url()))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let callback = location(&r);
    assert!(callback.starts_with(&format!("{}/approvals/callback?code=", h.base)));
    let r = http
        .get(&callback)
        .header("cookie", jar.header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    assert_eq!(location(&r), format!("/approvals/{unknown}"));
    jar.take(&r);
    assert!(jar.0.contains_key("__Host-pgid-review"));
    let text = jar
        .page(&http, &format!("{}/approvals/{unknown}", h.base))
        .await;
    assert!(
        text.contains("does not exist or is not yours to review"),
        "{text}"
    );
    // A code is good once.
    let again = http.get(&callback).send().await.unwrap();
    assert_ne!(again.status(), 303);

    // The live feed announces the request as soon as the agent's statement is held.
    let mut events = http
        .get(format!("{}/approvals/events", h.base))
        .header("cookie", jar.header())
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let lease = h.lease("agent:x", json!({})).await;
    let (agent, mut notices) = common::connect_with_notices(lease["dsn"].as_str().unwrap())
        .await
        .unwrap();
    let run = tokio::spawn(async move {
        agent
            .execute("DELETE FROM crm.orders WHERE id = $1", &[&9i32])
            .await
    });
    // The agent is told where its request is reviewed: this broker's page (no review_url set).
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        notice.contains(&format!("review: {}/approvals/", h.base)),
        "{notice}"
    );
    let mut feed = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = events.chunk().await.unwrap() {
            feed.push_str(&String::from_utf8_lossy(&chunk));
            if feed.contains("DELETE FROM crm.orders WHERE id = $1") {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no live update: {feed}");
    assert!(feed.contains("event: update"));
    assert!(
        feed.contains("[\\\"9\\\"]") || feed.contains("&quot;9&quot;"),
        "{feed}"
    );

    // The page shows it to Dora; her form approves it.
    let page = jar.page(&http, &format!("{}/approvals", h.base)).await;
    assert!(
        page.contains("Signed in as <strong>Dora</strong>"),
        "{page}"
    );
    let csrf = page
        .split("data-csrf=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let id = page
        .split("<article class=\"request\" id=\"r-")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{}/approvals/decide", h.base))
        .header("cookie", jar.header())
        .form(&[
            ("csrf", csrf.as_str()),
            ("id", id.as_str()),
            ("action", "approve"),
            ("comment", "fine"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/approvals?decided=approved");
    let n = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    let decided: Vec<Value> = h
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "approval.decided")
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["reviewer"], "dora@example.com");
    assert_eq!(decided[0]["reviewer_issuer"], h.issuer.url());
    // The request's own link now says what became of it.
    let text = jar.page(&http, &format!("{}/approvals/{id}", h.base)).await;
    assert!(
        text.contains("was already approved by dora@example.com"),
        "{text}"
    );

    // Signing out ends the session: the cookie goes, and a copy kept of it opens nothing.
    let kept = jar.header();
    let r = http
        .post(format!("{}/approvals/logout", h.base))
        .header("cookie", jar.header())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    jar.take(&r);
    assert!(!jar.0.contains_key("__Host-pgid-review"));
    let r = http
        .get(format!("{}/approvals", h.base))
        .header("cookie", kept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}

/// pgid whose page signs reviewers in at the development issuer (as `pgid dev` configures it);
/// `approvals`: extra keys of `[approvals]`.
async fn dev_setup(approvals: &str) -> Harness {
    let h = Harness::start_with(
        &[&guarded(None)],
        &format!(
            "[approvals]\n{approvals}\n[approvals.login]\nissuer = \"{{issuer}}\"\n\
             client_id = \"pgid-approvals\"\nclient_secret = \"dev-review-secret\"\n"
        ),
    )
    .await;
    h.issuer.register_reviewer_client(pgid::dev::ReviewClient {
        id: "pgid-approvals".into(),
        secret: "dev-review-secret".into(),
        redirect_uris: vec![format!("{}/approvals/callback", h.base)],
    });
    h
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_string()
}

/// Signs `subject` (in `groups`, comma-separated) in through the development issuer's form.
async fn dev_sign_in(h: &Harness, http: &reqwest::Client, subject: &str, groups: &str) -> Jar {
    let mut jar = Jar::default();
    let r = http
        .get(format!("{}/approvals/login", h.base))
        .send()
        .await
        .unwrap();
    jar.take(&r);
    let authorize = url::Url::parse(&location(&r)).unwrap();
    let mut fields: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    fields.push(("subject".into(), subject.into()));
    fields.push(("name".into(), subject.into()));
    fields.push(("groups".into(), groups.into()));
    let r = http
        .post(format!("{}/authorize", h.issuer.url()))
        .form(&fields)
        .send()
        .await
        .unwrap();
    let r = http
        .get(location(&r))
        .header("cookie", jar.header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    jar.take(&r);
    assert!(jar.0.contains_key("__Host-pgid-review"));
    jar
}

fn csrf_of(page: &str) -> String {
    page.split("data-csrf=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string()
}

/// Reads an event stream until it ends; what it said. Panics after `timeout`.
async fn until_end(mut events: reqwest::Response, timeout: Duration) -> String {
    let mut feed = String::new();
    tokio::time::timeout(timeout, async {
        while let Ok(Some(chunk)) = events.chunk().await {
            feed.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream did not end: {feed}"));
    feed
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_out_ends_the_session_on_every_instance_and_closes_its_feeds() {
    let h = dev_setup("").await;
    let second = h.start_second().await;
    let other = format!("https://127.0.0.1:{}", second.broker_addr.port());
    let http = browser();
    let jar = dev_sign_in(&h, &http, "dora@example.com", "dba").await;
    let page = jar.page(&http, &format!("{}/approvals", h.base)).await;
    assert!(page.contains("Signed in as"), "{page}");
    let csrf = csrf_of(&page);
    // The other instance serves the same sign-in; both have a live feed open.
    let page = jar.page(&http, &format!("{other}/approvals")).await;
    assert!(page.contains("Signed in as"), "{page}");
    let mut feeds = Vec::new();
    for base in [&h.base, &other] {
        let r = http
            .get(format!("{base}/approvals/events"))
            .header("cookie", jar.header())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        feeds.push(r);
    }

    let r = http
        .post(format!("{}/approvals/logout", h.base))
        .header("cookie", jar.header())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));

    // Both feeds are told and end: here at once, there at its next read (the sign-out's NOTIFY).
    for feed in feeds {
        let said = until_end(feed, Duration::from_secs(10)).await;
        assert!(said.contains("event: signedout"), "{said}");
    }
    // The old cookie, kept: the page sends it to sign in, the feed and decisions are refused.
    for base in [&h.base, &other] {
        let r = http
            .get(format!("{base}/approvals"))
            .header("cookie", jar.header())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{base}");
        assert_eq!(location(&r), "/approvals/login");
        let r = http
            .get(format!("{base}/approvals/events"))
            .header("cookie", jar.header())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{base}");
        let r = http
            .post(format!("{base}/approvals/decide"))
            .header("cookie", jar.header())
            .form(&[
                ("csrf", csrf.as_str()),
                ("id", &uuid::Uuid::new_v4().to_string()),
                ("action", "approve"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{base}");
    }
    let out: Vec<Value> = h
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "reviewer.signout")
        .collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["reviewer"], "dora@example.com");
    second.shutdown().await;
}

/// Open descriptors of this process (the test and pgid in it).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn open_files_limit() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    (l.rlim_cur, l.rlim_max)
}

/// Medians of `n` lease issues and of `n` proxy connections (log-ins with a lease), in ms.
async fn latencies(h: &Harness, n: usize) -> (f64, f64) {
    let lease = h.lease("agent:x", json!({})).await;
    let (mut issue, mut connect) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = std::time::Instant::now();
        h.lease("agent:x", json!({})).await;
        issue.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = std::time::Instant::now();
        let c = h.connect_proxy(&lease).await.expect("the proxy accepts");
        connect.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(c);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    (median(&mut issue), median(&mut connect))
}

/// A counter or gauge from `/metrics`.
async fn metric(h: &Harness, line: &str) -> u64 {
    let text = h.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_floods_hold_nothing_and_leave_the_proxy_and_lease_issue_at_normal_latency() {
    // The common soft limit on descriptors; pgid raises it to the hard limit as it starts.
    let (_, hard) = open_files_limit();
    let soft = libc::rlimit {
        rlim_cur: 1024.min(hard),
        rlim_max: hard,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) }, 0);
    let h = dev_setup("max_streams_per_session = 8").await;
    assert_eq!(open_files_limit(), (hard, hard), "raised at start");
    let http = browser();
    let eve = dev_sign_in(&h, &http, "eve@example.com", "dev").await;
    let dora = dev_sign_in(&h, &http, "dora@example.com", "dba").await;
    let baseline = latencies(&h, 10).await;
    let descriptors = open_descriptors();

    // Eve approves nothing: 1,000 stream attempts at once, each refused and its connection
    // closed, while an agent gets leases and connects.
    let attack = {
        let (http, cookie, url) = (
            browser(),
            eve.header(),
            format!("{}/approvals/events", h.base),
        );
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let tries = (0..1000).map(|_| http.get(&url).header("cookie", &cookie).send());
            let outcomes = futures::future::join_all(tries).await;
            (outcomes, started.elapsed())
        })
    };
    let during = latencies(&h, 10).await;
    let (outcomes, attack_took) = attack.await.unwrap();
    let refused = outcomes
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 403))
        .count();
    assert_eq!(refused, 1000);
    drop(outcomes);

    // Dora approves: her sign-in gets 8 streams, no more.
    let tries = (0..20).map(|_| {
        http.get(format!("{}/approvals/events", h.base))
            .header("cookie", dora.header())
            .send()
    });
    let (open, limited): (Vec<_>, Vec<_>) = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .partition(|r| r.status() == 200);
    assert_eq!(open.len(), 8);
    assert!(limited.iter().all(|r| r.status() == 429));
    drop(limited);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = open_descriptors().saturating_sub(descriptors);
    assert!(
        held < 60,
        "{held} more descriptors open than before the attack"
    );

    // A flood of approval notifications while her 8 streams are open: one read per change
    // (at most one per 250 ms), not one per stream.
    let refreshes = metric(&h, "pgid_approval_feed_refreshes_total").await;
    let su = h.superuser().await;
    let started = std::time::Instant::now();
    let flood = tokio::spawn(async move {
        for _ in 0..300 {
            su.execute("SELECT pg_notify('pgid_approval_events', 'x')", &[])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let flooded = latencies(&h, 10).await;
    flood.await.unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = metric(&h, "pgid_approval_feed_refreshes_total").await - refreshes;
    println!(
        "lease issue / proxy connect, median ms: before {baseline:.1?}, during 1,000 refused \
         stream attempts (over {attack_took:.1?}) {during:.1?}, with 8 streams open and 300 \
         notifications in {took:.1?} {flooded:.1?}; {reads} feed reads; {held} descriptors \
         held"
    );
    assert!(
        reads as f64 <= took.as_secs_f64() / 0.25 + 4.0,
        "{reads} reads in {took:?}"
    );
    let normal = |(issue, connect): (f64, f64)| {
        issue <= baseline.0 * 3.0 + 50.0 && connect <= baseline.1 * 3.0 + 50.0
    };
    assert!(normal(flooded), "{flooded:?} against {baseline:?}");
    assert!(normal(during), "{during:?} against {baseline:?}");
    assert_eq!(metric(&h, "pgid_approval_streams").await, 8);
    assert_eq!(
        metric(
            &h,
            "pgid_approval_streams_refused_total{reason=\"not_a_reviewer\"}"
        )
        .await,
        1000
    );
    assert_eq!(
        metric(
            &h,
            "pgid_approval_streams_refused_total{reason=\"session_limit\"}"
        )
        .await,
        12
    );
    drop(open);
}
