//! Admission of worker connections: which verified worker identities may
//! open a session at all (`[admission] identities`), and how many
//! connections they may hold (`max_connections_per_identity`,
//! `max_connections_before_hello`).
//!
//! A client certificate that chains to the CA and carries a worker identity
//! (see [`crate::tls`]) is then checked against the allowlist. With no
//! allowlist configured every identity of the CA is admitted (the behaviour
//! before admission rules existed) and [`Admission::log_start`] says so at
//! start. A refused connection is closed right after its handshake, before
//! anything of it reaches the gRPC service, logged with its identity
//! escaped, and counted ([`Admission::refused_identities`]).
//!
//! # Pattern syntax
//!
//! An [`IdentityPattern`] is matched against the whole URI SAN, e.g.
//! `spiffe://example.org/worker/crm-eu-1`, case-sensitively, character by
//! character:
//! - `*` matches any run of characters, possibly empty, that contains no
//!   `/`: it never crosses a path segment or the trust domain boundary, so
//!   `spiffe://example.org/worker/*` admits `.../worker/a` but not
//!   `.../worker/a/b`, and not `spiffe://example.org/workerx`;
//! - `?` matches exactly one character other than `/`;
//! - every other character matches itself (there is no escaping, character
//!   classes or `**`: a URI SAN needs none of them).
//!
//! A pattern must not be empty nor contain whitespace or control
//! characters. An identity is admitted when any pattern matches it.
//!
//! # Connection limits
//!
//! - `max_connections_before_hello` (default
//!   [`DEFAULT_MAX_CONNECTIONS_BEFORE_HELLO`]) bounds, across all peers, the
//!   connections that have not said `Hello` yet: TCP connections in their
//!   TLS handshake and authenticated ones whose `Hello` has not been seen.
//!   A TCP connection accepted past it is closed at once, before any TLS.
//!   A connection frees its place when its `Hello` is accepted or when it
//!   closes (at the latest [`crate::tls::NO_HELLO_CLOSE`] after its
//!   handshake, or [`crate::tls::HANDSHAKE_TIMEOUT`] after accept).
//! - `max_connections_per_identity` (default
//!   [`DEFAULT_MAX_CONNECTIONS_PER_IDENTITY`]) bounds the live
//!   authenticated connections of one identity, `Hello` said or not; one
//!   past it is closed right after its handshake. A flood from one
//!   certificate thus holds at most that many places and cannot lock other
//!   workers out (tested in `tests/admission.rs`).
//!
//! Each refusal is counted, and logged as a warning, at most
//! [`REFUSALS_LOGGED_PER_WINDOW`] per [`REFUSAL_LOG_WINDOW`]: a flood fills
//! neither the disk nor the log reader's screen, and the next warning
//! after a quiet spell says how many were not logged
//! ([`Admission::refusal_log`]).
//!
//! Revocation (`[admission] crl`) is checked during the TLS handshake by
//! [`crate::tls::ClientVerifier`], which reloads the CRL file when it
//! changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Default `max_connections_per_identity`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 4;
/// Default `max_connections_before_hello`.
pub const DEFAULT_MAX_CONNECTIONS_BEFORE_HELLO: usize = 256;
/// Most refused connections logged per [`REFUSAL_LOG_WINDOW`].
pub const REFUSALS_LOGGED_PER_WINDOW: u32 = 20;
/// The window over which refusal warnings are counted.
pub const REFUSAL_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// How many refusal warnings the current window has logged, and how many
/// refusals went unlogged since the last warning.
#[derive(Debug)]
struct RefusalLogWindow {
    started: tokio::time::Instant,
    logged: u32,
    unlogged: u64,
}

/// One glob-like pattern on a full worker identity (see the module docs for
/// the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern(String);

impl IdentityPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// A message for an empty pattern or one with whitespace or control
    /// characters.
    pub fn new(pattern: &str) -> Result<IdentityPattern, String> {
        if pattern.is_empty() {
            return Err("an identity pattern must not be empty".into());
        }
        if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "identity pattern {:?} contains whitespace or a control character",
                pattern
            ));
        }
        Ok(IdentityPattern(pattern.to_string()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `identity` matches the whole pattern.
    pub fn matches(&self, identity: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let s: Vec<char> = identity.chars().collect();
        // ok[j]: the part of the pattern handled so far (a suffix) matches
        // s[j..]; filled from the end of the pattern back (O(len(p) x len(s)), both short).
        let mut ok = vec![false; s.len() + 1];
        ok[s.len()] = true;
        for &c in p.iter().rev() {
            let mut next = vec![false; s.len() + 1];
            for j in (0..=s.len()).rev() {
                next[j] = match c {
                    // empty, or one non-`/` character and the star again
                    '*' => ok[j] || (j < s.len() && s[j] != '/' && next[j + 1]),
                    '?' => j < s.len() && s[j] != '/' && ok[j + 1],
                    lit => j < s.len() && s[j] == lit && ok[j + 1],
                };
            }
            ok = next;
        }
        ok[0]
    }
}

/// The admission rules in force, the places they hand out and what they
/// refused.
#[derive(Debug)]
pub struct Admission {
    identities: Option<Vec<IdentityPattern>>,
    max_per_identity: usize,
    max_before_hello: usize,
    before_hello: AtomicUsize,
    per_identity: Mutex<HashMap<String, usize>>,
    refused_identities: AtomicU64,
    refused_identity_limit: AtomicU64,
    refused_before_hello_limit: AtomicU64,
    refusal_log: Mutex<Option<RefusalLogWindow>>,
    revocation: Option<Arc<crate::tls::ClientVerifier>>,
}

/// A place among the connections that have not said `Hello`; given back
/// when dropped.
#[derive(Debug)]
pub struct BeforeHelloSlot(Arc<Admission>);

impl Drop for BeforeHelloSlot {
    fn drop(&mut self) {
        self.0.before_hello.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place among the live connections of one identity; given back when
/// dropped.
#[derive(Debug)]
pub struct IdentitySlot {
    admission: Arc<Admission>,
    identity: String,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut map = self
            .admission
            .per_identity
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

impl Admission {
    /// Rules from the config: `identities` is the allowlist (`None` for
    /// "every identity of the CA"), then the two connection limits.
    pub fn new(
        identities: Option<Vec<IdentityPattern>>,
        max_per_identity: usize,
        max_before_hello: usize,
    ) -> Admission {
        Admission {
            identities,
            max_per_identity,
            max_before_hello,
            before_hello: AtomicUsize::new(0),
            per_identity: Mutex::new(HashMap::new()),
            refused_identities: AtomicU64::new(0),
            refused_identity_limit: AtomicU64::new(0),
            refused_before_hello_limit: AtomicU64::new(0),
            refusal_log: Mutex::new(None),
            revocation: None,
        }
    }

    /// Checks open connections again with `verifier` whenever its CRL file
    /// is reloaded, closing those whose certificate is now revoked.
    #[must_use]
    pub fn with_revocation(mut self, verifier: Arc<crate::tls::ClientVerifier>) -> Admission {
        self.revocation = Some(verifier);
        self
    }

    /// The verifier open connections are checked against again on a CRL
    /// reload, if any.
    pub fn revocation(&self) -> Option<&Arc<crate::tls::ClientVerifier>> {
        self.revocation.as_ref()
    }

    /// Whether a refused connection may be logged now: `Some(n)` with the
    /// refusals left unlogged since the last warning (say so in it), or
    /// `None` past [`REFUSALS_LOGGED_PER_WINDOW`] in this window. Every
    /// refused connection, handshake failures included, asks first.
    pub fn refusal_log(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut guard = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        let window = guard.get_or_insert(RefusalLogWindow {
            started: now,
            logged: 0,
            unlogged: 0,
        });
        if now.duration_since(window.started) >= REFUSAL_LOG_WINDOW {
            window.started = now;
            window.logged = 0;
        }
        if window.logged >= REFUSALS_LOGGED_PER_WINDOW {
            window.unlogged += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.unlogged))
    }

    /// Logs the rules in force (a warning when there is no allowlist).
    pub fn log_start(&self) {
        match &self.identities {
            None => tracing::warn!(
                "no admission rule set ([admission] identities): every worker identity certified by the CA may connect"
            ),
            Some(patterns) => tracing::info!(
                patterns = ?patterns.iter().map(IdentityPattern::as_str).collect::<Vec<_>>(),
                "worker identities admitted"
            ),
        }
        tracing::info!(
            max_connections_per_identity = self.max_per_identity,
            max_connections_before_hello = self.max_before_hello,
            "worker connection limits"
        );
    }

    /// Whether `identity` may open a connection; a refusal is counted.
    pub fn admit_identity(&self, identity: &str) -> bool {
        let admitted = match &self.identities {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(identity)),
        };
        if !admitted {
            self.refused_identities.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// A place for a new connection that has not said `Hello`, or `None`
    /// (counted) when `max_connections_before_hello` are taken.
    pub fn before_hello_slot(self: &Arc<Self>) -> Option<BeforeHelloSlot> {
        let taken = self
            .before_hello
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_before_hello).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(BeforeHelloSlot(self.clone())),
            Err(_) => {
                self.refused_before_hello_limit
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A place for one more live connection of `identity`, or `None`
    /// (counted) when it holds `max_connections_per_identity` already.
    pub fn identity_slot(self: &Arc<Self>, identity: &str) -> Option<IdentitySlot> {
        let mut map = self.per_identity.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(identity.to_string()).or_insert(0);
        if *n >= self.max_per_identity {
            drop(map);
            self.refused_identity_limit.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(IdentitySlot {
            admission: self.clone(),
            identity: identity.to_string(),
        })
    }

    /// How many connections were refused because their identity matched no
    /// pattern, since start.
    pub fn refused_identities(&self) -> u64 {
        self.refused_identities.load(Ordering::Relaxed)
    }

    /// How many connections were refused because their identity held
    /// `max_connections_per_identity` already, since start.
    pub fn refused_identity_limit(&self) -> u64 {
        self.refused_identity_limit.load(Ordering::Relaxed)
    }

    /// How many TCP connections were closed at accept because
    /// `max_connections_before_hello` were taken, since start.
    pub fn refused_before_hello_limit(&self) -> u64 {
        self.refused_before_hello_limit.load(Ordering::Relaxed)
    }

    /// The counters, as the admin API shows them.
    pub fn view(&self) -> crate::api::AdmissionView {
        crate::api::AdmissionView {
            refused_identities: self.refused_identities(),
            refused_identity_limit: self.refused_identity_limit(),
            refused_before_hello_limit: self.refused_before_hello_limit(),
            connections_before_hello: self.connections_before_hello(),
        }
    }

    /// Connections holding a place before `Hello` right now.
    pub fn connections_before_hello(&self) -> usize {
        self.before_hello.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, identity: &str) -> bool {
        IdentityPattern::new(pattern).unwrap().matches(identity)
    }

    #[test]
    fn literals_match_only_the_whole_identity() {
        assert!(m("spiffe://e.org/worker/a", "spiffe://e.org/worker/a"));
        assert!(!m("spiffe://e.org/worker/a", "spiffe://e.org/worker/ab"));
        assert!(!m("spiffe://e.org/worker/ab", "spiffe://e.org/worker/a"));
        assert!(!m("spiffe://e.org/worker/a", "spiffe://e.org/worker/A"));
        assert!(!m("spiffe://e.org/worker/a", "xspiffe://e.org/worker/a"));
    }

    #[test]
    fn a_star_matches_within_one_segment_only() {
        let p = "spiffe://example.org/worker/*";
        assert!(m(p, "spiffe://example.org/worker/crm-eu-1"));
        assert!(m(p, "spiffe://example.org/worker/"));
        assert!(!m(p, "spiffe://example.org/worker/a/b"));
        assert!(!m(p, "spiffe://example.org/workerx"));
        assert!(!m(p, "spiffe://example.org.evil/worker/a"));
        assert!(!m(p, "spiffe://evil.org/worker/a"));
        assert!(m("spiffe://*/worker/a", "spiffe://x.org/worker/a"));
        assert!(!m("spiffe://*/worker/a", "spiffe://x.org/y/worker/a"));
        assert!(m("spiffe://e.org/*/x-*-z", "spiffe://e.org/w/x-yy-z"));
        assert!(m("spiffe://e.org/w/*-eu-*", "spiffe://e.org/w/crm-eu-eu-2"));
        assert!(!m("spiffe://e.org/w/*-eu", "spiffe://e.org/w/crm-eu/x-eu"));
        assert!(m("*", "abc"));
        assert!(!m("*", "a/b"));
        assert!(m("**", ""));
    }

    #[test]
    fn a_question_mark_matches_exactly_one_character_but_not_a_slash() {
        let p = "spiffe://example.org/worker/crm-eu-?";
        assert!(m(p, "spiffe://example.org/worker/crm-eu-1"));
        assert!(m(p, "spiffe://example.org/worker/crm-eu-é"));
        assert!(!m(p, "spiffe://example.org/worker/crm-eu-"));
        assert!(!m(p, "spiffe://example.org/worker/crm-eu-12"));
        assert!(!m(p, "spiffe://example.org/worker/crm-eu-/"));
    }

    #[test]
    fn empty_and_blank_patterns_are_refused() {
        assert!(IdentityPattern::new("").is_err());
        assert!(IdentityPattern::new("spiffe://e.org/ w").is_err());
        assert!(IdentityPattern::new("spiffe://e.org/\nw").is_err());
    }

    #[test]
    fn without_an_allowlist_everything_is_admitted_and_refusals_are_counted() {
        let open = Admission::new(None, 4, 256);
        assert!(open.admit_identity("spiffe://any/worker/x"));
        assert_eq!(open.refused_identities(), 0);
        let closed = Admission::new(
            Some(vec![
                IdentityPattern::new("spiffe://e.org/worker/*").unwrap(),
                IdentityPattern::new("spiffe://e.org/other/a").unwrap(),
            ]),
            4,
            256,
        );
        assert!(closed.admit_identity("spiffe://e.org/worker/1"));
        assert!(closed.admit_identity("spiffe://e.org/other/a"));
        assert!(!closed.admit_identity("spiffe://e.org/other/b"));
        assert!(!closed.admit_identity("spiffe://e.org/worker/1/2"));
        assert_eq!(closed.refused_identities(), 2);
        let none = Admission::new(Some(vec![]), 4, 256);
        assert!(!none.admit_identity("spiffe://e.org/worker/1"));
    }

    #[tokio::test(start_paused = true)]
    async fn refusal_warnings_are_bounded_per_window_and_the_next_one_counts_the_rest() {
        let a = Admission::new(None, 1, 1);
        let logged = (0..REFUSALS_LOGGED_PER_WINDOW + 30)
            .filter(|_| a.refusal_log().is_some())
            .count();
        assert_eq!(logged, REFUSALS_LOGGED_PER_WINDOW as usize);
        tokio::time::advance(REFUSAL_LOG_WINDOW).await;
        assert_eq!(
            a.refusal_log(),
            Some(30),
            "the 30 unlogged ones are counted"
        );
        assert_eq!(a.refusal_log(), Some(0));
    }

    #[test]
    fn slots_are_bounded_and_given_back_when_dropped() {
        let a = Arc::new(Admission::new(None, 2, 3));
        let one = a.identity_slot("x").unwrap();
        let two = a.identity_slot("x").unwrap();
        assert!(a.identity_slot("x").is_none());
        let other = a.identity_slot("y").unwrap();
        drop(one);
        let three = a.identity_slot("x").unwrap();
        assert!(a.identity_slot("x").is_none());
        assert_eq!(a.refused_identity_limit(), 2);
        drop((two, three, other));
        assert!(a.per_identity.lock().unwrap().is_empty(), "no leftovers");

        let held: Vec<_> = (0..3).map(|_| a.before_hello_slot().unwrap()).collect();
        assert!(a.before_hello_slot().is_none());
        assert_eq!(a.connections_before_hello(), 3);
        drop(held);
        assert_eq!(a.connections_before_hello(), 0);
        assert!(a.before_hello_slot().is_some());
        assert_eq!(a.refused_before_hello_limit(), 1);
    }
}
