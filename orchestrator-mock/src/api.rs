//! The admin API's JSON types, shared by the server ([`crate::admin`]) and
//! the typed client ([`crate::client`]).
//!
//! These are the HTTP+JSON shapes only. They carry no behaviour: the plan
//! state machine lives in [`crate::state`], validation in
//! [`crate::registry`]. Field names are part of the admin contract that
//! tests, the CLI and the demo rely on; add fields, do not rename them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A plan as submitted: an ordered list of task invocations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Optional human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// The steps, run in this order.
    pub steps: Vec<StepRequest>,
}

/// One task invocation in a [`PlanRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRequest {
    /// Registered task name, e.g. `crm.create_ticket`.
    pub task: String,
    /// Registered version; `None` means the only registered version of the
    /// task (an error when several are registered).
    #[serde(default)]
    pub version: Option<String>,
    /// The task inputs (a JSON object validated against the task's schema).
    #[serde(default)]
    pub inputs: Value,
}

/// Where a plan is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// Validated and stored; waits for approval. Nothing is queued.
    PendingApproval,
    /// Approved; the first step is queued but no worker has taken it yet.
    Approved,
    /// At least one step has been assigned to a worker.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step ended other than succeeded; the steps after it were skipped.
    Failed,
    /// Rejected by a person or policy; nothing ran.
    Rejected,
}

impl PlanStatus {
    /// Whether the plan can no longer change.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Rejected)
    }
}

/// Where one step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not queued yet: an earlier step has not succeeded (or the plan is
    /// not approved).
    Waiting,
    /// In the queue, waiting for a worker with credit whose manifest lists it.
    Queued,
    /// Sent to a worker; no result yet.
    Assigned,
    /// The worker reported `SUCCEEDED`.
    Succeeded,
    /// The worker reported `FAILED`.
    Failed,
    /// The worker refused the assignment and ran nothing (`REJECTED`).
    Rejected,
    /// The worker reported `TIMED_OUT`.
    TimedOut,
    /// The worker reported `CANCELLED`.
    Cancelled,
    /// The worker cannot tell whether the side effect happened.
    OutcomeUnknown,
    /// Never run: an earlier step did not succeed or the plan was rejected.
    Skipped,
}

/// A plan as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    /// Orchestrator-assigned plan id.
    pub id: String,
    /// The name given at submission, if any.
    pub name: Option<String>,
    /// Current status.
    pub status: PlanStatus,
    /// Submission time, RFC 3339.
    pub created_at: String,
    /// The steps, in order.
    pub steps: Vec<StepView>,
}

/// One step of a [`PlanView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// Position in the plan, from 0.
    pub index: u32,
    /// Orchestrator-assigned task id (stable across attempts).
    pub task_id: String,
    /// Task name.
    pub task: String,
    /// Task version (resolved at submission).
    pub version: String,
    /// The inputs as submitted.
    pub inputs: Value,
    /// Current status.
    pub status: StepStatus,
    /// Attempt number of the latest assignment; 0 before the first.
    pub attempt: u32,
    /// Identity (from its certificate) of the worker that took the latest attempt.
    pub worker: Option<String>,
    /// The worker's error code, when the outcome is not success.
    pub error_code: Option<String>,
    /// The worker's error message, when the outcome is not success.
    pub error_message: Option<String>,
    /// The task output (JSON), when the worker returned one.
    pub output: Option<Value>,
    /// When the step was queued for dispatch, RFC 3339 (UTC, nanoseconds).
    #[serde(default)]
    pub queued_at: Option<String>,
    /// When its result was stored, RFC 3339 (UTC, nanoseconds).
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// One reason a submitted plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Index of the offending step.
    pub step: u32,
    /// Task name of that step, as submitted.
    pub task: String,
    /// JSON pointer into the step's inputs (`""` for the whole step).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(
            f,
            "step {} ({}) at {}: {}",
            self.step, self.task, path, self.message
        )
    }
}

/// The JSON body of every admin API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code: `plan_invalid`, `not_found`, `conflict`,
    /// `bad_request`, `internal`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// For `plan_invalid`: every problem found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// Body of `POST /v1/plans/{id}/reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectRequest {
    /// Why the plan was rejected.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A result as stored in `results.jsonl` and served by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    /// Plan the task belongs to.
    pub plan_id: String,
    /// Task id.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Identity of the worker that sent it, from its TLS client certificate
    /// (never from the message).
    pub worker_identity: String,
    /// Session the result arrived on.
    pub session_id: String,
    /// When the orchestrator received it, RFC 3339.
    pub received_at: String,
    /// Outcome, snake_case (`succeeded`, `failed`, `rejected`, `timed_out`,
    /// `cancelled`, `outcome_unknown`).
    pub outcome: String,
    /// Output as JSON (`None` when the worker sent none; a JSON string when
    /// it sent text that is not JSON).
    pub output: Option<Value>,
    /// Error code, when not succeeded.
    pub error_code: Option<String>,
    /// Error message, when not succeeded.
    pub error_message: Option<String>,
}

/// An audit record as stored in `audit.jsonl` and served by the admin API.
///
/// Mirrors the proto `AuditRecord`, with two renames because the
/// orchestrator adds its own `worker_identity` (from the certificate) and
/// `received_at` (when it received the record): the worker's own values are
/// kept as `claimed_worker_identity` and `assignment_received_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAudit {
    /// Plan id (the orchestrator's, falling back to the record's).
    pub plan_id: String,
    /// Task id.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Identity of the worker that sent it, from its TLS client certificate.
    pub worker_identity: String,
    /// Session the record arrived on.
    pub session_id: String,
    /// When the orchestrator received it, RFC 3339.
    pub received_at: String,
    /// Task name.
    pub task_name: String,
    /// Task version.
    pub task_version: String,
    /// Inputs as the worker received them (JSON; a string if not JSON).
    pub inputs: Value,
    /// Output (JSON; a string if not JSON), `None` if none.
    pub output: Option<Value>,
    /// When the worker received the assignment, RFC 3339.
    pub assignment_received_at: Option<String>,
    /// When execution started, RFC 3339; `None` if nothing ran.
    pub started_at: Option<String>,
    /// When the outcome was decided, RFC 3339.
    pub finished_at: Option<String>,
    /// Outcome, snake_case as in [`StoredResult::outcome`].
    pub outcome: String,
    /// Error code, if any.
    pub error_code: Option<String>,
    /// Error message, if any.
    pub error_message: Option<String>,
    /// The identity the worker wrote into its own record.
    pub claimed_worker_identity: String,
    /// Position in the worker's local audit log.
    pub sequence: u64,
    /// Hash of the previous record in the worker's log.
    pub prev_hash: String,
    /// Hash of this record in the worker's log.
    pub record_hash: String,
}

/// A connected worker session, as `GET /v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// Identity from the client certificate's URI SAN.
    pub identity: String,
    /// Session id (also sent in `Welcome`).
    pub session_id: String,
    /// Peer address of the TLS connection.
    pub remote_addr: String,
    /// `Hello.worker_version`.
    pub worker_version: String,
    /// `Hello.instance_id`.
    pub instance_id: String,
    /// The manifest, each entry marked dispatchable or not.
    pub manifest: Vec<ManifestEntryView>,
    /// Assignments the orchestrator may still send on this stream.
    pub credit: u32,
    /// Assignments sent on this stream with no result yet.
    pub in_flight: u32,
    /// Whether the worker said it is draining.
    pub draining: bool,
    /// When the session started, RFC 3339.
    pub connected_since: String,
}

/// One manifest entry of a connected worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntryView {
    /// Task name.
    pub name: String,
    /// Task version.
    pub version: String,
    /// The worker's schema hash.
    pub input_schema_sha256: String,
    /// Whether the orchestrator dispatches this task to this worker.
    pub dispatchable: bool,
    /// Why not, when not dispatchable.
    pub problem: Option<String>,
}

/// A registered task, as `GET /v1/tasks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task name.
    pub name: String,
    /// Task version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of the inputs.
    pub input_schema: Value,
    /// Whether a retry after an unknown outcome is safe.
    pub idempotent: bool,
    /// Lower-case hex SHA-256 of the canonical JSON of `input_schema`
    /// (what a worker's manifest must carry).
    pub input_schema_sha256: String,
}
