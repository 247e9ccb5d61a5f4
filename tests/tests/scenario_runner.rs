//! `orchestrator-mock test`, the scenario runner, end to end: the runner
//! starts the mock (`--config`, fault injection on) and the real
//! `private-worker` (`--worker-cmd`), runs scenario files, and reports.
//!
//! - A pack with every kind of step passes against the real worker: plans,
//!   output and audit checks, hostile assignments (not in the allowlist,
//!   breaking the schema, ids beyond the contract, duplicates), a cut
//!   stream, an orchestrator killed and restarted, a drain.
//! - A deliberately broken worker config (its allowlist lacks a task the
//!   scenario expects to succeed) makes the runner exit 1 with a readable
//!   report, the worker log's tail, and JUnit XML that parses back.
//!
//! (A bad scenario file is tested without a worker in
//! `orchestrator-mock/tests/scenario_cli.rs`; the conformance pack, with
//! both workers, in `conformance.rs`. The set-up, shared with it, is
//! `private_worker_tests::conformance`.)

use private_worker_tests::conformance::{Options, Setup};

const HAPPY: &str = r#"
name = "happy path"

[[steps]]
submit.plan = "ticket"
submit.approve = true
submit.tasks = [
  { task = "crm.create_ticket", inputs = { title = "from a scenario", priority = 2 } },
  { task = "crm.get_ticket", inputs = { ticket_id = "T-1001" } },
]

[[steps]]
[steps.expect]
plan = "ticket"
status = "succeeded"
within = "15s"
audit = "ok"
[[steps.expect.steps]]
outcome = "SUCCEEDED"
error_code = ""
output = { "/status" = 201, "/body/title" = "from a scenario" }
attempts = 1
started = true
[[steps.expect.steps]]
outcome = "SUCCEEDED"
output = { "/body/id" = "T-1001" }
"#;

const HOSTILE: &str = r#"
name = "hostile assignments"

[[steps]]
[steps.hostile_assignment]
task = "crm.delete_customer"
inputs = { customer = "C-1" }
expect = { outcome = "REJECTED", error_code = "not_allowed", accepted = true, started = false }

[[steps]]
hostile_assignment = { task = "crm.create_ticket", inputs = { title = 5 }, expect = { outcome = "REJECTED", error_code = "invalid_input", started = false } }

[[steps]]
hostile_assignment = { task_id = "bad id with spaces", task = "diag.echo", inputs = { message = "x" }, expect = { answered = false, within = "1s" } }

[[steps]]
submit = { plan = "once", approve = true, tasks = [{ task = "diag.echo", inputs = { message = "only once" } }] }

[[steps]]
expect = { plan = "once", status = "succeeded", within = "15s" }

[[steps]]
hostile_assignment = { name = "again", same_as = { plan = "once", step = 0 }, expect = { answered = false, within = "1s" } }

[[steps]]
hostile_assignment = { name = "later", same_as = { plan = "once", step = 0 }, attempt = 2 }

[[steps]]
expect_answer = { assignment = "later", error_code = "already_started", started = false }
"#;

const FAULTS: &str = r#"
name = "faults"
timeout = "90s"

[[steps]]
submit = { plan = "slow", approve = true, tasks = [{ task = "diag.slow_write", inputs = { ms = 1500 } }] }

[[steps]]
wait = "400ms"

[[steps]]
cut_stream = {}

[[steps]]
expect = { plan = "slow", status = "succeeded", within = "20s", steps = [{ outcome = "SUCCEEDED", attempts = 1 }] }

[[steps]]
restart_orchestrator = { signal = "kill" }

[[steps]]
submit = { plan = "after", approve = true, tasks = [{ task = "diag.echo", inputs = { message = "after the restart" } }] }

[[steps]]
expect = { plan = "after", status = "succeeded", within = "15s", steps = [{ output = { "/status" = 200, "/body/method" = "POST" } }] }

[[steps]]
submit = { plan = "drained", approve = true, tasks = [{ task = "diag.slow_write", inputs = { ms = 1000 } }] }

[[steps]]
wait = "300ms"

[[steps]]
drain = { within = "15s" }

[[steps]]
expect = { plan = "drained", status = "succeeded", steps = [{ outcome = "SUCCEEDED", attempts = 1 }] }

[[steps]]
wait_worker = {}

# An idle worker's Draining reaches the mock too, before it closes.
[[steps]]
drain = { within = "10s" }

[[steps]]
wait_worker = {}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_with_every_kind_of_step_passes_against_the_real_worker() {
    let setup = Setup::new(Options::default()).await;
    let pack = setup.write_pack(&[
        ("a-happy.toml", HAPPY),
        ("b-hostile.toml", HOSTILE),
        ("c-faults.toml", FAULTS),
    ]);
    let run = setup.run(&setup.reference_worker(), &[&pack], None).await;
    let (stdout, worker_log) = (&run.stdout, &run.worker_log);
    assert_eq!(run.status.code(), Some(0), "{}", run.report());
    for line in [
        "[1/3] happy path ... ok",
        "[2/3] hostile assignments ... ok",
        "[3/3] faults ... ok",
        "3 scenarios: 3 passed, 0 failed",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let (xml, junit) = (&run.junit_xml, run.junit.as_ref().expect("a JUnit report"));
    assert_eq!(junit.cases.len(), 3, "{xml}");
    assert!(junit.failures.is_empty(), "{xml}");
    // The worker was stopped at the end (SIGTERM: it drained and said so).
    assert!(worker_log.contains("SIGTERM"), "{worker_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_worker_config_fails_the_run_with_a_readable_report_and_valid_junit() {
    // The mock skips its manifest check so that the task reaches the
    // worker, whose allowlist lacks it: the worker refuses it.
    let setup = Setup::new(Options {
        insecure_skip_checks: true,
        worker_lacks: Some("crm.create_ticket"),
    })
    .await;
    let pack = setup.write_pack(&[
        (
            "a-echo.toml",
            r#"
[[steps]]
submit = { plan = "echo", approve = true, tasks = [{ task = "diag.echo", inputs = { message = "hi" } }] }

[[steps]]
expect = { plan = "echo", status = "succeeded", within = "15s" }
"#,
        ),
        (
            "b-ticket.toml",
            r#"name = "ticket"

[[steps]]
submit = { plan = "t", approve = true, tasks = [{ task = "crm.create_ticket", inputs = { title = "needs the allowlist" } }] }

[[steps]]
[steps.expect]
plan = "t"
status = "succeeded"
within = "15s"
steps = [{ outcome = "SUCCEEDED" }]
"#,
        ),
    ]);
    let run = setup.run(&setup.reference_worker(), &[&pack], None).await;
    let stdout = &run.stdout;
    assert_eq!(run.status.code(), Some(1), "{}", run.report());
    for needle in [
        "[1/2] a-echo ... ok",
        "[2/2] ticket ... FAILED",
        "at step 2 (expect \"t\", ",
        "b-ticket.toml:6)",
        "plan status",
        "expected: succeeded",
        "seen:     failed",
        "step 0 (crm.create_ticket) outcome",
        "expected: SUCCEEDED",
        "seen:     rejected (not_allowed",
        "worker log (last lines of ",
        "2 scenarios: 1 passed, 1 failed",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let (xml, junit) = (&run.junit_xml, run.junit.as_ref().expect("a JUnit report"));
    assert_eq!(junit.cases, ["a-echo", "ticket"], "{xml}");
    assert_eq!(junit.suite_failures.as_deref(), Some("1"), "{xml}");
    assert_eq!(junit.failures.len(), 1, "{xml}");
    assert!(
        junit.failures[0].contains("step 2 (expect \"t\")"),
        "{:?}",
        junit.failures
    );
    assert!(
        junit.system_out.contains("private-worker") || junit.system_out.contains("task"),
        "the worker log's tail is in <system-out>: {:?}",
        junit.system_out
    );
}
