//! Admin API bearer tokens: the roles, and the token file that stores
//! them hashed.
//!
//! A token is `pwm_` followed by 32 random bytes from the operating
//! system's RNG, base64url without padding. It is shown once, by
//! `orchestrator-mock token create`, and never stored: the token file
//! (`[admin] tokens_file`, default `admin_tokens.json` in `data_dir`,
//! mode 0600 on unix, replaced atomically) holds each token's name, its
//! roles and the SHA-256 of the token.
//!
//! | Role | Allows |
//! |---|---|
//! | `read` | every `GET` (except `/healthz`, which is open) |
//! | `submit` | `POST /v1/plans`, cancelling a plan or a step |
//! | `approve` | approving and rejecting a plan |
//! | `operate` | everything under `/v1/testing` (fault injection) |
//!
//! A token may hold several roles, but the one that submits plans should
//! not also approve them: the agent that proposes work is exactly who must
//! not be able to consent to it. `token create` warns when one token gets
//! both.
//!
//! The server reads the file on every admin request (see
//! [`TokenFile::authenticate`]), so a created or revoked token counts from
//! the next request, with no restart.
//!
//! Changes (create, issue, revoke) read, modify and replace the file while
//! holding an exclusive lock on `<file>.lock` beside it, so two `token`
//! commands run at the same instant cannot lose each other's change (a
//! revoke that reports success stays revoked). Readers take no lock: every
//! write replaces the whole file atomically.
//!
//! What it does not do: expire tokens.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// The token file's name inside `data_dir` when `[admin] tokens_file` is
/// not set.
pub const DEFAULT_TOKENS_FILE: &str = "admin_tokens.json";

/// What every token starts with (so a leaked one is recognisable by
/// secret scanners and by people).
pub const TOKEN_PREFIX: &str = "pwm_";

/// How many random bytes a token carries.
pub const TOKEN_BYTES: usize = 32;

/// The format version written in the token file.
const FILE_VERSION: u32 = 1;

/// What a token may do on the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every `GET` except `/healthz`: plans, results, audit, workers, tasks.
    Read,
    /// `POST /v1/plans`, `POST /v1/plans/{id}/cancel`,
    /// `POST /v1/plans/{id}/steps/{index}/cancel`.
    Submit,
    /// `POST /v1/plans/{id}/approve` and `POST /v1/plans/{id}/reject`.
    Approve,
    /// Everything under `/v1/testing` (fault injection, contract tests).
    Operate,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 4] = [Role::Read, Role::Submit, Role::Approve, Role::Operate];

    /// The role's name as written in the token file and on the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Approve => "approve",
            Role::Operate => "operate",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?} (expected read, submit, approve or operate)")
            })
    }
}

/// A token as the file lists it: no hash, no token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// The token's name (who or what holds it).
    pub name: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// The caller a presented token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (safe to log).
    pub name: String,
    /// Its roles.
    pub roles: BTreeSet<Role>,
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file (or its directory) could not be read or written; check
    /// the path and permissions.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a token file (edited by hand?); fix or remove it
    /// and create the tokens again.
    #[error("token file {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `create` with a name already in use; revoke it first or pick
    /// another name.
    #[error("a token named {0:?} already exists; revoke it first or choose another name")]
    NameTaken(String),
    /// `revoke` of a name not in the file.
    #[error("no token named {0:?}")]
    NoSuchName(String),
    /// A token name must be 1 to 64 characters from `A-Z a-z 0-9 . _ -`
    /// (it is logged with every refusal).
    #[error("bad token name {0:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// A token needs at least one role.
    #[error("a token needs at least one role (read, submit, approve, operate)")]
    NoRoles,
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
}

/// One entry of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    roles: BTreeSet<Role>,
    /// Hex SHA-256 of the token.
    sha256: String,
    created_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    version: u32,
    tokens: Vec<Entry>,
}

/// The token file: where admin tokens are stored, hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    path: PathBuf,
}

/// The SHA-256 of a token.
///
/// A plain fast hash is the right tool here, unlike for passwords: a token
/// carries 256 random bits, so no dictionary or brute-force search over
/// its hash can succeed however fast each guess is, and a slow KDF
/// (argon2, bcrypt) would only make every admin request slower. The hash
/// keeps a copied token file from being a list of usable tokens.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadName(name.to_string()))
    }
}

/// A new random token.
fn new_token() -> Result<String, TokenError> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

impl TokenFile {
    /// The token file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile { path: path.into() }
    }

    /// The default token file of a data directory
    /// (`<data_dir>/admin_tokens.json`).
    pub fn in_data_dir(data_dir: &Path) -> TokenFile {
        TokenFile::new(data_dir.join(DEFAULT_TOKENS_FILE))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the entries; a missing file has none.
    fn read(&self) -> Result<Vec<Entry>, TokenError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(TokenError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let invalid = |message: String| TokenError::Invalid {
            path: self.path.clone(),
            message,
        };
        let body: FileBody = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if body.version != FILE_VERSION {
            return Err(invalid(format!(
                "version {} (this build reads {FILE_VERSION})",
                body.version
            )));
        }
        for e in &body.tokens {
            if e.sha256.len() != 64 || hex::decode(&e.sha256).is_err() {
                return Err(invalid(format!(
                    "token {:?}: sha256 is not 64 hex digits",
                    e.name
                )));
            }
        }
        Ok(body.tokens)
    }

    /// Replaces the file atomically: a temporary file beside it (0600 on
    /// unix), synced, renamed over it, and the directory synced.
    fn write(&self, tokens: Vec<Entry>) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut text = serde_json::to_vec_pretty(&FileBody {
            version: FILE_VERSION,
            tokens,
        })
        .map_err(|e| io(std::io::Error::other(e)))?;
        text.push(b'\n');
        let file_name = self
            .path
            .file_name()
            .map_or_else(|| "tokens".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let result = (|| {
            let mut file = options.open(&tmp)?;
            // A leftover temporary file may have older, wider permissions.
            #[cfg(unix)]
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            #[cfg(unix)]
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// Creates a token `name` with `roles`; returns the token, which is
    /// not stored anywhere and cannot be shown again.
    ///
    /// # Errors
    /// [`TokenError::NameTaken`], [`TokenError::BadName`],
    /// [`TokenError::NoRoles`], or the file cannot be read or written.
    pub fn create(&self, name: &str, roles: &[Role]) -> Result<String, TokenError> {
        self.add(name, roles, false)
    }

    /// As [`TokenFile::create`], but replaces a token of the same name
    /// (test harnesses and the scenario runner, which re-create their own
    /// token on every run).
    ///
    /// # Errors
    /// As [`TokenFile::create`], without `NameTaken`.
    pub fn issue(&self, name: &str, roles: &[Role]) -> Result<String, TokenError> {
        self.add(name, roles, true)
    }

    /// Runs `change` while holding the exclusive lock on `<file>.lock`.
    fn locked<T>(&self, change: impl FnOnce() -> Result<T, TokenError>) -> Result<T, TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let lock = options.open(&lock_path).map_err(io)?;
        lock.lock().map_err(io)?;
        let result = change();
        drop(lock);
        result
    }

    fn add(&self, name: &str, roles: &[Role], replace: bool) -> Result<String, TokenError> {
        check_name(name)?;
        if roles.is_empty() {
            return Err(TokenError::NoRoles);
        }
        self.locked(|| self.add_locked(name, roles, replace))
    }

    fn add_locked(&self, name: &str, roles: &[Role], replace: bool) -> Result<String, TokenError> {
        let mut tokens = self.read()?;
        if tokens.iter().any(|e| e.name == name) {
            if !replace {
                return Err(TokenError::NameTaken(name.to_string()));
            }
            tokens.retain(|e| e.name != name);
        }
        let token = new_token()?;
        tokens.push(Entry {
            name: name.to_string(),
            roles: roles.iter().copied().collect(),
            sha256: hex::encode(token_hash(&token)),
            created_at: now_rfc3339(),
        });
        self.write(tokens)?;
        Ok(token)
    }

    /// Removes the token `name`; from the next request it is refused.
    ///
    /// # Errors
    /// [`TokenError::NoSuchName`], or the file cannot be read or written.
    pub fn revoke(&self, name: &str) -> Result<(), TokenError> {
        self.locked(|| {
            let mut tokens = self.read()?;
            let before = tokens.len();
            tokens.retain(|e| e.name != name);
            if tokens.len() == before {
                return Err(TokenError::NoSuchName(name.to_string()));
            }
            self.write(tokens)
        })
    }

    /// Every token's name, roles and creation time (never its hash).
    ///
    /// # Errors
    /// The file cannot be read or is not a token file.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        Ok(self
            .read()?
            .into_iter()
            .map(|e| TokenInfo {
                name: e.name,
                roles: e.roles,
                created_at: e.created_at,
            })
            .collect())
    }

    /// Checks that the file is absent or readable and valid (at start).
    ///
    /// # Errors
    /// The file cannot be read or is not a token file.
    pub fn check(&self) -> Result<usize, TokenError> {
        self.read().map(|t| t.len())
    }

    /// The caller `token` belongs to, or `None` for an unknown token.
    ///
    /// Reads the file on every call: a few hundred bytes per token, a
    /// read and a parse cost microseconds next to the durable commit
    /// every admin change waits for, and it makes creation and revocation
    /// take effect at the next request with no cache that an mtime of
    /// coarse granularity could leave stale. The presented token's hash
    /// is compared with every entry in constant time, all entries always,
    /// so timing tells nothing about how close a guess came.
    ///
    /// # Errors
    /// The file cannot be read or is not a token file (the server then
    /// refuses every request: fail closed).
    pub fn authenticate(&self, token: &str) -> Result<Option<Caller>, TokenError> {
        let presented = token_hash(token);
        let mut found = None;
        for entry in self.read()? {
            let mut stored = [0u8; 32];
            // Checked to be 64 hex digits by `read`.
            if hex::decode_to_slice(&entry.sha256, &mut stored).is_err() {
                continue;
            }
            if bool::from(stored.ct_eq(&presented)) && found.is_none() {
                found = Some(Caller {
                    name: entry.name,
                    roles: entry.roles,
                });
            }
        }
        Ok(found)
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_changes_lose_nothing_and_a_revoke_stays_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin_tokens.json");
        let victim = TokenFile::new(&path)
            .create("victim", &[Role::Read])
            .unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let file = TokenFile::new(&path);
                    if i == 7 {
                        file.revoke("victim").unwrap();
                    } else {
                        file.create(&format!("t{i}"), &[Role::Read]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let file = TokenFile::new(&path);
        let names: Vec<String> = file.list().unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names.len(), 15, "every create kept: {names:?}");
        assert!(!names.contains(&"victim".to_string()), "{names:?}");
        assert_eq!(file.authenticate(&victim).unwrap(), None, "the revoke held");
    }

    #[test]
    fn a_created_token_authenticates_with_its_roles_and_is_not_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::in_data_dir(dir.path());
        let token = file
            .create("ci-submitter", &[Role::Submit, Role::Read])
            .unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 43);
        let caller = file.authenticate(&token).unwrap().unwrap();
        assert_eq!(caller.name, "ci-submitter");
        assert_eq!(caller.roles, [Role::Read, Role::Submit].into());
        assert_eq!(file.authenticate("pwm_guess").unwrap(), None);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains(&token), "{text}");
        assert!(!text.contains(&token[TOKEN_PREFIX.len()..]), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn names_are_unique_checked_and_revocation_removes_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("t.json"));
        let a = file.create("alice", &[Role::Approve]).unwrap();
        assert!(matches!(
            file.create("alice", &[Role::Read]),
            Err(TokenError::NameTaken(_))
        ));
        assert!(matches!(
            file.create("a b", &[Role::Read]),
            Err(TokenError::BadName(_))
        ));
        assert!(matches!(file.create("bob", &[]), Err(TokenError::NoRoles)));
        let b = file.issue("alice", &[Role::Read]).unwrap();
        assert_eq!(file.authenticate(&a).unwrap(), None, "replaced");
        assert!(file.authenticate(&b).unwrap().is_some());
        assert_eq!(file.list().unwrap().len(), 1);
        file.revoke("alice").unwrap();
        assert_eq!(file.authenticate(&b).unwrap(), None);
        assert!(matches!(
            file.revoke("alice"),
            Err(TokenError::NoSuchName(_))
        ));
    }

    #[test]
    fn a_broken_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("t.json"));
        assert_eq!(file.check().unwrap(), 0, "a missing file has no tokens");
        std::fs::write(file.path(), "{\"version\": 1, \"tokens\": [").unwrap();
        assert!(matches!(
            file.authenticate("x"),
            Err(TokenError::Invalid { .. })
        ));
    }

    #[test]
    fn roles_parse_from_their_names() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
