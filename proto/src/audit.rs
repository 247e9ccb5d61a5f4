//! The audit record's language-neutral *record form*, its hash, and the
//! chain check: what a worker writes to its local log and what any
//! verifier (the worker's `--verify-audit`, the orchestrator, a script in
//! another language) recomputes.
//!
//! The form is defined in the .proto header ("Audit records"): a JSON
//! object with the 17 fields of `AuditRecord`, strings as strings (`""`
//! when empty, JSON inputs and outputs kept as text), integers as numbers,
//! the outcome as the enum value's name, timestamps as RFC 3339 UTC with
//! nine fractional digits or `null`. `record_hash` is the SHA-256 of the
//! RFC 8785 canonical JSON of the form without `record_hash`.
//!
//! What it does not do: read or write files, or decide what a record says
//! (the worker's runner does); it only fixes the bytes everybody hashes.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::v1 as pb;

/// `prev_hash` of the first record of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record in the record form (one line of a worker's audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
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
    /// Inputs as received (JSON text), or the truncation marker.
    pub inputs_json: String,
    /// Output as reported (JSON text, redacted), `""` when none.
    pub output_json: String,
    /// When the worker received the assignment ([`timestamp_text`] form).
    pub received_at: Option<String>,
    /// When the call started; `None` when nothing ran.
    pub started_at: Option<String>,
    /// When the outcome was decided.
    pub finished_at: Option<String>,
    /// The `Outcome` value's name, e.g. `SUCCEEDED`.
    pub outcome: String,
    /// Error code, `""` when none.
    pub error_code: String,
    /// Error message, `""` when none.
    pub error_message: String,
    /// The writer's identity (URI SAN of its certificate).
    pub worker_identity: String,
    /// Position in the writer's log, from 1.
    pub sequence: u64,
    /// `record_hash` of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// Hash of this record (see [`Record::compute_hash`]).
    pub record_hash: String,
}

/// The 17 members of the record form, in the .proto's field order.
pub const FIELDS: [&str; 17] = [
    "task_id",
    "attempt",
    "plan_id",
    "task_name",
    "task_version",
    "inputs_json",
    "output_json",
    "received_at",
    "started_at",
    "finished_at",
    "outcome",
    "error_code",
    "error_message",
    "worker_identity",
    "sequence",
    "prev_hash",
    "record_hash",
];

/// Largest `sequence` the form holds (integers above it do not survive
/// canonical JSON's doubles).
pub const MAX_SEQUENCE: u64 = (1 << 53) - 1;

/// Whether `text` is a SHA-256 digest as the contract writes it: 64
/// lower-case hex digits.
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Record {
    /// Checks what the form requires beyond JSON types: ids by the
    /// contract's rule, `attempt` and `sequence` from 1 (a sequence below
    /// 2^53), an outcome the contract names, `received_at` and
    /// `finished_at` present and every timestamp exactly in the form
    /// [`timestamp_text`] writes, a `worker_identity`, and both hashes 64
    /// lower-case hex digits.
    ///
    /// # Errors
    /// The first thing that breaks the form, naming the field.
    pub fn check_form(&self) -> Result<(), String> {
        for (field, value) in [
            ("task_id", &self.task_id),
            ("plan_id", &self.plan_id),
            ("task_name", &self.task_name),
            ("task_version", &self.task_version),
        ] {
            crate::check_id(value).map_err(|why| format!("{field} {why}"))?;
        }
        if self.attempt == 0 {
            return Err("attempt is 0 (attempts count from 1)".into());
        }
        if self.sequence == 0 || self.sequence > MAX_SEQUENCE {
            return Err(format!(
                "sequence {} is outside 1 to 2^53 - 1",
                self.sequence
            ));
        }
        match pb::Outcome::from_str_name(&self.outcome) {
            None | Some(pb::Outcome::Unspecified) => {
                return Err(format!(
                    "outcome {:?} is not an outcome name of this contract",
                    self.outcome
                ));
            }
            Some(_) => {}
        }
        for (field, value, required) in [
            ("received_at", &self.received_at, true),
            ("started_at", &self.started_at, false),
            ("finished_at", &self.finished_at, true),
        ] {
            match value {
                None if required => return Err(format!("{field} is null")),
                None => {}
                Some(text) if parse_timestamp(text).is_none() => {
                    return Err(format!(
                        "{field} is not RFC 3339 UTC with nine fractional digits"
                    ));
                }
                Some(_) => {}
            }
        }
        if self.worker_identity.is_empty() {
            return Err("worker_identity is empty".into());
        }
        for (field, value) in [
            ("prev_hash", &self.prev_hash),
            ("record_hash", &self.record_hash),
        ] {
            if !is_digest(value) {
                return Err(format!("{field} is not 64 lower-case hex digits"));
            }
        }
        Ok(())
    }

    /// The canonical JSON of this record's form without `record_hash`:
    /// the bytes `record_hash` is the SHA-256 of.
    pub fn hashed_text(&self) -> String {
        // A struct of strings and integers always serializes to an object.
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("record_hash");
        }
        crate::canonical_json(&value)
    }

    /// The `record_hash` this record should carry.
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.hashed_text().as_bytes()))
    }

    /// The record as one log line (canonical JSON, no newline).
    pub fn to_line(&self) -> String {
        crate::canonical_json(&serde_json::to_value(self).unwrap_or_default())
    }

    /// Parses one log line: a JSON object with exactly the 17 members of
    /// the form, of the right types, passing [`Record::check_form`].
    ///
    /// # Errors
    /// What is wrong with it, naming the member.
    pub fn from_line(line: &str) -> Result<Record, String> {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let object = value.as_object().ok_or("not a JSON object")?;
        if let Some(missing) = FIELDS.iter().find(|f| !object.contains_key(**f)) {
            return Err(format!("missing member `{missing}`"));
        }
        let record: Record = serde_json::from_value(value).map_err(|e| e.to_string())?;
        record.check_form()?;
        Ok(record)
    }

    /// The record form of a record received on the wire.
    ///
    /// # Errors
    /// The message cannot be put in the form (an outcome value this
    /// contract version does not name, a timestamp outside years 1 to
    /// 9999) or breaks it ([`Record::check_form`]). Such a record cannot
    /// be verified.
    pub fn from_message(message: &pb::AuditRecord) -> Result<Record, String> {
        let outcome = pb::Outcome::try_from(message.outcome).map_err(|_| {
            format!(
                "outcome {} is not a value of this contract",
                message.outcome
            )
        })?;
        let time = |field: &str, t: &Option<prost_types::Timestamp>| match t {
            None => Ok(None),
            Some(t) => timestamp_text(t)
                .map(Some)
                .ok_or_else(|| format!("{field} is outside years 1 to 9999")),
        };
        let record = Record {
            task_id: message.task_id.clone(),
            attempt: message.attempt,
            plan_id: message.plan_id.clone(),
            task_name: message.task_name.clone(),
            task_version: message.task_version.clone(),
            inputs_json: message.inputs_json.clone(),
            output_json: message.output_json.clone(),
            received_at: time("received_at", &message.received_at)?,
            started_at: time("started_at", &message.started_at)?,
            finished_at: time("finished_at", &message.finished_at)?,
            outcome: outcome.as_str_name().to_string(),
            error_code: message.error_code.clone(),
            error_message: message.error_message.clone(),
            worker_identity: message.worker_identity.clone(),
            sequence: message.sequence,
            prev_hash: message.prev_hash.clone(),
            record_hash: message.record_hash.clone(),
        };
        record.check_form()?;
        Ok(record)
    }

    /// The wire message for this record. Lossless for records this crate
    /// made or parsed successfully: [`Record::from_message`] of the result
    /// gives this record back.
    pub fn to_message(&self) -> pb::AuditRecord {
        let time = |t: &Option<String>| t.as_deref().and_then(parse_timestamp);
        pb::AuditRecord {
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            plan_id: self.plan_id.clone(),
            task_name: self.task_name.clone(),
            task_version: self.task_version.clone(),
            inputs_json: self.inputs_json.clone(),
            output_json: self.output_json.clone(),
            received_at: time(&self.received_at),
            started_at: time(&self.started_at),
            finished_at: time(&self.finished_at),
            outcome: pb::Outcome::from_str_name(&self.outcome)
                .unwrap_or(pb::Outcome::Unspecified)
                .into(),
            error_code: self.error_code.clone(),
            error_message: self.error_message.clone(),
            worker_identity: self.worker_identity.clone(),
            sequence: self.sequence,
            prev_hash: self.prev_hash.clone(),
            record_hash: self.record_hash.clone(),
        }
    }
}

/// A timestamp in the record form: RFC 3339, UTC, exactly nine fractional
/// digits (`2026-12-02T13:08:21.120000000Z`); `None` outside years 1 to
/// 9999 or for nanos outside 0..1e9.
pub fn timestamp_text(t: &prost_types::Timestamp) -> Option<String> {
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    let at = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    if !(1..=9999).contains(&at.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
    ))
}

/// The record-form text of an instant (see [`timestamp_text`]).
pub fn system_time_text(at: SystemTime) -> String {
    timestamp_text(&prost_types::Timestamp::from(at)).unwrap_or_default()
}

/// Reads a record-form timestamp back; `None` unless it is exactly in the
/// form [`timestamp_text`] writes.
pub fn parse_timestamp(text: &str) -> Option<prost_types::Timestamp> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let t = prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).ok()?,
    };
    (timestamp_text(&t).as_deref() == Some(text)).then_some(t)
}

/// The JSON text that stands for inputs or an output too large to keep:
/// `{"bytes":N,"sha256":"<hex>","truncated":true}` (canonical JSON), where
/// `N` and the digest are those of the original bytes.
pub fn truncation_marker(original: &[u8]) -> String {
    crate::canonical_json(&serde_json::json!({
        "truncated": true,
        "bytes": original.len(),
        "sha256": hex::encode(Sha256::digest(original)),
    }))
}

/// Where a log stops verifying, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 0-based index of the first bad record (its line number less one).
    pub index: u64,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.index + 1, self.problem)
    }
}

/// Follows one log from its first line: each record must be numbered one
/// after the last, point at the last's hash, and carry its own right hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Sequence of the last record taken (0 before the first).
    pub last_sequence: u64,
    /// Hash of the last record taken ([`GENESIS_HASH`] before the first).
    pub last_hash: String,
}

impl Default for Chain {
    fn default() -> Chain {
        Chain {
            last_sequence: 0,
            last_hash: GENESIS_HASH.to_string(),
        }
    }
}

impl Chain {
    /// Takes the next record.
    ///
    /// # Errors
    /// What breaks the chain at this record; the chain is unchanged.
    pub fn push(&mut self, record: &Record) -> Result<(), String> {
        if record.sequence != self.last_sequence + 1 {
            return Err(format!(
                "sequence {} follows {}",
                record.sequence, self.last_sequence
            ));
        }
        if record.prev_hash != self.last_hash {
            return Err("prev_hash does not match the previous record".into());
        }
        if record.record_hash != record.compute_hash() {
            return Err("record_hash does not match the record".into());
        }
        self.last_sequence = record.sequence;
        self.last_hash.clone_from(&record.record_hash);
        Ok(())
    }
}

/// Verifies a whole log given as lines (without their newlines), from the
/// first record. Returns the chain's end.
///
/// # Errors
/// [`ChainBreak`] at the first line that does not parse or breaks the chain.
pub fn verify_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Chain, ChainBreak> {
    let mut chain = Chain::default();
    for (index, line) in lines.into_iter().enumerate() {
        let index = index as u64;
        let record = Record::from_line(line).map_err(|problem| ChainBreak {
            index,
            problem: format!("not a record: {problem}"),
        })?;
        chain
            .push(&record)
            .map_err(|problem| ChainBreak { index, problem })?;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            task_id: "t-1".into(),
            attempt: 1,
            plan_id: "p-1".into(),
            task_name: "crm.create_ticket".into(),
            task_version: "1".into(),
            inputs_json: r#"{"title":"x"}"#.into(),
            output_json: String::new(),
            received_at: Some("2026-12-02T13:08:21.120000000Z".into()),
            started_at: None,
            finished_at: Some("2026-12-02T13:08:21.130000000Z".into()),
            outcome: "REJECTED".into(),
            error_code: "not_allowed".into(),
            error_message: String::new(),
            worker_identity: "spiffe://t/worker/w".into(),
            sequence: 1,
            prev_hash: GENESIS_HASH.into(),
            record_hash: String::new(),
        }
    }

    #[test]
    fn lines_that_break_the_form_are_refused_naming_the_member() {
        let mut r = record();
        r.record_hash = r.compute_hash();
        let good = serde_json::to_value(&r).unwrap();
        let broken = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            edit(&mut v);
            Record::from_line(&v.to_string()).unwrap_err()
        };
        assert!(
            broken(&|v| v["received_at"] = "2026-12-02T13:08:21.12Z".into())
                .contains("received_at")
        );
        assert!(broken(&|v| v["received_at"] = "yesterday".into()).contains("received_at"));
        assert!(broken(&|v| v["finished_at"] = serde_json::Value::Null).contains("finished_at"));
        assert!(broken(&|v| v["outcome"] = "succeeded".into()).contains("outcome"));
        assert!(broken(&|v| v["task_id"] = "".into()).contains("task_id"));
        assert!(broken(&|v| v["attempt"] = 0.into()).contains("attempt"));
        assert!(broken(&|v| v["sequence"] = 0.into()).contains("sequence"));
        assert!(broken(&|v| v["worker_identity"] = "".into()).contains("worker_identity"));
        assert!(broken(&|v| v["prev_hash"] = "AB".repeat(32).into()).contains("prev_hash"));
        assert!(
            broken(&|v| {
                v.as_object_mut().unwrap().remove("started_at");
            })
            .contains("missing member `started_at`")
        );
        assert!(Record::from_line(&good.to_string()).is_ok());
    }

    #[test]
    fn the_wire_message_and_the_record_form_convert_both_ways_without_loss() {
        let mut r = record();
        r.record_hash = r.compute_hash();
        let back = Record::from_message(&r.to_message()).unwrap();
        assert_eq!(back, r);
        assert_eq!(Record::from_line(&r.to_line()).unwrap(), r);
    }

    #[test]
    fn timestamps_have_exactly_nine_fractional_digits_and_nothing_else_parses() {
        let t = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 5,
        };
        assert_eq!(
            timestamp_text(&t).as_deref(),
            Some("2026-01-01T00:00:00.000000005Z")
        );
        assert_eq!(parse_timestamp("2026-01-01T00:00:00.000000005Z"), Some(t));
        for other in [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.5Z",
            "2026-01-01T01:00:00.000000000+01:00",
        ] {
            assert_eq!(parse_timestamp(other), None, "{other}");
        }
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(timestamp_text(&bad), None);
    }

    #[test]
    fn an_unknown_field_or_outcome_is_refused_with_its_name() {
        let mut value = serde_json::to_value(record()).unwrap();
        value["extra"] = 1.into();
        let why = Record::from_line(&value.to_string()).unwrap_err();
        assert!(why.contains("extra"), "{why}");
        let mut message = record().to_message();
        message.outcome = 99;
        assert!(Record::from_message(&message).unwrap_err().contains("99"));
    }

    #[test]
    fn a_chain_is_checked_for_order_links_and_hashes() {
        let mut first = record();
        first.record_hash = first.compute_hash();
        let mut second = record();
        second.task_id = "t-2".into();
        second.sequence = 2;
        second.prev_hash = first.record_hash.clone();
        second.record_hash = second.compute_hash();
        let lines = [first.to_line(), second.to_line()];
        let chain = verify_lines(lines.iter().map(String::as_str)).unwrap();
        assert_eq!(chain.last_sequence, 2);

        let mut forged = second.clone();
        forged.task_name = "crm.delete_customer".into();
        let lines = [first.to_line(), forged.to_line()];
        let broken = verify_lines(lines.iter().map(String::as_str)).unwrap_err();
        assert_eq!(broken.index, 1);
        assert!(broken.problem.contains("record_hash"), "{broken}");
    }
}
