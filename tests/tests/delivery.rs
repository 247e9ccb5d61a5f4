//! Delivery guarantees of the worker under real faults, against a scripted
//! orchestrator that does what a broken or hostile one may do: the worker
//! is a separate process, killed with SIGKILL and restarted on the same
//! journal; every count of what ran and what arrived is in an assertion.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Options, WAIT, requests_to};
use private_worker_proto::v1 as pb;
use private_worker_tests::procs::Process;
use private_worker_tests::scripted::{ResultPolicy, ScriptedOrchestrator, assignment};
use serde_json::json;

const HEARTBEAT: Duration = Duration::from_secs(2);

/// A test world with a scripted orchestrator and a worker config pointing
/// at it (`max_in_flight` 8).
async fn scripted(policy: ResultPolicy) -> (Env, ScriptedOrchestrator, std::path::PathBuf) {
    let env = Env::start(Options::default()).await;
    let orchestrator =
        ScriptedOrchestrator::start(&env.orchestrator_config.tls, policy, HEARTBEAT).await;
    let config = env.write_worker_config_at(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        orchestrator.addr(),
    );
    (env, orchestrator, config)
}

fn results_for(orchestrator: &ScriptedOrchestrator, task_id: &str) -> Vec<pb::TaskResult> {
    orchestrator
        .results()
        .into_iter()
        .filter(|r| r.task.as_ref().is_some_and(|t| t.task_id == task_id))
        .collect()
}

async fn wait_for_requests(env: &Env, path: &str, count: usize) {
    let start = Instant::now();
    while requests_to(&env.api, path) < count {
        assert!(
            start.elapsed() < WAIT,
            "the internal API never got {count} request(s) to {path}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_that_succeeded_is_not_run_again_when_sent_with_a_higher_attempt() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Acknowledge).await;
    let worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    let inputs = json!({"title": "only once"});
    assert!(orchestrator.send(assignment("T-1", 1, "crm.create_ticket", inputs.clone())));
    orchestrator
        .wait_until("the first result", WAIT, |o| {
            results_for(o, "T-1").len() == 1
        })
        .await;
    // The same task id again, as a new attempt and as the same attempt.
    orchestrator.send(assignment("T-1", 2, "crm.create_ticket", inputs.clone()));
    orchestrator.send(assignment("T-1", 1, "crm.create_ticket", inputs));
    orchestrator
        .wait_until("the answer to attempt 2", WAIT, |o| {
            results_for(o, "T-1").len() == 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let results = results_for(&orchestrator, "T-1");
    assert_eq!(results.len(), 2, "one result per attempt: {results:#?}");
    let repeat = &results[1];
    assert_eq!(repeat.task.as_ref().unwrap().attempt, 2);
    assert_eq!(repeat.outcome(), pb::Outcome::Succeeded, "{repeat:#?}");
    assert_eq!(repeat.error_code, "already_started");
    assert!(
        repeat.audit.as_ref().unwrap().started_at.is_none(),
        "the audit record says nothing ran for attempt 2"
    );
    assert_eq!(
        requests_to(&env.api, "/tickets"),
        1,
        "the side effect ran more than once\n{}",
        worker.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_call_with_unacknowledged_results_delivers_them_after_restart_and_runs_nothing_twice()
 {
    let (env, orchestrator, config) = scripted(ResultPolicy::Ignore).await;
    let mut worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    orchestrator.send(assignment(
        "T-done",
        1,
        "crm.create_ticket",
        json!({"title": "finished before the crash"}),
    ));
    orchestrator
        .wait_until("the finished result", WAIT, |o| {
            !results_for(o, "T-done").is_empty()
        })
        .await;
    orchestrator.send(assignment(
        "T-write",
        1,
        "diag.slow_write",
        json!({"ms": 20_000}),
    ));
    orchestrator.send(assignment("T-read", 1, "diag.slow", json!({"ms": 1_500})));
    wait_for_requests(&env, "/slow/20000", 1).await;
    wait_for_requests(&env, "/slow/1500", 1).await;
    let before = results_for(&orchestrator, "T-done");
    assert_eq!(before.len(), 1, "{}", worker.output());
    worker.kill();

    orchestrator.set_policy(ResultPolicy::Acknowledge);
    let restarted = env.start_worker_with(&config, "worker-restarted");
    orchestrator
        .wait_until("every result after the restart", WAIT, |o| {
            results_for(o, "T-done").len() >= 2
                && !results_for(o, "T-write").is_empty()
                && !results_for(o, "T-read").is_empty()
        })
        .await;
    let output = restarted.output();

    let hello = &orchestrator.hellos()[1];
    let pending: Vec<&str> = hello
        .pending_results
        .iter()
        .map(|t| t.task_id.as_str())
        .collect();
    assert!(pending.contains(&"T-done"), "{hello:#?}");
    let running: Vec<&str> = hello.running.iter().map(|t| t.task_id.as_str()).collect();
    assert!(
        running.contains(&"T-write") && running.contains(&"T-read"),
        "{hello:#?}"
    );

    let again = &results_for(&orchestrator, "T-done")[1];
    assert_eq!(
        again, &before[0],
        "the re-sent result is the one finished before the crash"
    );
    let write = &results_for(&orchestrator, "T-write")[0];
    assert_eq!(write.outcome(), pb::Outcome::Unknown, "{write:#?}");
    assert_eq!(write.error_code, "interrupted");
    assert_eq!(
        requests_to(&env.api, "/slow/20000"),
        1,
        "the non-idempotent call ran again after the restart\n{output}"
    );
    let read = &results_for(&orchestrator, "T-read")[0];
    assert_eq!(
        read.outcome(),
        pb::Outcome::Succeeded,
        "{read:#?}\n{output}"
    );
    let keys: Vec<String> = env
        .api
        .requests()
        .iter()
        .filter(|r| r.uri.starts_with("/slow/1500"))
        .map(|r| {
            r.headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        keys,
        ["T-read", "T-read"],
        "the idempotent call is retried once, with the same Idempotency-Key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_orchestrator_could_not_store_is_sent_again_on_the_same_stream() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Refuse).await;
    let worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    orchestrator.send(assignment(
        "T-1",
        1,
        "crm.create_ticket",
        json!({"title": "disk full"}),
    ));
    orchestrator
        .wait_until("a re-send after the refusal", WAIT, |o| {
            results_for(o, "T-1").len() >= 2
        })
        .await;
    orchestrator.set_policy(ResultPolicy::Acknowledge);
    let sent = results_for(&orchestrator, "T-1").len();
    orchestrator
        .wait_until("the re-send that is stored", WAIT, |o| {
            results_for(o, "T-1").len() > sent
        })
        .await;
    assert_eq!(orchestrator.streams(), 1, "no reconnect was needed");
    assert_eq!(requests_to(&env.api, "/tickets"), 1, "{}", worker.output());
    orchestrator
        .wait_until("one credit back, after the acknowledgement", WAIT, |o| {
            o.credit_granted() == 1
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(orchestrator.credit_granted(), 1, "exactly one credit back");
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_that_never_acknowledges_cannot_grow_the_worker_memory_or_journal() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Ignore).await;
    let worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    let big = "x".repeat(400);
    let mut sent = 0;
    let mut rss_after_batch = Vec::new();
    // Far beyond the credit of 8, in batches; the worker refuses the excess
    // and, past its bound on refusals, drops the stream and dials again.
    for batch in 0..6 {
        for i in 0..200 {
            let id = format!("T-{batch}-{i}");
            orchestrator.send(assignment(&id, 1, "diag.echo", json!({"message": big})));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rss_after_batch.push(rss_bytes(worker.pid()));
    }
    let journal = env.path("worker-audit.journal.redb");
    let journal_bytes = std::fs::metadata(&journal).unwrap().len();
    let accepted = orchestrator.accepts().len();
    let first = rss_after_batch[0];
    let last = *rss_after_batch.last().unwrap();
    eprintln!(
        "sent {sent}, accepted {accepted}, streams {}, RSS per batch {rss_after_batch:?}, journal {journal_bytes} B",
        orchestrator.streams()
    );
    assert_eq!(
        requests_to(&env.api, "/echo"),
        8,
        "only the credit's worth of tasks ran"
    );
    assert!(
        last < first + 16 * 1024 * 1024,
        "memory grew from {first} to {last} bytes while nothing was acknowledged"
    );
    assert!(
        last < 200 * 1024 * 1024,
        "the worker uses {last} bytes of memory"
    );
    assert!(
        journal_bytes < 64 * 1024 * 1024,
        "the journal grew to {journal_bytes} bytes"
    );
    assert!(
        orchestrator.credit_granted() == 0,
        "no credit comes back without an acknowledgement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_beyond_the_contract_are_never_accepted_and_the_stream_goes_on() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Acknowledge).await;
    let worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    let long = "L".repeat(512 * 1024);
    orchestrator.send(assignment(
        &long,
        1,
        "crm.create_ticket",
        json!({"title": "a"}),
    ));
    orchestrator.send(assignment(
        "T\u{1b}[2J\nforged",
        1,
        "crm.create_ticket",
        json!({"title": "b"}),
    ));
    orchestrator.send(assignment(
        "T-ok",
        1,
        "crm.create_ticket",
        json!({"title": "c"}),
    ));
    orchestrator
        .wait_until("the valid task's result", WAIT, |o| {
            results_for(o, "T-ok").len() == 1
        })
        .await;
    assert_eq!(orchestrator.results().len(), 1);
    assert_eq!(orchestrator.accepts().len(), 1);
    assert_eq!(requests_to(&env.api, "/tickets"), 1);
    assert_eq!(orchestrator.streams(), 1);
    let log = worker.output();
    assert!(log.contains("breaks the contract's id rules"), "{log}");
    assert!(!log.contains("forged"), "a raw id reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_deadlines_report_what_really_happened() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Acknowledge).await;
    let worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    // A deadline already past: nothing is called.
    let mut past = match assignment("T-late", 1, "diag.slow_write", json!({"ms": 10})) {
        pb::orchestrator_message::Kind::Assignment(a) => a,
        _ => unreachable!(),
    };
    past.deadline = Some((std::time::SystemTime::now() - Duration::from_secs(1)).into());
    orchestrator.send(pb::orchestrator_message::Kind::Assignment(past.clone()));
    // A deadline that passes during the call: its effect is unknown.
    let mut short = past.clone();
    short.task_id = "T-short".into();
    short.inputs_json = json!({"ms": 5_000}).to_string();
    short.deadline = Some((std::time::SystemTime::now() + Duration::from_millis(800)).into());
    orchestrator.send(pb::orchestrator_message::Kind::Assignment(short));
    // Cancelled during the call.
    orchestrator.send(assignment(
        "T-cancel",
        1,
        "diag.slow_write",
        json!({"ms": 6_000}),
    ));
    wait_for_requests(&env, "/slow/6000", 1).await;
    orchestrator.send(pb::orchestrator_message::Kind::Cancel(pb::Cancel {
        task: Some(pb::TaskRef {
            task_id: "T-cancel".into(),
            attempt: 1,
        }),
        reason: "operator".into(),
    }));
    orchestrator
        .wait_until("three results", WAIT, |o| o.results().len() == 3)
        .await;
    let outcome = |id: &str| {
        let r = &results_for(&orchestrator, id)[0];
        (r.outcome(), r.error_code.clone())
    };
    assert_eq!(
        outcome("T-late"),
        (pb::Outcome::TimedOut, "deadline_passed".into())
    );
    assert_eq!(outcome("T-short"), (pb::Outcome::Unknown, "timeout".into()));
    assert_eq!(
        outcome("T-cancel"),
        (pb::Outcome::Unknown, "cancelled".into()),
        "{}",
        worker.output()
    );
    assert_eq!(
        requests_to(&env.api, "/slow/10"),
        0,
        "a late task was called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_task_lets_it_finish_and_deliver_its_result_then_exits_zero() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Acknowledge).await;
    let mut worker: Process = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    orchestrator.send(assignment(
        "T-long",
        1,
        "diag.slow_write",
        json!({"ms": 2_000}),
    ));
    wait_for_requests(&env, "/slow/2000", 1).await;
    let code = tokio::task::spawn_blocking(move || {
        let code = worker.terminate(Duration::from_secs(20));
        (code, worker.output())
    })
    .await
    .unwrap();
    let results = results_for(&orchestrator, "T-long");
    assert_eq!(code.0, Some(0), "{}", code.1);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome(), pb::Outcome::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_status_drains_like_sigterm_then_the_worker_exits_non_zero() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Acknowledge).await;
    let mut worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    orchestrator.send(assignment(
        "T-running",
        1,
        "diag.slow_write",
        json!({"ms": 1_500}),
    ));
    wait_for_requests(&env, "/slow/1500", 1).await;
    orchestrator.end_stream(tonic::Status::invalid_argument("Hello refused"));
    let (code, output) = tokio::task::spawn_blocking(move || {
        let code = worker.wait_exit(WAIT);
        (code, worker.output())
    })
    .await
    .unwrap();
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}\n{output}");
    let audit = std::fs::read_to_string(env.path("worker-audit.jsonl")).unwrap();
    let record = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["task_id"] == "T-running")
        .unwrap_or_else(|| panic!("no audit record for the running call\n{output}"));
    assert_eq!(
        record["outcome"], "SUCCEEDED",
        "the call finished within the grace"
    );
    assert_eq!(orchestrator.streams(), 1, "a fatal status is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_after_its_lease_makes_no_call_for_the_attempts_it_held() {
    let (env, orchestrator, config) = scripted(ResultPolicy::Acknowledge).await;
    // A lease of 6 s: calls may start up to 4 s after the last word.
    orchestrator.set_lease(Duration::from_secs(6));
    let mut worker = env.start_worker_with(&config, "worker");
    orchestrator
        .wait_until("a Hello", WAIT, |o| o.streams() == 1)
        .await;
    orchestrator.send(assignment("T-read", 1, "diag.slow", json!({"ms": 20_000})));
    wait_for_requests(&env, "/slow/20000", 1).await;
    worker.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let restarted = env.start_worker_with(&config, "worker-restarted");
    orchestrator
        .wait_until("the recovered attempt's result", WAIT, |o| {
            !results_for(o, "T-read").is_empty()
        })
        .await;
    let result = &results_for(&orchestrator, "T-read")[0];
    assert_eq!(
        (result.outcome(), result.error_code.as_str()),
        (pb::Outcome::Cancelled, "lease_lost"),
        "{result:#?}\n{}",
        restarted.output()
    );
    assert_eq!(
        requests_to(&env.api, "/slow/20000"),
        1,
        "an idempotent call was repeated after the lease had lapsed"
    );
}
