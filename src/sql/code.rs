//! Statements that create code the server runs later without the calling statement naming it:
//! operators, aggregates, base types (their I/O functions), casts, conversions, transforms,
//! operator classes and families, range types (their canonical and subtype_diff functions),
//! procedural languages, foreign-data wrappers, access methods, triggers and event triggers.
//! They are of the FUNCTION class ([`super::nodes`]), and the functions they bind are collected
//! here so that `deny_functions` judges them as it judges a call.

use serde_json::Value;

use super::node_of;

/// Node types that bind functions by name.
pub fn binds_functions(kind: &str) -> bool {
    matches!(
        kind,
        "DefineStmt"
            | "CreateCastStmt"
            | "CreateConversionStmt"
            | "CreateTransformStmt"
            | "CreateOpClassStmt"
            | "AlterOpFamilyStmt"
            | "CreateRangeStmt"
            | "CreatePlangStmt"
            | "CreateFdwStmt"
            | "AlterFdwStmt"
            | "CreateAmStmt"
            | "AlterOperatorStmt"
            | "AlterTypeStmt"
            | "CreateTrigStmt"
            | "CreateEventTrigStmt"
    )
}

/// Fields that hold a function's name as a list of name parts.
const NAME_FIELDS: &[&str] = &[
    "funcname",
    "func_name",
    "handler_name",
    "plhandler",
    "plinline",
    "plvalidator",
    "objname",
];

/// Every name such a statement may bind a function by, lower-cased as the parser gives it
/// (`schema.name` or `name`). Over-inclusive on purpose: an option whose value is a type
/// (`LEFTARG = int`) is collected too, and matches no function a policy denies.
pub fn bound_names(body: &Value, out: &mut Vec<String>) {
    match body {
        Value::Array(items) => items.iter().for_each(|i| bound_names(i, out)),
        Value::Object(map) => {
            for (k, child) in map {
                if NAME_FIELDS.contains(&k.as_str()) {
                    out.extend(name(child));
                }
                // An option (`FUNCTION = f`, `SFUNC = s.f`, `HANDLER h`): its value names it.
                if k == "arg" && map.contains_key("defname") {
                    out.extend(option_value(child));
                }
                bound_names(child, out);
            }
        }
        _ => {}
    }
}

/// `[{"node":{"String":{"sval":"a"}}}, …]` → "a.b…".
fn name(list: &Value) -> Option<String> {
    let parts: Option<Vec<&str>> = list
        .as_array()?
        .iter()
        .map(|i| i.get("node")?.get("String")?.get("sval")?.as_str())
        .collect();
    parts.filter(|p| !p.is_empty()).map(|p| p.join("."))
}

/// A DefElem's value as a name: a TypeName's names, a list of names, or a string.
fn option_value(arg: &Value) -> Option<String> {
    match arg.get("node").and_then(node_of)? {
        ("TypeName", t) => name(t.get("names")?),
        ("List", l) => name(l.get("items")?),
        ("String", s) => s.get("sval")?.as_str().map(str::to_string),
        _ => None,
    }
}
