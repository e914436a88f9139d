//! Whether the planner's row estimate for a statement can be trusted (`min_rows`), decided while
//! the statement is analysed: only for a single UPDATE or DELETE of one table whose WHERE compares columns with constants or
//! parameters (`=`, `<`, IN, BETWEEN, LIKE, IS NULL … joined by AND/OR/NOT). Anything else — an
//! expression, a function, a subquery, a join, a column compared with a column — gets the
//! planner's default selectivity, which the statement's own text can shrink at will
//! (`lower(s) = lower(s) || '' AND id + 0 = id` is true for every row and estimated at one).

use serde_json::Value;

use super::node_of;

/// For a statement of kind `kind` at the top of a string (already parsed and walked): whether
/// the planner's estimate of it can be trusted. `PREPARE name AS …` answers for what an EXECUTE
/// of it runs.
pub(super) fn root(kind: &str, body: &Value) -> bool {
    let (kind, body) = match kind {
        "PrepareStmt" => match body
            .get("query")
            .and_then(|q| q.get("node"))
            .and_then(node_of)
        {
            Some(query) => query,
            None => return false,
        },
        _ => (kind, body),
    };
    let empty = |field: &str| {
        body.get(field)
            .is_none_or(|v| v.is_null() || v.as_array().is_some_and(Vec::is_empty))
    };
    matches!(kind, "DeleteStmt" | "UpdateStmt")
        && empty("with_clause")
        && empty("using_clause")
        && empty("from_clause")
        && body.get("where_clause").is_some_and(simple)
}

/// A predicate of column-versus-value comparisons.
fn simple(node: &Value) -> bool {
    let Some((kind, body)) = node.get("node").and_then(node_of) else {
        return false;
    };
    match kind {
        "BoolExpr" => body
            .get("args")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().all(simple)),
        "AExpr" => {
            let (l, r) = (body.get("lexpr"), body.get("rexpr"));
            match (l.map(column), r.map(column)) {
                (Some(true), Some(false)) => r.is_some_and(value),
                (Some(false), Some(true)) => l.is_some_and(value),
                _ => false,
            }
        }
        "NullTest" | "BooleanTest" => body.get("arg").is_some_and(column),
        "ColumnRef" => true,
        _ => false,
    }
}

fn column(node: &Value) -> bool {
    matches!(node.get("node").and_then(node_of), Some(("ColumnRef", _)))
}

/// A constant, a parameter, a cast of one, or a list or array of them.
fn value(node: &Value) -> bool {
    match node.get("node").and_then(node_of) {
        Some(("AConst" | "ParamRef", _)) => true,
        Some(("TypeCast", c)) => c.get("arg").is_some_and(value),
        Some(("List", l)) => l
            .get("items")
            .and_then(Value::as_array)
            .is_some_and(|i| i.iter().all(value)),
        Some(("AArrayExpr", a)) => a
            .get("elements")
            .and_then(Value::as_array)
            .is_some_and(|i| i.iter().all(value)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{analyze, Dialect};

    /// A single statement the planner's estimate of which counts, read as the server would.
    fn estimable(sql: &str) -> bool {
        let off = Dialect {
            backslash_escapes: true,
        };
        // Under either setting where the text reads the same; a text that does not is judged
        // under standard_conforming_strings = off here, where `'a\'` is unterminated.
        let dialect = if super::super::depends_on_standard_conforming_strings(sql) {
            off
        } else {
            Dialect::default()
        };
        match analyze(sql, dialect, 1 << 20) {
            Ok(a) => a.statements.len() == 1 && a.statements[0].estimable,
            Err(_) => false,
        }
    }

    #[test]
    fn only_column_versus_value_predicates_are_estimable() {
        for sql in [
            "DELETE FROM crm.orders WHERE id = 1",
            "DELETE FROM crm.orders WHERE id = $1",
            "UPDATE crm.orders SET status = 'x' WHERE id > 20 AND status <> 'new'",
            "DELETE FROM crm.orders WHERE id IN (1, 2, 3) OR status LIKE 'a%'",
            "DELETE FROM crm.orders WHERE id BETWEEN 1 AND 5",
            "DELETE FROM crm.orders WHERE NOT (amount > 5::numeric) AND created_at IS NULL",
            "DELETE FROM crm.orders WHERE id = ANY(ARRAY[1, 2])",
            "PREPARE d(int) AS DELETE FROM crm.orders WHERE id = $1",
        ] {
            assert!(estimable(sql), "{sql}");
        }
        for sql in [
            "DELETE FROM crm.orders WHERE lower(status) = lower(status) || '' AND id + 0 = id",
            "DELETE FROM crm.orders WHERE id = id",
            "DELETE FROM crm.orders WHERE id IN (SELECT id FROM t)",
            "DELETE FROM crm.orders",
            "DELETE FROM crm.orders USING t WHERE t.id = 1",
            "UPDATE crm.orders SET status = 'x' FROM t WHERE t.id = 1",
            "WITH d AS (SELECT 1) DELETE FROM crm.orders WHERE id = 1",
            "DELETE FROM crm.orders WHERE id = 1; DELETE FROM crm.orders WHERE id = 2",
            "INSERT INTO crm.orders SELECT * FROM crm.orders",
            r"DELETE FROM crm.orders WHERE status = 'a\'",
            "DELETE FROM crm.orders WHERE abs(id) = 1",
        ] {
            assert!(!estimable(sql), "{sql}");
        }
    }
}
