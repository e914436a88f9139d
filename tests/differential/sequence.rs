//! The messages a generated client sends, as data: encoded onto the wire and printed as a
//! readable list when a property fails.

use std::fmt;

use bytes::{BufMut, BytesMut};
use pgid::proxy::wire::frontend::{self, Target};
use pgid::proxy::wire::{message, put_cstr};

/// Text that makes the server answer everything before it: `SELECT '<marker n>'`.
pub const MARKER_PREFIX: &str = "pgid-diff marker ";

/// Names past this many bytes are cut by the server (NAMEDATALEN - 1).
pub const NAME_BYTES: usize = 63;

/// A Bind parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    /// In binary format.
    Binary(Vec<u8>),
    Null,
}

impl Param {
    pub fn int4(i: i32) -> Param {
        Param::Binary(i.to_be_bytes().to_vec())
    }

    pub fn int8(i: i64) -> Param {
        Param::Binary(i.to_be_bytes().to_vec())
    }
}

/// `pg_backend_pid()`, for a FunctionCall message.
pub const PG_BACKEND_PID: u32 = 2026;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Query(String),
    Parse {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        values: Vec<Param>,
    },
    Describe(Target, String),
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close(Target, String),
    Sync,
    Flush,
    /// A FunctionCall of a function with no arguments, by OID.
    FunctionCall(u32),
}

impl Msg {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Msg::Query(sql) => frontend::query(out, sql.as_bytes()),
            Msg::Parse { name, sql, types } => {
                frontend::parse(out, name.as_bytes(), sql.as_bytes(), types)
            }
            Msg::Bind {
                portal,
                statement,
                values,
            } => message(out, b'B', |b| {
                put_cstr(b, portal);
                put_cstr(b, statement);
                b.put_i16(values.len() as i16);
                for v in values {
                    b.put_i16(i16::from(matches!(v, Param::Binary(_))));
                }
                b.put_i16(values.len() as i16);
                for v in values {
                    match v {
                        Param::Null => b.put_i32(-1),
                        Param::Text(t) => {
                            b.put_i32(t.len() as i32);
                            b.put_slice(t.as_bytes());
                        }
                        Param::Binary(bytes) => {
                            b.put_i32(bytes.len() as i32);
                            b.put_slice(bytes);
                        }
                    }
                }
                b.put_i16(0);
            }),
            Msg::Describe(target, name) => frontend::describe(out, *target, name.as_bytes()),
            Msg::Execute { portal, max_rows } => {
                frontend::execute(out, portal.as_bytes(), *max_rows)
            }
            Msg::Close(target, name) => message(out, b'C', |b| {
                b.put_u8(match target {
                    Target::Statement => b'S',
                    Target::Portal => b'P',
                });
                put_cstr(b, name);
            }),
            Msg::Sync => frontend::sync(out),
            Msg::Flush => message(out, b'H', |_| {}),
            Msg::FunctionCall(oid) => message(out, b'F', |b| {
                b.put_u32(*oid);
                b.put_i16(0);
                b.put_i16(0);
                b.put_i16(0);
            }),
        }
    }

    /// The marker Query that ends sequence `n`.
    pub fn marker(n: u64) -> Msg {
        Msg::Query(marker_sql(n))
    }
}

pub fn marker_sql(n: u64) -> String {
    format!("SELECT '{MARKER_PREFIX}{n}'")
}

/// The sequence number of a marker statement's text.
pub fn marker_number(sql: &str) -> Option<u64> {
    sql.strip_prefix("SELECT '")?
        .strip_prefix(MARKER_PREFIX)?
        .strip_suffix('\'')?
        .parse()
        .ok()
}

/// A name as printed: long ones as their first bytes and what follows the server's cut.
pub struct Name<'a>(pub &'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n.len() > NAME_BYTES && n.is_char_boundary(NAME_BYTES) {
            let (head, tail) = n.split_at(NAME_BYTES);
            let c = head.chars().next().unwrap_or('?');
            if head.chars().all(|x| x == c) {
                return write!(f, "\"{c}×{NAME_BYTES}{tail}\"");
            }
        }
        write!(f, "{n:?}")
    }
}

/// SQL text with long names shortened the same way (`x×63_1`).
pub fn readable_sql(sql: &str) -> String {
    let long = "x".repeat(NAME_BYTES);
    format!("{:?}", sql.replace(&long, &format!("x×{NAME_BYTES}")))
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Param::Text(t) => write!(f, "{t:?}"),
            Param::Binary(bytes) => match <[u8; 4]>::try_from(bytes.as_slice()) {
                Ok(four) => write!(f, "binary int4 {}", i32::from_be_bytes(four)),
                Err(_) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                    Ok(eight) => write!(f, "binary int8 {}", i64::from_be_bytes(eight)),
                    Err(_) => write!(f, "binary {:?}", String::from_utf8_lossy(bytes)),
                },
            },
            Param::Null => write!(f, "NULL"),
        }
    }
}

fn target(t: Target) -> &'static str {
    match t {
        Target::Statement => "statement",
        Target::Portal => "portal",
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Query(sql) => write!(f, "Query {}", readable_sql(sql)),
            Msg::Parse { name, sql, types } => {
                write!(f, "Parse {} {}", Name(name), readable_sql(sql))?;
                if !types.is_empty() {
                    write!(f, " types {types:?}")?;
                }
                Ok(())
            }
            Msg::Bind {
                portal,
                statement,
                values,
            } => {
                write!(
                    f,
                    "Bind portal {} ← statement {}",
                    Name(portal),
                    Name(statement)
                )?;
                if !values.is_empty() {
                    let v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                    write!(f, " values ({})", v.join(", "))?;
                }
                Ok(())
            }
            Msg::Describe(t, name) => write!(f, "Describe {} {}", target(*t), Name(name)),
            Msg::Execute { portal, max_rows } => {
                write!(f, "Execute {}", Name(portal))?;
                if *max_rows > 0 {
                    write!(f, " max_rows {max_rows}")?;
                }
                Ok(())
            }
            Msg::Close(t, name) => write!(f, "Close {} {}", target(*t), Name(name)),
            Msg::Sync => write!(f, "Sync"),
            Msg::Flush => write!(f, "Flush"),
            Msg::FunctionCall(oid) => write!(f, "FunctionCall of function OID {oid}"),
        }
    }
}

/// A list of messages, one numbered line each.
pub fn listing(messages: &[Msg]) -> String {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| format!("  {:>2}. {m}\n", i + 1))
        .collect()
}
