//! Credentials stay inside: the secret value reaches the internal API and
//! nothing else, not the orchestrator (every byte it received), not its
//! stored results or audit records, not the worker's log or audit log, even
//! when the internal API echoes the credential back.

mod common;

use common::{Env, Options};
use orchestrator_mock::api::{PlanStatus, StepStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_never_reaches_the_orchestrator_the_audit_trail_or_the_logs() {
    let env = Env::start(Options {
        wire_capture: true,
        ..Options::default()
    })
    .await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = env
        .run_plan(&[
            ("diag.echo", json!({"message": "echo my headers back"})),
            ("crm.create_ticket", json!({"title": "Leak check"})),
        ])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");

    // The credential was really used: the API saw it.
    let echoed = env.api.requests();
    assert!(
        echoed[0]
            .headers
            .iter()
            .any(|(_, v)| v.contains(&env.token))
    );
    // The API echoed it back, and the worker redacted it.
    let output = plan.steps[0].output.as_ref().unwrap();
    assert_eq!(
        output["body"]["headers"]["authorization"],
        "Bearer [REDACTED]"
    );

    common::assert_secret_absent(
        &env,
        &plan,
        &worker.output(),
        &env.token,
        b"echo my headers back",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_credential_is_missing_fails_without_calling_the_internal_api() {
    let env = Env::start(Options::default()).await;
    let config = env.write_worker_config(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        private_worker_tests::pki::ORCHESTRATOR_NAME,
    );
    // Started without the token in its environment.
    let worker = private_worker_tests::procs::Process::start(
        "worker",
        &private_worker_tests::procs::binary("private-worker"),
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", "info")],
        &env.path("worker.log"),
    );
    env.wait_connected(&env.pki.worker_identity).await;
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "x"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Failed);
    let step = &plan.steps[0];
    assert_eq!(step.status, StepStatus::Failed);
    assert_eq!(step.error_code.as_deref(), Some("credential_unavailable"));
    assert!(
        step.error_message
            .as_deref()
            .unwrap_or("")
            .contains("env://CRM_API_TOKEN"),
        "{step:#?}"
    );
    assert!(env.api.requests().is_empty(), "the internal API was called");
    assert_eq!(env.admin.audit(&plan.id).await.unwrap().len(), 1);
    drop(worker);
}
