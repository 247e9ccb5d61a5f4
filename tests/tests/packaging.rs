//! The service packaging (issue 10, items 4 and 5): the systemd unit, the
//! Debian package, the example config and the Azure cloud-init file.
//!
//! - The unit in `packaging/` passes `systemd-analyze verify` and
//!   `systemd-analyze security --offline=true` rates it as README says.
//! - The `.deb` installs with `dpkg -i` on this machine (for real: root,
//!   the machine's own dpkg database), puts the binary, the unit, the man
//!   page and the examples in place, enables the unit without starting it,
//!   and is purged again at the end. `.ci/run` builds the package with
//!   `packaging/build-deb.sh --debug` and names it in `PRIVATE_WORKER_DEB`;
//!   run locally, the test builds it the same way when the variable is not
//!   set (needs cargo-deb and help2man), and needs root.
//! - The example config and the config that `packaging/cloud-init.yaml`
//!   writes pass `private-worker --check`, with their absolute service paths
//!   mapped into a temp dir, fresh certificates from the certs-tool library,
//!   and (cloud-init) the fake Key Vault standing in for Azure: nothing
//!   leaves the machine.
//!
//! What this does not prove: that the sandbox lets the worker run. There is
//! no systemd as PID 1 here, so the unit is checked, not started; README
//! ("Installing as a service") says how its settings were chosen.
//!
//! Needs `systemd-analyze` (Debian: `systemd`), `dpkg`, and python3 with
//! PyYAML; each test fails naming what is missing and how to install it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use private_worker_tests::fake_vault::{FakeVault, FakeVaultOptions, TestCa};
use private_worker_tests::pki::{ORCHESTRATOR_NAME, Pki};
use private_worker_tests::procs::binary;

/// The unit as kept in the repository.
const UNIT: &str = "packaging/private-worker.service";
/// The example config the package installs.
const EXAMPLE_CONFIG: &str = "packaging/worker.toml";
/// The Azure first-boot file.
const CLOUD_INIT: &str = "packaging/cloud-init.yaml";
/// The Azure guide, whose `sed` command fills the cloud-init placeholders.
const GUIDE: &str = "docs/azure-vm.md";
/// Environment variable naming the `.deb` to install (set by `.ci/run`).
const DEB_ENV: &str = "PRIVATE_WORKER_DEB";
/// The placeholders of the cloud-init file, each filled in by the guide.
const PLACEHOLDERS: [&str; 4] = [
    "@DEB_URL@",
    "@ORCHESTRATOR_ADDRESS@",
    "@ORCHESTRATOR_NAME@",
    "@VAULT@",
];
/// Where the service's paths are in the configs, and the sub-directory of a
/// test's temp dir each is mapped to.
const SERVICE_PATHS: [(&str, &str); 3] = [
    ("/etc/private-worker/", "etc"),
    ("/run/credentials/private-worker.service/", "credentials"),
    ("/var/lib/private-worker/", "state"),
];
/// The vault host of the fake Key Vault.
const FAKE_VAULT: &str = "myvault.vault.test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Runs `program` with `args`; fails the test naming the Debian package to
/// install when the program is missing.
fn run(program: &str, args: &[&str], install: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): install it with `{install}`"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const INSTALL_SYSTEMD: &str = "apt-get install -y --no-install-recommends systemd";
const INSTALL_DPKG: &str = "apt-get install -y dpkg";
const INSTALL_PYYAML: &str = "python3 -m pip install pyyaml";

/// The repository's unit with `ExecStart=` pointing at the built binary
/// (verify needs the program to exist), written into `dir` under its own
/// name (verify and security take the unit name from the file name).
fn unit_for_built_binary(dir: &Path) -> PathBuf {
    let worker = binary("private-worker");
    let unit = read_repo_file(UNIT);
    assert!(
        unit.contains("ExecStart=/usr/bin/private-worker "),
        "{UNIT}: ExecStart= no longer runs /usr/bin/private-worker"
    );
    let path = dir.join("private-worker.service");
    std::fs::write(
        &path,
        unit.replace(
            "ExecStart=/usr/bin/private-worker ",
            &format!("ExecStart={} ", worker.display()),
        ),
    )
    .unwrap();
    path
}

/// `systemd-analyze verify` on `unit`; fails the test with its output.
fn assert_verify_passes(unit: &Path, man: bool) {
    let out = run(
        "systemd-analyze",
        &[
            "verify",
            if man { "--man=yes" } else { "--man=no" },
            unit.to_str().unwrap(),
        ],
        INSTALL_SYSTEMD,
    );
    let said = text(&out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {} failed or warned:\n{said}",
        unit.display()
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_built_binary(dir.path());
    assert_verify_passes(&unit, false);
}

#[test]
fn systemd_analyze_security_rates_the_unit_ok_or_better_with_the_score_readme_gives() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_built_binary(dir.path());
    let out = run(
        "systemd-analyze",
        &["security", "--offline=true", unit.to_str().unwrap()],
        INSTALL_SYSTEMD,
    );
    let said = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze security failed:\n{said}"
    );
    let marker = "Overall exposure level for private-worker.service: ";
    let verdict = said
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{said}"));
    // "1.1 OK 🙂": the figure and the rating.
    let mut words = verdict.split_whitespace();
    let exposure: f64 = words.next().unwrap().parse().unwrap();
    let rating = words.next().expect("a rating after the figure");
    assert!(
        ["PERFECT", "SAFE", "OK"].contains(&rating),
        "the unit is rated {rating} ({exposure}); the goal is OK or better:\n{said}"
    );
    let readme = read_repo_file("README.md");
    let figure = format!("{exposure:.1} {rating}");
    assert!(
        readme.contains(&format!("exposure level {figure}")),
        "README must give the unit's score as \"exposure level {figure}\" (what systemd-analyze security says now)"
    );
}

/// The `.deb` to install: `$PRIVATE_WORKER_DEB`, or (outside CI) one built
/// now with `packaging/build-deb.sh --debug`.
fn deb_path() -> PathBuf {
    if let Some(path) = std::env::var_os(DEB_ENV) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{DEB_ENV}={} is not a file", path.display());
        return path;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{DEB_ENV} is not set: .ci/run builds the package with packaging/build-deb.sh --debug and names it there"
    );
    let out = Command::new(repo_root().join("packaging/build-deb.sh"))
        .arg("--debug")
        .output()
        .expect("run packaging/build-deb.sh");
    assert!(
        out.status.success(),
        "packaging/build-deb.sh --debug failed (to use a package you built, set {DEB_ENV}):\n{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the .deb")
            .trim(),
    )
}

fn require_root() {
    let out = run("id", &["-u"], "apt-get install -y coreutils");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "dpkg -i needs root: run this test as root (CI does), e.g. `sudo -E cargo test -p private-worker-tests --test packaging`"
    );
}

/// Purges the package when dropped, so a failed assertion does not leave it
/// installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "private-worker"])
            .output();
    }
}

#[test]
fn the_deb_installs_with_dpkg_and_puts_binary_unit_man_page_and_examples_in_place() {
    require_root();
    let deb = deb_path();
    let fields = run(
        "dpkg-deb",
        &[
            "--field",
            deb.to_str().unwrap(),
            "Package",
            "Version",
            "Depends",
        ],
        INSTALL_DPKG,
    );
    let fields = text(&fields);
    assert!(fields.contains("Package: private-worker"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );
    assert!(
        fields.contains("libc6"),
        "Depends should name libc6: {fields}"
    );

    let install = run("dpkg", &["-i", deb.to_str().unwrap()], INSTALL_DPKG);
    let _installed = Installed;
    assert!(
        install.status.success(),
        "dpkg -i {} failed:\n{}",
        deb.display(),
        text(&install)
    );

    let listed = text(&run("dpkg", &["-L", "private-worker"], INSTALL_DPKG));
    let listed: BTreeSet<&str> = listed.lines().collect();
    let unit = [
        "/lib/systemd/system/private-worker.service",
        "/usr/lib/systemd/system/private-worker.service",
    ]
    .into_iter()
    .find(|p| listed.contains(p))
    .unwrap_or_else(|| panic!("dpkg -L lists no unit: {listed:?}"));
    for file in [
        "/usr/bin/private-worker",
        "/usr/share/man/man1/private-worker.1.gz",
        "/usr/share/doc/private-worker/examples/worker.toml",
        "/usr/share/doc/private-worker/examples/cloud-init.yaml",
        "/usr/share/doc/private-worker/README.md",
        "/usr/share/doc/private-worker/azure-vm.md",
    ] {
        assert!(
            listed.contains(file),
            "dpkg -L does not list {file}: {listed:?}"
        );
        assert!(Path::new(file).is_file(), "{file} is listed but not there");
    }

    let version = run("/usr/bin/private-worker", &["--version"], INSTALL_DPKG);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("private-worker {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        std::fs::read_to_string(unit).unwrap(),
        read_repo_file(UNIT),
        "the installed unit differs from {UNIT}"
    );
    // The installed unit as it is: /usr/bin/private-worker exists now.
    assert_verify_passes(Path::new(unit), false);

    let man = run(
        "gzip",
        &["-dc", "/usr/share/man/man1/private-worker.1.gz"],
        "apt-get install -y gzip",
    );
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.contains(".TH PRIVATE-WORKER \"1\"") && man.contains("verify\\-audit"),
        "the man page is not private-worker --help rendered by help2man:\n{man}"
    );

    // Enabled (it starts at boot once a config exists), not started: there
    // is no config, and postinst starts nothing on a fresh install.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/private-worker.service");
    assert!(
        wants.is_symlink(),
        "postinst did not enable the unit ({} missing)",
        wants.display()
    );
    assert!(
        !Path::new("/etc/private-worker/worker.toml").exists(),
        "the package must not write a config of its own"
    );

    drop(_installed);
    assert!(
        !Path::new("/usr/bin/private-worker").exists(),
        "dpkg --purge left /usr/bin/private-worker behind"
    );
    assert!(!wants.exists(), "dpkg --purge left the unit enabled");
}

/// Rewrites the service's absolute paths in `config` into `dir` (one
/// sub-directory per service path, created).
fn map_service_paths(config: &str, dir: &Path) -> String {
    let mut mapped = config.to_string();
    for (service_path, sub) in SERVICE_PATHS {
        let local = dir.join(sub);
        std::fs::create_dir_all(&local).unwrap();
        mapped = mapped.replace(service_path, &format!("{}/", local.display()));
    }
    mapped
}

/// Fresh certificates where the configs expect them: CA and worker
/// certificate in `etc/`, the key in `credentials/`.
fn place_certificates(dir: &Path) {
    let pki = Pki::create(&dir.join("pki"), "packaging-test");
    std::fs::copy(&pki.ca_cert, dir.join("etc/ca.pem")).unwrap();
    std::fs::copy(&pki.worker_cert, dir.join("etc/worker.pem")).unwrap();
    std::fs::copy(&pki.worker_key, dir.join("credentials/worker.key")).unwrap();
}

fn check_output(out: &Output, what: &str) -> String {
    let said = text(out);
    assert!(
        out.status.success() && said.contains("all checks passed"),
        "private-worker --check refused {what}:\n{said}"
    );
    said
}

#[test]
fn the_example_config_passes_check_with_its_credentials_where_systemd_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = map_service_paths(&read_repo_file(EXAMPLE_CONFIG), dir.path());
    assert!(
        !config.contains("/etc/private-worker/") && !config.contains("/var/lib/private-worker"),
        "a service path was not mapped:\n{config}"
    );
    place_certificates(dir.path());
    std::fs::write(dir.path().join("credentials/crm-api-token"), "test-token").unwrap();
    let path = dir.path().join("etc/worker.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(binary("private-worker"))
        .args(["--config", path.to_str().unwrap(), "--check"])
        .env("CREDENTIALS_DIRECTORY", dir.path().join("credentials"))
        .output()
        .unwrap();
    let said = check_output(&out, EXAMPLE_CONFIG);
    assert!(
        said.contains("secret file://crm-api-token: resolved"),
        "the task's credential was not read from the credentials directory:\n{said}"
    );
}

/// `packaging/cloud-init.yaml` parsed by PyYAML, as JSON.
fn cloud_init_as_json() -> serde_json::Value {
    let script = "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    let path = repo_root().join(CLOUD_INIT);
    let out = Command::new("python3")
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3 and `{INSTALL_PYYAML}`")
        });
    assert!(
        out.status.success(),
        "{CLOUD_INIT} did not parse as YAML (or PyYAML is missing: `{INSTALL_PYYAML}`):\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// The `content` of the `write_files` entry for `path`.
fn written_file<'a>(cloud_init: &'a serde_json::Value, path: &str) -> &'a str {
    cloud_init["write_files"]
        .as_array()
        .expect("write_files is a list")
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{CLOUD_INIT} writes no {path}"))["content"]
        .as_str()
        .expect("content is a string")
}

#[test]
fn the_cloud_init_file_parses_and_its_bootstrap_writes_what_the_unit_and_config_read() {
    let raw = read_repo_file(CLOUD_INIT);
    assert!(
        raw.starts_with("#cloud-config\n"),
        "{CLOUD_INIT} must start with #cloud-config"
    );
    let cloud_init = cloud_init_as_json();
    let bootstrap = written_file(&cloud_init, "/usr/local/sbin/private-worker-bootstrap");
    let runcmd = cloud_init["runcmd"].to_string();
    assert!(
        runcmd.contains("/usr/local/sbin/private-worker-bootstrap"),
        "runcmd does not run the bootstrap: {runcmd}"
    );
    let syntax = Command::new("sh")
        .args(["-n", "-c", bootstrap])
        .output()
        .expect("run sh");
    assert!(
        syntax.status.success(),
        "the bootstrap script is not valid sh:\n{}",
        text(&syntax)
    );
    // The key goes where the unit's LoadCredential= reads it, and the
    // certificates where the config says.
    let unit = read_repo_file(UNIT);
    assert!(unit.contains("LoadCredential=worker.key:/etc/private-worker/credentials/worker.key"));
    for file in [
        "/etc/private-worker/credentials/worker.key",
        "/etc/private-worker/worker.pem",
        "/etc/private-worker/ca.pem",
    ] {
        assert!(
            bootstrap.contains(file),
            "the bootstrap does not write {file}"
        );
    }
    assert!(
        bootstrap.contains("dpkg -i"),
        "the bootstrap does not install the package"
    );
    assert!(
        bootstrap.contains("systemctl --no-block restart private-worker.service"),
        "the bootstrap does not start the service without waiting for it"
    );

    // Every placeholder is one the guide's sed command fills in.
    let found: BTreeSet<&str> = raw
        .match_indices('@')
        .filter_map(|(i, _)| {
            let rest = &raw[i + 1..];
            let end = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_'))?;
            (end > 0 && rest[end..].starts_with('@')).then(|| &raw[i..i + end + 2])
        })
        .collect();
    assert_eq!(
        found,
        PLACEHOLDERS.into_iter().collect(),
        "placeholders in {CLOUD_INIT}"
    );
    let guide = read_repo_file(GUIDE);
    for placeholder in PLACEHOLDERS {
        assert!(
            guide.contains(&format!("-e \"s|{placeholder}|")),
            "{GUIDE}'s sed command does not fill in {placeholder}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_cloud_init_writes_passes_check_against_a_fake_key_vault() {
    let cloud_init = cloud_init_as_json();
    let config = written_file(&cloud_init, "/etc/private-worker/worker.toml");

    let ca = TestCa::new("fake key vault CA");
    let vault = FakeVault::start(&ca, FakeVaultOptions::default()).await;
    vault.set_secret("crm-api-token", "a-token-from-the-vault");

    let dir = tempfile::tempdir().unwrap();
    // What the guide tells the reader to fill in, with test values.
    let config = config
        .replace("@VAULT@", FAKE_VAULT)
        .replace(
            "@ORCHESTRATOR_ADDRESS@",
            &format!("{ORCHESTRATOR_NAME}:7443"),
        )
        .replace("@ORCHESTRATOR_NAME@", ORCHESTRATOR_NAME);
    let mut config = map_service_paths(&config, dir.path());
    place_certificates(dir.path());
    // Test-only [keyvault] settings: trust the fake's CA and pin its hosts.
    let ca_path = dir.path().join("vault-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let resolve = vault
        .resolve_overrides()
        .iter()
        .map(|(host, addr)| format!("\"{host}\" = \"{addr}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let header = "[keyvault]\n";
    let at = config
        .find(header)
        .expect("the config has a [keyvault] section")
        + header.len();
    config.insert_str(
        at,
        &format!(
            "ca_cert = {}\nresolve = {{ {resolve} }}\n",
            toml::Value::String(ca_path.display().to_string())
        ),
    );
    let path = dir.path().join("etc/worker.toml");
    std::fs::write(&path, &config).unwrap();

    // The managed identity's token endpoint: the fake's (App Service form;
    // on the VM it is IMDS).
    let out = tokio::process::Command::new(binary("private-worker"))
        .args(["--config", path.to_str().unwrap(), "--check"])
        .env("IDENTITY_ENDPOINT", "https://login.test/msi/token")
        .env("IDENTITY_HEADER", &vault.options().identity_header)
        .output()
        .await
        .unwrap();
    let said = check_output(&out, "the config written by cloud-init");
    assert!(
        said.contains(&format!(
            "secret keyvault://{FAKE_VAULT}/crm-api-token: resolved"
        )),
        "the task's credential was not read from the vault:\n{said}"
    );
    assert!(
        vault.token_requests() > 0,
        "no token was asked of the identity endpoint"
    );
}
