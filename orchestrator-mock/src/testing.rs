//! Fault injection for contract tests: admin endpoints under
//! `/v1/testing/...` that let a test (the scenario runner,
//! `orchestrator-mock test`) act as a broken or hostile orchestrator towards
//! a real worker.
//!
//! **Off by default.** The hooks exist only when the mock runs with
//! `[testing] fault_injection = true` in its config or `serve
//! --fault-injection`; then [`crate::spawn`] logs a loud warning, the
//! gateway registers each session here and the routes below are added to
//! the admin API. Without the opt-in none of this is reachable (the routes
//! answer 404 like any unknown path).
//!
//! | Method | Path | Does |
//! |---|---|---|
//! | GET | `/v1/testing` | `{"fault_injection": true}` (lets a runner check the opt-in) |
//! | GET | `/v1/testing/sessions` | open and recently ended sessions: identity, whether the worker sent `Draining`, why it ended |
//! | POST | `/v1/testing/cut` | end the stream(s) of `{"identity": ...}` (or all) with `UNAVAILABLE`; the worker must dial again |
//! | POST | `/v1/testing/drain` | send `Drain` to `{"identity": ...}` (or every open session) |
//! | POST | `/v1/testing/assign` | send a raw `Assignment` ([`RawAssignment`]) to a connected identity |
//! | GET | `/v1/testing/answers/{task_id}` | what the worker answered for a task id sent through `assign`: its `Accept`s and results with their audit records |
//!
//! A raw assignment bypasses the registry, the plans, the manifest check
//! and the credit rule: it goes straight down the session's stream. So
//! that the mock's own dispatch keeps to the credit rule afterwards, the
//! `Credit` grants with which the worker later returns the credit a raw
//! assignment used are withheld from the state (only for raw assignments
//! sent while the state saw credit left, i.e. within the worker's credit).
//! While raw assignments are in flight the state does not know about them:
//! do not run plans on the same worker at that moment.
//!
//! What it does not do: change plans, results or the stored audit trail
//! (results of raw assignments go through the gateway like any other, and
//! are stored as results for an unknown task), or authenticate callers
//! (like the rest of the admin API).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pb::worker_message::Kind as Up;
use private_worker_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::ErrorBody;
use crate::state::{Outbound, Outgoing, SharedState, now_rfc3339};

/// The `UNAVAILABLE` message of a stream cut through `/v1/testing/cut`.
pub const CUT_MESSAGE: &str = "stream cut by fault injection (testing)";

/// At most this many ended sessions are remembered (oldest dropped).
pub const MAX_ENDED_SESSIONS: usize = 256;

/// At most this many task ids are watched for answers (oldest dropped).
pub const MAX_WATCHED: usize = 4096;

/// The warning logged at start when the hooks are on.
pub const WARNING: &str = "!!! fault injection is ON: /v1/testing/... lets any admin API caller cut streams, send Drain and send raw assignments that bypass the registry, the manifest and the credit checks. This exists only for contract tests; never use it otherwise. !!!";

/// The fault-injection hooks: the sessions' outgoing channels and what
/// workers answered to raw assignments. Shared by the gateway (which
/// reports to it) and the `/v1/testing` routes.
pub struct Hooks {
    state: SharedState,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    open: BTreeMap<String, OpenSession>,
    ended: VecDeque<SessionView>,
    watched: HashMap<String, AnswersView>,
    watch_order: VecDeque<String>,
}

struct OpenSession {
    view: SessionView,
    tx: Outbound,
    /// Credit used by raw assignments, not yet returned by the worker.
    owed_credit: u32,
}

/// A session as `GET /v1/testing/sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Session id (as in `Welcome`).
    pub session_id: String,
    /// Worker identity from the certificate.
    pub identity: String,
    /// When the session was registered, RFC 3339.
    pub opened_at: String,
    /// Whether the stream is still open.
    pub open: bool,
    /// Whether the worker sent `Draining` on it.
    pub draining_seen: bool,
    /// Whether a `Drain` was sent to it through `/v1/testing/drain`.
    pub drain_sent: bool,
    /// Why it ended, once ended.
    pub end_reason: Option<String>,
    /// When it ended, RFC 3339.
    pub ended_at: Option<String>,
}

/// Body of `POST /v1/testing/cut` and `POST /v1/testing/drain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRequest {
    /// Only the sessions of this identity; all open sessions when absent.
    #[serde(default)]
    pub identity: Option<String>,
    /// For a drain: `Drain.reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Answer of `POST /v1/testing/cut` and `POST /v1/testing/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetedView {
    /// The sessions acted on.
    pub sessions: Vec<SessionView>,
}

/// Body of `POST /v1/testing/assign`: an `Assignment` as raw as the
/// contract allows, sent to one connected identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssignment {
    /// The identity to send it to; may be absent when exactly one worker
    /// identity is connected.
    #[serde(default)]
    pub identity: Option<String>,
    /// `Assignment.task_id` (any string: ids beyond the contract are the
    /// point of some tests).
    pub task_id: String,
    /// `Assignment.attempt`.
    #[serde(default)]
    pub attempt: u32,
    /// `Assignment.plan_id`.
    #[serde(default)]
    pub plan_id: String,
    /// `Assignment.step_index`.
    #[serde(default)]
    pub step_index: u32,
    /// `Assignment.task_name`.
    #[serde(default)]
    pub task_name: String,
    /// `Assignment.task_version`.
    #[serde(default)]
    pub task_version: String,
    /// `Assignment.inputs_json`, sent byte for byte (need not be JSON).
    #[serde(default)]
    pub inputs_json: String,
    /// `Assignment.deadline`, RFC 3339; unset when absent.
    #[serde(default)]
    pub deadline: Option<String>,
    /// `Assignment.idempotent`.
    #[serde(default)]
    pub idempotent: bool,
    /// `Assignment.traceparent`, sent byte for byte (need not be valid).
    #[serde(default)]
    pub traceparent: String,
}

/// Answer of `POST /v1/testing/assign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedView {
    /// The session it went down.
    pub session_id: String,
    /// The identity of that session.
    pub identity: String,
    /// The task id now watched for answers.
    pub task_id: String,
    /// Whether the state saw credit left on the session when it was sent
    /// (if not, it went beyond the worker's credit).
    pub within_credit: bool,
}

/// What a worker answered for one watched task id
/// (`GET /v1/testing/answers/{task_id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswersView {
    /// The task id.
    pub task_id: String,
    /// When the first raw assignment with this task id was sent, RFC 3339.
    pub watched_since: String,
    /// Every `Accept` received for it since, in order.
    pub accepts: Vec<AcceptSeen>,
    /// Every `TaskResult` received for it since, in order.
    pub results: Vec<ResultSeen>,
}

/// One `Accept` seen for a watched task id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptSeen {
    /// `TaskRef.attempt`.
    pub attempt: u32,
    /// The session it came on.
    pub session_id: String,
    /// When it arrived, RFC 3339.
    pub received_at: String,
}

/// One `TaskResult` seen for a watched task id, as the worker sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultSeen {
    /// `TaskRef.attempt`.
    pub attempt: u32,
    /// The session it came on.
    pub session_id: String,
    /// The sender's identity, from its certificate.
    pub worker_identity: String,
    /// When it arrived, RFC 3339.
    pub received_at: String,
    /// The outcome's proto name (`SUCCEEDED`, `REJECTED`, ...).
    pub outcome: String,
    /// `error_code`, `None` when empty.
    pub error_code: Option<String>,
    /// `error_message`, `None` when empty.
    pub error_message: Option<String>,
    /// `output_json` parsed (a JSON string when not JSON), `None` when empty.
    pub output: Option<Value>,
    /// The audit record in the contract's record form (proto field names,
    /// outcome by name, timestamps RFC 3339 or `null`), `None` when the
    /// result carried none.
    pub audit: Option<Value>,
}

impl Hooks {
    /// Empty hooks over the shared state (read for the credit a session has
    /// left when a raw assignment is sent).
    pub fn new(state: SharedState) -> Hooks {
        Hooks {
            state,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The gateway registered a session: remember where its messages go.
    pub fn session_opened(&self, session_id: &str, identity: &str, tx: Outbound) {
        let view = SessionView {
            session_id: session_id.to_string(),
            identity: identity.to_string(),
            opened_at: now_rfc3339(),
            open: true,
            draining_seen: false,
            drain_sent: false,
            end_reason: None,
            ended_at: None,
        };
        self.lock().open.insert(
            session_id.to_string(),
            OpenSession {
                view,
                tx,
                owed_credit: 0,
            },
        );
    }

    /// The gateway's session ended, for `reason`.
    pub fn session_closed(&self, session_id: &str, reason: &str) {
        let mut inner = self.lock();
        if let Some(s) = inner.open.remove(session_id) {
            let mut view = s.view;
            view.open = false;
            view.end_reason = Some(reason.to_string());
            view.ended_at = Some(now_rfc3339());
            inner.ended.push_back(view);
            while inner.ended.len() > MAX_ENDED_SESSIONS {
                inner.ended.pop_front();
            }
        }
    }

    /// Sees one message from a worker before the gateway handles it;
    /// returns what the gateway should handle (`None`: nothing). Records
    /// accepts and results of watched task ids and `Draining`, and withholds
    /// the credit grants that give back credit used by raw assignments.
    pub fn observe(&self, session_id: &str, identity: &str, kind: Up) -> Option<Up> {
        let mut inner = self.lock();
        match kind {
            Up::Credit(mut credit) => {
                if let Some(s) = inner.open.get_mut(session_id) {
                    let withheld = s.owed_credit.min(credit.grant);
                    s.owed_credit -= withheld;
                    credit.grant -= withheld;
                    if withheld > 0 {
                        tracing::info!(
                            withheld,
                            "credit given back for a raw assignment; not passed to the state"
                        );
                    }
                }
                return (credit.grant > 0).then_some(Up::Credit(credit));
            }
            Up::Draining(ref _d) => {
                if let Some(s) = inner.open.get_mut(session_id) {
                    s.view.draining_seen = true;
                }
            }
            Up::Accept(ref accept) => {
                if let Some(task) = &accept.task
                    && let Some(answers) = inner.watched.get_mut(&task.task_id)
                {
                    answers.accepts.push(AcceptSeen {
                        attempt: task.attempt,
                        session_id: session_id.to_string(),
                        received_at: now_rfc3339(),
                    });
                }
            }
            Up::Result(ref result) => {
                if let Some(task) = &result.task
                    && let Some(answers) = inner.watched.get_mut(&task.task_id)
                {
                    answers
                        .results
                        .push(result_seen(session_id, identity, result));
                }
            }
            Up::Hello(_) | Up::Heartbeat(_) => {}
        }
        Some(kind)
    }

    /// Open and recently ended sessions, oldest first.
    pub fn sessions(&self) -> Vec<SessionView> {
        let inner = self.lock();
        let mut all: Vec<SessionView> = inner.ended.iter().cloned().collect();
        let mut open: Vec<SessionView> = inner.open.values().map(|s| s.view.clone()).collect();
        open.sort_by(|a, b| a.opened_at.cmp(&b.opened_at));
        all.extend(open);
        all
    }

    /// Ends the open sessions of `identity` (all when `None`) with
    /// `UNAVAILABLE`; returns them.
    pub fn cut(&self, identity: Option<&str>) -> Vec<SessionView> {
        let inner = self.lock();
        let mut cut = Vec::new();
        for s in inner.open.values() {
            if identity.is_none_or(|i| i == s.view.identity) {
                let status = tonic::Status::unavailable(CUT_MESSAGE);
                let _ = s.tx.send(Outgoing::Close(Box::new(status)));
                cut.push(s.view.clone());
            }
        }
        tracing::warn!(sessions = cut.len(), "fault injection: streams cut");
        cut
    }

    /// Sends `Drain` to the open sessions of `identity` (all when `None`);
    /// returns them.
    pub fn drain(&self, identity: Option<&str>, reason: &str) -> Vec<SessionView> {
        let mut inner = self.lock();
        let mut drained = Vec::new();
        for s in inner.open.values_mut() {
            if identity.is_none_or(|i| i == s.view.identity) {
                let drain = pb::Drain {
                    reason: reason.to_string(),
                };
                let message = pb::OrchestratorMessage {
                    kind: Some(pb::orchestrator_message::Kind::Drain(drain)),
                };
                let _ = s.tx.send(Outgoing::Send {
                    after: 0,
                    message: Box::new(message),
                });
                s.view.drain_sent = true;
                drained.push(s.view.clone());
            }
        }
        tracing::warn!(sessions = drained.len(), "fault injection: Drain sent");
        drained
    }

    /// Sends a raw assignment and starts watching its task id.
    ///
    /// # Errors
    /// A message for the caller: no such connected identity, several
    /// identities and none named, or a deadline that is not RFC 3339.
    pub fn assign(&self, raw: RawAssignment) -> Result<AssignedView, String> {
        let deadline = match raw.deadline.as_deref() {
            None => None,
            Some(text) => {
                let t = crate::state::parse_rfc3339(text)
                    .ok_or_else(|| format!("deadline {text:?} is not RFC 3339"))?;
                let nanos = t.unix_timestamp_nanos();
                Some(prost_types::Timestamp {
                    seconds: i64::try_from(nanos.div_euclid(1_000_000_000))
                        .map_err(|_| "deadline out of range".to_string())?,
                    nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
                })
            }
        };
        // The state's view of the credit, read before taking our own lock
        // (the gateway takes ours inside no state lock, and neither do we).
        let credits: HashMap<String, u32> = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .workers()
            .into_iter()
            .map(|w| (w.session_id, w.credit))
            .collect();
        let mut inner = self.lock();
        let candidates: Vec<&String> = inner
            .open
            .iter()
            .filter(|(_, s)| raw.identity.as_deref().is_none_or(|i| i == s.view.identity))
            .map(|(id, _)| id)
            .collect();
        let identities: std::collections::BTreeSet<&str> = candidates
            .iter()
            .filter_map(|id| inner.open.get(*id).map(|s| s.view.identity.as_str()))
            .collect();
        let session_id = match (candidates.last(), identities.len()) {
            (None, _) => {
                return Err(match &raw.identity {
                    Some(i) => format!("no open session of identity {i:?}"),
                    None => "no worker is connected".into(),
                });
            }
            (Some(_), n) if n > 1 => {
                return Err(format!(
                    "{n} identities are connected; name one with \"identity\""
                ));
            }
            // The newest session of the identity (ids are UUIDv7).
            (Some(id), _) => (*id).clone(),
        };
        let within_credit = credits.get(&session_id).is_some_and(|c| *c > 0);
        let session = inner
            .open
            .get_mut(&session_id)
            .ok_or_else(|| "session ended".to_string())?;
        if within_credit {
            session.owed_credit += 1;
        }
        let identity = session.view.identity.clone();
        let assignment = pb::Assignment {
            task_id: raw.task_id.clone(),
            attempt: raw.attempt,
            plan_id: raw.plan_id,
            step_index: raw.step_index,
            task_name: raw.task_name,
            task_version: raw.task_version,
            inputs_json: raw.inputs_json,
            deadline,
            approval: None,
            idempotent: raw.idempotent,
            traceparent: raw.traceparent,
        };
        let message = pb::OrchestratorMessage {
            kind: Some(pb::orchestrator_message::Kind::Assignment(assignment)),
        };
        session
            .tx
            .send(Outgoing::Send {
                after: 0,
                message: Box::new(message),
            })
            .map_err(|_| "session ended".to_string())?;
        if !inner.watched.contains_key(&raw.task_id) {
            inner.watched.insert(
                raw.task_id.clone(),
                AnswersView {
                    task_id: raw.task_id.clone(),
                    watched_since: now_rfc3339(),
                    ..AnswersView::default()
                },
            );
            inner.watch_order.push_back(raw.task_id.clone());
            while inner.watch_order.len() > MAX_WATCHED {
                if let Some(old) = inner.watch_order.pop_front() {
                    inner.watched.remove(&old);
                }
            }
        }
        tracing::warn!(task_id = %crate::gateway::shown(&raw.task_id), %session_id, within_credit, "fault injection: raw assignment sent");
        Ok(AssignedView {
            session_id,
            identity,
            task_id: raw.task_id,
            within_credit,
        })
    }

    /// What the worker answered for a watched task id.
    pub fn answers(&self, task_id: &str) -> Option<AnswersView> {
        self.lock().watched.get(task_id).cloned()
    }
}

fn result_seen(session_id: &str, identity: &str, result: &pb::TaskResult) -> ResultSeen {
    let outcome = |o: i32| {
        pb::Outcome::try_from(o)
            .unwrap_or(pb::Outcome::Unspecified)
            .as_str_name()
            .to_string()
    };
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let audit = result.audit.as_ref().map(|a| {
        serde_json::json!({
            "task_id": a.task_id,
            "attempt": a.attempt,
            "plan_id": a.plan_id,
            "task_name": a.task_name,
            "task_version": a.task_version,
            "inputs_json": a.inputs_json,
            "output_json": a.output_json,
            "received_at": a.received_at.and_then(rfc3339),
            "started_at": a.started_at.and_then(rfc3339),
            "finished_at": a.finished_at.and_then(rfc3339),
            "outcome": outcome(a.outcome),
            "error_code": a.error_code,
            "error_message": a.error_message,
            "worker_identity": a.worker_identity,
            "sequence": a.sequence,
            "prev_hash": a.prev_hash,
            "record_hash": a.record_hash,
        })
    });
    ResultSeen {
        attempt: result.task.as_ref().map_or(0, |t| t.attempt),
        session_id: session_id.to_string(),
        worker_identity: identity.to_string(),
        received_at: now_rfc3339(),
        outcome: outcome(result.outcome),
        error_code: text(&result.error_code),
        error_message: text(&result.error_message),
        output: text(&result.output_json)
            .map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t))),
        audit,
    }
}

fn rfc3339(t: prost_types::Timestamp) -> Option<String> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The `/v1/testing` routes over `hooks`, to merge into the admin router.
pub fn router(hooks: Arc<Hooks>) -> Router {
    Router::new()
        .route("/v1/testing", get(status))
        .route("/v1/testing/sessions", get(sessions))
        .route("/v1/testing/cut", post(cut))
        .route("/v1/testing/drain", post(drain))
        .route("/v1/testing/assign", post(assign))
        .route("/v1/testing/answers/{task_id}", get(answers))
        .with_state(hooks)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        error: code.into(),
        message,
        problems: Vec::new(),
    };
    (status, Json(body)).into_response()
}

/// A JSON body that may be empty (then the default); the error is the
/// 400 answer's message.
fn body_or_default<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"))
}

async fn status() -> Json<Value> {
    Json(serde_json::json!({"fault_injection": true}))
}

async fn sessions(State(hooks): State<Arc<Hooks>>) -> Json<Vec<SessionView>> {
    Json(hooks.sessions())
}

async fn cut(State(hooks): State<Arc<Hooks>>, body: axum::body::Bytes) -> Response {
    match body_or_default::<TargetRequest>(&body) {
        Ok(t) => Json(TargetedView {
            sessions: hooks.cut(t.identity.as_deref()),
        })
        .into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, "bad_request", message),
    }
}

async fn drain(State(hooks): State<Arc<Hooks>>, body: axum::body::Bytes) -> Response {
    match body_or_default::<TargetRequest>(&body) {
        Ok(t) => {
            let reason = t
                .reason
                .unwrap_or_else(|| "drain requested by fault injection (testing)".into());
            Json(TargetedView {
                sessions: hooks.drain(t.identity.as_deref(), &reason),
            })
            .into_response()
        }
        Err(message) => error(StatusCode::BAD_REQUEST, "bad_request", message),
    }
}

async fn assign(State(hooks): State<Arc<Hooks>>, body: axum::body::Bytes) -> Response {
    let raw: RawAssignment = match serde_json::from_slice(&body) {
        Ok(raw) => raw,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bad JSON body: {e}"),
            );
        }
    };
    match hooks.assign(raw) {
        Ok(view) => Json(view).into_response(),
        Err(message) => error(StatusCode::CONFLICT, "conflict", message),
    }
}

async fn answers(State(hooks): State<Arc<Hooks>>, Path(task_id): Path<String>) -> Response {
    match hooks.answers(&task_id) {
        Some(view) => Json(view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("task id {task_id:?} was never sent through /v1/testing/assign"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn hooks() -> (Hooks, mpsc::UnboundedReceiver<Outgoing>) {
        let state = Arc::new(Mutex::new(crate::state::State::new(false)));
        let hooks = Hooks::new(state);
        let (tx, rx) = mpsc::unbounded_channel();
        hooks.session_opened("s1", "spiffe://t/worker/a", tx);
        (hooks, rx)
    }

    #[test]
    fn a_raw_assignment_goes_down_the_stream_and_its_answers_are_kept() {
        let (hooks, mut rx) = hooks();
        let view = hooks
            .assign(RawAssignment {
                task_id: "h-1".into(),
                attempt: 1,
                task_name: "not.in.manifest".into(),
                ..RawAssignment::default()
            })
            .unwrap();
        assert_eq!(view.session_id, "s1");
        match rx.try_recv().unwrap() {
            Outgoing::Send { after: 0, message } => match message.kind {
                Some(pb::orchestrator_message::Kind::Assignment(a)) => {
                    assert_eq!((a.task_id.as_str(), a.attempt), ("h-1", 1));
                    assert_eq!(a.task_name, "not.in.manifest");
                }
                other => panic!("sent {other:?}"),
            },
            other => panic!("sent {other:?}"),
        }
        let task = Some(pb::TaskRef {
            task_id: "h-1".into(),
            attempt: 1,
        });
        let result = pb::TaskResult {
            task: task.clone(),
            outcome: pb::Outcome::Rejected as i32,
            error_code: "not_allowed".into(),
            audit: Some(pb::AuditRecord {
                task_id: "h-1".into(),
                ..pb::AuditRecord::default()
            }),
            ..pb::TaskResult::default()
        };
        assert!(hooks.observe("s1", "id", Up::Result(result)).is_some());
        let answers = hooks.answers("h-1").unwrap();
        assert!(answers.accepts.is_empty());
        assert_eq!(answers.results[0].outcome, "REJECTED");
        assert_eq!(
            answers.results[0].error_code.as_deref(),
            Some("not_allowed")
        );
        assert_eq!(
            answers.results[0].audit.as_ref().unwrap()["started_at"],
            Value::Null
        );
        assert!(hooks.answers("other").is_none());
    }

    #[test]
    fn credit_returned_for_a_raw_assignment_within_credit_is_withheld_from_the_state() {
        let (hooks, _rx) = hooks();
        hooks.lock().open.get_mut("s1").unwrap().owed_credit = 2;
        let grant = |n| Up::Credit(pb::Credit { grant: n });
        assert!(hooks.observe("s1", "id", grant(1)).is_none());
        match hooks.observe("s1", "id", grant(3)) {
            Some(Up::Credit(c)) => assert_eq!(c.grant, 2),
            other => panic!("{other:?}"),
        }
        match hooks.observe("s1", "id", grant(1)) {
            Some(Up::Credit(c)) => assert_eq!(c.grant, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cut_and_drain_reach_the_named_identity_and_sessions_remember_how_they_ended() {
        let (hooks, mut rx) = hooks();
        assert!(hooks.cut(Some("someone else")).is_empty());
        assert_eq!(hooks.drain(None, "why").len(), 1);
        assert!(matches!(rx.try_recv().unwrap(), Outgoing::Send { .. }));
        assert_eq!(hooks.cut(Some("spiffe://t/worker/a")).len(), 1);
        match rx.try_recv().unwrap() {
            Outgoing::Close(status) => assert_eq!(status.code(), tonic::Code::Unavailable),
            other => panic!("{other:?}"),
        }
        let draining = Up::Draining(pb::Draining::default());
        assert!(hooks.observe("s1", "id", draining).is_some());
        hooks.session_closed("s1", "worker closed the stream");
        let sessions = hooks.sessions();
        assert_eq!(sessions.len(), 1);
        assert!(!sessions[0].open && sessions[0].draining_seen && sessions[0].drain_sent);
        assert!(hooks.assign(RawAssignment::default()).is_err());
    }
}
