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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use herald_core::proto::v1::herald_client::HeraldClient;
use herald_core::proto::v1::{Broadcast, PublishRequest, Target as ApiTarget, target};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::{clients, proc_stats, servers, workers};

/// The project every client connects to.
const PROJECT: &str = "million";
/// Width of a broadcast-latency bucket, in milliseconds.
const BUCKET_MS: u64 = 10;
/// Buckets (the last one holds everything above).
const BUCKETS: usize = 12_001;

/// Options of `million`.
#[derive(Debug, Clone, clap::Args)]
pub struct MillionOpts {
    /// Client connections to open.
    #[arg(long, default_value_t = 1_000_000)]
    connections: u64,
    /// Edge processes (connection i goes to edge i mod edges).
    #[arg(long, default_value_t = 53)]
    edges: u64,
    /// Offered connects per second, over all workers.
    #[arg(long, default_value_t = 4_000)]
    rate: u64,
    /// Handshakes in flight at once, over all workers.
    #[arg(long, default_value_t = 2_000)]
    inflight: u64,
    /// Groups (connection i joins group `g<i mod groups>` by its token).
    #[arg(long, default_value_t = 100)]
    groups: u64,
    /// Share of connections that are a user's second device, in percent.
    #[arg(long, default_value_t = 10)]
    second_devices_percent: u64,
    /// Users addressed individually after the broadcast.
    #[arg(long, default_value_t = 1_000)]
    user_sample: u64,
    /// SO_RCVBUF and SO_SNDBUF of each client socket, in bytes (0: the kernel's default).
    #[arg(long, default_value_t = 4_096)]
    client_sockbuf: usize,
    /// The edges' `ping_interval_secs`.
    #[arg(long, default_value_t = 600)]
    ping_interval_secs: u64,
    /// The nodes' `cluster.redis_timeout_ms` (a single Redis serving 53 edges on a saturated
    /// 2-core machine answers slowly; a heartbeat that times out makes an edge resync).
    #[arg(long, default_value_t = 10_000)]
    redis_timeout_ms: u64,
    /// The nodes' `cluster.edge_ttl_secs`.
    #[arg(long, default_value_t = 60)]
    edge_ttl_secs: u64,
    /// Deadline of one connection's TCP connect, upgrade and welcome, in seconds.
    #[arg(long, default_value_t = 30)]
    connect_timeout_secs: u64,
    /// How long to wait for every delivery of a message, in seconds.
    #[arg(long, default_value_t = 120)]
    deliver_timeout_secs: u64,
    /// Deadline of the whole run, in seconds (connecting stops early enough to report in time).
    #[arg(long, default_value_t = 1_140)]
    max_secs: u64,
    /// Stop connecting when MemAvailable falls below this many MiB.
    #[arg(long, default_value_t = 1_024)]
    min_available_mib: u64,
    /// Do not touch kernel settings (fails if one is too low for the run).
    #[arg(long)]
    no_sysctl: bool,
    /// Where the saved kernel settings are kept while raised (`path value` lines), so a wrapper
    /// can restore them should this process be killed.
    #[arg(long)]
    sysctl_save: Option<PathBuf>,
    /// The herald binary (default: next to this one).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// Directory for the JSON, Markdown and SVG results.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
}

/// Options of `million-worker` (started by `million`, not by hand).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOpts {
    /// First connection index of this worker.
    #[arg(long)]
    first: u64,
    /// Connections of this worker.
    #[arg(long)]
    count: u64,
    /// The edges' WebSocket addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    edges: Vec<SocketAddr>,
    /// The user layout.
    #[command(flatten)]
    layout: Layout,
    /// Connects per second of this worker.
    #[arg(long)]
    rate: f64,
    /// Handshakes in flight at once.
    #[arg(long)]
    inflight: u64,
    /// SO_RCVBUF / SO_SNDBUF of each socket (0: default).
    #[arg(long)]
    sockbuf: usize,
    /// Connect deadline, seconds.
    #[arg(long)]
    connect_timeout_secs: u64,
}

/// Who connection `i` is: its edge, user and group; who the sampled users are.
#[derive(Debug, Clone, Copy, clap::Args, Serialize)]
pub struct Layout {
    /// Connections in the run.
    #[arg(long)]
    total: u64,
    /// Edges.
    #[arg(long = "edge-count")]
    edge_count: u64,
    /// Users: connection i is user `u<i mod users>`, so connections `users..total` are second
    /// devices, on another edge (users is never a multiple of the edge count).
    #[arg(long)]
    users: u64,
    /// Groups.
    #[arg(long)]
    groups: u64,
    /// Every `sample_every`-th user gets a user message.
    #[arg(long)]
    sample_every: u64,
}

impl Layout {
    fn new(o: &MillionOpts) -> Self {
        let second = o.connections * o.second_devices_percent.min(50) / 100;
        let mut users = (o.connections - second).max(1);
        if o.edges > 1 && users.is_multiple_of(o.edges) && users < o.connections {
            users += 1;
        }
        Self {
            total: o.connections,
            edge_count: o.edges.max(1),
            users,
            groups: o.groups.max(1),
            sample_every: (users / o.user_sample.max(1)).max(1),
        }
    }
    fn edge(&self, i: u64) -> u64 {
        i % self.edge_count
    }
    fn user(&self, i: u64) -> u64 {
        i % self.users
    }
    fn group(&self, i: u64) -> u64 {
        i % self.groups
    }
    /// Whether connection i should receive the group message (to `g0`).
    fn in_group_message(&self, i: u64) -> bool {
        self.group(i) == 0
    }
    /// Whether connection i's user gets a user message.
    fn in_user_sample(&self, i: u64) -> bool {
        self.user(i).is_multiple_of(self.sample_every)
    }
    /// The sampled users.
    fn sample(&self) -> impl Iterator<Item = u64> {
        (0..self.users).step_by(self.sample_every as usize)
    }
}

// ---------------------------------------------------------------------------------------------
// Worker: the client ends.

const WELCOMED: u8 = 1;
const GOT_BCAST: u8 = 2;
const GOT_GROUP: u8 = 4;
const GOT_USER: u8 = 8;
const CLOSED: u8 = 16;

/// What one worker shares between its connections.
struct Shared {
    layout: Layout,
    first: u64,
    flags: Vec<AtomicU8>,
    attempted: AtomicU64,
    in_flight: AtomicU64,
    open: AtomicU64,
    per_edge_open: Vec<AtomicU64>,
    failed: Mutex<BTreeMap<String, u64>>,
    dropped: Mutex<BTreeMap<String, u64>>,
    duplicates: AtomicU64,
    bcast_buckets: Vec<AtomicU32>,
    bcast_max_us: AtomicU64,
    halted: AtomicBool,
    errors_shown: AtomicU64,
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
    fn fail(&self, cause: &str) {
        if let Ok(mut m) = self.failed.lock() {
            *m.entry(cause.to_string()).or_default() += 1;
        }
    }
    fn report(&self) -> WorkerReport {
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
    let key = jsonwebtoken::EncodingKey::from_secret(servers::SECRET.as_bytes());
    let exp = jsonwebtoken::get_current_timestamp() + 4 * 3600;
    let header = jsonwebtoken::Header::default();
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
    let edges = Arc::new(o.edges.clone());
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
                    let edge = o.layout.edge(i);
                    let addr = edges[edge as usize];
                    sh.attempted.fetch_add(1, Ordering::Relaxed);
                    sh.in_flight.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(client(
                        sh.clone(),
                        next as usize,
                        edge as usize,
                        token,
                        addr,
                        clients::source_ip(i),
                        o.sockbuf,
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

/// The connect-failure cause of an I/O error, naming the limit when it is one.
fn cause(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(23 | 24) => "fds (EMFILE/ENFILE)",
        Some(98 | 99) => "ports (EADDRINUSE/EADDRNOTAVAIL)",
        Some(12 | 105) => "memory (ENOMEM/ENOBUFS)",
        Some(111) => "refused (ECONNREFUSED)",
        Some(110) => "timeout (ETIMEDOUT)",
        Some(104) => "reset (ECONNRESET)",
        _ => "io (other)",
    }
}

/// How a connection ended or failed.
enum End {
    Io(&'static str),
    Eof,
    Http(String),
    Close(u16),
    Refused,
}

impl End {
    fn label(&self) -> String {
        match self {
            End::Io(c) => (*c).to_string(),
            End::Eof => "eof".into(),
            End::Http(s) => format!("http {s}"),
            End::Close(c) => format!("close {c}"),
            End::Refused => "no welcome".into(),
        }
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(cause(&e))
    }
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// One client end: connect, upgrade, welcome, then count what arrives until the worker exits.
#[allow(clippy::too_many_arguments)]
async fn client(
    sh: Arc<Shared>,
    k: usize,
    edge: usize,
    token: String,
    addr: SocketAddr,
    src: Ipv4Addr,
    sockbuf: usize,
    timeout: Duration,
) {
    let mut c = Conn {
        pending: Vec::new(),
        welcomed: false,
        http_done: false,
    };
    let hs = tokio::time::timeout(timeout, c.handshake(&sh, k, token, addr, src, sockbuf)).await;
    sh.in_flight.fetch_sub(1, Ordering::Relaxed);
    let stream = match hs {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let label = e.label();
            if sh.errors_shown.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!("million-worker: connect to {addr} from {src} failed: {label}");
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
    let end = c.serve(&sh, k, &stream).await;
    sh.flags[k].fetch_or(CLOSED, Ordering::Relaxed);
    sh.open.fetch_sub(1, Ordering::Relaxed);
    sh.per_edge_open[edge].fetch_sub(1, Ordering::Relaxed);
    if let Ok(mut m) = sh.dropped.lock() {
        *m.entry(end.label()).or_default() += 1;
    }
}

/// A client end's state besides its socket.
struct Conn {
    /// Bytes of an incomplete frame (normally empty: no allocation).
    pending: Vec<u8>,
    welcomed: bool,
    http_done: bool,
}

impl Conn {
    async fn handshake(
        &mut self,
        sh: &Shared,
        k: usize,
        token: String,
        addr: SocketAddr,
        src: Ipv4Addr,
        sockbuf: usize,
    ) -> Result<TcpStream, End> {
        let sock = TcpSocket::new_v4()?;
        if sockbuf > 0 {
            sock.set_recv_buffer_size(sockbuf as u32)?;
            sock.set_send_buffer_size(sockbuf as u32)?;
        }
        sock.bind(SocketAddr::from((src, 0)))?;
        let mut stream = sock.connect(addr).await?;
        stream.set_zero_linger()?;
        stream.set_nodelay(true)?;
        {
            let req = format!(
                "GET /ws/{PROJECT}?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            );
            drop(token);
            stream.write_all(req.as_bytes()).await?;
        }
        while !self.welcomed {
            self.read_once(sh, k, &stream).await?;
        }
        Ok(stream)
    }

    async fn serve(&mut self, sh: &Shared, k: usize, stream: &TcpStream) -> End {
        loop {
            if let Err(e) = self.read_once(sh, k, stream).await {
                return e;
            }
        }
    }

    /// Waits for bytes, reads them into the thread's buffer and handles every whole frame.
    async fn read_once(&mut self, sh: &Shared, k: usize, stream: &TcpStream) -> Result<(), End> {
        stream.readable().await?;
        let mut out = Vec::new();
        let r = READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            let n = match stream.try_read(&mut b[..]) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if self.pending.is_empty() {
                let used = self.parse(sh, k, &b[..n], &mut out)?;
                self.pending.extend_from_slice(&b[used..n]);
            } else {
                self.pending.extend_from_slice(&b[..n]);
                let pending = std::mem::take(&mut self.pending);
                let used = self.parse(sh, k, &pending, &mut out)?;
                self.pending = pending[used..].to_vec();
            }
            if self.pending.len() > 1 << 20 {
                return Err(End::Http("frame too large".into()));
            }
            Ok(())
        });
        if !out.is_empty() {
            write_all(stream, &out).await?;
        }
        r
    }

    /// Handles the upgrade answer and whole frames at the front of `buf`; returns bytes used.
    fn parse(
        &mut self,
        sh: &Shared,
        k: usize,
        buf: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, End> {
        let mut used = 0;
        if !self.http_done {
            let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > 8192 {
                    return Err(End::Http("answer too large".into()));
                }
                return Ok(0);
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                let status = String::from_utf8_lossy(buf.get(9..12).unwrap_or_default());
                return Err(End::Http(status.into_owned()));
            }
            self.http_done = true;
            used = p + 4;
        }
        loop {
            let b = &buf[used..];
            if b.len() < 2 {
                return Ok(used);
            }
            let opcode = b[0] & 0x0f;
            let mut hdr = 2usize;
            let mut len = (b[1] & 0x7f) as usize;
            if len == 126 {
                if b.len() < 4 {
                    return Ok(used);
                }
                len = u16::from_be_bytes([b[2], b[3]]) as usize;
                hdr = 4;
            } else if len == 127 {
                if b.len() < 10 {
                    return Ok(used);
                }
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                len = usize::try_from(u64::from_be_bytes(l)).unwrap_or(usize::MAX);
                hdr = 10;
            }
            if b[1] & 0x80 != 0 {
                hdr += 4;
            }
            if b.len() < hdr.saturating_add(len) {
                return Ok(used);
            }
            let payload = &b[hdr..hdr + len];
            match opcode {
                1 | 2 if !self.welcomed => {
                    if !contains(payload, br#""type":"welcome""#) {
                        return Err(End::Refused);
                    }
                    self.welcomed = true;
                }
                1 | 2 => self.message(sh, k, payload),
                8 => {
                    let code = payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(End::Close(code));
                }
                9 if len <= 125 => {
                    // Pong, masked with a zero key (the payload stays as is).
                    out.extend_from_slice(&[0x8a, 0x80 | len as u8, 0, 0, 0, 0]);
                    out.extend_from_slice(payload);
                }
                _ => {}
            }
            used += hdr + len;
        }
    }

    fn message(&mut self, sh: &Shared, k: usize, payload: &[u8]) {
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
            && let Some(t) = clients::sent_at(payload)
        {
            let us = clients::now_ns().saturating_sub(t) / 1000;
            sh.bcast_max_us.fetch_max(us, Ordering::Relaxed);
            let b = ((us / 1000 / BUCKET_MS) as usize).min(BUCKETS - 1);
            sh.bcast_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

// ---------------------------------------------------------------------------------------------
// Kernel settings.

/// Kernel settings raised for the run, restored on `restore` or drop.
struct Sysctls {
    saved: Vec<(PathBuf, String)>,
    file: Option<PathBuf>,
    changes: Vec<SysctlChange>,
}

/// One kernel setting the run changed (or checked).
#[derive(Debug, Clone, Serialize)]
struct SysctlChange {
    name: String,
    before: String,
    during: String,
    why: String,
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(name))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Sysctls {
    /// Raises what `n` loopback connections need; with `dry` only checks and fails naming it.
    fn raise(n: u64, dry: bool, file: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut wanted: Vec<(String, String, String)> = Vec::new();
        // Every loopback connection is one conntrack entry when nf_conntrack is loaded.
        if let Some(cur) = read_sysctl("net.netfilter.nf_conntrack_max") {
            let need = n + n / 2 + 65_536;
            if cur.parse::<u64>().unwrap_or(0) < need {
                wanted.push((
                    "net.netfilter.nf_conntrack_max".into(),
                    need.to_string(),
                    format!("conntrack: {n} loopback connections are tracked (one entry each)"),
                ));
            }
        }
        // TCP buffer memory (pages): two sockets per connection, a broadcast queues on all.
        if let Some(cur) = read_sysctl("net.ipv4.tcp_mem") {
            let v: Vec<u64> = cur.split(' ').filter_map(|x| x.parse().ok()).collect();
            if let [lo, pressure, max] = v[..] {
                let need_max = n * 3 / 2;
                if max < need_max {
                    wanted.push((
                        "net.ipv4.tcp_mem".into(),
                        format!("{lo} {} {need_max}", pressure.max(n)),
                        format!(
                            "memory: {} sockets may each queue a page at once (tcp_mem is in pages)",
                            2 * n
                        ),
                    ));
                }
            }
        }
        let mut s = Self {
            saved: Vec::new(),
            file,
            changes: Vec::new(),
        };
        for (name, value, why) in wanted {
            let before = read_sysctl(&name).unwrap_or_default();
            if dry {
                bail!(
                    "{why}: {name} is {before}, the run needs {value} (run without --no-sysctl, as root)"
                );
            }
            eprintln!("million: raising {name} {before} -> {value} ({why}); restored afterwards");
            std::fs::write(sysctl_path(&name), &value).with_context(|| {
                format!(
                    "cannot raise {name} to {value} ({why}); are /proc/sys writable and we root?"
                )
            })?;
            s.saved.push((sysctl_path(&name), before.clone()));
            s.changes.push(SysctlChange {
                name,
                before,
                during: value,
                why,
            });
            s.save_file()?;
        }
        for name in [
            "net.ipv4.ip_local_port_range",
            "fs.file-max",
            "fs.nr_open",
            "net.core.somaxconn",
        ] {
            if let Some(v) = read_sysctl(name) {
                s.changes.push(SysctlChange {
                    name: name.into(),
                    before: v.clone(),
                    during: v,
                    why: "unchanged".into(),
                });
            }
        }
        Ok(s)
    }

    fn save_file(&self) -> anyhow::Result<()> {
        if let Some(f) = &self.file {
            let body: String = self
                .saved
                .iter()
                .map(|(p, v)| format!("{} {v}\n", p.display()))
                .collect();
            std::fs::write(f, body).with_context(|| format!("write {}", f.display()))?;
        }
        Ok(())
    }

    /// Restores every setting. Before lowering the conntrack maximum it waits (at most 60 s)
    /// for the entries of the run to go, so other loopback users are not refused meanwhile.
    fn restore(&mut self) {
        for (path, value) in self.saved.drain(..).rev() {
            if path.ends_with("nf_conntrack_max") {
                let max: u64 = value.parse().unwrap_or(0);
                let until = Instant::now() + Duration::from_secs(60);
                while conntrack_count().is_some_and(|c| c > max * 9 / 10) && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            match std::fs::write(&path, &value) {
                Ok(()) => eprintln!("million: restored {} = {value}", path.display()),
                Err(e) => eprintln!(
                    "million: could not restore {} to {value}: {e} (restore it by hand)",
                    path.display()
                ),
            }
        }
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        self.restore();
    }
}

fn conntrack_count() -> Option<u64> {
    read_sysctl("net.netfilter.nf_conntrack_count").and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// System figures.

/// A field of /proc/meminfo, in KiB.
fn meminfo_kib(field: &str) -> u64 {
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
struct Sockstat {
    tcp_inuse: u64,
    tcp_tw: u64,
    tcp_alloc: u64,
    tcp_mem_pages: u64,
}

fn sockstat() -> Sockstat {
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
struct KernelMem {
    slab_kib: u64,
    sunreclaim_kib: u64,
    mem_available_kib: u64,
    sockstat: Sockstat,
    conntrack: Option<u64>,
}

fn kernel_mem() -> KernelMem {
    KernelMem {
        slab_kib: meminfo_kib("Slab"),
        sunreclaim_kib: meminfo_kib("SUnreclaim"),
        mem_available_kib: meminfo_kib("MemAvailable"),
        sockstat: sockstat(),
        conntrack: conntrack_count(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The cluster and the workers.

/// A process the run started.
struct Proc {
    name: String,
    child: Child,
    pid: u32,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let logf = std::fs::File::create(log)?;
        let child = cmd
            .stderr(logf)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let pid = child.id().context("pid")?;
        Ok(Self {
            name: name.into(),
            child,
            pid,
        })
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(format!("{} exited ({st})", self.name)),
            _ => None,
        }
    }
}

/// A worker process and its line protocol.
struct Worker {
    proc: Proc,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    last: WorkerReport,
}

impl Worker {
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        while let Some(l) = self.lines.next_line().await? {
            if let Some(rest) = l.strip_prefix(prefix) {
                return Ok(rest.to_string());
            }
        }
        bail!("{} ended before '{prefix}'", self.proc.name)
    }

    async fn report(&mut self) -> anyhow::Result<()> {
        self.send("report").await?;
        let body = tokio::time::timeout(Duration::from_secs(20), self.expect("report "))
            .await
            .with_context(|| format!("{} did not report within 20 s", self.proc.name))??;
        self.last = serde_json::from_str(&body)?;
        Ok(())
    }
}

/// Everything the run started.
#[derive(Default)]
struct Run {
    dir: PathBuf,
    redis: Option<Proc>,
    redis_port: u16,
    nats: Option<Proc>,
    router: Option<Proc>,
    grpc: Option<SocketAddr>,
    edges: Vec<Proc>,
    edge_addrs: Vec<SocketAddr>,
    workers: Vec<Worker>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > until {
            bail!("{what} did not listen on port {port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn find_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found in PATH or /usr/sbin (Debian: apt-get install redis-server redis-tools nats-server)")
        })
}

/// Starts a herald node and waits for its `herald ready` line.
async fn start_node(
    bin: &Path,
    name: &str,
    cfg: &Path,
    dir: &Path,
    args: &[&str],
    edge_id: Option<&str>,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"]).arg(cfg).args(args);
    // The nodes read HERALD_* variables as configuration: none of ours may leak into them.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some(id) = edge_id {
        cmd.env("HERALD_EDGE__ID", id);
    }
    let mut p = Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))?;
    let stdout = p.child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await? {
            if l.starts_with("herald ready") {
                return Ok::<_, anyhow::Error>(l);
            }
        }
        bail!(
            "{name} exited before it was ready (log: {}/{name}.log)",
            dir.display()
        )
    })
    .await
    .with_context(|| format!("{name} not ready within 60 s"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((p, line))
}

fn addr_in(line: &str, key: &str) -> anyhow::Result<SocketAddr> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .with_context(|| format!("{key}= in {line:?}"))?
        .parse()
        .context("socket address")
}

impl Run {
    async fn start_cluster(&mut self, o: &MillionOpts) -> anyhow::Result<()> {
        let bin = match &o.herald_bin {
            Some(b) => b.clone(),
            None => servers::sibling_bin("herald")?,
        };
        let redis_bin = find_bin("redis-server")?;
        let nats_bin = find_bin("nats-server")?;
        find_bin("redis-cli")?;
        let dir = self.dir.clone();
        self.redis_port = free_port()?;
        let nats_port = free_port()?;
        let cfg = dir.join("herald.toml");
        std::fs::write(
            &cfg,
            format!(
                "[edge]\nping_interval_secs = {}\n[log]\nlevel = \"warn\"\n[cluster]\nregistry = \"redis\"\n\
                 redis_urls = [\"redis://127.0.0.1:{}\"]\nbus = \"nats\"\nnats_urls = [\"nats://127.0.0.1:{nats_port}\"]\n\
                 prefix = \"million\"\nredis_timeout_ms = {}\nedge_ttl_secs = {}\n[[projects]]\nid = \"{PROJECT}\"\napi_keys = [\"{}\"]\n\
                 [[projects.keys]]\nalg = \"HS256\"\nsecret = \"{}\"\n",
                o.ping_interval_secs,
                self.redis_port,
                o.redis_timeout_ms,
                o.edge_ttl_secs,
                servers::API_KEY,
                servers::SECRET
            ),
        )?;
        eprintln!(
            "million: starting redis-server :{}, nats-server :{nats_port}, a router and {} edges (logs in {})",
            self.redis_port,
            o.edges,
            dir.display()
        );
        let mut cmd = Command::new(redis_bin);
        cmd.args([
            "--port",
            &self.redis_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--maxclients", "4096"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        self.redis = Some(Proc::spawn(
            "redis-server",
            &mut cmd,
            &dir.join("redis.log"),
        )?);
        let mut cmd = Command::new(nats_bin);
        cmd.args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        self.nats = Some(Proc::spawn("nats-server", &mut cmd, &dir.join("nats.log"))?);
        wait_port(self.redis_port, "redis-server").await?;
        wait_port(nats_port, "nats-server").await?;

        let any = [
            "--ws-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        let (router, line) = start_node(
            &bin,
            "router",
            &cfg,
            &dir,
            &[
                "--role",
                "router",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            None,
        )
        .await?;
        self.router = Some(router);
        self.grpc = Some(addr_in(&line, "grpc")?);
        let mut starting = Vec::new();
        for e in 0..o.edges {
            let (bin, cfg, dir) = (bin.clone(), cfg.clone(), dir.clone());
            starting.push(tokio::spawn(async move {
                let name = format!("e{e}");
                let mut args = vec!["--role", "edge"];
                args.extend(any);
                start_node(&bin, &name, &cfg, &dir, &args, Some(&name)).await
            }));
        }
        for s in starting {
            let (p, line) = s.await??;
            self.edge_addrs.push(addr_in(&line, "ws")?);
            self.edges.push(p);
        }
        Ok(())
    }

    async fn start_workers(&mut self, o: &MillionOpts, layout: Layout) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let n = o.connections.div_ceil(workers::per_worker_limit());
        let per = o.connections.div_ceil(n);
        let edges: Vec<String> = self.edge_addrs.iter().map(|a| a.to_string()).collect();
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
            let mut proc = Proc::spawn(&name, &mut cmd, &self.dir.join(format!("{name}.log")))?;
            let stdout = proc.child.stdout.take().context("stdout")?;
            let stdin = proc.child.stdin.take().context("stdin")?;
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

// ---------------------------------------------------------------------------------------------
// The run.

/// One second of the connect phase.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    secs: f64,
    open: u64,
    failed: u64,
    in_flight: u64,
    mem_available_mib: u64,
    conntrack: Option<u64>,
}

/// One edge's figures.
#[derive(Debug, Clone, Serialize)]
struct EdgeFigures {
    id: String,
    open: u64,
    rss_kib_before: u64,
    rss_kib: u64,
    kib_per_connection: f64,
}

/// Deliveries of one message kind.
#[derive(Debug, Default, Clone, Serialize)]
struct Delivery {
    /// Messages published.
    published: u64,
    /// Clients that were connected and should have received it.
    expected: u64,
    /// Of them, those that received it.
    received: u64,
    /// Expected but not received.
    missing: u64,
    /// Would have been recipients but never connected.
    never_connected: u64,
    /// Seconds from the (first) publish until the last expected receiver had it.
    seconds_to_all: Option<f64>,
}

/// The figures of the run.
#[derive(Debug, Default, Serialize)]
struct MillionResult {
    date_utc: String,
    command: String,
    machine: String,
    load_before: String,
    load_after: String,
    connections: u64,
    edges: u64,
    workers: u64,
    offered_rate: u64,
    layout: Option<Layout>,
    connected: u64,
    connect_seconds: f64,
    connect_rate: f64,
    failed: BTreeMap<String, u64>,
    dropped: BTreeMap<String, u64>,
    not_connected: u64,
    limit_hit: Option<String>,
    timeline: Vec<Sample>,
    per_edge: Vec<EdgeFigures>,
    edges_rss_mib: f64,
    edges_kib_per_connection: f64,
    router_rss_mib: f64,
    nats_rss_mib: f64,
    redis_rss_mib: f64,
    redis_used_memory_mib: f64,
    redis_keys: u64,
    workers_rss_mib: f64,
    workers_kib_per_connection: f64,
    kernel_before: KernelMem,
    kernel_after: KernelMem,
    /// Growth of Slab (KiB) per connection (two sockets, one conntrack entry).
    kernel_slab_kib_per_connection: f64,
    sysctls: Vec<SysctlChange>,
    broadcast: Delivery,
    broadcast_latency_ms: [f64; 4],
    /// Connected clients without the broadcast at the end, per edge.
    broadcast_missing_per_edge: Vec<u64>,
    group: Delivery,
    user: Delivery,
    sampled_users: u64,
    sampled_users_with_two_devices: u64,
    duplicates: u64,
    seconds: f64,
    error: Option<String>,
    /// Every process the run started (all ended when the result is written).
    pids: Vec<u32>,
}

fn rss_mib(p: &Proc) -> f64 {
    proc_stats::rss_kib(p.pid).unwrap_or(0) as f64 / 1024.0
}

/// Sums every worker's last report.
fn total(workers: &[Worker], edges: usize) -> WorkerReport {
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

async fn report_all(workers: &mut [Worker]) -> anyhow::Result<()> {
    let rs = futures_util::future::join_all(workers.iter_mut().map(|w| w.report())).await;
    rs.into_iter().collect()
}

/// The limit the machine is closest to hitting, if one is hit.
fn limit_reached(o: &MillionOpts, run: &mut Run) -> Option<String> {
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
    let procs = run
        .edges
        .iter_mut()
        .chain(run.router.iter_mut())
        .chain(run.redis.iter_mut())
        .chain(run.nats.iter_mut())
        .chain(run.workers.iter_mut().map(|w| &mut w.proc));
    for p in procs {
        if let Some(e) = p.exited() {
            return Some(format!("{e} (log: {}/{}.log)", run.dir.display(), p.name));
        }
    }
    None
}

/// The connect-failure cause that names a limit, if failures are more than incidental.
fn failure_limit(t: &WorkerReport) -> Option<String> {
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

fn fmt_n(n: u64) -> String {
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

async fn redis_info(port: u16) -> (f64, u64) {
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

async fn publish(
    client: &mut HeraldClient<tonic::transport::Channel>,
    kind: target::Kind,
) -> anyhow::Result<()> {
    let mut req = tonic::Request::new(PublishRequest {
        project: PROJECT.into(),
        target: Some(ApiTarget { kind: Some(kind) }),
        payload: clients::payload(100),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", servers::API_KEY).parse()?,
    );
    client.publish(req).await.context("publish")?;
    Ok(())
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
            scenario(&o, layout, &mut run, &mut result),
        ) => r.unwrap_or_else(|_| Err(anyhow!("deadline: the run took longer than --max-secs {}", o.max_secs))),
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
        _ = sigterm.recv() => Err(anyhow!("interrupted (SIGTERM)")),
    };
    result.load_after = loadavg();
    if let Err(e) = &outcome {
        eprintln!("million: {e:#}");
        result.error = Some(format!("{e:#}"));
    }
    result.pids = run
        .workers
        .iter()
        .map(|w| &w.proc)
        .chain(&run.edges)
        .chain(&run.router)
        .chain(&run.nats)
        .chain(&run.redis)
        .map(|p| p.pid)
        .collect();
    eprintln!("million: stopping workers, edges, router, nats-server and redis-server");
    shutdown(&mut run).await;
    sysctls.restore();
    result.seconds = started.elapsed().as_secs_f64();
    if result.timeline.is_empty() && outcome.is_err() {
        return outcome;
    }
    write_results(&o.out, &result)?;
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

fn date_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn scenario(
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
            .with_context(|| format!("{} did not sign its tokens within 120 s", w.proc.name))??;
    }
    let rss_before: Vec<u64> = run
        .edges
        .iter()
        .map(|p| proc_stats::rss_kib(p.pid).unwrap_or(0))
        .collect();
    res.kernel_before = kernel_mem();
    let workers_rss_before: f64 = run.workers.iter().map(|w| rss_mib(&w.proc)).sum();

    // Connect at a steady rate.
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

    // Memory with every connection open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    res.kernel_after = kernel_mem();
    res.per_edge = run
        .edges
        .iter()
        .enumerate()
        .map(|(e, p)| {
            let rss = proc_stats::rss_kib(p.pid).unwrap_or(0);
            let open = t.per_edge_open.get(e).copied().unwrap_or(0);
            EdgeFigures {
                id: p.name.clone(),
                open,
                rss_kib_before: rss_before[e],
                rss_kib: rss,
                kib_per_connection: rss.saturating_sub(rss_before[e]) as f64 / open.max(1) as f64,
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
    res.edges_kib_per_connection = rss_growth as f64 / t.open.max(1) as f64;
    res.router_rss_mib = run.router.as_ref().map_or(0.0, rss_mib);
    res.nats_rss_mib = run.nats.as_ref().map_or(0.0, rss_mib);
    res.redis_rss_mib = run.redis.as_ref().map_or(0.0, rss_mib);
    (res.redis_used_memory_mib, res.redis_keys) = redis_info(run.redis_port).await;
    res.workers_rss_mib = run.workers.iter().map(|w| rss_mib(&w.proc)).sum();
    res.workers_kib_per_connection =
        (res.workers_rss_mib - workers_rss_before) * 1024.0 / t.open.max(1) as f64;
    res.kernel_slab_kib_per_connection = res
        .kernel_after
        .slab_kib
        .saturating_sub(res.kernel_before.slab_kib) as f64
        / t.open.max(1) as f64;
    eprintln!(
        "million: edges RSS {:.0} MiB ({:.2} KiB/connection); harness {:.0} MiB ({:.2} KiB/connection); \
         kernel Slab +{:.0} MiB ({:.2} KiB/connection), TCP buffers {} pages; redis {:.1} MiB, {} keys",
        res.edges_rss_mib,
        res.edges_kib_per_connection,
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

    // Publish through the router and wait for every expected receiver.
    let grpc = run.grpc.context("router address")?;
    let mut client = HeraldClient::connect(format!("http://{grpc}")).await?;
    let deadline = Duration::from_secs(o.deliver_timeout_secs);
    let kinds: [(&str, usize); 3] = [("broadcast", 0), ("group g0", 1), ("user", 2)];
    for (name, m) in kinds {
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

/// p50, p99, p99.9 from the buckets, and the max (ms).
fn percentiles(buckets: &[(u32, u32)], max_us: u64) -> [f64; 4] {
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

/// Stops every process the run started: the workers (their sockets close with RST), then the
/// edges, the router, NATS and Redis (SIGTERM, SIGKILL after 20 s).
async fn shutdown(run: &mut Run) {
    for w in &mut run.workers {
        let _ = w.send("stop").await;
    }
    let mut procs: Vec<&mut Proc> = run.workers.iter_mut().map(|w| &mut w.proc).collect();
    stop_all(&mut procs, Duration::from_secs(10)).await;
    let mut procs: Vec<&mut Proc> = run.edges.iter_mut().chain(run.router.iter_mut()).collect();
    stop_all(&mut procs, Duration::from_secs(20)).await;
    let mut procs: Vec<&mut Proc> = run.nats.iter_mut().chain(run.redis.iter_mut()).collect();
    stop_all(&mut procs, Duration::from_secs(10)).await;
}

async fn stop_all(procs: &mut [&mut Proc], grace: Duration) {
    let pids: Vec<String> = procs
        .iter_mut()
        .filter_map(|p| p.exited().is_none().then(|| p.pid.to_string()))
        .collect();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .args(&pids)
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let until = tokio::time::Instant::now() + grace;
    for p in procs.iter_mut() {
        if tokio::time::timeout_at(until, p.child.wait())
            .await
            .is_err()
        {
            eprintln!("million: {} did not stop in {grace:?}; killing it", p.name);
            let _ = p.child.kill().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

fn write_results(dir: &Path, r: &MillionResult) -> anyhow::Result<()> {
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

fn delivery_row(s: &mut String, name: &str, d: &Delivery) {
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

fn markdown(r: &MillionResult) -> String {
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
    s
}

/// Two panels: connections open and connects/s over time; RSS and connections per edge.
fn svg(r: &MillionResult) -> String {
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
