//! What the run measures: system figures (memory, sockets, conntrack, load), the figures of the
//! run ([`MillionResult`]), and the limits that stop connecting.

use std::collections::BTreeMap;
use tokio::process::Command;

use serde::Serialize;

use super::MillionOpts;
use super::cluster::Run;
use super::kernel::{SysctlChange, conntrack_count, read_sysctl};
use super::layout::Layout;
use super::worker::{BUCKET_MS, WorkerReport};
use crate::proc_stats;

/// A field of /proc/meminfo, in KiB.
pub(super) fn meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The TCP line of /proc/net/sockstat: (inuse, tw, alloc, mem pages).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct Sockstat {
    pub(super) tcp_inuse: u64,
    pub(super) tcp_tw: u64,
    pub(super) tcp_alloc: u64,
    pub(super) tcp_mem_pages: u64,
}

/// The TCP line of /proc/net/sockstat.
pub(super) fn sockstat() -> Sockstat {
    let s = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let line = s.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| {
        f.iter()
            .position(|x| *x == k)
            .and_then(|i| f.get(i + 1)?.parse().ok())
            .unwrap_or(0)
    };
    Sockstat {
        tcp_inuse: get("inuse"),
        tcp_tw: get("tw"),
        tcp_alloc: get("alloc"),
        tcp_mem_pages: get("mem"),
    }
}

/// The kernel's memory figures that grow with sockets.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(super) struct KernelMem {
    pub(super) slab_kib: u64,
    pub(super) sunreclaim_kib: u64,
    pub(super) mem_available_kib: u64,
    pub(super) sockstat: Sockstat,
    pub(super) conntrack: Option<u64>,
}

/// The kernel's memory figures now.
pub(super) fn kernel_mem() -> KernelMem {
    KernelMem {
        slab_kib: meminfo_kib("Slab"),
        sunreclaim_kib: meminfo_kib("SUnreclaim"),
        mem_available_kib: meminfo_kib("MemAvailable"),
        sockstat: sockstat(),
        conntrack: conntrack_count(),
    }
}

/// The 1, 5 and 15 minute load averages.
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One second of the connect phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Sample {
    pub(super) secs: f64,
    pub(super) open: u64,
    pub(super) failed: u64,
    pub(super) in_flight: u64,
    pub(super) mem_available_mib: u64,
    pub(super) conntrack: Option<u64>,
}

/// One edge's figures.
#[derive(Debug, Clone, Serialize)]
pub(super) struct EdgeFigures {
    pub(super) id: String,
    pub(super) open: u64,
    pub(super) rss_kib_before: u64,
    pub(super) rss_kib: u64,
    pub(super) kib_per_connection: f64,
}

/// Deliveries of one message kind.
#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct Delivery {
    /// Messages published.
    pub(super) published: u64,
    /// Clients that were connected and should have received it.
    pub(super) expected: u64,
    /// Of them, those that received it.
    pub(super) received: u64,
    /// Expected but not received.
    pub(super) missing: u64,
    /// Would have been recipients but never connected.
    pub(super) never_connected: u64,
    /// Seconds from the (first) publish until the last expected receiver had it.
    pub(super) seconds_to_all: Option<f64>,
}

/// The figures of the run.
#[derive(Debug, Default, Serialize)]
pub(super) struct MillionResult {
    pub(super) date_utc: String,
    pub(super) command: String,
    pub(super) machine: String,
    pub(super) load_before: String,
    pub(super) load_after: String,
    pub(super) connections: u64,
    pub(super) edges: u64,
    pub(super) workers: u64,
    pub(super) offered_rate: u64,
    pub(super) layout: Option<Layout>,
    pub(super) connected: u64,
    pub(super) connect_seconds: f64,
    pub(super) connect_rate: f64,
    pub(super) failed: BTreeMap<String, u64>,
    pub(super) dropped: BTreeMap<String, u64>,
    pub(super) not_connected: u64,
    pub(super) limit_hit: Option<String>,
    pub(super) timeline: Vec<Sample>,
    pub(super) per_edge: Vec<EdgeFigures>,
    pub(super) edges_rss_mib: f64,
    /// The edges' proportional set size summed: the binary's shared pages counted once over all
    /// edges, not once per edge as in RSS.
    pub(super) edges_pss_mib: f64,
    pub(super) edges_kib_per_connection: f64,
    pub(super) router_rss_mib: f64,
    pub(super) nats_rss_mib: f64,
    pub(super) redis_rss_mib: f64,
    pub(super) redis_used_memory_mib: f64,
    pub(super) redis_keys: u64,
    pub(super) workers_rss_mib: f64,
    pub(super) workers_kib_per_connection: f64,
    pub(super) kernel_before: KernelMem,
    pub(super) kernel_after: KernelMem,
    /// Growth of Slab (KiB) per connection (two sockets, one conntrack entry).
    pub(super) kernel_slab_kib_per_connection: f64,
    pub(super) sysctls: Vec<SysctlChange>,
    pub(super) broadcast: Delivery,
    pub(super) broadcast_latency_ms: [f64; 4],
    /// Connected clients without the broadcast at the end, per edge.
    pub(super) broadcast_missing_per_edge: Vec<u64>,
    pub(super) group: Delivery,
    pub(super) user: Delivery,
    pub(super) sampled_users: u64,
    pub(super) sampled_users_with_two_devices: u64,
    pub(super) duplicates: u64,
    /// CPU by role in each phase (connect, idle hold, each message).
    pub(super) phases: Vec<super::cpu::PhaseCpu>,
    /// `--hold-secs`: connections closed while held idle, by close code.
    pub(super) closed_while_held: BTreeMap<String, u64>,
    /// `--presence`: the presence figures.
    pub(super) presence: Option<super::presence::PresenceFigures>,
    pub(super) seconds: f64,
    pub(super) error: Option<String>,
    /// Every process the run started (all ended when the result is written).
    pub(super) pids: Vec<u32>,
}

/// RSS of `pid` in MiB (0 once it is gone).
pub(super) fn rss_mib(pid: Option<u32>) -> f64 {
    pid.map_or(0.0, |p| proc_stats::rss_kib(p).unwrap_or(0) as f64 / 1024.0)
}

/// The limit the machine is closest to hitting, if one is hit.
pub(super) fn limit_reached(o: &MillionOpts, run: &mut Run) -> Option<String> {
    let avail = meminfo_kib("MemAvailable") / 1024;
    if avail < o.min_available_mib {
        return Some(format!(
            "memory: MemAvailable fell to {avail} MiB (below --min-available-mib {})",
            o.min_available_mib
        ));
    }
    if let (Some(c), Some(max)) = (
        conntrack_count(),
        read_sysctl("net.netfilter.nf_conntrack_max").and_then(|v| v.parse::<u64>().ok()),
    ) && c * 100 >= max * 98
    {
        return Some(format!(
            "conntrack: {c} entries of net.netfilter.nf_conntrack_max {max}"
        ));
    }
    for p in run.processes() {
        if let Some(st) = p.exited() {
            return Some(format!("{} exited ({st}){}", p.name(), p.log().hint()));
        }
    }
    None
}

/// The connect-failure cause that names a limit, if failures are more than incidental.
pub(super) fn failure_limit(t: &WorkerReport) -> Option<String> {
    let failed: u64 = t.failed.values().sum();
    if failed < 100 || failed * 100 < t.attempted {
        return None;
    }
    let (cause, n) = t.failed.iter().max_by_key(|(_, n)| **n)?;
    Some(format!(
        "{cause}: {n} connects failed so ({failed} failures of {} attempts)",
        t.attempted
    ))
}

/// Redis's `used_memory` (MiB) and key count.
pub(super) async fn redis_info(port: u16) -> (f64, u64) {
    let cli = |args: &[&str]| {
        let mut c = Command::new("redis-cli");
        c.args(["-p", &port.to_string()]).args(args);
        c
    };
    let mem = match cli(&["info", "memory"]).output().await {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0),
        Err(_) => 0,
    };
    let keys = match cli(&["dbsize"]).output().await {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        Err(_) => 0,
    };
    (mem as f64 / 1048576.0, keys)
}

/// p50, p99, p99.9 from the buckets, and the max (ms).
pub(super) fn percentiles(buckets: &[(u32, u32)], max_us: u64) -> [f64; 4] {
    let n: u64 = buckets.iter().map(|(_, c)| *c as u64).sum();
    let at = |q: f64| {
        let want = (n as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (b, c) in buckets {
            seen += *c as u64;
            if seen >= want {
                return ((*b as u64 + 1) * BUCKET_MS) as f64;
            }
        }
        0.0
    };
    [at(0.5), at(0.99), at(0.999), max_us as f64 / 1000.0]
}
