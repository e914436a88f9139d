//! The server key: 32 random bytes generated once into `state_dir` (mode 0600), from which every
//! lease's database password is derived. Several pgid instances share it through
//! `server_key_file`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::secret::Secret;

pub const SERVER_KEY_BYTES: usize = 32;

#[derive(Clone)]
pub struct ServerKey(Secret<[u8; SERVER_KEY_BYTES]>);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey([redacted])")
    }
}

impl ServerKey {
    pub fn from_bytes(bytes: [u8; SERVER_KEY_BYTES]) -> ServerKey {
        ServerKey(Secret::new(bytes))
    }

    /// Reads the key file, creating it (0600, hex) if it does not exist. A key file readable by
    /// others is refused: it unlocks every lease's database password.
    pub fn load_or_create(path: &Path) -> Result<ServerKey, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path)
                    .map_err(|e| e.to_string())?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{}: server key must not be readable by group or others (mode {:o}); run chmod 600",
                        path.display(),
                        mode & 0o777
                    ));
                }
                let bytes = hex::decode(text.trim())
                    .map_err(|_| format!("{}: not a hex key", path.display()))?;
                let arr: [u8; SERVER_KEY_BYTES] = bytes.try_into().map_err(|_| {
                    format!("{}: key must be {SERVER_KEY_BYTES} bytes", path.display())
                })?;
                Ok(ServerKey::from_bytes(arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                let mut bytes = [0u8; SERVER_KEY_BYTES];
                rand::rngs::OsRng.fill_bytes(&mut bytes);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                writeln!(f, "{}", hex::encode(bytes)).map_err(|e| e.to_string())?;
                f.sync_all().map_err(|e| e.to_string())?;
                tracing::info!(path = %path.display(), "generated a new server key");
                Ok(ServerKey::from_bytes(bytes))
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// A fingerprint of the key that reveals nothing of it (hex of a derived value), for telling
    /// whether two instances hold the same key.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.derive(b"pgid server key fingerprint")[..16])
    }

    /// HMAC-SHA256(key, label), for derived secrets.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        mac.update(label);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/server.key");
        let a = ServerKey::load_or_create(&path).unwrap();
        let b = ServerKey::load_or_create(&path).unwrap();
        assert_eq!(a.derive(b"x"), b.derive(b"x"));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ServerKey::load_or_create(&path)
            .unwrap_err()
            .contains("chmod 600"));
    }

    #[test]
    fn derivation_is_hmac_sha256() {
        // RFC 4231 test case 2
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        // HMAC pads short keys with zeros, so a zero-padded 32-byte key gives the same MAC.
        let k = ServerKey::from_bytes(key);
        assert_eq!(
            hex::encode(k.derive(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
