//! History: recoverable targets kept as streams with offsets, so a client that comes back (or an
//! edge that lost a message on the bus) gets exactly what it missed.
//!
//! A *stream* is one recoverable target of a project: the broadcast stream, one group, or one
//! user. Every message appended to a stream gets the next offset (1, 2, 3, ... with no hole), and
//! the stream has an *epoch*, drawn at random when its storage is created: a reader that finds
//! another epoch than the one it knew learns that the history it counted on is gone.
//!
//! [`History`] is the seam; [`MemoryHistory`] keeps streams in this process (`herald dev`,
//! `serve`), `herald_cluster` has one on Redis for clusters. What a project keeps is its
//! [`HistoryConfig`] (`[projects.history]`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::ids::{GroupId, ProjectId, UserId};

/// What a project keeps (`[projects.history]`). Absent: nothing is recoverable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Group names or patterns (`chat/*`: every group starting with `chat/`) whose messages are
    /// kept. Default empty.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Keep each user's own messages. Default false.
    #[serde(default)]
    pub users: bool,
    /// Keep the project's broadcasts. Default false.
    #[serde(default)]
    pub broadcast: bool,
    /// Most messages kept per stream (default 1,000, at most 1,000,000).
    #[serde(default = "default_size")]
    pub size: u32,
    /// How long a message is kept, in seconds (default 3,600, at most 30 days).
    #[serde(default = "default_ttl")]
    pub ttl_secs: u32,
}

fn default_size() -> u32 {
    1000
}

fn default_ttl() -> u32 {
    3600
}

/// The most messages a stream may keep.
pub const MAX_SIZE: u32 = 1_000_000;
/// The longest a message may be kept, in seconds.
pub const MAX_TTL_SECS: u32 = 30 * 24 * 3600;

impl HistoryConfig {
    /// Whether messages to `target` are kept.
    pub fn keeps(&self, target: &StreamTarget) -> bool {
        match target {
            StreamTarget::Broadcast => self.broadcast,
            StreamTarget::User(_) => self.users,
            StreamTarget::Group(g) => self.groups.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => g.as_str().starts_with(prefix),
                None => p == g.as_str(),
            }),
        }
    }

    /// The retention it asks for.
    pub fn retention(&self) -> Retention {
        Retention {
            size: self.size,
            ttl: Duration::from_secs(u64::from(self.ttl_secs)),
        }
    }

    /// Problems with the settings, each naming the field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.size == 0 || self.size > MAX_SIZE {
            out.push(format!("{at}.size: must be 1 to {MAX_SIZE}"));
        }
        if self.ttl_secs == 0 || self.ttl_secs > MAX_TTL_SECS {
            out.push(format!("{at}.ttl_secs: must be 1 to {MAX_TTL_SECS}"));
        }
        for (i, g) in self.groups.iter().enumerate() {
            let bad = match g.strip_suffix('*') {
                Some(prefix) => prefix.contains('*'),
                None => GroupId::new(g).is_err(),
            };
            if bad {
                out.push(format!(
                    "{at}.groups[{i}]: a group name, or a prefix ending in `*`"
                ));
            }
        }
        out
    }
}

/// How much a stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages.
    pub size: u32,
    /// Oldest message age.
    pub ttl: Duration,
}

/// Which target of a project a stream is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamTarget {
    /// The project's broadcasts.
    Broadcast,
    /// One group.
    Group(GroupId),
    /// One user's own messages.
    User(UserId),
}

/// A stream: one recoverable target of one project.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// The project.
    pub project: ProjectId,
    /// The target.
    pub target: StreamTarget,
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            StreamTarget::Broadcast => write!(f, "{}:broadcast", self.project),
            StreamTarget::Group(g) => write!(f, "{}:group:{g}", self.project),
            StreamTarget::User(u) => write!(f, "{}:user:{u}", self.project),
        }
    }
}

/// Where a stream stands: its last offset (0 when nothing was ever appended) and its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The last offset given.
    pub offset: u64,
    /// The epoch of the stream's storage (never 0).
    pub epoch: u32,
}

/// One read of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The stream's position when it was read.
    pub position: Position,
    /// The oldest offset still kept (`position.offset + 1` when nothing is kept).
    pub first: u64,
    /// Messages after the offset asked for, in order, at most the limit asked for.
    pub messages: Vec<(u64, Bytes)>,
}

/// What can go wrong with history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The store is unreachable or failed.
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

/// Where recoverable messages are kept.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Appends `data` to `stream` under the next offset and trims it to `retention`; returns
    /// the message's position (its offset and the stream's epoch).
    async fn append(
        &self,
        stream: &StreamKey,
        retention: Retention,
        data: Bytes,
    ) -> Result<Position, HistoryError>;

    /// Up to `limit` messages of `stream` after offset `after`, in order, with the position.
    async fn read(
        &self,
        stream: &StreamKey,
        after: u64,
        limit: usize,
    ) -> Result<Page, HistoryError>;

    /// The positions of `streams`, in the same order.
    async fn positions(&self, streams: &[StreamKey]) -> Result<Vec<Position>, HistoryError>;

    /// Why the store is failing, while it is (for readiness); `None` when it works, or cannot
    /// fail (the in-process store).
    fn degraded(&self) -> Option<String> {
        None
    }

    /// Asks the store whether it is reachable, which also updates [`History::degraded`]: a node
    /// that neither publishes nor reads still learns that its store went away, or came back.
    async fn probe(&self) -> Result<(), HistoryError> {
        Ok(())
    }
}

/// An epoch for new storage: random, never 0.
pub fn new_epoch() -> u32 {
    loop {
        let e: u32 = rand::random();
        if e != 0 {
            return e;
        }
    }
}

/// How long an untouched stream's offset and epoch outlive its last message.
const META_TTL: Duration = Duration::from_secs(24 * 3600);

struct MemStream {
    epoch: u32,
    offset: u64,
    /// (offset, appended at, data), oldest first.
    messages: VecDeque<(u64, Instant, Bytes)>,
    ttl: Duration,
    touched: Instant,
}

impl MemStream {
    fn new(now: Instant) -> Self {
        Self {
            epoch: new_epoch(),
            offset: 0,
            messages: VecDeque::new(),
            ttl: Duration::ZERO,
            touched: now,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at, _)) = self.messages.front() {
            if now.duration_since(*at) > self.ttl {
                self.messages.pop_front();
            } else {
                break;
            }
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch,
        }
    }
}

/// Streams kept in this process, lost with it (a restart is a new epoch for every stream).
#[derive(Default)]
pub struct MemoryHistory {
    streams: Mutex<HashMap<StreamKey, MemStream>>,
    appends: std::sync::atomic::AtomicU64,
}

impl MemoryHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages kept, over all streams.
    pub fn len(&self) -> usize {
        self.streams.lock().values().map(|s| s.messages.len()).sum()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every stream, as a lost store would: the next use draws new epochs.
    pub fn clear(&self) {
        self.streams.lock().clear();
    }

    /// Drops streams untouched for longer than their last message's age plus a day.
    fn sweep(streams: &mut HashMap<StreamKey, MemStream>, now: Instant) {
        streams.retain(|_, s| {
            s.expire(now);
            !s.messages.is_empty() || now.duration_since(s.touched) < META_TTL
        });
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(
        &self,
        stream: &StreamKey,
        retention: Retention,
        data: Bytes,
    ) -> Result<Position, HistoryError> {
        let now = Instant::now();
        let mut streams = self.streams.lock();
        let n = self
            .appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 4096 == 4095 {
            Self::sweep(&mut streams, now);
        }
        let s = streams
            .entry(stream.clone())
            .or_insert_with(|| MemStream::new(now));
        s.offset += 1;
        s.ttl = retention.ttl;
        s.touched = now;
        s.messages.push_back((s.offset, now, data));
        while s.messages.len() > retention.size as usize {
            s.messages.pop_front();
        }
        s.expire(now);
        Ok(s.position())
    }

    async fn read(
        &self,
        stream: &StreamKey,
        after: u64,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let now = Instant::now();
        let mut streams = self.streams.lock();
        let s = streams
            .entry(stream.clone())
            .or_insert_with(|| MemStream::new(now));
        s.expire(now);
        s.touched = now;
        let first = s.messages.front().map_or(s.offset + 1, |m| m.0);
        let skip = after.saturating_sub(first - 1).min(s.messages.len() as u64) as usize;
        let messages = s
            .messages
            .iter()
            .skip(skip)
            .take(limit)
            .map(|(o, _, d)| (*o, d.clone()))
            .collect();
        Ok(Page {
            position: s.position(),
            first,
            messages,
        })
    }

    async fn positions(&self, streams: &[StreamKey]) -> Result<Vec<Position>, HistoryError> {
        let now = Instant::now();
        let mut map = self.streams.lock();
        Ok(streams
            .iter()
            .map(|k| {
                map.entry(k.clone())
                    .or_insert_with(|| MemStream::new(now))
                    .position()
            })
            .collect())
    }
}

/// Checks any [`History`] against the contract: offsets without holes, reads after an offset,
/// retention by count, epochs kept while the storage lives. Shared by every implementation's tests.
pub async fn conformance(h: &dyn History, project: &str) {
    let p = ProjectId::new(project).expect("project id");
    let g = StreamKey {
        project: p.clone(),
        target: StreamTarget::Group(GroupId::new("news").expect("group")),
    };
    let u = StreamKey {
        project: p.clone(),
        target: StreamTarget::User(UserId::new("alice").expect("user")),
    };
    let keep3 = Retention {
        size: 3,
        ttl: Duration::from_secs(60),
    };
    let empty = h.read(&g, 0, 10).await.expect("read");
    assert_eq!(empty.position.offset, 0, "a new stream is at offset 0");
    assert_ne!(empty.position.epoch, 0);
    assert!(empty.messages.is_empty());
    let mut last = empty.position;
    for i in 1..=5u64 {
        let pos = h
            .append(&g, keep3, Bytes::from(format!("m{i}")))
            .await
            .expect("append");
        assert_eq!(pos.offset, i, "offsets have no hole");
        assert_eq!(pos.epoch, last.epoch, "the epoch holds");
        last = pos;
    }
    let page = h.read(&g, 0, 10).await.expect("read");
    assert_eq!(page.position, last);
    assert_eq!(page.first, 3, "retention by count keeps the last 3");
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.0).collect();
    assert_eq!(offsets, [3, 4, 5]);
    assert_eq!(page.messages[0].1, Bytes::from("m3"));
    let page = h.read(&g, 3, 1).await.expect("read");
    assert_eq!(
        page.messages,
        vec![(4, Bytes::from("m4"))],
        "after 3, limit 1"
    );
    assert!(h.read(&g, 5, 10).await.expect("read").messages.is_empty());
    // Streams are apart.
    let pu = h
        .append(&u, keep3, Bytes::from("for alice"))
        .await
        .expect("append");
    assert_eq!(pu.offset, 1);
    let pos = h
        .positions(&[u.clone(), g.clone()])
        .await
        .expect("positions");
    assert_eq!(pos, vec![pu, last]);
    // Another project's stream of the same name is another stream.
    let other = StreamKey {
        project: ProjectId::new(&format!("{project}-other")).expect("project id"),
        target: g.target.clone(),
    };
    assert_eq!(
        h.read(&other, 0, 10).await.expect("read").position.offset,
        0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_history_meets_the_contract() {
        conformance(&MemoryHistory::new(), "alpha").await;
    }

    #[tokio::test]
    async fn memory_history_expires_by_age_and_loses_its_epoch_when_cleared() {
        let h = MemoryHistory::new();
        let k = StreamKey {
            project: ProjectId::new("p").expect("id"),
            target: StreamTarget::Broadcast,
        };
        let short = Retention {
            size: 10,
            ttl: Duration::from_millis(1),
        };
        let first = h.append(&k, short, Bytes::from("a")).await.expect("append");
        std::thread::sleep(Duration::from_millis(5));
        let page = h.read(&k, 0, 10).await.expect("read");
        assert!(page.messages.is_empty(), "expired by age");
        assert_eq!(page.first, 2, "the offset is kept");
        h.clear();
        let after = h.read(&k, 0, 10).await.expect("read").position;
        assert_eq!(after.offset, 0);
        assert_ne!(after.epoch, first.epoch, "a lost store is a new epoch");
    }

    #[test]
    fn patterns_choose_groups() {
        let c = HistoryConfig {
            groups: vec!["news".into(), "chat/*".into()],
            users: true,
            broadcast: false,
            size: 10,
            ttl_secs: 10,
        };
        let g = |s: &str| StreamTarget::Group(GroupId::new(s).expect("group"));
        assert!(c.keeps(&g("news")));
        assert!(c.keeps(&g("chat/room-1")));
        assert!(!c.keeps(&g("newsy")));
        assert!(!c.keeps(&StreamTarget::Broadcast));
        assert!(c.keeps(&StreamTarget::User(UserId::new("u").expect("user"))));
        assert!(c.problems("h").is_empty());
        let bad = HistoryConfig {
            groups: vec!["a*b".into()],
            size: 0,
            ..c
        };
        assert_eq!(bad.problems("h").len(), 2);
    }
}
