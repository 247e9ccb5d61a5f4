//! The identity rules: which certificate names a worker, which serves the
//! orchestrator.
//!
//! Both sides of the stream use this: the orchestrator to learn which worker
//! connected (from the client certificate, never from anything the worker
//! says), the worker to learn its own identity for audit records and to check
//! its certificate before it dials, certs-tool to tell a worker certificate
//! from a server certificate when it renews one. It does not verify
//! signatures or chains: rustls does that during the handshake; this only
//! inspects a certificate that has already been verified (or that the caller
//! is about to present). It does not decide which identities are admitted
//! (the orchestrator's `[admission]` does).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate does not carry a usable worker identity.
///
/// Each variant means the certificate must be re-issued; nothing at runtime
/// can fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Malformed(String),
    /// The certificate has no URI subject alternative name.
    #[error(
        "certificate has no URI SAN; a worker identity is one URI SAN such as spiffe://example.org/worker/<id>"
    )]
    NoUriSan,
    /// The certificate has more than one URI SAN, so the identity is ambiguous.
    #[error("certificate has {0} URI SANs; exactly one is required")]
    SeveralUriSans(usize),
    /// The certificate is a CA certificate, which must never be used as a leaf.
    #[error(
        "certificate is a CA certificate (basicConstraints CA=true) and cannot identify a worker"
    )]
    IsCa,
    /// The certificate lacks the clientAuth extended key usage.
    #[error("certificate lacks the clientAuth extended key usage")]
    NoClientAuth,
    /// The certificate lacks the serverAuth extended key usage.
    #[error("certificate lacks the serverAuth extended key usage")]
    NoServerAuth,
    /// The certificate names no DNS name and no IP address.
    #[error("certificate has no DNS name or IP address SAN; a server certificate names its hosts")]
    NoServerName,
}

/// Returns the worker identity (its single URI SAN) of a client certificate.
///
/// The certificate must carry exactly one URI SAN, must not be a CA, and must
/// list `clientAuth` in its extended key usages (an absent EKU extension is
/// refused too: a worker certificate states its purpose).
///
/// # Errors
/// [`IdentityError`] names the first rule the certificate breaks.
pub fn worker_identity_from_der(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    if cert.is_ca() {
        return Err(IdentityError::IsCa);
    }
    let client_auth = cert
        .extended_key_usage()
        .map_err(|e| IdentityError::Malformed(e.to_string()))?
        .is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        return Err(IdentityError::NoClientAuth);
    }
    let uris = uri_sans(&cert)?;
    match uris.len() {
        0 => Err(IdentityError::NoUriSan),
        1 => Ok(uris.into_iter().next().unwrap_or_default()),
        n => Err(IdentityError::SeveralUriSans(n)),
    }
}

/// Returns the host names (DNS SANs, then IP address SANs as text) of an
/// orchestrator server certificate.
///
/// The certificate must not be a CA, must list `serverAuth` in its extended
/// key usages and must name at least one DNS name or IP address.
///
/// # Errors
/// [`IdentityError`] names the first rule the certificate breaks.
pub fn server_names_from_der(der: &[u8]) -> Result<Vec<String>, IdentityError> {
    let info =
        crate::inspect::inspect_der(der).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    if info.is_ca {
        return Err(IdentityError::IsCa);
    }
    if !info.extended_key_usages.iter().any(|u| u == "serverAuth") {
        return Err(IdentityError::NoServerAuth);
    }
    let mut names = info.dns_names;
    names.extend(info.ip_addresses);
    if names.is_empty() {
        return Err(IdentityError::NoServerName);
    }
    Ok(names)
}

fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, IdentityError> {
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Malformed(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_string()),
            _ => None,
        })
        .collect())
}
