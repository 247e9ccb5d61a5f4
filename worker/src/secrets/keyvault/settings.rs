//! The `[keyvault]` section: its validated form ([`KeyVaultSettings`]),
//! its defaults, its validation ([`KeyVaultSettings::from_section`]), and
//! the runtime form the source is built from ([`KeyVaultConfig`]).
//!
//! The worker's config module parses the TOML into a [`KeyVaultSection`] and hands it
//! here; the rules (explicit credential, ranges, `https://` authority,
//! `resolve` pins, the proxy URL, a client secret only from `env://` or
//! `file://`) live in this file, and config only prefixes each problem with
//! `keyvault.`.
//!
//! It does not talk to the network, build clients or credentials (that is
//! [`super::transport`] and [`super::credential`]), or import the worker's
//! config.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::credential::AzureAuth;
use super::{KeyVaultError, KeyVaultErrorKind};
use crate::secrets::proxy_credentials::{ProxyCredentials, ProxyNamed};
use crate::secrets::{SecretError, SecretRef, SecretValue};

/// Default time a value read from Key Vault is reused before it is read again.
pub const DEFAULT_KEYVAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// Default limit for one HTTP try to Key Vault or the token endpoint.
pub const DEFAULT_KEYVAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of retries after the first try (transport errors, 408, 429, 5xx).
pub const DEFAULT_KEYVAULT_MAX_RETRIES: u32 = 2;
/// Default limit for one credential load, tries and waits included.
pub const DEFAULT_KEYVAULT_RETRY_BUDGET: Duration = Duration::from_secs(10);
/// Highest `keyvault.max_retries` accepted.
pub const MAX_KEYVAULT_RETRIES: u32 = 10;

/// The validated `[keyvault]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultSettings {
    /// How the worker gets Entra ID tokens for Key Vault.
    pub auth: KeyVaultAuthSettings,
    /// How long a value read from the vault is reused; zero disables the cache.
    pub cache_ttl: Duration,
    /// Limit for one HTTP try, connect to last byte.
    pub request_timeout: Duration,
    /// Retries after the first try (transport errors, 408, 429, 5xx; never
    /// 401, 403, 404).
    pub max_retries: u32,
    /// Limit for one load, tries and waits (Retry-After included).
    pub retry_budget: Duration,
    /// An extra trust anchor (PEM) for the vault and the token endpoint,
    /// resolved against the config file's directory.
    pub ca_cert: Option<PathBuf>,
    /// Entra authority for client-secret and workload-identity tokens
    /// (sovereign clouds, tests); `None` for the public cloud.
    pub authority_host: Option<Url>,
    /// Host names pinned to addresses instead of DNS.
    pub resolve: BTreeMap<String, SocketAddr>,
    /// Require the vault's host to lie under the domain of the resource in
    /// its authentication challenge. Keep it on.
    pub verify_challenge_resource: bool,
    /// `proxy = "http://host:port"`: the HTTP proxy for requests to the
    /// vault and to Entra ID (`host:port`); `None`: direct. Never taken from
    /// the environment, and never used for the managed-identity endpoint.
    pub proxy: Option<String>,
    /// `proxy_username` and `proxy_password`: Basic credentials for
    /// `proxy`; `None`: the proxy is asked without credentials.
    pub proxy_credentials: Option<ProxyCredentials>,
}

/// `keyvault.auth`: which credential, chosen explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVaultAuthSettings {
    /// `{ type = "managed_identity", client_id? }`: the VM's (or App
    /// Service's) managed identity; `client_id` picks a user-assigned one.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
    /// `{ type = "workload_identity", tenant_id?, client_id?, token_file? }`:
    /// AKS workload identity; missing values come from `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity {
        /// Tenant id.
        tenant_id: Option<String>,
        /// Application (client) id.
        client_id: Option<String>,
        /// The projected service-account token file.
        token_file: Option<PathBuf>,
    },
    /// `{ type = "client_secret", tenant_id, client_id, secret }`: a service
    /// principal (hosts outside Azure); `secret` is an `env://` or `file://`
    /// reference, never the value.
    ClientSecret {
        /// Tenant id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// Where the client secret is.
        secret: SecretRef,
    },
    /// `{ type = "azure_cli", tenant_id? }`: the `az login` session of a
    /// developer's laptop.
    AzureCli {
        /// Tenant to request tokens from.
        tenant_id: Option<String>,
    },
}

/// The `[keyvault]` section as written in the TOML file, before
/// validation. Unknown keys are refused by the parser.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVaultSection {
    auth: Option<AuthSection>,
    #[serde(default, with = "humantime_serde")]
    cache_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    max_retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    retry_budget: Option<Duration>,
    ca_cert: Option<PathBuf>,
    authority_host: Option<String>,
    #[serde(default)]
    resolve: BTreeMap<String, String>,
    verify_challenge_resource: Option<bool>,
    proxy: Option<String>,
    proxy_username: Option<String>,
    proxy_password: Option<String>,
}

/// `keyvault.auth` as written, tagged by `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
enum AuthSection {
    ManagedIdentity {
        client_id: Option<String>,
    },
    WorkloadIdentity {
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
    },
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: String,
    },
    AzureCli {
        tenant_id: Option<String>,
    },
}

/// One problem in the `[keyvault]` section: the key under `[keyvault]`
/// (`auth.secret`, `resolve.<host>`) and what is wrong. The config module
/// prefixes the section.
pub type SettingProblem = (String, String);

impl KeyVaultSettings {
    /// Validates a parsed `[keyvault]` section: relative paths are resolved
    /// against `base` (the config file's directory), defaults fill what is
    /// not written. `parse_proxy` checks `proxy` and returns its
    /// `host:port`; the worker passes the orchestrator proxy's rule
    /// (`crate::proxy::parse_proxy_url`), handed in so that this module does
    /// not depend on the proxy module, which depends on `secrets`.
    ///
    /// # Errors
    /// Every problem found, each with its key. A client secret written
    /// inline instead of a reference is never echoed.
    pub fn from_section(
        raw: KeyVaultSection,
        base: &Path,
        parse_proxy: fn(&str) -> Result<String, String>,
    ) -> Result<KeyVaultSettings, Vec<SettingProblem>> {
        let mut problems: Vec<SettingProblem> = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push((path.to_string(), message));
        };
        let mut id = |path: &str, value: &Option<String>| {
            if let Some(v) = value
                && (v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_whitespace()))
            {
                problem(path, format!("`{v}` is not a tenant or client id"));
            }
        };
        let auth = match raw.auth {
            None => {
                problem(
                    "auth",
                    "missing; name the credential explicitly, e.g. auth = { type = \"managed_identity\" } on an Azure VM"
                        .into(),
                );
                None
            }
            Some(AuthSection::ManagedIdentity { client_id }) => {
                id("auth.client_id", &client_id);
                Some(KeyVaultAuthSettings::ManagedIdentity { client_id })
            }
            Some(AuthSection::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            }) => {
                id("auth.tenant_id", &tenant_id);
                id("auth.client_id", &client_id);
                Some(KeyVaultAuthSettings::WorkloadIdentity {
                    tenant_id,
                    client_id,
                    token_file: token_file.map(|p| base.join(p)),
                })
            }
            Some(AuthSection::AzureCli { tenant_id }) => {
                id("auth.tenant_id", &tenant_id);
                Some(KeyVaultAuthSettings::AzureCli { tenant_id })
            }
            Some(AuthSection::ClientSecret {
                tenant_id,
                client_id,
                secret,
            }) => {
                id("auth.tenant_id", &Some(tenant_id.clone()));
                id("auth.client_id", &Some(client_id.clone()));
                match secret.parse::<SecretRef>() {
                    Ok(SecretRef::KeyVault { .. }) => {
                        problem(
                            "auth.secret",
                            "the client secret must come from env:// or file://, not from Key Vault itself".into(),
                        );
                        None
                    }
                    Ok(secret) => Some(KeyVaultAuthSettings::ClientSecret {
                        tenant_id,
                        client_id,
                        secret,
                    }),
                    Err(_) => {
                        // Never echo the text: it may be the secret written inline.
                        problem(
                            "auth.secret",
                            "must be an env://NAME or file:///path reference; the secret itself never goes in the config".into(),
                        );
                        None
                    }
                }
            }
        };
        let cache_ttl = raw.cache_ttl.unwrap_or(DEFAULT_KEYVAULT_CACHE_TTL);
        let request_timeout = raw
            .request_timeout
            .unwrap_or(DEFAULT_KEYVAULT_REQUEST_TIMEOUT);
        if request_timeout.is_zero() {
            problem("request_timeout", "must be above zero".into());
        }
        let max_retries = raw.max_retries.unwrap_or(DEFAULT_KEYVAULT_MAX_RETRIES);
        if max_retries > MAX_KEYVAULT_RETRIES {
            problem(
                "max_retries",
                format!("{max_retries} is out of range; use 0..={MAX_KEYVAULT_RETRIES}"),
            );
        }
        let retry_budget = raw.retry_budget.unwrap_or(DEFAULT_KEYVAULT_RETRY_BUDGET);
        if retry_budget < request_timeout {
            problem(
                "retry_budget",
                "must be at least keyvault.request_timeout (one whole try)".into(),
            );
        }
        let authority_host = match raw.authority_host {
            None => None,
            Some(text) => match Url::parse(&text) {
                Ok(url) if url.scheme() == "https" && url.host().is_some() => Some(url),
                _ => {
                    problem(
                        "authority_host",
                        format!(
                            "`{text}` is not an https:// URL (e.g. https://login.microsoftonline.us)"
                        ),
                    );
                    None
                }
            },
        };
        let mut resolve = BTreeMap::new();
        for (host, addr) in raw.resolve {
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            match addr.parse::<SocketAddr>() {
                Ok(addr) if host_ok => {
                    resolve.insert(host.to_ascii_lowercase(), addr);
                }
                Ok(_) => problem(&format!("resolve.{host}"), "not a host name".into()),
                Err(_) => problem(
                    &format!("resolve.{host}"),
                    format!("`{addr}` is not ip:port (e.g. \"10.0.0.5:443\")"),
                ),
            }
        }
        let (proxy, named) = match raw.proxy.as_deref() {
            None => (None, ProxyNamed::No),
            Some(text) => match parse_proxy(text) {
                Ok(authority) => (Some(authority), ProxyNamed::Yes),
                Err(message) => {
                    problem("proxy", message);
                    (None, ProxyNamed::Invalid)
                }
            },
        };
        let proxy_credentials = match ProxyCredentials::from_raw(
            "keyvault",
            named,
            raw.proxy_username.as_deref(),
            raw.proxy_password.as_deref(),
        ) {
            Ok(credentials) => credentials,
            Err(found) => {
                for (key, message) in found {
                    problem(key, message);
                }
                None
            }
        };
        let settings = auth.map(|auth| KeyVaultSettings {
            auth,
            cache_ttl,
            request_timeout,
            max_retries,
            retry_budget,
            ca_cert: raw.ca_cert.map(|p| base.join(p)),
            authority_host,
            resolve,
            verify_challenge_resource: raw.verify_challenge_resource.unwrap_or(true),
            proxy,
            proxy_credentials,
        });
        match settings {
            Some(settings) if problems.is_empty() => Ok(settings),
            _ => Err(problems),
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
    /// Basic credentials for `proxy` (`keyvault.proxy_username` and the
    /// password `keyvault.proxy_password` names, loaded at start-up).
    pub proxy_basic_auth: Option<(String, SecretValue)>,
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
            proxy_basic_auth: None,
        }
    }

    /// The runtime form of the validated `[keyvault]` section: reads the
    /// `ca_cert` file and, for `client_secret` auth, loads the client secret
    /// from its `env://` or `file://` reference (once, at start-up), and so
    /// does the proxy password.
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
                secret: crate::secrets::load_local_now(secret)?,
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
            proxy_basic_auth: match &settings.proxy_credentials {
                Some(c) => Some((
                    c.username.clone(),
                    crate::secrets::load_local_now(&c.password)?,
                )),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> KeyVaultSection {
        toml::from_str(text).expect("the section parses")
    }

    fn no_proxy_allowed(_: &str) -> Result<String, String> {
        Err("proxies are refused in this test".into())
    }

    #[test]
    fn a_section_with_only_the_credential_gets_every_default() {
        let settings = KeyVaultSettings::from_section(
            section("auth = { type = \"managed_identity\" }"),
            Path::new("/etc/pw"),
            no_proxy_allowed,
        )
        .unwrap();
        assert_eq!(
            settings,
            KeyVaultSettings {
                auth: KeyVaultAuthSettings::ManagedIdentity { client_id: None },
                cache_ttl: DEFAULT_KEYVAULT_CACHE_TTL,
                request_timeout: DEFAULT_KEYVAULT_REQUEST_TIMEOUT,
                max_retries: DEFAULT_KEYVAULT_MAX_RETRIES,
                retry_budget: DEFAULT_KEYVAULT_RETRY_BUDGET,
                ca_cert: None,
                authority_host: None,
                resolve: BTreeMap::new(),
                verify_challenge_resource: true,
                proxy: None,
                proxy_credentials: None,
            }
        );
    }

    fn any_proxy(text: &str) -> Result<String, String> {
        Ok(text.trim_start_matches("http://").to_string())
    }

    #[test]
    fn the_proxy_takes_basic_credentials_with_the_password_as_a_reference() {
        let settings = KeyVaultSettings::from_section(
            section(
                "auth = { type = \"managed_identity\" }\n\
                 proxy = \"http://proxy.test:3128\"\n\
                 proxy_username = \"svc-kv\"\n\
                 proxy_password = \"file:///etc/pw/kv-proxy\"",
            ),
            Path::new("/etc/pw"),
            any_proxy,
        )
        .unwrap();
        assert_eq!(
            settings.proxy_credentials,
            Some(ProxyCredentials {
                username: "svc-kv".into(),
                password: SecretRef::File(PathBuf::from("/etc/pw/kv-proxy")),
            })
        );
        for (lines, key) in [
            (
                "proxy = \"http://p:1\"\nproxy_username = \"svc\"\nproxy_password = \"hunter2\"",
                "proxy_password",
            ),
            (
                "proxy = \"http://p:1\"\nproxy_username = \"svc\"",
                "proxy_password",
            ),
            (
                "proxy_username = \"svc\"\nproxy_password = \"env://P\"",
                "proxy_username",
            ),
            (
                "proxy = \"http://p:1\"\nproxy_username = \"svc\"\nproxy_password = \"keyvault://v/pw\"",
                "proxy_password",
            ),
        ] {
            let problems = KeyVaultSettings::from_section(
                section(&format!(
                    "auth = {{ type = \"managed_identity\" }}\n{lines}"
                )),
                Path::new("/etc/pw"),
                any_proxy,
            )
            .unwrap_err();
            let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, [key], "{lines}: {problems:?}");
            assert!(!format!("{problems:?}").contains("hunter2"), "{problems:?}");
        }
    }

    #[test]
    fn problems_are_keyed_inside_the_section_and_the_proxy_rule_is_the_one_handed_in() {
        let problems = KeyVaultSettings::from_section(
            section(
                "auth = { type = \"client_secret\", tenant_id = \"t\", client_id = \"c\", secret = \"sk-live-1\" }\n\
                 max_retries = 11\n\
                 proxy = \"http://proxy.test:3128\"",
            ),
            Path::new("/etc/pw"),
            no_proxy_allowed,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, vec!["auth.secret", "max_retries", "proxy"]);
        assert_eq!(problems[2].1, "proxies are refused in this test");
        assert!(
            problems
                .iter()
                .all(|(_, message)| !message.contains("sk-live")),
            "{problems:?}"
        );
    }
}
