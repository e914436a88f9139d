//! The lexing context: how the server reads the text of a message. It converts every string of
//! a message from the session's `client_encoding` to the server encoding before lexing, and
//! lexes `'…'` literals under `standard_conforming_strings`. Both can change during a session —
//! by SET, by `set_config`, by a function — and the server reports a change (ParameterStatus)
//! only just before its next ReadyForQuery. So pgid knows the context for a message only when
//! everything that could have changed it has been answered (see [`super::queue::settled`]).
//!
//! Most text does not depend on the context at all, and needs no knowledge of it: pure ASCII
//! reads the same in every client encoding Postgres accepts (each is ASCII where a byte is
//! below 0x80, and the client-only encodings whose multi-byte characters contain such bytes
//! are refused — see [`crate::encoding`]), and text with no backslash in a plain `'…'` literal
//! lexes the same either way of `standard_conforming_strings`. Only text that does depend on the
//! context needs it known; where it cannot be known, the message is refused.

use std::borrow::Cow;

use crate::encoding::{DecodeError, Encoding};
use crate::guard::Verdict;
use crate::sql::Dialect;

/// The settings a message's text is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexing {
    /// `None`: the server reported an encoding pgid does not know (it reads ASCII only).
    pub encoding: Option<Encoding>,
    /// `standard_conforming_strings`: backslashes are plain characters in `'…'` literals.
    pub standard_strings: bool,
}

impl Lexing {
    pub fn dialect(self) -> Dialect {
        Dialect {
            backslash_escapes: !self.standard_strings,
        }
    }
}

/// Why a message's text cannot be read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unread {
    /// It depends on the context, which pgid does not know yet.
    NeedsContext,
    /// It cannot be read the way the server will (refused with this verdict).
    Refused(Verdict, &'static str),
}

/// What pgid knows of the session's context.
#[derive(Debug, Clone)]
pub struct Context {
    /// As the server last reported it.
    pub current: Lexing,
    /// Reported settings that give literals their meaning (dates, intervals, time zones), as
    /// the server last reported them: part of what a retry-mode approval is for.
    meaning: std::collections::BTreeMap<String, String>,
    /// The server's own encoding is UTF-8 (pgid reads identifiers as the server does only then).
    server_utf8: bool,
}

/// Reported settings that change what a literal means (`'01/02/2026'` is 2 January under MDY,
/// 1 February under DMY).
const MEANING: &[&str] = &["DateStyle", "IntervalStyle", "TimeZone"];

fn refused(code: &'static str, reason: String) -> Unread {
    Unread::Refused(
        Verdict::Deny {
            rule: "encoding",
            reason,
        },
        code,
    )
}

/// Why a session cannot start, or go on, under the settings the server reported.
pub fn unsupported_encoding(name: &str) -> String {
    format!(
        "pgid: client_encoding {name} is not supported: its multi-byte characters can contain \
         ASCII bytes such as a backslash, so pgid cannot read statements as the server does; \
         use UTF8 or another ASCII-safe encoding"
    )
}

impl Context {
    /// From the ParameterStatus values of the login; `Err` says why no session can start.
    pub fn from_parameters(params: &[(String, String)]) -> Result<Context, String> {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let encoding = match get("client_encoding") {
            None => Encoding::UTF8,
            Some(name) => Encoding::from_name(name)
                .ok_or_else(|| format!("pgid: client_encoding {name} is not known to pgid"))?,
        };
        if !encoding.is_ascii_safe() {
            return Err(unsupported_encoding(encoding.name()));
        }
        Ok(Context {
            current: Lexing {
                encoding: Some(encoding),
                standard_strings: get("standard_conforming_strings") != Some("off"),
            },
            server_utf8: get("server_encoding").is_none_or(|e| e == "UTF8"),
            meaning: params
                .iter()
                .filter(|(n, _)| MEANING.contains(&n.as_str()))
                .cloned()
                .collect(),
        })
    }

    /// The reported settings that give literals their meaning, as one line.
    pub fn meaning(&self) -> String {
        let mut out = format!(
            "client_encoding={} standard_conforming_strings={}",
            self.current.encoding.map_or("?", |e| e.name()),
            if self.current.standard_strings {
                "on"
            } else {
                "off"
            }
        );
        for (n, v) in &self.meaning {
            out.push_str(&format!(" {n}={v}"));
        }
        out
    }

    /// A ParameterStatus: the setting as the server now has it.
    pub fn reported(&mut self, name: &[u8], value: &[u8]) {
        let value = String::from_utf8_lossy(value);
        match name {
            b"client_encoding" => {
                // An encoding pgid cannot name reads like an unsafe one: nothing non-ASCII.
                self.current.encoding = Encoding::from_name(&value);
            }
            b"standard_conforming_strings" => self.current.standard_strings = value != "off",
            b"server_encoding" => self.server_utf8 = value == "UTF8",
            _ => {
                let name = String::from_utf8_lossy(name);
                if MEANING.contains(&name.as_ref()) {
                    self.meaning.insert(name.into_owned(), value.into_owned());
                }
            }
        }
    }

    /// The text of a message string as the server reads it, and the dialect its literals are
    /// lexed in. `lexing` is the context when known; `sql` whether the bytes are SQL text (a
    /// name is not lexed, only converted).
    pub fn read<'a>(
        &self,
        bytes: &'a [u8],
        lexing: Option<Lexing>,
        sql: bool,
    ) -> Result<(Cow<'a, str>, Dialect), Unread> {
        let text = if bytes.is_ascii() {
            Cow::Borrowed(std::str::from_utf8(bytes).unwrap_or_else(|_| unreachable!()))
        } else {
            let Some(l) = lexing else {
                return Err(Unread::NeedsContext);
            };
            if !self.server_utf8 {
                return Err(refused(
                    crate::proxy::wire::sqlstate::FEATURE_NOT_SUPPORTED,
                    "the database's server_encoding is not UTF8: pgid reads only ASCII text there"
                        .into(),
                ));
            }
            let Some(encoding) = l.encoding else {
                return Err(refused(
                    crate::proxy::wire::sqlstate::FEATURE_NOT_SUPPORTED,
                    "the session's client_encoding is not known to pgid; only ASCII text is read"
                        .into(),
                ));
            };
            match encoding.decode(bytes) {
                Ok(t) => t,
                Err(e) => return Err(decode_refusal(encoding, e)),
            }
        };
        if !sql || !depends_on_standard_strings(&text) {
            let dialect = lexing.unwrap_or(self.current).dialect();
            return Ok((text, dialect));
        }
        match lexing {
            Some(l) => Ok((text, l.dialect())),
            None => Err(Unread::NeedsContext),
        }
    }
}

fn decode_refusal(encoding: Encoding, e: DecodeError) -> Unread {
    use crate::proxy::wire::sqlstate;
    let name = encoding.name();
    match e {
        DecodeError::Invalid(_) => refused(
            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
            format!("invalid byte sequence for encoding \"{name}\""),
        ),
        DecodeError::Unsupported(_) => refused(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "pgid cannot read non-ASCII text in client_encoding {name} exactly as the server \
                 does; use UTF8"
            ),
        ),
        DecodeError::Unsafe(_) => refused(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("client_encoding {name} is not ASCII-safe; pgid reads no non-ASCII text in it"),
        ),
    }
}

/// Whether `standard_conforming_strings` could change how `sql` is lexed.
pub fn depends_on_standard_strings(sql: &str) -> bool {
    crate::sql::depends_on_standard_conforming_strings(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::from_parameters(&[
            ("client_encoding".into(), "UTF8".into()),
            ("standard_conforming_strings".into(), "on".into()),
            ("server_encoding".into(), "UTF8".into()),
        ])
        .unwrap()
    }

    #[test]
    fn unsafe_encodings_refuse_the_session() {
        for name in ["SJIS", "BIG5", "GBK", "UHC", "GB18030"] {
            let e = Context::from_parameters(&[("client_encoding".into(), name.into())]);
            assert!(e.unwrap_err().contains("not supported"), "{name}");
        }
    }

    #[test]
    fn ascii_without_backslashes_needs_no_context() {
        let c = ctx();
        let (t, _) = c.read(b"SELECT 'a'", None, true).unwrap();
        assert_eq!(t, "SELECT 'a'");
        assert_eq!(
            c.read(br"SELECT 'a\'; DROP TABLE t; --'", None, true),
            Err(Unread::NeedsContext)
        );
        assert_eq!(
            c.read("SELECT 'é'".as_bytes(), None, true),
            Err(Unread::NeedsContext)
        );
        let off = Lexing {
            encoding: Some(Encoding::UTF8),
            standard_strings: false,
        };
        let (_, d) = c.read(br"SELECT 'a\'", Some(off), true).unwrap();
        assert!(d.backslash_escapes);
    }

    #[test]
    fn invalid_text_is_refused() {
        let c = ctx();
        let l = Some(c.current);
        assert!(matches!(
            c.read(b"SELECT '\xff'", l, true),
            Err(Unread::Refused(_, "22021"))
        ));
    }

    #[test]
    fn a_reported_unsafe_encoding_reads_ascii_only() {
        let mut c = ctx();
        c.reported(b"client_encoding", b"SJIS");
        let l = Some(c.current);
        assert!(c.read(b"SELECT 1", l, true).is_ok());
        assert!(matches!(
            c.read(b"SELECT '\x83\x5c'", l, true),
            Err(Unread::Refused(..))
        ));
    }
}
