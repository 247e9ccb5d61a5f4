//! A fake Azure Key Vault for tests: HTTPS on `127.0.0.1:0`, close enough to
//! the real service that the real SDK (`SecretClient` + an `azure_identity`
//! credential) works against it, with no global state and no network.
//!
//! It is a test double, not a vault: secrets live in memory, any token it
//! issued is accepted for any secret, and there is no access policy, RBAC,
//! soft delete or write API. It exists so that the worker's Key Vault source
//! is exercised through the real SDK, end to end, offline.
//!
//! - **TLS**: a server certificate from [`TestCa`] (the shared test PKI)
//!   for the hosts the test uses (default `myvault.vault.test` and
//!   `login.test`); the worker's `[keyvault]` section trusts
//!   [`TestCa::cert_pem`] (`ca_cert`) and pins those hosts to
//!   [`FakeVault::addr`] (`resolve`).
//! - **Challenge auth**: a vault request without a token the fake issued gets
//!   `401` with `WWW-Authenticate: Bearer authorization="<authority>/<tenant>",
//!   resource="<resource>"`. The default resource is `https://vault.test`, so
//!   the SDK's check that the vault host (`myvault.vault.test`) lies under the
//!   resource's domain passes with `verify_challenge_resource` left on.
//! - **Secrets**: `GET /secrets/{name}`, `/secrets/{name}/` (the SDK's form for
//!   "latest") and `/secrets/{name}/{version}` with the service's JSON shape;
//!   `404 SecretNotFound`, `403 Forbidden`, `429` with `Retry-After: 1`, and a
//!   mode that accepts the request and never answers ([`Behaviour`]).
//! - **Tokens**: the Entra v2 token endpoint `POST /{tenant}/oauth2/v2.0/token`
//!   (client secret or client assertion) for `ClientSecretCredential` /
//!   `WorkloadIdentityCredential` with a custom authority host, and an App
//!   Service managed identity endpoint `GET /msi/token` (`X-IDENTITY-HEADER`).
//! - **Observation**: [`FakeVault::request_count`], [`FakeVault::tokens_seen`],
//!   [`FakeVault::token_requests`].
//!
//! [`BlackHole`] is a TCP listener that accepts connections and never says a
//! byte (not even a TLS handshake): a vault that hangs at connect level.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The throw-away CA of the fake vault's certificate: the shared test PKI,
/// re-exported so that `private_worker_tests::fake_vault::TestCa` stays the
/// path the Key Vault and packaging tests use.
pub use private_worker_identity::test_support::TestCa;

/// How the fake answers requests for one secret (after authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Serve the secret (404 `SecretNotFound` if it has no version).
    Normal,
    /// `403` with error code `Forbidden`.
    Forbidden,
    /// `404` with error code `SecretNotFound`, even if the secret exists.
    NotFound,
    /// `429` with `Retry-After: 1` for the next `times` requests, then
    /// [`Behaviour::Normal`]. `u32::MAX` means forever.
    TooManyRequests {
        /// How many requests still get 429.
        times: u32,
    },
    /// Read the request and never answer.
    Hang,
}

/// What the fake vault is started with.
#[derive(Debug, Clone)]
pub struct FakeVaultOptions {
    /// Host names on the certificate (SANs). Default `myvault.vault.test`,
    /// `login.test`.
    pub hosts: Vec<String>,
    /// Tenant in the challenge's `authorization` URL and the token path.
    pub tenant_id: String,
    /// `resource` in the challenge. Default `https://vault.test`.
    pub resource: String,
    /// Also send `scope="<resource>/.default"` in the challenge.
    pub challenge_scope: bool,
    /// Client id the token endpoint accepts.
    pub client_id: String,
    /// Client secret the token endpoint accepts (`client_secret` grant).
    pub client_secret: String,
    /// Client assertion the token endpoint accepts (workload identity).
    pub client_assertion: String,
    /// `X-IDENTITY-HEADER` value the managed identity endpoint accepts.
    pub identity_header: String,
}

impl Default for FakeVaultOptions {
    fn default() -> Self {
        FakeVaultOptions {
            hosts: vec!["myvault.vault.test".into(), "login.test".into()],
            tenant_id: "00000000-0000-0000-0000-00000000000a".into(),
            resource: "https://vault.test".into(),
            challenge_scope: false,
            client_id: "11111111-1111-1111-1111-111111111111".into(),
            client_secret: "fake-client-secret".into(),
            client_assertion: "fake-federated-token".into(),
            identity_header: "fake-identity-header".into(),
        }
    }
}

#[derive(Default)]
struct VaultState {
    /// name -> versions, oldest first: (version, value, created unix secs).
    secrets: HashMap<String, Vec<(String, String, i64)>>,
    behaviours: HashMap<String, Behaviour>,
    /// Authorized requests per secret name.
    authorized: HashMap<String, u32>,
    /// All requests per secret name, including challenged ones.
    total: HashMap<String, u32>,
    issued_tokens: Vec<String>,
    tokens_seen: Vec<String>,
    token_requests: u32,
    paths: Vec<String>,
}

struct Shared {
    options: FakeVaultOptions,
    state: Mutex<VaultState>,
    counter: AtomicU64,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, VaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unique_hex(&self, salt: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let part = |k: u64| {
            let mut h = DefaultHasher::new();
            (salt, n, nanos, k).hash(&mut h);
            h.finish()
        };
        format!("{:016x}{:016x}", part(1), part(2))
    }
}

/// A running fake vault. Dropping it stops the server.
///
/// Tests set secrets ([`FakeVault::set_secret`]: each call adds a version,
/// the latest wins, as in the service), choose how a secret is answered
/// ([`FakeVault::set_behaviour`]) and read what the vault saw.
pub struct FakeVault {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeVault {
    /// Starts a fake vault on `127.0.0.1:0` with a certificate from `ca`.
    ///
    /// # Panics
    /// If the port cannot be bound or TLS cannot be configured.
    pub async fn start(ca: &TestCa, options: FakeVaultOptions) -> FakeVault {
        let hosts: Vec<&str> = options.hosts.iter().map(String::as_str).collect();
        let cert = ca.server(&hosts);
        let tls = private_worker_identity::tls::https_server_config(cert.chain(), cert.key())
            .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(VaultState::default()),
            counter: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/secrets/{name}", get(get_latest))
            .route("/secrets/{name}/", get(get_latest))
            .route("/secrets/{name}/{version}", get(get_version))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/msi/token", get(msi_token))
            .with_state(shared.clone());

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    // A client that rejects our certificate aborts the handshake.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = TowerToHyperService::new(router);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeVault { addr, shared, task }
    }

    /// The address the server listens on (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The options it was started with.
    pub fn options(&self) -> &FakeVaultOptions {
        &self.shared.options
    }

    /// `(host, addr)` pairs for `KeyVaultConfig::resolve_overrides`.
    pub fn resolve_overrides(&self) -> Vec<(String, SocketAddr)> {
        self.shared
            .options
            .hosts
            .iter()
            .map(|h| (h.clone(), self.addr))
            .collect()
    }

    /// Adds a new version of `name` holding `value`; returns the version.
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        let version = self.shared.unique_hex(name);
        let now = unix_now();
        self.shared
            .state()
            .secrets
            .entry(name.to_string())
            .or_default()
            .push((version.clone(), value.to_string(), now));
        version
    }

    /// Sets how requests for `name` are answered.
    pub fn set_behaviour(&self, name: &str, behaviour: Behaviour) {
        self.shared
            .state()
            .behaviours
            .insert(name.to_string(), behaviour);
    }

    /// Authorized (token-carrying) requests for `name` so far.
    pub fn request_count(&self, name: &str) -> u32 {
        self.shared
            .state()
            .authorized
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// All requests for `name`, including those answered with a challenge.
    pub fn total_request_count(&self, name: &str) -> u32 {
        self.shared.state().total.get(name).copied().unwrap_or(0)
    }

    /// Every bearer token presented to the vault, in order.
    pub fn tokens_seen(&self) -> Vec<String> {
        self.shared.state().tokens_seen.clone()
    }

    /// Every token the token endpoints issued.
    pub fn tokens_issued(&self) -> Vec<String> {
        self.shared.state().issued_tokens.clone()
    }

    /// Requests to the token endpoints so far.
    pub fn token_requests(&self) -> u32 {
        self.shared.state().token_requests
    }

    /// Paths (with query) of every vault request, for debugging.
    pub fn paths(&self) -> Vec<String> {
        self.shared.state().paths.clone()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn service_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ApiVersion {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

async fn get_latest(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<ApiVersion>,
    headers: HeaderMap,
) -> Response {
    serve_secret(shared, name, None, query, headers).await
}

async fn get_version(
    State(shared): State<Arc<Shared>>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<ApiVersion>,
    headers: HeaderMap,
) -> Response {
    serve_secret(shared, name, Some(version), query, headers).await
}

async fn serve_secret(
    shared: Arc<Shared>,
    name: String,
    version: Option<String>,
    query: ApiVersion,
    headers: HeaderMap,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("myvault.vault.test")
        .to_string();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string);

    let behaviour = {
        let mut state = shared.state();
        state.paths.push(format!(
            "/secrets/{name}/{}?api-version={}",
            version.as_deref().unwrap_or(""),
            query.api_version.as_deref().unwrap_or("")
        ));
        *state.total.entry(name.clone()).or_default() += 1;
        let authorized = match &bearer {
            Some(token) => {
                state.tokens_seen.push(token.clone());
                state.issued_tokens.contains(token)
            }
            None => false,
        };
        if !authorized {
            let o = &shared.options;
            let mut challenge = format!(
                "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"{}\"",
                o.tenant_id, o.resource
            );
            if o.challenge_scope {
                challenge.push_str(&format!(", scope=\"{}/.default\"", o.resource));
            }
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                Json(json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}})),
            )
                .into_response();
        }
        if query.api_version.is_none() {
            return service_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "The request URI contains an invalid or missing api-version.",
            );
        }
        *state.authorized.entry(name.clone()).or_default() += 1;
        let behaviour = state
            .behaviours
            .get(&name)
            .copied()
            .unwrap_or(Behaviour::Normal);
        if let Behaviour::TooManyRequests { times } = behaviour {
            let next = match times {
                u32::MAX => behaviour,
                0 | 1 => Behaviour::Normal,
                n => Behaviour::TooManyRequests { times: n - 1 },
            };
            state.behaviours.insert(name.clone(), next);
            if times == 0 {
                Behaviour::Normal
            } else {
                behaviour
            }
        } else {
            behaviour
        }
    };

    match behaviour {
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behaviour::Forbidden => service_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "The user, group or application does not have secrets get permission on key vault '{host}'."
            ),
        ),
        Behaviour::NotFound => not_found(&name),
        Behaviour::TooManyRequests { .. } => {
            let mut response = service_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttled",
                "Request was not processed because too many requests were received.",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().expect("header value"));
            response
        }
        Behaviour::Normal => {
            let state = shared.state();
            let found = state
                .secrets
                .get(&name)
                .and_then(|versions| match &version {
                    Some(v) => versions.iter().find(|(id, _, _)| id == v),
                    None => versions.last(),
                });
            match found {
                Some((id, value, created)) => Json(json!({
                    "value": value,
                    "id": format!("https://{host}/secrets/{name}/{id}"),
                    "attributes": {
                        "enabled": true,
                        "created": created,
                        "updated": created,
                        "recoveryLevel": "Recoverable+Purgeable",
                        "recoverableDays": 90
                    },
                    "tags": {}
                }))
                .into_response(),
                None => not_found(&name),
            }
        }
    }
}

fn not_found(name: &str) -> Response {
    service_error(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!("A secret with (name/id) {name} was not found in this key vault."),
    )
}

fn issue_token(shared: &Shared) -> String {
    let token = format!("fake-access-token-{}", shared.unique_hex("token"));
    shared.state().issued_tokens.push(token.clone());
    token
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    shared.state().token_requests += 1;
    let o = &shared.options;
    let deny = |code: i32, error: &str, description: &str| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({
                "error": error,
                "error_description": description,
                "error_codes": [code],
            })),
        )
            .into_response()
    };
    if tenant != o.tenant_id {
        return deny(90002, "invalid_request", "AADSTS90002: Tenant not found.");
    }
    if form.get("client_id") != Some(&o.client_id) {
        return deny(
            700016,
            "unauthorized_client",
            "AADSTS700016: Application not found.",
        );
    }
    let secret_ok = form.get("client_secret") == Some(&o.client_secret);
    let assertion_ok = form.get("client_assertion") == Some(&o.client_assertion);
    if !secret_ok && !assertion_ok {
        return deny(
            7000215,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let expected_scope = format!("{}/.default", o.resource);
    if form.get("scope") != Some(&expected_scope) {
        return deny(
            500011,
            "invalid_resource",
            "AADSTS500011: The resource principal was not found.",
        );
    }
    let token = issue_token(&shared);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": token,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct MsiQuery {
    resource: Option<String>,
}

async fn msi_token(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<MsiQuery>,
    headers: HeaderMap,
) -> Response {
    shared.state().token_requests += 1;
    let o = &shared.options;
    let header_ok = headers
        .get("x-identity-header")
        .and_then(|h| h.to_str().ok())
        == Some(o.identity_header.as_str());
    if !header_ok {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-IDENTITY-HEADER",
        )
            .into_response();
    }
    if query.resource.as_deref() != Some(o.resource.as_str()) {
        return (StatusCode::BAD_REQUEST, "unknown resource").into_response();
    }
    let token = issue_token(&shared);
    Json(json!({
        "access_token": token,
        // App Service sends expires_on as a string of Unix seconds.
        "expires_on": (unix_now() + 3600).to_string(),
        "resource": o.resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

/// A TCP listener on `127.0.0.1:0` that accepts connections and never writes
/// a byte. Dropping it closes the listener and the held connections.
pub struct BlackHole {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BlackHole {
    /// Starts the listener.
    ///
    /// # Panics
    /// If the port cannot be bound.
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        BlackHole { addr, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
