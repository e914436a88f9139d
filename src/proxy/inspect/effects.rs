//! What a statement does to the session's prepared statements, portals and settings, read from
//! its analysis: the registry effects it has once it completes, the cursors it fetches from, and
//! the setting changes pgid refuses whatever the policy says.

use std::sync::Arc;

use super::registry::{Effect, Name, Portal, Statement as Definition};
use crate::encoding::Encoding;
use crate::guard::Verdict;
use crate::sql::{SettingValue, Statement};

/// The registry effects of `st` once it completes (`definition`: what a PREPARE or DECLARE in
/// it defines). A portal gets its definition id when the caller numbers it (0 here).
pub fn of_statement(st: &Statement, definition: impl FnOnce() -> Arc<Definition>) -> Vec<Effect> {
    let mut out = Vec::new();
    if let Some(name) = &st.prepares {
        out.push(Effect::DefineStatement(Name::new(name), definition()));
    } else if let Some(cursor) = &st.declares {
        out.push(Effect::DefinePortal(
            Name::new(&cursor.name),
            Arc::new(Portal {
                id: 0,
                statement: definition(),
                parameters: Vec::new(),
                exact: Arc::default(),
                result_formats: Vec::new(),
                holdable: cursor.holdable,
                cursor: true,
            }),
        ));
    }
    match &st.deallocates {
        Some(Some(name)) => out.push(Effect::DropStatement(Name::new(name))),
        Some(None) => out.push(Effect::DropAllStatements),
        None => {}
    }
    match &st.closes {
        Some(Some(name)) => out.push(Effect::DropPortal(Name::new(name))),
        Some(None) => out.push(Effect::DropAllPortals),
        None => {}
    }
    if st.discards_all {
        out.push(Effect::DropAllStatements);
        out.push(Effect::DropAllPortals);
    }
    out
}

/// Cursors `st` fetches from (FETCH, MOVE).
pub fn fetches(st: &Statement) -> impl Iterator<Item = &str> {
    st.fetches.iter().map(String::as_str)
}

/// Setting changes pgid refuses whatever the policy says: a client encoding pgid cannot read
/// exactly as the server does, or one it cannot tell. (Identity settings are the guard's: the
/// ROLE class.)
pub fn settings_allowed(st: &Statement) -> Result<(), Verdict> {
    for s in &st.settings {
        if s.name.as_deref() != Some("client_encoding") {
            continue;
        }
        let refused = |reason: String| Verdict::Deny {
            rule: "encoding",
            reason,
        };
        match &s.value {
            // Back to the session's own, which was checked at login.
            SettingValue::Default => {}
            SettingValue::Value(v) => match Encoding::from_name(v) {
                Some(e) if e.is_ascii_safe() => {}
                Some(e) => {
                    return Err(refused(format!(
                        "client_encoding {} is not ASCII-safe: its multi-byte characters can \
                         contain a backslash or a quote, so pgid cannot read statements in it as \
                         the server does",
                        e.name()
                    )))
                }
                None => return Err(refused(format!("client_encoding {v:?} is not known"))),
            },
            SettingValue::Unknown => {
                return Err(refused(
                    "the client_encoding this sets is not a constant; pgid cannot tell whether \
                     it is one it reads"
                        .into(),
                ))
            }
        }
    }
    Ok(())
}
