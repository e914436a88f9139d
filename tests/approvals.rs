//! Approval requests in the state database: decided exactly once (even by two reviewers at the
//! same moment), expired when nobody decides in time, withdrawn by the requester.

mod common;

use chrono::{Duration, Utc};
use common::{Harness, GUARDED};
use pgid::store::{Approvals, Decided, NewApproval};
use serde_json::json;
use uuid::Uuid;

fn request(id: Uuid, expires_in: Duration) -> NewApproval<'static> {
    NewApproval {
        id,
        lease_id: Uuid::new_v4(),
        issuer: "https://issuer",
        subject: "agent:x",
        policy: "p",
        database: "app",
        statement: "DELETE FROM crm.orders WHERE id = 1",
        parameters: Some(json!(["1"])),
        tables: vec!["crm.orders".into()],
        estimated_rows: Some(1),
        mode: "wait",
        approvers: json!({"claims": {"groups": "dba"}}),
        expires_at: Utc::now() + expires_in,
        instance_id: 1,
        fingerprint: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_decided_once_expire_and_can_be_withdrawn() {
    let h = Harness::start(&[common::NIGHTLY]).await;
    let (pool, _) = pgid::database::pool(&h.admin_url, 4, None).unwrap();
    let store = Approvals::new(pool);

    let a = Uuid::new_v4();
    let made = store
        .create(&request(a, Duration::minutes(5)))
        .await
        .unwrap();
    assert_eq!(made.state, "pending");
    assert_eq!(made.tables, ["crm.orders"]);
    let pending = store.list(Some("pending")).await.unwrap();
    assert_eq!(pending.len(), 1);

    // Two reviewers at once: exactly one decides.
    let (x, y) = tokio::join!(
        store.decide(a, true, ("https://i", "alice"), Some("ok")),
        store.decide(a, false, ("https://i", "bob"), None)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let decided = [&x, &y]
        .iter()
        .filter(|d| matches!(d, Decided::Now(_)))
        .count();
    assert_eq!(decided, 1, "{x:?} {y:?}");
    let row = store.get(a).await.unwrap().unwrap();
    assert!(row.state == "approved" || row.state == "denied");
    assert!(row.reviewer.is_some() && row.decided_at.is_some());

    // Past its deadline, a request is expired and can no longer be decided.
    let b = Uuid::new_v4();
    store
        .create(&request(b, Duration::seconds(-1)))
        .await
        .unwrap();
    match store
        .decide(b, true, ("https://i", "alice"), None)
        .await
        .unwrap()
    {
        Decided::Already(r) => assert_eq!(r.state, "expired"),
        other => panic!("{other:?}"),
    }
    assert!(store
        .list(Some("expired"))
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == b));

    // The requester withdraws; deciding afterwards finds it withdrawn.
    let c = Uuid::new_v4();
    store
        .create(&request(c, Duration::minutes(5)))
        .await
        .unwrap();
    assert!(store.withdraw(c).await.unwrap());
    assert!(!store.withdraw(c).await.unwrap());
    match store
        .decide(c, true, ("https://i", "alice"), None)
        .await
        .unwrap()
    {
        Decided::Already(r) => assert_eq!(r.state, "withdrawn"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .decide(Uuid::new_v4(), true, ("https://i", "alice"), None)
            .await
            .unwrap(),
        Decided::Missing
    );
}

/// A token for `subject` with these `groups`.
fn token(h: &Harness, subject: &str, groups: &[&str]) -> String {
    let mut claims = h.issuer.claims(subject);
    claims.insert("groups".into(), json!(groups));
    h.issuer.mint(&claims)
}

/// `GET /v1/approvals?state=pending` as `reviewer`.
async fn pending(h: &Harness, reviewer: &str) -> Vec<serde_json::Value> {
    let (status, list) = h
        .call(
            reqwest::Method::GET,
            "/v1/approvals?state=pending",
            Some(reviewer),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{list}");
    list["approvals"].as_array().cloned().unwrap_or_default()
}

/// A pending request as the proxy makes it for agent:x's DELETE (from the harness's issuer).
async fn pending_request(h: &Harness) -> Uuid {
    let (pool, _) = pgid::database::pool(&h.admin_url, 2, None).unwrap();
    let id = Uuid::new_v4();
    let issuer = h.issuer.url().to_string();
    let mut new = request(id, Duration::minutes(5));
    new.issuer = &issuer;
    Approvals::new(pool).create(&new).await.unwrap();
    id
}

/// agent:x's `DELETE FROM crm.orders WHERE id = <order>`, held: the running statement, the
/// request id, and a reviewer's (alice's) token.
async fn held_delete(
    h: &Harness,
    order: i32,
) -> (
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    String,
    String,
) {
    let lease = h.lease("agent:x", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let alice = token(h, "alice", &["dba"]);
    let run = tokio::spawn(async move {
        c.simple_query(&format!("DELETE FROM crm.orders WHERE id = {order}"))
            .await
            .map(|_| ())
    });
    let id = first_pending(h, &alice).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    (run, id, alice)
}

/// The first pending request, once a statement is held (panics after 5 s).
async fn first_pending(h: &Harness, reviewer: &str) -> serde_json::Value {
    for _ in 0..50 {
        if let Some(r) = pending(h, reviewer).await.first() {
            return r.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no pending approval request");
}

#[tokio::test(flavor = "multi_thread")]
async fn reviewers_decide_through_the_api_and_nobody_else_can() {
    use reqwest::{Method, StatusCode};
    let h = Harness::start(&[GUARDED]).await;
    let id = pending_request(&h).await;

    let alice = token(&h, "alice", &["dba"]);
    let bob = token(&h, "bob", &["dev"]);
    let requester = token(&h, "agent:x", &["dba"]);

    let list = pending(&h, &alice).await;
    let found = &list[0];
    assert_eq!(found["id"], id.to_string());
    assert_eq!(found["statement"], "DELETE FROM crm.orders WHERE id = 1");
    assert_eq!(found["subject"], "agent:x");
    assert!(found.get("approvers").is_none());
    let (status, _) = h.call(Method::GET, "/v1/approvals", Some(&bob), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob approves nothing");

    let path = format!("/v1/approvals/{id}/approve");
    let (status, body) = h.call(Method::POST, &path, Some(&requester), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "self-approval: {body}");
    let (status, body) = h.call(Method::POST, &path, Some(&bob), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            &path,
            Some(&alice),
            Some(json!({"comment": "one row, fine"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["reviewer"], "alice");
    assert_eq!(body["comment"], "one row, fine");
    let (status, _) = decision(&h, &alice, &id.to_string(), "deny", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "decided once");
    let (status, _) = h
        .call(
            Method::POST,
            "/v1/approvals/not-an-id/approve",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every decision and every refused attempt is in the audit, with the reviewer.
    let records = h.audit_records();
    let decided: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "approval.decided")
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["reviewer"], "alice");
    assert_eq!(decided[0]["approval_id"], id.to_string());
    assert_eq!(decided[0]["comment"], "one row, fine");
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "approval.refused")
        .collect();
    assert_eq!(
        refused.len(),
        3,
        "self-approval, missing claims, already decided"
    );
    assert!(refused.iter().any(|r| r["reviewer"] == "agent:x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guarded_delete_waits_for_a_reviewer_and_the_session_carries_on() {
    use reqwest::StatusCode;
    use std::sync::Arc;
    let h = Harness::start(&[GUARDED]).await;
    let lease = h.lease("agent:x", json!({})).await;
    let c = Arc::new(h.connect_proxy(&lease).await.unwrap());
    let su = h.superuser().await;
    let alice = token(&h, "alice", &["dba"]);
    let exists = |id: i32| {
        let su = &su;
        async move {
            su.query_one("SELECT count(*) FROM crm.orders WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    };
    // The pending request, once the statement is held.

    // Approved: it runs and the agent gets its row count.
    let run = {
        let c = c.clone();
        tokio::spawn(async move { c.execute("DELETE FROM crm.orders WHERE id = 1", &[]).await })
    };
    let request = first_pending(&h, &alice).await;
    assert_eq!(request["statement"], "DELETE FROM crm.orders WHERE id = 1");
    assert_eq!(request["subject"], "agent:x");
    assert_eq!(request["tables"], json!(["crm.orders"]));
    assert!(exists(1).await, "the statement ran before it was approved");
    let id = request["id"].as_str().unwrap().to_string();
    let (status, _) = decision(&h, &alice, &id, "approve", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run.await.unwrap().unwrap(), 1);
    assert!(!exists(1).await);

    // Denied: an error with the reviewer and comment; nothing deleted.
    let run = {
        let c = c.clone();
        tokio::spawn(async move { c.simple_query("DELETE FROM crm.orders WHERE id = 2").await })
    };
    let id = first_pending(&h, &alice).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = decision(&h, &alice, &id, "deny", Some("not today")).await;
    assert_eq!(status, StatusCode::OK);
    let e = run.await.unwrap().unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501");
    assert_eq!(db.message(), "pgid: approval denied by alice: not today");
    assert!(exists(2).await);
    c.simple_query("SELECT 1").await.unwrap();

    // Nobody decides: it times out.
    let started = std::time::Instant::now();
    let e = c
        .simple_query("DELETE FROM crm.orders WHERE id = 3")
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "pgid: approval timed out"
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    assert!(exists(3).await);

    // The session was usable throughout; only the approved DELETE ran.
    let n: i64 = c
        .query_one("SELECT count(*) FROM crm.orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 39);
    let records = h.audit_records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "approval.requested")
            .count(),
        3
    );
    // The held statements' decisions are recorded once each, after the review.
    let decisions: Vec<_> = records
        .iter()
        .filter(|r| {
            r["kind"] == "statement" && r["statement"].as_str().unwrap_or("").starts_with("DELETE")
        })
        .collect();
    assert_eq!(decisions.len(), 3, "{decisions:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_waiting_on_one_instance_is_approved_through_another() {
    let h = Harness::start(&[GUARDED]).await;
    let second = h.start_second().await;
    let (run, id, alice) = held_delete(&h, 5).await;
    let response = h
        .http
        .post(format!(
            "https://127.0.0.1:{}/v1/approvals/{id}/approve",
            second.broker_addr.port()
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    run.await
        .unwrap()
        .expect("the approved statement runs on the first instance");
    let su = h.superuser().await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM crm.orders WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cancel_withdraws_the_request() {
    let h = Harness::start(&[GUARDED]).await;
    let lease = h.lease("agent:x", json!({})).await;
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());
    let alice = token(&h, "alice", &["dba"]);
    let cancel = c.cancel_token();
    let run = {
        let c = c.clone();
        tokio::spawn(async move { c.simple_query("DELETE FROM crm.orders WHERE id = 6").await })
    };
    let id = first_pending(&h, &alice).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "pgid: approval withdrawn: the client cancelled the statement"
    );
    let (pool, _) = pgid::database::pool(&h.admin_url, 1, None).unwrap();
    let row = Approvals::new(pool)
        .get(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, "withdrawn");
    // The session goes on, and the row is still there.
    let n: i64 = c
        .query_one("SELECT count(*) FROM crm.orders WHERE id = 6", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reviewers_decide_from_the_command_line() {
    let h = Harness::start(&[GUARDED]).await;
    let id = pending_request(&h).await;
    let alice = token(&h, "alice", &["dba"]);
    let pgid = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgid"))
            .arg("approvals")
            .args(args)
            .arg("--broker")
            .arg(&h.base)
            .arg("--cacert")
            .arg(h.ca_path())
            .env("PGID_TOKEN", &alice)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = pgid(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&id.to_string()) && out.contains("DELETE FROM crm.orders"),
        "{out}"
    );
    assert!(
        out.contains("parameters [\"1\"]") && out.contains("~1 rows"),
        "{out}"
    );
    let id = id.to_string();
    let (code, out, err) = pgid(&["approve", &id, "--comment", "fine"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"approved\""), "{out}");
    let (code, _, err) = pgid(&["deny", &id]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("409") && err.contains("already approved"),
        "{err}"
    );
}

/// A webhook receiver on `listener`, keeping every JSON body posted to it.
fn receiver(
    listener: tokio::net::TcpListener,
) -> std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_announce_requests_and_retry_while_the_receiver_is_down() {
    let slack = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slack_port = slack.local_addr().unwrap().port();
    let slack_got = receiver(slack);
    let down_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"30s\"");
    let h = Harness::start_with(
        &[&policy],
        &format!(
            "[approvals]\nreview_url = \"https://pgid.example/approvals\"\nwebhooks = [\n  {{ url = \"http://127.0.0.1:{down_port}/hook\" }},\n  {{ url = \"http://127.0.0.1:{slack_port}/slack\", format = \"slack\" }},\n]\n"
        ),
    )
    .await;
    let (run, id, alice) = held_delete(&h, 7).await;
    // The Slack-style receiver hears of it, with the review link.
    let mut text = String::new();
    for _ in 0..50 {
        if let Some(m) = slack_got.lock().unwrap().first() {
            text = m["text"].as_str().unwrap_or_default().to_string();
        }
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("DELETE FROM crm.orders WHERE id = 7"),
        "{text}"
    );
    assert!(
        text.contains(&format!("https://pgid.example/approvals/{id}")),
        "{text}"
    );
    // The other receiver is down: approving works regardless.
    let (status, _) = decision(&h, &alice, &id, "approve", None).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    run.await.unwrap().unwrap();
    // When it comes up, the retried delivery arrives.
    let json_got = receiver(
        tokio::net::TcpListener::bind(("127.0.0.1", down_port))
            .await
            .unwrap(),
    );
    let mut delivered = None;
    for _ in 0..100 {
        delivered = json_got.lock().unwrap().first().cloned();
        if delivered.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let delivered = delivered.expect("the webhook delivery was not retried");
    assert_eq!(delivered["event"], "approval.requested");
    assert_eq!(delivered["approval"]["id"], id.as_str());
    assert_eq!(delivered["approval"]["subject"], "agent:x");
}

#[tokio::test(flavor = "multi_thread")]
async fn min_rows_lets_a_small_delete_through_and_holds_a_bulk_one() {
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"30s\"\nmin_rows = 10");
    let h = Harness::start(&[&policy]).await;
    let su = h.superuser().await;
    su.batch_execute("ANALYZE crm.orders").await.unwrap();
    let lease = h.lease("agent:x", json!({})).await;
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());
    // One row by primary key: the planner expects 1 < 10, so no review.
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        c.execute("DELETE FROM crm.orders WHERE id = 8", &[]),
    )
    .await
    .expect("a small delete was held")
    .unwrap();
    assert_eq!(n, 1);
    // Most of the table: held, with the estimate shown to the reviewer.
    let e = bulk_delete_is_held_and_denied(&h, &c, Some("too many")).await;
    assert_eq!(e, "pgid: approval denied by alice: too many");
}

/// `DELETE … WHERE id > 20` (half the orders) through `c`: held with the planner's estimate
/// (at least 10 rows), denied by alice, nothing deleted. Returns the agent's error message.
async fn bulk_delete_is_held_and_denied(
    h: &Harness,
    c: &std::sync::Arc<tokio_postgres::Client>,
    comment: Option<&str>,
) -> String {
    let alice = token(h, "alice", &["dba"]);
    let run = {
        let c = c.clone();
        tokio::spawn(async move { c.simple_query("DELETE FROM crm.orders WHERE id > 20").await })
    };
    let request = first_pending(h, &alice).await;
    assert!(
        request["estimated_rows"].as_i64().unwrap() >= 10,
        "{request}"
    );
    decide(h, &alice, request["id"].as_str().unwrap(), "deny", comment).await;
    let e = run.await.unwrap().unwrap_err();
    let su = h.superuser().await;
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id > 20").await,
        20
    );
    e.as_db_error().unwrap().message().to_string()
}

/// The pending requests for this statement text.
async fn pending_for(h: &Harness, reviewer: &str, statement: &str) -> Vec<serde_json::Value> {
    pending(h, reviewer)
        .await
        .into_iter()
        .filter(|r| r["statement"] == statement)
        .collect()
}

/// `POST /v1/approvals/{id}/{verb}` as `reviewer`: the status and body.
async fn decision(
    h: &Harness,
    reviewer: &str,
    id: &str,
    verb: &str,
    comment: Option<&str>,
) -> (reqwest::StatusCode, serde_json::Value) {
    h.call(
        reqwest::Method::POST,
        &format!("/v1/approvals/{id}/{verb}"),
        Some(reviewer),
        comment.map(|c| json!({ "comment": c })),
    )
    .await
}

/// The same, which must succeed.
async fn decide(h: &Harness, reviewer: &str, id: &str, verb: &str, comment: Option<&str>) {
    let (status, body) = decision(h, reviewer, id, verb, comment).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
}

async fn count(su: &tokio_postgres::Client, sql: &str) -> i64 {
    su.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_statements_wait_at_execute_with_their_parameters() {
    use std::time::Duration;
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"30s\"\nmin_rows = 10");
    let h = Harness::start(&[&policy]).await;
    let su = h.superuser().await;
    su.batch_execute("ANALYZE crm.orders").await.unwrap();
    let alice = token(&h, "alice", &["dba"]);
    let lease = h.lease("agent:x", json!({})).await;
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());

    // Preparing runs nothing: no request.
    let bulk = "DELETE FROM crm.orders WHERE id > $1";
    let prepared = tokio::time::timeout(Duration::from_secs(10), c.prepare(bulk))
        .await
        .expect("Parse is not held")
        .unwrap();
    assert!(pending(&h, &alice).await.is_empty());
    // min_rows with the statement's own parameters: one row by key runs without review.
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        c.execute("DELETE FROM crm.orders WHERE id = $1", &[&4i32]),
    )
    .await
    .expect("a one-row delete was held")
    .unwrap();
    assert_eq!(n, 1);

    // The bulk delete waits at Execute; the reviewer sees its (binary) parameter and estimate.
    let run = {
        let (c, p) = (c.clone(), prepared.clone());
        tokio::spawn(async move { c.execute(&p, &[&20i32]).await })
    };
    let request = first_pending(&h, &alice).await;
    assert_eq!(request["statement"], bulk);
    assert_eq!(request["parameters"], json!(["20"]), "{request}");
    assert!(
        request["estimated_rows"].as_i64().unwrap() >= 10,
        "{request}"
    );
    decide(
        &h,
        &alice,
        request["id"].as_str().unwrap(),
        "deny",
        Some("no"),
    )
    .await;
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "pgid: approval denied by alice: no"
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id > 20").await,
        20
    );

    // Approved with other values: it runs with exactly those.
    let run = {
        let (c, p) = (c.clone(), prepared.clone());
        tokio::spawn(async move { c.execute(&p, &[&30i32]).await })
    };
    let request = first_pending(&h, &alice).await;
    assert_eq!(request["parameters"], json!(["30"]));
    decide(&h, &alice, request["id"].as_str().unwrap(), "approve", None).await;
    assert_eq!(run.await.unwrap().unwrap(), 10);
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id > 20").await,
        10
    );

    // A portal fetched in parts: approved once, its further fetches continue the same run.
    let mut own = h.connect_proxy(&lease).await.unwrap();
    let fetched = tokio::spawn({
        async move {
            let t = own.transaction().await.unwrap();
            let portal = t
                .bind(
                    "DELETE FROM crm.orders WHERE id > $1 RETURNING id",
                    &[&20i32],
                )
                .await
                .unwrap();
            let first = t.query_portal(&portal, 3).await.unwrap().len();
            let rest = t.query_portal(&portal, 100).await.unwrap().len();
            t.commit().await.unwrap();
            (first, rest)
        }
    });
    let request = first_pending(&h, &alice).await;
    decide(&h, &alice, request["id"].as_str().unwrap(), "approve", None).await;
    let (first, rest) = tokio::time::timeout(Duration::from_secs(10), fetched)
        .await
        .expect("a later fetch of the approved portal was held again")
        .unwrap();
    assert_eq!((first, rest), (3, 7));
    assert!(pending(&h, &alice).await.is_empty());
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id > 20").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_mode_refuses_at_once_and_lets_the_approved_statement_run_once() {
    use std::time::Duration;
    let policy = GUARDED.replace(
        "timeout = \"3s\"",
        "timeout = \"1m\"\nmode = \"retry\"\nwindow = \"4s\"",
    );
    let h = Harness::start(&[&policy]).await;
    let su = h.superuser().await;
    let alice = token(&h, "alice", &["dba"]);
    let lease = h.lease("agent:x", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let refused = |e: tokio_postgres::Error| {
        let db = e.as_db_error().expect("a server error").clone();
        assert_eq!(db.code().code(), "42501", "{db:?}");
        db.message().to_string()
    };
    let request_id = |message: &str| {
        message
            .split_whitespace()
            .skip_while(|w| *w != "request")
            .nth(1)
            .unwrap()
            .to_string()
    };

    // Refused at once, with the request id; asking again does not make a second request.
    let del = "DELETE FROM crm.orders WHERE id = 11";
    let m = refused(c.simple_query(del).await.unwrap_err());
    assert!(m.starts_with("pgid: approval required: request "), "{m}");
    assert!(m.contains("run the same statement again within 4s"), "{m}");
    let id = request_id(&m);
    let m = refused(c.simple_query(del).await.unwrap_err());
    assert!(m.contains("still waits for review"), "{m}");
    assert_eq!(request_id(&m), id);
    let listed = pending_for(&h, &alice, del).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["mode"], "retry");
    // The session is fine meanwhile.
    assert!(!c.simple_query("SELECT 1").await.unwrap().is_empty());

    // Approved: the same statement (laid out differently) runs, once.
    decide(&h, &alice, &id, "approve", Some("ok once")).await;
    let ran = c
        .simple_query("DELETE  FROM crm.orders\n  WHERE id = 11 -- retry\n;")
        .await
        .unwrap();
    assert!(ran
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(1))));
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id = 11").await,
        0
    );
    let m = refused(c.simple_query(del).await.unwrap_err());
    assert!(m.contains("was sent for review"), "used up: {m}");
    assert_ne!(request_id(&m), id);

    // Another statement, or another lease of the same agent, does not ride on an approval.
    let del12 = "DELETE FROM crm.orders WHERE id = 12";
    let id12 = request_id(&refused(c.simple_query(del12).await.unwrap_err()));
    decide(&h, &alice, &id12, "approve", None).await;
    let other = h.lease("agent:x", json!({})).await;
    let c2 = h.connect_proxy(&other).await.unwrap();
    let m = refused(c2.simple_query(del12).await.unwrap_err());
    assert_ne!(request_id(&m), id12, "{m}");
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id = 12").await,
        1
    );
    c.simple_query(del12).await.unwrap();
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id = 12").await,
        0
    );

    // Extended protocol: the approval is for these parameter values only.
    let by_id = "DELETE FROM crm.orders WHERE id = $1";
    let id13 = request_id(&refused(c.execute(by_id, &[&13i32]).await.unwrap_err()));
    decide(&h, &alice, &id13, "approve", None).await;
    let id14 = request_id(&refused(c.execute(by_id, &[&14i32]).await.unwrap_err()));
    assert_ne!(id14, id13);
    assert_eq!(c.execute(by_id, &[&13i32]).await.unwrap(), 1);

    // SQL EXECUTE: the approval is for what the prepared statement was when approved.
    c.batch_execute("PREPARE d(int) AS DELETE FROM crm.orders WHERE id = $1")
        .await
        .unwrap();
    let id17 = request_id(&refused(c.simple_query("EXECUTE d(17)").await.unwrap_err()));
    decide(&h, &alice, &id17, "approve", None).await;
    c.batch_execute("DEALLOCATE d; PREPARE d(int) AS DELETE FROM crm.orders WHERE id > $1")
        .await
        .unwrap();
    let m = refused(c.simple_query("EXECUTE d(17)").await.unwrap_err());
    assert_ne!(
        request_id(&m),
        id17,
        "a re-prepared statement is another statement: {m}"
    );
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id >= 17").await,
        24
    );

    // The window: an approval not used within it lapses.
    decide(&h, &alice, &id14, "approve", None).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = refused(c.execute(by_id, &[&14i32]).await.unwrap_err());
    assert!(m.contains("was sent for review"), "{m}");
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id = 14").await,
        1
    );

    // Each use is audited with its approval and reviewer.
    let used: Vec<_> = h
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "approval.used")
        .collect();
    let ids: Vec<&str> = used
        .iter()
        .map(|r| r["approval_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), id12.as_str(), id13.as_str()]);
    assert!(used.iter().all(|r| r["reviewer"] == "alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_revoked_during_the_wait_withdraws_the_request() {
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"1m\"");
    let h = Harness::start(&[&policy]).await;
    let alice = token(&h, "alice", &["dba"]);
    let lease = h.lease("agent:x", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let run =
        tokio::spawn(async move { c.simple_query("DELETE FROM crm.orders WHERE id = 5").await });
    let request = first_pending(&h, &alice).await;
    let started = std::time::Instant::now();
    let (status, body) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/credentials/{}", lease["lease_id"].as_str().unwrap()),
            Some(&h.token("agent:x")),
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("the wait ends with the lease")
        .unwrap()
        .unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The session ends with the lease (its backend is gone too): the client hears that, or the
    // withdrawal if it came first.
    let m = e.as_db_error().unwrap().message().to_string();
    assert!(
        m == "pgid: credential revoked"
            || m == "pgid: approval withdrawn: the credential was revoked",
        "{m}"
    );
    let (pool, _) = pgid::database::pool(&h.admin_url, 1, None).unwrap();
    let id: uuid::Uuid = request["id"].as_str().unwrap().parse().unwrap();
    let row = Approvals::new(pool).get(id).await.unwrap().unwrap();
    assert_eq!(row.state, "withdrawn");
    let su = h.superuser().await;
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id = 5").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_prepare_runs_nothing_and_each_execute_is_reviewed_as_what_it_runs() {
    use std::time::Duration;
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"30s\"");
    let h = Harness::start(&[&policy]).await;
    let su = h.superuser().await;
    let alice = token(&h, "alice", &["dba"]);
    let lease = h.lease("agent:x", json!({})).await;
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());
    let prepare = "PREPARE d(int) AS DELETE FROM crm.orders WHERE id = $1";
    tokio::time::timeout(Duration::from_secs(10), c.simple_query(prepare))
        .await
        .expect("PREPARE is not held")
        .unwrap();
    assert!(pending(&h, &alice).await.is_empty());

    for order in [15, 16] {
        let run = {
            let c = c.clone();
            tokio::spawn(async move { c.simple_query(&format!("EXECUTE d({order})")).await })
        };
        let request = first_pending(&h, &alice).await;
        assert_eq!(
            request["statement"],
            format!("EXECUTE d({order})\n-- d was prepared as: {prepare}"),
        );
        assert_eq!(request["tables"], json!(["crm.orders"]));
        decide(&h, &alice, request["id"].as_str().unwrap(), "approve", None).await;
        run.await.unwrap().unwrap();
        let left = format!("SELECT count(*) FROM crm.orders WHERE id = {order}");
        assert_eq!(count(&su, &left).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_without_a_comment_names_the_reviewer_only() {
    let h = Harness::start(&[&GUARDED.replace("timeout = \"3s\"", "timeout = \"30s\"")]).await;
    let (run, id, alice) = held_delete(&h, 18).await;
    decide(&h, &alice, &id, "deny", None).await;
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "pgid: approval denied by alice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn min_rows_works_for_a_lease_with_a_single_connection() {
    use std::time::Duration;
    // The lease's one connection slot is the session's: the planner is asked on it.
    let policy = GUARDED
        .replace("timeout = \"3s\"", "timeout = \"30s\"\nmin_rows = 10")
        .replace("ttl = \"15m\"", "ttl = \"15m\"\nmax_connections = 1");
    let h = Harness::start(&[&policy]).await;
    let su = h.superuser().await;
    su.batch_execute("ANALYZE crm.orders").await.unwrap();
    let lease = h.lease("agent:x", json!({})).await;
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());
    c.batch_execute("LISTEN pgid_test").await.unwrap();
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        c.execute("DELETE FROM crm.orders WHERE id = $1", &[&3i32]),
    )
    .await
    .expect("a one-row delete was held")
    .unwrap();
    assert_eq!(n, 1);
    // SQL EXECUTE of a statement prepared in this session: the planner sees it there.
    c.batch_execute("PREPARE d(int) AS DELETE FROM crm.orders WHERE id = $1")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.batch_execute("EXECUTE d(5)"))
        .await
        .expect("a one-row EXECUTE was held")
        .unwrap();
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id IN (3, 5)").await,
        0
    );
    // The bulk one waits, with its estimate.
    bulk_delete_is_held_and_denied(&h, &c, None).await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_client_sends_while_waiting_runs_after_and_leaving_withdraws() {
    use std::time::Duration;
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"1m\"");
    let h = Harness::start(&[&policy]).await;
    let su = h.superuser().await;
    let alice = token(&h, "alice", &["dba"]);
    let lease = h.lease("agent:x", json!({})).await;

    // A second query sent while the first waits is answered once the first is decided.
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());
    let first = {
        let c = c.clone();
        tokio::spawn(async move { c.simple_query("DELETE FROM crm.orders WHERE id = 19").await })
    };
    let request = first_pending(&h, &alice).await;
    let second = {
        let c = c.clone();
        tokio::spawn(async move { c.simple_query("SELECT 2").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    decide(&h, &alice, request["id"].as_str().unwrap(), "approve", None).await;
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let rows = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the query sent during the wait was answered")
        .unwrap()
        .unwrap();
    assert!(rows.iter().any(|m| matches!(m,
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2"))));

    // A client that leaves while its statement waits (its process killed: the socket closes)
    // withdraws it: nothing runs later for nobody.
    let mut gone = common::raw_login(
        h.proxy_port(),
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
    )
    .await;
    let mut query = bytes::BytesMut::new();
    pgid::proxy::wire::frontend::query(&mut query, b"DELETE FROM crm.orders WHERE id = 21");
    tokio::io::AsyncWriteExt::write_all(&mut gone, &query)
        .await
        .unwrap();
    let request = first_pending(&h, &alice).await;
    let id = request["id"].as_str().unwrap().to_string();
    drop(gone);
    let (pool, _) = pgid::database::pool(&h.admin_url, 1, None).unwrap();
    let store = Approvals::new(pool);
    let uuid: Uuid = id.parse().unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            store.get(uuid).await.unwrap().unwrap().state == "withdrawn"
        })
        .await
    );
    let (status, _) = decision(&h, &alice, &id, "approve", None).await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    assert_eq!(
        count(&su, "SELECT count(*) FROM crm.orders WHERE id = 21").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn min_rows_holds_statements_on_tables_the_planner_knows_nothing_about() {
    use std::time::Duration;
    // A table never analysed (autovacuum off for it, so nothing analyses it behind the test's
    // back): the planner guesses a handful of rows for `status = 'open'`, all 40 match.
    // And one analysed while empty (crm.queue), filled afterwards.
    let setup = "CREATE TABLE crm.jobs (id int PRIMARY KEY, status text NOT NULL) \
                 WITH (autovacuum_enabled = false); \
                 INSERT INTO crm.jobs SELECT i, 'open' FROM generate_series(1, 40) i; \
                 CREATE TABLE crm.queue (LIKE crm.jobs) WITH (autovacuum_enabled = false); \
                 ANALYZE crm.queue;";
    let policy = GUARDED
        .replace("timeout = \"3s\"", "timeout = \"30s\"\nmin_rows = 20")
        .replace(
            "on = [\"crm.orders\"]",
            "on = [\"crm.orders\", \"crm.jobs\", \"crm.queue\"]",
        )
        .replace(
            "tables = [\"crm.orders\"]",
            "tables = [\"crm.jobs\", \"crm.queue\"]",
        );
    let h = Harness::start_with_postgres(&[], setup, &[&policy], "").await;
    let su = h.superuser().await;
    let guess: f64 = {
        let plan: serde_json::Value = su
            .query_one(
                "EXPLAIN (FORMAT JSON) DELETE FROM crm.jobs WHERE status = 'open'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        plan[0]["Plan"]["Plans"][0]["Plan Rows"].as_f64().unwrap()
    };
    assert!(
        guess < 20.0,
        "the planner's guess is below min_rows: {guess}"
    );
    let alice = token(&h, "alice", &["dba"]);
    let lease = h.lease("agent:x", json!({})).await;
    let c = std::sync::Arc::new(h.connect_proxy(&lease).await.unwrap());

    // The estimate cannot be trusted: held for review, and nothing is deleted when denied.
    let run = {
        let c = c.clone();
        tokio::spawn(async move {
            c.simple_query("DELETE FROM crm.jobs WHERE status = 'open'")
                .await
        })
    };
    let request = first_pending(&h, &alice).await;
    assert_eq!(
        request["statement"],
        "DELETE FROM crm.jobs WHERE status = 'open'"
    );
    decide(&h, &alice, request["id"].as_str().unwrap(), "deny", None).await;
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "pgid: approval denied by alice"
    );
    assert_eq!(count(&su, "SELECT count(*) FROM crm.jobs").await, 40);

    // Once analysed, the estimate counts: a one-row delete runs without review, in both
    // protocols.
    su.batch_execute("ANALYZE crm.jobs").await.unwrap();
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        c.execute("DELETE FROM crm.jobs WHERE id = $1", &[&1i32]),
    )
    .await
    .expect("a one-row delete on an analysed table was held")
    .unwrap();
    assert_eq!(n, 1);
    tokio::time::timeout(
        Duration::from_secs(10),
        c.simple_query("DELETE FROM crm.jobs WHERE id = 2"),
    )
    .await
    .expect("a one-row delete on an analysed table was held")
    .unwrap();
    assert_eq!(count(&su, "SELECT count(*) FROM crm.jobs").await, 38);
    // And a bulk one is still held.
    let run = {
        let c = c.clone();
        tokio::spawn(async move {
            c.simple_query("DELETE FROM crm.jobs WHERE status = 'open'")
                .await
        })
    };
    let request = first_pending(&h, &alice).await;
    assert!(
        request["estimated_rows"].as_i64().unwrap() >= 20,
        "{request}"
    );
    decide(&h, &alice, request["id"].as_str().unwrap(), "deny", None).await;
    run.await.unwrap().unwrap_err();
    assert_eq!(count(&su, "SELECT count(*) FROM crm.jobs").await, 38);

    // Analysed empty, filled since: the statistics say nothing of its rows now (and the change
    // counts may not have reached them yet; its size on disk has).
    su.batch_execute("INSERT INTO crm.queue SELECT i, 'open' FROM generate_series(1, 40) i")
        .await
        .unwrap();
    let run = {
        let c = c.clone();
        tokio::spawn(async move {
            c.simple_query("DELETE FROM crm.queue WHERE status = 'open'")
                .await
        })
    };
    let request = first_pending(&h, &alice).await;
    assert_eq!(
        request["statement"],
        "DELETE FROM crm.queue WHERE status = 'open'"
    );
    assert!(
        request["estimated_rows"].as_i64().unwrap() < 20,
        "held although the planner guessed few rows: {request}"
    );
    decide(&h, &alice, request["id"].as_str().unwrap(), "deny", None).await;
    run.await.unwrap().unwrap_err();
    assert_eq!(count(&su, "SELECT count(*) FROM crm.queue").await, 40);
}
