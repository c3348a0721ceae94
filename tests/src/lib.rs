//! The end-to-end sandbox: starts the real `herald` binary with a generated configuration on
//! loopback ports chosen by the kernel, and gives tests real WebSocket and gRPC clients.
//!
//! ```ignore
//! let herald = herald().edge("ping_interval_secs", 1).start().await;
//! let mut alice = herald.connect("alpha", &token("alpha", "alice")).await;
//! ```

pub mod browser;
pub mod cluster;
pub mod mqtt;
pub mod nginx;
pub mod relay;
pub mod sse;
pub mod stomp;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{Broadcast, PublishReply, PublishRequest, Target, target};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Project `alpha`'s HS256 secret in the default sandbox.
pub const ALPHA_SECRET: &str = "alpha-secret-0123456789abcdef0123456789";
/// Project `beta`'s HS256 secret in the default sandbox.
pub const BETA_SECRET: &str = "beta-secret-0123456789abcdef0123456789ab";
/// Project `alpha`'s API key.
pub const ALPHA_KEY: &str = "alpha-api-key-0123456789";
/// Project `beta`'s API key.
pub const BETA_KEY: &str = "beta-api-key-0123456789";
/// The admin API key.
pub const ADMIN_KEY: &str = "admin-api-key-0123456789";

/// How long a test waits for anything before failing. Generous: the suite must pass on a
/// loaded machine (`stress-ng --cpu 2` beside it, see tests/README.md), and a deadline only
/// costs time when the test fails anyway.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Ok`, and returns that value; fails the test with the last
/// `Err` once `within` has passed. State the server reaches in the background (readiness, counts,
/// metrics, registry contents, connection lists) is awaited with this, never asserted at an
/// instant.
///
/// ```ignore
/// eventually(WAIT, async || match herald.admin_get("/readyz").await {
///     (200, b) if b == "ready\n" => Ok(()),
///     other => Err(format!("{other:?}")),
/// })
/// .await;
/// ```
pub async fn eventually<T, E: std::fmt::Display>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("condition not met within {within:?}: {e}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Polls `get` until it returns `want`; fails the test with the last value once `within` has
/// passed.
pub async fn eventually_eq<T: PartialEq + std::fmt::Debug>(
    within: Duration,
    want: T,
    mut get: impl AsyncFnMut() -> T,
) {
    eventually(within, async || {
        let got = get().await;
        if got == want {
            Ok(())
        } else {
            Err(format!("want {want:?}, last seen {got:?}"))
        }
    })
    .await;
}

/// The `herald` binary: `HERALD_BIN`, or the one cargo built beside this test.
pub fn herald_bin() -> PathBuf {
    // `cargo nextest run --workspace` builds it.
    herald_sandbox::herald_bin(None).unwrap_or_else(|e| panic!("{e}"))
}

/// The directory of test-only key pairs.
pub fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("keys")
}

/// A sandbox configuration under construction.
pub struct HeraldBuilder {
    config: toml::Table,
    nofile: Option<u64>,
    ws_listen: String,
    env: Vec<(String, String)>,
    capture_stderr: bool,
}

/// A sandbox with projects `alpha` and `beta` (HS256 keys without `kid`) and an admin key.
pub fn herald() -> HeraldBuilder {
    let config = toml::toml! {
        [router]
        admin_api_keys = ["admin-api-key-0123456789"]

        [admin]
        shutdown_grace_secs = 5

        [edge]
        close_timeout_ms = 1000

        [[projects]]
        id = "alpha"
        api_keys = ["alpha-api-key-0123456789"]
        [[projects.keys]]
        alg = "HS256"
        secret = "alpha-secret-0123456789abcdef0123456789"

        [[projects]]
        id = "beta"
        api_keys = ["beta-api-key-0123456789"]
        [[projects.keys]]
        alg = "HS256"
        secret = "beta-secret-0123456789abcdef0123456789ab"
    };
    HeraldBuilder {
        config,
        nofile: None,
        ws_listen: "127.0.0.1:0".into(),
        env: Vec::new(),
        capture_stderr: false,
    }
}

impl HeraldBuilder {
    /// Adds an `[[edge.listeners]]` table.
    pub fn listener(mut self, table: toml::Table) -> Self {
        let listeners = self
            .section("edge")
            .entry("listeners")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        if let toml::Value::Array(a) = listeners {
            a.push(toml::Value::Table(table));
        }
        self
    }

    /// Sets `[edge] key = value`.
    pub fn edge(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section("edge").insert(key.into(), value.into());
        self
    }

    /// Sets `[router] key = value`.
    pub fn router(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section("router").insert(key.into(), value.into());
        self
    }

    /// Sets `[telemetry] key = value`.
    pub fn telemetry(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section("telemetry").insert(key.into(), value.into());
        self
    }

    /// Sets `[log] key = value`.
    pub fn log(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section("log").insert(key.into(), value.into());
        self
    }

    /// Sets an environment variable of the process (after the sandbox's own, so `RUST_LOG` here
    /// replaces `HERALD_TEST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Writes the process's stderr (its log) to a file, read with [`Herald::stderr`].
    pub fn capture_stderr(mut self) -> Self {
        self.capture_stderr = true;
        self
    }

    /// Replaces the projects with the `[[projects]]` tables in `toml_text`.
    pub fn projects(mut self, toml_text: &str) -> Self {
        let parsed: toml::Table = toml_text.parse().expect("projects toml");
        self.config.insert(
            "projects".into(),
            parsed
                .get("projects")
                .cloned()
                .expect("[[projects]] tables"),
        );
        self
    }

    /// Sets `key` of the project `id` (its `[[projects]]` table), e.g. `presence_events`.
    pub fn project_set(mut self, id: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        let projects = self
            .config
            .get_mut("projects")
            .and_then(toml::Value::as_array_mut)
            .expect("[[projects]]");
        let table = projects
            .iter_mut()
            .filter_map(toml::Value::as_table_mut)
            .find(|t| t.get("id").and_then(toml::Value::as_str) == Some(id))
            .expect("the project");
        table.insert(key.into(), value.into());
        self
    }

    /// Listens for WebSocket clients on `addr` instead of `127.0.0.1:0` (e.g. `[::]:0`).
    pub fn ws_listen(mut self, addr: &str) -> Self {
        self.ws_listen = addr.into();
        self
    }

    /// Runs the binary with this open-file limit (soft and hard), through `prlimit`.
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    fn section(&mut self, name: &str) -> &mut toml::Table {
        self.config
            .entry(name)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .expect("a table")
    }

    /// Writes the configuration and starts the binary; waits until it is ready.
    pub async fn start(self) -> Herald {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("herald.toml");
        std::fs::write(&config_path, toml::to_string(&self.config).expect("toml"))
            .expect("write config");
        // Configured listeners are used as given; otherwise the one `ws` listener takes a port.
        let own_listeners = self
            .config
            .get("edge")
            .and_then(|e| e.get("listeners"))
            .is_some();
        let mut node = herald_sandbox::Node::builder(herald_bin(), &config_path);
        if !own_listeners {
            node = node.args(["--ws-listen", &self.ws_listen]);
        }
        if let Some(n) = self.nofile {
            node = node.nofile(n);
        }
        let stderr_path = self.capture_stderr.then(|| dir.path().join("stderr.log"));
        if let Some(p) = &stderr_path {
            node = node.stderr(herald_sandbox::Stderr::File(p.clone()));
        }
        node = node
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env(
                "RUST_LOG",
                std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        // After the sandbox's own, so `RUST_LOG` here replaces `HERALD_TEST_LOG`.
        for (k, v) in &self.env {
            node = node.env(k, v);
        }
        let node = node
            .ready_within(WAIT)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // A node without an edge or a router prints no address for it: 0.0.0.0:0 then.
        let none = SocketAddr::from(([0, 0, 0, 0], 0));
        let ready = node.ready.clone();
        Herald {
            ws: ready.ws.unwrap_or(none),
            listeners: ready.listeners,
            grpc: ready.grpc.unwrap_or(none),
            http: ready.http.unwrap_or(none),
            admin: ready.admin.unwrap_or(none),
            node,
            config_path,
            stderr_path,
            _dir: dir,
        }
    }
}

/// A running `herald` process.
pub struct Herald {
    /// WebSocket listener (the first one).
    pub ws: SocketAddr,
    /// Every listener, in configuration order.
    pub listeners: Vec<SocketAddr>,
    /// gRPC listener.
    pub grpc: SocketAddr,
    /// HTTP/JSON API listener (0.0.0.0:0 unless `router.http_listen` is set).
    pub http: SocketAddr,
    /// Admin HTTP listener.
    pub admin: SocketAddr,
    node: herald_sandbox::Node,
    /// The configuration file it was started with.
    pub config_path: PathBuf,
    stderr_path: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// A WebSocket client stream.
pub type Ws = WebSocketStream<TcpStream>;

/// A gRPC client with an API key.
pub type Grpc =
    HeraldClient<tonic::service::interceptor::InterceptedService<Channel, ApiKeyInterceptor>>;

/// Adds an `authorization` header to every call.
#[derive(Clone)]
pub struct ApiKeyInterceptor(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for ApiKeyInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl Herald {
    /// The URL of a project's endpoint, with an optional query.
    pub fn url(&self, project: &str, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("ws://{}/ws/{project}{q}", self.ws)
    }

    /// Opens a WebSocket with extra request headers; returns the stream and the response.
    pub async fn open(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let tcp = TcpStream::connect(self.ws)
            .await
            .map_err(tungstenite::Error::Io)?;
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
            .await
            .expect("websocket handshake answered in time")
    }

    /// Connects with a token in the query and waits for the welcome frame.
    pub async fn connect(&self, project: &str, token: &str) -> Client {
        let (ws, _) = self
            .open(&self.url(project, &format!("token={token}")), &[])
            .await
            .expect("websocket upgrade");
        let mut c = Client { ws };
        let welcome = c.next_json().await;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        c
    }

    /// Connects without a token in the request, sends it in an `auth` frame with the fields of
    /// `extra` (e.g. `resume`), and waits for the welcome frame.
    pub async fn connect_auth(&self, project: &str, token: &str, extra: Value) -> Client {
        let (ws, _) = self
            .open(&self.url(project, ""), &[])
            .await
            .expect("websocket upgrade");
        let mut c = Client { ws };
        let mut auth = json!({"type": "auth", "token": token});
        if let (Some(a), Some(e)) = (auth.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        c.send_json(auth).await;
        let welcome = c.next_json().await;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        c
    }

    /// A gRPC client using `api_key` (or none).
    pub async fn grpc(&self, api_key: Option<&str>) -> Grpc {
        grpc_at(self.grpc, api_key).await
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.node.pid()
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        if let Err(e) = self.node.process().signal(sig) {
            panic!("{e}");
        }
    }

    /// Waits for a stdout line starting with `prefix`.
    pub async fn wait_line(&mut self, prefix: &str) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.node.next_line().await {
                    Some(l) if l.starts_with(prefix) => return l,
                    Some(_) => continue,
                    None => panic!("stdout closed before {prefix:?}"),
                }
            }
        })
        .await
        .expect("line in time")
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.node.process_mut().wait())
            .await
            .expect("exit in time")
            .expect("wait")
    }

    /// What the process wrote to stderr so far (started with
    /// [`HeraldBuilder::capture_stderr`]).
    pub fn stderr(&self) -> String {
        let path = self
            .stderr_path
            .as_ref()
            .expect("stderr is captured only after capture_stderr()");
        std::fs::read_to_string(path).expect("read stderr")
    }

    /// GETs a path on the admin endpoint; returns status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Waits until `/readyz` answers `200 ready` and nothing degraded (a cluster node's Redis and
    /// NATS connections come up, and come back, in the background).
    pub async fn wait_ready(&self) {
        eventually(WAIT, async || match self.admin_get("/readyz").await {
            (200, body) if body == "ready\n" => Ok(()),
            other => Err(format!("/readyz: {other:?}")),
        })
        .await;
    }

    /// The value of one series on `/metrics`, e.g. `herald_edge_connections` or
    /// `herald_edge_refused_total{reason="origin"}` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("metric value"))
    }

    /// Waits until the series `series` on `/metrics` has the value `want`.
    pub async fn wait_metric(&self, series: &str, want: f64) {
        eventually(WAIT, async || {
            let got = self.metric(series).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{series} is {got}, want {want}"))
            }
        })
        .await;
    }
}

/// A gRPC client of the router at `addr`, using `api_key` (or none).
pub async fn grpc_at(addr: SocketAddr, api_key: Option<&str>) -> Grpc {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("grpc connect");
    grpc_over(channel, api_key)
}

/// A gRPC client over `channel` (e.g. a TLS one), using `api_key` (or none).
pub fn grpc_over(channel: Channel, api_key: Option<&str>) -> Grpc {
    let value = api_key.map(|k| format!("Bearer {k}").parse().expect("metadata"));
    HeraldClient::with_interceptor(channel, ApiKeyInterceptor(value))
}

/// Connects a WebSocket client to `url` and waits for the welcome frame.
pub async fn connect_url(url: &str) -> Client {
    let req = url.into_client_request().expect("request");
    let authority = req.uri().authority().expect("host:port").to_string();
    let tcp = TcpStream::connect(authority).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket upgrade");
    let mut c = Client { ws };
    let welcome = c.next_json().await;
    assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
    c
}

/// Percent-encodes everything but unreserved characters (a query value, a URL fragment).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A minimal HTTP/1.1 GET (the admin endpoint needs nothing more).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An HTTP/1.1 answer: status, headers (names in lower case) and body.
#[derive(Debug)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpReply {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a new connection (`connection: close`): `head` holds extra header
/// lines; `content-length` is the body's unless `head` sets it or `transfer-encoding` (then
/// `body` is sent as given, already framed).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    head: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for (k, v) in head {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !head.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    }) {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write head");
    if let Err(e) = s.write_all(body).await {
        // Refused before the whole body was read: the answer tells.
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "write body: {e}"
        );
    }
    let mut out = Vec::new();
    // A server that answers before reading the whole body (413) may reset the connection after
    // its answer: what came before the reset is the answer.
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("answer in time");
    if let Err(e) = read {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty(),
            "read: {e}"
        );
    }
    let out = String::from_utf8(out).expect("utf-8 answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A connected WebSocket client, over plain TCP unless `S` says otherwise (TLS).
pub struct Client<S = TcpStream> {
    /// The stream.
    pub ws: WebSocketStream<S>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON (control frames skipped); fails on close or timeout.
    pub async fn next_json(&mut self) -> Value {
        // One deadline for the whole wait: the server's pings must not extend it.
        let ws = &mut self.ws;
        tokio::time::timeout(WAIT, async move {
            loop {
                let m = ws.next().await.expect("stream open").expect("a frame");
                match m {
                    Message::Text(t) => {
                        return serde_json::from_str(&t).expect("json text frame");
                    }
                    Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                    _ => continue,
                }
            }
        })
        .await
        .expect("a text frame in time")
    }

    /// The next frame that is a delivered message (`type` = `msg`).
    pub async fn next_msg(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == "msg" {
                return v;
            }
        }
    }

    /// The next presence event (`type` = `presence`) as (group, event, user), other frames
    /// skipped.
    pub async fn next_presence(&mut self) -> (String, String, String) {
        loop {
            let v = self.next_json().await;
            if v["type"] == "presence" {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                return (s("group"), s("event"), s("user"));
            }
        }
    }

    /// Subscribes and returns the answer (`ack` or `error`).
    pub async fn subscribe(&mut self, id: u64, group: &str) -> Value {
        self.send_json(json!({"type":"subscribe","id":id,"group":group}))
            .await;
        self.next_json().await
    }

    /// Reads until the close frame; returns its code, reason and the text frames before it.
    pub async fn expect_close(&mut self) -> (u16, String, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match m {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string(), before);
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new(), before),
                Some(Ok(Message::Text(t))) => {
                    before.push(serde_json::from_str(&t).expect("json"));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before the close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Asserts that no message arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let r = tokio::time::timeout(d, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await;
        if let Ok(Some(t)) = r {
            panic!("expected silence, got {t}");
        }
    }
}

/// Claims for a user of a project, valid for ten minutes.
pub fn claims(project: &str, sub: &str) -> Value {
    json!({"sub": sub, "aud": project, "exp": jsonwebtoken::get_current_timestamp() + 600})
}

/// Signs claims with an HS256 secret (and an optional `kid`).
pub fn hs256(secret: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A token of the default sandbox: `alpha` or `beta`, for `sub`.
pub fn token(project: &str, sub: &str) -> String {
    let secret = if project == "beta" {
        BETA_SECRET
    } else {
        ALPHA_SECRET
    };
    hs256(secret, None, &claims(project, sub))
}

/// Signs claims with one of the test key pairs (`es256`, `rs256`, `eddsa`).
pub fn signed(alg: &str, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(keys_dir().join(format!("{alg}-private.pem"))).expect("key");
    let (a, key) = match alg {
        "es256" => (
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        ),
        "rs256" => (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        ),
        "eddsa" => (
            jsonwebtoken::Algorithm::EdDSA,
            jsonwebtoken::EncodingKey::from_ed_pem(&pem),
        ),
        _ => panic!("unknown test key {alg}"),
    };
    let mut h = jsonwebtoken::Header::new(a);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key.expect("pem")).expect("sign")
}

/// A publish request.
pub fn publish(project: &str, to: To<'_>, payload: &str) -> PublishRequest {
    let kind = match to {
        To::Broadcast => target::Kind::Broadcast(Broadcast {}),
        To::Group(g) => target::Kind::Group(g.into()),
        To::User(u) => target::Kind::User(u.into()),
    };
    PublishRequest {
        project: project.into(),
        target: Some(Target { kind: Some(kind) }),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A publish target.
#[derive(Debug, Clone, Copy)]
pub enum To<'a> {
    /// Every connection of the project.
    Broadcast,
    /// A group.
    Group(&'a str),
    /// A user's devices.
    User(&'a str),
}

/// Publishes and returns the reply; fails the test on an error status.
pub async fn send(grpc: &mut Grpc, req: PublishRequest) -> PublishReply {
    tokio::time::timeout(WAIT, grpc.publish(req))
        .await
        .expect("publish answered in time")
        .expect("publish")
        .into_inner()
}

/// Asserts that no message reached `c`, a connection of `user` in `project`, before a marker
/// published now to `user` through `grpc`, and returns the marker's data (the user's other
/// devices receive it too).
///
/// Messages of one router arrive in publish order on each connection (on a single node a
/// publish has reached every recipient's queue when its reply comes back), so whatever an earlier
/// publish of the same router wrongly delivered to `c` would come before the marker. Unlike a
/// wait for silence, this cannot pass just because a loaded machine was slow to deliver.
pub async fn expect_nothing_before_marker(
    c: &mut Client,
    grpc: &mut Grpc,
    project: &str,
    user: &str,
) -> Value {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let marker = json!({"marker": NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)});
    let r = send(grpc, publish(project, To::User(user), &marker.to_string())).await;
    assert!(r.edges >= 1, "the marker reached no edge: {r:?}");
    let got = c.next_msg().await;
    assert_eq!(
        got["data"], marker,
        "a message arrived before the marker: {got}"
    );
    marker
}

/// The numeric value of a close code.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}
