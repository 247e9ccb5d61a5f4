//! Shared fixtures for private-worker's end-to-end tests and its demo.
//!
//! # Layout
//! - [`admin`]: admin API clients with the tokens each harness needs.
//! - [`bench`]: the transport baseline and the load worker of the `bench` binary.
//! - [`internal_api`]: the stand-in internal CRM API (bearer token, records requests).
//! - [`catalog`]: the sample tasks: registry entries for the orchestrator and
//!   the matching worker allowlist, written from one description.
//! - [`conformance`]: the conformance pack's harness: one run's world (PKI,
//!   internal API, registry, mock and worker configs) and `orchestrator-mock
//!   test` over scenario files against a worker command, its JUnit parsed back.
//! - [`mcp_client`]: running the MCP client of `tests/mcp_client/` (the
//!   official MCP Python SDK) against orchestrator-mock's `/mcp`.
//! - [`pki`]: fresh certificates per test, through the certs-tool library.
//! - [`procs`]: building and running the real binaries as child processes,
//!   with their output captured to files.
//! - [`python_worker`]: running the Python worker of `tests/python_worker/`
//!   (interpreter and packages, generated code, its config).
//! - [`proxy`]: TCP relays: one whose connections a test can cut, and a
//!   recording upstream for a real HTTP proxy.
//! - [`scripted`]: a scripted orchestrator (the contract's server side with
//!   the test in control) to play a broken or hostile orchestrator.
//! - [`sockets`]: what sockets a process holds, read from /proc.
//! - [`tinyproxy`]: a real HTTP proxy (Debian's tinyproxy) per test.
//! - [`fake_vault`]: a fake Azure Key Vault and token endpoint over HTTPS,
//!   close enough to the service for the real SDK (a test double).
//!
//! Nothing here is product code: it exists so that tests and the demo
//! exercise the real binaries over real sockets on 127.0.0.1.

pub mod admin;
pub mod bench;
pub mod catalog;
pub mod conformance;
pub mod fake_vault;
pub mod internal_api;
pub mod mcp_client;
pub mod pki;
pub mod procs;
pub mod proxy;
pub mod python_worker;
pub mod scripted;
pub mod sockets;
pub mod tinyproxy;
