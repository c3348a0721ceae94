//! Subscriber clients of every protocol the harness speaks, and the payload they carry.
//!
//! Each client connects, subscribes, reports ready, then records the latency of every message
//! from the send timestamp in its payload (`{"t":<unix ns>,...}`) until told to stop.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;

use crate::workers::{ClientPlan, TlsPlan};

/// The wire protocol a subscriber speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Herald's native protocol (`herald.v1`).
    Herald,
    /// MQTT 3.1.1 over WebSocket (QoS 0).
    Mqtt,
    /// The NATS protocol over WebSocket.
    Nats,
    /// Plain WebSocket: every text frame is a payload.
    Ws,
}

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A JSON payload of exactly `size` bytes (at least 40) carrying the send time.
pub fn payload(size: usize) -> Vec<u8> {
    let head = format!(r#"{{"t":{},"p":""#, now_ns());
    let pad = size.saturating_sub(head.len() + 2).max(1);
    let mut v = head.into_bytes();
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(br#""}"#);
    v
}

/// The send time in a payload, if any.
pub fn sent_at(bytes: &[u8]) -> Option<u64> {
    let i = bytes.windows(4).position(|w| w == br#""t":"#)? + 4;
    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&bytes[i..i + digits])
        .ok()?
        .parse()
        .ok()
}

/// Where and how to subscribe (built once per worker from a [`ClientPlan`]).
pub struct Target {
    /// The server's WebSocket address.
    pub server: SocketAddr,
    /// When not empty: client i connects to `spread[i % len]` instead (several edges).
    pub spread: Vec<SocketAddr>,
    /// Protocol.
    pub protocol: Protocol,
    /// Group / topic / subject to subscribe to.
    pub topic: String,
    /// Subscribe after connecting (else Herald clients stop at `welcome`).
    pub subscribe: bool,
    /// Herald project (`/ws/<project>`).
    pub project: String,
    /// tungstenite read buffer, bytes.
    pub read_buffer: usize,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// Where client `i` connects.
    pub fn server_for(&self, i: u64) -> SocketAddr {
        if self.spread.is_empty() {
            self.server
        } else {
            self.spread[(i % self.spread.len() as u64) as usize]
        }
    }

    /// Builds a target from a plan: reads the CA file of a `wss` plan.
    pub fn new(p: &ClientPlan) -> anyhow::Result<Self> {
        let tls = match &p.tls {
            None => None,
            Some(t) => Some(tls_connector(t)?),
        };
        Ok(Self {
            server: p.server,
            spread: p.spread.clone(),
            protocol: p.protocol,
            topic: p.topic.clone(),
            subscribe: p.subscribe,
            project: p.project.clone(),
            read_buffer: p.read_buffer,
            tls,
        })
    }
}

/// A rustls client (aws-lc-rs) trusting the CAs in `t.ca`, sending `t.server_name` as SNI.
pub fn tls_connector(t: &TlsPlan) -> anyhow::Result<(TlsConnector, ServerName<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &t.ca {
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("read CA file {}", ca.display()))?
        {
            roots
                .add(cert.with_context(|| format!("CA file {}", ca.display()))?)
                .context("CA certificate")?;
        }
        if roots.is_empty() {
            bail!("{}: no certificate in it", ca.display());
        }
    } else {
        bail!("wss needs --ca FILE: the harness trusts only the CAs it is given");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(t.server_name.clone())
        .with_context(|| format!("server name {:?}", t.server_name))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// A client socket: plain TCP or TLS over TCP.
pub type ClientStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// What a subscriber reads next.
pub enum Event {
    /// A delivered payload.
    Payload(Vec<u8>),
    /// The server pinged (the pong is already sent).
    Ping,
}

/// A connected, subscribed client.
pub struct Subscriber {
    ws: tokio_tungstenite::WebSocketStream<ClientStream>,
    protocol: Protocol,
    buf: Vec<u8>,
}

/// Opens a TCP connection from `src` (spreading client ends over 127.0.0.0/8).
pub async fn connect_from(src: Ipv4Addr, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    Ok(sock.connect(server).await?)
}

/// A loopback source address for client number `i`: 250 clients per address, from 127.0.1.1
/// on (1,000,000 clients use 4,000 addresses up to 127.0.17.x).
pub fn source_ip(i: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 62_500) as u8, 1 + ((i / 250) % 250) as u8)
}

impl Subscriber {
    /// Connects client number `i` (its server and [`source_ip`] follow from `i`; TLS when the
    /// target says so) and subscribes to `topic` (default: the target's); `token` is for Herald.
    pub async fn connect(
        t: &Target,
        i: u64,
        topic: Option<&str>,
        token: &str,
    ) -> anyhow::Result<Self> {
        let server = t.server_for(i);
        let src = source_ip(i);
        let tcp = connect_from(src, server).await?;
        let (stream, scheme) = match &t.tls {
            None => (Either::Left(tcp), "ws"),
            Some((connector, name)) => (
                Either::Right(connector.connect(name.clone(), tcp).await?),
                "wss",
            ),
        };
        let host = match &t.tls {
            Some((_, ServerName::DnsName(n))) => format!("{}:{}", n.as_ref(), server.port()),
            _ => server.to_string(),
        };
        let url = match t.protocol {
            Protocol::Herald => format!("{scheme}://{host}/ws/{}?token={token}", t.project),
            _ => format!("{scheme}://{host}/"),
        };
        let mut req = url.into_client_request()?;
        if t.protocol == Protocol::Mqtt {
            req.headers_mut()
                .insert("sec-websocket-protocol", "mqtt".parse()?);
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(t.read_buffer.max(128))
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
        let mut s = Self {
            ws,
            protocol: t.protocol,
            buf: Vec::new(),
        };
        if t.subscribe {
            s.subscribe(topic.unwrap_or(&t.topic)).await?;
        } else if t.protocol == Protocol::Herald {
            s.welcome().await?;
        }
        Ok(s)
    }

    async fn welcome(&mut self) -> anyhow::Result<()> {
        let welcome = self.next_frame().await?;
        if !welcome.windows(9).any(|w| w == br#""welcome""#) {
            bail!(
                "expected welcome, got {}",
                String::from_utf8_lossy(&welcome)
            );
        }
        Ok(())
    }

    /// The next data frame, or `None` when the server pinged (the pong is sent).
    async fn frame_or_ping(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            match self.ws.next().await.context("stream ended")?? {
                Message::Text(t) => return Ok(Some(t.as_bytes().to_vec())),
                Message::Binary(b) => return Ok(Some(b.to_vec())),
                Message::Ping(_) => {
                    // tungstenite queued the pong; send it now.
                    self.ws.flush().await?;
                    return Ok(None);
                }
                Message::Close(c) => bail!("closed by server: {c:?}"),
                _ => {}
            }
        }
    }

    async fn next_frame(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(f) = self.frame_or_ping().await? {
                return Ok(f);
            }
        }
    }

    async fn subscribe(&mut self, topic: &str) -> anyhow::Result<()> {
        match self.protocol {
            Protocol::Herald => {
                self.welcome().await?;
                let sub = format!(r#"{{"type":"subscribe","id":1,"group":"{topic}"}}"#);
                self.ws.send(Message::text(sub)).await?;
                let ack = self.next_frame().await?;
                if !ack.windows(5).any(|w| w == br#""ack""#) {
                    bail!("subscribe refused: {}", String::from_utf8_lossy(&ack));
                }
            }
            Protocol::Mqtt => {
                let id = format!("b{}", now_ns());
                self.ws.send(Message::binary(mqtt_connect(&id))).await?;
                let connack = self.next_mqtt().await?;
                if connack.0 != 2 {
                    bail!("expected CONNACK, got packet type {}", connack.0);
                }
                self.ws.send(Message::binary(mqtt_subscribe(topic))).await?;
                let suback = self.next_mqtt().await?;
                if suback.0 != 9 {
                    bail!("expected SUBACK, got packet type {}", suback.0);
                }
            }
            Protocol::Nats => {
                let cmd = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {topic} 1\r\nPING\r\n"
                );
                self.ws.send(Message::binary(cmd.into_bytes())).await?;
                loop {
                    match self.next_nats().await? {
                        NatsEvent::Pong => break,
                        NatsEvent::Err(e) => bail!("nats: {e}"),
                        _ => {}
                    }
                }
            }
            Protocol::Ws => {}
        }
        Ok(())
    }

    /// The next delivered payload, or a ping the server sent meanwhile.
    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        loop {
            // Whole packets already buffered (MQTT, NATS) first.
            match self.protocol {
                Protocol::Mqtt => {
                    if let Some((kind, start, end)) = mqtt_split(&self.buf) {
                        let body = self.buf[start..end].to_vec();
                        self.buf.drain(..end);
                        if kind == 3 && body.len() >= 2 {
                            let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                            return Ok(Event::Payload(
                                body.get(2 + tl..).unwrap_or_default().to_vec(),
                            ));
                        }
                        continue;
                    }
                }
                Protocol::Nats => {
                    if let Some((ev, used)) = nats_split(&self.buf)? {
                        self.buf.drain(..used);
                        match ev {
                            NatsEvent::Msg(p) => return Ok(Event::Payload(p)),
                            NatsEvent::Ping => {
                                self.ws.send(Message::binary(b"PONG\r\n".to_vec())).await?;
                                return Ok(Event::Ping);
                            }
                            NatsEvent::Err(e) => bail!("nats: {e}"),
                            NatsEvent::Pong => {}
                        }
                        continue;
                    }
                }
                Protocol::Herald | Protocol::Ws => {}
            }
            let Some(f) = self.frame_or_ping().await? else {
                return Ok(Event::Ping);
            };
            match self.protocol {
                Protocol::Herald => {
                    if f.starts_with(br#"{"type":"msg""#) {
                        return Ok(Event::Payload(f));
                    }
                }
                Protocol::Ws => return Ok(Event::Payload(f)),
                Protocol::Mqtt | Protocol::Nats => self.buf.extend_from_slice(&f),
            }
        }
    }

    /// Reads one MQTT packet: (type, body).
    async fn next_mqtt(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((kind, start, end)) = mqtt_split(&self.buf) {
                let body = self.buf[start..end].to_vec();
                self.buf.drain(..end);
                return Ok((kind, body));
            }
            let f = self.next_frame().await?;
            self.buf.extend_from_slice(&f);
        }
    }

    async fn next_nats(&mut self) -> anyhow::Result<NatsEvent> {
        loop {
            if let Some((ev, used)) = nats_split(&self.buf)? {
                self.buf.drain(..used);
                return Ok(ev);
            }
            let f = self.next_frame().await?;
            self.buf.extend_from_slice(&f);
        }
    }
}

enum NatsEvent {
    Msg(Vec<u8>),
    Ping,
    Pong,
    Err(String),
}

/// Splits one NATS protocol operation off the front of `buf`.
fn nats_split(buf: &[u8]) -> anyhow::Result<Option<(NatsEvent, usize)>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..eol])?;
    let after = eol + 2;
    let op = line.split_whitespace().next().unwrap_or("");
    Ok(Some(match op {
        "MSG" => {
            let size: usize = line
                .split_whitespace()
                .last()
                .and_then(|s| s.parse().ok())
                .context("MSG size")?;
            if buf.len() < after + size + 2 {
                return Ok(None);
            }
            (
                NatsEvent::Msg(buf[after..after + size].to_vec()),
                after + size + 2,
            )
        }
        "PING" => (NatsEvent::Ping, after),
        "PONG" => (NatsEvent::Pong, after),
        "-ERR" => (NatsEvent::Err(line.to_string()), after),
        // INFO, +OK
        _ => return nats_split(&buf[after..]).map(|o| o.map(|(e, n)| (e, n + after))),
    }))
}

/// MQTT remaining-length encoding.
fn mqtt_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// MQTT 3.1.1 CONNECT, clean session, keep-alive 300 s.
pub fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0x01, 0x2c]);
    mqtt_str(client_id, &mut body);
    let mut p = vec![0x10];
    mqtt_len(body.len(), &mut p);
    p.extend(body);
    p
}

fn mqtt_subscribe(topic: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    mqtt_str(topic, &mut body);
    body.push(0);
    let mut p = vec![0x82];
    mqtt_len(body.len(), &mut p);
    p.extend(body);
    p
}

/// MQTT PUBLISH, QoS 0.
pub fn mqtt_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x30];
    mqtt_len(2 + topic.len() + payload.len(), &mut p);
    mqtt_str(topic, &mut p);
    p.extend_from_slice(payload);
    p
}

/// Splits one MQTT packet off the front: (type, body start, body end).
pub fn mqtt_split(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let kind = *buf.first()? >> 4;
    let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
    loop {
        let b = *buf.get(i)?;
        len += (b & 0x7f) as usize * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    (buf.len() >= i + len).then_some((kind, i, i + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_time_and_size() {
        let p = payload(100);
        assert_eq!(p.len(), 100);
        assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
        assert!(sent_at(&p).is_some_and(|t| t > 0));
    }

    #[test]
    fn mqtt_packets_round_trip() {
        let p = mqtt_publish("fan", &[7u8; 300]);
        let (kind, s, e) = mqtt_split(&p).expect("whole packet");
        assert_eq!((kind, e - s), (3, 2 + 3 + 300));
        assert!(mqtt_split(&p[..p.len() - 1]).is_none());
    }

    #[test]
    fn nats_messages_split_across_reads() {
        let buf = b"INFO {}\r\nMSG fan 1 5\r\nhello\r\nPING\r\n";
        let (ev, n) = nats_split(buf).expect("ok").expect("msg");
        assert!(matches!(ev, NatsEvent::Msg(ref p) if p == b"hello"));
        assert!(matches!(
            nats_split(&buf[n..]).expect("ok"),
            Some((NatsEvent::Ping, _))
        ));
        assert!(nats_split(&buf[..20]).expect("ok").is_none());
    }
}
