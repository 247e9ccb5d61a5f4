//! Cancel and deadlines end to end: the admin API cancels a plan whose
//! step is mid-call on a real worker process; a plan step's deadline
//! reaches the worker, which cuts the call at it. Both report the truth:
//! the call may have had its effect, so `outcome_unknown`, never a retry.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Options, WAIT, plan_request, requests_to};
use orchestrator_mock::api::{PlanStatus, PlanSubmission, StepStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_plan_stops_its_running_call_reports_an_unknown_outcome_and_runs_nothing_after()
 {
    let env = Env::start(Options::default()).await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    let plan = env
        .submit(&[
            ("diag.slow_write", json!({"ms": 10_000})),
            ("crm.create_ticket", json!({"title": "after the cancel"})),
        ])
        .await;
    env.admin.approve(&plan.id).await.unwrap();
    let start = Instant::now();
    while requests_to(&env.api, "/slow/10000") == 0 {
        assert!(start.elapsed() < WAIT, "the call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.admin
        .cancel_plan(&plan.id, "operator changed their mind")
        .await
        .unwrap();
    let plan = env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap();
    let elapsed = start.elapsed();

    assert_eq!(
        plan.status,
        PlanStatus::Cancelled,
        "{plan:#?}\n{}",
        worker.output()
    );
    let step = &plan.steps[0];
    assert_eq!(step.status, StepStatus::OutcomeUnknown, "{plan:#?}");
    assert_eq!(step.error_code.as_deref(), Some("cancelled"));
    assert_ne!(plan.steps[1].status, StepStatus::Succeeded);
    assert_eq!(
        requests_to(&env.api, "/tickets"),
        0,
        "a step after the cancel ran"
    );
    assert_eq!(requests_to(&env.api, "/slow/10000"), 1);
    assert!(
        elapsed < Duration::from_secs(10),
        "the call was not cut: the plan ended after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_deadline_reaches_the_worker_which_cuts_the_call_at_it() {
    let env = Env::start(Options::default()).await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    let deadline = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let mut submission =
        PlanSubmission::from(plan_request(&[("diag.slow_write", json!({"ms": 8_000}))]));
    submission.steps[0].deadline = Some(
        deadline
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
    );
    let plan = env.admin.submit(&submission).await.unwrap();
    env.admin.approve(&plan.id).await.unwrap();
    let plan = env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap();
    let step = &plan.steps[0];
    assert_eq!(
        step.status,
        StepStatus::OutcomeUnknown,
        "{plan:#?}\n{}",
        worker.output()
    );
    assert_eq!(step.error_code.as_deref(), Some("timeout"));
    let sent = step.attempts[0]
        .deadline
        .as_deref()
        .expect("the assignment carried the deadline");
    assert!(!sent.is_empty());
}
