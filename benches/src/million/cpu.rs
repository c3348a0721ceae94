//! Where the CPU goes in each phase of the run: CPU time of the edges, the client ends (worker
//! processes), the router, nats-server, redis-server and this orchestrator, beside the whole
//! machine's busy time (`/proc/stat`, which also holds other processes and interrupts), so a
//! figure such as "connects per second" or "time to the last broadcast receiver" comes with what
//! each side spent on it.

use std::time::Instant;

use serde::Serialize;

use super::cluster::Run;
use crate::proc_stats;

/// The roles whose CPU is counted, in report order.
pub(super) const ROLES: [&str; 6] = ["edges", "clients", "router", "nats", "redis", "harness"];

/// CPU ticks of every role and of the machine at one instant.
pub(super) struct Mark {
    at: Instant,
    ticks: [u64; ROLES.len()],
    machine_busy: u64,
    machine_softirq: u64,
}

impl Mark {
    /// Reads every process of the run now (a process already gone counts 0).
    pub(super) fn take(run: &Run) -> Self {
        let sum = |pids: &mut dyn Iterator<Item = u32>| -> u64 {
            pids.map(|p| proc_stats::cpu_ticks(p).unwrap_or(0)).sum()
        };
        let mut ticks = [0u64; ROLES.len()];
        ticks[1] = sum(&mut run.workers.iter().map(|w| w.proc.pid()));
        if let Some(c) = &run.cluster {
            ticks[0] = sum(&mut c.edges.iter().map(|e| e.pid()));
            ticks[2] = sum(&mut std::iter::once(c.router.pid()));
            ticks[3] = sum(&mut c.backends.nats.iter().filter_map(|n| n.pid()));
            ticks[4] = sum(&mut c.backends.redis.iter().filter_map(|r| r.pid()));
        }
        ticks[5] = proc_stats::cpu_ticks(std::process::id()).unwrap_or(0);
        let (machine_busy, machine_softirq) = machine_ticks();
        Self {
            at: Instant::now(),
            ticks,
            machine_busy,
            machine_softirq,
        }
    }

    /// The phase from this mark until now.
    pub(super) fn phase(&self, run: &Run, name: &str, events: u64, event: &str) -> PhaseCpu {
        let now = Self::take(run);
        let hz = proc_stats::clock_ticks_per_sec() as f64;
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz;
        let wall = now.at.duration_since(self.at).as_secs_f64();
        PhaseCpu {
            name: name.to_string(),
            wall_secs: wall,
            events,
            event: event.to_string(),
            cpu_secs: std::array::from_fn(|i| secs(self.ticks[i], now.ticks[i])),
            machine_busy_secs: secs(self.machine_busy, now.machine_busy),
            machine_softirq_secs: secs(self.machine_softirq, now.machine_softirq),
            capacity_secs: wall
                * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        }
    }
}

/// CPU spent by each role over one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct PhaseCpu {
    pub(super) name: String,
    pub(super) wall_secs: f64,
    /// What happened in the phase, counted (connects, pings, deliveries).
    pub(super) events: u64,
    pub(super) event: String,
    /// CPU seconds (user + system) per role, in the order of [`ROLES`].
    pub(super) cpu_secs: [f64; ROLES.len()],
    /// The machine's busy CPU seconds (everything but idle and iowait), other processes included.
    pub(super) machine_busy_secs: f64,
    /// Of it, in softirq outside any process (not in the roles' figures).
    pub(super) machine_softirq_secs: f64,
    /// Cores × wall time.
    pub(super) capacity_secs: f64,
}

impl PhaseCpu {
    /// CPU microseconds of role `i` per event.
    pub(super) fn us_per_event(&self, i: usize) -> f64 {
        self.cpu_secs[i] * 1e6 / self.events.max(1) as f64
    }

    /// The machine's busy time not in any role: other processes and interrupts.
    pub(super) fn others_secs(&self) -> f64 {
        (self.machine_busy_secs - self.cpu_secs.iter().sum::<f64>()).max(0.0)
    }
}

/// The machine's busy and softirq ticks from the first line of `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let total: u64 = (0..8).map(get).sum();
    (total - get(3) - get(4), get(6))
}

/// The phases as a Markdown table: CPU seconds per role, and microseconds per event for the
/// edges and the client ends.
pub(super) fn markdown(phases: &[PhaseCpu], s: &mut String) {
    use std::fmt::Write as _;
    if phases.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nCPU seconds by role in each phase (user + system from /proc; `others` is the machine's busy \
         time outside these processes: other programs and interrupts):\n"
    );
    let _ = writeln!(
        s,
        "| phase | wall s | events | {} | others | machine busy | edges µs/event | clients µs/event |",
        ROLES.join(" | ")
    );
    let _ = writeln!(
        s,
        "|---|---|---|{}---|---|---|---|",
        "---|".repeat(ROLES.len())
    );
    for p in phases {
        let cpu: Vec<String> = p.cpu_secs.iter().map(|c| format!("{c:.1}")).collect();
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} {} | {} | {:.1} | {:.0} % | {:.1} | {:.1} |",
            p.name,
            p.wall_secs,
            super::report::fmt_n(p.events),
            p.event,
            cpu.join(" | "),
            p.others_secs(),
            100.0 * p.machine_busy_secs / p.capacity_secs.max(1e-9),
            p.us_per_event(0),
            p.us_per_event(1)
        );
    }
}
