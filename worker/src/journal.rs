//! The durable journal: what this worker did with every task id, kept on
//! disk so that nothing is lost and nothing runs twice across a crash.
//!
//! For each task id the journal holds one [`Entry`]: the latest attempt and
//! how far it got ([`Stage`]: received, started, finished, acknowledged),
//! which attempt of the task id last *started* (reached the internal API),
//! when it was received, and a short [`Summary`] of the outcome; beside it,
//! in tables of their own (written once, read only at start), the
//! assignment until the attempt finished and the encoded result until the
//! orchestrator acknowledged it. The session writes `received` before it
//! sends `Accept`, the runner writes `started` before it makes the call,
//! and `finished` as the result goes up (without waiting for it: the audit
//! record, already on disk, holds the same result, and the session rebuilds
//! it from there if a crash comes first); so after a kill -9 the journal
//! says which results to re-send, which attempts never started (safe to
//! run) and which were cut off mid-call (their outcome is unknown).
//!
//! Storage is [redb](https://www.redb.org): a pure-Rust, single-file,
//! copy-on-write B-tree with ACID transactions that survives a crash at
//! any point without a recovery step of ours (see ARCHITECTURE.md for why
//! it was chosen). Writes go through one writer thread that commits every
//! waiting change in one transaction and one sync (group commit), so a
//! busy worker pays one disk sync per batch, not per task.
//!
//! Rules the writer enforces whatever it is asked: a `received` never
//! replaces a later or equal attempt, nor an attempt whose result waits for
//! its acknowledgement; `started`, `finished` and `acknowledged` apply only
//! to the entry's current attempt, in that order.
//!
//! Bounds: task ids are at most 128 bytes (the contract's limit, checked
//! by the session before anything reaches the journal). Entries of
//! unacknowledged attempts are bounded by the worker's credit (see the
//! session's ledger); acknowledged entries keep only a summary (at most
//! [`MAX_SUMMARY_BYTES`] of output and of message) and only the most
//! recent `retain` of them are kept, oldest dropped first: a task id is
//! remembered (and never run twice) for that many later acknowledgements.
//!
//! Durability: with `sync` on (the default) every commit is on disk before
//! its caller is answered. With `sync` off (benchmarks), commits are made
//! durable at most once a second, so a crash loses at most the last second.
//!
//! What it does not do: decide what to do with an entry (the session and
//! the runner do), or know the proto types (results are opaque bytes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;
use crate::task::Assignment;

/// Task id -> JSON of its [`Entry`].
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// Task id -> the encoded result of its finished, unacknowledged attempt.
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("results");
/// Task id -> JSON of the assignment of its attempt that has not finished.
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
/// Acknowledgement order -> task id, to drop the oldest acknowledged entries.
const ACKNOWLEDGED: TableDefinition<u64, &str> = TableDefinition::new("acknowledged");
/// `<key id> <nonce>` of a used approval -> JSON of its [`ApprovalUse`].
const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");
/// How often the writer drops used approvals whose window has ended.
const APPROVAL_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Most changes committed in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Most bytes of output and of error message kept in a [`Summary`].
pub const MAX_SUMMARY_BYTES: usize = 4096;
/// How many acknowledged task ids the journal remembers by default.
pub const DEFAULT_RETAIN: u64 = 20_000;
/// With `sync` off, how often a commit is made durable anyway.
const UNSYNCED_DURABLE_EVERY: Duration = Duration::from_secs(1);

/// How far the latest attempt of a task id got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Received and owned (`Accept` may have been sent); nothing called yet.
    Received,
    /// The call to the internal API may have been made.
    Started,
    /// The result is written; it waits for the orchestrator's acknowledgement.
    Finished,
    /// The orchestrator stored the result.
    Acknowledged,
}

/// The outcome of a finished attempt, kept after its result is forgotten
/// so a later attempt of the same task id can be answered truthfully.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// How it ended.
    pub outcome: Outcome,
    /// Output JSON text when it is at most [`MAX_SUMMARY_BYTES`].
    pub output_json: Option<String>,
    /// Error code, if any.
    pub error_code: Option<String>,
    /// Error message, cut to [`MAX_SUMMARY_BYTES`].
    pub error_message: Option<String>,
}

/// Everything the journal knows about one task id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The latest attempt received.
    pub attempt: u32,
    /// How far that attempt got.
    pub stage: Stage,
    /// The latest attempt of this task id that reached `Started`.
    pub started_attempt: Option<u32>,
    /// When the latest attempt was received (wall clock).
    pub received_at: Option<SystemTime>,
    /// The outcome of the latest finished attempt.
    pub summary: Option<Summary>,
    /// Position in the acknowledgement order, once acknowledged.
    acknowledged_seq: Option<u64>,
}

/// A signed approval that an attempt used: remembered from the attempt's
/// start until `forget_after`, after which the approval is refused as
/// expired anyway. Rows exist only for approvals that verified, so their
/// number is bounded by the approved tasks started within the longest
/// window a worker accepts (`approvals.max_validity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalUse {
    /// Key id of the approval.
    pub key_id: String,
    /// Its nonce.
    pub nonce: String,
    /// The task id that used it.
    pub task_id: String,
    /// Unix seconds after which the row may go (window end plus skew).
    pub forget_after: i64,
}

impl ApprovalUse {
    fn key(key_id: &str, nonce: &str) -> String {
        // A space is outside the id rule both follow: the key is unambiguous.
        format!("{key_id} {nonce}")
    }
}

/// Why the journal failed. The worker stops on it: it must not run tasks
/// it cannot record (fix the disk or the file, then start again).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database could not be opened, read or committed.
    #[error("journal {path}: {message}")]
    Store {
        /// The journal file.
        path: PathBuf,
        /// What redb reported.
        message: String,
    },
    /// The writer thread is gone (it stopped after an earlier failure).
    #[error("journal {0}: the writer has stopped")]
    Stopped(PathBuf),
}

enum Change {
    /// Received, and started too when the flag is set (with the approval
    /// the start uses).
    Received(Box<Assignment>, bool, Option<ApprovalUse>),
    Started(String, u32, Option<ApprovalUse>),
    Finished(String, u32, Vec<u8>, Summary),
    Acknowledged(String, u32),
}

struct Pending {
    change: Change,
    reply: Option<tokio::sync::oneshot::Sender<Result<(), JournalError>>>,
}

/// The handle to the journal; cheap to clone. The writer thread ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    tx: mpsc::Sender<Pending>,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Entry {
    /// Whether some attempt of this task id may have reached the internal API.
    pub fn ever_started(&self) -> bool {
        self.started_attempt.is_some()
    }
}

/// An entry not yet acknowledged, as found at start.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The task id.
    pub task_id: String,
    /// Its entry.
    pub entry: Entry,
    /// The assignment, when the attempt has not finished.
    pub assignment: Option<Assignment>,
    /// The encoded result, when the attempt finished.
    pub result: Option<Vec<u8>>,
}

/// Attempts the journal holds that the orchestrator has not acknowledged,
/// as found at start.
pub type Unfinished = Vec<Recovered>;

impl Journal {
    /// Opens (or creates) the journal at `path` and returns every entry not
    /// yet acknowledged, for the session to resume. `sync = false` commits
    /// without waiting for the disk (benchmarks only); `retain` bounds the
    /// acknowledged entries kept.
    ///
    /// # Errors
    /// [`JournalError::Store`] when the file cannot be opened (for example
    /// because another worker process holds it) or read.
    pub fn open(
        path: &Path,
        sync: bool,
        retain: u64,
    ) -> Result<(Journal, Unfinished), JournalError> {
        let fail = |e: &dyn std::fmt::Display| JournalError::Store {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let db = Database::create(path).map_err(|e| fail(&e))?;
        // Create the tables so that readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        txn.open_table(ENTRIES).map_err(|e| fail(&e))?;
        txn.open_table(RESULTS).map_err(|e| fail(&e))?;
        txn.open_table(ASSIGNMENTS).map_err(|e| fail(&e))?;
        txn.open_table(ACKNOWLEDGED).map_err(|e| fail(&e))?;
        prune_approvals(&mut txn.open_table(APPROVALS).map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))?;

        let mut unfinished = Vec::new();
        {
            let read = db.begin_read().map_err(|e| fail(&e))?;
            let table = read.open_table(ENTRIES).map_err(|e| fail(&e))?;
            let results = read.open_table(RESULTS).map_err(|e| fail(&e))?;
            let assignments = read.open_table(ASSIGNMENTS).map_err(|e| fail(&e))?;
            for row in table.iter().map_err(|e| fail(&e))? {
                let (key, value) = row.map_err(|e| fail(&e))?;
                let entry: Entry = serde_json::from_slice(value.value()).map_err(|e| fail(&e))?;
                if entry.stage != Stage::Acknowledged {
                    let result = results
                        .get(key.value())
                        .map_err(|e| fail(&e))?
                        .map(|v| v.value().to_vec());
                    let assignment = match assignments.get(key.value()).map_err(|e| fail(&e))? {
                        Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| fail(&e))?),
                        None => None,
                    };
                    unfinished.push(Recovered {
                        task_id: key.value().to_string(),
                        entry,
                        assignment,
                        result,
                    });
                }
            }
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Pending>();
        let mut writer = Writer {
            db: db.clone(),
            path: path.to_path_buf(),
            sync,
            retain: retain.max(1),
            last_durable: Instant::now(),
            last_pruned: Instant::now(),
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| fail(&e))?;
        Ok((
            Journal {
                db,
                tx,
                path: path.to_path_buf(),
            },
            unfinished,
        ))
    }

    /// Records that `assignment` was received (and is owned from now on),
    /// and with `started` that its call is about to be made (one commit
    /// for both when nothing stands between them), using `approval` when
    /// it carried one; returns once it is on disk.
    ///
    /// # Errors
    /// [`JournalError`] when the commit failed: the attempt must then not be
    /// accepted, nor the call made.
    pub async fn received(
        &self,
        assignment: Assignment,
        started: bool,
        approval: Option<ApprovalUse>,
    ) -> Result<(), JournalError> {
        self.commit(Change::Received(Box::new(assignment), started, approval))
            .await
    }

    /// Records that the call for this attempt is about to be made, using
    /// `approval` when it carried one; returns once it is on disk.
    ///
    /// # Errors
    /// [`JournalError`] when the commit failed: the call must then not happen.
    pub async fn started(
        &self,
        task_id: &str,
        attempt: u32,
        approval: Option<ApprovalUse>,
    ) -> Result<(), JournalError> {
        self.commit(Change::Started(task_id.to_string(), attempt, approval))
            .await
    }

    /// The task id that used the approval `(key_id, nonce)`, if one did and
    /// its window has not ended.
    ///
    /// # Errors
    /// [`JournalError::Store`] when the file cannot be read.
    pub fn approval_user(&self, key_id: &str, nonce: &str) -> Result<Option<String>, JournalError> {
        let fail = |e: &dyn std::fmt::Display| JournalError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let read = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = read.open_table(APPROVALS).map_err(|e| fail(&e))?;
        match table
            .get(ApprovalUse::key(key_id, nonce).as_str())
            .map_err(|e| fail(&e))?
        {
            None => Ok(None),
            Some(value) => serde_json::from_slice::<ApprovalUse>(value.value())
                .map(|used| Some(used.task_id))
                .map_err(|e| fail(&e)),
        }
    }

    /// Records the attempt's result (encoded, as it goes on the wire) and
    /// its summary, without waiting for the disk: the audit record written
    /// before holds the same result (see the module docs). A failed commit
    /// is logged, and the next awaited change fails, which stops the worker.
    pub fn finished(&self, task_id: &str, attempt: u32, result: Vec<u8>, summary: Summary) {
        let _ = self.tx.send(Pending {
            change: Change::Finished(task_id.to_string(), attempt, result, summary),
            reply: None,
        });
    }

    /// Records that the orchestrator acknowledged the attempt's result,
    /// without waiting for the disk: if it is lost in a crash the result is
    /// sent once more and acknowledged again.
    pub fn acknowledged(&self, task_id: &str, attempt: u32) {
        let _ = self.tx.send(Pending {
            change: Change::Acknowledged(task_id.to_string(), attempt),
            reply: None,
        });
    }

    /// What the journal holds for `task_id`, as committed so far (without
    /// the result itself).
    ///
    /// # Errors
    /// [`JournalError::Store`] when the file cannot be read.
    pub fn lookup(&self, task_id: &str) -> Result<Option<Entry>, JournalError> {
        let fail = |e: &dyn std::fmt::Display| JournalError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let read = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = read.open_table(ENTRIES).map_err(|e| fail(&e))?;
        match table.get(task_id).map_err(|e| fail(&e))? {
            None => Ok(None),
            Some(value) => serde_json::from_slice(value.value())
                .map(Some)
                .map_err(|e| fail(&e)),
        }
    }

    async fn commit(&self, change: Change) -> Result<(), JournalError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Pending {
                change,
                reply: Some(reply),
            })
            .map_err(|_| JournalError::Stopped(self.path.clone()))?;
        answer
            .await
            .map_err(|_| JournalError::Stopped(self.path.clone()))?
    }
}

struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    sync: bool,
    retain: u64,
    last_durable: Instant,
    last_pruned: Instant,
}

impl Writer {
    fn run(&mut self, rx: &mpsc::Receiver<Pending>) {
        while let Some(batch) = crate::batch::next_batch(rx, MAX_BATCH) {
            let (changes, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.change, p.reply)).unzip();
            let outcome = self.commit(changes);
            if let Err(message) = &outcome {
                tracing::error!(journal = %self.path.display(), error = %message, "journal commit failed");
            }
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(outcome.clone().map_err(|message| JournalError::Store {
                    path: self.path.clone(),
                    message,
                }));
            }
        }
    }

    fn commit(&mut self, changes: Vec<Change>) -> Result<(), String> {
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let durable = self.sync || self.last_durable.elapsed() >= UNSYNCED_DURABLE_EVERY;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).map_err(|e| e.to_string())?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
            let mut results = txn.open_table(RESULTS).map_err(|e| e.to_string())?;
            let mut assignments = txn.open_table(ASSIGNMENTS).map_err(|e| e.to_string())?;
            let mut acknowledged = txn.open_table(ACKNOWLEDGED).map_err(|e| e.to_string())?;
            let mut approvals = txn.open_table(APPROVALS).map_err(|e| e.to_string())?;
            if self.last_pruned.elapsed() >= APPROVAL_PRUNE_EVERY {
                prune_approvals(&mut approvals).map_err(|e| e.to_string())?;
                self.last_pruned = Instant::now();
            }
            let mut next_seq = acknowledged
                .last()
                .map_err(|e| e.to_string())?
                .map_or(1, |(seq, _)| seq.value() + 1);
            for change in changes {
                let task_id = match &change {
                    Change::Received(a, _, _) => a.task_id.clone(),
                    Change::Started(id, _, _)
                    | Change::Finished(id, _, _, _)
                    | Change::Acknowledged(id, _) => id.clone(),
                };
                let used = match &change {
                    Change::Received(_, true, used) | Change::Started(_, _, used) => used.clone(),
                    _ => None,
                };
                let current: Option<Entry> = entries
                    .get(task_id.as_str())
                    .map_err(|e| e.to_string())?
                    .and_then(|v| serde_json::from_slice(v.value()).ok());
                if let Some(used) = used {
                    // In the commit that records the start, whether or not
                    // the entry changes: a start that asked for it used it.
                    let bytes = serde_json::to_vec(&used).map_err(|e| e.to_string())?;
                    approvals
                        .insert(
                            ApprovalUse::key(&used.key_id, &used.nonce).as_str(),
                            bytes.as_slice(),
                        )
                        .map_err(|e| e.to_string())?;
                }
                let Some((next, rows)) = apply(current, change, &mut next_seq) else {
                    continue;
                };
                for (table, row) in [
                    (&mut results, rows.result),
                    (&mut assignments, rows.assignment),
                ] {
                    match row {
                        Row::Keep => {}
                        Row::Store(bytes) => {
                            table
                                .insert(task_id.as_str(), bytes.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                        Row::Drop => {
                            table.remove(task_id.as_str()).map_err(|e| e.to_string())?;
                        }
                    }
                }
                if let Some(seq) = next.acknowledged_seq {
                    acknowledged
                        .insert(seq, task_id.as_str())
                        .map_err(|e| e.to_string())?;
                }
                let bytes = serde_json::to_vec(&next).map_err(|e| e.to_string())?;
                entries
                    .insert(task_id.as_str(), bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            while acknowledged.len().map_err(|e| e.to_string())? > self.retain {
                let Some((seq, task_id)) = acknowledged
                    .pop_first()
                    .map_err(|e| e.to_string())?
                    .map(|(s, t)| (s.value(), t.value().to_string()))
                else {
                    break;
                };
                let stale = entries
                    .get(task_id.as_str())
                    .map_err(|e| e.to_string())?
                    .and_then(|v| serde_json::from_slice::<Entry>(v.value()).ok())
                    .is_some_and(|e| e.acknowledged_seq == Some(seq));
                if stale {
                    entries
                        .remove(task_id.as_str())
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        if durable {
            self.last_durable = Instant::now();
        }
        Ok(())
    }
}

/// Drops used approvals whose window (plus skew) has ended.
fn prune_approvals(table: &mut redb::Table<&str, &[u8]>) -> Result<(), redb::StorageError> {
    let now = private_worker_proto::approval::unix_seconds(SystemTime::now());
    table.retain(|_, value| {
        serde_json::from_slice::<ApprovalUse>(value).is_ok_and(|used| used.forget_after >= now)
    })
}

/// What a change does to one side row of a task id.
enum Row {
    Keep,
    Store(Vec<u8>),
    Drop,
}

/// What a change does to the side rows: the result and the assignment.
struct SideRows {
    result: Row,
    assignment: Row,
}

/// The entry after `change` and what happens to its side rows, or `None`
/// when the change does not apply (see the rules in the module docs).
fn apply(current: Option<Entry>, change: Change, next_seq: &mut u64) -> Option<(Entry, SideRows)> {
    match (current, change) {
        (Some(entry), Change::Received(assignment, _, _))
            if assignment.attempt <= entry.attempt || entry.stage == Stage::Finished =>
        {
            tracing::warn!(task_id = %crate::shown::shown(&assignment.task_id), attempt = assignment.attempt, current = entry.attempt, stage = ?entry.stage, "journal: not replacing the current attempt");
            None
        }
        (current, Change::Received(assignment, started, _)) => {
            // Serializing a struct of strings and numbers cannot fail.
            let bytes = serde_json::to_vec(&assignment).unwrap_or_default();
            let earlier = current.as_ref().and_then(|e| e.started_attempt);
            Some((
                Entry {
                    attempt: assignment.attempt,
                    stage: if started {
                        Stage::Started
                    } else {
                        Stage::Received
                    },
                    started_attempt: if started {
                        Some(assignment.attempt)
                    } else {
                        earlier
                    },
                    received_at: Some(SystemTime::now()),
                    summary: current.and_then(|e| e.summary),
                    acknowledged_seq: None,
                },
                SideRows {
                    result: Row::Drop,
                    assignment: Row::Store(bytes),
                },
            ))
        }
        (Some(mut entry), Change::Started(_, attempt, _))
            if entry.attempt == attempt && entry.stage == Stage::Received =>
        {
            entry.stage = Stage::Started;
            entry.started_attempt = Some(attempt);
            let rows = SideRows {
                result: Row::Keep,
                assignment: Row::Keep,
            };
            Some((entry, rows))
        }
        (Some(mut entry), Change::Finished(_, attempt, result, summary))
            if entry.attempt == attempt
                && matches!(entry.stage, Stage::Received | Stage::Started) =>
        {
            entry.stage = Stage::Finished;
            entry.summary = Some(summary);
            let rows = SideRows {
                result: Row::Store(result),
                assignment: Row::Drop,
            };
            Some((entry, rows))
        }
        (Some(mut entry), Change::Acknowledged(_, attempt))
            if entry.attempt == attempt && entry.stage == Stage::Finished =>
        {
            entry.stage = Stage::Acknowledged;
            entry.acknowledged_seq = Some(*next_seq);
            *next_seq += 1;
            let rows = SideRows {
                result: Row::Drop,
                assignment: Row::Keep,
            };
            Some((entry, rows))
        }
        _ => None,
    }
}

/// What `--check` says about a journal file, read without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// No journal yet: it is created at the first start.
    Missing,
    /// Another process (a running worker) holds it.
    InUse,
    /// Readable: how many task ids it remembers and how many of them wait
    /// for an acknowledgement (or were cut off by a crash).
    Readable {
        /// Task ids remembered.
        task_ids: u64,
        /// Entries not yet acknowledged.
        unacknowledged: u64,
    },
}

/// Reads the journal at `path` without writing to it (`--check`).
///
/// # Errors
/// [`JournalError::Store`] when the file is not a readable journal (for
/// example it needs the recovery a start performs after a crash: the
/// message says so).
pub fn inspect(path: &Path) -> Result<Inspection, JournalError> {
    let fail = |e: &dyn std::fmt::Display| JournalError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if !path.exists() {
        return Ok(Inspection::Missing);
    }
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(Inspection::InUse),
        Err(e) => return Err(fail(&e)),
    };
    let read = db.begin_read().map_err(|e| fail(&e))?;
    let table = read.open_table(ENTRIES).map_err(|e| fail(&e))?;
    let (mut task_ids, mut unacknowledged) = (0, 0);
    for row in table.iter().map_err(|e| fail(&e))? {
        let (_, value) = row.map_err(|e| fail(&e))?;
        let entry: Entry = serde_json::from_slice(value.value()).map_err(|e| fail(&e))?;
        task_ids += 1;
        if entry.stage != Stage::Acknowledged {
            unacknowledged += 1;
        }
    }
    Ok(Inspection::Readable {
        task_ids,
        unacknowledged,
    })
}

/// Cuts `text` to at most [`MAX_SUMMARY_BYTES`] on a character boundary.
pub fn cut_to_summary(text: &str) -> String {
    let mut end = text.len().min(MAX_SUMMARY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(task_id: &str, attempt: u32) -> Assignment {
        Assignment {
            task_id: task_id.into(),
            attempt,
            plan_id: "p".into(),
            task_name: "crm.create_ticket".into(),
            task_version: "1".into(),
            inputs_json: "{}".into(),
            deadline: None,
            approval: None,
            trace: TRACE.parse().unwrap(),
        }
    }

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Opens again once the writer thread of the dropped handle let go.
    fn reopen(path: &Path) -> (Journal, Unfinished) {
        for _ in 0..200 {
            if let Ok(opened) = Journal::open(path, true, 10) {
                return opened;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the journal stayed locked after its handles were dropped");
    }

    impl Journal {
        async fn received_for_test(&self, assignment: Assignment) -> Result<(), JournalError> {
            self.received(assignment, false, None).await
        }
    }

    fn summary(outcome: Outcome) -> Summary {
        Summary {
            outcome,
            output_json: None,
            error_code: None,
            error_message: None,
        }
    }

    #[tokio::test]
    async fn every_stage_survives_reopening_and_only_unacknowledged_entries_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        {
            let (journal, unfinished) = Journal::open(&path, true, 10).unwrap();
            assert!(unfinished.is_empty());
            for id in ["received", "started", "finished", "acked"] {
                journal.received_for_test(assignment(id, 1)).await.unwrap();
            }
            for id in ["started", "finished", "acked"] {
                journal.started(id, 1, None).await.unwrap();
            }
            for id in ["finished", "acked"] {
                journal.finished(id, 1, b"result".to_vec(), summary(Outcome::Succeeded));
            }
            journal.acknowledged("acked", 1);
            // A commit after the acknowledgement proves it was applied.
            journal
                .received_for_test(assignment("later", 1))
                .await
                .unwrap();
        }
        let (journal, mut unfinished) = reopen(&path);
        unfinished.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let stages: Vec<(&str, Stage)> = unfinished
            .iter()
            .map(|r| (r.task_id.as_str(), r.entry.stage))
            .collect();
        assert_eq!(
            stages,
            [
                ("finished", Stage::Finished),
                ("later", Stage::Received),
                ("received", Stage::Received),
                ("started", Stage::Started),
            ]
        );
        let finished = &unfinished[0];
        assert_eq!(finished.result.as_deref(), Some(&b"result"[..]));
        assert!(finished.entry.ever_started() && finished.assignment.is_none());
        assert_eq!(
            unfinished[1].assignment.as_ref().map(|a| a.attempt),
            Some(1)
        );
        assert_eq!(
            unfinished[1]
                .assignment
                .as_ref()
                .map(|a| a.trace.to_string()),
            Some(TRACE.to_string()),
            "a recovered attempt stays in its trace"
        );
        assert!(unfinished[1].result.is_none() && unfinished[1].entry.received_at.is_some());
        let acked = journal.lookup("acked").unwrap().unwrap();
        assert_eq!(acked.stage, Stage::Acknowledged);
        assert_eq!(acked.summary.unwrap().outcome, Outcome::Succeeded);
        drop(journal);
        let (_, unfinished) = reopen(&path);
        assert!(
            unfinished.iter().all(|r| r.task_id != "acked"),
            "an acknowledged result is forgotten"
        );
    }

    #[tokio::test]
    async fn a_new_attempt_remembers_that_an_earlier_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j.redb"), true, 10).unwrap();
        journal.received_for_test(assignment("t", 1)).await.unwrap();
        journal.started("t", 1, None).await.unwrap();
        journal.received_for_test(assignment("t", 2)).await.unwrap();
        let entry = journal.lookup("t").unwrap().unwrap();
        assert_eq!((entry.attempt, entry.stage), (2, Stage::Received));
        assert_eq!(entry.started_attempt, Some(1));
        // A stale attempt's change does not touch the newer one.
        journal.finished("t", 1, vec![1], summary(Outcome::Failed));
        journal
            .received_for_test(assignment("other", 1))
            .await
            .unwrap();
        assert_eq!(journal.lookup("t").unwrap().unwrap().stage, Stage::Received);
    }

    #[tokio::test]
    async fn a_received_never_replaces_a_later_attempt_or_an_unacknowledged_result() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j.redb"), true, 10).unwrap();
        journal.received_for_test(assignment("t", 2)).await.unwrap();
        journal.received_for_test(assignment("t", 1)).await.unwrap();
        journal.received_for_test(assignment("t", 2)).await.unwrap();
        assert_eq!(journal.lookup("t").unwrap().unwrap().attempt, 2);
        journal.finished("t", 2, vec![7], summary(Outcome::Succeeded));
        journal.received_for_test(assignment("t", 3)).await.unwrap();
        let entry = journal.lookup("t").unwrap().unwrap();
        assert_eq!((entry.attempt, entry.stage), (2, Stage::Finished));
        // Started only follows received, and only for the current attempt.
        journal.started("t", 2, None).await.unwrap();
        assert_eq!(journal.lookup("t").unwrap().unwrap().started_attempt, None);
    }

    #[tokio::test]
    async fn only_the_most_recent_acknowledged_entries_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j.redb"), true, 3).unwrap();
        for i in 0..10 {
            let id = format!("t{i}");
            journal.received_for_test(assignment(&id, 1)).await.unwrap();
            journal.finished(&id, 1, vec![0; 100], summary(Outcome::Succeeded));
            journal.acknowledged(&id, 1);
        }
        journal
            .received_for_test(assignment("last", 1))
            .await
            .unwrap();
        let kept: Vec<bool> = (0..10)
            .map(|i| journal.lookup(&format!("t{i}")).unwrap().is_some())
            .collect();
        assert_eq!(
            kept,
            [
                false, false, false, false, false, false, false, true, true, true
            ]
        );
    }

    #[tokio::test]
    async fn inspection_reads_a_closed_journal_and_says_when_one_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        assert_eq!(inspect(&path).unwrap(), Inspection::Missing);
        {
            let (journal, _) = Journal::open(&path, true, 10).unwrap();
            journal.received_for_test(assignment("t", 1)).await.unwrap();
            assert_eq!(inspect(&path).unwrap(), Inspection::InUse);
        }
        let mut inspected = inspect(&path);
        for _ in 0..200 {
            if inspected.as_ref().is_ok_and(|i| *i != Inspection::InUse) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            inspected = inspect(&path);
        }
        assert_eq!(
            inspected.unwrap(),
            Inspection::Readable {
                task_ids: 1,
                unacknowledged: 1
            }
        );
    }

    #[test]
    fn a_second_process_cannot_open_the_same_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let _first = Journal::open(&path, true, 3).unwrap();
        let error = Journal::open(&path, true, 3).unwrap_err().to_string();
        assert!(error.contains("j.redb"), "{error}");
    }

    #[test]
    fn summaries_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_SUMMARY_BYTES);
        let cut = cut_to_summary(&text);
        assert!(cut.len() <= MAX_SUMMARY_BYTES && cut.chars().all(|c| c == 'é'));
    }
}
