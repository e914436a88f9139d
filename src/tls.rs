//! TLS material for the broker (and the proxy): the configured certificate, or a local CA and a
//! server certificate generated into `state_dir/tls` on first start, so that clients can verify
//! pgid with `sslrootcert=<state_dir>/tls/ca.crt` / `--cacert`.

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
        if !m.cert.exists() || !m.key.exists() {
            generate(&dir, hosts)?;
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

fn generate(dir: &Path, hosts: &[String]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "pgid local CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !h.is_empty() && !names.contains(h) && h != "0.0.0.0" && h != "::" {
            names.push(h.clone());
        }
    }
    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::CommonName, "pgid");
    let issuer = Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    write_file(&dir.join("ca.crt"), ca_cert.pem().as_bytes(), 0o644)?;
    write_file(
        &dir.join("server.key"),
        leaf_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let chain = format!("{}{}", leaf_cert.pem(), ca_cert.pem());
    write_file(&dir.join("server.crt"), chain.as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "generated a local CA and server certificate");
    Ok(())
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
