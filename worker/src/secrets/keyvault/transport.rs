//! The SDK's HTTP transport for Key Vault and its token requests: the
//! `reqwest` clients (per-try and connect timeouts, no redirects, the extra
//! CA, DNS pins), the retry options, and the proxy rule.
//!
//! The proxy rule: the vault and Entra ID are reached through
//! `[keyvault] proxy` (with its Basic credentials, if any) when it is set
//! and directly otherwise; the
//! managed-identity endpoint (IMDS, or App Service's `IDENTITY_ENDPOINT`)
//! is always reached directly, because the token crosses that hop in plain
//! HTTP. `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` are never read.
//!
//! It does not choose the credential ([`super::credential`]) or say what a
//! failure means ([`super::classify`]); the one classification it applies
//! is to keep the SDK from retrying a failure that cannot get better (an
//! untrusted certificate).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    AsyncRawResponse, ClientOptions, Context, ExponentialRetryOptions, HttpClient, Request,
    RetryOptions, Transport,
};

use super::KeyVaultConfig;
use super::classify::{FailureClass, KeyVaultErrorKind, classify, reason, transport_cause};

/// What the SDK is given: the options for the vault's client (and for the
/// credential, which takes what its options accept), and the transport for
/// the managed-identity endpoint.
pub(super) struct SdkOptions {
    /// Vault (and Entra ID) requests: through `keyvault.proxy` when set,
    /// with the retry options and the per-try observer.
    pub(super) client_options: ClientOptions,
    /// The managed-identity endpoint's transport: never proxied.
    pub(super) identity: Transport,
}

impl SdkOptions {
    /// Builds both HTTP clients and the retry options from `config`.
    ///
    /// # Errors
    /// A message (no secret in it) when the proxy, the CA PEM or the client
    /// settings are unusable.
    pub(super) fn new(config: &KeyVaultConfig) -> Result<Self, String> {
        let transport = |proxy: Option<&str>| {
            build_http_client(config, proxy).map(|http| {
                Transport::new(Arc::new(KvHttpClient {
                    inner: http,
                    request_timeout: config.request_timeout,
                }))
            })
        };
        // Two clients: the vault's (and Entra ID's) through `keyvault.proxy`
        // when set, and the managed-identity endpoint's, never proxied.
        let proxied = transport(config.proxy.as_deref())?;
        let identity = transport(None)?;
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
        Ok(SdkOptions {
            client_options,
            identity,
        })
    }
}

/// A reqwest client for SDK requests, the credential's token requests
/// included. It ignores `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`: a managed
/// identity's token endpoint is plain HTTP, so a proxy named by the
/// environment would see access tokens. `proxy` (`host:port`, from
/// `keyvault.proxy`) is the only proxy it uses, for every request, with
/// the Basic credentials of `keyvault.proxy_username`/`proxy_password`
/// when they are set.
fn build_http_client(
    config: &KeyVaultConfig,
    proxy: Option<&str>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(proxy) = proxy {
        let mut rule = reqwest::Proxy::all(format!("http://{proxy}"))
            .map_err(|e| format!("keyvault.proxy: {e}"))?;
        if let Some((user, password)) = &config.proxy_basic_auth {
            // reqwest marks the Proxy-Authorization header sensitive.
            rule = rule.basic_auth(user, password.expose());
        }
        builder = builder.proxy(rule);
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
/// with one change to the SDK's error mapping. A transport failure that
/// [`super::classify`] does not class as [`FailureClass::Retried`] (today:
/// a certificate the client does not trust) is reported as a non-transport
/// error so that the SDK's retry policy gives up at once (it retries every
/// `Connection`/`Io` error, and a certificate will not become trusted a few
/// hundred milliseconds later).
#[derive(Debug)]
struct KvHttpClient {
    inner: reqwest::Client,
    request_timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for KvHttpClient {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        match self.inner.execute_request(request).await {
            Err(e) => match transport_cause(&e, self.request_timeout) {
                Some(cause) if cause.class() != FailureClass::Retried => Err(
                    azure_core::Error::with_error(ErrorKind::Other, e, cause.to_string()),
                ),
                _ => Err(e),
            },
            ok => ok,
        }
    }
}

fn to_sdk_duration(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
}

/// Where [`LastTryPolicy`] writes the outcome of each try of one call.
#[derive(Clone)]
pub(super) struct LastTry(pub(super) Arc<Mutex<Option<KeyVaultErrorKind>>>);

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
