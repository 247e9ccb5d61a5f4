//! The worker's own audit trail: one record per assignment received, kept
//! in a local append-only, hash-chained JSON-lines file and sent with the
//! result.
//!
//! Each record carries its position (`sequence`), the hash of the record
//! before it (`prev_hash`) and its own hash (`record_hash`: SHA-256 of the
//! canonical JSON of the record with `record_hash` empty). Editing, removing
//! or reordering a line breaks the chain, which [`verify_file`] detects.
//!
//! A record says what happened, never how authentication was done: it names
//! no credential, URL or host. This module does not send records anywhere;
//! the session does.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::executor::Outcome;

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the worker did with one assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Task id.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Plan id.
    pub plan_id: String,
    /// Task name.
    pub task_name: String,
    /// Task version.
    pub task_version: String,
    /// Inputs exactly as received (JSON text).
    pub inputs_json: String,
    /// Output (redacted), if any.
    pub output: Option<Value>,
    /// When the assignment arrived (RFC 3339, UTC).
    pub received_at: String,
    /// When execution started, if anything ran.
    pub started_at: Option<String>,
    /// When the outcome was decided.
    pub finished_at: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Error code when not succeeded.
    pub error_code: Option<String>,
    /// Error message when not succeeded.
    pub error_message: Option<String>,
    /// The worker's identity (URI SAN of its certificate).
    pub worker_identity: String,
    /// Position in the local log, from 1.
    pub sequence: u64,
    /// Hash of the previous record.
    pub prev_hash: String,
    /// Hash of this record.
    pub record_hash: String,
}

impl AuditRecord {
    /// The hash this record should carry: SHA-256 of its canonical JSON with
    /// `record_hash` empty.
    pub fn compute_hash(&self) -> String {
        let mut copy = self.clone();
        copy.record_hash.clear();
        // Serializing a plain struct of strings, numbers and JSON values cannot fail.
        let value = serde_json::to_value(&copy).unwrap_or(Value::Null);
        hex::encode(Sha256::digest(
            private_worker_proto::canonical_json(&value).as_bytes(),
        ))
    }
}

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
}

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
        })
    }

    /// Chains `record` after the last one (filling `sequence`, `prev_hash`,
    /// `record_hash`), appends it and syncs it to disk, then returns it.
    ///
    /// # Errors
    /// [`AuditError::Io`] when the write or sync fails; the record is then
    /// not part of the chain.
    pub fn append(&mut self, mut record: AuditRecord) -> Result<AuditRecord, AuditError> {
        record.sequence = self.last_sequence + 1;
        record.prev_hash = self.last_hash.clone();
        record.record_hash = record.compute_hash();
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.last_sequence = record.sequence;
        self.last_hash = record.record_hash.clone();
        Ok(record)
    }
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
    let mut last = (0u64, GENESIS_HASH.to_string());
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = index as u64 + 1;
        let broken = |problem: String| AuditError::Broken {
            path: path.to_path_buf(),
            line: line_no,
            problem,
        };
        let line = line.map_err(|e| broken(e.to_string()))?;
        let record: AuditRecord =
            serde_json::from_str(&line).map_err(|e| broken(format!("not a record: {e}")))?;
        if record.sequence != last.0 + 1 {
            return Err(broken(format!(
                "sequence {} follows {}",
                record.sequence, last.0
            )));
        }
        if record.prev_hash != last.1 {
            return Err(broken(
                "prev_hash does not match the previous record".into(),
            ));
        }
        if record.record_hash != record.compute_hash() {
            return Err(broken("record_hash does not match the record".into()));
        }
        last = (record.sequence, record.record_hash);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(task: &str) -> AuditRecord {
        AuditRecord {
            task_id: task.into(),
            attempt: 1,
            plan_id: "p".into(),
            task_name: "crm.create_ticket".into(),
            task_version: "1".into(),
            inputs_json: "{}".into(),
            output: None,
            received_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: "2026-01-01T00:00:01Z".into(),
            outcome: Outcome::Rejected,
            error_code: Some("not_allowed".into()),
            error_message: None,
            worker_identity: "spiffe://t/worker/w".into(),
            sequence: 0,
            prev_hash: String::new(),
            record_hash: String::new(),
        }
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
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("record_hash"),
            "{err}"
        );
    }
}
