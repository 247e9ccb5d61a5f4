//! Running one scenario's steps against a mock (through its admin API and
//! its `/v1/testing` hooks) and the worker connected to it, and comparing
//! what happens with what the scenario expects.
//!
//! Each step either succeeds or fails with every [`Problem`] it found (an
//! `expect` compares everything it was asked to before failing). The first
//! failing step ends the scenario; plans it left unfinished are cancelled
//! so the next scenario starts clean.
//!
//! What it does not do: start or stop the worker, print, or read files;
//! the caller ([`super`]) does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::format::{
    AnswerExpect, AuditVerdict, Expect, Hostile, Scenario, Step, StepAt, StopSignal, TaskStep,
};
use super::process::MockProcess;
use super::report::{Failure, Problem};
use crate::api::{PlanStatus, PlanSubmission, PlanView, StepRequest, StepStatus, StepSubmission};
use crate::client::AdminClient;
use crate::testing::{AnswersView, AssignedView, SessionView, TargetedView};

/// How often the runner polls the admin API.
pub const POLL: Duration = Duration::from_millis(50);

/// What the runner drives: the mock's admin API, the mock process when the
/// runner started it, and how long to wait for a worker.
pub struct Harness {
    /// The mock's admin API.
    pub admin: AdminClient,
    /// The mock, when the runner started it (needed to restart it).
    pub mock: Option<MockProcess>,
    /// How long to wait for a connected worker.
    pub wait_worker: Duration,
    /// Whether the mock serves `/v1/testing` (probed at start).
    pub fault_injection: bool,
}

/// What a scenario's steps have created, by local name.
#[derive(Debug, Default)]
pub struct Names {
    /// Local plan name to plan id and approval time.
    plans: HashMap<String, PlanRef>,
    /// Local hostile assignment name to its task id.
    hostiles: HashMap<String, String>,
}

#[derive(Debug, Clone)]
struct PlanRef {
    id: String,
    approved_at: Option<Instant>,
}

type StepResult = Result<(), Vec<Problem>>;

fn one(what: &str, message: impl std::fmt::Display) -> Vec<Problem> {
    vec![Problem::error(what, message.to_string())]
}

/// A plan step's state for messages: `rejected (not_allowed: why)`.
fn shown_step(step: &crate::api::StepView) -> String {
    let status = serde_json::to_value(step.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match (&step.error_code, &step.error_message) {
        (Some(code), Some(message)) => format!("{status} ({code}: {message})"),
        (Some(code), None) => format!("{status} ({code})"),
        _ => status,
    }
}

fn status_name<T: serde::Serialize + std::fmt::Debug>(status: &T) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status:?}"))
}

/// Compares JSON pointers into `output` with expected values.
fn compare_output(
    what: &str,
    output: Option<&Value>,
    expected: &std::collections::BTreeMap<String, Value>,
    problems: &mut Vec<Problem>,
) {
    for (pointer, want) in expected {
        let found = output.and_then(|o| o.pointer(pointer));
        if found != Some(want) {
            problems.push(Problem::mismatch(
                format!("{what} output {pointer:?}"),
                want.to_string(),
                found.map_or_else(
                    || match output {
                        None => "no output".to_string(),
                        Some(_) => "nothing at that pointer".to_string(),
                    },
                    Value::to_string,
                ),
            ));
        }
    }
}

impl Harness {
    /// A harness over the admin API `admin` talks to (its token needs
    /// every role: read, submit, approve, operate); probes whether the
    /// mock offers fault injection.
    pub async fn new(
        admin: AdminClient,
        mock: Option<MockProcess>,
        wait_worker: Duration,
    ) -> Harness {
        let mut h = Harness {
            admin,
            mock,
            wait_worker,
            fault_injection: false,
        };
        h.fault_injection = h.get_json("/v1/testing").await.is_ok();
        h
    }

    async fn get_json(&self, path: &str) -> Result<Value, String> {
        let response = self
            .admin
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        decode(path, response).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value, String> {
        let response = self
            .admin
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        decode(path, response).await
    }

    /// Waits up to `timeout` for a connected, non-draining worker session
    /// (of `identity`, when given; not one of `except`).
    ///
    /// # Errors
    /// A message saying what was connected when it gave up.
    pub async fn wait_connected(
        &self,
        identity: Option<&str>,
        except: &[String],
        timeout: Duration,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let last = match self.admin.workers().await {
                Ok(workers) => {
                    if workers.iter().any(|w| {
                        !w.draining
                            && identity.is_none_or(|i| i == w.identity)
                            && !except.contains(&w.session_id)
                    }) {
                        return Ok(());
                    }
                    if workers.is_empty() {
                        "no worker connected".to_string()
                    } else {
                        format!(
                            "connected: {}",
                            workers
                                .iter()
                                .map(|w| format!(
                                    "{}{}",
                                    w.identity,
                                    if w.draining { " (draining)" } else { "" }
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                }
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                let who = identity.map_or("a worker".to_string(), |i| format!("worker {i}"));
                return Err(format!("{who} did not connect within {timeout:?} ({last})"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `scenario`'s steps in order, within its timeout; cancels the
    /// plans it left unfinished.
    ///
    /// # Errors
    /// The [`Failure`] of the first failing step (or of the timeout).
    pub async fn run(&mut self, scenario: &Scenario) -> Result<(), Failure> {
        if let Some(failure) = self.unavailable(scenario) {
            return Err(failure);
        }
        let mut names = Names::default();
        let mut current = 0usize;
        let outcome = tokio::time::timeout(
            scenario.timeout,
            self.steps(&scenario.steps, &mut names, &mut current),
        )
        .await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => {
                let at = &scenario.steps[current.min(scenario.steps.len() - 1)];
                Err(Failure {
                    step: Some(current),
                    label: at.step.label(),
                    line: Some(at.line),
                    problems: vec![Problem::error(
                        "timeout",
                        format!(
                            "the scenario did not finish within its timeout of {:?} (set `timeout` in the file to allow more)",
                            scenario.timeout
                        ),
                    )],
                })
            }
        };
        self.clean_up(&names).await;
        result
    }

    /// A failure for a scenario this harness cannot run at all (a fault
    /// the mock does not offer); `None` when it can run.
    pub fn unavailable(&self, scenario: &Scenario) -> Option<Failure> {
        for (i, at) in scenario.steps.iter().enumerate() {
            let problem = match &at.step {
                Step::RestartOrchestrator(_) if self.mock.is_none() => Problem::error(
                    "restart_orchestrator",
                    "not available: the runner did not start the mock (--admin-url); run with --config so that it can restart it",
                ),
                Step::CutStream(_) | Step::Drain(_) | Step::HostileAssignment(_)
                    if !self.fault_injection =>
                {
                    Problem::error(
                        at.step.action(),
                        format!(
                            "not available: the mock at {} has no fault injection (start it with `serve --fault-injection` or `[testing] fault_injection = true`)",
                            self.admin.base_url()
                        ),
                    )
                }
                _ => continue,
            };
            return Some(Failure {
                step: Some(i),
                label: at.step.label(),
                line: Some(at.line),
                problems: vec![problem],
            });
        }
        None
    }

    async fn steps(
        &mut self,
        steps: &[StepAt],
        names: &mut Names,
        current: &mut usize,
    ) -> Result<(), Failure> {
        for (i, at) in steps.iter().enumerate() {
            *current = i;
            tracing::debug!(step = i, action = at.step.action(), "scenario step");
            if let Err(problems) = self.step(&at.step, names).await {
                return Err(Failure {
                    step: Some(i),
                    label: at.step.label(),
                    line: Some(at.line),
                    problems,
                });
            }
        }
        Ok(())
    }

    async fn clean_up(&self, names: &Names) {
        for plan in names.plans.values() {
            if let Ok(view) = self.admin.plan(&plan.id).await
                && !view.status.is_finished()
            {
                let _ = match view.status {
                    PlanStatus::PendingApproval => {
                        self.admin.reject(&plan.id, "scenario ended").await
                    }
                    _ => self.admin.cancel_plan(&plan.id, "scenario ended").await,
                };
            }
        }
    }

    fn plan<'n>(names: &'n Names, name: &str) -> Result<&'n PlanRef, Vec<Problem>> {
        names
            .plans
            .get(name)
            .ok_or_else(|| one("plan", format!("no plan named {name:?}")))
    }

    async fn step(&mut self, step: &Step, names: &mut Names) -> StepResult {
        match step {
            Step::Submit(s) => {
                let submission = PlanSubmission {
                    name: Some(s.plan.get_ref().clone()),
                    steps: s.tasks.iter().map(submission_step).collect(),
                    traceparent: None,
                };
                let view = self
                    .admin
                    .submit(&submission)
                    .await
                    .map_err(|e| one("submit", format!("the mock refused the plan: {e}")))?;
                let mut plan = PlanRef {
                    id: view.id.clone(),
                    approved_at: None,
                };
                if s.approve {
                    self.admin
                        .approve(&view.id)
                        .await
                        .map_err(|e| one("approve", e))?;
                    plan.approved_at = Some(Instant::now());
                }
                names.plans.insert(s.plan.get_ref().clone(), plan);
                Ok(())
            }
            Step::Approve(p) => {
                let id = Self::plan(names, p.get_ref())?.id.clone();
                self.admin
                    .approve(&id)
                    .await
                    .map_err(|e| one("approve", e))?;
                if let Some(plan) = names.plans.get_mut(p.get_ref()) {
                    plan.approved_at = Some(Instant::now());
                }
                Ok(())
            }
            Step::Reject(p) => {
                let id = &Self::plan(names, p.get_ref())?.id;
                self.admin
                    .reject(id, "rejected by the scenario")
                    .await
                    .map_err(|e| one("reject", e))?;
                Ok(())
            }
            Step::Cancel(c) => {
                let id = &Self::plan(names, c.plan.get_ref())?.id;
                let reason = c.reason.as_deref().unwrap_or("cancelled by the scenario");
                match c.step {
                    Some(index) => self.admin.cancel_step(id, index, reason).await,
                    None => self.admin.cancel_plan(id, reason).await,
                }
                .map_err(|e| one("cancel", e))?;
                Ok(())
            }
            Step::Expect(e) => {
                let plan = Self::plan(names, e.plan.get_ref())?.clone();
                self.expect(e, &plan).await
            }
            Step::CutStream(c) => {
                let body = json!({"identity": c.identity});
                let cut: TargetedView = parse(self.post_json("/v1/testing/cut", &body).await)?;
                if cut.sessions.is_empty() {
                    return Err(one("cut_stream", "no connected worker session to cut"));
                }
                if c.reconnect {
                    self.wait_back(&cut.sessions).await?;
                }
                Ok(())
            }
            Step::RestartOrchestrator(r) => {
                let before: Vec<SessionView> = self
                    .admin
                    .workers()
                    .await
                    .map(|ws| {
                        ws.into_iter()
                            .map(|w| SessionView {
                                session_id: w.session_id,
                                identity: w.identity,
                                opened_at: String::new(),
                                open: true,
                                draining_seen: false,
                                drain_sent: false,
                                end_reason: None,
                                ended_at: None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let Some(mock) = self.mock.as_mut() else {
                    return Err(one(
                        "restart_orchestrator",
                        "the runner did not start the mock",
                    ));
                };
                mock.restart(r.signal == StopSignal::Kill)
                    .await
                    .map_err(|e| one("restart_orchestrator", e))?;
                if r.reconnect {
                    if before.is_empty() {
                        self.wait_connected(None, &[], self.wait_worker)
                            .await
                            .map_err(|e| one("reconnect", e))?;
                    } else {
                        self.wait_back(&before).await?;
                    }
                }
                Ok(())
            }
            Step::HostileAssignment(h) => self.hostile(h.as_ref(), names).await,
            Step::ExpectAnswer(e) => {
                let Some(task_id) = names.hostiles.get(e.assignment.get_ref()) else {
                    return Err(one("expect_answer", "no such hostile assignment"));
                };
                self.answer(task_id, &e.expect).await
            }
            Step::Drain(d) => {
                let body = json!({"identity": d.identity, "reason": d.reason});
                let drained: TargetedView =
                    parse(self.post_json("/v1/testing/drain", &body).await)?;
                if drained.sessions.is_empty() {
                    return Err(one("drain", "no connected worker session to drain"));
                }
                let within = d.within.map_or(super::format::DEFAULT_DRAIN_WAIT, |w| w.0);
                self.wait_drained(&drained.sessions, within, d.draining)
                    .await
            }
            Step::Wait(d) => {
                tokio::time::sleep(d.0).await;
                Ok(())
            }
            Step::WaitWorker(w) => self
                .wait_connected(
                    w.identity.as_deref(),
                    &[],
                    w.timeout.map_or(self.wait_worker, |t| t.0),
                )
                .await
                .map_err(|e| one("wait_worker", e)),
        }
    }

    /// Waits until every identity of `gone` has a connected session that
    /// is not one of `gone`.
    async fn wait_back(&self, gone: &[SessionView]) -> StepResult {
        let old: Vec<String> = gone.iter().map(|s| s.session_id.clone()).collect();
        let mut identities: Vec<&str> = gone.iter().map(|s| s.identity.as_str()).collect();
        identities.dedup();
        for identity in identities {
            self.wait_connected(Some(identity), &old, self.wait_worker)
                .await
                .map_err(|e| one("reconnect", e))?;
        }
        Ok(())
    }

    async fn wait_drained(
        &self,
        drained: &[SessionView],
        within: Duration,
        draining: bool,
    ) -> StepResult {
        let start = Instant::now();
        loop {
            let sessions: Vec<SessionView> = parse(self.get_json("/v1/testing/sessions").await)?;
            let state: Vec<&SessionView> = drained
                .iter()
                .filter_map(|d| sessions.iter().find(|s| s.session_id == d.session_id))
                .collect();
            let all_closed = state.iter().all(|s| !s.open);
            if all_closed || start.elapsed() >= within {
                let mut problems = Vec::new();
                for s in &state {
                    if draining && !s.draining_seen {
                        problems.push(Problem::mismatch(
                            format!("session of {}", s.identity),
                            "Draining from the worker after Drain",
                            "no Draining",
                        ));
                    }
                    if s.open {
                        problems.push(Problem::mismatch(
                            format!("session of {}", s.identity),
                            format!("the worker closes its stream within {within:?}"),
                            "still open",
                        ));
                    }
                }
                return if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems)
                };
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn expect(&self, e: &Expect, plan: &PlanRef) -> StepResult {
        let started = Instant::now();
        let from = plan.approved_at.unwrap_or(started);
        let limit = e
            .within
            .map_or(started + super::format::DEFAULT_EXPECT_WAIT, |w| from + w.0);
        let reached = |v: &PlanView| match e.status {
            Some(s) => v.status == s || v.status.is_finished(),
            None => v.status.is_finished(),
        };
        let view = loop {
            let view = self
                .admin
                .plan(&plan.id)
                .await
                .map_err(|err| one("plan", err))?;
            if reached(&view) {
                break view;
            }
            if Instant::now() >= limit {
                let wanted = e.status.map_or("finished".to_string(), |s| status_name(&s));
                let within = e.within.map_or_else(
                    || format!("within {:?} (default)", super::format::DEFAULT_EXPECT_WAIT),
                    |w| format!("within {:?} of its approval", w.0),
                );
                let steps: Vec<String> = view.steps.iter().map(shown_step).collect();
                return Err(vec![Problem::mismatch(
                    "plan status",
                    format!("{wanted} {within}"),
                    format!(
                        "{} after {:.1}s (steps: {})",
                        status_name(&view.status),
                        from.elapsed().as_secs_f64(),
                        steps.join(", ")
                    ),
                )]);
            }
            tokio::time::sleep(POLL).await;
        };
        let mut problems = Vec::new();
        if let Some(want) = e.status
            && view.status != want
        {
            let steps: Vec<String> = view.steps.iter().map(shown_step).collect();
            problems.push(Problem::mismatch(
                "plan status",
                status_name(&want),
                format!(
                    "{} (steps: {})",
                    status_name(&view.status),
                    steps.join(", ")
                ),
            ));
        }
        let needs_audit =
            e.audit.is_some() || e.steps.iter().any(|s| s.get_ref().started.is_some());
        let audit: Vec<Value> = if needs_audit {
            parse(self.get_json(&format!("/v1/plans/{}/audit", plan.id)).await)?
        } else {
            Vec::new()
        };
        for (j, spanned) in e.steps.iter().enumerate() {
            let want = spanned.get_ref();
            let index = want.index.unwrap_or(j);
            let Some(step) = view.steps.get(index) else {
                problems.push(Problem::error(
                    format!("step {index}"),
                    format!("the plan has {} steps", view.steps.len()),
                ));
                continue;
            };
            let what = format!("step {index} ({})", step.task);
            if let Some(outcome) = want.outcome
                && step.status != outcome.step_status()
            {
                problems.push(Problem::mismatch(
                    format!("{what} outcome"),
                    outcome.name(),
                    shown_step(step),
                ));
            }
            if let Some(status) = want.status
                && step.status != status
            {
                problems.push(Problem::mismatch(
                    format!("{what} status"),
                    status_name(&status),
                    shown_step(step),
                ));
            }
            if let Some(code) = &want.error_code
                && step.error_code.as_deref().unwrap_or("") != code
            {
                problems.push(Problem::mismatch(
                    format!("{what} error_code"),
                    format!("{code:?}"),
                    format!("{:?}", step.error_code.as_deref().unwrap_or("")),
                ));
            }
            if let Some(output) = &want.output {
                compare_output(&what, step.output.as_ref(), output.get_ref(), &mut problems);
            }
            if let Some(n) = want.attempts
                && step.attempts.len() != n
            {
                problems.push(Problem::mismatch(
                    format!("{what} attempts"),
                    n.to_string(),
                    step.attempts.len().to_string(),
                ));
            }
            if let Some(started) = want.started {
                let record = audit.iter().rev().find(|r| {
                    r["task_id"] == json!(step.task_id) && r["attempt"] == json!(step.attempt)
                });
                match record {
                    None => problems.push(Problem::error(
                        format!("{what} started"),
                        format!("no audit record for attempt {}", step.attempt),
                    )),
                    Some(r) if r["started_at"].is_null() == started => {
                        problems.push(Problem::mismatch(
                            format!("{what} started"),
                            if started {
                                "started_at set (it ran)"
                            } else {
                                "started_at unset (nothing ran)"
                            },
                            format!("started_at {}", r["started_at"]),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(verdict) = e.audit {
            check_audit(verdict, &view, &audit, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    async fn hostile(&self, h: &Hostile, names: &mut Names) -> StepResult {
        let mut raw = json!({
            "identity": h.identity,
            "task_id": format!("hostile-{}", uuid::Uuid::now_v7().simple()),
            "attempt": 1,
            "plan_id": "scenario-hostile",
            "step_index": 0,
            "task_name": "",
            "task_version": "1",
            "inputs_json": "{}",
            "idempotent": h.idempotent,
        });
        if let Some(same) = &h.same_as {
            let plan = Self::plan(names, same.plan.get_ref())?;
            let view = self
                .admin
                .plan(&plan.id)
                .await
                .map_err(|e| one("same_as", e))?;
            let Some(step) = view.steps.get(same.step) else {
                return Err(one(
                    "same_as",
                    format!("plan {:?} has no step {}", same.plan.get_ref(), same.step),
                ));
            };
            raw["task_id"] = json!(step.task_id);
            raw["attempt"] = json!(step.attempt.max(1));
            raw["plan_id"] = json!(view.id);
            raw["step_index"] = json!(step.index);
            raw["task_name"] = json!(step.task);
            raw["task_version"] = json!(step.version);
            raw["inputs_json"] = json!(step.inputs.to_string());
        }
        let set = |raw: &mut Value, key: &str, value: Option<Value>| {
            if let Some(v) = value {
                raw[key] = v;
            }
        };
        set(&mut raw, "task_id", h.task_id.clone().map(Value::from));
        set(&mut raw, "attempt", h.attempt.map(Value::from));
        set(&mut raw, "plan_id", h.plan_id.clone().map(Value::from));
        set(&mut raw, "step_index", h.step_index.map(Value::from));
        set(&mut raw, "task_name", h.task.clone().map(Value::from));
        set(&mut raw, "task_version", h.version.clone().map(Value::from));
        set(
            &mut raw,
            "inputs_json",
            h.inputs
                .as_ref()
                .map(|i| Value::from(Value::Object(i.clone()).to_string())),
        );
        set(
            &mut raw,
            "inputs_json",
            h.inputs_json.clone().map(Value::from),
        );
        set(
            &mut raw,
            "deadline",
            h.deadline.as_ref().map(|d| Value::from(d.resolve())),
        );
        let sent: AssignedView = parse(self.post_json("/v1/testing/assign", &raw).await)?;
        if let Some(name) = &h.name {
            names
                .hostiles
                .insert(name.get_ref().clone(), sent.task_id.clone());
        }
        match &h.expect {
            Some(expect) => self.answer(&sent.task_id, expect).await,
            None => Ok(()),
        }
    }

    async fn answer(&self, task_id: &str, e: &AnswerExpect) -> StepResult {
        let within = e.within.map_or(super::format::DEFAULT_ANSWER_WAIT, |w| w.0);
        let start = Instant::now();
        let path = format!("/v1/testing/answers/{task_id}");
        let answers = loop {
            let answers: AnswersView = parse(self.get_json(&path).await)?;
            if (e.answered && !answers.results.is_empty()) || start.elapsed() >= within {
                break answers;
            }
            tokio::time::sleep(POLL).await;
        };
        let mut problems = Vec::new();
        if !e.answered {
            if !answers.results.is_empty() || !answers.accepts.is_empty() {
                let seen = answers.results.first().map_or_else(
                    || "an Accept".to_string(),
                    |r| {
                        format!(
                            "a result {} ({})",
                            r.outcome,
                            r.error_code.as_deref().unwrap_or("")
                        )
                    },
                );
                problems.push(Problem::mismatch(
                    "answer",
                    format!("nothing within {within:?} (the assignment ignored)"),
                    seen,
                ));
            }
            return if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            };
        }
        let Some(result) = answers.results.last() else {
            return Err(vec![Problem::mismatch(
                "answer",
                format!("a result within {within:?}"),
                if answers.accepts.is_empty() {
                    "nothing (no Accept, no result)".to_string()
                } else {
                    "an Accept but no result".to_string()
                },
            )]);
        };
        let shown = format!(
            "{}{}",
            result.outcome,
            result
                .error_code
                .as_deref()
                .map(|c| format!(" ({c}: {})", result.error_message.as_deref().unwrap_or("")))
                .unwrap_or_default()
        );
        if let Some(outcome) = e.outcome
            && result.outcome != outcome.name()
        {
            problems.push(Problem::mismatch("outcome", outcome.name(), shown.clone()));
        }
        if let Some(code) = &e.error_code
            && result.error_code.as_deref().unwrap_or("") != code
        {
            problems.push(Problem::mismatch(
                "error_code",
                format!("{code:?}"),
                shown.clone(),
            ));
        }
        if let Some(accepted) = e.accepted
            && accepted == answers.accepts.is_empty()
        {
            problems.push(Problem::mismatch(
                "Accept",
                if accepted { "sent" } else { "not sent" },
                if accepted { "none" } else { "an Accept" },
            ));
        }
        if let Some(started) = e.started {
            match &result.audit {
                None => problems.push(Problem::error(
                    "started",
                    "the result carried no audit record",
                )),
                Some(a) if a["started_at"].is_null() == started => {
                    problems.push(Problem::mismatch(
                        "audit started_at",
                        if started {
                            "set (it ran)"
                        } else {
                            "unset (nothing ran)"
                        },
                        a["started_at"].to_string(),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(output) = &e.output {
            compare_output("answer", result.output.as_ref(), output, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The audit verdict check of an `expect` (records read as JSON so that a
/// mock without verdicts gives a clear message rather than a decode error).
fn check_audit(
    verdict: AuditVerdict,
    view: &PlanView,
    audit: &[Value],
    problems: &mut Vec<Problem>,
) {
    let verdicts: Vec<(String, Option<String>, String)> = audit
        .iter()
        .map(|r| {
            (
                format!(
                    "{} attempt {}",
                    r["task_id"].as_str().unwrap_or("?"),
                    r["attempt"]
                ),
                r["check"]["verdict"].as_str().map(str::to_string),
                r["check"]["problems"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    if let Some((record, _, _)) = verdicts.iter().find(|(_, v, _)| v.is_none()) {
        problems.push(Problem::error(
            "audit",
            format!("record {record} carries no verdict (`check.verdict`): this mock does not check audit records"),
        ));
        return;
    }
    match verdict {
        AuditVerdict::Ok => {
            for (record, v, why) in &verdicts {
                if v.as_deref() != Some("ok") {
                    problems.push(Problem::mismatch(
                        format!("audit record {record}"),
                        "verdict ok",
                        format!("{} ({why})", v.as_deref().unwrap_or("none")),
                    ));
                }
            }
            for step in &view.steps {
                let ran = step.attempt > 0
                    && !matches!(
                        step.status,
                        StepStatus::Waiting
                            | StepStatus::Queued
                            | StepStatus::Assigned
                            | StepStatus::Skipped
                    );
                if ran && !audit.iter().any(|r| r["task_id"] == json!(step.task_id)) {
                    problems.push(Problem::mismatch(
                        format!("step {} ({}) audit", step.index, step.task),
                        "at least one audit record",
                        "none",
                    ));
                }
            }
        }
        AuditVerdict::Flagged => {
            if !verdicts
                .iter()
                .any(|(_, v, _)| v.as_deref() == Some("flagged"))
            {
                problems.push(Problem::mismatch(
                    "audit",
                    "at least one record flagged",
                    format!("{} records, none flagged", verdicts.len()),
                ));
            }
        }
    }
}

fn submission_step(t: &TaskStep) -> StepSubmission {
    StepSubmission {
        step: StepRequest {
            task: t.task.clone(),
            version: t.version.clone(),
            inputs: Value::Object(t.inputs.clone()),
        },
        deadline: t.deadline.as_ref().map(super::format::Deadline::resolve),
    }
}

async fn decode(path: &str, response: reqwest::Response) -> Result<Value, String> {
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("{path}: {e}"))?;
    let value: Value = serde_json::from_slice(&body).map_err(|_| {
        format!(
            "{path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        )
    })?;
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!(
            "{path}: HTTP {status}: {}",
            value["message"].as_str().unwrap_or(&value.to_string())
        ))
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Result<Value, String>) -> Result<T, Vec<Problem>> {
    let value = value.map_err(|e| one("admin API", e))?;
    serde_json::from_value(value).map_err(|e| one("admin API", format!("unexpected answer: {e}")))
}
