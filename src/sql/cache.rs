//! Analyses run on a few dedicated threads with the deep stack they need (never on the async
//! workers), and are cached by statement text, so a repeated statement costs a map lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use super::{analyze, Analysis, AnalyzeError, Dialect, ANALYSIS_STACK};

/// Entries kept before the cache starts over (a statement text is at most max_statement_bytes).
const CACHE_ENTRIES: usize = 20_000;
/// Statements at most this long are analysed on the calling thread: they cannot nest deeply
/// enough to need the analysis stack, and a hop to another thread costs two context switches —
/// more than the analysis itself. Longer ones go to the deep-stack threads.
const INLINE_BYTES: usize = 512;

pub type Outcome = Arc<Result<Analysis, AnalyzeError>>;

struct Job {
    sql: String,
    dialect: Dialect,
    reply: oneshot::Sender<Outcome>,
}

pub struct Analyzer {
    jobs: Mutex<mpsc::Sender<Job>>,
    cache: Mutex<HashMap<Dialect, HashMap<String, Outcome>>>,
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
                    let outcome = Arc::new(analyze(&job.sql, job.dialect, usize::MAX));
                    let _ = job.reply.send(outcome);
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
        // Keyed by shape (literals blanked) where the lexer allows, else by the exact text.
        let key = super::shape(sql, dialect).unwrap_or_else(|| sql.to_string());
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap()
            .get(&dialect)
            .and_then(|m| m.get(&key))
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit.clone();
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if sql.len() <= INLINE_BYTES {
            let outcome = Arc::new(analyze(sql, dialect, usize::MAX));
            self.remember(key, dialect, &outcome);
            return outcome;
        }
        let (reply, answer) = oneshot::channel();
        let sent = self.jobs.lock().unwrap().send(Job {
            sql: sql.to_string(),
            dialect,
            reply,
        });
        let outcome = match sent {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Arc::new(Err(AnalyzeError::Parse("analysis failed".into())))),
            Err(_) => Arc::new(Err(AnalyzeError::Parse("analysis is unavailable".into()))),
        };
        self.remember(key, dialect, &outcome);
        outcome
    }

    fn remember(&self, key: String, dialect: Dialect, outcome: &Outcome) {
        let mut cache = self.cache.lock().unwrap();
        let entries = cache.entry(dialect).or_default();
        if entries.len() >= CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key, outcome.clone());
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
}
