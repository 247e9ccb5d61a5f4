//! Deciding whether an assignment may run, running it, and writing its
//! audit record.
//!
//! [`Allowlist`] is the worker's local say over what runs: the task must be
//! in the config with the same version, and its inputs must satisfy the
//! local JSON Schema, whatever the orchestrator checked. [`Runner`] takes
//! one [`Assignment`] through: check, load the credential, execute, audit.
//! Every assignment ends in a [`TaskReport`] with an audit record, including
//! refused ones, and nothing runs before the checks pass.
//!
//! This module knows nothing of the wire: the session converts to and from
//! proto types.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditError, AuditRecord, AuditWriter};
use crate::config::{Config, ExecutorConfig, TaskConfig};
use crate::executor::http::HttpExecutor;
use crate::executor::{Execution, Outcome, TaskError};
use crate::secrets::Secrets;

/// One assignment, in the worker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Task id.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Plan id.
    pub plan_id: String,
    /// Task name.
    pub task_name: String,
    /// Task version.
    pub task_version: String,
    /// Inputs as received.
    pub inputs_json: String,
    /// Latest instant the task may still run, if the orchestrator set one.
    pub deadline: Option<SystemTime>,
}

/// The final report of one attempt.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Output (redacted).
    pub output: Option<Value>,
    /// Error, when not succeeded.
    pub error: Option<TaskError>,
    /// The chained audit record, as written to the local log.
    pub audit: AuditRecord,
}

/// One allowed task, with its compiled schema.
pub struct AllowedTask {
    /// Its config.
    pub config: TaskConfig,
    /// SHA-256 of the canonical input schema, as advertised in the manifest.
    pub schema_sha256: String,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for AllowedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllowedTask")
            .field("name", &self.config.name)
            .field("version", &self.config.version)
            .field("schema_sha256", &self.schema_sha256)
            .finish_non_exhaustive()
    }
}

/// The local allowlist, built once from config.
pub struct Allowlist {
    tasks: BTreeMap<String, AllowedTask>,
}

/// Most schema errors listed in one rejection message.
const MAX_LISTED_SCHEMA_ERRORS: usize = 5;

impl Allowlist {
    /// Compiles every task's schema.
    ///
    /// # Errors
    /// A message naming the task whose schema does not compile (config
    /// validation already checks this, so it only fails for hand-built configs).
    pub fn new(config: &Config) -> Result<Allowlist, String> {
        let mut tasks = BTreeMap::new();
        for (name, task) in &config.tasks {
            let validator = jsonschema::validator_for(&task.input_schema)
                .map_err(|e| format!("tasks.{name}.input_schema: {e}"))?;
            tasks.insert(
                name.clone(),
                AllowedTask {
                    schema_sha256: private_worker_proto::canonical_sha256(&task.input_schema),
                    config: task.clone(),
                    validator,
                },
            );
        }
        Ok(Allowlist { tasks })
    }

    /// Every allowed task, in name order.
    pub fn tasks(&self) -> impl Iterator<Item = &AllowedTask> {
        self.tasks.values()
    }

    /// Checks that `assignment` names an allowed task at its version and
    /// that its inputs satisfy the local schema; returns the task and the
    /// parsed inputs.
    ///
    /// # Errors
    /// `not_allowed` for an unknown task or version, `invalid_input` for
    /// inputs that are not a JSON object or break the schema (with the JSON
    /// path of each problem).
    pub fn check(
        &self,
        assignment: &Assignment,
    ) -> Result<(&AllowedTask, Map<String, Value>), TaskError> {
        let task = self.tasks.get(&assignment.task_name).ok_or_else(|| {
            TaskError::new(
                "not_allowed",
                format!(
                    "task `{}` is not in this worker's local allowlist",
                    assignment.task_name
                ),
            )
        })?;
        if task.config.version != assignment.task_version {
            return Err(TaskError::new(
                "not_allowed",
                format!(
                    "task `{}` version `{}` is not allowed here (allowed: `{}`)",
                    assignment.task_name, assignment.task_version, task.config.version
                ),
            ));
        }
        let inputs: Value = serde_json::from_str(&assignment.inputs_json).map_err(|e| {
            TaskError::new("invalid_input", format!("inputs are not valid JSON: {e}"))
        })?;
        let problems: Vec<String> = task
            .validator
            .iter_errors(&inputs)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("at `{}`: {e}", if path.is_empty() { "/" } else { &path })
            })
            .collect();
        if !problems.is_empty() {
            let shown = problems
                .iter()
                .take(MAX_LISTED_SCHEMA_ERRORS)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            let more = problems.len().saturating_sub(MAX_LISTED_SCHEMA_ERRORS);
            let suffix = if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            };
            return Err(TaskError::new(
                "invalid_input",
                format!("inputs break the local schema: {shown}{suffix}"),
            ));
        }
        match inputs {
            Value::Object(map) => Ok((task, map)),
            _ => Err(TaskError::new(
                "invalid_input",
                "inputs must be a JSON object",
            )),
        }
    }
}

/// Runs assignments: check, credential, execute, audit.
#[derive(Clone)]
pub struct Runner {
    allowlist: Arc<Allowlist>,
    secrets: Secrets,
    http: HttpExecutor,
    audit: AuditWriter,
    identity: String,
}

/// RFC 3339 text of an instant, UTC.
pub fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Runner {
    /// Builds a runner for the worker `identity`.
    pub fn new(
        allowlist: Arc<Allowlist>,
        secrets: Secrets,
        http: HttpExecutor,
        audit: AuditWriter,
        identity: String,
    ) -> Self {
        Runner {
            allowlist,
            secrets,
            http,
            audit,
            identity,
        }
    }

    /// The allowlist this runner enforces.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// Takes one assignment to its end. Nothing runs unless the local checks
    /// pass; a cancelled token ends the call with `Cancelled`.
    ///
    /// # Errors
    /// [`AuditError`] when the audit record cannot be written: the result
    /// must then not be reported as if audited.
    pub async fn run(
        &self,
        assignment: Assignment,
        cancel: CancellationToken,
    ) -> Result<TaskReport, AuditError> {
        let received_at = SystemTime::now();
        let (task, inputs) = match self.allowlist.check(&assignment) {
            Ok(checked) => checked,
            Err(error) => {
                tracing::warn!(code = error.code, reason = %error.message, "assignment rejected");
                return self
                    .finish(assignment, received_at, None, rejected(error))
                    .await;
            }
        };
        let credential = match task.config.executor.secret() {
            None => None,
            Some(reference) => match self.secrets.load(reference).await {
                Ok(value) => Some(value),
                Err(e) => {
                    tracing::warn!(error = %e, "credential unavailable");
                    let error = TaskError::new("credential_unavailable", e.to_string());
                    let execution = Execution {
                        outcome: Outcome::Failed,
                        output: None,
                        error: Some(error),
                    };
                    return self.finish(assignment, received_at, None, execution).await;
                }
            },
        };
        let started_at = SystemTime::now();
        let timeout = effective_timeout(task.config.timeout, assignment.deadline, started_at);
        let execution = match timeout {
            None => Execution {
                outcome: Outcome::TimedOut,
                output: None,
                error: Some(TaskError::new(
                    "deadline_passed",
                    "the deadline passed before the task started",
                )),
            },
            Some(timeout) => {
                let execute = async {
                    match &task.config.executor {
                        ExecutorConfig::Http(http) => {
                            self.http
                                .execute(http, &inputs, credential.as_ref(), timeout)
                                .await
                        }
                        ExecutorConfig::Echo => Execution {
                            outcome: Outcome::Succeeded,
                            output: Some(Value::Object(inputs.clone())),
                            error: None,
                        },
                    }
                };
                tokio::select! {
                    biased;
                    // The call may already have reached the internal API.
                    _ = cancel.cancelled() => Execution {
                        outcome: Outcome::OutcomeUnknown,
                        output: None,
                        error: Some(TaskError::new("cancelled", "cancelled while running; the call may have reached the internal API")),
                    },
                    done = execute => done,
                }
            }
        };
        drop(credential);
        self.finish(assignment, received_at, Some(started_at), execution)
            .await
    }

    /// Refuses an assignment without looking at it (for example because it
    /// exceeds the credit), still writing an audit record.
    ///
    /// # Errors
    /// [`AuditError`] when the audit record cannot be written.
    pub async fn refuse(
        &self,
        assignment: Assignment,
        error: TaskError,
    ) -> Result<TaskReport, AuditError> {
        self.finish(assignment, SystemTime::now(), None, rejected(error))
            .await
    }

    async fn finish(
        &self,
        assignment: Assignment,
        received_at: SystemTime,
        started_at: Option<SystemTime>,
        execution: Execution,
    ) -> Result<TaskReport, AuditError> {
        let record = AuditRecord {
            task_id: assignment.task_id,
            attempt: assignment.attempt,
            plan_id: assignment.plan_id,
            task_name: assignment.task_name,
            task_version: assignment.task_version,
            inputs_json: assignment.inputs_json,
            output: execution.output.clone(),
            received_at: rfc3339(received_at),
            started_at: started_at.map(rfc3339),
            finished_at: rfc3339(SystemTime::now()),
            outcome: execution.outcome,
            error_code: execution.error.as_ref().map(|e| e.code.to_string()),
            error_message: execution.error.as_ref().map(|e| e.message.clone()),
            worker_identity: self.identity.clone(),
            sequence: 0,
            prev_hash: String::new(),
            record_hash: String::new(),
        };
        let audit = self.audit.append(record).await?;
        tracing::info!(
            outcome = ?execution.outcome,
            audit_sequence = audit.sequence,
            "task finished"
        );
        Ok(TaskReport {
            outcome: execution.outcome,
            output: execution.output,
            error: execution.error,
            audit,
        })
    }
}

fn rejected(error: TaskError) -> Execution {
    Execution {
        outcome: Outcome::Rejected,
        output: None,
        error: Some(error),
    }
}

/// The time a task may take: its configured timeout, shortened by the
/// assignment's deadline; `None` when the deadline has already passed.
fn effective_timeout(
    configured: Duration,
    deadline: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    match deadline {
        None => Some(configured),
        Some(deadline) => match deadline.duration_since(now) {
            Ok(left) if !left.is_zero() => Some(left.min(configured)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn allowlist() -> Allowlist {
        let config = Config::from_toml_str(
            r#"
            [orchestrator]
            address = "127.0.0.1:1"
            server_name = "o"
            [tls]
            ca_cert = "ca.pem"
            cert = "w.pem"
            key = "w.key"
            [tasks."crm.create_ticket"]
            version = "2"
            input_schema = { type = "object", required = ["title"], additionalProperties = false, properties = { title = { type = "string", maxLength = 10 }, priority = { type = "integer", minimum = 1 } } }
            [tasks."crm.create_ticket".http]
            method = "POST"
            url = "http://127.0.0.1:1/t"
            "#,
            Path::new("/"),
        )
        .unwrap();
        Allowlist::new(&config).unwrap()
    }

    fn assignment(name: &str, version: &str, inputs: &str) -> Assignment {
        Assignment {
            task_id: "t".into(),
            attempt: 1,
            plan_id: "p".into(),
            task_name: name.into(),
            task_version: version.into(),
            inputs_json: inputs.into(),
            deadline: None,
        }
    }

    #[test]
    fn an_unlisted_task_or_version_is_not_allowed() {
        let list = allowlist();
        let err = list
            .check(&assignment("crm.delete_all", "2", "{}"))
            .unwrap_err();
        assert_eq!(err.code, "not_allowed");
        assert!(err.message.contains("crm.delete_all"));
        let err = list
            .check(&assignment("crm.create_ticket", "1", r#"{"title":"x"}"#))
            .unwrap_err();
        assert_eq!(err.code, "not_allowed");
    }

    #[test]
    fn inputs_breaking_the_local_schema_are_refused_with_their_paths() {
        let list = allowlist();
        let err = list
            .check(&assignment(
                "crm.create_ticket",
                "2",
                r#"{"title":"far too long a title","priority":0}"#,
            ))
            .unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert!(
            err.message.contains("/title") && err.message.contains("/priority"),
            "{}",
            err.message
        );
        for bad in ["not json", "[1]", r#"{"title":"ok","extra":1}"#] {
            let err = list
                .check(&assignment("crm.create_ticket", "2", bad))
                .unwrap_err();
            assert_eq!(err.code, "invalid_input", "{bad}");
        }
        assert!(
            list.check(&assignment("crm.create_ticket", "2", r#"{"title":"ok"}"#))
                .is_ok()
        );
    }

    #[test]
    fn a_deadline_shortens_the_timeout_and_a_past_one_prevents_the_run() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let ten = Duration::from_secs(10);
        assert_eq!(effective_timeout(ten, None, now), Some(ten));
        assert_eq!(
            effective_timeout(ten, Some(now + Duration::from_secs(3)), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(effective_timeout(ten, Some(now), now), None);
        assert_eq!(effective_timeout(ten, Some(now - ten), now), None);
    }
}
