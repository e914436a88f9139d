//! Approval requests in the state database: decided exactly once (even by sixteen reviewers at
//! the same moment, with one record), expired when nobody decides in time, withdrawn by the
//! requester, bounded per lease and policy, listed to those who may decide them.

mod common;

use chrono::{Duration, Utc};
use common::{Harness, GUARDED};
use pgid::store::{Approvals, Decided, NewApproval, Scope};
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
    let audit = h.pgid.as_ref().unwrap().app.leases.audit();
    let event = pgid::audit::Event::new(pgid::audit::Kind::ApprovalDecided);

    let a = Uuid::new_v4();
    let made = store
        .create(&request(a, Duration::minutes(5)))
        .await
        .unwrap();
    assert_eq!(made.state, "pending");
    assert_eq!(made.tables, ["crm.orders"]);
    let pending = store
        .list(Scope::All, Some("pending"), None, 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);

    // Two reviewers at once: exactly one decides.
    let (x, y) = tokio::join!(
        store.decide(a, true, ("https://i", "alice"), Some("ok"), audit, &event),
        store.decide(a, false, ("https://i", "bob"), None, audit, &event)
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
        .decide(b, true, ("https://i", "alice"), None, audit, &event)
        .await
        .unwrap()
    {
        Decided::Already(r) => assert_eq!(r.state, "expired"),
        other => panic!("{other:?}"),
    }
    store.expire().await.unwrap();
    assert!(store
        .list(Scope::All, Some("expired"), None, 100)
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
        .decide(c, true, ("https://i", "alice"), None, audit, &event)
        .await
        .unwrap()
    {
        Decided::Already(r) => assert_eq!(r.state, "withdrawn"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .decide(
                Uuid::new_v4(),
                true,
                ("https://i", "alice"),
                None,
                audit,
                &event
            )
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

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_reviewers_deciding_at_once_make_one_decision_and_one_record() {
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"60s\"");
    let h = Harness::start(&[&policy]).await;
    let (run, id, _) = held_delete(&h, 5).await;
    let reviewers: Vec<String> = (0..16)
        .map(|i| token(&h, &format!("reviewer{i}"), &["dba"]))
        .collect();
    let attempts = reviewers.iter().enumerate().map(|(i, t)| {
        let verb = if i % 2 == 0 { "approve" } else { "deny" };
        decision(&h, t, &id, verb, None)
    });
    let outcomes = futures::future::join_all(attempts).await;
    let ok: Vec<_> = outcomes
        .iter()
        .filter(|(s, _)| *s == reqwest::StatusCode::OK)
        .collect();
    assert_eq!(ok.len(), 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|(s, _)| *s == reqwest::StatusCode::OK || *s == reqwest::StatusCode::CONFLICT));
    let state = ok[0].1["state"].as_str().unwrap().to_string();
    let _ = run.await;

    let records = h.audit_records();
    let decided: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "approval.decided" && r["approval_id"] == id.as_str())
        .collect();
    assert_eq!(decided.len(), 1, "{decided:?}");
    let verb = if state == "approved" {
        "approve"
    } else {
        "deny"
    };
    assert_eq!(decided[0]["decision"], verb);
    assert_eq!(decided[0]["reviewer"], ok[0].1["reviewer"]);
    let refused = records
        .iter()
        .filter(|r| r["kind"] == "approval.refused" && r["approval_id"] == id.as_str())
        .count();
    assert_eq!(refused, 15, "the others are told, and recorded as refused");
}

/// A retry-mode policy for `agent` whose requests reviewers in `group` decide, announced to
/// the webhook named `group`.
fn team(name: &str, agent: &str, group: &str) -> String {
    format!(
        r#"
name = "{name}"
database = "app"
ttl = "15m"
max_connections = 4
[identity]
subject = "{agent}"
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.orders"]
[[approval]]
statements = ["DELETE"]
tables = ["crm.orders"]
approvers = {{ claims = {{ groups = "{group}" }} }}
mode = "retry"
timeout = "5m"
webhooks = ["{group}"]
"#
    )
}

/// The SQLSTATE and message of a refused statement.
fn refusal(e: tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().expect("a server error");
    (db.code().code().to_string(), db.message().to_string())
}

/// Every pending request `reviewer` may see, following `next` with pages of `limit`.
async fn all_pending(h: &Harness, reviewer: &str, limit: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut before = String::new();
    loop {
        let (status, page) = h
            .call(
                reqwest::Method::GET,
                &format!("/v1/approvals?state=pending&limit={limit}{before}"),
                Some(reviewer),
                None,
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{page}");
        let rows = page["approvals"].as_array().unwrap();
        assert!(rows.len() <= limit);
        out.extend(rows.iter().cloned());
        match page["next"].as_str() {
            Some(n) => before = format!("&before={n}"),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_requests_is_bounded_and_hides_no_other_teams_request() {
    use std::time::Instant;
    let hooks: Vec<_> = futures::future::join_all(
        (0..2).map(|_| async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() }),
    )
    .await;
    let ports: Vec<u16> = hooks
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let mut got = hooks.into_iter().map(receiver);
    let (team_a_hook, team_b_hook) = (got.next().unwrap(), got.next().unwrap());
    let h = Harness::start_with(
        &[
            &team("flood", "agent:flood", "team-a"),
            &team("other", "agent:other", "team-b"),
        ],
        &format!(
            "[approvals]\nmax_pending_per_lease = 20\nmax_pending_per_policy = 30\nwebhooks = [\n  \
             {{ name = \"team-a\", url = \"http://127.0.0.1:{}/a\" }},\n  \
             {{ name = \"team-b\", url = \"http://127.0.0.1:{}/b\", format = \"slack\" }},\n]\n",
            ports[0], ports[1]
        ),
    )
    .await;
    let team_a = token(&h, "ann", &["team-a"]);
    let team_b = token(&h, "ben", &["team-b"]);

    // Another team's request waits first.
    let other = h.lease("agent:other", json!({})).await;
    let other = h.connect_proxy(&other).await.unwrap();
    let theirs = "DELETE FROM crm.orders WHERE id = 3";
    let (code, _) = refusal(other.simple_query(theirs).await.unwrap_err());
    assert_eq!(code, "42501");

    // One lease asks 1,000 times: 20 requests are made, the rest refused with a clear error.
    let flood = h.lease("agent:flood", json!({})).await;
    let c = h.connect_proxy(&flood).await.unwrap();
    let started = Instant::now();
    let mut limited = Vec::new();
    for i in 0..1000 {
        let (code, message) = refusal(
            c.simple_query(&format!("DELETE FROM crm.orders WHERE id = {}", 10_000 + i))
                .await
                .unwrap_err(),
        );
        if code != "42501" {
            limited.push((code, message));
        }
    }
    println!("1,000 flood statements in {:?}", started.elapsed());
    assert_eq!(limited.len(), 980);
    assert_eq!(limited[0].0, "53400", "configuration_limit_exceeded");
    assert!(
        limited[0].1.starts_with(
            "pgid: approval_limit: too many pending approval requests: this lease already has 20"
        ),
        "{}",
        limited[0].1
    );
    assert!(limited[0].1.contains("max_pending_per_lease = 20"));
    // The session carries on.
    assert!(!c.simple_query("SELECT 1").await.unwrap().is_empty());
    // A second lease of the policy fills it up to the policy's limit.
    let second = h.lease("agent:flood", json!({})).await;
    let c2 = h.connect_proxy(&second).await.unwrap();
    let mut policy_limited = None;
    for i in 0..15 {
        let e = c2
            .simple_query(&format!("DELETE FROM crm.orders WHERE id = {}", 20_000 + i))
            .await
            .unwrap_err();
        let (code, message) = refusal(e);
        if code == "53400" {
            policy_limited = Some(message);
            assert_eq!(i, 10, "20 + 10 = the policy's 30");
            break;
        }
    }
    let m = policy_limited.expect("the policy's limit");
    assert!(m.contains("max_pending_per_policy = 30"), "{m}");

    // Team B still sees its request, and only its own; team A sees its 30, page by page.
    let b = all_pending(&h, &team_b, 1000).await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0]["statement"], theirs);
    let a = all_pending(&h, &team_a, 7).await;
    assert_eq!(a.len(), 30);
    let ids: std::collections::HashSet<_> = a.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids.len(), 30, "no request twice across pages");
    assert!(a.iter().all(|r| r["policy"] == "flood"));

    // Each webhook hears of its own team's requests only, and no more than were made.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let to_a = team_a_hook.lock().unwrap().clone();
    let to_b = team_b_hook.lock().unwrap().clone();
    assert_eq!(to_a.len(), 30);
    assert!(to_a.iter().all(|m| m["approval"]["policy"] == "flood"));
    assert_eq!(to_b.len(), 1, "{to_b:?}");
    assert!(to_b[0]["text"].as_str().unwrap().contains("`other`"));

    let metrics = h.metrics_text().await;
    assert!(
        metrics.contains("pgid_approval_requests_refused_total{limit=\"lease\"} 980"),
        "{metrics}"
    );
    assert!(metrics.contains("pgid_approval_requests_refused_total{limit=\"policy\"} 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn markup_in_a_statement_stays_inert_in_slack_and_json_webhooks() {
    let slack = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let generic = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (slack_port, generic_port) = (
        slack.local_addr().unwrap().port(),
        generic.local_addr().unwrap().port(),
    );
    let (slack_got, generic_got) = (receiver(slack), receiver(generic));
    let policy = GUARDED.replace("timeout = \"3s\"", "timeout = \"30s\"");
    let h = Harness::start_with(
        &[&policy],
        &format!(
            "[approvals]\nreview_url = \"https://pgid.example/approvals\"\nwebhooks = [\n  \
             {{ url = \"http://127.0.0.1:{slack_port}/s\", format = \"slack\" }},\n  \
             {{ url = \"http://127.0.0.1:{generic_port}/g\" }},\n]\n"
        ),
    )
    .await;
    let lease = h.lease("agent:x", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    let statement = "DELETE FROM crm.orders WHERE id = 7 AND '```\n<!channel> \
                     <https://evil.example/approve|Approve> & `done`' IS NOT NULL";
    let run = tokio::spawn(async move { c.simple_query(statement).await.map(|_| ()) });
    let mut delivered = (None, None);
    for _ in 0..100 {
        delivered = (
            slack_got.lock().unwrap().first().cloned(),
            generic_got.lock().unwrap().first().cloned(),
        );
        if delivered.0.is_some() && delivered.1.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (Some(slack), Some(generic)) = delivered else {
        panic!("no deliveries")
    };
    let text = slack["text"].as_str().unwrap();
    println!("{text}");
    for live in ["<!channel>", "<https://", "|Approve>", "& `"] {
        assert!(!text.contains(live), "{live} is live in {text}");
    }
    assert!(
        text.contains("&lt;!channel&gt; &lt;https://evil.example/approve|Approve&gt; &amp; ˋdoneˋ"),
        "{text}"
    );
    assert_eq!(
        text.matches('`').count(),
        12,
        "pgid's own code spans and block only: {text}"
    );
    assert!(text.contains("https://pgid.example/approvals/"), "{text}");
    // The generic receiver gets JSON carrying the statement exactly as it was run.
    assert_eq!(generic["approval"]["statement"], statement);
    run.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn normalised_literals_stay_out_of_approval_records_but_reviewers_see_them() {
    let policy = format!("{}\n[audit]\nliterals = \"normalize\"\n", common::REVIEWED);
    let h = Harness::start(&[&policy]).await;
    let alice = token(&h, "alice", &["dba"]);
    let lease = h.lease("agent:reviewed", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    // A literal no hash or id in a record can contain by chance.
    let del = "DELETE FROM crm.orders WHERE status = 'zq-secret'";
    let (code, _) = refusal(c.simple_query(del).await.unwrap_err());
    assert_eq!(code, "42501");
    let listed = pending_for(&h, &alice, del).await;
    assert_eq!(listed.len(), 1, "the reviewer sees the literal");
    decide(
        &h,
        &alice,
        listed[0]["id"].as_str().unwrap(),
        "approve",
        None,
    )
    .await;
    c.simple_query(del).await.expect("approved, it runs");

    let records = h.audit_records();
    for kind in ["approval.requested", "approval.used"] {
        let r: Vec<_> = records.iter().filter(|r| r["kind"] == kind).collect();
        assert_eq!(r.len(), 1, "{kind}");
        let text = r[0]["reason"].as_str().unwrap();
        assert!(
            text.contains("$1") && !text.contains("zq-secret"),
            "{kind}: {text}"
        );
    }
    assert!(
        !records.iter().any(|r| r.to_string().contains("zq-secret")),
        "no record keeps the literal"
    );
}
