//! Chaos: two workers reach the orchestrator through a proxy that cuts and
//! stalls their connections at random while 1,000 non-idempotent tasks
//! flow. Afterwards every task has exactly one final result, none is
//! lost, and the internal API counted exactly one execution per task.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Options, WAIT, tickets_titled};
use orchestrator_mock::api::PlanStatus;
use private_worker_tests::proxy::CuttableProxy;
use rand::Rng;
use serde_json::json;

const PLANS: usize = 250;
const STEPS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_through_random_cuts_and_stalls_each_run_once_and_each_have_one_result() {
    let env = Env::start(Options {
        extra_workers: 1,
        heartbeat: Some(Duration::from_secs(1)),
        // Stalls last up to 2.5 s: the worker notices a dead stream after
        // three silent heartbeats, well before its lease lapses.
        lease_timeout: Some(Duration::from_secs(20)),
        ..Options::default()
    })
    .await;
    let proxy = CuttableProxy::start(env.grpc_addr).await.unwrap();
    let first = env.write_worker_config_at(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        proxy.addr(),
    );
    let (_, cert, key) = env.pki.other_workers[0].clone();
    let second = env.write_worker_config_at("worker-2", &cert, &key, proxy.addr());
    let workers = [
        env.start_worker_with(&first, "worker"),
        env.start_worker_with(&second, "worker-2"),
    ];

    // The chaos runs from before the first plan until the last one ends.
    let proxy = std::sync::Arc::new(proxy);
    let done = tokio_util::sync::CancellationToken::new();
    let chaos = tokio::spawn({
        let (proxy, done) = (proxy.clone(), done.clone());
        async move {
            let (mut cuts, mut stalls) = (0u32, 0u32);
            while !done.is_cancelled() {
                let (pause, stall_for, cut) = {
                    let mut rng = rand::rng();
                    (
                        Duration::from_millis(rng.random_range(50..400)),
                        Duration::from_millis(rng.random_range(200..2500)),
                        rng.random_bool(0.6),
                    )
                };
                tokio::time::sleep(pause).await;
                if cut {
                    proxy.cut_all();
                    cuts += 1;
                } else {
                    proxy.stall();
                    tokio::time::sleep(stall_for).await;
                    proxy.resume();
                    stalls += 1;
                }
            }
            (cuts, stalls)
        }
    });

    let start = Instant::now();
    let mut ids = Vec::with_capacity(PLANS);
    for p in 0..PLANS {
        let steps: Vec<(&str, serde_json::Value)> = (0..STEPS)
            .map(|s| {
                (
                    "crm.create_ticket",
                    json!({"title": format!("chaos-{p}-{s}")}),
                )
            })
            .collect();
        let plan = env.submit(&steps).await;
        env.admin.approve(&plan.id).await.unwrap();
        ids.push(plan.id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pending = ids.clone();
    while !pending.is_empty() {
        assert!(
            start.elapsed() < WAIT * 8,
            "{} plans never finished\n{}",
            pending.len(),
            workers[0].output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for id in pending {
            if !env.admin.plan(&id).await.unwrap().status.is_finished() {
                still.push(id);
            }
        }
        pending = still;
    }
    done.cancel();
    let (cuts, stalls) = chaos.await.unwrap();
    eprintln!(
        "{} tasks in {:?} through {cuts} cuts and {stalls} stalls; {} connections",
        PLANS * STEPS,
        start.elapsed(),
        proxy.connections_accepted()
    );
    assert!(cuts + stalls >= 5, "too little chaos to mean anything");
    for id in &ids {
        let plan = env.admin.plan(id).await.unwrap();
        assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
        let results = env.admin.results(id).await.unwrap();
        assert_eq!(
            results.len(),
            STEPS,
            "exactly one stored result per task: {results:#?}"
        );
    }
    let mut counts = std::collections::BTreeMap::new();
    for p in 0..PLANS {
        for s in 0..STEPS {
            let n = tickets_titled(&env.api, &format!("chaos-{p}-{s}"));
            if n != 1 {
                counts.insert(format!("chaos-{p}-{s}"), n);
            }
        }
    }
    assert!(
        counts.is_empty(),
        "tasks that did not run exactly once: {counts:?}"
    );
}
