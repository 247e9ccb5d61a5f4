//! PKI helper for private-worker, built on rcgen.
//!
//! The worker dials out to the orchestrator over mutual TLS. Both ends need
//! certificates: the orchestrator a server certificate for its DNS names and
//! IP addresses, each worker a client certificate whose single URI SAN (for
//! example `spiffe://example.org/worker/crm-1`) is its identity. This crate
//! makes them, for development (one command writes a whole PKI) and for
//! enterprises that run their own CA (the worker creates a CSR, the key never
//! leaves the worker host, the CA signs it and decides every usage).
//!
//! # Layout
//! - [`ca`]: [`CertificateAuthority`], a root or intermediate CA that creates
//!   intermediates and issues leaf certificates.
//! - [`issue`]: what a leaf certificate looks like (server, worker) and the
//!   worker side of the CSR flow ([`create_worker_csr`]).
//! - [`renew`]: a new certificate for an existing key and identity
//!   (`certs-tool renew`), written atomically.
//! - [`files`]: writes PEM files, private keys with mode 0600 from the start.
//! - [`dev`]: one call (or `certs-tool dev`) writes a complete dev PKI.
//! - [`approver`]: the Ed25519 key pair that signs approvals (`certs-tool
//!   approver-key`).
//! - `main.rs`: the `certs-tool` command line, a thin layer over this library.
//!
//! The identity rules, PEM reading and certificate inspection it relies on
//! are [`private_worker_identity`]'s, shared with the worker, the
//! orchestrator and the tests.
//!
//! # What it does not do
//! It verifies no chains and no signatures at run time (rustls does, during
//! the handshake), keeps no CA database, issues no CRLs and does not track
//! serial numbers: serials are random (127 bits), so no state is needed. Keys
//! are ECDSA P-256. It is not a replacement for an enterprise CA; it is a
//! small, auditable one for development and CI, and a CSR generator for
//! production.

pub mod approver;
pub mod ca;
pub mod dev;
mod error;
pub mod files;
pub mod issue;
pub mod renew;
#[cfg(test)]
mod test_support;

pub use ca::CertificateAuthority;
pub use error::CertError;
pub use issue::{
    IssuedCert, ServerCertRequest, WorkerCertRequest, WorkerCsr, create_worker_csr,
    validate_identity,
};
