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

pub use crate::outcome::{ErrorCode, Outcome, TaskError};

/// What an executor returns.
#[derive(Debug, Clone)]
pub struct Execution {
    /// Output document, already redacted (an error status still has one).
    pub output: Option<Value>,
    /// Why, when the task did not succeed; its code fixes the outcome.
    pub error: Option<TaskError>,
}

impl Execution {
    /// A success with its output.
    pub fn succeeded(output: Value) -> Self {
        Execution {
            output: Some(output),
            error: None,
        }
    }

    /// An attempt that ended with `error` and no output.
    pub fn failed(error: TaskError) -> Self {
        Execution {
            output: None,
            error: Some(error),
        }
    }

    /// How it ended: `Succeeded` without an error, else the error's outcome.
    pub fn outcome(&self) -> Outcome {
        self.error
            .as_ref()
            .map_or(Outcome::Succeeded, TaskError::outcome)
    }
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
