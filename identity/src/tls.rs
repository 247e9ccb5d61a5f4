//! The rustls configs of both ends, built one way.
//!
//! Every config uses the aws-lc-rs provider ([`provider`]) and rustls' safe
//! default protocol versions (TLS 1.3 and 1.2), and offers ALPN `h2` (the
//! stream is gRPC). The worker's [`client_config`] presents its chain and
//! trusts the CA bundle for the orchestrator; the orchestrator's
//! [`server_config`] takes a client verifier ([`client_verifier`]: webpki
//! against the CA bundle, optionally with CRLs) and a
//! [`ServerCertResolver`], whose certificate can be swapped for new
//! handshakes when the files rotate. HTTPS servers without client
//! certificates (the admin API) use [`https_server_config`], which also
//! offers `http/1.1`.
//!
//! What it does not do: read files ([`crate::material`]), dial, accept, or
//! decide which verified identity is admitted (the orchestrator's
//! admission does).

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// The ALPN protocol of the worker stream: HTTP/2, for gRPC.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1's ALPN protocol, offered by the HTTPS servers besides `h2`.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider of every config here: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A root store holding `anchors`.
///
/// # Errors
/// The rustls error of the first anchor that is not usable.
pub fn root_store(
    anchors: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor)?;
    }
    Ok(roots)
}

/// The worker's client config: trusts `roots` for the server, presents
/// `chain` with `key`, offers ALPN `h2`.
///
/// # Errors
/// [`rustls::Error::InconsistentKeys`] when `key` is not the leaf's; other
/// rustls errors for unusable material.
pub fn client_config(
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The orchestrator's server config: clients verified by `verifier`, the
/// certificate of `resolver` presented, ALPN `h2`.
///
/// # Errors
/// A rustls error when the provider supports no safe protocol version
/// (never with aws-lc-rs).
pub fn server_config(
    verifier: Arc<dyn ClientCertVerifier>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// An HTTPS server config without client certificates (the orchestrator's
/// admin API, the tests' fake vault): presents `chain` with `key`, offers
/// ALPN `h2` and `http/1.1`.
///
/// # Errors
/// [`rustls::Error::InconsistentKeys`] when `key` is not the leaf's; other
/// rustls errors for unusable material.
pub fn https_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// A client certificate verifier: webpki against `roots`; with `crls`, the
/// leaf (only the end entity) must also not be revoked, and its issuer must
/// have a CRL among them (an unknown status is refused).
///
/// # Errors
/// Why no verifier can be built (no anchors, a CRL that does not parse).
pub fn client_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, VerifierBuilderError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = if crls.is_empty() {
        builder
    } else {
        builder.with_crls(crls).only_check_end_entity_revocation()
    };
    builder.build()
}

/// A server certificate verifier: webpki against `roots` (the chain and
/// the server name).
///
/// # Errors
/// Why no verifier can be built (no anchors).
pub fn server_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn ServerCertVerifier>, VerifierBuilderError> {
    Ok(WebPkiServerVerifier::builder_with_provider(roots, provider()).build()?)
}

/// The server certificate presented at each new handshake; swapped with
/// [`ServerCertResolver::replace`] when the files rotate. Handshakes
/// already done keep theirs.
#[derive(Debug)]
pub struct ServerCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertResolver {
    /// Presents `key` until it is replaced.
    pub fn new(key: Arc<CertifiedKey>) -> ServerCertResolver {
        ServerCertResolver {
            current: RwLock::new(key),
        }
    }

    /// Presents `key` from the next handshake on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The certificate and key presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
