//! The `million` scenario: one million live, authenticated WebSocket connections on one machine,
//! against a real local cluster (edges, a router, redis-server, nats-server), then one broadcast,
//! one group message and a sample of user messages, each waited for until every client that
//! should receive it has it.
//!
//! The orchestrator (`herald-bench million`) raises the kernel settings the run needs (and says
//! so, and restores them afterwards, also on failure, Ctrl-C or SIGTERM), starts the cluster,
//! splits the client ends over worker processes (`herald-bench million-worker`, each under the
//! open-file limit), paces them to a steady connect rate, watches the limits it can hit (memory,
//! ports, file descriptors, conntrack) and stops naming the one hit, publishes through the
//! router's gRPC API and writes JSON, Markdown and SVG results.
//!
//! A client end is a task holding a socket, a few bytes of state and a normally empty `Vec`:
//! reads go into one buffer per thread, the upgrade request is written once and dropped, and the
//! client socket asks for small kernel buffers (`SO_RCVBUF`/`SO_SNDBUF`). Workers talk to the
//! orchestrator over stdin/stdout lines: `ready`, `go`, `report` → `report {json}`, `halt`,
//! `stop`.
//!
//! # Layout
//! - [`layout`]: who connection `i` is (edge, user, group) and which users are sampled.
//! - [`kernel`]: the kernel settings raised for the run and restored afterwards.
//! - [`cluster`]: everything the run starts (the cluster through `herald-sandbox`, the workers)
//!   and stopping it in order.
//! - [`fleet`]: the orchestrator's side of the workers: their line protocol and summed reports.
//! - [`worker`]: the `million-worker` process holding the client ends.
//! - [`scenario`]: connect, measure, publish, wait for every delivery.
//! - [`cpu`]: CPU time by role (edges, client ends, router, NATS, Redis) in each phase.
//! - [`measure`]: system figures, the run's figures and the limits that stop connecting.
//! - [`netns`]: `--netns`: the run again inside a network namespace of its own.
//! - [`presence`]: `--presence`: the `Presence` call on group `g0` with every connection open.
//! - [`report`]: JSON, Markdown and SVG results.

mod cluster;
mod cpu;
mod fleet;
mod kernel;
mod layout;
mod measure;
mod netns;
mod presence;
mod report;
mod scenario;
mod worker;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use crate::proc_stats;
use cluster::Run;
use kernel::Sysctls;
use layout::Layout;
use measure::{MillionResult, loadavg, meminfo_kib};

pub use worker::{WorkerOpts, worker};

/// The project every client connects to.
const PROJECT: &str = "million";

/// The tokens' signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Alg {
    /// HMAC with SHA-256 and the bench secret.
    Hs256,
    /// ECDSA P-256 with a key pair made for the run.
    Es256,
}

/// Options of `million`.
#[derive(Debug, Clone, clap::Args)]
pub struct MillionOpts {
    /// Client connections to open.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) connections: u64,
    /// Edge processes (connection i goes to edge i mod edges).
    #[arg(long, default_value_t = 53)]
    pub(super) edges: u64,
    /// Offered connects per second, over all workers.
    #[arg(long, default_value_t = 4_000)]
    pub(super) rate: u64,
    /// Handshakes in flight at once, over all workers.
    #[arg(long, default_value_t = 2_000)]
    pub(super) inflight: u64,
    /// Groups (connection i joins group `g<i mod groups>` by its token).
    #[arg(long, default_value_t = 100)]
    pub(super) groups: u64,
    /// Share of connections that are a user's second device, in percent.
    #[arg(long, default_value_t = 10)]
    pub(super) second_devices_percent: u64,
    /// Users addressed individually after the broadcast.
    #[arg(long, default_value_t = 1_000)]
    pub(super) user_sample: u64,
    /// SO_RCVBUF and SO_SNDBUF of each client socket, in bytes (0: the kernel's default).
    #[arg(long, default_value_t = 4_096)]
    pub(super) client_sockbuf: usize,
    /// The edges' `ping_interval_secs` (default: Herald's own, 25 s).
    #[arg(long)]
    pub(super) ping_interval_secs: Option<u64>,
    /// The nodes' `cluster.redis_timeout_ms` (default: Herald's own, 3,000 ms).
    #[arg(long)]
    pub(super) redis_timeout_ms: Option<u64>,
    /// The nodes' `cluster.edge_ttl_secs` (default: Herald's own, 15 s).
    #[arg(long)]
    pub(super) edge_ttl_secs: Option<u64>,
    /// Deadline of one connection's TCP connect, upgrade and welcome, in seconds.
    #[arg(long, default_value_t = 30)]
    pub(super) connect_timeout_secs: u64,
    /// How long to wait for every delivery of a message, in seconds.
    #[arg(long, default_value_t = 120)]
    pub(super) deliver_timeout_secs: u64,
    /// Deadline of the whole run, in seconds (connecting stops early enough to report in time).
    #[arg(long, default_value_t = 1_140)]
    pub(super) max_secs: u64,
    /// Stop connecting when MemAvailable falls below this many MiB.
    #[arg(long, default_value_t = 1_024)]
    pub(super) min_available_mib: u64,
    /// Do not touch kernel settings (fails if one is too low for the run).
    #[arg(long)]
    pub(super) no_sysctl: bool,
    /// Run everything (cluster, client ends) in a network namespace of its own, made for the
    /// run with its own TCP established-connection hash table sized for two sockets per
    /// connection (`net.ipv4.tcp_child_ehash_entries`; the host's table, sized at boot, gives
    /// long chains at a million connections), its own port range and loopback. The host's
    /// kernel settings are raised and restored outside it; the namespace is deleted afterwards.
    #[arg(long)]
    pub(super) netns: bool,
    /// Where the saved kernel settings are kept while raised (`path value` lines), so a wrapper
    /// can restore them should this process be killed.
    #[arg(long)]
    pub(super) sysctl_save: Option<PathBuf>,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    pub(super) herald_bin: Option<PathBuf>,
    /// With every connection open, measure `Presence` of group `g0` (every connection a member
    /// with `--groups 1`) against `ListConnections` of it, and Redis memory per member, before
    /// publishing.
    #[arg(long)]
    pub(super) presence: bool,
    /// The nice value of redis-server and nats-server (0: leave them as started). On this
    /// box they share 2 cores with ~104 processes of the run, where a deployment gives them
    /// cores of their own; at the default ping interval a million connections keep the machine
    /// 100 % busy, and a fair share starved Redis until live edges' renewals came too late.
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    pub(super) backend_nice: i32,
    /// How the client ends sign their tokens: `hs256` (a shared secret, as most deployments
    /// start) or `es256` (a P-256 key pair made for the run; the edges verify with its public
    /// key, about 30 times the CPU of HS256 per verification).
    #[arg(long, value_enum, default_value_t = Alg::Hs256)]
    pub(super) alg: Alg,
    /// With every connection open, hold them idle this many seconds before publishing and
    /// report what the keepalive cost each side (pings sent by the edges, pongs by the client
    /// ends) and the connections closed meanwhile.
    #[arg(long, default_value_t = 0)]
    pub(super) hold_secs: u64,
    /// Repeats of each presence query (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub(super) presence_repeats: usize,
    /// The router's `control_timeout_ms` (how long a listing or presence page waits for edges).
    #[arg(long, default_value_t = 10_000)]
    pub(super) control_timeout_ms: u64,
    /// Directory for the JSON, Markdown and SVG results.
    #[arg(long, default_value = "benches/results")]
    pub(super) out: PathBuf,
}

/// Runs the scenario: everything it starts ends and every kernel setting comes back, whatever
/// happens; the results are written even when the run stopped at a limit.
pub async fn run(o: MillionOpts) -> anyhow::Result<()> {
    let started = Instant::now();
    let layout = Layout::new(&o);
    let fd_limit = proc_stats::open_files_limit();
    let per_edge = o.connections.div_ceil(o.edges.max(1));
    if per_edge + 300 > fd_limit {
        bail!(
            "fds: {per_edge} connections per edge need more open files than a process may have \
             ({fd_limit}); use more --edges"
        );
    }
    // Measured on this machine: about 14 KiB per connection all told (two sockets and their
    // files, a conntrack entry, the edge's and the client's state); ask for that plus a margin.
    let need_mib = o.connections * 14 / 1024 + o.min_available_mib;
    let avail_mib = meminfo_kib("MemAvailable") / 1024;
    if need_mib > avail_mib {
        bail!(
            "memory: {} connections need about {need_mib} MiB, MemAvailable is {avail_mib} MiB",
            o.connections
        );
    }
    let dir = std::env::temp_dir().join(format!("herald-million-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut sysctls = Sysctls::raise(o.connections, o.no_sysctl, o.sysctl_save.clone())?;
    if o.netns {
        let outcome = netns::run_inside(o.connections).await;
        sysctls.restore();
        let _ = std::fs::remove_dir_all(&dir);
        return outcome;
    }
    let mut run = Run {
        dir: dir.clone(),
        ..Default::default()
    };
    let mut result = MillionResult {
        date_utc: date_utc(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: format!(
            "{} cores, {:.1} GiB",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            meminfo_kib("MemTotal") as f64 / 1048576.0
        ),
        load_before: loadavg(),
        connections: o.connections,
        edges: o.edges,
        offered_rate: o.rate,
        layout: Some(layout),
        sysctls: sysctls.changes.clone(),
        ..Default::default()
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        r = tokio::time::timeout(
            Duration::from_secs(o.max_secs),
            scenario::scenario(&o, layout, &mut run, &mut result),
        ) => r.unwrap_or_else(|_| Err(anyhow!("deadline: the run took longer than --max-secs {}", o.max_secs))),
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
        _ = sigterm.recv() => Err(anyhow!("interrupted (SIGTERM)")),
    };
    result.load_after = loadavg();
    if let Err(e) = &outcome {
        eprintln!("million: {e:#}");
        result.error = Some(format!("{e:#}"));
    }
    result.pids = run.processes().iter().map(|p| p.pid()).collect();
    eprintln!("million: stopping workers, edges, router, nats-server and redis-server");
    run.shutdown().await;
    sysctls.restore();
    result.seconds = started.elapsed().as_secs_f64();
    if result.timeline.is_empty() && outcome.is_err() {
        return outcome;
    }
    report::write_results(&o.out, &result)?;
    outcome?;
    let lost = result.not_connected
        + result.broadcast.missing
        + result.group.missing
        + result.user.missing
        + result.dropped.values().sum::<u64>();
    if let Some(l) = &result.limit_hit {
        bail!("stopped at a limit: {l}");
    }
    if lost > 0 {
        bail!(
            "not everything connected or arrived: {} not connected, {} dropped, missing {} broadcast, {} group, {} user deliveries",
            result.not_connected,
            result.dropped.values().sum::<u64>(),
            result.broadcast.missing,
            result.group.missing,
            result.user.missing
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Now, UTC, to the minute.
fn date_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
