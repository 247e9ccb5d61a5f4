//! The one error type of the certs-tool library.
//!
//! Every fallible function of the library returns [`CertError`]. Problems
//! met while reading PEM ([`private_worker_identity::PemError`]) become the
//! variants of the same meaning, so the messages are the same wherever the
//! text was read.

use std::path::PathBuf;

/// Why a PKI operation failed.
///
/// Each variant's message says what to do about it, in one line; when a file
/// is involved the error is wrapped in [`CertError::File`] or is
/// [`CertError::Io`], both of which name the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read, written or created.
    ///
    /// Check that the path exists, that its directory is writable and that
    /// the process may read it; the source error says which.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was attempted: "read", "write", "create directory", ...
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The content of a file was rejected; `source` says why.
    ///
    /// Fix or replace the file named by `path`.
    #[error("{}", path.display())]
    File {
        /// The file whose content was rejected.
        path: PathBuf,
        /// Why it was rejected.
        #[source]
        source: Box<CertError>,
    },
    /// The PEM text holds no `CERTIFICATE` block.
    ///
    /// Pass a PEM file that holds a certificate (not a key or a CSR).
    #[error("no CERTIFICATE block found; pass a PEM certificate file")]
    NoCertificate,
    /// A certificate could not be parsed.
    ///
    /// The file is corrupt or is not an X.509 certificate; re-export it in PEM.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// A private key could not be parsed.
    ///
    /// Pass the PKCS#8 PEM key written together with the certificate (the
    /// `.key` file), ECDSA P-256/P-384, Ed25519 or RSA.
    #[error("malformed private key: {0}; pass the PKCS#8 PEM key written with the certificate")]
    MalformedKey(String),
    /// The private key does not belong to the CA certificate.
    ///
    /// Pass the key file that was written together with this certificate.
    #[error("the private key does not match the CA certificate; pass the key written with it")]
    KeyMismatch,
    /// The private key given for renewal is not the key of the certificate
    /// being renewed.
    ///
    /// Pass the key file the certificate was issued for (renewal keeps it).
    #[error(
        "the private key does not match the certificate to renew; pass the key it was issued for"
    )]
    RenewKeyMismatch,
    /// The certificate to renew is neither a worker certificate (one URI
    /// SAN, clientAuth) nor a server certificate (serverAuth, DNS or IP
    /// names).
    ///
    /// Issue a new one with `certs-tool worker` or `certs-tool server`.
    #[error("cannot renew this certificate: {0}")]
    NotRenewable(String),
    /// The certificate given as a CA may not sign certificates (no
    /// basicConstraints CA=true, or a key usage without keyCertSign).
    ///
    /// Pass the CA certificate, not a leaf certificate.
    #[error("the certificate is not a CA: {0}; pass a CA certificate")]
    NotCa(String),
    /// The CA certificate has expired (at the RFC 3339 time given).
    ///
    /// Create or load a CA that is still valid.
    #[error("the CA certificate expired at {0}; create a new CA")]
    CaExpired(String),
    /// This CA's path length constraint forbids it to sign another CA.
    ///
    /// Create intermediates from the root CA instead.
    #[error(
        "this CA has path length 0 and cannot sign another CA; create the intermediate from the root"
    )]
    PathLenExceeded,
    /// A worker identity is not an acceptable URI.
    ///
    /// Use a URI such as `spiffe://example.org/worker/<id>`.
    #[error("invalid worker identity {identity:?}: {reason}")]
    InvalidIdentity {
        /// The identity as given.
        identity: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A name for a server certificate or a dev bundle is not acceptable.
    ///
    /// Fix the name; the reason says what is allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The validity period is zero days or longer than the maximum.
    ///
    /// Pass a number of days between 1 and [`crate::ca::MAX_VALIDITY_DAYS`].
    #[error("invalid validity of {0} days; pass between 1 and {max} days", max = crate::ca::MAX_VALIDITY_DAYS)]
    InvalidValidity(u32),
    /// A certificate signing request could not be parsed, uses an unsupported
    /// extension, or its self-signature does not verify.
    ///
    /// Regenerate the CSR with `certs-tool csr` (or an equivalent tool).
    #[error("malformed or unverifiable CSR: {0}")]
    MalformedCsr(String),
    /// A CSR does not carry exactly one URI SAN and nothing else.
    ///
    /// Regenerate it with the worker identity as its only subject alternative name.
    #[error("CSR refused: {0}; a worker CSR carries exactly one URI SAN and no other name")]
    CsrSans(String),
    /// rcgen failed to generate a key or to sign a certificate.
    ///
    /// This is not caused by input this library accepts; report it as a bug.
    #[error("certificate generation failed")]
    Generation(#[source] rcgen::Error),
}

impl CertError {
    /// Wraps this error in [`CertError::File`] with the path of the file
    /// whose content caused it.
    pub fn in_file(self, path: impl Into<PathBuf>) -> CertError {
        CertError::File {
            path: path.into(),
            source: Box::new(self),
        }
    }

    /// An [`CertError::Io`] error for `path`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> CertError {
        let path = path.into();
        move |source| CertError::Io {
            path,
            action,
            source,
        }
    }
}

impl From<private_worker_identity::PemError> for CertError {
    fn from(e: private_worker_identity::PemError) -> CertError {
        use private_worker_identity::PemError;
        match e {
            PemError::Read { path, source } => CertError::Io {
                path,
                action: "read",
                source,
            },
            PemError::File { path, source } => CertError::from(*source).in_file(path),
            PemError::NoCertificate => CertError::NoCertificate,
            PemError::MalformedCertificate(m) => CertError::MalformedCertificate(m),
            PemError::MalformedKey(m) => CertError::MalformedKey(m),
            other => CertError::MalformedCertificate(other.to_string()),
        }
    }
}

impl CertError {
    /// This error followed by its causes, `: `-separated, for callers that
    /// report it as one line (the OS error behind [`CertError::Io`], the
    /// content problem behind [`CertError::File`]).
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}
