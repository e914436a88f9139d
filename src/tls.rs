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
