//! Approval requests in the state database: decided exactly once (even by two reviewers at the
//! same moment), expired when nobody decides in time, withdrawn by the requester.

mod common;

use chrono::{Duration, Utc};
use common::Harness;
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

const GUARDED: &str = r#"
name = "guarded"
database = "app"
ttl = "15m"
[identity]
subject = "agent:x"
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.orders"]
[[approval]]
statements = ["DELETE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "dba" } }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn reviewers_decide_through_the_api_and_nobody_else_can() {
    use reqwest::{Method, StatusCode};
    let h = Harness::start(&[GUARDED]).await;
    let (pool, _) = pgid::database::pool(&h.admin_url, 2, None).unwrap();
    let store = Approvals::new(pool);
    let id = Uuid::new_v4();
    // A request as the proxy makes it for agent:x's DELETE.
    let issuer = h.issuer.url().to_string();
    let mut new = request(id, Duration::minutes(5));
    new.issuer = &issuer;
    store.create(&new).await.unwrap();

    let token = |subject: &str, groups: &[&str]| {
        let mut claims = h.issuer.claims(subject);
        claims.insert("groups".into(), json!(groups));
        h.issuer.mint(&claims)
    };
    let alice = token("alice", &["dba"]);
    let bob = token("bob", &["dev"]);
    let requester = token("agent:x", &["dba"]);

    let (status, list) = h
        .call(
            Method::GET,
            "/v1/approvals?state=pending",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let found = &list["approvals"][0];
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
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/v1/approvals/{id}/deny"),
            Some(&alice),
            None,
        )
        .await;
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
