//! The sample tasks, described once and written both as the orchestrator's
//! registry and as the worker's local allowlist, plus config files for
//! both sides.
//!
//! `crm.delete_customer` is registered with the orchestrator but missing
//! from every worker allowlist written here: it exists to prove that the
//! worker refuses what the cloud side would allow.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Environment variable the worker reads the CRM token from.
pub const TOKEN_ENV: &str = "CRM_API_TOKEN";

/// One sample task.
pub struct SampleTask {
    /// Registered name.
    pub name: &'static str,
    /// Registered version.
    pub version: &'static str,
    /// What it does.
    pub description: &'static str,
    /// JSON Schema of its inputs.
    pub input_schema: Value,
    /// HTTP method for the worker's executor.
    pub method: &'static str,
    /// Path template appended to the internal API's base URL.
    pub path: &'static str,
    /// JSON body template, if any.
    pub body: Option<Value>,
    /// Whether the worker's allowlist includes it.
    pub allowed_on_worker: bool,
}

impl SampleTask {
    /// Whether both sides declare the task idempotent: reads are, writes
    /// are not.
    pub fn idempotent(&self) -> bool {
        self.method == "GET"
    }
}

/// Every sample task.
pub fn tasks() -> Vec<SampleTask> {
    let ticket_id = json!({"type": "string", "pattern": "^T-[0-9]{1,9}$"});
    vec![
        SampleTask {
            name: "crm.create_ticket",
            version: "1",
            description: "Open a support ticket in the CRM",
            input_schema: json!({
                "type": "object",
                "required": ["title"],
                "additionalProperties": false,
                "properties": {
                    "title": {"type": "string", "minLength": 1, "maxLength": 200},
                    "priority": {"type": "integer", "minimum": 1, "maximum": 5},
                    "customer": {"type": "string", "pattern": "^C-[0-9]{1,9}$"}
                }
            }),
            method: "POST",
            path: "/tickets",
            body: Some(
                json!({"title": "{title}", "priority": "{priority}", "customer": "{customer}"}),
            ),
            allowed_on_worker: true,
        },
        SampleTask {
            name: "crm.add_comment",
            version: "1",
            description: "Add a comment to a CRM ticket",
            input_schema: json!({
                "type": "object",
                "required": ["ticket_id", "text"],
                "additionalProperties": false,
                "properties": {
                    "ticket_id": ticket_id.clone(),
                    "text": {"type": "string", "minLength": 1, "maxLength": 2000}
                }
            }),
            method: "POST",
            path: "/tickets/{ticket_id}/comments",
            body: Some(json!({"text": "{text}"})),
            allowed_on_worker: true,
        },
        SampleTask {
            name: "crm.get_ticket",
            version: "1",
            description: "Read a CRM ticket",
            input_schema: json!({
                "type": "object",
                "required": ["ticket_id"],
                "additionalProperties": false,
                "properties": {"ticket_id": ticket_id}
            }),
            method: "GET",
            path: "/tickets/{ticket_id}",
            body: None,
            allowed_on_worker: true,
        },
        SampleTask {
            name: "diag.echo",
            version: "1",
            description: "Diagnostic: the internal API echoes the request back, headers included",
            input_schema: json!({
                "type": "object",
                "required": ["message"],
                "additionalProperties": false,
                "properties": {"message": {"type": "string", "maxLength": 500}}
            }),
            method: "POST",
            path: "/echo",
            body: Some(json!({"message": "{message}"})),
            allowed_on_worker: true,
        },
        SampleTask {
            name: "diag.slow",
            version: "1",
            description: "Diagnostic: the internal API answers after a delay",
            input_schema: json!({
                "type": "object",
                "required": ["ms"],
                "additionalProperties": false,
                "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 60000}}
            }),
            method: "GET",
            path: "/slow/{ms}",
            body: None,
            allowed_on_worker: true,
        },
        SampleTask {
            name: "diag.slow_write",
            version: "1",
            description: "Diagnostic: a write the internal API takes its time over (not idempotent)",
            input_schema: json!({
                "type": "object",
                "required": ["ms"],
                "additionalProperties": false,
                "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 60000}}
            }),
            method: "POST",
            path: "/slow/{ms}",
            body: None,
            allowed_on_worker: true,
        },
        SampleTask {
            name: "crm.delete_customer",
            version: "1",
            description: "Delete a customer and all their data (registered, but no worker here allows it)",
            input_schema: json!({
                "type": "object",
                "required": ["customer"],
                "properties": {"customer": {"type": "string"}}
            }),
            method: "DELETE",
            path: "/customers/{customer}",
            body: None,
            allowed_on_worker: false,
        },
    ]
}

/// The orchestrator's registry file content (JSON).
pub fn registry_json() -> String {
    let tasks: Vec<Value> = tasks()
        .into_iter()
        .map(|t| {
            json!({
                "name": t.name,
                "version": t.version,
                "description": t.description,
                "input_schema": t.input_schema,
                "idempotent": t.idempotent(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "tasks": tasks })).expect("registry serializes")
}

/// What a worker config needs to know.
pub struct WorkerSetup<'a> {
    /// `host:port` of the orchestrator's gRPC listener.
    pub orchestrator_address: String,
    /// The name the orchestrator's certificate must carry.
    pub server_name: &'a str,
    /// Trust anchor for the orchestrator.
    pub ca_cert: &'a Path,
    /// Worker certificate chain.
    pub cert: &'a Path,
    /// Worker key.
    pub key: &'a Path,
    /// Base URL of the internal API.
    pub api_base: &'a str,
    /// Where the worker keeps its audit log.
    pub audit_log: &'a Path,
    /// Concurrency limit.
    pub max_in_flight: u32,
}

/// The worker's TOML config for the allowed sample tasks.
pub fn worker_config_toml(setup: &WorkerSetup<'_>) -> String {
    let mut out = format!(
        "# private-worker config written by the test fixtures\n\
         [orchestrator]\naddress = {addr}\nserver_name = {name}\nreconnect_initial = \"100ms\"\nreconnect_max = \"2s\"\n\n\
         [tls]\nca_cert = {ca}\ncert = {cert}\nkey = {key}\n\n\
         [worker]\nmax_in_flight = {max}\naudit_log = {audit}\ndrain_grace = \"10s\"\n",
        addr = quote(&setup.orchestrator_address),
        name = quote(setup.server_name),
        ca = quote_path(setup.ca_cert),
        cert = quote_path(setup.cert),
        key = quote_path(setup.key),
        max = setup.max_in_flight,
        audit = quote_path(setup.audit_log),
    );
    for task in tasks().into_iter().filter(|t| t.allowed_on_worker) {
        let schema = toml::Value::try_from(&task.input_schema).expect("schema is TOML-able");
        out.push_str(&format!(
            "\n[tasks.\"{name}\"]\nversion = \"{version}\"\ntimeout = \"10s\"\nidempotent = {idempotent}\ninput_schema = {schema}\n\n\
             [tasks.\"{name}\".http]\nmethod = \"{method}\"\nurl = {url}\nauth = {{ type = \"bearer\", secret = \"env://{TOKEN_ENV}\" }}\n",
            name = task.name,
            version = task.version,
            idempotent = task.idempotent(),
            method = task.method,
            url = quote(&format!("{}{}", setup.api_base, task.path)),
        ));
        if let Some(body) = &task.body {
            let body = toml::Value::try_from(body).expect("body is TOML-able");
            out.push_str(&format!("body = {body}\n"));
        }
    }
    out
}

/// What an orchestrator-mock config needs to know.
pub struct OrchestratorSetup<'a> {
    /// Trust anchor for worker certificates.
    pub ca_cert: &'a Path,
    /// Server certificate chain.
    pub cert: &'a Path,
    /// Server key.
    pub key: &'a Path,
    /// Registry file.
    pub registry: &'a Path,
    /// Data directory (results, audit).
    pub data_dir: &'a Path,
    /// Skip the orchestrator's own registry and manifest checks (tests of
    /// the worker's defenses only).
    pub insecure_skip_checks: bool,
    /// Where to capture every byte received from workers, if anywhere.
    pub wire_capture_dir: Option<PathBuf>,
}

/// The orchestrator-mock's TOML config, listening on 127.0.0.1 port 0.
pub fn orchestrator_config_toml(setup: &OrchestratorSetup<'_>) -> String {
    let mut out = format!(
        "grpc_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nregistry = {registry}\ndata_dir = {data}\n\
         heartbeat_interval = \"5s\"\ninsecure_skip_checks = {skip}\n",
        registry = quote_path(setup.registry),
        data = quote_path(setup.data_dir),
        skip = setup.insecure_skip_checks,
    );
    if let Some(dir) = &setup.wire_capture_dir {
        out.push_str(&format!("wire_capture_dir = {}\n", quote_path(dir)));
    }
    out.push_str(&format!(
        "\n[tls]\nca_cert = {}\ncert = {}\nkey = {}\n",
        quote_path(setup.ca_cert),
        quote_path(setup.cert),
        quote_path(setup.key)
    ));
    out
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// `config` (a worker config from [`worker_config_toml`]) without the task
/// `name`: its table and sub-tables. For a deliberately broken worker.
///
/// # Panics
/// When the config has no such task.
pub fn without_task(config: &str, name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::without_task;

    #[test]
    fn without_task_drops_the_task_and_its_sub_tables_only() {
        let config = "[worker]\n\n[tasks.\"a\"]\nx = 1\n\n[tasks.\"a\".http]\ny = 2\n\n[tasks.\"b\"]\nz = 3\n";
        assert_eq!(
            without_task(config, "a"),
            "[worker]\n\n[tasks.\"b\"]\nz = 3\n"
        );
        assert_eq!(
            without_task(config, "b"),
            "[worker]\n\n[tasks.\"a\"]\nx = 1\n\n[tasks.\"a\".http]\ny = 2\n"
        );
    }
}
