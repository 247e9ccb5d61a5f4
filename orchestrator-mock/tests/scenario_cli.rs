//! `orchestrator-mock test` as a user runs it, without a worker: a bad
//! scenario file is refused before anything starts (exit 2, file:line:
//! field), and a scenario needing a fault the mock cannot give fails with
//! a clear message, a non-zero exit and a JUnit report that says so.
//! The runs with a real worker are in the `tests` crate
//! (`tests/tests/scenario_runner.rs`).

mod common;

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator-mock");

#[test]
fn a_bad_scenario_file_is_refused_with_file_line_and_field_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("happy.toml");
    std::fs::write(
        &file,
        r#"name = "typo"

[[steps]]
submit = { plan = "t", approve = true, tasks = [{ task = "crm.create_ticket", inputs = { title = "x" } }] }

[[steps]]
[steps.expect]
plan = "t"
[[steps.expect.steps]]
outcome = "SUCEEDED"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["test", "--admin-url", "http://127.0.0.1:9"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "{}:10: steps[1].expect.steps[0].outcome: unknown variant `SUCEEDED`, expected one of `SUCCEEDED`",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // An unknown field, in a folder with a good file: every file is read,
    // the bad one is named.
    std::fs::write(&file, "[[steps]]\nwait = \"1s\"\n").unwrap();
    std::fs::write(
        dir.path().join("second.toml"),
        "[[steps]]\ncut_stream = { identity = \"x\", recconect = false }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["test", "--admin-url", "http://127.0.0.1:9"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("second.toml:2: steps[0].cut_stream.recconect: unknown field `recconect`"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_with_code_2() {
    // Neither --config nor --admin-url.
    let out = Command::new(BIN).args(["test", "pack/"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A filter that selects nothing.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), "[[steps]]\nwait = \"1ms\"\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "test",
            "--admin-url",
            "http://127.0.0.1:9",
            "--filter",
            "zzz",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no scenario matches --filter \"zzz\""),
        "{stderr}"
    );
}

#[test]
fn a_fault_the_running_mock_cannot_give_fails_the_scenario_clearly_in_text_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, text) = common::write_setup(dir.path());
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.path().join("mock.log")).unwrap();
    let mut mock = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mock.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    let admin = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap_or_else(|| panic!("no admin= in {ready:?}"))
        .to_string();
    let scenarios = dir.path().join("pack");
    std::fs::create_dir(&scenarios).unwrap();
    std::fs::write(
        scenarios.join("a-restart.toml"),
        "[[steps]]\nwait = \"1ms\"\n\n[[steps]]\nrestart_orchestrator = {}\n",
    )
    .unwrap();
    std::fs::write(scenarios.join("b-cut.toml"), "[[steps]]\ncut_stream = {}\n").unwrap();
    let junit = dir.path().join("report.xml");
    let token = common::admin_token(
        dir.path(),
        "scenario-cli",
        &orchestrator_mock::tokens::Role::ALL,
    );
    let out = Command::new(BIN)
        .env("ORCHESTRATOR_MOCK_TOKEN", token)
        .args([
            "test",
            "--admin-url",
            &admin,
            "--wait-worker",
            "1",
            "--junit",
        ])
        .arg(&junit)
        .arg(&scenarios)
        .output()
        .unwrap();
    let _ = mock.kill();
    let _ = mock.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[1/2] a-restart ... FAILED"), "{stdout}");
    assert!(
        stdout.contains(
            "restart_orchestrator: not available: the runner did not start the mock (--admin-url)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("a-restart.toml:4)"), "{stdout}");
    assert!(stdout.contains("[2/2] b-cut ... FAILED"), "{stdout}");
    assert!(stdout.contains("has no fault injection"), "{stdout}");
    assert!(
        stdout.contains("2 scenarios: 0 passed, 2 failed"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut failures = Vec::new();
    let mut cases = 0;
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                match e.name().as_ref() {
                    b"testcase" => cases += 1,
                    b"failure" => failures.push(
                        e.try_get_attribute("message")
                            .unwrap()
                            .unwrap()
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .unwrap()
                            .into_owned(),
                    ),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    assert_eq!(cases, 2, "{xml}");
    assert!(failures[0].contains("restart_orchestrator"), "{failures:?}");
}
