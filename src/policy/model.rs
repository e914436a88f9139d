//! The validated policy: what a policy file means once every value has been checked.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::grant::{FunctionRef, Grant, ObjectRef};
use super::matcher::IdentityMatch;

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub database: String,
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub max_connections: u32,
    pub identity: IdentityMatch,
    pub grants: Vec<Grant>,
    pub guardrails: Guardrails,
    pub masks: Vec<Mask>,
    pub approvals: Vec<Approval>,
    pub audit: StatementAudit,
    /// Every table, schema and column the policy's rules name, with its line: checked against
    /// the database at start, reload and `plan` (a misspelt name must not switch a rule off).
    pub names: Vec<NamedObject>,
    pub source: PathBuf,
}

/// A name in a policy file that must exist in the policy's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedObject {
    /// The rule naming it: `[[grant]]`, `[[mask]]` or `[[approval]]`.
    pub rule: &'static str,
    pub object: ObjectName,
    /// Line in [`Policy::source`].
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    /// A table (or view…), or `schema.*`.
    Relation(TableRef),
    Column(ColumnRef),
    Schema(String),
    Sequence(ObjectRef),
    Type(ObjectRef),
    Function(FunctionRef),
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

impl Policy {
    /// Lease length for a request: the policy default, or the requested one if within `max_ttl`.
    pub fn lease_ttl(&self, requested: Option<Duration>) -> Result<Duration, String> {
        match requested {
            None => Ok(self.ttl),
            Some(t) if t.is_zero() => Err("ttl must be greater than zero".into()),
            Some(t) if t > self.max_ttl => Err(format!(
                "ttl {} exceeds this policy's max_ttl {}",
                humantime::format_duration(t),
                humantime::format_duration(self.max_ttl)
            )),
            Some(t) => Ok(t),
        }
    }
}

/// `schema.table` or `schema.*` (every table, view, materialized view, foreign and partitioned
/// table in the schema at reconcile time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableRef {
    Table { schema: String, table: String },
    AllInSchema { schema: String },
}

impl TableRef {
    pub fn schema(&self) -> &str {
        match self {
            TableRef::Table { schema, .. } | TableRef::AllInSchema { schema } => schema,
        }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableRef::Table { schema, table } => write!(f, "{schema}.{table}"),
            TableRef::AllInSchema { schema } => write!(f, "{schema}.*"),
        }
    }
}

/// Statement classes used by guardrails and approval rules (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StatementClass {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    CopyProgram,
    Create,
    Alter,
    Drop,
    Truncate,
    Grant,
    Role,
    Function,
    Do,
    Call,
    Load,
    Set,
    Lock,
    Maintenance,
    Listen,
}

impl StatementClass {
    /// Every class, in declaration order (`class as usize` indexes it).
    pub const ALL: [StatementClass; 21] = [
        StatementClass::Select,
        StatementClass::Insert,
        StatementClass::Update,
        StatementClass::Delete,
        StatementClass::Merge,
        StatementClass::Copy,
        StatementClass::CopyProgram,
        StatementClass::Create,
        StatementClass::Alter,
        StatementClass::Drop,
        StatementClass::Truncate,
        StatementClass::Grant,
        StatementClass::Role,
        StatementClass::Function,
        StatementClass::Do,
        StatementClass::Call,
        StatementClass::Load,
        StatementClass::Set,
        StatementClass::Lock,
        StatementClass::Maintenance,
        StatementClass::Listen,
    ];

    /// The name policies use (`COPY_PROGRAM`).
    pub fn name(self) -> &'static str {
        match self {
            StatementClass::Select => "SELECT",
            StatementClass::Insert => "INSERT",
            StatementClass::Update => "UPDATE",
            StatementClass::Delete => "DELETE",
            StatementClass::Merge => "MERGE",
            StatementClass::Copy => "COPY",
            StatementClass::CopyProgram => "COPY_PROGRAM",
            StatementClass::Create => "CREATE",
            StatementClass::Alter => "ALTER",
            StatementClass::Drop => "DROP",
            StatementClass::Truncate => "TRUNCATE",
            StatementClass::Grant => "GRANT",
            StatementClass::Role => "ROLE",
            StatementClass::Function => "FUNCTION",
            StatementClass::Do => "DO",
            StatementClass::Call => "CALL",
            StatementClass::Load => "LOAD",
            StatementClass::Set => "SET",
            StatementClass::Lock => "LOCK",
            StatementClass::Maintenance => "MAINTENANCE",
            StatementClass::Listen => "LISTEN",
        }
    }

    /// Classes refused whatever a policy says: they would let a lease escape its identity or
    /// reach the host.
    pub const ALWAYS_DENIED: [StatementClass; 3] = [
        StatementClass::Role,
        StatementClass::Load,
        StatementClass::CopyProgram,
    ];
}

/// What the statement records of a policy's sessions keep (`[audit]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementAudit {
    /// Record Bind parameter values (default true).
    pub parameters: bool,
    /// Record statements with their literal values replaced by `$n` (default false).
    pub normalize_literals: bool,
}

impl Default for StatementAudit {
    fn default() -> Self {
        StatementAudit {
            parameters: true,
            normalize_literals: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Guardrails {
    pub deny: Vec<StatementClass>,
    pub require_where: Vec<StatementClass>,
    pub deny_functions: Vec<String>,
    /// Export limits per statement; `None` is no limit (`"unlimited"` in the file).
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_statement_bytes: u64,
}

impl Default for Guardrails {
    /// The guardrails of a policy that has no `[guardrails]` section (documented in the README).
    fn default() -> Self {
        use StatementClass::*;
        Guardrails {
            deny: vec![
                Drop,
                Truncate,
                Alter,
                Grant,
                Role,
                Function,
                Do,
                CopyProgram,
                Load,
            ],
            require_where: vec![Update, Delete],
            deny_functions: DEFAULT_DENY_FUNCTIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_rows: Some(100_000),
            max_bytes: Some(256 << 20),
            max_statement_bytes: 1 << 20,
        }
    }
}

/// Functions that reach the server's files, other sessions or other servers.
pub const DEFAULT_DENY_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "lo_import",
    "lo_export",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "set_config",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskMethod {
    Redact,
    Hash,
    Partial,
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    pub schema: String,
    pub table: String,
    pub column: String,
}

#[derive(Debug, Clone)]
pub struct Mask {
    pub columns: Vec<ColumnRef>,
    pub method: MaskMethod,
    /// `partial`: how many trailing characters stay visible.
    pub keep: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    Wait,
    Retry,
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub statements: Vec<StatementClass>,
    pub tables: Vec<TableRef>,
    pub approvers: IdentityMatch,
    pub min_rows: Option<u64>,
    pub mode: ApprovalMode,
    /// How long a request waits for a reviewer.
    pub timeout: Duration,
    /// Retry mode: how long after the approval the statement may be run (once).
    pub window: Duration,
    /// Named webhooks (`[approvals] webhooks` in pgid.toml) told of this rule's requests, and
    /// the line that names them; `None`: every webhook.
    pub webhooks: Option<(Vec<String>, usize)>,
}
