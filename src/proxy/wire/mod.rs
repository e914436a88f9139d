//! The Postgres wire protocol (v3), as far as pgid needs it. No I/O here except the startup
//! reader and the framed readers: `framing` finds message boundaries under size caps (per
//! message type, before anything is buffered); `frontend` decodes the messages a client sends
//! into [`frontend::Frontend`] and builds them; `backend` does the same for a server's
//! ([`backend::Backend`]); `sqlstate` names the error codes pgid uses. Every message is decoded
//! once, here; nothing outside `wire` looks at tag bytes. Original bytes are forwarded untouched.

pub mod backend;
pub mod framing;
pub mod frontend;
pub mod sqlstate;

/// Protocol 3.0, as the startup packet says it.
pub const PROTOCOL_3: i32 = 196608;
/// The codes of the untagged first messages that are not a startup packet.
pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("message too large ({0} bytes)")]
    TooLarge(usize),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    #[error("unsupported protocol version {0}.{1}")]
    Version(u16, u16),
}

/// Reads a NUL-terminated UTF-8 string at `pos`, advancing it (startup and authentication
/// messages; statement text is read as bytes, in the session's encoding).
pub fn cstr<'a>(body: &'a [u8], pos: &mut usize) -> Result<&'a str, WireError> {
    let start = *pos;
    let b = cstr_bytes(body, pos)?;
    std::str::from_utf8(b).map_err(|_| {
        *pos = start;
        WireError::Invalid("string is not UTF-8")
    })
}

/// Reads a NUL-terminated string at `pos` as bytes (in whatever encoding the peer uses).
pub fn cstr_bytes<'a>(body: &'a [u8], pos: &mut usize) -> Result<&'a [u8], WireError> {
    let rest = body
        .get(*pos..)
        .ok_or(WireError::Invalid("string past end"))?;
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or(WireError::Invalid("unterminated string"))?;
    *pos += end + 1;
    Ok(&rest[..end])
}

pub fn int16(body: &[u8], pos: &mut usize) -> Result<i16, WireError> {
    let b = body
        .get(*pos..*pos + 2)
        .ok_or(WireError::Invalid("int16 past end"))?;
    *pos += 2;
    Ok(i16::from_be_bytes([b[0], b[1]]))
}

pub fn int32(body: &[u8], pos: &mut usize) -> Result<i32, WireError> {
    let b = body
        .get(*pos..*pos + 4)
        .ok_or(WireError::Invalid("int32 past end"))?;
    *pos += 4;
    Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Appends a message with `tag` whose body is written by `f` (length filled in after).
pub fn message(out: &mut bytes::BytesMut, tag: u8, f: impl FnOnce(&mut bytes::BytesMut)) {
    use bytes::BufMut;
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut bytes::BytesMut, s: &str) {
    use bytes::BufMut;
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}
