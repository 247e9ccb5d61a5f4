//! The local kill switch: an operator on the worker host stops all
//! execution without the cloud's help by creating one file.
//!
//! While the file named by `worker.kill_switch` exists, every assignment
//! that would run is taken (`Accept`ed, like a `not_allowed` one) and
//! answered `REJECTED` with the code `kill_switch` before anything else
//! happens: no allowlist work beyond that, no credential load, no call.
//! Each refusal has its audit record, whose error names the file.
//!
//! The check is one `stat` (`Path::exists`) per assignment, no watcher:
//! cheap next to a journal commit, and it cannot miss a change. A change
//! seen by a check is logged once (warn when it turns on, info when off).
//!
//! What it does not do: cut calls already running (they finish and report
//! as usual), or stop the worker from holding its stream, heartbeating and
//! delivering results (the orchestrator keeps seeing the worker and every
//! refusal). There is no signal toggle: creating or removing the file is
//! the one switch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::outcome::{ErrorCode, TaskError};

/// The file whose presence stops all execution. Cheap to clone; clones
/// share the last seen state, so a change is logged once.
#[derive(Debug, Clone)]
pub struct KillSwitch {
    path: PathBuf,
    /// The state the last check saw, to log changes only.
    last_on: Arc<AtomicBool>,
}

impl KillSwitch {
    /// A switch on the file at `path`. Its state at this moment is logged
    /// when it is on (a worker started with the file present says so).
    pub fn new(path: PathBuf) -> Self {
        let on = path.exists();
        if on {
            tracing::warn!(file = %path.display(), "kill switch is ON: every assignment is refused until the file is removed");
        }
        KillSwitch {
            path,
            last_on: Arc::new(AtomicBool::new(on)),
        }
    }

    /// The file this switch watches.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the switch is on now (the file exists), logging a change
    /// since the last check.
    pub fn is_on(&self) -> bool {
        let on = self.path.exists();
        if self.last_on.swap(on, Ordering::Relaxed) != on {
            if on {
                tracing::warn!(file = %self.path.display(), "kill switch turned ON: every assignment is refused until the file is removed");
            } else {
                tracing::info!(file = %self.path.display(), "kill switch turned off: assignments run again");
            }
        }
        on
    }

    /// The refusal for an assignment while the switch is on, or `None`
    /// when it is off.
    pub fn refusal(&self) -> Option<TaskError> {
        self.is_on().then(|| {
            TaskError::new(
                ErrorCode::KillSwitch,
                format!(
                    "the worker's local kill switch is on (the file {} exists); nothing was run",
                    self.path.display()
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    #[test]
    fn the_switch_follows_the_file_and_refuses_with_its_own_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("STOP");
        let switch = KillSwitch::new(path.clone());
        assert!(!switch.is_on());
        assert!(switch.refusal().is_none());

        std::fs::write(&path, b"").unwrap();
        assert!(switch.is_on());
        let refusal = switch.refusal().expect("on while the file exists");
        assert_eq!(refusal.code, ErrorCode::KillSwitch);
        assert_eq!(refusal.outcome(), Outcome::Rejected);
        assert!(refusal.message.contains(&path.display().to_string()));
        // A clone sees the same file.
        assert!(switch.clone().is_on());

        std::fs::remove_file(&path).unwrap();
        assert!(!switch.is_on());
        assert!(switch.refusal().is_none());
    }
}
