//! What the worker is doing, visible from its host without an inbound
//! port: a status file, systemd notifications and, when the operator asks
//! for them, Prometheus metrics on loopback.
//!
//! The session reports into one [`StatusBoard`] (connected, disconnected,
//! a message heard, counts, a finished task, "the loop is alive"). One task
//! ([`spawn`]) turns the board into the outside views:
//! - the status file ([`Status`], JSON), replaced atomically every
//!   [`WRITE_INTERVAL`] and at once on a change of connection, and read by
//!   `private-worker status` ([`report`]);
//! - systemd notifications ([`crate::systemd`]): `READY=1` after the first
//!   `Welcome`, a `STATUS=` line on each change, `WATCHDOG=1` while the
//!   session loop proves itself alive, `STOPPING=1` when the drain starts;
//! - metrics ([`metrics`]), served only when `[metrics] listen` is set.
//!
//! What it does not do: decide anything about tasks or the stream (it only
//! observes), open any socket unless metrics are configured, or hold a
//! secret (errors come from the session's messages, which carry none, and
//! control characters are escaped).

pub mod metrics;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::kill_switch::KillSwitch;
use crate::shown::shown;
use crate::systemd::Notifier;

pub use report::{Certificate, Connection, KillSwitchState, Status};

/// How often the status file is rewritten when nothing changes. A reader
/// calls a file older than [`report::STALE_AFTER_WRITES`] times this stale.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the session loop proves itself alive while it waits.
pub const LIVENESS_TICK: Duration = Duration::from_secs(1);
/// Slack added to the connect timeout when deciding whether the session
/// loop is stalled (one dial step may take the whole connect timeout).
pub const STALL_MARGIN: Duration = Duration::from_secs(5);

/// Where the session reports; cheap to clone (clones share the board).
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the writer at once on a change worth showing.
    changed: Notify,
    metrics: metrics::Metrics,
}

/// The mutable half of the board.
struct State {
    status: Status,
    /// The last time the session loop proved itself alive.
    last_beat: Instant,
    /// `READY=1` was sent.
    ready_sent: bool,
    /// `STOPPING=1` was sent.
    stopping_sent: bool,
}

fn now_text() -> String {
    report::format_time(SystemTime::now())
}

/// Longest text from the wire the status keeps (a peer's session id or
/// error could otherwise fill the file every write).
pub const MAX_WIRE_TEXT: usize = 200;

fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_WIRE_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

impl StatusBoard {
    /// A board for the worker `identity` dialing `orchestrator`, in state
    /// `starting`.
    pub fn new(
        identity: &str,
        orchestrator: &str,
        kill_switch: &Path,
        certificate: Option<Certificate>,
        certificate_warning: Duration,
    ) -> Self {
        let now = now_text();
        let status = Status {
            format: report::STATUS_FORMAT,
            pid: std::process::id(),
            worker_version: env!("CARGO_PKG_VERSION").to_string(),
            identity: identity.to_string(),
            orchestrator: orchestrator.to_string(),
            connection: Connection::Starting,
            since: now.clone(),
            session_id: None,
            last_message_at: None,
            in_flight: 0,
            outbox: 0,
            reconnects: 0,
            draining: false,
            last_error: None,
            last_error_at: None,
            kill_switch: KillSwitchState {
                file: kill_switch.display().to_string(),
                on: kill_switch.exists(),
            },
            certificate,
            certificate_warning_s: certificate_warning.as_secs(),
            loop_turned_at: now.clone(),
            stall_limit_ms: 0,
            tasks: report::TaskCounts::default(),
            updated_at: now,
            write_interval_ms: u64::try_from(WRITE_INTERVAL.as_millis()).unwrap_or(u64::MAX),
        };
        StatusBoard {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    status,
                    last_beat: Instant::now(),
                    ready_sent: false,
                    stopping_sent: false,
                }),
                changed: Notify::new(),
                metrics: metrics::Metrics::default(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// A `Welcome` arrived: the stream `session_id` is up.
    pub fn connected(&self, session_id: &str) {
        self.with(|s| {
            s.status.connection = Connection::Connected;
            s.status.since = now_text();
            s.status.session_id = Some(bounded(&shown(session_id).to_string()));
            s.status.last_message_at = Some(now_text());
            s.last_beat = Instant::now();
        });
        self.inner.changed.notify_one();
    }

    /// The stream ended (or a dial failed) with `error`; the worker will
    /// dial again after a backoff.
    pub fn disconnected(&self, error: &str) {
        let was_connected = self.with(|s| {
            let was = s.status.connection == Connection::Connected;
            if s.status.connection != Connection::Disconnected {
                s.status.connection = Connection::Disconnected;
                s.status.since = now_text();
            }
            s.status.session_id = None;
            s.status.last_error = Some(bounded(&shown(error).to_string()));
            s.status.last_error_at = Some(now_text());
            s.last_beat = Instant::now();
            was
        });
        if was_connected {
            self.with(|s| s.status.reconnects += 1);
            self.inner.metrics.reconnects.inc();
        }
        self.inner.changed.notify_one();
    }

    /// A message arrived from the orchestrator (any kind: heartbeats too).
    pub fn heard(&self) {
        self.with(|s| s.status.last_message_at = Some(now_text()));
    }

    /// The drain started (shutdown or a fatal failure): no new work.
    pub fn draining(&self) {
        let first = self.with(|s| !std::mem::replace(&mut s.status.draining, true));
        if first {
            self.inner.changed.notify_one();
        }
    }

    /// The worker stopped; the last write says so.
    pub fn stopped(&self) {
        self.with(|s| {
            s.status.connection = Connection::Stopped;
            s.status.since = now_text();
            s.status.session_id = None;
        });
        self.inner.changed.notify_one();
    }

    /// Attempts running now and results waiting for acknowledgement.
    pub fn counts(&self, in_flight: usize, outbox: usize) {
        let (in_flight, outbox) = (in_flight as u64, outbox as u64);
        self.with(|s| {
            s.status.in_flight = in_flight;
            s.status.outbox = outbox;
        });
        self.inner.metrics.set_counts(
            in_flight.try_into().unwrap_or(i64::MAX),
            outbox.try_into().unwrap_or(i64::MAX),
        );
    }

    /// An attempt finished with `outcome` (the contract's name, e.g.
    /// `SUCCEEDED`) after `took`.
    pub fn task_finished(&self, outcome: &str, took: Duration) {
        self.with(|s| s.status.tasks.add(outcome));
        self.inner.metrics.task_finished(outcome, took);
    }

    /// The session loop is alive (called on every turn and at least every
    /// [`LIVENESS_TICK`] while it waits).
    pub fn beat(&self) {
        self.with(|s| s.last_beat = Instant::now());
    }

    /// The certificate now in use (after a rotation).
    pub fn set_certificate(&self, certificate: Certificate) {
        self.with(|s| s.status.certificate = Some(certificate));
        self.inner.changed.notify_one();
    }

    /// A copy of the status as it stands.
    pub fn snapshot(&self) -> Status {
        self.with(|s| s.status.clone())
    }

    /// The metrics registry's text form (Prometheus exposition format).
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }
}

impl From<&private_worker_identity::CertificateSummary> for Certificate {
    fn from(summary: &private_worker_identity::CertificateSummary) -> Self {
        Certificate {
            serial: summary.serial.clone(),
            not_after: summary.not_after_rfc3339.clone(),
        }
    }
}

/// Keeps the board's certificate equal to the one the worker dials with,
/// through rotations, until `stop`.
pub async fn follow_certificate(
    board: StatusBoard,
    mut certificates: tokio::sync::watch::Receiver<private_worker_identity::CertificateSummary>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = certificates.changed() => {
                if changed.is_err() {
                    return;
                }
                let certificate = (&*certificates.borrow_and_update()).into();
                board.set_certificate(certificate);
            }
        }
    }
}

/// Where the status goes and how the session loop's liveness is judged.
pub struct Outputs {
    /// The status file.
    pub file: PathBuf,
    /// The kill switch, checked at each write.
    pub kill_switch: KillSwitch,
    /// How long the session loop may go without a beat before the
    /// watchdog stops being fed: the connect timeout plus [`STALL_MARGIN`].
    pub stall_limit: Duration,
    /// systemd's notification socket, if the worker runs under systemd.
    pub notifier: Notifier,
}

/// Starts the task that writes the status file and talks to systemd until
/// `stop` is cancelled (then it writes once more and ends).
pub fn spawn(
    board: StatusBoard,
    outputs: Outputs,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(board, outputs, stop))
}

async fn run(board: StatusBoard, outputs: Outputs, stop: CancellationToken) {
    let period = outputs
        .notifier
        .watchdog_interval()
        .map_or(WRITE_INTERVAL, |w| (w / 2).min(WRITE_INTERVAL));
    if let Some(watchdog) = outputs.notifier.watchdog_interval()
        && watchdog < outputs.stall_limit
    {
        tracing::warn!(
            watchdog = ?watchdog,
            stall_limit = ?outputs.stall_limit,
            "systemd's WatchdogSec is shorter than orchestrator.connect_timeout plus 5 s: a slow dial may get the worker restarted"
        );
    }
    let mut publisher = Publisher {
        board: board.clone(),
        outputs,
        last_line: String::new(),
        write_failed: false,
    };
    loop {
        let stopping = stop.is_cancelled();
        // File writes and the fsync block: off the async threads.
        publisher = match tokio::task::spawn_blocking(move || {
            publisher.publish();
            publisher
        })
        .await
        {
            Ok(publisher) => publisher,
            Err(e) => {
                tracing::error!(error = %e, "the status writer failed; no more status updates");
                return;
            }
        };
        if stopping {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = board.inner.changed.notified() => {}
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// The status writer's state between rounds.
struct Publisher {
    board: StatusBoard,
    outputs: Outputs,
    /// The last `STATUS=` line sent.
    last_line: String,
    /// The last write failed (logged once until one succeeds).
    write_failed: bool,
}

impl Publisher {
    /// One round: refresh what the board cannot see by itself, write the
    /// file, tell systemd. Returns whether the watchdog was fed (the loop
    /// turned within the stall limit).
    fn publish(&mut self) -> bool {
        let (board, outputs) = (&self.board, &self.outputs);
        let (last_line, write_failed) = (&mut self.last_line, &mut self.write_failed);
        let on = outputs.kill_switch.is_on();
        let (status, alive, ready, stopping) = board.with(|s| {
            s.status.kill_switch.on = on;
            let now = SystemTime::now();
            s.status.updated_at = report::format_time(now);
            let since_turn = s.last_beat.elapsed();
            s.status.loop_turned_at =
                report::format_time(now.checked_sub(since_turn).unwrap_or(now));
            s.status.stall_limit_ms =
                u64::try_from(outputs.stall_limit.as_millis()).unwrap_or(u64::MAX);
            let alive = since_turn <= outputs.stall_limit;
            let ready = s.status.connection == Connection::Connected
                && !std::mem::replace(&mut s.ready_sent, true);
            let stopping = s.status.draining && !std::mem::replace(&mut s.stopping_sent, true);
            (s.status.clone(), alive, ready, stopping)
        });
        match report::write_atomically(&outputs.file, &status) {
            Ok(()) if *write_failed => {
                *write_failed = false;
                tracing::info!(file = %outputs.file.display(), "status file written again");
            }
            Ok(()) => {}
            Err(e) if !*write_failed => {
                *write_failed = true;
                tracing::warn!(file = %outputs.file.display(), error = %e, "cannot write the status file; `private-worker status` will call the worker stale until it can");
            }
            Err(_) => {}
        }
        let line = status.one_line();
        if ready {
            outputs.notifier.ready(&line);
        } else if line != *last_line {
            outputs.notifier.status(&line);
        }
        *last_line = line;
        if stopping {
            outputs.notifier.stopping();
        }
        if alive {
            outputs.notifier.watchdog();
        } else {
            tracing::error!(stall_limit = ?outputs.stall_limit, "the session loop has not turned for too long; no longer feeding systemd's watchdog");
        }
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(dir: &Path, board: &StatusBoard) -> Publisher {
        Publisher {
            board: board.clone(),
            outputs: Outputs {
                file: dir.join("status.json"),
                kill_switch: KillSwitch::new(dir.join("STOP")),
                stall_limit: Duration::from_secs(15),
                notifier: Notifier::default(),
            },
            last_line: String::new(),
            write_failed: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_turning_starves_the_watchdog_and_reads_as_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let board = StatusBoard::new(
            "spiffe://example.org/worker/w1",
            "orchestrator:443",
            &dir.path().join("STOP"),
            None,
            Duration::from_secs(86_400),
        );
        board.connected("session-1");
        let mut publisher = publisher(dir.path(), &board);
        let health = || {
            report::read(&dir.path().join("status.json"))
                .unwrap()
                .health(SystemTime::now())
        };

        assert!(
            publisher.publish(),
            "a loop that just turned feeds the watchdog"
        );
        assert!(health().is_healthy(), "{:?}", health());

        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!publisher.publish(), "20 s without a turn: no WATCHDOG=1");
        let stuck = health();
        assert_eq!(stuck.problems.len(), 1, "{stuck:?}");
        assert!(
            stuck.problems[0].starts_with("stuck: the session loop"),
            "{stuck:?}"
        );

        board.beat();
        assert!(publisher.publish());
        assert!(health().is_healthy(), "{:?}", health());
    }

    #[test]
    fn wire_text_in_the_status_is_bounded_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let board = StatusBoard::new("w", "o:1", &dir.path().join("STOP"), None, Duration::ZERO);
        board.connected(&format!("\u{1b}[31m{}", "x".repeat(10_000)));
        board.disconnected(&"e".repeat(10_000));
        let status = board.snapshot();
        assert!(status.last_error.unwrap().chars().count() <= MAX_WIRE_TEXT + 1);
        board.connected(&format!("\u{1b}[31m{}", "x".repeat(10_000)));
        let id = board.snapshot().session_id.unwrap();
        assert!(id.chars().count() <= MAX_WIRE_TEXT + 1, "{}", id.len());
        assert!(!id.contains('\u{1b}'), "{id}");
    }
}
