//! Measures the cluster's registry cost and delivery latency on this machine:
//! - Redis round trips and wall time for N connects (each a distinct user in one of 100 groups)
//!   on one edge, from the edge's `herald_registry_round_trips_total`, offered at RATE connects/s
//!   (0: as fast as 1,000 at a time allow), with the time from each connect's scheduled start to
//!   its `welcome` (p50/p99/max), the edge's `registry_batch_ms` set to BATCH_MS;
//! - publish-to-delivery latency of one message through router → NATS → edge (gRPC publish
//!   call start to the client reading the frame), median and p99 of many sequential messages.
//!
//! `cargo build --release -p herald && HERALD_BIN=target/release/herald \
//!  cargo run --release -p herald-tests --example cluster_measure -- 10000 2000 [RATE [BATCH_MS]]`

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use herald_tests::cluster::Backends;
use herald_tests::*;
use serde_json::json;

async fn round_trips(node: &Herald) -> u64 {
    let (_, body) = node.admin_get("/metrics").await;
    body.lines()
        .find(|l| l.starts_with("herald_registry_round_trips_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let connects: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let samples: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let rate: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.0);
    let batch_ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let b = Backends::start_with(false, 1).await;
    let edge = std::sync::Arc::new(
        herald()
            .clustered(&b)
            .role("edge")
            .edge("id", "e1")
            .edge("registry_batch_ms", batch_ms as i64)
            .edge(
                "limits",
                toml::Value::Table(
                    toml::toml! { per_ip_connect_rate = 0 per_ip_max_connections = 0 },
                ),
            )
            .cluster("edge_ttl_secs", 15)
            .start()
            .await,
    );
    let router = herald()
        .clustered(&b)
        .role("router")
        .cluster("edge_ttl_secs", 15)
        .start()
        .await;
    // Let start-up writes settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let tokens: Vec<String> = (0..connects)
        .map(|i| {
            let mut c = claims("alpha", &format!("u{i}"));
            c["groups"] = json!([format!("g{}", i % 100)]);
            hs256(ALPHA_SECRET, None, &c)
        })
        .collect();
    let before = round_trips(&edge).await;
    let started = Instant::now();
    let (clients, mut welcome): (Vec<Client>, Vec<Duration>) = if rate > 0.0 {
        // Each connect starts at its own scheduled instant; its latency counts from there.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, t) in tokens.iter().cloned().enumerate() {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            let url = edge.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let c = url.connect("alpha", &t).await;
                (c, at.elapsed())
            });
        }
        let mut out = (Vec::new(), Vec::new());
        while let Some(r) = tasks.join_next().await {
            let (c, d) = r.expect("connect task");
            out.0.push(c);
            out.1.push(d);
        }
        out
    } else {
        futures_util::stream::iter(tokens.iter())
            .map(|t| async {
                let t0 = Instant::now();
                let c = edge.connect("alpha", t).await;
                (c, t0.elapsed())
            })
            .buffer_unordered(1_000)
            .unzip()
            .await
    };
    let took = started.elapsed();
    let trips = round_trips(&edge).await - before;
    welcome.sort();
    let wp = |p: f64| welcome[((welcome.len() as f64 * p) as usize).min(welcome.len() - 1)];
    println!(
        "{} connects on one edge (offered {}/s, registry_batch_ms {batch_ms}): {:.2} s ({:.0}/s), {} Redis round trips ({:.1} connects per round trip); welcome p50 {:?} p99 {:?} max {:?}",
        clients.len(),
        if rate > 0.0 {
            format!("{rate:.0}")
        } else {
            "max".into()
        },
        took.as_secs_f64(),
        clients.len() as f64 / took.as_secs_f64(),
        trips,
        clients.len() as f64 / trips.max(1) as f64,
        wp(0.5),
        wp(0.99),
        welcome[welcome.len() - 1]
    );
    drop(clients);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut client = edge.connect("alpha", &token("alpha", "lat")).await;
    let mut grpc = router.grpc(Some(ALPHA_KEY)).await;
    // Warm up connections and the router's live-edge cache.
    for _ in 0..50 {
        send(&mut grpc, publish("alpha", To::User("lat"), "0")).await;
        client.next_msg().await;
    }
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        send(&mut grpc, publish("alpha", To::User("lat"), &i.to_string())).await;
        let m = client.next_msg().await;
        lat.push(t.elapsed());
        assert_eq!(m["data"], json!(i));
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "publish -> router -> NATS -> edge -> client, {} messages: median {:?}, p99 {:?}, max {:?}",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
}
