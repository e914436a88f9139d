//! Masking on the data path: the result columns of each statement are looked up by origin in
//! RowDescription and masked in every DataRow ([`crate::mask::rows`]). In the simple protocol a
//! RowDescription precedes each result; in the extended protocol it answers a Describe, whose
//! answer the session keeps with the statement or portal described
//! ([`super::inspect::registry`]); an Execute's rows are read with it (a statement's with the
//! Bind's result formats). When a client executes a masked statement it never described, pgid
//! adds a Describe of its own first. A row pgid cannot attribute is not sent: the statement ends
//! with an error instead. While a statement using masked columns (or naming a table or view that
//! has some) is in flight, error and notice texts are withheld (they can quote a value).
//! Notifications are never relayed under a policy with masks: a payload is free text no
//! RowDescription describes (LISTEN, NOTIFY and pg_notify are refused; one that arrives anyway —
//! a LISTEN made by code pgid did not see — is replaced by a notice).

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;

use bytes::BytesMut;

use super::catalog::MaskSetup;
use super::limits::Action;
use super::wire::backend::{self, Report, Severity};
use super::wire::sqlstate;
use crate::encoding::Encoding;
use crate::mask::rows::{self, Field, Layout};
use crate::mask::MaskPlan;

pub struct Masker {
    setup: Arc<MaskSetup>,
    /// The result being relayed: not yet known, nothing to mask, or how.
    layout: Option<Option<Layout>>,
    /// Rows of the current result could not be attributed and were not sent.
    unmaskable: bool,
    /// `pgid_proxy_masked_values`.
    masked: Counter,
}

/// How an Execute's rows are read when no RowDescription precedes them.
pub struct Described<'a> {
    /// The columns, when a Describe reported them (with the Bind's formats applied).
    pub fields: Option<Vec<Field>>,
    pub plan: &'a MaskPlan,
}

impl Masker {
    pub fn new(setup: Arc<MaskSetup>, masked: Counter) -> Masker {
        Masker {
            setup,
            layout: None,
            unmaskable: false,
            masked,
        }
    }

    pub fn setup(&self) -> &MaskSetup {
        &self.setup
    }

    /// A RowDescription opening a result that `plan` covers.
    pub fn result(&mut self, description: &[u8], plan: &MaskPlan) -> Action {
        match rows::row_description(description) {
            Some(fields) => {
                self.layout = Some(rows::layout(&fields, &self.setup.origins, plan));
                Action::Pass
            }
            None => Action::Drop,
        }
    }

    /// A DataRow, in the client's `encoding`. `execute`: for the rows of an Execute with no
    /// RowDescription of their own.
    pub fn data_row(
        &mut self,
        body: &[u8],
        execute: Option<Described<'_>>,
        encoding: Option<Encoding>,
    ) -> Action {
        if self.layout.is_none() {
            self.layout = Some(execute.and_then(|d| match d.fields {
                Some(f) => rows::layout(&f, &self.setup.origins, d.plan),
                None => {
                    if matches!(d.plan, MaskPlan::Mask { .. }) {
                        self.unmaskable = true;
                    }
                    None
                }
            }));
        }
        if self.unmaskable {
            return Action::Drop;
        }
        match &self.layout {
            Some(Some(l)) => match rows::data_row(body, l, &self.setup.key, encoding) {
                Some(row) => {
                    let masked = l.columns.iter().filter(|c| c.is_some()).count();
                    self.masked.inc_by(masked as u64);
                    Action::Replace(row)
                }
                None => Action::Drop,
            },
            _ => Action::Pass,
        }
    }

    /// The end of a result (CommandComplete, PortalSuspended, EmptyQueryResponse).
    pub fn end(&mut self) -> Action {
        self.layout = None;
        if std::mem::take(&mut self.unmaskable) {
            let mut err = BytesMut::new();
            backend::error_response(
                &mut err,
                Severity::Error,
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "pgid: mask: the result's columns were not described, so they cannot be masked; its rows were not sent",
            );
            return Action::Replace(err);
        }
        Action::Pass
    }

    /// An ErrorResponse or NoticeResponse; `any_masked`: a statement using masked columns is in
    /// flight.
    pub fn report(&mut self, notice: bool, report: &Report<'_>, any_masked: bool) -> Action {
        if !notice {
            self.layout = None;
            self.unmaskable = false;
        }
        if any_masked {
            Action::Replace(withheld(notice, report))
        } else {
            Action::Pass
        }
    }

    /// A NotificationResponse: withheld, a notice in its place.
    pub fn notification(&self) -> Action {
        let mut out = BytesMut::new();
        backend::error_response(
            &mut out,
            Severity::Notice,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "pgid: mask: a notification was withheld: under a policy with masked columns notifications are not relayed",
        );
        Action::Replace(out)
    }

    pub fn ready(&mut self) {
        self.layout = None;
        self.unmaskable = false;
    }
}

/// The report keeping only its severity and SQLSTATE, with pgid's message in place of the
/// server's texts.
pub fn withheld(notice: bool, report: &Report<'_>) -> BytesMut {
    let severity = match (notice, report.severity) {
        (true, _) => Severity::Notice,
        (false, b"FATAL" | b"PANIC") => Severity::Fatal,
        _ => Severity::Error,
    };
    let code = std::str::from_utf8(report.code).unwrap_or("XX000");
    let mut out = BytesMut::new();
    backend::error_response(
        &mut out,
        severity,
        code,
        "pgid: message withheld: the statement uses masked columns",
    );
    out
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::policy::MaskMethod;

    fn setup() -> Arc<MaskSetup> {
        let mut s = MaskSetup::default();
        s.origins.columns.insert((100, 2), (MaskMethod::Redact, 0));
        Arc::new(s)
    }

    /// A RowDescription body: (table oid, attnum, type) per column, text format.
    pub(crate) fn description(cols: &[(u32, i16, u32)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(cols.len() as i16);
        for (table, attnum, ty) in cols {
            b.put_slice(b"c\0");
            b.put_u32(*table);
            b.put_i16(*attnum);
            b.put_u32(*ty);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0);
        }
        b.to_vec()
    }

    fn row(values: &[&[u8]]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            b.put_i32(v.len() as i32);
            b.put_slice(v);
        }
        b.to_vec()
    }

    fn plan() -> MaskPlan {
        MaskPlan::Mask {
            tainted: false,
            tainted_outputs: Vec::new(),
            method: MaskMethod::Redact,
            keep: 0,
            columns: vec!["s.t.secret".into()],
        }
    }

    #[test]
    fn rows_are_masked_by_origin() {
        let mut m = Masker::new(setup(), Counter::default());
        assert_eq!(
            m.result(&description(&[(100, 1, 23), (100, 2, 25)]), &plan()),
            Action::Pass
        );
        match m.data_row(&row(&[b"1", b"secret@example.com"]), None, None) {
            Action::Replace(r) => {
                assert!(!r.windows(6).any(|w| w == b"secret"));
                assert!(r.windows(8).any(|w| w == b"REDACTED"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.end(), Action::Pass);
    }

    #[test]
    fn rows_that_cannot_be_attributed_are_not_sent() {
        let mut m = Masker::new(setup(), Counter::default());
        let p = plan();
        let a = m.data_row(
            &row(&[b"secret"]),
            Some(Described {
                fields: None,
                plan: &p,
            }),
            None,
        );
        assert_eq!(a, Action::Drop);
        let end = m.end();
        assert!(matches!(end, Action::Replace(ref e) if e.windows(10).any(|w| w == b"pgid: mask")));
        // Notifications are never relayed.
        assert!(
            matches!(m.notification(), Action::Replace(ref n) if n[0] == b'N'
            && n.windows(10).any(|w| w == b"pgid: mask"))
        );
        // Errors while a masked statement is in flight keep only their code.
        let r = Report {
            code: b"22P02",
            message: b"bad value \"secret\"",
            severity: b"ERROR",
        };
        let withheld = m.report(false, &r, true);
        assert!(
            matches!(withheld, Action::Replace(ref e) if !e.windows(6).any(|w| w == b"secret")
                && e.windows(5).any(|w| w == b"22P02"))
        );
    }
}
