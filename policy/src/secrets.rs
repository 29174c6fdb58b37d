//! Secrets at rest: PSKs, SA keying material and signing keys are sealed with a master
//! key that lives in a file outside the database.
//!
//! A sealed value is `nonce (12) | ciphertext | tag (16)`, AES-256-GCM through the
//! project's AEAD seam with a fresh random nonce per value. The associated data names the
//! row and column the value belongs to ([`RowRef`]), so a ciphertext copied into another
//! row (say, one member's PSK into another member's row) fails to decrypt.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gikev2_proto::crypto::{AeadAlg, AeadKey, Random, SecretBytes};
use zeroize::Zeroizing;

/// Why the master key could not be loaded or a value not sealed/opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("master key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "master key file {path} is accessible by group or others (mode {mode:o}); \
         run `chmod 600` on it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("master key file {path} holds {len} octets, expected {expected}")]
    Length {
        path: PathBuf,
        len: usize,
        expected: usize,
    },
    #[error("master key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("sealed value for {what} is too short ({len} octets)")]
    Truncated { what: String, len: usize },
    #[error(
        "sealed value for {what} does not decrypt with this master key (wrong key, or moved from another row)"
    )]
    Decrypt { what: String },
    #[error("crypto backend: {0}")]
    Crypto(String),
}

/// The key that seals secrets at rest. `Debug` prints nothing of it; the raw bytes are
/// wiped as soon as the AEAD key schedule exists.
pub struct MasterKey {
    key: AeadKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Octets in a master key file.
    pub const LEN: usize = 32;
    const ALG: AeadAlg = AeadAlg::Aes256Gcm;

    /// A master key from raw bytes (tests, or keys kept elsewhere).
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> Result<Self, SecretsError> {
        let key =
            AeadKey::new(Self::ALG, bytes).map_err(|e| SecretsError::Crypto(e.to_string()))?;
        Ok(Self { key })
    }

    /// A fresh random key (not written anywhere).
    pub fn generate(rng: &mut dyn Random) -> Result<Self, SecretsError> {
        let mut b = Zeroizing::new([0u8; Self::LEN]);
        rng.fill(&mut b[..]);
        Self::from_bytes(&b)
    }

    /// Loads the key from `path`, creating it (32 random bytes, mode 0600, created
    /// exclusively) when the file does not exist. Refuses a file that group or others
    /// may access, or of the wrong length.
    pub fn load_or_create(path: &Path, rng: &mut dyn Random) -> Result<Self, SecretsError> {
        let io_err = |source| SecretsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Zeroizing::new([0u8; Self::LEN]);
        rng.fill(&mut bytes[..]);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(&bytes[..]).map_err(io_err)?;
                f.sync_all().map_err(io_err)?;
                tracing::info!(path = %path.display(), "created a new master key file");
                Self::from_bytes(&bytes)
            }
            // Another process may have won the race: read what it wrote.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Loads an existing key file (see [`Self::load_or_create`] for the checks).
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let io_err = |source| SecretsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = File::open(path).map_err(io_err)?;
        let meta = f.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(SecretsError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(Self::LEN + 1));
        // Read at most one octet more than needed: enough to tell "too long".
        Read::by_ref(&mut f)
            .take(Self::LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_err)?;
        let bytes: &[u8; Self::LEN] =
            buf.as_slice()
                .try_into()
                .map_err(|_| SecretsError::Length {
                    path: path.to_path_buf(),
                    len: buf.len(),
                    expected: Self::LEN,
                })?;
        Self::from_bytes(bytes)
    }

    /// Seals `plaintext` for `row`: `nonce | ciphertext | tag`.
    pub fn seal(
        &self,
        rng: &mut dyn Random,
        row: &RowRef,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SecretsError> {
        let mut nonce = [0u8; AeadAlg::NONCE_LEN];
        rng.fill(&mut nonce);
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place(&nonce, row.aad(), &mut out[AeadAlg::NONCE_LEN..])
            .map_err(|e| SecretsError::Crypto(e.to_string()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value sealed for `row`.
    pub fn open(&self, row: &RowRef, sealed: &[u8]) -> Result<SecretBytes, SecretsError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(SecretsError::Truncated {
                what: row.describe(),
                len: sealed.len(),
            });
        }
        let (nonce, body) = sealed.split_at(AeadAlg::NONCE_LEN);
        let nonce: [u8; AeadAlg::NONCE_LEN] =
            nonce.try_into().map_err(|_| SecretsError::Truncated {
                what: row.describe(),
                len: sealed.len(),
            })?;
        let mut buf = SecretBytes::from_slice(body);
        let len = self
            .key
            .open_in_place(&nonce, row.aad(), buf.as_mut_bytes())
            .map_err(|_| SecretsError::Decrypt {
                what: row.describe(),
            })?
            .len();
        Ok(buf.copy_range(0, len).unwrap_or_default())
    }
}

/// Octets a sealed value adds to its plaintext (nonce and tag).
pub const SEAL_OVERHEAD: usize = AeadAlg::NONCE_LEN + AeadAlg::TAG_LEN;

/// The row and column a sealed value belongs to; its encoding is the AEAD associated data.
///
/// Encoding: `"gikev2-policy/1" 0x00 | len(column) | column | (len(part) | part)*`, with
/// 32-bit big-endian lengths, so distinct rows never share associated data.
#[derive(Clone, PartialEq, Eq)]
pub struct RowRef {
    aad: Vec<u8>,
    what: String,
}

impl RowRef {
    const DOMAIN: &'static [u8] = b"gikev2-policy/1\0";

    /// A row of `column` (as `table.column`) identified by `parts`.
    pub fn new(column: &str, parts: &[&[u8]]) -> Self {
        let mut aad = Self::DOMAIN.to_vec();
        push_part(&mut aad, column.as_bytes());
        for p in parts {
            push_part(&mut aad, p);
        }
        Self {
            aad,
            what: column.to_string(),
        }
    }

    pub fn aad(&self) -> &[u8] {
        &self.aad
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    // Parts are identities, SPIs, row ids and SPKIs: far below 4 GiB.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use gikev2_proto::crypto::SeededRandom;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gikev2-policy-secrets-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let mut rng = SeededRandom::from_u64(1);
        let k = MasterKey::generate(&mut rng).unwrap();
        let row_a = RowRef::new("members.psk_enc", &[b"\x02", b"a.example"]);
        let row_b = RowRef::new("members.psk_enc", &[b"\x02", b"b.example"]);
        let sealed = k.seal(&mut rng, &row_a, b"top secret psk").unwrap();
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 14);
        assert!(!sealed.windows(14).any(|w| w == b"top secret psk"));
        assert_eq!(
            k.open(&row_a, &sealed).unwrap().as_bytes(),
            b"top secret psk"
        );
        // Another row, another key, a flipped bit, a short value: all refused.
        assert!(matches!(
            k.open(&row_b, &sealed),
            Err(SecretsError::Decrypt { .. })
        ));
        let other = MasterKey::generate(&mut rng).unwrap();
        assert!(other.open(&row_a, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(k.open(&row_a, &bad).is_err());
        assert!(matches!(
            k.open(&row_a, &sealed[..27]),
            Err(SecretsError::Truncated { .. })
        ));
        // Fresh nonce per value.
        let again = k.seal(&mut rng, &row_a, b"top secret psk").unwrap();
        assert_ne!(again[..12], sealed[..12]);
        assert_eq!(format!("{k:?}"), "MasterKey(..)");
    }

    #[test]
    fn aad_parts_are_unambiguous() {
        let a = RowRef::new("t.c", &[b"ab", b"c"]);
        let b = RowRef::new("t.c", &[b"a", b"bc"]);
        assert_ne!(a.aad(), b.aad());
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tmp("create");
        let path = dir.join("master.key");
        let mut rng = SeededRandom::from_u64(2);
        let k1 = MasterKey::load_or_create(&path, &mut rng).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), MasterKey::LEN);
        let row = RowRef::new("x.y", &[]);
        let sealed = k1.seal(&mut rng, &row, b"v").unwrap();
        // Second start: the same key comes back (nothing is overwritten).
        let k2 = MasterKey::load_or_create(&path, &mut rng).unwrap();
        assert_eq!(k2.open(&row, &sealed).unwrap().as_bytes(), b"v");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_file_refused_when_group_or_world_accessible_or_wrong_length() {
        let dir = tmp("perm");
        let path = dir.join("master.key");
        std::fs::write(&path, [7u8; 32]).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = MasterKey::load(&path).unwrap_err();
            assert!(
                matches!(err, SecretsError::Permissions { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        MasterKey::load(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [7u8; 33]).unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(SecretsError::Length { len: 33, .. })
        ));
        std::fs::write(&path, [7u8; 31]).unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(SecretsError::Length { len: 31, .. })
        ));
        assert!(matches!(
            MasterKey::load(&dir.join("absent")),
            Err(SecretsError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
