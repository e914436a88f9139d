//! Reloading policies while pgid runs (SIGHUP): group roles follow the files, live sessions
//! follow the new rules from their next statement, a removed policy's leases end, and a policy
//! set that does not check changes nothing.

mod common;

use std::time::Duration;

use common::Harness;
use serde_json::json;

const READER: &str = r#"
name = "reader"
database = "app"
ttl = "15m"
[identity]
subject = "agent:reader"
[[grant]]
privileges = ["SELECT", "DELETE"]
on = ["crm.customers", "crm.notes"]
[guardrails]
deny = []
require_where = []
"#;

fn write_policy(h: &Harness, file: &str, text: &str) {
    std::fs::write(h.state.path().join("policies").join(file), text).unwrap();
}

async fn group_role_exists(h: &Harness, role: &str) -> bool {
    h.superuser()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_reaches_live_sessions_new_leases_and_removed_policies() {
    let h = Harness::start(&[READER, common::NIGHTLY]).await;
    let running = h.pgid.as_ref().unwrap();
    let reader = h.lease("agent:reader", json!({})).await;
    let c = h.connect_proxy(&reader).await.unwrap();
    let by_id = c
        .prepare("SELECT email FROM crm.customers WHERE id = $1")
        .await
        .unwrap();
    let email: String = c.query_one(&by_id, &[&1i32]).await.unwrap().get(0);
    assert!(email.contains('@'));
    let nightly = h.lease("svc:nightly-report", json!({})).await;
    let n = h.connect_proxy(&nightly).await.unwrap();
    n.simple_query("SELECT 1").await.unwrap();
    assert!(group_role_exists(&h, "pgid_p_nightly-report").await);

    // A broken file: nothing changes, and the running policies stay.
    write_policy(&h, "p2.toml", "name = \"broken\"\nttl = 5\n");
    let e = running.reload().await.unwrap_err();
    assert!(e.contains("p2.toml"), "{e}");
    let again: String = c.query_one(&by_id, &[&1i32]).await.unwrap().get(0);
    assert_eq!(again, email);

    // Tighter rules for reader, nightly-report gone, a new policy.
    std::fs::remove_file(h.state.path().join("policies/p2.toml")).unwrap();
    write_policy(
        &h,
        "p0.toml",
        &format!(
            "{}\n[[mask]]\ncolumns = [\"crm.customers.email\"]\nmethod = \"redact\"\n",
            READER.replace("deny = []", "deny = [\"DELETE\"]")
        ),
    );
    std::fs::remove_file(h.state.path().join("policies/p1.toml")).unwrap();
    write_policy(
        &h,
        "p3.toml",
        &READER
            .replace("\"reader\"", "\"writer\"")
            .replace("agent:reader", "agent:writer"),
    );
    let summary = running.reload().await.unwrap();
    assert!(
        summary.contains("added writer") && summary.contains("removed nightly-report"),
        "{summary}"
    );
    assert!(!summary.contains("problems"), "{summary}");

    // The live session: its statement prepared before the reload is masked now, and DELETE is
    // refused; the session itself carries on.
    let masked: String = c.query_one(&by_id, &[&1i32]).await.unwrap().get(0);
    assert_eq!(masked, "REDACTED");
    let simple = c
        .simple_query("SELECT email FROM crm.customers WHERE id = 2")
        .await
        .unwrap();
    assert!(simple.iter().any(|m| matches!(m,
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("REDACTED"))));
    let e = c
        .simple_query("DELETE FROM crm.notes WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
    c.simple_query("SELECT 1").await.unwrap();

    // The removed policy: its lease is revoked, its session ended, its group role dropped.
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            n.simple_query("SELECT 1").await.is_err()
        })
        .await
    );
    assert!(!group_role_exists(&h, "pgid_p_nightly-report").await);
    let (status, body) = h.issue(&h.token("svc:nightly-report"), json!({})).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{body}");
    // The new one works.
    let writer = h.lease("agent:writer", json!({})).await;
    let w = h.connect_proxy(&writer).await.unwrap();
    w.simple_query("SELECT count(*) FROM crm.notes")
        .await
        .unwrap();

    let reloads: Vec<_> = h
        .audit_records()
        .into_iter()
        .filter(|r| r["kind"] == "policy.reloaded")
        .collect();
    assert_eq!(
        reloads.len(),
        1,
        "only the reload that happened is recorded"
    );
    assert!(reloads[0]["reason"]
        .as_str()
        .unwrap()
        .contains("removed nightly-report"));
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_of_a_policy_removed_while_pgid_was_down_end_at_start() {
    let mut h = Harness::start(&[READER, common::NIGHTLY]).await;
    let nightly = h.lease("svc:nightly-report", json!({})).await;
    let reader = h.lease("agent:reader", json!({})).await;
    h.stop_pgid().await;
    std::fs::remove_file(h.state.path().join("policies/p1.toml")).unwrap();
    h.start_pgid().await.unwrap();
    let state = |lease: &serde_json::Value| {
        let id: uuid::Uuid = lease["lease_id"].as_str().unwrap().parse().unwrap();
        let h = &h;
        async move {
            h.superuser()
                .await
                .query_one("SELECT state FROM pgid.leases WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(state(&nightly).await, "revoked");
    assert_eq!(state(&reader).await, "active");
    let roles = h.lease_roles().await;
    assert!(!roles.contains(&nightly["username"].as_str().unwrap().to_string()));
    assert!(roles.contains(&reader["username"].as_str().unwrap().to_string()));
}
