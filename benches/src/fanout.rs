//! The `fanout` scenario: M subscribers of one group (topic, subject), messages at rate R for D
//! seconds; latency from the send time in each payload, achieved deliveries, server CPU and write
//! syscalls per delivery, anything not delivered. Herald and its peers run the same load.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::SinkExt as _;
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{PublishRequest, PublishStreamRequest, Target as ApiTarget, target};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{self, Protocol};
use crate::tls::{TlsOpts, TlsSetup};
use crate::workers::{ClientPlan, Plan, Workers};
use crate::{peers, proc_stats, report, servers};

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// Herald (the real binary), native protocol, gRPC publisher.
    Herald,
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

/// Options of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutOpts {
    /// A preset: F1 (1,000 × 50 msg/s), F2 (1,000 × 200 msg/s), F3 (5,000 × 320 msg/s).
    #[arg(long)]
    preset: Option<String>,
    /// Subscribers (overrides the preset).
    #[arg(long)]
    subscribers: Option<u64>,
    /// Messages per second (overrides the preset).
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// `unicast`: every message goes to one subscriber (Herald: a user target; peers: a topic
    /// per subscriber), round robin, instead of one group to all.
    #[arg(long)]
    unicast: bool,
    /// Servers to run, one after the other, in the same run.
    #[arg(long, value_delimiter = ',', default_value = "herald")]
    pub servers: Vec<ServerKind>,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// `wss` for Herald's subscribers (the peers stay on plain ws).
    #[command(flatten)]
    tls: TlsOpts,
    /// Directory for the JSON, Markdown and SVG results.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
}

/// The figures of one run against one server.
#[derive(Debug, Serialize)]
pub struct FanoutResult {
    /// Server.
    pub server: ServerKind,
    /// Subscribers on `wss`.
    pub tls: bool,
    /// Subscribers connected.
    pub subscribers: u64,
    /// Offered messages per second.
    pub rate: u64,
    /// Messages published.
    pub published: u64,
    /// Deliveries expected (published × subscribers).
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Expected but not received (lost, dropped or disconnected).
    pub missing: u64,
    /// Subscribers that failed to connect or were disconnected.
    pub client_errors: u64,
    /// Offered deliveries per second.
    pub offered_per_sec: f64,
    /// Achieved deliveries per second (over the publishing time plus drain).
    pub achieved_per_sec: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9, max.
    pub latency_ms: [f64; 5],
    /// Server CPU per delivery, microseconds.
    pub server_cpu_us_per_delivery: f64,
    /// Server write syscalls per delivery.
    pub server_writes_per_delivery: f64,
    /// Server CPU use over the run, percent of one core.
    pub server_cpu_percent: f64,
    /// Harness CPU use over the run, percent of one core.
    pub harness_cpu_percent: f64,
    /// Deliveries per second, second by second.
    pub timeline: Vec<u64>,
    /// The machine's load average (1, 5, 15 min) when the run started (a shared machine).
    pub load_avg: [f64; 3],
}

fn preset(o: &FanoutOpts) -> anyhow::Result<(u64, u64)> {
    let (s, r) = match o.preset.as_deref() {
        Some("F1") | Some("f1") => (1000, 50),
        Some("F2") | Some("f2") => (1000, 200),
        Some("F3") | Some("f3") => (5000, 320),
        Some(other) => bail!("unknown preset {other:?}: F1, F2 or F3"),
        None => (100, 10),
    };
    Ok((o.subscribers.unwrap_or(s), o.rate.unwrap_or(r)))
}

fn cpu_all(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| proc_stats::cpu_ticks(p)).sum()
}

fn writes_all(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|&p| proc_stats::write_syscalls(p).unwrap_or(0))
        .sum()
}

/// Appends the deliveries of each whole second passed to `timeline`.
fn tick_timeline(workers: &Workers, second: &mut (Instant, u64), timeline: &mut Vec<u64>) {
    while Instant::now() >= second.0 {
        let now = workers.counts().delivered;
        timeline.push(now.saturating_sub(second.1));
        *second = (second.0 + Duration::from_secs(1), now);
    }
}

/// Runs the scenario against every requested server and prints a table with ratios.
pub async fn run(o: FanoutOpts) -> anyhow::Result<Vec<FanoutResult>> {
    let (subs, rate) = preset(&o)?;
    let tls = o.tls.setup()?;
    let mut results = Vec::new();
    for server in &o.servers {
        eprintln!(
            "fanout: {server:?}, {subs} subscribers × {rate} msg/s × {} s",
            o.seconds
        );
        let r = run_one(&o, tls.as_ref(), *server, subs, rate).await?;
        eprintln!(
            "fanout: {server:?}: {:.0} deliveries/s, p99 {:.1} ms, missing {}",
            r.achieved_per_sec, r.latency_ms[2], r.missing
        );
        results.push(r);
    }
    let mode = match (o.unicast, tls.is_some()) {
        (false, false) => "fanout",
        (true, false) => "unicast",
        (false, true) => "fanout-wss",
        (true, true) => "unicast-wss",
    };
    let cluster = if o.servers == [ServerKind::Cluster] {
        "cluster-"
    } else {
        ""
    };
    let name = format!(
        "{cluster}{mode}-{}",
        o.preset.clone().unwrap_or_else(|| format!("{subs}x{rate}"))
    );
    report::write_fanout(&o.out, &name, &results)?;
    Ok(results)
}

enum Publisher {
    Herald(mpsc::Sender<PublishStreamRequest>, u64),
    Tcp(TcpStream, ServerKind),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

impl Publisher {
    /// Sends `n` messages; `to` names the target of each (a group / topic, or a user).
    async fn send(&mut self, n: u64, size: usize, to: &mut Addressing) -> anyhow::Result<()> {
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
                        payload: clients::payload(size),
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
                    let p = clients::payload(size);
                    let (topic, _) = to.next();
                    if *kind == ServerKind::Mosquitto {
                        buf.extend(clients::mqtt_publish(&topic, &p));
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
                for _ in 0..n {
                    ws.feed(Message::binary(clients::payload(size))).await?;
                }
                ws.flush().await?;
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

    /// Publishes one `size`-byte message to the group `fan` by the server's own publish path.
    pub async fn publish_one(&mut self, size: usize) -> anyhow::Result<()> {
        let mut to = Addressing {
            unicast: false,
            subscribers: 1,
            cursor: 0,
        };
        self.publisher.send(1, size, &mut to).await
    }
}

/// Who each message goes to: the group, or subscribers one after the other.
struct Addressing {
    unicast: bool,
    subscribers: u64,
    cursor: u64,
}

impl Addressing {
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
        ServerKind::Herald | ServerKind::Cluster => {
            // The wss listener's table comes after the plain `[edge]` keys.
            let edge = match tls {
                Some(t) => format!("{herald_edge_toml}\n{}", t.edge_toml),
                None => herald_edge_toml.to_string(),
            };
            let (pids, ws, spread, grpc, keep): (_, _, _, _, Box<dyn std::any::Any + Send>) =
                if kind == ServerKind::Cluster {
                    let c = servers::start_cluster(herald_bin, &edge).await?;
                    (
                        c.pids.clone(),
                        c.edges[0],
                        c.edges.clone(),
                        c.grpc,
                        Box::new(c),
                    )
                } else {
                    let s = servers::start_herald(herald_bin, &edge).await?;
                    let grpc = s.grpc.context("grpc address")?;
                    (vec![s.pid], s.ws, Vec::new(), grpc, Box::new(s))
                };
            let mut client = HeraldClient::connect(format!("http://{grpc}")).await?;
            let (tx, rx) = mpsc::channel(4096);
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", servers::API_KEY).parse()?,
            );
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
                    ..ClientPlan::herald(ws, &topic)
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
            tcp.write_all(&clients::mqtt_connect("herald-bench-pub"))
                .await?;
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
            let tcp = TcpStream::connect(p.publish).await?;
            let (ws, _) =
                tokio_tungstenite::client_async(format!("ws://{}/", p.publish), tcp).await?;
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

async fn run_one(
    o: &FanoutOpts,
    tls: Option<&TlsSetup>,
    kind: ServerKind,
    subs: u64,
    rate: u64,
) -> anyhow::Result<FanoutResult> {
    let load_avg = proc_stats::load_avg();
    let mut srv = start(
        o.herald_bin.clone(),
        "max_queued_bytes = 4194304",
        tls,
        kind,
    )
    .await?;
    let mut client = srv.client.clone();
    client.topic_per_client = o.unicast;
    client.read_buffer = 16 * 1024;
    let mut plan = Plan::new(subs, client);
    plan.inflight = 2_000;
    let workers = Workers::spawn(&format!("fanout {kind:?}"), &plan).await?;
    workers
        .wait("subscribed", Duration::from_secs(60 + subs / 500), |c| {
            c.settled() >= subs
        })
        .await?;
    // Let the last subscriptions settle on every server before timing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = workers.counts();

    let cpu0 = cpu_all(&srv.pids)?;
    let io0 = writes_all(&srv.pids);
    let me0 = proc_stats::cpu_ticks(std::process::id())? + workers.cpu_ticks();
    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let mut second = (t0 + Duration::from_secs(1), workers.counts().delivered);
    let total = rate * o.seconds;
    let mut to = Addressing {
        unicast: o.unicast,
        subscribers: subs,
        cursor: 0,
    };
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        tick_timeline(&workers, &mut second, &mut timeline);
        let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due > sent {
            srv.publisher.send(due - sent, o.payload, &mut to).await?;
            sent = due;
        }
    }
    let live = ready.connected;
    let fan = if o.unicast { 1 } else { subs };
    let expected = total * fan;
    // Drain: until everything arrived, or nothing moved for 2 s (at most 60 s).
    let mut last = workers.counts().delivered;
    let mut still = Instant::now();
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let reachable = if o.unicast { total } else { total * live };
    while workers.counts().delivered < reachable && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tick_timeline(&workers, &mut second, &mut timeline);
        let now = workers.counts().delivered;
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_all(&srv.pids)?.saturating_sub(cpu0);
    let io = writes_all(&srv.pids).saturating_sub(io0);
    let me = (proc_stats::cpu_ticks(std::process::id())? + workers.cpu_ticks()).saturating_sub(me0);
    let totals = workers.finish().await?;
    let hist = totals.latency_us;
    if let Some(a) = srv.ack_errors.take() {
        drop(srv.publisher);
        let errs = tokio::time::timeout(Duration::from_secs(5), a)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        if errs > 0 {
            eprintln!("fanout: {errs} publishes refused");
        }
    }
    let got = totals.counts.delivered;
    let ticks_per_sec = proc_stats::clock_ticks_per_sec() as f64;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(FanoutResult {
        server: kind,
        tls: matches!(kind, ServerKind::Herald | ServerKind::Cluster) && tls.is_some(),
        subscribers: subs,
        rate,
        published: total,
        expected,
        delivered: got,
        missing: expected.saturating_sub(got),
        client_errors: totals.counts.failed + totals.counts.dropped,
        offered_per_sec: (rate * fan) as f64,
        achieved_per_sec: got as f64 / elapsed.max(o.seconds as f64),
        latency_ms: [
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            hist.max() as f64 / 1000.0,
        ],
        server_cpu_us_per_delivery: cpu as f64 / ticks_per_sec * 1e6 / got.max(1) as f64,
        server_writes_per_delivery: io as f64 / got.max(1) as f64,
        server_cpu_percent: cpu as f64 / ticks_per_sec / elapsed * 100.0,
        harness_cpu_percent: me as f64 / ticks_per_sec / elapsed * 100.0,
        timeline,
        load_avg,
    })
}
