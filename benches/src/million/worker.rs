//! The `million-worker` process: the client ends. It signs its tokens, says `ready`, connects at
//! its share of the rate on `go`, answers `report` with a [`WorkerReport`] line, stops
//! connecting on `halt` and exits on `stop`. A client end is the harness's one WebSocket client
//! ([`crate::client`]) speaking herald.v1 with small socket buffers and zero linger.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::PROJECT;
use super::layout::Layout;
use crate::client::herald::{Herald, find};
use crate::client::{Conn, Event, Hello, Target, source_ip};
use crate::payload::{now_ns, sent_at};
use crate::servers;

/// Width of a broadcast-latency bucket, in milliseconds.
pub(super) const BUCKET_MS: u64 = 10;
/// Buckets (the last one holds everything above).
const BUCKETS: usize = 12_001;

/// Options of `million-worker` (started by `million`, not by hand).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOpts {
    /// First connection index of this worker.
    #[arg(long)]
    pub(super) first: u64,
    /// Connections of this worker.
    #[arg(long)]
    pub(super) count: u64,
    /// The edges' WebSocket addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(super) edges: Vec<SocketAddr>,
    /// The user layout.
    #[command(flatten)]
    pub(super) layout: Layout,
    /// Connects per second of this worker.
    #[arg(long)]
    pub(super) rate: f64,
    /// Handshakes in flight at once.
    #[arg(long)]
    pub(super) inflight: u64,
    /// SO_RCVBUF / SO_SNDBUF of each socket (0: default).
    #[arg(long)]
    pub(super) sockbuf: usize,
    /// Connect deadline, seconds.
    #[arg(long)]
    pub(super) connect_timeout_secs: u64,
    /// Sign the tokens with ES256 with this PKCS#8 PEM private key (default: HS256 with the
    /// bench secret).
    #[arg(long)]
    pub(super) es256_key: Option<std::path::PathBuf>,
}

pub(super) const WELCOMED: u8 = 1;
pub(super) const GOT_BCAST: u8 = 2;
pub(super) const GOT_GROUP: u8 = 4;
pub(super) const GOT_USER: u8 = 8;
pub(super) const CLOSED: u8 = 16;

/// What one worker shares between its connections.
pub(super) struct Shared {
    pub(super) layout: Layout,
    pub(super) first: u64,
    pub(super) flags: Vec<AtomicU8>,
    pub(super) attempted: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) open: AtomicU64,
    pub(super) per_edge_open: Vec<AtomicU64>,
    pub(super) failed: Mutex<BTreeMap<String, u64>>,
    pub(super) dropped: Mutex<BTreeMap<String, u64>>,
    pub(super) duplicates: AtomicU64,
    pub(super) bcast_buckets: Vec<AtomicU32>,
    pub(super) bcast_max_us: AtomicU64,
    pub(super) halted: AtomicBool,
    pub(super) errors_shown: AtomicU64,
}

/// One worker's answer to `report`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Connections started.
    pub attempted: u64,
    /// Handshakes in flight.
    pub in_flight: u64,
    /// Connections open (welcomed, not closed).
    pub open: u64,
    /// Connects that failed, by cause.
    pub failed: BTreeMap<String, u64>,
    /// Connections closed after their welcome, by cause.
    pub dropped: BTreeMap<String, u64>,
    /// Open connections per edge.
    pub per_edge_open: Vec<u64>,
    /// Expected deliveries among connections that were welcomed: broadcast, group, user.
    pub expected: [u64; 3],
    /// Receivers that got each.
    pub received: [u64; 3],
    /// Expected receivers that never connected: broadcast, group, user.
    pub never_connected: [u64; 3],
    /// Welcomed connections without the broadcast, per edge.
    pub bcast_missing_per_edge: Vec<u64>,
    /// Messages received twice.
    pub duplicates: u64,
    /// Broadcast latency histogram: (bucket, count), `BUCKET_MS` wide.
    pub bcast_buckets: Vec<(u32, u32)>,
    /// Largest broadcast latency, microseconds.
    pub bcast_max_us: u64,
}

impl Shared {
    pub(super) fn fail(&self, cause: &str) {
        if let Ok(mut m) = self.failed.lock() {
            *m.entry(cause.to_string()).or_default() += 1;
        }
    }
    pub(super) fn report(&self) -> WorkerReport {
        let mut r = WorkerReport {
            attempted: self.attempted.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            failed: self.failed.lock().map(|m| m.clone()).unwrap_or_default(),
            dropped: self.dropped.lock().map(|m| m.clone()).unwrap_or_default(),
            per_edge_open: self
                .per_edge_open
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect(),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            bcast_max_us: self.bcast_max_us.load(Ordering::Relaxed),
            bcast_missing_per_edge: vec![0; self.per_edge_open.len()],
            ..Default::default()
        };
        for (k, f) in self.flags.iter().enumerate() {
            let i = self.first + k as u64;
            let f = f.load(Ordering::Relaxed);
            let member = [
                true,
                self.layout.in_group_message(i),
                self.layout.in_user_sample(i),
            ];
            let got = [f & GOT_BCAST != 0, f & GOT_GROUP != 0, f & GOT_USER != 0];
            if f & WELCOMED != 0
                && !got[0]
                && let Some(m) = r
                    .bcast_missing_per_edge
                    .get_mut(self.layout.edge(i) as usize)
            {
                *m += 1;
            }
            for m in 0..3 {
                if !member[m] {
                    continue;
                }
                if f & WELCOMED != 0 {
                    r.expected[m] += 1;
                    r.received[m] += got[m] as u64;
                } else {
                    r.never_connected[m] += 1;
                }
            }
        }
        r.bcast_buckets = self
            .bcast_buckets
            .iter()
            .enumerate()
            .filter_map(|(b, c)| {
                let c = c.load(Ordering::Relaxed);
                (c > 0).then_some((b as u32, c))
            })
            .collect();
        r
    }
}

/// Runs one worker: signs its tokens, says `ready`, connects on `go`, answers `report`.
pub async fn worker(o: WorkerOpts) -> anyhow::Result<()> {
    if o.edges.len() as u64 != o.layout.edge_count {
        bail!(
            "{} edge addresses for {} edges",
            o.edges.len(),
            o.layout.edge_count
        );
    }
    let (key, header) = match &o.es256_key {
        Some(path) => (
            jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(path)?)?,
            jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        ),
        None => (
            jsonwebtoken::EncodingKey::from_secret(servers::SECRET.as_bytes()),
            jsonwebtoken::Header::default(),
        ),
    };
    let exp = jsonwebtoken::get_current_timestamp() + 4 * 3600;
    // Tokens are signed before the clock starts.
    let mut tokens: Vec<String> = (o.first..o.first + o.count)
        .map(|i| {
            let claims = serde_json::json!({
                "sub": format!("u{}", o.layout.user(i)),
                "aud": PROJECT,
                "exp": exp,
                "groups": [format!("g{}", o.layout.group(i))],
            });
            jsonwebtoken::encode(&header, &claims, &key)
        })
        .collect::<Result<_, _>>()?;
    let sh = Arc::new(Shared {
        layout: o.layout,
        first: o.first,
        flags: (0..o.count).map(|_| AtomicU8::new(0)).collect(),
        attempted: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        open: AtomicU64::new(0),
        per_edge_open: (0..o.layout.edge_count)
            .map(|_| AtomicU64::new(0))
            .collect(),
        failed: Mutex::new(BTreeMap::new()),
        dropped: Mutex::new(BTreeMap::new()),
        duplicates: AtomicU64::new(0),
        bcast_buckets: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        bcast_max_us: AtomicU64::new(0),
        halted: AtomicBool::new(false),
        errors_shown: AtomicU64::new(0),
    });
    println!("ready");
    // Commands come on stdin, read by a thread (the harness's tokio has no io-std).
    let (tx, mut stdin) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        match stdin.recv().await {
            Some(l) if l == "go" => break,
            Some(_) => {}
            None => return Ok(()),
        }
    }
    let target = Arc::new(Target {
        server: o.edges[0],
        spread: o.edges.clone(),
        tls: None,
        sockbuf: o.sockbuf,
        zero_linger: true,
        deflate: false,
    });
    let connector = {
        let sh = sh.clone();
        let o = o.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut next = 0u64;
            while next < o.count && !sh.halted.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * o.rate) as u64).min(o.count);
                while next < due && sh.in_flight.load(Ordering::Relaxed) < o.inflight {
                    let i = o.first + next;
                    let token = std::mem::take(&mut tokens[next as usize]);
                    // The target spreads client i over the edges as the layout does (i mod E).
                    let edge = o.layout.edge(i);
                    sh.attempted.fetch_add(1, Ordering::Relaxed);
                    sh.in_flight.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(client(
                        sh.clone(),
                        target.clone(),
                        next as usize,
                        i,
                        edge as usize,
                        token,
                        Duration::from_secs(o.connect_timeout_secs),
                    ));
                    next += 1;
                }
            }
            drop(tokens);
        })
    };
    while let Some(line) = stdin.recv().await {
        match line.as_str() {
            "report" => println!("report {}", serde_json::to_string(&sh.report())?),
            "halt" => sh.halted.store(true, Ordering::Relaxed),
            "stop" => break,
            _ => {}
        }
    }
    connector.abort();
    // Exiting closes every socket (with RST: zero linger, so no TIME_WAIT is left behind).
    std::process::exit(0)
}

/// One client end: connect, upgrade, welcome, then count what arrives until the worker exits.
async fn client(
    sh: Arc<Shared>,
    target: Arc<Target>,
    k: usize,
    i: u64,
    edge: usize,
    token: String,
    timeout: Duration,
) {
    let mut on = |e: Event<'_>| {
        if let Event::Message(p) = e {
            message(&sh, k, p);
        }
    };
    let hello = Hello {
        project: PROJECT,
        token: &token,
        topic: None,
    };
    let hs = tokio::time::timeout(
        timeout,
        Conn::connect(&target, i, &hello, Herald::default(), &mut on),
    )
    .await;
    drop(token);
    sh.in_flight.fetch_sub(1, Ordering::Relaxed);
    let mut conn = match hs {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let label = e.label();
            if sh.errors_shown.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!(
                    "million-worker: connect to {} from {} failed: {label}",
                    target.server_for(i),
                    source_ip(i)
                );
            }
            sh.fail(&label);
            return;
        }
        Err(_) => {
            sh.fail("timeout (connect deadline)");
            return;
        }
    };
    sh.flags[k].fetch_or(WELCOMED, Ordering::Relaxed);
    sh.open.fetch_add(1, Ordering::Relaxed);
    sh.per_edge_open[edge].fetch_add(1, Ordering::Relaxed);
    let end = conn.serve(&mut on).await;
    sh.flags[k].fetch_or(CLOSED, Ordering::Relaxed);
    sh.open.fetch_sub(1, Ordering::Relaxed);
    sh.per_edge_open[edge].fetch_sub(1, Ordering::Relaxed);
    if let Ok(mut m) = sh.dropped.lock() {
        *m.entry(end.label()).or_default() += 1;
    }
}

/// Marks message `payload` (a herald.v1 `msg` frame) received by client `k`: by its kind,
/// counting duplicates, and the broadcast's latency from the send time it carries.
fn message(sh: &Shared, k: usize, payload: &[u8]) {
    if !payload.starts_with(br#"{"type":"msg""#) {
        return;
    }
    let Some(at) = find(payload, br#""kind":""#) else {
        return;
    };
    let bit = match payload.get(at + 8) {
        Some(b'b') => GOT_BCAST,
        Some(b'g') => GOT_GROUP,
        Some(b'u') => GOT_USER,
        _ => return,
    };
    let before = sh.flags[k].fetch_or(bit, Ordering::Relaxed);
    if before & bit != 0 {
        sh.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if bit == GOT_BCAST
        && let Some(t) = sent_at(payload)
    {
        let us = now_ns().saturating_sub(t) / 1000;
        sh.bcast_max_us.fetch_max(us, Ordering::Relaxed);
        let b = ((us / 1000 / BUCKET_MS) as usize).min(BUCKETS - 1);
        sh.bcast_buckets[b].fetch_add(1, Ordering::Relaxed);
    }
}
