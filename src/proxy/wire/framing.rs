//! Message boundaries. Regular messages are `tag, int32 length (including itself), body`; the
//! first message of a connection has no tag. Every length is checked against a cap before any
//! buffer grows, so a peer cannot make pgid allocate what it claims.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{cstr, int32, WireError};

/// Postgres's own limit for the startup packet.
pub const MAX_STARTUP_BYTES: usize = 10_000;
/// Messages before authentication completes are small (SASL, passwords, tokens).
pub const MAX_AUTH_MESSAGE_BYTES: usize = 32 * 1024;
/// The largest message either side may send once authenticated (Postgres's own cap is 1 GB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const PROTOCOL_3: i32 = 196608;

#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
    Params(Vec<(String, String)>),
}

/// Reads the untagged first message of a connection.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Startup, WireError> {
    let len = match r.read_i32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    };
    if !(8..=MAX_STARTUP_BYTES as i32).contains(&len) {
        return Err(WireError::Invalid("startup packet length"));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => WireError::Closed,
        _ => e.into(),
    })?;
    parse_startup(&body)
}

pub fn parse_startup(body: &[u8]) -> Result<Startup, WireError> {
    let mut pos = 0;
    let code = int32(body, &mut pos)?;
    match code {
        SSL_REQUEST if body.len() == 4 => Ok(Startup::Ssl),
        GSSENC_REQUEST if body.len() == 4 => Ok(Startup::GssEnc),
        CANCEL_REQUEST if body.len() == 12 => {
            let pid = int32(body, &mut pos)?;
            let secret = int32(body, &mut pos)?;
            Ok(Startup::Cancel { pid, secret })
        }
        PROTOCOL_3 => {
            let mut params = Vec::new();
            loop {
                let key = cstr(body, &mut pos)?;
                if key.is_empty() {
                    break;
                }
                let value = cstr(body, &mut pos)?;
                if params.iter().any(|(k, _): &(String, String)| k == key) {
                    return Err(WireError::Invalid("duplicate startup parameter"));
                }
                params.push((key.to_string(), value.to_string()));
            }
            if pos != body.len() {
                return Err(WireError::Invalid("bytes after startup parameters"));
            }
            Ok(Startup::Params(params))
        }
        other => Err(WireError::Version(
            (other >> 16) as u16,
            (other & 0xffff) as u16,
        )),
    }
}

/// The header of the complete message at `buf[offset..]`: `Some((tag, total length))` when the
/// whole message is buffered, `None` when more bytes are needed.
pub fn frame_at(buf: &[u8], offset: usize, max: usize) -> Result<Option<(u8, usize)>, WireError> {
    let rest = &buf[offset..];
    if rest.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
    if len < 4 {
        return Err(WireError::Invalid("message length below 4"));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(WireError::TooLarge(total));
    }
    Ok((rest.len() >= total).then_some((rest[0], total)))
}

/// Buffers one side of a connection and yields whole messages.
pub struct Frames {
    pub buf: BytesMut,
    max: usize,
}

/// One whole message: `tag` and `body` (without tag and length).
pub struct Message {
    pub tag: u8,
    pub body: bytes::Bytes,
}

impl Frames {
    pub fn new(max: usize) -> Frames {
        Frames {
            buf: BytesMut::new(),
            max,
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Reads more bytes; `Closed` at end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), WireError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8192);
        }
        match r.read_buf(&mut self.buf).await? {
            0 => Err(WireError::Closed),
            _ => Ok(()),
        }
    }

    /// The next complete message, if buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        match frame_at(&self.buf, 0, self.max)? {
            None => Ok(None),
            Some((tag, total)) => {
                let mut m = self.buf.split_to(total);
                m.advance(5);
                Ok(Some(Message {
                    tag,
                    body: m.freeze(),
                }))
            }
        }
    }

    /// Reads until a whole message is buffered and returns it.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Message, WireError> {
        loop {
            if let Some(m) = self.next_message()? {
                return Ok(m);
            }
            self.fill(r).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packets() {
        let mut b = 196608i32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0u\0database\0d\0\0");
        assert_eq!(
            parse_startup(&b).unwrap(),
            Startup::Params(vec![
                ("user".into(), "u".into()),
                ("database".into(), "d".into())
            ])
        );
        assert_eq!(
            parse_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            Startup::Ssl
        );
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            parse_startup(&c).unwrap(),
            Startup::Cancel { pid: 7, secret: 9 }
        );
        assert!(
            parse_startup(&196608i32.to_be_bytes()).is_err(),
            "no terminator"
        );
        let mut unterminated = 196608i32.to_be_bytes().to_vec();
        unterminated.extend_from_slice(b"user\0u");
        assert!(parse_startup(&unterminated).is_err());
        assert!(matches!(
            parse_startup(&131072i32.to_be_bytes()),
            Err(WireError::Version(2, 0))
        ));
    }

    #[test]
    fn frames_respect_caps_and_boundaries() {
        let mut buf = vec![b'Q', 0, 0, 0, 8, b's', b'e', b'l', 0];
        assert_eq!(frame_at(&buf, 0, 100).unwrap(), Some((b'Q', 9)));
        assert_eq!(frame_at(&buf[..6], 0, 100).unwrap(), None);
        assert!(matches!(frame_at(&buf, 0, 8), Err(WireError::TooLarge(9))));
        buf[4] = 3;
        assert!(frame_at(&buf, 0, 100).is_err());
        let huge = [b'd', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            frame_at(&huge, 0, MAX_MESSAGE_BYTES),
            Err(WireError::TooLarge(_))
        ));
    }
}
