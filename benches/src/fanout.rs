//! The `fanout` scenario: M subscribers of one group (topic, subject), messages at rate R for D
//! seconds; latency from the send time in each payload, achieved deliveries, server CPU and write
//! syscalls per delivery, anything not delivered. Herald and its peers run the same load.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::payload::PayloadKind;
use crate::proc_stats;
use crate::report::{self, FanoutResult};
use crate::servers::{self, Addressing, ServerKind};
use crate::tls::{TlsOpts, TlsSetup};
use crate::workers::{Plan, Workers};

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
    /// What fills the payload: `pad` (the send time, then `x`s: compresses to almost nothing)
    /// or `quotes` (the send time, then an array of varied quote objects, compressing about as
    /// application JSON does).
    #[arg(long, value_enum, default_value_t = PayloadKind::Pad)]
    payload_kind: PayloadKind,
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
    /// More `[edge]` settings for Herald, one TOML line each, repeatable
    /// (`--edge 'write_window_ms = 5'`).
    #[arg(long = "edge")]
    edge: Vec<String>,
    /// Directory for the JSON, Markdown and SVG results.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
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

fn bytes_all(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|&p| proc_stats::written_bytes(p).unwrap_or(0))
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

async fn run_one(
    o: &FanoutOpts,
    tls: Option<&TlsSetup>,
    kind: ServerKind,
    subs: u64,
    rate: u64,
) -> anyhow::Result<FanoutResult> {
    let load_avg = proc_stats::load_avg();
    let edge_toml = std::iter::once("max_queued_bytes = 4194304")
        .chain(o.edge.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    let mut srv = servers::start(o.herald_bin.clone(), &edge_toml, tls, kind).await?;
    let mut client = srv.client().clone();
    client.topic_per_client = o.unicast;
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

    let cpu0 = cpu_all(srv.pids())?;
    let io0 = writes_all(srv.pids());
    let bytes0 = bytes_all(srv.pids());
    // The harness in two parts: this process (the publisher) and the workers (the clients).
    let own0 = proc_stats::cpu_ticks(std::process::id())?;
    let clients0 = workers.cpu_ticks();
    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let mut second = (t0 + Duration::from_secs(1), workers.counts().delivered);
    let total = rate * o.seconds;
    let mut to = Addressing::new(o.unicast, subs);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        tick_timeline(&workers, &mut second, &mut timeline);
        let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due > sent {
            srv.publish(due - sent, o.payload, o.payload_kind, &mut to)
                .await?;
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
    let cpu = cpu_all(srv.pids())?.saturating_sub(cpu0);
    let io = writes_all(srv.pids()).saturating_sub(io0);
    let bytes = bytes_all(srv.pids()).saturating_sub(bytes0);
    let own = proc_stats::cpu_ticks(std::process::id())?.saturating_sub(own0);
    let clients = workers.cpu_ticks().saturating_sub(clients0);
    let me = own + clients;
    let totals = workers.finish().await?;
    let hist = totals.latency_us;
    let refused = srv.close().await;
    if refused > 0 {
        eprintln!("fanout: {refused} publishes refused");
    }
    let got = totals.counts.delivered;
    let ticks_per_sec = proc_stats::clock_ticks_per_sec() as f64;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(FanoutResult {
        server: kind,
        tls: matches!(
            kind,
            ServerKind::Herald
                | ServerKind::HeraldMqtt
                | ServerKind::HeraldStomp
                | ServerKind::HeraldDeflate
                | ServerKind::HeraldSse
                | ServerKind::Cluster
        ) && tls.is_some(),
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
        server_bytes_per_delivery: bytes as f64 / got.max(1) as f64,
        server_cpu_percent: cpu as f64 / ticks_per_sec / elapsed * 100.0,
        harness_cpu_percent: me as f64 / ticks_per_sec / elapsed * 100.0,
        publisher_cpu_us_per_message: own as f64 / ticks_per_sec * 1e6 / total.max(1) as f64,
        clients_cpu_us_per_delivery: clients as f64 / ticks_per_sec * 1e6 / got.max(1) as f64,
        timeline,
        load_avg,
    })
}
