//! The servers under test and how each is published to: Herald (one node or a local cluster,
//! through `herald-sandbox`), the bare tokio-tungstenite baseline, and the peers (mosquitto,
//! nats-server, Node `ws`).
//!
//! # Layout
//! - [`herald`]: Herald, one node or a cluster.
//! - [`baseline`]: the baseline server (`baseline-server`).
//! - [`peers`]: mosquitto, nats-server and Node `ws`.
//! - here: [`ServerKind`], and [`start`], which starts one and connects its publisher.

pub mod baseline;
pub mod herald;
pub mod peers;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{PublishRequest, PublishStreamRequest, Target as ApiTarget, target};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::client::plain::Plain;
use crate::client::{Conn, Hello, Protocol, Target, frame, mqtt};
use crate::payload::{self, PayloadKind};
use crate::tls::TlsSetup;
use crate::workers::ClientPlan;

/// The bench project's HS256 secret.
pub const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
/// The bench project's API key.
pub const API_KEY: &str = "bench-api-key-0123456789";

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// Herald (the real binary), native protocol, gRPC publisher.
    Herald,
    /// Herald with MQTT 3.1.1 subscribers (QoS 0, on `/mqtt/bench`, the token as CONNECT
    /// password), gRPC publisher.
    #[value(name = "herald-mqtt")]
    #[serde(rename = "herald-mqtt")]
    HeraldMqtt,
    /// Herald with STOMP 1.2 subscribers (`v12.stomp` on `/ws/bench`, the token in `CONNECT`,
    /// `SUBSCRIBE` to `/topic/bench/<group>` with `ack:auto`), gRPC publisher.
    #[value(name = "herald-stomp")]
    #[serde(rename = "herald-stomp")]
    HeraldStomp,
    /// Herald with native subscribers that negotiate `permessage-deflate` (the bench project
    /// enables it) and inflate every compressed message, gRPC publisher.
    #[value(name = "herald-deflate")]
    #[serde(rename = "herald-deflate")]
    HeraldDeflate,
    /// Herald with native clients over Server-Sent Events (`/sse/bench?groups=<group>`), gRPC
    /// publisher.
    #[value(name = "herald-sse")]
    #[serde(rename = "herald-sse")]
    HeraldSse,
    /// nats-server: NATS over WebSocket, publisher over TCP.
    Nats,
    /// mosquitto: MQTT 3.1.1 over WebSocket, publisher over TCP.
    Mosquitto,
    /// Node `ws`: plain WebSocket broadcast, publisher over WebSocket.
    Ws,
    /// Herald as a cluster: two edges (subscribers alternate between them), a router (the gRPC
    /// publisher), redis-server and nats-server; CPU and writes are those of all five processes.
    Cluster,
}

/// How messages reach a server under test.
enum Publisher {
    Herald(mpsc::Sender<PublishStreamRequest>, u64),
    Tcp(TcpStream, ServerKind),
    Ws(Box<Conn<Plain>>),
}

impl Publisher {
    /// Sends `n` messages; `to` names the target of each (a group / topic, or a user).
    async fn send(
        &mut self,
        n: u64,
        size: usize,
        fill: PayloadKind,
        to: &mut Addressing,
    ) -> anyhow::Result<()> {
        match self {
            Publisher::Herald(tx, next) => {
                for _ in 0..n {
                    *next += 1;
                    let kind = match to.next() {
                        (topic, None) => target::Kind::Group(topic),
                        (_, Some(user)) => target::Kind::User(user),
                    };
                    let msg = PublishRequest {
                        project: "bench".into(),
                        target: Some(ApiTarget { kind: Some(kind) }),
                        payload: payload::payload_of(fill, size),
                        ..Default::default()
                    };
                    tx.send(PublishStreamRequest {
                        request_id: *next,
                        message: Some(msg),
                    })
                    .await
                    .context("publish stream closed")?;
                }
            }
            Publisher::Tcp(s, kind) => {
                let mut buf = Vec::with_capacity(n as usize * (size + 32));
                for _ in 0..n {
                    let p = payload::payload_of(fill, size);
                    let (topic, _) = to.next();
                    if *kind == ServerKind::Mosquitto {
                        buf.extend(mqtt::publish(&topic, &p));
                    } else {
                        buf.extend_from_slice(format!("PUB {topic} {}\r\n", p.len()).as_bytes());
                        buf.extend_from_slice(&p);
                        buf.extend_from_slice(b"\r\n");
                    }
                }
                s.write_all(&buf).await?;
            }
            Publisher::Ws(ws) => {
                if to.unicast {
                    bail!("the plain ws peer only broadcasts: no unicast");
                }
                let mut buf = Vec::with_capacity(n as usize * (size + 14));
                for _ in 0..n {
                    frame::push(&mut buf, frame::BINARY, &payload::payload_of(fill, size));
                }
                ws.write(&buf)
                    .await
                    .map_err(|e| anyhow::anyhow!("publish to the ws peer: {}", e.label()))?;
            }
        }
        Ok(())
    }
}

impl Running {
    /// The server's pid (the first edge's for a cluster).
    pub fn pid(&self) -> u32 {
        self.pids[0]
    }

    /// What its subscribers connect to (group / topic `fan`).
    pub fn client(&self) -> &ClientPlan {
        &self.client
    }

    /// Every process of it (edges, router, redis-server and nats-server for a cluster).
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Publishes `n` messages of `size` bytes filled as `fill` says, addressed by `to`.
    pub async fn publish(
        &mut self,
        n: u64,
        size: usize,
        fill: PayloadKind,
        to: &mut Addressing,
    ) -> anyhow::Result<()> {
        self.publisher.send(n, size, fill, to).await
    }

    /// Publishes one `size`-byte message to the group `fan` by the server's own publish path.
    pub async fn publish_one(&mut self, size: usize) -> anyhow::Result<()> {
        self.publish(1, size, PayloadKind::Pad, &mut Addressing::new(false, 1))
            .await
    }

    /// Closes the publisher and returns the publishes the server refused (Herald's
    /// acknowledgements with an error, collected for up to 5 s; 0 for the peers). The server
    /// stops with it.
    pub async fn close(mut self) -> u64 {
        let Some(acks) = self.ack_errors.take() else {
            return 0;
        };
        drop(self.publisher);
        tokio::time::timeout(std::time::Duration::from_secs(5), acks)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    }
}

/// Who each message goes to: the group, or subscribers one after the other.
pub struct Addressing {
    unicast: bool,
    subscribers: u64,
    cursor: u64,
}

impl Addressing {
    /// Every message to the group `fan`, or (`unicast`) to each of `subscribers` in turn.
    pub fn new(unicast: bool, subscribers: u64) -> Self {
        Self {
            unicast,
            subscribers: subscribers.max(1),
            cursor: 0,
        }
    }

    /// The topic (group, subject) and, for Herald unicast, the user of the next message.
    fn next(&mut self) -> (String, Option<String>) {
        if !self.unicast {
            return ("fan".into(), None);
        }
        let i = self.cursor % self.subscribers;
        self.cursor += 1;
        (format!("u{i}"), Some(format!("s{i}")))
    }
}

/// A server under test, started, with its publisher connected.
pub struct Running {
    pids: Vec<u32>,
    client: ClientPlan,
    publisher: Publisher,
    _keep: Box<dyn std::any::Any + Send>,
    ack_errors: Option<tokio::task::JoinHandle<u64>>,
}

/// Starts `kind` for fan-out to `topic`, with its publisher connected.
pub async fn start(
    herald_bin: Option<PathBuf>,
    herald_edge_toml: &str,
    tls: Option<&TlsSetup>,
    kind: ServerKind,
) -> anyhow::Result<Running> {
    let topic = "fan".to_string();
    Ok(match kind {
        ServerKind::Herald
        | ServerKind::HeraldMqtt
        | ServerKind::HeraldStomp
        | ServerKind::HeraldDeflate
        | ServerKind::HeraldSse
        | ServerKind::Cluster => {
            // The wss listener's table comes after the plain `[edge]` keys.
            let edge = match tls {
                Some(t) => format!("{herald_edge_toml}\n{}", t.edge_toml),
                None => herald_edge_toml.to_string(),
            };
            let (pids, ws, spread, grpc, keep): (_, _, _, _, Box<dyn std::any::Any + Send>) =
                if kind == ServerKind::Cluster {
                    let c = herald::start_cluster(herald_bin, &edge).await?;
                    let edges = c.edge_addrs()?;
                    (c.pids(), edges[0], edges, c.grpc()?, Box::new(c))
                } else {
                    let deflate = kind == ServerKind::HeraldDeflate;
                    let s = herald::start_herald(herald_bin.as_deref(), &edge, deflate).await?;
                    (vec![s.pid], s.ws, Vec::new(), s.grpc, Box::new(s))
                };
            let mut client = HeraldClient::connect(format!("http://{grpc}")).await?;
            let (tx, rx) = mpsc::channel(4096);
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            req.metadata_mut()
                .insert("authorization", format!("Bearer {API_KEY}").parse()?);
            let mut acks = client.publish_stream(req).await?.into_inner();
            let ack_errors = tokio::spawn(async move {
                let mut errors = 0;
                while let Ok(Some(batch)) = acks.message().await {
                    errors += batch.acks.iter().filter(|a| a.error_code != 0).count() as u64;
                }
                errors
            });
            Running {
                pids,
                client: ClientPlan {
                    tls: tls.map(|t| t.client.clone()),
                    spread,
                    protocol: match kind {
                        ServerKind::HeraldMqtt => Protocol::Mqtt,
                        ServerKind::HeraldStomp => Protocol::Stomp,
                        ServerKind::HeraldSse => Protocol::Sse,
                        _ => Protocol::Herald,
                    },
                    deflate: kind == ServerKind::HeraldDeflate,
                    ..ClientPlan::herald(ws, &topic, SECRET)
                },
                publisher: Publisher::Herald(tx, 0),
                _keep: keep,
                ack_errors: Some(ack_errors),
            }
        }
        ServerKind::Nats => {
            let p = peers::nats().await?;
            let mut tcp = TcpStream::connect(p.publish).await?;
            let mut info = String::new();
            BufReader::new(&mut tcp).read_line(&mut info).await?;
            tcp.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
                .await?;
            Running {
                pids: vec![p.pid],
                client: ClientPlan::peer(p.ws, Protocol::Nats, &topic),
                publisher: Publisher::Tcp(tcp, kind),
                _keep: Box::new(p),
                ack_errors: None,
            }
        }
        ServerKind::Mosquitto => {
            let p = peers::mosquitto().await?;
            let mut tcp = TcpStream::connect(p.publish).await?;
            tcp.write_all(&mqtt::connect("herald-bench-pub")).await?;
            let mut connack = [0u8; 4];
            tcp.read_exact(&mut connack).await?;
            Running {
                pids: vec![p.pid],
                client: ClientPlan::peer(p.ws, Protocol::Mqtt, &topic),
                publisher: Publisher::Tcp(tcp, kind),
                _keep: Box::new(p),
                ack_errors: None,
            }
        }
        ServerKind::Ws => {
            let p = peers::node_ws().await?;
            // The publisher is a client too (the peer relays to every other one), from a
            // source address no subscriber uses.
            let hello = Hello {
                project: "",
                token: "",
                topic: None,
            };
            let ws = Conn::connect(
                &Target::plain(p.publish),
                u64::MAX / 2,
                &hello,
                Plain,
                &mut |_| {},
            )
            .await
            .map_err(|e| anyhow::anyhow!("connect the ws publisher: {}", e.label()))?;
            Running {
                pids: vec![p.pid],
                client: ClientPlan::peer(p.ws, Protocol::Ws, &topic),
                publisher: Publisher::Ws(Box::new(ws)),
                _keep: Box::new(p),
                ack_errors: None,
            }
        }
    })
}
