//! A Server-Sent Events client over a raw socket, as a browser's `EventSource` reads a stream:
//! the HTTP answer, then events (`data:` lines joined by `\n`, `event:`, `id:`, `retry:`,
//! comments), remembering the last event id as `EventSource` does (an event without `id` keeps
//! the previous one) so that a reconnect can send it as `Last-Event-ID`.
//!
//! ```ignore
//! let mut s = SseClient::open(herald.ws, "/sse/alpha?groups=news", &[("authorization", &bearer)])
//!     .await.expect("200");
//! let welcome = s.next_json().await;
//! ```

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{HttpReply, WAIT};

/// One dispatched event (or a comment, with `comment` set and nothing else).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` type; empty for the default (`message`).
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The event's own `id:` field, if it had one.
    pub id: Option<String>,
    /// The `retry:` field, if any.
    pub retry: Option<u64>,
    /// A comment line (heartbeat): `Some(text after ':')`, the event holds nothing else.
    pub comment: Option<String>,
}

/// What the client reads the body from.
type Body = Box<dyn AsyncRead + Unpin + Send>;

/// An open event stream.
pub struct SseClient {
    reader: BufReader<Body>,
    /// The answer's headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The last event id received (kept across events without `id`, as `EventSource` does).
    pub last_id: Option<String>,
    /// The task taking a chunked body apart (a stream through nginx), stopped with the client.
    dechunk: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SseClient {
    fn drop(&mut self) {
        if let Some(t) = &self.dechunk {
            t.abort();
        }
    }
}

/// Copies a chunked body's data from `from` to `to` until its last chunk or an error.
async fn dechunk<R: AsyncRead + Unpin>(mut from: BufReader<R>, mut to: tokio::io::DuplexStream) {
    loop {
        let mut size = String::new();
        if from.read_line(&mut size).await.unwrap_or(0) == 0 {
            return;
        }
        let Ok(n) = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16) else {
            return;
        };
        if n == 0 {
            return;
        }
        let mut chunk = vec![0u8; n + 2];
        if from.read_exact(&mut chunk).await.is_err() {
            return;
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// The request for `path` with extra header lines.
fn request(path: &str, head: &[(&str, &str)]) -> String {
    let mut req =
        format!("GET {path} HTTP/1.1\r\nhost: push.herald.test\r\naccept: text/event-stream\r\n");
    for (k, v) in head {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

impl SseClient {
    /// Opens `path` on `addr`: the stream when the answer is 200, else the refusal.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        head: &[(&str, &str)],
    ) -> Result<Self, HttpReply> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self::open_on(tcp, path, head).await
    }

    /// Opens `path` on a connected stream.
    pub async fn open_on<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        mut s: S,
        path: &str,
        head: &[(&str, &str)],
    ) -> Result<Self, HttpReply> {
        s.write_all(request(path, head).as_bytes())
            .await
            .expect("write request");
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        tokio::time::timeout(WAIT, reader.read_line(&mut status_line))
            .await
            .expect("answer in time")
            .expect("read status");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("read header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        if status != 200 {
            let mut body = Vec::new();
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok());
            match len {
                // A keep-alive answer (nginx's own) ends where its length says.
                Some(n) => {
                    body.resize(n, 0);
                    let _ = tokio::time::timeout(WAIT, reader.read_exact(&mut body)).await;
                }
                None => {
                    let _ = tokio::time::timeout(WAIT, reader.read_to_end(&mut body)).await;
                }
            }
            return Err(HttpReply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let (body, dechunk): (Body, _) = if chunked {
            let (tx, rx) = tokio::io::duplex(64 * 1024);
            (Box::new(rx), Some(tokio::spawn(dechunk(reader, tx))))
        } else {
            (Box::new(reader), None)
        };
        Ok(Self {
            reader: BufReader::new(body),
            headers,
            last_id: None,
            dechunk,
        })
    }

    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next line, without its line ending; `None` at the end of the stream.
    async fn line(&mut self) -> Option<String> {
        let mut raw = Vec::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_until(b'\n', &mut raw))
            .await
            .expect("a line in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            raw.pop();
        }
        Some(String::from_utf8(raw).expect("utf-8 line"))
    }

    /// The next event or comment; `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        let mut ev = Event::default();
        let mut data: Option<String> = None;
        let mut any = false;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                if any {
                    ev.data = data.unwrap_or_default();
                    if ev.id.is_some() {
                        self.last_id = ev.id.clone();
                    }
                    return Some(ev);
                }
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                if !any {
                    // A comment alone: what a heartbeat is.
                    return Some(Event {
                        comment: Some(c.to_string()),
                        ..Default::default()
                    });
                }
                continue;
            }
            any = true;
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "event" => ev.event = value.to_string(),
                "id" => ev.id = Some(value.to_string()),
                "retry" => ev.retry = value.parse().ok(),
                other => panic!("unknown field {other:?} in {line:?}"),
            }
        }
    }

    /// The next event's data as JSON, skipping heartbeats; panics at the end of the stream or
    /// on a `close` event.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let ev = self.next_event().await.expect("the stream ended");
            if ev.comment.is_some() {
                continue;
            }
            assert!(ev.event.is_empty(), "event {:?}: {}", ev.event, ev.data);
            return serde_json::from_str(&ev.data).expect("json data");
        }
    }

    /// The next `msg` frame, skipping heartbeats; panics on anything else.
    pub async fn next_msg(&mut self) -> Value {
        let v = self.next_json().await;
        assert_eq!(v["type"], "msg", "expected a msg: {v}");
        v
    }

    /// Reads until `event: close`, skipping heartbeats; returns it and the frames before it.
    pub async fn expect_close(&mut self) -> (Event, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let ev = self
                .next_event()
                .await
                .expect("the stream ended without a close event");
            if ev.comment.is_some() {
                continue;
            }
            if ev.event == "close" {
                return (ev, before);
            }
            before.push(serde_json::from_str(&ev.data).expect("json data"));
        }
    }

    /// Whether the stream ends (EOF) within [`WAIT`] with nothing but heartbeats before.
    pub async fn expect_end(&mut self) {
        while let Some(ev) = self.next_event().await {
            assert!(ev.comment.is_some(), "an event after the close: {ev:?}");
        }
    }
}
