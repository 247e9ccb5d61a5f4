//! Credentials: where they come from and the type that holds them.
//!
//! A task names its credential by a [`SecretRef`] (`env://NAME`,
//! `file:///path`, `keyvault://vault/name[/version]`). At execution time the
//! worker asks [`Secrets`] for it; [`Secrets`] hands the reference to the
//! one [`SecretSource`] for its scheme (one module per source: [`env`],
//! [`file`], [`keyvault`]). There is no fallback from one source to
//! another: a reference names exactly one place, and a `keyvault://`
//! reference on a worker without a `[keyvault]` section fails
//! ([`SecretError::KeyVaultNotConfigured`]; config validation reports it
//! first).
//!
//! Values live in [`SecretValue`], whose `Debug` never shows them and which
//! is wiped from memory on drop. This module does not decide where a value
//! goes: only the executor exposes it, to put it on a request. Every value
//! loaded is handed to [`mask`], which removes it, raw and encoded, from
//! outputs, errors, audit records and logs.

pub mod env;
pub mod file;
pub mod keyvault;
pub mod mask;
pub mod proxy_credentials;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

pub use env::EnvSource;
pub use file::FileSource;
pub use keyvault::{KeyVaultError, KeyVaultErrorKind, KeyVaultSource};

/// Where one credential lives. Parsed from the config; carries no value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretRef {
    /// `env://NAME`: the environment variable `NAME` of the worker process.
    Env(String),
    /// `file:///abs/path`: the whole file, trailing newline removed. A
    /// relative form `file://name` is looked up in systemd's
    /// `$CREDENTIALS_DIRECTORY`.
    File(PathBuf),
    /// `keyvault://<vault>/<name>[/<version>]`. `vault` is a bare vault
    /// name (`https://<vault>.vault.azure.net`) or a host name with a dot
    /// (`https://<host>`, for sovereign clouds, private endpoints and
    /// tests). Without `version` the latest version is read.
    KeyVault {
        /// Vault name or host, lower case.
        vault: String,
        /// Secret name.
        name: String,
        /// Secret version; `None` means the latest.
        version: Option<String>,
    },
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env://{name}"),
            SecretRef::File(path) => write!(f, "file://{}", path.display()),
            SecretRef::KeyVault {
                vault,
                name,
                version,
            } => {
                write!(f, "keyvault://{vault}/{name}")?;
                if let Some(version) = version {
                    write!(f, "/{version}")?;
                }
                Ok(())
            }
        }
    }
}

/// A secret reference that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{reference}` is not a secret reference: {reason} (use env://NAME, file:///path or keyvault://vault/name[/version])"
)]
pub struct SecretRefError {
    reference: String,
    reason: &'static str,
}

impl FromStr for SecretRef {
    type Err = SecretRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| SecretRefError {
            reference: s.to_string(),
            reason,
        };
        if let Some(name) = s.strip_prefix("env://") {
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            return if valid {
                Ok(SecretRef::Env(name.to_string()))
            } else {
                Err(fail(
                    "an environment variable name has only letters, digits and _",
                ))
            };
        }
        if let Some(path) = s.strip_prefix("file://") {
            return if path.is_empty() || path.contains('\0') {
                Err(fail("the path is empty"))
            } else {
                Ok(SecretRef::File(PathBuf::from(path)))
            };
        }
        if let Some(rest) = s.strip_prefix("keyvault://") {
            return parse_keyvault(rest).map_err(fail);
        }
        // Without a known scheme the text may be a credential pasted in
        // by mistake: never echo it back.
        Err(SecretRefError {
            reference: "<hidden>".to_string(),
            reason: "unknown scheme (the value is not shown in case it is a credential)",
        })
    }
}

impl SecretRef {
    /// Whether this reference names a Key Vault secret.
    pub fn is_keyvault(&self) -> bool {
        matches!(self, SecretRef::KeyVault { .. })
    }
}

/// Parses what follows `keyvault://`, with Key Vault's naming rules (vault
/// 3-24 letters, digits and `-`; secret 1-127 letters, digits and `-`;
/// version letters and digits), or a host name for the vault.
fn parse_keyvault(rest: &str) -> Result<SecretRef, &'static str> {
    let mut parts = rest.split('/');
    let vault = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    let version = parts.next().filter(|v| !v.is_empty());
    if parts.next().is_some() {
        return Err("expected keyvault://vault/name[/version]");
    }
    let alnum_dash = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if vault.contains('.') {
        // A host name, optionally with a port (tests, private endpoints).
        let (host, port) = match vault.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (vault, None),
        };
        let host_ok = host
            .split('.')
            .all(|label| !label.is_empty() && alnum_dash(label));
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
        if !host_ok || !port_ok {
            return Err("the vault host is not a valid host name");
        }
    } else if !(3..=24).contains(&vault.len()) || !alnum_dash(vault) {
        return Err("a vault name has 3-24 letters, digits and -");
    }
    if name.is_empty() || name.len() > 127 || !alnum_dash(name) {
        return Err("a secret name has 1-127 letters, digits and -");
    }
    if let Some(v) = version
        && !v.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err("a secret version has only letters and digits");
    }
    Ok(SecretRef::KeyVault {
        vault: vault.to_ascii_lowercase(),
        name: name.to_string(),
        version: version.map(str::to_string),
    })
}

/// A credential's value. `Debug` shows `[REDACTED]`; the bytes are zeroed
/// when it is dropped.
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    /// Wraps a value, taking ownership of its buffer. When the buffer has
    /// spare capacity (which `String -> Box<str>` would reallocate without
    /// wiping), the value is copied into an exact-size buffer and the
    /// original is zeroed first.
    pub fn new(mut value: String) -> Self {
        let boxed: Box<str> = if value.capacity() == value.len() {
            value.into_boxed_str()
        } else {
            let exact = Box::from(value.as_str());
            value.zeroize();
            exact
        };
        SecretValue(SecretString::from(boxed))
    }

    /// The value itself. Call only where the value is put on a request or
    /// used for redaction, never to log or return it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([REDACTED])")
    }
}

/// Why a credential could not be loaded. The message names the reference
/// and the cause, never a value. Every variant fails the task that needed
/// the credential (`credential_unavailable`); the worker keeps serving
/// other tasks.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or not UTF-8).
    #[error("{reference}: environment variable is not set")]
    EnvMissing {
        /// The reference.
        reference: SecretRef,
    },
    /// The file could not be read.
    #[error("{reference}: {cause}")]
    FileUnreadable {
        /// The reference.
        reference: SecretRef,
        /// The I/O error's description.
        cause: String,
    },
    /// The value is empty, which is never a usable credential.
    #[error("{reference}: the value is empty")]
    Empty {
        /// The reference.
        reference: SecretRef,
    },
    /// The Key Vault source failed. Its `Display` already names the
    /// reference (`keyvault://vault/name: 403 Forbidden`); the variant says
    /// what to fix (permissions, the name, the network, the settings).
    #[error(transparent)]
    KeyVault(#[from] KeyVaultError),
    /// A `keyvault://` reference on a worker whose config has no
    /// `[keyvault]` section. Add the section; nothing falls back.
    #[error("{reference}: no [keyvault] section in the worker config")]
    KeyVaultNotConfigured {
        /// The reference.
        reference: SecretRef,
    },
    /// The reference's scheme cannot be used here (the Key Vault client
    /// secret must come from `env://` or `file://`).
    #[error("{reference}: {reason}")]
    Unsupported {
        /// The reference.
        reference: SecretRef,
        /// Why.
        reason: &'static str,
    },
}

/// The future a [`SecretSource`] returns.
pub type SecretFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SecretValue, SecretError>> + Send + 'a>>;

/// One place credentials come from.
pub trait SecretSource: Send + Sync {
    /// Loads the value `reference` names. Called at execution time, for
    /// every task that needs it (a source may cache).
    fn load<'a>(&'a self, reference: &'a SecretRef) -> SecretFuture<'a>;
}

/// Loads an `env://` or `file://` reference at once, without a runtime:
/// used at start-up for the credential that unlocks Key Vault itself.
///
/// # Errors
/// [`SecretError`] from the source; [`SecretError::Unsupported`] for a
/// `keyvault://` reference (Key Vault cannot hold its own key).
pub fn load_local_now(reference: &SecretRef) -> Result<SecretValue, SecretError> {
    let value = match reference {
        SecretRef::Env(_) => EnvSource::load_now(reference)?,
        SecretRef::File(_) => FileSource::from_environment().load_now(reference)?,
        SecretRef::KeyVault { .. } => {
            return Err(SecretError::Unsupported {
                reference: reference.clone(),
                reason: "the Key Vault client secret must come from env:// or file://",
            });
        }
    };
    if value.expose().is_empty() {
        return Err(SecretError::Empty {
            reference: reference.clone(),
        });
    }
    mask::remember(&value);
    Ok(value)
}

/// Reads every `env://` and `file://` credential among `references` (the
/// ones the config's tasks name), only so that [`mask`] knows them from the
/// start: an error message or a log line about a task refused before its
/// credential was loaded (or an output of another task) is masked too. A
/// value that cannot be read is skipped here; the task that needs it fails
/// as before. Key Vault values are known once fetched.
fn remember_local_values<'a>(references: impl IntoIterator<Item = &'a SecretRef>) {
    for reference in references {
        if !reference.is_keyvault() {
            let _ = load_local_now(reference);
        }
    }
}

/// Routes each reference to the source for its scheme.
#[derive(Clone)]
pub struct Secrets {
    env: Arc<dyn SecretSource>,
    file: Arc<dyn SecretSource>,
    keyvault: Option<Arc<dyn SecretSource>>,
}

impl Default for Secrets {
    /// Environment and files only; `keyvault://` references fail with
    /// [`SecretError::KeyVaultNotConfigured`].
    fn default() -> Self {
        Secrets {
            env: Arc::new(EnvSource),
            file: Arc::new(FileSource::from_environment()),
            keyvault: None,
        }
    }
}

impl Secrets {
    /// The sources a config asks for: environment and files always, Key
    /// Vault when `keyvault` (the config's `[keyvault]` section) is given.
    /// `references` are the credentials the config's tasks name: the local
    /// ones are read once now so that [`mask`] knows them from the start.
    /// Builds the Key Vault credential and HTTP client (no network traffic
    /// yet).
    ///
    /// # Errors
    /// [`SecretError`] when the `[keyvault]` settings cannot be turned into
    /// a client: the CA file is unreadable, the client secret cannot be
    /// loaded, or the SDK refuses the credential options.
    pub fn new<'a>(
        keyvault: Option<&keyvault::KeyVaultSettings>,
        references: impl IntoIterator<Item = &'a SecretRef>,
    ) -> Result<Self, SecretError> {
        remember_local_values(references);
        let mut secrets = Secrets::default();
        if let Some(settings) = keyvault {
            let kv_config = keyvault::KeyVaultConfig::from_settings(settings)?;
            secrets.keyvault = Some(Arc::new(KeyVaultSource::new(kv_config)?));
        }
        Ok(secrets)
    }

    /// Replaces the Key Vault source (tests and embedders).
    pub fn with_keyvault(mut self, source: Arc<dyn SecretSource>) -> Self {
        self.keyvault = Some(source);
        self
    }

    /// Loads one credential from the source its reference names.
    ///
    /// # Errors
    /// [`SecretError`] from that source; there is no fallback.
    pub async fn load(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        let value = match reference {
            SecretRef::Env(_) => self.env.load(reference).await?,
            SecretRef::File(_) => self.file.load(reference).await?,
            SecretRef::KeyVault { .. } => match &self.keyvault {
                Some(source) => source.load(reference).await?,
                None => {
                    return Err(SecretError::KeyVaultNotConfigured {
                        reference: reference.clone(),
                    });
                }
            },
        };
        if value.expose().is_empty() {
            return Err(SecretError::Empty {
                reference: reference.clone(),
            });
        }
        mask::remember(&value);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_by_scheme_and_print_back() {
        for text in [
            "env://CRM_TOKEN",
            "file:///run/secrets/crm",
            "file://crm-token",
            "keyvault://myvault/crm-token",
            "keyvault://myvault/crm-token/0123456789abcdef0123456789abcdef",
            "keyvault://myvault.vault.test:8443/crm-token",
            "keyvault://kv.vault.usgovcloudapi.net/erp-password",
        ] {
            let r: SecretRef = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
        }
        assert_eq!(
            "env://A_1".parse::<SecretRef>().unwrap(),
            SecretRef::Env("A_1".into())
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let err = "sk-live-pasted-by-mistake"
            .parse::<SecretRef>()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-live"), "{err}");
        assert!(err.contains("unknown scheme"), "{err}");
        for text in [
            "env://",
            "env://A-B",
            "file://",
            "keyvault://",
            "keyvault://myvault",
            "keyvault://myvault/",
            "keyvault://ab/name",
            "keyvault://a_b_c/name",
            "keyvault://myvault/bad_name",
            "keyvault://myvault/name/v-1",
            "keyvault://myvault/name/v1/extra",
            "keyvault://my..host/name",
            "keyvault://host.test:0/name",
            "keyvault://host.test:99999/name",
        ] {
            let err = text.parse::<SecretRef>().unwrap_err().to_string();
            assert!(err.contains(text), "{err}");
        }
    }

    #[test]
    fn a_keyvault_reference_splits_into_vault_name_and_version() {
        assert_eq!(
            "keyvault://MyVault/crm-token/abc123"
                .parse::<SecretRef>()
                .unwrap(),
            SecretRef::KeyVault {
                vault: "myvault".into(),
                name: "crm-token".into(),
                version: Some("abc123".into()),
            }
        );
        let latest: SecretRef = "keyvault://myvault/crm-token/".parse().unwrap();
        assert_eq!(latest.to_string(), "keyvault://myvault/crm-token");
        assert!(latest.is_keyvault());
        assert!(!SecretRef::Env("X".into()).is_keyvault());
    }

    #[tokio::test]
    async fn a_keyvault_reference_without_a_keyvault_section_fails_and_falls_back_to_nothing() {
        let reference: SecretRef = "keyvault://myvault/crm-token".parse().unwrap();
        let err = Secrets::default().load(&reference).await.unwrap_err();
        assert!(
            matches!(err, SecretError::KeyVaultNotConfigured { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "keyvault://myvault/crm-token: no [keyvault] section in the worker config"
        );
    }

    #[test]
    fn the_keyvault_client_secret_cannot_come_from_keyvault() {
        let reference: SecretRef = "keyvault://myvault/sp-secret".parse().unwrap();
        let err = load_local_now(&reference).unwrap_err();
        assert!(err.to_string().contains("env:// or file://"), "{err}");
    }

    #[test]
    fn a_secret_value_keeps_its_content_whatever_the_buffer_capacity() {
        let mut roomy = String::with_capacity(64);
        roomy.push_str("abc");
        assert_eq!(SecretValue::new(roomy).expose(), "abc");
        assert_eq!(SecretValue::new("exact".to_string()).expose(), "exact");
    }

    #[test]
    fn a_secret_value_never_shows_in_debug() {
        let v = SecretValue::new("hunter2-very-secret".into());
        let shown = format!("{v:?} {:?}", Some(v.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(v.expose(), "hunter2-very-secret");
    }
}
