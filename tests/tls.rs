//! pgid's own connections to a Postgres that accepts TLS only: with `upstream_tls =
//! "verify-full"` the admin pool, the state connections, the instance lock and lease sessions all
//! use TLS, checked against the configured CA.

mod common;

use common::Harness;
use serde_json::json;

/// A new lease's session through pgid: whether its upstream connection is encrypted.
async fn lease_session_is_encrypted(h: &Harness) -> bool {
    let lease = h.lease("svc:nightly-report", json!({})).await;
    let c = h.connect_proxy(&lease).await.unwrap();
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Turns TLS on at the harness's Postgres and takes TLS connections only (over TCP) from then;
/// returns the material and a superuser connection opened before.
async fn tls_only(h: &Harness) -> (pgid::tls::TlsMaterial, tokio_postgres::Client) {
    let material = h.enable_postgres_tls().await;
    let data = h.pg.data_dir();
    // From here on the server takes TLS connections only (over TCP).
    let su = h.superuser().await;
    let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
    let tls_only: String = hba
        .lines()
        .map(|l| match l.strip_prefix("host ") {
            Some(rest) => format!("hostssl {rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(data.join("pg_hba.conf"), tls_only).unwrap();
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    // The reload is asynchronous.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let plain = tokio_postgres::connect(&h.admin_url, tokio_postgres::NoTls).await;
    assert!(
        plain.is_err(),
        "the server still takes plaintext connections"
    );
    (material, su)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_connection_to_a_tls_only_postgres_uses_verified_tls() {
    let mut h = Harness::start(&[common::NIGHTLY]).await;
    h.stop_pgid().await;
    let (material, su) = tls_only(&h).await;

    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let at = config.find("admin_url = ").unwrap();
    let end = at + config[at..].find('\n').unwrap() + 1;
    let config = format!(
        "{}upstream_tls = \"verify-full\"\nupstream_ca_file = \"{}\"\n{}",
        &config[..end],
        material.ca.as_ref().unwrap().display(),
        &config[end..]
    );
    std::fs::write(&h.config_path, config).unwrap();
    h.start_pgid()
        .await
        .expect("pgid starts against a TLS-only server");

    // A lease works end to end; its upstream session is encrypted.
    assert!(
        lease_session_is_encrypted(&h).await,
        "the lease's upstream connection is not encrypted"
    );
    // And so is every connection pgid's admin role holds (pool, instance lock).
    let (all, count): (bool, i64) = {
        let r = su
            .query_one(
                "SELECT coalesce(bool_and(s.ssl), false), count(*) FROM pg_stat_activity a
                 JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'pgid_admin'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        count >= 2 && all,
        "{count} admin connections, all TLS: {all}"
    );

    // `require`: encrypted without checking the certificate (no CA configured).
    h.stop_pgid().await;
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("upstream_ca_file"))
        .map(|l| {
            if l.starts_with("upstream_tls") {
                "upstream_tls = \"require\"\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&h.config_path, config).unwrap();
    h.start_pgid()
        .await
        .expect("pgid starts with upstream_tls = require");
    assert!(lease_session_is_encrypted(&h).await);

    // `verify-full` against a CA that did not sign the server's certificate: pgid refuses to
    // start rather than talk to an unverified server.
    h.stop_pgid().await;
    let other =
        pgid::tls::TlsMaterial::resolve(&h.state.path().join("other-ca"), None, &["x".into()])
            .unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "upstream_tls = \"require\"\n",
        &format!(
            "upstream_tls = \"verify-full\"\nupstream_ca_file = \"{}\"\n",
            other.ca.as_ref().unwrap().display()
        ),
    );
    std::fs::write(&h.config_path, config).unwrap();
    assert!(
        h.start_pgid().await.is_err(),
        "pgid accepted a certificate its CA did not sign"
    );
}

/// A separate state database (`state_url`) is verified as `state_tls` says: `verify-full`
/// against `state_ca_file`; a CA that did not sign the server's certificate stops pgid.
#[tokio::test(flavor = "multi_thread")]
async fn the_state_database_is_verified_with_state_tls() {
    let mut h = Harness::start(&[common::NIGHTLY]).await;
    h.stop_pgid().await;
    let (material, _su) = tls_only(&h).await;
    let ca = material.ca.as_ref().unwrap().display().to_string();
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    let admin_url = h.admin_url.clone();
    let with = |state_ca: &str| {
        let at = original.find("admin_url = ").unwrap();
        let end = at + original[at..].find('\n').unwrap() + 1;
        format!(
            "state_url = {:?}\nstate_tls = \"verify-full\"\nstate_ca_file = \"{state_ca}\"\n{}\
             upstream_tls = \"verify-full\"\nupstream_ca_file = \"{ca}\"\n{}",
            admin_url,
            &original[..end],
            &original[end..]
        )
    };
    std::fs::write(&h.config_path, with(&ca)).unwrap();
    h.start_pgid()
        .await
        .expect("pgid starts with a verified state database");
    let ready = h
        .http
        .get(format!("{}/readyz", h.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200);
    let lease = h.lease("svc:nightly-report", serde_json::json!({})).await;
    assert!(lease["dsn"].is_string(), "{lease}");

    h.stop_pgid().await;
    let other =
        pgid::tls::TlsMaterial::resolve(&h.state.path().join("other-ca"), None, &["x".into()])
            .unwrap();
    let wrong = with(&other.ca.as_ref().unwrap().display().to_string());
    // Only the state database's CA is wrong: the failure is the state connection's.
    std::fs::write(&h.config_path, wrong).unwrap();
    let refused = h
        .start_pgid()
        .await
        .expect_err("an unverified state database was used");
    assert!(refused.contains("state"), "{refused}");
}
