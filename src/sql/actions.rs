//! The actions a statement takes beyond its own kind, and when an UPDATE or DELETE action counts
//! as having no WHERE clause (`require_where`). Never weaker than the equivalent UPDATE/DELETE:
//!
//! - `MERGE`: each `WHEN` clause's action adds its class (UPDATE, DELETE, INSERT). The `ON`
//!   condition is a join, not a filter — `ON true`, or any condition every source row meets, sends
//!   every target row to the `WHEN MATCHED` actions — so an UPDATE or DELETE action under
//!   `WHEN MATCHED` or `WHEN NOT MATCHED BY SOURCE` counts as having a WHERE clause only with its
//!   own condition (`WHEN MATCHED AND … THEN DELETE`).
//! - `INSERT … ON CONFLICT DO UPDATE` is an UPDATE too. It updates at most one existing row per
//!   row inserted, so with a VALUES list (rows written out one by one, as `WHERE id = …` names
//!   them) it counts as having a WHERE clause; with rows from a query (`INSERT … SELECT … ON
//!   CONFLICT DO UPDATE`, which can touch every row of the table) only with `DO UPDATE … WHERE …`.
//! - `TRUNCATE` deletes every row: DELETE without a WHERE clause (set where the walk meets it).
//! - Giving an object to another role (`… OWNER TO r`, `CREATE SCHEMA … AUTHORIZATION r`,
//!   `ALTER DEFAULT PRIVILEGES FOR ROLE r`) is [`gives_ownership`]: a lease may do it for its
//!   group role or pgid's marker role (it is a member of both), and what it gave would outlive
//!   the lease, which revocation must not allow. Its own role (CURRENT_USER, CURRENT_ROLE,
//!   SESSION_USER — a lease never changes role) is fine.

use pg_query::protobuf::{
    AlterTableType, CmdType, MergeMatchKind, ObjectType, OnConflictAction, RoleSpecType,
};
use serde_json::Value;

use super::{node_of, Statement};
use crate::policy::StatementClass as C;

fn int(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

fn present(v: &Value, field: &str) -> bool {
    v.get(field).is_some_and(|f| !f.is_null())
}

/// A role named by a RoleSpec other than the session's own.
fn another_role(spec: &Value) -> bool {
    if spec.is_null() {
        return false;
    }
    let own = [
        RoleSpecType::RolespecCurrentRole,
        RoleSpecType::RolespecCurrentUser,
        RoleSpecType::RolespecSessionUser,
    ];
    !own.iter().any(|t| int(spec, "roletype") == *t as i64)
}

/// Whether the node `kind` gives something to a role other than the session's own.
pub(super) fn gives_ownership(kind: &str, body: &Value) -> bool {
    match kind {
        "AlterOwnerStmt" => body.get("newowner").is_some_and(another_role),
        "AlterTableCmd" => {
            int(body, "subtype") == AlterTableType::AtChangeOwner as i64
                && body.get("newowner").is_some_and(another_role)
        }
        "CreateSchemaStmt" => body.get("authrole").is_some_and(another_role),
        "AlterDefaultPrivilegesStmt" => body
            .get("options")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("node").and_then(node_of))
            .any(|(k, d)| {
                k == "DefElem" && d.get("defname").and_then(Value::as_str) == Some("roles") && {
                    let roles = d.get("arg").and_then(|a| a.get("node")).and_then(node_of);
                    roles
                        .and_then(|(_, l)| l.get("items").and_then(Value::as_array))
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.get("node").and_then(node_of))
                        .any(|(_, spec)| another_role(spec))
                }
            }),
        _ => false,
    }
}

pub(super) fn merge(body: &Value, st: &mut Statement) {
    for clause in body
        .get("merge_when_clauses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(("MergeWhenClause", w)) = clause.get("node").and_then(node_of) else {
            continue;
        };
        let class = match int(w, "command_type") {
            c if c == CmdType::CmdUpdate as i64 => C::Update,
            c if c == CmdType::CmdDelete as i64 => C::Delete,
            c if c == CmdType::CmdInsert as i64 => C::Insert,
            _ => continue,
        };
        st.classes.insert(class);
        let on_target_rows =
            int(w, "match_kind") != MergeMatchKind::MergeWhenNotMatchedByTarget as i64;
        if class != C::Insert && on_target_rows && !present(w, "condition") {
            st.missing_where.insert(class);
        }
    }
}

pub(super) fn upsert(body: &Value, st: &mut Statement) {
    let Some(conflict) = body.get("on_conflict_clause").filter(|c| !c.is_null()) else {
        return;
    };
    if int(conflict, "action") != OnConflictAction::OnconflictUpdate as i64 {
        return;
    }
    st.classes.insert(C::Update);
    let rows_written_out = match body
        .get("select_stmt")
        .and_then(|s| s.get("node"))
        .and_then(node_of)
    {
        Some(("SelectStmt", s)) => s
            .get("values_lists")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty()),
        // DEFAULT VALUES: one row.
        None => true,
        Some(_) => false,
    };
    if !rows_written_out && !present(conflict, "where_clause") {
        st.missing_where.insert(C::Update);
    }
}

/// CREATE AGGREGATE, OPERATOR, TYPE, TEXT SEARCH PARSER/TEMPLATE bind functions: FUNCTION;
/// CREATE COLLATION and TEXT SEARCH CONFIGURATION/DICTIONARY bind none: CREATE.
pub(super) fn define(body: &Value) -> C {
    let kind = int(body, "kind");
    let binds_none = [
        ObjectType::ObjectCollation,
        ObjectType::ObjectTsconfiguration,
        ObjectType::ObjectTsdictionary,
    ]
    .iter()
    .any(|k| *k as i64 == kind);
    if binds_none {
        C::Create
    } else {
        C::Function
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::{analyze, Dialect, Statement};
    use crate::policy::StatementClass as C;

    fn one(sql: &str) -> Statement {
        let mut a =
            analyze(sql, Dialect::default(), 1 << 20).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(a.statements.len(), 1, "{sql}");
        a.statements.remove(0)
    }

    fn set(c: &[C]) -> BTreeSet<C> {
        c.iter().copied().collect()
    }

    /// (statement, classes it carries, classes it has without a WHERE clause)
    const CASES: &[(&str, &[C], &[C])] = &[
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            &[C::Merge, C::Delete],
            &[C::Delete],
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.gone THEN DELETE",
            &[C::Merge, C::Delete],
            &[],
        ),
        (
            "MERGE INTO t USING (VALUES (1)) s(id) ON true WHEN MATCHED THEN UPDATE SET a = 0",
            &[C::Merge, C::Update],
            &[C::Update],
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
            &[C::Merge, C::Delete],
            &[C::Delete],
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
            &[C::Merge, C::Insert],
            &[],
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND t.a > 0 THEN UPDATE SET a = 1 \
             WHEN MATCHED THEN DO NOTHING WHEN NOT MATCHED THEN DO NOTHING",
            &[C::Merge, C::Update],
            &[],
        ),
        (
            "WITH s AS (SELECT 1 AS id) MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            &[C::Merge, C::Delete, C::Select],
            &[C::Delete],
        ),
        (
            "EXPLAIN ANALYZE MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            &[C::Merge, C::Delete],
            &[C::Delete],
        ),
        (
            "INSERT INTO t VALUES (1), (2) ON CONFLICT (id) DO UPDATE SET a = 0",
            &[C::Insert, C::Update],
            &[],
        ),
        (
            "INSERT INTO t DEFAULT VALUES ON CONFLICT (id) DO UPDATE SET a = 0",
            &[C::Insert, C::Update],
            &[],
        ),
        (
            "INSERT INTO t SELECT * FROM t ON CONFLICT (id) DO UPDATE SET amount = 0",
            &[C::Insert, C::Update, C::Select],
            &[C::Update],
        ),
        (
            "INSERT INTO t SELECT * FROM t ON CONFLICT (id) DO UPDATE SET amount = 0 WHERE t.id = 3",
            &[C::Insert, C::Update, C::Select],
            &[],
        ),
        (
            "INSERT INTO t SELECT * FROM t ON CONFLICT DO NOTHING",
            &[C::Insert, C::Select],
            &[],
        ),
        (
            "WITH d AS (INSERT INTO t SELECT 1 ON CONFLICT (id) DO UPDATE SET a = 0 RETURNING 1) SELECT * FROM d",
            &[C::Insert, C::Update, C::Select],
            &[C::Update],
        ),
        ("TRUNCATE t, u", &[C::Truncate, C::Delete], &[C::Delete]),
        ("COPY t FROM STDIN", &[C::Copy, C::Insert], &[]),
        ("COPY t TO STDOUT", &[C::Copy, C::Select], &[]),
        ("SELECT * INTO n FROM t", &[C::Create, C::Select], &[]),
        // Code: operators, aggregates, casts … bind functions (FUNCTION); collations do not.
        ("CREATE OPERATOR === (FUNCTION = f, LEFTARG = int)", &[C::Function], &[]),
        ("CREATE AGGREGATE a (int) (SFUNC = f, STYPE = int)", &[C::Function], &[]),
        ("CREATE TYPE b (INPUT = f_in, OUTPUT = f_out)", &[C::Function], &[]),
        ("CREATE CAST (int AS text) WITH FUNCTION f(int)", &[C::Function], &[]),
        ("CREATE CAST (int AS text) WITH INOUT", &[C::Function], &[]),
        ("CREATE TYPE r AS RANGE (SUBTYPE = int, SUBTYPE_DIFF = f)", &[C::Function], &[]),
        ("CREATE COLLATION c (LOCALE = 'C')", &[C::Create], &[]),
        ("CREATE TEXT SEARCH CONFIGURATION c (COPY = english)", &[C::Create], &[]),
        ("ALTER OPERATOR === (int, NONE) SET (RESTRICT = f)", &[C::Function], &[]),
    ];

    #[test]
    fn a_statement_carries_the_class_of_every_action_it_takes() {
        for (sql, classes, missing) in CASES {
            let st = one(sql);
            assert_eq!(st.classes, set(classes), "{sql}");
            assert_eq!(st.missing_where, set(missing), "{sql}");
        }
    }

    #[test]
    fn code_names_the_functions_it_binds() {
        for (sql, function) in [
            ("CREATE OPERATOR === (FUNCTION = pg_terminate_backend, LEFTARG = int)", "pg_terminate_backend"),
            ("CREATE OPERATOR === (PROCEDURE = pg_catalog.pg_terminate_backend, RIGHTARG = int)", "pg_catalog.pg_terminate_backend"),
            ("CREATE AGGREGATE a (int) (SFUNC = s.kill, STYPE = int, FINALFUNC = fin)", "s.kill"),
            ("CREATE AGGREGATE a (int) (SFUNC = s.kill, STYPE = int, FINALFUNC = fin)", "fin"),
            ("CREATE CAST (int AS text) WITH FUNCTION pg_read_file(int)", "pg_read_file"),
            ("CREATE TRIGGER tr AFTER INSERT ON t EXECUTE FUNCTION s.g()", "s.g"),
            ("CREATE EVENT TRIGGER e ON ddl_command_end EXECUTE FUNCTION h()", "h"),
            ("CREATE FOREIGN DATA WRAPPER w HANDLER h VALIDATOR v", "v"),
            ("CREATE CONVERSION c FOR 'UTF8' TO 'LATIN1' FROM conv", "conv"),
            ("CREATE TYPE r AS RANGE (SUBTYPE = int, CANONICAL = canon)", "canon"),
            ("ALTER OPERATOR === (int, NONE) SET (JOIN = j)", "j"),
            ("ALTER TYPE b SET (RECEIVE = recv)", "recv"),
            ("CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <, FUNCTION 1 cmp(int, int)", "cmp"),
            ("ALTER OPERATOR FAMILY f USING btree ADD FUNCTION 1 cmp2(int, int)", "cmp2"),
            ("CREATE ACCESS METHOD m TYPE TABLE HANDLER hnd", "hnd"),
            ("CREATE LANGUAGE l HANDLER plh", "plh"),
            ("CREATE TRANSFORM FOR int LANGUAGE sql (FROM SQL WITH FUNCTION fs(internal), TO SQL WITH FUNCTION ts(internal))", "ts"),
        ] {
            let st = one(sql);
            assert!(st.functions.contains(function), "{sql}: {:?}", st.functions);
        }
    }

    #[test]
    fn giving_objects_to_another_role_is_seen_wherever_it_is_written() {
        for sql in [
            "ALTER TABLE t OWNER TO pgid_p_reader",
            "ALTER TABLE IF EXISTS ONLY s.t OWNER TO pgid_lease, ADD COLUMN x int",
            "ALTER VIEW v OWNER TO other",
            "ALTER SEQUENCE q OWNER TO other",
            "ALTER SCHEMA s OWNER TO other",
            "ALTER FUNCTION f(int) OWNER TO other",
            "ALTER TYPE ty OWNER TO other",
            "ALTER LARGE OBJECT 12345 OWNER TO other",
            "ALTER TABLE t OWNER TO PUBLIC",
            "CREATE SCHEMA s AUTHORIZATION other",
            "CREATE SCHEMA AUTHORIZATION other",
            "ALTER DEFAULT PRIVILEGES FOR ROLE other GRANT SELECT ON TABLES TO PUBLIC",
            "ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER, other IN SCHEMA s GRANT SELECT ON TABLES TO x",
        ] {
            assert!(one(sql).gives_ownership, "{sql}");
        }
        for sql in [
            "ALTER TABLE t OWNER TO CURRENT_USER",
            "ALTER SCHEMA s OWNER TO SESSION_USER",
            "ALTER TABLE t OWNER TO CURRENT_ROLE",
            "CREATE SCHEMA s",
            "CREATE SCHEMA s AUTHORIZATION CURRENT_USER",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO other",
            "ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER GRANT SELECT ON TABLES TO other",
            "GRANT SELECT ON t TO other",
            "ALTER TABLE t ADD COLUMN x int",
        ] {
            assert!(!one(sql).gives_ownership, "{sql}");
        }
        // Nested in SQL given as text, too.
        let a = super::super::analyze(
            "SELECT query_to_xml('ALTER TABLE t OWNER TO other', true, false, '')",
            Dialect::default(),
            1 << 20,
        )
        .unwrap();
        assert!(a.statements[0].gives_ownership);
    }
}
