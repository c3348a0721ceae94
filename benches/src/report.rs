//! The `fanout` scenario's results ([`FanoutResult`]): a JSON file, a Markdown table with ratios
//! against Herald, and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::servers::ServerKind;

/// The figures of one run against one server.
#[derive(Debug, Serialize)]
pub struct FanoutResult {
    /// Server.
    pub server: ServerKind,
    /// Subscribers on `wss`.
    pub tls: bool,
    /// Subscribers connected.
    pub subscribers: u64,
    /// Offered messages per second.
    pub rate: u64,
    /// Messages published.
    pub published: u64,
    /// Deliveries expected (published × subscribers).
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Expected but not received (lost, dropped or disconnected).
    pub missing: u64,
    /// Subscribers that failed to connect or were disconnected.
    pub client_errors: u64,
    /// Offered deliveries per second.
    pub offered_per_sec: f64,
    /// Achieved deliveries per second (over the publishing time plus drain).
    pub achieved_per_sec: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9, max.
    pub latency_ms: [f64; 5],
    /// Server CPU per delivery, microseconds.
    pub server_cpu_us_per_delivery: f64,
    /// Server write syscalls per delivery.
    pub server_writes_per_delivery: f64,
    /// Bytes the server wrote per delivery (`wchar`: frames and headers, TLS records on wss).
    #[serde(default)]
    pub server_bytes_per_delivery: f64,
    /// Server CPU use over the run, percent of one core.
    pub server_cpu_percent: f64,
    /// Harness CPU use over the run, percent of one core.
    pub harness_cpu_percent: f64,
    /// The client-side floor, part 1: CPU of the harness's own process (the publisher, which
    /// encodes and sends every message and reads its acknowledgement, and the counting) per
    /// message published, microseconds.
    #[serde(default)]
    pub publisher_cpu_us_per_message: f64,
    /// The client-side floor, part 2: CPU of the worker processes (the subscribers' reads,
    /// WebSocket decoding and latency histograms) per delivery, microseconds.
    #[serde(default)]
    pub clients_cpu_us_per_delivery: f64,
    /// Deliveries per second, second by second.
    pub timeline: Vec<u64>,
    /// The machine's load average (1, 5, 15 min) when the run started (a shared machine).
    pub load_avg: [f64; 3],
}

/// Writes `<name>.{json,md,svg}` into `dir` and prints the Markdown table.
pub fn write_fanout(dir: &Path, name: &str, results: &[FanoutResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let base = dir.join(name);
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    let md = markdown(name, results);
    std::fs::write(base.with_extension("md"), &md)?;
    std::fs::write(base.with_extension("svg"), svg(name, results))?;
    println!("{md}");
    Ok(())
}

fn markdown(name: &str, results: &[FanoutResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| {name} | delivered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | CPU µs/deliv | writes/deliv | bytes/deliv | missing | client errors | server CPU % | harness CPU % | publisher µs/msg | clients µs/deliv | load 1m |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let l = r.latency_ms;
        let _ = writeln!(
            s,
            "| {:?}{} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.3} | {:.1} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} |",
            r.server,
            if r.tls { " (wss)" } else { "" },
            r.achieved_per_sec,
            l[0],
            l[1],
            l[2],
            l[3],
            l[4],
            r.server_cpu_us_per_delivery,
            r.server_writes_per_delivery,
            r.server_bytes_per_delivery,
            r.missing,
            r.client_errors,
            r.server_cpu_percent,
            r.harness_cpu_percent,
            r.publisher_cpu_us_per_message,
            r.clients_cpu_us_per_delivery,
            r.load_avg[0]
        );
    }
    // Each Herald (native, MQTT or STOMP clients) against every other server of the run.
    for h in results.iter().filter(|r| {
        matches!(
            r.server,
            ServerKind::Herald
                | ServerKind::HeraldMqtt
                | ServerKind::HeraldStomp
                | ServerKind::HeraldDeflate
                | ServerKind::HeraldSse
        )
    }) {
        for r in results.iter().filter(|r| !std::ptr::eq(*r, h)) {
            let _ = writeln!(
                s,
                "\n{:?} vs {:?}: p99 {:.2}×, CPU per delivery {:.2}×, deliveries/s {:.2}× (below 1 is better for the first two)",
                h.server,
                r.server,
                h.latency_ms[2] / r.latency_ms[2].max(1e-9),
                h.server_cpu_us_per_delivery / r.server_cpu_us_per_delivery.max(1e-9),
                h.achieved_per_sec / r.achieved_per_sec.max(1e-9),
            );
        }
    }
    s
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Two panels: latency percentiles (log scale) and deliveries per second over time.
fn svg(name: &str, results: &[FanoutResult]) -> String {
    let (w, h) = (900.0, 360.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14">{name}</text>"#
    );
    // Left: grouped bars of p50, p90, p99, p99.9 on a log scale from 0.01 ms to 10 s.
    let (x0, y0, pw, ph) = (50.0, 40.0, 380.0, 270.0);
    let log = |v: f64| ((v.max(0.01)).log10() + 2.0) / 6.0;
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}">latency, ms (log)</text>"#,
        y0 - 6.0
    );
    for d in 0..=6 {
        let y = y0 + ph - ph * d as f64 / 6.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + pw,
            x0 - 4.0,
            y + 4.0,
            10f64.powi(d - 2)
        );
    }
    let labels = ["p50", "p90", "p99", "p99.9"];
    let group = pw / labels.len() as f64;
    let bw = group / (results.len() as f64 + 1.0);
    for (q, label) in labels.iter().enumerate() {
        let gx = x0 + group * q as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
            gx + group / 2.0,
            y0 + ph + 16.0
        );
        for (i, r) in results.iter().enumerate() {
            let bh = ph * log(r.latency_ms[q]);
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{}" height="{bh}" fill="{}"/>"#,
                gx + bw * (i as f64 + 0.5),
                y0 + ph - bh,
                bw * 0.9,
                COLORS[i % COLORS.len()]
            );
        }
    }
    // Right: deliveries per second, second by second.
    let (x1, pw2) = (500.0, 370.0);
    let max = results
        .iter()
        .flat_map(|r| r.timeline.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let secs = results
        .iter()
        .map(|r| r.timeline.len())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let _ = writeln!(
        s,
        r#"<text x="{x1}" y="{}">deliveries/s (max {max:.0})</text>"#,
        y0 - 6.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x1}" y="{y0}" width="{pw2}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for (i, r) in results.iter().enumerate() {
        let pts: Vec<String> = r
            .timeline
            .iter()
            .enumerate()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    x1 + pw2 * t as f64 / (secs - 1.0),
                    y0 + ph - ph * *v as f64 / max
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{}">{:?}</text>"#,
            x1 + 10.0,
            y0 + 16.0 + 14.0 * i as f64,
            COLORS[i % COLORS.len()],
            r.server
        );
    }
    s.push_str("</svg>\n");
    s
}
