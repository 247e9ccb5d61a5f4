//! Certificate hot rotation on both ends. The worker and the orchestrator
//! poll their TLS files (every 200 ms here); both certificates are renewed
//! with `certs-tool renew` (library) while 200 non-idempotent tasks flow,
//! and while one 4-second call is surely in flight at the worker's
//! roll-over. Afterwards every task ran exactly once at the internal API, every plan
//! succeeded with one result per task, the orchestrator saw the worker's
//! new serial and the worker saw the orchestrator's. A second test writes
//! broken and mismatched files: they are refused with a warning naming the
//! file, and the old pair keeps working.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use certs_tool::CertificateAuthority;
use common::{Env, Options, WAIT};
use orchestrator_mock::api::PlanStatus;
use private_worker_tests::procs::Process;
use serde_json::json;

const PLANS: usize = 50;
/// Steps per plan: a ticket, a slow write, a ticket, a slow write.
const STEPS: usize = 4;
const RELOAD: Duration = Duration::from_millis(200);
/// A call that lasts through the worker's roll-over (twenty polls).
const IN_FLIGHT_MS: u64 = 4000;

/// The intermediate CA of the test PKI (it signed both leaves).
fn intermediate(env: &Env) -> CertificateAuthority {
    let dir = env.path("pki");
    CertificateAuthority::from_pem(
        &std::fs::read_to_string(dir.join("intermediate.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("intermediate.key")).unwrap(),
    )
    .unwrap()
}

fn serial_of(cert: &Path) -> String {
    private_worker_identity::inspect_pem(&std::fs::read_to_string(cert).unwrap()).unwrap()[0]
        .serial
        .clone()
}

/// Starts the worker with its TLS files polled every [`RELOAD`].
fn start_worker(env: &Env) -> Process {
    let config = env.write_worker_config(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        private_worker_tests::pki::ORCHESTRATOR_NAME,
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[tls]\n",
        &format!("[tls]\nreload_interval = \"{}ms\"\n", RELOAD.as_millis()),
    );
    assert!(text.contains("reload_interval"), "{text}");
    std::fs::write(&config, text).unwrap();
    env.start_worker_with(&config, "worker")
}

async fn env_with_fast_reload() -> Env {
    Env::start(Options {
        heartbeat: Some(Duration::from_secs(1)),
        lease_timeout: Some(Duration::from_secs(20)),
        tls_reload: Some(orchestrator_mock::tls::RotationSettings {
            reload_interval: RELOAD,
            expiry_warning: orchestrator_mock::tls::DEFAULT_EXPIRY_WARNING,
        }),
        ..Options::default()
    })
    .await
}

/// Waits until a line of the worker's log contains every one of `needles`.
async fn wait_for_log_line(worker: &Process, needles: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let output = worker.output();
        if let Some(line) = output
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line.to_string();
        }
        assert!(
            start.elapsed() < WAIT,
            "no worker log line with {needles:?}:\n{output}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the orchestrator lists the worker's session with `serial`.
async fn wait_for_worker_serial(env: &Env, serial: &str) {
    let start = Instant::now();
    loop {
        let workers = env.admin.workers().await.unwrap();
        if workers
            .iter()
            .any(|w| w.certificate_serial.as_deref() == Some(serial))
        {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "the orchestrator never saw the worker's serial {serial}: {workers:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many requests the internal API received per `Idempotency-Key` (the
/// task id).
fn calls_per_task_id(env: &Env) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for request in env.api.requests() {
        let key = request
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("a request without Idempotency-Key: {request:?}"));
        *calls.entry(key).or_insert(0) += 1;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_both_certificates_while_200_tasks_flow_loses_and_repeats_nothing() {
    let env = env_with_fast_reload().await;
    let worker = start_worker(&env);
    env.wait_connected(&env.pki.worker_identity).await;
    let old_worker_serial = serial_of(&env.pki.worker_cert);
    let old_orchestrator_serial = serial_of(&env.pki.orchestrator_cert);
    wait_for_worker_serial(&env, &old_worker_serial).await;
    wait_for_log_line(&worker, &["orchestrator_serial", &old_orchestrator_serial]).await;

    // Plans go in at a steady pace; the rotations happen while they run.
    let submitting = tokio::spawn({
        let admin = env.admin.clone();
        async move {
            let mut ids = Vec::with_capacity(PLANS);
            for p in 0..PLANS {
                let steps: Vec<(&str, serde_json::Value)> = (0..STEPS)
                    .map(|s| {
                        if s % 2 == 0 {
                            (
                                "crm.create_ticket",
                                json!({"title": format!("rot-{p}-{s}")}),
                            )
                        } else {
                            ("diag.slow_write", json!({"ms": 150}))
                        }
                    })
                    .collect();
                let plan = admin
                    .submit_plan(&common::plan_request(&steps))
                    .await
                    .unwrap();
                admin.approve(&plan.id).await.unwrap();
                ids.push(plan.id);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            ids
        }
    });

    // Wait until work is in flight, then rotate the orchestrator's server
    // certificate, then the worker's.
    let start = Instant::now();
    while env.api.requests().len() < 20 {
        assert!(start.elapsed() < WAIT, "the tasks never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ca = intermediate(&env);
    let orchestrator = certs_tool::renew::renew_files(
        &env.pki.orchestrator_cert,
        &env.pki.orchestrator_key,
        &ca,
        7,
    )
    .unwrap();
    assert_eq!(orchestrator.old_serial, old_orchestrator_serial);
    let start = Instant::now();
    while env
        .orchestrator
        .as_ref()
        .unwrap()
        .server_tls()
        .certificate()
        .serial
        != orchestrator.new_serial
    {
        assert!(
            start.elapsed() < WAIT,
            "the orchestrator never took its new certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One call is surely in flight when the worker rolls over: it takes
    // far longer than a poll.
    let in_flight = env
        .submit(&[("diag.slow_write", json!({"ms": IN_FLIGHT_MS}))])
        .await;
    env.admin.approve(&in_flight.id).await.unwrap();
    let start = Instant::now();
    while common::requests_to(&env.api, &format!("/slow/{IN_FLIGHT_MS}")) == 0 {
        assert!(start.elapsed() < WAIT, "the long call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls_before_worker_rotation = env.api.requests().len();
    let renewed =
        certs_tool::renew::renew_files(&env.pki.worker_cert, &env.pki.worker_key, &ca, 7).unwrap();
    assert_eq!(renewed.old_serial, old_worker_serial);
    assert_ne!(renewed.new_serial, old_worker_serial);

    // The worker takes it, rolls its stream over, and both ends see the
    // other's new serial on the new connection.
    wait_for_log_line(
        &worker,
        &[&format!(
            "certificate rotated: serial {old_worker_serial} -> {}, rolling the stream over",
            renewed.new_serial
        )],
    )
    .await;
    assert!(
        !env.admin
            .plan(&in_flight.id)
            .await
            .unwrap()
            .status
            .is_finished(),
        "the long call ended before the roll-over: nothing was in flight"
    );
    wait_for_worker_serial(&env, &renewed.new_serial).await;
    wait_for_log_line(&worker, &["orchestrator_serial", &orchestrator.new_serial]).await;

    let mut ids = submitting.await.unwrap();
    ids.push(in_flight.id.clone());
    let mut pending = ids.clone();
    let start = Instant::now();
    while !pending.is_empty() {
        assert!(
            start.elapsed() < WAIT * 4,
            "{} plans never finished\n{}",
            pending.len(),
            worker.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut still = Vec::new();
        for id in pending {
            if !env.admin.plan(&id).await.unwrap().status.is_finished() {
                still.push(id);
            }
        }
        pending = still;
    }
    let mut task_ids = Vec::with_capacity(PLANS * STEPS + 1);
    for id in &ids {
        let plan = env.admin.plan(id).await.unwrap();
        assert_eq!(
            plan.status,
            PlanStatus::Succeeded,
            "{plan:#?}\n{}",
            worker.output()
        );
        let results = env.admin.results(id).await.unwrap();
        assert_eq!(
            results.len(),
            plan.steps.len(),
            "one stored result per task: {results:#?}"
        );
        task_ids.extend(plan.steps.iter().map(|s| s.task_id.clone()));
    }
    let calls = calls_per_task_id(&env);
    let lost: Vec<_> = task_ids
        .iter()
        .filter(|t| !calls.contains_key(*t))
        .collect();
    let repeated: BTreeMap<_, _> = calls.iter().filter(|(_, n)| **n != 1).collect();
    assert_eq!(task_ids.len(), PLANS * STEPS + 1);
    assert!(lost.is_empty(), "tasks never called: {lost:?}");
    assert!(
        repeated.is_empty(),
        "tasks called more than once: {repeated:?}"
    );
    assert_eq!(calls.len(), PLANS * STEPS + 1, "calls for unknown task ids");
    assert!(
        calls_before_worker_rotation < PLANS * STEPS + 1,
        "the worker's rotation came after the work was done: nothing was in flight"
    );
    eprintln!(
        "{} tasks, each called once; worker rotated after {calls_before_worker_rotation} calls",
        PLANS * STEPS + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_or_mismatched_new_files_are_refused_with_a_warning_and_the_old_pair_keeps_working()
{
    let env = env_with_fast_reload().await;
    let worker = start_worker(&env);
    env.wait_connected(&env.pki.worker_identity).await;
    let old_serial = serial_of(&env.pki.worker_cert);
    let good_cert = std::fs::read_to_string(&env.pki.worker_cert).unwrap();
    let cert_name = env.pki.worker_cert.display().to_string();

    // A broken certificate file: refused, named, and the stream stays.
    std::fs::write(
        &env.pki.worker_cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    let warning = wait_for_log_line(&worker, &["cannot be used", &cert_name]).await;
    assert!(warning.contains("WARN"), "{warning}");
    // A certificate whose key is not (yet) in place: refused as a mismatch.
    let other = intermediate(&env)
        .issue_worker(&certs_tool::WorkerCertRequest {
            identity: env.pki.worker_identity.clone(),
            validity_days: 7,
        })
        .unwrap();
    std::fs::write(&env.pki.worker_cert, &other.chain_pem).unwrap();
    wait_for_log_line(&worker, &["does not match the certificate", &cert_name]).await;

    // Each change is warned about once, not at every poll.
    tokio::time::sleep(RELOAD * 5).await;
    let output = worker.output();
    assert_eq!(
        output.matches("does not match the certificate").count(),
        1,
        "{output}"
    );
    assert!(!output.contains("rolling the stream over"), "{output}");

    // The old pair still works: a plan runs on the stream of the old
    // certificate, and the orchestrator still sees the old serial.
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "still the old pair"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{}", worker.output());
    let workers = env.admin.workers().await.unwrap();
    assert_eq!(
        workers[0].certificate_serial.as_deref(),
        Some(old_serial.as_str())
    );

    // Putting the good file back is not a rotation (same content as in use).
    std::fs::write(&env.pki.worker_cert, good_cert).unwrap();
    tokio::time::sleep(RELOAD * 5).await;
    assert!(!worker.output().contains("rolling the stream over"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_worker_certificate_serial_and_expiry() {
    let env = Env::start(Options::default()).await;
    let config = env.write_worker_config(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        private_worker_tests::pki::ORCHESTRATOR_NAME,
    );
    let output = std::process::Command::new(private_worker_tests::procs::binary("private-worker"))
        .args(["--config", config.to_str().unwrap(), "--check"])
        .env(private_worker_tests::catalog::TOKEN_ENV, &env.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let info = &private_worker_identity::inspect_pem(
        &std::fs::read_to_string(&env.pki.worker_cert).unwrap(),
    )
    .unwrap()[0];
    let line = text
        .lines()
        .find(|l| l.contains("tls: certificate"))
        .unwrap_or_else(|| panic!("no tls line:\n{text}"));
    assert!(line.starts_with("ok"), "{line}");
    assert!(line.contains(&format!("serial {}", info.serial)), "{line}");
    assert!(
        line.contains(&format!("not_after {}", info.not_after)),
        "{line}"
    );
    // The test PKI lives 7 days: inside the default 14-day warning window.
    assert!(line.contains("within tls.expiry_warning"), "{line}");
}
