//! The status file's content and how it is read: the [`Status`] record
//! (JSON, format [`STATUS_FORMAT`]), its atomic write, and the health
//! verdict and text that `private-worker status` prints.
//!
//! What it does not do: gather the figures (the [`super::StatusBoard`]
//! does) or talk to the worker process (the file is the only channel, so
//! the worker needs no socket for it).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The status file's format version; a reader refuses other versions.
pub const STATUS_FORMAT: u32 = 1;
/// A status file not rewritten for this many write intervals is stale: the
/// worker is not running, or is stuck.
pub const STALE_AFTER_WRITES: u32 = 5;

/// Where the worker's stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// Started, no stream yet.
    Starting,
    /// A stream is up (a `Welcome` arrived).
    Connected,
    /// No stream; the worker dials again after a backoff.
    Disconnected,
    /// The worker stopped.
    Stopped,
}

/// The kill switch's file and whether it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitchState {
    /// The file whose presence refuses every assignment.
    pub file: String,
    /// Whether it existed at the last write.
    pub on: bool,
}

/// The worker certificate in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Serial number, hex.
    pub serial: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
}

/// Finished attempts since the worker started, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// `SUCCEEDED`.
    pub succeeded: u64,
    /// `FAILED`.
    pub failed: u64,
    /// `REJECTED` (refused; nothing ran).
    pub rejected: u64,
    /// `TIMED_OUT` before the call.
    pub timed_out: u64,
    /// `CANCELLED` before the call.
    pub cancelled: u64,
    /// `OUTCOME_UNKNOWN`.
    pub outcome_unknown: u64,
}

impl TaskCounts {
    /// Counts one attempt with the contract's outcome name.
    pub fn add(&mut self, outcome: &str) {
        let slot = match outcome {
            "SUCCEEDED" => &mut self.succeeded,
            "FAILED" => &mut self.failed,
            "REJECTED" => &mut self.rejected,
            "TIMED_OUT" => &mut self.timed_out,
            "CANCELLED" => &mut self.cancelled,
            _ => &mut self.outcome_unknown,
        };
        *slot += 1;
    }
}

/// The status file's content. Every text that came from the wire is
/// already escaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// [`STATUS_FORMAT`].
    pub format: u32,
    /// The worker's process id.
    pub pid: u32,
    /// The worker's version.
    pub worker_version: String,
    /// The worker's identity (its certificate's URI SAN).
    pub identity: String,
    /// The orchestrator address dialed.
    pub orchestrator: String,
    /// Where the stream stands.
    pub connection: Connection,
    /// Since when (RFC 3339).
    pub since: String,
    /// The current stream's session id, when connected.
    pub session_id: Option<String>,
    /// When the last message from the orchestrator arrived (heartbeats
    /// included).
    pub last_message_at: Option<String>,
    /// Attempts running now.
    pub in_flight: u64,
    /// Results waiting for the orchestrator's acknowledgement.
    pub outbox: u64,
    /// Streams lost since the start.
    pub reconnects: u64,
    /// The worker is draining (shutting down or stopping on a failure).
    pub draining: bool,
    /// The last reason a stream ended or a dial failed.
    pub last_error: Option<String>,
    /// When that happened.
    pub last_error_at: Option<String>,
    /// The local kill switch.
    pub kill_switch: KillSwitchState,
    /// The worker certificate in use.
    pub certificate: Option<Certificate>,
    /// `tls.expiry_warning` in seconds: a certificate that ends sooner is
    /// a warning (the exit code stays 0 until it has expired).
    pub certificate_warning_s: u64,
    /// Finished attempts by outcome since the start.
    pub tasks: TaskCounts,
    /// When the session loop last proved itself alive (it turns at least
    /// once a second, and between the steps of a dial).
    pub loop_turned_at: String,
    /// How long the loop may go without turning before the worker counts
    /// as stuck: `orchestrator.connect_timeout` plus 5 s, in milliseconds.
    pub stall_limit_ms: u64,
    /// When this file was written.
    pub updated_at: String,
    /// How often the worker rewrites it, in milliseconds.
    pub write_interval_ms: u64,
}

/// Formats a time as RFC 3339 in UTC, to the second.
pub fn format_time(at: SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok().map(Into::into)
}

/// Writes `status` to `path` so that a reader sees the old file or the new
/// one, never a part: a temporary file in the same directory, then a
/// rename over the old one.
///
/// # Errors
/// The I/O error (a missing directory, a full disk).
pub fn write_atomically(path: &Path, status: &Status) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&text)?;
    // On disk before the rename: after a power cut the file is the old
    // status or the new one, never empty.
    file.sync_data()?;
    std::fs::rename(&temporary, path)
}

/// Why the status file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file does not exist or cannot be read.
    #[error(
        "cannot read the status file {path}: {source} (is the worker running with this config, and may this user read its state directory?)"
    )]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a status this version understands.
    #[error("{path} is not a status file this version reads: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads a status file.
///
/// # Errors
/// [`ReadError`] naming the file.
pub fn read(path: &Path) -> Result<Status, ReadError> {
    let text = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let status: Status = serde_json::from_slice(&text).map_err(|e| ReadError::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if status.format != STATUS_FORMAT {
        return Err(ReadError::Format {
            path: path.display().to_string(),
            message: format!(
                "format {} (this version reads {STATUS_FORMAT})",
                status.format
            ),
        });
    }
    Ok(status)
}

/// The verdict on a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// What makes the worker unhealthy; empty when healthy.
    pub problems: Vec<String>,
    /// What deserves attention without making it unhealthy.
    pub warnings: Vec<String>,
}

impl Health {
    /// No problems.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

fn ago(now: SystemTime, at: &str) -> Option<Duration> {
    parse_time(at).map(|at| now.duration_since(at).unwrap_or_default())
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

impl Status {
    /// Judges the status as of `now`: healthy means connected, kill switch
    /// off, certificate not expired, and the file fresh (written within
    /// [`STALE_AFTER_WRITES`] intervals).
    pub fn health(&self, now: SystemTime) -> Health {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let interval = Duration::from_millis(self.write_interval_ms.max(1));
        match ago(now, &self.updated_at) {
            Some(age)
                if age > interval * STALE_AFTER_WRITES
                    && self.connection != Connection::Stopped =>
            {
                problems.push(format!(
                    "stale: the worker (pid {}) last wrote its status {} ago; it is not running or is stuck",
                    self.pid,
                    human(age)
                ));
            }
            Some(_) => {}
            None => problems.push(format!("unreadable update time `{}`", self.updated_at)),
        }
        if self.connection != Connection::Stopped
            && let (Some(turned), Some(written)) = (
                parse_time(&self.loop_turned_at),
                parse_time(&self.updated_at),
            )
        {
            let quiet = written.duration_since(turned).unwrap_or_default();
            // Whole seconds on both sides: allow one for rounding.
            if quiet > Duration::from_millis(self.stall_limit_ms) + Duration::from_secs(1) {
                problems.push(format!(
                    "stuck: the session loop had not turned for {} when the status was written (limit {}); systemd's watchdog, if set, restarts it",
                    human(quiet),
                    human(Duration::from_millis(self.stall_limit_ms))
                ));
            }
        }
        match self.connection {
            Connection::Connected => {}
            Connection::Starting => problems.push("not connected yet (starting)".into()),
            Connection::Disconnected => problems.push(format!(
                "disconnected since {}{}",
                self.since,
                self.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            Connection::Stopped => problems.push(format!("stopped at {}", self.since)),
        }
        if self.kill_switch.on {
            problems.push(format!(
                "kill switch is ON ({} exists): every assignment is refused",
                self.kill_switch.file
            ));
        }
        if self.draining && self.connection != Connection::Stopped {
            warnings.push("draining: the worker takes no new work".into());
        }
        if let Some(cert) = &self.certificate
            && let Some(not_after) = parse_time(&cert.not_after)
        {
            match not_after.duration_since(now) {
                Err(_) => problems.push(format!(
                    "the worker certificate (serial {}) expired at {}",
                    cert.serial, cert.not_after
                )),
                Ok(left) if left < Duration::from_secs(self.certificate_warning_s) => warnings.push(format!(
                    "the worker certificate (serial {}) expires in {} ({}); renew it (certs-tool renew)",
                    cert.serial,
                    human(left),
                    cert.not_after
                )),
                Ok(_) => {}
            }
        }
        Health { problems, warnings }
    }

    /// One line for systemd's `STATUS=` (what `systemctl status` shows).
    pub fn one_line(&self) -> String {
        let state = match self.connection {
            Connection::Starting => format!("connecting to {}", self.orchestrator),
            Connection::Connected => format!("connected to {}", self.orchestrator),
            Connection::Disconnected => format!(
                "disconnected from {}{}",
                self.orchestrator,
                self.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            Connection::Stopped => "stopped".into(),
        };
        let kill = if self.kill_switch.on {
            "; KILL SWITCH ON"
        } else {
            ""
        };
        let draining = if self.draining { "; draining" } else { "" };
        format!(
            "{state}; in flight {}, outbox {}{kill}{draining}",
            self.in_flight, self.outbox
        )
    }

    /// The text `private-worker status` prints for a person.
    pub fn render(&self, now: SystemTime) -> String {
        let when = |at: &str| match ago(now, at) {
            Some(d) => format!("{at} ({} ago)", human(d)),
            None => at.to_string(),
        };
        let mut out = format!(
            "private-worker {} (pid {}, version {})\n",
            self.identity, self.pid, self.worker_version
        );
        let mut row = |name: &str, value: String| {
            out.push_str(&format!("  {name:<13} {value}\n"));
        };
        row("orchestrator", self.orchestrator.clone());
        let connection = match self.connection {
            Connection::Starting => "starting",
            Connection::Connected => "connected",
            Connection::Disconnected => "disconnected",
            Connection::Stopped => "stopped",
        };
        let session = self
            .session_id
            .as_deref()
            .map(|s| format!(", session {s}"))
            .unwrap_or_default();
        row(
            "connection",
            format!("{connection} since {}{session}", when(&self.since)),
        );
        if let Some(at) = &self.last_message_at {
            row("last message", when(at));
        }
        row("in flight", self.in_flight.to_string());
        row(
            "outbox",
            format!("{} result(s) waiting for acknowledgement", self.outbox),
        );
        row("reconnects", self.reconnects.to_string());
        if let Some(error) = &self.last_error {
            let at = self
                .last_error_at
                .as_deref()
                .map(|at| format!(" (at {at})"))
                .unwrap_or_default();
            row("last error", format!("{error}{at}"));
        }
        row(
            "kill switch",
            format!(
                "{} ({})",
                if self.kill_switch.on { "ON" } else { "off" },
                self.kill_switch.file
            ),
        );
        if let Some(cert) = &self.certificate {
            row(
                "certificate",
                format!("serial {}, expires {}", cert.serial, cert.not_after),
            );
        }
        let t = &self.tasks;
        row(
            "tasks",
            format!(
                "{} succeeded, {} failed, {} rejected, {} timed out, {} cancelled, {} outcome unknown",
                t.succeeded, t.failed, t.rejected, t.timed_out, t.cancelled, t.outcome_unknown
            ),
        );
        row("updated", when(&self.updated_at));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(connection: Connection) -> Status {
        Status {
            format: STATUS_FORMAT,
            pid: 7,
            worker_version: "0.1.0".into(),
            identity: "spiffe://example.org/worker/w1".into(),
            orchestrator: "orchestrator.example.org:443".into(),
            connection,
            since: "2026-12-02T10:00:00Z".into(),
            session_id: None,
            last_message_at: None,
            in_flight: 0,
            outbox: 0,
            reconnects: 0,
            draining: false,
            last_error: Some("TCP connect failed".into()),
            last_error_at: None,
            kill_switch: KillSwitchState {
                file: "/var/lib/private-worker/STOP".into(),
                on: false,
            },
            certificate: Some(Certificate {
                serial: "0a".into(),
                not_after: "2027-12-02T10:00:00Z".into(),
            }),
            certificate_warning_s: 14 * 24 * 3600,
            tasks: TaskCounts::default(),
            loop_turned_at: "2026-12-02T10:00:09Z".into(),
            stall_limit_ms: 15_000,
            updated_at: "2026-12-02T10:00:10Z".into(),
            write_interval_ms: 2000,
        }
    }

    fn at(text: &str) -> SystemTime {
        parse_time(text).unwrap()
    }

    #[test]
    fn a_fresh_connected_status_is_healthy() {
        let health = status(Connection::Connected).health(at("2026-12-02T10:00:11Z"));
        assert!(health.is_healthy(), "{health:?}");
        assert!(health.warnings.is_empty(), "{health:?}");
    }

    #[test]
    fn disconnected_kill_switch_stale_and_expired_each_make_it_unhealthy() {
        let now = at("2026-12-02T10:00:11Z");
        let health = status(Connection::Disconnected).health(now);
        assert!(
            health.problems[0]
                .contains("disconnected since 2026-12-02T10:00:00Z: TCP connect failed")
        );
        let mut killed = status(Connection::Connected);
        killed.kill_switch.on = true;
        let health = killed.health(now);
        assert_eq!(health.problems.len(), 1);
        assert!(
            health.problems[0].contains("kill switch is ON"),
            "{health:?}"
        );
        let stale = status(Connection::Connected).health(at("2026-12-02T10:01:00Z"));
        assert!(
            stale.problems[0].starts_with("stale: the worker (pid 7)"),
            "{stale:?}"
        );
        let expired = status(Connection::Connected);
        let health = expired.health(at("2027-12-02T10:00:05Z"));
        assert!(
            health.problems.iter().any(|p| p.contains("expired")),
            "{health:?}"
        );
    }

    #[test]
    fn a_session_loop_that_stopped_turning_is_stuck_though_the_file_is_fresh() {
        let mut stuck = status(Connection::Connected);
        stuck.loop_turned_at = "2026-12-02T09:59:50Z".into();
        let health = stuck.health(at("2026-12-02T10:00:11Z"));
        assert_eq!(health.problems.len(), 1, "{health:?}");
        assert!(
            health.problems[0].starts_with("stuck: the session loop had not turned for 20s"),
            "{health:?}"
        );
    }

    #[test]
    fn a_certificate_near_its_end_is_a_warning_not_a_problem() {
        let mut near = status(Connection::Connected);
        near.certificate = Some(Certificate {
            serial: "0b".into(),
            not_after: "2026-12-05T10:00:00Z".into(),
        });
        near.updated_at = "2026-12-02T10:00:00Z".into();
        let health = near.health(at("2026-12-02T10:00:01Z"));
        assert!(health.is_healthy(), "{health:?}");
        assert!(
            health.warnings[0].contains("expires in 2d 23h"),
            "{health:?}"
        );
    }

    #[test]
    fn the_file_round_trips_and_a_reader_refuses_another_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let written = status(Connection::Connected);
        write_atomically(&path, &written).unwrap();
        assert_eq!(read(&path).unwrap(), written);
        let mut other = written.clone();
        other.format = 99;
        write_atomically(&path, &other).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("format 99"));
        let missing = read(&dir.path().join("none.json")).unwrap_err();
        assert!(missing.to_string().contains("none.json"), "{missing}");
    }

    #[test]
    fn the_systemd_line_names_the_state_the_counts_and_the_kill_switch() {
        let mut s = status(Connection::Connected);
        s.in_flight = 2;
        s.outbox = 1;
        s.kill_switch.on = true;
        assert_eq!(
            s.one_line(),
            "connected to orchestrator.example.org:443; in flight 2, outbox 1; KILL SWITCH ON"
        );
    }
}
