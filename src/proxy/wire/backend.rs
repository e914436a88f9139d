//! Messages a server sends: built by pgid when it speaks to clients as a server, and read by pgid
//! when the upstream server speaks to it.

use bytes::{BufMut, BytesMut};

use super::{cstr, int32, message, put_cstr, WireError};

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

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
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
        b.put_u8(b'M');
        put_cstr(b, &text.replace('\0', ""));
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

pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), WireError> {
    let mut pos = 0;
    Ok((int32(body, &mut pos)?, int32(body, &mut pos)?))
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
