//! Encoded credentials stay inside: the sample internal API answers the
//! worker's own bearer token in one encoding per test (`GET /leak/{form}`:
//! raw, base64 and base64url at each of the three alignments inside a
//! longer value, URL-encoded with upper- and lower-case hex, hex in both
//! cases, JSON-escaped inside a JSONP body), and the token in that form
//! reaches neither the orchestrator (every byte it received, what it
//! stored, the audit records it serves) nor the worker's log or local audit
//! log, while the task still succeeds with the rest of the answer intact.
//!
//! The token has `/`, `+`, `=`, `"` and `\` in it, so every encoding differs
//! from the raw value (and the raw value differs from its JSON-escaped
//! form, which is what a JSON store holds). The `diag.leak` task is this
//! file's own (appended to the worker's config; the orchestrator runs with
//! its registry checks off so the shared catalog and the conformance pack
//! stay as they are): what is tested is the worker's masking alone.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use common::{Env, Options, contains, read_tree};
use orchestrator_mock::api::{PlanRequest, PlanStatus, StepRequest, StepStatus};
use private_worker_tests::catalog::TOKEN_ENV;
use private_worker_tests::internal_api::{LEAK_KEPT, leak_encoding};
use serde_json::{Value, json};

/// The marker the worker puts where a credential was.
const REDACTED: &str = "[REDACTED]";

/// The base64 characters only the token's own bits decide when it starts
/// `offset` bytes into a 3-byte group: what a reader of the encoded value
/// could turn back into the token.
fn token_base64(engine: &base64::engine::GeneralPurpose, token: &str, offset: usize) -> String {
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(token.as_bytes());
    let encoded = engine.encode(&bytes);
    let first = (8 * offset).div_ceil(6);
    let end = 8 * (offset + token.len()) / 6;
    encoded[first..end].to_string()
}

/// The token in `form`, as the forms to look for everywhere.
fn token_forms(token: &str, form: &str) -> Vec<String> {
    let offset = |f: &str| f.rsplit('-').next().unwrap().parse::<usize>().unwrap();
    match form {
        "raw" => vec![token.to_string()],
        f if f.starts_with("base64url-") => vec![token_base64(&URL_SAFE_NO_PAD, token, offset(f))],
        f if f.starts_with("base64-") => vec![token_base64(&STANDARD_NO_PAD, token, offset(f))],
        "url" => {
            let leaked = leak_encoding(token, "url").unwrap();
            leaked
                .iter()
                .map(|u| {
                    let q = u.split_once("token=").unwrap().1;
                    q.split_once('&').unwrap().0.to_string()
                })
                .collect()
        }
        "hex" => vec![hex::encode(token), hex::encode_upper(token)],
        "json" => leak_encoding(token, "json").unwrap(),
        other => panic!("unknown form {other}"),
    }
}

/// `text` as it appears inside a JSON string (how a JSON store holds it).
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap();
    quoted[1..quoted.len() - 1].to_string()
}

/// A token no encoding leaves unchanged.
fn hostile_token() -> String {
    format!("{}/a+b=\"c\\d", common::unique_secret())
}

/// The test's world: the orchestrator (registry checks off, wire
/// captured) and a worker whose token is [`hostile_token`], with the
/// `diag.leak` task in its config.
async fn leak_world() -> (Env, private_worker_tests::procs::Process) {
    let mut env = Env::start(Options {
        wire_capture: true,
        insecure_skip_checks: true,
        ..Options::default()
    })
    .await;
    env.token = hostile_token();
    env.api.set_token(&env.token);
    let config = env.write_worker_config_with(&format!(
        "[tasks.\"diag.leak\"]\nversion = \"1\"\ntimeout = \"10s\"\nidempotent = true\n\
         input_schema = {{ type = \"object\", required = [\"form\"], additionalProperties = false, \
         properties = {{ form = {{ type = \"string\", pattern = \"^[a-z0-9-]{{1,16}}$\" }} }} }}\n\n\
         [tasks.\"diag.leak\".http]\nmethod = \"GET\"\nurl = \"{}/leak/{{form}}\"\n\
         auth = {{ type = \"bearer\", secret = \"env://{TOKEN_ENV}\" }}\n",
        env.api.base_url()
    ));
    let worker = env.start_worker_with(&config, "worker");
    env.wait_connected(&env.pki.worker_identity).await;
    (env, worker)
}

/// Runs one `diag.leak` step with `form` as its input and waits for the end.
async fn run_leak(env: &Env, form: &str) -> orchestrator_mock::api::PlanView {
    let plan = env
        .admin
        .submit_plan(&PlanRequest {
            name: Some("masking".into()),
            steps: vec![StepRequest {
                task: "diag.leak".into(),
                version: Some("1".into()),
                inputs: json!({"form": form}),
            }],
        })
        .await
        .unwrap();
    env.admin.approve(&plan.id).await.unwrap();
    env.admin
        .wait_for_plan(&plan.id, common::WAIT)
        .await
        .unwrap()
}

/// Runs `diag.leak` for `form` against a worker whose token is
/// [`hostile_token`], and checks every place the token must not reach.
async fn the_token_in(form: &str) {
    let (env, worker) = leak_world().await;
    let plan = run_leak(&env, form).await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
    let step = &plan.steps[0];
    assert_eq!(step.status, StepStatus::Succeeded, "{step:#?}");

    // The API really answered the token in this form.
    assert_eq!(common::requests_to(&env.api, &format!("/leak/{form}")), 1);
    let forms = token_forms(&env.token, form);
    let answered = leak_encoding(&env.token, form).unwrap().join("\n");
    for f in &forms {
        assert!(f.len() >= 6 && f != &env.token || form == "raw", "{f}");
        assert!(
            answered.contains(f.as_str()),
            "{form}: {f} not in {answered}"
        );
    }

    // Nowhere: not in the token's form, not as a JSON store holds it, and
    // not raw.
    let mut needles: Vec<String> = forms
        .iter()
        .flat_map(|f| [f.clone(), json_escaped(f)])
        .collect();
    needles.push(env.token.clone());
    needles.push(json_escaped(&env.token));
    let wire = read_tree(&env.path("wire"));
    assert!(
        contains(&wire, step.task_id.as_bytes()),
        "the wire capture must hold the session's bytes for this check to mean anything"
    );
    let stored = env.orchestrator_data();
    assert!(
        contains(&stored, LEAK_KEPT.as_bytes()),
        "stored results are where expected"
    );
    let audit = serde_json::to_vec(&env.admin.audit(&plan.id).await.unwrap()).unwrap();
    assert!(
        contains(&audit, LEAK_KEPT.as_bytes()),
        "the audit record holds the output"
    );
    let local_audit = std::fs::read(env.path("worker-audit.jsonl")).unwrap();
    assert!(contains(&local_audit, LEAK_KEPT.as_bytes()));
    let result = serde_json::to_vec(&plan).unwrap();
    let log = worker.output();
    assert!(log.contains("task finished"), "the worker log was captured");
    for needle in &needles {
        let n = needle.as_bytes();
        assert!(!contains(&wire, n), "{form}: the token crossed the wire");
        assert!(
            !contains(&stored, n),
            "{form}: the orchestrator stored the token"
        );
        assert!(
            !contains(&audit, n),
            "{form}: an audit record holds the token"
        );
        assert!(
            !contains(&result, n),
            "{form}: the stored result holds the token"
        );
        assert!(
            !contains(&local_audit, n),
            "{form}: the worker's audit log holds the token"
        );
        assert!(
            !contains(log.as_bytes(), n),
            "{form}: the worker log holds the token"
        );
    }
    // The task succeeded with the rest of the answer intact, the token
    // replaced by the marker.
    let output = step.output.as_ref().expect("an output");
    assert_eq!(output["status"], 200, "{output}");
    let body = &output["body"];
    let shown = match body {
        Value::String(text) => {
            assert!(text.starts_with("callback({\"form\":\"json\""), "{text}");
            assert!(text.contains(LEAK_KEPT), "{text}");
            text.clone()
        }
        other => {
            assert_eq!(other["note"], LEAK_KEPT, "{other}");
            assert_eq!(other["form"], form, "{other}");
            other["leaked"].to_string()
        }
    };
    assert!(shown.contains(REDACTED), "{form}: no marker in {shown}");

    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_token_is_masked() {
    the_token_in("raw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_token_at_offset_0_is_masked() {
    the_token_in("base64-0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_token_at_offset_1_is_masked() {
    the_token_in("base64-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_token_at_offset_2_is_masked() {
    the_token_in("base64-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64url_token_at_offset_0_is_masked() {
    the_token_in("base64url-0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64url_token_at_offset_1_is_masked() {
    the_token_in("base64url-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64url_token_at_offset_2_is_masked() {
    the_token_in("base64url-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_encoded_token_in_upper_and_lower_case_hex_is_masked() {
    the_token_in("url").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hex_token_in_lower_and_upper_case_is_masked() {
    the_token_in("hex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_escaped_token_in_a_text_body_is_masked() {
    the_token_in("json").await;
}

/// The other way a credential can come back: in an error message and the
/// log line that reports it. Here an orchestrator that knows the token (a
/// compromised cloud side probing) sends it hex-encoded as an input that
/// breaks the local schema; the refusal's message quotes the input, and
/// the worker masks it there and in its log. (The input itself is kept in
/// the audit record as received: the orchestrator sent it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hex_token_quoted_in_an_error_message_and_a_log_line_is_masked() {
    let (env, worker) = leak_world().await;
    let hex_token = hex::encode(&env.token);
    let plan = run_leak(&env, &hex_token).await;
    let step = &plan.steps[0];
    assert_eq!(step.status, StepStatus::Rejected, "{step:#?}");
    assert_eq!(
        step.error_code.as_deref(),
        Some("invalid_input"),
        "{step:#?}"
    );
    let message = step.error_message.as_deref().unwrap_or_default();
    assert!(message.contains(REDACTED), "{message}");
    assert!(!message.contains(&hex_token), "{message}");
    assert_eq!(
        common::requests_to(&env.api, "/leak"),
        0,
        "nothing was called"
    );
    let local_audit = std::fs::read_to_string(env.path("worker-audit.jsonl")).unwrap();
    let record = local_audit.lines().last().unwrap();
    let record: Value = serde_json::from_str(record).unwrap();
    let audited = record["error_message"].as_str().unwrap();
    assert!(
        audited.contains(REDACTED) && !audited.contains(&hex_token),
        "{audited}"
    );
    let log = worker.output();
    assert!(
        log.contains("assignment rejected"),
        "the refusal was logged"
    );
    assert!(
        log.contains(REDACTED),
        "the log line quotes the masked input"
    );
    assert!(
        !log.contains(&hex_token),
        "the worker log holds the hex token"
    );
    drop(worker);
}
