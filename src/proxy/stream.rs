//! The two kinds of byte streams the proxy relays between: a client connection (plain or TLS) and
//! an upstream connection (TCP, Unix socket, or TLS).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

macro_rules! delegate_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+ }
            }
        }
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+ }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+ }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $($ty::$variant(s) => s.is_write_vectored(),)+ }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+ }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+ }
            }
        }
    };
}

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

delegate_io!(ClientStream { Plain, Tls });

pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

delegate_io!(ServerStream { Tcp, Unix, Tls });

impl ServerStream {
    /// Over TLS, the `tls-server-end-point` channel-binding data of the server's certificate.
    pub fn end_point(&self) -> Option<Vec<u8>> {
        match self {
            ServerStream::Tls(s) => {
                let cert = s.get_ref().1.peer_certificates()?.first()?;
                crate::tls::server_end_point(cert.as_ref())
            }
            _ => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    /// Whether the server has sent nothing since it was last read: no bytes, no end of stream, no
    /// error. Asks the kernel itself (a peek that does not wait), not the runtime's cached
    /// readiness, which can lag behind a message that has just arrived. Over TLS any record at all
    /// (an alert, or data) counts as something sent.
    pub fn is_quiet(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match self {
            ServerStream::Tcp(s) => s.as_raw_fd(),
            ServerStream::Unix(s) => s.as_raw_fd(),
            ServerStream::Tls(s) => s.get_ref().0.as_raw_fd(),
        };
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer we own, on a descriptor this stream owns for the whole call.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && {
            let e = io::Error::last_os_error().kind();
            e == io::ErrorKind::WouldBlock || e == io::ErrorKind::Interrupted
        }
    }
}

/// Why relaying a session's messages stopped.
pub(super) enum Flow {
    Upstream,
    Protocol(String),
    /// The client went away (writing to it failed, or it closed while a statement waited).
    ClientGone,
    /// The session must end with this message.
    Fatal(String),
}

/// Writes to the client and flushes.
pub(super) async fn send(client: &mut ClientStream, bytes: &[u8]) -> Result<(), Flow> {
    client
        .write_all(bytes)
        .await
        .map_err(|_| Flow::ClientGone)?;
    client.flush().await.map_err(|_| Flow::ClientGone)
}
