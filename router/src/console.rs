//! The web console under `/console/` on `router.http_listen` (docs/console.md): a login page,
//! then one page (HTML, JavaScript and CSS embedded in the binary: no CDN, works offline) that
//! shows the projects with their connections per edge, messages/s and deliveries/s charts, finds
//! and kicks connections, and manages projects, keys, origins and address lists.
//!
//! # Sessions
//! The key is posted once (`POST /console/login`, never in a URL) and checked as the API checks
//! it. The browser then holds a random session token in a cookie that scripts cannot read
//! (`HttpOnly`, `SameSite=Strict`, path `/console`); the router keeps, per session, the SHA-256
//! of the token, the key's digest (never the key) and a CSRF token that the page sends back in
//! `x-herald-csrf` with every call. Each call checks the key again, so a deleted key ends its
//! sessions at once. Sessions live in the router's memory for [`SESSION_LIFETIME`]: a restart,
//! or another router behind the same address, asks for the key again.
//!
//! # Calls
//! The page calls the HTTP/JSON API itself, under `/console/api/` (e.g.
//! `/console/api/v1/admin/projects/update`): the very handlers of `/v1/...` run, inside a scope
//! that names the session's key as the caller ([`session_caller`]), so validation, scoping and
//! the audit log (who: the key's fingerprint) are the API's. `/console/api/stats` adds what the
//! API has no call for: connections per project and edge, and the traffic counters of every edge
//! ([`ControlRequest::Stats`](herald_core::bus::ControlRequest::Stats)) sampled at most once a
//! second while a console asks, kept in a ring from which each caller's rates are computed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use herald_core::bus::ProjectStats;
use serde::Serialize;
use tonic::Code;

use crate::http::{Refusal, finish};
use crate::keys::{ApiKeys, Digest, Scope, digest, fingerprint, hex};
use crate::service::RouterService;

/// How long a console session lasts from its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once (past it, the oldest end).
pub const MAX_SESSIONS: usize = 10_000;
/// Samples of the edges' counters kept for the charts.
pub const SAMPLES_KEPT: usize = 300;
/// The edges are asked for their counters at most this often; calls in between are answered
/// from the last sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A sample further than this from the previous one starts the charts again (nobody watched).
const SAMPLE_GAP: Duration = Duration::from_secs(30);
/// Largest login body.
const MAX_LOGIN_BODY: usize = 4 << 10;
/// The session cookie's name.
pub const COOKIE: &str = "herald_console";
/// The header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-herald-csrf";

const LOGIN_HTML: &str = include_str!("../console/login.html");
const APP_HTML: &str = include_str!("../console/app.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// Pages run only the console's own script and style, and are never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

tokio::task_local! {
    static CALLER: (Scope, String);
}

/// The caller of an API handler run by the console: the session key's scope and fingerprint.
/// `None` outside the console's calls (the `authorization` header names the caller then).
pub(crate) fn session_caller() -> Option<(Scope, String)> {
    CALLER.try_with(Clone::clone).ok()
}

/// A logged-in browser.
struct Session {
    /// The key's digest: checked again on every call.
    key: Digest,
    scope: Scope,
    fingerprint: String,
    csrf: String,
    expires: Instant,
}

/// One reading of every edge's counters.
struct Sample {
    at: Instant,
    at_ms: u64,
    edges: Vec<(String, HashMap<String, ProjectStats>)>,
    missing: Vec<String>,
}

/// The console's state.
pub struct Console {
    keys: Arc<ArcSwap<ApiKeys>>,
    service: RouterService,
    /// By the SHA-256 of the session token.
    sessions: parking_lot::Mutex<HashMap<Digest, Session>>,
    /// Held while the edges are asked, so that many consoles ask once.
    samples: tokio::sync::Mutex<VecDeque<Sample>>,
}

impl Console {
    /// A console authenticating with `keys` and asking the edges through `service`.
    pub fn new(keys: Arc<ArcSwap<ApiKeys>>, service: RouterService) -> Arc<Self> {
        Arc::new(Self {
            keys,
            service,
            sessions: parking_lot::Mutex::new(HashMap::new()),
            samples: tokio::sync::Mutex::new(VecDeque::new()),
        })
    }

    /// The live session of the request's cookie, checked against the keys of now.
    fn session(&self, headers: &HeaderMap) -> Option<(Scope, String, String)> {
        let token = cookie(headers, COOKIE)?;
        let id = digest(token);
        let mut sessions = self.sessions.lock();
        let s = sessions.get(&id)?;
        let alive = s.expires > Instant::now()
            && self.keys.load().scope_of(&s.key).as_ref() == Some(&s.scope);
        if !alive {
            sessions.remove(&id);
            return None;
        }
        Some((s.scope.clone(), s.fingerprint.clone(), s.csrf.clone()))
    }

    fn open_session(&self, key: Digest, scope: Scope) -> (String, String) {
        let token = hex(&rand::random::<[u8; 32]>());
        let csrf = hex(&rand::random::<[u8; 24]>());
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
            else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(
            digest(&token),
            Session {
                key,
                fingerprint: fingerprint(&key),
                scope,
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        (token, csrf)
    }
}

/// The value of cookie `name` in the request.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The console's routes; `api` (the HTTP/JSON API, admin calls included) is served again under
/// `/console/api/` to logged-in pages.
pub fn routes(console: Arc<Console>, api: axum::Router) -> axum::Router {
    let guarded = api
        .route("/stats", get(stats).with_state(console.clone()))
        .route("/logout", post(logout).with_state(console.clone()))
        .layer(from_fn_with_state(console.clone(), guard));
    axum::Router::new()
        .route("/console", get(|| async { see_other("/console/") }))
        .route("/console/", get(page).with_state(console.clone()))
        .route("/console/login", post(login).with_state(console))
        .route(
            "/console/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
        .nest("/console/api", guarded)
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// An HTML page with the console's headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Text safe inside HTML (element content and quoted attributes).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="error" id="login-error">{}</p>"#, escape(error))
    };
    html(status, LOGIN_HTML.replace("{{error}}", &error))
}

/// `GET /console/`: the console to a logged-in browser, else the login page.
async fn page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match console.session(&headers) {
        None => login_page(StatusCode::OK, ""),
        Some((scope, fp, csrf)) => {
            let (kind, project) = match &scope {
                Scope::Admin => ("admin", String::new()),
                Scope::Project(p) => ("project", p.clone()),
            };
            html(
                StatusCode::OK,
                APP_HTML
                    .replace("{{csrf}}", &csrf)
                    .replace("{{scope}}", kind)
                    .replace("{{project}}", &escape(&project))
                    .replace("{{key}}", &escape(&fp)),
            )
        }
    }
}

/// `POST /console/login` (a form with `key`): a session cookie and the console, or the login
/// page again with why.
async fn login(State(console): State<Arc<Console>>, headers: HeaderMap, body: Body) -> Response {
    let mut bytes = Vec::new();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(c) if bytes.len() + c.len() <= MAX_LOGIN_BODY => bytes.extend_from_slice(&c),
            _ => return login_page(StatusCode::BAD_REQUEST, "The form could not be read."),
        }
    }
    let key = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if key.is_empty() {
        return login_page(StatusCode::BAD_REQUEST, "Enter an API key.");
    }
    let d = digest(&key);
    let Some(scope) = console.keys.load().scope_of(&d) else {
        metrics::counter!("herald_router_console_logins_total", "outcome" => "refused")
            .increment(1);
        return login_page(StatusCode::UNAUTHORIZED, "Unknown API key.");
    };
    metrics::counter!("herald_router_console_logins_total", "outcome" => "ok").increment(1);
    tracing::info!(key = %fingerprint(&d), "console login");
    let (token, _) = console.open_session(d, scope);
    // `Secure` when a TLS proxy says the browser came over HTTPS (the listener is plain HTTP,
    // where a browser would drop a `Secure` cookie).
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut r = see_other("/console/");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn unauthenticated(message: &str) -> Response {
    finish::<()>(
        "console",
        Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: Code::Unauthenticated,
            message: message.into(),
        }),
    )
}

/// Lets through calls of a live session that carry its CSRF token, as its key.
async fn guard(State(console): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let Some((scope, fp, csrf)) = console.session(req.headers()) else {
        return unauthenticated("no console session: log in at /console/");
    };
    let sent = req
        .headers()
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if aws_lc_rs::constant_time::verify_slices_are_equal(sent, csrf.as_bytes()).is_err() {
        return unauthenticated("x-herald-csrf: missing or not this session's");
    }
    let mut r = CALLER.scope((scope, fp), next.run(req)).await;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /console/api/logout`: ends the session.
async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, COOKIE) {
        console.sessions.lock().remove(&digest(token));
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "herald_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// A project's connections, in all and per edge.
#[derive(Serialize, Default)]
struct ProjectConnections {
    connections: u64,
    by_edge: BTreeMap<String, u64>,
}

/// Rates between two samples.
#[derive(Serialize)]
struct Point {
    at_ms: u64,
    messages_per_s: f64,
    deliveries_per_s: f64,
}

#[derive(Serialize)]
struct StatsReply {
    at_ms: u64,
    edges: Vec<String>,
    missing_edges: Vec<String>,
    projects: BTreeMap<String, ProjectConnections>,
    series: Vec<Point>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `GET /console/api/stats`: connections per project and edge, and the messages/s and
/// deliveries/s the caller's projects had, sample by sample.
async fn stats(State(console): State<Arc<Console>>) -> Response {
    let outcome = async {
        let Some((scope, _)) = session_caller() else {
            return Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                code: Code::Unauthenticated,
                message: "no console session".into(),
            });
        };
        let mut samples = console.samples.lock().await;
        let fresh = samples
            .back()
            .is_some_and(|s| s.at.elapsed() < SAMPLE_EVERY);
        if !fresh {
            let (edges, missing) = console.service.stats(&Scope::Admin).await?;
            let at = Instant::now();
            if samples
                .back()
                .is_some_and(|s| at.duration_since(s.at) > SAMPLE_GAP)
            {
                samples.clear();
            }
            if samples.len() >= SAMPLES_KEPT {
                samples.pop_front();
            }
            samples.push_back(Sample {
                at,
                at_ms: now_ms(),
                edges: edges.into_iter().map(|(e, p)| (e.to_string(), p)).collect(),
                missing,
            });
        }
        Ok(reply(&samples, &scope))
    };
    finish("console_stats", outcome.await)
}

/// The stats answer for `scope` from the samples (the last is the newest).
fn reply(samples: &VecDeque<Sample>, scope: &Scope) -> StatsReply {
    let visible = |p: &str| scope.allow(p).is_ok();
    let mut out = StatsReply {
        at_ms: 0,
        edges: Vec::new(),
        missing_edges: Vec::new(),
        projects: BTreeMap::new(),
        series: Vec::new(),
    };
    if let Some(last) = samples.back() {
        out.at_ms = last.at_ms;
        out.missing_edges = last.missing.clone();
        for (edge, projects) in &last.edges {
            out.edges.push(edge.clone());
            for (p, s) in projects.iter().filter(|(p, _)| visible(p)) {
                let c = out.projects.entry(p.clone()).or_default();
                c.connections += s.connections;
                c.by_edge.insert(edge.clone(), s.connections);
            }
        }
        out.edges.sort();
    }
    for (a, b) in samples.iter().zip(samples.iter().skip(1)) {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        if secs <= 0.0 {
            continue;
        }
        let (mut messages, mut deliveries) = (0u64, 0u64);
        for (edge, projects) in &b.edges {
            // An edge new in this sample has no earlier reading: its counters say nothing yet.
            let Some((_, before)) = a.edges.iter().find(|(e, _)| e == edge) else {
                continue;
            };
            for (p, now) in projects.iter().filter(|(p, _)| visible(p)) {
                let was = before.get(p).copied().unwrap_or_default();
                // Counters that went back: the edge restarted, they count from 0.
                let grew = |now: u64, was: u64| if now >= was { now - was } else { now };
                messages += grew(now.messages, was.messages);
                deliveries += grew(now.deliveries, was.deliveries);
            }
        }
        out.series.push(Point {
            at_ms: b.at_ms,
            messages_per_s: messages as f64 / secs,
            deliveries_per_s: deliveries as f64 / secs,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(connections: u64, messages: u64, deliveries: u64) -> ProjectStats {
        ProjectStats {
            connections,
            messages,
            deliveries,
        }
    }

    fn sample(start: Instant, secs: u64, edges: &[(&str, &[(&str, ProjectStats)])]) -> Sample {
        Sample {
            at: start + Duration::from_secs(secs),
            at_ms: secs * 1000,
            edges: edges
                .iter()
                .map(|(e, p)| {
                    (
                        e.to_string(),
                        p.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
                    )
                })
                .collect(),
            missing: Vec::new(),
        }
    }

    #[test]
    fn rates_are_per_caller_and_survive_an_edge_restart() {
        let t = Instant::now();
        let samples = VecDeque::from([
            sample(
                t,
                0,
                &[("e1", &[("a", stat(1, 10, 20)), ("b", stat(1, 5, 5))])],
            ),
            sample(
                t,
                2,
                &[
                    ("e1", &[("a", stat(2, 30, 60)), ("b", stat(1, 9, 9))]),
                    // New: no rate from it yet.
                    ("e2", &[("a", stat(4, 1000, 1000))]),
                ],
            ),
            // e1 restarted: its counters start again.
            sample(
                t,
                4,
                &[
                    ("e1", &[("a", stat(0, 2, 4))]),
                    ("e2", &[("a", stat(4, 1010, 1030))]),
                ],
            ),
        ]);
        let admin = reply(&samples, &Scope::Admin);
        let rates: Vec<(f64, f64)> = admin
            .series
            .iter()
            .map(|p| (p.messages_per_s, p.deliveries_per_s))
            .collect();
        assert_eq!(rates, [(12.0, 22.0), (6.0, 17.0)]);
        assert_eq!(admin.edges, ["e1", "e2"]);
        assert_eq!(admin.projects["a"].connections, 4);
        assert_eq!(admin.projects["a"].by_edge["e2"], 4);
        let b = reply(&samples, &Scope::Project("b".into()));
        let rates: Vec<(f64, f64)> = b
            .series
            .iter()
            .map(|p| (p.messages_per_s, p.deliveries_per_s))
            .collect();
        assert_eq!(rates, [(2.0, 2.0), (0.0, 0.0)]);
        assert!(b.projects.is_empty(), "b has no connection now");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_console=tok"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(
            escape(r#"<a href="x">'&"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
