//! orchestrator-mock: a working stand-in for the private-worker cloud side.
//!
//! "Mock" means it is not the vendor's cloud, not that it is fake: it
//! requires mutual TLS and takes each worker's identity from its client
//! certificate, validates plans against a task registry, waits for
//! approval, queues and dispatches steps in order to workers whose
//! manifest lists them (within the credit they granted), leases each
//! attempt to its worker identity, and stores every result and audit
//! record before acknowledging it. Its state (plans, steps, attempts, the
//! queue) is durable: a kill -9 and a restart on the same `data_dir` loses
//! nothing that was acknowledged, approved or assigned. Tests, the demo and
//! CI pipelines rely on it behaving like the real thing.
//!
//! # Layout
//! - [`config`]: the TOML config, parsed and validated in one place.
//! - [`registry`]: the task registry file; plan and manifest validation.
//! - [`api`]: the admin API's JSON types (shared by server and client).
//! - [`state`]: plans, steps, attempts, queue, leases, sessions, cancel and
//!   dispatch (one mutex).
//! - [`durable`]: the durable state: records, the [`durable::PlanStore`]
//!   trait, its redb backend and the group-commit journal.
//! - [`lease`]: the task that settles lapsed leases.
//! - [`store`]: append-only JSON lines files for results and audit records.
//! - [`tls`]: rustls server config, the accept loop, the wire capture.
//! - [`gateway`]: the tonic `WorkerGateway` service, one stream per worker.
//! - [`admin`]: the axum HTTP+JSON admin API.
//! - [`admin_auth`]: the admin API's guard: `Host`, `Origin`, bearer token,
//!   role and content type, in one middleware.
//! - [`tokens`]: admin tokens, their roles and the hashed token file.
//! - [`policy`]: the registry's approval policies (`human`, `auto`,
//!   `deny`) and the auto-approver.
//! - [`mcp`]: the MCP server at `/mcp` on the admin listener: the tasks as
//!   tools for AI agents; [`mcp_stdio`]: the same over stdio, a bridge for
//!   clients that start local servers only (`orchestrator-mock mcp-stdio`).
//! - [`console`]: the approval console, a web page on the admin listener
//!   (approving signs in the browser).
//! - [`admin_tls`]: TLS for the admin listener (required off loopback).
//! - [`client`]: the typed admin client used by the CLI and tests.
//! - [`cli`]: the `orchestrator-mock` command line.
//! - [`testing`]: fault-injection hooks for contract tests (off unless
//!   the config or `serve --fault-injection` opts in).
//! - [`scenario`]: the scenario runner behind `orchestrator-mock test`.
//!
//! # What it does not do (yet)
//! Sign approvals for a person (it holds no person's approver key; only
//! the opt-in auto-approver of [`policy`] signs, for read-only tasks), or
//! share its queue between several instances (the [`durable::PlanStore`]
//! trait is shaped for a PostgreSQL backend that would).
//!
//! # Example
//! ```no_run
//! # async fn example(config: orchestrator_mock::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let handle = orchestrator_mock::spawn(config).await?;
//! let admin = handle.admin_client("example", &[orchestrator_mock::tokens::Role::Read])?;
//! println!("{} workers connected", admin.workers().await?.len());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod admin_auth;
pub mod admin_tls;
pub mod admission;
pub mod api;
pub mod approvals;
pub mod audit_check;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod durable;
pub mod gateway;
pub mod lease;
pub mod mcp;
pub mod mcp_stdio;
pub mod policy;
pub mod registry;
pub mod scenario;
pub mod state;
pub mod store;
pub mod testing;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, TlsConfig};
/// The canonical JSON form the contract hashes (keys sorted at every depth,
/// compact). The worker computes `input_schema_sha256` over it, and so does
/// the registry; it lives in the proto crate so both sides share one
/// implementation.
pub use private_worker_proto::canonical_json;
pub use private_worker_proto::canonical_sha256;

/// How long [`OrchestratorHandle::shutdown`] waits for sessions and
/// connections to close before aborting them.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry is unreadable or invalid; fix the file.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The TLS files are unusable; fix the named file.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The data directory cannot be used; check permissions.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The state store cannot be opened or read; check `data_dir`.
    #[error(transparent)]
    State(#[from] durable::DurableError),
    /// The state journal's writer thread could not start.
    #[error("cannot start the state journal: {0}")]
    Journal(std::io::Error),
    /// The wire capture directory cannot be created.
    #[error("wire_capture_dir {path}: {source}")]
    WireCapture {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `admin_listen` is not a loopback address and `[admin]` has no TLS:
    /// bearer tokens would cross the network in clear. Set `[admin]
    /// tls_cert` and `tls_key`, or bind `admin_listen` to 127.0.0.1 or
    /// [::1].
    #[error(
        "admin_listen = {addr} is not a loopback address, and the admin API has no TLS: its bearer tokens would cross the network in clear. Set [admin] tls_cert and tls_key (PEM) in the config, or set admin_listen to a loopback address such as 127.0.0.1:{port}",
        port = .addr.port()
    )]
    AdminWithoutTls {
        /// The configured admin address.
        addr: SocketAddr,
    },
    /// The admin token file exists but cannot be read or parsed; fix or
    /// remove it (and create the tokens again).
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    /// An `[approvals]` key file cannot be read or is not an Ed25519
    /// public key; the message names the key and the file.
    #[error("{0}")]
    ApprovalKeys(String),
    /// The approval policies cannot be applied: the auto-approver's key is
    /// unusable, or the registry has `auto` tasks and no auto-approver.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// A listener could not be bound; the address is in use or not local.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `grpc_listen` or `admin_listen`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running orchestrator. Dropping it leaves the servers running until
/// the runtime ends; call [`OrchestratorHandle::shutdown`] to stop it.
#[derive(Debug)]
pub struct OrchestratorHandle {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_tls: bool,
    tokens: tokens::TokenFile,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    journal: durable::journal::JournalHandle,
    admission: Arc<admission::Admission>,
    server_tls: Arc<tls::ServerTls>,
}

impl OrchestratorHandle {
    /// The bound worker gateway address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin API base URL, e.g. `http://127.0.0.1:7070` (`https`
    /// when `[admin]` has TLS).
    pub fn admin_url(&self) -> String {
        let scheme = if self.admin_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.admin_addr)
    }

    /// The admin token file in force.
    pub fn tokens(&self) -> &tokens::TokenFile {
        &self.tokens
    }

    /// Issues a token `name` with `roles` (replacing one of that name) and
    /// returns a client of this orchestrator's admin API that sends it:
    /// the one call tests and in-process harnesses need.
    ///
    /// # Errors
    /// [`tokens::TokenError`] when the token file cannot be written.
    pub fn admin_client(
        &self,
        name: &str,
        roles: &[tokens::Role],
    ) -> Result<client::AdminClient, tokens::TokenError> {
        let token = self.tokens.issue(name, roles)?;
        Ok(client::AdminClient::new(&self.admin_url()).with_token(token))
    }

    /// The admission rules in force and their refusal counters.
    pub fn admission(&self) -> &admission::Admission {
        &self.admission
    }

    /// The gateway's TLS as it follows its files: the server certificate
    /// presented at new handshakes ([`tls::ServerTls::certificate`]).
    pub fn server_tls(&self) -> &tls::ServerTls {
        &self.server_tls
    }

    /// Graceful shutdown: stop accepting, send `Drain` to every session,
    /// wait for in-flight results (bounded by
    /// [`gateway::DRAIN_GRACE`]), close, free both ports.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("shutdown took too long; aborting");
                abort.abort();
            }
        }
        // Commit what is waiting and let go of the state file.
        let journal = self.journal;
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
        tracing::info!("orchestrator stopped");
    }
}

/// Loads the registry, TLS files and stores, restores the plans of
/// `data_dir`, binds both listeners (port 0 allowed) and starts serving;
/// returns once both are listening.
///
/// # Errors
/// [`StartError`] naming the file or address at fault.
pub async fn spawn(config: Config) -> Result<OrchestratorHandle, StartError> {
    if config.insecure_skip_checks {
        tracing::warn!(
            "!!! insecure_skip_checks is ON: plans are NOT validated against the registry and tasks are dispatched to ANY connected worker regardless of its manifest. This exists only to test the worker's own defenses; never use it otherwise. !!!"
        );
    }
    if !config.admin_listen.ip().is_loopback() && config.admin.tls.is_none() {
        return Err(StartError::AdminWithoutTls {
            addr: config.admin_listen,
        });
    }
    let admin_tls = config
        .admin
        .tls
        .as_ref()
        .map(|t| admin_tls::server_config(&t.cert, &t.key))
        .transpose()?;
    let tokens = tokens::TokenFile::new(&config.admin.tokens_file);
    let token_count = tokens.check()?;
    let registry = Arc::new(registry::Registry::load(&config.registry)?);
    let approval_keys =
        approvals::ApprovalKeys::load(&config.approvals).map_err(StartError::ApprovalKeys)?;
    let policies = Arc::new(policy::Policies::load(&config.approvals, &registry)?);
    let (tls_config, server_tls) = tls::server_tls(&config.tls, config.admission.crl.as_deref())?;
    let client_verifier = server_tls.verifier();
    let admission = Arc::new(
        admission::Admission::new(
            config.admission.identities.clone(),
            config.admission.max_connections_per_identity,
            config.admission.max_connections_before_hello,
        )
        .with_revocation(client_verifier.clone()),
    );
    admission.log_start();
    let store = Arc::new(store::Store::open(&config.data_dir, config.sync_writes)?);
    let (state, durable, journal) = open_state(&config, &store)?;
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set_auto_approver_key(policies.key_id().map(str::to_string));
    if let Some(dir) = &config.wire_capture_dir {
        std::fs::create_dir_all(dir).map_err(|source| StartError::WireCapture {
            path: dir.clone(),
            source,
        })?;
        tracing::warn!(dir = %dir.display(), "wire capture is ON (diagnostic): every byte received from workers is written to disk");
    }
    let bind = |what: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let grpc_listener = bind("grpc_listen", config.grpc_listen).await?;
    let admin_listener = bind("admin_listen", config.admin_listen).await?;
    let local = |l: &tokio::net::TcpListener, what: &'static str, addr: SocketAddr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let grpc_addr = local(&grpc_listener, "grpc_listen", config.grpc_listen)?;
    let admin_addr = local(&admin_listener, "admin_listen", config.admin_listen)?;

    let shutdown = CancellationToken::new();
    let sweeper = tokio::spawn(lease::run_sweeper(
        state.clone(),
        lease::sweep_period(config.lease_timeout),
        shutdown.clone(),
    ));

    let crl_watch = tokio::spawn(tls::watch_crl(client_verifier, shutdown.clone()));
    let tls_watch = tokio::spawn(
        server_tls
            .clone()
            .watch(config.tls_reload, shutdown.clone()),
    );
    // Worker gateway: our TLS accept loop feeds tonic.
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    let accept = tokio::spawn(tls::accept_loop(
        grpc_listener,
        tls_config,
        admission.clone(),
        config.wire_capture_dir.clone(),
        conn_tx,
        shutdown.clone(),
    ));
    // Fault injection (contract tests only): off unless opted in.
    let hooks = config.fault_injection.then(|| {
        tracing::warn!("{}", testing::WARNING);
        Arc::new(testing::Hooks::new(state.clone()))
    });
    let service = gateway::Gateway::new(
        state.clone(),
        durable.clone(),
        registry.clone(),
        store.clone(),
        config.heartbeat_interval,
        shutdown.clone(),
    )
    .with_fault_injection(hooks.clone());
    let server = private_worker_proto::v1::worker_gateway_server::WorkerGatewayServer::new(service)
        .max_decoding_message_size(gateway::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(gateway::MAX_MESSAGE_BYTES);
    let grpc_shutdown = shutdown.clone();
    let grpc = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
        let result = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "worker gateway stopped with an error");
        }
    });

    // Admin API, and the MCP server on the same listener and guard.
    let admin_state = admin::AdminState {
        state,
        durable,
        registry: registry.clone(),
        store,
        skip_checks: config.insecure_skip_checks,
        approval_keys,
        admission: admission.clone(),
        policies,
    };
    let mcp = mcp::service(
        admin_state.clone(),
        config.mcp.call_wait,
        shutdown.child_token(),
    );
    let router = admin::router(admin_state).route_service("/mcp", mcp);
    let router = match hooks {
        Some(hooks) => router.merge(testing::router(hooks)),
        None => router,
    };
    // One guard in front of every admin route, the testing hooks included.
    let policy = Arc::new(admin_auth::Policy::new(
        tokens.clone(),
        config.admin.allowed_hosts.clone(),
        admin_addr.port(),
        admin_tls.is_some(),
    ));
    let router = router.layer(axum::middleware::from_fn_with_state(
        policy,
        admin_auth::guard,
    ));
    if token_count == 0 {
        tracing::warn!(
            file = %tokens.path().display(),
            "no admin tokens yet: every admin call but /healthz is refused; create one with `orchestrator-mock token create --config <file> --name <name> --role <role>`"
        );
    }
    let admin_shutdown = shutdown.clone();
    let is_tls = admin_tls.is_some();
    let admin = match admin_tls {
        None => tokio::spawn(async move {
            let result = axum::serve(admin_listener, router)
                .with_graceful_shutdown(admin_shutdown.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "admin API stopped with an error");
            }
        }),
        Some(tls) => {
            let listener =
                admin_tls::TlsListener::spawn(admin_listener, tls, admin_shutdown.clone())
                    .map_err(|source| StartError::Bind {
                        what: "admin_listen",
                        addr: config.admin_listen,
                        source,
                    })?;
            tokio::spawn(async move {
                let result = axum::serve(listener, router)
                    .with_graceful_shutdown(admin_shutdown.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "admin API stopped with an error");
                }
            })
        }
    };

    tracing::info!(
        grpc = %grpc_addr,
        admin = %admin_addr,
        admin_tls = is_tls,
        admin_tokens = token_count,
        tasks = registry.len(),
        heartbeat = ?config.heartbeat_interval,
        lease_timeout = ?config.lease_timeout,
        "orchestrator-mock listening"
    );
    Ok(OrchestratorHandle {
        grpc_addr,
        admin_addr,
        admin_tls: is_tls,
        tokens,
        shutdown,
        tasks: vec![accept, grpc, admin, sweeper, crl_watch, tls_watch],
        journal,
        admission,
        server_tls,
    })
}

/// Opens the state store of `data_dir`, restores its plans, and applies
/// stored results whose effect on their plan was not durable yet (a crash
/// between the two commits).
fn open_state(
    config: &Config,
    store: &store::Store,
) -> Result<
    (
        state::SharedState,
        durable::journal::Durable,
        durable::journal::JournalHandle,
    ),
    StartError,
> {
    use durable::PlanStore as _;
    let plans = durable::redb_store::RedbStore::open(&config.data_dir, config.sync_writes)?;
    let records = plans.load()?;
    let (sender, durable, journal) =
        durable::journal::spawn(Box::new(plans)).map_err(StartError::Journal)?;
    let mut state =
        state::State::with_journal(config.insecure_skip_checks, config.lease_timeout, sender);
    state.restore(records);
    let mut applied = 0;
    for result in store.all_results()? {
        let Ok(status) =
            serde_json::from_value::<api::StepStatus>(serde_json::Value::String(result.outcome))
        else {
            continue;
        };
        let effect = state.apply_result(
            &result.worker_identity,
            &result.task_id,
            result.attempt,
            state::Reported {
                status,
                output: result.output,
                error_code: result.error_code,
                error_message: result.error_message,
            },
        );
        if matches!(effect, state::ResultEffect::Applied { .. }) {
            applied += 1;
        }
    }
    if applied > 0 {
        tracing::warn!(
            applied,
            "applied stored results whose effect was lost in a crash"
        );
    }
    Ok((Arc::new(Mutex::new(state)), durable, journal))
}

/// Runs until `shutdown` is cancelled, then shuts down gracefully.
///
/// # Errors
/// [`StartError`] when it cannot start.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let handle = spawn(config).await?;
    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(())
}
