//! The worker's TLS identity and its outbound connector.
//!
//! Loads the worker's certificate chain and key and the CA it trusts for
//! the orchestrator, checks that the worker certificate carries a usable
//! identity (one URI SAN, clientAuth), and dials the orchestrator: TCP, then
//! a TLS handshake that presents the worker certificate and verifies that
//! the orchestrator's certificate chains to the configured CA *and* names
//! the configured `server_name`. Anything else is refused before a byte of
//! gRPC is sent.
//!
//! It does not retry (the session does) and opens no listening socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::TlsFiles;

/// Why the TLS set-up failed. All variants are configuration problems: fix
/// the files and restart.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The worker certificate does not carry a usable identity.
    #[error("{path}: {source}")]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// Which rule it breaks.
        source: certs_tool::identity::IdentityError,
    },
    /// rustls refused the material (for example, key and certificate differ).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The configured orchestrator name is not a DNS name or IP address.
    #[error("orchestrator.server_name `{0}` is not a DNS name or IP address")]
    ServerName(String),
}

/// Why one dial failed; always worth retrying later.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect plus handshake took too long.
    #[error("connecting to {address} timed out after {after:?}")]
    Timeout {
        /// Where.
        address: String,
        /// Limit that ran out.
        after: Duration,
    },
    /// TCP connect failed.
    #[error("TCP connect to {address} failed: {source}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (includes an orchestrator certificate that
    /// is untrusted or does not name `server_name`, and the orchestrator
    /// refusing the worker certificate).
    #[error("TLS handshake with {address} failed: {source}")]
    Handshake {
        /// Where.
        address: String,
        /// Why (rustls' description).
        source: std::io::Error,
    },
    /// The HTTP proxy could not be reached, refused the CONNECT (407,
    /// 403, ...) or broke it off; the variant of [`crate::proxy::ProxyError`]
    /// says what to fix.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    /// HTTP/2 could not be set up over the TLS connection.
    #[error("HTTP/2 set-up with {address} failed: {source}")]
    Channel {
        /// Where.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// Everything needed to dial the orchestrator.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    identity: String,
    /// Direct, or through an HTTP proxy ([`crate::proxy`]).
    route: crate::proxy::Route,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_tool::files::read_certificates(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        message: e.with_causes(),
    })
}

impl ClientTls {
    /// Loads and checks the TLS files.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and the problem.
    pub fn load(files: &TlsFiles, server_name: &str) -> Result<ClientTls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&files.ca_cert)? {
            roots.add(cert).map_err(|e| TlsError::File {
                path: files.ca_cert.clone(),
                message: format!("not a usable trust anchor: {e}"),
            })?;
        }
        let chain = read_certs(&files.cert)?;
        let identity =
            certs_tool::identity::worker_identity_from_der(&chain[0]).map_err(|source| {
                TlsError::Identity {
                    path: files.cert.clone(),
                    source,
                }
            })?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
            path: files.key.clone(),
            message: e.to_string(),
        })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            identity,
            route: crate::proxy::Route::default(),
        })
    }

    /// The same TLS material, dialing along `route` (direct or through an
    /// HTTP proxy).
    pub fn with_route(mut self, route: crate::proxy::Route) -> ClientTls {
        self.route = route;
        self
    }

    /// The worker's identity: the URI SAN of its certificate.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Dials `address` and completes the mutual TLS handshake within `timeout`.
    ///
    /// # Errors
    /// [`DialError`]; every variant is worth a retry after a backoff.
    pub async fn dial(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, DialError> {
        let attempt = async {
            // Straight to `address`, or a CONNECT tunnel through the proxy.
            let tcp = self.route.connect(address).await.map_err(|e| match e {
                crate::proxy::ConnectError::Direct(source) => DialError::Connect {
                    address: address.to_string(),
                    source,
                },
                crate::proxy::ConnectError::Proxy(e) => DialError::Proxy(e),
            })?;
            self.connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|source| DialError::Handshake {
                    address: address.to_string(),
                    source,
                })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| DialError::Timeout {
                address: address.to_string(),
                after: timeout,
            })?
    }

    /// Dials `address` (see [`ClientTls::dial`]) and sets up one HTTP/2
    /// channel over that connection, with keep-alive pings so that idle
    /// streams survive load balancers and dead peers are noticed.
    ///
    /// The channel never reconnects by itself: when the connection dies,
    /// the caller dials again (with its own backoff).
    ///
    /// # Errors
    /// [`DialError`]; every variant is worth a retry after a backoff.
    pub async fn channel(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<tonic::transport::Channel, DialError> {
        let dialed = self.dial(address, timeout).await?;
        // The connector hands over the connection already dialed, once.
        let slot = Arc::new(std::sync::Mutex::new(Some(dialed)));
        let channel_error = |source| DialError::Channel {
            address: address.to_string(),
            source,
        };
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(channel_error)?
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_with_connector(tower::service_fn(move |_uri| {
                let slot = slot.clone();
                async move {
                    let stream = slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .ok_or_else(|| std::io::Error::other("connection already used"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(channel_error)
    }
}

/// HTTP/2 PING interval on the stream's connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is dead.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
