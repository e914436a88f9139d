//! Which relations reach an approval rule's tables: the tables themselves, views on them (and
//! views on those), tables whose rewrite rules act on them, and their inheritance parents and
//! children (partitions), tables whose rows a foreign key cascades to them from — read from the
//! catalog ([`crate::proxy::relations`]). A statement
//! falls under a rule with tables when a relation it names may be one of those. Pure.
//!
//! A name pgid cannot vouch for counts as reaching every rule's tables: one that was not in the
//! catalog when it was read (created since, temporary, or a typo the server will refuse anyway),
//! and — once the session has run anything that can create or redefine relations (a temporary
//! view comes first in `search_path`; `CREATE OR REPLACE VIEW` points a known name elsewhere) —
//! every name. An unqualified name that is no relation but a CTE of the statement does not
//! count.

use std::collections::{BTreeSet, HashSet};

/// One approval rule's view of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// (schema, name) of every relation that reaches the rule's tables.
    pub relations: HashSet<(String, String)>,
}

/// One rule's relations, and their names for unqualified lookups.
#[derive(Debug, Clone, Default)]
struct RuleReach {
    relations: HashSet<(String, String)>,
    names: HashSet<String>,
}

/// The catalog as the approval rules of one policy need it.
#[derive(Debug, Clone, Default)]
pub struct Relations {
    /// (schema, name) of every relation when the catalog was read (temporary ones excluded).
    known: HashSet<(String, String)>,
    known_names: HashSet<String>,
    /// Per approval rule, in the policy's order (rules without tables have an empty one).
    reach: Vec<RuleReach>,
    /// The catalog could not be read: every name counts as reaching every rule's tables.
    unknown: bool,
}

impl Relations {
    pub fn new(known: HashSet<(String, String)>, reach: Vec<Reach>) -> Relations {
        let known_names = known.iter().map(|(_, n)| n.clone()).collect();
        let reach = reach
            .into_iter()
            .map(|r| RuleReach {
                names: r.relations.iter().map(|(_, n)| n.clone()).collect(),
                relations: r.relations,
            })
            .collect();
        Relations {
            known,
            known_names,
            reach,
            unknown: false,
        }
    }

    /// When the catalog cannot be read: nothing is vouched for.
    pub fn unreadable() -> Relations {
        Relations {
            unknown: true,
            ..Relations::default()
        }
    }

    /// Whether the relation a statement names as `schema.name` (`schema` empty: unqualified) may
    /// reach the tables of rule `rule`. `created`: the session may have created relations;
    /// `ctes`: the statement's CTE names.
    pub fn may_reach(
        &self,
        rule: usize,
        schema: &str,
        name: &str,
        created: bool,
        ctes: &BTreeSet<String>,
    ) -> bool {
        if self.unknown || created {
            return true;
        }
        let Some(RuleReach { relations, names }) = self.reach.get(rule) else {
            return true;
        };
        if schema.is_empty() {
            if names.contains(name) {
                return true;
            }
            return !self.known_names.contains(name) && !ctes.contains(name);
        }
        let key = (schema.to_string(), name.to_string());
        relations.contains(&key) || !self.known.contains(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: &str, n: &str) -> (String, String) {
        (s.to_string(), n.to_string())
    }

    fn catalog() -> Relations {
        let known = [
            ("crm", "orders"),
            ("crm", "orders_2026"),
            ("crm", "open_orders"),
            ("crm", "tickets"),
            ("public", "orders"),
        ]
        .iter()
        .map(|(s, n)| pair(s, n))
        .collect();
        let reach = Reach {
            relations: [
                ("crm", "orders"),
                ("crm", "orders_2026"),
                ("crm", "open_orders"),
            ]
            .iter()
            .map(|(s, n)| pair(s, n))
            .collect(),
        };
        Relations::new(known, vec![reach])
    }

    #[test]
    fn views_partitions_and_unknown_names_reach_the_rule() {
        let c = catalog();
        let none = BTreeSet::new();
        assert!(c.may_reach(0, "crm", "open_orders", false, &none));
        assert!(c.may_reach(0, "crm", "orders_2026", false, &none));
        assert!(!c.may_reach(0, "crm", "tickets", false, &none));
        // Not in the catalog: created since, temporary, or another schema's.
        assert!(c.may_reach(0, "crm", "new_view", false, &none));
        assert!(c.may_reach(0, "pg_temp", "tickets", false, &none));
        // Unqualified: any relation of the name may be the one search_path finds.
        assert!(c.may_reach(0, "", "orders", false, &none));
        assert!(!c.may_reach(0, "", "tickets", false, &none));
        assert!(c.may_reach(0, "", "o", false, &none));
        // A CTE is no relation, unless the session may have made a temporary one of the name.
        let ctes = BTreeSet::from(["o".to_string()]);
        assert!(!c.may_reach(0, "", "o", false, &ctes));
        assert!(c.may_reach(0, "", "o", true, &ctes));
        assert!(c.may_reach(0, "", "tickets", true, &none));
        assert!(c.may_reach(0, "crm", "tickets", true, &none));
        // Nothing known: everything counts.
        assert!(Relations::unreadable().may_reach(0, "crm", "tickets", false, &none));
    }
}
