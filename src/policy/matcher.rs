//! Which identities a policy (or a broker admin entry) applies to: `[identity]` in DESIGN §4.
//! Pure: it compares a verified token's claims with the configured ones.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `[identity]`: every key given must match.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityMatch {
    /// Exact issuer URL; absent → any trusted issuer.
    pub issuer: Option<String>,
    /// Exact subject, or a glob with `*` (any run of characters) and `?` (one character).
    pub subject: Option<String>,
    /// claim → expected value. A list claim matches if it contains the value. A claim name that
    /// is not a top-level key is read as a path split on `/` (`kubernetes.io/namespace`).
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimValue>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(untagged)]
pub enum ClaimValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

impl IdentityMatch {
    /// An identity section that names neither a subject nor a claim would match every token of
    /// every trusted issuer: refused so that no policy is broader than its author meant.
    pub fn validate(&self) -> Result<(), String> {
        if self.subject.is_none() && self.claims.is_empty() {
            return Err("[identity] must name a subject or at least one claim".into());
        }
        if let Some(s) = &self.subject {
            if s.is_empty() || s.chars().all(|c| c == '*') {
                return Err(format!(
                    "subject {s:?} would match every token; name the subject"
                ));
            }
        }
        Ok(())
    }

    pub fn matches(
        &self,
        issuer: &str,
        subject: &str,
        claims: &serde_json::Map<String, Value>,
    ) -> bool {
        if let Some(want) = &self.issuer {
            if want.trim_end_matches('/') != issuer.trim_end_matches('/') {
                return false;
            }
        }
        if let Some(pattern) = &self.subject {
            if !glob_matches(pattern, subject) {
                return false;
            }
        }
        self.claims
            .iter()
            .all(|(name, want)| claim(claims, name).is_some_and(|have| value_matches(have, want)))
    }
}

fn claim<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('/');
    let mut v = claims.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

fn value_matches(have: &Value, want: &ClaimValue) -> bool {
    match have {
        Value::Array(items) => items.iter().any(|i| scalar_matches(i, want)),
        other => scalar_matches(other, want),
    }
}

fn scalar_matches(have: &Value, want: &ClaimValue) -> bool {
    match (have, want) {
        (Value::String(h), ClaimValue::Text(w)) => h == w,
        (Value::Number(h), ClaimValue::Integer(w)) => h.as_i64() == Some(*w),
        (Value::Bool(h), ClaimValue::Bool(w)) => h == w,
        _ => false,
    }
}

/// Glob match with `*` and `?`, iterative with backtracking to the last star (linear in practice,
/// no recursion, so a hostile 5,000-character subject costs nothing).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn globs() {
        assert!(glob_matches("ci:*", "ci:deploy"));
        assert!(glob_matches("ci:*", "ci:"));
        assert!(!glob_matches("ci:*", "cd:deploy"));
        assert!(glob_matches("svc:?ob", "svc:job"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exact2"));
        let long = "x".repeat(5000);
        assert!(!glob_matches("*y*y*y*", &long));
    }

    #[test]
    fn every_given_key_must_match() {
        let m = IdentityMatch {
            issuer: Some("https://idp".into()),
            subject: Some("svc:*".into()),
            claims: [("azp".to_string(), ClaimValue::Text("nightly".into()))].into(),
        };
        let c = claims(json!({"azp": "nightly"}));
        assert!(m.matches("https://idp", "svc:a", &c));
        assert!(m.matches("https://idp/", "svc:a", &c));
        assert!(!m.matches("https://other", "svc:a", &c));
        assert!(!m.matches("https://idp", "user:a", &c));
        assert!(!m.matches("https://idp", "svc:a", &claims(json!({"azp": "other"}))));
        assert!(!m.matches("https://idp", "svc:a", &claims(json!({}))));
    }

    #[test]
    fn list_and_nested_claims() {
        let m = IdentityMatch {
            claims: [
                ("groups".to_string(), ClaimValue::Text("dba".into())),
                (
                    "kubernetes.io/namespace".to_string(),
                    ClaimValue::Text("jobs".into()),
                ),
            ]
            .into(),
            ..Default::default()
        };
        let good =
            claims(json!({"groups": ["dev", "dba"], "kubernetes.io": {"namespace": "jobs"}}));
        assert!(m.matches("i", "s", &good));
        let bad = claims(json!({"groups": ["dev"], "kubernetes.io": {"namespace": "jobs"}}));
        assert!(!m.matches("i", "s", &bad));
        // a type mismatch never matches: "1" is not 1
        let n = IdentityMatch {
            claims: [("n".to_string(), ClaimValue::Integer(1))].into(),
            ..Default::default()
        };
        assert!(!n.matches("i", "s", &claims(json!({"n": "1"}))));
        assert!(n.matches("i", "s", &claims(json!({"n": 1}))));
    }

    #[test]
    fn an_identity_that_matches_everything_is_refused() {
        assert!(IdentityMatch::default().validate().is_err());
        let star = IdentityMatch {
            subject: Some("*".into()),
            ..Default::default()
        };
        assert!(star.validate().is_err());
    }
}
