//! Credentials from the worker's environment variables (`env://NAME`).
//!
//! Reads the variable on every load, so a restart with a new environment is
//! all a rotation needs. Does not cache and does not fall back to anything.

use super::{SecretError, SecretFuture, SecretRef, SecretSource, SecretValue};

/// Reads `env://NAME` from the process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvSource;

impl SecretSource for EnvSource {
    fn load<'a>(&'a self, reference: &'a SecretRef) -> SecretFuture<'a> {
        Box::pin(async move {
            let SecretRef::Env(name) = reference else {
                unreachable!("Secrets routes only env:// references here");
            };
            std::env::var(name)
                .map(SecretValue::new)
                .map_err(|_| SecretError::EnvMissing {
                    reference: reference.clone(),
                })
        })
    }
}
