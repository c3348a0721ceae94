//! JWK Sets: a project's token keys fetched over HTTPS from its issuer (`[projects.jwks]`,
//! docs/configuration.md).
//!
//! Each project with a JWKS URL has one [`JwksSource`]: its keys (swapped whole), and one task
//! that fetches the set when its cache lifetime ends (the answer's `Cache-Control: max-age`,
//! within `min_refresh_secs..=max_age_cap_secs`). A token naming a `kid` the set lacks asks for a
//! fetch at once, at most once per `min_refresh_secs` per project, and waits for it at most the
//! fetch deadline; every handshake waiting meanwhile waits for the same fetch. A fetch that fails
//! keeps the last good set. Sources outlive reloads of the projects while their settings stay
//! the same ([`JwksSources`]), so a SIGHUP or an admin change does not fetch every set again.
//!
//! The client is a plain HTTP/1.1 `GET` (hyper) over rustls with the process's one crypto
//! provider, verified by the project's CA file or the system's roots. No redirects, no proxy.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use herald_core::backoff::backoff;
use herald_core::projects::JwksConfig;
use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Largest JWK Set accepted, in bytes.
const MAX_BODY: usize = 1 << 20;
/// Longest wait between two attempts after failures.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why a fetch failed (the last good set stays).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// No TCP connection to the host.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (e.g. a certificate the CA does not sign).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(String),
    /// The answer's status is not a success.
    #[error("status {0}")]
    Status(u16),
    /// The body is larger than 1 MiB or could not be read.
    #[error("body: {0}")]
    Body(String),
    /// The body is not a JWK Set with at least one usable signing key.
    #[error("not a JWK Set with a usable key: {0}")]
    Set(String),
    /// The fetch took longer than `timeout_ms`.
    #[error("timed out")]
    Timeout,
}

/// One verification key of a set.
pub(crate) struct JwkKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) validation: Validation,
}

/// What makes two sources the same: the settings, the CA's bytes, the token leeway.
#[derive(PartialEq, Eq)]
struct SourceId {
    cfg: JwksConfig,
    ca: Option<Vec<u8>>,
    leeway: u64,
}

/// Where the set is.
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

/// Fetch bookkeeping, under one lock.
struct FetchState {
    in_flight: bool,
    last_start: Option<Instant>,
    due: Instant,
    failures: u32,
    generation: u64,
}

/// One project's JWK Set: its keys and how they are kept fresh.
pub struct JwksSource {
    project: String,
    id: SourceId,
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    keys: ArcSwap<Vec<JwkKey>>,
    state: Mutex<FetchState>,
    /// The generation after each finished attempt: what waiting handshakes watch.
    done: watch::Sender<u64>,
    /// Wakes the refresh task to look at `due` again.
    wake: Arc<Notify>,
    /// Ends the refresh task when the source is dropped.
    cancel: CancellationToken,
    /// Whether this process fetches at all (an edge runs here).
    fetch: bool,
}

impl Drop for JwksSource {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The sources of every project, kept across reloads while their settings stay the same.
pub struct JwksSources {
    fetch: bool,
    sources: Mutex<HashMap<String, Weak<JwksSource>>>,
}

impl Default for JwksSources {
    fn default() -> Self {
        Self::new(true)
    }
}

impl JwksSources {
    /// Sources that fetch (`fetch`: an edge runs in this process) or only check their settings
    /// (a router-only node, which verifies no token).
    pub fn new(fetch: bool) -> Self {
        Self {
            fetch,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The source of `project` for `cfg`: the running one when its settings are unchanged, else
    /// a new one (which starts fetching on the current Tokio runtime). An `Err` names the
    /// problem (a URL or CA that cannot be used).
    pub(crate) fn get(
        &self,
        project: &str,
        cfg: &JwksConfig,
        leeway: u64,
    ) -> Result<Arc<JwksSource>, String> {
        let ca = match (&cfg.ca_file, &cfg.ca_pem) {
            (Some(f), _) => Some(
                std::fs::read(f)
                    .map_err(|e| format!("ca_file: cannot read {}: {e}", f.display()))?,
            ),
            (None, Some(pem)) => Some(pem.as_bytes().to_vec()),
            (None, None) => None,
        };
        let id = SourceId {
            cfg: cfg.clone(),
            ca,
            leeway,
        };
        let mut sources = self.sources.lock();
        sources.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = sources.get(project).and_then(Weak::upgrade)
            && s.id == id
        {
            return Ok(s);
        }
        let source = JwksSource::new(project, id, self.fetch)?;
        sources.insert(project.to_string(), Arc::downgrade(&source));
        Ok(source)
    }
}

/// The URL's host, port, authority and path: `https://host[:port][/path][?query]`.
fn target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("url: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("url: must be an https:// URL".into());
    }
    let authority = uri.authority().ok_or("url: no host")?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err("url: no host".into());
    }
    Ok(Target {
        port: authority.port_u16().unwrap_or(443),
        authority: authority.as_str().to_string(),
        path: uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
        host,
    })
}

/// The TLS client: the CA's certificates, or the system's roots.
fn client_config(ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("ca: not PEM certificates: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca: a certificate cannot be used: {e}"))?;
            }
            if roots.is_empty() {
                return Err("ca: no certificate in the PEM".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                tracing::warn!("no system root certificate found: JWKS URLs need a ca_file");
            }
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl JwksSource {
    fn new(project: &str, id: SourceId, fetch: bool) -> Result<Arc<Self>, String> {
        let target = target(&id.cfg.url)?;
        let tls = client_config(id.ca.as_deref())?;
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let source = Arc::new(Self {
            project: project.to_string(),
            id,
            target,
            tls,
            keys: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(FetchState {
                in_flight: false,
                last_start: None,
                due: Instant::now(),
                failures: 0,
                generation: 0,
            }),
            done: watch::channel(0).0,
            wake: wake.clone(),
            cancel: cancel.clone(),
            fetch,
        });
        if fetch && let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(run(Arc::downgrade(&source), wake, cancel));
        }
        Ok(source)
    }

    fn cfg(&self) -> &JwksConfig {
        &self.id.cfg
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg().timeout_ms)
    }

    fn min_refresh(&self) -> Duration {
        Duration::from_secs(self.cfg().min_refresh_secs)
    }

    /// The keys of the last good set.
    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<Vec<JwkKey>>> {
        self.keys.load()
    }

    /// Marks a fetch as started, unless one is under way: whether the caller runs it.
    fn begin(&self) -> bool {
        let mut st = self.state.lock();
        if st.in_flight {
            return false;
        }
        st.in_flight = true;
        st.last_start = Some(Instant::now());
        true
    }

    /// For a token whose `kid` the set lacks: fetches the set again unless it was fetched less
    /// than `min_refresh_secs` ago (or joins the fetch under way), and waits for it at most the
    /// fetch deadline. Whether a fetch finished meanwhile (the keys may have changed).
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>) -> bool {
        if !self.fetch {
            return false;
        }
        let mut done = self.done.subscribe();
        let start = {
            let mut st = self.state.lock();
            if st.in_flight {
                false
            } else if st
                .last_start
                .is_some_and(|t| t.elapsed() < self.min_refresh())
            {
                metrics::counter!("herald_edge_jwks_unknown_kid_total", "outcome" => "rate_limited")
                    .increment(1);
                return false;
            } else {
                st.in_flight = true;
                st.last_start = Some(Instant::now());
                true
            }
        };
        metrics::counter!("herald_edge_jwks_unknown_kid_total", "outcome" => "refreshed")
            .increment(1);
        if start {
            // Its own task: a client that goes away does not cancel the fetch others wait for.
            let s = self.clone();
            tokio::spawn(async move { s.fetch_now().await });
        }
        let wait = self.timeout() + Duration::from_millis(100);
        matches!(tokio::time::timeout(wait, done.changed()).await, Ok(Ok(())))
    }

    /// Runs one fetch (the caller has [`JwksSource::begin`] it) and installs its outcome.
    async fn fetch_now(&self) {
        let outcome = tokio::time::timeout(self.timeout(), self.fetch_once())
            .await
            .unwrap_or(Err(JwksError::Timeout));
        let now = Instant::now();
        let mut st = self.state.lock();
        match outcome {
            Ok((keys, max_age)) => {
                let cfg = self.cfg();
                let keep = max_age
                    .unwrap_or(Duration::from_secs(cfg.default_max_age_secs))
                    .clamp(
                        self.min_refresh(),
                        Duration::from_secs(cfg.max_age_cap_secs),
                    );
                tracing::debug!(project = %self.project, keys = keys.len(), keep_secs = keep.as_secs(), "jwks fetched");
                self.keys.store(Arc::new(keys));
                st.failures = 0;
                st.due = now + keep;
                metrics::counter!("herald_edge_jwks_fetches_total", "result" => "ok").increment(1);
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                st.due = now
                    + backoff(
                        st.failures - 1,
                        self.min_refresh(),
                        MAX_RETRY.max(self.min_refresh()),
                    );
                tracing::warn!(
                    project = %self.project,
                    url = %self.cfg().url,
                    error = %e,
                    failures = st.failures,
                    "jwks fetch failed; keeping the last good keys"
                );
                metrics::counter!("herald_edge_jwks_fetches_total", "result" => "error")
                    .increment(1);
            }
        }
        st.in_flight = false;
        st.generation += 1;
        let generation = st.generation;
        drop(st);
        self.done.send_replace(generation);
        self.wake.notify_one();
    }

    /// One `GET` of the set: its usable keys and the answer's cache lifetime.
    async fn fetch_once(&self) -> Result<(Vec<JwkKey>, Option<Duration>), JwksError> {
        let t = &self.target;
        let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(JwksError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(t.host.clone())
            .map_err(|e| JwksError::Tls(std::io::Error::other(e)))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(JwksError::Tls)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| JwksError::Http(e.to_string()))?;
        let conn = AbortOnDrop(tokio::spawn(conn));
        let request = http::Request::get(t.path.as_str())
            .header(http::header::HOST, t.authority.as_str())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(http::header::USER_AGENT, "herald")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| JwksError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| JwksError::Http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let max_age = cache_lifetime(response.headers());
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| JwksError::Body(e.to_string()))?
            .to_bytes();
        drop(conn);
        let keys = parse_set(&body, &self.project, self.id.leeway)?;
        Ok((keys, max_age))
    }
}

/// Aborts the connection task when the fetch ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fetches the set whenever its lifetime ends (the first time at once), until the source is
/// dropped.
async fn run(source: Weak<JwksSource>, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let wait = {
            let Some(s) = source.upgrade() else { return };
            let st = s.state.lock();
            // A fetch under way wakes this task when it ends.
            (!st.in_flight).then(|| st.due.saturating_duration_since(Instant::now()))
        };
        if wait == Some(Duration::ZERO) {
            let Some(s) = source.upgrade() else { return };
            if s.begin() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = s.fetch_now() => {}
                }
            }
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait.unwrap_or(MAX_RETRY)) => {}
        }
    }
}

/// How long an answer may be kept: `max-age` less `Age`; `no-cache` and `no-store` say 0.
fn cache_lifetime(headers: &http::HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                return Some(Duration::ZERO);
            }
            if let Some(n) = lower.strip_prefix("max-age=") {
                max_age = n.trim_matches('"').parse::<u64>().ok().or(max_age);
            }
        }
    }
    let age = headers
        .get(http::header::AGE)
        .and_then(|a| a.to_str().ok())
        .and_then(|a| a.trim().parse::<u64>().ok())
        .unwrap_or(0);
    max_age.map(|m| Duration::from_secs(m.saturating_sub(age)))
}

/// The algorithm a JWK verifies: its `alg`, else its key type's usual one. Symmetric keys and
/// encryption keys are not used.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match &jwk.common.key_algorithm {
        Some(a) => a.to_string().parse::<Algorithm>().ok()?,
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => return None,
        },
    };
    let fits = matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    );
    fits.then_some(alg)
}

/// The usable signing keys of a JWK Set; keys that cannot be used are skipped, a set without
/// any is an error (the last good set stays).
pub(crate) fn parse_set(body: &[u8], project: &str, leeway: u64) -> Result<Vec<JwkKey>, JwksError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(|e| JwksError::Set(e.to_string()))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(alg) = jwk_algorithm(&jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let mut validation = Validation::new(alg);
        validation.set_audience(&[project]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = leeway;
        keys.push(JwkKey {
            kid: jwk.common.key_id.clone(),
            key,
            validation,
        });
    }
    if keys.is_empty() {
        return Err(JwksError::Set("no usable signing key".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lifetime_reads_max_age_less_age() {
        let mut h = http::HeaderMap::new();
        assert_eq!(cache_lifetime(&h), None);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=600".parse().expect("value"),
        );
        assert_eq!(cache_lifetime(&h), Some(Duration::from_secs(600)));
        h.insert(http::header::AGE, "100".parse().expect("value"));
        assert_eq!(cache_lifetime(&h), Some(Duration::from_secs(500)));
        h.insert(
            http::header::CACHE_CONTROL,
            "no-cache".parse().expect("value"),
        );
        assert_eq!(cache_lifetime(&h), Some(Duration::ZERO));
    }

    #[test]
    fn urls_name_host_port_and_path() {
        let t = target("https://id.example.com:8443/keys?x=1").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("id.example.com", 8443, "/keys?x=1")
        );
        assert_eq!(target("https://[::1]/").expect("valid").host, "::1");
        assert!(target("http://id.example.com/").is_err());
    }

    #[test]
    fn sets_keep_usable_signing_keys_only() {
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird"}
        ]});
        let keys = parse_set(set.to_string().as_bytes(), "p", 0).expect("one key");
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("e")]);
        assert!(parse_set(br#"{"keys":[]}"#, "p", 0).is_err());
        assert!(parse_set(b"nope", "p", 0).is_err());
    }
}
