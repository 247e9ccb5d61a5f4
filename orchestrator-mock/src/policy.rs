//! Approval policies: what happens to a submitted plan according to the
//! registry's `approval` of each of its tasks ([`ApprovalPolicy`]).
//!
//! - Any step of a `deny` task: the plan is refused at submission
//!   ([`denied`]), nothing is stored or queued.
//! - Every step of an `auto` task, within each task's
//!   `auto_limit_per_hour` for the submitting token: the plan is approved
//!   at once by the **auto-approver**, which signs each step with the
//!   orchestrator's own approver key (`[approvals] auto_approver`) exactly
//!   as a person's tool would ([`crate::approvals::sign_plan`]); the
//!   signatures go through the same check as a person's, and a worker
//!   verifies them like any other. The steps show `approved_by:
//!   auto:<key id>`.
//! - Anything else (a `human` step, or an auto step over its limit): the
//!   plan waits for a person, as before.
//!
//! Holding a private approver key in the orchestrator is a deliberate
//! trust decision, bounded on the worker's side: a worker should list the
//! auto-approver's key with `tasks = [...]` (its read-only tasks) in its
//! `[approvals] keys`, so that an approval by that key for any other task
//! is refused there (`approval_key_not_for_task`) even if this process is
//! compromised. The registry accepts `auto` only for `read_only` tasks.
//!
//! What it does not do: remember the hourly counts across a restart (they
//! start at zero), or approve part of a plan (a plan is approved whole).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use private_worker_proto::approval::{KeyFileSigner, Signer};

use crate::api::{ApprovalPolicy, PlanView, Problem, TaskApproval};
use crate::config::{ApprovalsConfig, AutoApproverConfig};
use crate::registry::{Registry, ResolvedStep};

/// The window `auto_limit_per_hour` counts over.
pub const LIMIT_WINDOW: Duration = Duration::from_secs(3600);

/// Who approves a plan that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The auto-approver signs it now.
    Auto,
    /// A person approves it; `reason` says why it is not auto-approved
    /// when one of its tasks is `auto` (a limit was reached).
    Human {
        /// Why an `auto` plan still waits for a person, if it does.
        reason: Option<String>,
    },
}

/// The orchestrator's own approver: a key and where its approvals apply.
struct AutoApprover {
    signer: KeyFileSigner,
    audience: String,
    valid_for: Duration,
}

/// The approval policies in force: the auto-approver, if configured, and
/// the hourly counts of auto-approved calls.
pub struct Policies {
    auto: Option<AutoApprover>,
    /// (token name, task name) -> when each auto-approved call of it was.
    used: Mutex<HashMap<(String, String), VecDeque<Instant>>>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("auto_approver", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// Why the policies could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The auto-approver's private key cannot be read or is not an Ed25519
    /// PKCS#8 key; fix `[approvals] auto_approver.private_key`.
    #[error("approvals.auto_approver.private_key ({path}): {message}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The registry has `approval = "auto"` tasks but no auto-approver is
    /// configured; set `[approvals] auto_approver` or make them `human`.
    #[error(
        "the registry has tasks with approval = \"auto\" ({0}) but [approvals] auto_approver is not set: configure the auto-approver's key, or set those tasks to \"human\""
    )]
    NoAutoApprover(String),
}

impl Policies {
    /// Policies with no auto-approver (every non-denied plan waits for a
    /// person).
    pub fn human_only() -> Policies {
        Policies {
            auto: None,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the auto-approver's key, if configured, and checks that every
    /// `auto` task of `registry` has one.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file or the tasks at fault.
    pub fn load(config: &ApprovalsConfig, registry: &Registry) -> Result<Policies, PolicyError> {
        let auto = config.auto_approver.as_ref().map(read_key).transpose()?;
        if auto.is_none() {
            let auto_tasks: Vec<String> = registry
                .views()
                .into_iter()
                .filter(|t| t.approval == ApprovalPolicy::Auto)
                .map(|t| format!("{} v{}", t.name, t.version))
                .collect();
            if !auto_tasks.is_empty() {
                return Err(PolicyError::NoAutoApprover(auto_tasks.join(", ")));
            }
        }
        if let Some(a) = &auto {
            tracing::warn!(
                key_id = a.signer.key_id(),
                audience = %a.audience,
                "the auto-approver is on: plans of tasks whose policy is \"auto\" are approved and signed by this orchestrator without a person"
            );
        }
        Ok(Policies {
            auto,
            used: Mutex::new(HashMap::new()),
        })
    }

    /// The auto-approver's key id, if one is configured.
    pub fn key_id(&self) -> Option<&str> {
        self.auto.as_ref().map(|a| a.signer.key_id())
    }

    /// Who approves a plan of `steps` (already validated, none denied)
    /// submitted by the token `caller`, at `now`. An `Auto` answer counts
    /// against each task's hourly limit.
    pub fn decide(
        &self,
        registry: &Registry,
        steps: &[ResolvedStep],
        caller: &str,
        now: Instant,
    ) -> Decision {
        let mut limits: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for step in steps {
            let Some(task) = registry.get(&step.task, &step.version) else {
                return Decision::Human { reason: None };
            };
            if task.view.approval != ApprovalPolicy::Auto || self.auto.is_none() {
                return Decision::Human { reason: None };
            }
            let entry = limits
                .entry(step.task.as_str())
                .or_insert((0, task.view.auto_limit_per_hour.unwrap_or(u32::MAX)));
            entry.0 += 1;
        }
        if limits.is_empty() {
            return Decision::Human { reason: None };
        }
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (task, (wanted, limit)) in &limits {
            let key = (caller.to_string(), (*task).to_string());
            let times = used.entry(key).or_default();
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= LIMIT_WINDOW)
            {
                times.pop_front();
            }
            let count = u32::try_from(times.len()).unwrap_or(u32::MAX);
            if count.saturating_add(*wanted) > *limit {
                return Decision::Human {
                    reason: Some(format!(
                        "token `{caller}` reached the auto_limit_per_hour of {task} ({limit} per hour); this plan waits for a person"
                    )),
                };
            }
        }
        for (task, (wanted, _)) in limits {
            let times = used
                .entry((caller.to_string(), task.to_string()))
                .or_default();
            times.extend(std::iter::repeat_n(now, wanted as usize));
        }
        Decision::Auto
    }

    /// The auto-approver's signed approvals for every step of `plan`.
    ///
    /// # Errors
    /// No auto-approver is configured, or a step cannot be signed.
    pub fn sign(&self, plan: &PlanView, now: SystemTime) -> Result<Vec<TaskApproval>, String> {
        let auto = self
            .auto
            .as_ref()
            .ok_or("no auto-approver is configured ([approvals] auto_approver)")?;
        crate::approvals::sign_plan(&auto.signer, plan, &auto.audience, now, auto.valid_for)
    }
}

fn read_key(config: &AutoApproverConfig) -> Result<AutoApprover, PolicyError> {
    let fail = |message: String| PolicyError::Key {
        path: config.private_key.clone(),
        message,
    };
    let pem = std::fs::read(&config.private_key).map_err(|e| fail(e.to_string()))?;
    let signer = KeyFileSigner::from_pem(&config.key_id, &pem).map_err(fail)?;
    Ok(AutoApprover {
        signer,
        audience: config.audience.clone(),
        valid_for: config.valid_for,
    })
}

/// One problem per step of a `deny` task, from `(task, version)` in step
/// order: such a plan is refused at submission (nothing of it is stored)
/// and, when the policy changed after it was stored, at approval.
pub fn denied<'a>(
    registry: &Registry,
    steps: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<Problem> {
    steps
        .into_iter()
        .enumerate()
        .filter(|(_, (task, version))| {
            registry
                .get(task, version)
                .is_some_and(|t| t.view.approval == ApprovalPolicy::Deny)
        })
        .map(|(i, (task, _))| Problem {
            step: u32::try_from(i).unwrap_or(u32::MAX),
            task: task.to_string(),
            path: String::new(),
            message: format!(
                "task {task} is denied by the registry's approval policy (approval = \"deny\"): it never runs, whoever asks"
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 8410's published test key.
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";

    fn registry() -> Registry {
        Registry::from_json_str(
            &json!({"tasks": [
                {"name": "t.read", "version": "1", "input_schema": {"type": "object"},
                 "read_only": true, "approval": "auto", "auto_limit_per_hour": 2},
                {"name": "t.list", "version": "1", "input_schema": {"type": "object"},
                 "read_only": true, "approval": "auto"},
                {"name": "t.write", "version": "1", "input_schema": {"type": "object"}},
                {"name": "t.wipe", "version": "1", "input_schema": {"type": "object"},
                 "approval": "deny"}
            ]})
            .to_string(),
        )
        .unwrap()
    }

    fn steps(tasks: &[&str]) -> Vec<ResolvedStep> {
        tasks
            .iter()
            .map(|t| ResolvedStep {
                task: (*t).into(),
                version: "1".into(),
                inputs: json!({}),
                idempotent: false,
                timeout_secs: None,
            })
            .collect()
    }

    fn policies() -> Policies {
        Policies {
            auto: Some(AutoApprover {
                signer: KeyFileSigner::from_pem("auto-1", KEY.as_bytes()).unwrap(),
                audience: "pool:p".into(),
                valid_for: Duration::from_secs(60),
            }),
            used: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn a_plan_is_auto_approved_only_when_every_step_is_an_auto_task() {
        let (r, p, now) = (registry(), policies(), Instant::now());
        assert_eq!(
            p.decide(&r, &steps(&["t.list"]), "agent", now),
            Decision::Auto
        );
        assert_eq!(
            p.decide(&r, &steps(&["t.list", "t.write"]), "agent", now),
            Decision::Human { reason: None }
        );
        assert_eq!(
            Policies::human_only().decide(&r, &steps(&["t.list"]), "agent", now),
            Decision::Human { reason: None }
        );
    }

    #[test]
    fn the_hourly_limit_counts_per_token_and_frees_up_after_an_hour() {
        let (r, p, start) = (registry(), policies(), Instant::now());
        let read = steps(&["t.read"]);
        assert_eq!(p.decide(&r, &read, "agent-a", start), Decision::Auto);
        assert_eq!(p.decide(&r, &read, "agent-a", start), Decision::Auto);
        let over = p.decide(&r, &read, "agent-a", start);
        assert!(
            matches!(&over, Decision::Human { reason: Some(m) } if m.contains("auto_limit_per_hour of t.read (2 per hour)")),
            "{over:?}"
        );
        // Another token has its own count; a plan of two over one left is refused whole.
        assert_eq!(p.decide(&r, &read, "agent-b", start), Decision::Auto);
        assert!(matches!(
            p.decide(&r, &steps(&["t.read", "t.read"]), "agent-b", start),
            Decision::Human { .. }
        ));
        let later = start + LIMIT_WINDOW;
        assert_eq!(p.decide(&r, &read, "agent-a", later), Decision::Auto);
    }

    #[test]
    fn a_denied_task_is_named_in_every_step_that_uses_it() {
        let steps = steps(&["t.write", "t.wipe", "t.wipe"]);
        let problems = denied(
            &registry(),
            steps.iter().map(|s| (s.task.as_str(), s.version.as_str())),
        );
        assert_eq!(
            problems.iter().map(|p| p.step).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(problems[0].message.contains("approval = \"deny\""));
    }

    #[test]
    fn auto_tasks_without_an_auto_approver_stop_the_start_naming_them() {
        let err = Policies::load(&ApprovalsConfig::default(), &registry()).unwrap_err();
        assert!(err.to_string().contains("t.list v1"), "{err}");
        assert!(err.to_string().contains("t.read v1"), "{err}");
    }
}
