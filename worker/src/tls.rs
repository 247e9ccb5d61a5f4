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
//! Reading and checking the files, the identity rules, the content-hash
//! change detection and the rustls config are `private_worker_identity`'s,
//! shared with the orchestrator; this module decides what the worker does
//! with them (refuse a new identity, log, roll over).
//!
//! It does not retry (the session does) and opens no listening socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use private_worker_identity::CertificateSummary;
use private_worker_identity::material::{
    ExpiryReminder, FileBytes, FileChange, FileWatch, Material, MaterialError, TlsFile, TlsPaths,
};
use rustls::pki_types::{CertificateDer, ServerName};
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
    /// A file cannot be read, holds nothing usable, or the key is not the
    /// certificate's; the message names the file and what to do.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// The worker certificate does not carry a usable identity: re-issue
    /// it (one URI SAN, clientAuth, not a CA).
    #[error("{}: {source}", path.display())]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// Which rule it breaks.
        source: private_worker_identity::IdentityError,
    },
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

/// How the worker follows its TLS files (`[tls] reload_interval`,
/// `expiry_warning`) and the defaults of both, shared with the
/// orchestrator; re-exported so that `config.rs` keeps its paths.
pub use private_worker_identity::material::{
    DEFAULT_EXPIRY_WARNING, DEFAULT_RELOAD_INTERVAL, RotationSettings,
};

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
    server_name: ServerName<'static>,
    identity: String,
    current: RwLock<Current>,
    /// The certificate in use; changes on every rotation.
    rotated: watch::Sender<CertificateSummary>,
    /// The files and their content as last read (good or not), so a change
    /// is handled, and a broken one warned about, once.
    files: FileWatch,
    /// The orchestrator's certificate at the last handshake.
    peer: Mutex<Option<CertificateSummary>>,
}

/// One consistent set of TLS files, ready for handshakes.
struct Current {
    connector: TlsConnector,
    summary: CertificateSummary,
    digest: [u8; 32],
}

/// Builds the handshake material from one read of the files; also returns
/// the identity the certificate names.
fn build_current(paths: &TlsPaths, bytes: &FileBytes) -> Result<(Current, String), TlsError> {
    let material = Material::from_bytes(paths, bytes)?;
    let identity =
        private_worker_identity::worker_identity_from_der(material.leaf()).map_err(|source| {
            TlsError::Identity {
                path: paths.cert.clone(),
                source,
            }
        })?;
    let config =
        private_worker_identity::tls::client_config(material.roots, material.chain, material.key)
            .map_err(MaterialError::Rustls)?;
    Ok((
        Current {
            connector: TlsConnector::from(Arc::new(config)),
            summary: material.summary,
            digest: material.digest,
        },
        identity,
    ))
}

fn tls_paths(files: &TlsFiles) -> TlsPaths {
    TlsPaths {
        ca_cert: files.ca_cert.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    }
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
        let paths = tls_paths(files);
        let bytes = FileBytes::read(&paths)?;
        let (current, identity) = build_current(&paths, &bytes)?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        Ok(ClientTls {
            shared: Arc::new(Shared {
                files: FileWatch::new(paths, current.digest),
                server_name,
                identity,
                rotated: watch::Sender::new(current.summary.clone()),
                current: RwLock::new(current),
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
        let bytes = match shared.files.poll() {
            FileChange::Unchanged => return Reload::Unchanged,
            FileChange::Unreadable { error, first } => {
                let problem = error.to_string();
                if first {
                    tracing::warn!(error = %problem, serial = %in_use.serial, "a TLS file cannot be read; keeping the last good certificate and key");
                }
                return Reload::Refused(problem);
            }
            FileChange::Changed(bytes) => bytes,
        };
        let paths = shared.files.paths();
        let built = build_current(paths, &bytes).and_then(|(material, identity)| {
            let (now, skew) = (
                std::time::SystemTime::now(),
                private_worker_identity::material::NOT_BEFORE_SKEW,
            );
            if let Some(message) = material.summary.unusable_at(now, skew) {
                // Taking it would swap a working certificate for one the
                // orchestrator refuses, and the roll-over would cut the stream.
                Err(TlsError::Material(MaterialError::NotValidNow {
                    path: paths.cert.clone(),
                    message,
                    later: material.summary.usable_later(now, skew),
                }))
            } else if identity == shared.identity {
                Ok(material)
            } else {
                Err(TlsError::Material(MaterialError::File {
                    file: TlsFile::Cert,
                    path: paths.cert.clone(),
                    message: format!(
                        "names identity {identity:?}, but this worker runs as {:?}; restart the worker to change its identity",
                        shared.identity
                    ),
                }))
            }
        });
        let material = match built {
            Ok(material) => material,
            Err(TlsError::Material(MaterialError::NotValidNow {
                later: true,
                ref message,
                ..
            })) => {
                // Polled again until it is valid; said once.
                if !shared.files.retry_later(bytes.digest()) {
                    tracing::warn!(error = %message, serial = %in_use.serial, "the new TLS files are not valid yet; keeping the last good certificate and key until they are");
                }
                return Reload::Refused(message.clone());
            }
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
        let mut reminder = ExpiryReminder::new(settings.expiry_warning);
        loop {
            let summary = self.certificate();
            if let Some(left) = reminder.due(&summary, SystemTime::now()) {
                log_expiry(&summary, left);
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

/// Logs the expiry warning for `summary`, which expires in `left` (zero:
/// it has expired).
fn log_expiry(summary: &CertificateSummary, left: Duration) {
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
    use private_worker_identity::test_support::{TestCa, TestCert, write_pair};

    use super::*;

    const WORKER: &str = "spiffe://example.org/worker/w1";

    struct Files {
        _dir: tempfile::TempDir,
        files: TlsFiles,
        ca: TestCa,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test root");
        let paths = ca.write_tls_files(dir.path(), "w", &ca.worker(WORKER));
        let files = TlsFiles {
            ca_cert: paths.ca_cert,
            cert: paths.cert,
            key: paths.key,
        };
        Files {
            _dir: dir,
            files,
            ca,
        }
    }

    fn load(f: &Files) -> ClientTls {
        ClientTls::load(&f.files, "orchestrator.local").unwrap()
    }

    fn write(f: &Files, cert: &TestCert) {
        write_pair(&tls_paths(&f.files), cert);
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
        let renewed = f.ca.worker(WORKER);
        write(&f, &renewed);
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
        let renewed = f.ca.worker(WORKER);
        std::fs::write(&f.files.cert, &renewed.cert_pem).unwrap();
        let Reload::Refused(why) = tls.reload_if_changed() else {
            panic!("a mismatched pair was taken");
        };
        assert!(why.contains("does not match"), "{why}");
        assert_eq!(tls.certificate(), before, "the last good pair stays");
        // Seen once: the next poll without a change says nothing new.
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        std::fs::write(&f.files.key, &renewed.key_pem).unwrap();
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
        let other = f.ca.worker("spiffe://example.org/worker/other");
        write(&f, &other);
        let Reload::Refused(why) = tls.reload_if_changed() else {
            panic!("another identity was taken");
        };
        assert!(why.contains("restart the worker"), "{why}");
        assert_eq!(tls.identity(), WORKER);
    }

    #[test]
    fn an_expired_or_not_yet_valid_certificate_is_refused_and_the_old_one_stays() {
        use private_worker_identity::test_support::LeafSpec;
        let f = files();
        let tls = load(&f);
        let before = tls.certificate();
        let now = time::OffsetDateTime::now_utc();
        for (validity, expect) in [
            (
                (
                    now - time::Duration::days(30),
                    now - time::Duration::hours(1),
                ),
                "expired",
            ),
            (
                (
                    now + time::Duration::days(1),
                    now + time::Duration::days(30),
                ),
                "not valid for another",
            ),
        ] {
            let leaf = f.ca.leaf(&LeafSpec {
                uris: vec![WORKER.to_string()],
                usages: vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
                validity: Some(validity),
                ..LeafSpec::default()
            });
            write(&f, &leaf);
            let Reload::Refused(why) = tls.reload_if_changed() else {
                panic!("a certificate outside its validity was taken");
            };
            assert!(why.contains(expect), "{why}");
            assert_eq!(tls.certificate(), before);
        }
        // The one not valid yet is read again at every poll (taken once it
        // is valid); the expired one would not be.
        assert!(
            matches!(tls.reload_if_changed(), Reload::Refused(_)),
            "a certificate not valid yet must be polled again"
        );
    }
}
