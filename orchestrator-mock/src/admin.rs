//! The admin HTTP+JSON API (axum), on its own listener.
//!
//! | Method | Path | Does |
//! |---|---|---|
//! | POST | `/v1/plans` | validate and store a plan (`pending_approval`), 201; 422 `plan_invalid` with `problems` |
//! | GET | `/v1/plans/{id}` | the plan |
//! | POST | `/v1/plans/{id}/approve` | approve (queues step 0); 409 unless pending |
//! | POST | `/v1/plans/{id}/reject` | reject, body `{"reason": "..."}` optional; 409 unless pending |
//! | GET | `/v1/plans/{id}/results` | stored results of the plan |
//! | GET | `/v1/plans/{id}/audit` | stored audit records of the plan |
//! | GET | `/v1/workers` | connected sessions |
//! | GET | `/v1/tasks` | the registry |
//! | GET | `/healthz` | `{"status":"ok"}` |
//!
//! Errors are `{"error": code, "message": ...}` ([`ErrorBody`]); unknown
//! plan ids give 404, malformed JSON bodies 400 with the parse error.
//!
//! What it does not do: authenticate callers. Bind it to loopback or a
//! trusted network; approval is exactly what an attacker would want.

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
    ErrorBody, PlanRequest, PlanView, Problem, RejectRequest, StoredAudit, StoredResult, TaskView,
    WorkerView,
};
use crate::registry::Registry;
use crate::state::{SharedState, StateError};
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Plans, queue, sessions.
    pub state: SharedState,
    /// The task registry.
    pub registry: Arc<Registry>,
    /// Results and audit records.
    pub store: Arc<Store>,
    /// Skip plan validation (`insecure_skip_checks`).
    pub skip_checks: bool,
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        match e {
            StateError::PlanNotFound(_) => {
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
        .route("/v1/plans/{id}/results", get(results))
        .route("/v1/plans/{id}/audit", get(audit))
        .route("/v1/workers", get(workers))
        .route("/v1/tasks", get(tasks))
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
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn submit(
    State(app): State<AdminState>,
    body: Result<Json<PlanRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let Json(request) = body?;
    let resolved = if app.skip_checks {
        app.registry.resolve_unchecked(&request)
    } else {
        app.registry.validate_plan(&request)
    };
    let steps = resolved.map_err(|problems: Vec<Problem>| {
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
    let view = app.lock().submit(request.name, steps);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn plan(State(app): State<AdminState>, Path(id): Path<String>) -> ApiResult<PlanView> {
    Ok(Json(app.lock().plan(&id)?))
}

async fn approve(State(app): State<AdminState>, Path(id): Path<String>) -> ApiResult<PlanView> {
    Ok(Json(app.lock().approve(&id)?))
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
    Ok(Json(app.lock().reject(&id, &reason)?))
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

/// 404 for a plan neither in memory nor in the store (plans are in memory
/// only, but stored records outlive a restart and stay readable).
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
