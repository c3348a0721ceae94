//! The history store in Redis: every recoverable stream is a Redis stream of its messages plus a
//! meta hash (epoch, last offset, retention), the two keys sharing one hash tag, so each append
//! and each read is one Lua script on one slot of a single Redis or a Redis Cluster. The layout
//! is documented in `docs/cluster.md`.
//!
//! Round trips: an append is **one** (`EVALSHA` of the append script), a read is one, positions
//! of any number of streams are one (pipelined `HMGET`s; on a cluster sent to every node at
//! once) plus one when some stream has no meta yet (its epoch is created, `EVAL` of a small
//! script). After Redis lost its script cache (a restart, `SCRIPT FLUSH`) an append or a read
//! is refused once and sent again whole (`EVAL`, which caches it again): two round trips, never
//! more.
//!
//! Entry ids are `<offset>-<append time in ms>`: the offset as the id's first part orders the
//! stream by offset, so "after offset N" is `XRANGE <N+1> +`, and the time in the second part
//! (from Redis's own clock, `TIME`) gives trimming by age without a field per entry. The offset
//! comes from `HINCRBY` on the meta hash, so it keeps counting when every message has aged out.
//! A stream that lost its meta (a flush, an eviction, the meta's expiry) starts over with a new
//! epoch, and its stale entries are deleted first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use herald_core::history::{
    History, HistoryError, MAX_SIZE, Page, Position, Retention, StreamKey, StreamTarget, new_epoch,
};
use redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};

use crate::ClusterError;
use crate::redis_conn::{Conn, Health, HealthNames};
use crate::redis_registry::RedisConfig;

/// How long a stream's meta (epoch and last offset) outlives its last append by default, past
/// the retention's age: a client that comes back within it learns "nothing kept" rather than
/// "history lost" (as Centrifugo's `history_meta_ttl`; the in-process store keeps it a day too).
pub const DEFAULT_META_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How many commands of one phase are in flight at once on a cluster.
const IN_FLIGHT: usize = 2_000;

/// Offsets never reach 2^53 (Lua numbers are doubles); larger client-given offsets are clamped.
const MAX_OFFSET: u64 = 1 << 53;

/// Lua shared by the scripts: the time, entry ids, and the oldest offset still young enough.
/// Times are Redis's own (`TIME`; scripts replicate by effects since Redis 5), so they never go
/// back from one append to the next on one server.
macro_rules! lua_prelude {
    () => {
        r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function id_parts(id)
  local o, t = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(o), tonumber(t)
end
-- The oldest offset appended at or after `cutoff` (last + 1 when none), whether older entries
-- precede it, and its append time. Entries are in offset order and times never decrease, so a
-- binary search over the offsets finds the boundary in O(log n) lookups.
local function first_kept(stream, cutoff, last)
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if not head then return last + 1, false, nil end
  local o, t = id_parts(head[1])
  if t >= cutoff then return o, false, t end
  local lo, hi = o + 1, last + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', stream, string.format('%d', mid), '+', 'COUNT', 1)[1]
    local young = true
    if e then
      local _, et = id_parts(e[1])
      young = et >= cutoff
    end
    if young then hi = mid else lo = mid + 1 end
  end
  local e = redis.call('XRANGE', stream, string.format('%d', lo), '+', 'COUNT', 1)[1]
  if not e then return last + 1, true, nil end
  local eo, et = id_parts(e[1])
  return eo, true, et
end
"
    };
}

/// Append: creates the epoch when the meta is missing (dropping stale entries), takes the next
/// offset, adds the entry (trimmed by count), trims by age when something may have aged out,
/// renews both expiries.
/// KEYS: meta, stream. ARGV: epoch if new, size, ttl ms, meta ttl ms, data.
/// Returns {offset, epoch}.
///
/// The age check reads the stream's head (which skips the entries `MAXLEN` marked deleted in the
/// first node: a third of the script's cost when done on every append), so it runs only from
/// `a` on: the oldest entry's time plus the age when last checked, before which nothing can have
/// aged out (count trimming only makes the real head younger), or when the age changed.
const APPEND: &str = concat!(
    lua_prelude!(),
    r"
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
local m = redis.call('HMGET', KEYS[1], 'e', 't', 'a')
local off = redis.call('HINCRBY', KEYS[1], 'o', 1)
local now = now_ms()
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], string.format('%d-%d', off, now), 'd', ARGV[5])
local ttl = tonumber(ARGV[3])
if m[2] ~= ARGV[3] or not m[3] or now >= tonumber(m[3]) then
  local first, aged, head_t = first_kept(KEYS[2], now - ttl, off)
  if aged then
    redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', first))
  end
  redis.call('HSET', KEYS[1], 't', ARGV[3], 'a', string.format('%d', (head_t or now) + ttl))
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {off, tonumber(m[1])}
"
);

/// Read: creates the epoch when the meta is missing (expiring after the grace), then the
/// position, the oldest offset kept, and up to `limit` entries after `after` that are kept.
/// KEYS: meta, stream. ARGV: epoch if new, after, limit, meta ttl ms of a new meta.
/// Returns {epoch, offset, first, (offset, data)...}.
const READ: &str = concat!(
    lua_prelude!(),
    r"
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local m = redis.call('HMGET', KEYS[1], 'e', 'o', 't')
local off = tonumber(m[2]) or 0
local cutoff = 0
if m[3] then cutoff = now_ms() - tonumber(m[3]) end
local first = first_kept(KEYS[2], cutoff, off)
local out = {tonumber(m[1]), off, first}
local limit = tonumber(ARGV[3])
local from = math.max(tonumber(ARGV[2]) + 1, first)
if limit > 0 and from <= off then
  local es = redis.call('XRANGE', KEYS[2], string.format('%d', from), '+', 'COUNT', limit)
  for _, e in ipairs(es) do
    local o = id_parts(e[1])
    out[#out + 1] = o
    out[#out + 1] = e[2][2]
  end
end
return out
"
);

/// Position of a stream without meta: creates its epoch (expiring after the grace).
/// KEYS: meta, stream. ARGV: epoch if new, meta ttl ms. Returns {epoch, offset}.
const CREATE: &str = r"
if redis.call('HSETNX', KEYS[1], 'e', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local m = redis.call('HMGET', KEYS[1], 'e', 'o')
return {tonumber(m[1]), tonumber(m[2]) or 0}
";

/// Key names; see `docs/cluster.md`.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    /// A stream's hash tag: `<project>:broadcast`, `<project>:group:<group>` or
    /// `<project>:user:<user>`. Project ids hold no `:`, and no id holds `:`, `{` or `}`, so a
    /// tag names one stream only; the words differ from the registry's `u`/`g` tags, so a
    /// user's history and its registry entry spread over different slots.
    fn tag(stream: &StreamKey) -> String {
        match &stream.target {
            StreamTarget::Broadcast => format!("{}:broadcast", stream.project),
            StreamTarget::Group(g) => format!("{}:group:{g}", stream.project),
            StreamTarget::User(u) => format!("{}:user:{u}", stream.project),
        }
    }

    /// The meta hash (`e` epoch, `o` last offset, `t` retention age in ms, `a` when the next
    /// append checks age) and the stream.
    fn pair(&self, stream: &StreamKey) -> (String, String) {
        let tag = Self::tag(stream);
        (
            format!("{}:h:{{{tag}}}:m", self.prefix),
            format!("{}:h:{{{tag}}}:s", self.prefix),
        )
    }
}

struct Inner {
    conn: Conn,
    keys: Keys,
    cluster: bool,
    timeout: Duration,
    /// How long a meta outlives its retention age, in ms.
    meta_grace_ms: AtomicU64,
    append: Script,
    read: Script,
    health: Health,
}

/// The history store in Redis (single or Cluster). Cheap to clone.
#[derive(Clone)]
pub struct RedisHistory {
    inner: Arc<Inner>,
}

impl RedisHistory {
    /// Builds the store from the registry's settings (URLs, cluster or not, key prefix, call
    /// deadline; the edge TTL is not used) on a connection of its own, so appends never queue
    /// behind a registry batch. Connects lazily. Must be called inside a tokio runtime.
    pub fn new(cfg: &RedisConfig) -> Result<Self, ClusterError> {
        let conn = Conn::new(cfg)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                keys: Keys {
                    prefix: cfg.key_prefix.clone(),
                },
                cluster: cfg.cluster,
                timeout: cfg.timeout,
                meta_grace_ms: AtomicU64::new(DEFAULT_META_GRACE.as_millis() as u64),
                append: Script::new(APPEND),
                read: Script::new(READ),
                health: Health::new(HealthNames {
                    label: "redis history",
                    up: "herald_history_up",
                    errors: "herald_history_errors_total",
                    trips: "herald_history_round_trips_total",
                }),
            }),
        })
    }

    /// Sets how long a stream's epoch and offset outlive its retention age after the last
    /// append (default [`DEFAULT_META_GRACE`]); for every clone.
    pub fn with_meta_grace(self, grace: Duration) -> Self {
        self.inner
            .meta_grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
        self
    }

    /// Round trips to Redis so far (a script, a command or a pipeline each count one; on Redis
    /// Cluster a phase sent to several nodes at once counts one).
    pub fn round_trips(&self) -> u64 {
        self.inner.health.round_trips()
    }

    /// Why the store is failing, while it is (the last error), for readiness.
    pub fn degraded(&self) -> Option<String> {
        self.inner.health.degraded()
    }

    /// `PING`s the store within the call deadline; the outcome updates [`Self::degraded`]. Not
    /// counted in [`Self::round_trips`], which counts the work of appends, reads and checks.
    pub async fn probe(&self) -> Result<(), HistoryError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<Value>(&mut conn);
        match tokio::time::timeout(inner.timeout, ping).await {
            Ok(r) => inner.outcome(r).map(drop),
            Err(_) => Err(inner.failed("redis call timed out".into())),
        }
    }

    /// The Redis key of a session (`<prefix>:s:<project>:<id>`, see `redis_sessions`).
    pub fn session_key(&self, key: &herald_core::sessions::SessionKey) -> String {
        format!("{}:s:{}:{}", self.inner.keys.prefix, key.project, key.id)
    }

    /// Runs a script on keys of one slot (see [`Inner::script`]).
    pub(crate) async fn run_script(
        &self,
        script: &Script,
        source: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, HistoryError> {
        self.inner.script(script, source, keys, args).await
    }

    /// Runs one command under the call deadline, recorded for readiness.
    pub(crate) async fn command(&self, cmd: Cmd) -> Result<Value, HistoryError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        inner.trip();
        match tokio::time::timeout(inner.timeout, cmd.query_async::<Value>(&mut conn)).await {
            Ok(r) => inner.outcome(r),
            Err(_) => Err(inner.failed("redis call timed out".into())),
        }
    }

    /// The Redis keys of a stream: its meta hash and its stream (tests, measurements).
    pub fn keys_of(&self, stream: &StreamKey) -> (String, String) {
        self.inner.keys.pair(stream)
    }
}

/// A reply that is not what the scripts return.
fn bad_reply(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "unexpected history reply",
        what.to_string(),
    ))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn epoch_of(v: &Value) -> Option<u32> {
    int(v)
        .and_then(|e| u32::try_from(e).ok())
        .filter(|e| *e != 0)
}

fn offset_of(v: &Value) -> Option<u64> {
    match v {
        Value::Nil => Some(0),
        v => int(v).and_then(|o| u64::try_from(o).ok()),
    }
}

/// `{offset, epoch}` of the append script, `{epoch, offset}` of the create script.
fn pair_reply(v: Value, epoch_first: bool) -> redis::RedisResult<Position> {
    let Value::Array(items) = v else {
        return Err(bad_reply("not an array"));
    };
    let [a, b] = items.as_slice() else {
        return Err(bad_reply("not two items"));
    };
    let (e, o) = if epoch_first { (a, b) } else { (b, a) };
    match (epoch_of(e), offset_of(o)) {
        (Some(epoch), Some(offset)) => Ok(Position { offset, epoch }),
        _ => Err(bad_reply("bad epoch or offset")),
    }
}

fn page_reply(v: Value) -> redis::RedisResult<Page> {
    let Value::Array(items) = v else {
        return Err(bad_reply("not an array"));
    };
    if items.len() < 3 || items.len() % 2 == 0 {
        return Err(bad_reply("wrong length"));
    }
    let (Some(epoch), Some(offset), Some(first)) = (
        epoch_of(&items[0]),
        offset_of(&items[1]),
        offset_of(&items[2]),
    ) else {
        return Err(bad_reply("bad position"));
    };
    let mut messages = Vec::with_capacity((items.len() - 3) / 2);
    let mut rest = items.into_iter().skip(3);
    while let (Some(o), Some(d)) = (rest.next(), rest.next()) {
        let (Some(o), Value::BulkString(d)) = (offset_of(&o), d) else {
            return Err(bad_reply("bad entry"));
        };
        messages.push((o, Bytes::from(d)));
    }
    Ok(Page {
        position: Position { offset, epoch },
        first,
        messages,
    })
}

fn no_script(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// The command that runs `script` by hash.
fn evalsha(script: &Script, keys: &[&str], args: &[&[u8]]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len()).arg(keys).arg(args);
    c
}

/// The same, sending the script's text (which also caches it on the server).
fn eval(source: &str, keys: &[&str], args: &[&[u8]]) -> Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(source).arg(keys.len()).arg(keys).arg(args);
    c
}

impl Inner {
    /// Records the outcome of a call for readiness, metrics and the log.
    fn outcome<T>(&self, r: redis::RedisResult<T>) -> Result<T, HistoryError> {
        match r {
            Ok(v) => {
                self.health.ok();
                Ok(v)
            }
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    fn failed(&self, msg: String) -> HistoryError {
        HistoryError::Unavailable(self.health.failed(msg))
    }

    fn trip(&self) {
        self.health.trip();
    }

    /// Runs a script on keys of one hash tag: by hash, and whole when Redis lost its script
    /// cache (two round trips then, never three).
    async fn script(
        &self,
        script: &Script,
        source: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, HistoryError> {
        self.health.check().map_err(HistoryError::Unavailable)?;
        let run = async {
            let mut conn = self.conn.clone();
            self.trip();
            match evalsha(script, keys, args)
                .query_async::<Value>(&mut conn)
                .await
            {
                Err(e) if no_script(&e) => {
                    self.trip();
                    eval(source, keys, args)
                        .query_async::<Value>(&mut conn)
                        .await
                }
                r => r,
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => self.outcome(r),
            Err(_) => Err(self.failed("redis call timed out".into())),
        }
    }

    /// Runs independent commands as one phase: one pipeline on a single Redis; concurrently on a
    /// cluster (each to its slot's node, pipelined there by the multiplexed connection). Replies
    /// come back in command order, each its own result.
    async fn phase(&self, cmds: Vec<Cmd>) -> Result<Vec<redis::RedisResult<Value>>, HistoryError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.health.check().map_err(HistoryError::Unavailable)?;
        self.trip();
        let run = async {
            if self.cluster {
                Ok(futures_util::stream::iter(cmds.into_iter().map(|cmd| {
                    let mut conn = self.conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                }))
                .buffered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await)
            } else {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                let mut conn = self.conn.clone();
                let replies = pipe.query_async::<Vec<Value>>(&mut conn).await?;
                Ok(replies
                    .into_iter()
                    .map(|v| match v {
                        Value::ServerError(e) => Err(RedisError::from(e)),
                        v => Ok(v),
                    })
                    .collect())
            }
        };
        match tokio::time::timeout(self.timeout * 2, run).await {
            Ok(r) => self.outcome(r),
            Err(_) => Err(self.failed("redis pipeline timed out".into())),
        }
    }

    fn meta_ttl_ms(&self, retention_age: Duration) -> String {
        let grace = self.meta_grace_ms.load(Ordering::Relaxed);
        (retention_age.as_millis() as u64)
            .saturating_add(grace)
            .max(1)
            .to_string()
    }
}

#[async_trait]
impl History for RedisHistory {
    async fn append(
        &self,
        stream: &StreamKey,
        retention: Retention,
        data: Bytes,
    ) -> Result<Position, HistoryError> {
        let inner = &self.inner;
        let (meta, s) = inner.keys.pair(stream);
        let epoch = new_epoch().to_string();
        let size = retention.size.clamp(1, MAX_SIZE).to_string();
        let ttl = retention.ttl.as_millis().max(1).to_string();
        let meta_ttl = inner.meta_ttl_ms(retention.ttl);
        let v = inner
            .script(
                &inner.append,
                APPEND,
                &[&meta, &s],
                &[
                    epoch.as_bytes(),
                    size.as_bytes(),
                    ttl.as_bytes(),
                    meta_ttl.as_bytes(),
                    &data,
                ],
            )
            .await?;
        inner.outcome(pair_reply(v, false))
    }

    async fn read(
        &self,
        stream: &StreamKey,
        after: u64,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let inner = &self.inner;
        let (meta, s) = inner.keys.pair(stream);
        let epoch = new_epoch().to_string();
        let after = after.min(MAX_OFFSET).to_string();
        // A stream never keeps more than MAX_SIZE messages.
        let limit = limit.min(MAX_SIZE as usize).to_string();
        let meta_ttl = inner.meta_ttl_ms(Duration::ZERO);
        let v = inner
            .script(
                &inner.read,
                READ,
                &[&meta, &s],
                &[
                    epoch.as_bytes(),
                    after.as_bytes(),
                    limit.as_bytes(),
                    meta_ttl.as_bytes(),
                ],
            )
            .await?;
        inner.outcome(page_reply(v))
    }

    async fn positions(&self, streams: &[StreamKey]) -> Result<Vec<Position>, HistoryError> {
        let inner = &self.inner;
        let pairs: Vec<(String, String)> = streams.iter().map(|k| inner.keys.pair(k)).collect();
        // 1. Every meta at once.
        let cmds = pairs
            .iter()
            .map(|(meta, _)| {
                let mut c = redis::cmd("HMGET");
                c.arg(meta).arg("e").arg("o");
                c
            })
            .collect();
        let mut out: Vec<Option<Position>> = Vec::with_capacity(streams.len());
        for r in inner.phase(cmds).await? {
            let items = match inner.outcome(r)? {
                Value::Array(items) => items,
                _ => return Err(inner.failed("unexpected history reply".into())),
            };
            let [e, o] = items.as_slice() else {
                return Err(inner.failed("unexpected history reply".into()));
            };
            out.push(match (e, epoch_of(e), offset_of(o)) {
                (Value::Nil, _, _) => None,
                (_, Some(epoch), Some(offset)) => Some(Position { offset, epoch }),
                _ => return Err(inner.failed("bad epoch or offset in history meta".into())),
            });
        }
        // 2. Streams without meta get their epoch. Rare (new streams, a flushed Redis), so the
        //    small script is sent whole: one round trip, whether Redis has it cached or not.
        let missing: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
        if !missing.is_empty() {
            let meta_ttl = inner.meta_ttl_ms(Duration::ZERO);
            let cmds = missing
                .iter()
                .map(|i| {
                    let epoch = new_epoch().to_string();
                    let (meta, s) = &pairs[*i];
                    eval(CREATE, &[meta, s], &[epoch.as_bytes(), meta_ttl.as_bytes()])
                })
                .collect();
            for (i, r) in missing.iter().zip(inner.phase(cmds).await?) {
                let v = inner.outcome(r)?;
                out[*i] = Some(inner.outcome(pair_reply(v, true))?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn degraded(&self) -> Option<String> {
        RedisHistory::degraded(self)
    }

    async fn probe(&self) -> Result<(), HistoryError> {
        RedisHistory::probe(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::ids::{GroupId, ProjectId, UserId};

    #[test]
    fn keys_share_one_tag_per_stream_and_never_collide() {
        let k = Keys {
            prefix: "herald".into(),
        };
        let p = ProjectId::new("alpha").expect("valid");
        let key = |target| StreamKey {
            project: p.clone(),
            target,
        };
        let g = key(StreamTarget::Group(
            GroupId::new("chat/room-1").expect("valid"),
        ));
        assert_eq!(
            k.pair(&g),
            (
                "herald:h:{alpha:group:chat/room-1}:m".to_string(),
                "herald:h:{alpha:group:chat/room-1}:s".to_string()
            )
        );
        let u = key(StreamTarget::User(UserId::new("chat").expect("valid")));
        assert_eq!(k.pair(&u).1, "herald:h:{alpha:user:chat}:s");
        assert_eq!(
            k.pair(&key(StreamTarget::Broadcast)).0,
            "herald:h:{alpha:broadcast}:m"
        );
        // A group called `broadcast` is not the broadcast stream.
        let b = key(StreamTarget::Group(
            GroupId::new("broadcast").expect("valid"),
        ));
        assert_ne!(k.pair(&b), k.pair(&key(StreamTarget::Broadcast)));
    }

    #[test]
    fn replies_parse_and_refuse_what_the_scripts_never_return() {
        let page = page_reply(Value::Array(vec![
            Value::Int(7),
            Value::Int(5),
            Value::Int(4),
            Value::Int(4),
            Value::BulkString(vec![0xff, 0]),
            Value::Int(5),
            Value::BulkString(b"x".to_vec()),
        ]))
        .expect("page");
        assert_eq!(
            page.position,
            Position {
                offset: 5,
                epoch: 7
            }
        );
        assert_eq!(page.first, 4);
        assert_eq!(
            page.messages,
            vec![(4, Bytes::from_static(&[0xff, 0])), (5, Bytes::from("x"))]
        );
        assert!(
            page_reply(Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                Value::Int(1)
            ]))
            .is_err()
        );
        assert!(page_reply(Value::Array(vec![Value::Int(1), Value::Int(0)])).is_err());
        assert_eq!(
            pair_reply(Value::Array(vec![Value::Int(3), Value::Int(9)]), false).expect("pair"),
            Position {
                offset: 3,
                epoch: 9
            }
        );
        assert!(pair_reply(Value::Nil, true).is_err());
    }
}
