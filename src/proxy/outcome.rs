//! Which response belongs to which statement. Postgres answers a connection's messages strictly
//! in order, so pgid keeps a queue of what it sent upstream and walks it as responses arrive: a
//! Query ends at ReadyForQuery; Parse, Bind and Close at their completion messages; Describe at
//! RowDescription/NoData; Execute at CommandComplete, EmptyQueryResponse, PortalSuspended or an
//! error. After an error in the extended protocol the server skips everything up to Sync; the
//! statements it skips are reported as not run. Pure: no I/O, no clock but the one passed in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::statement::Result as Finish;
use crate::mask::MaskPlan;

/// What pgid attached to a message it sent, read back while its response arrives.
#[derive(Debug, Default)]
pub struct Note {
    /// Masking: per statement of a Query; the one statement of an Execute.
    pub plans: Vec<MaskPlan>,
    /// Describe: the statement or portal described; Execute: its portal and statement.
    pub statement: Option<String>,
    pub portal: Option<String>,
    /// Execute: the result formats its Bind asked for.
    pub formats: Vec<i16>,
    /// A Describe pgid added for itself: its answer is not the client's.
    pub swallow: bool,
}

impl Note {
    pub fn masked(&self) -> bool {
        self.plans
            .iter()
            .any(|p| matches!(p, MaskPlan::Mask { .. }))
    }
}

/// The message whose response is arriving.
pub struct Head<'a> {
    pub tag: u8,
    pub note: Option<&'a Note>,
    /// Query: statements completed so far (the index of the one answering now).
    pub completed: usize,
}

/// A statement whose outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audited {
    pub seq: u64,
    pub started: Instant,
}

struct Entry {
    tag: u8,
    note: Option<Arc<Note>>,
    completed: usize,
    audited: Option<Audited>,
    data_rows: u64,
    completed_rows: Option<u64>,
    sqlstate: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub seq: u64,
    pub result: Finish,
    pub rows: Option<u64>,
    pub duration_ms: f64,
    pub sqlstate: Option<String>,
}

#[derive(Default)]
pub struct Tracker {
    queue: VecDeque<Entry>,
    /// The server is skipping to the next Sync, which pgid has not sent yet.
    skipping: bool,
}

/// The row count at the end of a CommandComplete tag (`SELECT 5`, `INSERT 0 5`, `COPY 5`).
pub fn tag_rows(tag: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(tag.strip_suffix(b"\0").unwrap_or(tag)).ok()?;
    let mut words = text.split(' ');
    let verb = words.next()?;
    let last = text.rsplit(' ').next()?;
    if verb == last {
        return None;
    }
    last.parse().ok()
}

fn done(e: Entry, result: Finish, now: Instant) -> Option<Done> {
    let a = e.audited?;
    let result = if e.sqlstate.is_some() && result == Finish::Ok {
        Finish::Error
    } else {
        result
    };
    let rows = match result {
        Finish::Ok | Finish::Suspended => e.completed_rows.or(Some(e.data_rows)),
        _ => None,
    };
    Some(Done {
        seq: a.seq,
        result,
        rows,
        duration_ms: now.duration_since(a.started).as_secs_f64() * 1000.0,
        sqlstate: e.sqlstate,
    })
}

impl Tracker {
    /// A message pgid forwarded upstream (`tag` as sent). Flush, CopyData, CopyDone and CopyFail
    /// get no response of their own and are not passed here.
    pub fn sent(&mut self, tag: u8, audited: Option<Audited>, now: Instant, out: &mut Vec<Done>) {
        let entry = Entry {
            tag,
            note: None,
            completed: 0,
            audited,
            data_rows: 0,
            completed_rows: None,
            sqlstate: None,
        };
        if self.skipping && tag != b'S' {
            out.extend(done(entry, Finish::NotRun, now));
            return;
        }
        if tag == b'S' {
            self.skipping = false;
        }
        self.queue.push_back(entry);
    }

    /// Attaches `note` to the message just passed to [`Tracker::sent`].
    pub fn annotate(&mut self, note: Arc<Note>) {
        if let Some(e) = self.queue.back_mut() {
            e.note = Some(note);
        }
    }

    /// The statement whose ParameterDescription is arriving now.
    pub fn described(&self) -> Option<&str> {
        self.queue
            .front()
            .filter(|e| e.tag == b'D')
            .and_then(|e| e.note.as_ref()?.statement.as_deref())
    }

    pub fn head(&self) -> Option<Head<'_>> {
        self.queue.front().map(|e| Head {
            tag: e.tag,
            note: e.note.as_deref(),
            completed: e.completed,
        })
    }

    /// Whether any message awaiting its answer reads masked columns.
    pub fn any_masked(&self) -> bool {
        self.queue
            .iter()
            .any(|e| e.note.as_ref().is_some_and(|n| n.masked()))
    }

    /// A DataRow from the server.
    pub fn data_row(&mut self) {
        if let Some(head) = self.queue.front_mut() {
            head.data_rows += 1;
        }
    }

    /// A message from the server. `replaced_by`: the SQLSTATE of the error pgid delivers in its
    /// place (an export limit), when the client sees an error the server did not send.
    pub fn received(
        &mut self,
        tag: u8,
        body: &[u8],
        replaced_by: Option<&str>,
        now: Instant,
        out: &mut Vec<Done>,
    ) {
        let Some(head) = self.queue.front_mut() else {
            return;
        };
        if let Some(code) = replaced_by {
            if head.sqlstate.is_none() {
                head.sqlstate = Some(code.to_string());
            }
        }
        let simple = head.tag == b'Q';
        match tag {
            b'N' | b'A' | b'S' | b'K' | b't' => {}
            b'D' => head.data_rows += 1,
            b'C' if simple => {
                head.completed += 1;
                if let Some(n) = tag_rows(body) {
                    *head.completed_rows.get_or_insert(0) += n;
                }
            }
            b'I' if simple => head.completed += 1,
            b'E' if simple && head.sqlstate.is_none() => head.sqlstate = error_code(body),
            b'E' if simple => {}
            b'Z' => {
                // Ends a Query, or the Sync of a pipeline (and whatever it still holds).
                while let Some(e) = self.queue.pop_front() {
                    let last = e.tag == b'Q' || e.tag == b'S';
                    let result = if e.tag == b'Q' {
                        Finish::Ok
                    } else {
                        Finish::NotRun
                    };
                    out.extend(done(e, result, now));
                    if last {
                        break;
                    }
                }
            }
            _ if simple => {}
            b'C' | b'I' | b's' => {
                if let Some(mut e) = self.queue.pop_front() {
                    let result = if tag == b's' {
                        Finish::Suspended
                    } else {
                        Finish::Ok
                    };
                    if tag == b'C' {
                        e.completed_rows = tag_rows(body);
                    }
                    out.extend(done(e, result, now));
                }
            }
            b'1' | b'2' | b'3' | b'T' | b'n' => {
                self.queue.pop_front();
            }
            b'E' => {
                if let Some(mut e) = self.queue.pop_front() {
                    let code = replaced_by.map(str::to_string).or_else(|| error_code(body));
                    // A Bind fails for the Execute that follows it (planning happens at Bind).
                    if e.tag == b'B' && self.queue.front().is_some_and(|n| n.tag == b'E') {
                        out.extend(done(e, Finish::Error, now));
                        e = self.queue.pop_front().unwrap_or_else(|| unreachable!());
                    }
                    e.sqlstate = code;
                    out.extend(done(e, Finish::Error, now));
                }
                // The server now skips to Sync.
                while self.queue.front().is_some_and(|e| e.tag != b'S') {
                    if let Some(e) = self.queue.pop_front() {
                        out.extend(done(e, Finish::NotRun, now));
                    }
                }
                if self.queue.is_empty() {
                    self.skipping = true;
                }
            }
            _ => {}
        }
    }
}

fn error_code(body: &[u8]) -> Option<String> {
    super::wire::backend::error_field(body, b'C')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(seq: u64, t: Instant) -> Option<Audited> {
        Some(Audited { seq, started: t })
    }

    fn error(code: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.push(b'S');
        b.extend_from_slice(b"ERROR\0");
        b.push(b'C');
        b.extend_from_slice(code.as_bytes());
        b.push(0);
        b.push(0);
        b
    }

    #[test]
    fn tags_give_row_counts() {
        assert_eq!(tag_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(tag_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(tag_rows(b"COPY 100000\0"), Some(100_000));
        assert_eq!(tag_rows(b"BEGIN\0"), None);
        assert_eq!(tag_rows(b"CREATE TABLE\0"), None);
    }

    #[test]
    fn a_multi_statement_query_completes_at_ready_for_query() {
        let t = Instant::now();
        let mut tr = Tracker::default();
        let mut out = Vec::new();
        tr.sent(b'Q', a(1, t), t, &mut out);
        for (tag, body) in [
            (b'T', &b""[..]),
            (b'D', b""),
            (b'D', b""),
            (b'C', b"SELECT 2\0"),
            (b'C', b"UPDATE 3\0"),
        ] {
            tr.received(tag, body, None, t, &mut out);
        }
        assert!(out.is_empty());
        tr.received(b'Z', b"I", None, t, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].seq, out[0].result, out[0].rows),
            (1, Finish::Ok, Some(5))
        );
        out.clear();
        tr.sent(b'Q', a(2, t), t, &mut out);
        tr.received(b'E', &error("42P01"), None, t, &mut out);
        tr.received(b'Z', b"I", None, t, &mut out);
        assert_eq!(out[0].result, Finish::Error);
        assert_eq!(out[0].sqlstate.as_deref(), Some("42P01"));
        assert_eq!(out[0].rows, None);
    }

    #[test]
    fn a_pipeline_attributes_each_execute_and_skips_after_an_error() {
        let t = Instant::now();
        let mut tr = Tracker::default();
        let mut out = Vec::new();
        // P B D E | B E | B E S — the second Execute fails, the third is skipped.
        for (tag, audited) in [
            (b'P', None),
            (b'B', None),
            (b'D', None),
            (b'E', a(1, t)),
            (b'B', None),
            (b'E', a(2, t)),
            (b'B', None),
            (b'E', a(3, t)),
            (b'S', None),
        ] {
            tr.sent(tag, audited, t, &mut out);
        }
        for (tag, body) in [
            (b'1', &b""[..]),
            (b'2', b""),
            (b'T', b""),
            (b'D', b""),
            (b'C', b"SELECT 1\0"),
            (b'2', b""),
        ] {
            tr.received(tag, body, None, t, &mut out);
        }
        tr.received(b'E', &error("22012"), None, t, &mut out);
        tr.received(b'Z', b"I", None, t, &mut out);
        let got: Vec<_> = out.iter().map(|d| (d.seq, d.result, d.rows)).collect();
        assert_eq!(
            got,
            [
                (1, Finish::Ok, Some(1)),
                (2, Finish::Error, None),
                (3, Finish::NotRun, None)
            ]
        );
        // After the Sync the pipeline is in step again.
        out.clear();
        tr.sent(b'B', None, t, &mut out);
        tr.sent(b'E', a(4, t), t, &mut out);
        tr.sent(b'S', None, t, &mut out);
        tr.received(b'2', b"", None, t, &mut out);
        tr.received(b's', b"", None, t, &mut out);
        tr.received(b'Z', b"T", None, t, &mut out);
        assert_eq!(out[0].seq, 4);
        assert_eq!(out[0].result, Finish::Suspended);
        // An error at Bind is the Execute's error.
        out.clear();
        tr.sent(b'B', None, t, &mut out);
        tr.sent(b'E', a(5, t), t, &mut out);
        tr.sent(b'S', None, t, &mut out);
        tr.received(b'E', &error("25P02"), None, t, &mut out);
        tr.received(b'Z', b"E", None, t, &mut out);
        assert_eq!((out[0].seq, out[0].result), (5, Finish::Error));
        assert_eq!(out[0].sqlstate.as_deref(), Some("25P02"));
    }

    #[test]
    fn messages_sent_after_an_error_before_sync_are_not_run() {
        let t = Instant::now();
        let mut tr = Tracker::default();
        let mut out = Vec::new();
        tr.sent(b'P', None, t, &mut out);
        tr.received(b'E', &error("42601"), None, t, &mut out);
        tr.sent(b'B', None, t, &mut out);
        tr.sent(b'E', a(7, t), t, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result, Finish::NotRun);
        tr.sent(b'S', None, t, &mut out);
        tr.received(b'Z', b"I", None, t, &mut out);
        tr.sent(b'Q', a(8, t), t, &mut out);
        tr.received(b'I', b"", None, t, &mut out);
        tr.received(b'Z', b"I", None, t, &mut out);
        assert_eq!(out[1].seq, 8);
        assert_eq!(out[1].result, Finish::Ok);
    }

    #[test]
    fn an_export_limit_turns_the_completion_into_an_error() {
        let t = Instant::now();
        let mut tr = Tracker::default();
        let mut out = Vec::new();
        tr.sent(b'B', None, t, &mut out);
        tr.sent(b'E', a(1, t), t, &mut out);
        tr.sent(b'S', None, t, &mut out);
        tr.received(b'2', b"", None, t, &mut out);
        tr.received(b'D', b"", None, t, &mut out);
        tr.received(b'C', b"SELECT 9\0", Some("54000"), t, &mut out);
        tr.received(b'Z', b"I", None, t, &mut out);
        assert_eq!(out[0].result, Finish::Error);
        assert_eq!(out[0].sqlstate.as_deref(), Some("54000"));
    }
}
