//! systemd's notification protocol (`sd_notify(3)`), through the
//! `sd-notify` crate: readiness, a one-line status, the watchdog and the
//! start of a stop.
//!
//! Under `Type=notify`, systemd sets `NOTIFY_SOCKET` (and `WATCHDOG_USEC`
//! with `WatchdogSec=`); elsewhere every call here does nothing. What is
//! sent and when is decided by [`crate::status`]: `READY=1` after the
//! first `Welcome`, `STATUS=` on each change, `WATCHDOG=1` only while the
//! session loop proves itself alive, `STOPPING=1` when the drain starts.
//!
//! What it does not do: open a listening socket (the notification socket
//! is systemd's; the worker only sends datagrams to it) or fail the worker
//! when systemd cannot be told (a warning is logged once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// The worker's side of systemd's notification socket.
#[derive(Debug, Default)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    /// A send failed once already (logged once).
    failed: AtomicBool,
}

/// `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process. This is
/// sd_watchdog_enabled(3)'s rule; `sd_notify::watchdog_enabled` also
/// requires `WATCHDOG_PID` to be set, which systemd does but a supervisor
/// speaking the same protocol need not.
fn watchdog_from_environment() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    pub fn from_environment() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = enabled.then(watchdog_from_environment).flatten();
        if enabled {
            tracing::info!(watchdog = ?watchdog, "running under systemd: readiness after the first Welcome");
        }
        Notifier {
            enabled,
            watchdog,
            failed: AtomicBool::new(false),
        }
    }

    /// systemd's watchdog interval, when it asked for pings.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); readiness and watchdog pings are lost");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=` line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`, if systemd asked for pings.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}
