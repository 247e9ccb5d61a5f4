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
//! step. Then it waits, prints the results and the audit trail, stops
//! everything and exits 0 only if the plan succeeded.
//! Files (certificates, configs, logs, audit logs) go to a fresh directory
//! that is removed at the end unless `--keep` is given.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use orchestrator_mock::api::{PlanRequest, PlanStatus, PlanView, StepRequest};
use orchestrator_mock::client::AdminClient;
use private_worker_tests::catalog::{self, OrchestratorSetup, WorkerSetup};
use private_worker_tests::pki::ORCHESTRATOR_NAME;
use private_worker_tests::procs::{Process, binary};
use serde_json::json;

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
    println!("  [{n}/6] {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let workdir = tempfile::Builder::new()
        .prefix("private-worker-demo-")
        .tempdir()?;
    let dir = workdir.path().to_path_buf();
    println!("private-worker demo (working directory {})", dir.display());
    let outcome = run(&dir).await;
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
        Ok(false) => bail!("the plan did not succeed (run with --keep to read the logs)"),
        Err(e) => Err(e),
    }
}

async fn run(dir: &Path) -> anyhow::Result<bool> {
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
    let approver_key = approver_dir.join(format!("{APPROVER_KEY_ID}.key"));
    let approvals_section = format!(
        "\n[approvals]\nkeys = [{{ id = \"{APPROVER_KEY_ID}\", public_key = {:?} }}]\n",
        approver_dir
            .join(format!("{APPROVER_KEY_ID}.pub"))
            .display()
            .to_string()
    );
    step(
        1,
        &format!(
            "certificates: dev root CA -> intermediate -> orchestrator ({ORCHESTRATOR_NAME}) and worker {identity}; approver key {APPROVER_KEY_ID} (Ed25519, the private half only with the approver)"
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
    std::fs::write(&registry, catalog::registry_json())?;
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
        }) + &approvals_section,
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
        }) + &approvals_section,
    )?;
    let mut worker = Process::start(
        "private-worker",
        &binary("private-worker"),
        &["--config", worker_config.to_str().context("path")?],
        &[(catalog::TOKEN_ENV, token.as_str())],
        &dir.join("worker.log"),
    );
    println!("        admin tokens (only their SHA-256 is stored; give each holder its own):");
    let admin = AdminClient::new(&admin_url).with_token(create_token(
        &orchestrator_config,
        "agent",
        &["submit", "read"],
    )?);
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

    // Stop everything: the worker drains first.
    let code = worker.terminate(Duration::from_secs(15));
    orchestrator.terminate(Duration::from_secs(10));
    api.kill();
    println!("stopped worker (exit code {code:?}), orchestrator-mock and the internal API");
    Ok(plan.status == PlanStatus::Succeeded && !leaked)
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

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}{:x}", std::process::id())
}
