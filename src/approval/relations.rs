//! Which relations reach an approval rule's tables: the tables themselves, views on them (and
//! views on those), tables whose rewrite rules act on them, their inheritance parents and
//! children (partitions), tables whose rows a foreign key cascades to them from — read from the
//! catalog ([`crate::proxy::relations`]). A statement falls under a rule with tables when a
//! relation it names may be one of those. Pure.
//!
//! Some of those paths change what a statement does on the way: a rewrite rule (`ON INSERT … DO
//! ALSO DELETE FROM t`), a foreign key `ON DELETE SET NULL` (a DELETE there UPDATEs here), a
//! partition (an UPDATE of the partitioned table moves rows out of it: a DELETE there). A
//! relation that reaches a rule's tables through such a path brings a statement of any writing
//! class under the rule, not only one of the rule's own classes.
//!
//! A name pgid cannot vouch for counts as reaching every rule's tables: one that was not in the
//! catalog when it was read (created since, temporary, or a typo the server will refuse anyway),
//! and — once the session has run anything that can create or redefine relations (a temporary
//! view comes first in `search_path`; `CREATE OR REPLACE VIEW` points a known name elsewhere) —
//! every name; once it has run code (which can make rules and triggers), every name through a
//! path that may change what a statement does. An unqualified name that is no relation but a CTE
//! of the statement does not count.

use std::collections::{BTreeSet, HashSet};

/// One approval rule's view of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// (schema, name) of every relation that reaches the rule's tables.
    pub relations: HashSet<(String, String)>,
    /// Those among them whose path may change what a statement does (a rewrite rule that is no
    /// view's, a foreign key that sets NULL or DEFAULT on delete).
    pub converting: HashSet<(String, String)>,
}

/// How a named relation may touch a rule's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touch {
    No,
    /// Doing what the statement does.
    Same,
    /// Perhaps doing something else (any write may become the rule's).
    Converted,
}

/// What the session may have made so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Made {
    /// Relations created or redefined (CREATE, ALTER, DROP, or code).
    pub relations: bool,
    /// Code (functions, DO, CALL), which can make rules and triggers.
    pub code: bool,
}

/// One rule's relations, and their names for unqualified lookups.
#[derive(Debug, Clone, Default)]
struct RuleReach {
    relations: HashSet<(String, String)>,
    names: HashSet<String>,
    converting: HashSet<(String, String)>,
    converting_names: HashSet<String>,
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

fn names(pairs: &HashSet<(String, String)>) -> HashSet<String> {
    pairs.iter().map(|(_, n)| n.clone()).collect()
}

impl Relations {
    pub fn new(known: HashSet<(String, String)>, reach: Vec<Reach>) -> Relations {
        let reach = reach
            .into_iter()
            .map(|r| RuleReach {
                names: names(&r.relations),
                converting_names: names(&r.converting),
                relations: r.relations,
                converting: r.converting,
            })
            .collect();
        Relations {
            known_names: names(&known),
            known,
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

    /// How the relation a statement names as `schema.name` (`schema` empty: unqualified) may
    /// touch the tables of rule `rule`; `ctes`: the statement's CTE names.
    pub fn touch(
        &self,
        rule: usize,
        schema: &str,
        name: &str,
        made: Made,
        ctes: &BTreeSet<String>,
    ) -> Touch {
        let Some(r) = self.reach.get(rule).filter(|_| !self.unknown) else {
            return Touch::Converted;
        };
        let unvouched = if made.code {
            Touch::Converted
        } else {
            Touch::Same
        };
        if made.relations {
            return unvouched.max(self.listed(r, schema, name));
        }
        let known = if schema.is_empty() {
            self.known_names.contains(name) || ctes.contains(name)
        } else {
            self.known.contains(&(schema.to_string(), name.to_string()))
        };
        if !known {
            return unvouched;
        }
        self.listed(r, schema, name)
    }

    /// What the catalog says of a name.
    fn listed(&self, r: &RuleReach, schema: &str, name: &str) -> Touch {
        let (reaches, converts) = if schema.is_empty() {
            (r.names.contains(name), r.converting_names.contains(name))
        } else {
            let key = (schema.to_string(), name.to_string());
            (r.relations.contains(&key), r.converting.contains(&key))
        };
        match (reaches, converts) {
            (_, true) => Touch::Converted,
            (true, false) => Touch::Same,
            _ => Touch::No,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: &str, n: &str) -> (String, String) {
        (s.to_string(), n.to_string())
    }

    fn pairs(p: &[(&str, &str)]) -> HashSet<(String, String)> {
        p.iter().map(|(s, n)| pair(s, n)).collect()
    }

    fn catalog() -> Relations {
        let known = pairs(&[
            ("crm", "orders"),
            ("crm", "orders_2026"),
            ("crm", "open_orders"),
            ("crm", "tickets"),
            ("crm", "outbox"),
            ("public", "orders"),
        ]);
        let reach = Reach {
            relations: pairs(&[
                ("crm", "orders"),
                ("crm", "orders_2026"),
                ("crm", "open_orders"),
                ("crm", "outbox"),
            ]),
            converting: pairs(&[("crm", "outbox")]),
        };
        Relations::new(known, vec![reach])
    }

    #[test]
    fn views_partitions_rules_and_unknown_names_reach_the_rule() {
        use Touch::*;
        let c = catalog();
        let none = BTreeSet::new();
        let fresh = Made::default();
        let t =
            |s: &str, n: &str, made: Made, ctes: &BTreeSet<String>| c.touch(0, s, n, made, ctes);
        assert_eq!(t("crm", "open_orders", fresh, &none), Same);
        assert_eq!(t("crm", "orders_2026", fresh, &none), Same);
        assert_eq!(t("crm", "outbox", fresh, &none), Converted);
        assert_eq!(t("", "outbox", fresh, &none), Converted);
        assert_eq!(t("crm", "tickets", fresh, &none), No);
        // Not in the catalog: created since, temporary, or another schema's.
        assert_eq!(t("crm", "new_view", fresh, &none), Same);
        assert_eq!(t("pg_temp", "tickets", fresh, &none), Same);
        // Unqualified: any relation of the name may be the one search_path finds.
        assert_eq!(t("", "orders", fresh, &none), Same);
        assert_eq!(t("", "tickets", fresh, &none), No);
        assert_eq!(t("", "o", fresh, &none), Same);
        // A CTE is no relation, unless the session may have made a temporary one of the name.
        let ctes = BTreeSet::from(["o".to_string()]);
        assert_eq!(t("", "o", fresh, &ctes), No);
        let made = Made {
            relations: true,
            code: false,
        };
        assert_eq!(t("", "o", made, &ctes), Same);
        assert_eq!(t("crm", "tickets", made, &none), Same);
        assert_eq!(t("crm", "outbox", made, &none), Converted);
        let coded = Made {
            relations: true,
            code: true,
        };
        assert_eq!(t("crm", "tickets", coded, &none), Converted);
        // Nothing known: everything counts, whatever it does.
        assert_eq!(
            Relations::unreadable().touch(0, "crm", "tickets", fresh, &none),
            Converted
        );
    }
}
