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
//! # Files
//! - `mod.rs` (this file): [`KeyVaultSource`]: one client per vault, the
//!   TTL cache, and one load under the `retry_budget` deadline. It does not
//!   build clients or credentials, and does not read errors apart.
//! - [`settings`]: the `[keyvault]` section ([`KeyVaultSettings`]), its
//!   defaults and validation, and the runtime [`KeyVaultConfig`]. It does not
//!   touch the network.
//! - [`credential`]: the one credential the config names ([`AzureAuth`]),
//!   with no chain and no fallback. It does not choose a proxy.
//! - [`transport`]: the SDK's HTTP transport (`reqwest` clients with
//!   timeouts, the extra CA, DNS pins), the retry options and the proxy rule:
//!   `[keyvault] proxy` for the vault and Entra ID, never for the
//!   managed-identity endpoint, never the environment's. It does not
//!   classify errors.
//! - [`classify`]: [`KeyVaultError`] and what each failure is (retried,
//!   not found, denied, fatal), read from SDK errors without copying a
//!   server's text. It does not retry anything itself.
//!
//! # What it does not do
//! It does not fall back to another source or another credential, write to
//! the vault, list secrets, or log a value, a token or a response body. It
//! does not parse the worker's config file: the config module hands it the
//! parsed `[keyvault]` section ([`KeyVaultSection`]) and
//! [`KeyVaultConfig::from_settings`] turns the validated settings into the
//! runtime form, reading the CA file and the client secret once.
//!
//! Caveats, stated plainly: the SDK returns the value as a plain `String`,
//! which is moved into a [`SecretValue`] at once (and the `String`'s buffer
//! wiped when a copy is needed); the HTTP response bytes the SDK parsed it
//! from are freed by the SDK without being wiped. A VM's IMDS managed
//! identity credential applies its own retry settings to token requests;
//! the outer deadline (`retry_budget`) bounds those too.

pub mod classify;
pub mod credential;
pub mod settings;
pub mod transport;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientMethodOptions, ClientOptions, Context};
use azure_security_keyvault_secrets::models::SecretClientGetSecretOptions;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};

use super::{SecretError, SecretFuture, SecretRef, SecretSource, SecretValue};
use classify::classify;
pub use classify::{FailureClass, KeyVaultError, KeyVaultErrorKind};
pub use credential::AzureAuth;
pub use settings::{
    DEFAULT_KEYVAULT_CACHE_TTL, DEFAULT_KEYVAULT_MAX_RETRIES, DEFAULT_KEYVAULT_REQUEST_TIMEOUT,
    DEFAULT_KEYVAULT_RETRY_BUDGET, KeyVaultAuthSettings, KeyVaultConfig, KeyVaultSection,
    KeyVaultSettings, MAX_KEYVAULT_RETRIES,
};
use transport::LastTry;

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
        let transport::SdkOptions {
            client_options,
            identity,
        } = transport::SdkOptions::new(&config).map_err(config_error)?;
        let credential = credential::build_credential(&config, &client_options, identity)
            .map_err(config_error)?;
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
