//! Identity and trust for private-worker, in one place.
//!
//! The worker dials the orchestrator over mutual TLS; each side proves who
//! it is with an X.509 certificate, and a worker's identity is the single
//! URI SAN of its certificate (for example
//! `spiffe://example.org/worker/crm-1`). The worker, the orchestrator,
//! certs-tool and the tests all need the same rules and the same reading of
//! the same files; this crate is where they live, so that a rule changes in
//! one place.
//!
//! # Layout
//! - [`identity`]: which certificate names a worker (one URI SAN,
//!   clientAuth, not a CA) and which serves the orchestrator (serverAuth).
//! - [`pem`]: PEM text and files to certificates, keys and CRLs; errors
//!   name the file.
//! - [`inspect`]: what a certificate says about itself ([`CertInfo`]) and
//!   its brief form, serial and expiry ([`CertificateSummary`]), the one
//!   both ends show in status, `--check` and their logs.
//! - [`material`]: one end's CA bundle, certificate chain and key, read
//!   together, checked (the key is the certificate's) and compared by
//!   content hash, so both ends rotate the same way: a change is noticed
//!   once, broken files are warned about once, the last good material
//!   stays. Also the expiry reminder.
//! - [`tls`]: the rustls client and server configs (aws-lc-rs, safe
//!   protocol versions, ALPN `h2`), the client verifier with CRLs, and a
//!   server certificate resolver that can be swapped.
//! - `test_support` (feature `test-support`, tests only): a throw-away
//!   rcgen CA issuing server, worker and odd certificates and CRLs.
//!
//! # What it does not do
//! It does not dial or accept connections (the worker's `tls` module and
//! the orchestrator's gateway do), decides no policy (which identities are
//! admitted, when to roll a stream over, how often to poll the files are
//! the callers' choices) and issues no certificates outside the test
//! fixture (certs-tool is the CA). It verifies chains only through rustls'
//! webpki verifiers that it builds; [`identity`] inspects a certificate
//! that has been verified, or that its owner is about to present.

pub mod identity;
pub mod inspect;
pub mod material;
pub mod pem;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod tls;

pub use identity::{IdentityError, worker_identity_from_der};
pub use inspect::{CertInfo, CertificateSummary, inspect_der, inspect_pem};
pub use material::{Material, MaterialError, TlsFile, TlsPaths};
pub use pem::PemError;
