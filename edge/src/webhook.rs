//! Webhooks: a project's connect, disconnect, subscribe and presence (join, leave) events posted
//! to its back end (`[projects.webhook]`), so back ends need not poll the connection list.
//!
//! Each node posts the events it saw (the edge a client is on; any node for the leaves of a
//! dead edge it cleaned up), per project: a bounded queue (`max_queue`; beyond, events are
//! dropped and counted in `herald_webhook_events_dropped_total`), batches of up to `max_batch`
//! events gathered for up to `batch_ms`, one POST per batch signed with the project's secret
//! (`herald-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`), retried with
//! exponential backoff and jitter (100 ms to 30 s) until the endpoint answers 2xx: a failing
//! endpoint holds the batch at the head of the queue, so events arrive in order and none is
//! lost while the queue has room. `docs/api.md` "Webhooks".

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use herald_core::backoff::backoff;
use herald_core::presence::PresenceEvent;
use herald_core::projects::{WebhookConfig, WebhookEvent};
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::auth::AuthKeys;

/// One event, as posted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookEvent {
    /// `connect`, `disconnect`, `subscribe`, `join` or `leave`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The user.
    pub user: String,
    /// The connection (connect, disconnect, subscribe); absent for presence events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// The group (subscribe, join, leave).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// When the node saw it, Unix milliseconds.
    pub at_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl HookEvent {
    /// An event of a connection.
    pub fn connection(
        kind: WebhookEvent,
        user: &str,
        connection_id: String,
        group: Option<&str>,
    ) -> Self {
        Self {
            kind: kind.as_str(),
            user: user.to_string(),
            connection_id: Some(connection_id),
            group: group.map(str::to_string),
            at_ms: unix_ms(),
        }
    }

    /// A presence event.
    pub fn presence(e: &PresenceEvent) -> Self {
        Self {
            kind: if e.join { "join" } else { "leave" },
            user: e.user.to_string(),
            connection_id: None,
            group: Some(e.group.to_string()),
            at_ms: unix_ms(),
        }
    }
}

/// What can go wrong posting one batch.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL cannot be used.
    #[error("bad webhook url: {0}")]
    Url(String),
    /// Connecting, TLS or the exchange failed.
    #[error("webhook endpoint unreachable: {0}")]
    Io(#[from] std::io::Error),
    /// The endpoint answered, but not 2xx.
    #[error("webhook endpoint answered {0}")]
    Status(u16),
    /// No answer within the deadline.
    #[error("webhook post timed out")]
    Timeout,
}

/// The webhooks of every project on this node.
pub struct Webhooks {
    keys: Arc<ArcSwap<AuthKeys>>,
    edge: String,
    hooks: Mutex<HashMap<String, Arc<Hook>>>,
}

/// One project's queue and poster.
struct Hook {
    cfg: WebhookConfig,
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<HookEvent>,
    /// The poster was replaced (the configuration changed) or the node stops.
    closed: bool,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
    }
}

impl Webhooks {
    /// Webhooks of the projects in `keys` (read at each event: a reload applies to the next),
    /// posted as node `edge` (`herald-edge` header).
    pub fn new(keys: Arc<ArcSwap<AuthKeys>>, edge: &str) -> Arc<Self> {
        Arc::new(Self {
            keys,
            edge: edge.to_string(),
            hooks: Mutex::new(HashMap::new()),
        })
    }

    /// Queues an event of `project` when its webhook posts events of this kind; never waits.
    pub fn emit(&self, project: &str, kind: WebhookEvent, event: impl FnOnce() -> HookEvent) {
        let keys = self.keys.load();
        let Some(cfg) = keys.webhook(project) else {
            return;
        };
        if !cfg.events.contains(&kind) {
            return;
        }
        let hook = {
            let mut hooks = self.hooks.lock();
            match hooks.get(project) {
                Some(h) if h.cfg == *cfg => h.clone(),
                _ => {
                    // New, or its configuration changed: a new poster (the old one stops after
                    // its batch in flight; what it still held is dropped and counted).
                    let h = Arc::new(Hook {
                        cfg: cfg.clone(),
                        queue: Mutex::new(Queue::default()),
                        wake: Notify::new(),
                    });
                    if let Some(old) = hooks.insert(project.to_string(), h.clone()) {
                        let mut q = old.queue.lock();
                        q.closed = true;
                        count_dropped(project, q.events.len());
                        q.events.clear();
                        drop(q);
                        old.wake.notify_one();
                    }
                    tokio::spawn(post_loop(project.to_string(), self.edge.clone(), h.clone()));
                    h
                }
            }
        };
        drop(keys);
        {
            let mut q = hook.queue.lock();
            if q.events.len() >= hook.cfg.max_queue {
                drop(q);
                count_dropped(project, 1);
                return;
            }
            q.events.push_back(event());
        }
        metrics::counter!("herald_webhook_events_total", "project" => project.to_string())
            .increment(1);
        hook.wake.notify_one();
    }

    /// Queues a presence event (the announcer's tap).
    pub fn presence(&self, e: &PresenceEvent) {
        let kind = if e.join {
            WebhookEvent::Join
        } else {
            WebhookEvent::Leave
        };
        self.emit(e.project.as_str(), kind, || HookEvent::presence(e));
    }
}

fn count_dropped(project: &str, n: usize) {
    if n > 0 {
        metrics::counter!("herald_webhook_events_dropped_total", "project" => project.to_string())
            .increment(n as u64);
    }
}

/// Posts one project's events in order, in batches, until its hook is closed.
async fn post_loop(project: String, edge: String, hook: Arc<Hook>) {
    let cfg = &hook.cfg;
    let tls = match client_tls(cfg) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::warn!(project = %project, error = %e, "webhook disabled: no TLS trust");
            return;
        }
    };
    let mut attempt = 0u32;
    loop {
        // Wait for a first event, then up to batch_ms for more (or a full batch).
        loop {
            {
                let q = hook.queue.lock();
                if q.closed {
                    return;
                }
                if !q.events.is_empty() {
                    break;
                }
            }
            hook.wake.notified().await;
        }
        if attempt == 0 {
            let until = tokio::time::Instant::now() + Duration::from_millis(cfg.batch_ms);
            while hook.queue.lock().events.len() < cfg.max_batch {
                if tokio::time::timeout_at(until, hook.wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        // The batch stays queued (counted against the bound) until it is delivered.
        let batch: Vec<HookEvent> = {
            let q = hook.queue.lock();
            if q.closed {
                return;
            }
            q.events.iter().take(cfg.max_batch).cloned().collect()
        };
        let body =
            serde_json::json!({"project": project, "edge": edge, "events": batch}).to_string();
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_millis(cfg.timeout_ms),
            post(&cfg.url, &cfg.secret, &edge, body.as_bytes(), &tls),
        )
        .await
        .unwrap_or(Err(PostError::Timeout));
        match r {
            Ok(()) => {
                let mut q = hook.queue.lock();
                let n = batch.len().min(q.events.len());
                q.events.drain(..n);
                drop(q);
                attempt = 0;
                metrics::counter!("herald_webhook_posts_total", "result" => "ok").increment(1);
                metrics::histogram!("herald_webhook_post_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                metrics::counter!("herald_webhook_posts_total", "result" => "failed").increment(1);
                let delay = backoff(attempt, Duration::from_millis(100), Duration::from_secs(30));
                tracing::debug!(project = %project, error = %e, attempt, ?delay, "webhook post failed; retrying");
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The TLS client settings: the system's roots and the webhook's `ca_file` or `ca_pem`.
fn client_tls(cfg: &WebhookConfig) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(pem) = &cfg.ca_pem {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let c = c.map_err(|e| format!("ca_pem: {e}"))?;
            roots.add(c).map_err(|e| format!("ca_pem: {e}"))?;
        }
    }
    if let Some(path) = &cfg.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The `herald-signature` header value for `body` at Unix second `t`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// One POST on a fresh connection (`connection: close`); Ok on a 2xx answer.
async fn post(
    url: &str,
    secret: &str,
    edge: &str,
    body: &[u8],
    tls: &tokio_rustls::TlsConnector,
) -> Result<(), PostError> {
    let uri: http::Uri = url.parse().map_err(|e| PostError::Url(format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(PostError::Url("scheme must be https or http".into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| PostError::Url("no host".into()))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let t = unix_ms() / 1000;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nherald-signature: {}\r\nherald-edge: {edge}\r\nconnection: close\r\n\r\n",
        uri.authority().map_or(host.as_str(), |a| a.as_str()),
        body.len(),
        signature(secret, t, body),
    )
    .into_bytes();
    req.extend_from_slice(body);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    if https {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| PostError::Url(format!("{host}: {e}")))?;
        let stream = tls.connect(name, tcp).await?;
        exchange(stream, &req).await
    } else {
        exchange(tcp, &req).await
    }
}

/// Writes the request, reads the status line of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> Result<(), PostError> {
    s.write_all(req).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(PostError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the answer",
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(_) if resp.code.is_some() => {
                let code = resp.code.unwrap_or(0);
                return if (200..300).contains(&code) {
                    Ok(())
                } else {
                    Err(PostError::Status(code))
                };
            }
            Ok(_) if buf.len() < 16 * 1024 => continue,
            _ => {
                return Err(PostError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an HTTP answer",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently:
        // printf '1700000000.{"events":[]}' | openssl dgst -sha256 -hmac 0123456789abcdef
        assert_eq!(
            signature("0123456789abcdef", 1700000000, br#"{"events":[]}"#),
            "t=1700000000,v1=1f1c43683e76ee83b09613ab56fa5bdd3ce55f3ee41db00a92e22eea0376899e"
        );
    }
}
