//! The orchestrator's TOML config, parsed and validated in one place.
//!
//! [`Config::from_toml_str`] walks the document by hand so that every bad
//! value is reported with its key path (`tls.cert: ...`), all at once, and
//! unknown keys are errors rather than silently ignored typos. Relative
//! paths are resolved against the config file's directory.
//!
//! This module does not open the files it names: the registry, the TLS
//! files and the data directory are checked by [`crate::spawn`] and by the
//! `check` subcommand.
//!
//! ```toml
//! grpc_listen = "0.0.0.0:7443"        # default 127.0.0.1:7443
//! admin_listen = "127.0.0.1:7070"     # default 127.0.0.1:7070
//! registry = "registry.json"
//! data_dir = "data"
//! heartbeat_interval = "10s"          # default 10s
//! lease_timeout = "30s"               # default 3 x heartbeat_interval: silence after which a worker's attempts are settled
//! insecure_skip_checks = false        # default false; tests of worker defenses only
//! wire_capture_dir = "wire"           # optional diagnostic
//! sync_writes = true                  # default true: each commit (results, audit, state.redb) is on disk before anyone is told
//!
//! [testing]
//! fault_injection = false             # default false; the /v1/testing/... hooks of contract tests (see crate::testing)
//!
//! [approvals]                         # optional; see crate::approvals
//! keys = [{ id = "approvals-2026-12", public_key = "approvals-2026-12.pub" }]
//!                                     # with a key, approving a plan takes one signed approval
//!                                     # per step (made by `plan approve --key`, never here)
//! auto_approver = { key_id = "auto-readonly", private_key = "auto-readonly.key", audience = "pool:crm" }
//!                                     # optional; signs the steps of tasks whose registry policy is
//!                                     # "auto" (see crate::policy); key_id must be one of `keys`;
//!                                     # valid_for = "10m" by default (the approval's window)
//!
//! [mcp]                               # optional; see crate::mcp (the MCP server at /mcp)
//! call_wait = "20s"                   # default 20s: how long a tool call waits for its plan to
//!                                     # finish before it answers "pending" with the plan id
//!
//! [admission]                         # optional; see crate::admission
//! identities = ["spiffe://example.org/worker/*", "spiffe://example.org/worker/crm-eu-?"]
//!                                     # default: none set, every identity the CA certified is
//!                                     # admitted (a warning at start). `*` = any run of
//!                                     # characters without `/`, `?` = one character other
//!                                     # than `/`, on the whole URI SAN; an empty list admits no one
//! max_connections_per_identity = 4    # default 4: live connections of one identity; more are closed after the handshake
//! max_connections_before_hello = 256  # default 256: connections (all peers) in their handshake or not yet past Hello;
//!                                     # more are closed at accept, before TLS
//! crl = "revoked.pem"                 # optional: CRLs (PEM, or one DER) of revoked worker certificates;
//!                                     # checked on the leaf, reloaded within 2 s when the file changes
//!
//! [admin]                             # optional; see crate::admin_auth and crate::tokens
//! allowed_hosts = ["orch.example.com", "orch.example.com:443"]
//!                                     # default: localhost, 127.0.0.1, [::1]; a name without
//!                                     # a port means the admin listener's port
//! tls_cert = "certs/admin.pem"        # optional; required when admin_listen is not loopback
//! tls_key = "certs/admin.key"
//! tokens_file = "admin_tokens.json"   # default: admin_tokens.json in data_dir
//!
//! [tls]
//! ca_cert = "certs/ca.pem"            # trust anchors for worker certificates
//! cert = "certs/orchestrator.pem"     # server chain, leaf first
//! key = "certs/orchestrator.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admin_auth::AllowedHost;
use crate::admission::{
    DEFAULT_MAX_CONNECTIONS_BEFORE_HELLO, DEFAULT_MAX_CONNECTIONS_PER_IDENTITY, IdentityPattern,
};

/// Default gRPC (worker gateway) listen address.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7443";
/// Default admin HTTP listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7070";
/// Default heartbeat interval announced in `Welcome`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The whole orchestrator configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the worker gateway (gRPC over mTLS) listens; port 0 picks one.
    pub grpc_listen: SocketAddr,
    /// Where the admin HTTP API listens; port 0 picks one.
    pub admin_listen: SocketAddr,
    /// TLS files.
    pub tls: TlsConfig,
    /// `[tls] reload_interval` and `[tls] expiry_warning`: how the TLS
    /// files are followed while the orchestrator runs.
    pub tls_reload: crate::tls::RotationSettings,
    /// The task registry file (JSON).
    pub registry: PathBuf,
    /// Where results and audit records are stored (created if missing).
    pub data_dir: PathBuf,
    /// Heartbeat interval; a session silent for three intervals is ended.
    pub heartbeat_interval: Duration,
    /// How long a worker identity may stay silent before its lease lapses
    /// and its attempts are settled (`lease_timeout`, default three
    /// heartbeat intervals).
    pub lease_timeout: Duration,
    /// Skip plan validation against the registry and manifest checks on
    /// dispatch. Exists only to test the worker's own defenses.
    pub insecure_skip_checks: bool,
    /// Diagnostic: append every decrypted byte read from each worker
    /// connection to `<dir>/conn-<n>.bin`.
    pub wire_capture_dir: Option<PathBuf>,
    /// Whether each commit of results and audit records waits for the disk
    /// (`fdatasync`) before workers are acknowledged. On by default; off
    /// only for benchmarks or throw-away runs.
    pub sync_writes: bool,
    /// `[testing] fault_injection`: serve the `/v1/testing/...` hooks of
    /// [`crate::testing`] (cut streams, send `Drain` and raw assignments).
    /// Off by default; contract tests only (`serve --fault-injection` sets
    /// it too).
    pub fault_injection: bool,
    /// `[admission]`: which worker identities may connect.
    pub admission: AdmissionConfig,
    /// `[approvals]`: the approver public keys plans must be signed with.
    pub approvals: ApprovalsConfig,
    /// `[admin]`: who may call the admin API and how it is served.
    pub admin: AdminConfig,
    /// `[mcp]`: the MCP server on the admin listener.
    pub mcp: McpConfig,
}

/// Default `[mcp] call_wait`.
pub const DEFAULT_MCP_CALL_WAIT: Duration = Duration::from_secs(20);
/// Longest `[mcp] call_wait` accepted: MCP clients time a call out after
/// a minute or so, and a pending answer with the plan id is better.
pub const MAX_MCP_CALL_WAIT: Duration = Duration::from_secs(120);

/// `[mcp]`: the MCP server ([`crate::mcp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpConfig {
    /// `call_wait`: how long a tool call waits for its plan to finish
    /// before it answers "pending" with the plan id (0 s: never waits).
    pub call_wait: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            call_wait: DEFAULT_MCP_CALL_WAIT,
        }
    }
}

/// `[admin]`: the admin API's names, TLS and token file (see
/// [`crate::admin_auth`] and [`crate::tokens`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `allowed_hosts`: the names `Host` and `Origin` may carry; default
    /// [`crate::admin_auth::default_allowed_hosts`] (the loopback names).
    pub allowed_hosts: Vec<AllowedHost>,
    /// `tls_cert` and `tls_key`: serve the admin API over TLS with this
    /// PEM chain and key. Required when `admin_listen` is not a loopback
    /// address.
    pub tls: Option<AdminTls>,
    /// `tokens_file`: where the hashed tokens are; default
    /// `admin_tokens.json` in `data_dir`.
    pub tokens_file: PathBuf,
}

/// `[admin] tls_cert` and `tls_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[approvals]`: approver public keys; with at least one, approving a
/// plan takes a signature per step from one of them (see
/// [`crate::approvals`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApprovalsConfig {
    /// `(key id, PEM public key file)`, several for rotation.
    pub keys: Vec<(String, PathBuf)>,
    /// `auto_approver`: the key the orchestrator signs "auto" tasks with.
    pub auto_approver: Option<AutoApproverConfig>,
}

/// Default `[approvals] auto_approver.valid_for`.
pub const DEFAULT_AUTO_VALID_FOR: Duration = Duration::from_secs(600);

/// `[approvals] auto_approver`: the orchestrator's own approver key, for
/// the tasks whose registry policy is `"auto"` ([`crate::policy`]).
/// Holding a private approver key here is a deliberate trust decision:
/// workers should trust this key only for read-only tasks (their
/// `[approvals] keys` entry lists them in `tasks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoApproverConfig {
    /// `key_id`: one of `keys` (so the orchestrator checks its own
    /// approvals like any other).
    pub key_id: String,
    /// `private_key`: the PKCS#8 PEM Ed25519 key (`certs-tool
    /// approver-key` writes one).
    pub private_key: PathBuf,
    /// `audience`: the worker identity or pool the approvals name.
    pub audience: String,
    /// `valid_for`: the approval window from the moment of signing.
    pub valid_for: Duration,
}

/// `[admission]`: rules applied to worker connections (see
/// [`crate::admission`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// `identities`: the allowlist of worker identity patterns; `None`
    /// (absent) admits every identity certified by the CA.
    pub identities: Option<Vec<IdentityPattern>>,
    /// `max_connections_per_identity`: live authenticated connections one
    /// identity may hold (1 to 65536).
    pub max_connections_per_identity: usize,
    /// `max_connections_before_hello`: connections, across all peers, in
    /// their TLS handshake or not yet past `Hello` (1 to 1048576).
    pub max_connections_before_hello: usize,
    /// `crl`: a file of certificate revocation lists (PEM with one or more
    /// `X509 CRL` blocks, or one DER CRL) for worker certificates,
    /// reloaded when it changes; `None` checks no revocation.
    pub crl: Option<PathBuf>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            identities: None,
            max_connections_per_identity: DEFAULT_MAX_CONNECTIONS_PER_IDENTITY,
            max_connections_before_hello: DEFAULT_MAX_CONNECTIONS_BEFORE_HELLO,
            crl: None,
        }
    }
}

/// TLS files of the worker gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM trust anchors for worker (client) certificates.
    pub ca_cert: PathBuf,
    /// PEM server certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the server certificate.
    pub key: PathBuf,
}

/// One bad value in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Key path, e.g. `tls.cert`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read; check the path and permissions.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not TOML; fix the syntax at the reported position.
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// The TOML is well-formed but values are missing, unknown or wrong;
    /// fix every listed key.
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    /// Every problem, for [`ConfigError::Invalid`]; empty otherwise.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            Self::Invalid(p) => p,
            _ => &[],
        }
    }
}

impl Config {
    /// Reads and validates a config file; relative paths are resolved
    /// against the file's directory.
    ///
    /// # Errors
    /// [`ConfigError`]: unreadable file, TOML syntax, or every bad value.
    pub fn from_toml_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::from_toml_str(&text, base)
    }

    /// Parses and validates config text; relative paths are resolved
    /// against `base_dir`.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for malformed TOML, [`ConfigError::Invalid`]
    /// listing every missing, unknown or bad key with its path.
    pub fn from_toml_str(s: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = s
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let mut r = Reader {
            base: base_dir,
            problems: Vec::new(),
        };
        const TOP: &[&str] = &[
            "grpc_listen",
            "admin_listen",
            "tls",
            "registry",
            "data_dir",
            "heartbeat_interval",
            "lease_timeout",
            "insecure_skip_checks",
            "wire_capture_dir",
            "sync_writes",
            "testing",
            "admission",
            "admin",
            "approvals",
            "mcp",
        ];
        r.unknown_keys(&table, "", TOP);
        let grpc_listen = r.addr(&table, "grpc_listen", DEFAULT_GRPC_LISTEN);
        let admin_listen = r.addr(&table, "admin_listen", DEFAULT_ADMIN_LISTEN);
        let registry = r.path(&table, "", "registry", true);
        let data_dir = r.path(&table, "", "data_dir", true);
        let wire_capture_dir = r.path(&table, "", "wire_capture_dir", false);
        let heartbeat_interval = r
            .duration(&table, "heartbeat_interval")
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let lease_timeout = r
            .duration(&table, "lease_timeout")
            .unwrap_or(heartbeat_interval * 3);
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&lease_timeout) {
            r.problem(
                "lease_timeout",
                format!("{lease_timeout:?} is out of range; use 1s to 24h"),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&heartbeat_interval) {
            r.problem(
                "heartbeat_interval",
                format!("{heartbeat_interval:?} is out of range; use 1s to 10m"),
            );
        }
        let insecure_skip_checks = r.boolean(&table, "insecure_skip_checks", false);
        let sync_writes = r.boolean(&table, "sync_writes", true);
        let fault_injection = match table.get("testing") {
            None => false,
            Some(toml::Value::Table(t)) => {
                r.unknown_keys(t, "testing.", &["fault_injection"]);
                match t.get("fault_injection") {
                    None => false,
                    Some(toml::Value::Boolean(b)) => *b,
                    Some(other) => {
                        r.problem(
                            "testing.fault_injection",
                            format!("expected true or false, found {}", other.type_str()),
                        );
                        false
                    }
                }
            }
            Some(other) => {
                r.problem(
                    "testing",
                    format!("expected a table, found {}", other.type_str()),
                );
                false
            }
        };
        let admission = r.admission(&table);
        let approvals = r.approvals(&table);
        let mcp = r.mcp(&table);
        let admin = r.admin(&table);
        let mut tls_reload = crate::tls::RotationSettings::default();
        let tls = match table.get("tls") {
            Some(toml::Value::Table(t)) => {
                r.unknown_keys(
                    t,
                    "tls.",
                    &[
                        "ca_cert",
                        "cert",
                        "key",
                        "reload_interval",
                        "expiry_warning",
                    ],
                );
                tls_reload = crate::tls::RotationSettings {
                    reload_interval: r
                        .tls_duration(t, "reload_interval")
                        .unwrap_or(crate::tls::DEFAULT_RELOAD_INTERVAL),
                    expiry_warning: r
                        .tls_duration(t, "expiry_warning")
                        .unwrap_or(crate::tls::DEFAULT_EXPIRY_WARNING),
                };
                Some((
                    r.path(t, "tls.", "ca_cert", true),
                    r.path(t, "tls.", "cert", true),
                    r.path(t, "tls.", "key", true),
                ))
            }
            None => {
                r.problem("tls", "missing table [tls] with ca_cert, cert and key");
                None
            }
            Some(other) => {
                r.problem(
                    "tls",
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        };
        match (
            r.problems.is_empty(),
            grpc_listen,
            admin_listen,
            registry,
            data_dir,
            tls,
        ) {
            (
                true,
                Some(grpc_listen),
                Some(admin_listen),
                Some(registry),
                Some(data_dir),
                Some((Some(ca_cert), Some(cert), Some(key))),
            ) => Ok(Config {
                grpc_listen,
                admin_listen,
                tls: TlsConfig { ca_cert, cert, key },
                tls_reload,
                registry,
                admin: AdminConfig {
                    allowed_hosts: admin.allowed_hosts,
                    tls: admin.tls,
                    tokens_file: admin
                        .tokens_file
                        .unwrap_or_else(|| data_dir.join(crate::tokens::DEFAULT_TOKENS_FILE)),
                },
                data_dir,
                heartbeat_interval,
                lease_timeout,
                insecure_skip_checks,
                wire_capture_dir,
                sync_writes,
                fault_injection,
                admission,
                approvals,
                mcp,
            }),
            _ => Err(ConfigError::Invalid(r.problems)),
        }
    }
}

impl Reader<'_> {
    fn boolean(&mut self, table: &toml::Table, key: &str, default: bool) -> bool {
        match table.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                self.problem(
                    key,
                    format!("expected true or false, found {}", other.type_str()),
                );
                default
            }
        }
    }
}

impl Reader<'_> {
    fn admission(&mut self, table: &toml::Table) -> AdmissionConfig {
        let t = match table.get("admission") {
            None => return AdmissionConfig::default(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.problem(
                    "admission",
                    format!("expected a table, found {}", other.type_str()),
                );
                return AdmissionConfig::default();
            }
        };
        self.unknown_keys(
            t,
            "admission.",
            &[
                "identities",
                "max_connections_per_identity",
                "max_connections_before_hello",
                "crl",
            ],
        );
        let crl = self.path(t, "admission.", "crl", false);
        let mut limit = |key: &str, default: usize, max: i64| match t.get(key) {
            None => default,
            Some(toml::Value::Integer(n)) if (1..=max).contains(n) => *n as usize,
            Some(other) => {
                self.problem(
                    &format!("admission.{key}"),
                    format!("expected an integer from 1 to {max}, found {other}"),
                );
                default
            }
        };
        let max_connections_per_identity = limit(
            "max_connections_per_identity",
            DEFAULT_MAX_CONNECTIONS_PER_IDENTITY,
            65_536,
        );
        let max_connections_before_hello = limit(
            "max_connections_before_hello",
            DEFAULT_MAX_CONNECTIONS_BEFORE_HELLO,
            1_048_576,
        );
        let identities = match t.get("identities") {
            None => None,
            Some(toml::Value::Array(items)) => {
                let mut patterns = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let path = format!("admission.identities[{i}]");
                    match item {
                        toml::Value::String(s) => match IdentityPattern::new(s) {
                            Ok(p) => patterns.push(p),
                            Err(e) => self.problem(&path, e),
                        },
                        other => self.problem(
                            &path,
                            format!("expected a string, found {}", other.type_str()),
                        ),
                    }
                }
                Some(patterns)
            }
            Some(other) => {
                self.problem(
                    "admission.identities",
                    format!(
                        "expected an array of identity patterns, found {}",
                        other.type_str()
                    ),
                );
                None
            }
        };
        AdmissionConfig {
            identities,
            max_connections_per_identity,
            max_connections_before_hello,
            crl,
        }
    }
}

/// `[admin]` as read, before the defaults that need `data_dir`.
struct RawAdmin {
    allowed_hosts: Vec<AllowedHost>,
    tls: Option<AdminTls>,
    tokens_file: Option<PathBuf>,
}

impl Reader<'_> {
    fn admin(&mut self, table: &toml::Table) -> RawAdmin {
        let mut raw = RawAdmin {
            allowed_hosts: crate::admin_auth::default_allowed_hosts(),
            tls: None,
            tokens_file: None,
        };
        let t = match table.get("admin") {
            None => return raw,
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.problem(
                    "admin",
                    format!("expected a table, found {}", other.type_str()),
                );
                return raw;
            }
        };
        self.unknown_keys(
            t,
            "admin.",
            &["allowed_hosts", "tls_cert", "tls_key", "tokens_file"],
        );
        match t.get("allowed_hosts") {
            None => {}
            Some(toml::Value::Array(items)) => {
                let mut hosts = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let path = format!("admin.allowed_hosts[{i}]");
                    match item {
                        toml::Value::String(s) => match AllowedHost::parse(s) {
                            Ok(h) => hosts.push(h),
                            Err(e) => self.problem(&path, e),
                        },
                        other => self.problem(
                            &path,
                            format!("expected a string, found {}", other.type_str()),
                        ),
                    }
                }
                if items.is_empty() {
                    self.problem(
                        "admin.allowed_hosts",
                        "must not be empty (no request could be answered); leave it out for the loopback names",
                    );
                }
                raw.allowed_hosts = hosts;
            }
            Some(other) => self.problem(
                "admin.allowed_hosts",
                format!(
                    "expected an array of host or host:port strings, found {}",
                    other.type_str()
                ),
            ),
        }
        let cert = self.path(t, "admin.", "tls_cert", false);
        let key = self.path(t, "admin.", "tls_key", false);
        raw.tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(AdminTls { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                if !t.contains_key("tls_key") {
                    self.problem(
                        "admin.tls_key",
                        "missing (tls_cert is set; both or neither)",
                    );
                }
                None
            }
            (None, Some(_)) => {
                if !t.contains_key("tls_cert") {
                    self.problem(
                        "admin.tls_cert",
                        "missing (tls_key is set; both or neither)",
                    );
                }
                None
            }
        };
        raw.tokens_file = self.path(t, "admin.", "tokens_file", false);
        raw
    }
}

/// Collects problems while reading values out of a TOML table.
struct Reader<'a> {
    base: &'a Path,
    problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn unknown_keys(&mut self, table: &toml::Table, prefix: &str, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                self.problem(
                    &format!("{prefix}{key}"),
                    format!("unknown key (expected one of: {})", known.join(", ")),
                );
            }
        }
    }

    fn string<'t>(&mut self, table: &'t toml::Table, path: &str, key: &str) -> Option<&'t str> {
        match table.get(key) {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => {
                self.problem(
                    path,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn addr(&mut self, table: &toml::Table, key: &str, default: &str) -> Option<SocketAddr> {
        let text = self.string(table, key, key).unwrap_or(default).to_string();
        match text.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                self.problem(
                    key,
                    format!("{text:?} is not an IP:port socket address ({e})"),
                );
                None
            }
        }
    }

    fn path(
        &mut self,
        table: &toml::Table,
        prefix: &str,
        key: &str,
        required: bool,
    ) -> Option<PathBuf> {
        let full = format!("{prefix}{key}");
        match self.string(table, &full, key) {
            Some("") => {
                self.problem(&full, "must not be empty");
                None
            }
            Some(s) => Some(self.base.join(s)),
            None if table.contains_key(key) => None,
            None => {
                if required {
                    self.problem(&full, "missing (a file path)");
                }
                None
            }
        }
    }

    /// The duration at `key` of the `[tls]` table; `None` when absent or
    /// bad (reported as `tls.<key>`).
    fn tls_duration(&mut self, table: &toml::Table, key: &str) -> Option<Duration> {
        let path = format!("tls.{key}");
        let text = self.string(table, &path, key)?;
        match humantime_serde::re::humantime::parse_duration(text) {
            Ok(d) if d < crate::tls::MIN_RELOAD_INTERVAL => {
                self.problem(
                    &path,
                    format!("must be at least {:?}", crate::tls::MIN_RELOAD_INTERVAL),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    &path,
                    format!("{text:?} is not a duration like \"30s\" ({e})"),
                );
                None
            }
        }
    }

    /// The duration at `key`; `None` when absent or bad (reported).
    fn duration(&mut self, table: &toml::Table, key: &str) -> Option<Duration> {
        let text = self.string(table, key, key)?;
        match humantime_serde::re::humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.problem(key, "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    key,
                    format!("{text:?} is not a duration like \"10s\" ({e})"),
                );
                None
            }
        }
    }
}

impl Reader<'_> {
    fn approvals(&mut self, table: &toml::Table) -> ApprovalsConfig {
        let t = match table.get("approvals") {
            None => return ApprovalsConfig::default(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.problem(
                    "approvals",
                    format!("expected a table, found {}", other.type_str()),
                );
                return ApprovalsConfig::default();
            }
        };
        self.unknown_keys(t, "approvals.", &["keys", "auto_approver"]);
        let mut keys = Vec::new();
        let items = match t.get("keys") {
            None => {
                if t.contains_key("auto_approver") {
                    self.problem(
                        "approvals.auto_approver",
                        "needs its key_id among approvals.keys, and no keys are listed",
                    );
                }
                return ApprovalsConfig::default();
            }
            Some(toml::Value::Array(items)) => items,
            Some(other) => {
                self.problem(
                    "approvals.keys",
                    format!(
                        "expected an array of {{ id, public_key }} tables, found {}",
                        other.type_str()
                    ),
                );
                return ApprovalsConfig::default();
            }
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("approvals.keys[{i}].");
            let toml::Value::Table(key) = item else {
                self.problem(&at[..at.len() - 1], "expected a table { id, public_key }");
                continue;
            };
            self.unknown_keys(key, &at, &["id", "public_key"]);
            let id = match key.get("id") {
                Some(toml::Value::String(id)) => match private_worker_proto::check_id(id) {
                    Ok(()) if keys.iter().any(|(k, _)| k == id) => {
                        self.problem(&format!("{at}id"), format!("`{id}` is listed twice"));
                        None
                    }
                    Ok(()) => Some(id.clone()),
                    Err(rule) => {
                        self.problem(
                            &format!("{at}id"),
                            format!("{rule} (the contract's id rule)"),
                        );
                        None
                    }
                },
                _ => {
                    self.problem(&format!("{at}id"), "missing, or not a string");
                    None
                }
            };
            let public_key = self.path(key, &at, "public_key", true);
            if let (Some(id), Some(public_key)) = (id, public_key) {
                keys.push((id, public_key));
            }
        }
        let auto_approver = self.auto_approver(t, &keys);
        ApprovalsConfig {
            keys,
            auto_approver,
        }
    }

    /// `[approvals] auto_approver`; its key id must be one of `keys`.
    fn auto_approver(
        &mut self,
        t: &toml::Table,
        keys: &[(String, PathBuf)],
    ) -> Option<AutoApproverConfig> {
        const AT: &str = "approvals.auto_approver.";
        let auto = match t.get("auto_approver")? {
            toml::Value::Table(auto) => auto,
            other => {
                self.problem(
                    "approvals.auto_approver",
                    format!(
                        "expected a table {{ key_id, private_key, audience }}, found {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        self.unknown_keys(
            auto,
            AT,
            &["key_id", "private_key", "audience", "valid_for"],
        );
        let key_id = match self.string(auto, &format!("{AT}key_id"), "key_id") {
            Some(id) if keys.iter().any(|(k, _)| k == id) => Some(id.to_string()),
            Some(id) => {
                let id = id.to_string();
                self.problem(
                    &format!("{AT}key_id"),
                    format!("`{id}` is not one of approvals.keys: list its public key there too, so its approvals are checked like any other"),
                );
                None
            }
            None => {
                self.problem(
                    &format!("{AT}key_id"),
                    "missing (a key id of approvals.keys)",
                );
                None
            }
        };
        let private_key = self.path(auto, AT, "private_key", true);
        let audience = match self.string(auto, &format!("{AT}audience"), "audience") {
            Some(a) if private_worker_proto::approval::is_audience(a) => Some(a.to_string()),
            Some(_) => {
                self.problem(
                    &format!("{AT}audience"),
                    "must be 1 to 512 bytes of printable ASCII: a worker identity or a pool such as `pool:crm`",
                );
                None
            }
            None => {
                self.problem(
                    &format!("{AT}audience"),
                    "missing (the worker identity or pool the approvals are for, such as `pool:crm`)",
                );
                None
            }
        };
        let valid_for = match self.string(auto, &format!("{AT}valid_for"), "valid_for") {
            None => Some(DEFAULT_AUTO_VALID_FOR),
            Some(text) => match humantime_serde::re::humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() && d <= crate::approvals::MAX_VALIDITY => Some(d),
                Ok(_) => {
                    self.problem(
                        &format!("{AT}valid_for"),
                        "must be more than zero and at most 30 days",
                    );
                    None
                }
                Err(e) => {
                    self.problem(
                        &format!("{AT}valid_for"),
                        format!("{text:?} is not a duration like \"10m\" ({e})"),
                    );
                    None
                }
            },
        };
        Some(AutoApproverConfig {
            key_id: key_id?,
            private_key: private_key?,
            audience: audience?,
            valid_for: valid_for?,
        })
    }

    /// `[mcp]` (absent: defaults).
    fn mcp(&mut self, table: &toml::Table) -> McpConfig {
        let t = match table.get("mcp") {
            None => return McpConfig::default(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.problem(
                    "mcp",
                    format!("expected a table, found {}", other.type_str()),
                );
                return McpConfig::default();
            }
        };
        self.unknown_keys(t, "mcp.", &["call_wait"]);
        let Some(text) = self.string(t, "mcp.call_wait", "call_wait") else {
            return McpConfig::default();
        };
        match humantime_serde::re::humantime::parse_duration(text) {
            Ok(d) if d <= MAX_MCP_CALL_WAIT => McpConfig { call_wait: d },
            Ok(_) => {
                self.problem(
                    "mcp.call_wait",
                    format!("must be at most {MAX_MCP_CALL_WAIT:?} (a pending answer with the plan id is better than a client timeout)"),
                );
                McpConfig::default()
            }
            Err(e) => {
                let text = text.to_string();
                self.problem(
                    "mcp.call_wait",
                    format!("{text:?} is not a duration like \"20s\" ({e})"),
                );
                McpConfig::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        grpc_listen = "127.0.0.1:0"
        registry = "registry.json"
        data_dir = "/var/lib/om"
        [tls]
        ca_cert = "ca.pem"
        cert = "server.pem"
        key = "server.key"
    "#;

    #[test]
    fn the_auto_approver_and_the_mcp_wait_parse_and_bad_values_are_named() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/om")).unwrap();
        assert_eq!(c.approvals.auto_approver, None);
        assert_eq!(c.mcp.call_wait, DEFAULT_MCP_CALL_WAIT);
        let c = Config::from_toml_str(
            &format!(
                "{GOOD}\n[approvals]\nkeys = [{{ id = \"human-1\", public_key = \"h.pub\" }}, {{ id = \"auto-1\", public_key = \"a.pub\" }}]\nauto_approver = {{ key_id = \"auto-1\", private_key = \"a.key\", audience = \"pool:crm\" }}\n[mcp]\ncall_wait = \"5s\"\n"
            ),
            Path::new("/etc/om"),
        )
        .unwrap();
        assert_eq!(
            c.approvals.auto_approver,
            Some(AutoApproverConfig {
                key_id: "auto-1".into(),
                private_key: "/etc/om/a.key".into(),
                audience: "pool:crm".into(),
                valid_for: DEFAULT_AUTO_VALID_FOR,
            })
        );
        assert_eq!(c.mcp.call_wait, Duration::from_secs(5));

        let err = Config::from_toml_str(
            &format!(
                "{GOOD}\n[approvals]\nkeys = [{{ id = \"human-1\", public_key = \"h.pub\" }}]\nauto_approver = {{ key_id = \"auto-1\", audience = \"a b\", valid_for = \"90d\", colour = 1 }}\n[mcp]\ncall_wait = \"1h\"\n"
            ),
            Path::new("."),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "approvals.auto_approver.key_id",
            "approvals.auto_approver.private_key",
            "approvals.auto_approver.audience",
            "approvals.auto_approver.valid_for",
            "approvals.auto_approver.colour",
            "mcp.call_wait",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
        assert!(
            err.to_string().contains("not one of approvals.keys"),
            "{err}"
        );
    }

    #[test]
    fn a_minimal_config_gets_defaults_and_relative_paths_resolved_against_the_base() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/om")).unwrap();
        assert_eq!(c.grpc_listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.admin_listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
        assert_eq!(c.registry, PathBuf::from("/etc/om/registry.json"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/om"));
        assert_eq!(c.tls.key, PathBuf::from("/etc/om/server.key"));
        assert_eq!(c.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(c.lease_timeout, DEFAULT_HEARTBEAT_INTERVAL * 3);
        assert!(!c.insecure_skip_checks);
        assert_eq!(c.wire_capture_dir, None);
        assert!(!c.fault_injection, "fault injection is off by default");
    }

    #[test]
    fn fault_injection_is_an_explicit_opt_in_under_testing() {
        let c = Config::from_toml_str(
            &format!("{GOOD}\n[testing]\nfault_injection = true\n"),
            Path::new("."),
        )
        .unwrap();
        assert!(c.fault_injection);
        let err = Config::from_toml_str(
            &format!("{GOOD}\n[testing]\nfault_injections = true\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.problems()[0].path, "testing.fault_injections");
        let err = Config::from_toml_str(
            &format!("{GOOD}\n[testing]\nfault_injection = \"yes\"\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.problems()[0].path, "testing.fault_injection");
    }

    #[test]
    fn config_errors_report_every_bad_key_with_its_path() {
        let text = r#"
            grpc_listen = "localhost"
            registry = 5
            heartbeat_interval = "soon"
            insecure_skip_checks = "yes"
            colour = "blue"
            [tls]
            ca_cert = "ca.pem"
            cert = ""
            pasword = "x"
        "#;
        let err = Config::from_toml_str(text, Path::new(".")).unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "grpc_listen",
            "registry",
            "data_dir",
            "heartbeat_interval",
            "insecure_skip_checks",
            "colour",
            "tls.cert",
            "tls.key",
            "tls.pasword",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
        let text = err.to_string();
        assert!(text.contains("tls.key: missing"), "{text}");
        assert!(text.contains("heartbeat_interval: \"soon\""), "{text}");
    }

    #[test]
    fn the_lease_timeout_follows_the_heartbeat_unless_set() {
        let c = Config::from_toml_str(
            &format!("heartbeat_interval = \"2s\"\n{GOOD}"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.lease_timeout, Duration::from_secs(6));
        let c = Config::from_toml_str(&format!("lease_timeout = \"90s\"\n{GOOD}"), Path::new("."))
            .unwrap();
        assert_eq!(c.lease_timeout, Duration::from_secs(90));
        let err = Config::from_toml_str(&format!("lease_timeout = \"0s\"\n{GOOD}"), Path::new("."))
            .unwrap_err();
        assert_eq!(err.problems()[0].path, "lease_timeout");
    }

    #[test]
    fn approver_keys_are_optional_and_bad_entries_are_reported_with_their_path() {
        let c = Config::from_toml_str(GOOD, Path::new("/base")).unwrap();
        assert!(c.approvals.keys.is_empty(), "no keys by default");
        let c = Config::from_toml_str(&format!(
            "{GOOD}\n[approvals]\nkeys = [{{ id = \"a-1\", public_key = \"a.pub\" }}, {{ id = \"a-2\", public_key = \"/k/b.pub\" }}]\n"
        ), Path::new("/base"))
        .unwrap();
        assert_eq!(
            c.approvals.keys,
            vec![
                ("a-1".to_string(), PathBuf::from("/base/a.pub")),
                ("a-2".to_string(), PathBuf::from("/k/b.pub"))
            ]
        );
        let err = Config::from_toml_str(&format!(
            "{GOOD}\n[approvals]\nkeys = [{{ id = \"a 1\", public_key = \"a.pub\" }}, {{ id = \"b\" }}, {{ id = \"b\", public_key = \"b.pub\", extra = 1 }}, 7]\n"
        ), Path::new("/base"))
        .unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "approvals.keys[0].id",
            "approvals.keys[1].public_key",
            "approvals.keys[2].extra",
            "approvals.keys[3]",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn admission_identities_are_optional_patterns_and_bad_ones_are_reported() {
        let c = Config::from_toml_str(GOOD, Path::new(".")).unwrap();
        assert_eq!(c.admission.identities, None, "no allowlist by default");
        assert_eq!(c.admission.max_connections_per_identity, 4);
        assert_eq!(c.admission.max_connections_before_hello, 256);
        let c = Config::from_toml_str(
            &format!(
                "{GOOD}\n[admission]\nidentities = [\"spiffe://e.org/worker/*\", \"spiffe://e.org/w/crm-eu-?\"]\n"
            ),
            Path::new("."),
        )
        .unwrap();
        let patterns = c.admission.identities.unwrap();
        assert_eq!(patterns.len(), 2);
        assert!(patterns[1].matches("spiffe://e.org/w/crm-eu-1"));
        let err = Config::from_toml_str(
            &format!("{GOOD}\n[admission]\nidentities = [\"\", 3]\nidentity = []\n"),
            Path::new("."),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "admission.identity",
                "admission.identities[0]",
                "admission.identities[1]"
            ]
        );
        let err = Config::from_toml_str(
            &format!("{GOOD}\n[admission]\nidentities = \"spiffe://e.org/*\"\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.problems()[0].path, "admission.identities");
    }

    #[test]
    fn admission_connection_limits_are_positive_integers() {
        let c = Config::from_toml_str(
            &format!("{GOOD}\n[admission]\nmax_connections_per_identity = 2\nmax_connections_before_hello = 10\n"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.admission.max_connections_per_identity, 2);
        assert_eq!(c.admission.max_connections_before_hello, 10);
        assert_eq!(c.admission.identities, None);
        assert_eq!(c.admission.crl, None);
        let c = Config::from_toml_str(
            &format!("{GOOD}\n[admission]\ncrl = \"revoked.pem\"\n"),
            Path::new("/etc/om"),
        )
        .unwrap();
        assert_eq!(c.admission.crl, Some(PathBuf::from("/etc/om/revoked.pem")));
        let err = Config::from_toml_str(
            &format!("{GOOD}\n[admission]\nmax_connections_per_identity = 0\nmax_connections_before_hello = \"many\"\n"),
            Path::new("."),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "admission.max_connections_per_identity",
                "admission.max_connections_before_hello"
            ]
        );
    }

    #[test]
    fn admin_defaults_to_loopback_names_no_tls_and_a_token_file_in_data_dir() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/om")).unwrap();
        assert_eq!(
            c.admin.allowed_hosts,
            crate::admin_auth::default_allowed_hosts()
        );
        assert_eq!(c.admin.tls, None);
        assert_eq!(
            c.admin.tokens_file,
            PathBuf::from("/var/lib/om/admin_tokens.json")
        );
        let c = Config::from_toml_str(
            &format!(
                "{GOOD}\n[admin]\nallowed_hosts = [\"orch.example\", \"[::1]:8443\"]\ntls_cert = \"a.pem\"\ntls_key = \"a.key\"\ntokens_file = \"t.json\"\n"
            ),
            Path::new("/etc/om"),
        )
        .unwrap();
        assert_eq!(c.admin.allowed_hosts.len(), 2);
        assert_eq!(c.admin.allowed_hosts[1].port, Some(8443));
        assert_eq!(c.admin.tls.unwrap().key, PathBuf::from("/etc/om/a.key"));
        assert_eq!(c.admin.tokens_file, PathBuf::from("/etc/om/t.json"));
        let err = Config::from_toml_str(
            &format!("{GOOD}\n[admin]\nallowed_hosts = [\"a b\"]\ntls_cert = \"a.pem\"\ntoken_file = \"x\"\n"),
            Path::new("."),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "admin.token_file",
                "admin.allowed_hosts[0]",
                "admin.tls_key"
            ]
        );
    }

    #[test]
    fn a_missing_tls_table_is_reported() {
        let err = Config::from_toml_str("registry = \"r\"\ndata_dir = \"d\"", Path::new("."))
            .unwrap_err();
        assert_eq!(err.problems().len(), 1, "{err}");
        assert_eq!(err.problems()[0].path, "tls");
    }

    #[test]
    fn toml_syntax_errors_are_reported_as_such() {
        let err = Config::from_toml_str("registry = ", Path::new(".")).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
    }
}
