//! The private worker: a daemon that runs inside a private network, dials
//! out over mutual TLS to an orchestrator, holds one gRPC bidirectional
//! stream, and runs only the tasks its own config allows, with credentials
//! it loads locally. Results and audit records go back up the stream; the
//! worker never listens on a socket.
//!
//! # Layout
//! - [`config`]: the TOML config, parsed and validated in one place.
//! - [`tls`]: the worker's certificate and identity, and the outbound dialer.
//! - [`proxy`]: the HTTP proxy (if any) on the way to the orchestrator:
//!   `[orchestrator] proxy` or `HTTPS_PROXY`/`NO_PROXY`, and the CONNECT tunnel.
//! - [`session`]: one stream to the orchestrator at a time: hello, frames,
//!   credit, heartbeats, outbox, drain, reconnect with backoff ([`backoff`]).
//! - [`journal`]: the durable record of every attempt (received, started,
//!   finished, acknowledged) that makes delivery survive a crash.
//! - [`outcome`]: the outcome and error-code vocabulary.
//! - [`task`]: the local allowlist and the runner (check, credential,
//!   execute, audit).
//! - [`executor`]: what running a task means, one module per kind (HTTP).
//! - [`secrets`]: credential references and sources, one module per source
//!   (environment, files, Azure Key Vault).
//! - [`audit`]: the local hash-chained audit log.
//! - `batch`: group commit's shared half (take every waiting request).
//! - [`kill_switch`]: the local file whose presence refuses every assignment.
//! - [`check`]: `--check`: validate everything without connecting.
//! - [`status`]: what the worker is doing, for its host: the status file
//!   (`private-worker status`), systemd notifications ([`systemd`]) and
//!   opt-in loopback metrics.
//!
//! # What it does not do
//! It does not accept connections, follow redirects, choose hosts from
//! inputs, or send credentials anywhere but to the internal API a task's
//! config names. It does not run a task id twice unless the local config
//! says the task is idempotent: see README, "Delivery guarantees".

pub mod audit;
pub mod backoff;
mod batch;
pub mod check;
pub mod config;
pub mod executor;
pub mod journal;
pub mod kill_switch;
pub mod outcome;
pub mod proxy;
pub mod secrets;
pub mod session;
pub mod shown;
pub mod status;
pub mod systemd;
pub mod task;
pub mod tls;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use session::{FatalError, Worker};

/// Why the worker could not start. Every variant is a local problem to fix
/// before starting again.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS files are missing or unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The route to the orchestrator cannot be decided: the proxy password
    /// cannot be read, or the environment names an unusable proxy.
    #[error(transparent)]
    Proxy(#[from] proxy::RouteError),
    /// The audit log cannot be opened or its chain is broken.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// The journal cannot be opened (another worker process may hold it).
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// An input schema does not compile.
    #[error("{0}")]
    Schema(String),
    /// An approver public key file cannot be read or is not an Ed25519
    /// public key.
    #[error("approvals.keys `{key_id}` ({path}): {message}")]
    ApproverKey {
        /// The key id in the config.
        key_id: String,
        /// Its file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The Key Vault source could not be built (CA file, client secret,
    /// credential options); fix the `[keyvault]` section or the environment.
    #[error("keyvault: {0}")]
    Secrets(#[from] secrets::SecretError),
    /// The metrics address cannot be bound; choose another or remove
    /// `[metrics]`.
    #[error(transparent)]
    Metrics(#[from] status::metrics::ServeError),
}

/// Why [`run`] ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The worker could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The worker stopped on a failure it cannot retry.
    #[error(transparent)]
    Fatal(#[from] FatalError),
}

/// Builds a worker from a validated config: loads the TLS identity, opens
/// the audit log and the journal (taking back what it holds unfinished),
/// compiles the allowlist, builds the secret sources (the Key
/// Vault client and credential when the config has a `[keyvault]` section;
/// no vault traffic happens before the first task that needs it).
///
/// # Errors
/// [`StartError`] naming the file or task at fault.
pub fn build(config: Config) -> Result<Worker, StartError> {
    let route = proxy::Route::resolve_from_process(
        &config.orchestrator.proxy,
        &config.orchestrator.address,
    )?;
    tracing::info!(orchestrator = %config.orchestrator.address, %route, "orchestrator stream route");
    let tls =
        tls::ClientTls::load(&config.tls, &config.orchestrator.server_name)?.with_route(route);
    let mut log = audit::AuditLog::open(&config.audit_log)?;
    log.set_sync(config.audit_fsync);
    let audit = audit::AuditWriter::start(log).map_err(|source| audit::AuditError::Io {
        path: config.audit_log.clone(),
        source,
    })?;
    let (journal, unfinished) =
        journal::Journal::open(&config.journal, config.audit_fsync, config.journal_retain)?;
    let recovery = session::Recovery {
        unfinished,
        audited: audit::recent_records(&config.audit_log)?,
    };
    let allowlist = Arc::new(task::Allowlist::new(&config).map_err(StartError::Schema)?);
    let runner = task::Runner::new(
        allowlist,
        secrets::Secrets::new(config.keyvault.as_ref(), config.secret_refs())?,
        executor::http::HttpExecutor::new()?,
        audit,
        journal,
        tls.identity().to_string(),
    )
    .with_kill_switch(kill_switch::KillSwitch::new(config.kill_switch.clone()));
    let runner = match approval_verifier(&config, tls.identity())? {
        Some(verifier) => runner.with_approvals(verifier),
        None => runner,
    };
    tracing::info!(
        identity = tls.identity(),
        orchestrator = %config.orchestrator.address,
        tasks = config.tasks.len(),
        max_in_flight = config.max_in_flight,
        "worker starting"
    );
    Ok(Worker::new(config, tls, runner, recovery))
}

/// The approval checker `[approvals]` describes for the worker `identity`
/// (which is always an accepted audience), reading each key file; `None`
/// when no key is configured.
///
/// # Errors
/// [`StartError::ApproverKey`] naming the key and file at fault.
pub fn approval_verifier(
    config: &Config,
    identity: &str,
) -> Result<Option<private_worker_proto::approval::Verifier>, StartError> {
    use private_worker_proto::approval::{Audiences, PublicKey, Verifier};
    let settings = &config.approvals;
    if settings.keys.is_empty() {
        return Ok(None);
    }
    let mut keys = Vec::new();
    for key in &settings.keys {
        let fail = |message: String| StartError::ApproverKey {
            key_id: key.id.clone(),
            path: key.public_key.clone(),
            message,
        };
        let pem = std::fs::read(&key.public_key).map_err(|e| fail(e.to_string()))?;
        let public = PublicKey::from_pem(&key.id, &pem).map_err(fail)?;
        keys.push(match &key.tasks {
            Some(tasks) => public.restricted_to(tasks.iter().cloned()),
            None => public,
        });
    }
    let audiences = std::iter::once(identity.to_string())
        .chain(settings.audiences.iter().cloned())
        .collect();
    Ok(Some(Verifier::new(
        keys,
        Audiences::Only(audiences),
        settings.max_validity,
        settings.clock_skew,
    )))
}

/// Runs the worker until `shutdown` is cancelled (then drains) or a fatal
/// error.
///
/// # Errors
/// [`RunError`]: a start-up problem or a failure that retrying cannot fix.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let status_file = config.status_file.clone();
    let kill_switch = kill_switch::KillSwitch::new(config.kill_switch.clone());
    let stall_limit = config.orchestrator.connect_timeout + status::STALL_MARGIN;
    let metrics_listen = config.metrics_listen;
    let worker = build(config)?;
    let board = worker.status_board();
    // Stopped after the worker, so the last write says how it ended.
    let outputs_stop = CancellationToken::new();
    if let Some(address) = metrics_listen {
        status::metrics::serve(board.clone(), address, outputs_stop.clone())
            .await
            .map_err(StartError::from)?;
    }
    let writer = status::spawn(
        board.clone(),
        status::Outputs {
            file: status_file,
            kill_switch,
            stall_limit,
            notifier: systemd::Notifier::from_environment(),
        },
        outputs_stop.clone(),
    );
    let ended = worker.run(shutdown).await;
    board.stopped();
    outputs_stop.cancel();
    let _ = writer.await;
    ended?;
    Ok(())
}
