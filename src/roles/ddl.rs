//! SQL text for role management. Identifiers always go through [`ident`] (Postgres's own quoting
//! rules, from `postgres-protocol`); literals through [`literal`]. Only values pgid generated or
//! validated reach these builders — never text from a token.

use chrono::{DateTime, SecondsFormat, Utc};
use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::policy::{ObjectKind, Privilege};

pub fn ident(name: &str) -> String {
    escape_identifier(name)
}

pub fn literal(text: &str) -> String {
    escape_literal(text)
}

fn table(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

fn privileges(list: &[Privilege]) -> String {
    list.iter()
        .map(|p| p.as_sql())
        .collect::<Vec<_>>()
        .join(", ")
}

fn timestamp(t: DateTime<Utc>) -> String {
    literal(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

pub fn create_nologin_role(role: &str) -> String {
    format!("CREATE ROLE {} NOLOGIN", ident(role))
}

/// A policy's group role, a member of its deployment's group marker from the start.
pub fn create_group_role(role: &str, marker: &str) -> String {
    format!(
        "CREATE ROLE {} NOLOGIN IN ROLE {}",
        ident(role),
        ident(marker)
    )
}

/// Makes `member` a member of `role`.
pub fn grant_membership(role: &str, member: &str) -> String {
    format!("GRANT {} TO {}", ident(role), ident(member))
}

pub struct LeaseRole<'a> {
    pub name: &'a str,
    pub groups: &'a [&'a str],
    pub valid_until: DateTime<Utc>,
    pub connection_limit: i32,
    /// A SCRAM-SHA-256 verifier: the plaintext password never reaches the server.
    pub verifier: &'a str,
}

pub fn create_lease_role(r: &LeaseRole<'_>) -> String {
    let groups: Vec<String> = r.groups.iter().map(|g| ident(g)).collect();
    format!(
        "CREATE ROLE {} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         CONNECTION LIMIT {} VALID UNTIL {} PASSWORD {} IN ROLE {}",
        ident(r.name),
        r.connection_limit,
        timestamp(r.valid_until),
        literal(r.verifier),
        groups.join(", ")
    )
}

pub fn comment_on_role(role: &str, comment: &str) -> String {
    format!("COMMENT ON ROLE {} IS {}", ident(role), literal(comment))
}

pub fn set_valid_until(role: &str, until: DateTime<Utc>) -> String {
    format!(
        "ALTER ROLE {} VALID UNTIL {}",
        ident(role),
        timestamp(until)
    )
}

pub fn nologin(role: &str) -> String {
    format!("ALTER ROLE {} NOLOGIN", ident(role))
}

/// Drops everything the role owns in the current database — and, `CASCADE`, what other roles
/// built on it — and revokes what was granted to it. Needs the privileges of the role.
pub fn drop_owned(role: &str) -> String {
    format!("DROP OWNED BY {} CASCADE", ident(role))
}

pub fn drop_role(role: &str) -> String {
    format!("DROP ROLE IF EXISTS {}", ident(role))
}

/// Gives the session's role the privileges of `role` (DROP OWNED needs them: CREATEROLE is not
/// enough on PostgreSQL 15, and from 16 on the creator holds ADMIN OPTION on the roles it made).
pub fn grant_role_to_current_user(role: &str) -> String {
    format!("GRANT {} TO CURRENT_USER", ident(role))
}

pub fn revoke_role_from_current_user(role: &str) -> String {
    format!("REVOKE {} FROM CURRENT_USER", ident(role))
}

/// An object privileges are granted on: its kind and its name as SQL, built here from quoted
/// identifiers only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Object {
    kind: ObjectKind,
    sql: String,
}

impl Object {
    pub fn table(schema: &str, name: &str) -> Object {
        Object::qualified(ObjectKind::Table, schema, name)
    }

    pub fn sequence(schema: &str, name: &str) -> Object {
        Object::qualified(ObjectKind::Sequence, schema, name)
    }

    pub fn data_type(schema: &str, name: &str) -> Object {
        Object::qualified(ObjectKind::Type, schema, name)
    }

    pub fn schema(name: &str) -> Object {
        Object {
            kind: ObjectKind::Schema,
            sql: ident(name),
        }
    }

    pub fn database(name: &str) -> Object {
        Object {
            kind: ObjectKind::Database,
            sql: ident(name),
        }
    }

    /// A function, procedure or aggregate by its argument types, each given as (schema, type
    /// name) from the catalog: `"crm"."order_total"("pg_catalog"."int4")` means exactly one
    /// routine whatever the search_path.
    pub fn routine(schema: &str, name: &str, args: &[(String, String)]) -> Object {
        let args: Vec<String> = args.iter().map(|(s, t)| table(s, t)).collect();
        Object {
            kind: ObjectKind::Function,
            sql: format!("{}({})", table(schema, name), args.join(", ")),
        }
    }

    fn qualified(kind: ObjectKind, schema: &str, name: &str) -> Object {
        Object {
            kind,
            sql: table(schema, name),
        }
    }

    pub fn kind(&self) -> ObjectKind {
        self.kind
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    fn keyword(&self) -> &'static str {
        match self.kind {
            ObjectKind::Table => "TABLE",
            ObjectKind::Sequence => "SEQUENCE",
            ObjectKind::Schema => "SCHEMA",
            ObjectKind::Database => "DATABASE",
            ObjectKind::Type => "TYPE",
            // ROUTINE: functions, procedures and aggregates alike.
            ObjectKind::Function => "ROUTINE",
        }
    }
}

pub fn grant(p: &[Privilege], object: &Object, role: &str) -> String {
    format!(
        "GRANT {} ON {} {} TO {}",
        privileges(p),
        object.keyword(),
        object.sql,
        ident(role)
    )
}

pub fn revoke(p: &[Privilege], object: &Object, role: &str) -> String {
    format!(
        "REVOKE {} ON {} {} FROM {}",
        privileges(p),
        object.keyword(),
        object.sql,
        ident(role)
    )
}

/// Role comments show the subject for people reading `\du+`; characters outside a safe set are
/// replaced so the comment is plain text whatever the token said (the exact subject is in
/// `pgid.leases`).
pub fn printable_subject(subject: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = subject
        .chars()
        .take(MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || " :._@/+=-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if subject.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(
            create_group_role("pgid_d_prod_p_a\"b", "pgid_groups_prod"),
            "CREATE ROLE \"pgid_d_prod_p_a\"\"b\" NOLOGIN IN ROLE \"pgid_groups_prod\""
        );
        assert_eq!(
            grant_membership("pgid_groups", "pgid_p_x"),
            "GRANT \"pgid_groups\" TO \"pgid_p_x\""
        );
        assert_eq!(
            create_nologin_role("pgid_p_nightly-report"),
            "CREATE ROLE \"pgid_p_nightly-report\" NOLOGIN"
        );
        assert_eq!(
            grant(
                &[Privilege::Select, Privilege::Insert],
                &Object::table("My\"Schema", "t"),
                "r"
            ),
            "GRANT SELECT, INSERT ON TABLE \"My\"\"Schema\".\"t\" TO \"r\""
        );
        assert_eq!(
            revoke(
                &[Privilege::Execute],
                &Object::routine(
                    "crm",
                    "f\"(",
                    &[
                        ("pg_catalog".into(), "int4".into()),
                        ("crm".into(), "_mood".into())
                    ]
                ),
                "r"
            ),
            "REVOKE EXECUTE ON ROUTINE \"crm\".\"f\"\"(\"(\"pg_catalog\".\"int4\", \"crm\".\"_mood\") FROM \"r\""
        );
        assert_eq!(
            grant(
                &[Privilege::Create, Privilege::Temporary],
                &Object::database("app"),
                "r"
            ),
            "GRANT CREATE, TEMPORARY ON DATABASE \"app\" TO \"r\""
        );
        assert_eq!(
            grant_role_to_current_user("pgid_x"),
            "GRANT \"pgid_x\" TO CURRENT_USER"
        );
        assert_eq!(drop_owned("a\"b"), "DROP OWNED BY \"a\"\"b\" CASCADE");
        assert_eq!(
            drop_role("x\"; DROP TABLE y; --"),
            "DROP ROLE IF EXISTS \"x\"\"; DROP TABLE y; --\""
        );
    }

    #[test]
    fn lease_role_statement() {
        let t = Utc.with_ymd_and_hms(2026, 11, 28, 4, 0, 0).unwrap();
        let sql = create_lease_role(&LeaseRole {
            name: "pgid_r_abc",
            groups: &["pgid_p_r", "pgid_lease"],
            valid_until: t,
            connection_limit: 4,
            verifier: "SCRAM-SHA-256$4096:c2FsdA==$a:b",
        });
        assert_eq!(
            sql,
            "CREATE ROLE \"pgid_r_abc\" WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS CONNECTION LIMIT 4 VALID UNTIL '2026-11-28T04:00:00Z' \
             PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b' IN ROLE \"pgid_p_r\", \"pgid_lease\""
        );
    }

    #[test]
    fn subjects_become_plain_text() {
        assert_eq!(printable_subject("svc:job@x"), "svc:job@x");
        assert_eq!(printable_subject("a'b\\c\0d;é"), "a?b?c?d??");
        let long = printable_subject(&"x".repeat(5000));
        assert_eq!(long.len(), 203);
        assert!(!comment_on_role("r", &printable_subject("'); DROP")).contains("');"));
    }
}
