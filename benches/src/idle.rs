//! The `idle` scenario: N connections, each having subscribed once, received one message and
//! answered one ping; reports the server's RSS growth per connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{Broadcast, PublishRequest, Target, target};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::proc_stats;
use crate::servers::{self, API_KEY, SECRET};

/// Options of `idle`.
#[derive(Debug, clap::Args)]
pub struct IdleOpts {
    /// Number of connections.
    #[arg(long, default_value_t = 15_000)]
    connections: u64,
    /// Connections opened per second.
    #[arg(long, default_value_t = 3_000)]
    rate: u64,
    /// `herald` or `baseline` (bare tokio-tungstenite, 128-byte read buffer).
    #[arg(long, default_value = "herald")]
    server: String,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// Write the JSON result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    subscribed: AtomicU64,
    received: AtomicU64,
    pinged: AtomicU64,
    failed: AtomicU64,
}

/// The idle scenario.
pub async fn run(o: IdleOpts) -> anyhow::Result<()> {
    let limit = proc_stats::open_files_limit();
    if o.connections + 100 > limit {
        bail!(
            "{} connections need more open files than this process may have ({limit}); \
             lower --connections",
            o.connections
        );
    }
    let ping_secs = 3u64;
    let server = match o.server.as_str() {
        "herald" => servers::start_herald(
            o.herald_bin.clone(),
            &format!(
                "ping_interval_secs = {ping_secs}\npong_timeout_secs = 30\nmax_queued_bytes = 65536"
            ),
        )
        .await?,
        "baseline" => servers::start_baseline(128, ping_secs * 1000).await?,
        other => bail!("unknown server {other:?}: herald or baseline"),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = proc_stats::rss_kib(server.pid)?;
    let counters = Arc::new(Counters::default());
    let now = jsonwebtoken::get_current_timestamp();
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.connections as usize);
    let gap = Duration::from_secs_f64(1.0 / o.rate.max(1) as f64);
    let mut next = tokio::time::Instant::now();
    for i in 0..o.connections {
        // Tokens are signed before each connect, outside anything timed per message.
        let claims = serde_json::json!({"sub": format!("u{i}"), "aud": "bench", "exp": now + 3600, "channels": ["*"]});
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?;
        // Spread client ends over 127.0.0.0/8 so source ports never run out.
        let src = Ipv4Addr::new(127, 0, 1 + (i / 20_000) as u8, 1 + ((i / 250) % 250) as u8);
        let url = format!("ws://{}/ws/bench?token={token}", server.ws);
        tasks.push(tokio::spawn(client(server.ws, src, url, counters.clone())));
        next += gap;
        tokio::time::sleep_until(next).await;
        if i % 5000 == 4999 {
            eprintln!(
                "idle: {} connected, {} subscribed, {} failed",
                counters.connected.load(Ordering::Relaxed),
                counters.subscribed.load(Ordering::Relaxed),
                counters.failed.load(Ordering::Relaxed)
            );
        }
    }
    let n = o.connections;
    wait_for(&counters.subscribed, &counters, n, "subscribed").await?;
    let connect_secs = started.elapsed().as_secs_f64();
    if let Some(grpc) = server.grpc {
        let mut client = HeraldClient::connect(format!("http://{grpc}")).await?;
        let mut req = tonic::Request::new(PublishRequest {
            project: "bench".into(),
            target: Some(Target {
                kind: Some(target::Kind::Broadcast(Broadcast {})),
            }),
            payload: br#"{"hello":"idle"}"#.to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {API_KEY}").parse()?);
        client.publish(req).await.context("publish")?;
    }
    wait_for(&counters.received, &counters, n, "received").await?;
    wait_for(&counters.pinged, &counters, n, "pinged").await?;
    // Let the pongs arrive and be read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = proc_stats::rss_kib(server.pid)?;
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    let failed = counters.failed.load(Ordering::Relaxed);
    let result = serde_json::json!({
        "scenario": "idle",
        "server": o.server,
        "connections": n,
        "failed": failed,
        "connect_seconds": connect_secs,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_connection": (per_conn * 100.0).round() / 100.0,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    println!(
        "| idle | {} | {n} | {:.2} KiB/conn | rss {rss_before} → {rss_after} KiB | failed {failed} |",
        o.server, per_conn
    );
    if let Some(path) = o.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    for t in tasks {
        t.abort();
    }
    drop(server);
    Ok(())
}

async fn wait_for(c: &AtomicU64, all: &Counters, n: u64, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.load(Ordering::Relaxed) + all.failed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} {what} within 60 s",
                c.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn client(server: SocketAddr, src: Ipv4Addr, url: String, c: Arc<Counters>) {
    if run_client(server, src, url, &c).await.is_err() {
        c.failed.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run_client(
    server: SocketAddr,
    src: Ipv4Addr,
    url: String,
    c: &Counters,
) -> anyhow::Result<()> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    let tcp = sock.connect(server).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    c.connected.fetch_add(1, Ordering::Relaxed);
    let mut subscribed = false;
    let mut received = false;
    let mut pinged = false;
    while let Some(m) = ws.next().await {
        match m? {
            Message::Text(t) => {
                if t.contains(r#""welcome""#) && !subscribed {
                    ws.send(Message::text(
                        r#"{"type":"subscribe","id":1,"group":"idle"}"#,
                    ))
                    .await?;
                } else if t.contains(r#""ack""#) && !subscribed {
                    subscribed = true;
                    c.subscribed.fetch_add(1, Ordering::Relaxed);
                } else if t.contains(r#""msg""#) && !received {
                    received = true;
                    c.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Message::Ping(_) => {
                // tungstenite queues the pong; flush it now.
                ws.flush().await?;
                if !pinged {
                    pinged = true;
                    c.pinged.fetch_add(1, Ordering::Relaxed);
                }
            }
            Message::Close(_) => bail!("closed by server"),
            _ => {}
        }
    }
    bail!("stream ended")
}
