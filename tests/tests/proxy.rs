//! The worker behind a real HTTP proxy (Debian's tinyproxy): the stream
//! goes through CONNECT, with and without Basic authentication, and each
//! refusal (tinyproxy's 401, 403, an unreachable proxy) gives a clear error
//! and a retry. Two misbehaviours tinyproxy cannot be made to show are
//! played by a [`ScriptedProxy`] in the test: the RFC's 407 with a Basic
//! challenge, and a proxy that accepts the connection and never answers.
//!
//! How the tests make sure the worker cannot go direct: the worker dials
//! `orchestrator.proxy-only.invalid:<port>`, a name no resolver knows
//! (`.invalid` is reserved, RFC 6761), so a direct dial fails. tinyproxy
//! hands CONNECTs for that domain to an upstream ([`RecordingUpstream`],
//! tinyproxy's `Upstream` rule) that leads every tunnel to the in-process
//! orchestrator and records every byte it carries. A plan that succeeds
//! therefore crossed the proxy, and the recording is what a proxy on the
//! path sees. The orchestrator's certificate names `orchestrator.local`,
//! which the worker checks (`server_name`) inside the tunnel.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Env, Options, WAIT, contains};
use orchestrator_mock::api::PlanStatus;
use private_worker_tests::catalog;
use private_worker_tests::pki::ORCHESTRATOR_NAME;
use private_worker_tests::procs::{Process, binary};
use private_worker_tests::proxy::RecordingUpstream;
use private_worker_tests::tinyproxy::{Tinyproxy, TinyproxyOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A host name only the proxy path can reach.
const HIDDEN_HOST: &str = "orchestrator.proxy-only.invalid";

/// One world: orchestrator, the recording upstream, tinyproxy in front.
struct Behind {
    env: Env,
    upstream: RecordingUpstream,
    proxy: Tinyproxy,
}

impl Behind {
    async fn start(options: TinyproxyOptions) -> Behind {
        let env = Env::start(Options::default()).await;
        let upstream = RecordingUpstream::start(env.grpc_addr).await.unwrap();
        let options = TinyproxyOptions {
            connect_ports: vec![env.grpc_addr.port()],
            upstream: Some((upstream.addr(), ".proxy-only.invalid".into())),
            ..options
        };
        let proxy = Tinyproxy::start(&env.path("tinyproxy"), &options);
        Behind {
            env,
            upstream,
            proxy,
        }
    }

    /// `host:port` the worker dials and asks the proxy for.
    fn target(&self) -> String {
        format!("{HIDDEN_HOST}:{}", self.env.grpc_addr.port())
    }

    /// Starts the worker with `[orchestrator]` lines `extra` added, dialing
    /// `address`, with `vars` in its environment.
    fn worker(&self, address: &str, extra: &str, vars: &[(&str, &str)]) -> Process {
        let env = &self.env;
        let path = env.write_worker_config(
            "worker",
            &env.pki.worker_cert,
            &env.pki.worker_key,
            ORCHESTRATOR_NAME,
        );
        let text = std::fs::read_to_string(&path).unwrap().replace(
            &format!("address = \"{}\"", env.grpc_addr),
            &format!("address = \"{address}\"\n{extra}"),
        );
        assert!(text.contains(address), "the address was replaced");
        std::fs::write(&path, text).unwrap();
        let mut all = vec![
            (catalog::TOKEN_ENV, env.token.as_str()),
            ("RUST_LOG", "debug"),
        ];
        all.extend_from_slice(vars);
        Process::start(
            "worker",
            &binary("private-worker"),
            &["--config", path.to_str().unwrap()],
            &all,
            &env.path("worker.log"),
        )
    }
}

/// A direct dial of the hidden host cannot work from this machine.
async fn assert_no_direct_route() {
    assert!(
        tokio::net::lookup_host(format!("{HIDDEN_HOST}:443"))
            .await
            .is_err(),
        "{HIDDEN_HOST} resolves here; the test could not tell a direct dial from a proxied one"
    );
}

/// Runs a plan with a distinctive input and checks it crossed the proxy as
/// ciphertext only.
async fn run_plan_through(behind: &Behind, worker: &Process) {
    let env = &behind.env;
    env.wait_connected(&env.pki.worker_identity).await;
    let marker = format!("Printer-on-fire-{}", std::process::id());
    let plan = env
        .run_plan(&[(
            "crm.create_ticket",
            json!({"title": marker, "priority": 2, "customer": "C-42"}),
        )])
        .await;
    assert_eq!(
        plan.status,
        PlanStatus::Succeeded,
        "{plan:#?}\nworker log:\n{}\nproxy log:\n{}",
        worker.output(),
        behind.proxy.log()
    );
    assert!(
        behind.proxy.connects_to(&behind.target()) >= 1,
        "tinyproxy's log shows the CONNECT to the orchestrator's host name:\n{}",
        behind.proxy.log()
    );
    let connects = behind.upstream.connects();
    assert!(
        connects
            .iter()
            .any(|l| l.starts_with(&format!("CONNECT {} ", behind.target()))),
        "the CONNECT kept the host name all the way: {connects:?}"
    );
    let seen = behind.upstream.bytes();
    assert!(
        seen.len() > 1000,
        "the recording holds the session ({} bytes)",
        seen.len()
    );
    for plaintext in [
        marker.as_str(),
        "crm.create_ticket",
        "C-42",
        plan.steps[0].task_id.as_str(),
        env.token.as_str(),
    ] {
        assert!(
            !contains(&seen, plaintext.as_bytes()),
            "`{plaintext}` crossed the proxy in plaintext"
        );
    }
    assert!(
        worker.output().contains("through the HTTP proxy"),
        "the worker logs its route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_runs_through_a_real_proxy_which_sees_the_connect_and_only_ciphertext() {
    let behind = Behind::start(TinyproxyOptions::default()).await;
    assert_no_direct_route().await;
    let worker = behind.worker(
        &behind.target(),
        &format!("proxy = \"{}\"", behind.proxy.url()),
        &[],
    );
    run_plan_through(&behind, &worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_runs_through_a_proxy_that_needs_basic_auth_with_the_password_from_a_secret_reference()
 {
    let password = format!("proxy-pw-{}-DO-NOT-LEAK", std::process::id());
    let behind = Behind::start(TinyproxyOptions {
        basic_auth: Some(("svc-worker".into(), password.clone())),
        ..TinyproxyOptions::default()
    })
    .await;
    let worker = behind.worker(
        &behind.target(),
        &format!(
            "proxy = \"{}\"\nproxy_username = \"svc-worker\"\nproxy_password = \"env://PROXY_PASSWORD\"",
            behind.proxy.url()
        ),
        &[("PROXY_PASSWORD", password.as_str())],
    );
    run_plan_through(&behind, &worker).await;
    // The password travels as base64 in Proxy-Authorization on the hop to
    // tinyproxy (by necessity); it must be nowhere else, in either form.
    let encoded = base64_of(&format!("svc-worker:{password}"));
    let log = worker.output();
    assert!(
        !log.contains(&password),
        "the worker log holds the proxy password"
    );
    assert!(
        !log.contains(&encoded),
        "the worker log holds the Proxy-Authorization value"
    );
    let heads = behind.upstream.heads().concat();
    assert!(
        heads.contains("CONNECT "),
        "the upstream recorded the CONNECT heads: {heads}"
    );
    let seen = behind.upstream.bytes();
    for secret in [password.as_str(), encoded.as_str()] {
        assert!(
            !heads.contains(secret) && !contains(&seen, secret.as_bytes()),
            "the proxy credentials went past the proxy towards the orchestrator"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tinyproxy_asking_for_credentials_gives_a_clear_error_and_the_worker_keeps_retrying() {
    let behind = Behind::start(TinyproxyOptions {
        basic_auth: Some(("svc-worker".into(), "right-password".into())),
        ..TinyproxyOptions::default()
    })
    .await;
    let proxy_url = behind.proxy.url();
    let proxy_addr = behind.proxy.addr();

    // No credentials configured.
    let mut worker = behind.worker(&behind.target(), &format!("proxy = \"{proxy_url}\""), &[]);
    // tinyproxy 1.11 answers 401 where RFC 9110 says 407; the worker
    // treats both alike and names the code it got.
    let line = worker.wait_for(
        &format!("the proxy at {proxy_addr} requires authentication (40"),
        WAIT,
    );
    assert!(
        line.contains("set orchestrator.proxy_username/proxy_password"),
        "{line}"
    );
    wait_until(
        || behind.proxy.connects_to(&behind.target()) >= 2,
        || {
            format!(
                "a second CONNECT after the backoff:\n{}",
                behind.proxy.log()
            )
        },
    )
    .await;
    drop(worker);

    // Wrong credentials.
    let wrong = "wrong-password-DO-NOT-LEAK";
    let before = behind.proxy.connects_to(&behind.target());
    let mut worker = behind.worker(
        &behind.target(),
        &format!(
            "proxy = \"{proxy_url}\"\nproxy_username = \"svc-worker\"\nproxy_password = \"env://PROXY_PASSWORD\""
        ),
        &[("PROXY_PASSWORD", wrong)],
    );
    worker.wait_for(
        &format!("the proxy at {proxy_addr} rejected the credentials of user `svc-worker` (40"),
        WAIT,
    );
    wait_until(
        || behind.proxy.connects_to(&behind.target()) >= before + 2,
        || {
            format!(
                "two CONNECTs with the wrong password:\n{}",
                behind.proxy.log()
            )
        },
    )
    .await;
    assert!(
        !worker.output().contains(wrong),
        "the worker log holds the proxy password"
    );
    assert!(
        behind.upstream.connects().is_empty(),
        "no tunnel was opened without the right credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_denies_the_host_gives_a_clear_403_error_naming_the_host() {
    let behind = Behind::start(TinyproxyOptions {
        deny_hosts: vec!["proxy-only\\.invalid".into()],
        ..TinyproxyOptions::default()
    })
    .await;
    let mut worker = behind.worker(
        &behind.target(),
        &format!("proxy = \"{}\"", behind.proxy.url()),
        &[],
    );
    worker.wait_for(
        &format!(
            "the proxy at {} refused CONNECT to {} (403): ask for the host to be allowed",
            behind.proxy.addr(),
            behind.target()
        ),
        WAIT,
    );
    worker.wait_for("reconnecting after backoff", WAIT);
    assert!(behind.upstream.connects().is_empty(), "nothing got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_proxy_gives_a_clear_error_and_the_worker_keeps_retrying() {
    let env = Env::start(Options::default()).await;
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let behind_env = env;
    let path = behind_env.write_worker_config(
        "worker",
        &behind_env.pki.worker_cert,
        &behind_env.pki.worker_key,
        ORCHESTRATOR_NAME,
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[orchestrator]\n",
        &format!("[orchestrator]\nproxy = \"http://{closed}\"\n"),
    );
    std::fs::write(&path, text).unwrap();
    let worker = behind_env.start_worker_with(&path, "worker");
    let needle = format!("cannot reach the proxy at {closed}");
    wait_until(
        || worker.output().matches(&needle).count() >= 2,
        || format!("two failed attempts naming the proxy:\n{}", worker.output()),
    )
    .await;
    assert!(worker.output().contains("reconnecting after backoff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_matching_the_orchestrator_sends_the_stream_direct_and_https_proxy_otherwise() {
    let behind = Behind::start(TinyproxyOptions::default()).await;
    let proxy_url = behind.proxy.url();
    let direct = behind.env.grpc_addr.to_string();

    // HTTPS_PROXY alone: the hidden host is reached through the proxy.
    let worker = behind.worker(&behind.target(), "", &[("HTTPS_PROXY", proxy_url.as_str())]);
    run_plan_through(&behind, &worker).await;
    assert!(
        worker.output().contains("(from HTTPS_PROXY)"),
        "{}",
        worker.output()
    );
    drop(worker);

    // NO_PROXY names the orchestrator's address: straight there.
    let before = behind.proxy.log().matches("CONNECT ").count();
    let worker = behind.worker(
        &direct,
        "",
        &[
            ("HTTPS_PROXY", proxy_url.as_str()),
            ("NO_PROXY", "localhost, 127.0.0.0/8"),
        ],
    );
    behind
        .env
        .wait_connected(&behind.env.pki.worker_identity)
        .await;
    let plan = behind
        .env
        .run_plan(&[("crm.create_ticket", json!({"title": "direct"}))])
        .await;
    assert_eq!(plan.status, PlanStatus::Succeeded, "{}", worker.output());
    assert!(
        worker
            .output()
            .contains("direct (NO_PROXY=localhost, 127.0.0.0/8 matches the orchestrator's host)"),
        "{}",
        worker.output()
    );
    assert_eq!(
        behind.proxy.log().matches("CONNECT ").count(),
        before,
        "the proxy saw no CONNECT:\n{}",
        behind.proxy.log()
    );
}

/// Polls `done` until it holds, failing with `why()` after [`WAIT`].
async fn wait_until(done: impl Fn() -> bool, why: impl Fn() -> String) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "{}", why());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_route_the_stream_will_take_without_the_password() {
    let env = Env::start(Options::default()).await;
    let password = format!("proxy-pw-{}-DO-NOT-LEAK", std::process::id());
    let path = env.write_worker_config(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        ORCHESTRATOR_NAME,
    );
    let plain = std::fs::read_to_string(&path).unwrap();
    let check = |vars: &[(&str, &str)]| {
        let mut command = std::process::Command::new(binary("private-worker"));
        command
            .args(["--config", path.to_str().unwrap(), "--check"])
            .env(catalog::TOKEN_ENV, &env.token)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        for (k, v) in vars {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        text.lines()
            .find(|l| l.contains("orchestrator route:"))
            .unwrap_or_else(|| panic!("no route line in:\n{text}"))
            .to_string()
    };

    std::fs::write(
        &path,
        plain.replace(
            "[orchestrator]\n",
            "[orchestrator]\nproxy = \"http://proxy.corp.example:3128\"\nproxy_username = \"svc-worker\"\nproxy_password = \"env://PROXY_PASSWORD\"\n",
        ),
    )
    .unwrap();
    let line = check(&[("PROXY_PASSWORD", password.as_str())]);
    assert!(
        line.contains(&format!(
            "ok   orchestrator route: through the HTTP proxy http://proxy.corp.example:3128 (from orchestrator.proxy) as user `svc-worker`; CONNECT {}",
            env.grpc_addr
        )),
        "{line}"
    );
    assert!(!line.contains(&password), "{line}");
    let line = check(&[]);
    assert!(
        line.starts_with(
            "FAIL orchestrator route: orchestrator.proxy_password: env://PROXY_PASSWORD"
        ),
        "{line}"
    );

    std::fs::write(&path, &plain).unwrap();
    let line = check(&[
        ("HTTPS_PROXY", "http://proxy.corp.example:3128"),
        ("NO_PROXY", "127.0.0.1"),
    ]);
    assert!(
        line.contains("direct (NO_PROXY=127.0.0.1 matches the orchestrator's host)"),
        "{line}"
    );
    let line = check(&[]);
    assert!(
        line.contains(
            "direct (no orchestrator.proxy, and neither HTTPS_PROXY nor ALL_PROXY is set)"
        ),
        "{line}"
    );
}

/// What a [`ScriptedProxy`] does with each connection.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Accepts and never answers: a proxy that black-holes the CONNECT.
    Silent,
    /// Reads the CONNECT request and answers `407 Proxy Authentication
    /// Required` with a Basic challenge, as RFC 9110 asks of a proxy.
    Demand407,
}

/// A stand-in proxy on 127.0.0.1:0 that misbehaves in one precise way,
/// counting connections and keeping the request heads it read. Stops when
/// dropped.
struct ScriptedProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedProxy {
    async fn start(script: Script) -> ScriptedProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, kept) = (connections.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                match script {
                    Script::Silent => held.push(stream),
                    Script::Demand407 => {
                        let kept = kept.clone();
                        tokio::spawn(async move {
                            let mut head = Vec::new();
                            let mut buf = [0u8; 1024];
                            while !contains(&head, b"\r\n\r\n") && head.len() < 16 * 1024 {
                                match stream.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => head.extend_from_slice(&buf[..n]),
                                }
                            }
                            kept.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            let _ = stream
                                .write_all(
                                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                                      Proxy-Authenticate: Basic realm=\"x\"\r\n\
                                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                                )
                                .await;
                            let _ = stream.shutdown().await;
                        });
                    }
                }
            }
        });
        ScriptedProxy {
            addr,
            connections,
            heads,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ScriptedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the worker of `env` with `lines` added under `[orchestrator]`
/// and `vars` in its environment.
fn worker_with_lines(env: &Env, lines: &str, vars: &[(&str, &str)]) -> Process {
    let path = env.write_worker_config(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        ORCHESTRATOR_NAME,
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[orchestrator]\n", &format!("[orchestrator]\n{lines}\n"));
    std::fs::write(&path, text).unwrap();
    let mut all = vec![
        (catalog::TOKEN_ENV, env.token.as_str()),
        ("RUST_LOG", "debug"),
    ];
    all.extend_from_slice(vars);
    Process::start(
        "worker",
        &binary("private-worker"),
        &["--config", path.to_str().unwrap()],
        &all,
        &env.path("worker.log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_accepts_and_never_answers_is_named_in_the_error_and_the_worker_keeps_retrying()
 {
    let env = Env::start(Options::default()).await;
    let proxy = ScriptedProxy::start(Script::Silent).await;
    // A short dial limit so that the test is quick; the message must name
    // the proxy and the step, not only the orchestrator.
    let worker = worker_with_lines(
        &env,
        &format!(
            "proxy = \"http://{}\"\nconnect_timeout = \"1s\"",
            proxy.addr
        ),
        &[],
    );
    let needle = format!(
        "the proxy at {} accepted the TCP connection but did not answer CONNECT {} within",
        proxy.addr, env.grpc_addr
    );
    wait_until(
        || worker.output().matches(&needle).count() >= 2 && proxy.connections() >= 2,
        || {
            format!(
                "two attempts ({} connections) naming the silent proxy:\n{}",
                proxy.connections(),
                worker.output()
            )
        },
    )
    .await;
    assert!(
        worker.output().contains("reconnecting after backoff"),
        "{}",
        worker.output()
    );
    assert!(
        !worker
            .output()
            .contains(&format!("connecting to {} timed out", env.grpc_addr)),
        "the plain dial timeout, which does not name the proxy, fired first:\n{}",
        worker.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_answering_407_gives_the_exact_error_with_and_without_credentials() {
    let env = Env::start(Options::default()).await;
    let proxy = ScriptedProxy::start(Script::Demand407).await;

    // No credentials configured.
    let mut worker = worker_with_lines(&env, &format!("proxy = \"http://{}\"", proxy.addr), &[]);
    worker.wait_for(
        &format!(
            "the proxy at {} requires authentication (407): set orchestrator.proxy_username/proxy_password",
            proxy.addr
        ),
        WAIT,
    );
    wait_until(
        || proxy.connections() >= 2,
        || format!("a second attempt after the backoff:\n{}", worker.output()),
    )
    .await;
    drop(worker);
    let heads = proxy.heads();
    assert!(
        heads[0].starts_with(&format!("CONNECT {} HTTP/1.1\r\n", env.grpc_addr)),
        "{heads:?}"
    );
    assert!(
        !heads[0]
            .to_ascii_lowercase()
            .contains("proxy-authorization"),
        "{heads:?}"
    );

    // Credentials configured: sent, refused, named.
    let password = format!("proxy-pw-{}-DO-NOT-LEAK", std::process::id());
    let before = proxy.heads().len();
    let mut worker = worker_with_lines(
        &env,
        &format!(
            "proxy = \"http://{}\"\nproxy_username = \"svc-worker\"\nproxy_password = \"env://PROXY_PASSWORD\"",
            proxy.addr
        ),
        &[("PROXY_PASSWORD", password.as_str())],
    );
    worker.wait_for(
        &format!(
            "the proxy at {} rejected the credentials of user `svc-worker` (407): check orchestrator.proxy_username and the secret orchestrator.proxy_password names",
            proxy.addr
        ),
        WAIT,
    );
    wait_until(
        || proxy.heads().len() > before,
        || "the proxy kept the request head".into(),
    )
    .await;
    let encoded = base64_of(&format!("svc-worker:{password}"));
    let head = &proxy.heads()[before];
    assert!(
        head.contains(&format!("Proxy-Authorization: Basic {encoded}\r\n")),
        "the CONNECT carries the configured credentials: {head}"
    );
    let log = worker.output();
    assert!(
        !log.contains(&password),
        "the worker log holds the proxy password"
    );
    assert!(
        !log.contains(&encoded),
        "the worker log holds the Proxy-Authorization value"
    );
}

/// Standard base64, as in a `Basic` header.
fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}
