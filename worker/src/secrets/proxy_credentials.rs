//! The Basic credentials for an HTTP proxy, as written in a config section
//! (`proxy_username`, `proxy_password`): one rule for `[orchestrator]` and
//! `[keyvault]`.
//!
//! The user is plain text; the password is always a reference (`env://` or
//! `file://`), never the value, and never from Key Vault (it is needed to
//! reach the orchestrator, or the vault itself). It does not read the
//! password (the section's owner does, once, at start-up with
//! [`crate::secrets::load_local_now`]), parse the proxy URL, or build the
//! `Proxy-Authorization` header.

use crate::secrets::SecretRef;

/// The validated `proxy_username` and `proxy_password` of one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    /// The Basic user.
    pub username: String,
    /// Where the password is (`env://` or `file://`).
    pub password: SecretRef,
}

/// Whether the section's `proxy` key names a proxy the credentials are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyNamed {
    /// It names one.
    Yes,
    /// It is absent (or turns the proxy off).
    No,
    /// It has a problem of its own, already reported; the credentials are
    /// checked for themselves only.
    Invalid,
}

/// One problem: the key inside the section and what is wrong.
pub type CredentialProblem = (&'static str, String);

impl ProxyCredentials {
    /// Validates `proxy_username` and `proxy_password` of `section`
    /// (`orchestrator`, `keyvault`); `proxy` says whether its `proxy` key
    /// names a proxy. Never echoes the password text (it may be the
    /// password written inline).
    ///
    /// # Errors
    /// Every problem, each with its key: credentials without a proxy, a
    /// user that Basic authentication cannot carry, a password that is not
    /// an `env://`/`file://` reference, one of the two without the other.
    pub fn from_raw(
        section: &str,
        proxy: ProxyNamed,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Option<ProxyCredentials>, Vec<CredentialProblem>> {
        let mut problems = Vec::new();
        if (username.is_some() || password.is_some()) && proxy == ProxyNamed::No {
            problems.push((
                if username.is_some() {
                    "proxy_username"
                } else {
                    "proxy_password"
                },
                format!(
                    "is set but {section}.proxy names no proxy; set proxy = \"http://host:port\"{}",
                    if section == "orchestrator" {
                        " (a proxy from HTTPS_PROXY takes its credentials from its URL)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if let Some(user) = username
            && (user.is_empty() || user.contains(':') || user.chars().any(char::is_control))
        {
            problems.push((
                "proxy_username",
                "must be non-empty, without `:` or control characters (Basic authentication)"
                    .into(),
            ));
        }
        let password = match password {
            None => None,
            Some(text) => match text.parse::<SecretRef>() {
                Ok(SecretRef::KeyVault { .. }) => {
                    problems.push((
                        "proxy_password",
                        "must come from env:// or file://, not from Key Vault (it is needed before any secret can be read)".into(),
                    ));
                    None
                }
                Ok(reference) => Some(reference),
                Err(_) => {
                    // Never echoed: it may be the password written inline.
                    problems.push((
                        "proxy_password",
                        "must be an env://NAME or file:///path reference; the password itself never goes in the config".into(),
                    ));
                    None
                }
            },
        };
        if proxy == ProxyNamed::Yes
            && username.is_some() != password.is_some()
            && problems.is_empty()
        {
            problems.push((
                if username.is_some() {
                    "proxy_password"
                } else {
                    "proxy_username"
                },
                "proxy_username and proxy_password go together".into(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(match (username, password) {
            (Some(user), Some(password)) => Some(ProxyCredentials {
                username: user.to_string(),
                password,
            }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(
        section: &str,
        proxy: ProxyNamed,
        user: Option<&str>,
        pass: Option<&str>,
    ) -> Vec<&'static str> {
        let problems = ProxyCredentials::from_raw(section, proxy, user, pass).unwrap_err();
        for (_, message) in &problems {
            assert!(!message.contains("hunter2"), "{message}");
        }
        problems.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn proxy_credentials_are_a_user_and_a_password_reference_never_echoed() {
        use ProxyNamed::*;
        assert_eq!(
            ProxyCredentials::from_raw("keyvault", Yes, Some("svc"), Some("env://KV_PROXY_PW")),
            Ok(Some(ProxyCredentials {
                username: "svc".into(),
                password: SecretRef::Env("KV_PROXY_PW".into()),
            }))
        );
        assert_eq!(
            ProxyCredentials::from_raw("keyvault", Yes, None, None),
            Ok(None)
        );
        assert_eq!(
            ProxyCredentials::from_raw("keyvault", No, None, None),
            Ok(None)
        );
        assert_eq!(
            keys("keyvault", Yes, Some("svc"), Some("hunter2")),
            ["proxy_password"]
        );
        assert_eq!(
            keys("keyvault", Yes, Some("svc"), Some("keyvault://v/pw")),
            ["proxy_password"]
        );
        assert_eq!(keys("keyvault", Yes, Some("svc"), None), ["proxy_password"]);
        assert_eq!(
            keys("keyvault", Yes, None, Some("env://P")),
            ["proxy_username"]
        );
        assert_eq!(
            keys("keyvault", Yes, Some("a:b"), Some("env://P")),
            ["proxy_username"]
        );
        assert_eq!(
            keys("keyvault", No, Some("svc"), Some("env://P")),
            ["proxy_username"]
        );
        assert_eq!(
            keys("keyvault", Invalid, Some("svc"), Some("hunter2")),
            ["proxy_password"]
        );
        let problems =
            ProxyCredentials::from_raw("keyvault", No, None, Some("env://P")).unwrap_err();
        assert_eq!(
            problems[0].1,
            "is set but keyvault.proxy names no proxy; set proxy = \"http://host:port\""
        );
    }
}
