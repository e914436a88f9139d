//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as two pure state machines with injected nonces: the server
//! side authenticates clients against a stored verifier; the client side logs in upstream with a
//! salted password pgid caches per lease (so reconnects cost no PBKDF2). Over TLS the server
//! also offers `SCRAM-SHA-256-PLUS` with `tls-server-end-point` channel binding (RFC 5929), and
//! then refuses a client's `y,,` (it could bind and believes the server cannot: a downgrade).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Channel binding as the server offers it on this connection.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// Not offered (no TLS, or a certificate without a defined end-point hash).
    None,
    /// Offered (`tls-server-end-point` data); `plus`: the client chose SCRAM-SHA-256-PLUS.
    Offered { data: &'a [u8], plus: bool },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("channel binding does not match: the connection may be intercepted")]
    BindingMismatch,
    #[error("the client believes the server cannot bind to the channel (possible downgrade)")]
    Downgrade,
    #[error("nonce mismatch")]
    Nonce,
    #[error("wrong password")]
    BadProof,
    #[error("server signature does not match")]
    BadServerSignature,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random nonce (18 bytes, base64).
pub fn nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut b);
    B64.encode(b)
}

/// Hi() of RFC 5802: PBKDF2-HMAC-SHA256 with one output block.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mac = Hmac::<Sha256>::new_from_slice(password).expect("any key length");
    let mut m = mac.clone();
    m.update(salt);
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut m = mac.clone();
        m.update(&u);
        u = m.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// A stored SCRAM verifier: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl StoredVerifier {
    pub fn parse(text: &str) -> Option<StoredVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(StoredVerifier {
            iterations: iter.parse().ok().filter(|i| *i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    pub fn from_salted(salted: &[u8; 32], salt: &[u8], iterations: u32) -> StoredVerifier {
        StoredVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&hmac(salted, b"Client Key")),
            server_key: hmac(salted, b"Server Key"),
        }
    }
}

fn attr(part: &str, name: char) -> Option<&str> {
    let mut c = part.chars();
    (c.next() == Some(name) && c.next() == Some('=')).then(|| &part[2..])
}

/// Server side, after the client-first message.
pub struct ServerExchange {
    verifier: StoredVerifier,
    /// What the client's `c=` must carry: the GS2 header, then the channel-binding data.
    binding_input: Vec<u8>,
    client_first_bare: String,
    nonce: String,
    pub server_first: String,
}

impl ServerExchange {
    /// Reads client-first (`n,,n=…,r=…`) and prepares server-first with `server_nonce` appended.
    pub fn start(
        verifier: StoredVerifier,
        client_first: &[u8],
        server_nonce: &str,
        binding: Binding<'_>,
    ) -> Result<ServerExchange, ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let cb = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let authzid = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first-bare"))?;
        let bound = match (cb, binding) {
            ("p=tls-server-end-point", Binding::Offered { data, plus: true }) => Some(data),
            (c, Binding::Offered { plus: true, .. }) if c != "p=tls-server-end-point" => {
                return Err(ScramError::ChannelBinding)
            }
            ("y", Binding::Offered { .. }) => return Err(ScramError::Downgrade),
            ("n" | "y", _) => None,
            (c, _) if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 header")),
        };
        if !authzid.is_empty() && attr(authzid, 'a').is_none() {
            return Err(ScramError::Malformed("authzid"));
        }
        let mut fields = bare.split(',');
        let _user = fields
            .next()
            .and_then(|f| attr(f, 'n'))
            .ok_or(ScramError::Malformed("no username"))?;
        let cnonce = fields
            .next()
            .and_then(|f| attr(f, 'r'))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if cnonce.is_empty()
            || !cnonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("nonce characters"));
        }
        let nonce = format!("{cnonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(ServerExchange {
            verifier,
            binding_input: {
                let mut b = format!("{cb},{authzid},").into_bytes();
                b.extend_from_slice(bound.unwrap_or_default());
                b
            },
            client_first_bare: bare.to_string(),
            nonce,
            server_first,
        })
    }

    /// Checks client-final; on success returns server-final (`v=…`).
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut fields = without_proof.split(',');
        let cb = fields
            .next()
            .and_then(|f| attr(f, 'c'))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        let nonce = fields
            .next()
            .and_then(|f| attr(f, 'r'))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if B64.decode(cb).ok().as_deref() != Some(self.binding_input.as_slice()) {
            return Err(ScramError::BindingMismatch);
        }
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        if !ct_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::BadProof);
        }
        Ok(format!(
            "v={}",
            B64.encode(hmac(&self.verifier.server_key, auth_message.as_bytes()))
        ))
    }
}

/// Client side: pgid logging in upstream.
pub struct ClientExchange {
    nonce: String,
    client_first_bare: String,
    /// GS2 header: `n,,`, or `p=tls-server-end-point,,` when bound to the TLS channel.
    gs2_header: &'static str,
    /// The server certificate's end-point hash, when bound.
    binding: Vec<u8>,
}

impl ClientExchange {
    /// `binding`: the server's `tls-server-end-point` data, to use SCRAM-SHA-256-PLUS.
    pub fn new(nonce: &str, binding: Option<Vec<u8>>) -> ClientExchange {
        ClientExchange {
            nonce: nonce.to_string(),
            client_first_bare: format!("n=,r={nonce}"),
            gs2_header: if binding.is_some() {
                "p=tls-server-end-point,,"
            } else {
                "n,,"
            },
            binding: binding.unwrap_or_default(),
        }
    }

    pub fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    /// Reads server-first → (salt, iterations).
    pub fn server_params(&self, server_first: &[u8]) -> Result<(Vec<u8>, u32), ScramError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut fields = text.split(',');
        let nonce = fields
            .next()
            .and_then(|f| attr(f, 'r'))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = fields
            .next()
            .and_then(|f| attr(f, 's'))
            .ok_or(ScramError::Malformed("no salt"))?;
        let iter = fields
            .next()
            .and_then(|f| attr(f, 'i'))
            .ok_or(ScramError::Malformed("no iterations"))?;
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("salt"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| ScramError::Malformed("iterations"))?;
        if iterations == 0 {
            return Err(ScramError::Malformed("iterations"));
        }
        Ok((salt, iterations))
    }

    /// client-final for `server_first`, and the server signature to expect in server-final.
    pub fn client_final(
        &self,
        server_first: &[u8],
        salted: &[u8; 32],
    ) -> Result<(String, [u8; 32]), ScramError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let nonce = text
            .split(',')
            .next()
            .and_then(|f| attr(f, 'r'))
            .ok_or(ScramError::Malformed("no nonce"))?;
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.binding);
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("{},{},{}", self.client_first_bare, text, without_proof);
        let client_key = hmac(salted, b"Client Key");
        let signature = hmac(&sha256(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_signature = hmac(&hmac(salted, b"Server Key"), auth_message.as_bytes());
        Ok((
            format!("{without_proof},p={}", B64.encode(proof)),
            server_signature,
        ))
    }

    pub fn check_server_final(server_final: &[u8], expected: &[u8; 32]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let v = text
            .split(',')
            .next()
            .and_then(|f| attr(f, 'v'))
            .ok_or(ScramError::Malformed("no verifier"))?;
        let v = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("verifier"))?;
        if ct_eq(&v, expected) {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn verifier() -> StoredVerifier {
        let salt = B64.decode(SALT).unwrap();
        StoredVerifier::from_salted(&salted_password(b"pencil", &salt, 4096), &salt, 4096)
    }

    #[test]
    fn server_side_matches_rfc_7677() {
        let ex = ServerExchange::start(
            verifier(),
            format!("n,,n=user,r={CLIENT_NONCE}").as_bytes(),
            SERVER_NONCE,
            Binding::None,
        )
        .unwrap();
        assert_eq!(ex.server_first, SERVER_FIRST);
        assert_eq!(ex.finish(CLIENT_FINAL.as_bytes()).unwrap(), SERVER_FINAL);
        let wrong = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(ex.finish(wrong.as_bytes()), Err(ScramError::BadProof));
        let other_nonce = CLIENT_FINAL.replace("k0,p", "k1,p");
        assert_eq!(ex.finish(other_nonce.as_bytes()), Err(ScramError::Nonce));
    }

    #[test]
    fn client_side_matches_rfc_7677() {
        let mut ex = ClientExchange::new(CLIENT_NONCE, None);
        ex.client_first_bare = format!("n=user,r={CLIENT_NONCE}");
        let (salt, iterations) = ex.server_params(SERVER_FIRST.as_bytes()).unwrap();
        let salted = salted_password(b"pencil", &salt, iterations);
        let (final_msg, sig) = ex.client_final(SERVER_FIRST.as_bytes(), &salted).unwrap();
        assert_eq!(final_msg, CLIENT_FINAL);
        ClientExchange::check_server_final(SERVER_FINAL.as_bytes(), &sig).unwrap();
        assert!(ClientExchange::check_server_final(b"v=AAAA", &sig).is_err());
    }

    #[test]
    fn verifiers_from_postgres_protocol_parse() {
        let text = postgres_protocol::password::scram_sha_256(b"secret");
        let v = StoredVerifier::parse(&text).unwrap();
        assert_eq!(v.iterations, 4096);
        let rebuilt = StoredVerifier::from_salted(
            &salted_password(b"secret", &v.salt, v.iterations),
            &v.salt,
            v.iterations,
        );
        assert_eq!(rebuilt, v);
        assert!(StoredVerifier::parse("md5abc").is_none());
    }

    #[test]
    fn channel_binding_requests_and_garbage_are_refused() {
        let none = Binding::None;
        assert_eq!(
            ServerExchange::start(verifier(), b"p=tls-server-end-point,,n=,r=abc", "x", none).err(),
            Some(ScramError::ChannelBinding)
        );
        assert!(ServerExchange::start(verifier(), b"garbage", "x", none).is_err());
        assert!(ServerExchange::start(verifier(), b"n,,n=,r=", "x", none).is_err());
        // y,, (client could bind, thinks we cannot) is fine when we do not offer -PLUS …
        assert!(ServerExchange::start(verifier(), b"y,,n=,r=abc", "x", none).is_ok());
        // … and a downgrade when we do.
        let offered = Binding::Offered {
            data: b"end-point",
            plus: false,
        };
        assert_eq!(
            ServerExchange::start(verifier(), b"y,,n=,r=abc", "x", offered).err(),
            Some(ScramError::Downgrade)
        );
        assert!(ServerExchange::start(verifier(), b"n,,n=,r=abc", "x", offered).is_ok());
        // -PLUS chosen: only tls-server-end-point.
        let plus = Binding::Offered {
            data: b"end-point",
            plus: true,
        };
        for header in ["n,,", "y,,", "p=tls-unique,,"] {
            let first = format!("{header}n=,r=abc");
            assert_eq!(
                ServerExchange::start(verifier(), first.as_bytes(), "x", plus).err(),
                Some(ScramError::ChannelBinding),
                "{header}"
            );
        }
    }

    #[test]
    fn plus_checks_the_channel_binding_data() {
        let data = b"the certificate hash";
        let plus = Binding::Offered { data, plus: true };
        let first = format!("p=tls-server-end-point,,n=user,r={CLIENT_NONCE}");
        let ex = ServerExchange::start(verifier(), first.as_bytes(), SERVER_NONCE, plus).unwrap();
        let nonce = format!("{CLIENT_NONCE}{SERVER_NONCE}");
        let final_for = |binding: &[u8]| {
            let mut input = b"p=tls-server-end-point,,".to_vec();
            input.extend_from_slice(binding);
            let without_proof = format!("c={},r={nonce}", B64.encode(&input));
            let auth = format!(
                "n=user,r={CLIENT_NONCE},{},{without_proof}",
                ex.server_first
            );
            let salt = B64.decode(SALT).unwrap();
            let salted = salted_password(b"pencil", &salt, 4096);
            let client_key = hmac(&salted, b"Client Key");
            let signature = hmac(&sha256(&client_key), auth.as_bytes());
            let proof: Vec<u8> = client_key
                .iter()
                .zip(signature)
                .map(|(a, b)| a ^ b)
                .collect();
            format!("{without_proof},p={}", B64.encode(proof))
        };
        assert!(ex.finish(final_for(data).as_bytes()).is_ok());
        assert_eq!(
            ex.finish(final_for(b"another certificate").as_bytes()),
            Err(ScramError::BindingMismatch)
        );
    }

    #[test]
    fn client_and_server_agree_on_plus_and_notice_another_certificate() {
        let salt = B64.decode(SALT).unwrap();
        let salted = salted_password(b"pencil", &salt, 4096);
        let run = |client_sees: &[u8], server_has: &[u8]| {
            let client = ClientExchange::new("client-nonce", Some(client_sees.to_vec()));
            let first = client.client_first();
            assert!(first.starts_with("p=tls-server-end-point,,"));
            let server = ServerExchange::start(
                verifier(),
                first.as_bytes(),
                "server-nonce",
                Binding::Offered {
                    data: server_has,
                    plus: true,
                },
            )
            .unwrap();
            let (last, expected) = client
                .client_final(server.server_first.as_bytes(), &salted)
                .unwrap();
            server
                .finish(last.as_bytes())
                .map(|v| ClientExchange::check_server_final(v.as_bytes(), &expected))
        };
        assert_eq!(run(b"cert hash", b"cert hash"), Ok(Ok(())));
        // A stand-in with its own certificate: the client binds to what it saw.
        assert_eq!(
            run(b"stand-in's cert", b"cert hash"),
            Err(ScramError::BindingMismatch)
        );
    }
}
