//! SQL analysis: the only module that imports `pg_query`. [`analyze`] parses a statement string
//! the way the server will (given `standard_conforming_strings`) and walks the whole tree — every
//! node of every statement, CTEs, subqueries, `EXPLAIN`, `PREPARE`, cursors included — recording
//! statement classes, tables, functions, WHERE presence, and what the statement does to session
//! state (settings, cursors, prepared statements). A node type the walker does not know makes the
//! string unanalysable; the guard refuses what cannot be analysed.
//!
//! Layout: `walk` (the tree walk), `session` (settings, cursors, prepared statements), `tokens`
//! (what is read from the scanner: shapes, canonical text, COPY targets), `cache` (analyses kept
//! by shape, on deep-stack threads), `nodes` (what each node type means).

mod actions;
mod cache;
mod code;
mod estimable;
mod nodes;
mod session;
#[cfg(test)]
mod siblings;
mod syntax;
pub mod text;
mod tokens;
mod walk;

pub use cache::{Analyzer, Outcome};
pub use session::{Cursor, Setting, SettingValue};
pub use syntax::SyntaxError;
pub use tokens::{canonical, depends_on_standard_conforming_strings, shape};

use std::collections::BTreeSet;

use serde_json::Value;

use crate::policy::StatementClass;

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
    /// The server cannot parse it either: it would answer this error.
    #[error("statement cannot be parsed: {0}")]
    Syntax(SyntaxError),
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
    /// `DECLARE name CURSOR …`: the cursor it opens (the classes above are its query's).
    pub declares: Option<Cursor>,
    /// `FETCH … name` or `MOVE … name`: the cursor it reads or moves.
    pub fetches: Option<String>,
    /// `CLOSE name` (`Some(Some(name))`) or `CLOSE ALL` (`Some(None)`).
    pub closes: Option<Option<String>>,
    /// `DEALLOCATE [PREPARE] name` (`Some(Some(name))`) or `DEALLOCATE ALL` (`Some(None)`).
    pub deallocates: Option<Option<String>>,
    /// `DISCARD ALL` (not PLANS, SEQUENCES or TEMP): settings, cursors, prepared statements,
    /// temporary tables, listens and the session authorization all back to a new session's.
    pub discards_all: bool,
    /// Every session-setting change, in order: SET/RESET (NAMES, TIME ZONE, ROLE, SESSION
    /// AUTHORIZATION, TRANSACTION … included) when the statement is one, and every set_config
    /// call anywhere in it ([`Setting::by_function`]).
    pub settings: Vec<Setting>,
    /// Touches pgid's own schema.
    pub touches_pgid: bool,
    /// Gives an object to another role ([`actions::gives_ownership`]): refused whatever the
    /// policy says.
    pub gives_ownership: bool,
    /// Why pgid cannot judge what the statement runs (SQL given to a function as a string that
    /// is not a constant, a function that reads what a value names): refused whatever the
    /// policy says.
    pub unjudgeable: Vec<String>,
    /// Code in a language pgid cannot read (a DO block or a function body in plpgsql, C …):
    /// the language. SQL-language bodies are analysed instead, as SQL given as text.
    pub opaque_code: Option<String>,
    /// The statement's own kind (`SelectStmt`, `ExplainStmt`, `CopyStmt`, …).
    pub root: String,
    /// Every column reference and where it stands (what masking needs).
    pub columns: Vec<ColumnUse>,
    /// The planner's row estimate for it can be trusted (`min_rows`): an UPDATE or DELETE of one
    /// table whose WHERE compares columns with values, or a PREPARE of one ([`estimable`]).
    pub estimable: bool,
    /// Names the statement's WITH clauses define (a RangeVar of such a name may be the CTE).
    pub ctes: BTreeSet<String>,
    /// Tables and views with the name they go by in the statement: (alias, schema, table).
    pub aliases: BTreeSet<(String, String, String)>,
    /// FROM items that give their columns new names with an alias column list: a table's or
    /// view's (`crm.customers AS c(a, b, x)`: its (schema, table)), or a join's (`("*", "*")`:
    /// whatever it joins). References by those names escape matching by column name.
    pub renamed: BTreeSet<(String, String)>,
    /// Columns merged by joins: the names in `JOIN … USING (…)`, and `*` for a NATURAL join
    /// (whose names only the catalog knows). A merged column has no single source column.
    pub merged: BTreeSet<String>,
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

impl Statement {
    /// Folds in a statement that runs as part of this one (SQL a function is given as text):
    /// its classes, tables, functions, settings and columns count as this statement's, every
    /// column as used inside an expression (the function returns what it read as one value),
    /// every setting as one that changes only if the function runs.
    pub(crate) fn merge_nested(&mut self, inner: Statement) {
        self.classes.extend(inner.classes);
        self.missing_where.extend(inner.missing_where);
        self.tables.extend(inner.tables);
        self.functions.extend(inner.functions);
        self.executes.extend(inner.executes);
        self.touches_pgid |= inner.touches_pgid;
        self.gives_ownership |= inner.gives_ownership;
        self.unjudgeable.extend(inner.unjudgeable);
        if self.opaque_code.is_none() {
            self.opaque_code = inner.opaque_code;
        }
        self.settings
            .extend(inner.settings.into_iter().map(|s| Setting {
                by_function: true,
                ..s
            }));
        self.columns
            .extend(inner.columns.into_iter().map(|c| ColumnUse {
                position: Position::Other,
                output: None,
                ..c
            }));
        self.aliases.extend(inner.aliases);
        self.ctes.extend(inner.ctes);
        self.renamed.extend(inner.renamed);
        self.merged.extend(inner.merged);
    }
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
    fresh(sql, dialect).outcome
}

/// An analysis with what the cache needs to reuse it for statements of the same shape.
pub(crate) struct Fresh {
    pub outcome: Result<Analysis, AnalyzeError>,
    /// Byte locations of the constants (`A_Const`) whose values the analysis did not read. Every
    /// other literal of the statement may matter.
    pub unread: BTreeSet<usize>,
    /// Byte locations of the constants whose values it read.
    pub read: BTreeSet<usize>,
}

/// [`analyze`] without a size limit, noting which constants it read and which it did not.
pub(crate) fn fresh(sql: &str, dialect: Dialect) -> Fresh {
    let (mut unread, mut read) = (BTreeSet::new(), BTreeSet::new());
    let outcome = walk_all(sql, dialect, &mut unread, &mut read);
    Fresh {
        outcome,
        unread,
        read,
    }
}

/// pg_query's parser under `dialect`. libpg_query keeps `standard_conforming_strings` in a
/// thread-local that its scanner (`pg_query::scan_tokens`, which has no options) reads too: a
/// parse with it off sets it for the call and restores it only when the parse succeeds. A parse
/// that fails under `off` would leave every later scan on this thread lexing with backslash
/// escapes — another session's shape keys and COPY targets read wrong. So a failure under `off`
/// is followed at once by a parse that succeeds under the default, which restores it.
///
/// A failure is described as the server would answer it ([`SyntaxError`]), except where the
/// parser ran out of stack: the server, with its own stack, may well parse that statement.
fn parse(sql: &str, dialect: Dialect) -> Result<pg_query::ParseResult, AnalyzeError> {
    let options = if dialect.backslash_escapes {
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    } else {
        pg_query::ParserOptions::DEFAULT
    };
    let parsed = pg_query::parse(sql, options);
    let Err(e) = parsed else {
        return parsed.map_err(|e| AnalyzeError::Parse(e.to_string()));
    };
    let described = syntax::describe(sql, options.bits());
    if dialect.backslash_escapes {
        let restored = pg_query::parse(";", pg_query::ParserOptions::DEFAULT);
        debug_assert!(restored.is_ok(), "an empty statement parses");
    }
    Err(match described {
        Some(s) if s.code != syntax::OUT_OF_STACK => AnalyzeError::Syntax(s),
        Some(s) => AnalyzeError::Parse(s.message),
        None => AnalyzeError::Parse(e.to_string()),
    })
}

fn walk_all(
    sql: &str,
    dialect: Dialect,
    unread: &mut BTreeSet<usize>,
    read: &mut BTreeSet<usize>,
) -> Result<Analysis, AnalyzeError> {
    walk_at(sql, dialect, 0, unread, read)
}

/// The statements of SQL given to a function as text, `depth` levels down. What they read of
/// their own constants does not matter to the cache: the whole string is a constant the outer
/// statement read.
fn walk_nested(sql: &str, dialect: Dialect, depth: u8) -> Result<Vec<Statement>, AnalyzeError> {
    let (mut unread, mut read) = (BTreeSet::new(), BTreeSet::new());
    Ok(walk_at(sql, dialect, depth, &mut unread, &mut read)?.statements)
}

fn walk_at(
    sql: &str,
    dialect: Dialect,
    depth: u8,
    unread: &mut BTreeSet<usize>,
    read: &mut BTreeSet<usize>,
) -> Result<Analysis, AnalyzeError> {
    let parsed = parse(sql, dialect).map_err(|e| match e {
        // The server reads SQL given as text only when it runs it, as another statement.
        AnalyzeError::Syntax(s) if depth > 0 => AnalyzeError::Parse(s.message),
        e => e,
    })?;
    let tree = serde_json::to_value(&parsed.protobuf.stmts)
        .map_err(|e| AnalyzeError::Parse(e.to_string()))?;
    let mut out = Analysis::default();
    for raw in tree.as_array().into_iter().flatten() {
        let root = raw
            .get("stmt")
            .and_then(|s| s.get("node"))
            .and_then(node_of);
        // Where this statement stands in the string (a length of 0: up to the end).
        let at = |field: &str| {
            raw.get(field)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0)
        };
        let start = at("stmt_location").min(sql.len());
        let end = match at("stmt_len") {
            0 => sql.len(),
            len => (start + len).min(sql.len()),
        };
        let mut w = walk::Walker::new(sql, dialect, start..end, root.map_or("", |(k, _)| k), depth);
        w.walk(raw, walk::Ctx::default())?;
        if let Some((kind, body)) = root {
            session::root(kind, body, &mut w.st, &mut w.reads);
            w.st.estimable = estimable::root(kind, body);
        }
        unread.extend(w.constants.difference(&w.reads));
        read.append(&mut w.reads);
        out.statements.push(w.st);
    }
    Ok(out)
}

/// The statement with each literal value replaced by a `$n` placeholder (for audit records
/// that must not keep values). `None` when it does not parse.
pub fn normalize(sql: &str) -> Option<String> {
    pg_query::normalize(sql).ok()
}

/// A node wrapper's content: `{"SelectStmt": {…}}` (one key, a type name). Some nodes also have
/// a plain field called `node` (SortBy), which this tells apart.
fn node_of(v: &Value) -> Option<(&str, &Value)> {
    let map = v.as_object()?;
    let (kind, body) = map.iter().next()?;
    (map.len() == 1 && kind.starts_with(|c: char| c.is_ascii_uppercase()))
        .then_some((kind.as_str(), body))
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
        assert_eq!(classes("COPY t TO STDOUT"), set(&[C::Copy, C::Select]));
        assert_eq!(
            classes("COPY t FROM PROGRAM 'id'"),
            set(&[C::CopyProgram, C::Insert])
        );
        assert_eq!(
            classes("COPY t TO '/tmp/x'"),
            set(&[C::CopyProgram, C::Select])
        );
        // '' is a file name too (the tree cannot tell it from STDOUT; the tokens can).
        for sql in [
            "COPY t TO ''",
            "COPY t FROM E''",
            "COPY t TO $$$$",
            "COPY (SELECT 1 AS stdout) TO ''",
            "SELECT 1; COPY t TO ''",
        ] {
            let c = classes(sql);
            assert!(
                c.contains(&C::CopyProgram) && !c.contains(&C::Copy),
                "{sql}"
            );
        }
        assert_eq!(
            classes("COPY (SELECT 'x' AS stdin) TO STDOUT; COPY t FROM STDIN"),
            set(&[C::Copy, C::Select, C::Insert])
        );
        // With backslash escapes, a COPY whose target the scanner cannot vouch for is refused
        // as a file COPY; after the target, backslashes do not matter.
        let off = Dialect {
            backslash_escapes: true,
        };
        let class = |sql: &str| analyze(sql, off, 1 << 20).unwrap().classes();
        assert_eq!(
            class(r"COPY (SELECT 'a\\' AS b) TO STDOUT"),
            set(&[C::CopyProgram, C::Select])
        );
        assert_eq!(
            class(r"COPY t FROM STDIN WITH (DELIMITER '\t')"),
            set(&[C::Copy, C::Insert])
        );
        assert_eq!(classes("SET ROLE postgres"), set(&[C::Role]));
        assert_eq!(
            classes("SET SESSION AUTHORIZATION postgres"),
            set(&[C::Role])
        );
        assert_eq!(classes("RESET ROLE"), set(&[C::Role]));
        assert_eq!(classes("SET search_path = x"), set(&[C::Set]));
        assert_eq!(
            classes("SELECT * INTO newt FROM t"),
            set(&[C::Create, C::Select])
        );
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
    fn a_failed_parse_with_backslash_escapes_leaves_the_scanner_as_it_was() {
        let trick = r"SET standard_conforming_strings = off; SELECT 'a\'; DELETE FROM t; --'";
        let before = shape(trick, Dialect::default());
        let off = Dialect {
            backslash_escapes: true,
        };
        assert!(analyze(r"SELECT 'unterminated\'", off, 1 << 20).is_err());
        // The same thread now scans as before: the DELETE is still its own statement.
        assert_eq!(shape(trick, Dialect::default()), before);
        assert!(before.unwrap().contains("DELETE"));
        assert!(depends_on_standard_conforming_strings(trick));
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            analyze("SELEC 1", Dialect::default(), 100),
            Err(AnalyzeError::Syntax(SyntaxError {
                code: "42601",
                position: Some(1),
                ..
            }))
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
        // What the cache's own test sends (src/sql/siblings.rs) too.
        for sql in corpus.iter().chain(super::siblings::CORPUS) {
            analyze(sql, Dialect::default(), 1 << 20).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
}
