//! Mutual TLS for the worker gateway: the rustls server config and the
//! accept loop that feeds authenticated connections to tonic.
//!
//! Each TCP connection gets a handshake with a deadline
//! ([`HANDSHAKE_TIMEOUT`]); the client must present a certificate chaining
//! to the configured CA (webpki checks the chain and, when present, the
//! clientAuth EKU), and the leaf must carry a worker identity
//! ([`private_worker_identity::worker_identity_from_der`]: one URI SAN,
//! clientAuth, not a CA). Connections failing either are dropped with a
//! warning naming the peer and the reason; nothing of them reaches tonic.
//! The identity and peer address travel to the service as
//! [`WorkerConnInfo`] in the request extensions (via tonic's
//! [`Connected`]).
//!
//! Diagnostic: with `wire_capture_dir`, every decrypted byte read from a
//! connection is appended to `<dir>/conn-<n>.bin`, so tests can search all
//! that the orchestrator received (e.g. for a secret that must not be
//! there). Never enable it in production: it records task inputs and results.
//!
//! Admission ([`crate::admission`]): a TCP connection past
//! `max_connections_before_hello` is closed at accept, before any TLS; a
//! verified identity that matches no pattern of `[admission] identities`,
//! or that holds `max_connections_per_identity` live connections already,
//! is refused right after the handshake, like a certificate without an
//! identity.
//!
//! Revocation: with `[admission] crl`, the client verifier
//! ([`ClientVerifier`]) also checks the leaf against the CRLs of that file,
//! which [`watch_crl`] reloads when it changes (the last good CRLs stay in
//! force when a new file is broken). When new CRLs are taken, every open
//! connection's certificate chain is checked again, and a connection
//! whose certificate is now revoked is closed (its reads and writes fail),
//! so a revoked worker loses its stream within [`CRL_POLL`] of the file
//! change, not only at its next handshake.
//!
//! Rotation ([`ServerTls`]): the server certificate and key, the CA bundle
//! and the CRLs follow their files. [`ServerTls::watch`] reads the
//! certificate, key and CA files every `[tls] reload_interval` and takes
//! them when their content changed and all three are usable (new handshakes
//! present the new certificate through [`ServerCertResolver`] and verify
//! workers against the new anchors; open connections go on); broken or
//! mismatched files are logged once per change and the last good material
//! stays. It also warns ahead of the server certificate's expiry (`[tls]
//! expiry_warning`). Each worker connection carries the serial of the
//! certificate it presented ([`WorkerConnInfo::cert_serial`]).
//!
//! Reading and checking the files, the identity rules, the content-hash
//! change detection, the certificate summary, the verifier and the rustls
//! config are `private_worker_identity`'s, shared with the worker.
//!
//! What it does not do: authorization beyond the identity allowlist, or
//! close open connections when the CA bundle changes (a CRL does that).

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::{Mutex, RwLock};

use private_worker_identity::CertificateSummary;
use private_worker_identity::material::{
    ExpiryReminder, FileChange, FileWatch, Material, MaterialError, TlsPaths, content_digest,
};
use private_worker_identity::tls::ServerCertResolver;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::admission::{Admission, BeforeHelloSlot, IdentitySlot};
use crate::config::TlsConfig;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable; check the path
    /// named in the message.
    #[error("{what} {path}: {message}")]
    File {
        /// Which file (`tls.ca_cert`, `tls.cert`, `tls.key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the material (e.g. key does not match certificate).
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

impl From<MaterialError> for TlsError {
    fn from(e: MaterialError) -> TlsError {
        match e {
            MaterialError::File {
                file,
                path,
                message,
            } => TlsError::File {
                what: file.config_key(),
                path,
                message,
            },
            MaterialError::KeyMismatch { key, cert } => TlsError::File {
                what: "tls.key",
                path: key,
                message: format!(
                    "does not match the certificate in {}; put the key and certificate of one pair in place",
                    cert.display()
                ),
            },
            MaterialError::NotValidNow { path, message, .. } => TlsError::File {
                what: "tls.cert",
                path,
                message,
            },
            MaterialError::Rustls(other) => {
                TlsError::Rustls(format!("server certificate and key: {other}"))
            }
        }
    }
}

/// How often the CRL file's modification time and size are checked.
pub const CRL_POLL: Duration = Duration::from_secs(2);

/// Builds the gateway's rustls server config: client certificates required
/// and verified against `ca_cert` (and against the CRLs of `crl` when set),
/// ALPN `h2`, aws-lc-rs provider. The returned [`ClientVerifier`] reloads
/// the CRL file ([`watch_crl`]).
///
/// # Errors
/// [`TlsError`] naming the file or the rustls error.
pub fn server_config(
    tls: &TlsConfig,
    crl: Option<&Path>,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ClientVerifier>), TlsError> {
    let (config, server) = server_tls(tls, crl)?;
    Ok((config, server.verifier()))
}

/// How the gateway follows its TLS files (`[tls] reload_interval`,
/// `expiry_warning`), the defaults of both and the shortest interval
/// accepted, shared with the worker; re-exported so that `config.rs` and
/// the tests keep their paths.
pub use private_worker_identity::material::{
    DEFAULT_EXPIRY_WARNING, DEFAULT_RELOAD_INTERVAL, MIN_RELOAD_INTERVAL, RotationSettings,
};

/// The gateway's TLS material as last loaded, and how it follows the
/// files: the server certificate and key (for new handshakes), the CA
/// bundle (the client verifier's trust anchors) and, through
/// [`ClientVerifier`], the CRLs.
pub struct ServerTls {
    resolver: Arc<ServerCertResolver>,
    verifier: Arc<ClientVerifier>,
    /// The three files and their content as last read (or why they could
    /// not be read), so each change is handled, and warned about, once.
    files: FileWatch,
    /// SHA-256 of the CA file in use.
    ca_in_use: Mutex<[u8; 32]>,
    /// SHA-256 of the certificate and key files in use.
    pair_in_use: Mutex<[u8; 32]>,
    /// The server certificate in use.
    certificate: Mutex<CertificateSummary>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Builds the gateway's TLS: the rustls server config (client certificates
/// required and verified against `ca_cert` and the CRLs of `crl` when set,
/// ALPN `h2`, aws-lc-rs provider) whose server certificate and trust
/// anchors follow the files through the returned [`ServerTls`]
/// ([`ServerTls::watch`]).
///
/// # Errors
/// [`TlsError`] naming the file or the rustls error.
pub fn server_tls(
    tls: &TlsConfig,
    crl: Option<&Path>,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServerTls>), TlsError> {
    let paths = TlsPaths {
        ca_cert: tls.ca_cert.clone(),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    };
    let loaded = Material::load(&paths)?;
    let verifier = Arc::new(ClientVerifier::new(
        Arc::new(loaded.roots),
        crl.map(Path::to_path_buf),
    )?);
    let resolver = Arc::new(ServerCertResolver::new(loaded.certified));
    let config = private_worker_identity::tls::server_config(verifier.clone(), resolver.clone())
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let server = ServerTls {
        files: FileWatch::new(paths, loaded.digest),
        resolver,
        verifier,
        ca_in_use: Mutex::new(loaded.ca_digest),
        pair_in_use: Mutex::new(loaded.pair_digest),
        certificate: Mutex::new(loaded.summary),
    };
    Ok((Arc::new(config), Arc::new(server)))
}

impl ServerTls {
    /// The client certificate verifier (CA bundle and CRLs).
    pub fn verifier(&self) -> Arc<ClientVerifier> {
        self.verifier.clone()
    }

    /// The server certificate presented at new handshakes.
    pub fn certificate(&self) -> CertificateSummary {
        self.certificate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the certificate, key and CA files again and, when their
    /// content changed (SHA-256), takes them if all three are usable (a
    /// key that matches the certificate, a CA file of trust anchors): new
    /// handshakes present the new certificate and verify clients against
    /// the new anchors; connections already open go on. Otherwise the
    /// material in use stays and the problem is logged once per change of
    /// the files. Returns whether anything new was taken.
    pub fn reload_if_changed(&self) -> bool {
        let in_use = self.certificate();
        let bytes = match self.files.poll() {
            FileChange::Unchanged => return false,
            FileChange::Unreadable { error, first } => {
                if first {
                    let problem = TlsError::from(error);
                    tracing::warn!(error = %problem, serial = %in_use.serial, "a TLS file cannot be read; keeping the last good server certificate, key and CA");
                }
                return false;
            }
            FileChange::Changed(bytes) => bytes,
        };
        let paths = self.files.paths();
        let loaded = match Material::from_bytes(paths, &bytes).and_then(|m| {
            m.check_valid_at(paths, std::time::SystemTime::now())
                .map(|()| m)
        }) {
            Ok(loaded) => loaded,
            Err(MaterialError::NotValidNow {
                later: true,
                message,
                ..
            }) => {
                // Polled again until it is valid; said once.
                if !self.files.retry_later(bytes.digest()) {
                    tracing::warn!(error = %message, serial = %in_use.serial, "the new TLS files are not valid yet; keeping the last good server certificate, key and CA until they are");
                }
                return false;
            }
            Err(e) => {
                let e = TlsError::from(e);
                tracing::warn!(error = %e, serial = %in_use.serial, "the TLS files changed but cannot be used; keeping the last good server certificate, key and CA (checked again at the next change)");
                return false;
            }
        };
        let mut taken = false;
        {
            let mut ca = self.ca_in_use.lock().unwrap_or_else(|e| e.into_inner());
            if *ca != loaded.ca_digest {
                if let Err(e) = self.verifier.replace_roots(Arc::new(loaded.roots)) {
                    tracing::warn!(path = %paths.ca_cert.display(), error = %e, "the CA file changed but cannot be used; keeping the last good CA and certificate");
                    return false;
                }
                *ca = loaded.ca_digest;
                tracing::info!(path = %paths.ca_cert.display(), "CA bundle reloaded: new handshakes verify workers against it; open connections go on");
                taken = true;
            }
        }
        let mut pair = self.pair_in_use.lock().unwrap_or_else(|e| e.into_inner());
        if *pair != loaded.pair_digest {
            *pair = loaded.pair_digest;
            self.resolver.replace(loaded.certified);
            tracing::info!(
                old_serial = %in_use.serial,
                new_serial = %loaded.summary.serial,
                not_after = %loaded.summary.not_after_rfc3339,
                "server certificate rotated: serial {} -> {}; new handshakes present it, open connections go on",
                in_use.serial,
                loaded.summary.serial,
            );
            *self.certificate.lock().unwrap_or_else(|e| e.into_inner()) = loaded.summary;
            taken = true;
        }
        taken
    }

    /// Polls the files every `settings.reload_interval` until `shutdown`
    /// ([`ServerTls::reload_if_changed`]), and warns when the server
    /// certificate expires within `settings.expiry_warning`: at start,
    /// after each rotation, and once a day.
    pub async fn watch(self: Arc<Self>, settings: RotationSettings, shutdown: CancellationToken) {
        let mut reminder = ExpiryReminder::new(settings.expiry_warning);
        loop {
            let summary = self.certificate();
            if let Some(left) = reminder.due(&summary, std::time::SystemTime::now()) {
                tracing::warn!(
                    serial = %summary.serial,
                    not_after = %summary.not_after_rfc3339,
                    days_left = left.as_secs() / 86_400,
                    "the server certificate expires within tls.expiry_warning (or has expired); renew it (certs-tool renew) and the orchestrator takes it without a restart"
                );
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

/// The client certificate verifier: webpki against the CA, plus the CRLs
/// of the `[admission] crl` file when set, swapped for a new one when the
/// file changes ([`ClientVerifier::reload_if_changed`]). Only the end
/// entity's revocation is checked, and with a CRL file its issuer must
/// have a CRL in it (an unknown status is refused).
pub struct ClientVerifier {
    /// The trust anchors in force (replaced by [`ClientVerifier::replace_roots`]).
    roots: RwLock<Arc<RootCertStore>>,
    /// The CRLs in force (the last good read of the CRL file).
    crls: RwLock<Vec<CertificateRevocationListDer<'static>>>,
    crl: Option<PathBuf>,
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    /// SHA-256 of the CRL file as last read.
    stamp: Mutex<Option<[u8; 32]>>,
    /// Counts the CRL reloads; open connections watch it.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("crl", &self.crl)
            .finish_non_exhaustive()
    }
}

impl ClientVerifier {
    fn new(roots: Arc<RootCertStore>, crl: Option<PathBuf>) -> Result<ClientVerifier, TlsError> {
        let file_error = |message: String| TlsError::File {
            what: "admission.crl",
            path: crl.clone().unwrap_or_default(),
            message,
        };
        let (crls, stamp) = match &crl {
            None => (Vec::new(), None),
            Some(path) => {
                let stamp = crl_stamp(path);
                (read_crls(path).map_err(file_error)?, stamp)
            }
        };
        let verifier = build_verifier(&roots, crls.clone()).map_err(|e| match &crl {
            Some(_) => file_error(format!("unusable: {e}")),
            None => TlsError::Rustls(format!("client verifier: {e}")),
        })?;
        Ok(ClientVerifier {
            hints: verifier.root_hint_subjects().to_vec(),
            roots: RwLock::new(roots),
            crls: RwLock::new(crls),
            crl,
            current: RwLock::new(verifier),
            stamp: Mutex::new(stamp),
            reloads: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Whether the CRL file is in use (only then can a certificate be
    /// revoked while its connection is open).
    pub fn watches_revocation(&self) -> bool {
        self.crl.is_some()
    }

    /// Whether a peer's chain (leaf first) still passes the verifier in
    /// force, CRLs included.
    pub fn still_accepts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.current()
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the CRL file again when its modification time or size
    /// changed: a good one replaces the CRLs in force (logged), a broken
    /// one is logged and the last good CRLs stay. Returns whether new CRLs
    /// were taken.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.crl else { return false };
        let stamp = crl_stamp(path);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == stamp {
                return false;
            }
            *last = stamp;
        }
        let roots = self.roots.read().unwrap_or_else(|e| e.into_inner()).clone();
        let built = read_crls(path).and_then(|crls| {
            let n = crls.len();
            build_verifier(&roots, crls.clone())
                .map(|v| (v, n, crls))
                .map_err(|e| e.to_string())
        });
        match built {
            Ok((verifier, n, crls)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = verifier;
                *self.crls.write().unwrap_or_else(|e| e.into_inner()) = crls;
                tracing::info!(path = %path.display(), crls = n, "CRL file reloaded");
                self.reloads.send_modify(|n| *n += 1);
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "CRL file changed but is unusable; keeping the last good CRLs");
                false
            }
        }
    }
}

impl ClientVerifier {
    /// Verifies clients against `roots` from now on (with the CRLs in
    /// force). Connections already open are not checked again here; the
    /// root hints sent in the handshake stay those of the start (clients
    /// with one certificate do not use them).
    ///
    /// # Errors
    /// Why no verifier could be built from `roots`; the old anchors stay.
    pub fn replace_roots(&self, roots: Arc<RootCertStore>) -> Result<(), String> {
        let crls = self.crls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let verifier = build_verifier(&roots, crls).map_err(|e| e.to_string())?;
        *self.roots.write().unwrap_or_else(|e| e.into_inner()) = roots;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = verifier;
        Ok(())
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

fn build_verifier(
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    private_worker_identity::tls::client_verifier(roots.clone(), crls)
}

/// SHA-256 of the CRL file (content, not modification time: a file
/// replaced within the same second with the same size still counts).
fn crl_stamp(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| content_digest(&[&bytes]))
}

/// The CRLs of a PEM file (one or more `X509 CRL` blocks) or of a DER
/// file (one CRL).
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    // Parsed when the verifier is built: a broken CRL is refused there,
    // not at a handshake.
    private_worker_identity::pem::parse_crls(&bytes).map_err(|e| e.to_string())
}

/// Polls the CRL file every [`CRL_POLL`] until `shutdown` and reloads it
/// when it changed.
pub async fn watch_crl(verifier: Arc<ClientVerifier>, shutdown: CancellationToken) {
    if verifier.crl.is_none() {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CRL_POLL) => {}
        }
        let v = verifier.clone();
        let _ = tokio::task::spawn_blocking(move || v.reload_if_changed()).await;
    }
}

/// Who is on the other end of an accepted connection; available to the
/// gRPC service as a request extension.
#[derive(Debug, Clone)]
pub struct WorkerConnInfo {
    /// The worker identity from the client certificate's URI SAN.
    pub identity: String,
    /// TCP peer address.
    pub remote_addr: SocketAddr,
    /// Connection number (also names the wire capture file).
    pub conn_id: u64,
    /// Serial of the client certificate presented at the handshake (hex
    /// bytes separated by colons, as `certs-tool inspect` prints it).
    pub cert_serial: String,
    /// Set by the gateway once a valid `Hello` arrived on this connection.
    pub said_hello: Arc<HelloFlag>,
}

/// Whether a connection said `Hello`; setting it also gives back the
/// connection's place among those that have not
/// (`max_connections_before_hello`).
#[derive(Debug, Default)]
pub struct HelloFlag {
    said: AtomicBool,
    slot: std::sync::Mutex<Option<BeforeHelloSlot>>,
}

impl HelloFlag {
    /// Records that a valid `Hello` arrived and frees the connection's
    /// place before `Hello`.
    pub fn set(&self) {
        self.said.store(true, Ordering::Relaxed);
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Whether [`HelloFlag::set`] was called.
    pub fn is_set(&self) -> bool {
        self.said.load(Ordering::Relaxed)
    }

    fn hold(&self, slot: BeforeHelloSlot) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot);
    }
}

/// How long after its TLS handshake a connection that has not said `Hello`
/// is closed: the gateway's [`crate::gateway::HELLO_TIMEOUT`] for a stream,
/// plus two seconds so that a stream which opened gets its
/// `DEADLINE_EXCEEDED` first.
pub const NO_HELLO_CLOSE: Duration = Duration::from_secs(12);

/// An authenticated worker connection: TLS, optionally teed to a capture
/// file. One that has not said `Hello` within [`NO_HELLO_CLOSE`] of its
/// handshake (no stream opened, or none that said it) is closed: idle
/// authenticated connections cannot pile up.
pub struct WorkerConn {
    io: TlsStream<TcpStream>,
    capture: Option<File>,
    info: WorkerConnInfo,
    /// Until a `Hello`: when the connection is closed for idling.
    hello_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Its place among its identity's live connections, held until it is
    /// dropped.
    _identity_slot: Option<IdentitySlot>,
    /// The peer's certificate chain, leaf first (checked again when the
    /// CRLs change).
    chain: Vec<CertificateDer<'static>>,
    /// Ready once the certificate was found revoked: the connection fails.
    revoked: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    /// Ends the revocation watch when the connection is dropped.
    _revocation_watch: Option<tokio_util::sync::DropGuard>,
}

impl WorkerConn {
    /// Closes this connection when a CRL reload revokes its certificate:
    /// a task waits for each reload of `verifier` and checks the chain.
    fn watch_revocation(&mut self, verifier: Arc<ClientVerifier>) {
        let revoked = CancellationToken::new();
        let alive = CancellationToken::new();
        let mut reloads = verifier.reloads.subscribe();
        let chain = self.chain.clone();
        let (identity, conn_id) = (self.info.identity.clone(), self.info.conn_id);
        let (cut, ended) = (revoked.clone(), alive.clone());
        // A reload between the handshake and the subscription is seen here.
        reloads.mark_changed();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = ended.cancelled() => return,
                    changed = reloads.changed() => if changed.is_err() { return },
                }
                if !verifier.still_accepts(&chain) {
                    tracing::warn!(conn_id, identity = ?identity, "the worker's certificate is revoked by the reloaded CRL; closing its open connection");
                    cut.cancel();
                    return;
                }
            }
        });
        self.revoked = Some(Box::pin(revoked.cancelled_owned()));
        self._revocation_watch = Some(alive.drop_guard());
    }

    /// An error once the certificate was found revoked.
    fn check_revoked(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        let Some(revoked) = self.revoked.as_mut() else {
            return Ok(());
        };
        if revoked.as_mut().poll(cx).is_ready() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the worker certificate was revoked",
            ));
        }
        Ok(())
    }
}

impl Connected for WorkerConn {
    type ConnectInfo = WorkerConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for WorkerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_revoked(cx) {
            return Poll::Ready(Err(e));
        }
        if let Some(deadline) = this.hello_deadline.as_mut() {
            if this.info.said_hello.is_set() {
                this.hello_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                tracing::warn!(
                    conn_id = this.info.conn_id,
                    identity = %this.info.identity,
                    "no Hello on this connection within {NO_HELLO_CLOSE:?} of its handshake; closing it"
                );
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no Hello on this connection in time",
                )));
            }
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(file)) = (&poll, this.capture.as_mut()) {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty()
                && let Err(e) = file.write_all(fresh)
            {
                tracing::warn!(conn_id = this.info.conn_id, error = %e, "wire capture failed; capture stopped for this connection");
                this.capture = None;
            }
        }
        poll
    }
}

impl AsyncWrite for WorkerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_revoked(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_revoked(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts TCP connections until `shutdown`, authenticates each in its own
/// task, applies `admission` and sends the good ones to `out` (tonic's
/// incoming stream). Dropping the listener on return frees the port.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    admission: Arc<Admission>,
    capture_dir: Option<PathBuf>,
    out: mpsc::Sender<Result<WorkerConn, std::io::Error>>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE or a connection reset before accept; back
                // off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn_id = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(before_hello) = admission.before_hello_slot() else {
            if let Some(unlogged) = admission.refusal_log() {
                tracing::warn!(
                    peer = %peer,
                    conn_id,
                    unlogged_refusals_before = unlogged,
                    "dropped connection: max_connections_before_hello connections are in their handshake or have not said Hello yet"
                );
            }
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let out = out.clone();
        let capture_dir = capture_dir.clone();
        let shutdown = shutdown.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => return,
                conn = authenticate(&acceptor, tcp, peer, conn_id, capture_dir.as_deref()) => conn,
            };
            let conn = conn.and_then(|mut conn| {
                // Debug formatting escapes whatever the SAN holds.
                if !admission.admit_identity(&conn.info.identity) {
                    return Err(format!(
                        "worker identity {:?} matches no [admission] identities pattern",
                        conn.info.identity
                    ));
                }
                let Some(slot) = admission.identity_slot(&conn.info.identity) else {
                    return Err(format!(
                        "worker identity {:?} holds max_connections_per_identity live connections already",
                        conn.info.identity
                    ));
                };
                conn._identity_slot = Some(slot);
                conn.info.said_hello.hold(before_hello);
                if let Some(verifier) = admission
                    .revocation()
                    .filter(|v| v.watches_revocation())
                {
                    conn.watch_revocation(verifier.clone());
                }
                Ok(conn)
            });
            match conn {
                Ok(conn) => {
                    tracing::info!(peer = %peer, worker = %conn.info.identity, conn_id, serial = %conn.info.cert_serial, "worker connection authenticated");
                    let _ = out.send(Ok(conn)).await;
                }
                Err(reason) => {
                    if let Some(unlogged) = admission.refusal_log() {
                        tracing::warn!(peer = %peer, conn_id, reason = %reason, unlogged_refusals_before = unlogged, "dropped connection");
                    }
                }
            }
        });
    }
}

async fn authenticate(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    capture_dir: Option<&Path>,
) -> Result<WorkerConn, String> {
    let _ = tcp.set_nodelay(true);
    let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Err(_) => {
            return Err(format!(
                "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}"
            ));
        }
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Ok(Ok(io)) => io,
    };
    let chain: Vec<CertificateDer<'static>> = io
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let leaf = chain.first().ok_or("no client certificate")?;
    let identity = private_worker_identity::worker_identity_from_der(leaf.as_ref())
        .map_err(|e| format!("client certificate has no worker identity: {e}"))?;
    let cert_serial = CertificateSummary::of_der(leaf.as_ref())
        .map(|c| c.serial)
        .unwrap_or_default();
    let capture = match capture_dir {
        None => None,
        Some(dir) => {
            let path = dir.join(format!("conn-{conn_id}.bin"));
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open wire capture file");
                    None
                }
            }
        }
    };
    Ok(WorkerConn {
        io,
        capture,
        info: WorkerConnInfo {
            identity,
            remote_addr: peer,
            conn_id,
            cert_serial,
            said_hello: Arc::new(HelloFlag::default()),
        },
        hello_deadline: Some(Box::pin(tokio::time::sleep(NO_HELLO_CLOSE))),
        _identity_slot: None,
        chain,
        revoked: None,
        _revocation_watch: None,
    })
}

#[cfg(test)]
mod tests {
    use private_worker_identity::test_support::{TestCa, TestCert, write_pair};

    use super::*;

    struct Files {
        _dir: tempfile::TempDir,
        tls: TlsConfig,
        ca: TestCa,
    }

    fn server_cert(ca: &TestCa) -> TestCert {
        ca.server(&["orchestrator.local"])
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test root");
        let paths = ca.write_tls_files(dir.path(), "server", &server_cert(&ca));
        let tls = TlsConfig {
            ca_cert: paths.ca_cert,
            cert: paths.cert,
            key: paths.key,
        };
        Files { _dir: dir, tls, ca }
    }

    fn paths(tls: &TlsConfig) -> TlsPaths {
        TlsPaths {
            ca_cert: tls.ca_cert.clone(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        }
    }

    fn worker_chain(ca: &TestCa) -> Vec<CertificateDer<'static>> {
        ca.worker("spiffe://example.org/worker/w1").chain()
    }

    #[test]
    fn a_renewed_server_certificate_is_taken_for_new_handshakes() {
        let f = files();
        let (_, server) = server_tls(&f.tls, None).unwrap();
        let before = server.certificate();
        assert!(!server.reload_if_changed(), "nothing changed yet");
        let renewed = server_cert(&f.ca);
        write_pair(&paths(&f.tls), &renewed);
        let new_serial = renewed.summary().serial;
        assert!(server.reload_if_changed());
        assert_eq!(server.certificate().serial, new_serial);
        assert_ne!(server.certificate(), before);
        let presented = server.resolver.current().cert[0].clone();
        assert_eq!(
            CertificateSummary::of_der(&presented).unwrap().serial,
            new_serial
        );
    }

    #[test]
    fn a_certificate_without_its_key_keeps_the_last_good_pair_until_the_key_arrives() {
        let f = files();
        let (_, server) = server_tls(&f.tls, None).unwrap();
        let before = server.certificate();
        let other = server_cert(&f.ca);
        std::fs::write(&f.tls.cert, &other.cert_pem).unwrap();
        assert!(!server.reload_if_changed(), "a mismatched pair was taken");
        assert_eq!(server.certificate(), before);
        std::fs::write(&f.tls.key, &other.key_pem).unwrap();
        assert!(server.reload_if_changed());
        assert_ne!(server.certificate(), before);
    }

    #[test]
    fn a_broken_file_keeps_the_last_good_material() {
        let f = files();
        let (_, server) = server_tls(&f.tls, None).unwrap();
        let before = server.certificate();
        std::fs::write(&f.tls.ca_cert, "garbage").unwrap();
        assert!(!server.reload_if_changed());
        std::fs::remove_file(&f.tls.key).unwrap();
        assert!(!server.reload_if_changed());
        assert_eq!(server.certificate(), before);
    }

    #[test]
    fn a_new_ca_bundle_decides_which_worker_certificates_new_handshakes_accept() {
        let f = files();
        let (_, server) = server_tls(&f.tls, None).unwrap();
        let verifier = server.verifier();
        let old_worker = worker_chain(&f.ca);
        assert!(verifier.still_accepts(&old_worker));
        // The CA bundle now holds the old root and a new one.
        let new_ca = TestCa::new("new root");
        std::fs::write(
            &f.tls.ca_cert,
            format!("{}{}", f.ca.cert_pem(), new_ca.cert_pem()),
        )
        .unwrap();
        let new_worker = worker_chain(&new_ca);
        assert!(!verifier.still_accepts(&new_worker));
        assert!(server.reload_if_changed());
        assert!(verifier.still_accepts(&new_worker));
        assert!(verifier.still_accepts(&old_worker));
    }
}
