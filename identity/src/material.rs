//! One end's TLS material: CA bundle, certificate chain and private key,
//! read together, checked, and compared by content to notice rotations.
//!
//! Both ends rotate the same way ("keep the last good, warn once per
//! change"): [`FileWatch::poll`] reads the three files and compares their
//! SHA-256 (content, not modification time) with the last read, good or
//! not; only a change is handed on, and an unreadable file is reported as
//! new only once per distinct problem. [`Material::from_bytes`] then parses
//! a changed read: trust anchors, chain, key, and whether the key is the
//! certificate's. A caller that gets an error keeps the material it had.
//! [`ExpiryReminder`] decides when an expiring certificate is worth a
//! warning (at start, after a rotation, then daily).
//!
//! What it does not do: poll on a timer, log, or swap anything into a live
//! TLS config (the worker's `ClientTls` and the orchestrator's `ServerTls`
//! do, each with its own words), and it does not check identities (the
//! caller applies [`crate::identity`] to [`Material::leaf`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::inspect::CertificateSummary;
use crate::pem;

/// How often the TLS files are read again by default (`[tls]
/// reload_interval` on both ends).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// How long before its expiry a certificate is warned about by default
/// (`[tls] expiry_warning` on both ends).
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often an expiring certificate is warned about again.
pub const EXPIRY_REMINDER: Duration = Duration::from_secs(24 * 3600);
/// The shortest `[tls] reload_interval` either end accepts (the files are
/// read at every poll).
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// How far ahead of this host's clock a new certificate's `notBefore` may
/// lie and the certificate still be taken by a reload (a CA's clock may
/// run a little ahead).
pub const NOT_BEFORE_SKEW: Duration = Duration::from_secs(300);

/// How one end follows its TLS files while it runs (`[tls]
/// reload_interval`, `[tls] expiry_warning`): the same settings on both
/// ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSettings {
    /// How often the certificate, key and CA files are read again.
    pub reload_interval: Duration,
    /// Warn (at start, after each rotation, then daily) once the
    /// certificate expires within this.
    pub expiry_warning: Duration,
}

impl Default for RotationSettings {
    fn default() -> Self {
        RotationSettings {
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            expiry_warning: DEFAULT_EXPIRY_WARNING,
        }
    }
}

/// Where one end's TLS files are (`[tls] ca_cert`, `cert`, `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA bundle: trust anchors for the peer's certificate.
    pub ca_cert: PathBuf,
    /// This end's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This end's private key.
    pub key: PathBuf,
}

/// Which of the three files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The CA bundle.
    CaCert,
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
}

impl TlsFile {
    /// The config key that names this file (`tls.ca_cert`, `tls.cert`,
    /// `tls.key`): the same on both ends.
    pub fn config_key(self) -> &'static str {
        match self {
            TlsFile::CaCert => "tls.ca_cert",
            TlsFile::Cert => "tls.cert",
            TlsFile::Key => "tls.key",
        }
    }
}

/// Why one read of the TLS files is unusable. The caller keeps the
/// material it had; the operator fixes the file named.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MaterialError {
    /// A file could not be read or holds nothing usable: fix or replace the
    /// file named.
    #[error("{}: {message}", path.display())]
    File {
        /// Which file.
        file: TlsFile,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The private key is not the certificate's (for example, one of the
    /// two was replaced and the other not yet): put the matching pair in
    /// place.
    #[error(
        "{} does not match the certificate in {}; put the key and certificate of one pair in place",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The certificate is outside its validity (expired, or not valid
    /// yet): put a current certificate in place. Only a reload checks
    /// this; at start the peer's refusal says it.
    #[error("{}: {message}", path.display())]
    NotValidNow {
        /// The certificate file.
        path: PathBuf,
        /// Expired or not yet valid, with the dates.
        message: String,
        /// It becomes valid later: poll it again ([`FileWatch::retry_later`]).
        later: bool,
    },
    /// rustls refused the certificate and key for another reason (an
    /// unsupported key type): use an ECDSA, Ed25519 or RSA key.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// SHA-256 over `parts`, each preceded by its length (so moving bytes
/// from one file to the next changes the hash): how every file here is
/// compared (content, not modification time: a file replaced within the
/// same second with the same size still counts as changed).
pub fn content_digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// The three files' bytes as read at one poll.
#[derive(Clone)]
pub struct FileBytes {
    ca_cert: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for FileBytes {
    /// Lengths only: the key bytes are secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBytes")
            .field("ca_cert_len", &self.ca_cert.len())
            .field("cert_len", &self.cert.len())
            .field("key_len", &self.key.len())
            .finish()
    }
}

impl FileBytes {
    /// Reads the CA bundle, the certificate and the key, in that order.
    ///
    /// # Errors
    /// [`MaterialError::File`] naming the first file that cannot be read.
    pub fn read(paths: &TlsPaths) -> Result<FileBytes, MaterialError> {
        let read = |file: TlsFile, path: &Path| {
            std::fs::read(path).map_err(|e| MaterialError::File {
                file,
                path: path.to_path_buf(),
                message: format!("cannot read: {e}"),
            })
        };
        Ok(FileBytes {
            ca_cert: read(TlsFile::CaCert, &paths.ca_cert)?,
            cert: read(TlsFile::Cert, &paths.cert)?,
            key: read(TlsFile::Key, &paths.key)?,
        })
    }

    /// SHA-256 of all three files.
    pub fn digest(&self) -> [u8; 32] {
        content_digest(&[&self.ca_cert, &self.cert, &self.key])
    }

    /// SHA-256 of the CA bundle alone.
    pub fn ca_digest(&self) -> [u8; 32] {
        content_digest(&[&self.ca_cert])
    }

    /// SHA-256 of the certificate and key.
    pub fn pair_digest(&self) -> [u8; 32] {
        content_digest(&[&self.cert, &self.key])
    }
}

/// One consistent read of the TLS files, parsed and checked.
pub struct Material {
    /// The trust anchors of the CA bundle.
    pub roots: RootCertStore,
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (matches the leaf).
    pub key: PrivateKeyDer<'static>,
    /// Chain and key together, for a server certificate resolver.
    pub certified: Arc<CertifiedKey>,
    /// The leaf in brief.
    pub summary: CertificateSummary,
    /// SHA-256 of the three files ([`FileBytes::digest`]).
    pub digest: [u8; 32],
    /// SHA-256 of the CA bundle ([`FileBytes::ca_digest`]).
    pub ca_digest: [u8; 32],
    /// SHA-256 of certificate and key ([`FileBytes::pair_digest`]).
    pub pair_digest: [u8; 32],
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Reads and checks the files ([`FileBytes::read`], then
    /// [`Material::from_bytes`]).
    ///
    /// # Errors
    /// [`MaterialError`] naming the file and the problem.
    pub fn load(paths: &TlsPaths) -> Result<Material, MaterialError> {
        Material::from_bytes(paths, &FileBytes::read(paths)?)
    }

    /// Parses one read of the files: the CA bundle must hold usable trust
    /// anchors, the certificate file a chain whose leaf parses, the key
    /// file a private key that is the leaf's.
    ///
    /// # Errors
    /// [`MaterialError`] naming the file and the problem.
    pub fn from_bytes(paths: &TlsPaths, bytes: &FileBytes) -> Result<Material, MaterialError> {
        let file_error = |file: TlsFile, path: &Path, message: String| MaterialError::File {
            file,
            path: path.to_path_buf(),
            message,
        };
        let mut roots = RootCertStore::empty();
        let anchors = pem::parse_certificates(&bytes.ca_cert)
            .map_err(|e| file_error(TlsFile::CaCert, &paths.ca_cert, e.to_string()))?;
        for anchor in anchors {
            roots.add(anchor).map_err(|e| {
                file_error(
                    TlsFile::CaCert,
                    &paths.ca_cert,
                    format!("not a usable trust anchor: {e}"),
                )
            })?;
        }
        let chain = pem::parse_certificates(&bytes.cert)
            .map_err(|e| file_error(TlsFile::Cert, &paths.cert, e.to_string()))?;
        let summary = CertificateSummary::of_der(&chain[0])
            .map_err(|message| file_error(TlsFile::Cert, &paths.cert, message))?;
        let key = pem::parse_private_key(&bytes.key)
            .map_err(|e| file_error(TlsFile::Key, &paths.key, e.to_string()))?;
        let certified =
            CertifiedKey::from_der(chain.clone(), key.clone_key(), &crate::tls::provider())
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => MaterialError::KeyMismatch {
                        key: paths.key.clone(),
                        cert: paths.cert.clone(),
                    },
                    other => MaterialError::Rustls(other),
                })?;
        Ok(Material {
            roots,
            chain,
            key,
            certified: Arc::new(certified),
            summary,
            digest: bytes.digest(),
            ca_digest: bytes.ca_digest(),
            pair_digest: bytes.pair_digest(),
        })
    }

    /// Refuses material whose certificate a peer would refuse at `now`:
    /// expired, or valid only more than [`NOT_BEFORE_SKEW`] from now. A
    /// rotation checks this before it swaps a working certificate for
    /// another.
    ///
    /// # Errors
    /// [`MaterialError::NotValidNow`] naming the file and the dates.
    pub fn check_valid_at(&self, paths: &TlsPaths, now: SystemTime) -> Result<(), MaterialError> {
        match self.summary.unusable_at(now, NOT_BEFORE_SKEW) {
            None => Ok(()),
            Some(message) => Err(MaterialError::NotValidNow {
                path: paths.cert.clone(),
                message,
                later: self.summary.usable_later(now, NOT_BEFORE_SKEW),
            }),
        }
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// What [`FileWatch::poll`] found.
#[derive(Debug)]
pub enum FileChange {
    /// The files are as last read.
    Unchanged,
    /// A file cannot be read; `first` is true the first time this problem
    /// is seen (warn then, not at every poll).
    Unreadable {
        /// What cannot be read ([`MaterialError::File`], naming the file).
        error: MaterialError,
        /// Whether this is the first poll that saw this problem.
        first: bool,
    },
    /// The content changed since the last read: parse it
    /// ([`Material::from_bytes`]). It counts as seen, so a broken change
    /// is reported once.
    Changed(FileBytes),
}

/// Notices changes of one end's TLS files by content hash.
#[derive(Debug)]
pub struct FileWatch {
    paths: TlsPaths,
    /// SHA-256 of the files as last read (good or not), or why they could
    /// not be read.
    seen: Mutex<Result<[u8; 32], String>>,
}

impl FileWatch {
    /// Watches `paths`, whose content as last read hashed to `digest`
    /// ([`Material::digest`] of the material in use).
    pub fn new(paths: TlsPaths, digest: [u8; 32]) -> FileWatch {
        FileWatch {
            paths,
            seen: Mutex::new(Ok(digest)),
        }
    }

    /// The files watched.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Forgets that the content hashing to `digest` was seen, so the next
    /// poll hands it on again: a certificate not valid yet is taken once
    /// it is. Returns whether this content was put off already (warn only
    /// the first time).
    pub fn retry_later(&self, digest: [u8; 32]) -> bool {
        let marker = format!("put off until valid: {}", hex::encode(digest));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let again = seen.as_ref().err() == Some(&marker);
        *seen = Err(marker);
        again
    }

    /// Reads the files and compares them with the last read.
    pub fn poll(&self) -> FileChange {
        let read = FileBytes::read(&self.paths);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Err(error) => {
                let problem = error.to_string();
                let first = seen.as_ref().err() != Some(&problem);
                *seen = Err(problem);
                FileChange::Unreadable { error, first }
            }
            Ok(bytes) => {
                let digest = bytes.digest();
                if seen.as_ref().ok() == Some(&digest) {
                    return FileChange::Unchanged;
                }
                *seen = Ok(digest);
                FileChange::Changed(bytes)
            }
        }
    }
}

/// Decides when an expiring certificate is worth a warning: when it
/// expires within the window, at the first check, after each change of
/// certificate, then once every [`EXPIRY_REMINDER`].
#[derive(Debug)]
pub struct ExpiryReminder {
    window: Duration,
    warned: Option<(String, tokio::time::Instant)>,
}

impl ExpiryReminder {
    /// Warns about certificates that expire within `window`.
    pub fn new(window: Duration) -> ExpiryReminder {
        ExpiryReminder {
            window,
            warned: None,
        }
    }

    /// When a warning about `certificate` is due at `now`: the time left
    /// (zero once it has expired), and the warning counts as given.
    pub fn due(&mut self, certificate: &CertificateSummary, now: SystemTime) -> Option<Duration> {
        let left = certificate.expires_in(now);
        if left >= self.window {
            return None;
        }
        let due = self.warned.as_ref().is_none_or(|(serial, at)| {
            *serial != certificate.serial || at.elapsed() >= EXPIRY_REMINDER
        });
        if !due {
            return None;
        }
        self.warned = Some((certificate.serial.clone(), tokio::time::Instant::now()));
        Some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    fn write(dir: &Path) -> TlsPaths {
        let (cert, key) = pair(&["a.example"]);
        let paths = TlsPaths {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("c.pem"),
            key: dir.join("c.key"),
        };
        std::fs::write(&paths.ca_cert, cert.pem()).unwrap();
        std::fs::write(&paths.cert, cert.pem()).unwrap();
        std::fs::write(&paths.key, key.serialize_pem()).unwrap();
        paths
    }

    #[test]
    fn material_outside_its_validity_is_refused_with_a_little_skew_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write(dir.path());
        let material = Material::load(&paths).unwrap();
        let summary = &material.summary;
        assert!(material.check_valid_at(&paths, SystemTime::now()).is_ok());
        let after_end = summary.not_after + Duration::from_secs(1);
        let error = material.check_valid_at(&paths, after_end).unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");
        assert!(error.to_string().contains("c.pem"), "{error}");
        let just_before = summary.not_before - NOT_BEFORE_SKEW + Duration::from_secs(1);
        assert!(material.check_valid_at(&paths, just_before).is_ok());
        let too_early = summary.not_before - NOT_BEFORE_SKEW - Duration::from_secs(60);
        let error = material.check_valid_at(&paths, too_early).unwrap_err();
        assert!(
            error.to_string().contains("not valid for another"),
            "{error}"
        );
    }

    #[test]
    fn a_change_is_handed_on_once_and_an_unreadable_file_is_new_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write(dir.path());
        let material = Material::load(&paths).unwrap();
        let watch = FileWatch::new(paths.clone(), material.digest);
        assert!(matches!(watch.poll(), FileChange::Unchanged));
        std::fs::write(&paths.cert, "broken").unwrap();
        assert!(matches!(watch.poll(), FileChange::Changed(_)));
        assert!(matches!(watch.poll(), FileChange::Unchanged));
        std::fs::remove_file(&paths.key).unwrap();
        let FileChange::Unreadable { error, first } = watch.poll() else {
            panic!("a missing key was not reported");
        };
        assert!(first);
        let problem = error.to_string();
        assert!(problem.contains("c.key"), "{problem}");
        assert!(matches!(
            watch.poll(),
            FileChange::Unreadable { first: false, .. }
        ));
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write(dir.path());
        let (_, other_key) = pair(&["b.example"]);
        std::fs::write(&paths.key, other_key.serialize_pem()).unwrap();
        let err = Material::load(&paths).unwrap_err();
        assert!(matches!(err, MaterialError::KeyMismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("c.key") && text.contains("c.pem"), "{text}");
    }

    #[test]
    fn a_broken_file_is_named_with_its_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write(dir.path());
        std::fs::write(&paths.ca_cert, "garbage").unwrap();
        let err = Material::load(&paths).unwrap_err();
        let MaterialError::File { file, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(file.config_key(), "tls.ca_cert");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_warned_about_only_within_the_window_then_daily() {
        let dir = tempfile::tempdir().unwrap();
        let cert = Material::load(&write(dir.path())).unwrap().summary;
        let now = cert.not_after - Duration::from_secs(5 * 86_400);
        assert_eq!(
            ExpiryReminder::new(Duration::from_secs(86_400)).due(&cert, now),
            None
        );
        let mut reminder = ExpiryReminder::new(Duration::from_secs(60 * 86_400));
        assert_eq!(
            reminder.due(&cert, now),
            Some(Duration::from_secs(5 * 86_400))
        );
        assert_eq!(reminder.due(&cert, now), None, "said once");
        tokio::time::advance(EXPIRY_REMINDER).await;
        assert!(reminder.due(&cert, now).is_some(), "said again a day later");
        assert!(
            cert.expires_in(cert.not_after + Duration::from_secs(1))
                .is_zero()
        );
    }
}
