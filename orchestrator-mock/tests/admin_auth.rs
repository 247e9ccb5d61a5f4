//! The admin API under hostile callers: no token, an unknown or revoked
//! token, the wrong role, a foreign `Host` or `Origin` (DNS rebinding and
//! cross-site shapes), form and text POSTs, a non-loopback listener
//! without TLS, and what the token file holds. Each case checks the
//! refusal, that nothing changed (the plan is still pending; after
//! shutdown the durable state holds only the plans made legitimately),
//! and that a good request still works afterwards.
//!
//! Hostile requests are written by hand over TCP so every header is
//! exactly what the test says (no client library fixing `Host` up).

use std::time::Duration;

mod common;

use orchestrator_mock::api::{PlanRequest, PlanStatus, StepRequest};
use orchestrator_mock::client::AdminClient;
use orchestrator_mock::durable::PlanStore as _;
use orchestrator_mock::tokens::Role;
use orchestrator_mock::{Config, OrchestratorHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An orchestrator in process with three tokens: an agent that submits
/// (`submit`, `read`), a person who approves (`approve`, `read`) and a
/// dashboard (`read`).
struct Env {
    dir: tempfile::TempDir,
    config: Config,
    handle: OrchestratorHandle,
    submit_token: String,
    approve_token: String,
    read_token: String,
    submitter: AdminClient,
    approver: AdminClient,
}

/// An HTTP answer: status, headers (lowercase names), JSON body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Env {
    async fn start() -> Env {
        Env::start_with("").await
    }

    async fn start_with(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, text) = common::write_setup(dir.path());
        let config = Config::from_toml_str(&format!("{text}\n{extra}"), dir.path()).unwrap();
        let handle = orchestrator_mock::spawn(config.clone()).await.unwrap();
        let tokens = handle.tokens();
        let submit_token = tokens.create("agent", &[Role::Submit, Role::Read]).unwrap();
        let approve_token = tokens
            .create("approver", &[Role::Approve, Role::Read])
            .unwrap();
        let read_token = tokens.create("dashboard", &[Role::Read]).unwrap();
        let url = handle.admin_url();
        Env {
            submitter: AdminClient::new(&url).with_token(submit_token.clone()),
            approver: AdminClient::new(&url).with_token(approve_token.clone()),
            dir,
            config,
            handle,
            submit_token,
            approve_token,
            read_token,
        }
    }

    fn port(&self) -> u16 {
        self.handle
            .admin_url()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The `Host` a legitimate local client sends.
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// One HTTP/1.1 request, exactly as given (`headers` verbatim, no
    /// `Host` added), answered with `Connection: close`.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            text.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        text.push_str("\r\n");
        text.push_str(body.unwrap_or(""));
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port()))
            .await
            .unwrap();
        tcp.write_all(text.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
            .await
            .expect("the server answers and closes")
            .unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    /// A pending plan, submitted by the agent.
    async fn pending_plan(&self) -> String {
        let plan = self
            .submitter
            .submit_plan(&PlanRequest {
                name: Some("auth".into()),
                steps: vec![StepRequest {
                    task: "crm.get_ticket".into(),
                    version: None,
                    inputs: json!({"id": "T-1"}),
                }],
            })
            .await
            .unwrap();
        assert_eq!(plan.status, PlanStatus::PendingApproval);
        plan.id
    }

    async fn status(&self, id: &str) -> PlanStatus {
        self.approver.plan(id).await.unwrap().status
    }

    /// Shuts down and returns every plan in the durable state with its
    /// status: what the refused requests could have changed.
    async fn stored_plans(self) -> Vec<(String, PlanStatus)> {
        self.handle.shutdown().await;
        let store =
            orchestrator_mock::durable::redb_store::RedbStore::open(&self.config.data_dir, false)
                .unwrap();
        let plans = store
            .load()
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.status))
            .collect();
        drop(self.dir);
        plans
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const PLAN_BODY: &str = r#"{"steps": [{"task": "crm.get_ticket", "inputs": {"id": "T-9"}}]}"#;

#[tokio::test]
async fn a_request_without_a_token_is_refused_with_401_and_changes_nothing() {
    let env = Env::start().await;
    let id = env.pending_plan().await;
    let host = env.host();
    let approve = format!("/v1/plans/{id}/approve");
    for (method, path, body) in [
        ("POST", approve.as_str(), Some("{}")),
        ("POST", "/v1/plans", Some(PLAN_BODY)),
        ("GET", "/v1/workers", None),
    ] {
        let a = env.raw(method, path, &[("Host", &host), JSON], body).await;
        assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
        assert_eq!(a.body["error"], "unauthenticated");
        assert!(
            a.header("www-authenticate").unwrap().starts_with("Bearer"),
            "{:?}",
            a.headers
        );
    }
    // Another scheme is no token either.
    let a = env
        .raw(
            "POST",
            &approve,
            &[
                ("Host", &host),
                JSON,
                ("Authorization", "Basic YWRtaW46YWRtaW4="),
            ],
            Some("{}"),
        )
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(env.status(&id).await, PlanStatus::PendingApproval);
    // /healthz stays open.
    let a = env.raw("GET", "/healthz", &[("Host", &host)], None).await;
    assert_eq!((a.status, a.body["status"].as_str()), (200, Some("ok")));
    // The legitimate approver still gets through.
    let approved = env.approver.approve(&id).await.unwrap();
    assert_eq!(approved.status, PlanStatus::Approved);
    let stored = env.stored_plans().await;
    assert_eq!(stored, [(id, PlanStatus::Approved)], "no plan was added");
}

#[tokio::test]
async fn an_unknown_token_is_refused_with_401() {
    let env = Env::start().await;
    let id = env.pending_plan().await;
    let host = env.host();
    // A well-formed token that was never issued, and the stored hash of
    // a real one presented as if it were a token.
    let forged = format!("pwm_{}", "A".repeat(43));
    let hash = hex::encode(orchestrator_mock::tokens::token_hash(&env.approve_token));
    for token in [forged.as_str(), hash.as_str()] {
        let a = env
            .raw(
                "POST",
                &format!("/v1/plans/{id}/approve"),
                &[("Host", &host), JSON, ("Authorization", &bearer(token))],
                Some("{}"),
            )
            .await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.body["message"], "unknown or revoked token");
    }
    assert_eq!(env.status(&id).await, PlanStatus::PendingApproval);
    env.approver.approve(&id).await.unwrap();
    assert_eq!(env.stored_plans().await, [(id, PlanStatus::Approved)]);
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_its_next_request_without_a_restart() {
    let env = Env::start().await;
    let first = env.pending_plan().await;
    env.handle.tokens().revoke("agent").unwrap();
    let refused = env
        .submitter
        .submit_plan(&PlanRequest {
            name: Some("after revoke".into()),
            steps: vec![StepRequest {
                task: "crm.get_ticket".into(),
                version: None,
                inputs: json!({}),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused}");
    assert!(
        refused.to_string().contains("unknown or revoked token"),
        "{refused}"
    );
    // A token created while it runs works at once, too.
    let fresh = env
        .handle
        .tokens()
        .create("agent-2", &[Role::Submit, Role::Read])
        .unwrap();
    let again = AdminClient::new(&env.handle.admin_url()).with_token(fresh);
    let second = again
        .submit_plan(&PlanRequest {
            name: None,
            steps: vec![StepRequest {
                task: "crm.get_ticket".into(),
                version: None,
                inputs: json!({}),
            }],
        })
        .await
        .unwrap()
        .id;
    let mut stored = env.stored_plans().await;
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (first, PlanStatus::PendingApproval),
        (second, PlanStatus::PendingApproval),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(stored, expected, "the revoked token created nothing");
}

#[tokio::test]
async fn a_submit_token_cannot_approve_or_reject_its_own_plan() {
    let env = Env::start().await;
    let id = env.pending_plan().await;
    let err = env.submitter.approve(&id).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(
        err.to_string().contains(
            "this token has roles [read, submit]; POST /v1/plans/{id}/approve needs `approve`"
        ),
        "{err}"
    );
    let err = env.submitter.reject(&id, "self-reject").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert_eq!(env.status(&id).await, PlanStatus::PendingApproval);
    // The approver cannot submit either: the two roles stay apart.
    let err = env
        .approver
        .submit_plan(&PlanRequest {
            name: None,
            steps: vec![StepRequest {
                task: "crm.get_ticket".into(),
                version: None,
                inputs: json!({}),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    env.approver.approve(&id).await.unwrap();
    assert_eq!(env.stored_plans().await, [(id, PlanStatus::Approved)]);
}

#[tokio::test]
async fn a_read_token_cannot_submit_cancel_or_approve() {
    let env = Env::start().await;
    let id = env.pending_plan().await;
    let reader = AdminClient::new(&env.handle.admin_url()).with_token(env.read_token.clone());
    assert_eq!(reader.plan(&id).await.unwrap().id, id, "reading is allowed");
    let err = reader
        .submit_plan(&PlanRequest {
            name: None,
            steps: vec![StepRequest {
                task: "crm.get_ticket".into(),
                version: None,
                inputs: json!({}),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(
        err.to_string().contains("POST /v1/plans needs `submit`"),
        "{err}"
    );
    let err = reader.cancel_plan(&id, "no").await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    let err = reader.approve(&id).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert_eq!(env.status(&id).await, PlanStatus::PendingApproval);
    // The submitter may cancel its own plan.
    let cancelled = env
        .submitter
        .cancel_plan(&id, "changed my mind")
        .await
        .unwrap();
    assert_eq!(cancelled.status, PlanStatus::Cancelled);
    assert_eq!(env.stored_plans().await, [(id, PlanStatus::Cancelled)]);
}

#[tokio::test]
async fn a_foreign_host_is_refused_even_with_a_good_token() {
    let env = Env::start().await;
    let id = env.pending_plan().await;
    let approve = format!("/v1/plans/{id}/approve");
    let auth = bearer(&env.approve_token);
    let port = env.port();
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "localhost".to_string(),
        format!("user@127.0.0.1:{port}"),
    ] {
        let a = env
            .raw(
                "POST",
                &approve,
                &[("Host", &host), JSON, ("Authorization", &auth)],
                Some("{}"),
            )
            .await;
        assert_eq!(a.status, 421, "{host}: {}", a.body);
        assert_eq!(a.body["error"], "misdirected_host");
        assert!(
            a.body["message"]
                .as_str()
                .unwrap()
                .contains("[admin] allowed_hosts"),
            "{}",
            a.body
        );
    }
    // Two Host headers, one good: refused.
    let a = env
        .raw(
            "POST",
            &approve,
            &[
                ("Host", &env.host()),
                ("Host", "evil.example"),
                JSON,
                ("Authorization", &auth),
            ],
            Some("{}"),
        )
        .await;
    assert!(a.status == 421 || a.status == 400, "{}", a.status);
    assert_eq!(env.status(&id).await, PlanStatus::PendingApproval);
    // The same request with this server's name goes through.
    let a = env
        .raw(
            "POST",
            &approve,
            &[
                ("Host", &format!("localhost:{port}")),
                JSON,
                ("Authorization", &auth),
            ],
            Some("{}"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(env.stored_plans().await, [(id, PlanStatus::Approved)]);
}

#[tokio::test]
async fn a_foreign_origin_is_refused_the_dns_rebinding_and_cross_site_shapes() {
    let env = Env::start().await;
    let id = env.pending_plan().await;
    let approve = format!("/v1/plans/{id}/approve");
    let auth = bearer(&env.approve_token);
    let port = env.port();
    let host = env.host();
    // Cross-site: the browser talks to 127.0.0.1 (Host fine) from a page
    // of another site.
    for origin in [
        "https://evil.example".to_string(),
        format!("http://evil.example:{port}"),
        "null".to_string(),
        format!("http://127.0.0.1:{port}/path"),
        format!("file://127.0.0.1:{port}"),
    ] {
        let a = env
            .raw(
                "POST",
                &approve,
                &[
                    ("Host", &host),
                    ("Origin", &origin),
                    JSON,
                    ("Authorization", &auth),
                ],
                Some("{}"),
            )
            .await;
        assert_eq!(a.status, 403, "{origin}: {}", a.body);
        assert_eq!(a.body["error"], "forbidden_origin");
    }
    // DNS rebinding: evil.example now resolves to 127.0.0.1, so the page
    // is "same origin" with it and Host and Origin both carry its name.
    let rebound = format!("evil.example:{port}");
    let a = env
        .raw(
            "POST",
            &approve,
            &[
                ("Host", &rebound),
                ("Origin", &format!("http://{rebound}")),
                JSON,
                ("Authorization", &auth),
            ],
            Some("{}"),
        )
        .await;
    assert_eq!(a.status, 421, "{}", a.body);
    assert_eq!(env.status(&id).await, PlanStatus::PendingApproval);
    // This server's own origin is fine.
    let a = env
        .raw(
            "POST",
            &approve,
            &[
                ("Host", &host),
                ("Origin", &format!("http://localhost:{port}")),
                JSON,
                ("Authorization", &auth),
            ],
            Some("{}"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(env.stored_plans().await, [(id, PlanStatus::Approved)]);
}

#[tokio::test]
async fn form_and_text_posts_are_refused_with_415_even_bodiless() {
    let env = Env::start().await;
    let id = env.pending_plan().await;
    let host = env.host();
    let approve = format!("/v1/plans/{id}/approve");
    let approver = bearer(&env.approve_token);
    let submitter = bearer(&env.submit_token);
    let cases: [(&str, &str, Option<&str>, &str); 5] = [
        (
            "form approve",
            "application/x-www-form-urlencoded",
            Some("a=1"),
            &approver,
        ),
        ("text approve, no body", "text/plain", None, &approver),
        (
            "multipart approve",
            "multipart/form-data; boundary=x",
            Some("--x--"),
            &approver,
        ),
        (
            "form submit",
            "application/x-www-form-urlencoded",
            Some(PLAN_BODY),
            &submitter,
        ),
        (
            "text submit",
            "text/plain;charset=utf-8",
            Some(PLAN_BODY),
            &submitter,
        ),
    ];
    for (what, content_type, body, auth) in cases {
        let path = if what.ends_with("submit") {
            "/v1/plans"
        } else {
            &approve
        };
        let a = env
            .raw(
                "POST",
                path,
                &[
                    ("Host", &host),
                    ("Content-Type", content_type),
                    ("Authorization", auth),
                ],
                body,
            )
            .await;
        assert_eq!(a.status, 415, "{what}: {}", a.body);
        assert_eq!(a.body["error"], "unsupported_media_type");
    }
    // No content type at all, no body.
    let a = env
        .raw(
            "POST",
            &approve,
            &[("Host", &host), ("Authorization", &approver)],
            None,
        )
        .await;
    assert_eq!(a.status, 415, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("Content-Type: application/json"),
        "{}",
        a.body
    );
    assert_eq!(env.status(&id).await, PlanStatus::PendingApproval);
    // JSON with parameters is JSON.
    let a = env
        .raw(
            "POST",
            &approve,
            &[
                ("Host", &host),
                ("Content-Type", "application/json; charset=utf-8"),
                ("Authorization", &approver),
            ],
            Some("{}"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(env.stored_plans().await, [(id, PlanStatus::Approved)]);
}

#[tokio::test]
async fn the_testing_hooks_need_the_operate_role() {
    let env = Env::start_with("[testing]\nfault_injection = true\n").await;
    let host = env.host();
    for token in [&env.read_token, &env.submit_token, &env.approve_token] {
        let a = env
            .raw(
                "GET",
                "/v1/testing",
                &[("Host", &host), ("Authorization", &bearer(token))],
                None,
            )
            .await;
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(
            a.body["message"]
                .as_str()
                .unwrap()
                .contains("needs `operate`"),
            "{}",
            a.body
        );
    }
    let operator = env
        .handle
        .tokens()
        .create("operator", &[Role::Operate])
        .unwrap();
    let a = env
        .raw(
            "GET",
            "/v1/testing",
            &[("Host", &host), ("Authorization", &bearer(&operator))],
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(env.stored_plans().await, []);
}

#[tokio::test]
async fn the_token_file_holds_no_plaintext_token() {
    let env = Env::start().await;
    let path = env.handle.tokens().path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    use base64::Engine as _;
    for token in [&env.submit_token, &env.approve_token, &env.read_token] {
        let secret = token.strip_prefix("pwm_").unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .unwrap();
        for form in [
            token.to_string(),
            secret.to_string(),
            hex::encode(&raw),
            base64::engine::general_purpose::STANDARD.encode(&raw),
        ] {
            assert!(!text.contains(&form), "the token file holds a token form");
        }
        assert!(
            text.contains(&hex::encode(orchestrator_mock::tokens::token_hash(token))),
            "it holds the hash"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // `token list` shows names and roles only.
    let listed = serde_json::to_string(&env.handle.tokens().list().unwrap()).unwrap();
    assert!(!listed.contains("sha256"), "{listed}");
    assert!(listed.contains("\"approver\""), "{listed}");
    let id = env.pending_plan().await;
    assert_eq!(
        env.stored_plans().await,
        [(id, PlanStatus::PendingApproval)]
    );
}

#[tokio::test]
async fn a_non_loopback_admin_listener_without_tls_is_refused_at_start() {
    // In process: spawn returns the error before binding anything.
    let dir = tempfile::tempdir().unwrap();
    let (_ca, text) = common::write_setup(dir.path());
    let text = text.replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"0.0.0.0:0\"",
    );
    let config = Config::from_toml_str(&text, dir.path()).unwrap();
    let err = orchestrator_mock::spawn(config).await.unwrap_err();
    assert!(
        matches!(err, orchestrator_mock::StartError::AdminWithoutTls { .. }),
        "{err}"
    );
    // As a user runs it: a non-zero exit and a message saying what, which
    // keys and what to do.
    let path = dir.path().join("orchestrator.toml");
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator-mock"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for part in [
        "admin_listen = 0.0.0.0:0 is not a loopback address",
        "Set [admin] tls_cert and tls_key",
        "127.0.0.1",
    ] {
        assert!(stderr.contains(part), "{part} not in {stderr}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "no ready line"
    );
    // `check` says the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator-mock"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL admin_listen"), "{stdout}");
}

/// An orchestrator whose admin API is served over TLS (`[admin] tls_cert`,
/// `tls_key`, a certificate for `localhost`), with its directory and CA.
async fn start_with_admin_tls() -> (
    tempfile::TempDir,
    private_worker_identity::test_support::TestCa,
    OrchestratorHandle,
) {
    let dir = tempfile::tempdir().unwrap();
    let (ca, text) = common::write_setup(dir.path());
    let (cert, key) = ca.server(&["localhost"]).into_pem();
    std::fs::write(dir.path().join("admin.pem"), cert).unwrap();
    std::fs::write(dir.path().join("admin.key"), key).unwrap();
    let config = Config::from_toml_str(
        &format!("{text}\n[admin]\ntls_cert = \"admin.pem\"\ntls_key = \"admin.key\"\n"),
        dir.path(),
    )
    .unwrap();
    let handle = orchestrator_mock::spawn(config).await.unwrap();
    (dir, ca, handle)
}

#[tokio::test]
async fn the_admin_api_over_tls_answers_with_a_token_and_refuses_cleartext() {
    let (_dir, ca, handle) = start_with_admin_tls().await;
    let url = handle.admin_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let token = handle.tokens().create("tls-user", &[Role::Read]).unwrap();
    // The certificate names `localhost`.
    let local = url.replace("127.0.0.1", "localhost");
    let admin = AdminClient::new(&local)
        .with_http_client(http.clone())
        .with_token(token);
    assert_eq!(admin.tasks().await.unwrap().len(), 2);
    let anonymous = AdminClient::new(&local).with_http_client(http);
    assert_eq!(anonymous.tasks().await.unwrap_err().status(), Some(401));
    // Cleartext HTTP to the TLS port gets no answer.
    let plain = AdminClient::new(&url.replace("https://", "http://"));
    assert_eq!(plain.tasks().await.unwrap_err().status(), None);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_admin_tls_handshakes_is_capped_and_the_api_answers_after_it() {
    let (_dir, ca, handle) = start_with_admin_tls().await;
    let addr: std::net::SocketAddr = handle
        .admin_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    // Connections that never start their handshake hold every place.
    let mut stalled = Vec::new();
    for _ in 0..orchestrator_mock::admin_tls::MAX_HANDSHAKES {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // One more is closed at accept: it reads end-of-file, not a stall.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut extra, &mut buf),
    )
    .await
    .expect("the connection past the cap was left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once they go, a real caller is served.
    drop(stalled);
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let token = handle
        .tokens()
        .create("after-flood", &[Role::Read])
        .unwrap();
    let admin = AdminClient::new(&handle.admin_url().replace("127.0.0.1", "localhost"))
        .with_http_client(http)
        .with_token(token);
    let start = std::time::Instant::now();
    loop {
        match admin.tasks().await {
            Ok(tasks) => {
                assert_eq!(tasks.len(), 2);
                break;
            }
            Err(e) if start.elapsed() > std::time::Duration::from_secs(20) => {
                panic!("the admin API never answered after the flood: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    handle.shutdown().await;
}
