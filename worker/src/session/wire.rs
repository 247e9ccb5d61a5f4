//! Conversions between the wire contract and the worker's own types.
//!
//! Incoming assignments are checked against the contract's id rules here
//! (before anything is journaled or logged with them); outgoing results
//! are built from [`TaskReport`]s and encoded for the journal. Nothing else
//! in the worker touches proto types except the stream that sends them.
//!
//! What it does not do: decide anything about an attempt.

use std::time::SystemTime;

use private_worker_proto::trace::TraceParent;
use private_worker_proto::v1 as pb;
use prost::Message;

use crate::audit::Record;
use crate::journal::{Summary, cut_to_summary};
use crate::outcome::Outcome;
use crate::task::Assignment;

/// The identity of one attempt: (task id, attempt number).
pub type AttemptKey = (String, u32);

/// Turns an `Assignment` message into the worker's type, after checking
/// every id against the contract ([`private_worker_proto::check_id`]).
/// Its `traceparent` is checked too ([`trace`]), but a bad one never
/// refuses the task.
///
/// # Errors
/// A short reason naming the field that breaks the rule; the value itself
/// is never echoed (it may be huge or hold control characters).
pub fn assignment(message: pb::Assignment) -> Result<Assignment, String> {
    for (field, value) in [
        ("task_id", &message.task_id),
        ("plan_id", &message.plan_id),
        ("task_name", &message.task_name),
        ("task_version", &message.task_version),
    ] {
        private_worker_proto::check_id(value).map_err(|why| format!("{field} {why}"))?;
    }
    let trace = trace(&message);
    Ok(Assignment {
        task_id: message.task_id,
        attempt: message.attempt,
        plan_id: message.plan_id,
        task_name: message.task_name,
        task_version: message.task_version,
        inputs_json: message.inputs_json,
        deadline: message.deadline.and_then(|t| SystemTime::try_from(t).ok()),
        approval: message
            .approval
            .as_ref()
            .map(private_worker_proto::approval::Approval::from),
        trace,
    })
}

/// The attempt's trace context: `Assignment.traceparent` when it is a valid
/// W3C traceparent, else a new trace (the contract's rule: trace context is
/// observability, never a reason to refuse work). An invalid value is
/// dropped with a warning naming the rule it broke, never the value (it
/// came from the wire).
fn trace(message: &pb::Assignment) -> TraceParent {
    if message.traceparent.is_empty() {
        let trace = TraceParent::new_trace();
        tracing::debug!(task_id = %message.task_id, trace_id = %trace.trace_id(), "assignment has no traceparent; started a trace for it");
        return trace;
    }
    TraceParent::parse(&message.traceparent).unwrap_or_else(|e| {
        let trace = TraceParent::new_trace();
        tracing::warn!(
            task_id = %message.task_id,
            plan_id = %message.plan_id,
            reason = %e,
            trace_id = %trace.trace_id(),
            "dropped the assignment's traceparent: it is not a W3C traceparent; started a new trace for the task, which runs anyway"
        );
        trace
    })
}

/// The wire reference to an attempt.
pub fn task_ref(key: &AttemptKey) -> pb::TaskRef {
    pb::TaskRef {
        task_id: key.0.clone(),
        attempt: key.1,
    }
}

/// The attempt a wire reference names, if it names one.
pub fn attempt_key(task: Option<pb::TaskRef>) -> Option<AttemptKey> {
    task.map(|t| (t.task_id, t.attempt))
}

/// The wire enum for an outcome.
pub fn outcome(outcome: Outcome) -> pb::Outcome {
    match outcome {
        Outcome::Succeeded => pb::Outcome::Succeeded,
        Outcome::Failed => pb::Outcome::Failed,
        Outcome::Rejected => pb::Outcome::Rejected,
        Outcome::TimedOut => pb::Outcome::TimedOut,
        Outcome::Cancelled => pb::Outcome::Cancelled,
        Outcome::OutcomeUnknown => pb::Outcome::Unknown,
    }
}

fn outcome_from(value: i32) -> Outcome {
    match pb::Outcome::try_from(value).unwrap_or(pb::Outcome::Unspecified) {
        pb::Outcome::Succeeded => Outcome::Succeeded,
        pb::Outcome::Failed => Outcome::Failed,
        pb::Outcome::Rejected => Outcome::Rejected,
        pb::Outcome::TimedOut => Outcome::TimedOut,
        pb::Outcome::Cancelled => Outcome::Cancelled,
        pb::Outcome::Unknown | pb::Outcome::Unspecified => Outcome::OutcomeUnknown,
    }
}

/// The `TaskResult` message for a finished attempt, built from its audit
/// record (which holds the outcome, output and error as reported), so a
/// result rebuilt from the local audit log after a crash is the same
/// message that would have been sent.
pub fn result(record: &Record) -> pb::TaskResult {
    let audit = record.to_message();
    pb::TaskResult {
        task: Some(pb::TaskRef {
            task_id: record.task_id.clone(),
            attempt: record.attempt,
        }),
        outcome: audit.outcome,
        output_json: record.output_json.clone(),
        error_code: record.error_code.clone(),
        error_message: record.error_message.clone(),
        audit: Some(audit),
    }
}

/// The bytes the journal keeps for a result.
pub fn encode(result: &pb::TaskResult) -> Vec<u8> {
    result.encode_to_vec()
}

/// A result back from the journal's bytes.
///
/// # Errors
/// The bytes are not a `TaskResult` (a damaged journal entry).
pub fn decode(bytes: &[u8]) -> Result<pb::TaskResult, prost::DecodeError> {
    pb::TaskResult::decode(bytes)
}

/// What the journal keeps of a result once it is acknowledged.
pub fn summary(result: &pb::TaskResult) -> Summary {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Summary {
        outcome: outcome_from(result.outcome),
        output_json: non_empty(&result.output_json)
            .filter(|t| t.len() <= crate::journal::MAX_SUMMARY_BYTES),
        error_code: non_empty(&result.error_code),
        error_message: non_empty(&result.error_message).map(|m| cut_to_summary(&m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(task_id: &str) -> pb::Assignment {
        pb::Assignment {
            task_id: task_id.into(),
            attempt: 1,
            plan_id: "p".into(),
            task_name: "crm.create_ticket".into(),
            task_version: "1".into(),
            inputs_json: "{}".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_assignment_with_an_id_outside_the_contract_is_refused_without_echoing_it() {
        assert!(assignment(message("t-1")).is_ok());
        let long = "x".repeat(512 * 1024);
        let why = assignment(message(&long)).unwrap_err();
        assert_eq!(why, "task_id is longer than 128 bytes");
        let why = assignment(message("t\n2026-01-01 INFO forged")).unwrap_err();
        assert!(why.starts_with("task_id holds a character"), "{why}");
        assert!(!why.contains("forged"));
    }

    #[test]
    fn a_valid_traceparent_is_kept_and_an_invalid_or_missing_one_gives_a_new_trace() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let kept = assignment(pb::Assignment {
            traceparent: given.into(),
            ..message("t-1")
        })
        .unwrap();
        assert_eq!(kept.trace.to_string(), given);
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "not a traceparent\n2026-01-01 INFO forged",
        ] {
            let taken = assignment(pb::Assignment {
                traceparent: bad.into(),
                ..message("t-1")
            })
            .expect("an invalid traceparent never refuses the task");
            assert_ne!(taken.trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(taken.trace.is_sampled());
        }
        let missing = assignment(message("t-1")).unwrap();
        let other = assignment(message("t-1")).unwrap();
        assert_ne!(
            missing.trace.trace_id(),
            other.trace.trace_id(),
            "each attempt without one starts its own trace"
        );
    }

    #[test]
    fn every_outcome_survives_the_round_trip_through_the_wire_enum() {
        for o in [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::Rejected,
            Outcome::TimedOut,
            Outcome::Cancelled,
            Outcome::OutcomeUnknown,
        ] {
            assert_eq!(outcome_from(outcome(o).into()), o);
        }
    }

    #[test]
    fn a_summary_keeps_small_outputs_and_drops_large_ones() {
        let mut r = pb::TaskResult {
            outcome: pb::Outcome::Succeeded.into(),
            output_json: r#"{"id":7}"#.into(),
            ..Default::default()
        };
        assert_eq!(summary(&r).output_json.as_deref(), Some(r#"{"id":7}"#));
        r.output_json = format!("\"{}\"", "x".repeat(10_000));
        assert_eq!(summary(&r).output_json, None);
        assert_eq!(
            summary(&decode(&encode(&r)).unwrap()).outcome,
            Outcome::Succeeded
        );
    }
}
