//! Whether and how a statement's results are masked, from its analysis and the masked columns.
//! Pure.
//!
//! A reference to a masked column (or a `*`, or a whole-row reference, over a table that has
//! masked columns) is fine as a bare output of the outermost SELECT — Postgres then names the
//! column's table and attribute in RowDescription and the proxy masks it there — and fine in a
//! predicate (WHERE, JOIN … ON, GROUP BY, ORDER BY …), which chooses rows without returning the
//! value. Anywhere else (inside an expression, a nested query's output, a whole-row value) it
//! *taints* the statement: every output Postgres cannot attribute to a column is then masked as a
//! whole. A statement using masked columns is refused when it could move the value somewhere
//! else: anything but a SELECT (EXPLAIN too: it quotes expressions), a function outside a list of side-effect-free
//! built-ins, COPY of a masked table, and — under any policy with masks — the statistics views,
//! whose histograms and most-common values hold column contents, notifications (LISTEN, NOTIFY,
//! pg_notify: a payload cannot be masked) and DO (code pgid cannot see).
//!
//! Names can hide where a value comes from, so two cases make every output Postgres cannot
//! attribute masked: a join that merges a masked column (`USING`, `NATURAL`: a FULL join's merged
//! column has no origin), and an alias column list over a masked table or a join (`AS c(a, b, x)`),
//! under which any reference may be a masked column. A statement that names a masked table
//! without reading a masked column still has its error texts withheld ([`MaskPlan::Withhold`]).

use std::collections::BTreeSet;

use crate::policy::{MaskMethod, StatementClass};
use crate::sql::{Position, Statement};

/// A masked column, or every column of a view built on masked columns (`column: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedColumn {
    pub schema: String,
    pub table: String,
    pub column: Option<String>,
    pub method: MaskMethod,
    pub keep: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskPlan {
    /// No masked column is involved.
    Untouched,
    /// Refused: the reason.
    Refuse(String),
    /// A masked table or view is named but no masked column read: results are masked by origin
    /// only, and error and notice texts are withheld (a constraint's `Failing row contains (…)`
    /// quotes the whole row).
    Withhold,
    /// Masked columns are read: mask outputs by origin; when `tainted`, also every output with no
    /// origin, by `method`. Error and notice texts are withheld.
    Mask {
        tainted: bool,
        /// Outputs (by position) built from masked columns, when `tainted` is not set: only
        /// these are masked as a whole.
        tainted_outputs: Vec<usize>,
        method: MaskMethod,
        keep: usize,
        /// The masked columns the statement uses (`schema.table.column`, or `schema.view.*`).
        columns: Vec<String>,
    },
}

/// Relations whose contents describe other tables' data.
const STATISTICS: &[&str] = &[
    "pg_stats",
    "pg_statistic",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic_ext_data",
    "pg_stat_statements",
    "pg_stat_activity",
];

/// Built-in functions with no side effects and no way to send a value anywhere but the result.
const SAFE_FUNCTIONS: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "string_agg",
    "array_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "variance",
    "percentile_cont",
    "percentile_disc",
    "mode",
    // strings
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "substr",
    "substring",
    "left",
    "right",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "concat_ws",
    "position",
    "strpos",
    "split_part",
    "reverse",
    "repeat",
    "lpad",
    "rpad",
    "md5",
    "sha256",
    "encode",
    "decode",
    "to_hex",
    "format",
    "translate",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_like",
    "starts_with",
    "ascii",
    "chr",
    "quote_literal",
    "quote_ident",
    "overlay",
    "string_to_array",
    "array_to_string",
    // numbers, dates
    "abs",
    "round",
    "floor",
    "ceil",
    "ceiling",
    "trunc",
    "mod",
    "power",
    "sqrt",
    "random",
    "now",
    "current_date",
    "date_trunc",
    "date_part",
    "extract",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "age",
    "make_date",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    // rows, json, arrays
    "row_to_json",
    "to_json",
    "to_jsonb",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "array_length",
    "cardinality",
    "unnest",
    "generate_series",
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
];

/// Built-in functions that take any row: in attribute notation (`c.to_json` for `to_json(c)`)
/// they read a whole row — masked columns included — written like a column reference. Taken
/// from the catalog (every pg_catalog function callable with one argument of type record, any,
/// anyelement, anynonarray, anycompatible or anycompatiblenonarray); `tests/meaning.rs` fails on
/// a server that has one more.
pub const ROW_FUNCTIONS: &[&str] = &[
    "any_out",
    "anycompatible_out",
    "anycompatiblenonarray_out",
    "anyelement_out",
    "anynonarray_out",
    "concat",
    "hash_record",
    "json_build_array",
    "json_build_object",
    "jsonb_build_array",
    "jsonb_build_object",
    "num_nonnulls",
    "num_nulls",
    "pg_collation_for",
    "pg_column_compression",
    "pg_column_size",
    "pg_typeof",
    "quote_literal",
    "quote_nullable",
    "record_out",
    "record_send",
    "row_to_json",
    "to_json",
    "to_jsonb",
];

/// A function the statement calls that is defined in the database rather than built in
/// (`user_functions`: names of functions outside pg_catalog and information_schema). Under a
/// policy with masks such a function is refused: it could read a masked column itself.
pub fn user_function<'a>(st: &'a Statement, user_functions: &BTreeSet<String>) -> Option<&'a str> {
    st.functions
        .iter()
        .find(|f| {
            let (schema, name) = f.rsplit_once('.').unwrap_or(("", f));
            schema != "pg_catalog" && user_functions.contains(name)
        })
        .map(String::as_str)
        // In attribute notation (`c.f` for `f(c)`) a call looks like a column reference.
        .or_else(|| {
            st.columns.iter().find_map(|c| match c.fields.as_slice() {
                [.., _, last] if user_functions.contains(last) => Some(last.as_str()),
                _ => None,
            })
        })
}

/// One plan for a statement and what it EXECUTEs: a refusal wins, then masking.
pub fn merge(a: MaskPlan, b: MaskPlan) -> MaskPlan {
    match (a, b) {
        (MaskPlan::Refuse(r), _) | (_, MaskPlan::Refuse(r)) => MaskPlan::Refuse(r),
        (MaskPlan::Untouched, other) | (other, MaskPlan::Untouched) => other,
        (MaskPlan::Withhold, other) | (other, MaskPlan::Withhold) => other,
        (
            MaskPlan::Mask {
                tainted: t1,
                tainted_outputs: mut o1,
                method: m1,
                keep: k1,
                columns: mut c1,
            },
            MaskPlan::Mask {
                tainted: t2,
                tainted_outputs: o2,
                method: m2,
                keep: k2,
                columns: c2,
            },
        ) => {
            c1.extend(c2);
            let (method, keep) = if (m1, k1) == (m2, k2) {
                (m1, k1)
            } else {
                (MaskMethod::Redact, 0)
            };
            o1.extend(o2);
            MaskPlan::Mask {
                tainted: t1 || t2,
                tainted_outputs: o1,
                method,
                keep,
                columns: c1,
            }
        }
    }
}

/// The masked tables a statement names, what they go by in it, and their masked columns.
struct Scope<'a> {
    involved: Vec<&'a MaskedColumn>,
    names: BTreeSet<String>,
    columns: BTreeSet<String>,
    all_columns: bool,
    /// A masked table's columns (or a join's) go by other names in the statement: any
    /// reference may be to a masked column.
    renamed: bool,
}

impl<'a> Scope<'a> {
    fn of(st: &Statement, masks: &'a [MaskedColumn]) -> Option<Scope<'a>> {
        // An unqualified name matches any schema.
        let involved: Vec<&MaskedColumn> = masks
            .iter()
            .filter(|m| {
                st.tables
                    .iter()
                    .any(|(s, t)| *t == m.table && (s.is_empty() || *s == m.schema))
            })
            .collect();
        if involved.is_empty() {
            return None;
        }
        let names = st
            .aliases
            .iter()
            .filter(|(_, s, t)| {
                involved
                    .iter()
                    .any(|m| m.table == *t && (s.is_empty() || *s == m.schema))
            })
            .map(|(a, _, _)| a.clone())
            .collect();
        let all_columns = involved.iter().any(|m| m.column.is_none());
        let renamed = st.renamed.iter().any(|(s, t)| {
            (s == "*" && t == "*")
                || involved
                    .iter()
                    .any(|m| m.table == *t && (s.is_empty() || *s == m.schema))
        });
        let columns = involved
            .iter()
            .filter_map(|m| m.column.as_deref().map(lower))
            .collect();
        Some(Scope {
            involved,
            names,
            columns,
            all_columns,
            renamed,
        })
    }

    /// Whether a join may merge a masked column (USING it, NATURAL, or under other names): a
    /// merged column has no single source, so Postgres names none in RowDescription.
    fn merges(&self, merged: &BTreeSet<String>) -> bool {
        !merged.is_empty()
            && (self.all_columns
                || self.renamed
                || merged.iter().any(|m| m == "*" || self.columns.contains(m)))
    }

    /// Whether a column reference can reach a masked value.
    fn relevant(&self, fields: &[String]) -> bool {
        if self.renamed && !fields.is_empty() {
            return true;
        }
        match fields {
            [one] if one == "*" => true,
            [one] => self.columns.contains(one) || self.names.contains(one) || self.all_columns,
            [.., q, last] => {
                let qualifier_masked = self.names.contains(q);
                // `c.*`, or `c.f` for a function over the whole row `f(c)`.
                (qualifier_masked && (last == "*" || ROW_FUNCTIONS.contains(&last.as_str())))
                    || (last != "*" && self.columns.contains(last))
                    || (self.all_columns && qualifier_masked)
            }
            [] => false,
        }
    }

    /// The method for a reference ending in `last`: its column's, else the strictest around.
    fn method(&self, last: &str) -> (MaskMethod, usize) {
        let named = self
            .involved
            .iter()
            .find(|m| m.column.as_deref().map(lower).as_deref() == Some(last));
        match named {
            Some(m) => (m.method, m.keep),
            None if self
                .involved
                .iter()
                .all(|m| m.method == self.involved[0].method) =>
            {
                (self.involved[0].method, self.involved[0].keep)
            }
            None => (MaskMethod::Redact, 0),
        }
    }
}

/// For a view's definition: which of its outputs (by position) carry masked values, and how.
/// `None` when that cannot be told (a `*` left in the outputs, a set operation, a masked
/// reference outside the outputs' expressions) — then every column of the view is masked.
pub fn view_outputs(
    st: &Statement,
    masks: &[MaskedColumn],
) -> Option<std::collections::BTreeMap<usize, (MaskMethod, usize)>> {
    let mut out = std::collections::BTreeMap::new();
    let Some(scope) = Scope::of(st, masks) else {
        return Some(out);
    };
    if st.root != "SelectStmt" {
        return None;
    }
    for c in &st.columns {
        if !scope.relevant(&c.fields) || c.position == Position::Predicate {
            continue;
        }
        let last = c.fields.last().map(String::as_str).unwrap_or("*");
        match c.output {
            // The column itself keeps its method; a value computed from it is redacted (see
            // `plan`: partial and hash are for the column's own value).
            Some(i) if last != "*" && c.position == Position::Output => {
                out.entry(i).or_insert_with(|| scope.method(last));
            }
            Some(i) if last != "*" => {
                out.insert(i, (MaskMethod::Redact, 0));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Notifications under a policy with masks: a payload is free text that no RowDescription
/// describes, so it cannot be masked; sending one (NOTIFY, pg_notify) could carry a masked value
/// to any listener, and listening would receive what others send. UNLISTEN stays allowed.
fn notification(st: &Statement) -> Option<String> {
    let what = match st.root.as_str() {
        "NotifyStmt" => "NOTIFY",
        "ListenStmt" => "LISTEN",
        _ => st
            .functions
            .iter()
            .find(|f| f.rsplit('.').next() == Some("pg_notify"))
            .map(|_| "pg_notify")?,
    };
    Some(format!(
        "{what} is not allowed under a policy with masked columns: a notification's payload cannot be masked"
    ))
}

/// Decides `st` under `masks`.
pub fn plan(st: &Statement, masks: &[MaskedColumn]) -> MaskPlan {
    if masks.is_empty() {
        return MaskPlan::Untouched;
    }
    if let Some(reason) = notification(st) {
        return MaskPlan::Refuse(reason);
    }
    if st.classes.contains(&StatementClass::Do) {
        // Inline code reads what it likes and sends it on (RAISE, NOTIFY, a table): like a
        // function defined in the database, it is not allowed where columns are masked.
        return MaskPlan::Refuse(
            "DO runs code pgid cannot see; it is not allowed under a policy with masked columns"
                .into(),
        );
    }
    if st.classes.contains(&StatementClass::Function) {
        // Code made now runs later without being named: an operator, a cast or a trigger calls
        // its function where no statement shows it, reading masked columns unseen.
        return MaskPlan::Refuse(
            "creating code (functions, operators, casts, triggers …) is not allowed under a \
             policy with masked columns: it would run where pgid cannot see what it reads"
                .into(),
        );
    }
    if let Some((_, t)) = st
        .tables
        .iter()
        .find(|(s, t)| (s.is_empty() || s == "pg_catalog") && STATISTICS.contains(&t.as_str()))
    {
        return MaskPlan::Refuse(format!(
            "{t} can reveal the contents of masked columns; it is not readable under this policy"
        ));
    }
    if let Some(f) = st.functions.iter().find(|f| {
        let name = f.rsplit('.').next().unwrap_or(f);
        crate::sql::text::known().any(|k| k == name)
    }) {
        return MaskPlan::Refuse(format!(
            "{f} runs SQL or reads tables given as a value, and returns what it read as one value; it is not allowed under a policy with masked columns"
        ));
    }
    let Some(scope) = Scope::of(st, masks) else {
        return MaskPlan::Untouched;
    };
    let (involved, names) = (&scope.involved, &scope.names);
    let mut used = false;
    let mut tainted = false;
    let mut tainted_outputs: BTreeSet<usize> = BTreeSet::new();
    // With `*` among the outputs, output positions no longer match result columns.
    let star_output = st
        .columns
        .iter()
        .any(|c| c.position == Position::Output && c.fields.last().is_some_and(|f| f == "*"));
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for c in &st.columns {
        if !scope.relevant(&c.fields) {
            continue;
        }
        used = true;
        let last = c.fields.last().map(String::as_str).unwrap_or("*");
        for m in involved {
            match &m.column {
                Some(col) if last == "*" || names.contains(last) || lower(col) == last => {
                    touched.insert(format!("{}.{}.{col}", m.schema, m.table));
                }
                None => {
                    touched.insert(format!("{}.{}.*", m.schema, m.table));
                }
                _ => {}
            }
        }
        // A whole row: `c`, or `c.f` — a function over it in attribute notation.
        let whole_row = match c.fields.as_slice() {
            [one] => names.contains(one),
            [.., q, last] => names.contains(q) && ROW_FUNCTIONS.contains(&last.as_str()),
            [] => false,
        };
        match c.position {
            Position::Output if !whole_row => {}
            Position::Predicate => {}
            _ => match c.output {
                Some(i) if !star_output => {
                    tainted_outputs.insert(i);
                }
                _ => tainted = true,
            },
        }
    }
    // A column merged by a join is no column of its own: whatever Postgres cannot attribute is
    // masked (a FULL join's merged column is reported with no origin; the others report the
    // input they take the value from, masked by origin when that input is).
    if scope.merges(&st.merged) {
        used = true;
        tainted = true;
        for m in involved {
            if let Some(col) = &m.column {
                if scope.renamed || st.merged.contains("*") || st.merged.contains(&lower(col)) {
                    touched.insert(format!("{}.{}.{col}", m.schema, m.table));
                }
            }
        }
    }
    if st.root == "CopyStmt" {
        return MaskPlan::Refuse(
            "COPY of a table with masked columns is not allowed; SELECT the columns instead".into(),
        );
    }
    if !used {
        return MaskPlan::Withhold;
    }
    let select_only = st.classes.iter().all(|c| *c == StatementClass::Select);
    // EXPLAIN is out too: its plan text quotes the statement's expressions and constants.
    if st.root != "SelectStmt" || !select_only {
        return MaskPlan::Refuse(
            "statements that use masked columns may only read them (SELECT)".into(),
        );
    }
    if let Some(f) = st.functions.iter().find(|f| {
        let (schema, name) = f.rsplit_once('.').unwrap_or(("pg_catalog", f));
        schema != "pg_catalog" || !SAFE_FUNCTIONS.contains(&name)
    }) {
        return MaskPlan::Refuse(format!(
            "function {f} is not allowed in a statement that uses masked columns"
        ));
    }
    // What masks an output computed from masked columns: never `partial` or `hash`, which are
    // made for the column's own value — over a derived one the statement chooses which
    // characters `partial` keeps (`'x' || substr(card, k, 4)`), and `hash` becomes an oracle for
    // any text the statement builds (`left(ssn, 0) || '7'`). `null` where every column involved
    // says so, `redact` otherwise.
    let (method, keep) = if involved.iter().all(|m| m.method == MaskMethod::Null) {
        (MaskMethod::Null, 0)
    } else {
        (MaskMethod::Redact, 0)
    };
    MaskPlan::Mask {
        tainted,
        tainted_outputs: if tainted {
            Vec::new()
        } else {
            tainted_outputs.into_iter().collect()
        },
        method,
        keep,
        columns: touched.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{analyze, Dialect};

    fn masks() -> Vec<MaskedColumn> {
        ["email", "ssn"]
            .iter()
            .map(|c| MaskedColumn {
                schema: "crm".into(),
                table: "customers".into(),
                column: Some(c.to_string()),
                method: MaskMethod::Redact,
                keep: 0,
            })
            .collect()
    }

    fn decide(sql: &str) -> MaskPlan {
        let a = analyze(sql, Dialect::default(), 1 << 20).unwrap();
        plan(&a.statements[0], &masks())
    }

    fn mask(tainted: bool) -> MaskPlan {
        MaskPlan::Mask {
            tainted,
            tainted_outputs: Vec::new(),
            method: MaskMethod::Redact,
            keep: 0,
            columns: Vec::new(),
        }
    }

    /// The plan without the column list, for comparing kinds.
    fn kind(p: MaskPlan) -> MaskPlan {
        match p {
            MaskPlan::Mask {
                tainted,
                tainted_outputs,
                method,
                keep,
                ..
            } => MaskPlan::Mask {
                tainted: tainted || !tainted_outputs.is_empty(),
                tainted_outputs: Vec::new(),
                method,
                keep,
                columns: Vec::new(),
            },
            other => other,
        }
    }

    #[test]
    fn bare_outputs_and_predicates_are_masked_by_origin() {
        for sql in [
            "SELECT email FROM crm.customers",
            "SELECT c.email AS x FROM crm.customers c",
            "SELECT * FROM crm.customers",
            "SELECT c.* FROM crm.customers c",
            "TABLE crm.customers",
            "SELECT name FROM crm.customers WHERE ssn = '1' ORDER BY email",
            "SELECT o.id FROM crm.orders o JOIN crm.customers c ON c.email = o.note",
            "SELECT id FROM crm.customers WHERE id IN (SELECT id FROM crm.customers WHERE ssn LIKE '1%')",
        ] {
            assert_eq!(kind(decide(sql)), mask(false), "{sql}");
        }
    }

    #[test]
    fn derived_outputs_taint_the_statement() {
        for sql in [
            "SELECT upper(email) FROM crm.customers",
            "SELECT email || '' FROM crm.customers",
            "SELECT ssn::text FROM crm.customers",
            "SELECT CASE WHEN true THEN ssn END FROM crm.customers",
            "SELECT (SELECT ssn FROM crm.customers LIMIT 1)",
            "SELECT x FROM (SELECT email AS x FROM crm.customers) s",
            "WITH t AS (SELECT ssn FROM crm.customers) SELECT * FROM t",
            "SELECT email FROM crm.customers UNION SELECT 'x'",
            "SELECT row_to_json(c) FROM crm.customers c",
            "SELECT c FROM crm.customers c",
            "SELECT ROW(c.*) FROM crm.customers c",
            "SELECT json_build_object('e', email) FROM crm.customers",
            "SELECT string_agg(ssn, ',') FROM crm.customers",
        ] {
            assert_eq!(kind(decide(sql)), mask(true), "{sql}");
        }
    }

    #[test]
    fn the_plan_lists_the_masked_columns_used() {
        let MaskPlan::Mask { columns, .. } =
            decide("SELECT c.email, name FROM crm.customers c WHERE ssn = '1'")
        else {
            panic!()
        };
        assert_eq!(columns, ["crm.customers.email", "crm.customers.ssn"]);
        let MaskPlan::Mask { columns, .. } = decide("SELECT * FROM crm.customers") else {
            panic!()
        };
        assert_eq!(columns.len(), 2);
    }

    #[test]
    fn a_derived_output_taints_only_itself_when_outputs_map_to_columns() {
        let outputs = |sql: &str| match decide(sql) {
            MaskPlan::Mask {
                tainted,
                tainted_outputs,
                ..
            } => (tainted, tainted_outputs),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            outputs("SELECT id, upper(email), count(*) OVER () FROM crm.customers"),
            (false, vec![1])
        );
        assert_eq!(
            outputs("SELECT (SELECT ssn FROM crm.customers LIMIT 1), 1"),
            (false, vec![0])
        );
        // `*` shifts positions; a nested query's output is not an output of its own.
        assert_eq!(
            outputs("SELECT *, upper(email) FROM crm.customers"),
            (true, vec![])
        );
        assert_eq!(
            outputs("SELECT x FROM (SELECT email AS x FROM crm.customers) s"),
            (true, vec![])
        );
    }

    #[test]
    fn view_columns_resolve_to_the_base_columns_they_come_from() {
        let outputs = |sql: &str| {
            let a = analyze(sql, Dialect::default(), 1 << 20).unwrap();
            view_outputs(&a.statements[0], &masks()).map(|m| m.into_keys().collect::<Vec<_>>())
        };
        assert_eq!(
            outputs("SELECT c.id, c.name, c.email, upper(c.ssn) AS s FROM crm.customers c WHERE c.ssn <> ''"),
            Some(vec![2, 3])
        );
        assert_eq!(outputs("SELECT id FROM crm.customers"), Some(vec![]));
        assert_eq!(outputs("SELECT * FROM crm.customers"), None);
        assert_eq!(
            outputs("SELECT email FROM crm.customers UNION SELECT 'x'"),
            None
        );
    }

    #[test]
    fn ways_to_move_a_value_are_refused() {
        for sql in [
            "INSERT INTO crm.notes (body) SELECT ssn FROM crm.customers",
            "UPDATE crm.customers SET name = ssn WHERE id = 1",
            "CREATE TABLE x AS SELECT email FROM crm.customers",
            "SELECT email INTO x FROM crm.customers",
            "SELECT set_config('pgid.x', ssn, false) FROM crm.customers",
            "SELECT pg_notify('c', email) FROM crm.customers",
            "SELECT my_func(email) FROM crm.customers",
            "COPY crm.customers TO STDOUT",
            "COPY (SELECT email FROM crm.customers) TO STDOUT",
            "DELETE FROM crm.customers WHERE id = 1 RETURNING *",
            "DECLARE c CURSOR FOR SELECT ssn FROM crm.customers",
            "SELECT most_common_vals FROM pg_stats WHERE attname = 'ssn'",
            "SELECT * FROM pg_catalog.pg_statistic",
            "SELECT query_to_xml('SELECT ssn FROM crm.customers', true, true, '')",
            "SELECT table_to_xml('crm.customers', true, true, '')",
            "EXPLAIN SELECT email FROM crm.customers",
        ] {
            assert!(
                matches!(decide(sql), MaskPlan::Refuse(_)),
                "{sql}: {:?}",
                decide(sql)
            );
        }
    }

    #[test]
    fn statements_without_masked_columns_are_untouched() {
        for sql in ["SELECT 1", "SELECT email FROM crm.orders", "UNLISTEN *"] {
            assert_eq!(decide(sql), MaskPlan::Untouched, "{sql}");
        }
        // Naming a masked table without reading a masked column: error texts are withheld (a
        // constraint violation quotes the whole row).
        for sql in [
            "SELECT id, name FROM crm.customers",
            "SELECT count(*) FROM crm.customers",
            "DELETE FROM crm.customers WHERE id = 1",
            "UPDATE crm.customers SET name = NULL WHERE id = 1",
            "SELECT id, c1.name FROM crm.customers c1 FULL JOIN crm.customers c2 USING (id)",
        ] {
            assert_eq!(decide(sql), MaskPlan::Withhold, "{sql}");
        }
    }

    #[test]
    fn notifications_are_refused_under_masks() {
        for sql in [
            "NOTIFY c, 'x'",
            "LISTEN c",
            "SELECT pg_notify('c', 'x')",
            "SELECT pg_catalog.pg_notify('c', name) FROM crm.customers",
            "SELECT count(pg_notify('c', n::text)) FROM generate_series(1, 10) n",
        ] {
            assert!(
                matches!(decide(sql), MaskPlan::Refuse(ref r) if r.contains("notification")),
                "{sql}"
            );
        }
        for sql in [
            "DO $$ BEGIN EXECUTE 'LISTEN c'; END $$",
            "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM crm.customers LIMIT 1); END $$",
        ] {
            assert!(
                matches!(decide(sql), MaskPlan::Refuse(ref r) if r.contains("DO")),
                "{sql}"
            );
        }
    }

    #[test]
    fn merged_join_columns_are_masked_whole() {
        // Every join kind, USING and NATURAL, qualified or not, through `*`, join aliases and
        // USING aliases: the outputs Postgres cannot attribute are masked (tainted).
        let kinds = [
            "JOIN",
            "INNER JOIN",
            "LEFT JOIN",
            "RIGHT JOIN",
            "FULL JOIN",
            "FULL OUTER JOIN",
        ];
        let mut n = 0;
        for kind in kinds {
            for (select, from) in [
                (
                    "email",
                    format!("crm.customers a {kind} crm.customers b USING (email)"),
                ),
                (
                    "*",
                    format!("crm.customers a {kind} crm.customers b USING (id, email)"),
                ),
                (
                    "j.email",
                    format!("(crm.customers a {kind} crm.customers b USING (email)) j"),
                ),
                (
                    "u.email",
                    format!("crm.customers a {kind} crm.customers b USING (email) AS u"),
                ),
                (
                    "email",
                    format!("crm.customers a NATURAL {kind} crm.customers b"),
                ),
                ("*", format!("crm.customers NATURAL {kind} crm.orders")),
                (
                    "ssn",
                    format!("crm.customers a {kind} (SELECT 'x'::text AS ssn) b USING (ssn)"),
                ),
                (
                    "x",
                    format!("crm.customers a(i, n, x) {kind} crm.customers b(i, n, x) USING (x)"),
                ),
            ] {
                let sql = format!("SELECT {select} FROM {from}");
                assert_eq!(kind_of(&sql), mask(true), "{sql}");
                n += 1;
            }
        }
        assert_eq!(n, 48);
        // A merged column that is not masked leaves the statement as it was.
        assert_eq!(
            decide("SELECT email FROM crm.customers a JOIN crm.customers b USING (id)"),
            kind_masked(false)
        );
    }

    #[test]
    fn column_names_given_by_an_alias_reach_the_masked_column() {
        for sql in [
            "SELECT upper(x) FROM crm.customers AS c(i, n, x)",
            "SELECT x::int FROM crm.customers c(i, n, x)",
            "SELECT upper(j.x) FROM (crm.customers CROSS JOIN crm.orders) AS j(a, b, x)",
        ] {
            assert_eq!(kind_of(sql), mask(true), "{sql}");
        }
        for sql in [
            "SELECT pg_notify('c', x) FROM crm.customers AS c(i, n, x)",
            "INSERT INTO crm.notes (body) SELECT x FROM crm.customers AS c(i, n, x)",
        ] {
            assert!(matches!(decide(sql), MaskPlan::Refuse(_)), "{sql}");
        }
    }

    fn kind_of(sql: &str) -> MaskPlan {
        kind(decide(sql))
    }

    fn kind_masked(tainted: bool) -> MaskPlan {
        MaskPlan::Mask {
            tainted,
            tainted_outputs: Vec::new(),
            method: MaskMethod::Redact,
            keep: 0,
            columns: vec!["crm.customers.email".into()],
        }
    }
}
