//! The orchestrator's side of the worker processes (`herald-bench million-worker`): starting
//! them with their share of the connections, their line protocol, and summing their reports.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use herald_sandbox::{Process, Stderr};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use super::MillionOpts;
use super::cluster::Run;
use super::layout::Layout;
use super::worker::WorkerReport;
use crate::workers;

/// A worker process and its line protocol.
pub(super) struct Worker {
    pub(super) proc: Process,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Its last answer to `report`.
    pub(super) last: WorkerReport,
}

impl Worker {
    /// Sends one command line (`go`, `report`, `halt`, `stop`).
    pub(super) async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    pub(super) async fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        while let Some(l) = self.lines.next_line().await? {
            if let Some(rest) = l.strip_prefix(prefix) {
                return Ok(rest.to_string());
            }
        }
        bail!("{} ended before '{prefix}'", self.proc.name())
    }

    /// Asks for a report and keeps it in `last`.
    pub(super) async fn report(&mut self) -> anyhow::Result<()> {
        self.send("report").await?;
        let body = tokio::time::timeout(Duration::from_secs(20), self.expect("report "))
            .await
            .with_context(|| format!("{} did not report within 20 s", self.proc.name()))??;
        self.last = serde_json::from_str(&body)?;
        Ok(())
    }
}

impl Run {
    /// Starts ⌈N / per-worker limit⌉ workers, each with an even share of the connections, the
    /// rate and the handshakes in flight (one tokio thread each).
    pub(super) async fn start_workers(
        &mut self,
        o: &MillionOpts,
        layout: Layout,
    ) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let n = o.connections.div_ceil(workers::per_worker_limit());
        let per = o.connections.div_ceil(n);
        let edges: Vec<String> = self
            .cluster
            .as_ref()
            .context("the cluster runs")?
            .edge_addrs()?
            .iter()
            .map(|a| a.to_string())
            .collect();
        for w in 0..n {
            let first = w * per;
            let count = per.min(o.connections - first);
            let mut cmd = Command::new(&exe);
            cmd.arg("million-worker")
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--edges", &edges.join(",")])
                .args(["--total", &layout.total.to_string()])
                .args(["--edge-count", &layout.edge_count.to_string()])
                .args(["--users", &layout.users.to_string()])
                .args(["--groups", &layout.groups.to_string()])
                .args(["--sample-every", &layout.sample_every.to_string()])
                .args(["--rate", &(o.rate as f64 / n as f64).to_string()])
                .args(["--inflight", &(o.inflight / n).max(8).to_string()])
                .args(["--sockbuf", &o.client_sockbuf.to_string()])
                .args([
                    "--connect-timeout-secs",
                    &o.connect_timeout_secs.to_string(),
                ])
                .env("TOKIO_WORKER_THREADS", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            let name = format!("worker-{w}");
            let log = Stderr::File(self.dir.join(format!("{name}.log")));
            let mut proc = Process::spawn(&name, &mut cmd, log, true)?;
            let stdout = proc.child_mut().stdout.take().context("stdout")?;
            let stdin = proc.child_mut().stdin.take().context("stdin")?;
            self.workers.push(Worker {
                proc,
                stdin,
                lines: BufReader::new(stdout).lines(),
                last: WorkerReport::default(),
            });
        }
        Ok(())
    }
}

/// Asks every worker for a report, all at once.
pub(super) async fn report_all(workers: &mut [Worker]) -> anyhow::Result<()> {
    let rs = futures_util::future::join_all(workers.iter_mut().map(|w| w.report())).await;
    rs.into_iter().collect()
}

/// Sums every worker's last report.
pub(super) fn total(workers: &[Worker], edges: usize) -> WorkerReport {
    let mut t = WorkerReport {
        per_edge_open: vec![0; edges],
        ..Default::default()
    };
    let mut buckets: BTreeMap<u32, u32> = BTreeMap::new();
    for w in workers {
        let r = &w.last;
        t.attempted += r.attempted;
        t.in_flight += r.in_flight;
        t.open += r.open;
        for (k, v) in &r.failed {
            *t.failed.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.dropped {
            *t.dropped.entry(k.clone()).or_default() += v;
        }
        for (e, v) in r.per_edge_open.iter().enumerate() {
            if let Some(x) = t.per_edge_open.get_mut(e) {
                *x += v;
            }
        }
        for m in 0..3 {
            t.expected[m] += r.expected[m];
            t.received[m] += r.received[m];
            t.never_connected[m] += r.never_connected[m];
        }
        t.duplicates += r.duplicates;
        t.bcast_missing_per_edge
            .resize(r.bcast_missing_per_edge.len(), 0);
        for (e, v) in r.bcast_missing_per_edge.iter().enumerate() {
            t.bcast_missing_per_edge[e] += v;
        }
        t.bcast_max_us = t.bcast_max_us.max(r.bcast_max_us);
        for (b, c) in &r.bcast_buckets {
            *buckets.entry(*b).or_default() += c;
        }
    }
    t.bcast_buckets = buckets.into_iter().collect();
    t
}
