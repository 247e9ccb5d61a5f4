//! The worker's configuration: one TOML file, parsed and validated here and
//! nowhere else.
//!
//! [`Config::load`] reads the file, resolves relative paths against the
//! file's directory, and checks every value it can check without touching
//! the network (input schemas compile, URL templates keep placeholders out of
//! the host, secret references parse). It reports every problem at once,
//! each with its path in the file (`tasks.crm.create_ticket.input_schema: ...`).
//!
//! It does not open TLS files or resolve secrets: [`crate::check`] does that
//! for `--check`, and the worker does it at start-up.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::executor::http::{HttpExecutorConfig, UrlTemplate};
use crate::secrets::SecretRef;

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
/// Default first reconnect delay (before jitter).
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(200);
/// Default longest reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where and how to reach the orchestrator.
    pub orchestrator: OrchestratorConfig,
    /// The worker's own certificate and the CA it trusts for the orchestrator.
    pub tls: TlsFiles,
    /// How many tasks run at once; also the credit announced in `Hello`.
    pub max_in_flight: u32,
    /// Where the worker's local, hash-chained audit log is appended.
    pub audit_log: PathBuf,
    /// Time in-flight tasks get to finish after a shutdown request.
    pub drain_grace: Duration,
    /// The local allowlist: every task this worker may run, by name.
    pub tasks: BTreeMap<String, TaskConfig>,
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
    /// What the task does.
    pub executor: ExecutorConfig,
}

/// How a task is executed: one variant per executor kind.
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    max_in_flight: Option<u32>,
    audit_log: Option<PathBuf>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
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

/// How a credential is put on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// Where the secret comes from.
        secret: SecretRef,
    },
    /// `<name>: <secret>`.
    Header {
        /// Header name.
        name: http::HeaderName,
        /// Where the secret comes from.
        secret: SecretRef,
    },
}

impl AuthConfig {
    /// The secret this injection needs.
    pub fn secret(&self) -> &SecretRef {
        match self {
            AuthConfig::Bearer { secret } | AuthConfig::Header { secret, .. } => secret,
        }
    }
}

impl Config {
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
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(e.to_string()))?;
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
        let max_in_flight = raw.worker.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 || max_in_flight > 4096 {
            problem(
                "worker.max_in_flight".into(),
                format!("{max_in_flight} is out of range; use 1..=4096"),
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
        for (name, task) in raw.tasks {
            let at = format!("tasks.{name}");
            match validate_task(&name, task, &at) {
                Ok(task) => {
                    tasks.insert(name, task);
                }
                Err(found) => problems.extend(found),
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
            },
            tls: TlsFiles {
                ca_cert: base.join(raw.tls.ca_cert),
                cert: base.join(raw.tls.cert),
                key: base.join(raw.tls.key),
            },
            max_in_flight,
            audit_log: base.join(
                raw.worker
                    .audit_log
                    .unwrap_or_else(|| PathBuf::from("audit.jsonl")),
            ),
            drain_grace: raw.worker.drain_grace.unwrap_or(DEFAULT_DRAIN_GRACE),
            tasks,
        })
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
    if raw.version.trim().is_empty() {
        problem(format!("{at}.version"), "must not be empty".into());
    }
    let input_schema = match serde_json::to_value(&raw.input_schema) {
        Ok(schema) => {
            if let Err(e) = jsonschema::validator_for(&schema) {
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
            executor,
        }),
        _ => Err(problems),
    }
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
    let url = match UrlTemplate::parse(&raw.url) {
        Ok(t) => Some(t),
        Err(message) => {
            problem(format!("{http_at}.url"), message);
            None
        }
    };
    let mut headers = http::HeaderMap::new();
    for (key, value) in &raw.headers {
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
    fn an_unknown_key_is_a_syntax_error_naming_it() {
        let bad = GOOD.replace("max_in_flight = 4", "max_inflight = 4");
        let err = Config::from_toml_str(&bad, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("max_inflight"), "{err}");
    }
}
