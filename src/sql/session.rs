//! What a statement does to the session state the server keeps: settings (SET, RESET, SET
//! TRANSACTION, set_config calls), cursors (DECLARE, FETCH/MOVE, CLOSE), prepared statements
//! (DEALLOCATE) and DISCARD ALL. Names are kept exactly as the parser gives them (lower-cased
//! unless quoted, truncated to NAMEDATALEN), as the server keys them.
//!
//! Every constant whose value is read here is recorded (its byte location) so that the cache
//! keeps it verbatim in its key ([`super::cache`]).

use std::collections::BTreeSet;

use pg_query::protobuf::{DiscardMode, VariableSetKind};
use serde_json::Value;

use super::node_of;
use super::Statement;

/// A cursor a DECLARE opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub name: String,
    /// WITH HOLD: the cursor outlives the transaction that declared it.
    pub holdable: bool,
}

/// What a setting is set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingValue {
    /// The value as a string, as `set_config` would be given it: for SET the items the server
    /// flattens it to (`", "`-joined, each string quoted as an identifier for the settings that
    /// take quoted lists, e.g. search_path = `"My S", public`). The server may still normalise it
    /// (`true` → `on`, time zone names).
    Value(String),
    /// Back to its default: RESET, `SET … TO DEFAULT`, `SET TIME ZONE LOCAL`, set_config with a
    /// NULL value.
    Default,
    /// Changed to something pgid cannot tell: not a constant, `SET … FROM CURRENT`, an interval
    /// time zone, a custom setting's list whose quoting depends on the extension, or a
    /// set_config whose `is_local` is not a constant.
    Unknown,
}

/// One change of a session setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The lower-cased setting name (`client_encoding` for SET NAMES, `timezone` for SET TIME
    /// ZONE, `role`, `session_authorization`); `None` when a set_config's name is not a constant
    /// string. RESET ALL is `Some("all")` with [`SettingValue::Default`] (no setting is called
    /// `all`: the server refuses `SET "all"`); see [`Setting::is_reset_all`].
    pub name: Option<String>,
    pub value: SettingValue,
    /// Until the end of the transaction only (SET LOCAL, SET TRANSACTION, set_config(…, true)).
    pub local: bool,
    /// Made by a set_config call: the setting changes only if and as often as the call runs —
    /// perhaps never (`WHERE false`, a CASE branch, a view or function body that stores it).
    /// SET-family statements change it whenever the statement succeeds.
    pub by_function: bool,
}

impl Setting {
    /// RESET ALL: every setting back to its session default.
    pub fn is_reset_all(&self) -> bool {
        !self.by_function && self.name.as_deref() == Some("all")
    }
}

/// Settings the server stores as lists of quoted identifiers (GUC_LIST_QUOTE).
const QUOTED_LISTS: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
];

/// The `DeclareCursorStmt` option bit of WITH HOLD (parsenodes.h CURSOR_OPT_HOLD).
const CURSOR_OPT_HOLD: i64 = 0x0020;

/// A constant as the parser builds it (`A_Const`).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Constant {
    Null,
    Str(String),
    Int(i64),
    Float(String),
    Bool(bool),
    Bits(String),
}

/// `{"node": {"AConst": …}}` → the constant and its byte location (if it has one).
pub(super) fn constant(item: &Value) -> Option<(Constant, Option<usize>)> {
    let ("AConst", body) = item.get("node").and_then(node_of)? else {
        return None;
    };
    let location = body
        .get("location")
        .and_then(Value::as_i64)
        .and_then(|l| usize::try_from(l).ok());
    if body.get("isnull").and_then(Value::as_bool) == Some(true) {
        return Some((Constant::Null, location));
    }
    let (kind, inner) = body.get("val").and_then(|v| v.as_object()?.iter().next())?;
    let field = |name: &str| inner.get(name).cloned().unwrap_or(Value::Null);
    let c = match kind.as_str() {
        "Sval" => Constant::Str(field("sval").as_str()?.to_string()),
        "Ival" => Constant::Int(field("ival").as_i64()?),
        "Fval" => Constant::Float(field("fval").as_str()?.to_string()),
        "Boolval" => Constant::Bool(field("boolval").as_bool()?),
        "Bsval" => Constant::Bits(field("bsval").as_str()?.to_string()),
        _ => return None,
    };
    Some((c, location))
}

/// Reads a constant's value, noting that the analysis depends on it.
fn read(item: &Value, reads: &mut BTreeSet<usize>) -> Option<Constant> {
    let (c, location) = constant(item)?;
    reads.extend(location);
    Some(c)
}

fn string(body: &Value, field: &str) -> String {
    body.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The session effects of a statement of kind `kind` at the top of a string's statement list
/// (nested, a VariableSetStmt belongs to ALTER ROLE/DATABASE/SYSTEM or a function's SET clause,
/// and changes no session).
pub(super) fn root(kind: &str, body: &Value, st: &mut Statement, reads: &mut BTreeSet<usize>) {
    match kind {
        "VariableSetStmt" => settings(body, &mut st.settings, reads),
        "DeclareCursorStmt" => {
            st.declares = Some(Cursor {
                name: string(body, "portalname"),
                holdable: body.get("options").and_then(Value::as_i64).unwrap_or(0)
                    & CURSOR_OPT_HOLD
                    != 0,
            });
        }
        "FetchStmt" => st.fetches = Some(string(body, "portalname")),
        // CLOSE ALL has no portal name (an empty name is no identifier).
        "ClosePortalStmt" => {
            let name = string(body, "portalname");
            st.closes = Some((!name.is_empty()).then_some(name));
        }
        "DeallocateStmt" => {
            let all = body.get("isall").and_then(Value::as_bool) == Some(true);
            let name = string(body, "name");
            st.deallocates = Some((!all && !name.is_empty()).then_some(name));
        }
        "DiscardStmt" => {
            st.discards_all =
                body.get("target").and_then(Value::as_i64) == Some(DiscardMode::DiscardAll as i64);
        }
        _ => {}
    }
}

fn settings(body: &Value, out: &mut Vec<Setting>, reads: &mut BTreeSet<usize>) {
    let name = string(body, "name").to_ascii_lowercase();
    let local = body.get("is_local").and_then(Value::as_bool) == Some(true);
    let args: &[Value] = body
        .get("args")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let kind = body.get("kind").and_then(Value::as_i64).unwrap_or(0);
    let set = |name: String, value, local| Setting {
        name: Some(name),
        value,
        local,
        by_function: false,
    };
    match VariableSetKind::try_from(kind as i32).unwrap_or(VariableSetKind::Undefined) {
        VariableSetKind::VarSetValue => {
            out.push(set(name.clone(), flatten(&name, args, reads), local))
        }
        VariableSetKind::VarSetDefault | VariableSetKind::VarReset => {
            out.push(set(name, SettingValue::Default, local))
        }
        VariableSetKind::VarResetAll => out.push(set("all".into(), SettingValue::Default, false)),
        // SET TRANSACTION … sets transaction_* for this transaction; SET SESSION
        // CHARACTERISTICS the session's default_transaction_*; TRANSACTION SNAPSHOT no setting.
        VariableSetKind::VarSetMulti => {
            let (prefix, local) = match name.as_str() {
                "transaction" => ("", true),
                "session characteristics" => ("default_", false),
                "transaction snapshot" => return,
                _ => return out.push(set(name, SettingValue::Unknown, local)),
            };
            for item in args {
                let Some(("DefElem", d)) = item.get("node").and_then(node_of) else {
                    continue;
                };
                let value = match d.get("arg").and_then(|a| read(a, reads)) {
                    Some(Constant::Str(s)) => SettingValue::Value(s),
                    Some(Constant::Int(i)) => {
                        SettingValue::Value(if i != 0 { "on" } else { "off" }.into())
                    }
                    _ => SettingValue::Unknown,
                };
                out.push(set(
                    format!("{prefix}{}", string(d, "defname")),
                    value,
                    local,
                ));
            }
        }
        VariableSetKind::VarSetCurrent | VariableSetKind::Undefined => {
            out.push(set(name, SettingValue::Unknown, local))
        }
    }
}

/// A SET's value list as the server flattens it (flatten_set_variable_args): items joined by
/// `", "`, integers and numerics as written, strings quoted as identifiers for the settings that
/// take quoted lists. A custom (`ext.name`) setting's quoting depends on how its extension
/// declared it, so a string there that quoting would change makes the value unknown.
fn flatten(name: &str, args: &[Value], reads: &mut BTreeSet<usize>) -> SettingValue {
    let quoted = QUOTED_LISTS.contains(&name);
    let custom = name.contains('.');
    // Every item is read, whatever an earlier one holds: which literals the cache keeps must
    // not depend on a value.
    let constants: Vec<Option<Constant>> = args.iter().map(|a| read(a, reads)).collect();
    let mut items = Vec::with_capacity(args.len());
    for c in constants {
        let item = match c {
            Some(Constant::Int(i)) => i.to_string(),
            Some(Constant::Float(f)) => f,
            Some(Constant::Str(s)) => {
                let q = super::tokens::quote_identifier(&s);
                match (quoted, custom && q != s) {
                    (true, _) => q,
                    (false, true) => return SettingValue::Unknown,
                    (false, false) => s,
                }
            }
            // An interval time zone (a TypeCast) is computed by the server.
            _ => return SettingValue::Unknown,
        };
        items.push(item);
    }
    SettingValue::Value(items.join(", "))
}

/// A call of set_config(name, value, is_local) (`call` is its FuncCall): the server's
/// set_config_by_name takes a NULL value as the default and a NULL is_local as false. Anything
/// but positional constants leaves the name or value unknown.
pub(super) fn set_config(call: &Value, reads: &mut BTreeSet<usize>) -> Setting {
    let args: &[Value] = call
        .get("args")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let name = match args.first().and_then(|a| read(a, reads)) {
        Some(Constant::Str(s)) => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let plain = args.len() == 3 && call.get("func_variadic").and_then(Value::as_bool) != Some(true);
    let local = match args.get(2).filter(|_| plain).and_then(|a| read(a, reads)) {
        Some(Constant::Bool(b)) => Some(b),
        Some(Constant::Null) => Some(false),
        _ => None,
    };
    let value = match (local, args.get(1).and_then(|a| read(a, reads))) {
        (None, _) => SettingValue::Unknown,
        (Some(_), Some(Constant::Str(s))) => SettingValue::Value(s),
        (Some(_), Some(Constant::Null)) => SettingValue::Default,
        _ => SettingValue::Unknown,
    };
    Setting {
        name,
        value,
        local: local.unwrap_or(false),
        by_function: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{analyze, Dialect};

    fn first(sql: &str) -> Statement {
        analyze(sql, Dialect::default(), 1 << 20)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .statements
            .remove(0)
    }

    fn settings(sql: &str) -> Vec<Setting> {
        first(sql).settings
    }

    fn set(name: &str, value: SettingValue, local: bool) -> Setting {
        Setting {
            name: Some(name.into()),
            value,
            local,
            by_function: false,
        }
    }

    fn value(v: &str) -> SettingValue {
        SettingValue::Value(v.into())
    }

    #[test]
    fn cursors() {
        use crate::policy::StatementClass as C;
        let d = first("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t");
        assert_eq!(
            d.declares,
            Some(Cursor {
                name: "c".into(),
                holdable: true
            })
        );
        assert_eq!(d.classes, [C::Select].into());
        assert!(d.tables.contains(&("".into(), "t".into())));
        for sql in [
            "DECLARE \"Cur\" NO SCROLL CURSOR FOR SELECT 1",
            "DECLARE \"Cur\" BINARY INSENSITIVE CURSOR WITHOUT HOLD FOR SELECT 1",
        ] {
            assert_eq!(
                first(sql).declares,
                Some(Cursor {
                    name: "Cur".into(),
                    holdable: false
                }),
                "{sql}"
            );
        }
        // Names as the server keys them: folded to lower case, truncated to 63 bytes.
        let long = "c".repeat(70);
        assert_eq!(
            first(&format!("DECLARE {long} CURSOR FOR SELECT 1"))
                .declares
                .unwrap()
                .name,
            "c".repeat(63)
        );
        assert_eq!(
            first("DECLARE CUR CURSOR FOR SELECT 1")
                .declares
                .unwrap()
                .name,
            "cur"
        );
        for sql in [
            "FETCH 10 FROM c",
            "FETCH ALL c",
            "MOVE LAST IN c",
            "MOVE -1 FROM c",
        ] {
            assert_eq!(first(sql).fetches.as_deref(), Some("c"), "{sql}");
        }
        assert_eq!(
            first("FETCH NEXT FROM \"Cur\"").fetches.as_deref(),
            Some("Cur")
        );
        assert_eq!(first("CLOSE c").closes, Some(Some("c".into())));
        assert_eq!(first("CLOSE ALL").closes, Some(None));
        assert_eq!(first("SELECT 1").closes, None);
    }

    #[test]
    fn prepared_statements_and_discard() {
        assert_eq!(first("DEALLOCATE p").deallocates, Some(Some("p".into())));
        assert_eq!(
            first("DEALLOCATE PREPARE \"P\"").deallocates,
            Some(Some("P".into()))
        );
        assert_eq!(first("DEALLOCATE ALL").deallocates, Some(None));
        assert_eq!(first("DEALLOCATE PREPARE ALL").deallocates, Some(None));
        assert_eq!(first("EXECUTE p").deallocates, None);
        assert!(first("DISCARD ALL").discards_all);
        for sql in [
            "DISCARD PLANS",
            "DISCARD SEQUENCES",
            "DISCARD TEMP",
            "RESET ALL",
        ] {
            assert!(!first(sql).discards_all, "{sql}");
        }
    }

    #[test]
    fn set_statements() {
        use SettingValue::{Default, Unknown};
        for (sql, want) in [
            ("SET work_mem = '7MB'", set("work_mem", value("7MB"), false)),
            (
                "SET SESSION work_mem TO 64",
                set("work_mem", value("64"), false),
            ),
            (
                "SET LOCAL statement_timeout = 0",
                set("statement_timeout", value("0"), true),
            ),
            ("SET x.y = 1.5", set("x.y", value("1.5"), false)),
            ("SET \"Work_Mem\" = on", set("work_mem", value("on"), false)),
            (
                "SET enable_seqscan = true",
                set("enable_seqscan", value("true"), false),
            ),
            (
                "SET search_path = 'My S', public, 3",
                set("search_path", value("\"My S\", public, 3"), false),
            ),
            (
                "SET search_path TO '$user', \"select\"",
                set("search_path", value("\"$user\", \"select\""), false),
            ),
            ("SET SCHEMA 'crm'", set("search_path", value("crm"), false)),
            (
                "SET datestyle = iso, mdy",
                set("datestyle", value("iso, mdy"), false),
            ),
            ("SET ext.list = 'a b'", set("ext.list", Unknown, false)),
            ("SET ext.list = a, b", set("ext.list", value("a, b"), false)),
            (
                "SET NAMES 'LATIN1'",
                set("client_encoding", value("LATIN1"), false),
            ),
            ("SET NAMES DEFAULT", set("client_encoding", Default, false)),
            (
                "SET TIME ZONE 'Europe/Paris'",
                set("timezone", value("Europe/Paris"), false),
            ),
            ("SET TIME ZONE -7", set("timezone", value("-7"), false)),
            ("SET TIME ZONE LOCAL", set("timezone", Default, false)),
            (
                "SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE",
                set("timezone", Unknown, false),
            ),
            ("SET ROLE alice", set("role", value("alice"), false)),
            ("SET ROLE NONE", set("role", value("none"), false)),
            (
                "SET SESSION AUTHORIZATION 'Bob'",
                set("session_authorization", value("Bob"), false),
            ),
            (
                "SET SESSION AUTHORIZATION DEFAULT",
                set("session_authorization", Default, false),
            ),
            (
                "SET LOCAL work_mem TO DEFAULT",
                set("work_mem", Default, true),
            ),
            ("RESET work_mem", set("work_mem", Default, false)),
            ("RESET ROLE", set("role", Default, false)),
            (
                "RESET SESSION AUTHORIZATION",
                set("session_authorization", Default, false),
            ),
            ("RESET ALL", set("all", Default, false)),
            ("SET work_mem FROM CURRENT", set("work_mem", Unknown, false)),
            (
                "SET XML OPTION DOCUMENT",
                set("xmloption", value("DOCUMENT"), false),
            ),
        ] {
            assert_eq!(settings(sql), [want], "{sql}");
        }
        assert!(settings("RESET ALL")[0].is_reset_all());
        assert!(!settings("RESET work_mem")[0].is_reset_all());
        assert_eq!(
            settings("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
            [
                set("transaction_isolation", value("repeatable read"), true),
                set("transaction_read_only", value("on"), true),
            ]
        );
        assert_eq!(
            settings("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE, DEFERRABLE"),
            [
                set("default_transaction_read_only", value("off"), false),
                set("default_transaction_deferrable", value("on"), false),
            ]
        );
        assert_eq!(settings("SET TRANSACTION SNAPSHOT '00000003-1'"), []);
        // Settings kept for later, not made now.
        for sql in [
            "ALTER ROLE r SET work_mem = '1MB'",
            "ALTER DATABASE d SET work_mem = '1MB'",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "ALTER FUNCTION f() SET search_path = x",
            "SHOW work_mem",
        ] {
            assert_eq!(settings(sql), [], "{sql}");
        }
    }

    #[test]
    fn set_config_calls() {
        let call = |name: Option<&str>, value, local| Setting {
            name: name.map(str::to_string),
            value,
            local,
            by_function: true,
        };
        use SettingValue::{Default, Unknown};
        for (sql, want) in [
            (
                "SELECT set_config('search_path', 'a, b', false)",
                call(Some("search_path"), value("a, b"), false),
            ),
            (
                "SELECT pg_catalog.set_config('Work_Mem', '1MB', true)",
                call(Some("work_mem"), value("1MB"), true),
            ),
            (
                "SELECT set_config('work_mem', NULL, NULL)",
                call(Some("work_mem"), Default, false),
            ),
            (
                "SELECT set_config('work_mem', $1, false)",
                call(Some("work_mem"), Unknown, false),
            ),
            (
                "SELECT set_config('work_mem', '1MB', $1)",
                call(Some("work_mem"), Unknown, false),
            ),
            (
                "SELECT set_config('work_mem', '1MB', 'on')",
                call(Some("work_mem"), Unknown, false),
            ),
            (
                "SELECT set_config('work_mem', '1MB')",
                call(Some("work_mem"), Unknown, false),
            ),
            (
                "SELECT set_config(lower('ROLE'), 'x', false)",
                call(None, value("x"), false),
            ),
            (
                "SELECT set_config('role'::text, 'x', false)",
                call(None, value("x"), false),
            ),
            (
                "SELECT 1 FROM t WHERE false AND set_config('a.b', 'c', true) = ''",
                call(Some("a.b"), value("c"), true),
            ),
        ] {
            assert_eq!(settings(sql), [want], "{sql}");
        }
        // Every call, wherever it stands, after the statement's own SET (none here).
        let s = settings(
            "CREATE VIEW v AS SELECT set_config('a.b', 'x', false), (SELECT set_config('role', 'r', true))",
        );
        assert_eq!(
            s.iter().map(|s| s.name.as_deref()).collect::<Vec<_>>(),
            [Some("a.b"), Some("role")]
        );
        let a = analyze(
            "SET a.b = 1; SELECT set_config('a.c', '2', true)",
            Dialect::default(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(a.statements[0].settings, [set("a.b", value("1"), false)]);
        assert_eq!(
            a.statements[1].settings,
            [call(Some("a.c"), value("2"), true)]
        );
    }
}
