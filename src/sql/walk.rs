//! The walk over one statement's parse tree (as JSON): every node, recording classes, tables,
//! functions, column references, settings. A node type [`super::nodes`] does not list makes the
//! statement unanalysable.
//!
//! What the walk reads is identifiers and tree structure. The values of constants (`A_Const`)
//! it reads only where the tree's structure says so (set_config's arguments, a SET's values), and
//! records their locations; every other literal the grammar keeps outside an `A_Const` (a COPY
//! file name, a function body, an option value) the cache keeps verbatim. So two statements of
//! one shape with equal kept literals get the same walk ([`super::cache`]).

use std::collections::BTreeSet;
use std::ops::Range;

use serde_json::Value;

use super::node_of;

use super::nodes::{self, Role};
use super::text::{self, TextCall};
use super::tokens::{copy_end, CopyEnd};
use super::{actions, code};
use super::{session, AnalyzeError, ColumnUse, Dialect, Position, Statement};
use crate::policy::StatementClass;

/// One statement's walk.
pub(super) struct Walker<'a> {
    pub st: Statement,
    /// 0 for a statement as sent; n for SQL given as text n levels down.
    depth: u8,
    /// The whole string, its dialect, and this statement's bytes in it.
    sql: &'a str,
    dialect: Dialect,
    range: Range<usize>,
    /// Byte locations of the constants met, and of those whose value the walk read.
    pub constants: BTreeSet<usize>,
    pub reads: BTreeSet<usize>,
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

fn text(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// Where the walk is, for classifying column references.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ctx {
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

impl<'a> Walker<'a> {
    pub fn new(
        sql: &'a str,
        dialect: Dialect,
        range: Range<usize>,
        root: &str,
        depth: u8,
    ) -> Walker<'a> {
        Walker {
            st: Statement {
                root: root.to_string(),
                ..Statement::default()
            },
            depth,
            sql,
            dialect,
            range,
            constants: BTreeSet::new(),
            reads: BTreeSet::new(),
        }
    }

    pub fn walk(&mut self, v: &Value, ctx: Ctx) -> Result<(), AnalyzeError> {
        match v {
            Value::Array(items) => {
                if let Some(names) = name_list(v) {
                    if names.len() >= 2 && names[0] == "pgid" {
                        self.st.touches_pgid = true;
                    }
                }
                for (n, i) in items.iter().enumerate() {
                    let mut c = ctx;
                    if ctx.output_list {
                        c.output = Some(n);
                    }
                    self.walk(i, c)?;
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
                        self.special("RangeVar", child)?;
                    }
                    match (k.as_str(), node_of(child)) {
                        ("node", Some((kind, body))) => self.visit(kind, body, c)?,
                        _ => self.walk(child, c)?,
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn visit(&mut self, kind: &str, body: &Value, ctx: Ctx) -> Result<(), AnalyzeError> {
        match nodes::role(kind).ok_or_else(|| AnalyzeError::Unknown(kind.to_string()))? {
            Role::Class(c) => {
                self.st.classes.insert(c);
            }
            Role::Neutral => {}
            Role::Special => self.special(kind, body)?,
        }
        if kind == "CreateFunctionStmt" || kind == "DoStmt" {
            self.routine_body(kind, body)?;
        }
        self.st.gives_ownership |= actions::gives_ownership(kind, body);
        if code::binds_functions(kind) {
            let mut names = Vec::new();
            code::bound_names(body, &mut names);
            for name in names {
                let name = name.to_ascii_lowercase();
                // Bound to an operator, aggregate or cast, a function that runs SQL given as
                // text would run it where no call shows the text.
                let bare = name.rsplit('.').next().unwrap_or(&name);
                if text::known().any(|k| k == bare) {
                    self.st.unjudgeable.push(format!(
                        "{bare} runs SQL or reads relations given as values; binding it to an \
                         operator, aggregate, cast or trigger would run what pgid cannot judge"
                    ));
                }
                self.st.functions.insert(name);
            }
        }
        match kind {
            "ColumnRef" => self.st.columns.push(column_use(body, &ctx)),
            "CommonTableExpr" => {
                if let Some(name) = body.get("ctename").and_then(text) {
                    self.st.ctes.insert(name.to_string());
                }
            }
            "JoinExpr" => self.join(body),
            "AConst" => {
                if let Some(l) = body
                    .get("location")
                    .and_then(Value::as_i64)
                    .and_then(|l| usize::try_from(l).ok())
                {
                    self.constants.insert(l);
                }
            }
            _ => {}
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
        self.walk(body, child)
    }

    fn special(&mut self, kind: &str, body: &Value) -> Result<(), AnalyzeError> {
        use StatementClass as C;
        let st = &mut self.st;
        match kind {
            "SelectStmt" => {
                // A VALUES list reads nothing: `INSERT … VALUES` is an INSERT, not also a SELECT
                // (a subquery inside the list is a SelectStmt of its own). Only a statement that
                // is a VALUES list itself returns rows, as a SELECT does.
                let values = body
                    .get("values_lists")
                    .and_then(Value::as_array)
                    .is_some_and(|v| !v.is_empty());
                if values && st.root != "SelectStmt" {
                    return Ok(());
                }
                // SELECT … INTO creates a table from what it reads.
                st.classes.insert(C::Select);
                if body.get("into_clause").is_some_and(|v| !v.is_null()) {
                    st.classes.insert(C::Create);
                }
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
            // A statement carries the class of every action it can take (README: Guardrails).
            "MergeStmt" => {
                st.classes.insert(C::Merge);
                actions::merge(body, st);
            }
            "InsertStmt" => {
                st.classes.insert(C::Insert);
                actions::upsert(body, st);
            }
            "TruncateStmt" => {
                st.classes.insert(C::Truncate);
                st.classes.insert(C::Delete);
                st.missing_where.insert(C::Delete);
            }
            "DefineStmt" => {
                st.classes.insert(actions::define(body));
            }
            "CopyStmt" => {
                // The tree cannot tell `TO ''` (a server file) from `TO STDOUT`: the tokens can.
                let program = body
                    .get("is_program")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let client = !program
                    && st.root == "CopyStmt"
                    && copy_end(self.sql, self.range.clone(), self.dialect) == CopyEnd::Client;
                st.classes
                    .insert(if client { C::Copy } else { C::CopyProgram });
                // COPY FROM adds rows; COPY TO reads them (a query's own classes come from
                // its tree).
                let from = body.get("is_from").and_then(Value::as_bool) == Some(true);
                st.classes.insert(if from { C::Insert } else { C::Select });
            }
            "VariableSetStmt" => {
                // Setting names are case-insensitive: `SET "Role" TO x` sets the role.
                let name = body
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_ascii_lowercase();
                st.classes
                    .insert(if is_identity(&name) { C::Role } else { C::Set });
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
                    let name = parts.join(".").to_ascii_lowercase();
                    match text::call(&name, body) {
                        TextCall::None => {}
                        TextCall::Refused(reason) => self.st.unjudgeable.push(reason),
                        TextCall::Runs { sql, location } => {
                            self.reads.extend(location);
                            self.text_sql(&name, &sql)?;
                        }
                    }
                    let st = &mut self.st;
                    if name.rsplit('.').next() == Some("set_config") {
                        let setting = session::set_config(body, &mut self.reads);
                        if setting.name.as_deref().is_some_and(is_identity) {
                            st.classes.insert(C::Role);
                        }
                        st.settings.push(setting);
                    }
                    st.functions.insert(name);
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
                if has_column_names(body.get("alias")) {
                    st.renamed.insert((schema.clone(), table.clone()));
                }
                st.aliases.insert((alias, schema.clone(), table.clone()));
                st.tables.insert((schema, table));
            }
            _ => {}
        }
        Ok(())
    }

    /// A function's or DO block's body given as a string: in LANGUAGE sql it is SQL given as
    /// text, judged with the statement (`BEGIN ATOMIC` bodies are part of the tree already);
    /// in any other language pgid cannot read it.
    fn routine_body(&mut self, kind: &str, body: &Value) -> Result<(), AnalyzeError> {
        let field = if kind == "DoStmt" { "args" } else { "options" };
        let mut language = (kind == "DoStmt").then(|| "plpgsql".to_string());
        let mut code: Option<Vec<String>> = None;
        for item in body
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(("DefElem", d)) = item.get("node").and_then(node_of) else {
                continue;
            };
            let arg = d.get("arg").and_then(|a| a.get("node")).and_then(node_of);
            match (d.get("defname").and_then(Value::as_str), arg) {
                (Some("language"), Some(("String", l))) => {
                    language = l.get("sval").and_then(Value::as_str).map(str::to_string);
                }
                (Some("as"), Some(("String", s))) => {
                    code = s
                        .get("sval")
                        .and_then(Value::as_str)
                        .map(|s| vec![s.to_string()]);
                }
                (Some("as"), Some(("List", l))) => {
                    code = name_list(l.get("items").unwrap_or(&Value::Null))
                }
                _ => {}
            }
        }
        let Some(code) = code else {
            return Ok(());
        };
        match (language.as_deref(), code.as_slice()) {
            (Some(l), [sql]) if l.eq_ignore_ascii_case("sql") => {
                self.text_sql("the function body", sql)
            }
            _ => {
                self.st.opaque_code = Some(language.unwrap_or_else(|| "unknown".into()));
                Ok(())
            }
        }
    }

    /// SQL a function runs, given as a constant string: analysed as statements of their own and
    /// merged into this one, as if written here — except that what they do to session state
    /// pgid keeps (prepared statements, cursors) is refused, and their settings change only if
    /// the function runs.
    fn text_sql(&mut self, function: &str, sql: &str) -> Result<(), AnalyzeError> {
        // The server lexes this text when it runs — perhaps much later (a prepared statement, a
        // view, a function body), under the standard_conforming_strings of that moment.
        if super::tokens::depends_on_standard_conforming_strings(sql) {
            self.st.unjudgeable.push(format!(
                "the SQL {function} runs has a backslash in a '…' literal, which the server reads \
                 under the standard_conforming_strings in force when it runs; write it as E'…' or \
                 with dollar quotes"
            ));
            return Ok(());
        }
        if self.depth >= MAX_TEXT_DEPTH {
            self.st.unjudgeable.push(format!(
                "SQL given as text nested deeper than {MAX_TEXT_DEPTH} levels"
            ));
            return Ok(());
        }
        let inner = match super::walk_nested(sql, self.dialect, self.depth + 1) {
            Ok(inner) => inner,
            Err(e) => {
                self.st
                    .unjudgeable
                    .push(format!("the SQL {function} runs cannot be analysed: {e}"));
                return Ok(());
            }
        };
        for i in inner {
            if i.prepares.is_some()
                || i.declares.is_some()
                || i.fetches.is_some()
                || i.closes.is_some()
                || i.deallocates.is_some()
                || i.discards_all
                || !i.executes.is_empty()
            {
                self.st.unjudgeable.push(format!(
                    "the SQL {function} runs uses prepared statements or cursors, which pgid \
                     does not allow there"
                ));
            }
            self.st.merge_nested(i);
        }
        Ok(())
    }
}

/// How deep SQL given as text may nest in SQL given as text.
const MAX_TEXT_DEPTH: u8 = 4;

impl Walker<'_> {
    /// A join: the columns it merges (USING, NATURAL) and whether its alias renames them.
    fn join(&mut self, body: &Value) {
        if body.get("is_natural").and_then(Value::as_bool) == Some(true) {
            self.st.merged.insert("*".to_string());
        }
        if let Some(names) = body.get("using_clause").and_then(name_list) {
            self.st.merged.extend(names);
        }
        if has_column_names(body.get("alias")) {
            self.st.renamed.insert(("*".to_string(), "*".to_string()));
        }
    }
}

/// An alias with a column list (`AS c(a, b)`).
fn has_column_names(alias: Option<&Value>) -> bool {
    alias
        .and_then(|a| a.get("colnames"))
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
}

/// Settings that change who the session is (lower-cased).
fn is_identity(name: &str) -> bool {
    name == "role" || name == "session_authorization"
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
