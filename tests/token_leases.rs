//! A token presented as the password (issue 14, point 8): connections with the same token share
//! one lease — as a connection pool configured with a token makes them — within the lease's own
//! connection limit; another token gets another lease; after a revocation the token gets a
//! fresh lease. Through psql (libpq) over TLS, as a user would connect.

mod common;

use std::time::Duration;

use common::Harness;
use serde_json::json;

const POOLED: &str = r#"
name = "pooled"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:pool"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
"#;

struct Psql {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `sql` through pgid's proxy with `token` as the password; the role it ran as.
async fn psql(h: &Harness, token: &str, sql: &str) -> Psql {
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-At", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={} user=agent dbname=app sslmode=verify-full sslrootcert={}",
            h.proxy_port(),
            h.ca_path().display()
        ))
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql");
    Psql {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// `n` connections at once, each holding its session for `hold`.
async fn concurrently(h: &Harness, token: &str, n: usize, hold: Duration) -> Vec<Psql> {
    let sql = format!("SELECT current_user FROM pg_sleep({})", hold.as_secs_f64());
    futures::future::join_all((0..n).map(|_| psql(h, token, &sql))).await
}

async fn leases_of(h: &Harness, subject: &str) -> i64 {
    h.count(&format!(
        "SELECT count(*) FROM pgid.leases WHERE subject = '{subject}'"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_per_token_within_its_connection_limit_and_a_fresh_one_after_revocation() {
    let h = Harness::start(&[POOLED]).await;
    let token = h.token("agent:pool");

    // Ten connections at once with one token: one lease, every session on its role.
    let runs = concurrently(&h, &token, 10, Duration::from_millis(500)).await;
    for r in &runs {
        assert!(r.ok, "{}", r.stderr);
    }
    let role = runs[0].stdout.clone();
    assert!(role.starts_with("pgid_pooled_"), "{role}");
    assert!(runs.iter().all(|r| r.stdout == role), "one role for all");
    assert_eq!(leases_of(&h, "agent:pool").await, 1);

    // And one after another.
    for _ in 0..5 {
        let r = psql(&h, &token, "SELECT current_user").await;
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(r.stdout, role);
    }
    assert_eq!(leases_of(&h, "agent:pool").await, 1);

    // The lease's own connection limit (10) still holds: an eleventh session at once is refused.
    let runs = concurrently(&h, &token, 11, Duration::from_secs(3)).await;
    let refused: Vec<&Psql> = runs.iter().filter(|r| !r.ok).collect();
    assert_eq!(
        refused.len(),
        1,
        "{:?}",
        runs.iter().map(|r| &r.stderr).collect::<Vec<_>>()
    );
    assert!(
        refused[0].stderr.contains("too many connections for role"),
        "{}",
        refused[0].stderr
    );
    assert!(runs.iter().filter(|r| r.ok).all(|r| r.stdout == role));
    assert_eq!(leases_of(&h, "agent:pool").await, 1);

    // Another token of the same identity: a lease of its own; the first keeps its lease.
    let mut claims = h.issuer.claims("agent:pool");
    claims.insert("jti".into(), json!("second"));
    let other = h.issuer.mint(&claims);
    assert_ne!(other, token);
    let r = psql(&h, &other, "SELECT current_user").await;
    assert!(r.ok, "{}", r.stderr);
    let other_role = r.stdout;
    assert!(other_role.starts_with("pgid_pooled_") && other_role != role);
    assert_eq!(psql(&h, &token, "SELECT current_user").await.stdout, role);
    assert_eq!(leases_of(&h, "agent:pool").await, 2);

    // Revoked: the token's next connection gets a fresh lease (as the broker would give it one).
    let su = h.superuser().await;
    let id: String = su
        .query_one(
            "SELECT id::text FROM pgid.leases WHERE role_name = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    let (status, body) = h
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/credentials/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    let r = psql(&h, &token, "SELECT current_user").await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("pgid_pooled_") && r.stdout != role && r.stdout != other_role,
        "{}",
        r.stdout
    );
    assert_eq!(leases_of(&h, "agent:pool").await, 3);
    let fresh = r.stdout;
    let runs = concurrently(&h, &token, 5, Duration::from_millis(200)).await;
    assert!(runs.iter().all(|r| r.ok && r.stdout == fresh));
    assert_eq!(leases_of(&h, "agent:pool").await, 3);

    // The reuse is counted.
    let metrics = h.metrics_text().await;
    let reused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgid_token_leases_reused_total "))
        .and_then(|v| v.parse().ok())
        .expect("pgid_token_leases_reused_total");
    assert!(reused >= 30, "{reused}");
}
