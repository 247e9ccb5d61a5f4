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
