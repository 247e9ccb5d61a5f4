//! Which credential gets the Entra ID token for Key Vault: exactly the one
//! the config names ([`AzureAuth`]), built once with the shared HTTP
//! transport and retry settings where its options take them.
//!
//! It does not fall back from one credential to another (there is no
//! chain), choose a proxy or build HTTP clients ([`super::transport`] hands
//! it the proxied options and the never-proxied managed-identity
//! transport), or log a token or a secret.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};

use super::KeyVaultConfig;
use crate::secrets::SecretValue;

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

/// The credential `config.auth` names, sharing the HTTP client and retry
/// settings where its options allow. Entra ID (client secret, workload
/// identity) is reached like the vault, through `keyvault.proxy` when set;
/// the managed-identity endpoint (IMDS on the VM's link-local address, or
/// App Service's local `IDENTITY_ENDPOINT`) only through `identity`, which
/// has no proxy: the token crosses that hop in plain HTTP.
pub(super) fn build_credential(
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
