//! A certificate authority: a root or an intermediate, and what it signs.
//!
//! [`CertificateAuthority`] holds a CA certificate, its private key and the
//! chain a leaf must present to reach the root. It creates intermediates
//! (path length 0, so an intermediate signs leaves only) and issues the leaf
//! certificates described in [`crate::issue`], with a random serial number
//! and a validity that never outlives the CA itself.
//!
//! It does not store what it issued, revoke anything, or check what it loads
//! beyond what signing needs (the certificate is a CA, the key matches it, it
//! has not expired). Keys are ECDSA P-256 (rcgen's default).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertError;
use crate::issue::{self, IssuedCert, ServerCertRequest, WorkerCertRequest};

/// The longest validity accepted, in days (100 years).
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

/// How far in the past a certificate's validity starts, so that a peer whose
/// clock runs a little behind does not see it as "not yet valid".
const NOT_BEFORE_BACKDATE: Duration = Duration::hours(1);

/// Bytes of randomness in a serial number; the top bit is cleared so the
/// DER INTEGER stays positive and within RFC 5280's 20 octets.
const SERIAL_LEN: usize = 16;

/// A CA certificate with its private key, able to sign certificates.
///
/// Create a root with [`CertificateAuthority::new_root`], an intermediate
/// with [`CertificateAuthority::new_intermediate`], or load either with
/// [`CertificateAuthority::from_pem`].
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// This CA's certificate followed by its parents up to, excluding, the
    /// root; for a root, its own certificate.
    chain_pem: String,
    is_root: bool,
    /// The basicConstraints path length; `None` when unconstrained.
    path_len: Option<u32>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertificateAuthority {
    /// Shows the certificate, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .field("is_root", &self.is_root)
            .field("path_len", &self.path_len)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a self-signed root CA (no path length constraint).
    ///
    /// # Errors
    /// [`CertError::InvalidName`] for an empty or over-long common name,
    /// [`CertError::InvalidValidity`] for a bad number of days,
    /// [`CertError::Generation`] if rcgen fails.
    pub fn new_root(common_name: &str, validity_days: u32) -> Result<Self, CertError> {
        let (not_before, not_after) = validity_window(validity_days, None)?;
        let mut params = ca_params(common_name, BasicConstraints::Unconstrained)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate().map_err(CertError::Generation)?;
        let cert = params.self_signed(&key).map_err(CertError::Generation)?;
        let cert_pem = cert.pem();
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            chain_pem: cert_pem.clone(),
            cert_pem,
            is_root: true,
            path_len: None,
            not_after,
        })
    }

    /// Creates an intermediate CA signed by this CA, with path length 0: it
    /// can issue leaf certificates but no further CA.
    ///
    /// # Errors
    /// [`CertError::PathLenExceeded`] if this CA itself has path length 0,
    /// [`CertError::InvalidName`], [`CertError::InvalidValidity`],
    /// [`CertError::Generation`] as for [`CertificateAuthority::new_root`].
    pub fn new_intermediate(
        &self,
        common_name: &str,
        validity_days: u32,
    ) -> Result<CertificateAuthority, CertError> {
        if self.path_len == Some(0) {
            return Err(CertError::PathLenExceeded);
        }
        let mut params = ca_params(common_name, BasicConstraints::Constrained(0))?;
        let key = KeyPair::generate().map_err(CertError::Generation)?;
        let cert = self.sign(&mut params, &key, validity_days)?;
        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}", self.intermediates_pem());
        let not_after = params.not_after;
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            cert_pem,
            chain_pem,
            is_root: false,
            path_len: Some(0),
            not_after,
        })
    }

    /// Loads an existing CA from its certificate and private key (PEM).
    ///
    /// `cert_pem` holds the CA certificate first; any certificates after it
    /// are taken as its chain towards the root (self-signed ones are
    /// dropped, a peer never needs the root from us). A self-signed first
    /// certificate is a root.
    ///
    /// # Errors
    /// [`CertError::NoCertificate`] / [`CertError::MalformedCertificate`] for
    /// bad certificate text, [`CertError::MalformedKey`] for a bad key,
    /// [`CertError::NotCa`] if the certificate may not sign certificates,
    /// [`CertError::KeyMismatch`] if the key is not the certificate's,
    /// [`CertError::CaExpired`] if the CA has expired.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let blocks = private_worker_identity::pem::certificate_blocks(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::MalformedKey(e.to_string()))?;
        let (first, parents) = blocks.split_first().ok_or(CertError::NoCertificate)?;
        let (_, x509) = X509Certificate::from_der(&first.der)
            .map_err(|e| CertError::MalformedCertificate(e.to_string()))?;

        let basic = x509
            .basic_constraints()
            .map_err(|e| CertError::MalformedCertificate(e.to_string()))?
            .map(|ext| ext.value.clone());
        let Some(basic) = basic.filter(|bc| bc.ca) else {
            return Err(CertError::NotCa("basicConstraints CA is not true".into()));
        };
        let key_usage = x509
            .key_usage()
            .map_err(|e| CertError::MalformedCertificate(e.to_string()))?;
        if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(CertError::NotCa("its key usage lacks keyCertSign".into()));
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CertError::KeyMismatch);
        }
        let not_after = x509.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CertError::CaExpired(rfc3339(not_after)));
        }
        let is_root = is_self_issued(&x509);

        let mut chain_pem = first.pem.clone();
        for parent in parents {
            let (_, parent_x509) = X509Certificate::from_der(&parent.der)
                .map_err(|e| CertError::MalformedCertificate(e.to_string()))?;
            if !is_self_issued(&parent_x509) {
                chain_pem.push_str(&parent.pem);
            }
        }
        let issuer = Issuer::from_ca_cert_der(&first.der, key)
            .map_err(|e| CertError::MalformedCertificate(e.to_string()))?;
        Ok(CertificateAuthority {
            issuer,
            cert_pem: first.pem.clone(),
            chain_pem,
            is_root,
            path_len: basic.path_len_constraint,
            not_after,
        })
    }

    /// This CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This CA's private key, PKCS#8 PEM. Write it with
    /// [`crate::files::write_private_key`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// This CA's certificate followed by its parents' certificates up to,
    /// excluding, the root; for a root, its own certificate.
    pub fn chain_pem(&self) -> String {
        self.chain_pem.clone()
    }

    /// Whether this CA is a root (self-signed).
    pub fn is_root(&self) -> bool {
        self.is_root
    }

    /// What a peer presents for a leaf issued by this CA: `leaf_pem`
    /// followed by the intermediates (this CA and its parents), never the
    /// root.
    pub fn presented_chain(&self, leaf_pem: &str) -> String {
        format!("{leaf_pem}{}", self.intermediates_pem())
    }

    /// Issues an orchestrator (TLS server) certificate with a new key pair.
    ///
    /// # Errors
    /// [`CertError::InvalidName`] for a bad common name or DNS name, or no
    /// name at all; [`CertError::InvalidValidity`]; [`CertError::Generation`].
    pub fn issue_server(&self, req: &ServerCertRequest) -> Result<IssuedCert, CertError> {
        let params = issue::server_params(req)?;
        self.issue_with_new_key(params, req.validity_days)
    }

    /// Issues a worker (TLS client) certificate with a new key pair.
    ///
    /// Prefer [`crate::create_worker_csr`] + [`Self::sign_worker_csr`] in
    /// production, so the worker's key is never on the CA host.
    ///
    /// # Errors
    /// [`CertError::InvalidIdentity`] if the identity fails
    /// [`crate::validate_identity`]; [`CertError::InvalidValidity`];
    /// [`CertError::Generation`].
    pub fn issue_worker(&self, req: &WorkerCertRequest) -> Result<IssuedCert, CertError> {
        let params = issue::worker_params(&req.identity)?;
        self.issue_with_new_key(params, req.validity_days)
    }

    /// Signs a worker's CSR and returns the certificate alone, PEM (pass it
    /// to [`Self::presented_chain`] for what the worker presents).
    ///
    /// Only the CSR's public key and its URI SAN are used. The CA decides
    /// everything else: subject, EKU clientAuth, key usage digitalSignature,
    /// CA=false, validity, serial, whatever the CSR asked for. The CSR's
    /// signature is verified, so the requester holds the private key.
    ///
    /// # Errors
    /// [`CertError::MalformedCsr`] if the CSR cannot be parsed, carries an
    /// extension other than SAN, key usage, EKU and basic constraints, or
    /// its signature does not verify; [`CertError::CsrSans`] unless it
    /// carries exactly one URI SAN and no other SAN;
    /// [`CertError::InvalidIdentity`] if that URI is not a valid identity;
    /// [`CertError::InvalidValidity`]; [`CertError::Generation`].
    pub fn sign_worker_csr(&self, csr_pem: &str, validity_days: u32) -> Result<String, CertError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CertError::MalformedCsr(e.to_string()))?;
        // rcgen re-encodes the CSR's public key from the signature algorithm;
        // refuse if that would not reproduce the requester's key exactly
        // (e.g. a P-256 key that signed its CSR with SHA-384).
        if requested_spki(csr_pem)? != csr.public_key.subject_public_key_info() {
            return Err(CertError::MalformedCsr(
                "unsupported combination of key type and signature algorithm".into(),
            ));
        }
        let identity = issue::csr_identity(&csr.params)?;
        let mut params = issue::worker_params(&identity)?;
        let cert = self.sign(&mut params, &csr.public_key, validity_days)?;
        Ok(cert.pem())
    }

    /// For negative tests only: a worker-shaped certificate (one URI SAN,
    /// not a CA) whose EKU is serverAuth only, without clientAuth. A
    /// correctly configured orchestrator must refuse it as a client
    /// certificate. Never deploy one.
    ///
    /// # Errors
    /// As [`Self::issue_worker`].
    pub fn issue_client_without_client_auth(
        &self,
        identity: &str,
        validity_days: u32,
    ) -> Result<IssuedCert, CertError> {
        let params = issue::client_params_with_usages(
            identity,
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        )?;
        self.issue_with_new_key(params, validity_days)
    }

    /// For negative tests only: a certificate like a worker's (one URI SAN,
    /// not a CA) with no extended key usage extension at all. webpki
    /// accepts it as a client certificate (it checks the usage only when
    /// the extension is present), so the orchestrator's own identity check
    /// must refuse it. Never deploy one.
    ///
    /// # Errors
    /// As [`Self::issue_worker`].
    pub fn issue_client_without_any_usage(
        &self,
        identity: &str,
        validity_days: u32,
    ) -> Result<IssuedCert, CertError> {
        let params = issue::client_params_with_usages(identity, Vec::new())?;
        self.issue_with_new_key(params, validity_days)
    }

    fn issue_with_new_key(
        &self,
        mut params: CertificateParams,
        validity_days: u32,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate().map_err(CertError::Generation)?;
        let cert = self.sign(&mut params, &key, validity_days)?;
        let cert_pem = cert.pem();
        Ok(IssuedCert {
            chain_pem: self.presented_chain(&cert_pem),
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs `params` for an existing key pair (a renewal keeps the key) and
    /// returns the certificate alone, PEM.
    pub(crate) fn sign_for_key(
        &self,
        mut params: CertificateParams,
        key: &KeyPair,
        validity_days: u32,
    ) -> Result<String, CertError> {
        Ok(self.sign(&mut params, key, validity_days)?.pem())
    }

    /// Signs `params` for `public_key`: sets the validity (capped at this
    /// CA's expiry), a random serial and the authority key identifier.
    fn sign(
        &self,
        params: &mut CertificateParams,
        public_key: &impl PublicKeyData,
        validity_days: u32,
    ) -> Result<rcgen::Certificate, CertError> {
        let (not_before, not_after) = validity_window(validity_days, Some(self.not_after))?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params
            .signed_by(public_key, &self.issuer)
            .map_err(CertError::Generation)
    }

    /// The intermediates a leaf of this CA presents after itself.
    fn intermediates_pem(&self) -> &str {
        if self.is_root { "" } else { &self.chain_pem }
    }
}

fn ca_params(
    common_name: &str,
    constraints: BasicConstraints,
) -> Result<CertificateParams, CertError> {
    if common_name.is_empty() || common_name.len() > 64 {
        return Err(CertError::InvalidName {
            name: common_name.to_string(),
            reason: "a common name has 1 to 64 characters".into(),
        });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// `(not_before, not_after)` for a certificate valid `days` from now, capped
/// at `cap` (the issuer's own expiry).
fn validity_window(
    days: u32,
    cap: Option<OffsetDateTime>,
) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(CertError::InvalidValidity(days));
    }
    let now = OffsetDateTime::now_utc();
    let mut not_after = now + Duration::days(i64::from(days));
    if let Some(cap) = cap {
        if cap <= now {
            return Err(CertError::CaExpired(rfc3339(cap)));
        }
        not_after = not_after.min(cap);
    }
    Ok((now - NOT_BEFORE_BACKDATE, not_after))
}

/// The SubjectPublicKeyInfo of a CSR, DER, as the requester wrote it.
fn requested_spki(csr_pem: &str) -> Result<Vec<u8>, CertError> {
    let malformed = |e: &dyn std::fmt::Display| CertError::MalformedCsr(e.to_string());
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| malformed(&e))?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).map_err(|e| malformed(&e))?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; SERIAL_LEN] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn is_self_issued(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use rcgen::{ExtendedKeyUsagePurpose, SanType};

    use super::*;
    use crate::create_worker_csr;
    use crate::test_support::{first_der, verify_client, verify_server};
    use private_worker_identity::identity::{IdentityError, worker_identity_from_der};
    use private_worker_identity::inspect::inspect_pem;
    use private_worker_identity::pem::certificate_blocks;

    const WORKER: &str = "spiffe://example.org/worker/crm-1";

    fn root_and_intermediate() -> (CertificateAuthority, CertificateAuthority) {
        let root = CertificateAuthority::new_root("test root", 30).unwrap();
        let intermediate = root.new_intermediate("test intermediate", 30).unwrap();
        (root, intermediate)
    }

    fn worker_req(identity: &str) -> WorkerCertRequest {
        WorkerCertRequest {
            identity: identity.to_string(),
            validity_days: 7,
        }
    }

    fn server_req() -> ServerCertRequest {
        ServerCertRequest {
            common_name: "orchestrator".into(),
            dns_names: vec!["orchestrator.local".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            validity_days: 7,
        }
    }

    fn count_certs(pem: &str) -> usize {
        certificate_blocks(pem).unwrap().len()
    }

    #[test]
    fn a_worker_certificate_yields_its_identity_and_has_client_auth() {
        let (_, ca) = root_and_intermediate();
        let issued = ca.issue_worker(&worker_req(WORKER)).unwrap();
        let der = first_der(&issued.cert_pem);
        assert_eq!(worker_identity_from_der(&der).unwrap(), WORKER);
        let info = &inspect_pem(&issued.cert_pem).unwrap()[0];
        assert_eq!(info.extended_key_usages, ["clientAuth"]);
        assert_eq!(info.key_usages, ["digitalSignature"]);
        assert_eq!(info.uris, [WORKER]);
        assert!(info.dns_names.is_empty() && info.ip_addresses.is_empty());
        assert!(!info.is_ca);
    }

    #[test]
    fn a_server_certificate_does_not_identify_a_worker() {
        let (_, ca) = root_and_intermediate();
        let issued = ca.issue_server(&server_req()).unwrap();
        let result = worker_identity_from_der(&first_der(&issued.cert_pem));
        assert_eq!(result, Err(IdentityError::NoClientAuth));
        let info = &inspect_pem(&issued.cert_pem).unwrap()[0];
        assert_eq!(info.extended_key_usages, ["serverAuth"]);
        assert_eq!(info.dns_names, ["orchestrator.local"]);
        assert_eq!(info.ip_addresses, ["127.0.0.1"]);
    }

    #[test]
    fn a_client_certificate_without_client_auth_is_not_a_worker_identity() {
        let (_, ca) = root_and_intermediate();
        let issued = ca.issue_client_without_client_auth(WORKER, 1).unwrap();
        let result = worker_identity_from_der(&first_der(&issued.cert_pem));
        assert_eq!(result, Err(IdentityError::NoClientAuth));
        assert!(verify_client(ca.cert_pem(), &issued.chain_pem).is_err());
    }

    #[test]
    fn a_ca_certificate_is_not_a_worker_identity() {
        let (root, intermediate) = root_and_intermediate();
        for ca in [&root, &intermediate] {
            let result = worker_identity_from_der(&first_der(ca.cert_pem()));
            assert_eq!(result, Err(IdentityError::IsCa));
        }
    }

    #[test]
    fn a_signed_csr_carries_the_requesters_public_key_and_identity() {
        let (_, ca) = root_and_intermediate();
        // Worker host: the key pair is made here and only the CSR text travels.
        let csr = create_worker_csr(WORKER).unwrap();
        assert!(!csr.csr_pem.contains("PRIVATE KEY"));
        // CA host: sign_worker_csr takes the CSR text and nothing else.
        let cert_pem = ca.sign_worker_csr(&csr.csr_pem, 7).unwrap();

        let csr_der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes()).unwrap();
        let (_, parsed_csr) = X509CertificationRequest::from_der(csr_der.as_ref()).unwrap();
        let cert_der = first_der(&cert_pem);
        let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            parsed_csr.certification_request_info.subject_pki.raw
        );
        let worker_key = KeyPair::from_pem(&csr.key_pem).unwrap();
        assert_eq!(
            cert.public_key().raw,
            worker_key.subject_public_key_info().as_slice()
        );
        assert_eq!(worker_identity_from_der(&cert_der).unwrap(), WORKER);
        assert!(verify_client(ca.chain_pem().as_str(), &cert_pem).is_ok());
    }

    fn csr_with(params: &CertificateParams) -> String {
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn a_csr_without_exactly_one_uri_san_is_refused() {
        let (_, ca) = root_and_intermediate();
        let cases = [
            vec![],
            vec![SanType::DnsName("worker.example.org".try_into().unwrap())],
            vec![uri(WORKER), uri("spiffe://example.org/worker/other")],
            vec![
                uri(WORKER),
                SanType::DnsName("worker.example.org".try_into().unwrap()),
            ],
        ];
        for sans in cases {
            let mut params = CertificateParams::default();
            params.subject_alt_names = sans.clone();
            let result = ca.sign_worker_csr(&csr_with(&params), 7);
            assert!(
                matches!(result, Err(CertError::CsrSans(_))),
                "{sans:?}: {result:?}"
            );
        }
    }

    #[test]
    fn a_csr_with_an_invalid_identity_is_refused() {
        let (_, ca) = root_and_intermediate();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri("spiffe://example.org/")];
        let result = ca.sign_worker_csr(&csr_with(&params), 7);
        assert!(matches!(result, Err(CertError::InvalidIdentity { .. })));
    }

    #[test]
    fn the_ca_not_the_csr_decides_usages() {
        let (_, ca) = root_and_intermediate();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(WORKER)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::CodeSigning,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "I am the CA now");
        let cert_pem = ca.sign_worker_csr(&csr_with(&params), 7).unwrap();
        let info = &inspect_pem(&cert_pem).unwrap()[0];
        assert!(!info.is_ca);
        assert_eq!(info.key_usages, ["digitalSignature"]);
        assert_eq!(info.extended_key_usages, ["clientAuth"]);
        assert_eq!(info.subject, format!("CN={WORKER}"));
    }

    #[test]
    fn a_csr_with_a_broken_signature_or_no_pem_is_refused() {
        let (_, ca) = root_and_intermediate();
        let csr = create_worker_csr(WORKER).unwrap();
        let der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        // The last byte belongs to the signature.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64_lines(&bytes)
        );
        assert!(matches!(
            ca.sign_worker_csr(&tampered, 7),
            Err(CertError::MalformedCsr(_))
        ));
        assert!(matches!(
            ca.sign_worker_csr("not a csr", 7),
            Err(CertError::MalformedCsr(_))
        ));
    }

    /// Standard base64 with 64-character lines, enough for a PEM body.
    fn base64_lines(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out.as_bytes()
            .chunks(64)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_worker_chain_through_the_intermediate_verifies_against_the_root_only() {
        let (root, intermediate) = root_and_intermediate();
        let issued = intermediate.issue_worker(&worker_req(WORKER)).unwrap();
        assert_eq!(count_certs(&issued.chain_pem), 2);
        assert!(issued.chain_pem.starts_with(&issued.cert_pem));
        verify_client(root.cert_pem(), &issued.chain_pem).unwrap();
        // Without the intermediate, the leaf does not reach the root.
        assert!(verify_client(root.cert_pem(), &issued.cert_pem).is_err());
        let other_root = CertificateAuthority::new_root("other root", 30).unwrap();
        assert!(verify_client(other_root.cert_pem(), &issued.chain_pem).is_err());
    }

    #[test]
    fn a_server_chain_verifies_for_its_names_only() {
        let (root, intermediate) = root_and_intermediate();
        let issued = intermediate.issue_server(&server_req()).unwrap();
        verify_server(root.cert_pem(), &issued.chain_pem, "orchestrator.local").unwrap();
        verify_server(root.cert_pem(), &issued.chain_pem, "127.0.0.1").unwrap();
        assert!(verify_server(root.cert_pem(), &issued.chain_pem, "evil.example").is_err());
        let other_root = CertificateAuthority::new_root("other root", 30).unwrap();
        assert!(
            verify_server(
                other_root.cert_pem(),
                &issued.chain_pem,
                "orchestrator.local"
            )
            .is_err()
        );
        // A worker certificate is no server certificate.
        let worker = intermediate.issue_worker(&worker_req(WORKER)).unwrap();
        assert!(verify_server(root.cert_pem(), &worker.chain_pem, "orchestrator.local").is_err());
    }

    #[test]
    fn a_leaf_issued_by_the_root_presents_no_chain_and_verifies() {
        let root = CertificateAuthority::new_root("test root", 30).unwrap();
        assert_eq!(root.chain_pem(), root.cert_pem());
        let issued = root.issue_worker(&worker_req(WORKER)).unwrap();
        assert_eq!(issued.chain_pem, issued.cert_pem);
        verify_client(root.cert_pem(), &issued.chain_pem).unwrap();
    }

    #[test]
    fn ca_certificates_carry_the_right_constraints() {
        let (root, intermediate) = root_and_intermediate();
        for ca in [&root, &intermediate] {
            let info = &inspect_pem(ca.cert_pem()).unwrap()[0];
            assert!(info.is_ca);
            assert_eq!(info.key_usages, ["keyCertSign", "cRLSign"]);
        }
        let der = first_der(intermediate.cert_pem());
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!(bc.path_len_constraint, Some(0));
        assert!(matches!(
            intermediate.new_intermediate("too deep", 1),
            Err(CertError::PathLenExceeded)
        ));
    }

    #[test]
    fn a_ca_loaded_from_pem_issues_verifiable_certificates() {
        let (root, intermediate) = root_and_intermediate();
        let loaded =
            CertificateAuthority::from_pem(&intermediate.chain_pem(), &intermediate.key_pem())
                .unwrap();
        assert!(!loaded.is_root());
        assert_eq!(loaded.chain_pem(), intermediate.chain_pem());
        let issued = loaded.issue_worker(&worker_req(WORKER)).unwrap();
        verify_client(root.cert_pem(), &issued.chain_pem).unwrap();
        // An intermediate file that also holds the root: the root is not presented.
        let with_root = format!("{}{}", intermediate.cert_pem(), root.cert_pem());
        let loaded = CertificateAuthority::from_pem(&with_root, &intermediate.key_pem()).unwrap();
        assert_eq!(loaded.chain_pem(), intermediate.cert_pem());

        let loaded_root = CertificateAuthority::from_pem(root.cert_pem(), &root.key_pem()).unwrap();
        assert!(loaded_root.is_root());
        let new_intermediate = loaded_root.new_intermediate("second", 10).unwrap();
        let issued = new_intermediate.issue_server(&server_req()).unwrap();
        verify_server(root.cert_pem(), &issued.chain_pem, "orchestrator.local").unwrap();
    }

    #[test]
    fn loading_a_ca_with_the_wrong_key_a_leaf_or_garbage_is_refused() {
        let (root, intermediate) = root_and_intermediate();
        assert!(matches!(
            CertificateAuthority::from_pem(root.cert_pem(), &intermediate.key_pem()),
            Err(CertError::KeyMismatch)
        ));
        let leaf = root.issue_worker(&worker_req(WORKER)).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(CertError::NotCa(_))
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(root.cert_pem(), "not a key"),
            Err(CertError::MalformedKey(_))
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(&root.key_pem(), &root.key_pem()),
            Err(CertError::NoCertificate)
        ));
    }

    #[test]
    fn a_leaf_never_outlives_its_ca_and_zero_days_is_refused() {
        let root = CertificateAuthority::new_root("short root", 2).unwrap();
        let issued = root
            .issue_worker(&WorkerCertRequest {
                identity: WORKER.into(),
                validity_days: 365,
            })
            .unwrap()
            .cert_pem;
        let ca_info = &inspect_pem(root.cert_pem()).unwrap()[0];
        let leaf_info = &inspect_pem(&issued).unwrap()[0];
        assert_eq!(leaf_info.not_after, ca_info.not_after);
        assert!(matches!(
            CertificateAuthority::new_root("r", 0),
            Err(CertError::InvalidValidity(0))
        ));
        assert!(matches!(
            root.issue_worker(&WorkerCertRequest {
                identity: WORKER.into(),
                validity_days: MAX_VALIDITY_DAYS + 1,
            }),
            Err(CertError::InvalidValidity(_))
        ));
    }

    #[test]
    fn signing_the_same_csr_twice_gives_different_serial_numbers() {
        let (_, ca) = root_and_intermediate();
        let csr = create_worker_csr(WORKER).unwrap();
        let first = &inspect_pem(&ca.sign_worker_csr(&csr.csr_pem, 1).unwrap()).unwrap()[0];
        let second = &inspect_pem(&ca.sign_worker_csr(&csr.csr_pem, 1).unwrap()).unwrap()[0];
        assert_ne!(first.serial, second.serial);
        assert!(
            first.serial.len() >= 3 * 8,
            "serial too short: {}",
            first.serial
        );
    }

    #[test]
    fn an_expired_ca_is_not_loaded() {
        let mut params = ca_params("expired root", BasicConstraints::Unconstrained).unwrap();
        params.not_before = OffsetDateTime::now_utc() - Duration::days(10);
        params.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem()),
            Err(CertError::CaExpired(_))
        ));
    }

    #[test]
    fn csrs_with_p384_and_ed25519_keys_keep_their_keys() {
        let (root, ca) = root_and_intermediate();
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![uri(WORKER)];
            let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
            let cert_pem = ca.sign_worker_csr(&csr_pem, 1).unwrap();
            let der = first_der(&cert_pem);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(
                cert.public_key().raw,
                key.subject_public_key_info().as_slice()
            );
            verify_client(root.cert_pem(), &ca.presented_chain(&cert_pem)).unwrap();
        }
    }
}
