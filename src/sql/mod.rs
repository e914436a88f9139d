//! SQL analysis: the only module that imports `pg_query`. [`analyze`] parses a statement string
//! the way the server will (given `standard_conforming_strings`) and walks the whole tree — every
//! node of every statement, CTEs, subqueries, `EXPLAIN`, `PREPARE`, cursors included — recording
//! statement classes, tables, functions and WHERE presence. A node type the walker does not know
//! makes the string unanalysable; the guard refuses what cannot be analysed.

mod cache;
mod nodes;

pub use cache::{Analyzer, Outcome};

use std::collections::BTreeSet;

use serde_json::Value;

use crate::policy::StatementClass;
use nodes::Role;

/// How pgid reads a statement, as the server would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dialect {
    /// `standard_conforming_strings = off`: backslashes escape in '…' literals.
    pub backslash_escapes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("statement is larger than {0} bytes")]
    TooLarge(usize),
    #[error("statement cannot be parsed: {0}")]
    Parse(String),
    #[error("statement contains a construct pgid does not analyse ({0})")]
    Unknown(String),
}

/// What one statement of a string does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    /// Every class occurring anywhere in the statement (nested ones included).
    pub classes: BTreeSet<StatementClass>,
    /// UPDATE/DELETE occurrences without a WHERE clause.
    pub missing_where: BTreeSet<StatementClass>,
    /// Tables and views named, as written (`schema` empty when unqualified).
    pub tables: BTreeSet<(String, String)>,
    /// Functions called, lower case, as written (`schema.name` or `name`).
    pub functions: BTreeSet<String>,
    /// Names of SQL-level prepared statements this statement EXECUTEs.
    pub executes: BTreeSet<String>,
    /// `PREPARE name AS …`: the name it defines (the classes above are the prepared query's).
    pub prepares: Option<String>,
    /// Touches pgid's own schema.
    pub touches_pgid: bool,
    /// The statement's own kind (`SelectStmt`, `ExplainStmt`, `CopyStmt`, …).
    pub root: String,
    /// Every column reference and where it stands (what masking needs).
    pub columns: Vec<ColumnUse>,
    /// Tables and views with the name they go by in the statement: (alias, schema, table).
    pub aliases: BTreeSet<(String, String, String)>,
}

/// Where a column reference stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Position {
    /// A bare column (or `*`) that is itself an output of the outermost SELECT: Postgres reports
    /// where such a column comes from in RowDescription.
    Output,
    /// In WHERE, JOIN … ON, GROUP BY, HAVING, ORDER BY, DISTINCT ON or a window definition: it
    /// decides which rows come back, not what they contain.
    Predicate,
    /// Anywhere else: inside an expression, a nested query's output, RETURNING, SET, VALUES.
    Other,
}

/// One column reference: its name parts as written, lower-cased unless quoted (`*` for a star).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ColumnUse {
    pub fields: Vec<String>,
    pub position: Position,
    /// The output of the outermost SELECT whose expression contains this reference.
    pub output: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    pub statements: Vec<Statement>,
}

impl Analysis {
    pub fn classes(&self) -> BTreeSet<StatementClass> {
        self.statements
            .iter()
            .flat_map(|s| s.classes.iter().copied())
            .collect()
    }
}

/// Stack size for threads that run [`analyze`]: decoding and walking recurse once per nesting
/// level (`1+1+…`, subqueries in subqueries). libpg_query measures its own depth from the stack
/// of the thread it first ran on, so analysis needs threads built with this much stack, not a
/// stack grown on the fly.
pub const ANALYSIS_STACK: usize = 64 << 20;

/// Parses and walks `sql`. Run it on a thread with [`ANALYSIS_STACK`] bytes of stack.
pub fn analyze(sql: &str, dialect: Dialect, max_bytes: usize) -> Result<Analysis, AnalyzeError> {
    if sql.len() > max_bytes {
        return Err(AnalyzeError::TooLarge(max_bytes));
    }
    let options = if dialect.backslash_escapes {
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    } else {
        pg_query::ParserOptions::DEFAULT
    };
    let parsed = pg_query::parse(sql, options).map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    let tree = serde_json::to_value(&parsed.protobuf.stmts)
        .map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    let mut out = Analysis::default();
    for raw in tree.as_array().into_iter().flatten() {
        let mut st = Statement::default();
        if let Some((kind, _)) = raw
            .get("stmt")
            .and_then(|s| s.get("node"))
            .and_then(node_of)
        {
            st.root = kind.to_string();
        }
        walk(raw, &mut st, Ctx::default())?;
        out.statements.push(st);
    }
    Ok(out)
}

/// The statement with each literal value replaced by a `$n` placeholder (for audit records
/// that must not keep values). `None` when it does not parse.
pub fn normalize(sql: &str) -> Option<String> {
    pg_query::normalize(sql).ok()
}

/// The statement with every literal value blanked, token by token as Postgres's own lexer reads
/// it (so a string's end is where the server sees it, never guessed). Two statements with the
/// same shape have the same analysis: nothing pgid decides depends on a literal's value. `None`
/// when the text does not scan, or when literals are read with backslash escapes (the scanner
/// reads them as standard_conforming_strings = on).
pub fn shape(sql: &str, dialect: Dialect) -> Option<String> {
    use pg_query::protobuf::Token;
    relex(sql, dialect, |kind, piece| match kind {
        Token::Iconst => "<int>",
        Token::Fconst => "<num>",
        Token::Sconst | Token::Usconst => "<str>",
        Token::Bconst => "<bits>",
        Token::Xconst => "<hex>",
        _ => piece,
    })
}

/// The statement as its tokens, literals included, one space apart, without comments or a
/// trailing `;`: two texts that differ only in layout have the same canonical form (retry-mode
/// approvals match statements by it). The text itself when it does not scan cleanly.
pub fn canonical(sql: &str, dialect: Dialect) -> String {
    match relex(sql, dialect, |_, piece| piece) {
        Some(mut c) => {
            while c.ends_with(';') || c.ends_with(' ') {
                c.pop();
            }
            c
        }
        None => sql.to_string(),
    }
}

/// `sql`'s tokens, each as `piece` says, one space where the text had white space or comments.
fn relex(
    sql: &str,
    dialect: Dialect,
    piece: impl for<'a> Fn(pg_query::protobuf::Token, &'a str) -> &'a str,
) -> Option<String> {
    use pg_query::protobuf::Token;
    if dialect.backslash_escapes {
        return None;
    }
    let scanned = pg_query::scan(sql).ok()?;
    let mut out = String::with_capacity(sql.len());
    let mut last = 0usize;
    for t in &scanned.tokens {
        let (start, end) = (t.start as usize, t.end as usize);
        let text = sql.get(start..end)?;
        let kind = Token::try_from(t.token).ok()?;
        if matches!(kind, Token::SqlComment | Token::CComment) {
            last = end;
            continue;
        }
        // Text between tokens is white space or comments; keep one separator.
        if start > last {
            out.push(' ');
        }
        last = end;
        out.push_str(piece(kind, text));
    }
    // A statement that ends inside a token (unterminated string, comment) does not scan cleanly.
    if sql[last..].trim().is_empty() {
        Some(out.trim_start().to_string())
    } else {
        None
    }
}

fn text(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// `[{"node":{"String":{"sval":"a"}}}, …]` → ["a", …] if every element is a String node.
fn name_list(v: &Value) -> Option<Vec<String>> {
    let items = v.as_array()?;
    items
        .iter()
        .map(|i| {
            i.get("node")?
                .get("String")?
                .get("sval")?
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// A node wrapper's content: `{"SelectStmt": {…}}` (one key, a type name). Some nodes also have
/// a plain field called `node` (SortBy), which this tells apart.
fn node_of(v: &Value) -> Option<(&str, &Value)> {
    let map = v.as_object()?;
    let (kind, body) = map.iter().next()?;
    (map.len() == 1 && kind.starts_with(|c: char| c.is_ascii_uppercase()))
        .then_some((kind.as_str(), body))
}

/// Where the walk is, for classifying column references.
#[derive(Debug, Clone, Copy, Default)]
struct Ctx {
    /// Nesting of SELECTs around this point (1 = inside the outermost one).
    selects: u8,
    /// Directly in the body of a SelectStmt.
    in_select: bool,
    /// Under a predicate clause.
    predicate: bool,
    /// In the target list of the outermost SELECT.
    output_list: bool,
    /// Directly in an output ResTarget's body.
    output_target: bool,
    /// The value of an output ResTarget: a ColumnRef here is an [`Position::Output`].
    output_value: bool,
    /// Inside the expression of this output of the outermost SELECT.
    output: Option<usize>,
}

/// Fields whose contents decide which rows come back rather than what they hold.
const PREDICATE_FIELDS: &[&str] = &[
    "where_clause",
    "having_clause",
    "group_clause",
    "sort_clause",
    "quals",
    "distinct_clause",
    "window_clause",
    "limit_count",
    "limit_offset",
];

fn walk(v: &Value, st: &mut Statement, ctx: Ctx) -> Result<(), AnalyzeError> {
    match v {
        Value::Array(items) => {
            if let Some(names) = name_list(v) {
                if names.len() >= 2 && names[0] == "pgid" {
                    st.touches_pgid = true;
                }
            }
            for (n, i) in items.iter().enumerate() {
                let mut c = ctx;
                if ctx.output_list {
                    c.output = Some(n);
                }
                walk(i, st, c)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, child) in map {
                let mut c = ctx;
                if PREDICATE_FIELDS.contains(&k.as_str()) {
                    c.predicate = true;
                }
                // A list's items and a value sit one `node` wrapper further down.
                c.output_list = (ctx.in_select && ctx.selects == 1 && k == "target_list")
                    || (ctx.output_list && k == "node");
                c.output_value =
                    (ctx.output_target && k == "val") || (ctx.output_value && k == "node");
                c.in_select = false;
                c.output_target = false;
                // A RangeVar held directly in a typed field (UPDATE's `relation`, COPY's,
                // SELECT INTO's `rel` …) rather than in a node wrapper.
                if child.get("relname").is_some() {
                    special("RangeVar", child, st);
                }
                match (k.as_str(), node_of(child)) {
                    ("node", Some((kind, body))) => visit(kind, body, st, c)?,
                    _ => walk(child, st, c)?,
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn visit(kind: &str, body: &Value, st: &mut Statement, ctx: Ctx) -> Result<(), AnalyzeError> {
    match nodes::role(kind).ok_or_else(|| AnalyzeError::Unknown(kind.to_string()))? {
        Role::Class(c) => {
            st.classes.insert(c);
        }
        Role::Neutral => {}
        Role::Special => special(kind, body, st),
    }
    if kind == "ColumnRef" {
        st.columns.push(column_use(body, &ctx));
    }
    let child = Ctx {
        selects: ctx.selects + u8::from(kind == "SelectStmt"),
        in_select: kind == "SelectStmt",
        predicate: ctx.predicate,
        output_list: false,
        output_target: kind == "ResTarget" && ctx.output_list,
        output_value: false,
        output: ctx.output,
    };
    walk(body, st, child)
}

fn column_use(body: &Value, ctx: &Ctx) -> ColumnUse {
    let fields = body
        .get("fields")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|i| match i.get("node").and_then(node_of) {
                    Some(("String", s)) => s
                        .get("sval")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    _ => "*".to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let position = if ctx.output_value {
        Position::Output
    } else if ctx.predicate {
        Position::Predicate
    } else {
        Position::Other
    };
    ColumnUse {
        fields,
        position,
        output: ctx.output,
    }
}

fn special(kind: &str, body: &Value, st: &mut Statement) {
    use StatementClass as C;
    match kind {
        "SelectStmt" => {
            // A VALUES list reads nothing: `INSERT … VALUES` is an INSERT, not also a SELECT (a
            // subquery inside the list is a SelectStmt of its own). Only a statement that is a
            // VALUES list itself returns rows, as a SELECT does.
            let values = body
                .get("values_lists")
                .and_then(Value::as_array)
                .is_some_and(|v| !v.is_empty());
            if values && st.root != "SelectStmt" {
                return;
            }
            // SELECT … INTO creates a table.
            st.classes
                .insert(if body.get("into_clause").is_some_and(|v| !v.is_null()) {
                    C::Create
                } else {
                    C::Select
                });
        }
        "UpdateStmt" | "DeleteStmt" => {
            let c = if kind == "UpdateStmt" {
                C::Update
            } else {
                C::Delete
            };
            st.classes.insert(c);
            if body.get("where_clause").is_none_or(Value::is_null) {
                st.missing_where.insert(c);
            }
        }
        "MergeStmt" => {
            st.classes.insert(C::Merge);
        }
        "CopyStmt" => {
            let program = body
                .get("is_program")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let file = body.get("filename").and_then(text).is_some();
            st.classes.insert(if program || file {
                C::CopyProgram
            } else {
                C::Copy
            });
        }
        "VariableSetStmt" => {
            let name = body
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            st.classes
                .insert(if name == "role" || name == "session_authorization" {
                    C::Role
                } else {
                    C::Set
                });
        }
        "ExecuteStmt" => {
            if let Some(n) = body.get("name").and_then(text) {
                st.executes.insert(n.to_string());
            }
        }
        "PrepareStmt" => {
            st.prepares = body.get("name").and_then(text).map(str::to_string);
        }
        "FuncCall" => {
            if let Some(parts) = body.get("funcname").and_then(name_list) {
                if parts.len() >= 2 && parts[0] == "pgid" {
                    st.touches_pgid = true;
                }
                st.functions.insert(parts.join(".").to_ascii_lowercase());
            }
        }
        "RangeVar" => {
            let schema = body
                .get("schemaname")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let table = body
                .get("relname")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if schema == "pgid" {
                st.touches_pgid = true;
            }
            let alias = body
                .get("alias")
                .and_then(|a| a.get("aliasname"))
                .and_then(Value::as_str)
                .unwrap_or(&table)
                .to_string();
            st.aliases.insert((alias, schema.clone(), table.clone()));
            st.tables.insert((schema, table));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementClass as C;

    fn classes(sql: &str) -> BTreeSet<StatementClass> {
        analyze(sql, Dialect::default(), 1 << 20)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .classes()
    }

    fn set(c: &[StatementClass]) -> BTreeSet<StatementClass> {
        c.iter().copied().collect()
    }

    #[test]
    fn target_tables_of_writes_are_found() {
        for (sql, table) in [
            (
                "UPDATE crm.customers SET name = 'x' WHERE id = 1",
                "customers",
            ),
            ("INSERT INTO crm.notes (body) VALUES ('x')", "notes"),
            ("DELETE FROM pgid.leases WHERE true", "leases"),
            ("COPY crm.orders TO STDOUT", "orders"),
        ] {
            let a = analyze(sql, Dialect::default(), 1 << 20).unwrap();
            assert!(
                a.statements[0].tables.iter().any(|(_, t)| t == table),
                "{sql}: {:?}",
                a.statements[0].tables
            );
        }
        let a = analyze(
            "UPDATE pgid.leases SET state = 'x' WHERE true",
            Dialect::default(),
            1 << 20,
        )
        .unwrap();
        assert!(a.statements[0].touches_pgid);
    }

    #[test]
    fn classes_are_found_wherever_they_occur() {
        assert_eq!(classes("SELECT 1"), set(&[C::Select]));
        assert_eq!(
            classes("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
            set(&[C::Delete, C::Select])
        );
        assert_eq!(
            classes("EXPLAIN ANALYZE DELETE FROM t WHERE id = 1"),
            set(&[C::Delete])
        );
        assert!(
            analyze("PREPARE p AS DROP TABLE t", Dialect::default(), 100).is_err(),
            "PREPARE takes no utility statement"
        );
    }

    #[test]
    fn prepared_statements_carry_their_query() {
        let a = analyze(
            "PREPARE p (int) AS DELETE FROM t WHERE id = $1",
            Dialect::default(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(a.statements[0].prepares.as_deref(), Some("p"));
        assert!(a.statements[0].classes.contains(&C::Delete));
        let e = analyze("EXECUTE p(1)", Dialect::default(), 1 << 20).unwrap();
        assert!(e.statements[0].executes.contains("p"));
    }

    #[test]
    fn copy_set_role_and_where() {
        assert_eq!(classes("COPY t TO STDOUT"), set(&[C::Copy]));
        assert_eq!(classes("COPY t FROM PROGRAM 'id'"), set(&[C::CopyProgram]));
        assert_eq!(classes("COPY t TO '/tmp/x'"), set(&[C::CopyProgram]));
        assert_eq!(classes("SET ROLE postgres"), set(&[C::Role]));
        assert_eq!(
            classes("SET SESSION AUTHORIZATION postgres"),
            set(&[C::Role])
        );
        assert_eq!(classes("RESET ROLE"), set(&[C::Role]));
        assert_eq!(classes("SET search_path = x"), set(&[C::Set]));
        assert_eq!(classes("SELECT * INTO newt FROM t"), set(&[C::Create]));
        let a = analyze(
            "DELETE FROM t; UPDATE t SET x = 1 WHERE y = 2",
            Dialect::default(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(a.statements[0].missing_where, set(&[C::Delete]));
        assert!(a.statements[1].missing_where.is_empty());
    }

    #[test]
    fn tables_functions_and_the_pgid_schema() {
        let a = analyze(
            "SELECT lower(x), pg_catalog.upper(y) FROM crm.customers c JOIN orders o ON true",
            Dialect::default(),
            1 << 20,
        )
        .unwrap();
        let s = &a.statements[0];
        assert!(s.tables.contains(&("crm".into(), "customers".into())));
        assert!(s.tables.contains(&("".into(), "orders".into())));
        assert!(s.functions.contains("lower") && s.functions.contains("pg_catalog.upper"));
        for sql in [
            "SELECT * FROM pgid.leases",
            "DROP TABLE pgid.leases",
            "SELECT pgid.f()",
        ] {
            assert!(
                analyze(sql, Dialect::default(), 1 << 20)
                    .unwrap()
                    .statements[0]
                    .touches_pgid,
                "{sql}"
            );
        }
        assert!(
            !analyze("SELECT 'pgid.leases'", Dialect::default(), 1 << 20)
                .unwrap()
                .statements[0]
                .touches_pgid
        );
    }

    #[test]
    fn look_alikes_and_tricks() {
        assert_eq!(classes("SELECT 'DROP TABLE t'"), set(&[C::Select]));
        assert_eq!(classes("SELECT \"delete\" FROM t"), set(&[C::Select]));
        assert_eq!(classes("SELECT 1 /* ; DROP TABLE t */"), set(&[C::Select]));
        assert_eq!(
            classes("SELECT 1; DrOp TaBlE t"),
            set(&[C::Select, C::Drop])
        );
        assert_eq!(classes("SELECT U&'\\0044ROP'"), set(&[C::Select]));
        // With standard_conforming_strings off, \' ends nothing: the server would see DROP here.
        let tricky = r"SELECT 'a\'; DROP TABLE t; --'";
        let off = analyze(
            tricky,
            Dialect {
                backslash_escapes: true,
            },
            1 << 20,
        )
        .unwrap();
        assert_eq!(off.classes(), set(&[C::Select]));
        let on = analyze(tricky, Dialect::default(), 1 << 20).unwrap();
        assert!(on.classes().contains(&C::Drop));
    }

    /// Runs `f` on a thread with the analysis stack, as the proxy does.
    fn on_analysis_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(ANALYSIS_STACK)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn deep_statements() {
        on_analysis_thread(|| {
            let deep = format!("SELECT {}", vec!["1"; 300].join("+"));
            assert_eq!(classes(&deep), set(&[C::Select]));
            let nested = format!("SELECT {}1{}", "(SELECT ".repeat(60), ")".repeat(60));
            assert_eq!(classes(&nested), set(&[C::Select]));
            // Deeper than libpg_query's own stack check: refused, never guessed.
            let deeper = format!("SELECT {}", vec!["1"; 20_000].join("+"));
            assert!(matches!(
                analyze(&deeper, Dialect::default(), 1 << 20),
                Err(AnalyzeError::Parse(_))
            ));
        });
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            analyze("SELEC 1", Dialect::default(), 100),
            Err(AnalyzeError::Parse(_))
        ));
        assert!(matches!(
            analyze("SELECT 1", Dialect::default(), 3),
            Err(AnalyzeError::TooLarge(3))
        ));
    }

    #[test]
    fn a_values_list_is_not_a_select() {
        let d = Dialect::default();
        let classes = |sql: &str| {
            analyze(sql, d, 1 << 20).unwrap().statements[0]
                .classes
                .iter()
                .copied()
                .collect::<Vec<_>>()
        };
        use StatementClass as C;
        assert_eq!(classes("INSERT INTO t VALUES (1), (2)"), [C::Insert]);
        assert_eq!(
            classes("INSERT INTO t VALUES ((SELECT max(x) FROM s))"),
            [C::Select, C::Insert]
        );
        assert_eq!(
            classes("INSERT INTO t SELECT * FROM s"),
            [C::Select, C::Insert]
        );
        assert_eq!(classes("VALUES (1)"), [C::Select]);
    }

    #[test]
    fn canonical_text_ignores_layout_and_keeps_literals() {
        let d = Dialect::default();
        assert_eq!(
            canonical("  DELETE  FROM t\n WHERE id = 7 -- gone\n;", d),
            "DELETE FROM t WHERE id = 7"
        );
        assert_eq!(
            canonical("DELETE /* x */ FROM t WHERE id = 7", d),
            canonical("DELETE FROM t WHERE id = 7;", d)
        );
        assert_ne!(
            canonical("DELETE FROM t WHERE id = 7", d),
            canonical("DELETE FROM t WHERE id = 8", d)
        );
        assert_ne!(canonical("SELECT 'a  b'", d), canonical("SELECT 'a b'", d));
        assert_ne!(canonical("SELECT 1", d), canonical("SELECT 1; SELECT 2", d));
        // Text that does not scan is its own canonical form.
        assert_eq!(canonical("SELECT 'open", d), "SELECT 'open");
    }

    #[test]
    fn shapes_blank_literals_and_nothing_else() {
        let d = Dialect::default();
        assert_eq!(
            shape("SELECT abalance FROM t WHERE aid = 42", d),
            shape("select  abalance FROM t WHERE aid = 7", d)
                .map(|s| s.replace("select", "SELECT"))
        );
        assert_eq!(shape("SELECT 'a' /* c */", d), shape("SELECT 'b'", d));
        assert_ne!(shape("SELECT 1", d), shape("SELECT 1; DROP TABLE t", d));
        assert_ne!(shape("COPY t TO STDOUT", d), shape("COPY t TO '/tmp/x'", d));
        assert_ne!(shape("SELECT f(1)", d), shape("SELECT g(1)", d));
        // The lexer decides where strings end: under standard_conforming_strings a backslash
        // does not escape, so this is a string and then a DROP.
        let s = shape(r"SELECT 'a'; DROP TABLE t; --'", d).unwrap();
        assert!(s.contains("DROP"), "{s}");
        assert_eq!(shape("SELECT 'open", d), None);
        assert_eq!(
            shape(
                "SELECT 1",
                Dialect {
                    backslash_escapes: true
                }
            ),
            None
        );
    }

    /// A broad corpus: none of it may hit an unknown node type.
    #[test]
    fn a_broad_corpus_is_fully_understood() {
        let corpus = [
            "SELECT a, count(*) FILTER (WHERE b > 0) OVER (PARTITION BY c ORDER BY d) FROM t TABLESAMPLE SYSTEM (10) GROUP BY ROLLUP (a)",
            "SELECT ARRAY[(SELECT 1)], ROW(1, 2), x COLLATE \"C\", xmlelement(name a, 'b'), json_object('a': 1) FROM t",
            "SELECT * FROM json_table('[]', '$[*]' COLUMNS (a int PATH '$.a')) jt",
            "INSERT INTO t (a) VALUES ((SELECT 1)) ON CONFLICT (a) DO UPDATE SET a = excluded.a RETURNING *",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
            "DECLARE c CURSOR FOR SELECT * FROM t", "FETCH 10 FROM c", "CLOSE c", "BEGIN", "COMMIT", "ROLLBACK TO SAVEPOINT s",
            "CREATE TABLE x AS SELECT 1", "CREATE VIEW v AS SELECT 1", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "DO $$ BEGIN END $$", "CALL p()", "LOAD 'x'", "LOCK TABLE t", "VACUUM t", "ANALYZE t", "REINDEX TABLE t",
            "REFRESH MATERIALIZED VIEW m", "LISTEN c", "NOTIFY c, 'x'", "UNLISTEN *", "GRANT SELECT ON t TO r",
            "REVOKE SELECT ON t FROM r", "ALTER ROLE r PASSWORD 'x'", "ALTER USER CURRENT_USER VALID UNTIL 'infinity'",
            "CREATE ROLE r", "DROP ROLE r", "TRUNCATE t", "ALTER TABLE t ADD COLUMN c int", "DROP TABLE t", "DISCARD ALL",
            "SHOW search_path", "SET LOCAL statement_timeout = 0", "RESET ALL", "DEALLOCATE ALL", "CHECKPOINT",
            "CREATE TEMP TABLE tt (a int)", "COMMENT ON TABLE t IS 'x'", "ALTER SYSTEM SET work_mem = '1MB'",
            "CREATE EXTENSION dblink", "SELECT * FROM t FOR UPDATE SKIP LOCKED", "VALUES (1), (2)",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
        ];
        for sql in corpus {
            analyze(sql, Dialect::default(), 1 << 20).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
}
