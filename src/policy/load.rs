//! Reading policy files: TOML → raw structs (serde rejects unknown keys at their line) →
//! validated [`Policy`]. Every problem in every file is collected, so `pgid policy check` shows
//! them all at once.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::grant::*;
use super::matcher::IdentityMatch;
use super::model::*;
use crate::config::{line_of, toml_error};
use crate::units::{ByteSize, Span};

const DEFAULT_MAX_CONNECTIONS: u32 = 4;
const MAX_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_PARTIAL_KEEP: usize = 4;
/// Retry mode: an approved statement may be run again within this time.
const DEFAULT_RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// One problem, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// All loaded policies, by name.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: BTreeMap<String, Arc<Policy>>,
}

impl PolicySet {
    pub fn new(policies: Vec<Policy>) -> PolicySet {
        PolicySet {
            policies: policies
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.policies.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Every policy must name a database that pgid.toml configures.
    pub fn check_databases(&self, known: &[&str]) -> Vec<PolicyError> {
        self.iter()
            .filter(|p| !known.contains(&p.database.as_str()))
            .map(|p| PolicyError {
                location: p.source.display().to_string(),
                message: format!(
                    "database {:?} is not configured in pgid.toml (configured: {})",
                    p.database,
                    known.join(", ")
                ),
            })
            .collect()
    }

    /// Approval rules that name webhooks pgid.toml does not configure (`known`: their names).
    pub fn check_webhooks(&self, known: &[&str]) -> Vec<PolicyError> {
        let mut problems = Vec::new();
        for p in self.iter() {
            for a in &p.approvals {
                let Some((names, line)) = &a.webhooks else {
                    continue;
                };
                for n in names.iter().filter(|n| !known.contains(&n.as_str())) {
                    problems.push(PolicyError {
                        location: format!("{}:{line}", p.source.display()),
                        message: format!(
                            "approval: webhook {n:?} is not configured in pgid.toml \
                             ([approvals] webhooks with name = {n:?}; named: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    });
                }
            }
        }
        problems
    }
}

/// Loads every `*.toml` file in `dir` (sorted by name).
pub fn load_dir(dir: &Path) -> Result<PolicySet, Vec<PolicyError>> {
    let err = |message: String| {
        vec![PolicyError {
            location: dir.display().to_string(),
            message,
        }]
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| err(format!("cannot read policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut policies: Vec<Policy> = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(PolicyError {
                    location: file.display().to_string(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match parse_policy(&file, &text) {
            Ok(p) => {
                if let Some(other) = policies.iter().find(|o| o.name == p.name) {
                    errors.push(PolicyError {
                        location: file.display().to_string(),
                        message: format!(
                            "policy name {:?} is already used by {}",
                            p.name,
                            other.source.display()
                        ),
                    });
                } else {
                    policies.push(p);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(PolicySet::new(policies))
    } else {
        Err(errors)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    description: Option<String>,
    database: Spanned<String>,
    ttl: Spanned<Span>,
    max_ttl: Option<Spanned<Span>>,
    max_connections: Option<Spanned<u32>>,
    identity: Spanned<IdentityMatch>,
    #[serde(default)]
    grant: Vec<Spanned<RawGrant>>,
    guardrails: Option<RawGuardrails>,
    #[serde(default)]
    mask: Vec<RawMask>,
    #[serde(default)]
    approval: Vec<RawApproval>,
    audit: Option<RawAudit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    parameters: Option<bool>,
    literals: Option<Spanned<String>>,
}

/// One `[[grant]]`: privileges, and exactly one of the keys naming objects.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    privileges: Spanned<Vec<Spanned<String>>>,
    on: Option<Spanned<Vec<Spanned<String>>>>,
    schemas: Option<Spanned<Vec<Spanned<String>>>>,
    database: Option<Spanned<bool>>,
    sequences: Option<Spanned<Vec<Spanned<String>>>>,
    types: Option<Spanned<Vec<Spanned<String>>>>,
    functions: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `max_rows` / `max_bytes`: a number (or a size), or `"unlimited"`.
enum RawLimit {
    Number(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawLimit;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a number, a size such as \"64MB\", or \"{UNLIMITED}\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RawLimit, E> {
                Ok(RawLimit::Number(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawLimit, E> {
                u64::try_from(n).map(RawLimit::Number).map_err(|_| {
                    E::custom(format!("{n} is negative: use a limit or \"{UNLIMITED}\""))
                })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawLimit, E> {
                Ok(RawLimit::Text(s.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

const UNLIMITED: &str = "unlimited";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuardrails {
    deny: Option<Vec<StatementClass>>,
    require_where: Option<Spanned<Vec<StatementClass>>>,
    deny_functions: Option<Vec<String>>,
    max_rows: Option<Spanned<RawLimit>>,
    max_bytes: Option<Spanned<RawLimit>>,
    max_statement_bytes: Option<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMask {
    columns: Vec<Spanned<String>>,
    method: MaskMethod,
    keep: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    statements: Spanned<Vec<StatementClass>>,
    #[serde(default)]
    tables: Vec<Spanned<String>>,
    approvers: Spanned<IdentityMatch>,
    min_rows: Option<u64>,
    mode: Option<ApprovalMode>,
    timeout: Option<Span>,
    window: Option<Spanned<Span>>,
    webhooks: Option<Spanned<Vec<String>>>,
}

struct Errors<'a> {
    file: String,
    text: &'a str,
    list: Vec<PolicyError>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.list.push(PolicyError {
            location: format!("{}:{}", self.file, line_of(self.text, span.start)),
            message: message.into(),
        });
    }
}

/// Parses and validates one policy file.
pub fn parse_policy(path: &Path, text: &str) -> Result<Policy, Vec<PolicyError>> {
    let file = path.display().to_string();
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let (location, message) = toml_error(&file, text, &e);
        vec![PolicyError { location, message }]
    })?;
    let mut errs = Errors {
        file,
        text,
        list: Vec::new(),
    };

    if !super::valid_name(raw.name.get_ref()) {
        errs.at(
            raw.name.span(),
            format!(
                "name {:?} must match [a-z0-9_-]{{1,32}}",
                raw.name.get_ref()
            ),
        );
    }
    if !super::valid_name(raw.database.get_ref()) {
        errs.at(
            raw.database.span(),
            format!(
                "database {:?} must match [a-z0-9_-]{{1,32}}",
                raw.database.get_ref()
            ),
        );
    }
    let ttl = raw.ttl.get_ref().as_std();
    let max_ttl = raw
        .max_ttl
        .as_ref()
        .map(|m| m.get_ref().as_std())
        .unwrap_or(ttl);
    if let Some(m) = &raw.max_ttl {
        if max_ttl < ttl {
            errs.at(
                m.span(),
                format!(
                    "max_ttl {} is shorter than ttl {}",
                    m.get_ref(),
                    raw.ttl.get_ref()
                ),
            );
        }
    }
    let max_connections = match &raw.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(m) => {
            if !(1..=MAX_MAX_CONNECTIONS).contains(m.get_ref()) {
                errs.at(
                    m.span(),
                    format!("max_connections must be between 1 and {MAX_MAX_CONNECTIONS}"),
                );
            }
            *m.get_ref()
        }
    };
    if let Err(m) = raw.identity.get_ref().validate() {
        errs.at(raw.identity.span(), m);
    }

    let mut names = Vec::new();
    let mut grants = Vec::new();
    for g in &raw.grant {
        if let Some(grant) = grant(g, &mut errs, &mut names) {
            grants.push(grant);
        }
    }

    let guardrails = match raw.guardrails {
        None => Guardrails::default(),
        Some(g) => {
            let d = Guardrails::default();
            let require_where = match g.require_where {
                None => d.require_where,
                Some(r) => {
                    use StatementClass::*;
                    if let Some(bad) = r
                        .get_ref()
                        .iter()
                        .find(|c| !matches!(c, Update | Delete | Merge))
                    {
                        errs.at(
                            r.span(),
                            format!(
                                "require_where applies to UPDATE, DELETE and MERGE, not {bad:?}"
                            ),
                        );
                    }
                    r.into_inner()
                }
            };
            Guardrails {
                deny: g.deny.unwrap_or(d.deny),
                require_where,
                deny_functions: g
                    .deny_functions
                    .map(|f| f.into_iter().map(|n| n.to_ascii_lowercase()).collect())
                    .unwrap_or(d.deny_functions),
                max_rows: match &g.max_rows {
                    None => d.max_rows,
                    Some(l) => limit(l, "max_rows", &mut errs),
                },
                max_bytes: match &g.max_bytes {
                    None => d.max_bytes,
                    Some(l) => limit(l, "max_bytes", &mut errs),
                },
                max_statement_bytes: g
                    .max_statement_bytes
                    .map(|b| b.0)
                    .unwrap_or(d.max_statement_bytes),
            }
        }
    };

    let mut masks = Vec::new();
    for m in &raw.mask {
        let mut columns = Vec::new();
        for c in &m.columns {
            match parse_qualified(c.get_ref()) {
                Ok(parts) if parts.len() == 3 && !parts.iter().any(|p| p == "*") => {
                    let column = ColumnRef {
                        schema: parts[0].clone(),
                        table: parts[1].clone(),
                        column: parts[2].clone(),
                    };
                    names.push(NamedObject {
                        rule: "[[mask]]",
                        object: ObjectName::Column(column.clone()),
                        line: line_of(text, c.span().start),
                    });
                    columns.push(column)
                }
                Ok(_) => errs.at(
                    c.span(),
                    format!("mask column {:?} must be schema.table.column", c.get_ref()),
                ),
                Err(e) => errs.at(c.span(), e),
            }
        }
        if m.keep.is_some() && m.method != MaskMethod::Partial {
            errs.list.push(PolicyError {
                location: errs.file.clone(),
                message: "mask: keep applies only to method = \"partial\"".into(),
            });
        }
        masks.push(Mask {
            columns,
            method: m.method,
            keep: m.keep.unwrap_or(DEFAULT_PARTIAL_KEEP),
        });
    }

    let mut approvals = Vec::new();
    for a in raw.approval {
        if a.statements.get_ref().is_empty() {
            errs.at(
                a.statements.span(),
                "approval: list at least one statement class",
            );
        }
        let mut tables = Vec::new();
        for t in &a.tables {
            match parse_table_ref(t.get_ref(), true) {
                Ok(r) => {
                    names.push(NamedObject {
                        rule: "[[approval]]",
                        object: ObjectName::Relation(r.clone()),
                        line: line_of(text, t.span().start),
                    });
                    tables.push(r)
                }
                Err(m) => errs.at(t.span(), m),
            }
        }
        let approvers = a.approvers.get_ref();
        if approvers.subject.is_none() && approvers.claims.is_empty() {
            errs.at(
                a.approvers.span(),
                "approval: approvers must name claims or a subject",
            );
        }
        let mode = a.mode.unwrap_or(ApprovalMode::Wait);
        if let (Some(w), ApprovalMode::Wait) = (&a.window, mode) {
            errs.at(
                w.span(),
                "approval: window applies to mode = \"retry\" only",
            );
        }
        approvals.push(Approval {
            statements: a.statements.into_inner(),
            tables,
            approvers: a.approvers.into_inner(),
            min_rows: a.min_rows,
            mode,
            window: a
                .window
                .map(|w| w.into_inner().as_std())
                .unwrap_or(DEFAULT_RETRY_WINDOW),
            timeout: a
                .timeout
                .map(Span::as_std)
                .unwrap_or(DEFAULT_APPROVAL_TIMEOUT),
            webhooks: a.webhooks.map(|w| {
                let line = line_of(text, w.span().start);
                (w.into_inner(), line)
            }),
        });
    }

    let mut audit = StatementAudit::default();
    if let Some(a) = raw.audit {
        audit.parameters = a.parameters.unwrap_or(true);
        if let Some(l) = a.literals {
            match l.get_ref().as_str() {
                "keep" => {}
                "normalize" => audit.normalize_literals = true,
                other => errs.at(
                    l.span(),
                    format!("audit.literals: {other:?} is not \"keep\" or \"normalize\""),
                ),
            }
        }
    }

    if !errs.list.is_empty() {
        return Err(errs.list);
    }
    Ok(Policy {
        name: raw.name.into_inner(),
        description: raw.description.unwrap_or_default(),
        database: raw.database.into_inner(),
        ttl,
        max_ttl,
        max_connections,
        identity: raw.identity.into_inner(),
        grants,
        guardrails,
        masks,
        approvals,
        audit,
        names,
        source: path.to_path_buf(),
    })
}

/// One `[[grant]]` block: its privileges must apply to the one kind of object it names.
fn grant(
    g: &Spanned<RawGrant>,
    errs: &mut Errors<'_>,
    names: &mut Vec<NamedObject>,
) -> Option<Grant> {
    let raw = g.get_ref();
    let mut given: Vec<(ObjectKind, Range<usize>)> = [
        (ObjectKind::Table, &raw.on),
        (ObjectKind::Schema, &raw.schemas),
        (ObjectKind::Sequence, &raw.sequences),
        (ObjectKind::Type, &raw.types),
        (ObjectKind::Function, &raw.functions),
    ]
    .into_iter()
    .filter_map(|(kind, list)| list.as_ref().map(|l| (kind, l.span())))
    .collect();
    if let Some(d) = &raw.database {
        given.push((ObjectKind::Database, d.span()));
        if !*d.get_ref() {
            errs.at(
                d.span(),
                "database = false grants nothing: remove the key (or the block)",
            );
        }
    }
    given.sort_by_key(|(_, span)| span.start);
    let kind = match given.as_slice() {
        [] => {
            errs.at(
                g.span(),
                format!(
                    "a [[grant]] must name what it grants on: one of {}",
                    ObjectKind::ALL.map(ObjectKind::key).join(", ")
                ),
            );
            return None;
        }
        [(kind, _)] => *kind,
        [(first, _), (second, span), ..] => {
            errs.at(
                span.clone(),
                format!(
                    "a [[grant]] names exactly one kind of object; this one has {} and {}: \
                     write one [[grant]] block for each",
                    first.key(),
                    second.key()
                ),
            );
            return None;
        }
    };

    let mut privileges = Vec::new();
    for p in raw.privileges.get_ref() {
        match kind.privilege(p.get_ref()) {
            Ok(v) if !privileges.contains(&v) => privileges.push(v),
            Ok(_) => {}
            Err(m) => errs.at(p.span(), m),
        }
    }
    if raw.privileges.get_ref().is_empty() {
        errs.at(raw.privileges.span(), "a [[grant]] lists no privileges");
    }

    let mut list = Names { kind, errs, names };
    let objects =
        match kind {
            ObjectKind::Database => GrantObjects::Database,
            ObjectKind::Table => GrantObjects::Tables(list.parse(&raw.on, |t| {
                parse_table_ref(t, true).map(|r| (ObjectName::Relation(r.clone()), r))
            })),
            ObjectKind::Schema => GrantObjects::Schemas(list.parse(&raw.schemas, |t| {
                match parse_qualified(t)?.as_slice() {
                    [schema] if schema != "*" => {
                        Ok((ObjectName::Schema(schema.clone()), schema.clone()))
                    }
                    _ => Err(format!("schema {t:?} must be a schema name")),
                }
            })),
            ObjectKind::Sequence => GrantObjects::Sequences(list.parse(&raw.sequences, |t| {
                ObjectRef::parse(t).map(|r| (ObjectName::Sequence(r.clone()), r))
            })),
            ObjectKind::Type => GrantObjects::Types(list.parse(&raw.types, |t| {
                ObjectRef::parse(t).map(|r| (ObjectName::Type(r.clone()), r))
            })),
            ObjectKind::Function => GrantObjects::Functions(list.parse(&raw.functions, |t| {
                FunctionRef::parse(t).map(|r| (ObjectName::Function(r.clone()), r))
            })),
        };
    Some(Grant {
        privileges,
        objects,
    })
}

/// The list of objects of one `[[grant]]`, each recorded with its line for the database check.
struct Names<'e, 't> {
    kind: ObjectKind,
    errs: &'e mut Errors<'t>,
    names: &'e mut Vec<NamedObject>,
}

impl Names<'_, '_> {
    fn parse<T>(
        &mut self,
        list: &Option<Spanned<Vec<Spanned<String>>>>,
        parse: impl Fn(&str) -> Result<(ObjectName, T), String>,
    ) -> Vec<T> {
        let Some(list) = list else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.errs.at(
                list.span(),
                format!("{} = [] names no {}", self.kind.key(), self.kind.noun()),
            );
        }
        let mut out = Vec::new();
        for item in list.get_ref() {
            match parse(item.get_ref()) {
                Ok((object, value)) => {
                    self.names.push(NamedObject {
                        rule: "[[grant]]",
                        object,
                        line: line_of(self.errs.text, item.span().start),
                    });
                    out.push(value);
                }
                Err(m) => self.errs.at(item.span(), m),
            }
        }
        out
    }
}

/// A `max_rows` / `max_bytes` value: `None` is no limit (`"unlimited"`).
fn limit(l: &Spanned<RawLimit>, key: &str, errs: &mut Errors<'_>) -> Option<u64> {
    let value = match l.get_ref() {
        RawLimit::Number(n) => Ok(*n),
        RawLimit::Text(t) if t.trim().eq_ignore_ascii_case(UNLIMITED) => return None,
        RawLimit::Text(t) if key == "max_bytes" => ByteSize::parse(t)
            .map(|b| b.0)
            .map_err(|m| format!("max_bytes: {m} or \"{UNLIMITED}\"")),
        RawLimit::Text(t) => Err(format!(
            "{key} must be a number or \"{UNLIMITED}\", not {t:?}"
        )),
    };
    match value {
        Ok(v) => Some(v),
        Err(m) => {
            errs.at(l.span(), m);
            // Refused below; a limit that did not parse must never mean no limit.
            Some(0)
        }
    }
}

/// `schema.table` or (when allowed) `schema.*`.
pub fn parse_table_ref(text: &str, allow_star: bool) -> Result<TableRef, String> {
    let parts = parse_qualified(text)?;
    match parts.as_slice() {
        [schema, star] if star == "*" && allow_star => Ok(TableRef::AllInSchema {
            schema: schema.clone(),
        }),
        [schema, table] if schema != "*" && table != "*" => Ok(TableRef::Table {
            schema: schema.clone(),
            table: table.clone(),
        }),
        _ => Err(format!(
            "{text:?} must be schema.table{}",
            if allow_star { " or schema.*" } else { "" }
        )),
    }
}

/// Splits a dotted SQL name as Postgres reads it: unquoted parts fold to lower case, `"Quoted"`
/// parts keep their case (with `""` for a quote). A bare `*` part is returned as `*`.
pub fn parse_qualified(text: &str) -> Result<Vec<String>, String> {
    let bad = |why: &str| format!("{text:?} is not a valid name: {why}");
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some('\0') => return Err(bad("NUL character")),
                    Some(c) => part.push(c),
                    None => return Err(bad("unterminated quote")),
                }
            }
            if part.is_empty() {
                return Err(bad("empty quoted identifier"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$' || c == '*') {
                    return Err(bad(&format!(
                        "unexpected character {c:?} (quote names with special characters)"
                    )));
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err(bad("empty part"));
            }
            if part.contains('*') && part != "*" {
                return Err(bad("* must stand alone"));
            }
        }
        if part.len() > 63 {
            return Err(bad("a part is longer than 63 bytes"));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(bad(&format!("unexpected {c:?} after a quoted part"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "nightly-report"
description = "Nightly revenue report job"
database = "app"
ttl = "15m"
max_ttl = "1h"
max_connections = 4

[identity]
issuer = "https://idp.example.com"
subject = "svc:nightly-report"
[identity.claims]
azp = "nightly-report"

[[grant]]
privileges = ["SELECT"]
on = ["reporting.*", "crm.customers"]

[guardrails]
deny = ["DROP", "TRUNCATE", "ALTER", "GRANT", "ROLE", "FUNCTION", "DO", "COPY_PROGRAM"]
require_where = ["UPDATE", "DELETE"]
deny_functions = ["pg_read_file", "pg_terminate_backend"]
max_rows = 10000
max_bytes = "64MB"
max_statement_bytes = 1048576

[[mask]]
columns = ["crm.customers.email", "crm.customers.ssn"]
method = "redact"

[[approval]]
statements = ["DELETE", "UPDATE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "dba" } }
min_rows = 100
mode = "wait"
timeout = "5m"
"#;

    fn parse(text: &str) -> Result<Policy, Vec<PolicyError>> {
        parse_policy(Path::new("policies/p.toml"), text)
    }

    #[test]
    fn the_design_example_parses() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "nightly-report");
        assert_eq!(p.ttl.as_secs(), 900);
        assert_eq!(p.max_ttl.as_secs(), 3600);
        assert_eq!(
            p.grants[0].objects,
            GrantObjects::Tables(vec![
                TableRef::AllInSchema {
                    schema: "reporting".into()
                },
                TableRef::Table {
                    schema: "crm".into(),
                    table: "customers".into()
                }
            ])
        );
        assert_eq!(p.guardrails.max_bytes, Some(64 << 20));
        assert_eq!(p.masks[0].columns[1].column, "ssn");
        assert_eq!(p.approvals[0].min_rows, Some(100));
    }

    fn first_error(text: &str) -> String {
        parse(text).unwrap_err()[0].to_string()
    }

    #[test]
    fn unknown_keys_and_bad_values_point_at_their_line() {
        let e = first_error(&GOOD.replace("max_connections = 4", "max_conections = 4"));
        assert!(
            e.starts_with("policies/p.toml:7:") && e.contains("max_conections"),
            "{e}"
        );
        let e = first_error(&GOOD.replace("\"SELECT\"]", "\"SELEKT\"]"));
        assert!(
            e.starts_with("policies/p.toml:16:") && e.contains("SELEKT"),
            "{e}"
        );
        let e = first_error(&GOOD.replace("\"DROP\", ", "\"DORP\", "));
        assert!(e.contains(":20:") && e.contains("DORP"), "{e}");
        let e = first_error(&GOOD.replace("ttl = \"15m\"", "ttl = \"2h\""));
        assert!(e.contains(":6:") && e.contains("max_ttl"), "{e}");
        let e = first_error(&GOOD.replace("\"crm.customers\"]", "\"customers\"]"));
        assert!(e.contains(":17:") && e.contains("schema.table"), "{e}");
        let e = first_error(&GOOD.replace("nightly-report\"\ndesc", "Nightly Report\"\ndesc"));
        assert!(e.contains(":2:"), "{e}");
        let e = first_error(&GOOD.replace("method = \"redact\"", "method = \"scramble\""));
        assert!(e.contains("scramble"), "{e}");
    }

    #[test]
    fn approval_rules_name_configured_webhooks() {
        let text = GOOD.replace(
            "timeout = \"5m\"",
            "timeout = \"5m\"\nwebhooks = [\"dba\", \"pager\"]",
        );
        let p = parse(&text).unwrap();
        let (names, line) = p.approvals[0].webhooks.clone().unwrap();
        assert_eq!((names, line), (vec!["dba".to_string(), "pager".into()], 38));
        assert!(
            parse(GOOD).unwrap().approvals[0].webhooks.is_none(),
            "all, as before"
        );
        let set = PolicySet::new(vec![p]);
        assert!(set.check_webhooks(&["dba", "pager"]).is_empty());
        let problems = set.check_webhooks(&["dba"]);
        assert_eq!(problems.len(), 1);
        let e = problems[0].to_string();
        assert!(
            e.starts_with("policies/p.toml:38:") && e.contains("\"pager\" is not configured"),
            "{e}"
        );
    }

    #[test]
    fn missing_guardrails_get_safe_defaults() {
        let start = GOOD.find("[guardrails]").unwrap();
        let end = GOOD.find("[[mask]]").unwrap();
        let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
        let p = parse(&text).unwrap();
        assert!(p.guardrails.deny.contains(&StatementClass::Drop));
        assert!(p.guardrails.require_where.contains(&StatementClass::Delete));
        assert!(p.guardrails.max_rows.is_some());
    }

    /// GOOD with its `[[grant]]` replaced by `grants`.
    fn with_grants(grants: &str) -> String {
        GOOD.replace(
            "[[grant]]\nprivileges = [\"SELECT\"]\non = [\"reporting.*\", \"crm.customers\"]\n",
            grants,
        )
    }

    #[test]
    fn typed_grants_name_one_kind_of_object_each() {
        let p = parse(&with_grants(
            r#"[[grant]]
privileges = ["SELECT"]
on = ["reporting.*", "crm.customers"]
[[grant]]
privileges = ["CREATE", "usage"]
schemas = ["scratch", "\"Mixed\""]
[[grant]]
privileges = ["CREATE", "TEMP"]
database = true
[[grant]]
privileges = ["USAGE", "SELECT", "UPDATE"]
sequences = ["crm.orders_id_seq", "crm.*"]
[[grant]]
privileges = ["USAGE"]
types = ["crm.mood"]
[[grant]]
privileges = ["EXECUTE"]
functions = ["crm.order_total(integer)", "crm.*"]
"#,
        ))
        .unwrap();
        let kinds: Vec<ObjectKind> = p.grants.iter().map(|g| g.objects.kind()).collect();
        assert_eq!(
            kinds,
            [
                ObjectKind::Table,
                ObjectKind::Schema,
                ObjectKind::Database,
                ObjectKind::Sequence,
                ObjectKind::Type,
                ObjectKind::Function
            ]
        );
        assert_eq!(
            p.grants[1].objects,
            GrantObjects::Schemas(vec!["scratch".into(), "Mixed".into()])
        );
        assert_eq!(
            p.grants[2].privileges,
            [Privilege::Create, Privilege::Temporary]
        );
        assert_eq!(
            p.grants[5].objects,
            GrantObjects::Functions(vec![
                FunctionRef::Signature {
                    schema: "crm".into(),
                    name: "order_total".into(),
                    args: vec!["integer".into()]
                },
                FunctionRef::AllInSchema {
                    schema: "crm".into()
                }
            ])
        );
        // Every object is checked against the database later, with its line.
        let functions: Vec<usize> = p
            .names
            .iter()
            .filter(|n| matches!(n.object, ObjectName::Function(_)))
            .map(|n| n.line)
            .collect();
        assert_eq!(functions, [32, 32]);
        assert!(p
            .names
            .iter()
            .any(|n| n.object == ObjectName::Schema("Mixed".into()) && n.line == 20));
    }

    fn grant_error(grants: &str) -> String {
        let errors = parse(&with_grants(grants)).unwrap_err();
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn bad_grant_blocks_say_what_is_wrong_and_where() {
        // The block starts at line 15, as in GOOD: privileges on 16, objects on 17.
        let e = grant_error("[[grant]]\nprivileges = [\"USAGE\"]\non = [\"crm.t\"]\n");
        assert!(
            e.contains("p.toml:16:") && e.contains("USAGE does not apply to tables and views"),
            "{e}"
        );
        let e = grant_error("[[grant]]\nprivileges = [\"SELECT\"]\nfunctions = [\"crm.f()\"]\n");
        assert!(
            e.contains(":16:") && e.contains("functions take EXECUTE"),
            "{e}"
        );
        let e = grant_error("[[grant]]\nprivileges = [\"TEMPORARY\"]\nschemas = [\"s\"]\n");
        assert!(e.contains("schemas take CREATE, USAGE"), "{e}");
        let e = grant_error("[[grant]]\nprivileges = [\"CONNECT\"]\ndatabase = true\n");
        assert!(e.contains("always granted"), "{e}");
        let e = grant_error(
            "[[grant]]\nprivileges = [\"USAGE\"]\nschemas = [\"s\"]\nsequences = [\"s.q\"]\n",
        );
        assert!(
            e.contains(":18:")
                && e.contains("exactly one kind of object")
                && e.contains("schemas and sequences"),
            "{e}"
        );
        let e = grant_error("[[grant]]\nprivileges = [\"SELECT\"]\n");
        assert!(e.contains("must name what it grants on"), "{e}");
        let e = grant_error("[[grant]]\nprivileges = []\nschemas = [\"s\"]\n");
        assert!(
            e.contains(":16:") && e.contains("lists no privileges"),
            "{e}"
        );
        let e = grant_error("[[grant]]\nprivileges = [\"USAGE\"]\ntypes = []\n");
        assert!(e.contains(":17:") && e.contains("names no types"), "{e}");
        let e = grant_error("[[grant]]\nprivileges = [\"USAGE\"]\ntypes = [\"mood\"]\n");
        assert!(e.contains(":17:") && e.contains("schema.name"), "{e}");
        let e = grant_error("[[grant]]\nprivileges = [\"EXECUTE\"]\nfunctions = [\"crm.f\"]\n");
        assert!(e.contains("argument types"), "{e}");
        let e = grant_error("[[grant]]\nprivileges = [\"CREATE\"]\ndatabase = false\n");
        assert!(e.contains("grants nothing"), "{e}");
        let e = grant_error("[[grant]]\nprivileges = [\"USAGE\"]\nsequence = [\"s.q\"]\n");
        assert!(
            e.contains(":17:") && e.contains("unknown field `sequence`"),
            "{e}"
        );
        let e = grant_error("[[grant]]\nprivileges = [\"CREATE\"]\nschemas = [\"a.b\"]\n");
        assert!(e.contains("must be a schema name"), "{e}");
    }

    #[test]
    fn export_limits_can_be_switched_off() {
        let p = parse(
            &GOOD
                .replace("max_rows = 10000", "max_rows = \"unlimited\"")
                .replace("max_bytes = \"64MB\"", "max_bytes = \"unlimited\""),
        )
        .unwrap();
        assert_eq!(p.guardrails.max_rows, None);
        assert_eq!(p.guardrails.max_bytes, None);
        let p = parse(&GOOD.replace("max_bytes = \"64MB\"", "max_bytes = 1024")).unwrap();
        assert_eq!(p.guardrails.max_bytes, Some(1024));
        assert_eq!(p.guardrails.max_rows, Some(10_000));
        let e = first_error(&GOOD.replace("max_rows = 10000", "max_rows = \"lots\""));
        assert!(e.contains(":23:") && e.contains("\"unlimited\""), "{e}");
        let e = first_error(&GOOD.replace("max_bytes = \"64MB\"", "max_bytes = \"64XB\""));
        assert!(e.contains(":24:") && e.contains("64XB"), "{e}");
        let e = first_error(&GOOD.replace("max_rows = 10000", "max_rows = -1"));
        assert!(e.contains(":23:") && e.contains("negative"), "{e}");
    }

    #[test]
    fn qualified_names_fold_like_postgres() {
        assert_eq!(
            parse_qualified("CRM.Customers").unwrap(),
            ["crm", "customers"]
        );
        assert_eq!(
            parse_qualified("\"My Schema\".\"T\"\"x\"").unwrap(),
            ["My Schema", "T\"x"]
        );
        assert!(parse_qualified("crm.cust;omers").is_err());
        assert!(parse_qualified("crm.\"open").is_err());
        assert!(parse_qualified("crm..x").is_err());
        assert!(parse_table_ref("*.x", true).is_err());
    }
}
