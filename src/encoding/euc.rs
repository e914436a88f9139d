//! The ASCII-safe multi-byte encodings pgid reads exactly: EUC_JP, EUC_KR and EUC_CN.
//!
//! encoding_rs decodes the characters; PostgreSQL's own tables (`tables.rs`) say which byte
//! sequences the server accepts and, for the few where encoding_rs gives another character,
//! which one the server gives. Both are needed: encoding_rs's EUC-KR is Microsoft's superset
//! (UHC) and EUC_CN is read with its superset GBK, so on their own they would accept bytes the
//! server refuses.

use encoding_rs::{DecoderResult, EncoderResult};

use super::tables;

/// An EUC encoding: a byte below 0x80 is ASCII; any other starts a character of two bytes, or
/// of three after the three-byte lead.
pub(super) struct Euc {
    characters: &'static encoding_rs::Encoding,
    /// Which pairs of bytes the server accepts as a two-byte character.
    two_byte: &'static Pairs,
    /// The lead of three-byte characters (EUC_JP's JIS X 0212 ones), and which pairs of bytes
    /// the server accepts after it.
    three_byte: Option<(u8, &'static Pairs)>,
    /// Characters where the server and encoding_rs differ, as the server reads them: the
    /// sequence as a big-endian number, sorted.
    server_characters: &'static [(u32, char)],
}

/// For each first byte 0x80..=0xFF, bit (second byte - 0x80) set where the pair is accepted.
type Pairs = [u128; 128];

pub(super) static EUC_JP: Euc = Euc {
    characters: &encoding_rs::EUC_JP_INIT,
    two_byte: &tables::EUC_JP_TWO_BYTE,
    three_byte: Some((0x8F, &tables::EUC_JP_THREE_BYTE)),
    server_characters: &tables::EUC_JP_SERVER_CHARACTERS,
};

pub(super) static EUC_KR: Euc = Euc {
    characters: &encoding_rs::EUC_KR_INIT,
    two_byte: &tables::EUC_KR_TWO_BYTE,
    three_byte: None,
    server_characters: &tables::EUC_KR_SERVER_CHARACTERS,
};

pub(super) static EUC_CN: Euc = Euc {
    characters: &encoding_rs::GBK_INIT,
    two_byte: &tables::EUC_CN_TWO_BYTE,
    three_byte: None,
    server_characters: &tables::EUC_CN_SERVER_CHARACTERS,
};

impl Euc {
    /// The server's text, or None where the server refuses the bytes.
    pub(super) fn decode(&self, bytes: &[u8]) -> Option<String> {
        let mut text = String::with_capacity(bytes.len() * 3 / 2);
        // Checked runs of characters go to encoding_rs in one call, up to a server character.
        let mut undecoded = 0;
        let mut at = 0;
        while let Some(&lead) = bytes.get(at) {
            let len = match lead {
                0 => return None,
                0x01..=0x7F => 1,
                _ if self.three_byte.is_some_and(|(three, _)| three == lead) => 3,
                _ => 2,
            };
            let sequence = bytes.get(at..at + len)?;
            if len > 1 {
                if !self.accepts(sequence) {
                    return None;
                }
                if let Some(c) = self.server_character(sequence) {
                    self.decode_into(&bytes[undecoded..at], &mut text)?;
                    text.push(c);
                    undecoded = at + len;
                }
            }
            at += len;
        }
        self.decode_into(&bytes[undecoded..], &mut text)?;
        Some(text)
    }

    /// Appends the bytes the server reads as `c`, or '?' where there are none pgid knows.
    pub(super) fn encode(&self, c: char, out: &mut Vec<u8>) {
        let mut sequence = [0u8; 4];
        let len = match self.server_characters.iter().find(|&&(_, s)| s == c) {
            Some(&(key, _)) => {
                let len = if key > 0xFFFF { 3 } else { 2 };
                sequence[..len].copy_from_slice(&key.to_be_bytes()[4 - len..]);
                len
            }
            None => {
                let mut utf8 = [0u8; 4];
                let mut encoder = self.characters.new_encoder();
                let (result, _, written) = encoder.encode_from_utf8_without_replacement(
                    c.encode_utf8(&mut utf8),
                    &mut sequence,
                    true,
                );
                if result == EncoderResult::InputEmpty {
                    written
                } else {
                    0
                }
            }
        };
        let sequence = &sequence[..len];
        // encoding_rs may write bytes the server refuses or reads as another character.
        match self.decode(sequence).is_some_and(|t| t.chars().eq([c])) {
            true => out.extend_from_slice(sequence),
            false => out.push(b'?'),
        }
    }

    fn accepts(&self, sequence: &[u8]) -> bool {
        let (pairs, first, second) = match (sequence, self.three_byte) {
            (&[first, second], _) => (self.two_byte, first, second),
            (&[_, first, second], Some((_, pairs))) => (pairs, first, second),
            _ => return false,
        };
        first >= 0x80
            && second >= 0x80
            && pairs[usize::from(first - 0x80)] >> (second - 0x80) & 1 == 1
    }

    fn server_character(&self, sequence: &[u8]) -> Option<char> {
        let key = sequence
            .iter()
            .fold(0u32, |key, &b| key << 8 | u32::from(b));
        let i = self
            .server_characters
            .binary_search_by_key(&key, |&(k, _)| k)
            .ok()?;
        Some(self.server_characters[i].1)
    }

    /// Decodes bytes already checked against the server's tables.
    fn decode_into(&self, bytes: &[u8], text: &mut String) -> Option<()> {
        let mut decoder = self.characters.new_decoder_without_bom_handling();
        text.reserve(decoder.max_utf8_buffer_length_without_replacement(bytes.len())?);
        match decoder.decode_to_string_without_replacement(bytes, text, true) {
            (DecoderResult::InputEmpty, _) => Some(()),
            // Never for accepted bytes: tests/encoding.rs decodes every one.
            _ => None,
        }
    }
}
