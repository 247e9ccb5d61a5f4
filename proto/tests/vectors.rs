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

/// The RFC 8410 (section 10.3) Ed25519 test key: public, for vectors only.
const VECTOR_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
/// Its public key (RFC 8410 section 10.1).
const VECTOR_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

/// The approval vectors: a statement, its signing bytes and signature
/// (Ed25519 is deterministic), and cases a checker must refuse.
fn approval_vectors() -> Value {
    use private_worker_proto::approval::{Approval, KeyFileSigner, Signer, Statement, sha256_hex};
    let signer = KeyFileSigner::from_pem("rfc8410-test", VECTOR_KEY.as_bytes()).unwrap();
    let inputs_json = r#"{"customer":"C-42","priority":2,"title":"Printer on fire"}"#;
    let statement = Statement {
        task_id: "01J0000000000000000000TASK".into(),
        plan_id: "01J0000000000000000000PLAN".into(),
        task_name: "crm.create_ticket".into(),
        task_version: "1".into(),
        inputs_sha256: sha256_hex(inputs_json),
        audience: "spiffe://example.org/worker/crm-eu-1".into(),
        key_id: "rfc8410-test".into(),
        nonce: "00112233445566778899aabbccddeeff".into(),
        not_before: 1_796_000_000,
        not_after: 1_796_003_600,
    };
    let signing_bytes = String::from_utf8(statement.signing_bytes()).unwrap();
    let signature = hex::encode(signer.sign(signing_bytes.as_bytes()).unwrap());
    let approval = Approval {
        key_id: statement.key_id.clone(),
        algorithm: "ed25519".into(),
        signature: signature.clone(),
        not_before: Some(statement.not_before),
        not_after: Some(statement.not_after),
        nonce: statement.nonce.clone(),
        audience: statement.audience.clone(),
    };
    json!({
        "comment": "Signed approvals (see the contract's header). The key is RFC 8410's published test key: never trust it anywhere. `checked_at` is the checker's clock (Unix seconds), clock skew 60 s, max validity 86400 s, accepted audience the statement's.",
        "public_key_pem": VECTOR_PUBLIC_KEY,
        "private_key_pem": VECTOR_KEY,
        "statement": statement,
        "signing_bytes": signing_bytes,
        "signature_hex": signature,
        "cases": [
            {"name": "valid", "inputs_json": inputs_json, "approval": approval, "checked_at": 1_796_001_000, "expect": "ok"},
            {"name": "inputs changed", "inputs_json": inputs_json.replace("Printer on fire", "Printer is fine"), "approval": approval, "checked_at": 1_796_001_000, "expect": "approval_invalid"},
            {"name": "inputs not canonical (same meaning, other spacing)", "inputs_json": inputs_json.replace(",", ", "), "approval": approval, "checked_at": 1_796_001_000, "expect": "approval_invalid"},
            {"name": "expired (beyond the skew)", "inputs_json": inputs_json, "approval": approval, "checked_at": 1_796_003_661, "expect": "approval_expired"},
            {"name": "not yet valid (beyond the skew)", "inputs_json": inputs_json, "approval": approval, "checked_at": 1_795_999_939, "expect": "approval_not_yet_valid"},
        ]
    })
}

fn approval_verifier() -> private_worker_proto::approval::Verifier {
    use private_worker_proto::approval::{Audiences, PublicKey, Verifier};
    Verifier::new(
        [PublicKey::from_pem("rfc8410-test", VECTOR_PUBLIC_KEY.as_bytes()).unwrap()],
        Audiences::Only(["spiffe://example.org/worker/crm-eu-1".to_string()].into()),
        std::time::Duration::from_secs(86_400),
        std::time::Duration::from_secs(60),
    )
}

#[test]
fn the_approval_vectors_sign_and_check_as_stated() {
    use private_worker_proto::approval::{Approval, Subject};
    let stored: Value = serde_json::from_str(&read("approval.json")).unwrap();
    assert_eq!(stored, approval_vectors(), "approval.json is out of date");
    let verifier = approval_verifier();
    let statement = &stored["statement"];
    for case in stored["cases"].as_array().unwrap() {
        let approval: Approval = serde_json::from_value(case["approval"].clone()).unwrap();
        let subject = Subject {
            task_id: statement["task_id"].as_str().unwrap(),
            plan_id: statement["plan_id"].as_str().unwrap(),
            task_name: statement["task_name"].as_str().unwrap(),
            task_version: statement["task_version"].as_str().unwrap(),
            inputs_json: case["inputs_json"].as_str().unwrap(),
        };
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(case["checked_at"].as_u64().unwrap());
        let got = match verifier.verify(subject, Some(&approval), at) {
            Ok(_) => "ok",
            Err(refusal) => refusal.code(),
        };
        assert_eq!(
            got,
            case["expect"].as_str().unwrap(),
            "case {}",
            case["name"]
        );
    }
}

/// Writes `approval.json` again (after a deliberate change of the statement).
#[test]
#[ignore = "regenerates proto/testvectors/approval.json"]
fn regenerate_approval_vectors() {
    let text = serde_json::to_string_pretty(&approval_vectors()).unwrap();
    std::fs::write(dir().join("approval.json"), text + "\n").unwrap();
}
