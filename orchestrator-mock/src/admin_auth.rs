//! Who may call the admin API, from where, and how: one axum middleware
//! ([`guard`]) in front of every admin route (the fault-injection hooks
//! too), so the handlers themselves never deal with it.
//!
//! Every request, in this order:
//! 1. **Host.** The `Host` header (or the HTTP/2 `:authority`) must name
//!    this server: one of `[admin] allowed_hosts`, by default `localhost`,
//!    `127.0.0.1` and `[::1]` on the listener's port. Otherwise 421
//!    `misdirected_host`. A web page that rebinds its own DNS name to
//!    127.0.0.1 still sends its own name here, so it is refused.
//! 2. **Origin.** When present (browsers send it on cross-site and on
//!    all POST requests) it must be `http://` or `https://` plus one of the
//!    allowed hosts; otherwise 403 `forbidden_origin`.
//! 3. **Token.** `GET /healthz` and the approval console's static files
//!    ([`crate::console::is_public`]: they hold no data) are open; everything else needs
//!    `Authorization: Bearer <token>` of a token in the token file
//!    ([`crate::tokens`]); otherwise 401 `unauthenticated` with
//!    `WWW-Authenticate: Bearer`.
//! 4. **Role.** The token must hold the role the endpoint needs
//!    ([`required_role`]); otherwise 403 `forbidden` naming the token's
//!    roles and the one needed.
//! 5. **Content type.** Every request other than GET/HEAD must say
//!    `Content-Type: application/json` (parameters allowed), even with no
//!    body; otherwise 415 `unsupported_media_type`. An HTML form cannot
//!    send that type, and a cross-site `fetch` cannot without a CORS
//!    preflight, which this server never grants.
//!
//! A request let through carries the caller ([`Caller`]: the token's name
//! and roles) in its extensions, for handlers that record who asked (the
//! approval policies' per-token limits, the MCP server).
//!
//! Each refusal is logged at `warn` with the reason and, once the token
//! is known, the token's name; never the token or the `Authorization`
//! header.
//!
//! What it does not do: rate-limit guesses (a token has 256 random bits),
//! or serve CORS (no cross-origin caller is legitimate).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ErrorBody;
use crate::tokens::{Caller, Role, TokenFile};

/// One name this admin API answers to: a host (name, IPv4 address or
/// bracketed IPv6 address, lowercase) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// Host, lowercase; IPv6 addresses in brackets (`[::1]`).
    pub host: String,
    /// Port; `None` in the config means the listener's port.
    pub port: Option<u16>,
}

impl AllowedHost {
    /// Parses `name`, `name:port`, `[v6]` or `[v6]:port`.
    ///
    /// # Errors
    /// A message saying what is wrong with `text`.
    pub fn parse(text: &str) -> Result<AllowedHost, String> {
        let (host, port) =
            split_authority(text).ok_or_else(|| format!("{text:?} is not a host or host:port"))?;
        Ok(AllowedHost { host, port })
    }

    fn matches(&self, host: &str, port: u16, listener_port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.unwrap_or(listener_port) == port
    }
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// `host[:port]` split into the lowercase host (IPv6 in brackets) and the
/// port; `None` for anything else (userinfo, a path, a port that is not a
/// number, an empty host).
fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let authority: http::uri::Authority = text.parse().ok()?;
    let host = authority.host();
    if host.is_empty() || authority.as_str().contains('@') || !text.starts_with(host) {
        return None;
    }
    let port = match &text[host.len()..] {
        "" => None,
        rest => Some(rest.strip_prefix(':')?.parse::<u16>().ok()?),
    };
    Some((host.to_ascii_lowercase(), port))
}

/// The default `[admin] allowed_hosts`: the loopback names on the
/// listener's port.
pub fn default_allowed_hosts() -> Vec<AllowedHost> {
    ["localhost", "127.0.0.1", "[::1]"]
        .into_iter()
        .map(|host| AllowedHost {
            host: host.into(),
            port: None,
        })
        .collect()
}

/// The rules [`guard`] applies, built once at start.
#[derive(Debug)]
pub struct Policy {
    tokens: TokenFile,
    hosts: Vec<AllowedHost>,
    port: u16,
    tls: bool,
}

impl Policy {
    /// Rules for a listener on `port` (the bound one, after port 0 was
    /// resolved), served over TLS or not.
    pub fn new(tokens: TokenFile, hosts: Vec<AllowedHost>, port: u16, tls: bool) -> Policy {
        Policy {
            tokens,
            hosts,
            port,
            tls,
        }
    }

    /// The allowed names, resolved (`host:port`), for messages.
    fn names(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port.unwrap_or(self.port)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `authority` (`host[:port]`) names this server; without a
    /// port it means the scheme's default one.
    fn allows(&self, authority: &str, default_port: u16) -> bool {
        let Some((host, port)) = split_authority(authority) else {
            return false;
        };
        let port = port.unwrap_or(default_port);
        self.hosts.iter().any(|h| h.matches(&host, port, self.port))
    }

    fn check_host(&self, request: &Request) -> Result<(), Refusal> {
        let default_port = if self.tls { 443 } else { 80 };
        let host = match request
            .headers()
            .get_all(header::HOST)
            .iter()
            .collect::<Vec<_>>()[..]
        {
            [one] => one.to_str().ok().map(str::to_string),
            [] => request.uri().authority().map(|a| a.as_str().to_string()),
            _ => None,
        };
        match host {
            Some(h) if self.allows(&h, default_port) => Ok(()),
            other => Err(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_host",
                format!(
                    "Host {} is not a name of this admin API ({}); if it should be, add it to [admin] allowed_hosts",
                    other.map_or_else(|| "(missing)".to_string(), |h| format!("{h:?}")),
                    self.names()
                ),
            )),
        }
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let values: Vec<&HeaderValue> = headers.get_all(header::ORIGIN).iter().collect();
        let origin = match values[..] {
            [] => return Ok(()),
            [one] => one.to_str().unwrap_or("(not text)"),
            _ => "(several)",
        };
        let allowed = origin
            .strip_prefix("http://")
            .map(|rest| (rest, 80))
            .or_else(|| origin.strip_prefix("https://").map(|rest| (rest, 443)))
            .is_some_and(|(authority, port)| {
                !authority.contains('/') && self.allows(authority, port)
            });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "Origin {origin:?} is not this admin API ({}); cross-site requests are refused",
                    self.names()
                ),
            ))
        }
    }
}

/// The role an endpoint needs, and the endpoint as written in messages
/// (`POST /v1/plans/{id}/approve`), so a raw path is never echoed.
///
/// Anything not listed needs [`Role::Operate`]: an endpoint added later is
/// closed until someone decides who may call it.
pub fn required_role(method: &Method, path: &str) -> (Role, &'static str) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    match (read, &segments[..]) {
        (_, ["v1", "testing", ..]) => (Role::Operate, "/v1/testing/..."),
        // The MCP endpoint (every method of the streamable HTTP transport)
        // submits plans: the agent's role.
        (_, ["mcp"]) => (Role::Submit, "/mcp"),
        (true, _) => (Role::Read, "GET (any endpoint but /healthz)"),
        (false, ["v1", "plans"]) if *method == Method::POST => (Role::Submit, "POST /v1/plans"),
        (false, ["v1", "plans", _, "approve"]) if *method == Method::POST => {
            (Role::Approve, "POST /v1/plans/{id}/approve")
        }
        (false, ["v1", "plans", _, "reject"]) if *method == Method::POST => {
            (Role::Approve, "POST /v1/plans/{id}/reject")
        }
        (false, ["v1", "plans", _, "cancel"]) if *method == Method::POST => {
            (Role::Submit, "POST /v1/plans/{id}/cancel")
        }
        (false, ["v1", "plans", _, "steps", _, "cancel"]) if *method == Method::POST => {
            (Role::Submit, "POST /v1/plans/{id}/steps/{index}/cancel")
        }
        _ => (Role::Operate, "this endpoint"),
    }
}

/// Whether `headers` declare a JSON body: `application/json`, any case,
/// parameters (`; charset=utf-8`) allowed.
pub fn is_json(headers: &HeaderMap) -> bool {
    let values: Vec<&HeaderValue> = headers.get_all(header::CONTENT_TYPE).iter().collect();
    match values[..] {
        [one] => one.to_str().is_ok_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        }),
        _ => false,
    }
}

/// The bearer token of `Authorization`, if exactly one is given.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let values: Vec<&HeaderValue> = headers.get_all(header::AUTHORIZATION).iter().collect();
    let [one] = values[..] else {
        return None;
    };
    let text = one.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn role_list(roles: &BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A refused request.
struct Refusal {
    status: StatusCode,
    body: ErrorBody,
}

impl Refusal {
    fn new(status: StatusCode, code: &str, message: String) -> Refusal {
        Refusal {
            status,
            body: ErrorBody {
                error: code.into(),
                message,
                problems: Vec::new(),
            },
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let unauthenticated = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, Json(self.body)).into_response();
        if unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orchestrator-mock admin\""),
            );
        }
        response
    }
}

/// The middleware: applies the [`Policy`] (see the module doc), then
/// passes the request on unchanged.
pub async fn guard(
    State(policy): State<Arc<Policy>>,
    mut request: Request,
    next: Next,
) -> Response {
    match check(&policy, &request) {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
        Err((refusal, name)) => {
            tracing::warn!(
                method = %request.method(),
                path = ?request.uri().path(),
                status = refusal.status.as_u16(),
                error = %refusal.body.error,
                token = name.as_deref().unwrap_or("-"),
                reason = %refusal.body.message,
                "admin request refused"
            );
            refusal.into_response()
        }
    }
}

/// Every rule in order; the caller (none for `/healthz`), or the refusal
/// and the token's name once known.
fn check(policy: &Policy, request: &Request) -> Result<Option<Caller>, (Refusal, Option<String>)> {
    policy.check_host(request).map_err(|r| (r, None))?;
    policy
        .check_origin(request.headers())
        .map_err(|r| (r, None))?;
    let method = request.method();
    let path = request.uri().path();
    if (*method == Method::GET || *method == Method::HEAD)
        && (path == "/healthz" || crate::console::is_public(path))
    {
        return Ok(None);
    }
    let (needed, endpoint) = required_role(method, path);
    let Some(token) = bearer(request.headers()) else {
        return Err((
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this endpoint needs `Authorization: Bearer <token>`; create a token with `orchestrator-mock token create`".into(),
            ),
            None,
        ));
    };
    let caller = match policy.tokens.authenticate(token) {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            return Err((
                Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "unknown or revoked token".into(),
                ),
                None,
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "admin token file unusable; refusing every request");
            return Err((
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tokens_unavailable",
                    "the admin token file cannot be read; see the server log".into(),
                ),
                None,
            ));
        }
    };
    if !caller.roles.contains(&needed) {
        return Err((
            Refusal::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this token has roles [{}]; {endpoint} needs `{needed}`",
                    role_list(&caller.roles)
                ),
            ),
            Some(caller.name),
        ));
    }
    let reads = *method == Method::GET || *method == Method::HEAD;
    if !reads && !is_json(request.headers()) {
        let given = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map_or_else(|| "none".to_string(), |v| format!("{v:?}"));
        return Err((
            Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "{method} needs `Content-Type: application/json`, even without a body (send {{}}); got {given}"
                ),
            ),
            Some(caller.name),
        ));
    }
    Ok(Some(caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            TokenFile::new("/nonexistent/t.json"),
            default_allowed_hosts(),
            7070,
            false,
        )
    }

    #[test]
    fn hosts_match_by_name_and_port_the_scheme_default_when_absent() {
        let p = policy();
        for good in [
            "localhost:7070",
            "LOCALHOST:7070",
            "127.0.0.1:7070",
            "[::1]:7070",
        ] {
            assert!(p.allows(good, 80), "{good}");
        }
        for bad in [
            "localhost",
            "localhost:7071",
            "evil.example:7070",
            "127.0.0.2:7070",
            "user@localhost:7070",
            "localhost:70x",
            "localhost:",
            "",
        ] {
            assert!(!p.allows(bad, 80), "{bad}");
        }
        let p = Policy::new(
            TokenFile::new("/x"),
            vec![AllowedHost::parse("orch.example.com:443").unwrap()],
            7070,
            true,
        );
        assert!(p.allows("orch.example.com", 443));
        assert!(!p.allows("orch.example.com:7070", 443));
    }

    #[test]
    fn allowed_hosts_parse_names_ports_and_ipv6() {
        assert_eq!(
            AllowedHost::parse("[::1]:80").unwrap(),
            AllowedHost {
                host: "[::1]".into(),
                port: Some(80)
            }
        );
        assert_eq!(
            AllowedHost::parse("Orch.Example").unwrap().host,
            "orch.example"
        );
        for bad in ["", "a b", "http://x", "x:port", "u@x"] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_endpoint_needs_the_role_the_docs_give_it() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(required_role(&post, "/v1/plans").0, Role::Submit);
        assert_eq!(required_role(&post, "/v1/plans/x/approve").0, Role::Approve);
        assert_eq!(required_role(&post, "/v1/plans/x/reject").0, Role::Approve);
        assert_eq!(required_role(&post, "/v1/plans/x/cancel").0, Role::Submit);
        assert_eq!(
            required_role(&post, "/v1/plans/x/steps/1/cancel").0,
            Role::Submit
        );
        assert_eq!(required_role(&get, "/v1/plans/x").0, Role::Read);
        assert_eq!(required_role(&get, "/v1/workers").0, Role::Read);
        assert_eq!(required_role(&get, "/v1/testing").0, Role::Operate);
        assert_eq!(required_role(&post, "/mcp").0, Role::Submit);
        assert_eq!(required_role(&get, "/mcp").0, Role::Submit);
        assert_eq!(required_role(&post, "/mcp/x").0, Role::Operate);
        assert_eq!(required_role(&post, "/v1/testing/cut").0, Role::Operate);
        assert_eq!(required_role(&post, "/v1/unknown").0, Role::Operate);
        assert_eq!(
            required_role(&Method::DELETE, "/v1/plans/x").0,
            Role::Operate
        );
    }

    #[test]
    fn only_application_json_is_json() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonp"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn the_bearer_scheme_is_required() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            bearer(&h).map(str::to_string)
        };
        assert_eq!(with("Bearer pwm_x").as_deref(), Some("pwm_x"));
        assert_eq!(with("bearer pwm_x").as_deref(), Some("pwm_x"));
        assert_eq!(with("Basic dXNlcjpwYXNz"), None);
        assert_eq!(with("Bearer "), None);
    }
}
