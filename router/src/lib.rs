//! Herald's router: the gRPC API that back-end services publish to and operators manage with.
//!
//! # Layout
//! - [`admin`]: projects and keys created at runtime, persisted, and the audit log;
//!   [`admin_http`] serves them over HTTP/JSON (`/v1/admin/...`), [`admin_grpc`] over gRPC
//!   (`herald.admin.v1.Admin`).
//! - [`config`]: the router's settings.
//! - [`console`]: the web console under `/console/` on the HTTP/JSON listener, calling the same
//!   handlers.
//! - [`error`]: why a call fails, and its gRPC status.
//! - [`keys`]: API keys and what each may do.
//! - [`http`]: the HTTP/JSON API beside gRPC (`router.http_listen`), running the same service
//!   functions; `http_serve` serves it (and the console) with a deadline on request headers.
//! - [`service`]: the `herald.v1.Herald` service: validation, target resolution through the
//!   [`Registry`](herald_core::registry::Registry), recoverable messages stored in the
//!   [`History`](herald_core::history::History) first, hand-off to the [`Bus`](herald_core::bus::Bus).
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod admin_grpc;
pub mod admin_http;
pub mod config;
pub mod console;
pub mod error;
pub mod http;
mod http_serve;
pub mod keys;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use herald_core::bus::Bus;
use herald_core::history::History;
use herald_core::proto::admin::admin_server::AdminServer;
use herald_core::proto::v1::herald_server::HeraldServer;
use herald_core::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use config::RouterConfig;
pub use error::ApiError;
pub use keys::ApiKeys;
pub use service::RouterService;

/// What can stop a router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A TLS file (`router.tls_cert`, `tls_key`, `tls_client_ca`) could not be read.
    #[error("cannot read {setting} {path}")]
    TlsFile {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A bound router, ready to serve.
pub struct Router {
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    http: Option<TcpListener>,
    http_header_timeout: Duration,
    service: RouterService,
    admin: Option<(Arc<ArcSwap<ApiKeys>>, Arc<admin::ProjectStore>)>,
}

impl Router {
    /// Binds the gRPC listener, and the HTTP/JSON one when `cfg.http_listen` is set.
    pub async fn bind(
        cfg: RouterConfig,
        keys: Arc<ArcSwap<ApiKeys>>,
        registry: Arc<dyn Registry>,
        bus: Arc<dyn Bus>,
        history: Arc<dyn History>,
    ) -> Result<Self, RouterError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| RouterError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let http = match cfg.http_listen {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| RouterError::Bind { addr, source })?,
            ),
        };
        let tls = tls_config(&cfg)?;
        Ok(Self {
            listener,
            tls,
            http,
            http_header_timeout: Duration::from_millis(cfg.http_header_timeout_ms),
            service: RouterService::new(cfg, keys, registry, bus, history),
            admin: None,
        })
    }

    /// Serves the admin API (`/v1/admin/...`) from `store` on the HTTP/JSON listener.
    pub fn with_admin(
        mut self,
        keys: Arc<ArcSwap<ApiKeys>>,
        store: Arc<admin::ProjectStore>,
    ) -> Self {
        self.admin = Some((keys, store));
        self
    }

    /// The address the gRPC listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address the HTTP/JSON listener is bound to, when there is one.
    pub fn http_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.http.as_ref().map(TcpListener::local_addr).transpose()
    }

    /// Serves until `cancel` fires, then finishes calls in flight.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), RouterError> {
        let http = self.http.map(|listener| {
            let mut app = http::app(self.service.clone());
            if let Some((keys, store)) = self.admin.clone() {
                app = app.merge(admin_http::routes(admin_http::AdminApi {
                    service: self.service.clone(),
                    keys: keys.clone(),
                    store,
                }));
                if self.service.console_enabled() {
                    let console = console::Console::new(keys, self.service.clone());
                    app = app.clone().merge(console::routes(console, app));
                }
            }
            tokio::spawn(http_serve::serve(
                listener,
                app,
                self.http_header_timeout,
                cancel.clone(),
            ))
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<HeraldServer<RouterService>>().await;
        let max = self.service.max_message_bytes();
        // Requests are bounded by the payload limit; replies (connection listings, ack batches)
        // are not: they are the router's own and may be larger.
        let herald = HeraldServer::new(self.service)
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX);
        let admin = self
            .admin
            .map(|(keys, store)| AdminServer::new(admin_grpc::AdminService::new(keys, store)));
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            server = server.tls_config(tls)?;
        }
        server
            .add_service(health_service)
            .add_service(herald)
            .add_optional_service(admin)
            .serve_with_incoming_shutdown(accept_no_delay(self.listener), cancel.cancelled_owned())
            .await?;
        if let Some(http) = http
            && let Err(e) = http.await
        {
            tracing::warn!(error = %e, "http server task failed");
        }
        Ok(())
    }
}

/// The gRPC listener's connections, each with `TCP_NODELAY` (tonic sets it only on listeners it
/// binds itself). Without it, an answer written in more than one piece (an HTTP/2 frame, then the
/// rest) waits for the client's delayed ACK: ~40-50 ms on every listing or presence page beyond a
/// few kilobytes (benches/README.md, "Presence").
fn accept_no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}

/// How long a client may take over its TLS handshake with the gRPC listener.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The gRPC listener's TLS settings, when `router.tls_cert` and `tls_key` are set: its identity
/// and, with `tls_client_ca`, the CA its clients' certificates must chain to. The files are read
/// and parsed now, so a missing or bad one stops the start. Each handshake runs on a task of its own
/// (tonic's), bounded by [`TLS_HANDSHAKE_TIMEOUT`]: a slow or failed one holds up no other client.
fn tls_config(cfg: &RouterConfig) -> Result<Option<ServerTlsConfig>, RouterError> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let read = |setting: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| RouterError::TlsFile {
            setting,
            path: path.to_path_buf(),
            source,
        })
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("router.tls_cert", cert)?,
            read("router.tls_key", key)?,
        ))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &cfg.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read("router.tls_client_ca", ca)?));
    }
    // Parsed now, so a bad certificate or key stops the start rather than the running router.
    tonic::transport::Server::builder().tls_config(tls.clone())?;
    Ok(Some(tls))
}
