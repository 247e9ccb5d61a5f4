//! Running the second worker, written in Python from the .proto alone
//! (`tests/python_worker/`), from the tests: finding the interpreter and
//! its packages, generating its gRPC code, writing its JSON config for the
//! sample tasks of [`catalog`], and the command line that starts it.
//!
//! Used by `tests/tests/python_worker.rs` (the worker against an
//! in-process mock) and `tests/tests/conformance.rs` (the conformance pack
//! through `orchestrator-mock test`). Nothing here is product code.
//!
//! Needs python3 with the packages of `tests/python_worker/requirements.txt`;
//! [`require`] fails the calling test, naming the `pip` command, when they
//! are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::catalog::{self, TOKEN_ENV, WorkerSetup};

/// What to run when the packages are missing.
pub const INSTALL: &str = "python3 -m pip install -r tests/python_worker/requirements.txt";

/// Keeps Python from writing `__pycache__` into the source tree.
pub const NO_BYTECODE: (&str, &str) = ("PYTHONDONTWRITEBYTECODE", "1");

/// The Python interpreter (`$PYTHON`, default `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `tests/python_worker/`.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python_worker")
}

/// Fails the test, saying what to install, unless python3 and the
/// worker's packages are there.
///
/// # Panics
/// When Python or one of its packages is missing.
pub fn require() {
    require_imports(
        "import grpc, grpc_tools, jsonschema, rfc8785",
        "the Python worker's packages are",
        INSTALL,
    );
}

/// Fails the test unless python3 runs `imports` (Python statements):
/// the message names `what` is missing and the `install` command.
///
/// # Panics
/// When Python cannot run or the imports fail.
pub fn require_imports(imports: &str, what: &str, install: &str) {
    let probe = Command::new(python())
        .env(NO_BYTECODE.0, NO_BYTECODE.1)
        .args(["-c", imports])
        .output();
    match probe {
        Err(e) => panic!(
            "cannot run {} ({e}): install Python 3.11 and then `{install}`",
            python()
        ),
        Ok(out) if !out.status.success() => panic!(
            "{what} missing ({}): run `{install}`",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ),
        Ok(_) => {}
    }
}

/// Runs a Python script of `tests/python_worker/` and returns its
/// combined output.
///
/// # Panics
/// When the script cannot be run or exits non-zero (with its output).
pub fn run_script(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .env(NO_BYTECODE.0, NO_BYTECODE.1)
        .arg(source_dir().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// Checks the packages ([`require`]) and generates the gRPC code from the
/// .proto into `out` (`generate.py`).
///
/// # Panics
/// As [`require`] and [`run_script`].
pub fn generate(out: &Path) {
    require();
    run_script("generate.py", &[&out.to_string_lossy()]);
}

/// The Python worker's JSON config for the catalog's allowed tasks (the
/// same allowlist, from the same [`WorkerSetup`], as
/// [`catalog::worker_config_toml`]), its credential read from
/// [`TOKEN_ENV`].
pub fn config_json(config: &WorkerSetup<'_>) -> String {
    let tasks: Vec<Value> = catalog::tasks()
        .into_iter()
        .filter(|t| t.allowed_on_worker)
        .map(|t| {
            let mut http = json!({
                "method": t.method,
                "url": format!("{}{}", config.api_base, t.path),
                "credential": {"header": "Authorization", "prefix": "Bearer ", "env": TOKEN_ENV},
            });
            if let Some(body) = &t.body {
                http["body"] = body.clone();
            }
            json!({
                "name": t.name,
                "version": t.version,
                "timeout_seconds": 10,
                "idempotent": t.idempotent(),
                "input_schema": t.input_schema,
                "http": http,
            })
        })
        .collect();
    let config = json!({
        "orchestrator": {
            "address": config.orchestrator_address,
            "server_name": config.server_name,
            "reconnect_initial_seconds": 0.1,
            "reconnect_max_seconds": 2,
        },
        "tls": {
            "ca_cert": config.ca_cert,
            "cert": config.cert,
            "key": config.key,
        },
        "worker": {
            "audit_log": config.audit_log,
            "max_in_flight": config.max_in_flight,
            "heartbeat_seconds": 5,
            "drain_grace_seconds": 10,
        },
        "tasks": tasks,
    });
    serde_json::to_string_pretty(&config).expect("config serializes")
}

/// The arguments that start the worker with `config` and the code
/// generated into `generated` (after [`python`]).
pub fn worker_args(config: &Path, generated: &Path) -> Vec<String> {
    vec![
        source_dir()
            .join("worker.py")
            .to_string_lossy()
            .into_owned(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
        "--generated".into(),
        generated.to_string_lossy().into_owned(),
    ]
}
