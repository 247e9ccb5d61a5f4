//! The private-worker wire contract.
//!
//! This crate holds `private_worker/v1/worker.proto` and the Rust code that
//! tonic and prost generate from it, nothing else: no domain logic, no
//! transport set-up. The .proto is the source of truth and is documented
//! field by field so that a worker or orchestrator can be written in another
//! language from it alone.
//!
//! Code generation uses `protox`, so building needs no system `protoc`.

/// Version 1 of the contract (`private_worker.v1`).
pub mod v1 {
    #![allow(missing_docs)] // documented in the .proto; prost copies those comments
    #![allow(clippy::all)]
    tonic::include_proto!("private_worker.v1");
}

/// The contract's .proto source, for tools that want to show or ship it.
pub const WORKER_PROTO: &str = include_str!("../private_worker/v1/worker.proto");
