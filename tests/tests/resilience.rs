//! Real faults: a connection cut mid-task and an orchestrator restart. The
//! worker reconnects, re-sends what was not acknowledged, and nothing is
//! lost or run twice.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Options};
use orchestrator_mock::api::PlanStatus;
use private_worker_tests::proxy::CuttableProxy;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_finished_during_a_cut_connection_is_delivered_once_after_reconnecting() {
    let env = Env::start(Options::default()).await;
    let proxy = CuttableProxy::start(env.grpc_addr).await.unwrap();
    let config = env.write_worker_config_at(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        proxy.addr(),
    );
    let worker = env.start_worker_with(&config, "worker");
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = env.submit(&[("diag.slow", json!({"ms": 1500}))]).await;
    env.admin.approve(&plan.id).await.unwrap();
    let start = Instant::now();
    while env.api.requests().is_empty() {
        assert!(start.elapsed() < common::WAIT, "the task never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.cut_all();

    let plan = env
        .admin
        .wait_for_plan(&plan.id, common::WAIT)
        .await
        .unwrap();
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}",
        worker.output()
    );
    assert!(
        proxy.connections_accepted() >= 2,
        "the worker did not reconnect"
    );
    assert_eq!(env.api.requests().len(), 1, "the task ran more than once");
    assert_eq!(
        env.admin.results(&plan.id).await.unwrap().len(),
        1,
        "the result was stored twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_after_an_orchestrator_restart() {
    let mut env = Env::start(Options::default()).await;
    let worker = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;
    env.shutdown_orchestrator().await;

    let mut config = env.orchestrator_config.clone();
    config.grpc_listen = env.grpc_addr;
    let restarted = orchestrator_mock::spawn(config).await.unwrap();
    env.admin = common::admin_client(&restarted);
    env.orchestrator = Some(restarted);
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "after restart"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{}", worker.output());
}
