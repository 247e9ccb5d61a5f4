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
