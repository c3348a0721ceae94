//! The sharded hub: every live connection's state as data, and local fan-out.
//!
//! A connection lives in one shard, chosen by its number. Its outbound queue is a list of shared
//! [`Bytes`] frames in the shard; delivering a message appends the same encoded frame to every
//! recipient's queue and wakes its task only when the queue was empty, at the end of the edge's
//! write window ([`HubConfig::write_window`]). The task takes the whole queue at once and writes
//! it in one vectored write. Queues are bounded in bytes: overflow closes
//! the connection as a slow consumer. One ticker per hub sends pings, closes dead peers and
//! expired tokens, so a connection needs no timer of its own.
//!
//! Each shard indexes its connections by project, and by user and group within a project, so a
//! delivery visits only its recipients: a user message locks the user's shard, a group message
//! the shards holding members (kept by [`Interest`]), a broadcast every shard but only the
//! project's connections in each. Counts come from the indexes and a counter, never a scan.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_core::bus::{
    ControlReply, ControlRequest, DisconnectWho, ListOf, Presence, ProjectStats, Subscribed,
};
use herald_core::codes::CloseCode;
use herald_core::ids::{ConnectionId, EdgeId, GroupId, ProjectId, UserId};
use herald_core::presence::{PresenceEnabled, PresenceEvent, PresenceSink};
use herald_core::proto::bus::{Envelope, TargetKind};
use herald_core::proto::v1::ConnectionInfo;
use herald_core::registry::{InterestKey, Registry};
use parking_lot::Mutex;
use slab::Slab;

use crate::codec::{Form, Frames, PROTOCOL_LABELS, Takes, Wire, heart_beat_frame};
use crate::frame::ping_frame;
use crate::interest::Interest;
use crate::transport::Framing;

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
    /// Most interest changes waiting for the registry; past it they are replaced by one rewrite
    /// of the whole interest.
    pub max_pending_interest: usize,
    /// Writes to the registry start at most once per this interval (changes of the interval
    /// go together).
    pub registry_batch: Duration,
    /// How long a connect or a join waits for the registry to hold its interest before it is
    /// answered anyway (the write goes on in the background).
    pub registration_timeout: Duration,
    /// The write window: a delivery to a connection whose queue was empty wakes its task at
    /// the end of the window (started by the first such delivery on the edge) rather than at
    /// once, so the messages of the window leave in one write ([`Hub::run_write_window`]).
    /// Zero: woken at once.
    pub write_window: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            shards: 8,
            max_queued_bytes: 1 << 20,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(20),
            token_leeway: Duration::from_secs(5),
            max_pending_interest: 100_000,
            registry_batch: Duration::from_millis(15),
            registration_timeout: Duration::from_secs(5),
            write_window: Duration::ZERO,
        }
    }
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
    /// The client's address, without an IPv6 flow label or scope (shown in listings only): 19
    /// bytes where a `SocketAddr` takes 32.
    remote_ip: IpAddr,
    remote_port: u16,
    since_unix_ms: i64,
    /// Token expiry, Unix seconds (saturated: 2106 is as good as never).
    expires_unix: u32,
    /// The protocol it speaks, in which form it takes messages (its wire's encoding, or one its
    /// codec chose with [`Hub::set_form`]) and whether compressed (`permessage-deflate`).
    takes: Takes,
    /// The protocol's own keep alive in seconds (MQTT keep alive, STOMP client heart-beat), 0:
    /// none. With one, the hub sends no pings and closes the connection after 1.5 times it
    /// without a frame from the client.
    keep_alive: u16,
    /// Seconds between the protocol's heart-beat frames to the client (STOMP), 0: none. One
    /// byte keeps `Conn` within its size (sending more often than asked is allowed).
    heart_beat: u8,
    /// Frames queued, taken whole by the connection's task (a `Vec`: 8 bytes less than a
    /// `VecDeque`, and it becomes the task's queue without a copy).
    outbox: Vec<Bytes>,
    /// Bytes in `outbox` (the bound, `max_queued_bytes`, is far below 4 GiB; replays are paced
    /// below it).
    queued: u32,
    waker: Option<Waker>,
    closing: Option<Closing>,
    last_seen: u32,
    /// Where this connection's slot is in its project's list (it fits in padding: no cost).
    project_pos: u32,
    /// The unanswered ping: when it went (the clock never reads 0, so this takes 4 bytes), or,
    /// with [`PING_QUEUED`] set, when it was queued and not yet taken by the writer.
    ping_sent_at: Option<NonZeroU32>,
}

/// Marks [`Conn::ping_sent_at`] as a ping still in the outbox: its pong deadline starts when the
/// writer takes it, so a ping queued behind a long backlog (a broadcast to every connection of a
/// starved edge) is not mistaken for a silent peer. The clock counts seconds and never nears it.
const PING_QUEUED: u32 = 1 << 31;

#[derive(Default)]
struct Shard {
    conns: Slab<Conn>,
    /// The slots of each project's connections, in no order.
    projects: HashMap<ProjectId, Vec<u32>>,
    groups: Index<GroupId>,
    users: Index<UserId>,
    /// The tasks of connections whose queue a delivery began, to wake at the end of the write
    /// window ([`HubConfig::write_window`]; each waker moved here from its connection).
    deferred: Vec<Waker>,
    /// Connections resuming streams, by slot: empty unless a client resumes (see [`Recovery`]).
    recovering: HashMap<u32, Vec<Recovery>>,
    /// Each project's messages and deliveries through this shard (the console's figures,
    /// `ControlRequest::Stats`), counted under the lock delivery takes anyway.
    traffic: HashMap<Box<str>, Traffic>,
}

/// One project's traffic through a shard: counters that only grow.
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    /// Envelopes handled (counted on the first shard an envelope visits).
    messages: u64,
    /// Frames queued to connections.
    deliveries: u64,
}

/// Where a resuming connection stands on one stream (kind and name of the target). While its
/// missed messages are read from history, live ones are held (`Holding`); once they are sent,
/// live messages at or below the last one sent are dropped (`Floor`) until a newer one passes.
struct Recovery {
    kind: TargetKind,
    name: Box<str>,
    state: RecoveryState,
}

enum RecoveryState {
    /// Live messages held while history is read: (offset, frame), their bytes, and whether
    /// some were dropped for room (then history is read again).
    Holding {
        held: Vec<(u64, Bytes)>,
        bytes: usize,
        overflow: bool,
    },
    /// Messages up to this offset were sent.
    Floor(u64),
}

/// How a finished read of history meets the live messages held meanwhile.
#[derive(Debug, PartialEq, Eq)]
pub enum Seam {
    /// Joined: the connection is live on the stream; the last offset it was sent.
    Joined(u64),
    /// Held messages were dropped or do not follow the read: read again after this offset.
    ReadAgain(u64),
    /// The connection is gone.
    Gone,
}

impl Shard {
    /// Adds `slot` to `project`'s list; returns the map's copy of the project id (one per shard,
    /// shared by its connections) and the slot's position in the list.
    fn project_add(&mut self, project: &ProjectId, slot: u32) -> (ProjectId, u32) {
        use std::collections::hash_map::Entry;
        match self.projects.entry(project.clone()) {
            Entry::Occupied(mut o) => {
                o.get_mut().push(slot);
                ((o.key().clone()), (o.get().len() - 1) as u32)
            }
            Entry::Vacant(v) => {
                let k = v.key().clone();
                v.insert(vec![slot]);
                (k, 0)
            }
        }
    }

    /// Removes the connection at `pos` of `project`'s list, moving the last one into its place.
    fn project_remove(&mut self, project: &ProjectId, pos: u32) {
        let Some(slots) = self.projects.get_mut(project) else {
            return;
        };
        let pos = pos as usize;
        if pos >= slots.len() {
            return;
        }
        slots.swap_remove(pos);
        if let Some(moved) = slots.get(pos).copied()
            && let Some(c) = self.conns.get_mut(moved as usize)
        {
            c.project_pos = pos as u32;
        }
        if slots.is_empty() {
            self.projects.remove(project);
        } else if slots.capacity() > 4 * slots.len() {
            slots.shrink_to(2 * slots.len());
        }
    }

    /// The slots of `project`'s connections.
    fn project_slots(&self, project: &str) -> &[u32] {
        self.projects.get(project).map_or(&[], Vec::as_slice)
    }
}

/// The slots of one key in a shard: most users have one device, so one needs no allocation;
/// several are boxed, so an index entry is 16 bytes of slots beside its key, not 24.
#[derive(Debug)]
enum Slots {
    One(u32),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u32>>),
}

impl Slots {
    fn push(&mut self, slot: u32) {
        match self {
            Slots::One(first) => *self = Slots::Many(Box::new(vec![*first, slot])),
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

/// Presence events of the projects that ask for them: which do, and (on a single node, whose
/// hub finds the transitions itself) where they go.
pub struct PresenceGate {
    /// Whether a project asks for presence events.
    pub enabled: PresenceEnabled,
    /// Where a single node's transitions go; a cluster edge writes them to the registry, which
    /// finds the cluster-wide ones.
    pub sink: Arc<dyn PresenceSink>,
}

impl PresenceGate {
    fn on(&self, project: &ProjectId) -> bool {
        (self.enabled)(project.as_str())
    }
}

/// Whether a user has a connection in `group` in this shard (all of a user's connections are in
/// its shard, so this is exact for the edge).
fn user_in_group(shard: &Shard, project: &ProjectId, user: &UserId, group: &GroupId) -> bool {
    shard
        .users
        .get(project)
        .and_then(|m| m.get(user))
        .is_some_and(|slots| {
            slots.as_slice().iter().any(|s| {
                shard
                    .conns
                    .get(*s as usize)
                    .is_some_and(|c| c.groups.contains(group))
            })
        })
}

/// The hub of one edge.
pub struct Hub {
    edge: EdgeId,
    cfg: HubConfig,
    /// Shared with the interest writer, which lists the users for a resync.
    shards: Arc<[Mutex<Shard>]>,
    next_number: AtomicU64,
    /// Set by [`Hub::close_all`]: the hint every connection inserted afterwards is closed with.
    shutdown: Mutex<Option<(CloseCode, u32)>>,
    /// Ticks since the hub started (one a second while the edge runs), plus one: never 0.
    clock: AtomicU32,
    /// Live connections (inserted and not removed).
    live: AtomicUsize,
    interest: Interest,
    /// Set once by [`Hub::set_presence`]; unset, no presence transition is looked for.
    presence: Arc<OnceLock<PresenceGate>>,
    metrics: DeliveryMetrics,
    /// Set while wakes are deferred and the window's end is due ([`Hub::run_write_window`]).
    window_armed: AtomicBool,
    /// Tells the write window's task that wakes were deferred.
    window_started: tokio::sync::Notify,
}

/// The metric handles every delivery updates, each registered with the recorder on its first
/// use and kept (a lookup of the series by name and labels per message cost more than the
/// update); lazily, so a protocol's series appears once it has a value, as before.
#[derive(Default)]
struct DeliveryMetrics {
    /// `herald_edge_deliveries_total` by protocol, indexed as [`PROTOCOL_LABELS`].
    deliveries: [OnceLock<metrics::Counter>; PROTOCOL_LABELS.len()],
    /// `herald_edge_messages_total`.
    messages: OnceLock<metrics::Counter>,
}

impl DeliveryMetrics {
    /// The deliveries counter of protocol label `i` of [`PROTOCOL_LABELS`].
    fn deliveries(&self, i: usize) -> &metrics::Counter {
        self.deliveries[i].get_or_init(
            || metrics::counter!("herald_edge_deliveries_total", "protocol" => PROTOCOL_LABELS[i]),
        )
    }

    fn messages(&self) -> &metrics::Counter {
        self.messages
            .get_or_init(|| metrics::counter!("herald_edge_messages_total"))
    }
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
    /// The protocol it speaks.
    pub wire: Wire,
    /// It negotiated `permessage-deflate` ([`crate::deflate`]).
    pub deflate: bool,
    /// Its transport's framing (deliveries are encoded for the wire in it).
    pub framing: Framing,
    /// The protocol's own keep alive in seconds (MQTT `CONNECT`, STOMP client heart-beat), 0:
    /// none.
    pub keep_alive_secs: u16,
    /// Seconds between the protocol's heart-beat frames to the client (STOMP), 0: none; at
    /// most 255.
    pub heart_beat_secs: u8,
    /// A connection this one takes over (MQTT client id): closed right after, so it is not
    /// counted against the per-user cap.
    pub replaces: Option<ConnHandle>,
    /// Streams (kind, name) the client resumes: their live messages are held from the start
    /// until their history is read ([`Hub::finish_recovery`]).
    pub resume: Vec<(TargetKind, String)>,
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
    /// A hub with `cfg.shards` shards and its interest. With a `registry`, the interest is
    /// written to it by a writer task (started here, on the current Tokio runtime); without one
    /// the hub is the registry of a single node ([`crate::local::LocalRegistry`]).
    pub fn new(edge: EdgeId, cfg: HubConfig, registry: Option<Arc<dyn Registry>>) -> Arc<Self> {
        let shards: Arc<[Mutex<Shard>]> =
            (0..cfg.shards.max(1)).map(|_| Mutex::default()).collect();
        let presence: Arc<OnceLock<PresenceGate>> = Arc::default();
        let interest = match registry {
            None => Interest::local(shards.len()),
            Some(registry) => {
                let listed = shards.clone();
                let gate = presence.clone();
                Interest::start(
                    edge.clone(),
                    registry,
                    shards.len(),
                    cfg.max_pending_interest,
                    cfg.registry_batch,
                    Box::new(move || {
                        let mut keys = user_keys(&listed);
                        if let Some(gate) = gate.get() {
                            member_keys(&listed, gate, &mut keys);
                        }
                        keys
                    }),
                )
            }
        };
        Arc::new(Self {
            edge,
            cfg,
            shards,
            // Numbers start from the start time (ms << 20), so ids from before a restart do not
            // name new connections: a run would need 2^20 connects per ms of uptime to collide.
            next_number: AtomicU64::new(((unix_now().as_millis() as u64) << 20) | 1),
            shutdown: Mutex::new(None),
            clock: AtomicU32::new(1),
            live: AtomicUsize::new(0),
            interest,
            presence,
            metrics: DeliveryMetrics::default(),
            window_armed: AtomicBool::new(false),
            window_started: tokio::sync::Notify::new(),
        })
    }

    /// Looks for presence transitions from now on (once; later calls are ignored). Connections
    /// already present are not announced.
    pub fn set_presence(&self, gate: PresenceGate) {
        let _ = self.presence.set(gate);
    }

    /// The gate, when `project` asks for presence events.
    fn presence_for(&self, project: &ProjectId) -> Option<&PresenceGate> {
        self.presence.get().filter(|g| g.on(project))
    }

    /// Hands a shard's presence transitions on: to the sink on a single node, as member keys
    /// to the registry writer in a cluster (`members`, where the cluster-wide ones are found).
    fn presence_transitions(
        &self,
        gate: Option<&PresenceGate>,
        project: &ProjectId,
        user: &UserId,
        groups: Vec<GroupId>,
        join: bool,
    ) -> Vec<InterestKey> {
        let Some(gate) = gate else {
            return Vec::new();
        };
        if groups.is_empty() {
            return Vec::new();
        }
        if self.interest.writes_registry() {
            return groups
                .into_iter()
                .map(|g| InterestKey::Member(project.clone(), g, user.clone()))
                .collect();
        }
        gate.sink.announce(
            groups
                .into_iter()
                .map(|group| PresenceEvent {
                    project: project.clone(),
                    group,
                    user: user.clone(),
                    join,
                })
                .collect(),
        );
        Vec::new()
    }

    /// This hub's edge.
    pub fn edge(&self) -> &EdgeId {
        &self.edge
    }

    fn now(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    /// The public id of a connection: `<edge>-<number>`.
    pub fn connection_id(&self, number: u64) -> ConnectionId {
        ConnectionId::new(self.edge.clone(), number)
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
            if max_per_user > 0 {
                // A connection being taken over is replaced, not added to.
                let replaced = c
                    .replaces
                    .filter(|r| r.shard as usize == shard_ix)
                    .filter(|r| {
                        shard
                            .conns
                            .get(r.slot as usize)
                            .is_some_and(|o| o.number == r.number)
                    })
                    .map(|r| r.slot);
                let held = shard
                    .users
                    .get(&c.project)
                    .and_then(|m| m.get(&c.user))
                    .map_or(0, |s| {
                        s.as_slice()
                            .iter()
                            .filter(|&&slot| Some(slot) != replaced)
                            .count()
                    });
                if held >= max_per_user as usize {
                    return None;
                }
            }
            let number = self.next_number.fetch_add(1, Ordering::Relaxed);
            let slot = shard.conns.vacant_key() as u32;
            // Groups the user had no connection in on this edge: before this one is indexed.
            let gate = self.presence_for(&c.project);
            let mut arrived = Vec::new();
            if gate.is_some() {
                for g in &c.groups {
                    if !arrived.contains(g) && !user_in_group(shard, &c.project, &c.user, g) {
                        arrived.push(g.clone());
                    }
                }
            }
            let (user, first) = index_add(&mut shard.users, &c.project, &c.user, slot);
            let mut groups: Vec<GroupId> = Vec::with_capacity(c.groups.len());
            let mut entered = Vec::new();
            for g in &c.groups {
                if !groups.contains(g) {
                    let (g, new) = index_add(&mut shard.groups, &c.project, g, slot);
                    if new {
                        entered.push(g.clone());
                    }
                    groups.push(g);
                }
            }
            let members = self.presence_transitions(gate, &c.project, &user, arrived, true);
            let registered = self.interest.add(
                shard_ix,
                first.then(|| InterestKey::User(c.project.clone(), user.clone())),
                &c.project,
                &entered,
                members,
            );
            let (project, project_pos) = shard.project_add(&c.project, slot);
            let entry = shard.conns.vacant_entry();
            debug_assert_eq!(entry.key(), slot as usize);
            entry.insert(Conn {
                number,
                project,
                user,
                groups: groups.into_boxed_slice(),
                remote_ip: c.remote.ip(),
                remote_port: c.remote.port(),
                since_unix_ms: unix_now().as_millis() as i64,
                expires_unix: saturate(c.expires_unix),
                takes: Takes::new(Form::of(c.wire, c.framing), c.deflate, c.framing),
                keep_alive: c.keep_alive_secs,
                heart_beat: c.heart_beat_secs,
                outbox: Vec::new(),
                queued: 0,
                waker: None,
                closing: None,
                last_seen: self.now(),
                project_pos,
                ping_sent_at: None,
            });
            if !c.resume.is_empty() {
                shard.recovering.insert(
                    slot,
                    c.resume
                        .iter()
                        .map(|(kind, name)| Recovery {
                            kind: *kind,
                            name: name.as_str().into(),
                            state: RecoveryState::Holding {
                                held: Vec::new(),
                                bytes: 0,
                                overflow: false,
                            },
                        })
                        .collect(),
                );
            }
            // A connection that finished its handshake while the edge began to drain is closed
            // like the others (checked under the shard lock `close_all` also takes).
            if let Some((code, max_ms)) = *self.shutdown.lock()
                && let Some(conn) = shard.conns.get_mut(slot as usize)
            {
                close(conn, shutdown_closing(code, max_ms));
            }
            (number, slot, registered)
        };
        self.live.fetch_add(1, Ordering::Relaxed);
        let label = Form::of(c.wire, c.framing).label();
        metrics::gauge!("herald_edge_connections", "protocol" => label).increment(1.0);
        self.registered(registered, "connect").await;
        Some(ConnHandle {
            shard: shard_ix as u32,
            slot,
            number,
        })
    }

    /// Removes a connection and its interest.
    pub fn remove(&self, h: ConnHandle) {
        let form;
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
            shard.recovering.remove(&h.slot);
            shard.project_remove(&conn.project, conn.project_pos);
            form = conn.takes.form();
            let user_left = index_remove(&mut shard.users, &conn.project, &conn.user, h.slot);
            let gate = self.presence_for(&conn.project);
            let departed: Vec<GroupId> = match gate {
                Some(_) => conn
                    .groups
                    .iter()
                    .filter(|g| !user_in_group(shard, &conn.project, &conn.user, g))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            let members =
                self.presence_transitions(gate, &conn.project, &conn.user, departed, false);
            let mut left = Vec::new();
            for g in conn.groups.into_vec() {
                if index_remove(&mut shard.groups, &conn.project, &g, h.slot) {
                    left.push(g);
                }
            }
            self.interest.remove(
                h.shard as usize,
                user_left.then(|| InterestKey::User(conn.project.clone(), conn.user)),
                &conn.project,
                &left,
                members,
            );
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("herald_edge_connections", "protocol" => form.label()).decrement(1.0);
    }

    /// Waits for a registration, up to the deadline; past it the caller goes on (the write
    /// goes on in the background, and a resync after the registry returns holds it too). While
    /// the registry is known degraded nothing is waited for: the write cannot succeed before
    /// the registry recovers, and waiting would turn a slow Redis into a connect rate of
    /// in-flight handshakes / deadline (400/s at 2,000 and 5 s).
    async fn registered(&self, registered: crate::interest::Registered, op: &'static str) {
        if self.interest.registry_degraded() {
            metrics::counter!("herald_edge_registration_timeouts_total", "op" => op).increment(1);
            return;
        }
        if tokio::time::timeout(self.cfg.registration_timeout, registered)
            .await
            .is_err()
        {
            metrics::counter!("herald_edge_registration_timeouts_total", "op" => op).increment(1);
            tracing::debug!(
                op,
                "registry registration deadline passed; answering anyway"
            );
        }
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

    /// Sets the form in which a connection takes messages from now on (what is queued stays as
    /// it is); a form of the connection's own wire.
    pub(crate) fn set_form(&self, h: ConnHandle, form: Form) {
        self.with_conn(h, |shard, slot| {
            let c = &mut shard.conns[slot as usize];
            c.takes = c.takes.with_form(form);
        });
    }

    /// Joins a group; resolves once the registry holds the interest.
    pub async fn join(&self, h: ConnHandle, group: GroupId, max_groups: usize) -> JoinOutcome {
        let outcome = self.with_conn(h, |shard, slot| {
            let conn = &shard.conns[slot as usize];
            if conn.groups.contains(&group) {
                // Already a member: wait behind any pending write of that interest.
                return Ok(self.interest.add(
                    h.shard as usize,
                    None,
                    &conn.project,
                    &[],
                    Vec::new(),
                ));
            }
            if conn.groups.len() >= max_groups {
                return Err(());
            }
            let project = conn.project.clone();
            let user = conn.user.clone();
            let gate = self.presence_for(&project);
            let arrived = gate.is_some() && !user_in_group(shard, &project, &user, &group);
            let (g, new) = index_add(&mut shard.groups, &project, &group, slot);
            let members = self.presence_transitions(
                gate,
                &project,
                &user,
                if arrived { vec![g.clone()] } else { Vec::new() },
                true,
            );
            let registered = self.interest.add(
                h.shard as usize,
                None,
                &project,
                if new { std::slice::from_ref(&g) } else { &[] },
                members,
            );
            let conn = &mut shard.conns[slot as usize];
            let mut groups = std::mem::take(&mut conn.groups).into_vec();
            groups.push(g);
            conn.groups = groups.into_boxed_slice();
            Ok(registered)
        });
        match outcome {
            Some(Err(())) => JoinOutcome::TooMany,
            Some(Ok(registered)) => {
                self.registered(registered, "join").await;
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
            let g = groups.swap_remove(i);
            conn.groups = groups.into_boxed_slice();
            let project = conn.project.clone();
            let user = conn.user.clone();
            let gate = self.presence_for(&project);
            let departed = gate.is_some() && !user_in_group(shard, &project, &user, group);
            let members = self.presence_transitions(
                gate,
                &project,
                &user,
                if departed {
                    vec![g.clone()]
                } else {
                    Vec::new()
                },
                false,
            );
            let emptied = index_remove(&mut shard.groups, &project, group, slot);
            if emptied || !members.is_empty() {
                self.interest.remove(
                    h.shard as usize,
                    None,
                    &project,
                    if emptied {
                        std::slice::from_ref(&g)
                    } else {
                        &[]
                    },
                    members,
                );
            }
            true
        })
        .unwrap_or(false)
    }

    /// Whether a connection is a member of `group`.
    pub fn is_member(&self, h: ConnHandle, group: &str) -> bool {
        self.with_conn(h, |shard, slot| {
            shard.conns[slot as usize]
                .groups
                .iter()
                .any(|g| g.as_str() == group)
        })
        .unwrap_or(false)
    }

    /// Subscribes `who` to `group` (or unsubscribes them) on the server's initiative: the
    /// connections join (leave) the group at once, native clients are told with a `subscribed`
    /// (`unsubscribed`) frame, and a connection at `max_groups` (or its project's cap, from
    /// `project_cap`) is left out. Returns what was done and the registrations to wait for.
    pub fn subscribe_by_server(
        &self,
        project: &ProjectId,
        who: &DisconnectWho,
        group: &GroupId,
        subscribe: bool,
        max_groups: usize,
    ) -> (Subscribed, Vec<crate::interest::Registered>) {
        let mut out = Subscribed::default();
        let mut registered = Vec::new();
        let frame = crate::protocol::membership(group.as_str(), subscribe);
        let mut wake = Vec::new();
        let mut visit = |shard_ix: usize, shard: &mut Shard, slot: u32| {
            let Some(conn) = shard.conns.get_mut(slot as usize) else {
                return;
            };
            if conn.closing.is_some() {
                return;
            }
            let member = conn.groups.contains(group);
            if member == subscribe {
                out.unchanged += 1;
                return;
            }
            if subscribe && conn.groups.len() >= max_groups {
                out.refused += 1;
                return;
            }
            let mut groups = std::mem::take(&mut conn.groups).into_vec();
            let user = conn.user.clone();
            // This connection's groups are taken out: the check sees the user's others only.
            let gate = self.presence_for(project);
            let transition = gate.is_some() && !user_in_group(shard, project, &user, group);
            let members = self.presence_transitions(
                gate,
                project,
                &user,
                if transition {
                    vec![group.clone()]
                } else {
                    Vec::new()
                },
                subscribe,
            );
            if subscribe {
                let (g, new) = index_add(&mut shard.groups, project, group, slot);
                registered.push(self.interest.add(
                    shard_ix,
                    None,
                    project,
                    if new { std::slice::from_ref(&g) } else { &[] },
                    members,
                ));
                groups.push(g);
            } else {
                groups.retain(|g| g != group);
                let emptied = index_remove(&mut shard.groups, project, group, slot);
                if emptied || !members.is_empty() {
                    self.interest.remove(
                        shard_ix,
                        None,
                        project,
                        if emptied {
                            std::slice::from_ref(group)
                        } else {
                            &[]
                        },
                        members,
                    );
                }
            }
            let conn = &mut shard.conns[slot as usize];
            conn.groups = groups.into_boxed_slice();
            if conn.takes.wire() == Wire::Native {
                push(conn, frame.clone(), self.cfg.max_queued_bytes, &mut wake);
            }
            out.changed += 1;
        };
        match who {
            DisconnectWho::User(u) => {
                // All devices of a user share one shard.
                let i = self.user_shard(project.as_str(), u.as_str());
                let mut shard = self.shards[i].lock();
                let slots: Vec<u32> = shard
                    .users
                    .get(project)
                    .and_then(|m| m.get(u))
                    .map(|s| s.as_slice().to_vec())
                    .unwrap_or_default();
                for slot in slots {
                    visit(i, &mut shard, slot);
                }
            }
            DisconnectWho::Connection(id) if id.edge() == &self.edge => {
                for (i, shard) in self.shards.iter().enumerate() {
                    let mut shard = shard.lock();
                    let found =
                        shard
                            .project_slots(project.as_str())
                            .iter()
                            .copied()
                            .find(|&slot| {
                                shard
                                    .conns
                                    .get(slot as usize)
                                    .is_some_and(|c| c.number == id.number())
                            });
                    if let Some(slot) = found {
                        visit(i, &mut shard, slot);
                        break;
                    }
                }
            }
            DisconnectWho::Connection(_) => {}
        }
        for w in wake {
            w.wake();
        }
        (out, registered)
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
            InterestKey::Member(project, group, user) => {
                let shard = self.shards[self.user_shard(project.as_str(), user.as_str())].lock();
                shard
                    .users
                    .get(project)
                    .and_then(|m| m.get(user))
                    .is_some_and(|slots| {
                        slots.as_slice().iter().any(|s| {
                            shard
                                .conns
                                .get(*s as usize)
                                .is_some_and(|c| c.groups.contains(group))
                        })
                    })
            }
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
            shard.conns[slot as usize].expires_unix = saturate(expires_unix)
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
            if let Some(at) = c.ping_sent_at
                && at.get() & PING_QUEUED != 0
            {
                c.ping_sent_at = NonZeroU32::new(self.now());
            }
            if into.is_empty() {
                *into = VecDeque::from(std::mem::take(&mut c.outbox));
            } else {
                into.extend(c.outbox.drain(..));
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

    /// Delivers an envelope to every local recipient: encoded once, shared by all. A user
    /// message locks the user's shard, a group message the shards holding its members.
    pub fn deliver(&self, env: &Envelope) {
        let project = env.project.as_str();
        let kind = env.kind();
        let name = env.name.as_str();
        let group_shards;
        let shards: &mut dyn Iterator<Item = usize> = match kind {
            TargetKind::Unspecified => return,
            TargetKind::User => &mut std::iter::once(self.user_shard(project, name)),
            TargetKind::Group => {
                group_shards = self.interest.group_shards(project, name);
                &mut group_shards.iter()
            }
            TargetKind::Broadcast => &mut (0..self.shards.len()),
        };
        // Encoded at most once per protocol among the recipients.
        let mut frames = Frames::new(env);
        // Presence events go to native-protocol members only (docs/protocol.md).
        let presence = env.presence.is_some();
        let max = self.cfg.max_queued_bytes;
        let mut delivered = [0u64; PROTOCOL_LABELS.len()];
        let mut wake = Vec::new();
        let defer = !self.cfg.write_window.is_zero();
        let mut deferred = false;
        let mut first = true;
        for i in shards {
            {
                let mut shard = self.shards[i].lock();
                let shard = &mut *shard;
                let before: u64 = delivered.iter().sum();
                if kind == TargetKind::Broadcast {
                    let slots = shard.projects.get(project).map_or(&[][..], Vec::as_slice);
                    if slots.len() * 2 >= shard.conns.len() {
                        // Most of the shard: one pass over the slab, in memory order.
                        for (slot, c) in shard.conns.iter_mut() {
                            if c.project.as_str() == project
                                && let Some(frame) =
                                    passes(&mut shard.recovering, slot as u32, c, &mut frames)
                            {
                                delivered[c.takes.form().label_index()] +=
                                    push(c, frame, max, &mut wake) as u64;
                            }
                        }
                    } else {
                        for slot in slots {
                            if let Some(c) = shard.conns.get_mut(*slot as usize)
                                && let Some(frame) =
                                    passes(&mut shard.recovering, *slot, c, &mut frames)
                            {
                                delivered[c.takes.form().label_index()] +=
                                    push(c, frame, max, &mut wake) as u64;
                            }
                        }
                    }
                } else {
                    let index = if kind == TargetKind::Group {
                        shard.groups.get(project).and_then(|m| m.get(name))
                    } else {
                        shard.users.get(project).and_then(|m| m.get(name))
                    };
                    let slots = index.map(Slots::as_slice).unwrap_or_default();
                    for slot in slots {
                        if let Some(c) = shard.conns.get_mut(*slot as usize)
                            && (!presence || c.takes.wire() == Wire::Native)
                            && let Some(frame) =
                                passes(&mut shard.recovering, *slot, c, &mut frames)
                        {
                            delivered[c.takes.form().label_index()] +=
                                push(c, frame, max, &mut wake) as u64;
                        }
                    }
                }
                let here = delivered.iter().sum::<u64>() - before;
                if first || here > 0 {
                    let t = match shard.traffic.get_mut(project) {
                        Some(t) => t,
                        None => shard.traffic.entry(project.into()).or_default(),
                    };
                    t.messages += u64::from(first);
                    t.deliveries += here;
                }
                first = false;
                if defer && !wake.is_empty() {
                    shard.deferred.append(&mut wake);
                    deferred = true;
                }
            }
            for w in wake.drain(..) {
                w.wake();
            }
        }
        if deferred {
            self.window_begun();
        }
        for (i, n) in delivered.into_iter().enumerate() {
            if n > 0 {
                self.metrics.deliveries(i).increment(n);
            }
        }
        self.metrics.messages().increment(1);
    }

    /// Makes sure the write window that deferred wakes wait in ends ([`Hub::run_write_window`]).
    fn window_begun(&self) {
        if !self.window_armed.swap(true, Ordering::SeqCst) {
            self.window_started.notify_one();
        }
    }

    /// Ends write windows ([`HubConfig::write_window`]) for the edge's life: once a delivery
    /// deferred a wake, waits the window and wakes every task deferred meanwhile, each of which
    /// then writes all its connection's queue at once. Returns at once when there is no window.
    pub async fn run_write_window(&self) {
        let window = self.cfg.write_window;
        if window.is_zero() {
            return;
        }
        let mut wake = Vec::new();
        loop {
            self.window_started.notified().await;
            tokio::time::sleep(window).await;
            // Cleared before the shards are emptied: a wake deferred into a shard already
            // emptied begins the next window.
            self.window_armed.store(false, Ordering::SeqCst);
            for shard in self.shards.iter() {
                {
                    let mut shard = shard.lock();
                    if shard.deferred.is_empty() {
                        continue;
                    }
                    std::mem::swap(&mut shard.deferred, &mut wake);
                }
                for w in wake.drain(..) {
                    w.wake();
                }
                // What a broadcast to every connection needed is not kept.
                if wake.capacity() > MAX_KEPT_WAKERS {
                    wake = Vec::new();
                }
            }
        }
    }

    /// Starts resuming a stream (`kind`, `name`) on a connection: from now on its live messages
    /// for it are held until [`Hub::finish_recovery`]. False when the connection is gone.
    pub fn begin_recovery(&self, h: ConnHandle, kind: TargetKind, name: &str) -> bool {
        self.with_conn(h, |shard, slot| {
            let list = shard.recovering.entry(slot).or_default();
            let state = RecoveryState::Holding {
                held: Vec::new(),
                bytes: 0,
                overflow: false,
            };
            match list.iter_mut().find(|r| r.kind == kind && *r.name == *name) {
                Some(r) => r.state = state,
                None => list.push(Recovery {
                    kind,
                    name: name.into(),
                    state,
                }),
            }
        })
        .is_some()
    }

    /// Queues frames read from history (ahead of any held live message), whatever the queue
    /// holds: a replay is paced by its reader ([`Hub::queued`]), never cut as a slow consumer.
    pub fn push_replay(&self, h: ConnHandle, frames: impl IntoIterator<Item = Bytes>) -> bool {
        let mut wake = None;
        let ok = self
            .with_conn(h, |shard, slot| {
                let c = &mut shard.conns[slot as usize];
                if c.closing.is_some() {
                    return false;
                }
                wake = enqueue(c, frames);
                true
            })
            .unwrap_or(false);
        if let Some(w) = wake {
            w.wake();
        }
        ok
    }

    /// Bytes waiting in a connection's queue; `None` when it is gone or closing.
    pub fn queued(&self, h: ConnHandle) -> Option<usize> {
        self.with_conn(h, |shard, slot| {
            let c = &shard.conns[slot as usize];
            c.closing.is_none().then_some(c.queued as usize)
        })
        .flatten()
    }

    /// Ends the read of a stream's history that went up to offset `read_to`: the live messages
    /// held meanwhile that follow it are queued and the connection is live on the stream, or the
    /// held ones do not join up with what was read and history must be read again.
    pub fn finish_recovery(
        &self,
        h: ConnHandle,
        kind: TargetKind,
        name: &str,
        read_to: u64,
        answer: Option<Bytes>,
    ) -> Seam {
        let mut wake = None;
        let seam = self
            .with_conn(h, |shard, slot| {
                let Some(r) = shard
                    .recovering
                    .get_mut(&slot)
                    .and_then(|list| list.iter_mut().find(|r| r.kind == kind && *r.name == *name))
                else {
                    return Seam::Gone;
                };
                let RecoveryState::Holding {
                    held,
                    bytes,
                    overflow,
                } = &mut r.state
                else {
                    return Seam::Gone;
                };
                let first = held.iter().map(|(o, _)| *o).find(|o| *o > read_to);
                if *overflow || first.is_some_and(|o| o > read_to + 1) {
                    // Dropped for room, or a message between the read and the first held one.
                    *overflow = false;
                    held.retain(|(o, _)| *o > read_to);
                    *bytes = held.iter().map(|(_, f)| f.len()).sum();
                    return Seam::ReadAgain(read_to);
                }
                let mut last = read_to;
                let joined = std::mem::take(held).into_iter().filter_map(|(o, f)| {
                    (o == last + 1).then(|| {
                        last = o;
                        f
                    })
                });
                let c = &mut shard.conns[slot as usize];
                wake = enqueue(c, answer.into_iter().chain(joined));
                r.state = RecoveryState::Floor(last);
                Seam::Joined(last)
            })
            .unwrap_or(Seam::Gone);
        if let Some(w) = wake {
            w.wake();
        }
        seam
    }

    /// Gives up resuming a stream (history unreadable): queues `frame` (the error) and the live
    /// messages held meanwhile, and lets live ones through again.
    pub fn abandon_recovery(
        &self,
        h: ConnHandle,
        kind: TargetKind,
        name: &str,
        frame: Option<Bytes>,
    ) {
        let mut wake = None;
        self.with_conn(h, |shard, slot| {
            let mut held = Vec::new();
            if let Some(list) = shard.recovering.get_mut(&slot) {
                if let Some(i) = list.iter().position(|r| r.kind == kind && *r.name == *name)
                    && let RecoveryState::Holding { held: h, .. } = list.swap_remove(i).state
                {
                    held = h;
                }
                if list.is_empty() {
                    shard.recovering.remove(&slot);
                }
            }
            let c = &mut shard.conns[slot as usize];
            wake = enqueue(c, frame.into_iter().chain(held.into_iter().map(|(_, f)| f)));
        });
        if let Some(w) = wake {
            w.wake();
        }
    }

    /// Closes one connection (its task sends the close); false when it is already gone.
    pub fn close(&self, h: ConnHandle, closing: Closing) -> bool {
        self.with_conn(h, |shard, slot| {
            let c = &mut shard.conns[slot as usize];
            if c.closing.is_none() {
                close(c, closing);
            }
        })
        .is_some()
    }

    /// Marks matching connections for closing. Returns how many.
    /// Marks for closing the connections of `slots` that match `pred`; returns how many.
    fn close_in(
        conns: &mut Slab<Conn>,
        slots: &[u32],
        closing: Closing,
        pred: impl Fn(&Conn) -> bool,
    ) -> u32 {
        let mut n = 0;
        for slot in slots {
            if let Some(c) = conns.get_mut(*slot as usize)
                && c.closing.is_none()
                && pred(c)
            {
                close(c, closing);
                n += 1;
            }
        }
        n
    }

    /// Closes every connection of `user` of `project` here; returns how many.
    pub fn close_user(&self, project: &ProjectId, user: &UserId, closing: Closing) -> u32 {
        // All devices of a user share one shard.
        let i = self.user_shard(project.as_str(), user.as_str());
        let mut shard = self.shards[i].lock();
        let shard = &mut *shard;
        let slots = shard
            .users
            .get(project)
            .and_then(|m| m.get(user))
            .map(Slots::as_slice)
            .unwrap_or_default();
        Self::close_in(&mut shard.conns, slots, closing, |_| true)
    }

    /// Closes the connections of every user banned now (close 4014), each with a hint to come
    /// back when its ban ends (none for a ban until lifted); returns how many.
    pub fn close_banned(&self, bans: &herald_core::bans::BanList) -> u32 {
        let now = herald_core::bans::now_ms();
        let mut n = 0;
        for (project, user, until) in bans.in_force(now) {
            let (Ok(project), Ok(user)) = (ProjectId::new(project), UserId::new(user)) else {
                continue;
            };
            let wait = until.map_or(0, |t| u32::try_from(t - now).unwrap_or(u32::MAX));
            n += self.close_user(
                &project,
                &user,
                Closing {
                    code: CloseCode::Banned,
                    reconnect_after_ms: wait,
                },
            );
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
        self.live.load(Ordering::Relaxed)
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connections of a user or a group of `project`, in number order: only those whose id
    /// orders after `after`, at most `limit` of them (the lowest numbers).
    fn list(
        &self,
        project: &ProjectId,
        of: &ListOf,
        after: Option<&ConnectionId>,
        limit: Option<u32>,
    ) -> Vec<ConnectionInfo> {
        // Ids order by edge, then number: a cursor on a later edge leaves nothing here, one on
        // an earlier edge leaves everything.
        let above = match after {
            Some(a) if *a.edge() > self.edge => return Vec::new(),
            Some(a) if *a.edge() == self.edge => Some(a.number()),
            _ => None,
        };
        // First the numbers alone (cheap to sort and cut: a page of a large group does not
        // build every entry), then the entries of the page.
        let mut picked: Vec<(u64, u32, u32)> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let shard = shard.lock();
            let slots = match of {
                ListOf::User(u) => shard.users.get(project).and_then(|m| m.get(u)),
                ListOf::Group(g) => shard.groups.get(project).and_then(|m| m.get(g)),
            };
            for &slot in slots.map(Slots::as_slice).unwrap_or_default() {
                if let Some(c) = shard.conns.get(slot as usize)
                    && above.is_none_or(|n| c.number > n)
                {
                    picked.push((c.number, i as u32, slot));
                }
            }
        }
        if let Some(limit) = limit.map(|l| l as usize)
            && picked.len() > limit
        {
            picked.select_nth_unstable(limit);
            picked.truncate(limit);
        }
        picked.sort_unstable_by_key(|&(_, shard, _)| shard);
        let mut out: Vec<(u64, ConnectionInfo)> = Vec::with_capacity(picked.len());
        for run in picked.chunk_by(|a, b| a.1 == b.1) {
            let shard = self.shards[run[0].1 as usize].lock();
            for &(number, _, slot) in run {
                // Still the same connection, still one of the user's or the group's.
                let Some(c) = shard.conns.get(slot as usize) else {
                    continue;
                };
                let member = match of {
                    ListOf::User(u) => c.user == *u,
                    ListOf::Group(g) => c.groups.contains(g),
                };
                if c.number != number || c.project != *project || !member {
                    continue;
                }
                out.push((
                    number,
                    ConnectionInfo {
                        id: self.connection_id(number).to_string(),
                        user: c.user.to_string(),
                        remote_addr: SocketAddr::new(c.remote_ip, c.remote_port).to_string(),
                        connected_since_unix_ms: c.since_unix_ms,
                        groups: c.groups.iter().map(|g| g.to_string()).collect(),
                        edge: self.edge.to_string(),
                    },
                ));
            }
        }
        out.sort_unstable_by_key(|&(number, _)| number);
        out.into_iter().map(|(_, c)| c).collect()
    }

    /// Who is in `group` of `project` on this edge: one entry per user (a user's devices share
    /// a shard, so each shard counts its own users), the users after `after` in id order, at
    /// most `limit` of them; the totals count every member.
    fn presence(
        &self,
        project: &ProjectId,
        group: &GroupId,
        after: Option<&UserId>,
        limit: Option<u32>,
    ) -> Presence {
        let mut out = Presence::default();
        let mut users: Vec<(UserId, u32)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            let Some(slots) = shard.groups.get(project).and_then(|m| m.get(group)) else {
                continue;
            };
            let mut here: HashMap<&UserId, u32> = HashMap::new();
            for &slot in slots.as_slice() {
                if let Some(c) = shard.conns.get(slot as usize) {
                    *here.entry(&c.user).or_default() += 1;
                }
            }
            out.connections += here.values().map(|&n| u64::from(n)).sum::<u64>();
            out.users_total += here.len() as u64;
            users.extend(
                here.into_iter()
                    .filter(|(u, _)| after.is_none_or(|a| *u > a))
                    .map(|(u, n)| (u.clone(), n)),
            );
        }
        if let Some(limit) = limit.map(|l| l as usize)
            && users.len() > limit
        {
            users.select_nth_unstable_by(limit, |a, b| a.0.cmp(&b.0));
            users.truncate(limit);
        }
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.users = users
            .into_iter()
            .map(|(u, n)| (u.as_str().to_owned(), n))
            .collect();
        out
    }

    /// Answers an operator call about local connections.
    pub fn control(&self, req: &ControlRequest) -> ControlReply {
        match req {
            ControlRequest::Count { project } => {
                let mut counts: HashMap<String, u64> = HashMap::new();
                for shard in self.shards.iter() {
                    let shard = shard.lock();
                    match project {
                        Some(p) => {
                            let n = shard.project_slots(p.as_str()).len() as u64;
                            if n > 0 {
                                *counts.entry(p.to_string()).or_default() += n;
                            }
                        }
                        None => {
                            for (p, slots) in &shard.projects {
                                *counts.entry(p.to_string()).or_default() += slots.len() as u64;
                            }
                        }
                    }
                }
                ControlReply::Count(counts)
            }
            ControlRequest::Stats => {
                let mut stats: HashMap<String, ProjectStats> = HashMap::new();
                for shard in self.shards.iter() {
                    let shard = shard.lock();
                    for (p, slots) in &shard.projects {
                        stats.entry(p.to_string()).or_default().connections += slots.len() as u64;
                    }
                    for (p, t) in &shard.traffic {
                        let s = stats.entry(p.to_string()).or_default();
                        s.messages += t.messages;
                        s.deliveries += t.deliveries;
                    }
                }
                ControlReply::Stats(stats)
            }
            ControlRequest::List {
                project,
                of,
                after,
                limit,
            } => ControlReply::List(self.list(project, of, after.as_ref(), *limit)),
            ControlRequest::Presence {
                project,
                group,
                after,
                limit,
            } => ControlReply::Presence(self.presence(project, group, after.as_ref(), *limit)),
            // The edge's bus handler answers these itself, with the caps on groups and a wait
            // for the registry; here (a hub asked directly) without either.
            ControlRequest::Subscribe {
                project,
                who,
                group,
                subscribe,
            } => ControlReply::Subscribed(
                self.subscribe_by_server(project, who, group, *subscribe, usize::MAX)
                    .0,
            ),
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
                    DisconnectWho::User(u) => self.close_user(project, u, closing),
                    DisconnectWho::Connection(id) => {
                        let number = (id.edge() == &self.edge).then(|| id.number());
                        match number {
                            Some(number) => {
                                let mut n = 0;
                                for shard in self.shards.iter() {
                                    let mut shard = shard.lock();
                                    let shard = &mut *shard;
                                    let slots =
                                        shard.projects.get(project).map_or(&[][..], Vec::as_slice);
                                    n += Self::close_in(&mut shard.conns, slots, closing, |c| {
                                        c.number == number
                                    });
                                    if n > 0 {
                                        break;
                                    }
                                }
                                n
                            }
                            None => 0,
                        }
                    }
                };
                ControlReply::Disconnected(n)
            }
        }
    }

    /// One tick of the hub clock: pings idle connections, closes dead peers and expired tokens.
    ///
    /// The clock advances one second per tick (ticks come once a second, later when the edge is
    /// starved of CPU): a second the edge could not run, and so could not read a pong, does not
    /// count against its clients.
    pub fn tick(&self) {
        let now = self.now().saturating_add(1).min(PING_QUEUED - 1);
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
                if u64::from(c.expires_unix) <= now_unix {
                    close(
                        c,
                        Closing {
                            code: CloseCode::TokenExpired,
                            reconnect_after_ms: 0,
                        },
                    );
                } else if c.keep_alive > 0 {
                    // The protocol's keep alive: the client sends; 1.5 times it without a frame
                    // is a dead peer (rounded up to the hub's one-second tick).
                    let limit = (u32::from(c.keep_alive) * 3).div_ceil(2);
                    if now.saturating_sub(c.last_seen) >= limit {
                        close(
                            c,
                            Closing {
                                code: CloseCode::PingTimeout,
                                reconnect_after_ms: 0,
                            },
                        );
                    }
                } else if c.takes.one_way() {
                    // The client cannot answer: the ping goes as the transport's heartbeat
                    // (an SSE comment, a SockJS `h`) at the ping interval, no pong expected (a
                    // dead peer shows as a failed write or the stream's end).
                    if now.saturating_sub(c.last_seen) >= ping_every {
                        c.last_seen = now;
                        c.queued = c.queued.saturating_add(ping.len() as u32);
                        c.outbox.push(ping.clone());
                        if let Some(w) = c.waker.take() {
                            w.wake();
                        }
                    }
                } else if let Some(at) = c.ping_sent_at.map(NonZeroU32::get) {
                    // A ping still queued gets the ping interval on top before the peer is
                    // judged: a writer that cannot hand it over that long is stuck on a peer
                    // that does not read.
                    let (at, within) = if at & PING_QUEUED != 0 {
                        (at & !PING_QUEUED, pong_within.saturating_add(ping_every))
                    } else {
                        (at, pong_within)
                    };
                    if now.saturating_sub(at) >= within {
                        close(
                            c,
                            Closing {
                                code: CloseCode::PingTimeout,
                                reconnect_after_ms: 0,
                            },
                        );
                    }
                } else if now.saturating_sub(c.last_seen) >= ping_every {
                    c.ping_sent_at = NonZeroU32::new(now | PING_QUEUED);
                    c.queued = c.queued.saturating_add(ping.len() as u32);
                    c.outbox.push(ping.clone());
                    if let Some(w) = c.waker.take() {
                        w.wake();
                    }
                }
                // The protocol's heart-beats, spread over the interval by connection number.
                if c.heart_beat > 0
                    && c.closing.is_none()
                    && now
                        .wrapping_add(c.number as u32)
                        .is_multiple_of(u32::from(c.heart_beat))
                    && let Some(beat) = heart_beat_frame(c.takes.wire())
                {
                    c.queued = c.queued.saturating_add(beat.len() as u32);
                    c.outbox.push(beat);
                    if let Some(w) = c.waker.take() {
                        w.wake();
                    }
                }
            }
        }
    }

    /// Every user key this edge holds (for re-registering its whole interest).
    pub fn user_keys(&self) -> Vec<InterestKey> {
        user_keys(&self.shards)
    }

    /// The edge's interest (for re-registering it).
    pub fn interest(&self) -> &Interest {
        &self.interest
    }
}

/// Every member key (a user in a group, once) of the projects that ask for presence events.
fn member_keys(shards: &[Mutex<Shard>], gate: &PresenceGate, out: &mut Vec<InterestKey>) {
    let mut seen = std::collections::HashSet::new();
    for shard in shards {
        let shard = shard.lock();
        for (_, c) in shard.conns.iter() {
            if !gate.on(&c.project) {
                continue;
            }
            for g in c.groups.iter() {
                if seen.insert((c.project.clone(), g.clone(), c.user.clone())) {
                    out.push(InterestKey::Member(
                        c.project.clone(),
                        g.clone(),
                        c.user.clone(),
                    ));
                }
            }
        }
    }
}

/// Every user key held in `shards`.
fn user_keys(shards: &[Mutex<Shard>]) -> Vec<InterestKey> {
    let mut out = Vec::new();
    for shard in shards {
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

/// The frame a connection gets for the message of `frames`, or `None` when it must not get it
/// now: held while the connection reads the stream's history, or already sent by that read.
/// Cheap when nobody resumes: one emptiness check.
fn passes(
    recovering: &mut HashMap<u32, Vec<Recovery>>,
    slot: u32,
    c: &Conn,
    frames: &mut Frames<'_>,
) -> Option<Bytes> {
    let env = frames.env();
    if env.seq == 0 || recovering.is_empty() {
        return Some(frames.get(c.takes).clone());
    }
    let Some(list) = recovering.get_mut(&slot) else {
        return Some(frames.get(c.takes).clone());
    };
    let kind = env.kind();
    let Some(i) = list
        .iter()
        .position(|r| r.kind == kind && *r.name == *env.name)
    else {
        return Some(frames.get(c.takes).clone());
    };
    match &mut list[i].state {
        RecoveryState::Holding {
            held,
            bytes,
            overflow,
        } => {
            let frame = frames.get(c.takes);
            // Bounded like the connection's queue; history has what is dropped here.
            if *bytes + frame.len() > MAX_HELD_BYTES {
                *overflow = true;
                held.clear();
                *bytes = 0;
            } else if !*overflow {
                *bytes += frame.len();
                held.push((env.seq, frame.clone()));
            }
            None
        }
        RecoveryState::Floor(floor) => {
            if env.seq <= *floor {
                return None;
            }
            list.swap_remove(i);
            if list.is_empty() {
                recovering.remove(&slot);
            }
            Some(frames.get(c.takes).clone())
        }
    }
}

/// Queues `frames` whatever the bound (replays and held messages, paced by their reader);
/// returns the task to wake when the queue was empty.
fn enqueue(c: &mut Conn, frames: impl IntoIterator<Item = Bytes>) -> Option<Waker> {
    let was_empty = c.outbox.is_empty();
    for f in frames {
        c.queued = c.queued.saturating_add(saturate(f.len() as u64));
        c.outbox.push(f);
    }
    if was_empty && !c.outbox.is_empty() {
        c.waker.take()
    } else {
        None
    }
}

/// The most deferred wakers whose room the write window keeps between windows.
const MAX_KEPT_WAKERS: usize = 1024;

/// The most bytes of live messages held for one resuming stream of one connection.
const MAX_HELD_BYTES: usize = 1 << 20;

/// Appends a frame to a connection's queue; closes it as a slow consumer on overflow. The task
/// to wake (its queue was empty) goes to `wake`, woken once the shard lock is released so it
/// does not run into the lock still held by the delivery.
fn push(c: &mut Conn, frame: Bytes, max: usize, wake: &mut Vec<Waker>) -> bool {
    if c.closing.is_some() {
        return false;
    }
    if c.queued as usize + frame.len() > max {
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
    c.queued = c.queued.saturating_add(frame.len() as u32);
    c.outbox.push(frame);
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

/// `n` in 32 bits, saturated.
fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn close(c: &mut Conn, closing: Closing) {
    c.closing = Some(closing);
    c.outbox = Vec::new();
    c.queued = 0;
    if let Some(w) = c.waker.take() {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use herald_core::registry::{InterestChange, Liveness, MemoryRegistry, RegistryError};
    use std::time::{Duration, Instant};

    fn p(s: &str) -> ProjectId {
        ProjectId::new(s).expect("project")
    }
    fn u(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }
    fn g(s: &str) -> GroupId {
        GroupId::new(s).expect("group")
    }

    fn cfg() -> HubConfig {
        HubConfig {
            shards: 4,
            max_queued_bytes: 4096,
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(1),
            token_leeway: Duration::ZERO,
            max_pending_interest: 1000,
            registry_batch: Duration::ZERO,
            registration_timeout: Duration::from_secs(5),
            write_window: Duration::ZERO,
        }
    }

    fn hub_with(cfg: HubConfig, registry: Option<Arc<dyn Registry>>) -> Arc<Hub> {
        Hub::new(EdgeId::new("e1").expect("edge"), cfg, registry)
    }

    fn conn(project: &str, user: &str, groups: &[&str]) -> NewConn {
        NewConn {
            project: p(project),
            user: u(user),
            groups: groups.iter().map(|x| g(x)).collect(),
            remote: SocketAddr::from(([127, 0, 0, 1], 4000)),
            expires_unix: u64::MAX,
            wire: Wire::Native,
            deflate: false,
            framing: Default::default(),
            keep_alive_secs: 0,
            heart_beat_secs: 0,
            replaces: None,
            resume: Vec::new(),
        }
    }

    async fn add(hub: &Hub, project: &str, user: &str, groups: &[&str]) -> ConnHandle {
        hub.insert(conn(project, user, groups), 0)
            .await
            .expect("no per-user cap")
    }

    fn env(project: &str, kind: TargetKind, name: &str, payload: &str) -> Envelope {
        Envelope {
            version: 1,
            project: project.into(),
            kind: kind as i32,
            name: name.into(),
            payload: payload.as_bytes().to_vec(),
            message_id: "m".into(),
            ..Default::default()
        }
    }

    /// What the connection task would get now: its frames, or its close.
    fn take(hub: &Hub, h: ConnHandle) -> Result<Vec<Bytes>, Closing> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut q = VecDeque::new();
        match hub.poll_outgoing(h, &mut cx, &mut q, true) {
            Poll::Ready(Outgoing::Frames) => Ok(q.into()),
            Poll::Ready(Outgoing::Close(c)) => Err(c),
            Poll::Pending => Ok(Vec::new()),
        }
    }

    /// The payloads of the `msg` frames queued for `h`.
    fn msgs(hub: &Hub, h: ConnHandle) -> Vec<String> {
        take(hub, h)
            .expect("open")
            .iter()
            .map(|f| {
                let header = match f[1] {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                let text = String::from_utf8_lossy(&f[header..]).into_owned();
                let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                v["data"].to_string()
            })
            .collect()
    }

    fn closed_with(hub: &Hub, h: ConnHandle) -> Option<CloseCode> {
        take(hub, h).err().map(|c| c.code)
    }

    /// A registry that never answers a write (an unreachable Redis behind a hung connection).
    struct Unanswering {
        /// Whether it says so (a breaker open after timeouts) or hangs silently.
        degraded: bool,
    }

    #[async_trait]
    impl Registry for Unanswering {
        fn degraded(&self) -> Option<String> {
            self.degraded.then(|| "redis: timed out".into())
        }
        async fn heartbeat(&self, _: &EdgeId) -> Result<Liveness, RegistryError> {
            std::future::pending().await
        }
        async fn update(&self, _: &EdgeId, _: &[InterestChange]) -> Result<(), RegistryError> {
            std::future::pending().await
        }
        async fn resync(&self, _: &EdgeId, _: &[InterestKey]) -> Result<(), RegistryError> {
            std::future::pending().await
        }
        async fn deregister(&self, _: &EdgeId) -> Result<(), RegistryError> {
            std::future::pending().await
        }
        async fn edges_for(&self, _: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
            std::future::pending().await
        }
        async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
            std::future::pending().await
        }
        async fn claim_idempotency_key(
            &self,
            _: &ProjectId,
            _: &str,
            _: Duration,
        ) -> Result<bool, RegistryError> {
            std::future::pending().await
        }
        async fn release_idempotency_key(
            &self,
            _: &ProjectId,
            _: &str,
        ) -> Result<(), RegistryError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn connect_and_join_are_answered_at_the_registration_deadline() {
        let hub = hub_with(
            HubConfig {
                registration_timeout: Duration::from_millis(200),
                ..cfg()
            },
            Some(Arc::new(Unanswering { degraded: false })),
        );
        let started = Instant::now();
        let h = tokio::time::timeout(Duration::from_secs(5), add(&hub, "a", "alice", &["news"]))
            .await
            .expect("the connect waits no longer than its deadline");
        assert!(started.elapsed() >= Duration::from_millis(200));
        let started = Instant::now();
        let joined = tokio::time::timeout(Duration::from_secs(5), hub.join(h, g("sport"), 10))
            .await
            .expect("the join waits no longer than its deadline");
        assert_eq!(joined, JoinOutcome::Joined);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // The connection is served meanwhile: local delivery needs no registry.
        hub.deliver(&env("a", TargetKind::Group, "sport", "1"));
        assert_eq!(msgs(&hub, h), ["1"]);
        assert!(hub.interest().pending() > 0, "the writes still wait");
    }

    #[tokio::test]
    async fn a_registry_known_degraded_is_not_waited_for() {
        let hub = hub_with(
            HubConfig {
                registration_timeout: Duration::from_secs(60),
                ..cfg()
            },
            Some(Arc::new(Unanswering { degraded: true })),
        );
        let h = tokio::time::timeout(Duration::from_secs(10), add(&hub, "a", "alice", &["news"]))
            .await
            .expect("the connect is answered at once, not at its 60 s deadline");
        let joined = tokio::time::timeout(Duration::from_secs(10), hub.join(h, g("sport"), 10))
            .await
            .expect("so is the join");
        assert_eq!(joined, JoinOutcome::Joined);
        assert!(hub.interest().pending() > 0, "the writes still wait");
    }

    #[tokio::test]
    async fn connect_waits_for_the_registry_to_hold_the_user() {
        let registry = Arc::new(MemoryRegistry::new());
        let hub = hub_with(cfg(), Some(registry.clone()));
        add(&hub, "a", "alice", &["news"]).await;
        let e1 = EdgeId::new("e1").expect("edge");
        assert_eq!(
            registry
                .edges_for(&InterestKey::User(p("a"), u("alice")))
                .await
                .expect("lookup"),
            vec![e1.clone()]
        );
        assert_eq!(
            registry
                .edges_for(&InterestKey::Group(p("a"), g("news")))
                .await
                .expect("lookup"),
            vec![e1]
        );
    }

    #[tokio::test]
    async fn delivers_by_broadcast_group_and_user_within_the_project_only() {
        let hub = hub_with(cfg(), None);
        let alice1 = add(&hub, "a", "alice", &["news"]).await;
        let alice2 = add(&hub, "a", "alice", &[]).await;
        let bob = add(&hub, "a", "bob", &["news", "sport"]).await;
        // Another project with the same user and group names.
        let other = add(&hub, "b", "alice", &["news"]).await;

        hub.deliver(&env("a", TargetKind::Broadcast, "", "1"));
        hub.deliver(&env("a", TargetKind::Group, "news", "2"));
        hub.deliver(&env("a", TargetKind::User, "alice", "3"));
        hub.deliver(&env("a", TargetKind::Group, "sport", "4"));
        hub.deliver(&env("a", TargetKind::User, "nobody", "5"));
        hub.deliver(&env("a", TargetKind::Group, "none", "6"));
        hub.deliver(&env("a", TargetKind::Unspecified, "alice", "7"));
        hub.deliver(&env("b", TargetKind::Group, "news", "8"));

        assert_eq!(msgs(&hub, alice1), ["1", "2", "3"]);
        assert_eq!(msgs(&hub, alice2), ["1", "3"]);
        assert_eq!(msgs(&hub, bob), ["1", "2", "4"]);
        assert_eq!(msgs(&hub, other), ["8"]);
        assert!(msgs(&hub, alice1).is_empty(), "taken once");
    }

    #[tokio::test]
    async fn one_encoded_frame_is_shared_by_every_recipient() {
        let hub = hub_with(cfg(), None);
        let hs = [
            add(&hub, "a", "u1", &["g"]).await,
            add(&hub, "a", "u2", &["g"]).await,
        ];
        hub.deliver(&env("a", TargetKind::Group, "g", "1"));
        let a = take(&hub, hs[0]).expect("open");
        let b = take(&hub, hs[1]).expect("open");
        assert_eq!(a[0].as_ptr(), b[0].as_ptr(), "the frame was encoded twice");
    }

    #[tokio::test]
    async fn mqtt_connections_take_the_form_their_codec_chose() {
        use crate::codec::mqtt::delivery::{is_template, qos0_frame, template};
        let hub = hub_with(cfg(), None);
        let mut hs = Vec::new();
        for user in ["t", "v3a", "v3b", "v5"] {
            let c = NewConn {
                wire: Wire::Mqtt,
                deflate: false,
                framing: Default::default(),
                ..conn("a", user, &["g"])
            };
            hs.push(hub.insert(c, 0).await.expect("no cap"));
        }
        hub.set_form(hs[1], Form::MqttV3Qos0);
        hub.set_form(hs[2], Form::MqttV3Qos0);
        hub.set_form(hs[3], Form::MqttV5Qos0);
        let e = env("a", TargetKind::Group, "g", "1");
        hub.deliver(&e);
        let got: Vec<Bytes> = hs
            .iter()
            .map(|h| take(&hub, *h).expect("open").remove(0))
            .collect();
        assert!(is_template(&got[0]), "the template, rendered by the codec");
        let t = template(&e);
        assert_eq!(got[1], qos0_frame(&t, false));
        assert_eq!(got[1].as_ptr(), got[2].as_ptr(), "one frame for both");
        assert_eq!(got[3], qos0_frame(&t, true));
        // Back to the template: later messages come as templates again.
        hub.set_form(hs[1], Form::Mqtt);
        hub.deliver(&e);
        assert!(is_template(&take(&hub, hs[1]).expect("open")[0]));
    }

    #[tokio::test]
    async fn a_slow_consumer_is_closed_and_others_go_on() {
        let hub = hub_with(cfg(), None);
        let slow = add(&hub, "a", "slow", &["g"]).await;
        let fast = add(&hub, "a", "fast", &["g"]).await;
        let payload = "x".repeat(1000);
        let json = format!("\"{payload}\"");
        for _ in 0..10 {
            hub.deliver(&env("a", TargetKind::Group, "g", &json));
            assert_eq!(msgs(&hub, fast).len(), 1);
        }
        assert_eq!(closed_with(&hub, slow), Some(CloseCode::SlowConsumer));
        hub.remove(slow);
        hub.deliver(&env("a", TargetKind::Group, "g", "1"));
        assert_eq!(msgs(&hub, fast), ["1"]);
    }

    #[tokio::test]
    async fn the_per_user_cap_counts_devices_on_this_edge() {
        let hub = hub_with(cfg(), None);
        let first = hub
            .insert(conn("a", "alice", &[]), 2)
            .await
            .expect("1 of 2");
        hub.insert(conn("a", "alice", &[]), 2)
            .await
            .expect("2 of 2");
        assert!(hub.insert(conn("a", "alice", &[]), 2).await.is_none());
        assert!(hub.insert(conn("b", "alice", &[]), 2).await.is_some());
        assert!(hub.insert(conn("a", "bob", &[]), 2).await.is_some());
        hub.remove(first);
        assert!(hub.insert(conn("a", "alice", &[]), 2).await.is_some());
        assert_eq!(hub.len(), 4);
    }

    #[tokio::test]
    async fn a_takeover_replaces_rather_than_adds_under_the_per_user_cap() {
        let hub = hub_with(cfg(), None);
        let first = hub
            .insert(conn("a", "alice", &[]), 1)
            .await
            .expect("1 of 1");
        let taking_over = |r: ConnHandle| NewConn {
            replaces: Some(r),
            ..conn("a", "alice", &[])
        };
        let second = hub
            .insert(taking_over(first), 1)
            .await
            .expect("replaces the first");
        assert!(
            hub.insert(conn("a", "alice", &[]), 1).await.is_none(),
            "a third device without a takeover"
        );
        // The replaced connection gone (closed by the takeover), a stale handle excludes nothing.
        hub.remove(first);
        assert!(hub.insert(taking_over(first), 1).await.is_none());
        // Another user's connection excludes nothing from this user's count.
        let bob = add(&hub, "a", "bob", &[]).await;
        assert!(hub.insert(taking_over(bob), 1).await.is_none());
        assert!(hub.insert(taking_over(second), 1).await.is_some());
    }

    #[tokio::test]
    async fn join_and_leave_move_delivery_and_interest() {
        let registry = Arc::new(MemoryRegistry::new());
        let hub = hub_with(cfg(), Some(registry.clone()));
        let key = InterestKey::Group(p("a"), g("news"));
        let h = add(&hub, "a", "alice", &[]).await;
        assert_eq!(hub.join(h, g("news"), 2).await, JoinOutcome::Joined);
        assert_eq!(
            hub.join(h, g("news"), 2).await,
            JoinOutcome::Joined,
            "again"
        );
        assert_eq!(hub.join(h, g("sport"), 2).await, JoinOutcome::Joined);
        assert_eq!(hub.join(h, g("more"), 2).await, JoinOutcome::TooMany);
        assert_eq!(registry.edges_for(&key).await.expect("lookup").len(), 1);
        assert!(hub.holds(&key));
        hub.deliver(&env("a", TargetKind::Group, "news", "1"));
        assert!(hub.leave(h, &g("news")));
        assert!(!hub.leave(h, &g("news")), "not a member any more");
        hub.deliver(&env("a", TargetKind::Group, "news", "2"));
        assert_eq!(msgs(&hub, h), ["1"]);
        assert!(!hub.holds(&key));
        // The removal is not awaited: wait for it.
        let until = Instant::now() + Duration::from_secs(5);
        while !registry.edges_for(&key).await.expect("lookup").is_empty() {
            assert!(Instant::now() < until, "group still registered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The last device leaving takes the user's interest with it.
        let user = InterestKey::User(p("a"), u("alice"));
        assert!(hub.holds(&user));
        hub.remove(h);
        assert!(!hub.holds(&user));
        assert!(hub.is_empty());
        assert_eq!(
            hub.join(h, g("x"), 2).await,
            JoinOutcome::Joined,
            "gone: no-op"
        );
    }

    #[tokio::test]
    async fn ticks_ping_idle_connections_then_close_silent_and_expired_ones() {
        let hub = hub_with(cfg(), None);
        let silent = add(&hub, "a", "silent", &[]).await;
        let alive = add(&hub, "a", "alive", &[]).await;
        let expiring = hub
            .insert(
                NewConn {
                    expires_unix: unix_now().as_secs(),
                    ..conn("a", "expiring", &[])
                },
                0,
            )
            .await
            .expect("inserted");
        hub.tick();
        assert_eq!(closed_with(&hub, expiring), Some(CloseCode::TokenExpired));
        // A ping goes after the ping interval (1 s); the silent peer is closed a pong timeout
        // (1 s) later, while the one that answers stays.
        let until = Instant::now() + Duration::from_secs(10);
        let mut pinged = false;
        loop {
            hub.tick();
            hub.touch(alive);
            if let Ok(frames) = take(&hub, silent) {
                if frames.iter().any(|f| f[..] == ping_frame()[..]) {
                    pinged = true;
                }
            } else {
                break;
            }
            assert!(Instant::now() < until, "never closed (pinged: {pinged})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(pinged, "closed before any ping");
        assert_eq!(closed_with(&hub, silent), Some(CloseCode::PingTimeout));
        assert!(take(&hub, alive).is_ok());
        // A refreshed token moves the expiry.
        hub.set_expiry(alive, unix_now().as_secs());
        hub.tick();
        assert_eq!(closed_with(&hub, alive), Some(CloseCode::TokenExpired));
    }

    /// Whether `h` is closing, without taking its frames (taking hands a queued ping over).
    fn closing_without_taking(hub: &Hub, h: ConnHandle) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            hub.poll_outgoing(h, &mut cx, &mut VecDeque::new(), false),
            Poll::Ready(Outgoing::Close(_))
        )
    }

    /// A waker that counts its wakes.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Registers a counting waker as the connection's task would, with nothing queued.
    fn wait_for_frames(hub: &Hub, h: ConnHandle) -> Arc<Counting> {
        let count = Arc::new(Counting(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut into = VecDeque::new();
        assert!(hub.poll_outgoing(h, &mut cx, &mut into, true).is_pending());
        count
    }

    #[tokio::test]
    async fn without_a_write_window_a_delivery_wakes_the_task_at_once() {
        let hub = hub_with(cfg(), None);
        let h = add(&hub, "a", "alice", &["news"]).await;
        let wakes = wait_for_frames(&hub, h);
        hub.deliver(&env("a", TargetKind::Group, "news", "1"));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn deliveries_within_a_write_window_wake_the_task_once_at_its_end() {
        // A window long enough that the test's own steps fit in it on a loaded machine.
        let window = Duration::from_secs(2);
        let hub = hub_with(
            HubConfig {
                write_window: window,
                ..cfg()
            },
            None,
        );
        let ending = tokio::spawn({
            let hub = hub.clone();
            async move { hub.run_write_window().await }
        });
        let h = add(&hub, "a", "alice", &["news"]).await;
        let other = add(&hub, "a", "bob", &["news"]).await;
        let wakes = wait_for_frames(&hub, h);
        let started = Instant::now();
        hub.deliver(&env("a", TargetKind::Group, "news", "1"));
        hub.deliver(&env("a", TargetKind::Group, "news", "2"));
        let woken_early = wakes.0.load(Ordering::SeqCst);
        let early_at = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(30);
        while wakes.0.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if early_at < window {
            assert_eq!(woken_early, 0, "woken before the window ended");
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken once");
        assert!(started.elapsed() >= window);
        // Both messages, in order, in one batch; the other member got them too.
        assert_eq!(msgs(&hub, h), ["1", "2"]);
        assert_eq!(msgs(&hub, other), ["1", "2"]);
        // A close is not deferred: the task learns it on its next poll, and closes wake at once.
        let wakes = wait_for_frames(&hub, h);
        assert!(hub.close(
            h,
            Closing {
                code: CloseCode::DisconnectedByOperator,
                reconnect_after_ms: 0
            }
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        ending.abort();
    }

    #[tokio::test]
    async fn a_pong_deadline_starts_when_the_writer_takes_the_ping() {
        // Ping interval 1 s, pong timeout 1 s, one second per tick.
        let hub = hub_with(cfg(), None);
        let taken = add(&hub, "a", "taken", &[]).await;
        let stuck = add(&hub, "a", "stuck", &[]).await;
        hub.tick(); // both pinged; the pings wait in the outboxes
        hub.tick(); // a pong timeout later: not judged, the pings never left
        assert!(!closing_without_taking(&hub, taken));
        assert!(!closing_without_taking(&hub, stuck));
        let frames = take(&hub, taken).expect("open");
        assert!(frames.iter().any(|f| f[..] == ping_frame()[..]));
        hub.tick(); // the taken ping's pong timeout; the stuck one's interval on top
        assert_eq!(closed_with(&hub, taken), Some(CloseCode::PingTimeout));
        assert!(
            closing_without_taking(&hub, stuck),
            "a writer stuck that long is a dead peer"
        );
    }

    #[tokio::test]
    async fn listings_come_in_number_order_from_a_cursor() {
        let hub = hub_with(cfg(), None);
        let mut handles = Vec::new();
        for i in 0..10 {
            handles.push(add(&hub, "a", "alice", &["news"]).await);
            // Another user in the group, and another project's alice: never listed for alice.
            add(&hub, "a", &format!("bob{i}"), &["news"]).await;
            add(&hub, "b", "alice", &[]).await;
        }
        let numbers: Vec<u64> = handles.iter().map(|h| h.number).collect();
        let page = |after: Option<ConnectionId>, limit| {
            let ControlReply::List(l) = hub.control(&ControlRequest::List {
                project: p("a"),
                of: ListOf::User(u("alice")),
                after,
                limit,
            }) else {
                panic!("not a list");
            };
            l.into_iter()
                .map(|c| c.id.parse::<ConnectionId>().expect("id").number())
                .collect::<Vec<u64>>()
        };
        assert_eq!(page(None, None), numbers);
        assert_eq!(page(None, Some(4)), numbers[..4]);
        let at = |i: usize| Some(hub.connection_id(numbers[i]));
        assert_eq!(page(at(3), Some(4)), numbers[4..8]);
        assert_eq!(page(at(7), Some(4)), numbers[8..]);
        assert!(page(at(9), Some(4)).is_empty());
        // A cursor on an edge that sorts before this one leaves everything, after it nothing.
        let on = |edge: &str| {
            Some(ConnectionId::new(
                EdgeId::new(edge).expect("edge"),
                u64::MAX,
            ))
        };
        assert_eq!(page(on("e0"), None), numbers);
        assert!(page(on("e2"), None).is_empty());
        // A connection that left is not listed.
        hub.remove(handles[0]);
        assert_eq!(page(None, Some(2)), numbers[1..3]);
    }

    #[tokio::test]
    async fn presence_counts_each_user_once_in_id_order_from_a_cursor() {
        let hub = hub_with(cfg(), None);
        let mut alice = Vec::new();
        for _ in 0..3 {
            alice.push(add(&hub, "a", "alice", &["news"]).await);
        }
        for i in 0..5 {
            add(&hub, "a", &format!("bob{i}"), &["news", "sport"]).await;
            // Not in the group, or another project's: never present.
            add(&hub, "a", &format!("carol{i}"), &["sport"]).await;
            add(&hub, "b", &format!("bob{i}"), &["news"]).await;
        }
        let presence = |after: Option<&str>, limit| {
            let ControlReply::Presence(p) = hub.control(&ControlRequest::Presence {
                project: p("a"),
                group: g("news"),
                after: after.map(u),
                limit,
            }) else {
                panic!("not a presence");
            };
            p
        };
        let all = presence(None, None);
        assert_eq!((all.connections, all.users_total), (8, 6));
        let names = |p: &Presence| p.users.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&all),
            ["alice", "bob0", "bob1", "bob2", "bob3", "bob4"]
        );
        assert_eq!(all.users[0], ("alice".to_string(), 3));
        assert!(all.users[1..].iter().all(|(_, n)| *n == 1));
        let page = presence(Some("alice"), Some(2));
        assert_eq!(names(&page), ["bob0", "bob1"]);
        assert_eq!((page.connections, page.users_total), (8, 6));
        assert!(presence(Some("bob4"), Some(2)).users.is_empty());
        // A connection that left is not counted; the last one takes the user with it.
        hub.remove(alice[0]);
        assert_eq!(presence(None, Some(1)).users, [("alice".to_string(), 2)]);
        hub.remove(alice[1]);
        hub.remove(alice[2]);
        let left = presence(None, None);
        assert_eq!((left.connections, left.users_total), (5, 5));
        assert_eq!(left.users[0].0, "bob0");
    }

    #[tokio::test]
    async fn control_counts_lists_and_disconnects() {
        let hub = hub_with(cfg(), None);
        let a1 = add(&hub, "a", "alice", &["news"]).await;
        let a2 = add(&hub, "a", "alice", &[]).await;
        let b = add(&hub, "a", "bob", &["news"]).await;
        let other = add(&hub, "b", "alice", &["news"]).await;

        let ControlReply::Count(all) = hub.control(&ControlRequest::Count { project: None }) else {
            panic!("not a count");
        };
        assert_eq!(all, HashMap::from([("a".into(), 3), ("b".into(), 1)]));
        let ControlReply::Count(one) = hub.control(&ControlRequest::Count {
            project: Some(p("b")),
        }) else {
            panic!("not a count");
        };
        assert_eq!(one, HashMap::from([("b".into(), 1)]));

        // Stats: connections, one message per envelope, one delivery per recipient.
        hub.deliver(&env("a", TargetKind::Group, "news", "{}"));
        hub.deliver(&env("a", TargetKind::User, "alice", "{}"));
        hub.deliver(&env("a", TargetKind::Broadcast, "", "{}"));
        hub.deliver(&env("b", TargetKind::User, "nobody", "{}"));
        let ControlReply::Stats(stats) = hub.control(&ControlRequest::Stats) else {
            panic!("not stats");
        };
        let stat = |connections, messages, deliveries| ProjectStats {
            connections,
            messages,
            deliveries,
        };
        assert_eq!(
            stats,
            HashMap::from([
                ("a".into(), stat(3, 3, 2 + 2 + 3)),
                ("b".into(), stat(1, 1, 0))
            ])
        );

        let list = |of| match hub.control(&ControlRequest::List {
            project: p("a"),
            of,
            after: None,
            limit: None,
        }) {
            ControlReply::List(mut l) => {
                l.sort_by(|x, y| x.id.cmp(&y.id));
                l
            }
            _ => panic!("not a list"),
        };
        let news = list(ListOf::Group(g("news")));
        let ids: Vec<&str> = news.iter().map(|c| c.id.as_str()).collect();
        let mut want = [
            hub.connection_id(a1.number).to_string(),
            hub.connection_id(b.number).to_string(),
        ];
        want.sort();
        assert_eq!(ids, want);
        assert!(news.iter().all(|c| c.edge == "e1" && c.groups == ["news"]));
        assert_eq!(list(ListOf::User(u("alice"))).len(), 2);
        assert!(list(ListOf::User(u("nobody"))).is_empty());

        let kick = |who| {
            hub.control(&ControlRequest::Disconnect {
                project: p("a"),
                who,
                reconnect_after_ms: 0,
            })
        };
        let by_id = |h: ConnHandle| DisconnectWho::Connection(hub.connection_id(h.number));
        // Another project's connection and another edge's id close nothing.
        for who in [
            by_id(other),
            DisconnectWho::Connection(
                format!("e2-{}", a2.number)
                    .parse()
                    .expect("a connection id"),
            ),
        ] {
            assert!(matches!(kick(who), ControlReply::Disconnected(0)));
        }
        assert!(matches!(kick(by_id(a2)), ControlReply::Disconnected(1)));
        assert_eq!(
            closed_with(&hub, a2),
            Some(CloseCode::DisconnectedByOperator)
        );
        assert!(matches!(
            kick(DisconnectWho::User(u("alice"))),
            ControlReply::Disconnected(1)
        ));
        assert_eq!(
            closed_with(&hub, a1),
            Some(CloseCode::DisconnectedByOperator)
        );
        assert!(take(&hub, b).is_ok());
        assert!(take(&hub, other).is_ok());
    }

    #[tokio::test]
    async fn close_all_closes_every_connection_and_those_that_come_later() {
        let hub = hub_with(cfg(), None);
        let before = add(&hub, "a", "u", &[]).await;
        assert_eq!(hub.close_all(CloseCode::GoingAway, 0), 1);
        let after = add(&hub, "a", "v", &[]).await;
        for h in [before, after] {
            assert_eq!(closed_with(&hub, h), Some(CloseCode::GoingAway));
        }
    }

    #[tokio::test]
    async fn broadcasts_reach_exactly_the_live_connections_of_their_project() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // One shard: project "big" fills it (one pass over the slab), the others are sparse (their
        // index); connections leave in random order, so list positions move.
        for shards in [1, 3] {
            let hub = hub_with(HubConfig { shards, ..cfg() }, None);
            let mut live: Vec<(String, ConnHandle)> = Vec::new();
            for n in 0..300 {
                let project = match n % 10 {
                    0 => "small",
                    1 => "tiny",
                    _ => "big",
                };
                live.push((
                    project.into(),
                    add(&hub, project, &format!("u{n}"), &[]).await,
                ));
            }
            for round in 0..4 {
                for _ in 0..50 {
                    let (_, h) = live.swap_remove(rng.random_range(0..live.len()));
                    hub.remove(h);
                }
                for project in ["small", "tiny", "big", "none"] {
                    hub.deliver(&env(project, TargetKind::Broadcast, "", &round.to_string()));
                }
                for (project, h) in &live {
                    assert_eq!(msgs(&hub, *h).len(), 1, "{project} on {shards} shards");
                }
                let ControlReply::Count(counts) =
                    hub.control(&ControlRequest::Count { project: None })
                else {
                    panic!("not a count");
                };
                for project in ["small", "tiny", "big"] {
                    let want = live.iter().filter(|(p, _)| p == project).count() as u64;
                    assert_eq!(counts.get(project).copied().unwrap_or(0), want, "{project}");
                }
                assert_eq!(hub.len(), live.len());
            }
        }
    }

    #[tokio::test]
    async fn a_group_message_locks_only_the_shards_holding_members() {
        let hub = hub_with(HubConfig { shards: 8, ..cfg() }, None);
        let h = add(&hub, "a", "alice", &["news"]).await;
        let home = h.shard as usize;
        let elsewhere = (home + 1) % 8;
        // Another shard is held locked meanwhile: delivery must not wait for it.
        let guard = hub.shards[elsewhere].lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let delivering = hub.clone();
        std::thread::spawn(move || {
            delivering.deliver(&env("a", TargetKind::Group, "news", "1"));
            delivering.deliver(&env("a", TargetKind::User, "alice", "2"));
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(Duration::from_secs(10));
        drop(guard);
        assert!(done.is_ok(), "delivery waited for a shard without members");
        assert_eq!(msgs(&hub, h), ["1", "2"]);
    }

    /// Every connection holds one `Conn` in its shard's slab, and an entry in the shard's user
    /// and group indexes (a name and its slots).
    #[test]
    fn connection_state_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 160, "Conn grew to {size} bytes");
        let slots = std::mem::size_of::<Slots>();
        assert!(slots <= 16, "an index entry's slots grew to {slots} bytes");
    }
}
