//! Signed approvals, tried from outside with a hostile orchestrator: the
//! worker trusts an approver key (`[approvals]`), and the scripted
//! orchestrator sends assignments whose approval is missing, forged,
//! tampered, expired, early, for another audience, from an untrusted key,
//! too long-lived, over non-canonical inputs, or replayed (also across a
//! worker restart). Each case names the error code the contract gives it,
//! checks that the internal API received nothing and that the refusal is
//! audited, and that the next good task still runs. Last, the orchestrator's
//! own check: with approver keys it approves a plan only with a valid
//! signature per step, and a signed plan runs end to end.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Env, Options, WAIT};
use orchestrator_mock::api::{ApproveRequest, PlanStatus};
use private_worker_proto::approval::{
    self, Approval, KeyFileSigner, Signer, Statement, Task, canonical_inputs, sign, unix_seconds,
};
use private_worker_proto::v1 as pb;
use private_worker_proto::v1::orchestrator_message::Kind as Down;
use private_worker_tests::procs::Process;
use private_worker_tests::scripted::ScriptedOrchestrator;
use serde_json::{Value, json};

const HEARTBEAT: Duration = Duration::from_secs(2);
const TASK: &str = "crm.create_ticket";

/// An approver key pair written to disk, and its signer.
struct Approver {
    id: String,
    public_key: PathBuf,
    signer: KeyFileSigner,
}

fn approver(dir: &Path, id: &str) -> Approver {
    let (key, public_key) = certs_tool::approver::write_approver_key(dir, id).unwrap();
    let signer = KeyFileSigner::from_pem(id, &std::fs::read(key).unwrap()).unwrap();
    Approver {
        id: id.into(),
        public_key,
        signer,
    }
}

/// The `[approvals]` section trusting `approvers`, plus `extra` lines.
fn approvals_section(approvers: &[&Approver], extra: &str) -> String {
    let keys: Vec<String> = approvers
        .iter()
        .map(|a| {
            format!(
                "{{ id = \"{}\", public_key = {:?} }}",
                a.id,
                a.public_key.display().to_string()
            )
        })
        .collect();
    format!(
        "\n[approvals]\nkeys = [{}]\nmax_validity = \"1h\"\n{extra}\n",
        keys.join(", ")
    )
}

/// A worker that trusts `approvers`, connected to a scripted (hostile)
/// orchestrator; `edit` may change its config text.
async fn worker_trusting(
    approvers: &[&Approver],
    edit: impl FnOnce(String) -> String,
) -> (Env, ScriptedOrchestrator, Process, PathBuf) {
    let env = Env::start(Options::default()).await;
    let section = approvals_section(approvers, "");
    let (orchestrator, worker, config) = common::worker_on_scripted_orchestrator(
        &env,
        HEARTBEAT,
        |_| {},
        |text| edit(format!("{text}{section}")),
    )
    .await;
    (env, orchestrator, worker, config)
}

/// What is signed for one assignment, before any tampering.
struct Order<'a> {
    task_id: &'a str,
    task: &'a str,
    inputs: Value,
    audience: String,
    not_before: i64,
    not_after: i64,
}

impl<'a> Order<'a> {
    /// A good order for the worker of `env`, valid for ten minutes.
    fn new(env: &Env, task_id: &'a str, inputs: Value) -> Order<'a> {
        let now = unix_seconds(SystemTime::now());
        Order {
            task_id,
            task: TASK,
            inputs,
            audience: env.pki.worker_identity.clone(),
            not_before: now - 10,
            not_after: now + 600,
        }
    }

    fn sign(&self, by: &Approver) -> Approval {
        let task = Task {
            task_id: self.task_id,
            plan_id: "plan-1",
            task_name: self.task,
            task_version: "1",
            inputs: &self.inputs,
        };
        sign(
            &by.signer,
            task,
            &self.audience,
            self.not_before,
            self.not_after,
        )
        .unwrap()
    }

    /// The assignment as an honest orchestrator sends it.
    fn assignment(&self, approval: Option<&Approval>) -> pb::Assignment {
        pb::Assignment {
            task_id: self.task_id.into(),
            attempt: 1,
            plan_id: "plan-1".into(),
            step_index: 0,
            task_name: self.task.into(),
            task_version: "1".into(),
            inputs_json: canonical_inputs(&self.inputs).unwrap(),
            approval: approval.map(pb::Approval::from),
            ..Default::default()
        }
    }
}

/// Sends `assignment` and waits for its result.
async fn result_of(
    orchestrator: &ScriptedOrchestrator,
    assignment: pb::Assignment,
) -> pb::TaskResult {
    let key = (assignment.task_id.clone(), assignment.attempt);
    assert!(orchestrator.send(Down::Assignment(assignment)));
    let found = |o: &ScriptedOrchestrator| {
        o.results().into_iter().find(|r| {
            r.task
                .as_ref()
                .is_some_and(|t| t.task_id == key.0 && t.attempt == key.1)
        })
    };
    orchestrator
        .wait_until("the assignment's result", WAIT, |o| found(o).is_some())
        .await;
    found(orchestrator).unwrap()
}

/// The result is a refusal with `code`, audited as such, and no request
/// reached the internal API.
fn assert_refused(env: &Env, result: &pb::TaskResult, code: &str) {
    assert_eq!(result.outcome(), pb::Outcome::Rejected, "{result:#?}");
    assert_eq!(result.error_code, code, "{result:#?}");
    assert!(
        result.error_message.contains("nothing ran"),
        "{}",
        result.error_message
    );
    let audit = result.audit.as_ref().expect("an audit record");
    assert_eq!(audit.error_code, code);
    assert!(audit.started_at.is_none(), "nothing started: {audit:#?}");
    assert!(
        env.api.requests().is_empty(),
        "the internal API received {:?}",
        env.api.requests()
    );
}

/// A good signed task after the hostile one runs.
async fn next_good_task_runs(env: &Env, orchestrator: &ScriptedOrchestrator, by: &Approver) {
    let order = Order::new(
        env,
        "T-next-good",
        json!({"title": "after the hostile one"}),
    );
    let result = result_of(orchestrator, order.assignment(Some(&order.sign(by)))).await;
    assert_eq!(result.outcome(), pb::Outcome::Succeeded, "{result:#?}");
}

/// One hostile case: a worker trusting key `k1`, the assignment `order`
/// signed by `k1` and then changed by `tamper`, refused with `code`.
async fn refused_case(
    code: &str,
    order: impl FnOnce(&Env) -> Order<'static>,
    tamper: impl FnOnce(&Env, &mut pb::Assignment, &Approver),
) {
    let keys = tempfile::tempdir().unwrap();
    let k1 = approver(keys.path(), "k1");
    let (env, orchestrator, _worker, _) = worker_trusting(&[&k1], |t| t).await;
    let order = order(&env);
    let mut assignment = order.assignment(Some(&order.sign(&k1)));
    tamper(&env, &mut assignment, &k1);
    let result = result_of(&orchestrator, assignment).await;
    assert_refused(&env, &result, code);
    next_good_task_runs(&env, &orchestrator, &k1).await;
}

fn ticket(env: &Env) -> Order<'static> {
    Order::new(env, "T-hostile", json!({"title": "approved title"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_without_an_approval_is_refused_and_nothing_runs() {
    refused_case("approval_missing", ticket, |_, a, _| a.approval = None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_none_with_a_megabyte_signature_is_refused() {
    refused_case("approval_invalid", ticket, |_, a, _| {
        let approval = a.approval.as_mut().unwrap();
        approval.algorithm = "none".into();
        approval.signature = vec![0x5a; 1024 * 1024];
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_changed_after_signing_are_refused() {
    refused_case("approval_invalid", ticket, |_, a, _| {
        a.inputs_json = canonical_inputs(&json!({"title": "DROP everything"})).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_allowlisted_task_under_a_valid_approval_is_refused() {
    refused_case("approval_invalid", ticket, |_, a, _| {
        a.task_name = "diag.echo".into();
        a.inputs_json = canonical_inputs(&json!({"message": "approved title"})).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_approval_moved_to_a_fresh_task_id_is_refused() {
    refused_case("approval_invalid", ticket, |_, a, _| {
        a.task_id = "T-fresh-id".into();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_approval_moved_to_another_plan_is_refused() {
    refused_case("approval_invalid", ticket, |_, a, _| {
        a.plan_id = "plan-2".into();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stretched_window_breaks_the_signature() {
    refused_case("approval_invalid", ticket, |_, a, _| {
        let approval = a.approval.as_mut().unwrap();
        approval.not_after.as_mut().unwrap().seconds += 300;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_approval_is_refused() {
    refused_case(
        "approval_expired",
        |env| {
            let mut order = ticket(env);
            order.not_before -= 3_000;
            order.not_after = order.not_before + 600;
            order
        },
        |_, _, _| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_not_yet_valid_is_refused() {
    refused_case(
        "approval_not_yet_valid",
        |env| {
            let mut order = ticket(env);
            order.not_before += 1_200;
            order.not_after = order.not_before + 600;
            order
        },
        |_, _, _| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_for_another_worker_is_refused() {
    refused_case(
        "approval_wrong_audience",
        |env| {
            let mut order = ticket(env);
            order.audience = "spiffe://example.org/worker/someone-else".into();
            order
        },
        |_, _, _| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_from_a_key_the_worker_does_not_trust_is_refused() {
    let other = tempfile::tempdir().unwrap();
    let stranger = approver(other.path(), "k-stranger");
    refused_case("approval_unknown_key", ticket, move |env, a, _| {
        let order = ticket(env);
        a.approval = Some(pb::Approval::from(&order.sign(&stranger)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_key_id_over_a_signature_by_another_key_is_refused() {
    let other = tempfile::tempdir().unwrap();
    // Same key id as the trusted key, different key material.
    let impostor = approver(other.path(), "k1");
    refused_case("approval_invalid", ticket, move |env, a, _| {
        let order = ticket(env);
        a.approval = Some(pb::Approval::from(&order.sign(&impostor)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_longer_than_the_worker_accepts_is_refused() {
    refused_case(
        "approval_invalid",
        |env| {
            let mut order = ticket(env);
            // The worker's max_validity is 1h here.
            order.not_after = order.not_before + 2 * 3600;
            order
        },
        |_, _, _| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_signed_in_a_non_canonical_form_are_refused() {
    refused_case("approval_invalid", ticket, |env, a, k1| {
        // A signer that signed the text as sent, with a repeated member:
        // the signature holds, but the text could mean two things.
        let text = r#"{"title":"approved title","title":"other title"}"#;
        let approval = a.approval.as_ref().map(Approval::from).unwrap();
        let statement = Statement {
            task_id: a.task_id.clone(),
            plan_id: a.plan_id.clone(),
            task_name: a.task_name.clone(),
            task_version: a.task_version.clone(),
            inputs_sha256: approval::sha256_hex(text),
            audience: env.pki.worker_identity.clone(),
            key_id: "k1".into(),
            nonce: approval.nonce.clone(),
            not_before: approval.not_before.unwrap(),
            not_after: approval.not_after.unwrap(),
        };
        let signature = k1.signer.sign(&statement.signing_bytes()).unwrap();
        a.inputs_json = text.into();
        a.approval.as_mut().unwrap().signature = signature;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_approval_again_for_its_own_task_id_does_not_run_twice() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = approver(keys.path(), "k1");
    let (env, orchestrator, _worker, _) = worker_trusting(&[&k1], |t| t).await;
    let order = ticket(&env);
    let approval = order.sign(&k1);
    let first = result_of(&orchestrator, order.assignment(Some(&approval))).await;
    assert_eq!(first.outcome(), pb::Outcome::Succeeded, "{first:#?}");
    let mut again = order.assignment(Some(&approval));
    again.attempt = 2;
    let second = result_of(&orchestrator, again).await;
    // The journal still remembers the task id: its rules answer.
    assert_eq!(second.error_code, "already_started", "{second:#?}");
    assert_eq!(env.api.requests().len(), 1, "the call happened once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_approval_is_refused_after_a_worker_restart() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = approver(keys.path(), "k1");
    // The journal remembers one acknowledged task id only, so the replayed
    // task id is forgotten: only the used-approval record stops it.
    let (env, orchestrator, mut worker, config) = worker_trusting(&[&k1], |t| {
        t.replace("[worker]\n", "[worker]\njournal_retain = 1\n")
    })
    .await;
    let order = ticket(&env);
    let approval = order.sign(&k1);
    let first = result_of(&orchestrator, order.assignment(Some(&approval))).await;
    assert_eq!(first.outcome(), pb::Outcome::Succeeded, "{first:#?}");
    next_good_task_runs(&env, &orchestrator, &k1).await;
    // Give the journal's unawaited acknowledgement writes a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.kill();
    let mut worker = env.start_worker_with(&config, "worker-restarted");
    worker.wait_for("connected to orchestrator", WAIT);

    let mut replay = order.assignment(Some(&approval));
    replay.attempt = 2;
    let result = result_of(&orchestrator, replay).await;
    assert_eq!(result.outcome(), pb::Outcome::Rejected, "{result:#?}");
    assert_eq!(result.error_code, "approval_replayed", "{result:#?}");
    let tickets = env
        .api
        .requests()
        .iter()
        .filter(|r| r.uri == "/tickets" && r.body.contains("approved title"))
        .count();
    assert_eq!(tickets, 1, "run once, not twice");
    let order = Order::new(&env, "T-after-restart", json!({"title": "still serving"}));
    let result = result_of(&orchestrator, order.assignment(Some(&order.sign(&k1)))).await;
    assert_eq!(result.outcome(), pb::Outcome::Succeeded, "{result:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_of_two_trusted_keys_approves_during_a_rotation() {
    let keys = tempfile::tempdir().unwrap();
    let old = approver(keys.path(), "approvals-2026-11");
    let new = approver(keys.path(), "approvals-2026-12");
    let (env, orchestrator, _worker, _) = worker_trusting(&[&old, &new], |t| t).await;
    for (task_id, by) in [("T-old-key", &old), ("T-new-key", &new)] {
        let order = Order::new(&env, task_id, json!({"title": task_id}));
        let result = result_of(&orchestrator, order.assignment(Some(&order.sign(by)))).await;
        assert_eq!(result.outcome(), pb::Outcome::Succeeded, "{result:#?}");
    }
    assert_eq!(env.api.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_audience_the_worker_accepts_and_a_task_exempted_by_config_both_run() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = approver(keys.path(), "k1");
    let (env, orchestrator, _worker, _) = worker_trusting(&[&k1], |t| {
        t.replace(
            "max_validity = \"1h\"\n",
            "max_validity = \"1h\"\naudiences = [\"pool:crm-eu\"]\n",
        )
        .replace(
            "[tasks.\"diag.echo\"]\n",
            "[tasks.\"diag.echo\"]\nrequire_approval = false\n",
        )
    })
    .await;
    let mut order = Order::new(&env, "T-pool", json!({"title": "for the pool"}));
    order.audience = "pool:crm-eu".into();
    let result = result_of(&orchestrator, order.assignment(Some(&order.sign(&k1)))).await;
    assert_eq!(result.outcome(), pb::Outcome::Succeeded, "{result:#?}");
    let unsigned = pb::Assignment {
        task_id: "T-exempt".into(),
        attempt: 1,
        plan_id: "plan-1".into(),
        task_name: "diag.echo".into(),
        task_version: "1".into(),
        inputs_json: json!({"message": "no approval needed"}).to_string(),
        ..Default::default()
    };
    let result = result_of(&orchestrator, unsigned).await;
    assert_eq!(result.outcome(), pb::Outcome::Succeeded, "{result:#?}");
    // The signed one is still required for the other tasks.
    let mut order = Order::new(&env, "T-unsigned", json!({"title": "x"}));
    order.task = TASK;
    let result = result_of(&orchestrator, order.assignment(None)).await;
    assert_eq!(result.error_code, "approval_missing", "{result:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_approver_key_fails_check_and_start_naming_the_key() {
    let env = Env::start(Options::default()).await;
    let not_a_key = env.path("broken.pub");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let config = env.write_worker_config_with(&format!(
        "[approvals]\nkeys = [{{ id = \"k-broken\", public_key = {:?} }}]\n",
        not_a_key.display().to_string()
    ));
    let check = std::process::Command::new(private_worker_tests::procs::binary("private-worker"))
        .args(["--config", config.to_str().unwrap(), "--check"])
        .env(private_worker_tests::catalog::TOKEN_ENV, &env.token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("k-broken") && l.contains("broken.pub")),
        "{stdout}"
    );
    let mut worker = env.start_worker_with(&config, "worker");
    let code = worker.wait_exit(WAIT);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
    let log = worker.output();
    assert!(
        log.contains("k-broken") && log.contains("broken.pub"),
        "{log}"
    );
}

/// The orchestrator side: an Env whose orchestrator trusts `k1`, and a
/// worker that does too.
async fn signing_env(k1: &Approver) -> (Env, Process) {
    let env = Env::start(Options {
        approval_keys: vec![(k1.id.clone(), k1.public_key.clone())],
        ..Options::default()
    })
    .await;
    let config = env.write_worker_config_with(&approvals_section(&[k1], ""));
    let worker = env.start_worker_with(&config, "worker");
    env.wait_connected(&env.pki.worker_identity).await;
    (env, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_approves_a_plan_only_with_a_valid_signature_per_step() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = approver(keys.path(), "k1");
    let other = tempfile::tempdir().unwrap();
    let stranger = approver(other.path(), "k1");
    let (env, _worker) = signing_env(&k1).await;
    let plan = env
        .submit(&[(TASK, json!({"title": "needs a signature"}))])
        .await;

    // Unsigned, forged (same key id, other key), and signed for another plan.
    let unsigned = env.admin.approve(&plan.id).await.unwrap_err();
    assert!(
        unsigned.to_string().contains("approval_invalid"),
        "{unsigned}"
    );
    let now = SystemTime::now();
    let forged = orchestrator_mock::approvals::sign_plan(
        &stranger.signer,
        &plan,
        "pool:x",
        now,
        Duration::from_secs(600),
    )
    .unwrap();
    let err = env
        .admin
        .approve_with(&plan.id, &ApproveRequest { approvals: forged })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("approval_invalid"), "{err}");
    let other_plan = env
        .submit(&[(TASK, json!({"title": "needs a signature"}))])
        .await;
    let mut moved = orchestrator_mock::approvals::sign_plan(
        &k1.signer,
        &other_plan,
        &env.pki.worker_identity,
        now,
        Duration::from_secs(600),
    )
    .unwrap();
    moved[0].task_id = plan.steps[0].task_id.clone();
    let err = env
        .admin
        .approve_with(&plan.id, &ApproveRequest { approvals: moved })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("approval_invalid"), "{err}");
    let still = env.admin.plan(&plan.id).await.unwrap();
    assert_eq!(still.status, PlanStatus::PendingApproval, "{still:#?}");
    assert!(env.api.requests().is_empty());

    // Signed by the trusted key: approved, sent with the signature, run.
    let approvals = orchestrator_mock::approvals::sign_plan(
        &k1.signer,
        &plan,
        &env.pki.worker_identity,
        now,
        Duration::from_secs(600),
    )
    .unwrap();
    env.admin
        .approve_with(&plan.id, &ApproveRequest { approvals })
        .await
        .unwrap();
    let done = env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded, "{done:#?}");
    assert_eq!(env.api.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_approval_does_not_run_an_idempotent_task_again_after_a_definite_outcome() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = approver(keys.path(), "k1");
    let (env, orchestrator, _worker, _) = worker_trusting(&[&k1], |t| t).await;
    // `crm.get_ticket` is idempotent on both sides: the journal alone would
    // let attempt 2 run again.
    let mut order = Order::new(&env, "T-read", json!({"ticket_id": "T-1"}));
    order.task = "crm.get_ticket";
    let approval = order.sign(&k1);
    let first = result_of(&orchestrator, order.assignment(Some(&approval))).await;
    assert_ne!(first.outcome(), pb::Outcome::Rejected, "{first:#?}");
    assert_ne!(first.outcome(), pb::Outcome::Unknown, "{first:#?}");
    let mut again = order.assignment(Some(&approval));
    again.attempt = 2;
    let second = result_of(&orchestrator, again).await;
    assert_eq!(second.error_code, "approval_replayed", "{second:#?}");
    assert_eq!(env.api.requests().len(), 1, "the call happened once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvers_tool_signs_only_the_plan_whose_review_digest_it_was_given() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = approver(keys.path(), "k1");
    let (env, _worker) = signing_env(&k1).await;
    let plan = env
        .submit(&[(TASK, json!({"title": "reviewed before signing"}))])
        .await;
    let orchestrator = env.orchestrator.as_ref().unwrap();
    let token = orchestrator
        .tokens()
        .issue(
            "alice",
            &[
                orchestrator_mock::tokens::Role::Approve,
                orchestrator_mock::tokens::Role::Read,
            ],
        )
        .unwrap();
    let key_file = keys.path().join("k1.key");
    let approve = |digest: Option<&str>| {
        let mut command =
            std::process::Command::new(private_worker_tests::procs::binary("orchestrator-mock"));
        command
            .args(["plan", "approve", plan.id.as_str(), "--key"])
            .arg(&key_file)
            .args(["--key-id", "k1", "--audience", &env.pki.worker_identity])
            .env("ORCHESTRATOR_ADMIN_URL", orchestrator.admin_url())
            .env("ORCHESTRATOR_MOCK_TOKEN", &token);
        if let Some(digest) = digest {
            command.args(["--expect-digest", digest]);
        }
        command.output().unwrap()
    };

    // Without a digest: the steps and the digest are shown, nothing signed.
    let review = approve(None);
    let shown = String::from_utf8_lossy(&review.stderr).to_string();
    assert!(!review.status.success(), "{shown}");
    assert!(shown.contains("reviewed before signing"), "{shown}");
    let digest = shown
        .lines()
        .find_map(|l| l.strip_prefix("review digest: "))
        .unwrap_or_else(|| panic!("no digest in {shown}"))
        .to_string();
    assert_eq!(digest, orchestrator_mock::approvals::review_digest(&plan));
    // A digest of other content (what a swapped plan looks like): refused.
    let swapped = approve(Some(&"0".repeat(64)));
    assert!(!swapped.status.success());
    assert!(
        String::from_utf8_lossy(&swapped.stderr).contains("differs from the one you reviewed"),
        "{}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    let still = env.admin.plan(&plan.id).await.unwrap();
    assert_eq!(still.status, PlanStatus::PendingApproval);

    let signed = approve(Some(&digest));
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let done = env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded, "{done:#?}");
}
