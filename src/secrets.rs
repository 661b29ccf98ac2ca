//! Repository access tokens at rest: XChaCha20-Poly1305 with a key kept outside the database
//! (a mode-0600 key file in the data directory, or `RULEYARD_SECRET_KEY`).
//!
//! The database holds a sealed known value so that a node with the wrong key refuses to start
//! instead of failing later on a fetch. Nothing here logs or formats a plaintext.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

const KEY_FILE: &str = "secret.key";
const PREFIX: &str = "v1:";
/// The settings key of the sealed check value.
pub const KEY_CHECK_SETTING: &str = "secret_key_check";
const KEY_CHECK_PLAINTEXT: &str = "ruleyard secret key check";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("RULEYARD_SECRET_KEY must be the base64 of exactly 32 bytes")]
    BadKey,
    #[error("cannot use the key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("a stored secret could not be decrypted")]
    Decrypt,
}

/// Seals and opens secrets with the node's key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    pub fn from_key(key: &[u8; 32]) -> Self {
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// The key from configuration, else the key file in `data_dir` (created with mode 0600).
    pub fn load(configured: Option<&SecretString>, data_dir: &Path) -> Result<Self, SecretError> {
        if let Some(b64) = configured {
            return Self::from_base64(b64.expose_secret());
        }
        let path = data_dir.join(KEY_FILE);
        let key_error = |message: String| SecretError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_base64(text.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|e| key_error(e.to_string()))?;
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(&path) {
                    Ok(mut file) => {
                        file.write_all(B64.encode(key).as_bytes())
                            .and_then(|()| file.sync_all())
                            .map_err(|e| key_error(e.to_string()))?;
                        Ok(Self::from_key(&key))
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let text =
                            std::fs::read_to_string(&path).map_err(|e| key_error(e.to_string()))?;
                        Self::from_base64(text.trim())
                    }
                    Err(e) => Err(key_error(e.to_string())),
                }
            }
            Err(e) => Err(key_error(e.to_string())),
        }
    }

    fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = B64.decode(text.trim()).map_err(|_| SecretError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(Self::from_key(&key))
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("XChaCha20-Poly1305 encryption does not fail on in-memory data");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", B64.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<SecretString, SecretError> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(SecretError::Decrypt)?;
        if raw.len() < 24 {
            return Err(SecretError::Decrypt);
        }
        let (nonce, body) = raw.split_at(24);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), body)
            .map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| SecretError::Decrypt)
    }

    /// A fresh sealed check value, to store when the database has none.
    pub fn check_value(&self) -> String {
        self.seal(KEY_CHECK_PLAINTEXT)
    }

    /// True when this key opens the check value the database holds.
    pub fn verifies(&self, stored_check: &str) -> bool {
        self.open(stored_check)
            .is_ok_and(|p| p.expose_secret() == KEY_CHECK_PLAINTEXT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_and_hide_plaintext() {
        let b = SecretBox::from_key(&[7u8; 32]);
        let sealed = b.seal("ghp_secret_token");
        assert!(!sealed.contains("ghp_secret_token"));
        assert_eq!(b.open(&sealed).unwrap().expose_secret(), "ghp_secret_token");
        assert_ne!(sealed, b.seal("ghp_secret_token"), "nonces differ");
    }

    #[test]
    fn another_key_fails_the_check() {
        let a = SecretBox::from_key(&[1u8; 32]);
        let b = SecretBox::from_key(&[2u8; 32]);
        let check = a.check_value();
        assert!(a.verifies(&check));
        assert!(!b.verifies(&check));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(None, dir.path()).unwrap();
        let b = SecretBox::load(None, dir.path()).unwrap();
        assert!(b.verifies(&a.check_value()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            SecretBox::load(Some(&SecretString::from("short")), dir.path()),
            Err(SecretError::BadKey)
        ));
    }
}
