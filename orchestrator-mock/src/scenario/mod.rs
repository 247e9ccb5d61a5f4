//! The scenario runner behind `orchestrator-mock test`: contract tests of
//! a worker implementation, written as TOML files, run against this mock.
//!
//! It reads and validates every scenario first (a bad file stops the run
//! with exit code 2 and `file:line: field: problem`), starts the mock as a
//! child process with fault injection on (`--config`) or uses a running
//! one (`--admin-url`), starts the worker under test (`--worker-cmd`, in
//! its own process group, output to a log file) or waits for one to
//! connect, runs each scenario in file order, prints a progress line per
//! scenario with the details of each failure, writes a JUnit XML report
//! (`--junit`), stops what it started, and exits 0 (all passed), 1 (a
//! scenario failed) or 2 (bad scenario or usage).
//!
//! # Layout
//! - [`format`]: the scenario file format (parsing and validation).
//! - [`run`]: executing one scenario's steps against the mock and worker.
//! - [`process`]: the mock and worker child processes.
//! - [`report`]: progress lines, failure details, summary, JUnit XML.
//!
//! `SCENARIOS.md` beside the crate's `Cargo.toml` documents the format.
//!
//! What it does not do: run scenarios in parallel (they share one worker
//! and one mock, and some restart the mock), or restart a worker that
//! died (later scenarios then fail, each saying no worker connected).

pub mod format;
pub mod process;
pub mod report;
pub mod run;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use process::{MockProcess, WorkerProcess};
use report::{Failure, Problem, ScenarioReport};

/// Exit code when every scenario passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code when a scenario failed (or the run could not start).
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a bad scenario file or bad usage.
pub const EXIT_USAGE: u8 = 2;

/// How many lines of the worker log a failure shows.
pub const LOG_TAIL_LINES: usize = 40;

/// Default `--wait-worker`.
pub const DEFAULT_WAIT_WORKER: Duration = Duration::from_secs(30);

/// The environment variable the worker command gets with the mock's gRPC
/// address (`host:port`), when the runner started the mock.
pub const ENV_GRPC_ADDR: &str = "ORCHESTRATOR_GRPC_ADDR";
/// The environment variable the worker command gets with the mock's admin
/// URL.
pub const ENV_ADMIN_URL: &str = "ORCHESTRATOR_ADMIN_URL";

/// Where the mock comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockSource {
    /// Start `serve --config <file> --fault-injection` as a child.
    Config(PathBuf),
    /// Use the mock already running at this admin URL.
    AdminUrl(String),
}

/// What `orchestrator-mock test` was asked to do.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Scenario files or folders.
    pub paths: Vec<PathBuf>,
    /// Where the mock comes from.
    pub mock: MockSource,
    /// Shell command starting the worker under test.
    pub worker_cmd: Option<String>,
    /// The worker's log file (default: in the run's log folder).
    pub worker_log: Option<PathBuf>,
    /// How long to wait for a connected worker.
    pub wait_worker: Duration,
    /// Where to write the JUnit XML report.
    pub junit: Option<PathBuf>,
    /// Run only scenarios whose name or file contains this.
    pub filter: Option<String>,
    /// With [`MockSource::AdminUrl`]: the file holding the admin token
    /// (it needs every role); without it, the `ORCHESTRATOR_MOCK_TOKEN`
    /// environment variable. With [`MockSource::Config`] the runner
    /// issues its own token ([`RUNNER_TOKEN`]) in the mock's token file.
    pub token_file: Option<PathBuf>,
}

/// The name of the token the runner issues (and replaces on each run) in
/// the token file of a mock it starts.
pub const RUNNER_TOKEN: &str = "scenario-runner";

/// The admin token for `options`: issued in the mock's token file when the
/// runner starts the mock, else read from `--token-file` or the
/// environment.
fn admin_token(options: &TestOptions) -> Result<Option<String>, String> {
    match &options.mock {
        MockSource::Config(path) => {
            let config = crate::Config::from_toml_file(path).map_err(|e| e.to_string())?;
            crate::tokens::TokenFile::new(&config.admin.tokens_file)
                .issue(RUNNER_TOKEN, &crate::tokens::Role::ALL)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        MockSource::AdminUrl(_) => {
            let token = match &options.token_file {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| format!("token file {}: {e}", file.display()))?,
                None => std::env::var(crate::client::TOKEN_ENV).unwrap_or_default(),
            };
            let token = token.trim().to_string();
            Ok((!token.is_empty()).then_some(token))
        }
    }
}

/// Runs the scenarios; returns the exit code ([`EXIT_PASSED`],
/// [`EXIT_FAILED`], [`EXIT_USAGE`]). Prints to stdout (progress, details,
/// summary) and stderr (errors). `shutdown` (SIGINT/SIGTERM) stops the run
/// after the current step; what was started is stopped either way.
pub async fn run(options: TestOptions, shutdown: CancellationToken) -> u8 {
    let scenarios = match format::load(&options.paths) {
        Ok(s) => s,
        Err(problems) => {
            eprintln!(
                "error: {} problem(s) in the scenario files:",
                problems.len()
            );
            for p in problems {
                eprintln!("  {p}");
            }
            return EXIT_USAGE;
        }
    };
    let scenarios: Vec<format::Scenario> = match &options.filter {
        None => scenarios,
        Some(f) => scenarios
            .into_iter()
            .filter(|s| {
                s.name.contains(f.as_str()) || s.file.to_string_lossy().contains(f.as_str())
            })
            .collect(),
    };
    if scenarios.is_empty() {
        eprintln!(
            "error: no scenario matches --filter {:?}",
            options.filter.unwrap_or_default()
        );
        return EXIT_USAGE;
    }
    let logs = log_dir();
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!(
            "error: cannot create the log folder {}: {e}",
            logs.display()
        );
        return EXIT_FAILED;
    }
    let worker_log = options
        .worker_log
        .clone()
        .unwrap_or_else(|| logs.join("worker.log"));
    let started = Instant::now();

    // The mock and a token for it.
    let token = match admin_token(&options) {
        Ok(Some(token)) => token,
        Ok(None) => {
            eprintln!(
                "error: no admin token for {}: set {} or pass --token-file (the token needs the roles read, submit, approve and operate)",
                match &options.mock {
                    MockSource::AdminUrl(url) => url.as_str(),
                    MockSource::Config(_) => "the mock",
                },
                crate::client::TOKEN_ENV
            );
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("error: cannot issue the runner's admin token: {e}");
            return EXIT_FAILED;
        }
    };
    let mut env: Vec<(&str, String)> = Vec::new();
    let (admin_url, mock) = match &options.mock {
        MockSource::Config(config) => {
            let log = logs.join("mock.log");
            match MockProcess::start(config, &log, None).await {
                Ok(m) => {
                    println!(
                        "mock: started (grpc {}, admin {}), log {}",
                        m.grpc_addr,
                        m.admin_url(),
                        log.display()
                    );
                    env.push((ENV_GRPC_ADDR, m.grpc_addr.to_string()));
                    (m.admin_url(), Some(m))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_FAILED;
                }
            }
        }
        MockSource::AdminUrl(url) => (url.trim_end_matches('/').to_string(), None),
    };
    env.push((ENV_ADMIN_URL, admin_url.clone()));
    let admin = crate::client::AdminClient::new(&admin_url).with_token(token);
    let mut harness = run::Harness::new(admin, mock, options.wait_worker).await;
    if !harness.fault_injection {
        println!(
            "mock: {admin_url} has no fault injection; scenarios that inject faults will fail"
        );
    }

    // The worker under test.
    let mut worker = match &options.worker_cmd {
        Some(command) => match WorkerProcess::start(command, &worker_log, &env) {
            Ok(w) => {
                println!("worker: started `{command}`, log {}", worker_log.display());
                Some(w)
            }
            Err(e) => {
                eprintln!("error: {e}");
                stop(&mut harness, None).await;
                return EXIT_FAILED;
            }
        },
        None => {
            println!(
                "worker: waiting for one to connect (up to {:?} per scenario)",
                options.wait_worker
            );
            None
        }
    };
    let show_log = options.worker_cmd.is_some() || options.worker_log.is_some();

    // The scenarios.
    let total = scenarios.len();
    let mut reports = Vec::with_capacity(total);
    for (i, scenario) in scenarios.iter().enumerate() {
        print!("{}", report::progress_start(i, total, &scenario.name));
        let _ = std::io::stdout().flush();
        let begun = Instant::now();
        let result = tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(Failure {
                step: None,
                label: "interrupted".into(),
                line: None,
                problems: vec![Problem::error("run", "interrupted by a signal")],
            }),
            r = run_one(&mut harness, worker.as_mut(), scenario) => r,
        };
        let failed = result.is_err();
        let scenario_report = ScenarioReport {
            name: scenario.name.clone(),
            file: scenario.file.display().to_string(),
            duration: begun.elapsed(),
            failure: result.err(),
            log_tail: (failed && show_log).then(|| process::tail(&worker_log, LOG_TAIL_LINES)),
        };
        println!("{}", report::progress_end(&scenario_report));
        print!(
            "{}",
            report::details(&scenario_report, Some(&worker_log.display().to_string()))
        );
        let _ = std::io::stdout().flush();
        reports.push(scenario_report);
        if shutdown.is_cancelled() {
            break;
        }
    }

    stop(&mut harness, worker.as_mut()).await;
    let elapsed = started.elapsed();
    println!("{}", report::summary(&reports, elapsed));
    let mut code = if reports.iter().any(|r| r.failure.is_some()) || reports.len() < total {
        EXIT_FAILED
    } else {
        EXIT_PASSED
    };
    if let Some(path) = &options.junit {
        let written = report::junit_xml(&reports, elapsed)
            .and_then(|xml| std::fs::write(path, xml).map_err(|e| e.to_string()));
        match written {
            Ok(()) => println!("junit: {}", path.display()),
            Err(e) => {
                eprintln!(
                    "error: cannot write the JUnit report {}: {e}",
                    path.display()
                );
                code = EXIT_FAILED;
            }
        }
    }
    code
}

/// Runs one scenario once a worker is connected.
async fn run_one(
    harness: &mut run::Harness,
    worker: Option<&mut WorkerProcess>,
    scenario: &format::Scenario,
) -> Result<(), Failure> {
    let before = |message: String| Failure {
        step: None,
        label: "before the first step".into(),
        line: None,
        problems: vec![Problem::error("worker", message)],
    };
    if let Some(failure) = harness.unavailable(scenario) {
        return Err(failure);
    }
    if let Some(w) = worker
        && let Some(status) = w.exited()
    {
        return Err(before(format!("the worker command exited ({status})")));
    }
    harness
        .wait_connected(None, &[], harness.wait_worker)
        .await
        .map_err(before)?;
    harness.run(scenario).await
}

/// Stops the worker, then the mock.
async fn stop(harness: &mut run::Harness, worker: Option<&mut WorkerProcess>) {
    if let Some(w) = worker {
        w.stop().await;
    }
    if let Some(mock) = harness.mock.as_mut() {
        mock.stop(false).await;
    }
}

/// A fresh folder for this run's logs, kept after the run (CI can publish
/// it).
fn log_dir() -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    std::env::temp_dir().join(format!(
        "orchestrator-mock-test-{}-{stamp}",
        std::process::id()
    ))
}
