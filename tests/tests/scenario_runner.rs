//! `orchestrator-mock test`, the scenario runner, end to end: the runner
//! starts the mock (`--config`, fault injection on) and the real
//! `private-worker` (`--worker-cmd`), runs scenario files, and reports.
//!
//! - A pack with every kind of step passes against the real worker: plans,
//!   output and audit checks, hostile assignments (not in the allowlist,
//!   breaking the schema, ids beyond the contract, duplicates), a cut
//!   stream, an orchestrator killed and restarted, a drain.
//! - A deliberately broken worker config (its allowlist lacks a task the
//!   scenario expects to succeed) makes the runner exit 1 with a readable
//!   report, the worker log's tail, and JUnit XML that parses back.
//!
//! (A bad scenario file is tested without a worker in
//! `orchestrator-mock/tests/scenario_cli.rs`.)

use std::path::{Path, PathBuf};
use std::process::Output;

use private_worker_tests::catalog::{self, OrchestratorSetup, WorkerSetup};
use private_worker_tests::internal_api::InternalApi;
use private_worker_tests::pki::{ORCHESTRATOR_NAME, Pki};
use private_worker_tests::procs::binary;

/// One run's files: PKI, registry, the mock's config and a worker config
/// template whose address the worker command fills in.
struct Setup {
    dir: tempfile::TempDir,
    _api: InternalApi,
    token: String,
    mock_config: PathBuf,
    worker_template: PathBuf,
}

impl Setup {
    async fn new(insecure_skip_checks: bool, worker_lacks: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(&dir.path().join("pki"), "worker-1");
        let token = format!("sk-scenario-{}", std::process::id());
        let api = InternalApi::start("127.0.0.1:0".parse().unwrap(), &token)
            .await
            .unwrap();
        let registry = dir.path().join("registry.json");
        std::fs::write(&registry, catalog::registry_json()).unwrap();
        let mock_config = dir.path().join("mock.toml");
        let text = catalog::orchestrator_config_toml(&OrchestratorSetup {
            ca_cert: &pki.ca_cert,
            cert: &pki.orchestrator_cert,
            key: &pki.orchestrator_key,
            registry: &registry,
            data_dir: &dir.path().join("mock-data"),
            insecure_skip_checks,
            wire_capture_dir: None,
        })
        .replace("heartbeat_interval = \"5s\"", "heartbeat_interval = \"1s\"");
        std::fs::write(&mock_config, text).unwrap();
        let mut worker = catalog::worker_config_toml(&WorkerSetup {
            orchestrator_address: "@ADDR@".into(),
            server_name: ORCHESTRATOR_NAME,
            ca_cert: &pki.ca_cert,
            cert: &pki.worker_cert,
            key: &pki.worker_key,
            api_base: &api.base_url(),
            audit_log: &dir.path().join("worker-audit.jsonl"),
            max_in_flight: 4,
        });
        if let Some(task) = worker_lacks {
            worker = without_task(&worker, task);
        }
        let worker_template = dir.path().join("worker.toml.in");
        std::fs::write(&worker_template, worker).unwrap();
        Setup {
            dir,
            _api: api,
            token,
            mock_config,
            worker_template,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the scenario files into a folder `pack`.
    fn pack(&self, files: &[(&str, &str)]) -> PathBuf {
        let pack = self.path("pack");
        std::fs::create_dir_all(&pack).unwrap();
        for (name, text) in files {
            std::fs::write(pack.join(name), text).unwrap();
        }
        pack
    }

    /// Runs `orchestrator-mock test` over `pack` with the real worker.
    async fn run(&self, pack: &Path) -> Output {
        let config = self.path("worker.toml");
        let command = format!(
            "sed \"s/@ADDR@/$ORCHESTRATOR_GRPC_ADDR/\" '{}' > '{}' && exec '{}' --config '{}'",
            self.worker_template.display(),
            config.display(),
            binary("private-worker").display(),
            config.display(),
        );
        let mut runner = std::process::Command::new(binary("orchestrator-mock"));
        runner
            .arg("test")
            .arg("--config")
            .arg(&self.mock_config)
            .arg("--worker-cmd")
            .arg(command)
            .arg("--worker-log")
            .arg(self.path("worker.log"))
            .arg("--junit")
            .arg(self.path("report.xml"))
            .arg("--wait-worker")
            .arg("20")
            .arg(pack)
            .env(catalog::TOKEN_ENV, &self.token)
            .env("RUST_LOG", "info");
        tokio::task::spawn_blocking(move || runner.output().unwrap())
            .await
            .unwrap()
    }
}

/// The worker config without the task `name` (its table and sub-tables).
fn without_task(config: &str, name: &str) -> String {
    let header = format!("\n[tasks.\"{name}\"]\n");
    let own = format!("\n[tasks.\"{name}\".");
    let start = config.find(&header).expect("task in config");
    let mut end = config.len();
    let mut at = start + 1;
    while let Some(i) = config[at..].find("\n[tasks.\"") {
        let pos = at + i;
        if !config[pos..].starts_with(&own) {
            end = pos;
            break;
        }
        at = pos + 1;
    }
    format!("{}{}", &config[..start], &config[end..])
}

#[test]
fn without_task_drops_the_task_and_its_sub_tables_only() {
    let config =
        "[worker]\n\n[tasks.\"a\"]\nx = 1\n\n[tasks.\"a\".http]\ny = 2\n\n[tasks.\"b\"]\nz = 3\n";
    assert_eq!(
        without_task(config, "a"),
        "[worker]\n\n[tasks.\"b\"]\nz = 3\n"
    );
    assert_eq!(
        without_task(config, "b"),
        "[worker]\n\n[tasks.\"a\"]\nx = 1\n\n[tasks.\"a\".http]\ny = 2\n"
    );
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HAPPY: &str = r#"
name = "happy path"

[[steps]]
submit.plan = "ticket"
submit.approve = true
submit.tasks = [
  { task = "crm.create_ticket", inputs = { title = "from a scenario", priority = 2 } },
  { task = "crm.get_ticket", inputs = { ticket_id = "T-1001" } },
]

[[steps]]
[steps.expect]
plan = "ticket"
status = "succeeded"
within = "15s"
audit = "ok"
[[steps.expect.steps]]
outcome = "SUCCEEDED"
error_code = ""
output = { "/status" = 201, "/body/title" = "from a scenario" }
attempts = 1
started = true
[[steps.expect.steps]]
outcome = "SUCCEEDED"
output = { "/body/id" = "T-1001" }
"#;

const HOSTILE: &str = r#"
name = "hostile assignments"

[[steps]]
[steps.hostile_assignment]
task = "crm.delete_customer"
inputs = { customer = "C-1" }
expect = { outcome = "REJECTED", error_code = "not_allowed", accepted = true, started = false }

[[steps]]
hostile_assignment = { task = "crm.create_ticket", inputs = { title = 5 }, expect = { outcome = "REJECTED", error_code = "invalid_input", started = false } }

[[steps]]
hostile_assignment = { task_id = "bad id with spaces", task = "diag.echo", inputs = { message = "x" }, expect = { answered = false, within = "1s" } }

[[steps]]
submit = { plan = "once", approve = true, tasks = [{ task = "diag.echo", inputs = { message = "only once" } }] }

[[steps]]
expect = { plan = "once", status = "succeeded", within = "15s" }

[[steps]]
hostile_assignment = { name = "again", same_as = { plan = "once", step = 0 }, expect = { answered = false, within = "1s" } }

[[steps]]
hostile_assignment = { name = "later", same_as = { plan = "once", step = 0 }, attempt = 2 }

[[steps]]
expect_answer = { assignment = "later", error_code = "already_started", started = false }
"#;

const FAULTS: &str = r#"
name = "faults"
timeout = "90s"

[[steps]]
submit = { plan = "slow", approve = true, tasks = [{ task = "diag.slow_write", inputs = { ms = 1500 } }] }

[[steps]]
wait = "400ms"

[[steps]]
cut_stream = {}

[[steps]]
expect = { plan = "slow", status = "succeeded", within = "20s", steps = [{ outcome = "SUCCEEDED", attempts = 1 }] }

[[steps]]
restart_orchestrator = { signal = "kill" }

[[steps]]
submit = { plan = "after", approve = true, tasks = [{ task = "diag.echo", inputs = { message = "after the restart" } }] }

[[steps]]
expect = { plan = "after", status = "succeeded", within = "15s", steps = [{ output = { "/status" = 200, "/body/method" = "POST" } }] }

[[steps]]
submit = { plan = "drained", approve = true, tasks = [{ task = "diag.slow_write", inputs = { ms = 1000 } }] }

[[steps]]
wait = "300ms"

[[steps]]
drain = { within = "15s" }

[[steps]]
expect = { plan = "drained", status = "succeeded", steps = [{ outcome = "SUCCEEDED", attempts = 1 }] }

[[steps]]
wait_worker = {}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_with_every_kind_of_step_passes_against_the_real_worker() {
    let setup = Setup::new(false, None).await;
    let pack = setup.pack(&[
        ("a-happy.toml", HAPPY),
        ("b-hostile.toml", HOSTILE),
        ("c-faults.toml", FAULTS),
    ]);
    let out = setup.run(&pack).await;
    let (stdout, stderr) = text(&out);
    let worker_log = std::fs::read_to_string(setup.path("worker.log")).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nworker log:\n{worker_log}"
    );
    for line in [
        "[1/3] happy path ... ok",
        "[2/3] hostile assignments ... ok",
        "[3/3] faults ... ok",
        "3 scenarios: 3 passed, 0 failed",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let xml = std::fs::read_to_string(setup.path("report.xml")).unwrap();
    let junit = Junit::parse(&xml);
    assert_eq!(junit.cases.len(), 3, "{xml}");
    assert!(junit.failures.is_empty(), "{xml}");
    // The worker was stopped at the end (SIGTERM: it drained and said so).
    assert!(worker_log.contains("SIGTERM"), "{worker_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_worker_config_fails_the_run_with_a_readable_report_and_valid_junit() {
    // The mock skips its manifest check so that the task reaches the
    // worker, whose allowlist lacks it: the worker refuses it.
    let setup = Setup::new(true, Some("crm.create_ticket")).await;
    let pack = setup.pack(&[
        (
            "a-echo.toml",
            r#"
[[steps]]
submit = { plan = "echo", approve = true, tasks = [{ task = "diag.echo", inputs = { message = "hi" } }] }

[[steps]]
expect = { plan = "echo", status = "succeeded", within = "15s" }
"#,
        ),
        (
            "b-ticket.toml",
            r#"name = "ticket"

[[steps]]
submit = { plan = "t", approve = true, tasks = [{ task = "crm.create_ticket", inputs = { title = "needs the allowlist" } }] }

[[steps]]
[steps.expect]
plan = "t"
status = "succeeded"
within = "15s"
steps = [{ outcome = "SUCCEEDED" }]
"#,
        ),
    ]);
    let out = setup.run(&pack).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for needle in [
        "[1/2] a-echo ... ok",
        "[2/2] ticket ... FAILED",
        "at step 2 (expect \"t\", ",
        "b-ticket.toml:6)",
        "plan status",
        "expected: succeeded",
        "seen:     failed",
        "step 0 (crm.create_ticket) outcome",
        "expected: SUCCEEDED",
        "seen:     rejected (not_allowed",
        "worker log (last lines of ",
        "2 scenarios: 1 passed, 1 failed",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let xml = std::fs::read_to_string(setup.path("report.xml")).unwrap();
    let junit = Junit::parse(&xml);
    assert_eq!(junit.cases, ["a-echo", "ticket"], "{xml}");
    assert_eq!(junit.suite_failures.as_deref(), Some("1"), "{xml}");
    assert_eq!(junit.failures.len(), 1, "{xml}");
    assert!(
        junit.failures[0].contains("step 2 (expect \"t\")"),
        "{:?}",
        junit.failures
    );
    assert!(
        junit.system_out.contains("private-worker") || junit.system_out.contains("task"),
        "the worker log's tail is in <system-out>: {:?}",
        junit.system_out
    );
}

/// What the tests read back from a JUnit report, with an XML parser that
/// is not the writer's.
#[derive(Debug, Default)]
struct Junit {
    suite_failures: Option<String>,
    cases: Vec<String>,
    failures: Vec<String>,
    system_out: String,
}

impl Junit {
    fn parse(xml: &str) -> Junit {
        use quick_xml::events::Event;
        let mut junit = Junit::default();
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut in_out = false;
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => {
                    let attr = |name: &str| {
                        e.try_get_attribute(name).unwrap().map(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .unwrap()
                                .into_owned()
                        })
                    };
                    match e.name().as_ref() {
                        b"testsuite" => junit.suite_failures = attr("failures"),
                        b"testcase" => junit.cases.push(attr("name").unwrap()),
                        b"failure" => junit.failures.push(attr("message").unwrap()),
                        b"system-out" => in_out = true,
                        _ => {}
                    }
                }
                Event::Text(t) if in_out => junit.system_out.push_str(&t.decode().unwrap()),
                Event::End(e) if e.name().as_ref() == b"system-out" => in_out = false,
                _ => {}
            }
        }
        junit
    }
}
