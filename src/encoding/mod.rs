//! Client encodings: the bytes a client sends, read exactly as the server reads them.
//!
//! PostgreSQL converts every string in a client's messages from the session's `client_encoding`
//! to the server encoding (UTF8 wherever pgid runs) before it lexes a statement. pgid judges the
//! statement the server will run, so it reads those bytes the same way or not at all:
//! [`Encoding::decode`] gives the server's text, refuses what the server refuses, and says so
//! when it cannot be exact. Every character it gives comes from PostgreSQL itself: the
//! single-byte tables and the EUC corrections in `tables.rs` were generated from a server, and
//! `tests/encoding.rs` compares every answer with one. Pure: no I/O.

use std::borrow::Cow;
use std::fmt;

mod euc;
// Generated; its layout is the generator's.
#[rustfmt::skip]
mod tables;

use euc::Euc;

/// A PostgreSQL client encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encoding(Id);

/// Why bytes could not be read as the server reads them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The server would reject these bytes too.
    #[error("invalid byte sequence for encoding \"{0}\"")]
    Invalid(Encoding),
    /// Non-ASCII bytes in an encoding pgid cannot convert exactly.
    #[error("pgid cannot read non-ASCII text in client_encoding {0} exactly; ASCII-only statements work, or use client_encoding UTF8")]
    Unsupported(Encoding),
    /// An encoding whose multi-byte characters may contain ASCII bytes: pgid never decodes it.
    #[error("pgid does not accept client_encoding {0}: its multi-byte characters can contain bytes that read as ASCII, such as a backslash; use client_encoding UTF8")]
    Unsafe(Encoding),
}

/// How pgid reads an encoding.
enum Reader {
    /// UTF-8 as the server validates it (for SQL_ASCII too: see [`Encoding::decode`]).
    Utf8,
    /// The character each byte 0x80..=0xFF becomes, 0 where the server refuses the byte.
    SingleByte(&'static [u16; 128]),
    Euc(&'static Euc),
    /// ASCII-safe, but its other characters are beyond pgid.
    AsciiOnly,
    Unsafe,
}

/// Lists PostgreSQL's encodings once: in its own order (`pg_enc`), under the names the server
/// reports (`pg_enc2name_tbl`), each with how pgid reads it.
macro_rules! encodings {
    ($($id:ident => $reader:expr,)*) => {
        // PostgreSQL's spelling, which is also what name() says.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        enum Id {
            $($id,)*
        }

        impl Id {
            const ALL: &[Id] = &[$(Id::$id,)*];

            fn name(self) -> &'static str {
                match self {
                    $(Id::$id => stringify!($id),)*
                }
            }

            fn reader(self) -> Reader {
                use Reader::*;
                match self {
                    $(Id::$id => $reader,)*
                }
            }
        }
    };
}

encodings! {
    SQL_ASCII => Utf8,
    EUC_JP => Euc(&euc::EUC_JP),
    EUC_CN => Euc(&euc::EUC_CN),
    EUC_KR => Euc(&euc::EUC_KR),
    EUC_TW => AsciiOnly,
    EUC_JIS_2004 => AsciiOnly,
    UTF8 => Utf8,
    // No conversion to UTF8 exists: a UTF8 server refuses it as a client encoding.
    MULE_INTERNAL => AsciiOnly,
    LATIN1 => SingleByte(&tables::LATIN1),
    LATIN2 => SingleByte(&tables::LATIN2),
    LATIN3 => SingleByte(&tables::LATIN3),
    LATIN4 => SingleByte(&tables::LATIN4),
    LATIN5 => SingleByte(&tables::LATIN5),
    LATIN6 => SingleByte(&tables::LATIN6),
    LATIN7 => SingleByte(&tables::LATIN7),
    LATIN8 => SingleByte(&tables::LATIN8),
    LATIN9 => SingleByte(&tables::LATIN9),
    LATIN10 => SingleByte(&tables::LATIN10),
    WIN1256 => SingleByte(&tables::WIN1256),
    WIN1258 => SingleByte(&tables::WIN1258),
    WIN866 => SingleByte(&tables::WIN866),
    WIN874 => SingleByte(&tables::WIN874),
    KOI8R => SingleByte(&tables::KOI8R),
    WIN1251 => SingleByte(&tables::WIN1251),
    WIN1252 => SingleByte(&tables::WIN1252),
    ISO_8859_5 => SingleByte(&tables::ISO_8859_5),
    ISO_8859_6 => SingleByte(&tables::ISO_8859_6),
    ISO_8859_7 => SingleByte(&tables::ISO_8859_7),
    ISO_8859_8 => SingleByte(&tables::ISO_8859_8),
    WIN1250 => SingleByte(&tables::WIN1250),
    WIN1253 => SingleByte(&tables::WIN1253),
    WIN1254 => SingleByte(&tables::WIN1254),
    WIN1255 => SingleByte(&tables::WIN1255),
    WIN1257 => SingleByte(&tables::WIN1257),
    KOI8U => SingleByte(&tables::KOI8U),
    // Client-only encodings whose second bytes may be < 0x80.
    SJIS => Unsafe,
    BIG5 => Unsafe,
    GBK => Unsafe,
    UHC => Unsafe,
    GB18030 => Unsafe,
    JOHAB => Unsafe,
    SHIFT_JIS_2004 => Unsafe,
}

/// Every spelling `pg_char_to_encoding` knows (src/common/encnames.c), cleaned as it cleans
/// names and sorted as it searches them.
const NAMES: &[(&str, Id)] = {
    use Id::*;
    &[
        ("abc", WIN1258),
        ("alt", WIN866),
        ("big5", BIG5),
        ("euccn", EUC_CN),
        ("eucjis2004", EUC_JIS_2004),
        ("eucjp", EUC_JP),
        ("euckr", EUC_KR),
        ("euctw", EUC_TW),
        ("gb18030", GB18030),
        ("gbk", GBK),
        ("iso88591", LATIN1),
        ("iso885910", LATIN6),
        ("iso885913", LATIN7),
        ("iso885914", LATIN8),
        ("iso885915", LATIN9),
        ("iso885916", LATIN10),
        ("iso88592", LATIN2),
        ("iso88593", LATIN3),
        ("iso88594", LATIN4),
        ("iso88595", ISO_8859_5),
        ("iso88596", ISO_8859_6),
        ("iso88597", ISO_8859_7),
        ("iso88598", ISO_8859_8),
        ("iso88599", LATIN5),
        ("johab", JOHAB),
        ("koi8", KOI8R),
        ("koi8r", KOI8R),
        ("koi8u", KOI8U),
        ("latin1", LATIN1),
        ("latin10", LATIN10),
        ("latin2", LATIN2),
        ("latin3", LATIN3),
        ("latin4", LATIN4),
        ("latin5", LATIN5),
        ("latin6", LATIN6),
        ("latin7", LATIN7),
        ("latin8", LATIN8),
        ("latin9", LATIN9),
        ("mskanji", SJIS),
        ("muleinternal", MULE_INTERNAL),
        ("shiftjis", SJIS),
        ("shiftjis2004", SHIFT_JIS_2004),
        ("sjis", SJIS),
        ("sqlascii", SQL_ASCII),
        ("tcvn", WIN1258),
        ("tcvn5712", WIN1258),
        ("uhc", UHC),
        ("unicode", UTF8),
        ("utf8", UTF8),
        ("vscii", WIN1258),
        ("win", WIN1251),
        ("win1250", WIN1250),
        ("win1251", WIN1251),
        ("win1252", WIN1252),
        ("win1253", WIN1253),
        ("win1254", WIN1254),
        ("win1255", WIN1255),
        ("win1256", WIN1256),
        ("win1257", WIN1257),
        ("win1258", WIN1258),
        ("win866", WIN866),
        ("win874", WIN874),
        ("win932", SJIS),
        ("win936", GBK),
        ("win949", UHC),
        ("win950", BIG5),
        ("windows1250", WIN1250),
        ("windows1251", WIN1251),
        ("windows1252", WIN1252),
        ("windows1253", WIN1253),
        ("windows1254", WIN1254),
        ("windows1255", WIN1255),
        ("windows1256", WIN1256),
        ("windows1257", WIN1257),
        ("windows1258", WIN1258),
        ("windows866", WIN866),
        ("windows874", WIN874),
        ("windows932", SJIS),
        ("windows936", GBK),
        ("windows949", UHC),
        ("windows950", BIG5),
    ]
};

/// A name of this many bytes or more is cut to one byte less (at a character boundary).
const NAMEDATALEN: usize = 64;

impl Encoding {
    pub const UTF8: Encoding = Encoding(Id::UTF8);

    /// Every encoding PostgreSQL knows, in its own order.
    pub fn all() -> impl Iterator<Item = Encoding> {
        Id::ALL.iter().map(|&id| Encoding(id))
    }

    /// The encoding a client_encoding setting means to the server: like any name, it keeps
    /// only its first 63 bytes; then, as in `pg_char_to_encoding`, ASCII letters and digits
    /// count, case-insensitively, and everything else is ignored, so "Latin-1", "ISO_8859_1"
    /// and "iso8859-1" are all LATIN1; aliases such as "unicode", "win932" or "koi8" count too.
    /// `None` for names the server does not know. MULE_INTERNAL is known, but a UTF8 server
    /// refuses it as a client encoding (there is no conversion).
    pub fn from_name(name: &str) -> Option<Encoding> {
        let mut end = name.len().min(NAMEDATALEN - 1);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut cleaned = [0u8; NAMEDATALEN];
        let mut len = 0;
        for b in name[..end].bytes().filter(u8::is_ascii_alphanumeric) {
            cleaned[len] = b.to_ascii_lowercase();
            len += 1;
        }
        let key = &cleaned[..len];
        NAMES
            .binary_search_by(|(name, _)| name.as_bytes().cmp(key))
            .ok()
            .map(|i| Encoding(NAMES[i].1))
    }

    /// The canonical name, as the server reports it in ParameterStatus client_encoding ("UTF8",
    /// "LATIN1", "WIN1252", "SQL_ASCII", "SJIS", "EUC_JP", …). One exception on the server's
    /// side: a client that sets exactly "UNICODE" has "UNICODE" reported back (kept for old
    /// ODBC drivers); that is UTF8.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// False for the client-only encodings whose multi-byte characters may contain bytes below
    /// 0x80 (SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB); true for all others.
    pub fn is_ascii_safe(self) -> bool {
        !matches!(self.0.reader(), Reader::Unsafe)
    }

    /// The text the server sees after converting `bytes` from this client encoding to UTF8.
    ///
    /// Exact for UTF8 and SQL_ASCII (which a UTF8 server does not convert but still checks as
    /// UTF-8), every single-byte encoding, EUC_JP, EUC_KR and EUC_CN; ASCII-only text for
    /// EUC_TW, EUC_JIS_2004 and MULE_INTERNAL. Pure ASCII comes back borrowed, as does all of
    /// UTF8 and SQL_ASCII. A NUL byte is invalid everywhere, as on the server.
    pub fn decode(self, bytes: &[u8]) -> Result<Cow<'_, str>, DecodeError> {
        let invalid = DecodeError::Invalid(self);
        let reader = self.0.reader();
        if let Reader::Unsafe = reader {
            return Err(DecodeError::Unsafe(self));
        }
        if matches!(reader, Reader::Utf8) || bytes.is_ascii() {
            let text = std::str::from_utf8(bytes)
                .ok()
                .filter(|_| !bytes.contains(&0));
            return text.map(Cow::Borrowed).ok_or(invalid);
        }
        match reader {
            Reader::SingleByte(table) => {
                let decoded = bytes.iter().map(|&b| match b {
                    0 => None,
                    0x01..=0x7F => Some(char::from(b)),
                    _ => char::from_u32(table[usize::from(b - 0x80)].into()).filter(|&c| c != '\0'),
                });
                decoded
                    .collect::<Option<String>>()
                    .map(Cow::Owned)
                    .ok_or(invalid)
            }
            Reader::Euc(euc) => euc.decode(bytes).map(Cow::Owned).ok_or(invalid),
            Reader::AsciiOnly if bytes.contains(&0) => Err(invalid),
            _ => Err(DecodeError::Unsupported(self)),
        }
    }

    /// pgid's own messages in this encoding, for the client; characters the encoding cannot
    /// represent (or that pgid cannot encode exactly) become '?'.
    pub fn encode_lossy(self, text: &str) -> Cow<'_, [u8]> {
        let reader = self.0.reader();
        if text.is_ascii() || matches!(reader, Reader::Utf8) {
            return Cow::Borrowed(text.as_bytes());
        }
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match (c.is_ascii(), &reader) {
                (true, _) => out.push(c as u8),
                (false, Reader::SingleByte(table)) => {
                    let byte = table.iter().position(|&u| u32::from(u) == u32::from(c));
                    out.push(byte.map_or(b'?', |i| 0x80 + i as u8));
                }
                (false, Reader::Euc(euc)) => euc.encode(c, &mut out),
                (false, _) => out.push(b'?'),
            }
        }
        Cow::Owned(out)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Encoding {
        Encoding::from_name(name).unwrap()
    }

    #[test]
    fn names_resolve_like_pg_char_to_encoding() {
        for (spelling, name) in [
            ("UTF8", "UTF8"),
            ("utf-8", "UTF8"),
            ("unicode", "UTF8"),
            ("Latin-1", "LATIN1"),
            ("ISO_8859_1", "LATIN1"),
            ("iso8859-15", "LATIN9"),
            ("ISO-8859-5", "ISO_8859_5"),
            ("windows-1252", "WIN1252"),
            ("win", "WIN1251"),
            ("alt", "WIN866"),
            ("koi8", "KOI8R"),
            ("Shift_JIS", "SJIS"),
            ("ms-kanji", "SJIS"),
            ("Windows932", "SJIS"),
            ("win936", "GBK"),
            ("win949", "UHC"),
            ("win950", "BIG5"),
            ("sql_ascii", "SQL_ASCII"),
            ("tcvn5712", "WIN1258"),
            ("euc-jis-2004", "EUC_JIS_2004"),
            (" u.t.f 8 é", "UTF8"),
        ] {
            assert_eq!(named(spelling).name(), name, "{spelling}");
        }
        for unknown in ["", "utf", "cp1252", "ascii", "latin0", "utf88", "8utf"] {
            assert_eq!(Encoding::from_name(unknown), None, "{unknown}");
        }
        // Only the first 63 bytes count, cut at a character boundary.
        let dashes = "-".repeat(58);
        assert_eq!(
            Encoding::from_name(&format!("utf8-{dashes}x")),
            Some(Encoding::UTF8)
        );
        assert_eq!(Encoding::from_name(&format!("utf-{dashes}-8")), None);
        assert_eq!(
            Encoding::from_name(&format!("utf8{dashes}ééé")),
            Some(Encoding::UTF8)
        );
    }

    #[test]
    fn every_encoding_has_its_name_and_the_name_table_is_searchable() {
        assert_eq!(Encoding::all().count(), 42);
        for encoding in Encoding::all() {
            assert_eq!(Encoding::from_name(encoding.name()), Some(encoding));
            assert_eq!(encoding.to_string(), encoding.name());
        }
        assert!(NAMES.windows(2).all(|pair| pair[0].0 < pair[1].0));
    }

    #[test]
    fn only_the_client_only_multi_byte_encodings_are_unsafe() {
        let unsafe_ones: Vec<&str> = Encoding::all()
            .filter(|e| !e.is_ascii_safe())
            .map(Encoding::name)
            .collect();
        assert_eq!(
            unsafe_ones,
            [
                "SJIS",
                "BIG5",
                "GBK",
                "UHC",
                "GB18030",
                "JOHAB",
                "SHIFT_JIS_2004"
            ]
        );
        for name in unsafe_ones {
            assert_eq!(
                named(name).decode(b"SELECT 1"),
                Err(DecodeError::Unsafe(named(name)))
            );
        }
    }

    #[test]
    fn utf8_is_checked_as_the_server_checks_it_and_never_copied() {
        for encoding in [Encoding::UTF8, named("SQL_ASCII")] {
            for text in ["SELECT 1", "SELECT 'ünïcødé', '日本', '😀'", ""] {
                let decoded = encoding.decode(text.as_bytes()).unwrap();
                assert!(matches!(decoded, Cow::Borrowed(t) if t == text));
            }
            for invalid in [
                &b"\xC0\x80"[..],        // overlong NUL
                b"\xE0\x9F\xBF",         // overlong U+07FF
                b"\xED\xA0\x80",         // surrogate U+D800
                b"\xF4\x90\x80\x80",     // past U+10FFFF
                b"\xF8\x88\x80\x80\x80", // five bytes
                b"\xE2\x82",             // truncated
                b"\x80",                 // lone continuation
                b"SELECT \x00",          // NUL
            ] {
                assert_eq!(
                    encoding.decode(invalid),
                    Err(DecodeError::Invalid(encoding))
                );
            }
        }
    }

    #[test]
    fn single_byte_encodings_use_the_servers_tables() {
        let cases = [
            ("LATIN1", &b"caf\xE9"[..], "café"),
            ("WIN1252", b"\x80 \x93x\x94", "€ “x”"),
            ("LATIN9", b"\xA4", "€"),
            ("KOI8R", b"\xD0\xD2\xC9\xD7\xC5\xD4", "привет"),
            ("WIN1251", b"\xEF\xF0\xE8", "при"),
            ("ISO_8859_7", b"\xE1\xE2\xE3", "αβγ"),
        ];
        for (name, bytes, text) in cases {
            assert_eq!(named(name).decode(bytes).unwrap(), text, "{name}");
        }
        assert!(matches!(
            named("LATIN1").decode(b"SELECT 1"),
            Ok(Cow::Borrowed("SELECT 1"))
        ));
        // Bytes a server refuses: undefined in WIN1252, and NUL anywhere.
        let win1252 = named("WIN1252");
        assert_eq!(win1252.decode(b"\x81"), Err(DecodeError::Invalid(win1252)));
        assert_eq!(
            win1252.decode(b"\xE9\x00"),
            Err(DecodeError::Invalid(win1252))
        );
    }

    #[test]
    fn euc_reads_what_the_server_reads() {
        let cases = [
            ("EUC_JP", &b"SELECT '\xC6\xFC\xCB\xDC'"[..], "SELECT '日本'"),
            ("EUC_JP", b"\x8E\xB1", "ｱ"),      // half-width katakana
            ("EUC_JP", b"\x8F\xB0\xA1", "丂"), // JIS X 0212
            ("EUC_JP", b"\x8F\xA2\xC3", "\u{FFE4}"), // not encoding_rs's U+00A6
            ("EUC_KR", b"\xC7\xD1\xB1\xB9", "한국"),
            ("EUC_KR", b"a\xA2\xE8b", "a\u{327E}b"), // KS X 1001:2002, not in encoding_rs
            ("EUC_CN", b"\xD6\xD0\xCE\xC4", "中文"),
            ("EUC_CN", b"\xA1\xA4\xA1\xAA", "\u{30FB}\u{2015}"), // not GBK's U+00B7 U+2014
        ];
        for (name, bytes, text) in cases {
            assert_eq!(
                named(name).decode(bytes).unwrap(),
                text,
                "{name} {bytes:02X?}"
            );
        }
        for (name, bytes) in [
            ("EUC_JP", &b"\xC6"[..]),    // truncated
            ("EUC_JP", b"\xF9\xA1"),     // IBM extension row encoding_rs knows
            ("EUC_JP", b"\x8F\xA1"),     // truncated three-byte
            ("EUC_KR", b"\x81\x41"),     // UHC only
            ("EUC_CN", b"\x81\x40"),     // GBK only
            ("EUC_CN", b"\xA1'"),        // a quote is never a second byte
            ("EUC_CN", b"\xD6\xD0\x00"), // NUL
        ] {
            let encoding = named(name);
            assert_eq!(
                encoding.decode(bytes),
                Err(DecodeError::Invalid(encoding)),
                "{name} {bytes:02X?}"
            );
        }
    }

    #[test]
    fn encodings_pgid_cannot_convert_take_ascii_only() {
        for name in ["EUC_TW", "EUC_JIS_2004", "MULE_INTERNAL"] {
            let encoding = named(name);
            assert!(matches!(
                encoding.decode(b"SELECT 1"),
                Ok(Cow::Borrowed("SELECT 1"))
            ));
            assert_eq!(
                encoding.decode(b"\xA4\xA1"),
                Err(DecodeError::Unsupported(encoding))
            );
            assert_eq!(
                encoding.decode(b"\x00"),
                Err(DecodeError::Invalid(encoding))
            );
        }
        let message = DecodeError::Unsupported(named("EUC_TW")).to_string();
        assert!(
            message.contains("EUC_TW") && message.contains("ASCII"),
            "{message}"
        );
    }

    #[test]
    fn pgid_messages_are_encoded_for_the_client() {
        let message = "lease “nightly” ended — café";
        assert!(
            matches!(Encoding::UTF8.encode_lossy(message), Cow::Borrowed(b) if b == message.as_bytes())
        );
        assert!(matches!(
            named("SJIS").encode_lossy("denied"),
            Cow::Borrowed(b"denied")
        ));
        assert_eq!(
            named("WIN1252").encode_lossy(message).as_ref(),
            b"lease \x93nightly\x94 ended \x97 caf\xE9"
        );
        assert_eq!(
            named("LATIN1").encode_lossy(message).as_ref(),
            b"lease ?nightly? ended ? caf\xE9"
        );
        assert_eq!(
            named("EUC_JP").encode_lossy("日本 é").as_ref(),
            b"\xC6\xFC\xCB\xDC ?"
        );
        assert_eq!(
            named("EUC_CN").encode_lossy("\u{30FB}").as_ref(),
            b"\xA1\xA4"
        );
        // encoding_rs writes 갂 as UHC's 0x81 0x41, which an EUC_KR client cannot read.
        assert_eq!(named("EUC_KR").encode_lossy("한갂").as_ref(), b"\xC7\xD1?");
        assert_eq!(named("SJIS").encode_lossy("日本").as_ref(), b"??");
    }
}
