//! Credentials from the worker's environment variables (`env://NAME`).
//!
//! Reads the variable on every load, so a restart with a new environment is
//! all a rotation needs. Does not cache and does not fall back to anything.

use super::{SecretError, SecretFuture, SecretRef, SecretSource, SecretValue};

/// Reads `env://NAME` from the process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvSource;

impl EnvSource {
    /// Reads the variable now (no runtime needed).
    ///
    /// # Errors
    /// [`SecretError::EnvMissing`] when it is not set or not UTF-8, or
    /// [`SecretError::Unsupported`] for a reference of another scheme.
    pub fn load_now(reference: &SecretRef) -> Result<SecretValue, SecretError> {
        let SecretRef::Env(name) = reference else {
            return Err(SecretError::Unsupported {
                reference: reference.clone(),
                reason: "not an env:// reference",
            });
        };
        std::env::var(name)
            .map(SecretValue::new)
            .map_err(|_| SecretError::EnvMissing {
                reference: reference.clone(),
            })
    }
}

impl SecretSource for EnvSource {
    fn load<'a>(&'a self, reference: &'a SecretRef) -> SecretFuture<'a> {
        Box::pin(async move { EnvSource::load_now(reference) })
    }
}
