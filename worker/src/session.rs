//! The session: one outbound stream to the orchestrator, kept alive.
//!
//! [`Worker::run`] loops over sessions. Each session dials (see
//! [`crate::tls`]), sends `Hello` with the manifest and the free capacity as
//! credit, waits for `Welcome`, re-sends every result not yet acknowledged,
//! then pumps frames: assignments go to the [`Runner`] on their own tasks,
//! finished results go up with one more credit, acknowledgements clear the
//! outbox, heartbeats prove both ends alive. A failed session is
//! classified by [`classify`]: fatal errors stop the worker, the rest wait
//! a jittered backoff and dial again. Tasks keep running across a cut
//! connection; their results wait in the outbox for the next session.
//!
//! The session never interprets task payloads: it converts between proto
//! messages and [`crate::task`] types and nothing more.
//!
//! Roadmap: the outbox and the record of finished attempts are in memory;
//! a durable journal will let them survive a worker restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use pb::orchestrator_message::Kind as Down;
use pb::worker_gateway_client::WorkerGatewayClient;
use pb::worker_message::Kind as Up;
use private_worker_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{AuditError, AuditRecord};
use crate::backoff::Backoff;
use crate::config::{Config, DEFAULT_HEARTBEAT_INTERVAL};
use crate::executor::{Outcome, TaskError};
use crate::task::{Assignment, Runner, TaskReport};
use crate::tls::{ClientTls, DialError};

/// Largest message the worker accepts from the orchestrator.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How many acknowledged attempts are remembered to ignore re-deliveries.
const REMEMBERED_ATTEMPTS: usize = 100_000;
/// Shortest heartbeat interval the worker accepts from `Welcome`.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest heartbeat interval the worker accepts from `Welcome`.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);
/// How long to wait for acknowledgements of the last results at shutdown.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// Why one session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Dialing failed (network, TLS, identity of the orchestrator, HTTP/2 set-up).
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The orchestrator ended the stream with a status.
    #[error("orchestrator ended the stream: {0}")]
    Status(#[from] tonic::Status),
    /// The orchestrator closed the stream without a status.
    #[error("orchestrator closed the stream")]
    Closed,
    /// No `Welcome` (or a different first message) arrived in time.
    #[error("no Welcome from the orchestrator: {0}")]
    NoWelcome(&'static str),
    /// The orchestrator asked this stream to drain and everything on it was
    /// delivered; dial again (possibly reaching another instance).
    #[error("the orchestrator drained this stream")]
    DrainedByOrchestrator,
    /// Nothing arrived for three heartbeat intervals.
    #[error("no message from the orchestrator for {0:?}; treating the stream as dead")]
    HeartbeatTimeout(Duration),
    /// The local audit log could not be written: the worker must stop.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What to do after a session error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Wait a backoff and dial again.
    Retry,
    /// Stop the worker: retrying cannot help (exit non-zero; a supervisor
    /// restarts it after the operator fixes the cause).
    Fatal,
}

/// The one place that decides which failures end the worker.
///
/// Network, TLS and gRPC failures are transient or fixable on the other
/// side (a re-issued certificate, a restarted orchestrator, an ingress
/// misrouting during a deploy, which shows as `Unimplemented`), so they
/// retry with backoff. `InvalidArgument` means the orchestrator refuses
/// this worker's `Hello` as malformed: retrying the same bytes cannot help.
/// A broken local audit log is fatal: the worker must not run tasks it
/// cannot audit.
pub fn classify(error: &SessionError) -> Disposition {
    match error {
        SessionError::Status(status) => match status.code() {
            tonic::Code::InvalidArgument => Disposition::Fatal,
            _ => Disposition::Retry,
        },
        SessionError::Audit(_) => Disposition::Fatal,
        SessionError::Dial(_)
        | SessionError::DrainedByOrchestrator
        | SessionError::Closed
        | SessionError::NoWelcome(_)
        | SessionError::HeartbeatTimeout(_) => Disposition::Retry,
    }
}

/// Why the worker stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    /// A session failed in a way retrying cannot fix.
    #[error("fatal session error: {0}")]
    Session(#[from] SessionError),
}

type AttemptKey = (String, u32);

/// A finished attempt on its way to the session.
struct Done {
    key: AttemptKey,
    /// Whether it held a slot of the granted capacity (refused over-credit
    /// assignments do not).
    held_slot: bool,
    result: Result<pb::TaskResult, AuditError>,
}

/// The worker: TLS identity, runner, and the state that outlives sessions.
pub struct Worker {
    config: Config,
    tls: ClientTls,
    runner: Runner,
    instance_id: String,
    /// Attempts received and not yet finished (running, or being refused),
    /// with the token that cancels each.
    running: HashMap<AttemptKey, CancellationToken>,
    /// Results not yet acknowledged, oldest first.
    outbox: VecDeque<(AttemptKey, pb::TaskResult)>,
    /// Acknowledged attempts, to ignore re-deliveries (bounded).
    finished: HashSet<AttemptKey>,
    finished_order: VecDeque<AttemptKey>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

enum SessionEnd {
    /// Shutdown requested and everything drained.
    Drained,
}

/// State of one live session.
struct Live {
    tx: mpsc::Sender<pb::WorkerMessage>,
    /// Assignments the orchestrator may still send.
    credit: u32,
    draining: bool,
    drain_deadline: Option<tokio::time::Instant>,
    last_received: Instant,
    last_sent: Instant,
}

impl Live {
    async fn send(&mut self, kind: Up) -> Result<(), SessionError> {
        self.last_sent = Instant::now();
        self.tx
            .send(pb::WorkerMessage { kind: Some(kind) })
            .await
            .map_err(|_| SessionError::Closed)
    }
}

impl Worker {
    /// Builds a worker from its parts.
    pub fn new(config: Config, tls: ClientTls, runner: Runner) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Worker {
            config,
            tls,
            runner,
            instance_id: uuid::Uuid::new_v4().to_string(),
            running: HashMap::new(),
            outbox: VecDeque::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            done_tx,
            done_rx,
        }
    }

    /// Runs sessions until `shutdown` is cancelled and in-flight work has
    /// drained, or a fatal error.
    ///
    /// # Errors
    /// [`FatalError`] when [`classify`] says a failure cannot be retried.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), FatalError> {
        let mut backoff = Backoff::new(
            self.config.orchestrator.reconnect_initial,
            self.config.orchestrator.reconnect_max,
        );
        loop {
            let mut welcomed = false;
            match self.session(&shutdown, &mut welcomed).await {
                Ok(SessionEnd::Drained) => return Ok(()),
                Err(e) => match classify(&e) {
                    Disposition::Fatal => {
                        tracing::error!(error = %e, "stopping: this failure cannot be retried");
                        return Err(e.into());
                    }
                    Disposition::Retry => {
                        tracing::warn!(error = %e, in_flight = self.running.len(), unacked = self.outbox.len(), "session ended; will reconnect");
                    }
                },
            }
            if welcomed {
                backoff.reset();
            }
            if shutdown.is_cancelled() {
                return self.stop_disconnected().await;
            }
            let delay = backoff.next_delay();
            tracing::info!(?delay, "reconnecting after backoff");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return self.stop_disconnected().await,
                    Some(done) = self.done_rx.recv() => { self.record_done(done)?; }
                    _ = &mut sleep => break,
                }
            }
        }
    }

    /// Shutdown while no session is up: let running tasks finish within the
    /// grace period so their audit records are written, then stop.
    async fn stop_disconnected(&mut self) -> Result<(), FatalError> {
        let deadline = tokio::time::Instant::now() + self.config.drain_grace;
        while !self.running.is_empty() {
            tokio::select! {
                Some(done) = self.done_rx.recv() => { self.record_done(done)?; }
                _ = tokio::time::sleep_until(deadline) => {
                    // Cancelled tasks still write their audit records.
                    self.running.values().for_each(CancellationToken::cancel);
                    let last = tokio::time::Instant::now() + FINAL_ACK_WAIT;
                    while !self.running.is_empty() {
                        tokio::select! {
                            Some(done) = self.done_rx.recv() => self.record_done(done)?,
                            _ = tokio::time::sleep_until(last) => break,
                        };
                    }
                    break;
                }
            }
        }
        if !self.outbox.is_empty() {
            tracing::warn!(
                undelivered = self.outbox.len(),
                "stopping with results the orchestrator has not acknowledged; they are in the local audit log"
            );
        }
        Ok(())
    }

    /// Moves a finished attempt from `running` to the outbox.
    fn record_done(&mut self, done: Done) -> Result<pb::TaskResult, SessionError> {
        self.running.remove(&done.key);
        let result = done.result?;
        self.outbox.push_back((done.key, result.clone()));
        Ok(result)
    }

    fn hello(&self) -> pb::Hello {
        let manifest = self
            .runner
            .allowlist()
            .tasks()
            .map(|t| pb::ManifestEntry {
                name: t.config.name.clone(),
                version: t.config.version.clone(),
                input_schema_sha256: t.schema_sha256.clone(),
            })
            .collect();
        pb::Hello {
            worker_version: concat!("private-worker ", env!("CARGO_PKG_VERSION")).to_string(),
            manifest,
            max_in_flight: self.free_slots(),
            pending_results: self
                .outbox
                .iter()
                .map(|((task_id, attempt), _)| pb::TaskRef {
                    task_id: task_id.clone(),
                    attempt: *attempt,
                })
                .collect(),
            instance_id: self.instance_id.clone(),
            running: self
                .running
                .keys()
                .map(|(task_id, attempt)| pb::TaskRef {
                    task_id: task_id.clone(),
                    attempt: *attempt,
                })
                .collect(),
        }
    }

    fn free_slots(&self) -> u32 {
        self.config
            .max_in_flight
            .saturating_sub(u32::try_from(self.running.len()).unwrap_or(u32::MAX))
    }

    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        welcomed: &mut bool,
    ) -> Result<SessionEnd, SessionError> {
        let address = self.config.orchestrator.address.clone();
        let timeout = self.config.orchestrator.connect_timeout;
        let channel = self.tls.channel(&address, timeout).await?;
        let mut client = WorkerGatewayClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let (tx, rx) = mpsc::channel(1024);
        let hello = self.hello();
        let credit = hello.max_in_flight;
        tx.send(pb::WorkerMessage {
            kind: Some(Up::Hello(hello)),
        })
        .await
        .map_err(|_| SessionError::Closed)?;
        let opened = tokio::time::timeout(
            timeout,
            client.session(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| SessionError::NoWelcome("the stream did not open in time"))?;
        let mut inbound = opened?.into_inner();
        let welcome = match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => return Err(SessionError::NoWelcome("timed out")),
            Ok(Err(status)) => return Err(status.into()),
            Ok(Ok(None)) => return Err(SessionError::Closed),
            Ok(Ok(Some(pb::OrchestratorMessage {
                kind: Some(Down::Welcome(w)),
            }))) => w,
            Ok(Ok(Some(_))) => {
                return Err(SessionError::NoWelcome("first message was not Welcome"));
            }
        };
        *welcomed = true;
        // The orchestrator's value is bounded: a zero or absurd interval
        // must not break the worker.
        let heartbeat = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
            .clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL);
        let span = tracing::info_span!("session", session_id = %welcome.session_id);
        async move {
            tracing::info!(
                identity = %welcome.worker_identity,
                credit,
                resending = self.outbox.len(),
                "connected to orchestrator"
            );
            for problem in &welcome.manifest_problems {
                tracing::warn!(task = %problem.name, version = %problem.version, reason = %problem.reason, "orchestrator will not dispatch this task");
            }
            let now = Instant::now();
            let mut live = Live {
                tx,
                credit,
                draining: false,
                drain_deadline: None,
                last_received: now,
                last_sent: now,
            };
            let pending: Vec<_> = self.outbox.iter().map(|(_, r)| r.clone()).collect();
            for result in pending {
                live.send(Up::Result(result)).await?;
            }
            self.pump(&mut live, &mut inbound, shutdown, heartbeat).await
        }
        .instrument(span)
        .await
    }

    async fn pump(
        &mut self,
        live: &mut Live,
        inbound: &mut tonic::Streaming<pb::OrchestratorMessage>,
        shutdown: &CancellationToken,
        heartbeat: Duration,
    ) -> Result<SessionEnd, SessionError> {
        let mut tick = tokio::time::interval(heartbeat / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if live.draining && self.running.is_empty() && self.outbox.is_empty() {
                tracing::info!("drained: every result acknowledged");
                return if shutdown.is_cancelled() {
                    Ok(SessionEnd::Drained)
                } else {
                    Err(SessionError::DrainedByOrchestrator)
                };
            }
            let drain_deadline = live.drain_deadline;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if live.drain_deadline.is_none() => {
                    live.drain_deadline = Some(tokio::time::Instant::now() + self.config.drain_grace);
                    if !live.draining {
                        self.start_draining(live, "worker shutting down").await?;
                    }
                }
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                    if self.running.is_empty() {
                        tracing::warn!(unacked = self.outbox.len(), "grace period over; closing with unacknowledged results");
                        return Ok(SessionEnd::Drained);
                    }
                    tracing::warn!(in_flight = self.running.len(), "grace period over; cancelling in-flight tasks");
                    self.running.values().for_each(CancellationToken::cancel);
                    live.drain_deadline = Some(tokio::time::Instant::now() + FINAL_ACK_WAIT);
                }
                message = inbound.message() => {
                    live.last_received = Instant::now();
                    match message? {
                        None => return Err(SessionError::Closed),
                        Some(pb::OrchestratorMessage { kind: Some(kind) }) => self.handle(live, kind).await?,
                        Some(_) => tracing::debug!("ignoring an empty message"),
                    }
                }
                Some(done) = self.done_rx.recv() => {
                    let held_slot = done.held_slot;
                    let result = self.record_done(done)?;
                    live.send(Up::Result(result)).await?;
                    if held_slot && !live.draining {
                        live.send(Up::Credit(pb::Credit { grant: 1 })).await?;
                        live.credit += 1;
                    }
                }
                _ = tick.tick() => {
                    let silent = live.last_received.elapsed();
                    if silent > heartbeat * 3 {
                        return Err(SessionError::HeartbeatTimeout(silent));
                    }
                    if live.last_sent.elapsed() >= heartbeat {
                        let in_flight = u32::try_from(self.running.len()).unwrap_or(u32::MAX);
                        live.send(Up::Heartbeat(pb::Heartbeat { sent_at: Some(SystemTime::now().into()), in_flight })).await?;
                    }
                }
            }
        }
    }

    async fn start_draining(&mut self, live: &mut Live, reason: &str) -> Result<(), SessionError> {
        tracing::info!(
            in_flight = self.running.len(),
            reason,
            "draining: no new work"
        );
        live.draining = true;
        live.send(Up::Draining(pb::Draining {
            reason: reason.to_string(),
        }))
        .await
    }

    async fn handle(&mut self, live: &mut Live, kind: Down) -> Result<(), SessionError> {
        match kind {
            Down::Assignment(assignment) => self.assign(live, assignment).await?,
            Down::ResultAck(ack) => {
                if let Some(task) = ack.task {
                    let key = (task.task_id, task.attempt);
                    self.outbox.retain(|(k, _)| *k != key);
                    self.remember_finished(key);
                }
            }
            Down::Cancel(cancel) => {
                if let Some(task) = cancel.task {
                    let key = (task.task_id, task.attempt);
                    if let Some(token) = self.running.get(&key) {
                        tracing::info!(task_id = %key.0, attempt = key.1, reason = %cancel.reason, "cancelling on request");
                        token.cancel();
                    }
                }
            }
            Down::Drain(drain) => {
                if !live.draining {
                    self.start_draining(live, &format!("orchestrator asked: {}", drain.reason))
                        .await?;
                }
            }
            Down::Heartbeat(_) => {}
            Down::Welcome(_) => tracing::warn!("ignoring a second Welcome"),
        }
        Ok(())
    }

    fn remember_finished(&mut self, key: AttemptKey) {
        if self.finished.insert(key.clone()) {
            self.finished_order.push_back(key);
            if self.finished_order.len() > REMEMBERED_ATTEMPTS
                && let Some(old) = self.finished_order.pop_front()
            {
                self.finished.remove(&old);
            }
        }
    }

    async fn assign(
        &mut self,
        live: &mut Live,
        message: pb::Assignment,
    ) -> Result<(), SessionError> {
        let key: AttemptKey = (message.task_id.clone(), message.attempt);
        let span = tracing::info_span!(
            "task",
            task_id = %message.task_id,
            attempt = message.attempt,
            plan_id = %message.plan_id,
            task = %message.task_name,
        );
        let _entered = span.enter();
        if self.running.contains_key(&key) || self.finished.contains(&key) {
            tracing::info!(
                "ignoring a re-delivered assignment: this attempt already ran or is running"
            );
            return Ok(());
        }
        if let Some((_, result)) = self.outbox.iter().find(|(k, _)| *k == key) {
            tracing::info!("re-delivered assignment already finished; re-sending its result");
            let result = result.clone();
            return live.send(Up::Result(result)).await;
        }
        live.send(Up::Accept(pb::Accept {
            task: Some(pb::TaskRef {
                task_id: key.0.clone(),
                attempt: key.1,
            }),
        }))
        .await?;
        let assignment = Assignment {
            task_id: message.task_id,
            attempt: message.attempt,
            plan_id: message.plan_id,
            task_name: message.task_name,
            task_version: message.task_version,
            inputs_json: message.inputs_json,
            deadline: message.deadline.and_then(|t| SystemTime::try_from(t).ok()),
        };
        let refusal = if live.draining {
            Some(TaskError::new(
                "draining",
                "the worker is draining and takes no new work",
            ))
        } else if live.credit == 0 {
            Some(TaskError::new(
                "credit_exceeded",
                "the orchestrator sent more assignments than the worker granted credit for",
            ))
        } else {
            None
        };
        let runner = self.runner.clone();
        let done_tx = self.done_tx.clone();
        drop(_entered);
        let held_slot = refusal.is_none();
        let cancel = CancellationToken::new();
        match &refusal {
            Some(error) => {
                tracing::warn!(parent: &span, code = error.code, "refusing assignment");
            }
            None => live.credit -= 1,
        }
        // A refusal in progress is held too: its result must be delivered
        // before a drain ends, and `Hello` must list it after a cut.
        self.running.insert(key.clone(), cancel.clone());
        tokio::spawn(
            async move {
                let report = match refusal {
                    Some(error) => runner.refuse(assignment, error).await,
                    None => runner.run(assignment, cancel).await,
                };
                let _ = done_tx.send(Done {
                    key,
                    held_slot,
                    result: report.map(to_proto),
                });
            }
            .instrument(span),
        );
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn outcome_to_proto(outcome: Outcome) -> pb::Outcome {
    match outcome {
        Outcome::Succeeded => pb::Outcome::Succeeded,
        Outcome::Failed => pb::Outcome::Failed,
        Outcome::Rejected => pb::Outcome::Rejected,
        Outcome::TimedOut => pb::Outcome::TimedOut,
        Outcome::Cancelled => pb::Outcome::Cancelled,
        Outcome::OutcomeUnknown => pb::Outcome::Unknown,
    }
}

fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| SystemTime::from(t).into())
}

fn audit_to_proto(record: &AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        task_id: record.task_id.clone(),
        attempt: record.attempt,
        plan_id: record.plan_id.clone(),
        task_name: record.task_name.clone(),
        task_version: record.task_version.clone(),
        inputs_json: record.inputs_json.clone(),
        output_json: record
            .output
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        received_at: timestamp(&record.received_at),
        started_at: record.started_at.as_deref().and_then(timestamp),
        finished_at: timestamp(&record.finished_at),
        outcome: outcome_to_proto(record.outcome).into(),
        error_code: record.error_code.clone().unwrap_or_default(),
        error_message: record.error_message.clone().unwrap_or_default(),
        worker_identity: record.worker_identity.clone(),
        sequence: record.sequence,
        prev_hash: record.prev_hash.clone(),
        record_hash: record.record_hash.clone(),
    }
}

fn to_proto(report: TaskReport) -> pb::TaskResult {
    pb::TaskResult {
        task: Some(pb::TaskRef {
            task_id: report.audit.task_id.clone(),
            attempt: report.audit.attempt,
        }),
        outcome: outcome_to_proto(report.outcome).into(),
        output_json: report
            .output
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        error_code: report
            .error
            .as_ref()
            .map(|e| e.code.to_string())
            .unwrap_or_default(),
        error_message: report.error.map(|e| e.message).unwrap_or_default(),
        audit: Some(audit_to_proto(&report.audit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CODES: [tonic::Code; 17] = [
        tonic::Code::Ok,
        tonic::Code::Cancelled,
        tonic::Code::Unknown,
        tonic::Code::InvalidArgument,
        tonic::Code::DeadlineExceeded,
        tonic::Code::NotFound,
        tonic::Code::AlreadyExists,
        tonic::Code::PermissionDenied,
        tonic::Code::ResourceExhausted,
        tonic::Code::FailedPrecondition,
        tonic::Code::Aborted,
        tonic::Code::OutOfRange,
        tonic::Code::Unimplemented,
        tonic::Code::Internal,
        tonic::Code::Unavailable,
        tonic::Code::DataLoss,
        tonic::Code::Unauthenticated,
    ];

    #[test]
    fn only_an_invalid_argument_status_is_fatal() {
        for code in ALL_CODES {
            let expected = match code {
                tonic::Code::InvalidArgument => Disposition::Fatal,
                _ => Disposition::Retry,
            };
            let error = SessionError::Status(tonic::Status::new(code, "x"));
            assert_eq!(classify(&error), expected, "{code:?}");
        }
    }

    #[test]
    fn transport_failures_retry_and_a_broken_audit_log_is_fatal() {
        assert_eq!(classify(&SessionError::Closed), Disposition::Retry);
        assert_eq!(
            classify(&SessionError::HeartbeatTimeout(Duration::from_secs(30))),
            Disposition::Retry
        );
        let audit = SessionError::Audit(AuditError::Io {
            path: "a".into(),
            source: std::io::Error::other("disk full"),
        });
        assert_eq!(classify(&audit), Disposition::Fatal);
    }

    #[test]
    fn audit_timestamps_convert_to_proto() {
        let t = timestamp("2026-11-25T10:00:00.5Z").unwrap();
        assert_eq!(t.nanos, 500_000_000);
        assert!(timestamp("yesterday").is_none());
    }
}
