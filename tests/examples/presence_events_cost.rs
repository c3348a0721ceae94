//! Measures what presence events cost at a connect storm: `n` members (distinct users, one
//! connection each, one group) opened 200 at a time over `edges` edges of a local cluster (real
//! redis-server and nats-server), once with `presence_events` off and once on (the same-run
//! peer), each on fresh backends. One watcher on the first edge counts the `join`s and, when
//! every member closes at once, the `leave`s. Reports the storm's wall time, the CPU of the
//! edges and of redis-server, and Redis memory per member (`INFO memory` `used_memory`).
//!
//! This process holds the client side of every connection: keep `n` under its open-files limit.
//!
//! `cargo build --release -p herald && HERALD_BIN=target/release/herald \
//!  cargo run -p herald-tests --example presence_events_cost -- 15000 2`

use std::time::{Duration, Instant};

use herald_tests::cluster::{Backends, server_bin};
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

async fn redis_used_memory(url: &str) -> u64 {
    let out = tokio::process::Command::new(server_bin("redis-cli"))
        .args(["-u", url, "INFO", "memory"])
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// Reads presence frames until `want` of `event` came; the time it took from `since`.
async fn count_events(c: &mut Client, event: &str, want: usize, since: Instant) -> Duration {
    let mut got = 0;
    while got < want {
        let (_, e, _) = c.next_presence().await;
        if e == event {
            got += 1;
        }
    }
    since.elapsed()
}

struct Run {
    storm: Duration,
    joins: Option<Duration>,
    leaves: Option<Duration>,
    edges_cpu_in: f64,
    edges_cpu_out: f64,
    redis_cpu_in: f64,
    redis_bytes: i64,
}

async fn run(n: usize, count: usize, events: bool) -> Run {
    let b = Backends::start_with(false, 1).await;
    let redis_pid = b.redis[0].pid().expect("redis pid");
    let url = b.redis_urls()[0].clone();
    let mut edges = Vec::new();
    for i in 1..=count {
        edges.push(
            herald()
                .clustered(&b)
                .role("edge")
                .edge("id", format!("e{i}"))
                .edge(
                    "limits",
                    toml::Value::Table(
                        toml::toml! { per_ip_connect_rate = 0 per_ip_max_connections = 0 },
                    ),
                )
                .cluster("edge_ttl_secs", 30)
                .project_set("alpha", "presence_events", events)
                .start()
                .await,
        );
    }
    let mut w = claims("alpha", "watcher");
    w["groups"] = json!(["g"]);
    let mut watcher = edges[0]
        .connect("alpha", &hs256(ALPHA_SECRET, None, &w))
        .await;
    if events {
        count_events(&mut watcher, "join", 1, Instant::now()).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem_before = redis_used_memory(&url).await;
    let cpu_edges = |edges: &[Herald]| edges.iter().map(|e| cpu(e.pid())).sum::<f64>();
    let (e0, r0) = (cpu_edges(&edges), cpu(redis_pid));

    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let from = clients.len();
        let batch = (n - from).min(200);
        let opened = futures_util::future::join_all((from..from + batch).map(|i| {
            let edge = &edges[i % count];
            let mut c = claims("alpha", &format!("user-{i:07}"));
            c["groups"] = json!(["g"]);
            let tok = hs256(ALPHA_SECRET, None, &c);
            async move { edge.connect("alpha", &tok).await }
        }))
        .await;
        clients.extend(opened);
    }
    let storm = started.elapsed();
    let joins = if events {
        Some(count_events(&mut watcher, "join", n, started).await)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (e1, r1) = (cpu_edges(&edges), cpu(redis_pid));
    let mem_after = redis_used_memory(&url).await;

    let left = Instant::now();
    drop(clients);
    let leaves = if events {
        Some(count_events(&mut watcher, "leave", n, left).await)
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
        None
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e2 = cpu_edges(&edges);
    Run {
        storm,
        joins,
        leaves,
        edges_cpu_in: e1 - e0,
        edges_cpu_out: e2 - e1,
        redis_cpu_in: r1 - r0,
        redis_bytes: mem_after as i64 - mem_before as i64,
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15_000);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2).max(1);
    println!("{n} members (distinct users, one connection each, one group) over {count} edges");
    println!(
        "| presence_events | storm s | all joins seen s | all leaves seen s | edges' CPU s (storm) | edges' CPU s (leaves) | redis CPU s (storm) | Redis bytes per member |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for events in [false, true] {
        let r = run(n, count, events).await;
        let opt =
            |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()));
        println!(
            "| {} | {:.2} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
            if events { "on" } else { "off" },
            r.storm.as_secs_f64(),
            opt(r.joins),
            opt(r.leaves),
            r.edges_cpu_in,
            r.edges_cpu_out,
            r.redis_cpu_in,
            r.redis_bytes as f64 / n as f64
        );
    }
}
