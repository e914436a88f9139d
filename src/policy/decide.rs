//! Identity + request → the one policy that applies.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::load::PolicySet;
use super::model::Policy;

/// What the caller asked for, beyond its identity.
#[derive(Debug, Default, Clone)]
pub struct Request<'a> {
    pub database: Option<&'a str>,
    pub policy: Option<&'a str>,
}

#[derive(Debug)]
pub enum Selection {
    One(Arc<Policy>),
    None,
    /// Several policies match and the request did not say which: the names, sorted.
    Ambiguous(Vec<String>),
}

pub fn select(
    set: &PolicySet,
    issuer: &str,
    subject: &str,
    claims: &Map<String, Value>,
    request: &Request<'_>,
) -> Selection {
    let matching: Vec<&Arc<Policy>> = set
        .iter()
        .filter(|p| request.database.is_none_or(|d| d == p.database))
        .filter(|p| request.policy.is_none_or(|n| n == p.name))
        .filter(|p| p.identity.matches(issuer, subject, claims))
        .collect();
    match matching.as_slice() {
        [] => Selection::None,
        [one] => Selection::One(Arc::clone(one)),
        many => Selection::Ambiguous(many.iter().map(|p| p.name.clone()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_policy;
    use std::path::Path;

    fn policy(name: &str, db: &str, subject: &str) -> Policy {
        let text = format!(
            "name = \"{name}\"\ndatabase = \"{db}\"\nttl = \"5m\"\n[identity]\nsubject = \"{subject}\"\n"
        );
        parse_policy(Path::new("x.toml"), &text).unwrap()
    }

    #[test]
    fn exactly_one_policy_must_match() {
        let set = PolicySet::new(vec![
            policy("a", "app", "svc:*"),
            policy("b", "app", "svc:report"),
            policy("c", "other", "svc:report"),
        ]);
        let none = Map::new();
        let pick =
            |subject: &str, req: Request<'_>| select(&set, "https://i", subject, &none, &req);
        assert!(matches!(pick("svc:x", Request::default()), Selection::One(p) if p.name == "a"));
        assert!(matches!(
            pick("user:x", Request::default()),
            Selection::None
        ));
        match pick("svc:report", Request::default()) {
            Selection::Ambiguous(names) => assert_eq!(names, ["a", "b", "c"]),
            other => panic!("{other:?}"),
        }
        let by_db = Request {
            database: Some("other"),
            policy: None,
        };
        assert!(matches!(pick("svc:report", by_db), Selection::One(p) if p.name == "c"));
        let by_name = Request {
            database: None,
            policy: Some("b"),
        };
        assert!(matches!(pick("svc:report", by_name), Selection::One(p) if p.name == "b"));
        // naming a policy the identity does not match gives nothing, not that policy
        let wrong = Request {
            database: None,
            policy: Some("b"),
        };
        assert!(matches!(pick("svc:x", wrong), Selection::None));
    }
}
