//! Whether the planner's row estimate for a statement can be trusted (`min_rows`): only for a
//! single UPDATE or DELETE of one table whose WHERE compares columns with constants or
//! parameters (`=`, `<`, IN, BETWEEN, LIKE, IS NULL … joined by AND/OR/NOT). Anything else — an
//! expression, a function, a subquery, a join, a column compared with a column — gets the
//! planner's default selectivity, which the statement's own text can shrink at will
//! (`lower(s) = lower(s) || '' AND id + 0 = id` is true for every row and estimated at one).

use serde_json::Value;

use super::node_of;

pub fn estimable(sql: &str) -> bool {
    if super::tokens::depends_on_standard_conforming_strings(sql) {
        return false;
    }
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return false;
    };
    let Ok(tree) = serde_json::to_value(&parsed.protobuf.stmts) else {
        return false;
    };
    let [only] = tree.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return false;
    };
    let Some((mut kind, mut body)) = only
        .get("stmt")
        .and_then(|s| s.get("node"))
        .and_then(node_of)
    else {
        return false;
    };
    // `PREPARE name AS …`: what an EXECUTE of it runs.
    if kind == "PrepareStmt" {
        let Some(query) = body
            .get("query")
            .and_then(|q| q.get("node"))
            .and_then(node_of)
        else {
            return false;
        };
        (kind, body) = query;
    }
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
    use super::estimable;

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
