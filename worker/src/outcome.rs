//! The outcome vocabulary: how an attempt ended and why, in one place.
//!
//! [`Outcome`] is the worker's mirror of the wire enum. [`ErrorCode`] is
//! every machine-readable reason the worker reports, and each code fixes
//! the outcome that goes with it ([`ErrorCode::outcome`]): a refusal is
//! always `Rejected`, a call that may have reached the internal API is
//! always `OutcomeUnknown`, and so on. [`TaskError`] pairs a code with a
//! message for people, so no part of the worker can report a code with the
//! wrong outcome or spell a code differently.
//!
//! What it does not do: decide *when* a code applies (the allowlist, the
//! runner, the executors and the session do), or know the proto types (the
//! session's wire module converts).

use serde::{Deserialize, Serialize};

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran, and the internal system reported success.
    Succeeded,
    /// Ran and failed, or failed before any call with nothing sent.
    Failed,
    /// Refused by the worker; nothing ran.
    Rejected,
    /// The deadline passed before the call was sent; nothing ran.
    TimedOut,
    /// Cancelled before the call was sent; nothing ran.
    Cancelled,
    /// The worker cannot tell whether the side effect happened.
    OutcomeUnknown,
}

/// Every reason the worker reports for an attempt that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The task or its version is not in the local allowlist.
    NotAllowed,
    /// The inputs break the local schema or cannot fill the request.
    InvalidInput,
    /// The orchestrator sent more assignments than the worker granted.
    CreditExceeded,
    /// The worker is draining and takes no new work.
    Draining,
    /// An earlier attempt of this task id is still held by this worker.
    AttemptInProgress,
    /// The credential the task needs could not be loaded; nothing was sent.
    CredentialUnavailable,
    /// The internal API refused the connection; nothing was sent.
    Unreachable,
    /// The internal API answered with a non-success status.
    HttpStatus,
    /// The deadline passed before the call was sent.
    DeadlinePassed,
    /// Cancelled before the call was sent.
    CancelledBeforeCall,
    /// Not started: the worker had not heard from the orchestrator for
    /// longer than its lease, so the attempt may belong to another worker
    /// now. Nothing was sent.
    LeaseLost,
    /// The call did not finish within its timeout or deadline.
    Timeout,
    /// The call failed after it may have been sent.
    RequestFailed,
    /// Cancelled while the call was running.
    Cancelled,
    /// The worker stopped (crash, kill, power cut) while the call was running.
    Interrupted,
    /// The task's code panicked; whether a call happened is unknown.
    Panicked,
    /// This task id already ran on this worker as an earlier attempt and the
    /// task is not idempotent here; the earlier outcome is reported.
    AlreadyStarted,
    /// The worker's local kill switch is on (its file exists); nothing ran.
    KillSwitch,
    /// The task requires a signed approval here and none came.
    ApprovalMissing,
    /// The approval is malformed, its signature does not match the task as
    /// received, or the inputs are not in canonical form.
    ApprovalInvalid,
    /// The approval is signed by a key this worker does not trust.
    ApprovalUnknownKey,
    /// The approval is signed by a key this worker trusts only for other
    /// tasks.
    ApprovalKeyNotForTask,
    /// The approval is for another worker or pool.
    ApprovalWrongAudience,
    /// The approval's window has not started.
    ApprovalNotYetValid,
    /// The approval's window has ended.
    ApprovalExpired,
    /// The approval was already used on this worker.
    ApprovalReplayed,
}

impl ErrorCode {
    /// The code as it appears on the wire and in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::CreditExceeded => "credit_exceeded",
            ErrorCode::Draining => "draining",
            ErrorCode::AttemptInProgress => "attempt_in_progress",
            ErrorCode::CredentialUnavailable => "credential_unavailable",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::HttpStatus => "http_status",
            ErrorCode::DeadlinePassed => "deadline_passed",
            ErrorCode::CancelledBeforeCall => "cancelled_before_call",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RequestFailed => "request_failed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::Panicked => "panicked",
            ErrorCode::AlreadyStarted => "already_started",
            ErrorCode::KillSwitch => "kill_switch",
            ErrorCode::ApprovalMissing => "approval_missing",
            ErrorCode::ApprovalInvalid => "approval_invalid",
            ErrorCode::ApprovalUnknownKey => "approval_unknown_key",
            ErrorCode::ApprovalKeyNotForTask => "approval_key_not_for_task",
            ErrorCode::ApprovalWrongAudience => "approval_wrong_audience",
            ErrorCode::ApprovalNotYetValid => "approval_not_yet_valid",
            ErrorCode::ApprovalExpired => "approval_expired",
            ErrorCode::ApprovalReplayed => "approval_replayed",
        }
    }

    /// The outcome this code always comes with. `AlreadyStarted` has none
    /// of its own: it repeats an earlier attempt's outcome (see
    /// [`TaskError::already_started`]); alone it means `OutcomeUnknown`.
    pub fn outcome(self) -> Outcome {
        match self {
            ErrorCode::NotAllowed
            | ErrorCode::InvalidInput
            | ErrorCode::CreditExceeded
            | ErrorCode::Draining
            | ErrorCode::AttemptInProgress
            | ErrorCode::KillSwitch
            | ErrorCode::ApprovalMissing
            | ErrorCode::ApprovalInvalid
            | ErrorCode::ApprovalUnknownKey
            | ErrorCode::ApprovalWrongAudience
            | ErrorCode::ApprovalNotYetValid
            | ErrorCode::ApprovalExpired
            | ErrorCode::ApprovalKeyNotForTask
            | ErrorCode::ApprovalReplayed => Outcome::Rejected,
            ErrorCode::CredentialUnavailable | ErrorCode::Unreachable | ErrorCode::HttpStatus => {
                Outcome::Failed
            }
            ErrorCode::DeadlinePassed => Outcome::TimedOut,
            ErrorCode::CancelledBeforeCall | ErrorCode::LeaseLost => Outcome::Cancelled,
            ErrorCode::Timeout
            | ErrorCode::RequestFailed
            | ErrorCode::Cancelled
            | ErrorCode::Interrupted
            | ErrorCode::Panicked
            | ErrorCode::AlreadyStarted => Outcome::OutcomeUnknown,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&private_worker_proto::approval::Refusal> for ErrorCode {
    fn from(refusal: &private_worker_proto::approval::Refusal) -> Self {
        use private_worker_proto::approval::Refusal;
        match refusal {
            Refusal::Missing => ErrorCode::ApprovalMissing,
            Refusal::Malformed(_) | Refusal::BadSignature | Refusal::InputsNotCanonical(_) => {
                ErrorCode::ApprovalInvalid
            }
            Refusal::UnknownKey(_) => ErrorCode::ApprovalUnknownKey,
            Refusal::KeyNotForTask { .. } => ErrorCode::ApprovalKeyNotForTask,
            Refusal::WrongAudience(_) => ErrorCode::ApprovalWrongAudience,
            Refusal::NotYetValid(_) => ErrorCode::ApprovalNotYetValid,
            Refusal::Expired(_) => ErrorCode::ApprovalExpired,
            Refusal::Replayed { .. } => ErrorCode::ApprovalReplayed,
        }
    }
}

/// Why an attempt did not succeed: a code (which fixes the outcome) and a
/// message for people. Never holds a credential, an internal URL or a host
/// name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The machine-readable reason.
    pub code: ErrorCode,
    /// Explanation for a person.
    pub message: String,
    outcome: Outcome,
}

impl TaskError {
    /// An error whose outcome is the one `code` fixes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        TaskError {
            code,
            message: message.into(),
            outcome: code.outcome(),
        }
    }

    /// The answer to a later attempt of a task id that already ran here:
    /// it reports the earlier attempt's outcome (`OutcomeUnknown` when the
    /// earlier one never finished), so the orchestrator learns the truth
    /// without the side effect happening twice.
    pub fn already_started(earlier: Outcome, message: impl Into<String>) -> Self {
        TaskError {
            code: ErrorCode::AlreadyStarted,
            message: message.into(),
            outcome: earlier,
        }
    }

    /// The outcome that goes with this error.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_that_may_have_reached_the_internal_api_is_reported_as_a_clean_failure() {
        for code in [
            ErrorCode::Timeout,
            ErrorCode::RequestFailed,
            ErrorCode::Cancelled,
            ErrorCode::Interrupted,
            ErrorCode::Panicked,
        ] {
            assert_eq!(TaskError::new(code, "x").outcome(), Outcome::OutcomeUnknown);
        }
        assert_eq!(ErrorCode::CancelledBeforeCall.outcome(), Outcome::Cancelled);
        assert_eq!(ErrorCode::DeadlinePassed.outcome(), Outcome::TimedOut);
        assert_eq!(ErrorCode::NotAllowed.outcome(), Outcome::Rejected);
        assert_eq!(ErrorCode::KillSwitch.outcome(), Outcome::Rejected);
    }

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::NotAllowed,
            ErrorCode::CancelledBeforeCall,
            ErrorCode::AlreadyStarted,
            ErrorCode::CredentialUnavailable,
            ErrorCode::KillSwitch,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
        }
    }

    #[test]
    fn every_approval_refusal_maps_to_the_code_the_contract_names() {
        use private_worker_proto::approval::Refusal;
        for refusal in [
            Refusal::Missing,
            Refusal::Malformed("x".into()),
            Refusal::UnknownKey("k".into()),
            Refusal::KeyNotForTask {
                key_id: "k".into(),
                task: "t".into(),
            },
            Refusal::WrongAudience("a".into()),
            Refusal::BadSignature,
            Refusal::NotYetValid(1),
            Refusal::Expired(1),
            Refusal::InputsNotCanonical("x".into()),
            Refusal::Replayed {
                key_id: "k".into(),
                nonce: "n".into(),
            },
        ] {
            let code = ErrorCode::from(&refusal);
            assert_eq!(code.as_str(), refusal.code());
            assert_eq!(code.outcome(), Outcome::Rejected);
            assert!(private_worker_proto::approval::ERROR_CODES.contains(&code.as_str()));
        }
    }

    #[test]
    fn a_repeated_answer_keeps_the_earlier_outcome() {
        let e = TaskError::already_started(Outcome::Succeeded, "ran as attempt 1");
        assert_eq!(e.outcome(), Outcome::Succeeded);
        assert_eq!(e.code, ErrorCode::AlreadyStarted);
    }
}
