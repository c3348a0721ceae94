//! Measures what `Presence` costs on a large group: `n` connections, each a distinct user of one
//! group, spread over `edges` edges of a local cluster (real redis-server and nats-server), one
//! router. Reports the time and the bytes of one full presence (every page) and of a first page,
//! the edges' CPU per full presence, and the edges' RSS before and after the members connected
//! (presence stores nothing per member beyond the hub's own group index, so this is the
//! connections' own memory).
//!
//! This process holds the client side of every connection: keep `n` under its open-files limit
//! (`ulimit -n`, 20,000 here), or run several processes.
//!
//! `cargo build --release -p herald && HERALD_BIN=target/release/herald \
//!  cargo run --release -p herald-tests --example presence_cost -- 15000 2`
//! (members, edges).

use std::time::{Duration, Instant};

use herald_core::proto::v1::{ListConnectionsRequest, PresenceRequest, list_connections_request};
use herald_tests::cluster::Backends;
use herald_tests::*;
use prost::Message as _;
use serde_json::json;

/// utime + stime of a process, in seconds.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// Resident set of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// One full presence, page by page: (wall time, pages, users, reply bytes).
async fn full(g: &mut Grpc, page_size: u32) -> (Duration, u32, u64, u64, u64) {
    let started = Instant::now();
    let (mut token, mut pages, mut users, mut bytes) = (String::new(), 0u32, 0u64, 0u64);
    let connections = loop {
        let r = g
            .presence(PresenceRequest {
                project: "alpha".into(),
                group: "g".into(),
                page_size,
                page_token: token,
            })
            .await
            .expect("presence")
            .into_inner();
        assert!(r.missing_edges.is_empty(), "{:?}", r.missing_edges);
        pages += 1;
        users += r.users.len() as u64;
        bytes += r.encoded_len() as u64;
        token = r.next_page_token;
        if token.is_empty() {
            break r.connections;
        }
    };
    (started.elapsed(), pages, users, bytes, connections)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15_000);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2).max(1);
    let b = Backends::start_with(false, 1).await;
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
                .start()
                .await,
        );
    }
    let router = herald()
        .clustered(&b)
        .role("router")
        .router("control_timeout_ms", 10_000)
        .cluster("edge_ttl_secs", 30)
        .start()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: Vec<u64> = edges.iter().map(|e| rss_kib(e.pid())).collect();

    // Members "user-0000001" … : distinct users, each with one connection, round robin.
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
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after: Vec<u64> = edges.iter().map(|e| rss_kib(e.pid())).collect();

    let mut g = router.grpc(Some(ALPHA_KEY)).await;
    // Warm-up.
    let (_, _, users, _, connections) = full(&mut g, 5_000).await;
    assert_eq!((users, connections), (n as u64, n as u64));
    println!(
        "{n} members (distinct users, one connection each) over {count} edges, one router; connected in {connect_s:.1} s"
    );
    println!("| query | pages | wall ms (median of 5) | reply bytes | edges' CPU ms per query |");
    println!("|---|---|---|---|---|");
    for (name, page_size, whole) in [
        ("full, pages of 5,000", 5_000, true),
        ("full, pages of 1,000", 1_000, true),
        ("first page of 1,000", 1_000, false),
    ] {
        let mut walls = Vec::new();
        let (mut pages, mut bytes) = (0, 0);
        let cpu_before: f64 = edges.iter().map(|e| cpu(e.pid())).sum();
        for _ in 0..5 {
            if whole {
                let (wall, p, users, b, _) = full(&mut g, page_size).await;
                assert_eq!(users, n as u64);
                walls.push(wall);
                (pages, bytes) = (p, b);
            } else {
                let t = Instant::now();
                let r = g
                    .presence(PresenceRequest {
                        project: "alpha".into(),
                        group: "g".into(),
                        page_size,
                        page_token: String::new(),
                    })
                    .await
                    .expect("presence")
                    .into_inner();
                walls.push(t.elapsed());
                (pages, bytes) = (1, r.encoded_len() as u64);
            }
        }
        let cpu_ms = (edges.iter().map(|e| cpu(e.pid())).sum::<f64>() - cpu_before) / 5.0 * 1e3;
        walls.sort();
        println!(
            "| {name} | {pages} | {:.1} | {bytes} | {cpu_ms:.0} |",
            walls[2].as_secs_f64() * 1e3
        );
    }
    // The same-run peer: listing the group's connections (one entry per connection).
    let mut walls = Vec::new();
    let (mut pages, mut bytes) = (0, 0);
    let cpu_before: f64 = edges.iter().map(|e| cpu(e.pid())).sum();
    for _ in 0..5 {
        let t = Instant::now();
        let (mut token, mut got) = (String::new(), 0usize);
        (pages, bytes) = (0, 0);
        loop {
            let r = g
                .list_connections(ListConnectionsRequest {
                    project: "alpha".into(),
                    of: Some(list_connections_request::Of::Group("g".into())),
                    page_size: 5_000,
                    page_token: token,
                })
                .await
                .expect("list")
                .into_inner();
            pages += 1;
            bytes += r.encoded_len() as u64;
            got += r.connections.len();
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(got, n);
        walls.push(t.elapsed());
    }
    let cpu_ms = (edges.iter().map(|e| cpu(e.pid())).sum::<f64>() - cpu_before) / 5.0 * 1e3;
    walls.sort();
    println!(
        "| peer: ListConnections of the group, pages of 5,000 | {pages} | {:.1} | {bytes} | {cpu_ms:.0} |",
        walls[2].as_secs_f64() * 1e3
    );
    for (i, (a, b)) in rss_before.iter().zip(&rss_after).enumerate() {
        let members = n / count + usize::from(i < n % count);
        println!(
            "e{}: RSS {a} KiB idle, {b} KiB with {members} members: {:.2} KiB per member (connection included)",
            i + 1,
            (*b as f64 - *a as f64) / members as f64
        );
    }
    drop(clients);
}
