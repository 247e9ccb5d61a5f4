//! The agent's side: orchestrator-mock's MCP server at `/mcp`, driven by an
//! MCP client no one here wrote (the official MCP Python SDK, through
//! `tests/mcp_client/agent.py`), with the registry's approval policies and
//! a worker that checks every approval's signature.
//!
//! The world: the sample registry with `crm.create_ticket` left to a
//! person (`human`, the default), `crm.get_ticket` read-only and `auto`
//! (at most [`AUTO_LIMIT`] auto-approved calls per hour per token),
//! `crm.add_comment` denied; an orchestrator that trusts a person's
//! approver key and its own auto-approver key; and a worker that trusts
//! both, the auto-approver's only for `crm.get_ticket`, and requires a
//! signed approval for every task.
//!
//! Needs python3 with the package of `tests/mcp_client/requirements.txt`
//! (`.ci/run` installs it); without it every test here fails and says
//! what to install.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use common::{Env, Options, WAIT};
use orchestrator_mock::api::{ApproveRequest, PlanStatus, PlanView, StepStatus};
use orchestrator_mock::config::AutoApproverConfig;
use orchestrator_mock::tokens::Role;
use private_worker_proto::approval::KeyFileSigner;
use private_worker_tests::catalog;
use private_worker_tests::mcp_client;
use private_worker_tests::procs::Process;
use serde_json::{Value, json};

/// The person's approver key id.
const HUMAN: &str = "approver-alice";
/// The orchestrator's auto-approver key id.
const AUTO: &str = "auto-readonly";
/// The pool both approvers sign for, which the worker accepts.
const POOL: &str = "pool:crm";
/// `crm.get_ticket`'s `auto_limit_per_hour`.
const AUTO_LIMIT: u64 = 2;
/// `[mcp] call_wait` here: short, so a pending call answers quickly.
const CALL_WAIT: Duration = Duration::from_secs(2);

/// One test's world: the env, its worker, the signers and the agent's
/// token and endpoint.
struct World {
    env: Env,
    _worker: Process,
    _keys: tempfile::TempDir,
    human: KeyFileSigner,
    auto: KeyFileSigner,
    /// A token with the `submit` role only, as an agent holds.
    agent_token: String,
    url: String,
}

/// The sample registry with the approval policies of this file.
fn registry_with_policies() -> String {
    let mut registry: Value = serde_json::from_str(&catalog::registry_json()).unwrap();
    for task in registry["tasks"].as_array_mut().unwrap() {
        match task["name"].as_str().unwrap() {
            "crm.get_ticket" => {
                task["read_only"] = json!(true);
                task["approval"] = json!("auto");
                task["auto_limit_per_hour"] = json!(AUTO_LIMIT);
            }
            "crm.add_comment" => task["approval"] = json!("deny"),
            "crm.delete_customer" => task["destructive"] = json!(true),
            _ => {}
        }
    }
    serde_json::to_string_pretty(&registry).unwrap()
}

async fn world() -> World {
    mcp_client::require();
    let keys = tempfile::tempdir().unwrap();
    let (human_key, human_pub) =
        certs_tool::approver::write_approver_key(keys.path(), HUMAN).unwrap();
    let (auto_key, auto_pub) = certs_tool::approver::write_approver_key(keys.path(), AUTO).unwrap();
    let auto_private: PathBuf = auto_key.clone();
    let env = Env::start(Options {
        approval_keys: vec![
            (HUMAN.into(), human_pub.clone()),
            (AUTO.into(), auto_pub.clone()),
        ],
        edit_config: Some(Box::new(move |config| {
            std::fs::write(&config.registry, registry_with_policies()).unwrap();
            config.approvals.auto_approver = Some(AutoApproverConfig {
                key_id: AUTO.into(),
                private_key: auto_private,
                audience: POOL.into(),
                valid_for: Duration::from_secs(600),
            });
            config.mcp.call_wait = CALL_WAIT;
        })),
        ..Options::default()
    })
    .await;
    let config = env.write_worker_config_with(&format!(
        "[approvals]\nkeys = [{{ id = \"{HUMAN}\", public_key = {:?} }}, {{ id = \"{AUTO}\", public_key = {:?}, tasks = [\"crm.get_ticket\"] }}]\naudiences = [\"{POOL}\"]\nmax_validity = \"1h\"\n",
            human_pub.display().to_string(),
            auto_pub.display().to_string(),
    ));
    let worker = env.start_worker_with(&config, "worker");
    env.wait_connected(&env.pki.worker_identity).await;
    let orchestrator = env.orchestrator.as_ref().unwrap();
    let agent_token = orchestrator
        .tokens()
        .issue("agent-1", &[Role::Submit])
        .unwrap();
    let url = format!("{}/mcp", orchestrator.admin_url());
    let signer = |id: &str, path: &PathBuf| {
        KeyFileSigner::from_pem(id, &std::fs::read(path).unwrap()).unwrap()
    };
    World {
        human: signer(HUMAN, &human_key),
        auto: signer(AUTO, &auto_key),
        env,
        _worker: worker,
        _keys: keys,
        agent_token,
        url,
    }
}

impl World {
    /// One tool call by the agent: `{isError, text, structuredContent}`.
    async fn call(&self, tool: &str, arguments: Value) -> Value {
        mcp_client::run(
            &self.url,
            Some(&self.agent_token),
            &["call", tool, &arguments.to_string()],
        )
        .await
    }

    /// Asks `get_plan_result` until the plan is finished.
    async fn result_of(&self, plan_id: &str) -> Value {
        let start = Instant::now();
        loop {
            let answer = self
                .call("get_plan_result", json!({"plan_id": plan_id}))
                .await;
            let status = answer["structuredContent"]["status"].as_str().unwrap_or("");
            if !matches!(status, "pending_approval" | "approved" | "running") {
                return answer;
            }
            assert!(
                start.elapsed() < WAIT,
                "plan {plan_id} did not finish: {answer:#}"
            );
        }
    }

    /// Approves `plan` as the person would: every step signed with the
    /// person's key, through the admin API's approve call.
    async fn approve_as(&self, signer: &KeyFileSigner, plan: &PlanView) {
        let approvals = orchestrator_mock::approvals::sign_plan(
            signer,
            plan,
            POOL,
            SystemTime::now(),
            Duration::from_secs(600),
        )
        .unwrap();
        self.env
            .admin
            .approve_with(&plan.id, &ApproveRequest { approvals })
            .await
            .unwrap();
    }

    /// Requests the internal API received on `path`.
    fn requests_to(&self, path: &str) -> usize {
        common::requests_to(&self.env.api, path)
    }
}

fn tool<'a>(tools: &'a Value, name: &str) -> &'a Value {
    tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name} in {tools:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_lists_each_task_as_a_tool_with_its_schema_description_and_annotations() {
    let w = world().await;
    let tools = mcp_client::run(&w.url, Some(&w.agent_token), &["list"]).await;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "crm.create_ticket",
        "crm.get_ticket",
        "crm.delete_customer",
        "diag.echo",
        "submit_plan",
        "get_plan_result",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    assert!(
        !names.contains(&"crm.add_comment"),
        "a denied task is not offered: {names:?}"
    );

    let samples = catalog::tasks();
    let sample = |name: &str| samples.iter().find(|t| t.name == name).unwrap();
    let create = tool(&tools, "crm.create_ticket");
    assert_eq!(
        create["inputSchema"],
        sample("crm.create_ticket").input_schema
    );
    let description = create["description"].as_str().unwrap();
    assert!(
        description.starts_with(sample("crm.create_ticket").description),
        "{description}"
    );
    assert!(
        description.contains("a person approves each call"),
        "{description}"
    );
    assert_eq!(
        create["annotations"],
        json!({"readOnlyHint": false, "destructiveHint": true, "idempotentHint": false})
    );
    let get = tool(&tools, "crm.get_ticket");
    assert_eq!(get["inputSchema"], sample("crm.get_ticket").input_schema);
    assert_eq!(
        get["annotations"],
        json!({"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true})
    );
    assert_eq!(
        tool(&tools, "get_plan_result")["inputSchema"]["required"],
        json!(["plan_id"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_the_token_or_with_a_token_lacking_the_submit_role_is_refused() {
    let w = world().await;
    let refused = mcp_client::run(&w.url, None, &["refused"]).await;
    assert_eq!(refused["refused"], true, "{refused:#}");
    assert_eq!(refused["http_statuses"], json!([401]), "{refused:#}");

    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    let http = reqwest::Client::new();
    let post = |token: Option<String>| {
        let mut request = http
            .post(&w.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(initialize.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let none = post(None).await.unwrap();
    assert_eq!(none.status(), 401);
    assert!(
        none.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
        "{:?}",
        none.headers()
    );
    let reader = w
        .env
        .orchestrator
        .as_ref()
        .unwrap()
        .tokens()
        .issue("dashboard", &[Role::Read])
        .unwrap();
    let forbidden = post(Some(reader)).await.unwrap();
    assert_eq!(forbidden.status(), 403);
    let body: Value = forbidden.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("needs `submit`"),
        "{body}"
    );
    let ok = post(Some(w.agent_token.clone())).await.unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    assert!(w.env.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_task_answers_pending_approval_and_after_a_signed_approval_its_result() {
    let w = world().await;
    let answer = w
        .call(
            "crm.create_ticket",
            json!({"title": "printer on fire", "priority": 2}),
        )
        .await;
    assert_eq!(answer["isError"], false, "{answer:#}");
    let content = &answer["structuredContent"];
    assert_eq!(content["status"], "pending_approval", "{answer:#}");
    let plan_id = content["plan_id"].as_str().unwrap().to_string();
    assert!(
        answer["text"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("pending approval: plan {plan_id}")),
        "{answer:#}"
    );
    assert_eq!(w.requests_to("/tickets"), 0, "nothing ran before approval");

    // The person reviews the plan the agent proposed and signs it.
    let plan = w.env.admin.plan(&plan_id).await.unwrap();
    assert_eq!(plan.status, PlanStatus::PendingApproval);
    assert_eq!(plan.submitted_by.as_deref(), Some("agent-1"), "{plan:#?}");
    assert_eq!(
        plan.steps[0].inputs,
        json!({"title": "printer on fire", "priority": 2})
    );
    w.approve_as(&w.human, &plan).await;

    let result = w.result_of(&plan_id).await;
    assert_eq!(result["isError"], false, "{result:#}");
    let content = &result["structuredContent"];
    assert_eq!(content["status"], "succeeded", "{result:#}");
    let step = &content["steps"][0];
    assert_eq!(step["approved_by"], HUMAN, "{result:#}");
    let ticket_id = step["output"]["body"]["id"]
        .as_str()
        .or_else(|| step["output"]["id"].as_str())
        .unwrap_or_else(|| panic!("a ticket id in the output: {result:#}"));
    assert!(ticket_id.starts_with("T-"), "{result:#}");
    assert_eq!(w.requests_to("/tickets"), 1);
    // The worker requires a signed approval for every task, and checked
    // the person's.
    let log = std::fs::read_to_string(w.env.path("worker.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("signed approval verified") && l.contains(HUMAN)),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_task_runs_without_a_person_signed_by_the_auto_approver_and_verified_by_the_worker()
{
    let w = world().await;
    // A ticket to read, approved by the person.
    let created = w
        .call("crm.create_ticket", json!({"title": "to read"}))
        .await;
    let plan = w
        .env
        .admin
        .plan(created["structuredContent"]["plan_id"].as_str().unwrap())
        .await
        .unwrap();
    w.approve_as(&w.human, &plan).await;
    let done = w.env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap();
    assert_eq!(done.status, PlanStatus::Succeeded, "{done:#?}");
    let output = done.steps[0].output.clone().unwrap();
    let ticket_id = output["body"]["id"]
        .as_str()
        .or_else(|| output["id"].as_str())
        .unwrap()
        .to_string();

    // The read-only task: no person involved.
    let answer = w
        .call("crm.get_ticket", json!({"ticket_id": ticket_id}))
        .await;
    let plan_id = answer["structuredContent"]["plan_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        answer["structuredContent"]["status"], "pending_approval",
        "{answer:#}"
    );
    let result = w.result_of(&plan_id).await;
    assert_eq!(result["isError"], false, "{result:#}");
    assert_eq!(
        result["structuredContent"]["status"], "succeeded",
        "{result:#}"
    );
    let step = &result["structuredContent"]["steps"][0];
    assert_eq!(step["approved_by"], format!("auto:{AUTO}"), "{result:#}");
    assert!(step["output"].to_string().contains("to read"), "{result:#}");
    assert_eq!(w.requests_to(&format!("/tickets/{ticket_id}")), 1);

    // The worker (which requires a signed approval for every task) checked
    // the auto-approver's signature like a person's.
    let log = std::fs::read_to_string(w.env.path("worker.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("signed approval verified") && l.contains(AUTO)),
        "{log}"
    );

    // Over the hourly limit of this token, the same call waits for a person.
    for _ in 1..AUTO_LIMIT {
        let again = w
            .call("crm.get_ticket", json!({"ticket_id": ticket_id}))
            .await;
        assert_ne!(
            again["structuredContent"]["status"], "pending_approval",
            "{again:#}"
        );
    }
    let over = w
        .call("crm.get_ticket", json!({"ticket_id": ticket_id}))
        .await;
    assert_eq!(
        over["structuredContent"]["status"], "pending_approval",
        "{over:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_a_tool_error_naming_the_task_and_the_json_path_and_nothing_is_stored() {
    let w = world().await;
    let answer = w
        .call("crm.create_ticket", json!({"title": "", "priority": 9}))
        .await;
    assert_eq!(answer["isError"], true, "{answer:#}");
    let content = &answer["structuredContent"];
    assert_eq!(content["error"], "plan_invalid", "{answer:#}");
    let paths: Vec<&str> = content["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/title") && paths.contains(&"/priority"),
        "{paths:?}"
    );
    let text = answer["text"][0].as_str().unwrap();
    assert!(
        text.contains("step 0 (crm.create_ticket) at /priority"),
        "{text}"
    );

    let answer = w
        .call(
            "submit_plan",
            json!({"steps": [
                {"task": "crm.create_ticket", "inputs": {"title": "fine"}},
                {"task": "crm.create_ticket", "inputs": {"title": "x", "customer": 7}}
            ]}),
        )
        .await;
    assert_eq!(answer["isError"], true, "{answer:#}");
    let problem = &answer["structuredContent"]["problems"][0];
    assert_eq!(
        (
            problem["step"].clone(),
            problem["task"].clone(),
            problem["path"].clone()
        ),
        (json!(1), json!("crm.create_ticket"), json!("/customer")),
        "{answer:#}"
    );
    let answer = w.call("submit_plan", json!({"stepz": []})).await;
    assert_eq!(answer["isError"], true, "{answer:#}");
    assert!(
        answer["text"][0].as_str().unwrap().contains("stepz"),
        "{answer:#}"
    );
    assert!(w.env.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_task_never_runs_whoever_asks_and_however() {
    let w = world().await;
    let comment = json!({"ticket_id": "T-1", "text": "hello"});
    let by_name = w.call("crm.add_comment", comment.clone()).await;
    assert_eq!(by_name["isError"], true, "{by_name:#}");
    assert_eq!(by_name["structuredContent"]["error"], "plan_denied");
    let in_plan = w
        .call(
            "submit_plan",
            json!({"steps": [
                {"task": "crm.get_ticket", "inputs": {"ticket_id": "T-1"}},
                {"task": "crm.add_comment", "inputs": comment}
            ]}),
        )
        .await;
    assert_eq!(in_plan["isError"], true, "{in_plan:#}");
    assert_eq!(in_plan["structuredContent"]["error"], "plan_denied");
    assert_eq!(in_plan["structuredContent"]["problems"][0]["step"], 1);
    // Through the admin API too, with every role.
    let err = w
        .env
        .admin
        .submit_plan(&common::plan_request(&[("crm.add_comment", comment)]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("plan_denied"), "{err}");
    assert!(
        w.env.api.requests().is_empty(),
        "the internal API saw {:?}",
        w.env.api.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_refuses_an_auto_approver_signature_on_a_task_outside_its_list() {
    let w = world().await;
    // The orchestrator trusts the auto-approver's key for any task; the
    // worker does not: as if the orchestrator (and its key) were misused.
    let answer = w
        .call("crm.create_ticket", json!({"title": "sneaked past"}))
        .await;
    let plan = w
        .env
        .admin
        .plan(answer["structuredContent"]["plan_id"].as_str().unwrap())
        .await
        .unwrap();
    w.approve_as(&w.auto, &plan).await;
    let done = w.env.admin.wait_for_plan(&plan.id, WAIT).await.unwrap();
    let step = &done.steps[0];
    assert_eq!(step.status, StepStatus::Rejected, "{done:#?}");
    assert_eq!(
        step.error_code.as_deref(),
        Some("approval_key_not_for_task"),
        "{done:#?}"
    );
    assert_eq!(
        step.approved_by.as_deref(),
        Some(format!("auto:{AUTO}").as_str())
    );
    assert_eq!(w.requests_to("/tickets"), 0, "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_stdio_through_mcp_stdio_the_same_tools_answer_and_a_token_without_submit_is_refused()
{
    let w = world().await;
    let bridge = private_worker_tests::procs::binary("orchestrator-mock");
    let bridge = bridge.to_str().unwrap();
    let admin_url = w.env.orchestrator.as_ref().unwrap().admin_url();
    let server = [bridge, "mcp-stdio", "--admin-url", admin_url.as_str()];

    let tools = mcp_client::run_stdio(&server, Some(&w.agent_token), &["list"]).await;
    assert_eq!(
        tool(&tools, "crm.get_ticket")["annotations"]["readOnlyHint"],
        true,
        "{tools:#}"
    );
    let answer = mcp_client::run_stdio(
        &server,
        Some(&w.agent_token),
        &[
            "call",
            "crm.create_ticket",
            &json!({"title": "over stdio"}).to_string(),
        ],
    )
    .await;
    assert_eq!(
        answer["structuredContent"]["status"], "pending_approval",
        "{answer:#}"
    );
    let plan = w
        .env
        .admin
        .plan(answer["structuredContent"]["plan_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(plan.submitted_by.as_deref(), Some("agent-1"));

    // A token without the submit role: the server's 403 comes back as the
    // request's error.
    let reader = w
        .env
        .orchestrator
        .as_ref()
        .unwrap()
        .tokens()
        .issue("dashboard", &[Role::Read])
        .unwrap();
    let refused = mcp_client::run_stdio(&server, Some(&reader), &["refused"]).await;
    assert!(
        refused["error"].as_str().unwrap().contains("HTTP 403"),
        "{refused:#}"
    );
    assert!(w.env.api.requests().is_empty());
}
