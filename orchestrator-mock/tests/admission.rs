//! Admission of worker connections (`[admission]` in the config): the
//! orchestrator in process over real sockets and mutual TLS, PKI generated
//! per test with the shared test PKI (`private_worker_identity::test_support`), a hand-written worker (a tonic client).

use std::time::Duration;

mod common;

use common::schema_one;
use orchestrator_mock::api::{PlanRequest, PlanStatus, StepRequest};
use orchestrator_mock::client::AdminClient;
use orchestrator_mock::{Config, OrchestratorHandle};
use private_worker_identity::test_support::TestCa;
use private_worker_proto::v1 as pb;
use private_worker_proto::v1::orchestrator_message::Kind as Down;
use private_worker_proto::v1::worker_message::Kind as Up;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

struct Env {
    _dir: tempfile::TempDir,
    ca: TestCa,
    handle: OrchestratorHandle,
    admin: AdminClient,
}

impl Env {
    /// Starts with the test setup plus `extra` config text appended.
    async fn start(extra: &str) -> Env {
        Env::start_with(extra, |_, _| {}).await
    }

    /// As [`Env::start`], after `prepare` ran on the directory and CA.
    async fn start_with(extra: &str, prepare: impl FnOnce(&std::path::Path, &TestCa)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (ca, text) = common::write_setup(dir.path());
        prepare(dir.path(), &ca);
        let config = Config::from_toml_str(&format!("{text}\n{extra}"), dir.path()).unwrap();
        let handle = orchestrator_mock::spawn(config).await.unwrap();
        let admin = handle
            .admin_client("test-harness", &orchestrator_mock::tokens::Role::ALL)
            .unwrap();
        Env {
            _dir: dir,
            ca,
            handle,
            admin,
        }
    }

    /// One mTLS connection as a worker with `cert`/`key` (client side of
    /// the handshake done; the server may still close it right after).
    async fn tls(
        &self,
        cert: &str,
        key: &str,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        common::connect_as_worker(&self.ca, self.handle.grpc_addr(), cert, key).await
    }

    /// Opens a session as a worker with `cert`/`key`, says Hello and waits
    /// for the Welcome; the session stays open while the returned sender
    /// and stream live.
    async fn session(&self, cert: &str, key: &str) -> Result<Session, String> {
        let stream = self.tls(cert, key).await?;
        let channel = common::channel_over(stream, self.handle.grpc_addr()).await?;
        let mut client = pb::worker_gateway_client::WorkerGatewayClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::WorkerMessage {
            kind: Some(hello()),
        })
        .await
        .unwrap();
        let mut inbound = tokio::time::timeout(
            WAIT,
            client.session(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| "no response headers".to_string())?
        .map_err(|s| format!("session: {s}"))?
        .into_inner();
        loop {
            let message = tokio::time::timeout(WAIT, inbound.message())
                .await
                .map_err(|_| "nothing received".to_string())?
                .map_err(|s| format!("stream: {s}"))?;
            match message.and_then(|m| m.kind) {
                Some(Down::Heartbeat(_)) => continue,
                Some(Down::Welcome(welcome)) => {
                    return Ok(Session {
                        welcome,
                        tx,
                        inbound,
                    });
                }
                other => return Err(format!("expected Welcome, got {other:?}")),
            }
        }
    }
}

struct Session {
    welcome: pb::Welcome,
    tx: mpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::OrchestratorMessage>,
}

impl Session {
    async fn send(&self, kind: Up) {
        self.tx
            .send(pb::WorkerMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// The next message other than a heartbeat.
    async fn next(&mut self) -> Down {
        loop {
            let message = tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .expect("nothing received")
                .expect("stream failed");
            match message.and_then(|m| m.kind) {
                Some(Down::Heartbeat(_)) => continue,
                Some(other) => return other,
                None => panic!("stream ended"),
            }
        }
    }

    /// Runs one assignment to success, as a worker would.
    async fn run_one(&mut self) {
        let Down::Assignment(a) = self.next().await else {
            panic!("expected an assignment")
        };
        let task = pb::TaskRef {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
        };
        self.send(Up::Accept(pb::Accept {
            task: Some(task.clone()),
        }))
        .await;
        self.send(Up::Result(pb::TaskResult {
            task: Some(task),
            outcome: pb::Outcome::Succeeded as i32,
            output_json: "{}".into(),
            error_code: String::new(),
            error_message: String::new(),
            audit: None,
        }))
        .await;
        match self.next().await {
            Down::ResultAck(ack) => assert_eq!(ack.task.unwrap().task_id, a.task_id),
            other => panic!("expected a result ack, got {other:?}"),
        }
    }
}

/// Retries `session` until it opens (places are given back asynchronously,
/// when the server sees a connection close).
async fn session_eventually(env: &Env, cert: &str, key: &str) -> Session {
    let start = std::time::Instant::now();
    loop {
        match env.session(cert, key).await {
            Ok(s) => return s,
            Err(e) if start.elapsed() > WAIT => panic!("no session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn run_a_plan(env: &Env, worker: &mut Session) {
    let submitted = env
        .admin
        .submit_plan(&PlanRequest {
            name: Some("admission".into()),
            steps: vec![StepRequest {
                task: "crm.create_ticket".into(),
                version: None,
                inputs: json!({"title": "served"}),
            }],
        })
        .await
        .unwrap();
    env.admin.approve(&submitted.id).await.unwrap();
    worker.run_one().await;
    let done = env.admin.wait_for_plan(&submitted.id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded, "{done:?}");
}

fn hello() -> Up {
    Up::Hello(pb::Hello {
        worker_version: "hand-written test worker".into(),
        manifest: vec![pb::ManifestEntry {
            name: "crm.create_ticket".into(),
            version: "1".into(),
            input_schema_sha256: orchestrator_mock::canonical_sha256(&schema_one()),
        }],
        max_in_flight: 1,
        pending_results: vec![],
        instance_id: "instance-1".into(),
        running: vec![],
    })
}

/// Whether an HTTP/2 server answers on `stream` (its SETTINGS frame).
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
        Ok(Ok(n)) if n >= 9 && buf[3] == 0x04 => Ok(n),
        Ok(Ok(n)) => Err(format!("not HTTP/2: {:?}", &buf[..n])),
    }
}

const ALLOWLIST: &str = r#"
[admission]
identities = ["spiffe://test.example/worker/crm-eu-?", "spiffe://test.example/worker/ops-*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_outside_the_allowlist_cannot_open_a_session_and_one_inside_can() {
    let env = Env::start(ALLOWLIST).await;

    for (n, outside) in [
        "spiffe://test.example/worker/crm-us-1",
        "spiffe://test.example/worker/crm-eu-12",
        "spiffe://other.example/worker/crm-eu-1",
        "spiffe://test.example/workers/ops-1",
    ]
    .into_iter()
    .enumerate()
    {
        let (cert, key) = env.ca.worker(outside).into_pem();
        let refused = env.session(&cert, &key).await;
        assert!(refused.is_err(), "{outside} opened a session");
        let refused = match env.tls(&cert, &key).await {
            Err(e) => Err(e),
            Ok(mut s) => h2_answer(&mut s).await,
        };
        assert!(refused.is_err(), "{outside} got an HTTP/2 answer");
        assert_eq!(
            env.handle.admission().refused_identities(),
            2 * (n as u64 + 1)
        );
    }
    assert!(env.admin.workers().await.unwrap().is_empty());

    for inside in [
        "spiffe://test.example/worker/crm-eu-1",
        "spiffe://test.example/worker/ops-batch",
    ] {
        let (cert, key) = env.ca.worker(inside).into_pem();
        let session = env.session(&cert, &key).await.unwrap();
        assert_eq!(session.welcome.worker_identity, inside);
    }
    assert_eq!(env.handle.admission().refused_identities(), 8);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admission_rules_every_identity_of_the_ca_is_admitted() {
    let env = Env::start("").await;
    let (cert, key) = env
        .ca
        .worker("spiffe://anything.example/worker/x")
        .into_pem();
    let session = env.session(&cert, &key).await.unwrap();
    assert_eq!(
        session.welcome.worker_identity,
        "spiffe://anything.example/worker/x"
    );
    assert_eq!(env.handle.admission().refused_identities(), 0);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_allowlist_admits_no_one() {
    let env = Env::start("[admission]\nidentities = []\n").await;
    let (cert, key) = env
        .ca
        .worker("spiffe://test.example/worker/crm-eu-1")
        .into_pem();
    assert!(env.session(&cert, &key).await.is_err());
    assert_eq!(env.handle.admission().refused_identities(), 1);
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_identity_that_never_says_hello_is_capped_while_another_worker_runs_a_plan()
 {
    let env = Env::start("[admission]\nmax_connections_per_identity = 3\n").await;
    let (flood_cert, flood_key) = env
        .ca
        .worker("spiffe://test.example/worker/flood")
        .into_pem();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        match env.tls(&flood_cert, &flood_key).await {
            Err(_) => refused += 1,
            Ok(mut s) => match h2_answer(&mut s).await {
                Ok(_) => held.push(s),
                Err(_) => refused += 1,
            },
        }
    }
    assert_eq!(held.len(), 3, "the per-identity limit holds");
    assert_eq!(refused, 7);
    assert_eq!(env.handle.admission().refused_identity_limit(), 7);
    let counters = env.admin.admission().await.unwrap();
    assert_eq!(
        counters.refused_identity_limit, 7,
        "the admin API shows it: {counters:?}"
    );

    // Another identity is served meanwhile, start to finish.
    let (cert, key) = env
        .ca
        .worker("spiffe://test.example/worker/real")
        .into_pem();
    let mut real = env.session(&cert, &key).await.unwrap();
    run_a_plan(&env, &mut real).await;

    // The flood's places come back when its connections close.
    drop(held);
    let flood = session_eventually(&env, &flood_cert, &flood_key).await;
    assert_eq!(
        flood.welcome.worker_identity,
        "spiffe://test.example/worker/flood"
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_before_hello_are_closed_at_accept_and_hello_frees_a_place() {
    let env = Env::start("[admission]\nmax_connections_before_hello = 2\n").await;
    let (cert, key) = env
        .ca
        .worker("spiffe://test.example/worker/real")
        .into_pem();

    // A worker that said Hello holds no place before Hello.
    let mut real = env.session(&cert, &key).await.unwrap();
    let start = std::time::Instant::now();
    while env.handle.admission().connections_before_hello() != 0 {
        assert!(start.elapsed() < WAIT, "Hello did not free the place");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two TCP connections that never start TLS take both places ...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(
            tokio::net::TcpStream::connect(env.handle.grpc_addr())
                .await
                .unwrap(),
        );
    }
    let start = std::time::Instant::now();
    while env.handle.admission().connections_before_hello() != 2 {
        assert!(
            start.elapsed() < WAIT,
            "the silent connections hold no place"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... so a third is closed before TLS, and a new session cannot open,
    let (other_cert, other_key) = env
        .ca
        .worker("spiffe://test.example/worker/other")
        .into_pem();
    assert!(env.session(&other_cert, &other_key).await.is_err());
    assert!(env.handle.admission().refused_before_hello_limit() >= 1);
    // while the worker already in keeps being served.
    run_a_plan(&env, &mut real).await;

    drop(silent);
    let other = session_eventually(&env, &other_cert, &other_key).await;
    assert_eq!(
        other.welcome.worker_identity,
        "spiffe://test.example/worker/other"
    );
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_a_replaced_crl_takes_effect_without_restart() {
    let crl_path = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = crl_path.clone();
    let env = Env::start_with("[admission]\ncrl = \"revoked.pem\"\n", move |dir, ca| {
        let path = dir.join("revoked.pem");
        std::fs::write(&path, ca.crl(1, &[1001]).pem).unwrap();
        *slot.lock().unwrap() = Some(path);
    })
    .await;
    let path = crl_path.lock().unwrap().clone().unwrap();
    let (a_cert, a_key) = env
        .ca
        .worker_with_serial("spiffe://test.example/worker/a", 1001)
        .into_pem();
    let (b_cert, b_key) = env
        .ca
        .worker_with_serial("spiffe://test.example/worker/b", 1002)
        .into_pem();

    assert!(
        env.session(&a_cert, &a_key).await.is_err(),
        "revoked, yet admitted"
    );
    let b = env.session(&b_cert, &b_key).await.unwrap();
    assert_eq!(b.welcome.worker_identity, "spiffe://test.example/worker/b");
    drop(b);

    // Replaced (DER this time): b revoked, a no longer; no restart.
    std::fs::write(&path, env.ca.crl(2, &[1002]).der).unwrap();
    let a = session_eventually(&env, &a_cert, &a_key).await;
    assert_eq!(a.welcome.worker_identity, "spiffe://test.example/worker/a");
    assert!(env.session(&b_cert, &b_key).await.is_err(), "b was revoked");

    // A broken file keeps the last good CRL in force.
    std::fs::write(
        &path,
        b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
    )
    .unwrap();
    tokio::time::sleep(orchestrator_mock::tls::CRL_POLL * 2).await;
    assert!(env.session(&b_cert, &b_key).await.is_err(), "b was revoked");
    let a2 = env.session(&a_cert, &a_key).await.unwrap();
    assert_eq!(a2.welcome.worker_identity, "spiffe://test.example/worker/a");
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_is_closed_when_a_reloaded_crl_revokes_its_certificate() {
    let crl_path = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = crl_path.clone();
    let env = Env::start_with("[admission]\ncrl = \"revoked.pem\"\n", move |dir, ca| {
        let path = dir.join("revoked.pem");
        std::fs::write(&path, ca.crl(1, &[9999]).pem).unwrap();
        *slot.lock().unwrap() = Some(path);
    })
    .await;
    let path = crl_path.lock().unwrap().clone().unwrap();
    let (a_cert, a_key) = env
        .ca
        .worker_with_serial("spiffe://test.example/worker/a", 1001)
        .into_pem();
    let (b_cert, b_key) = env
        .ca
        .worker_with_serial("spiffe://test.example/worker/b", 1002)
        .into_pem();
    let mut a = env.session(&a_cert, &a_key).await.unwrap();
    let mut b = env.session(&b_cert, &b_key).await.unwrap();

    // a's certificate is revoked while its stream is open.
    std::fs::write(&path, env.ca.crl(2, &[1001]).pem).unwrap();
    let ended = loop {
        match tokio::time::timeout(WAIT, a.inbound.message()).await {
            Err(_) => break false,
            Ok(Ok(Some(_))) => continue, // heartbeats until the cut
            Ok(Ok(None) | Err(_)) => break true,
        }
    };
    assert!(ended, "the revoked worker's stream stayed open");
    assert!(
        env.session(&a_cert, &a_key).await.is_err(),
        "a is refused now"
    );
    // b's stream was not touched: it still runs a plan.
    run_a_plan(&env, &mut b).await;
    env.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_broken_crl_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, text) = common::write_setup(dir.path());
    let text = format!("{text}\n[admission]\ncrl = \"revoked.pem\"\n");
    let config = Config::from_toml_str(&text, dir.path()).unwrap();
    let err = orchestrator_mock::spawn(config.clone()).await.unwrap_err();
    assert!(err.to_string().contains("admission.crl"), "{err}");
    std::fs::write(dir.path().join("revoked.pem"), b"\x30\x03\x02\x01\x00").unwrap();
    let err = orchestrator_mock::spawn(config).await.unwrap_err();
    assert!(err.to_string().contains("admission.crl"), "{err}");
}
