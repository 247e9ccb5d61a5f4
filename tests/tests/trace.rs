//! W3C trace context end to end: the `traceparent` a plan is submitted with
//! (or the one the orchestrator makes) reaches the internal API with the
//! same trace id, each hop with a parent-id of its own; the worker's log
//! lines for the task carry the trace id; an invalid one is refused at
//! submission, and one that reaches a worker anyway does not stop the task.

mod common;

use common::{Env, Options, WAIT, plan_request};
use orchestrator_mock::api::{PlanStatus, PlanSubmission, PlanView};
use orchestrator_mock::client::ClientError;
use private_worker_proto::trace::TraceParent;
use private_worker_proto::v1 as pb;
use private_worker_tests::internal_api::RecordedRequest;
use private_worker_tests::scripted::assignment;
use serde_json::json;

/// The agent's traceparent (the example of the W3C recommendation).
const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn two_steps(traceparent: Option<&str>) -> PlanSubmission {
    let mut submission = PlanSubmission::from(plan_request(&[
        ("crm.create_ticket", json!({"title": "Printer on fire"})),
        (
            "crm.add_comment",
            json!({"ticket_id": "T-1001", "text": "Extinguisher dispatched"}),
        ),
    ]));
    submission.traceparent = traceparent.map(str::to_string);
    submission
}

async fn run(env: &Env, submission: &PlanSubmission) -> PlanView {
    let plan = env.admin.submit(submission).await.unwrap();
    env.admin.approve(&plan.id).await.unwrap();
    env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap()
}

/// The one traceparent of each request the internal API received, parsed.
fn received(requests: &[RecordedRequest]) -> Vec<TraceParent> {
    requests
        .iter()
        .map(|r| {
            assert!(
                r.headers.iter().all(|(k, _)| k != "tracestate"),
                "tracestate was sent: {r:#?}"
            );
            r.traceparent()
                .unwrap_or_else(|| panic!("not exactly one traceparent: {r:#?}"))
                .parse()
                .unwrap_or_else(|e| panic!("an invalid traceparent was sent ({e}): {r:#?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plans_traceparent_reaches_the_internal_api_and_every_worker_log_line_of_its_tasks() {
    let env = Env::start(Options::default()).await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    let given: TraceParent = GIVEN.parse().unwrap();

    let plan = run(&env, &two_steps(Some(GIVEN))).await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
    assert_eq!(plan.traceparent.as_deref(), Some(GIVEN), "stored as given");
    let shown = env.admin.plan(&plan.id).await.unwrap();
    assert_eq!(
        shown.traceparent.as_deref(),
        Some(GIVEN),
        "GET plan shows it"
    );

    // Each assignment: the plan's trace, a parent-id of its own.
    let sent: Vec<TraceParent> = plan
        .steps
        .iter()
        .map(|s| {
            s.attempts[0]
                .traceparent
                .as_deref()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    // Each call: the same trace, a parent-id of the worker's own call.
    let requests = env.api.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let calls = received(&requests);
    for t in sent.iter().chain(&calls) {
        assert_eq!(t.trace_id(), given.trace_id());
        assert!(t.is_sampled());
    }
    let mut parents: Vec<String> = std::iter::once(&given)
        .chain(&sent)
        .chain(&calls)
        .map(TraceParent::parent_id)
        .collect();
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), 5, "every hop names a span of its own");

    // Every worker log line about either task carries the trace id, and
    // the worker's line for each call names the parent-id the API got.
    let log = worker.output();
    for step in &plan.steps {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("task_id={}", step.task_id)))
            .collect();
        assert!(
            lines.iter().any(|l| l.contains("task finished")),
            "no 'task finished' line for {}:\n{log}",
            step.task_id
        );
        for line in &lines {
            assert!(
                line.contains(&format!("trace_id={}", given.trace_id())),
                "a task line without the trace id: {line}"
            );
        }
    }
    for call in &calls {
        assert!(
            log.contains(&format!("traceparent={call}")),
            "no worker line names the call's traceparent {call}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_without_a_traceparent_gets_one_from_the_orchestrator_and_the_api_receives_its_trace()
 {
    let env = Env::start(Options::default()).await;
    let _worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = run(&env, &two_steps(None)).await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
    let made: TraceParent = plan
        .traceparent
        .as_deref()
        .expect("the orchestrator made one")
        .parse()
        .unwrap();
    assert!(made.is_sampled());
    assert_ne!(made.to_string(), GIVEN);
    let calls = received(&env.api.requests());
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(call.trace_id(), made.trace_id());
        assert_ne!(call.parent_id(), made.parent_id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_is_refused_with_422_naming_the_field_and_nothing_runs() {
    let env = Env::start(Options::default()).await;
    let _worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "not a traceparent",
        "",
    ] {
        let err = env
            .admin
            .submit(&two_steps(Some(bad)))
            .await
            .expect_err(bad);
        let ClientError::Api {
            status,
            code,
            message,
            ..
        } = &err
        else {
            panic!("{bad:?}: {err}");
        };
        assert_eq!(*status, 422, "{bad:?}: {err}");
        assert_eq!(code, "traceparent_invalid", "{bad:?}: {err}");
        assert!(message.starts_with("traceparent "), "{message}");
    }
    assert!(env.api.requests().is_empty(), "a refused plan ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_with_an_invalid_traceparent_runs_in_a_new_trace_with_a_warning() {
    let env = Env::start(Options::default()).await;
    let (orchestrator, worker, _) = common::worker_on_scripted_orchestrator(
        &env,
        std::time::Duration::from_secs(2),
        |_| {},
        |t| t,
    )
    .await;
    let pb::orchestrator_message::Kind::Assignment(mut bad) = assignment(
        "t-bad-trace",
        1,
        "crm.create_ticket",
        json!({"title": "traced anyway"}),
    ) else {
        unreachable!()
    };
    bad.traceparent = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01".into();
    assert!(orchestrator.send(pb::orchestrator_message::Kind::Assignment(bad)));
    orchestrator
        .wait_until("the task's result", WAIT, |o| {
            o.results().iter().any(|r| {
                r.task.as_ref().is_some_and(|t| t.task_id == "t-bad-trace")
                    && r.outcome() == pb::Outcome::Succeeded
            })
        })
        .await;
    let calls = received(&env.api.requests());
    assert_eq!(calls.len(), 1);
    assert_ne!(
        calls[0].trace_id(),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the invalid value was not passed on"
    );
    let log = worker.output();
    let warning = log
        .lines()
        .find(|l| l.contains("dropped the assignment's traceparent"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("trace_id={}", calls[0].trace_id())),
        "the warning names the new trace: {warning}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plans_trace_context_survives_an_orchestrator_restart_and_reaches_the_api_after_it() {
    let mut env = Env::start(Options::default()).await;
    let pending = env.admin.submit(&two_steps(Some(GIVEN))).await.unwrap();
    env.shutdown_orchestrator().await;

    // The same data directory and gRPC address: the plan comes back from
    // the state store, its trace context with it.
    let mut config = env.orchestrator_config.clone();
    config.grpc_listen = env.grpc_addr;
    let restarted = orchestrator_mock::spawn(config).await.unwrap();
    env.admin = common::admin_client(&restarted);
    env.orchestrator = Some(restarted);
    let restored = env.admin.plan(&pending.id).await.unwrap();
    assert_eq!(restored.status, PlanStatus::PendingApproval);
    assert_eq!(restored.traceparent.as_deref(), Some(GIVEN));

    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    env.admin.approve(&pending.id).await.unwrap();
    let plan = env.admin.wait_for_plan(&pending.id, WAIT).await.unwrap();
    assert_eq!(plan.status, PlanStatus::Succeeded, "{}", worker.output());
    let calls = received(&env.api.requests());
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(call.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
