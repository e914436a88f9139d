//! Statements an `[[approval]]` rule holds: what the reviewer sees, and the fingerprint a
//! retry-mode approval is for (canonical text, the statements it executes, and the exact
//! parameters with their types and formats).

use std::sync::Arc;

use bytes::Bytes;

use super::judge::{Batch, Hold};
use super::registry::{ExactParameters, Matched};
use crate::guard::Verdict;
use crate::sql::Dialect;

impl Batch<'_> {
    /// A statement under an approval rule: a decision already taken for it (this batch judged
    /// again) stands; otherwise it is held (`wait`: until a reviewer decides; `retry`: until
    /// pgid has looked for an approval of this very statement). `Some` when decided.
    pub(super) fn approval(&mut self, held: HoldOf<'_>) -> Option<Verdict> {
        if let Some(v) = self.decided.get(&held.message) {
            return Some(v.clone());
        }
        let exact: Vec<(bool, Option<&[u8]>)> = held
            .exact
            .values
            .iter()
            .map(|(binary, v)| (*binary, v.as_deref()))
            .collect();
        // What runs: the text, and for EXECUTE the statements it executes — shown to the
        // reviewer and part of what a retry-mode approval is for, with the parameters' types.
        let mut statement = held.sql.to_string();
        let mut audited = self.insp.shown(held.sql).into_owned();
        let mut canonical = crate::sql::canonical(held.sql, held.dialect);
        for (name, text) in &held.matched.prepared {
            statement.push_str(&format!("\n-- {name} was prepared as: {text}"));
            audited.push_str(&format!(
                "\n-- {name} was prepared as: {}",
                self.insp.shown(text)
            ));
            canonical.push_str(&format!(
                "\n{name}={}",
                crate::sql::canonical(text, held.dialect)
            ));
        }
        canonical.push_str(&format!("\n-- parameter types: {:?}", held.exact.types));
        // The same text means something else under other settings (standard_conforming_strings,
        // DateStyle, TimeZone, IntervalStyle): an approval is for the statement as the server
        // reads it under the settings it last reported.
        if held.dialect.backslash_escapes {
            canonical.push_str("\n-- standard_conforming_strings: off");
        }
        canonical.push_str(&format!("\n-- settings: {}", self.insp.context.meaning()));
        // A session that may have made relations of its own (a temporary table the statement
        // reads, filled after the approval) can change what the text does where no reviewer
        // sees: its approvals are never used again (wait mode still works there).
        if self.counters.made.relations {
            canonical.push_str(&format!(
                "\n-- session-made relations: {}",
                hex::encode(rand::random::<[u8; 16]>())
            ));
        }
        self.holds.push(Hold {
            estimable: held.matched.estimable,
            message: held.message,
            statement,
            audited,
            sql: held.sql.to_string(),
            raw_sql: Bytes::copy_from_slice(held.raw_sql),
            tables: held.matched.tables,
            fingerprint: crate::approval::fingerprint(&canonical, &exact),
            rule: held.matched.rule,
            class: held.matched.class,
            parameters: held.parameters,
            exact: held.exact,
        });
        None
    }
}

/// A statement an approval rule applies to, as [`Batch::approval`] takes it.
pub(super) struct HoldOf<'a> {
    pub(super) message: usize,
    pub(super) sql: &'a str,
    pub(super) raw_sql: &'a [u8],
    pub(super) matched: Matched,
    pub(super) parameters: Option<Vec<Option<String>>>,
    pub(super) exact: Arc<ExactParameters>,
    pub(super) dialect: Dialect,
}
