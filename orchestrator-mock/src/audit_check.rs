//! What the orchestrator verifies in every audit record a worker sends,
//! as the contract lets it ("Audit checks by the orchestrator" in the
//! .proto header):
//!
//! - the record's own hash ([`check_record`]);
//! - that it matches the attempt it answers, as this orchestrator sent it,
//!   and the result it came with ([`check_record`]);
//! - each worker identity's chain as records arrive ([`Chains`]): links to
//!   known neighbours, forks (one sequence, two hashes), the first record
//!   pointing at 64 zeros, sequences going back further than results can
//!   race.
//!
//! A record that fails a check is still stored, flagged with every reason
//! ([`AuditCheck`]), so the evidence is kept and visible in the admin API.
//!
//! What it does not do: store anything, or decide whether a result is
//! applied to a plan (the gateway and the state do). Memory is bounded:
//! [`KEPT_PER_IDENTITY`] links per worker identity.

use std::collections::{BTreeMap, HashMap};

use private_worker_proto::audit::{Record, truncation_marker};
use private_worker_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::state::AssignedAttempt;

/// How far behind the highest sequence seen from an identity a record may
/// arrive (results race each other; a worker holds at most its
/// `max_in_flight` unacknowledged results plus a few refused ones).
pub const REORDER_WINDOW: u64 = 8192;

/// Links remembered per worker identity (the most recent sequences); each
/// is two 32-byte digests, so about 1.5 MiB per identity at most.
pub const KEPT_PER_IDENTITY: usize = 16384;

/// The verdict stored with each audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheck {
    /// `ok` when every check passed, `flagged` otherwise.
    pub verdict: String,
    /// Why it is flagged, one reason per entry; empty when ok.
    pub problems: Vec<String>,
}

impl AuditCheck {
    /// The verdict for a list of problems.
    pub fn from_problems(problems: Vec<String>) -> AuditCheck {
        AuditCheck {
            verdict: if problems.is_empty() { "ok" } else { "flagged" }.into(),
            problems,
        }
    }

    /// Whether every check passed (records stored before checks existed
    /// are `unchecked`, not ok).
    pub fn is_ok(&self) -> bool {
        self.verdict == "ok"
    }

    /// Whether a check failed.
    pub fn is_flagged(&self) -> bool {
        self.verdict == "flagged"
    }
}

impl Default for AuditCheck {
    /// Records stored before checks existed: not checked.
    fn default() -> AuditCheck {
        AuditCheck {
            verdict: "unchecked".into(),
            problems: Vec::new(),
        }
    }
}

/// Checks one record against itself, the result it came with, the sender
/// and the attempt as it was assigned (`None`: no such attempt was assigned).
/// The chain is checked separately ([`Chains::follow`]).
pub fn check_record(
    result: &pb::TaskResult,
    record: &pb::AuditRecord,
    sender: &str,
    assigned: Option<&AssignedAttempt>,
) -> Vec<String> {
    let mut problems = Vec::new();
    match Record::from_message(record) {
        Ok(form) if form.compute_hash() != record.record_hash => {
            problems.push("record_hash does not match the record".to_string());
        }
        Ok(_) => {}
        Err(why) => problems.push(format!("the record cannot be verified: {why}")),
    }
    let task = result.task.clone().unwrap_or_default();
    let mut compare = |field: &str, recorded: &str, expected: &str, against: &str| {
        if recorded != expected {
            problems.push(format!("{field} differs from the {against}"));
        }
    };
    let result_fields = [
        ("task_id", record.task_id.clone(), task.task_id.clone()),
        (
            "attempt",
            record.attempt.to_string(),
            task.attempt.to_string(),
        ),
        (
            "outcome",
            record.outcome.to_string(),
            result.outcome.to_string(),
        ),
        (
            "output_json",
            record.output_json.clone(),
            result.output_json.clone(),
        ),
        (
            "error_code",
            record.error_code.clone(),
            result.error_code.clone(),
        ),
        (
            "error_message",
            record.error_message.clone(),
            result.error_message.clone(),
        ),
    ];
    for (field, recorded, expected) in &result_fields {
        compare(field, recorded, expected, "result's");
    }
    compare(
        "worker_identity",
        &record.worker_identity,
        sender,
        "sender's certificate identity",
    );
    if let Some(a) = assigned {
        compare("plan_id", &record.plan_id, &a.plan_id, "assignment's");
        compare("task_name", &record.task_name, &a.task_name, "assignment's");
        compare(
            "task_version",
            &record.task_version,
            &a.task_version,
            "assignment's",
        );
    }
    match assigned {
        None => problems.push("no such attempt was assigned".into()),
        Some(a) => {
            if a.worker != sender {
                problems.push(format!(
                    "the attempt was assigned to {}, not to the sender",
                    a.worker
                ));
            }
            let marker = truncation_marker(a.inputs_json.as_bytes());
            if record.inputs_json != a.inputs_json && record.inputs_json != marker {
                problems.push("inputs_json differs from the assignment's".into());
            }
        }
    }
    problems
}

/// One sequence's place in a chain.
#[derive(Debug, Clone)]
struct Link {
    prev_hash: [u8; 32],
    record_hash: [u8; 32],
}

#[derive(Debug, Default)]
struct IdentityChain {
    highest: u64,
    links: BTreeMap<u64, Link>,
}

/// Every worker identity's chain, as far as records have arrived.
#[derive(Debug, Default)]
pub struct Chains {
    by_identity: HashMap<String, IdentityChain>,
}

fn digest(text: &str) -> Option<[u8; 32]> {
    if !private_worker_proto::audit::is_digest(text) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

impl Chains {
    /// Takes `record` from `identity` (the certificate's) into its chain;
    /// returns what is wrong with its place in it (empty when it fits).
    pub fn follow(&mut self, identity: &str, record: &pb::AuditRecord) -> Vec<String> {
        let (Some(prev), Some(hash)) = (digest(&record.prev_hash), digest(&record.record_hash))
        else {
            // Not kept: only well-formed digests enter the chain, so
            // memory stays at two digests per link whatever is sent.
            return vec!["prev_hash or record_hash is not 64 lower-case hex digits".into()];
        };
        let sequence = record.sequence;
        if sequence == 0 {
            return vec!["sequence 0 (sequences start at 1)".into()];
        }
        let genesis = [0u8; 32];
        let chain = self.by_identity.entry(identity.to_string()).or_default();
        let mut problems = Vec::new();
        if let Some(seen) = chain.links.get(&sequence) {
            if seen.record_hash == hash {
                return problems; // the same record again (a re-sent result)
            }
            if sequence != 1 || prev != genesis {
                problems.push(format!(
                    "fork: sequence {sequence} arrived before with another record_hash"
                ));
                return problems;
            }
        }
        if sequence == 1 && prev == genesis && chain.highest > 0 {
            // The worker's log started over (moved aside, a new disk):
            // said once, here; the chain follows the new log from now on.
            problems.push(format!(
                "the log started over: sequence 1 after {} (an earlier log of this identity was replaced)",
                chain.highest
            ));
            *chain = IdentityChain::default();
        }
        if sequence == 1 && prev != genesis {
            problems.push("the first record's prev_hash is not 64 zeros".into());
        }
        if let Some(before) = chain.links.get(&(sequence - 1))
            && before.record_hash != prev
        {
            problems.push(format!(
                "prev_hash does not match record {}'s record_hash",
                sequence - 1
            ));
        }
        if let Some(after) = chain.links.get(&(sequence + 1))
            && after.prev_hash != hash
        {
            problems.push(format!(
                "record {} (arrived earlier) does not point to this record",
                sequence + 1
            ));
        }
        if sequence.saturating_add(REORDER_WINDOW) < chain.highest {
            problems.push(format!(
                "sequence went back: {sequence} arrived after {}, more than {REORDER_WINDOW} behind",
                chain.highest
            ));
        }
        chain.highest = chain.highest.max(sequence);
        chain.links.insert(
            sequence,
            Link {
                prev_hash: prev,
                record_hash: hash,
            },
        );
        while chain.links.len() > KEPT_PER_IDENTITY {
            chain.links.pop_first();
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use private_worker_proto::audit::GENESIS_HASH;

    fn chained(n: u64) -> Vec<pb::AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|sequence| {
                let hash = format!("{sequence:064x}");
                let record = pb::AuditRecord {
                    sequence,
                    prev_hash: prev.clone(),
                    record_hash: hash.clone(),
                    ..Default::default()
                };
                prev = hash;
                record
            })
            .collect()
    }

    #[test]
    fn records_arriving_out_of_order_fit_and_forks_gaps_and_bad_links_are_named() {
        let records = chained(5);
        let mut chains = Chains::default();
        for i in [0, 2, 1, 4, 3] {
            assert!(chains.follow("w", &records[i]).is_empty(), "{i}");
        }
        // The same record again (a re-sent result) fits.
        assert!(chains.follow("w", &records[2]).is_empty());
        // Another record under a known sequence is a fork.
        let mut forged = records[2].clone();
        forged.record_hash = "f".repeat(64);
        assert!(chains.follow("w", &forged)[0].starts_with("fork"));
        // A record linking to the wrong predecessor.
        let mut next = chained(6).pop().unwrap();
        next.prev_hash = "e".repeat(64);
        assert!(chains.follow("w", &next)[0].contains("prev_hash"));
        // Another identity's chain is its own.
        assert!(chains.follow("v", &records[3]).is_empty());
    }

    #[test]
    fn a_log_started_over_is_flagged_once_and_then_followed() {
        let mut chains = Chains::default();
        for record in chained(5) {
            assert!(chains.follow("w", &record).is_empty());
        }
        // A new log: other records under the same sequences.
        let mut fresh = chained(3);
        for (i, r) in fresh.iter_mut().enumerate() {
            r.record_hash = format!("{:064x}", 1000 + i);
            if i > 0 {
                r.prev_hash = format!("{:064x}", 1000 + i - 1);
            }
        }
        let problems = chains.follow("w", &fresh[0]);
        assert!(
            problems[0].starts_with("the log started over"),
            "{problems:?}"
        );
        assert!(chains.follow("w", &fresh[1]).is_empty());
        assert!(chains.follow("w", &fresh[2]).is_empty());
        // A record far behind the highest sequence seen is flagged.
        let far = pb::AuditRecord {
            sequence: 100_000,
            prev_hash: "a".repeat(64),
            record_hash: "b".repeat(64),
            ..Default::default()
        };
        assert!(chains.follow("w", &far).is_empty());
        let mut behind = chained(50).pop().unwrap();
        behind.record_hash = "c".repeat(64);
        assert!(chains.follow("w", &behind)[0].starts_with("sequence went back"));
    }

    #[test]
    fn a_record_with_malformed_hashes_is_flagged_and_never_kept() {
        let mut chains = Chains::default();
        let huge = pb::AuditRecord {
            sequence: 1,
            prev_hash: "0".repeat(2 * 1024 * 1024),
            record_hash: "b".repeat(64),
            ..Default::default()
        };
        assert!(chains.follow("w", &huge)[0].contains("64 lower-case hex"));
        assert!(!chains.by_identity.contains_key("w"), "nothing was kept");
    }

    #[test]
    fn memory_per_identity_is_bounded() {
        let mut chains = Chains::default();
        for record in chained(KEPT_PER_IDENTITY as u64 + 100) {
            chains.follow("w", &record);
        }
        assert_eq!(chains.by_identity["w"].links.len(), KEPT_PER_IDENTITY);
    }
}
