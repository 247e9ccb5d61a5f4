//! `demo`: the whole system on one machine, from nothing.
//!
//! Generates dev certificates with `certs-tool`, starts the sample internal
//! API, `orchestrator-mock` and `private-worker` as separate processes,
//! creates two admin tokens with `orchestrator-mock token create` (an agent
//! that submits and reads, a person who approves and reads), submits a
//! three-step plan with the first, shows that it cannot approve its own
//! plan, and that even the approver's token alone does not approve it: the
//! orchestrator and the worker trust an approver key (`certs-tool
//! approver-key`), so the approver signs every step with
//! `orchestrator-mock plan approve --key` (the key never reaches the
//! orchestrator) and the worker checks each signature before it runs the
//! step. Then it waits, prints the results and the audit trail.
//! Last, an agent: a scripted MCP client (plain JSON-RPC over HTTP to
//! `/mcp`) lists the tools, calls `crm.create_ticket` (answered "pending
//! approval"; the approver signs it bound to the review digest the
//! console's list shows, through the approve endpoint the console uses),
//! and calls the read-only `crm.get_ticket`, which the registry lets the
//! orchestrator's auto-approver key approve (the worker trusts that key for
//! that task only). It stops everything and exits 0 only if every plan
//! succeeded.
//! Files (certificates, configs, logs, audit logs) go to a fresh directory
//! that is removed at the end unless `--keep` is given.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use orchestrator_mock::api::{PlanRequest, PlanStatus, PlanView, StepRequest};
use orchestrator_mock::approvals::{review_digest, sign_plan};
use orchestrator_mock::client::AdminClient;
use private_worker_proto::approval::KeyFileSigner;
use private_worker_tests::catalog::{self, OrchestratorSetup, WorkerSetup};
use private_worker_tests::pki::ORCHESTRATOR_NAME;
use private_worker_tests::procs::{Process, binary};
use serde_json::{Value, json};

/// Runs certificates, orchestrator-mock, a sample internal API and a worker, then a plan.
#[derive(Parser)]
struct Cli {
    /// Keep the working directory (certificates, configs, logs) after the run.
    #[arg(long)]
    keep: bool,
}

const STARTUP: Duration = Duration::from_secs(30);
/// The demo approver key's id.
const APPROVER_KEY_ID: &str = "demo-approvals";
/// The orchestrator's auto-approver key id (read-only tasks only).
const AUTO_KEY_ID: &str = "demo-auto";
/// The MCP protocol version the demo's agent asks for.
const MCP_PROTOCOL: &str = "2025-06-18";

fn ready_value(line: &str, key: &str) -> anyhow::Result<String> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .with_context(|| format!("no {key}= in {line:?}"))
}

/// Creates an admin token the way a user does, printing the command; the
/// token itself is printed by `token create` once and kept here.
fn create_token(config: &Path, name: &str, roles: &[&str]) -> anyhow::Result<String> {
    let mut command = std::process::Command::new(binary("orchestrator-mock"));
    command
        .args(["token", "create", "--config"])
        .arg(config)
        .args(["--name", name]);
    for role in roles {
        command.args(["--role", role]);
    }
    let shown: Vec<String> = roles.iter().map(|r| format!("--role {r}")).collect();
    println!(
        "        $ orchestrator-mock token create --config orchestrator.toml --name {name} {}",
        shown.join(" ")
    );
    let out = command
        .output()
        .context("run orchestrator-mock token create")?;
    if !out.status.success() {
        bail!(
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn step(n: u32, text: &str) {
    println!("  [{n}/7] {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let workdir = tempfile::Builder::new()
        .prefix("private-worker-demo-")
        .tempdir()?;
    let dir = workdir.path().to_path_buf();
    println!("private-worker demo (working directory {})", dir.display());
    let outcome = run(&dir, cli.keep).await;
    if cli.keep {
        let kept = workdir.keep();
        println!(
            "\nkept {} (certificates, configs, logs, audit logs)",
            kept.display()
        );
    }
    match outcome {
        Ok(true) => {
            println!("\ndemo succeeded");
            Ok(())
        }
        Ok(false) => bail!("a plan did not succeed (run with --keep to read the logs)"),
        Err(e) => Err(e),
    }
}

async fn run(dir: &Path, keep: bool) -> anyhow::Result<bool> {
    // 1. Certificates.
    let certs = dir.join("certs");
    let output = std::process::Command::new(binary("certs-tool"))
        .args(["dev", "--out-dir"])
        .arg(&certs)
        .args(["--worker", "demo-worker"])
        .output()
        .context("run certs-tool")?;
    if !output.status.success() {
        bail!(
            "certs-tool dev failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let identity = "spiffe://example.org/worker/demo-worker";
    let approver_dir = dir.join("approver");
    let output = std::process::Command::new(binary("certs-tool"))
        .args(["approver-key", "--id", APPROVER_KEY_ID, "--out-dir"])
        .arg(&approver_dir)
        .output()
        .context("run certs-tool approver-key")?;
    if !output.status.success() {
        bail!(
            "certs-tool approver-key failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = std::process::Command::new(binary("certs-tool"))
        .args(["approver-key", "--id", AUTO_KEY_ID, "--out-dir"])
        .arg(&approver_dir)
        .output()
        .context("run certs-tool approver-key")?;
    if !output.status.success() {
        bail!(
            "certs-tool approver-key failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let approver_key = approver_dir.join(format!("{APPROVER_KEY_ID}.key"));
    let public = |id: &str| approver_dir.join(format!("{id}.pub")).display().to_string();
    // Both sides trust the person's key for every task; the auto-approver's
    // key signs only what the registry marks `auto`, and the worker accepts
    // it only for crm.get_ticket.
    let orchestrator_approvals = format!(
        "\n[approvals]\nkeys = [{{ id = \"{APPROVER_KEY_ID}\", public_key = {:?} }}, {{ id = \"{AUTO_KEY_ID}\", public_key = {:?} }}]\nauto_approver = {{ key_id = \"{AUTO_KEY_ID}\", private_key = {:?}, audience = \"{identity}\", valid_for = \"10m\" }}\n\n[mcp]\ncall_wait = \"3s\"\n",
        public(APPROVER_KEY_ID),
        public(AUTO_KEY_ID),
        approver_dir
            .join(format!("{AUTO_KEY_ID}.key"))
            .display()
            .to_string(),
    );
    let worker_approvals = format!(
        "\n[approvals]\nkeys = [{{ id = \"{APPROVER_KEY_ID}\", public_key = {:?} }}, {{ id = \"{AUTO_KEY_ID}\", public_key = {:?}, tasks = [\"crm.get_ticket\"] }}]\n",
        public(APPROVER_KEY_ID),
        public(AUTO_KEY_ID),
    );
    step(
        1,
        &format!(
            "certificates: dev root CA -> intermediate -> orchestrator ({ORCHESTRATOR_NAME}) and worker {identity}; approver key {APPROVER_KEY_ID} (Ed25519, the private half only with the approver) and auto-approver key {AUTO_KEY_ID} (the orchestrator's, for read-only tasks)"
        ),
    );

    // 2. The internal API, with a token only the worker will know.
    let token = format!("demo-{}", uuid_like());
    let mut api = Process::start(
        "sample-internal-api",
        &binary("sample-internal-api"),
        &[],
        &[("SAMPLE_API_TOKEN", token.as_str())],
        &dir.join("internal-api.log"),
    );
    let api_url = ready_value(&api.wait_for("sample-internal-api ready", STARTUP), "url")?;
    step(
        2,
        &format!(
            "sample internal API (the \"CRM\") at {api_url}, requires a bearer token only the worker has"
        ),
    );

    // 3. The orchestrator.
    let registry = dir.join("registry.json");
    std::fs::write(&registry, registry_with_policies()?)?;
    let orchestrator_config = dir.join("orchestrator.toml");
    std::fs::write(
        &orchestrator_config,
        catalog::orchestrator_config_toml(&OrchestratorSetup {
            ca_cert: &certs.join("ca.pem"),
            cert: &certs.join("orchestrator.pem"),
            key: &certs.join("orchestrator.key"),
            registry: &registry,
            data_dir: &dir.join("orchestrator-data"),
            insecure_skip_checks: false,
            wire_capture_dir: None,
        }) + &orchestrator_approvals,
    )?;
    let mut orchestrator = Process::start(
        "orchestrator-mock",
        &binary("orchestrator-mock"),
        &[
            "serve",
            "--config",
            orchestrator_config.to_str().context("path")?,
        ],
        &[],
        &dir.join("orchestrator.log"),
    );
    let ready = orchestrator.wait_for("orchestrator-mock ready", STARTUP);
    let grpc = ready_value(&ready, "grpc")?;
    let admin_url = ready_value(&ready, "admin")?;
    step(
        3,
        &format!("orchestrator-mock: worker gateway {grpc} (mTLS only), admin API {admin_url}"),
    );

    // 4. The worker.
    let worker_config = dir.join("worker.toml");
    std::fs::write(
        &worker_config,
        catalog::worker_config_toml(&WorkerSetup {
            orchestrator_address: grpc.clone(),
            server_name: ORCHESTRATOR_NAME,
            ca_cert: &certs.join("ca.pem"),
            cert: &certs.join("worker-demo-worker.pem"),
            key: &certs.join("worker-demo-worker.key"),
            api_base: &api_url,
            audit_log: &dir.join("worker-audit.jsonl"),
            max_in_flight: 8,
        }) + &worker_approvals,
    )?;
    let mut worker = Process::start(
        "private-worker",
        &binary("private-worker"),
        &["--config", worker_config.to_str().context("path")?],
        &[(catalog::TOKEN_ENV, token.as_str())],
        &dir.join("worker.log"),
    );
    println!("        admin tokens (only their SHA-256 is stored; give each holder its own):");
    let agent_token = create_token(&orchestrator_config, "agent", &["submit", "read"])?;
    let admin = AdminClient::new(&admin_url).with_token(agent_token.clone());
    let approver_token = create_token(&orchestrator_config, "approver", &["approve", "read"])?;
    let approver = AdminClient::new(&admin_url).with_token(approver_token.clone());
    println!(
        "        callers send them as ORCHESTRATOR_MOCK_TOKEN=... orchestrator-mock plan ... (or --token-file)"
    );
    let start = Instant::now();
    loop {
        let workers = admin.workers().await.context("list workers")?;
        if workers.iter().any(|w| w.identity == identity) {
            break;
        }
        if start.elapsed() > STARTUP || worker.has_exited() {
            bail!("the worker did not connect; its log:\n{}", worker.output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    step(
        4,
        &format!("worker connected as {identity} (outbound only; it listens on no port)"),
    );

    // 5. A plan, approved.
    let request = PlanRequest {
        name: Some("Handle the printer incident".into()),
        steps: vec![
            StepRequest {
                task: "crm.create_ticket".into(),
                version: None,
                inputs: json!({"title": "Printer on fire, 3rd floor", "priority": 1, "customer": "C-1042"}),
            },
            StepRequest {
                task: "crm.add_comment".into(),
                version: None,
                inputs: json!({"ticket_id": "T-1001", "text": "Facilities notified; extinguisher on the way"}),
            },
            StepRequest {
                task: "crm.get_ticket".into(),
                version: None,
                inputs: json!({"ticket_id": "T-1001"}),
            },
        ],
    };
    let plan = admin.submit_plan(&request).await.context("submit plan")?;
    match admin.approve(&plan.id).await {
        Err(e) if e.status() == Some(403) => {
            println!("        the agent's token cannot approve its own plan: {e}");
        }
        other => bail!("the agent's token should not approve, got {other:?}"),
    }
    match approver.approve(&plan.id).await {
        Err(e) if e.status() == Some(422) => {
            println!("        unsigned, not even the approver's token approves it: {e}");
        }
        other => bail!("an unsigned approval should be refused, got {other:?}"),
    }
    let sign = |digest: Option<&str>| {
        let mut command = std::process::Command::new(binary("orchestrator-mock"));
        command
            .args(["plan", "approve", plan.id.as_str(), "--key"])
            .arg(&approver_key)
            .args(["--key-id", APPROVER_KEY_ID, "--audience", identity])
            .args(["--valid-for", "15m"])
            .env("ORCHESTRATOR_ADMIN_URL", &admin_url)
            .env("ORCHESTRATOR_MOCK_TOKEN", &approver_token);
        if let Some(digest) = digest {
            command.args(["--expect-digest", digest]);
        }
        command
            .output()
            .context("run orchestrator-mock plan approve")
    };
    let flags = format!(
        "--key approver/{APPROVER_KEY_ID}.key --key-id {APPROVER_KEY_ID} --audience {identity} --valid-for 15m"
    );
    // First the approver reviews what would be signed (nothing is signed),
    // then signs exactly that, pinned by its digest.
    println!(
        "        $ orchestrator-mock plan approve {} {flags}",
        plan.id
    );
    let review = sign(None)?;
    let shown = String::from_utf8_lossy(&review.stderr).to_string();
    let digest = shown
        .lines()
        .find_map(|l| l.strip_prefix("review digest: "))
        .map(str::to_string)
        .with_context(|| format!("no review digest in:\n{shown}"))?;
    for line in shown
        .lines()
        .filter(|l| l.starts_with("  step ") || l.starts_with("review digest"))
    {
        println!("          {}", line.trim_start());
    }
    println!(
        "        $ orchestrator-mock plan approve {} {flags} --expect-digest {digest}",
        plan.id
    );
    let output = sign(Some(&digest))?;
    if !output.status.success() {
        bail!(
            "signed approval failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    step(
        5,
        &format!(
            "plan {} submitted by the agent ({} steps, validated against the registry) and approved by the approver, every step signed for {identity}",
            plan.id,
            plan.steps.len()
        ),
    );
    let started = Instant::now();
    let plan = admin
        .wait_for_plan(&plan.id, Duration::from_secs(60))
        .await
        .context("wait for plan")?;
    step(
        6,
        &format!(
            "plan {} in {} ms",
            format!("{:?}", plan.status).to_lowercase(),
            started.elapsed().as_millis()
        ),
    );

    print_results(&plan);
    let audit = admin.audit(&plan.id).await.context("read audit")?;
    println!("\nAudit trail (stored by the orchestrator, written and hash-chained by the worker)");
    println!(
        "  {:<4} {:<18} {:<10} {:<8} {:<45} record hash",
        "seq", "task", "outcome", "checks", "worker"
    );
    for record in &audit {
        let value = serde_json::to_value(record)?;
        println!(
            "  {:<4} {:<18} {:<10} {:<8} {:<45} {}…",
            value["sequence"].as_u64().unwrap_or_default(),
            value["task_name"].as_str().unwrap_or(""),
            value["outcome"].as_str().unwrap_or(""),
            record.check.verdict,
            value["worker_identity"].as_str().unwrap_or(""),
            value["record_hash"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(16)
                .collect::<String>(),
        );
    }
    match private_worker::audit::verify_file(&dir.join("worker-audit.jsonl")) {
        Ok((n, last)) => println!(
            "  worker's local audit log: {n} records, hash chain intact (head {}…)",
            last.chars().take(16).collect::<String>()
        ),
        Err(e) => println!("  worker's local audit log: BROKEN: {e}"),
    }
    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
    let leaked = log.contains(&token)
        || serde_json::to_string(&audit)?.contains(&token)
        || serde_json::to_string(&plan)?.contains(&token);
    println!(
        "\nCredential check: the CRM token {} in the worker log, the results or the audit trail.",
        if leaked { "APPEARS" } else { "appears nowhere" }
    );

    // What an operator on the worker host sees, without any inbound port.
    let status = std::process::Command::new(binary("private-worker"))
        .args(["status", "--config"])
        .arg(&worker_config)
        .output()
        .context("run private-worker status")?;
    println!(
        "\n$ private-worker status --config worker.toml   (exit {}; read from the status file the worker writes)",
        status.status.code().unwrap_or(-1)
    );
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        println!("  {line}");
    }

    // 7. The agent's side: MCP.
    let agent_ok = agent(&AgentSetup {
        admin_url: &admin_url,
        agent_token: &agent_token,
        approver_token: &approver_token,
        approver_key: &approver_key,
        audience: identity,
        dir,
        keep,
    })
    .await?;

    // Stop everything: the worker drains first.
    let code = worker.terminate(Duration::from_secs(15));
    orchestrator.terminate(Duration::from_secs(10));
    api.kill();
    println!("stopped worker (exit code {code:?}), orchestrator-mock and the internal API");
    Ok(plan.status == PlanStatus::Succeeded && !leaked && agent_ok)
}

/// The demo's registry: the sample tasks with approval policies.
/// `crm.get_ticket` is read-only and `auto` (the orchestrator's
/// auto-approver signs it); every other task waits for a person.
fn registry_with_policies() -> anyhow::Result<String> {
    let mut registry: Value = serde_json::from_str(&catalog::registry_json())?;
    for task in registry["tasks"]
        .as_array_mut()
        .context("the registry has a task list")?
    {
        match task["name"].as_str() {
            Some("crm.get_ticket") => {
                task["read_only"] = json!(true);
                task["approval"] = json!("auto");
            }
            Some("crm.delete_customer") => task["destructive"] = json!(true),
            _ => {}
        }
    }
    Ok(serde_json::to_string_pretty(&registry)?)
}

/// A minimal MCP client: JSON-RPC 2.0 over the streamable HTTP transport,
/// one POST per message, as the stateless server at `/mcp` answers (plain
/// JSON, no session).
struct McpClient {
    http: reqwest::Client,
    url: String,
    token: String,
    /// The protocol version `initialize` agreed on, sent on every later
    /// request as `MCP-Protocol-Version`.
    version: Option<String>,
    next_id: u64,
}

impl McpClient {
    fn new(url: String, token: &str) -> McpClient {
        McpClient {
            http: reqwest::Client::new(),
            url,
            token: token.to_string(),
            version: None,
            next_id: 1,
        }
    }

    /// Sends one message; a request (`notification` false) returns its
    /// `result`, a JSON-RPC error is an error.
    async fn send(
        &mut self,
        method: &str,
        params: Value,
        notification: bool,
    ) -> anyhow::Result<Value> {
        let mut message = json!({"jsonrpc": "2.0", "method": method, "params": params});
        if !notification {
            message["id"] = json!(self.next_id);
            self.next_id += 1;
        }
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .json(&message);
        if let Some(version) = &self.version {
            request = request.header("MCP-Protocol-Version", version);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("MCP {method} to {}", self.url))?;
        let status = response.status();
        let text = response.text().await.context("read the MCP answer")?;
        if !status.is_success() {
            bail!("MCP {method} answered HTTP {status}: {text}");
        }
        if notification {
            return Ok(Value::Null);
        }
        let answer: Value = serde_json::from_str(&text)
            .with_context(|| format!("MCP {method} answered no JSON: {text}"))?;
        if let Some(error) = answer.get("error") {
            bail!("MCP {method} answered an error: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// `tools/call`.
    async fn call(&mut self, tool: &str, arguments: Value) -> anyhow::Result<Value> {
        self.send(
            "tools/call",
            json!({"name": tool, "arguments": arguments}),
            false,
        )
        .await
    }
}

/// What the agent step needs.
struct AgentSetup<'a> {
    admin_url: &'a str,
    agent_token: &'a str,
    approver_token: &'a str,
    approver_key: &'a Path,
    audience: &'a str,
    dir: &'a Path,
    keep: bool,
}

/// The first text content of a tool result.
fn tool_text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// One line for a finished plan's first step: status, approver, output.
fn step_line(result: &Value) -> String {
    let content = &result["structuredContent"];
    let step = &content["steps"][0];
    let mut output = format!(
        "HTTP {} {}",
        step["output"]["status"], step["output"]["body"]
    );
    if output.len() > 90 {
        output.truncate(87);
        output.push_str("...");
    }
    format!(
        "{} (approved_by {}): {output}",
        content["status"].as_str().unwrap_or("?"),
        step["approved_by"].as_str().unwrap_or("-")
    )
}

/// Step 7: an agent lists the tools, proposes a write that waits for the
/// approver (who signs it through the approve endpoint the console uses,
/// bound to the review digest the console's list shows) and reads a
/// ticket, which the auto-approver approves. `Ok(true)` when both ran.
async fn agent(setup: &AgentSetup<'_>) -> anyhow::Result<bool> {
    let url = format!("{}/mcp", setup.admin_url);
    println!("\nAgent (a scripted MCP client at {url}, the agent's token: role submit)");
    let mut mcp = McpClient::new(url, setup.agent_token);
    let init = mcp
        .send(
            "initialize",
            json!({
                "protocolVersion": MCP_PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "demo-agent", "version": env!("CARGO_PKG_VERSION")}
            }),
            false,
        )
        .await?;
    mcp.version = init["protocolVersion"].as_str().map(str::to_string);
    mcp.send("notifications/initialized", json!({}), true)
        .await?;
    let tools = mcp.send("tools/list", json!({}), false).await?;
    println!("  tools/list:");
    for tool in tools["tools"].as_array().context("tools/list has tools")? {
        let annotations = &tool["annotations"];
        let hints: Vec<&str> = [
            ("readOnlyHint", "read-only"),
            ("destructiveHint", "destructive"),
            ("idempotentHint", "idempotent"),
        ]
        .into_iter()
        .filter(|(key, _)| annotations[key] == json!(true))
        .map(|(_, shown)| shown)
        .collect();
        // The first line of the description, shortened.
        let mut description: String = tool["description"]
            .as_str()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if description.chars().count() > 70 {
            description = description.chars().take(67).collect::<String>() + "...";
        }
        println!(
            "    {:<20} {:<26} {description}",
            tool["name"].as_str().unwrap_or("?"),
            format!("[{}]", hints.join(", ")),
        );
    }

    // A write: it waits for a person.
    let inputs = json!({"title": "Toner low, 2nd floor", "priority": 3, "customer": "C-1042"});
    let answer = mcp.call("crm.create_ticket", inputs.clone()).await?;
    let content = &answer["structuredContent"];
    let plan_id = content["plan_id"]
        .as_str()
        .with_context(|| format!("no plan id in {answer}"))?
        .to_string();
    if content["status"] != "pending_approval" {
        bail!("crm.create_ticket should wait for approval, got {answer}");
    }
    println!(
        "  tools/call crm.create_ticket {inputs}\n    -> {}",
        tool_text(&answer)
    );

    // The approver, as the console does: the plan and its review digest
    // from the console's list, checked, signed, approved with the digest.
    let approver = AdminClient::new(setup.admin_url).with_token(setup.approver_token);
    let listed: Vec<Value> = approver
        .request(reqwest::Method::GET, "/v1/console/plans")
        .send()
        .await
        .context("GET /v1/console/plans")?
        .error_for_status()
        .context("GET /v1/console/plans")?
        .json()
        .await
        .context("read /v1/console/plans")?;
    let shown = listed
        .into_iter()
        .find(|p| p["id"] == plan_id.as_str())
        .with_context(|| format!("plan {plan_id} is not in the console's list"))?;
    let digest = shown["review_digest"]
        .as_str()
        .context("no review_digest in the console's list")?
        .to_string();
    let plan: PlanView = serde_json::from_value(shown).context("the console's plan")?;
    if review_digest(&plan) != digest {
        bail!("plan {plan_id}: the console's review digest does not match its inputs");
    }
    let signer = KeyFileSigner::from_pem(
        APPROVER_KEY_ID,
        &std::fs::read(setup.approver_key).context("read the approver key")?,
    )
    .map_err(anyhow::Error::msg)?;
    let approvals = sign_plan(
        &signer,
        &plan,
        setup.audience,
        SystemTime::now(),
        Duration::from_secs(15 * 60),
    )
    .map_err(anyhow::Error::msg)?;
    let approve = |expect_digest: String| {
        approver
            .request(
                reqwest::Method::POST,
                &format!("/v1/plans/{plan_id}/approve"),
            )
            .json(&json!({"approvals": approvals, "expect_digest": expect_digest}))
            .send()
    };
    let stale = approve("0".repeat(64)).await.context("approve")?;
    if stale.status() != reqwest::StatusCode::CONFLICT {
        bail!(
            "an approval for another digest should get 409, got {}",
            stale.status()
        );
    }
    println!("  approver: an approval bound to another review digest -> 409 digest_mismatch");
    let approved = approve(digest.clone()).await.context("approve")?;
    if !approved.status().is_success() {
        let status = approved.status();
        bail!(
            "the approval failed: {status} {}",
            approved.text().await.unwrap_or_default()
        );
    }
    println!(
        "  approver: POST /v1/plans/{plan_id}/approve, the step signed with {APPROVER_KEY_ID}, expect_digest {}… (what the console's Approve and sign sends)",
        digest.chars().take(16).collect::<String>()
    );
    let start = Instant::now();
    let created = loop {
        let answer = mcp
            .call(
                "get_plan_result",
                json!({"plan_id": plan_id, "wait_seconds": 3}),
            )
            .await?;
        let status = answer["structuredContent"]["status"].as_str().unwrap_or("");
        if !matches!(status, "pending_approval" | "approved" | "running") {
            break answer;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("plan {plan_id} did not finish: {answer}");
        }
    };
    println!(
        "  tools/call get_plan_result {{\"plan_id\": \"{plan_id}\"}}\n    -> {}",
        step_line(&created)
    );
    let ticket = created["structuredContent"]["steps"][0]["output"]["body"]["id"]
        .as_str()
        .unwrap_or("T-1001")
        .to_string();

    // A read the registry lets the auto-approver approve: no person.
    let read = mcp
        .call("crm.get_ticket", json!({"ticket_id": ticket}))
        .await?;
    println!(
        "  tools/call crm.get_ticket {{\"ticket_id\": \"{ticket}\"}}   (read-only, policy auto)\n    -> {}",
        step_line(&read)
    );
    let auto = format!("auto:{AUTO_KEY_ID}");
    let ok = created["structuredContent"]["status"] == "succeeded"
        && read["structuredContent"]["status"] == "succeeded"
        && read["structuredContent"]["steps"][0]["approved_by"] == auto.as_str();
    step(
        7,
        &format!(
            "agent: the write waited for the approver's signature, the read-only call ran at once, signed by {auto} ({})",
            if ok { "both succeeded" } else { "FAILED" }
        ),
    );
    if setup.keep {
        let token_file = setup.dir.join("approver").join("approver.token");
        write_secret(&token_file, &format!("{}\n", setup.approver_token))
            .context("write the approver's token")?;
        println!(
            "  approval console: {}/console (served until the demo stops; to open it again on the kept plans: orchestrator-mock serve --config {} and /console on the admin URL it prints)",
            setup.admin_url,
            setup.dir.join("orchestrator.toml").display()
        );
        println!(
            "    in the page: the token in {} (roles approve, read), the key file {} (key id {APPROVER_KEY_ID}), audience {}",
            token_file.display(),
            setup.approver_key.display(),
            setup.audience
        );
    }
    Ok(ok)
}

fn print_results(plan: &PlanView) {
    println!("\nResults");
    println!("  {:<2} {:<18} {:<10} output", "#", "task", "status");
    for step in &plan.steps {
        let output = match (&step.output, &step.error_code) {
            (Some(o), _) => {
                let mut text = format!("HTTP {} {}", o["status"], o["body"]);
                if text.len() > 110 {
                    text.truncate(107);
                    text.push_str("...");
                }
                text
            }
            (None, Some(code)) => {
                format!("{code}: {}", step.error_message.clone().unwrap_or_default())
            }
            _ => String::new(),
        };
        println!(
            "  {:<2} {:<18} {:<10} {}",
            step.index,
            step.task,
            format!("{:?}", step.status).to_lowercase(),
            output
        );
    }
}

/// Writes `text` to a new file only its owner may read.
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}{:x}", std::process::id())
}
