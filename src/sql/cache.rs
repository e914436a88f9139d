//! Analyses run on a few dedicated threads with the deep stack they need (never on the async
//! workers), and are cached, so a repeated statement — or one that differs only in literal values
//! the analysis does not read — costs a map lookup.
//!
//! Why a cached analysis is what a fresh one would be: statements are grouped by *shape*
//! ([`super::shape`]: the same tokens, literal values blanked). A fresh analysis reports the
//! constants (`A_Const` nodes) whose values it did not read; every other literal of the
//! statement is *pinned* — the ones it read (set_config's arguments, a SET's values) and the ones
//! the grammar keeps outside constants (a COPY file name, a function body, a type's precision,
//! an option value). Within a shape, entries are keyed by the pinned literals' texts. Which
//! literals are pinned follows from the tree's structure and identifiers, never from a literal's
//! value, so all statements of one shape pin the same positions; two of them with equal pinned
//! texts then differ only in constants whose values nothing reads, the parser copies a constant's
//! value without deciding anything by it, and their analyses are equal. Should a statement of a
//! shape pin other positions all the same, that shape falls back to exact-text keys for good.
//! Refusals (parse errors) are kept by exact text only: their messages quote the text.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use super::tokens::{shaped, Shaped};
use super::{fresh, Analysis, AnalyzeError, Dialect, Fresh, ANALYSIS_STACK};

/// Entries kept before the cache starts over (a statement text is at most max_statement_bytes).
const CACHE_ENTRIES: usize = 20_000;
/// Statements at most this long are analysed on the calling thread: they cannot nest deeply
/// enough to need the analysis stack, and a hop to another thread costs two context switches —
/// more than the analysis itself. Longer ones go to the deep-stack threads.
const INLINE_BYTES: usize = 512;

pub type Outcome = Arc<Result<Analysis, AnalyzeError>>;

/// A statement as the cache looks it up: its text and, when the scanner reads it as the server
/// does, its shape.
pub(super) struct Key<'a> {
    sql: &'a str,
    shaped: Option<Shaped>,
}

impl<'a> Key<'a> {
    pub fn of(sql: &'a str, dialect: Dialect) -> Key<'a> {
        Key {
            sql,
            // The scanner lexes as standard_conforming_strings = on.
            shaped: (!dialect.backslash_escapes).then(|| shaped(sql)).flatten(),
        }
    }

    /// The texts of the literals at `pinned`, as one map key (no literal holds a NUL).
    fn pinned(&self, shaped: &Shaped, pinned: &[usize]) -> String {
        shaped.texts(self.sql, pinned).join("\0")
    }
}

/// The analyses kept for one shape.
enum Family {
    /// By the texts of the pinned literals (`pinned`: indices among the shape's blanked ones).
    Pinned {
        pinned: Vec<usize>,
        entries: HashMap<String, Outcome>,
    },
    /// Statements of this shape disagreed on which literals matter: exact text only.
    Exact,
}

/// The analyses kept for one dialect. Pure: analyses are handed in.
#[derive(Default)]
pub(super) struct Memo {
    shapes: HashMap<String, Family>,
    texts: HashMap<String, Outcome>,
    entries: usize,
}

impl Memo {
    pub fn lookup(&self, key: &Key) -> Option<Outcome> {
        if let Some(s) = &key.shaped {
            if let Some(Family::Pinned { pinned, entries }) = self.shapes.get(&s.shape) {
                if let Some(hit) = entries.get(&key.pinned(s, pinned)) {
                    return Some(hit.clone());
                }
            }
        }
        self.texts.get(key.sql).cloned()
    }

    /// Keeps `fresh`, the analysis of `key`'s statement, and hands it back.
    pub fn remember(&mut self, key: &Key, fresh: Fresh) -> Outcome {
        if self.entries >= CACHE_ENTRIES {
            *self = Memo::default();
        }
        self.entries += 1;
        let outcome = Arc::new(fresh.outcome);
        if let (Some(s), true) = (&key.shaped, outcome.is_ok()) {
            let literals = |at: &BTreeSet<usize>| -> BTreeSet<usize> {
                at.iter().filter_map(|&at| s.literal_at(at)).collect()
            };
            let blank = &literals(&fresh.unread) - &literals(&fresh.read);
            let pinned: Vec<usize> = (0..s.literals.len())
                .filter(|l| !blank.contains(l))
                .collect();
            let family = self
                .shapes
                .entry(s.shape.clone())
                .or_insert_with(|| Family::Pinned {
                    pinned: pinned.clone(),
                    entries: HashMap::new(),
                });
            match family {
                Family::Pinned { pinned: p, entries } if *p == pinned => {
                    entries.insert(key.pinned(s, p), outcome.clone());
                    return outcome;
                }
                Family::Pinned { entries, .. } => {
                    self.entries -= entries.len();
                    *family = Family::Exact;
                }
                Family::Exact => {}
            }
        }
        self.texts.insert(key.sql.to_string(), outcome.clone());
        outcome
    }

    /// Shapes whose statements disagreed on which literals matter.
    #[cfg(test)]
    pub fn disagreements(&self) -> usize {
        self.shapes
            .values()
            .filter(|f| matches!(f, Family::Exact))
            .count()
    }

    /// The kept analysis of `sql`, else a fresh one (then kept).
    #[cfg(test)]
    pub fn analyze(&mut self, sql: &str, dialect: Dialect) -> Outcome {
        let key = Key::of(sql, dialect);
        match self.lookup(&key) {
            Some(hit) => hit,
            None => self.remember(&key, fresh(sql, dialect)),
        }
    }
}

struct Job {
    sql: String,
    dialect: Dialect,
    reply: oneshot::Sender<Fresh>,
}

pub struct Analyzer {
    jobs: Mutex<mpsc::Sender<Job>>,
    cache: Mutex<HashMap<Dialect, Memo>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl Analyzer {
    pub fn start(threads: usize) -> std::io::Result<Arc<Analyzer>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("pgid-sql-{i}"))
                .stack_size(ANALYSIS_STACK)
                .spawn(move || loop {
                    let job = match rx.lock().unwrap().recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    let _ = job.reply.send(fresh(&job.sql, job.dialect));
                })?;
        }
        Ok(Arc::new(Analyzer {
            jobs: Mutex::new(tx),
            cache: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }))
    }

    pub async fn analyze(&self, sql: &str, dialect: Dialect, max_bytes: usize) -> Outcome {
        if sql.len() > max_bytes {
            return Arc::new(Err(AnalyzeError::TooLarge(max_bytes)));
        }
        let key = Key::of(sql, dialect);
        let hit = self
            .cache
            .lock()
            .unwrap()
            .get(&dialect)
            .and_then(|m| m.lookup(&key));
        if let Some(hit) = hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysed = if sql.len() <= INLINE_BYTES {
            fresh(sql, dialect)
        } else {
            let (reply, answer) = oneshot::channel();
            let sent = self.jobs.lock().unwrap().send(Job {
                sql: sql.to_string(),
                dialect,
                reply,
            });
            // A thread that is gone is not the statement's fault: answered, never kept.
            let failed = |why: &str| Arc::new(Err(AnalyzeError::Parse(why.into())));
            match sent {
                Ok(()) => match answer.await {
                    Ok(f) => f,
                    Err(_) => return failed("analysis failed"),
                },
                Err(_) => return failed("analysis is unavailable"),
            }
        };
        self.cache
            .lock()
            .unwrap()
            .entry(dialect)
            .or_default()
            .remember(&key, analysed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cached_and_deep_statements_are_safe_off_the_async_threads() {
        let a = Analyzer::start(1).unwrap();
        let deep = format!("SELECT {}", vec!["1"; 300].join("+"));
        assert!(a.analyze(&deep, Dialect::default(), 1 << 20).await.is_ok());
        assert!(a.analyze(&deep, Dialect::default(), 1 << 20).await.is_ok());
        assert_eq!(
            (
                a.hits.load(Ordering::Relaxed),
                a.misses.load(Ordering::Relaxed)
            ),
            (1, 1)
        );
        assert!(matches!(
            *a.analyze("SELECT 1", Dialect::default(), 3).await,
            Err(AnalyzeError::TooLarge(3))
        ));
    }

    #[test]
    fn literals_the_analysis_reads_are_kept_in_the_key() {
        let d = Dialect::default();
        let mut m = Memo::default();
        let hit = |m: &Memo, sql: &str| m.lookup(&Key::of(sql, d)).is_some();
        m.analyze("SELECT * FROM t WHERE a = 1 AND b = 'x'", d);
        assert!(hit(&m, "SELECT * FROM t WHERE a = 2 AND b = $$y$$"));
        m.analyze("COPY t TO ''", d);
        assert!(!hit(&m, "COPY t TO '/tmp/x'"), "a file name is kept");
        assert!(hit(&m, "COPY t TO ''"));
        m.analyze("SELECT set_config('search_path', 'a', false)", d);
        assert!(!hit(&m, "SELECT set_config('role', 'a', false)"));
        assert!(!hit(&m, "SELECT set_config('search_path', 'b', false)"));
        m.analyze("SET TIME ZONE -7", d);
        assert!(!hit(&m, "SET TIME ZONE -8"), "a folded negative is read");
        m.analyze("SELECT -7", d);
        assert!(hit(&m, "SELECT -8"), "and otherwise blank");
        m.analyze("SELECT 1::float(24)", d);
        assert!(!hit(&m, "SELECT 1::float(0)"), "a precision is no constant");
        assert!(hit(&m, "SELECT 2::float(24)"));
        // Errors are kept by their text only.
        m.analyze("SELECT 1::float(0)", d);
        assert!(!hit(&m, "SELECT 2::float(0)"));
    }

    #[test]
    fn a_shape_whose_statements_disagree_falls_back_to_exact_text() {
        let d = Dialect::default();
        let sql = "SELECT 1";
        let key = Key::of(sql, d);
        let mut m = Memo::default();
        // As if an analysis had read the constant: it is pinned.
        let read = Fresh {
            outcome: Ok(Analysis::default()),
            unread: BTreeSet::new(),
            read: [7].into(),
        };
        m.remember(&key, read);
        assert!(m.lookup(&Key::of("SELECT 2", d)).is_none());
        // A sibling that leaves it blank disagrees: the shape is keyed by text from now on.
        let other = Key::of("SELECT 2", d);
        m.remember(&other, fresh("SELECT 2", d));
        assert!(matches!(
            m.shapes.get(&key.shaped.as_ref().unwrap().shape),
            Some(Family::Exact)
        ));
        assert!(m.lookup(&Key::of("SELECT 3", d)).is_none());
        assert!(m.lookup(&other).is_some());
    }
}
