//! The worker's own audit trail: one record per assignment received, kept
//! in a local append-only, hash-chained JSON-lines file and sent with the
//! result.
//!
//! Each line is one record in the contract's *record form*
//! ([`private_worker_proto::audit::Record`], defined in the .proto header),
//! written as canonical JSON. It carries its position (`sequence`), the
//! hash of the record before it (`prev_hash`) and its own hash
//! (`record_hash`). Editing, removing or reordering a line breaks the
//! chain, which [`verify_file`] detects; any implementation of the contract
//! can check the same file.
//!
//! Writes go through [`AuditWriter`], one thread that commits records in
//! groups: every record waiting when a write starts goes into one `write`
//! and one `fdatasync`, so a busy worker pays one disk sync per batch, not
//! per task, and no caller is answered before its record is on disk.
//!
//! A record says what happened, never how authentication was done: it names
//! no credential, URL or host. This module does not send records anywhere;
//! the session does.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use private_worker_proto::audit::{Chain, ChainBreak};
pub use private_worker_proto::audit::{GENESIS_HASH, Record};

/// Why the audit log could not be written or verified. A worker that
/// cannot write its audit log stops taking work: the operator must fix the
/// file or disk.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the file failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a record, or the chain is broken there.
    #[error("audit log {path}: line {line}: {problem}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        problem: String,
    },
}

/// The open local audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: std::fs::File,
    last_sequence: u64,
    last_hash: String,
    sync: bool,
}

/// Most records committed in one write and sync.
pub const MAX_BATCH: usize = 1024;

impl AuditLog {
    /// Opens (or creates) the log at `path`, verifying the chain already in
    /// it so that new records continue it.
    ///
    /// # Errors
    /// [`AuditError`] when the file cannot be opened or its chain is broken.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (last_sequence, last_hash) = if path.exists() {
            repair_torn_tail(path)?;
            verify_file(path)?
        } else {
            (0, GENESIS_HASH.to_string())
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            last_sequence,
            last_hash,
            sync: true,
        })
    }

    /// Whether each commit waits for `fdatasync` (the default). Turning it
    /// off trades crash durability for speed; benchmarks measure both.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Chains `record` after the last one (filling `sequence`, `prev_hash`,
    /// `record_hash`), appends it and syncs it to disk, then returns it.
    ///
    /// # Errors
    /// [`AuditError::Io`] when the write or sync fails; the record is then
    /// not part of the chain.
    pub fn append(&mut self, record: Record) -> Result<Record, AuditError> {
        let mut chained = self.append_batch(vec![record])?;
        Ok(chained.remove(0))
    }

    /// Chains and appends `records` in order with one write and one sync.
    ///
    /// # Errors
    /// [`AuditError::Io`] when the write or sync fails; none of the records
    /// is then part of the chain (the next commit continues from the last
    /// good record).
    pub fn append_batch(&mut self, records: Vec<Record>) -> Result<Vec<Record>, AuditError> {
        let (mut sequence, mut hash) = (self.last_sequence, self.last_hash.clone());
        let mut bytes = Vec::new();
        let mut chained = Vec::with_capacity(records.len());
        for mut record in records {
            sequence += 1;
            record.sequence = sequence;
            record.prev_hash = hash;
            record.record_hash = record.compute_hash();
            hash = record.record_hash.clone();
            bytes.extend(record.to_line().into_bytes());
            bytes.push(b'\n');
            chained.push(record);
        }
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let before = self.file.metadata().map_err(io)?.len();
        let written = self.file.write_all(&bytes).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Take back a torn or unsynced batch so the file still ends at
            // the last committed record and the chain stays intact.
            let _ = self.file.set_len(before);
            return Err(io(e));
        }
        self.last_sequence = sequence;
        self.last_hash = hash;
        Ok(chained)
    }
}

struct Pending {
    record: Record,
    reply: tokio::sync::oneshot::Sender<Result<Record, AuditError>>,
}

/// The handle tasks use to append audit records; commits happen in groups
/// on a dedicated thread (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<Pending>,
    path: PathBuf,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("task_id", &self.record.task_id)
            .finish()
    }
}

impl AuditWriter {
    /// Moves `log` onto its own thread; the thread ends when the last
    /// handle is dropped.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(mut log: AuditLog) -> std::io::Result<AuditWriter> {
        let (tx, rx) = mpsc::channel::<Pending>();
        let path = log.path.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Some(batch) = crate::batch::next_batch(&rx, MAX_BATCH) {
                    let (records, replies): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|p| (p.record, p.reply)).unzip();
                    match log.append_batch(records) {
                        Ok(chained) => {
                            for (record, reply) in chained.into_iter().zip(replies) {
                                let _ = reply.send(Ok(record));
                            }
                        }
                        Err(e) => {
                            let message = e.to_string();
                            for reply in replies {
                                let _ = reply.send(Err(AuditError::Io {
                                    path: log.path.clone(),
                                    source: std::io::Error::other(message.clone()),
                                }));
                            }
                        }
                    }
                }
            })?;
        Ok(AuditWriter { tx, path })
    }

    /// Chains and commits `record`; returns it once it is on disk.
    ///
    /// # Errors
    /// [`AuditError`] when the commit failed or the writer thread is gone.
    pub async fn append(&self, record: Record) -> Result<Record, AuditError> {
        let gone = || AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("the audit writer thread has stopped"),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Pending { record, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Longest tail read back at start when looking for a torn last record
/// (a record is well under this: outputs and inputs are capped at 1 MiB).
const MAX_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// A kill -9 or power cut during a write can leave the last record half
/// written (no final newline). Such a record was never synced, so it was
/// never sent or acknowledged: cut it back and say so. A complete last
/// record that only lacks its newline gets the newline. Anything else
/// (a bad line before the last) is left for [`verify_file`] to refuse.
fn repair_torn_tail(path: &Path) -> Result<(), AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(io)?;
    if tail.is_empty() || tail.ends_with(b"\n") {
        return Ok(());
    }
    let Some(line_start) = tail
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .or((start == 0).then_some(0))
    else {
        return Ok(());
    };
    let last = &tail[line_start..];
    let complete = std::str::from_utf8(last).is_ok_and(|line| Record::from_line(line).is_ok());
    if complete {
        file.write_all(b"\n")
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        tracing::warn!(log = %path.display(), "the audit log's last record had no newline (the worker stopped mid-write); added it");
    } else {
        let keep = start + line_start as u64;
        file.set_len(keep)
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        tracing::warn!(
            log = %path.display(),
            cut_bytes = len - keep,
            "the audit log ended in a torn record (the worker stopped mid-write); cut it back: it was never synced, sent or acknowledged"
        );
    }
    Ok(())
}

/// The records in the last few MiB of the log (at least the last record
/// written, whatever its size), oldest first. At start, they tell which
/// attempts the journal still shows unfinished were in fact audited just
/// before a crash, so they are reported as they ended, not run again.
///
/// # Errors
/// [`AuditError::Io`] when the file cannot be read (a missing file has no
/// records).
pub fn recent_records(path: &Path) -> Result<Vec<Record>, AuditError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(io)?;
    let lines = tail.split(|b| *b == b'\n');
    // Past the start of the file, the first piece is the end of a line.
    let skip = usize::from(start > 0);
    Ok(lines
        .skip(skip)
        .filter_map(|line| Record::from_line(std::str::from_utf8(line).ok()?).ok())
        .collect())
}

/// The number of the last line when it has no final newline (a record a
/// crash may have torn; the next start cuts it back or completes it, see
/// [`AuditLog::open`]), read without changing the file.
///
/// # Errors
/// [`AuditError::Io`] when the file cannot be read.
pub fn unterminated_last_line(path: &Path) -> Result<Option<u64>, AuditError> {
    let bytes = std::fs::read(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(None);
    }
    let newlines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
    Ok(Some(newlines + 1))
}

/// Checks every record of a log: each parses, is numbered in order, points
/// to its predecessor's hash and carries its own correct hash. Returns the
/// last sequence number and hash.
///
/// # Errors
/// [`AuditError::Broken`] at the first line that breaks the chain.
pub fn verify_file(path: &Path) -> Result<(u64, String), AuditError> {
    let file = std::fs::File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut chain = Chain::default();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let index = index as u64;
        let broken = |problem: String| {
            let at = ChainBreak { index, problem };
            AuditError::Broken {
                path: path.to_path_buf(),
                line: at.index + 1,
                problem: at.problem,
            }
        };
        let line = line.map_err(|e| broken(e.to_string()))?;
        let record = Record::from_line(&line).map_err(|e| broken(not_a_record(&line, &e)))?;
        chain.push(&record).map_err(broken)?;
    }
    Ok((chain.last_sequence, chain.last_hash))
}

/// Why a line is not a record, with a hint when it is a record in the form
/// private-worker wrote before the contract fixed the record form (parsed
/// `output`, lower-case outcome).
fn not_a_record(line: &str, error: &str) -> String {
    let earlier_form = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            v.as_object()
                .map(|o| o.contains_key("output") && !o.contains_key("output_json"))
        })
        .unwrap_or(false);
    if earlier_form {
        format!(
            "not a record: {error}. This line is in the form private-worker wrote before the \
             contract's record form (it has `output`, not `output_json`): move the old log aside \
             (it stays evidence; an earlier private-worker's --check verifies it) and start a new one"
        )
    } else {
        format!("not a record: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(task: &str) -> Record {
        Record {
            task_id: task.into(),
            attempt: 1,
            plan_id: "p".into(),
            task_name: "crm.create_ticket".into(),
            task_version: "1".into(),
            inputs_json: "{}".into(),
            output_json: String::new(),
            received_at: Some("2026-01-01T00:00:00.000000000Z".into()),
            started_at: None,
            finished_at: Some("2026-01-01T00:00:01.000000000Z".into()),
            outcome: "REJECTED".into(),
            error_code: "not_allowed".into(),
            error_message: String::new(),
            worker_identity: "spiffe://t/worker/w".into(),
            sequence: 0,
            prev_hash: String::new(),
            record_hash: String::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_through_the_writer_form_one_unbroken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let writer = AuditWriter::start(AuditLog::open(&path).unwrap()).unwrap();
        let appends = (0..200).map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move { writer.append(record(&format!("t{i}"))).await.unwrap() })
        });
        let mut sequences: Vec<u64> = futures::future::join_all(appends)
            .await
            .into_iter()
            .map(|r| r.unwrap().sequence)
            .collect();
        sequences.sort_unstable();
        assert_eq!(sequences, (1..=200).collect::<Vec<_>>());
        assert_eq!(verify_file(&path).unwrap().0, 200);
    }

    #[test]
    fn records_chain_across_reopening_and_tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        let first = log.append(record("a")).unwrap();
        assert_eq!(
            (first.sequence, first.prev_hash.as_str()),
            (1, GENESIS_HASH)
        );
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
        let second = log.append(record("b")).unwrap();
        assert_eq!(second.sequence, 2);
        assert_eq!(second.prev_hash, first.record_hash);
        assert_eq!(verify_file(&path).unwrap().0, 2);

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"a\"", "\"z\"", 1)).unwrap();
        assert!(
            AuditLog::open(&path).is_err(),
            "a broken chain is refused at start"
        );
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("record_hash"),
            "{err}"
        );
    }

    #[test]
    fn a_torn_last_record_is_cut_back_at_start_and_a_break_elsewhere_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(record("a")).unwrap();
        let second = log.append(record("b")).unwrap();
        drop(log);
        let whole = std::fs::read(&path).unwrap();

        // Half of a third record, as a kill -9 mid-write leaves it.
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"task_id":"c","attempt":1,"plan_"#);
        std::fs::write(&path, &torn).unwrap();
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "only the torn bytes are cut"
        );
        let third = log.append(record("c")).unwrap();
        assert_eq!(
            (third.sequence, third.prev_hash.as_str()),
            (3, second.record_hash.as_str())
        );
        drop(log);
        assert_eq!(verify_file(&path).unwrap().0, 3);

        // A complete last record missing only its newline is kept.
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 1]).unwrap();
        AuditLog::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), text);

        // `--check` can tell a torn last line from a broken log.
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"task_id":"c""#);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(unterminated_last_line(&path).unwrap(), Some(3));
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(unterminated_last_line(&path).unwrap(), None);

        // A torn record that is not the last one is refused, as before.
        let mut broken = whole[..whole.len() / 2].to_vec();
        broken.push(b'\n');
        broken.extend_from_slice(&whole);
        std::fs::write(&path, &broken).unwrap();
        let error = AuditLog::open(&path).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
    }
}
