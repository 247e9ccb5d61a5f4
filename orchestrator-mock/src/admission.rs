//! Admission of worker connections after the TLS handshake: which verified
//! worker identities may open a session at all (`[admission] identities`).
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

use std::sync::atomic::{AtomicU64, Ordering};

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

/// The admission rules in force and what they refused.
#[derive(Debug, Default)]
pub struct Admission {
    identities: Option<Vec<IdentityPattern>>,
    refused_identities: AtomicU64,
}

impl Admission {
    /// Rules from the config: `identities` is the allowlist, `None` for
    /// "every identity of the CA".
    pub fn new(identities: Option<Vec<IdentityPattern>>) -> Admission {
        Admission {
            identities,
            refused_identities: AtomicU64::new(0),
        }
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

    /// How many connections were refused because their identity matched no
    /// pattern, since start.
    pub fn refused_identities(&self) -> u64 {
        self.refused_identities.load(Ordering::Relaxed)
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
        let open = Admission::new(None);
        assert!(open.admit_identity("spiffe://any/worker/x"));
        assert_eq!(open.refused_identities(), 0);
        let closed = Admission::new(Some(vec![
            IdentityPattern::new("spiffe://e.org/worker/*").unwrap(),
            IdentityPattern::new("spiffe://e.org/other/a").unwrap(),
        ]));
        assert!(closed.admit_identity("spiffe://e.org/worker/1"));
        assert!(closed.admit_identity("spiffe://e.org/other/a"));
        assert!(!closed.admit_identity("spiffe://e.org/other/b"));
        assert!(!closed.admit_identity("spiffe://e.org/worker/1/2"));
        assert_eq!(closed.refused_identities(), 2);
        let none = Admission::new(Some(vec![]));
        assert!(!none.admit_identity("spiffe://e.org/worker/1"));
    }
}
