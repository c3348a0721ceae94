//! The orchestrator's side of the worker processes (`herald-bench million-worker`): their line
//! protocol, and summing their reports.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use herald_sandbox::Process;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use super::worker::WorkerReport;

/// A worker process and its line protocol.
pub(super) struct Worker {
    pub(super) proc: Process,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Its last answer to `report`.
    pub(super) last: WorkerReport,
}

impl Worker {
    /// Takes over a started worker process (its stdin and stdout piped).
    pub(super) fn new(mut proc: Process) -> anyhow::Result<Self> {
        let stdout = proc.child_mut().stdout.take().context("stdout")?;
        let stdin = proc.child_mut().stdin.take().context("stdin")?;
        Ok(Self {
            proc,
            stdin,
            lines: BufReader::new(stdout).lines(),
            last: WorkerReport::default(),
        })
    }

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
