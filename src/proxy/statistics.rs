//! Whether the planner's estimate of a statement can be trusted for `min_rows`: only when every
//! relation its plan scans has statistics the planner reads — analysed (by ANALYZE or autovacuum),
//! with a row count (`pg_class.reltuples` ≥ 0), and not changed much since: by the rows changed
//! since (`n_mod_since_analyze`, which other sessions report with a delay of up to seconds) and by
//! the table's size on disk against the pages that analysis counted (known at once). On a table never
//! analysed the planner guesses (a default selectivity times a size made up from the page count),
//! and a guess must not let a bulk statement past review. Read with pgid's admin connection (the
//! catalog as it is, not as a lease's `search_path` shows it); anything unknown is untrusted.

use super::estimate::Scan;

/// Changes since the last analysis, as a share of the rows it counted, beyond which the statistics
/// are too stale to trust (autovacuum's default analyses at a tenth, plus 50 rows).
const STALE_SHARE: f64 = 0.2;

/// What the catalog says of one scanned relation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelationStatistics {
    /// `pg_class.reltuples`: -1 when never vacuumed or analysed.
    pub reltuples: f32,
    /// `last_analyze` or `last_autoanalyze` is set.
    pub analysed: bool,
    /// `n_mod_since_analyze`.
    pub modified_since: i64,
    /// `pg_class.relpages`: the table's pages when last counted.
    pub relpages: i32,
    /// Its pages now.
    pub pages_now: i64,
}

/// Whether the planner's view of a relation can be trusted.
pub fn known(stats: Option<RelationStatistics>) -> bool {
    match stats {
        None => false,
        Some(s) => {
            s.analysed
                && s.reltuples >= 0.0
                && s.modified_since as f64 <= f64::from(s.reltuples) * STALE_SHARE
                && s.pages_now as f64 <= f64::from(s.relpages.max(0)) * (1.0 + STALE_SHARE)
        }
    }
}

/// Statistics of each scanned relation, by schema and name; `None` for one the catalog (or the
/// statistics views) does not know, a temporary table among them.
const QUERY: &str = "SELECT s.ord, c.reltuples, \
       (t.last_analyze IS NOT NULL OR t.last_autoanalyze IS NOT NULL), \
       coalesce(t.n_mod_since_analyze, 0), c.relpages, \
       pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::bigint \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s(nspname, relname, ord) \
     JOIN pg_catalog.pg_namespace n ON n.nspname = s.nspname \
     JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = s.relname \
     JOIN pg_catalog.pg_stat_all_tables t ON t.relid = c.oid";

/// True only when every scanned relation is [`known`]; false on any error.
pub async fn all_known(pool: &deadpool_postgres::Pool, scans: &[Scan]) -> bool {
    let mut schemas = Vec::with_capacity(scans.len());
    let mut names = Vec::with_capacity(scans.len());
    for s in scans {
        let Some(schema) = &s.schema else {
            return false;
        };
        schemas.push(schema.as_str());
        names.push(s.relation.as_str());
    }
    if scans.is_empty() {
        return true;
    }
    let rows = match pool.get().await {
        Ok(c) => c.query(QUERY, &[&schemas, &names]).await,
        Err(e) => {
            tracing::warn!(error = %crate::errors::Chain(&e), "cannot read planner statistics; the statement goes to review");
            return false;
        }
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %crate::database::pg_message(&e), "cannot read planner statistics; the statement goes to review");
            return false;
        }
    };
    let mut found: Vec<Option<RelationStatistics>> = vec![None; scans.len()];
    for r in rows {
        let ord: i64 = r.get(0);
        if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| found.get_mut(i)) {
            *slot = Some(RelationStatistics {
                reltuples: r.get(1),
                analysed: r.get(2),
                modified_since: r.get(3),
                relpages: r.get(4),
                pages_now: r.get(5),
            });
        }
    }
    found.into_iter().all(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(reltuples: f32, analysed: bool, modified_since: i64) -> Option<RelationStatistics> {
        Some(RelationStatistics {
            reltuples,
            analysed,
            modified_since,
            relpages: 1,
            pages_now: 1,
        })
    }

    fn sized(relpages: i32, pages_now: i64) -> Option<RelationStatistics> {
        Some(RelationStatistics {
            relpages,
            pages_now,
            ..stats(1000.0, true, 0).unwrap()
        })
    }

    #[test]
    fn only_analysed_fresh_statistics_are_trusted() {
        assert!(known(stats(40.0, true, 0)));
        assert!(known(stats(40.0, true, 8)));
        // Never analysed, or analysed never (reltuples from VACUUM or CREATE INDEX only).
        assert!(!known(stats(-1.0, false, 0)));
        assert!(!known(stats(40.0, false, 0)));
        assert!(!known(stats(-1.0, true, 0)));
        // Changed well beyond what the last analysis saw: analysed empty, then filled.
        assert!(!known(stats(0.0, true, 8)));
        assert!(!known(stats(40.0, true, 9)));
        // Unknown to the catalog (a temporary table, a name the plan did not qualify).
        assert!(!known(None));
        // Grown on disk since it was analysed, before the change counts reach the statistics.
        assert!(known(sized(10, 12)));
        assert!(!known(sized(10, 13)));
        assert!(!known(sized(0, 1)));
        assert!(known(sized(0, 0)));
    }
}
