//! Leaf certificates and the worker side of the CSR flow.
//!
//! This module decides what a leaf certificate contains:
//! - an orchestrator (server) certificate: its DNS names and IP addresses as
//!   SANs, EKU serverAuth, key usage digitalSignature, CA=false;
//! - a worker (client) certificate: exactly one URI SAN (the identity), EKU
//!   clientAuth, key usage digitalSignature, CA=false.
//!
//! It also builds the CSR a worker host sends to an enterprise CA
//! ([`create_worker_csr`]): the key pair is made here, on the worker host,
//! and only the CSR (public key + identity) leaves it.
//!
//! It does not sign anything: [`crate::CertificateAuthority`] does, and it
//! takes only the public key and the identity from a CSR; every other field
//! comes from this module, whatever the requester asked for.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::CertError;

/// Longest common name X.509 allows (RFC 5280, ub-common-name).
const MAX_COMMON_NAME_LEN: usize = 64;
/// Longest identity accepted (the SPIFFE limit for a SPIFFE ID).
const MAX_IDENTITY_LEN: usize = 2048;
/// Longest DNS name.
const MAX_DNS_NAME_LEN: usize = 253;

/// What to put in an orchestrator (TLS server) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertRequest {
    /// Subject common name (informational; clients check the SANs).
    pub common_name: String,
    /// DNS names the server answers to, e.g. `orchestrator.local`.
    pub dns_names: Vec<String>,
    /// IP addresses the server answers to.
    pub ip_addresses: Vec<IpAddr>,
    /// Days from now until the certificate expires (capped at the CA's expiry).
    pub validity_days: u32,
}

/// What to put in a worker (TLS client) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCertRequest {
    /// The worker identity, a URI such as `spiffe://example.org/worker/crm-1`;
    /// checked by [`validate_identity`].
    pub identity: String,
    /// Days from now until the certificate expires (capped at the CA's expiry).
    pub validity_days: u32,
}

/// A certificate with the private key that was generated for it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The leaf certificate alone, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM. Write it with
    /// [`crate::files::write_private_key`].
    pub key_pem: String,
    /// The leaf followed by the issuing CA chain (intermediates, never the
    /// root): what a TLS peer presents.
    pub chain_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    /// Shows the certificates but never the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .field("chain_pem", &self.chain_pem)
            .finish()
    }
}

/// A worker's certificate signing request and the private key behind it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerCsr {
    /// The CSR, PEM: send this to the CA.
    pub csr_pem: String,
    /// The private key, PKCS#8 PEM: keep this on the worker host.
    pub key_pem: String,
}

impl std::fmt::Debug for WorkerCsr {
    /// Shows the CSR but never the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// Creates a new key pair and a CSR that carries `identity` as its only SAN.
///
/// Runs on the worker host. The CA sees only the CSR; the returned
/// `key_pem` must stay on this host (write it with
/// [`crate::files::write_private_key`]).
///
/// # Errors
/// [`CertError::InvalidIdentity`] if `identity` fails [`validate_identity`];
/// [`CertError::Generation`] if key generation fails.
pub fn create_worker_csr(identity: &str) -> Result<WorkerCsr, CertError> {
    let params = worker_params(identity)?;
    let key = KeyPair::generate().map_err(CertError::Generation)?;
    let csr = params
        .serialize_request(&key)
        .map_err(CertError::Generation)?;
    Ok(WorkerCsr {
        csr_pem: csr.pem().map_err(CertError::Generation)?,
        key_pem: key.serialize_pem(),
    })
}

/// Checks that `identity` can name a worker.
///
/// Any URI with a scheme is accepted (`scheme:rest`, RFC 3986 characters
/// only, no spaces). A `spiffe` URI must also be a SPIFFE workload ID:
/// `spiffe://<trust-domain>/<path>` with a lower-case trust domain of
/// `[a-z0-9._-]`, a non-empty path of segments of `[A-Za-z0-9._-]` that are
/// neither `.` nor `..`, and no query or fragment.
///
/// # Errors
/// [`CertError::InvalidIdentity`] with the first rule broken.
pub fn validate_identity(identity: &str) -> Result<(), CertError> {
    let fail = |reason: &str| CertError::InvalidIdentity {
        identity: identity.to_string(),
        reason: reason.to_string(),
    };
    if identity.len() > MAX_IDENTITY_LEN {
        return Err(fail("longer than 2048 characters"));
    }
    let Some((scheme, rest)) = identity.split_once(':') else {
        return Err(fail(
            "not a URI: no scheme (expected e.g. spiffe://example.org/worker/<id>)",
        ));
    };
    let mut scheme_chars = scheme.chars();
    let scheme_ok = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(fail(
            "not a URI: the scheme must start with a letter and hold only letters, digits, +, - or .",
        ));
    }
    if rest.is_empty() {
        return Err(fail("not a URI: nothing after the scheme"));
    }
    if let Some(bad) = rest.chars().find(|c| !is_uri_char(*c)) {
        return Err(fail(&format!(
            "character {bad:?} is not allowed in a URI (percent-encode it)"
        )));
    }
    if scheme.eq_ignore_ascii_case("spiffe") {
        validate_spiffe(scheme, rest).map_err(|reason| fail(&reason))?;
    }
    Ok(())
}

fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
}

/// SPIFFE ID rules (SPIFFE-ID standard, section 2) for a workload ID.
fn validate_spiffe(scheme: &str, rest: &str) -> Result<(), String> {
    if scheme != "spiffe" {
        return Err("the spiffe scheme must be lower case".into());
    }
    let Some(authority_and_path) = rest.strip_prefix("//") else {
        return Err("a SPIFFE ID starts with spiffe://".into());
    };
    let (trust_domain, path) = match authority_and_path.find('/') {
        Some(i) => authority_and_path.split_at(i),
        None => (authority_and_path, ""),
    };
    if trust_domain.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if !trust_domain
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
    {
        return Err(
            "the trust domain may hold only lower-case letters, digits, '.', '-' and '_'".into(),
        );
    }
    if path.is_empty() || path == "/" {
        return Err("a worker identity needs a path, e.g. /worker/<id>".into());
    }
    for segment in path[1..].split('/') {
        validate_path_segment(segment)?;
    }
    Ok(())
}

/// Checks one SPIFFE path segment (also used for dev worker ids, which
/// become both a path segment and part of a file name).
pub(crate) fn validate_path_segment(segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err("the path has an empty segment (// or a trailing /)".into());
    }
    if segment == "." || segment == ".." {
        return Err("the path may not contain . or .. segments".into());
    }
    if !segment
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "path segment {segment:?} may hold only letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// Parameters of a worker certificate for `identity` (validity and serial
/// are set by the CA).
pub(crate) fn worker_params(identity: &str) -> Result<CertificateParams, CertError> {
    let mut params = client_params(identity)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A worker-shaped certificate whose EKU is serverAuth only; see
/// [`crate::CertificateAuthority::issue_client_without_client_auth`].
pub(crate) fn client_params_with_usages(
    identity: &str,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertificateParams, CertError> {
    let mut params = client_params(identity)?;
    params.extended_key_usages = usages;
    Ok(params)
}

fn client_params(identity: &str) -> Result<CertificateParams, CertError> {
    validate_identity(identity)?;
    let uri = identity
        .try_into()
        .map_err(|e: rcgen::Error| CertError::InvalidIdentity {
            identity: identity.to_string(),
            reason: e.to_string(),
        })?;
    let mut params = CertificateParams::default();
    // An identity longer than a CN may be leaves the subject empty; rcgen then
    // marks the SAN critical, as RFC 5280 requires.
    params.distinguished_name = DistinguishedName::new();
    if identity.len() <= MAX_COMMON_NAME_LEN {
        params.distinguished_name.push(DnType::CommonName, identity);
    }
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    Ok(params)
}

/// Parameters of a server certificate (validity and serial are set by the CA).
pub(crate) fn server_params(req: &ServerCertRequest) -> Result<CertificateParams, CertError> {
    let invalid = |name: &str, reason: &str| CertError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if req.common_name.is_empty() || req.common_name.len() > MAX_COMMON_NAME_LEN {
        return Err(invalid(
            &req.common_name,
            "a common name has 1 to 64 characters",
        ));
    }
    if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
        return Err(invalid(
            &req.common_name,
            "a server certificate needs at least one DNS name or IP address",
        ));
    }
    let mut sans = Vec::with_capacity(req.dns_names.len() + req.ip_addresses.len());
    for name in &req.dns_names {
        validate_dns_name(name).map_err(|reason| invalid(name, &reason))?;
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| invalid(name, &e.to_string()))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(req.ip_addresses.iter().copied().map(SanType::IpAddress));

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, req.common_name.as_str());
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.is_ca = IsCa::ExplicitNoCa;
    Ok(params)
}

/// A DNS name as webpki matches it: labels of letters, digits and hyphens,
/// optionally a leading `*.` wildcard label.
fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return Err("a DNS name has 1 to 253 characters".into());
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("this is an IP address; pass it as an IP address, not a DNS name".into());
    }
    let labels = name.strip_prefix("*.").unwrap_or(name);
    for label in labels.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(format!(
                "label {label:?} is not a DNS label (letters, digits, inner hyphens, at most 63)"
            ));
        }
    }
    Ok(())
}

/// The identity a CSR asks for: its only SAN, which must be a URI.
///
/// # Errors
/// [`CertError::CsrSans`] unless the CSR has exactly one SAN and it is a URI.
pub(crate) fn csr_identity(params: &CertificateParams) -> Result<String, CertError> {
    let uris: Vec<&str> = params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str()),
            _ => None,
        })
        .collect();
    let others = params.subject_alt_names.len() - uris.len();
    match (uris.as_slice(), others) {
        ([uri], 0) => Ok((*uri).to_string()),
        ([], _) => Err(CertError::CsrSans("the CSR has no URI SAN".into())),
        ([_], n) => Err(CertError::CsrSans(format!(
            "the CSR has {n} SAN(s) besides its URI"
        ))),
        (several, _) => Err(CertError::CsrSans(format!(
            "the CSR has {} URI SANs",
            several.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_worker_ids_and_other_uris_are_accepted() {
        for ok in [
            "spiffe://example.org/worker/crm-1",
            "spiffe://corp.example_1/ns/prod/worker/erp.2",
            "urn:example:worker:1",
            "https://workers.example.com/crm-1",
        ] {
            assert!(validate_identity(ok).is_ok(), "{ok} was refused");
        }
    }

    #[test]
    fn identities_that_are_not_uris_or_not_spiffe_ids_are_refused() {
        for bad in [
            "",
            "worker-1",
            "1abc:worker",
            "spiffe:",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/worker/1",
            "SPIFFE://example.org/worker/1",
            "spiffe:///worker/1",
            "spiffe://example.org/worker//1",
            "spiffe://example.org/worker/../1",
            "spiffe://example.org/worker/1?x=y",
            "spiffe://example.org/worker one",
            "urn:worker one",
            "urn:wörker",
        ] {
            assert!(
                matches!(
                    validate_identity(bad),
                    Err(CertError::InvalidIdentity { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn server_requests_with_bad_names_are_refused() {
        let base = ServerCertRequest {
            common_name: "orchestrator".into(),
            dns_names: vec!["orchestrator.local".into()],
            ip_addresses: vec![],
            validity_days: 1,
        };
        assert!(server_params(&base).is_ok());
        for bad_dns in ["", "a..b", "-a.b", "a b", "127.0.0.1", "ünï.example"] {
            let req = ServerCertRequest {
                dns_names: vec![bad_dns.into()],
                ..base.clone()
            };
            assert!(
                matches!(server_params(&req), Err(CertError::InvalidName { .. })),
                "{bad_dns:?} was accepted"
            );
        }
        let no_names = ServerCertRequest {
            dns_names: vec![],
            ..base
        };
        assert!(matches!(
            server_params(&no_names),
            Err(CertError::InvalidName { .. })
        ));
    }

    #[test]
    fn a_long_identity_leaves_the_subject_empty_but_keeps_the_uri_san() {
        let identity = format!("spiffe://example.org/worker/{}", "a".repeat(80));
        let params = worker_params(&identity).unwrap();
        assert_eq!(params.distinguished_name.iter().count(), 0);
        assert_eq!(params.subject_alt_names.len(), 1);
    }

    #[test]
    fn a_csr_keeps_its_key_out_of_the_csr_text() {
        let csr = create_worker_csr("spiffe://example.org/worker/w1").unwrap();
        assert!(csr.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
        assert!(!csr.csr_pem.contains("PRIVATE KEY"));
        assert!(csr.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{csr:?}").contains("PRIVATE KEY"));
    }
}
