//! Red-team round 12b: new classes after round 12 (see tests/red12.rs), by a second reviewer.
//! Every test asserts a real effect (a masked value in the bytes received, a row changed) and
//! failed while the weakness it names was there; each is fixed: 1–2 an output computed from a
//! masked column is redacted, never `partial`/`hash`; 3 the retry fingerprint includes the
//! reported settings, and a session that may have made relations never reuses an approval;
//! 4 `min_rows` trusts an estimate only for column-versus-value predicates
//! (`src/sql/estimable.rs`). Tests marked HELD (and the `survey` batteries) stay for coverage.
//!
//! Findings:
//! 1. A mask method applied to a derived value: `partial` keeps the last `keep` characters of
//!    whatever expression the agent writes, so `'x' || substr(card_number, k, 4)` shows any four
//!    characters: `red12b_partial_mask_of_a_derived_value_shows_any_four_characters_of_the_card`.
//! 2. Same class, `hash`: a tainted output whose value is the agent's own text
//!    (`left(ssn, 0) || '7'`) is hashed with the column's key — a chosen-text oracle; compared
//!    with `substr(ssn, k, 1)` hashed it gives every character:
//!    `red12b_hash_mask_of_a_derived_value_is_a_chosen_text_oracle_for_the_ssn`.
//! 3. A retry-mode approval's fingerprint ignores settings that give literals their meaning
//!    (DateStyle, TimeZone; IntervalStyle likely too, not tested): `'01/02/2026'` approved as
//!    2 January runs as 1 February:
//!    `red12b_retry_approval_given_under_one_datestyle_runs_under_another`, and a timestamptz
//!    literal approved under UTC runs under UTC-12:
//!    `red12b_retry_approval_given_under_one_time_zone_runs_under_another`. Likewise the
//!    session's own data the text reads (a temporary table filled after the approval):
//!    `red12b_retry_approval_given_over_one_temporary_table_runs_over_another`.
//! 4. `min_rows` trusts the planner's estimate, which the statement's own predicate sets
//!    (default selectivities multiply): a DELETE of every order estimated at 1 row runs without
//!    review: `red12b_min_rows_estimate_shrunk_by_the_predicate_deletes_every_order_unreviewed`.

mod common;

use common::wire::{errors, leaked_or_local_part as leaked, Message};
use common::Harness;

/// Reads and writes customers and notes; e-mail masked.
const MASKED_WRITER: &str = r#"
name = "masked-writer"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:masked-writer"
[[grant]]
privileges = ["SELECT", "INSERT", "UPDATE", "DELETE"]
on = ["crm.customers", "crm.notes"]
[[mask]]
columns = ["crm.customers.email"]
method = "redact"
"#;

const OWNER_SETUP: &str = "CREATE VIEW crm.contacts AS SELECT id, name, email FROM crm.customers;
    CREATE TABLE crm.vip_customers () INHERITS (crm.customers);
    INSERT INTO crm.vip_customers (name, email) VALUES ('Vip One', 'vip.secret@example.com');
    GRANT SELECT ON crm.contacts, crm.vip_customers TO PUBLIC;";

async fn battery(h: &Harness, subject: &str, steps: &[&str]) -> (Vec<String>, Vec<String>) {
    let secrets = h.emails().await;
    let mut leaks = Vec::new();
    let mut notes = Vec::new();
    for sql in steps {
        // A fresh session each, so one step's error state cannot spoil the next.
        let mut c = h.raw_client(subject, &[]).await.unwrap();
        let mut all = Vec::new();
        for part in sql.split(" ;; ") {
            let answer = c.query(part).await;
            notes.push(format!("{part} -> {:?}", errors(&answer)));
            all.extend(answer);
        }
        let l = leaked(&secrets, &all);
        if !l.is_empty() {
            leaks.push(format!("{sql}: {l:?}"));
        }
    }
    (leaks, notes)
}

#[tokio::test(flavor = "multi_thread")]
async fn red12b_survey_reads() {
    let h = Harness::start_with_postgres(&[], OWNER_SETUP, &[common::EMAIL_MASKED], "").await;
    let steps = [
        "SELECT (c.*)::text FROM crm.customers c",
        "SELECT c::text FROM crm.customers c",
        "SELECT ROW(c.*) FROM crm.customers c",
        "SELECT array_agg(c)::text FROM crm.customers c",
        "SELECT 'x' || c FROM crm.customers c",
        "SELECT (c).* FROM crm.customers c",
        "SELECT (x).email FROM (SELECT c AS x FROM crm.customers c) s",
        "SELECT ((SELECT c FROM crm.customers c LIMIT 1)).email",
        "SELECT ((ARRAY(SELECT c FROM crm.customers c))[1]).email",
        "TABLE crm.customers",
        "SELECT x FROM crm.customers c, LATERAL upper(c.email) x",
        "SELECT x FROM crm.customers c, LATERAL regexp_matches(c.email, '.*') x",
        "SELECT x FROM crm.customers c, LATERAL unnest(ARRAY[c.email]) x",
        "SELECT x.* FROM crm.customers c, LATERAL ROWS FROM (upper(c.email), lower(c.name)) x",
        "SELECT lag(email) OVER (ORDER BY id) FROM crm.customers",
        "SELECT email FROM crm.customers GROUP BY GROUPING SETS ((email), ())",
        "SELECT * FROM json_populate_record(null::crm.customers, (SELECT row_to_json(c) FROM crm.customers c LIMIT 1))",
        "SELECT * FROM jsonb_to_record((SELECT to_jsonb(c) FROM crm.customers c LIMIT 1)) AS x(email text)",
        "SELECT * FROM jsonb_to_record((SELECT jsonb_build_object('e', email) FROM crm.customers LIMIT 1)) AS x(e text)",
        "WITH w AS MATERIALIZED (SELECT email FROM crm.customers) SELECT upper(email) FROM w",
        "PREPARE p AS SELECT upper(email) FROM crm.customers ;; EXECUTE p",
        "BEGIN ;; DECLARE k CURSOR FOR SELECT upper(email) FROM crm.customers ;; FETCH ALL FROM k",
        "COPY (SELECT * FROM crm.contacts) TO STDOUT",
        "COPY (SELECT upper(email) FROM crm.contacts) TO STDOUT",
        "COPY (SELECT * FROM crm.vip_customers) TO STDOUT",
        "COPY crm.vip_customers TO STDOUT",
        "SELECT upper(email) FROM crm.vip_customers",
        "SELECT upper(email) FROM crm.contacts",
        "SELECT upper(c.email) FROM crm.contacts c",
        "SELECT upper(e) FROM crm.customers AS c(i, n, e)",
        "SELECT xmltable.* FROM crm.customers c, XMLTABLE('/a' PASSING xmlelement(name a, c.email) COLUMNS v text PATH '.')",
        "SELECT j FROM crm.customers c, LATERAL jsonb_each_text(to_jsonb(c)) j",
        "SELECT string_agg(DISTINCT email, ',') FROM crm.customers",
        "SELECT format('%s', c) FROM crm.customers c",
        "SELECT * FROM (VALUES (1)) v(x), LATERAL (SELECT upper(email) FROM crm.customers) s",
        "SELECT upper(email) FROM crm.customers WHERE email::int > 0",
        "SELECT 1 FROM crm.customers WHERE email::int > 0",
        "SELECT 1 FROM crm.vip_customers WHERE email::int > 0",
        "SELECT 1 FROM crm.contacts WHERE email::int > 0",
        "SELECT 1 FROM crm.customers ORDER BY email::int",
        "SELECT id FROM crm.customers c WHERE c = c AND (c.email)::numeric > 0",
        "SELECT current_setting('x.y', true), upper(s.e) FROM (SELECT email FROM ONLY crm.customers) s(e)",
        "SELECT e FROM crm.customers c CROSS JOIN LATERAL (SELECT c.email OFFSET 0) s(e)",
        "SELECT (SELECT max(email) FROM crm.customers)",
        "SELECT * FROM crm.customers c JOIN LATERAL (SELECT upper(c.email)) s(e) ON true",
    ];
    let (leaks, notes) = battery(&h, "agent:masked", &steps).await;
    eprintln!("NOTES {notes:#?}");
    assert!(
        leaks.is_empty(),
        "masked e-mail in clear: {leaks:#?}\n{notes:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn red12b_survey_writes() {
    let h = Harness::start_with_postgres(&[], OWNER_SETUP, &[MASKED_WRITER], "").await;
    let read = " ;; SELECT name, body FROM crm.customers FULL JOIN crm.notes ON false";
    let steps: Vec<String> = [
        "UPDATE crm.customers SET name = name WHERE id = 1 RETURNING email",
        "UPDATE crm.customers SET name = email WHERE id = 1",
        "UPDATE crm.customers SET (name) = (SELECT email FROM crm.customers x WHERE x.id = 2) WHERE id = 2",
        "UPDATE crm.customers SET (name, ssn) = ROW(email, ssn) WHERE id = 3",
        "UPDATE crm.customers SET (name, ssn) = (SELECT email, ssn FROM crm.customers x WHERE x.id = 3) WHERE id = 3",
        "UPDATE crm.customers c SET name = d.email FROM crm.customers d WHERE d.id = c.id AND c.id = 4",
        "INSERT INTO crm.notes (body) SELECT email FROM crm.customers",
        "INSERT INTO crm.customers AS c (id, name, email) VALUES (1, 'x', 'y') ON CONFLICT (id) DO UPDATE SET name = c.email",
        "INSERT INTO crm.customers (id, name, email) VALUES (2, 'x', 'y') ON CONFLICT (id) DO UPDATE SET name = crm.customers.email",
        "INSERT INTO crm.customers (id, name, email) VALUES (3, 'x', 'y') ON CONFLICT (id) DO UPDATE SET name = customers.email",
        "INSERT INTO crm.customers AS c (id, name, email) VALUES (4, 'x', 'y') ON CONFLICT (id) DO UPDATE SET (name, ssn) = (c.email, c.ssn)",
        "INSERT INTO crm.customers AS c (id, name, email) VALUES (5, 'x', 'y') ON CONFLICT (id) DO UPDATE SET name = c.name RETURNING c.email",
        "INSERT INTO crm.customers AS c (id, name, email) VALUES (5, 'x', 'y') ON CONFLICT (id) DO UPDATE SET name = c.name RETURNING upper(c.email)",
        "INSERT INTO crm.customers AS c (id, name, email) VALUES (5, 'x', 'y') ON CONFLICT (id) DO UPDATE SET name = c.name RETURNING c",
        "INSERT INTO crm.customers AS c (id, name, email) VALUES (5, 'x', 'y') ON CONFLICT (id) DO UPDATE SET name = c.name WHERE c.email::int > 0",
        "MERGE INTO crm.notes n USING crm.customers c ON false WHEN NOT MATCHED THEN INSERT (body) VALUES (c.email)",
        "WITH s AS (SELECT email FROM crm.customers) MERGE INTO crm.notes n USING s ON false WHEN NOT MATCHED THEN INSERT (body) VALUES (s.email)",
        "MERGE INTO crm.customers c USING (VALUES (1)) v(i) ON c.id = v.i WHEN MATCHED THEN UPDATE SET name = c.email",
        "DELETE FROM crm.notes USING crm.customers c WHERE c.id < 0 RETURNING c.email",
        "UPDATE crm.customers c SET name = name WHERE id = 1 RETURNING c",
        "UPDATE crm.customers c SET name = name WHERE id = 1 RETURNING c.*",
        "UPDATE crm.customers c SET name = name WHERE id = 1 RETURNING *",
        "DELETE FROM crm.customers WHERE id = 999 AND email::int > 0",
    ]
    .iter()
    .map(|s| format!("{s}{read}"))
    .collect();
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let (leaks, notes) = battery(&h, "agent:masked-writer", &steps).await;
    eprintln!("NOTES {notes:#?}");
    assert!(
        leaks.is_empty(),
        "masked e-mail in clear: {leaks:#?}\n{notes:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Approvals: deleting crm.orders needs a reviewer (REVIEWED, retry mode). Each attack deletes
// one order; the row must still be there after it.
// ---------------------------------------------------------------------------------------------

use bytes::BytesMut;
use pgid::proxy::wire::frontend;

async fn proto_prepare(c: &mut common::wire::RawClient, name: &str, sql: &str) -> Vec<Message> {
    let mut out = BytesMut::new();
    frontend::parse(&mut out, name.as_bytes(), sql.as_bytes(), &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    c.until_ready(1).await
}

async fn proto_execute(c: &mut common::wire::RawClient, name: &str) -> Vec<Message> {
    let mut out = BytesMut::new();
    frontend::bind_values(&mut out, name.as_bytes(), &[]);
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    c.until_ready(1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn red12b_survey_approvals() {
    let h = Harness::start(&[common::REVIEWED]).await;
    let n = h.count("SELECT count(*) FROM crm.orders").await;
    assert!(n >= 12, "only {n} orders");
    let mut deleted = Vec::new();
    let mut notes = Vec::new();
    // (id, steps): "P:name:sql" prepares over the protocol, "E:name" executes over the protocol.
    let cases: Vec<(i64, Vec<String>)> = vec![
        (1, vec!["COPY (DELETE FROM crm.orders WHERE id = 1 RETURNING id) TO STDOUT".into()]),
        (2, vec!["EXPLAIN ANALYZE DELETE FROM crm.orders WHERE id = 2".into()]),
        (3, vec!["EXPLAIN ANALYZE WITH d AS (DELETE FROM crm.orders WHERE id = 3 RETURNING id) SELECT * FROM d".into()]),
        (4, vec!["P:p4:DELETE FROM crm.orders WHERE id = 4".into(), "EXECUTE p4".into()]),
        (5, vec!["PREPARE p5 AS DELETE FROM crm.orders WHERE id = 5".into(), "E:p5".into()]),
        (6, vec!["CREATE TEMP TABLE t6 AS WITH d AS (DELETE FROM crm.orders WHERE id = 6 RETURNING id) SELECT * FROM d".into()]),
        (7, vec!["COPY (WITH d AS (DELETE FROM crm.orders WHERE id = 7 RETURNING id) SELECT * FROM d) TO STDOUT".into()]),
        (8, vec!["BEGIN".into(), "DECLARE k CURSOR FOR SELECT * FROM crm.orders WHERE id = 8 FOR UPDATE".into(), "FETCH k".into(), "DELETE FROM crm.orders WHERE CURRENT OF k".into(), "COMMIT".into()]),
        (9, vec!["MERGE INTO crm.orders o USING (SELECT 9 AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE".into()]),
        (10, vec!["WITH d AS (DELETE FROM crm.orders WHERE id = 10 RETURNING id) SELECT * FROM d".into()]),
        (11, vec!["P:p11:DELETE FROM crm.orders WHERE id = 11".into(), "EXPLAIN ANALYZE EXECUTE p11".into()]),
        (12, vec!["P:p12:DELETE FROM crm.orders WHERE id = 12".into(), "P:q12:EXECUTE p12".into(), "E:q12".into()]),
    ];
    for (id, steps) in cases {
        let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
        for step in &steps {
            let answer = if let Some(rest) = step.strip_prefix("P:") {
                let (name, sql) = rest.split_once(':').unwrap();
                proto_prepare(&mut c, name, sql).await
            } else if let Some(name) = step.strip_prefix("E:") {
                proto_execute(&mut c, name).await
            } else {
                c.query(step).await
            };
            notes.push(format!("{step} -> {:?}", errors(&answer)));
        }
        let left = h
            .count(&format!("SELECT count(*) FROM crm.orders WHERE id = {id}"))
            .await;
        if left == 0 {
            deleted.push(format!("{id}: {steps:?}"));
        }
    }
    eprintln!("NOTES {notes:#?}");
    assert!(
        deleted.is_empty(),
        "deleted unreviewed: {deleted:#?}\n{notes:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn red12b_survey_batches() {
    let h = Harness::start_with_postgres(&[], OWNER_SETUP, &[MASKED_WRITER], "").await;
    let steps = [
        "SELECT 1; SELECT upper(email) FROM crm.customers",
        "SELECT upper(email), 1 FROM crm.customers; SELECT 1, upper(email) FROM crm.customers",
        "SELECT upper(name) FROM crm.customers; SELECT upper(email) FROM crm.customers",
        "COPY (SELECT 1) TO STDOUT; SELECT 1, upper(email) FROM crm.customers",
        "SHOW search_path; SELECT 1, upper(email) FROM crm.customers",
        "INSERT INTO crm.notes (body) VALUES ('a') RETURNING 1; SELECT 1, upper(email) FROM crm.customers",
        "SELECT 1, upper(email) FROM crm.customers; INSERT INTO crm.notes (body) VALUES ('a') RETURNING 1",
        "PREPARE a AS SELECT 1 ;; EXECUTE a; SELECT 1, upper(email) FROM crm.customers",
        "VALUES ((SELECT upper(email) FROM crm.customers LIMIT 1))",
        "VALUES (1, (SELECT upper(email) FROM crm.customers LIMIT 1))",
        "SELECT * FROM (VALUES ((SELECT upper(email) FROM crm.customers LIMIT 1))) v",
        "SELECT ARRAY(SELECT email FROM crm.customers)",
        "BEGIN; SELECT 1, upper(email) FROM crm.customers; COMMIT",
        "EXPLAIN SELECT 1; SELECT 1, upper(email) FROM crm.customers",
        "BEGIN ;; DECLARE k CURSOR FOR SELECT id, name FROM crm.customers ;; FETCH ALL k; SELECT 1, upper(email) FROM crm.customers",
        "SELECT 1 UNION ALL SELECT 2; SELECT 1, upper(email) FROM crm.customers",
        "SELECT x FROM (SELECT upper(email) FROM crm.customers) s(x) ORDER BY 1",
        "SELECT x.upper FROM (SELECT upper(email) FROM crm.customers) x",
        "SELECT upper FROM (SELECT upper(email) FROM crm.customers) x",
        "WITH w AS (SELECT upper(email) AS u FROM crm.customers) SELECT u FROM w",
        "SELECT (SELECT upper(email) FROM crm.customers c2 WHERE c2.id = c.id) FROM crm.customers c",
        "SELECT id, (SELECT c.email) FROM crm.customers c",
        "SELECT * FROM crm.customers c, LATERAL (SELECT c.email || '') s",
        "SELECT s.* FROM crm.customers c, LATERAL (SELECT c.email || '') s",
        "SELECT * FROM crm.customers c NATURAL JOIN (SELECT email || '' AS name FROM crm.customers) s",
        "SELECT * FROM (SELECT 1 AS id, 'x' AS name) s NATURAL RIGHT JOIN (SELECT id, email AS name FROM crm.customers) t",
    ];
    let (leaks, notes) = battery(&h, "agent:masked-writer", &steps).await;
    eprintln!("NOTES {notes:#?}");
    assert!(
        leaks.is_empty(),
        "masked e-mail in clear: {leaks:#?}\n{notes:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 1 (class: a mask method applied to a derived value). A tainted output (a function,
// operator, cast … over a masked column) is masked "as a whole, by the column's method". For
// `partial` that keeps the derived value's last `keep` characters — and the agent chooses which
// characters of the column end the derived value. `'x' || substr(card_number, k, 4)` is five
// characters long, so `partial` (keep = 4) shows four characters of the card in clear, at any
// offset k the agent likes: four queries (or four outputs of one) give the whole card number.
// ---------------------------------------------------------------------------------------------

const CARD_PARTIAL: &str = r#"
name = "card-partial"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:card"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[[mask]]
columns = ["crm.customers.card_number"]
method = "partial"
keep = 4
"#;

#[tokio::test(flavor = "multi_thread")]
async fn red12b_partial_mask_of_a_derived_value_shows_any_four_characters_of_the_card() {
    let h = Harness::start(&[CARD_PARTIAL]).await;
    // A card whose digits all differ by position, so nothing is guessed.
    h.superuser()
        .await
        .execute(
            "UPDATE crm.customers SET card_number = '4929381726354857' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    let card: String = h
        .superuser()
        .await
        .query_one("SELECT card_number FROM crm.customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(card.len(), 16);
    let mut c = h.raw_client("agent:card", &[]).await.unwrap();
    let answer = c
        .query(
            "SELECT 'x' || substr(card_number, 1, 4), 'x' || substr(card_number, 5, 4), \
             'x' || substr(card_number, 9, 4), card_number FROM crm.customers WHERE id = 1",
        )
        .await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let row = answer
        .iter()
        .find_map(|m| match m.decoded() {
            pgid::proxy::wire::backend::Backend::DataRow { .. } => Some(m.body.clone()),
            _ => None,
        })
        .expect("a row");
    // DataRow: i16 count, then (i32 len, bytes) per column.
    let mut cols = Vec::new();
    let mut at = 2;
    while at + 4 <= row.len() {
        let len = i32::from_be_bytes(row[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            cols.push(String::new());
            continue;
        }
        cols.push(String::from_utf8_lossy(&row[at..at + len as usize]).into_owned());
        at += len as usize;
    }
    let tail = |s: &str| s.trim_start_matches('*').to_string();
    let rebuilt = format!(
        "{}{}{}{}",
        tail(&cols[0]),
        tail(&cols[1]),
        tail(&cols[2]),
        tail(&cols[3])
    );
    assert_ne!(
        rebuilt, card,
        "the whole card number rebuilt from partial masks of derived values: {cols:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 2 (class of FINDING 1, `hash`): a tainted output is hashed with the column's key as a
// whole, whatever it is. `left(ssn, 0) || '7'` is tainted (it reads ssn) but its value is the
// agent's own '7': its hash is the HMAC of a chosen text — an oracle. `substr(ssn, k, 1)` hashed
// is compared with the eleven hashes of '0'…'9' and '-': every character of every SSN, in
// one statement.
// ---------------------------------------------------------------------------------------------

const SSN_HASHED: &str = r#"
name = "ssn-hashed"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:ssn"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
[[mask]]
columns = ["crm.customers.ssn"]
method = "hash"
"#;

fn data_row_columns(answer: &[Message]) -> Vec<Vec<String>> {
    answer
        .iter()
        .filter_map(|m| match m.decoded() {
            pgid::proxy::wire::backend::Backend::DataRow(body) => {
                let mut cols = Vec::new();
                let mut at = 2;
                while at + 4 <= body.len() {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                    at += 4;
                    if len < 0 {
                        cols.push(String::new());
                        continue;
                    }
                    cols.push(String::from_utf8_lossy(&body[at..at + len as usize]).into_owned());
                    at += len as usize;
                }
                Some(cols)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn red12b_hash_mask_of_a_derived_value_is_a_chosen_text_oracle_for_the_ssn() {
    let h = Harness::start(&[SSN_HASHED]).await;
    let ssn: String = h
        .superuser()
        .await
        .query_one("SELECT ssn FROM crm.customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    let alphabet: Vec<char> = "0123456789-".chars().collect();
    let mut outputs: Vec<String> = (1..=ssn.chars().count())
        .map(|k| format!("substr(ssn, {k}, 1)"))
        .collect();
    for ch in &alphabet {
        outputs.push(format!("left(ssn, 0) || '{ch}'"));
    }
    let sql = format!(
        "SELECT {} FROM crm.customers WHERE id = 1",
        outputs.join(", ")
    );
    let mut c = h.raw_client("agent:ssn", &[]).await.unwrap();
    let answer = c.query(&sql).await;
    assert!(errors(&answer).is_empty(), "{answer:?}");
    let row = data_row_columns(&answer).remove(0);
    let n = ssn.chars().count();
    let dictionary: Vec<(&String, char)> = row[n..].iter().zip(alphabet.iter().copied()).collect();
    let rebuilt: String = row[..n]
        .iter()
        .map(|hash| {
            dictionary
                .iter()
                .find(|(h, _)| *h == hash)
                .map_or('?', |(_, c)| *c)
        })
        .collect();
    assert_ne!(
        rebuilt, ssn,
        "the SSN rebuilt from hashes of derived values against hashes of chosen texts: {row:?}"
    );
}

/// HELD: a portal fetched in parts, whose second part fails on a masked value (the error text
/// quotes it): the text is withheld on a later Execute of the portal too, in the same batch or in
/// a later one (the portal kept open by a transaction), and after a `FETCH` of a cursor.
#[tokio::test(flavor = "multi_thread")]
async fn red12b_error_text_of_a_later_execute_of_a_suspended_portal() {
    let h = Harness::start(&[common::EMAIL_MASKED]).await;
    let secrets = h.emails().await;
    let sql: &[u8] =
        b"SELECT id FROM crm.customers WHERE CASE WHEN id = 1 THEN true ELSE email::int > 0 END";
    let mut leaks = Vec::new();
    // Same batch.
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"", sql, &[]);
    frontend::bind_values(&mut out, b"", &[]);
    frontend::describe(&mut out, frontend::Target::Portal, b"");
    frontend::execute(&mut out, b"", 1);
    frontend::execute(&mut out, b"", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let a = c.until_ready(1).await;
    leaks.push(format!(
        "same batch: {:?} {:?}",
        leaked(&secrets, &a),
        errors(&a)
    ));
    // Later batch, named portal in a transaction.
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let _ = c.query("BEGIN").await;
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"s", sql, &[]);
    frontend::bind_portal(&mut out, b"p", b"s", &[]);
    frontend::describe(&mut out, frontend::Target::Portal, b"p");
    frontend::execute(&mut out, b"p", 1);
    frontend::sync(&mut out);
    c.send(&out).await;
    let a1 = c.until_ready(1).await;
    let mut out = BytesMut::new();
    frontend::execute(&mut out, b"p", 0);
    frontend::sync(&mut out);
    c.send(&out).await;
    let a2 = c.until_ready(1).await;
    leaks.push(format!(
        "later batch: {:?} {:?} / {:?} {:?}",
        leaked(&secrets, &a1),
        errors(&a1),
        leaked(&secrets, &a2),
        errors(&a2)
    ));
    // SQL cursor over a statement that only chooses rows by the masked column.
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    let _ = c.query("BEGIN").await;
    let d = c
        .query(std::str::from_utf8(&[b"DECLARE k CURSOR FOR ", sql].concat()).unwrap())
        .await;
    let f1 = c.query("FETCH 1 FROM k").await;
    let f2 = c.query("FETCH ALL FROM k").await;
    leaks.push(format!(
        "cursor: {:?} / {:?} {:?} / {:?} {:?}",
        errors(&d),
        leaked(&secrets, &f1),
        errors(&f1),
        leaked(&secrets, &f2),
        errors(&f2)
    ));
    eprintln!("PORTAL {leaks:#?}");
    assert!(
        !leaks.iter().any(|l| l.contains('@')),
        "masked e-mail in an error text: {leaks:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 3 (class: a retry-mode approval's fingerprint holds the text, not the settings that
// give its literals their meaning). Round 12 added standard_conforming_strings (lexing); the
// same holds for DateStyle (and TimeZone, IntervalStyle …): `'01/02/2026'` is 2 January under
// MDY and 1 February under DMY. The reviewer approves a DELETE of the orders made before
// 2 January (as the session read it when it asked); the agent sets DateStyle to DMY and runs
// the same text: it deletes a month more of orders.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn red12b_retry_approval_given_under_one_datestyle_runs_under_another() {
    let h = Harness::start(&[common::REVIEWED]).await;
    let su = h.superuser().await;
    su.batch_execute(
        "UPDATE crm.orders SET created_at = '2026-01-01' WHERE id IN (1, 2);
         UPDATE crm.orders SET created_at = '2026-01-20' WHERE id IN (3, 4, 5);
         UPDATE crm.orders SET created_at = '2026-06-01' WHERE id > 5;",
    )
    .await
    .unwrap();
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    let shown = c.query("SHOW DateStyle").await;
    assert_eq!(common::wire::values(&shown), vec!["ISO, MDY".to_string()]);
    let t = "DELETE FROM crm.orders WHERE created_at < '01/02/2026'";
    let asked = c.query(t).await;
    let message = errors(&asked)
        .first()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    assert!(message.starts_with("pgid: approval required"), "{asked:?}");
    let id = message
        .split_whitespace()
        .skip_while(|w| *w != "request")
        .nth(1)
        .unwrap()
        .to_string();
    let mut claims = h.issuer.claims("alice");
    claims.insert("groups".into(), serde_json::json!(["dba"]));
    let alice = h.issuer.mint(&claims);
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let set = c.query("SET DateStyle = 'ISO, DMY'").await;
    assert!(errors(&set).is_empty(), "{set:?}");
    let ran = c.query(t).await;
    let approved_kept = h
        .count("SELECT count(*) FROM crm.orders WHERE id IN (3, 4, 5)")
        .await;
    assert_eq!(
        approved_kept, 3,
        "an approval for deleting the orders before 2 January deleted those before 1 February: {ran:?}"
    );
}

/// FINDING 3, TimeZone: a timestamptz literal is read in the session's time zone; approved
/// under UTC, run under UTC-12 (Etc/GMT+12), the same text deletes twelve hours more.
#[tokio::test(flavor = "multi_thread")]
async fn red12b_retry_approval_given_under_one_time_zone_runs_under_another() {
    let h = Harness::start(&[common::REVIEWED]).await;
    let su = h.superuser().await;
    su.batch_execute(
        "UPDATE crm.orders SET created_at = '2026-01-01 20:00+00' WHERE id IN (1, 2);
         UPDATE crm.orders SET created_at = '2026-01-02 05:00+00' WHERE id IN (3, 4, 5);
         UPDATE crm.orders SET created_at = '2026-06-01' WHERE id > 5;",
    )
    .await
    .unwrap();
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    let set = c.query("SET TimeZone = 'UTC'").await;
    assert!(errors(&set).is_empty(), "{set:?}");
    let t = "DELETE FROM crm.orders WHERE created_at < '2026-01-02 00:00'";
    let asked = c.query(t).await;
    let message = errors(&asked)
        .first()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    assert!(message.starts_with("pgid: approval required"), "{asked:?}");
    let id = message
        .split_whitespace()
        .skip_while(|w| *w != "request")
        .nth(1)
        .unwrap()
        .to_string();
    let mut claims = h.issuer.claims("alice");
    claims.insert("groups".into(), serde_json::json!(["dba"]));
    let alice = h.issuer.mint(&claims);
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let set = c.query("SET TimeZone = 'Etc/GMT+12'").await;
    assert!(errors(&set).is_empty(), "{set:?}");
    let ran = c.query(t).await;
    let approved_kept = h
        .count("SELECT count(*) FROM crm.orders WHERE id IN (3, 4, 5)")
        .await;
    assert_eq!(
        approved_kept, 3,
        "an approval for deleting the orders before midnight UTC deleted those before noon: {ran:?}"
    );
}

/// FINDING 3, session data: the fingerprint holds the text, not the session's data the text
/// reads. Approved while `pg_temp.pick` held one id (the estimate shown: a row or so), the same
/// text runs after the agent fills the table with every id.
#[tokio::test(flavor = "multi_thread")]
async fn red12b_retry_approval_given_over_one_temporary_table_runs_over_another() {
    let h = Harness::start(&[common::REVIEWED]).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    for s in [
        "CREATE TEMP TABLE pick (id int)",
        "INSERT INTO pick VALUES (1)",
    ] {
        let a = c.query(s).await;
        assert!(errors(&a).is_empty(), "{s}: {a:?}");
    }
    let before = h.count("SELECT count(*) FROM crm.orders").await;
    let t = "DELETE FROM crm.orders WHERE id IN (SELECT id FROM pg_temp.pick)";
    let asked = c.query(t).await;
    let message = errors(&asked)
        .first()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    assert!(message.starts_with("pgid: approval required"), "{asked:?}");
    let id = message
        .split_whitespace()
        .skip_while(|w| *w != "request")
        .nth(1)
        .unwrap()
        .to_string();
    let mut claims = h.issuer.claims("alice");
    claims.insert("groups".into(), serde_json::json!(["dba"]));
    let alice = h.issuer.mint(&claims);
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let set = c
        .query("INSERT INTO pick SELECT generate_series(2, 40)")
        .await;
    assert!(errors(&set).is_empty(), "{set:?}");
    let ran = c.query(t).await;
    let after = h.count("SELECT count(*) FROM crm.orders").await;
    assert!(
        before - after <= 1,
        "an approval for deleting the one order the session's table held deleted {}: {ran:?}",
        before - after
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING 4 (class: `min_rows` trusts the planner's estimate, which the statement's own text
// sets). pgid checks the statistics are fresh, but not the predicate: clauses the planner
// cannot estimate get its default selectivity (0.005 for an equality between two expressions),
// and they multiply. `lower(status) = lower(status) || '' AND id + 0 = id` is true for every row
// and is estimated at 40 × 0.005² → 1 row: a DELETE of every order runs without
// review under `min_rows = 10`, on a freshly analysed table.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn red12b_min_rows_estimate_shrunk_by_the_predicate_deletes_every_order_unreviewed() {
    let policy = common::REVIEWED.replace("window = \"1m\"", "window = \"1m\"\nmin_rows = 10");
    let h = Harness::start(&[&policy]).await;
    h.superuser()
        .await
        .batch_execute("ANALYZE crm.orders")
        .await
        .unwrap();
    // Statistics reach the cumulative statistics system within a second.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut c0 = h.raw_client("agent:reviewed", &[]).await.unwrap();
    // The control: one row by key runs without review.
    let one = c0.query("DELETE FROM crm.orders WHERE id = 40").await;
    assert!(errors(&one).is_empty(), "{one:?}");
    let before = h.count("SELECT count(*) FROM crm.orders").await;
    assert_eq!(before, 39);
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    // The check itself: a plain bulk delete is held.
    let held = c.query("DELETE FROM crm.orders WHERE id > 20").await;
    assert!(
        errors(&held)
            .first()
            .is_some_and(|(_, m)| m.starts_with("pgid: approval required")),
        "{held:?}"
    );
    let ran = c
        .query(
            "DELETE FROM crm.orders WHERE lower(status) = lower(status) || '' \
             AND id + 0 = id",
        )
        .await;
    let after = h.count("SELECT count(*) FROM crm.orders").await;
    assert!(
        before - after < 10,
        "{} orders deleted without review under min_rows = 10: {ran:?}",
        before - after
    );
}

// ---------------------------------------------------------------------------------------------
// HELD (class of FINDING 3, client_encoding): the same bytes read in another client encoding
// would be another statement (0x5c is a backslash in LATIN1, the second byte of 表 in SJIS), but
// pgid refuses client encodings that are not ASCII-safe, so the approved reading stands.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn red12b_retry_approval_given_under_one_client_encoding_runs_under_another() {
    let h = Harness::start(&[common::REVIEWED]).await;
    let orders = "SELECT count(*) FROM crm.orders";
    let before = h.count(orders).await;
    let mut c = h.raw_client("agent:reviewed", &[]).await.unwrap();
    let mut t: Vec<u8> = b"DELETE FROM crm.orders WHERE id = 1 AND status = '".to_vec();
    t.extend_from_slice(&[0x95, 0x5c]);
    t.extend_from_slice(b"' OR id > 0 OR status = '--'");
    let send = |c: &mut common::wire::RawClient, bytes: Vec<u8>| {
        let mut q = BytesMut::new();
        frontend::query(&mut q, &bytes);
        let c: *mut common::wire::RawClient = c;
        async move {
            let c = unsafe { &mut *c };
            c.send(&q).await;
            c.until_ready(1).await
        }
    };
    let s1 = c.query("SET standard_conforming_strings = off").await;
    let s2 = c.query("SET client_encoding = 'LATIN1'").await;
    assert!(
        errors(&s1).is_empty() && errors(&s2).is_empty(),
        "{s1:?} {s2:?}"
    );
    let asked = send(&mut c, t.clone()).await;
    let message = errors(&asked)
        .first()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    assert!(message.starts_with("pgid: approval required"), "{asked:?}");
    let id = message
        .split_whitespace()
        .skip_while(|w| *w != "request")
        .nth(1)
        .unwrap()
        .to_string();
    let mut claims = h.issuer.claims("alice");
    claims.insert("groups".into(), serde_json::json!(["dba"]));
    let alice = h.issuer.mint(&claims);
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let s3 = c.query("SET client_encoding = 'SJIS'").await;
    let ran = send(&mut c, t.clone()).await;
    assert_eq!(
        h.count(orders).await,
        before,
        "an approval for a DELETE of no row deleted every order: {s3:?} {ran:?}"
    );
}

/// Inserting into or updating orders needs a reviewer (retry mode).
const REVIEWED_WRITES: &str = r#"
name = "reviewed-writes"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:rw"
[[grant]]
privileges = ["SELECT", "INSERT", "UPDATE"]
on = ["crm.orders"]
[[approval]]
statements = ["INSERT", "UPDATE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "dba" } }
mode = "retry"
timeout = "1m"
window = "1m"
"#;

/// HELD: COPY … FROM STDIN is held as an INSERT, an upsert's DO UPDATE as an UPDATE.
#[tokio::test(flavor = "multi_thread")]
async fn red12b_copy_from_and_upsert_under_insert_and_update_rules() {
    let h = Harness::start(&[REVIEWED_WRITES]).await;
    let before = h.count("SELECT count(*) FROM crm.orders").await;
    let mut notes = Vec::new();
    let mut c = h.raw_client("agent:rw", &[]).await.unwrap();
    let mut q = BytesMut::new();
    frontend::query(&mut q, b"COPY crm.orders (customer_id, amount) FROM STDIN");
    c.send(&q).await;
    let first = c.until_ready(1).await;
    notes.push(format!(
        "copy: {:?} {:?}",
        first.iter().map(|m| m.tag as char).collect::<String>(),
        errors(&first)
    ));
    let upsert = c
        .query("INSERT INTO crm.orders (id, customer_id, amount) VALUES (1, 1, 1) ON CONFLICT (id) DO UPDATE SET amount = 0")
        .await;
    notes.push(format!("upsert: {:?}", errors(&upsert)));
    let merge = c
        .query("MERGE INTO crm.orders o USING (VALUES (2)) v(i) ON o.id = v.i WHEN MATCHED AND o.id = 2 THEN UPDATE SET amount = 0")
        .await;
    notes.push(format!("merge: {:?}", errors(&merge)));
    assert_eq!(
        h.count("SELECT count(*) FROM crm.orders").await,
        before,
        "{notes:#?}"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM crm.orders WHERE amount = 0")
            .await,
        0,
        "{notes:#?}"
    );
}

/// HELD: relations the session makes out of a masked table (temporary views and tables, by
/// every statement form that makes one) do not carry the masked column out.
#[tokio::test(flavor = "multi_thread")]
async fn red12b_survey_session_made_relations() {
    let h = Harness::start(&[common::EMAIL_MASKED]).await;
    let steps = [
        "CREATE TEMP VIEW v AS SELECT id, name FROM crm.customers ;; CREATE OR REPLACE TEMP VIEW v AS SELECT id, name, email FROM crm.customers ;; SELECT upper(email) FROM v",
        "CREATE TEMP VIEW w AS SELECT c FROM crm.customers c ;; SELECT upper((c).email) FROM w",
        "CREATE TEMP VIEW x AS TABLE crm.customers ;; SELECT upper(email) FROM x",
        "CREATE TEMP TABLE t (LIKE crm.customers) ;; INSERT INTO t TABLE crm.customers ;; SELECT upper(email) FROM t",
        "SELECT * INTO TEMP t2 FROM crm.customers ;; SELECT upper(email) FROM t2",
        "CREATE TEMP TABLE t3 AS TABLE crm.customers ;; SELECT upper(email) FROM t3",
        "CREATE TEMP TABLE t4 (e text) ;; CREATE RULE \"_RETURN\" AS ON SELECT TO t4 DO INSTEAD SELECT email FROM crm.customers ;; SELECT upper(e) FROM t4",
        "CREATE TEMP TABLE t5 (e text) ;; CREATE RULE r AS ON INSERT TO t5 DO ALSO INSERT INTO t5 SELECT email FROM crm.customers ;; INSERT INTO t5 VALUES ('x') ;; SELECT upper(e) FROM t5",
        "CREATE TEMP VIEW v6 AS SELECT * FROM crm.customers ;; SELECT upper(email) FROM v6",
        "CREATE TEMP VIEW v7 (a, b, e) AS SELECT id, name, email FROM crm.customers ;; SELECT upper(e) FROM v7",
        "CREATE TEMP TABLE t8 OF crm.customers ;; SELECT 1",
        "PREPARE q AS SELECT id FROM crm.customers ;; CREATE TEMP TABLE t9 AS EXECUTE q ;; SELECT * FROM t9",
    ];
    let (leaks, notes) = battery(&h, "agent:masked", &steps).await;
    eprintln!("NOTES {notes:#?}");
    assert!(
        leaks.is_empty(),
        "masked e-mail in clear: {leaks:#?}\n{notes:#?}"
    );
}

/// HELD: qualified spellings of a masked table and of its columns and rows.
#[tokio::test(flavor = "multi_thread")]
async fn red12b_survey_qualified_spellings() {
    let h = Harness::start(&[common::EMAIL_MASKED]).await;
    let steps = [
        "SELECT upper(email) FROM app.crm.customers",
        "SELECT upper(app.crm.customers.email) FROM app.crm.customers",
        "SELECT upper(crm.customers.email) FROM crm.customers",
        "SELECT crm.customers::text FROM crm.customers",
        "SELECT upper(crm.customers::text) FROM crm.customers",
        "SELECT app.crm.customers::text FROM app.crm.customers",
        "SELECT (crm.customers).email FROM crm.customers",
        "SELECT upper((crm.customers).email) FROM crm.customers",
        "SELECT crm.customers.to_json FROM crm.customers",
        "SELECT customers.to_jsonb FROM crm.customers",
        "SELECT upper(\"crm\".\"customers\".\"email\") FROM \"crm\".\"customers\"",
        "SELECT upper(U&\"em\\0061il\") FROM crm.customers",
        "SELECT upper(U&\"em!0061il\" UESCAPE '!') FROM crm.customers",
        "SELECT upper(x) FROM crm.customers AS c(i, n, x)",
        "SELECT upper(EMAIL) FROM CRM.CUSTOMERS",
    ];
    let (leaks, notes) = battery(&h, "agent:masked", &steps).await;
    eprintln!("NOTES {notes:#?}");
    assert!(
        leaks.is_empty(),
        "masked e-mail in clear: {leaks:#?}\n{notes:#?}"
    );
}
