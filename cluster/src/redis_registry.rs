//! The registry in Redis: which edges hold which users and groups, which edges are alive, and
//! the idempotency keys of every router. Works on a single Redis and on Redis Cluster: every
//! command and script touches keys of one hash tag only, and a tag is one user or group key (or
//! one edge), never a project. The layout is documented in `docs/cluster.md`.
//!
//! The registry knows whether it is whole. Its *epoch* (one key, created by the first edge that
//! finds it missing) names the registry's current life: a flush or a restart without persistence
//! deletes it. Every edge writes its whole interest again under the epoch it finds and then
//! confirms that epoch; a router trusts what it resolves only while every live edge has confirmed
//! the current epoch, and, after a loss, once one liveness TTL has passed (an edge alive before
//! the loss heartbeats within it). Until then targets resolve to [`Route::Incomplete`] and the
//! router sends them by the project's broadcast path.
//!
//! Writes of one batch are pipelined: a batch costs two round trips whatever its size (one on
//! each side of the edge's index, so a crash between them leaves nothing cleanup cannot find).
//! On Redis Cluster the commands of one phase are sent concurrently and the multiplexed
//! connection to each node pipelines them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use herald_core::ids::{EdgeId, GroupId, ProjectId, UserId};
use herald_core::presence::{PresenceEvent, PresenceSink};
use herald_core::registry::{
    InterestChange, InterestKey, Liveness, Registry, RegistryError, Route,
};
use herald_core::telemetry::{Call, REGISTRY_CALL_SECONDS};
use parking_lot::{Mutex, RwLock};
use redis::{Cmd, Script, Value};

use crate::ClusterError;
use crate::redis_conn::{Conn, Health, HealthNames};

/// Settings of the Redis registry.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` URLs: one for a single Redis, any number of seed nodes for a
    /// cluster.
    pub urls: Vec<String>,
    /// Whether the URLs name a Redis Cluster.
    pub cluster: bool,
    /// Prefix of every key (no `{` or `}`).
    pub key_prefix: String,
    /// How long an edge stays alive after its last heartbeat.
    pub edge_ttl: Duration,
    /// Deadline of one registry call (connecting included).
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            key_prefix: "herald".into(),
            edge_ttl: Duration::from_secs(15),
            timeout: Duration::from_secs(3),
        }
    }
}

/// How many members one command or pipeline carries at most, so a resync of a large edge does
/// not build one enormous request.
const CHUNK: usize = 2_000;

/// How long a cleanup may hold an edge before another node may take over.
const REAP_LEASE: Duration = Duration::from_secs(60);

/// Live-edge knowledge younger than this is used as is.
const LIVE_FRESH: Duration = Duration::from_secs(1);

/// While the registry is incomplete, what the router knows of it is refreshed this often (by
/// the publishes that need it), so it finds the registry whole again soon after it is.
const INCOMPLETE_FRESH: Duration = Duration::from_millis(250);

/// Returns the registry's epoch, creating it (`ARGV[1]`) when it is missing.
const EPOCH: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

/// Heartbeat: renews the edge's liveness key unless the edge is being cleaned up.
/// Returns 0 when the edge was not alive (registered anew), 1 when renewed, 2 when fenced.
const HEARTBEAT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local had = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1], 'GET')
if had then return 1 end
return 0
";

/// Starts a cleanup of a dead edge: only when its liveness key is gone, and only once.
const REAP_START: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[1]) then return 1 end
return 0
";

/// A member (user) of a group arrives on an edge: adds the edge to the user's field of the
/// group's member hash (`KEYS[1]`; `ARGV[1]` user, `ARGV[2]` edge). Returns 1 when the user had
/// no edge before (its first connection in the group, cluster-wide), else 0.
const MEMBER_JOIN: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end
for e in string.gmatch(v, '[^,]+') do if e == ARGV[2] then return 0 end end
redis.call('HSET', KEYS[1], ARGV[1], v .. ',' .. ARGV[2])
return 0
";

/// A member leaves an edge: removes the edge from the user's field. Returns 1 when that was the
/// user's last edge (the field is deleted), else 0 (other edges, or the edge was not there).
const MEMBER_LEAVE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local rest, found = {}, false
for e in string.gmatch(v, '[^,]+') do
  if e == ARGV[2] then found = true else rest[#rest + 1] = e end
end
if not found then return 0 end
if #rest == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
redis.call('HSET', KEYS[1], ARGV[1], table.concat(rest, ','))
return 0
";

/// A member key: `(project, group, user)`.
type Member = (ProjectId, GroupId, UserId);

/// A member as it stands in an edge's member index: `<project>:<group>:<user>` (ids hold no
/// `:`).
fn member_entry((p, g, u): &Member) -> String {
    format!("{p}:{g}:{u}")
}

fn parse_member(entry: &str) -> Option<Member> {
    let mut parts = entry.splitn(3, ':');
    Some((
        ProjectId::new(parts.next()?).ok()?,
        GroupId::new(parts.next()?).ok()?,
        UserId::new(parts.next()?).ok()?,
    ))
}

/// Key names; see `docs/cluster.md`.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    /// The part of an interest key that is its hash tag and its member in the edge's index:
    /// `<project>:u:<user>` or `<project>:g:<group>`. Ids hold no `:`, `{` or `}`.
    fn member(key: &InterestKey) -> String {
        match key {
            InterestKey::User(p, u) => format!("{p}:u:{u}"),
            InterestKey::Group(p, g) => format!("{p}:g:{g}"),
            // Never written as interest (members have their own hash and index).
            InterestKey::Member(p, g, u) => format!("{p}:m:{g}:{u}"),
        }
    }

    /// The set of edges holding a key, from its index member.
    fn interest(&self, member: &str) -> String {
        format!("{}:int:{{{member}}}", self.prefix)
    }

    /// Hash of a group's members, user -> the edges holding it (`e1,e2`); in the group's tag.
    fn members(&self, project: &ProjectId, group: &GroupId) -> String {
        format!("{}:mem:{{{project}:g:{group}}}", self.prefix)
    }

    /// Set of the members an edge wrote (`<project>:<group>:<user>`), for cleanup.
    fn member_index(&self, edge: &str) -> String {
        format!("{}:edge:{{{edge}}}:members", self.prefix)
    }

    fn alive(&self, edge: &str) -> String {
        format!("{}:edge:{{{edge}}}:alive", self.prefix)
    }

    fn reaping(&self, edge: &str) -> String {
        format!("{}:edge:{{{edge}}}:reaping", self.prefix)
    }

    fn index(&self, edge: &str) -> String {
        format!("{}:edge:{{{edge}}}:keys", self.prefix)
    }

    fn edges(&self) -> String {
        format!("{}:edges", self.prefix)
    }

    /// The registry's epoch: `<id>:<created unix ms>:<1 when created after a loss, else 0>`.
    fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Hash: edge -> the epoch id under which it last wrote its whole interest.
    fn synced(&self) -> String {
        format!("{}:synced", self.prefix)
    }

    /// Idempotency keys are single-key commands: no tag is needed; whatever the publisher's key
    /// holds only picks the slot.
    fn idempotency(&self, project: &ProjectId, key: &str) -> String {
        format!("{}:idem:{project}:{key}", self.prefix)
    }
}

/// What the registry knows of live edges: each edge alive until its liveness key expires.
#[derive(Default)]
struct LiveEdges {
    fetched: Option<Instant>,
    /// Counts refreshes, so callers that queued behind one refresh do not repeat it.
    generation: u64,
    until: HashMap<EdgeId, Instant>,
}

/// The registry's epoch, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Epoch {
    id: String,
    created_ms: u64,
    /// Created by an edge that had written its interest under an earlier epoch: state was lost.
    after_loss: bool,
}

impl Epoch {
    fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let id = parts.next()?.to_string();
        let created_ms = parts.next()?.parse().ok()?;
        let after_loss = parts.next()? == "1";
        Some(Self {
            id,
            created_ms,
            after_loss,
        })
    }

    fn fresh(after_loss: bool) -> String {
        format!(
            "{:016x}:{}:{}",
            rand::random::<u64>(),
            unix_ms(),
            u8::from(after_loss)
        )
    }
}

/// What this process concluded of the registry's wholeness at its last live-edge refresh.
#[derive(Default)]
struct Wholeness {
    /// The raw epoch under which the registry was whole, if it was.
    whole_under: Option<String>,
    /// Why it was not.
    why: String,
    /// The last epoch id seen, and an epoch id seen replacing another (a loss this process
    /// witnessed even when the edge that created the epoch did not know).
    seen: Option<String>,
    replaced: Option<String>,
}

struct Inner {
    conn: Conn,
    keys: Keys,
    cluster: bool,
    ttl: Duration,
    timeout: Duration,
    heartbeat: Script,
    reap_start: Script,
    epoch: Script,
    /// Per edge of this process: the epoch id it last wrote its whole interest under.
    synced: Mutex<HashMap<EdgeId, String>>,
    /// Per edge of this process: members added by writes not known to have completed (the
    /// index may hold them while their sets do not); a resync writes them whatever the index
    /// says.
    unconfirmed: Mutex<HashMap<EdgeId, HashSet<String>>>,
    /// The single Redis's `run_id` at this process's last resync: a restart (even one that
    /// restores a snapshot, which may hold half a batch) changes it.
    run_id: Mutex<Option<String>>,
    wholeness: RwLock<Wholeness>,
    live: RwLock<LiveEdges>,
    refreshing: tokio::sync::Mutex<()>,
    reaping: Mutex<HashSet<EdgeId>>,
    health: Health,
    /// Where presence transitions go; none: they are not looked for (members are still kept).
    sink: RwLock<Option<Arc<dyn PresenceSink>>>,
}

/// The registry in Redis (single or Cluster). Cheap to clone.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisRegistry {
    /// Builds the registry; connects lazily (a Redis that is down at start is retried).
    /// Must be called inside a tokio runtime.
    pub fn new(cfg: &RedisConfig) -> Result<Self, ClusterError> {
        let conn = Conn::new(cfg)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                keys: Keys {
                    prefix: cfg.key_prefix.clone(),
                },
                cluster: cfg.cluster,
                ttl: cfg.edge_ttl,
                timeout: cfg.timeout,
                heartbeat: Script::new(HEARTBEAT),
                reap_start: Script::new(REAP_START),
                epoch: Script::new(EPOCH),
                synced: Mutex::new(HashMap::new()),
                unconfirmed: Mutex::new(HashMap::new()),
                run_id: Mutex::new(None),
                wholeness: RwLock::new(Wholeness::default()),
                live: RwLock::new(LiveEdges::default()),
                refreshing: tokio::sync::Mutex::new(()),
                reaping: Mutex::new(HashSet::new()),
                health: Health::new(HealthNames {
                    label: "redis",
                    up: "herald_registry_up",
                    errors: "herald_registry_errors_total",
                    trips: "herald_registry_round_trips_total",
                }),
                sink: RwLock::new(None),
            }),
        })
    }

    /// Round trips to Redis so far (a pipeline, a script or a command each count one; on
    /// Redis Cluster a phase sent to several nodes at once counts one).
    pub fn round_trips(&self) -> u64 {
        self.inner.health.round_trips()
    }

    /// Forgets what this process knows about live edges (tests).
    pub fn forget_live_edges(&self) {
        *self.inner.live.write() = LiveEdges::default();
    }

    /// Cleans up every edge whose liveness key is gone, now; returns how many were cleaned.
    pub async fn reap_dead(&self) -> Result<usize, RegistryError> {
        let dead = self.inner.refresh_live(None).await?;
        let mut n = 0;
        for edge in dead {
            if self.inner.reap(&edge, false).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Inner {
    /// Records the outcome of a call for readiness, metrics and the log.
    fn outcome<T>(&self, r: redis::RedisResult<T>) -> Result<T, RegistryError> {
        match r {
            Ok(v) => {
                self.health.ok();
                Ok(v)
            }
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    fn failed(&self, msg: String) -> RegistryError {
        RegistryError::Unavailable(self.health.failed(msg))
    }

    /// Counts a round trip, after the breaker let the call through.
    fn trip(&self) -> Result<(), RegistryError> {
        self.health.check().map_err(RegistryError::Unavailable)?;
        self.health.trip();
        Ok(())
    }

    /// Runs one command with the call deadline.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RegistryError> {
        self.trip()?;
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => self.outcome(r),
            Err(_) => Err(self.failed("redis call timed out".into())),
        }
    }

    /// Runs a script on keys of one hash tag.
    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, RegistryError> {
        self.trip()?;
        self.script_unguarded(script, keys, args).await
    }

    /// Runs a script even while the breaker fails other calls fast: the edge's liveness renewal.
    /// A Redis that is slow but there still executes a renewal the caller stopped waiting for,
    /// so a live edge keeps its liveness key as long as it keeps sending; held back by the
    /// breaker, it expired and the edge was cleaned up as dead (and rewrote its whole interest).
    async fn script_unguarded<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, RegistryError> {
        self.health.trip();
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a.as_str());
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await {
            Ok(r) => self.outcome(r),
            Err(_) => Err(self.failed("redis call timed out".into())),
        }
    }

    /// Runs independent commands as one phase: one pipeline on a single Redis; concurrently on a
    /// cluster (each command to its slot's node, pipelined there by the multiplexed connection).
    /// Replies come back in command order.
    async fn phase(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, RegistryError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.trip()?;
        let run = async {
            if self.cluster {
                let replies: Vec<redis::RedisResult<Value>> =
                    futures_util::stream::iter(cmds.into_iter().map(|cmd| {
                        let mut conn = self.conn.clone();
                        async move { cmd.query_async::<Value>(&mut conn).await }
                    }))
                    .buffered(CHUNK)
                    .collect()
                    .await;
                replies
                    .into_iter()
                    .collect::<redis::RedisResult<Vec<Value>>>()
            } else {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                let mut conn = self.conn.clone();
                pipe.query_async::<Vec<Value>>(&mut conn).await
            }
        };
        match tokio::time::timeout(self.timeout * 2, run).await {
            Ok(r) => self.outcome(r),
            Err(_) => Err(self.failed("redis pipeline timed out".into())),
        }
    }

    /// Writes adds and removes of one edge: the index learns of an entry before the entry
    /// exists and forgets it after it is gone, so cleanup always finds every entry.
    async fn write(
        &self,
        edge: &EdgeId,
        adds: &[String],
        removes: &[String],
    ) -> Result<(), RegistryError> {
        metrics::counter!("herald_registry_entries_written_total")
            .increment((adds.len() + removes.len()) as u64);
        let index = self.keys.index(edge.as_str());
        for (adds, removes) in chunks(adds, removes) {
            let mut first = Vec::new();
            let mut second = Vec::new();
            if !adds.is_empty() {
                let mut c = redis::cmd("SADD");
                c.arg(&index).arg(adds);
                first.push(c);
            }
            for m in removes {
                let mut c = redis::cmd("SREM");
                c.arg(self.keys.interest(m)).arg(edge.as_str());
                first.push(c);
            }
            for m in adds {
                let mut c = redis::cmd("SADD");
                c.arg(self.keys.interest(m)).arg(edge.as_str());
                second.push(c);
            }
            if !removes.is_empty() {
                let mut c = redis::cmd("SREM");
                c.arg(&index).arg(removes);
                second.push(c);
            }
            if self.cluster {
                // The index and the entries may live on different nodes: one phase each, in
                // order.
                self.phase(first).await?;
                self.phase(second).await?;
            } else {
                // One Redis runs a pipeline's commands in order: the index still learns of an
                // entry before it exists, in one round trip instead of two.
                first.extend(second);
                self.phase(first).await?;
            }
        }
        Ok(())
    }

    /// Writes members arriving on and leaving `edge`: the member index learns of an entry before
    /// the group's hash holds it and forgets it after. Returns the transitions the scripts
    /// found (a user's first edge, its last), in `adds` then `removes` order.
    async fn write_members(
        &self,
        edge: &EdgeId,
        adds: &[Member],
        removes: &[Member],
    ) -> Result<Vec<PresenceEvent>, RegistryError> {
        metrics::counter!("herald_registry_members_written_total")
            .increment((adds.len() + removes.len()) as u64);
        let index = self.keys.member_index(edge.as_str());
        let script = |src: &str, m: &Member| {
            let mut c = redis::cmd("EVAL");
            c.arg(src)
                .arg(1)
                .arg(self.keys.members(&m.0, &m.1))
                .arg(m.2.as_str())
                .arg(edge.as_str());
            c
        };
        let mut events = Vec::new();
        let mut found = |replies: &[Value], members: &[Member], join: bool| {
            for (v, m) in replies.iter().zip(members) {
                if matches!(v, Value::Int(1)) {
                    events.push(PresenceEvent {
                        project: m.0.clone(),
                        group: m.1.clone(),
                        user: m.2.clone(),
                        join,
                    });
                }
            }
        };
        for chunk in adds.chunks(CHUNK) {
            let entries: Vec<String> = chunk.iter().map(member_entry).collect();
            self.phase(vec![redis::cmd("SADD").arg(&index).arg(&entries).clone()])
                .await?;
            let replies = self
                .phase(chunk.iter().map(|m| script(MEMBER_JOIN, m)).collect())
                .await?;
            found(&replies, chunk, true);
        }
        for chunk in removes.chunks(CHUNK) {
            let replies = self
                .phase(chunk.iter().map(|m| script(MEMBER_LEAVE, m)).collect())
                .await?;
            found(&replies, chunk, false);
            let entries: Vec<String> = chunk.iter().map(member_entry).collect();
            self.phase(vec![redis::cmd("SREM").arg(&index).arg(&entries).clone()])
                .await?;
        }
        Ok(events)
    }

    /// Hands transitions to the sink, when there is one.
    fn announce(&self, events: Vec<PresenceEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(sink) = &*self.sink.read() {
            sink.announce(events);
        }
    }

    /// Whether the registry's epoch is still the one `edge` last wrote its whole interest
    /// under: transitions found otherwise (after a loss, before the edge wrote everything
    /// again) compare with a half-empty registry and are not announced.
    async fn epoch_is_synced(&self, edge: &EdgeId) -> bool {
        let Some(mine) = self.synced.lock().get(edge).cloned() else {
            return false;
        };
        match self
            .query::<Option<String>>(redis::cmd("GET").arg(self.keys.epoch()))
            .await
        {
            Ok(Some(raw)) => Epoch::parse(&raw).is_some_and(|e| e.id == mine),
            _ => false,
        }
    }

    /// Every member of an edge's index.
    async fn index_members(&self, edge: &str) -> Result<HashSet<String>, RegistryError> {
        self.scan_set(&self.keys.index(edge)).await
    }

    /// Every member of a set, scanned.
    async fn scan_set(&self, index: &str) -> Result<HashSet<String>, RegistryError> {
        let mut cursor = "0".to_string();
        let mut out = HashSet::new();
        loop {
            let mut c = redis::cmd("SSCAN");
            c.arg(index).arg(&cursor).arg("COUNT").arg(CHUNK);
            let (next, members): (String, Vec<String>) = self.query(&c).await?;
            out.extend(members);
            if next == "0" {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Reads every known edge's liveness; returns the edges whose liveness key is gone. A caller
    /// that waited behind a refresh begun after it asked (generation `seen`) uses that one.
    async fn refresh_live(&self, seen: Option<u64>) -> Result<Vec<EdgeId>, RegistryError> {
        let _single = self.refreshing.lock().await;
        if seen.is_some_and(|g| g != self.live.read().generation) {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let names: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.edges()))
            .await?;
        let edges: Vec<EdgeId> = names.iter().filter_map(|n| EdgeId::new(n).ok()).collect();
        let mut cmds: Vec<Cmd> = edges
            .iter()
            .map(|e| {
                let mut c = redis::cmd("PTTL");
                c.arg(self.keys.alive(e.as_str()));
                c
            })
            .collect();
        cmds.push(redis::cmd("GET").arg(self.keys.epoch()).clone());
        cmds.push(redis::cmd("HGETALL").arg(self.keys.synced()).clone());
        let mut ttls = self.phase(cmds).await?;
        let synced: HashMap<String, String> = match ttls.pop() {
            Some(v) => redis::from_redis_value(v).unwrap_or_default(),
            None => HashMap::new(),
        };
        let epoch: Option<String> = match ttls.pop() {
            Some(v) => redis::from_redis_value(v).unwrap_or_default(),
            None => None,
        };
        let mut until = HashMap::new();
        let mut dead = Vec::new();
        for (edge, ttl) in edges.into_iter().zip(ttls) {
            match ttl {
                Value::Int(ms) if ms > 0 => {
                    until.insert(edge, started + Duration::from_millis(ms as u64));
                }
                // A key without expiry is never written by Herald; trust it for one TTL.
                Value::Int(-1) => {
                    until.insert(edge, started + self.ttl);
                }
                _ => dead.push(edge),
            }
        }
        self.judge(epoch.as_deref(), &until, &synced);
        let mut live = self.live.write();
        *live = LiveEdges {
            fetched: Some(started),
            generation: live.generation + 1,
            until,
        };
        Ok(dead)
    }

    /// Decides whether the registry is whole: it has an epoch, every live edge has written its
    /// interest under it, and, when the epoch began after a loss, one liveness TTL has passed
    /// since (every edge alive before the loss has heartbeated by then).
    fn judge(
        &self,
        raw: Option<&str>,
        live: &HashMap<EdgeId, Instant>,
        synced: &HashMap<String, String>,
    ) {
        let mut w = self.wholeness.write();
        let verdict = (|| {
            let raw = raw.ok_or("the registry has no epoch (flushed or restarted)")?;
            let epoch = Epoch::parse(raw).ok_or("the registry's epoch is unreadable")?;
            if w.seen.as_ref().is_some_and(|s| *s != epoch.id) {
                w.replaced = Some(epoch.id.clone());
            }
            w.seen = Some(epoch.id.clone());
            let lost = epoch.after_loss || w.replaced.as_ref() == Some(&epoch.id);
            let age = unix_ms().saturating_sub(epoch.created_ms);
            if lost && age < self.ttl.as_millis() as u64 {
                return Err("the registry was rebuilt less than one edge TTL ago");
            }
            if live
                .keys()
                .any(|e| synced.get(e.as_str()) != Some(&epoch.id))
            {
                return Err("a live edge has not written its interest again yet");
            }
            Ok(raw.to_string())
        })();
        let whole = verdict.is_ok();
        match verdict {
            Ok(raw) => {
                w.whole_under = Some(raw);
                w.why.clear();
            }
            Err(why) => {
                w.whole_under = None;
                w.why = why.to_string();
            }
        }
        metrics::gauge!("herald_registry_whole").set(if whole { 1.0 } else { 0.0 });
    }

    /// The registry's epoch id, created when missing; `after_loss` marks one created by an
    /// edge that had written its interest under an earlier epoch.
    async fn current_epoch(&self, after_loss: bool) -> Result<Epoch, RegistryError> {
        let raw: String = self
            .script(
                &self.epoch,
                &[&self.keys.epoch()],
                &[Epoch::fresh(after_loss)],
            )
            .await?;
        Epoch::parse(&raw).ok_or_else(|| self.failed(format!("unreadable registry epoch {raw:?}")))
    }

    /// Refreshes when the live cache is older than [`LIVE_FRESH`], or when `unknown` (a
    /// candidate edge the cache has never seen: it may have registered since), and cleans up
    /// edges found dead in the background.
    async fn ensure_live(self: &Arc<Self>, unknown: bool) -> Result<(), RegistryError> {
        let (age, generation) = {
            let live = self.live.read();
            (live.fetched.map(|t| t.elapsed()), live.generation)
        };
        let fresh = if self.wholeness.read().whole_under.is_some() {
            LIVE_FRESH
        } else {
            INCOMPLETE_FRESH
        };
        if !unknown && age.is_some_and(|a| a < fresh) {
            return Ok(());
        }
        let dead = self.refresh_live(Some(generation)).await?;
        for edge in dead {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.reap(&edge, false).await {
                    tracing::debug!(edge = %edge, error = %e, "cleanup of a dead edge failed");
                }
            });
        }
        Ok(())
    }

    fn alive_now(&self, edge: &EdgeId) -> Option<bool> {
        self.live
            .read()
            .until
            .get(edge)
            .map(|t| *t > Instant::now())
    }

    /// Removes every entry of `edge` once its liveness is gone (or at once when `forced`, for
    /// an edge that deregisters itself). Returns whether this call did the cleanup.
    async fn reap(&self, edge: &EdgeId, forced: bool) -> Result<bool, RegistryError> {
        if !self.reaping.lock().insert(edge.clone()) {
            return Ok(false);
        }
        let r = self.reap_inner(edge, forced).await;
        self.reaping.lock().remove(edge);
        r
    }

    async fn reap_inner(&self, edge: &EdgeId, forced: bool) -> Result<bool, RegistryError> {
        let (alive, reaping) = (
            self.keys.alive(edge.as_str()),
            self.keys.reaping(edge.as_str()),
        );
        if forced {
            self.query::<()>(redis::cmd("DEL").arg(&alive)).await?;
        }
        let lease = REAP_LEASE.as_millis().to_string();
        let won: i64 = self
            .script(
                &self.reap_start,
                &[&alive, &reaping],
                &[lease.clone(), unix_ms().to_string()],
            )
            .await?;
        if won != 1 {
            return Ok(false);
        }
        let members: Vec<String> = self
            .index_members(edge.as_str())
            .await?
            .into_iter()
            .collect();
        for chunk in members.chunks(CHUNK) {
            let cmds = chunk
                .iter()
                .map(|m| {
                    let mut c = redis::cmd("SREM");
                    c.arg(self.keys.interest(m)).arg(edge.as_str());
                    c
                })
                .collect();
            self.phase(cmds).await?;
            self.query::<()>(redis::cmd("PEXPIRE").arg(&reaping).arg(&lease))
                .await?;
        }
        self.query::<()>(redis::cmd("DEL").arg(self.keys.index(edge.as_str())))
            .await?;
        // Its members leave: the users it was the last edge of are announced gone.
        let member_index = self.keys.member_index(edge.as_str());
        let members: Vec<Member> = self
            .scan_set(&member_index)
            .await?
            .iter()
            .filter_map(|m| parse_member(m))
            .collect();
        for chunk in members.chunks(CHUNK) {
            let events = self.write_members(edge, &[], chunk).await?;
            self.announce(events);
            self.query::<()>(redis::cmd("PEXPIRE").arg(&reaping).arg(&lease))
                .await?;
        }
        self.query::<()>(redis::cmd("DEL").arg(&member_index))
            .await?;
        self.query::<()>(redis::cmd("SREM").arg(self.keys.edges()).arg(edge.as_str()))
            .await?;
        self.query::<()>(
            redis::cmd("HDEL")
                .arg(self.keys.synced())
                .arg(edge.as_str()),
        )
        .await?;
        self.query::<()>(redis::cmd("DEL").arg(&reaping)).await?;
        self.live.write().until.remove(edge);
        metrics::counter!("herald_registry_edges_reaped_total").increment(1);
        tracing::info!(edge = %edge, entries = members.len(), forced, "dead edge cleaned up");
        Ok(true)
    }
}

/// Splits adds and removes into pieces of at most [`CHUNK`] members each.
fn chunks<'a>(adds: &'a [String], removes: &'a [String]) -> Vec<(&'a [String], &'a [String])> {
    let mut out = Vec::new();
    let (mut a, mut r) = (adds, removes);
    while !a.is_empty() || !r.is_empty() || out.is_empty() {
        let ta = a.len().min(CHUNK);
        let tr = r.len().min(CHUNK - ta);
        out.push((&a[..ta], &r[..tr]));
        a = &a[ta..];
        r = &r[tr..];
        if a.is_empty() && r.is_empty() {
            break;
        }
    }
    out
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn heartbeat(&self, edge: &EdgeId) -> Result<Liveness, RegistryError> {
        let _call = Call::start(
            REGISTRY_CALL_SECONDS,
            "heartbeat",
            "herald.registry.heartbeat",
        );
        let inner = &self.inner;
        let (alive, reaping) = (
            inner.keys.alive(edge.as_str()),
            inner.keys.reaping(edge.as_str()),
        );
        let ttl = inner.ttl.as_millis().to_string();
        let state: i64 = inner
            .script_unguarded(
                &inner.heartbeat,
                &[&alive, &reaping],
                &[ttl, unix_ms().to_string()],
            )
            .await?;
        if state == 2 {
            return Ok(Liveness::Fenced);
        }
        inner
            .live
            .write()
            .until
            .insert(edge.clone(), Instant::now() + inner.ttl);
        inner
            .query::<()>(
                redis::cmd("SADD")
                    .arg(inner.keys.edges())
                    .arg(edge.as_str()),
            )
            .await?;
        // A new epoch means the registry lost its state (or this edge never wrote under it):
        // the edge writes its whole interest again even when its own liveness key survived.
        let synced = inner.synced.lock().get(edge).cloned();
        let epoch = inner.current_epoch(synced.is_some()).await?;
        let current = synced.as_ref() == Some(&epoch.id);
        // Edges notice dead peers too: whoever notices first cleans up. Apart from the
        // heartbeat: the refresh waits its turn behind other refreshes and reads every edge's
        // liveness, which on a slow Redis held the next renewal back past the TTL.
        let refresher = self.inner.clone();
        tokio::spawn(async move {
            if let Err(e) = refresher.ensure_live(false).await {
                tracing::debug!(error = %e, "live-edge refresh failed");
            }
        });
        Ok(if state == 1 && current {
            Liveness::Renewed
        } else {
            Liveness::Registered
        })
    }

    fn heartbeat_interval(&self) -> Duration {
        (self.inner.ttl / 3).max(Duration::from_millis(200))
    }

    async fn update(&self, edge: &EdgeId, changes: &[InterestChange]) -> Result<(), RegistryError> {
        let _call = Call::start(REGISTRY_CALL_SECONDS, "update", "herald.registry.update");
        // The last change of a key wins: a batch holds the edge's latest state of each key.
        let mut last: HashMap<String, bool> = HashMap::with_capacity(changes.len());
        let mut members: HashMap<Member, bool> = HashMap::new();
        for c in changes {
            let (InterestChange::Add(k) | InterestChange::Remove(k)) = c;
            let add = matches!(c, InterestChange::Add(_));
            match k {
                InterestKey::Member(p, g, u) => {
                    members.insert((p.clone(), g.clone(), u.clone()), add);
                }
                k => {
                    last.insert(Keys::member(k), add);
                }
            }
        }
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        for (m, add) in last {
            if add {
                adds.push(m);
            } else {
                removes.push(m);
            }
        }
        if !adds.is_empty() {
            self.inner
                .unconfirmed
                .lock()
                .entry(edge.clone())
                .or_default()
                .extend(adds.iter().cloned());
        }
        if !adds.is_empty() || !removes.is_empty() || members.is_empty() {
            self.inner.write(edge, &adds, &removes).await?;
        }
        if !adds.is_empty()
            && let Some(u) = self.inner.unconfirmed.lock().get_mut(edge)
        {
            for m in &adds {
                u.remove(m);
            }
        }
        if !members.is_empty() {
            let (mut joins, mut leaves) = (Vec::new(), Vec::new());
            for (m, add) in members {
                if add {
                    joins.push(m);
                } else {
                    leaves.push(m);
                }
            }
            let events = self.inner.write_members(edge, &joins, &leaves).await?;
            if !events.is_empty() && self.inner.epoch_is_synced(edge).await {
                self.inner.announce(events);
            }
        }
        Ok(())
    }

    async fn resync(&self, edge: &EdgeId, keys: &[InterestKey]) -> Result<(), RegistryError> {
        let _call = Call::start(REGISTRY_CALL_SECONDS, "resync", "herald.registry.resync");
        let inner = &self.inner;
        // The epoch is read first: a loss during the writes makes a new one, which this
        // confirmation does not name, so the next heartbeat resyncs again.
        let had = inner.synced.lock().get(edge).cloned();
        let epoch = inner.current_epoch(had.is_some()).await?;
        let old = inner.index_members(edge.as_str()).await?;
        let now: HashSet<String> = keys
            .iter()
            .filter(|k| !matches!(k, InterestKey::Member(..)))
            .map(Keys::member)
            .collect();
        let removes: Vec<String> = old.difference(&now).cloned().collect();
        // Under the epoch it last wrote under, on the same Redis process, the edge's index is
        // what the registry holds of it (the index learns of an entry before the entry is
        // written; entries of writes not known complete are written again): only the
        // difference is written. Otherwise (a new epoch, a restarted Redis, a Redis Cluster)
        // everything is.
        // Only on a single Redis that has not restarted since: a Redis Cluster node's restart
        // is not seen here, so a cluster always writes everything.
        let run_id = if inner.cluster {
            None
        } else {
            let info: String = inner.query(redis::cmd("INFO").arg("server")).await?;
            info.lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(|r| r.trim().to_string())
        };
        let same_redis = run_id.is_some() && *inner.run_id.lock() == run_id;
        let adds: Vec<String> = if same_redis && had.as_ref() == Some(&epoch.id) {
            let unconfirmed = inner.unconfirmed.lock();
            let unconfirmed = unconfirmed.get(edge);
            now.iter()
                .filter(|m| !old.contains(*m) || unconfirmed.is_some_and(|u| u.contains(*m)))
                .cloned()
                .collect()
        } else {
            now.into_iter().collect()
        };
        // Until written, these are unconfirmed too (a failed resync is retried as a diff).
        inner
            .unconfirmed
            .lock()
            .entry(edge.clone())
            .or_default()
            .extend(adds.iter().cloned());
        inner.write(edge, &adds, &removes).await?;
        // Everything wanted is written, everything else removed.
        inner.unconfirmed.lock().remove(edge);
        // Members: those the index holds and the edge no longer does leave (announced: they
        // did leave); the others are written again. Their transitions are announced only under
        // the epoch the edge wrote under before (a reaped edge coming back, an overflowed
        // queue); after a loss the hash is being rebuilt and a "first" means nothing.
        let old_members: HashSet<Member> = inner
            .scan_set(&inner.keys.member_index(edge.as_str()))
            .await?
            .iter()
            .filter_map(|m| parse_member(m))
            .collect();
        let now_members: HashSet<Member> = keys
            .iter()
            .filter_map(|k| match k {
                InterestKey::Member(p, g, u) => Some((p.clone(), g.clone(), u.clone())),
                _ => None,
            })
            .collect();
        let gone: Vec<Member> = old_members.difference(&now_members).cloned().collect();
        let held: Vec<Member> = now_members.into_iter().collect();
        let events = inner.write_members(edge, &held, &gone).await?;
        if had.as_ref() == Some(&epoch.id) {
            inner.announce(events);
        }
        *inner.run_id.lock() = run_id;
        inner
            .query::<()>(
                redis::cmd("HSET")
                    .arg(inner.keys.synced())
                    .arg(edge.as_str())
                    .arg(&epoch.id),
            )
            .await?;
        inner.synced.lock().insert(edge.clone(), epoch.id.clone());
        tracing::info!(edge = %edge, keys = adds.len(), stale = removes.len(), epoch = %epoch.id, "interest re-registered");
        Ok(())
    }

    async fn deregister(&self, edge: &EdgeId) -> Result<(), RegistryError> {
        let _call = Call::start(
            REGISTRY_CALL_SECONDS,
            "deregister",
            "herald.registry.deregister",
        );
        self.inner.reap(edge, true).await.map(|_| ())
    }

    async fn edges_for(&self, key: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
        let _call = Call::start(
            REGISTRY_CALL_SECONDS,
            "edges_for",
            "herald.registry.edges_for",
        );
        let inner = &self.inner;
        let names: Vec<String> = inner
            .query(redis::cmd("SMEMBERS").arg(inner.keys.interest(&Keys::member(key))))
            .await?;
        let candidates: Vec<EdgeId> = names.iter().filter_map(|n| EdgeId::new(n).ok()).collect();
        let unknown = candidates.iter().any(|e| inner.alive_now(e) != Some(true));
        inner.ensure_live(unknown).await?;
        // Never an edge whose liveness is known to have run out.
        Ok(candidates
            .into_iter()
            .filter(|e| inner.alive_now(e) == Some(true))
            .collect())
    }

    async fn resolve(&self, key: &InterestKey) -> Result<Route, RegistryError> {
        let _call = Call::start(REGISTRY_CALL_SECONDS, "resolve", "herald.registry.resolve");
        let inner = &self.inner;
        // One round trip: the key's edges, then the epoch (pipelined in this order, so a flush
        // between the two reads shows as a missing epoch; on a cluster, sent to both nodes at
        // once).
        let mut replies = inner
            .phase(vec![
                redis::cmd("SMEMBERS")
                    .arg(inner.keys.interest(&Keys::member(key)))
                    .clone(),
                redis::cmd("GET").arg(inner.keys.epoch()).clone(),
            ])
            .await?
            .into_iter();
        let names: Vec<String> = replies
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_default();
        let epoch: Option<String> = replies
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .flatten();
        let candidates: Vec<EdgeId> = names.iter().filter_map(|n| EdgeId::new(n).ok()).collect();
        let whole = |inner: &Inner| {
            let w = inner.wholeness.read();
            match (&epoch, &w.whole_under) {
                (Some(now), Some(then)) if now == then => None,
                (None, _) => Some("the registry has no epoch (flushed or restarted)".to_string()),
                (Some(_), None) => Some(w.why.clone()),
                (Some(_), Some(_)) => Some("the registry's epoch changed".to_string()),
            }
        };
        let unknown = candidates.iter().any(|e| inner.alive_now(e) != Some(true));
        // Judged whole under another epoch than the one just read: judge again now. Once
        // judged incomplete, what is known is refreshed every INCOMPLETE_FRESH.
        let changed = whole(inner).is_some() && inner.wholeness.read().whole_under.is_some();
        inner.ensure_live(unknown || changed).await?;
        if let Some(why) = whole(inner) {
            return Ok(Route::Incomplete(why));
        }
        // Never an edge whose liveness is known to have run out.
        Ok(Route::Edges(
            candidates
                .into_iter()
                .filter(|e| inner.alive_now(e) == Some(true))
                .collect(),
        ))
    }

    async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
        let _call = Call::start(
            REGISTRY_CALL_SECONDS,
            "live_edges",
            "herald.registry.live_edges",
        );
        let inner = &self.inner;
        inner.ensure_live(false).await?;
        let now = Instant::now();
        let mut edges: Vec<EdgeId> = inner
            .live
            .read()
            .until
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|(e, _)| e.clone())
            .collect();
        edges.sort();
        Ok(edges)
    }

    fn degraded(&self) -> Option<String> {
        self.inner.health.degraded()
    }

    fn set_presence_sink(&self, sink: Arc<dyn PresenceSink>) {
        *self.inner.sink.write() = Some(sink);
    }

    async fn claim_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
        window: Duration,
    ) -> Result<bool, RegistryError> {
        let _call = Call::start(
            REGISTRY_CALL_SECONDS,
            "claim_idempotency_key",
            "herald.registry.claim_idempotency_key",
        );
        let inner = &self.inner;
        let set: Option<String> = inner
            .query(
                redis::cmd("SET")
                    .arg(inner.keys.idempotency(project, key))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(window.as_millis().max(1) as u64),
            )
            .await?;
        Ok(set.is_some())
    }

    async fn release_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
    ) -> Result<(), RegistryError> {
        let _call = Call::start(
            REGISTRY_CALL_SECONDS,
            "release_idempotency_key",
            "herald.registry.release_idempotency_key",
        );
        let inner = &self.inner;
        inner
            .query::<()>(redis::cmd("DEL").arg(inner.keys.idempotency(project, key)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_one_tag_per_user_group_or_edge() {
        let k = Keys {
            prefix: "herald".into(),
        };
        let p = ProjectId::new("alpha").expect("valid");
        let u = InterestKey::User(p.clone(), "alice".parse().expect("valid"));
        let g = InterestKey::Group(p, "alice".parse().expect("valid"));
        assert_eq!(k.interest(&Keys::member(&u)), "herald:int:{alpha:u:alice}");
        assert_eq!(k.interest(&Keys::member(&g)), "herald:int:{alpha:g:alice}");
        assert_eq!(k.alive("e1"), "herald:edge:{e1}:alive");
        assert_eq!(k.index("e1"), "herald:edge:{e1}:keys");
    }

    #[test]
    fn chunks_cover_everything_once() {
        let adds: Vec<String> = (0..CHUNK * 2 + 5).map(|i| i.to_string()).collect();
        let removes: Vec<String> = (0..7).map(|i| format!("r{i}")).collect();
        let parts = chunks(&adds, &removes);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(|(a, _)| a.len()).sum::<usize>(),
            adds.len()
        );
        assert_eq!(parts.iter().map(|(_, r)| r.len()).sum::<usize>(), 7);
        assert!(parts.iter().all(|(a, r)| a.len() + r.len() <= CHUNK));
        assert_eq!(chunks(&[], &[]).len(), 1);
    }
}
