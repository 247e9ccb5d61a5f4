//! A typed client for the admin API, used by the CLI, the tests and the demo.
//!
//! Each method is one HTTP call (except [`AdminClient::wait_for_plan`],
//! which polls). API errors come back as [`ClientError::Api`] with the
//! server's code, message and, for a refused plan, its problems.
//!
//! Authentication: [`AdminClient::with_token`] makes every call send
//! `Authorization: Bearer <token>` (see [`crate::tokens`] for the roles
//! each call needs), and every POST goes out as JSON (`{}` when the call
//! has no body), as the server requires.
//!
//! What it does not do: retry. Callers decide whether a failure is worth
//! another try.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::api::{
    CancelRequest, ErrorBody, IdentityView, PlanRequest, PlanSubmission, PlanView, Problem,
    RejectRequest, StoredAudit, StoredResult, TaskView, Unattributed, WorkerView,
};

/// How often [`AdminClient::wait_for_plan`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection refused, reset, ...);
    /// check the admin URL and that the orchestrator is running.
    #[error("admin API request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered with an error. For a refused plan `code` is
    /// `plan_invalid` and `problems` lists every problem: fix the plan.
    #[error("{}", api_message(*.status, .code, .message, .problems))]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error code (`plan_invalid`, `not_found`, `conflict`, ...).
        code: String,
        /// The server's message.
        message: String,
        /// For `plan_invalid`, the problems.
        problems: Vec<Problem>,
    },
    /// The server answered with a body this client does not understand
    /// (version mismatch?).
    #[error("unexpected admin API response (HTTP {status}): {message}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// The decode error.
        message: String,
    },
    /// [`AdminClient::wait_for_plan`] gave up; the plan is still running.
    #[error("plan {plan_id} not finished after {waited:?} (status {status:?})")]
    Timeout {
        /// The plan.
        plan_id: String,
        /// How long it waited.
        waited: Duration,
        /// The last status seen.
        status: crate::api::PlanStatus,
    },
}

fn api_message(status: u16, code: &str, message: &str, problems: &[Problem]) -> String {
    let mut out = format!("{message} (HTTP {status}, {code})");
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

impl ClientError {
    /// The problems of a refused plan; empty for any other error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Api { problems, .. } => problems,
            _ => &[],
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The environment variable the CLI reads its admin token from.
pub const TOKEN_ENV: &str = "ORCHESTRATOR_MOCK_TOKEN";

/// A bearer token, kept out of `Debug` output.
#[derive(Clone)]
struct Token(std::sync::Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A client for one orchestrator's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
    token: Option<Token>,
}

impl AdminClient {
    /// A client for `base_url`, e.g. `http://127.0.0.1:7070`, without a
    /// token (only `/healthz` answers it); add one with
    /// [`AdminClient::with_token`].
    pub fn new(base_url: &str) -> Self {
        AdminClient {
            base: base_url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// The same client, sending `token` as `Authorization: Bearer`.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.token = Some(Token(token.trim().into()));
        self
    }

    /// The same client over `http`, e.g. one that trusts the admin API's
    /// TLS certificate.
    #[must_use]
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// A request to `path` (e.g. `/v1/testing/cut`) with this client's
    /// token, for endpoints without a typed method. A POST needs a JSON
    /// body (`.json(..)`).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(Token(t)) => request.bearer_auth(t),
            None => request,
        }
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Submits a plan; it is validated and waits for approval.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `problems` when the plan is refused.
    pub async fn submit_plan(&self, plan: &PlanRequest) -> Result<PlanView, ClientError> {
        self.send(self.http.post(self.url("/v1/plans")).json(plan))
            .await
    }

    /// Submits a plan whose steps may carry deadlines.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `problems` when the plan is refused
    /// (including a deadline that is not RFC 3339 or already passed).
    pub async fn submit(&self, plan: &PlanSubmission) -> Result<PlanView, ClientError> {
        self.send(self.http.post(self.url("/v1/plans")).json(plan))
            .await
    }

    /// Cancels a plan: queued work ends at once, a running step gets a
    /// `Cancel` and the plan ends `cancelled` when its result arrives.
    ///
    /// # Errors
    /// [`ClientError::Api`]: 404 unknown id, 409 already finished.
    pub async fn cancel_plan(&self, id: &str, reason: &str) -> Result<PlanView, ClientError> {
        let body = CancelRequest {
            reason: Some(reason.to_string()),
        };
        self.send(
            self.http
                .post(self.url(&format!("/v1/plans/{id}/cancel")))
                .json(&body),
        )
        .await
    }

    /// Cancels a plan from step `index` on (earlier steps still run).
    ///
    /// # Errors
    /// [`ClientError::Api`]: 404 unknown id or step, 409 step finished.
    pub async fn cancel_step(
        &self,
        id: &str,
        index: usize,
        reason: &str,
    ) -> Result<PlanView, ClientError> {
        let body = CancelRequest {
            reason: Some(reason.to_string()),
        };
        self.send(
            self.http
                .post(self.url(&format!("/v1/plans/{id}/steps/{index}/cancel")))
                .json(&body),
        )
        .await
    }

    /// Every worker identity known, connected or not, with its lease and
    /// the attempts it holds.
    ///
    /// # Errors
    /// Transport or decode errors.
    pub async fn identities(&self) -> Result<Vec<IdentityView>, ClientError> {
        self.send(self.http.get(self.url("/v1/identities"))).await
    }

    /// What the worker-connection rules refused since start.
    ///
    /// # Errors
    /// Transport or decode errors.
    pub async fn admission(&self) -> Result<crate::api::AdmissionView, ClientError> {
        self.send(self.http.get(self.url("/v1/admission"))).await
    }

    /// Results and audit records kept as evidence but part of no plan.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn unattributed(&self) -> Result<Unattributed, ClientError> {
        self.send(self.http.get(self.url("/v1/unattributed"))).await
    }

    /// Reads a plan.
    ///
    /// # Errors
    /// [`ClientError::Api`] (404) for an unknown id, or transport errors.
    pub async fn plan(&self, id: &str) -> Result<PlanView, ClientError> {
        self.send(self.http.get(self.url(&format!("/v1/plans/{id}"))))
            .await
    }

    /// Approves a pending plan.
    ///
    /// # Errors
    /// [`ClientError::Api`]: 404 unknown id, 409 not pending.
    pub async fn approve(&self, id: &str) -> Result<PlanView, ClientError> {
        self.approve_with(id, &crate::api::ApproveRequest::default())
            .await
    }

    /// Approves a pending plan with signed approvals, one per step (see
    /// [`crate::approvals::sign_plan`]).
    ///
    /// # Errors
    /// [`ClientError::Api`]: 404 unknown id, 409 not pending, 422
    /// `approval_invalid` with a problem per step whose approval is
    /// missing or does not hold.
    pub async fn approve_with(
        &self,
        id: &str,
        request: &crate::api::ApproveRequest,
    ) -> Result<PlanView, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/plans/{id}/approve")))
                .json(request),
        )
        .await
    }

    /// Rejects a pending plan.
    ///
    /// # Errors
    /// [`ClientError::Api`]: 404 unknown id, 409 not pending.
    pub async fn reject(&self, id: &str, reason: &str) -> Result<PlanView, ClientError> {
        let body = RejectRequest {
            reason: Some(reason.to_string()),
        };
        self.send(
            self.http
                .post(self.url(&format!("/v1/plans/{id}/reject")))
                .json(&body),
        )
        .await
    }

    /// The stored results of a plan.
    ///
    /// # Errors
    /// [`ClientError::Api`] (404) for an unknown id, or transport errors.
    pub async fn results(&self, id: &str) -> Result<Vec<StoredResult>, ClientError> {
        self.send(self.http.get(self.url(&format!("/v1/plans/{id}/results"))))
            .await
    }

    /// The stored audit records of a plan.
    ///
    /// # Errors
    /// [`ClientError::Api`] (404) for an unknown id, or transport errors.
    pub async fn audit(&self, id: &str) -> Result<Vec<StoredAudit>, ClientError> {
        self.send(self.http.get(self.url(&format!("/v1/plans/{id}/audit"))))
            .await
    }

    /// Polls a plan until it is finished (succeeded, failed, rejected or
    /// cancelled).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] after `timeout`, or any error of [`Self::plan`].
    pub async fn wait_for_plan(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<PlanView, ClientError> {
        let start = Instant::now();
        loop {
            let plan = self.plan(id).await?;
            if plan.status.is_finished() {
                return Ok(plan);
            }
            if start.elapsed() >= timeout {
                return Err(ClientError::Timeout {
                    plan_id: id.to_string(),
                    waited: start.elapsed(),
                    status: plan.status,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The connected worker sessions.
    ///
    /// # Errors
    /// Transport or decode errors.
    pub async fn workers(&self) -> Result<Vec<WorkerView>, ClientError> {
        self.send(self.http.get(self.url("/v1/workers"))).await
    }

    /// The task registry.
    ///
    /// # Errors
    /// Transport or decode errors.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, ClientError> {
        self.send(self.http.get(self.url("/v1/tasks"))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let mut request = request.build()?;
        if let Some(Token(t)) = &self.token {
            let value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map(|mut v| {
                    v.set_sensitive(true);
                    v
                });
            if let Ok(value) = value {
                request
                    .headers_mut()
                    .insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        // The server takes only JSON on POST, bodiless calls included.
        if request.method() == reqwest::Method::POST && request.body().is_none() {
            *request.body_mut() = Some(reqwest::Body::from("{}"));
            request.headers_mut().insert(
                reqwest::header::CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static("application/json"),
            );
        }
        let response = self.http.execute(request).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                status,
                message: e.to_string(),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status,
                code: body.error,
                message: body.message,
                problems: body.problems,
            }),
            Err(_) => Err(ClientError::Api {
                status,
                code: "http_error".into(),
                message: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                problems: Vec::new(),
            }),
        }
    }
}
