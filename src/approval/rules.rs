//! Matching statements against `[[approval]]` rules, and reviewers against a rule's approvers.
//! Pure.
//!
//! A rule applies to a statement when one of its statement classes occurs anywhere in it
//! (nested in a CTE, behind EXPLAIN ANALYZE, in any statement of a multi-statement string) and
//! — when the rule names tables — the statement names one of them. An unqualified table name
//! matches a rule table of that name in any schema: pgid cannot tell which one `search_path`
//! resolves to, so it asks rather than guesses.

use super::relations::{Made, Relations, Touch};
use crate::policy::{Approval, IdentityMatch, StatementClass, TableRef};
use crate::sql::Statement;

fn table_matches(rule: &TableRef, schema: &str, table: &str) -> bool {
    match rule {
        TableRef::Table {
            schema: s,
            table: t,
        } => t == table && (schema.is_empty() || s == schema),
        TableRef::AllInSchema { schema: s } => schema.is_empty() || s == schema,
    }
}

/// Classes that write rows: a rewrite rule or a foreign key action may turn one into another.
const WRITES: [StatementClass; 5] = [
    StatementClass::Insert,
    StatementClass::Update,
    StatementClass::Delete,
    StatementClass::Merge,
    StatementClass::Truncate,
];

/// The first rule that sends these statements (of one message) for approval. `relations`: what
/// reaches each rule's tables in the catalog (views, rules, partitions, foreign keys — `None`:
/// names as written only); `made`: what the session may have created so far.
pub fn rule_for<'a>(
    statements: &[&Statement],
    rules: &'a [Approval],
    relations: Option<&Relations>,
    made: Made,
) -> Option<&'a Approval> {
    rules.iter().enumerate().find_map(|(i, rule)| {
        let writing_rule = rule.statements.iter().any(|c| WRITES.contains(c));
        statements
            .iter()
            .any(|st| {
                let same_class = rule.statements.iter().any(|c| st.classes.contains(c));
                let writes = st.classes.iter().any(|c| WRITES.contains(c));
                if rule.tables.is_empty() {
                    return same_class;
                }
                st.tables.iter().any(|(s, t)| {
                    let touch =
                        relations.map_or(Touch::No, |rel| rel.touch(i, s, t, made, &st.ctes));
                    (same_class
                        && (rule.tables.iter().any(|r| table_matches(r, s, t))
                            || touch != Touch::No))
                        || (writes && writing_rule && touch == Touch::Converted)
                })
            })
            .then_some(rule)
    })
}

/// Whether a reviewer (issuer, subject, claims) may decide a request of `requester`: they must
/// match the rule's approvers and must not be the requester (no self-approval).
pub fn may_decide(
    approvers: &IdentityMatch,
    requester: (&str, &str),
    reviewer_issuer: &str,
    reviewer_subject: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), &'static str> {
    if requester == (reviewer_issuer, reviewer_subject) || requester.1 == reviewer_subject {
        return Err("a request cannot be decided by the identity that made it");
    }
    if !approvers.matches(reviewer_issuer, reviewer_subject, claims) {
        return Err("the reviewer does not match the rule's approvers");
    }
    Ok(())
}

/// What a retry-mode approval is for: SHA-256 over the statement's canonical text
/// ([`crate::sql::canonical`]) and its exact Bind parameters (format, NULL or length, bytes), hex.
pub fn fingerprint(canonical: &str, parameters: &[(bool, Option<&[u8]>)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((canonical.len() as u64).to_be_bytes());
    h.update(canonical.as_bytes());
    h.update((parameters.len() as u64).to_be_bytes());
    for (binary, value) in parameters {
        h.update([*binary as u8]);
        match value {
            None => h.update([0xff]),
            Some(v) => {
                h.update([0]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
        }
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_policy;
    use crate::sql::{analyze, Dialect};

    fn rules() -> Vec<Approval> {
        let text = r#"
name = "p"
database = "app"
ttl = "5m"
[identity]
subject = "agent:x"
[[approval]]
statements = ["DELETE", "UPDATE"]
tables = ["crm.orders"]
approvers = { claims = { groups = "dba" } }
[[approval]]
statements = ["TRUNCATE"]
approvers = { subject = "ops:*" }
"#;
        parse_policy(std::path::Path::new("p.toml"), text)
            .unwrap()
            .approvals
    }

    fn rule(sql: &str) -> Option<usize> {
        let rules = rules();
        let a = analyze(sql, Dialect::default(), 1 << 20).unwrap();
        rule_for(
            &a.statements.iter().collect::<Vec<_>>(),
            &rules,
            None,
            Made::default(),
        )
        .map(|r| rules.iter().position(|x| std::ptr::eq(x, r)).unwrap())
    }

    #[test]
    fn statements_match_by_class_and_table_wherever_they_occur() {
        assert_eq!(rule("DELETE FROM crm.orders WHERE id = 1"), Some(0));
        assert_eq!(rule("delete from orders where id = 1"), Some(0));
        assert_eq!(
            rule("UPDATE crm.orders SET status = 'x' WHERE id = 1"),
            Some(0)
        );
        assert_eq!(
            rule("WITH d AS (DELETE FROM crm.orders WHERE id = 1 RETURNING id) SELECT * FROM d"),
            Some(0)
        );
        assert_eq!(
            rule("SELECT 1; DELETE FROM crm.orders WHERE id = 2"),
            Some(0)
        );
        assert_eq!(rule("TRUNCATE crm.tickets"), Some(1));
        assert_eq!(rule("DELETE FROM crm.tickets WHERE id = 1"), None);
        assert_eq!(rule("SELECT * FROM crm.orders"), None);
        assert_eq!(rule("DELETE FROM other.orders WHERE id = 1"), None);
    }

    #[test]
    fn reviewers_need_the_claims_and_cannot_approve_themselves() {
        let rules = rules();
        let claims = |groups: &[&str]| {
            serde_json::json!({ "groups": groups })
                .as_object()
                .unwrap()
                .clone()
        };
        let who = ("https://i", "agent:x");
        assert!(may_decide(
            &rules[0].approvers,
            who,
            "https://i",
            "alice",
            &claims(&["dba"])
        )
        .is_ok());
        assert!(may_decide(
            &rules[0].approvers,
            who,
            "https://i",
            "bob",
            &claims(&["dev"])
        )
        .is_err());
        assert!(
            may_decide(
                &rules[0].approvers,
                who,
                "https://i",
                "agent:x",
                &claims(&["dba"])
            )
            .is_err(),
            "self-approval"
        );
        assert!(may_decide(
            &rules[1].approvers,
            who,
            "https://i",
            "ops:carol",
            &claims(&[])
        )
        .is_ok());
    }

    #[test]
    fn fingerprints_tell_statements_and_parameters_apart() {
        let f = fingerprint;
        let one = f("DELETE FROM t WHERE id = $1", &[(false, Some(b"7"))]);
        assert_eq!(
            one,
            f("DELETE FROM t WHERE id = $1", &[(false, Some(b"7"))])
        );
        assert_ne!(
            one,
            f("DELETE FROM t WHERE id = $1", &[(false, Some(b"8"))])
        );
        assert_ne!(one, f("DELETE FROM t WHERE id = $1", &[(true, Some(b"7"))]));
        assert_ne!(one, f("DELETE FROM t WHERE id = $1", &[(false, None)]));
        assert_ne!(one, f("DELETE FROM t WHERE id = $1", &[]));
        assert_ne!(
            f("a", &[(false, Some(b"bc"))]),
            f("ab", &[(false, Some(b"c"))])
        );
        assert_ne!(
            f("x", &[(false, Some(b"")), (false, None)]),
            f("x", &[(false, None), (false, Some(b""))])
        );
    }
}
