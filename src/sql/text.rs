//! Built-in functions that run SQL passed to them as a string, or read relations and cursors
//! named by a value. A statement calling one is judged with what the string does: pgid analyses
//! a constant string argument as a statement of its own ([`super::walk`] merges that analysis
//! into the caller's), and refuses a call whose SQL is not a constant — it cannot judge what it
//! cannot read. Functions that read whole tables, schemas, databases or a cursor's rows by name
//! are refused outright: what they read is decided by a value, and their result carries the rows
//! as one text value that no column-level rule can follow.
//!
//! The list was taken from the server's catalog (every `pg_catalog` function with an input
//! argument that names a query, a relation, a schema or a cursor, plus `ts_rewrite(tsquery,
//! text)`, whose argument has no name); `tests/guard.rs` reads the catalog of the server it runs
//! against and fails on any such function this module does not know.

use serde_json::Value;

use super::node_of;
use super::session::{constant, Constant};

/// Functions whose argument at `index` (when called with `args` arguments, if given) is SQL
/// that the server runs.
const RUNS_SQL: &[(&str, usize, Option<usize>)] = &[
    ("query_to_xml", 0, None),
    ("query_to_xmlschema", 0, None),
    ("query_to_xml_and_xmlschema", 0, None),
    ("ts_stat", 0, None),
    // ts_rewrite(query tsquery, select text); the three-argument form takes no SQL.
    ("ts_rewrite", 1, Some(2)),
];

/// Functions that read what a value names: whole tables, schemas, databases, a cursor's rows.
pub const READS_BY_VALUE: &[&str] = &[
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
];

/// Every function this module knows about (for the catalog check in the tests).
pub fn known() -> impl Iterator<Item = &'static str> {
    RUNS_SQL
        .iter()
        .map(|(name, _, _)| *name)
        .chain(READS_BY_VALUE.iter().copied())
}

/// What a function call means for the SQL it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextCall {
    /// Not one of these functions.
    None,
    /// Runs this SQL, a constant at this byte location of the statement.
    Runs {
        sql: String,
        location: Option<usize>,
    },
    /// Refused, for this reason.
    Refused(String),
}

/// `name` is the function name as written, lower-cased (`schema.name` or `name`); a function of
/// one of these names in any schema is treated as the built-in.
pub fn call(name: &str, body: &Value) -> TextCall {
    let bare = name.rsplit('.').next().unwrap_or(name);
    if READS_BY_VALUE.contains(&bare) {
        return TextCall::Refused(format!(
            "{bare} reads the tables, schemas or cursor a value names and returns their rows \
             as one value; pgid cannot judge that, so it is never allowed"
        ));
    }
    let args: &[Value] = body
        .get("args")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let Some((_, index, _)) = RUNS_SQL
        .iter()
        .find(|(f, _, n)| *f == bare && n.is_none_or(|n| n == args.len()))
    else {
        return TextCall::None;
    };
    let refused = || {
        TextCall::Refused(format!(
            "{bare} runs SQL given as a string; pgid judges that SQL only when it is a single \
             string constant passed by position"
        ))
    };
    if body.get("func_variadic").and_then(Value::as_bool) == Some(true)
        || args
            .iter()
            .any(|a| matches!(a.get("node").and_then(node_of), Some(("NamedArgExpr", _))))
    {
        return refused();
    }
    match args.get(*index).and_then(string_constant) {
        Some((sql, location)) => TextCall::Runs { sql, location },
        None => refused(),
    }
}

/// A string constant, bare or cast to `text` (which keeps its value as written; `varchar(n)`
/// would cut it).
fn string_constant(arg: &Value) -> Option<(String, Option<usize>)> {
    if let Some(("TypeCast", cast)) = arg.get("node").and_then(node_of) {
        let names: Vec<&str> = cast
            .get("type_name")?
            .get("names")?
            .as_array()?
            .iter()
            .filter_map(|n| n.get("node")?.get("String")?.get("sval")?.as_str())
            .collect();
        let array = cast
            .get("type_name")
            .and_then(|t| t.get("array_bounds"))
            .and_then(Value::as_array)
            .is_some_and(|b| !b.is_empty());
        let text = matches!(names.as_slice(), ["text"] | ["pg_catalog", "text"]);
        return if text && !array {
            string_constant(cast.get("arg")?)
        } else {
            None
        };
    }
    match constant(arg)? {
        (Constant::Str(s), location) => Some((s, location)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{analyze, Dialect, Statement};
    use crate::policy::StatementClass as C;

    fn one(sql: &str) -> Statement {
        let mut a =
            analyze(sql, Dialect::default(), 1 << 20).unwrap_or_else(|e| panic!("{sql}: {e}"));
        a.statements.remove(0)
    }

    #[test]
    fn sql_given_as_a_constant_is_judged_as_part_of_the_statement() {
        let st = one("SELECT query_to_xml('DELETE FROM crm.orders RETURNING 1', true, false, '')");
        assert!(st.classes.contains(&C::Delete) && st.missing_where.contains(&C::Delete));
        assert!(st.tables.contains(&("crm".into(), "orders".into())));
        assert!(st.unjudgeable.is_empty());
        let st = one(
            "SELECT pg_catalog.query_to_xml(E'SELECT pg_terminate_backend(1)\\n', true, false, '')",
        );
        assert!(
            st.functions.contains("pg_terminate_backend"),
            "{:?}",
            st.functions
        );
        let st = one("SELECT * FROM ts_stat($$SELECT to_tsvector(email) FROM crm.customers$$)");
        assert!(st.tables.contains(&("crm".into(), "customers".into())));
        let email = st.columns.iter().find(|c| c.fields == ["email"]).unwrap();
        assert_eq!(email.position, super::super::Position::Other);
        let st = one(
            "SELECT ts_rewrite('a'::tsquery, 'SELECT set_config(''role'', ''x'', false)'::text)",
        );
        assert!(st.classes.contains(&C::Role), "{:?}", st.classes);
        assert!(st.settings.iter().all(|s| s.by_function));
        // SQL given as text inside SQL given as text.
        let st = one("SELECT query_to_xml('SELECT query_to_xml(''TRUNCATE t'', true, false, '''')', true, false, '')");
        assert!(st.classes.contains(&C::Truncate));
        // Several statements: each counts.
        let st = one("SELECT query_to_xml('SELECT 1; DELETE FROM t', true, false, '')");
        assert!(st.classes.contains(&C::Delete));
        // The three-argument ts_rewrite takes no SQL.
        let st = one("SELECT ts_rewrite('a'::tsquery, 'b'::tsquery, 'c'::tsquery)");
        assert!(st.unjudgeable.is_empty() && st.classes.len() == 1);
    }

    #[test]
    fn sql_pgid_cannot_read_is_refused() {
        for sql in [
            "SELECT query_to_xml($1, true, false, '')",
            "SELECT query_to_xml('SELECT ' || 'pg_terminate_backend(1)', true, false, '')",
            "SELECT query_to_xml(q, true, false, '') FROM t",
            "SELECT query_to_xml(query => 'SELECT 1', nulls => true, tableforest => false, targetns => '')",
            "SELECT query_to_xml('SELECT 1'::varchar(3), true, false, '')",
            "SELECT query_to_xml(VARIADIC ARRAY['SELECT 1'])",
            "SELECT ts_stat(format('SELECT %s', 'x'))",
            "SELECT ts_rewrite('a'::tsquery, $1)",
            "SELECT query_to_xml('SELEC 1', true, false, '')",
            "SELECT query_to_xml('PREPARE p AS SELECT 1', true, false, '')",
            "SELECT query_to_xml('EXECUTE p', true, false, '')",
            "SELECT query_to_xml('CLOSE c', true, false, '')",
            "SELECT table_to_xml('crm.customers', true, false, '')",
            "SELECT cursor_to_xml('c', 10, true, false, '')",
            "SELECT schema_to_xml('crm', true, false, '')",
            "SELECT database_to_xml(true, false, '')",
            "SELECT s.table_to_xml('t', true, false, '')",
            // Read under the standard_conforming_strings of the moment it runs.
            r"SELECT query_to_xml('SELECT ''x\'', pg_terminate_backend(1) --''', true, false, '')",
            r"CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT ''a\'' || pg_read_file(''x'') --'''",
            // Bound where no call shows the text.
            "CREATE OPERATOR === (FUNCTION = ts_rewrite, LEFTARG = tsquery, RIGHTARG = text)",
            "CREATE AGGREGATE a (text) (SFUNC = pg_catalog.query_to_xml, STYPE = xml)",
        ] {
            let st = one(sql);
            assert!(!st.unjudgeable.is_empty(), "{sql}");
        }
        let deep = (0..6).fold("SELECT 1".to_string(), |inner, _| {
            format!(
                "SELECT query_to_xml('{}', true, false, '')",
                inner.replace('\'', "''")
            )
        });
        assert!(!one(&deep).unjudgeable.is_empty());
    }
}

#[cfg(test)]
mod bodies {
    use super::super::{analyze, Dialect, Statement};
    use crate::policy::StatementClass as C;

    fn one(sql: &str) -> Statement {
        analyze(sql, Dialect::default(), 1 << 20)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .statements
            .remove(0)
    }

    #[test]
    fn sql_function_bodies_are_read_and_others_are_opaque() {
        let st = one("CREATE FUNCTION f(a int) RETURNS bool LANGUAGE sql AS 'SELECT pg_terminate_backend(a)'");
        assert!(st.functions.contains("pg_terminate_backend"));
        assert_eq!(st.opaque_code, None);
        let st = one("CREATE FUNCTION f() RETURNS void LANGUAGE SQL AS $$DELETE FROM t$$");
        assert!(st.classes.contains(&C::Delete) && st.missing_where.contains(&C::Delete));
        let st =
            one("CREATE FUNCTION g() RETURNS int BEGIN ATOMIC SELECT pg_cancel_backend(1); END");
        assert!(st.functions.contains("pg_cancel_backend"));
        let st = one("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN PERFORM 1; END$$");
        assert_eq!(st.opaque_code.as_deref(), Some("plpgsql"));
        let st = one("DO 'BEGIN END'");
        assert_eq!(st.opaque_code.as_deref(), Some("plpgsql"));
        let st = one("CREATE FUNCTION c() RETURNS int LANGUAGE c AS 'lib', 'sym'");
        assert_eq!(st.opaque_code.as_deref(), Some("c"));
        let st = one("SELECT query_to_xml('SELECT 1', true, false, '')");
        assert_eq!(st.opaque_code, None);
    }
}
