//! The names a policy's rules use — `[[grant]]` tables, schemas, sequences, types and functions,
//! `[[mask]] columns`, `[[approval]] tables` — checked against the policy's database. A rule
//! whose object does not exist protects nothing (a misspelt mask column came back in clear), so
//! such a policy is refused at start, at reload and by `pgid policy plan` / `policy check
//! --database`, with `file:line`, the rule, the name, and the closest existing name when one is
//! close.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use super::objects::{self, Listing, RELKINDS};
use crate::database::pg_message;
use crate::policy::{FunctionRef, NamedObject, ObjectName, ObjectRef, Policy, TableRef};

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
    listings: BTreeMap<(Listing, String), Vec<String>>,
    columns: BTreeMap<(String, String), Vec<String>>,
    routines: BTreeMap<String, Vec<String>>,
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
        self.listed(c, Listing::Relations, schema).await
    }

    /// The names of one kind of object in a schema.
    async fn listed(
        &mut self,
        c: &impl GenericClient,
        listing: Listing,
        schema: &str,
    ) -> Result<&[String], tokio_postgres::Error> {
        let key = (listing, schema.to_string());
        if !self.listings.contains_key(&key) {
            let rows = c
                .query(&format!("{} ORDER BY 1", listing.query()), &[&schema])
                .await?;
            self.listings
                .insert(key.clone(), rows.iter().map(|r| r.get(0)).collect());
        }
        Ok(&self.listings[&key])
    }

    async fn routine_names(
        &mut self,
        c: &impl GenericClient,
        schema: &str,
    ) -> Result<&[String], tokio_postgres::Error> {
        if !self.routines.contains_key(schema) {
            let rows = c
                .query(
                    "SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p \
                     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                     WHERE n.nspname = $1 ORDER BY 1",
                    &[&schema],
                )
                .await?;
            self.routines
                .insert(schema.to_string(), rows.iter().map(|r| r.get(0)).collect());
        }
        Ok(&self.routines[schema])
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
/// Function signatures are resolved in a savepoint of their own (a nested transaction), so that
/// a type name the server cannot parse is reported like a missing one.
pub async fn check_names<C: GenericClient + Send + Sync>(
    client: &mut C,
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
async fn problem<C: GenericClient + Send + Sync>(
    c: &mut C,
    catalog: &mut Catalog,
    named: &NamedObject,
    database: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let schema = match &named.object {
        ObjectName::Relation(t) => t.schema(),
        ObjectName::Column(col) => &col.schema,
        ObjectName::Schema(s) => s,
        ObjectName::Sequence(r) | ObjectName::Type(r) => r.schema(),
        ObjectName::Function(f) => f.schema(),
    };
    let schemas = catalog.schemas(&*c).await?;
    if !schemas.iter().any(|s| s == schema) {
        return Ok(Some(format!(
            "names schema {schema:?}, which does not exist in database {database}{}",
            hint(schema, schemas)
        )));
    }
    let (table, column) = match &named.object {
        ObjectName::Relation(TableRef::AllInSchema { .. }) | ObjectName::Schema(_) => {
            return Ok(None)
        }
        ObjectName::Relation(TableRef::Table { table, .. }) => (table, None),
        ObjectName::Column(col) => (&col.table, Some(&col.column)),
        ObjectName::Sequence(r) => {
            return listed(c, catalog, Listing::Sequences, r, database).await
        }
        ObjectName::Type(r) => return listed(c, catalog, Listing::Types, r, database).await,
        ObjectName::Function(f) => return function(c, catalog, f, database).await,
    };
    let relations = catalog.relations(&*c, schema).await?;
    if !relations.contains(table) {
        return Ok(Some(format!(
            "names table {schema}.{table}, which does not exist in database {database}{}",
            hint(table, relations)
        )));
    }
    let Some(column) = column else {
        return Ok(None);
    };
    let columns = catalog.columns(&*c, schema, table).await?;
    if !columns.contains(column) {
        return Ok(Some(format!(
            "names column {schema}.{table}.{column}, which does not exist in database {database}{}",
            hint(column, columns)
        )));
    }
    Ok(None)
}

/// A sequence or type named in its schema (whose existence is already checked).
async fn listed(
    c: &impl GenericClient,
    catalog: &mut Catalog,
    listing: Listing,
    target: &ObjectRef,
    database: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let ObjectRef::Named { schema, name } = target else {
        return Ok(None);
    };
    let names = catalog.listed(c, listing, schema).await?;
    if names.contains(name) {
        return Ok(None);
    }
    let what = match listing {
        Listing::Sequences => "sequence",
        _ => "type",
    };
    Ok(Some(format!(
        "names {what} {schema}.{name}, which does not exist in database {database}{}",
        hint(name, names)
    )))
}

/// A function by its signature: every argument type must exist, and a routine taking exactly
/// those types.
async fn function<C: GenericClient + Send + Sync>(
    c: &mut C,
    catalog: &mut Catalog,
    target: &FunctionRef,
    database: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let FunctionRef::Signature { schema, name, args } = target else {
        return Ok(None);
    };
    let savepoint = c.transaction().await?;
    let types = match objects::argument_types(&savepoint, args).await {
        Ok(types) => {
            savepoint.commit().await?;
            types
        }
        Err(e) if e.as_db_error().is_some() => {
            savepoint.rollback().await?;
            return Ok(Some(format!(
                "names function {target}, whose argument types the server cannot read: {}",
                pg_message(&e)
            )));
        }
        Err(e) => return Err(e),
    };
    let oids = match types {
        Ok(oids) => oids,
        Err(arg) => {
            return Ok(Some(format!(
                "names function {target}, whose argument type {arg:?} does not exist in \
                 database {database}"
            )))
        }
    };
    if objects::routine(&*c, schema, name, &oids).await?.is_some() {
        return Ok(None);
    }
    let same_name: Vec<String> = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = $1 AND p.proname = $2 ORDER BY 1",
            &[schema, name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let found = if !same_name.is_empty() {
        format!(" (there is {})", same_name.join(", "))
    } else {
        let names: Vec<String> = catalog.routine_names(&*c, schema).await?.to_vec();
        hint(name, &names)
    };
    Ok(Some(format!(
        "names function {target}, which does not exist in database {database}{found}"
    )))
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
