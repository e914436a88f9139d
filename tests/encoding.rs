//! Client encodings against a real server. Every answer `Encoding::decode` gives (a text, or
//! "the server refuses these bytes") must be the server's own: for every byte in every
//! encoding, every two-byte sequence of UTF8, SQL_ASCII and the EUC encodings, EUC_JP's
//! three-byte characters, and UTF-8 around each of its limits. Names resolve as the server
//! resolves them, and a client that sends those bytes under each client_encoding gets that text.
//! `regenerate_tables` (ignored) rebuilds src/encoding/tables.rs from the same server.

mod common;

use std::fmt::Write;

use bytes::BytesMut;
use pgid::dev::TempPostgres;
use pgid::encoding::{DecodeError, Encoding};
use pgid::proxy::wire::framing::{Frames, MAX_MESSAGE_BYTES};
use pgid::proxy::wire::{backend, message};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::Client;

/// convert_from, with NULL where the server refuses the bytes (any other error still fails).
const TRY_CONVERT: &str = "CREATE FUNCTION try_convert(bytes bytea, encoding name) RETURNS text
    LANGUAGE plpgsql AS $$
    BEGIN
        RETURN convert_from(bytes, encoding);
    EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
        RETURN NULL;
    END $$";

/// The ASCII-safe encodings that are not single-byte.
#[rustfmt::skip]
const MULTI_BYTE: &[&str] = &[
    "SQL_ASCII", "EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004", "UTF8", "MULE_INTERNAL",
];

/// Those pgid reads only ASCII of; it reads every other ASCII-safe encoding exactly.
const ASCII_ONLY: &[&str] = &["EUC_TW", "EUC_JIS_2004", "MULE_INTERNAL"];

fn single_byte() -> impl Iterator<Item = Encoding> {
    Encoding::all().filter(|e| e.is_ascii_safe() && !MULTI_BYTE.contains(&e.name()))
}

async fn server() -> (TempPostgres, Client) {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start postgres");
    let client = common::connect(&pg.superuser_url("postgres"))
        .await
        .unwrap();
    client.batch_execute(TRY_CONVERT).await.unwrap();
    (pg, client)
}

/// The server's text for each byte sequence in `encoding`, None where it refuses it.
async fn server_texts(
    client: &Client,
    encoding: &str,
    sequences: &[Vec<u8>],
) -> Vec<Option<String>> {
    let rows = client
        .query(
            "SELECT try_convert(s, $2) FROM unnest($1::bytea[]) WITH ORDINALITY AS u(s, i) ORDER BY i",
            &[&sequences, &encoding],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// The byte sequences `encoding` is tested with: every single byte, and for the multi-byte
/// encodings every lead byte with every second byte, EUC_JP's three-byte characters, and UTF-8
/// around each of its limits.
fn sequences(encoding: Encoding) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = (0..=255).map(|b| vec![b]).collect();
    let pairs = |lead| (0..=255).map(move |b| vec![lead, b]);
    match encoding.name() {
        "UTF8" | "SQL_ASCII" => {
            all.extend((0x80..=0xFF).flat_map(pairs));
            all.extend(utf8_limits());
        }
        "EUC_JP" => {
            all.extend((0x80..=0xFF).flat_map(pairs));
            all.extend(
                (0x80..=0xFF)
                    .flat_map(pairs)
                    .map(|pair| [vec![0x8F], pair].concat()),
            );
        }
        "EUC_KR" | "EUC_CN" | "EUC_TW" | "EUC_JIS_2004" => {
            all.extend((0x80..=0xFF).flat_map(pairs))
        }
        _ => {}
    }
    all
}

/// Three- and four-byte forms with every second byte around the limits that depend on it
/// (overlong forms, surrogates D800–DFFF, past U+10FFFF) and last bytes on either side of the
/// continuation range; five- and six-byte forms; truncated ones; noncharacters.
fn utf8_limits() -> Vec<Vec<u8>> {
    let mut all = vec![];
    for lead in 0xE0..=0xEF {
        for second in 0x70..=0xCF {
            for third in [0x7F, 0x80, 0xBF, 0xC0] {
                all.push(vec![lead, second, third]);
            }
        }
    }
    for lead in 0xF0..=0xF7 {
        for second in 0x70..=0xCF {
            for third in [0x80, 0xBF] {
                for fourth in [0x7F, 0x80, 0xBF, 0xC0] {
                    all.push(vec![lead, second, third, fourth]);
                }
            }
        }
    }
    all.extend([
        vec![0xF8, 0x88, 0x80, 0x80, 0x80],
        vec![0xFC, 0x84, 0x80, 0x80, 0x80, 0x80],
        vec![0xE2, 0x82],
        vec![0xF0, 0x9F, 0x98],
        vec![0xEF, 0xBF, 0xBE],
        vec![0xEF, 0xB7, 0x90],
        "straße ✓ 😀".as_bytes().to_vec(),
    ]);
    all
}

#[tokio::test]
async fn decoding_matches_the_server() {
    let (_pg, client) = server().await;
    let mut differences = vec![];
    for encoding in Encoding::all() {
        if encoding.name() == "MULE_INTERNAL" {
            // No conversion to UTF8 exists: the server refuses it as a client encoding.
            assert!(matches!(
                encoding.decode(b"\x81\xb0"),
                Err(DecodeError::Unsupported(_))
            ));
            continue;
        }
        let sequences = sequences(encoding);
        let server = server_texts(&client, encoding.name(), &sequences).await;
        let mut undecided = 0;
        for (bytes, server) in sequences.iter().zip(&server) {
            let ours = encoding.decode(bytes);
            match (&ours, server) {
                (Ok(ours), Some(server)) if ours == server => {}
                (Err(DecodeError::Invalid(_)), None) => {}
                (Err(DecodeError::Unsupported(_) | DecodeError::Unsafe(_)), _) => undecided += 1,
                _ => differences.push(format!(
                    "{encoding} {bytes:02X?}: pgid {ours:?}, server {server:?}"
                )),
            }
        }
        let exact = encoding.is_ascii_safe() && !ASCII_ONLY.contains(&encoding.name());
        if exact && undecided > 0 {
            differences.push(format!("{encoding}: {undecided} sequences not decoded"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences, the first:\n{}",
        differences.len(),
        differences[..differences.len().min(40)].join("\n")
    );
}

/// Aliases, other spellings, and names the server does not know.
#[rustfmt::skip]
const SPELLINGS: &[&str] = &[
    "utf8", "utf-8", "Utf_8", "UNICODE", "unicode", " utf 8 ", "u.t.f.8", "utf8é", "8utf", "utf88",
    "latin-1", "Latin_1", "ISO8859-1", "iso_8859_1", "ISO-8859-15", "iso8859-16", "latin0",
    "win", "WIN-1252", "windows-1252", "cp1252", "win866", "alt", "koi8", "KOI8-R", "koi8_u",
    "Shift_JIS", "shift-jis", "ms_kanji", "sjis", "win932", "Windows-932", "windows936", "win949",
    "big-5", "win950", "euc-jp", "eucJP", "EUC-JIS-2004", "gb-18030", "uhc", "johab",
    "tcvn", "TCVN-5712", "vscii", "abc", "sql-ascii", "ascii", "mule internal", "", "x",
];

#[tokio::test]
async fn names_resolve_as_the_server_resolves_them() {
    let (_pg, client) = server().await;
    let mut spellings: Vec<String> = Encoding::all().map(|e| e.name().to_string()).collect();
    spellings.extend(SPELLINGS.iter().map(|s| s.to_string()));
    // Names are cut to 63 bytes (NAMEDATALEN - 1) at a character boundary.
    let dashes = "-".repeat(58);
    spellings.extend([
        format!("utf8-{dashes}x"),
        format!("utf-{dashes}-8"),
        format!("utf8{dashes}ééé"),
    ]);
    let mut differences = vec![];
    for spelling in &spellings {
        assert!(!spelling.contains('\''));
        let ours = Encoding::from_name(spelling);
        let set = client
            .simple_query(&format!("SET client_encoding = '{spelling}'"))
            .await;
        let reported = match set {
            Ok(_) => {
                let row = client.query_one("SHOW client_encoding", &[]).await.unwrap();
                client.batch_execute("RESET client_encoding").await.unwrap();
                Some(row.get::<_, String>(0))
            }
            Err(_) => None,
        };
        let expected = match ours {
            // A UTF8 server knows the name but has no conversion for it.
            Some(e) if e.name() == "MULE_INTERNAL" => None,
            // Kept as sent, for old ODBC drivers.
            Some(_) if spelling == "UNICODE" => Some("UNICODE".to_string()),
            _ => ours.map(|e| e.name().to_string()),
        };
        if reported != expected {
            differences.push(format!("{spelling:?}: server {reported:?}, pgid {ours:?}"));
        }
        let known: String = client
            .query_one(
                "SELECT pg_encoding_to_char(pg_char_to_encoding($1::text))",
                &[spelling],
            )
            .await
            .unwrap()
            .get(0);
        if known != ours.map_or("", Encoding::name) {
            differences.push(format!(
                "{spelling:?}: pg_char_to_encoding {known:?}, pgid {ours:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// What the server sent back to one simple Query.
struct Reply {
    parameters: Vec<(String, String)>,
    values: Vec<Option<Vec<u8>>>,
    sqlstate: Option<String>,
}

async fn simple_query(s: &mut TcpStream, frames: &mut Frames, sql: &[u8]) -> Reply {
    let mut out = BytesMut::new();
    message(&mut out, b'Q', |b| {
        b.extend_from_slice(sql);
        b.extend_from_slice(&[0]);
    });
    s.write_all(&out).await.unwrap();
    let mut reply = Reply {
        parameters: vec![],
        values: vec![],
        sqlstate: None,
    };
    loop {
        let m = frames.read(s).await.unwrap();
        match m.tag {
            b'S' => reply
                .parameters
                .push(backend::parse_parameter_status(&m.body).unwrap()),
            b'E' => reply.sqlstate = backend::error_field(&m.body, b'C'),
            b'D' => {
                let mut at = 2;
                for _ in 0..i16::from_be_bytes([m.body[0], m.body[1]]) {
                    let len = i32::from_be_bytes(m.body[at..at + 4].try_into().unwrap());
                    at += 4;
                    let value = usize::try_from(len)
                        .ok()
                        .map(|len| m.body[at..at + len].to_vec());
                    at += value.as_ref().map_or(0, Vec::len);
                    reply.values.push(value);
                }
            }
            b'Z' => return reply,
            _ => {}
        }
    }
}

#[tokio::test]
async fn clients_get_the_text_decode_gives() {
    let (pg, client) = server().await;
    client.batch_execute("CREATE DATABASE app").await.unwrap();
    let mut s = common::raw_login(pg.port, "postgres", &pg.password).await;
    let mut frames = Frames::new(MAX_MESSAGE_BYTES);
    for encoding in Encoding::all() {
        let set = format!("SET client_encoding = '{encoding}'");
        let set = simple_query(&mut s, &mut frames, set.as_bytes()).await;
        if encoding.name() == "MULE_INTERNAL" {
            assert_eq!(set.sqlstate.as_deref(), Some("0A000"), "{encoding}");
            continue;
        }
        assert_eq!(
            set.parameters,
            [("client_encoding".to_string(), encoding.name().to_string())]
        );
        // Everything decode accepts, in one literal; a few sequences it refuses, one by one.
        let mut text = b"ASCII and ".to_vec();
        let mut refused = vec![];
        for bytes in sequences(encoding)
            .into_iter()
            .filter(|b| b.iter().all(|&b| b >= 0x80))
        {
            match encoding.decode(&bytes) {
                Ok(_) => text.extend(bytes),
                Err(DecodeError::Invalid(_)) if refused.len() < 5 => refused.push(bytes),
                Err(_) => {}
            }
        }
        let Ok(expected) = encoding.decode(&text) else {
            assert!(!encoding.is_ascii_safe(), "{encoding}");
            continue;
        };
        let select = [&b"SELECT convert_to('"[..], &text, b"', 'UTF8')"].concat();
        let reply = simple_query(&mut s, &mut frames, &select).await;
        assert_eq!(reply.sqlstate, None, "{encoding}");
        let hex = reply.values[0].as_deref().unwrap();
        let server = String::from_utf8(hex::decode(&hex[2..]).unwrap()).unwrap();
        if let Some((at, (server, ours))) = server
            .chars()
            .zip(expected.chars())
            .enumerate()
            .find(|(_, (server, ours))| server != ours)
        {
            panic!("{encoding}: character {at} is {server:?} to the server, {ours:?} to pgid");
        }
        assert_eq!(server.len(), expected.len(), "{encoding}");
        for bytes in refused {
            let select = [&b"SELECT 'a"[..], &bytes, b"b'"].concat();
            let reply = simple_query(&mut s, &mut frames, &select).await;
            assert!(
                matches!(reply.sqlstate.as_deref(), Some("22021" | "22P05")),
                "{encoding} {bytes:02X?}: {:?}",
                reply.sqlstate
            );
        }
    }
}

/// Rebuilds src/encoding/tables.rs from the server:
/// `cargo test --test encoding -- --ignored regenerate_tables`, then review the diff.
#[tokio::test]
#[ignore]
async fn regenerate_tables() {
    let (_pg, client) = server().await;
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    let mut out = format!(
        "//! Generated from PostgreSQL {version} by\n\
         //! `cargo test --test encoding -- --ignored regenerate_tables`; do not edit.\n\
         //! What the server's convert_from gives for each byte of the single-byte encodings; which\n\
         //! EUC byte sequences it accepts, and the characters it reads differently from encoding_rs.\n"
    );
    let bytes: Vec<Vec<u8>> = (0x01..=0xFF).map(|b| vec![b]).collect();
    for encoding in single_byte() {
        let name = encoding.name();
        let texts = server_texts(&client, name, &bytes).await;
        let mut characters = vec![];
        for (b, text) in bytes.iter().zip(texts) {
            let mut chars = text.as_deref().unwrap_or("\0").chars();
            let (c, None) = (chars.next().unwrap(), chars.next()) else {
                panic!("{name} {b:02X?} is {text:?}");
            };
            if b[0] < 0x80 {
                assert_eq!(u32::from(c), u32::from(b[0]), "{name} reads ASCII as ASCII");
            } else {
                characters.push(
                    u16::try_from(u32::from(c)).expect("single-byte characters are in the BMP"),
                );
            }
        }
        writeln!(out, "\n/// {name}: the character each byte 0x80..=0xFF becomes, 0 where the server refuses the byte.").unwrap();
        writeln!(out, "pub(super) static {name}: [u16; 128] = [").unwrap();
        for line in characters.chunks(16) {
            let line: Vec<String> = line.iter().map(|c| format!("0x{c:04x},")).collect();
            writeln!(out, "    {}", line.join(" ")).unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let euc = [
        ("EUC_JP", encoding_rs::EUC_JP),
        ("EUC_KR", encoding_rs::EUC_KR),
        ("EUC_CN", encoding_rs::GBK),
    ];
    for (name, theirs) in euc {
        let mut server_characters = vec![];
        let mut planes = vec![("TWO_BYTE", "two-byte characters", vec![])];
        if name == "EUC_JP" {
            planes.push((
                "THREE_BYTE",
                "three-byte characters (after 0x8F)",
                vec![0x8F],
            ));
        }
        for (plane, what, prefix) in planes {
            let sequences: Vec<Vec<u8>> = (0x80..=0xFF)
                .flat_map(|a| (0x80..=0xFF).map(move |b| vec![a, b]))
                .map(|pair| [&prefix[..], &pair[..]].concat())
                .collect();
            let texts = server_texts(&client, name, &sequences).await;
            let mut pairs = [0u128; 128];
            for (sequence, text) in sequences.iter().zip(texts) {
                let Some(text) = text else { continue };
                let [first, second] = sequence[sequence.len() - 2..] else {
                    unreachable!()
                };
                pairs[usize::from(first - 0x80)] |= 1 << (second - 0x80);
                if theirs
                    .decode_without_bom_handling_and_without_replacement(sequence)
                    .as_deref()
                    != Some(&text)
                {
                    let mut chars = text.chars();
                    let (c, None) = (chars.next().unwrap(), chars.next()) else {
                        panic!("{name} {sequence:02X?} is {text:?}");
                    };
                    let key = sequence
                        .iter()
                        .fold(0u32, |key, &b| key << 8 | u32::from(b));
                    server_characters.push((key, c));
                }
            }
            writeln!(out, "\n/// {name} {what} the server accepts: for each first byte 0x80..=0xFF,\n/// bit (second byte - 0x80).").unwrap();
            writeln!(out, "pub(super) static {name}_{plane}: [u128; 128] = [").unwrap();
            for (first, row) in pairs.iter().enumerate() {
                writeln!(out, "    0x{row:032x}, // 0x{:02X}", first + 0x80).unwrap();
            }
            writeln!(out, "];").unwrap();
        }
        server_characters.sort();
        writeln!(out, "\n/// {name} characters the server reads differently from encoding_rs, as the server reads them.").unwrap();
        writeln!(
            out,
            "pub(super) static {name}_SERVER_CHARACTERS: [(u32, char); {}] = [",
            server_characters.len()
        )
        .unwrap();
        for (key, c) in server_characters {
            writeln!(out, "    (0x{key:x}, '\\u{{{:x}}}'),", u32::from(c)).unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/encoding/tables.rs");
    std::fs::write(path, out).unwrap();
}
