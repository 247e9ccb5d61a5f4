//! Writing PEM files: private keys readable by their owner only.
//!
//! A private key file is created with mode 0600 from the start (never a
//! moment of 0644 between create and chmod), and if it already existed its
//! mode is set to 0600 before anything is written into it. Certificates and
//! CSRs are public and get 0644.
//!
//! Reading PEM files is [`private_worker_identity::pem`]'s.
//!
//! This does not choose file names, create directories (see
//! [`crate::dev`]) or protect against another process replacing the file
//! between runs; it does not encrypt keys (protect them with file
//! permissions and the host's disk encryption). On non-Unix platforms the
//! modes are not applied.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::CertError;

/// Mode of private key files: read and write for the owner only.
pub const PRIVATE_KEY_MODE: u32 = 0o600;
/// Mode of certificate and CSR files.
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes a private key, replacing any previous content, with mode 0600.
///
/// # Errors
/// [`CertError::Io`] naming `path` if it cannot be opened, its mode cannot be
/// set, or the write fails.
pub fn write_private_key(path: &Path, pem: &str) -> Result<(), CertError> {
    write_with_mode(path, pem, PRIVATE_KEY_MODE)
}

/// Writes a certificate, chain or CSR, replacing any previous content, with
/// mode 0644.
///
/// # Errors
/// [`CertError::Io`] naming `path` if it cannot be opened, its mode cannot be
/// set, or the write fails.
pub fn write_public(path: &Path, pem: &str) -> Result<(), CertError> {
    write_with_mode(path, pem, PUBLIC_MODE)
}

fn write_with_mode(path: &Path, pem: &str, mode: u32) -> Result<(), CertError> {
    // Open without truncating: the mode of an existing file is fixed first,
    // then the old content is replaced.
    let mut file = open_with_mode(path, mode).map_err(CertError::io(path, "open"))?;
    set_mode(&file, mode).map_err(CertError::io(path, "set the permissions of"))?;
    file.set_len(0)
        .and_then(|()| file.write_all(pem.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(CertError::io(path, "write"))
}

#[cfg(unix)]
fn open_with_mode(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn open_with_mode(path: &Path, _mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_private_key_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.key");
        write_private_key(&path, "KEY").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "KEY");
    }

    #[test]
    fn an_existing_world_readable_key_file_becomes_owner_only_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.key");
        std::fs::write(&path, "a much longer previous content").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(mode(&path), 0o644);
        write_private_key(&path, "KEY").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "KEY");
    }

    #[test]
    fn public_files_are_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_public(&path, "CERT").unwrap();
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn a_write_into_a_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("x.key");
        let err = write_private_key(&path, "KEY").unwrap_err();
        assert!(err.to_string().contains("missing/x.key"), "{err}");
    }
}
