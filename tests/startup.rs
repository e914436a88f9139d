//! What pgid refuses at start rather than run half-right: a server key other than the one the
//! state database was set up with (a shared key file that was not mounted and got generated
//! afresh), and a state schema a newer pgid migrated.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Harness, NIGHTLY};

#[tokio::test(flavor = "multi_thread")]
async fn another_server_key_or_a_newer_schema_stops_pgid_at_start() {
    let mut h = Harness::start(&[NIGHTLY]).await;
    let lease = h.lease("svc:nightly-report", serde_json::json!({})).await;
    h.stop_pgid().await;
    let config = pgid::config::Config::load(&h.config_path).unwrap();
    let key_file = config.server_key_file.clone();
    let original = std::fs::read(&key_file).unwrap();

    // The key file is gone (not mounted): pgid generates one, which the state does not know.
    std::fs::remove_file(&key_file).unwrap();
    let refused = h.start_pgid().await.expect_err("started with a new key");
    assert!(refused.contains("server key differs"), "{refused}");
    // Another key of the right shape: the same.
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let refused = h.start_pgid().await.expect_err("started with another key");
    assert!(refused.contains("server key differs"), "{refused}");

    // The right key again: pgid starts, and the lease issued before still logs in.
    std::fs::write(&key_file, &original).unwrap();
    h.start_pgid().await.expect("starts with its own key");
    // (pgid listens on a new port after the restart.)
    let dsn = lease["dsn"].as_str().unwrap().replace(
        &format!(":{}/", lease["port"]),
        &format!(":{}/", h.proxy_port()),
    );
    let c = common::connect(&dsn)
        .await
        .expect("the earlier lease still works");
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    h.stop_pgid().await;

    // A schema a newer pgid migrated: refused, with what to run.
    let su = h.superuser().await;
    su.batch_execute(
        "INSERT INTO pgid.schema_migrations (version, name) VALUES (999, 'from the future')",
    )
    .await
    .unwrap();
    let refused = h.start_pgid().await.expect_err("started on a newer schema");
    assert!(refused.contains("migrated by a newer pgid"), "{refused}");
    assert!(refused.contains("999"), "{refused}");
    su.batch_execute("DELETE FROM pgid.schema_migrations WHERE version = 999")
        .await
        .unwrap();
    h.start_pgid().await.expect("starts again");
}
