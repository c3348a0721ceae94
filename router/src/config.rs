//! The router's settings: one serde struct, every field documented with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of a router (`[router]` in the TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Address of the gRPC listener. Default `0.0.0.0:50051`.
    pub listen: SocketAddr,
    /// Address of the HTTP/JSON API listener (the same calls as gRPC). Default none: off.
    pub http_listen: Option<SocketAddr>,
    /// Deadline for a request's headers on `http_listen`, in milliseconds, from the accept or
    /// the previous answer: a client slower than that, or a keep-alive connection idle that
    /// long, is closed. Default 10,000.
    pub http_header_timeout_ms: u64,
    /// Largest payload accepted, in bytes (larger: `INVALID_ARGUMENT`). Default 65,536.
    pub max_payload_bytes: usize,
    /// How long an idempotency key is remembered, in seconds. Default 300.
    pub idempotency_window_secs: u64,
    /// Deadline for operator calls that ask every edge, in milliseconds. Default 2,000.
    pub control_timeout_ms: u64,
    /// API keys allowed to do everything, in every project. Default none.
    pub admin_api_keys: Vec<String>,
    /// Directory where projects created through the admin API are kept (`projects.json`), so a
    /// restart keeps them. Default none: they live as long as the process.
    pub state_dir: Option<PathBuf>,
    /// Serve the web console under `/console/` on `http_listen` (docs/console.md). Default
    /// true.
    pub console: bool,
    /// PEM certificate chain of the gRPC listener; with `tls_key` the listener speaks TLS only
    /// (clients use `https://`). Default none: plaintext.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`. Default none.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: with it, the gRPC listener requires a client certificate signed by
    /// one of them (mutual TLS) and refuses the handshake of any other client. Needs `tls_cert`.
    /// Default none.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            http_listen: None,
            http_header_timeout_ms: 10_000,
            max_payload_bytes: 65_536,
            idempotency_window_secs: 300,
            control_timeout_ms: 2_000,
            admin_api_keys: Vec::new(),
            state_dir: None,
            console: true,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl RouterConfig {
    /// Every problem with these settings, each naming its field.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 16 << 20 {
            p.push("router.max_payload_bytes: must be between 1 and 16 MiB".into());
        }
        if self.idempotency_window_secs == 0 {
            p.push("router.idempotency_window_secs: must be greater than 0".into());
        }
        if self.http_header_timeout_ms == 0 {
            p.push("router.http_header_timeout_ms: must be greater than 0".into());
        }
        if self.control_timeout_ms == 0 {
            p.push("router.control_timeout_ms: must be greater than 0".into());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => p.push("router.tls_key: required with router.tls_cert".into()),
            (None, Some(_)) => p.push("router.tls_cert: required with router.tls_key".into()),
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            p.push("router.tls_client_ca: needs router.tls_cert and router.tls_key".into());
        }
        for (i, k) in self.admin_api_keys.iter().enumerate() {
            if k.len() < 16 {
                p.push(format!(
                    "router.admin_api_keys[{i}]: shorter than 16 characters"
                ));
            }
        }
        p
    }
}
