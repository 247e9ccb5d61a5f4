//! What a certificate says about itself, for people, for status and for
//! tests.
//!
//! [`inspect_pem`] parses every `CERTIFICATE` block of a PEM text into a
//! [`CertInfo`]: names, usages, validity and fingerprint (`certs-tool
//! inspect` prints it). [`CertificateSummary`] is the brief form, serial
//! and expiry, that the worker and the orchestrator show in status,
//! `--check` and their rotation logs. It verifies nothing (no signature, no
//! chain, no expiry check): it reports what the certificate says, so an
//! operator can compare it with what they expect.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pem::{self, PemError};

/// `t` as RFC 3339 (`2026-11-25T22:41:40Z`).
fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// What one certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=orchestrator`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, hex bytes separated by colons.
    pub serial: String,
    /// DNS name SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<String>,
    /// URI SANs (a worker certificate has exactly one: its identity).
    pub uris: Vec<String>,
    /// Whether basicConstraints says CA=true.
    pub is_ca: bool,
    /// Key usages, by their RFC 5280 names (`digitalSignature`, `keyCertSign`, ...).
    pub key_usages: Vec<String>,
    /// Extended key usages (`serverAuth`, `clientAuth`, ...; others as OIDs).
    pub extended_key_usages: Vec<String>,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, upper-case hex bytes separated by colons (as
    /// `openssl x509 -fingerprint -sha256` prints it).
    pub sha256_fingerprint: String,
}

/// Parses every `CERTIFICATE` block of `pem_text`, in order.
///
/// # Errors
/// [`PemError::NoCertificate`] if there is none;
/// [`PemError::MalformedCertificate`] if a block does not parse.
pub fn inspect_pem(pem_text: &str) -> Result<Vec<CertInfo>, PemError> {
    pem::certificate_blocks(pem_text)?
        .iter()
        .map(|block| inspect_der(&block.der))
        .collect()
}

/// Summarises one DER certificate.
///
/// # Errors
/// [`PemError::MalformedCertificate`] if it does not parse.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, PemError> {
    let malformed = |e: &dyn fmt::Display| PemError::MalformedCertificate(e.to_string());
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| malformed(&e))?;

    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let mut uris = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| malformed(&e))? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_string()),
                GeneralName::URI(uri) => uris.push((*uri).to_string()),
                GeneralName::IPAddress(bytes) => ip_addresses.push(ip_to_string(bytes)),
                _ => {}
            }
        }
    }

    let mut key_usages = Vec::new();
    if let Some(ku) = cert.key_usage().map_err(|e| malformed(&e))? {
        let ku = ku.value;
        for (set, name) in [
            (ku.digital_signature(), "digitalSignature"),
            (ku.non_repudiation(), "contentCommitment"),
            (ku.key_encipherment(), "keyEncipherment"),
            (ku.data_encipherment(), "dataEncipherment"),
            (ku.key_agreement(), "keyAgreement"),
            (ku.key_cert_sign(), "keyCertSign"),
            (ku.crl_sign(), "cRLSign"),
            (ku.encipher_only(), "encipherOnly"),
            (ku.decipher_only(), "decipherOnly"),
        ] {
            if set {
                key_usages.push(name.to_string());
            }
        }
    }

    let mut extended_key_usages = Vec::new();
    if let Some(eku) = cert.extended_key_usage().map_err(|e| malformed(&e))? {
        let eku = eku.value;
        for (set, name) in [
            (eku.any, "anyExtendedKeyUsage"),
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ] {
            if set {
                extended_key_usages.push(name.to_string());
            }
        }
        extended_key_usages.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    }

    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        dns_names,
        ip_addresses,
        uris,
        is_ca: cert.is_ca(),
        key_usages,
        extended_key_usages,
        not_before: rfc3339(cert.validity().not_before.to_datetime()),
        not_after: rfc3339(cert.validity().not_after.to_datetime()),
        sha256_fingerprint: fingerprint(der),
    })
}

/// The certificate a TLS peer presents, in brief: what status, `--check`
/// and the rotation logs of both ends show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Serial number, hex bytes separated by colons (as `certs-tool
    /// inspect` prints it).
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// End of validity, RFC 3339.
    pub not_after_rfc3339: String,
}

impl CertificateSummary {
    /// Summarises a DER certificate.
    ///
    /// # Errors
    /// A message when it does not parse.
    pub fn of_der(der: &[u8]) -> Result<CertificateSummary, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PemError::MalformedCertificate(e.to_string()).to_string())?;
        let not_after = cert.validity().not_after.to_datetime();
        Ok(CertificateSummary {
            serial: cert.raw_serial_as_string(),
            not_before: cert.validity().not_before.to_datetime().into(),
            not_after: not_after.into(),
            not_after_rfc3339: rfc3339(not_after),
        })
    }

    /// Why the certificate cannot be used at `now`: it has expired, or
    /// its validity starts more than `skew` later. `None` when usable.
    pub fn unusable_at(&self, now: SystemTime, skew: Duration) -> Option<String> {
        if self.not_after <= now {
            return Some(format!(
                "the certificate (serial {}) expired at {}",
                self.serial, self.not_after_rfc3339
            ));
        }
        let starts_in = self.not_before.duration_since(now).unwrap_or_default();
        (starts_in > skew).then(|| {
            format!(
                "the certificate (serial {}) is not valid for another {} s (notBefore later than this host's clock allows)",
                self.serial,
                starts_in.as_secs()
            )
        })
    }

    /// Whether a certificate [`CertificateSummary::unusable_at`] refuses
    /// now becomes usable later (its validity has not started yet).
    pub fn usable_later(&self, now: SystemTime, skew: Duration) -> bool {
        self.not_after > now && self.not_before.duration_since(now).unwrap_or_default() > skew
    }

    /// How long until it expires (zero once it has).
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

fn ip_to_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let octets: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
            IpAddr::from(octets).to_string()
        }
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            IpAddr::from(octets).to_string()
        }
        _ => format!("<invalid IP SAN: {}>", hex::encode(bytes)),
    }
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl fmt::Display for CertInfo {
    /// A multi-line block, one field a line; empty lists show as `-`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(items: &[String]) -> String {
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(", ")
            }
        }
        writeln!(f, "subject:             {}", self.subject)?;
        writeln!(f, "issuer:              {}", self.issuer)?;
        writeln!(f, "serial:              {}", self.serial)?;
        writeln!(
            f,
            "CA:                  {}",
            if self.is_ca { "yes" } else { "no" }
        )?;
        writeln!(f, "DNS names:           {}", list(&self.dns_names))?;
        writeln!(f, "IP addresses:        {}", list(&self.ip_addresses))?;
        writeln!(f, "URIs:                {}", list(&self.uris))?;
        writeln!(f, "key usages:          {}", list(&self.key_usages))?;
        writeln!(
            f,
            "extended key usages: {}",
            list(&self.extended_key_usages)
        )?;
        writeln!(f, "not before:          {}", self.not_before)?;
        writeln!(f, "not after:           {}", self.not_after)?;
        write!(f, "SHA-256 fingerprint: {}", self.sha256_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `openssl req -x509 -newkey ec ... -set_serial 0x1234ABCD`;
    /// the expected values below are what `openssl x509 -noout -fingerprint
    /// -sha256 -ext ...` printed for it.
    const KNOWN: &str = include_str!("../testdata/known.pem");

    #[test]
    fn inspect_reports_what_openssl_reports_for_a_known_certificate() {
        let infos = inspect_pem(KNOWN).unwrap();
        assert_eq!(infos.len(), 1);
        let info = &infos[0];
        assert_eq!(info.subject, "CN=known-fixture");
        assert_eq!(info.issuer, "CN=known-fixture");
        assert_eq!(info.serial, "12:34:ab:cd");
        assert_eq!(info.dns_names, ["orchestrator.local"]);
        assert_eq!(info.ip_addresses, ["127.0.0.1", "::1"]);
        assert_eq!(info.uris, ["spiffe://example.org/worker/fixture"]);
        assert!(!info.is_ca);
        assert_eq!(info.key_usages, ["digitalSignature"]);
        assert_eq!(info.extended_key_usages, ["serverAuth", "clientAuth"]);
        assert_eq!(
            info.sha256_fingerprint,
            "53:5E:2F:18:4D:A2:B1:9A:02:7F:40:CF:65:16:08:92:3A:9C:53:07:B8:6F:79:11:DF:06:14:50:E3:4F:6D:03"
        );
        assert_eq!(info.not_before, "2026-11-25T22:41:40Z");
        assert_eq!(info.not_after, "2036-11-22T22:41:40Z");
    }

    #[test]
    fn the_display_block_shows_names_usages_and_fingerprint() {
        let text = inspect_pem(KNOWN).unwrap()[0].to_string();
        for expected in [
            "subject:             CN=known-fixture",
            "CA:                  no",
            "URIs:                spiffe://example.org/worker/fixture",
            "IP addresses:        127.0.0.1, ::1",
            "extended key usages: serverAuth, clientAuth",
            "SHA-256 fingerprint: 53:5E:2F",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn every_certificate_of_a_chain_is_inspected_in_order() {
        let chain = format!("{KNOWN}\n# a comment between blocks\n{KNOWN}");
        assert_eq!(inspect_pem(&chain).unwrap().len(), 2);
    }

    #[test]
    fn the_summary_gives_the_serial_and_expiry_inspect_gives() {
        let info = &inspect_pem(KNOWN).unwrap()[0];
        let der = &pem::certificate_blocks(KNOWN).unwrap()[0].der;
        let summary = CertificateSummary::of_der(der).unwrap();
        assert_eq!(summary.serial, info.serial);
        assert_eq!(summary.not_after_rfc3339, info.not_after);
        assert!(summary.expires_in(summary.not_after).is_zero());
        assert_eq!(
            summary.expires_in(summary.not_after - Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert!(CertificateSummary::of_der(b"not der").is_err());
    }

    #[test]
    fn a_corrupt_certificate_is_reported_as_malformed() {
        let corrupt = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            inspect_pem(corrupt),
            Err(PemError::MalformedCertificate(_))
        ));
    }
}
