//! The scenario file format: TOML, one scenario per file, parsed and
//! validated in one place.
//!
//! Parsing is serde over the `toml` crate with `deny_unknown_fields`
//! everywhere, wrapped in `serde_path_to_error` so that a bad value is
//! reported with its file, line (from the TOML span) and field path, e.g.
//! `happy.toml:12: steps[2].expect.steps[0].outcome: unknown variant
//! "SUCEEDED", expected one of ...`. A second pass checks what serde cannot
//! (a plan used before it is submitted, JSON pointers, fields that exclude
//! each other) and reports every problem of a file, each with its line.
//! `SCENARIOS.md` beside `Cargo.toml` is the user's reference.
//!
//! What it does not do: run anything or talk to the mock (see
//! [`super::run`]); it only says what a file asks for.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use crate::api::{PlanStatus, StepStatus};

/// How long a scenario may run when its file does not say.
pub const DEFAULT_SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an `expect` waits for its plan when it has no `within`.
pub const DEFAULT_EXPECT_WAIT: Duration = Duration::from_secs(60);
/// How long a hostile assignment's answer is waited for by default.
pub const DEFAULT_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long a drained worker may take to send `Draining` and close.
pub const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(30);

/// One scenario, as read from its file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file it came from.
    pub file: PathBuf,
    /// `name`, or the file name without `.toml`.
    pub name: String,
    /// `description`, if any.
    pub description: Option<String>,
    /// `timeout`: the whole scenario must end within it.
    pub timeout: Duration,
    /// The steps, in order.
    pub steps: Vec<StepAt>,
}

impl Scenario {
    /// Whether some step needs the mock's fault-injection hooks.
    pub fn needs_fault_injection(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s.step,
                Step::CutStream(_)
                    | Step::Drain(_)
                    | Step::HostileAssignment(_)
                    | Step::RestartOrchestrator(_)
            )
        })
    }
}

/// A step with the line it starts on.
#[derive(Debug, Clone)]
pub struct StepAt {
    /// 1-based line of the step in its file.
    pub line: usize,
    /// The step.
    pub step: Step,
}

/// Why a scenario file cannot be used. Fix the file at the line given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field path, e.g. `steps[2].expect.status`; empty for the file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A duration written like `"5s"`, `"1m 30s"` or `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        // The check runs inside the TOML deserializer's call (a visitor),
        // so that an error carries the value's line.
        d.deserialize_str(TextVisitor("a duration like \"5s\"", |text: &str| {
            humantime_serde::re::humantime::parse_duration(text)
                .map(Dur)
                .map_err(|e| format!("{text:?} is not a duration like \"5s\" or \"250ms\" ({e})"))
        }))
    }
}

/// A visitor of a string that `parse` turns into a `T`.
struct TextVisitor<F>(&'static str, F);

impl<T, F: FnOnce(&str) -> Result<T, String>> serde::de::Visitor<'_> for TextVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        (self.1)(text).map_err(E::custom)
    }
}

/// When an assignment must not start: `"30s"` (from the moment it is
/// sent or submitted) or an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deadline {
    /// That long after the step runs.
    In(Duration),
    /// This instant, RFC 3339.
    At(String),
}

impl<'de> Deserialize<'de> for Deadline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Deadline, D::Error> {
        d.deserialize_str(TextVisitor(
            "a duration like \"30s\" or an RFC 3339 time",
            |text: &str| {
                if let Ok(d) = humantime_serde::re::humantime::parse_duration(text) {
                    return Ok(Deadline::In(d));
                }
                if crate::state::parse_rfc3339(text).is_some() {
                    return Ok(Deadline::At(text.to_string()));
                }
                Err(format!(
                    "{text:?} is neither a duration like \"30s\" nor an RFC 3339 time"
                ))
            },
        ))
    }
}

impl Deadline {
    /// The deadline as RFC 3339, counting a relative one from now.
    pub fn resolve(&self) -> String {
        match self {
            Deadline::At(text) => text.clone(),
            Deadline::In(d) => {
                let at = time::OffsetDateTime::now_utc() + *d;
                at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            }
        }
    }
}

/// How an attempt ended, by its name in the contract (`worker.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// `SUCCEEDED`.
    Succeeded,
    /// `FAILED`.
    Failed,
    /// `REJECTED`.
    Rejected,
    /// `TIMED_OUT`.
    TimedOut,
    /// `CANCELLED`.
    Cancelled,
    /// `OUTCOME_UNKNOWN`.
    OutcomeUnknown,
}

impl Outcome {
    /// The contract's name, e.g. `SUCCEEDED`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::Failed => "FAILED",
            Outcome::Rejected => "REJECTED",
            Outcome::TimedOut => "TIMED_OUT",
            Outcome::Cancelled => "CANCELLED",
            Outcome::OutcomeUnknown => "OUTCOME_UNKNOWN",
        }
    }

    /// The step status the admin API shows for this outcome.
    pub fn step_status(self) -> StepStatus {
        match self {
            Outcome::Succeeded => StepStatus::Succeeded,
            Outcome::Failed => StepStatus::Failed,
            Outcome::Rejected => StepStatus::Rejected,
            Outcome::TimedOut => StepStatus::TimedOut,
            Outcome::Cancelled => StepStatus::Cancelled,
            Outcome::OutcomeUnknown => StepStatus::OutcomeUnknown,
        }
    }
}

/// The audit verdict an `expect` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditVerdict {
    /// Every record of the plan has verdict `ok`, and every finished step
    /// that a worker took has at least one record.
    Ok,
    /// At least one record of the plan is flagged.
    Flagged,
}

/// One thing a scenario does. In the file each step is a table with
/// exactly one key, the action (`[[steps]]` then `submit.plan = ...`, or
/// `approve = "ticket"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Submit a plan (and approve it when `approve = true`).
    Submit(Submit),
    /// Approve a submitted plan: `approve = "<plan>"`.
    Approve(Spanned<String>),
    /// Reject a submitted plan: `reject = "<plan>"`.
    Reject(Spanned<String>),
    /// Cancel a plan, or a plan from one step on.
    Cancel(Cancel),
    /// Wait for a plan and check it.
    Expect(Expect),
    /// The mock ends the worker's stream(s); the worker must dial again.
    CutStream(CutStream),
    /// Stop the mock (SIGKILL or SIGTERM) and start it again on the same
    /// ports and data directory.
    RestartOrchestrator(Restart),
    /// The mock sends a raw assignment straight to the worker.
    HostileAssignment(Box<Hostile>),
    /// Check what the worker answered to an earlier hostile assignment.
    ExpectAnswer(ExpectAnswer),
    /// The mock sends `Drain`; the worker must send `Draining` and close.
    Drain(DrainStep),
    /// Do nothing for a while: `wait = "2s"`.
    Wait(Dur),
    /// Wait until a worker is connected (again).
    WaitWorker(WaitWorker),
}

impl Step {
    /// The action's name as written in files.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Submit(_) => "submit",
            Step::Approve(_) => "approve",
            Step::Reject(_) => "reject",
            Step::Cancel(_) => "cancel",
            Step::Expect(_) => "expect",
            Step::CutStream(_) => "cut_stream",
            Step::RestartOrchestrator(_) => "restart_orchestrator",
            Step::HostileAssignment(_) => "hostile_assignment",
            Step::ExpectAnswer(_) => "expect_answer",
            Step::Drain(_) => "drain",
            Step::Wait(_) => "wait",
            Step::WaitWorker(_) => "wait_worker",
        }
    }

    /// A short label for reports, e.g. `expect "ticket"`.
    pub fn label(&self) -> String {
        let named = |what: &str| format!("{} {what:?}", self.action());
        match self {
            Step::Submit(s) => named(s.plan.get_ref()),
            Step::Approve(p) | Step::Reject(p) => named(p.get_ref()),
            Step::Cancel(c) => named(c.plan.get_ref()),
            Step::Expect(e) => named(e.plan.get_ref()),
            Step::HostileAssignment(h) => match &h.name {
                Some(n) => named(n.get_ref()),
                None => self.action().to_string(),
            },
            Step::ExpectAnswer(e) => named(e.assignment.get_ref()),
            Step::Wait(d) => format!("wait {:?}", d.0),
            _ => self.action().to_string(),
        }
    }
}

/// `submit`: a plan under a local name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// The local name later steps use for this plan.
    pub plan: Spanned<String>,
    /// The plan's steps.
    pub tasks: Vec<TaskStep>,
    /// Approve it right after submitting.
    #[serde(default)]
    pub approve: bool,
}

/// One plan step of a `submit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStep {
    /// Registered task name.
    pub task: String,
    /// Registered version (the only one registered when absent).
    #[serde(default)]
    pub version: Option<String>,
    /// The inputs (a TOML table, sent as a JSON object).
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// The step's deadline: `"30s"` from submission, or RFC 3339.
    #[serde(default)]
    pub deadline: Option<Deadline>,
}

/// `cancel`: a plan, or the plan from step `step` on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// The local plan name.
    pub plan: Spanned<String>,
    /// Cancel from this step index on (the whole plan when absent).
    #[serde(default)]
    pub step: Option<usize>,
    /// `Cancel.reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `expect`: wait for a plan and check it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The local plan name.
    pub plan: Spanned<String>,
    /// The plan status to wait for (a finished plan when absent).
    #[serde(default)]
    pub status: Option<PlanStatus>,
    /// The plan must reach it within this long after its approval (after
    /// this step starts, when the scenario did not approve it).
    #[serde(default)]
    pub within: Option<Dur>,
    /// The audit verdict of every record of the plan.
    #[serde(default)]
    pub audit: Option<AuditVerdict>,
    /// Per plan step, in order (or with `index`).
    #[serde(default)]
    pub steps: Vec<Spanned<StepExpect>>,
}

/// What one plan step must show.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepExpect {
    /// The plan step (its position in `steps` when absent).
    #[serde(default)]
    pub index: Option<usize>,
    /// The worker's outcome, by contract name (`SUCCEEDED`, ...).
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// The admin API's step status (`succeeded`, `skipped`, ...).
    #[serde(default)]
    pub status: Option<StepStatus>,
    /// The error code (`""` for none).
    #[serde(default)]
    pub error_code: Option<String>,
    /// Output fields: JSON pointer to expected JSON value.
    #[serde(default)]
    pub output: Option<Spanned<BTreeMap<String, Value>>>,
    /// How many attempts the step took.
    #[serde(default)]
    pub attempts: Option<usize>,
    /// Whether the worker's audit record says the task started (`false`:
    /// nothing ran).
    #[serde(default)]
    pub started: Option<bool>,
}

/// `cut_stream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutStream {
    /// Only this worker identity (every connected one when absent).
    #[serde(default)]
    pub identity: Option<String>,
    /// Wait until the worker dialled again (default true).
    #[serde(default = "yes")]
    pub reconnect: bool,
}

/// How `restart_orchestrator` stops the mock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopSignal {
    /// SIGKILL: a crash.
    #[default]
    Kill,
    /// SIGTERM: a graceful shutdown (the mock sends `Drain` first).
    Term,
}

/// `restart_orchestrator`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// `kill` (default) or `term`.
    #[serde(default)]
    pub signal: StopSignal,
    /// Wait until the worker dialled again (default true).
    #[serde(default = "yes")]
    pub reconnect: bool,
}

/// A plan step whose task id a hostile assignment reuses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRef {
    /// The local plan name.
    pub plan: Spanned<String>,
    /// The step index.
    #[serde(default)]
    pub step: usize,
}

/// `hostile_assignment`: a raw `Assignment` the mock sends as is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hostile {
    /// A local name for `expect_answer`.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// The worker identity to send it to (the one connected when absent).
    #[serde(default)]
    pub identity: Option<String>,
    /// The task id (a fresh unique one when absent).
    #[serde(default)]
    pub task_id: Option<String>,
    /// Copy task id, name, version, inputs and attempt from this plan step
    /// (a duplicate delivery); fields given here override.
    #[serde(default)]
    pub same_as: Option<StepRef>,
    /// The attempt (default 1).
    #[serde(default)]
    pub attempt: Option<u32>,
    /// `Assignment.plan_id` (default `scenario-hostile`).
    #[serde(default)]
    pub plan_id: Option<String>,
    /// `Assignment.step_index`.
    #[serde(default)]
    pub step_index: Option<u32>,
    /// The task name.
    #[serde(default)]
    pub task: Option<String>,
    /// The task version (default `"1"`).
    #[serde(default)]
    pub version: Option<String>,
    /// Inputs as a TOML table (sent as JSON).
    #[serde(default)]
    pub inputs: Option<Map<String, Value>>,
    /// Inputs as raw text, sent byte for byte (need not be JSON).
    #[serde(default)]
    pub inputs_json: Option<String>,
    /// `Assignment.deadline`: `"30s"` from sending, or RFC 3339.
    #[serde(default)]
    pub deadline: Option<Deadline>,
    /// `Assignment.idempotent`.
    #[serde(default)]
    pub idempotent: bool,
    /// What the worker must answer (not waited for when absent).
    #[serde(default)]
    pub expect: Option<AnswerExpect>,
}

/// `expect_answer`: what the worker answered to a named hostile
/// assignment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectAnswer {
    /// The hostile assignment's local name.
    pub assignment: Spanned<String>,
    /// What it must be.
    #[serde(flatten)]
    pub expect: AnswerExpect,
}

/// What a worker's answer to a raw assignment must be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerExpect {
    /// `false`: the worker must send nothing for it (no `Accept`, no
    /// result) during `within`. Default true: a result must come.
    #[serde(default = "yes")]
    pub answered: bool,
    /// The result's outcome.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// The result's error code (`""` for none).
    #[serde(default)]
    pub error_code: Option<String>,
    /// Whether the worker sent `Accept` for it.
    #[serde(default)]
    pub accepted: Option<bool>,
    /// Whether its audit record says it started (`false`: nothing ran).
    #[serde(default)]
    pub started: Option<bool>,
    /// Output fields: JSON pointer to expected JSON value.
    #[serde(default)]
    pub output: Option<BTreeMap<String, Value>>,
    /// How long to wait for the answer (default 10s).
    #[serde(default)]
    pub within: Option<Dur>,
}

/// `drain`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainStep {
    /// Only this worker identity (every connected one when absent).
    #[serde(default)]
    pub identity: Option<String>,
    /// `Drain.reason`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The worker must close within this (default 30s).
    #[serde(default)]
    pub within: Option<Dur>,
    /// Whether the worker must send `Draining` before it closes (default
    /// true).
    #[serde(default = "yes")]
    pub draining: bool,
}

/// `wait_worker`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitWorker {
    /// A connected session of this identity (any when absent).
    #[serde(default)]
    pub identity: Option<String>,
    /// How long (the runner's `--wait-worker` when absent).
    #[serde(default)]
    pub timeout: Option<Dur>,
}

fn yes() -> bool {
    true
}

/// A scenario file as serde sees it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    timeout: Option<Dur>,
    steps: Vec<Spanned<Step>>,
}

/// The 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses and validates one scenario file's text; `file` is used in
/// messages and for the default name.
///
/// # Errors
/// Every problem found, each with file, line and field; a syntax or type
/// error stops at the first one.
pub fn parse(file: &Path, text: &str) -> Result<Scenario, Vec<FormatError>> {
    let error = |line: Option<usize>, field: String, message: String| FormatError {
        file: file.to_path_buf(),
        line,
        field,
        message,
    };
    let deserializer = toml::de::Deserializer::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        vec![error(line, String::new(), e.message().trim().to_string())]
    })?;
    let raw: RawScenario = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `toml::Spanned` shows up in the path as a private segment.
        let field = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        let line = inner.span().map(|s| line_of(text, s.start));
        let field = if field == "." { String::new() } else { field };
        vec![error(line, field, inner.message().trim().to_string())]
    })?;
    let mut problems = Vec::new();
    check(&raw, text, &mut |span: std::ops::Range<usize>,
                            field,
                            message| {
        problems.push(error(Some(line_of(text, span.start)), field, message));
    });
    if raw.steps.is_empty() {
        problems.push(error(
            None,
            "steps".into(),
            "a scenario needs at least one step".into(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let name = raw.name.clone().unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string())
    });
    Ok(Scenario {
        file: file.to_path_buf(),
        name,
        description: raw.description,
        timeout: raw.timeout.map_or(DEFAULT_SCENARIO_TIMEOUT, |d| d.0),
        steps: raw
            .steps
            .into_iter()
            .map(|s| StepAt {
                line: line_of(text, s.span().start),
                step: s.into_inner(),
            })
            .collect(),
    })
}

/// Checks what serde cannot: names used before they are defined, JSON
/// pointers, fields that exclude each other.
fn check(
    raw: &RawScenario,
    _text: &str,
    report: &mut dyn FnMut(std::ops::Range<usize>, String, String),
) {
    let mut plans: HashSet<String> = HashSet::new();
    let mut hostiles: HashSet<String> = HashSet::new();
    let pointers = |map: &BTreeMap<String, Value>| -> Vec<String> {
        map.keys()
            .filter(|k| !k.is_empty() && !k.starts_with('/'))
            .cloned()
            .collect()
    };
    for (i, spanned) in raw.steps.iter().enumerate() {
        let step_span = spanned.span();
        let at = |field: &str| format!("steps[{i}].{field}");
        let known_plan =
            |plans: &HashSet<String>,
             p: &Spanned<String>,
             field: &str,
             report: &mut dyn FnMut(std::ops::Range<usize>, String, String)| {
                if !plans.contains(p.get_ref()) {
                    report(
                        p.span(),
                        at(field),
                        format!(
                            "no plan named {:?} was submitted by an earlier step",
                            p.get_ref()
                        ),
                    );
                }
            };
        match spanned.get_ref() {
            Step::Submit(s) => {
                if s.tasks.is_empty() {
                    report(
                        s.plan.span(),
                        at("submit.tasks"),
                        "a plan needs at least one task".into(),
                    );
                }
                if !plans.insert(s.plan.get_ref().clone()) {
                    report(
                        s.plan.span(),
                        at("submit.plan"),
                        format!("plan name {:?} is used twice", s.plan.get_ref()),
                    );
                }
            }
            Step::Approve(p) => known_plan(&plans, p, "approve", report),
            Step::Reject(p) => known_plan(&plans, p, "reject", report),
            Step::Cancel(c) => known_plan(&plans, &c.plan, "cancel.plan", report),
            Step::Expect(e) => {
                known_plan(&plans, &e.plan, "expect.plan", report);
                for (j, s) in e.steps.iter().enumerate() {
                    if let Some(output) = &s.get_ref().output {
                        for bad in pointers(output.get_ref()) {
                            report(
                                output.span(),
                                at(&format!("expect.steps[{j}].output")),
                                format!(
                                    "{bad:?} is not a JSON pointer (use \"/field\", or \"\" for the whole output)"
                                ),
                            );
                        }
                    }
                    if let (Some(o), Some(st)) = (s.get_ref().outcome, s.get_ref().status)
                        && o.step_status() != st
                    {
                        report(
                            s.span(),
                            at(&format!("expect.steps[{j}]")),
                            format!(
                                "outcome {} and status {st:?} contradict each other",
                                o.name()
                            ),
                        );
                    }
                }
            }
            Step::HostileAssignment(h) => {
                if let Some(same) = &h.same_as {
                    known_plan(
                        &plans,
                        &same.plan,
                        "hostile_assignment.same_as.plan",
                        report,
                    );
                } else if h.task.is_none() {
                    report(
                        step_span.clone(),
                        at("hostile_assignment.task"),
                        "missing: a task name (or same_as to copy a plan step)".into(),
                    );
                }
                if h.inputs.is_some() && h.inputs_json.is_some() {
                    report(
                        step_span.clone(),
                        at("hostile_assignment.inputs_json"),
                        "give inputs or inputs_json, not both".into(),
                    );
                }
                if let Some(name) = &h.name
                    && !hostiles.insert(name.get_ref().clone())
                {
                    report(
                        name.span(),
                        at("hostile_assignment.name"),
                        format!("assignment name {:?} is used twice", name.get_ref()),
                    );
                }
                if let Some(e) = &h.expect {
                    check_answer(
                        e,
                        &at("hostile_assignment.expect"),
                        step_span.clone(),
                        report,
                    );
                }
            }
            Step::ExpectAnswer(e) => {
                if !hostiles.contains(e.assignment.get_ref()) {
                    report(
                        e.assignment.span(),
                        at("expect_answer.assignment"),
                        format!(
                            "no hostile_assignment named {:?} comes before this step",
                            e.assignment.get_ref()
                        ),
                    );
                }
                check_answer(&e.expect, &at("expect_answer"), step_span.clone(), report);
            }
            Step::CutStream(_)
            | Step::RestartOrchestrator(_)
            | Step::Drain(_)
            | Step::Wait(_)
            | Step::WaitWorker(_) => {}
        }
    }
}

fn check_answer(
    e: &AnswerExpect,
    field: &str,
    span: std::ops::Range<usize>,
    report: &mut dyn FnMut(std::ops::Range<usize>, String, String),
) {
    if let Some(output) = &e.output {
        for key in output
            .keys()
            .filter(|k| !k.is_empty() && !k.starts_with('/'))
        {
            report(
                span.clone(),
                format!("{field}.output"),
                format!(
                    "{key:?} is not a JSON pointer (use \"/field\", or \"\" for the whole output)"
                ),
            );
        }
    }
    if !e.answered
        && (e.outcome.is_some()
            || e.error_code.is_some()
            || e.started.is_some()
            || e.output.is_some()
            || e.accepted == Some(true))
    {
        report(
            span,
            format!("{field}.answered"),
            "answered = false expects no result: outcome, error_code, started, output and accepted = true cannot be checked".into(),
        );
    }
}

/// Reads scenario files: each path is a `.toml` file or a folder whose
/// `*.toml` files (not recursive) are taken in name order.
///
/// # Errors
/// Every problem of every file (unreadable, empty folder, bad scenario).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Scenario>, Vec<FormatError>> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let unreadable = |file: &Path, message: String| FormatError {
        file: file.to_path_buf(),
        line: None,
        field: String::new(),
        message,
    };
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        problems.push(unreadable(
                            path,
                            "no *.toml scenario files in this folder".into(),
                        ));
                    }
                    files.extend(found);
                }
                Err(e) => problems.push(unreadable(path, format!("cannot read folder: {e}"))),
            }
        } else {
            files.push(path.clone());
        }
    }
    let mut scenarios = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse(&file, &text) {
                Ok(s) => scenarios.push(s),
                Err(e) => problems.extend(e),
            },
            Err(e) => problems.push(unreadable(&file, format!("cannot read: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(scenarios)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Scenario, Vec<FormatError>> {
        parse(Path::new("conformance/happy.toml"), text)
    }

    const HAPPY: &str = r#"
name = "happy path"
timeout = "1m"

[[steps]]
submit.plan = "ticket"
submit.approve = true
submit.tasks = [
  { task = "crm.create_ticket", inputs = { title = "hello", priority = 2 } },
]

[[steps]]
[steps.expect]
plan = "ticket"
status = "succeeded"
within = "10s"
audit = "ok"
[[steps.expect.steps]]
outcome = "SUCCEEDED"
output = { "/status" = 201, "/body/title" = "hello" }
attempts = 1

[[steps]]
hostile_assignment = { name = "evil", task = "crm.delete_customer", inputs = { customer = "C-1" }, expect = { outcome = "REJECTED", error_code = "not_allowed", started = false } }

[[steps]]
cut_stream = {}

[[steps]]
wait = "250ms"

[[steps]]
restart_orchestrator = { signal = "term" }
"#;

    #[test]
    fn a_complete_scenario_parses_with_lines_and_defaults() {
        let s = parse_str(HAPPY).unwrap();
        assert_eq!(s.name, "happy path");
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!(s.steps.len(), 6);
        assert_eq!(s.steps[0].line, 5);
        match &s.steps[1].step {
            Step::Expect(e) => {
                assert_eq!(e.plan.get_ref(), "ticket");
                assert_eq!(e.status, Some(PlanStatus::Succeeded));
                assert_eq!(e.audit, Some(AuditVerdict::Ok));
                let step = e.steps[0].get_ref();
                assert_eq!(step.outcome, Some(Outcome::Succeeded));
                let output = step.output.as_ref().unwrap().get_ref();
                assert_eq!(output["/status"], serde_json::json!(201));
            }
            other => panic!("{other:?}"),
        }
        match &s.steps[2].step {
            Step::HostileAssignment(h) => {
                let e = h.expect.as_ref().unwrap();
                assert!(e.answered);
                assert_eq!(e.started, Some(false));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&s.steps[3].step, Step::CutStream(c) if c.reconnect));
        assert!(
            matches!(&s.steps[5].step, Step::RestartOrchestrator(r) if r.signal == StopSignal::Term)
        );
        assert!(s.needs_fault_injection());
    }

    #[test]
    fn an_unknown_outcome_names_file_line_field_and_the_choices() {
        let text = HAPPY.replace("outcome = \"SUCCEEDED\"", "outcome = \"SUCEEDED\"");
        let errors = parse_str(&text).unwrap_err();
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("conformance/happy.toml:19: steps[1].expect.steps[0].outcome: unknown variant `SUCEEDED`"),
            "{shown}"
        );
        assert!(
            shown.contains("SUCCEEDED") && shown.contains("OUTCOME_UNKNOWN"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_their_line() {
        let text = HAPPY.replace("within = \"10s\"", "withn = \"10s\"");
        let shown = parse_str(&text).unwrap_err()[0].to_string();
        assert!(
            shown.starts_with(
                "conformance/happy.toml:16: steps[1].expect.withn: unknown field `withn`"
            ),
            "{shown}"
        );
        assert!(shown.contains("unknown field `withn`"), "{shown}");
        let shown = parse_str("colour = 1\n[[steps]]\nwait = \"1s\"\n").unwrap_err()[0].to_string();
        assert!(shown.starts_with("conformance/happy.toml:1:"), "{shown}");
        assert!(shown.contains("unknown field `colour`"), "{shown}");
    }

    #[test]
    fn unknown_actions_and_bad_durations_are_reported_with_their_line() {
        let shown = parse_str("[[steps]]\nwait = \"1s\"\n\n[[steps]]\nexplode = true\n")
            .unwrap_err()[0]
            .to_string();
        assert!(
            shown.starts_with("conformance/happy.toml:5: steps[1]"),
            "{shown}"
        );
        assert!(shown.contains("explode"), "{shown}");
        let shown = parse_str("[[steps]]\nwait = \"soon\"\n").unwrap_err()[0].to_string();
        assert!(
            shown.starts_with("conformance/happy.toml:2: steps[0].wait"),
            "{shown}"
        );
        assert!(shown.contains("not a duration"), "{shown}");
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let shown = parse_str("[[steps]]\nwait = \n").unwrap_err()[0].to_string();
        assert!(shown.starts_with("conformance/happy.toml:2:"), "{shown}");
    }

    #[test]
    fn semantic_problems_are_all_reported_with_lines() {
        let text = r#"
[[steps]]
approve = "nope"

[[steps]]
expect = { plan = "ghost", steps = [{ output = { "status" = 1 } }] }

[[steps]]
hostile_assignment = { inputs = {}, inputs_json = "x" }

[[steps]]
expect_answer = { assignment = "never", answered = false, outcome = "REJECTED" }
"#;
        let errors = parse_str(text).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = shown.join("\n");
        for needle in [
            "happy.toml:3: steps[0].approve: no plan named \"nope\"",
            "happy.toml:6: steps[1].expect.plan: no plan named \"ghost\"",
            "happy.toml:6: steps[1].expect.steps[0].output: \"status\" is not a JSON pointer",
            "happy.toml:8: steps[2].hostile_assignment.task: missing",
            "happy.toml:8: steps[2].hostile_assignment.inputs_json: give inputs or inputs_json",
            "happy.toml:12: steps[3].expect_answer.assignment: no hostile_assignment named \"never\"",
            "happy.toml:11: steps[3].expect_answer.answered:",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn a_folder_gives_its_toml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.toml"), "[[steps]]\nwait = \"1ms\"\n").unwrap();
        std::fs::write(dir.path().join("a.toml"), "[[steps]]\nwait = \"1ms\"\n").unwrap();
        std::fs::write(dir.path().join("notes.md"), "not a scenario").unwrap();
        let names: Vec<String> = load(&[dir.path().to_path_buf()])
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let errors = load(&[dir.path().join("missing.toml")]).unwrap_err();
        assert!(
            errors[0].to_string().contains("cannot read"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn deadlines_are_relative_durations_or_rfc3339_times() {
        let s = parse_str(
            "[[steps]]\nsubmit = { plan = \"p\", tasks = [{ task = \"t\", deadline = \"30s\" }, { task = \"t\", deadline = \"2030-01-01T00:00:00Z\" }] }\n",
        )
        .unwrap();
        match &s.steps[0].step {
            Step::Submit(sub) => {
                assert_eq!(
                    sub.tasks[0].deadline,
                    Some(Deadline::In(Duration::from_secs(30)))
                );
                assert_eq!(
                    sub.tasks[1].deadline.as_ref().unwrap().resolve(),
                    "2030-01-01T00:00:00Z"
                );
            }
            other => panic!("{other:?}"),
        }
        let shown = parse_str("[[steps]]\nsubmit = { plan = \"p\", tasks = [{ task = \"t\", deadline = \"tomorrow\" }] }\n")
            .unwrap_err()[0]
            .to_string();
        assert!(
            shown.contains("steps[0].submit.tasks[0].deadline"),
            "{shown}"
        );
    }
}
