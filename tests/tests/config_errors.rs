//! Config errors from the real binary: they name the file, the line and
//! the key, exit non-zero, and never echo the offending line, so a secret
//! typed without quotes (or credentials typed into a URL or a header)
//! never reaches stdout or stderr.

use std::path::Path;
use std::process::Output;

use private_worker_tests::procs::binary;

const SECRET: &str = "sk-live-123";

/// A config good but for `extra` (appended to the `[worker]` table) and
/// the task's `url` and `headers`.
fn config(extra: &str, url: &str, headers: &str) -> String {
    format!(
        r#"
[orchestrator]
address = "127.0.0.1:7443"
server_name = "orchestrator.local"

[tls]
ca_cert = "ca.pem"
cert = "worker.pem"
key = "worker.key"

[worker]
max_in_flight = 4
{extra}

[tasks."crm.create_ticket"]
version = "1"
input_schema = {{ type = "object" }}

[tasks."crm.create_ticket".http]
method = "POST"
url = "{url}"
headers = {{ {headers} }}
"#
    )
}

fn run(path: &Path, check: bool) -> Output {
    let mut command = std::process::Command::new(binary("private-worker"));
    command.arg("--config").arg(path);
    if check {
        command.arg("--check");
    }
    command.output().expect("run private-worker")
}

/// Runs the worker with and without `--check` on `text`; each run exits
/// non-zero, names the file and what `expected` lists, and prints no
/// `SECRET`.
fn assert_refused_without_the_secret(text: &str, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    for check in [true, false] {
        let output = run(&path, check);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "check={check}: exit 0\n{stdout}\n{stderr}"
        );
        assert!(
            !stdout.contains(SECRET) && !stderr.contains(SECRET),
            "check={check}: the secret was printed:\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(
            stderr.contains("bad.toml"),
            "check={check}: no file named: {stderr}"
        );
        for word in expected {
            assert!(
                stderr.contains(word),
                "check={check}: {word:?} missing: {stderr}"
            );
        }
    }
}

#[test]
fn an_unquoted_secret_is_a_syntax_error_naming_file_line_and_key_without_echoing_it() {
    let text = config(
        &format!("token = {SECRET}"),
        "http://127.0.0.1:9000/tickets",
        "",
    );
    assert_refused_without_the_secret(&text, &["line 13", "worker.token"]);
}

#[test]
fn a_secret_as_a_value_of_the_wrong_type_is_not_echoed() {
    let text = config("", "http://127.0.0.1:9000/tickets", "").replace(
        "max_in_flight = 4",
        &format!("max_in_flight = \"{SECRET}\""),
    );
    assert_refused_without_the_secret(&text, &["line 12", "worker.max_in_flight"]);
}

#[test]
fn url_userinfo_is_refused_without_echoing_it() {
    let text = config("", &format!("http://admin:{SECRET}@127.0.0.1:9000/t"), "");
    assert_refused_without_the_secret(&text, &["tasks.crm.create_ticket.http.url"]);
}

#[test]
fn a_literal_authorization_header_is_refused_without_echoing_it() {
    let text = config(
        "",
        "http://127.0.0.1:9000/tickets",
        &format!("authorization = \"Bearer {SECRET}\""),
    );
    assert_refused_without_the_secret(
        &text,
        &["tasks.crm.create_ticket.http.headers.authorization"],
    );
}
