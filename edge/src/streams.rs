//! Gap repair: the edge passes each recoverable stream's messages on in offset order, without a
//! hole, whatever the bus did to them.
//!
//! For every recoverable stream it has seen, the edge keeps a cursor (epoch, last offset passed
//! on). A message that jumps ahead (one lost between router and edge, a NATS reconnect, two
//! routers racing) is held while the missing range is read from history; a message at or below
//! the cursor is a duplicate and dropped. Every `edge.history_check_secs` the edge asks history
//! for the positions of its streams, so a lost *last* message is found too. A new epoch (the
//! stream's storage was lost, offsets start again at 1), seen on a message or in a position, is
//! followed from its start: what of it never came here is read from history too. Cursors of
//! streams no longer seen for an hour, or that no local connection receives any more, are
//! forgotten at the next check.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::history::{History, Position, StreamKey, StreamTarget};
use herald_core::ids::{GroupId, ProjectId, UserId};
use herald_core::proto::bus::{Envelope, TargetKind};
use herald_core::registry::InterestKey;
use parking_lot::Mutex;
use prost::Message as _;

use crate::hub::Hub;

/// Messages read from history per repair.
const PAGE: usize = 512;
/// A cursor unused this long is forgotten.
const IDLE: Duration = Duration::from_secs(3600);
/// Retries of a history read before the held messages go on with their gap.
const TRIES: u32 = 20;

struct Cursor {
    epoch: u32,
    offset: u64,
    /// A repair task is reading history for this stream.
    repairing: bool,
    /// Messages after a gap, waiting for the repair.
    held: BTreeMap<u64, Envelope>,
    /// Epochs this cursor left (the last few), whose late messages must not take it back.
    left: Vec<u32>,
    seen: Instant,
}

/// Epochs a cursor remembers having left.
const LEFT: usize = 4;

/// The edge's recoverable streams.
pub struct Streams {
    hub: Arc<Hub>,
    history: Arc<dyn History>,
    cursors: Mutex<HashMap<StreamKey, Cursor>>,
}

fn key_of(env: &Envelope) -> Option<StreamKey> {
    let project = ProjectId::new(&env.project).ok()?;
    let target = match env.kind() {
        TargetKind::Broadcast => StreamTarget::Broadcast,
        TargetKind::Group => StreamTarget::Group(GroupId::new(&env.name).ok()?),
        TargetKind::User => StreamTarget::User(UserId::new(&env.name).ok()?),
        TargetKind::Unspecified => return None,
    };
    Some(StreamKey { project, target })
}

impl Streams {
    /// Streams delivering to `hub`, repaired from `history`.
    pub fn new(hub: Arc<Hub>, history: Arc<dyn History>) -> Arc<Self> {
        Arc::new(Self {
            hub,
            history,
            cursors: Mutex::new(HashMap::new()),
        })
    }

    /// Passes an envelope on to the hub: at once when it follows its stream's cursor (or is
    /// not recoverable), later when a gap before it is being repaired, never when it is a
    /// duplicate.
    pub fn deliver(self: &Arc<Self>, env: &Envelope) {
        if env.seq == 0 {
            self.hub.deliver(env);
            return;
        }
        let Some(key) = key_of(env) else {
            self.hub.deliver(env);
            return;
        };
        let mut cursors = self.cursors.lock();
        if !cursors.contains_key(&key) && !self.held_here(&key) {
            // Sent to every edge while the registry was being rebuilt, and nobody here wants
            // it: no cursor (and no position checks) for a stream this edge does not serve.
            return;
        }
        let c = cursors.entry(key.clone()).or_insert_with(|| Cursor {
            epoch: env.epoch,
            offset: env.seq - 1,
            repairing: false,
            held: BTreeMap::new(),
            left: Vec::new(),
            seen: Instant::now(),
        });
        c.seen = Instant::now();
        if c.epoch != env.epoch && c.left.contains(&env.epoch) {
            // A late message of an epoch already left (sent before the loss, or the position
            // check saw the new epoch first): it was stored and acknowledged, so it goes on,
            // but it takes the cursor back to nothing.
            metrics::counter!("herald_edge_stream_late_epoch_total").increment(1);
            drop(cursors);
            self.hub.deliver(env);
            return;
        }
        if c.epoch != env.epoch {
            // The stream's storage was lost and started over at offset 1: the old epoch's held
            // messages go on over their gap (they were stored and acknowledged), then the new
            // epoch is followed from its start, so messages of it that never came here (a
            // registry rebuilt after the same loss) are read from history.
            self.switch_epoch(c, env.epoch);
        }
        if env.seq <= c.offset {
            metrics::counter!("herald_edge_stream_duplicates_total").increment(1);
            return;
        }
        if env.seq == c.offset + 1 && !c.repairing {
            c.offset = env.seq;
            self.hub.deliver(env);
            return;
        }
        c.held.insert(env.seq, env.clone());
        if !c.repairing {
            c.repairing = true;
            metrics::counter!("herald_edge_stream_gaps_total").increment(1);
            let (epoch, from) = (c.epoch, c.offset);
            drop(cursors);
            tokio::spawn(self.clone().repair(key, epoch, from));
        }
    }

    /// Whether a local connection is a recipient of the stream.
    fn held_here(&self, key: &StreamKey) -> bool {
        let interest = match &key.target {
            StreamTarget::Broadcast => return true,
            StreamTarget::Group(g) => InterestKey::Group(key.project.clone(), g.clone()),
            StreamTarget::User(u) => InterestKey::User(key.project.clone(), u.clone()),
        };
        self.hub.holds(&interest)
    }

    /// Moves a cursor to a new epoch of its stream, from its start (offset 0), passing the old
    /// epoch's held messages on first. A repair running for the old epoch notices and starts
    /// over on the new one.
    fn switch_epoch(&self, c: &mut Cursor, epoch: u32) {
        for (offset, env) in std::mem::take(&mut c.held) {
            if offset > c.offset {
                c.offset = offset;
                self.hub.deliver(&env);
            }
        }
        metrics::counter!("herald_edge_stream_epoch_changes_total").increment(1);
        if c.left.len() == LEFT {
            c.left.remove(0);
        }
        c.left.push(c.epoch);
        c.epoch = epoch;
        c.offset = 0;
    }

    /// Reads the stream after `from` from history and passes on what follows the cursor, then
    /// the held messages that join up.
    async fn repair(self: Arc<Self>, key: StreamKey, mut epoch: u32, mut from: u64) {
        let mut tries = 0;
        loop {
            let page = match self.history.read(&key, from, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tries += 1;
                    if tries < TRIES {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await;
                        continue;
                    }
                    tracing::warn!(stream = %key, error = %e, "gap repair gave up: history unavailable");
                    metrics::counter!("herald_edge_stream_gaps_unrepaired_total").increment(1);
                    self.skip_gap(&key);
                    return;
                }
            };
            {
                let mut cursors = self.cursors.lock();
                let Some(c) = cursors.get_mut(&key) else {
                    return;
                };
                if c.epoch != epoch {
                    // The cursor moved to a new epoch meanwhile: repair that one from where
                    // it stands.
                    epoch = c.epoch;
                    from = c.offset;
                    continue;
                }
                if page.position.epoch != c.epoch {
                    // History was lost under us: what is held goes on, the gap stays.
                    drop(cursors);
                    self.skip_gap(&key);
                    return;
                }
                let mut lost = false;
                for (offset, data) in page.messages {
                    if offset != c.offset + 1 {
                        // Past retention: the missing ones are gone.
                        lost |= offset > c.offset + 1;
                        if offset <= c.offset {
                            continue;
                        }
                    }
                    match Envelope::decode(data) {
                        Ok(mut env) => {
                            env.seq = offset;
                            env.epoch = c.epoch;
                            c.offset = offset;
                            c.held.remove(&offset);
                            self.hub.deliver(&env);
                            metrics::counter!("herald_edge_stream_repaired_total").increment(1);
                        }
                        Err(e) => {
                            tracing::warn!(stream = %key, offset, error = %e, "unreadable message in history");
                            c.offset = offset;
                        }
                    }
                }
                if lost {
                    metrics::counter!("herald_edge_stream_gaps_unrepaired_total").increment(1);
                }
                pass_held(&self.hub, c);
                let next = c.held.keys().next().copied();
                match next {
                    None => {
                        c.repairing = false;
                        return;
                    }
                    Some(first) if page.position.offset < first || page.first > c.offset + 1 => {
                        // History does not have what is missing (trimmed, or not stored): go on.
                        metrics::counter!("herald_edge_stream_gaps_unrepaired_total").increment(1);
                        c.offset = first - 1;
                        pass_held(&self.hub, c);
                        if c.held.is_empty() {
                            c.repairing = false;
                            return;
                        }
                        from = c.offset;
                    }
                    Some(_) if c.offset == from => {
                        // No progress: history does not hold what is missing. Go on over the gap.
                        metrics::counter!("herald_edge_stream_gaps_unrepaired_total").increment(1);
                        if let Some(first) = c.held.keys().next().copied() {
                            c.offset = first - 1;
                        }
                        pass_held(&self.hub, c);
                        if c.held.is_empty() {
                            c.repairing = false;
                            return;
                        }
                        from = c.offset;
                    }
                    Some(_) => from = c.offset,
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// Passes on every held message in order, over the gap before them.
    fn skip_gap(&self, key: &StreamKey) {
        let mut cursors = self.cursors.lock();
        if let Some(c) = cursors.get_mut(key) {
            for (offset, env) in std::mem::take(&mut c.held) {
                if offset > c.offset {
                    c.offset = offset;
                    self.hub.deliver(&env);
                }
            }
            c.repairing = false;
        }
    }

    /// Asks history where each known stream stands, repairs the ones whose last messages never
    /// came, and forgets idle cursors. Returns the number of streams checked.
    pub async fn check(self: &Arc<Self>) -> usize {
        let keys: Vec<(StreamKey, u32)> = {
            let mut cursors = self.cursors.lock();
            // A stream nobody here receives any more loses its cursor: its messages stop
            // coming, and a later member must not be handed, as a "repair", what was
            // published before it joined.
            cursors.retain(|k, c| c.repairing || (c.seen.elapsed() < IDLE && self.held_here(k)));
            cursors
                .iter()
                .filter(|(_, c)| !c.repairing)
                .map(|(k, c)| (k.clone(), c.epoch))
                .collect()
        };
        if keys.is_empty() {
            return 0;
        }
        let streams: Vec<StreamKey> = keys.iter().map(|(k, _)| k.clone()).collect();
        let positions = match self.history.positions(&streams).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "stream check: history unavailable");
                return 0;
            }
        };
        for ((key, asked), Position { offset, epoch }) in keys.into_iter().zip(positions) {
            let mut cursors = self.cursors.lock();
            let Some(c) = cursors.get_mut(&key) else {
                continue;
            };
            if c.repairing || c.epoch != asked {
                // Moved on since the question was asked: the answer may be older than it.
                continue;
            }
            if epoch != c.epoch {
                // The stream's storage was lost and no message of the new epoch came here (yet):
                // follow the new epoch from its start.
                self.switch_epoch(c, epoch);
            }
            if offset <= c.offset {
                continue;
            }
            c.repairing = true;
            metrics::counter!("herald_edge_stream_gaps_total").increment(1);
            let from = c.offset;
            drop(cursors);
            tokio::spawn(self.clone().repair(key, epoch, from));
        }
        streams.len()
    }

    /// Checks every `every` until the task is dropped.
    pub async fn check_every(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let n = self.check().await;
            metrics::gauge!("herald_edge_streams").set(n as f64);
        }
    }
}

/// Passes on the held messages that follow the cursor.
fn pass_held(hub: &Hub, c: &mut Cursor) {
    while let Some(entry) = c.held.first_entry() {
        let offset = *entry.key();
        if offset <= c.offset {
            entry.remove();
        } else if offset == c.offset + 1 {
            let env = entry.remove();
            c.offset = offset;
            hub.deliver(&env);
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Wire;
    use crate::hub::{HubConfig, NewConn};
    use bytes::Bytes;
    use herald_core::history::{MemoryHistory, Retention};
    use herald_core::ids::EdgeId;
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::task::{Context, Poll, Waker};

    fn hub() -> Arc<Hub> {
        Hub::new(
            EdgeId::new("e1").expect("edge"),
            HubConfig {
                shards: 2,
                max_queued_bytes: 1 << 20,
                ping_interval: Duration::from_secs(60),
                pong_timeout: Duration::from_secs(60),
                token_leeway: Duration::ZERO,
                max_pending_interest: 1000,
                registry_batch: Duration::ZERO,
                registration_timeout: Duration::from_secs(5),
                write_window: Duration::ZERO,
            },
            None,
        )
    }

    /// The stream of group `news` in project `p`.
    fn news() -> StreamKey {
        StreamKey {
            project: ProjectId::new("p").expect("p"),
            target: StreamTarget::Group(GroupId::new("news").expect("g")),
        }
    }

    const KEEP: Retention = Retention {
        size: 100,
        ttl: Duration::from_secs(60),
    };

    fn env(seq: u64, epoch: u32) -> Envelope {
        Envelope {
            version: 1,
            project: "p".into(),
            kind: TargetKind::Group as i32,
            name: "news".into(),
            payload: format!("{seq}").into_bytes(),
            seq,
            epoch,
            ..Default::default()
        }
    }

    fn offsets(hub: &Hub, h: crate::hub::ConnHandle) -> Vec<u64> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut q = VecDeque::new();
        match hub.poll_outgoing(h, &mut cx, &mut q, true) {
            Poll::Ready(_) => {}
            Poll::Pending => return Vec::new(),
        }
        q.iter()
            .map(|f| {
                let v: serde_json::Value =
                    serde_json::from_slice(&f[2..]).expect("json text frame");
                v["offset"].as_u64().expect("offset")
            })
            .collect()
    }

    /// A connection of `u`, a member of `news`.
    async fn member(hub: &Arc<Hub>) -> crate::hub::ConnHandle {
        hub.insert(
            NewConn {
                project: ProjectId::new("p").expect("p"),
                user: UserId::new("u").expect("u"),
                groups: vec![GroupId::new("news").expect("g")],
                remote: SocketAddr::from(([127, 0, 0, 1], 1)),
                expires_unix: u64::MAX,
                wire: Wire::Native,
                deflate: false,
                framing: Default::default(),
                keep_alive_secs: 0,
                heart_beat_secs: 0,
                replaces: None,
                resume: Vec::new(),
            },
            0,
        )
        .await
        .expect("inserted")
    }

    /// Reads `h`'s offsets until there are `n` (10 s at most).
    async fn offsets_until(hub: &Hub, h: crate::hub::ConnHandle, got: &mut Vec<u64>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            got.extend(offsets(hub, h));
        }
    }

    #[tokio::test]
    async fn a_new_epoch_is_followed_from_its_start_on_a_message_or_a_position() {
        let hub = hub();
        let history = Arc::new(MemoryHistory::new());
        let (key, keep) = (news(), KEEP);
        let append = async |n: usize| {
            let mut epoch = 0;
            for _ in 0..n {
                let data = Bytes::from(env(0, 0).encode_to_vec());
                epoch = history
                    .append(&key, keep, data)
                    .await
                    .expect("append")
                    .epoch;
            }
            epoch
        };
        let e1 = append(2).await;
        let h = member(&hub).await;
        let streams = Streams::new(hub.clone(), history.clone());
        streams.deliver(&env(1, e1));
        streams.deliver(&env(2, e1));
        // The store is lost; the new epoch's 1 and 2 never come here, 3 does.
        history.clear();
        let e2 = append(3).await;
        assert_ne!(e1, e2);
        streams.deliver(&env(3, e2));
        let mut got = offsets(&hub, h);
        offsets_until(&hub, h, &mut got, 5).await;
        assert_eq!(got, [1, 2, 1, 2, 3]);
        // A late message of the first epoch goes on, and leaves the cursor on the second.
        streams.deliver(&env(5, e1));
        streams.deliver(&env(4, e2));
        offsets_until(&hub, h, &mut got, 7).await;
        assert_eq!(got, [1, 2, 1, 2, 3, 5, 4]);
        // Lost again; nothing of the third epoch comes on the bus: the position check finds it.
        history.clear();
        append(2).await;
        assert_eq!(streams.check().await, 1);
        offsets_until(&hub, h, &mut got, 9).await;
        assert_eq!(got, [1, 2, 1, 2, 3, 5, 4, 1, 2]);
    }

    #[tokio::test]
    async fn a_gap_is_repaired_from_history_and_duplicates_dropped() {
        let hub = hub();
        let history = Arc::new(MemoryHistory::new());
        let (key, keep) = (news(), KEEP);
        let mut epoch = 0;
        for _ in 1..=5 {
            let data = Bytes::from(env(0, 0).encode_to_vec());
            epoch = history
                .append(&key, keep, data)
                .await
                .expect("append")
                .epoch;
        }
        let h = member(&hub).await;
        let streams = Streams::new(hub.clone(), history.clone());
        streams.deliver(&env(1, epoch));
        // 2 and 3 lost on the bus; 4 arrives, then 3 late, then 1 again.
        streams.deliver(&env(4, epoch));
        streams.deliver(&env(3, epoch));
        streams.deliver(&env(1, epoch));
        let mut got = offsets(&hub, h);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            got.extend(offsets(&hub, h));
        }
        // The repair reads on to what history holds: 5 too, which never came on the bus.
        assert_eq!(got, [1, 2, 3, 4, 5]);
        // 6 is stored and never arrives: the position check finds it and passes it on.
        let data = Bytes::from(env(0, 0).encode_to_vec());
        history.append(&key, keep, data).await.expect("append");
        assert_eq!(streams.check().await, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 6 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            got.extend(offsets(&hub, h));
        }
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_stream_nobody_here_receives_loses_its_cursor() {
        let hub = hub();
        let history = Arc::new(MemoryHistory::new());
        let (key, keep) = (news(), KEEP);
        let append = async || {
            let data = Bytes::from(env(0, 0).encode_to_vec());
            history
                .append(&key, keep, data)
                .await
                .expect("append")
                .epoch
        };
        let epoch = append().await;
        let first = member(&hub).await;
        let streams = Streams::new(hub.clone(), history.clone());
        streams.deliver(&env(1, epoch));
        assert_eq!(offsets(&hub, first), [1]);
        hub.remove(first);
        // Published while nobody here is a member: the router sends nothing here.
        append().await;
        append().await;
        assert_eq!(streams.check().await, 0, "the cursor was forgotten");
        // A later member gets what comes after it joined, never 2 and 3 as a repair.
        let later = member(&hub).await;
        append().await;
        streams.deliver(&env(4, epoch));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(offsets(&hub, later), [4]);
    }
}
