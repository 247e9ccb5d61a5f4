//! Plans, steps, attempts, the queue, leases and the connected sessions:
//! the orchestrator's state machine, behind one mutex.
//!
//! Every mutation (approve, a result, a new session, more credit, a cancel,
//! a lapsed lease, ...) ends with [`State::dispatch`], which hands queued
//! steps to sessions that may take them, all under the same lock: there is
//! no window in which two dispatchers could spend the same credit.
//!
//! Durability: every change to a plan is recorded in the state journal
//! ([`crate::durable::journal`]) under the lock, with a sequence number.
//! Messages for a session go out through [`Outgoing::Send`] carrying the
//! sequence number they depend on; the session sends them only once that
//! number is durable, so an `Assignment` is never sent before its attempt
//! is on disk. Callers that answer someone (the admin API, a `ResultAck`)
//! wait for [`State::last_change`] the same way.
//!
//! Rules enforced here:
//! - steps of a plan run in order: step i+1 is queued only after step i
//!   succeeded; any other outcome fails the plan and skips the rest;
//! - an assignment is sent only to a session with credit > 0, that is not
//!   draining, and whose manifest lists the task's (name, version) with a
//!   matching schema hash (unless `insecure_skip_checks`);
//! - leases: every assigned attempt is leased to its worker identity, the
//!   lease is renewed by every message from that identity ([`State::touch`])
//!   and lapses after `lease_timeout` of silence ([`State::expire_leases`]):
//!   never-accepted attempts are assigned again, accepted ones end
//!   `outcome_unknown` unless the task is idempotent (then assigned again);
//! - one live session per identity: a newer one closes the older stream
//!   with `ABORTED`;
//! - cancel: queued steps end `cancelled` at once, an assigned one gets a
//!   `Cancel` and ends with the worker's result; the plan ends `cancelled`.
//!
//! What it does not do: talk to the network or the disk. The gateway owns
//! the streams, the journal owns the state store, [`crate::store`] owns the
//! result files.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use private_worker_proto::v1 as pb;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::{
    AttemptView, HeldAttempt, IdentityView, ManifestEntryView, PlanStatus, PlanView, StepStatus,
    StepView, WorkerView,
};
use crate::durable::journal::JournalSender;
use crate::durable::{Change, PlanRecord, StepRecord};
use crate::registry::ResolvedStep;
use private_worker_proto::trace::TraceParent;

/// The lease time used by [`State::new`] (tests): 30 s.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// The status that closes a stream replaced by a newer one of the same
/// worker identity.
pub const SUPERSEDED: &str = "superseded by a newer stream of the same worker identity";

/// What the state asks a session's stream to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Send `message` once state change `after` is durable.
    Send {
        /// The journal sequence number the message depends on.
        after: u64,
        /// The message.
        message: Box<pb::OrchestratorMessage>,
    },
    /// End the stream with this status.
    Close(Box<tonic::Status>),
}

/// The channel a session's stream task reads its outgoing messages from.
pub type Outbound = mpsc::UnboundedSender<Outgoing>;

/// Why an admin operation on the state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// No plan has this id (HTTP 404); check the id.
    #[error("no plan with id {0:?}")]
    PlanNotFound(String),
    /// The plan has no step with this index (HTTP 404).
    #[error("plan {0:?} has no step {1}")]
    StepNotFound(String, usize),
    /// The plan is not in a state that allows the operation (HTTP 409),
    /// e.g. approving twice or rejecting a finished plan.
    #[error("{0}")]
    Conflict(String),
}

/// What [`State::apply_result`] did with a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultEffect {
    /// The step took the outcome and its plan advanced.
    Applied {
        /// The step's plan.
        plan_id: String,
        /// The plan's status afterwards.
        plan_status: PlanStatus,
    },
    /// The result does not match the step's current assignment (an old
    /// attempt, a finished step, or another worker); stored, not applied.
    Ignored(String),
    /// No task with this id is known.
    UnknownTask,
}

/// What a worker reported for one attempt, as it applies to the step.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    /// The step status the outcome leads to ([`step_status_for`]).
    pub status: StepStatus,
    /// The output, if any.
    pub output: Option<Value>,
    /// The error code, if any.
    pub error_code: Option<String>,
    /// The error message, if any.
    pub error_message: Option<String>,
}

/// A session that finished its `Hello`, ready to be registered.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Session id (sent in `Welcome`).
    pub session_id: String,
    /// Identity from the client certificate.
    pub identity: String,
    /// TLS peer address.
    pub remote_addr: SocketAddr,
    /// Serial of the client certificate of this session's connection.
    pub cert_serial: String,
    /// `Hello.worker_version`.
    pub worker_version: String,
    /// `Hello.instance_id`.
    pub instance_id: String,
    /// The manifest with the registry's verdict on each entry.
    pub manifest: Vec<ManifestEntryView>,
    /// `Hello.max_in_flight`.
    pub credit: u32,
    /// Attempts the worker says it still holds: `Hello.running` and
    /// `Hello.pending_results`.
    pub held: BTreeSet<(String, u32)>,
    /// Where messages for this session go.
    pub tx: Outbound,
}

struct Session {
    info: NewSession,
    /// The credit rule (worker.proto): the orchestrator's credit on a stream is
    /// `Hello.max_in_flight` plus every `Credit.grant` received on that stream minus
    /// every `Assignment` sent on it, and it never sends an assignment when that is
    /// zero; the worker grants one credit back when a `ResultAck` frees one of its
    /// slots.
    credit: u32,
    in_flight: BTreeSet<(String, u32)>,
    draining: bool,
    connected_since: String,
}

impl Session {
    fn can_run(&self, task: &str, version: &str, skip_checks: bool) -> bool {
        skip_checks
            || self
                .info
                .manifest
                .iter()
                .any(|m| m.dispatchable && m.name == task && m.version == version)
    }
}

/// `Assignment.inputs_json` for a step: the same text for every attempt.
/// A step with a signed approval sends the canonical JSON that was signed
/// (the approval check refused inputs it would change); others send
/// compact JSON text with every number as submitted (canonical JSON would
/// read integers beyond 2^53 as doubles and change them).
fn inputs_text(step: &StepRecord) -> String {
    match step.approval {
        Some(_) => private_worker_proto::approval::canonical_inputs(&step.view.inputs)
            .unwrap_or_else(|_| step.view.inputs.to_string()),
        None => step.view.inputs.to_string(),
    }
}

/// An attempt as the orchestrator sent it (see [`State::assigned_attempt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedAttempt {
    /// The plan it belongs to.
    pub plan_id: String,
    /// Task name sent.
    pub task_name: String,
    /// Task version sent.
    pub task_version: String,
    /// `Assignment.inputs_json` as sent (canonical JSON of the inputs).
    pub inputs_json: String,
    /// The identity it was assigned to.
    pub worker: String,
}

/// One worker identity's lease.
struct Lease {
    last_seen: Instant,
    last_seen_at: String,
    expires: Instant,
    lapsed: bool,
}

/// The whole state. Callers hold it in a mutex ([`SharedState`]) and keep
/// each lock short: no `.await` while locked.
pub struct State {
    skip_checks: bool,
    lease_timeout: Duration,
    plans: HashMap<String, PlanRecord>,
    /// task_id -> (plan id, step index)
    tasks: HashMap<String, (String, usize)>,
    /// Queued task ids, oldest first.
    queue: VecDeque<String>,
    next_queue_seq: u64,
    sessions: BTreeMap<String, Session>,
    /// Assigned task ids -> the session the current attempt was sent on
    /// (`None` after a restart, until its worker dials again).
    assigned: HashMap<String, Option<String>>,
    leases: BTreeMap<String, Lease>,
    journal: JournalSender,
    /// The auto-approver's key id: approvals it signed show as
    /// `auto:<key id>` ([`StepView::approved_by`]).
    auto_approver_key: Option<String>,
}

/// The state as the gateway and the admin API share it.
pub type SharedState = std::sync::Arc<std::sync::Mutex<State>>;

impl State {
    /// An empty state with an in-memory journal and
    /// [`DEFAULT_LEASE_TIMEOUT`], for tests. `skip_checks` dispatches to
    /// any connected worker, ignoring manifests (`insecure_skip_checks`).
    pub fn new(skip_checks: bool) -> State {
        State::with_journal(
            skip_checks,
            DEFAULT_LEASE_TIMEOUT,
            crate::durable::journal::in_memory().0,
        )
    }

    /// An empty state recording its changes in `journal`.
    pub fn with_journal(
        skip_checks: bool,
        lease_timeout: Duration,
        journal: JournalSender,
    ) -> State {
        State {
            skip_checks,
            lease_timeout,
            plans: HashMap::new(),
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            next_queue_seq: 1,
            sessions: BTreeMap::new(),
            assigned: HashMap::new(),
            leases: BTreeMap::new(),
            journal,
            auto_approver_key: None,
        }
    }

    /// Names the auto-approver's key id, so the steps it approved show
    /// `approved_by: auto:<key id>`.
    pub fn set_auto_approver_key(&mut self, key_id: Option<String>) {
        self.auto_approver_key = key_id;
    }

    /// Rebuilds the state from stored plans after a restart: queued steps
    /// go back in the queue in their order, and every attempt still
    /// assigned is leased to its worker identity from now (so its worker's
    /// reconnect `Hello` settles it, or the lease lapses).
    pub fn restore(&mut self, records: Vec<PlanRecord>) {
        let now = Instant::now();
        let mut queued = Vec::new();
        for plan in records {
            for (index, step) in plan.steps.iter().enumerate() {
                self.tasks
                    .insert(step.view.task_id.clone(), (plan.id.clone(), index));
                self.next_queue_seq = self.next_queue_seq.max(step.queue_seq + 1);
                match step.view.status {
                    StepStatus::Queued => queued.push((step.queue_seq, step.view.task_id.clone())),
                    StepStatus::Assigned => {
                        self.assigned.insert(step.view.task_id.clone(), None);
                        if let Some(worker) = &step.view.worker {
                            self.leases.entry(worker.clone()).or_insert_with(|| Lease {
                                last_seen: now,
                                last_seen_at: now_rfc3339(),
                                expires: now + self.lease_timeout,
                                lapsed: false,
                            });
                        }
                    }
                    _ => {}
                }
            }
            self.plans.insert(plan.id.clone(), plan);
        }
        queued.sort();
        self.queue = queued.into_iter().map(|(_, id)| id).collect();
        tracing::info!(
            plans = self.plans.len(),
            queued = self.queue.len(),
            assigned = self.assigned.len(),
            "state restored"
        );
    }

    /// The journal sequence number of the latest change: wait for it to be
    /// durable before telling anyone about what just changed.
    pub fn last_change(&self) -> u64 {
        self.journal.last()
    }

    /// Records the whole plan (its own fields and every step): for a new
    /// plan, and for changes that touch many steps (reject, cancel, the end
    /// of a plan). Returns the sequence number to wait for.
    fn save(&mut self, plan_id: &str) -> u64 {
        let Some(plan) = self.plans.get(plan_id) else {
            return self.journal.last();
        };
        let mut last = self.journal.last();
        for change in Change::whole_plan(plan) {
            last = self.journal.record(change);
        }
        last
    }

    /// Records a change to step `index`: the plan's own fields and that
    /// step. A plan that just ended (its later steps skipped) is recorded
    /// whole. So a step of a long plan costs one row, not the whole plan.
    fn save_step(&mut self, plan_id: &str, index: usize) -> u64 {
        self.save_steps(plan_id, index..index + 1)
    }

    /// [`State::save_step`] for the steps in `indices` (a result and the
    /// step it queues).
    fn save_steps(&mut self, plan_id: &str, indices: std::ops::Range<usize>) -> u64 {
        let Some(plan) = self.plans.get(plan_id) else {
            return self.journal.last();
        };
        if plan.status.is_finished() {
            return self.save(plan_id);
        }
        let changes: Vec<Change> = std::iter::once(Change::plan_fields(plan))
            .chain(indices.filter_map(|i| Change::step(plan, i)))
            .collect();
        let mut last = self.journal.last();
        for change in changes {
            last = self.journal.record(change);
        }
        last
    }

    /// Stores a validated plan as `pending_approval`. `deadlines` holds
    /// each step's deadline (RFC 3339), aligned with `steps`.
    pub fn submit(&mut self, name: Option<String>, steps: Vec<ResolvedStep>) -> PlanView {
        self.submit_with_deadlines(name, steps, Vec::new())
    }

    /// [`State::submit`] with a deadline per step (missing entries: none).
    pub fn submit_with_deadlines(
        &mut self,
        name: Option<String>,
        steps: Vec<ResolvedStep>,
        deadlines: Vec<Option<String>>,
    ) -> PlanView {
        self.submit_traced(name, steps, deadlines, None)
    }

    /// [`State::submit_with_deadlines`] with the submitter's trace context
    /// (already checked); `None` starts a new trace for the plan (random
    /// trace-id and parent-id, sampled). Stored with the plan; every
    /// assignment of it carries the trace id with a new parent-id.
    pub fn submit_traced(
        &mut self,
        name: Option<String>,
        steps: Vec<ResolvedStep>,
        deadlines: Vec<Option<String>>,
        traceparent: Option<TraceParent>,
    ) -> PlanView {
        self.submit_as(name, steps, deadlines, traceparent, None)
    }

    /// [`State::submit_traced`] recording the name of the admin token that
    /// submitted the plan (shown as `submitted_by`).
    pub fn submit_as(
        &mut self,
        name: Option<String>,
        steps: Vec<ResolvedStep>,
        deadlines: Vec<Option<String>>,
        traceparent: Option<TraceParent>,
        submitted_by: Option<String>,
    ) -> PlanView {
        let id = new_id();
        let traceparent = traceparent.unwrap_or_else(TraceParent::new_trace);
        let steps: Vec<StepRecord> = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| StepRecord {
                view: StepView {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    task_id: new_id(),
                    task: s.task,
                    version: s.version,
                    inputs: s.inputs,
                    status: StepStatus::Waiting,
                    attempt: 0,
                    worker: None,
                    error_code: None,
                    error_message: None,
                    output: None,
                    queued_at: None,
                    finished_at: None,
                    attempts: Vec::new(),
                    approved_by: None,
                },
                idempotent: s.idempotent,
                accepted: false,
                queue_seq: 0,
                deadline: deadlines.get(i).cloned().flatten(),
                timeout_secs: s.timeout_secs,
                approval: None,
            })
            .collect();
        for (i, step) in steps.iter().enumerate() {
            self.tasks
                .insert(step.view.task_id.clone(), (id.clone(), i));
        }
        let plan = PlanRecord {
            id: id.clone(),
            name,
            status: PlanStatus::PendingApproval,
            created_at: now_rfc3339(),
            steps,
            cancel_from: None,
            traceparent: Some(traceparent),
            submitted_by,
        };
        tracing::info!(plan_id = %id, steps = plan.steps.len(), trace_id = %traceparent.trace_id(), "plan submitted; waiting for approval");
        self.plans.insert(id.clone(), plan);
        self.save(&id);
        self.view_of(&id).unwrap_or_else(|| unreachable_view(&id))
    }

    /// The plan with this id.
    ///
    /// # Errors
    /// [`StateError::PlanNotFound`].
    pub fn plan(&self, id: &str) -> Result<PlanView, StateError> {
        self.view_of(id)
            .ok_or_else(|| StateError::PlanNotFound(id.to_string()))
    }

    /// Every plan, newest first (by creation time, then id).
    pub fn plans(&self) -> Vec<PlanView> {
        let mut plans: Vec<&PlanRecord> = self.plans.values().collect();
        plans.sort_unstable_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
        plans.iter().filter_map(|p| self.view_of(&p.id)).collect()
    }

    fn view_of(&self, id: &str) -> Option<PlanView> {
        let plan = self.plans.get(id)?;
        let mut steps: Vec<StepView> = plan.steps.iter().map(|s| s.view.clone()).collect();
        for (step, record) in steps.iter_mut().zip(&plan.steps) {
            step.approved_by = record.approval.as_ref().map(|a| {
                if self.auto_approver_key.as_deref() == Some(a.key_id.as_str()) {
                    format!("auto:{}", a.key_id)
                } else {
                    a.key_id.clone()
                }
            });
        }
        for step in &mut steps {
            if step.status != StepStatus::Assigned {
                continue;
            }
            let expiry = step
                .worker
                .as_ref()
                .and_then(|w| self.leases.get(w))
                .map(|l| wall_time_of(l.expires));
            if let Some(current) = step.attempts.last_mut() {
                current.lease_expires_at = expiry;
            }
        }
        Some(PlanView {
            id: plan.id.clone(),
            name: plan.name.clone(),
            status: plan.status,
            created_at: plan.created_at.clone(),
            steps,
            cancel_requested: plan.cancel_from.is_some() && !plan.status.is_finished(),
            traceparent: plan.traceparent.map(|t| t.to_string()),
            submitted_by: plan.submitted_by.clone(),
        })
    }

    /// Approves a pending plan: its first step is queued and dispatched.
    ///
    /// # Errors
    /// [`StateError::PlanNotFound`], or [`StateError::Conflict`] when the
    /// plan is not pending approval.
    pub fn approve(&mut self, id: &str) -> Result<PlanView, StateError> {
        self.approve_signed(id, Vec::new())
    }

    /// Approves a pending plan with one signed approval per step, in step
    /// order (already checked by [`crate::approvals`]; empty when the
    /// orchestrator trusts no approver key): each is stored with its step
    /// and sent with every assignment of it.
    ///
    /// # Errors
    /// As [`State::approve`].
    pub fn approve_signed(
        &mut self,
        id: &str,
        approvals: Vec<private_worker_proto::approval::Approval>,
    ) -> Result<PlanView, StateError> {
        let plan = Self::pending_plan(&mut self.plans, id, "approved")?;
        plan.status = PlanStatus::Approved;
        let signed = !approvals.is_empty();
        for (step, approval) in plan.steps.iter_mut().zip(approvals) {
            step.approval = Some(approval);
        }
        tracing::info!(plan_id = %id, signed, "plan approved");
        self.advance_to(id, 0);
        if signed {
            self.save(id);
        } else {
            self.save_step(id, 0);
        }
        self.dispatch();
        self.plan(id)
    }

    /// The plan `id`, which must be pending approval to be `decision`
    /// ("approved" or "rejected").
    fn pending_plan<'a>(
        plans: &'a mut HashMap<String, PlanRecord>,
        id: &str,
        decision: &str,
    ) -> Result<&'a mut PlanRecord, StateError> {
        let plan = plans
            .get_mut(id)
            .ok_or_else(|| StateError::PlanNotFound(id.to_string()))?;
        if plan.status != PlanStatus::PendingApproval {
            return Err(StateError::Conflict(format!(
                "plan {id} is {}, not pending_approval: only a pending plan can be {decision}",
                status_name(plan.status)
            )));
        }
        Ok(plan)
    }

    /// Rejects a pending plan: nothing is queued, every step is skipped.
    ///
    /// # Errors
    /// [`StateError::PlanNotFound`], or [`StateError::Conflict`] when the
    /// plan is not pending approval.
    pub fn reject(&mut self, id: &str, reason: &str) -> Result<PlanView, StateError> {
        let plan = Self::pending_plan(&mut self.plans, id, "rejected")?;
        plan.status = PlanStatus::Rejected;
        for step in &mut plan.steps {
            step.view.status = StepStatus::Skipped;
        }
        tracing::info!(plan_id = %id, reason, "plan rejected");
        self.save(id);
        self.plan(id)
    }

    /// Cancels a plan from step `from` on (0 for the whole plan): a step
    /// not yet assigned ends `cancelled` at once and the plan ends
    /// `cancelled`; an assigned one gets a `Cancel` sent to its worker and
    /// the plan ends `cancelled` when its result arrives (the step keeps
    /// what the worker reported). A later step is cancelled when the plan
    /// reaches it.
    ///
    /// # Errors
    /// [`StateError::PlanNotFound`], [`StateError::StepNotFound`], or
    /// [`StateError::Conflict`] when the plan or step already finished.
    pub fn cancel(&mut self, id: &str, from: usize, reason: &str) -> Result<PlanView, StateError> {
        let plan = self
            .plans
            .get_mut(id)
            .ok_or_else(|| StateError::PlanNotFound(id.to_string()))?;
        if plan.status.is_finished() {
            return Err(StateError::Conflict(format!(
                "plan {id} is {}: a finished plan cannot be cancelled",
                status_name(plan.status)
            )));
        }
        let step = plan
            .steps
            .get(from)
            .ok_or_else(|| StateError::StepNotFound(id.to_string(), from))?;
        if !matches!(
            step.view.status,
            StepStatus::Waiting | StepStatus::Queued | StepStatus::Assigned
        ) {
            return Err(StateError::Conflict(format!(
                "step {from} of plan {id} is {:?}: only a waiting, queued or assigned step can be cancelled",
                step.view.status
            )));
        }
        plan.cancel_from = Some(plan.cancel_from.map_or(from, |f| f.min(from)));
        tracing::info!(plan_id = %id, from, reason, "cancel requested");
        // The step that is active now (waiting only while pending approval).
        let active = plan.steps.iter().position(|s| {
            matches!(
                s.view.status,
                StepStatus::Waiting | StepStatus::Queued | StepStatus::Assigned
            )
        });
        match active {
            Some(index) if index >= from => match plan.steps[index].view.status {
                StepStatus::Assigned => {
                    let (task_id, attempt) = (
                        plan.steps[index].view.task_id.clone(),
                        plan.steps[index].view.attempt,
                    );
                    self.save(id);
                    self.send_cancel(&task_id, attempt, reason);
                }
                _ => {
                    let plan = self
                        .plans
                        .get_mut(id)
                        .ok_or_else(|| StateError::PlanNotFound(id.to_string()))?;
                    cancel_step(plan, index, reason);
                    self.save(id);
                }
            },
            _ => {
                self.save(id);
            }
        }
        self.dispatch();
        self.plan(id)
    }

    /// Sends `Cancel` for an attempt to the session holding it, if any is
    /// connected (otherwise it goes when the worker dials again and still
    /// holds the attempt).
    fn send_cancel(&mut self, task_id: &str, attempt: u32, reason: &str) {
        let after = self.journal.last();
        let Some(Some(session_id)) = self.assigned.get(task_id) else {
            tracing::info!(
                task_id,
                attempt,
                "holder not connected; Cancel goes when it dials again"
            );
            return;
        };
        if let Some(session) = self.sessions.get(session_id) {
            let message = pb::OrchestratorMessage {
                kind: Some(pb::orchestrator_message::Kind::Cancel(pb::Cancel {
                    task: Some(pb::TaskRef {
                        task_id: task_id.to_string(),
                        attempt,
                    }),
                    reason: reason.to_string(),
                })),
            };
            tracing::info!(task_id, attempt, session_id = %session_id, "sending Cancel");
            let _ = session.info.tx.send(Outgoing::Send {
                after,
                message: Box::new(message),
            });
        }
    }

    /// The plan a task belongs to.
    pub fn plan_of(&self, task_id: &str) -> Option<String> {
        self.tasks.get(task_id).map(|(p, _)| p.clone())
    }

    /// What was sent for attempt `attempt` of `task_id` and to whom, if
    /// that attempt was ever assigned: what a result and its audit record
    /// are checked against.
    pub fn assigned_attempt(&self, task_id: &str, attempt: u32) -> Option<AssignedAttempt> {
        let (plan_id, index) = self.tasks.get(task_id)?;
        let step = self.plans.get(plan_id)?.steps.get(*index)?;
        let holder = step.view.attempts.iter().find(|a| a.attempt == attempt)?;
        Some(AssignedAttempt {
            plan_id: plan_id.clone(),
            task_name: step.view.task.clone(),
            task_version: step.view.version.clone(),
            inputs_json: inputs_text(step),
            worker: holder.worker.clone(),
        })
    }

    /// Whether a task id is known.
    pub fn knows_task(&self, task_id: &str) -> bool {
        self.tasks.contains_key(task_id)
    }

    /// Queues step `index` of plan `plan_id` (the plan reached it), unless
    /// a cancel covers it: then it ends `cancelled` with the plan. Does not
    /// save or dispatch.
    fn advance_to(&mut self, plan_id: &str, index: usize) {
        let Some(plan) = self.plans.get_mut(plan_id) else {
            return;
        };
        if index >= plan.steps.len() {
            plan.status = PlanStatus::Succeeded;
            tracing::info!(plan_id = %plan_id, "plan succeeded");
            return;
        }
        if plan.cancel_from.is_some_and(|f| f <= index) {
            cancel_step(plan, index, "cancelled before it started");
            return;
        }
        let step = &mut plan.steps[index];
        step.view.status = StepStatus::Queued;
        step.view.queued_at = Some(now_rfc3339());
        step.queue_seq = self.next_queue_seq;
        self.next_queue_seq += 1;
        self.queue.push_back(step.view.task_id.clone());
    }

    /// Renews `identity`'s lease: every message from a worker calls this.
    pub fn touch(&mut self, identity: &str, now: Instant) {
        let expires = now + self.lease_timeout;
        match self.leases.get_mut(identity) {
            Some(lease) => {
                // Only format the wall time when it moved noticeably.
                if now.duration_since(lease.last_seen) >= Duration::from_millis(100) {
                    lease.last_seen_at = now_rfc3339();
                }
                lease.last_seen = now;
                lease.expires = expires;
                lease.lapsed = false;
            }
            None => {
                self.leases.insert(
                    identity.to_string(),
                    Lease {
                        last_seen: now,
                        last_seen_at: now_rfc3339(),
                        expires,
                        lapsed: false,
                    },
                );
            }
        }
    }

    /// Settles the attempts of every identity whose lease lapsed by `now`:
    /// never-accepted ones are assigned again (a new attempt, to any
    /// worker listing the task), accepted ones end `outcome_unknown`
    /// unless the task is idempotent (then assigned again). A session of
    /// that identity still open is closed. Returns the identities that
    /// lapsed holding attempts.
    pub fn expire_leases(&mut self, now: Instant) -> Vec<String> {
        let lapsed: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| !l.lapsed && l.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut settled = Vec::new();
        for identity in lapsed {
            let held = self.held_by(&identity);
            if held.is_empty() {
                continue;
            }
            if let Some(lease) = self.leases.get_mut(&identity) {
                lease.lapsed = true;
            }
            tracing::warn!(worker = %identity, attempts = held.len(), timeout = ?self.lease_timeout, "lease lapsed: nothing heard from this worker identity; settling its attempts");
            for (task_id, _) in held {
                self.settle_lost(&task_id, "lease lapsed");
            }
            let sessions: Vec<String> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.info.identity == identity)
                .map(|(id, _)| id.clone())
                .collect();
            for session_id in sessions {
                if let Some(s) = self.sessions.remove(&session_id) {
                    let _ = s.info.tx.send(Outgoing::Close(Box::new(tonic::Status::unavailable(
                        "lease lapsed: nothing received from this worker identity within the lease time",
                    ))));
                }
            }
            settled.push(identity);
        }
        if !settled.is_empty() {
            self.dispatch();
        }
        settled
    }

    /// Task ids (with plan ids) currently assigned to `identity`.
    fn held_by(&self, identity: &str) -> Vec<(String, String)> {
        let mut held: Vec<(String, String)> = self
            .assigned
            .keys()
            .filter_map(|task_id| {
                let (plan_id, index) = self.tasks.get(task_id)?;
                let step = self.plans.get(plan_id)?.steps.get(*index)?;
                (step.view.worker.as_deref() == Some(identity))
                    .then(|| (task_id.clone(), plan_id.clone()))
            })
            .collect();
        held.sort();
        held
    }

    /// An assigned attempt whose worker no longer holds it (lease lapsed,
    /// or its worker dialled again without listing it): assign it again
    /// when it was never accepted or is idempotent, else end it
    /// `outcome_unknown`. Saves the plan.
    fn settle_lost(&mut self, task_id: &str, why: &str) {
        let Some((plan_id, index)) = self.tasks.get(task_id).cloned() else {
            return;
        };
        let Some(plan) = self.plans.get_mut(&plan_id) else {
            return;
        };
        let step = &mut plan.steps[index];
        if step.view.status != StepStatus::Assigned {
            return;
        }
        self.assigned.remove(task_id);
        for s in self.sessions.values_mut() {
            s.in_flight
                .remove(&(task_id.to_string(), step.view.attempt));
        }
        let attempt = step.view.attempt;
        if !step.accepted || step.idempotent {
            tracing::warn!(plan_id = %plan_id, task_id, attempt, accepted = step.accepted, why, "the worker does not hold this attempt; assigning it again");
            if let Some(a) = step.view.attempts.last_mut() {
                a.outcome = Some("reassigned".into());
                a.note = Some(why.to_string());
                a.finished_at = Some(now_rfc3339());
            }
            self.advance_to(&plan_id, index);
        } else {
            tracing::warn!(plan_id = %plan_id, task_id, attempt, why, "the worker lost an accepted attempt; its outcome is unknown");
            let message = format!(
                "{why} while the worker held this accepted attempt; it is not retried because the task is not idempotent"
            );
            finish_step(
                plan,
                index,
                StepStatus::OutcomeUnknown,
                None,
                Some("outcome_unknown".into()),
                Some(message),
            );
            if let Some(a) = plan.steps[index].view.attempts.last_mut() {
                a.note = Some(why.to_string());
            }
        }
        self.save_step(&plan_id, index);
    }

    /// Registers a session after its `Hello`, reconciles the attempts
    /// earlier sessions of the same worker left assigned, and dispatches.
    ///
    /// An older session of the same worker identity is stale once a new one
    /// arrives (one process per identity): its stream is closed with
    /// `ABORTED` ([`SUPERSEDED`]). Then every attempt assigned to this
    /// identity on a session that no longer exists is settled against what
    /// the worker says it holds: held attempts move to the new session (a
    /// cancel asked for meanwhile is sent now); the others are settled as
    /// lost ([`State::expire_leases`] explains how).
    pub fn register_session(&mut self, session: NewSession) {
        let id = session.session_id.clone();
        let stale: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.info.identity == session.identity)
            .map(|(id, _)| id.clone())
            .collect();
        for old in stale {
            tracing::info!(session_id = %old, "closing a stale session of the same worker: {SUPERSEDED}");
            if let Some(s) = self.sessions.remove(&old) {
                let _ = s
                    .info
                    .tx
                    .send(Outgoing::Close(Box::new(tonic::Status::aborted(
                        SUPERSEDED,
                    ))));
            }
        }
        self.touch(&session.identity, Instant::now());
        let mut adopted = BTreeSet::new();
        let mut to_cancel = Vec::new();
        for (task_id, _) in self.held_by(&session.identity) {
            let orphaned = self
                .assigned
                .get(&task_id)
                .and_then(Option::as_ref)
                .is_none_or(|s| !self.sessions.contains_key(s));
            if !orphaned {
                continue;
            }
            let Some((plan_id, index)) = self.tasks.get(&task_id).cloned() else {
                continue;
            };
            let Some(plan) = self.plans.get(&plan_id) else {
                continue;
            };
            let attempt = plan.steps[index].view.attempt;
            let key = (task_id.clone(), attempt);
            if session.held.contains(&key) {
                self.assigned.insert(task_id.clone(), Some(id.clone()));
                if plan.cancel_from.is_some_and(|f| f <= index) {
                    to_cancel.push(key.clone());
                }
                adopted.insert(key);
            } else {
                let why = "the worker dialled again without listing it";
                self.settle_lost(&task_id, why);
            }
        }
        let credit = session.credit;
        self.sessions.insert(
            id,
            Session {
                info: session,
                credit,
                in_flight: adopted,
                draining: false,
                connected_since: now_rfc3339(),
            },
        );
        for (task_id, attempt) in to_cancel {
            self.send_cancel(&task_id, attempt, "plan cancelled");
        }
        self.dispatch();
    }

    /// Notes that the worker accepted an attempt (it holds it from now on).
    /// Only the identity the attempt was assigned to can accept it; an
    /// `Accept` from any other is ignored and the reason returned.
    pub fn mark_accepted(
        &mut self,
        identity: &str,
        task_id: &str,
        attempt: u32,
    ) -> Result<(), String> {
        match self.assigned_attempt(task_id, attempt) {
            None => return Err("no such attempt was assigned".into()),
            Some(a) if a.worker != identity => {
                return Err(format!("the attempt was assigned to {}", a.worker));
            }
            Some(_) => {}
        }
        let Some((plan_id, index)) = self.tasks.get(task_id).cloned() else {
            return Ok(());
        };
        let Some(step) = self
            .plans
            .get_mut(&plan_id)
            .and_then(|p| p.steps.get_mut(index))
        else {
            return Ok(());
        };
        if step.view.attempt == attempt
            && step.view.status == StepStatus::Assigned
            && !step.accepted
        {
            step.accepted = true;
            if let Some(a) = step.view.attempts.last_mut() {
                a.accepted = true;
            }
            self.save_step(&plan_id, index);
        }
        Ok(())
    }

    /// Adds `Credit.grant` to a session and dispatches.
    pub fn grant_credit(&mut self, session_id: &str, grant: u32) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.credit = s.credit.saturating_add(grant);
        }
        self.dispatch();
    }

    /// Stops dispatching to a session (it sent `Draining`).
    pub fn set_draining(&mut self, session_id: &str) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.draining = true;
        }
    }

    /// Assignments sent on a session with no result yet.
    pub fn in_flight(&self, session_id: &str) -> usize {
        self.sessions
            .get(session_id)
            .map_or(0, |s| s.in_flight.len())
    }

    /// Removes a session; returns the attempts it held without a result.
    /// They stay assigned (leased to the worker identity) until the worker
    /// dials again or its lease lapses.
    pub fn unregister_session(&mut self, session_id: &str) -> Vec<(String, u32)> {
        self.sessions
            .remove(session_id)
            .map(|s| s.in_flight.into_iter().collect())
            .unwrap_or_default()
    }

    /// Applies a worker's result to its step and advances the plan.
    ///
    /// `identity` is the sender's certificate identity: a result from a
    /// worker other than the one assigned is not applied.
    pub fn apply_result(
        &mut self,
        identity: &str,
        task_id: &str,
        attempt: u32,
        reported: Reported,
    ) -> ResultEffect {
        let Reported {
            status,
            output,
            error_code,
            error_message,
        } = reported;
        let Some((plan_id, index)) = self.tasks.get(task_id).cloned() else {
            return ResultEffect::UnknownTask;
        };
        let Some(plan) = self.plans.get_mut(&plan_id) else {
            return ResultEffect::UnknownTask;
        };
        let Some(step) = plan.steps.get_mut(index) else {
            return ResultEffect::UnknownTask;
        };
        if step.view.status != StepStatus::Assigned || step.view.attempt != attempt {
            return ResultEffect::Ignored(format!(
                "step is {:?} at attempt {}, result is for attempt {attempt}",
                step.view.status, step.view.attempt
            ));
        }
        if step.view.worker.as_deref() != Some(identity) {
            return ResultEffect::Ignored(format!(
                "attempt was assigned to {:?}, result came from {identity:?}",
                step.view.worker
            ));
        }
        let key = (task_id.to_string(), attempt);
        for s in self.sessions.values_mut() {
            s.in_flight.remove(&key);
        }
        self.assigned.remove(task_id);
        let advance = finish_step(plan, index, status, output, error_code, error_message);
        if advance {
            self.advance_to(&plan_id, index + 1);
        }
        let plan_status = self
            .plans
            .get(&plan_id)
            .map_or(PlanStatus::Failed, |p| p.status);
        if plan_status == PlanStatus::Failed {
            tracing::warn!(plan_id = %plan_id, task_id, step = index, ?status, "plan failed");
        }
        // The step and the one its success queued.
        self.save_steps(&plan_id, index..index + 2);
        self.dispatch();
        ResultEffect::Applied {
            plan_id,
            plan_status,
        }
    }

    /// Hands queued steps to sessions that may take them, in queue order,
    /// spending one credit per assignment. Returns how many were sent.
    ///
    /// Called by every mutation; safe to call any time.
    pub fn dispatch(&mut self) -> usize {
        let mut sent = 0;
        let mut still_queued = VecDeque::new();
        while let Some(task_id) = self.queue.pop_front() {
            let Some((plan_id, index)) = self.tasks.get(&task_id).cloned() else {
                continue;
            };
            let Some(step) = self.plans.get(&plan_id).and_then(|p| p.steps.get(index)) else {
                continue;
            };
            if step.view.status != StepStatus::Queued {
                continue;
            }
            if step
                .deadline
                .as_deref()
                .and_then(parse_rfc3339)
                .is_some_and(|d| d <= time::OffsetDateTime::now_utc())
            {
                if let Some(plan) = self.plans.get_mut(&plan_id) {
                    let deadline = plan.steps[index].deadline.clone().unwrap_or_default();
                    tracing::warn!(plan_id = %plan_id, task_id = %task_id, %deadline, "deadline passed before a worker took the step");
                    finish_step(
                        plan,
                        index,
                        StepStatus::TimedOut,
                        None,
                        Some("deadline_passed".into()),
                        Some(format!(
                            "the step's deadline {deadline} passed before a worker took it"
                        )),
                    );
                }
                self.save_step(&plan_id, index);
                continue;
            }
            let (task, version) = (step.view.task.clone(), step.view.version.clone());
            // A step approved for one worker identity goes to that worker
            // only (any other would refuse it: wrong audience); a pool
            // audience is for the workers configured to accept it.
            let for_identity = step
                .approval
                .as_ref()
                .map(|a| a.audience.clone())
                .filter(|audience| audience.starts_with("spiffe://"));
            // The least busy eligible session; ties go to the oldest id.
            let chosen = self
                .sessions
                .iter()
                .filter(|(_, s)| {
                    !s.draining
                        && s.credit > 0
                        && !s.info.tx.is_closed()
                        && s.can_run(&task, &version, self.skip_checks)
                        && for_identity
                            .as_ref()
                            .is_none_or(|identity| *identity == s.info.identity)
                })
                .min_by_key(|(_, s)| s.in_flight.len())
                .map(|(id, _)| id.clone());
            let Some(session_id) = chosen else {
                still_queued.push_back(task_id);
                continue;
            };
            self.assign(&plan_id, index, &session_id);
            sent += 1;
        }
        self.queue = still_queued;
        sent
    }

    fn assign(&mut self, plan_id: &str, index: usize, session_id: &str) {
        let (Some(plan), Some(session)) = (
            self.plans.get_mut(plan_id),
            self.sessions.get_mut(session_id),
        ) else {
            return;
        };
        let Some(step) = plan.steps.get_mut(index) else {
            return;
        };
        let attempt = step.view.attempt + 1;
        let now = time::OffsetDateTime::now_utc();
        let deadline = match (&step.deadline, step.timeout_secs) {
            (Some(d), _) => parse_rfc3339(d),
            (None, Some(secs)) => {
                Some(now + time::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2)))
            }
            (None, None) => None,
        };
        let inputs_json = inputs_text(step);
        // Each assignment is a span of its own in the plan's trace.
        let traceparent = plan.traceparent.map(|t| t.child());
        step.view.attempt = attempt;
        step.view.status = StepStatus::Assigned;
        step.view.worker = Some(session.info.identity.clone());
        step.accepted = false;
        step.view.attempts.push(AttemptView {
            attempt,
            worker: session.info.identity.clone(),
            accepted: false,
            assigned_at: format_rfc3339(now),
            deadline: deadline.map(format_rfc3339),
            outcome: None,
            note: None,
            finished_at: None,
            lease_expires_at: None,
            traceparent: traceparent.map(|t| t.to_string()),
        });
        let message = pb::OrchestratorMessage {
            kind: Some(pb::orchestrator_message::Kind::Assignment(pb::Assignment {
                task_id: step.view.task_id.clone(),
                attempt,
                plan_id: plan_id.to_string(),
                step_index: step.view.index,
                task_name: step.view.task.clone(),
                task_version: step.view.version.clone(),
                inputs_json,
                deadline: deadline.map(|d| prost_types::Timestamp {
                    seconds: d.unix_timestamp(),
                    nanos: i32::try_from(d.nanosecond()).unwrap_or(0),
                }),
                approval: step
                    .approval
                    .as_ref()
                    .map(private_worker_proto::v1::Approval::from),
                idempotent: step.idempotent,
                traceparent: traceparent.map(|t| t.to_string()).unwrap_or_default(),
            })),
        };
        session.credit -= 1;
        session
            .in_flight
            .insert((step.view.task_id.clone(), attempt));
        if plan.status == PlanStatus::Approved {
            plan.status = PlanStatus::Running;
        }
        let task_id = step.view.task_id.clone();
        tracing::info!(
            plan_id,
            task_id = %task_id,
            attempt,
            task = %step.view.task,
            session_id,
            worker = %session.info.identity,
            credit_left = session.credit,
            trace_id = %traceparent.map(|t| t.trace_id()).unwrap_or_default(),
            "task assigned"
        );
        let identity = session.info.identity.clone();
        let tx = session.info.tx.clone();
        self.assigned.insert(task_id, Some(session_id.to_string()));
        if !self.leases.contains_key(&identity) {
            self.touch(&identity, Instant::now());
        }
        // Durable before sent: the stream waits for this change.
        let after = self.save_step(plan_id, index);
        let _ = tx.send(Outgoing::Send {
            after,
            message: Box::new(message),
        });
    }

    fn lease_view(&self, identity: &str) -> (Option<String>, Option<String>) {
        self.leases.get(identity).map_or((None, None), |l| {
            (Some(l.last_seen_at.clone()), Some(wall_time_of(l.expires)))
        })
    }

    fn held_view(&self, identity: &str) -> Vec<HeldAttempt> {
        self.held_by(identity)
            .into_iter()
            .filter_map(|(task_id, plan_id)| {
                let (_, index) = self.tasks.get(&task_id)?;
                let step = self.plans.get(&plan_id)?.steps.get(*index)?;
                Some(HeldAttempt {
                    plan_id,
                    task_id,
                    attempt: step.view.attempt,
                    accepted: step.accepted,
                })
            })
            .collect()
    }

    /// How long a worker identity may stay silent before its lease lapses
    /// (sent to workers in `Welcome.lease_timeout`).
    pub fn lease_timeout(&self) -> Duration {
        self.lease_timeout
    }

    /// Every connected session.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.sessions
            .values()
            .map(|s| {
                let (last_seen, lease_expires_at) = self.lease_view(&s.info.identity);
                WorkerView {
                    identity: s.info.identity.clone(),
                    session_id: s.info.session_id.clone(),
                    remote_addr: s.info.remote_addr.to_string(),
                    certificate_serial: Some(s.info.cert_serial.clone()),
                    worker_version: s.info.worker_version.clone(),
                    instance_id: s.info.instance_id.clone(),
                    manifest: s.info.manifest.clone(),
                    credit: s.credit,
                    in_flight: u32::try_from(s.in_flight.len()).unwrap_or(u32::MAX),
                    draining: s.draining,
                    connected_since: s.connected_since.clone(),
                    last_seen,
                    lease_expires_at,
                    held: self.held_view(&s.info.identity),
                }
            })
            .collect()
    }

    /// Every worker identity heard from since start (or holding an attempt
    /// restored at start), connected or not, with its lease.
    pub fn identities(&self) -> Vec<IdentityView> {
        self.leases
            .iter()
            .map(|(identity, lease)| {
                let session = self
                    .sessions
                    .values()
                    .find(|s| &s.info.identity == identity);
                IdentityView {
                    identity: identity.clone(),
                    connected: session.is_some(),
                    session_id: session.map(|s| s.info.session_id.clone()),
                    last_seen: lease.last_seen_at.clone(),
                    lease_expires_at: wall_time_of(lease.expires),
                    lease_lapsed: lease.lapsed || lease.expires <= Instant::now(),
                    held: self.held_view(identity),
                }
            })
            .collect()
    }
}

/// Ends step `index` with `status`. Returns whether the plan moves on to
/// the next step (the step succeeded and no cancel covers it); otherwise
/// the plan ends (`cancelled` when a cancel covers the step, else
/// `failed`) and every later step is skipped.
fn finish_step(
    plan: &mut PlanRecord,
    index: usize,
    status: StepStatus,
    output: Option<Value>,
    error_code: Option<String>,
    error_message: Option<String>,
) -> bool {
    let step = &mut plan.steps[index];
    let now = now_rfc3339();
    step.view.status = status;
    step.view.finished_at = Some(now.clone());
    step.view.output = output;
    step.view.error_code = error_code;
    step.view.error_message = error_message;
    if let Some(a) = step.view.attempts.last_mut()
        && a.outcome.is_none()
    {
        a.outcome = Some(step_status_name(status));
        a.finished_at = Some(now);
    }
    let cancelled = plan.cancel_from.is_some_and(|f| f <= index);
    if status == StepStatus::Succeeded && !cancelled {
        return true;
    }
    plan.status = if cancelled {
        PlanStatus::Cancelled
    } else {
        PlanStatus::Failed
    };
    for later in plan.steps.iter_mut().skip(index + 1) {
        later.view.status = StepStatus::Skipped;
    }
    tracing::info!(plan_id = %plan.id, status = %status_name(plan.status), "plan ended");
    false
}

/// A step no worker holds ends `cancelled`, and so does its plan.
fn cancel_step(plan: &mut PlanRecord, index: usize, reason: &str) {
    finish_step(
        plan,
        index,
        StepStatus::Cancelled,
        None,
        Some("cancelled".into()),
        Some(reason.to_string()),
    );
}

/// The step status a worker's outcome leads to (unknown values count as
/// `outcome_unknown`, as the contract says).
pub fn step_status_for(outcome: pb::Outcome) -> StepStatus {
    match outcome {
        pb::Outcome::Succeeded => StepStatus::Succeeded,
        pb::Outcome::Failed => StepStatus::Failed,
        pb::Outcome::Rejected => StepStatus::Rejected,
        pb::Outcome::TimedOut => StepStatus::TimedOut,
        pb::Outcome::Cancelled => StepStatus::Cancelled,
        pb::Outcome::Unknown | pb::Outcome::Unspecified => StepStatus::OutcomeUnknown,
    }
}

/// The snake_case name of an outcome, as stored.
pub fn outcome_name(outcome: pb::Outcome) -> &'static str {
    match outcome {
        pb::Outcome::Succeeded => "succeeded",
        pb::Outcome::Failed => "failed",
        pb::Outcome::Rejected => "rejected",
        pb::Outcome::TimedOut => "timed_out",
        pb::Outcome::Cancelled => "cancelled",
        pb::Outcome::Unknown | pb::Outcome::Unspecified => "outcome_unknown",
    }
}

fn status_name(status: PlanStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status:?}"))
}

fn step_status_name(status: StepStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status:?}"))
}

fn unreachable_view(id: &str) -> PlanView {
    PlanView {
        id: id.to_string(),
        name: None,
        status: PlanStatus::Failed,
        created_at: String::new(),
        steps: Vec::new(),
        cancel_requested: false,
        traceparent: None,
        submitted_by: None,
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    format_rfc3339(time::OffsetDateTime::now_utc())
}

fn format_rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// The wall-clock time of a (tokio) instant, RFC 3339.
fn wall_time_of(at: Instant) -> String {
    let now = Instant::now();
    let wall = time::OffsetDateTime::now_utc();
    let t = if at >= now {
        wall + at.duration_since(now)
    } else {
        wall - now.duration_since(at)
    };
    format_rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(task: &str) -> ResolvedStep {
        ResolvedStep {
            task: task.into(),
            version: "1".into(),
            inputs: json!({"n": task}),
            idempotent: false,
            timeout_secs: None,
        }
    }

    #[test]
    fn inputs_are_sent_as_submitted_and_large_integers_keep_every_digit() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "s1", &["a"], 4);
        let mut big = step("a");
        big.inputs =
            json!({"account": 9_007_199_254_740_993_u64, "order": 12_345_678_901_234_567_891_u64});
        let plan = state.submit(None, vec![big]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut rx).remove(0);
        assert!(
            a.inputs_json.contains("9007199254740993"),
            "{}",
            a.inputs_json
        );
        assert!(
            a.inputs_json.contains("12345678901234567891"),
            "{}",
            a.inputs_json
        );
        // What the audit check compares against is the same text.
        let sent = state.assigned_attempt(&a.task_id, 1).unwrap();
        assert_eq!(sent.inputs_json, a.inputs_json);
    }

    #[test]
    fn a_step_approved_for_one_identity_goes_to_it_with_its_approval_and_canonical_inputs() {
        let mut state = State::new(false);
        // The less busy worker `other` would win without the audience.
        let mut busy = connect(&mut state, "chosen", &["a"], 4);
        let mut other = connect(&mut state, "other", &["a"], 4);
        let filler = state.submit(None, vec![step("a")]);
        state.approve(&filler.id).unwrap();
        assert_eq!(
            assignments(&mut busy).len() + assignments(&mut other).len(),
            1
        );
        let mut signed = step("a");
        signed.inputs = json!({"b": 1, "a": "x"});
        let plan = state.submit(None, vec![signed]);
        let approval = private_worker_proto::approval::Approval {
            key_id: "k".into(),
            algorithm: "ed25519".into(),
            signature: "00".repeat(64),
            not_before: Some(1),
            not_after: Some(2),
            nonce: "n".repeat(32),
            audience: "spiffe://t/worker/chosen".into(),
        };
        state
            .approve_signed(&plan.id, vec![approval.clone()])
            .unwrap();
        assert!(
            assignments(&mut other).is_empty(),
            "not for the other worker"
        );
        let sent = assignments(&mut busy);
        let a = sent.last().unwrap();
        assert_eq!(
            a.inputs_json, r#"{"a":"x","b":1}"#,
            "the canonical text that was signed"
        );
        assert_eq!(
            a.approval
                .as_ref()
                .map(private_worker_proto::approval::Approval::from),
            Some(approval)
        );
    }

    fn manifest(tasks: &[&str]) -> Vec<ManifestEntryView> {
        tasks
            .iter()
            .map(|t| ManifestEntryView {
                name: t.to_string(),
                version: "1".into(),
                input_schema_sha256: String::new(),
                dispatchable: true,
                problem: None,
            })
            .collect()
    }

    fn connect(
        state: &mut State,
        id: &str,
        tasks: &[&str],
        credit: u32,
    ) -> mpsc::UnboundedReceiver<Outgoing> {
        connect_as(state, id, id, "i", tasks, credit, &[])
    }

    /// Registers session `id` of worker `worker` (process `instance`), which
    /// says it holds `held`.
    fn connect_as(
        state: &mut State,
        id: &str,
        worker: &str,
        instance: &str,
        tasks: &[&str],
        credit: u32,
        held: &[(&str, u32)],
    ) -> mpsc::UnboundedReceiver<Outgoing> {
        let (tx, rx) = mpsc::unbounded_channel();
        state.register_session(NewSession {
            session_id: id.into(),
            identity: format!("spiffe://t/worker/{worker}"),
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            cert_serial: String::new(),
            worker_version: "test".into(),
            instance_id: instance.into(),
            manifest: manifest(tasks),
            credit,
            held: held.iter().map(|(t, a)| (t.to_string(), *a)).collect(),
            tx,
        });
        rx
    }

    #[test]
    fn an_attempt_lost_in_a_cut_connection_is_assigned_again_when_the_worker_dials_back() {
        let mut state = State::new(false);
        let mut old = connect_as(&mut state, "s1", "w", "i", &["a"], 4, &[]);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        let lost = assignments(&mut old);
        assert_eq!(lost.len(), 1);
        // The stream broke before the worker saw the assignment (no Accept).
        state.unregister_session("s1");
        let mut new = connect_as(&mut state, "s2", "w", "i", &["a"], 4, &[]);
        let again = assignments(&mut new);
        assert_eq!(again.len(), 1, "the lost attempt is assigned again");
        assert_eq!(
            (again[0].task_id.as_str(), again[0].attempt),
            (lost[0].task_id.as_str(), 2)
        );
    }

    #[test]
    fn an_attempt_the_worker_still_runs_is_adopted_not_repeated() {
        let mut state = State::new(false);
        let mut old = connect_as(&mut state, "s1", "w", "i", &["a"], 4, &[]);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut old).remove(0);
        state
            .mark_accepted("spiffe://t/worker/w", &a.task_id, a.attempt)
            .unwrap();
        state.unregister_session("s1");
        let mut new = connect_as(&mut state, "s2", "w", "i", &["a"], 3, &[(&a.task_id, 1)]);
        assert!(
            assignments(&mut new).is_empty(),
            "a held attempt is not sent again"
        );
        assert_eq!(state.in_flight("s2"), 1);
        assert!(matches!(
            finish(&mut state, "w", &a, StepStatus::Succeeded),
            ResultEffect::Applied { .. }
        ));
        assert_eq!(state.plan(&plan.id).unwrap().status, PlanStatus::Succeeded);
    }

    #[test]
    fn an_accepted_attempt_lost_in_a_worker_restart_ends_outcome_unknown_and_is_not_repeated() {
        let mut state = State::new(false);
        let mut old = connect_as(&mut state, "s1", "w", "i", &["a", "b"], 4, &[]);
        let plan = state.submit(None, vec![step("a"), step("b")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut old).remove(0);
        state
            .mark_accepted("spiffe://t/worker/w", &a.task_id, a.attempt)
            .unwrap();
        state.unregister_session("s1");
        // A new process (another instance id) holds nothing.
        let mut new = connect_as(&mut state, "s2", "w", "j", &["a", "b"], 4, &[]);
        assert!(
            assignments(&mut new).is_empty(),
            "a non-idempotent task is never blindly re-run"
        );
        let view = state.plan(&plan.id).unwrap();
        assert_eq!(view.status, PlanStatus::Failed);
        assert_eq!(view.steps[0].status, StepStatus::OutcomeUnknown);
        assert_eq!(view.steps[1].status, StepStatus::Skipped);
    }

    #[test]
    fn a_restarted_worker_settles_the_work_of_its_crashed_predecessor_before_the_old_stream_times_out()
     {
        let mut state = State::new(false);
        let mut old = connect_as(&mut state, "s1", "w", "i", &["a", "b"], 4, &[]);
        let plan = state.submit(None, vec![step("a"), step("b")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut old).remove(0);
        state
            .mark_accepted("spiffe://t/worker/w", &a.task_id, a.attempt)
            .unwrap();
        // The process crashed; its stream is not noticed dead yet.
        let mut new = connect_as(&mut state, "s2", "w", "j", &["a", "b"], 4, &[]);
        assert!(assignments(&mut new).is_empty());
        assert_eq!(
            state.plan(&plan.id).unwrap().steps[0].status,
            StepStatus::OutcomeUnknown
        );
        assert_eq!(state.workers().len(), 1);
    }

    #[test]
    fn a_stale_session_of_the_same_process_is_dropped_and_its_unreceived_work_reassigned() {
        let mut state = State::new(false);
        let mut old = connect_as(&mut state, "s1", "w", "i", &["a"], 4, &[]);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        assert_eq!(assignments(&mut old).len(), 1);
        // The old stream is dead but not noticed yet; the process dials again.
        let mut new = connect_as(&mut state, "s2", "w", "i", &["a"], 4, &[]);
        assert_eq!(assignments(&mut new).len(), 1);
        assert_eq!(state.workers().len(), 1, "the stale session is gone");
    }

    /// Everything sent to a session so far.
    fn sent(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        out
    }

    fn assignments(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<pb::Assignment> {
        sent(rx)
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Send { message, .. } => match message.kind {
                    Some(pb::orchestrator_message::Kind::Assignment(a)) => Some(a),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn finish(
        state: &mut State,
        worker: &str,
        a: &pb::Assignment,
        status: StepStatus,
    ) -> ResultEffect {
        state.apply_result(
            &format!("spiffe://t/worker/{worker}"),
            &a.task_id,
            a.attempt,
            Reported {
                status,
                output: Some(json!({"ok": true})),
                error_code: None,
                error_message: None,
            },
        )
    }

    #[test]
    fn steps_advance_in_order_and_the_plan_succeeds_after_the_last() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a", "b"], 8);
        let plan = state.submit(None, vec![step("a"), step("b")]);
        assert_eq!(plan.status, PlanStatus::PendingApproval);
        assert!(
            assignments(&mut rx).is_empty(),
            "nothing runs before approval"
        );

        let plan = state.approve(&plan.id).unwrap();
        assert_eq!(plan.status, PlanStatus::Running);
        let first = assignments(&mut rx);
        assert_eq!(first.len(), 1, "only the first step is queued");
        assert_eq!(
            (
                first[0].task_name.as_str(),
                first[0].attempt,
                first[0].step_index
            ),
            ("a", 1, 0)
        );
        assert_eq!(
            state.plan(&plan.id).unwrap().steps[1].status,
            StepStatus::Waiting
        );

        assert!(matches!(
            finish(&mut state, "w1", &first[0], StepStatus::Succeeded),
            ResultEffect::Applied { .. }
        ));
        let second = assignments(&mut rx);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].task_name, "b");
        assert_eq!(second[0].plan_id, plan.id);
        finish(&mut state, "w1", &second[0], StepStatus::Succeeded);

        let plan = state.plan(&plan.id).unwrap();
        assert_eq!(plan.status, PlanStatus::Succeeded);
        assert!(plan.steps.iter().all(|s| s.status == StepStatus::Succeeded));
        assert_eq!(
            plan.steps[0].worker.as_deref(),
            Some("spiffe://t/worker/w1")
        );
        assert_eq!(plan.steps[0].output, Some(json!({"ok": true})));
    }

    #[test]
    fn a_step_that_does_not_succeed_fails_the_plan_and_skips_the_rest() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a", "b", "c"], 8);
        let plan = state.submit(Some("p".into()), vec![step("a"), step("b"), step("c")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut rx);
        finish(&mut state, "w1", &a[0], StepStatus::Succeeded);
        let b = assignments(&mut rx);
        let effect = finish(&mut state, "w1", &b[0], StepStatus::Rejected);
        assert_eq!(
            effect,
            ResultEffect::Applied {
                plan_id: plan.id.clone(),
                plan_status: PlanStatus::Failed
            }
        );
        assert!(
            assignments(&mut rx).is_empty(),
            "nothing after a failed step"
        );
        let plan = state.plan(&plan.id).unwrap();
        let statuses: Vec<StepStatus> = plan.steps.iter().map(|s| s.status).collect();
        assert_eq!(
            statuses,
            [
                StepStatus::Succeeded,
                StepStatus::Rejected,
                StepStatus::Skipped
            ]
        );
    }

    #[test]
    fn credit_is_never_exceeded_and_grants_release_queued_work() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a"], 2);
        let plans: Vec<String> = (0..5)
            .map(|_| state.submit(None, vec![step("a")]).id)
            .collect();
        for id in &plans {
            state.approve(id).unwrap();
        }
        let sent = assignments(&mut rx);
        assert_eq!(sent.len(), 2, "credit 2 allows two assignments");
        assert_eq!(state.workers()[0].credit, 0);
        assert_eq!(state.workers()[0].in_flight, 2);

        // A result alone does not add credit: only the worker's grant does.
        finish(&mut state, "w1", &sent[0], StepStatus::Succeeded);
        assert!(assignments(&mut rx).is_empty());
        state.grant_credit("w1", 1);
        assert_eq!(assignments(&mut rx).len(), 1);
        state.grant_credit("w1", 10);
        assert_eq!(
            assignments(&mut rx).len(),
            2,
            "only two were left in the queue"
        );
        assert_eq!(state.workers()[0].credit, 8);
    }

    #[test]
    fn tasks_go_only_to_sessions_whose_manifest_lists_them_and_not_while_draining() {
        let mut state = State::new(false);
        let mut other = connect(&mut state, "w1", &["b"], 8);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        assert!(assignments(&mut other).is_empty());
        assert_eq!(state.plan(&plan.id).unwrap().status, PlanStatus::Approved);

        let mut drained = connect(&mut state, "w2", &["a"], 8);
        // Registering dispatched at once; take it back out by checking w2 got it.
        assert_eq!(assignments(&mut drained).len(), 1);

        let plan = state.submit(None, vec![step("a")]);
        state.set_draining("w2");
        state.approve(&plan.id).unwrap();
        assert!(
            assignments(&mut drained).is_empty(),
            "a draining session gets nothing"
        );
    }

    #[test]
    fn skipping_checks_dispatches_to_any_connected_worker() {
        let mut state = State::new(true);
        let mut rx = connect(&mut state, "w1", &[], 1);
        let plan = state.submit(None, vec![step("shell.exec")]);
        state.approve(&plan.id).unwrap();
        assert_eq!(assignments(&mut rx)[0].task_name, "shell.exec");
    }

    #[test]
    fn approving_twice_or_rejecting_a_finished_plan_conflicts_and_unknown_ids_are_not_found() {
        let mut state = State::new(false);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        let err = state.approve(&plan.id).unwrap_err();
        assert!(
            matches!(&err, StateError::Conflict(m) if m.contains("approved")),
            "{err}"
        );
        assert!(matches!(
            state.reject(&plan.id, "no"),
            Err(StateError::Conflict(_))
        ));
        assert_eq!(
            state.approve("nope"),
            Err(StateError::PlanNotFound("nope".into()))
        );

        let other = state.submit(None, vec![step("a"), step("b")]);
        let rejected = state.reject(&other.id, "not today").unwrap();
        assert_eq!(rejected.status, PlanStatus::Rejected);
        assert!(
            rejected
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Skipped)
        );
        assert!(matches!(
            state.approve(&other.id),
            Err(StateError::Conflict(_))
        ));
    }

    #[test]
    fn a_result_from_another_worker_or_a_stale_attempt_is_not_applied() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a"], 1);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut rx).remove(0);
        assert!(matches!(
            finish(&mut state, "intruder", &a, StepStatus::Succeeded),
            ResultEffect::Ignored(_)
        ));
        let mut stale = a.clone();
        stale.attempt = 7;
        assert!(matches!(
            finish(&mut state, "w1", &stale, StepStatus::Succeeded),
            ResultEffect::Ignored(_)
        ));
        assert_eq!(
            state.plan(&plan.id).unwrap().steps[0].status,
            StepStatus::Assigned
        );
        assert!(matches!(
            finish(&mut state, "w1", &a, StepStatus::Succeeded),
            ResultEffect::Applied { .. }
        ));
        assert!(matches!(
            finish(&mut state, "w1", &a, StepStatus::Succeeded),
            ResultEffect::Ignored(_)
        ));
        let mut unknown = a;
        unknown.task_id = "nope".into();
        assert_eq!(
            finish(&mut state, "w1", &unknown, StepStatus::Succeeded),
            ResultEffect::UnknownTask
        );
    }

    #[test]
    fn a_session_that_ends_leaves_its_tasks_assigned_and_its_result_still_counts_later() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a"], 1);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut rx).remove(0);
        let orphaned = state.unregister_session("w1");
        assert_eq!(orphaned, vec![(a.task_id.clone(), 1)]);
        assert_eq!(
            state.plan(&plan.id).unwrap().steps[0].status,
            StepStatus::Assigned
        );
        // Same worker, new stream: it lists the result it is about to
        // re-send, then re-sends it.
        let _rx2 = connect_as(&mut state, "w1b", "w1", "i", &["a"], 1, &[(&a.task_id, 1)]);
        finish(&mut state, "w1", &a, StepStatus::Succeeded);
        assert_eq!(state.plan(&plan.id).unwrap().status, PlanStatus::Succeeded);
    }

    fn cancels(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<pb::Cancel> {
        sent(rx)
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Send { message, .. } => match message.kind {
                    Some(pb::orchestrator_message::Kind::Cancel(c)) => Some(c),
                    _ => None,
                },
                Outgoing::Close(_) => None,
            })
            .collect()
    }

    #[test]
    fn cancelling_a_plan_ends_a_queued_step_at_once_and_queues_nothing_more() {
        let mut state = State::new(false);
        let plan = state.submit(None, vec![step("a"), step("b")]);
        state.approve(&plan.id).unwrap();
        assert_eq!(
            state.plan(&plan.id).unwrap().steps[0].status,
            StepStatus::Queued
        );
        let view = state.cancel(&plan.id, 0, "changed my mind").unwrap();
        assert_eq!(view.status, PlanStatus::Cancelled);
        assert_eq!(view.steps[0].status, StepStatus::Cancelled);
        assert_eq!(
            view.steps[0].error_message.as_deref(),
            Some("changed my mind")
        );
        assert_eq!(view.steps[1].status, StepStatus::Skipped);
        let mut rx = connect(&mut state, "w1", &["a", "b"], 4);
        assert!(
            assignments(&mut rx).is_empty(),
            "nothing of it is dispatched"
        );
        assert!(matches!(
            state.cancel(&plan.id, 0, "again"),
            Err(StateError::Conflict(_))
        ));
    }

    #[test]
    fn cancelling_an_assigned_step_sends_cancel_and_the_plan_ends_cancelled_with_the_workers_outcome()
     {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a", "b"], 4);
        let plan = state.submit(None, vec![step("a"), step("b")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut rx).remove(0);
        let view = state.cancel(&plan.id, 0, "stop").unwrap();
        assert!(view.cancel_requested);
        assert_eq!(view.status, PlanStatus::Running, "it waits for the worker");
        let sent = cancels(&mut rx);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].task.as_ref().unwrap().task_id, a.task_id);
        assert_eq!(sent[0].reason, "stop");
        // The call had already gone out: the worker cannot tell.
        finish(&mut state, "w1", &a, StepStatus::OutcomeUnknown);
        let view = state.plan(&plan.id).unwrap();
        assert_eq!(view.status, PlanStatus::Cancelled);
        assert_eq!(view.steps[0].status, StepStatus::OutcomeUnknown);
        assert_eq!(view.steps[1].status, StepStatus::Skipped);
        assert!(assignments(&mut rx).is_empty());
    }

    #[test]
    fn cancelling_a_later_step_lets_the_earlier_ones_run_and_stops_the_plan_there() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a", "b"], 4);
        let plan = state.submit(None, vec![step("a"), step("b")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut rx).remove(0);
        state.cancel(&plan.id, 1, "not the second").unwrap();
        assert!(cancels(&mut rx).is_empty(), "step 0 keeps running");
        finish(&mut state, "w1", &a, StepStatus::Succeeded);
        let view = state.plan(&plan.id).unwrap();
        assert_eq!(view.status, PlanStatus::Cancelled);
        assert_eq!(view.steps[0].status, StepStatus::Succeeded);
        assert_eq!(view.steps[1].status, StepStatus::Cancelled);
        assert!(assignments(&mut rx).is_empty());
        assert_eq!(
            state.cancel(&plan.id, 5, "x"),
            Err(StateError::Conflict(format!(
                "plan {} is cancelled: a finished plan cannot be cancelled",
                plan.id
            )))
        );
    }

    #[test]
    fn a_cancel_for_a_disconnected_holder_goes_out_when_it_dials_back_still_holding_the_attempt() {
        let mut state = State::new(false);
        let mut old = connect_as(&mut state, "s1", "w", "i", &["a"], 4, &[]);
        let plan = state.submit(None, vec![step("a")]);
        state.approve(&plan.id).unwrap();
        let a = assignments(&mut old).remove(0);
        state
            .mark_accepted("spiffe://t/worker/w", &a.task_id, a.attempt)
            .unwrap();
        state.unregister_session("s1");
        state.cancel(&plan.id, 0, "stop").unwrap();
        let mut new = connect_as(&mut state, "s2", "w", "i", &["a"], 4, &[(&a.task_id, 1)]);
        assert_eq!(cancels(&mut new).len(), 1);
    }

    #[test]
    fn the_assignment_deadline_comes_from_the_step_or_else_the_registry_timeout() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a"], 8);
        let mut timed = step("a");
        timed.timeout_secs = Some(60);
        let before = time::OffsetDateTime::now_utc().unix_timestamp();
        let p1 = state.submit(None, vec![timed.clone()]);
        state.approve(&p1.id).unwrap();
        let a = assignments(&mut rx).remove(0);
        let deadline = a.deadline.expect("the registry timeout sets a deadline");
        assert!(
            (before + 59..=before + 62).contains(&deadline.seconds),
            "{deadline:?}"
        );

        let p2 = state.submit_with_deadlines(
            None,
            vec![timed],
            vec![Some("2999-01-01T00:00:00Z".into())],
        );
        state.approve(&p2.id).unwrap();
        let b = assignments(&mut rx).remove(0);
        assert_eq!(
            b.deadline.unwrap().seconds,
            32_472_144_000,
            "the step's deadline wins"
        );
        assert_eq!(
            state.plan(&p2.id).unwrap().steps[0].attempts[0]
                .deadline
                .as_deref(),
            Some("2999-01-01T00:00:00Z")
        );

        let p3 = state.submit(None, vec![step("a")]);
        state.approve(&p3.id).unwrap();
        assert_eq!(assignments(&mut rx).remove(0).deadline, None);
    }

    #[test]
    fn every_assignment_carries_the_plans_trace_id_with_a_parent_id_of_its_own() {
        let mut state = State::new(false);
        let mut rx = connect(&mut state, "w1", &["a", "b"], 8);
        let given: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        let plan = state.submit_traced(None, vec![step("a"), step("b")], Vec::new(), Some(given));
        assert_eq!(plan.traceparent, Some(given.to_string()));
        state.approve(&plan.id).unwrap();
        let first = assignments(&mut rx).remove(0);
        finish(&mut state, "w1", &first, StepStatus::Succeeded);
        let second = assignments(&mut rx).remove(0);
        let sent: Vec<TraceParent> = [&first, &second]
            .iter()
            .map(|a| a.traceparent.parse().unwrap())
            .collect();
        for t in &sent {
            assert_eq!(t.trace_id(), given.trace_id());
            assert_ne!(t.parent_id(), given.parent_id());
            assert!(t.is_sampled());
        }
        assert_ne!(sent[0].parent_id(), sent[1].parent_id());
        // The plan view shows what each attempt was sent.
        let view = state.plan(&plan.id).unwrap();
        assert_eq!(
            view.steps[1].attempts[0].traceparent.as_deref(),
            Some(second.traceparent.as_str())
        );

        // Without one, the orchestrator starts a trace: sampled, and the
        // same trace id on the plan and its assignment.
        let made = state.submit(None, vec![step("a")]);
        let made_trace: TraceParent = made.traceparent.as_deref().unwrap().parse().unwrap();
        assert!(made_trace.is_sampled());
        assert_ne!(made_trace.trace_id(), given.trace_id());
        state.approve(&made.id).unwrap();
        let a: TraceParent = assignments(&mut rx).remove(0).traceparent.parse().unwrap();
        assert_eq!(a.trace_id(), made_trace.trace_id());
    }

    #[test]
    fn a_step_whose_deadline_passed_before_a_worker_took_it_ends_timed_out_without_running() {
        let mut state = State::new(false);
        let plan = state.submit_with_deadlines(
            None,
            vec![step("a"), step("b")],
            vec![Some("2000-01-01T00:00:00Z".into())],
        );
        state.approve(&plan.id).unwrap();
        let mut rx = connect(&mut state, "w1", &["a", "b"], 8);
        assert!(assignments(&mut rx).is_empty());
        let view = state.plan(&plan.id).unwrap();
        assert_eq!(view.steps[0].status, StepStatus::TimedOut);
        assert_eq!(view.steps[0].error_code.as_deref(), Some("deadline_passed"));
        assert_eq!(view.status, PlanStatus::Failed);
    }

    #[test]
    fn a_newer_session_of_the_same_identity_closes_the_older_stream_with_aborted() {
        let mut state = State::new(false);
        let mut old = connect_as(&mut state, "s1", "w", "i", &["a"], 4, &[]);
        let _new = connect_as(&mut state, "s2", "w", "i", &["a"], 4, &[]);
        let closed: Vec<tonic::Status> = sent(&mut old)
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Close(status) => Some(*status),
                Outgoing::Send { .. } => None,
            })
            .collect();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].code(), tonic::Code::Aborted);
        assert_eq!(closed[0].message(), SUPERSEDED);
    }

    #[test]
    fn an_assignment_waits_for_the_journal_entry_that_records_it() {
        let (journal, _durable) = crate::durable::journal::in_memory();
        let mut state = State::with_journal(false, DEFAULT_LEASE_TIMEOUT, journal);
        let mut rx = connect(&mut state, "w1", &["a"], 4);
        let plan = state.submit(None, vec![step("a")]);
        let before = state.last_change();
        state.approve(&plan.id).unwrap();
        let after = match rx.try_recv().unwrap() {
            Outgoing::Send { after, .. } => after,
            Outgoing::Close(_) => panic!("closed"),
        };
        assert!(after > before, "the assignment depends on a later change");
        assert_eq!(after, state.last_change());
    }

    #[test]
    fn a_restored_state_continues_every_plan_and_settles_assigned_attempts_when_the_worker_dials_back()
     {
        let store = std::sync::Arc::new(crate::durable::MemoryStore::new());
        let records = {
            let (journal, durable, handle) =
                crate::durable::journal::spawn(Box::new(store.clone())).unwrap();
            let mut state = State::with_journal(false, DEFAULT_LEASE_TIMEOUT, journal);
            let mut rx = connect_as(&mut state, "s1", "w", "i", &["a", "b"], 1, &[]);
            let held = state.submit(None, vec![step("a"), step("b")]);
            let lost = state.submit(None, vec![step("a")]);
            let queued = state.submit(None, vec![step("b")]);
            let pending = state.submit(None, vec![step("a")]);
            state.approve(&held.id).unwrap();
            let a = assignments(&mut rx).remove(0);
            state
                .mark_accepted("spiffe://t/worker/w", &a.task_id, a.attempt)
                .unwrap();
            state.grant_credit("s1", 1);
            state.approve(&lost.id).unwrap();
            let l = assignments(&mut rx).remove(0);
            state.approve(&queued.id).unwrap();
            let last = state.last_change();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime
                .block_on(durable.wait(last, Duration::from_secs(10)))
                .unwrap();
            handle.close();
            use crate::durable::PlanStore as _;
            (
                store.load().unwrap(),
                held.id,
                lost.id,
                queued.id,
                pending.id,
                a,
                l,
            )
        };
        let (records, held, lost, queued, pending, a, l) = records;
        // A new process on the same store.
        let mut state = State::new(false);
        state.restore(records);
        assert_eq!(
            state.plan(&pending).unwrap().status,
            PlanStatus::PendingApproval
        );
        assert_eq!(
            state.plan(&queued).unwrap().steps[0].status,
            StepStatus::Queued
        );
        let identities = state.identities();
        assert_eq!(identities.len(), 1, "the holder is leased from the restart");
        assert!(!identities[0].connected);
        assert_eq!(identities[0].held.len(), 2);
        // The worker dials back holding the accepted attempt only.
        let mut rx = connect_as(
            &mut state,
            "s2",
            "w",
            "i",
            &["a", "b"],
            4,
            &[(&a.task_id, 1)],
        );
        let sent = assignments(&mut rx);
        let ids: Vec<(&str, u32)> = sent
            .iter()
            .map(|s| (s.task_id.as_str(), s.attempt))
            .collect();
        assert!(
            ids.contains(&(l.task_id.as_str(), 2)),
            "the never-accepted one again: {ids:?}"
        );
        assert_eq!(ids.len(), 2, "and the queued plan: {ids:?}");
        assert!(
            !ids.contains(&(a.task_id.as_str(), 2)),
            "the held one is not repeated"
        );
        finish(&mut state, "w", &a, StepStatus::Succeeded);
        assert_eq!(
            state.plan(&held).unwrap().steps[1].status,
            StepStatus::Assigned
        );
        assert_eq!(state.plan(&lost).unwrap().steps[0].attempt, 2);
    }
}
