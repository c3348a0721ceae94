//! Sessions: where a client that comes back stood, kept by the server between its connections.
//!
//! A session is a small record (its subscriptions and, per recoverable stream, the last position
//! the client acknowledged) under a key naming one client of one project: a native device of a
//! user (`auth` with `device`), an MQTT persistent session (client id). The messages themselves
//! are never here: they are in [`History`](crate::history::History); a session only says from
//! where to read them again. A record expires after its time to live, renewed by every save,
//! acknowledgement and touch.
//!
//! [`Sessions`] is the seam; [`MemorySessions`] keeps records in this process, `herald_cluster`
//! keeps them in the history's Redis, beside the streams they point into.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::history::{HistoryError, Position, StreamTarget};
use crate::ids::{ProjectId, UserId};

/// One client's session in a project.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The project.
    pub project: ProjectId,
    /// The session's name in the project: `d:<user>:<device>` or `m:<user>:<client id>`.
    /// User ids hold no `:`, so the user part is unambiguous.
    pub id: String,
}

impl SessionKey {
    /// A native device of `user` (`auth` with `device`).
    pub fn device(project: &ProjectId, user: &UserId, device: &str) -> Self {
        Self {
            project: project.clone(),
            id: format!("d:{user}:{device}"),
        }
    }

    /// An MQTT session of `user` under `client_id`: another user presenting the same client id
    /// has another session.
    pub fn mqtt(project: &ProjectId, user: &UserId, client_id: &str) -> Self {
        Self {
            project: project.clone(),
            id: format!("m:{user}:{client_id}"),
        }
    }
}

/// What a session keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// Subscriptions, in the protocol's own names (MQTT topics) with their QoS.
    pub subscriptions: Vec<(String, u8)>,
    /// Per stream, the last position the client acknowledged (everything up to it was handled).
    pub positions: Vec<(StreamTarget, Position)>,
}

impl SessionRecord {
    /// The position kept for `stream`.
    pub fn position(&self, stream: &StreamTarget) -> Option<Position> {
        self.positions
            .iter()
            .find(|(s, _)| s == stream)
            .map(|(_, p)| *p)
    }

    /// Sets the position of `stream` when it moves it forward (or names another epoch).
    pub fn advance(&mut self, stream: &StreamTarget, at: Position) {
        match self.positions.iter_mut().find(|(s, _)| s == stream) {
            Some((_, p)) => {
                if p.epoch != at.epoch || at.offset > p.offset {
                    *p = at;
                }
            }
            None => self.positions.push((stream.clone(), at)),
        }
    }
}

/// Where sessions are kept.
#[async_trait]
pub trait Sessions: Send + Sync + 'static {
    /// The record of `key`, if it lives.
    async fn load(&self, key: &SessionKey) -> Result<Option<SessionRecord>, HistoryError>;

    /// Replaces the record of `key`, to live `ttl` from now.
    async fn save(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), HistoryError>;

    /// Moves the acknowledged position of one stream of `key` to `at` (never back under the
    /// same epoch; another epoch replaces it), creating the record when it is gone, and makes it
    /// live `ttl` from now.
    async fn ack(
        &self,
        key: &SessionKey,
        stream: &StreamTarget,
        at: Position,
        ttl: Duration,
    ) -> Result<(), HistoryError>;

    /// Makes the record of `key`, if any, live `ttl` from now (a client leaving).
    async fn touch(&self, key: &SessionKey, ttl: Duration) -> Result<(), HistoryError>;

    /// Forgets the record of `key`.
    async fn remove(&self, key: &SessionKey) -> Result<(), HistoryError>;
}

/// Sessions kept in this process (`herald dev`, `serve`), lost with it.
#[derive(Default)]
pub struct MemorySessions {
    records: Mutex<HashMap<SessionKey, (SessionRecord, Instant)>>,
    writes: std::sync::atomic::AtomicU64,
}

impl MemorySessions {
    /// No session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records alive.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.records
            .lock()
            .values()
            .filter(|(_, until)| *until > now)
            .count()
    }

    /// Whether no record is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every record (a lost store).
    pub fn clear(&self) {
        self.records.lock().clear();
    }

    fn sweep_now_and_then(&self, map: &mut HashMap<SessionKey, (SessionRecord, Instant)>) {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 4096 == 4095 {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
        }
    }
}

#[async_trait]
impl Sessions for MemorySessions {
    async fn load(&self, key: &SessionKey) -> Result<Option<SessionRecord>, HistoryError> {
        let now = Instant::now();
        let mut map = self.records.lock();
        match map.get(key) {
            Some((r, until)) if *until > now => Ok(Some(r.clone())),
            Some(_) => {
                map.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn save(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), HistoryError> {
        let mut map = self.records.lock();
        self.sweep_now_and_then(&mut map);
        map.insert(key.clone(), (record.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn ack(
        &self,
        key: &SessionKey,
        stream: &StreamTarget,
        at: Position,
        ttl: Duration,
    ) -> Result<(), HistoryError> {
        let now = Instant::now();
        let mut map = self.records.lock();
        self.sweep_now_and_then(&mut map);
        let entry = map
            .entry(key.clone())
            .or_insert_with(|| (SessionRecord::default(), now));
        if entry.1 <= now {
            entry.0 = SessionRecord::default();
        }
        entry.0.advance(stream, at);
        entry.1 = now + ttl;
        Ok(())
    }

    async fn touch(&self, key: &SessionKey, ttl: Duration) -> Result<(), HistoryError> {
        let now = Instant::now();
        if let Some((_, until)) = self.records.lock().get_mut(key)
            && *until > now
        {
            *until = now + ttl;
        }
        Ok(())
    }

    async fn remove(&self, key: &SessionKey) -> Result<(), HistoryError> {
        self.records.lock().remove(key);
        Ok(())
    }
}

/// Checks any [`Sessions`] against the contract: records saved and loaded whole, positions
/// that only move forward under one epoch, an acknowledgement creating a missing record,
/// expiry, removal, projects apart. Shared by every implementation's tests.
pub async fn conformance(s: &dyn Sessions, project: &str) {
    use crate::ids::GroupId;
    let p = ProjectId::new(project).expect("project id");
    let alice = UserId::new("alice").expect("user");
    let key = SessionKey::mqtt(&p, &alice, "client:1/{x}");
    let long = Duration::from_secs(60);
    assert_eq!(s.load(&key).await.expect("load"), None, "no record yet");
    let news = StreamTarget::Group(GroupId::new("news").expect("group"));
    let mine = StreamTarget::User(alice.clone());
    let record = SessionRecord {
        subscriptions: vec![("news".into(), 1), ("user/alice".into(), 0)],
        positions: vec![(
            news.clone(),
            Position {
                offset: 3,
                epoch: 7,
            },
        )],
    };
    s.save(&key, &record, long).await.expect("save");
    assert_eq!(s.load(&key).await.expect("load"), Some(record.clone()));
    // Forward only, under one epoch.
    s.ack(
        &key,
        &news,
        Position {
            offset: 5,
            epoch: 7,
        },
        long,
    )
    .await
    .expect("ack");
    s.ack(
        &key,
        &news,
        Position {
            offset: 4,
            epoch: 7,
        },
        long,
    )
    .await
    .expect("ack");
    s.ack(
        &key,
        &mine,
        Position {
            offset: 1,
            epoch: 9,
        },
        long,
    )
    .await
    .expect("ack");
    let got = s.load(&key).await.expect("load").expect("record");
    assert_eq!(
        got.subscriptions, record.subscriptions,
        "acks keep the rest"
    );
    assert_eq!(
        got.position(&news),
        Some(Position {
            offset: 5,
            epoch: 7
        })
    );
    assert_eq!(
        got.position(&mine),
        Some(Position {
            offset: 1,
            epoch: 9
        })
    );
    // Another epoch replaces, even backwards.
    s.ack(
        &key,
        &news,
        Position {
            offset: 1,
            epoch: 8,
        },
        long,
    )
    .await
    .expect("ack");
    assert_eq!(
        s.load(&key)
            .await
            .expect("load")
            .and_then(|r| r.position(&news)),
        Some(Position {
            offset: 1,
            epoch: 8
        })
    );
    // Projects and users apart.
    let other = ProjectId::new(&format!("{project}-other")).expect("project id");
    assert_eq!(
        s.load(&SessionKey::mqtt(&other, &alice, "client:1/{x}"))
            .await
            .expect("load"),
        None
    );
    let bob = UserId::new("bob").expect("user");
    assert_eq!(
        s.load(&SessionKey::mqtt(&p, &bob, "client:1/{x}"))
            .await
            .expect("load"),
        None
    );
    // An ack creates a missing record; touch and remove.
    let dev = SessionKey::device(&p, &alice, "phone");
    s.ack(
        &dev,
        &mine,
        Position {
            offset: 2,
            epoch: 9,
        },
        long,
    )
    .await
    .expect("ack");
    assert_eq!(
        s.load(&dev).await.expect("load"),
        Some(SessionRecord {
            subscriptions: Vec::new(),
            positions: vec![(
                mine.clone(),
                Position {
                    offset: 2,
                    epoch: 9
                }
            )],
        })
    );
    s.touch(&dev, Duration::from_millis(50))
        .await
        .expect("touch");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.load(&dev).await.expect("load"), None, "expired");
    s.touch(&dev, long).await.expect("touch");
    assert_eq!(
        s.load(&dev).await.expect("load"),
        None,
        "touch creates nothing"
    );
    s.remove(&key).await.expect("remove");
    assert_eq!(s.load(&key).await.expect("load"), None, "removed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_sessions_meet_the_contract() {
        conformance(&MemorySessions::new(), "alpha").await;
    }
}
