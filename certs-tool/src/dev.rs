//! A complete development PKI in one call.
//!
//! [`write_dev_bundle`] creates a root CA, an intermediate CA signed by it,
//! an orchestrator server certificate and one client certificate per
//! worker, all issued by the intermediate, and writes them to a directory:
//!
//! | file | content |
//! |---|---|
//! | `ca.pem`, `ca.key` | root CA: the trust anchor of both sides |
//! | `intermediate.pem`, `intermediate.key` | intermediate CA (signs the leaves) |
//! | `orchestrator.pem`, `orchestrator.key` | server chain (leaf + intermediate) and key |
//! | `worker-<id>.pem`, `worker-<id>.key` | worker chain (leaf + intermediate) and key |
//!
//! The worker identity is `spiffe://<trust_domain>/worker/<id>`. Keys are
//! written with mode 0600. It is for development, tests and demos: every key,
//! the root's included, is generated on this host and written next to the
//! others, which a production PKI must not do (use the CSR flow there).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::files::{write_private_key, write_public};
use crate::issue::validate_path_segment;
use crate::{CertError, CertificateAuthority, IssuedCert, ServerCertRequest, WorkerCertRequest};

/// Default trust domain of worker identities.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";
/// Default worker id.
pub const DEFAULT_WORKER_ID: &str = "worker-1";
/// Default DNS names of the orchestrator certificate.
pub const DEFAULT_SERVER_DNS: [&str; 2] = ["localhost", "orchestrator.local"];
/// Default validity of every certificate of a dev bundle, in days.
pub const DEFAULT_VALIDITY_DAYS: u32 = 90;
/// Default output directory.
pub const DEFAULT_OUT_DIR: &str = "dev-pki";
/// Common name of the dev root CA.
pub const ROOT_CN: &str = "private-worker dev root CA";
/// Common name of the dev intermediate CA.
pub const INTERMEDIATE_CN: &str = "private-worker dev intermediate CA";
/// Common name of the orchestrator certificate.
pub const ORCHESTRATOR_CN: &str = "orchestrator";

/// What [`write_dev_bundle`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevOptions {
    /// Directory to write to; created if missing. Existing files are replaced.
    pub out_dir: PathBuf,
    /// Trust domain of the worker identities (default `example.org`).
    pub trust_domain: String,
    /// One worker certificate per id (default `["worker-1"]`); an id is one
    /// SPIFFE path segment: letters, digits, `.`, `-`, `_`.
    pub worker_ids: Vec<String>,
    /// DNS names of the orchestrator (default `localhost`, `orchestrator.local`).
    pub server_dns: Vec<String>,
    /// IP addresses of the orchestrator (default `127.0.0.1`, `::1`).
    pub server_ips: Vec<IpAddr>,
    /// Validity of every certificate, in days (default 90).
    pub validity_days: u32,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            out_dir: PathBuf::from(DEFAULT_OUT_DIR),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            worker_ids: vec![DEFAULT_WORKER_ID.to_string()],
            server_dns: DEFAULT_SERVER_DNS
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            server_ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            validity_days: DEFAULT_VALIDITY_DAYS,
        }
    }
}

/// Where [`write_dev_bundle`] wrote things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevBundle {
    /// Root CA certificate (`ca.pem`): the trust anchor for both sides.
    pub ca_cert: PathBuf,
    /// Root CA key (`ca.key`).
    pub ca_key: PathBuf,
    /// Intermediate CA certificate (`intermediate.pem`).
    pub intermediate_cert: PathBuf,
    /// Intermediate CA key (`intermediate.key`), for issuing more leaves.
    pub intermediate_key: PathBuf,
    /// Orchestrator chain, leaf then intermediate (`orchestrator.pem`).
    pub orchestrator_cert: PathBuf,
    /// Orchestrator key (`orchestrator.key`).
    pub orchestrator_key: PathBuf,
    /// Per worker: (identity, chain file `worker-<id>.pem`, key file `worker-<id>.key`).
    pub workers: Vec<(String, PathBuf, PathBuf)>,
}

impl DevBundle {
    /// Every file written, certificates and keys.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![
            self.ca_cert.as_path(),
            self.ca_key.as_path(),
            self.intermediate_cert.as_path(),
            self.intermediate_key.as_path(),
            self.orchestrator_cert.as_path(),
            self.orchestrator_key.as_path(),
        ];
        for (_, cert, key) in &self.workers {
            files.push(cert);
            files.push(key);
        }
        files
    }
}

/// The identity of worker `worker_id` in `trust_domain`.
pub fn worker_identity(trust_domain: &str, worker_id: &str) -> String {
    format!("spiffe://{trust_domain}/worker/{worker_id}")
}

/// Creates a root, an intermediate, an orchestrator certificate and one
/// certificate per worker, and writes them to `opts.out_dir`.
///
/// Everything is validated before anything is written.
///
/// # Errors
/// [`CertError::InvalidName`] for an empty or duplicate worker id list or a
/// bad id or server name; [`CertError::InvalidIdentity`] for a bad trust
/// domain; [`CertError::InvalidValidity`]; [`CertError::Io`] naming the path
/// that could not be created or written; [`CertError::Generation`].
pub fn write_dev_bundle(opts: &DevOptions) -> Result<DevBundle, CertError> {
    if opts.worker_ids.is_empty() {
        return Err(CertError::InvalidName {
            name: String::new(),
            reason: "a dev bundle needs at least one worker id".into(),
        });
    }
    for (i, id) in opts.worker_ids.iter().enumerate() {
        validate_path_segment(id).map_err(|reason| CertError::InvalidName {
            name: id.clone(),
            reason,
        })?;
        if opts.worker_ids[..i].contains(id) {
            return Err(CertError::InvalidName {
                name: id.clone(),
                reason: "this worker id is listed twice".into(),
            });
        }
    }

    // Issue everything in memory first: a bad input leaves no half-written
    // directory behind.
    let root = CertificateAuthority::new_root(ROOT_CN, opts.validity_days)?;
    let intermediate = root.new_intermediate(INTERMEDIATE_CN, opts.validity_days)?;
    let orchestrator = intermediate.issue_server(&ServerCertRequest {
        common_name: ORCHESTRATOR_CN.to_string(),
        dns_names: opts.server_dns.clone(),
        ip_addresses: opts.server_ips.clone(),
        validity_days: opts.validity_days,
    })?;
    let workers = opts
        .worker_ids
        .iter()
        .map(|id| {
            let identity = worker_identity(&opts.trust_domain, id);
            let issued = intermediate.issue_worker(&WorkerCertRequest {
                identity: identity.clone(),
                validity_days: opts.validity_days,
            })?;
            Ok((id.as_str(), identity, issued))
        })
        .collect::<Result<Vec<_>, CertError>>()?;

    let dir = &opts.out_dir;
    std::fs::create_dir_all(dir).map_err(CertError::io(dir, "create the directory"))?;
    let bundle = DevBundle {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        intermediate_cert: dir.join("intermediate.pem"),
        intermediate_key: dir.join("intermediate.key"),
        orchestrator_cert: dir.join("orchestrator.pem"),
        orchestrator_key: dir.join("orchestrator.key"),
        workers: workers
            .iter()
            .map(|(id, identity, _)| {
                (
                    identity.clone(),
                    dir.join(format!("worker-{id}.pem")),
                    dir.join(format!("worker-{id}.key")),
                )
            })
            .collect(),
    };

    write_public(&bundle.ca_cert, root.cert_pem())?;
    write_private_key(&bundle.ca_key, &root.key_pem())?;
    write_public(&bundle.intermediate_cert, &intermediate.chain_pem())?;
    write_private_key(&bundle.intermediate_key, &intermediate.key_pem())?;
    write_leaf(
        &bundle.orchestrator_cert,
        &bundle.orchestrator_key,
        &orchestrator,
    )?;
    for ((_, _, issued), (_, cert, key)) in workers.iter().zip(&bundle.workers) {
        write_leaf(cert, key, issued)?;
    }
    Ok(bundle)
}

fn write_leaf(cert: &Path, key: &Path, issued: &IssuedCert) -> Result<(), CertError> {
    write_public(cert, &issued.chain_pem)?;
    write_private_key(key, &issued.key_pem)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_support::{first_der, verify_client, verify_server};
    use private_worker_identity::identity::worker_identity_from_der;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn a_dev_bundle_writes_every_file_and_every_chain_verifies_to_ca_pem() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevOptions {
            out_dir: dir.path().join("pki"),
            worker_ids: vec!["crm-1".into(), "erp-2".into()],
            ..DevOptions::default()
        };
        let bundle = write_dev_bundle(&opts).unwrap();

        let mut names: Vec<String> = std::fs::read_dir(&opts.out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ca.key",
                "ca.pem",
                "intermediate.key",
                "intermediate.pem",
                "orchestrator.key",
                "orchestrator.pem",
                "worker-crm-1.key",
                "worker-crm-1.pem",
                "worker-erp-2.key",
                "worker-erp-2.pem",
            ]
        );
        for file in bundle.files() {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            let is_key = file.extension().is_some_and(|e| e == "key");
            assert_eq!(
                mode,
                if is_key { 0o600 } else { 0o644 },
                "{}",
                file.display()
            );
        }

        let ca = read(&bundle.ca_cert);
        let orchestrator = read(&bundle.orchestrator_cert);
        for name in ["localhost", "orchestrator.local", "127.0.0.1", "::1"] {
            verify_server(&ca, &orchestrator, name).unwrap();
        }
        assert_eq!(bundle.workers.len(), 2);
        for ((identity, cert, key), id) in bundle.workers.iter().zip(["crm-1", "erp-2"]) {
            assert_eq!(identity, &format!("spiffe://example.org/worker/{id}"));
            let chain = read(cert);
            verify_client(&ca, &chain).unwrap();
            assert_eq!(
                &worker_identity_from_der(&first_der(&chain)).unwrap(),
                identity
            );
            assert!(read(key).contains("PRIVATE KEY"));
        }
        // The intermediate files load back as a CA (what tests/ does for negative tests).
        let intermediate = CertificateAuthority::from_pem(
            &read(&bundle.intermediate_cert),
            &read(&bundle.intermediate_key),
        )
        .unwrap();
        let extra = intermediate
            .issue_worker(&WorkerCertRequest {
                identity: worker_identity("example.org", "late"),
                validity_days: 1,
            })
            .unwrap();
        verify_client(&ca, &extra.chain_pem).unwrap();
    }

    #[test]
    fn bad_worker_ids_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for ids in [
            vec![],
            vec!["../escape".to_string()],
            vec!["a".into(), "a".into()],
        ] {
            let opts = DevOptions {
                out_dir: dir.path().join("pki"),
                worker_ids: ids.clone(),
                ..DevOptions::default()
            };
            assert!(
                matches!(write_dev_bundle(&opts), Err(CertError::InvalidName { .. })),
                "{ids:?}"
            );
            assert!(!opts.out_dir.exists());
        }
        let opts = DevOptions {
            out_dir: dir.path().join("pki"),
            trust_domain: "Not A Domain".into(),
            ..DevOptions::default()
        };
        assert!(matches!(
            write_dev_bundle(&opts),
            Err(CertError::InvalidIdentity { .. })
        ));
        assert!(!opts.out_dir.exists());
    }
}
