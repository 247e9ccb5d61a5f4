//! Splitting PEM text into its `CERTIFICATE` blocks.
//!
//! The blocks are kept as text (so a chain can be passed on byte for byte)
//! and decoded to DER (so they can be parsed). Other PEM labels (keys, CSRs)
//! are skipped. This does not parse the certificates themselves.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::CertError;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// One `CERTIFICATE` block: its PEM text (ending with a newline) and its DER.
pub(crate) struct CertBlock {
    pub(crate) pem: String,
    pub(crate) der: CertificateDer<'static>,
}

/// Every `CERTIFICATE` block of `text`, in order.
///
/// # Errors
/// [`CertError::NoCertificate`] if there is none; [`CertError::MalformedCertificate`]
/// if a block is not valid base64 or has no END line.
pub(crate) fn certificate_blocks(text: &str) -> Result<Vec<CertBlock>, CertError> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after_begin = &rest[start..];
        let Some(end) = after_begin.find(END) else {
            return Err(CertError::MalformedCertificate(
                "a BEGIN CERTIFICATE line has no matching END line".into(),
            ));
        };
        let block = &after_begin[..end + END.len()];
        let der = CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| CertError::MalformedCertificate(format!("bad PEM block: {e}")))?;
        blocks.push(CertBlock {
            pem: format!("{block}\n"),
            der,
        });
        rest = &after_begin[end + END.len()..];
    }
    if blocks.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_a_certificate_block_is_refused() {
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            certificate_blocks(key_only),
            Err(CertError::NoCertificate)
        ));
    }

    #[test]
    fn a_block_without_an_end_line_is_refused() {
        let cut = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(
            certificate_blocks(cut),
            Err(CertError::MalformedCertificate(_))
        ));
    }
}
