//! What a policy's `[[mask]]` columns are in the database: their table OIDs and attribute numbers
//! (RowDescription names result columns that way), and the columns of views and materialized
//! views built on them (a view's RowDescription names the view, not the base column), resolved
//! through each view's definition. Looked up with pgid's admin connection and cached for a short while per
//! database and policy, so a table created or a view defined later is picked up.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mask::rows::Origins;
use crate::mask::MaskedColumn;
use crate::policy::{MaskMethod, Policy};
use crate::sql::{Analyzer, Dialect};

/// How long a resolved catalog is reused.
const CATALOG_TTL: Duration = Duration::from_secs(30);
/// Views on views on masked columns are followed this deep; a deeper chain refuses the
/// policy's sessions rather than leave its last views unmasked.
const MAX_VIEW_DEPTH: usize = 64;

/// A policy's masks as the proxy applies them.
#[derive(Debug, Default)]
pub struct MaskSetup {
    /// For planning: masked columns and views by name.
    pub columns: Vec<MaskedColumn>,
    /// For results: masked columns and views by OID.
    pub origins: Origins,
    /// The deployment's key for `hash`.
    pub key: [u8; 32],
    /// Functions defined in the database (not built in), by name.
    pub user_functions: BTreeSet<String>,
}

type Cache = HashMap<(String, String), (Instant, Arc<MaskSetup>)>;

#[derive(Default)]
pub struct MaskCatalog {
    cache: Mutex<Cache>,
}

impl MaskCatalog {
    /// Forgets every resolved policy (the policies were reloaded).
    pub fn clear(&self) {
        self.cache.lock().unwrap().clear();
    }

    /// The masks of `policy` in its database; `None` when it has none.
    pub async fn resolve(
        &self,
        policy: &Policy,
        pool: &deadpool_postgres::Pool,
        analyzer: &Analyzer,
        key: [u8; 32],
    ) -> Result<Option<Arc<MaskSetup>>, String> {
        if policy.masks.is_empty() {
            return Ok(None);
        }
        let id = (policy.database.clone(), policy.name.clone());
        if let Some((at, setup)) = self.cache.lock().unwrap().get(&id) {
            if at.elapsed() < CATALOG_TTL {
                return Ok(Some(setup.clone()));
            }
        }
        let setup = Arc::new(lookup(policy, pool, analyzer, key).await?);
        self.cache
            .lock()
            .unwrap()
            .insert(id, (Instant::now(), setup.clone()));
        Ok(Some(setup))
    }
}

async fn lookup(
    policy: &Policy,
    pool: &deadpool_postgres::Pool,
    analyzer: &Analyzer,
    key: [u8; 32],
) -> Result<MaskSetup, String> {
    let c = pool
        .get()
        .await
        .map_err(|e| format!("masking catalog: {}", crate::database::pool_message(&e)))?;
    let err =
        |e: tokio_postgres::Error| format!("masking catalog: {}", crate::database::pg_message(&e));
    let mut setup = MaskSetup {
        key,
        ..MaskSetup::default()
    };
    let (mut schemas, mut tables, mut columns) = (Vec::new(), Vec::new(), Vec::new());
    for m in &policy.masks {
        for col in &m.columns {
            schemas.push(col.schema.clone());
            tables.push(col.table.clone());
            columns.push(col.column.clone());
            setup.columns.push(MaskedColumn {
                schema: col.schema.clone(),
                table: col.table.clone(),
                column: Some(col.column.clone()),
                method: m.method,
                keep: m.keep,
            });
        }
    }
    let rows = c
        .query(
            "SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS m(s, t, col)
               ON n.nspname = m.s AND c.relname = m.t AND a.attname = m.col
             WHERE a.attnum > 0 AND NOT a.attisdropped",
            &[&schemas, &tables, &columns],
        )
        .await
        .map_err(err)?;
    let method_of = |schema: &str, table: &str, column: &str| {
        setup
            .columns
            .iter()
            .find(|m| m.schema == schema && m.table == table && m.column.as_deref() == Some(column))
            .map(|m| (m.method, m.keep))
    };
    let mut found = HashMap::new();
    let mut resolved: BTreeSet<(String, String, String)> = BTreeSet::new();
    for r in &rows {
        let oid: u32 = r.get(0);
        let attnum: i16 = r.get(1);
        let (s, t, col): (String, String, String) = (r.get(2), r.get(3), r.get(4));
        if let Some(m) = method_of(&s, &t, &col) {
            found.insert((oid, attnum), m);
        }
        resolved.insert((s, t, col));
    }
    // A masked column the database no longer has by that name (renamed or dropped since the
    // policy was checked at start or reload): masking by name would find nothing and let the
    // values through, so the policy's sessions are refused until policy and database agree.
    for col in policy.masks.iter().flat_map(|m| &m.columns) {
        if !resolved.contains(&(col.schema.clone(), col.table.clone(), col.column.clone())) {
            return Err(format!(
                "masking catalog: policy {}: masked column {col} does not exist in database {}",
                policy.name, policy.database
            ));
        }
    }
    // Inheritance parents and children (partitions) of a masked table hold the same column under
    // the same name, and their rows are read through one another: masked there too.
    let direct: Vec<(u32, String, (MaskMethod, usize))> = rows
        .iter()
        .filter_map(|r| {
            let (s, t, col): (String, String, String) = (r.get(2), r.get(3), r.get(4));
            method_of(&s, &t, &col).map(|m| (r.get::<_, u32>(0), col, m))
        })
        .collect();
    for (oid, column, method) in direct {
        let relatives = c
            .query(
                "WITH RECURSIVE edges(a, b) AS (
                     SELECT inhrelid, inhparent FROM pg_inherits
                     UNION SELECT inhparent, inhrelid FROM pg_inherits),
                 linked(oid) AS (
                     SELECT $1::oid UNION SELECT e.b FROM edges e JOIN linked l ON e.a = l.oid)
                 SELECT c.oid, a.attnum, n.nspname::text, c.relname::text
                 FROM linked l
                 JOIN pg_class c ON c.oid = l.oid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2
                  AND a.attnum > 0 AND NOT a.attisdropped
                 WHERE c.oid <> $1::oid",
                &[&oid, &column],
            )
            .await
            .map_err(err)?;
        for r in &relatives {
            found.insert((r.get(0), r.get(1)), method);
            setup.columns.push(MaskedColumn {
                schema: r.get(2),
                table: r.get(3),
                column: Some(column.clone()),
                method: method.0,
                keep: method.1,
            });
        }
    }
    // Views (and materialized views) reading masked columns, then views reading those. Each
    // view's definition is analysed like a statement: an output that is a masked column, or is
    // built from one, is masked; when that cannot be told, every column of the view is.
    let mut masked_relations: HashMap<u32, (MaskMethod, usize)> = HashMap::new();
    let mut done: BTreeSet<u32> = BTreeSet::new();
    let mut frontier: BTreeSet<u32> = found.keys().map(|(oid, _)| *oid).collect();
    // A view that calls a function defined in the database may return anything that function
    // reads — a masked column among it — under a name no analysis of the view's text shows:
    // masked whole, as are views on it.
    for r in &c
        .query(
            "SELECT DISTINCT v.oid, vn.nspname::text, v.relname::text
             FROM pg_depend d
             JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
             JOIN pg_class v ON v.oid = r.ev_class
             JOIN pg_namespace vn ON vn.oid = v.relnamespace
             JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid
             JOIN pg_namespace pn ON pn.oid = p.pronamespace
             WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(err)?
    {
        let view: u32 = r.get(0);
        masked_relations.insert(view, (MaskMethod::Redact, 0));
        setup.columns.push(MaskedColumn {
            schema: r.get(1),
            table: r.get(2),
            column: None,
            method: MaskMethod::Redact,
            keep: 0,
        });
        done.insert(view);
        frontier.insert(view);
    }
    for depth in 0.. {
        if frontier.is_empty() {
            break;
        }
        if depth == MAX_VIEW_DEPTH {
            return Err(format!(
                "masking catalog: views on masked columns are nested deeper than {MAX_VIEW_DEPTH}"
            ));
        }
        let oids: Vec<u32> = frontier.iter().copied().collect();
        let views = c
            .query(
                "SELECT DISTINCT v.oid, vn.nspname, v.relname, pg_get_viewdef(v.oid),
                        ARRAY(SELECT a.attnum FROM pg_attribute a
                              WHERE a.attrelid = v.oid AND a.attnum > 0 AND NOT a.attisdropped
                              ORDER BY a.attnum),
                        ARRAY(SELECT a.attname::text FROM pg_attribute a
                              WHERE a.attrelid = v.oid AND a.attnum > 0 AND NOT a.attisdropped
                              ORDER BY a.attnum)
                 FROM pg_depend d
                 JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
                 JOIN pg_class v ON v.oid = r.ev_class
                 JOIN pg_namespace vn ON vn.oid = v.relnamespace
                 WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY($1::oid[])
                   AND v.oid <> d.refobjid",
                &[&oids],
            )
            .await
            .map_err(err)?;
        let mut next = BTreeSet::new();
        for r in &views {
            let (view, schema, name, definition): (u32, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if !done.insert(view) {
                continue;
            }
            // The view's columns in order, fetched with it (one query per level, not per view).
            let (attnums, attnames): (Vec<i16>, Vec<String>) = (r.get(4), r.get(5));
            let attributes: Vec<(i16, String)> = attnums.into_iter().zip(attnames).collect();
            let analysis = analyzer
                .analyze(&definition, Dialect::default(), usize::MAX)
                .await;
            let outputs = match &*analysis {
                Ok(a) if a.statements.len() == 1 => {
                    crate::mask::plan::view_outputs(&a.statements[0], &setup.columns)
                }
                _ => None,
            };
            match outputs {
                Some(map) if map.is_empty() => {}
                Some(map) => {
                    for (i, method) in map {
                        let Some((attnum, attname)) = attributes.get(i) else {
                            continue;
                        };
                        found.insert((view, *attnum), method);
                        setup.columns.push(MaskedColumn {
                            schema: schema.clone(),
                            table: name.clone(),
                            column: Some(attname.clone()),
                            method: method.0,
                            keep: method.1,
                        });
                    }
                    next.insert(view);
                }
                None => {
                    masked_relations.insert(view, (MaskMethod::Redact, 0));
                    setup.columns.push(MaskedColumn {
                        schema,
                        table: name,
                        column: None,
                        method: MaskMethod::Redact,
                        keep: 0,
                    });
                    next.insert(view);
                }
            }
        }
        frontier = next;
    }
    setup.user_functions = c
        .query(
            "SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    setup.origins = Origins {
        columns: found,
        relations: masked_relations,
    };
    Ok(setup)
}
