//! The sharded hub: every live connection's state as data, and local fan-out.
//!
//! A connection lives in one shard, chosen by its number. Its outbound queue is a list of shared
//! [`Bytes`] frames in the shard; delivering a message appends the same encoded frame to every
//! recipient's queue and wakes its task only when the queue was empty. The task takes the whole
//! queue at once and writes it in one vectored write. Queues are bounded in bytes: overflow closes
//! the connection as a slow consumer. One ticker per hub sends pings, closes dead peers and
//! expired tokens, so a connection needs no timer of its own.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_core::bus::{ControlReply, ControlRequest, DisconnectWho, ListOf};
use herald_core::codes::CloseCode;
use herald_core::ids::{EdgeId, GroupId, ProjectId, UserId};
use herald_core::proto::bus::{Envelope, TargetKind};
use herald_core::proto::v1::ConnectionInfo;
use herald_core::registry::{InterestChange, InterestKey};
use parking_lot::Mutex;
use slab::Slab;

use crate::frame::{message_frame, ping_frame};
use crate::interest::Interest;

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Number of shards.
    pub shards: usize,
    /// Most bytes queued for one connection before it is closed as a slow consumer.
    pub max_queued_bytes: usize,
    /// Idle time after which the server pings.
    pub ping_interval: Duration,
    /// Time a ping may go unanswered before the connection is closed.
    pub pong_timeout: Duration,
    /// Clock skew tolerated on token expiry (the same leeway the connect check allows).
    pub token_leeway: Duration,
}

/// Why and how a connection is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// The close code.
    pub code: CloseCode,
    /// Hint: do not reconnect before this many milliseconds (0: no hint).
    pub reconnect_after_ms: u32,
}

/// What a connection task gets from the hub.
#[derive(Debug)]
pub enum Outgoing {
    /// Frames were moved into the caller's queue.
    Frames,
    /// The connection must close.
    Close(Closing),
}

/// A connection's place in the hub.
#[derive(Debug, Clone, Copy)]
pub struct ConnHandle {
    shard: u32,
    slot: u32,
    /// The connection's number on this edge.
    pub number: u64,
}

struct Conn {
    number: u64,
    project: ProjectId,
    user: UserId,
    groups: Box<[GroupId]>,
    remote: SocketAddr,
    since_unix_ms: i64,
    expires_unix: u64,
    outbox: VecDeque<Bytes>,
    queued: usize,
    waker: Option<Waker>,
    closing: Option<Closing>,
    last_seen: u32,
    ping_sent_at: Option<u32>,
}

#[derive(Default)]
struct Shard {
    conns: Slab<Conn>,
    groups: Index<GroupId>,
    users: Index<UserId>,
}

/// The slots of one key in a shard: most users have one device, so one needs no allocation.
#[derive(Debug)]
enum Slots {
    One(u32),
    Many(Vec<u32>),
}

impl Slots {
    fn push(&mut self, slot: u32) {
        match self {
            Slots::One(first) => *self = Slots::Many(vec![*first, slot]),
            Slots::Many(v) => v.push(slot),
        }
    }

    /// Removes `slot`; returns whether none is left.
    fn remove(&mut self, slot: u32) -> bool {
        match self {
            Slots::One(s) => *s == slot,
            Slots::Many(v) => {
                if let Some(i) = v.iter().position(|s| *s == slot) {
                    v.swap_remove(i);
                }
                match v.as_slice() {
                    [] => true,
                    [only] => {
                        *self = Slots::One(*only);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Slots::One(s) => std::slice::from_ref(s),
            Slots::Many(v) => v,
        }
    }
}

type Index<K> = HashMap<ProjectId, HashMap<K, Slots>>;

/// Adds `slot` under `key`; returns the map's copy of the key (so connections share one copy of
/// each name) and whether the key is new in this shard.
fn index_add<K: std::hash::Hash + Eq + Clone>(
    map: &mut Index<K>,
    project: &ProjectId,
    key: &K,
    slot: u32,
) -> (K, bool) {
    use std::collections::hash_map::Entry;
    let inner = map.entry(project.clone()).or_default();
    match inner.entry(key.clone()) {
        Entry::Occupied(mut o) => {
            o.get_mut().push(slot);
            (o.key().clone(), false)
        }
        Entry::Vacant(v) => {
            let k = v.key().clone();
            v.insert(Slots::One(slot));
            (k, true)
        }
    }
}

/// Removes `slot` from `key`; returns whether the key left this shard.
fn index_remove<K: std::hash::Hash + Eq>(
    map: &mut Index<K>,
    project: &ProjectId,
    key: &K,
    slot: u32,
) -> bool {
    let Some(inner) = map.get_mut(project) else {
        return false;
    };
    let gone = inner.get_mut(key).is_some_and(|slots| slots.remove(slot));
    if gone {
        inner.remove(key);
    }
    if inner.is_empty() {
        map.remove(project);
    }
    gone
}

/// The hub of one edge.
pub struct Hub {
    edge: EdgeId,
    cfg: HubConfig,
    shards: Box<[Mutex<Shard>]>,
    next_number: AtomicU64,
    /// Set by [`Hub::close_all`]: the hint every connection inserted afterwards is closed with.
    shutdown: Mutex<Option<(CloseCode, u32)>>,
    started: Instant,
    clock: AtomicU32,
    interest: Arc<Interest>,
}

/// What a new connection brings.
pub struct NewConn {
    /// Project.
    pub project: ProjectId,
    /// User (`sub`).
    pub user: UserId,
    /// Groups from the token.
    pub groups: Vec<GroupId>,
    /// Client address.
    pub remote: SocketAddr,
    /// Token expiry, Unix seconds.
    pub expires_unix: u64,
}

/// Result of a join.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined (or was already in the group).
    Joined,
    /// The connection is in too many groups.
    TooMany,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Hub {
    /// A hub with `cfg.shards` shards.
    pub fn new(edge: EdgeId, cfg: HubConfig, interest: Arc<Interest>) -> Arc<Self> {
        let shards = (0..cfg.shards.max(1)).map(|_| Mutex::default()).collect();
        Arc::new(Self {
            edge,
            cfg,
            shards,
            // Numbers start from the start time (ms << 20), so ids from before a restart do not
            // name new connections: a run would need 2^20 connects per ms of uptime to collide.
            next_number: AtomicU64::new(((unix_now().as_millis() as u64) << 20) | 1),
            shutdown: Mutex::new(None),
            started: Instant::now(),
            clock: AtomicU32::new(0),
            interest,
        })
    }

    /// This hub's edge.
    pub fn edge(&self) -> &EdgeId {
        &self.edge
    }

    fn now(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    /// The public id of a connection: `<edge>-<number>`.
    pub fn connection_id(&self, number: u64) -> String {
        format!("{}-{number}", self.edge)
    }

    /// The shard of a user: all devices of a user share one, so a user message locks one shard
    /// and the shard's index alone knows when a user arrives on or leaves this edge.
    fn user_shard(&self, project: &str, user: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        project.hash(&mut h);
        user.hash(&mut h);
        (h.finish() % self.shards.len() as u64) as usize
    }

    /// Registers an authenticated connection; resolves once the registry holds its interest.
    /// `None` when the user already has `max_per_user` connections here (0: no cap).
    pub async fn insert(&self, c: NewConn, max_per_user: u32) -> Option<ConnHandle> {
        let shard_ix = self.user_shard(c.project.as_str(), c.user.as_str());
        let (number, slot, registered) = {
            let mut shard = self.shards[shard_ix].lock();
            let shard = &mut *shard;
            // All devices of a user share this shard: the count is exact under its lock.
            if max_per_user > 0
                && shard
                    .users
                    .get(&c.project)
                    .and_then(|m| m.get(&c.user))
                    .is_some_and(|s| s.as_slice().len() >= max_per_user as usize)
            {
                return None;
            }
            let number = self.next_number.fetch_add(1, Ordering::Relaxed);
            let entry = shard.conns.vacant_entry();
            let slot = entry.key() as u32;
            let (user, first) = index_add(&mut shard.users, &c.project, &c.user, slot);
            let mut groups: Vec<GroupId> = Vec::with_capacity(c.groups.len());
            for g in &c.groups {
                if !groups.contains(g) {
                    groups.push(index_add(&mut shard.groups, &c.project, g, slot).0);
                }
            }
            let changes = if first {
                vec![InterestChange::Add(InterestKey::User(
                    c.project.clone(),
                    user.clone(),
                ))]
            } else {
                Vec::new()
            };
            let registered = self.interest.add(
                changes,
                groups
                    .iter()
                    .map(|g| InterestKey::Group(c.project.clone(), g.clone())),
            );
            entry.insert(Conn {
                number,
                project: c.project,
                user,
                groups: groups.into_boxed_slice(),
                remote: c.remote,
                since_unix_ms: unix_now().as_millis() as i64,
                expires_unix: c.expires_unix,
                outbox: VecDeque::new(),
                queued: 0,
                waker: None,
                closing: None,
                last_seen: self.now(),
                ping_sent_at: None,
            });
            // A connection that finished its handshake while the edge began to drain is closed
            // like the others (checked under the shard lock `close_all` also takes).
            if let Some((code, max_ms)) = *self.shutdown.lock()
                && let Some(conn) = shard.conns.get_mut(slot as usize)
            {
                close(conn, shutdown_closing(code, max_ms));
            }
            (number, slot, registered)
        };
        metrics::gauge!("herald_edge_connections").increment(1.0);
        let _ = registered.await;
        Some(ConnHandle {
            shard: shard_ix as u32,
            slot,
            number,
        })
    }

    /// Removes a connection and its interest.
    pub fn remove(&self, h: ConnHandle) {
        {
            let mut shard = self.shards[h.shard as usize].lock();
            let shard = &mut *shard;
            if shard
                .conns
                .get(h.slot as usize)
                .is_none_or(|c| c.number != h.number)
            {
                return;
            }
            let conn = shard.conns.remove(h.slot as usize);
            let mut changes = Vec::new();
            if index_remove(&mut shard.users, &conn.project, &conn.user, h.slot) {
                changes.push(InterestChange::Remove(InterestKey::User(
                    conn.project.clone(),
                    conn.user.clone(),
                )));
            }
            for g in conn.groups.iter() {
                index_remove(&mut shard.groups, &conn.project, g, h.slot);
            }
            self.interest.remove(
                changes,
                conn.groups
                    .iter()
                    .map(|g| InterestKey::Group(conn.project.clone(), g.clone())),
            );
        }
        metrics::gauge!("herald_edge_connections").decrement(1.0);
    }

    fn with_conn<R>(&self, h: ConnHandle, f: impl FnOnce(&mut Shard, u32) -> R) -> Option<R> {
        let mut shard = self.shards[h.shard as usize].lock();
        if shard
            .conns
            .get(h.slot as usize)
            .is_some_and(|c| c.number == h.number)
        {
            Some(f(&mut shard, h.slot))
        } else {
            None
        }
    }

    /// Joins a group; resolves once the registry holds the interest.
    pub async fn join(&self, h: ConnHandle, group: GroupId, max_groups: usize) -> JoinOutcome {
        let outcome = self.with_conn(h, |shard, slot| {
            let conn = &shard.conns[slot as usize];
            if conn.groups.contains(&group) {
                // Already a member: wait behind any pending write of that interest.
                return Ok(self.interest.add(Vec::new(), []));
            }
            if conn.groups.len() >= max_groups {
                return Err(());
            }
            let project = conn.project.clone();
            let (g, _) = index_add(&mut shard.groups, &project, &group, slot);
            let conn = &mut shard.conns[slot as usize];
            let mut groups = std::mem::take(&mut conn.groups).into_vec();
            groups.push(g);
            conn.groups = groups.into_boxed_slice();
            Ok(self
                .interest
                .add(Vec::new(), [InterestKey::Group(project, group)]))
        });
        match outcome {
            Some(Err(())) => JoinOutcome::TooMany,
            Some(Ok(registered)) => {
                let _ = registered.await;
                JoinOutcome::Joined
            }
            None => JoinOutcome::Joined,
        }
    }

    /// Leaves a group. Returns whether the connection was in it.
    pub fn leave(&self, h: ConnHandle, group: &GroupId) -> bool {
        self.with_conn(h, |shard, slot| {
            let conn = &mut shard.conns[slot as usize];
            let Some(i) = conn.groups.iter().position(|g| g == group) else {
                return false;
            };
            let mut groups = std::mem::take(&mut conn.groups).into_vec();
            groups.swap_remove(i);
            conn.groups = groups.into_boxed_slice();
            let project = conn.project.clone();
            index_remove(&mut shard.groups, &project, group, slot);
            self.interest
                .remove(Vec::new(), [InterestKey::Group(project, group.clone())]);
            true
        })
        .unwrap_or(false)
    }

    /// Whether a local connection holds interest in `key` (a user's device or a group member).
    pub fn holds(&self, key: &InterestKey) -> bool {
        match key {
            InterestKey::User(project, user) => {
                let shard = self.shards[self.user_shard(project.as_str(), user.as_str())].lock();
                shard
                    .users
                    .get(project)
                    .is_some_and(|m| m.contains_key(user))
            }
            InterestKey::Group(..) => self.interest.has_group(key),
        }
    }

    /// Records activity from the client (any frame read): it is alive.
    pub fn touch(&self, h: ConnHandle) {
        let now = self.now();
        self.with_conn(h, |shard, slot| {
            let c = &mut shard.conns[slot as usize];
            c.last_seen = now;
            c.ping_sent_at = None;
        });
    }

    /// Sets a new token expiry after a refresh.
    pub fn set_expiry(&self, h: ConnHandle, expires_unix: u64) {
        self.with_conn(h, |shard, slot| {
            shard.conns[slot as usize].expires_unix = expires_unix
        });
    }

    /// Moves queued frames into `into` (when `take_frames`), or reports that the connection must
    /// close; otherwise registers the task's waker.
    pub fn poll_outgoing(
        &self,
        h: ConnHandle,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Bytes>,
        take_frames: bool,
    ) -> Poll<Outgoing> {
        let mut shard = self.shards[h.shard as usize].lock();
        let Some(c) = shard
            .conns
            .get_mut(h.slot as usize)
            .filter(|c| c.number == h.number)
        else {
            return Poll::Ready(Outgoing::Close(Closing {
                code: CloseCode::InternalError,
                reconnect_after_ms: 0,
            }));
        };
        if let Some(closing) = c.closing {
            return Poll::Ready(Outgoing::Close(closing));
        }
        if take_frames && !c.outbox.is_empty() {
            if into.is_empty() {
                *into = std::mem::take(&mut c.outbox);
            } else {
                into.append(&mut c.outbox);
            }
            c.queued = 0;
            return Poll::Ready(Outgoing::Frames);
        }
        match &c.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => c.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Delivers an envelope to every local recipient: encoded once, shared by all.
    pub fn deliver(&self, env: &Envelope) {
        let project = env.project.as_str();
        let kind = env.kind();
        if kind == TargetKind::Unspecified {
            return;
        }
        let frame = message_frame(env);
        let max = self.cfg.max_queued_bytes;
        let mut delivered = 0u64;
        let mut wake = Vec::new();
        let shards = match kind {
            TargetKind::User => {
                let i = self.user_shard(project, &env.name);
                &self.shards[i..=i]
            }
            _ => &self.shards[..],
        };
        for shard in shards {
            {
                let mut shard = shard.lock();
                let shard = &mut *shard;
                if kind == TargetKind::Broadcast {
                    for (_, c) in shard.conns.iter_mut() {
                        if c.project.as_str() == project {
                            delivered += push(c, &frame, max, &mut wake) as u64;
                        }
                    }
                } else {
                    let index = if kind == TargetKind::Group {
                        shard
                            .groups
                            .get(project)
                            .and_then(|m| m.get(env.name.as_str()))
                    } else {
                        shard
                            .users
                            .get(project)
                            .and_then(|m| m.get(env.name.as_str()))
                    };
                    let slots = index.map(Slots::as_slice).unwrap_or_default();
                    for slot in slots {
                        if let Some(c) = shard.conns.get_mut(*slot as usize) {
                            delivered += push(c, &frame, max, &mut wake) as u64;
                        }
                    }
                }
            }
            for w in wake.drain(..) {
                w.wake();
            }
        }
        metrics::counter!("herald_edge_deliveries_total").increment(delivered);
        metrics::counter!("herald_edge_messages_total").increment(1);
    }

    /// Marks matching connections for closing. Returns how many.
    fn close_where(&self, closing: Closing, mut pred: impl FnMut(&Conn) -> bool) -> u32 {
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (_, c) in shard.conns.iter_mut() {
                if c.closing.is_none() && pred(c) {
                    close(c, closing);
                    n += 1;
                }
            }
        }
        n
    }

    /// Closes every connection (shutdown), each with a reconnect hint spread over
    /// `0..max_reconnect_ms` so clients do not all come back at once.
    pub fn close_all(&self, code: CloseCode, max_reconnect_ms: u32) -> u32 {
        *self.shutdown.lock() = Some((code, max_reconnect_ms));
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (_, c) in shard.conns.iter_mut() {
                if c.closing.is_none() {
                    close(c, shutdown_closing(code, max_reconnect_ms));
                    n += 1;
                }
            }
        }
        n
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().conns.len()).sum()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers an operator call about local connections.
    pub fn control(&self, req: &ControlRequest) -> ControlReply {
        match req {
            ControlRequest::Count { project } => {
                let mut counts: HashMap<String, u64> = HashMap::new();
                for shard in self.shards.iter() {
                    for (_, c) in shard.lock().conns.iter() {
                        if project.as_ref().is_none_or(|p| *p == c.project) {
                            *counts.entry(c.project.to_string()).or_default() += 1;
                        }
                    }
                }
                ControlReply::Count(counts)
            }
            ControlRequest::List { project, of } => {
                let mut out = Vec::new();
                for shard in self.shards.iter() {
                    let shard = shard.lock();
                    let slots = match of {
                        ListOf::User(u) => shard.users.get(project).and_then(|m| m.get(u)),
                        ListOf::Group(g) => shard.groups.get(project).and_then(|m| m.get(g)),
                    };
                    for slot in slots.map(Slots::as_slice).unwrap_or_default() {
                        if let Some(c) = shard.conns.get(*slot as usize) {
                            out.push(ConnectionInfo {
                                id: self.connection_id(c.number),
                                user: c.user.to_string(),
                                remote_addr: c.remote.to_string(),
                                connected_since_unix_ms: c.since_unix_ms,
                                groups: c.groups.iter().map(|g| g.to_string()).collect(),
                                edge: self.edge.to_string(),
                            });
                        }
                    }
                }
                ControlReply::List(out)
            }
            ControlRequest::Disconnect {
                project,
                who,
                reconnect_after_ms,
            } => {
                let closing = Closing {
                    code: CloseCode::DisconnectedByOperator,
                    reconnect_after_ms: *reconnect_after_ms,
                };
                let n = match who {
                    DisconnectWho::User(u) => {
                        self.close_where(closing, |c| c.project == *project && c.user == *u)
                    }
                    DisconnectWho::Connection(id) => {
                        // Only the canonical form `<edge>-<number>` names a connection.
                        let number = id
                            .strip_prefix(self.edge.as_str())
                            .and_then(|rest| rest.strip_prefix('-'))
                            .and_then(|n| n.parse::<u64>().ok().filter(|v| v.to_string() == n));
                        match number {
                            Some(number) => self.close_where(closing, |c| {
                                c.project == *project && c.number == number
                            }),
                            None => 0,
                        }
                    }
                };
                ControlReply::Disconnected(n)
            }
        }
    }

    /// One tick of the hub clock: pings idle connections, closes dead peers and expired tokens.
    pub fn tick(&self) {
        let now = self.started.elapsed().as_secs() as u32;
        self.clock.store(now, Ordering::Relaxed);
        let now_unix = unix_now().saturating_sub(self.cfg.token_leeway).as_secs();
        let ping_every = self.cfg.ping_interval.as_secs().max(1) as u32;
        let pong_within = self.cfg.pong_timeout.as_secs().max(1) as u32;
        let ping = ping_frame();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (_, c) in shard.conns.iter_mut() {
                if c.closing.is_some() {
                    continue;
                }
                if c.expires_unix <= now_unix {
                    close(
                        c,
                        Closing {
                            code: CloseCode::TokenExpired,
                            reconnect_after_ms: 0,
                        },
                    );
                } else if let Some(at) = c.ping_sent_at {
                    if now.saturating_sub(at) >= pong_within {
                        close(
                            c,
                            Closing {
                                code: CloseCode::PingTimeout,
                                reconnect_after_ms: 0,
                            },
                        );
                    }
                } else if now.saturating_sub(c.last_seen) >= ping_every {
                    c.ping_sent_at = Some(now);
                    c.queued += ping.len();
                    c.outbox.push_back(ping.clone());
                    if let Some(w) = c.waker.take() {
                        w.wake();
                    }
                }
            }
        }
    }

    /// Every user key this edge holds (for re-registering its whole interest).
    pub fn user_keys(&self) -> Vec<InterestKey> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (project, users) in &shard.users {
                out.extend(
                    users
                        .keys()
                        .map(|u| InterestKey::User(project.clone(), u.clone())),
                );
            }
        }
        out
    }
}

/// Appends a frame to a connection's queue; closes it as a slow consumer on overflow.
/// Appends a frame to a connection's queue; closes it as a slow consumer on overflow. The task
/// to wake (its queue was empty) goes to `wake`, woken once the shard lock is released so it
/// does not run into the lock still held by the delivery.
fn push(c: &mut Conn, frame: &Bytes, max: usize, wake: &mut Vec<Waker>) -> bool {
    if c.closing.is_some() {
        return false;
    }
    if c.queued + frame.len() > max {
        metrics::counter!("herald_edge_slow_consumers_total").increment(1);
        close(
            c,
            Closing {
                code: CloseCode::SlowConsumer,
                reconnect_after_ms: 0,
            },
        );
        return false;
    }
    let was_empty = c.outbox.is_empty();
    c.queued += frame.len();
    c.outbox.push_back(frame.clone());
    if was_empty && let Some(w) = c.waker.take() {
        wake.push(w);
    }
    true
}

/// A shutdown close with a reconnect hint spread over `max_ms / 4..=max_ms`.
fn shutdown_closing(code: CloseCode, max_ms: u32) -> Closing {
    use rand::Rng as _;
    let reconnect_after_ms = if max_ms == 0 {
        0
    } else {
        rand::rng().random_range(max_ms / 4..=max_ms)
    };
    Closing {
        code,
        reconnect_after_ms,
    }
}

fn close(c: &mut Conn, closing: Closing) {
    c.closing = Some(closing);
    c.outbox = VecDeque::new();
    c.queued = 0;
    if let Some(w) = c.waker.take() {
        w.wake();
    }
}
