//! `million --presence`: what `Presence` costs on the run's group `g0` once every connection is
//! open (with `--groups 1`, every connection is a member): a full presence in pages of 5,000, a
//! first page of 1,000 (it carries the totals), and the same-run peer, `ListConnections` of the
//! group in pages of 5,000; each with its wall time (median of `--presence-repeats`), reply bytes
//! (protobuf size) and the edges' and the router's CPU per query; and Redis memory per member
//! (`used_memory` with every connection open against the same before the first connect).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{ListConnectionsRequest, PresenceRequest, list_connections_request};
use prost::Message as _;
use serde::Serialize;
use tonic::transport::Channel;

use super::PROJECT;
use super::cluster::Run;
use crate::{proc_stats, servers};

/// The group measured.
const GROUP: &str = "g0";

/// One kind of query, repeated.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PresenceRow {
    pub(super) query: String,
    /// Calls (pages) one query takes.
    pub(super) pages: u32,
    /// Users (presence) or connections (listing) in one query's answers.
    pub(super) entries: u64,
    /// Wall time of one query: median, min and max over the repeats, ms.
    pub(super) wall_ms: [f64; 3],
    /// Protobuf bytes of one query's replies.
    pub(super) reply_bytes: u64,
    /// Every edge's CPU per query, ms.
    pub(super) edges_cpu_ms: f64,
    /// The router's CPU per query, ms.
    pub(super) router_cpu_ms: f64,
}

/// The presence figures of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct PresenceFigures {
    /// Members of `g0` (connections; one per user without second devices).
    pub(super) members: u64,
    /// `connections` and `users_total` as the first page answered.
    pub(super) connections: u64,
    pub(super) users_total: u64,
    pub(super) users_exact: bool,
    pub(super) rows: Vec<PresenceRow>,
    /// Redis `used_memory` before the first connect and with every connection open, bytes.
    pub(super) redis_used_before: u64,
    pub(super) redis_used_after: u64,
    /// Redis keys, the same two instants.
    pub(super) redis_keys_before: u64,
    pub(super) redis_keys_after: u64,
    /// (after - before) / members.
    pub(super) redis_bytes_per_member: f64,
}

/// Redis `used_memory` (bytes) and its key count.
pub(super) async fn redis_bytes(port: u16) -> (u64, u64) {
    let (mib, keys) = super::measure::redis_info(port).await;
    ((mib * 1048576.0).round() as u64, keys)
}

type Client = HeraldClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

/// Adds the bench project's API key.
#[derive(Clone)]
pub(super) struct Auth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// What one query answered: pages, entries, bytes, and the first page's totals.
struct Answer {
    pages: u32,
    entries: u64,
    bytes: u64,
    totals: (u64, u64, bool),
}

async fn presence(c: &mut Client, page_size: u32, all: bool) -> anyhow::Result<Answer> {
    let mut a = Answer {
        pages: 0,
        entries: 0,
        bytes: 0,
        totals: (0, 0, false),
    };
    let mut token = String::new();
    loop {
        let r = c
            .presence(PresenceRequest {
                project: PROJECT.into(),
                group: GROUP.into(),
                page_size,
                page_token: token,
            })
            .await
            .context("presence")?
            .into_inner();
        if !r.missing_edges.is_empty() {
            bail!("presence: edges did not answer: {:?}", r.missing_edges);
        }
        if a.pages == 0 {
            a.totals = (r.connections, r.users_total, r.users_exact);
        }
        a.pages += 1;
        a.entries += r.users.len() as u64;
        a.bytes += r.encoded_len() as u64;
        token = r.next_page_token;
        if token.is_empty() || !all {
            return Ok(a);
        }
    }
}

async fn listing(c: &mut Client) -> anyhow::Result<Answer> {
    let mut a = Answer {
        pages: 0,
        entries: 0,
        bytes: 0,
        totals: (0, 0, false),
    };
    let mut token = String::new();
    loop {
        let r = c
            .list_connections(ListConnectionsRequest {
                project: PROJECT.into(),
                of: Some(list_connections_request::Of::Group(GROUP.into())),
                page_size: 5_000,
                page_token: token,
            })
            .await
            .context("list connections")?
            .into_inner();
        a.pages += 1;
        a.entries += r.connections.len() as u64;
        a.bytes += r.encoded_len() as u64;
        token = r.next_page_token;
        if token.is_empty() {
            return Ok(a);
        }
    }
}

/// Runs the queries against the router with every connection open; fills `f.rows`.
pub(super) async fn measure(
    run: &Run,
    repeats: usize,
    members: u64,
    f: &mut PresenceFigures,
) -> anyhow::Result<()> {
    let cluster = run.cluster.as_ref().context("the cluster runs")?;
    let channel = Channel::from_shared(format!("http://{}", cluster.grpc()?))?
        .timeout(Duration::from_secs(120))
        .connect()
        .await?;
    let auth = Auth(format!("Bearer {}", servers::API_KEY).parse()?);
    let mut c = HeraldClient::with_interceptor(channel, auth)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let edge_pids: Vec<u32> = cluster.edges.iter().map(|e| e.pid()).collect();
    let router_pid = cluster.router.pid();
    let ticks = proc_stats::clock_ticks_per_sec() as f64;
    let cpu = |pids: &[u32]| -> u64 {
        pids.iter()
            .map(|&p| proc_stats::cpu_ticks(p).unwrap_or(0))
            .sum()
    };
    f.members = members;
    // Warm-up, and the totals.
    let a = presence(&mut c, 5_000, true).await?;
    (f.connections, f.users_total, f.users_exact) = a.totals;
    eprintln!(
        "million: presence of {GROUP}: {} users in {} pages; connections {}, users_total {} (exact {})",
        a.entries, a.pages, f.connections, f.users_total, f.users_exact
    );
    for (query, kind) in [
        ("full presence, pages of 5,000", 0),
        ("first presence page of 1,000 (with the totals)", 1),
        ("full presence, pages of 1,000", 2),
        ("peer: ListConnections of the group, pages of 5,000", 3),
    ] {
        let mut walls = Vec::with_capacity(repeats);
        let (e0, r0) = (cpu(&edge_pids), cpu(&[router_pid]));
        let mut last = None;
        for _ in 0..repeats {
            let t = Instant::now();
            let a = match kind {
                0 => presence(&mut c, 5_000, true).await?,
                1 => presence(&mut c, 1_000, false).await?,
                2 => presence(&mut c, 1_000, true).await?,
                _ => listing(&mut c).await?,
            };
            walls.push(t.elapsed().as_secs_f64() * 1e3);
            last = Some(a);
        }
        let a = last.context("at least one repeat")?;
        walls.sort_by(f64::total_cmp);
        let per = |t: u64| t as f64 / ticks * 1e3 / repeats as f64;
        let row = PresenceRow {
            query: query.into(),
            pages: a.pages,
            entries: a.entries,
            wall_ms: [walls[walls.len() / 2], walls[0], walls[walls.len() - 1]],
            reply_bytes: a.bytes,
            edges_cpu_ms: per(cpu(&edge_pids) - e0),
            router_cpu_ms: per(cpu(&[router_pid]) - r0),
        };
        eprintln!(
            "million: {query}: {} pages, {} entries, {:.1} ms (min {:.1}, max {:.1}), {} bytes, edges' CPU {:.0} ms, router's {:.0} ms",
            row.pages,
            row.entries,
            row.wall_ms[0],
            row.wall_ms[1],
            row.wall_ms[2],
            row.reply_bytes,
            row.edges_cpu_ms,
            row.router_cpu_ms
        );
        f.rows.push(row);
    }
    Ok(())
}

/// The figures as Markdown.
pub(super) fn markdown(f: &PresenceFigures, s: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\nPresence of `{GROUP}` ({} members; first page: connections {}, users_total {}, exact {}):\n",
        f.members, f.connections, f.users_total, f.users_exact
    );
    let _ = writeln!(
        s,
        "| query | pages | entries | wall ms median (min-max) | reply bytes | edges' CPU ms | router CPU ms |\n|---|---|---|---|---|---|---|"
    );
    for r in &f.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} ({:.1}-{:.1}) | {} | {:.0} | {:.0} |",
            r.query,
            r.pages,
            r.entries,
            r.wall_ms[0],
            r.wall_ms[1],
            r.wall_ms[2],
            r.reply_bytes,
            r.edges_cpu_ms,
            r.router_cpu_ms
        );
    }
    let _ = writeln!(
        s,
        "\nRedis: used_memory {} → {} bytes, keys {} → {}: {:.1} bytes per member.",
        f.redis_used_before,
        f.redis_used_after,
        f.redis_keys_before,
        f.redis_keys_after,
        f.redis_bytes_per_member
    );
}
