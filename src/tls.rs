//! TLS material for the broker (and the proxy): the configured certificate, or a local CA and a
//! server certificate generated into `state_dir/tls` on first start, so that clients can verify
//! pgid with `sslrootcert=<state_dir>/tls/ca.crt` / `--cacert`. The CA is valid for 10 years and
//! the server certificate for 397 days; at each start the server certificate is issued again
//! (by the same CA, so clients keep trusting it) when it has less than 30 days left or does not
//! name every host pgid is now reached by (`server.names` records what it names).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Certificate and key files in use, and the CA that signed them when pgid generated them.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl TlsMaterial {
    /// The configured files, or generated ones in `state_dir/tls` covering `hosts`.
    pub fn resolve(
        state_dir: &Path,
        configured: Option<&TlsFiles>,
        hosts: &[String],
    ) -> Result<TlsMaterial, TlsError> {
        if let Some(f) = configured {
            return Ok(TlsMaterial {
                cert: f.cert.clone(),
                key: f.key.clone(),
                ca: None,
            });
        }
        let dir = state_dir.join("tls");
        let m = TlsMaterial {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: Some(dir.join("ca.crt")),
        };
        let names = names(hosts);
        if !m.cert.exists() || !m.key.exists() {
            // A CA kept in `dir` issues the missing certificate: clients that trust its ca.crt
            // keep working (a new CA only when none is kept).
            reissue(&dir, &names)?;
        } else if let Some(why) = stale(&dir, &names) {
            tracing::info!(reason = why, "issuing the server certificate again");
            reissue(&dir, &names)?;
        }
        Ok(m)
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| file_err(&self.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(&self.cert, e))?;
        if certs.is_empty() {
            return Err(file_err(&self.cert, "no certificate found"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| file_err(&self.key, e))?;
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

impl TlsMaterial {
    /// Channel-binding data (`tls-server-end-point`) for the certificate clients see, when its
    /// signature algorithm defines one.
    pub fn server_end_point(&self) -> Option<Vec<u8>> {
        let cert = CertificateDer::pem_file_iter(&self.cert)
            .ok()?
            .next()?
            .ok()?;
        server_end_point(cert.as_ref())
    }
}

/// RFC 5929 `tls-server-end-point`: the hash of the server certificate (DER), with the hash of
/// its signature algorithm (SHA-256 for MD5 and SHA-1). `None` for algorithms the RFC leaves
/// undefined (RSASSA-PSS, EdDSA): channel binding is then not offered.
pub fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, … }
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, _, rest) = tlv(cert)? else {
        return None;
    };
    let (0x30, algorithm, _) = tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(algorithm)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let bits = match oid {
        [p @ .., 0x04 | 0x05] if p == RSA => 256, // md5, sha1 → SHA-256
        [p @ .., 0x0b] if p == RSA => 256,
        [p @ .., 0x0c] if p == RSA => 384,
        [p @ .., 0x0d] if p == RSA => 512,
        [p @ .., 0x0e] if p == RSA => 224,
        o if o == ECDSA_SHA1 => 256,
        [p @ .., 0x01] if p == ECDSA_SHA2 => 224,
        [p @ .., 0x02] if p == ECDSA_SHA2 => 256,
        [p @ .., 0x03] if p == ECDSA_SHA2 => 384,
        [p @ .., 0x04] if p == ECDSA_SHA2 => 512,
        _ => return None,
    };
    Some(match bits {
        224 => sha2::Sha224::digest(der).to_vec(),
        256 => sha2::Sha256::digest(der).to_vec(),
        384 => sha2::Sha384::digest(der).to_vec(),
        _ => sha2::Sha512::digest(der).to_vec(),
    })
}

/// One DER element: (tag, content, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, x| (acc << 8) | *x as usize);
        (len, 2 + n)
    };
    let content = b.get(header..header.checked_add(len)?)?;
    Some((tag, content, &b[header + len..]))
}

/// Days a generated CA and server certificate are valid.
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 397;
/// A server certificate with fewer days left is issued again at start.
const RENEW_DAYS: i64 = 30;

/// Every name the server certificate must carry: loopback and the configured hosts.
fn names(hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !h.is_empty() && !names.contains(h) && h != "0.0.0.0" && h != "::" {
            names.push(h.clone());
        }
    }
    names
}

/// `not_before` a day ago (clocks differ), `not_after` `days` from now.
fn validity(params: &mut CertificateParams, days: i64) {
    use chrono::Datelike;
    let at = |t: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
    };
    let now = chrono::Utc::now();
    params.not_before = at(now - chrono::Duration::days(1));
    params.not_after = at(now + chrono::Duration::days(days));
}

/// The CA's parameters (its name and constraints; the key is what makes it this CA).
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "pgid local CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca)
}

fn generate(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = ca_params()?;
    validity(&mut ca, CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;
    write_file(
        &dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&dir.join("ca.crt"), ca_cert.pem().as_bytes(), 0o644)?;
    issue(dir, names, ca_key, &ca_cert.pem())?;
    tracing::info!(dir = %dir.display(), "generated a local CA and server certificate");
    Ok(())
}

/// Issues the server certificate again with the CA kept in `dir`, or (no CA key kept: an older
/// pgid made it) a new CA and certificate — clients must then trust the new `ca.crt`.
fn reissue(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    let key = std::fs::read_to_string(dir.join("ca.key"));
    let ca = std::fs::read_to_string(dir.join("ca.crt"));
    match (key, ca) {
        (Ok(key), Ok(ca)) => issue(dir, names, KeyPair::from_pem(&key)?, &ca),
        _ => {
            if dir.join("ca.crt").exists() {
                tracing::warn!(dir = %dir.display(), "no CA key kept: generating a new CA; clients must trust the new ca.crt");
            }
            generate(dir, names)
        }
    }
}

fn issue(dir: &Path, names: &[String], ca_key: KeyPair, ca_pem: &str) -> Result<(), TlsError> {
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(DnType::CommonName, "pgid");
    validity(&mut leaf, SERVER_DAYS);
    let issuer = Issuer::new(ca_params()?, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    write_file(
        &dir.join("server.key"),
        leaf_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let chain = format!("{}{}", leaf_cert.pem(), ca_pem);
    write_file(&dir.join("server.crt"), chain.as_bytes(), 0o644)?;
    let expires = chrono::Utc::now() + chrono::Duration::days(SERVER_DAYS);
    let record = format!("{}\n{}\n", expires.to_rfc3339(), names.join("\n"));
    write_file(&dir.join("server.names"), record.as_bytes(), 0o644)
}

/// Why the server certificate in `dir` must be issued again, if it must.
fn stale(dir: &Path, names: &[String]) -> Option<&'static str> {
    let Ok(record) = std::fs::read_to_string(dir.join("server.names")) else {
        return Some("it was made by an older pgid (no expiry recorded)");
    };
    let mut lines = record.lines();
    let expires = lines
        .next()
        .and_then(|l| chrono::DateTime::parse_from_rfc3339(l).ok());
    match expires {
        Some(e) if e > chrono::Utc::now() + chrono::Duration::days(RENEW_DAYS) => {}
        _ => return Some("it expires within 30 days"),
    }
    let has: Vec<&str> = lines.collect();
    if names.iter().any(|n| !has.contains(&n.as_str())) {
        return Some("a host name it must carry is not on it");
    }
    None
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(data).map_err(|e| file_err(&tmp, e))?;
    f.sync_all().map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// A rustls client configuration trusting exactly the certificates in `ca_file` (none if absent).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_err(path, e))? {
            roots
                .add(cert.map_err(|e| file_err(path, e))?)
                .map_err(|e| file_err(path, e))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let m = TlsMaterial::resolve(dir.path(), None, &["db.example.com".into()]).unwrap();
        let first = std::fs::read(&m.cert).unwrap();
        m.server_config(&[b"http/1.1"]).unwrap();
        let again = TlsMaterial::resolve(dir.path(), None, &[]).unwrap();
        assert_eq!(std::fs::read(&again.cert).unwrap(), first);
        assert!(m.ca.as_ref().unwrap().exists());
        client_config(m.ca.as_deref()).unwrap();
    }

    /// Whether the server certificate in `m` verifies for `name` against `m`'s CA, now.
    fn verifies(m: &TlsMaterial, name: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(m.ca.as_ref().unwrap()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&m.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn the_certificate_is_issued_again_for_new_names_and_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let m = TlsMaterial::resolve(dir.path(), None, &["db.example.com".into()]).unwrap();
        let ca = std::fs::read(m.ca.as_ref().unwrap()).unwrap();
        assert!(verifies(&m, "db.example.com"));
        assert!(!verifies(&m, "pgid.example.org"));
        // A new public host: the same CA issues a certificate that names it.
        let m = TlsMaterial::resolve(dir.path(), None, &["pgid.example.org".into()]).unwrap();
        assert!(verifies(&m, "pgid.example.org"));
        assert_eq!(
            std::fs::read(m.ca.as_ref().unwrap()).unwrap(),
            ca,
            "clients keep the CA"
        );
        // Close to its expiry: issued again.
        let names = dir.path().join("tls/server.names");
        let record = std::fs::read_to_string(&names).unwrap();
        let soon = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
        let rest: Vec<&str> = record.lines().skip(1).collect();
        std::fs::write(&names, format!("{soon}\n{}\n", rest.join("\n"))).unwrap();
        let before = std::fs::read(&m.cert).unwrap();
        let m = TlsMaterial::resolve(dir.path(), None, &["pgid.example.org".into()]).unwrap();
        assert_ne!(std::fs::read(&m.cert).unwrap(), before);
        assert!(verifies(&m, "pgid.example.org"));
        assert!(super::stale(&dir.path().join("tls"), &names_of(&["pgid.example.org"])).is_none());
        // The certificate (or its key) removed, to have it issued again: the kept CA issues it.
        std::fs::remove_file(&m.cert).unwrap();
        let m = TlsMaterial::resolve(dir.path(), None, &["pgid.example.org".into()]).unwrap();
        assert!(verifies(&m, "pgid.example.org"));
        assert_eq!(std::fs::read(m.ca.as_ref().unwrap()).unwrap(), ca);
        std::fs::remove_file(&m.key).unwrap();
        let m = TlsMaterial::resolve(dir.path(), None, &["pgid.example.org".into()]).unwrap();
        assert!(verifies(&m, "pgid.example.org"));
        assert_eq!(std::fs::read(m.ca.as_ref().unwrap()).unwrap(), ca);
    }

    fn names_of(hosts: &[&str]) -> Vec<String> {
        super::names(&hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod end_point_tests {
    use super::*;

    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn end_point_hashes_the_certificate_with_its_signature_hash() {
        use sha2::Digest;
        let der = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point(&der).unwrap(),
            sha2::Sha256::digest(&der).to_vec()
        );
        let der = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            server_end_point(&der).unwrap(),
            sha2::Sha384::digest(&der).to_vec()
        );
        // EdDSA: undefined by RFC 5929, so no channel binding.
        assert_eq!(server_end_point(&self_signed(&rcgen::PKCS_ED25519)), None);
        assert_eq!(server_end_point(b"\x30\x82"), None);
        assert_eq!(server_end_point(b""), None);
    }
}
