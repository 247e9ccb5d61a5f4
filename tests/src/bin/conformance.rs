//! `conformance`: runs the conformance pack (or any scenario files) against
//! a worker, with the whole world it needs set up and torn down: a fresh
//! PKI, the sample internal API, the registry, and `orchestrator-mock test`
//! (which starts the mock with fault injection and the worker under test).
//!
//! ```text
//! conformance [--worker reference|python | --worker-cmd "<sh command>"]
//!             [--junit FILE] [--worker-log FILE] [--filter TEXT] [SCENARIOS...]
//! ```
//!
//! Without scenarios it runs `orchestrator-mock/conformance/`. A worker of
//! your own is started with `--worker-cmd`, through `sh -c`, with these
//! variables set (write its config from them, then `exec` it):
//!
//! | Variable | What |
//! |---|---|
//! | `ORCHESTRATOR_GRPC_ADDR` | the mock's gRPC `host:port` (set by the runner) |
//! | `CONFORMANCE_SERVER_NAME` | the name the mock's certificate carries |
//! | `CONFORMANCE_CA_CERT` | the CA bundle (PEM) that signed the mock's and the worker's certificates |
//! | `CONFORMANCE_CERT`, `CONFORMANCE_KEY` | the worker's certificate chain and key (PEM) |
//! | `CONFORMANCE_API_URL` | the sample internal API's base URL |
//! | `CONFORMANCE_API_TOKEN` | the bearer token the API accepts (also in `CRM_API_TOKEN`) |
//! | `CONFORMANCE_MAX_IN_FLIGHT` | the slots the pack expects the worker to have |
//! | `CONFORMANCE_DIR` | a scratch folder for the worker's config and audit log |
//!
//! The tasks, their schemas and the HTTP calls are those of
//! `orchestrator-mock/conformance/README.md`. Exit code: the runner's (0
//! every scenario passed, 1 one failed, 2 a bad scenario file).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use private_worker_tests::catalog;
use private_worker_tests::conformance::{self, MAX_IN_FLIGHT, Options, Setup};
use private_worker_tests::pki::ORCHESTRATOR_NAME;
use private_worker_tests::python_worker;

/// Runs the conformance pack against a worker, setting up everything it needs.
#[derive(Parser)]
struct Cli {
    /// A built-in worker: `reference` (private-worker, built beside this
    /// binary) or `python` (tests/python_worker, needs its pip packages).
    #[arg(long, conflicts_with = "worker_cmd", default_value = "reference")]
    worker: String,
    /// The shell command that starts your worker (see the variables above).
    #[arg(long)]
    worker_cmd: Option<String>,
    /// Where to write the JUnit XML report.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Where to copy the worker's log.
    #[arg(long)]
    worker_log: Option<PathBuf>,
    /// Run only the scenarios whose name or file contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Scenario files or folders (default: the conformance pack).
    scenarios: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let setup = Setup::new(Options::default()).await;
    let command = match (&cli.worker_cmd, cli.worker.as_str()) {
        (Some(own), _) => own_worker(&setup, own),
        (None, "reference") => setup.reference_worker(),
        (None, "python") => {
            python_worker::require();
            let generated = setup.path("generated");
            python_worker::generate(&generated);
            setup.python_worker(&generated)
        }
        (None, other) => {
            eprintln!("error: --worker {other:?}: expected `reference` or `python`");
            return ExitCode::from(2);
        }
    };
    let scenarios = if cli.scenarios.is_empty() {
        vec![conformance::pack_dir()]
    } else {
        cli.scenarios.clone()
    };
    let paths: Vec<&std::path::Path> = scenarios.iter().map(PathBuf::as_path).collect();
    let run = setup.run(&command, &paths, cli.filter.as_deref()).await;
    print!("{}", run.stdout);
    eprint!("{}", run.stderr);
    let copies = [
        (&cli.junit, &run.junit_xml),
        (&cli.worker_log, &run.worker_log),
    ];
    for (path, text) in copies {
        if let Some(path) = path
            && let Err(e) = std::fs::write(path, text)
        {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    match run.status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// `command` with the world's variables exported before it.
fn own_worker(setup: &Setup, command: &str) -> String {
    let dir = setup.path("worker");
    let _ = std::fs::create_dir_all(&dir);
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let vars = [
        ("CONFORMANCE_SERVER_NAME", ORCHESTRATOR_NAME.to_string()),
        ("CONFORMANCE_CA_CERT", path(&setup.pki.ca_cert)),
        ("CONFORMANCE_CERT", path(&setup.pki.worker_cert)),
        ("CONFORMANCE_KEY", path(&setup.pki.worker_key)),
        ("CONFORMANCE_API_URL", setup.api().base_url()),
        ("CONFORMANCE_API_TOKEN", setup.token.clone()),
        (catalog::TOKEN_ENV, setup.token.clone()),
        ("CONFORMANCE_MAX_IN_FLIGHT", MAX_IN_FLIGHT.to_string()),
        ("CONFORMANCE_DIR", path(&dir)),
    ];
    let exports: Vec<String> = vars
        .iter()
        .map(|(name, value)| format!("export {name}='{}'", value.replace('\'', r"'\''")))
        .collect();
    format!("{}; {command}", exports.join("; "))
}
