//! Plans, steps, the queue and the connected sessions: the orchestrator's
//! in-memory state machine, behind one mutex.
//!
//! Every mutation (approve, a result, a new session, more credit, ...)
//! ends with [`State::dispatch`], which hands queued steps to sessions that
//! may take them and pushes the `Assignment`s onto each session's outbound
//! channel, all under the same lock: there is no window in which two
//! dispatchers could spend the same credit.
//!
//! Rules enforced here:
//! - steps of a plan run in order: step i+1 is queued only after step i
//!   succeeded; any other outcome fails the plan and skips the rest;
//! - an assignment is sent only to a session with credit > 0, that is not
//!   draining, and whose manifest lists the task's (name, version) with a
//!   matching schema hash (unless `insecure_skip_checks`).
//!
//! What it does not do: persist plans (they are lost on restart), lease or
//! reassign tasks, or talk to the network. The gateway owns the streams and
//! the store owns the files.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use private_worker_proto::v1 as pb;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::{ManifestEntryView, PlanStatus, PlanView, StepStatus, StepView, WorkerView};
use crate::registry::ResolvedStep;

/// The channel a session's stream task reads its outgoing messages from.
pub type Outbound = mpsc::UnboundedSender<pb::OrchestratorMessage>;

/// Why an admin operation on the state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// No plan has this id (HTTP 404); check the id.
    #[error("no plan with id {0:?}")]
    PlanNotFound(String),
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
    /// No task with this id is known (e.g. the orchestrator restarted).
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
    /// Where assignments for this session go.
    pub tx: Outbound,
}

struct Session {
    info: NewSession,
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

struct Step {
    view: StepView,
    idempotent: bool,
    /// The session the latest attempt was sent on.
    session_id: Option<String>,
    /// Whether the worker sent `Accept` for the latest attempt.
    accepted: bool,
}

impl Step {
    /// Marks the step queued (with the time) and appends it to `queue`.
    fn enqueue(&mut self, queue: &mut VecDeque<String>) {
        self.view.status = StepStatus::Queued;
        self.view.queued_at = Some(now_rfc3339());
        queue.push_back(self.view.task_id.clone());
    }
}

struct Plan {
    id: String,
    name: Option<String>,
    status: PlanStatus,
    created_at: String,
    steps: Vec<Step>,
}

impl Plan {
    /// The plan failed at step `index`: every later step is skipped.
    fn fail_after(&mut self, index: usize) {
        self.status = PlanStatus::Failed;
        for later in self.steps.iter_mut().skip(index + 1) {
            later.view.status = StepStatus::Skipped;
        }
    }

    fn view(&self) -> PlanView {
        PlanView {
            id: self.id.clone(),
            name: self.name.clone(),
            status: self.status,
            created_at: self.created_at.clone(),
            steps: self.steps.iter().map(|s| s.view.clone()).collect(),
        }
    }
}

/// The whole in-memory state. Callers hold it in a mutex
/// ([`SharedState`]) and keep each lock short: no `.await` while locked.
pub struct State {
    skip_checks: bool,
    plans: HashMap<String, Plan>,
    /// task_id -> (plan id, step index)
    tasks: HashMap<String, (String, usize)>,
    /// Queued task ids, oldest first.
    queue: VecDeque<String>,
    sessions: BTreeMap<String, Session>,
}

/// The state as the gateway and the admin API share it.
pub type SharedState = std::sync::Arc<std::sync::Mutex<State>>;

impl State {
    /// An empty state. `skip_checks` dispatches to any connected worker,
    /// ignoring manifests (`insecure_skip_checks`).
    pub fn new(skip_checks: bool) -> State {
        State {
            skip_checks,
            plans: HashMap::new(),
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            sessions: BTreeMap::new(),
        }
    }

    /// Stores a validated plan as `pending_approval`.
    pub fn submit(&mut self, name: Option<String>, steps: Vec<ResolvedStep>) -> PlanView {
        let id = new_id();
        let steps: Vec<Step> = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| Step {
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
                },
                idempotent: s.idempotent,
                session_id: None,
                accepted: false,
            })
            .collect();
        for (i, step) in steps.iter().enumerate() {
            self.tasks
                .insert(step.view.task_id.clone(), (id.clone(), i));
        }
        let plan = Plan {
            id: id.clone(),
            name,
            status: PlanStatus::PendingApproval,
            created_at: now_rfc3339(),
            steps,
        };
        let view = plan.view();
        tracing::info!(plan_id = %id, steps = view.steps.len(), "plan submitted; waiting for approval");
        self.plans.insert(id, plan);
        view
    }

    /// The plan with this id.
    ///
    /// # Errors
    /// [`StateError::PlanNotFound`].
    pub fn plan(&self, id: &str) -> Result<PlanView, StateError> {
        self.plans
            .get(id)
            .map(Plan::view)
            .ok_or_else(|| StateError::PlanNotFound(id.to_string()))
    }

    /// Approves a pending plan: its first step is queued and dispatched.
    ///
    /// # Errors
    /// [`StateError::PlanNotFound`], or [`StateError::Conflict`] when the
    /// plan is not pending approval.
    pub fn approve(&mut self, id: &str) -> Result<PlanView, StateError> {
        let plan = Self::pending_plan(&mut self.plans, id, "approved")?;
        plan.status = PlanStatus::Approved;
        tracing::info!(plan_id = %id, "plan approved");
        if let Some(first) = plan.steps.first_mut() {
            first.enqueue(&mut self.queue);
        }
        self.dispatch();
        self.plan(id)
    }

    /// The plan `id`, which must be pending approval to be `decision`
    /// ("approved" or "rejected").
    fn pending_plan<'a>(
        plans: &'a mut HashMap<String, Plan>,
        id: &str,
        decision: &str,
    ) -> Result<&'a mut Plan, StateError> {
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
        Ok(plan.view())
    }

    /// The plan a task belongs to.
    pub fn plan_of(&self, task_id: &str) -> Option<String> {
        self.tasks.get(task_id).map(|(p, _)| p.clone())
    }

    /// Registers a session after its `Hello`, reconciles the attempts
    /// earlier sessions of the same worker left assigned, and dispatches.
    ///
    /// An older session of the same worker identity is stale once a new one
    /// arrives (one process per identity): it is dropped first. Then every attempt assigned to this identity on a session that
    /// no longer exists is settled against what the worker says it holds:
    /// held attempts move to the new session; attempts the worker never
    /// accepted never arrived and are queued again (a new attempt);
    /// accepted attempts it no longer holds have an unknown outcome and are
    /// queued again only when the task is idempotent.
    pub fn register_session(&mut self, session: NewSession) {
        let id = session.session_id.clone();
        // One live process per worker identity (each worker has its own
        // certificate): a new session makes any older one of the same
        // identity stale, whether the same process dialled again or a
        // restarted one did before the old stream timed out.
        let stale: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.info.identity == session.identity)
            .map(|(id, _)| id.clone())
            .collect();
        for old in stale {
            tracing::info!(session_id = %old, "dropping a stale session of the same worker");
            self.sessions.remove(&old);
        }
        let mut adopted = BTreeSet::new();
        let mut failed_plans = Vec::new();
        for (plan_id, plan) in &mut self.plans {
            for (index, step) in plan.steps.iter_mut().enumerate() {
                let orphaned = step.view.status == StepStatus::Assigned
                    && step.view.worker.as_deref() == Some(session.identity.as_str())
                    && step
                        .session_id
                        .as_ref()
                        .is_none_or(|s| !self.sessions.contains_key(s));
                if !orphaned {
                    continue;
                }
                let key = (step.view.task_id.clone(), step.view.attempt);
                if session.held.contains(&key) {
                    step.session_id = Some(id.clone());
                    adopted.insert(key);
                } else if !step.accepted || step.idempotent {
                    tracing::warn!(plan_id = %plan_id, task_id = %key.0, attempt = key.1, accepted = step.accepted, "the worker does not hold this attempt; queueing it again");
                    step.enqueue(&mut self.queue);
                } else {
                    tracing::warn!(plan_id = %plan_id, task_id = %key.0, attempt = key.1, "the worker lost an accepted attempt; its outcome is unknown");
                    step.view.status = StepStatus::OutcomeUnknown;
                    step.view.finished_at = Some(now_rfc3339());
                    step.view.error_code = Some("outcome_unknown".into());
                    step.view.error_message = Some(
                        "the worker restarted while running this attempt; it is not retried because the task is not idempotent"
                            .into(),
                    );
                    failed_plans.push((plan_id.clone(), index));
                }
            }
        }
        for (plan_id, index) in failed_plans {
            if let Some(plan) = self.plans.get_mut(&plan_id) {
                plan.fail_after(index);
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
        self.dispatch();
    }

    /// Notes that the worker accepted an attempt (it holds it from now on).
    pub fn mark_accepted(&mut self, task_id: &str, attempt: u32) {
        if let Some((plan_id, index)) = self.tasks.get(task_id).cloned()
            && let Some(step) = self
                .plans
                .get_mut(&plan_id)
                .and_then(|p| p.steps.get_mut(index))
            && step.view.attempt == attempt
        {
            step.accepted = true;
        }
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
    pub fn unregister_session(&mut self, session_id: &str) -> Vec<(String, u32)> {
        // An attempt whose session ends without a result stays `assigned`
        // until the same worker dials again: `register_session` then settles
        // it against the worker's `Hello`. Roadmap: leases, so that an
        // attempt held by a worker that never comes back is reassigned
        // (only when idempotent or provably not started) after it lapses.
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
        step.view.status = status;
        step.view.finished_at = Some(now_rfc3339());
        step.view.output = output;
        step.view.error_code = error_code;
        step.view.error_message = error_message;
        if status == StepStatus::Succeeded {
            match plan.steps.get_mut(index + 1) {
                Some(next) => next.enqueue(&mut self.queue),
                None => {
                    plan.status = PlanStatus::Succeeded;
                    tracing::info!(plan_id = %plan_id, "plan succeeded");
                }
            }
        } else {
            plan.fail_after(index);
            tracing::warn!(plan_id = %plan_id, task_id, step = index, ?status, "plan failed");
        }
        let plan_status = plan.status;
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
            let (task, version) = (step.view.task.clone(), step.view.version.clone());
            // The least busy eligible session; ties go to the oldest id.
            let chosen = self
                .sessions
                .iter()
                .filter(|(_, s)| {
                    !s.draining && s.credit > 0 && s.can_run(&task, &version, self.skip_checks)
                })
                .min_by_key(|(_, s)| s.in_flight.len())
                .map(|(id, _)| id.clone());
            let Some(session_id) = chosen else {
                still_queued.push_back(task_id);
                continue;
            };
            if self.assign(&plan_id, index, &session_id) {
                sent += 1;
            } else {
                still_queued.push_back(task_id);
            }
        }
        self.queue = still_queued;
        sent
    }

    fn assign(&mut self, plan_id: &str, index: usize, session_id: &str) -> bool {
        let (Some(plan), Some(session)) = (
            self.plans.get_mut(plan_id),
            self.sessions.get_mut(session_id),
        ) else {
            return false;
        };
        let Some(step) = plan.steps.get_mut(index) else {
            return false;
        };
        let attempt = step.view.attempt + 1;
        let inputs_json = serde_json::to_string(&step.view.inputs).unwrap_or_else(|_| "{}".into());
        let message = pb::OrchestratorMessage {
            kind: Some(pb::orchestrator_message::Kind::Assignment(pb::Assignment {
                task_id: step.view.task_id.clone(),
                attempt,
                plan_id: plan_id.to_string(),
                step_index: step.view.index,
                task_name: step.view.task.clone(),
                task_version: step.view.version.clone(),
                inputs_json,
                deadline: None,
                approval: None,
                idempotent: step.idempotent,
            })),
        };
        if session.info.tx.send(message).is_err() {
            // The session's stream task is gone; it unregisters itself.
            tracing::debug!(
                session_id,
                "session closed before dispatch; keeping the task queued"
            );
            return false;
        }
        step.view.attempt = attempt;
        step.view.status = StepStatus::Assigned;
        step.view.worker = Some(session.info.identity.clone());
        step.session_id = Some(session_id.to_string());
        step.accepted = false;
        session.credit -= 1;
        session
            .in_flight
            .insert((step.view.task_id.clone(), attempt));
        if plan.status == PlanStatus::Approved {
            plan.status = PlanStatus::Running;
        }
        tracing::info!(
            plan_id,
            task_id = %step.view.task_id,
            attempt,
            task = %step.view.task,
            session_id,
            worker = %session.info.identity,
            credit_left = session.credit,
            "task assigned"
        );
        true
    }

    /// Every connected session.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.sessions
            .values()
            .map(|s| WorkerView {
                identity: s.info.identity.clone(),
                session_id: s.info.session_id.clone(),
                remote_addr: s.info.remote_addr.to_string(),
                worker_version: s.info.worker_version.clone(),
                instance_id: s.info.instance_id.clone(),
                manifest: s.info.manifest.clone(),
                credit: s.credit,
                in_flight: u32::try_from(s.in_flight.len()).unwrap_or(u32::MAX),
                draining: s.draining,
                connected_since: s.connected_since.clone(),
            })
            .collect()
    }
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

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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
        }
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
    ) -> mpsc::UnboundedReceiver<pb::OrchestratorMessage> {
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
    ) -> mpsc::UnboundedReceiver<pb::OrchestratorMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        state.register_session(NewSession {
            session_id: id.into(),
            identity: format!("spiffe://t/worker/{worker}"),
            remote_addr: "127.0.0.1:1".parse().unwrap(),
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
        state.mark_accepted(&a.task_id, a.attempt);
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
        state.mark_accepted(&a.task_id, a.attempt);
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
        state.mark_accepted(&a.task_id, a.attempt);
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

    fn assignments(
        rx: &mut mpsc::UnboundedReceiver<pb::OrchestratorMessage>,
    ) -> Vec<pb::Assignment> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(pb::orchestrator_message::Kind::Assignment(a)) = m.kind {
                out.push(a);
            }
        }
        out
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
}
