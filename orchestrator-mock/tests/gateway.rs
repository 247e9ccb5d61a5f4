//! The orchestrator in process, over real sockets and mutual TLS, driven by
//! a hand-written worker (a tonic client) so each protocol rule can be
//! checked message by message. PKI is generated per test with the shared test PKI.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::{schema_one, schema_two};
use orchestrator_mock::api::{PlanRequest, PlanStatus, StepRequest, StepStatus};
use orchestrator_mock::client::AdminClient;
use orchestrator_mock::tokens::Role;
use orchestrator_mock::{Config, OrchestratorHandle};
use private_worker_identity::test_support::TestCa;
use private_worker_proto::v1 as pb;
use private_worker_proto::v1::orchestrator_message::Kind as Down;
use private_worker_proto::v1::worker_message::Kind as Up;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const IDENTITY: &str = "spiffe://test.example/worker/w1";

struct Env {
    dir: tempfile::TempDir,
    ca: TestCa,
    handle: Option<OrchestratorHandle>,
    admin: AdminClient,
    config: Config,
}

impl Env {
    async fn start() -> Env {
        Env::start_with(|_| {}).await
    }

    /// Starts after `prepare` ran on the directory (which holds `data/`).
    async fn start_with(prepare: impl FnOnce(&Path)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (ca, text) = common::write_setup(dir.path());
        prepare(dir.path());
        let config = Config::from_toml_str(&text, dir.path()).unwrap();
        let handle = orchestrator_mock::spawn(config.clone()).await.unwrap();
        let admin = handle.admin_client("test-harness", &Role::ALL).unwrap();
        Env {
            dir,
            ca,
            handle: Some(handle),
            admin,
            config,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().unwrap().grpc_addr()
    }

    async fn tls(
        &self,
        cert: &str,
        key: &str,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        common::connect_as_worker(&self.ca, self.addr(), cert, key).await
    }

    /// An HTTP/2 channel over one mTLS connection as a worker with
    /// `cert`/`key`.
    async fn channel(&self, cert: &str, key: &str) -> Result<tonic::transport::Channel, String> {
        common::channel_over(self.tls(cert, key).await?, self.addr()).await
    }

    /// Opens a session stream as a worker with `cert`/`key`.
    async fn session(&self, cert: &str, key: &str) -> Result<Worker, String> {
        let channel = self.channel(cert, key).await?;
        let mut client = pb::worker_gateway_client::WorkerGatewayClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        // Polled lazily by `Worker::next`: the request body streams while
        // the response headers are awaited.
        let pending: SessionFuture = Box::pin(async move {
            client
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        Ok(Worker {
            tx,
            pending: Some(pending),
            inbound: None,
        })
    }
}

type SessionFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    tonic::Response<tonic::Streaming<pb::OrchestratorMessage>>,
                    tonic::Status,
                >,
            > + Send,
    >,
>;

struct Worker {
    tx: mpsc::Sender<pb::WorkerMessage>,
    pending: Option<SessionFuture>,
    inbound: Option<tonic::Streaming<pb::OrchestratorMessage>>,
}

impl Worker {
    async fn send(&self, kind: Up) {
        self.tx
            .send(pb::WorkerMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// The next message other than a heartbeat, or the stream's status.
    async fn next(&mut self) -> Result<Option<Down>, tonic::Status> {
        if let Some(pending) = self.pending.take() {
            self.inbound = Some(
                tokio::time::timeout(WAIT, pending)
                    .await
                    .expect("no response headers")?
                    .into_inner(),
            );
        }
        let inbound = self.inbound.as_mut().unwrap();
        loop {
            let message = tokio::time::timeout(WAIT, inbound.message())
                .await
                .expect("nothing received")?;
            match message.and_then(|m| m.kind) {
                Some(Down::Heartbeat(_)) => continue,
                other => return Ok(other),
            }
        }
    }

    async fn expect_assignment(&mut self) -> pb::Assignment {
        match self.next().await {
            Ok(Some(Down::Assignment(a))) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    async fn expect_ack(&mut self) -> pb::TaskRef {
        match self.next().await {
            Ok(Some(Down::ResultAck(ack))) => ack.task.unwrap(),
            other => panic!("expected a result ack, got {other:?}"),
        }
    }

    /// A result's acknowledgement and the assignment of the step its
    /// success queued, in whichever order they come: each waits only for
    /// its own state change to be durable.
    async fn expect_ack_and_assignment(&mut self) -> (pb::TaskRef, pb::Assignment) {
        let (mut ack, mut assignment) = (None, None);
        while ack.is_none() || assignment.is_none() {
            match self.next().await {
                Ok(Some(Down::ResultAck(a))) if ack.is_none() => ack = a.task,
                Ok(Some(Down::Assignment(a))) if assignment.is_none() => assignment = Some(a),
                other => panic!("expected an ack and an assignment, got {other:?}"),
            }
        }
        (ack.unwrap(), assignment.unwrap())
    }
}

fn hello(max_in_flight: u32) -> Up {
    Up::Hello(pb::Hello {
        worker_version: "hand-written test worker".into(),
        manifest: vec![
            pb::ManifestEntry {
                name: "crm.create_ticket".into(),
                version: "1".into(),
                input_schema_sha256: orchestrator_mock::canonical_sha256(&schema_one()),
            },
            pb::ManifestEntry {
                name: "crm.get_ticket".into(),
                version: "1".into(),
                input_schema_sha256: orchestrator_mock::canonical_sha256(&schema_two()),
            },
            pb::ManifestEntry {
                name: "shell.exec".into(),
                version: "1".into(),
                input_schema_sha256: "00".into(),
            },
        ],
        max_in_flight,
        pending_results: vec![],
        instance_id: "instance-1".into(),
        running: vec![],
    })
}

fn result_for(a: &pb::Assignment, outcome: pb::Outcome, output: Value) -> Up {
    let task = pb::TaskRef {
        task_id: a.task_id.clone(),
        attempt: a.attempt,
    };
    Up::Result(pb::TaskResult {
        task: Some(task),
        outcome: outcome as i32,
        output_json: output.to_string(),
        error_code: String::new(),
        error_message: String::new(),
        audit: Some(pb::AuditRecord {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            plan_id: a.plan_id.clone(),
            task_name: a.task_name.clone(),
            task_version: a.task_version.clone(),
            inputs_json: a.inputs_json.clone(),
            output_json: output.to_string(),
            received_at: Some(std::time::SystemTime::now().into()),
            started_at: Some(std::time::SystemTime::now().into()),
            finished_at: Some(std::time::SystemTime::now().into()),
            outcome: outcome as i32,
            error_code: String::new(),
            error_message: String::new(),
            // What the worker claims is kept apart from what its certificate says.
            worker_identity: "spiffe://test.example/worker/someone-else".into(),
            sequence: 1,
            prev_hash: "0".repeat(64),
            record_hash: "ab".repeat(32),
        }),
    })
}

fn plan(steps: &[(&str, Value)]) -> PlanRequest {
    PlanRequest {
        name: Some("test".into()),
        steps: steps
            .iter()
            .map(|(task, inputs)| StepRequest {
                task: task.to_string(),
                version: None,
                inputs: inputs.clone(),
            })
            .collect(),
    }
}

fn read_tree(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path: PathBuf = entry.path();
        out.extend(std::fs::read(&path).unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_a_plan_in_order_within_credit_and_stores_a_duplicate_result_once() {
    let env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker.send(hello(1)).await;
    let welcome = match worker.next().await {
        Ok(Some(Down::Welcome(w))) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert_eq!(welcome.worker_identity, IDENTITY);
    assert_eq!(welcome.heartbeat_interval.unwrap().seconds, 5);
    let problems: Vec<&str> = welcome
        .manifest_problems
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        problems,
        ["shell.exec"],
        "only the unregistered entry is a problem"
    );

    let workers = env.admin.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].identity, IDENTITY);
    assert_eq!(workers[0].credit, 1);

    let submitted = env
        .admin
        .submit_plan(&plan(&[
            ("crm.create_ticket", json!({"title": "first"})),
            ("crm.get_ticket", json!({"id": "T-1"})),
        ]))
        .await
        .unwrap();
    assert_eq!(submitted.status, PlanStatus::PendingApproval);
    env.admin.approve(&submitted.id).await.unwrap();

    let first = worker.expect_assignment().await;
    assert_eq!(
        (first.task_name.as_str(), first.attempt, first.step_index),
        ("crm.create_ticket", 1, 0)
    );
    assert_eq!(
        serde_json::from_str::<Value>(&first.inputs_json).unwrap(),
        json!({"title": "first"})
    );
    assert!(!first.idempotent);
    worker
        .send(Up::Accept(pb::Accept {
            task: Some(pb::TaskRef {
                task_id: first.task_id.clone(),
                attempt: 1,
            }),
        }))
        .await;
    worker
        .send(result_for(
            &first,
            pb::Outcome::Succeeded,
            json!({"status": 201}),
        ))
        .await;
    worker
        .send(result_for(
            &first,
            pb::Outcome::Succeeded,
            json!({"status": 201}),
        ))
        .await;
    assert_eq!(worker.expect_ack().await.task_id, first.task_id);
    assert_eq!(
        worker.expect_ack().await.task_id,
        first.task_id,
        "a duplicate is acknowledged again"
    );

    // Step 1 is queued, but the worker has no credit left: nothing is sent
    // until it grants more.
    let view = env.admin.plan(&submitted.id).await.unwrap();
    assert_eq!(view.status, PlanStatus::Running);
    assert_eq!(view.steps[0].status, StepStatus::Succeeded);
    assert_eq!(view.steps[1].status, StepStatus::Queued);
    assert_eq!(env.admin.workers().await.unwrap()[0].credit, 0);
    worker.send(Up::Credit(pb::Credit { grant: 1 })).await;
    let second = worker.expect_assignment().await;
    assert_eq!(
        (second.task_name.as_str(), second.step_index),
        ("crm.get_ticket", 1)
    );
    assert!(second.idempotent);
    worker
        .send(result_for(
            &second,
            pb::Outcome::Succeeded,
            json!({"status": 200}),
        ))
        .await;
    worker.expect_ack().await;

    let done = env.admin.wait_for_plan(&submitted.id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded);
    assert_eq!(done.steps[1].output, Some(json!({"status": 200})));
    assert_eq!(done.steps[1].worker.as_deref(), Some(IDENTITY));

    let results = env.admin.results(&submitted.id).await.unwrap();
    assert_eq!(results.len(), 2, "the duplicate was not stored twice");
    let audit = env.admin.audit(&submitted.id).await.unwrap();
    assert_eq!(audit.len(), 2);
    for record in &audit {
        assert_eq!(
            record.worker_identity, IDENTITY,
            "identity comes from the certificate"
        );
        assert_eq!(
            record.claimed_worker_identity,
            "spiffe://test.example/worker/someone-else"
        );
        assert_eq!(record.outcome, "succeeded");
    }
    assert_eq!(audit[0].inputs, json!({"title": "first"}));
    let lines = std::fs::read_to_string(env.config.data_dir.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);

    // The wire capture holds what the worker sent, decrypted.
    let wire = read_tree(&env.dir.path().join("wire"));
    let needle = first.task_id.as_bytes();
    assert!(
        wire.windows(needle.len()).any(|w| w == needle),
        "capture misses the task id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_first_message_is_not_hello_is_refused_with_invalid_argument() {
    let env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker.send(Up::Credit(pb::Credit { grant: 5 })).await;
    let status = worker.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(env.admin.workers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_drain_to_every_session_and_frees_the_port() {
    let mut env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker.send(hello(4)).await;
    assert!(matches!(worker.next().await, Ok(Some(Down::Welcome(_)))));
    let addr = env.addr();
    let handle = env.handle.take().unwrap();
    let stopping = tokio::spawn(handle.shutdown());
    match worker.next().await {
        Ok(Some(Down::Drain(d))) => assert!(d.reason.contains("shutting down"), "{d:?}"),
        other => panic!("expected Drain, got {other:?}"),
    }
    // Nothing in flight: the stream ends with the contract's status, never OK.
    let status = worker.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown hung")
        .unwrap();
    // The same address can be bound again at once (restart in place).
    let mut config = env.config.clone();
    config.grpc_listen = addr;
    let restarted = orchestrator_mock::spawn(config).await.unwrap();
    assert_eq!(restarted.grpc_addr(), addr);
    restarted.shutdown().await;
}

async fn h2_answer(
    stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
) -> Result<usize, String> {
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Err("closed".into()),
        // An HTTP/2 server opens with a SETTINGS frame (type 4 at byte 3);
        // anything else (e.g. a TLS alert record, 0x15) is not an answer.
        Ok(Ok(n)) if n >= 9 && buf[3] == 0x04 => Ok(n),
        Ok(Ok(n)) => Err(format!("not HTTP/2: {:?}", &buf[..n])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_plaintext_foreign_certificates_and_certificates_without_client_auth() {
    let env = Env::start().await;

    // Positive control: our own worker certificate gets an HTTP/2 answer.
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut good = env.tls(&cert, &key).await.unwrap();
    assert!(h2_answer(&mut good).await.is_ok());

    let mut plain = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    let answer = h2_answer(&mut plain).await;
    assert!(
        answer.is_err(),
        "plaintext got an HTTP/2 answer: {answer:?}"
    );

    let other = TestCa::new("other root");
    let (cert, key) = other.worker(IDENTITY).into_pem();
    let refused = match env.tls(&cert, &key).await {
        Err(e) => Err(e),
        Ok(mut s) => h2_answer(&mut s).await,
    };
    assert!(refused.is_err(), "a foreign certificate was accepted");

    let (cert, key) = env.ca.worker_without_client_auth(IDENTITY).into_pem();
    let refused = match env.tls(&cert, &key).await {
        Err(e) => Err(e),
        Ok(mut s) => h2_answer(&mut s).await,
    };
    assert!(
        refused.is_err(),
        "a certificate without clientAuth was accepted"
    );
    assert!(env.admin.workers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reports_problems_conflicts_unknown_plans_and_bad_json() {
    let env = Env::start().await;
    let err = env
        .admin
        .submit_plan(&plan(&[
            ("crm.create_ticket", json!({"title": "", "priority": 9})),
            ("crm.launch_missiles", json!({})),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    let problems = err.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.step == 0 && p.task == "crm.create_ticket" && p.path == "/title"),
        "{err}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.step == 0 && p.path == "/priority"),
        "{err}"
    );
    assert!(
        problems.iter().any(|p| p.step == 1
            && p.task == "crm.launch_missiles"
            && p.message.contains("crm.get_ticket")),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("step 0 (crm.create_ticket) at /title"),
        "{err}"
    );

    let missing = env.admin.plan("no-such-plan").await.unwrap_err();
    assert_eq!(missing.status(), Some(404));

    let p = env
        .admin
        .submit_plan(&plan(&[("crm.get_ticket", json!({}))]))
        .await
        .unwrap();
    let rejected = env.admin.reject(&p.id, "not today").await.unwrap();
    assert_eq!(rejected.status, PlanStatus::Rejected);
    let again = env.admin.approve(&p.id).await.unwrap_err();
    assert_eq!(again.status(), Some(409));
    assert!(again.to_string().contains("rejected"), "{again}");

    let raw = env
        .admin
        .request(reqwest::Method::POST, "/v1/plans")
        .header("content-type", "application/json")
        .body("{\"steps\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");

    let tasks = env.admin.tasks().await.unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(
        tasks[0].input_schema_sha256,
        orchestrator_mock::canonical_sha256(&schema_one())
    );
}

fn hello_holding(instance: &str, running: Vec<pb::TaskRef>) -> Up {
    match hello(4) {
        Up::Hello(mut h) => {
            h.instance_id = instance.into();
            h.running = running;
            Up::Hello(h)
        }
        _ => unreachable!(),
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_restarted_on_the_same_data_dir_continues_its_plans_and_settles_held_attempts()
 {
    let mut env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker.send(hello(4)).await;
    assert!(matches!(worker.next().await, Ok(Some(Down::Welcome(_)))));
    let submitted = env
        .admin
        .submit_plan(&plan(&[
            ("crm.create_ticket", json!({"title": "a"})),
            ("crm.get_ticket", json!({"id": "1"})),
        ]))
        .await
        .unwrap();
    let waiting = env
        .admin
        .submit_plan(&plan(&[("crm.get_ticket", json!({}))]))
        .await
        .unwrap();
    env.admin.approve(&submitted.id).await.unwrap();
    let first = worker.expect_assignment().await;
    worker
        .send(Up::Accept(pb::Accept {
            task: Some(pb::TaskRef {
                task_id: first.task_id.clone(),
                attempt: first.attempt,
            }),
        }))
        .await;
    wait_until("the accept is recorded", || async {
        env.admin.plan(&submitted.id).await.unwrap().steps[0].attempts[0].accepted
    })
    .await;
    // The worker's connection drops, then the orchestrator stops.
    drop(worker);
    env.handle.take().unwrap().shutdown().await;

    let restarted = orchestrator_mock::spawn(env.config.clone()).await.unwrap();
    let admin = restarted.admin_client("test-harness", &Role::ALL).unwrap();
    let view = admin.plan(&submitted.id).await.unwrap();
    assert_eq!(view.status, PlanStatus::Running);
    assert_eq!(view.steps[0].status, StepStatus::Assigned);
    let attempt = &view.steps[0].attempts[0];
    assert_eq!(
        (attempt.worker.as_str(), attempt.accepted),
        (IDENTITY, true)
    );
    assert!(
        attempt.lease_expires_at.is_some(),
        "leased from the restart"
    );
    assert_eq!(
        admin.plan(&waiting.id).await.unwrap().status,
        PlanStatus::PendingApproval
    );
    let identities = admin.identities().await.unwrap();
    assert_eq!(identities.len(), 1);
    assert!(!identities[0].connected);
    assert_eq!(identities[0].held[0].task_id, first.task_id);

    // The worker dials back, still running the attempt, and reports it.
    env.handle = Some(restarted);
    let mut worker = env.session(&cert, &key).await.unwrap();
    let held = pb::TaskRef {
        task_id: first.task_id.clone(),
        attempt: 1,
    };
    worker
        .send(hello_holding("instance-1", vec![held.clone()]))
        .await;
    assert!(matches!(worker.next().await, Ok(Some(Down::Welcome(_)))));
    worker
        .send(result_for(
            &first,
            pb::Outcome::Succeeded,
            json!({"id": "T-1"}),
        ))
        .await;
    let (ack, second) = worker.expect_ack_and_assignment().await;
    assert_eq!(ack, held);
    assert_eq!(second.task_name, "crm.get_ticket");
    worker
        .send(result_for(&second, pb::Outcome::Succeeded, json!({})))
        .await;
    worker.expect_ack().await;
    let done = admin.wait_for_plan(&submitted.id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded);
    assert_eq!(
        done.steps[0].attempts.len(),
        1,
        "the held attempt was not repeated"
    );
    env.handle.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_stream_of_the_same_identity_ends_the_older_one_with_aborted() {
    let env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut old = env.session(&cert, &key).await.unwrap();
    old.send(hello(4)).await;
    assert!(matches!(old.next().await, Ok(Some(Down::Welcome(_)))));
    let mut new = env.session(&cert, &key).await.unwrap();
    new.send(hello(4)).await;
    assert!(matches!(new.next().await, Ok(Some(Down::Welcome(_)))));
    let status = old.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("superseded"), "{status:?}");
    assert_eq!(env.admin.workers().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_cannot_be_stored_gets_result_refused_on_the_same_stream() {
    // The audit file is on a full disk.
    let env = Env::start_with(|dir| {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.join("data/audit.jsonl")).unwrap();
    })
    .await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker.send(hello(4)).await;
    assert!(matches!(worker.next().await, Ok(Some(Down::Welcome(_)))));
    let submitted = env
        .admin
        .submit_plan(&plan(&[("crm.create_ticket", json!({"title": "a"}))]))
        .await
        .unwrap();
    env.admin.approve(&submitted.id).await.unwrap();
    let a = worker.expect_assignment().await;
    for _ in 0..2 {
        worker
            .send(result_for(&a, pb::Outcome::Succeeded, json!({})))
            .await;
        match worker.next().await {
            Ok(Some(Down::ResultRefused(r))) => {
                assert_eq!(r.task.unwrap().task_id, a.task_id);
                assert_eq!(r.reason, "result store unavailable");
            }
            other => panic!("expected ResultRefused, got {other:?}"),
        }
    }
    assert_eq!(
        env.admin.plan(&submitted.id).await.unwrap().steps[0].status,
        StepStatus::Assigned,
        "an unstored result changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_breaks_the_contract_is_refused_with_invalid_argument_naming_the_field() {
    let env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker
        .send(hello_holding("bad id with spaces", vec![]))
        .await;
    let status = worker.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("Hello.instance_id"), "{status:?}");

    let mut worker = env.session(&cert, &key).await.unwrap();
    let Up::Hello(mut big) = hello(4) else {
        unreachable!()
    };
    big.manifest = (0..1025)
        .map(|i| pb::ManifestEntry {
            name: format!("t{i}"),
            version: "1".into(),
            input_schema_sha256: "0".repeat(64),
        })
        .collect();
    worker.send(Up::Hello(big)).await;
    let status = worker.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1025 entries"), "{status:?}");
    assert!(env.admin.workers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_4_mib_ends_the_stream_with_resource_exhausted_naming_the_limit() {
    let env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker.send(hello(4)).await;
    assert!(matches!(worker.next().await, Ok(Some(Down::Welcome(_)))));
    worker
        .send(Up::Draining(pb::Draining {
            reason: "x".repeat(5 * 1024 * 1024),
        }))
        .await;
    let status = worker.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4 MiB"), "{status:?}");
}

// ---------------------------------------------------------------------
// Forgeries: the mock believes nothing the contract lets it check.
// ---------------------------------------------------------------------

const OTHER: &str = "spiffe://test.example/worker/w2";

/// A result for `a` with a well-formed audit record: the right hash,
/// chained after `prev` at `sequence`, claiming `identity`. `edit` may
/// change the record before it is hashed. Returns the message and the
/// record's hash.
fn honest_result(
    a: &pb::Assignment,
    identity: &str,
    sequence: u64,
    prev: &str,
    edit: impl FnOnce(&mut private_worker_proto::audit::Record),
) -> (Up, String) {
    use private_worker_proto::audit::{Record, system_time_text};
    let now = system_time_text(std::time::SystemTime::now());
    let mut record = Record {
        task_id: a.task_id.clone(),
        attempt: a.attempt,
        plan_id: a.plan_id.clone(),
        task_name: a.task_name.clone(),
        task_version: a.task_version.clone(),
        inputs_json: a.inputs_json.clone(),
        output_json: r#"{"id":1}"#.into(),
        received_at: Some(now.clone()),
        started_at: Some(now.clone()),
        finished_at: Some(now),
        outcome: "SUCCEEDED".into(),
        error_code: String::new(),
        error_message: String::new(),
        worker_identity: identity.into(),
        sequence,
        prev_hash: prev.into(),
        record_hash: String::new(),
    };
    edit(&mut record);
    record.record_hash = record.compute_hash();
    let hash = record.record_hash.clone();
    let message = Up::Result(pb::TaskResult {
        task: Some(pb::TaskRef {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
        }),
        outcome: pb::Outcome::Succeeded as i32,
        output_json: r#"{"id":1}"#.into(),
        error_code: String::new(),
        error_message: String::new(),
        audit: Some(record.to_message()),
    });
    (message, hash)
}

async fn connected(env: &Env, identity: &str) -> Worker {
    let (cert, key) = env.ca.worker(identity).into_pem();
    let mut worker = env.session(&cert, &key).await.unwrap();
    worker.send(hello(4)).await;
    assert!(matches!(worker.next().await, Ok(Some(Down::Welcome(_)))));
    worker
}

/// Submits and approves a one-step plan; returns its id.
async fn approved_plan(env: &Env) -> String {
    let submitted = env
        .admin
        .submit_plan(&plan(&[("crm.create_ticket", json!({"title": "real"}))]))
        .await
        .unwrap();
    env.admin.approve(&submitted.id).await.unwrap();
    submitted.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_accepts_from_an_identity_that_does_not_hold_the_attempt_change_nothing() {
    let env = Env::start().await;
    let mut holder = connected(&env, IDENTITY).await;
    let plan_id = approved_plan(&env).await;
    let a = holder.expect_assignment().await;
    // The second identity connects only now, so it holds nothing.
    let mut forger = connected(&env, OTHER).await;

    // Its Accept for the holder's attempt is ignored.
    forger
        .send(Up::Accept(pb::Accept {
            task: Some(pb::TaskRef {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
            }),
        }))
        .await;
    // A forged result for the holder's task, and one for a task id that
    // does not exist but names the real plan.
    let (forged, _) = honest_result(&a, OTHER, 1, &"0".repeat(64), |r| {
        r.task_name = "crm.delete_customer".into()
    });
    forger.send(forged).await;
    assert_eq!(
        forger.expect_ack().await.task_id,
        a.task_id,
        "acknowledged, so it is forgotten"
    );
    let made_up = pb::Assignment {
        task_id: "t-made-up".into(),
        ..a.clone()
    };
    let (unknown, _) = honest_result(&made_up, OTHER, 2, &"0".repeat(64), |_| {});
    forger.send(unknown).await;
    assert_eq!(forger.expect_ack().await.task_id, "t-made-up");
    // And one naming a plan that does not exist.
    let nowhere = pb::Assignment {
        task_id: "t-nowhere".into(),
        plan_id: "plan-made-up".into(),
        ..a.clone()
    };
    let (nowhere, _) = honest_result(&nowhere, OTHER, 3, &"0".repeat(64), |_| {});
    forger.send(nowhere).await;
    forger.expect_ack().await;

    let view = env.admin.plan(&plan_id).await.unwrap();
    assert_eq!(
        view.steps[0].status,
        StepStatus::Assigned,
        "nothing applied"
    );
    assert!(
        !view.steps[0].attempts[0].accepted,
        "a foreign Accept is not applied"
    );
    assert_eq!(env.admin.results(&plan_id).await.unwrap().len(), 0);
    assert_eq!(env.admin.audit(&plan_id).await.unwrap().len(), 0);
    assert!(
        env.admin.results("plan-made-up").await.is_err(),
        "a plan id only a message named is not served"
    );
    // The forgeries are kept as evidence, with the reason, and shown apart.
    let evidence = env.admin.unattributed().await.unwrap();
    assert_eq!(evidence.results.len(), 3, "{evidence:#?}");
    assert_eq!(evidence.audit.len(), 3, "{evidence:#?}");
    let reasons: Vec<_> = evidence
        .results
        .iter()
        .filter_map(|r| r.problem.clone())
        .collect();
    assert!(
        reasons[0].contains("assigned to spiffe://test.example/worker/w1"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("no such attempt"), "{reasons:?}");
    assert!(
        evidence.audit.iter().all(|a| a.check.is_flagged()),
        "{evidence:#?}"
    );

    // The holder's own Accept and result are taken.
    holder
        .send(Up::Accept(pb::Accept {
            task: Some(pb::TaskRef {
                task_id: a.task_id.clone(),
                attempt: a.attempt,
            }),
        }))
        .await;
    let (real, _) = honest_result(&a, IDENTITY, 1, &"0".repeat(64), |_| {});
    holder.send(real).await;
    holder.expect_ack().await;
    let done = env.admin.wait_for_plan(&plan_id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded);
    assert!(done.steps[0].attempts[0].accepted);
    let results = env.admin.results(&plan_id).await.unwrap();
    assert_eq!(results.len(), 1, "only the holder's result is the plan's");
    assert_eq!(results[0].worker_identity, IDENTITY);
    let audit = env.admin.audit(&plan_id).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].check.verdict, "ok", "{:?}", audit[0].check);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_that_break_the_chain_or_contradict_the_assignment_are_flagged_with_the_reason()
 {
    let env = Env::start().await;
    let mut worker = connected(&env, IDENTITY).await;
    let genesis = "0".repeat(64);
    type Edit = fn(&mut private_worker_proto::audit::Record);
    // (what is wrong, how the record is made, the reason expected)
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "another task name",
            |r| r.task_name = "crm.delete_customer".into(),
            "task_name differs",
        ),
        (
            "other inputs",
            |r| r.inputs_json = r#"{"title":"other"}"#.into(),
            "inputs_json differs",
        ),
        (
            "another identity",
            |r| r.worker_identity = OTHER.into(),
            "worker_identity differs",
        ),
        (
            "another plan",
            |r| r.plan_id = "p-other".into(),
            "plan_id differs",
        ),
        (
            "another output than the result's",
            |r| r.output_json = "{}".into(),
            "output_json differs",
        ),
    ];
    let mut prev = genesis.clone();
    let mut sequence = 0;
    for (what, edit, reason) in cases {
        let plan_id = approved_plan(&env).await;
        let a = worker.expect_assignment().await;
        sequence += 1;
        let (message, hash) = honest_result(&a, IDENTITY, sequence, &prev, edit);
        prev = hash;
        worker.send(message).await;
        worker.expect_ack().await;
        // The slot is free again: one credit back, as the contract says.
        worker.send(Up::Credit(pb::Credit { grant: 1 })).await;
        let audit = env.admin.audit(&plan_id).await.unwrap();
        assert_eq!(audit[0].check.verdict, "flagged", "{what}");
        assert!(
            audit[0].check.problems.iter().any(|p| p.contains(reason)),
            "{what}: {:?}",
            audit[0].check.problems
        );
    }

    // Chain faults, each on an otherwise honest record.
    let mut chain_case = async |sequence: u64, prev: &str, tamper: bool| {
        let plan_id = approved_plan(&env).await;
        let a = worker.expect_assignment().await;
        let (mut message, hash) = honest_result(&a, IDENTITY, sequence, prev, |_| {});
        if tamper && let Up::Result(r) = &mut message {
            r.audit.as_mut().unwrap().record_hash = "ab".repeat(32);
        }
        worker.send(message).await;
        worker.expect_ack().await;
        // The slot is free again: one credit back, as the contract says.
        worker.send(Up::Credit(pb::Credit { grant: 1 })).await;
        let audit = env.admin.audit(&plan_id).await.unwrap();
        (audit[0].check.clone(), hash)
    };
    let (check, good) = chain_case(sequence + 1, &prev, false).await;
    assert_eq!(check.verdict, "ok", "{check:?}");
    let (check, _) = chain_case(sequence + 2, &"e".repeat(64), false).await;
    assert!(
        check.problems.iter().any(|p| p.contains("prev_hash")),
        "{check:?}"
    );
    let (check, _) = chain_case(sequence + 3, &good, true).await;
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.contains("record_hash does not match")),
        "{check:?}"
    );
    // The log started over: sequence 1 again, with another record (said
    // once; the chain then follows the new log).
    let (check, first) = chain_case(1, &genesis, false).await;
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.starts_with("the log started over")),
        "{check:?}"
    );
    let (check, _) = chain_case(2, &first, false).await;
    assert_eq!(check.verdict, "ok", "the new log is followed: {check:?}");
    // A record whose hashes are not digests (megabytes of them) is flagged.
    let (check, _) = {
        let plan_id = approved_plan(&env).await;
        let a = worker.expect_assignment().await;
        let (mut message, hash) = honest_result(&a, IDENTITY, 3, &"0".repeat(64), |_| {});
        if let Up::Result(r) = &mut message {
            r.audit.as_mut().unwrap().prev_hash = "f".repeat(1024 * 1024);
        }
        worker.send(message).await;
        worker.expect_ack().await;
        worker.send(Up::Credit(pb::Credit { grant: 1 })).await;
        (
            env.admin.audit(&plan_id).await.unwrap()[0].check.clone(),
            hash,
        )
    };
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.contains("not 64 lower-case hex")),
        "{check:?}"
    );
    // A result without any audit record is applied, with a flagged stand-in.
    let plan_id = approved_plan(&env).await;
    let a = worker.expect_assignment().await;
    let (mut message, _) = honest_result(&a, IDENTITY, 4, &"0".repeat(64), |_| {});
    if let Up::Result(r) = &mut message {
        r.audit = None;
    }
    worker.send(message).await;
    worker.expect_ack().await;
    let audit = env.admin.audit(&plan_id).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert!(
        audit[0].check.problems[0].contains("no audit record"),
        "{:?}",
        audit[0].check
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_says_hello_is_closed_with_deadline_exceeded_within_the_stated_time() {
    let env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let mut silent = env.session(&cert, &key).await.unwrap();
    let started = std::time::Instant::now();
    let limit = orchestrator_mock::gateway::HELLO_TIMEOUT * 2;
    let pending = silent.pending.take().unwrap();
    let status = match tokio::time::timeout(limit, pending)
        .await
        .expect("not closed")
    {
        Err(status) => status,
        Ok(response) => {
            let mut inbound = response.into_inner();
            match tokio::time::timeout(limit, inbound.message()).await {
                Ok(Err(status)) => status,
                other => panic!("expected the stream to end with a status, got {other:?}"),
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() >= orchestrator_mock::gateway::HELLO_TIMEOUT);
    assert!(started.elapsed() < orchestrator_mock::gateway::HELLO_TIMEOUT * 2);
}

/// Sends raw bytes as gRPC messages (whatever they hold) and reads the
/// orchestrator's messages: a client no honest worker library would be.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

type ProstCodec = tonic_prost::ProstCodec<pb::WorkerMessage, pb::OrchestratorMessage>;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::OrchestratorMessage;
    type Encoder = RawEncoder;
    type Decoder = <ProstCodec as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut ProstCodec::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_ends_the_stream_with_invalid_argument_saying_so_never_ok() {
    use prost::Message as _;
    let env = Env::start().await;
    let (cert, key) = env.ca.worker(IDENTITY).into_pem();
    let channel = env.channel(&cert, &key).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let hello = pb::WorkerMessage {
        kind: Some(hello(4)),
    }
    .encode_to_vec();
    // Field 1 (Hello), length-delimited, claiming far more bytes than follow.
    let malformed = vec![0x0a, 0xff, 0xff, 0x03, 0x01];
    let frames = tokio_stream::iter(vec![hello, malformed]);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/private_worker.v1.WorkerGateway/Session",
    );
    let response = grpc
        .streaming(tonic::Request::new(frames), path, RawCodec)
        .await
        .unwrap();
    let mut inbound = response.into_inner();
    let status = loop {
        match tokio::time::timeout(WAIT, inbound.message()).await.unwrap() {
            Ok(Some(_)) => continue, // Welcome, heartbeats
            Ok(None) => panic!("the stream ended with OK after a malformed message"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_connection_that_never_says_hello_is_closed_while_a_worker_is_served() {
    let env = Env::start().await;
    // A real worker, connected the whole time.
    let mut worker = connected(&env, IDENTITY).await;
    // An idle connection: handshake and HTTP/2 preface, then nothing.
    let (other_cert, other_key) = env.ca.worker(OTHER).into_pem();
    let mut idle = env.tls(&other_cert, &other_key).await.unwrap();
    h2_answer(&mut idle).await.unwrap();
    let started = std::time::Instant::now();
    let limit = orchestrator_mock::tls::NO_HELLO_CLOSE * 2;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // settings, pings, GOAWAY
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the idle connection is still open after {limit:?}"
    );
    assert!(started.elapsed() >= orchestrator_mock::tls::NO_HELLO_CLOSE / 2);
    // The worker was served throughout.
    let plan_id = approved_plan(&env).await;
    let a = worker.expect_assignment().await;
    let (result, _) = honest_result(&a, IDENTITY, 1, &"0".repeat(64), |_| {});
    worker.send(result).await;
    worker.expect_ack().await;
    let done = env.admin.wait_for_plan(&plan_id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded);
}
