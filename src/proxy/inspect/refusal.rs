//! Refused messages are not dropped — dropping would break the order of answers in a pipeline —
//! but replaced by a stand-in that fails at the server exactly where the refused message stood:
//! a Query, or a Parse (standing in for any extended-protocol message), of a call to a function
//! that cannot exist, `pgid_refused_<session token>_<n>()`. The server answers it in sequence,
//! skips to Sync in the extended protocol, and aborts an open transaction block as any error
//! would. Its ErrorResponse is then replaced by pgid's own refusal.

use std::collections::HashMap;

use bytes::BytesMut;
use rand::RngCore;

use crate::encoding::Encoding;
use crate::guard::Verdict;
use crate::proxy::wire::backend::{self, Report, Severity};
use crate::proxy::wire::frontend;
use crate::proxy::wire::sqlstate;
use crate::sql::SyntaxError;

pub struct Refusals {
    token: String,
    /// Refusal number → the ErrorResponse the client gets instead of its stand-in's.
    waiting: HashMap<u64, BytesMut>,
}

/// A refusal as the client sees it: the verdict's message under a SQLSTATE.
pub fn error(encoding: Option<Encoding>, code: &str, verdict: &Verdict) -> BytesMut {
    let mut err = BytesMut::new();
    let text = verdict.message().unwrap_or_default();
    backend::error_response_bytes(&mut err, Severity::Error, code, &encoded(encoding, &text));
    err
}

/// The error the server gives for a statement it cannot parse, as the server words it.
pub fn syntax_error(encoding: Option<Encoding>, s: &SyntaxError) -> BytesMut {
    let mut err = BytesMut::new();
    let message = encoded(encoding, &s.message);
    let position = s.position.map(|p| p.to_string());
    let mut fields: Vec<(u8, &[u8])> = vec![(b'M', &message)];
    if let Some(p) = &position {
        fields.push((b'P', p.as_bytes()));
    }
    backend::error_response_fields(&mut err, Severity::Error, s.code, &fields);
    err
}

fn encoded(encoding: Option<Encoding>, text: &str) -> Vec<u8> {
    match encoding {
        Some(e) => e.encode_lossy(text).into_owned(),
        None => text
            .chars()
            .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
            .collect(),
    }
}

impl Refusals {
    pub fn new() -> Refusals {
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Refusals {
            token: format!("pgid_refused_{}", hex::encode(b)),
            waiting: HashMap::new(),
        }
    }

    fn stand_in_sql(&self, n: u64) -> String {
        format!("SELECT {}_{n}()", self.token)
    }

    /// The Query that stands in for refusal `n`.
    pub fn query(&self, n: u64) -> BytesMut {
        let mut q = BytesMut::new();
        frontend::query(&mut q, self.stand_in_sql(n).as_bytes());
        q
    }

    /// The Parse that stands in for refusal `n`: under the client's statement name when it
    /// replaces a Parse, else under a name of pgid's own.
    pub fn parse(&self, n: u64, name: Option<&[u8]>) -> BytesMut {
        let own = format!("{}_{n}", self.token);
        let mut p = BytesMut::new();
        frontend::parse(
            &mut p,
            name.unwrap_or(own.as_bytes()),
            self.stand_in_sql(n).as_bytes(),
            &[],
        );
        p
    }

    pub fn insert(&mut self, n: u64, err: BytesMut) {
        self.waiting.insert(n, err);
    }

    /// The refusal to send instead of this error, when it is the stand-in `n`'s.
    pub fn answer(&mut self, n: u64, report: &Report<'_>) -> Option<BytesMut> {
        let expected = format!("{}_{n}", self.token);
        let is_ours = report.code == sqlstate::UNDEFINED_FUNCTION.as_bytes()
            && report
                .message
                .windows(expected.len())
                .any(|w| w == expected.as_bytes());
        let err = self.waiting.remove(&n)?;
        is_ours.then_some(err)
    }

    /// Stand-in `n` will not be answered (the server skips it): its refusal is not sent.
    pub fn forget(&mut self, n: u64) {
        self.waiting.remove(&n);
    }

    /// Nothing is in flight: every stand-in was answered or skipped (after an earlier error).
    pub fn clear(&mut self) {
        self.waiting.clear();
    }

    pub fn fatal(&self, encoding: Option<Encoding>, code: &str, message: &str) -> BytesMut {
        let mut out = BytesMut::new();
        backend::error_response_bytes(&mut out, Severity::Fatal, code, &encoded(encoding, message));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stand_ins_own_error_is_replaced() {
        let mut r = Refusals::new();
        let v = Verdict::Deny {
            rule: "deny",
            reason: "DROP statements are not allowed by this policy".into(),
        };
        r.insert(1, error(Some(Encoding::UTF8), "42501", &v));
        let msg = format!("function {}_1() does not exist", r.token);
        let other = Report {
            code: b"42P01",
            message: b"relation does not exist",
            severity: b"ERROR",
        };
        assert!(
            r.answer(1, &other).is_none(),
            "another error is passed on as it is"
        );
        r.insert(1, error(Some(Encoding::UTF8), "42501", &v));
        let ours = Report {
            code: b"42883",
            message: msg.as_bytes(),
            severity: b"ERROR",
        };
        let err = r.answer(1, &ours).unwrap();
        assert_eq!(
            backend::error_field(&err[5..], b'M').as_deref(),
            Some("pgid: deny: DROP statements are not allowed by this policy")
        );
        assert!(r.answer(1, &ours).is_none(), "answered once");
    }
}
