//! Messages a server sends: decoded once into [`Backend`] when pgid reads its upstream, and built
//! when pgid speaks to clients as a server.

use bytes::{BufMut, BytesMut};

use super::{cstr, cstr_bytes, int32, message, put_cstr, WireError};

/// The transaction status a ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InBlock,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    pub fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InBlock => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse that pgid reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<'a> {
    /// SQLSTATE (`C`).
    pub code: &'a [u8],
    /// Primary message (`M`).
    pub message: &'a [u8],
    /// Severity, not localised (`V`, else `S`).
    pub severity: &'a [u8],
}

impl<'a> Report<'a> {
    fn decode(body: &'a [u8]) -> Result<Report<'a>, WireError> {
        let mut r = Report {
            code: b"",
            message: b"",
            severity: b"",
        };
        let mut pos = 0;
        while body.get(pos).is_some_and(|b| *b != 0) {
            let field = body[pos];
            pos += 1;
            let value = cstr_bytes(body, &mut pos)?;
            match field {
                b'C' => r.code = value,
                b'M' => r.message = value,
                b'V' => r.severity = value,
                b'S' if r.severity.is_empty() => r.severity = value,
                _ => {}
            }
        }
        Ok(r)
    }

    pub fn code_str(&self) -> &'a str {
        std::str::from_utf8(self.code).unwrap_or("")
    }
}

/// One server message, decoded once. Row data stays raw: masking reads it where it must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend<'a> {
    Authentication {
        code: i32,
        data: &'a [u8],
    },
    BackendKeyData {
        pid: i32,
        secret: i32,
    },
    ParameterStatus {
        name: &'a [u8],
        value: &'a [u8],
    },
    ReadyForQuery(TransactionStatus),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    PortalSuspended,
    EmptyQueryResponse,
    /// The command tag, without its terminator (`SELECT 5`, `INSERT 0 1`, `PREPARE`).
    CommandComplete(&'a [u8]),
    RowDescription(&'a [u8]),
    DataRow(&'a [u8]),
    ParameterDescription(&'a [u8]),
    ErrorResponse(Report<'a>),
    NoticeResponse(Report<'a>),
    NotificationResponse,
    CopyInResponse,
    CopyOutResponse,
    CopyBothResponse,
    CopyData,
    CopyDone,
    FunctionCallResponse,
    NegotiateProtocolVersion,
}

impl<'a> Backend<'a> {
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Backend<'a>, WireError> {
        let mut at = 0;
        Ok(match tag {
            b'R' => Backend::Authentication {
                code: int32(body, &mut at)?,
                data: &body[at..],
            },
            b'K' => Backend::BackendKeyData {
                pid: int32(body, &mut at)?,
                secret: int32(body, &mut at)?,
            },
            b'S' => Backend::ParameterStatus {
                name: cstr_bytes(body, &mut at)?,
                value: cstr_bytes(body, &mut at)?,
            },
            b'Z' => Backend::ReadyForQuery(match body {
                b"I" => TransactionStatus::Idle,
                b"T" => TransactionStatus::InBlock,
                b"E" => TransactionStatus::Failed,
                _ => return Err(WireError::Invalid("ReadyForQuery status")),
            }),
            b'1' => Backend::ParseComplete,
            b'2' => Backend::BindComplete,
            b'3' => Backend::CloseComplete,
            b'n' => Backend::NoData,
            b's' => Backend::PortalSuspended,
            b'I' => Backend::EmptyQueryResponse,
            b'C' => Backend::CommandComplete(cstr_bytes(body, &mut at)?),
            b'T' => Backend::RowDescription(body),
            b'D' => Backend::DataRow(body),
            b't' => Backend::ParameterDescription(body),
            b'E' => Backend::ErrorResponse(Report::decode(body)?),
            b'N' => Backend::NoticeResponse(Report::decode(body)?),
            b'A' => Backend::NotificationResponse,
            b'G' => Backend::CopyInResponse,
            b'H' => Backend::CopyOutResponse,
            b'W' => Backend::CopyBothResponse,
            b'd' => Backend::CopyData,
            b'c' => Backend::CopyDone,
            b'V' => Backend::FunctionCallResponse,
            b'v' => Backend::NegotiateProtocolVersion,
            _ => return Err(WireError::Invalid("unknown server message type")),
        })
    }
}

/// The row count at the end of a CommandComplete tag (`SELECT 5`, `INSERT 0 5`, `COPY 5`).
pub fn tag_rows(tag: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(tag).ok()?;
    let mut words = text.split(' ');
    let verb = words.next()?;
    let last = text.rsplit(' ').next()?;
    if verb == last {
        return None;
    }
    last.parse().ok()
}

/// Type OIDs of a ParameterDescription (a count and that many OIDs).
pub fn parameter_types(body: &[u8]) -> Vec<u32> {
    let Some(n) = body
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
    else {
        return Vec::new();
    };
    (0..n)
        .map_while(|i| {
            body.get(2 + 4 * i..6 + 4 * i)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
        .collect()
}

pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT: i32 = 3;
pub const AUTH_MD5: i32 = 5;
pub const AUTH_SASL: i32 = 10;
pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;

pub fn authentication(out: &mut BytesMut, code: i32, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    message(out, b'R', |b| {
        b.put_i32(AUTH_SASL);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: TransactionStatus) {
    message(out, b'Z', |b| b.put_u8(status.byte()));
}

/// A message pgid relays as it came (tag and body, framed again).
pub fn raw(out: &mut BytesMut, tag: u8, body: &[u8]) {
    message(out, tag, |b| b.put_slice(body));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// ErrorResponse (or NoticeResponse for `Severity::Notice`) with SQLSTATE and message.
pub fn error_response(out: &mut BytesMut, severity: Severity, code: &str, text: &str) {
    error_response_bytes(out, severity, code, text.as_bytes());
}

/// [`error_response`] with the message already in the client's encoding.
pub fn error_response_bytes(out: &mut BytesMut, severity: Severity, code: &str, text: &[u8]) {
    error_response_fields(out, severity, code, &[(b'M', text)]);
}

/// ErrorResponse (NoticeResponse for `Severity::Notice`) with severity and code, then the
/// `(field type, value)` pairs in order, values already in the client's encoding (a NUL in one
/// is dropped: it would end the field).
pub fn error_response_fields(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    fields: &[(u8, &[u8])],
) {
    let tag = if severity == Severity::Notice {
        b'N'
    } else {
        b'E'
    };
    message(out, tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code);
        for (field, value) in fields {
            b.put_u8(*field);
            b.extend(value.iter().filter(|c| **c != 0));
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}

/// A whole FATAL error, ready to write.
pub fn fatal(code: &str, text: &str) -> BytesMut {
    let mut out = BytesMut::new();
    error_response(&mut out, Severity::Fatal, code, text);
    out
}

/// Fields of an ErrorResponse/NoticeResponse body: (field type, value).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let t = body[pos];
        pos += 1;
        match cstr(body, &mut pos) {
            Ok(v) => out.push((t, v.to_string())),
            Err(_) => break,
        }
    }
    out
}

pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(t, _)| *t == field)
        .map(|(_, v)| v)
}

/// An Authentication message body: (code, rest).
pub fn parse_authentication(body: &[u8]) -> Result<(i32, &[u8]), WireError> {
    let mut pos = 0;
    let code = int32(body, &mut pos)?;
    Ok((code, &body[pos..]))
}

pub fn parse_parameter_status(body: &[u8]) -> Result<(String, String), WireError> {
    let mut pos = 0;
    let k = cstr(body, &mut pos)?.to_string();
    let v = cstr(body, &mut pos)?.to_string();
    Ok((k, v))
}

/// SASL mechanism names from an AuthenticationSASL body (after the code).
pub fn sasl_mechanisms(rest: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(m) = cstr(rest, &mut pos) {
        if m.is_empty() {
            break;
        }
        out.push(m.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trip() {
        let out = fatal("28P01", "pgid: password authentication failed");
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(error_field(&out[5..], b'C').as_deref(), Some("28P01"));
        assert_eq!(error_field(&out[5..], b'S').as_deref(), Some("FATAL"));
    }
}
