//! The orchestrator validates a plan against its registry at submission and
//! refuses it with errors that name the task and the JSON path.

mod common;

use common::{Env, Options, plan_request};
use orchestrator_mock::api::PlanStatus;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_an_unknown_task_is_refused_naming_the_task() {
    let env = Env::start(Options::default()).await;
    let err = env
        .admin
        .submit_plan(&plan_request(&[
            ("crm.create_ticket", json!({"title": "fine"})),
            ("crm.launch_missiles", json!({})),
        ]))
        .await
        .unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{err}");
    assert_eq!(problems[0].step, 1);
    assert_eq!(problems[0].task, "crm.launch_missiles");
    assert!(problems[0].message.contains("crm.launch_missiles"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_invalid_inputs_is_refused_naming_the_task_and_the_json_path() {
    let env = Env::start(Options::default()).await;
    let err = env
        .admin
        .submit_plan(&plan_request(&[(
            "crm.create_ticket",
            json!({"title": "", "priority": 9, "customer": "nobody"}),
        )]))
        .await
        .unwrap_err();
    let problems = err.problems();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in ["/title", "/priority", "/customer"] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
    assert!(
        problems
            .iter()
            .all(|p| p.task == "crm.create_ticket" && p.step == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_plan_waits_for_approval_and_a_rejected_plan_runs_nothing() {
    let env = Env::start(Options::default()).await;
    let _worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    let plan = env
        .submit(&[("crm.create_ticket", json!({"title": "needs approval"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::PendingApproval);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(env.api.requests().is_empty(), "ran before approval");
    let plan = env.admin.reject(&plan.id, "not today").await.unwrap();
    assert_eq!(plan.status, PlanStatus::Rejected);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(env.api.requests().is_empty(), "ran after rejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_stored_before_its_task_was_denied_cannot_be_approved_after_a_restart() {
    let mut env = Env::start(Options::default()).await;
    let _worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    let plan = env
        .submit(&[("crm.create_ticket", json!({"title": "stored before deny"}))])
        .await;
    env.shutdown_orchestrator().await;

    // The operator turns the task to `deny` and restarts the orchestrator
    // on the same data: the stored plan must not become approvable.
    let registry = env.orchestrator_config.registry.clone();
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&registry).unwrap()).unwrap();
    for task in value["tasks"].as_array_mut().unwrap() {
        if task["name"] == "crm.create_ticket" {
            task["approval"] = json!("deny");
        }
    }
    std::fs::write(&registry, value.to_string()).unwrap();
    let orchestrator = orchestrator_mock::spawn(env.orchestrator_config.clone())
        .await
        .unwrap();
    let admin = common::admin_client(&orchestrator);

    let error = admin.approve(&plan.id).await.unwrap_err();
    assert_eq!(error.status(), Some(422), "{error}");
    assert!(error.to_string().contains("plan_denied"), "{error}");
    assert!(error.to_string().contains("crm.create_ticket"), "{error}");
    assert_eq!(
        admin.plan(&plan.id).await.unwrap().status,
        PlanStatus::PendingApproval
    );
    assert!(
        env.api.requests().is_empty(),
        "the internal API received {:?}",
        env.api.requests()
    );
    orchestrator.shutdown().await;
}
