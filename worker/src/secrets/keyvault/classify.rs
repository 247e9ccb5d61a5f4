//! What a Key Vault failure is: [`KeyVaultError`] and its
//! [`KeyVaultErrorKind`], read from the SDK's errors (`classify`) without
//! copying any text a server sent, and the [`FailureClass`] of each kind
//! (retried, not found, denied, fatal).
//!
//! Retrying is the SDK's: its retry policy tries again after a transport
//! error (`Connection`/`Io`) and after [`SDK_RETRIED_STATUSES`], within
//! `max_retries` and `retry_budget`. The one place the worker changes that
//! is [`super::transport`], which hides a transport failure that is not
//! [`FailureClass::Retried`] (an untrusted certificate) from the policy.
//!
//! It does not retry, wait, log, or build clients; and it never echoes a
//! response body, an SDK message or an error code that does not look like
//! an identifier.

use std::fmt;
use std::time::Duration;

use azure_core::error::ErrorKind;

/// The statuses the SDK's retry policy tries again (its default list);
/// every other status is final at once.
pub const SDK_RETRIED_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// What a failure means: whether it was tried again, and what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Tried again (exponential back-off, up to `keyvault.max_retries`,
    /// within `keyvault.retry_budget`): the vault or the network may
    /// recover. A transport failure, a try that timed out, one of
    /// [`SDK_RETRIED_STATUSES`], or the budget spent on those. When it
    /// persists, check the route (`keyvault.proxy`, firewall, private
    /// endpoint DNS) and the vault's throttling.
    Retried,
    /// 404: the secret, or that version of it, is not in the vault. Fix the
    /// reference or create the secret. Never retried.
    NotFound,
    /// 401 or 403 from the vault, or no token from the credential: the
    /// identity is unknown, not allowed (give it the "Key Vault Secrets
    /// User" role on the vault), or its token endpoint failed (the message
    /// says which). Never retried by the vault's client.
    Denied,
    /// Will not get better by trying again: an untrusted certificate, a
    /// challenge naming another domain, a secret without a value, an
    /// unreadable response, any other status, or unusable settings. Fix
    /// what the message names.
    Fatal,
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
    /// What this failure means: see [`FailureClass`].
    pub fn class(&self) -> FailureClass {
        match self {
            KeyVaultErrorKind::Status { status: 404, .. } => FailureClass::NotFound,
            KeyVaultErrorKind::Status {
                status: 401 | 403, ..
            } => FailureClass::Denied,
            KeyVaultErrorKind::Status { status, .. } if SDK_RETRIED_STATUSES.contains(status) => {
                FailureClass::Retried
            }
            KeyVaultErrorKind::Unreachable(_)
            | KeyVaultErrorKind::TimedOut(_)
            | KeyVaultErrorKind::BudgetExhausted { .. } => FailureClass::Retried,
            KeyVaultErrorKind::Authentication(_) => FailureClass::Denied,
            KeyVaultErrorKind::Status { .. }
            | KeyVaultErrorKind::UntrustedCertificate
            | KeyVaultErrorKind::ChallengeMismatch
            | KeyVaultErrorKind::NoValue
            | KeyVaultErrorKind::InvalidResponse
            | KeyVaultErrorKind::Config(_) => FailureClass::Fatal,
        }
    }

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

/// The reason phrase of a status (`Too Many Requests`), or `error`.
pub(super) fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_string()
}

/// Turns an SDK error into a [`KeyVaultErrorKind`] without copying any
/// message text that could come from a server.
pub(super) fn classify(error: &azure_core::Error, request_timeout: Duration) -> KeyVaultErrorKind {
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
pub(super) fn transport_cause(
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

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::StatusCode;

    const TRY: Duration = Duration::from_secs(5);

    /// An SDK error for a vault that answered `status` with `code`.
    fn status_error(status: u16, code: Option<&str>) -> azure_core::Error {
        ErrorKind::HttpResponse {
            status: StatusCode::from(status),
            error_code: code.map(str::to_string),
            raw_response: None,
        }
        .into_error()
    }

    /// A transport error as reqwest's wrapper reports it: `kind` around an
    /// `io::Error` around `inner`.
    fn transport_error(
        kind: ErrorKind,
        io_kind: std::io::ErrorKind,
        inner: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> azure_core::Error {
        azure_core::Error::new(kind, std::io::Error::new(io_kind, inner))
    }

    #[test]
    fn a_missing_secret_is_not_found_and_keeps_the_services_error_code() {
        let kind = classify(&status_error(404, Some("SecretNotFound")), TRY);
        assert_eq!(
            kind,
            KeyVaultErrorKind::Status {
                status: 404,
                code: "SecretNotFound".into()
            }
        );
        assert_eq!(kind.class(), FailureClass::NotFound);
        assert_eq!(kind.status(), Some(404));
        assert_eq!(kind.to_string(), "404 SecretNotFound");
    }

    #[test]
    fn a_401_or_403_from_the_vault_is_denied() {
        for status in [401, 403] {
            let kind = classify(&status_error(status, Some("Forbidden")), TRY);
            assert_eq!(kind.status(), Some(status));
            assert_eq!(kind.class(), FailureClass::Denied, "{status}");
        }
    }

    #[test]
    fn exactly_the_sdks_retried_statuses_are_classed_as_retried() {
        for status in SDK_RETRIED_STATUSES {
            let kind = classify(&status_error(status, None), TRY);
            assert_eq!(kind.class(), FailureClass::Retried, "{status}");
        }
        for status in [400, 405, 409, 410, 412, 501, 505] {
            let kind = classify(&status_error(status, None), TRY);
            assert_eq!(kind.class(), FailureClass::Fatal, "{status}");
        }
    }

    #[test]
    fn a_status_without_a_safe_code_gets_its_reason_phrase_and_no_server_text() {
        let kind = classify(&status_error(429, None), TRY);
        assert_eq!(kind.to_string(), "429 Too Many Requests");
        for unsafe_code in [
            "",
            "The secret sk-live-123 was not found",
            "<html>body</html>",
            &"A".repeat(65),
        ] {
            let kind = classify(&status_error(404, Some(unsafe_code)), TRY);
            assert_eq!(kind.to_string(), "404 Not Found", "{unsafe_code:?}");
        }
        assert_eq!(reason(599), "error");
    }

    #[test]
    fn a_token_endpoint_status_inside_a_credential_error_is_an_authentication_failure() {
        let entra = azure_core::Error::with_error(
            ErrorKind::Credential,
            status_error(401, Some("7000215")),
            "ClientSecretCredential authentication failed",
        );
        let kind = classify(&entra, TRY);
        assert_eq!(
            kind,
            KeyVaultErrorKind::Authentication("token request: 401 AADSTS7000215".into())
        );
        assert_eq!(kind.class(), FailureClass::Denied);
        let imds = azure_core::Error::with_error(
            ErrorKind::Credential,
            status_error(400, Some("invalid_request")),
            "ManagedIdentityCredential authentication failed",
        );
        assert_eq!(
            classify(&imds, TRY),
            KeyVaultErrorKind::Authentication("token request: 400 invalid_request".into())
        );
        let bare = azure_core::Error::with_message(ErrorKind::Credential, "no token, sk-live-1");
        assert_eq!(
            classify(&bare, TRY),
            KeyVaultErrorKind::Authentication("no token".into())
        );
    }

    #[test]
    fn an_unreachable_token_endpoint_is_an_authentication_failure_naming_the_cause() {
        let error = azure_core::Error::with_error(
            ErrorKind::Credential,
            transport_error(
                ErrorKind::Io,
                std::io::ErrorKind::TimedOut,
                "operation timed out",
            ),
            "token request failed",
        );
        let kind = classify(&error, TRY);
        assert_eq!(
            kind,
            KeyVaultErrorKind::Authentication("token request: timed out after 5s".into())
        );
        assert_eq!(kind.class(), FailureClass::Denied);
    }

    #[test]
    fn refused_connections_dns_failures_and_timeouts_are_retried_transport_failures() {
        let refused = transport_error(
            ErrorKind::Connection,
            std::io::ErrorKind::ConnectionRefused,
            "connect failed",
        );
        let kind = classify(&refused, TRY);
        assert_eq!(
            kind,
            KeyVaultErrorKind::Unreachable("connection refused".into())
        );
        assert_eq!(kind.class(), FailureClass::Retried);
        assert_eq!(transport_cause(&refused, TRY), Some(kind));

        let dns = transport_error(
            ErrorKind::Connection,
            std::io::ErrorKind::Other,
            "dns error: failed to lookup address information",
        );
        assert_eq!(
            classify(&dns, TRY),
            KeyVaultErrorKind::Unreachable("DNS lookup failed".into())
        );

        let slow = transport_error(ErrorKind::Io, std::io::ErrorKind::TimedOut, "read");
        let kind = classify(&slow, TRY);
        assert_eq!(kind, KeyVaultErrorKind::TimedOut(TRY));
        assert_eq!(kind.class(), FailureClass::Retried);
        assert_eq!(kind.to_string(), "timed out after 5s");

        let bare_io = azure_core::Error::with_message(ErrorKind::Io, "broken pipe");
        assert_eq!(
            classify(&bare_io, TRY),
            KeyVaultErrorKind::Unreachable("I/O error".into())
        );
    }

    #[test]
    fn an_untrusted_certificate_is_fatal_so_the_transport_stops_the_retries() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let error = transport_error(ErrorKind::Connection, std::io::ErrorKind::InvalidData, tls);
        let cause = transport_cause(&error, TRY);
        assert_eq!(cause, Some(KeyVaultErrorKind::UntrustedCertificate));
        assert_eq!(
            classify(&error, TRY),
            KeyVaultErrorKind::UntrustedCertificate
        );
        assert_eq!(
            KeyVaultErrorKind::UntrustedCertificate.class(),
            FailureClass::Fatal
        );
        // Another TLS failure may be the network's: it stays retried.
        let alert = transport_error(
            ErrorKind::Connection,
            std::io::ErrorKind::InvalidData,
            rustls::Error::DecryptError,
        );
        let kind = classify(&alert, TRY);
        assert!(
            matches!(&kind, KeyVaultErrorKind::Unreachable(c) if c.starts_with("TLS: ")),
            "{kind:?}"
        );
        assert_eq!(kind.class(), FailureClass::Retried);
    }

    #[test]
    fn a_challenge_for_another_domain_is_fatal() {
        let error = azure_core::Error::with_message(
            ErrorKind::Other,
            "The challenge resource 'https://evil.example' doesn't match the requested domain",
        );
        let kind = classify(&error, TRY);
        assert_eq!(kind, KeyVaultErrorKind::ChallengeMismatch);
        assert_eq!(kind.class(), FailureClass::Fatal);
    }

    #[test]
    fn anything_else_is_an_invalid_response_that_echoes_nothing() {
        for error in [
            azure_core::Error::with_message(ErrorKind::DataConversion, "value: sk-live-123"),
            azure_core::Error::with_message(ErrorKind::Other, "sk-live-123"),
        ] {
            let kind = classify(&error, TRY);
            assert_eq!(kind, KeyVaultErrorKind::InvalidResponse);
            assert_eq!(kind.class(), FailureClass::Fatal);
            assert!(!kind.to_string().contains("sk-live"), "{kind}");
        }
    }

    #[test]
    fn the_remaining_kinds_have_a_fixed_class_and_an_exhausted_budget_names_the_last_try() {
        for kind in [
            KeyVaultErrorKind::NoValue,
            KeyVaultErrorKind::InvalidResponse,
            KeyVaultErrorKind::Config("keyvault.ca_cert".into()),
        ] {
            assert_eq!(kind.class(), FailureClass::Fatal, "{kind:?}");
        }
        let spent = KeyVaultErrorKind::BudgetExhausted {
            budget: Duration::from_millis(2500),
            last: Some(Box::new(KeyVaultErrorKind::Status {
                status: 429,
                code: "Too Many Requests".into(),
            })),
        };
        assert_eq!(spent.class(), FailureClass::Retried);
        assert_eq!(
            spent.to_string(),
            "gave up after the 2.5s retry budget (last try: 429 Too Many Requests)"
        );
        let error = KeyVaultError {
            reference: "keyvault://myvault/crm-token".into(),
            kind: KeyVaultErrorKind::Status {
                status: 403,
                code: "Forbidden".into(),
            },
        };
        assert_eq!(
            error.to_string(),
            "keyvault://myvault/crm-token: 403 Forbidden"
        );
    }
}
