//! The approval console in a real browser: headless Chromium from Debian's
//! packages (`/usr/bin/chromium`), driven by playwright-core
//! (`tests/console/console_test.mjs`), against the orchestrator-mock, a
//! worker that checks signed approvals and the internal API.
//!
//! The page signs in the browser with the approver's key file (the
//! orchestrator trusts only the public key): approving runs the task,
//! rejecting runs nothing, hostile inputs stay text, and a screenshot is
//! written to `target/console-screenshot.png`; a plan list rewritten as a
//! lying orchestrator would send it (other inputs than the plan holds)
//! gets no signature when the digests disagree, and when they agree the
//! card says the plan changed since it was first shown and cannot approve
//! it; a later list that breaks the page leaves the old cards, whose click
//! signs exactly the plan they drew. Also here, without a
//! browser: the approve endpoint refuses an approval pinned to a review
//! digest that is not the plan's.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Env, Options, WAIT};
use orchestrator_mock::api::PlanStatus;
use orchestrator_mock::tokens::Role;
use private_worker_tests::procs::Process;
use serde_json::json;

const TASK: &str = "crm.create_ticket";

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fails, naming the install commands, when Chromium, node or the test's
/// npm packages are missing.
fn require_browser() {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium (apt-get install -y --no-install-recommends chromium)");
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("node (apt-get install -y --no-install-recommends nodejs npm)");
    }
    if !workspace()
        .join("tests/console/node_modules/playwright-core")
        .exists()
    {
        missing.push("tests/console/node_modules/playwright-core (cd tests/console && npm ci)");
    }
    assert!(
        missing.is_empty(),
        "the console test drives a real browser and needs: {}; .ci/run installs them",
        missing.join(", ")
    );
}

/// An orchestrator trusting approver key `console-approver`, a worker
/// that checks approvals by the same key, and the private key's path.
async fn signing_env(keys: &Path) -> (Env, Process, PathBuf) {
    let (key, public_key) =
        certs_tool::approver::write_approver_key(keys, "console-approver").unwrap();
    let env = Env::start(Options {
        approval_keys: vec![("console-approver".into(), public_key.clone())],
        ..Options::default()
    })
    .await;
    let config = env.write_worker_config_with(&format!(
        "[approvals]\nkeys = [{{ id = \"console-approver\", public_key = {:?} }}]\nmax_validity = \"1h\"\n",
            public_key.display().to_string()
    ));
    let worker = env.start_worker_with(&config, "worker");
    env.wait_connected(&env.pki.worker_identity).await;
    (env, worker, key)
}

/// A token with the roles the console needs (read and approve).
fn console_token(env: &Env) -> String {
    env.orchestrator
        .as_ref()
        .unwrap()
        .tokens()
        .create("console-person", &[Role::Read, Role::Approve])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_console_approves_with_a_signature_made_in_the_page_and_rejects_without_running()
 {
    require_browser();
    let keys = tempfile::tempdir().unwrap();
    let (env, _worker, key) = signing_env(keys.path()).await;
    let token = console_token(&env);
    let approve = env
        .submit(&[(
            TASK,
            json!({"title": "console approves this", "priority": 2}),
        )])
        .await;
    let reject = env
        .submit(&[(TASK, json!({"title": "console rejects this"}))])
        .await;
    let hostile_title = "<img src=x onerror=window.__pwned=true>";
    let hostile = env.submit(&[(TASK, json!({"title": hostile_title}))]).await;

    let screenshot = workspace().join("target/console-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("{}/console", env.orchestrator.as_ref().unwrap().admin_url());
    let args: Vec<String> = vec![
        workspace()
            .join("tests/console/console_test.mjs")
            .display()
            .to_string(),
        url,
        key.display().to_string(),
        "console-approver".into(),
        env.pki.worker_identity.clone(),
        approve.id.clone(),
        reject.id.clone(),
        hostile.id.clone(),
        screenshot.display().to_string(),
        workspace()
            .join("proto/testvectors/approval.json")
            .display()
            .to_string(),
    ];
    let run = tokio::process::Command::new("node")
        .args(&args)
        .env("CONSOLE_TOKEN", &token)
        .current_dir(workspace().join("tests/console"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT * 6, run)
        .await
        .expect("the browser test did not finish")
        .expect("node could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    for line in [
        "ok signing bytes equal the test vector's",
        "ok the page's Ed25519 signature equals the test vector's",
        "ok the inputs are shown with what the schema says of each field",
        "ok hostile inputs created no element and ran no script",
        "ok the approved plan runs and moves to finished as succeeded",
        "ok the finished plan shows the audit chain verdict ok",
        "ok the page signs nothing when its review digest differs from the orchestrator's",
        "ok the card says the plan changed since it was first shown",
        "ok a plan whose digest changed cannot be approved from the page",
        "ok the old card stays, with the inputs it drew",
        "ok the click signs the drawn plan",
        "ok no script error in the page",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let png = std::fs::read(&screenshot).expect("no screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");

    // What the internal API saw: the approved ticket once, the others never.
    assert_eq!(common::tickets_titled(&env.api, "console approves this"), 1);
    assert_eq!(common::tickets_titled(&env.api, "console rejects this"), 0);
    assert_eq!(common::tickets_titled(&env.api, "a harmless title"), 0);
    assert_eq!(
        common::requests_to(&env.api, "/tickets"),
        1,
        "only the approved plan reached the internal API"
    );
    let done = env.admin.plan(&approve.id).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded);
    assert_eq!(
        done.steps[0].approved_by.as_deref(),
        Some("console-approver")
    );
    assert_eq!(
        env.admin.plan(&reject.id).await.unwrap().status,
        PlanStatus::Rejected
    );
    assert_eq!(
        env.admin.plan(&hostile.id).await.unwrap().status,
        PlanStatus::PendingApproval
    );
    let worker_log = std::fs::read_to_string(env.path("worker.log")).unwrap();
    assert!(
        !worker_log.contains("console rejects this"),
        "the rejected plan reached the worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_pinned_to_another_review_digest_is_refused_and_nothing_runs() {
    let keys = tempfile::tempdir().unwrap();
    let (env, _worker, key) = signing_env(keys.path()).await;
    let token = console_token(&env);
    let plan = env
        .submit(&[(TASK, json!({"title": "pinned digest"}))])
        .await;
    let signer = private_worker_proto::approval::KeyFileSigner::from_pem(
        "console-approver",
        &std::fs::read(&key).unwrap(),
    )
    .unwrap();
    let approvals = orchestrator_mock::approvals::sign_plan(
        &signer,
        &plan,
        &env.pki.worker_identity,
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    )
    .unwrap();
    let url = format!(
        "{}/v1/plans/{}/approve",
        env.orchestrator.as_ref().unwrap().admin_url(),
        plan.id
    );
    let post = |digest: String| {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"approvals": approvals, "expect_digest": digest}))
            .send()
    };

    // The digest of what the person saw: another plan's (the content
    // changed after it was shown). Valid signatures, yet refused.
    let mut other = plan.clone();
    other.steps[0].inputs = json!({"title": "what the person saw"});
    let seen = orchestrator_mock::approvals::review_digest(&other);
    let refused = post(seen.clone()).await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::CONFLICT);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "digest_mismatch", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&seen) && message.contains("nothing was approved"),
        "{message}"
    );
    assert_eq!(
        env.admin.plan(&plan.id).await.unwrap().status,
        PlanStatus::PendingApproval
    );

    // The right digest: approved, and it runs.
    let digest = orchestrator_mock::approvals::review_digest(&plan);
    let accepted = post(digest).await.unwrap();
    assert_eq!(accepted.status(), reqwest::StatusCode::OK);
    let done = env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded);
    assert_eq!(common::tickets_titled(&env.api, "pinned digest"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_is_served_without_a_token_and_its_data_only_with_one() {
    let env = Env::start(Options::default()).await;
    let base = env.orchestrator.as_ref().unwrap().admin_url();
    let client = reqwest::Client::new();
    let page = client.get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("Approval console"));
    let data = client
        .get(format!("{base}/v1/console/plans"))
        .send()
        .await
        .unwrap();
    assert_eq!(data.status(), reqwest::StatusCode::UNAUTHORIZED);
    let token = console_token(&env);
    let plan = env.submit(&[(TASK, json!({"title": "listed"}))]).await;
    let listed: serde_json::Value = client
        .get(format!("{base}/v1/console/plans"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], plan.id.as_str(), "{listed}");
    assert_eq!(
        listed[0]["review_digest"],
        orchestrator_mock::approvals::review_digest(&plan).as_str()
    );
    // A page from another site cannot use it, even with the token.
    let cross = client
        .get(format!("{base}/v1/console/plans"))
        .bearer_auth(&token)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), reqwest::StatusCode::FORBIDDEN);
}
