//! The HTTP request that opens a connection: reads it (bounded in size), finds the project and the
//! token, and either checks it as a WebSocket upgrade (tungstenite's handshake rules, the
//! sub-protocol) and writes the 101 answer, or takes it as a Server-Sent Events request
//! (`GET /sse/{project}`: the groups asked for and `Last-Event-ID`, [`SseRequest`]).

use std::borrow::Cow;

use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::create_response;

use herald_core::ids::ProjectId;

use crate::codec::Wire;

/// The largest upgrade request accepted (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8192;

/// The project a request's path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProject {
    /// `/ws/{project}` (or `/mqtt/{project}`) with a valid project id.
    Id(ProjectId),
    /// A name that cannot be a project id: refused as an unknown project.
    Invalid,
    /// `/mqtt`: the project comes with the protocol's connect frame (the MQTT username).
    FromConnect,
}

/// A parsed, acceptable upgrade request.
#[derive(Debug)]
pub struct Upgrade {
    /// The project named by the path.
    pub project: PathProject,
    /// The protocol the client speaks, from the path and the sub-protocol.
    pub wire: Wire,
    /// A token from `Authorization: Bearer` or the `token` query parameter.
    pub token: Option<String>,
    /// The sub-protocol to echo, when the client offered any.
    pub protocol: Option<&'static str>,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
    /// The response to send (101), without the sub-protocol header yet; `None` for a
    /// Server-Sent Events request.
    response: Option<http::Response<()>>,
    /// What a Server-Sent Events request (`GET /sse/{project}`) asks for; `None` for a
    /// WebSocket upgrade.
    pub sse: Option<SseRequest>,
    /// Bytes the client sent after the request (the start of its first frames).
    pub leftover: Vec<u8>,
    /// The `X-Forwarded-For` values, in order (believed only from trusted proxies).
    pub forwarded_for: Vec<String>,
    /// The `X-Real-IP` value (believed only from trusted proxies).
    pub real_ip: Option<String>,
    /// Whether the answer accepts `permessage-deflate`: set when the client made an acceptable
    /// offer ([`crate::deflate::acceptable_offer`]); the caller clears it where the project does
    /// not enable the extension, before [`accept`].
    pub deflate: bool,
    /// A SockJS request (`/sockjs/{project}/...`): only its `websocket` transport is an upgrade.
    pub sockjs: Option<crate::sockjs::Request>,
}

/// A Server-Sent Events request's own parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseRequest {
    /// Groups asked for beyond the token's (`groups` query parameters, each a name or a
    /// comma-separated list), unchecked.
    pub groups: Vec<String>,
    /// Where the client stopped: the `Last-Event-ID` header, else the `last_event_id` query
    /// parameter (a client that opens a new stream itself cannot set the header).
    pub last_event_id: Option<String>,
}

/// Why an upgrade was refused before it happened; answered with an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The request is larger than [`MAX_REQUEST_BYTES`].
    #[error("request too large")]
    TooLarge,
    /// Not an HTTP request, or not a WebSocket upgrade.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The path is not `/ws/{project}`.
    #[error("no such path")]
    NotFound,
    /// The client offered only sub-protocols this edge does not speak.
    #[error("unsupported sub-protocol")]
    UnsupportedProtocol,
    /// A Server-Sent Events path asked with another method than `GET`.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl HandshakeError {
    /// The HTTP status answering this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::Io(_) | HandshakeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HandshakeError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HandshakeError::NotFound => StatusCode::NOT_FOUND,
            HandshakeError::UnsupportedProtocol => StatusCode::BAD_REQUEST,
            HandshakeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// Reads and checks the upgrade request.
pub async fn read_request<S: AsyncRead + Unpin>(tcp: &mut S) -> Result<Upgrade, HandshakeError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_REQUEST_BYTES {
                return Err(HandshakeError::TooLarge);
            }
            buf.reserve(buf.len().min(MAX_REQUEST_BYTES - buf.len()));
        }
        let n = tcp.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                let request = to_http(&req)?;
                let leftover = buf[len..].to_vec();
                return check(request, leftover);
            }
            Err(e) => return Err(HandshakeError::BadRequest(e.to_string())),
        }
    }
}

fn to_http(req: &httparse::Request<'_, '_>) -> Result<Request<()>, HandshakeError> {
    let mut b = Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(http::Version::HTTP_11);
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(())
        .map_err(|e| HandshakeError::BadRequest(e.to_string()))
}

fn check(request: Request<()>, leftover: Vec<u8>) -> Result<Upgrade, HandshakeError> {
    let sockjs = crate::sockjs::route(request.uri().path());
    let (route, project) = match &sockjs {
        Some((project, _)) => (
            Route::Ws(Some(Wire::Stomp)),
            match project {
                Ok(p) => PathProject::Id(p.clone()),
                Err(()) => PathProject::Invalid,
            },
        ),
        None => route(request.uri().path()).ok_or(HandshakeError::NotFound)?,
    };
    let sockjs = sockjs.map(|(_, endpoint)| crate::sockjs::Request {
        endpoint,
        method: request.method().clone(),
        cors_headers: request
            .headers()
            .get("access-control-request-headers")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        content_length: request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        chunked: request
            .headers()
            .get(http::header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
    });
    let upgrade = |request: &Request<()>| {
        create_response(request).map_err(|e| HandshakeError::BadRequest(e.to_string()))
    };
    let (wire, protocol, response, sse) = match (&sockjs, route) {
        // SockJS speaks STOMP inside its own frames; a sub-protocol offered is not answered.
        (Some(req), _) if !req.is_websocket() => (Wire::Stomp, None, None, None),
        (Some(_), _) => (Wire::Stomp, None, Some(upgrade(&request)?), None),
        (None, Route::Sse) => {
            if request.method() != http::Method::GET {
                return Err(HandshakeError::MethodNotAllowed);
            }
            (Wire::Native, None, None, Some(sse_request(&request)))
        }
        (None, Route::Ws(path_wire)) => {
            let response = upgrade(&request)?;
            let (wire, protocol) = choose_protocol(&request, path_wire)?;
            (wire, protocol, Some(response), None)
        }
    };
    let token = bearer(&request).or_else(|| query_token(&request));
    let origin = request
        .headers()
        .get(http::header::ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let forwarded_for = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let real_ip = request
        .headers()
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // SockJS re-frames every message per connection: its `websocket` transport declines
    // permessage-deflate (as Server-Sent Events, not a WebSocket, do).
    let deflate = sockjs.is_none()
        && sse.is_none()
        && request
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(crate::deflate::acceptable_offer);
    Ok(Upgrade {
        project,
        wire,
        token,
        protocol,
        origin,
        response,
        sse,
        leftover,
        forwarded_for,
        real_ip,
        deflate,
        sockjs,
    })
}

/// What a path opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A WebSocket of the wire the path fixes (`None`: chosen by the sub-protocol).
    Ws(Option<Wire>),
    /// A Server-Sent Events stream of the native protocol.
    Sse,
}

/// The groups and `Last-Event-ID` of a Server-Sent Events request.
fn sse_request(request: &Request<()>) -> SseRequest {
    let mut r = SseRequest {
        last_event_id: request
            .headers()
            .get("last-event-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty()),
        ..Default::default()
    };
    if let Some(q) = request.uri().query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "groups" => r.groups.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string),
                ),
                "last_event_id" if r.last_event_id.is_none() && !v.trim().is_empty() => {
                    r.last_event_id = Some(v.trim().to_string())
                }
                _ => {}
            }
        }
    }
    r
}

/// What a path opens and the project it names.
fn route(path: &str) -> Option<(Route, PathProject)> {
    let project = |name: &str| match ProjectId::new(name) {
        Ok(p) => PathProject::Id(p),
        Err(_) => PathProject::Invalid,
    };
    let one_segment = |rest: &str| {
        let rest = rest.trim_end_matches('/');
        (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
    };
    if let Some(rest) = path.strip_prefix("/ws/") {
        return one_segment(rest).map(|name| (Route::Ws(None), project(&name)));
    }
    if let Some(rest) = path.strip_prefix("/sse/") {
        return one_segment(rest).map(|name| (Route::Sse, project(&name)));
    }
    if Wire::Mqtt.available() {
        if path.trim_end_matches('/') == "/mqtt" {
            return Some((Route::Ws(Some(Wire::Mqtt)), PathProject::FromConnect));
        }
        if let Some(rest) = path.strip_prefix("/mqtt/") {
            return one_segment(rest).map(|name| (Route::Ws(Some(Wire::Mqtt)), project(&name)));
        }
    }
    None
}

/// The wire and the sub-protocol to echo: the first offered sub-protocol Herald speaks (on a
/// path fixing the wire, one of that wire's); with none offered, the path's wire or the native
/// protocol.
fn choose_protocol(
    request: &Request<()>,
    path_wire: Option<Wire>,
) -> Result<(Wire, Option<&'static str>), HandshakeError> {
    let mut offered = request
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    if offered.peek().is_none() {
        return Ok((path_wire.unwrap_or_default(), None));
    }
    let wires: &[Wire] = match &path_wire {
        Some(w) => std::slice::from_ref(w),
        None => &[Wire::Native, Wire::Mqtt, Wire::Stomp],
    };
    offered
        .find_map(|p| {
            wires.iter().find_map(|w| {
                w.sub_protocols()
                    .iter()
                    .find(|s| **s == p)
                    .map(|s| (*w, Some(*s)))
            })
        })
        .ok_or(HandshakeError::UnsupportedProtocol)
}

fn bearer(request: &Request<()>) -> Option<String> {
    let v = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn query_token(request: &Request<()>) -> Option<String> {
    let q = request.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v): (Cow<'_, str>, Cow<'_, str>)| v.into_owned())
}

/// Writes the 101 answer, echoing the chosen sub-protocol and accepting `permessage-deflate`
/// when [`Upgrade::deflate`] says so.
pub async fn accept<S: AsyncWrite + Unpin>(tcp: &mut S, up: &mut Upgrade) -> std::io::Result<()> {
    let mut out = String::with_capacity(256);
    out.push_str("HTTP/1.1 101 Switching Protocols\r\n");
    let response = up.response.take().unwrap_or_default();
    for (name, value) in response.headers() {
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(value.to_str().unwrap_or_default());
        out.push_str("\r\n");
    }
    if let Some(p) = up.protocol {
        out.push_str("sec-websocket-protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    if up.deflate {
        out.push_str("sec-websocket-extensions: ");
        out.push_str(crate::deflate::RESPONSE);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    tcp.write_all(out.as_bytes()).await
}

/// Writes a plain HTTP refusal and closes.
pub async fn refuse<S: AsyncWrite + Unpin>(tcp: &mut S, status: StatusCode, reason: &str) {
    refuse_retry(tcp, status, reason, None).await
}

/// Writes a plain HTTP refusal, with `Retry-After` when given (seconds), and closes.
pub async fn refuse_retry<S: AsyncWrite + Unpin>(
    tcp: &mut S,
    status: StatusCode,
    reason: &str,
    retry_after_secs: Option<u32>,
) {
    let body = format!("{reason}\n");
    let retry = retry_after_secs
        .map(|s| format!("retry-after: {s}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(body.as_bytes()).await;
    let _ = tcp.shutdown().await;
}
