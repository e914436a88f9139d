//! The cache against itself: a statement analysed through a warm cache — after another statement
//! of its shape was analysed and kept — must get exactly what a fresh analysis gives it.
//!
//! Every statement of a corpus is paired with generated siblings: the same text with its literal
//! tokens replaced (every quoting style, Unicode escapes and UESCAPE characters, integers that lex
//! as FCONST, negative numbers, strings for numbers and back, COPY targets and STDIN/STDOUT,
//! set_config names, U& identifiers …). The generator is seeded; set
//! `PGID_SIBLINGS_SEED` to replay a failure.

use std::sync::Arc;

use pg_query::protobuf::Token;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cache::{Key, Memo};
use super::{analyze, Dialect};

/// What pgid's own tests send, the analysis tests' statements, and statements written against
/// the literal-reading corners of the analysis.
pub(super) const CORPUS: &[&str] = &[
    // From tests/*.rs.
    "ANALYZE crm.orders",
    "CLOSE cur",
    "COPY (SELECT customer_id, body FROM crm.notes ORDER BY customer_id) TO STDOUT",
    "COPY crm.notes (customer_id, body) FROM STDIN",
    "COPY crm.orders TO STDOUT",
    "CREATE ROLE pgid_nightly_report_stray LOGIN IN ROLE pgid_lease",
    "DEALLOCATE d; PREPARE d(int) AS DELETE FROM crm.orders WHERE id > $1",
    "DECLARE cur CURSOR FOR SELECT 1",
    "DELETE  FROM crm.orders\n  WHERE id = 11 -- retry\n;",
    "DELETE FROM crm.orders WHERE id = $1",
    "DELETE FROM crm.orders WHERE id > 20",
    "DELETE FROM crm.tickets",
    "DELETE FROM pgid.audit_events WHERE id = $1",
    "EXECUTE d(17)",
    "INSERT INTO crm.orders (customer_id, amount) SELECT 1 + g % 4, g FROM generate_series(1, 100000) g",
    "PREPARE ok (int) AS SELECT name FROM crm.customers WHERE id = $1",
    "SELECT 'a'::text",
    "SELECT 1 AS a, 'x' AS b; SELECT count(*) FROM crm.customers",
    "SELECT 1 FROM pg_roles WHERE rolname = 'pgid_admin'",
    "SELECT 1/$1::int",
    "SELECT amount::text FROM crm.orders WHERE customer_id = $1 ORDER BY id LIMIT 2",
    "SELECT body FROM crm.notes WHERE body LIKE 'k%'",
    "SELECT g FROM generate_series(1, 10) g",
    "SELECT pg_sleep(0.05)::text || 'b'",
    "SELECT ssn FROM crm.customers WHERE id = 1",
    "SELECT name FROM crm.customers WHERE email = 'grace@example.com'",
    "SET work_mem = '7MB'; CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1; LISTEN chan; SELECT pg_advisory_lock(42)",
    "UPDATE crm.tickets SET status = 'mid' WHERE id = 2",
    "UPDATE crm.tickets SET status = status WHERE id > 0; SELECT 1",
    // Unicode escapes: the string after UESCAPE decides what a U& identifier names.
    "SELECT U&\"d!0061ta\" UESCAPE '!' FROM t",
    "SELECT U&'d!0061ta' UESCAPE '!'",
    "SELECT U&'\\0041', U&\"\\0064ata\" FROM t",
    // COPY targets: '' is a server file, STDIN/STDOUT the client.
    "COPY t TO ''",
    "COPY t TO '/tmp/x'",
    "COPY t FROM ''",
    "COPY t TO STDOUT",
    "COPY t FROM STDIN",
    "COPY (SELECT 1 AS stdout) TO ''",
    "COPY (SELECT 'x' AS stdin FROM t WHERE a = 'b') TO STDOUT",
    "COPY t TO PROGRAM 'cat'",
    "COPY t (a, b) FROM STDIN WITH (FORMAT csv, DELIMITER ',')",
    "COPY t TO STDOUT (FORMAT 'csv', FORCE_QUOTE ('a', 'b'))",
    "SELECT 1; COPY t TO ''",
    "COPY t TO E'/x'",
    "COPY t TO $$/x$$",
    // Settings.
    "SELECT set_config('search_path', 'x', false)",
    "SELECT pg_catalog.set_config('role', 'postgres', true)",
    "SELECT set_config('application_name', 'a', NULL)",
    "SELECT set_config('work_mem', NULL, 'on')",
    "SELECT set_config(name, 'x', false) FROM t",
    "SELECT 1 FROM t WHERE set_config('a.b', 'x', true) = 'x'",
    "SET search_path = 'a', b",
    "SET search_path = 'My Schema'",
    "SET LOCAL statement_timeout = 5",
    "SET TIME ZONE -7",
    "SET TIME ZONE 'UTC'",
    "SET TIME ZONE INTERVAL '-08:00' HOUR TO MINUTE",
    "SET NAMES 'utf8'",
    "SET SESSION AUTHORIZATION 'x'",
    "SET ROLE 'x'",
    "SET standard_conforming_strings = 'off'",
    "SET x.y = 1.5",
    "SET \"Role\" TO 'x'",
    "RESET work_mem",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "ALTER SYSTEM SET work_mem = '1MB'",
    "ALTER ROLE r SET search_path = 'x'",
    // Numbers: signs fold into constants; a type's precision decides the type.
    "SELECT -5, - 2.5, -(3), 1 - 2, - - 4",
    "SELECT 1::float(24)",
    "SELECT 1::float(53), 'x'::varchar(10), 2::numeric(10, 2)",
    "ALTER INDEX i ALTER COLUMN 1 SET STATISTICS 100",
    "SELECT E'\\n', E'a\\'b', $$x$$, $t$y$t$, 'a'\n'b', b'01', x'ff', 1e5, .5, 99999999999999999999",
    "SELECT E'\\u0041', 'a\\b'",
    // Strings the grammar keeps as names or options rather than constants.
    "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'pgid', 'x'",
    "CREATE TYPE e AS ENUM ('pgid', 'x')",
    "NOTIFY c, 'x'",
    "LOAD 'x'",
    "DO 'BEGIN END'",
    "COMMENT ON TABLE t IS 'x'",
    "ALTER ROLE r PASSWORD 'x'",
    "PREPARE TRANSACTION 'x'",
    "EXPLAIN (FORMAT 'json') SELECT 1",
    "CREATE TABLE x (a varchar(10) DEFAULT 'x', b numeric(10, 2) CHECK (b > 0)) WITH (fillfactor = 70)",
    // SQL given as text, and actions beyond a statement's kind.
    "SELECT query_to_xml('SELECT 1', true, false, '')",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE 'sql' AS $$SELECT 1$$",
    "CREATE OPERATOR === (FUNCTION = f, LEFTARG = int)",
    "SELECT query_to_xml('SELECT 1'::text, true, false, 'x')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT 1')",
    "SELECT * FROM ts_stat('SELECT to_tsvector(body) FROM crm.notes', 'ab')",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.x = 'a' THEN DELETE",
    "INSERT INTO t VALUES ('a') ON CONFLICT (id) DO UPDATE SET a = 'b'",
    // Cursors and prepared statements.
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t WHERE a = 'x'",
    "FETCH 5 FROM c",
    "MOVE -1 IN c",
    "CLOSE ALL",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "EXECUTE p(1, 'x')",
    "PREPARE p AS SELECT set_config('role', $1, false)",
    // Everyday statements.
    "SELECT * FROM t LIMIT 10 OFFSET 5",
    "SELECT interval '1 day', date '2020-01-01', 'x'::text, CAST('1' AS int)",
    "SELECT * FROM t WHERE a IN (1, 2, 'x') AND b LIKE 'x%' ESCAPE '!'",
    "VALUES ('a', 1), ('b', 2)",
    "SELECT xmlelement(name a, 'b'), json_object('a': 1), extract('year' FROM now())",
    "SELECT 'x' \"pgid\", 'pgid.leases'::regclass, 'a' COLLATE \"C\"",
    "SELECT * FROM json_table('[]', '$[*]' COLUMNS (a int PATH '$.a')) jt",
    "SELECT a, count(*) FILTER (WHERE b > 0) OVER (PARTITION BY c ORDER BY d) FROM t TABLESAMPLE SYSTEM (10) GROUP BY ROLLUP (a)",
    "INSERT INTO t (a) VALUES ((SELECT 1)) ON CONFLICT (a) DO UPDATE SET a = excluded.a RETURNING *",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 'x' WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "UPDATE pgid.leases SET state = 'x' WHERE true",
    "SELECT 1 /* ; DROP TABLE t */, 'DROP TABLE t'",
    // Grammar corners: values kept outside constants, folded signs, typed literals.
    "SELECT * FROM t WHERE a = - 'x' AND b = - /* c */ 5",
    "SET x.y = +5",
    "SELECT $1::float(3), '{1,2}'::int[3], interval(3) '1 s', interval '1' day",
    "SELECT xmlroot(x, version '1.0', standalone yes), xmlparse(document '<x/>') FROM t",
    "SELECT * FROM xmltable('/x' PASSING '<x/>' COLUMNS a int PATH 'a')",
    "SELECT json_value(j, '$.a' RETURNING int DEFAULT 0 ON ERROR) FROM t",
    "CREATE TABLE p PARTITION OF t FOR VALUES WITH (MODULUS 4, REMAINDER 1)",
    "CREATE TABLE p PARTITION OF t FOR VALUES FROM ('a') TO ('b')",
    "CREATE SEQUENCE s INCREMENT BY -1 START 5",
    "ALTER TABLE t ALTER COLUMN a SET STATISTICS -1",
    "CREATE TABLE t (a int GENERATED ALWAYS AS IDENTITY (START WITH 10 INCREMENT BY 5))",
    "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f('pgid', 'x', 1)",
    "SECURITY LABEL ON TABLE t IS 'x'",
    "CREATE COLLATION c (locale = 'x')",
    "ALTER TYPE e ADD VALUE 'pgid' BEFORE 'x'",
    "ALTER TYPE e RENAME VALUE 'a' TO 'b'",
    "CREATE DATABASE d WITH ENCODING 'UTF8' LC_COLLATE 'C'",
    "SELECT * FROM t TABLESAMPLE BERNOULLI (50) REPEATABLE (7) LIMIT ALL OFFSET 2",
    "SELECT * FROM t ORDER BY a FETCH FIRST 5 ROWS WITH TIES",
    "SELECT 'x' AT TIME ZONE 'UTC', B'01' || X'F', a ~ E'\\d' FROM t",
    "EXPLAIN (ANALYZE 'on', FORMAT yaml) SELECT 1",
    "VACUUM (PARALLEL 2) t",
    "CREATE INDEX i ON t (a) WITH (fillfactor = 70) WHERE b > 'x'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN set_config('role', 'x', false)::int",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$ SET search_path = 'x'",
    "DO LANGUAGE plpgsql $$ BEGIN END $$",
    "COMMENT ON COLUMN t.a IS NULL",
    "CREATE TEXT SEARCH DICTIONARY d (TEMPLATE = simple, STOPWORDS = 'english')",
    "SELECT U&'a!0062' UESCAPE '!', U&\"!0061\" UESCAPE '!' FROM t",
    "SELECT * FROM t WHERE a = 'x' UNION SELECT * FROM u WHERE b = 2 ORDER BY 1 LIMIT 3",
];

/// Replacements for a literal token, by the kind the scanner gave it. Some change the kind (an
/// integer too large for int4 is an FCONST, U&'' a USCONST): a sibling need not share the shape.
fn alternatives(kind: Token) -> &'static [&'static str] {
    const STRINGS: &[&str] = &[
        "''",
        "'x'",
        "'/tmp/x'",
        "'role'",
        "'ROLE'",
        "'session_authorization'",
        "'search_path'",
        "'pgid'",
        "'!'",
        "'+'",
        "'\\'",
        "'a\\b'",
        "E'\\n'",
        "e'a\\'b'",
        "E'\\x41'",
        "$$x$$",
        "$$$$",
        "$t$a'b$t$",
        "'it''s'",
        "'SELECT 1'",
        "'DELETE FROM t'",
        "'SELECT pg_terminate_backend(1)'",
        "'SELECT set_config(''role'', ''x'', false)'",
        "'a'\n'b'",
        "'on'",
        "'1'",
        "U&'\\0041'",
        "u&'x'",
        "U&'\\0000'",
        "U&'d!0061ta'",
        "1",
        "STDOUT",
    ];
    const INTEGERS: &[&str] = &[
        "0",
        "1",
        "7",
        "42",
        "2147483647",
        "0x1F",
        "1_000",
        "0o17",
        "0b101",
        "2147483648",
        "99999999999999999999",
        "-1",
        "'1'",
    ];
    const NUMERICS: &[&str] = &["1.5", "1e10", ".5", "0.0", "99999999999999999999", "1"];
    const BITS: &[&str] = &["b'0'", "B'1010'", "b''", "x'ff'", "X''", "x'zz'"];
    // Not literals, but where a U& identifier or a COPY's client end stands.
    const UIDENTS: &[&str] = &[
        "U&\"d!0061ta\"",
        "U&\"\\0064ata\"",
        "u&\"\\0000\"",
        "U&\"x\"",
    ];
    const CLIENT: &[&str] = &["STDOUT", "STDIN", "''", "'/x'"];
    match kind {
        Token::Sconst | Token::Usconst => STRINGS,
        Token::Iconst => INTEGERS,
        Token::Fconst => NUMERICS,
        Token::Bconst | Token::Xconst => BITS,
        Token::Uident => UIDENTS,
        Token::Stdin | Token::Stdout => CLIENT,
        _ => &[],
    }
}

/// The tokens of `sql` the generator varies (byte range, kind): literals, U& identifiers,
/// STDIN/STDOUT.
fn literals(sql: &str) -> Vec<(usize, usize, Token)> {
    super::tokens::scan(sql)
        .map(|tokens| {
            tokens
                .iter()
                .filter_map(|t| {
                    let kind = Token::try_from(t.token).ok()?;
                    (!alternatives(kind).is_empty()).then_some((
                        t.start as usize,
                        t.end as usize,
                        kind,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `sql` with the literal tokens at `spots` replaced (`spots` in text order).
fn replaced(sql: &str, spots: &[(usize, usize, Token)], with: &[&str]) -> String {
    let mut out = String::new();
    let mut at = 0;
    for ((start, end, _), text) in spots.iter().zip(with) {
        out.push_str(&sql[at..*start]);
        out.push_str(text);
        at = *end;
    }
    out.push_str(&sql[at..]);
    out
}

/// Siblings of `sql`: each literal replaced alone by each of its alternatives, then `random`
/// texts with every literal replaced at once.
fn siblings(sql: &str, rng: &mut StdRng, random: usize) -> Vec<String> {
    let spots = literals(sql);
    let originals: Vec<&str> = spots.iter().map(|(s, e, _)| &sql[*s..*e]).collect();
    let mut out = Vec::new();
    for (i, (_, _, kind)) in spots.iter().enumerate() {
        for alt in alternatives(*kind) {
            let mut with = originals.clone();
            with[i] = alt;
            out.push(replaced(sql, &spots, &with));
        }
    }
    for _ in 0..if spots.is_empty() { 0 } else { random } {
        let with: Vec<&str> = spots
            .iter()
            .map(|(_, _, kind)| {
                let alts = alternatives(*kind);
                alts[rng.gen_range(0..alts.len())]
            })
            .collect();
        out.push(replaced(sql, &spots, &with));
    }
    out
}

fn seed() -> u64 {
    std::env::var("PGID_SIBLINGS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

#[test]
fn the_cache_against_itself() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dialect = Dialect::default();
    let fresh = |sql: &str| Arc::new(analyze(sql, dialect, usize::MAX));
    let mut failures = Vec::new();
    let (mut pairs, mut hits) = (0usize, 0usize);
    for original in CORPUS {
        let kin = siblings(original, &mut rng, 8);
        // One warm cache per pair: the original, then the sibling.
        for sibling in &kin {
            let mut memo = Memo::default();
            memo.analyze(original, dialect);
            pairs += 1;
            hits += usize::from(memo.lookup(&Key::of(sibling, dialect)).is_some());
            let (got, want) = (memo.analyze(sibling, dialect), fresh(sibling));
            if got != want {
                failures.push(format!(
                    "after {original:?}\n  sibling {sibling:?}\n  cached: {got:?}\n  fresh:  {want:?}"
                ));
            }
        }
        // One cache for the whole family, in order: siblings that disagree on what matters
        // must not leave entries that answer for each other.
        let mut memo = Memo::default();
        for sql in std::iter::once(&original.to_string()).chain(&kin) {
            let (got, want) = (memo.analyze(sql, dialect), fresh(sql));
            if got != want {
                failures.push(format!(
                    "in the family of {original:?}\n  {sql:?}\n  cached: {got:?}\n  fresh:  {want:?}"
                ));
            }
        }
        // Which literals matter is decided by syntax: siblings of one shape agree on it.
        if memo.disagreements() > 0 {
            failures.push(format!("siblings of {original:?} disagree on what matters"));
        }
    }
    println!("seed {seed}: {pairs} siblings, {hits} answered by the cache");
    assert!(
        failures.is_empty(),
        "seed {seed} (PGID_SIBLINGS_SEED={seed} to replay): {} of {pairs} siblings differ; first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(if std::env::var("PGID_SIBLINGS_ALL").is_ok() { usize::MAX } else { 12 })
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The cache must still be a cache: most siblings of everyday statements share an entry.
    assert!(hits * 10 > pairs, "seed {seed}: {hits} hits of {pairs}");
}
