//! The run's JSON, Markdown and SVG results.

use std::fmt::Write as _;
use std::path::Path;

use super::measure::{Delivery, MillionResult};

pub(super) fn write_results(dir: &Path, r: &MillionResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let base = dir.join(format!("million-{}", r.connections));
    std::fs::write(base.with_extension("json"), serde_json::to_vec_pretty(r)?)?;
    let md = markdown(r);
    std::fs::write(base.with_extension("md"), &md)?;
    std::fs::write(base.with_extension("svg"), svg(r))?;
    println!("{md}");
    eprintln!("million: results in {}.{{json,md,svg}}", base.display());
    Ok(())
}

pub(super) fn delivery_row(s: &mut String, name: &str, d: &Delivery) {
    let _ = writeln!(
        s,
        "| {name} | {} | {} | {} | **{}** | {} | {} |",
        d.published,
        fmt_n(d.expected),
        fmt_n(d.received),
        fmt_n(d.missing),
        fmt_n(d.never_connected),
        d.seconds_to_all
            .map_or("not all".into(), |t| format!("{t:.2} s"))
    );
}

pub(super) fn markdown(r: &MillionResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### million: {} connections, {} edges ({} UTC)\n",
        fmt_n(r.connections),
        r.edges,
        r.date_utc
    );
    let _ = writeln!(
        s,
        "Command: `{}`; machine {}; load average before {}, after {}.\n",
        r.command, r.machine, r.load_before, r.load_after
    );
    if let Some(e) = &r.error {
        let _ = writeln!(s, "**The run failed: {e}**\n");
    }
    if let Some(l) = &r.limit_hit {
        let _ = writeln!(s, "**Connecting stopped at a limit: {l}**\n");
    }
    let _ = writeln!(s, "| figure | value |\n|---|---|");
    let rows: Vec<(&str, String)> = vec![
        (
            "connected",
            format!("{} of {}", fmt_n(r.connected), fmt_n(r.connections)),
        ),
        ("not connected", fmt_n(r.not_connected)),
        ("connect failures", format!("{:?}", r.failed)),
        ("closed after connecting", format!("{:?}", r.dropped)),
        (
            "time to connect",
            format!(
                "{:.1} s ({:.0}/s; offered {}/s)",
                r.connect_seconds, r.connect_rate, r.offered_rate
            ),
        ),
        ("worker processes (client ends)", r.workers.to_string()),
        (
            "edges RSS, total",
            format!(
                "{:.0} MiB ({:.2} KiB per connection above the idle edges)",
                r.edges_rss_mib, r.edges_kib_per_connection
            ),
        ),
        (
            "edges PSS, total (shared pages counted once)",
            format!("{:.0} MiB", r.edges_pss_mib),
        ),
        (
            "edge open connections min / max",
            format!(
                "{} / {}",
                fmt_n(r.per_edge.iter().map(|e| e.open).min().unwrap_or(0)),
                fmt_n(r.per_edge.iter().map(|e| e.open).max().unwrap_or(0))
            ),
        ),
        (
            "edge RSS min / max",
            format!(
                "{:.1} / {:.1} MiB",
                r.per_edge.iter().map(|e| e.rss_kib).min().unwrap_or(0) as f64 / 1024.0,
                r.per_edge.iter().map(|e| e.rss_kib).max().unwrap_or(0) as f64 / 1024.0
            ),
        ),
        ("router RSS", format!("{:.1} MiB", r.router_rss_mib)),
        ("nats-server RSS", format!("{:.1} MiB", r.nats_rss_mib)),
        (
            "Redis",
            format!(
                "used_memory {:.1} MiB, RSS {:.1} MiB, {} keys",
                r.redis_used_memory_mib,
                r.redis_rss_mib,
                fmt_n(r.redis_keys)
            ),
        ),
        (
            "harness (client ends) RSS",
            format!(
                "{:.0} MiB ({:.2} KiB per connection)",
                r.workers_rss_mib, r.workers_kib_per_connection
            ),
        ),
        (
            "kernel Slab growth",
            format!(
                "{:.0} MiB ({:.2} KiB per connection: two sockets, files, a conntrack entry)",
                r.kernel_after
                    .slab_kib
                    .saturating_sub(r.kernel_before.slab_kib) as f64
                    / 1024.0,
                r.kernel_slab_kib_per_connection
            ),
        ),
        (
            "/proc/net/sockstat TCP",
            format!(
                "inuse {} alloc {} tw {} mem {} pages ({:.1} MiB)",
                fmt_n(r.kernel_after.sockstat.tcp_inuse),
                fmt_n(r.kernel_after.sockstat.tcp_alloc),
                fmt_n(r.kernel_after.sockstat.tcp_tw),
                fmt_n(r.kernel_after.sockstat.tcp_mem_pages),
                r.kernel_after.sockstat.tcp_mem_pages as f64 * 4.0 / 1024.0
            ),
        ),
        (
            "MemAvailable before / connected",
            format!(
                "{:.1} / {:.1} GiB",
                r.kernel_before.mem_available_kib as f64 / 1048576.0,
                r.kernel_after.mem_available_kib as f64 / 1048576.0
            ),
        ),
        (
            "conntrack entries",
            r.kernel_after.conntrack.map_or("not loaded".into(), fmt_n),
        ),
        (
            "broadcast latency p50 / p99 / p99.9 / max",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} ms",
                r.broadcast_latency_ms[0],
                r.broadcast_latency_ms[1],
                r.broadcast_latency_ms[2],
                r.broadcast_latency_ms[3]
            ),
        ),
        (
            "sampled users (with two devices)",
            format!("{} ({})", r.sampled_users, r.sampled_users_with_two_devices),
        ),
        ("duplicates received", r.duplicates.to_string()),
        ("run time", format!("{:.0} s", r.seconds)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(
        s,
        "\n| message | published | expected receivers | received | missing | never connected | publish → last receiver |\n|---|---|---|---|---|---|---|"
    );
    delivery_row(&mut s, "broadcast", &r.broadcast);
    delivery_row(&mut s, "group g0", &r.group);
    delivery_row(&mut s, "user (sample)", &r.user);
    super::cpu::markdown(&r.phases, &mut s);
    if !r.closed_while_held.is_empty() {
        let _ = writeln!(
            s,
            "\nClosed while held idle, by close code: {:?}",
            r.closed_while_held
        );
    }
    let missing: Vec<String> = r
        .broadcast_missing_per_edge
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(e, n)| format!("e{e}: {}", fmt_n(*n)))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            s,
            "\nConnected clients without the broadcast, per edge: {}",
            missing.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\n| kernel setting | before | during | why |\n|---|---|---|---|"
    );
    for c in &r.sysctls {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.name, c.before, c.during, c.why
        );
    }
    if let Some(p) = &r.presence {
        super::presence::markdown(p, &mut s);
    }
    s
}

/// Two panels: connections open and connects/s over time; RSS and connections per edge.
pub(super) fn svg(r: &MillionResult) -> String {
    let (w, h) = (960.0, 380.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14">million: {} of {} connected, {} edges ({} UTC)</text>"#,
        fmt_n(r.connected),
        fmt_n(r.connections),
        r.edges,
        r.date_utc
    );
    let (x0, y0, pw, ph) = (60.0, 50.0, 400.0, 280.0);
    let secs = r.timeline.last().map_or(1.0, |t| t.secs).max(1.0);
    let max_open = r.connections.max(1) as f64;
    let rates: Vec<f64> = r
        .timeline
        .windows(2)
        .map(|p| (p[1].open as f64 - p[0].open as f64) / (p[1].secs - p[0].secs).max(1e-3))
        .collect();
    let max_rate = rates.iter().cloned().fold(1.0, f64::max);
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/><text x="{x0}" y="{}">connections open (blue, max {}) and connects/s (red, max {:.0}) over {:.0} s</text>"##,
        y0 - 8.0,
        fmt_n(r.connections),
        max_rate,
        secs
    );
    let line = |pts: Vec<(f64, f64)>, color: &str| {
        let p: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", x0 + pw * x, y0 + ph - ph * y))
            .collect();
        format!(
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            p.join(" ")
        )
    };
    let _ = writeln!(
        s,
        "{}",
        line(
            r.timeline
                .iter()
                .map(|t| (t.secs / secs, t.open as f64 / max_open))
                .collect(),
            "#1f77b4"
        )
    );
    let _ = writeln!(
        s,
        "{}",
        line(
            r.timeline
                .iter()
                .skip(1)
                .zip(&rates)
                .map(|(t, v)| (t.secs / secs, v / max_rate))
                .collect(),
            "#d62728"
        )
    );
    // Right: per edge, RSS (bars) and connections (dots).
    let (x1, pw2) = (520.0, 400.0);
    let max_rss = r
        .per_edge
        .iter()
        .map(|e| e.rss_kib)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_conn = r.per_edge.iter().map(|e| e.open).max().unwrap_or(1).max(1) as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{x1}" y="{y0}" width="{pw2}" height="{ph}" fill="none" stroke="#999"/><text x="{x1}" y="{}">per edge: RSS (bars, max {:.0} MiB), connections (dots, max {})</text>"##,
        y0 - 8.0,
        max_rss / 1024.0,
        fmt_n(max_conn as u64)
    );
    let n = r.per_edge.len().max(1) as f64;
    let bw = pw2 / n;
    for (i, e) in r.per_edge.iter().enumerate() {
        let bh = ph * e.rss_kib as f64 / max_rss;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#9ecae1"/><circle cx="{:.1}" cy="{:.1}" r="2" fill="#2ca02c"/>"##,
            x1 + bw * i as f64,
            y0 + ph - bh,
            (bw * 0.85).max(1.0),
            x1 + bw * (i as f64 + 0.45),
            y0 + ph - ph * e.open as f64 / max_conn
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}">broadcast to all: {} · missing: broadcast {}, group {}, user {} · not connected {}</text>"#,
        y0 + ph + 30.0,
        r.broadcast
            .seconds_to_all
            .map_or("not all".into(), |t| format!("{t:.2} s")),
        r.broadcast.missing,
        r.group.missing,
        r.user.missing,
        r.not_connected
    );
    s.push_str("</svg>\n");
    s
}

/// `1234567` as `1,234,567`.
pub(super) fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
