//! The `storm` scenario: connections opened as fast as the server takes them (bounded by a
//! concurrency), each authenticated; connects per second, handshake latency (TCP connect to the
//! `welcome` frame, the TLS handshake included for `wss`), server CPU per connect. By default
//! one run on plain `ws`, then one on `wss`, each against a fresh Herald.

use std::time::{Duration, Instant};

use crate::proc_stats;
use crate::servers::{self, herald};
use crate::tls::TlsOpts;
use crate::workers::{ClientPlan, Plan, Workers};

/// Transport of one storm run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Plain WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

/// Options of `storm`.
#[derive(Debug, clap::Args)]
pub struct StormOpts {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: u64,
    /// Runs, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "ws,wss")]
    modes: Vec<Mode>,
    /// The test CA, certificate and SNI name of the `wss` run (`--tls` is implied by it).
    #[command(flatten)]
    tls: TlsOpts,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<std::path::PathBuf>,
}

/// Runs the storm against Herald, once per mode; prints one JSON object per run.
pub async fn run(o: StormOpts) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for mode in &o.modes {
        let tls = match mode {
            Mode::Ws => None,
            Mode::Wss => Some(o.tls.setup_always()?),
        };
        let edge = tls.as_ref().map_or(String::new(), |t| t.edge_toml.clone());
        let server = herald::start_herald(o.herald_bin.as_deref(), &edge, false).await?;
        let mut client = ClientPlan::herald(server.ws, "storm", servers::SECRET);
        client.subscribe = false;
        client.tls = tls.as_ref().map(|t| t.client.clone());
        let mut plan = Plan::new(o.connections, client);
        plan.inflight = o.concurrency;
        let cpu0 = proc_stats::cpu_ticks(server.pid)?;
        let load_avg = proc_stats::load_avg();
        let t0 = Instant::now();
        let workers = Workers::spawn(&format!("storm {mode:?}"), &plan).await?;
        let wait = Duration::from_secs(60 + o.connections / 200);
        let c = workers
            .wait("connected", wait, |c| c.settled() >= o.connections)
            .await?;
        let wall = t0.elapsed().as_secs_f64();
        let secs = c.connect_secs().max(1e-6);
        let cpu = proc_stats::cpu_ticks(server.pid)? - cpu0;
        let totals = workers.finish().await?;
        let hist = &totals.handshake_us;
        let n = c.connected as f64;
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let result = serde_json::json!({
            "scenario": "storm",
            "tls": *mode == Mode::Wss,
            "connections": o.connections,
            "connected": c.connected,
            "failed": c.failed,
            "workers": totals.workers,
            "seconds": secs,
            "wall_seconds": wall,
            "connects_per_sec": n / secs,
            "handshake_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0},
            "load_avg": load_avg,
            "server_cpu_us_per_connect": cpu as f64 / proc_stats::clock_ticks_per_sec() as f64 * 1e6 / n.max(1.0),
        });
        println!("{}", serde_json::to_string_pretty(&result)?);
        rates.push((*mode, n / secs));
        drop(server);
    }
    if let [(Mode::Ws, ws), (Mode::Wss, wss)] = rates[..] {
        println!("storm: wss connects/s = {:.2} × ws", wss / ws.max(1e-9));
    }
    Ok(())
}
