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
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

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
        source: private_worker_identity::identity::IdentityError,
    },
    /// The private key is not the certificate's (for example, one of the
    /// two was replaced and the other not yet): put the matching pair in
    /// place.
    #[error(
        "{key} does not match the certificate in {cert}; put the key and certificate of one pair in place"
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// rustls refused the material.
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

/// How often the worker's TLS files are read again by default
/// (`[tls] reload_interval`).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// How long before its expiry the certificate is warned about by default
/// (`[tls] expiry_warning`).
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often an expiring certificate is warned about again.
pub const EXPIRY_REMINDER: Duration = Duration::from_secs(24 * 3600);

/// How the worker follows its TLS files while it runs (`[tls]
/// reload_interval`, `[tls] expiry_warning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSettings {
    /// How often the certificate, key and CA files are read again.
    pub reload_interval: Duration,
    /// Warn (at start, then daily) once the certificate expires within this.
    pub expiry_warning: Duration,
}

impl Default for RotationSettings {
    fn default() -> Self {
        RotationSettings {
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            expiry_warning: DEFAULT_EXPIRY_WARNING,
        }
    }
}

/// The certificate a TLS peer presents, in brief: what status, `--check`
/// and the rotation logs show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Serial number, hex bytes separated by colons (as `certs-tool
    /// inspect` prints it).
    pub serial: String,
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
        let info = private_worker_identity::inspect::inspect_der(der).map_err(|e| e.to_string())?;
        let not_after = time::OffsetDateTime::parse(
            &info.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| format!("unreadable notAfter {:?}: {e}", info.not_after))?;
        Ok(CertificateSummary {
            serial: info.serial,
            not_after: not_after.into(),
            not_after_rfc3339: info.not_after,
        })
    }

    /// How long until it expires (zero once it has).
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

/// Everything needed to dial the orchestrator: the worker's certificate,
/// key and trusted CA as last loaded (swapped atomically when the files
/// change, see [`ClientTls::reload_if_changed`]), the orchestrator's name
/// and the worker's identity. Clones share the same material.
#[derive(Clone)]
pub struct ClientTls {
    shared: Arc<Shared>,
    /// Direct, or through an HTTP proxy ([`crate::proxy`]).
    route: crate::proxy::Route,
}

struct Shared {
    files: TlsFiles,
    server_name: ServerName<'static>,
    identity: String,
    current: RwLock<Material>,
    /// The certificate in use; changes on every rotation.
    rotated: watch::Sender<CertificateSummary>,
    /// SHA-256 of the files as last read (good or not), or why they could
    /// not be read, so a change is handled, and a broken one warned about,
    /// once.
    seen: Mutex<Result<[u8; 32], String>>,
    /// The orchestrator's certificate at the last handshake.
    peer: Mutex<Option<CertificateSummary>>,
}

/// One consistent set of TLS files, ready for handshakes.
struct Material {
    connector: TlsConnector,
    summary: CertificateSummary,
    digest: [u8; 32],
}

/// The three files' bytes as read at one poll.
struct FileBytes {
    ca_cert: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl FileBytes {
    fn read(files: &TlsFiles) -> Result<FileBytes, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::File {
                path: path.to_path_buf(),
                message: format!("cannot read: {e}"),
            })
        };
        Ok(FileBytes {
            ca_cert: read(&files.ca_cert)?,
            cert: read(&files.cert)?,
            key: read(&files.key)?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for part in [&self.ca_cert, &self.cert, &self.key] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            "no CERTIFICATE block found; pass a PEM certificate file".into(),
        ));
    }
    Ok(certs)
}

/// Builds the handshake material from one read of the files; also returns
/// the identity the certificate names.
fn build_material(files: &TlsFiles, bytes: &FileBytes) -> Result<(Material, String), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(&files.ca_cert, &bytes.ca_cert)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: files.ca_cert.clone(),
            message: format!("not a usable trust anchor: {e}"),
        })?;
    }
    let chain = parse_certs(&files.cert, &bytes.cert)?;
    let identity = private_worker_identity::identity::worker_identity_from_der(&chain[0]).map_err(
        |source| TlsError::Identity {
            path: files.cert.clone(),
            source,
        },
    )?;
    let summary = CertificateSummary::of_der(&chain[0]).map_err(|message| TlsError::File {
        path: files.cert.clone(),
        message,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&bytes.key).map_err(|e| TlsError::File {
        path: files.key.clone(),
        message: format!("no PEM private key: {e}"),
    })?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                key: files.key.clone(),
                cert: files.cert.clone(),
            },
            other => TlsError::Rustls(other),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((
        Material {
            connector: TlsConnector::from(Arc::new(config)),
            summary,
            digest: bytes.digest(),
        },
        identity,
    ))
}

/// What [`ClientTls::reload_if_changed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last read.
    Unchanged,
    /// New files were taken; the next handshake uses them.
    Rotated {
        /// The certificate used until now.
        old: CertificateSummary,
        /// The certificate used from now on.
        new: CertificateSummary,
    },
    /// The files changed but are unusable (logged once): the last good
    /// material stays in use.
    Refused(String),
}

impl ClientTls {
    /// Loads and checks the TLS files.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and the problem.
    pub fn load(files: &TlsFiles, server_name: &str) -> Result<ClientTls, TlsError> {
        let bytes = FileBytes::read(files)?;
        let (material, identity) = build_material(files, &bytes)?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        Ok(ClientTls {
            shared: Arc::new(Shared {
                files: files.clone(),
                server_name,
                identity,
                seen: Mutex::new(Ok(material.digest)),
                rotated: watch::Sender::new(material.summary.clone()),
                current: RwLock::new(material),
                peer: Mutex::new(None),
            }),
            route: crate::proxy::Route::default(),
        })
    }

    /// The same TLS material, dialing along `route` (direct or through an
    /// HTTP proxy).
    #[must_use]
    pub fn with_route(mut self, route: crate::proxy::Route) -> ClientTls {
        self.route = route;
        self
    }

    /// The worker's identity: the URI SAN of its certificate. It never
    /// changes while the worker runs (a rotation to another identity is
    /// refused).
    pub fn identity(&self) -> &str {
        &self.shared.identity
    }

    /// The worker certificate in use now (its serial and expiry): cheap,
    /// for status reports.
    pub fn certificate(&self) -> CertificateSummary {
        self.shared.rotated.borrow().clone()
    }

    /// A channel that changes whenever a new certificate is taken; its
    /// value is the certificate in use.
    pub fn subscribe(&self) -> watch::Receiver<CertificateSummary> {
        self.shared.rotated.subscribe()
    }

    /// The orchestrator's certificate at the last completed handshake.
    pub fn orchestrator_certificate(&self) -> Option<CertificateSummary> {
        lock(&self.shared.peer).clone()
    }

    fn connector(&self) -> TlsConnector {
        self.shared
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .connector
            .clone()
    }

    /// Reads the TLS files again and, when their content changed (SHA-256,
    /// not the modification time), takes them if they are usable: a
    /// certificate that parses, names this worker's identity, matches the
    /// key, and a CA file of trust anchors. Otherwise the material in use
    /// stays, and the problem is logged once per change of the files (a
    /// certificate and key written one after the other are taken at the
    /// poll that sees both).
    pub fn reload_if_changed(&self) -> Reload {
        let shared = &self.shared;
        let in_use = self.certificate();
        let bytes = match FileBytes::read(&shared.files) {
            Ok(bytes) => bytes,
            Err(e) => {
                let problem = e.to_string();
                let mut seen = lock(&shared.seen);
                if seen.as_ref().err() != Some(&problem) {
                    tracing::warn!(error = %problem, serial = %in_use.serial, "a TLS file cannot be read; keeping the last good certificate and key");
                    *seen = Err(problem.clone());
                }
                return Reload::Refused(problem);
            }
        };
        let digest = bytes.digest();
        {
            let mut seen = lock(&shared.seen);
            if seen.as_ref().ok() == Some(&digest) {
                return Reload::Unchanged;
            }
            *seen = Ok(digest);
        }
        let built = build_material(&shared.files, &bytes).and_then(|(material, identity)| {
            if identity == shared.identity {
                Ok(material)
            } else {
                Err(TlsError::File {
                    path: shared.files.cert.clone(),
                    message: format!(
                        "names identity {identity:?}, but this worker runs as {:?}; restart the worker to change its identity",
                        shared.identity
                    ),
                })
            }
        });
        let material = match built {
            Ok(material) => material,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    serial = %in_use.serial,
                    "the TLS files changed but cannot be used; keeping the last good certificate and key (checked again at the next change)"
                );
                return Reload::Refused(e.to_string());
            }
        };
        let new = material.summary.clone();
        if material.digest == self.current_digest() {
            return Reload::Unchanged;
        }
        *shared
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = material;
        tracing::info!(
            old_serial = %in_use.serial,
            new_serial = %new.serial,
            not_after = %new.not_after_rfc3339,
            "new TLS files taken: the next handshake uses them"
        );
        shared.rotated.send_replace(new.clone());
        Reload::Rotated { old: in_use, new }
    }

    fn current_digest(&self) -> [u8; 32] {
        self.shared
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .digest
    }

    /// Polls the files every `settings.reload_interval` until `shutdown`
    /// ([`ClientTls::reload_if_changed`]), and warns when the certificate
    /// in use expires within `settings.expiry_warning`: at the first poll
    /// (the start), after each rotation, and once a day.
    pub async fn watch(self, settings: RotationSettings, shutdown: CancellationToken) {
        let mut warned: Option<(String, tokio::time::Instant)> = None;
        loop {
            let summary = self.certificate();
            let due = warned.as_ref().is_none_or(|(serial, at)| {
                *serial != summary.serial || at.elapsed() >= EXPIRY_REMINDER
            });
            if due && expiry_warning(&summary, settings.expiry_warning, SystemTime::now()) {
                warned = Some((summary.serial.clone(), tokio::time::Instant::now()));
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(settings.reload_interval) => {}
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
}

/// Logs the expiry warning for `summary` when it expires within `window`
/// of `now`; returns whether it did.
fn expiry_warning(summary: &CertificateSummary, window: Duration, now: SystemTime) -> bool {
    let left = summary.expires_in(now);
    if left >= window {
        return false;
    }
    if left.is_zero() {
        tracing::error!(
            serial = %summary.serial,
            not_after = %summary.not_after_rfc3339,
            "the worker certificate has expired: the orchestrator refuses it; renew it (certs-tool renew) and the worker takes it without a restart"
        );
    } else {
        tracing::warn!(
            serial = %summary.serial,
            not_after = %summary.not_after_rfc3339,
            days_left = left.as_secs() / 86_400,
            "the worker certificate expires soon (within tls.expiry_warning); renew it (certs-tool renew) and the worker takes it without a restart"
        );
    }
    true
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClientTls {
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
            let tcp = self
                .route
                .connect(address, timeout)
                .await
                .map_err(|e| match e {
                    crate::proxy::ConnectError::Direct(source) => DialError::Connect {
                        address: address.to_string(),
                        source,
                    },
                    crate::proxy::ConnectError::Proxy(e) => DialError::Proxy(e),
                })?;
            self.connector()
                .connect(self.shared.server_name.clone(), tcp)
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
        self.note_peer(dialed.get_ref().1.peer_certificates());
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

impl ClientTls {
    /// Records (and logs) the orchestrator's certificate of a completed
    /// handshake.
    fn note_peer(&self, chain: Option<&[CertificateDer<'static>]>) {
        let Some(summary) = chain
            .and_then(<[_]>::first)
            .and_then(|leaf| CertificateSummary::of_der(leaf).ok())
        else {
            return;
        };
        let mut peer = lock(&self.shared.peer);
        if peer.as_ref().is_none_or(|p| p.serial != summary.serial) {
            tracing::info!(
                orchestrator_serial = %summary.serial,
                not_after = %summary.not_after_rfc3339,
                "orchestrator certificate at this handshake"
            );
        }
        *peer = Some(summary);
    }
}

/// HTTP/2 PING interval on the stream's connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is dead.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use certs_tool::CertificateAuthority;
    use certs_tool::files::{write_private_key, write_public};
    use certs_tool::issue::WorkerCertRequest;

    use super::*;

    const WORKER: &str = "spiffe://example.org/worker/w1";

    struct Files {
        _dir: tempfile::TempDir,
        files: TlsFiles,
        ca: CertificateAuthority,
    }

    fn issue(ca: &CertificateAuthority, identity: &str) -> certs_tool::IssuedCert {
        ca.issue_worker(&WorkerCertRequest {
            identity: identity.into(),
            validity_days: 30,
        })
        .unwrap()
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::new_root("test root", 30).unwrap();
        let files = TlsFiles {
            ca_cert: dir.path().join("ca.pem"),
            cert: dir.path().join("w.pem"),
            key: dir.path().join("w.key"),
        };
        let issued = issue(&ca, WORKER);
        write_public(&files.ca_cert, ca.cert_pem()).unwrap();
        write_public(&files.cert, &issued.chain_pem).unwrap();
        write_private_key(&files.key, &issued.key_pem).unwrap();
        Files {
            _dir: dir,
            files,
            ca,
        }
    }

    fn load(f: &Files) -> ClientTls {
        ClientTls::load(&f.files, "orchestrator.local").unwrap()
    }

    #[test]
    fn unchanged_files_are_not_taken_again() {
        let f = files();
        let tls = load(&f);
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
    }

    #[test]
    fn a_new_pair_is_taken_and_the_channel_shows_its_serial() {
        let f = files();
        let tls = load(&f);
        let mut changes = tls.subscribe();
        let before = tls.certificate();
        let renewed = issue(&f.ca, WORKER);
        write_private_key(&f.files.key, &renewed.key_pem).unwrap();
        write_public(&f.files.cert, &renewed.chain_pem).unwrap();
        let Reload::Rotated { old, new } = tls.reload_if_changed() else {
            panic!("the new pair was not taken");
        };
        assert_eq!(old, before);
        assert_ne!(new.serial, before.serial);
        assert!(changes.has_changed().unwrap());
        assert_eq!(changes.borrow_and_update().serial, new.serial);
        assert_eq!(tls.certificate(), new);
    }

    #[test]
    fn a_certificate_written_before_its_key_is_taken_only_once_the_key_matches() {
        let f = files();
        let tls = load(&f);
        let before = tls.certificate();
        let renewed = issue(&f.ca, WORKER);
        write_public(&f.files.cert, &renewed.chain_pem).unwrap();
        let Reload::Refused(why) = tls.reload_if_changed() else {
            panic!("a mismatched pair was taken");
        };
        assert!(why.contains("does not match"), "{why}");
        assert_eq!(tls.certificate(), before, "the last good pair stays");
        // Seen once: the next poll without a change says nothing new.
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        write_private_key(&f.files.key, &renewed.key_pem).unwrap();
        assert!(matches!(tls.reload_if_changed(), Reload::Rotated { .. }));
    }

    #[test]
    fn a_broken_certificate_file_keeps_the_last_good_pair() {
        let f = files();
        let tls = load(&f);
        let before = tls.certificate();
        std::fs::write(&f.files.cert, "not a certificate").unwrap();
        let Reload::Refused(why) = tls.reload_if_changed() else {
            panic!("a broken file was taken");
        };
        assert!(why.contains("w.pem"), "the problem names the file: {why}");
        assert_eq!(tls.certificate(), before);
    }

    #[test]
    fn a_certificate_of_another_identity_is_refused() {
        let f = files();
        let tls = load(&f);
        let other = issue(&f.ca, "spiffe://example.org/worker/other");
        write_private_key(&f.files.key, &other.key_pem).unwrap();
        write_public(&f.files.cert, &other.chain_pem).unwrap();
        let Reload::Refused(why) = tls.reload_if_changed() else {
            panic!("another identity was taken");
        };
        assert!(why.contains("restart the worker"), "{why}");
        assert_eq!(tls.identity(), WORKER);
    }

    #[test]
    fn expiry_is_warned_about_only_within_the_window() {
        let f = files();
        let cert = load(&f).certificate();
        let now = SystemTime::now();
        assert!(!expiry_warning(&cert, Duration::from_secs(86_400), now));
        assert!(expiry_warning(&cert, Duration::from_secs(60 * 86_400), now));
        assert!(
            cert.expires_in(cert.not_after + Duration::from_secs(1))
                .is_zero()
        );
    }
}
