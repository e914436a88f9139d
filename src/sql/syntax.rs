//! A statement the server cannot parse, described as the server describes it: pg_query is the
//! server's own parser, so its error message and cursor position are the server's. The `pg_query`
//! crate keeps only the message; this asks libpg_query (linked by that crate) for the whole error.
//! The SQLSTATE is not part of libpg_query's error: it is read from the message, by the table of
//! the parser's own `ereport`s whose code is not `syntax_error` (42601).

use std::ffi::{c_char, c_int, CStr, CString};

/// What the server answers for a statement it cannot parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub code: &'static str,
    pub message: String,
    /// 1-based character position in the text, as in ErrorResponse's `P` field. (The parser's
    /// source file, line and routine are not given: they are those of pg_query's Postgres
    /// version, not necessarily the server's.)
    pub position: Option<u32>,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(p) = self.position {
            write!(f, " (at character {p})")?;
        }
        Ok(())
    }
}

/// libpg_query's error, laid out as pg_query.h declares it (every field, read or not).
#[repr(C)]
#[allow(dead_code)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
#[allow(dead_code)]
struct PgQueryParseResult {
    parse_tree: *mut c_char,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

extern "C" {
    fn pg_query_parse_opts(input: *const c_char, parser_options: c_int) -> PgQueryParseResult;
    fn pg_query_free_parse_result(result: PgQueryParseResult);
}

/// The error parsing `sql` under `options` (pg_query's parser option bits) gives, or None when it
/// parses. Must run where pg_query's parses run (a deep-stack analysis thread): it is one.
pub(super) fn describe(sql: &str, options: c_int) -> Option<SyntaxError> {
    let input = CString::new(sql).ok()?;
    // SAFETY: a NUL-terminated input that outlives the call; the result is read before it is
    // freed, once, and its strings are NUL-terminated or null.
    unsafe {
        let result = pg_query_parse_opts(input.as_ptr(), options);
        let described = result.error.as_ref().map(|e| {
            let text = |p: *mut c_char| {
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            };
            let message = text(e.message).unwrap_or_default();
            SyntaxError {
                code: code(&message),
                message,
                position: u32::try_from(e.cursorpos).ok().filter(|p| *p > 0),
            }
        });
        pg_query_free_parse_result(result);
        described
    }
}

/// The parser's errors whose SQLSTATE is not 42601, as message patterns (`%` stands for any
/// text), from the `ereport` calls of gram.y, scan.l and the functions they call.
const CODES: &[(&str, &str)] = &[
    ("0A000", "% constraints cannot be marked %"),
    ("0A000", "CREATE ASSERTION is not yet implemented"),
    ("0A000", "CREATE EXTENSION ... FROM is no longer supported"),
    ("0A000", "CREATE OR REPLACE CONSTRAINT TRIGGER is not supported"),
    ("0A000", "CREATE SCHEMA IF NOT EXISTS cannot include schema elements"),
    ("0A000", "MATCH PARTIAL not yet implemented"),
    ("0A000", "UNENCRYPTED PASSWORD is no longer supported"),
    ("0A000", "UNIQUE predicate is not yet implemented"),
    ("0A000", "WITH CHECK OPTION not supported on recursive views"),
    ("0A000", "a column list with % is only supported for ON DELETE actions"),
    ("0A000", "aggregates cannot have output arguments"),
    ("0A000", "an ordered-set aggregate with a VARIADIC direct argument must have one VARIADIC aggregated argument of the same data type"),
    ("0A000", "constraints cannot be altered to be NOT VALID"),
    ("0A000", "current database cannot be changed"),
    ("0A000", "dropping an enum value is not implemented"),
    ("0A000", "only string constants are supported in JSON_TABLE path specification"),
    ("0A000", "unsafe use of string constant with Unicode escapes"),
    ("22025", "invalid Unicode escape"),
    ("22023", "column number must be in range from 1 to %"),
    ("22023", "precision for type float must be at least 1 bit"),
    ("22023", "precision for type float must be less than 54 bits"),
    ("22023", "unrecognized JSON encoding: %"),
    ("22023", "unrecognized partitioning strategy %"),
    ("22P06", "nonstandard use of % in a string literal"),
    ("22P06", "unsafe use of \\' in a string literal"),
    ("42939", "% cannot be used as a role name here"),
    ("42939", "role name % is reserved"),
    ("42P20", "frame end cannot be UNBOUNDED PRECEDING"),
    ("42P20", "frame start cannot be UNBOUNDED FOLLOWING"),
    ("42P20", "frame starting from current row cannot have preceding rows"),
    ("42P20", "frame starting from following row cannot end with current row"),
    ("42P20", "frame starting from following row cannot have preceding rows"),
    ("42710", "modulus for hash partition provided more than once"),
    ("42710", "remainder for hash partition provided more than once"),
    (OUT_OF_STACK, "stack depth limit exceeded"),
];

/// libpg_query's own stack check (`stack depth limit exceeded`).
pub(super) const OUT_OF_STACK: &str = "54001";

fn code(message: &str) -> &'static str {
    CODES
        .iter()
        .find(|(_, pattern)| matches(pattern, message))
        .map_or("42601", |(code, _)| code)
}

/// Whether `text` is `pattern` with each `%` standing for some text (at least one character).
fn matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('%');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            return rest.len() > part.len() && rest.ends_with(part);
        }
        match rest.get(1..).and_then(|r| r.find(part)) {
            Some(at) => rest = &rest[1 + at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_messages() {
        assert!(matches(
            "role name % is reserved",
            "role name \"none\" is reserved"
        ));
        assert!(!matches(
            "role name % is reserved",
            "role name  is reserved x"
        ));
        assert!(matches(
            "% constraints cannot be marked %",
            "CHECK constraints cannot be marked NO INHERIT"
        ));
        assert!(matches(
            "current database cannot be changed",
            "current database cannot be changed"
        ));
        assert!(!matches(
            "current database cannot be changed",
            "current database cannot be changed!"
        ));
        assert_eq!(code("syntax error at or near \"SELEC\""), "42601");
        assert_eq!(code("frame end cannot be UNBOUNDED PRECEDING"), "42P20");
        assert_eq!(code("unrecognized JSON encoding: utf7"), "22023");
    }

    #[test]
    fn the_whole_error_with_its_position() {
        let e = describe("SELECT 1 FROM", 0).unwrap();
        assert_eq!(e.message, "syntax error at end of input");
        assert_eq!(e.position, Some(14));
        assert_eq!(e.code, "42601");
        // Positions count characters, not bytes.
        let e = describe("SELECT 'é€' FROM FROM", 0).unwrap();
        assert_eq!(e.message, "syntax error at or near \"FROM\"");
        assert_eq!(e.position, Some(18));
        assert!(describe("SELECT 1", 0).is_none());
    }
}
