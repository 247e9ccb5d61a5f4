//! The worker's configuration: one TOML file, parsed and validated here and
//! nowhere else.
//!
//! [`Config::load`] reads the file, resolves relative paths against the
//! file's directory, and checks every value it can check without touching
//! the network (input schemas compile, URL templates keep placeholders out of
//! the host, secret references parse). It reports every problem at once,
//! each with its path in the file (`tasks.crm.create_ticket.input_schema: ...`).
//!
//! The types it assembles belong to the modules that use them: the
//! `[keyvault]` section is validated by its owner
//! ([`KeyVaultSettings::from_section`], defaults included) and only
//! prefixed here; `[orchestrator] proxy` by [`ProxySettings::from_raw`]; an
//! HTTP task's call is checked here into the executor's
//! [`HttpExecutorConfig`] and [`AuthConfig`]; secret references parse as
//! [`SecretRef`]. Problems across parts (a `keyvault://` reference without
//! a `[keyvault]` section) are found here. Nothing under `executor` or
//! `secrets` imports this module.
//!
//! It does not open TLS files or resolve secrets: [`crate::check`] does that
//! for `--check`, and the worker does it at start-up.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::executor::http::{AuthConfig, HttpExecutorConfig, UrlTemplate};
use crate::proxy::ProxySettings;
use crate::secrets::SecretRef;
use crate::secrets::keyvault::{KeyVaultSection, KeyVaultSettings};

/// Default number of tasks the worker runs at once.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16;
/// Default time allowed for one task's call to an internal API.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on the response body kept from an internal API.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Default time allowed for TCP connect plus TLS handshake to the orchestrator.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default heartbeat interval used until the orchestrator's `Welcome` says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Default time in-flight tasks get to finish after a shutdown request.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Longest drain grace period accepted.
pub const MAX_DRAIN_GRACE: Duration = Duration::from_secs(3600);
/// Default first reconnect delay (before jitter).
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(200);
/// Default longest reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default longest approval window accepted (`approvals.max_validity`).
pub const DEFAULT_APPROVAL_MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Default clock skew allowed at both ends of an approval window.
pub const DEFAULT_APPROVAL_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Largest `approvals.clock_skew` accepted; used approvals are remembered
/// this long past their window, whatever the skew configured now.
pub const MAX_APPROVAL_CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Longest `approvals.max_validity` accepted: it bounds how long the
/// journal remembers used nonces.
pub const MAX_APPROVAL_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The status file's name when `worker.status_file` is not set (it goes
/// beside the audit log).
pub const DEFAULT_STATUS_FILE_NAME: &str = "status.json";

/// The validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where and how to reach the orchestrator.
    pub orchestrator: OrchestratorConfig,
    /// The worker's own certificate and the CA it trusts for the orchestrator.
    pub tls: TlsFiles,
    /// How the TLS files are followed while the worker runs (`[tls]
    /// reload_interval`, `[tls] expiry_warning`).
    pub tls_rotation: crate::tls::RotationSettings,
    /// How many tasks run at once; also the credit announced in `Hello`.
    pub max_in_flight: u32,
    /// Where the worker's local, hash-chained audit log is appended.
    pub audit_log: PathBuf,
    /// The local kill switch: while this file exists every assignment is
    /// refused (`kill_switch`, REJECTED) and nothing runs. Default: `STOP`
    /// in the audit log's directory.
    pub kill_switch: PathBuf,
    /// Whether each audit commit waits for the disk (`fdatasync`). On by
    /// default; off only where losing the last records in a power cut is
    /// acceptable (benchmarks).
    pub audit_fsync: bool,
    /// Where the durable journal of attempts is kept (default: beside the
    /// audit log, `<audit log name>.journal.redb`). One worker process per
    /// journal.
    pub journal: PathBuf,
    /// Where the worker writes its status for `private-worker status` and
    /// monitoring (default: `status.json` beside the audit log). Replaced
    /// atomically; never holds a secret.
    pub status_file: PathBuf,
    /// Where Prometheus metrics are served, if the operator asked for them
    /// (`[metrics] listen`, loopback only). `None`: the worker listens on
    /// nothing at all.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How many acknowledged task ids the journal remembers to refuse
    /// running them again.
    pub journal_retain: u64,
    /// Time in-flight tasks get to finish after a shutdown request.
    pub drain_grace: Duration,
    /// The local allowlist: every task this worker may run, by name.
    pub tasks: BTreeMap<String, TaskConfig>,
    /// How to reach Azure Key Vault; `None` when the config has no
    /// `[keyvault]` section (then no task may use a `keyvault://` reference).
    pub keyvault: Option<KeyVaultSettings>,
    /// Signed approvals: the approver keys trusted and how they are checked
    /// (`[approvals]`; no keys when the section is absent).
    pub approvals: ApprovalSettings,
}

/// `[approvals]`: which approver keys the worker trusts. With at least one
/// key, every task requires a signed approval unless its config says
/// `require_approval = false`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// Trusted approver public keys (PEM files), by key id; several allow
    /// rotation.
    pub keys: Vec<ApproverKey>,
    /// Audiences accepted besides the worker's own identity (pool names).
    pub audiences: Vec<String>,
    /// Longest approval window accepted.
    pub max_validity: Duration,
    /// Clock skew allowed at both ends of a window.
    pub clock_skew: Duration,
}

/// One trusted approver key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverKey {
    /// The key id approvals name.
    pub id: String,
    /// PEM `PUBLIC KEY` file (Ed25519), as `certs-tool approver-key` writes it.
    pub public_key: PathBuf,
    /// `tasks`: when set, the only task names this key may approve here
    /// (for a key trusted less, such as an orchestrator's auto-approver
    /// for read-only tasks); an approval by it for another task is refused
    /// (`approval_key_not_for_task`). `None`: every task.
    pub tasks: Option<Vec<String>>,
}

/// Where and how to reach the orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// `host:port` to dial.
    pub address: String,
    /// The name the orchestrator's certificate must carry (DNS or IP SAN).
    /// The worker refuses an orchestrator whose certificate does not.
    pub server_name: String,
    /// Limit for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// First reconnect delay, before jitter.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// `proxy`, `proxy_username`, `proxy_password`: the HTTP proxy for the
    /// stream, or the environment's, or none ([`crate::proxy`]).
    pub proxy: ProxySettings,
}

/// TLS material, all PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Trust anchors for the orchestrator's certificate.
    pub ca_cert: PathBuf,
    /// The worker's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The worker's private key.
    pub key: PathBuf,
}

/// One locally allowed task.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Registered name (the key of the `[tasks]` table).
    pub name: String,
    /// Registered version; an assignment for another version is refused.
    pub version: String,
    /// JSON Schema the inputs must satisfy, checked again on the worker.
    pub input_schema: serde_json::Value,
    /// Time allowed for the call.
    pub timeout: Duration,
    /// Whether the internal API tolerates the same call twice (it honours
    /// the `Idempotency-Key` header, or the operation is naturally
    /// repeatable). Only then does the worker run a task id again that it
    /// already started. Off by default.
    pub idempotent: bool,
    /// Whether an assignment of this task must carry a signed approval from
    /// a trusted key. Default: on when `[approvals]` lists keys.
    pub require_approval: bool,
    /// What the task does.
    pub executor: ExecutorConfig,
}

/// How a task is executed: one variant per executor kind.
// One per allowed task, built once at start-up: boxing the HTTP variant
// would buy nothing but an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ExecutorConfig {
    /// An HTTP call to an internal API.
    Http(HttpExecutorConfig),
    /// No call at all: the output is the inputs. For connectivity checks
    /// and benchmarks of the worker itself (`echo = true` in the task table).
    Echo,
}

impl ExecutorConfig {
    /// The credential this executor needs, if any.
    pub fn secret(&self) -> Option<&SecretRef> {
        match self {
            ExecutorConfig::Http(http) => http.auth.as_ref().map(AuthConfig::secret),
            ExecutorConfig::Echo => None,
        }
    }
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path of the offending value, e.g. `tasks.crm.create_ticket.http.url`.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded. Every variant means: fix the
/// file and start again.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but values are invalid; every problem is listed.
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    orchestrator: RawOrchestrator,
    tls: RawTls,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    tasks: BTreeMap<String, RawTask>,
    keyvault: Option<KeyVaultSection>,
    approvals: Option<RawApprovals>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    #[serde(default)]
    keys: Vec<RawApproverKey>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    max_validity: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    clock_skew: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproverKey {
    id: String,
    public_key: PathBuf,
    #[serde(default)]
    tasks: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    max_in_flight: Option<u32>,
    audit_log: Option<PathBuf>,
    kill_switch: Option<PathBuf>,
    status_file: Option<PathBuf>,
    audit_fsync: Option<bool>,
    journal: Option<PathBuf>,
    journal_retain: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    drain_grace: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrchestrator {
    address: String,
    server_name: String,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    reconnect_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    reconnect_max: Option<Duration>,
    proxy: Option<String>,
    proxy_username: Option<String>,
    proxy_password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default, with = "humantime_serde")]
    reload_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    expiry_warning: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    version: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans reading the file
    description: Option<String>,
    input_schema: toml::Value,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    http: Option<RawHttp>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    idempotent: bool,
    require_approval: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<toml::Value>,
    auth: Option<RawAuth>,
    max_response_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
enum RawAuth {
    Bearer { secret: String },
    Header { name: String, secret: String },
}

impl Config {
    /// Every credential the allowed tasks name (a task without one names
    /// none), for [`crate::secrets::Secrets::new`].
    pub fn secret_refs(&self) -> impl Iterator<Item = &SecretRef> {
        self.tasks.values().filter_map(|t| t.executor.secret())
    }

    /// Reads and validates the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] with every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            ParseFailure::Invalid(problems) => ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
        })
    }

    /// Parses config text; relative paths are resolved against `base_dir`.
    ///
    /// # Errors
    /// [`ConfigError`] (with `<inline>` as the path) listing every problem.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let path = PathBuf::from("<inline>");
        Self::parse(text, base_dir).map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Syntax { path, message },
            ParseFailure::Invalid(problems) => ConfigError::Invalid { path, problems },
        })
    }

    fn parse(text: &str, base: &Path) -> Result<Config, ParseFailure> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(syntax_message(text, &e)))?;
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| {
            problems.push(ConfigProblem { path, message });
        };

        if raw
            .orchestrator
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
            && !raw.orchestrator.address.contains(':')
        {
            problem(
                "orchestrator.address".into(),
                format!(
                    "`{}` is not host:port (for example `orchestrator.example.com:7443`)",
                    raw.orchestrator.address
                ),
            );
        }
        if rustls_pki_types::ServerName::try_from(raw.orchestrator.server_name.as_str()).is_err() {
            problem(
                "orchestrator.server_name".into(),
                format!(
                    "`{}` is not a DNS name or IP address",
                    raw.orchestrator.server_name
                ),
            );
        }
        let proxy = ProxySettings::from_raw(
            raw.orchestrator.proxy.as_deref(),
            raw.orchestrator.proxy_username.as_deref(),
            raw.orchestrator.proxy_password.as_deref(),
        )
        .unwrap_or_else(|found| {
            for (key, message) in found {
                problem(format!("orchestrator.{key}"), message);
            }
            ProxySettings::default()
        });
        let max_in_flight = raw.worker.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 || max_in_flight > 4096 {
            problem(
                "worker.max_in_flight".into(),
                format!("{max_in_flight} is out of range; use 1..=4096"),
            );
        }
        let drain_grace = raw.worker.drain_grace.unwrap_or(DEFAULT_DRAIN_GRACE);
        let tls_rotation = crate::tls::RotationSettings {
            reload_interval: raw
                .tls
                .reload_interval
                .unwrap_or(crate::tls::DEFAULT_RELOAD_INTERVAL),
            expiry_warning: raw
                .tls
                .expiry_warning
                .unwrap_or(crate::tls::DEFAULT_EXPIRY_WARNING),
        };
        if tls_rotation.reload_interval < private_worker_identity::material::MIN_RELOAD_INTERVAL {
            problem(
                "tls.reload_interval".into(),
                format!(
                    "must be at least {:?} (the files are read at every poll)",
                    private_worker_identity::material::MIN_RELOAD_INTERVAL
                ),
            );
        }
        let metrics_listen =
            raw.metrics
                .as_ref()
                .and_then(|m| match validate_metrics_listen(&m.listen) {
                    Ok(address) => Some(address),
                    Err(message) => {
                        problem("metrics.listen".into(), message);
                        None
                    }
                });
        let audit_log = base.join(
            raw.worker
                .audit_log
                .clone()
                .unwrap_or_else(|| PathBuf::from("audit.jsonl")),
        );
        if raw.worker.journal_retain == Some(0) {
            problem(
                "worker.journal_retain".into(),
                "must be at least 1 (it bounds how many finished task ids are remembered)".into(),
            );
        }
        if drain_grace > MAX_DRAIN_GRACE {
            problem(
                "worker.drain_grace".into(),
                format!("{drain_grace:?} is longer than the limit of {MAX_DRAIN_GRACE:?}"),
            );
        }
        let reconnect_initial = raw
            .orchestrator
            .reconnect_initial
            .unwrap_or(DEFAULT_RECONNECT_INITIAL);
        let reconnect_max = raw
            .orchestrator
            .reconnect_max
            .unwrap_or(DEFAULT_RECONNECT_MAX);
        if reconnect_initial.is_zero() || reconnect_initial > reconnect_max {
            problem(
                "orchestrator.reconnect_initial".into(),
                "must be above zero and not above orchestrator.reconnect_max".into(),
            );
        }

        let mut tasks = BTreeMap::new();
        if raw.tasks.is_empty() {
            problem(
                "tasks".into(),
                "no task is allowed; add at least one [tasks.\"<name>\"] table".into(),
            );
        }
        if raw.tasks.len() > private_worker_proto::MAX_MANIFEST_ENTRIES {
            problem(
                "tasks".into(),
                format!(
                    "{} tasks; the contract's manifest holds at most {}",
                    raw.tasks.len(),
                    private_worker_proto::MAX_MANIFEST_ENTRIES
                ),
            );
        }
        let task_approval: BTreeMap<String, Option<bool>> = raw
            .tasks
            .iter()
            .map(|(name, task)| (name.clone(), task.require_approval))
            .collect();
        for (name, task) in raw.tasks {
            let at = format!("tasks.{name}");
            if let Err(why) = private_worker_proto::check_id(&name) {
                // The name is not echoed: it may be what breaks the rule.
                problems.push(ConfigProblem {
                    path: "tasks".into(),
                    message: format!(
                        "a task name {why} (the contract's id rule: 1 to 128 bytes of A-Z a-z 0-9 . _ - :)"
                    ),
                });
                continue;
            }
            match validate_task(&name, task, &at) {
                Ok(task) => {
                    tasks.insert(name, task);
                }
                Err(found) => problems.extend(found),
            }
        }
        let approvals = validate_approvals(raw.approvals, base, &mut problems);
        for (name, task) in &mut tasks {
            match task_approval[name] {
                Some(true) if approvals.keys.is_empty() => problems.push(ConfigProblem {
                    path: format!("tasks.{name}.require_approval"),
                    message: "is true but [approvals] lists no key to check approvals with".into(),
                }),
                explicit => task.require_approval = explicit.unwrap_or(!approvals.keys.is_empty()),
            }
        }
        let keyvault = raw.keyvault.and_then(|section| {
            KeyVaultSettings::from_section(section, base, crate::proxy::parse_proxy_url)
                .map_err(|found| {
                    problems.extend(found.into_iter().map(|(key, message)| ConfigProblem {
                        path: format!("keyvault.{key}"),
                        message,
                    }))
                })
                .ok()
        });
        if keyvault.is_none() {
            for (name, task) in &tasks {
                if task.executor.secret().is_some_and(SecretRef::is_keyvault) {
                    problems.push(ConfigProblem {
                        path: format!("tasks.{name}.http.auth.secret"),
                        message: "keyvault:// references need a [keyvault] section".into(),
                    });
                }
            }
        }
        if !problems.is_empty() {
            return Err(ParseFailure::Invalid(problems));
        }
        Ok(Config {
            orchestrator: OrchestratorConfig {
                address: raw.orchestrator.address,
                server_name: raw.orchestrator.server_name,
                connect_timeout: raw
                    .orchestrator
                    .connect_timeout
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                reconnect_initial,
                reconnect_max,
                proxy,
            },
            tls_rotation,
            tls: TlsFiles {
                ca_cert: base.join(raw.tls.ca_cert),
                cert: base.join(raw.tls.cert),
                key: base.join(raw.tls.key),
            },
            max_in_flight,
            journal: raw.worker.journal.map_or_else(
                || audit_log.with_extension("journal.redb"),
                |path| base.join(path),
            ),
            journal_retain: raw
                .worker
                .journal_retain
                .unwrap_or(crate::journal::DEFAULT_RETAIN),
            kill_switch: raw
                .worker
                .kill_switch
                .map_or_else(|| audit_log.with_file_name("STOP"), |path| base.join(path)),
            status_file: raw.worker.status_file.map_or_else(
                || audit_log.with_file_name(DEFAULT_STATUS_FILE_NAME),
                |path| base.join(path),
            ),
            metrics_listen,
            audit_log,
            audit_fsync: raw.worker.audit_fsync.unwrap_or(true),
            drain_grace,
            tasks,
            keyvault,
            approvals,
        })
    }
}

/// `metrics.listen`: an IP address and port on loopback. The worker's
/// promise is that nothing outside the host can connect to it, so any
/// other address is refused rather than served.
fn validate_metrics_listen(listen: &str) -> Result<std::net::SocketAddr, String> {
    let address: std::net::SocketAddr = listen.parse().map_err(|_| {
        format!("`{listen}` is not an IP address and port; write e.g. \"127.0.0.1:9464\"")
    })?;
    if !address.ip().is_loopback() {
        return Err(format!(
            "`{listen}` is not a loopback address: metrics are served on 127.0.0.1 or ::1 only \
             (the worker accepts no connection from outside its host); scrape through a local agent"
        ));
    }
    Ok(address)
}

/// Validates `[approvals]` (absent: no keys, defaults).
fn validate_approvals(
    raw: Option<RawApprovals>,
    base: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> ApprovalSettings {
    let Some(raw) = raw else {
        return ApprovalSettings {
            max_validity: DEFAULT_APPROVAL_MAX_VALIDITY,
            clock_skew: DEFAULT_APPROVAL_CLOCK_SKEW,
            ..ApprovalSettings::default()
        };
    };
    let mut problem = |path: String, message: String| {
        problems.push(ConfigProblem { path, message });
    };
    let mut keys = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, key) in raw.keys.into_iter().enumerate() {
        if let Err(why) = private_worker_proto::check_id(&key.id) {
            problem(
                format!("approvals.keys[{i}].id"),
                format!("{why} (the contract's id rule)"),
            );
        } else if !seen.insert(key.id.clone()) {
            problem(
                format!("approvals.keys[{i}].id"),
                format!("`{}` is listed twice", key.id),
            );
        }
        if let Some(tasks) = &key.tasks {
            if tasks.is_empty() {
                problem(
                    format!("approvals.keys[{i}].tasks"),
                    "is empty, so the key could approve nothing: list the task names it may approve, or remove the key".into(),
                );
            }
            for (j, task) in tasks.iter().enumerate() {
                if let Err(why) = private_worker_proto::check_id(task) {
                    problem(
                        format!("approvals.keys[{i}].tasks[{j}]"),
                        format!("{why} (a task name)"),
                    );
                }
            }
        }
        keys.push(ApproverKey {
            id: key.id,
            public_key: base.join(key.public_key),
            tasks: key.tasks,
        });
    }
    for (i, audience) in raw.audiences.iter().enumerate() {
        if audience.starts_with("spiffe://") {
            problem(
                format!("approvals.audiences[{i}]"),
                "is a worker identity, not a pool name: this worker's own identity is always accepted, and another worker's must not be (name pools like `pool:crm-eu`)".into(),
            );
        } else if !private_worker_proto::approval::is_audience(audience) {
            problem(
                format!("approvals.audiences[{i}]"),
                "must be 1 to 512 bytes of printable ASCII (for example `pool:payments-eu`)".into(),
            );
        }
    }
    let max_validity = raw.max_validity.unwrap_or(DEFAULT_APPROVAL_MAX_VALIDITY);
    if max_validity.is_zero() || max_validity > MAX_APPROVAL_VALIDITY {
        problem(
            "approvals.max_validity".into(),
            format!("{max_validity:?} is out of range; use more than zero and at most 30 days"),
        );
    }
    let clock_skew = raw.clock_skew.unwrap_or(DEFAULT_APPROVAL_CLOCK_SKEW);
    if clock_skew > MAX_APPROVAL_CLOCK_SKEW {
        problem(
            "approvals.clock_skew".into(),
            format!("{clock_skew:?} is longer than the limit of 1h"),
        );
    }
    ApprovalSettings {
        keys,
        audiences: raw.audiences,
        max_validity,
        clock_skew,
    }
}

enum ParseFailure {
    Syntax(String),
    Invalid(Vec<ConfigProblem>),
}

fn validate_task(name: &str, raw: RawTask, at: &str) -> Result<TaskConfig, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut problem = |path: String, message: String| {
        problems.push(ConfigProblem { path, message });
    };
    if let Err(why) = private_worker_proto::check_id(&raw.version) {
        problem(
            format!("{at}.version"),
            format!("{why} (the contract's id rule: 1 to 128 bytes of A-Z a-z 0-9 . _ - :)"),
        );
    }
    let input_schema = match serde_json::to_value(&raw.input_schema) {
        Ok(schema) => {
            if let Err(e) = crate::task::compile_schema(&schema) {
                problem(
                    format!("{at}.input_schema"),
                    format!("not a valid JSON Schema: {e}"),
                );
            }
            schema
        }
        Err(e) => {
            problem(format!("{at}.input_schema"), e.to_string());
            serde_json::Value::Null
        }
    };
    let timeout = raw.timeout.unwrap_or(DEFAULT_TASK_TIMEOUT);
    if timeout.is_zero() {
        problem(format!("{at}.timeout"), "must be above zero".into());
    }

    let executor = match (raw.http, raw.echo) {
        (Some(http), false) => validate_http(http, &format!("{at}.http"), &mut problems),
        (None, true) => Some(ExecutorConfig::Echo),
        (Some(_), true) => {
            problems.push(ConfigProblem {
                path: at.to_string(),
                message: "has both `http` and `echo = true`; a task has exactly one executor"
                    .into(),
            });
            None
        }
        (None, false) => {
            problems.push(ConfigProblem {
                path: at.to_string(),
                message: "has no executor; add an [tasks.\"<name>\".http] table (or `echo = true`)"
                    .into(),
            });
            None
        }
    };
    match executor {
        Some(executor) if problems.is_empty() => Ok(TaskConfig {
            name: name.to_string(),
            version: raw.version,
            input_schema,
            timeout,
            idempotent: raw.idempotent,
            require_approval: false,
            executor,
        }),
        _ => Err(problems),
    }
}

/// A TOML error without the offending line: where it is (line, column,
/// and the key when it can be named) and what is wrong, with any quoted
/// value left out. The toml crate's own `Display` quotes the source line,
/// which would print a secret typed without quotes (`token = sk-live-1`).
fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let mut out = String::new();
    if let Some(span) = error.span() {
        let start = span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        out.push_str(&format!("line {line}, column {column}"));
        if let Some(key) = key_at(text, start) {
            out.push_str(&format!(" (key `{key}`)"));
        }
        out.push_str(": ");
    }
    out.push_str(&scrub_values(error.message()));
    out
}

/// The dotted key assigned on the line holding byte `at` (with its table
/// header), when every part looks like a key; `None` otherwise, so that
/// nothing else from the line is ever shown.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let plausible = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | ' '))
    };
    let key = key.trim();
    if !plausible(key) {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim())
        .filter(|t| plausible(t));
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

/// The parser's message with quoted values replaced (`invalid type:
/// string "…"`, `unknown variant `…``) and on one line.
fn scrub_values(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message.trim();
    while let Some(open) = rest.find('"') {
        let Some(len) = rest[open + 1..].find('"') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str("\"…\"");
        rest = &rest[open + 1 + len + 1..];
    }
    out.push_str(rest);
    if let Some(i) = out.find("unknown variant `")
        && let Some(len) = out[i + 17..].find('`')
    {
        out.replace_range(i + 17..i + 17 + len, "…");
    }
    out.lines().map(str::trim).collect::<Vec<_>>().join("; ")
}

/// Whether a URL (template) names a user or password before its host
/// (`https://user:pass@host/...`): credentials typed into the config.
fn has_userinfo(url: &str) -> bool {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let authority = after_scheme
        .find(['/', '?', '#'])
        .map_or(after_scheme, |end| &after_scheme[..end]);
    authority.contains('@')
}

/// Whether a header name carries credentials (case-insensitive):
/// `Authorization`, `Proxy-Authorization`, `Cookie`, `X-Api-Key` and any
/// name mentioning auth, token, secret, password, session or an API key.
/// Such headers are set only through `auth` with a secret reference.
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "cookie" | "set-cookie")
        || [
            "auth",
            "token",
            "secret",
            "password",
            "passwd",
            "apikey",
            "api-key",
            "api_key",
            "session",
            "signature",
        ]
        .iter()
        .any(|word| name.contains(word))
}

/// Why a task's config may not set a header the worker sets itself.
fn reserved_header_message(name: &str) -> String {
    format!(
        "`{name}` is set by the worker on every call (Idempotency-Key: the task id; \
         traceparent: the task's W3C trace context; tracestate: never sent); remove it"
    )
}

fn validate_http(
    raw: RawHttp,
    http_at: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ExecutorConfig> {
    let before = problems.len();
    let mut problem = |path: String, message: String| {
        problems.push(ConfigProblem { path, message });
    };
    let method = match http::Method::from_bytes(raw.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            problem(
                format!("{http_at}.method"),
                format!("`{}` is not an HTTP method", raw.method),
            );
            http::Method::GET
        }
    };
    let url = if has_userinfo(&raw.url) {
        // Not echoed: the userinfo is a credential.
        problem(
            format!("{http_at}.url"),
            "carries credentials (`user:password@`); the URL is not shown. Credentials \
             come only through a secret reference in `auth`"
                .into(),
        );
        None
    } else {
        match UrlTemplate::parse(&raw.url) {
            Ok(t) => Some(t),
            Err(message) => {
                problem(format!("{http_at}.url"), message);
                None
            }
        }
    };
    let mut headers = http::HeaderMap::new();
    for (key, value) in &raw.headers {
        if is_credential_header(key) {
            // Not echoed: the value is a credential.
            problem(
                format!("{http_at}.headers.{key}"),
                "a literal credential header is not allowed; the value is not shown. Use \
                 `auth` with a secret reference (`type = \"bearer\"` or `type = \"header\"`)"
                    .into(),
            );
            continue;
        }
        if crate::executor::http::is_reserved_header(key) {
            problem(
                format!("{http_at}.headers.{key}"),
                reserved_header_message(key),
            );
            continue;
        }
        match (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(k), Ok(v)) => {
                headers.insert(k, v);
            }
            _ => problem(
                format!("{http_at}.headers.{key}"),
                "not a valid header name and value".into(),
            ),
        }
    }
    let body = match raw.body.map(|b| serde_json::to_value(&b)) {
        None => None,
        Some(Ok(body)) => Some(body),
        Some(Err(e)) => {
            problem(format!("{http_at}.body"), e.to_string());
            None
        }
    };
    let auth = match raw.auth {
        None => None,
        Some(RawAuth::Bearer { secret }) => match secret.parse::<SecretRef>() {
            Ok(secret) => Some(AuthConfig::Bearer { secret }),
            Err(e) => {
                problem(format!("{http_at}.auth.secret"), e.to_string());
                None
            }
        },
        Some(RawAuth::Header { name, secret }) => {
            let header = http::HeaderName::from_bytes(name.as_bytes());
            let secret = secret.parse::<SecretRef>();
            match (header, secret) {
                (Ok(_), _) if crate::executor::http::is_reserved_header(&name) => {
                    problem(
                        format!("{http_at}.auth.name"),
                        reserved_header_message(&name),
                    );
                    None
                }
                (Ok(name), Ok(secret)) => Some(AuthConfig::Header { name, secret }),
                (Err(_), _) => {
                    problem(
                        format!("{http_at}.auth.name"),
                        format!("`{name}` is not a valid header name"),
                    );
                    None
                }
                (_, Err(e)) => {
                    problem(format!("{http_at}.auth.secret"), e.to_string());
                    None
                }
            }
        }
    };
    let max_response_bytes = raw.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
    if max_response_bytes == 0 {
        problem(
            format!("{http_at}.max_response_bytes"),
            "must be above zero".into(),
        );
    }
    let url = url?;
    (problems.len() == before).then_some(ExecutorConfig::Http(HttpExecutorConfig {
        method,
        url,
        headers,
        body,
        auth,
        max_response_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::keyvault::{
        DEFAULT_KEYVAULT_CACHE_TTL, DEFAULT_KEYVAULT_MAX_RETRIES, DEFAULT_KEYVAULT_REQUEST_TIMEOUT,
        DEFAULT_KEYVAULT_RETRY_BUDGET, KeyVaultAuthSettings,
    };

    const GOOD: &str = r#"
        [orchestrator]
        address = "127.0.0.1:7443"
        server_name = "orchestrator.local"
        [tls]
        ca_cert = "certs/ca.pem"
        cert = "certs/worker.pem"
        key = "certs/worker.key"
        [worker]
        max_in_flight = 4
        [tasks."crm.create_ticket"]
        version = "1"
        input_schema = { type = "object", required = ["title"], properties = { title = { type = "string" } } }
        timeout = "5s"
        [tasks."crm.create_ticket".http]
        method = "post"
        url = "http://127.0.0.1:9000/tickets/{title}"
        body = { title = "{title}" }
        auth = { type = "bearer", secret = "env://CRM_TOKEN" }
    "#;

    #[test]
    fn a_good_config_loads_with_paths_resolved_against_its_directory() {
        let config = Config::from_toml_str(GOOD, Path::new("/etc/pw")).unwrap();
        assert_eq!(config.tls.cert, PathBuf::from("/etc/pw/certs/worker.pem"));
        assert_eq!(config.max_in_flight, 4);
        let task = &config.tasks["crm.create_ticket"];
        assert_eq!(task.timeout, Duration::from_secs(5));
        let ExecutorConfig::Http(http) = &task.executor else {
            panic!("expected an HTTP executor");
        };
        assert_eq!(http.method, http::Method::POST);
        assert_eq!(
            http.auth.as_ref().unwrap().secret(),
            &"env://CRM_TOKEN".parse::<SecretRef>().unwrap()
        );
    }

    fn problem_paths(text: &str) -> Vec<String> {
        match Config::from_toml_str(text, Path::new("/etc/pw")) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| p.path).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn approvals_are_required_by_default_once_a_key_is_trusted_and_a_task_may_opt_out() {
        let none = Config::from_toml_str(GOOD, Path::new("/etc/pw")).unwrap();
        assert!(none.approvals.keys.is_empty());
        assert!(!none.tasks["crm.create_ticket"].require_approval);
        let keyed = format!(
            "{GOOD}\n        [approvals]\n        keys = [{{ id = \"a-1\", public_key = \"a.pub\" }}]\n"
        );
        let config = Config::from_toml_str(&keyed, Path::new("/etc/pw")).unwrap();
        assert!(config.tasks["crm.create_ticket"].require_approval);
        assert_eq!(
            config.approvals.keys[0].public_key,
            PathBuf::from("/etc/pw/a.pub")
        );
        assert_eq!(config.approvals.max_validity, DEFAULT_APPROVAL_MAX_VALIDITY);
        let opted_out = keyed.replace(
            "timeout = \"5s\"",
            "timeout = \"5s\"\n        require_approval = false",
        );
        let config = Config::from_toml_str(&opted_out, Path::new("/etc/pw")).unwrap();
        assert!(!config.tasks["crm.create_ticket"].require_approval);
        let without_keys = GOOD.replace(
            "timeout = \"5s\"",
            "timeout = \"5s\"\n        require_approval = true",
        );
        assert_eq!(
            problem_paths(&without_keys),
            vec!["tasks.crm.create_ticket.require_approval"]
        );
    }

    #[test]
    fn an_approver_key_may_be_restricted_to_some_tasks_and_an_empty_list_is_refused() {
        let text = format!(
            "{GOOD}\n        [approvals]\n        keys = [{{ id = \"human\", public_key = \"h.pub\" }}, {{ id = \"auto\", public_key = \"a.pub\", tasks = [\"crm.get_ticket\"] }}]\n"
        );
        let config = Config::from_toml_str(&text, Path::new("/etc/pw")).unwrap();
        assert_eq!(config.approvals.keys[0].tasks, None);
        assert_eq!(
            config.approvals.keys[1].tasks,
            Some(vec!["crm.get_ticket".to_string()])
        );
        let bad = format!(
            "{GOOD}\n        [approvals]\n        keys = [{{ id = \"auto\", public_key = \"a.pub\", tasks = [] }}, {{ id = \"b\", public_key = \"b.pub\", tasks = [\"a b\"] }}]\n"
        );
        assert_eq!(
            problem_paths(&bad),
            vec!["approvals.keys[0].tasks", "approvals.keys[1].tasks[0]"]
        );
    }

    #[test]
    fn bad_approval_settings_are_reported_with_their_path() {
        let text = format!(
            "{GOOD}\n        [approvals]\n        keys = [{{ id = \"a\", public_key = \"a.pub\" }}, {{ id = \"a\", public_key = \"b.pub\" }}, {{ id = \"bad id\", public_key = \"c.pub\" }}]\n        audiences = [\"spiffe://example.org/worker/other\", \"\"]\n        max_validity = \"90d\"\n        clock_skew = \"2h\"\n"
        );
        let paths = problem_paths(&text);
        for expected in [
            "approvals.keys[1].id",
            "approvals.keys[2].id",
            "approvals.audiences[0]",
            "approvals.audiences[1]",
            "approvals.max_validity",
            "approvals.clock_skew",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn the_status_file_defaults_beside_the_audit_log_and_metrics_are_off_unless_asked() {
        let config = Config::from_toml_str(GOOD, Path::new("/etc/pw")).unwrap();
        assert_eq!(config.status_file, PathBuf::from("/etc/pw/status.json"));
        assert_eq!(config.metrics_listen, None);
        let set = GOOD.replace(
            "max_in_flight = 4",
            "max_in_flight = 4\n        status_file = \"/run/pw/status.json\"",
        ) + "\n[metrics]\nlisten = \"127.0.0.1:9464\"\n";
        let config = Config::from_toml_str(&set, Path::new("/etc/pw")).unwrap();
        assert_eq!(config.status_file, PathBuf::from("/run/pw/status.json"));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn metrics_on_a_non_loopback_address_are_refused() {
        for listen in ["0.0.0.0:9464", "10.1.2.3:9464", "localhost:9464", "9464"] {
            let set = format!("{GOOD}\n[metrics]\nlisten = \"{listen}\"\n");
            let error = Config::from_toml_str(&set, Path::new("/etc/pw"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("metrics.listen"), "{listen}: {error}");
        }
    }

    #[test]
    fn the_kill_switch_defaults_to_stop_beside_the_audit_log_and_can_be_set() {
        let config = Config::from_toml_str(GOOD, Path::new("/etc/pw")).unwrap();
        assert_eq!(config.kill_switch, PathBuf::from("/etc/pw/STOP"));
        let set = GOOD.replace(
            "max_in_flight = 4",
            "max_in_flight = 4\n        audit_log = \"/var/lib/pw/audit.jsonl\"",
        );
        let config = Config::from_toml_str(&set, Path::new("/etc/pw")).unwrap();
        assert_eq!(config.kill_switch, PathBuf::from("/var/lib/pw/STOP"));
        let set = GOOD.replace(
            "max_in_flight = 4",
            "max_in_flight = 4\n        kill_switch = \"/run/pw/HALT\"",
        );
        let config = Config::from_toml_str(&set, Path::new("/etc/pw")).unwrap();
        assert_eq!(config.kill_switch, PathBuf::from("/run/pw/HALT"));
    }

    #[test]
    fn every_bad_value_is_reported_with_its_path() {
        let bad = GOOD
            .replace("max_in_flight = 4", "max_in_flight = 0")
            .replace("type = \"string\"", "type = \"no-such-type\"")
            .replace("http://127.0.0.1:9000/tickets", "http://{title}.internal/x")
            .replace("env://CRM_TOKEN", "vault:CRM_TOKEN");
        let err = Config::from_toml_str(&bad, Path::new("/")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"worker.max_in_flight"), "{paths:?}");
        assert!(
            paths.contains(&"tasks.crm.create_ticket.input_schema"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"tasks.crm.create_ticket.http.url"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"tasks.crm.create_ticket.http.auth.secret"),
            "{paths:?}"
        );
    }

    #[test]
    fn task_names_and_versions_follow_the_contracts_id_rule() {
        let bad = GOOD
            .replace("\"crm.create_ticket\"", "\"crm create ticket\"")
            .replacen("version = \"1\"", "version = \"v 1\"", 1);
        let err = Config::from_toml_str(&bad, Path::new("/")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("a task name holds a character outside"),
            "{text}"
        );
        assert!(
            !text.contains("crm create ticket"),
            "the bad name is not echoed: {text}"
        );
        let bad_version = GOOD.replacen("version = \"1\"", "version = \"v 1\"", 1);
        let err = Config::from_toml_str(&bad_version, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains(".version"), "{err}");
    }

    #[test]
    fn a_task_has_exactly_one_executor() {
        let echo = GOOD.replace(
            "[tasks.\"crm.create_ticket\".http]",
            "echo = true\n[tasks.\"crm.create_ticket\".http]",
        );
        let err = Config::from_toml_str(&echo, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("exactly one executor"), "{err}");
        let only_echo = r#"
            [orchestrator]
            address = "127.0.0.1:7443"
            server_name = "orchestrator.local"
            [tls]
            ca_cert = "ca.pem"
            cert = "w.pem"
            key = "w.key"
            [tasks."diag.noop"]
            version = "1"
            input_schema = { type = "object" }
            echo = true
            [tasks."diag.none"]
            version = "1"
            input_schema = { type = "object" }
        "#;
        let err = Config::from_toml_str(only_echo, Path::new("/")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "tasks.diag.none");
        assert!(problems[0].message.contains("no executor"));
    }

    #[test]
    fn a_keyvault_section_loads_with_defaults_and_resolved_paths() {
        let text = GOOD.replace("env://CRM_TOKEN", "keyvault://myvault/crm-token")
            + r#"
            [keyvault]
            auth = { type = "managed_identity" }
            ca_cert = "kv-ca.pem"
            resolve = { "myvault.vault.test" = "127.0.0.1:8443" }
        "#;
        let config = Config::from_toml_str(&text, Path::new("/etc/pw")).unwrap();
        let kv = config.keyvault.unwrap();
        assert_eq!(
            kv.auth,
            KeyVaultAuthSettings::ManagedIdentity { client_id: None }
        );
        assert_eq!(kv.cache_ttl, DEFAULT_KEYVAULT_CACHE_TTL);
        assert_eq!(kv.request_timeout, DEFAULT_KEYVAULT_REQUEST_TIMEOUT);
        assert_eq!(kv.max_retries, DEFAULT_KEYVAULT_MAX_RETRIES);
        assert_eq!(kv.retry_budget, DEFAULT_KEYVAULT_RETRY_BUDGET);
        assert!(kv.verify_challenge_resource);
        assert_eq!(kv.ca_cert, Some(PathBuf::from("/etc/pw/kv-ca.pem")));
        assert_eq!(
            kv.resolve["myvault.vault.test"],
            "127.0.0.1:8443".parse::<std::net::SocketAddr>().unwrap()
        );
    }

    #[test]
    fn every_auth_type_parses() {
        for (auth, expected) in [
            (
                r#"{ type = "managed_identity", client_id = "abc" }"#,
                KeyVaultAuthSettings::ManagedIdentity {
                    client_id: Some("abc".into()),
                },
            ),
            (
                r#"{ type = "workload_identity", tenant_id = "t", client_id = "c", token_file = "tok" }"#,
                KeyVaultAuthSettings::WorkloadIdentity {
                    tenant_id: Some("t".into()),
                    client_id: Some("c".into()),
                    token_file: Some(PathBuf::from("/etc/pw/tok")),
                },
            ),
            (
                r#"{ type = "client_secret", tenant_id = "t", client_id = "c", secret = "env://AZURE_CLIENT_SECRET" }"#,
                KeyVaultAuthSettings::ClientSecret {
                    tenant_id: "t".into(),
                    client_id: "c".into(),
                    secret: SecretRef::Env("AZURE_CLIENT_SECRET".into()),
                },
            ),
            (
                r#"{ type = "azure_cli" }"#,
                KeyVaultAuthSettings::AzureCli { tenant_id: None },
            ),
        ] {
            let text = format!("{GOOD}\n[keyvault]\nauth = {auth}\n");
            let config = Config::from_toml_str(&text, Path::new("/etc/pw")).unwrap();
            assert_eq!(config.keyvault.unwrap().auth, expected, "{auth}");
        }
    }

    #[test]
    fn a_keyvault_reference_without_a_keyvault_section_is_reported_at_the_task() {
        let text = GOOD.replace("env://CRM_TOKEN", "keyvault://myvault/crm-token");
        let err = Config::from_toml_str(&text, Path::new("/")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        assert_eq!(
            problems[0].to_string(),
            "tasks.crm.create_ticket.http.auth.secret: keyvault:// references need a [keyvault] section"
        );
    }

    #[test]
    fn every_bad_keyvault_value_is_reported_with_its_path_and_no_inline_secret_is_echoed() {
        let text = format!(
            "{GOOD}{}",
            r#"
            [keyvault]
            auth = { type = "client_secret", tenant_id = "t", client_id = "has space", secret = "p@ssw0rd-inline" }
            request_timeout = "0s"
            max_retries = 99
            authority_host = "http://login.example"
            resolve = { "myvault.vault.test" = "localhost" }
        "#
        );
        let err = Config::from_toml_str(&text, Path::new("/")).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains("p@ssw0rd-inline"), "{shown}");
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {shown}");
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "keyvault.auth.client_id",
            "keyvault.auth.secret",
            "keyvault.request_timeout",
            "keyvault.max_retries",
            "keyvault.authority_host",
            "keyvault.resolve.myvault.vault.test",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }

        let missing_auth = format!("{GOOD}\n[keyvault]\ncache_ttl = \"1m\"\n");
        let err = Config::from_toml_str(&missing_auth, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("keyvault.auth: missing"), "{err}");
        let from_vault = format!(
            "{GOOD}\n[keyvault]\nauth = {{ type = \"client_secret\", tenant_id = \"t\", client_id = \"c\", secret = \"keyvault://vault1/x\" }}\n"
        );
        let err = Config::from_toml_str(&from_vault, Path::new("/")).unwrap_err();
        assert!(
            err.to_string().contains("not from Key Vault itself"),
            "{err}"
        );
        let budget = format!(
            "{GOOD}\n[keyvault]\nauth = {{ type = \"azure_cli\" }}\nrequest_timeout = \"5s\"\nretry_budget = \"1s\"\n"
        );
        let err = Config::from_toml_str(&budget, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("keyvault.retry_budget"), "{err}");
    }

    fn problems_of(text: &str) -> Vec<ConfigProblem> {
        match Config::from_toml_str(text, Path::new("/")).unwrap_err() {
            ConfigError::Invalid { problems, .. } => problems,
            other => panic!("expected problems, got {other}"),
        }
    }

    #[test]
    fn a_url_with_userinfo_is_refused_without_echoing_it() {
        for url in [
            "http://admin:hunter2@127.0.0.1:9000/tickets/{title}",
            "https://hunter2@crm.internal/tickets",
            "https://admin:hunter2@crm.internal",
        ] {
            let bad = GOOD.replace("http://127.0.0.1:9000/tickets/{title}", url);
            let problems = problems_of(&bad);
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert_eq!(problems[0].path, "tasks.crm.create_ticket.http.url");
            let shown = Config::from_toml_str(&bad, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        // An `@` after the host is a path character, not userinfo.
        let fine = GOOD.replace("/tickets/{title}", "/users/@{title}");
        assert!(Config::from_toml_str(&fine, Path::new("/")).is_ok());
    }

    #[test]
    fn literal_credential_headers_are_refused_in_any_case_without_echoing_them() {
        for name in [
            "Authorization",
            "authorization",
            "PROXY-AUTHORIZATION",
            "Cookie",
            "X-Api-Key",
            "x-api-key",
            "X-Auth-Token",
            "Api-Key",
        ] {
            let bad = GOOD.replace(
                "auth = { type",
                &format!("headers = {{ \"{name}\" = \"sk-live-123\" }}\n        auth = {{ type"),
            );
            let problems = problems_of(&bad);
            assert_eq!(problems.len(), 1, "{name}: {problems:?}");
            assert_eq!(
                problems[0].path,
                format!("tasks.crm.create_ticket.http.headers.{name}")
            );
            let shown = Config::from_toml_str(&bad, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(!shown.contains("sk-live-123"), "{shown}");
        }
        // Ordinary headers still pass.
        let fine = GOOD.replace(
            "auth = { type",
            "headers = { Accept = \"application/json\", \"X-Request-Source\" = \"worker\" }\n        auth = { type",
        );
        assert!(Config::from_toml_str(&fine, Path::new("/")).is_ok());
    }

    #[test]
    fn headers_the_worker_sets_itself_cannot_be_set_by_a_task_config() {
        for name in [
            "traceparent",
            "TraceParent",
            "tracestate",
            "Idempotency-Key",
        ] {
            let fixed = GOOD.replace(
                "auth = { type",
                &format!("headers = {{ \"{name}\" = \"00-forged\" }}\n        auth = {{ type"),
            );
            let problems = problems_of(&fixed);
            assert_eq!(problems.len(), 1, "{name}: {problems:?}");
            assert_eq!(
                problems[0].path,
                format!("tasks.crm.create_ticket.http.headers.{name}")
            );
            assert!(
                problems[0].message.contains("set by the worker"),
                "{}",
                problems[0].message
            );
            let as_auth = GOOD.replace(
                "auth = { type = \"bearer\", secret = \"env://CRM_TOKEN\" }",
                &format!("auth = {{ type = \"header\", name = \"{name}\", secret = \"env://CRM_TOKEN\" }}"),
            );
            let problems = problems_of(&as_auth);
            assert_eq!(problems.len(), 1, "{name}: {problems:?}");
            assert_eq!(problems[0].path, "tasks.crm.create_ticket.http.auth.name");
        }
    }

    #[test]
    fn a_syntax_error_names_the_line_and_key_but_never_echoes_the_line() {
        let bad = GOOD.replace(
            "max_in_flight = 4",
            "max_in_flight = 4\n        token = sk-live-123",
        );
        let shown = Config::from_toml_str(&bad, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("sk-live"), "{shown}");
        assert!(shown.contains("line 11"), "{shown}");
        assert!(shown.contains("worker.token"), "{shown}");
        // A value of the wrong type is not quoted back either.
        let bad = GOOD.replace("max_in_flight = 4", "max_in_flight = \"sk-live-123\"");
        let shown = Config::from_toml_str(&bad, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("sk-live"), "{shown}");
        assert!(shown.contains("worker.max_in_flight"), "{shown}");
    }

    #[test]
    fn proxy_settings_are_read_and_bad_ones_reported_with_their_path() {
        use crate::proxy::ProxySettings;
        let config = Config::from_toml_str(GOOD, Path::new("/")).unwrap();
        assert_eq!(config.orchestrator.proxy, ProxySettings::FromEnvironment);
        let with = |lines: &str| {
            GOOD.replacen(
                "[orchestrator]\n",
                &format!("[orchestrator]\n        {lines}\n"),
                1,
            )
        };
        let config = Config::from_toml_str(
            &with("proxy = \"http://proxy.corp:3128\"\n        proxy_username = \"svc-worker\"\n        proxy_password = \"file:///etc/pw/proxy-password\""),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            config.orchestrator.proxy,
            ProxySettings::Explicit {
                authority: "proxy.corp:3128".into(),
                username: Some("svc-worker".into()),
                password: Some(SecretRef::File(PathBuf::from("/etc/pw/proxy-password"))),
            }
        );
        let config = Config::from_toml_str(&with("proxy = \"none\""), Path::new("/")).unwrap();
        assert_eq!(config.orchestrator.proxy, ProxySettings::Off);
        let bad = with(
            "proxy = \"http://svc:hunter2@proxy.corp:3128\"\n        proxy_password = \"hunter2\"",
        ) + "\n[keyvault]\nauth = { type = \"managed_identity\" }\nproxy = \"https://proxy.corp:3128\"\n";
        let shown = Config::from_toml_str(&bad, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        let paths = problem_paths(&bad);
        for expected in [
            "orchestrator.proxy",
            "orchestrator.proxy_password",
            "keyvault.proxy",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} missing from {paths:?}"
            );
        }
        // curl's scheme-less `user:password@host:port` and its variants:
        // refused in both sections, the password in no message.
        for text in [
            "svc:hunter2@proxy:3128",
            "svc:hunter2@proxy.corp:3128",
            "hunter2@proxy:3128",
            "svc:hunter2@",
            "socks5://svc:hunter2@proxy:1080",
            "svc:hunter2",
        ] {
            let bad = with(&format!("proxy = \"{text}\""))
                + &format!(
                    "\n[keyvault]\nauth = {{ type = \"managed_identity\" }}\nproxy = \"{text}\"\n"
                );
            let shown = Config::from_toml_str(&bad, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(!shown.contains("hunter2"), "{text}: {shown}");
            let paths = problem_paths(&bad);
            for expected in ["orchestrator.proxy", "keyvault.proxy"] {
                assert!(
                    paths.iter().any(|p| p == expected),
                    "{text}: {expected} missing from {paths:?}"
                );
            }
        }
        let kv = format!(
            "{GOOD}\n[keyvault]\nauth = {{ type = \"managed_identity\" }}\nproxy = \"http://proxy.corp:3128\"\n"
        );
        let config = Config::from_toml_str(&kv, Path::new("/")).unwrap();
        assert_eq!(
            config.keyvault.unwrap().proxy.as_deref(),
            Some("proxy.corp:3128")
        );
    }

    #[test]
    fn an_unknown_key_is_a_syntax_error_naming_it() {
        let bad = GOOD.replace("max_in_flight = 4", "max_inflight = 4");
        let err = Config::from_toml_str(&bad, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("max_inflight"), "{err}");
    }
}
