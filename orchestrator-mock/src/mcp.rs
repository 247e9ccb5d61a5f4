//! The MCP server: the registered tasks as tools an AI agent can call,
//! with a person (or an approval policy) between the call and the worker.
//!
//! Served with the official Rust SDK (`rmcp`) over the streamable HTTP
//! transport at `/mcp` on the admin listener, behind the admin API's
//! guard ([`crate::admin_auth`]): a bearer token with the `submit` role,
//! the same `Host`/`Origin` rules, TLS off loopback. It runs stateless
//! (no MCP session; every POST stands alone) and answers with plain JSON.
//!
//! Tools:
//! - one per registered task whose policy is not `deny`: its name
//!   ([`tool_name`]), its registry description, its input schema (the
//!   registry's JSON Schema), and the annotations `readOnlyHint`,
//!   `destructiveHint`, `idempotentHint` from the registry. Calling it
//!   submits a one-step plan.
//! - `submit_plan`: several steps at once (`{"steps": [{"task", "version"?,
//!   "inputs"}]}`).
//! - `get_plan_result`: the plan's state and results, by plan id.
//!
//! A call submits through the same path as `POST /v1/plans`
//! ([`crate::admin::submit_plan`]: registry validation, approval
//! policies), then waits up to `[mcp] call_wait` for the plan to finish.
//! It answers with the result, or with `"status": "pending_approval"` and
//! the plan id (approval happens through the admin API with the `approve`
//! role, never here), or a still running plan. Refusals (invalid inputs,
//! with the task and the JSON path of each problem; a denied task) are
//! tool errors (`isError: true`), so the agent sees them.
//!
//! What it does not do: approve or reject (an agent holds the `submit`
//! role only), keep MCP sessions, push notifications when a plan ends, or
//! limit which plan ids a token may ask about (plan ids are random; the
//! `submit` role may already cancel any plan it can name).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::api::{ApprovalPolicy, PlanStatus, PlanSubmission, PlanView, StepRequest, TaskView};

/// The tool that submits several steps.
pub const SUBMIT_PLAN: &str = "submit_plan";
/// The tool that reads a plan's state and results.
pub const GET_PLAN_RESULT: &str = "get_plan_result";
/// Longest tool name the MCP specification allows.
pub const MAX_TOOL_NAME: usize = 128;
/// How often a waiting call looks at its plan.
const POLL: Duration = Duration::from_millis(100);

/// The MCP tool name of a task: the task name with every character the
/// MCP specification does not allow in a tool name (it allows `A-Z a-z
/// 0-9 _ - .`) replaced by `_`; `.v<version>` appended when the registry
/// holds several versions of the task (`several`); cut to 128 characters.
pub fn tool_name(task: &str, version: &str, several: bool) -> String {
    let raw = if several {
        format!("{task}.v{version}")
    } else {
        task.to_string()
    };
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(MAX_TOOL_NAME);
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// A task offered as a tool.
#[derive(Debug, Clone)]
struct TaskTool {
    tool: Tool,
    task: String,
    version: String,
}

/// The tools, built once from the registry at start.
#[derive(Debug, Default)]
struct Tools {
    tasks: BTreeMap<String, TaskTool>,
    /// Tool names of `deny` tasks: not listed; a call is refused naming
    /// the policy.
    denied: BTreeMap<String, String>,
}

impl Tools {
    fn from_views(views: &[TaskView]) -> Tools {
        let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
        for view in views {
            *versions.entry(view.name.as_str()).or_default() += 1;
        }
        let mut tools = Tools::default();
        for view in views {
            let name = tool_name(&view.name, &view.version, versions[view.name.as_str()] > 1);
            let taken = name == SUBMIT_PLAN
                || name == GET_PLAN_RESULT
                || tools.tasks.contains_key(&name)
                || tools.denied.contains_key(&name);
            if taken {
                tracing::warn!(task = %view.name, version = %view.version, tool = %name, "task not offered as an MCP tool: its tool name is taken by another tool");
                continue;
            }
            if view.approval == ApprovalPolicy::Deny {
                tools.denied.insert(name, view.name.clone());
                continue;
            }
            tools.tasks.insert(
                name.clone(),
                TaskTool {
                    tool: task_tool(&name, view),
                    task: view.name.clone(),
                    version: view.version.clone(),
                },
            );
        }
        tools
    }

    fn list(&self) -> Vec<Tool> {
        let mut list: Vec<Tool> = self.tasks.values().map(|t| t.tool.clone()).collect();
        list.push(submit_plan_tool());
        list.push(get_plan_result_tool());
        list
    }
}

fn object(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn task_tool(name: &str, view: &TaskView) -> Tool {
    let mut schema = view.input_schema.clone();
    // MCP wants an object schema at the top; the registry's inputs are
    // objects anyway.
    if let Value::Object(map) = &mut schema {
        map.entry("type").or_insert_with(|| json!("object"));
    }
    let what = if view.description.is_empty() {
        format!(
            "Runs the task {} (version {}) on a private worker.",
            view.name, view.version
        )
    } else {
        view.description.clone()
    };
    let approval = match view.approval {
        ApprovalPolicy::Auto => {
            "Approval: automatic (read-only task); the call returns the result.".to_string()
        }
        _ => format!(
            "Approval: a person approves each call. Until then the call answers \"pending_approval\" with a plan id; ask for the result later with {GET_PLAN_RESULT}."
        ),
    };
    let annotations = ToolAnnotations::new()
        .read_only(view.read_only)
        .destructive(view.destructive)
        .idempotent(view.idempotent);
    Tool::new(
        name.to_string(),
        format!("{what}\n\n{approval}"),
        object(schema),
    )
    .with_annotations(annotations)
}

fn submit_plan_tool() -> Tool {
    Tool::new(
        SUBMIT_PLAN,
        "Submits a plan of several task steps, run in order on a private worker (a step runs only after the one before it succeeded). Each step names a registered task (the other tools' names are the task names) and its inputs. The plan is approved as a whole: automatically when every task's policy allows, else by a person; until then the answer is \"pending_approval\" with a plan id for get_plan_result.",
        object(json!({
            "type": "object",
            "required": ["steps"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "description": "A name for the plan, shown to the approver."},
                "steps": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["task"],
                        "additionalProperties": false,
                        "properties": {
                            "task": {"type": "string", "description": "Registered task name, e.g. crm.create_ticket."},
                            "version": {"type": "string", "description": "Task version; leave out for the only registered one."},
                            "inputs": {"type": "object", "description": "The task's inputs, valid against its schema."}
                        }
                    }
                }
            }
        })),
    )
    .with_annotations(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(true)
            .idempotent(false),
    )
}

fn get_plan_result_tool() -> Tool {
    Tool::new(
        GET_PLAN_RESULT,
        "The state of a plan submitted earlier, and its results once it finished: status (pending_approval, approved, running, succeeded, failed, rejected, cancelled) and per step its status, output or error. Waits up to wait_seconds for the plan to finish.",
        object(json!({
            "type": "object",
            "required": ["plan_id"],
            "additionalProperties": false,
            "properties": {
                "plan_id": {"type": "string", "description": "The plan id a tool call answered with."},
                "wait_seconds": {"type": "integer", "minimum": 0, "description": "How long to wait for the plan to finish (capped by the server's call_wait; default: that cap)."}
            }
        })),
    )
    .with_annotations(
        ToolAnnotations::new()
            .read_only(true)
            .destructive(false)
            .idempotent(true),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitPlanArgs {
    #[serde(default)]
    name: Option<String>,
    steps: Vec<StepArgs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepArgs {
    task: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    inputs: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetPlanResultArgs {
    plan_id: String,
    #[serde(default)]
    wait_seconds: Option<u64>,
}

/// The MCP server handler: one per request (stateless), sharing the
/// admin API's state.
#[derive(Clone)]
pub struct McpServer {
    app: AdminState,
    tools: Arc<Tools>,
    call_wait: Duration,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("tools", &self.tools.tasks.keys().collect::<Vec<_>>())
            .field("call_wait", &self.call_wait)
            .finish_non_exhaustive()
    }
}

/// The `/mcp` endpoint: a tower service to mount on the admin router
/// (inside its guard). `call_wait` bounds how long a tool call waits for
/// its plan; `shutdown` ends in-flight requests.
pub fn service(
    app: AdminState,
    call_wait: Duration,
    shutdown: CancellationToken,
) -> StreamableHttpService<McpServer, NeverSessionManager> {
    let server = McpServer {
        tools: Arc::new(Tools::from_views(&app.registry.views())),
        app,
        call_wait,
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // The admin guard checks Host and Origin against [admin] allowed_hosts.
        .disable_allowed_hosts()
        .with_cancellation_token(shutdown);
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// The token name the admin guard let through.
fn caller_of(context: &RequestContext<RoleServer>) -> String {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<crate::tokens::Caller>())
        .map_or_else(|| "-".to_string(), |c| c.name.clone())
}

/// A tool error with a message for the agent and the details as
/// structured content.
fn tool_error(message: String, details: Value) -> CallToolResult {
    let mut result = CallToolResult::structured_error(details);
    result.content.insert(0, ContentBlock::text(message));
    result
}

fn bad_arguments(tool: &str, e: &serde_json::Error) -> CallToolResult {
    tool_error(
        format!("{tool}: the arguments are not valid: {e}"),
        json!({"error": "bad_arguments", "message": e.to_string()}),
    )
}

impl McpServer {
    async fn submit(&self, submission: PlanSubmission, caller: &str) -> CallToolResult {
        match crate::admin::submit_plan(&self.app, submission, caller).await {
            Ok(plan) => {
                tracing::info!(plan_id = %plan.id, caller, status = ?plan.status, "plan submitted through MCP");
                self.answer(plan.id, self.call_wait).await
            }
            Err(e) => {
                let body = e.body();
                let mut message = format!("{}: {}", body.error, body.message);
                for problem in &body.problems {
                    message.push_str(&format!("\n- {problem}"));
                }
                tool_error(message, serde_json::to_value(body).unwrap_or(Value::Null))
            }
        }
    }

    /// Waits up to `wait` for plan `id` to finish, then describes it.
    async fn answer(&self, id: String, wait: Duration) -> CallToolResult {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let plan = match self.app.state.lock() {
                Ok(state) => state.plan(&id),
                Err(poisoned) => poisoned.into_inner().plan(&id),
            };
            let plan = match plan {
                Ok(plan) => plan,
                Err(e) => {
                    return tool_error(
                        format!("{e}; use the plan id a tool call answered with"),
                        json!({"error": "not_found", "plan_id": id}),
                    );
                }
            };
            if plan.status.is_finished() || tokio::time::Instant::now() >= deadline {
                return describe(&plan, wait);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The answer for `plan` after waiting `waited`.
fn describe(plan: &PlanView, waited: Duration) -> CallToolResult {
    let id = &plan.id;
    let later =
        format!("ask for the result later with {GET_PLAN_RESULT} {{\"plan_id\": \"{id}\"}}");
    let (message, error) = match plan.status {
        PlanStatus::PendingApproval => (
            format!(
                "pending approval: plan {id} waits for a person to approve it; nothing has run yet. {later}."
            ),
            false,
        ),
        PlanStatus::Approved | PlanStatus::Running => (
            format!(
                "plan {id} is approved and {} but not finished after {} s; {later}.",
                if plan.status == PlanStatus::Running {
                    "running"
                } else {
                    "queued"
                },
                waited.as_secs()
            ),
            false,
        ),
        PlanStatus::Succeeded => (format!("plan {id} succeeded."), false),
        PlanStatus::Failed => (
            format!("plan {id} failed; see each step's error_code and error_message."),
            true,
        ),
        PlanStatus::Rejected => (
            format!("plan {id} was rejected by its approver; nothing ran."),
            true,
        ),
        PlanStatus::Cancelled => (format!("plan {id} was cancelled."), true),
    };
    let steps: Vec<Value> = plan
        .steps
        .iter()
        .map(|s| {
            json!({
                "index": s.index,
                "task": s.task,
                "version": s.version,
                "status": s.status,
                "output": s.output,
                "error_code": s.error_code,
                "error_message": s.error_message,
                "approved_by": s.approved_by,
            })
        })
        .collect();
    let details = json!({
        "plan_id": id,
        "status": plan.status,
        "message": message,
        "steps": steps,
    });
    let mut result = if error {
        CallToolResult::structured_error(details)
    } else {
        CallToolResult::structured(details)
    };
    result.content.insert(0, ContentBlock::text(message));
    result
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "orchestrator-mock",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(format!(
                "Each tool runs a registered task on a private worker inside a private network. \
                 Most calls need a person's approval: such a call answers \"pending_approval\" with \
                 a plan id; call {GET_PLAN_RESULT} with it later. Read-only tasks may be approved \
                 automatically. Inputs are checked against each tool's schema; a refusal names the \
                 JSON path at fault."
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.list()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.list().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller_of(&context);
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let name = request.name.as_ref();
        let result = match name {
            SUBMIT_PLAN => match SubmitPlanArgs::deserialize(&arguments) {
                Err(e) => bad_arguments(SUBMIT_PLAN, &e),
                Ok(args) => {
                    let plan = crate::api::PlanRequest {
                        name: args.name,
                        steps: args
                            .steps
                            .into_iter()
                            .map(|s| StepRequest {
                                task: s.task,
                                version: s.version,
                                inputs: s.inputs.unwrap_or_else(|| json!({})),
                            })
                            .collect(),
                    };
                    self.submit(plan.into(), &caller).await
                }
            },
            GET_PLAN_RESULT => match GetPlanResultArgs::deserialize(&arguments) {
                Err(e) => bad_arguments(GET_PLAN_RESULT, &e),
                Ok(args) => {
                    let wait = args
                        .wait_seconds
                        .map_or(self.call_wait, Duration::from_secs)
                        .min(self.call_wait);
                    self.answer(args.plan_id, wait).await
                }
            },
            _ => {
                if let Some(task) = self.tools.denied.get(name) {
                    tool_error(
                        format!(
                            "task {task} is denied by the registry's approval policy (approval = \"deny\"): it never runs, whoever asks; nothing was submitted"
                        ),
                        json!({"error": "plan_denied", "task": task}),
                    )
                } else if let Some(tool) = self.tools.tasks.get(name) {
                    let plan = crate::api::PlanRequest {
                        name: Some(format!("mcp: {}", tool.task)),
                        steps: vec![StepRequest {
                            task: tool.task.clone(),
                            version: Some(tool.version.clone()),
                            inputs: arguments,
                        }],
                    };
                    self.submit(plan.into(), &caller).await
                } else {
                    return Err(ErrorData::invalid_params(
                        format!("unknown tool {name:?}; list the tools with tools/list"),
                        None,
                    ));
                }
            }
        };
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_keep_allowed_characters_and_replace_the_rest() {
        assert_eq!(
            tool_name("crm.create_ticket", "1", false),
            "crm.create_ticket"
        );
        assert_eq!(tool_name("crm.get_ticket", "2", true), "crm.get_ticket.v2");
        assert_eq!(tool_name("ns:task name/x", "1", false), "ns_task_name_x");
        assert_eq!(tool_name("é", "1", false), "_");
        assert_eq!(tool_name("", "1", false), "_");
        assert_eq!(tool_name(&"a".repeat(300), "1", false).len(), MAX_TOOL_NAME);
    }

    fn view(name: &str, version: &str, approval: ApprovalPolicy) -> TaskView {
        TaskView {
            name: name.into(),
            version: version.into(),
            description: format!("does {name}"),
            input_schema: json!({"properties": {"x": {"type": "string"}}}),
            idempotent: true,
            timeout_secs: None,
            input_schema_sha256: String::new(),
            read_only: approval == ApprovalPolicy::Auto,
            destructive: false,
            approval,
            auto_limit_per_hour: None,
        }
    }

    #[test]
    fn every_task_but_denied_ones_is_a_tool_with_its_schema_and_annotations() {
        let tools = Tools::from_views(&[
            view("crm.get_ticket", "1", ApprovalPolicy::Auto),
            view("crm.wipe", "1", ApprovalPolicy::Deny),
            view("crm.note", "1", ApprovalPolicy::Human),
            view("crm.note", "2", ApprovalPolicy::Human),
            view("submit_plan", "1", ApprovalPolicy::Human),
        ]);
        let names: Vec<String> = tools.list().iter().map(|t| t.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "crm.get_ticket",
                "crm.note.v1",
                "crm.note.v2",
                SUBMIT_PLAN,
                GET_PLAN_RESULT
            ]
        );
        assert_eq!(
            tools.denied.get("crm.wipe").map(String::as_str),
            Some("crm.wipe")
        );
        let get = &tools.tasks["crm.get_ticket"].tool;
        let annotations = get.annotations.as_ref().unwrap();
        assert_eq!(annotations.read_only_hint, Some(true));
        assert_eq!(annotations.destructive_hint, Some(false));
        assert_eq!(annotations.idempotent_hint, Some(true));
        assert_eq!(get.input_schema["type"], "object");
        assert_eq!(get.input_schema["properties"]["x"]["type"], "string");
        assert!(
            get.description
                .as_deref()
                .unwrap()
                .starts_with("does crm.get_ticket")
        );
    }
}
