//! Signed approvals on the orchestrator's side: which approver keys it
//! trusts, and the check of every approval handed to it before a plan is
//! approved with them.
//!
//! The orchestrator never signs: the approver's tool (`orchestrator-mock
//! plan approve --key ...`, or an HSM or approver service later) signs
//! each step with a key this process does not hold, and the approve call
//! carries the signatures. The orchestrator checks each one against its
//! own record of the step (task id, plan id, name, version, the SHA-256 of
//! the inputs' canonical JSON) and its trusted public keys, refuses the
//! call unless every step has a valid one, stores them with the plan and
//! sends each with its assignment (inputs then travel as their canonical
//! JSON text, which is what was signed). A worker checks again: this check
//! only keeps a bad approval from being stored and sent.
//!
//! What it does not do: decide which audience a step is for (the approver
//! chooses), or route a step to the worker its audience names.

use std::time::{Duration, SystemTime};

use private_worker_proto::approval::{
    Approval, Audiences, PublicKey, Signer, Subject, Task, Verifier, canonical_inputs, sign,
    unix_seconds,
};

use crate::api::{PlanView, Problem, TaskApproval};
use crate::config::ApprovalsConfig;

/// Longest approval window accepted (a worker's own limit is usually
/// shorter; it refuses longer ones itself).
pub const MAX_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew allowed at both ends of a window.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Signs every step of `plan` for `audience`, valid from `now` for
/// `valid_for`: what the approver's side runs (the CLI's `plan approve
/// --key`), with a key the orchestrator never sees.
///
/// # Errors
/// A step whose inputs cannot be signed exactly, or the signer failed; the
/// message names the step.
pub fn sign_plan(
    signer: &dyn Signer,
    plan: &PlanView,
    audience: &str,
    now: SystemTime,
    valid_for: Duration,
) -> Result<Vec<TaskApproval>, String> {
    let not_before = unix_seconds(now);
    let not_after =
        not_before.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX));
    plan.steps
        .iter()
        .map(|step| {
            let task = Task {
                task_id: &step.task_id,
                plan_id: &plan.id,
                task_name: &step.task,
                task_version: &step.version,
                inputs: &step.inputs,
            };
            sign(signer, task, audience, not_before, not_after)
                .map(|approval| TaskApproval {
                    task_id: step.task_id.clone(),
                    approval,
                })
                .map_err(|e| format!("step {} ({}): {e}", step.index, step.task))
        })
        .collect()
}

/// The approver keys this orchestrator trusts; none means plans are
/// approved without signatures.
#[derive(Debug, Clone, Default)]
pub struct ApprovalKeys {
    verifier: Option<Verifier>,
}

impl ApprovalKeys {
    /// Reads every key file `[approvals]` names.
    ///
    /// # Errors
    /// A message naming the key and file that cannot be read or is not an
    /// Ed25519 public key.
    pub fn load(config: &ApprovalsConfig) -> Result<ApprovalKeys, String> {
        if config.keys.is_empty() {
            return Ok(ApprovalKeys::default());
        }
        let mut keys = Vec::new();
        for (id, path) in &config.keys {
            let pem = std::fs::read(path)
                .map_err(|e| format!("approvals.keys `{id}` ({}): {e}", path.display()))?;
            keys.push(
                PublicKey::from_pem(id, &pem)
                    .map_err(|e| format!("approvals.keys `{id}` ({}): {e}", path.display()))?,
            );
        }
        Ok(ApprovalKeys {
            verifier: Some(Verifier::new(
                keys,
                Audiences::Any,
                MAX_VALIDITY,
                CLOCK_SKEW,
            )),
        })
    }

    /// Whether approving a plan takes signatures.
    pub fn required(&self) -> bool {
        self.verifier.is_some()
    }

    /// Checks `given` for `plan` at `now`: exactly one valid approval per
    /// step. Returns them in step order, or every problem found.
    ///
    /// # Errors
    /// One [`Problem`] per step without a valid approval, per approval for
    /// an unknown or repeated task id; or a single problem when this
    /// orchestrator trusts no approver key but approvals were given.
    pub fn check(
        &self,
        plan: &PlanView,
        given: Vec<TaskApproval>,
        now: SystemTime,
    ) -> Result<Vec<Approval>, Vec<Problem>> {
        let problem = |step: u32, task: &str, message: String| Problem {
            step,
            task: task.to_string(),
            path: String::new(),
            message,
        };
        let Some(verifier) = &self.verifier else {
            return Err(vec![problem(
                0,
                "",
                "this orchestrator trusts no approver key ([approvals] keys), so it cannot check signed approvals".into(),
            )]);
        };
        let mut problems = Vec::new();
        let mut by_step: Vec<Option<Approval>> = vec![None; plan.steps.len()];
        for entry in given {
            let Some(step) = plan.steps.iter().find(|s| s.task_id == entry.task_id) else {
                problems.push(problem(
                    0,
                    "",
                    "an approval names a task id that is not a step of this plan".into(),
                ));
                continue;
            };
            let slot = &mut by_step[step.index as usize];
            if slot.is_some() {
                problems.push(problem(
                    step.index,
                    &step.task,
                    "two approvals for this step".into(),
                ));
                continue;
            }
            let inputs_json = match canonical_inputs(&step.inputs) {
                Ok(text) => text,
                Err(e) => {
                    problems.push(problem(step.index, &step.task, e));
                    continue;
                }
            };
            let subject = Subject {
                task_id: &step.task_id,
                plan_id: &plan.id,
                task_name: &step.task,
                task_version: &step.version,
                inputs_json: &inputs_json,
            };
            match verifier.verify(subject, Some(&entry.approval), now) {
                Ok(_) => *slot = Some(entry.approval),
                Err(refusal) => problems.push(problem(
                    step.index,
                    &step.task,
                    format!("{} ({refusal})", refusal.code()),
                )),
            }
        }
        for step in &plan.steps {
            if by_step[step.index as usize].is_none()
                && !problems
                    .iter()
                    .any(|p| p.step == step.index && !p.task.is_empty())
            {
                problems.push(problem(
                    step.index,
                    &step.task,
                    "no signed approval for this step (sign every step: `orchestrator-mock plan approve <id> --key <approver key>`)".into(),
                ));
            }
        }
        if problems.is_empty() {
            Ok(by_step.into_iter().flatten().collect())
        } else {
            Err(problems)
        }
    }
}
