//! The `WorkerGateway` gRPC service: one `Session` stream per worker.
//!
//! A session reads `Hello` (it must come first, within [`HELLO_TIMEOUT`],
//! and keep the contract's limits), answers `Welcome` with the identity
//! from the certificate and the manifest problems, registers with
//! [`crate::state`], then pumps: messages from the state go down once the
//! state change they depend on is durable, credit, accepts, results,
//! heartbeats and draining come up, and every message from the worker
//! renews its identity's lease. Each `TaskResult` is written to the
//! [`crate::store`] and applied to the state, and `ResultAck` is sent only
//! when both are durable; when either cannot be stored the worker gets
//! `ResultRefused` and sends the result again. Results are de-duplicated by
//! (task_id, attempt, identity): a duplicate is acknowledged again, not
//! stored twice.
//!
//! Streams end with the contract's statuses: `INVALID_ARGUMENT` for a bad
//! first message or a malformed one, `RESOURCE_EXHAUSTED` for a message over
//! [`MAX_MESSAGE_BYTES`], `ABORTED` when a newer stream of the same
//! identity replaced this one, `DEADLINE_EXCEEDED` without `Hello`,
//! `UNAVAILABLE` on a lapsed lease or silence.
//!
//! Liveness: a heartbeat goes down when nothing else was sent for one
//! interval; a session that receives nothing for three intervals is ended.
//! On orchestrator shutdown every session sends `Drain`, waits (up to
//! [`DRAIN_GRACE`]) for the results of its in-flight tasks, then closes.
//!
//! What it does not do: authenticate (the TLS layer did, see
//! [`crate::tls`]), decide what happens to work (the state does), or
//! interpret task inputs or outputs beyond parsing JSON.

use std::sync::Arc;
use std::time::Duration;

use pb::orchestrator_message::Kind as Down;
use pb::worker_message::Kind as Up;
use private_worker_proto::v1 as pb;
use private_worker_proto::v1::worker_gateway_server::WorkerGateway;
use private_worker_proto::{MAX_MANIFEST_ENTRIES, check_id};
use prost::Message as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::api::{ManifestEntryView, StoredAudit, StoredResult};
use crate::audit_check::{AuditCheck, Chains, check_record};
use crate::durable::journal::Durable;
use crate::registry::Registry;
use crate::state::{
    NewSession, Outgoing, Reported, ResultEffect, SharedState, now_rfc3339, outcome_name,
    step_status_for,
};
use crate::store::Store;
use crate::tls::WorkerConnInfo;

/// How long a session waits after `Drain` for in-flight results before
/// closing on orchestrator shutdown.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Largest gRPC message accepted or sent (the contract's 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = private_worker_proto::MAX_MESSAGE_BYTES;

/// How long a new stream may take to send `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most results of one stream being stored at once; beyond it the stream
/// is not read until one finishes.
pub const MAX_RESULTS_IN_PROGRESS: usize = 1024;

/// How long a result waits for its state change to be durable before the
/// worker is told `ResultRefused` (it sends the result again).
pub const RESULT_DURABLE_WAIT: Duration = Duration::from_secs(5);

/// The `ResultRefused.reason` when the result files cannot be written.
pub const REFUSED_RESULT_STORE: &str = "result store unavailable";
/// The `ResultRefused.reason` when the state store does not commit.
pub const REFUSED_STATE_STORE: &str = "state store unavailable";

/// The service; cheap to clone (everything is shared).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    state: SharedState,
    durable: Durable,
    registry: Arc<Registry>,
    store: Arc<Store>,
    heartbeat: Duration,
    shutdown: CancellationToken,
    /// Fault-injection hooks (contract tests only; `None` unless opted in).
    testing: Option<Arc<crate::testing::Hooks>>,
    /// Every worker identity's audit chain as records arrived.
    chains: std::sync::Mutex<Chains>,
}

impl Gateway {
    /// A gateway over shared state, registry and store. Sessions wait on
    /// `durable` before sending what depends on a state change, and watch
    /// `shutdown` to drain.
    pub fn new(
        state: SharedState,
        durable: Durable,
        registry: Arc<Registry>,
        store: Arc<Store>,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Gateway {
        let chains = chains_from(&store);
        Gateway {
            inner: Arc::new(Inner {
                state,
                durable,
                registry,
                store,
                heartbeat,
                chains: std::sync::Mutex::new(chains),
                shutdown,
                testing: None,
            }),
        }
    }

    /// Reports every session to the fault-injection hooks (contract tests
    /// only, see [`crate::testing`]); `None` leaves them off. Call before
    /// serving.
    pub fn with_fault_injection(mut self, hooks: Option<Arc<crate::testing::Hooks>>) -> Gateway {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.testing = hooks;
        }
        self
    }
}

type Reply = Result<pb::OrchestratorMessage, Status>;

#[tonic::async_trait]
impl WorkerGateway for Gateway {
    type SessionStream = ReceiverStream<Reply>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let Some(conn) = request.extensions().get::<WorkerConnInfo>().cloned() else {
            // Only reachable if the service is served without our TLS layer.
            return Err(Status::unauthenticated(
                "no authenticated worker identity on this connection",
            ));
        };
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        let session_id = uuid::Uuid::now_v7().to_string();
        let span =
            tracing::info_span!("session", session_id = %session_id, worker = %conn.identity);
        tokio::spawn(
            async move {
                inner.run_session(session_id, conn, inbound, out).await;
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn message(kind: Down) -> pb::OrchestratorMessage {
    pb::OrchestratorMessage { kind: Some(kind) }
}

/// A value from the wire, safe to log: escaped and cut to 64 characters.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}

/// Checks a `Hello` against the contract's limits; the error names the
/// field and the rule (never the value).
///
/// # Errors
/// The `INVALID_ARGUMENT` message.
pub fn check_hello(hello: &pb::Hello) -> Result<(), String> {
    check_id(&hello.instance_id).map_err(|why| format!("Hello.instance_id {why}"))?;
    if hello.manifest.len() > MAX_MANIFEST_ENTRIES {
        return Err(format!(
            "Hello.manifest has {} entries; at most {MAX_MANIFEST_ENTRIES} are allowed",
            hello.manifest.len()
        ));
    }
    for (i, entry) in hello.manifest.iter().enumerate() {
        check_id(&entry.name).map_err(|why| format!("Hello.manifest[{i}].name {why}"))?;
        check_id(&entry.version).map_err(|why| format!("Hello.manifest[{i}].version {why}"))?;
    }
    Ok(())
}

/// Whether a text is a lower-case hex SHA-256 (64 hex digits).
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `Welcome`, with as many manifest problems as fit the message limit
/// (the rest summed up in one last entry).
fn welcome_within_limit(mut welcome: pb::Welcome) -> pb::Welcome {
    // Leave room for the envelope and the summary entry.
    let budget = MAX_MESSAGE_BYTES - 4096;
    if welcome.encoded_len() <= budget {
        return welcome;
    }
    let problems = std::mem::take(&mut welcome.manifest_problems);
    let total = problems.len();
    let mut used = welcome.encoded_len();
    for p in problems {
        let size = p.encoded_len() + 8;
        if used + size > budget {
            break;
        }
        used += size;
        welcome.manifest_problems.push(p);
    }
    let left = total - welcome.manifest_problems.len();
    welcome.manifest_problems.push(pb::ManifestProblem {
        name: "*".into(),
        version: "*".into(),
        reason: format!("{left} more manifest problems not listed (message size limit)"),
    });
    welcome
}

/// What becomes of one received result.
enum Verdict {
    /// Stored and applied durably: send `ResultAck`.
    Ack(pb::TaskRef),
    /// Could not be stored: send `ResultRefused`.
    Refused(pb::TaskRef, &'static str),
    /// Malformed: nothing to answer.
    Ignore,
}

impl Inner {
    async fn run_session(
        self: Arc<Self>,
        session_id: String,
        conn: WorkerConnInfo,
        mut inbound: Streaming<pb::WorkerMessage>,
        out: mpsc::Sender<Reply>,
    ) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::WorkerMessage {
                kind: Some(Up::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                tracing::warn!("first message was not Hello; ending the stream");
                let _ = out
                    .send(Err(Status::invalid_argument(
                        "the first message of a session must be Hello",
                    )))
                    .await;
                return;
            }
            Ok(Ok(None)) => {
                tracing::info!("stream closed before Hello");
                return;
            }
            Ok(Err(status)) => {
                tracing::info!(%status, "stream failed before Hello");
                let _ = out
                    .send(Err(bad_message_status(&status).unwrap_or(status)))
                    .await;
                return;
            }
            Err(_) => {
                tracing::warn!("no Hello in time; ending the stream");
                let _ = out
                    .send(Err(Status::deadline_exceeded(format!(
                        "no Hello received within {HELLO_TIMEOUT:?}"
                    ))))
                    .await;
                return;
            }
        };
        if let Err(why) = check_hello(&hello) {
            tracing::warn!(reason = %why, "Hello breaks the contract; refusing the worker");
            let _ = out.send(Err(Status::invalid_argument(why))).await;
            return;
        }
        // The connection said Hello: it is no longer idle (see `tls`).
        conn.said_hello.set();
        let manifest: Vec<ManifestEntryView> = hello
            .manifest
            .iter()
            .map(|m| {
                let problem = if is_sha256_hex(&m.input_schema_sha256) {
                    self.registry
                        .check_manifest_entry(&m.name, &m.version, &m.input_schema_sha256)
                } else {
                    Some("input_schema_sha256 is not a hex SHA-256 (64 hex digits)".into())
                };
                ManifestEntryView {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    input_schema_sha256: if is_sha256_hex(&m.input_schema_sha256) {
                        m.input_schema_sha256.clone()
                    } else {
                        String::new()
                    },
                    dispatchable: problem.is_none(),
                    problem,
                }
            })
            .collect();
        let problems: Vec<pb::ManifestProblem> = manifest
            .iter()
            .filter_map(|m| {
                m.problem.as_ref().map(|reason| pb::ManifestProblem {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    reason: reason.clone(),
                })
            })
            .collect();
        for p in &problems {
            tracing::warn!(task = %p.name, version = %p.version, reason = %p.reason, "manifest entry will not receive work");
        }
        let lease_timeout = self.lock().lease_timeout();
        let welcome = welcome_within_limit(pb::Welcome {
            session_id: session_id.clone(),
            worker_identity: conn.identity.clone(),
            heartbeat_interval: prost_types::Duration::try_from(self.heartbeat).ok(),
            manifest_problems: problems,
            lease_timeout: prost_types::Duration::try_from(lease_timeout).ok(),
        });
        if out.send(Ok(message(Down::Welcome(welcome)))).await.is_err() {
            return;
        }
        tracing::info!(
            remote_addr = %conn.remote_addr,
            serial = %conn.cert_serial,
            worker_version = %shown(&hello.worker_version),
            instance_id = %hello.instance_id,
            credit = hello.max_in_flight,
            manifest = hello.manifest.len(),
            pending_results = hello.pending_results.len(),
            running = hello.running.len(),
            "session established"
        );
        let mut held = std::collections::BTreeSet::new();
        for task in hello.running.iter().chain(&hello.pending_results) {
            if let Err(why) = check_id(&task.task_id) {
                tracing::warn!(task_id = %shown(&task.task_id), why, "Hello lists a task id that breaks the contract; ignored");
                continue;
            }
            held.insert((task.task_id.clone(), task.attempt));
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Some(hooks) = &self.testing {
            hooks.session_opened(&session_id, &conn.identity, tx.clone()); // fault injection
        }
        self.lock().register_session(NewSession {
            session_id: session_id.clone(),
            identity: conn.identity.clone(),
            remote_addr: conn.remote_addr,
            cert_serial: conn.cert_serial.clone(),
            worker_version: hello.worker_version.chars().take(256).collect(),
            instance_id: hello.instance_id.clone(),
            manifest,
            credit: hello.max_in_flight,
            held,
            tx,
        });

        let end = self
            .pump(&session_id, &conn, &mut inbound, &mut rx, &out)
            .await;
        if let Some(hooks) = &self.testing {
            hooks.session_closed(&session_id, &end); // fault injection
        }
        let orphaned = self.lock().unregister_session(&session_id);
        for (task_id, attempt) in &orphaned {
            tracing::warn!(task_id = %task_id, attempt, "session ended with the task assigned and no result; settled when the worker dials again or its lease lapses");
        }
        tracing::info!(reason = %end, "session ended");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, crate::state::State> {
        // A panic while holding the lock leaves the state as consistent as
        // each single mutation; keep serving rather than poison everything.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until state change `seq` is durable; `false` when the
    /// orchestrator shuts down first.
    async fn durable(&self, seq: u64) -> bool {
        let mut warned = false;
        loop {
            if self.durable.wait(seq, Duration::from_secs(1)).await.is_ok() {
                return true;
            }
            if self.shutdown.is_cancelled() {
                return false;
            }
            if !warned {
                warned = true;
                tracing::warn!(seq, "waiting for the state store to commit before sending");
            }
        }
    }

    async fn pump(
        self: &Arc<Self>,
        session_id: &str,
        conn: &WorkerConnInfo,
        inbound: &mut Streaming<pb::WorkerMessage>,
        rx: &mut mpsc::UnboundedReceiver<Outgoing>,
        out: &mpsc::Sender<Reply>,
    ) -> String {
        let mut last_sent = Instant::now();
        let mut last_received = Instant::now();
        let mut tick = tokio::time::interval(self.heartbeat / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_deadline: Option<Instant> = None;
        let results_in_progress = Arc::new(tokio::sync::Semaphore::new(MAX_RESULTS_IN_PROGRESS));
        loop {
            if drain_deadline.is_some() && self.lock().in_flight(session_id) == 0 {
                let reason = "orchestrator shutting down (drained)";
                let _ = out.send(Err(Status::unavailable(reason))).await;
                return reason.into();
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled(), if drain_deadline.is_none() => {
                    tracing::info!("orchestrator shutting down; sending Drain");
                    self.lock().set_draining(session_id);
                    let drain = message(Down::Drain(pb::Drain { reason: "orchestrator shutting down".into() }));
                    if out.send(Ok(drain)).await.is_err() {
                        return "worker gone".into();
                    }
                    last_sent = Instant::now();
                    drain_deadline = Some(Instant::now() + DRAIN_GRACE);
                }
                _ = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                    let reason = "orchestrator shutting down (drain grace period over)";
                    let _ = out.send(Err(Status::unavailable(reason))).await;
                    return reason.into();
                }
                received = inbound.message() => {
                    last_received = Instant::now();
                    match received {
                        Ok(Some(pb::WorkerMessage { kind: Some(kind) })) => {
                            self.lock().touch(&conn.identity, last_received);
                            match self.handle(session_id, conn, kind, out, &results_in_progress).await {
                                Ok(true) => last_sent = Instant::now(),
                                Ok(false) => {}
                                Err(reason) => return reason,
                            }
                        }
                        Ok(Some(_)) => {
                            self.lock().touch(&conn.identity, last_received);
                            tracing::debug!("ignoring an empty message");
                        }
                        Ok(None) => return "worker closed the stream".into(),
                        Err(status) => {
                            if let Some(contract) = bad_message_status(&status) {
                                let reason = contract.message().to_string();
                                let _ = out.send(Err(contract)).await;
                                return reason;
                            }
                            return format!("stream error: {status}");
                        }
                    }
                }
                Some(down) = rx.recv() => {
                    match down {
                        Outgoing::Send { after, message } => {
                            if !self.durable(after).await {
                                return "orchestrator shutting down".into();
                            }
                            if out.send(Ok(*message)).await.is_err() {
                                return "worker gone".into();
                            }
                            last_sent = Instant::now();
                        }
                        Outgoing::Close(status) => {
                            let reason = format!("closed: {}", status.message());
                            let _ = out.send(Err(*status)).await;
                            return reason;
                        }
                    }
                }
                _ = tick.tick() => {
                    let silent = last_received.elapsed();
                    if silent > self.heartbeat * 3 {
                        let _ = out.send(Err(Status::unavailable("no message from the worker for three heartbeat intervals"))).await;
                        return format!("heartbeat timeout: nothing received for {silent:?}");
                    }
                    if last_sent.elapsed() >= self.heartbeat {
                        let in_flight = u32::try_from(self.lock().in_flight(session_id)).unwrap_or(u32::MAX);
                        let beat = message(Down::Heartbeat(pb::Heartbeat { sent_at: Some(std::time::SystemTime::now().into()), in_flight }));
                        if out.send(Ok(beat)).await.is_err() {
                            return "worker gone".into();
                        }
                        last_sent = Instant::now();
                    }
                }
            }
        }
    }

    /// Handles one worker message; returns whether something was sent
    /// back, `Err(reason)` ends the session.
    async fn handle(
        self: &Arc<Self>,
        session_id: &str,
        conn: &WorkerConnInfo,
        kind: Up,
        out: &mpsc::Sender<Reply>,
        results_in_progress: &Arc<tokio::sync::Semaphore>,
    ) -> Result<bool, String> {
        // Fault injection: recorded, and returned credit of raw assignments withheld.
        let Some(kind) = (match &self.testing {
            Some(hooks) => hooks.observe(session_id, &conn.identity, kind),
            None => Some(kind),
        }) else {
            return Ok(false);
        };
        match kind {
            Up::Hello(_) => tracing::warn!("ignoring a second Hello"),
            Up::Credit(credit) => {
                tracing::debug!(grant = credit.grant, "credit granted");
                self.lock().grant_credit(session_id, credit.grant);
            }
            Up::Accept(accept) => match accept.task {
                Some(task) if check_id(&task.task_id).is_ok() => {
                    match self
                        .lock()
                        .mark_accepted(&conn.identity, &task.task_id, task.attempt)
                    {
                        Ok(()) => {
                            tracing::info!(task_id = %task.task_id, attempt = task.attempt, "worker accepted the task");
                        }
                        Err(why) => {
                            tracing::warn!(task_id = %task.task_id, attempt = task.attempt, why = %why, "Accept for an attempt this identity does not hold; ignored");
                        }
                    }
                }
                Some(task) => {
                    tracing::warn!(task_id = %shown(&task.task_id), "Accept for a task id that breaks the contract; ignored");
                }
                None => tracing::warn!("Accept without a task reference; ignored"),
            },
            Up::Result(result) => {
                // The store commits in groups: results of one stream are
                // taken concurrently so that they share a commit instead of
                // each waiting for the previous one's disk sync. The ack
                // follows the commit, whatever the order.
                // Bounded: past the limit, reading this stream waits, so a
                // worker cannot pile up unbounded work in the orchestrator.
                let permit = Arc::clone(results_in_progress)
                    .acquire_owned()
                    .await
                    .map_err(|_| "result limiter closed".to_string())?;
                let gateway = Arc::clone(self);
                let (session_id, conn, out) = (session_id.to_string(), conn.clone(), out.clone());
                tokio::spawn(
                    async move {
                        let reply = match gateway.take_result(&session_id, &conn, result).await {
                            Verdict::Ack(task) => {
                                Some(Down::ResultAck(pb::ResultAck { task: Some(task) }))
                            }
                            Verdict::Refused(task, reason) => {
                                Some(Down::ResultRefused(pb::ResultRefused {
                                    task: Some(task),
                                    reason: reason.into(),
                                }))
                            }
                            Verdict::Ignore => None,
                        };
                        if let Some(reply) = reply {
                            let _ = out.send(Ok(message(reply))).await;
                        }
                        drop(permit);
                    }
                    .instrument(tracing::Span::current()),
                );
            }
            Up::Heartbeat(beat) => tracing::trace!(in_flight = beat.in_flight, "heartbeat"),
            Up::Draining(draining) => {
                tracing::info!(reason = %shown(&draining.reason), "worker is draining; no more assignments to it");
                self.lock().set_draining(session_id);
            }
        }
        Ok(false)
    }

    /// Stores and applies a result; says whether to acknowledge or refuse
    /// it.
    async fn take_result(
        &self,
        session_id: &str,
        conn: &WorkerConnInfo,
        result: pb::TaskResult,
    ) -> Verdict {
        let Some(task) = result.task.clone() else {
            tracing::warn!("result without a task reference; ignored");
            return Verdict::Ignore;
        };
        if let Err(why) = check_id(&task.task_id) {
            tracing::warn!(task_id = %shown(&task.task_id), why, "result for a task id that breaks the contract; ignored");
            return Verdict::Ignore;
        }
        let outcome = pb::Outcome::try_from(result.outcome).unwrap_or(pb::Outcome::Unspecified);
        // Whose attempt is this? Only the identity it was assigned to may
        // report it; the plan comes from the orchestrator's own records,
        // never from the message.
        let assigned = self.lock().assigned_attempt(&task.task_id, task.attempt);
        let problem = match &assigned {
            None => Some("no such attempt was assigned by this orchestrator".to_string()),
            Some(a) if a.worker != conn.identity => Some(format!(
                "the attempt was assigned to {}, not to the sender",
                a.worker
            )),
            Some(_) => None,
        };
        let plan_id = match (&assigned, &problem) {
            (Some(a), None) => a.plan_id.clone(),
            _ => String::new(),
        };
        let span = tracing::info_span!("result", plan_id = %plan_id, task_id = %task.task_id, attempt = task.attempt);
        let _entered = span.enter();
        let received_at = now_rfc3339();
        let output = json_or_text(&result.output_json);
        let stored = StoredResult {
            plan_id: plan_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            worker_identity: conn.identity.clone(),
            session_id: session_id.to_string(),
            received_at: received_at.clone(),
            outcome: outcome_name(outcome).into(),
            output: output.clone(),
            error_code: non_empty(&result.error_code),
            error_message: non_empty(&result.error_message),
            problem: problem.clone(),
        };
        let audit = result
            .audit
            .as_ref()
            .map(|a| {
                let mut problems = check_record(&result, a, &conn.identity, assigned.as_ref());
                problems.extend(
                    self.chains
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .follow(&conn.identity, a),
                );
                if !problems.is_empty() {
                    tracing::warn!(problems = ?problems, "audit record flagged");
                }
                (a, AuditCheck::from_problems(problems))
            })
            .map(|(a, check)| StoredAudit {
                plan_id: plan_id.clone(),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                worker_identity: conn.identity.clone(),
                session_id: session_id.to_string(),
                received_at,
                task_name: a.task_name.clone(),
                task_version: a.task_version.clone(),
                inputs: json_or_text(&a.inputs_json).unwrap_or(Value::Null),
                output: json_or_text(&a.output_json),
                assignment_received_at: a.received_at.and_then(rfc3339),
                started_at: a.started_at.and_then(rfc3339),
                finished_at: a.finished_at.and_then(rfc3339),
                outcome: outcome_name(
                    pb::Outcome::try_from(a.outcome).unwrap_or(pb::Outcome::Unspecified),
                )
                .into(),
                error_code: non_empty(&a.error_code),
                error_message: non_empty(&a.error_message),
                claimed_worker_identity: a.worker_identity.clone(),
                sequence: a.sequence,
                prev_hash: a.prev_hash.clone(),
                record_hash: a.record_hash.clone(),
                check,
            });
        // Every result must carry its record: one without is kept with a
        // flagged stand-in, so the plan's audit trail shows the gap.
        let audit = audit.unwrap_or_else(|| {
            tracing::warn!("result arrived without an audit record; flagged");
            StoredAudit {
                plan_id: plan_id.clone(),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                worker_identity: conn.identity.clone(),
                session_id: session_id.to_string(),
                received_at: stored.received_at.clone(),
                task_name: assigned
                    .as_ref()
                    .map(|a| a.task_name.clone())
                    .unwrap_or_default(),
                task_version: assigned
                    .as_ref()
                    .map(|a| a.task_version.clone())
                    .unwrap_or_default(),
                inputs: Value::Null,
                output: None,
                assignment_received_at: None,
                started_at: None,
                finished_at: None,
                outcome: stored.outcome.clone(),
                error_code: None,
                error_message: None,
                claimed_worker_identity: String::new(),
                sequence: 0,
                prev_hash: String::new(),
                record_hash: String::new(),
                check: AuditCheck::from_problems(vec![
                    "no audit record came with this result".into(),
                ]),
            }
        });
        match self.store.append_once(stored.clone(), Some(audit)).await {
            Err(e) => {
                tracing::error!(error = %e, "cannot store the result; refusing it (the worker sends it again)");
                return Verdict::Refused(task, REFUSED_RESULT_STORE);
            }
            Ok(false) => {
                // Applied again below: after an orchestrator crash the
                // result may be stored while its effect on the plan is not.
                tracing::info!("duplicate result; not stored twice");
            }
            Ok(true) => {}
        }
        if let Some(problem) = &problem {
            // Acknowledged so the sender can forget it, kept as evidence,
            // never listed under a plan nor applied.
            tracing::warn!(problem = %problem, "result not applied: the sender does not hold this attempt");
            return Verdict::Ack(task);
        }
        let (effect, seq) = {
            let mut state = self.lock();
            let effect = state.apply_result(
                &conn.identity,
                &task.task_id,
                task.attempt,
                Reported {
                    status: step_status_for(outcome),
                    output,
                    error_code: stored.error_code.clone(),
                    error_message: stored.error_message.clone(),
                },
            );
            (effect, state.last_change())
        };
        match effect {
            ResultEffect::Applied { plan_status, .. } => {
                tracing::info!(
                    outcome = outcome_name(outcome),
                    ?plan_status,
                    "result stored and applied"
                );
            }
            ResultEffect::Ignored(why) => {
                tracing::info!(why = %why, "result stored, not applied")
            }
            ResultEffect::UnknownTask => {
                tracing::warn!("result for a task this orchestrator does not know; stored")
            }
        }
        if self.durable.wait(seq, RESULT_DURABLE_WAIT).await.is_err() {
            tracing::error!(
                "the state store did not commit in time; refusing the result (the worker sends it again)"
            );
            return Verdict::Refused(task, REFUSED_STATE_STORE);
        }
        Verdict::Ack(task)
    }
}

/// The audit chains of the records already stored, so checks go on
/// across a restart of the orchestrator.
fn chains_from(store: &Store) -> Chains {
    let mut chains = Chains::default();
    let rebuilt = store.for_each_audit_link(|r| {
        let link = pb::AuditRecord {
            sequence: r.sequence,
            prev_hash: r.prev_hash,
            record_hash: r.record_hash,
            ..Default::default()
        };
        chains.follow(&r.worker_identity, &link);
    });
    if let Err(e) = rebuilt {
        tracing::warn!(error = %e, "cannot read the stored audit records; chain checks start afresh");
    }
    chains
}

/// The status the contract gives for a bad message, when `status` is
/// tonic's decode error: `RESOURCE_EXHAUSTED` for one over the size limit,
/// `INVALID_ARGUMENT` for one that is not a valid message. Never OK.
fn bad_message_status(status: &Status) -> Option<Status> {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        return Some(Status::resource_exhausted(format!(
            "message exceeds the contract's limit of 4 MiB ({MAX_MESSAGE_BYTES} bytes): {}",
            status.message()
        )));
    }
    (status.code() == tonic::Code::Internal && status.message().contains("decode")).then(|| {
        Status::invalid_argument(format!(
            "malformed message (not a valid WorkerMessage): {}",
            status.message()
        ))
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Parses a JSON text field; `None` when empty, a JSON string when not JSON.
fn json_or_text(text: &str) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    Some(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
}

fn rfc3339(t: prost_types::Timestamp) -> Option<String> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_parse_and_text_that_is_not_json_is_kept_as_a_string() {
        assert_eq!(json_or_text(""), None);
        assert_eq!(json_or_text("{\"a\":1}"), Some(serde_json::json!({"a": 1})));
        assert_eq!(json_or_text("oops"), Some(Value::String("oops".into())));
    }

    #[test]
    fn timestamps_are_stored_as_rfc3339() {
        let t = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        };
        assert_eq!(rfc3339(t).as_deref(), Some("2026-01-01T00:00:00Z"));
    }
}
