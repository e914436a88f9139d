//! Statements the server cannot parse, generated: every statement of a corpus is broken at each
//! token (cut after it, dropped, doubled, swapped with the next); each variant pg_query rejects is
//! sent directly to Postgres and through pgid, in the simple and the extended protocol, under
//! `standard_conforming_strings` on and off. The client must get the same SQLSTATE, message and
//! position both ways — pgid answers for the server, and never forwards the statement.

mod common;

use common::{Harness, AGENT};
use serde_json::json;
use tokio_postgres::{Client, SimpleQueryMessage};

const CORPUS: &[&str] = &[
    "SELECT id, name FROM crm.customers WHERE id > 1 ORDER BY name LIMIT 5",
    "SELECT 'café €' AS \"prix €\", E'a\\nb', $$dollar 'quoted'$$, U&'d\\0061t\\+000061'",
    "SELECT count(*) FILTER (WHERE id > 2) OVER (PARTITION BY name ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM crm.customers",
    "INSERT INTO crm.notes (customer_id, body) VALUES (1, 'x'), (2, 'y') ON CONFLICT DO NOTHING RETURNING id",
    "UPDATE crm.tickets SET status = 'closed' WHERE id IN (SELECT id FROM crm.tickets WHERE status = 'open')",
    "DELETE FROM crm.notes USING crm.customers c WHERE c.id = notes.customer_id AND c.name LIKE 'A%'",
    "WITH recent AS (SELECT * FROM crm.orders WHERE created_at > now() - interval '1 day') SELECT * FROM recent",
    "SELECT CASE WHEN id % 2 = 0 THEN 'even' ELSE 'odd' END, coalesce(email, '-') FROM crm.customers",
    "SELECT a.id FROM crm.customers a JOIN crm.orders b ON a.id = b.customer_id GROUP BY a.id HAVING sum(b.total) > 10",
    "CREATE TEMP TABLE t (a int PRIMARY KEY, b text DEFAULT 'x' CHECK (b <> ''), c numeric(10, 2))",
    "ALTER TABLE t ADD COLUMN d timestamptz NOT NULL DEFAULT now()",
    "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv, HEADER true)",
    "SELECT ARRAY[1, 2, 3][1:2], '{1,2}'::int[], row(1, 'a')::record IS NOT NULL",
    "SELECT jsonb_build_object('k', 1) -> 'k', '{\"a\": [1, 2]}'::jsonb #>> '{a,1}'",
    "PREPARE p (int) AS SELECT $1 + 1; EXECUTE p(1); DEALLOCATE p",
    "BEGIN; SELECT 1; COMMIT",
    "SELECT 1 -- comment\n + /* block /* nested */ */ 2",
    "EXPLAIN (ANALYZE false, COSTS off) SELECT * FROM crm.customers",
    "SET search_path = crm, public",
    "SELECT x FROM generate_series(1, 3) AS g(x) WHERE x BETWEEN SYMMETRIC 3 AND 1",
    "SELECT 1::float(0)",
    "GRANT SELECT ON crm.notes TO none",
];

/// What a client learns from an error: SQLSTATE, message, position.
type Answer = Option<(String, String, Option<u32>)>;

fn answer(r: Result<(), tokio_postgres::Error>) -> Answer {
    let e = r.err()?;
    let db = e.as_db_error()?;
    let position = match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
        _ => None,
    };
    Some((
        db.code().code().to_string(),
        db.message().to_string(),
        position,
    ))
}

async fn simple(c: &Client, sql: &str) -> Answer {
    answer(
        c.simple_query(sql)
            .await
            .map(|_: Vec<SimpleQueryMessage>| ()),
    )
}

async fn extended(c: &Client, sql: &str) -> Answer {
    answer(c.prepare(sql).await.map(|_| ()))
}

/// The variants of `sql` that pg_query cannot parse under `options`.
fn broken(sql: &str, options: pg_query::ParserOptions) -> Vec<String> {
    let Ok(scanned) = pg_query::scan(sql) else {
        return Vec::new();
    };
    let tokens: Vec<(usize, usize)> = scanned
        .tokens
        .iter()
        .map(|t| (t.start as usize, t.end as usize))
        .collect();
    let mut out = Vec::new();
    for (i, &(start, end)) in tokens.iter().enumerate() {
        out.push(sql[..end].to_string());
        out.push(format!("{}{}", &sql[..start], &sql[end..]));
        out.push(format!("{}{} {}", &sql[..end], " ", &sql[start..]));
        if let Some(&(s2, e2)) = tokens.get(i + 1) {
            out.push(format!(
                "{}{}{}{}{}",
                &sql[..start],
                &sql[s2..e2],
                &sql[end..s2],
                &sql[start..end],
                &sql[e2..]
            ));
        }
    }
    out.retain(|v| {
        !v.trim().is_empty()
            && matches!(pg_query::parse(v, options), Err(pg_query::Error::Parse(ref m)) if !m.contains("stack depth"))
    });
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_unparsable_variant_is_answered_as_the_server_answers_it() {
    let h = Harness::start(&[AGENT]).await;
    let lease = h.lease("agent:app", json!({})).await;
    let direct = h.connect_lease_direct(&lease).await;
    let proxied = h.connect_proxy(&lease).await.unwrap();
    let before = h.count("SELECT count(*) FROM crm.notes").await;
    let (mut compared, mut differences) = (0, Vec::new());
    for (scs, options) in [
        ("on", pg_query::ParserOptions::DEFAULT),
        (
            "off",
            pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
        ),
    ] {
        for c in [&direct, &proxied] {
            c.batch_execute(&format!(
                "SET standard_conforming_strings = {scs}; SET escape_string_warning = off"
            ))
            .await
            .unwrap();
        }
        for sql in CORPUS.iter().flat_map(|s| broken(s, options)) {
            for extended_protocol in [false, true] {
                let (d, p) = if extended_protocol {
                    (
                        extended(&direct, &sql).await,
                        extended(&proxied, &sql).await,
                    )
                } else {
                    (simple(&direct, &sql).await, simple(&proxied, &sql).await)
                };
                compared += 1;
                if d.is_none() {
                    // pg_query, a newer grammar, rejects what this server accepts: never seen.
                    differences.push(format!("server accepted {sql:?}"));
                } else if d != p {
                    differences.push(format!(
                        "{sql:?} (scs {scs}, extended {extended_protocol}):\n  direct {d:?}\n  pgid   {p:?}"
                    ));
                }
            }
        }
    }
    assert!(compared > 1000, "only {compared} variants");
    assert!(
        differences.is_empty(),
        "{} of {compared} differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert_eq!(h.count("SELECT count(*) FROM crm.notes").await, before);
    println!("{compared} unparsable variants answered alike");
}
