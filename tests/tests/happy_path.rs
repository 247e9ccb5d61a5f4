//! The main path, end to end: orchestrator-mock (in process) and the worker
//! binary (a separate process) over real sockets and mutual TLS, against
//! the internal API.

mod common;

use std::time::Duration;

use common::{Env, Options};
use orchestrator_mock::api::{PlanStatus, StepStatus};
use private_worker_tests::sockets::sockets_of;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_plan_runs_end_to_end_over_mtls_with_the_worker_as_a_separate_process() {
    let env = Env::start(Options::default()).await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = env
        .run_plan(&[
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
    let read_back = plan.steps[2].output.as_ref().unwrap();
    assert_eq!(read_back["status"], 200);
    assert_eq!(read_back["body"]["title"], "Printer on fire");
    assert_eq!(
        read_back["body"]["comments"][0]["text"],
        "Extinguisher dispatched"
    );

    // Every call reached the internal API once, with the worker's credential.
    let requests = env.api.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let bearer = format!("Bearer {}", env.token);
    assert!(requests.iter().all(|r| {
        r.headers
            .iter()
            .any(|(k, v)| k == "authorization" && *v == bearer)
    }));

    // The orchestrator stored one result and one audit record per step,
    // attributed to the identity in the worker's certificate.
    let results = env.admin.results(&plan.id).await.unwrap();
    let audit = env.admin.audit(&plan.id).await.unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(audit.len(), 3);
    for record in &audit {
        assert_eq!(record.worker_identity, env.pki.worker_identity);
        // Its hash, its place in the worker's chain and its match with the
        // assignment and the result were all checked on arrival.
        assert_eq!(record.check.verdict, "ok", "{:?}", record.check);
    }

    // The worker's own audit log holds the same three records, chained.
    let (records, _) = private_worker::audit::verify_file(&env.path("worker-audit.jsonl")).unwrap();
    assert_eq!(records, 3);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_process_listens_on_no_socket_while_connected_and_working() {
    let env = Env::start(Options::default()).await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;

    let assert_no_listener = |when: &str| {
        let sockets = sockets_of(worker.pid()).unwrap();
        assert!(
            sockets.iter().any(|s| s.table.starts_with("tcp")),
            "{when}: expected the outbound TCP connection, found {sockets:?}"
        );
        let inbound: Vec<_> = sockets.iter().filter(|s| s.accepts_inbound).collect();
        assert!(
            inbound.is_empty(),
            "{when}: worker accepts inbound traffic on {inbound:?}"
        );
    };
    assert_no_listener("connected and idle");

    let plan = env.submit(&[("diag.slow", json!({"ms": 1500}))]).await;
    env.admin.approve(&plan.id).await.unwrap();
    // Look while the task is in flight (the internal API holds it 1.5 s).
    let start = std::time::Instant::now();
    while env.api.requests().is_empty() {
        assert!(
            start.elapsed() < common::WAIT,
            "the task never reached the internal API"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_no_listener("running a task");
    let plan = env
        .admin
        .wait_for_plan(&plan.id, common::WAIT)
        .await
        .unwrap();
    assert_eq!(plan.status, PlanStatus::Succeeded);
    assert_no_listener("after the task");
}
