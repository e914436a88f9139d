//! pgid's own login to Postgres as a lease role: socket, optional TLS, startup, SCRAM with the
//! derived password (the salted password is cached per lease, so reconnects cost no PBKDF2).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use uuid::Uuid;

use super::scram::{self, ClientExchange};
use super::stream::ServerStream;
use super::wire::backend::{self, Backend};
use super::wire::framing::{Frames, MAX_AUTH_MESSAGE_BYTES, MAX_MESSAGE_BYTES};
use super::wire::{frontend, WireError};
use crate::config::UpstreamTls;
use crate::database::{Database, Upstream as UpstreamAddr};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the database: {0}")]
    Io(#[from] std::io::Error),
    #[error("database protocol: {0}")]
    Wire(#[from] WireError),
    #[error("{message}")]
    Server { code: String, message: String },
    #[error("database authentication: {0}")]
    Auth(String),
    #[error("database TLS: {0}")]
    Tls(String),
}

/// What makes two upstream connections interchangeable: same lease, same startup parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub lease: Uuid,
    pub params: Vec<(String, String)>,
}

/// A logged-in upstream connection, ready for queries.
pub struct Upstream {
    pub stream: ServerStream,
    pub frames: Frames,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values as the server last reported them.
    pub params: Vec<(String, String)>,
    pub key: PoolKey,
}

impl Upstream {
    pub fn set_param(&mut self, name: String, value: String) {
        match self.params.iter_mut().find(|(k, _)| *k == name) {
            Some(p) => p.1 = value,
            None => self.params.push((name, value)),
        }
    }
}

/// (lease, salt, iterations)
type SaltKey = (Uuid, Vec<u8>, u32);

/// Salted passwords by (lease, salt, iterations).
#[derive(Default)]
pub struct SaltCache {
    map: Mutex<HashMap<SaltKey, [u8; 32]>>,
}

const SALT_CACHE_MAX: usize = 100_000;

impl SaltCache {
    async fn get(
        &self,
        lease: Uuid,
        password: &Secret<String>,
        salt: Vec<u8>,
        iterations: u32,
    ) -> [u8; 32] {
        let key = (lease, salt, iterations);
        if let Some(v) = self.map.lock().unwrap().get(&key) {
            return *v;
        }
        let (pw, s, i) = (password.clone(), key.1.clone(), iterations);
        let salted = tokio::task::spawn_blocking(move || {
            scram::salted_password(pw.expose().as_bytes(), &s, i)
        })
        .await
        .expect("PBKDF2 task");
        let mut map = self.map.lock().unwrap();
        if map.len() >= SALT_CACHE_MAX {
            map.clear();
        }
        map.insert(key, salted);
        salted
    }

    pub fn forget(&self, lease: Uuid) {
        self.map.lock().unwrap().retain(|(l, _, _), _| *l != lease);
    }
}

pub async fn connect_socket(addr: &UpstreamAddr) -> std::io::Result<ServerStream> {
    Ok(match addr {
        UpstreamAddr::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            ServerStream::Tcp(s)
        }
        UpstreamAddr::Unix { dir, port } => {
            ServerStream::Unix(UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?)
        }
    })
}

pub struct Login<'a> {
    pub db: &'a Database,
    pub role: &'a str,
    pub password: &'a Secret<String>,
    pub lease: Uuid,
    /// Startup parameters besides user and database.
    pub params: &'a [(String, String)],
    pub salts: &'a SaltCache,
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
}

pub async fn connect(l: Login<'_>) -> Result<Upstream, UpstreamError> {
    let mut stream = connect_socket(&l.db.upstream).await?;
    if l.db.upstream_tls != UpstreamTls::Disable {
        stream = start_tls(stream, &l.db.upstream, l.tls).await?;
    }
    let mut out = BytesMut::new();
    let mut params = vec![
        ("user".to_string(), l.role.to_string()),
        ("database".to_string(), l.db.dbname.clone()),
    ];
    params.extend(l.params.iter().cloned());
    frontend::startup(&mut out, &params);
    stream.write_all(&out).await?;

    let mut frames = Frames::new(MAX_AUTH_MESSAGE_BYTES);
    let mut scram: Option<(ClientExchange, [u8; 32])> = None;
    let mut up = Upstream {
        stream,
        frames: Frames::new(MAX_MESSAGE_BYTES),
        pid: 0,
        secret: 0,
        params: Vec::new(),
        key: PoolKey {
            lease: l.lease,
            params: l.params.to_vec(),
        },
    };
    loop {
        let m = frames.read(&mut up.stream).await?;
        let mut out = BytesMut::new();
        match Backend::decode(m.tag, &m.body)? {
            Backend::Authentication { code, data: rest } => {
                match code {
                    backend::AUTH_OK => {}
                    // A password in the clear only ever goes over TLS: on a plain connection a
                    // server (or whoever stands in for it) asking for one is refused.
                    backend::AUTH_CLEARTEXT if up.stream.is_tls() => {
                        frontend::password(&mut out, l.password.expose())
                    }
                    backend::AUTH_CLEARTEXT => {
                        return Err(UpstreamError::Auth(
                            "the server asks for the password in the clear without TLS; refused"
                                .into(),
                        ))
                    }
                    backend::AUTH_SASL => {
                        let offered = backend::sasl_mechanisms(rest);
                        // Over TLS, bind SCRAM to the server's certificate when offered: a
                        // stand-in between pgid and Postgres cannot complete it.
                        let plus = up
                            .stream
                            .end_point()
                            .filter(|_| offered.iter().any(|m| m == scram::MECHANISM_PLUS));
                        if plus.is_none() && !offered.iter().any(|m| m == scram::MECHANISM) {
                            return Err(UpstreamError::Auth(
                                "server does not offer SCRAM-SHA-256".into(),
                            ));
                        }
                        let mechanism = if plus.is_some() {
                            tracing::debug!("upstream SCRAM bound to the TLS channel");
                            scram::MECHANISM_PLUS
                        } else {
                            scram::MECHANISM
                        };
                        let ex = ClientExchange::new(&scram::nonce(), plus);
                        frontend::sasl_initial_response(
                            &mut out,
                            mechanism,
                            ex.client_first().as_bytes(),
                        );
                        scram = Some((ex, [0; 32]));
                    }
                    backend::AUTH_SASL_CONTINUE => {
                        let (ex, expected) = scram
                            .as_mut()
                            .ok_or(UpstreamError::Auth("unexpected SASL continue".into()))?;
                        let (salt, iterations) = ex
                            .server_params(rest)
                            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        let salted = l.salts.get(l.lease, l.password, salt, iterations).await;
                        let (msg, sig) = ex
                            .client_final(rest, &salted)
                            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        *expected = sig;
                        frontend::sasl_response(&mut out, msg.as_bytes());
                    }
                    backend::AUTH_SASL_FINAL => {
                        let (_, expected) = scram
                            .as_ref()
                            .ok_or(UpstreamError::Auth("unexpected SASL final".into()))?;
                        ClientExchange::check_server_final(rest, expected)
                            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                    }
                    other => {
                        return Err(UpstreamError::Auth(format!(
                            "unsupported authentication method {other}"
                        )))
                    }
                }
            }
            Backend::ParameterStatus { name, value } => up.set_param(
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ),
            Backend::BackendKeyData { pid, secret } => (up.pid, up.secret) = (pid, secret),
            Backend::NoticeResponse(_) => {}
            Backend::ErrorResponse(r) => {
                return Err(UpstreamError::Server {
                    code: match r.code_str() {
                        "" => "08000".into(),
                        c => c.to_string(),
                    },
                    message: String::from_utf8_lossy(r.message).into_owned(),
                })
            }
            Backend::ReadyForQuery(_) => {
                up.frames.buf = frames.buf;
                return Ok(up);
            }
            _ => {
                return Err(WireError::Invalid("unexpected message during upstream startup").into())
            }
        }
        if !out.is_empty() {
            up.stream.write_all(&out).await?;
        }
    }
}

async fn start_tls(
    stream: ServerStream,
    addr: &UpstreamAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<ServerStream, UpstreamError> {
    let (ServerStream::Tcp(mut tcp), UpstreamAddr::Tcp { host, .. }) = (stream, addr) else {
        return Err(UpstreamError::Tls(
            "TLS is configured for a Unix socket".into(),
        ));
    };
    tcp.write_all(&frontend::ssl_request()).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(UpstreamError::Tls("the server does not accept TLS".into()));
    }
    let cfg = tls.ok_or_else(|| UpstreamError::Tls("no TLS configuration".into()))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let s = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(ServerStream::Tls(Box::new(s)))
}
