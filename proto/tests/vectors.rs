//! The contract's test vectors (`proto/testvectors/`) hold for this crate's
//! canonical JSON and audit record form. The same files are checked by
//! `tests/python_worker/check_vectors.py` with an independent RFC 8785
//! implementation, so both agree byte for byte.
//!
//! The audit vectors are made by `regenerate_audit_vectors` (run it with
//! `cargo test -p private-worker-proto --test vectors -- --ignored` after a
//! deliberate change of the form); the canonical JSON cases are written by
//! hand from RFC 8785's own examples and never regenerated.

use std::path::PathBuf;

use private_worker_proto::audit::{GENESIS_HASH, Record, truncation_marker, verify_lines};
use private_worker_proto::canonical_json;
use serde_json::{Value, json};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testvectors")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn canonical_json_matches_every_case_including_rfc_8785s_own() {
    let cases: Vec<Value> = serde_json::from_str(&read("canonical_json.json")).unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let input: Value = serde_json::from_str(case["input"].as_str().unwrap()).unwrap();
        assert_eq!(
            canonical_json(&input),
            case["canonical"].as_str().unwrap(),
            "case {}",
            case["name"]
        );
    }
}

#[test]
fn every_audit_record_vector_hashes_to_its_stated_hash() {
    let cases: Vec<Value> = serde_json::from_str(&read("audit_records.json")).unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let record: Record = serde_json::from_value(case["record"].clone()).unwrap();
        assert_eq!(
            record.hashed_text(),
            case["canonical_without_hash"].as_str().unwrap(),
            "case {}",
            case["name"]
        );
        assert_eq!(record.compute_hash(), case["record_hash"].as_str().unwrap());
        assert_eq!(record.record_hash, record.compute_hash());
        // The wire message carries the same record.
        assert_eq!(Record::from_message(&record.to_message()).unwrap(), record);
    }
}

#[test]
fn the_valid_log_verifies_and_the_broken_one_breaks_where_stated() {
    let valid = read("audit_chain_valid.jsonl");
    let chain = verify_lines(valid.lines()).unwrap();
    assert_eq!(chain.last_sequence, valid.lines().count() as u64);

    let broken = read("audit_chain_broken.jsonl");
    let expected: Value = serde_json::from_str(&read("audit_chain_broken.json")).unwrap();
    let found = verify_lines(broken.lines()).unwrap_err();
    assert_eq!(
        found.index,
        expected["first_bad_index"].as_u64().unwrap(),
        "{found}"
    );
    assert_eq!(found.problem, expected["problem"].as_str().unwrap());
}

fn base(task_id: &str) -> Record {
    Record {
        task_id: task_id.into(),
        attempt: 1,
        plan_id: "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b".into(),
        task_name: "crm.create_ticket".into(),
        task_version: "1".into(),
        inputs_json: r#"{"title":"Printer on fire","priority":2}"#.into(),
        output_json: String::new(),
        received_at: Some("2026-12-02T13:08:21.120000000Z".into()),
        started_at: Some("2026-12-02T13:08:21.121500000Z".into()),
        finished_at: Some("2026-12-02T13:08:21.187000001Z".into()),
        outcome: "SUCCEEDED".into(),
        error_code: String::new(),
        error_message: String::new(),
        worker_identity: "spiffe://example.org/worker/crm-eu-1".into(),
        sequence: 0,
        prev_hash: String::new(),
        record_hash: String::new(),
    }
}

fn records() -> Vec<(&'static str, Record)> {
    let succeeded = Record {
        output_json: r#"{"id":"T-1001","note":"caf\u00e9 \u2603"}"#.into(),
        ..base("t-0001")
    };
    let rejected = Record {
        task_name: "crm.delete_customer".into(),
        inputs_json: r#"{ "customer_id" : 42 , "force":1e-7 }"#.into(),
        started_at: None,
        outcome: "REJECTED".into(),
        error_code: "not_allowed".into(),
        error_message: "task crm.delete_customer v1 is not in this worker's allowlist".into(),
        ..base("t-0002")
    };
    let unknown = Record {
        attempt: 2,
        outcome: "OUTCOME_UNKNOWN".into(),
        error_code: "timeout".into(),
        error_message: "no answer within 30s; the request was sent\n\"line two\"\t\u{1b}[0m".into(),
        ..base("t-0003")
    };
    let truncated = Record {
        inputs_json: truncation_marker(&vec![b'x'; 2 * 1024 * 1024]),
        output_json: truncation_marker(b"{}"),
        outcome: "FAILED".into(),
        error_code: "http_status".into(),
        error_message: "the internal API answered 503".into(),
        received_at: Some("0001-01-01T00:00:00.000000000Z".into()),
        finished_at: Some("9999-12-31T23:59:59.999999999Z".into()),
        ..base("t-0004")
    };
    vec![
        ("succeeded, output with non-ASCII text", succeeded),
        (
            "rejected: nothing ran (started_at null); inputs kept as received text",
            rejected,
        ),
        (
            "outcome unknown, second attempt, control characters in the message",
            unknown,
        ),
        (
            "truncation markers, the first and last instants of the form",
            truncated,
        ),
    ]
}

fn chained() -> Vec<(&'static str, Record)> {
    let mut prev = GENESIS_HASH.to_string();
    records()
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut record))| {
            record.sequence = i as u64 + 1;
            record.prev_hash = prev.clone();
            record.record_hash = record.compute_hash();
            prev.clone_from(&record.record_hash);
            (name, record)
        })
        .collect()
}

/// Writes the audit vectors from [`records`]; run only to change them.
#[test]
#[ignore = "writes proto/testvectors; run by hand after a deliberate change of the form"]
fn regenerate_audit_vectors() {
    let chain = chained();
    let cases: Vec<Value> = chain
        .iter()
        .map(|(name, record)| {
            json!({
                "name": name,
                "record": record,
                "canonical_without_hash": record.hashed_text(),
                "record_hash": record.record_hash,
            })
        })
        .collect();
    let pretty = serde_json::to_string_pretty(&cases).unwrap() + "\n";
    std::fs::write(dir().join("audit_records.json"), pretty).unwrap();

    let lines: Vec<String> = chain.iter().map(|(_, r)| r.to_line()).collect();
    std::fs::write(
        dir().join("audit_chain_valid.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();

    // The third record edited after the fact (its attempt number), its hash
    // left as it was.
    let mut broken = lines.clone();
    broken[2] = broken[2].replace("\"attempt\":2", "\"attempt\":1");
    assert_ne!(broken[2], lines[2]);
    std::fs::write(
        dir().join("audit_chain_broken.jsonl"),
        broken.join("\n") + "\n",
    )
    .unwrap();
    let expected = json!({
        "first_bad_index": 2,
        "problem": "record_hash does not match the record",
        "what_changed": "the third record's attempt was edited from 2 to 1 after it was written",
    });
    std::fs::write(
        dir().join("audit_chain_broken.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}
