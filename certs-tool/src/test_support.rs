//! Chain verification with rustls, for this crate's tests only: the same
//! verifiers the worker and the orchestrator use during the handshake.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::pem::certificate_blocks;

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    certificate_blocks(pem)
        .unwrap()
        .into_iter()
        .map(|b| b.der)
        .collect()
}

fn roots(root_pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in ders(root_pem) {
        roots.add(der).unwrap();
    }
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Verifies `chain_pem` (leaf then intermediates) as a client certificate
/// against `root_pem` as the only trust anchor.
pub(crate) fn verify_client(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(root_pem), provider())
        .build()
        .unwrap();
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
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(root_pem), provider())
        .build()
        .unwrap();
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
