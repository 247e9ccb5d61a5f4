//! The `orchestrator-mock` binary as a user runs it: `check`, `serve` with
//! its ready line and signal handling, and the admin subcommands.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator-mock");

#[test]
fn check_reports_every_bad_config_key_with_its_path_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "registry = 1\ndata_dir = \"d\"\n[tls]\nca_cert = \"ca.pem\"\ncert = \"c.pem\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("registry: expected a string"), "{text}");
    assert!(text.contains("tls.key: missing"), "{text}");
}

#[test]
fn check_accepts_a_complete_setup() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, text) = common::write_setup(dir.path());
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok   registry: 2 task versions"), "{text}");
    assert!(text.contains("ok   tls"), "{text}");
    // The server certificate's serial and expiry, and how often it is re-read.
    assert!(text.contains("(serial "), "{text}");
    assert!(text.contains(", not_after "), "{text}");
    assert!(text.contains("files re-read every 30s"), "{text}");
    assert!(
        text.contains(
            "ok   policies: 2 task version(s) approved by a person, 0 automatically, 0 denied; no auto-approver"
        ),
        "{text}"
    );
}

#[test]
fn check_fails_when_the_registry_has_auto_tasks_and_no_auto_approver() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, text) = common::write_setup(dir.path());
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(&config, text).unwrap();
    let registry = serde_json::json!({"tasks": [
        {"name": "crm.get_ticket", "version": "1", "input_schema": {"type": "object"},
         "read_only": true, "approval": "auto"}
    ]});
    std::fs::write(dir.path().join("registry.json"), registry.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL policies: the registry has tasks with approval = \"auto\" (crm.get_ticket v1) but [approvals] auto_approver is not set"),
        "{text}"
    );
}

#[test]
fn serve_prints_one_ready_line_the_cli_talks_to_it_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, text) = common::write_setup(dir.path());
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("orchestrator-mock ready grpc=127.0.0.1:"),
        "{line}"
    );
    let admin = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap()
        .to_string();

    // A token as a user makes one: printed once on stdout.
    let out = Command::new(BIN)
        .args(["token", "create", "--config"])
        .arg(&config)
        .args(["--name", "cli-user", "--role", "submit", "--role", "read"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("pwm_"), "{token}");
    let out = Command::new(BIN)
        .args(["token", "list", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.starts_with("cli-user\tread,submit\t"), "{listed}");
    assert!(!listed.contains(&token), "{listed}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"steps": [{"task": "crm.create_ticket", "inputs": {"priority": 9}}, {"task": "nope", "inputs": {}}]}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["plan", "submit"])
        .arg(&plan)
        .env("ORCHESTRATOR_ADMIN_URL", &admin)
        .env("ORCHESTRATOR_MOCK_TOKEN", &token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("step 0 (crm.create_ticket) at /priority:"),
        "{err}"
    );
    assert!(err.contains("step 1 (nope) at /: unknown task"), "{err}");

    // A trace context given on the command line is stored and shown; an
    // invalid one refuses the plan (exit 2) naming the field.
    let traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    std::fs::write(
        &plan,
        r#"{"steps": [{"task": "crm.create_ticket", "inputs": {"title": "traced"}}]}"#,
    )
    .unwrap();
    let submit = |traceparent: &str| {
        Command::new(BIN)
            .args(["plan", "submit", "--json", "--traceparent", traceparent])
            .arg(&plan)
            .env("ORCHESTRATOR_ADMIN_URL", &admin)
            .env("ORCHESTRATOR_MOCK_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = submit(traced);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(submitted["traceparent"], traced);
    let out = Command::new(BIN)
        .args(["plan", "show", "--json"])
        .arg(submitted["id"].as_str().unwrap())
        .env("ORCHESTRATOR_ADMIN_URL", &admin)
        .env("ORCHESTRATOR_MOCK_TOKEN", &token)
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["traceparent"], traced, "plan show prints it");
    let out = submit(&traced.to_uppercase());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("traceparent_invalid"), "{err}");
    assert!(err.contains("lower-case hex"), "{err}");

    let out = Command::new(BIN)
        .args(["tasks", "--admin-url", &admin, "--json", "--token-file"])
        .arg(&token_file)
        .env_remove("ORCHESTRATOR_MOCK_TOKEN")
        .output()
        .unwrap();
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 2);

    // Without a token the CLI says how to get one; after a revoke the
    // server refuses it.
    let out = Command::new(BIN)
        .args(["tasks", "--admin-url", &admin])
        .env_remove("ORCHESTRATOR_MOCK_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no admin token: set ORCHESTRATOR_MOCK_TOKEN"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["token", "revoke", "--config"])
        .arg(&config)
        .args(["--name", "cli-user"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["tasks", "--admin-url", &admin])
        .env("ORCHESTRATOR_MOCK_TOKEN", &token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unknown or revoked token (HTTP 401, unauthenticated)"),
        "{err}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "serve printed more than the ready line: {rest}"
    );
}
