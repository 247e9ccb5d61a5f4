//! TLS for the admin API (`[admin] tls_cert` / `tls_key`): server
//! authentication only, so bearer tokens never cross a network in clear.
//! Required for a listener that is not on a loopback address.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP
//! connections and runs each handshake in its own task with a deadline
//! ([`crate::tls::HANDSHAKE_TIMEOUT`]), so one slow client cannot hold up
//! the others; finished handshakes queue for axum, which then serves them
//! like plain connections (graceful shutdown included). At most
//! [`MAX_HANDSHAKES`] handshakes run at once (a connection past that is
//! closed at accept), and failures are logged sparsely, so a flood neither
//! exhausts file descriptors nor fills the log.
//!
//! What it does not do: client certificates (callers authenticate with a
//! token), or reload the certificate without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use private_worker_identity::pem;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::tls::{HANDSHAKE_TIMEOUT, TlsError};

/// How many finished handshakes may wait for axum to take them.
const QUEUE: usize = 64;

/// The admin API's rustls server config from a PEM chain (leaf first) and
/// key; no client certificates; ALPN `h2` and `http/1.1`.
///
/// # Errors
/// [`TlsError::File`] naming `admin.tls_cert` or `admin.tls_key`, or
/// [`TlsError::Rustls`] when the key does not fit the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = pem::read_certificates(cert).map_err(|e| TlsError::File {
        what: "admin.tls_cert",
        path: cert.to_path_buf(),
        message: match e {
            pem::PemError::Read { source, .. } => format!("cannot read: {source}"),
            other => other.to_string(),
        },
    })?;
    let key = pem::read_file(key)
        .and_then(|bytes| pem::parse_private_key(&bytes))
        .map_err(|e| TlsError::File {
            what: "admin.tls_key",
            path: key.to_path_buf(),
            message: match e {
                pem::PemError::Read { source, .. } => format!("cannot read: {source}"),
                other => other.to_string(),
            },
        })?;
    let config = private_worker_identity::tls::https_server_config(chain, key)
        .map_err(|e| TlsError::Rustls(format!("admin certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// Most admin connections in their TLS handshake at once.
pub const MAX_HANDSHAKES: usize = 64;

/// Logs a refused or failed admin connection: the first 20, then one in
/// every 1,000, so a flood cannot fill the log.
fn log_failure(count: &std::sync::atomic::AtomicU64, peer: SocketAddr, what: &str) {
    let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n <= 20 || n.is_multiple_of(1000) {
        tracing::info!(%peer, failures_so_far = n, "{what}");
    }
}

/// A listener yielding TLS connections whose handshake is done.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until `shutdown`.
    ///
    /// # Errors
    /// The listener's local address cannot be read.
    pub fn spawn(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "admin API accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                // At most MAX_HANDSHAKES connections in their handshake:
                // past that a new one is closed at once, so a flood cannot
                // exhaust the process's file descriptors.
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    log_failure(
                        &failures,
                        peer,
                        "too many admin API TLS handshakes in progress; connection closed",
                    );
                    drop(tcp);
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let failures = failures.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => log_failure(
                            &failures,
                            peer,
                            &format!("admin API TLS handshake failed: {e}"),
                        ),
                        Err(_) => log_failure(&failures, peer, "admin API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task ended (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
