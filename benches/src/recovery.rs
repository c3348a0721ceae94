//! The `recovery` scenario: what history costs end to end, through a local cluster (a router, two
//! edges, redis-server, nats-server, started as `cluster` does), in three parts:
//!
//! - `publish`: gRPC publishes through the router, a recoverable group and a plain one
//!   interleaved in the same run (one subscriber each, on edge `e0`): p50/p99 publish latency of
//!   each, and the router's Redis round trips per publish (history store and registry, from its
//!   `/metrics`).
//! - `checks`: the edges' periodic position checks (`edge.history_check_secs`, default 5) at
//!   `--streams` recoverable streams on edge `e0` (connections holding 250 groups each, one
//!   message published to each group): round trips, edge CPU and redis-server CPU per check
//!   cycle, against the same idle window before the streams existed.
//! - `resume`: `--clients` clients of one recoverable group (half on each edge) disconnect,
//!   `--behind` messages are published, and all reconnect at once with `auth` + `resume`: time
//!   until each has its `resumed` frame (after the missed messages), the whole wave's time, and
//!   the edges' history round trips and CPU for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{PublishRequest, Resolution, Target, target};
use herald_sandbox::{Cluster, Node};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

use crate::proc_stats;
use crate::servers::herald::projects_toml;
use crate::servers::{API_KEY, SECRET};

/// Options of `recovery`.
#[derive(Debug, clap::Args)]
pub struct RecoveryOpts {
    /// Parts to run: `publish`, `checks`, `resume` (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "publish,checks,resume")]
    parts: Vec<String>,
    /// Publishes per target and per concurrency in `publish`.
    #[arg(long, default_value_t = 5_000)]
    publishes: u64,
    /// Publishers in flight at once in `publish`, one run per value (each interleaves both
    /// targets).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<u64>,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Recoverable streams on edge `e0` in `checks`.
    #[arg(long, default_value_t = 10_000)]
    streams: u64,
    /// Seconds each `checks` window lasts.
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// `edge.history_check_secs` of the edges.
    #[arg(long, default_value_t = 5)]
    check_secs: u64,
    /// Clients resuming at once in `resume`.
    #[arg(long, default_value_t = 1_000)]
    clients: u64,
    /// Messages each client is behind in `resume`.
    #[arg(long, default_value_t = 100)]
    behind: u64,
}

/// Groups per connection in `checks` (below the edge's default 256).
const GROUPS_PER_CONN: u64 = 250;

fn config(check_secs: u64) -> String {
    format!(
        "[edge]\nhistory_check_secs = {check_secs}\n[log]\nlevel = \"warn\"\n{}\
         [projects.history]\ngroups = [\"rec*\"]\nsize = 1000\nttl_secs = 3600\n",
        projects_toml("bench")
    )
}

fn token(sub: &str, groups: &[String]) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3_600;
    let claims = json!({"sub": sub, "aud": "bench", "exp": exp, "groups": groups});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects to `edge`, sends `auth` (with `extra` fields), waits for `welcome`.
async fn connect(edge: SocketAddr, token: &str, extra: Value) -> anyhow::Result<Ws> {
    let tcp = tokio::net::TcpStream::connect(edge).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{edge}/ws/bench"), tcp).await?;
    let mut auth = json!({"type": "auth", "token": token});
    if let (Some(a), Some(e)) = (auth.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    ws.send(Message::text(auth.to_string())).await?;
    let welcome = next_json(&mut ws).await?;
    if welcome["type"] != "welcome" {
        bail!("first frame: {welcome}");
    }
    Ok(ws)
}

/// The next text frame as JSON (within 60 s).
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match ws.next().await.context("closed")?? {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(c) => bail!("closed: {c:?}"),
                _ => continue,
            }
        }
    })
    .await
    .context("no frame within 60 s")?
}

/// Reads and drops every frame until the socket ends.
fn drain(mut ws: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })
}

async fn grpc(c: &Cluster) -> anyhow::Result<HeraldClient<Channel>> {
    Ok(HeraldClient::connect(format!("http://{}", c.grpc()?)).await?)
}

fn group_request(group: &str, payload: &[u8]) -> tonic::Request<PublishRequest> {
    let mut r = tonic::Request::new(PublishRequest {
        project: "bench".into(),
        target: Some(Target {
            kind: Some(target::Kind::Group(group.into())),
        }),
        payload: payload.to_vec(),
        ..Default::default()
    });
    if let Ok(v) = format!("Bearer {API_KEY}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Publishes to `group`; fails unless delivered. The reply's (offset, epoch).
async fn publish(
    client: &mut HeraldClient<Channel>,
    group: &str,
    payload: &[u8],
) -> anyhow::Result<(u64, u32)> {
    publish_to(client, group, payload, true).await
}

/// Publishes to `group`; fails unless delivered when `delivered`. The reply's (offset, epoch).
async fn publish_to(
    client: &mut HeraldClient<Channel>,
    group: &str,
    payload: &[u8],
    delivered: bool,
) -> anyhow::Result<(u64, u32)> {
    let r = client
        .publish(group_request(group, payload))
        .await?
        .into_inner();
    if delivered && r.resolution() != Resolution::Delivered {
        bail!("publish to {group}: {r:?}");
    }
    Ok((r.offset, r.epoch))
}

/// One series of a node's `/metrics` (0 when absent).
async fn metric(node: &Node, series: &str) -> anyhow::Result<f64> {
    let admin = node.ready.admin.context("no admin address")?;
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(Ok(0.0), |v| v.trim().parse())?)
}

fn ticks(pid: Option<u32>) -> anyhow::Result<u64> {
    proc_stats::cpu_ticks(pid.context("process not running")?)
}

fn ms_of_ticks(t: u64) -> f64 {
    t as f64 * 1e3 / proc_stats::clock_ticks_per_sec() as f64
}

/// Runs the scenario; prints one JSON object and Markdown tables.
pub async fn run(o: RecoveryOpts) -> anyhow::Result<()> {
    let bin = herald_sandbox::herald_bin(None)?;
    let c = Cluster::builder(bin, config(o.check_secs))
        .edges(2)
        .cluster_settings("edge_ttl_secs = 15\n")
        .start()
        .await?;
    let load_avg = proc_stats::load_avg();
    let mut out = json!({"scenario": "recovery", "load_avg_start": load_avg, "payload": o.payload});
    for part in &o.parts {
        match part.as_str() {
            "publish" => out["publish"] = publish_part(&c, &o).await?,
            "checks" => out["checks"] = checks_part(&c, &o).await?,
            "resume" => out["resume"] = resume_part(&c, &o).await?,
            other => bail!("unknown part {other:?} (publish, checks, resume)"),
        }
    }
    out["load_avg_end"] = json!(proc_stats::load_avg());
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn publish_part(c: &Cluster, o: &RecoveryOpts) -> anyhow::Result<Value> {
    let edges = c.edge_addrs()?;
    let (rec, plain) = ("rec-pub", "plain-pub");
    let readers = [
        drain(connect(edges[0], &token("pub-r", &[rec.into()])?, json!({})).await?),
        drain(connect(edges[0], &token("pub-p", &[plain.into()])?, json!({})).await?),
    ];
    let payload = vec![b'x'; o.payload];
    let mut client = grpc(c).await?;
    // Warm: connections, the script cached, the stream and the registry entries read once.
    for _ in 0..200 {
        publish(&mut client, rec, &payload).await?;
        publish(&mut client, plain, &payload).await?;
    }
    let mut runs = Vec::new();
    println!(
        "\n| publish through the router | concurrency | publishes | p50 µs | p99 µs | max µs | history round trips/publish | registry round trips/publish |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &conc in &o.concurrency {
        let conc = conc.max(1);
        let per_task = o.publishes / conc;
        let h0 = metric(&c.router, "herald_history_round_trips_total").await?;
        let r0 = metric(&c.router, "herald_registry_round_trips_total").await?;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conc {
            let mut client = grpc(c).await?;
            let payload = payload.clone();
            tasks.spawn(async move {
                let mut hr = Histogram::<u64>::new(3)?;
                let mut hp = Histogram::<u64>::new(3)?;
                for _ in 0..per_task {
                    let t = Instant::now();
                    publish(&mut client, rec, &payload).await?;
                    hr.record(t.elapsed().as_micros() as u64)?;
                    let t = Instant::now();
                    publish(&mut client, plain, &payload).await?;
                    hp.record(t.elapsed().as_micros() as u64)?;
                }
                anyhow::Ok((hr, hp))
            });
        }
        let mut hr = Histogram::<u64>::new(3)?;
        let mut hp = Histogram::<u64>::new(3)?;
        while let Some(r) = tasks.join_next().await {
            let (a, b) = r??;
            hr.add(a)?;
            hp.add(b)?;
        }
        let n = per_task * conc;
        let h = (metric(&c.router, "herald_history_round_trips_total").await? - h0) / n as f64;
        let r =
            (metric(&c.router, "herald_registry_round_trips_total").await? - r0) / (2 * n) as f64;
        for (what, hist, trips) in [("recoverable", &hr, h), ("plain", &hp, 0.0)] {
            println!(
                "| {what} | {conc} | {n} | {} | {} | {} | {trips:.2} | {r:.2} (both kinds) |",
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99),
                hist.max()
            );
        }
        let ratio = hr.value_at_quantile(0.99) as f64 / hp.value_at_quantile(0.99).max(1) as f64;
        println!("| p99 recoverable ÷ plain | {conc} | | | {ratio:.2} | | | |");
        runs.push(json!({
            "concurrency": conc, "publishes_per_target": n,
            "recoverable": {"p50_us": hr.value_at_quantile(0.5), "p99_us": hr.value_at_quantile(0.99), "max_us": hr.max()},
            "plain": {"p50_us": hp.value_at_quantile(0.5), "p99_us": hp.value_at_quantile(0.99), "max_us": hp.max()},
            "p99_ratio": ratio,
            "history_round_trips_per_recoverable_publish": h,
            "registry_round_trips_per_publish": r,
        }));
    }
    for r in readers {
        r.abort();
    }
    Ok(json!(runs))
}

/// CPU (edge e0, edge e1, Redis) in ticks and e0's history round trips over one window.
async fn window(c: &Cluster, secs: u64) -> anyhow::Result<(u64, u64, u64, f64)> {
    let redis = c.backends.redis[0].pid();
    let (e0, e1) = (c.edges[0].pid(), c.edges[1].pid());
    let h0 = metric(&c.edges[0], "herald_history_round_trips_total").await?;
    let t0 = (
        proc_stats::cpu_ticks(e0)?,
        proc_stats::cpu_ticks(e1)?,
        ticks(redis)?,
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let h = metric(&c.edges[0], "herald_history_round_trips_total").await? - h0;
    Ok((
        proc_stats::cpu_ticks(e0)? - t0.0,
        proc_stats::cpu_ticks(e1)? - t0.1,
        ticks(redis)? - t0.2,
        h,
    ))
}

async fn checks_part(c: &Cluster, o: &RecoveryOpts) -> anyhow::Result<Value> {
    let edges = c.edge_addrs()?;
    let conns = o.streams.div_ceil(GROUPS_PER_CONN);
    let mut readers = Vec::new();
    for i in 0..conns {
        let groups: Vec<String> = (i * GROUPS_PER_CONN..((i + 1) * GROUPS_PER_CONN).min(o.streams))
            .map(|g| format!("rec-c{g}"))
            .collect();
        readers.push(drain(
            connect(edges[0], &token(&format!("chk{i}"), &groups)?, json!({})).await?,
        ));
    }
    eprintln!(
        "checks: {conns} connections on e0 hold {} groups; idle window",
        o.streams
    );
    let before = window(c, o.window_secs).await?;
    // One message to every group: e0 then keeps a cursor per stream and checks them all.
    let payload = vec![b'x'; o.payload];
    let mut tasks = tokio::task::JoinSet::new();
    let per = o.streams.div_ceil(32);
    for t in 0..32 {
        let mut client = grpc(c).await?;
        let payload = payload.clone();
        let end = ((t + 1) * per).min(o.streams);
        tasks.spawn(async move {
            for g in t * per..end {
                publish(&mut client, &format!("rec-c{g}"), &payload).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    // Let the cursors appear and one check pass, then measure.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&c.edges[0], "herald_edge_streams").await? < o.streams as f64 {
        if Instant::now() > deadline {
            bail!(
                "e0 checks {} streams, not {}",
                metric(&c.edges[0], "herald_edge_streams").await?,
                o.streams
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("checks: e0 checks {} streams; measured window", o.streams);
    let after = window(c, o.window_secs).await?;
    let cycles = o.window_secs as f64 / o.check_secs as f64;
    let per_cycle = |a: u64, b: u64| ms_of_ticks(a.saturating_sub(b)) / cycles;
    let e0_ms = per_cycle(after.0, before.0);
    let e1_ms = per_cycle(after.1, before.1);
    let redis_ms = per_cycle(after.2, before.2);
    // Absolute: the window without had the publish part's one stream, if it ran.
    let trips = after.3 / cycles;
    let trips_before = before.3 / cycles;
    println!(
        "\n| position checks, {} streams on e0, every {} s | per cycle |",
        o.streams, o.check_secs
    );
    println!("|---|---|");
    println!("| history round trips (e0) | {trips:.2} (window without: {trips_before:.2}) |");
    println!("| e0 CPU ms (window with streams − window without) | {e0_ms:.1} |");
    println!("| e1 CPU ms (no streams: the same-run peer) | {e1_ms:.1} |");
    println!("| redis-server CPU ms | {redis_ms:.1} |");
    println!(
        "| windows (ticks e0/e1/redis, trips): without {before:?}, with {after:?}, {} s each | |",
        o.window_secs
    );
    for r in readers {
        r.abort();
    }
    Ok(json!({
        "streams": o.streams, "check_secs": o.check_secs, "window_secs": o.window_secs,
        "round_trips_per_cycle": trips, "round_trips_per_cycle_without": trips_before,
        "edge_cpu_ms_per_cycle": e0_ms,
        "peer_edge_cpu_ms_per_cycle": e1_ms, "redis_cpu_ms_per_cycle": redis_ms,
        "ticks_without": [before.0, before.1, before.2], "ticks_with": [after.0, after.1, after.2],
    }))
}

async fn resume_part(c: &Cluster, o: &RecoveryOpts) -> anyhow::Result<Value> {
    let edges = c.edge_addrs()?;
    let group = "rec-resume";
    let payload = vec![b'x'; o.payload];
    let mut client = grpc(c).await?;
    // Every client connects, and the stream gets a position to resume from.
    let mut socks = Vec::new();
    for i in 0..o.clients {
        let edge = edges[(i % 2) as usize];
        socks.push(connect(edge, &token(&format!("r{i}"), &[group.into()])?, json!({})).await?);
    }
    let (from, epoch) = publish(&mut client, group, &payload).await?;
    // Every client has it, then all go away.
    for ws in &mut socks {
        let m = next_json(ws).await?;
        if m["offset"].as_u64() != Some(from) {
            bail!("expected offset {from}: {m}");
        }
    }
    for mut ws in socks {
        let _ = ws.close(None).await;
    }
    // Stored while nobody is connected (answered NO_RECIPIENTS).
    for _ in 0..o.behind {
        publish_to(&mut client, group, &payload, false).await?;
    }
    let trips0 = metric(&c.edges[0], "herald_history_round_trips_total").await?
        + metric(&c.edges[1], "herald_history_round_trips_total").await?;
    let (e0, e1, redis) = (
        c.edges[0].pid(),
        c.edges[1].pid(),
        c.backends.redis[0].pid(),
    );
    let cpu0 = (
        proc_stats::cpu_ticks(e0)?,
        proc_stats::cpu_ticks(e1)?,
        ticks(redis)?,
    );
    let tokens: Vec<String> = (0..o.clients)
        .map(|i| token(&format!("r{i}"), &[group.into()]))
        .collect::<anyhow::Result<_>>()?;
    let tokens = Arc::new(tokens);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.clients {
        let edge = edges[(i % 2) as usize];
        let tokens = tokens.clone();
        let behind = o.behind;
        tasks.spawn(async move {
            let t = Instant::now();
            let resume = json!({"resume": [{"group": group, "offset": from, "epoch": epoch}]});
            let mut ws = connect(edge, &tokens[i as usize], resume).await?;
            let mut got = 0;
            loop {
                let f = next_json(&mut ws).await?;
                match f["type"].as_str() {
                    Some("msg") => got += 1,
                    Some("resumed") => {
                        if got != behind || f["recovered"] != true {
                            bail!("resumed after {got} messages: {f}");
                        }
                        break;
                    }
                    _ => bail!("unexpected {f}"),
                }
            }
            let took = t.elapsed();
            let _ = ws.close(None).await;
            anyhow::Ok(took)
        });
    }
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(r) = tasks.join_next().await {
        hist.record(r??.as_micros() as u64)?;
    }
    let wall = t0.elapsed();
    let trips = metric(&c.edges[0], "herald_history_round_trips_total").await?
        + metric(&c.edges[1], "herald_history_round_trips_total").await?
        - trips0;
    let cpu = (
        ms_of_ticks(proc_stats::cpu_ticks(e0)? - cpu0.0),
        ms_of_ticks(proc_stats::cpu_ticks(e1)? - cpu0.1),
        ms_of_ticks(ticks(redis)? - cpu0.2),
    );
    println!(
        "\n| resume: {} clients, {} messages behind, half on each edge | result |",
        o.clients, o.behind
    );
    println!("|---|---|");
    println!("| all caught up (first connect → last `resumed`) | {wall:.2?} |");
    println!(
        "| per client, connect → `resumed`: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.max() as f64 / 1e3
    );
    println!(
        "| history round trips (both edges) | {trips:.0} ({:.2} per client) |",
        trips / o.clients as f64
    );
    println!(
        "| CPU ms: e0 / e1 / redis-server | {:.0} / {:.0} / {:.0} |",
        cpu.0, cpu.1, cpu.2
    );
    Ok(json!({
        "clients": o.clients, "behind": o.behind, "wall_ms": wall.as_secs_f64() * 1e3,
        "p50_ms": hist.value_at_quantile(0.5) as f64 / 1e3,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1e3,
        "max_ms": hist.max() as f64 / 1e3,
        "history_round_trips": trips, "cpu_ms": [cpu.0, cpu.1, cpu.2],
    }))
}
