//! The hash chain of the audit file, pure. Each line is a JSON object whose last two fields are
//! `"prev"` (the previous line's hash) and `"hash"`: SHA-256, in hex, of the line's bytes up to
//! and including the `"prev"` field, closed with `}`. Verifying needs no JSON re-serialisation: it
//! hashes exactly the bytes that were written, so any flipped byte or removed line breaks the
//! chain at that line.

use sha2::{Digest, Sha256};

/// `prev` of the first line of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"<64 hex>"}`
const HASH_SUFFIX_LEN: usize = ",\"hash\":\"".len() + 64 + "\"}".len();

/// Appends `prev` and `hash` to a serialised JSON object; returns the line (no newline) and its hash.
pub fn seal(object_json: &str, prev: &str) -> (String, String) {
    let mut line = String::new();
    let hash = seal_into(&mut line, object_json, prev);
    (line, hash)
}

/// [`seal`], appending the line to `out` (on the statement path: one buffer, no temporaries).
pub fn seal_into(out: &mut String, object_json: &str, prev: &str) -> String {
    debug_assert!(object_json.starts_with('{') && object_json.ends_with('}'));
    let open = &object_json[..object_json.len() - 1];
    let start = out.len();
    out.reserve(open.len() + prev.len() + 100);
    out.push_str(open);
    if open.len() > 1 {
        out.push(',');
    }
    out.push_str("\"prev\":\"");
    out.push_str(prev);
    out.push('"');
    let mut hasher = Sha256::new();
    hasher.update(&out.as_bytes()[start..]);
    hasher.update(b"}");
    let digest = hasher.finalize();
    let mut hex = [0u8; 64];
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in digest.iter().enumerate() {
        hex[2 * i] = DIGITS[(b >> 4) as usize];
        hex[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    let hash = std::str::from_utf8(&hex).unwrap_or_default();
    out.push_str(",\"hash\":\"");
    out.push_str(hash);
    out.push_str("\"}");
    hash.to_string()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Broken {
    /// The line is not a sealed object.
    Malformed(&'static str),
    /// Its `prev` is not the previous line's hash (a line was removed, reordered or edited).
    Chain { expected: String, found: String },
    /// Its bytes do not hash to its `hash` (the line was edited).
    Hash,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Malformed(why) => write!(f, "not an audit record: {why}"),
            Broken::Chain { expected, found } => {
                write!(
                    f,
                    "chain broken: prev is {}…, expected {}…",
                    &found[..found.len().min(12)],
                    &expected[..expected.len().min(12)]
                )
            }
            Broken::Hash => write!(
                f,
                "record was modified: its hash does not match its content"
            ),
        }
    }
}

/// Checks one line against the previous hash; returns this line's hash.
pub fn check(line: &str, prev: &str) -> Result<String, Broken> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.starts_with('{') || !line.ends_with("\"}") {
        return Err(Broken::Malformed("truncated"));
    }
    let hash = hash_of(line).ok_or(Broken::Malformed("no hash"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Broken::Malformed("bad hash"));
    }
    let body = format!("{}}}", &line[..line.len() - HASH_SUFFIX_LEN]);
    let found_prev = prev_of(line).ok_or(Broken::Malformed("no prev"))?;
    if found_prev != prev {
        return Err(Broken::Chain {
            expected: prev.to_string(),
            found: found_prev.to_string(),
        });
    }
    if hex::encode(Sha256::digest(body.as_bytes())) != hash {
        return Err(Broken::Hash);
    }
    // The content must still be a JSON object, so tools can read what the chain protects.
    if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line).is_err() {
        return Err(Broken::Malformed("not JSON"));
    }
    Ok(hash.to_string())
}

/// The hash a line claims (not checked).
pub fn hash_of(line: &str) -> Option<&str> {
    line.get(line.len().checked_sub(HASH_SUFFIX_LEN)?..)?
        .strip_prefix(",\"hash\":\"")?
        .strip_suffix("\"}")
}

/// The `prev` a line says it follows (not checked).
pub fn prev_of(line: &str) -> Option<&str> {
    let body = line.get(..line.len().checked_sub(HASH_SUFFIX_LEN)?)?;
    body.rsplit_once(",\"prev\":\"")
        .or_else(|| body.rsplit_once("{\"prev\":\""))
        .map(|(_, p)| p.trim_end_matches('"'))
}

/// What checking the audit table found.
#[derive(Debug, Default, PartialEq)]
pub struct TableCheck {
    pub records: usize,
    /// Instances whose first row follows a record the table does not hold (the table sink was
    /// switched on mid-chain, or that record was deleted): (instance, row id).
    pub starts_mid_chain: Vec<(i32, i64)>,
    /// The first broken row of each instance: (instance, row id, why).
    pub broken: Vec<(i32, i64, String)>,
}

/// Checks the audit table's rows, `(id, instance, line)` in id order: each instance's rows form
/// one chain (each row follows the one before it); a chain may begin at the genesis hash or at a
/// record of another instance's chain (pgid restarted on the same file).
pub fn verify_table(rows: &[(i64, i32, &str)]) -> TableCheck {
    let known: std::collections::HashSet<&str> = rows
        .iter()
        .filter_map(|(_, _, line)| hash_of(line))
        .collect();
    let mut out = TableCheck {
        records: rows.len(),
        ..TableCheck::default()
    };
    let mut last: std::collections::BTreeMap<i32, Option<String>> = Default::default();
    for (id, instance, line) in rows {
        let state = last.entry(*instance).or_insert(None);
        if out.broken.iter().any(|(i, _, _)| i == instance) {
            continue;
        }
        let expected = match state {
            Some(prev) => prev.clone(),
            None => {
                let first = prev_of(line).unwrap_or_default().to_string();
                if first != GENESIS && !known.contains(first.as_str()) {
                    out.starts_mid_chain.push((*instance, *id));
                }
                first
            }
        };
        match check(line, &expected) {
            Ok(hash) => *state = Some(hash),
            Err(why) => out.broken.push((*instance, *id, why.to_string())),
        }
    }
    out
}

/// Verifies consecutive lines (a file, or files in rotation order) from `start`.
/// Returns the last hash, or the 0-based index of the first bad line and why.
pub fn verify<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    start: &str,
) -> Result<String, (usize, Broken)> {
    let mut prev = start.to_string();
    for (i, line) in lines.into_iter().enumerate() {
        prev = check(line, &prev).map_err(|e| (i, e))?;
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|i| {
                let (line, hash) = seal(&format!(r#"{{"n":{i},"text":"statement {i}"}}"#), &prev);
                prev = hash;
                line
            })
            .collect()
    }

    #[test]
    fn a_sealed_chain_verifies() {
        let lines = chain(5);
        assert!(lines[0].ends_with("\"}") && lines[0].contains(&format!("\"prev\":\"{GENESIS}\"")));
        assert!(serde_json::from_str::<serde_json::Value>(&lines[0]).unwrap()["hash"].is_string());
        verify(lines.iter().map(String::as_str), GENESIS).unwrap();
    }

    #[test]
    fn any_flipped_byte_breaks_that_line() {
        let lines = chain(4);
        for target in 0..lines.len() {
            for pos in 0..lines[target].len() {
                let mut bytes = lines[target].clone().into_bytes();
                bytes[pos] ^= 0x01;
                let Ok(edited) = String::from_utf8(bytes) else {
                    continue;
                };
                let mut copy = lines.clone();
                copy[target] = edited;
                let err = verify(copy.iter().map(String::as_str), GENESIS).unwrap_err();
                assert_eq!(
                    err.0, target,
                    "flip at {target}:{pos} detected at line {}",
                    err.0
                );
            }
        }
    }

    #[test]
    fn a_removed_or_reordered_line_breaks_the_next() {
        let mut lines = chain(5);
        lines.remove(2);
        assert!(matches!(
            verify(lines.iter().map(String::as_str), GENESIS),
            Err((2, Broken::Chain { .. }))
        ));
        let mut lines = chain(5);
        lines.swap(1, 3);
        assert_eq!(
            verify(lines.iter().map(String::as_str), GENESIS)
                .unwrap_err()
                .0,
            1
        );
        let lines = chain(3);
        assert_eq!(
            verify(lines.iter().map(String::as_str), &"1".repeat(64))
                .unwrap_err()
                .0,
            0
        );
    }

    #[test]
    fn empty_object_seals() {
        let (line, hash) = seal("{}", GENESIS);
        assert_eq!(check(&line, GENESIS).unwrap(), hash);
    }

    #[test]
    fn table_rows_are_checked_per_instance() {
        let a = chain(4);
        // Instance 2 continues instance 1's chain (a restart on the same file).
        let mut prev = hash_of(&a[3]).unwrap().to_string();
        let b: Vec<String> = (0..3)
            .map(|i| {
                let (line, hash) = seal(&format!(r#"{{"m":{i}}}"#), &prev);
                prev = hash;
                line
            })
            .collect();
        let rows = |lines: &[(i32, &String)]| -> Vec<(i64, i32, String)> {
            lines
                .iter()
                .enumerate()
                .map(|(i, (inst, l))| (i as i64 + 1, *inst, (*l).clone()))
                .collect()
        };
        let check_rows = |r: &[(i64, i32, String)]| {
            let v: Vec<(i64, i32, &str)> = r.iter().map(|(i, n, l)| (*i, *n, l.as_str())).collect();
            verify_table(&v)
        };
        // Interleaved in id order, as two instances write.
        let all = rows(&[
            (1, &a[0]),
            (1, &a[1]),
            (1, &a[2]),
            (1, &a[3]),
            (2, &b[0]),
            (2, &b[1]),
            (2, &b[2]),
        ]);
        let ok = check_rows(&all);
        assert_eq!(ok.records, 7);
        assert!(
            ok.broken.is_empty() && ok.starts_mid_chain.is_empty(),
            "{ok:?}"
        );

        // A deleted row in the middle breaks the chain at the next row.
        let mut gone = all.clone();
        gone.remove(1);
        let r = check_rows(&gone);
        assert_eq!(r.broken.len(), 1);
        assert_eq!((r.broken[0].0, r.broken[0].1), (1, 3));

        // An edited row: its hash no longer matches.
        let mut edited = all.clone();
        edited[5].2 = edited[5].2.replacen("\"m\":1", "\"m\":9", 1);
        let r = check_rows(&edited);
        assert_eq!((r.broken[0].0, r.broken[0].1), (2, 6));

        // A table that starts mid-chain is reported, not broken.
        let r = check_rows(&all[2..]);
        assert!(r.broken.is_empty());
        assert_eq!(r.starts_mid_chain, [(1, 3)]);
    }
}
