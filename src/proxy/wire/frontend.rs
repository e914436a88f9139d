//! Messages a client sends: built by pgid when it connects upstream as a client, and read by pgid
//! when a client speaks to it.

use bytes::{BufMut, BytesMut};

use super::{cstr, int32, message, put_cstr, WireError};

pub fn startup(out: &mut BytesMut, params: &[(String, String)]) {
    let at = out.len();
    out.put_i32(0);
    out.put_i32(196608);
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
    b[4..].copy_from_slice(&80877103i32.to_be_bytes());
    b
}

pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&16i32.to_be_bytes());
    b[4..8].copy_from_slice(&80877102i32.to_be_bytes());
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

pub fn query(out: &mut BytesMut, sql: &str) {
    message(out, b'Q', |b| put_cstr(b, sql));
}

pub fn terminate(out: &mut BytesMut) {
    message(out, b'X', |_| {});
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
