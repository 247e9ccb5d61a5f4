//! Credentials from Azure Key Vault, end to end: the real worker binary, the
//! real SDK (`azure_security_keyvault_secrets` + `ClientSecretCredential`
//! against the fake vault's token endpoint through a custom authority host)
//! and the fake Key Vault over HTTPS on 127.0.0.1 (`myvault.vault.test` and
//! `login.test` pinned to it with `resolve`, trusted through `ca_cert`).
//!
//! Each failure case measures how long the task took from approval to the
//! plan's end, prints it, and asserts a generous upper bound; each checks
//! that the internal API saw nothing, that an audit record exists, and that
//! the worker keeps serving (a following `env://` task succeeds).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Env, Options, contains, read_tree};
use orchestrator_mock::api::{PlanStatus, PlanView, StepStatus};
use private_worker_tests::catalog::TOKEN_ENV;
use private_worker_tests::fake_vault::{Behaviour, FakeVault, FakeVaultOptions, TestCa};
use private_worker_tests::pki::ORCHESTRATOR_NAME;
use private_worker_tests::procs::{Process, binary};
use serde_json::json;

/// The environment variable the worker reads its Key Vault client secret from.
const CLIENT_SECRET_ENV: &str = "KV_CLIENT_SECRET";
/// The vault host every reference here names.
const VAULT: &str = "myvault.vault.test";

/// One test's fake vault, next to the common [`Env`].
struct Vault {
    ca: TestCa,
    vault: FakeVault,
}

impl Vault {
    async fn start() -> Vault {
        let ca = TestCa::new("fake key vault CA");
        let vault = FakeVault::start(&ca, FakeVaultOptions::default()).await;
        Vault { ca, vault }
    }

    /// A vault whose certificate comes from a CA the worker does not trust.
    async fn start_untrusted() -> Vault {
        let trusted = TestCa::new("the CA the worker trusts");
        let other = TestCa::new("someone else's CA");
        let vault = FakeVault::start(&other, FakeVaultOptions::default()).await;
        Vault { ca: trusted, vault }
    }
}

fn kv_ref(name: &str) -> String {
    format!("keyvault://{VAULT}/{name}")
}

/// Writes the common worker config with `tasks` switched to Key Vault
/// references and a `[keyvault]` section with `settings` appended.
fn write_kv_config(env: &Env, kv: &Vault, tasks: &[(&str, &str)], settings: &str) -> PathBuf {
    let path = env.write_worker_config(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        ORCHESTRATOR_NAME,
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    let env_secret = format!("secret = \"env://{TOKEN_ENV}\"");
    for (task, reference) in tasks {
        // Only the named task's own http table changes; others keep env://.
        let header = format!("[tasks.\"{task}\".http]");
        let at = text.find(&header).expect("task in the catalog") + header.len();
        let offset = text[at..]
            .find(&env_secret)
            .expect("task has an env secret");
        text.replace_range(
            at + offset..at + offset + env_secret.len(),
            &format!("secret = \"{reference}\""),
        );
    }
    let ca_path = env.path("kv-ca.pem");
    std::fs::write(&ca_path, kv.ca.cert_pem()).unwrap();
    let o = kv.vault.options();
    let addr = kv.vault.addr();
    text.push_str(&format!(
        "\n[keyvault]\n\
         auth = {{ type = \"client_secret\", tenant_id = \"{tenant}\", client_id = \"{client}\", secret = \"env://{CLIENT_SECRET_ENV}\" }}\n\
         ca_cert = {ca}\n\
         authority_host = \"https://login.test\"\n\
         resolve = {{ \"{VAULT}\" = \"{addr}\", \"login.test\" = \"{addr}\" }}\n\
         {settings}\n",
        tenant = o.tenant_id,
        client = o.client_id,
        ca = toml_string(&ca_path.to_string_lossy()),
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Starts the worker binary with the Key Vault client secret in its
/// environment and, when `crm_token` is true, the env:// CRM token too.
fn start_worker(env: &Env, kv: &Vault, config: &std::path::Path, crm_token: bool) -> Process {
    let mut vars = vec![
        ("RUST_LOG", "debug"),
        (CLIENT_SECRET_ENV, kv.vault.options().client_secret.as_str()),
    ];
    if crm_token {
        vars.push((TOKEN_ENV, env.token.as_str()));
    }
    Process::start(
        "worker",
        &binary("private-worker"),
        &["--config", config.to_str().unwrap()],
        &vars,
        &env.path("worker.log"),
    )
}

/// Runs one plan and returns it with the time from submission to its end.
async fn timed_plan(env: &Env, steps: &[(&str, serde_json::Value)]) -> (PlanView, Duration) {
    let start = Instant::now();
    let plan = env.run_plan(steps).await;
    (plan, start.elapsed())
}

/// The bearer tokens the internal API received, in order.
fn bearers_seen(env: &Env) -> Vec<String> {
    env.api
        .requests()
        .iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone())
        .collect()
}

/// A test world whose fake vault holds the CRM token as `crm-token`,
/// behaving as `behaviour` (normally when `None`).
async fn vault_with_token(behaviour: Option<Behaviour>) -> (Env, Vault) {
    let env = Env::start(Options::default()).await;
    let kv = Vault::start().await;
    kv.vault.set_secret("crm-token", &env.token);
    if let Some(behaviour) = behaviour {
        kv.vault.set_behaviour("crm-token", behaviour);
    }
    (env, kv)
}

/// Starts a worker whose `crm.create_ticket` credential is the vault's
/// `crm-token` (and no env:// token at all), with extra `[keyvault]`
/// `settings`, and waits until it is connected.
async fn kv_worker(env: &Env, kv: &Vault, settings: &str) -> Process {
    let config = write_kv_config(
        env,
        kv,
        &[("crm.create_ticket", &kv_ref("crm-token"))],
        settings,
    );
    let worker = start_worker(env, kv, &config, false);
    env.wait_connected(&env.pki.worker_identity).await;
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_runs_with_the_credential_read_from_key_vault_through_the_real_sdk() {
    let (env, kv) = vault_with_token(None).await;
    let worker = kv_worker(&env, &kv, "").await;

    let (plan, took) = timed_plan(
        &env,
        &[("crm.create_ticket", json!({"title": "from Key Vault"}))],
    )
    .await;
    println!("first task with a Key Vault credential (token + secret fetch): {took:?}");
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}",
        worker.output()
    );
    assert_eq!(bearers_seen(&env), vec![format!("Bearer {}", env.token)]);
    // One token for the credential, one vault read, with a token the fake issued.
    assert_eq!(kv.vault.token_requests(), 1);
    assert_eq!(kv.vault.request_count("crm-token"), 1);
    assert!(
        kv.vault
            .tokens_seen()
            .iter()
            .all(|t| kv.vault.tokens_issued().contains(t))
    );

    // The second task is served from the cache (default TTL 5 min).
    let (plan, took) = timed_plan(&env, &[("crm.create_ticket", json!({"title": "cached"}))]).await;
    println!("second task, credential from the cache: {took:?}");
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
    assert_eq!(
        kv.vault.request_count("crm-token"),
        1,
        "read again before the TTL"
    );
    assert_eq!(bearers_seen(&env).len(), 2);
}

/// A worker reading `crm-token` from the fake vault with a managed
/// identity (the usual production set-up: no secret for Azure at all, the
/// tokens come from the host's identity endpoint), with `extra` in its
/// environment.
fn managed_identity_worker(env: &Env, kv: &Vault, extra: &[(&str, &str)]) -> Process {
    managed_identity_worker_with(env, kv, extra, "")
}

/// [`managed_identity_worker`] with extra `[keyvault]` `settings`.
fn managed_identity_worker_with(
    env: &Env,
    kv: &Vault,
    extra: &[(&str, &str)],
    settings: &str,
) -> Process {
    let path = write_kv_config(
        env,
        kv,
        &[("crm.create_ticket", &kv_ref("crm-token"))],
        settings,
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("auth = { type = \"client_secret\"")
        .expect("client secret auth line");
    let end = start + text[start..].find('\n').unwrap();
    let text = format!(
        "{}auth = {{ type = \"managed_identity\" }}{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&path, text).unwrap();
    let identity_header = kv.vault.options().identity_header.clone();
    let mut vars = vec![
        ("RUST_LOG", "debug"),
        ("IDENTITY_ENDPOINT", "https://login.test/msi/token"),
        ("IDENTITY_HEADER", identity_header.as_str()),
    ];
    vars.extend_from_slice(extra);
    Process::start(
        "worker",
        &binary("private-worker"),
        &["--config", path.to_str().unwrap()],
        &vars,
        &env.path("worker.log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_vault_and_identity_requests_ignore_a_proxy_in_the_environment() {
    // A proxy the environment names: it would see the access token on the
    // identity endpoint's answer and every vault request. It only counts.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let dialed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = dialed.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let (env, kv) = vault_with_token(None).await;
    let mut extra = Vec::new();
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        extra.push((name, proxy_url.as_str()));
    }
    // The orchestrator stream does follow HTTPS_PROXY (README, "Behind an
    // HTTP proxy"); NO_PROXY sends it direct. The vault and the identity
    // endpoint have host names, which this entry does not match.
    extra.push(("NO_PROXY", "127.0.0.1"));
    let worker = managed_identity_worker(&env, &kv, &extra);
    env.wait_connected(&env.pki.worker_identity).await;
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "no proxy"}))])
        .await;
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}",
        worker.output()
    );
    assert_eq!(kv.vault.token_requests(), 1);
    assert_eq!(
        dialed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the environment's proxy was dialled"
    );
}

/// `[keyvault] proxy` carries the vault's requests; the managed-identity
/// endpoint is still reached directly. The proxy is a real tinyproxy that
/// hands `*.vault.test` to a recording upstream leading to the fake vault;
/// it cannot resolve `login.test` (the identity endpoint's host here), so a
/// token request sent through it would fail the plan and show in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_requests_use_the_keyvault_proxy_and_the_managed_identity_endpoint_never_does() {
    use private_worker_tests::proxy::RecordingUpstream;
    use private_worker_tests::tinyproxy::{Tinyproxy, TinyproxyOptions};
    let (env, kv) = vault_with_token(None).await;
    let upstream = RecordingUpstream::start(kv.vault.addr()).await.unwrap();
    let proxy = Tinyproxy::start(
        &env.path("tinyproxy"),
        &TinyproxyOptions {
            upstream: Some((upstream.addr(), ".vault.test".into())),
            ..TinyproxyOptions::default()
        },
    );
    let worker =
        managed_identity_worker_with(&env, &kv, &[], &format!("proxy = \"{}\"", proxy.url()));
    env.wait_connected(&env.pki.worker_identity).await;
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "vault via proxy"}))])
        .await;
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}\nproxy log:\n{}",
        worker.output(),
        proxy.log()
    );
    assert_eq!(kv.vault.token_requests(), 1, "one token, fetched directly");
    assert_eq!(kv.vault.request_count("crm-token"), 1);
    let connects = upstream.connects();
    assert!(
        !connects.is_empty()
            && connects
                .iter()
                .all(|l| l.starts_with(&format!("CONNECT {VAULT}:"))),
        "the vault's requests, and only those, went through the proxy: {connects:?}"
    );
    let log = proxy.log();
    assert!(log.contains(&format!("CONNECT {VAULT}:")), "{log}");
    assert!(
        !log.contains("login.test"),
        "the identity endpoint was asked through the proxy:\n{log}"
    );
    assert!(
        !contains(&upstream.bytes(), env.token.as_bytes()),
        "the secret crossed the proxy in plaintext"
    );
}

/// `[keyvault] proxy_username`/`proxy_password`: a tinyproxy that asks
/// every request for Basic credentials (it refuses a CONNECT without them)
/// lets the vault's requests through; the managed-identity endpoint is
/// still reached directly, and the password shows in no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_requests_pass_a_keyvault_proxy_that_needs_basic_auth_with_the_password_from_a_reference()
 {
    use base64::Engine as _;
    use private_worker_tests::proxy::RecordingUpstream;
    use private_worker_tests::tinyproxy::{Tinyproxy, TinyproxyOptions};
    let password = format!("kv-proxy-pw-{}-DO-NOT-LEAK", std::process::id());
    let (env, kv) = vault_with_token(None).await;
    let upstream = RecordingUpstream::start(kv.vault.addr()).await.unwrap();
    let proxy = Tinyproxy::start(
        &env.path("tinyproxy"),
        &TinyproxyOptions {
            upstream: Some((upstream.addr(), ".vault.test".into())),
            basic_auth: Some(("svc-kv".into(), password.clone())),
            ..TinyproxyOptions::default()
        },
    );
    let worker = managed_identity_worker_with(
        &env,
        &kv,
        &[("KV_PROXY_PASSWORD", password.as_str())],
        &format!(
            "proxy = \"{}\"\nproxy_username = \"svc-kv\"\nproxy_password = \"env://KV_PROXY_PASSWORD\"",
            proxy.url()
        ),
    );
    env.wait_connected(&env.pki.worker_identity).await;
    let plan = env
        .run_plan(&[(
            "crm.create_ticket",
            json!({"title": "vault via an authenticating proxy"}),
        )])
        .await;
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}\nproxy log:\n{}",
        worker.output(),
        proxy.log()
    );
    assert_eq!(kv.vault.token_requests(), 1, "one token, fetched directly");
    let connects = upstream.connects();
    assert!(
        !connects.is_empty()
            && connects
                .iter()
                .all(|l| l.starts_with(&format!("CONNECT {VAULT}:"))),
        "the vault's requests, and only those, went through the proxy: {connects:?}"
    );
    assert!(
        !proxy.log().contains("login.test"),
        "the identity endpoint was asked through the proxy:\n{}",
        proxy.log()
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("svc-kv:{password}"));
    let log = worker.output();
    for secret in [password.as_str(), encoded.as_str()] {
        assert!(
            !log.contains(secret),
            "the worker log holds the proxy credentials"
        );
        assert!(
            !contains(&upstream.bytes(), secret.as_bytes())
                && !upstream.heads().concat().contains(secret),
            "the proxy credentials went past the proxy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_runs_with_a_managed_identity_token_from_the_identity_endpoint() {
    let (env, kv) = vault_with_token(None).await;
    let worker = managed_identity_worker(&env, &kv, &[]);
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "managed identity"}))])
        .await;
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}",
        worker.output()
    );
    assert_eq!(bearers_seen(&env), vec![format!("Bearer {}", env.token)]);
    assert_eq!(
        kv.vault.token_requests(),
        1,
        "one token from the identity endpoint"
    );
    assert_eq!(
        kv.vault.tokens_seen(),
        kv.vault.tokens_issued(),
        "the vault saw that token"
    );
    let log = worker.output();
    assert!(!log.contains(&env.token), "the worker log holds the secret");
    for token in kv.vault.tokens_issued() {
        assert!(
            !log.contains(&token),
            "the worker log holds the access token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_in_key_vault_is_used_after_the_ttl_without_restarting_the_worker() {
    let (env, kv) = vault_with_token(None).await;
    let mut worker = kv_worker(&env, &kv, "cache_ttl = \"1s\"").await;
    let pid = worker.pid();

    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "before"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");

    // Rotate: a new version in the vault, and the internal API accepts only it.
    let rotated = format!("{}-rotated", common::unique_secret());
    kv.vault.set_secret("crm-token", &rotated);
    env.api.set_token(&rotated);
    let rotated_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "after"}))])
        .await;
    println!(
        "rotation picked up {:?} after it happened (TTL 1s)",
        rotated_at.elapsed()
    );
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}",
        worker.output()
    );
    assert_eq!(
        bearers_seen(&env).last().cloned(),
        Some(format!("Bearer {rotated}"))
    );
    assert_eq!(kv.vault.request_count("crm-token"), 2);
    assert!(!worker.has_exited());
    assert_eq!(worker.pid(), pid, "same worker process");
    let log = worker.output();
    assert!(
        !log.contains(&rotated) && !log.contains(&env.token),
        "a value in the log"
    );
}

/// Runs `crm.create_ticket` with a Key Vault credential the vault will not
/// give, checks the failure, then checks that an env:// task still works.
async fn assert_credential_failure(
    env: &Env,
    kv: &Vault,
    name: &str,
    settings: &str,
    expected: &str,
    bound: Duration,
) -> Duration {
    let config = write_kv_config(env, kv, &[("crm.create_ticket", &kv_ref(name))], settings);
    let worker = start_worker(env, kv, &config, true);
    env.wait_connected(&env.pki.worker_identity).await;

    let (plan, took) = timed_plan(env, &[("crm.create_ticket", json!({"title": "x"}))]).await;
    let step = &plan.steps[0];
    println!(
        "{name}: {} after {took:?} (bound {bound:?})",
        step.error_message.as_deref().unwrap_or("-")
    );
    assert_eq!(plan.status, PlanStatus::Failed, "{plan:#?}");
    assert_eq!(step.status, StepStatus::Failed);
    assert_eq!(step.error_code.as_deref(), Some("credential_unavailable"));
    let message = step.error_message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with(&format!("{}: ", kv_ref(name))) && message.contains(expected),
        "{message:?} does not name the reference and contain {expected:?}"
    );
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    assert!(env.api.requests().is_empty(), "the internal API was called");
    let audit = env.admin.audit(&plan.id).await.unwrap();
    assert_eq!(audit.len(), 1, "one audit record for the failed task");
    let local_audit = std::fs::read_to_string(env.path("worker-audit.jsonl")).unwrap();
    assert!(
        local_audit.contains("credential_unavailable"),
        "{local_audit}"
    );

    // The worker keeps serving: a task with an env:// credential succeeds.
    let plan = env
        .run_plan(&[("diag.echo", json!({"message": "still serving"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{plan:#?}");
    assert_eq!(
        env.api.requests().len(),
        1,
        "the env:// task reached the API"
    );
    assert_eq!(bearers_seen(env), vec![format!("Bearer {}", env.token)]);
    let log = worker.output();
    assert!(!log.contains(&env.token), "the worker log holds the secret");
    assert!(
        !log.contains(&kv.vault.options().client_secret),
        "the worker log holds the Key Vault client secret"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_secret_fails_the_task_at_once_with_403_and_the_worker_keeps_serving() {
    let (env, kv) = vault_with_token(Some(Behaviour::Forbidden)).await;
    assert_credential_failure(
        &env,
        &kv,
        "crm-token",
        "",
        "403 Forbidden",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(kv.vault.request_count("crm-token"), 1, "403 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_fails_the_task_with_404_secret_not_found_and_is_not_retried() {
    let env = Env::start(Options::default()).await;
    let kv = Vault::start().await;
    assert_credential_failure(
        &env,
        &kv,
        "no-such-secret",
        "",
        "404 SecretNotFound",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        kv.vault.request_count("no-such-secret"),
        1,
        "404 is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_with_retry_after_is_waited_out_within_the_budget_and_the_task_succeeds() {
    let (env, kv) = vault_with_token(Some(Behaviour::TooManyRequests { times: 2 })).await;
    let worker = kv_worker(&env, &kv, "max_retries = 3\nretry_budget = \"8s\"").await;

    let (plan, took) = timed_plan(
        &env,
        &[("crm.create_ticket", json!({"title": "throttled"}))],
    )
    .await;
    println!("two 429s with Retry-After: 1, then 200: task done after {took:?}");
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}",
        worker.output()
    );
    assert_eq!(
        kv.vault.request_count("crm-token"),
        3,
        "two 429s, then the value"
    );
    assert!(
        took >= Duration::from_secs(2),
        "Retry-After was not honoured: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(bearers_seen(&env), vec![format!("Bearer {}", env.token)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_throttling_fails_the_task_within_the_retry_budget() {
    let (env, kv) = vault_with_token(Some(Behaviour::TooManyRequests { times: u32::MAX })).await;
    assert_credential_failure(
        &env,
        &kv,
        "crm-token",
        "request_timeout = \"1s\"\nmax_retries = 10\nretry_budget = \"3s\"",
        "429",
        Duration::from_secs(9),
    )
    .await;
    let tries = kv.vault.request_count("crm-token");
    println!("429 forever: {tries} tries within the 3s budget");
    assert!((2..=5).contains(&tries), "{tries} tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_that_never_answers_fails_the_task_within_timeout_times_tries() {
    let (env, kv) = vault_with_token(Some(Behaviour::Hang)).await;
    let took = assert_credential_failure(
        &env,
        &kv,
        "crm-token",
        "request_timeout = \"1s\"\nmax_retries = 1\nretry_budget = \"5s\"",
        "timed out after 1s",
        Duration::from_secs(9),
    )
    .await;
    assert!(
        took >= Duration::from_secs(2),
        "two tries of 1s each: {took:?}"
    );
    assert_eq!(
        kv.vault.request_count("crm-token"),
        2,
        "one try and one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_with_an_untrusted_certificate_fails_the_task_at_once_without_retrying() {
    let env = Env::start(Options::default()).await;
    let kv = Vault::start_untrusted().await;
    kv.vault.set_secret("crm-token", &env.token);
    assert_credential_failure(
        &env,
        &kv,
        "crm-token",
        "",
        "untrusted certificate",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        kv.vault.total_request_count("crm-token"),
        0,
        "no request got through"
    );
    assert_eq!(kv.vault.token_requests(), 0, "no token was asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_vault_secret_never_reaches_the_orchestrator_the_audit_trail_or_the_logs() {
    let env = Env::start(Options {
        wire_capture: true,
        ..Options::default()
    })
    .await;
    let kv = Vault::start().await;
    kv.vault.set_secret("crm-token", &env.token);
    let config = write_kv_config(
        &env,
        &kv,
        &[
            ("diag.echo", &kv_ref("crm-token")),
            ("crm.create_ticket", &kv_ref("crm-token")),
        ],
        "",
    );
    let worker = start_worker(&env, &kv, &config, false);
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = env
        .run_plan(&[
            (
                "diag.echo",
                json!({"message": "echo my Key Vault credential back"}),
            ),
            ("crm.create_ticket", json!({"title": "leak check"})),
        ])
        .await;
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\n{}",
        worker.output()
    );
    // The API received the value from the vault and echoed it; the worker redacted it.
    assert!(
        bearers_seen(&env)
            .iter()
            .all(|b| b == &format!("Bearer {}", env.token))
    );
    let output = plan.steps[0].output.as_ref().unwrap();
    assert_eq!(
        output["body"]["headers"]["authorization"],
        "Bearer [REDACTED]"
    );

    let log = worker.output();
    common::assert_secret_absent(
        &env,
        &plan,
        &log,
        &env.token,
        b"echo my Key Vault credential back",
    )
    .await;
    assert_eq!(env.admin.audit(&plan.id).await.unwrap().len(), 2);
    let wire = read_tree(&env.path("wire"));
    let client_secret = &kv.vault.options().client_secret;
    assert!(
        !log.contains(client_secret.as_str()),
        "the log holds the client secret"
    );
    assert!(!contains(&wire, client_secret.as_bytes()));
    for token in kv.vault.tokens_issued() {
        assert!(!log.contains(&token), "the log holds a vault access token");
        assert!(
            !contains(&wire, token.as_bytes()),
            "a vault access token crossed the wire"
        );
    }
}
