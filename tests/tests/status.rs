//! Status without an inbound port: the worker's status file and
//! `private-worker status` follow connected / kill switch / disconnected /
//! stopped / killed, with the exit code a monitor can use; systemd hears
//! `READY=1` only after the first `Welcome`, `STATUS=` lines and watchdog
//! pings; metrics are served on loopback only when the config asks, and
//! then the worker's one listening socket is that one.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Env, Options, WAIT};
use private_worker_tests::catalog;
use private_worker_tests::procs::{Process, binary};
use private_worker_tests::proxy::CuttableProxy;
use private_worker_tests::sockets::sockets_of;
use serde_json::{Value, json};

fn status(config: &Path, json: bool) -> Output {
    let mut command = std::process::Command::new(binary("private-worker"));
    command.arg("status").arg("--config").arg(config);
    if json {
        command.arg("--json");
    }
    command.output().expect("run private-worker status")
}

/// Runs `private-worker status` until `accept` takes its output (text and
/// JSON), then returns the text output.
async fn wait_status(
    config: &Path,
    what: &str,
    accept: impl Fn(&Output, &Value) -> bool,
) -> Output {
    let start = Instant::now();
    loop {
        let text = status(config, false);
        let json = status(config, true);
        let value: Value = serde_json::from_slice(&json.stdout).unwrap_or(Value::Null);
        if accept(&text, &value) {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "status never showed {what}; last:\n{}{}\n{value:#}",
            String::from_utf8_lossy(&text.stdout),
            String::from_utf8_lossy(&text.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_connected_kill_switch_disconnected_stopped_and_killed() {
    let mut env = Env::start(Options::default()).await;
    let mut worker = env.start_worker();
    let config = env.path("worker.toml");
    env.wait_connected(&env.pki.worker_identity).await;

    let connected = wait_status(&config, "connected", |text, json| {
        text.status.code() == Some(0) && json["connection"] == "connected"
    })
    .await;
    let text = stdout(&connected);
    assert!(text.contains(&env.pki.worker_identity), "{text}");
    assert!(text.contains("connection    connected since"), "{text}");
    assert!(text.contains("kill switch   off"), "{text}");
    assert!(text.ends_with("healthy\n"), "{text}");
    let json: Value = serde_json::from_slice(&status(&config, true).stdout).unwrap();
    assert_eq!(json["identity"], env.pki.worker_identity.as_str());
    assert_eq!(json["orchestrator"], env.grpc_addr.to_string());
    assert!(
        json["session_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{json:#}"
    );
    assert!(json["last_message_at"].is_string(), "{json:#}");
    assert_eq!(json["pid"], worker.pid());
    let cert = &json["certificate"];
    assert!(
        cert["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{json:#}"
    );
    assert!(
        cert["not_after"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{json:#}"
    );

    // A finished task shows in the counts.
    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "status"}))])
        .await;
    assert_eq!(
        plan.status,
        orchestrator_mock::api::PlanStatus::Succeeded,
        "{plan:#?}"
    );
    wait_status(&config, "one succeeded task", |_, json| {
        json["tasks"]["succeeded"] == 1 && json["outbox"] == 0
    })
    .await;

    // The kill switch: unhealthy while the file exists.
    let stop = env.path("STOP");
    std::fs::write(&stop, b"maintenance\n").unwrap();
    let killed = wait_status(&config, "the kill switch on", |text, json| {
        text.status.code() == Some(1) && json["kill_switch"]["on"] == true
    })
    .await;
    let text = stdout(&killed);
    assert!(text.contains("kill switch   ON"), "{text}");
    assert!(text.contains("unhealthy: kill switch is ON"), "{text}");
    assert!(text.contains(&stop.display().to_string()), "{text}");
    std::fs::remove_file(&stop).unwrap();
    wait_status(&config, "the kill switch off again", |text, _| {
        text.status.code() == Some(0)
    })
    .await;

    // The orchestrator goes away: disconnected, with the reason.
    env.shutdown_orchestrator().await;
    let down = wait_status(&config, "disconnected", |text, json| {
        text.status.code() == Some(1) && json["connection"] == "disconnected"
    })
    .await;
    let text = stdout(&down);
    assert!(text.contains("unhealthy: disconnected since"), "{text}");
    assert!(text.contains("last error"), "{text}");
    let json: Value = serde_json::from_slice(&status(&config, true).stdout).unwrap();
    assert_eq!(json["reconnects"], 1, "{json:#}");
    assert!(json["session_id"].is_null(), "{json:#}");

    // A clean stop says so.
    assert_eq!(worker.terminate(WAIT), Some(0), "{}", worker.output());
    let stopped = status(&config, false);
    assert_eq!(stopped.status.code(), Some(1), "{stopped:?}");
    assert!(
        stdout(&stopped).contains("unhealthy: stopped at"),
        "{}",
        stdout(&stopped)
    );

    // A worker killed with SIGKILL leaves a file that goes stale.
    let mut worker = env.start_worker();
    wait_status(&config, "the new process", |_, json| {
        json["pid"] == worker.pid()
    })
    .await;
    worker.kill();
    let stale = wait_status(&config, "stale", |text, _| {
        stdout(text).contains("unhealthy: stale: the worker")
    })
    .await;
    assert_eq!(stale.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_readable_file_exits_2_and_says_which_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("status.json");
    let output = std::process::Command::new(binary("private-worker"))
        .args(["status", "--file"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    std::fs::write(&missing, b"{\"format\": 1}").unwrap();
    let output = std::process::Command::new(binary("private-worker"))
        .args(["status", "--file"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not a status file"),
        "{output:?}"
    );
}

/// Datagrams systemd would receive, from a socket bound in `dir`.
struct FakeSystemd {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    seen: Vec<String>,
}

impl FakeSystemd {
    fn bind(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeSystemd {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one contains `needle` (returns the datagrams
    /// read meanwhile, that one included).
    fn wait_for(&mut self, needle: &str) -> Vec<String> {
        let start = Instant::now();
        let mut read = Vec::new();
        let mut buffer = vec![0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                self.seen.push(message.clone());
                read.push(message.clone());
                if message.contains(needle) {
                    return read;
                }
            }
            assert!(
                start.elapsed() < WAIT,
                "systemd never heard {needle:?}; heard {:?}",
                self.seen
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_only_after_the_first_welcome_then_status_and_watchdog_pings() {
    let env = Env::start(Options::default()).await;
    let mut systemd = FakeSystemd::bind(env.dir.path());
    // The worker reaches the orchestrator through a relay held stalled, so
    // its first handshake cannot finish until the test lets it.
    let relay = CuttableProxy::start(env.grpc_addr).await.unwrap();
    relay.stall();
    let config = env.write_worker_config_at(
        "worker",
        &env.pki.worker_cert,
        &env.pki.worker_key,
        relay.addr(),
    );
    let worker = Process::start(
        "worker",
        &binary("private-worker"),
        &["--config", config.to_str().unwrap()],
        &[
            (catalog::TOKEN_ENV, env.token.as_str()),
            ("RUST_LOG", "debug"),
            ("NOTIFY_SOCKET", systemd.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
        &env.path("worker.log"),
    );

    let before = systemd.wait_for("WATCHDOG=1");
    let before_more = systemd.wait_for("WATCHDOG=1");
    for message in before.iter().chain(&before_more) {
        assert!(
            !message.contains("READY=1"),
            "READY before any Welcome: {message:?}\n{}",
            worker.output()
        );
    }
    assert!(
        systemd
            .seen
            .iter()
            .any(|m| m.contains("STATUS=connecting to")),
        "{:?}",
        systemd.seen
    );

    relay.resume();
    let ready = systemd.wait_for("READY=1");
    let ready = ready.last().unwrap();
    assert!(
        ready.contains(&format!("STATUS=connected to {}", relay.addr())),
        "{ready:?}"
    );
    // The watchdog goes on being fed while the loop is healthy.
    systemd.wait_for("WATCHDOG=1");
    systemd.wait_for("WATCHDOG=1");

    // The kill switch shows in the status line.
    std::fs::write(env.path("STOP"), b"x").unwrap();
    systemd.wait_for("KILL SWITCH ON");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_asked_for_are_served_on_loopback_and_are_the_only_listening_socket() {
    let env = Env::start(Options::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config =
        env.write_worker_config_with(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let worker = env.start_worker_with(&config, "worker");
    env.wait_connected(&env.pki.worker_identity).await;

    let plan = env
        .run_plan(&[("crm.create_ticket", json!({"title": "status"}))])
        .await;
    assert_eq!(
        plan.status,
        orchestrator_mock::api::PlanStatus::Succeeded,
        "{plan:#?}"
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let start = Instant::now();
    let body = loop {
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if body.contains("private_worker_tasks_total{outcome=\"succeeded\"} 1") {
            break body;
        }
        assert!(
            start.elapsed() < WAIT,
            "metrics never counted the task:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("private_worker_task_duration_seconds_count 1"),
        "{body}"
    );
    assert!(body.contains("private_worker_outbox 0"), "{body}");
    assert!(body.contains("private_worker_reconnects_total 0"), "{body}");
    assert!(
        !body.contains(&env.token),
        "the metrics text holds the credential"
    );

    let inbound: Vec<_> = sockets_of(worker.pid())
        .unwrap()
        .into_iter()
        .filter(|s| s.accepts_inbound)
        .collect();
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    // /proc/net/tcp's form: 127.0.0.1 is 0100007F, the port in hex.
    assert_eq!(inbound[0].table, "tcp", "{inbound:?}");
    assert_eq!(
        inbound[0].local,
        format!("0100007F:{port:04X}"),
        "{inbound:?}"
    );
}

#[test]
fn metrics_on_a_public_address_stop_the_worker_at_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        "[orchestrator]\naddress = \"127.0.0.1:1\"\nserver_name = \"o\"\n\
         [tls]\nca_cert = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
         [metrics]\nlisten = \"0.0.0.0:9464\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(binary("private-worker"))
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("metrics.listen"), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
