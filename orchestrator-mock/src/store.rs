//! Append-only JSON lines files for results and audit records.
//!
//! `data_dir/results.jsonl` and `data_dir/audit.jsonl` get one line per
//! received attempt, written, flushed and synced before the gateway
//! acknowledges the result (so an acknowledged result survives a crash).
//! Commits are grouped: one writer thread takes every result waiting when a
//! write starts and commits them with one write and one `fdatasync` per
//! file, so the cost of durability is paid per batch, not per result, and
//! the async runtime never blocks on the disk.
//! Results are de-duplicated by (task_id, attempt, worker identity), including across
//! restarts: the keys already in `results.jsonl` are loaded at open.
//!
//! Crash-torn tails: a kill -9 or power cut during a commit can leave half
//! a line at the end of a file (that batch was never acknowledged). At open
//! a last line without its newline is cut back when it is not a whole
//! record (and completed with its newline when it is), and the log says so;
//! a bad line anywhere else still refuses the start.
//!
//! What it does not do: rewrite, compact or index the files. Reads scan the
//! file, which is fine for a mock. Plans and their state live in the state
//! store ([`crate::durable`]).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

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
    /// (plan id, task_id, attempt, worker identity) of every stored result:
    /// a result forged by another worker cannot take the real one's place,
    /// and one stored unattributed (plan id `""`) cannot take the place of
    /// the attempt's own result later.
    seen: HashSet<ResultKey>,
}

/// Most results committed in one write and sync.
pub const MAX_BATCH: usize = 1024;

struct Pending {
    result: StoredResult,
    audit: Option<StoredAudit>,
    reply: tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
}

/// The results and audit logs of one data directory.
pub struct Store {
    dir: PathBuf,
    files: Arc<Mutex<Files>>,
    tx: mpsc::Sender<Pending>,
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
    pub fn open(dir: &Path, sync: bool) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        repair_tail::<StoredResult>(&dir.join(RESULTS_FILE))?;
        repair_tail::<StoredAudit>(&dir.join(AUDIT_FILE))?;
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
        let mut seen = HashSet::new();
        for_each_line::<KeyFields>(&dir.join(RESULTS_FILE), |r| {
            seen.insert((r.plan_id, r.task_id, r.attempt, r.worker_identity));
        })?;
        let files = Arc::new(Mutex::new(Files {
            results,
            audit,
            seen,
        }));
        let (tx, rx) = mpsc::channel::<Pending>();
        let writer = Writer {
            dir: dir.to_path_buf(),
            files: files.clone(),
            sync,
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            files,
            tx,
        })
    }

    /// Appends a result and its audit record unless a result for the same
    /// (task_id, attempt) is already stored. Returns whether it was new.
    /// Both lines are written (and synced, unless `sync_writes` is off)
    /// before this returns.
    ///
    /// # Errors
    /// [`StoreError`] when writing fails; nothing is marked as stored then.
    pub async fn append_once(
        &self,
        result: StoredResult,
        audit: Option<StoredAudit>,
    ) -> Result<bool, StoreError> {
        let gone = || StoreError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("the store writer thread has stopped"),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Pending {
                result,
                audit,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
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

    /// Every stored result, in arrival order (read once at start to apply
    /// results whose effect on their plan was not yet durable).
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be read or holds a bad line.
    pub fn all_results(&self) -> Result<Vec<StoredResult>, StoreError> {
        let _guard = self.files.lock();
        read_lines::<StoredResult>(&self.dir.join(RESULTS_FILE))
    }

    /// Calls `each` with the chain fields of every stored audit record, in
    /// arrival order, reading the file one line at a time (once at start,
    /// to rebuild the chain checks without holding the records).
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be read or holds a bad line.
    pub fn for_each_audit_link(&self, each: impl FnMut(AuditLink)) -> Result<(), StoreError> {
        let _guard = self.files.lock();
        for_each_line::<AuditLink>(&self.dir.join(AUDIT_FILE), each)
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

/// The thread that commits batches.
struct Writer {
    dir: PathBuf,
    files: Arc<Mutex<Files>>,
    sync: bool,
}

impl Writer {
    fn run(&self, rx: &mpsc::Receiver<Pending>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let mut files = self
                .files
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let outcome = self.commit(&mut files, &batch);
            for (pending, answer) in batch.into_iter().zip(outcome) {
                let _ = pending.reply.send(answer);
            }
        }
    }

    /// Writes the new results of `batch` (audit lines first: a result line
    /// is what marks an attempt stored), syncs, then marks them seen.
    /// Returns one answer per pending result, in order.
    fn commit(&self, files: &mut Files, batch: &[Pending]) -> Vec<Result<bool, StoreError>> {
        let mut fresh = HashSet::new();
        let mut new = Vec::with_capacity(batch.len());
        let (mut audit_bytes, mut result_bytes) = (Vec::new(), Vec::new());
        for pending in batch {
            let key = (
                pending.result.plan_id.clone(),
                pending.result.task_id.clone(),
                pending.result.attempt,
                pending.result.worker_identity.clone(),
            );
            let is_new = !files.seen.contains(&key) && fresh.insert(key);
            new.push(is_new);
            if !is_new {
                continue;
            }
            if let Some(audit) = &pending.audit
                && let Err(e) = encode_line(&mut audit_bytes, &self.dir.join(AUDIT_FILE), audit)
            {
                return batch.iter().map(|_| Err(e.clone_message())).collect();
            }
            if let Err(e) = encode_line(
                &mut result_bytes,
                &self.dir.join(RESULTS_FILE),
                &pending.result,
            ) {
                return batch.iter().map(|_| Err(e.clone_message())).collect();
            }
        }
        let lengths = (
            files.audit.metadata().map(|m| m.len()),
            files.results.metadata().map(|m| m.len()),
        );
        let written = write_and_sync(
            &mut files.audit,
            &self.dir.join(AUDIT_FILE),
            &audit_bytes,
            self.sync,
        )
        .and_then(|()| {
            write_and_sync(
                &mut files.results,
                &self.dir.join(RESULTS_FILE),
                &result_bytes,
                self.sync,
            )
        });
        if let Err(e) = written {
            // Take the batch back from both files (a torn line would break
            // every later read; a half-stored batch would be stored twice
            // when the workers re-send it).
            if let (Ok(audit_len), Ok(results_len)) = lengths {
                let _ = files.audit.set_len(audit_len);
                let _ = files.results.set_len(results_len);
            }
            return batch.iter().map(|_| Err(e.clone_message())).collect();
        }
        files.seen.extend(fresh);
        new.into_iter().map(Ok).collect()
    }
}

impl StoreError {
    /// The same error for another waiter (I/O errors cannot be cloned).
    fn clone_message(&self) -> StoreError {
        match self {
            StoreError::Io { path, source } => StoreError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::Json { path, message } => StoreError::Json {
                path: path.clone(),
                message: message.clone(),
            },
        }
    }
}

fn encode_line<T: serde::Serialize>(
    out: &mut Vec<u8>,
    path: &Path,
    value: &T,
) -> Result<(), StoreError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| StoreError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    out.push(b'\n');
    Ok(())
}

/// One write_all of whole lines into an O_APPEND file (readers hold the
/// same lock, so they never see half a record), then one sync.
fn write_and_sync(
    file: &mut File,
    path: &Path,
    bytes: &[u8],
    sync: bool,
) -> Result<(), StoreError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    file.write_all(bytes).map_err(io)?;
    file.flush().map_err(io)?;
    if sync {
        file.sync_data().map_err(io)?;
    }
    Ok(())
}

/// Cuts a torn last line (no newline, not a whole record) off `path`, or
/// completes a whole last record with its newline. Returns how many bytes
/// were cut.
fn repair_tail<T: DeserializeOwned>(path: &Path) -> Result<u64, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        // Only a regular file can have a torn tail (and be read whole).
        Ok(m) if !m.is_file() => return Ok(0),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    }
    let bytes = std::fs::read(path).map_err(io)?;
    if bytes.last().is_none_or(|b| *b == b'\n') {
        return Ok(0);
    }
    let start = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let tail = &bytes[start..];
    let mut file = OpenOptions::new().write(true).open(path).map_err(io)?;
    if serde_json::from_slice::<T>(tail).is_ok() {
        tracing::warn!(file = %path.display(), "the last record had no newline (crash during a commit); completed it");
        file.seek_end_and_write(b"\n").map_err(io)?;
        file.sync_data().map_err(io)?;
        return Ok(0);
    }
    let cut = u64::try_from(tail.len()).unwrap_or(u64::MAX);
    tracing::warn!(file = %path.display(), bytes = cut, line = bytes[..start].iter().filter(|b| **b == b'\n').count() + 1, "cut a torn last line (a crash during a commit; that batch was never acknowledged, workers send it again)");
    file.set_len(u64::try_from(start).unwrap_or(u64::MAX))
        .map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(cut)
}

/// Appends at the end of a file opened for writing.
trait SeekEndAndWrite {
    fn seek_end_and_write(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl SeekEndAndWrite for File {
    fn seek_end_and_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Seek;
        self.seek(std::io::SeekFrom::End(0))?;
        self.write_all(bytes)
    }
}

/// The de-duplication key of a stored result (see `Files::seen`).
type ResultKey = (String, String, u32, String);

/// The fields of a stored result that make its key.
#[derive(serde::Deserialize)]
struct KeyFields {
    plan_id: String,
    task_id: String,
    attempt: u32,
    worker_identity: String,
}

/// The fields of a stored audit record its sender's chain is made of.
#[derive(Debug, serde::Deserialize)]
pub struct AuditLink {
    /// The sender's certificate identity.
    pub worker_identity: String,
    /// Position in the sender's log.
    pub sequence: u64,
    /// Hash of the record before it.
    pub prev_hash: String,
    /// Its hash.
    pub record_hash: String,
}

fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for_each_line(path, |item| out.push(item))?;
    Ok(out)
}

/// Reads `path` one JSON line at a time (a missing file has none).
fn for_each_line<T: DeserializeOwned>(
    path: &Path,
    mut each: impl FnMut(T),
) -> Result<(), StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // Only the bytes the file holds now: a device (a test's /dev/full) or
    // a file still growing never makes this read for ever.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    for (n, line) in BufReader::new(file.take(len)).lines().enumerate() {
        let line = line.map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        each(serde_json::from_str(&line).map_err(|e| StoreError::Json {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", n + 1),
        })?);
    }
    Ok(())
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
            problem: None,
        }
    }

    #[tokio::test]
    async fn a_duplicate_result_is_stored_once_even_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        assert!(store.append_once(result("p", "t1", 1), None).await.unwrap());
        assert!(!store.append_once(result("p", "t1", 1), None).await.unwrap());
        assert!(store.append_once(result("p", "t1", 2), None).await.unwrap());
        assert!(
            store
                .append_once(result("other", "t2", 1), None)
                .await
                .unwrap()
        );
        assert_eq!(store.results("p").unwrap().len(), 2);
        drop(store);
        let store = Store::open(dir.path(), true).unwrap();
        assert!(!store.append_once(result("p", "t1", 1), None).await.unwrap());
        assert_eq!(store.results("p").unwrap().len(), 2);
        let text = std::fs::read_to_string(dir.path().join(RESULTS_FILE)).unwrap();
        assert_eq!(text.lines().count(), 3);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_back_at_open_and_a_break_elsewhere_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        assert!(store.append_once(result("p", "t1", 1), None).await.unwrap());
        assert!(store.append_once(result("p", "t2", 1), None).await.unwrap());
        drop(store);
        let path = dir.path().join(RESULTS_FILE);
        let whole = std::fs::read(&path).unwrap();
        // A kill -9 in the middle of the next commit.
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"plan_id":"p","task_id":"t3","att"#);
        std::fs::write(&path, &torn).unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn line is gone"
        );
        assert_eq!(store.results("p").unwrap().len(), 2);
        assert!(store.append_once(result("p", "t3", 1), None).await.unwrap());
        assert_eq!(store.results("p").unwrap().len(), 3);
        drop(store);

        // A whole last record whose newline was lost is kept.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        assert_eq!(store.results("p").unwrap().len(), 3);
        drop(store);

        // A broken line that is not the last one is not a crash tail.
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "{not json";
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let err = Store::open(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_results_commit_in_groups_and_duplicates_in_one_group_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path(), true).unwrap());
        // 300 distinct attempts, each sent twice at the same time.
        let sends = (0..600).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_once(result("p", &format!("t{}", i % 300), 1), None)
                    .await
                    .unwrap()
            })
        });
        let stored = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(stored, 300);
        assert_eq!(store.results("p").unwrap().len(), 300);
    }
}
