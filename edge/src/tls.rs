//! TLS on a listener (rustls with the aws-lc-rs provider): TLS 1.2 and 1.3 only, ALPN
//! `http/1.1`, resumption by tickets and by TLS 1.2 session ids, optional or required client
//! certificates, and reloading of the certificate, key and client CA files without touching live
//! connections (on demand, e.g. SIGHUP, and when the files change, symlink swaps included).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ProducesTickets, ServerConfig, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::listener::{ClientAuth, TlsConfig};

/// Why a TLS configuration could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material (key not matching the certificate, bad CA, ...).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA file could not make a verifier.
    #[error("client CA: {0}")]
    Verifier(String),
}

/// The process's crypto provider (aws-lc-rs), installed as the default on first use.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = rustls::crypto::aws_lc_rs::default_provider();
            // Another part of the process may have installed it already: the same provider.
            let _ = p.clone().install_default();
            Arc::new(p)
        })
        .clone()
}

/// A file's identity as last seen: a rename or a symlink swap changes the inode or the resolved
/// path even when the modification time does not move.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    resolved: Option<PathBuf>,
    dev_ino: Option<(u64, u64)>,
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok();
    Stamp {
        resolved: std::fs::canonicalize(path).ok(),
        dev_ino: meta.as_ref().map(|m| (m.dev(), m.ino())),
        modified: meta.as_ref().and_then(|m| m.modified().ok()),
        len: meta.map_or(0, |m| m.len()),
    }
}

/// A listener's TLS state: the current server configuration, swapped whole on reload, with the
/// ticket keys and session cache kept across reloads so resumption survives them.
pub struct ListenerTls {
    cfg: TlsConfig,
    current: ArcSwap<ServerConfig>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    stamps: Mutex<Vec<Stamp>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_file", &self.cfg.cert_file)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Loads the files of `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(cfg.session_cache_entries.max(1));
        let stamps = Mutex::new(files(cfg).iter().map(|p| stamp(p)).collect());
        let config = build(cfg, &ticketer, &sessions)?;
        Ok(Self {
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(config),
            ticketer,
            sessions,
            stamps,
        })
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again and swaps the configuration; live connections keep theirs. On
    /// failure the running configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock() = files(&self.cfg).iter().map(|p| stamp(p)).collect();
        let config = build(&self.cfg, &self.ticketer, &self.sessions)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// Whether a file changed since the last load.
    fn changed(&self) -> bool {
        let now: Vec<Stamp> = files(&self.cfg).iter().map(|p| stamp(p)).collect();
        *self.stamps.lock() != now
    }

    fn reload_logged(&self, why: &'static str) {
        match self.reload() {
            Ok(()) => {
                metrics::counter!("herald_edge_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(cert = %self.cfg.cert_file.display(), why, "tls certificate reloaded");
            }
            Err(e) => {
                metrics::counter!("herald_edge_tls_reloads_total", "result" => "error")
                    .increment(1);
                tracing::error!(error = %e, why, "tls reload failed; keeping the running certificate");
            }
        }
    }

    /// Reloads on every change of `trigger` and, when watching is on, whenever a file changes.
    pub(crate) async fn watch(
        self: Arc<Self>,
        mut trigger: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) {
        let every = Duration::from_millis(self.cfg.watch_interval_ms.max(1));
        let watching = self.cfg.watch_interval_ms > 0;
        let mut triggers = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = trigger.changed(), if triggers => {
                    if r.is_err() {
                        // No more triggers: files only.
                        triggers = false;
                        if !watching { return; }
                        continue;
                    }
                    self.reload_logged("signal");
                }
                _ = tokio::time::sleep(every), if watching => {
                    if self.changed() {
                        self.reload_logged("files changed");
                    }
                }
            }
        }
    }
}

fn files(cfg: &TlsConfig) -> Vec<&Path> {
    let mut v = vec![cfg.cert_file.as_path(), cfg.key_file.as_path()];
    if let Some(ca) = &cfg.client_ca_file {
        v.push(ca);
    }
    v
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE in PEM"));
    }
    Ok(certs)
}

fn build(
    cfg: &TlsConfig,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let chain = certs(&cfg.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| file_err(&cfg.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (cfg.client_auth, &cfg.client_ca_file) {
        (ClientAuth::Off, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::Verifier(
                "client_ca_file is required for client certificates".into(),
            ));
        }
        (mode, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| file_err(ca, e))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build().map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// A client certificate's identity, as authorization sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's Common Name, or when it has none the first DNS name of subjectAltName.
    pub name: String,
    /// The certificate's `notAfter`, Unix seconds.
    pub not_after_unix: u64,
}

/// The verified client certificate of a finished handshake, if the client sent one.
pub fn client_cert(conn: &rustls::CommonState) -> Option<ClientCert> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|a| a.as_str().ok())
        .map(str::to_string);
    let name = cn.or_else(|| {
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
    })?;
    Some(ClientCert {
        name,
        not_after_unix: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
    })
}

/// Answers a ClientHello that offers nothing newer than TLS 1.1 with a `protocol_version` alert
/// (RFC 8446 §4.2.1; rustls would answer `handshake_failure` for lack of TLS 1.2 extensions) and
/// returns true; anything else is left unread for rustls.
pub(crate) async fn refuse_legacy_hello(tcp: &mut tokio::net::TcpStream) -> std::io::Result<bool> {
    use tokio::io::AsyncWriteExt;
    // Record header (type, version, length), handshake type and length, client_version.
    let mut head = [0u8; 11];
    let n = tcp.peek(&mut head).await?;
    let legacy = n == head.len()
        && head[0] == 0x16
        && head[5] == 0x01
        && u16::from_be_bytes([head[9], head[10]]) < 0x0303;
    if legacy {
        // alert(21), the client's record version, length 2, fatal(2), protocol_version(70).
        let alert = [0x15, head[1], head[2], 0x00, 0x02, 0x02, 0x46];
        tcp.write_all(&alert).await?;
        let _ = tcp.shutdown().await;
    }
    Ok(legacy)
}
