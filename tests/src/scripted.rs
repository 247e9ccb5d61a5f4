//! A scripted orchestrator: the contract's server side with the test in
//! control, to put a real worker process through what a broken or hostile
//! orchestrator may do (never acknowledge, refuse to store, re-send a task
//! id with a higher attempt, ignore the credit, send ids beyond the limits).
//!
//! It speaks mutual TLS with the orchestrator-mock's own acceptor, answers
//! every `Hello` with a `Welcome`, sends heartbeats, records every message
//! the worker sends, and sends whatever the test asks on the newest
//! stream. It validates nothing and stores nothing: the orchestrator-mock
//! is the reference implementation, this is a test instrument.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use pb::orchestrator_message::Kind as Down;
use pb::worker_gateway_server::{WorkerGateway, WorkerGatewayServer};
use pb::worker_message::Kind as Up;
use private_worker_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The lease announced in `Welcome` unless a test sets another.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How the scripted orchestrator answers results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultPolicy {
    /// `ResultAck` for every result, like a working orchestrator.
    Acknowledge,
    /// Nothing at all: the worker must keep every result.
    Ignore,
    /// `ResultRefused` for every result (a full disk).
    Refuse,
}

#[derive(Default)]
struct Inner {
    hellos: Vec<pb::Hello>,
    received: Vec<Up>,
    current: Option<mpsc::UnboundedSender<Result<pb::OrchestratorMessage, tonic::Status>>>,
    streams: usize,
}

struct Gateway {
    inner: Arc<Mutex<Inner>>,
    policy: Arc<Mutex<ResultPolicy>>,
    heartbeat: Duration,
    lease: Arc<Mutex<Duration>>,
    problems: Arc<Mutex<Vec<pb::ManifestProblem>>>,
}

type Out = Pin<Box<dyn Stream<Item = Result<pb::OrchestratorMessage, tonic::Status>> + Send>>;

fn message(kind: Down) -> pb::OrchestratorMessage {
    pb::OrchestratorMessage { kind: Some(kind) }
}

#[tonic::async_trait]
impl WorkerGateway for Gateway {
    type SessionStream = Out;

    async fn session(
        &self,
        request: tonic::Request<tonic::Streaming<pb::WorkerMessage>>,
    ) -> Result<tonic::Response<Out>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        let heartbeat = self.heartbeat;
        let lease = *self.lease.lock().unwrap();
        let problems = self.problems.lock().unwrap().clone();
        tokio::spawn(async move {
            // The first beat one period in: a beat sent at once could
            // reach the worker before the Welcome and break the stream.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let beat = pb::Heartbeat { sent_at: None, in_flight: 0 };
                        if tx.send(Ok(message(Down::Heartbeat(beat)))).is_err() {
                            return;
                        }
                    }
                    next = inbound.message() => {
                        let Ok(Some(pb::WorkerMessage { kind: Some(kind) })) = next else {
                            return;
                        };
                        let mut inner = inner.lock().unwrap();
                        match &kind {
                            Up::Hello(hello) => {
                                inner.hellos.push(hello.clone());
                                inner.streams += 1;
                                inner.current = Some(tx.clone());
                                let welcome = pb::Welcome {
                                    session_id: format!("scripted-{}", inner.streams),
                                    worker_identity: "scripted".into(),
                                    heartbeat_interval: heartbeat.try_into().ok(),
                                    manifest_problems: problems.clone(),
                                    lease_timeout: lease.try_into().ok(),
                                };
                                let _ = tx.send(Ok(message(Down::Welcome(welcome))));
                            }
                            Up::Result(result) => {
                                let answer = match *policy.lock().unwrap() {
                                    ResultPolicy::Acknowledge => Some(Down::ResultAck(pb::ResultAck { task: result.task.clone() })),
                                    ResultPolicy::Refuse => Some(Down::ResultRefused(pb::ResultRefused { task: result.task.clone(), reason: "disk full".into() })),
                                    ResultPolicy::Ignore => None,
                                };
                                if let Some(answer) = answer {
                                    let _ = tx.send(Ok(message(answer)));
                                }
                            }
                            _ => {}
                        }
                        inner.received.push(kind);
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}

/// A running scripted orchestrator; stops when dropped.
pub struct ScriptedOrchestrator {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    policy: Arc<Mutex<ResultPolicy>>,
    lease: Arc<Mutex<Duration>>,
    problems: Arc<Mutex<Vec<pb::ManifestProblem>>>,
    stop: CancellationToken,
}

impl Drop for ScriptedOrchestrator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ScriptedOrchestrator {
    /// Starts on 127.0.0.1:0 with the orchestrator's TLS set-up.
    ///
    /// # Panics
    /// When the TLS files or the listener are unusable (a test set-up bug).
    pub async fn start(
        tls: &orchestrator_mock::TlsConfig,
        policy: ResultPolicy,
        heartbeat: Duration,
    ) -> ScriptedOrchestrator {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let policy = Arc::new(Mutex::new(policy));
        let lease = Arc::new(Mutex::new(DEFAULT_LEASE));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let gateway = Gateway {
            inner: inner.clone(),
            policy: policy.clone(),
            heartbeat,
            lease: lease.clone(),
            problems: problems.clone(),
        };
        let (addr, stop) = serve(
            tls,
            WorkerGatewayServer::new(gateway)
                .max_decoding_message_size(private_worker_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(private_worker_proto::MAX_MESSAGE_BYTES),
        )
        .await;
        ScriptedOrchestrator {
            addr,
            inner,
            policy,
            lease,
            problems,
            stop,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the lease announced in the next `Welcome`s.
    pub fn set_lease(&self, lease: Duration) {
        *self.lease.lock().unwrap() = lease;
    }

    /// Sets the manifest problems announced in the next `Welcome`s
    /// (arbitrary text, as a hostile orchestrator may send).
    pub fn set_manifest_problems(&self, problems: Vec<pb::ManifestProblem>) {
        *self.problems.lock().unwrap() = problems;
    }

    /// Changes how results are answered from now on.
    pub fn set_policy(&self, policy: ResultPolicy) {
        *self.policy.lock().unwrap() = policy;
    }

    /// Sends a message on the newest stream; returns whether one was open.
    pub fn send(&self, kind: Down) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .current
            .as_ref()
            .is_some_and(|tx| tx.send(Ok(message(kind))).is_ok())
    }

    /// Ends the newest stream with `status`.
    pub fn end_stream(&self, status: tonic::Status) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(tx) = inner.current.take() {
            let _ = tx.send(Err(status));
        }
    }

    /// Every `Hello` received, oldest first.
    pub fn hellos(&self) -> Vec<pb::Hello> {
        self.inner.lock().unwrap().hellos.clone()
    }

    /// Every result received (re-sends included), oldest first.
    pub fn results(&self) -> Vec<pb::TaskResult> {
        self.received(|kind| match kind {
            Up::Result(r) => Some(r.clone()),
            _ => None,
        })
    }

    /// Every `Accept` received, oldest first.
    pub fn accepts(&self) -> Vec<pb::TaskRef> {
        self.received(|kind| match kind {
            Up::Accept(a) => a.task.clone(),
            _ => None,
        })
    }

    /// Sum of every `Credit.grant` received.
    pub fn credit_granted(&self) -> u64 {
        self.received(|kind| match kind {
            Up::Credit(c) => Some(u64::from(c.grant)),
            _ => None,
        })
        .into_iter()
        .sum()
    }

    /// How many streams said `Hello`.
    pub fn streams(&self) -> usize {
        self.inner.lock().unwrap().streams
    }

    fn received<T>(&self, pick: impl Fn(&Up) -> Option<T>) -> Vec<T> {
        self.inner
            .lock()
            .unwrap()
            .received
            .iter()
            .filter_map(pick)
            .collect()
    }

    /// Waits until `done` holds, checking every 20 ms.
    ///
    /// # Panics
    /// After `timeout`, naming `what`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves a `WorkerGateway` implementation on 127.0.0.1:0 behind the
/// orchestrator-mock's own mTLS acceptor; returns where it listens and the
/// token that stops it.
///
/// # Panics
/// When the TLS files or the listener are unusable (a test set-up bug).
pub async fn serve<S>(
    tls: &orchestrator_mock::TlsConfig,
    service: WorkerGatewayServer<S>,
) -> (SocketAddr, CancellationToken)
where
    S: WorkerGateway,
{
    let (config, _verifier) =
        orchestrator_mock::tls::server_config(tls, None).expect("server TLS config");
    // No admission rules: this stand-in tests workers, not admission.
    let admission = Arc::new(orchestrator_mock::admission::Admission::new(
        None,
        usize::MAX,
        usize::MAX,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(orchestrator_mock::tls::accept_loop(
        listener,
        config,
        admission,
        None,
        tx,
        stop.clone(),
    ));
    let shutdown = stop.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                shutdown.cancelled_owned(),
            )
            .await;
    });
    (addr, stop)
}

/// An assignment of a sample task.
pub fn assignment(task_id: &str, attempt: u32, task: &str, inputs: serde_json::Value) -> Down {
    Down::Assignment(pb::Assignment {
        task_id: task_id.into(),
        attempt,
        plan_id: "plan-1".into(),
        step_index: 0,
        task_name: task.into(),
        task_version: "1".into(),
        inputs_json: inputs.to_string(),
        ..Default::default()
    })
}
