//! Renewal: a new certificate for an existing key, with the identity of
//! the certificate it replaces.
//!
//! [`renew`] reads what the old certificate names (a worker's URI SAN, or a
//! server's common name, DNS names and IP addresses), checks that the key
//! is the old certificate's, and has the CA sign a new certificate for the
//! same key: a worker certificate through the CSR flow (the key signs a
//! CSR, the CA checks it and sets every usage, as `certs-tool csr` and
//! `sign-csr` do), a server certificate from the same names. The new
//! certificate has a new random serial and a fresh validity.
//! [`renew_files`] does this on files and replaces the certificate file
//! atomically (a temporary file beside it, then a rename), so a process
//! that polls the file (the worker, the orchestrator) sees either the old
//! or the new certificate, never half of one.
//!
//! What it does not do: make a new key (issue a new certificate for that),
//! revoke the old certificate, or touch the key file.

use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertError;
use crate::ca::CertificateAuthority;
use crate::files::write_public;
use crate::issue::{self, ServerCertRequest};
use private_worker_identity::identity::{server_names_from_der, worker_identity_from_der};
use private_worker_identity::inspect::inspect_der;
use private_worker_identity::pem::{self, read_pem};

/// What [`renew`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The new certificate followed by the CA's intermediates: what the
    /// holder presents.
    pub chain_pem: String,
    /// What kind of certificate it is, and the name it carries.
    pub kind: RenewedKind,
    /// Serial of the certificate replaced, as `certs-tool inspect` prints it.
    pub old_serial: String,
    /// Serial of the new certificate.
    pub new_serial: String,
    /// End of the new certificate's validity, RFC 3339.
    pub not_after: String,
}

/// The kind of certificate renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewedKind {
    /// A worker (TLS client) certificate with this identity.
    Worker(String),
    /// A server certificate with these DNS names and IP addresses.
    Server(Vec<String>),
}

/// Re-issues the leaf of `cert_pem` (a chain file, leaf first) for the key
/// of `key_pem`, signed by `ca`, valid `validity_days` from now (capped at
/// the CA's expiry).
///
/// # Errors
/// [`CertError::NoCertificate`] / [`CertError::MalformedCertificate`] for
/// bad certificate text; [`CertError::MalformedKey`];
/// [`CertError::RenewKeyMismatch`] when the key is not the certificate's;
/// [`CertError::NotRenewable`] for a certificate that is neither a worker's
/// nor a server's; [`CertError::InvalidValidity`], [`CertError::CaExpired`]
/// and the CSR errors of [`CertificateAuthority::sign_worker_csr`].
pub fn renew(
    cert_pem: &str,
    key_pem: &str,
    ca: &CertificateAuthority,
    validity_days: u32,
) -> Result<Renewed, CertError> {
    let blocks = pem::certificate_blocks(cert_pem)?;
    let leaf = blocks.first().ok_or(CertError::NoCertificate)?;
    let (_, x509) = X509Certificate::from_der(&leaf.der)
        .map_err(|e| CertError::MalformedCertificate(e.to_string()))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::MalformedKey(e.to_string()))?;
    if x509.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CertError::RenewKeyMismatch);
    }
    let old = inspect_der(&leaf.der)?;
    // The identity rules say which kind of certificate it is.
    let (cert_pem, kind) = if let Ok(identity) = worker_identity_from_der(&leaf.der) {
        // The CSR flow: the key signs the request, the CA checks the
        // signature and decides every usage.
        let csr = issue::worker_params(&identity)?
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(CertError::Generation)?;
        let cert = ca.sign_worker_csr(&csr, validity_days)?;
        (cert, RenewedKind::Worker(identity))
    } else if server_names_from_der(&leaf.der).is_ok() {
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("orchestrator")
            .to_string();
        let ip_addresses = old
            .ip_addresses
            .iter()
            .map(|ip| {
                ip.parse().map_err(|_| {
                    CertError::NotRenewable(format!("IP address SAN {ip:?} does not parse"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let params = issue::server_params(&ServerCertRequest {
            common_name,
            dns_names: old.dns_names.clone(),
            ip_addresses,
            validity_days,
        })?;
        let cert = ca.sign_for_key(params, &key, validity_days)?;
        let mut names = old.dns_names.clone();
        names.extend(old.ip_addresses.iter().cloned());
        (cert, RenewedKind::Server(names))
    } else {
        return Err(CertError::NotRenewable(
            "it is neither a worker certificate (one URI SAN, clientAuth) nor a server certificate (serverAuth with DNS or IP names)".into(),
        ));
    };
    let new = inspect_der(&pem::certificate_blocks(&cert_pem)?[0].der)?;
    Ok(Renewed {
        chain_pem: ca.presented_chain(&cert_pem),
        kind,
        old_serial: old.serial,
        new_serial: new.serial,
        not_after: new.not_after,
    })
}

/// [`renew`] on files: reads `cert` and `key`, and replaces `cert` with
/// the new chain atomically (written to `<cert>.renew-tmp` in the same
/// directory, synced, then renamed over `cert`). The key file is not
/// touched.
///
/// # Errors
/// As [`renew`], wrapped in [`CertError::File`] naming the file whose
/// content was refused; [`CertError::Io`] naming a file that could not be
/// read, written or renamed.
pub fn renew_files(
    cert: &Path,
    key: &Path,
    ca: &CertificateAuthority,
    validity_days: u32,
) -> Result<Renewed, CertError> {
    let cert_pem = read_pem(cert)?;
    let key_pem = read_pem(key)?;
    let renewed = renew(&cert_pem, &key_pem, ca, validity_days).map_err(|e| match e {
        CertError::RenewKeyMismatch | CertError::MalformedKey(_) => e.in_file(key),
        CertError::NoCertificate
        | CertError::MalformedCertificate(_)
        | CertError::NotRenewable(_) => e.in_file(cert),
        other => other,
    })?;
    let tmp = temporary_beside(cert);
    write_public(&tmp, &renewed.chain_pem)?;
    std::fs::rename(&tmp, cert).map_err(CertError::io(cert, "replace"))?;
    Ok(renewed)
}

fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".renew-tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::WorkerCertRequest;
    use private_worker_identity::identity::worker_identity_from_der;

    const WORKER: &str = "spiffe://example.org/worker/crm-1";

    fn ca() -> CertificateAuthority {
        CertificateAuthority::new_root("test root", 30).unwrap()
    }

    #[test]
    fn a_renewed_worker_certificate_keeps_the_key_and_identity_and_gets_a_new_serial() {
        let ca = ca();
        let old = ca
            .issue_worker(&WorkerCertRequest {
                identity: WORKER.into(),
                validity_days: 1,
            })
            .unwrap();
        let renewed = renew(&old.chain_pem, &old.key_pem, &ca, 10).unwrap();
        assert_eq!(renewed.kind, RenewedKind::Worker(WORKER.into()));
        assert_ne!(renewed.old_serial, renewed.new_serial);
        let leaf = &pem::certificate_blocks(&renewed.chain_pem).unwrap()[0];
        assert_eq!(worker_identity_from_der(&leaf.der).unwrap(), WORKER);
        let (_, x509) = X509Certificate::from_der(&leaf.der).unwrap();
        let key = KeyPair::from_pem(&old.key_pem).unwrap();
        assert_eq!(x509.public_key().raw, key.subject_public_key_info());
    }

    #[test]
    fn a_renewed_server_certificate_keeps_its_names() {
        let ca = ca();
        let old = ca
            .issue_server(&ServerCertRequest {
                common_name: "orchestrator".into(),
                dns_names: vec!["orchestrator.local".into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                validity_days: 1,
            })
            .unwrap();
        let renewed = renew(&old.chain_pem, &old.key_pem, &ca, 10).unwrap();
        assert_eq!(
            renewed.kind,
            RenewedKind::Server(vec!["orchestrator.local".into(), "127.0.0.1".into()])
        );
        let info = private_worker_identity::inspect_pem(&renewed.chain_pem).unwrap();
        assert_eq!(info[0].extended_key_usages, vec!["serverAuth".to_string()]);
        assert_eq!(info[0].serial, renewed.new_serial);
    }

    #[test]
    fn renewal_with_another_key_is_refused() {
        let ca = ca();
        let old = ca
            .issue_worker(&WorkerCertRequest {
                identity: WORKER.into(),
                validity_days: 1,
            })
            .unwrap();
        let other = KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            renew(&old.chain_pem, &other, &ca, 10),
            Err(CertError::RenewKeyMismatch)
        ));
    }

    #[test]
    fn renew_files_replaces_the_certificate_and_leaves_no_temporary_file() {
        let ca = ca();
        let dir = tempfile::tempdir().unwrap();
        let old = ca
            .issue_worker(&WorkerCertRequest {
                identity: WORKER.into(),
                validity_days: 1,
            })
            .unwrap();
        let (cert, key) = (dir.path().join("w.pem"), dir.path().join("w.key"));
        write_public(&cert, &old.chain_pem).unwrap();
        crate::files::write_private_key(&key, &old.key_pem).unwrap();
        let renewed = renew_files(&cert, &key, &ca, 10).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), renewed.chain_pem);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), old.key_pem);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
