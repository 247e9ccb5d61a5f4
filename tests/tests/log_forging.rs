//! Log forging from the wire: a hostile orchestrator puts CR, LF, ESC, NUL
//! and a C1 control into every text field that reaches the worker's log
//! (input values quoted back by schema errors, Cancel, ResultRefused and
//! Drain reasons, Welcome manifest problems, a stream's error status, ids).
//! In each case the worker's text log holds no raw control character and
//! no forged line, the field is still visible (escaped), and the worker
//! goes on serving the next good task.

mod common;

use std::time::Duration;

use common::{Env, Options, WAIT, requests_to};
use private_worker_proto::v1 as pb;
use private_worker_tests::procs::Process;
use private_worker_tests::scripted::{ScriptedOrchestrator, assignment};
use serde_json::json;

const HEARTBEAT: Duration = Duration::from_secs(2);

/// The fake timestamp a forged line would start with.
const FAKE_TIMESTAMP: &str = "2026-12-02T14:00:00.000000Z";

/// Text that, written raw, would end the current log line and start a
/// forged one (then colour the terminal and cut the line at a NUL).
fn forged(case: &str) -> String {
    format!("ok\r\n{FAKE_TIMESTAMP}  INFO private_worker: FORGED-{case} all good\u{1b}[31m\0\u{85}")
}

/// A scripted orchestrator (after `before_hello` prepared it) and a
/// worker connected to it.
async fn connected(
    before_hello: impl FnOnce(&ScriptedOrchestrator),
) -> (Env, ScriptedOrchestrator, Process) {
    let env = Env::start(Options::default()).await;
    let (orchestrator, worker, _) =
        common::worker_on_scripted_orchestrator(&env, HEARTBEAT, before_hello, |t| t).await;
    (env, orchestrator, worker)
}

/// The log holds the case's marker (the field reached it), no control
/// character but line ends, and no line starting like a forged one.
fn assert_log_clean(log: &str, case: &str) {
    assert!(
        log.contains(&format!("FORGED-{case}")),
        "the field never reached the log:\n{log}"
    );
    let raw: Vec<char> = log
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "raw control characters {raw:?} in:\n{log}");
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with(FAKE_TIMESTAMP),
            "forged line {line:?} in:\n{log}"
        );
    }
}

/// A good task after the hostile message still runs and succeeds.
async fn next_good_task_succeeds(orchestrator: &ScriptedOrchestrator, task_id: &str) {
    assert!(orchestrator.send(assignment(
        task_id,
        1,
        "crm.create_ticket",
        json!({"title": "after the hostile message"}),
    )));
    orchestrator
        .wait_until("the good task's result", WAIT, |o| {
            o.results().iter().any(|r| {
                r.task.as_ref().is_some_and(|t| t.task_id == task_id)
                    && r.outcome() == pb::Outcome::Succeeded
            })
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_line_in_an_input_value_is_escaped_in_the_rejection_log() {
    let (_env, orchestrator, mut worker) = connected(|_| {}).await;
    // The schema error quotes the value that breaks `customer`'s pattern.
    orchestrator.send(assignment(
        "T-bad",
        1,
        "crm.create_ticket",
        json!({"title": "x", "customer": forged("input")}),
    ));
    worker.wait_for("assignment rejected", WAIT);
    next_good_task_succeeds(&orchestrator, "T-good").await;
    assert_log_clean(&worker.output(), "input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_line_in_a_cancel_reason_is_escaped() {
    let (env, orchestrator, mut worker) = connected(|_| {}).await;
    orchestrator.send(assignment("T-slow", 1, "diag.slow", json!({"ms": 5_000})));
    let start = std::time::Instant::now();
    while requests_to(&env.api, "/slow/5000") == 0 {
        assert!(start.elapsed() < WAIT, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    orchestrator.send(pb::orchestrator_message::Kind::Cancel(pb::Cancel {
        task: Some(pb::TaskRef {
            task_id: "T-slow".into(),
            attempt: 1,
        }),
        reason: forged("cancel"),
    }));
    worker.wait_for("cancelling on request", WAIT);
    next_good_task_succeeds(&orchestrator, "T-good").await;
    assert_log_clean(&worker.output(), "cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_line_in_a_result_refused_reason_is_escaped() {
    let (_env, orchestrator, mut worker) = connected(|_| {}).await;
    orchestrator.send(pb::orchestrator_message::Kind::ResultRefused(
        pb::ResultRefused {
            task: Some(pb::TaskRef {
                task_id: "T-none".into(),
                attempt: 1,
            }),
            reason: forged("refused"),
        },
    ));
    worker.wait_for("could not store a result", WAIT);
    next_good_task_succeeds(&orchestrator, "T-good").await;
    assert_log_clean(&worker.output(), "refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_line_in_a_drain_reason_is_escaped() {
    let (_env, orchestrator, mut worker) = connected(|_| {}).await;
    next_good_task_succeeds(&orchestrator, "T-good").await;
    orchestrator.send(pb::orchestrator_message::Kind::Drain(pb::Drain {
        reason: forged("drain"),
    }));
    worker.wait_for("draining: no new work", WAIT);
    assert_log_clean(&worker.output(), "drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_line_in_welcome_manifest_problems_is_escaped() {
    let (_env, orchestrator, mut worker) = connected(|o| {
        o.set_manifest_problems(vec![pb::ManifestProblem {
            name: forged("manifest-name"),
            version: forged("manifest-version"),
            reason: forged("manifest-reason"),
        }]);
    })
    .await;
    worker.wait_for("orchestrator will not dispatch this task", WAIT);
    next_good_task_succeeds(&orchestrator, "T-good").await;
    let log = worker.output();
    for case in ["manifest-name", "manifest-version", "manifest-reason"] {
        assert_log_clean(&log, case);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_line_in_a_stream_error_status_is_escaped() {
    let (_env, orchestrator, mut worker) = connected(|_| {}).await;
    orchestrator.end_stream(tonic::Status::unavailable(forged("status")));
    let welcomed = worker.output().matches("connected to orchestrator").count();
    worker.wait_for("session ended; will reconnect", WAIT);
    let start = std::time::Instant::now();
    while worker.output().matches("connected to orchestrator").count() <= welcomed {
        assert!(start.elapsed() < WAIT, "the worker never connected again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    next_good_task_succeeds(&orchestrator, "T-good").await;
    assert_log_clean(&worker.output(), "status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_task_names_with_control_characters_are_refused_and_never_logged() {
    let (_env, orchestrator, worker) = connected(|_| {}).await;
    for (field, value) in [
        ("task_id", forged("task-id")),
        ("plan_id", forged("plan-id")),
        ("task_name", forged("task-name")),
        ("task_version", forged("task-version")),
    ] {
        let pb::orchestrator_message::Kind::Assignment(mut message) =
            assignment("T-ids", 1, "crm.create_ticket", json!({"title": "x"}))
        else {
            unreachable!()
        };
        match field {
            "task_id" => message.task_id = value,
            "plan_id" => message.plan_id = value,
            "task_name" => message.task_name = value,
            _ => message.task_version = value,
        }
        orchestrator.send(pb::orchestrator_message::Kind::Assignment(message));
    }
    next_good_task_succeeds(&orchestrator, "T-good").await;
    let log = worker.output();
    assert!(
        log.matches("breaks the contract's id rules").count() == 4,
        "{log}"
    );
    assert!(!log.contains("FORGED"), "an id was echoed:\n{log}");
    assert!(
        orchestrator
            .results()
            .iter()
            .all(|r| r.task.as_ref().is_some_and(|t| t.task_id == "T-good")),
        "only the good task ran"
    );
}
