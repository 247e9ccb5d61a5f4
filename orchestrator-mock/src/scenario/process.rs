//! The child processes of a scenario run: the mock itself (`serve
//! --fault-injection`, the same binary) and the worker under test (`sh -c
//! <command>` in its own process group), each with its output in a log
//! file.
//!
//! What it does not do: decide when to start or stop them (the runner
//! does), or interpret their logs beyond the mock's ready line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the mock may take to print its ready line.
pub const MOCK_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped child may take to exit before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// The ready line `serve` prints once both listeners are bound.
pub const READY_PREFIX: &str = "orchestrator-mock ready";

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Spawning or the log file failed.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which child.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The mock exited or stayed silent; the log tail says why.
    #[error("the mock did not become ready: {reason}\n{tail}")]
    NotReady {
        /// What happened.
        reason: String,
        /// The end of its log.
        tail: String,
    },
}

/// The last `lines` lines of a log file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(path: &Path, what: &'static str) -> Result<(Stdio, Stdio), ProcessError> {
    let spawn = |source| ProcessError::Spawn { what, source };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(spawn)?;
    let err = file.try_clone().map_err(spawn)?;
    Ok((Stdio::from(file), Stdio::from(err)))
}

/// Sends `signal` (`TERM`, `KILL`) to `target` (a pid, or `-pgid` for a
/// process group) with the system's `kill`.
fn signal(target: &str, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit.
async fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The mock as a child process.
pub struct MockProcess {
    config: PathBuf,
    log: PathBuf,
    child: Child,
    /// The bound worker gateway address.
    pub grpc_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
}

impl MockProcess {
    /// Starts `<this binary> serve --config <config> --fault-injection`,
    /// on `listen` (gRPC, admin) when given (a restart on the same ports),
    /// and waits for its ready line.
    ///
    /// # Errors
    /// [`ProcessError`] with the log's tail.
    pub async fn start(
        config: &Path,
        log: &Path,
        listen: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<MockProcess, ProcessError> {
        let exe = std::env::current_exe().map_err(|source| ProcessError::Spawn {
            what: "the mock",
            source,
        })?;
        let start_len = std::fs::metadata(log).map_or(0, |m| m.len());
        let (out, err) = log_file(log, "the mock")?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--fault-injection")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some((grpc, admin)) = listen {
            command
                .arg("--grpc-listen")
                .arg(grpc.to_string())
                .arg("--admin-listen")
                .arg(admin.to_string());
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            what: "the mock",
            source,
        })?;
        let started = Instant::now();
        loop {
            let text = std::fs::read(log).unwrap_or_default();
            let fresh = String::from_utf8_lossy(
                text.get(usize::try_from(start_len).unwrap_or(0)..)
                    .unwrap_or(&[]),
            )
            .into_owned();
            if let Some(line) = fresh.lines().find(|l| l.starts_with(READY_PREFIX)) {
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .map(|v| v.trim_start_matches("http://").to_string())
                };
                let grpc = field("grpc=").and_then(|a| a.parse().ok());
                let admin = field("admin=").and_then(|a| a.parse().ok());
                if let (Some(grpc_addr), Some(admin_addr)) = (grpc, admin) {
                    return Ok(MockProcess {
                        config: config.to_path_buf(),
                        log: log.to_path_buf(),
                        child,
                        grpc_addr,
                        admin_addr,
                    });
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::NotReady {
                    reason: format!("unexpected ready line {line:?}"),
                    tail: tail(log, 30),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ProcessError::NotReady {
                    reason: format!("it exited ({status})"),
                    tail: tail(log, 30),
                });
            }
            if started.elapsed() > MOCK_START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::NotReady {
                    reason: format!("no ready line within {MOCK_START_TIMEOUT:?}"),
                    tail: tail(log, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin API base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops it: SIGKILL at once (`kill`), or SIGTERM and up to
    /// [`STOP_GRACE`] for its graceful shutdown, then SIGKILL.
    pub async fn stop(&mut self, kill: bool) {
        if !kill {
            signal(&self.child.id().to_string(), "TERM");
            if wait_exit(&mut self.child, STOP_GRACE).await {
                return;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (see [`MockProcess::stop`]) and starts it again with the
    /// same config on the same ports (so the worker finds it) and data
    /// directory.
    ///
    /// # Errors
    /// [`ProcessError`] when the new process does not become ready.
    pub async fn restart(&mut self, kill: bool) -> Result<(), ProcessError> {
        self.stop(kill).await;
        let listen = (self.grpc_addr, self.admin_addr);
        let mut last = None;
        // The old sockets may take a moment to be released.
        for _ in 0..5 {
            match MockProcess::start(&self.config, &self.log, Some(listen)).await {
                Ok(new) => {
                    *self = new;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.unwrap_or_else(|| ProcessError::NotReady {
            reason: "restart failed".into(),
            tail: String::new(),
        }))
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The worker under test: `sh -c <command>` in its own process group, so
/// that stopping it stops whatever the command started.
pub struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `sh -c <command>` with `env` added, output appended to `log`.
    ///
    /// # Errors
    /// [`ProcessError::Spawn`].
    pub fn start(
        command: &str,
        log: &Path,
        env: &[(&str, String)],
    ) -> Result<WorkerProcess, ProcessError> {
        use std::os::unix::process::CommandExt as _;
        let (out, err) = log_file(log, "the worker")?;
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (k, v) in env {
            sh.env(k, v);
        }
        let child = sh.spawn().map_err(|source| ProcessError::Spawn {
            what: "the worker",
            source,
        })?;
        Ok(WorkerProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status, once it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM to the whole process group, up to [`STOP_GRACE`] for every
    /// process in it to exit, then SIGKILL to the group.
    pub async fn stop(&mut self) {
        let group = format!("-{}", self.child.id());
        signal(&group, "TERM");
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            // Reap the shell so that it does not count as alive.
            let _ = self.child.try_wait();
            if !alive(&group) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal(&group, "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether some process of `target` (see [`signal`]) still exists.
fn alive(target: &str) -> bool {
    Command::new("kill")
        .args(["-0", "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = self.child.try_wait();
        if alive(&group) {
            signal(&group, "KILL");
        }
        let _ = self.child.wait();
    }
}
