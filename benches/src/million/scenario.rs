//! The run itself: connect at a steady rate until done or a limit is hit, measure memory with
//! every connection open, then publish a broadcast, a group message and user messages and wait
//! for every expected receiver.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{Broadcast, PublishRequest, Target as ApiTarget, target};

use super::cluster::Run;
use super::cpu::Mark;
use super::fleet::{report_all, total};
use super::kernel::conntrack_count;
use super::layout::Layout;
use super::measure::{
    Delivery, EdgeFigures, MillionResult, Sample, failure_limit, kernel_mem, limit_reached,
    loadavg, meminfo_kib, percentiles, redis_info, rss_mib,
};
use super::presence;
use super::report::fmt_n;
use super::worker::WorkerReport;
use super::{MillionOpts, PROJECT};
use crate::{payload, proc_stats, servers, workers};

/// Starts the cluster and the workers, connects, measures and publishes; fills `res`.
pub(super) async fn scenario(
    o: &MillionOpts,
    layout: Layout,
    run: &mut Run,
    res: &mut MillionResult,
) -> anyhow::Result<()> {
    run.start_cluster(o).await?;
    run.start_workers(o, layout).await?;
    res.workers = run.workers.len() as u64;
    eprintln!(
        "million: {} workers signing {} tokens ({} users, {} groups, {} edges)",
        run.workers.len(),
        fmt_n(o.connections),
        fmt_n(layout.users),
        layout.groups,
        o.edges
    );
    for w in &mut run.workers {
        tokio::time::timeout(Duration::from_secs(120), w.expect("ready"))
            .await
            .with_context(|| format!("{} did not sign its tokens within 120 s", w.proc.name()))??;
    }
    let before = Before::take(run, res)?;
    let redis_port = run
        .cluster
        .as_ref()
        .context("the cluster runs")?
        .backends
        .redis[0]
        .port;
    let redis_before = presence::redis_bytes(redis_port).await;
    let mark = Mark::take(run);
    let t = connect(o, run, res).await?;
    res.phases
        .push(mark.phase(run, "connect", t.open, "connects"));
    measure_memory(run, res, &before, &t).await?;
    if o.hold_secs > 0 {
        hold(o, run, res, t.open).await?;
    }
    if o.presence {
        let members = (0..t.open.min(o.connections))
            .filter(|&i| layout.in_group_message(i))
            .count() as u64;
        let (after, keys_after) = presence::redis_bytes(redis_port).await;
        let mut f = presence::PresenceFigures {
            redis_used_before: redis_before.0,
            redis_keys_before: redis_before.1,
            redis_used_after: after,
            redis_keys_after: keys_after,
            redis_bytes_per_member: after.saturating_sub(redis_before.0) as f64
                / members.max(1) as f64,
            ..Default::default()
        };
        let outcome = presence::measure(run, o.presence_repeats.max(1), members, &mut f).await;
        res.presence = Some(f);
        outcome?;
    }
    deliver(o, layout, run, res).await
}

/// Holds every connection idle for `--hold-secs`, then records what the phase cost each role
/// (the edges send a ping per connection per interval, the client ends answer it) and which
/// connections closed meanwhile.
async fn hold(
    o: &MillionOpts,
    run: &mut Run,
    res: &mut MillionResult,
    open: u64,
) -> anyhow::Result<()> {
    report_all(&mut run.workers).await?;
    let closed_before = total(&run.workers, o.edges as usize).dropped;
    let interval = o.ping_interval_secs.unwrap_or(HERALD_PING_INTERVAL_SECS);
    eprintln!(
        "million: holding {} connections idle for {} s (a ping every {interval} s each)",
        fmt_n(open),
        o.hold_secs
    );
    let mark = Mark::take(run);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(o.hold_secs) {
        let left = Duration::from_secs(o.hold_secs).saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(5))).await;
    }
    let pings = (open as f64 * t0.elapsed().as_secs_f64() / interval.max(1) as f64) as u64;
    let phase = mark.phase(run, "idle hold", pings, "pings");
    report_all(&mut run.workers).await?;
    let closed = total(&run.workers, o.edges as usize).dropped;
    res.closed_while_held = closed
        .iter()
        .map(|(k, v)| (k.clone(), v - closed_before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    eprintln!(
        "million: held {:.0} s: edges {:.1} s CPU ({:.1} µs per ping), clients {:.1} s ({:.1} µs per pong), machine busy {:.0} %; closed meanwhile {:?}",
        phase.wall_secs,
        phase.cpu_secs[0],
        phase.us_per_event(0),
        phase.cpu_secs[1],
        phase.us_per_event(1),
        100.0 * phase.machine_busy_secs / phase.capacity_secs.max(1e-9),
        res.closed_while_held
    );
    res.phases.push(phase);
    Ok(())
}

/// Herald's default `edge.ping_interval_secs`.
const HERALD_PING_INTERVAL_SECS: u64 = 25;

/// What is measured before the first connect.
struct Before {
    /// Each edge's name and pid.
    edges: Vec<(String, u32)>,
    /// Each edge's RSS, KiB.
    rss: Vec<u64>,
    /// The workers' RSS, MiB.
    workers_rss_mib: f64,
}

impl Before {
    fn take(run: &Run, res: &mut MillionResult) -> anyhow::Result<Self> {
        let edge_pids: Vec<(String, u32)> = run
            .cluster
            .as_ref()
            .context("the cluster runs")?
            .edges
            .iter()
            .map(|e| (e.process().name().to_string(), e.pid()))
            .collect();
        let rss_before: Vec<u64> = edge_pids
            .iter()
            .map(|(_, pid)| proc_stats::rss_kib(*pid).unwrap_or(0))
            .collect();
        res.kernel_before = kernel_mem();
        let workers_rss_before: f64 = run
            .workers
            .iter()
            .map(|w| rss_mib(Some(w.proc.pid())))
            .sum();

        Ok(Self {
            edges: edge_pids,
            rss: rss_before,
            workers_rss_mib: workers_rss_before,
        })
    }
}

/// Connects at a steady rate until every connection is made, a limit is hit or the connect
/// budget is spent; returns the workers' summed report at the end.
async fn connect(
    o: &MillionOpts,
    run: &mut Run,
    res: &mut MillionResult,
) -> anyhow::Result<WorkerReport> {
    for w in &mut run.workers {
        w.send("go").await?;
    }
    let t0 = Instant::now();
    // Connecting stops early enough to measure, publish and stop within --max-secs.
    let connect_budget = Duration::from_secs(o.max_secs - (o.max_secs / 4).min(150));
    let mut last_print = Instant::now();
    let mut last_open = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        report_all(&mut run.workers).await?;
        let t = total(&run.workers, o.edges as usize);
        let failed: u64 = t.failed.values().sum();
        let avail = meminfo_kib("MemAvailable") / 1024;
        res.timeline.push(Sample {
            secs: t0.elapsed().as_secs_f64(),
            open: t.open,
            failed,
            in_flight: t.in_flight,
            mem_available_mib: avail,
            conntrack: conntrack_count(),
        });
        if !workers::quiet()
            && (last_print.elapsed() >= Duration::from_secs(5) || t.attempted == o.connections)
        {
            eprintln!(
                "million: {:>5.0} s  open {:>9}  (+{:.0}/s)  failed {}  in flight {}  MemAvailable {:.1} GiB  conntrack {}  load {}",
                t0.elapsed().as_secs_f64(),
                fmt_n(t.open),
                (t.open as f64 - last_open as f64) / last_print.elapsed().as_secs_f64(),
                failed,
                t.in_flight,
                avail as f64 / 1024.0,
                conntrack_count().map_or("-".into(), fmt_n),
                loadavg()
            );
            last_print = Instant::now();
            last_open = t.open;
        }
        let limit = limit_reached(o, run).or_else(|| failure_limit(&t));
        if let Some(l) = limit {
            eprintln!("million: LIMIT {l}: connecting stops here");
            res.limit_hit = Some(l);
            for w in &mut run.workers {
                w.send("halt").await?;
            }
            break;
        }
        if t.attempted == o.connections && t.in_flight == 0 {
            break;
        }
        if t0.elapsed() > connect_budget {
            let l = format!(
                "time: {} of {} connected after {:.0} s (offered {}/s)",
                t.open,
                o.connections,
                t0.elapsed().as_secs_f64(),
                o.rate
            );
            eprintln!("million: LIMIT {l}: connecting stops here");
            res.limit_hit = Some(l);
            for w in &mut run.workers {
                w.send("halt").await?;
            }
            break;
        }
    }
    let t = total(&run.workers, o.edges as usize);
    // The last welcome came within the last second.
    res.connect_seconds = res
        .timeline
        .iter()
        .find(|s| s.open == t.open)
        .map_or(t0.elapsed().as_secs_f64(), |s| s.secs);
    res.connected = t.open;
    res.connect_rate = t.open as f64 / res.connect_seconds.max(1e-9);
    res.failed = t.failed.clone();
    res.not_connected = o.connections - t.open;
    eprintln!(
        "million: {} of {} connected in {:.1} s ({:.0}/s); failed {:?}",
        fmt_n(t.open),
        fmt_n(o.connections),
        res.connect_seconds,
        res.connect_rate,
        t.failed
    );
    Ok(t)
}

/// Memory with every connection open: per edge, the harness, the router, NATS, Redis and the
/// kernel.
async fn measure_memory(
    run: &Run,
    res: &mut MillionResult,
    before: &Before,
    t: &WorkerReport,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    res.kernel_after = kernel_mem();
    res.per_edge = before
        .edges
        .iter()
        .enumerate()
        .map(|(e, (name, pid))| {
            let rss = proc_stats::rss_kib(*pid).unwrap_or(0);
            let open = t.per_edge_open.get(e).copied().unwrap_or(0);
            EdgeFigures {
                id: name.clone(),
                open,
                rss_kib_before: before.rss[e],
                rss_kib: rss,
                kib_per_connection: rss.saturating_sub(before.rss[e]) as f64 / open.max(1) as f64,
            }
        })
        .collect();
    let rss_total: u64 = res.per_edge.iter().map(|e| e.rss_kib).sum();
    let rss_growth: u64 = res
        .per_edge
        .iter()
        .map(|e| e.rss_kib.saturating_sub(e.rss_kib_before))
        .sum();
    res.edges_rss_mib = rss_total as f64 / 1024.0;
    let pss_total: u64 = before
        .edges
        .iter()
        .map(|(_, pid)| proc_stats::pss_kib(*pid).unwrap_or(0))
        .sum();
    res.edges_pss_mib = pss_total as f64 / 1024.0;
    res.edges_kib_per_connection = rss_growth as f64 / t.open.max(1) as f64;
    let cluster = run.cluster.as_ref().context("the cluster runs")?;
    res.router_rss_mib = rss_mib(Some(cluster.router.pid()));
    res.nats_rss_mib = rss_mib(cluster.backends.nats[0].pid());
    res.redis_rss_mib = rss_mib(cluster.backends.redis[0].pid());
    (res.redis_used_memory_mib, res.redis_keys) = redis_info(cluster.backends.redis[0].port).await;
    res.workers_rss_mib = run
        .workers
        .iter()
        .map(|w| rss_mib(Some(w.proc.pid())))
        .sum();
    res.workers_kib_per_connection =
        (res.workers_rss_mib - before.workers_rss_mib) * 1024.0 / t.open.max(1) as f64;
    res.kernel_slab_kib_per_connection = res
        .kernel_after
        .slab_kib
        .saturating_sub(res.kernel_before.slab_kib) as f64
        / t.open.max(1) as f64;
    eprintln!(
        "million: edges RSS {:.0} MiB ({:.2} KiB/connection), PSS {:.0} MiB; harness {:.0} MiB ({:.2} KiB/connection); \
         kernel Slab +{:.0} MiB ({:.2} KiB/connection), TCP buffers {} pages; redis {:.1} MiB, {} keys",
        res.edges_rss_mib,
        res.edges_kib_per_connection,
        res.edges_pss_mib,
        res.workers_rss_mib,
        res.workers_kib_per_connection,
        res.kernel_after
            .slab_kib
            .saturating_sub(res.kernel_before.slab_kib) as f64
            / 1024.0,
        res.kernel_slab_kib_per_connection,
        res.kernel_after.sockstat.tcp_mem_pages,
        res.redis_used_memory_mib,
        fmt_n(res.redis_keys)
    );
    Ok(())
}

/// Publishes through the router (a broadcast, a group message, a message to each sampled
/// user) and waits for every expected receiver of each.
async fn deliver(
    o: &MillionOpts,
    layout: Layout,
    run: &mut Run,
    res: &mut MillionResult,
) -> anyhow::Result<()> {
    let grpc = run.cluster.as_ref().context("the cluster runs")?.grpc()?;
    let mut client = HeraldClient::connect(format!("http://{grpc}")).await?;
    let deadline = Duration::from_secs(o.deliver_timeout_secs);
    let kinds: [(&str, usize); 3] = [("broadcast", 0), ("group g0", 1), ("user", 2)];
    for (name, m) in kinds {
        let mark = Mark::take(run);
        let sent = Instant::now();
        let published = match m {
            0 => {
                publish(&mut client, target::Kind::Broadcast(Broadcast {})).await?;
                1
            }
            1 => {
                publish(&mut client, target::Kind::Group("g0".into())).await?;
                1
            }
            _ => {
                let mut n = 0;
                for u in layout.sample() {
                    publish(&mut client, target::Kind::User(format!("u{u}"))).await?;
                    n += 1;
                }
                n
            }
        };
        let mut done = None;
        loop {
            report_all(&mut run.workers).await?;
            let t = total(&run.workers, o.edges as usize);
            if t.received[m] >= t.expected[m] {
                done = Some(sent.elapsed().as_secs_f64());
            }
            if done.is_some() || sent.elapsed() > deadline {
                let d = Delivery {
                    published,
                    expected: t.expected[m],
                    received: t.received[m],
                    missing: t.expected[m] - t.received[m].min(t.expected[m]),
                    never_connected: t.never_connected[m],
                    seconds_to_all: done,
                };
                eprintln!(
                    "million: {name}: {} of {} expected receivers got it{}; {} never connected",
                    fmt_n(d.received),
                    fmt_n(d.expected),
                    done.map_or(
                        format!(" (gave up after {} s)", o.deliver_timeout_secs),
                        |s| format!(" ({s:.2} s after the publish)")
                    ),
                    fmt_n(d.never_connected)
                );
                res.phases
                    .push(mark.phase(run, name, d.received, "deliveries"));
                match m {
                    0 => {
                        // Time to all from the payload's send time, as the clients saw it.
                        if done.is_some() {
                            let mut d = d;
                            d.seconds_to_all = Some(t.bcast_max_us as f64 / 1e6);
                            res.broadcast = d;
                        } else {
                            res.broadcast = d;
                        }
                        res.broadcast_latency_ms = percentiles(&t.bcast_buckets, t.bcast_max_us);
                        res.broadcast_missing_per_edge = t.bcast_missing_per_edge.clone();
                    }
                    1 => res.group = d,
                    _ => res.user = d,
                }
                res.duplicates = t.duplicates;
                res.dropped = t.dropped.clone();
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    res.sampled_users = layout.sample().count() as u64;
    res.sampled_users_with_two_devices = layout
        .sample()
        .filter(|u| u + layout.users < layout.total)
        .count() as u64;
    Ok(())
}

/// Publishes one 100-byte payload (carrying its send time) to `kind` through the router.
async fn publish(
    client: &mut HeraldClient<tonic::transport::Channel>,
    kind: target::Kind,
) -> anyhow::Result<()> {
    let mut req = tonic::Request::new(PublishRequest {
        project: PROJECT.into(),
        target: Some(ApiTarget { kind: Some(kind) }),
        payload: payload::payload(100),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", servers::API_KEY).parse()?,
    );
    client.publish(req).await.context("publish")?;
    Ok(())
}
