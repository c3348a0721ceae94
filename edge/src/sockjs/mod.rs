//! SockJS: the transports of sockjs-client (`websocket`, `xhr-streaming`, `eventsource`,
//! `xhr-polling`) as a framing and transport layer below the codecs, so that stompjs over
//! sockjs-client connects to `/sockjs/{project}` unchanged. A SockJS session speaks STOMP.
//!
//! - [`route`]: the paths under `/sockjs/{project}` (`info`, `<server>/<session>/<transport>`,
//!   `xhr_send`);
//! - [`frame`]: SockJS frames (`o`, `h`, `a[..]`, `c[..]`) and each transport's framing; the
//!   codec's output (WebSocket frames) is re-framed per connection ([`frame::wrap_batch`]);
//! - [`http`]: sessions over HTTP requests. One session spans many requests: the first
//!   receiving request (`xhr_streaming`, `eventsource`, `xhr`) creates it in the edge's
//!   [`http::Table`] and its task becomes the session's task ([`http::HttpLink`]); later
//!   receiving requests are handed to that task, `xhr_send` bodies are queued for it. The
//!   `websocket` transport is an ordinary WebSocket session whose write queue frames for SockJS.
//!
//! Admission, the defences, authentication (the token in the STOMP `CONNECT`), the hub, the
//! limits and the metrics are the session layer's, as for any WebSocket client.

pub(crate) mod frame;
pub(crate) mod http;

use std::fmt::Write as _;

use herald_core::ids::ProjectId;

/// The path prefix of SockJS endpoints: `/sockjs/{project}`.
pub const PREFIX: &str = "/sockjs/";

/// A SockJS transport that receives: the session's messages to the client go down it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `websocket`: both ways over one WebSocket.
    WebSocket,
    /// `xhr_streaming`: one long response, new requests once it carried enough.
    XhrStreaming,
    /// `eventsource`: one long `text/event-stream` response.
    EventSource,
    /// `xhr`: one response per batch of frames (long polling).
    XhrPolling,
}

impl Transport {
    /// A label for metrics (`transport`).
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::XhrStreaming => "xhr_streaming",
            Transport::EventSource => "eventsource",
            Transport::XhrPolling => "xhr_polling",
        }
    }

    /// How the transport carries frames.
    pub(crate) fn framing(self) -> frame::Framing {
        match self {
            Transport::WebSocket => frame::Framing::WebSocket,
            Transport::XhrStreaming | Transport::XhrPolling => frame::Framing::Xhr,
            Transport::EventSource => frame::Framing::EventSource,
        }
    }
}

/// What a request under `/sockjs/{project}` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/sockjs/{project}` itself: the greeting.
    Greeting,
    /// `info`: what the server offers.
    Info,
    /// A session's receiving transport.
    Receive {
        /// The session id.
        session: String,
        /// The transport.
        transport: Transport,
    },
    /// `xhr_send`: messages from the client to a session.
    Send {
        /// The session id.
        session: String,
    },
}

/// A request under `/sockjs/{project}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub endpoint: Endpoint,
    /// The HTTP method.
    pub method: ::http::Method,
    /// `Access-Control-Request-Headers`, echoed to a preflight.
    pub cors_headers: Option<String>,
    /// `Content-Length` of the body.
    pub content_length: usize,
    /// The body comes in chunks (`Transfer-Encoding: chunked`: Node's HTTP client).
    pub chunked: bool,
}

impl Request {
    /// Whether it opens the `websocket` transport (an upgrade).
    pub fn is_websocket(&self) -> bool {
        matches!(
            self.endpoint,
            Endpoint::Receive {
                transport: Transport::WebSocket,
                ..
            }
        )
    }
}

/// Longest server or session id accepted.
const MAX_ID: usize = 64;

/// Whether `s` may be a SockJS server or session id.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The project and endpoint of a path under [`PREFIX`]; `None` when the path is not SockJS's.
pub fn route(path: &str) -> Option<(Result<ProjectId, ()>, Endpoint)> {
    let rest = path.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let project = ProjectId::new(parts.next()?).map_err(|_| ());
    let parts: Vec<&str> = parts.collect();
    let endpoint = match parts[..] {
        [] | [""] => Endpoint::Greeting,
        ["info"] => Endpoint::Info,
        [server, session, kind] if valid_id(server) && valid_id(session) => {
            let session = session.to_string();
            let transport = match kind {
                "websocket" => Transport::WebSocket,
                "xhr_streaming" => Transport::XhrStreaming,
                "eventsource" => Transport::EventSource,
                "xhr" => Transport::XhrPolling,
                "xhr_send" => return Some((project, Endpoint::Send { session })),
                _ => return None,
            };
            Endpoint::Receive { session, transport }
        }
        _ => return None,
    };
    Some((project, endpoint))
}

/// The `info` answer: WebSocket offered, any origin (the project's origin list is checked on
/// every request), no cookie needed (sessions are routed by their path: see
/// docs/deployment.md), and the entropy the client seeds its ids with.
pub(crate) fn info_json() -> String {
    let entropy: u32 = rand::random();
    format!(r#"{{"websocket":true,"origins":["*:*"],"cookie_needed":false,"entropy":{entropy}}}"#)
}

/// Headers that make an answer readable cross-origin by sockjs-client's XHRs (sent with
/// credentials: the origin is echoed, never `*` with credentials).
pub(crate) fn cors(origin: Option<&str>, out: &mut String) {
    match origin {
        Some(o) if o != "null" => {
            let _ = write!(
                out,
                "access-control-allow-origin: {o}\r\naccess-control-allow-credentials: true\r\nvary: origin\r\n"
            );
        }
        _ => out.push_str("access-control-allow-origin: *\r\n"),
    }
}

/// The head of an answer: status, CORS, no caching, `connection: close`, and `extra` headers.
pub(crate) fn head(status: ::http::StatusCode, origin: Option<&str>, extra: &str) -> String {
    let mut h = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    cors(origin, &mut h);
    h.push_str("cache-control: no-store, no-cache, no-transform, must-revalidate, max-age=0\r\n");
    h.push_str(extra);
    h.push_str("connection: close\r\n\r\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = |path| route(path).map(|(p, e)| (p.ok().map(|p| p.to_string()), e));
        assert_eq!(
            p("/sockjs/demo"),
            Some((Some("demo".into()), Endpoint::Greeting))
        );
        assert_eq!(
            p("/sockjs/demo/"),
            Some((Some("demo".into()), Endpoint::Greeting))
        );
        assert_eq!(
            p("/sockjs/demo/info"),
            Some((Some("demo".into()), Endpoint::Info))
        );
        assert_eq!(
            p("/sockjs/demo/123/abc_d/xhr_streaming"),
            Some((
                Some("demo".into()),
                Endpoint::Receive {
                    session: "abc_d".into(),
                    transport: Transport::XhrStreaming
                }
            ))
        );
        assert_eq!(
            p("/sockjs/demo/1/s/xhr_send"),
            Some((
                Some("demo".into()),
                Endpoint::Send {
                    session: "s".into()
                }
            ))
        );
        assert_eq!(p("/sockjs/demo/1/s.x/xhr"), None);
        assert_eq!(p("/sockjs/demo/1/s/jsonp"), None);
        assert_eq!(p("/sockjs/demo/1//xhr"), None);
        assert_eq!(p("/ws/demo"), None);
        assert!(matches!(
            route("/sockjs/Bad Name/info"),
            Some((Err(()), Endpoint::Info))
        ));
    }

    #[test]
    fn info_is_json() {
        let v: serde_json::Value = serde_json::from_str(&info_json()).unwrap();
        assert_eq!(v["websocket"], true);
        assert_eq!(v["cookie_needed"], false);
        assert!(v["entropy"].is_u64());
    }
}
