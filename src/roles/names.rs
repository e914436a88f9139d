//! The names a policy's rules use — `[[grant]] on`, `[[mask]] columns`, `[[approval]] tables` —
//! checked against the policy's database. A rule whose table or column does not exist protects
//! nothing (a misspelt mask column came back in clear), so such a policy is refused at start, at
//! reload and by `pgid policy plan` / `policy check --database`, with `file:line`, the rule, the
//! name, and the closest existing name when one is close.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use crate::policy::{NamedObject, ObjectName, Policy, TableRef};

/// Relation kinds a rule may name: tables, views, materialized views, foreign and partitioned
/// tables.
const RELKINDS: &str = "('r', 'v', 'm', 'f', 'p')";

/// One name a policy uses that its database does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingName {
    /// `file:line`.
    pub location: String,
    pub policy: String,
    pub rule: &'static str,
    pub message: String,
}

impl std::fmt::Display for MissingName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: policy {}: {} {}",
            self.location, self.policy, self.rule, self.message
        )
    }
}

/// What the catalog holds, read lazily and once per check.
#[derive(Default)]
struct Catalog {
    schemas: Option<Vec<String>>,
    relations: BTreeMap<String, Vec<String>>,
    columns: BTreeMap<(String, String), Vec<String>>,
}

impl Catalog {
    async fn schemas(
        &mut self,
        c: &impl GenericClient,
    ) -> Result<&[String], tokio_postgres::Error> {
        if self.schemas.is_none() {
            let rows = c
                .query(
                    "SELECT nspname FROM pg_catalog.pg_namespace ORDER BY 1",
                    &[],
                )
                .await?;
            self.schemas = Some(rows.iter().map(|r| r.get(0)).collect());
        }
        Ok(self.schemas.as_deref().unwrap_or_default())
    }

    async fn relations(
        &mut self,
        c: &impl GenericClient,
        schema: &str,
    ) -> Result<&[String], tokio_postgres::Error> {
        if !self.relations.contains_key(schema) {
            let q = format!(
                "SELECT c.relname FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN {RELKINDS} ORDER BY 1"
            );
            let rows = c.query(&q, &[&schema]).await?;
            self.relations
                .insert(schema.to_string(), rows.iter().map(|r| r.get(0)).collect());
        }
        Ok(&self.relations[schema])
    }

    async fn columns(
        &mut self,
        c: &impl GenericClient,
        schema: &str,
        table: &str,
    ) -> Result<&[String], tokio_postgres::Error> {
        let key = (schema.to_string(), table.to_string());
        if !self.columns.contains_key(&key) {
            let q = format!(
                "SELECT a.attname FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN {RELKINDS} \
                 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
            );
            let rows = c.query(&q, &[&schema, &table]).await?;
            self.columns
                .insert(key.clone(), rows.iter().map(|r| r.get(0)).collect());
        }
        Ok(&self.columns[&key])
    }
}

/// Every name of every policy given that `client`'s database lacks (all of them, in file order).
pub async fn check_names(
    client: &impl GenericClient,
    policies: &[&Policy],
) -> Result<Vec<MissingName>, tokio_postgres::Error> {
    let mut catalog = Catalog::default();
    let mut missing = Vec::new();
    for policy in policies {
        for named in &policy.names {
            if let Some(message) = problem(client, &mut catalog, named, &policy.database).await? {
                missing.push(MissingName {
                    location: format!("{}:{}", policy.source.display(), named.line),
                    policy: policy.name.clone(),
                    rule: named.rule,
                    message,
                });
            }
        }
    }
    Ok(missing)
}

/// Why one name does not resolve, if it does not.
async fn problem(
    c: &impl GenericClient,
    catalog: &mut Catalog,
    named: &NamedObject,
    database: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let (schema, table, column) = match &named.object {
        ObjectName::Relation(TableRef::AllInSchema { schema }) => (schema, None, None),
        ObjectName::Relation(TableRef::Table { schema, table }) => (schema, Some(table), None),
        ObjectName::Column(c) => (&c.schema, Some(&c.table), Some(&c.column)),
    };
    let schemas = catalog.schemas(c).await?;
    if !schemas.contains(schema) {
        return Ok(Some(format!(
            "names schema {schema:?}, which does not exist in database {database}{}",
            hint(schema, schemas)
        )));
    }
    let Some(table) = table else {
        return Ok(None);
    };
    let relations = catalog.relations(c, schema).await?;
    if !relations.contains(table) {
        return Ok(Some(format!(
            "names table {schema}.{table}, which does not exist in database {database}{}",
            hint(table, relations)
        )));
    }
    let Some(column) = column else {
        return Ok(None);
    };
    let columns = catalog.columns(c, schema, table).await?;
    if !columns.contains(column) {
        return Ok(Some(format!(
            "names column {schema}.{table}.{column}, which does not exist in database {database}{}",
            hint(column, columns)
        )));
    }
    Ok(None)
}

fn hint(name: &str, candidates: &[String]) -> String {
    match closest(name, candidates) {
        Some(c) => format!(" (did you mean {c:?}?)"),
        None => String::new(),
    }
}

/// The candidate nearest to `name` by edit distance, if it is near enough to be a likely typo
/// (at most a third of the name's length, and at least one edit).
pub fn closest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// Edit distance by characters, a swap of two neighbours counting as one edit (optimal string
/// alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let names: Vec<String> = ["email", "name", "ssn", "card_number"]
            .map(String::from)
            .to_vec();
        assert_eq!(closest("emial", &names), Some("email"));
        assert_eq!(closest("emails", &names), Some("email"));
        assert_eq!(closest("card_numbr", &names), Some("card_number"));
        assert_eq!(closest("sn", &names), Some("ssn"));
        assert_eq!(closest("address", &names), None);
        assert_eq!(closest("x", &[]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("emial", "email"), 1);
    }
}
