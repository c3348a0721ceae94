//! The `history` scenario: what keeping recoverable messages costs. Appends to the Redis history
//! store on a redis-server the harness starts (single, or a 3-master Redis Cluster): round trips
//! and µs per append, latency p50/p99, redis-server CPU per append, at each concurrency asked,
//! each after the same number of plain `XADD`s (no script, no meta, no trimming by age) on a
//! connection of the same kind, the floor any Redis store pays; then memory per retained message, in Redis (`MEMORY USAGE` of a full stream, and `used_memory`
//! over many) and in the in-process store (this process's RSS growth).
//!
//! With `--jetstream`, the same appends to NATS JetStream beside them, the store the issue
//! weighed against Redis: a `nats-server -js` on loopback, one stream over `hist.>` keeping
//! `--size` messages per subject (a subject per target), each append a publish carrying
//! `Nats-Expected-Last-Subject-Sequence` (the target's previous message, as a writer that
//! numbers offsets itself must, so two writers cannot both take the same offset) and awaiting its
//! ack: µs, p50/p99, nats-server CPU per append, then bytes per retained message (file and
//! memory storage).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use herald_cluster::{RedisConfig, RedisHistory};
use herald_core::history::{History, MemoryHistory, Retention, StreamKey, StreamTarget};
use herald_core::ids::{GroupId, ProjectId};
use herald_sandbox::Backends;

use crate::proc_stats;

/// Options of `history`.
#[derive(Debug, clap::Args)]
pub struct HistoryOpts {
    /// Appends timed at each concurrency.
    #[arg(long, default_value_t = 20_000)]
    appends: u64,
    /// Appends in flight at once, one run per value (each task appends to its own stream).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<u64>,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Messages a stream keeps (also the messages of the memory measurement's streams).
    #[arg(long, default_value_t = 1_000)]
    size: u32,
    /// Streams filled for the memory measurement (Redis `used_memory` and in-process RSS).
    #[arg(long, default_value_t = 200)]
    streams: u64,
    /// A 3-master Redis Cluster instead of a single redis-server.
    #[arg(long)]
    redis_cluster: bool,
    /// Also measure NATS JetStream appends (a `nats-server -js` on loopback).
    #[arg(long)]
    jetstream: bool,
}

fn stream(i: u64) -> StreamKey {
    StreamKey {
        project: ProjectId::new("bench").expect("a valid project id"),
        target: StreamTarget::Group(GroupId::new(&format!("g{i}")).expect("a valid group")),
    }
}

/// `redis-cli -p PORT ARGS...` on the first node, following redirections; its output.
async fn cli(b: &Backends, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(herald_sandbox::server_bin("redis-cli")?)
        .args(["-p", &b.redis[0].port.to_string(), "-c"])
        .args(args)
        .output()
        .await
        .context("redis-cli")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `used_memory` summed over every node.
async fn used_memory(b: &Backends) -> anyhow::Result<u64> {
    let mut sum = 0;
    for r in &b.redis {
        let out = tokio::process::Command::new(herald_sandbox::server_bin("redis-cli")?)
            .args(["-p", &r.port.to_string(), "INFO", "memory"])
            .output()
            .await
            .context("redis-cli")?;
        sum += String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("used_memory missing")?;
    }
    Ok(sum)
}

/// One timed run: `n` calls spread over `c` tasks, each on its own stream number.
struct Timed {
    n: u64,
    wall: Duration,
    hist: Histogram<u64>,
    cpu_us: f64,
}

async fn timed<F, Fut>(b: &Backends, c: u64, per_task: u64, call: F) -> anyhow::Result<Timed>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let pids: Vec<u32> = b.redis.iter().filter_map(|r| r.pid()).collect();
    timed_on(&pids, c, per_task, call).await
}

/// [`timed`], counting the CPU of the processes `pids`.
async fn timed_on<F, Fut>(pids: &[u32], c: u64, per_task: u64, call: F) -> anyhow::Result<Timed>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let tick_us = 1e6 / proc_stats::clock_ticks_per_sec() as f64;
    let server_ticks =
        || -> anyhow::Result<u64> { pids.iter().map(|p| proc_stats::cpu_ticks(*p)).sum() };
    let cpu0 = server_ticks()?;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..c {
        let call = call.clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            for _ in 0..per_task {
                let t = Instant::now();
                call(i).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(hist)
        });
    }
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(r) = tasks.join_next().await {
        hist.add(r??)?;
    }
    let wall = t0.elapsed();
    let n = per_task * c;
    let cpu_us = (server_ticks()? - cpu0) as f64 * tick_us / n as f64;
    Ok(Timed {
        n,
        wall,
        hist,
        cpu_us,
    })
}

/// A plain connection of the same kind as the store's, for the `XADD` floor.
async fn plain_conn(b: &Backends) -> anyhow::Result<PlainConn> {
    Ok(if b.redis_cluster {
        PlainConn::Cluster(
            redis::cluster::ClusterClient::new(b.redis_urls())?
                .get_async_connection()
                .await?,
        )
    } else {
        PlainConn::Single(
            redis::Client::open(b.redis_urls()[0].as_str())?
                .get_multiplexed_async_connection()
                .await?,
        )
    })
}

#[derive(Clone)]
enum PlainConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl PlainConn {
    async fn xadd(&self, key: String, size: u32, payload: Bytes) -> anyhow::Result<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key)
            .arg("MAXLEN")
            .arg(size)
            .arg("*")
            .arg("d")
            .arg(&payload[..]);
        match self.clone() {
            PlainConn::Single(mut c) => cmd.query_async::<()>(&mut c).await?,
            PlainConn::Cluster(mut c) => cmd.query_async::<()>(&mut c).await?,
        }
        Ok(())
    }
}

fn row(what: &str, t: &Timed, trips: f64) -> (String, serde_json::Value) {
    let per_sec = t.n as f64 / t.wall.as_secs_f64();
    let us = t.wall.as_secs_f64() * 1e6 / t.n as f64;
    let (p50, p99, max) = (
        t.hist.value_at_quantile(0.5),
        t.hist.value_at_quantile(0.99),
        t.hist.max(),
    );
    (
        format!(
            "| {what} | {} | {per_sec:.0} | {us:.1} | {p50} | {p99} | {max} | {trips:.2} | {:.1} |",
            t.n, t.cpu_us
        ),
        serde_json::json!({
            "what": what, "calls": t.n, "per_sec": per_sec, "us_per_call": us,
            "p50_us": p50, "p99_us": p99, "max_us": max, "round_trips_per_call": trips,
            "redis_cpu_us_per_call": t.cpu_us,
        }),
    )
}

/// Runs the scenario; prints one JSON object and a Markdown table.
pub async fn run(o: HistoryOpts) -> anyhow::Result<()> {
    let b = Backends::builder()
        .redis_cluster(o.redis_cluster)
        .nats_nodes(0)
        .prefix("hist")
        .wait(Duration::from_secs(30))
        .start()
        .await?;
    let h = RedisHistory::new(&RedisConfig {
        urls: b.redis_urls(),
        cluster: b.redis_cluster,
        key_prefix: b.prefix.clone(),
        timeout: Duration::from_secs(10),
        ..RedisConfig::default()
    })?;
    let h = Arc::new(h);
    let keep = Retention {
        size: o.size,
        ttl: Duration::from_secs(3_600),
    };
    let payload = Bytes::from(vec![b'x'; o.payload]);
    let load_avg = proc_stats::load_avg();
    let plain = plain_conn(&b).await?;
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    for &c in &o.concurrency {
        let c = c.max(1);
        let per_task = o.appends / c;
        // The floor: plain XADDs, each task on its own key.
        let (conn, p, size) = (plain.clone(), payload.clone(), o.size);
        for i in 0..c {
            conn.xadd(format!("plain:{{{i}}}"), size, p.clone()).await?;
        }
        let t = timed(&b, c, per_task, move |i| {
            let (conn, p) = (conn.clone(), p.clone());
            async move { conn.xadd(format!("plain:{{{i}}}"), size, p).await }
        })
        .await?;
        let (r, j) = row(&format!("plain XADD, concurrency {c}"), &t, 1.0);
        rows.push(r);
        runs.push(j);
        // The store. Warm: scripts cached, streams exist.
        for i in 0..c {
            h.append(&stream(i), keep, payload.clone()).await?;
        }
        let trips0 = h.round_trips();
        let (hh, p) = (h.clone(), payload.clone());
        let t = timed(&b, c, per_task, move |i| {
            let (hh, p) = (hh.clone(), p.clone());
            async move {
                hh.append(&stream(i), keep, p).await?;
                Ok(())
            }
        })
        .await?;
        let trips = (h.round_trips() - trips0) as f64 / t.n as f64;
        let (r, j) = row(&format!("RedisHistory append, concurrency {c}"), &t, trips);
        rows.push(r);
        runs.push(j);
    }

    let js = if o.jetstream {
        let (js_rows, js_json) = jetstream(&o, &payload).await?;
        rows.extend(js_rows);
        js_json
    } else {
        serde_json::Value::Null
    };

    // Memory in Redis: one stream holding `size` messages, then `streams` more.
    let full = stream(1_000_000);
    for _ in 0..o.size {
        h.append(&full, keep, payload.clone()).await?;
    }
    let (meta, s) = h.keys_of(&full);
    let stream_bytes: u64 = cli(&b, &["MEMORY", "USAGE", &s, "SAMPLES", "0"])
        .await?
        .parse()
        .context("MEMORY USAGE")?;
    let meta_bytes: u64 = cli(&b, &["MEMORY", "USAGE", &meta, "SAMPLES", "0"])
        .await?
        .parse()
        .context("MEMORY USAGE")?;
    let per_msg_usage = stream_bytes as f64 / f64::from(o.size);
    let used0 = used_memory(&b).await?;
    fill(&*h, o.streams, 2_000_000, o.size, &payload).await?;
    let used = used_memory(&b).await?.saturating_sub(used0);
    let per_msg_used = used as f64 / (o.streams * u64::from(o.size)) as f64;

    // In this process: RSS growth for the same streams (glibc malloc here; herald runs jemalloc).
    let mem = MemoryHistory::new();
    let me = std::process::id();
    let rss0 = proc_stats::rss_kib(me)?;
    let t0 = Instant::now();
    fill(&mem, o.streams, 0, o.size, &payload).await?;
    let mem_us = t0.elapsed().as_secs_f64() * 1e6 / (o.streams * u64::from(o.size)) as f64;
    let rss = proc_stats::rss_kib(me)?.saturating_sub(rss0) * 1024;
    let per_msg_rss = rss as f64 / (o.streams * u64::from(o.size)) as f64;
    drop(mem);

    let out = serde_json::json!({
        "scenario": "history", "redis_cluster": o.redis_cluster, "payload": o.payload,
        "size": o.size, "streams": o.streams, "load_avg": load_avg, "runs": runs,
        "redis_stream_bytes": stream_bytes, "redis_meta_bytes": meta_bytes,
        "redis_bytes_per_message_memory_usage": per_msg_usage,
        "redis_bytes_per_message_used_memory": per_msg_used,
        "memory_history_bytes_per_message_rss": per_msg_rss,
        "memory_history_us_per_append": mem_us, "jetstream": js,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    println!(
        "\n| {} | calls | calls/s | µs/call | p50 µs | p99 µs | max µs | round trips/call | server CPU µs/call |",
        if o.redis_cluster {
            "Redis Cluster (3 masters)"
        } else {
            "single Redis"
        }
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!(
        "\nmemory per retained {}-byte message: Redis {per_msg_usage:.1} B (MEMORY USAGE of a \
         {}-message stream: {stream_bytes} B, meta {meta_bytes} B), {per_msg_used:.1} B \
         (used_memory over {} streams); in-process {per_msg_rss:.1} B (RSS), {mem_us:.2} µs/append; \
         load {load_avg:?}",
        o.payload, o.size, o.streams
    );
    Ok(())
}

/// Appends `size` messages to each of `streams` streams numbered from `from`.
async fn fill(
    h: &dyn History,
    streams: u64,
    from: u64,
    size: u32,
    payload: &Bytes,
) -> anyhow::Result<()> {
    let keep = Retention {
        size,
        ttl: Duration::from_secs(3_600),
    };
    for i in 0..streams {
        let k = stream(from + i);
        for _ in 0..size {
            // A copy per message, as a store keeps each message's own bytes.
            h.append(&k, keep, Bytes::copy_from_slice(payload)).await?;
        }
    }
    Ok(())
}

/// A `nats-server -js` on a free loopback port, storing under `dir`; killed when dropped.
struct JetStreamServer {
    port: u16,
    child: tokio::process::Child,
}

impl JetStreamServer {
    async fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
        let port = herald_sandbox::free_port()?;
        let child = tokio::process::Command::new(herald_sandbox::server_bin("nats-server")?)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start nats-server -js")?;
        let until = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < until, "nats-server -js did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { port, child })
    }
}

/// A JetStream stream over `<name>.>` keeping `size` messages per subject, an hour at most.
async fn js_stream(
    ctx: &async_nats::jetstream::Context,
    name: &str,
    size: u32,
    storage: async_nats::jetstream::stream::StorageType,
) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
    Ok(ctx
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.>")],
            max_messages_per_subject: i64::from(size),
            max_age: Duration::from_secs(3_600),
            storage,
            num_replicas: 1,
            ..Default::default()
        })
        .await?)
}

/// Appends to `subject`, expecting its last message at stream sequence `last` (0: none), with
/// the target's own offset in a header; the new message's stream sequence.
async fn js_append(
    ctx: &async_nats::jetstream::Context,
    subject: String,
    last: u64,
    offset: u64,
    payload: Bytes,
) -> anyhow::Result<u64> {
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .payload(payload)
        .expected_last_subject_sequence(last)
        .header("Herald-Offset", offset.to_string().as_str());
    let ack = ctx.send_publish(subject, msg).await?.await?;
    Ok(ack.sequence)
}

/// The JetStream rows (µs, latency, nats-server CPU per append, at each concurrency) and memory.
async fn jetstream(
    o: &HistoryOpts,
    payload: &Bytes,
) -> anyhow::Result<(Vec<String>, serde_json::Value)> {
    use async_nats::jetstream::stream::StorageType;
    let dir = tempfile::tempdir()?;
    let server = JetStreamServer::start(dir.path()).await?;
    let pid = server.child.id().context("nats-server pid")?;
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", server.port)).await?;
    let ctx = async_nats::jetstream::new(client);
    js_stream(&ctx, "hist", o.size, StorageType::File).await?;
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for &c in &o.concurrency {
        let c = c.max(1);
        let per_task = o.appends / c;
        // Each task appends to its own subject and keeps its last sequence and offset, as a
        // single writer per target would; warm first.
        let lasts: Arc<Vec<Mutex<(u64, u64)>>> =
            Arc::new((0..c).map(|_| Mutex::new((0, 0))).collect());
        for i in 0..c {
            let (last, off) = *lasts[i as usize]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let seq = js_append(
                &ctx,
                format!("hist.c{c}.{i}"),
                last,
                off + 1,
                payload.clone(),
            )
            .await?;
            *lasts[i as usize]
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = (seq, off + 1);
        }
        let (cx, p, l) = (ctx.clone(), payload.clone(), lasts.clone());
        let t = timed_on(&[pid], c, per_task, move |i| {
            let (cx, p, l) = (cx.clone(), p.clone(), l.clone());
            async move {
                let (last, off) = *l[i as usize].lock().unwrap_or_else(PoisonError::into_inner);
                let seq = js_append(&cx, format!("hist.c{c}.{i}"), last, off + 1, p).await?;
                *l[i as usize].lock().unwrap_or_else(PoisonError::into_inner) = (seq, off + 1);
                Ok(())
            }
        })
        .await?;
        let (r, j) = row(
            &format!("JetStream append (file, expected last subject seq), concurrency {c}"),
            &t,
            1.0,
        );
        rows.push(r);
        runs.push(j);
    }
    // A stale expectation is refused: what makes the offsets atomic.
    let stale = js_append(&ctx, "hist.c1.0".into(), 1, 0, payload.clone()).await;
    anyhow::ensure!(stale.is_err(), "a stale expected sequence was accepted");
    // Memory: `streams` subjects of `size` messages, file and memory storage.
    let mut bytes = serde_json::Map::new();
    for (name, storage) in [("mfile", StorageType::File), ("mmem", StorageType::Memory)] {
        let mut s = js_stream(&ctx, name, o.size, storage).await?;
        let rss0 = proc_stats::rss_kib(pid)?;
        for i in 0..o.streams {
            let mut last = 0;
            for off in 1..=u64::from(o.size) {
                last = js_append(
                    &ctx,
                    format!("{name}.{i}"),
                    last,
                    off,
                    Bytes::copy_from_slice(payload),
                )
                .await?;
            }
        }
        let rss = proc_stats::rss_kib(pid)?.saturating_sub(rss0) * 1024;
        let info = s.info().await?;
        let n = info.state.messages.max(1) as f64;
        let per = info.state.bytes as f64 / n;
        let per_rss = rss as f64 / n;
        rows.push(format!(
            "\nJetStream {name} ({:?} storage): {} messages, {} bytes: {per:.1} B per retained {}-byte message (stream state, headers included); nats-server RSS growth {per_rss:.1} B per message",
            storage, info.state.messages, info.state.bytes, o.payload
        ));
        bytes.insert(
            name.into(),
            serde_json::json!({"state": per, "rss": per_rss}),
        );
    }
    Ok((
        rows,
        serde_json::json!({"runs": runs, "bytes_per_message": bytes}),
    ))
}
