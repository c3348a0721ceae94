//! Worker processes holding the client ends of a scenario.
//!
//! One process may hold only as many sockets as its open-file limit (`RLIMIT_NOFILE`, 20,000
//! here), so every scenario opens its connections from worker processes: the same binary run as
//! the hidden `worker` subcommand, as many as the limit requires. Each worker spreads its client
//! ends over loopback source addresses (127.0.0.0/8, 250 connections per address), signs its
//! tokens before it connects, and talks to the parent in JSON lines:
//!
//! - parent → worker (stdin): one [`WorkerPlan`] line, then `stop` (or end of input);
//! - worker → parent (stdout): a `progress` line every 250 ms with its [`Counts`], then one
//!   `result` line with its counts and its latency histograms (HdrHistogram V2, base64).
//!
//! The parent side is [`Workers`]:
//!
//! ```ignore
//! let plan = Plan::new(15_000, ClientPlan::herald(server.ws, "room", SECRET));
//! let workers = Workers::spawn("idle herald", &plan).await?;       // splits by the fd limit
//! workers.wait("connected", Duration::from_secs(60), |c| c.settled() >= 15_000).await?;
//! // ... publish, watch workers.counts() ...
//! let totals = workers.finish().await?;                              // merged histograms
//! ```

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::herald::Herald;
use crate::client::mqtt::Mqtt;
use crate::client::nats::Nats;
use crate::client::plain::Plain;
use crate::client::sse::Sse;
use crate::client::stomp::Stomp;
use crate::client::{Codec, Conn, Event, Hello, Protocol, Target};
use crate::payload::{now_ns, sent_at};
use crate::proc_stats;
use crate::tls::{TlsPlan, tls_connector};

/// Descriptors each worker keeps for itself (stdio, the runtime, a publisher, slack).
const RESERVED_FDS: u64 = 256;
/// Highest latency a histogram records, in microseconds (10 minutes).
const MAX_US: u64 = 600_000_000;

static QUIET: AtomicBool = AtomicBool::new(false);
static PER_WORKER: OnceLock<u64> = OnceLock::new();

/// Process-wide settings from the command line: no progress lines (`quiet`), and a cap on
/// connections per worker below the one the open-file limit gives (`per_worker`).
pub fn configure(quiet: bool, per_worker: Option<u64>) {
    QUIET.store(quiet, Ordering::Relaxed);
    if let Some(n) = per_worker {
        let _ = PER_WORKER.set(n.max(1));
    }
}

/// Whether progress lines are off.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Connections one worker may hold: the open-file limit less [`RESERVED_FDS`], or less if
/// `--per-worker` says so.
pub fn per_worker_limit() -> u64 {
    let by_fds = proc_stats::open_files_limit()
        .saturating_sub(RESERVED_FDS)
        .max(1);
    PER_WORKER.get().map_or(by_fds, |&n| n.min(by_fds))
}

/// Splits `connections` into `(first, count)` ranges of at most `per_worker` each.
pub fn split(connections: u64, per_worker: u64) -> Vec<(u64, u64)> {
    let per = per_worker.max(1);
    let n = connections.div_ceil(per).max(1);
    // Even shares, so no worker is left with a sliver.
    let base = connections / n;
    let extra = connections % n;
    let mut first = 0;
    (0..n)
        .map(|k| {
            let count = base + u64::from(k < extra);
            let r = (first, count);
            first += count;
            r
        })
        .collect()
}

/// What every client of a plan does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientPlan {
    /// Where to connect.
    pub server: SocketAddr,
    /// When not empty: client i connects to `spread[i % len]` instead (several edges).
    #[serde(default)]
    pub spread: Vec<SocketAddr>,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// Group / topic / subject every client subscribes to.
    pub topic: String,
    /// Client i subscribes to `u<i>` instead of `topic` (peers' unicast).
    pub topic_per_client: bool,
    /// Subscribe after connecting (else: Herald clients wait for `welcome` only).
    pub subscribe: bool,
    /// Herald project (the path `/ws/<project>`).
    pub project: String,
    /// HS256 secret tokens are signed with (Herald): client i is user `<user_prefix><i>`.
    pub secret: String,
    /// Prefix of user ids.
    pub user_prefix: String,
    /// `wss`: TLS settings.
    pub tls: Option<TlsPlan>,
    /// Deadline of one client's connect, upgrade and subscription, seconds.
    pub connect_timeout_secs: u64,
    /// Offer `permessage-deflate` and inflate compressed messages.
    #[serde(default)]
    pub deflate: bool,
}

impl ClientPlan {
    /// Herald clients of the bench project subscribing to `group` at `server`, with tokens
    /// signed with `secret` (HS256).
    pub fn herald(server: SocketAddr, group: &str, secret: &str) -> Self {
        Self {
            server,
            spread: Vec::new(),
            protocol: Protocol::Herald,
            topic: group.into(),
            topic_per_client: false,
            subscribe: true,
            project: "bench".into(),
            secret: secret.into(),
            user_prefix: "s".into(),
            tls: None,
            connect_timeout_secs: 30,
            deflate: false,
        }
    }

    /// Clients of `protocol` (a peer) subscribing to `topic` at `server`.
    pub fn peer(server: SocketAddr, protocol: Protocol, topic: &str) -> Self {
        Self {
            protocol,
            ..Self::herald(server, topic, "")
        }
    }
}

/// The clients' target of a plan (reads the CA file of a `wss` plan).
fn target(p: &ClientPlan) -> anyhow::Result<Target> {
    let tls = match &p.tls {
        None => None,
        Some(t) => Some(tls_connector(t)?),
    };
    Ok(Target {
        server: p.server,
        spread: p.spread.clone(),
        tls,
        sockbuf: 0,
        zero_linger: false,
        deflate: p.deflate,
    })
}

/// A connection plan: how many clients, how fast, doing what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Client connections in all.
    pub connections: u64,
    /// Connects per second over all workers (0: as fast as `inflight` allows).
    pub rate: u64,
    /// Handshakes in flight at once over all workers.
    pub inflight: u64,
    /// What each client does.
    pub client: ClientPlan,
}

impl Plan {
    /// `connections` clients, 2,000 handshakes in flight, no rate limit.
    pub fn new(connections: u64, client: ClientPlan) -> Self {
        Self {
            connections,
            rate: 0,
            inflight: 2_000,
            client,
        }
    }
}

/// One worker's share of a plan (the line the parent sends it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// Index of this worker's first client (its user id, topic and source address).
    pub first: u64,
    /// Clients of this worker.
    pub count: u64,
    /// Connects per second of this worker (0: unpaced).
    pub rate: f64,
    /// Handshakes in flight at once in this worker.
    pub inflight: u64,
    /// What each client does.
    pub client: ClientPlan,
}

/// Counters of a worker, or summed over all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Clients connected (and subscribed, when the plan subscribes).
    pub connected: u64,
    /// Clients that failed to connect or subscribe.
    pub failed: u64,
    /// Clients disconnected after connecting.
    pub dropped: u64,
    /// Payloads delivered, over all clients.
    pub delivered: u64,
    /// Clients that received at least one payload.
    pub received: u64,
    /// Clients that were pinged at least once (and answered).
    pub pinged: u64,
    /// When the first client started connecting (Unix ns; 0: none yet).
    pub first_attempt_ns: u64,
    /// When the last client finished connecting (Unix ns; 0: none yet).
    pub last_connected_ns: u64,
}

impl Counts {
    /// Clients whose connect attempt is over, either way.
    pub fn settled(&self) -> u64 {
        self.connected + self.failed
    }

    fn add(&mut self, o: &Counts) {
        self.connected += o.connected;
        self.failed += o.failed;
        self.dropped += o.dropped;
        self.delivered += o.delivered;
        self.received += o.received;
        self.pinged += o.pinged;
        if o.first_attempt_ns != 0
            && (self.first_attempt_ns == 0 || o.first_attempt_ns < self.first_attempt_ns)
        {
            self.first_attempt_ns = o.first_attempt_ns;
        }
        self.last_connected_ns = self.last_connected_ns.max(o.last_connected_ns);
    }

    /// Seconds from the first connect attempt to the last connection made, over all workers
    /// (what connects per second divide by; worker start-up and token signing excluded).
    pub fn connect_secs(&self) -> f64 {
        self.last_connected_ns.saturating_sub(self.first_attempt_ns) as f64 / 1e9
    }
}

#[derive(Default)]
struct Atomics {
    connected: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    received: AtomicU64,
    pinged: AtomicU64,
    first_attempt_ns: AtomicU64,
    last_connected_ns: AtomicU64,
}

impl Atomics {
    fn snapshot(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            connected: l(&self.connected),
            failed: l(&self.failed),
            dropped: l(&self.dropped),
            delivered: l(&self.delivered),
            received: l(&self.received),
            pinged: l(&self.pinged),
            first_attempt_ns: l(&self.first_attempt_ns),
            last_connected_ns: l(&self.last_connected_ns),
        }
    }
}

/// A worker's final report.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerResult {
    counts: Counts,
    /// Publish-to-delivery latency, µs (HdrHistogram V2, base64).
    latency: String,
    /// TCP connect to connected (and subscribed), µs (HdrHistogram V2, base64).
    handshake: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Progress(Counts),
    Result(WorkerResult),
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("serialize histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

fn decode(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("deserialize histogram: {e:?}"))
}

/// What all workers of a plan report at the end.
#[derive(Debug)]
pub struct Totals {
    /// Counters summed over all workers (a worker that died counts with its last progress).
    pub counts: Counts,
    /// Publish-to-delivery latency of every delivery that carried a send time, µs.
    pub latency_us: Histogram<u64>,
    /// Connect (and subscribe) time of every connected client, µs.
    pub handshake_us: Histogram<u64>,
    /// Worker processes used.
    pub workers: usize,
    /// Workers that ended without a result (crashed or killed).
    pub lost_workers: usize,
}

struct Handle {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    reader: JoinHandle<Option<WorkerResult>>,
}

/// Running worker processes of one plan.
pub struct Workers {
    handles: Vec<Handle>,
    latest: Arc<Mutex<Vec<Counts>>>,
    printer: JoinHandle<()>,
}

impl Workers {
    /// Splits `plan` over as many worker processes as the open-file limit needs and starts them;
    /// they start connecting at once. `label` prefixes the progress lines (stderr, one a second,
    /// unless `--quiet`).
    pub async fn spawn(label: &str, plan: &Plan) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        Self::spawn_with(&exe, label, plan).await
    }

    /// As [`Workers::spawn`], running `exe worker` (a herald-bench binary).
    pub async fn spawn_with(
        exe: &std::path::Path,
        label: &str,
        plan: &Plan,
    ) -> anyhow::Result<Self> {
        let ranges = split(plan.connections, per_worker_limit());
        let n = ranges.len();
        let latest = Arc::new(Mutex::new(vec![Counts::default(); n]));
        let mut handles = Vec::with_capacity(n);
        for (k, (first, count)) in ranges.into_iter().enumerate() {
            let wp = WorkerPlan {
                first,
                count,
                rate: plan.rate as f64 / n as f64,
                inflight: plan.inflight.div_ceil(n as u64).max(1),
                client: plan.client.clone(),
            };
            let mut child = Command::new(exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start worker {}", exe.display()))?;
            let pid = child.id().context("worker pid")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let mut line = serde_json::to_vec(&wp)?;
            line.push(b'\n');
            stdin
                .write_all(&line)
                .await
                .context("send plan to worker")?;
            stdin.flush().await?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let latest = latest.clone();
            let reader = tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    match serde_json::from_str::<Line>(&l) {
                        Ok(Line::Progress(c)) => {
                            if let Ok(mut v) = latest.lock() {
                                v[k] = c;
                            }
                        }
                        Ok(Line::Result(r)) => {
                            if let Ok(mut v) = latest.lock() {
                                v[k] = r.counts;
                            }
                            return Some(r);
                        }
                        Err(e) => eprintln!("worker {k}: unreadable line ({e}): {l}"),
                    }
                }
                None
            });
            handles.push(Handle {
                child,
                pid,
                stdin: Some(stdin),
                reader,
            });
        }
        let printer = {
            let (latest, label, total) = (latest.clone(), label.to_string(), plan.connections);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                let mut last = 0u64;
                loop {
                    tick.tick().await;
                    let c = sum(&latest);
                    if !quiet() {
                        eprintln!(
                            "{label}: {}/{total} open, {} failed, {} dropped, {} deliveries/s ({} workers)",
                            c.connected - c.dropped,
                            c.failed,
                            c.dropped,
                            c.delivered.saturating_sub(last),
                            n
                        );
                    }
                    last = c.delivered;
                }
            })
        };
        Ok(Self {
            handles,
            latest,
            printer,
        })
    }

    /// The workers' pids.
    #[allow(dead_code)] // for scenarios that watch the workers themselves (million)
    pub fn pids(&self) -> Vec<u32> {
        self.handles.iter().map(|h| h.pid).collect()
    }

    /// The counters summed over all workers (as of their last progress line, ≤ 250 ms old).
    pub fn counts(&self) -> Counts {
        sum(&self.latest)
    }

    /// CPU time of all workers so far, in clock ticks (`utime + stime`).
    pub fn cpu_ticks(&self) -> u64 {
        self.handles
            .iter()
            .filter_map(|h| proc_stats::cpu_ticks(h.pid).ok())
            .sum()
    }

    /// Waits until `done` holds for the summed counters; fails after `timeout`, or when every
    /// worker has ended, naming `what` and the counts reached.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Counts) -> bool,
    ) -> anyhow::Result<Counts> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.counts();
            if done(&c) {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("not {what} within {} s: {c:?}", timeout.as_secs());
            }
            if self.handles.iter().all(|h| h.reader.is_finished()) {
                bail!("every worker ended before {what}: {c:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells every worker to stop (its clients close), collects the results within 30 s and
    /// merges them. Workers that do not answer are killed and counted in `lost_workers`.
    pub async fn finish(mut self) -> anyhow::Result<Totals> {
        self.printer.abort();
        for h in &mut self.handles {
            if let Some(mut s) = h.stdin.take() {
                let _ = s.write_all(b"stop\n").await;
                let _ = s.flush().await;
            }
        }
        let mut totals = Totals {
            counts: Counts::default(),
            latency_us: histogram(),
            handshake_us: histogram(),
            workers: self.handles.len(),
            lost_workers: 0,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (k, h) in self.handles.iter_mut().enumerate() {
            let r = tokio::time::timeout_at(deadline, &mut h.reader).await;
            match r {
                Ok(Ok(Some(r))) => {
                    totals.latency_us.add(decode(&r.latency)?)?;
                    totals.handshake_us.add(decode(&r.handshake)?)?;
                }
                _ => {
                    eprintln!("worker {k} (pid {}) ended without a result", h.pid);
                    totals.lost_workers += 1;
                    h.reader.abort();
                    let _ = h.child.start_kill();
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), h.child.wait()).await;
        }
        totals.counts = self.counts();
        Ok(totals)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.printer.abort();
    }
}

fn sum(latest: &Mutex<Vec<Counts>>) -> Counts {
    let mut total = Counts::default();
    if let Ok(v) = latest.lock() {
        for c in v.iter() {
            total.add(c);
        }
    }
    total
}

/// The `worker` subcommand: reads a [`WorkerPlan`] line from stdin, connects its clients, reports
/// progress every 250 ms and its result after `stop` (or the end of stdin).
pub async fn worker_main() -> anyhow::Result<()> {
    // stdin is read by a plain thread (tokio's stdin would need its `io-std` feature for every
    // crate of the workspace); the lines come over a channel, which closes at end of input.
    let (tx, mut input) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::stdin().lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let line = input
        .recv()
        .await
        .context("worker: no plan on stdin (this subcommand is started by the harness)")?;
    let plan: WorkerPlan = serde_json::from_str(&line).context("worker: plan")?;
    let c = &plan.client;
    // Tokens are signed before the first connect, never while anything is timed.
    // Herald's clients (any protocol) have a secret to sign with; the peers' do not.
    let tokens: Vec<String> = if !c.secret.is_empty() {
        let key = jsonwebtoken::EncodingKey::from_secret(c.secret.as_bytes());
        let exp = jsonwebtoken::get_current_timestamp() + 24 * 3600;
        (plan.first..plan.first + plan.count)
            .map(|i| {
                let claims = serde_json::json!({"sub": format!("{}{i}", c.user_prefix), "aud": c.project, "exp": exp, "channels": ["*"]});
                jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
            })
            .collect::<Result<_, _>>()?
    } else {
        vec![String::new(); plan.count as usize]
    };
    let sh = Arc::new(Shared {
        target: target(c)?,
        project: c.project.clone(),
        topic: c.topic.clone(),
        subscribe: c.subscribe,
        timeout: Duration::from_secs(c.connect_timeout_secs.max(1)),
        counts: Atomics::default(),
        handshakes: Mutex::new(histogram()),
        stop: CancellationToken::new(),
    });
    let connector = {
        let sh = sh.clone();
        let (first, rate, inflight) = (plan.first, plan.rate, plan.inflight);
        let (per_client, protocol) = (c.topic_per_client, c.protocol);
        tokio::spawn(async move {
            let gate = Arc::new(Semaphore::new(inflight as usize));
            let gap = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
            let mut next = tokio::time::Instant::now();
            let mut clients = Vec::with_capacity(tokens.len());
            for (k, token) in tokens.into_iter().enumerate() {
                let i = first + k as u64;
                let permit = tokio::select! {
                    p = gate.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = sh.stop.cancelled() => break,
                };
                let topic = per_client.then(|| format!("u{i}"));
                let one = sh.clone();
                clients.push(match protocol {
                    Protocol::Herald => {
                        tokio::spawn(client::<Herald>(i, one, topic, token, permit))
                    }
                    Protocol::Mqtt => tokio::spawn(client::<Mqtt>(i, one, topic, token, permit)),
                    Protocol::Stomp => tokio::spawn(client::<Stomp>(i, one, topic, token, permit)),
                    Protocol::Nats => tokio::spawn(client::<Nats>(i, one, topic, token, permit)),
                    Protocol::Ws => tokio::spawn(client::<Plain>(i, one, topic, token, permit)),
                    Protocol::Sse => tokio::spawn(client::<Sse>(i, one, topic, token, permit)),
                });
                if let Some(gap) = gap {
                    next += gap;
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = sh.stop.cancelled() => break,
                    }
                }
            }
            clients
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                write_line(&Line::Progress(sh.counts.snapshot()))?;
            }
            l = input.recv() => match l {
                Some(l) if l.trim() != "stop" => {}
                _ => break,
            },
        }
    }
    sh.stop.cancel();
    let clients = connector.await.unwrap_or_default();
    let mut latency = histogram();
    for t in clients {
        for us in t.await.unwrap_or_default() {
            latency.saturating_record(u64::from(us).max(1));
        }
    }
    let handshake = sh
        .handshakes
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    let result = WorkerResult {
        counts: sh.counts.snapshot(),
        latency: encode(&latency)?,
        handshake: encode(&handshake)?,
    };
    write_line(&Line::Result(result))?;
    Ok(())
}

/// One line to the parent (a pipe; a line is far below its buffer, so this does not block).
fn write_line(l: &Line) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut v = serde_json::to_vec(l)?;
    v.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&v)?;
    out.flush()?;
    Ok(())
}

/// What a worker's clients share.
struct Shared {
    target: Target,
    project: String,
    topic: String,
    subscribe: bool,
    /// Deadline of one client's connect, upgrade and subscription.
    timeout: Duration,
    counts: Atomics,
    handshakes: Mutex<Histogram<u64>>,
    stop: CancellationToken,
}

/// One client speaking `C`: connect (and subscribe), then count what arrives until told to
/// stop. Returns the latency of every payload that carried a send time, in µs.
async fn client<C: Codec + Default>(
    i: u64,
    sh: Arc<Shared>,
    topic: Option<String>,
    token: String,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Vec<u32> {
    let mut lat = Vec::new();
    let c = &sh.counts;
    let (mut received, mut pinged) = (false, false);
    let mut on = |e: Event<'_>| match e {
        Event::Message(p) => {
            if let Some(t0) = sent_at(p) {
                let us = now_ns().saturating_sub(t0) / 1000;
                lat.push(us.min(u64::from(u32::MAX)) as u32);
            }
            c.delivered.fetch_add(1, Ordering::Relaxed);
            if !received {
                received = true;
                c.received.fetch_add(1, Ordering::Relaxed);
            }
        }
        Event::Ping => {
            if !pinged {
                pinged = true;
                c.pinged.fetch_add(1, Ordering::Relaxed);
            }
        }
        Event::Ready => {}
    };
    let topic = sh.subscribe.then(|| topic.as_deref().unwrap_or(&sh.topic));
    let hello = Hello {
        project: &sh.project,
        token: &token,
        topic,
    };
    run_client(C::default(), i, &sh, &hello, permit, &mut on).await;
    lat
}

/// Connects and serves one client until it ends or the worker stops, counting it.
async fn run_client<C: Codec>(
    codec: C,
    i: u64,
    sh: &Shared,
    hello: &Hello<'_>,
    permit: tokio::sync::OwnedSemaphorePermit,
    on: &mut impl FnMut(Event<'_>),
) {
    let c = &sh.counts;
    let start = Instant::now();
    let _ = c
        .first_attempt_ns
        .compare_exchange(0, now_ns(), Ordering::Relaxed, Ordering::Relaxed);
    let connect = Conn::connect(&sh.target, i, hello, codec, on);
    let r = tokio::select! {
        r = tokio::time::timeout(sh.timeout, connect) => r,
        _ = sh.stop.cancelled() => return,
    };
    drop(permit);
    let Ok(Ok(mut conn)) = r else {
        c.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Ok(mut h) = sh.handshakes.lock() {
        h.saturating_record((start.elapsed().as_micros() as u64).max(1));
    }
    c.connected.fetch_add(1, Ordering::Relaxed);
    c.last_connected_ns.fetch_max(now_ns(), Ordering::Relaxed);
    tokio::select! {
        _ = sh.stop.cancelled() => {}
        _ = conn.serve(on) => {
            c.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_connection_in_even_shares() {
        assert_eq!(split(10, 20_000), vec![(0, 10)]);
        assert_eq!(split(0, 100), vec![(0, 0)]);
        let s = split(1_000_000, 19_744);
        assert_eq!(s.len(), 51);
        assert_eq!(s.iter().map(|r| r.1).sum::<u64>(), 1_000_000);
        assert!(s.iter().all(|r| r.1 <= 19_744 && r.1 >= 19_600));
        for w in s.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0);
        }
    }

    #[test]
    fn histograms_survive_the_pipe() {
        let mut h = histogram();
        for v in [1u64, 250, 1_000, 99_000] {
            h.record(v).expect("in range");
        }
        let back = decode(&encode(&h).expect("encode")).expect("decode");
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }
}
