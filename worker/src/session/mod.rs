//! The session: one outbound stream to the orchestrator at a time, kept
//! alive across cuts, restarts of either side and crashes of the worker.
//!
//! # Layout
//! - this module: [`Worker::run`], the loop over streams; [`classify`], the
//!   one place that decides which failures end the worker; recovery of the
//!   journal at start; how an attempt is spawned and reported.
//! - [`stream`]: one stream: dial, `Hello`/`Welcome`, pump frames, decide
//!   what each assignment gets.
//! - [`ledger`]: the bookkeeping (held attempts, outbox, slots and credit,
//!   re-send timers, the drain rule) as plain data.
//! - [`wire`]: conversions between proto messages and the worker's types.
//!
//! Every attempt runs on its own task: it is written `received` to the
//! journal, then `Accept`ed, then run (the runner journals `started` before
//! the call), then its result is journaled `finished` and handed back here,
//! where it enters the outbox and goes up the current stream. A result
//! leaves the outbox only when the orchestrator acknowledges it, and only
//! then does its slot (one credit) come back. After a crash, the journal
//! gives back every unacknowledged result, every attempt that never started
//! (run again: nothing was called) and every attempt cut off mid-call
//! (reported `interrupted`, outcome unknown, unless the task is idempotent
//! in the local config, then run again with the same `Idempotency-Key`).
//!
//! What it does not do: interpret task payloads (the runner does), or run
//! anything the runner's checks refuse.

mod ledger;
mod stream;
pub mod wire;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use private_worker_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{AuditError, Record};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::journal::{JournalError, Recovered, Stage, Unfinished};
use crate::outcome::{ErrorCode, TaskError};
use crate::shown::shown;
use crate::status::{LIVENESS_TICK, StatusBoard};
use crate::task::{Assignment, Receipt, RecordError, Runner, StartGate};
use crate::tls::{ClientTls, DialError};

use ledger::{DrainStep, Ledger};
use wire::AttemptKey;

/// Largest message the worker sends or accepts (the contract's limit).
pub const MAX_MESSAGE_BYTES: usize = private_worker_proto::MAX_MESSAGE_BYTES;
/// Shortest heartbeat interval the worker accepts from `Welcome`.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest heartbeat interval the worker accepts from `Welcome`.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);

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
    /// The orchestrator broke the contract in a way that leaves this stream
    /// unusable (for example it kept sending work far beyond the credit);
    /// dial again.
    #[error("the orchestrator broke the contract: {0}")]
    Protocol(String),
    /// The local audit log could not be written: the worker must stop.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The local journal could not be written: the worker must stop.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A bug inside the worker (a panic in an attempt's bookkeeping): stop
    /// after draining, so the restart recovers from the journal.
    #[error("internal error: {0}")]
    Internal(String),
    /// A new worker certificate was taken from disk: the stream rolls over
    /// to a new connection at once (no backoff). In-flight tasks go on and
    /// their results go out on the next stream, as after a cut.
    #[error("certificate rotated: serial {old} -> {new}, rolling the stream over")]
    Rotated {
        /// Serial of the certificate this stream's connection presented.
        old: String,
        /// Serial of the certificate the next handshake presents.
        new: String,
    },
}

impl From<RecordError> for SessionError {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Audit(e) => SessionError::Audit(e),
            RecordError::Journal(e) => SessionError::Journal(e),
        }
    }
}

/// What to do after a session error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Wait a backoff and dial again.
    Retry,
    /// Stop the worker: drain what runs (like SIGTERM), then exit non-zero;
    /// retrying cannot help until the operator fixes the cause.
    Fatal,
}

/// The one place that decides which failures end the worker.
///
/// Network, TLS and gRPC failures are transient or fixable on the other
/// side (a re-issued certificate, a restarted orchestrator, an ingress
/// misrouting during a deploy, which shows as `Unimplemented`, a newer
/// stream of the same identity, which shows as `Aborted`), so they retry
/// with backoff. `InvalidArgument` means the orchestrator refuses this
/// worker's `Hello` as malformed: retrying the same bytes cannot help. A
/// broken local audit log or journal is fatal: the worker must not run
/// tasks it cannot record.
pub fn classify(error: &SessionError) -> Disposition {
    match error {
        SessionError::Status(status) => match status.code() {
            tonic::Code::InvalidArgument => Disposition::Fatal,
            _ => Disposition::Retry,
        },
        SessionError::Audit(_) | SessionError::Journal(_) | SessionError::Internal(_) => {
            Disposition::Fatal
        }
        SessionError::Dial(_)
        | SessionError::DrainedByOrchestrator
        | SessionError::Closed
        | SessionError::NoWelcome(_)
        | SessionError::HeartbeatTimeout(_)
        | SessionError::Protocol(_)
        | SessionError::Rotated { .. } => Disposition::Retry,
    }
}

/// Why the worker stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    /// A session failed in a way retrying cannot fix.
    #[error("fatal session error: {0}")]
    Session(#[from] SessionError),
}

/// What an attempt's task does once it owns the attempt.
enum Work {
    /// Run it (check, credential, call), if the start gate is open.
    Run(CancellationToken),
    /// Answer without running (a refusal, or a start too late).
    Answer(TaskError),
    /// Answer a later attempt of a task id that already ran here.
    Repeat {
        earlier_attempt: u32,
        earlier: Option<crate::journal::Summary>,
    },
    /// Report an attempt cut off mid-call by a crash.
    Interrupted,
}

/// How the attempt is recorded.
enum Intake {
    /// New on this stream: journal `received`, then send `Accept` here;
    /// journal `finished` at the end.
    Journal(mpsc::UnboundedSender<pb::WorkerMessage>),
    /// Already in the journal (recovered at start): journal `finished`.
    Recovered,
    /// A refusal: nothing is journaled and no `Accept` is sent (after a
    /// crash the orchestrator sees an attempt never accepted and assigns it
    /// again); the result lives in memory only, bounded by the ledger.
    Unjournaled,
}

/// A finished attempt on its way back to the session.
struct Done {
    key: AttemptKey,
    result: Result<pb::TaskResult, SessionError>,
}

/// What the journal and the audit log held at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Attempts not yet acknowledged, from the journal.
    pub unfinished: Unfinished,
    /// The last records of the audit log (see [`crate::audit::recent_records`]).
    pub audited: Vec<Record>,
}

/// A recovered attempt that may start only once the first `Welcome` says
/// how long the lease is.
struct Deferred {
    assignment: Assignment,
    received_at: Option<SystemTime>,
    cancel: CancellationToken,
}

/// How a wait while disconnected ended.
enum Waited {
    /// Time to dial again.
    Dial,
    /// The drain is over: stop.
    Stopped,
}

/// The worker: TLS identity, runner, and the state that outlives streams.
pub struct Worker {
    config: Config,
    tls: ClientTls,
    runner: Runner,
    instance_id: String,
    ledger: Ledger,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    recovery: Recovery,
    deferred: Vec<Deferred>,
    gate: StartGate,
    /// The first failure to record an attempt: the worker drains, then stops.
    failure: Option<SessionError>,
    /// Counts streams, so a result is sent at most once per stream.
    stream_generation: u64,
    /// Where the session reports what it is doing (status file, systemd,
    /// metrics).
    status: StatusBoard,
}

impl Worker {
    /// Builds a worker from its parts; `recovery` is what the journal and
    /// the audit log held at start.
    pub fn new(config: Config, tls: ClientTls, runner: Runner, recovery: Recovery) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let status = StatusBoard::new(
            tls.identity(),
            &config.orchestrator.address,
            &config.kill_switch,
            Some((&tls.certificate()).into()),
            config.tls_rotation.expiry_warning,
        );
        Worker {
            status,
            ledger: Ledger::new(config.max_in_flight),
            config,
            tls,
            runner,
            instance_id: uuid::Uuid::new_v4().to_string(),
            done_tx,
            done_rx,
            recovery,
            deferred: Vec::new(),
            gate: StartGate::default(),
            failure: None,
            stream_generation: 0,
        }
    }

    /// The board this worker reports its state into.
    pub fn status_board(&self) -> StatusBoard {
        self.status.clone()
    }

    /// Tells the board the loop is alive, with the current counts.
    fn report_progress(&self) {
        self.status.beat();
        self.status.counts(
            self.ledger.running_count(),
            self.ledger.unacknowledged_count(),
        );
        if self.ledger.is_draining() {
            self.status.draining();
        }
    }

    /// Runs streams until `shutdown` is cancelled and in-flight work has
    /// drained, or a fatal error (after draining the same way).
    ///
    /// # Errors
    /// [`FatalError`] when [`classify`] says a failure cannot be retried,
    /// or an attempt could not be recorded.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), FatalError> {
        self.resume_recovered().await?;
        // The TLS files are polled while the worker runs; the watch ends
        // with this function.
        let watch_stop = shutdown.child_token();
        let _watch_guard = watch_stop.clone().drop_guard();
        tokio::spawn(
            self.tls
                .clone()
                .watch(self.config.tls_rotation, watch_stop.clone()),
        );
        tokio::spawn(crate::status::follow_certificate(
            self.status.clone(),
            self.tls.subscribe(),
            watch_stop,
        ));
        let mut backoff = Backoff::new(
            self.config.orchestrator.reconnect_initial,
            self.config.orchestrator.reconnect_max,
        );
        loop {
            let mut welcomed = false;
            let error = match stream::run(&mut self, &shutdown, &mut welcomed).await {
                Ok(()) => return self.stopped(),
                Err(e) => e,
            };
            // A rotation's roll-over is not a loss: the next dial follows at
            // once, and a failure there reports itself.
            if !matches!(error, SessionError::Rotated { .. }) {
                self.status.disconnected(&error.to_string());
            }
            if classify(&error) == Disposition::Fatal {
                return self.fail(error, &shutdown).await;
            }
            if let SessionError::Rotated { .. } = &error {
                // A deliberate roll-over: dial again at once, with the new
                // certificate; nothing failed.
                tracing::info!("{error}");
                backoff.reset();
                if !shutdown.is_cancelled() {
                    continue;
                }
            }
            tracing::warn!(
                error = %shown(&error),
                in_flight = self.ledger.running_count(),
                unacknowledged = self.ledger.unacknowledged_count(),
                "session ended; will reconnect"
            );
            if welcomed {
                backoff.reset();
            }
            let until = (!shutdown.is_cancelled()).then(|| Instant::now() + backoff.next_delay());
            if let Some(at) = until {
                tracing::info!(delay = ?at.duration_since(Instant::now()), "reconnecting after backoff");
            }
            match self.wait_disconnected(&shutdown, until).await {
                Waited::Stopped => return self.stopped(),
                Waited::Dial => {}
            }
        }
    }

    /// A failure that retrying cannot fix: drain like SIGTERM, then stop.
    async fn fail(
        &mut self,
        error: SessionError,
        shutdown: &CancellationToken,
    ) -> Result<(), FatalError> {
        tracing::error!(error = %shown(&error), "stopping: this failure cannot be retried; draining first");
        self.ledger
            .start_drain(Instant::now(), self.config.drain_grace);
        self.wait_disconnected(shutdown, None).await;
        Err(error.into())
    }

    /// How the worker ends after a drain: with the first recording failure,
    /// if there was one.
    fn stopped(&mut self) -> Result<(), FatalError> {
        self.report_stop();
        match self.failure.take() {
            Some(failure) => Err(failure.into()),
            None => Ok(()),
        }
    }

    /// Waits while no stream is up: until `until` (then [`Waited::Dial`]),
    /// or, once a drain has started (shutdown or a failure), through the
    /// drain (then [`Waited::Stopped`]). Finished attempts enter the outbox
    /// meanwhile.
    async fn wait_disconnected(
        &mut self,
        shutdown: &CancellationToken,
        until: Option<Instant>,
    ) -> Waited {
        loop {
            if shutdown.is_cancelled() {
                self.ledger
                    .start_drain(Instant::now(), self.config.drain_grace);
            }
            self.report_progress();
            let wake = match self.ledger.drain_step(Instant::now(), false) {
                DrainStep::Finished => return Waited::Stopped,
                DrainStep::CancelRunning => {
                    tracing::warn!("grace period over; cancelling in-flight tasks");
                    continue;
                }
                DrainStep::WaitUntil(at) => at,
            };
            let dial_at = until.filter(|_| !self.ledger.is_draining());
            // Waking at least every LIVENESS_TICK keeps the watchdog fed.
            let wake = dial_at
                .map_or(wake, |u| u.min(wake))
                .min(Instant::now() + LIVENESS_TICK);
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !self.ledger.is_draining() => {}
                Some(done) = self.done_rx.recv() => { self.record_done(done); }
                _ = tokio::time::sleep_until(wake) => {
                    if dial_at.is_some_and(|u| Instant::now() >= u) {
                        return Waited::Dial;
                    }
                }
            }
        }
    }

    fn report_stop(&self) {
        let undelivered = self.ledger.unacknowledged_count();
        if undelivered > 0 {
            tracing::warn!(
                undelivered,
                "stopping with results the orchestrator has not acknowledged; they stay in the journal and are sent after the next start"
            );
        } else {
            tracing::info!("stopped: every result acknowledged");
        }
    }

    /// Moves a finished attempt into the outbox and returns its result. An
    /// attempt that could not be recorded is dropped from the ledger, and
    /// the first such failure starts the drain that ends the worker.
    fn record_done(&mut self, done: Done) -> Option<pb::TaskResult> {
        match done.result {
            Ok(result) => {
                self.ledger.finish(done.key, result.clone());
                Some(result)
            }
            Err(error) => {
                tracing::error!(task_id = %shown(&done.key.0), attempt = done.key.1, error = %shown(&error), "an attempt could not be recorded; the worker will drain and stop");
                self.ledger.forget(&done.key);
                self.ledger
                    .start_drain(Instant::now(), self.config.drain_grace);
                self.failure.get_or_insert(error);
                None
            }
        }
    }

    /// Puts what the journal held at start back to work: unacknowledged
    /// results into the outbox (rebuilt from the audit log when the crash
    /// came between the audit record and the journal), attempts cut off
    /// mid-call reported, never-started ones (and idempotent cut-off ones)
    /// held until the first `Welcome` says whether the lease still holds.
    async fn resume_recovered(&mut self) -> Result<(), FatalError> {
        let Recovery {
            unfinished,
            audited,
        } = std::mem::take(&mut self.recovery);
        let audited: HashMap<AttemptKey, Record> = audited
            .into_iter()
            .map(|r| ((r.task_id.clone(), r.attempt), r))
            .collect();
        let (mut results, mut deferred, mut answered) = (0, 0, 0);
        for Recovered {
            task_id,
            entry,
            assignment,
            result,
        } in unfinished
        {
            let key = (task_id, entry.attempt);
            if let Some(bytes) = result {
                match wire::decode(&bytes) {
                    Ok(result) => {
                        self.ledger.finish(key, result);
                        results += 1;
                    }
                    Err(e) => {
                        tracing::error!(task_id = %shown(&key.0), attempt = key.1, error = %shown(&e), "journal entry holds no readable result; it cannot be re-sent");
                    }
                }
                continue;
            }
            if let Some(record) = audited.get(&key) {
                // Audited just before the crash: that is how it ended.
                let result = wire::result(record);
                self.runner.journal().finished(
                    &key.0,
                    key.1,
                    wire::encode(&result),
                    wire::summary(&result),
                );
                self.ledger.finish(key, result);
                results += 1;
                continue;
            }
            let Some(assignment) = assignment else {
                tracing::error!(task_id = %shown(&key.0), attempt = key.1, stage = ?entry.stage, "journal entry is incomplete; skipping it");
                continue;
            };
            let idempotent = self.runner.is_idempotent(&assignment.task_name);
            let cancel = self.ledger.hold(key, true);
            match (entry.stage, entry.started_attempt) {
                (Stage::Received, Some(earlier_attempt)) if !idempotent => {
                    answered += 1;
                    let work = Work::Repeat {
                        earlier_attempt,
                        earlier: entry.summary,
                    };
                    self.spawn_attempt(assignment, work, Intake::Recovered);
                }
                (Stage::Started, _) if !idempotent => {
                    answered += 1;
                    self.spawn_attempt(assignment, Work::Interrupted, Intake::Recovered);
                }
                _ => {
                    deferred += 1;
                    self.deferred.push(Deferred {
                        assignment,
                        received_at: entry.received_at,
                        cancel,
                    });
                }
            }
        }
        if results + deferred + answered > 0 {
            tracing::info!(
                results,
                deferred,
                answered,
                "recovered from the journal: results will be re-sent; attempts not yet called wait for the orchestrator"
            );
        }
        Ok(())
    }

    /// After the first `Welcome`: starts the recovered attempts whose lease
    /// surely still holds (received less than `window` ago; the lease runs
    /// from the last message the orchestrator heard, which came later), and
    /// answers the others `lease_lost` without calling anything.
    fn start_deferred(&mut self, window: Duration) {
        for Deferred {
            assignment,
            received_at,
            cancel,
        } in std::mem::take(&mut self.deferred)
        {
            let fresh = received_at
                .and_then(|at| at.checked_add(window))
                .is_some_and(|until| SystemTime::now() < until);
            let work = if fresh {
                Work::Run(cancel)
            } else {
                Work::Answer(TaskError::new(
                    ErrorCode::LeaseLost,
                    "the worker restarted longer ago than its lease, so the task may belong to \
                     another worker now; the call was not sent",
                ))
            };
            self.spawn_attempt(assignment, work, Intake::Recovered);
        }
    }

    /// Runs one attempt on its own task: journal `received` and `Accept`
    /// (for a new one), the work, journal `finished`, then hand the result
    /// back. A panic in the work ends as an `OutcomeUnknown` result; a panic
    /// in the bookkeeping is a failure that stops the worker.
    fn spawn_attempt(&self, assignment: Assignment, work: Work, intake: Intake) {
        let runner = self.runner.clone();
        let gate = self.gate.clone();
        let done_tx = self.done_tx.clone();
        let status = self.status.clone();
        let began = Instant::now();
        // A new assignment arrives inside its own task span (stream.rs
        // enters it, under the session's): keep that one rather than
        // nesting a second copy of the same fields.
        let current = tracing::Span::current();
        let span = if current.metadata().is_some_and(|m| m.name() == "task") {
            current
        } else {
            assignment.span()
        };
        let key: AttemptKey = (assignment.task_id.clone(), assignment.attempt);
        tokio::spawn(
            async move {
                let result =
                    std::panic::AssertUnwindSafe(attempt(runner, assignment, work, intake, gate))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            Err(SessionError::Internal(
                                "the bookkeeping of an attempt panicked".into(),
                            ))
                        });
                if let Ok(result) = &result {
                    let outcome =
                        pb::Outcome::try_from(result.outcome).unwrap_or(pb::Outcome::Unknown);
                    status.task_finished(outcome.as_str_name(), began.elapsed());
                }
                let _ = done_tx.send(Done { key, result });
            }
            .instrument(span),
        );
    }
}

async fn attempt(
    runner: Runner,
    assignment: Assignment,
    work: Work,
    intake: Intake,
    gate: StartGate,
) -> Result<pb::TaskResult, SessionError> {
    let key: AttemptKey = (assignment.task_id.clone(), assignment.attempt);
    // Sends `Accept` once the attempt is on disk. A closed stream loses it;
    // the next Hello lists the attempt.
    let accept = |tx: mpsc::UnboundedSender<pb::WorkerMessage>, key: &AttemptKey| {
        let accept = pb::Accept {
            task: Some(wire::task_ref(key)),
        };
        move || {
            let _ = tx.send(pb::WorkerMessage {
                kind: Some(pb::worker_message::Kind::Accept(accept)),
            });
        }
    };
    let receipt = match (&intake, &work) {
        // A run records its receipt itself, with its start when it can.
        (Intake::Journal(tx), Work::Run(_)) => Receipt::New(Box::new(accept(tx.clone(), &key))),
        (Intake::Journal(tx), _) => {
            runner
                .journal()
                .received(assignment.clone(), false, None)
                .await?;
            accept(tx.clone(), &key)();
            Receipt::Recovered
        }
        (Intake::Recovered | Intake::Unjournaled, _) => Receipt::Recovered,
    };
    let copy = assignment.clone();
    let report = std::panic::AssertUnwindSafe(async {
        match work {
            Work::Run(cancel) => runner.run(assignment, cancel, &gate, receipt).await,
            Work::Answer(error) => runner.answer(assignment, error).await,
            Work::Repeat {
                earlier_attempt,
                earlier,
            } => runner.repeat(assignment, earlier_attempt, earlier).await,
            Work::Interrupted => runner.interrupted(assignment).await,
        }
    })
    .catch_unwind()
    .await;
    let report = match report {
        Ok(report) => report?,
        Err(_) => {
            tracing::error!("the task panicked; reporting its outcome as unknown");
            let error = TaskError::new(
                ErrorCode::Panicked,
                "the worker failed internally while running the task; its effect is unknown",
            );
            runner.answer(copy, error).await?
        }
    };
    let result = wire::result(&report.audit);
    if !matches!(intake, Intake::Unjournaled) {
        runner
            .journal()
            .finished(&key.0, key.1, wire::encode(&result), wire::summary(&result));
    }
    Ok(result)
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
    fn transport_failures_retry_and_a_broken_audit_log_or_journal_is_fatal() {
        assert_eq!(classify(&SessionError::Closed), Disposition::Retry);
        assert_eq!(
            classify(&SessionError::HeartbeatTimeout(Duration::from_secs(30))),
            Disposition::Retry
        );
        assert_eq!(
            classify(&SessionError::Protocol("x".into())),
            Disposition::Retry
        );
        let rotated = SessionError::Rotated {
            old: "01".into(),
            new: "02".into(),
        };
        assert_eq!(classify(&rotated), Disposition::Retry);
        let audit = SessionError::Audit(AuditError::Io {
            path: "a".into(),
            source: std::io::Error::other("disk full"),
        });
        assert_eq!(classify(&audit), Disposition::Fatal);
        let journal = SessionError::Journal(JournalError::Stopped("j".into()));
        assert_eq!(classify(&journal), Disposition::Fatal);
    }
}
