//! Every channel data leaves by, through the real proxy: notifications (counted by the export
//! limits; refused and withheld under masks), columns merged by joins or renamed by alias column
//! lists (generated over every join kind), and error texts. Each test looks at every byte the
//! client received, notifications included.

mod common;

use bytes::{BufMut, BytesMut};
use common::wire::{errors, leaked, Message};
use common::{Harness, EMAIL_MASKED, READER};
use pgid::proxy::wire::backend;
use pgid::proxy::wire::frontend;

/// Reads customers under tight export limits; LISTEN, NOTIFY and DO allowed.
const LIMITED: &str = r#"
name = "limited"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:limited"
[[grant]]
privileges = ["SELECT"]
on = ["crm.customers"]
# Lets code run (DO, in plpgsql, which pgid cannot read, runs only where no function is denied).
[guardrails]
deny = []
deny_functions = []
max_rows = 100
max_bytes = "64kB"
"#;

/// Updates customers whose e-mail and SSN are masked.
const MASKED_WRITER: &str = r#"
name = "masked-writer"
database = "app"
ttl = "15m"
max_connections = 10
[identity]
subject = "agent:masked-writer"
[[grant]]
privileges = ["SELECT", "UPDATE"]
on = ["crm.customers"]
[[mask]]
columns = ["crm.customers.email", "crm.customers.ssn"]
method = "redact"
"#;

/// Every e-mail address and SSN of the demo customers, as stored and upper-cased.
async fn secrets(h: &Harness) -> Vec<String> {
    let rows = h
        .superuser()
        .await
        .query(
            "SELECT email, upper(email), ssn FROM crm.customers WHERE ssn IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let out: Vec<String> = rows
        .iter()
        .flat_map(|r| [r.get(0), r.get(1), r.get(2)])
        .collect();
    assert!(out.len() >= 12, "{out:?}");
    out
}

fn notifications(answer: &[Message]) -> Vec<&Message> {
    answer.iter().filter(|m| m.tag == b'A').collect()
}

/// The notices among `messages`: (SQLSTATE, message).
fn notices(messages: &[Message]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|m| m.tag == b'N')
        .map(|m| {
            let f = backend::error_fields(&m.body);
            let get = |t| {
                f.iter()
                    .find(|(k, _)| *k == t)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (get(b'C'), get(b'M'))
        })
        .collect()
}

/// Notifications between two points where the limits count afresh (a statement's first row,
/// ReadyForQuery): none of these stretches may pass the limits.
fn stretches(answer: &[Message]) -> Vec<(usize, usize)> {
    let mut out = vec![(0, 0)];
    for m in answer {
        match m.tag {
            b'A' => {
                let last = out.last_mut().unwrap();
                last.0 += 1;
                last.1 += m.body.len() + 5;
            }
            b'Z' | b'D' => out.push((0, 0)),
            _ => {}
        }
    }
    out
}

// Class: notifications. A payload is data no RowDescription describes: before, a session that
// LISTENed received 2,000 payloads (233 KB) from one statement under max_rows = 100 and
// max_bytes = 64kB. They now count toward the limits like rows.
#[tokio::test(flavor = "multi_thread")]
async fn notifications_count_toward_the_export_limits() {
    let h = Harness::start(&[LIMITED]).await;
    let mut c = h.raw_client("agent:limited", &[]).await.unwrap();
    assert!(errors(&c.query("LISTEN c").await).is_empty());

    // Rows: 2,000 notifications sent by the session's own statement.
    let answer = c
        .query(
            "SELECT count(pg_notify('c', repeat('x', 100) || n)) FROM generate_series(1, 2000) n",
        )
        .await;
    let got = notifications(&answer).len();
    assert!(got > 0 && got < 100, "{got} notifications");
    let warned = notices(&answer);
    assert!(
        warned
            .iter()
            .any(|(code, m)| code == "54000" && m.starts_with("pgid: max_rows:")),
        "{warned:?}"
    );
    assert!(errors(&answer).is_empty(), "{:?}", errors(&answer));
    // Notices: code the policy lets run raises one per row; the statement is ended.
    let answer = c
        .query("DO $$ BEGIN FOR i IN 1..2000 LOOP RAISE NOTICE 'row %', i; END LOOP; END $$")
        .await;
    let raised = notices(&answer)
        .iter()
        .filter(|(_, m)| m.starts_with("row "))
        .count();
    assert!(raised > 0 && raised <= 100, "{raised} notices");
    let e = errors(&answer);
    assert!(
        e.len() == 1 && e[0].0 == "54000" && e[0].1.starts_with("pgid: max_rows:"),
        "{e:?}"
    );
    // The session goes on.
    let answer = c.query("SELECT 41 + 1").await;
    assert_eq!(common::wire::values(&answer), ["42"]);
    assert!(notifications(&answer).is_empty());

    // Bytes: 40 payloads of 7,000 bytes (280 KB) under 64 kB.
    let answer = c
        .query("SELECT count(pg_notify('c', repeat('y', 7000) || n)) FROM generate_series(1, 40) n")
        .await;
    let bytes: usize = notifications(&answer)
        .iter()
        .map(|m| m.body.len() + 5)
        .sum();
    assert!(bytes > 0 && bytes <= 64 << 10, "{bytes} bytes");
    assert!(
        notices(&answer)
            .iter()
            .any(|(code, m)| code == "54000" && m.starts_with("pgid: max_bytes:")),
        "{:?}",
        notices(&answer)
    );

    // From another session, delivered while this one is idle or with its next statement: no
    // stretch between two counting points carries more than the limits allow.
    h.superuser()
        .await
        .query(
            "SELECT count(pg_notify('c', repeat('z', 100) || n)) FROM generate_series(1, 300) n",
            &[],
        )
        .await
        .unwrap();
    let mut all = Vec::new();
    for _ in 0..50 {
        let answer = c.query("SELECT 1").await;
        all.extend(answer);
        if notices(&all).iter().any(|(code, _)| code == "54000") {
            break;
        }
    }
    let total = notifications(&all).len();
    assert!(total > 0 && total < 300, "{total} of 300 notifications");
    for (n, bytes) in stretches(&all) {
        assert!(
            n <= 100 && bytes <= 64 << 10,
            "{n} notifications, {bytes} bytes"
        );
    }
    assert!(
        notices(&all).iter().any(|(code, _)| code == "54000"),
        "{:?}",
        notices(&all)
    );
}

// Class: notifications under masks. A payload cannot be masked: LISTEN, NOTIFY and pg_notify are
// refused (UNLISTEN is not), and a notification that arrives anyway — here through a LISTEN made
// before a reload added the mask — is withheld.
#[tokio::test(flavor = "multi_thread")]
async fn under_masks_notifications_are_refused_and_withheld() {
    let h = Harness::start(&[EMAIL_MASKED, READER]).await;
    let secrets = secrets(&h).await;
    let mut c = h.raw_client("agent:masked", &[]).await.unwrap();
    for sql in [
        "LISTEN c",
        "NOTIFY c, 'x'",
        "SELECT pg_notify('c', 'x')",
        "SELECT pg_notify('c', x) FROM crm.customers AS c(i, n, x)",
        "DO $$ BEGIN EXECUTE 'LISTEN c'; END $$",
    ] {
        let answer = c.query(sql).await;
        let e = errors(&answer);
        assert_eq!(e.len(), 1, "{sql}: {answer:?}");
        assert_eq!(e[0].0, "42501", "{sql}: {e:?}");
        assert!(e[0].1.starts_with("pgid: "), "{sql}: {e:?}");
        assert!(leaked(&secrets, &answer).is_empty(), "{sql}");
    }
    assert!(errors(&c.query("UNLISTEN *").await).is_empty());
    assert_eq!(common::wire::values(&c.query("SELECT 7").await), ["7"]);

    // A listener from before the mask.
    let mut l = h.raw_client("agent:reader", &[]).await.unwrap();
    assert!(errors(&l.query("LISTEN c").await).is_empty());
    let file = std::fs::read_dir(h.state.path().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains("name = \"reader\"")
        })
        .unwrap();
    std::fs::write(
        &file,
        format!("{READER}\n[[mask]]\ncolumns = [\"crm.customers.email\"]\nmethod = \"redact\"\n"),
    )
    .unwrap();
    h.pgid.as_ref().unwrap().reload().await.unwrap();
    h.superuser()
        .await
        .query(
            "SELECT count(pg_notify('c', email)) FROM crm.customers",
            &[],
        )
        .await
        .unwrap();
    // The listener is idle: the reloaded policy reaches it before the notifications do, with
    // no statement of its own in between.
    let all = l.until_n(b'N', 4).await;
    assert!(notifications(&all).is_empty(), "{all:?}");
    let withheld = notices(&all);
    assert!(
        withheld.len() >= 4
            && withheld
                .iter()
                .all(|(code, m)| code == "42501" && m.starts_with("pgid: mask:")),
        "{withheld:?}"
    );
    assert!(leaked(&secrets, &all).is_empty());
}

/// A Bind of the unnamed portal to the unnamed statement asking for binary results.
fn bind_binary(out: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_slice(b"\0\0");
    body.put_i16(0);
    body.put_i16(0);
    body.put_i16(1);
    body.put_i16(1);
    backend::raw(out, b'B', &body);
}

/// Statements built from merged join columns and renamed columns: every join kind, USING and
/// NATURAL, through `*`, join and USING aliases, expressions, subqueries, CTEs, set operations.
fn merged_statements() -> Vec<String> {
    let mut out = Vec::new();
    for kind in [
        "JOIN",
        "LEFT JOIN",
        "RIGHT JOIN",
        "FULL JOIN",
        "FULL OUTER JOIN",
    ] {
        let froms = [
            format!("crm.customers a {kind} crm.customers b USING (email, ssn)"),
            format!("crm.customers a {kind} crm.customers b USING (id, ssn, email)"),
            format!("crm.customers a NATURAL {kind} crm.customers b"),
            format!("(SELECT id, email, ssn FROM crm.customers WHERE id > 2) a NATURAL {kind} (SELECT id, email, ssn FROM crm.customers WHERE id < 3) b"),
            format!("(VALUES (0, 'x'::text, 'y'::text)) v(id, email, ssn) {kind} crm.customers USING (email, ssn)"),
            format!("crm.customers {kind} (SELECT 'x'::text AS email, 'y'::text AS ssn) s USING (email, ssn)"),
            format!("crm.customers a(i, n, x, y) {kind} crm.customers b(j, m, x, y) USING (x, y)"),
        ];
        for from in &froms {
            for select in [
                "SELECT email, ssn FROM {}",
                "SELECT * FROM {}",
                "SELECT upper(email) || ssn FROM {}",
                "SELECT j.email, j.ssn FROM ({}) j",
                "SELECT * FROM (SELECT * FROM {}) s",
                "WITH t AS (SELECT * FROM {}) SELECT * FROM t",
                "SELECT email FROM {} UNION ALL SELECT ssn FROM {}",
            ] {
                let sql = select.replace("{}", from);
                // Renamed inputs use their own names.
                let sql = if from.contains("a(i, n, x, y)") {
                    sql.replace("email", "x").replace("ssn", "y")
                } else {
                    sql
                };
                out.push(sql);
            }
        }
        out.push(format!(
            "SELECT u.email FROM crm.customers a {kind} crm.customers b USING (email) AS u"
        ));
    }
    for sql in [
        "SELECT upper(x) FROM crm.customers AS c(i, n, x)",
        "SELECT x || y FROM crm.customers AS c(i, n, x, y)",
        "SELECT j.x FROM (crm.customers CROSS JOIN (SELECT 1) o) AS j(i, n, x)",
        "SELECT upper(j.y) FROM (crm.customers a JOIN crm.customers b ON a.id = b.id) AS j(i, n, x, y)",
        "SELECT (SELECT max(x) FROM crm.customers c(i, n, x))",
    ] {
        out.push(sql.to_string());
    }
    out
}

// Class: output columns no RowDescription attributes to a masked column although their values
// come from one. A column merged by FULL JOIN … USING or NATURAL FULL JOIN is reported with no
// origin and came back in clear; names given by an alias column list hid the masked column from
// pgid's lineage. Generated over every join kind and shape, in text and binary results.
#[tokio::test(flavor = "multi_thread")]
async fn merged_and_renamed_columns_never_come_back_in_clear() {
    let h = Harness::start(&[MASKED_WRITER]).await;
    let secrets = secrets(&h).await;
    let mut c = h.raw_client("agent:masked-writer", &[]).await.unwrap();
    let statements = merged_statements();
    assert!(statements.len() >= 250, "{}", statements.len());
    let (mut with_rows, mut refused) = (0, 0);
    for sql in &statements {
        let answer = c.query(sql).await;
        let got = leaked(&secrets, &answer);
        assert!(got.is_empty(), "simple: {sql}: {got:?}");
        match errors(&answer).first() {
            Some((code, m)) => {
                assert!(code == "42501" && m.starts_with("pgid: "), "{sql}: {m}");
                refused += 1;
            }
            None => with_rows += usize::from(answer.iter().any(|m| m.tag == b'D')),
        }
        // Extended protocol, binary results.
        let mut out = BytesMut::new();
        frontend::parse(&mut out, b"", sql.as_bytes(), &[]);
        bind_binary(&mut out);
        frontend::describe(&mut out, frontend::Target::Portal, b"");
        frontend::execute(&mut out, b"", 0);
        frontend::sync(&mut out);
        c.send(&out).await;
        let answer = c.until_ready(1).await;
        let got = leaked(&secrets, &answer);
        assert!(got.is_empty(), "extended: {sql}: {got:?}");
    }
    // The corpus exercises masking, not only refusals.
    assert!(
        with_rows * 2 > statements.len(),
        "{with_rows} with rows, {refused} refused"
    );
    // What a direct connection returns for one of them: the merged column in clear.
    let direct: String = h
        .superuser()
        .await
        .query_one(
            "SELECT email FROM crm.customers a FULL JOIN crm.customers b USING (email) ORDER BY 1 LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(secrets.contains(&direct));
    let answer = c
        .query("SELECT email FROM crm.customers a FULL JOIN crm.customers b USING (email) ORDER BY 1 LIMIT 1")
        .await;
    assert_eq!(common::wire::values(&answer), ["REDACTED"]);
}

// Class: error texts. A constraint's error quotes the whole failing row (`Failing row contains
// (1, null, ada@example.com, 078-05-1120, …)`) for a statement that reads no masked column; a
// cast error quotes the value (`invalid input syntax for type integer: "ada@example.com"`).
// Under a policy with masks every statement naming a masked table has its error texts withheld.
#[tokio::test(flavor = "multi_thread")]
async fn error_texts_never_carry_masked_values() {
    let h = Harness::start(&[MASKED_WRITER]).await;
    let secrets = secrets(&h).await;
    let mut c = h.raw_client("agent:masked-writer", &[]).await.unwrap();
    for (sql, code) in [
        ("UPDATE crm.customers SET name = NULL WHERE id = 1", "23502"),
        (
            "UPDATE crm.customers SET name = NULL WHERE id = 1 RETURNING id",
            "23502",
        ),
        ("SELECT email::int FROM crm.customers", "22P02"),
        ("SELECT x::int FROM crm.customers AS c(i, n, x)", "22P02"),
        (
            "SELECT j.y::int FROM (crm.customers a JOIN crm.customers b USING (id)) AS j(i, n, x, y)",
            "22P02",
        ),
        (
            "SELECT email::int FROM crm.customers a FULL JOIN crm.customers b USING (email)",
            "22P02",
        ),
        ("SELECT 1 / (length(ssn) - 11) FROM crm.customers", "22012"),
    ] {
        let answer = c.query(sql).await;
        let e = errors(&answer);
        assert_eq!(e.len(), 1, "{sql}: {answer:?}");
        assert_eq!(e[0].0, code, "{sql}: {e:?}");
        assert!(
            e[0].1.starts_with("pgid: message withheld"),
            "{sql}: {e:?}"
        );
        assert!(leaked(&secrets, &answer).is_empty(), "{sql}");
    }
    // The row is unchanged and the session usable.
    let name: String = h
        .superuser()
        .await
        .query_one("SELECT name FROM crm.customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Ada Lovelace");
    // A statement that names no masked table keeps its error text.
    let e = errors(&c.query("SELECT 1 / 0").await);
    assert_eq!(e[0].0, "22012");
    assert_eq!(e[0].1, "division by zero");
    // Writing what it reads elsewhere: refused, as before.
    let mut out = BytesMut::new();
    frontend::parse(&mut out, b"m", b"SELECT email FROM crm.customers", &[]);
    frontend::sync(&mut out);
    c.send(&out).await;
    assert!(errors(&c.until_ready(1).await).is_empty());
    for sql in [
        "CREATE TEMP TABLE t AS EXECUTE m",
        "EXPLAIN (ANALYZE, VERBOSE) EXECUTE m",
    ] {
        let answer = c.query(sql).await;
        let e = errors(&answer);
        assert!(
            e.len() == 1 && e[0].0 == "42501" && e[0].1.starts_with("pgid: mask:"),
            "{sql}: {e:?}"
        );
    }
}
