//! The local kill switch: while its file exists on the worker host, every
//! assignment is answered REJECTED `kill_switch`, nothing reaches the
//! internal API, and the refusal's audit record (in the orchestrator's store
//! and the worker's local log) carries the code; once the file is removed
//! the next plan runs. `--check` shows the state and the file.

mod common;

use std::path::Path;
use std::process::Output;

use common::{Env, Options};
use orchestrator_mock::api::{PlanStatus, StepStatus};
use private_worker_tests::catalog;
use private_worker_tests::procs::binary;
use serde_json::json;

fn check(env: &Env, config: &Path) -> Output {
    std::process::Command::new(binary("private-worker"))
        .arg("--config")
        .arg(config)
        .arg("--check")
        .env(catalog::TOKEN_ENV, &env.token)
        .output()
        .expect("run private-worker --check")
}

fn kill_switch_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find(|l| l.contains("kill switch"))
        .unwrap_or_else(|| panic!("no kill switch line in --check:\n{stdout}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_kill_switch_file_present_nothing_runs_and_every_refusal_is_audited() {
    let env = Env::start(Options::default()).await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    let config = env.path("worker.toml");
    // The default: `STOP` beside the audit log.
    let stop = env.path("STOP");

    let off = check(&env, &config);
    assert!(off.status.success(), "{off:?}");
    let line = kill_switch_line(&off);
    assert!(line.contains("off"), "{line}");
    assert!(line.contains(&stop.display().to_string()), "{line}");

    std::fs::write(&stop, b"maintenance\n").unwrap();
    let on = check(&env, &config);
    assert!(
        on.status.success(),
        "an operator's stop is not a failed check: {on:?}"
    );
    let line = kill_switch_line(&on);
    assert!(line.contains("ON"), "{line}");
    assert!(line.contains(&stop.display().to_string()), "{line}");

    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "stopped"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Failed, "{plan:#?}");
    let step = &plan.steps[0];
    assert_eq!(step.status, StepStatus::Rejected, "{step:#?}");
    assert_eq!(step.error_code.as_deref(), Some("kill_switch"), "{step:#?}");
    let message = step.error_message.clone().unwrap_or_default();
    assert!(
        message.contains(&stop.display().to_string()),
        "the reason names the file: {message}"
    );
    assert!(
        env.api.requests().is_empty(),
        "the internal API received {:?}",
        env.api.requests()
    );

    // The orchestrator's copy of the audit record carries the code.
    let audit = env.admin.audit(&plan.id).await.unwrap();
    assert_eq!(audit.len(), 1, "a refused task still has an audit record");
    assert_eq!(audit[0].outcome, "rejected");
    assert_eq!(audit[0].error_code.as_deref(), Some("kill_switch"));
    assert!(
        audit[0]
            .error_message
            .as_deref()
            .unwrap_or_default()
            .contains(&stop.display().to_string())
    );
    assert!(
        audit[0].started_at.is_none(),
        "nothing ran: {:#?}",
        audit[0]
    );
    // And so does the worker's local, chained log.
    let local = env.path("worker-audit.jsonl");
    private_worker::audit::verify_file(&local).expect("the local chain is intact");
    let text = std::fs::read_to_string(&local).unwrap();
    let refused: Vec<_> = text
        .lines()
        .map(|l| private_worker::audit::Record::from_line(l).unwrap())
        .filter(|r| r.error_code == "kill_switch")
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert_eq!(refused[0].outcome, "REJECTED");
    assert!(refused[0].started_at.is_none());

    // Removed: the next plan runs on the same worker, without a restart.
    std::fs::remove_file(&stop).unwrap();
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "running again"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
    assert_eq!(env.api.requests().len(), 1);
    let line = kill_switch_line(&check(&env, &config));
    assert!(line.contains("off"), "{line}");

    // Each change was logged once by the worker.
    drop(worker);
    let log = std::fs::read_to_string(env.path("worker.log")).unwrap();
    assert!(log.contains("kill switch turned ON"), "{log}");
    assert!(log.contains("kill switch turned off"), "{log}");
}
