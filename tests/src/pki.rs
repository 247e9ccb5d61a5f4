//! Fresh PKI for one test or demo run, made with the certs-tool library:
//! a root CA, an intermediate, an orchestrator server certificate and one
//! worker certificate, written to a directory.

use std::path::{Path, PathBuf};

use certs_tool::dev::{DevOptions, write_dev_bundle};

/// The trust domain of test identities.
pub const TRUST_DOMAIN: &str = "example.org";
/// The name the orchestrator's certificate carries and workers expect.
pub const ORCHESTRATOR_NAME: &str = "orchestrator.local";

/// Paths of one PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Root CA certificate (trust anchor for both sides).
    pub ca_cert: PathBuf,
    /// Orchestrator certificate chain.
    pub orchestrator_cert: PathBuf,
    /// Orchestrator key.
    pub orchestrator_key: PathBuf,
    /// Worker certificate chain.
    pub worker_cert: PathBuf,
    /// Worker key.
    pub worker_key: PathBuf,
    /// The worker's identity (its URI SAN).
    pub worker_identity: String,
    /// Further workers of the same PKI: (identity, certificate, key).
    pub other_workers: Vec<(String, PathBuf, PathBuf)>,
}

impl Pki {
    /// Writes a dev bundle for worker `worker_id` into `dir`.
    ///
    /// # Panics
    /// When the certs-tool library fails (a test set-up bug).
    pub fn create(dir: &Path, worker_id: &str) -> Pki {
        Pki::create_for(dir, &[worker_id])
    }

    /// Writes a dev bundle with one certificate per id in `worker_ids` (at
    /// least one); the first is [`Pki::worker_cert`], the rest
    /// [`Pki::other_workers`].
    ///
    /// # Panics
    /// When the certs-tool library fails (a test set-up bug).
    pub fn create_for(dir: &Path, worker_ids: &[&str]) -> Pki {
        let bundle = write_dev_bundle(&DevOptions {
            out_dir: dir.to_path_buf(),
            trust_domain: TRUST_DOMAIN.to_string(),
            worker_ids: worker_ids.iter().map(|id| id.to_string()).collect(),
            server_dns: vec!["localhost".into(), ORCHESTRATOR_NAME.into()],
            server_ips: vec!["127.0.0.1".parse().unwrap()],
            validity_days: 7,
        })
        .expect("certs-tool dev bundle");
        let (identity, cert, key) = bundle.workers[0].clone();
        Pki {
            ca_cert: bundle.ca_cert,
            orchestrator_cert: bundle.orchestrator_cert,
            orchestrator_key: bundle.orchestrator_key,
            worker_cert: cert,
            worker_key: key,
            worker_identity: identity,
            other_workers: bundle.workers[1..].to_vec(),
        }
    }
}
