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

/// Every relation's ACL in the demo schemas, as Postgres keeps it.
async fn acls(h: &Harness) -> Vec<(String, Option<String>)> {
    h.superuser()
        .await
        .query(
            "SELECT c.oid::regclass::text, c.relacl::text FROM pg_class c \
             WHERE c.relnamespace IN ('crm'::regnamespace, 'reporting'::regnamespace) ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

const WRITES_TICKETS: &str = "\n[[grant]]\nprivileges = [\"INSERT\"]\non = [\"crm.tickets\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reload_changes_no_grant_and_a_good_one_applies() {
    let h = Harness::start(&[READER]).await;
    let running = h.pgid.as_ref().unwrap();
    let reader = h.lease("agent:reader", json!({})).await;
    let c = h.connect_proxy(&reader).await.unwrap();
    let insert = "INSERT INTO crm.tickets (customer_id, subject) VALUES (1, 'x')";
    let refused = |e: tokio_postgres::Error| e.as_db_error().unwrap().code().code().to_string();
    assert_eq!(refused(c.simple_query(insert).await.unwrap_err()), "42501");
    // A table pgid's admin role may not grant on.
    h.superuser()
        .await
        .batch_execute("CREATE TABLE crm.secret (id int)")
        .await
        .unwrap();
    let before = acls(&h).await;

    // reader would gain INSERT on tickets, but another policy cannot be reconciled (a grant the
    // server refuses): reader's new grant must not have been applied either.
    write_policy(&h, "p0.toml", &format!("{READER}{WRITES_TICKETS}"));
    let zeta = READER
        .replace("\"reader\"", "\"zeta\"")
        .replace("agent:reader", "agent:zeta")
        .replace("[\"crm.customers\", \"crm.notes\"]", "[\"crm.secret\"]");
    write_policy(&h, "p1.toml", &zeta);
    let e = running.reload().await.unwrap_err();
    assert!(e.contains("policy zeta") && e.contains("secret"), "{e}");
    assert_eq!(acls(&h).await, before);
    assert!(!group_role_exists(&h, "pgid_p_zeta").await);
    assert_eq!(refused(c.simple_query(insert).await.unwrap_err()), "42501");

    // A mask naming a column that does not exist: refused with file:line and a suggestion.
    let typo = format!(
        "{}\n[[mask]]\ncolumns = [\"crm.customers.emial\"]\nmethod = \"redact\"\n",
        READER
            .replace("\"reader\"", "\"zeta\"")
            .replace("agent:reader", "agent:zeta")
    );
    write_policy(&h, "p1.toml", &typo);
    let e = running.reload().await.unwrap_err();
    let file = h.state.path().join("policies/p1.toml");
    let at = format!("{}:{}:", file.display(), line_of(&typo, "emial"));
    assert!(e.contains(&at), "{e}");
    assert!(
        e.contains("[[mask]] names column crm.customers.emial, which does not exist")
            && e.contains("(did you mean \"email\"?)"),
        "{e}"
    );
    assert_eq!(acls(&h).await, before);
    assert!(!group_role_exists(&h, "pgid_p_zeta").await);
    // The running policy stays in force: no mask on email.
    let email: String = c
        .query_one("SELECT email FROM crm.customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(email.contains('@'), "{email}");

    // Fixed: both policies apply.
    write_policy(&h, "p1.toml", &typo.replace("emial", "email"));
    running.reload().await.unwrap();
    let after = acls(&h).await;
    let tickets = after
        .iter()
        .find(|(name, _)| name == "crm.tickets")
        .and_then(|(_, acl)| acl.clone())
        .unwrap();
    assert!(tickets.contains("pgid_p_reader=a/"), "{tickets}");
    assert!(group_role_exists(&h, "pgid_p_zeta").await);
    c.simple_query(insert).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn start_refuses_policies_that_name_what_does_not_exist() {
    let mut h = Harness::start(&[READER]).await;
    h.stop_pgid().await;
    let typo = format!(
        "{READER}\n[[approval]]\nstatements = [\"DELETE\"]\ntables = [\"crm.order\"]\n\
         approvers = {{ claims = {{ groups = \"dba\" }} }}\n"
    );
    write_policy(&h, "p0.toml", &typo);
    let e = h.start_pgid().await.unwrap_err();
    let file = h.state.path().join("policies/p0.toml");
    assert!(
        e.contains(&format!(
            "{}:{}:",
            file.display(),
            line_of(&typo, "crm.order\"")
        )),
        "{e}"
    );
    assert!(
        e.contains("policy reader: [[approval]] names table crm.order, which does not exist in database app (did you mean \"orders\"?)"),
        "{e}"
    );
    // A grant on a schema that does not exist, too.
    write_policy(&h, "p0.toml", &READER.replace("crm.notes", "crn.notes"));
    let e = h.start_pgid().await.unwrap_err();
    assert!(e.contains("[[grant]] names schema \"crn\""), "{e}");
    assert!(e.contains("(did you mean \"crm\"?)"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_masked_column_renamed_while_pgid_runs_is_not_left_in_clear() {
    let masked =
        format!("{READER}\n[[mask]]\ncolumns = [\"crm.customers.email\"]\nmethod = \"redact\"\n");
    let h = Harness::start(&[&masked]).await;
    let policy = pgid::policy::parse_policy(std::path::Path::new("p0.toml"), &masked).unwrap();
    let (pool, _) = pgid::database::pool(&h.admin_url, 2, None).unwrap();
    let analyzer = pgid::sql::Analyzer::start(1).unwrap();
    let resolve = || async {
        // A fresh catalog: what the proxy finds once its cached resolution expires.
        pgid::proxy::catalog::MaskCatalog::default()
            .resolve(&policy, &pool, &analyzer, [0; 32])
            .await
    };
    assert!(resolve().await.unwrap().is_some());
    h.superuser()
        .await
        .batch_execute("ALTER TABLE crm.customers RENAME COLUMN email TO mail")
        .await
        .unwrap();
    let e = resolve().await.unwrap_err();
    assert!(
        e.contains("policy reader: masked column crm.customers.email does not exist"),
        "{e}"
    );
}
