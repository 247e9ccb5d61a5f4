//! One stream: dial, `Hello`, `Welcome`, re-send what waits, then pump
//! frames until the stream fails, the orchestrator drains it, or a local
//! shutdown has drained.
//!
//! Sends never wait: outgoing messages go onto an unbounded channel whose
//! content is bounded by the ledger (at most one copy of each
//! unacknowledged result per stream, plus small control messages), so a
//! peer that stops reading can never block the heartbeat check or the
//! drain.
//!
//! What it does not do: run tasks (the worker's spawned attempts do) or
//! decide which failures are fatal ([`super::classify`]).

use std::time::{Duration, SystemTime};

use pb::orchestrator_message::Kind as Down;
use pb::worker_gateway_client::WorkerGatewayClient;
use pb::worker_message::Kind as Up;
use private_worker_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ledger::DrainStep;
use super::wire::{self, AttemptKey};
use super::{
    Intake, MAX_HEARTBEAT_INTERVAL, MAX_MESSAGE_BYTES, MIN_HEARTBEAT_INTERVAL, SessionError, Work,
    Worker,
};
use crate::config::DEFAULT_HEARTBEAT_INTERVAL;
use crate::journal::Stage;
use crate::outcome::{ErrorCode, TaskError};
use crate::shown::shown;

/// State of one live stream.
struct Live {
    tx: mpsc::UnboundedSender<pb::WorkerMessage>,
    /// Assignments the orchestrator may still send on this stream.
    ///
    /// The credit rule (worker.proto): the orchestrator's credit on a stream is
    /// `Hello.max_in_flight` plus every `Credit.grant` received on that stream minus
    /// every `Assignment` sent on it, and it never sends an assignment when that is
    /// zero; the worker grants one credit back when a `ResultAck` frees one of its
    /// slots.
    credit: u32,
    /// Whether `Draining` was sent on this stream.
    announced_drain: bool,
    /// The orchestrator asked this stream to drain.
    drained_by_orchestrator: bool,
    last_received: Instant,
    last_sent: Instant,
    /// How long after the last message heard calls may still start (the
    /// lease less a margin).
    start_window: Duration,
    /// This stream's number (see [`super::Ledger::mark_sent`]).
    generation: u64,
}

impl Live {
    fn send(&mut self, kind: Up) -> Result<(), SessionError> {
        self.last_sent = Instant::now();
        self.tx
            .send(pb::WorkerMessage { kind: Some(kind) })
            .map_err(|_| SessionError::Closed)
    }
}

/// Runs one stream to its end. `Ok(())` means a local shutdown drained.
pub(super) async fn run(
    worker: &mut Worker,
    shutdown: &CancellationToken,
    welcomed: &mut bool,
) -> Result<(), SessionError> {
    let address = worker.config.orchestrator.address.clone();
    let timeout = worker.config.orchestrator.connect_timeout;
    // Each step below takes at most `timeout`; a beat between them keeps
    // the watchdog fed through a slow dial (see crate::status).
    worker.status.beat();
    // Subscribed before the dial: a certificate taken during the handshake
    // still rolls this stream over.
    let mut rotated = worker.tls.subscribe();
    let dialed_with = rotated.borrow_and_update().serial.clone();
    let channel = worker.tls.channel(&address, timeout).await?;
    worker.status.beat();
    let mut client = WorkerGatewayClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (tx, rx) = mpsc::unbounded_channel();
    let hello = hello(worker);
    let credit = hello.max_in_flight;
    tx.send(pb::WorkerMessage {
        kind: Some(Up::Hello(hello)),
    })
    .map_err(|_| SessionError::Closed)?;
    let opened = tokio::time::timeout(
        timeout,
        client.session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| SessionError::NoWelcome("the stream did not open in time"))?;
    let mut inbound = opened?.into_inner();
    worker.status.beat();
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
    worker.status.connected(&welcome.session_id);
    // The orchestrator's value is bounded: a zero or absurd interval must
    // not break the worker.
    let heartbeat = welcome
        .heartbeat_interval
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
        .clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL);
    // The orchestrator settles this worker's attempts once it has not heard
    // from it for the lease; calls may start only well within that, so a
    // worker cut off makes no call the orchestrator may have given away.
    let lease = welcome
        .lease_timeout
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(heartbeat * 3);
    let start_window = lease.saturating_sub(heartbeat.min(lease / 2));
    worker.gate.open_until(SystemTime::now() + start_window);
    worker.start_deferred(start_window);
    worker.stream_generation += 1;
    let generation = worker.stream_generation;
    // Wire text is logged with `?` or `shown` (crate::shown) so control
    // characters are escaped.
    let span = tracing::info_span!("session", session_id = ?welcome.session_id);
    async move {
        tracing::info!(
            identity = ?welcome.worker_identity,
            credit,
            resending = worker.ledger.unacknowledged_count(),
            "connected to orchestrator"
        );
        for problem in &welcome.manifest_problems {
            tracing::warn!(task = ?problem.name, version = ?problem.version, reason = ?problem.reason, "orchestrator will not dispatch this task");
        }
        let now = Instant::now();
        let mut live = Live {
            tx,
            credit,
            announced_drain: false,
            drained_by_orchestrator: false,
            last_received: now,
            last_sent: now,
            start_window,
            generation,
        };
        for result in worker.ledger.all_unacknowledged(generation) {
            live.send(Up::Result(result))?;
        }
        let rotation = Rotation {
            changes: &mut rotated,
            dialed_with,
        };
        pump(worker, &mut live, &mut inbound, shutdown, heartbeat, rotation).await
    }
    .instrument(span)
    .await
}

fn hello(worker: &Worker) -> pb::Hello {
    let manifest = worker
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
        max_in_flight: if worker.ledger.is_draining() {
            0
        } else {
            worker.ledger.free_slots()
        },
        pending_results: worker
            .ledger
            .unacknowledged_keys()
            .iter()
            .map(wire::task_ref)
            .collect(),
        instance_id: worker.instance_id.clone(),
        running: worker
            .ledger
            .running_keys()
            .iter()
            .map(wire::task_ref)
            .collect(),
    }
}

/// The worker certificate this stream's connection presented, and the
/// channel that says when a new one was taken.
struct Rotation<'a> {
    changes: &'a mut tokio::sync::watch::Receiver<private_worker_identity::CertificateSummary>,
    dialed_with: String,
}

async fn pump(
    worker: &mut Worker,
    live: &mut Live,
    inbound: &mut tonic::Streaming<pb::OrchestratorMessage>,
    shutdown: &CancellationToken,
    heartbeat: Duration,
    rotation: Rotation<'_>,
) -> Result<(), SessionError> {
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut liveness = tokio::time::interval(crate::status::LIVENESS_TICK);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if worker.ledger.is_draining() {
        announce_drain(live, "worker shutting down")?;
    }
    loop {
        worker.report_progress();
        let drain_wake = match worker.ledger.drain_step(Instant::now(), true) {
            DrainStep::Finished if worker.ledger.is_draining() => {
                close_gracefully(live, inbound).await;
                worker.report_stop();
                return Ok(());
            }
            DrainStep::CancelRunning => {
                tracing::warn!(
                    in_flight = worker.ledger.running_count(),
                    "grace period over; cancelling in-flight tasks"
                );
                continue;
            }
            DrainStep::WaitUntil(at) => at,
            DrainStep::Finished => unreachable!("a drain step finishes only while draining"),
        };
        if live.drained_by_orchestrator
            && worker.ledger.running_count() == 0
            && worker.ledger.unacknowledged_count() == 0
        {
            tracing::info!("drained: every result acknowledged");
            close_gracefully(live, inbound).await;
            return Err(SessionError::DrainedByOrchestrator);
        }
        let resend_at = worker.ledger.next_resend();
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !worker.ledger.is_draining() => {
                worker.ledger.start_drain(Instant::now(), worker.config.drain_grace);
                announce_drain(live, "worker shutting down")?;
            }
            _ = tokio::time::sleep_until(drain_wake) => {}
            // A new certificate: roll over to a new connection, unless the
            // stream is ending anyway. In-flight tasks go on; their results
            // go out on the next stream (as after a cut).
            changed = rotation.changes.changed(), if !worker.ledger.is_draining() && !live.drained_by_orchestrator => {
                if changed.is_ok() {
                    let new = rotation.changes.borrow_and_update().serial.clone();
                    if new != rotation.dialed_with {
                        return Err(SessionError::Rotated { old: rotation.dialed_with, new });
                    }
                }
            }
            // Before reading more: results are bounded by the slots, while
            // a peer could keep the inbound side busy for ever.
            Some(done) = worker.done_rx.recv() => {
                let key = done.key.clone();
                match worker.record_done(done) {
                    Some(result) => {
                        worker.ledger.mark_sent(&key, live.generation);
                        live.send(Up::Result(result))?;
                    }
                    None => {
                        if let Some(failure) = worker.failure.take() {
                            return Err(failure);
                        }
                    }
                }
            }
            message = inbound.message() => {
                live.last_received = Instant::now();
                worker.status.heard();
                worker.gate.open_until(SystemTime::now() + live.start_window);
                match message? {
                    None => return Err(SessionError::Closed),
                    Some(pb::OrchestratorMessage { kind: Some(kind) }) => handle(worker, live, kind)?,
                    Some(_) => tracing::debug!("ignoring an empty message"),
                }
            }
            _ = sleep_until_opt(resend_at), if resend_at.is_some() => {
                for result in worker.ledger.take_due(Instant::now(), live.generation) {
                    live.send(Up::Result(result))?;
                }
            }
            // Proves the loop alive to the status board (and systemd's watchdog).
            _ = liveness.tick() => {}
            _ = tick.tick() => {
                let silent = live.last_received.elapsed();
                if silent > heartbeat * 3 {
                    return Err(SessionError::HeartbeatTimeout(silent));
                }
                if live.last_sent.elapsed() >= heartbeat {
                    let in_flight = u32::try_from(worker.ledger.running_count()).unwrap_or(u32::MAX);
                    live.send(Up::Heartbeat(pb::Heartbeat { sent_at: Some(SystemTime::now().into()), in_flight }))?;
                }
            }
        }
    }
}

fn announce_drain(live: &mut Live, reason: &str) -> Result<(), SessionError> {
    if live.announced_drain {
        return Ok(());
    }
    tracing::info!(reason, "draining: no new work");
    live.announced_drain = true;
    live.send(Up::Draining(pb::Draining {
        reason: reason.to_string(),
    }))
}

fn handle(worker: &mut Worker, live: &mut Live, kind: Down) -> Result<(), SessionError> {
    match kind {
        Down::Assignment(message) => assign(worker, live, message)?,
        Down::ResultAck(ack) => {
            let Some(key) = wire::attempt_key(ack.task) else {
                return Ok(());
            };
            if let Some(freed_slot) = worker.ledger.acknowledge(&key) {
                worker.runner.journal().acknowledged(&key.0, key.1);
                // Never more credit out than free slots, whatever was held
                // before (a smaller max_in_flight after a restart).
                let room = live.credit + worker.ledger.slots_held() < worker.config.max_in_flight;
                if freed_slot && room {
                    grant(worker, live)?;
                }
            }
        }
        Down::ResultRefused(refused) => {
            if let Some(key) = wire::attempt_key(refused.task) {
                tracing::warn!(task_id = ?key.0, attempt = key.1, reason = ?refused.reason, "the orchestrator could not store a result; sending it again later");
                worker.ledger.refused(&key, Instant::now());
            }
        }
        Down::Cancel(cancel) => {
            if let Some(key) = wire::attempt_key(cancel.task)
                && worker.ledger.cancel(&key)
            {
                tracing::info!(task_id = ?key.0, attempt = key.1, reason = ?cancel.reason, "cancelling on request");
            }
        }
        Down::Drain(drain) => {
            if !live.drained_by_orchestrator {
                live.drained_by_orchestrator = true;
                announce_drain(live, &format!("orchestrator asked: {:?}", drain.reason))?;
            }
        }
        Down::Heartbeat(_) => {}
        Down::Welcome(_) => tracing::warn!("ignoring a second Welcome"),
    }
    Ok(())
}

/// Sends one credit, unless no more work is wanted on this stream.
fn grant(worker: &Worker, live: &mut Live) -> Result<(), SessionError> {
    if worker.ledger.is_draining() || live.drained_by_orchestrator {
        return Ok(());
    }
    live.credit += 1;
    live.send(Up::Credit(pb::Credit { grant: 1 }))
}

/// Decides what one assignment gets: nothing (a re-delivery of an attempt
/// held or already acknowledged, or ids beyond the contract; its credit is
/// given back), its result again, a refusal, the earlier outcome of a task
/// id that already ran, or a run.
fn assign(
    worker: &mut Worker,
    live: &mut Live,
    message: pb::Assignment,
) -> Result<(), SessionError> {
    // The orchestrator spent one credit on it, unless it ignored the credit.
    let within_credit = live.credit > 0;
    let ignore = |worker: &Worker, live: &mut Live| {
        if within_credit {
            live.credit -= 1;
            grant(worker, live)?;
        }
        Ok(())
    };
    let assignment = match wire::assignment(message) {
        Ok(assignment) => assignment,
        Err(why) => {
            tracing::warn!(reason = %shown(&why), "ignoring an assignment that breaks the contract's id rules; it is not accepted");
            return ignore(worker, live);
        }
    };
    let key: AttemptKey = (assignment.task_id.clone(), assignment.attempt);
    let _span = assignment.span().entered();
    if worker.ledger.is_running(&key) {
        tracing::info!("ignoring a re-delivered assignment: this attempt is running");
        return ignore(worker, live);
    }
    if let Some(result) = worker.ledger.unacknowledged(&key) {
        let result = result.clone();
        if !worker.ledger.mark_sent(&key, live.generation) {
            tracing::info!("re-delivered assignment already finished; re-sending its result");
            live.send(Up::Result(result))?;
        }
        return ignore(worker, live);
    }
    let known = worker.runner.journal().lookup(&key.0)?;
    if let Some(entry) = &known
        && entry.attempt >= key.1
    {
        // Acknowledged (the orchestrator stored its result), or a stale
        // attempt older than one this worker already took.
        tracing::info!(stage = ?entry.stage, latest_attempt = entry.attempt, "ignoring a re-delivered assignment: this attempt already ended here");
        return ignore(worker, live);
    }
    let refusal = if worker.ledger.is_draining() || live.drained_by_orchestrator {
        Some(TaskError::new(
            ErrorCode::Draining,
            "the worker is draining and takes no new work",
        ))
    } else if !within_credit {
        Some(TaskError::new(
            ErrorCode::CreditExceeded,
            "the orchestrator sent more assignments than the worker granted credit for",
        ))
    } else {
        None
    };
    if let Some(error) = refusal {
        if !worker.ledger.has_room_for_refusal() {
            return Err(SessionError::Protocol(format!(
                "assignments keep arriving beyond the credit while {} refusals wait for acknowledgement",
                super::ledger::MAX_REFUSALS_HELD
            )));
        }
        tracing::warn!(code = %error.code, "refusing assignment");
        if within_credit {
            live.credit -= 1;
        }
        worker.ledger.hold(key, false);
        worker.spawn_attempt(assignment, Work::Answer(error), Intake::Unjournaled);
        return Ok(());
    }
    live.credit -= 1;
    if let Some(held) = worker.ledger.held_attempt_of(&key.0) {
        // Its journal entry must stay: the refusal is not journaled.
        let error = TaskError::new(
            ErrorCode::AttemptInProgress,
            format!(
                "attempt {held} of this task id is still held by this worker (running, or its result not yet acknowledged)"
            ),
        );
        tracing::warn!(code = %error.code, "refusing assignment");
        worker.ledger.hold(key, true);
        worker.spawn_attempt(assignment, Work::Answer(error), Intake::Unjournaled);
        return Ok(());
    }
    let intake = Intake::Journal(live.tx.clone());
    match known {
        Some(entry)
            if entry.ever_started() && !worker.runner.is_idempotent(&assignment.task_name) =>
        {
            let earlier_attempt = entry.started_attempt.unwrap_or(entry.attempt);
            tracing::warn!(
                earlier_attempt,
                "this task id already started here and is not idempotent; answering with its earlier outcome instead of running it again"
            );
            let earlier = match entry.stage {
                Stage::Finished | Stage::Acknowledged => entry.summary,
                Stage::Received | Stage::Started => None,
            };
            worker.ledger.hold(key, true);
            let work = Work::Repeat {
                earlier_attempt,
                earlier,
            };
            worker.spawn_attempt(assignment, work, intake);
        }
        _ => {
            let cancel = worker.ledger.hold(key, true);
            worker.spawn_attempt(assignment, Work::Run(cancel), intake);
        }
    }
    Ok(())
}

/// Longest wait for the orchestrator to end its side after a drain.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Ends this side of the stream after what is already queued (`Draining`,
/// the last results) and waits up to [`CLOSE_WAIT`] for the orchestrator to
/// end its side. Dropping the stream at once would cancel it, and with it
/// messages still queued: an idle worker's `Draining` never arrived.
async fn close_gracefully(
    live: &mut Live,
    inbound: &mut tonic::Streaming<pb::OrchestratorMessage>,
) {
    // Replacing the sender drops the stream's only one: the request stream
    // ends once the queued messages are written.
    live.tx = mpsc::unbounded_channel().0;
    let rest = async { while let Ok(Some(_)) = inbound.message().await {} };
    if tokio::time::timeout(CLOSE_WAIT, rest).await.is_err() {
        tracing::debug!("the orchestrator did not end the stream in time; closing it");
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
