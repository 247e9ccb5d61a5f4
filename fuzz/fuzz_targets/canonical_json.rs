//! `private_worker_proto::canonical_json` (RFC 8785) on arbitrary JSON text.
//!
//! Properties, for every text serde_json accepts:
//! - canonicalizing never fails (the function's doc says it cannot; it
//!   would return `""` if it did);
//! - the output parses as JSON, and is the same document (numbers compared
//!   as the doubles JCS writes them as);
//! - canonicalizing the output again gives the same bytes (idempotent), so
//!   both sides hash equal documents alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use private_worker_proto::{canonical_json, canonical_sha256};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let canonical = canonical_json(&value);
    assert!(!canonical.is_empty(), "canonical_json failed on {text:?}");
    let reparsed: Value = serde_json::from_str(&canonical)
        .unwrap_or_else(|e| panic!("canonical output {canonical:?} is not JSON: {e}"));
    assert!(
        same_document(&value, &reparsed),
        "{text:?} canonicalized to a different document {canonical:?}"
    );
    let again = canonical_json(&reparsed);
    assert_eq!(canonical, again, "not idempotent on {text:?}");
    assert_eq!(canonical_sha256(&value), canonical_sha256(&reparsed));
});

/// Equal as documents; numbers equal as IEEE doubles (what JCS serializes).
fn same_document(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_document(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_document(v, w)))
        }
        _ => a == b,
    }
}
