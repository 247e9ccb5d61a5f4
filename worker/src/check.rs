//! `private-worker --check`: validates the config, the TLS files, the audit
//! log and every credential reference without connecting to anything but
//! the secret sources (Azure Key Vault included, through the same
//! `[keyvault]` settings the worker uses), and prints a report: which
//! reference resolved (with its length) and which failed and why. It never
//! prints a credential's value. It does not dial the orchestrator. It says
//! whether the local kill switch is on, and which file it is, and which
//! HTTP proxy (or none, and why) the orchestrator stream will go through.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::config::Config;
use crate::secrets::keyvault::KeyVaultAuthSettings;
use crate::secrets::{SecretRef, Secrets};

/// The result of a check: one line per item, and whether all passed.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Lines for a person, each starting with `ok` or `FAIL`.
    pub lines: Vec<String>,
    /// True when nothing failed.
    pub passed: bool,
}

impl CheckReport {
    fn item(&mut self, ok: bool, text: String) {
        self.lines
            .push(format!("{} {text}", if ok { "ok  " } else { "FAIL" }));
        self.passed &= ok;
    }
}

/// Checks everything a start would need, beyond what config parsing checked.
pub async fn check(config: &Config) -> CheckReport {
    let mut report = CheckReport {
        passed: true,
        ..CheckReport::default()
    };
    report.item(
        true,
        format!(
            "config: {} task(s) allowed, orchestrator {} (expects certificate name {})",
            config.tasks.len(),
            config.orchestrator.address,
            config.orchestrator.server_name
        ),
    );
    check_route(config, &mut report);
    match crate::tls::ClientTls::load(&config.tls, &config.orchestrator.server_name) {
        Ok(tls) => {
            let cert = tls.certificate();
            let left = cert.expires_in(std::time::SystemTime::now());
            let expiry = if left.is_zero() {
                "EXPIRED: renew it (certs-tool renew)".to_string()
            } else if left < config.tls_rotation.expiry_warning {
                format!(
                    "expires in {} day(s), within tls.expiry_warning: renew it (certs-tool renew)",
                    left.as_secs() / 86_400
                )
            } else {
                format!("{} day(s) left", left.as_secs() / 86_400)
            };
            report.item(
                !left.is_zero(),
                format!(
                    "tls: certificate {} identity {} serial {} not_after {} ({expiry}); files re-read every {:?}",
                    config.tls.cert.display(),
                    tls.identity(),
                    cert.serial,
                    cert.not_after_rfc3339,
                    config.tls_rotation.reload_interval,
                ),
            );
        }
        Err(e) => report.item(false, format!("tls: {e}")),
    }
    if config.audit_log.exists() {
        match crate::audit::verify_file(&config.audit_log) {
            Ok((n, _)) => report.item(
                true,
                format!(
                    "audit log {}: {n} record(s), chain intact",
                    config.audit_log.display()
                ),
            ),
            Err(crate::audit::AuditError::Broken { line, .. })
                if crate::audit::unterminated_last_line(&config.audit_log)
                    .is_ok_and(|torn| torn == Some(line)) =>
            {
                report.item(
                    true,
                    format!(
                        "audit log {}: every record intact but the last one (line {line}), torn by a crash; the next start cuts it back (it was never sent)",
                        config.audit_log.display()
                    ),
                );
            }
            Err(e) => report.item(false, format!("audit log: {e}")),
        }
    } else {
        report.item(
            true,
            format!("audit log {}: will be created", config.audit_log.display()),
        );
    }
    // Informational either way: a switch that is on is the operator's
    // choice, not a broken install.
    let kill_switch = config.kill_switch.display();
    if config.kill_switch.exists() {
        report.item(
            true,
            format!("kill switch {kill_switch}: ON (the file exists): every assignment is refused (kill_switch) and nothing runs until it is removed"),
        );
    } else {
        report.item(
            true,
            format!("kill switch {kill_switch}: off (create the file to refuse every assignment)"),
        );
    }
    check_approvals(config, &mut report);
    let journal = config.journal.display();
    match crate::journal::inspect(&config.journal) {
        Ok(crate::journal::Inspection::Missing) => {
            report.item(true, format!("journal {journal}: will be created"));
        }
        Ok(crate::journal::Inspection::InUse) => report.item(
            true,
            format!("journal {journal}: in use by a running worker (one process per journal)"),
        ),
        Ok(crate::journal::Inspection::Readable {
            task_ids,
            unacknowledged,
        }) => report.item(
            true,
            format!(
                "journal {journal}: {task_ids} task id(s) remembered, {unacknowledged} not yet acknowledged (sent or resolved at the next start)"
            ),
        ),
        Err(e) => report.item(
            false,
            format!("{e} (after a crash the worker's start recovers the file; this check only reads it)"),
        ),
    }
    let references: BTreeSet<SecretRef> = config
        .tasks
        .values()
        .filter_map(|t| t.executor.secret().cloned())
        .collect();
    let mut keyvault_broken = false;
    let secrets = match Secrets::new(config.keyvault.as_ref(), config.secret_refs()) {
        Ok(secrets) => {
            if let Some(kv) = &config.keyvault {
                report.item(
                    true,
                    format!(
                        "keyvault: {} credential, cache {:?}, {:?} per try, {} retries, {:?} budget",
                        auth_kind(&kv.auth),
                        kv.cache_ttl,
                        kv.request_timeout,
                        kv.max_retries,
                        kv.retry_budget
                    ),
                );
            }
            secrets
        }
        Err(e) => {
            // The Key Vault source cannot be built; the other sources can.
            report.item(false, format!("keyvault: {e}"));
            keyvault_broken = true;
            Secrets::default()
        }
    };
    for reference in references {
        if keyvault_broken && reference.is_keyvault() {
            report.item(
                false,
                format!("secret {reference}: not tried, the Key Vault source could not be built"),
            );
            continue;
        }
        match secrets.load(&reference).await {
            Ok(value) => {
                let mut line = format!("secret {reference}: resolved");
                let _ = write!(line, " ({} bytes)", value.expose().len());
                report.item(true, line);
            }
            Err(e) => report.item(false, format!("secret {e}")),
        }
    }
    report
}

/// The `orchestrator route` line: which proxy the stream will use (from
/// the config or the environment), or direct and why; never the password.
/// The proxy password is loaded to prove it can be, not shown.
fn check_route(config: &Config, report: &mut CheckReport) {
    let address = &config.orchestrator.address;
    match crate::proxy::Route::resolve_from_process(&config.orchestrator.proxy, address) {
        Ok(route) => {
            let connect = match route.proxy() {
                Some(p) => format!(
                    "; CONNECT {address}{}",
                    if p.username.is_some() {
                        ", with Basic credentials (password loaded)"
                    } else {
                        ""
                    }
                ),
                None => String::new(),
            };
            report.item(true, format!("orchestrator route: {route}{connect}"));
        }
        Err(e) => report.item(false, format!("orchestrator route: {e}")),
    }
}

fn auth_kind(auth: &KeyVaultAuthSettings) -> &'static str {
    match auth {
        KeyVaultAuthSettings::ManagedIdentity { client_id: None } => {
            "managed identity (system-assigned)"
        }
        KeyVaultAuthSettings::ManagedIdentity { .. } => "managed identity (user-assigned)",
        KeyVaultAuthSettings::WorkloadIdentity { .. } => "workload identity",
        KeyVaultAuthSettings::ClientSecret { .. } => "client secret",
        KeyVaultAuthSettings::AzureCli { .. } => "Azure CLI",
    }
}

/// The `[approvals]` line(s): each key file must be an Ed25519 public key;
/// then which tasks require a signed approval.
fn check_approvals(config: &Config, report: &mut CheckReport) {
    let settings = &config.approvals;
    if settings.keys.is_empty() {
        report.item(
            true,
            "approvals: no approver key configured, so no task requires a signed approval (add [approvals] keys to require one)".into(),
        );
        return;
    }
    let mut ok = true;
    for key in &settings.keys {
        let loaded = std::fs::read(&key.public_key)
            .map_err(|e| e.to_string())
            .and_then(|pem| private_worker_proto::approval::PublicKey::from_pem(&key.id, &pem));
        if let Err(message) = loaded {
            ok = false;
            report.item(
                false,
                format!(
                    "approvals.keys `{}` ({}): {message}",
                    key.id,
                    key.public_key.display()
                ),
            );
        }
    }
    if ok {
        let required: Vec<&str> = config
            .tasks
            .values()
            .filter(|t| t.require_approval)
            .map(|t| t.name.as_str())
            .collect();
        let ids: Vec<&str> = settings.keys.iter().map(|k| k.id.as_str()).collect();
        let pools = if settings.audiences.is_empty() {
            String::new()
        } else {
            format!(" and {}", settings.audiences.join(", "))
        };
        report.item(
            true,
            format!(
                "approvals: key(s) {} trusted; audiences: this worker's identity{pools}; {} of {} task(s) require a signed approval{}",
                ids.join(", "),
                required.len(),
                config.tasks.len(),
                if required.len() == config.tasks.len() {
                    String::new()
                } else {
                    format!(" ({})", required.join(", "))
                }
            ),
        );
    }
}
