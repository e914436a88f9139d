//! The broker's acceptance tests, against a real PostgreSQL and real TLS.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{eventually, Harness, NIGHTLY};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgid::dev::KeyAlg;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_buys_a_working_least_privilege_role() {
    let h = Harness::start(&[NIGHTLY]).await;
    let token = h.token("svc:nightly-report");
    let before = chrono::Utc::now();
    let (status, lease) = h.issue(&token, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{lease}");
    for key in [
        "lease_id",
        "username",
        "password",
        "dsn",
        "host",
        "port",
        "database",
        "expires_at",
        "policy",
    ] {
        assert!(lease.get(key).is_some(), "response lacks {key}: {lease}");
    }
    let id = lease["lease_id"].as_str().unwrap();
    let user = lease["username"].as_str().unwrap();
    let secret = lease["password"].as_str().unwrap();
    assert_eq!(lease["policy"], "nightly-report");
    assert!(
        user.starts_with("pgid_nightly_report_") && user.len() <= 63,
        "{user}"
    );
    assert_eq!(
        lease["dsn"],
        format!(
            "postgresql://{user}:{secret}@127.0.0.1:{}/app",
            h.proxy_port()
        )
    );
    let expires: chrono::DateTime<chrono::Utc> =
        lease["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = (expires - before).num_seconds();
    assert!((899..=905).contains(&ttl), "ttl {ttl}");

    // The role as Postgres sees it.
    let su = h.superuser().await;
    let row = su
        .query_one(
            "SELECT rolcanlogin, rolvaliduntil, rolconnlimit, rolcreaterole, rolcreatedb, rolsuper, \
             shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let valid_until: chrono::DateTime<chrono::Utc> = row.get(1);
    let grace = (valid_until - expires).num_seconds();
    assert!(
        (59..=61).contains(&grace),
        "VALID UNTIL is expiry + 60 s grace, got {grace}"
    );
    assert_eq!(row.get::<_, i32>(2), 3);
    assert!(!row.get::<_, bool>(3) && !row.get::<_, bool>(4) && !row.get::<_, bool>(5));
    let comment: String = row.get(6);
    assert!(
        comment.contains(id) && comment.contains("svc:nightly-report"),
        "{comment}"
    );
    let groups: Vec<String> = su
        .query(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
             JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1 ORDER BY 1",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(groups, ["pgid_lease", "pgid_p_nightly-report"]);
    // Grants are held by the group role only.
    let direct: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(direct, 0);

    // Logged in directly with the derived database password: exactly the policy's privileges.
    let db = h
        .connect_direct(user, &h.database_password(id))
        .await
        .expect("derived password logs in");
    let n: i64 = db
        .query_one("SELECT count(*) FROM crm.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    db.query_one("SELECT count(*) FROM reporting.daily_revenue", &[])
        .await
        .unwrap();
    for (sql, why) in [
        ("SELECT count(*) FROM crm.orders", "ungranted table"),
        (
            "INSERT INTO crm.customers (name, email) VALUES ('x', 'y')",
            "insert",
        ),
        ("UPDATE crm.customers SET name = 'x'", "update"),
        ("DELETE FROM crm.customers", "delete"),
        ("CREATE TABLE crm.evil (id int)", "DDL in a granted schema"),
        ("CREATE TABLE public.evil (id int)", "DDL in public"),
        ("DROP TABLE crm.customers", "drop"),
        ("TRUNCATE crm.customers", "truncate"),
        ("SELECT * FROM pgid.leases", "pgid's own state"),
    ] {
        let err = db.batch_execute(sql).await.expect_err(why);
        assert_eq!(sqlstate(&err), "42501", "{why}: {err}");
    }
    // The client secret is worthless at the database itself.
    let err = h
        .connect_direct(user, secret)
        .await
        .expect_err("client secret must not work at Postgres");
    assert_eq!(sqlstate(&err), "28P01");

    // The lease, as its subject sees it; another subject may not look.
    let (status, view) = h
        .call(
            Method::GET,
            &format!("/v1/credentials/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "active");
    assert!(view.get("password").is_none());
    let other = h.token("svc:someone-else");
    let (status, _) = h
        .call(
            Method::GET,
            &format!("/v1/credentials/{id}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = h
        .call(
            Method::GET,
            "/v1/credentials/not-a-uuid",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Renew: extended, never past max_ttl, VALID UNTIL follows.
    let (status, renewed) = h
        .call(
            Method::POST,
            &format!("/v1/credentials/{id}/renew"),
            Some(&token),
            Some(json!({"ttl": "30m"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let new_exp: chrono::DateTime<chrono::Utc> =
        renewed["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (new_exp - expires).num_seconds() >= 899,
        "renewed to {new_exp}"
    );
    let vu: chrono::DateTime<chrono::Utc> = su
        .query_one(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(((vu - new_exp).num_seconds() - 60).abs() <= 1);
    let (status, body) = h
        .call(
            Method::POST,
            &format!("/v1/credentials/{id}/renew"),
            Some(&token),
            Some(json!({"ttl": "2h"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Builds a token by hand: header and payload as given, signature bytes as given.
fn raw_token(header: &Value, payload: &Value, signature: &[u8]) -> String {
    let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        b(header.to_string().as_bytes()),
        b(payload.to_string().as_bytes()),
        b(signature)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_or_confused_tokens_get_401_with_their_reason_and_nothing_is_created() {
    let h = Harness::start(&[NIGHTLY]).await;
    let iss = h.issuer.url().to_string();
    let now = chrono::Utc::now().timestamp();
    let claims = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = h.issuer.claims("svc:nightly-report");
        f(&mut c);
        c
    };
    let good = h.issuer.mint(&claims(&|_| {}));
    let parts: Vec<&str> = good.split('.').collect();

    // An attacker's own key, published nowhere.
    h.issuer.add_key("attacker", KeyAlg::Es256, false);
    let attacker_jwk: Value = {
        h.issuer.set_published("attacker", true);
        let set: Value = reqwest::get(format!("{iss}/jwks"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        h.issuer.set_published("attacker", false);
        set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "attacker")
            .unwrap()
            .clone()
    };
    let hs256 = {
        let pem = h.issuer.public_pem("dev-1");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("dev-1".into());
        jsonwebtoken::encode(
            &header,
            &claims(&|_| {}),
            &EncodingKey::from_secret(pem.as_bytes()),
        )
        .unwrap()
    };
    let with_header = |f: &dyn Fn(&mut Header)| {
        let mut header = Header::new(Algorithm::ES256);
        f(&mut header);
        h.issuer.mint_header("attacker", &header, &claims(&|_| {}))
    };
    let tampered = {
        let mut payload: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        payload["sub"] = json!("svc:admin");
        format!(
            "{}.{}.{}",
            parts[0],
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        )
    };

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "expired",
            Some(h.issuer.mint(&claims(&|c| {
                c.insert("exp".into(), json!(now - 300));
                c.insert("iat".into(), json!(now - 900));
                c.insert("nbf".into(), json!(now - 900));
            }))),
            "token expired",
        ),
        (
            "not yet valid",
            Some(h.issuer.mint(&claims(&|c| {
                c.insert("nbf".into(), json!(now + 600));
                c.insert("exp".into(), json!(now + 1200));
            }))),
            "not yet valid",
        ),
        (
            "wrong audience",
            Some(h.issuer.mint(&claims(&|c| {
                c.insert("aud".into(), json!("someone-else"));
            }))),
            "audience",
        ),
        (
            "no audience",
            Some(h.issuer.mint(&claims(&|c| {
                c.remove("aud");
            }))),
            "no aud claim",
        ),
        (
            "wrong issuer",
            Some(h.issuer.mint(&claims(&|c| {
                c.insert("iss".into(), json!("https://evil.example.com"));
            }))),
            "not trusted",
        ),
        (
            "alg none",
            Some(raw_token(
                &json!({"alg": "none", "typ": "JWT"}),
                &Value::Object(claims(&|_| {})),
                b"",
            )),
            "alg \"none\"",
        ),
        (
            "alg NONE",
            Some(raw_token(
                &json!({"alg": "NONE"}),
                &Value::Object(claims(&|_| {})),
                b"",
            )),
            "alg \"none\"",
        ),
        (
            "alg none with signature",
            Some(raw_token(
                &json!({"alg": "none"}),
                &Value::Object(claims(&|_| {})),
                b"sig",
            )),
            "alg \"none\"",
        ),
        (
            "HS256 keyed with the public key",
            Some(hs256),
            "algorithm HS256",
        ),
        (
            "unknown kid",
            Some(with_header(&|hd| hd.kid = Some("attacker".into()))),
            "not published",
        ),
        (
            "known kid, other key",
            Some(with_header(&|hd| hd.kid = Some("dev-1".into()))),
            "signature",
        ),
        ("tampered payload", Some(tampered), "signature"),
        (
            "truncated signature",
            Some(good[..good.len() - 10].to_string()),
            "signature",
        ),
        ("garbage", Some("this is not a token".into()), "malformed"),
        ("empty bearer", Some(String::new()), "missing bearer token"),
        (
            "oversized",
            Some(format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2])),
            "larger than",
        ),
        (
            "jku to an attacker's keys",
            Some(with_header(&|hd| {
                hd.kid = Some("attacker".into());
                hd.jku = Some("http://127.0.0.1:1/jwks".into());
            })),
            "not published",
        ),
        (
            "embedded jwk",
            Some(with_header(&|hd| {
                hd.kid = Some("attacker".into());
                hd.jwk = serde_json::from_value(attacker_jwk.clone()).ok();
            })),
            "not published",
        ),
        ("no authorization header", None, "missing bearer token"),
    ];
    let mut reasons = HashSet::new();
    for (name, token, expect) in &cases {
        let mut req = h
            .http
            .post(format!("{}/v1/credentials", h.base))
            .json(&json!({}));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        assert!(
            resp.headers().get("www-authenticate").is_some(),
            "{name}: no WWW-Authenticate"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["error"], "invalid_token", "{name}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(expect),
            "{name}: expected {expect:?} in {message:?}"
        );
        if let Some(t) = token {
            if t.len() > 20 {
                assert!(!message.contains(&t[..20]), "{name}: the token is echoed");
            }
        }
        reasons.insert(message.to_string());
    }
    assert!(reasons.len() >= 12, "reasons are specific: {reasons:?}");
    assert_eq!(h.lease_count().await, 0, "no lease rows");
    assert!(h.lease_roles().await.is_empty(), "no roles");

    // Key rotation: the issuer publishes a new key; a token signed with it is accepted.
    h.issuer.add_key("dev-2", KeyAlg::EdDsa, true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = h.issuer.mint_with("dev-2", &claims(&|_| {}));
    let (status, body) = h.issue(&rotated, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_claim_values_give_a_normal_lease_or_a_clean_4xx() {
    let policy = r#"
name = "hostile"
database = "app"
ttl = "5m"
[identity]
claims = { team = "red" }
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
"#;
    let h = Harness::start(&[policy]).await;
    let subjects = [
        "x'; DROP TABLE crm.customers; --".to_string(),
        "\"; DROP ROLE pgid_admin; --".to_string(),
        "a\\'b$$c$$".to_string(),
        "s".repeat(5000),
        "ünïcødé-主体-🔑".to_string(),
        "nul\u{0}byte".to_string(),
        "line\nbreak\r\ttab".to_string(),
    ];
    for subject in &subjects {
        let mut claims = h.issuer.claims(subject);
        claims.insert("team".into(), json!("red"));
        claims.insert("azp".into(), json!("'; SELECT pg_sleep(10); --"));
        let (status, body) = h.issue(&h.issuer.mint(&claims), json!({})).await;
        assert!(
            status == StatusCode::CREATED || status.is_client_error(),
            "{status} {body}"
        );
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::CREATED {
            let user = body["username"].as_str().unwrap();
            assert!(
                user.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{user}"
            );
            let id = body["lease_id"].as_str().unwrap();
            let db = h
                .connect_direct(user, &h.database_password(id))
                .await
                .unwrap();
            db.query_one("SELECT count(*) FROM crm.customers", &[])
                .await
                .unwrap();
        } else {
            assert!(body["message"].as_str().is_some(), "{body}");
        }
    }
    let su = h.superuser().await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM crm.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4, "the database is unharmed");
    assert!(su
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'pgid_admin'", &[])
        .await
        .unwrap()
        .is_some());
    // The exact subject is kept in pgid's state.
    let stored: i64 = su
        .query_one(
            "SELECT count(*) FROM pgid.leases WHERE subject = $1",
            &[&subjects[3]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_drops_the_role_and_terminates_its_backends() {
    let h = Harness::start(&[NIGHTLY]).await;
    let token = h.token("svc:nightly-report");
    let (_, lease) = h.issue(&token, json!({})).await;
    let id = lease["lease_id"].as_str().unwrap();
    let user = lease["username"].as_str().unwrap();
    let live = h
        .connect_direct(user, &h.database_password(id))
        .await
        .unwrap();
    live.query_one("SELECT 1", &[]).await.unwrap();

    let started = Instant::now();
    let (status, body) = h
        .call(
            Method::DELETE,
            &format!("/v1/credentials/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked");
    assert!(started.elapsed() < Duration::from_secs(5));
    let su = h.superuser().await;
    assert!(
        su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
            .await
            .unwrap()
            .is_none(),
        "role dropped"
    );
    assert!(
        live.query_one("SELECT 1", &[]).await.is_err(),
        "live backend terminated"
    );
    assert!(h
        .connect_direct(user, &h.database_password(id))
        .await
        .is_err());

    // Idempotent, and a revoked lease cannot be renewed.
    let (status, body) = h
        .call(
            Method::DELETE,
            &format!("/v1/credentials/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/v1/credentials/{id}/renew"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Someone else cannot revoke.
    let (_, other_lease) = h.issue(&token, json!({})).await;
    let other_id = other_lease["lease_id"].as_str().unwrap();
    let (status, _) = h
        .call(
            Method::DELETE,
            &format!("/v1/credentials/{other_id}"),
            Some(&h.token("svc:intruder")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_may_revoke_any_lease() {
    let h = Harness::start_with(
        &[NIGHTLY],
        "[[broker.admins]]\nsubject = \"ops:security\"\n",
    )
    .await;
    let (_, lease) = h.issue(&h.token("svc:nightly-report"), json!({})).await;
    let id = lease["lease_id"].as_str().unwrap();
    let (status, body) = h
        .call(
            Method::DELETE,
            &format!("/v1/credentials/{id}"),
            Some(&h.token("ops:security")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_lease_is_removed_by_the_reaper_after_expiry() {
    let short = NIGHTLY.replace("max_ttl = \"1h\"", "max_ttl = \"1h\"\n");
    let h = Harness::start(&[&short]).await;
    let (status, lease) = h
        .issue(&h.token("svc:nightly-report"), json!({"ttl": "2s"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{lease}");
    let id = lease["lease_id"].as_str().unwrap().to_string();
    let user = lease["username"].as_str().unwrap().to_string();
    let live = h
        .connect_direct(&user, &h.database_password(&id))
        .await
        .unwrap();
    let su = h.superuser().await;
    let gone = eventually(Duration::from_secs(10), || async {
        su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(gone, "role removed after expiry");
    // The row reaches its final state in the step after DROP ROLE.
    let expired = eventually(Duration::from_secs(5), || async {
        let state: String = su
            .query_one(
                "SELECT state FROM pgid.leases WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        state == "expired"
    })
    .await;
    assert!(expired, "lease recorded as expired");
    assert!(
        live.query_one("SELECT 1", &[]).await.is_err(),
        "its session was terminated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_reconciles_intent_rows_stray_roles_and_vanished_roles() {
    let mut h = Harness::start(&[NIGHTLY]).await;
    let (_, lease) = h.issue(&h.token("svc:nightly-report"), json!({})).await;
    let vanished_id = lease["lease_id"].as_str().unwrap().to_string();
    let vanished_role = lease["username"].as_str().unwrap().to_string();
    h.stop_pgid().await;

    let su = h.superuser().await;
    // A crash between the intent row and CREATE ROLE: the row's instance holds no lock.
    su.execute(
        "INSERT INTO pgid.leases (id, role_name, policy, database, issuer, subject, state, client_verifier, \
         connection_limit, expires_at, max_expires_at, instance_id) VALUES \
         ('00000000-0000-4000-8000-000000000001', 'pgid_nightly_report_crashed', 'nightly-report', 'app', 'i', 's', \
          'creating', 'v', 1, now() + interval '1 hour', now() + interval '1 hour', 424242)",
        &[],
    )
    .await
    .unwrap();
    // A crash after CREATE ROLE but with the row gone, as seen from the role side.
    su.batch_execute("CREATE ROLE pgid_nightly_report_stray LOGIN IN ROLE pgid_lease")
        .await
        .unwrap();
    // Roles pgid does not own, whatever their names: left alone.
    su.batch_execute("CREATE ROLE pgid_operator_admin LOGIN; CREATE ROLE pgid_p_lookalike NOLOGIN")
        .await
        .unwrap();
    // A lease whose role someone dropped by hand.
    su.batch_execute(&format!("DROP ROLE \"{vanished_role}\""))
        .await
        .unwrap();

    h.start_pgid().await.unwrap();
    let state = |id: &'static str| {
        let su = &su;
        async move {
            su.query_one(
                "SELECT state FROM pgid.leases WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    assert_eq!(
        state("00000000-0000-4000-8000-000000000001").await,
        "failed"
    );
    let exists = |r: &'static str| {
        let su = &su;
        async move {
            su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&r])
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(
        !exists("pgid_nightly_report_stray").await,
        "stray marked role removed"
    );
    assert!(exists("pgid_operator_admin").await, "unmarked role kept");
    assert!(exists("pgid_p_lookalike").await, "unmarked role kept");
    let vanished: (String, Option<String>) = {
        let r = su
            .query_one(
                "SELECT state, end_reason FROM pgid.leases WHERE id = $1::text::uuid",
                &[&vanished_id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(vanished.0, "revoked");
    assert!(vanished.1.unwrap().contains("outside pgid"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_requests_get_fifty_distinct_working_leases() {
    let h = Harness::start(&[NIGHTLY
        .replace("max_connections = 3", "max_connections = 2")
        .as_str()])
    .await;
    let token = h.token("svc:nightly-report");
    // Warm up (key fetch, pools).
    h.issue(&token, json!({})).await;

    let mut sequential = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (status, _) = h.issue(&token, json!({})).await;
        assert_eq!(status, StatusCode::CREATED);
        sequential.push(t.elapsed());
    }
    let started = Instant::now();
    let results = futures::future::join_all((0..50).map(|_| {
        let h = &h;
        let token = token.clone();
        async move {
            let t = Instant::now();
            let r = h.issue(&token, json!({})).await;
            (r, t.elapsed())
        }
    }))
    .await;
    let wall = started.elapsed();
    let mut users = HashSet::new();
    let mut concurrent = Vec::new();
    for ((status, lease), took) in &results {
        assert_eq!(*status, StatusCode::CREATED, "{lease}");
        users.insert(lease["username"].as_str().unwrap().to_string());
        concurrent.push(*took);
    }
    assert_eq!(users.len(), 50);
    for ((_, lease), _) in &results {
        let db = h
            .connect_direct(
                lease["username"].as_str().unwrap(),
                &h.database_password(lease["lease_id"].as_str().unwrap()),
            )
            .await
            .expect("every lease logs in");
        db.query_one("SELECT 1", &[]).await.unwrap();
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    println!(
        "issue latency (debug build): sequential p50 {:?} p99 {:?}; 50 concurrent p50 {:?} p99 {:?}, wall {:?}",
        pct(&mut sequential, 0.5),
        pct(&mut sequential, 0.99),
        pct(&mut concurrent, 0.5),
        pct(&mut concurrent, 0.99),
        wall
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_selection_and_request_errors() {
    let second = NIGHTLY.replace("name = \"nightly-report\"", "name = \"nightly-b\"");
    let h = Harness::start(&[NIGHTLY, &second]).await;
    let token = h.token("svc:nightly-report");
    let (status, body) = h.issue(&token, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["policies"], json!(["nightly-b", "nightly-report"]));
    let (status, body) = h.issue(&token, json!({"policy": "nightly-b"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["policy"], "nightly-b");

    let (status, body) = h.issue(&h.token("svc:unknown"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "no_policy");
    let (status, body) = h
        .issue(&token, json!({"policy": "nightly-b", "database": "other"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_policy"))
    );
    let (status, body) = h
        .issue(&token, json!({"policy": "nightly-b", "ttl": "3h"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("max_ttl"));
    let (status, body) = h
        .issue(&token, json!({"policy": "nightly-b", "ttl": "soon"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h
        .issue(&token, json!({"policy": "nightly-b", "tll": "5m"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let resp = h
        .http
        .post(format!("{}/v1/credentials", h.base))
        .header("authorization", format!("Bearer {token}"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let (status, body) = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("pgid_leases_issued_total 1"), "{metrics}");
    assert!(
        metrics.contains("pgid_credential_denials_total{reason=\"no_policy\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgid_leases{state=\"active\"} 1"),
        "{metrics}"
    );
    let (status, body) = h.call(Method::GET, "/nope", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}
