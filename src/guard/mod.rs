//! The decision on one analysed statement string under a policy's `[guardrails]`: allow, or deny
//! with the rule that decided and a reason a client may read. Pure.
//!
//! Order: pgid's own schema; classes refused whatever the policy says (identity escapes, LOAD,
//! COPY to/from programs and server files); the policy's denied classes; WHERE required on
//! UPDATE/DELETE; denied functions; EXECUTE of prepared statements, judged by what they prepared.

use crate::policy::{Guardrails, StatementClass};
use crate::sql::{Analysis, Statement};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny { rule: &'static str, reason: String },
}

impl Verdict {
    /// `pgid: <rule>: <reason>`, the client-facing message (`pgid: approval <reason>` for
    /// approval outcomes: `approval denied by <reviewer>: <comment>`, `approval timed out`).
    pub fn message(&self) -> Option<String> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny {
                rule: "approval",
                reason,
            } => Some(format!("pgid: approval {reason}")),
            Verdict::Deny { rule, reason } => Some(format!("pgid: {rule}: {reason}")),
        }
    }
}

fn deny(rule: &'static str, reason: impl Into<String>) -> Verdict {
    Verdict::Deny {
        rule,
        reason: reason.into(),
    }
}

fn class_name(c: StatementClass) -> String {
    let debug = format!("{c:?}");
    // CopyProgram → COPY_PROGRAM
    let mut out = String::new();
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// Judges every statement of `analysis`; `prepared` looks up what an SQL-level or protocol-level
/// prepared statement of this session contains (None: pgid never saw it prepared).
pub fn check(
    analysis: &Analysis,
    rules: &Guardrails,
    prepared: &dyn Fn(&str) -> Option<Statement>,
) -> Verdict {
    for st in &analysis.statements {
        let v = check_statement(st, rules);
        if v != Verdict::Allow {
            return v;
        }
        for name in &st.executes {
            match prepared(name) {
                Some(inner) => {
                    let v = check_statement(&inner, rules);
                    if v != Verdict::Allow {
                        return v;
                    }
                }
                None => {
                    return deny(
                        "prepared",
                        format!("prepared statement \"{name}\" was not prepared through pgid"),
                    )
                }
            }
        }
    }
    Verdict::Allow
}

fn check_statement(st: &Statement, rules: &Guardrails) -> Verdict {
    if st.touches_pgid {
        return deny("pgid_schema", "pgid's own schema is off limits");
    }
    for c in StatementClass::ALWAYS_DENIED {
        if st.classes.contains(&c) {
            let why = match c {
                StatementClass::Role => {
                    "changing roles or session authorization is never allowed through pgid"
                }
                StatementClass::Load => "LOAD is never allowed through pgid",
                _ => "COPY to or from a program or server file is never allowed through pgid",
            };
            return deny("identity", why);
        }
    }
    if let Some(c) = rules.deny.iter().find(|c| st.classes.contains(c)) {
        return deny(
            "deny",
            format!(
                "{} statements are not allowed by this policy",
                class_name(*c)
            ),
        );
    }
    if let Some(c) = rules
        .require_where
        .iter()
        .find(|c| st.missing_where.contains(c))
    {
        return deny(
            "require_where",
            format!("{} without a WHERE clause is not allowed", class_name(*c)),
        );
    }
    for f in &st.functions {
        let bare = f.rsplit('.').next().unwrap_or(f);
        if rules.deny_functions.iter().any(|d| d == f || d == bare) {
            return deny("deny_functions", format!("function {bare} is not allowed"));
        }
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{analyze, Dialect};

    fn judge(sql: &str) -> Verdict {
        let a = analyze(sql, Dialect::default(), 1 << 20).unwrap();
        check(&a, &Guardrails::default(), &|name| {
            (name == "safe").then(|| {
                analyze("SELECT 1", Dialect::default(), 100)
                    .unwrap()
                    .statements[0]
                    .clone()
            })
        })
    }

    fn rule(sql: &str) -> &'static str {
        match judge(sql) {
            Verdict::Deny { rule, .. } => rule,
            Verdict::Allow => "allow",
        }
    }

    #[test]
    fn default_guardrails() {
        assert_eq!(rule("SELECT * FROM t"), "allow");
        assert_eq!(rule("UPDATE t SET a = 1 WHERE id = 2"), "allow");
        assert_eq!(rule("DELETE FROM t"), "require_where");
        assert_eq!(
            rule("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x"),
            "require_where"
        );
        assert_eq!(rule("DROP TABLE t"), "deny");
        assert_eq!(rule("SELECT 1; TRUNCATE t"), "deny");
        assert_eq!(rule("EXPLAIN ANALYZE DELETE FROM t"), "require_where");
        assert_eq!(rule("SET ROLE postgres"), "identity");
        assert_eq!(rule("COPY t FROM PROGRAM 'curl x'"), "identity");
        assert_eq!(rule("LOAD 'evil'"), "identity");
        assert_eq!(rule("SELECT pg_read_file('/etc/passwd')"), "deny_functions");
        assert_eq!(
            rule("SELECT PG_CATALOG.pg_read_file('/etc/passwd')"),
            "deny_functions"
        );
        assert_eq!(rule("SELECT * FROM pgid.leases"), "pgid_schema");
        assert_eq!(rule("EXECUTE safe"), "allow");
        assert_eq!(rule("EXECUTE unknown"), "prepared");
        assert_eq!(rule("SELECT 'DROP TABLE t', \"delete\" FROM t"), "allow");
    }

    #[test]
    fn messages_name_the_rule() {
        assert_eq!(
            judge("DELETE FROM t").message().unwrap(),
            "pgid: require_where: DELETE without a WHERE clause is not allowed"
        );
        assert_eq!(
            judge("DROP TABLE t").message().unwrap(),
            "pgid: deny: DROP statements are not allowed by this policy"
        );
        assert_eq!(class_name(StatementClass::CopyProgram), "COPY_PROGRAM");
    }
}
