//! Listening sockets shared by the broker and the proxy.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed accept (typically EMFILE), so a full fd table does not spin the loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The next connection, or `None` once `shutdown` is cancelled. Accept errors are logged and
/// retried: they concern one would-be connection, never the listener.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %crate::errors::Chain(&e), "{what} accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

/// Raises this process's soft limit on open descriptors (RLIMIT_NOFILE) to its hard limit, as
/// servers that hold many sockets should: the common soft default (1,024) is far below what
/// the proxy's sessions (two sockets each) and the broker's clients need together. Returns the
/// (soft, hard) limits now in force.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit Linux only
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}
