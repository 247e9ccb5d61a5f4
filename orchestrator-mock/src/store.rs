//! Append-only JSON lines files for results and audit records.
//!
//! `data_dir/results.jsonl` and `data_dir/audit.jsonl` get one line per
//! received attempt, written, flushed and synced before the gateway
//! acknowledges the result (so an acknowledged result survives a crash).
//! Results are de-duplicated by (task_id, attempt), including across
//! restarts: the keys already in `results.jsonl` are loaded at open.
//!
//! What it does not do: rewrite, compact or index the files. Reads scan the
//! file, which is fine for a mock; plans themselves live in memory
//! (`// Roadmap:` durable plan state).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;

use crate::api::{StoredAudit, StoredResult};

/// File name of the results log inside `data_dir`.
pub const RESULTS_FILE: &str = "results.jsonl";
/// File name of the audit log inside `data_dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be created, read or written; check `data_dir`
    /// (permissions, free space). Results are not acknowledged meanwhile,
    /// so workers keep them and re-send.
    #[error("data store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line could not be encoded or decoded.
    #[error("data store {path}: bad record: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The serde error.
        message: String,
    },
}

struct Files {
    results: File,
    audit: File,
    seen: HashSet<(String, u32)>,
}

/// The results and audit logs of one data directory.
pub struct Store {
    dir: PathBuf,
    files: Mutex<Files>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the logs in `dir`, loading the keys of
    /// results already stored.
    ///
    /// # Errors
    /// [`StoreError`] when the directory or files cannot be created or read.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))
        };
        let results = open(RESULTS_FILE)?;
        let audit = open(AUDIT_FILE)?;
        let seen = read_lines::<StoredResult>(&dir.join(RESULTS_FILE))?
            .into_iter()
            .map(|r| (r.task_id, r.attempt))
            .collect();
        Ok(Store {
            dir: dir.to_path_buf(),
            files: Mutex::new(Files {
                results,
                audit,
                seen,
            }),
        })
    }

    /// Appends a result and its audit record unless a result for the same
    /// (task_id, attempt) is already stored. Returns whether it was new.
    /// Both lines are flushed and synced before this returns.
    ///
    /// # Errors
    /// [`StoreError`] when writing fails; nothing is marked as stored then.
    pub fn append_once(
        &self,
        result: &StoredResult,
        audit: Option<&StoredAudit>,
    ) -> Result<bool, StoreError> {
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (result.task_id.clone(), result.attempt);
        if files.seen.contains(&key) {
            return Ok(false);
        }
        // Audit first: a result line is what marks the attempt as stored.
        if let Some(audit) = audit {
            let path = self.dir.join(AUDIT_FILE);
            append_line(&mut files.audit, &path, audit)?;
        }
        let path = self.dir.join(RESULTS_FILE);
        append_line(&mut files.results, &path, result)?;
        files.seen.insert(key);
        Ok(true)
    }

    /// Every stored result of a plan, in arrival order.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be read or holds a bad line.
    pub fn results(&self, plan_id: &str) -> Result<Vec<StoredResult>, StoreError> {
        let _guard = self.files.lock();
        Ok(read_lines::<StoredResult>(&self.dir.join(RESULTS_FILE))?
            .into_iter()
            .filter(|r| r.plan_id == plan_id)
            .collect())
    }

    /// Every stored audit record of a plan, in arrival order.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be read or holds a bad line.
    pub fn audit(&self, plan_id: &str) -> Result<Vec<StoredAudit>, StoreError> {
        let _guard = self.files.lock();
        Ok(read_lines::<StoredAudit>(&self.dir.join(AUDIT_FILE))?
            .into_iter()
            .filter(|r| r.plan_id == plan_id)
            .collect())
    }
}

fn append_line<T: serde::Serialize>(
    file: &mut File,
    path: &Path,
    value: &T,
) -> Result<(), StoreError> {
    let mut line = serde_json::to_vec(value).map_err(|e| StoreError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    line.push(b'\n');
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    // One write_all of a whole line into an O_APPEND file: readers never
    // see half a record interleaved with another.
    file.write_all(&line).map_err(io)?;
    file.flush().map_err(io)?;
    file.sync_data().map_err(io)
}

fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| StoreError::Json {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", n + 1),
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn result(plan: &str, task: &str, attempt: u32) -> StoredResult {
        StoredResult {
            plan_id: plan.into(),
            task_id: task.into(),
            attempt,
            worker_identity: "spiffe://t/worker/1".into(),
            session_id: "s".into(),
            received_at: "2026-01-01T00:00:00Z".into(),
            outcome: "succeeded".into(),
            output: Some(serde_json::json!({"status": 200})),
            error_code: None,
            error_message: None,
        }
    }

    #[test]
    fn a_duplicate_result_is_stored_once_even_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.append_once(&result("p", "t1", 1), None).unwrap());
        assert!(!store.append_once(&result("p", "t1", 1), None).unwrap());
        assert!(store.append_once(&result("p", "t1", 2), None).unwrap());
        assert!(store.append_once(&result("other", "t2", 1), None).unwrap());
        assert_eq!(store.results("p").unwrap().len(), 2);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.append_once(&result("p", "t1", 1), None).unwrap());
        assert_eq!(store.results("p").unwrap().len(), 2);
        let text = std::fs::read_to_string(dir.path().join(RESULTS_FILE)).unwrap();
        assert_eq!(text.lines().count(), 3);
    }
}
