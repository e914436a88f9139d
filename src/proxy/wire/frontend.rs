//! Messages a client sends: decoded once into [`Frontend`] when pgid reads a client, and built
//! when pgid speaks to a server as a client. Strings stay bytes: the server reads them in the
//! session's client encoding, and so does pgid (`crate::encoding`), never as assumed UTF-8.

use bytes::{BufMut, BytesMut};

use super::{cstr, cstr_bytes, int16, int32, message, put_cstr, WireError, PROTOCOL_3};

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn decode(byte: Option<&u8>) -> Result<Target, WireError> {
        match byte {
            Some(b'S') => Ok(Target::Statement),
            Some(b'P') => Ok(Target::Portal),
            _ => Err(WireError::Invalid("Describe/Close target must be S or P")),
        }
    }

    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
}

/// A client message's type, known from its header alone (for one pgid will not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    Parse,
    Bind,
    FunctionCall,
    CopyData,
    /// Any other (Describe, Execute, Close, Sync, Flush, CopyDone, CopyFail, Terminate …).
    Other,
}

impl Kind {
    pub fn of(tag: u8) -> Kind {
        match tag {
            b'Q' => Kind::Query,
            b'P' => Kind::Parse,
            b'B' => Kind::Bind,
            b'F' => Kind::FunctionCall,
            b'd' => Kind::CopyData,
            _ => Kind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Query => "Query",
            Kind::Parse => "Parse",
            Kind::Bind => "Bind",
            Kind::FunctionCall => "FunctionCall",
            Kind::CopyData => "CopyData",
            Kind::Other => "message",
        }
    }
}

/// A Bind message: parameter values as sent, in their formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// 0, 1 or one format code per parameter (0 text, 1 binary), as sent.
    pub parameter_formats: Vec<i16>,
    /// `None` is SQL NULL.
    pub values: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl Bind<'_> {
    /// Whether parameter `i` is in binary format (the protocol's rule for 0, 1 or n codes).
    pub fn binary(&self, i: usize) -> bool {
        match self.parameter_formats.len() {
            0 => false,
            1 => self.parameter_formats[0] == 1,
            _ => self.parameter_formats.get(i) == Some(&1),
        }
    }

    /// Bytes of parameter values (what the Bind limit counts).
    pub fn value_bytes(&self) -> usize {
        self.values.iter().flatten().map(|v| v.len()).sum()
    }
}

/// One client message after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    Query {
        sql: &'a [u8],
    },
    Parse {
        name: &'a [u8],
        sql: &'a [u8],
        parameter_types: Vec<u32>,
    },
    Bind(Bind<'a>),
    Describe {
        target: Target,
        name: &'a [u8],
    },
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    Close {
        target: Target,
        name: &'a [u8],
    },
    Sync,
    Flush,
    Terminate,
    /// Names a function by OID (never allowed through pgid).
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
}

impl<'a> Frontend<'a> {
    /// Decodes one message body; unknown tags and malformed bodies are protocol errors.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Frontend<'a>, WireError> {
        let mut at = 0;
        let m = match tag {
            b'Q' => Frontend::Query {
                sql: cstr_bytes(body, &mut at)?,
            },
            b'P' => {
                let name = cstr_bytes(body, &mut at)?;
                let sql = cstr_bytes(body, &mut at)?;
                let n = int16(body, &mut at)?.max(0) as usize;
                let parameter_types = (0..n)
                    .map(|_| int32(body, &mut at).map(|t| t as u32))
                    .collect::<Result<_, _>>()?;
                Frontend::Parse {
                    name,
                    sql,
                    parameter_types,
                }
            }
            b'B' => Frontend::Bind(bind(body, &mut at)?),
            b'D' => {
                let target = Target::decode(body.first())?;
                at = 1;
                Frontend::Describe {
                    target,
                    name: cstr_bytes(body, &mut at)?,
                }
            }
            b'E' => {
                let portal = cstr_bytes(body, &mut at)?;
                Frontend::Execute {
                    portal,
                    max_rows: int32(body, &mut at)?,
                }
            }
            b'C' => {
                let target = Target::decode(body.first())?;
                at = 1;
                Frontend::Close {
                    target,
                    name: cstr_bytes(body, &mut at)?,
                }
            }
            b'S' => Frontend::Sync,
            b'H' => Frontend::Flush,
            b'X' => Frontend::Terminate,
            b'F' => Frontend::FunctionCall,
            b'd' => Frontend::CopyData,
            b'c' => Frontend::CopyDone,
            b'f' => Frontend::CopyFail,
            _ => return Err(WireError::Invalid("unknown message type")),
        };
        if !matches!(
            m,
            Frontend::CopyData | Frontend::FunctionCall | Frontend::CopyFail
        ) && at != body.len()
        {
            return Err(WireError::Invalid("bytes after the end of a message"));
        }
        Ok(m)
    }

    /// The message's name in Postgres's own words (for errors and records).
    pub fn kind(&self) -> &'static str {
        match self {
            Frontend::Query { .. } => "Query",
            Frontend::Parse { .. } => "Parse",
            Frontend::Bind(_) => "Bind",
            Frontend::Describe { .. } => "Describe",
            Frontend::Execute { .. } => "Execute",
            Frontend::Close { .. } => "Close",
            Frontend::Sync => "Sync",
            Frontend::Flush => "Flush",
            Frontend::Terminate => "Terminate",
            Frontend::FunctionCall => "FunctionCall",
            Frontend::CopyData => "CopyData",
            Frontend::CopyDone => "CopyDone",
            Frontend::CopyFail => "CopyFail",
        }
    }
}

fn bind<'a>(body: &'a [u8], at: &mut usize) -> Result<Bind<'a>, WireError> {
    let portal = cstr_bytes(body, at)?;
    let statement = cstr_bytes(body, at)?;
    let n = int16(body, at)?.max(0) as usize;
    let parameter_formats = (0..n)
        .map(|_| int16(body, at))
        .collect::<Result<Vec<_>, _>>()?;
    let n = int16(body, at)?.max(0) as usize;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = int32(body, at)?;
        if len < 0 {
            values.push(None);
        } else {
            let v = body
                .get(*at..*at + len as usize)
                .ok_or(WireError::Invalid("Bind value past the end"))?;
            *at += len as usize;
            values.push(Some(v));
        }
    }
    if parameter_formats.len() > 1 && parameter_formats.len() != values.len() {
        return Err(WireError::Invalid(
            "Bind format codes do not match its values",
        ));
    }
    let n = int16(body, at)?.max(0) as usize;
    let result_formats = (0..n).map(|_| int16(body, at)).collect::<Result<_, _>>()?;
    Ok(Bind {
        portal,
        statement,
        parameter_formats,
        values,
        result_formats,
    })
}

/// The startup packet (no tag).
pub fn startup(out: &mut BytesMut, params: &[(String, String)]) {
    let at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8i32.to_be_bytes());
    b[4..].copy_from_slice(&super::SSL_REQUEST.to_be_bytes());
    b
}

pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&16i32.to_be_bytes());
    b[4..8].copy_from_slice(&super::CANCEL_REQUEST.to_be_bytes());
    b[8..12].copy_from_slice(&pid.to_be_bytes());
    b[12..].copy_from_slice(&secret.to_be_bytes());
    b
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    message(out, b'p', |b| b.put_slice(data));
}

pub fn password(out: &mut BytesMut, password: &str) {
    message(out, b'p', |b| put_cstr(b, password));
}

pub fn query(out: &mut BytesMut, sql: &[u8]) {
    message(out, b'Q', |b| {
        b.put_slice(sql);
        b.put_u8(0);
    });
}

pub fn parse(out: &mut BytesMut, name: &[u8], sql: &[u8], types: &[u32]) {
    message(out, b'P', |b| {
        b.put_slice(name);
        b.put_u8(0);
        b.put_slice(sql);
        b.put_u8(0);
        b.put_i16(types.len() as i16);
        for t in types {
            b.put_u32(*t);
        }
    });
}

/// A Bind of the unnamed portal: values with their own format codes, results in text.
pub fn bind_values(out: &mut BytesMut, statement: &[u8], values: &[(bool, Option<Vec<u8>>)]) {
    bind_portal(out, b"", statement, values);
}

/// A Bind of `portal` to `statement`: values with their own format codes, results in text.
pub fn bind_portal(
    out: &mut BytesMut,
    portal: &[u8],
    statement: &[u8],
    values: &[(bool, Option<Vec<u8>>)],
) {
    message(out, b'B', |b| {
        b.put_slice(portal);
        b.put_u8(0);
        b.put_slice(statement);
        b.put_u8(0);
        b.put_i16(values.len() as i16);
        for (binary, _) in values {
            b.put_i16(i16::from(*binary));
        }
        b.put_i16(values.len() as i16);
        for (_, v) in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.put_i16(0);
    });
}

pub fn close(out: &mut BytesMut, target: Target, name: &[u8]) {
    message(out, b'C', |b| {
        b.put_u8(target.byte());
        b.put_slice(name);
        b.put_u8(0);
    });
}

pub fn describe(out: &mut BytesMut, target: Target, name: &[u8]) {
    message(out, b'D', |b| {
        b.put_u8(target.byte());
        b.put_slice(name);
        b.put_u8(0);
    });
}

pub fn execute(out: &mut BytesMut, portal: &[u8], max_rows: i32) {
    message(out, b'E', |b| {
        b.put_slice(portal);
        b.put_u8(0);
        b.put_i32(max_rows);
    });
}

pub fn sync(out: &mut BytesMut) {
    message(out, b'S', |_| {});
}

pub fn terminate(out: &mut BytesMut) {
    message(out, b'X', |_| {});
}

/// Ends a COPY FROM STDIN with an error the server reports.
pub fn copy_fail(out: &mut BytesMut, reason: &str) {
    message(out, b'f', |b| put_cstr(b, reason));
}

/// The body of a PasswordMessage / SASLInitialResponse / SASLResponse (all `p`), if that is
/// what the message is.
pub fn password_message(tag: u8, body: &[u8]) -> Option<&[u8]> {
    (tag == b'p').then_some(body)
}

/// SASLInitialResponse body → (mechanism, data).
pub fn parse_sasl_initial(body: &[u8]) -> Result<(String, Vec<u8>), WireError> {
    let mut pos = 0;
    let mech = cstr(body, &mut pos)?.to_string();
    let len = int32(body, &mut pos)?;
    let data = if len < 0 {
        Vec::new()
    } else {
        body.get(pos..pos + len as usize)
            .ok_or(WireError::Invalid("SASL data length"))?
            .to_vec()
    };
    Ok((mech, data))
}

/// PasswordMessage body → the password text.
pub fn parse_password(body: &[u8]) -> Result<String, WireError> {
    let mut pos = 0;
    let p = cstr(body, &mut pos)?;
    if pos != body.len() {
        return Err(WireError::Invalid("bytes after password"));
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(m: &BytesMut) -> (u8, &[u8]) {
        (m[0], &m[5..])
    }

    #[test]
    fn messages_round_trip() {
        let mut m = BytesMut::new();
        parse(&mut m, b"s1", b"SELECT $1", &[23]);
        let (tag, b) = body(&m);
        assert_eq!(
            Frontend::decode(tag, b).unwrap(),
            Frontend::Parse {
                name: b"s1",
                sql: b"SELECT $1",
                parameter_types: vec![23]
            }
        );
        let mut m = BytesMut::new();
        bind_values(
            &mut m,
            b"s1",
            &[(true, Some(vec![0, 0, 0, 7])), (false, None)],
        );
        let (tag, b) = body(&m);
        let Frontend::Bind(bind) = Frontend::decode(tag, b).unwrap() else {
            panic!()
        };
        assert_eq!(bind.statement, b"s1");
        assert_eq!(bind.values, vec![Some(&[0u8, 0, 0, 7][..]), None]);
        assert!(bind.binary(0) && !bind.binary(1));
        let mut m = BytesMut::new();
        describe(&mut m, Target::Portal, b"p");
        execute(&mut m, b"p", 10);
        let (tag, b) = (m[0], &m[5..8]);
        assert_eq!(
            Frontend::decode(tag, b).unwrap(),
            Frontend::Describe {
                target: Target::Portal,
                name: b"p"
            }
        );
        assert_eq!(
            Frontend::decode(b'E', &m[13..]).unwrap(),
            Frontend::Execute {
                portal: b"p",
                max_rows: 10
            }
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(
            Frontend::decode(b'Q', b"SELECT 1").is_err(),
            "no terminator"
        );
        assert!(
            Frontend::decode(b'Q', b"SELECT 1\0x").is_err(),
            "trailing bytes"
        );
        assert!(Frontend::decode(b'D', b"Xname\0").is_err());
        assert!(Frontend::decode(b'B', b"\0\0\0\0\0\x01\0\0\0\x09ab").is_err());
        assert!(Frontend::decode(b'~', b"").is_err());
        // Strings are bytes: any client encoding is read later, not here.
        assert_eq!(
            Frontend::decode(b'Q', b"SELECT '\xa4'\0").unwrap(),
            Frontend::Query {
                sql: b"SELECT '\xa4'"
            }
        );
    }
}
