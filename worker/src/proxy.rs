//! The HTTP proxy on the way to the orchestrator: which one (if any), and
//! the CONNECT tunnel through it.
//!
//! - [`ProxySettings`] is the validated `[orchestrator] proxy`,
//!   `proxy_username` and `proxy_password`: an explicit `http://host:port`,
//!   `"none"` (never a proxy, whatever the environment says), or absent (the
//!   environment decides).
//! - [`Route::resolve`] turns the settings into the route the stream takes,
//!   once at start-up: through a proxy, or direct and why. Without an
//!   explicit setting it applies `HTTPS_PROXY`/`https_proxy`, then
//!   `ALL_PROXY`/`all_proxy`, and `NO_PROXY`/`no_proxy` with curl's rules
//!   (a domain matches itself and its subdomains, a leading dot is the
//!   same, IP addresses and CIDR blocks, `*` matches everything), through
//!   hyper-util's [`Matcher`]. `HTTP_PROXY` is not used: the stream is TLS.
//! - [`Route::connect`] opens the TCP connection the TLS handshake runs
//!   over: straight to the orchestrator, or to the proxy followed by
//!   `CONNECT <orchestrator host>:<port>` (hyper-util's [`Tunnel`]). The
//!   CONNECT names the host of `orchestrator.address`, so allowlists of host
//!   names on the proxy work; the mutual TLS handshake then runs end to end
//!   inside the tunnel, and the proxy sees only ciphertext.
//!
//! # What it does not do
//! It does not speak TLS to the proxy itself (`https://` proxies), SOCKS, or
//! any proxy authentication but Basic. It does not retry: every
//! [`ProxyError`] goes back to the session, which dials again after its
//! backoff. It is not used for Key Vault or the managed-identity endpoint
//! (see `secrets::keyvault`), nor for the internal APIs tasks call. No
//! error, log line or `Debug` output holds the proxy password.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::{Service, ServiceExt};

use crate::secrets::proxy_credentials::{ProxyCredentials, ProxyNamed};
use crate::secrets::{SecretError, SecretRef, SecretValue};

/// The value of `orchestrator.proxy` that turns proxies off.
pub const PROXY_OFF: &str = "none";

/// The environment variables that name a proxy for the orchestrator
/// stream, in the order they are read (the first one set wins, per pair).
pub const PROXY_VARIABLES: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
/// The environment variables that list hosts reached without a proxy.
pub const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The validated proxy settings of `[orchestrator]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxySettings {
    /// No `proxy` key: `HTTPS_PROXY`/`ALL_PROXY` and `NO_PROXY` decide.
    #[default]
    FromEnvironment,
    /// `proxy = "none"`: always direct, whatever the environment says.
    Off,
    /// `proxy = "http://host:port"`: always through this proxy (`NO_PROXY`
    /// does not apply).
    Explicit {
        /// The proxy's `host:port`.
        authority: String,
        /// `proxy_username`, for Basic authentication.
        username: Option<String>,
        /// `proxy_password`: where the password is (`env://` or `file://`).
        password: Option<SecretRef>,
    },
}

/// One problem in the proxy settings: the key under `[orchestrator]` and
/// what is wrong. `config` prefixes the section.
pub type SettingProblem = (&'static str, String);

impl ProxySettings {
    /// Validates the raw `proxy`, `proxy_username` and `proxy_password`
    /// values. Never echoes a URL that carries credentials or a password
    /// reference that does not parse.
    ///
    /// # Errors
    /// Every problem found, each with its key.
    pub fn from_raw(
        proxy: Option<&str>,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<ProxySettings, Vec<SettingProblem>> {
        let mut problems = Vec::new();
        let settings = match proxy {
            None => ProxySettings::FromEnvironment,
            Some(PROXY_OFF) => ProxySettings::Off,
            Some(text) => match parse_proxy_url(text) {
                Ok(authority) => ProxySettings::Explicit {
                    authority,
                    username: None,
                    password: None,
                },
                Err(why) => {
                    problems.push(("proxy", why));
                    ProxySettings::Off
                }
            },
        };
        let named = match (&settings, problems.is_empty()) {
            (_, false) => ProxyNamed::Invalid,
            (ProxySettings::Explicit { .. }, true) => ProxyNamed::Yes,
            _ => ProxyNamed::No,
        };
        let credentials =
            match ProxyCredentials::from_raw("orchestrator", named, username, password) {
                Ok(credentials) => credentials,
                Err(more) => {
                    problems.extend(more);
                    None
                }
            };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(match settings {
            ProxySettings::Explicit { authority, .. } => {
                let (username, password) = match credentials {
                    Some(c) => (Some(c.username), Some(c.password)),
                    None => (None, None),
                };
                ProxySettings::Explicit {
                    authority,
                    username,
                    password,
                }
            }
            other => other,
        })
    }
}

/// The proxy schemes a message may name: well-known words, never a piece
/// of what the user typed (which could be a password, see
/// [`parse_proxy_url`]).
const KNOWN_SCHEMES: [&str; 6] = ["https", "socks4", "socks4a", "socks5", "socks5h", "ftp"];

/// `http://host:port[/]` to `host:port`; the reason otherwise. The rule for
/// every explicit proxy setting (`orchestrator.proxy`, `keyvault.proxy`).
///
/// No message quotes the text: a value with credentials need not look like
/// a URL (curl reads `user:password@host:port` without a scheme, which
/// parses as the scheme `user`), so any value with `@` is refused as
/// holding credentials, and the other messages name the part that is wrong
/// (the scheme only when it is a well-known one).
///
/// # Errors
/// What is wrong with the text and how to write it.
pub fn parse_proxy_url(text: &str) -> Result<String, String> {
    let example = "write it as http://host:port, e.g. http://proxy.corp.example:3128, or \"none\" for no proxy";
    if text.contains('@') {
        return Err(format!(
            "holds credentials (it contains `@`; the value is not shown); put the user in proxy_username and the password in proxy_password as an env:// or file:// reference, and {example}"
        ));
    }
    if !text.contains("://") {
        return Err(format!("has no scheme; {example}"));
    }
    let Ok(url) = url::Url::parse(text) else {
        return Err(format!("is not a URL; {example}"));
    };
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(
                "is an https:// proxy: TLS to the proxy itself is not supported; use http:// (the stream inside the tunnel is still mutual TLS end to end)".into(),
            );
        }
        known if KNOWN_SCHEMES.contains(&known) => {
            return Err(format!(
                "is a {known}:// proxy, which is not supported; {example}"
            ));
        }
        _ => return Err(format!("has a scheme other than http://; {example}")),
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("names no host; {example}"));
    };
    let Some(port) = url.port() else {
        return Err(format!("names no port; {example}"));
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("has a path or query; {example}"));
    }
    Ok(format!("{host}:{port}"))
}

/// How the orchestrator stream leaves the host.
#[derive(Clone, Default)]
pub enum Route {
    /// Straight to the orchestrator.
    Direct(DirectReason),
    /// Through an HTTP proxy, with CONNECT.
    Proxy(ProxyRoute),
    /// Not decided (a [`crate::tls::ClientTls`] nobody gave a route: tests
    /// and benchmarks); direct.
    #[default]
    Unresolved,
}

/// Why the stream goes direct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectReason {
    /// `orchestrator.proxy = "none"`.
    TurnedOff,
    /// No proxy setting and no `HTTPS_PROXY`/`ALL_PROXY` in the environment.
    NotSet,
    /// The environment names a proxy, but `NO_PROXY` matches the host.
    NoProxyMatch {
        /// `NO_PROXY` or `no_proxy`.
        variable: &'static str,
        /// Its value.
        value: String,
    },
}

/// A proxy the stream goes through.
#[derive(Clone)]
pub struct ProxyRoute {
    /// `host:port` of the proxy (never with credentials).
    pub proxy: String,
    /// Where the proxy came from: `orchestrator.proxy` or the variable.
    pub source: &'static str,
    /// The Basic user, if any.
    pub username: Option<String>,
    /// `Proxy-Authorization` value (sensitive); `None` without credentials.
    authorization: Option<SecretValue>,
}

impl fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyRoute")
            .field("proxy", &self.proxy)
            .field("source", &self.source)
            .field("username", &self.username)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct(DirectReason::TurnedOff) => {
                f.write_str("direct (orchestrator.proxy = \"none\")")
            }
            Route::Direct(DirectReason::NotSet) => f.write_str(
                "direct (no orchestrator.proxy, and neither HTTPS_PROXY nor ALL_PROXY is set)",
            ),
            Route::Direct(DirectReason::NoProxyMatch { variable, value }) => {
                write!(
                    f,
                    "direct ({variable}={value} matches the orchestrator's host)"
                )
            }
            Route::Proxy(p) => {
                write!(
                    f,
                    "through the HTTP proxy http://{} (from {})",
                    p.proxy, p.source
                )?;
                if let Some(user) = &p.username {
                    write!(f, " as user `{user}`")?;
                }
                Ok(())
            }
            Route::Unresolved => f.write_str("direct"),
        }
    }
}

/// Why the route could not be decided at start-up. Fix the config or the
/// environment and start again.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// `orchestrator.proxy_password` cannot be read: set the variable or
    /// fix the file it names.
    #[error("orchestrator.proxy_password: {0}")]
    Password(#[source] SecretError),
    /// A proxy variable holds something that is not a proxy URL: fix it or
    /// set `orchestrator.proxy`.
    #[error(
        "{variable} is set but is not a proxy URL (write it as http://host:port); set orchestrator.proxy to override the environment"
    )]
    Unusable {
        /// The variable.
        variable: &'static str,
    },
    /// A proxy variable names a proxy the worker cannot use (TLS to the
    /// proxy, SOCKS): set `orchestrator.proxy` to an `http://` proxy, or
    /// `"none"`.
    #[error(
        "{variable} names a {scheme}:// proxy; only http:// proxies are supported for the orchestrator stream (set orchestrator.proxy to override the environment)"
    )]
    Unsupported {
        /// The variable.
        variable: &'static str,
        /// Its scheme.
        scheme: String,
    },
    /// `orchestrator.address` has no host the proxy rules can read.
    #[error("orchestrator.address `{0}` has no host:port a proxy can be asked for")]
    Address(String),
}

/// Why the tunnel through the proxy failed. Every variant is worth a retry
/// after a backoff (the session does it); the message says what to fix if
/// it keeps happening.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy does not accept connections (down, wrong host or port, a
    /// firewall): check `orchestrator.proxy` or `HTTPS_PROXY`.
    #[error("cannot reach the proxy at {proxy}: {source}")]
    Unreachable {
        /// The proxy's `host:port`.
        proxy: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The TCP connect to the proxy did not complete in time (packets to
    /// it are dropped: a firewall, a wrong address): check
    /// `orchestrator.proxy` or `HTTPS_PROXY` and the network path to it.
    #[error(
        "TCP connect to the proxy at {proxy} did not complete within {after:?}: check the proxy address (orchestrator.proxy or HTTPS_PROXY) and that a firewall lets the worker reach it"
    )]
    ConnectTimedOut {
        /// The proxy's `host:port`.
        proxy: String,
        /// The time allowed for the tunnel (just under
        /// `orchestrator.connect_timeout`).
        after: std::time::Duration,
    },
    /// The proxy accepted the TCP connection but did not answer the
    /// CONNECT in time: it may not be an HTTP proxy, or it cannot reach
    /// the orchestrator and does not say so.
    #[error(
        "the proxy at {proxy} accepted the TCP connection but did not answer CONNECT {target} within {after:?}: check that it is an HTTP proxy and that it can reach the orchestrator"
    )]
    NoAnswer {
        /// The proxy's `host:port`.
        proxy: String,
        /// `host:port` of the orchestrator.
        target: String,
        /// The time allowed for the tunnel (just under
        /// `orchestrator.connect_timeout`).
        after: std::time::Duration,
    },
    /// 407 (or 401, which some proxies such as tinyproxy 1.11 send
    /// instead) and no credentials were sent: configure them.
    #[error(
        "the proxy at {proxy} requires authentication ({status}): set orchestrator.proxy_username/proxy_password"
    )]
    AuthenticationRequired {
        /// The proxy's `host:port`.
        proxy: String,
        /// 407, or 401.
        status: u16,
    },
    /// 407 (or 401) although credentials were sent: the user or the
    /// password is wrong (or expired) for this proxy.
    #[error(
        "the proxy at {proxy} rejected the credentials of user `{user}` ({status}): check orchestrator.proxy_username and the secret orchestrator.proxy_password names"
    )]
    CredentialsRejected {
        /// The proxy's `host:port`.
        proxy: String,
        /// The user sent.
        user: String,
        /// 407, or 401.
        status: u16,
    },
    /// 403: the proxy's policy does not let this host (or port) through.
    #[error(
        "the proxy at {proxy} refused CONNECT to {target} (403): ask for the host to be allowed"
    )]
    Forbidden {
        /// The proxy's `host:port`.
        proxy: String,
        /// `host:port` of the orchestrator.
        target: String,
    },
    /// Any other non-200 answer (502/503/504: the proxy could not reach
    /// the orchestrator).
    #[error("the proxy at {proxy} answered {status} to CONNECT {target}{}", status_hint(*status))]
    Refused {
        /// The proxy's `host:port`.
        proxy: String,
        /// `host:port` of the orchestrator.
        target: String,
        /// The HTTP status.
        status: u16,
    },
    /// The proxy closed the connection or answered something that is not
    /// HTTP during the CONNECT: is it an HTTP proxy?
    #[error("the CONNECT to {target} through the proxy at {proxy} failed: {detail}")]
    Broken {
        /// The proxy's `host:port`.
        proxy: String,
        /// `host:port` of the orchestrator.
        target: String,
        /// What happened.
        detail: String,
    },
}

fn status_hint(status: u16) -> &'static str {
    match status {
        502..=504 => ": the proxy could not reach the orchestrator (check orchestrator.address)",
        _ => "",
    }
}

/// Why opening the connection failed, before any TLS.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The direct TCP connect failed.
    #[error(transparent)]
    Direct(std::io::Error),
    /// The proxy or the tunnel failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Reads the proxy variables through `env` (the process environment in the
/// worker, a table in tests). The first variable of each pair that is set
/// wins, as in hyper-util's own `Matcher::from_env`.
fn first_set(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names.iter().find_map(|name| env(name).map(|v| (*name, v)))
}

impl Route {
    /// Decides the route to `address` (`host:port`) from `settings` and,
    /// when they leave it to the environment, from `env`. Loads the proxy
    /// password once.
    ///
    /// # Errors
    /// [`RouteError`]: the password cannot be read, or the environment names
    /// a proxy that cannot be used.
    pub fn resolve(
        settings: &ProxySettings,
        address: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Route, RouteError> {
        match settings {
            ProxySettings::Off => Ok(Route::Direct(DirectReason::TurnedOff)),
            ProxySettings::Explicit {
                authority,
                username,
                password,
            } => {
                let authorization = match (username, password) {
                    (Some(user), Some(password)) => {
                        let password = crate::secrets::load_local_now(password)
                            .map_err(RouteError::Password)?;
                        Some(basic_authorization(user, password.expose()))
                    }
                    _ => None,
                };
                Ok(Route::Proxy(ProxyRoute {
                    proxy: authority.clone(),
                    source: "orchestrator.proxy",
                    username: username.clone(),
                    authorization,
                }))
            }
            ProxySettings::FromEnvironment => Self::from_environment(address, env),
        }
    }

    fn from_environment(
        address: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Route, RouteError> {
        let https = first_set(env, &PROXY_VARIABLES[..2]);
        let all = first_set(env, &PROXY_VARIABLES[2..]);
        let no = first_set(env, &NO_PROXY_VARIABLES);
        let source = match (&https, &all) {
            (Some((name, value)), _) if !value.trim().is_empty() => *name,
            (_, Some((name, value))) if !value.trim().is_empty() => *name,
            _ => return Ok(Route::Direct(DirectReason::NotSet)),
        };
        let destination: http::Uri = format!("https://{address}/")
            .parse()
            .map_err(|_| RouteError::Address(address.to_string()))?;
        if destination.host().is_none() {
            return Err(RouteError::Address(address.to_string()));
        }
        let builder = || {
            Matcher::builder()
                .https(https.as_ref().map(|(_, v)| v.clone()).unwrap_or_default())
                .all(all.as_ref().map(|(_, v)| v.clone()).unwrap_or_default())
        };
        let Some(intercept) = builder().build().intercept(&destination) else {
            return Err(RouteError::Unusable { variable: source });
        };
        if let Some((variable, value)) = no
            && builder()
                .no(value.clone())
                .build()
                .intercept(&destination)
                .is_none()
        {
            return Ok(Route::Direct(DirectReason::NoProxyMatch {
                variable,
                value,
            }));
        }
        let uri = intercept.uri();
        let scheme = uri.scheme_str().unwrap_or("http");
        if scheme != "http" {
            return Err(RouteError::Unsupported {
                variable: source,
                scheme: scheme.to_string(),
            });
        }
        let Some(authority) = uri.authority() else {
            return Err(RouteError::Unusable { variable: source });
        };
        let proxy = match authority.port_u16() {
            Some(_) => authority.as_str().to_string(),
            None => format!("{}:80", authority.host()),
        };
        let (username, authorization) = match intercept.basic_auth() {
            Some(value) => {
                let header = value.to_str().unwrap_or_default().to_string();
                (basic_user(&header), Some(SecretValue::new(header)))
            }
            None => (None, None),
        };
        Ok(Route::Proxy(ProxyRoute {
            proxy,
            source,
            username,
            authorization,
        }))
    }

    /// The route from the process environment (see [`Route::resolve`]).
    ///
    /// # Errors
    /// As [`Route::resolve`].
    pub fn resolve_from_process(
        settings: &ProxySettings,
        address: &str,
    ) -> Result<Route, RouteError> {
        Self::resolve(settings, address, &|name| std::env::var(name).ok())
    }

    /// The proxy, when the stream goes through one.
    pub fn proxy(&self) -> Option<&ProxyRoute> {
        match self {
            Route::Proxy(p) => Some(p),
            _ => None,
        }
    }

    /// Opens a TCP connection that leads to `address` (`host:port`):
    /// directly, or through the proxy's CONNECT tunnel. The caller bounds
    /// the whole dial with `limit`; the tunnel gets [`tunnel_limit`] of it,
    /// so that a proxy that never answers is named as such rather than
    /// ending in the caller's plain timeout.
    ///
    /// # Errors
    /// [`ConnectError`].
    pub async fn connect(
        &self,
        address: &str,
        limit: std::time::Duration,
    ) -> Result<TcpStream, ConnectError> {
        let tcp = match self {
            Route::Proxy(proxy) => proxy.tunnel(address, tunnel_limit(limit)).await?,
            _ => TcpStream::connect(address)
                .await
                .map_err(ConnectError::Direct)?,
        };
        // Frames are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

/// The time the CONNECT tunnel may take out of the dial's `limit`: nine
/// tenths, leaving the rest so that the tunnel's own timeout (which names
/// the proxy and the step) fires before the caller's.
pub fn tunnel_limit(limit: std::time::Duration) -> std::time::Duration {
    limit - limit / 10
}

/// `Basic base64(user:password)`.
fn basic_authorization(user: &str, password: &str) -> SecretValue {
    let mut plain = format!("{user}:{password}");
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(plain.as_bytes())
    );
    zeroize::Zeroize::zeroize(&mut plain);
    SecretValue::new(value)
}

/// The user of a `Basic` header value (for messages), if it decodes.
fn basic_user(header: &str) -> Option<String> {
    let encoded = header.strip_prefix("Basic ")?;
    let mut decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let user = decoded
        .split(|b| *b == b':')
        .next()
        .and_then(|u| std::str::from_utf8(u).ok())
        .map(str::to_string);
    zeroize::Zeroize::zeroize(&mut decoded);
    user
}

impl ProxyRoute {
    /// Connects to the proxy and asks it for a tunnel to `address`, within
    /// `limit`.
    async fn tunnel(
        &self,
        address: &str,
        limit: std::time::Duration,
    ) -> Result<TcpStream, ProxyError> {
        let target = address.to_string();
        let broken = |detail: String| ProxyError::Broken {
            proxy: self.proxy.clone(),
            target: target.clone(),
            detail,
        };
        let destination: http::Uri = format!("https://{address}/")
            .parse()
            .map_err(|_| broken("the orchestrator address is not host:port".into()))?;
        let proxy_uri: http::Uri = format!("http://{}/", self.proxy)
            .parse()
            .map_err(|_| broken("the proxy address is not host:port".into()))?;
        let probe = Arc::new(Probe::default());
        let proxy_address = self.proxy.clone();
        let dial_probe = probe.clone();
        let dial = tower::service_fn(move |_: http::Uri| {
            let (address, probe) = (proxy_address.clone(), dial_probe.clone());
            async move {
                let tcp = TcpStream::connect(&address).await?;
                probe.connected.store(true, Ordering::SeqCst);
                Ok::<_, std::io::Error>(TokioIo::new(Tapped { inner: tcp, probe }))
            }
        });
        let mut tunnel = Tunnel::new(proxy_uri, dial);
        if let Some(authorization) = &self.authorization {
            let mut value = http::HeaderValue::from_str(authorization.expose())
                .map_err(|_| broken("the proxy credentials are not a valid header".into()))?;
            value.set_sensitive(true);
            tunnel = tunnel.with_auth(value);
        }
        let outcome = tokio::time::timeout(limit, async {
            tunnel.ready().await?.call(destination).await
        })
        .await;
        match outcome {
            Ok(Ok(io)) => Ok(io.into_inner().inner),
            Ok(Err(e)) => Err(self.classify(&probe, &target, &e)),
            Err(_) if probe.connected.load(Ordering::SeqCst) => Err(ProxyError::NoAnswer {
                proxy: self.proxy.clone(),
                target,
                after: limit,
            }),
            Err(_) => Err(ProxyError::ConnectTimedOut {
                proxy: self.proxy.clone(),
                after: limit,
            }),
        }
    }

    /// Names what went wrong. hyper-util's `TunnelError` tells 407 apart
    /// but folds every other status (403 included) into "unsuccessful",
    /// and the type is not exported; so the status line is read from the
    /// bytes the proxy sent (see [`Tapped`]), and whether the TCP connect
    /// succeeded from the probe.
    fn classify(
        &self,
        probe: &Probe,
        target: &str,
        error: &(dyn std::error::Error + 'static),
    ) -> ProxyError {
        let proxy = self.proxy.clone();
        let target = target.to_string();
        let io = std::error::Error::source(error)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(|e| std::io::Error::new(e.kind(), e.to_string()));
        if !probe.connected.load(Ordering::SeqCst) {
            return ProxyError::Unreachable {
                proxy,
                source: io.unwrap_or_else(|| std::io::Error::other(error.to_string())),
            };
        }
        let head = probe.head.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match status_code(&head) {
            // 401 is not what RFC 9110 asks of a proxy, but tinyproxy 1.11
            // answers a CONNECT without good credentials with it.
            Some(status @ (407 | 401)) => match &self.username {
                Some(user) => ProxyError::CredentialsRejected {
                    proxy,
                    user: user.clone(),
                    status,
                },
                None => ProxyError::AuthenticationRequired { proxy, status },
            },
            Some(403) => ProxyError::Forbidden { proxy, target },
            Some(status) if status != 200 => ProxyError::Refused {
                proxy,
                target,
                status,
            },
            _ => ProxyError::Broken {
                proxy,
                target,
                detail: match io {
                    Some(io) => format!("{error}: {io}"),
                    None if head.is_empty() => {
                        format!("{error} (the proxy closed the connection without an answer)")
                    }
                    None => format!("{error} (the answer is not HTTP; is this an HTTP proxy?)"),
                },
            },
        }
    }
}

/// What one tunnel attempt saw of the proxy connection.
#[derive(Default)]
struct Probe {
    /// The TCP connect to the proxy succeeded.
    connected: AtomicBool,
    /// The first bytes the proxy sent (its status line).
    head: Mutex<Vec<u8>>,
}

/// How many bytes of the proxy's answer are kept: enough for the status line.
const HEAD_LIMIT: usize = 64;

/// The proxy connection, keeping a copy of the first [`HEAD_LIMIT`] bytes
/// read so that the status of a failed CONNECT can be named. Bytes pass
/// through unchanged.
struct Tapped {
    inner: TcpStream,
    probe: Arc<Probe>,
}

impl AsyncRead for Tapped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let mut head = self.probe.head.lock().unwrap_or_else(|e| e.into_inner());
        let room = HEAD_LIMIT.saturating_sub(head.len());
        let new = &buf.filled()[before..];
        head.extend_from_slice(&new[..new.len().min(room)]);
        polled
    }
}

impl AsyncWrite for Tapped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The status code of an HTTP/1.x status line at the start of `head`
/// (`HTTP/1.1 403 Filtered` -> 403).
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn route(pairs: &[(&str, &str)], address: &str) -> Route {
        Route::resolve(&ProxySettings::FromEnvironment, address, &env_of(pairs)).unwrap()
    }

    fn proxied(route: &Route) -> Option<String> {
        route.proxy().map(|p| p.proxy.clone())
    }

    #[test]
    fn https_proxy_applies_and_http_proxy_does_not() {
        let r = route(
            &[("HTTPS_PROXY", "http://proxy.corp:3128")],
            "orch.example.com:443",
        );
        assert_eq!(proxied(&r).as_deref(), Some("proxy.corp:3128"));
        assert_eq!(r.proxy().unwrap().source, "HTTPS_PROXY");
        let r = route(
            &[("HTTP_PROXY", "http://proxy.corp:3128")],
            "orch.example.com:443",
        );
        assert!(matches!(r, Route::Direct(DirectReason::NotSet)), "{r}");
    }

    #[test]
    fn all_proxy_is_the_fallback_and_lower_case_names_count() {
        let r = route(&[("all_proxy", "proxy.corp:8080")], "orch.example.com:7443");
        assert_eq!(proxied(&r).as_deref(), Some("proxy.corp:8080"));
        assert_eq!(r.proxy().unwrap().source, "all_proxy");
        let r = route(
            &[
                ("https_proxy", "http://first:1"),
                ("ALL_PROXY", "http://second:2"),
            ],
            "orch.example.com:7443",
        );
        assert_eq!(proxied(&r).as_deref(), Some("first:1"));
    }

    #[test]
    fn no_proxy_follows_curls_rules() {
        let proxy = ("HTTPS_PROXY", "http://proxy.corp:3128");
        for (no_proxy, address, direct) in [
            ("example.com", "orch.example.com:443", true),
            ("example.com", "example.com:443", true),
            (".example.com", "orch.example.com:443", true),
            (".example.com", "example.com:443", true),
            ("example.com", "notexample.com:443", false),
            ("other.com, example.com", "orch.example.com:443", true),
            ("*", "anything.at.all:443", true),
            ("10.0.0.0/8", "10.20.30.40:7443", true),
            ("10.0.0.0/8", "11.0.0.1:7443", false),
            ("192.168.1.5", "192.168.1.5:7443", true),
            ("::1", "[::1]:7443", true),
            ("EXAMPLE.com", "orch.example.COM:443", true),
            ("", "orch.example.com:443", false),
        ] {
            let r = route(&[proxy, ("NO_PROXY", no_proxy)], address);
            assert_eq!(
                matches!(r, Route::Direct(DirectReason::NoProxyMatch { .. })),
                direct,
                "NO_PROXY={no_proxy:?} for {address}: {r}"
            );
        }
        let r = route(
            &[proxy, ("no_proxy", "example.com")],
            "orch.example.com:443",
        );
        assert_eq!(
            r.to_string(),
            "direct (no_proxy=example.com matches the orchestrator's host)"
        );
    }

    #[test]
    fn an_explicit_setting_ignores_the_environment() {
        let env = env_of(&[("HTTPS_PROXY", "http://env-proxy:1"), ("NO_PROXY", "*")]);
        let explicit = ProxySettings::from_raw(Some("http://cfg-proxy:3128"), None, None).unwrap();
        let r = Route::resolve(&explicit, "orch.example.com:443", &env).unwrap();
        assert_eq!(proxied(&r).as_deref(), Some("cfg-proxy:3128"));
        assert_eq!(r.proxy().unwrap().source, "orchestrator.proxy");
        let off = ProxySettings::from_raw(Some("none"), None, None).unwrap();
        let r = Route::resolve(&off, "orch.example.com:443", &env).unwrap();
        assert!(matches!(r, Route::Direct(DirectReason::TurnedOff)), "{r}");
    }

    #[test]
    fn credentials_in_the_environment_url_are_used_but_never_shown() {
        let r = route(
            &[("HTTPS_PROXY", "http://alice:s3cr3t-pw@proxy.corp:3128")],
            "orch.example.com:443",
        );
        let p = r.proxy().unwrap();
        assert_eq!(p.proxy, "proxy.corp:3128");
        assert_eq!(p.username.as_deref(), Some("alice"));
        assert!(p.authorization.is_some());
        for shown in [r.to_string(), format!("{r:?}"), format!("{p:?}")] {
            assert!(!shown.contains("s3cr3t-pw"), "{shown}");
            assert!(!shown.contains("YWxpY2U6czNjcjN0LXB3"), "{shown}");
        }
    }

    #[test]
    fn an_unusable_environment_proxy_is_an_error_naming_the_variable() {
        let env = env_of(&[("HTTPS_PROXY", "socks5://proxy:1080")]);
        let err =
            Route::resolve(&ProxySettings::FromEnvironment, "o.example:443", &env).unwrap_err();
        assert!(
            err.to_string().contains("HTTPS_PROXY names a socks5://"),
            "{err}"
        );
        let env = env_of(&[("ALL_PROXY", "https://proxy:443")]);
        let err =
            Route::resolve(&ProxySettings::FromEnvironment, "o.example:443", &env).unwrap_err();
        assert!(
            err.to_string().contains("ALL_PROXY names a https://"),
            "{err}"
        );
        let env = env_of(&[("HTTPS_PROXY", "ftp://proxy:21")]);
        let err =
            Route::resolve(&ProxySettings::FromEnvironment, "o.example:443", &env).unwrap_err();
        assert!(
            err.to_string().starts_with("HTTPS_PROXY is set but"),
            "{err}"
        );
        // Set but empty is the same as not set.
        let r = route(&[("HTTPS_PROXY", "")], "o.example:443");
        assert!(matches!(r, Route::Direct(DirectReason::NotSet)), "{r}");
    }

    #[test]
    fn proxy_settings_are_validated_without_echoing_credentials() {
        let ok = ProxySettings::from_raw(
            Some("http://proxy.corp:3128/"),
            Some("alice"),
            Some("env://PROXY_PASSWORD"),
        )
        .unwrap();
        assert_eq!(
            ok,
            ProxySettings::Explicit {
                authority: "proxy.corp:3128".into(),
                username: Some("alice".into()),
                password: Some(SecretRef::Env("PROXY_PASSWORD".into())),
            }
        );
        let keys = |proxy: Option<&str>, user: Option<&str>, pass: Option<&str>| {
            let problems = ProxySettings::from_raw(proxy, user, pass).unwrap_err();
            for (_, message) in &problems {
                assert!(!message.contains("hunter2"), "{message}");
            }
            problems.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        };
        assert_eq!(
            keys(Some("http://u:hunter2@proxy:3128"), None, None),
            ["proxy"]
        );
        assert_eq!(keys(Some("https://proxy:3128"), None, None), ["proxy"]);
        assert_eq!(keys(Some("socks5://proxy:1080"), None, None), ["proxy"]);
        assert_eq!(keys(Some("http://proxy"), None, None), ["proxy"]);
        assert_eq!(keys(Some("proxy:3128"), None, None), ["proxy"]);
        assert_eq!(keys(Some(""), None, None), ["proxy"]);
        assert_eq!(keys(Some("http://proxy:3128/path"), None, None), ["proxy"]);
        assert_eq!(
            keys(Some("http://proxy:3128"), Some("alice"), Some("hunter2")),
            ["proxy_password"]
        );
        assert_eq!(
            keys(
                Some("http://proxy:3128"),
                Some("alice"),
                Some("keyvault://v1/pw")
            ),
            ["proxy_password"]
        );
        assert_eq!(
            keys(Some("http://proxy:3128"), Some("alice"), None),
            ["proxy_password"]
        );
        assert_eq!(
            keys(Some("http://proxy:3128"), Some("a:b"), Some("env://P")),
            ["proxy_username"]
        );
        assert_eq!(
            keys(None, Some("alice"), Some("env://P")),
            ["proxy_username"]
        );
        assert_eq!(
            keys(Some("none"), None, Some("env://P")),
            ["proxy_password"]
        );
    }

    /// Values that hold the password `hunter2`, in the shapes people write
    /// (curl's scheme-less `user:password@host:port` first).
    const WITH_PASSWORD: [&str; 13] = [
        "svc:hunter2@proxy:3128",
        "svc:hunter2@proxy.corp:3128",
        "svc:hunter2@proxy",
        "svc:hunter2@",
        ":hunter2@proxy:3128",
        " svc:hunter2@proxy:3128",
        "svc:hunter2@http://proxy:3128",
        "http//svc:hunter2@proxy:3128",
        "http://svc:hunter2@proxy:3128",
        "http://svc:hunter2@",
        "https://svc:hunter2@proxy:3128",
        "socks5://svc:hunter2@proxy:1080",
        "svc:hunter2",
    ];

    #[test]
    fn a_proxy_value_holding_a_password_is_refused_without_echoing_it_in_any_shape() {
        for text in WITH_PASSWORD {
            let message = parse_proxy_url(text).unwrap_err();
            assert!(!message.contains("hunter2"), "{text}: {message}");
            let problems = ProxySettings::from_raw(Some(text), None, None).unwrap_err();
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].0, "proxy", "{text}");
            assert!(!problems[0].1.contains("hunter2"), "{text}: {problems:?}");
        }
        assert!(
            parse_proxy_url("svc:hunter2@proxy:3128")
                .unwrap_err()
                .starts_with("holds credentials")
        );
        // A user alone (a token as the user name) is refused the same way.
        let message = parse_proxy_url("hunter2@proxy:3128").unwrap_err();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            parse_proxy_url("svc:hunter2")
                .unwrap_err()
                .starts_with("has no scheme")
        );
        // No other message quotes the value either.
        for text in [
            "socks5://sproxy:1080",
            "gopher://gproxy:70",
            "http://hproxy",
            "http://pproxy:3128/p",
            "nproxy:3128",
        ] {
            let message = parse_proxy_url(text).unwrap_err();
            assert!(!message.contains(text), "{text}: {message}");
        }
        assert!(
            parse_proxy_url("socks5://proxy:1080")
                .unwrap_err()
                .starts_with("is a socks5:// proxy")
        );
        assert!(
            parse_proxy_url("gopher://proxy:70")
                .unwrap_err()
                .starts_with("has a scheme other than http://")
        );
    }

    #[test]
    fn a_proxy_variable_holding_a_password_never_shows_it() {
        for text in WITH_PASSWORD {
            for variable in PROXY_VARIABLES {
                let pairs = [(variable, text)];
                let env = env_of(&pairs);
                let shown = match Route::resolve(
                    &ProxySettings::FromEnvironment,
                    "orch.example.com:443",
                    &env,
                ) {
                    Ok(route) => format!("{route} {route:?} {:?}", route.proxy()),
                    Err(e) => format!("{e} {e:?}"),
                };
                assert!(!shown.contains("hunter2"), "{variable}={text}: {shown}");
            }
        }
    }

    #[tokio::test]
    async fn a_proxy_that_accepts_and_never_answers_is_named_in_the_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and holds every connection, answering nothing.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let route = Route::Proxy(ProxyRoute {
            proxy: addr.to_string(),
            source: "orchestrator.proxy",
            username: None,
            authorization: None,
        });
        let limit = std::time::Duration::from_millis(300);
        let err = route
            .connect("orch.example.com:7443", limit)
            .await
            .unwrap_err();
        silent.abort();
        assert!(
            matches!(&err, ConnectError::Proxy(ProxyError::NoAnswer { after, .. }) if *after == tunnel_limit(limit)),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "the proxy at {addr} accepted the TCP connection but did not answer CONNECT orch.example.com:7443 within"
            )),
            "{err}"
        );
    }

    #[test]
    fn the_tunnel_gets_less_time_than_the_dial() {
        for secs in [1, 10, 60] {
            let limit = std::time::Duration::from_secs(secs);
            assert!(tunnel_limit(limit) < limit);
            assert!(tunnel_limit(limit) >= limit / 2);
        }
    }

    #[test]
    fn a_status_line_gives_its_code() {
        assert_eq!(status_code(b"HTTP/1.1 403 Filtered\r\n"), Some(403));
        assert_eq!(
            status_code(b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic"),
            Some(407)
        );
        assert_eq!(
            status_code(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(status_code(b"HTTP/1.1 502"), Some(502));
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn the_basic_user_is_read_back_for_messages() {
        let value = basic_authorization("alice", "pw:with:colons");
        assert_eq!(value.expose(), "Basic YWxpY2U6cHc6d2l0aDpjb2xvbnM=");
        assert_eq!(basic_user(value.expose()).as_deref(), Some("alice"));
    }
}
