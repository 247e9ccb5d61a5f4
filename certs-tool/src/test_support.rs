//! Chain verification with rustls, for this crate's tests only: the same
//! verifiers the worker and the orchestrator use during the handshake
//! ([`private_worker_identity::tls`]).

use std::sync::Arc;

use private_worker_identity::pem::certificate_blocks;
use private_worker_identity::tls::{client_verifier, root_store, server_verifier};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    certificate_blocks(pem)
        .unwrap()
        .into_iter()
        .map(|b| b.der)
        .collect()
}

fn roots(root_pem: &str) -> Arc<RootCertStore> {
    Arc::new(root_store(ders(root_pem)).unwrap())
}

/// Verifies `chain_pem` (leaf then intermediates) as a client certificate
/// against `root_pem` as the only trust anchor.
pub(crate) fn verify_client(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
    let verifier = client_verifier(roots(root_pem), Vec::new()).unwrap();
    let chain = ders(chain_pem);
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

/// Verifies `chain_pem` as a server certificate for `name` (DNS name or IP).
pub(crate) fn verify_server(
    root_pem: &str,
    chain_pem: &str,
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier = server_verifier(roots(root_pem)).unwrap();
    let chain = ders(chain_pem);
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

/// The DER of the first certificate of `pem`.
pub(crate) fn first_der(pem: &str) -> CertificateDer<'static> {
    ders(pem).remove(0)
}
