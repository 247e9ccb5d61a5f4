//! Running the MCP client of `tests/mcp_client/` (`agent.py`, written with
//! the official MCP Python SDK, `mcp` from PyPI) from the tests: checking
//! the interpreter and its package, and one run of the script against an
//! MCP endpoint with or without a bearer token.
//!
//! Used by `tests/tests/mcp.rs`. Nothing here is product code.
//!
//! Needs python3 with the package of `tests/mcp_client/requirements.txt`;
//! [`require`] fails the calling test, naming the `pip` command, when it is
//! missing.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::python_worker::{NO_BYTECODE, python};

/// What to run when the package is missing.
pub const INSTALL: &str = "python3 -m pip install -r tests/mcp_client/requirements.txt";

/// `tests/mcp_client/agent.py`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp_client/agent.py")
}

/// Fails the test, saying what to install, unless python3 and the MCP SDK
/// are there.
///
/// # Panics
/// When Python or the `mcp` package is missing.
pub fn require() {
    crate::python_worker::require_imports(
        "import mcp, httpx2; from mcp.client.streamable_http import streamable_http_client",
        "the MCP client's package (the MCP Python SDK) is",
        INSTALL,
    );
}

/// Runs `agent.py <url> <args...>` with `token` as its bearer token (none:
/// no `Authorization` header) and returns the JSON it printed.
///
/// # Panics
/// When the script cannot run, exits non-zero, or prints no JSON (the
/// message has its output).
pub async fn run(url: &str, token: Option<&str>, args: &[&str]) -> Value {
    run_with(url, token, args, &[]).await
}

/// [`run`] over stdio: the agent starts `server` (program and arguments)
/// and speaks MCP over its stdin and stdout; `token` reaches it as
/// `ORCHESTRATOR_MOCK_TOKEN`.
///
/// # Panics
/// As [`run`].
pub async fn run_stdio(server: &[&str], token: Option<&str>, args: &[&str]) -> Value {
    let command = serde_json::to_string(server).expect("a list of strings serializes");
    run_with("stdio", token, args, &[("MCP_STDIO_COMMAND", &command)]).await
}

async fn run_with(url: &str, token: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut command = tokio::process::Command::new(python());
    command
        .env(NO_BYTECODE.0, NO_BYTECODE.1)
        .env_remove("MCP_TOKEN")
        .envs(env.iter().copied())
        .arg(script())
        .arg(url)
        .args(args)
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("MCP_TOKEN", token);
    }
    let out = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", script().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "agent.py {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("agent.py {args:?} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}
