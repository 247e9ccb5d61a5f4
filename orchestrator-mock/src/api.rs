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
    /// Cancelled through the admin API: nothing more of it is queued; the
    /// step that was running when the cancel came ended with whatever the
    /// worker reported.
    Cancelled,
}

impl PlanStatus {
    /// Whether the plan can no longer change.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Rejected | Self::Cancelled
        )
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
    /// The worker reported `TIMED_OUT`, or the step's deadline passed
    /// before it could be assigned (error code `deadline_passed`).
    TimedOut,
    /// The worker reported `CANCELLED`, or the step was cancelled before a
    /// worker took it (error code `cancelled`).
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
    /// Whether a cancel was asked for and the plan waits for the running
    /// step's result before it ends `cancelled`.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The plan's W3C `traceparent` (version 00 form): the one submitted,
    /// or one the orchestrator made when none was. Each assignment carries
    /// its trace id with a parent-id of its own ([`AttemptView::traceparent`]).
    /// `None` only for a plan stored before trace context existed.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The name of the admin token that submitted it (an agent's token
    /// through `/mcp` or `POST /v1/plans`); `None` for plans stored before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
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
    /// Every attempt so far, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptView>,
    /// Who approved the step, once approved with a signature: the key id
    /// of its signed approval, `auto:<key id>` when the orchestrator's
    /// auto-approver signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Identity of the worker it was assigned to (the lease holder).
    pub worker: String,
    /// Whether the worker sent `Accept` for it.
    pub accepted: bool,
    /// When it was assigned, RFC 3339.
    pub assigned_at: String,
    /// `Assignment.deadline` as sent, RFC 3339; `None` when unset.
    #[serde(default)]
    pub deadline: Option<String>,
    /// How it ended: a step status (`succeeded`, `outcome_unknown`, ...) or
    /// `reassigned` (never accepted and lost, or idempotent and lost: a new
    /// attempt was made). `None` while it runs.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Why it ended that way when the orchestrator decided (lease lapsed,
    /// worker restarted, ...).
    #[serde(default)]
    pub note: Option<String>,
    /// When it ended, RFC 3339.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// While it runs: when the holder's lease lapses unless the worker is
    /// heard from again, RFC 3339.
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    /// `Assignment.traceparent` as sent: the plan's trace id and a
    /// parent-id made for this attempt. `None` when the plan has no trace
    /// context.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// A plan as submitted through the admin API: a [`PlanRequest`] whose
/// steps may also carry a deadline, and which may carry a trace context.
/// The JSON is the same as a [`PlanRequest`]'s with an optional `deadline`
/// per step and an optional `traceparent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSubmission {
    /// Optional human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// The steps, run in this order.
    pub steps: Vec<StepSubmission>,
    /// The submitter's W3C `traceparent`
    /// (`00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`), so the
    /// plan's tasks join the agent's trace; checked by
    /// [`private_worker_proto::trace::TraceParent::parse`] (an invalid one
    /// is refused with 422 `traceparent_invalid`). Absent: the orchestrator
    /// starts a new trace for the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One step of a [`PlanSubmission`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSubmission {
    /// Task, version and inputs.
    #[serde(flatten)]
    pub step: StepRequest,
    /// The step's deadline, RFC 3339 (e.g. `2026-05-01T12:00:00Z`): no
    /// attempt starts after it (the worker ends it `timed_out`, and the
    /// orchestrator does not assign it once passed). Without it the
    /// registry task's `timeout_secs` from assignment applies, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

impl From<PlanRequest> for PlanSubmission {
    fn from(plan: PlanRequest) -> PlanSubmission {
        PlanSubmission {
            name: plan.name,
            steps: plan
                .steps
                .into_iter()
                .map(|step| StepSubmission {
                    step,
                    deadline: None,
                })
                .collect(),
            traceparent: None,
        }
    }
}

impl PlanSubmission {
    /// The plan without deadlines, as the registry validates it.
    pub fn request(&self) -> PlanRequest {
        PlanRequest {
            name: self.name.clone(),
            steps: self.steps.iter().map(|s| s.step.clone()).collect(),
        }
    }
}

/// Body of `POST /v1/plans/{id}/cancel` and
/// `POST /v1/plans/{id}/steps/{index}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Why (sent to the worker in `Cancel.reason`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// One attempt a worker identity holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAttempt {
    /// Plan id.
    pub plan_id: String,
    /// Task id.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Whether the worker accepted it.
    pub accepted: bool,
}

/// A worker identity as `GET /v1/identities` shows it: connected or not,
/// with its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityView {
    /// Identity from the client certificate's URI SAN.
    pub identity: String,
    /// Whether a session of it is connected now.
    pub connected: bool,
    /// That session's id.
    pub session_id: Option<String>,
    /// When the orchestrator last heard from it, RFC 3339.
    pub last_seen: String,
    /// When its lease lapses unless it is heard from again, RFC 3339.
    pub lease_expires_at: String,
    /// Whether the lease has lapsed (its attempts were settled).
    pub lease_lapsed: bool,
    /// Attempts assigned to it with no result yet.
    pub held: Vec<HeldAttempt>,
}

/// `GET /v1/admission`: what the worker-connection rules refused since
/// start, and the connections holding a place before `Hello` now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionView {
    /// Connections whose identity matched no `[admission] identities` pattern.
    pub refused_identities: u64,
    /// Connections refused because their identity held
    /// `max_connections_per_identity` live connections already.
    pub refused_identity_limit: u64,
    /// TCP connections closed at accept because
    /// `max_connections_before_hello` places were taken.
    pub refused_before_hello_limit: u64,
    /// Connections in their handshake or not yet past `Hello`, now.
    pub connections_before_hello: usize,
}

/// The body of `POST /v1/plans/{id}/approve` (optional when the
/// orchestrator trusts no approver key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// One signed approval per step.
    #[serde(default)]
    pub approvals: Vec<TaskApproval>,
}

/// A signed approval for one step, named by its task id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskApproval {
    /// The step's task id.
    pub task_id: String,
    /// The approval, as the approver's signer made it.
    #[serde(flatten)]
    pub approval: private_worker_proto::approval::Approval,
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
    /// Machine-readable code: `plan_invalid`, `traceparent_invalid`,
    /// `not_found`, `conflict`, `bad_request`, `internal`.
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
    /// Why this result is not part of any plan: no such attempt was
    /// assigned, or it was assigned to another identity than the sender.
    /// Such a result is acknowledged and kept as evidence, never applied
    /// nor listed under a plan. `None` for a plan's own results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
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
    /// What the orchestrator's checks found when the record arrived (its
    /// hash, its place in the sender's chain, its match with the attempt
    /// and the result): `ok`, or `flagged` with every reason.
    #[serde(default)]
    pub check: crate::audit_check::AuditCheck,
}

/// Results and audit records kept as evidence but part of no plan (see
/// [`StoredResult::problem`]), as `GET /v1/unattributed` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unattributed {
    /// The results, each with the reason it was not attributed.
    pub results: Vec<StoredResult>,
    /// Their audit records, with the checks' verdicts.
    pub audit: Vec<StoredAudit>,
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
    /// Serial of the client certificate this session's connection
    /// presented (changes when the worker rotates its certificate).
    #[serde(default)]
    pub certificate_serial: Option<String>,
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
    /// When the orchestrator last heard from this identity, RFC 3339.
    #[serde(default)]
    pub last_seen: Option<String>,
    /// When this identity's lease lapses unless it is heard from, RFC 3339.
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    /// Attempts assigned to this identity with no result yet.
    #[serde(default)]
    pub held: Vec<HeldAttempt>,
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
    /// Seconds from assignment after which no attempt may start (sets
    /// `Assignment.deadline` when the plan step has no deadline).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Lower-case hex SHA-256 of the canonical JSON of `input_schema`
    /// (what a worker's manifest must carry).
    pub input_schema_sha256: String,
    /// The task only reads: it changes nothing where it runs (MCP
    /// `readOnlyHint`; required for `approval = "auto"`).
    #[serde(default)]
    pub read_only: bool,
    /// The task may destroy or overwrite data (MCP `destructiveHint`);
    /// meaningless when `read_only`.
    #[serde(default)]
    pub destructive: bool,
    /// Who approves a plan with this task: see [`ApprovalPolicy`].
    #[serde(default)]
    pub approval: ApprovalPolicy,
    /// With `approval = "auto"`: at most this many auto-approved calls of
    /// the task per hour per submitting token; more wait for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_limit_per_hour: Option<u32>,
}

/// Who approves a plan step of a task (the registry's `approval`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalPolicy {
    /// A person approves (and signs) through the admin API: the default.
    #[default]
    Human,
    /// The orchestrator's auto-approver signs at once with its own key
    /// (read-only tasks only; within `auto_limit_per_hour`).
    Auto,
    /// Never: a plan with this task is refused at submission.
    Deny,
}

impl ApprovalPolicy {
    /// The policy as written in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Human => "human",
            Self::Auto => "auto",
            Self::Deny => "deny",
        }
    }
}
