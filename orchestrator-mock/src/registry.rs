//! The task registry: which tasks (name, version, input schema) the
//! orchestrator may queue, and validation of plans and worker manifests
//! against it.
//!
//! The registry is a JSON file loaded once at start:
//!
//! ```json
//! { "tasks": [ { "name": "crm.create_ticket", "version": "1",
//!                "description": "...", "input_schema": { "type": "object" },
//!                "idempotent": false, "timeout_secs": 30 } ] }
//! ```
//!
//! `timeout_secs` (optional, > 0) sets `Assignment.deadline` to the
//! assignment time plus that many seconds when the plan step has no
//! deadline of its own.
//!
//! What a task does and who approves it (all optional):
//!
//! ```json
//! { "read_only": true, "destructive": false,
//!   "approval": "auto", "auto_limit_per_hour": 60 }
//! ```
//!
//! `read_only` (default false) and `destructive` (default: true unless
//! `read_only`) describe the task to agents (the MCP tool annotations
//! `readOnlyHint`, `destructiveHint`; `idempotent` gives
//! `idempotentHint`). `approval` is the task's approval policy
//! ([`ApprovalPolicy`]): `"human"` (default), `"auto"` (only for a
//! `read_only` task; signed by the orchestrator's auto-approver, see
//! [`crate::policy`]) or `"deny"` (refused at submission).
//! `auto_limit_per_hour` (only with `"auto"`, > 0) caps the auto-approved
//! calls per submitting token; calls over it wait for a person.
//!
//! Every schema is compiled at load, so a bad schema stops the start with
//! an error naming the task. This module does not decide what a worker
//! runs: the worker checks its own allowlist again (defense in depth).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::api::{ApprovalPolicy, PlanRequest, Problem, StepRequest, TaskView};

/// Version used for a step naming an unregistered task without a version
/// when checks are skipped (`insecure_skip_checks`).
pub const UNCHECKED_DEFAULT_VERSION: &str = "1";

/// Why a registry could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read; check the `registry` path.
    #[error("cannot read registry {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a registry document; fix the JSON.
    #[error("registry {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// Tasks are malformed (bad schema, duplicates, empty names); fix each.
    #[error("registry has invalid tasks:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    tasks: Vec<TaskFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    input_schema: Value,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    destructive: Option<bool>,
    #[serde(default)]
    approval: ApprovalPolicy,
    #[serde(default)]
    auto_limit_per_hour: Option<u32>,
}

/// One registered task with its compiled input schema.
pub struct RegisteredTask {
    /// The task as the admin API shows it (includes the schema hash).
    pub view: TaskView,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for RegisteredTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTask")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

/// A plan step after resolution against the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedStep {
    /// Task name.
    pub task: String,
    /// Resolved version.
    pub version: String,
    /// Inputs as submitted.
    pub inputs: Value,
    /// Registry's idempotency flag (false when unregistered).
    pub idempotent: bool,
    /// Registry's task timeout in seconds, if any.
    pub timeout_secs: Option<u64>,
}

/// Why one manifest entry will not receive work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestCheck {
    /// Task name.
    pub name: String,
    /// Task version.
    pub version: String,
    /// `None` when dispatchable, else the reason.
    pub problem: Option<String>,
}

/// The loaded registry, keyed by (name, version).
#[derive(Debug, Default)]
pub struct Registry {
    tasks: BTreeMap<(String, String), RegisteredTask>,
}

impl Registry {
    /// Loads and validates a registry file.
    ///
    /// # Errors
    /// [`RegistryError`]: unreadable file, malformed JSON, or invalid tasks
    /// (each named).
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            RegistryError::Parse { message, .. } => RegistryError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates registry JSON text.
    ///
    /// # Errors
    /// [`RegistryError::Parse`] (with an empty path) or
    /// [`RegistryError::Invalid`] listing every bad task.
    pub fn from_json_str(text: &str) -> Result<Registry, RegistryError> {
        let file: RegistryFile = serde_json::from_str(text).map_err(|e| RegistryError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut tasks = BTreeMap::new();
        for (i, t) in file.tasks.into_iter().enumerate() {
            let label = format!("tasks[{i}] ({} version {})", t.name, t.version);
            if t.name.trim().is_empty() || t.version.trim().is_empty() {
                problems.push(format!("{label}: name and version must not be empty"));
                continue;
            }
            if !t.input_schema.is_object() {
                problems.push(format!("{label}: input_schema must be a JSON object"));
                continue;
            }
            let validator = match compile_schema(&t.input_schema) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!(
                        "{label}: input_schema is not a valid JSON Schema: {e} (at {})",
                        e.instance_path()
                    ));
                    continue;
                }
            };
            if t.timeout_secs == Some(0) {
                problems.push(format!("{label}: timeout_secs must be greater than zero"));
                continue;
            }
            if let Some(problem) = check_policy(&t) {
                problems.push(format!("{label}: {problem}"));
                continue;
            }
            let key = (t.name.clone(), t.version.clone());
            if tasks.contains_key(&key) {
                problems.push(format!("{label}: registered twice"));
                continue;
            }
            let view = TaskView {
                input_schema_sha256: private_worker_proto::canonical_sha256(&t.input_schema),
                name: t.name,
                version: t.version,
                description: t.description,
                input_schema: t.input_schema,
                idempotent: t.idempotent,
                timeout_secs: t.timeout_secs,
                read_only: t.read_only,
                destructive: !t.read_only && t.destructive.unwrap_or(true),
                approval: t.approval,
                auto_limit_per_hour: t.auto_limit_per_hour,
            };
            tasks.insert(key, RegisteredTask { view, validator });
        }
        if problems.is_empty() {
            Ok(Registry { tasks })
        } else {
            Err(RegistryError::Invalid(problems))
        }
    }

    /// Number of registered (name, version) pairs.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Every registered task, sorted by name then version.
    pub fn views(&self) -> Vec<TaskView> {
        self.tasks.values().map(|t| t.view.clone()).collect()
    }

    /// The task registered as (name, version).
    pub fn get(&self, name: &str, version: &str) -> Option<&RegisteredTask> {
        self.tasks.get(&(name.to_string(), version.to_string()))
    }

    fn versions_of(&self, name: &str) -> Vec<&str> {
        self.tasks
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tasks.keys().map(|(n, _)| n.as_str()).collect();
        names.dedup();
        names
    }

    /// Validates a plan: every step's task and version registered, every
    /// step's inputs valid against the task's schema. Returns the resolved
    /// steps, or every problem found (one per schema error, with the JSON
    /// pointer of the offending input).
    ///
    /// # Errors
    /// The list of [`Problem`]s, never empty.
    pub fn validate_plan(&self, plan: &PlanRequest) -> Result<Vec<ResolvedStep>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut steps = Vec::new();
        if plan.steps.is_empty() {
            problems.push(Problem {
                step: 0,
                task: String::new(),
                path: String::new(),
                message: "a plan needs at least one step".into(),
            });
        }
        for (i, step) in plan.steps.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let problem = |path: String, message: String| Problem {
                step: index,
                task: step.task.clone(),
                path,
                message,
            };
            let task = match self.resolve(step) {
                Ok(t) => t,
                Err(message) => {
                    problems.push(problem(String::new(), message));
                    continue;
                }
            };
            let before = problems.len();
            for error in task.validator.iter_errors(&step.inputs) {
                problems.push(problem(
                    error.instance_path().to_string(),
                    error.to_string(),
                ));
            }
            if problems.len() == before {
                steps.push(ResolvedStep {
                    task: step.task.clone(),
                    version: task.view.version.clone(),
                    inputs: step.inputs.clone(),
                    idempotent: task.view.idempotent,
                    timeout_secs: task.view.timeout_secs,
                });
            }
        }
        if problems.is_empty() {
            Ok(steps)
        } else {
            Err(problems)
        }
    }

    /// Resolves a plan without validating it (`insecure_skip_checks`):
    /// registered tasks get their version and idempotency flag, anything
    /// else passes through as submitted.
    ///
    /// # Errors
    /// A single problem when the plan has no steps.
    pub fn resolve_unchecked(&self, plan: &PlanRequest) -> Result<Vec<ResolvedStep>, Vec<Problem>> {
        if plan.steps.is_empty() {
            return Err(vec![Problem {
                step: 0,
                task: String::new(),
                path: String::new(),
                message: "a plan needs at least one step".into(),
            }]);
        }
        Ok(plan
            .steps
            .iter()
            .map(|step| {
                let registered = self.resolve(step).ok();
                ResolvedStep {
                    task: step.task.clone(),
                    version: step
                        .version
                        .clone()
                        .or_else(|| registered.map(|t| t.view.version.clone()))
                        .unwrap_or_else(|| UNCHECKED_DEFAULT_VERSION.to_string()),
                    inputs: step.inputs.clone(),
                    idempotent: registered.is_some_and(|t| t.view.idempotent),
                    timeout_secs: registered.and_then(|t| t.view.timeout_secs),
                }
            })
            .collect())
    }

    fn resolve(&self, step: &StepRequest) -> Result<&RegisteredTask, String> {
        let versions = self.versions_of(&step.task);
        if versions.is_empty() {
            return Err(format!(
                "unknown task {:?}; registered tasks: {}",
                step.task,
                self.names().join(", ")
            ));
        }
        match &step.version {
            Some(v) => self.get(&step.task, v).ok_or_else(|| {
                format!(
                    "task {:?} has no version {v:?}; registered versions: {}",
                    step.task,
                    versions.join(", ")
                )
            }),
            None if versions.len() == 1 => self
                .get(&step.task, versions[0])
                .ok_or_else(|| format!("task {:?} vanished", step.task)),
            None => Err(format!(
                "task {:?} has several versions ({}); name one",
                step.task,
                versions.join(", ")
            )),
        }
    }

    /// Checks one manifest entry: the task must be registered in that
    /// version with the same input schema hash.
    pub fn check_manifest_entry(
        &self,
        name: &str,
        version: &str,
        schema_sha256: &str,
    ) -> Option<String> {
        let Some(task) = self.get(name, version) else {
            let versions = self.versions_of(name);
            return Some(if versions.is_empty() {
                format!("task {name:?} is not in the orchestrator's registry")
            } else {
                format!(
                    "version {version:?} of {name:?} is not registered (registered: {})",
                    versions.join(", ")
                )
            });
        };
        if !task
            .view
            .input_schema_sha256
            .eq_ignore_ascii_case(schema_sha256)
        {
            return Some(format!(
                "input schema differs from the registry's (worker sha256 {schema_sha256:?}, registry {})",
                task.view.input_schema_sha256
            ));
        }
        None
    }
}

/// What is wrong with a task's description and approval policy, if
/// anything: `auto` only for a read-only task, a limit only with `auto`
/// and above zero, a read-only task cannot be destructive.
fn check_policy(t: &TaskFile) -> Option<String> {
    if t.approval == ApprovalPolicy::Auto && !t.read_only {
        return Some(
            "approval = \"auto\" needs read_only = true: only a task that changes nothing may run without a person"
                .into(),
        );
    }
    match t.auto_limit_per_hour {
        Some(_) if t.approval != ApprovalPolicy::Auto => {
            return Some(format!(
                "auto_limit_per_hour applies only with approval = \"auto\" (this task is \"{}\")",
                t.approval.as_str()
            ));
        }
        Some(0) => {
            return Some(
                "auto_limit_per_hour must be greater than zero (use approval = \"human\" instead)"
                    .into(),
            );
        }
        _ => {}
    }
    if t.read_only && t.destructive == Some(true) {
        return Some("a read_only task cannot be destructive".into());
    }
    None
}

/// Compiles a task's input schema with its `format` assertions enforced
/// (the jsonschema crate only annotates `format` unless told otherwise),
/// as the worker does for its local allowlist: a `format: uuid` guards on
/// both sides.
///
/// # Errors
/// The schema is not a valid JSON Schema.
pub fn compile_schema(
    schema: &Value,
) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_format_uuid_in_the_registry_schema_refuses_a_non_uuid() {
        let registry = Registry::from_json_str(
            &json!({"tasks": [
                {"name": "crm.get_ticket", "version": "1",
                 "input_schema": {"type": "object", "required": ["id"],
                    "properties": {"id": {"type": "string", "format": "uuid"}}}}
            ]})
            .to_string(),
        )
        .unwrap();
        let problems = registry
            .validate_plan(&plan(vec![(
                "crm.get_ticket",
                None,
                json!({"id": "not-a-uuid"}),
            )]))
            .unwrap_err();
        assert!(problems.iter().any(|p| p.path == "/id"), "{problems:?}");
        assert!(
            registry
                .validate_plan(&plan(vec![(
                    "crm.get_ticket",
                    None,
                    json!({"id": "6f1c2a52-3f0e-4a53-9d5e-1b2c3d4e5f60"})
                )]))
                .is_ok()
        );
    }

    #[test]
    fn approval_policies_parse_with_human_as_the_default_and_bad_combinations_are_named() {
        let registry = Registry::from_json_str(
            &json!({"tasks": [
                {"name": "a.write", "version": "1", "input_schema": {"type": "object"}},
                {"name": "a.read", "version": "1", "input_schema": {"type": "object"},
                 "read_only": true, "approval": "auto", "auto_limit_per_hour": 5},
                {"name": "a.wipe", "version": "1", "input_schema": {"type": "object"},
                 "approval": "deny", "destructive": true}
            ]})
            .to_string(),
        )
        .unwrap();
        let write = &registry.get("a.write", "1").unwrap().view;
        assert_eq!(write.approval, ApprovalPolicy::Human);
        assert!(!write.read_only && write.destructive, "{write:?}");
        let read = &registry.get("a.read", "1").unwrap().view;
        assert_eq!(read.approval, ApprovalPolicy::Auto);
        assert_eq!(read.auto_limit_per_hour, Some(5));
        assert!(read.read_only && !read.destructive, "{read:?}");
        assert_eq!(
            registry.get("a.wipe", "1").unwrap().view.approval,
            ApprovalPolicy::Deny
        );

        let bad = Registry::from_json_str(
            &json!({"tasks": [
                {"name": "b.auto_write", "version": "1", "input_schema": {"type": "object"},
                 "approval": "auto"},
                {"name": "b.limit_human", "version": "1", "input_schema": {"type": "object"},
                 "auto_limit_per_hour": 3},
                {"name": "b.zero", "version": "1", "input_schema": {"type": "object"},
                 "read_only": true, "approval": "auto", "auto_limit_per_hour": 0},
                {"name": "b.both", "version": "1", "input_schema": {"type": "object"},
                 "read_only": true, "destructive": true}
            ]})
            .to_string(),
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "b.auto_write version 1): approval = \"auto\" needs read_only = true",
            "b.limit_human version 1): auto_limit_per_hour applies only with approval = \"auto\"",
            "b.zero version 1): auto_limit_per_hour must be greater than zero",
            "b.both version 1): a read_only task cannot be destructive",
        ] {
            assert!(bad.contains(expected), "{expected:?} not in {bad}");
        }
        let unknown = Registry::from_json_str(
            &json!({"tasks": [{"name": "c", "version": "1", "input_schema": {"type": "object"},
                "approval": "sometimes"}]})
            .to_string(),
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("sometimes"), "{unknown}");
    }

    pub(crate) fn sample() -> Registry {
        Registry::from_json_str(
            &json!({"tasks": [
                {"name": "crm.create_ticket", "version": "1", "description": "open a ticket",
                 "input_schema": {"type": "object", "required": ["title"], "additionalProperties": false,
                    "properties": {"title": {"type": "string", "minLength": 1},
                                   "priority": {"type": "integer", "minimum": 1, "maximum": 5}}}},
                {"name": "crm.get_ticket", "version": "1", "input_schema": {"type": "object"}, "idempotent": true},
                {"name": "crm.get_ticket", "version": "2", "input_schema": {"type": "object"}, "idempotent": true}
            ]})
            .to_string(),
        )
        .unwrap()
    }

    fn plan(steps: Vec<(&str, Option<&str>, Value)>) -> PlanRequest {
        PlanRequest {
            name: None,
            steps: steps
                .into_iter()
                .map(|(task, version, inputs)| StepRequest {
                    task: task.into(),
                    version: version.map(Into::into),
                    inputs,
                })
                .collect(),
        }
    }

    #[test]
    fn plan_validation_errors_name_the_task_and_the_json_path() {
        let problems = sample()
            .validate_plan(&plan(vec![
                ("crm.create_ticket", None, json!({"title": "ok"})),
                (
                    "crm.create_ticket",
                    None,
                    json!({"title": "", "priority": 9}),
                ),
            ]))
            .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths.len(), 2, "{problems:?}");
        assert!(
            paths.contains(&"/title") && paths.contains(&"/priority"),
            "{paths:?}"
        );
        assert!(
            problems
                .iter()
                .all(|p| p.step == 1 && p.task == "crm.create_ticket")
        );
        assert_eq!(
            problems[0].to_string(),
            format!(
                "step 1 (crm.create_ticket) at {}: {}",
                problems[0].path, problems[0].message
            )
        );
    }

    #[test]
    fn an_unknown_task_is_refused_naming_it_and_listing_the_registered_ones() {
        let problems = sample()
            .validate_plan(&plan(vec![("crm.launch_missiles", None, json!({}))]))
            .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "");
        assert!(problems[0].message.contains("crm.launch_missiles"));
        assert!(
            problems[0]
                .message
                .contains("crm.create_ticket, crm.get_ticket")
        );
    }

    #[test]
    fn a_version_must_be_named_when_several_are_registered_and_must_exist() {
        let r = sample();
        let p = r
            .validate_plan(&plan(vec![("crm.get_ticket", None, json!({}))]))
            .unwrap_err();
        assert!(p[0].message.contains("several versions"), "{p:?}");
        let p = r
            .validate_plan(&plan(vec![("crm.get_ticket", Some("7"), json!({}))]))
            .unwrap_err();
        assert!(p[0].message.contains("no version \"7\""), "{p:?}");
        let ok = r
            .validate_plan(&plan(vec![("crm.get_ticket", Some("2"), json!({}))]))
            .unwrap();
        assert_eq!(ok[0].version, "2");
        assert!(ok[0].idempotent);
    }

    #[test]
    fn an_empty_plan_is_refused() {
        assert!(sample().validate_plan(&plan(vec![])).is_err());
    }

    #[test]
    fn a_bad_schema_is_refused_at_load_naming_the_task() {
        let err = Registry::from_json_str(
            r#"{"tasks":[{"name":"x.y","version":"1","input_schema":{"type":"no-such-type"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("x.y"), "{err}");
    }

    #[test]
    fn manifest_entries_are_checked_for_name_version_and_schema_hash() {
        let r = sample();
        let hash = r
            .get("crm.get_ticket", "1")
            .unwrap()
            .view
            .input_schema_sha256
            .clone();
        assert_eq!(
            hash,
            private_worker_proto::canonical_sha256(&json!({"type": "object"}))
        );
        assert_eq!(r.check_manifest_entry("crm.get_ticket", "1", &hash), None);
        assert!(
            r.check_manifest_entry("crm.get_ticket", "1", "00")
                .unwrap()
                .contains("differs")
        );
        assert!(
            r.check_manifest_entry("crm.get_ticket", "9", &hash)
                .unwrap()
                .contains("not registered")
        );
        assert!(
            r.check_manifest_entry("nope", "1", &hash)
                .unwrap()
                .contains("not in")
        );
    }

    #[test]
    fn unchecked_resolution_passes_unknown_tasks_through() {
        let steps = sample()
            .resolve_unchecked(&plan(vec![("shell.exec", None, json!({"cmd": "x"}))]))
            .unwrap();
        assert_eq!(steps[0].version, UNCHECKED_DEFAULT_VERSION);
        assert!(!steps[0].idempotent);
    }
}
