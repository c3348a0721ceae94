//! Measures what the registry fallback costs: group messages resolved through the registry
//! (one envelope to the edge holding the group) against the same messages sent by the
//! project's broadcast path while Redis is unreachable (every edge receives each one). CPU of
//! each process from `/proc/<pid>/stat`, per message:
//! - e1 holds the group's one member; the other edges hold nothing of the project: what they
//!   spend on the broadcast path is what every edge without a recipient pays per fallback
//!   message;
//! - nats-server: its extra work per extra subscriber.
//!
//! `cargo build --release -p herald && HERALD_BIN=target/release/herald \
//!  cargo run --release -p herald-tests --example fallback_cost -- 100000 32 8`
//! (messages, publishers, edges).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_tests::cluster::Backends;
use herald_tests::*;
use serde_json::json;

/// utime + stime of a process, in seconds.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// Publishes `n` group messages from `tasks` concurrent publishers; returns the wall time and
/// how many were answered with `fallback`.
async fn publish_all(router: &Herald, n: u64, tasks: u64) -> (Duration, u64) {
    let started = Instant::now();
    let fallback = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut g = router.grpc(Some(ALPHA_KEY)).await;
        let fallback = fallback.clone();
        handles.push(tokio::spawn(async move {
            let payload = format!("\"{}\"", "x".repeat(98));
            for _ in (t..n).step_by(tasks as usize) {
                let r = send(&mut g, publish("alpha", To::Group("g"), &payload)).await;
                fallback.fetch_add(u64::from(r.fallback), Ordering::Relaxed);
            }
        }));
    }
    for h in handles {
        h.await.expect("publisher");
    }
    (started.elapsed(), fallback.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let tasks: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3).max(2);
    let mut b = Backends::start_with(false, 1).await;
    let mut edges = Vec::new();
    for i in 1..=count {
        edges.push(
            herald()
                .clustered(&b)
                .role("edge")
                .edge("id", format!("e{i}"))
                .cluster("edge_ttl_secs", 15)
                .start()
                .await,
        );
    }
    let router = herald()
        .clustered(&b)
        .role("router")
        .cluster("edge_ttl_secs", 15)
        .start()
        .await;
    let mut member = {
        let mut c = claims("alpha", "member");
        c["groups"] = json!(["g"]);
        edges[0]
            .connect("alpha", &hs256(ALPHA_SECRET, None, &c))
            .await
    };
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                member.next_msg().await;
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let nats = b.nats[0].pid().expect("nats-server running");
    // e1, the other edges (summed), the router, nats-server.
    let pids: Vec<(&str, Vec<u32>)> = vec![
        ("e1 (holds the member)", vec![edges[0].pid()]),
        (
            "each other edge (no recipient; mean)",
            edges[1..].iter().map(Herald::pid).collect(),
        ),
        ("router", vec![router.pid()]),
        ("nats-server", vec![nats]),
    ];
    let cpu_of = |pids: &[u32]| pids.iter().map(|p| cpu(*p)).sum::<f64>() / pids.len() as f64;
    // Warm-up: the registry whole, connections open.
    let mut g = router.grpc(Some(ALPHA_KEY)).await;
    eventually(WAIT, async || {
        let r = send(&mut g, publish("alpha", To::Group("g"), "0")).await;
        if r.edges == 1 && !r.fallback {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    publish_all(&router, 2_000, tasks).await;

    println!(
        "{n} group messages of 100 bytes, {tasks} publishers, {count} edges (one member on e1), one router, one nats-server"
    );
    println!("| path | wall s | fallback replies | process | CPU µs per message |");
    println!("|---|---|---|---|---|");
    let mut per_msg = Vec::new();
    for phase in ["resolved by the registry", "broadcast path (Redis down)"] {
        if phase.starts_with("broadcast") {
            b.redis[0].kill().await;
        }
        let target = received.load(Ordering::Relaxed) + n;
        let before: Vec<f64> = pids.iter().map(|(_, p)| cpu_of(p)).collect();
        let (wall, fallback) = publish_all(&router, n, tasks).await;
        eventually(WAIT, async || {
            let got = received.load(Ordering::Relaxed);
            if got >= target {
                Ok(())
            } else {
                Err(format!("member got {got} of {target}"))
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let costs: Vec<f64> = pids
            .iter()
            .zip(&before)
            .map(|((_, p), b)| (cpu_of(p) - b) / n as f64 * 1e6)
            .collect();
        for ((name, _), c) in pids.iter().zip(&costs) {
            println!(
                "| {phase} | {:.2} | {fallback} | {name} | {c:.2} |",
                wall.as_secs_f64()
            );
        }
        per_msg.push(costs);
    }
    let (resolved, fallback) = (&per_msg[0], &per_msg[1]);
    let idle_edge = fallback[1] - resolved[1];
    let nats_per_sub = (fallback[3] - resolved[3]) / (count - 1) as f64;
    println!(
        "an edge without recipients: {idle_edge:.2} µs per fallback message; nats-server: {nats_per_sub:.2} µs per extra subscriber (noise when <= 0)"
    );
    println!(
        "at 53 edges (one holding the target): {:.0} µs of edge CPU and {:.0} µs of nats-server CPU per fallback message beyond a resolved one",
        52.0 * idle_edge,
        52.0 * nats_per_sub.max(0.0)
    );
    reader.abort();
}
