//! A raw-protocol client for tests that send their own messages (pipelines, odd names, settings
//! in the startup packet): log in, send bytes, read the server's messages back decoded.

use std::time::Duration;

use bytes::BytesMut;
use pgid::proxy::scram::{salted_password, ClientExchange};
use pgid::proxy::wire::backend::Backend;
use pgid::proxy::wire::framing::{Frames, MAX_MESSAGE_BYTES};
use pgid::proxy::wire::{backend, frontend};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A message from the server: its tag and body.
#[derive(Debug, Clone)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    pub fn decoded(&self) -> Backend<'_> {
        Backend::decode(self.tag, &self.body).expect("a valid server message")
    }

    /// SQLSTATE and message of an ErrorResponse.
    pub fn error(&self) -> Option<(String, String)> {
        match self.decoded() {
            Backend::ErrorResponse(r) => Some((
                r.code_str().to_string(),
                String::from_utf8_lossy(r.message).into_owned(),
            )),
            _ => None,
        }
    }

    /// The first column of a DataRow, as text.
    pub fn first_value(&self) -> Option<String> {
        let Backend::DataRow(b) = self.decoded() else {
            return None;
        };
        let len = i32::from_be_bytes(b.get(2..6)?.try_into().ok()?);
        (len >= 0).then(|| String::from_utf8_lossy(&b[6..6 + len as usize]).into_owned())
    }
}

pub struct RawClient {
    pub stream: TcpStream,
    frames: Frames,
}

impl RawClient {
    /// Logs in with SCRAM, with `extra` startup parameters; `Err` carries the server's refusal.
    pub async fn login(
        port: u16,
        user: &str,
        password: &str,
        extra: &[(&str, &str)],
    ) -> Result<RawClient, (String, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut params = vec![
            ("user".to_string(), user.to_string()),
            ("database".to_string(), "app".to_string()),
        ];
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut out = BytesMut::new();
        frontend::startup(&mut out, &params);
        s.write_all(&out).await.unwrap();
        let mut frames = Frames::new(MAX_MESSAGE_BYTES);
        let ex = ClientExchange::new("raw-test-nonce", None);
        let mut expected = [0u8; 32];
        loop {
            let m = frames
                .read(&mut s)
                .await
                .expect("the server answers the login");
            let mut out = BytesMut::new();
            match Backend::decode(m.tag, &m.body).unwrap() {
                Backend::Authentication { code: 10, .. } => frontend::sasl_initial_response(
                    &mut out,
                    "SCRAM-SHA-256",
                    ex.client_first().as_bytes(),
                ),
                Backend::Authentication { code: 11, data } => {
                    let (salt, i) = ex.server_params(data).unwrap();
                    let (msg, sig) = ex
                        .client_final(data, &salted_password(password.as_bytes(), &salt, i))
                        .unwrap();
                    expected = sig;
                    frontend::sasl_response(&mut out, msg.as_bytes());
                }
                Backend::Authentication { code: 12, data } => {
                    ClientExchange::check_server_final(data, &expected).unwrap()
                }
                Backend::ReadyForQuery(_) => return Ok(RawClient { stream: s, frames }),
                Backend::ErrorResponse(_) => {
                    let f = backend::error_fields(&m.body);
                    let get = |t| f.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone());
                    return Err((get(b'C').unwrap_or_default(), get(b'M').unwrap_or_default()));
                }
                _ => {}
            }
            if !out.is_empty() {
                s.write_all(&out).await.unwrap();
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads messages until `n` ReadyForQuery have arrived (panics after 15 s).
    pub async fn until_ready(&mut self, n: usize) -> Vec<Message> {
        self.until_n(b'Z', n).await
    }

    /// Reads messages up to and including the first one with tag `tag` (panics after 15 s).
    pub async fn until(&mut self, tag: u8) -> Vec<Message> {
        self.until_n(tag, 1).await
    }

    /// Reads messages up to and including the `n`th with tag `tag` (panics after 15 s).
    pub async fn until_n(&mut self, tag: u8, n: usize) -> Vec<Message> {
        let mut seen = 0;
        self.read_until(&format!("{n} {:?}", char::from(tag)), |m| {
            seen += usize::from(m.tag == tag);
            seen == n
        })
        .await
    }

    /// Reads exactly `n` messages (for pipelines without a Sync; panics after 15 s).
    pub async fn until_complete(&mut self, n: usize) -> Vec<Message> {
        let mut seen = 0;
        self.read_until(&format!("{n} messages"), |_| {
            seen += 1;
            seen == n
        })
        .await
    }

    /// Reads messages up to and including the one `last` says is the last.
    async fn read_until(
        &mut self,
        what: &str,
        mut last: impl FnMut(&Message) -> bool,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        let read = async {
            loop {
                let m = self
                    .frames
                    .read(&mut self.stream)
                    .await
                    .expect("a server message");
                let m = Message {
                    tag: m.tag,
                    body: m.body.to_vec(),
                };
                let done = last(&m);
                out.push(m);
                if done {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(15), read)
            .await
            .is_err()
        {
            panic!("no {what} within 15 s; got {out:?}");
        }
        out
    }

    /// Sends one Query and reads its answer.
    pub async fn query(&mut self, sql: &str) -> Vec<Message> {
        let mut q = BytesMut::new();
        frontend::query(&mut q, sql.as_bytes());
        self.send(&q).await;
        self.until_ready(1).await
    }
}

/// The errors among `messages`: (SQLSTATE, message).
pub fn errors(messages: &[Message]) -> Vec<(String, String)> {
    messages.iter().filter_map(Message::error).collect()
}

/// The first column of every DataRow among `messages`.
pub fn values(messages: &[Message]) -> Vec<String> {
    messages.iter().filter_map(Message::first_value).collect()
}

/// The secrets among `secrets` that appear anywhere in what the client received.
pub fn leaked<'a>(secrets: &'a [String], answer: &[Message]) -> Vec<&'a String> {
    secrets
        .iter()
        .filter(|s| {
            answer
                .iter()
                .any(|m| m.body.windows(s.len()).any(|w| w == s.as_bytes()))
        })
        .collect()
}

/// [`leaked`], and also the secrets (e-mail addresses) whose local part appears followed by `@`.
pub fn leaked_or_local_part<'a>(secrets: &'a [String], answer: &[Message]) -> Vec<&'a String> {
    secrets
        .iter()
        .filter(|s| {
            let local = s.split('@').next().unwrap_or(s);
            answer.iter().any(|m| {
                m.body.windows(s.len()).any(|w| w == s.as_bytes())
                    || m.body
                        .windows(local.len() + 1)
                        .any(|w| w[..local.len()] == *local.as_bytes() && w[local.len()] == b'@')
            })
        })
        .collect()
}
