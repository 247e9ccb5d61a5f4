//! The second worker, written in Python from the .proto alone
//! (`tests/python_worker/`), against the real orchestrator-mock: the
//! contract is language-neutral when this worker runs plans end to end,
//! refuses what its allowlist and schemas refuse, and writes an audit log
//! that `private-worker --verify-audit` accepts and the mock's checks call
//! `ok`. The test vectors are checked in Python here too.
//!
//! Needs python3 with the packages of `tests/python_worker/requirements.txt`
//! (`.ci/run` installs them); without them every test here fails and says
//! what to install. The gRPC code is generated from the .proto into each
//! test's temp directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, Options};
use orchestrator_mock::api::{PlanStatus, StepStatus};
use private_worker_tests::catalog::{TOKEN_ENV, WorkerSetup};
use private_worker_tests::pki::ORCHESTRATOR_NAME;
use private_worker_tests::procs::{Process, binary};
use private_worker_tests::python_worker;
use serde_json::{Value, json};

/// The Python worker's JSON config for the catalog's allowed tasks,
/// dialing the env's orchestrator; returns its path.
fn write_python_config(env: &Env, name: &str) -> PathBuf {
    let config = python_worker::config_json(&WorkerSetup {
        orchestrator_address: env.grpc_addr.to_string(),
        server_name: ORCHESTRATOR_NAME,
        ca_cert: &env.pki.ca_cert,
        cert: &env.pki.worker_cert,
        key: &env.pki.worker_key,
        api_base: &env.api.base_url(),
        audit_log: &env.path(&format!("{name}-audit.jsonl")),
        max_in_flight: 8,
    });
    let path = env.path(&format!("{name}.json"));
    std::fs::write(&path, config).unwrap();
    path
}

/// Generates the gRPC code into the env's temp directory and starts the
/// Python worker with the test PKI and the CRM token, as `worker`.
fn start_python_worker(env: &Env) -> Process {
    let generated = env.path("generated");
    python_worker::generate(&generated);
    let config = write_python_config(env, "worker");
    let args = python_worker::worker_args(&config, &generated);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::start(
        "python-worker",
        Path::new(&python_worker::python()),
        &args,
        &[
            (TOKEN_ENV, env.token.as_str()),
            ("LOG_LEVEL", "INFO"),
            python_worker::NO_BYTECODE,
        ],
        &env.path("worker.log"),
    )
}

/// The reference worker's verifier on the Python worker's audit log.
fn verify_with_private_worker(log: &Path) -> String {
    let out = Command::new(binary("private-worker"))
        .arg("--verify-audit")
        .arg(log)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "private-worker --verify-audit refused the Python worker's log:\n{text}\nlog:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    text
}

/// Asserts that the mock stored `count` audit records for the plan and
/// that its checks found each one `ok` (`check.verdict`).
async fn assert_audit_checked_ok(env: &Env, plan_id: &str, count: usize) {
    let records: Vec<Value> = env
        .admin
        .request(reqwest::Method::GET, &format!("/v1/plans/{plan_id}/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(records.len(), count, "{records:#?}");
    for record in &records {
        assert_eq!(
            record["worker_identity"], env.pki.worker_identity,
            "{record:#}"
        );
        assert_eq!(
            record["check"]["verdict"], "ok",
            "the mock's audit check of a Python worker record is not ok: {record:#}"
        );
    }
}

#[test]
fn the_test_vectors_pass_in_python() {
    python_worker::require();
    let out = python_worker::run_script("check_vectors.py", &[]);
    assert!(out.contains("all test vectors pass"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_worker_runs_a_plan_end_to_end_and_its_audit_log_verifies_with_private_worker() {
    let env = Env::start(Options {
        wire_capture: true,
        ..Options::default()
    })
    .await;
    let worker = start_python_worker(&env);
    env.wait_connected(&env.pki.worker_identity).await;

    // The orchestrator found every manifest entry's schema hash equal to
    // the registry's: RFC 8785 in Python and in Rust agree.
    let session = env.admin.workers().await.unwrap().remove(0);
    assert!(session.worker_version.contains("python"), "{session:#?}");
    assert_eq!(session.manifest.len(), 6, "{session:#?}");
    assert!(
        session.manifest.iter().all(|m| m.dispatchable),
        "{session:#?}"
    );

    let plan = env
        .run_plan(&[
            ("diag.echo", json!({"message": "echo my headers back"})),
            (
                "crm.create_ticket",
                json!({"title": "Printer on fire", "priority": 2, "customer": "C-42"}),
            ),
            (
                "crm.add_comment",
                json!({"ticket_id": "T-1001", "text": "Extinguisher dispatched"}),
            ),
            ("crm.get_ticket", json!({"ticket_id": "T-1001"})),
        ])
        .await;
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\nworker log:\n{}",
        worker.output()
    );
    for step in &plan.steps {
        assert_eq!(step.status, StepStatus::Succeeded, "{step:#?}");
        assert_eq!(
            step.worker.as_deref(),
            Some(env.pki.worker_identity.as_str())
        );
    }
    let created = plan.steps[1].output.as_ref().unwrap();
    assert_eq!(created["status"], 201, "{created:#}");
    assert_eq!(created["body"]["priority"], 2, "{created:#}");
    let read_back = plan.steps[3].output.as_ref().unwrap();
    assert_eq!(read_back["status"], 200);
    assert_eq!(read_back["body"]["title"], "Printer on fire");
    assert_eq!(
        read_back["body"]["comments"][0]["text"],
        "Extinguisher dispatched"
    );

    // Each call reached the internal API once, with the credential and the
    // task id as Idempotency-Key; the echoed credential came back redacted.
    let requests = env.api.requests();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    let bearer = format!("Bearer {}", env.token);
    for (request, step) in requests.iter().zip(&plan.steps) {
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("authorization"), Some(bearer.as_str()));
        assert_eq!(header("idempotency-key"), Some(step.task_id.as_str()));
    }
    let echoed = plan.steps[0].output.as_ref().unwrap();
    assert_eq!(
        echoed["body"]["headers"]["authorization"], "Bearer [REDACTED]",
        "{echoed:#}"
    );
    common::assert_secret_absent(
        &env,
        &plan,
        &worker.output(),
        &env.token,
        b"echo my headers back",
    )
    .await;

    // One result and one audit record per step, each found ok by the mock;
    // the local log verifies with the reference worker's verifier.
    assert_eq!(env.admin.results(&plan.id).await.unwrap().len(), 4);
    assert_audit_checked_ok(&env, &plan.id, 4).await;
    let log = env.path("worker-audit.jsonl");
    let verdict = verify_with_private_worker(&log);
    assert!(verdict.contains("4 records"), "{verdict}");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_worker_refuses_tasks_outside_its_allowlist_and_bad_inputs_without_a_call() {
    // The orchestrator skips its own checks, as a compromised cloud would.
    let env = Env::start(Options {
        insecure_skip_checks: true,
        ..Options::default()
    })
    .await;
    let worker = start_python_worker(&env);
    env.wait_connected(&env.pki.worker_identity).await;

    let cases = [
        (
            "crm.delete_customer",
            json!({"customer": "C-1"}),
            "not_allowed",
            "crm.delete_customer",
        ),
        (
            "shell.exec",
            json!({"cmd": "rm -rf /"}),
            "not_allowed",
            "shell.exec",
        ),
        (
            "crm.create_ticket",
            json!({"title": 5}),
            "invalid_input",
            "/title",
        ),
        (
            "crm.create_ticket",
            json!({"title": "ok", "admin": true}),
            "invalid_input",
            "admin",
        ),
        (
            "crm.get_ticket",
            json!({"ticket_id": "../../admin"}),
            "invalid_input",
            "/ticket_id",
        ),
    ];
    for (task, inputs, code, mention) in cases {
        let plan = env.run_plan(&[(task, inputs)]).await;
        let step = &plan.steps[0];
        assert_eq!(
            step.status,
            StepStatus::Rejected,
            "{step:#?}\nworker log:\n{}",
            worker.output()
        );
        assert_eq!(step.error_code.as_deref(), Some(code), "{step:#?}");
        let message = step.error_message.clone().unwrap_or_default();
        assert!(
            message.contains(mention),
            "{message:?} should name {mention:?}"
        );
        let audit = env.admin.audit(&plan.id).await.unwrap();
        assert_eq!(audit.len(), 1, "a refusal has its audit record");
        assert_eq!(audit[0].outcome, "rejected");
        assert!(
            audit[0].started_at.is_none(),
            "nothing ran: {:#?}",
            audit[0]
        );
        assert_audit_checked_ok(&env, &plan.id, 1).await;
    }
    assert!(
        env.api.requests().is_empty(),
        "the internal API received {:?}",
        env.api.requests()
    );

    // The same worker still runs a valid task afterwards.
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "fine"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
    assert_eq!(env.api.requests().len(), 1);

    let verdict = verify_with_private_worker(&env.path("worker-audit.jsonl"));
    assert!(verdict.contains("6 records"), "{verdict}");
    drop(worker);
}
