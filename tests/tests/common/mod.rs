//! Shared set-up for the end-to-end tests: a temp directory with fresh PKI,
//! the internal API, an in-process orchestrator-mock on 127.0.0.1:0, and
//! helpers to start the worker as a separate process and run plans.
#![allow(dead_code)] // each test file uses a different part of it

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orchestrator_mock::client::AdminClient;
use private_worker_tests::admin::Holder;
use private_worker_tests::catalog::{self, OrchestratorSetup, WorkerSetup};
use private_worker_tests::internal_api::InternalApi;
use private_worker_tests::pki::{ORCHESTRATOR_NAME, Pki};
use private_worker_tests::procs::{Process, binary};
use serde_json::Value;

/// How long any e2e wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Options for [`Env::start`].
#[derive(Default)]
pub struct Options {
    /// Orchestrator skips its registry and manifest checks.
    pub insecure_skip_checks: bool,
    /// Capture every byte the orchestrator receives.
    pub wire_capture: bool,
    /// Worker identities besides `worker-1` (`worker-2`, ...), in
    /// `pki.other_workers`.
    pub extra_workers: usize,
    /// Orchestrator heartbeat interval (default 5 s).
    pub heartbeat: Option<Duration>,
    /// Orchestrator lease timeout (default three heartbeats).
    pub lease_timeout: Option<Duration>,
    /// Approver public keys the orchestrator trusts (`[approvals] keys`):
    /// `(key id, PEM file)`.
    pub approval_keys: Vec<(String, PathBuf)>,
    /// How the orchestrator follows its TLS files (`[tls] reload_interval`,
    /// `expiry_warning`); default as configured.
    pub tls_reload: Option<orchestrator_mock::tls::RotationSettings>,
    /// Last changes to the orchestrator's config before it starts (it may
    /// also rewrite the registry file `config.registry` names).
    pub edit_config: Option<ConfigEdit>,
}

/// A last change to the orchestrator's config ([`Options::edit_config`]).
pub type ConfigEdit = Box<dyn FnOnce(&mut orchestrator_mock::Config) + Send>;

/// One test's world.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub api: InternalApi,
    pub orchestrator: Option<orchestrator_mock::OrchestratorHandle>,
    pub admin: AdminClient,
    pub token: String,
    pub grpc_addr: std::net::SocketAddr,
    pub orchestrator_config: orchestrator_mock::Config,
}

/// A client of `orchestrator`'s admin API with every role (the harness
/// drives plans end to end); `private_worker_tests::admin` issues it.
pub fn admin_client(orchestrator: &orchestrator_mock::OrchestratorHandle) -> AdminClient {
    private_worker_tests::admin::client(
        &orchestrator.admin_url(),
        orchestrator.tokens(),
        Holder::Harness,
    )
    .unwrap()
}

/// A credential value that cannot appear anywhere by accident.
pub fn unique_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sk-live-{nanos:x}-{}-DO-NOT-LEAK", std::process::id())
}

impl Env {
    pub async fn start(options: Options) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (1..=1 + options.extra_workers)
            .map(|i| format!("worker-{i}"))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let pki = Pki::create_for(&dir.path().join("pki"), &ids);
        let token = unique_secret();
        let api = InternalApi::start("127.0.0.1:0".parse().unwrap(), &token)
            .await
            .unwrap();
        let registry = dir.path().join("registry.json");
        std::fs::write(&registry, catalog::registry_json()).unwrap();
        let data_dir = dir.path().join("orchestrator-data");
        let text = catalog::orchestrator_config_toml(&OrchestratorSetup {
            ca_cert: &pki.ca_cert,
            cert: &pki.orchestrator_cert,
            key: &pki.orchestrator_key,
            registry: &registry,
            data_dir: &data_dir,
            insecure_skip_checks: options.insecure_skip_checks,
            wire_capture_dir: options.wire_capture.then(|| dir.path().join("wire")),
        });
        let mut orchestrator_config =
            orchestrator_mock::Config::from_toml_str(&text, dir.path()).unwrap();
        if let Some(heartbeat) = options.heartbeat {
            orchestrator_config.heartbeat_interval = heartbeat;
            orchestrator_config.lease_timeout = heartbeat * 3;
        }
        if let Some(lease) = options.lease_timeout {
            orchestrator_config.lease_timeout = lease;
        }
        orchestrator_config.approvals.keys = options.approval_keys;
        if let Some(reload) = options.tls_reload {
            orchestrator_config.tls_reload = reload;
        }
        if let Some(edit) = options.edit_config {
            edit(&mut orchestrator_config);
        }
        let orchestrator = orchestrator_mock::spawn(orchestrator_config.clone())
            .await
            .unwrap();
        let admin = admin_client(&orchestrator);
        let grpc_addr = orchestrator.grpc_addr();
        Env {
            dir,
            pki,
            api,
            orchestrator: Some(orchestrator),
            admin,
            token,
            grpc_addr,
            orchestrator_config,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a worker config using the given certificate and key and
    /// returns its path.
    pub fn write_worker_config(
        &self,
        name: &str,
        cert: &Path,
        key: &Path,
        server_name: &str,
    ) -> PathBuf {
        let text = catalog::worker_config_toml(&WorkerSetup {
            orchestrator_address: self.grpc_addr.to_string(),
            server_name,
            ca_cert: &self.pki.ca_cert,
            cert,
            key,
            api_base: &self.api.base_url(),
            audit_log: &self.path(&format!("{name}-audit.jsonl")),
            max_in_flight: 8,
        });
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes the config of worker `name` with the given certificate and
    /// key, dialing `address` instead of the in-process orchestrator.
    pub fn write_worker_config_at(
        &self,
        name: &str,
        cert: &Path,
        key: &Path,
        address: std::net::SocketAddr,
    ) -> PathBuf {
        let path = self.write_worker_config(name, cert, key, ORCHESTRATOR_NAME);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&self.grpc_addr.to_string(), &address.to_string());
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes the config of the worker [`Env::start_worker`] starts, with
    /// `extra` TOML appended (an `[approvals]` section, more tasks,
    /// `[metrics]`), and returns its path.
    pub fn write_worker_config_with(&self, extra: &str) -> PathBuf {
        let config = self.write_worker_config(
            "worker",
            &self.pki.worker_cert,
            &self.pki.worker_key,
            ORCHESTRATOR_NAME,
        );
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push('\n');
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        config
    }

    /// Starts the worker binary with the test PKI, logging at debug level.
    pub fn start_worker(&self) -> Process {
        let config = self.write_worker_config(
            "worker",
            &self.pki.worker_cert,
            &self.pki.worker_key,
            ORCHESTRATOR_NAME,
        );
        self.start_worker_with(&config, "worker")
    }

    pub fn start_worker_with(&self, config: &Path, name: &str) -> Process {
        Process::start(
            name,
            &binary("private-worker"),
            &["--config", config.to_str().unwrap()],
            &[
                (catalog::TOKEN_ENV, self.token.as_str()),
                ("RUST_LOG", "debug"),
            ],
            &self.path(&format!("{name}.log")),
        )
    }

    /// Waits until the orchestrator lists `identity` as connected.
    pub async fn wait_connected(&self, identity: &str) {
        let start = Instant::now();
        loop {
            let workers = self.admin.workers().await.unwrap();
            if workers.iter().any(|w| w.identity == identity) {
                return;
            }
            assert!(start.elapsed() < WAIT, "worker {identity} never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Submits a plan of `(task, inputs)` steps, approves it and waits for its end.
    pub async fn run_plan(&self, steps: &[(&str, Value)]) -> orchestrator_mock::api::PlanView {
        let plan = self.submit(steps).await;
        self.admin.approve(&plan.id).await.unwrap();
        self.admin.wait_for_plan(&plan.id, WAIT).await.unwrap()
    }

    pub async fn submit(&self, steps: &[(&str, Value)]) -> orchestrator_mock::api::PlanView {
        self.admin.submit_plan(&plan_request(steps)).await.unwrap()
    }

    pub async fn shutdown_orchestrator(&mut self) {
        if let Some(o) = self.orchestrator.take() {
            o.shutdown().await;
        }
    }

    /// Every file the orchestrator stored, concatenated.
    pub fn orchestrator_data(&self) -> Vec<u8> {
        read_tree(&self.orchestrator_config.data_dir)
    }
}

/// The orchestrator-mock binary as a separate process (so it can be
/// killed with SIGKILL), on its own data directory.
pub struct OrchestratorProcess {
    pub process: Process,
    pub grpc_addr: std::net::SocketAddr,
    pub admin: AdminClient,
}

impl OrchestratorProcess {
    /// Starts `orchestrator-mock serve` with the env's PKI and registry on
    /// `data_dir`, its gRPC listener on `grpc_port` (0: any), and waits for
    /// its ready line.
    pub fn start(env: &Env, data_dir: &Path, grpc_port: u16, name: &str) -> OrchestratorProcess {
        let text = catalog::orchestrator_config_toml(&OrchestratorSetup {
            ca_cert: &env.pki.ca_cert,
            cert: &env.pki.orchestrator_cert,
            key: &env.pki.orchestrator_key,
            registry: &env.path("registry.json"),
            data_dir,
            insecure_skip_checks: false,
            wire_capture_dir: None,
        })
        .replace(
            "127.0.0.1:0\"\nadmin",
            &format!("127.0.0.1:{grpc_port}\"\nadmin"),
        )
        .replace(
            "heartbeat_interval = \"5s\"",
            "heartbeat_interval = \"1s\"\nlease_timeout = \"30s\"",
        );
        let config = env.path(&format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let mut process = Process::start(
            name,
            &binary("orchestrator-mock"),
            &["serve", "--config", config.to_str().unwrap()],
            &[("RUST_LOG", "info")],
            &env.path(&format!("{name}.log")),
        );
        let line = process.wait_for("orchestrator-mock ready", WAIT);
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_string()
        };
        OrchestratorProcess {
            process,
            grpc_addr: field("grpc=").parse().unwrap(),
            admin: private_worker_tests::admin::client(
                &field("admin="),
                &orchestrator_mock::tokens::TokenFile::in_data_dir(data_dir),
                Holder::Harness,
            )
            .unwrap(),
        }
    }
}

/// Approves `plans` and waits until every one has finished.
pub async fn wait_all(
    admin: &AdminClient,
    ids: &[String],
) -> Vec<orchestrator_mock::api::PlanView> {
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        done.push(admin.wait_for_plan(id, WAIT * 4).await.unwrap());
    }
    done
}

/// How many requests the internal API received for paths starting with `path`.
pub fn requests_to(api: &InternalApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.uri.starts_with(path))
        .count()
}

/// How many tickets the internal API was asked to create with `title`.
pub fn tickets_titled(api: &InternalApi, title: &str) -> usize {
    let needle = format!("\"title\":\"{title}\"");
    api.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.uri == "/tickets" && r.body.contains(&needle))
        .count()
}

pub fn plan_request(steps: &[(&str, Value)]) -> orchestrator_mock::api::PlanRequest {
    orchestrator_mock::api::PlanRequest {
        name: Some("e2e".into()),
        steps: steps
            .iter()
            .map(|(task, inputs)| orchestrator_mock::api::StepRequest {
                task: task.to_string(),
                version: None,
                inputs: inputs.clone(),
            })
            .collect(),
    }
}

/// Every byte of every file under `dir`.
pub fn read_tree(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(read_tree(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that `secret` appears nowhere it must not: in no byte the
/// orchestrator received (the wire capture, which must hold this plan's
/// bytes for the check to mean anything), in nothing it stored, in no audit
/// record it serves, in the worker's local audit log, or in the worker's
/// log (which must hold its task lines). `stored_marker` is text the
/// stored results must contain, proving the store was read.
pub async fn assert_secret_absent(
    env: &Env,
    plan: &orchestrator_mock::api::PlanView,
    worker_log: &str,
    secret: &str,
    stored_marker: &[u8],
) {
    let secret = secret.as_bytes();
    let wire = read_tree(&env.path("wire"));
    assert!(
        contains(&wire, plan.steps[0].task_id.as_bytes()),
        "the wire capture must hold the session's bytes for this check to mean anything"
    );
    assert!(
        !contains(&wire, secret),
        "the secret crossed the wire to the orchestrator"
    );
    let stored = env.orchestrator_data();
    assert!(
        contains(&stored, stored_marker),
        "stored results are where expected"
    );
    assert!(
        !contains(&stored, secret),
        "the orchestrator stored the secret"
    );
    let audit = serde_json::to_vec(&env.admin.audit(&plan.id).await.unwrap()).unwrap();
    assert!(
        !contains(&audit, secret),
        "an audit record holds the secret"
    );
    let local_audit = std::fs::read(env.path("worker-audit.jsonl")).unwrap();
    assert!(
        !contains(&local_audit, secret),
        "the worker's audit log holds the secret"
    );
    assert!(
        worker_log.contains("task finished"),
        "the worker log was captured"
    );
    assert!(
        !contains(worker_log.as_bytes(), secret),
        "the worker log holds the secret"
    );
}

/// A scripted (hostile) orchestrator on 127.0.0.1:0, prepared by
/// `before_hello`, and a worker of `env` dialing it, whose config text
/// `edit` may change; returns once the worker is connected, with the
/// config's path.
pub async fn worker_on_scripted_orchestrator(
    env: &Env,
    heartbeat: Duration,
    before_hello: impl FnOnce(&private_worker_tests::scripted::ScriptedOrchestrator),
    edit: impl FnOnce(String) -> String,
) -> (
    private_worker_tests::scripted::ScriptedOrchestrator,
    Process,
    PathBuf,
) {
    let orchestrator = private_worker_tests::scripted::ScriptedOrchestrator::start(
        &env.orchestrator_config.tls,
        private_worker_tests::scripted::ResultPolicy::Acknowledge,
        heartbeat,
    )
    .await;
    before_hello(&orchestrator);
    let config = env.write_worker_config_at(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        orchestrator.addr(),
    );
    let text = edit(std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, text).unwrap();
    let mut worker = env.start_worker_with(&config, "worker");
    // The stream that got its Welcome (a heartbeat may beat the Welcome on
    // the first one; the worker then dials again).
    worker.wait_for("connected to orchestrator", WAIT);
    (orchestrator, worker, config)
}
