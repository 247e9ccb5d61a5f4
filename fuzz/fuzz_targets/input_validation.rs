//! The worker's local input check: `task::Allowlist::check` with a fixed
//! config whose schemas use `format` assertions (uuid, date-time, email,
//! ipv4, uri), nested objects, arrays, patterns and bounds, fed arbitrary
//! `inputs_json` (and a task name and version from a small set).
//!
//! Properties: nothing panics; inputs it accepts are a JSON object, and
//! what the schema promises holds for them where it is easy to re-check
//! independently: `ticket.id` is a UUID, `title` is at most 40 characters,
//! no member outside the schema (`additionalProperties: false`).
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use private_worker::config::Config;
use private_worker::session::wire;
use private_worker::task::Allowlist;
use private_worker_proto::v1 as pb;

const CONFIG: &str = r#"
[orchestrator]
address = "127.0.0.1:1"
server_name = "orchestrator.internal"

[tls]
ca_cert = "ca.pem"
cert = "worker.pem"
key = "worker.key"

[tasks."crm.update_ticket"]
version = "3"
[tasks."crm.update_ticket".http]
method = "PATCH"
url = "https://crm.internal/tickets/{id}"
[tasks."crm.update_ticket".input_schema]
type = "object"
required = ["ticket", "title"]
additionalProperties = false
[tasks."crm.update_ticket".input_schema.properties.title]
type = "string"
minLength = 1
maxLength = 40
[tasks."crm.update_ticket".input_schema.properties.when]
type = "string"
format = "date-time"
[tasks."crm.update_ticket".input_schema.properties.reporter]
type = "string"
format = "email"
[tasks."crm.update_ticket".input_schema.properties.tags]
type = "array"
maxItems = 5
uniqueItems = true
items = { type = "string", pattern = "^[a-z][a-z0-9-]{0,15}$" }
[tasks."crm.update_ticket".input_schema.properties.ticket]
type = "object"
required = ["id"]
additionalProperties = false
[tasks."crm.update_ticket".input_schema.properties.ticket.properties.id]
type = "string"
format = "uuid"
[tasks."crm.update_ticket".input_schema.properties.ticket.properties.priority]
type = "integer"
minimum = 1
maximum = 5
[tasks."crm.update_ticket".input_schema.properties.ticket.properties.origin]
type = "object"
additionalProperties = false
properties = { ip = { type = "string", format = "ipv4" }, link = { type = "string", format = "uri" } }

[tasks."erp.lookup"]
version = "1"
[tasks."erp.lookup".http]
method = "GET"
url = "https://erp.internal/items/{sku}"
[tasks."erp.lookup".input_schema]
type = "object"
required = ["sku"]
properties = { sku = { type = "string", pattern = "^[A-Z]{3}-[0-9]{4}$" }, depth = { type = "number", exclusiveMinimum = 0, multipleOf = 0.5 } }
"#;

static ALLOWLIST: LazyLock<Allowlist> = LazyLock::new(|| {
    let config = Config::from_toml_str(CONFIG, Path::new("/")).expect("the fuzz config is valid");
    Allowlist::new(&config).expect("the fuzz schemas compile")
});

const TASKS: [(&str, &str); 4] = [
    ("crm.update_ticket", "3"),
    ("erp.lookup", "1"),
    ("crm.update_ticket", "2"),
    ("crm.delete_all", "1"),
];

#[derive(Arbitrary, Debug)]
struct Case<'a> {
    task: u8,
    inputs_json: &'a str,
}

fuzz_target!(|case: Case| {
    let (name, version) = TASKS[usize::from(case.task) % TASKS.len()];
    // Through the worker's own conversion from the wire, as the session does.
    let assignment = wire::assignment(pb::Assignment {
        task_id: "t-1".into(),
        attempt: 1,
        plan_id: "p-1".into(),
        task_name: name.into(),
        task_version: version.into(),
        inputs_json: case.inputs_json.into(),
        ..Default::default()
    })
    .expect("the ids are within the contract");
    let Ok((task, inputs)) = ALLOWLIST.check(&assignment) else {
        return;
    };
    assert_eq!(task.config.name, name);
    assert_eq!(task.config.version, version);
    if name != "crm.update_ticket" {
        return;
    }
    for key in inputs.keys() {
        assert!(
            ["title", "when", "reporter", "tags", "ticket"].contains(&key.as_str()),
            "member {key:?} got past additionalProperties: false"
        );
    }
    let title = inputs["title"].as_str().expect("title is a string");
    assert!((1..=40).contains(&title.chars().count()), "{title:?}");
    let id = inputs["ticket"]["id"]
        .as_str()
        .expect("ticket.id is a string");
    assert!(
        id.len() == 36 && uuid::Uuid::try_parse(id).is_ok(),
        "ticket.id {id:?} passed format: uuid"
    );
});
