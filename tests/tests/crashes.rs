//! Crashes and losses on the orchestrator's side, with real processes: the
//! orchestrator killed with SIGKILL mid-run and restarted on its data
//! directory; a worker frozen and then killed for good while it holds
//! work, with a second worker connected. Every count of what ran and what
//! was stored is in an assertion.

mod common;

use std::time::{Duration, Instant};

use common::{
    Env, Options, OrchestratorProcess, WAIT, plan_request, requests_to, tickets_titled, wait_all,
};
use orchestrator_mock::api::{PlanStatus, StepStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_killed_mid_run_and_restarted_on_its_data_dir_finishes_every_plan_and_loses_nothing()
 {
    let env = Env::start(Options::default()).await;
    let data_dir = env.path("killed-orchestrator-data");
    let mut orchestrator = OrchestratorProcess::start(&env, &data_dir, 0, "orchestrator");
    let grpc_port = orchestrator.grpc_addr.port();
    let config = env.write_worker_config_at(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        orchestrator.grpc_addr,
    );
    let worker = env.start_worker_with(&config, "worker");

    const PLANS: usize = 30;
    let mut ids = Vec::new();
    for i in 0..PLANS {
        let plan = orchestrator
            .admin
            .submit_plan(&plan_request(&[
                ("crm.create_ticket", json!({"title": format!("crash-{i}")})),
                ("diag.slow_write", json!({"ms": 150})),
            ]))
            .await
            .unwrap();
        orchestrator.admin.approve(&plan.id).await.unwrap();
        ids.push(plan.id);
    }
    // Kill it once some plans are done and others are in flight.
    let start = Instant::now();
    loop {
        let mut finished = 0;
        for id in &ids {
            if orchestrator
                .admin
                .plan(id)
                .await
                .unwrap()
                .status
                .is_finished()
            {
                finished += 1;
            }
        }
        if finished >= 3 {
            assert!(finished < PLANS, "every plan finished before the kill");
            break;
        }
        assert!(start.elapsed() < WAIT, "no plan finished before the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    orchestrator.process.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let restarted =
        OrchestratorProcess::start(&env, &data_dir, grpc_port, "orchestrator-restarted");
    let plans = wait_all(&restarted.admin, &ids).await;
    for plan in &plans {
        assert_eq!(
            plan.status,
            PlanStatus::Succeeded,
            "{plan:#?}\n{}",
            worker.output()
        );
        let results = restarted.admin.results(&plan.id).await.unwrap();
        assert_eq!(results.len(), 2, "one stored result per step: {results:#?}");
    }
    for i in 0..PLANS {
        assert_eq!(
            tickets_titled(&env.api, &format!("crash-{i}")),
            1,
            "ticket crash-{i}"
        );
    }
    let writes = requests_to(&env.api, "/slow/150");
    assert_eq!(writes, PLANS, "each slow write ran exactly once");
    let log = worker.output();
    assert!(
        log.contains("reconnecting after backoff"),
        "the worker did not reconnect: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_lost_for_good_has_its_unaccepted_work_moved_to_another_worker_and_its_accepted_write_ends_outcome_unknown()
 {
    let env = Env::start(Options {
        extra_workers: 1,
        heartbeat: Some(Duration::from_secs(1)),
        lease_timeout: Some(Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    let mut lost = env.start_worker();
    env.wait_connected(&env.pki.worker_identity).await;

    let write = env
        .submit(&[("diag.slow_write", json!({"ms": 30_000}))])
        .await;
    env.admin.approve(&write.id).await.unwrap();
    let start = Instant::now();
    while requests_to(&env.api, "/slow/30000") == 0 {
        assert!(start.elapsed() < WAIT, "the write never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Freeze the worker: it keeps its connection but reads nothing.
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &lost.pid().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());
    let ticket = env
        .submit(&[("crm.create_ticket", json!({"title": "moved"}))])
        .await;
    env.admin.approve(&ticket.id).await.unwrap();
    let start = Instant::now();
    loop {
        let step = &env.admin.plan(&ticket.id).await.unwrap().steps[0];
        if step.status == StepStatus::Assigned {
            assert_eq!(
                step.worker.as_deref(),
                Some(env.pki.worker_identity.as_str())
            );
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the ticket was never assigned: {step:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (other_identity, other_cert, other_key) = env.pki.other_workers[0].clone();
    let config = env.write_worker_config_at("other", &other_cert, &other_key, env.grpc_addr);
    let other = env.start_worker_with(&config, "other");

    let ticket = env.admin.wait_for_plan(&ticket.id, WAIT).await.unwrap();
    let write = env.admin.wait_for_plan(&write.id, WAIT).await.unwrap();
    lost.kill();

    assert_eq!(
        ticket.status,
        PlanStatus::Succeeded,
        "{ticket:#?}\n{}",
        other.output()
    );
    assert_eq!(
        ticket.steps[0].worker.as_deref(),
        Some(other_identity.as_str())
    );
    assert_eq!(tickets_titled(&env.api, "moved"), 1);
    let step = &write.steps[0];
    assert_eq!(step.status, StepStatus::OutcomeUnknown, "{write:#?}");
    let writes = requests_to(&env.api, "/slow/30000");
    assert_eq!(
        writes, 1,
        "the write that may have happened was not repeated"
    );
}
