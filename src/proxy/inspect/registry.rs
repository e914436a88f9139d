//! Prepared statements and portals as the server has them. One namespace each, shared by the
//! protocol (Parse, Bind) and SQL (PREPARE, DECLARE), keyed as the server keys them: the name in
//! the server's encoding, cut at 63 bytes (`NAMEDATALEN - 1`; the server's hash tables compare
//! no further, so `aaa…ax` and `aaa…ay` are one statement there and must be one here).
//!
//! Nothing enters the registry until the server confirms it (ParseComplete, BindComplete,
//! CloseComplete, a statement's CommandComplete): what is sent but unanswered lives in the
//! queue ([`super::queue`]) as pending [`Effect`]s. A definition is never wrong: the only
//! inexactness allowed is keeping a portal the server dropped at a transaction's end (an
//! Execute of it fails at the server), never naming another statement than the server would.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::guard::Verdict;
use crate::mask::rows::Field;
use crate::mask::MaskPlan;
use crate::sql::Outcome;

/// The longest name the server tells apart (NAMEDATALEN - 1).
pub const NAME_BYTES: usize = 63;

/// A statement or portal name as the server keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Box<[u8]>);

impl Name {
    /// From the name's text as the server reads it (already in the server encoding).
    pub fn new(text: &str) -> Name {
        let b = text.as_bytes();
        Name(b[..b.len().min(NAME_BYTES)].into())
    }

    pub fn unnamed() -> Name {
        Name(Box::default())
    }

    pub fn is_unnamed(&self) -> bool {
        self.0.is_empty()
    }

    /// For messages and records (a cut multi-byte character is shown replaced).
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// Where a prepared statement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A Parse message: its text is the statement.
    Parse,
    /// SQL `PREPARE` (or `DECLARE` for a cursor) in a statement string: the text is the whole
    /// string, the statement the `index`th of it.
    Sql,
}

/// The approval rule a statement falls under, the tables it is about, and the prepared
/// statements (name, text) it executes.
#[derive(Debug, Clone)]
pub struct Matched {
    pub rule: crate::policy::Approval,
    /// The most consequential class of what runs (`pgid_proxy_statements_total`).
    pub class: Option<crate::policy::StatementClass>,
    pub tables: Vec<String>,
    pub prepared: Vec<(String, String)>,
    /// The planner's estimate of what runs can be trusted (`min_rows`).
    pub estimable: bool,
}

/// A statement as judged when it was defined (and judged again at each policy reload).
#[derive(Debug)]
pub struct Statement {
    /// Unique within the session: descriptions and portals refer to a definition, not a name.
    pub id: u64,
    pub origin: Origin,
    /// The text as the server reads it (and logs it).
    pub text: Arc<str>,
    /// The text as the client sent it (in its encoding): what pgid itself sends to estimate it.
    pub raw_text: bytes::Bytes,
    /// How the text was lexed (`standard_conforming_strings` when it was defined).
    pub dialect: crate::sql::Dialect,
    pub analysis: Outcome,
    /// Which statement of the analysis this is.
    pub index: usize,
    /// `Deny` when the policy (reloaded since) refuses it: every execution is refused.
    pub verdict: Verdict,
    pub mask: MaskPlan,
    /// Parameter types as Parse declared them (0: the server infers).
    pub parameter_types: Vec<u32>,
}

impl Statement {
    pub fn statement(&self) -> Option<&crate::sql::Statement> {
        self.analysis
            .as_ref()
            .as_ref()
            .ok()?
            .statements
            .get(self.index)
    }
}

/// Bind values exactly as the client sent them, with their types and formats: what a retry
/// approval is for, and what the planner is asked about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExactParameters {
    /// (binary format?, value; `None` is NULL)
    pub values: Vec<(bool, Option<Vec<u8>>)>,
    /// Parameter types as declared by the statement's Parse (0: inferred by the server).
    pub types: Vec<u32>,
}

/// What a portal runs.
#[derive(Debug)]
pub struct Portal {
    pub id: u64,
    pub statement: Arc<Statement>,
    /// Bind values as records show them (empty for a cursor or when not recorded).
    pub parameters: Vec<Option<String>>,
    pub exact: Arc<ExactParameters>,
    /// Result formats from the Bind (a cursor's results are text unless BINARY).
    pub result_formats: Vec<i16>,
    /// A cursor declared `WITH HOLD`: it outlives its transaction.
    pub holdable: bool,
    /// Declared by SQL (`DECLARE`), not bound by the protocol.
    pub cursor: bool,
}

impl Portal {
    /// The same portal running `statement` (a statement judged again after a reload).
    pub fn clone_with(p: &Portal, statement: Arc<Statement>) -> Portal {
        Portal {
            id: p.id,
            statement,
            parameters: p.parameters.clone(),
            exact: p.exact.clone(),
            result_formats: p.result_formats.clone(),
            holdable: p.holdable,
            cursor: p.cursor,
        }
    }
}

/// A change to the registry that a message makes once the server confirms it.
#[derive(Debug, Clone)]
pub enum Effect {
    DefineStatement(Name, Arc<Statement>),
    DropStatement(Name),
    DropAllStatements,
    DefinePortal(Name, Arc<Portal>),
    DropPortal(Name),
    DropAllPortals,
}

/// What an effect means for the statement (or portal) called `name`: `None` when it does not
/// touch it, `Some(None)` when it removes it, `Some(Some(def))` when it defines it.
pub trait Touches<T> {
    fn touches(&self, name: &Name) -> Option<Option<Arc<T>>>;
}

impl Touches<Statement> for Effect {
    fn touches(&self, name: &Name) -> Option<Option<Arc<Statement>>> {
        match self {
            Effect::DefineStatement(n, s) if n == name => Some(Some(s.clone())),
            Effect::DropStatement(n) if n == name => Some(None),
            Effect::DropAllStatements => Some(None),
            _ => None,
        }
    }
}

impl Touches<Portal> for Effect {
    fn touches(&self, name: &Name) -> Option<Option<Arc<Portal>>> {
        match self {
            Effect::DefinePortal(n, p) if n == name => Some(Some(p.clone())),
            Effect::DropPortal(n) if n == name => Some(None),
            Effect::DropAllPortals => Some(None),
            _ => None,
        }
    }
}

/// A result's columns as a Describe reported them.
#[derive(Debug, Clone, Default)]
pub struct Description {
    pub fields: Option<Vec<Field>>,
    pub parameter_types: Option<Vec<u32>>,
}

#[derive(Default)]
pub struct Registry {
    statements: HashMap<Name, Arc<Statement>>,
    portals: HashMap<Name, Arc<Portal>>,
    /// By definition id (statement or portal).
    descriptions: HashMap<u64, Description>,
    /// Portals executed at least once (later Executes continue the same run).
    started: HashSet<u64>,
}

impl Registry {
    pub fn statement(&self, name: &Name) -> Option<Arc<Statement>> {
        self.statements.get(name).cloned()
    }

    pub fn portal(&self, name: &Name) -> Option<Arc<Portal>> {
        self.portals.get(name).cloned()
    }

    /// The server confirmed `effect`.
    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::DefineStatement(n, s) => {
                if let Some(old) = self.statements.insert(n.clone(), s.clone()) {
                    self.descriptions.remove(&old.id);
                }
            }
            Effect::DropStatement(n) => {
                if let Some(old) = self.statements.remove(n) {
                    self.descriptions.remove(&old.id);
                }
            }
            Effect::DropAllStatements => {
                for (_, old) in self.statements.drain() {
                    self.descriptions.remove(&old.id);
                }
            }
            Effect::DefinePortal(n, p) => {
                if let Some(old) = self.portals.insert(n.clone(), p.clone()) {
                    self.forget_portal(&old);
                }
            }
            Effect::DropPortal(n) => {
                if let Some(old) = self.portals.remove(n) {
                    self.forget_portal(&old);
                }
            }
            Effect::DropAllPortals => self.drop_portals(|_| true),
        }
    }

    fn forget_portal(&mut self, p: &Portal) {
        self.descriptions.remove(&p.id);
        self.started.remove(&p.id);
    }

    fn drop_portals(&mut self, which: impl Fn(&Portal) -> bool) {
        let gone: Vec<Name> = self
            .portals
            .iter()
            .filter(|(_, p)| which(p))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            if let Some(p) = self.portals.remove(&n) {
                self.forget_portal(&p);
            }
        }
    }

    /// No transaction is open any more: every portal but held cursors is gone.
    pub fn transaction_ended(&mut self) {
        self.drop_portals(|p| !p.holdable);
    }

    pub fn describe(&mut self, id: u64) -> &mut Description {
        self.descriptions.entry(id).or_default()
    }

    pub fn description(&self, id: u64) -> Option<&Description> {
        self.descriptions.get(&id)
    }

    pub fn start(&mut self, portal: u64) {
        self.started.insert(portal);
    }

    pub fn started(&self, portal: u64) -> bool {
        self.started.contains(&portal)
    }

    /// Every statement, for judging again under a reloaded policy.
    pub fn statements(&self) -> impl Iterator<Item = (&Name, &Arc<Statement>)> {
        self.statements.iter()
    }

    pub fn portals(&self) -> impl Iterator<Item = (&Name, &Arc<Portal>)> {
        self.portals.iter()
    }

    /// Replaces definitions judged again (reload): statements by name, portals that ran them.
    pub fn replace(
        &mut self,
        statements: Vec<(Name, Arc<Statement>)>,
        portals: Vec<(Name, Arc<Portal>)>,
    ) {
        for (n, s) in statements {
            self.statements.insert(n, s);
        }
        for (n, p) in portals {
            self.portals.insert(n, p);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn statement(id: u64, text: &str) -> Arc<Statement> {
        Arc::new(Statement {
            id,
            origin: Origin::Parse,
            text: text.into(),
            raw_text: bytes::Bytes::copy_from_slice(text.as_bytes()),
            dialect: crate::sql::Dialect::default(),
            analysis: Arc::new(crate::sql::analyze(
                text,
                crate::sql::Dialect::default(),
                1 << 20,
            )),
            index: 0,
            verdict: Verdict::Allow,
            mask: MaskPlan::Untouched,
            parameter_types: Vec::new(),
        })
    }

    #[test]
    fn names_are_cut_where_the_server_cuts_them() {
        let a = "a".repeat(63);
        assert_eq!(Name::new(&format!("{a}x")), Name::new(&format!("{a}y")));
        assert_ne!(Name::new("s1"), Name::new("S1"));
        assert_eq!(Name::new(&a), Name::new(&format!("{a}zzz")));
    }

    #[test]
    fn definitions_replace_and_drop() {
        let mut r = Registry::default();
        let s = Name::new("s");
        r.apply(&Effect::DefineStatement(
            s.clone(),
            statement(1, "SELECT 1"),
        ));
        r.describe(1).parameter_types = Some(vec![23]);
        r.apply(&Effect::DefineStatement(
            s.clone(),
            statement(2, "SELECT 2"),
        ));
        assert_eq!(r.statement(&s).unwrap().id, 2);
        assert!(
            r.description(1).is_none(),
            "the old definition's description goes with it"
        );
        r.apply(&Effect::DropAllStatements);
        assert!(r.statement(&s).is_none());
    }

    #[test]
    fn only_held_cursors_outlive_a_transaction() {
        let mut r = Registry::default();
        let st = statement(1, "SELECT 1");
        for (name, id, holdable) in [("p", 10, false), ("c", 11, true)] {
            r.apply(&Effect::DefinePortal(
                Name::new(name),
                Arc::new(Portal {
                    id,
                    statement: st.clone(),
                    parameters: Vec::new(),
                    exact: Arc::default(),
                    result_formats: Vec::new(),
                    holdable,
                    cursor: holdable,
                }),
            ));
        }
        r.start(10);
        r.transaction_ended();
        assert!(r.portal(&Name::new("p")).is_none());
        assert!(!r.started(10));
        assert!(r.portal(&Name::new("c")).is_some());
    }
}
