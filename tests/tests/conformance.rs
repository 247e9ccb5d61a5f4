//! The conformance pack (`orchestrator-mock/conformance/`) against both
//! workers, through `orchestrator-mock test` (the runner starts the mock
//! with fault injection and the worker under test):
//!
//! - the reference worker, `private-worker`;
//! - the Python worker of `tests/python_worker/`, written from the .proto
//!   alone (its gRPC code generated at test time; without python3 and its
//!   packages the test fails naming the `pip` command).
//!
//! Each run must exit 0 and its JUnit report must list every scenario file
//! of the pack with no failure. The harness is
//! `private_worker_tests::conformance`.
//!
//! `CONFORMANCE_FILTER=<text>` runs only the scenarios whose name or file
//! contains it (the runner's `--filter`), for working on one scenario.

use std::path::Path;

use private_worker_tests::conformance::{self, Options, Run, Setup};
use private_worker_tests::python_worker;

/// Runs the pack with `worker_cmd` and checks the run and its report.
async fn run_pack(setup: &Setup, worker_cmd: &str, worker: &str) -> Run {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let run = setup
        .run(worker_cmd, &[&conformance::pack_dir()], filter.as_deref())
        .await;
    eprintln!(
        "the conformance pack against the {worker} took {:.1}s:\n{}",
        run.elapsed.as_secs_f64(),
        run.stdout
    );
    assert_eq!(run.status.code(), Some(0), "{}", run.report());
    let junit = run
        .junit
        .as_ref()
        .unwrap_or_else(|| panic!("no JUnit report\n{}", run.report()));
    assert!(junit.failures.is_empty(), "{}", run.report());
    assert_eq!(
        junit.suite_failures.as_deref(),
        Some("0"),
        "{}",
        run.report()
    );
    // Every scenario file of the pack ran (the test case's class name is
    // its file).
    let files = conformance::pack_files();
    assert!(
        files.len() >= 13,
        "the pack has {} scenario files",
        files.len()
    );
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        if filter.as_deref().is_some_and(|f| {
            !name.contains(f) && !std::fs::read_to_string(file).unwrap().contains(f)
        }) {
            continue;
        }
        assert!(
            junit.classes.iter().any(|c| Path::new(c).ends_with(&*name)),
            "{name} is not in the JUnit report:\n{}",
            run.junit_xml
        );
    }
    if filter.is_none() {
        assert_eq!(junit.cases.len(), files.len(), "{}", run.junit_xml);
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_worker_passes_the_conformance_pack() {
    let setup = Setup::new(Options::default()).await;
    let run = run_pack(&setup, &setup.reference_worker(), "reference worker").await;
    // The worker was stopped at the end (SIGTERM: it drained and said so).
    assert!(run.worker_log.contains("SIGTERM"), "{}", run.worker_log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_worker_passes_the_conformance_pack() {
    let setup = Setup::new(Options::default()).await;
    let generated = setup.path("generated");
    python_worker::generate(&generated);
    let run = run_pack(&setup, &setup.python_worker(&generated), "Python worker").await;
    assert!(
        run.worker_log.contains("python-worker"),
        "{}",
        run.worker_log
    );
}

/// The shell command README's "Contract tests in CI" gives for running the
/// pack against `private-worker` through `conformance --worker-cmd`: the
/// config template filled from the documented variables.
fn documented_worker_cmd(private_worker: &Path) -> String {
    let template = conformance::pack_dir().join("private-worker.toml.in");
    format!(
        "sed -e \"s|@ADDR@|$ORCHESTRATOR_GRPC_ADDR|\" -e \"s|@SERVER_NAME@|$CONFORMANCE_SERVER_NAME|\" \
         -e \"s|@CA_CERT@|$CONFORMANCE_CA_CERT|\" -e \"s|@CERT@|$CONFORMANCE_CERT|\" -e \"s|@KEY@|$CONFORMANCE_KEY|\" \
         -e \"s|@API_URL@|$CONFORMANCE_API_URL|\" -e \"s|@DIR@|$CONFORMANCE_DIR|\" '{}' > \"$CONFORMANCE_DIR/worker.toml\" \
         && exec '{}' --config \"$CONFORMANCE_DIR/worker.toml\"",
        template.display(),
        private_worker.display()
    )
}

#[test]
fn the_shipped_worker_config_template_is_the_one_the_harness_uses() {
    let path = conformance::pack_dir().join("private-worker.toml.in");
    if std::env::var_os("UPDATE_CONFORMANCE_TEMPLATE").is_some() {
        std::fs::write(&path, conformance::reference_config_template()).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        shipped,
        conformance::reference_config_template(),
        "orchestrator-mock/conformance/private-worker.toml.in is out of date: run this test \
         with UPDATE_CONFORMANCE_TEMPLATE=1 to write it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_command_runs_a_worker_of_your_own_from_the_documented_variables() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("report.xml");
    let command = documented_worker_cmd(&private_worker_tests::procs::binary("private-worker"));
    let mut conformance =
        std::process::Command::new(private_worker_tests::procs::binary("conformance"));
    conformance
        .arg("--worker-cmd")
        .arg(command)
        .arg("--junit")
        .arg(&junit)
        .arg("--filter")
        .arg("happy");
    let out = tokio::task::spawn_blocking(move || conformance.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    let report = conformance::Junit::parse(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!(report.cases.len(), 1, "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
}
