//! The conformance pack (`orchestrator-mock/conformance/`) and the harness
//! that runs it, or any scenario files, with `orchestrator-mock test`
//! against a worker under test: the reference worker (`private-worker`) or
//! the Python one (`tests/python_worker/`).
//!
//! [`Setup::new`] writes one run's world into a temp directory and serves
//! the sample internal API ([`InternalApi`]) in-process, as the pack
//! assumes (see `orchestrator-mock/conformance/README.md`):
//! - fresh PKI: a CA, the orchestrator's certificate and one worker
//!   identity (`worker-1`);
//! - the registry of [`catalog`] and the mock's config (heartbeat
//!   [`HEARTBEAT_INTERVAL`], so leases are 3 s); the runner starts the mock
//!   from it with fault injection on;
//! - for each worker ([`Setup::reference_worker`], [`Setup::python_worker`])
//!   a config template with the catalog's allowlist, [`MAX_IN_FLIGHT`]
//!   slots and the orchestrator address `@ADDR@`, and the shell command
//!   that fills the address in from `$ORCHESTRATOR_GRPC_ADDR` (set by the
//!   runner, which starts the mock on port 0) and starts the worker.
//!
//! [`Setup::run`] runs `orchestrator-mock test --config ... --worker-cmd
//! ... --junit ...` over scenario files or folders and returns its exit
//! status, output, the worker's log and the JUnit report parsed back
//! ([`Junit`], with an XML parser that is not the writer's).
//!
//! Used by `tests/tests/conformance.rs` (the pack, both workers) and
//! `tests/tests/scenario_runner.rs` (the runner itself). Nothing here is
//! product code.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::catalog::{self, OrchestratorSetup, WorkerSetup};
use crate::internal_api::InternalApi;
use crate::pki::{ORCHESTRATOR_NAME, Pki};
use crate::procs::binary;
use crate::python_worker;

/// The slots of every worker the harness starts; the pack's credit
/// scenario fills exactly this many.
pub const MAX_IN_FLIGHT: u32 = 2;

/// The mock's heartbeat interval (its lease is three of them).
pub const HEARTBEAT_INTERVAL: &str = "1s";

/// How long the runner waits for a worker to (re)connect, in seconds.
pub const WAIT_WORKER_SECS: u32 = 20;

/// The placeholder for the orchestrator's address in worker config
/// templates.
pub const ADDR: &str = "@ADDR@";

/// `private-worker`'s config for the pack, with the world's values as
/// placeholders that `conformance --worker-cmd` users fill from its
/// variables (`orchestrator-mock/conformance/private-worker.toml.in` holds
/// it; a test keeps the two equal).
pub fn reference_config_template() -> String {
    let (ca, cert, key, audit) = (
        Path::new("@CA_CERT@"),
        Path::new("@CERT@"),
        Path::new("@KEY@"),
        Path::new("@DIR@/audit.jsonl"),
    );
    catalog::worker_config_toml(&WorkerSetup {
        orchestrator_address: ADDR.into(),
        server_name: "@SERVER_NAME@",
        ca_cert: ca,
        cert,
        key,
        api_base: "@API_URL@",
        audit_log: audit,
        max_in_flight: MAX_IN_FLIGHT,
    })
}

/// `orchestrator-mock/conformance/`.
pub fn pack_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../orchestrator-mock/conformance");
    dir.canonicalize().unwrap_or(dir)
}

/// The pack's scenario files (`*.toml`), in name order, as the runner
/// runs them.
///
/// # Panics
/// When the folder cannot be read.
pub fn pack_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(pack_dir())
        .expect("read orchestrator-mock/conformance")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// How [`Setup::new`] sets the world up.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options<'a> {
    /// The mock skips its registry and manifest checks (to show the
    /// worker's own refusals through plans).
    pub insecure_skip_checks: bool,
    /// A task left out of the reference worker's allowlist (a
    /// deliberately broken worker config).
    pub worker_lacks: Option<&'a str>,
}

/// One run's files and the internal API; the temp directory is removed
/// on drop.
pub struct Setup {
    dir: tempfile::TempDir,
    /// The certificates.
    pub pki: Pki,
    api: InternalApi,
    /// The internal API's bearer token (the workers read it from
    /// [`catalog::TOKEN_ENV`]).
    pub token: String,
    /// The mock's config.
    pub mock_config: PathBuf,
    /// The worker's local audit log (`worker-audit.jsonl`).
    pub audit_log: PathBuf,
    worker_lacks: Option<String>,
}

/// What one `orchestrator-mock test` run gave.
#[derive(Debug)]
pub struct Run {
    /// The runner's exit status.
    pub status: ExitStatus,
    /// How long the runner ran (mock and worker start and stop included,
    /// builds not).
    pub elapsed: std::time::Duration,
    /// Its stdout (progress and summary).
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// The worker's log (stdout and stderr).
    pub worker_log: String,
    /// The JUnit XML as written (empty when there is none).
    pub junit_xml: String,
    /// The JUnit report parsed back, when there is one.
    pub junit: Option<Junit>,
}

impl Run {
    /// Everything about the run, for an assertion message.
    pub fn report(&self) -> String {
        format!(
            "exit: {}\nstdout:\n{}\nstderr:\n{}\njunit:\n{}\nworker log:\n{}",
            self.status, self.stdout, self.stderr, self.junit_xml, self.worker_log
        )
    }
}

impl Setup {
    /// Writes the PKI, the registry and the mock's config into a fresh temp
    /// directory and starts the internal API.
    ///
    /// # Panics
    /// When a file cannot be written or the API cannot bind.
    pub async fn new(options: Options<'_>) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::create(&dir.path().join("pki"), "worker-1");
        let token = format!("sk-conformance-{}", std::process::id());
        let api = InternalApi::start("127.0.0.1:0".parse().expect("address"), &token)
            .await
            .expect("start the internal API");
        let registry = dir.path().join("registry.json");
        std::fs::write(&registry, catalog::registry_json()).expect("write registry");
        let mock_config = dir.path().join("mock.toml");
        let text = catalog::orchestrator_config_toml(&OrchestratorSetup {
            ca_cert: &pki.ca_cert,
            cert: &pki.orchestrator_cert,
            key: &pki.orchestrator_key,
            registry: &registry,
            data_dir: &dir.path().join("mock-data"),
            insecure_skip_checks: options.insecure_skip_checks,
            wire_capture_dir: None,
        })
        .replace(
            "heartbeat_interval = \"5s\"",
            &format!("heartbeat_interval = \"{HEARTBEAT_INTERVAL}\""),
        );
        std::fs::write(&mock_config, text).expect("write mock config");
        Setup {
            audit_log: dir.path().join("worker-audit.jsonl"),
            dir,
            pki,
            api,
            token,
            mock_config,
            worker_lacks: options.worker_lacks.map(str::to_string),
        }
    }

    /// A path in the run's temp directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The internal API (what reached it: [`InternalApi::requests`]).
    pub fn api(&self) -> &InternalApi {
        &self.api
    }

    /// Writes scenario files into a folder `pack` and returns it.
    ///
    /// # Panics
    /// When a file cannot be written.
    pub fn write_pack(&self, files: &[(&str, &str)]) -> PathBuf {
        let pack = self.path("pack");
        std::fs::create_dir_all(&pack).expect("create pack folder");
        for (name, text) in files {
            std::fs::write(pack.join(name), text).expect("write scenario");
        }
        pack
    }

    /// What either worker's config holds: the orchestrator at [`ADDR`],
    /// the PKI's worker identity, the internal API at `api_base`, the audit
    /// log `worker-audit.jsonl`, [`MAX_IN_FLIGHT`] slots.
    fn worker_setup<'a>(&'a self, api_base: &'a str) -> WorkerSetup<'a> {
        WorkerSetup {
            orchestrator_address: ADDR.into(),
            server_name: ORCHESTRATOR_NAME,
            ca_cert: &self.pki.ca_cert,
            cert: &self.pki.worker_cert,
            key: &self.pki.worker_key,
            api_base,
            audit_log: self.audit_log.as_path(),
            max_in_flight: MAX_IN_FLIGHT,
        }
    }

    /// Writes the reference worker's config template (`worker.toml.in`,
    /// audit log `worker-audit.jsonl`) and returns the shell command that
    /// starts `private-worker` with it.
    ///
    /// # Panics
    /// When the file cannot be written or the binary is not built.
    pub fn reference_worker(&self) -> String {
        let mut config = catalog::worker_config_toml(&self.worker_setup(&self.api.base_url()));
        if let Some(task) = &self.worker_lacks {
            config = catalog::without_task(&config, task);
        }
        let template = self.path("worker.toml.in");
        std::fs::write(&template, config).expect("write worker config");
        let config = self.path("worker.toml");
        let command = [
            binary("private-worker").to_string_lossy().into_owned(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
        ];
        fill_and_exec(&template, &config, &command)
    }

    /// Writes the Python worker's config template (`python-worker.json.in`,
    /// audit log `worker-audit.jsonl`) and returns the shell command that
    /// starts `tests/python_worker/worker.py` with it and the gRPC code in
    /// `generated` (see [`python_worker::generate`]).
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn python_worker(&self, generated: &Path) -> String {
        let config = python_worker::config_json(&self.worker_setup(&self.api.base_url()));
        let template = self.path("python-worker.json.in");
        std::fs::write(&template, config).expect("write Python worker config");
        let config = self.path("python-worker.json");
        let (no_bytecode, one) = python_worker::NO_BYTECODE;
        let mut command = vec![
            "env".to_string(),
            format!("{no_bytecode}={one}"),
            "LOG_LEVEL=INFO".into(),
            python_worker::python(),
        ];
        command.extend(python_worker::worker_args(&config, generated));
        fill_and_exec(&template, &config, &command)
    }

    /// Runs `orchestrator-mock test` over `scenarios` (files or folders)
    /// with the worker started by `worker_cmd`; `filter` is its
    /// `--filter`. The report goes to `report.xml`, the worker's log to
    /// `worker.log`.
    ///
    /// # Panics
    /// When the runner cannot be started.
    pub async fn run(&self, worker_cmd: &str, scenarios: &[&Path], filter: Option<&str>) -> Run {
        let junit_path = self.path("report.xml");
        let worker_log = self.path("worker.log");
        let _ = std::fs::remove_file(&junit_path);
        let mut runner = std::process::Command::new(binary("orchestrator-mock"));
        runner
            .arg("test")
            .arg("--config")
            .arg(&self.mock_config)
            .arg("--worker-cmd")
            .arg(worker_cmd)
            .arg("--worker-log")
            .arg(&worker_log)
            .arg("--junit")
            .arg(&junit_path)
            .arg("--wait-worker")
            .arg(WAIT_WORKER_SECS.to_string());
        if let Some(filter) = filter {
            runner.arg("--filter").arg(filter);
        }
        runner
            .args(scenarios)
            .env(catalog::TOKEN_ENV, &self.token)
            .env("RUST_LOG", "info");
        let started = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            runner.output().expect("run orchestrator-mock test")
        })
        .await
        .expect("runner thread");
        let elapsed = started.elapsed();
        let junit_xml = std::fs::read_to_string(&junit_path).unwrap_or_default();
        Run {
            status: out.status,
            elapsed,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            worker_log: std::fs::read_to_string(&worker_log).unwrap_or_default(),
            junit: (!junit_xml.is_empty()).then(|| Junit::parse(&junit_xml)),
            junit_xml,
        }
    }
}

/// A shell command: `sed` writes `template` to `config` with [`ADDR`]
/// replaced by `$ORCHESTRATOR_GRPC_ADDR`, then `exec` runs `command`.
fn fill_and_exec(template: &Path, config: &Path, command: &[String]) -> String {
    let words: Vec<String> = command.iter().map(|w| sh_quote(w)).collect();
    format!(
        "sed \"s/{ADDR}/$ORCHESTRATOR_GRPC_ADDR/\" {} > {} && exec {}",
        sh_quote(&template.to_string_lossy()),
        sh_quote(&config.to_string_lossy()),
        words.join(" ")
    )
}

/// `s` quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What the tests read back from a JUnit report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Junit {
    /// The `<testsuite>`'s `failures` attribute.
    pub suite_failures: Option<String>,
    /// Each `<testcase>`'s `name`, in order.
    pub cases: Vec<String>,
    /// Each `<testcase>`'s `classname` (the scenario's file), in order.
    pub classes: Vec<String>,
    /// Each `<failure>`'s `message`.
    pub failures: Vec<String>,
    /// The text of every `<system-out>`.
    pub system_out: String,
}

impl Junit {
    /// Parses a report.
    ///
    /// # Panics
    /// When the XML is not well-formed or a test case has no name.
    pub fn parse(xml: &str) -> Junit {
        use quick_xml::events::Event;
        let mut junit = Junit::default();
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut in_out = false;
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => {
                    let attr = |name: &str| {
                        e.try_get_attribute(name).expect("attribute").map(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .expect("attribute value")
                                .into_owned()
                        })
                    };
                    match e.name().as_ref() {
                        b"testsuite" => junit.suite_failures = attr("failures"),
                        b"testcase" => {
                            junit.cases.push(attr("name").expect("testcase name"));
                            junit.classes.push(attr("classname").unwrap_or_default());
                        }
                        b"failure" => junit.failures.push(attr("message").unwrap_or_default()),
                        b"system-out" => in_out = true,
                        _ => {}
                    }
                }
                Event::Text(t) if in_out => {
                    junit
                        .system_out
                        .push_str(&t.decode().expect("text decodes"));
                }
                Event::End(e) if e.name().as_ref() == b"system-out" => in_out = false,
                _ => {}
            }
        }
        junit
    }
}
