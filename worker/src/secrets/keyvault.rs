//! Credentials from Azure Key Vault, through the official SDK
//! (`azure_security_keyvault_secrets` + `azure_identity` 1.x).
//!
//! [`KeyVaultSource`] implements the worker's [`SecretSource`] for
//! [`SecretRef::KeyVault`] references:
//!
//! - **Authentication is explicit** ([`AzureAuth`]): azure_identity 1.x has no
//!   `DefaultAzureCredential`, so the config names the credential type.
//! - **One `SecretClient` per vault URL**, created on first use and reused.
//! - **Values are cached** per (vault, name, version) for
//!   [`KeyVaultConfig::cache_ttl`]; a secret rotated in the vault is read again
//!   once the entry expires, without a restart.
//! - **Bounded failure**: the SDK's HTTP transport is replaced by a
//!   `reqwest::Client` built here (per-try timeout, connect timeout, extra CA,
//!   DNS overrides), retries are set explicitly (exponential, `max_retries`,
//!   `retry_budget`), and the whole load runs under a deadline of
//!   `retry_budget`, so a Retry-After longer than what is left cannot
//!   overshoot it. 401, 403 and 404 are never retried (the SDK retries only
//!   408, 429, 500, 502, 503, 504 and transport errors).
//! - **Errors never carry a value or a token**: [`KeyVaultError`] is built from
//!   the status code, the service's error code and a classified transport
//!   cause, never from a response body or an SDK message.
//!
//! The same transport and retry settings are given to the credential where
//! its options accept `ClientOptions` (managed identity, workload identity,
//! client secret), so token requests trust the same CA and fail as fast.
//!
//! # What it does not do
//! It does not fall back to another source or another credential, write to
//! the vault, list secrets, or log a value, a token or a response body. It
//! does not parse the worker's config: [`KeyVaultConfig::from_settings`]
//! turns the validated `[keyvault]` section ([`KeyVaultSettings`]) into the
//! runtime form, reading the CA file and the client secret once.
//!
//! Caveats, stated plainly: the SDK returns the value as a plain `String`,
//! which is moved into a [`SecretValue`] at once (and the `String`'s buffer
//! wiped when a copy is needed); the HTTP response bytes the SDK parsed it
//! from are freed by the SDK without being wiped. A VM's IMDS managed
//! identity credential applies its own retry settings to token requests;
//! the outer deadline (`retry_budget`) bounds those too.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    AsyncRawResponse, ClientMethodOptions, ClientOptions, Context, ExponentialRetryOptions,
    HttpClient, Request, RetryOptions, Transport,
};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use url::Url;

use super::{SecretError, SecretFuture, SecretRef, SecretSource, SecretValue};
use crate::config::{
    DEFAULT_KEYVAULT_CACHE_TTL, DEFAULT_KEYVAULT_MAX_RETRIES, DEFAULT_KEYVAULT_REQUEST_TIMEOUT,
    DEFAULT_KEYVAULT_RETRY_BUDGET, KeyVaultAuthSettings, KeyVaultSettings,
};

/// How the worker authenticates to Entra ID for Key Vault. Chosen in config;
/// there is no chain and no fallback.
#[derive(Clone)]
pub enum AzureAuth {
    /// Managed identity of the VM (IMDS) or App Service (`IDENTITY_ENDPOINT`).
    /// The default on an Azure VM.
    ManagedIdentity {
        /// Client id of a user-assigned identity; `None` for system-assigned.
        client_id: Option<String>,
    },
    /// Workload identity federation (AKS): a service-account token file
    /// exchanged for an Entra token. `None` fields come from
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity {
        /// Tenant id.
        tenant_id: Option<String>,
        /// Application (client) id.
        client_id: Option<String>,
        /// Path of the federated token file.
        token_file_path: Option<PathBuf>,
    },
    /// A service principal with a client secret (hosts outside Azure). The
    /// secret itself is loaded by the worker from an `env://` or `file://`
    /// reference before this config is built.
    ClientSecret {
        /// Tenant id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The client secret.
        secret: SecretValue,
    },
    /// The developer's `az login` session (a laptop, never a server).
    AzureCli {
        /// Tenant to request tokens from; `None` for the CLI's default.
        tenant_id: Option<String>,
    },
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureAuth::ManagedIdentity { client_id } => f
                .debug_struct("ManagedIdentity")
                .field("client_id", client_id)
                .finish(),
            AzureAuth::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file_path,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file_path", token_file_path)
                .finish(),
            AzureAuth::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("secret", &"[REDACTED]")
                .finish(),
            AzureAuth::AzureCli { tenant_id } => f
                .debug_struct("AzureCli")
                .field("tenant_id", tenant_id)
                .finish(),
        }
    }
}

/// Settings of the Key Vault source. [`KeyVaultConfig::new`] gives the
/// defaults; tests set `extra_ca_pem`, `resolve_overrides` and
/// `authority_host` to point everything at a local fake vault.
#[derive(Debug, Clone)]
pub struct KeyVaultConfig {
    /// How to get tokens.
    pub auth: AzureAuth,
    /// How long a value read from the vault is reused. Default 5 min.
    pub cache_ttl: Duration,
    /// Time for one HTTP try, connect to last body byte. Default 5 s.
    pub request_timeout: Duration,
    /// Retries after the first try (transport errors, 408, 429, 5xx).
    /// Default 2.
    pub max_retries: u32,
    /// Total time for one load, tries and waits (Retry-After included).
    /// Default 10 s.
    pub retry_budget: Duration,
    /// PEM certificates trusted in addition to the system roots (a private
    /// endpoint behind a TLS-inspecting proxy; the tests' CA).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Host names resolved to fixed addresses instead of DNS. A non-zero
    /// port is used when the URL has none (tests: `myvault.vault.test` ->
    /// `127.0.0.1:port`).
    pub resolve_overrides: Vec<(String, SocketAddr)>,
    /// Entra authority for client-secret and workload-identity tokens;
    /// `None` for the public cloud (`https://login.microsoftonline.com`).
    pub authority_host: Option<Url>,
    /// Require the vault host to be under the domain of the resource in the
    /// vault's authentication challenge (the SDK's protection against sending
    /// tokens to a look-alike host). Default true; never turn it off in
    /// production.
    pub verify_challenge_resource: bool,
    /// `host:port` of the HTTP proxy for the vault and Entra ID
    /// (`keyvault.proxy`); `None`: direct. The managed-identity endpoint
    /// never goes through it.
    pub proxy: Option<String>,
}

impl KeyVaultConfig {
    /// The defaults with the given authentication.
    pub fn new(auth: AzureAuth) -> Self {
        KeyVaultConfig {
            auth,
            cache_ttl: DEFAULT_KEYVAULT_CACHE_TTL,
            request_timeout: DEFAULT_KEYVAULT_REQUEST_TIMEOUT,
            max_retries: DEFAULT_KEYVAULT_MAX_RETRIES,
            retry_budget: DEFAULT_KEYVAULT_RETRY_BUDGET,
            extra_ca_pem: None,
            resolve_overrides: Vec::new(),
            authority_host: None,
            verify_challenge_resource: true,
            proxy: None,
        }
    }

    /// The runtime form of the validated `[keyvault]` section: reads the
    /// `ca_cert` file and, for `client_secret` auth, loads the client secret
    /// from its `env://` or `file://` reference (once, at start-up).
    ///
    /// # Errors
    /// [`KeyVaultErrorKind::Config`] (reference `keyvault`) when the CA file
    /// cannot be read, or [`SecretError`] when the client secret cannot be
    /// loaded. Neither message contains a value.
    pub fn from_settings(settings: &KeyVaultSettings) -> Result<Self, SecretError> {
        let auth = match &settings.auth {
            KeyVaultAuthSettings::ManagedIdentity { client_id } => AzureAuth::ManagedIdentity {
                client_id: client_id.clone(),
            },
            KeyVaultAuthSettings::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => AzureAuth::WorkloadIdentity {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                token_file_path: token_file.clone(),
            },
            KeyVaultAuthSettings::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => AzureAuth::ClientSecret {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                secret: super::load_local_now(secret)?,
            },
            KeyVaultAuthSettings::AzureCli { tenant_id } => AzureAuth::AzureCli {
                tenant_id: tenant_id.clone(),
            },
        };
        let extra_ca_pem = match &settings.ca_cert {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| KeyVaultError {
                reference: "keyvault".into(),
                kind: KeyVaultErrorKind::Config(format!(
                    "keyvault.ca_cert {}: {}",
                    path.display(),
                    e.kind()
                )),
            })?),
        };
        Ok(KeyVaultConfig {
            auth,
            cache_ttl: settings.cache_ttl,
            request_timeout: settings.request_timeout,
            max_retries: settings.max_retries,
            retry_budget: settings.retry_budget,
            extra_ca_pem,
            resolve_overrides: settings
                .resolve
                .iter()
                .map(|(host, addr)| (host.clone(), *addr))
                .collect(),
            authority_host: settings.authority_host.clone(),
            verify_challenge_resource: settings.verify_challenge_resource,
            proxy: settings.proxy.clone(),
        })
    }
}

/// Why a Key Vault secret could not be loaded. `Display` is
/// `keyvault://vault/name: <kind>` and never contains a secret value, a
/// token, a response body or an SDK message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reference}: {kind}")]
pub struct KeyVaultError {
    /// The reference, as written in the config.
    pub reference: String,
    /// What went wrong.
    pub kind: KeyVaultErrorKind,
}

/// The cause of a [`KeyVaultError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVaultErrorKind {
    /// The vault answered with an error status (after retries, for 429/5xx).
    /// `code` is the service's error code (`SecretNotFound`, `Forbidden`) or
    /// the status's reason phrase.
    Status {
        /// HTTP status.
        status: u16,
        /// Service error code or reason phrase.
        code: String,
    },
    /// The vault (or the token endpoint) could not be reached.
    Unreachable(String),
    /// The server's certificate is not trusted (unknown CA, wrong host...).
    UntrustedCertificate,
    /// One try took longer than `request_timeout`.
    TimedOut(Duration),
    /// The whole load took longer than `retry_budget`.
    BudgetExhausted {
        /// The budget.
        budget: Duration,
        /// What the last finished try got, if any.
        last: Option<Box<KeyVaultErrorKind>>,
    },
    /// The credential could not get a token.
    Authentication(String),
    /// The vault's authentication challenge names a resource whose domain
    /// does not contain the vault's host.
    ChallengeMismatch,
    /// The secret exists but has no value.
    NoValue,
    /// The response could not be understood.
    InvalidResponse,
    /// The configuration cannot work (bad vault URL, credential options).
    Config(String),
}

impl fmt::Display for KeyVaultErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyVaultErrorKind::Status { status, code } => write!(f, "{status} {code}"),
            KeyVaultErrorKind::Unreachable(cause) => write!(f, "vault unreachable: {cause}"),
            KeyVaultErrorKind::UntrustedCertificate => f.write_str("untrusted certificate"),
            KeyVaultErrorKind::TimedOut(t) => write!(f, "timed out after {}", secs(*t)),
            KeyVaultErrorKind::BudgetExhausted { budget, last } => {
                write!(f, "gave up after the {} retry budget", secs(*budget))?;
                if let Some(last) = last {
                    write!(f, " (last try: {last})")?;
                }
                Ok(())
            }
            KeyVaultErrorKind::Authentication(cause) => {
                write!(f, "authentication failed: {cause}")
            }
            KeyVaultErrorKind::ChallengeMismatch => f.write_str(
                "the vault's authentication challenge names a resource outside the vault's domain",
            ),
            KeyVaultErrorKind::NoValue => f.write_str("the secret has no value"),
            KeyVaultErrorKind::InvalidResponse => f.write_str("unexpected response from the vault"),
            KeyVaultErrorKind::Config(cause) => write!(f, "configuration: {cause}"),
        }
    }
}

impl KeyVaultErrorKind {
    /// The HTTP status, when the vault answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            KeyVaultErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

type CacheKey = (String, String, Option<String>);

/// Reads secrets from Azure Key Vault. Cheap to share (`Arc`); holds one
/// credential, one HTTP client, one `SecretClient` per vault and the cache.
pub struct KeyVaultSource {
    config: KeyVaultConfig,
    credential: Arc<dyn TokenCredential>,
    client_options: ClientOptions,
    clients: Mutex<HashMap<String, Arc<SecretClient>>>,
    cache: Mutex<HashMap<CacheKey, (SecretValue, Instant)>>,
}

impl fmt::Debug for KeyVaultSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultSource")
            .field("auth", &self.config.auth)
            .finish_non_exhaustive()
    }
}

impl KeyVaultSource {
    /// Builds the HTTP client and the credential. No network traffic happens
    /// until the first [`SecretSource::load`].
    ///
    /// # Errors
    /// [`KeyVaultErrorKind::Config`] (with an empty reference) when the CA
    /// PEM, the authority host or the credential options are unusable.
    pub fn new(config: KeyVaultConfig) -> Result<Self, KeyVaultError> {
        let config_error = |cause: String| KeyVaultError {
            reference: "keyvault".into(),
            kind: KeyVaultErrorKind::Config(cause),
        };
        let transport = |proxy: Option<&str>| {
            build_http_client(&config, proxy).map(|http| {
                Transport::new(Arc::new(KvHttpClient {
                    inner: http,
                    request_timeout: config.request_timeout,
                }))
            })
        };
        // Two clients: the vault's (and Entra ID's) through `keyvault.proxy`
        // when set, and the managed-identity endpoint's, never proxied.
        let proxied = transport(config.proxy.as_deref()).map_err(config_error)?;
        let identity = transport(None).map_err(config_error)?;
        let client_options = ClientOptions {
            transport: Some(proxied),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(200),
                max_retries: config.max_retries,
                max_total_elapsed: to_sdk_duration(config.retry_budget),
                max_delay: azure_core::time::Duration::seconds(2),
            }),
            per_try_policies: vec![Arc::new(LastTryPolicy {
                request_timeout: config.request_timeout,
            })],
            ..Default::default()
        };
        let credential =
            build_credential(&config, &client_options, identity).map_err(config_error)?;
        Ok(KeyVaultSource {
            config,
            credential,
            client_options,
            clients: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The `https://...` URL of a vault named in a reference.
    pub fn vault_url(vault: &str) -> String {
        if vault.contains('.') {
            format!("https://{vault}/")
        } else {
            format!("https://{vault}.vault.azure.net/")
        }
    }

    /// Drops every cached value (e.g. on SIGHUP).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Number of `SecretClient`s created so far (one per vault URL).
    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn client_for(&self, vault_url: &str) -> Result<Arc<SecretClient>, KeyVaultErrorKind> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(vault_url) {
            return Ok(client.clone());
        }
        let options = SecretClientOptions {
            client_options: self.client_options.clone(),
            verify_challenge_resource: Some(self.config.verify_challenge_resource),
            ..Default::default()
        };
        let client = SecretClient::new(vault_url, self.credential.clone(), Some(options))
            .map_err(|_| KeyVaultErrorKind::Config(format!("invalid vault URL {vault_url}")))?;
        let client = Arc::new(client);
        clients.insert(vault_url.to_string(), client.clone());
        Ok(client)
    }

    fn cached(&self, key: &CacheKey) -> Option<SecretValue> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.config.cache_ttl)
            .map(|(value, _)| value.clone())
    }

    async fn fetch(
        &self,
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<SecretValue, KeyVaultErrorKind> {
        let client = self.client_for(&Self::vault_url(vault))?;
        let last = Arc::new(Mutex::new(None::<KeyVaultErrorKind>));
        let options = SecretClientGetSecretOptions {
            secret_version: version.map(str::to_string),
            method_options: ClientMethodOptions {
                context: Context::new().with_value(LastTry(last.clone())),
            },
            ..Default::default()
        };
        let call = async {
            let response = client
                .get_secret(name, Some(options))
                .await
                .map_err(|e| classify(&e, self.config.request_timeout))?;
            let secret = response
                .into_model()
                .map_err(|_| KeyVaultErrorKind::InvalidResponse)?;
            secret
                .value
                .map(SecretValue::new)
                .ok_or(KeyVaultErrorKind::NoValue)
        };
        match tokio::time::timeout(self.config.retry_budget, call).await {
            Ok(result) => result,
            Err(_) => Err(KeyVaultErrorKind::BudgetExhausted {
                budget: self.config.retry_budget,
                last: last
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .map(Box::new),
            }),
        }
    }
}

impl SecretSource for KeyVaultSource {
    fn load<'a>(&'a self, reference: &'a SecretRef) -> SecretFuture<'a> {
        Box::pin(async move {
            let SecretRef::KeyVault {
                vault,
                name,
                version,
            } = reference
            else {
                return Err(SecretError::KeyVault(KeyVaultError {
                    reference: reference.to_string(),
                    kind: KeyVaultErrorKind::Config("not a keyvault:// reference".into()),
                }));
            };
            let key = (vault.clone(), name.clone(), version.clone());
            if let Some(value) = self.cached(&key) {
                return Ok(value);
            }
            let value = self
                .fetch(vault, name, version.as_deref())
                .await
                .map_err(|kind| KeyVaultError {
                    reference: reference.to_string(),
                    kind,
                })?;
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (value.clone(), Instant::now()));
            Ok(value)
        })
    }
}

/// A reqwest client for SDK requests, the credential's token requests
/// included. It ignores `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`: a managed
/// identity's token endpoint is plain HTTP, so a proxy named by the
/// environment would see access tokens. `proxy` (`host:port`, from
/// `keyvault.proxy`) is the only proxy it uses, for every request.
fn build_http_client(
    config: &KeyVaultConfig,
    proxy: Option<&str>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(proxy) = proxy {
        builder = builder.proxy(
            reqwest::Proxy::all(format!("http://{proxy}"))
                .map_err(|e| format!("keyvault.proxy: {e}"))?,
        );
    }
    let mut builder = builder
        .connect_timeout(config.request_timeout)
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none());
    for (host, addr) in &config.resolve_overrides {
        builder = builder.resolve(host, *addr);
    }
    if let Some(pem) = &config.extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|_| "extra_ca_pem holds no usable PEM certificate".to_string())?;
        if certs.is_empty() {
            return Err("extra_ca_pem holds no certificate".into());
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The SDK transport: the reqwest client built by [`build_http_client`],
/// with one change to the SDK's error mapping. A certificate the client does
/// not trust is reported as a non-transport error so that the SDK's retry
/// policy gives up at once (it retries every `Connection`/`Io` error, and a
/// certificate will not become trusted a few hundred milliseconds later).
#[derive(Debug)]
struct KvHttpClient {
    inner: reqwest::Client,
    request_timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for KvHttpClient {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        match self.inner.execute_request(request).await {
            Err(e)
                if transport_cause(&e, self.request_timeout)
                    == Some(KeyVaultErrorKind::UntrustedCertificate) =>
            {
                Err(azure_core::Error::with_error(
                    ErrorKind::Other,
                    e,
                    "untrusted certificate",
                ))
            }
            other => other,
        }
    }
}

/// The credential `config.auth` names, sharing the HTTP client and retry
/// settings where its options allow. Entra ID (client secret, workload
/// identity) is reached like the vault, through `keyvault.proxy` when set;
/// the managed-identity endpoint (IMDS on the VM's link-local address, or
/// App Service's local `IDENTITY_ENDPOINT`) only through `identity`, which
/// has no proxy: the token crosses that hop in plain HTTP.
fn build_credential(
    config: &KeyVaultConfig,
    client_options: &ClientOptions,
    identity: Transport,
) -> Result<Arc<dyn TokenCredential>, String> {
    let mut options = client_options.clone();
    // The per-try observer only matters for vault calls.
    options.per_try_policies.clear();
    if let Some(authority) = &config.authority_host {
        let mut custom = CustomConfiguration::default();
        custom.authority_host = authority.as_str().trim_end_matches('/').to_string();
        options.cloud = Some(Arc::new(CloudConfiguration::from(custom)));
    }
    // Construction errors are about missing ids, paths or environment
    // variables; they never hold a secret.
    let failed = |e: azure_core::Error| format!("cannot create the credential: {e}");
    Ok(match &config.auth {
        AzureAuth::ManagedIdentity { client_id } => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: ClientOptions {
                    transport: Some(identity),
                    ..options
                },
            }))
            .map_err(failed)?
        }
        AzureAuth::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file_path,
        } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: options,
            },
            client_id: client_id.clone(),
            tenant_id: tenant_id.clone(),
            token_file_path: token_file_path.clone(),
        }))
        .map_err(failed)?,
        AzureAuth::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => ClientSecretCredential::new(
            tenant_id,
            client_id.clone(),
            Secret::new(secret.expose().to_string()),
            Some(ClientSecretCredentialOptions {
                client_options: options,
            }),
        )
        .map_err(failed)?,
        AzureAuth::AzureCli { tenant_id } => {
            AzureCliCredential::new(Some(AzureCliCredentialOptions {
                tenant_id: tenant_id.clone(),
                ..Default::default()
            }))
            .map_err(failed)?
        }
    })
}

fn to_sdk_duration(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
}

/// Where [`LastTryPolicy`] writes the outcome of each try of one call.
#[derive(Clone)]
struct LastTry(Arc<Mutex<Option<KeyVaultErrorKind>>>);

/// A per-try policy that remembers how the last try ended, so that a load cut
/// by the retry budget can still say "last try: 429 Too Many Requests".
#[derive(Debug)]
struct LastTryPolicy {
    request_timeout: Duration,
}

#[async_trait::async_trait]
impl Policy for LastTryPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let result = next[0].send(ctx, request, &next[1..]).await;
        if let Some(LastTry(slot)) = ctx.value::<LastTry>() {
            let outcome = match &result {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => {
                    let status = u16::from(response.status());
                    Some(KeyVaultErrorKind::Status {
                        status,
                        code: reason(status),
                    })
                }
                Err(e) => Some(classify(e, self.request_timeout)),
            };
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = outcome;
        }
        result
    }
}

fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_string()
}

/// Turns an SDK error into a [`KeyVaultErrorKind`] without copying any
/// message text that could come from a server.
fn classify(error: &azure_core::Error, request_timeout: Duration) -> KeyVaultErrorKind {
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            KeyVaultErrorKind::Status {
                status,
                code: error_code
                    .as_deref()
                    .filter(|c| is_safe_code(c))
                    .map(str::to_string)
                    .unwrap_or_else(|| reason(status)),
            }
        }
        ErrorKind::Credential => {
            // The inner error says whether the token endpoint answered or not.
            match transport_cause(error, request_timeout) {
                Some(cause) => KeyVaultErrorKind::Authentication(format!("token request: {cause}")),
                None => {
                    let status = inner_status(error)
                        .map(|(s, c)| {
                            // Entra reports numeric codes (7000215 = invalid secret).
                            if c.bytes().all(|b| b.is_ascii_digit() || b == b',') {
                                format!("token request: {s} AADSTS{c}")
                            } else {
                                format!("token request: {s} {c}")
                            }
                        })
                        .unwrap_or_else(|| "no token".into());
                    KeyVaultErrorKind::Authentication(status)
                }
            }
        }
        ErrorKind::Connection | ErrorKind::Io => transport_cause(error, request_timeout)
            .unwrap_or_else(|| KeyVaultErrorKind::Unreachable("I/O error".into())),
        _ => {
            if error
                .to_string()
                .contains("doesn't match the requested domain")
                || error_chain(error)
                    .any(|e| e.to_string().contains("doesn't match the requested domain"))
            {
                KeyVaultErrorKind::ChallengeMismatch
            } else if let Some(cause) = transport_cause(error, request_timeout) {
                cause
            } else {
                KeyVaultErrorKind::InvalidResponse
            }
        }
    }
}

/// Error codes are short identifiers (`SecretNotFound`); anything else is
/// not echoed.
fn is_safe_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn error_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next: Option<&'a (dyn std::error::Error + 'static)> = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        // io::Error::source() skips the error it wraps; look inside it.
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
        Some(current)
    })
}

/// An HTTP status found inside a credential error (the token endpoint's).
fn inner_status(error: &azure_core::Error) -> Option<(u16, String)> {
    error_chain(error).find_map(|e| {
        let e = e.downcast_ref::<azure_core::Error>()?;
        match e.kind() {
            ErrorKind::HttpResponse {
                status, error_code, ..
            } => {
                let status = u16::from(*status);
                let code = error_code
                    .as_deref()
                    .filter(|c| is_safe_code(c))
                    .map(str::to_string)
                    .unwrap_or_else(|| reason(status));
                Some((status, code))
            }
            _ => None,
        }
    })
}

/// Classifies a transport failure found anywhere in the error chain.
fn transport_cause(
    error: &azure_core::Error,
    request_timeout: Duration,
) -> Option<KeyVaultErrorKind> {
    let mut found_reqwest = false;
    let mut timed_out = false;
    let mut connect = false;
    let mut deepest = None;
    for e in error_chain(error) {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_) => {
                    KeyVaultErrorKind::UntrustedCertificate
                }
                other => KeyVaultErrorKind::Unreachable(format!("TLS: {other}")),
            });
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            found_reqwest = true;
            timed_out |= r.is_timeout();
            connect |= r.is_connect();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            deepest = Some(io.kind().to_string());
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        let text = e.to_string();
        if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") {
            return Some(KeyVaultErrorKind::UntrustedCertificate);
        }
        if text.contains("dns error") || text.contains("failed to lookup address") {
            deepest = Some("DNS lookup failed".into());
        }
    }
    if timed_out {
        return Some(KeyVaultErrorKind::TimedOut(request_timeout));
    }
    if found_reqwest || connect || deepest.is_some() {
        let cause = deepest.unwrap_or_else(|| {
            if connect {
                "connection failed".into()
            } else {
                "connection lost".into()
            }
        });
        return Some(KeyVaultErrorKind::Unreachable(cause));
    }
    None
}
