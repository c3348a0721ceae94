//! The `storm` scenario: connections opened as fast as the server takes them (bounded by a
//! concurrency), each authenticated; connects per second, handshake latency (TCP connect to the
//! `welcome` frame), server CPU per connect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::{clients, proc_stats, servers};

/// Options of `storm`.
#[derive(Debug, clap::Args)]
pub struct StormOpts {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<std::path::PathBuf>,
}

/// Runs the storm against Herald (plain `ws`).
pub async fn run(o: StormOpts) -> anyhow::Result<()> {
    let limit = proc_stats::open_files_limit();
    if o.connections + 200 > limit {
        bail!(
            "{} connections need more open files than this process may have ({limit})",
            o.connections
        );
    }
    let server = servers::start_herald(o.herald_bin.clone(), "").await?;
    let key = jsonwebtoken::EncodingKey::from_secret(servers::SECRET.as_bytes());
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    // Tokens are signed before the clock starts.
    let tokens: Vec<String> = (0..o.connections)
        .map(|i| {
            let claims = serde_json::json!({"sub": format!("s{i}"), "aud": "bench", "exp": exp});
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        })
        .collect::<Result<_, _>>()?;
    let gate = Arc::new(Semaphore::new(o.concurrency));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu0 = proc_stats::cpu_ticks(server.pid)?;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await?;
        let (ws_addr, failed) = (server.ws, failed.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let url = format!("ws://{ws_addr}/ws/bench?token={token}");
            let ok = async {
                let tcp = clients::connect_from(clients::source_ip(i as u64), ws_addr).await?;
                let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("welcome") => Ok(ws),
                    other => Err(anyhow::anyhow!("no welcome: {other:?}")),
                }
            }
            .await;
            drop(permit);
            match ok {
                Ok(ws) => Some((start.elapsed(), ws)),
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut open = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(Some((d, ws))) = t.await {
            hist.saturating_record(d.as_micros() as u64);
            open.push(ws);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = proc_stats::cpu_ticks(server.pid)? - cpu0;
    let n = open.len() as f64;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let result = serde_json::json!({
        "scenario": "storm",
        "connections": o.connections,
        "connected": open.len(),
        "failed": failed.load(Ordering::Relaxed),
        "seconds": secs,
        "connects_per_sec": n / secs,
        "handshake_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0},
        "server_cpu_us_per_connect": cpu as f64 / proc_stats::clock_ticks_per_sec() as f64 * 1e6 / n.max(1.0),
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(open);
    Ok(())
}
