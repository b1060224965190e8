//! Where the root key comes from: a key file (what `cofferd dev` uses, 0600 in its data dir),
//! read here; Shamir shares given to a sealed vault (`crate::seal`); an OpenBao / Vault
//! transit key (`crate::transit`); or an HSM's key over PKCS#11 (`crate::pkcs11`).

use coffer_core::SecretBytes;
use coffer_crypto::RootKey;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    // The I/O error is part of the message and deliberately not a `source`, so that error
    // chains do not print it twice.
    #[error("cannot read the key file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("cannot create the key file {path}: {err}")]
    Create { path: String, err: std::io::Error },
    #[error("the key file {0} does not hold a 64-character hex key")]
    Malformed(String),
    #[error("the key file {path} is readable by others (mode {mode:o})")]
    TooOpen { path: String, mode: u32 },
}

/// Reads a key file: 64 hex characters, optionally followed by a newline. Refuses a file that
/// group or others can read.
pub fn read_key_bytes(path: &Path) -> Result<SecretBytes<32>, UnsealError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|err| UnsealError::Read {
        path: shown.clone(),
        err,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(UnsealError::TooOpen { path: shown, mode });
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|err| {
        UnsealError::Read {
            path: shown.clone(),
            err,
        }
    })?);
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| UnsealError::Malformed(shown))?;
    Ok(SecretBytes::new(*bytes))
}

/// Reads the key file, or creates it (mode 0600) with the key `fresh` makes. Returns the key
/// and whether it was created.
pub fn read_or_create_key_bytes(
    path: &Path,
    fresh: impl FnOnce() -> SecretBytes<32>,
) -> Result<(SecretBytes<32>, bool), UnsealError> {
    if path.exists() {
        return read_key_bytes(path).map(|k| (k, false));
    }
    let shown = path.display().to_string();
    let key = fresh();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| UnsealError::Create {
            path: shown.clone(),
            err,
        })?;
    let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(key.expose())));
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|err| UnsealError::Create { path: shown, err })?;
    Ok((key, true))
}

/// Reads a root key file (see [`read_key_bytes`]).
pub fn read_key_file(path: &Path) -> Result<RootKey, UnsealError> {
    read_key_bytes(path).map(RootKey::from_secret_bytes)
}

/// Reads the root key file, or creates it with a fresh root key.
pub fn read_or_create_key_file(path: &Path) -> Result<(RootKey, bool), UnsealError> {
    let (bytes, created) =
        read_or_create_key_bytes(path, || SecretBytes::new(*RootKey::generate().expose()))?;
    Ok((RootKey::from_secret_bytes(bytes), created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0600_and_reads_back() {
        let dir = std::env::temp_dir().join(format!(
            "coffer-unseal-{}",
            hex::encode(coffer_crypto::random_array::<6>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("unseal.key");
        let (k1, created) = read_or_create_key_file(&p).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = read_or_create_key_file(&p).unwrap();
        assert!(!created);
        assert_eq!(k1.fingerprint(), k2.fingerprint());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_key_file(&p),
            Err(UnsealError::TooOpen { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
