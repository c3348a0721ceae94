//! Herald's protobuf contract.
//!
//! - [`v1`]: the public gRPC API (`herald.v1`) that back-end services call.
//! - [`bus`]: the envelope that travels from routers to edges (`herald.bus.v1`).
//! - [`admin`]: projects and keys at runtime (`herald.admin.v1`).
//!
//! The code is generated from `proto/` by `build.rs` and never edited; small helpers live here.
#![deny(rust_2018_idioms)]

/// The generated packages, nested as their names say (the bus refers to `herald.v1` types).
#[allow(missing_docs, clippy::all)]
mod generated {
    pub mod herald {
        pub mod v1 {
            tonic::include_proto!("herald.v1");
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("herald.admin.v1");
            }
        }
        pub mod bus {
            pub mod v1 {
                tonic::include_proto!("herald.bus.v1");
            }
        }
    }
}

/// The public API, package `herald.v1`.
pub mod v1 {
    pub use crate::generated::herald::v1::*;
}

/// The admin API, package `herald.admin.v1`.
pub mod admin {
    pub use crate::generated::herald::admin::v1::*;
}

/// The bus messages, package `herald.bus.v1`: the envelope and the operator calls.
pub mod bus {
    pub use crate::generated::herald::bus::v1::*;

    /// The envelope format version this build writes and reads.
    pub const ENVELOPE_VERSION: u32 = 1;
}

pub use prost;
