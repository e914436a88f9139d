//! pgid's own channels under attack (issue 14, point 1): an agent with a valid lease NOTIFYs
//! pgid's lease and approval channels (the state lives in the database it uses, so it can)
//! with forged payloads. Nothing changes, on either instance: every payload without pgid's seal
//! is dropped, and sealed ones are hints that make an instance read the state itself.

mod common;

use std::time::Duration;

use common::{connect, eventually, Harness, AGENT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn forged_lease_and_approval_events_change_nothing() {
    let h = Harness::start(&[AGENT]).await;
    let second = h.start_second().await;
    let on = |lease: &Value, port: u16| {
        format!(
            "postgresql://{}:{}@127.0.0.1:{port}/app",
            lease["username"].as_str().unwrap(),
            lease["password"].as_str().unwrap()
        )
    };
    let (first_port, second_port) = (h.proxy_port(), second.proxy_addr.port());
    let victim = h.lease("agent:app", json!({})).await;
    let attacker = h.lease("agent:app", json!({})).await;
    let witness = h.lease("agent:app", json!({})).await;
    let sessions = [
        connect(&on(&victim, first_port)).await.unwrap(),
        connect(&on(&victim, second_port)).await.unwrap(),
    ];
    let witnessed = connect(&on(&witness, second_port)).await.unwrap();
    witnessed.simple_query("SELECT 1").await.unwrap();

    let a = connect(&on(&attacker, first_port)).await.unwrap();
    let id = victim["lease_id"].as_str().unwrap();
    let forged = [
        format!("NOTIFY pgid_lease_events, '{id} revoked'"),
        format!("SELECT pg_notify('pgid_lease_events', '{id} expired')"),
        format!("SELECT pg_notify('pgid_lease_events', '{id} active 2000-01-01T00:00:00Z')"),
        format!("SELECT pg_notify('pgid_lease_events', '{id} revoked 00112233445566778899aabbccddeeff')"),
        "SELECT pg_notify('pgid_approval_events', 'expired')".to_string(),
        format!("SELECT pg_notify('pgid_approval_events', '{}')", uuid::Uuid::new_v4()),
        "SELECT pg_notify('pgid_policy_events', 'reloaded 1 00')".to_string(),
        "SELECT pg_notify('pgid_cancel_events', 'ask 1 00 0 1 00112233445566778899aabbccddeeff')"
            .to_string(),
    ];
    for sql in &forged {
        a.batch_execute(sql).await.unwrap();
    }

    // A genuine event after the forged ones: once the second instance has closed the witness's
    // session, it has read every notification sent before.
    let path = format!("/v1/credentials/{}", witness["lease_id"].as_str().unwrap());
    let (status, _) = h
        .call(Method::DELETE, &path, Some(&h.token("agent:app")), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(10), || async {
            witnessed.simple_query("SELECT 1").await.is_err()
        })
        .await,
        "the genuine revocation reached the second instance"
    );

    for (i, s) in sessions.iter().enumerate() {
        s.simple_query("SELECT 1")
            .await
            .unwrap_or_else(|e| panic!("the victim's session on instance {} ended: {e}", i + 1));
    }
    for port in [first_port, second_port] {
        let c = connect(&on(&victim, port))
            .await
            .unwrap_or_else(|e| panic!("the victim cannot connect on port {port}: {e}"));
        c.simple_query("SELECT 1").await.unwrap();
    }
    assert!(
        !h.audit_records()
            .iter()
            .any(|r| r["kind"] == "policy.reloaded"),
        "a forged reload announcement made nobody reload"
    );
    second.shutdown().await;
}
