//! The `idle` scenario: N connections, each having subscribed once, received one message and
//! answered one ping (Herald and the baseline ping native clients; MQTT clients and the peers are
//! not pinged within seconds); reports the server's RSS growth per connection. Several servers
//! (`--server herald,herald-mqtt`) run one after the other in one run, compared with the first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::payload::PayloadKind;
use crate::proc_stats;
use crate::servers::{self, Addressing, ServerKind, baseline};
use crate::tls::TlsOpts;
use crate::workers::{ClientPlan, Plan, Workers};

/// Options of `idle`.
#[derive(Debug, clap::Args)]
pub struct IdleOpts {
    /// Number of connections.
    #[arg(long, default_value_t = 15_000)]
    connections: u64,
    /// Connections opened per second.
    #[arg(long, default_value_t = 3_000)]
    rate: u64,
    /// Client i subscribes to a group of its own (`u<i>`) instead of one group shared by all,
    /// and receives its message as a user message: every connection then holds a group of its
    /// own in the server (Herald, nats-server, mosquitto).
    #[arg(long)]
    group_per_connection: bool,
    /// Seconds to wait after the last pong before the server's RSS is read (memory freed by
    /// the connects and the deliveries goes back to the system over jemalloc's decay time, 10 s
    /// by default).
    #[arg(long, default_value_t = 1)]
    settle_secs: u64,
    /// `herald`, `herald-mqtt` / `herald-stomp` / `herald-sse` (Herald with MQTT 3.1.1 / STOMP
    /// 1.2 / Server-Sent Events clients),
    /// `baseline` (bare
    /// tokio-tungstenite, 128-byte read buffer), or a peer: `nats`, `mosquitto`, `ws` (Node ws);
    /// several, comma-separated, run one after the other.
    #[arg(long, value_delimiter = ',', default_value = "herald")]
    server: Vec<String>,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// `wss` (Herald only).
    #[command(flatten)]
    tls: TlsOpts,
    /// Write the JSON result here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The idle scenario: each server in turn, then each one's difference to the first.
pub async fn run(o: IdleOpts) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for server in &o.server {
        results.push(run_one(&o, server).await?);
    }
    if let [first, rest @ ..] = &results[..] {
        let kib = |r: &serde_json::Value| r["kib_per_connection"].as_f64().unwrap_or(0.0);
        for r in rest {
            println!(
                "{} vs {}: {:+.2} KiB per connection ({:.2} vs {:.2}), {:.2}×",
                r["server"].as_str().unwrap_or("?"),
                first["server"].as_str().unwrap_or("?"),
                kib(r) - kib(first),
                kib(r),
                kib(first),
                kib(r) / kib(first).max(1e-9)
            );
        }
    }
    if let Some(path) = &o.json {
        let v = match &results[..] {
            [one] => one.clone(),
            many => serde_json::Value::Array(many.to_vec()),
        };
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(())
}

/// One server's run; its JSON result.
async fn run_one(o: &IdleOpts, server: &str) -> anyhow::Result<serde_json::Value> {
    let ping_secs = 3u64;
    let tls = o.tls.setup()?;
    if tls.is_some() && !server.starts_with("herald") {
        bail!("--tls is for --server herald, herald-mqtt or herald-stomp");
    }
    let n = o.connections;
    // The server, and what publishes its one message (the baseline sends it by itself).
    let (pid, client, mut publisher, _baseline) = match server {
        "baseline" => {
            let s = baseline::start_baseline(128, ping_secs * 1000).await?;
            let c = ClientPlan::herald(s.ws, "idle", servers::SECRET);
            (s.pid, c, None, Some(s))
        }
        other => {
            let kind = match other {
                "herald" => ServerKind::Herald,
                "herald-mqtt" => ServerKind::HeraldMqtt,
                "herald-stomp" => ServerKind::HeraldStomp,
                "herald-deflate" => ServerKind::HeraldDeflate,
                "herald-sse" => ServerKind::HeraldSse,
                "nats" => ServerKind::Nats,
                "mosquitto" => ServerKind::Mosquitto,
                "ws" => ServerKind::Ws,
                _ => bail!(
                    "unknown server {other:?}: herald, herald-mqtt, herald-stomp, herald-deflate, herald-sse, baseline, nats, mosquitto or ws"
                ),
            };
            let edge = format!(
                "ping_interval_secs = {ping_secs}\npong_timeout_secs = 30\nmax_queued_bytes = 65536"
            );
            let r = servers::start(o.herald_bin.clone(), &edge, tls.as_ref(), kind).await?;
            (r.pid(), r.client().clone(), Some(r), None)
        }
    };
    // SSE clients count the heartbeat comments instead (they answer nothing).
    let pings = matches!(
        server,
        "herald" | "herald-deflate" | "baseline" | "herald-sse"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = proc_stats::rss_kib(pid)?;
    let load_avg = proc_stats::load_avg();
    let mut client = client;
    if o.group_per_connection {
        if server == "ws" {
            bail!("--group-per-connection: the Node ws peer only broadcasts");
        }
        client.topic_per_client = true;
    }
    let mut plan = Plan::new(n, client);
    plan.rate = o.rate;
    let started = Instant::now();
    let workers = Workers::spawn(&format!("idle {server}"), &plan).await?;
    let ramp = Duration::from_secs(60 + n / o.rate.max(1));
    let c = workers
        .wait("subscribed", ramp, |c| c.settled() >= n)
        .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    if c.failed > 0 {
        eprintln!("idle: {} of {n} connections failed", c.failed);
    }
    // The Node ws peer relays what one client sends to the others: its publisher is a client too.
    if let Some(p) = publisher.as_mut() {
        if o.group_per_connection {
            // One message to each client (its user, or its own topic on the peers).
            let mut to = Addressing::new(true, n);
            p.publish(n, 40, PayloadKind::Pad, &mut to)
                .await
                .context("publish")?;
        } else {
            p.publish_one(40).await.context("publish")?;
        }
    }
    let live = c.connected;
    workers
        .wait("received", Duration::from_secs(60), |c| {
            c.received + c.dropped >= live
        })
        .await?;
    if pings {
        workers
            .wait("pinged", Duration::from_secs(60), |c| {
                c.pinged + c.dropped >= live
            })
            .await?;
    }
    // Let the pongs arrive and be read.
    tokio::time::sleep(Duration::from_secs(o.settle_secs.max(1))).await;
    let rss_after = proc_stats::rss_kib(pid)?;
    let totals = workers.finish().await?;
    let counts = totals.counts;
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / live.max(1) as f64;
    let hs = |q: f64| totals.handshake_us.value_at_quantile(q) as f64 / 1000.0;
    let result = serde_json::json!({
        "scenario": "idle",
        "server": server,
        "tls": tls.is_some(),
        "connections": n,
        "group_per_connection": o.group_per_connection,
        "settle_secs": o.settle_secs.max(1),
        "connected": counts.connected,
        "failed": counts.failed,
        "dropped": counts.dropped,
        "received": counts.received,
        "pinged": if pings { serde_json::json!(counts.pinged) } else { serde_json::json!(null) },
        "workers": totals.workers,
        "connect_seconds": connect_secs,
        "connects_per_sec": counts.connected as f64 / counts.connect_secs().max(1e-6),
        "connect_ms": {"p50": hs(0.5), "p99": hs(0.99), "max": totals.handshake_us.max() as f64 / 1000.0},
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_connection": (per_conn * 100.0).round() / 100.0,
        "load_avg": load_avg,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    println!(
        "| idle | {server} | {n} | {:.2} KiB/conn | rss {rss_before} → {rss_after} KiB | failed {} | dropped {} | load {:.1} |",
        per_conn, counts.failed, counts.dropped, load_avg[0]
    );
    Ok(result)
}
