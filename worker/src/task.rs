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

use crate::audit::{AuditError, AuditWriter, Record};
use crate::config::{Config, ExecutorConfig, TaskConfig};
use crate::executor::http::HttpExecutor;
use crate::executor::{ErrorCode, Execution, Outcome, TaskError};
use crate::journal::{ApprovalUse, Journal, JournalError, Summary};
use crate::kill_switch::KillSwitch;
use crate::secrets::Secrets;
use private_worker_proto::approval::{Approval, Refusal, Subject, Verifier};
use private_worker_proto::audit::{system_time_text, truncation_marker};
use private_worker_proto::trace::TraceParent;

/// One assignment, in the worker's terms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The signed approval that came with it, as received.
    #[serde(default)]
    pub approval: Option<Approval>,
    /// The attempt's W3C trace context: `Assignment.traceparent` when it
    /// is valid, else a trace this worker started for the attempt. Its
    /// trace id is on every log line of the task; each HTTP call sends it
    /// with a new parent-id. Kept in the journal, so a recovered attempt
    /// stays in its trace.
    #[serde(default = "TraceParent::new_trace")]
    pub trace: TraceParent,
}

impl Assignment {
    /// The tracing span of everything logged about this attempt: its ids
    /// and task (escaped: they came from the wire) and its trace context,
    /// so every log line of the task carries `trace_id`.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "task",
            task_id = %crate::shown::shown(&self.task_id),
            attempt = self.attempt,
            plan_id = %crate::shown::shown(&self.plan_id),
            task = %crate::shown::shown(&self.task_name),
            trace_id = %self.trace.trace_id(),
            traceparent = %self.trace,
        )
    }
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
    pub audit: Record,
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

/// Compiles an input schema with its `format` assertions enforced (the
/// jsonschema crate only annotates `format` unless told otherwise, so a
/// `format: uuid` would not guard anything). Every schema the worker
/// checks inputs against is compiled here.
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
            let validator = compile_schema(&task.input_schema)
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
                ErrorCode::NotAllowed,
                format!(
                    "task `{}` is not in this worker's local allowlist",
                    assignment.task_name
                ),
            )
        })?;
        if task.config.version != assignment.task_version {
            return Err(TaskError::new(
                ErrorCode::NotAllowed,
                format!(
                    "task `{}` version `{}` is not allowed here (allowed: `{}`)",
                    assignment.task_name, assignment.task_version, task.config.version
                ),
            ));
        }
        let inputs: Value = serde_json::from_str(&assignment.inputs_json).map_err(|e| {
            TaskError::new(
                ErrorCode::InvalidInput,
                format!("inputs are not valid JSON: {e}"),
            )
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
                ErrorCode::InvalidInput,
                format!("inputs break the local schema: {shown}{suffix}"),
            ));
        }
        match inputs {
            Value::Object(map) => Ok((task, map)),
            _ => Err(TaskError::new(
                ErrorCode::InvalidInput,
                "inputs must be a JSON object",
            )),
        }
    }
}

/// Why the worker could not record what it did. Either is fatal: the
/// worker must not run tasks it cannot audit or journal.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The audit record could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The journal could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The latest instant at which a call may still start: the session moves it
/// forward each time it hears from the orchestrator (to the end of the
/// worker's lease, less a margin), so a worker cut off for longer than its
/// lease makes no new call for an attempt the orchestrator may have given
/// to another worker. Closed until the first `Welcome`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StartGate(Arc<std::sync::Mutex<Option<SystemTime>>>);

impl StartGate {
    /// Lets calls start until `until`.
    pub fn open_until(&self, until: SystemTime) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    /// Whether a call may start now.
    pub fn is_open(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| SystemTime::now() <= until)
    }
}

/// How the runner records that this worker owns an attempt and starts it.
pub enum Receipt {
    /// A new attempt: the runner writes `received` (and `started` in the same
    /// commit when the call follows at once, which saves a disk sync per
    /// task), then calls `owned` (the session sends `Accept`).
    New(Box<dyn FnOnce() + Send>),
    /// An attempt the journal already holds (recovered at start): the
    /// runner writes only `started`, before the call.
    Recovered,
}

impl Receipt {
    async fn record(
        self,
        journal: &Journal,
        assignment: &Assignment,
        starting: bool,
        approval: Option<ApprovalUse>,
    ) -> Result<(), JournalError> {
        match self {
            Receipt::New(owned) => {
                journal
                    .received(assignment.clone(), starting, approval)
                    .await?;
                owned();
            }
            Receipt::Recovered if starting => {
                journal
                    .started(&assignment.task_id, assignment.attempt, approval)
                    .await?;
            }
            Receipt::Recovered => {}
        }
        Ok(())
    }
}

/// What a call needs, once everything before it passed.
struct Ready<'a> {
    task: &'a AllowedTask,
    inputs: Map<String, Value>,
    credential: Option<crate::secrets::SecretValue>,
    timeout: Duration,
    approval: Option<ApprovalUse>,
}

/// Most bytes of output kept in a result and its audit record; a larger
/// output is replaced by a marker with its size and SHA-256, so a result
/// always fits the contract's 4 MiB message limit.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Most bytes of inputs copied into an audit record (the same marker
/// replaces larger ones).
pub const MAX_AUDIT_INPUT_BYTES: usize = 1024 * 1024;

/// Runs assignments: check, credential, journal, execute, audit.
#[derive(Clone)]
pub struct Runner {
    allowlist: Arc<Allowlist>,
    secrets: Secrets,
    http: HttpExecutor,
    audit: AuditWriter,
    journal: Journal,
    identity: String,
    kill_switch: Option<KillSwitch>,
    approvals: Option<Arc<Verifier>>,
}

impl Runner {
    /// Builds a runner for the worker `identity`.
    pub fn new(
        allowlist: Arc<Allowlist>,
        secrets: Secrets,
        http: HttpExecutor,
        audit: AuditWriter,
        journal: Journal,
        identity: String,
    ) -> Self {
        Runner {
            allowlist,
            secrets,
            http,
            audit,
            journal,
            identity,
            kill_switch: None,
            approvals: None,
        }
    }

    /// Checks signed approvals with `verifier` for every task whose config
    /// says `require_approval`: before the inputs are parsed, and with the
    /// journal's record of used approvals against replay.
    #[must_use]
    pub fn with_approvals(mut self, verifier: Verifier) -> Self {
        self.approvals = Some(Arc::new(verifier));
        self
    }

    /// Refuses every assignment (`kill_switch`, REJECTED, nothing run)
    /// while `switch`'s file exists; checked first, at each assignment.
    #[must_use]
    pub fn with_kill_switch(mut self, switch: KillSwitch) -> Self {
        self.kill_switch = Some(switch);
        self
    }

    /// The allowlist this runner enforces.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// The journal this runner records starts in.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Whether the local config declares `task_name` idempotent (safe to
    /// run again for the same task id).
    pub fn is_idempotent(&self, task_name: &str) -> bool {
        self.allowlist
            .tasks
            .get(task_name)
            .is_some_and(|t| t.config.idempotent)
    }

    /// Takes one assignment to its end. Nothing runs unless the local checks
    /// pass and `gate` is open; the start is on disk (through `receipt`)
    /// before the call; a cancelled token ends the attempt `Cancelled` when
    /// the call was not yet sent, else `OutcomeUnknown` (`cancelled`).
    ///
    /// # Errors
    /// [`RecordError`] when the journal or the audit record cannot be
    /// written: the result must then not be reported as if audited.
    pub async fn run(
        &self,
        assignment: Assignment,
        cancel: CancellationToken,
        gate: &StartGate,
        receipt: Receipt,
    ) -> Result<TaskReport, RecordError> {
        let received_at = SystemTime::now();
        let ready = match self.prepare(&assignment, &cancel, gate).await {
            Ok(ready) => ready,
            Err(execution) => {
                receipt
                    .record(&self.journal, &assignment, false, None)
                    .await?;
                return self.finish(assignment, received_at, None, execution).await;
            }
        };
        // No call without a durable local trace of it.
        receipt
            .record(&self.journal, &assignment, true, ready.approval.clone())
            .await?;
        if cancel.is_cancelled() {
            // The call below was never polled: nothing was sent.
            let execution = Execution::failed(TaskError::new(
                ErrorCode::CancelledBeforeCall,
                "cancelled while its start was recorded; the call was not sent",
            ));
            return self.finish(assignment, received_at, None, execution).await;
        }
        let started_at = SystemTime::now();
        let execution = tokio::select! {
            biased;
            // The call may already have reached the internal API.
            _ = cancel.cancelled() => Execution::failed(TaskError::new(
                ErrorCode::Cancelled,
                "cancelled while running; the call may have reached the internal API",
            )),
            done = self.call(&assignment, &ready) => done,
        };
        drop(ready);
        self.finish(assignment, received_at, Some(started_at), execution)
            .await
    }

    /// Everything before the call: the local checks, the credential, the
    /// time allowed, the start gate. `Err` is how the attempt ends without
    /// a call.
    async fn prepare(
        &self,
        assignment: &Assignment,
        cancel: &CancellationToken,
        gate: &StartGate,
    ) -> Result<Ready<'_>, Execution> {
        // First: while the operator's switch is on, nothing else happens.
        if let Some(error) = self.kill_switch.as_ref().and_then(KillSwitch::refusal) {
            tracing::warn!(code = %error.code, "assignment refused: the local kill switch is on");
            return Err(Execution::failed(error));
        }
        let approval = self.check_approval(assignment).map_err(|refusal| {
            tracing::warn!(code = refusal.code(), reason = %crate::shown::shown(&refusal.to_string()), "assignment refused: its approval does not hold");
            Execution::failed(TaskError::new(ErrorCode::from(&refusal), refusal.to_string()))
        })?;
        let (task, inputs) = self.allowlist.check(assignment).map_err(|error| {
            tracing::warn!(code = %error.code, reason = %crate::shown::shown(&error.message), "assignment rejected");
            Execution::failed(error)
        })?;
        let credential = match task.config.executor.secret() {
            None => None,
            Some(reference) => {
                let loaded = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    loaded = self.secrets.load(reference) => Some(loaded),
                };
                match loaded {
                    None => {
                        return Err(Execution::failed(TaskError::new(
                            ErrorCode::CancelledBeforeCall,
                            "cancelled while loading the credential; the call was not sent",
                        )));
                    }
                    Some(Ok(value)) => Some(value),
                    Some(Err(e)) => {
                        tracing::warn!(error = %crate::shown::shown(&e), "credential unavailable");
                        return Err(Execution::failed(TaskError::new(
                            ErrorCode::CredentialUnavailable,
                            e.to_string(),
                        )));
                    }
                }
            }
        };
        let timeout =
            effective_timeout(task.config.timeout, assignment.deadline, SystemTime::now())
                .ok_or_else(|| {
                    Execution::failed(TaskError::new(
                        ErrorCode::DeadlinePassed,
                        "the deadline passed before the task started; nothing ran",
                    ))
                })?;
        if !gate.is_open() {
            return Err(Execution::failed(TaskError::new(
                ErrorCode::LeaseLost,
                "no word from the orchestrator for longer than this worker's lease, so the task \
                 may belong to another worker now; the call was not sent",
            )));
        }
        if cancel.is_cancelled() {
            return Err(Execution::failed(TaskError::new(
                ErrorCode::CancelledBeforeCall,
                "cancelled before the start; the call was not sent",
            )));
        }
        Ok(Ready {
            task,
            inputs,
            credential,
            timeout,
            approval,
        })
    }

    /// The signed approval check, when the task's config requires one:
    /// signature, key, audience and window first (nothing of the inputs is
    /// parsed before the signature holds), then replay. `Ok(None)` when the
    /// task requires none (or is not allowed here: the allowlist refuses it
    /// next).
    fn check_approval(&self, assignment: &Assignment) -> Result<Option<ApprovalUse>, Refusal> {
        let required = self
            .allowlist
            .tasks
            .get(&assignment.task_name)
            .is_some_and(|t| t.config.require_approval);
        let Some(verifier) = self.approvals.as_ref().filter(|_| required) else {
            return Ok(None);
        };
        let subject = Subject {
            task_id: &assignment.task_id,
            plan_id: &assignment.plan_id,
            task_name: &assignment.task_name,
            task_version: &assignment.task_version,
            inputs_json: &assignment.inputs_json,
        };
        let verified = verifier.verify(subject, assignment.approval.as_ref(), SystemTime::now())?;
        tracing::info!(key_id = %verified.key_id, "signed approval verified");
        let replayed = || Refusal::Replayed {
            key_id: verified.key_id.clone(),
            nonce: verified.nonce.clone(),
        };
        // A used approval starts its own task id again only to finish what
        // an earlier start left unknown (an idempotent task cut off by a
        // crash, a timeout or a cancel), while the journal remembers the
        // task id; after a definite outcome, or once the task id is
        // forgotten, the approval is spent. An unreadable journal refuses:
        // no replay check, no run.
        match self
            .journal
            .approval_user(&verified.key_id, &verified.nonce)
        {
            Ok(None) => {}
            Ok(Some(user)) if user == assignment.task_id => {
                let unfinished = matches!(
                    self.journal.lookup(&user),
                    Ok(Some(entry)) if entry
                        .summary
                        .as_ref()
                        .is_none_or(|s| s.outcome == Outcome::OutcomeUnknown)
                );
                if !unfinished {
                    return Err(replayed());
                }
            }
            Ok(Some(_)) => return Err(replayed()),
            Err(e) => {
                return Err(Refusal::Malformed(format!(
                    "whether it was used before cannot be checked: {e}"
                )));
            }
        }
        Ok(Some(ApprovalUse {
            // Kept past the window by the largest clock skew a config may
            // set, so a later, larger skew cannot revive a forgotten use.
            forget_after: verified.not_after.saturating_add(
                i64::try_from(crate::config::MAX_APPROVAL_CLOCK_SKEW.as_secs()).unwrap_or(i64::MAX),
            ),
            key_id: verified.key_id,
            nonce: verified.nonce,
            task_id: assignment.task_id.clone(),
        }))
    }

    /// The call itself.
    async fn call(&self, assignment: &Assignment, ready: &Ready<'_>) -> Execution {
        match &ready.task.config.executor {
            ExecutorConfig::Http(http) => {
                self.http
                    .execute(
                        http,
                        &ready.inputs,
                        ready.credential.as_ref(),
                        &assignment.task_id,
                        &assignment.trace,
                        ready.timeout,
                    )
                    .await
            }
            ExecutorConfig::Echo => Execution::succeeded(Value::Object(ready.inputs.clone())),
        }
    }

    /// Ends an assignment without running it (a refusal, or a task that
    /// panicked), still writing an audit record.
    ///
    /// # Errors
    /// [`RecordError`] when the audit record cannot be written.
    pub async fn answer(
        &self,
        assignment: Assignment,
        error: TaskError,
    ) -> Result<TaskReport, RecordError> {
        self.finish(
            assignment,
            SystemTime::now(),
            None,
            Execution::failed(error),
        )
        .await
    }

    /// Ends an attempt whose call was in flight when the worker stopped
    /// (found `started` in the journal at start): its outcome is unknown.
    ///
    /// # Errors
    /// [`RecordError`] when the audit record cannot be written.
    pub async fn interrupted(&self, assignment: Assignment) -> Result<TaskReport, RecordError> {
        let error = TaskError::new(
            ErrorCode::Interrupted,
            "the worker stopped while the call was in flight; its effect is unknown",
        );
        self.answer(assignment, error).await
    }

    /// Answers a later attempt of a task id that already started here and
    /// is not idempotent: nothing runs; the earlier outcome is reported
    /// (`OutcomeUnknown` when the earlier attempt never finished).
    ///
    /// # Errors
    /// [`RecordError`] when the audit record cannot be written.
    pub async fn repeat(
        &self,
        assignment: Assignment,
        earlier_attempt: u32,
        earlier: Option<Summary>,
    ) -> Result<TaskReport, RecordError> {
        let (outcome, output) = match &earlier {
            Some(summary) => (
                summary.outcome,
                summary
                    .output_json
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok()),
            ),
            None => (Outcome::OutcomeUnknown, None),
        };
        let message = format!(
            "this task id already started here as attempt {earlier_attempt} (outcome {outcome:?}); \
             the task is not idempotent in this worker's config, so it was not run again"
        );
        let execution = Execution {
            output,
            error: Some(TaskError::already_started(outcome, message)),
        };
        self.finish(assignment, SystemTime::now(), None, execution)
            .await
    }

    async fn finish(
        &self,
        assignment: Assignment,
        received_at: SystemTime,
        started_at: Option<SystemTime>,
        execution: Execution,
    ) -> Result<TaskReport, RecordError> {
        let outcome = execution.outcome();
        // Every credential loaded so far, raw and encoded, leaves the output
        // and the error here, before the result, the journal and the audit
        // record are made of them.
        let masker = crate::secrets::mask::current();
        let output = execution.output.map(|mut output| {
            masker.mask_value(&mut output);
            bounded_output(output)
        });
        let error = execution.error.map(|mut e| {
            e.message = crate::journal::cut_to_summary(&masker.mask(&e.message));
            e
        });
        let inputs_json = if assignment.inputs_json.len() > MAX_AUDIT_INPUT_BYTES {
            truncation_marker(assignment.inputs_json.as_bytes())
        } else {
            assignment.inputs_json
        };
        let output_json = output.as_ref().map(ToString::to_string).unwrap_or_default();
        let record = Record {
            task_id: assignment.task_id,
            attempt: assignment.attempt,
            plan_id: assignment.plan_id,
            task_name: assignment.task_name,
            task_version: assignment.task_version,
            inputs_json,
            output_json,
            received_at: Some(system_time_text(received_at)),
            started_at: started_at.map(system_time_text),
            finished_at: Some(system_time_text(SystemTime::now())),
            outcome: crate::session::wire::outcome(outcome)
                .as_str_name()
                .to_string(),
            error_code: error
                .as_ref()
                .map(|e| e.code.as_str().to_string())
                .unwrap_or_default(),
            error_message: error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            worker_identity: self.identity.clone(),
            sequence: 0,
            prev_hash: String::new(),
            record_hash: String::new(),
        };
        let audit = self.audit.append(record).await?;
        tracing::info!(
            outcome = ?outcome,
            audit_sequence = audit.sequence,
            "task finished"
        );
        Ok(TaskReport {
            outcome,
            output,
            error,
            audit,
        })
    }
}

/// The output itself when its JSON text fits [`MAX_OUTPUT_BYTES`], else a
/// marker saying it was cut, with its size and SHA-256.
fn bounded_output(output: Value) -> Value {
    let text = output.to_string();
    if text.len() <= MAX_OUTPUT_BYTES {
        output
    } else {
        serde_json::from_str(&truncation_marker(text.as_bytes())).unwrap_or_default()
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
            approval: None,
            trace: TraceParent::new_trace(),
        }
    }

    #[test]
    fn an_unlisted_task_or_version_is_not_allowed() {
        let list = allowlist();
        let err = list
            .check(&assignment("crm.delete_all", "2", "{}"))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotAllowed);
        assert!(err.message.contains("crm.delete_all"));
        let err = list
            .check(&assignment("crm.create_ticket", "1", r#"{"title":"x"}"#))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotAllowed);
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
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(
            err.message.contains("/title") && err.message.contains("/priority"),
            "{}",
            err.message
        );
        for bad in ["not json", "[1]", r#"{"title":"ok","extra":1}"#] {
            let err = list
                .check(&assignment("crm.create_ticket", "2", bad))
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidInput, "{bad}");
        }
        assert!(
            list.check(&assignment("crm.create_ticket", "2", r#"{"title":"ok"}"#))
                .is_ok()
        );
    }

    #[test]
    fn a_format_uuid_in_the_local_schema_refuses_a_non_uuid() {
        let config = Config::from_toml_str(
            r#"
            [orchestrator]
            address = "127.0.0.1:1"
            server_name = "o"
            [tls]
            ca_cert = "ca.pem"
            cert = "w.pem"
            key = "w.key"
            [tasks."crm.get_ticket"]
            version = "1"
            input_schema = { type = "object", required = ["id"], properties = { id = { type = "string", format = "uuid" } } }
            [tasks."crm.get_ticket".http]
            method = "GET"
            url = "http://127.0.0.1:1/t/{id}"
            "#,
            Path::new("/"),
        )
        .unwrap();
        let list = Allowlist::new(&config).unwrap();
        let err = list
            .check(&assignment("crm.get_ticket", "1", r#"{"id":"not-a-uuid"}"#))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("/id"), "{}", err.message);
        assert!(
            list.check(&assignment(
                "crm.get_ticket",
                "1",
                r#"{"id":"6f1c2a52-3f0e-4a53-9d5e-1b2c3d4e5f60"}"#
            ))
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
