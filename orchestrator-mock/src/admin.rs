//! The admin HTTP+JSON API (axum), on its own listener.
//!
//! | Method | Path | Role | Does |
//! |---|---|---|---|
//! | POST | `/v1/plans` | submit | validate and store a plan (`pending_approval`), 201; 422 `plan_invalid` with `problems`; a step may carry `"deadline": "<RFC 3339>"`; the plan may carry a W3C `"traceparent"` (422 `traceparent_invalid` when it is not one; absent: the orchestrator makes one); 422 `plan_denied` when a task's policy is `deny`; approved at once when every task's policy is `auto` ([`crate::policy`]) |
//! | GET | `/v1/plans/{id}` | read | the plan, each step with its attempts (holder, accepted, lease expiry, outcome) |
//! | POST | `/v1/plans/{id}/approve` | approve | approve (queues step 0); 409 unless pending; with `"expect_digest"` in the body, 409 `digest_mismatch` unless it is the plan's review digest ([`crate::approvals::review_digest`]) |
//! | POST | `/v1/plans/{id}/reject` | approve | reject, body `{"reason": "..."}` optional; 409 unless pending |
//! | POST | `/v1/plans/{id}/cancel` | submit | cancel the plan, body `{"reason": "..."}` optional; 409 when finished |
//! | POST | `/v1/plans/{id}/steps/{index}/cancel` | submit | cancel from that step on; 409 when it finished, 404 no such step |
//! | GET | `/v1/plans/{id}/results` | read | stored results of the plan |
//! | GET | `/v1/plans/{id}/audit` | read | stored audit records of the plan |
//! | GET | `/v1/workers` | read | connected sessions (with lease and held attempts) |
//! | GET | `/v1/identities` | read | every worker identity known, connected or not: last seen, lease expiry, held attempts |
//! | GET | `/v1/admission` | what the worker-connection rules refused since start (identity not admitted, per-identity limit, before-`Hello` limit) and the connections before `Hello` now |
//! | GET | `/v1/unattributed` | read | results (and their audit records) kept as evidence but part of no plan: sent for an attempt never assigned, or assigned to another identity, each with the reason |
//! | GET | `/v1/tasks` | read | the registry |
//! | GET | `/healthz` | none | `{"status":"ok"}` |
//! | GET | `/console`, `/v1/console/plans` | none, read | the approval console ([`crate::console`]) |
//! | POST, GET | `/mcp` | submit | the MCP server (streamable HTTP): each task a tool ([`crate::mcp`]) |
//! | any | `/v1/testing/...` | operate | fault-injection hooks, when enabled ([`crate::testing`]) |
//!
//! Who may call it ([`crate::admin_auth`], one middleware in front of
//! every route, so the handlers here never see a refused request):
//! `Host` must be one of `[admin] allowed_hosts` (421 otherwise), an
//! `Origin`, when sent, one of their http/https origins (403), every call
//! but `/healthz` needs `Authorization: Bearer <token>` of a token in the
//! token file (401 `unauthenticated`, `WWW-Authenticate: Bearer`) holding
//! the role in the table (403 `forbidden`), and every POST needs
//! `Content-Type: application/json`, bodiless ones included (415). Tokens
//! and roles: [`crate::tokens`]. The `submit` and `approve` roles are
//! meant for different holders: the agent that proposes a plan must not
//! be able to consent to it.
//!
//! Errors are `{"error": code, "message": ...}` ([`ErrorBody`]); unknown
//! plan ids give 404, malformed JSON bodies 400 with the parse error.
//!
//! Every change (submit, approve, reject, cancel) is durable in the state
//! store before the answer; when the store does not commit within
//! [`DURABLE_WAIT`] the answer is 503 `store_unavailable` (the change is
//! kept in memory and committed when the store recovers).
//!
//! What it does not do: listen off loopback without TLS ([`crate::spawn`]
//! refuses to start; see [`crate::admin_tls`]), or rate-limit callers.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::{
    ApproveRequest, CancelRequest, ErrorBody, IdentityView, PlanSubmission, PlanView, Problem,
    RejectRequest, StoredAudit, StoredResult, TaskView, Unattributed, WorkerView,
};
use crate::durable::journal::Durable;
use crate::registry::Registry;
use crate::state::{SharedState, StateError};
use crate::store::Store;
use private_worker_proto::trace::TraceParent;

/// How long a change waits to be durable before the API answers 503.
pub const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Plans, queue, sessions.
    pub state: SharedState,
    /// How far the state store has committed.
    pub durable: Durable,
    /// The task registry.
    pub registry: Arc<Registry>,
    /// Results and audit records.
    pub store: Arc<Store>,
    /// Skip plan validation (`insecure_skip_checks`).
    pub skip_checks: bool,
    /// The approver keys approvals are checked with (none: plans are
    /// approved without signatures).
    pub approval_keys: crate::approvals::ApprovalKeys,
    /// The worker-connection rules, for their counters.
    pub admission: Arc<crate::admission::Admission>,
    /// The registry's approval policies and the auto-approver.
    pub policies: Arc<crate::policy::Policies>,
}

/// An error response: status plus [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: code.into(),
                message: message.into(),
                problems: Vec::new(),
            },
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The error's JSON body (code, message, problems).
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        match e {
            StateError::PlanNotFound(_) | StateError::StepNotFound(..) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StateError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        Self::bad_request(format!("bad JSON body: {}", e.body_text()))
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "store read failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/plans", post(submit))
        .route("/v1/plans/{id}", get(plan))
        .route("/v1/plans/{id}/approve", post(approve))
        .route("/v1/plans/{id}/reject", post(reject))
        .route("/v1/plans/{id}/cancel", post(cancel_plan))
        .route("/v1/plans/{id}/steps/{index}/cancel", post(cancel_step))
        .route("/v1/identities", get(identities))
        .route("/v1/admission", get(admission))
        .route("/v1/unattributed", get(unattributed))
        .route("/v1/plans/{id}/results", get(results))
        .route("/v1/plans/{id}/audit", get(audit))
        .route("/v1/workers", get(workers))
        .route("/v1/tasks", get(tasks))
        .merge(crate::console::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

impl AdminState {
    fn lock(&self) -> std::sync::MutexGuard<'_, crate::state::State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a change to the state and answers once it is durable.
    async fn change(
        &self,
        apply: impl FnOnce(&mut crate::state::State) -> Result<PlanView, StateError>,
    ) -> Result<PlanView, ApiError> {
        let (view, seq) = {
            let mut state = self.lock();
            let view = apply(&mut state)?;
            (view, state.last_change())
        };
        self.durable.wait(seq, DURABLE_WAIT).await.map_err(|e| {
            tracing::error!(error = %e, "admin change not durable in time");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("{e}; the change is kept and committed when the store recovers"),
            )
        })?;
        Ok(view)
    }
}

/// Checks each step's deadline: an RFC 3339 time in the future.
fn check_deadlines(plan: &PlanSubmission) -> Vec<Problem> {
    let now = time::OffsetDateTime::now_utc();
    plan.steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let text = s.deadline.as_deref()?;
            let message = match crate::state::parse_rfc3339(text) {
                None => {
                    format!("deadline {text:?} is not an RFC 3339 time like 2026-05-01T12:00:00Z")
                }
                Some(d) if d <= now => format!("deadline {text:?} has already passed"),
                Some(_) => return None,
            };
            Some(Problem {
                step: u32::try_from(i).unwrap_or(u32::MAX),
                task: s.step.task.clone(),
                path: String::new(),
                message,
            })
        })
        .collect()
}

/// Checks the submitted `traceparent`, if any (W3C Trace Context level 1).
///
/// # Errors
/// 422 `traceparent_invalid` naming the field and the rule it breaks (the
/// value is not echoed).
fn check_traceparent(text: Option<&str>) -> Result<Option<TraceParent>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    TraceParent::parse(text).map(Some).map_err(|e| {
        tracing::info!(reason = %e, "plan refused: its traceparent is invalid");
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "traceparent_invalid",
            format!(
                "traceparent {e}; send a W3C traceparent like \
                 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 (lower-case hex, \
                 ids not all zeros), or leave it out and the orchestrator starts a trace"
            ),
        )
    })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn submit(
    State(app): State<AdminState>,
    caller: Option<axum::Extension<crate::tokens::Caller>>,
    body: Result<Json<PlanSubmission>, JsonRejection>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let Json(submission) = body?;
    let caller = caller.map_or_else(|| "-".to_string(), |c| c.0.name);
    let view = submit_plan(&app, submission, &caller).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Validates and stores a plan submitted by the token `caller`, applying
/// the registry's approval policies ([`crate::policy`]): refused when a
/// task is `deny`, approved by the auto-approver when every task is
/// `auto` (within its limits). What `POST /v1/plans` and the MCP tools
/// share.
///
/// # Errors
/// 422 `traceparent_invalid`, `plan_invalid` or `plan_denied` (with the
/// problems), 503 when the store does not commit in time.
pub async fn submit_plan(
    app: &AdminState,
    submission: PlanSubmission,
    caller: &str,
) -> Result<PlanView, ApiError> {
    let traceparent = check_traceparent(submission.traceparent.as_deref())?;
    let request = submission.request();
    let resolved = if app.skip_checks {
        app.registry.resolve_unchecked(&request)
    } else {
        app.registry.validate_plan(&request)
    };
    let deadline_problems = check_deadlines(&submission);
    let steps = match resolved {
        Ok(steps) if deadline_problems.is_empty() => Ok(steps),
        Ok(_) => Err(deadline_problems),
        Err(mut problems) => {
            problems.extend(deadline_problems);
            Err(problems)
        }
    }
    .map_err(|problems: Vec<Problem>| {
        tracing::info!(problems = problems.len(), "plan refused");
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: ErrorBody {
                error: "plan_invalid".into(),
                message: format!(
                    "the plan does not match the task registry ({} problem{})",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ),
                problems,
            },
        }
    })?;
    let denied = crate::policy::denied(
        &app.registry,
        steps.iter().map(|s| (s.task.as_str(), s.version.as_str())),
    );
    if !denied.is_empty() {
        tracing::info!(
            caller,
            problems = denied.len(),
            "plan refused: a task's approval policy is deny"
        );
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: ErrorBody {
                error: "plan_denied".into(),
                message: "the plan names a task that the registry's approval policy denies; nothing was stored".into(),
                problems: denied,
            },
        });
    }
    let decision = app
        .policies
        .decide(&app.registry, &steps, caller, std::time::Instant::now());
    let deadlines = submission
        .steps
        .iter()
        .map(|s| s.deadline.clone())
        .collect();
    let view = app
        .change(|state| {
            Ok(state.submit_as(
                request.name,
                steps,
                deadlines,
                traceparent,
                Some(caller.to_string()).filter(|c| c != "-"),
            ))
        })
        .await?;
    match decision {
        crate::policy::Decision::Auto => Ok(auto_approve(app, view).await),
        crate::policy::Decision::Human { reason } => {
            if let Some(reason) = reason {
                tracing::info!(plan_id = %view.id, caller, %reason, "plan not auto-approved");
            }
            Ok(view)
        }
    }
}

/// Approves `plan` with the auto-approver's signatures, checked like a
/// person's; on any failure the plan stays pending for a person (logged).
async fn auto_approve(app: &AdminState, plan: PlanView) -> PlanView {
    let now = std::time::SystemTime::now();
    let key = app.policies.key_id().unwrap_or("-").to_string();
    let checked = app.policies.sign(&plan, now).and_then(|approvals| {
        app.approval_keys
            .check(&plan, approvals, now)
            .map_err(|problems| {
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
    });
    let approvals = match checked {
        Ok(approvals) => approvals,
        Err(e) => {
            tracing::error!(plan_id = %plan.id, key_id = %key, error = %e, "the auto-approver could not approve the plan; it waits for a person");
            return plan;
        }
    };
    let id = plan.id.clone();
    match app
        .change(|state| state.approve_signed(&id, approvals))
        .await
    {
        Ok(view) => {
            tracing::info!(plan_id = %id, approved_by = %format!("auto:{key}"), "plan approved by the auto-approver");
            view
        }
        Err(e) => {
            tracing::error!(plan_id = %id, error = ?e.body, "auto-approval not stored");
            plan
        }
    }
}

async fn plan(State(app): State<AdminState>, Path(id): Path<String>) -> ApiResult<PlanView> {
    Ok(Json(app.lock().plan(&id)?))
}

async fn approve(
    State(app): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<PlanView> {
    let (expected, body) =
        crate::console::split_expected_digest(&body).map_err(ApiError::bad_request)?;
    let request: ApproveRequest = optional_body(&body)?;
    if let Some(expected) = expected {
        let digest = crate::approvals::review_digest(&app.lock().plan(&id)?);
        if expected != digest {
            tracing::warn!(plan_id = %id, "approval refused: the plan's review digest is not the one the approver saw");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "digest_mismatch",
                format!(
                    "plan {id} is not the plan that was reviewed: its review digest is {digest}, the approval expected {expected}; nothing was approved, review it again"
                ),
            ));
        }
    }
    // The policy may have turned a task to `deny` after the plan was stored
    // (a registry change and a restart): it is refused here too.
    let stored = app.lock().plan(&id)?;
    let denied = crate::policy::denied(
        &app.registry,
        stored
            .steps
            .iter()
            .map(|s| (s.task.as_str(), s.version.as_str())),
    );
    if !denied.is_empty() {
        tracing::warn!(plan_id = %id, problems = denied.len(), "approval refused: a task's approval policy is now deny");
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: ErrorBody {
                error: "plan_denied".into(),
                message: format!(
                    "plan {id} names a task that the registry's approval policy now denies; nothing was approved (reject the plan)"
                ),
                problems: denied,
            },
        });
    }
    let approvals = if app.approval_keys.required() || !request.approvals.is_empty() {
        let plan = app.lock().plan(&id)?;
        app.approval_keys
            .check(&plan, request.approvals, std::time::SystemTime::now())
            .map_err(|problems| ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ErrorBody {
                    error: "approval_invalid".into(),
                    message: format!(
                        "plan {id} was not approved: {} step(s) lack a valid signed approval",
                        problems.len()
                    ),
                    problems,
                },
            })?
    } else {
        Vec::new()
    };
    Ok(Json(
        app.change(|state| state.approve_signed(&id, approvals))
            .await?,
    ))
}

async fn reject(
    State(app): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<PlanView> {
    let request: RejectRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RejectRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?
    };
    let reason = request.reason.unwrap_or_else(|| "no reason given".into());
    Ok(Json(app.change(|state| state.reject(&id, &reason)).await?))
}

/// An optional JSON body (empty means the default).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

async fn cancel_plan(
    State(app): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<PlanView> {
    let request: CancelRequest = optional_body(&body)?;
    let reason = request
        .reason
        .unwrap_or_else(|| "plan cancelled through the admin API".into());
    Ok(Json(
        app.change(|state| state.cancel(&id, 0, &reason)).await?,
    ))
}

async fn cancel_step(
    State(app): State<AdminState>,
    Path((id, index)): Path<(String, usize)>,
    body: Bytes,
) -> ApiResult<PlanView> {
    let request: CancelRequest = optional_body(&body)?;
    let reason = request
        .reason
        .unwrap_or_else(|| format!("step {index} cancelled through the admin API"));
    Ok(Json(
        app.change(|state| state.cancel(&id, index, &reason))
            .await?,
    ))
}

async fn identities(State(app): State<AdminState>) -> Json<Vec<IdentityView>> {
    Json(app.lock().identities())
}

async fn admission(State(app): State<AdminState>) -> Json<crate::api::AdmissionView> {
    Json(app.admission.view())
}

async fn results(
    State(app): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Vec<StoredResult>> {
    let stored = app.store.results(&id)?;
    known(&app, &id, stored.is_empty())?;
    Ok(Json(stored))
}

async fn audit(
    State(app): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Vec<StoredAudit>> {
    let stored = app.store.audit(&id)?;
    known(&app, &id, stored.is_empty())?;
    Ok(Json(stored))
}

async fn unattributed(State(app): State<AdminState>) -> ApiResult<Unattributed> {
    // Stored under no plan: the plan id is the empty string.
    Ok(Json(Unattributed {
        results: app.store.results("")?,
        audit: app.store.audit("")?,
    }))
}

/// 404 for a plan neither in the state nor in the result files (results
/// of a plan from a data_dir that predates the state store stay readable).
fn known(app: &AdminState, id: &str, nothing_stored: bool) -> Result<(), ApiError> {
    match app.lock().plan(id) {
        Err(e) if nothing_stored => Err(e.into()),
        _ => Ok(()),
    }
}

async fn workers(State(app): State<AdminState>) -> Json<Vec<WorkerView>> {
    Json(app.lock().workers())
}

async fn tasks(State(app): State<AdminState>) -> Json<Vec<TaskView>> {
    Json(app.registry.views())
}
