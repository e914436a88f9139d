//! The decision on one analysed statement string under a policy's `[guardrails]`: allow, or deny
//! with the rule that decided and a reason a client may read. Pure.
//!
//! Order: pgid's own schema; SQL pgid cannot read (given to a function as a string that is not a
//! constant, or a relation or cursor named by a value); what is refused whatever the policy says
//! (identity escapes — SET ROLE,
//! SESSION AUTHORIZATION, set_config of either, set_config of a setting pgid cannot name — LOAD,
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
    if st.gives_ownership {
        return deny(
            "identity",
            "giving an object to another role (OWNER TO, AUTHORIZATION, ALTER DEFAULT PRIVILEGES \
             FOR ROLE) is never allowed through pgid: what a lease creates is dropped with it",
        );
    }
    if let Some(why) = st.unjudgeable.first() {
        return deny("sql_text", why.clone());
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
    // set_config('role', …) is a ROLE statement already; a name that is no constant could be it.
    if st.settings.iter().any(|s| s.name.is_none()) {
        return deny(
            "identity",
            "set_config with a setting name that is not a constant string is never allowed \
             through pgid: it cannot tell which setting it changes",
        );
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
    if let (Some(language), false) = (&st.opaque_code, rules.deny_functions.is_empty()) {
        return deny(
            "deny_functions",
            format!(
                "code in language {language} can call functions pgid cannot see, and this policy \
                 denies functions; write the body in LANGUAGE sql, which pgid reads"
            ),
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

    fn rule_under(sql: &str, rules: &Guardrails) -> &'static str {
        let a = analyze(sql, Dialect::default(), 1 << 20).unwrap();
        match check(&a, rules, &|_| None) {
            Verdict::Deny { rule, .. } => rule,
            Verdict::Allow => "allow",
        }
    }

    #[test]
    fn actions_sql_given_as_text_and_code_are_judged_by_meaning() {
        let d = Guardrails::default();
        for (sql, want) in [
            ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "require_where"),
            ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.gone THEN DELETE", "allow"),
            ("INSERT INTO t SELECT * FROM t ON CONFLICT (id) DO UPDATE SET a = 0", "require_where"),
            ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 0", "allow"),
            ("TRUNCATE t", "deny"),
            ("SELECT query_to_xml('SELECT pg_terminate_backend(1)', true, false, '')", "deny_functions"),
            ("SELECT query_to_xml('SELECT set_config(''role'', ''postgres'', false)', true, false, '')", "identity"),
            ("SELECT query_to_xml('DELETE FROM t RETURNING 1', true, false, '')", "require_where"),
            ("SELECT query_to_xml('SELECT * FROM pgid.leases', true, false, '')", "pgid_schema"),
            ("SELECT query_to_xml('SELECT 1', true, false, '')", "allow"),
            ("SELECT query_to_xml($1, true, false, '')", "sql_text"),
            ("SELECT table_to_xml('t', true, false, '')", "sql_text"),
            ("CREATE OPERATOR === (FUNCTION = pg_terminate_backend, LEFTARG = int)", "deny"),
        ] {
            assert_eq!(rule_under(sql, &d), want, "{sql}");
        }
        // A policy that allows code: what the code calls is still judged.
        let code = Guardrails {
            deny: vec![],
            ..Guardrails::default()
        };
        for (sql, want) in [
            ("CREATE OPERATOR === (FUNCTION = pg_terminate_backend, LEFTARG = int)", "deny_functions"),
            ("CREATE AGGREGATE a (int) (SFUNC = pg_catalog.pg_cancel_backend, STYPE = int)", "deny_functions"),
            ("CREATE CAST (text AS int) WITH FUNCTION pg_read_file(text)", "deny_functions"),
            ("CREATE FUNCTION f(a int) RETURNS bool LANGUAGE sql AS 'SELECT pg_terminate_backend(a)'", "deny_functions"),
            ("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END'", "deny_functions"),
            ("DO 'BEGIN END'", "deny_functions"),
            ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "allow"),
            ("CREATE OPERATOR === (FUNCTION = int4eq, LEFTARG = int, RIGHTARG = int)", "allow"),
        ] {
            assert_eq!(rule_under(sql, &code), want, "{sql}");
        }
        let no_denied_functions = Guardrails {
            deny: vec![],
            deny_functions: vec![],
            ..Guardrails::default()
        };
        assert_eq!(rule_under("DO 'BEGIN END'", &no_denied_functions), "allow");
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

    /// A policy that denies no class and no function: what is left is refused whatever it says.
    fn permissive(sql: &str) -> Verdict {
        let a = analyze(sql, Dialect::default(), 1 << 20).unwrap();
        let rules = Guardrails {
            deny: Vec::new(),
            require_where: Vec::new(),
            deny_functions: Vec::new(),
            ..Guardrails::default()
        };
        check(&a, &rules, &|_| None)
    }

    #[test]
    fn identity_settings_are_refused_however_they_are_written() {
        for sql in [
            "SET ROLE postgres",
            "SET \"Role\" TO postgres",
            "SET \"ROLE\" = postgres",
            "SET session_authorization = postgres",
            "SET SESSION AUTHORIZATION DEFAULT",
            "RESET ROLE",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT set_config('ROLE', 'postgres', true)",
            "SELECT pg_catalog.set_config('Session_Authorization', 'postgres', false)",
            "SELECT 1 FROM t WHERE set_config('role', current_user, false) IS NOT NULL",
            "SELECT * FROM set_config('role', 'x', false)",
        ] {
            assert_eq!(
                permissive(sql),
                deny(
                    "identity",
                    "changing roles or session authorization is never allowed through pgid"
                ),
                "{sql}"
            );
        }
    }

    #[test]
    fn set_config_of_a_setting_pgid_cannot_name_is_refused() {
        for sql in [
            "SELECT set_config(name, 'x', false) FROM settings",
            "SELECT set_config('ro' || 'le', 'x', false)",
            "SELECT set_config(NULL, 'x', false)",
            "SELECT set_config($1, 'x', false)",
            "SELECT 1; SELECT public.set_config(lower('ROLE'), 'x', true)",
        ] {
            let v = permissive(sql);
            assert_eq!(
                v.message().unwrap(),
                "pgid: identity: set_config with a setting name that is not a constant string is \
                 never allowed through pgid: it cannot tell which setting it changes",
                "{sql}"
            );
        }
        // Other settings are the policy's to judge: the default one denies set_config.
        assert_eq!(
            permissive("SELECT set_config('search_path', 'x', false)"),
            Verdict::Allow
        );
        assert_eq!(
            permissive("SELECT set_config('search_path', current_user, false)"),
            Verdict::Allow
        );
        assert_eq!(
            rule("SELECT set_config('search_path', 'x', false)"),
            "deny_functions"
        );
        assert_eq!(rule("SET search_path = x"), "allow");
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
