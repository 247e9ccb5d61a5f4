//! Executors: what running an allowed, validated task means, one module per
//! kind (only HTTP today).
//!
//! An executor gets validated inputs, the task's config and the credential
//! the task needs, and returns an [`Execution`]: outcome, masked output,
//! coarse error. It never sees tonic or proto types, never decides whether a
//! task may run (that is [`crate::task`]), and never logs a credential.

pub mod http;

use serde_json::Value;

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

/// The marker that replaces a credential (see [`crate::secrets::mask`],
/// the one place credentials are masked).
pub use crate::secrets::mask::REDACTED;
