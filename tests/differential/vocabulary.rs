//! What the generated sequences say: statements with their parameters, statements the policy
//! allows, refuses or the server fails, settings, and the statements whose reading depends on
//! `standard_conforming_strings` (each ends in a DELETE of the canary table when read the
//! dangerous way).

/// What a parameter of a generated statement is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int,
    /// An int8 the Parse names: binary values are 8 bytes.
    Int8,
    Text,
}

pub struct WithParams {
    pub sql: &'static str,
    pub kinds: &'static [Kind],
    /// Parameter types the Parse names (empty: the server infers them).
    pub types: &'static [u32],
}

const INT4: u32 = 23;
const INT8: u32 = 20;
const TEXT: u32 = 25;

pub const WITH_PARAMS: &[WithParams] = &[
    WithParams {
        sql: "SELECT $1::text AS v",
        kinds: &[Kind::Text],
        types: &[],
    },
    WithParams {
        sql: "SELECT $1 AS v",
        kinds: &[Kind::Text],
        types: &[],
    },
    WithParams {
        sql: "SELECT $1 AS v",
        kinds: &[Kind::Int],
        types: &[INT4],
    },
    WithParams {
        sql: "SELECT $1 AS v",
        kinds: &[Kind::Int8],
        types: &[INT8],
    },
    WithParams {
        sql: "SELECT $1 AS v, $2 AS w",
        kinds: &[Kind::Text, Kind::Int],
        types: &[TEXT],
    },
    WithParams {
        sql: "SELECT id, name FROM diff.items WHERE id = $1",
        kinds: &[Kind::Int],
        types: &[],
    },
    // At most 9 rows whatever is bound: names are reused, so a value meant for another
    // statement (4 bytes of text, read as an int4) must not ask the server for a billion rows.
    WithParams {
        sql: "SELECT g FROM generate_series(1, least($1::int, 9)) g",
        kinds: &[Kind::Int],
        types: &[],
    },
    WithParams {
        sql: "SELECT $1::int + 1 AS n, $2::text AS t",
        kinds: &[Kind::Int, Kind::Text],
        types: &[],
    },
    WithParams {
        sql: "INSERT INTO diff.items (id, name) VALUES ($1 + 100, $2) ON CONFLICT (id) DO NOTHING",
        kinds: &[Kind::Int, Kind::Text],
        types: &[],
    },
    WithParams {
        sql: "UPDATE diff.items SET qty = qty + 1 WHERE id = $1",
        kinds: &[Kind::Int],
        types: &[],
    },
    WithParams {
        sql: "DELETE FROM diff.items WHERE id = $1 + 100",
        kinds: &[Kind::Int],
        types: &[],
    },
];

/// Statements the policy allows (some fail on the server all the same).
pub const ALLOWED: &[&str] = &[
    "SELECT 1",
    "SELECT id, name, qty FROM diff.items ORDER BY id",
    "SELECT g FROM generate_series(1, 5) g",
    "SELECT count(*) FROM diff.items",
    "UPDATE diff.items SET qty = qty + 1 WHERE id = 2",
    "DELETE FROM diff.items WHERE id > 100",
    "INSERT INTO diff.items (id, name) VALUES (200, 'x') ON CONFLICT DO NOTHING",
    "SELECT 'multi\nline' AS a,\n  2 AS b",
    "SELECT 'O''Brien' AS name",
    "SELECT E'back\\\\slash', 'tab\there'",
    "SHOW standard_conforming_strings",
    "SELECT current_setting('application_name')",
    "VALUES (1), (2), (3)",
    "SELECT 'x\\' AS a, 1 AS b; --'",
    // Refused by the server with standard_conforming_strings off.
    "SELECT U&'\\0041' AS a",
];

/// Transaction control, sent as Parse as well as Query. (No SAVEPOINT in a Parse: a SQL EXECUTE
/// of a SAVEPOINT prepared through the protocol ends the server's session with a FATAL
/// `DefineSavepoint: unexpected state STARTED`, a server quirk pgid cannot help.)
pub const TRANSACTION: &[&str] = &["BEGIN", "COMMIT", "ROLLBACK"];

/// Statements the server fails.
pub const FAILING: &[&str] = &[
    "SELECT 1/0",
    "SELECT * FROM diff.missing",
    "SELECT nope FROM diff.items",
    "INSERT INTO diff.items (id, name) VALUES (1, 'duplicate')",
];

/// Statements the policy refuses.
pub const REFUSED: &[&str] = &[
    "DELETE FROM diff.items",
    "UPDATE diff.items SET qty = 0",
    "DROP TABLE diff.items",
    "SELECT pg_terminate_backend(1)",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT * FROM pgid.leases",
    "TRUNCATE diff.canary",
    "DELETE FROM diff.canary",
    "SELEC 1",
];

/// Statements with nothing to run: the server answers EmptyQueryResponse and logs nothing.
/// (Text with no token at all, `""` or `" "`, is left out while it aborts pgid: its lexer calls
/// `pg_query::scan_tokens`, which makes a slice from a null pointer when there are no tokens.)
pub const EMPTY: &[&str] = &[";", "-- nothing", " ; "];

/// Reads as one SELECT of a string with `standard_conforming_strings = off`, and as a SELECT
/// and a DELETE without WHERE (refused) with it on.
pub const TRICK: &str = "SELECT 'a\\'; DELETE FROM diff.canary; --'";
/// The other way round: one SELECT with the setting on, a SELECT and a DELETE with it off.
pub const TRICK_OFF: &str = "SELECT 'a\\'' ; DELETE FROM diff.canary; --'";

/// A statement past 512 bytes (pgid analyses those on another thread).
pub fn long_select() -> String {
    format!("SELECT 1{} AS long", " + 1".repeat(200))
}

pub const SETTINGS: &[&str] = &[
    "SET standard_conforming_strings = off",
    "SET standard_conforming_strings = on",
    "SET SESSION standard_conforming_strings TO off",
    "SET standard_conforming_strings TO DEFAULT",
    "RESET standard_conforming_strings",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT set_config('standard_conforming_strings', 'on', true)",
    "RESET ALL",
    "SET client_encoding = 'LATIN1'",
    "SET client_encoding = 'UTF8'",
    "SET application_name = 'pgid-diff'",
    "SET application_name = 'it''s'",
];

/// Savepoints and their undoing inside a block, around settings.
pub const SAVEPOINTS: &[&str] = &[
    "SAVEPOINT sp",
    "ROLLBACK TO SAVEPOINT sp",
    "RELEASE SAVEPOINT sp",
    "SELECT 1/0",
];
