//! Reads, for a policy's `[[approval]]` rules that name tables, which relations reach those
//! tables in the catalog (`crate::approval::relations`): views and their nesting, tables whose
//! rewrite rules act on them, inheritance parents and children (partitions), tables they refer
//! to by foreign key (cascades) — with pgid's admin
//! connection, when a session starts and when policies are reloaded. A catalog that cannot be
//! read vouches for nothing (every named relation then counts as reaching the rules' tables).

use std::collections::HashSet;
use std::sync::Arc;

use crate::approval::{Reach, Relations};
use crate::policy::{Policy, TableRef};

/// Every relation a statement can name (temporary ones of other sessions and TOAST left out).
const KNOWN: &str = "SELECT n.nspname::text, c.relname::text
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// The relations that reach the tables given as ($1 schema, $2 table or '*' for all in the
/// schema): the tables, and every relation with an edge to one already found — a rewrite rule
/// (a view's, or a rule on a table, on itself too) that refers to it, an inheritance link
/// either way, or a foreign key referring from it (a DELETE, UPDATE or TRUNCATE … CASCADE of the
/// referenced table can delete or change the referring rows) — each with whether its path may
/// change what a statement does (a rule that is no view's `_RETURN`, a foreign key that sets
/// NULL or DEFAULT on delete, a partition: an UPDATE moves rows out of one, as a DELETE there).
const REACHING: &str = "WITH RECURSIVE
    targets AS (
        SELECT c.oid FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN unnest($1::text[], $2::text[]) AS t(s, r)
          ON n.nspname = t.s AND (t.r = '*' OR c.relname = t.r)),
    edges(src, dst, converts) AS (
        SELECT DISTINCT rw.ev_class, d.refobjid, rw.rulename <> '_RETURN' FROM pg_rewrite rw
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
         AND d.refclassid = 'pg_class'::regclass
         AND (d.refobjid <> rw.ev_class OR rw.rulename <> '_RETURN')
        UNION SELECT i.inhrelid, i.inhparent, p.relkind = 'p' FROM pg_inherits i
              JOIN pg_class p ON p.oid = i.inhparent
        UNION SELECT i.inhparent, i.inhrelid, p.relkind = 'p' FROM pg_inherits i
              JOIN pg_class p ON p.oid = i.inhparent
        UNION SELECT confrelid, conrelid, confdeltype IN ('n', 'd')
              FROM pg_constraint WHERE contype = 'f'),
    reaching(oid, converts) AS (
        SELECT oid, false FROM targets
        UNION SELECT e.src, r.converts OR e.converts FROM edges e JOIN reaching r ON e.dst = r.oid)
    SELECT n.nspname::text, c.relname::text, bool_or(r.converts) FROM reaching r
    JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace
    GROUP BY 1, 2";

/// `None` when no approval rule of the policy names tables.
pub async fn resolve(policy: &Policy, pool: &deadpool_postgres::Pool) -> Option<Arc<Relations>> {
    if policy.approvals.iter().all(|a| a.tables.is_empty()) {
        return None;
    }
    Some(Arc::new(match read(policy, pool).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(policy = %policy.name, error = %e,
                "cannot read which relations reach the approval rules' tables; every statement of their kinds goes to review");
            Relations::unreadable()
        }
    }))
}

async fn read(policy: &Policy, pool: &deadpool_postgres::Pool) -> Result<Relations, String> {
    let c = pool
        .get()
        .await
        .map_err(|e| crate::database::pool_message(&e))?;
    let pairs = |rows: Vec<tokio_postgres::Row>| -> HashSet<(String, String)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let known = pairs(
        c.query(KNOWN, &[])
            .await
            .map_err(|e| crate::database::pg_message(&e))?,
    );
    let mut reach = Vec::new();
    for rule in &policy.approvals {
        let (mut schemas, mut tables) = (Vec::new(), Vec::new());
        for t in &rule.tables {
            schemas.push(t.schema().to_string());
            tables.push(match t {
                TableRef::Table { table, .. } => table.clone(),
                TableRef::AllInSchema { .. } => "*".to_string(),
            });
        }
        let mut r = Reach::default();
        if !tables.is_empty() {
            for row in c
                .query(REACHING, &[&schemas, &tables])
                .await
                .map_err(|e| crate::database::pg_message(&e))?
            {
                let name: (String, String) = (row.get(0), row.get(1));
                if row.get::<_, bool>(2) {
                    r.converting.insert(name.clone());
                }
                r.relations.insert(name);
            }
        }
        reach.push(r);
    }
    Ok(Relations::new(known, reach))
}
