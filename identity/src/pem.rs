//! PEM text and files to certificates, private keys and CRLs.
//!
//! Certificate blocks are kept as text (so a chain can be passed on byte for
//! byte) and decoded to DER (so they can be parsed). Other PEM labels (keys,
//! CSRs) are skipped where certificates are wanted. Errors about a file name
//! it ([`PemError::Read`], [`PemError::in_file`]).
//!
//! This does not parse the certificates themselves ([`crate::inspect`] and
//! [`crate::identity`] do), decrypt keys, or write files (certs-tool writes
//! its own, keys with mode 0600).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Why PEM text or a PEM file gave nothing usable.
///
/// Each variant's message says what to do; errors about a file name it
/// ([`PemError::Read`], or [`PemError::File`] around a content problem).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The file could not be read.
    ///
    /// Check that the path exists and that the process may read it; the
    /// source error says which.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
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
        source: Box<PemError>,
    },
    /// The PEM text holds no `CERTIFICATE` block.
    ///
    /// Pass a PEM file that holds a certificate (not a key or a CSR).
    #[error("no CERTIFICATE block found; pass a PEM certificate file")]
    NoCertificate,
    /// A certificate block is broken or does not parse.
    ///
    /// The file is corrupt or is not an X.509 certificate; re-export it in PEM.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// No private key could be read from the text.
    ///
    /// Pass the PEM key written together with the certificate (the `.key`
    /// file), PKCS#8, SEC1 or PKCS#1.
    #[error("no PEM private key: {0}")]
    MalformedKey(String),
    /// No CRL could be read from the text.
    ///
    /// Pass a PEM file of `X509 CRL` blocks or one DER CRL.
    #[error("{0}")]
    MalformedCrl(String),
}

impl PemError {
    /// Wraps this error in [`PemError::File`] with the path of the file
    /// whose content caused it.
    pub fn in_file(self, path: impl Into<PathBuf>) -> PemError {
        PemError::File {
            path: path.into(),
            source: Box::new(self),
        }
    }
}

/// One `CERTIFICATE` block: its PEM text (ending with a newline) and its DER.
#[derive(Debug, Clone)]
pub struct CertBlock {
    /// The block's PEM text, BEGIN to END line, ending with a newline.
    pub pem: String,
    /// The decoded certificate.
    pub der: CertificateDer<'static>,
}

/// Every `CERTIFICATE` block of `text`, in order.
///
/// # Errors
/// [`PemError::NoCertificate`] if there is none; [`PemError::MalformedCertificate`]
/// if a block is not valid base64 or has no END line.
pub fn certificate_blocks(text: &str) -> Result<Vec<CertBlock>, PemError> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after_begin = &rest[start..];
        let Some(end) = after_begin.find(END) else {
            return Err(PemError::MalformedCertificate(
                "a BEGIN CERTIFICATE line has no matching END line".into(),
            ));
        };
        let block = &after_begin[..end + END.len()];
        let der = CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| PemError::MalformedCertificate(format!("bad PEM block: {e}")))?;
        blocks.push(CertBlock {
            pem: format!("{block}\n"),
            der,
        });
        rest = &after_begin[end + END.len()..];
    }
    if blocks.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(blocks)
}

/// Every certificate of PEM `bytes`, in order, as DER: a chain gives leaf
/// then intermediates, a trust file its anchors.
///
/// # Errors
/// [`PemError::NoCertificate`] when there is none;
/// [`PemError::MalformedCertificate`] for a broken block.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::MalformedCertificate(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key of PEM `bytes` (PKCS#8, SEC1 or PKCS#1).
///
/// # Errors
/// [`PemError::MalformedKey`] when there is none.
pub fn parse_private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| PemError::MalformedKey(e.to_string()))
}

/// The CRLs of `bytes`: one or more PEM `X509 CRL` blocks, or one DER CRL.
/// They are parsed when a verifier is built from them
/// ([`crate::tls::client_verifier`]), so a broken CRL is refused there, not
/// at a handshake.
///
/// # Errors
/// [`PemError::MalformedCrl`] for broken PEM or a PEM text without a CRL.
pub fn parse_crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    let crls: Vec<_> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| PemError::MalformedCrl(format!("not a PEM CRL: {e}")))?
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    if crls.is_empty() {
        return Err(PemError::MalformedCrl("no CRL in the file".into()));
    }
    Ok(crls)
}

/// Reads a file's bytes.
///
/// # Errors
/// [`PemError::Read`] naming `path`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM file to a string.
///
/// # Errors
/// [`PemError::Read`] naming `path`.
pub fn read_pem(path: &Path) -> Result<String, PemError> {
    std::fs::read_to_string(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every `CERTIFICATE` block of a PEM file, in order, as DER: a
/// chain file gives leaf then intermediates, a trust file its anchors.
///
/// # Errors
/// [`PemError::Read`] when the file cannot be read;
/// [`PemError::NoCertificate`] when it holds no certificate;
/// [`PemError::MalformedCertificate`] for a broken block.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let text = read_pem(path)?;
    Ok(certificate_blocks(&text)?
        .into_iter()
        .map(|block| block.der)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_a_certificate_block_is_refused() {
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            certificate_blocks(key_only),
            Err(PemError::NoCertificate)
        ));
    }

    #[test]
    fn a_block_without_an_end_line_is_refused() {
        let cut = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(
            certificate_blocks(cut),
            Err(PemError::MalformedCertificate(_))
        ));
    }

    #[test]
    fn certificates_are_read_in_order_and_a_file_without_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        let first = params.self_signed(&key).unwrap();
        params = rcgen::CertificateParams::new(vec!["b.example".to_string()]).unwrap();
        let second = params.self_signed(&key).unwrap();
        let path = dir.path().join("chain.pem");
        std::fs::write(&path, format!("{}{}", first.pem(), second.pem())).unwrap();
        let certs = read_certificates(&path).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), first.der().as_ref());
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        assert!(matches!(
            read_certificates(&key_path),
            Err(PemError::NoCertificate)
        ));
        assert!(parse_private_key(&std::fs::read(&key_path).unwrap()).is_ok());
        let missing = read_certificates(&dir.path().join("missing.pem")).unwrap_err();
        assert!(matches!(missing, PemError::Read { .. }));
        assert!(missing.to_string().contains("missing.pem"), "{missing}");
    }

    #[test]
    fn a_pem_text_without_a_crl_is_refused() {
        let err = parse_crls(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(err.to_string().contains("no CRL"), "{err}");
    }
}
