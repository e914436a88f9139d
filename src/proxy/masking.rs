//! Masking on the data path: the result columns of each statement are looked up by origin in
//! RowDescription and masked in every DataRow ([`crate::mask::rows`]). In the simple protocol a
//! RowDescription precedes each result; in the extended protocol it answers a Describe, so pgid
//! remembers the description of each prepared statement and portal, applies the result formats
//! of the Bind, and — when a client executes a masked statement it never described — adds a
//! Describe of its own and keeps the answer to itself. A row pgid cannot attribute is not sent:
//! the statement ends with an error instead. While a statement using masked columns is in
//! flight, error and notice texts are withheld (they can quote a value).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;

use super::catalog::MaskSetup;
use super::limits::Action;
use super::outcome::Head;
use super::wire::backend::{self, Severity};
use crate::mask::rows::{self, Field, Layout};
use crate::mask::MaskPlan;

pub struct Masker {
    setup: Arc<MaskSetup>,
    statements: HashMap<String, Vec<Field>>,
    portals: HashMap<String, Vec<Field>>,
    /// Describes sent and not yet answered (`S…`/`P…` + name).
    pending: HashSet<String>,
    /// The result being relayed: not yet known, nothing to mask, or how.
    layout: Option<Option<Layout>>,
    /// Rows of the current result could not be attributed and were not sent.
    unmaskable: bool,
}

const UNTOUCHED: MaskPlan = MaskPlan::Untouched;

impl Masker {
    pub fn new(setup: Arc<MaskSetup>) -> Masker {
        Masker {
            setup,
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending: HashSet::new(),
            layout: None,
            unmaskable: false,
        }
    }

    pub fn setup(&self) -> &MaskSetup {
        &self.setup
    }

    /// A statement was (re)parsed: its old description no longer holds.
    pub fn parsed(&mut self, statement: &str) {
        self.statements.remove(statement);
    }

    /// A portal was (re)bound.
    pub fn bound(&mut self, portal: &str) {
        self.portals.remove(portal);
    }

    pub fn closed(&mut self, kind: u8, name: &str) {
        match kind {
            b'S' => self.statements.remove(name),
            _ => self.portals.remove(name),
        };
    }

    /// A Describe (`kind` S or P) is on its way.
    pub fn describing(&mut self, kind: u8, name: &str) {
        self.pending.insert(format!("{}{name}", kind as char));
    }

    /// Whether the columns of an Execute of `portal` (bound to `statement`) will be known.
    pub fn knows(&self, portal: &str, statement: &str) -> bool {
        self.portals.contains_key(portal)
            || self.statements.contains_key(statement)
            || self.pending.contains(&format!("P{portal}"))
            || self.pending.contains(&format!("S{statement}"))
    }

    /// What to do with a server message (already past the other filters).
    pub fn on_message(
        &mut self,
        tag: u8,
        body: &[u8],
        head: Option<Head<'_>>,
        any_masked: bool,
    ) -> Action {
        match tag {
            b'T' | b'n' => {
                let fields = if tag == b'T' {
                    match rows::row_description(body) {
                        Some(f) => f,
                        None => return Action::Drop,
                    }
                } else {
                    Vec::new()
                };
                match head {
                    Some(h) if h.tag == b'D' => {
                        let Some(note) = h.note else {
                            return Action::Pass;
                        };
                        if let Some(s) = &note.statement {
                            self.pending.remove(&format!("S{s}"));
                            self.statements.insert(s.clone(), fields.clone());
                        }
                        if let Some(p) = &note.portal {
                            self.pending.remove(&format!("P{p}"));
                            self.portals.insert(p.clone(), fields);
                        }
                        if note.swallow {
                            Action::Drop
                        } else {
                            Action::Pass
                        }
                    }
                    Some(h) => {
                        let plan = h
                            .note
                            .and_then(|n| n.plans.get(h.completed))
                            .unwrap_or(&UNTOUCHED);
                        self.layout = Some(rows::layout(&fields, &self.setup.origins, plan));
                        Action::Pass
                    }
                    None => Action::Pass,
                }
            }
            b'D' => {
                if self.layout.is_none() {
                    self.layout = Some(self.execute_layout(head));
                }
                if self.unmaskable {
                    return Action::Drop;
                }
                match &self.layout {
                    Some(Some(l)) => match rows::data_row(body, l, &self.setup.key) {
                        Some(row) => Action::Replace(row),
                        None => Action::Drop,
                    },
                    _ => Action::Pass,
                }
            }
            b'C' | b's' | b'I' => {
                self.layout = None;
                if std::mem::take(&mut self.unmaskable) {
                    let mut err = BytesMut::new();
                    backend::error_response(
                        &mut err,
                        Severity::Error,
                        "42501",
                        "pgid: mask: the result's columns were not described, so they cannot be masked; its rows were not sent",
                    );
                    return Action::Replace(err);
                }
                Action::Pass
            }
            b'E' | b'N' => {
                if tag == b'E' {
                    self.layout = None;
                    self.unmaskable = false;
                }
                if any_masked {
                    Action::Replace(rows::withheld(tag, body))
                } else {
                    Action::Pass
                }
            }
            b'Z' => {
                self.layout = None;
                self.unmaskable = false;
                Action::Pass
            }
            _ => Action::Pass,
        }
    }

    /// The layout of an Execute's rows, from its portal's (or statement's) description.
    fn execute_layout(&mut self, head: Option<Head<'_>>) -> Option<Layout> {
        let h = head.filter(|h| h.tag == b'E')?;
        let note = h.note?;
        let plan = note.plans.first().unwrap_or(&UNTOUCHED);
        let fields = note
            .portal
            .as_ref()
            .and_then(|p| self.portals.get(p).cloned())
            .or_else(|| {
                note.statement
                    .as_ref()
                    .and_then(|s| self.statements.get(s))
                    .map(|f| rows::with_formats(f, &note.formats))
            });
        match fields {
            Some(f) => rows::layout(&f, &self.setup.origins, plan),
            None => {
                if note.masked() {
                    self.unmaskable = true;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::BufMut;

    use super::*;
    use crate::policy::MaskMethod;
    use crate::proxy::outcome::{Note, Tracker};

    fn setup() -> Arc<MaskSetup> {
        let mut s = MaskSetup::default();
        s.origins.columns.insert((100, 2), (MaskMethod::Redact, 0));
        Arc::new(s)
    }

    /// A RowDescription body: (table oid, attnum, type) per column, text format.
    fn description(cols: &[(u32, i16, u32)]) -> Vec<u8> {
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
    fn an_undescribed_execute_is_described_by_pgid_and_masked() {
        let mut m = Masker::new(setup());
        let mut t = Tracker::default();
        let now = Instant::now();
        let mut done = Vec::new();
        assert!(!m.knows("", "s1"));
        // What the enforcer sends for B/E/S of an undescribed masked statement: its own D first.
        m.describing(b'P', "");
        t.sent(b'B', None, now, &mut done);
        t.sent(b'D', None, now, &mut done);
        t.annotate(Arc::new(Note {
            portal: Some(String::new()),
            swallow: true,
            ..Note::default()
        }));
        t.sent(b'E', None, now, &mut done);
        t.annotate(Arc::new(Note {
            plans: vec![plan()],
            portal: Some(String::new()),
            statement: Some("s1".into()),
            ..Note::default()
        }));
        t.sent(b'S', None, now, &mut done);
        let mut step = |tag: u8, body: &[u8]| {
            let a = m.on_message(tag, body, t.head(), t.any_masked());
            t.received(tag, body, None, now, &mut done);
            a
        };
        assert_eq!(step(b'2', b""), Action::Pass);
        assert_eq!(
            step(b'T', &description(&[(100, 1, 23), (100, 2, 25)])),
            Action::Drop,
            "pgid's own Describe is not answered to the client"
        );
        match step(b'D', &row(&[b"1", b"secret@example.com"])) {
            Action::Replace(r) => {
                assert!(!r.windows(6).any(|w| w == b"secret"));
                assert!(r.windows(8).any(|w| w == b"REDACTED"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(step(b'C', b"SELECT 1\0"), Action::Pass);
        assert_eq!(step(b'Z', b"I"), Action::Pass);
    }

    #[test]
    fn rows_that_cannot_be_attributed_are_not_sent() {
        let mut m = Masker::new(setup());
        let mut t = Tracker::default();
        let now = Instant::now();
        let mut done = Vec::new();
        t.sent(b'E', None, now, &mut done);
        t.annotate(Arc::new(Note {
            plans: vec![plan()],
            portal: Some("p".into()),
            statement: Some("unknown".into()),
            ..Note::default()
        }));
        t.sent(b'S', None, now, &mut done);
        let a = m.on_message(b'D', &row(&[b"secret"]), t.head(), t.any_masked());
        assert_eq!(a, Action::Drop);
        t.received(b'D', b"", None, now, &mut done);
        let end = m.on_message(b'C', b"SELECT 1\0", t.head(), t.any_masked());
        assert!(matches!(end, Action::Replace(ref e) if e.windows(10).any(|w| w == b"pgid: mask")));
        // Errors while a masked statement is in flight keep only their code.
        let mut err = BytesMut::new();
        backend::error_response(&mut err, Severity::Error, "22P02", "bad value \"secret\"");
        let withheld = m.on_message(b'E', &err[5..], t.head(), t.any_masked());
        assert!(
            matches!(withheld, Action::Replace(ref e) if !e.windows(6).any(|w| w == b"secret"))
        );
    }
}
