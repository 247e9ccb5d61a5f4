//! A throw-away PKI for tests (feature `test-support`; never in a binary).
//!
//! [`TestCa`] is a root CA made with rcgen in memory. It issues what the
//! tests of every crate need: orchestrator server certificates
//! ([`TestCa::server`]), worker certificates ([`TestCa::worker`]), odd ones
//! a real CA would refuse to make (no clientAuth, a chosen serial:
//! [`TestCa::leaf`]) and CRLs ([`TestCa::crl`]). [`TestCa::write_tls_files`]
//! puts a CA bundle, chain and key where a `[tls]` section expects them.
//!
//! What it is not: the CA of development or production PKIs (certs-tool is,
//! and the end-to-end tests' dev bundle is made with it); it keeps no
//! state, and its certificates carry no intermediate.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::material::TlsPaths;

/// A test root CA.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its key, as issued by [`TestCa`].
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate, PEM (no intermediates: the CA is the root).
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl TestCert {
    /// The certificate as a one-element chain, DER.
    ///
    /// # Panics
    /// Never for certificates this module issued.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        crate::pem::parse_certificates(self.cert_pem.as_bytes()).expect("test certificate PEM")
    }

    /// The private key, DER.
    ///
    /// # Panics
    /// Never for keys this module generated.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        crate::pem::parse_private_key(self.key_pem.as_bytes()).expect("test key PEM")
    }

    /// Certificate and key PEM, in that order.
    pub fn into_pem(self) -> (String, String) {
        (self.cert_pem, self.key_pem)
    }

    /// The certificate in brief (serial, expiry).
    ///
    /// # Panics
    /// Never for certificates this module issued.
    pub fn summary(&self) -> crate::CertificateSummary {
        crate::CertificateSummary::of_der(&self.chain()[0]).expect("test certificate")
    }
}

/// A CRL issued by [`TestCa::crl`], in both encodings.
#[derive(Debug, Clone)]
pub struct TestCrl {
    /// PEM (`X509 CRL` block).
    pub pem: String,
    /// DER.
    pub der: Vec<u8>,
}

/// What [`TestCa::leaf`] puts in a certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    /// DNS names (or IP addresses, written as such).
    pub hosts: Vec<String>,
    /// URI SANs (a worker identity is one).
    pub uris: Vec<String>,
    /// Extended key usages.
    pub usages: Vec<ExtendedKeyUsagePurpose>,
    /// The serial number (a random one when `None`).
    pub serial: Option<u64>,
    /// `notBefore` and `notAfter` (rcgen's defaults when `None`).
    pub validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
}

impl TestCa {
    /// A new root CA named `name`, with a fresh P-256 key.
    ///
    /// # Panics
    /// If rcgen fails (never in practice).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
                .expect("self-signed CA"),
        }
    }

    /// The CA certificate, PEM: the trust anchor to give the peer.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A root store holding this CA.
    ///
    /// # Panics
    /// Never for this CA.
    pub fn roots(&self) -> RootCertStore {
        crate::tls::root_store(
            crate::pem::parse_certificates(self.cert_pem().as_bytes()).expect("CA PEM"),
        )
        .expect("CA as anchor")
    }

    /// A server certificate (serverAuth) for `hosts`, DNS names or IP
    /// addresses; its common name is the first.
    pub fn server(&self, hosts: &[&str]) -> TestCert {
        self.leaf(&LeafSpec {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            ..LeafSpec::default()
        })
    }

    /// A worker certificate (clientAuth) for `identity`, its only URI SAN.
    pub fn worker(&self, identity: &str) -> TestCert {
        self.leaf(&LeafSpec {
            uris: vec![identity.to_string()],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            ..LeafSpec::default()
        })
    }

    /// A certificate like a worker's but with the serverAuth usage instead
    /// of clientAuth: the identity rules refuse it.
    pub fn worker_without_client_auth(&self, identity: &str) -> TestCert {
        self.leaf(&LeafSpec {
            uris: vec![identity.to_string()],
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            ..LeafSpec::default()
        })
    }

    /// A worker certificate with a known serial number (for a CRL to name).
    pub fn worker_with_serial(&self, identity: &str, serial: u64) -> TestCert {
        self.leaf(&LeafSpec {
            uris: vec![identity.to_string()],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            serial: Some(serial),
            ..LeafSpec::default()
        })
    }

    /// Any leaf certificate, including ones the identity rules refuse.
    ///
    /// # Panics
    /// When a host or URI is not acceptable to rcgen (a test bug).
    pub fn leaf(&self, spec: &LeafSpec) -> TestCert {
        let mut params = CertificateParams::new(spec.hosts.clone()).expect("leaf names");
        if let Some(first) = spec.hosts.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.subject_alt_names.extend(
            spec.uris
                .iter()
                .map(|uri| SanType::URI(uri.as_str().try_into().expect("URI SAN"))),
        );
        params.extended_key_usages = spec.usages.clone();
        params.serial_number = spec.serial.map(SerialNumber::from);
        if let Some((not_before, not_after)) = spec.validity {
            params.not_before = not_before;
            params.not_after = not_after;
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A CRL of this CA, number `number`, revoking `serials` (valid from a
    /// minute ago for a day).
    ///
    /// # Panics
    /// If rcgen fails (never in practice).
    pub fn crl(&self, number: u64, serials: &[u64]) -> TestCrl {
        let now = time::OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .map(|crl| TestCrl {
            pem: crl.pem().expect("CRL PEM"),
            der: crl.der().to_vec(),
        })
        .expect("CRL signed")
    }

    /// Writes this CA as the bundle and `leaf` as chain and key into `dir`,
    /// as `<stem>-ca.pem`, `<stem>.pem` and `<stem>.key`.
    ///
    /// # Panics
    /// If a file cannot be written (a test set-up bug).
    pub fn write_tls_files(&self, dir: &Path, stem: &str, leaf: &TestCert) -> TlsPaths {
        let paths = TlsPaths {
            ca_cert: dir.join(format!("{stem}-ca.pem")),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&paths.ca_cert, self.cert_pem()).expect("write CA");
        write_pair(&paths, leaf);
        paths
    }
}

/// Replaces the chain and key at `paths` with `leaf` (the key first, then
/// the certificate).
///
/// # Panics
/// If a file cannot be written (a test set-up bug).
pub fn write_pair(paths: &TlsPaths, leaf: &TestCert) {
    std::fs::write(&paths.key, &leaf.key_pem).expect("write key");
    std::fs::write(&paths.cert, &leaf.cert_pem).expect("write certificate");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_issues_what_the_identity_rules_expect() {
        let ca = TestCa::new("fixture root");
        let worker = ca.worker("spiffe://example.org/worker/w1");
        assert_eq!(
            crate::worker_identity_from_der(&worker.chain()[0]).unwrap(),
            "spiffe://example.org/worker/w1"
        );
        let server = ca.server(&["orchestrator.local", "127.0.0.1"]);
        assert_eq!(
            crate::identity::server_names_from_der(&server.chain()[0]).unwrap(),
            ["orchestrator.local", "127.0.0.1"]
        );
        let odd = ca.worker_without_client_auth("spiffe://example.org/worker/w2");
        assert_eq!(
            crate::worker_identity_from_der(&odd.chain()[0]),
            Err(crate::IdentityError::NoClientAuth)
        );
        let numbered = ca.worker_with_serial("spiffe://example.org/worker/w3", 1001);
        assert_eq!(numbered.summary().serial, "03:e9");
        let verifier = crate::tls::client_verifier(
            std::sync::Arc::new(ca.roots()),
            crate::pem::parse_crls(ca.crl(1, &[1001]).pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        assert!(
            verifier
                .verify_client_cert(&worker.chain()[0], &[], now)
                .is_ok()
        );
        assert!(
            verifier
                .verify_client_cert(&numbered.chain()[0], &[], now)
                .is_err(),
            "the CRL revokes serial 1001"
        );
    }
}
