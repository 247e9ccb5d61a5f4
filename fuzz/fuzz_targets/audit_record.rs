//! The audit record form (`private_worker_proto::audit`), two ways.
//!
//! The first byte picks the mode (even: 1, odd: 2), so seeds can be plain
//! log text after one byte.
//!
//! 1. Arbitrary text as audit log lines: `Record::from_line`, `check_form`,
//!    `compute_hash`, `to_line`, `to_message`/`from_message` and
//!    `verify_lines` must not panic; a line that parses and checks
//!    round-trips (`from_line(to_line(r)) == r`, a canonical line comes back
//!    byte for byte, the wire message converts back to the same record); a
//!    log that verifies ends at as many records as it has lines.
//! 2. A well-formed chain built from arbitrary field values must verify;
//!    changing any one field of one record without re-hashing must break the
//!    chain exactly at that record.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use private_worker_proto::audit::{GENESIS_HASH, Record, timestamp_text, verify_lines};

#[derive(Arbitrary, Debug)]
struct ChainCase {
    records: Vec<Fields>,
    tamper: Option<(u8, Tamper)>,
}

#[derive(Arbitrary, Debug)]
struct Fields {
    task_id: String,
    attempt: u32,
    plan_id: String,
    task_name: String,
    inputs_json: String,
    output_json: String,
    received: (i64, i32),
    started: Option<(i64, i32)>,
    outcome: u8,
    error_code: String,
    error_message: String,
    worker_identity: String,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Tamper {
    TaskId,
    Attempt,
    InputsJson,
    OutputJson,
    StartedAt,
    Outcome,
    ErrorMessage,
    WorkerIdentity,
    PrevHash,
    Sequence,
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        lines(&String::from_utf8_lossy(rest));
    } else if let Ok(case) = ChainCase::arbitrary_take_rest(Unstructured::new(rest)) {
        chain(case.records, case.tamper);
    }
});

fn lines(text: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    for line in &lines {
        let Ok(record) = Record::from_line(line) else {
            continue;
        };
        assert_eq!(record.check_form(), Ok(()));
        let _ = record.compute_hash();
        let canonical = record.to_line();
        assert_eq!(Record::from_line(&canonical).as_ref(), Ok(&record));
        let value: serde_json::Value = serde_json::from_str(line).expect("it parsed once");
        if private_worker_proto::canonical_json(&value) == *line {
            assert_eq!(&canonical, line, "a canonical line did not round-trip");
        }
        assert_eq!(
            Record::from_message(&record.to_message()).as_ref(),
            Ok(&record)
        );
    }
    if let Ok(chain) = verify_lines(lines.iter().copied()) {
        assert_eq!(chain.last_sequence, lines.len() as u64);
    }
}

/// Keeps only the contract's id alphabet, 1 to 128 bytes.
fn id(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        .take(128)
        .collect();
    if out.is_empty() {
        out.push('x');
    }
    out
}

fn time((seconds, nanos): (i64, i32)) -> String {
    timestamp_text(&prost_types::Timestamp { seconds, nanos })
        .unwrap_or_else(|| "2026-12-02T13:08:21.120000000Z".into())
}

const OUTCOMES: [&str; 6] = [
    "SUCCEEDED",
    "FAILED",
    "REJECTED",
    "TIMED_OUT",
    "CANCELLED",
    "OUTCOME_UNKNOWN",
];

fn chain(fields: Vec<Fields>, tamper: Option<(u8, Tamper)>) {
    let mut records = Vec::new();
    let mut prev = GENESIS_HASH.to_string();
    for (i, f) in fields.into_iter().take(16).enumerate() {
        let mut r = Record {
            task_id: id(&f.task_id),
            attempt: f.attempt.max(1),
            plan_id: id(&f.plan_id),
            task_name: id(&f.task_name),
            task_version: "1".into(),
            inputs_json: f.inputs_json,
            output_json: f.output_json,
            received_at: Some(time(f.received)),
            started_at: f.started.map(time),
            finished_at: Some(time(f.received)),
            outcome: OUTCOMES[usize::from(f.outcome) % OUTCOMES.len()].into(),
            error_code: f.error_code,
            error_message: f.error_message,
            worker_identity: if f.worker_identity.is_empty() {
                "spiffe://t/w".into()
            } else {
                f.worker_identity
            },
            sequence: i as u64 + 1,
            prev_hash: prev.clone(),
            record_hash: String::new(),
        };
        r.record_hash = r.compute_hash();
        assert_eq!(r.check_form(), Ok(()), "{r:?}");
        prev.clone_from(&r.record_hash);
        records.push(r);
    }
    let lines: Vec<String> = records.iter().map(Record::to_line).collect();
    for (line, r) in lines.iter().zip(&records) {
        assert_eq!(Record::from_line(line).as_ref(), Ok(r));
    }
    let chain = verify_lines(lines.iter().map(String::as_str))
        .unwrap_or_else(|b| panic!("a well-formed chain broke: {b}"));
    assert_eq!(chain.last_sequence, records.len() as u64);
    assert_eq!(chain.last_hash, prev);

    let Some((at, how)) = tamper else { return };
    if records.is_empty() {
        return;
    }
    let index = usize::from(at) % records.len();
    let r = &mut records[index];
    match how {
        Tamper::TaskId => r.task_id.push('x'),
        Tamper::Attempt => r.attempt = r.attempt.checked_add(1).unwrap_or(1),
        Tamper::InputsJson => r.inputs_json.push(' '),
        Tamper::OutputJson => r.output_json.push('x'),
        Tamper::StartedAt => {
            r.started_at = match r.started_at {
                None => Some("2026-01-01T00:00:00.000000000Z".into()),
                Some(_) => None,
            }
        }
        Tamper::Outcome => {
            r.outcome = if r.outcome == "FAILED" {
                "SUCCEEDED".into()
            } else {
                "FAILED".into()
            }
        }
        Tamper::ErrorMessage => r.error_message.push('\n'),
        Tamper::WorkerIdentity => r.worker_identity.push('x'),
        Tamper::PrevHash => {
            r.prev_hash = if r.prev_hash == GENESIS_HASH {
                "1".repeat(64)
            } else {
                GENESIS_HASH.into()
            }
        }
        Tamper::Sequence => r.sequence += 1,
    }
    let task_id_too_long = r.task_id.len() > 128;
    let lines: Vec<String> = records.iter().map(Record::to_line).collect();
    match verify_lines(lines.iter().map(String::as_str)) {
        Ok(_) => panic!("a record changed by {how:?} at {index} still verified"),
        Err(b) => {
            assert_eq!(b.index, index as u64, "{how:?}: {b}");
            if task_id_too_long {
                assert!(b.problem.starts_with("not a record"), "{b}");
            }
        }
    }
}
