//! The MCP server over stdio, for clients that only start local servers
//! (Claude Desktop's `command` entries, for one): `orchestrator-mock
//! mcp-stdio` forwards each JSON-RPC message it reads on stdin (one per
//! line, the MCP stdio transport) to the orchestrator's `/mcp` endpoint
//! with the admin token, and writes each answer on stdout, one per line.
//!
//! The server behind it is [`crate::mcp`], unchanged: same tools, same
//! guard (the token needs the `submit` role), same answers. Requests are
//! forwarded concurrently (a tool call that waits for its plan does not
//! hold up the next request); answers are written whole, one line each.
//! A refusal by HTTP (401, 403, 5xx, an unreachable orchestrator) comes
//! back to the client as a JSON-RPC error for that request, saying what
//! happened; the details go to stderr.
//!
//! What it does not do: hold any state of its own, start an orchestrator,
//! or carry messages from the server outside a request (the server sends
//! none: it runs stateless).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The header that carries the negotiated protocol version on every
/// request after `initialize` (streamable HTTP transport).
const PROTOCOL_HEADER: &str = "mcp-protocol-version";
/// JSON-RPC error code for a failure of the bridge or the HTTP transport.
const TRANSPORT_ERROR: i64 = -32603;

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Reading stdin or writing stdout failed: the client went away.
    #[error("stdio: {0}")]
    Io(#[from] std::io::Error),
}

/// Forwards messages from `input` to the MCP endpoint `url` (the admin
/// API's base URL plus `/mcp`) with bearer `token`, and answers on
/// `output`, until `input` ends.
///
/// # Errors
/// [`BridgeError::Io`] when stdin or stdout fails.
pub async fn run(
    http: reqwest::Client,
    url: String,
    token: String,
    input: impl AsyncBufRead + Unpin,
    mut output: impl AsyncWrite + Unpin + Send + 'static,
) -> Result<(), BridgeError> {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            output.write_all(line.as_bytes()).await?;
            output.write_all(b"\n").await?;
            output.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let version: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let forwarder = Forwarder {
        http,
        url,
        token,
        version,
    };
    let mut lines = input.lines();
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                let error = json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32700, "message": format!("not JSON: {e}")}});
                let _ = tx.send(error.to_string()).await;
                continue;
            }
        };
        let initialize = message["method"] == "initialize";
        let forwarder = forwarder.clone();
        let tx = tx.clone();
        let task = async move {
            for answer in forwarder.forward(&message).await {
                let _ = tx.send(answer.to_string()).await;
            }
        };
        if initialize {
            // Everything after it needs the version it negotiates.
            task.await;
        } else {
            in_flight.spawn(task);
        }
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    drop(tx);
    writer
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(())
}

#[derive(Clone)]
struct Forwarder {
    http: reqwest::Client,
    url: String,
    token: String,
    version: Arc<Mutex<Option<String>>>,
}

impl Forwarder {
    /// Posts one message; returns the messages to write back (none for a
    /// notification or a response).
    async fn forward(&self, message: &Value) -> Vec<Value> {
        let id = message.get("id").cloned();
        let is_request = id.is_some() && message.get("method").is_some();
        let fail = |what: String| -> Vec<Value> {
            eprintln!("orchestrator-mock mcp-stdio: {what}");
            match (&id, is_request) {
                (Some(id), true) => vec![json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": TRANSPORT_ERROR, "message": what}})],
                _ => Vec::new(),
            }
        };
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(message.to_string());
        let version = self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(version) = version {
            request = request.header(PROTOCOL_HEADER, version);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return fail(format!("cannot reach {}: {e}", self.url)),
        };
        let status = response.status();
        let sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = match response.text().await {
            Ok(b) => b,
            Err(e) => return fail(format!("reading the answer of {}: {e}", self.url)),
        };
        let answers: Vec<Value> = if sse {
            body.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect()
        } else {
            serde_json::from_str(&body)
                .map(|v| vec![v])
                .unwrap_or_default()
        };
        if !status.is_success() && !answers.iter().any(|a| a.get("jsonrpc").is_some()) {
            let detail = answers
                .first()
                .and_then(|a| a["message"].as_str())
                .map_or_else(String::new, |m| format!(": {m}"));
            return fail(format!(
                "the orchestrator answered HTTP {status} at {}{detail}",
                self.url
            ));
        }
        if message["method"] == "initialize"
            && let Some(v) = answers
                .iter()
                .find_map(|a| a["result"]["protocolVersion"].as_str())
        {
            *self
                .version
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v.to_string());
        }
        answers
            .into_iter()
            .filter(|a| a.get("jsonrpc").is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    /// A stand-in `/mcp`: 401 without the right token; an event stream
    /// for `tools/list`; 202 for notifications; JSON otherwise.
    async fn fake(headers: axum::http::HeaderMap, body: String) -> axum::response::Response {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer good") {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(
                    json!({"error": "unauthenticated", "message": "unknown or revoked token"}),
                ),
            )
                .into_response();
        }
        let message: Value = serde_json::from_str(&body).unwrap();
        let id = message["id"].clone();
        match message["method"].as_str() {
            Some("notifications/initialized") => StatusCode::ACCEPTED.into_response(),
            Some("initialize") => axum::Json(json!({"jsonrpc": "2.0", "id": id,
                "result": {"protocolVersion": "2025-06-18"}}))
            .into_response(),
            Some("tools/list") => (
                [("content-type", "text/event-stream")],
                format!(
                    "event: message\ndata: {}\n\n",
                    json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [],
                        "seen_version": headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok())}})
                ),
            )
                .into_response(),
            _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }

    async fn bridge(token: &str, input: &str) -> Vec<Value> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                axum::Router::new().route("/mcp", axum::routing::post(fake)),
            )
            .await
            .unwrap();
        });
        let (mut client, output) = tokio::io::duplex(1 << 16);
        run(
            reqwest::Client::new(),
            url,
            token.into(),
            tokio::io::BufReader::new(input.as_bytes()),
            output,
        )
        .await
        .unwrap();
        server.abort();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut text)
            .await
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn answers_come_back_one_per_line_with_the_negotiated_version_and_none_for_notifications()
    {
        let answers = bridge(
            "good",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}\n\
             {\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n\n\
             {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n",
        )
        .await;
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(answers[0]["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(answers[1]["id"], 2);
        assert_eq!(answers[1]["result"]["seen_version"], "2025-06-18");
    }

    #[tokio::test]
    async fn an_http_refusal_becomes_the_requests_json_rpc_error_naming_the_status() {
        let answers = bridge(
            "wrong",
            "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/list\"}\nnot json\n",
        )
        .await;
        assert_eq!(answers.len(), 2, "{answers:?}");
        let refused = answers.iter().find(|a| a["id"] == 7).unwrap();
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("HTTP 401") && message.contains("unknown or revoked token"),
            "{message}"
        );
        let parse = answers.iter().find(|a| a["id"].is_null()).unwrap();
        assert_eq!(parse["error"]["code"], -32700);
    }
}
