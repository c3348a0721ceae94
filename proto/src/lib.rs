//! Herald's protobuf contract.
//!
//! - [`v1`]: the public gRPC API (`herald.v1`) that back-end services call.
//! - [`bus`]: the envelope that travels from routers to edges (`herald.bus.v1`).
//!
//! The code is generated from `proto/` by `build.rs` and never edited; small helpers live here.
#![deny(rust_2018_idioms)]

/// The public API, package `herald.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// The bus envelope, package `herald.bus.v1`.
#[allow(missing_docs, clippy::all)]
pub mod bus {
    tonic::include_proto!("herald.bus.v1");

    /// The envelope format version this build writes and reads.
    pub const ENVELOPE_VERSION: u32 = 1;
}

pub use prost;
