//! The private-worker wire contract.
//!
//! This crate holds `private_worker/v1/worker.proto` and the Rust code that
//! tonic and prost generate from it, nothing else: no domain logic, no
//! transport set-up. The .proto is the source of truth and is documented
//! field by field so that a worker or orchestrator can be written in another
//! language from it alone.
//!
//! Code generation uses `protox`, so building needs no system `protoc`.
//!
//! Beside the generated code it defines what both sides must compute alike:
//! [`canonical_json`] (RFC 8785), the one JSON form the contract hashes, the
//! id rule ([`check_id`]) and the limits, and in [`audit`] the audit
//! record's language-neutral *record form*, its hash and the chain check; in [`approval`] the signed
//! approval's statement and its check; in [`trace`] the W3C `traceparent`
//! value that `Assignment.traceparent` and a plan carry.
//! `proto/testvectors/` holds cases any implementation can check itself
//! against.

pub mod approval;
pub mod audit;
pub mod trace;

/// Version 1 of the contract (`private_worker.v1`).
pub mod v1 {
    #![allow(missing_docs)] // documented in the .proto; prost copies those comments
    #![allow(clippy::all)]
    tonic::include_proto!("private_worker.v1");
}

/// The contract's .proto source, for tools that want to show or ship it.
pub const WORKER_PROTO: &str = include_str!("../private_worker/v1/worker.proto");

/// Largest encoded message either side sends or accepts (4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Longest `task_id`, `plan_id`, `task_name`, `task_version` or
/// `instance_id`, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Most entries in `Hello.manifest`.
pub const MAX_MANIFEST_ENTRIES: usize = 1024;

/// Checks an id, name or version against the contract: 1 to
/// [`MAX_ID_BYTES`] bytes of `A-Z a-z 0-9 . _ - :`.
///
/// # Errors
/// A short reason naming the rule that was broken (never the value itself,
/// which may be huge or hold control characters).
pub fn check_id(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > MAX_ID_BYTES {
        return Err("is longer than 128 bytes");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err("holds a character outside A-Z a-z 0-9 . _ - :");
    }
    Ok(())
}

/// The canonical JSON text of a value: RFC 8785, the JSON Canonicalization
/// Scheme (object members sorted by UTF-16 code units at every depth, no
/// insignificant whitespace, numbers in ECMAScript's shortest form, minimal
/// string escapes).
///
/// The contract hashes JSON documents in this form (for example
/// `ManifestEntry.input_schema_sha256` and the audit chain's
/// `record_hash`), so both sides, in any language, produce identical bytes
/// for equal documents. `proto/testvectors/canonical_json.json` holds the
/// cases, including RFC 8785's own.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // A `Value` holds no non-finite number and only string keys, the two
    // things JCS cannot encode, so this cannot fail.
    serde_json_canonicalizer::to_string(value).unwrap_or_default()
}

/// Lower-case hex SHA-256 of [`canonical_json`] of `value`: the form of
/// `ManifestEntry.input_schema_sha256`.
pub fn canonical_sha256(value: &serde_json::Value) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(canonical_json(value).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_in_length_and_alphabet() {
        assert!(check_id("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").is_ok());
        assert!(check_id("crm.create_ticket").is_ok());
        assert!(check_id(&"a".repeat(MAX_ID_BYTES)).is_ok());
        assert_eq!(check_id(""), Err("is empty"));
        assert_eq!(
            check_id(&"a".repeat(MAX_ID_BYTES + 1)),
            Err("is longer than 128 bytes")
        );
        for bad in ["a b", "a\nb", "a\u{1b}[2J", "a/b", "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_drops_whitespace() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{ "b": 1, "a": { "z": [1, {"y": 2, "x": 3}], "c": "é" } }"#)
                .unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"é","z":[1,{"x":3,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn equal_documents_written_differently_hash_the_same() {
        let a: serde_json::Value = serde_json::from_str(r#"{"x":1,"y":[true,null]}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str("{\n  \"y\": [true, null],\n  \"x\": 1\n}").unwrap();
        assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
        assert_eq!(canonical_sha256(&a).len(), 64);
    }
}
