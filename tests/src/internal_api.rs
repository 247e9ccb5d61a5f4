//! A small internal API standing for a company's CRM, used by the demo and
//! the end-to-end tests.
//!
//! It requires `Authorization: Bearer <token>` on every request (the token
//! only the worker knows) and records every request it receives, so tests
//! can prove what reached it and what never did, with its W3C
//! `traceparent` header (as a CRM would log it, so a task can be followed
//! from the agent's request to here). Endpoints:
//! - `POST /tickets` `{title, priority?, customer?}` -> 201 with the ticket.
//! - `GET /tickets/{id}` -> 200 with the ticket, 404 if unknown.
//! - `POST /tickets/{id}/comments` `{text}` -> 201.
//! - `POST /echo` -> 200 echoing the request headers and body back
//!   (including the credential: the worker must redact it).
//! - `GET /slow/{ms}` and `POST /slow/{ms}` -> 200 after a delay.
//! - `GET /leak/{form}` -> 200 answering the caller's own bearer token in
//!   one encoding ([`LEAK_FORMS`]), inside a longer value, next to fields
//!   that must survive the worker's masking (a hostile or careless API: the
//!   worker must mask every form).
//!
//! It is a test double, not a CRM: state lives in memory.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// One request as the API received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers, as text.
    pub headers: Vec<(String, String)>,
    /// Body, as text.
    pub body: String,
    /// Every `traceparent` header value received, in order (a well-behaved
    /// caller sends exactly one).
    pub traceparents: Vec<String>,
}

impl RecordedRequest {
    /// The request's one `traceparent`, when it carried exactly one.
    pub fn traceparent(&self) -> Option<&str> {
        match self.traceparents.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<RecordedRequest>,
    tickets: Vec<Value>,
}

#[derive(Clone)]
struct AppState {
    token: Arc<Mutex<String>>,
    inner: Arc<Mutex<Inner>>,
}

/// A running internal API.
pub struct InternalApi {
    addr: SocketAddr,
    state: AppState,
    shutdown: tokio_util::sync::CancellationToken,
}

impl InternalApi {
    /// Starts the API on `addr` (use port 0 for any free port), accepting
    /// `token` as its only credential.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn start(addr: SocketAddr, token: &str) -> std::io::Result<InternalApi> {
        let state = AppState {
            token: Arc::new(Mutex::new(token.to_string())),
            inner: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/tickets", post(create_ticket))
            .route("/tickets/{id}", get(get_ticket))
            .route("/tickets/{id}/comments", post(add_comment))
            .route("/echo", post(echo))
            .route("/slow/{ms}", get(slow).post(slow))
            .route("/leak/{form}", get(leak))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                record_and_authorize,
            ))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(InternalApi {
            addr,
            state,
            shutdown,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, authorized or not.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.inner.lock().unwrap().requests.clone()
    }

    /// Replaces the accepted token (a credential rotation).
    pub fn set_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = token.to_string();
    }

    /// Stops the server.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for InternalApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn record_and_authorize(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let traceparents: Vec<String> = parts
        .headers
        .get_all("traceparent")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    tracing::info!(method = %parts.method, uri = %parts.uri, traceparent = ?traceparents, "internal API request");
    state.inner.lock().unwrap().requests.push(RecordedRequest {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        traceparents,
    });
    let expected = format!("Bearer {}", state.token.lock().unwrap());
    let presented = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if presented != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized", "message": "a valid bearer token is required"})),
        )
            .into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

async fn create_ticket(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let Some(title) = body.get("title").and_then(Value::as_str) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "title is required"})),
        )
            .into_response();
    };
    let mut inner = state.inner.lock().unwrap();
    let id = format!("T-{}", 1000 + inner.tickets.len() + 1);
    let ticket = json!({
        "id": id,
        "title": title,
        "priority": body.get("priority").cloned().unwrap_or(json!(3)),
        "customer": body.get("customer").cloned().unwrap_or(Value::Null),
        "status": "open",
        "comments": [],
    });
    inner.tickets.push(ticket.clone());
    (StatusCode::CREATED, Json(ticket)).into_response()
}

async fn get_ticket(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let inner = state.inner.lock().unwrap();
    match inner.tickets.iter().find(|t| t["id"] == id) {
        Some(t) => Json(t.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such ticket", "id": id})),
        )
            .into_response(),
    }
}

async fn add_comment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut inner = state.inner.lock().unwrap();
    match inner.tickets.iter_mut().find(|t| t["id"] == id) {
        Some(t) => {
            let comment = json!({"text": body.get("text").cloned().unwrap_or(Value::Null)});
            if let Some(list) = t["comments"].as_array_mut() {
                list.push(comment.clone());
            }
            (
                StatusCode::CREATED,
                Json(json!({"ticket": id, "comment": comment})),
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such ticket", "id": id})),
        )
            .into_response(),
    }
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: String) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    Json(
        json!({"method": method.to_string(), "uri": uri.to_string(), "headers": headers, "body": body}),
    )
}

async fn slow(Path(ms): Path<u64>) -> Json<Value> {
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Json(json!({"slept_ms": ms}))
}

/// The encodings `GET /leak/{form}` answers the caller's token in: the raw
/// value; standard base64 and base64url with the token at offset 0, 1 or 2
/// of a 3-byte group inside a longer encoded value; percent-encoding with
/// upper- and lower-case hex; hex in lower and upper case; and a
/// JSON-escaped token inside a body that is not JSON itself (JSONP, so the
/// worker keeps it as text and the escapes stay).
pub const LEAK_FORMS: [&str; 10] = [
    "raw",
    "base64-0",
    "base64-1",
    "base64-2",
    "base64url-0",
    "base64url-1",
    "base64url-2",
    "url",
    "hex",
    "json",
];

/// Text next to the leaked token that must come through the worker intact.
pub const LEAK_KEPT: &str = "the rest of the answer stays";

/// The token in `form` (one of [`LEAK_FORMS`]), inside the value
/// `GET /leak/{form}` answers; `None` for an unknown form.
pub fn leak_encoding(token: &str, form: &str) -> Option<Vec<String>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let embedded = |offset: usize| {
        let mut bytes = b"id:"[..offset].to_vec();
        bytes.extend_from_slice(token.as_bytes());
        bytes.extend_from_slice(b":expires=3600");
        bytes
    };
    let b64 = |engine: &base64::engine::GeneralPurpose, form: &str| {
        let offset: usize = form.rsplit('-').next()?.parse().ok()?;
        Some(vec![engine.encode(embedded(offset))])
    };
    match form {
        "raw" => Some(vec![format!("token={token}")]),
        "base64-0" | "base64-1" | "base64-2" => b64(&STANDARD, form),
        "base64url-0" | "base64url-1" | "base64url-2" => b64(&URL_SAFE, form),
        "url" => {
            let upper = percent_encoding::utf8_percent_encode(token, RESERVED).to_string();
            let mut lower = String::new();
            let mut hex_left = 0;
            for c in upper.chars() {
                if c == '%' {
                    hex_left = 2;
                    lower.push(c);
                } else if hex_left > 0 {
                    hex_left -= 1;
                    lower.push(c.to_ascii_lowercase());
                } else {
                    lower.push(c);
                }
            }
            Some(vec![
                format!("https://sso.internal/cb?token={upper}&next=%2Fhome"),
                format!("https://sso.internal/cb?token={lower}&next=%2fhome"),
            ])
        }
        "hex" => Some(vec![
            format!("0x{}", hex::encode(token)),
            format!("0x{}", hex::encode_upper(token)),
        ]),
        "json" => {
            let escaped = serde_json::to_string(token).ok()?.replace('/', "\\/");
            Some(vec![escaped[1..escaped.len() - 1].to_string()])
        }
        _ => None,
    }
}

async fn leak(Path(form): Path<String>, headers: HeaderMap) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let Some(leaked) = leak_encoding(token, &form) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such form", "form": form})),
        )
            .into_response();
    };
    if form == "json" {
        let body = format!(
            "callback({{\"form\":\"json\",\"token\":\"{}\",\"note\":\"{LEAK_KEPT}\"}});",
            leaked[0]
        );
        return (
            [(axum::http::header::CONTENT_TYPE, "application/javascript")],
            body,
        )
            .into_response();
    }
    Json(json!({"form": form, "leaked": leaked, "note": LEAK_KEPT})).into_response()
}
