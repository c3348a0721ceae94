//! The one WebSocket client of every scenario, the lean one: a connection is a socket, a few
//! bytes of state and a normally empty `Vec`; reads go into one 64 KiB buffer per thread, the
//! upgrade request is written once and dropped. Over TCP or TLS (rustls), from a loopback source
//! address of its own, speaking a pluggable [`Codec`] over the WebSocket: herald.v1, MQTT 3.1.1,
//! STOMP 1.2, NATS or plain frames.
//!
//! ```ignore
//! let target = Target::plain(server);
//! let hello = Hello { project: "bench", token: &token, topic: Some("fan") };
//! let mut on = |e: Event<'_>| if let Event::Message(m) = e { count(m) };
//! let mut conn = Conn::connect(&target, i, &hello, Herald::default(), &mut on).await?;
//! let end = conn.serve(&mut on).await; // until the server closes or the socket fails
//! ```
//!
//! # Layout
//! - [`frame`]: WebSocket framing.
//! - [`codec`]: the [`Codec`] trait and its [`Event`]s.
//! - [`herald`], [`mqtt`], [`stomp`], [`nats`], [`plain`]: the codecs; [`sse`]: the native
//!   protocol over a Server-Sent Events stream instead of a WebSocket.

pub mod codec;
pub mod frame;
pub mod herald;
pub mod mqtt;
pub mod nats;
pub mod plain;
pub mod sse;
pub mod stomp;

pub use codec::{Codec, Event, Hello};

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;

use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// The wire protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Herald's native protocol (`herald.v1`).
    Herald,
    /// MQTT 3.1.1 over WebSocket (QoS 0).
    Mqtt,
    /// STOMP 1.2 over WebSocket (`ack:auto`).
    Stomp,
    /// The NATS protocol over WebSocket.
    Nats,
    /// Plain WebSocket: every data frame is a payload.
    Ws,
    /// Herald's native protocol over Server-Sent Events (`/sse/<project>`).
    Sse,
}

/// Where clients connect and how.
pub struct Target {
    /// The server's WebSocket address.
    pub server: SocketAddr,
    /// When not empty: client i connects to `spread[i % len]` instead (several edges).
    pub spread: Vec<SocketAddr>,
    /// `wss`: the TLS connector and the name sent as SNI.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `SO_RCVBUF` and `SO_SNDBUF` of each socket, bytes (0: the kernel's default).
    pub sockbuf: usize,
    /// Close with RST (zero linger), leaving no TIME_WAIT behind.
    pub zero_linger: bool,
    /// Offer `permessage-deflate` (as browsers do) and inflate compressed server messages
    /// (the client's own messages go uncompressed, which the extension allows).
    pub deflate: bool,
}

impl Target {
    /// Plain `ws` to `server`, default socket options.
    pub fn plain(server: SocketAddr) -> Self {
        Self {
            server,
            spread: Vec::new(),
            tls: None,
            sockbuf: 0,
            zero_linger: false,
            deflate: false,
        }
    }

    /// Where client `i` connects.
    pub fn server_for(&self, i: u64) -> SocketAddr {
        if self.spread.is_empty() {
            self.server
        } else {
            self.spread[(i % self.spread.len() as u64) as usize]
        }
    }
}

/// A loopback source address for client number `i`: 250 clients per address, from 127.0.1.1
/// on (1,000,000 clients use 4,000 addresses up to 127.0.17.x).
pub fn source_ip(i: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 62_500) as u8, 1 + ((i / 250) % 250) as u8)
}

/// How a connection ended or failed to start.
#[derive(Debug)]
pub enum End {
    /// A socket error, by cause (naming the limit when it is one).
    Io(&'static str),
    /// The TLS handshake failed.
    Tls,
    /// The server closed the socket.
    Eof,
    /// The upgrade was answered with this status (or was unreadable).
    Http(String),
    /// The server sent a close frame with this code.
    Close(u16),
    /// herald.v1: the first frame was not `welcome`.
    Refused,
    /// The protocol went wrong.
    Protocol(&'static str),
}

impl End {
    /// A short label to count ends by.
    pub fn label(&self) -> String {
        match self {
            End::Io(c) => (*c).to_string(),
            End::Tls => "tls".into(),
            End::Eof => "eof".into(),
            End::Http(s) => format!("http {s}"),
            End::Close(c) => format!("close {c}"),
            End::Refused => "no welcome".into(),
            End::Protocol(p) => (*p).to_string(),
        }
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(io_cause(&e))
    }
}

/// The cause of an I/O error, naming the limit when it is one.
fn io_cause(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(23 | 24) => "fds (EMFILE/ENFILE)",
        Some(98 | 99) => "ports (EADDRINUSE/EADDRNOTAVAIL)",
        Some(12 | 105) => "memory (ENOMEM/ENOBUFS)",
        Some(111) => "refused (ECONNREFUSED)",
        Some(110) => "timeout (ETIMEDOUT)",
        Some(104) => "reset (ECONNRESET)",
        _ => "io (other)",
    }
}

/// A client socket: TCP, or TLS over TCP (boxed: a plain connection does not carry the size of
/// a TLS session).
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Largest incomplete frame kept.
const MAX_PENDING: usize = 1 << 20;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
    /// A compressed message's inflater and its output (one per thread: messages are
    /// compressed without context takeover, so each inflates on its own).
    static INFLATE: RefCell<(flate2::Decompress, Vec<u8>)> =
        RefCell::new((flate2::Decompress::new(false), Vec::new()));
}

/// Inflates one `permessage-deflate` message (RFC 7692: the flush tail put back).
fn inflate(payload: &[u8], into: &mut Vec<u8>, d: &mut flate2::Decompress) -> Result<(), End> {
    d.reset(false);
    into.clear();
    into.reserve(payload.len() * 8 + 64);
    for input in [payload, &[0, 0, 0xff, 0xff][..]] {
        let mut at = 0;
        while at < input.len() {
            if into.len() == into.capacity() {
                into.reserve(into.capacity());
            }
            let before = d.total_in();
            d.decompress_vec(&input[at..], into, flate2::FlushDecompress::Sync)
                .map_err(|_| End::Protocol("bad deflate data"))?;
            at += (d.total_in() - before) as usize;
        }
    }
    Ok(())
}

/// One WebSocket connection speaking codec `C`.
pub struct Conn<C> {
    stream: Stream,
    /// Bytes of an incomplete frame or upgrade answer (normally empty: no allocation).
    pending: Vec<u8>,
    upgraded: bool,
    ready: bool,
    codec: C,
}

impl<C: Codec> Conn<C> {
    /// Connects client number `i` (its server and [`source_ip`] follow from `i`), upgrades,
    /// lets the codec subscribe, and returns once it is ready. Events that come meanwhile go to
    /// `on` as they will after.
    pub async fn connect(
        t: &Target,
        i: u64,
        hello: &Hello<'_>,
        codec: C,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<Self, End> {
        let server = t.server_for(i);
        let sock = TcpSocket::new_v4()?;
        if t.sockbuf > 0 {
            sock.set_recv_buffer_size(t.sockbuf as u32)?;
            sock.set_send_buffer_size(t.sockbuf as u32)?;
        }
        sock.bind(SocketAddr::from((source_ip(i), 0)))?;
        let tcp = sock.connect(server).await?;
        if t.zero_linger {
            tcp.set_zero_linger()?;
        }
        tcp.set_nodelay(true)?;
        let (stream, host) = match &t.tls {
            None => (Either::Left(tcp), server.to_string()),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| End::Tls)?;
                let host = match name {
                    ServerName::DnsName(n) => format!("{}:{}", n.as_ref(), server.port()),
                    _ => server.to_string(),
                };
                (Either::Right(Box::new(tls)), host)
            }
        };
        let mut c = Self {
            stream,
            pending: Vec::new(),
            upgraded: false,
            ready: false,
            codec,
        };
        if C::EVENT_STREAM {
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
                c.codec.path(hello)
            );
            c.write(req.as_bytes()).await?;
        } else {
            let mut protocol = C::SUBPROTOCOL
                .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
                .unwrap_or_default();
            if t.deflate {
                protocol.push_str(
                    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
                );
            }
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 {protocol}\r\n",
                c.codec.path(hello)
            );
            c.write(req.as_bytes()).await?;
        }
        while !c.upgraded {
            c.read(on).await?;
        }
        let mut out = Vec::new();
        let mut seen = |e: Event<'_>| {
            if e == Event::Ready {
                c.ready = true;
            }
            on(e);
        };
        c.codec.opened(hello, &mut out, &mut seen);
        // Frames that came with the upgrade answer, now that the codec has begun.
        if !c.pending.is_empty() {
            let mut p = Parser {
                upgraded: &mut c.upgraded,
                codec: &mut c.codec,
                out: &mut out,
            };
            p.absorb(&mut c.pending, &[], &mut seen)?;
        }
        if !out.is_empty() {
            c.write(&out).await?;
        }
        while !c.ready {
            c.read(on).await?;
        }
        Ok(c)
    }

    /// Handles what arrives until the connection ends; returns how.
    pub async fn serve(&mut self, on: &mut impl FnMut(Event<'_>)) -> End {
        loop {
            if let Err(e) = self.read(on).await {
                return e;
            }
        }
    }

    /// Sends bytes as they are (frames made with [`frame::push`]).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Waits for bytes, reads them into the thread's buffer and handles every whole frame;
    /// answers (pongs, the codec's frames) are written before it returns.
    async fn read(&mut self, on: &mut impl FnMut(Event<'_>)) -> Result<(), End> {
        let Self {
            stream,
            pending,
            upgraded,
            ready,
            codec,
        } = self;
        let mut out = Vec::new();
        let r = std::future::poll_fn(|cx| {
            READ_BUF.with(|b| {
                let mut b = b.borrow_mut();
                let mut rb = ReadBuf::new(&mut b[..]);
                match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(End::from(e))),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Err(End::Eof)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        let ready = &mut *ready;
                        let mut seen = |e: Event<'_>| {
                            if e == Event::Ready {
                                *ready = true;
                            }
                            on(e);
                        };
                        let mut p = Parser {
                            upgraded: &mut *upgraded,
                            codec: &mut *codec,
                            out: &mut out,
                        };
                        Poll::Ready(p.absorb(pending, &b[..n], &mut seen))
                    }
                }
            })
        })
        .await;
        if pending.len() > MAX_PENDING {
            return Err(End::Protocol("frame too large"));
        }
        if !out.is_empty() {
            self.write(&out).await?;
        }
        r
    }
}

/// What parsing one read needs of a connection.
struct Parser<'a, C> {
    upgraded: &'a mut bool,
    codec: &'a mut C,
    out: &'a mut Vec<u8>,
}

impl<C: Codec> Parser<'_, C> {
    /// Handles `new` bytes after those `pending` from earlier reads; keeps what is left of an
    /// incomplete frame in `pending`.
    fn absorb(
        &mut self,
        pending: &mut Vec<u8>,
        new: &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End> {
        if pending.is_empty() {
            let used = self.parse(new, on)?;
            pending.extend_from_slice(&new[used..]);
        } else {
            pending.extend_from_slice(new);
            let all = std::mem::take(pending);
            let used = self.parse(&all, on)?;
            *pending = all[used..].to_vec();
        }
        Ok(())
    }

    /// Handles the upgrade answer, or else the whole frames at the front of `buf`; returns the
    /// bytes used. It stops after the upgrade answer, so the codec begins before any frame.
    fn parse(&mut self, buf: &[u8], on: &mut impl FnMut(Event<'_>)) -> Result<usize, End> {
        if !*self.upgraded {
            let Some(p) = herald::find(buf, b"\r\n\r\n") else {
                if buf.len() > 8192 {
                    return Err(End::Http("answer too large".into()));
                }
                return Ok(0);
            };
            let expected: &[u8] = if C::EVENT_STREAM {
                b"HTTP/1.1 200"
            } else {
                b"HTTP/1.1 101"
            };
            if !buf.starts_with(expected) {
                let status = String::from_utf8_lossy(buf.get(9..12).unwrap_or_default());
                return Err(End::Http(status.into_owned()));
            }
            *self.upgraded = true;
            return Ok(p + 4);
        }
        let mut used = 0;
        if C::EVENT_STREAM {
            while let Some((data, close, n)) = sse::event(&buf[used..]) {
                match (data, close) {
                    (Some(d), true) => {
                        let code = herald::find(d, b"\"code\":")
                            .and_then(|i| {
                                let digits: Vec<u8> = d[i + 7..]
                                    .iter()
                                    .copied()
                                    .take_while(u8::is_ascii_digit)
                                    .collect();
                                String::from_utf8(digits).ok()?.parse().ok()
                            })
                            .unwrap_or(1005);
                        return Err(End::Close(code));
                    }
                    (Some(d), false) => self.codec.data(d, self.out, on)?,
                    (None, _) => on(Event::Ping),
                }
                used += n;
            }
            return Ok(used);
        }
        while let Some(f) = frame::parse(&buf[used..]) {
            let payload = &buf[used + f.start..used + f.end];
            match f.opcode {
                frame::TEXT | frame::BINARY if f.fin && f.compressed => {
                    INFLATE.with_borrow_mut(|(d, buf)| {
                        inflate(payload, buf, d)?;
                        self.codec.data(buf, self.out, on)
                    })?
                }
                frame::TEXT | frame::BINARY if f.fin => self.codec.data(payload, self.out, on)?,
                // No server of the harness fragments its messages.
                frame::TEXT | frame::BINARY | 0 => return Err(End::Protocol("fragmented message")),
                frame::CLOSE => {
                    let code = payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(End::Close(code));
                }
                frame::PING if payload.len() <= 125 => {
                    frame::push(self.out, frame::PONG, payload);
                    on(Event::Ping);
                }
                _ => {}
            }
            used += f.end;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::herald::Herald;
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// An unmasked server frame.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | opcode, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    /// Reads from `s` until `buf` holds `needle`.
    async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
        while !herald::contains(buf, needle) {
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.expect("read");
            assert!(
                n > 0,
                "client closed; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&b[..n]);
        }
    }

    #[tokio::test]
    async fn a_welcome_sent_with_the_upgrade_answer_still_leads_to_the_subscription() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (connected, mut wait) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            read_until(&mut s, &mut got, b"\r\n\r\n").await;
            // The 101, the welcome and a ping in one write.
            let mut answer = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
            answer.extend(server_frame(frame::TEXT, br#"{"type":"welcome"}"#));
            answer.extend(server_frame(frame::PING, b"p"));
            s.write_all(&answer).await.expect("write");
            read_until(&mut s, &mut got, br#""group":"news""#).await;
            let mut rest = server_frame(frame::TEXT, br#"{"type":"ack","id":1}"#);
            rest.extend(server_frame(
                frame::TEXT,
                br#"{"type":"msg","data":{"t":1}}"#,
            ));
            // Half a close frame, then (once the client is connected) the rest: the client
            // waits for the whole of it.
            let close = server_frame(frame::CLOSE, &4009u16.to_be_bytes());
            rest.extend_from_slice(&close[..1]);
            s.write_all(&rest).await.expect("write");
            read_until(&mut s, &mut got, &[0x8a, 0x81, 0, 0, 0, 0, b'p']).await;
            wait.recv().await;
            s.write_all(&close[1..]).await.expect("write");
            got
        });
        let mut events = Vec::new();
        let mut on = |e: Event<'_>| events.push(format!("{e:?}"));
        let hello = Hello {
            project: "p",
            token: "tok",
            topic: Some("news"),
        };
        let mut conn = Conn::connect(&Target::plain(addr), 0, &hello, Herald::default(), &mut on)
            .await
            .expect("connected and subscribed");
        connected.send(()).await.expect("server waits");
        let within = std::time::Duration::from_secs(30);
        let end = tokio::time::timeout(within, conn.serve(&mut on))
            .await
            .expect("the server's close within 30 s");
        assert_eq!(end.label(), "close 4009");
        assert_eq!(events[0], "Ping");
        assert_eq!(events[1], "Ready");
        assert!(events[2].starts_with("Message"), "{events:?}");
        assert_eq!(events.len(), 3, "{events:?}");
        let got = tokio::time::timeout(within, server)
            .await
            .expect("server done")
            .expect("server");
        assert!(got.starts_with(b"GET /ws/p?token=tok HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_refused_upgrade_names_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            read_until(&mut s, &mut got, b"\r\n\r\n").await;
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
        });
        let hello = Hello {
            project: "p",
            token: "bad",
            topic: None,
        };
        let e = Conn::connect(
            &Target::plain(addr),
            1,
            &hello,
            Herald::default(),
            &mut |_| {},
        )
        .await
        .err()
        .expect("refused");
        assert_eq!(e.label(), "http 401");
    }
}
