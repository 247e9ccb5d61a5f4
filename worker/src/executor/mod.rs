//! Executors: what running an allowed, validated task means, one module per
//! kind (only HTTP today).
//!
//! An executor gets validated inputs, the task's config and the credential
//! the task needs, and returns an [`Execution`]: outcome, redacted output,
//! coarse error. It never sees tonic or proto types, never decides whether a
//! task may run (that is [`crate::task`]), and never logs a credential.

pub mod http;

use serde_json::Value;

use crate::secrets::SecretValue;

/// How one attempt ended, in the worker's own terms (the session maps it to
/// the wire enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran, and the internal system reported success.
    Succeeded,
    /// Ran and failed.
    Failed,
    /// Refused by the worker; nothing ran.
    Rejected,
    /// Exceeded its timeout or deadline.
    TimedOut,
    /// Cancelled before it finished.
    Cancelled,
    /// The worker cannot tell whether the side effect happened.
    OutcomeUnknown,
}

/// A short, machine-readable reason plus a message for people. Never holds
/// a credential, an internal URL or a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// Stable code, e.g. `not_allowed`, `invalid_input`, `credential_unavailable`.
    pub code: &'static str,
    /// Explanation for a person.
    pub message: String,
}

impl TaskError {
    /// Builds an error.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        TaskError {
            code,
            message: message.into(),
        }
    }
}

/// What an executor returns.
#[derive(Debug, Clone)]
pub struct Execution {
    /// How it ended.
    pub outcome: Outcome,
    /// Output document, already redacted.
    pub output: Option<Value>,
    /// Why, when the outcome is not `Succeeded`.
    pub error: Option<TaskError>,
}

/// Removes every occurrence of each secret from `value`, in keys and
/// strings at any depth.
pub fn redact_value(value: &mut Value, secrets: &[&SecretValue]) {
    match value {
        Value::String(s) => *s = redact_text(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, secrets)),
        Value::Object(map) => {
            let taken = std::mem::take(map);
            for (key, mut item) in taken {
                redact_value(&mut item, secrets);
                map.insert(redact_text(&key, secrets), item);
            }
        }
        _ => {}
    }
}

/// The marker that replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces every occurrence of each secret in `text` with [`REDACTED`].
pub fn redact_text(text: &str, secrets: &[&SecretValue]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        let value = secret.expose();
        if !value.is_empty() && out.contains(value) {
            out = out.replace(value, REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_reaches_keys_and_nested_strings() {
        let secret = SecretValue::new("s3cr3t".into());
        let mut v =
            serde_json::json!({"echo": "Bearer s3cr3t", "s3cr3t": [1, {"x": "as3cr3ts3cr3t"}]});
        redact_value(&mut v, &[&secret]);
        let text = v.to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(v["echo"], "Bearer [REDACTED]");
    }
}
