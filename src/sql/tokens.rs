//! What pgid reads from Postgres's own scanner rather than from the parse tree: a statement's
//! *shape* (its tokens with literal values blanked, which keys the analysis cache), its canonical
//! text, whether a COPY's data goes to the client or a server file, and whether a statement's
//! lexing depends on standard_conforming_strings. The scanner always lexes as
//! standard_conforming_strings = on.

use std::ops::Range;

use pg_query::protobuf::{KeywordKind, Token};

use super::Dialect;

/// One token of a statement string, comments excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lexeme {
    pub start: usize,
    pub end: usize,
    pub kind: Token,
    pub keyword: KeywordKind,
}

/// `sql`'s tokens (comments left out) as the server's lexer reads them with
/// standard_conforming_strings on. `None` when the text does not scan cleanly: a scan error (an
/// unterminated string or comment), or text after the last token that is not white space.
pub(crate) fn lex(sql: &str) -> Option<Vec<Lexeme>> {
    let scanned = scan(sql)?;
    let mut out = Vec::with_capacity(scanned.len());
    let mut scanned_to = 0usize;
    for t in &scanned {
        let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
        sql.get(start..end)?;
        scanned_to = end;
        let kind = Token::try_from(t.token).ok()?;
        if matches!(kind, Token::SqlComment | Token::CComment) {
            continue;
        }
        out.push(Lexeme {
            start,
            end,
            kind,
            keyword: KeywordKind::try_from(t.keyword_kind).ok()?,
        });
    }
    sql[scanned_to..].trim().is_empty().then_some(out)
}

/// The scanner's tokens. Text that is only white space has none, and is never handed to
/// `pg_query::scan_tokens`: for no tokens it builds a slice from a null pointer (undefined
/// behaviour; an abort in a debug build).
pub(crate) fn scan(sql: &str) -> Option<Vec<pg_query::protobuf::ScanToken>> {
    if sql
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
    {
        return Some(Vec::new());
    }
    pg_query::scan_tokens(sql).ok()
}

/// The placeholder a literal's value gives way to in a shape. U&'' strings keep their text: the
/// parser decodes their escapes (and refuses bad ones) after the scanner, so their value decides
/// whether the statement parses at all. So does the string after UESCAPE (see [`shaped`]).
fn placeholder(kind: Token) -> Option<&'static str> {
    Some(match kind {
        Token::Iconst => "<int>",
        Token::Fconst => "<num>",
        Token::Sconst => "<str>",
        Token::Bconst => "<bits>",
        Token::Xconst => "<hex>",
        _ => return None,
    })
}

/// A statement as the analysis cache sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shaped {
    /// The tokens' texts, literals blanked, joined by NUL: no statement text contains NUL (the
    /// parser takes a C string), so two different token sequences never join to one shape.
    pub shape: String,
    pub tokens: Vec<Lexeme>,
    /// Indices in `tokens` of the literals `shape` blanks, in order.
    pub literals: Vec<usize>,
}

impl Shaped {
    /// Which blanked literal (an index into `literals`) a constant at byte `location` was made
    /// from. A folded negative number (`-5`, `- 2.5`) is located at its minus sign.
    pub fn literal_at(&self, location: usize) -> Option<usize> {
        let mut i = self
            .tokens
            .binary_search_by_key(&location, |t| t.start)
            .ok()?;
        if self.tokens[i].kind == Token::Ascii45 {
            i += 1;
        }
        self.literals.binary_search(&i).ok()
    }

    /// The text of each blanked literal at `which` (indices into `literals`).
    pub fn texts<'a>(&self, sql: &'a str, which: &[usize]) -> Vec<&'a str> {
        which
            .iter()
            .map(|&l| {
                let t = self.tokens[self.literals[l]];
                &sql[t.start..t.end]
            })
            .collect()
    }
}

/// `sql`'s shape; `None` when it does not scan cleanly.
pub(crate) fn shaped(sql: &str) -> Option<Shaped> {
    let tokens = lex(sql)?;
    let mut shape = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            shape.push('\0');
        }
        let after_uescape = i > 0 && tokens[i - 1].kind == Token::Uescape;
        match placeholder(t.kind).filter(|_| !after_uescape) {
            Some(p) => {
                literals.push(i);
                shape.push_str(p);
            }
            None => shape.push_str(&sql[t.start..t.end]),
        }
    }
    Some(Shaped {
        shape,
        tokens,
        literals,
    })
}

/// The statement's tokens with literal values blanked, as Postgres's own lexer reads them (so a
/// string's end is where the server sees it, never guessed). Statements of one shape differ only
/// in literal values; the cache keeps alongside the shape the literals whose values the analysis
/// reads ([`super::cache`]). `None` when the text does not scan, or when literals are read with
/// backslash escapes (the scanner reads them as standard_conforming_strings = on).
pub fn shape(sql: &str, dialect: Dialect) -> Option<String> {
    if dialect.backslash_escapes {
        return None;
    }
    shaped(sql).map(|s| s.shape)
}

/// The statement as its tokens, literals included, one space where the text had white space or
/// comments, without a trailing `;`: two texts that differ only in layout have the same canonical
/// form (retry-mode approvals match statements by it), and the canonical form lexes to the same
/// tokens again. The text itself when it does not scan cleanly.
pub fn canonical(sql: &str, dialect: Dialect) -> String {
    let tokens = match lex(sql) {
        Some(t) if !dialect.backslash_escapes => t,
        _ => return sql.to_string(),
    };
    let mut out = String::with_capacity(sql.len());
    let mut last: Option<usize> = None;
    for t in &tokens {
        // Between two tokens only white space or comments can stand; either separates them.
        if last.is_some_and(|end| t.start > end) {
            out.push(' ');
        }
        last = Some(t.end);
        out.push_str(&sql[t.start..t.end]);
    }
    while out.ends_with(';') || out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Where a COPY's data goes, by the token in the grammar's `copy_file_name` position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyEnd {
    /// STDIN or STDOUT: the client.
    Client,
    /// A string constant (any quoting, even ''): a server file, or a program after PROGRAM.
    Server,
    /// Not to be told (no COPY where expected; lexing that depends on backslashes before it).
    Unknown,
}

/// The COPY statement in `range` of `sql`: after its top-level TO or FROM (and an optional
/// PROGRAM), STDIN/STDOUT is the client and a string constant a server file or program. The
/// parse tree cannot tell `''` from no file name, so this reads tokens, never the value.
pub(crate) fn copy_end(sql: &str, range: Range<usize>, dialect: Dialect) -> CopyEnd {
    let Some(tokens) = lex(sql) else {
        return CopyEnd::Unknown;
    };
    let mut own = tokens
        .iter()
        .filter(|t| t.start >= range.start && t.start < range.end);
    if own.next().map(|t| t.kind) != Some(Token::Copy) {
        return CopyEnd::Unknown;
    }
    let mut depth = 0i32;
    let mut target = None;
    while let Some(t) = own.next() {
        match t.kind {
            Token::Ascii40 => depth += 1,
            Token::Ascii41 => depth -= 1,
            Token::To | Token::From if depth == 0 => {
                target = own.next().and_then(|n| match n.kind {
                    Token::Program => own.next(),
                    _ => Some(n),
                });
                break;
            }
            _ => {}
        }
    }
    let Some(target) = target else {
        return CopyEnd::Unknown;
    };
    // With backslash escapes the server's tokens equal these only up to the first plain literal
    // holding a backslash; one that is the target itself is a string either way.
    if dialect.backslash_escapes
        && tokens
            .iter()
            .any(|t| t.start < target.start && lexes_with_backslashes(sql, t))
    {
        return CopyEnd::Unknown;
    }
    match target.kind {
        Token::Sconst | Token::Usconst => CopyEnd::Server,
        Token::Stdin | Token::Stdout => CopyEnd::Client,
        _ => CopyEnd::Unknown,
    }
}

/// A token standard_conforming_strings = off would lex differently: a plain '…' literal (N'…'
/// too: its `N` is a token of its own) holding a backslash, or a U&'…' literal, which the server
/// refuses outright when standard_conforming_strings is off.
fn lexes_with_backslashes(sql: &str, t: &Lexeme) -> bool {
    let text = &sql[t.start..t.end];
    match t.kind {
        Token::Sconst => text.starts_with('\'') && text.contains('\\'),
        Token::Usconst => true,
        _ => false,
    }
}

/// Whether `sql` could be lexed differently under standard_conforming_strings = off than on.
///
/// Why looking at the "on" tokens is enough: the two settings make the lexer differ in exactly
/// two rules (Postgres's scan.l): a `'` that opens a plain string enters the `xq` state when on and
/// the `xe` (backslash escape) state when off, and `U&'` is refused when off. `xq` and `xe` read
/// `''`, quote continuation and every character but the backslash alike; only a backslash starts
/// an escape in `xe`. So if no plain literal of the "on" lexing holds a backslash (and none is
/// U&''), both lexers pass through the same states over the same characters: each plain literal
/// ends at the same quote with the same value, and every other token (E'', dollar quotes, b''/x'',
/// identifiers, comments) is lexed by rules the setting does not touch. By induction over the
/// tokens, the two token streams are identical (text that does not scan stops both lexers at the
/// same place the same way).
///
/// Fast path: without a backslash there is no escape to read, and without `&` no U&'' literal.
/// With either, text that does not scan cleanly is answered `true`: nothing is claimed about it.
pub fn depends_on_standard_conforming_strings(sql: &str) -> bool {
    if !sql.bytes().any(|b| b == b'\\' || b == b'&') {
        return false;
    }
    match lex(sql) {
        Some(tokens) => tokens.iter().any(|t| lexes_with_backslashes(sql, t)),
        None => true,
    }
}

/// `ident` as the server's quote_identifier writes it: bare when it is lower case letters, digits
/// and underscores (not first a digit) and no keyword beyond the unreserved ones, else quoted.
pub(crate) fn quote_identifier(ident: &str) -> String {
    let plain = ident.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let keyword = || {
        lex(ident).is_none_or(|t| {
            t.len() != 1
                || !matches!(
                    t[0].keyword,
                    KeywordKind::NoKeyword | KeywordKind::UnreservedKeyword
                )
        })
    };
    if plain && !keyword() {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_space_alone_has_no_tokens() {
        for sql in ["", " ", "\n\t ", "\u{b}\u{c}\r"] {
            assert_eq!(lex(sql), Some(Vec::new()), "{sql:?}");
        }
        assert_eq!(lex(" ; ").map(|t| t.len()), Some(1));
    }

    #[test]
    fn canonical_text_ignores_layout_and_keeps_literals() {
        let d = Dialect::default();
        assert_eq!(
            canonical("  DELETE  FROM t\n WHERE id = 7 -- gone\n;", d),
            "DELETE FROM t WHERE id = 7"
        );
        assert_eq!(
            canonical("DELETE /* x */ FROM t WHERE id = 7", d),
            canonical("DELETE FROM t WHERE id = 7;", d)
        );
        assert_ne!(
            canonical("DELETE FROM t WHERE id = 7", d),
            canonical("DELETE FROM t WHERE id = 8", d)
        );
        assert_ne!(canonical("SELECT 'a  b'", d), canonical("SELECT 'a b'", d));
        assert_ne!(canonical("SELECT 1", d), canonical("SELECT 1; SELECT 2", d));
        // A comment between two tokens separates them as white space does: `1/**/.5` is two
        // tokens, `1.5` one.
        assert_eq!(canonical("SELECT 1/**/.5", d), "SELECT 1 .5");
        assert_eq!(canonical("SELECT 2-/**/-1", d), "SELECT 2- -1");
        // Text that does not scan is its own canonical form.
        assert_eq!(canonical("SELECT 'open", d), "SELECT 'open");
    }

    #[test]
    fn shapes_blank_literals_and_nothing_else() {
        let d = Dialect::default();
        assert_eq!(
            shape("SELECT abalance FROM t WHERE aid = 42", d),
            shape("SELECT  abalance FROM t\nWHERE aid = 7", d)
        );
        assert_eq!(shape("SELECT 'a' /* c */", d), shape("SELECT $$b$$", d));
        assert_ne!(shape("SELECT 1", d), shape("SELECT 1; DROP TABLE t", d));
        assert_ne!(shape("COPY t TO STDOUT", d), shape("COPY t TO '/tmp/x'", d));
        assert_ne!(shape("SELECT f(1)", d), shape("SELECT g(1)", d));
        assert_ne!(shape("SELECT 1", d), shape("SELECT 1.0", d));
        // Tokens are kept apart: `a<str>b` (a comparison) is not `a'x'b` (a typed literal).
        assert_ne!(shape("SELECT a<str>b", d), shape("SELECT a'x'b", d));
        // Unicode escapes decide what a string or identifier is, and whether it parses.
        assert_ne!(shape("SELECT U&'\\0041'", d), shape("SELECT U&'\\0042'", d));
        assert_ne!(shape("SELECT U&'a'", d), shape("SELECT 'a'", d));
        assert_ne!(
            shape("SELECT U&\"d!0061ta\" UESCAPE '!'", d),
            shape("SELECT U&\"d!0061ta\" UESCAPE '#'", d)
        );
        // The lexer decides where strings end: under standard_conforming_strings a backslash
        // does not escape, so this is a string and then a DROP.
        let s = shape(r"SELECT 'a'; DROP TABLE t; --'", d).unwrap();
        assert!(s.contains("DROP"), "{s:?}");
        assert_eq!(shape("SELECT 'open", d), None);
        let off = Dialect {
            backslash_escapes: true,
        };
        assert_eq!(shape("SELECT 1", off), None);
    }

    #[test]
    fn constants_are_traced_to_their_literals() {
        let sql = "SELECT -5, - 2.5, 'x', U&'y', $1";
        let s = shaped(sql).unwrap();
        assert_eq!(s.texts(sql, &[0, 1, 2]), ["5", "2.5", "'x'"]);
        assert_eq!(s.literal_at(7), Some(0));
        assert_eq!(s.literal_at(11), Some(1));
        assert_eq!(s.literal_at(18), Some(2));
        assert_eq!(s.literal_at(23), None, "U&'' is never blanked");
        assert_eq!(s.literal_at(8), Some(0), "the literal itself");
        assert_eq!(s.literal_at(0), None);
    }

    #[test]
    fn copy_targets_by_token() {
        let d = Dialect::default();
        let end = |sql: &str| copy_end(sql, 0..sql.len(), d);
        assert_eq!(end("COPY t TO STDOUT"), CopyEnd::Client);
        assert_eq!(
            end("COPY t (a, b) FROM STDIN WITH (FORMAT csv)"),
            CopyEnd::Client
        );
        assert_eq!(end("COPY t TO ''"), CopyEnd::Server);
        assert_eq!(end("COPY t TO E'/x'"), CopyEnd::Server);
        assert_eq!(end("COPY t TO U&'/x'"), CopyEnd::Server);
        assert_eq!(end("COPY t TO $a$/x$a$"), CopyEnd::Server);
        assert_eq!(end("COPY t FROM PROGRAM 'id'"), CopyEnd::Server);
        assert_eq!(end("COPY /* TO STDOUT */ t TO '/x'"), CopyEnd::Server);
        // An unreserved keyword as an alias inside the query is not the target.
        assert_eq!(end("COPY (SELECT 1 AS stdout) TO ''"), CopyEnd::Server);
        assert_eq!(
            end("COPY (SELECT 'x' FROM t AS stdin) TO STDOUT"),
            CopyEnd::Client
        );
        // The second statement of a string.
        let sql = "SELECT 'TO STDOUT'; COPY t TO '/x'";
        assert_eq!(copy_end(sql, 20..sql.len(), d), CopyEnd::Server);
        assert_eq!(copy_end(sql, 0..19, d), CopyEnd::Unknown);
        // Backslash escapes: a plain literal with a backslash before the target could end
        // elsewhere on the server.
        let off = Dialect {
            backslash_escapes: true,
        };
        let sql = r"COPY (SELECT 'a\' AS x) TO STDOUT";
        assert_eq!(copy_end(sql, 0..sql.len(), off), CopyEnd::Unknown);
        assert_eq!(copy_end(sql, 0..sql.len(), d), CopyEnd::Client);
        let sql = r"COPY t TO 'C:\x'";
        assert_eq!(copy_end(sql, 0..sql.len(), off), CopyEnd::Server);
    }

    #[test]
    fn lexing_that_depends_on_standard_conforming_strings() {
        for (sql, depends) in [
            (r"SELECT 'a\'; DROP TABLE t; --'", true),
            (r"SELECT 'a\\b'", true),
            (r"SELECT N'\x'", true),
            (
                r"SELECT 'a'
                'b\c'",
                true,
            ),
            (r"SELECT U&'\0041'", true),
            ("SELECT U&'abc'", true),
            ("SELECT 'unterminated\\", true),
            // Both lexers stop at the same place.
            ("SELECT 'unterminated", false),
            (r"SELECT E'\n'", false),
            (r"SELECT $$\$$", false),
            (r"SELECT $t$\'$t$", false),
            (r"SELECT b'01', x'5C'", false),
            (r#"SELECT 1 AS "a\b" -- it's \"#, false),
            (r"SELECT 1 /* \' */", false),
            ("SELECT 'plain', 1 & 2", false),
            ("SELECT U&\"\\0041\" FROM t", false),
            ("SELECT 'no backslash'", false),
        ] {
            assert_eq!(
                depends_on_standard_conforming_strings(sql),
                depends,
                "{sql}"
            );
        }
    }

    #[test]
    fn identifiers_quoted_as_the_server_quotes_them() {
        assert_eq!(quote_identifier("public"), "public");
        assert_eq!(quote_identifier("a_1"), "a_1");
        assert_eq!(quote_identifier("My S"), "\"My S\"");
        assert_eq!(quote_identifier("1a"), "\"1a\"");
        assert_eq!(quote_identifier(""), "\"\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        // Reserved and column-name keywords are quoted, unreserved ones are not.
        assert_eq!(quote_identifier("select"), "\"select\"");
        assert_eq!(quote_identifier("between"), "\"between\"");
        assert_eq!(quote_identifier("schema"), "schema");
        assert_eq!(quote_identifier("$user"), "\"$user\"");
    }
}
