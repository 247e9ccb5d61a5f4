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
//! chooses), or know which workers accept a pool audience (a step signed
//! for one worker identity is dispatched only to that identity, by
//! [`crate::state`]; a step signed for a pool goes to any worker listing
//! the task, and one outside the pool refuses it, `approval_wrong_audience`).

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

/// The digest of what an approver reviews and signs in `plan`: lower-case
/// hex SHA-256 of the canonical JSON of its id and, per step, its task id,
/// task name, version and inputs. The approver's tool shows it with the
/// statements and signs only when it equals the digest the approver
/// confirmed (`--expect-digest`), so an orchestrator cannot swap a plan's
/// content between the approver's review and the signing.
pub fn review_digest(plan: &PlanView) -> String {
    let steps: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "task_id": s.task_id,
                "task": s.task,
                "version": s.version,
                "inputs": s.inputs,
            })
        })
        .collect();
    private_worker_proto::canonical_sha256(&serde_json::json!({
        "plan_id": plan.id,
        "steps": steps,
    }))
}

/// What the approver's tool prints before it signs: one line per step.
pub fn review_lines(plan: &PlanView) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| {
            format!(
                "step {} {} v{} task {} inputs {}",
                s.index,
                s.task,
                s.version,
                s.task_id,
                canonical_inputs(&s.inputs).unwrap_or_else(|e| format!("(cannot be signed: {e})"))
            )
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PlanStatus, StepStatus, StepView};
    use private_worker_proto::approval::KeyFileSigner;

    /// RFC 8410's published test key pair.
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    fn keys() -> ApprovalKeys {
        ApprovalKeys {
            verifier: Some(Verifier::new(
                [PublicKey::from_pem("k", PUBLIC.as_bytes()).unwrap()],
                Audiences::Any,
                MAX_VALIDITY,
                CLOCK_SKEW,
            )),
        }
    }

    fn plan(id: &str, tasks: &[&str]) -> PlanView {
        PlanView {
            id: id.into(),
            name: None,
            status: PlanStatus::PendingApproval,
            created_at: String::new(),
            cancel_requested: false,
            traceparent: None,
            submitted_by: None,
            steps: tasks
                .iter()
                .enumerate()
                .map(|(i, t)| StepView {
                    index: u32::try_from(i).unwrap(),
                    task_id: format!("{id}-{i}"),
                    task: (*t).into(),
                    version: "1".into(),
                    inputs: serde_json::json!({"n": i}),
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
                })
                .collect(),
        }
    }

    fn signed(plan: &PlanView) -> Vec<TaskApproval> {
        let signer = KeyFileSigner::from_pem("k", KEY.as_bytes()).unwrap();
        sign_plan(
            &signer,
            plan,
            "pool:p",
            SystemTime::now(),
            Duration::from_secs(600),
        )
        .unwrap()
    }

    fn problems(result: Result<Vec<Approval>, Vec<Problem>>) -> Vec<String> {
        result
            .unwrap_err()
            .into_iter()
            .map(|p| format!("{}:{}", p.step, p.message))
            .collect()
    }

    #[test]
    fn every_step_needs_exactly_one_valid_approval_of_its_own_plan() {
        let p = plan("p1", &["a", "b"]);
        let now = SystemTime::now();
        assert_eq!(keys().check(&p, signed(&p), now).unwrap().len(), 2);

        let mut partial = signed(&p);
        partial.pop();
        let found = problems(keys().check(&p, partial, now));
        assert!(
            found.len() == 1 && found[0].starts_with("1:no signed approval"),
            "{found:?}"
        );

        let mut doubled = signed(&p);
        doubled.push(doubled[0].clone());
        let found = problems(keys().check(&p, doubled, now));
        assert!(
            found.iter().any(|f| f.starts_with("0:two approvals")),
            "{found:?}"
        );

        // The other plan's approvals, renamed to this plan's task ids: the
        // plan id and inputs in the signature do not match.
        let other = plan("p2", &["a", "b"]);
        let mut moved = signed(&other);
        for (m, s) in moved.iter_mut().zip(&p.steps) {
            m.task_id = s.task_id.clone();
        }
        let found = problems(keys().check(&p, moved, now));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|f| f.contains("approval_invalid")),
            "{found:?}"
        );

        let mut unknown = signed(&p);
        unknown[0].task_id = "not-a-step".into();
        let found = problems(keys().check(&p, unknown, now));
        assert!(
            found.iter().any(|f| f.contains("not a step of this plan")),
            "{found:?}"
        );
    }

    #[test]
    fn without_trusted_keys_no_approval_can_be_checked_or_stored() {
        let p = plan("p1", &["a"]);
        let found = problems(ApprovalKeys::default().check(&p, signed(&p), SystemTime::now()));
        assert!(found[0].contains("trusts no approver key"), "{found:?}");
    }

    #[test]
    fn the_review_digest_changes_with_any_signed_field() {
        let p = plan("p1", &["a"]);
        let digest = review_digest(&p);
        let mut changed = p.clone();
        changed.steps[0].inputs = serde_json::json!({"n": 1});
        assert_ne!(review_digest(&changed), digest);
        let mut changed = p.clone();
        changed.steps[0].task = "b".into();
        assert_ne!(review_digest(&changed), digest);
        let mut changed = p.clone();
        changed.id = "p2".into();
        assert_ne!(review_digest(&changed), digest);
    }
}
