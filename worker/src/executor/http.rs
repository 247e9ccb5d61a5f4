//! The HTTP executor: one call to an internal API per task.
//!
//! The call is described entirely by config: method, a URL template whose
//! `{placeholders}` are filled from validated inputs (percent-encoded, and
//! only in the path and query, so inputs can never change the host), fixed
//! headers, a JSON body template, and how to put the credential on the
//! request. Redirects are not followed. The response body is read up to a
//! cap; the credential, raw or encoded, is masked in it
//! ([`crate::secrets::mask`]) before it leaves this module.
//!
//! Every call carries the task id as `Idempotency-Key` and a W3C
//! `traceparent` naming the task's trace with a new parent-id for this
//! call (each call is a span of its own), and never a `tracestate`. A
//! task's config cannot set these headers ([`is_reserved_header`]; config
//! validation refuses them), and the executor sets them last, replacing
//! anything else.
//!
//! It does not decide whether a task may run, load credentials, or retry.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use private_worker_proto::trace::{TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceParent};

use super::{ErrorCode, Execution, TaskError};
use crate::secrets::mask::Masker;
use crate::secrets::{SecretRef, SecretValue};

/// Characters left as they are in a substituted value: RFC 3986 unreserved.
const VALUE_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One HTTP task's call, from config.
#[derive(Debug, Clone)]
pub struct HttpExecutorConfig {
    /// HTTP method.
    pub method: http::Method,
    /// URL with `{input}` placeholders in path and query.
    pub url: UrlTemplate,
    /// Fixed headers.
    pub headers: http::HeaderMap,
    /// JSON body template; `"{name}"` as a whole string takes the input's
    /// JSON value (and the key is dropped when the input is absent);
    /// `{name}` inside a longer string is replaced by the input's text.
    pub body: Option<Value>,
    /// How the credential goes on the request, if the call needs one.
    pub auth: Option<AuthConfig>,
    /// Longest response body kept; longer bodies are cut and marked.
    pub max_response_bytes: usize,
}

/// How a credential is put on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// Where the secret comes from.
        secret: SecretRef,
    },
    /// `<name>: <secret>`.
    Header {
        /// Header name.
        name: http::HeaderName,
        /// Where the secret comes from.
        secret: SecretRef,
    },
}

impl AuthConfig {
    /// The secret this injection needs.
    pub fn secret(&self) -> &SecretRef {
        match self {
            AuthConfig::Bearer { secret } | AuthConfig::Header { secret, .. } => secret,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Input(String),
}

/// A URL with `{input}` placeholders, checked at config time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    parts: Vec<Part>,
}

/// Splits `text` into literal and `{name}` parts.
fn split_placeholders(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{text}`"))?;
        let name = &after[..close];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "`{{{name}}}` in `{text}` is not a placeholder; names have only letters, digits and _"
            ));
        }
        parts.push(Part::Input(name.to_string()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unopened `}}` in `{text}`"));
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(parts)
}

impl UrlTemplate {
    /// Parses and checks a template: http or https, a fixed host, and
    /// placeholders only after the host.
    ///
    /// # Errors
    /// A message saying what is wrong with the template.
    pub fn parse(text: &str) -> Result<UrlTemplate, String> {
        // URL parsers read `\` as `/` and drop tabs and line breaks, so such
        // a character in the literal text would let an input form a `..`
        // segment the check in `render` cannot see (found by fuzzing).
        if text.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(format!(
                "{text:?} holds a backslash or a control character; URL parsers read them as `/` or drop them, so write the URL without them"
            ));
        }
        let parts = split_placeholders(text)?;
        let probe = |filler: &str| -> Result<url::Url, String> {
            let rendered: String = parts
                .iter()
                .map(|p| match p {
                    Part::Literal(s) => s.as_str(),
                    Part::Input(_) => filler,
                })
                .collect();
            url::Url::parse(&rendered).map_err(|e| format!("`{text}` is not a URL: {e}"))
        };
        let url = probe("x")?;
        if !matches!(url.scheme(), "http" | "https") || !text.contains("://") {
            return Err(format!("`{text}` must be an http:// or https:// URL"));
        }
        // Whatever the inputs are, the origin must stay the same.
        let other = probe("y.z")?;
        if url.origin() != other.origin() {
            return Err(format!(
                "`{text}` lets an input change the host; placeholders belong in the path or query"
            ));
        }
        // The authority ends at the first '/', '?' or '#' after "scheme://".
        let authority_end = text
            .find("://")
            .map(|i| {
                let after = i + 3;
                text[after..]
                    .find(['/', '?', '#'])
                    .map_or(text.len(), |j| after + j)
            })
            .unwrap_or(0);
        if text[..authority_end].contains('{') {
            return Err(format!(
                "`{text}` has a placeholder before the path; inputs must never choose the host"
            ));
        }
        Ok(UrlTemplate { parts })
    }

    /// Names of the inputs the template uses.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Input(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Fills the placeholders, percent-encoding every value.
    ///
    /// # Errors
    /// `invalid_input` when an input the URL needs is absent or is not a
    /// string, number or boolean, or when a placeholder in the path renders
    /// empty (`/tickets/{id}` with `""` would call `/tickets/`, another
    /// endpoint).
    pub fn render(&self, inputs: &Map<String, Value>) -> Result<String, TaskError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Input(name) => {
                    let text = scalar_text(name, inputs.get(name))?;
                    if text.is_empty() && !out.contains(['?', '#']) {
                        return Err(TaskError::new(
                            ErrorCode::InvalidInput,
                            format!(
                                "input `{name}` is empty; a path placeholder must not render empty"
                            ),
                        ));
                    }
                    out.extend(utf8_percent_encode(&text, VALUE_ENCODE));
                }
            }
        }
        // `.` survives percent-encoding, so inputs (alone or side by side)
        // could form a `.` or `..` path segment, which URL parsing resolves
        // to another endpoint. Refuse any such segment in the result.
        let path = out
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("");
        let path = path.split(['?', '#']).next().unwrap_or("");
        let dot_segment = path.split('/').any(|segment| {
            let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
            decoded == "." || decoded == ".."
        });
        if dot_segment {
            return Err(TaskError::new(
                ErrorCode::InvalidInput,
                "inputs may not form a `.` or `..` path segment",
            ));
        }
        Ok(out)
    }
}

fn scalar_text(name: &str, value: Option<&Value>) -> Result<String, TaskError> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(_) => Err(TaskError::new(
            ErrorCode::InvalidInput,
            format!("input `{name}` must be a string, number or boolean to be used in the request"),
        )),
        None => Err(TaskError::new(
            ErrorCode::InvalidInput,
            format!("input `{name}` is required by the request but absent"),
        )),
    }
}

/// Fills a body template from inputs.
///
/// # Errors
/// `invalid_input` when an embedded placeholder names an absent or
/// non-scalar input.
pub fn render_body(template: &Value, inputs: &Map<String, Value>) -> Result<Value, TaskError> {
    Ok(render_node(template, inputs)?.unwrap_or(Value::Null))
}

/// Renders one node; `None` means "drop this key" (a whole-string
/// placeholder whose input is absent).
fn render_node(node: &Value, inputs: &Map<String, Value>) -> Result<Option<Value>, TaskError> {
    match node {
        Value::String(s) => {
            let parts = split_placeholders(s).unwrap_or_else(|_| vec![Part::Literal(s.clone())]);
            match parts.as_slice() {
                [Part::Input(name)] => Ok(inputs.get(name).cloned()),
                _ => {
                    let mut out = String::new();
                    for part in parts {
                        match part {
                            Part::Literal(l) => out.push_str(&l),
                            Part::Input(name) => {
                                out.push_str(&scalar_text(&name, inputs.get(&name))?)
                            }
                        }
                    }
                    Ok(Some(Value::String(out)))
                }
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(render_node(item, inputs)?.unwrap_or(Value::Null));
            }
            Ok(Some(Value::Array(out)))
        }
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                if let Some(v) = render_node(item, inputs)? {
                    out.insert(key.clone(), v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
        other => Ok(Some(other.clone())),
    }
}

/// Runs HTTP tasks with one shared connection pool.
#[derive(Debug, Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
}

impl HttpExecutor {
    /// Builds the shared client: no redirects, no proxy from the
    /// environment for internal calls.
    ///
    /// # Errors
    /// The TLS back-end could not be initialised.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("private-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpExecutor { client })
    }

    /// Makes the call described by `config` with `inputs` (already
    /// validated) and `credential` (when the config names one), within
    /// `timeout`. `idempotency_key` (the task id: the same for every
    /// attempt of one task) goes out as the `Idempotency-Key` header, so an
    /// internal API that honours it can recognise a retry. `trace` is the
    /// task's trace context: the call sends `traceparent` with its trace
    /// id and flags and a new parent-id for this call ([`TraceParent::child`]).
    pub async fn execute(
        &self,
        config: &HttpExecutorConfig,
        inputs: &Map<String, Value>,
        credential: Option<&SecretValue>,
        idempotency_key: &str,
        trace: &TraceParent,
        timeout: Duration,
    ) -> Execution {
        let masker = Masker::for_values(credential);
        let mut request = match self.build(config, inputs, credential, idempotency_key) {
            Ok(r) => r,
            Err(error) => return Execution::failed(error),
        };
        let call_trace = trace.child();
        set_trace_headers(request.headers_mut(), &call_trace);
        tracing::debug!(traceparent = %call_trace, "calling the internal API");
        let call = async {
            let response = self.client.execute(request).await?;
            let status = response.status();
            let (body, truncated) = read_capped(response, config.max_response_bytes).await?;
            Ok::<_, reqwest::Error>((status, body, truncated))
        };
        match tokio::time::timeout(timeout, call).await {
            // The request may have reached the internal API before the
            // time ran out: whether its effect happened is unknown.
            Err(_) => Execution::failed(TaskError::new(
                ErrorCode::Timeout,
                format!("internal API did not answer within {timeout:?}; its effect is unknown"),
            )),
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::shown::shown(error_chain(&e)), "internal API call failed");
                // A request that failed after it was sent may have had its
                // effect; only a refused connection proves nothing was sent.
                Execution::failed(if e.is_connect() {
                    TaskError::new(
                        ErrorCode::Unreachable,
                        "internal API unreachable (connect failed)",
                    )
                } else if e.is_timeout() {
                    TaskError::new(
                        ErrorCode::Timeout,
                        "internal API call timed out; its effect is unknown",
                    )
                } else {
                    TaskError::new(
                        ErrorCode::RequestFailed,
                        "internal API call failed mid-request",
                    )
                })
            }
            Ok(Ok((status, body, truncated))) => {
                let body = body_value(&body, truncated, &masker);
                let output = serde_json::json!({
                    "status": status.as_u16(),
                    "body": body,
                    "truncated": truncated,
                });
                Execution {
                    output: Some(output),
                    error: (!status.is_success()).then(|| {
                        TaskError::new(
                            ErrorCode::HttpStatus,
                            format!("internal API answered {status}"),
                        )
                    }),
                }
            }
        }
    }

    fn build(
        &self,
        config: &HttpExecutorConfig,
        inputs: &Map<String, Value>,
        credential: Option<&SecretValue>,
        idempotency_key: &str,
    ) -> Result<reqwest::Request, TaskError> {
        let url = config.url.render(inputs)?;
        let mut builder = self
            .client
            .request(config.method.clone(), &url)
            .headers(config.headers.clone());
        // Task ids are checked against the contract's alphabet before any
        // task runs, so this is always a valid header value.
        if let Ok(key) = http::HeaderValue::from_str(idempotency_key) {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        if let Some(template) = &config.body {
            builder = builder.json(&render_body(template, inputs)?);
        }
        if let Some(auth) = &config.auth {
            let secret = credential.ok_or_else(|| {
                TaskError::new(
                    ErrorCode::CredentialUnavailable,
                    "credential was not loaded",
                )
            })?;
            let (name, text) = match auth {
                AuthConfig::Bearer { .. } => (
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", secret.expose()),
                ),
                AuthConfig::Header { name, .. } => (name.clone(), secret.expose().to_string()),
            };
            let mut value = http::HeaderValue::from_str(&text).map_err(|_| {
                TaskError::new(
                    ErrorCode::CredentialUnavailable,
                    format!(
                        "{}: the value cannot be sent in an HTTP header",
                        auth.secret()
                    ),
                )
            })?;
            value.set_sensitive(true);
            builder = builder.header(name, value);
        }
        builder
            .build()
            .map_err(|_| TaskError::new(ErrorCode::InvalidInput, "the request could not be built"))
    }
}

/// The header that carries the task id to the internal API.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Headers the executor sets on every call itself, which a task's config
/// may not set: `Idempotency-Key` (the task id), `traceparent` (the task's
/// trace context) and `tracestate` (never sent: the worker carries no
/// vendor trace state).
pub const RESERVED_HEADERS: [&str; 3] = [IDEMPOTENCY_KEY, TRACEPARENT_HEADER, TRACESTATE_HEADER];

/// Whether `name` (any case) is one of [`RESERVED_HEADERS`].
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// Puts `trace` on a request as its only `traceparent`, with no
/// `tracestate` (whatever was there before).
fn set_trace_headers(headers: &mut http::HeaderMap, trace: &TraceParent) {
    headers.remove(TRACESTATE_HEADER);
    // Always a valid header value: 55 characters of hex and `-`.
    if let Ok(value) = http::HeaderValue::from_str(&trace.to_string()) {
        headers.insert(TRACEPARENT_HEADER, value);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The response body as JSON when it is JSON, as text otherwise, with every
/// form of the credential masked (see [`crate::secrets::mask`]). A cut body
/// also loses any tail that could be the start of one.
fn body_value(body: &[u8], truncated: bool, masker: &Masker) -> Value {
    if !truncated && let Ok(mut value) = serde_json::from_slice::<Value>(body) {
        masker.mask_value(&mut value);
        return value;
    }
    let mut text = String::from_utf8_lossy(body).into_owned();
    if truncated {
        masker.cut_partial_tail(&mut text);
    }
    Value::String(masker.mask(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_template_with_a_backslash_or_control_character_is_refused() {
        // Found by fuzz/fuzz_targets/template_render.rs: `\` reads as `/`
        // and tabs and line breaks vanish, so `..` could form unseen.
        for text in [
            "https://crm.internal/files\\{a}/x",
            "https://crm.internal/files/\t{a}/x",
            "https://crm.internal/files/{a}\n/x",
            "https://crm.internal/files/{a}\r/x",
        ] {
            let err = UrlTemplate::parse(text).unwrap_err();
            assert!(err.contains("backslash or a control character"), "{err}");
            assert!(!err.contains('\n') && !err.contains('\t'), "escaped: {err}");
        }
    }

    #[test]
    fn placeholders_are_percent_encoded_and_cannot_escape_the_path() {
        let t = UrlTemplate::parse("https://crm.internal/tickets/{id}/notes?q={q}").unwrap();
        let url = t
            .render(&inputs(
                serde_json::json!({"id": "../../admin?x=1#", "q": "a b&c=d"}),
            ))
            .unwrap();
        assert_eq!(
            url,
            "https://crm.internal/tickets/..%2F..%2Fadmin%3Fx%3D1%23/notes?q=a%20b%26c%3Dd"
        );
        let url = t
            .render(&inputs(serde_json::json!({"id": "@evil.com", "q": 1})))
            .unwrap();
        assert!(url.starts_with("https://crm.internal/"), "{url}");
    }

    #[test]
    fn dot_segments_cannot_walk_to_another_endpoint() {
        let t = UrlTemplate::parse("https://crm.internal/tickets/{id}/notes").unwrap();
        for id in ["..", "."] {
            let err = t
                .render(&inputs(serde_json::json!({"id": id})))
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidInput, "{id}");
        }
        let url = t.render(&inputs(serde_json::json!({"id": "..."}))).unwrap();
        assert_eq!(url::Url::parse(&url).unwrap().path(), "/tickets/.../notes");
        // Side by side, two harmless-looking values form `..`.
        let pair = UrlTemplate::parse("https://crm.internal/files/{a}{b}/x").unwrap();
        let err = pair
            .render(&inputs(serde_json::json!({"a": ".", "b": "."})))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        let ext = UrlTemplate::parse("https://crm.internal/files/{name}.{ext}").unwrap();
        assert!(
            ext.render(&inputs(serde_json::json!({"name": ".", "ext": ""})))
                .is_err()
        );
        assert!(
            ext.render(&inputs(serde_json::json!({"name": "report", "ext": "pdf"})))
                .is_ok()
        );
    }

    #[test]
    fn a_path_placeholder_that_renders_empty_is_refused() {
        let t = UrlTemplate::parse("https://crm.internal/tickets/{ticket_id}?q={q}").unwrap();
        let err = t
            .render(&inputs(serde_json::json!({"ticket_id": "", "q": "x"})))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("ticket_id"), "{}", err.message);
        // Empty in the query is a value, not another endpoint.
        let url = t
            .render(&inputs(serde_json::json!({"ticket_id": "7", "q": ""})))
            .unwrap();
        assert_eq!(url, "https://crm.internal/tickets/7?q=");
    }

    #[tokio::test]
    async fn an_empty_path_placeholder_is_rejected_before_any_call() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = HttpExecutorConfig {
            method: http::Method::GET,
            url: UrlTemplate::parse(&format!("http://127.0.0.1:{port}/tickets/{{ticket_id}}"))
                .unwrap(),
            headers: http::HeaderMap::new(),
            body: None,
            auth: None,
            max_response_bytes: 1024,
        };
        let execution = HttpExecutor::new()
            .unwrap()
            .execute(
                &config,
                &inputs(serde_json::json!({"ticket_id": ""})),
                None,
                "T-1",
                &TraceParent::new_trace(),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(execution.outcome(), crate::outcome::Outcome::Rejected);
        assert_eq!(execution.error.unwrap().code, ErrorCode::InvalidInput);
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the internal API was called"
        );
    }

    #[test]
    fn a_placeholder_in_the_host_is_refused_at_config_time() {
        for bad in [
            "http:{h}/x",
            "https:{h}",
            "https://{host}/x",
            "https://crm.internal:{port}/x",
            "https://{user}@crm.internal/x",
            "ftp://crm.internal/{x}",
            "https://crm.internal/{bad name}",
            "https://crm.internal/{x",
        ] {
            assert!(UrlTemplate::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn body_templates_keep_types_drop_absent_optionals_and_interpolate_text() {
        let template = serde_json::json!({
            "title": "{title}", "priority": "{priority}", "note": "from {who}", "fixed": 3,
            "tags": ["{title}"]
        });
        let body = render_body(
            &template,
            &inputs(serde_json::json!({"title": "Printer", "priority": 2, "who": "agent"})),
        )
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"title": "Printer", "priority": 2, "note": "from agent", "fixed": 3, "tags": ["Printer"]})
        );
        let body = render_body(&template, &inputs(serde_json::json!({"who": "x"}))).unwrap();
        assert!(body.get("title").is_none());
        assert!(render_body(&template, &inputs(serde_json::json!({}))).is_err());
    }

    #[test]
    fn the_trace_headers_replace_any_others_and_tracestate_is_never_sent() {
        let mut headers = http::HeaderMap::new();
        headers.append("traceparent", http::HeaderValue::from_static("forged"));
        headers.append("traceparent", http::HeaderValue::from_static("forged-too"));
        headers.append("tracestate", http::HeaderValue::from_static("vendor=x"));
        let trace = TraceParent::new_trace();
        set_trace_headers(&mut headers, &trace);
        let sent: Vec<&str> = headers
            .get_all("traceparent")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(sent, [trace.to_string()]);
        assert!(headers.get("tracestate").is_none());
        for name in [
            "traceparent",
            "TraceParent",
            "tracestate",
            "idempotency-key",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        assert!(!is_reserved_header("x-request-source"));
    }

    #[test]
    fn a_cut_body_loses_a_trailing_partial_credential() {
        let masker = Masker::new(["abcdef"]);
        let v = body_value(b"token=abc", true, &masker);
        assert_eq!(v, Value::String("token=".into()));
        let v = body_value(br#"{"t":"abcdef"}"#, false, &masker);
        assert_eq!(v, serde_json::json!({"t": "[REDACTED]"}));
    }
}
