//! Defense in depth: the orchestrator here skips its own registry and
//! manifest checks (as a compromised cloud would), and the worker must
//! still run nothing outside its local allowlist or with inputs that break
//! its local schema, while reporting each refusal with a reason and an
//! audit record.

mod common;

use common::{Env, Options};
use orchestrator_mock::api::{PlanStatus, StepStatus};
use serde_json::json;

async fn refused(env: &Env, task: &str, inputs: serde_json::Value, code: &str, mentions: &[&str]) {
    let plan = env.run_plan(&[(task, inputs)]).await;
    assert_eq!(plan.status, PlanStatus::Failed, "{plan:#?}");
    let step = &plan.steps[0];
    assert_eq!(step.status, StepStatus::Rejected, "{step:#?}");
    assert_eq!(step.error_code.as_deref(), Some(code), "{step:#?}");
    let message = step.error_message.clone().unwrap_or_default();
    for m in mentions {
        assert!(
            message.contains(m),
            "reason {message:?} should mention {m:?}"
        );
    }
    let audit = env.admin.audit(&plan.id).await.unwrap();
    assert_eq!(audit.len(), 1, "a refused task still has an audit record");
    assert_eq!(audit[0].outcome, "rejected");
    assert_eq!(audit[0].worker_identity, env.pki.worker_identity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_missing_from_the_local_allowlist_is_never_executed_even_when_the_orchestrator_sends_it()
 {
    let env = Env::start(Options {
        insecure_skip_checks: true,
        ..Options::default()
    })
    .await;
    let _worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    refused(
        &env,
        "crm.delete_customer",
        json!({"customer": "C-1"}),
        "not_allowed",
        &["crm.delete_customer"],
    )
    .await;
    refused(
        &env,
        "shell.exec",
        json!({"cmd": "rm -rf /"}),
        "not_allowed",
        &["shell.exec"],
    )
    .await;
    assert!(
        env.api.requests().is_empty(),
        "the internal API received {:?}",
        env.api.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_breaking_the_local_schema_are_never_executed_even_when_the_orchestrator_sends_them()
{
    let env = Env::start(Options {
        insecure_skip_checks: true,
        ..Options::default()
    })
    .await;
    let _worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    refused(
        &env,
        "crm.create_ticket",
        json!({"title": 5}),
        "invalid_input",
        &["/title"],
    )
    .await;
    refused(
        &env,
        "crm.create_ticket",
        json!({"title": "ok", "admin": true}),
        "invalid_input",
        &["admin"],
    )
    .await;
    refused(
        &env,
        "crm.get_ticket",
        json!({"ticket_id": "../../admin"}),
        "invalid_input",
        &["/ticket_id"],
    )
    .await;
    assert!(
        env.api.requests().is_empty(),
        "the internal API received {:?}",
        env.api.requests()
    );

    // The same worker still runs a valid task afterwards.
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "fine"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded);
    assert_eq!(env.api.requests().len(), 1);
}
