//! The `orchestrator-mock` command line: `serve`, `check`, admin
//! subcommands (`plan ...`, `workers`, `identities`, `tasks`) that call the
//! admin API through [`crate::client`], `token create|list|revoke` for the
//! admin tokens ([`crate::tokens`]), and `test`, the scenario runner
//! ([`crate::scenario`]).
//!
//! The admin subcommands send the token of `--token-file` or, without it,
//! of the `ORCHESTRATOR_MOCK_TOKEN` environment variable; never of an
//! argument, which other users of the host could read in the process list.
//!
//! Output is for people (pretty JSON, one problem per line); `--json`
//! prints compact JSON for scripts. Exit codes: 0 success, 1 failure,
//! 2 plan refused, 3 plan finished but did not succeed (`plan wait`), 4 a
//! record of the plan flagged by the audit checks (`plan audit`);
//! `test`: 0 all scenarios passed, 1 one failed, 2 bad scenario or usage.
//!
//! What it does not do: set up tracing or signals (`main.rs` does), or
//! hold state between invocations.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::api::{PlanStatus, PlanSubmission};
use crate::client::{AdminClient, ClientError, TOKEN_ENV};
use crate::config::{Config, ConfigError};
use crate::tokens::{Role, TokenError, TokenFile};

/// Default admin API URL for the admin subcommands.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:7070";

/// Exit code when a submitted plan is refused.
pub const EXIT_PLAN_REFUSED: u8 = 2;
/// Exit code when `plan wait` sees a plan end other than succeeded.
pub const EXIT_PLAN_NOT_SUCCEEDED: u8 = 3;
/// Exit code when `plan audit` shows a record its checks flagged.
pub const EXIT_AUDIT_FLAGGED: u8 = 4;

/// A working stand-in for the private-worker cloud side.
#[derive(Debug, Parser)]
#[command(name = "orchestrator-mock", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator until SIGINT/SIGTERM.
    Serve {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Serve the fault-injection hooks under /v1/testing (contract
        /// tests only; same as `[testing] fault_injection = true`).
        #[arg(long)]
        fault_injection: bool,
        /// Listen for workers here instead of the config's `grpc_listen`.
        #[arg(long)]
        grpc_listen: Option<std::net::SocketAddr>,
        /// Serve the admin API here instead of the config's `admin_listen`.
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
    },
    /// Run contract-test scenarios (TOML files, see SCENARIOS.md) against
    /// this mock and a worker; exit 0 when all pass, 1 when one fails, 2
    /// for a bad scenario file or usage.
    Test(TestArgs),
    /// Validate the config, the registry and the TLS files, then exit.
    Check {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Plans: submit, show, approve, reject, cancel, results, audit, wait.
    Plan {
        /// Admin connection.
        #[command(flatten)]
        admin: AdminArgs,
        /// Plan subcommand.
        #[command(subcommand)]
        command: PlanCommand,
    },
    /// List connected workers.
    Workers {
        /// Admin connection.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List every worker identity known (connected or not) with its lease
    /// and the attempts it holds.
    Identities {
        /// Admin connection.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List results (and their audit records) kept as evidence but part of
    /// no plan: sent for an attempt never assigned, or assigned to another
    /// identity.
    Unattributed {
        /// Admin connection.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The MCP server over stdio, for clients that only start local
    /// servers: forwards each JSON-RPC line from stdin to the admin API's
    /// `/mcp` with the token (role `submit`) and writes the answers to
    /// stdout. The orchestrator must be running.
    McpStdio {
        /// Admin connection.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List registered tasks.
    Tasks {
        /// Admin connection.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Admin API tokens: create (printed once), list, revoke. Works on the
    /// token file directly; a running server sees changes at its next
    /// request.
    Token {
        /// Token subcommand.
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Where the token file is: from a config, or in a data directory.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("store").required(true).args(["config", "data_dir"])))]
pub struct TokenStoreArgs {
    /// The orchestrator's config file (its `[admin] tokens_file`, default
    /// `admin_tokens.json` in its `data_dir`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The orchestrator's data directory (the token file is
    /// `admin_tokens.json` in it).
    #[arg(long, visible_alias = "state-dir")]
    pub data_dir: Option<PathBuf>,
}

impl TokenStoreArgs {
    fn file(&self) -> Result<TokenFile, CliError> {
        match (&self.config, &self.data_dir) {
            (Some(config), _) => Ok(TokenFile::new(
                Config::from_toml_file(config)?.admin.tokens_file,
            )),
            (None, Some(dir)) => Ok(TokenFile::in_data_dir(dir)),
            (None, None) => unreachable!("clap requires --config or --data-dir"),
        }
    }
}

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored). Give
    /// the submitting agent `--role submit --role read` and the person who
    /// approves a separate token with `--role approve --role read`.
    Create {
        /// Token file location.
        #[command(flatten)]
        store: TokenStoreArgs,
        /// A name for who holds it (logged with each refusal): 1 to 64 of
        /// A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// A role: read, submit, approve or operate; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<Role>,
    },
    /// List tokens: names, roles and creation times (never the tokens).
    List {
        /// Token file location.
        #[command(flatten)]
        store: TokenStoreArgs,
        /// Print compact JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name; refused from the next request on.
    Revoke {
        /// Token file location.
        #[command(flatten)]
        store: TokenStoreArgs,
        /// The token's name.
        #[arg(long)]
        name: String,
    },
}

/// Options of `orchestrator-mock test`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mock").required(true).args(["config", "admin_url"])))]
pub struct TestArgs {
    /// Scenario files, or folders whose *.toml files run in name order.
    #[arg(required = true, value_name = "SCENARIO FILES OR FOLDERS")]
    pub paths: Vec<PathBuf>,
    /// Start the mock with this config (`serve --fault-injection`), and
    /// stop it at the end.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Use the mock already running here (no `restart_orchestrator`).
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Start the worker under test with `sh -c <command>` once the mock is
    /// up (it gets ORCHESTRATOR_GRPC_ADDR and ORCHESTRATOR_ADMIN_URL), and
    /// stop it at the end; without it a worker must connect by itself.
    #[arg(long)]
    pub worker_cmd: Option<String>,
    /// The worker's log file (its tail is shown for failures); default in
    /// the run's log folder.
    #[arg(long)]
    pub worker_log: Option<PathBuf>,
    /// Seconds to wait for a connected worker before a scenario fails.
    #[arg(long, default_value_t = 30)]
    pub wait_worker: u64,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Run only scenarios whose name or file path contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// With --admin-url: a file holding an admin token with every role
    /// (read, submit, approve, operate); default the ORCHESTRATOR_MOCK_TOKEN
    /// environment variable. With --config the runner issues its own.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Where the admin API is and how to print.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(long, env = "ORCHESTRATOR_ADMIN_URL", default_value = DEFAULT_ADMIN_URL, global = true)]
    pub admin_url: String,
    /// Print compact JSON instead of pretty output.
    #[arg(long, global = true)]
    pub json: bool,
    /// A file holding the admin token (create one with `token create`);
    /// without it the token comes from the ORCHESTRATOR_MOCK_TOKEN
    /// environment variable.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The token, from `--token-file` or the environment.
    fn token(&self) -> Result<String, CliError> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| CliError::Input {
                path: path.clone(),
                message: format!("cannot read the token file: {e}"),
            })?,
            None => std::env::var(TOKEN_ENV).unwrap_or_default(),
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(CliError::NoToken);
        }
        Ok(token)
    }

    /// A client of the admin API with the token.
    fn client(&self) -> Result<AdminClient, CliError> {
        Ok(AdminClient::new(&self.admin_url).with_token(self.token()?))
    }
}

/// Plan subcommands.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Submit a plan from a JSON file (`-` for stdin).
    Submit {
        /// The plan JSON: `{"name": ..., "steps": [{"task": ..., "inputs": {...},
        /// "deadline": "2026-05-01T12:00:00Z"}]}` (deadline optional).
        file: PathBuf,
        /// The W3C traceparent the plan's tasks join
        /// (`00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`); it
        /// replaces a `traceparent` in the file. Without either the
        /// orchestrator starts a trace; `plan show` prints the plan's.
        #[arg(long, value_name = "TRACEPARENT")]
        traceparent: Option<String>,
    },
    /// Show a plan.
    Show {
        /// Plan id.
        id: String,
    },
    /// Approve a pending plan.
    Approve {
        /// Plan id.
        id: String,
        /// Sign every step with this approver key (PKCS#8 PEM, from
        /// `certs-tool approver-key`): required when the orchestrator
        /// trusts approver keys. The key stays in this process.
        #[arg(long, value_name = "FILE", requires_all = ["key_id", "audience"])]
        key: Option<std::path::PathBuf>,
        /// The id of that key, as workers and the orchestrator know it.
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// Who may run the steps: a worker identity (spiffe://...) or a
        /// pool name the workers accept.
        #[arg(long, value_name = "AUDIENCE")]
        audience: Option<String>,
        /// How long the approvals stay valid.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime_serde::re::humantime::parse_duration)]
        valid_for: Duration,
        /// The review digest of the plan as you reviewed it: signing happens
        /// only if the plan the orchestrator serves now has this digest.
        /// Without it, the steps and their digest are printed and nothing is
        /// signed.
        #[arg(long, value_name = "SHA256", requires = "key")]
        expect_digest: Option<String>,
    },
    /// Reject a pending plan.
    Reject {
        /// Plan id.
        id: String,
        /// Why.
        #[arg(long, default_value = "rejected from the CLI")]
        reason: String,
    },
    /// Cancel a plan (or, with `--step`, the plan from that step on).
    Cancel {
        /// Plan id.
        id: String,
        /// Cancel from this step index on; earlier steps still run.
        #[arg(long)]
        step: Option<usize>,
        /// Why (sent to the worker in `Cancel.reason`).
        #[arg(long, default_value = "cancelled from the CLI")]
        reason: String,
    },
    /// Stored results of a plan.
    Results {
        /// Plan id.
        id: String,
    },
    /// Stored audit records of a plan.
    Audit {
        /// Plan id.
        id: String,
    },
    /// Wait until a plan is finished; exit 3 if it did not succeed.
    Wait {
        /// Plan id.
        id: String,
        /// Give up after this long.
        #[arg(long, default_value = "60s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config is invalid; the message lists every bad key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The orchestrator could not start.
    #[error(transparent)]
    Start(#[from] crate::StartError),
    /// An admin call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local file could not be read or parsed.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing to stdout failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// An admin subcommand found no token.
    #[error(
        "no admin token: set ORCHESTRATOR_MOCK_TOKEN or pass --token-file (create a token with `orchestrator-mock token create --config <file> --name <name> --role <role>`)"
    )]
    NoToken,
    /// The token file could not be read or written.
    #[error(transparent)]
    Tokens(#[from] TokenError),
}

/// Runs one command. `shutdown` ends `serve`.
///
/// # Errors
/// [`CliError`]; a refused plan is not an error here (it prints the
/// problems and returns exit code 2).
pub async fn execute(cli: Cli, shutdown: CancellationToken) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Serve {
            config,
            fault_injection,
            grpc_listen,
            admin_listen,
        } => {
            let overrides = ServeOverrides {
                fault_injection,
                grpc_listen,
                admin_listen,
            };
            serve(&config, overrides, shutdown).await
        }
        Command::Test(args) => {
            let mock = match (args.config, args.admin_url) {
                (Some(config), _) => crate::scenario::MockSource::Config(config),
                (None, Some(url)) => crate::scenario::MockSource::AdminUrl(url),
                (None, None) => unreachable!("clap requires --config or --admin-url"),
            };
            let options = crate::scenario::TestOptions {
                paths: args.paths,
                mock,
                worker_cmd: args.worker_cmd,
                worker_log: args.worker_log,
                wait_worker: Duration::from_secs(args.wait_worker),
                junit: args.junit,
                filter: args.filter,
                token_file: args.token_file,
            };
            Ok(ExitCode::from(
                crate::scenario::run(options, shutdown).await,
            ))
        }
        Command::Check { config } => Ok(check(&config)),
        Command::Plan { admin, command } => plan(&admin, command).await,
        Command::Token { command } => token(command),
        Command::Workers { admin } => {
            let workers = admin.client()?.workers().await?;
            print(&admin, &workers)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Identities { admin } => {
            let identities = admin.client()?.identities().await?;
            print(&admin, &identities)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Unattributed { admin } => {
            let evidence = admin.client()?.unattributed().await?;
            print(&admin, &evidence)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::McpStdio { admin } => {
            let token = admin.token()?;
            let url = format!("{}/mcp", admin.admin_url.trim_end_matches('/'));
            crate::mcp_stdio::run(
                reqwest::Client::new(),
                url,
                token,
                tokio::io::BufReader::new(tokio::io::stdin()),
                tokio::io::stdout(),
            )
            .await
            .map_err(|e| CliError::Output(std::io::Error::other(e.to_string())))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tasks { admin } => {
            let tasks = admin.client()?.tasks().await?;
            print(&admin, &tasks)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `serve` options change in the config.
#[derive(Debug, Clone, Copy, Default)]
struct ServeOverrides {
    fault_injection: bool,
    grpc_listen: Option<std::net::SocketAddr>,
    admin_listen: Option<std::net::SocketAddr>,
}

async fn serve(
    path: &std::path::Path,
    overrides: ServeOverrides,
    shutdown: CancellationToken,
) -> Result<ExitCode, CliError> {
    let mut config = Config::from_toml_file(path)?;
    config.fault_injection |= overrides.fault_injection;
    if let Some(addr) = overrides.grpc_listen {
        config.grpc_listen = addr;
    }
    if let Some(addr) = overrides.admin_listen {
        config.admin_listen = addr;
    }
    let handle = crate::spawn(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "orchestrator-mock ready grpc={} admin={}",
            handle.grpc_addr(),
            handle.admin_url()
        )?;
        out.flush()?;
    }
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Validates everything `serve` would load, printing one line per check.
fn check(path: &std::path::Path) -> ExitCode {
    let mut ok = true;
    let mut report = |good: bool, what: &str, detail: String| {
        ok &= good;
        println!("{} {what}: {detail}", if good { "ok  " } else { "FAIL" });
    };
    let config = match Config::from_toml_file(path) {
        Ok(c) => {
            report(true, "config", path.display().to_string());
            c
        }
        Err(e) => {
            report(false, "config", e.to_string());
            return ExitCode::FAILURE;
        }
    };
    match crate::registry::Registry::load(&config.registry) {
        Ok(r) => report(
            true,
            "registry",
            format!("{} task versions in {}", r.len(), config.registry.display()),
        ),
        Err(e) => report(false, "registry", e.to_string()),
    }
    match crate::tls::server_tls(&config.tls, config.admission.crl.as_deref()) {
        Ok((_, server)) => {
            let cert = server.certificate();
            let left = cert
                .not_after
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            report(
                !left.is_zero(),
                "tls",
                format!(
                    "server chain {} (serial {}, not_after {}, {}) with client CA {}; files re-read every {:?}",
                    config.tls.cert.display(),
                    cert.serial,
                    cert.not_after_rfc3339,
                    if left.is_zero() {
                        "EXPIRED: renew it (certs-tool renew)".to_string()
                    } else if left < config.tls_reload.expiry_warning {
                        format!(
                            "expires in {} day(s), within tls.expiry_warning",
                            left.as_secs() / 86_400
                        )
                    } else {
                        format!("{} day(s) left", left.as_secs() / 86_400)
                    },
                    config.tls.ca_cert.display(),
                    config.tls_reload.reload_interval,
                ),
            );
        }
        Err(e) => report(false, "tls", e.to_string()),
    }
    match crate::approvals::ApprovalKeys::load(&config.approvals) {
        Ok(keys) if keys.required() => report(
            true,
            "approvals",
            format!(
                "approver key(s) {}: approving a plan takes a signed approval per step",
                config
                    .approvals
                    .keys
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Ok(_) => report(
            true,
            "approvals",
            "no approver key ([approvals] keys): plans are approved without signatures".into(),
        ),
        Err(e) => report(false, "approvals", e),
    }
    if let Ok(registry) = crate::registry::Registry::load(&config.registry) {
        match crate::policy::Policies::load(&config.approvals, &registry) {
            Ok(policies) => {
                let count = |p: crate::api::ApprovalPolicy| {
                    registry.views().iter().filter(|t| t.approval == p).count()
                };
                report(
                    true,
                    "policies",
                    format!(
                        "{} task version(s) approved by a person, {} automatically, {} denied; {}",
                        count(crate::api::ApprovalPolicy::Human),
                        count(crate::api::ApprovalPolicy::Auto),
                        count(crate::api::ApprovalPolicy::Deny),
                        match policies.key_id() {
                            Some(key) => format!("auto-approver key {key}"),
                            None => "no auto-approver".into(),
                        }
                    ),
                );
            }
            Err(e) => report(false, "policies", e.to_string()),
        }
    }
    match std::fs::create_dir_all(&config.data_dir) {
        Ok(()) => report(true, "data_dir", config.data_dir.display().to_string()),
        Err(e) => report(
            false,
            "data_dir",
            format!("{}: {e}", config.data_dir.display()),
        ),
    }
    match TokenFile::new(&config.admin.tokens_file).check() {
        Ok(0) => report(
            true,
            "admin tokens",
            format!(
                "none yet in {} (create one with `token create`)",
                config.admin.tokens_file.display()
            ),
        ),
        Ok(n) => report(
            true,
            "admin tokens",
            format!("{n} in {}", config.admin.tokens_file.display()),
        ),
        Err(e) => report(false, "admin tokens", e.to_string()),
    }
    match &config.admin.tls {
        Some(tls) => match crate::admin_tls::server_config(&tls.cert, &tls.key) {
            Ok(_) => report(
                true,
                "admin tls",
                format!("certificate {}", tls.cert.display()),
            ),
            Err(e) => report(false, "admin tls", e.to_string()),
        },
        None if !config.admin_listen.ip().is_loopback() => report(
            false,
            "admin_listen",
            crate::StartError::AdminWithoutTls {
                addr: config.admin_listen,
            }
            .to_string(),
        ),
        None => {}
    }
    if config.insecure_skip_checks {
        report(
            true,
            "WARNING",
            "insecure_skip_checks = true: plans are not validated and manifests are ignored".into(),
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn plan(admin: &AdminArgs, command: PlanCommand) -> Result<ExitCode, CliError> {
    let client = admin.client()?;
    match command {
        PlanCommand::Submit { file, traceparent } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| CliError::Input {
                path: file.clone(),
                message: e.to_string(),
            })?;
            let mut request: PlanSubmission =
                serde_json::from_str(&text).map_err(|e| CliError::Input {
                    path: file.clone(),
                    message: format!("not a plan: {e}"),
                })?;
            if traceparent.is_some() {
                request.traceparent = traceparent;
            }
            match client.submit(&request).await {
                Ok(view) => print(admin, &view)?,
                Err(e) if !e.problems().is_empty() => {
                    eprintln!("plan refused:");
                    for p in e.problems() {
                        eprintln!("  {p}");
                    }
                    return Ok(ExitCode::from(EXIT_PLAN_REFUSED));
                }
                Err(e @ ClientError::Api { status: 422, .. }) => {
                    eprintln!("plan refused: {e}");
                    return Ok(ExitCode::from(EXIT_PLAN_REFUSED));
                }
                Err(e) => return Err(e.into()),
            }
        }
        PlanCommand::Show { id } => {
            let plan = client.plan(&id).await?;
            print(admin, &plan)?;
            eprintln!(
                "review digest: {} (pin it when signing: plan approve --expect-digest)",
                crate::approvals::review_digest(&plan)
            );
        }
        PlanCommand::Approve {
            id,
            key,
            key_id,
            audience,
            valid_for,
            expect_digest,
        } => {
            let view = match (key, key_id, audience) {
                (Some(key), Some(key_id), Some(audience)) => {
                    let unusable = |message: String| CliError::Input {
                        path: key.clone(),
                        message,
                    };
                    let pem = std::fs::read(&key).map_err(|e| unusable(e.to_string()))?;
                    let signer =
                        private_worker_proto::approval::KeyFileSigner::from_pem(&key_id, &pem)
                            .map_err(unusable)?;
                    let plan = client.plan(&id).await?;
                    let digest = crate::approvals::review_digest(&plan);
                    if plan.id != id || expect_digest.as_deref() != Some(digest.as_str()) {
                        eprintln!("plan {id} as the orchestrator serves it now:");
                        for line in crate::approvals::review_lines(&plan) {
                            eprintln!("  {line}");
                        }
                        eprintln!("review digest: {digest}");
                        let why = match &expect_digest {
                            None => "nothing signed: check the steps above, then run again with --expect-digest <review digest>".to_string(),
                            Some(expected) => format!(
                                "nothing signed: the plan differs from the one you reviewed (expected digest {expected}); review it again"
                            ),
                        };
                        return Err(CliError::Input {
                            path: PathBuf::from(format!("plan {id}")),
                            message: why,
                        });
                    }
                    let approvals = crate::approvals::sign_plan(
                        &signer,
                        &plan,
                        &audience,
                        std::time::SystemTime::now(),
                        valid_for,
                    )
                    .map_err(|e| CliError::Input {
                        path: PathBuf::from(format!("plan {id}")),
                        message: e,
                    })?;
                    client
                        .approve_with(&id, &crate::api::ApproveRequest { approvals })
                        .await?
                }
                _ => client.approve(&id).await?,
            };
            print(admin, &view)?
        }
        PlanCommand::Reject { id, reason } => print(admin, &client.reject(&id, &reason).await?)?,
        PlanCommand::Cancel { id, step, reason } => {
            let view = match step {
                Some(index) => client.cancel_step(&id, index, &reason).await?,
                None => client.cancel_plan(&id, &reason).await?,
            };
            print(admin, &view)?;
        }
        PlanCommand::Results { id } => print(admin, &client.results(&id).await?)?,
        PlanCommand::Audit { id } => {
            let records = client.audit(&id).await?;
            print(admin, &records)?;
            let flagged: Vec<_> = records.iter().filter(|r| r.check.is_flagged()).collect();
            let unchecked = records
                .iter()
                .filter(|r| !r.check.is_ok() && !r.check.is_flagged())
                .count();
            for r in &flagged {
                eprintln!(
                    "flagged: task {} attempt {} (sequence {} from {}): {}",
                    r.task_id,
                    r.attempt,
                    r.sequence,
                    r.worker_identity,
                    r.check.problems.join("; ")
                );
            }
            eprintln!(
                "audit: {} records, {} flagged, {unchecked} stored before checks existed",
                records.len(),
                flagged.len()
            );
            if !flagged.is_empty() {
                return Ok(ExitCode::from(EXIT_AUDIT_FLAGGED));
            }
        }
        PlanCommand::Wait { id, timeout } => {
            let view = client.wait_for_plan(&id, timeout).await?;
            print(admin, &view)?;
            if view.status != PlanStatus::Succeeded {
                return Ok(ExitCode::from(EXIT_PLAN_NOT_SUCCEEDED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token(command: TokenCommand) -> Result<ExitCode, CliError> {
    match command {
        TokenCommand::Create { store, name, roles } => {
            let file = store.file()?;
            let token = file.create(&name, &roles)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{token}")?;
            out.flush()?;
            let shown: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            eprintln!(
                "created token {name:?} with roles [{}] in {}; it is shown only this once. Give it to its holder in a file (--token-file, mode 0600) or as {TOKEN_ENV}.",
                shown.join(", "),
                file.path().display()
            );
            if roles.contains(&Role::Submit) && roles.contains(&Role::Approve) {
                eprintln!(
                    "warning: this token can both submit and approve plans; the agent that submits should not be able to approve its own plans"
                );
            }
        }
        TokenCommand::List { store, json } => {
            let tokens = store.file()?.list()?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&tokens).map_err(std::io::Error::other)?
                )?;
            } else {
                for t in &tokens {
                    let roles: Vec<&str> = t.roles.iter().map(|r| r.as_str()).collect();
                    writeln!(out, "{}\t{}\t{}", t.name, roles.join(","), t.created_at)?;
                }
            }
        }
        TokenCommand::Revoke { store, name } => {
            let file = store.file()?;
            file.revoke(&name)?;
            eprintln!(
                "revoked token {name:?} in {}; refused from the next request",
                file.path().display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print<T: Serialize>(admin: &AdminArgs, value: &T) -> Result<(), CliError> {
    let text = if admin.json {
        serde_json::to_string(value)
    } else {
        serde_json::to_string_pretty(value)
    }
    .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_needs_scenarios_and_exactly_one_mock_source() {
        let cli = Cli::try_parse_from([
            "orchestrator-mock",
            "test",
            "--config",
            "mock.toml",
            "--worker-cmd",
            "exec worker",
            "--junit",
            "out.xml",
            "pack/",
        ])
        .unwrap();
        match cli.command {
            Command::Test(args) => {
                assert_eq!(args.paths, [PathBuf::from("pack/")]);
                assert_eq!(args.wait_worker, 30);
                assert_eq!(args.worker_cmd.as_deref(), Some("exec worker"));
            }
            other => panic!("parsed as {other:?}"),
        }
        for bad in [
            vec!["orchestrator-mock", "test", "pack/"],
            vec!["orchestrator-mock", "test", "--config", "m.toml"],
            vec![
                "orchestrator-mock",
                "test",
                "--config",
                "m.toml",
                "--admin-url",
                "http://x",
                "pack/",
            ],
        ] {
            let err = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn token_create_takes_a_store_a_name_and_repeated_roles() {
        let cli = Cli::try_parse_from([
            "orchestrator-mock",
            "token",
            "create",
            "--state-dir",
            "d",
            "--name",
            "agent",
            "--role",
            "submit",
            "--role",
            "read",
        ])
        .unwrap();
        match cli.command {
            Command::Token {
                command: TokenCommand::Create { store, name, roles },
            } => {
                assert_eq!(store.data_dir, Some(PathBuf::from("d")));
                assert_eq!(name, "agent");
                assert_eq!(roles, [Role::Submit, Role::Read]);
            }
            other => panic!("parsed as {other:?}"),
        }
        for bad in [
            vec![
                "orchestrator-mock",
                "token",
                "create",
                "--name",
                "a",
                "--role",
                "read",
            ],
            vec![
                "orchestrator-mock",
                "token",
                "create",
                "--data-dir",
                "d",
                "--name",
                "a",
            ],
            vec![
                "orchestrator-mock",
                "token",
                "create",
                "--data-dir",
                "d",
                "--name",
                "a",
                "--role",
                "admin",
            ],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plan_cancel_takes_an_optional_step_and_a_reason() {
        let cli =
            Cli::try_parse_from(["orchestrator-mock", "plan", "cancel", "abc", "--step", "2"])
                .unwrap();
        match cli.command {
            Command::Plan {
                command: PlanCommand::Cancel { id, step, reason },
                ..
            } => {
                assert_eq!((id.as_str(), step), ("abc", Some(2)));
                assert_eq!(reason, "cancelled from the CLI");
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn plan_wait_takes_a_humantime_timeout_and_an_admin_url() {
        let cli = Cli::try_parse_from([
            "orchestrator-mock",
            "plan",
            "--admin-url",
            "http://x:1",
            "wait",
            "abc",
            "--timeout",
            "2m",
        ])
        .unwrap();
        match cli.command {
            Command::Plan {
                admin,
                command: PlanCommand::Wait { id, timeout },
            } => {
                assert_eq!(admin.admin_url, "http://x:1");
                assert_eq!(id, "abc");
                assert_eq!(timeout, Duration::from_secs(120));
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
