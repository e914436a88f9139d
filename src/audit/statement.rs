//! Statement records (DESIGN §8): a `statement` record with the decision, written and durable
//! before the statement is forwarded, and a `statement.outcome` record after it completes (rows,
//! duration, SQLSTATE), linked by the session id and the statement's `seq` within the session.
//! Refused statements have only the decision record. Both carry the session's identity fields,
//! serialised once per session.

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::policy::StatementClass;
use crate::store::LeaseRow;

/// Bind parameter values longer than this are cut (the record says how long they were).
pub const MAX_PARAMETER_BYTES: usize = 4096;

/// The identity part every statement record of a session repeats, as JSON object members.
pub struct SessionRecords {
    members: String,
}

#[derive(Serialize)]
struct Identity<'a> {
    lease_id: Uuid,
    subject: &'a str,
    issuer: &'a str,
    policy: &'a str,
    role: &'a str,
    database: &'a str,
    client_addr: &'a str,
    session_id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Simple,
    Extended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    Allow,
    Deny,
}

#[derive(Serialize)]
pub struct Decision<'a> {
    pub seq: u64,
    pub protocol: Protocol,
    pub statement: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<&'a [Option<String>]>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub classes: &'a [StatementClass],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tables: &'a [String],
    /// Masked columns the statement reads (their values reach the client masked).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub masked: &'a [String],
    /// Prepared statements it runs by name (SQL `EXECUTE`): what ran, besides its own text.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub prepared: &'a [Prepared<'a>],
    pub decision: DecisionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<&'a str>,
}

/// A prepared statement a statement runs by name.
#[derive(Serialize)]
pub struct Prepared<'a> {
    pub name: &'a str,
    pub statement: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Result {
    /// Completed (CommandComplete, EmptyQueryResponse) or suspended at a row limit.
    Ok,
    Suspended,
    Error,
    /// Skipped by the server after an earlier error in the same pipeline.
    NotRun,
}

#[derive(Serialize)]
pub struct Outcome<'a> {
    pub seq: u64,
    pub result: Result,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<&'a str>,
}

impl SessionRecords {
    pub fn new(lease: &LeaseRow, session_id: Uuid, client_addr: &str) -> SessionRecords {
        let identity = serde_json::to_string(&Identity {
            lease_id: lease.id,
            subject: &lease.subject,
            issuer: &lease.issuer,
            policy: &lease.policy,
            role: &lease.role_name,
            database: &lease.database,
            client_addr,
            session_id,
        })
        .unwrap_or_else(|_| "{}".into());
        SessionRecords {
            members: identity[1..identity.len() - 1].to_string(),
        }
    }

    fn assemble(&self, kind: &str, body: std::result::Result<String, serde_json::Error>) -> String {
        let body = body.unwrap_or_else(|_| "{}".into());
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut out = String::with_capacity(64 + self.members.len() + body.len());
        out.push_str("{\"time\":\"");
        out.push_str(&time);
        out.push_str("\",\"kind\":\"");
        out.push_str(kind);
        out.push_str("\",");
        out.push_str(&self.members);
        if body.len() > 2 {
            out.push(',');
            out.push_str(&body[1..]);
        } else {
            out.push('}');
        }
        out
    }

    pub fn decision(&self, d: &Decision) -> String {
        self.assemble("statement", serde_json::to_string(d))
    }

    pub fn outcome(&self, o: &Outcome) -> String {
        self.assemble("statement.outcome", serde_json::to_string(o))
    }
}

/// A Bind parameter as the record shows it: text format as is; binary format decoded when its
/// type (`type_oid`, 0 if unknown) is a common one, else as `\x` hex; cut at
/// [`MAX_PARAMETER_BYTES`].
pub fn parameter(value: Option<&[u8]>, binary: bool, type_oid: u32) -> Option<String> {
    let v = value?;
    let shown = &v[..v.len().min(MAX_PARAMETER_BYTES)];
    let mut s = if binary {
        decode_binary(shown, type_oid).unwrap_or_else(|| format!("\\x{}", hex::encode(shown)))
    } else {
        String::from_utf8_lossy(shown).into_owned()
    };
    if v.len() > MAX_PARAMETER_BYTES {
        s.push_str(&format!("…[{} bytes]", v.len()));
    }
    Some(s)
}

/// The binary wire format of a few common types, as their text form.
fn decode_binary(v: &[u8], type_oid: u32) -> Option<String> {
    let int = |n: usize| -> Option<i64> {
        (v.len() == n).then(|| {
            let mut b = [0u8; 8];
            b[8 - n..].copy_from_slice(v);
            let x = i64::from_be_bytes(b);
            // sign-extend
            let shift = 64 - 8 * n as u32;
            (x << shift) >> shift
        })
    };
    let text = || std::str::from_utf8(v).ok().map(str::to_string);
    match type_oid {
        16 => (v.len() == 1).then(|| if v[0] != 0 { "t" } else { "f" }.to_string()),
        21 => int(2).map(|x| x.to_string()),
        23 => int(4).map(|x| x.to_string()),
        20 => int(8).map(|x| x.to_string()),
        26 => int(4).map(|x| (x as u32).to_string()),
        700 => (v.len() == 4).then(|| f32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        701 => <[u8; 8]>::try_from(v)
            .ok()
            .map(|b| f64::from_be_bytes(b).to_string()),
        // text, varchar, bpchar, name, json, unknown
        25 | 1043 | 1042 | 19 | 114 | 705 => text(),
        3802 => v
            .split_first()
            .filter(|(version, _)| **version == 1)
            .and_then(|(_, rest)| std::str::from_utf8(rest).ok().map(str::to_string)),
        2950 => <[u8; 16]>::try_from(v)
            .ok()
            .map(|b| Uuid::from_bytes(b).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> LeaseRow {
        LeaseRow {
            role_name: "pgid_l_x".into(),
            subject: "agent \"7\"".into(),
            ..crate::store::test_lease()
        }
    }

    #[test]
    fn records_are_json_objects_with_identity_decision_and_outcome() {
        let s = SessionRecords::new(&lease(), Uuid::nil(), "127.0.0.1:5");
        let params = [Some("1".to_string()), None];
        let d = s.decision(&Decision {
            seq: 3,
            protocol: Protocol::Extended,
            statement: "SELECT $1, 'x\"y'",
            parameters: Some(&params),
            classes: &[StatementClass::Select],
            tables: &["crm.customers".into()],
            masked: &[],
            prepared: &[],
            decision: DecisionKind::Allow,
            rule: None,
            reason: None,
            sqlstate: None,
        });
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["kind"], "statement");
        assert_eq!(v["subject"], "agent \"7\"");
        assert_eq!(v["statement"], "SELECT $1, 'x\"y'");
        assert_eq!(v["parameters"], serde_json::json!(["1", null]));
        assert_eq!(v["classes"], serde_json::json!(["SELECT"]));
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["seq"], 3);
        let o = s.outcome(&Outcome {
            seq: 3,
            result: Result::Error,
            rows: None,
            duration_ms: 1.5,
            sqlstate: Some("23505"),
        });
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        assert_eq!(v["kind"], "statement.outcome");
        assert_eq!(v["result"], "error");
        assert_eq!(v["sqlstate"], "23505");
        assert!(v.get("statement").is_none());
    }

    #[test]
    fn parameters_show_binary_as_hex_and_are_cut() {
        assert_eq!(parameter(None, false, 0), None);
        assert_eq!(parameter(Some(b"\x01\xff"), true, 0).unwrap(), "\\x01ff");
        assert_eq!(parameter(Some(b"\x01\xff"), true, 17).unwrap(), "\\x01ff");
        assert_eq!(parameter(Some(&[0, 0, 0, 7]), true, 23).unwrap(), "7");
        assert_eq!(
            parameter(Some(&(-2i64).to_be_bytes()), true, 20).unwrap(),
            "-2"
        );
        assert_eq!(
            parameter(Some(&(-3i16).to_be_bytes()), true, 21).unwrap(),
            "-3"
        );
        assert_eq!(
            parameter(Some(&1.5f64.to_be_bytes()), true, 701).unwrap(),
            "1.5"
        );
        assert_eq!(parameter(Some(b"abc"), true, 25).unwrap(), "abc");
        assert_eq!(parameter(Some(b"\x01{}"), true, 3802).unwrap(), "{}");
        assert_eq!(parameter(Some(&[1]), true, 16).unwrap(), "t");
        // A value that does not fit its type is shown raw.
        assert_eq!(parameter(Some(&[1, 2]), true, 23).unwrap(), "\\x0102");
        let long = vec![b'a'; MAX_PARAMETER_BYTES + 10];
        let shown = parameter(Some(&long), false, 0).unwrap();
        assert!(shown.ends_with(&format!("…[{} bytes]", MAX_PARAMETER_BYTES + 10)));
    }
}
