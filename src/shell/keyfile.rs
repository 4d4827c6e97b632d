//! The key ring file on disk: read only when no one else may read it, written atomically
//! with mode 0600 (a temporary file in the same directory, synced, then renamed), and
//! randomness for new keys. The ring's logic is `core::keyring`.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::core::keyring::{Ring, RingError};

/// Why a ring file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: readable or writable by others (mode {mode:04o}); run: chmod 600 {}", .path.display(), .path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: {source}", .path.display())]
    Ring { path: PathBuf, source: RingError },
    #[error("{}: already exists (use `sipedge keys rotate` to add a key)", .path.display())]
    Exists { path: PathBuf },
    #[error("no secure randomness: {0}")]
    Random(String),
}

/// Reads a ring, refusing a file that group or others can read or write.
pub fn load(path: &Path) -> Result<Ring, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    Ring::parse(&text).map_err(|source| KeyFileError::Ring {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a ring atomically with mode 0600. `create_new` refuses to replace a file.
pub fn store(path: &Path, ring: &Ring, create_new: bool) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    if create_new && path.exists() {
        return Err(KeyFileError::Exists {
            path: path.to_path_buf(),
        });
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(ring.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// 32 bytes from the operating system's CSPRNG (through the edge's rustls provider).
pub fn random_secret() -> Result<[u8; 32], KeyFileError> {
    let mut secret = [0u8; 32];
    crate::tls::config::provider()
        .secure_random
        .fill(&mut secret)
        .map_err(|e| KeyFileError::Random(format!("{e:?}")))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_0600_and_load_refuses_open_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.toml");
        let ring = Ring::init(random_secret().unwrap(), 1_800_000_000);
        store(&path, &ring, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(load(&path).unwrap(), ring);
        assert!(matches!(
            store(&path, &ring, true),
            Err(KeyFileError::Exists { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("mode 0644"), "{err}");
        // Replacing keeps 0600 whatever the old file had.
        store(&path, &ring, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 1,
            "no temporary file left"
        );
    }
}
