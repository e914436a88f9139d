//! The state machine without sockets: client messages judged and committed, server answers fed
//! back, as a session's I/O loop would.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::{Inspector, Judged, Rules};
use crate::audit::statement::SessionRecords;
use crate::policy::{Guardrails, StatementAudit};
use crate::proxy::limits::Action;
use crate::proxy::wire::backend::{Backend, Report, TransactionStatus};
use crate::proxy::wire::framing::Frame;
use crate::proxy::wire::frontend;
use crate::sql::Analyzer;

fn inspector() -> Inspector {
    let rules = Rules {
        guardrails: Guardrails::default(),
        audit: StatementAudit::default(),
        approvals: Vec::new(),
        masks: None,
        relations: None,
    };
    let params = [
        ("client_encoding".to_string(), "UTF8".to_string()),
        ("standard_conforming_strings".to_string(), "on".to_string()),
        ("server_encoding".to_string(), "UTF8".to_string()),
    ];
    Inspector::new(
        rules,
        std::sync::Arc::new(crate::metrics::Metrics::new()),
        Analyzer::start(1).unwrap(),
        SessionRecords::new(&crate::store::test_lease(), Uuid::nil(), "127.0.0.1:1"),
        &params,
        "pgid_t_x",
    )
    .unwrap()
}

/// Client messages as frames.
fn frames(build: impl FnOnce(&mut BytesMut)) -> Vec<Frame> {
    let mut b = BytesMut::new();
    build(&mut b);
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = i32::from_be_bytes([b[at + 1], b[at + 2], b[at + 3], b[at + 4]]) as usize + 1;
        out.push(Frame::Whole(Bytes::copy_from_slice(&b[at..at + len])));
        at += len;
    }
    out
}

async fn judge(i: &Inspector, f: &[Frame]) -> Judged {
    i.judge(f, &HashMap::new(), false).await
}

/// The decision records of a judged batch as JSON.
fn records(j: &Judged) -> Vec<serde_json::Value> {
    j.records
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

fn answer(i: &mut Inspector, msgs: &[Backend<'_>]) -> Vec<Action> {
    msgs.iter().map(|m| i.backend(m, 5).action).collect()
}

const READY: Backend<'static> = Backend::ReadyForQuery(TransactionStatus::Idle);

#[tokio::test]
async fn a_query_is_recorded_before_it_goes_and_its_outcome_after() {
    let mut i = inspector();
    let f = frames(|b| frontend::query(b, b"SELECT 1"));
    let j = judge(&i, &f).await;
    assert_eq!((j.consumed, j.wait_for, j.out.is_none()), (1, None, true));
    assert_eq!(records(&j)[0]["decision"], "allow");
    i.commit(j);
    assert!(!i.idle());
    answer(
        &mut i,
        &[
            Backend::RowDescription(b"\0\0"),
            Backend::CommandComplete(b"SELECT 1"),
            READY,
        ],
    );
    assert!(i.idle());
    let out = i.outcomes();
    assert_eq!(out.len(), 1);
    assert!(out[0].contains("\"result\":\"ok\""), "{out:?}");
}

#[tokio::test]
async fn a_settings_change_in_flight_holds_text_that_depends_on_it() {
    let mut i = inspector();
    let f = frames(|b| {
        frontend::query(b, b"SET standard_conforming_strings = off");
        frontend::query(b, br"SELECT 'a\'; DELETE FROM t; --'");
        frontend::query(b, b"SELECT 2");
    });
    let j = judge(&i, &f).await;
    // The SET goes; the text after it waits for the SET's answer.
    assert_eq!(j.consumed, 1);
    let id = j.wait_for.expect("waits");
    i.commit(j);
    assert!(!i.answered(id));
    answer(
        &mut i,
        &[
            Backend::CommandComplete(b"SET"),
            Backend::ParameterStatus {
                name: b"standard_conforming_strings",
                value: b"off",
            },
            READY,
        ],
    );
    assert!(i.answered(id));
    let j = judge(&i, &f[1..]).await;
    assert_eq!((j.consumed, j.wait_for), (2, None));
    let r = records(&j);
    // Under `off` the backslash escapes the quote: one string, no DELETE.
    assert_eq!(r[0]["decision"], "allow");
    assert_eq!(r[0]["classes"], serde_json::json!(["SELECT"]));
}

#[tokio::test]
async fn text_that_depends_on_settings_an_earlier_message_of_the_stretch_may_change_is_refused() {
    let i = inspector();
    let f = frames(|b| {
        frontend::parse(
            b,
            b"",
            b"SELECT set_config('standard_conforming_strings', 'off', false)",
            &[],
        );
        frontend::bind_values(b, b"", &[]);
        frontend::execute(b, b"", 0);
        frontend::parse(b, b"", br"SELECT 'a\'; DELETE FROM t; --'", &[]);
        frontend::sync(b);
    });
    let j = judge(&i, &f).await;
    assert_eq!((j.consumed, j.wait_for), (5, None));
    let r = records(&j);
    // set_config is denied by default: its Execute is refused, and so is the dependent Parse.
    let rules: Vec<&str> = r.iter().map(|x| x["rule"].as_str().unwrap_or("")).collect();
    assert!(rules.contains(&"deny_functions"), "{r:?}");
    assert!(rules.contains(&"lexing"), "{r:?}");
}

#[tokio::test]
async fn names_resolve_within_a_stretch_and_wait_across_a_sync() {
    let mut i = inspector();
    // Parse, Bind, Execute in one stretch: the Execute runs what the Parse defined.
    let f = frames(|b| {
        frontend::parse(b, b"s", b"SELECT 42", &[]);
        frontend::bind_values(b, b"s", &[]);
        frontend::execute(b, b"", 0);
        frontend::sync(b);
        frontend::parse(b, b"s", b"SELECT 43", &[]);
        frontend::sync(b);
        frontend::bind_values(b, b"s", &[]);
        frontend::execute(b, b"", 0);
        frontend::sync(b);
    });
    let j = judge(&i, &f).await;
    // The Bind after the second Parse's Sync waits: that Parse may fail (42P05) or not.
    assert_eq!(j.consumed, 6);
    let id = j.wait_for.unwrap();
    assert_eq!(records(&j)[0]["statement"], "SELECT 42");
    i.commit(j);
    answer(
        &mut i,
        &[
            Backend::ParseComplete,
            Backend::BindComplete,
            Backend::DataRow(b"\0\x01\0\0\0\x0242"),
            Backend::CommandComplete(b"SELECT 1"),
            READY,
            Backend::ErrorResponse(Report {
                code: b"42P05",
                message: b"prepared statement \"s\" already exists",
                severity: b"ERROR",
            }),
            READY,
        ],
    );
    assert!(i.answered(id));
    let j = judge(&i, &f[6..]).await;
    assert_eq!(j.consumed, 3);
    assert_eq!(
        records(&j)[0]["statement"],
        "SELECT 42",
        "the server kept the first"
    );
}

#[tokio::test]
async fn a_refusal_stands_in_for_the_message_and_its_error_is_pgids() {
    let mut i = inspector();
    let f = frames(|b| frontend::query(b, b"DROP TABLE t"));
    let j = judge(&i, &f).await;
    let stand_in = j.out.clone().expect("replaced");
    assert!(stand_in.windows(13).any(|w| w == b"pgid_refused_"));
    assert_eq!(records(&j)[0]["rule"], "deny");
    i.commit(j);
    let sql = String::from_utf8_lossy(&stand_in[5..stand_in.len() - 1]).into_owned();
    let fname = sql.trim_start_matches("SELECT ").trim_end_matches("()");
    let message = format!("function {fname}() does not exist");
    let acts = answer(
        &mut i,
        &[
            Backend::ErrorResponse(Report {
                code: b"42883",
                message: message.as_bytes(),
                severity: b"ERROR",
            }),
            READY,
        ],
    );
    match &acts[0] {
        Action::Replace(e) => assert!(e.windows(11).any(|w| w == b"pgid: deny:")),
        other => panic!("{other:?}"),
    }
    assert!(i.idle());
}

#[tokio::test]
async fn a_query_redefining_a_name_is_waited_for() {
    let mut i = inspector();
    let f = frames(|b| {
        frontend::query(b, b"PREPARE p AS SELECT 1");
        frontend::bind_values(b, b"p", &[]);
        frontend::execute(b, b"", 0);
        frontend::sync(b);
    });
    let j = judge(&i, &f).await;
    assert_eq!(
        j.consumed, 1,
        "a Query may fail part way: what it defines is known after"
    );
    i.commit(j);
    answer(&mut i, &[Backend::CommandComplete(b"PREPARE"), READY]);
    let j = judge(&i, &f[1..]).await;
    assert_eq!((j.consumed, j.wait_for), (3, None));
    let r = records(&j);
    assert_eq!(r[0]["statement"], "PREPARE p AS SELECT 1");
    assert_eq!(r[0]["decision"], "allow");
}

#[tokio::test]
async fn a_sync_sent_while_the_server_reads_copy_data_is_not_answered() {
    let mut i = inspector();
    let f = frames(|b| {
        frontend::query(b, b"COPY sink FROM STDIN");
        frontend::sync(b);
        crate::proxy::wire::backend::raw(b, b'd', b"row\n");
        crate::proxy::wire::backend::raw(b, b'c', b"");
    });
    let j = judge(&i, &f).await;
    assert_eq!(j.consumed, 4);
    i.commit(j);
    answer(
        &mut i,
        &[
            Backend::CopyInResponse,
            Backend::CommandComplete(b"COPY 1"),
            READY,
        ],
    );
    assert!(i.idle(), "the ignored Sync awaits nothing");
}

/// A RowDescription body: (table oid, attnum, type) per column, text format.
fn row_description(cols: &[(u32, i16, u32)]) -> Vec<u8> {
    use bytes::BufMut;
    let mut b = BytesMut::new();
    b.put_i16(cols.len() as i16);
    for (table, attnum, ty) in cols {
        b.put_slice(b"c\0");
        b.put_u32(*table);
        b.put_i16(*attnum);
        b.put_u32(*ty);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
    }
    b.to_vec()
}

#[tokio::test]
async fn rows_after_a_describe_in_the_same_pipeline_are_masked_by_the_executes_plan() {
    use crate::mask::MaskedColumn;
    use crate::policy::MaskMethod;
    use crate::proxy::catalog::MaskSetup;
    let mut setup = MaskSetup::default();
    setup.columns.push(MaskedColumn {
        schema: "crm".into(),
        table: "customers".into(),
        column: Some("email".into()),
        method: MaskMethod::Redact,
        keep: 0,
    });
    setup
        .origins
        .columns
        .insert((100, 3), (MaskMethod::Redact, 0));
    let mut i = inspector();
    i.reconfigure(Rules {
        guardrails: Guardrails::default(),
        audit: StatementAudit::default(),
        approvals: Vec::new(),
        masks: Some(std::sync::Arc::new(setup)),
        relations: None,
    })
    .await;
    // libpq's PQexecParams: Parse, Bind, Describe portal, Execute, Sync.
    let f = frames(|b| {
        frontend::parse(b, b"", b"SELECT upper(email) FROM crm.customers", &[]);
        frontend::bind_values(b, b"", &[]);
        frontend::describe(b, frontend::Target::Portal, b"");
        frontend::execute(b, b"", 0);
        frontend::sync(b);
    });
    let j = judge(&i, &f).await;
    assert_eq!((j.consumed, j.wait_for), (5, None));
    i.commit(j);
    // The derived column has no origin (table oid 0).
    let description = row_description(&[(0, 0, 25)]);
    let actions = answer(
        &mut i,
        &[
            Backend::ParseComplete,
            Backend::BindComplete,
            Backend::RowDescription(&description),
            Backend::DataRow(b"\0\x01\0\0\0\x0fADA@EXAMPLE.COM"),
            Backend::CommandComplete(b"SELECT 1"),
            READY,
        ],
    );
    match &actions[3] {
        Action::Replace(row) => {
            assert!(!row.windows(3).any(|w| w == b"ADA"), "{row:?}");
            assert!(row.windows(8).any(|w| w == b"REDACTED"), "{row:?}");
        }
        other => panic!("the row went out as it came: {other:?}"),
    }
}
