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
