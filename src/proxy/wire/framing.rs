//! Message boundaries. Regular messages are `tag, int32 length (including itself), body`; the
//! first message of a connection has no tag. Every length is checked against a cap before any
//! buffer grows, so a peer cannot make pgid allocate what it claims. A client's messages have a
//! cap per type ([`Limits`]): one over its cap is never buffered — its bytes are dropped as they
//! arrive and pgid answers it as refused ([`Frame::Oversized`]), so memory per session stays
//! bounded whatever a client sends.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::frontend::Kind;
use super::{cstr, int32, WireError};

/// Postgres's own limit for the startup packet.
pub const MAX_STARTUP_BYTES: usize = 10_000;
/// Messages before authentication completes are small (SASL, passwords, tokens).
pub const MAX_AUTH_MESSAGE_BYTES: usize = 32 * 1024;
/// The largest message either side may send once authenticated (Postgres's own cap is 1 GB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

use super::{CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_3, SSL_REQUEST};

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

    /// What was read and not yet handed out (a session's reader continues from it).
    pub fn into_buffer(self) -> BytesMut {
        self.buf
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

/// The largest message a client may send, by type. Anything larger is refused unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Query and Parse (a statement's text, plus for Parse its name and parameter types).
    pub statement: usize,
    /// Bind (parameter values) and FunctionCall.
    pub bind: usize,
    /// One CopyData message.
    pub copy_data: usize,
}

/// Describe, Execute, Close, Sync, Flush, CopyDone, CopyFail, Terminate: names and short texts.
pub const MAX_SMALL_MESSAGE_BYTES: usize = 64 * 1024;
/// What a Parse may carry besides its statement text: a name and up to 65,535 parameter types.
pub const PARSE_OVERHEAD_BYTES: usize = 64 * 1024 + 2 + 4 * 65_535;

impl Limits {
    /// The cap for a whole message (tag and length included) of type `tag`.
    pub fn of(&self, tag: u8) -> usize {
        match tag {
            b'Q' => self.statement + 6,
            b'P' => self.statement + 5 + PARSE_OVERHEAD_BYTES,
            b'B' | b'F' => self.bind,
            b'd' => self.copy_data,
            _ => MAX_SMALL_MESSAGE_BYTES,
        }
    }
}

/// One client message as read: whole, or too large to be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The whole message, tag and length included.
    Whole(Bytes),
    /// A message over its type's limit: pgid drops its `len` bytes as they arrive.
    Oversized { kind: Kind, len: usize },
}

impl Frame {
    pub fn tag(&self) -> u8 {
        match self {
            Frame::Whole(b) => b[0],
            Frame::Oversized { kind, .. } => match kind {
                Kind::Query => b'Q',
                Kind::Parse => b'P',
                Kind::Bind => b'B',
                Kind::FunctionCall => b'F',
                Kind::CopyData => b'd',
                Kind::Other => 0,
            },
        }
    }
}

/// Consecutive client messages; the whole ones are adjacent slices of one buffer, so any run
/// of them goes on as one write.
#[derive(Debug, Default)]
pub struct Batch {
    chunk: Bytes,
    pub frames: Vec<Frame>,
    /// Where each frame starts in `chunk` (and, last, where the whole ones end).
    starts: Vec<usize>,
}

impl Batch {
    /// The bytes of the whole frames `from..to`, as they came.
    pub fn span(&self, from: usize, to: usize) -> Bytes {
        let end = self.starts.get(to).copied().unwrap_or(self.chunk.len());
        let start = self.starts.get(from).copied().unwrap_or(end);
        self.chunk.slice(start..end.max(start))
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

impl Frame {
    /// A message the server answers with ReadyForQuery (Query, Sync, FunctionCall).
    pub fn answered_by_ready(&self) -> bool {
        matches!(self.tag(), b'Q' | b'S' | b'F')
    }

    pub fn is_terminate(&self) -> bool {
        self.tag() == b'X'
    }
}

/// A client's messages, read under [`Limits`].
pub struct ClientFrames {
    buf: BytesMut,
    limits: Limits,
    /// Bytes of an oversized message still to be dropped as they arrive.
    skip: usize,
}

impl ClientFrames {
    /// Continues from what the handshake's reader had buffered already.
    pub fn new(buffered: BytesMut, limits: Limits) -> ClientFrames {
        ClientFrames {
            buf: buffered,
            limits,
            skip: 0,
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Reads more bytes; `Closed` at end of stream. Bytes of an oversized message are dropped.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), WireError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8192);
        }
        if r.read_buf(&mut self.buf).await? == 0 {
            return Err(WireError::Closed);
        }
        self.drop_skipped();
        Ok(())
    }

    fn drop_skipped(&mut self) {
        let n = self.skip.min(self.buf.len());
        self.buf.advance(n);
        self.skip -= n;
    }

    /// Whether a message (or the start of an oversized one) is ready without reading.
    pub fn ready(&self) -> bool {
        self.skip == 0
            && self
                .header()
                .is_some_and(|(tag, total)| total > self.limits.of(tag) || self.buf.len() >= total)
    }

    fn header(&self) -> Option<(u8, usize)> {
        let b = self.buf.get(..5)?;
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        Some((b[0], (len.max(0) as usize).saturating_add(1)))
    }

    /// The messages ready now, in order: whole ones, and at most one oversized one, last.
    pub fn batch(&mut self) -> Result<Batch, WireError> {
        let mut ends = Vec::new();
        let mut end = 0;
        let mut oversized = None;
        while self.skip == 0 && oversized.is_none() {
            let Some(b) = self.buf.get(end..end + 5) else {
                break;
            };
            let (tag, len) = (b[0], i32::from_be_bytes([b[1], b[2], b[3], b[4]]));
            if len < 4 {
                return Err(WireError::Invalid("message length below 4"));
            }
            let total = len as usize + 1;
            if total > self.limits.of(tag) {
                oversized = Some(Frame::Oversized {
                    kind: Kind::of(tag),
                    len: total,
                });
                continue;
            }
            if self.buf.len() < end + total {
                break;
            }
            end += total;
            ends.push(end);
        }
        let chunk = self.buf.split_to(end).freeze();
        let mut frames = Vec::with_capacity(ends.len() + 1);
        let mut starts = Vec::with_capacity(ends.len() + 1);
        let mut start = 0;
        for e in ends {
            frames.push(Frame::Whole(chunk.slice(start..e)));
            starts.push(start);
            start = e;
        }
        if let Some(Frame::Oversized { len, .. }) = &oversized {
            self.skip = *len;
            self.drop_skipped();
        }
        frames.extend(oversized);
        starts.push(start);
        Ok(Batch {
            chunk,
            frames,
            starts,
        })
    }

    /// Where bytes a client sends while pgid waits go (read on after the wait).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes read and not yet handed out (for an idle connection's check).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.skip == 0
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
    fn oversized_client_messages_are_dropped_unread() {
        let limits = Limits {
            statement: 100,
            bind: 1000,
            copy_data: 1000,
        };
        let mut f = ClientFrames::new(BytesMut::new(), limits);
        // A 10 MB Query announced, its first bytes here; then a Sync after it.
        let mut first = vec![b'Q'];
        first.extend_from_slice(&(10_000_004i32).to_be_bytes());
        first.extend_from_slice(&[b'x'; 4096]);
        f.buf.extend_from_slice(&first);
        assert!(f.ready());
        assert_eq!(
            f.batch().unwrap().frames,
            vec![Frame::Oversized {
                kind: Kind::Query,
                len: 10_000_005
            }]
        );
        assert!(f.buf.is_empty(), "nothing of it is kept");
        assert!(!f.ready());
        // The rest arrives in pieces and is dropped; the Sync after it is read.
        let mut rest = 10_000_005 - first.len();
        while rest > 0 {
            let n = rest.min(65536);
            f.buf.extend_from_slice(&vec![b'y'; n]);
            f.drop_skipped();
            assert!(f.buf.len() < 65536);
            rest -= n;
        }
        f.buf.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        let b = f.batch().unwrap();
        assert_eq!(
            b.frames,
            vec![Frame::Whole(Bytes::from_static(&[b'S', 0, 0, 0, 4]))]
        );
        // A Query within the limit is whole.
        f.buf
            .extend_from_slice(&[b'Q', 0, 0, 0, 6, b'x', 0, b'S', 0, 0, 0, 4, b'H']);
        let b = f.batch().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            &b.span(0, 2)[..],
            &[b'Q', 0, 0, 0, 6, b'x', 0, b'S', 0, 0, 0, 4]
        );
        assert_eq!(&b.span(1, 2)[..], &[b'S', 0, 0, 0, 4]);
        assert!(!f.ready(), "the Flush is not complete yet");
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
