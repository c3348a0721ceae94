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

/// Channels to a router's gRPC listener, plaintext (`http://`) or TLS (`https://`, trusting a
/// given CA, optionally with a client certificate for mutual TLS), for the CLI, the harness and
/// the tests alike.
pub mod channel {
    use std::path::{Path, PathBuf};

    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

    /// Why a channel could not be made.
    #[derive(Debug, thiserror::Error)]
    pub enum ChannelError {
        /// The address is not a URL tonic takes.
        #[error("bad router address {0:?}")]
        Address(String),
        /// `https://` without a CA to trust.
        #[error("{0} is https: give the CA that signed the router's certificate (--ca-file)")]
        NoCa(String),
        /// A client certificate without its key, or the reverse.
        #[error("a client certificate and its key go together")]
        HalfIdentity,
        /// A PEM file could not be read.
        #[error("cannot read {path}: {source}")]
        Read {
            /// The file.
            path: PathBuf,
            /// The cause.
            source: std::io::Error,
        },
        /// The TLS settings or the connection failed.
        #[error("{0}")]
        Transport(#[from] tonic::transport::Error),
    }

    /// How to reach a router.
    #[derive(Debug, Clone, Default)]
    pub struct RouterAddr {
        /// `http://host:port` or `https://host:port`.
        pub url: String,
        /// PEM CA certificates the router's certificate must chain to (`https://` only).
        pub ca_file: Option<PathBuf>,
        /// PEM client certificate chain, for a router that asks for one (mutual TLS).
        pub cert_file: Option<PathBuf>,
        /// PEM private key of `cert_file`.
        pub key_file: Option<PathBuf>,
        /// The name the router's certificate must carry, when not the URL's host.
        pub server_name: Option<String>,
    }

    fn read(path: &Path) -> Result<Vec<u8>, ChannelError> {
        std::fs::read(path).map_err(|source| ChannelError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    impl RouterAddr {
        /// A plaintext or TLS endpoint as the URL's scheme says, not yet connected.
        pub fn endpoint(&self) -> Result<Endpoint, ChannelError> {
            let endpoint = Endpoint::from_shared(self.url.clone())
                .map_err(|_| ChannelError::Address(self.url.clone()))?;
            if !self.url.starts_with("https://") {
                return Ok(endpoint);
            }
            let ca = self
                .ca_file
                .as_deref()
                .ok_or_else(|| ChannelError::NoCa(self.url.clone()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            match (&self.cert_file, &self.key_file) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => return Err(ChannelError::HalfIdentity),
            }
            if let Some(name) = &self.server_name {
                tls = tls.domain_name(name.clone());
            }
            Ok(endpoint.tls_config(tls)?)
        }

        /// Connects.
        pub async fn connect(&self) -> Result<Channel, ChannelError> {
            Ok(self.endpoint()?.connect().await?)
        }
    }
}
