//! Credentials: where they come from and the type that holds them.
//!
//! A task names its credential by a [`SecretRef`] (`env://NAME`,
//! `file:///path`). At execution time the worker asks [`Secrets`] for it;
//! [`Secrets`] hands the reference to the one [`SecretSource`] for its
//! scheme (one module per source). There is no fallback from one source to
//! another: a reference names exactly one place.
//!
//! Values live in [`SecretValue`], whose `Debug` never shows them and which
//! is wiped from memory on drop. This module does not decide where a value
//! goes: only the executor exposes it, to put it on a request and to redact
//! it from what comes back.

mod env;
mod file;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

pub use env::EnvSource;
pub use file::FileSource;

/// Where one credential lives. Parsed from the config; carries no value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretRef {
    /// `env://NAME`: the environment variable `NAME` of the worker process.
    Env(String),
    /// `file:///abs/path`: the whole file, trailing newline removed. A
    /// relative form `file://name` is looked up in systemd's
    /// `$CREDENTIALS_DIRECTORY`.
    File(PathBuf),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env://{name}"),
            SecretRef::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

/// A secret reference that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{reference}` is not a secret reference: {reason} (use env://NAME or file:///path)")]
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
        Err(fail("unknown scheme"))
    }
}

/// A credential's value. `Debug` shows `[REDACTED]`; the bytes are zeroed
/// when it is dropped.
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        SecretValue(SecretString::from(value))
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

/// Routes each reference to the source for its scheme.
#[derive(Clone)]
pub struct Secrets {
    env: Arc<dyn SecretSource>,
    file: Arc<dyn SecretSource>,
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets {
            env: Arc::new(EnvSource),
            file: Arc::new(FileSource::from_environment()),
        }
    }
}

impl Secrets {
    /// Loads one credential from the source its reference names.
    ///
    /// # Errors
    /// [`SecretError`] from that source; there is no fallback.
    pub async fn load(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        let value = match reference {
            SecretRef::Env(_) => self.env.load(reference).await?,
            SecretRef::File(_) => self.file.load(reference).await?,
        };
        if value.expose().is_empty() {
            return Err(SecretError::Empty {
                reference: reference.clone(),
            });
        }
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
        for text in ["CRM_TOKEN", "env://", "env://A-B", "vault://x", "file://"] {
            let err = text.parse::<SecretRef>().unwrap_err().to_string();
            assert!(err.contains(text), "{err}");
        }
    }

    #[test]
    fn a_secret_value_never_shows_in_debug() {
        let v = SecretValue::new("hunter2-very-secret".into());
        let shown = format!("{v:?} {:?}", Some(v.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(v.expose(), "hunter2-very-secret");
    }
}
