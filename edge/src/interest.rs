//! This edge's interest in users and groups, and which hub shards hold each group, mirrored into
//! the registry in order and in batches: a key is added when its first local connection needs it
//! and removed when its last one leaves. A join is acknowledged to the client only once the
//! registry holds it (or its deadline passed), so a message published after the ack is not missed.
//!
//! The queue of changes waiting for the registry is bounded (`edge.max_pending_interest`): on
//! overflow the queued changes are dropped and replaced by one rewrite of the whole interest
//! (a resync, taken from the hub when the writer reaches it), which holds every dropped change.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_core::backoff::backoff;
use herald_core::ids::{EdgeId, GroupId, ProjectId};
use herald_core::registry::{InterestChange, InterestKey, Registry};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, oneshot};

/// Lists every user key the hub holds (for a resync).
pub type UserKeys = Box<dyn Fn() -> Vec<InterestKey> + Send + Sync>;

/// This edge's interest: which shards hold each group, and the writes the registry still needs.
///
/// User keys need no count here: all devices of a user live in one hub shard, whose index tells
/// when the first arrives and the last leaves; the shard reports those changes under its lock.
/// Group members spread over shards: each group keeps the set of shards holding a member, which
/// also tells group delivery which shards to lock.
pub struct Interest {
    state: Arc<State>,
}

struct State {
    groups: RwLock<Groups>,
    /// `None` when no registry is written (a single node, whose hub is the registry).
    queue: Option<Queue>,
}

/// Changes waiting for the writer task.
struct Queue {
    /// The registry written: asked whether it is degraded.
    registry: Arc<dyn Registry>,
    pending: Mutex<Pending>,
    wake: Notify,
    max_pending: usize,
}

#[derive(Default)]
struct Pending {
    changes: Vec<InterestChange>,
    waiters: Vec<oneshot::Sender<()>>,
    /// Write the whole interest before anything else; `changes` then stays empty, since the
    /// snapshot, taken after they were queued, holds them.
    resync: bool,
    /// The interest is gone: the writer stops.
    closed: bool,
}

impl Pending {
    fn has_work(&self) -> bool {
        self.resync || !self.changes.is_empty() || !self.waiters.is_empty()
    }
}

/// Resolves once the registry holds everything queued before it; at once without a registry.
#[must_use = "a registration is only known done once awaited"]
pub struct Registered(Option<oneshot::Receiver<()>>);

impl Future for Registered {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            None => Poll::Ready(()),
            // A writer that stopped (the edge is gone) has nothing more to wait for.
            Some(rx) => Pin::new(rx).poll(cx).map(|_| ()),
        }
    }
}

/// The shards holding members of one group, as a bit set (one bit per shard).
trait ShardMask {
    fn empty(words: usize) -> Self;
    fn words(&self) -> &[u64];
    fn words_mut(&mut self) -> &mut [u64];
}

impl ShardMask for u64 {
    fn empty(_: usize) -> Self {
        0
    }
    fn words(&self) -> &[u64] {
        std::slice::from_ref(self)
    }
    fn words_mut(&mut self) -> &mut [u64] {
        std::slice::from_mut(self)
    }
}

impl ShardMask for Box<[u64]> {
    fn empty(words: usize) -> Self {
        vec![0; words].into_boxed_slice()
    }
    fn words(&self) -> &[u64] {
        self
    }
    fn words_mut(&mut self) -> &mut [u64] {
        self
    }
}

/// Every group this edge holds, each with the shards holding its members.
struct GroupShards<M> {
    map: HashMap<ProjectId, HashMap<GroupId, M>>,
    words: usize,
}

impl<M: ShardMask> GroupShards<M> {
    fn new(shards: usize) -> Self {
        Self {
            map: HashMap::new(),
            words: shards.div_ceil(64),
        }
    }

    /// Marks `shard` as holding `group`; returns whether the edge did not hold it before.
    fn enter(&mut self, project: &ProjectId, group: &GroupId, shard: usize) -> bool {
        let inner = match self.map.get_mut(project) {
            Some(inner) => inner,
            None => self.map.entry(project.clone()).or_default(),
        };
        let mask = match inner.get_mut(group) {
            Some(mask) => mask,
            None => inner
                .entry(group.clone())
                .or_insert_with(|| M::empty(self.words)),
        };
        let words = mask.words_mut();
        let was_empty = words.iter().all(|w| *w == 0);
        words[shard / 64] |= 1 << (shard % 64);
        was_empty
    }

    /// Clears `shard` for `group`; returns whether the edge holds it no more.
    fn leave(&mut self, project: &ProjectId, group: &GroupId, shard: usize) -> bool {
        let Some(inner) = self.map.get_mut(project) else {
            return false;
        };
        let Some(mask) = inner.get_mut(group) else {
            return false;
        };
        let words = mask.words_mut();
        words[shard / 64] &= !(1 << (shard % 64));
        if words.iter().any(|w| *w != 0) {
            return false;
        }
        inner.remove(group);
        if inner.is_empty() {
            self.map.remove(project);
        }
        true
    }

    fn shards(&self, project: &str, group: &str) -> ShardSet {
        let mask = self.map.get(project).and_then(|m| m.get(group));
        match mask.map(ShardMask::words) {
            None => ShardSet::default(),
            Some([first, rest @ ..]) => ShardSet {
                first: *first,
                rest: rest.to_vec(),
            },
            Some([]) => ShardSet::default(),
        }
    }

    fn contains(&self, project: &str, group: &str) -> bool {
        self.map.get(project).is_some_and(|m| m.contains_key(group))
    }

    fn keys(&self, out: &mut Vec<InterestKey>) {
        for (project, groups) in &self.map {
            out.extend(
                groups
                    .keys()
                    .map(|g| InterestKey::Group(project.clone(), g.clone())),
            );
        }
    }
}

/// Up to 64 shards need one word, kept inline in each group's entry; more need a slice each.
enum Groups {
    Small(GroupShards<u64>),
    Large(GroupShards<Box<[u64]>>),
}

macro_rules! with_groups {
    ($groups:expr, $g:ident => $e:expr) => {
        match $groups {
            Groups::Small($g) => $e,
            Groups::Large($g) => $e,
        }
    };
}

/// A set of hub shards; no allocation up to 64 shards.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShardSet {
    first: u64,
    rest: Vec<u64>,
}

impl ShardSet {
    /// The shards, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.first)
            .chain(self.rest.iter().copied())
            .enumerate()
            .flat_map(|(w, mut bits)| {
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(w * 64 + b)
                })
            })
    }

    /// Whether no shard is in the set.
    pub fn is_empty(&self) -> bool {
        self.first == 0 && self.rest.iter().all(|w| *w == 0)
    }
}

impl Interest {
    /// The interest of a hub with `shards` shards whose edge writes no registry: a single node,
    /// where the hub itself answers the router's lookups ([`crate::local::LocalRegistry`]).
    pub fn local(shards: usize) -> Self {
        Self {
            state: Arc::new(State {
                groups: RwLock::new(Groups::new(shards)),
                queue: None,
            }),
        }
    }

    /// The interest of a hub with `shards` shards, mirrored into `registry` by a writer task
    /// (started here, on the current Tokio runtime). At most `max_pending` changes wait for the
    /// registry; past that they are replaced by a resync. Writes start at most once per
    /// `batch_interval` (a change arriving after a quiet spell is written at once; under a
    /// connect storm each write carries every change of the interval). `user_keys` lists the
    /// hub's users.
    pub fn start(
        edge: EdgeId,
        registry: Arc<dyn Registry>,
        shards: usize,
        max_pending: usize,
        batch_interval: Duration,
        user_keys: UserKeys,
    ) -> Self {
        let state = Arc::new(State {
            groups: RwLock::new(Groups::new(shards)),
            queue: Some(Queue {
                registry: registry.clone(),
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
                max_pending: max_pending.max(1),
            }),
        });
        tokio::spawn(write_loop(
            edge,
            registry,
            state.clone(),
            batch_interval,
            user_keys,
        ));
        Self { state }
    }

    /// Queues a rewrite of the whole interest; resolves once the registry holds it.
    pub fn resync(&self) -> Registered {
        let Some(q) = &self.state.queue else {
            return Registered(None);
        };
        let (done, wait) = oneshot::channel();
        {
            let mut p = q.pending.lock();
            p.resync = true;
            p.changes = Vec::new();
            p.waiters.push(done);
        }
        q.wake.notify_one();
        Registered(Some(wait))
    }

    /// A connection arrived in hub shard `shard`: `user` is its user key when it is the user's
    /// first device on this edge, `groups` the groups of `project` it brings that had no member
    /// in this shard. Resolves once the registry holds the connection's interest, and everything
    /// queued before (a barrier when nothing is new).
    ///
    /// Call it under the shard's lock, which decided `user` and `groups`, so the changes of one
    /// key are queued in the order they happened.
    pub fn add(
        &self,
        shard: usize,
        user: Option<InterestKey>,
        project: &ProjectId,
        groups: &[GroupId],
        members: Vec<InterestKey>,
    ) -> Registered {
        let mut changes = Vec::new();
        changes.extend(user.map(InterestChange::Add));
        changes.extend(members.into_iter().map(InterestChange::Add));
        let mut held = None;
        if !groups.is_empty() {
            let mut g = self.state.groups.write();
            for group in groups {
                if with_groups!(&mut *g, m => m.enter(project, group, shard)) {
                    changes.push(InterestChange::Add(InterestKey::Group(
                        project.clone(),
                        group.clone(),
                    )));
                }
            }
            // Queued under the groups' lock: the registry sees a group's changes in order.
            held = Some(g);
        }
        let registered = self.queue(changes, true);
        drop(held);
        registered
    }

    /// A connection left hub shard `shard` (or a group): `user` is its user key when it was the
    /// user's last device on this edge, `groups` the groups of `project` that have no member left
    /// in this shard. Does not wait. Call it under the shard's lock, like [`add`](Self::add).
    pub fn remove(
        &self,
        shard: usize,
        user: Option<InterestKey>,
        project: &ProjectId,
        groups: &[GroupId],
        members: Vec<InterestKey>,
    ) {
        let mut changes = Vec::new();
        changes.extend(user.map(InterestChange::Remove));
        changes.extend(members.into_iter().map(InterestChange::Remove));
        let mut held = None;
        if !groups.is_empty() {
            let mut g = self.state.groups.write();
            for group in groups {
                if with_groups!(&mut *g, m => m.leave(project, group, shard)) {
                    changes.push(InterestChange::Remove(InterestKey::Group(
                        project.clone(),
                        group.clone(),
                    )));
                }
            }
            held = Some(g);
        }
        if !changes.is_empty() {
            drop(self.queue(changes, false));
        }
        drop(held);
    }

    /// Queues `changes` (and a waiter); past the bound, replaces everything queued by a resync.
    fn queue(&self, changes: Vec<InterestChange>, wait: bool) -> Registered {
        let Some(q) = &self.state.queue else {
            return Registered(None);
        };
        let mut out = Registered(None);
        {
            let mut p = q.pending.lock();
            if !p.resync {
                if p.changes.len() + changes.len() > q.max_pending {
                    metrics::counter!("herald_edge_interest_overflows_total").increment(1);
                    tracing::warn!(
                        pending = p.changes.len(),
                        max = q.max_pending,
                        "interest queue full; the whole interest will be written again"
                    );
                    p.resync = true;
                    p.changes = Vec::new();
                } else if p.changes.is_empty() {
                    p.changes = changes;
                } else {
                    p.changes.extend(changes);
                }
            }
            if wait {
                let (done, rx) = oneshot::channel();
                p.waiters.push(done);
                out = Registered(Some(rx));
            }
        }
        q.wake.notify_one();
        out
    }

    /// Whether the registry written is known degraded (unreachable or timing out: its breaker
    /// is open), so a registration would wait for its deadline in vain.
    pub fn registry_degraded(&self) -> bool {
        self.state
            .queue
            .as_ref()
            .is_some_and(|q| q.registry.degraded().is_some())
    }

    /// Whether the interest is written to a registry (a cluster edge), rather than the hub being
    /// the registry (a single node).
    pub fn writes_registry(&self) -> bool {
        self.state.queue.is_some()
    }

    /// The shards holding a member of `group` of `project`.
    pub fn group_shards(&self, project: &str, group: &str) -> ShardSet {
        with_groups!(&*self.state.groups.read(), g => g.shards(project, group))
    }

    /// Whether this edge holds a member of a group.
    pub fn has_group(&self, key: &InterestKey) -> bool {
        match key {
            InterestKey::Group(p, g) => {
                with_groups!(&*self.state.groups.read(), m => m.contains(p.as_str(), g.as_str()))
            }
            InterestKey::User(..) | InterestKey::Member(..) => false,
        }
    }

    /// How many changes wait for the registry (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.state
            .queue
            .as_ref()
            .map_or(0, |q| q.pending.lock().changes.len())
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        if let Some(q) = &self.state.queue {
            q.pending.lock().closed = true;
            q.wake.notify_one();
        }
    }
}

impl Groups {
    fn new(shards: usize) -> Self {
        if shards <= 64 {
            Groups::Small(GroupShards::new(shards))
        } else {
            Groups::Large(GroupShards::new(shards))
        }
    }
}

impl State {
    /// Every key this edge holds now: users from the hub's index, groups from their shards.
    fn snapshot(&self, user_keys: &UserKeys) -> Vec<InterestKey> {
        let mut keys = user_keys();
        with_groups!(&*self.groups.read(), g => g.keys(&mut keys));
        keys
    }

    fn queue(&self) -> &Queue {
        self.queue
            .as_ref()
            .expect("a writer runs only with a queue")
    }

    /// Waits for work; `None` once the interest is gone.
    async fn next(&self) -> Option<Pending> {
        let q = self.queue();
        loop {
            {
                let mut p = q.pending.lock();
                if p.closed {
                    return None;
                }
                if p.has_work() {
                    return Some(std::mem::take(&mut *p));
                }
            }
            q.wake.notified().await;
        }
    }

    /// Whether a resync was queued since (it holds whatever is being written now).
    fn resync_queued(&self) -> bool {
        let p = self.queue().pending.lock();
        p.resync || p.closed
    }
}

/// Applies batches in order; everything queued while one write is in flight, or within
/// `interval` of the previous write's start, goes in the next.
///
/// The interval bounds the registry's round trips under a connect storm (at 10,000 connects/s
/// and 15 ms, about 67 writes of 150 changes a second instead of one per few connects) at the
/// price of at most one interval of extra wait for a connect or a join; after a quiet spell a
/// change is written at once.
///
/// A resync takes its snapshot when the writer reaches it: every change queued before it is in
/// the hub's state by then, so the snapshot holds it, and changes queued later are written after
/// it. A write retried while a resync is queued behind it is given up: the resync holds it.
async fn write_loop(
    edge: EdgeId,
    registry: Arc<dyn Registry>,
    state: Arc<State>,
    interval: Duration,
    user_keys: UserKeys,
) {
    let mut carried: Vec<oneshot::Sender<()>> = Vec::new();
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = last_start {
            tokio::time::sleep_until(at + interval).await;
        }
        let Some(batch) = state.next().await else {
            break;
        };
        last_start = Some(tokio::time::Instant::now());
        let Pending {
            changes,
            waiters,
            resync,
            ..
        } = batch;
        carried.extend(waiters);
        let mut attempt = 0;
        if resync {
            loop {
                let keys = state.snapshot(&user_keys);
                match registry.resync(&edge, &keys).await {
                    Ok(()) => break,
                    Err(e) => {
                        metrics::counter!("herald_edge_registry_retries_total").increment(1);
                        tracing::warn!(error = %e, keys = keys.len(), "registry resync failed; retrying");
                        tokio::time::sleep(retry_delay(attempt)).await;
                        attempt += 1;
                    }
                }
            }
        }
        let mut superseded = false;
        while !changes.is_empty() {
            match registry.update(&edge, &changes).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("herald_edge_registry_retries_total").increment(1);
                    tracing::warn!(error = %e, pending = changes.len(), "registry update failed; retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                    attempt += 1;
                    if state.resync_queued() {
                        superseded = true;
                        break;
                    }
                }
            }
        }
        if superseded {
            // The waiters are told once the resync that holds their changes is written.
            continue;
        }
        for w in carried.drain(..) {
            let _ = w.send(());
        }
    }
}

fn retry_delay(attempt: u32) -> Duration {
    backoff(attempt, Duration::from_millis(50), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use herald_core::ids::UserId;
    use herald_core::registry::{Liveness, MemoryRegistry, RegistryError};
    use std::time::Instant;
    use tokio::sync::Semaphore;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Update(Vec<InterestChange>),
        Resync(Vec<InterestKey>),
    }

    /// Records every write; each write waits for a permit of `gate` after being recorded.
    struct Recording {
        calls: Mutex<Vec<Call>>,
        gate: Semaphore,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Recording {
        fn new(open: bool) -> Arc<Self> {
            Arc::new(Self {
                calls: Mutex::new(Vec::new()),
                gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
                fail: false.into(),
            })
        }

        async fn pass(&self) -> Result<(), RegistryError> {
            self.gate.acquire().await.expect("open").forget();
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(RegistryError::Unavailable("down".into()));
            }
            Ok(())
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().clone()
        }

        /// Waits until `n` writes were made.
        async fn wait_calls(&self, n: usize) -> Vec<Call> {
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                let calls = self.calls();
                if calls.len() >= n {
                    return calls;
                }
                assert!(
                    Instant::now() < until,
                    "only {} writes: {calls:?}",
                    calls.len()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    #[async_trait]
    impl Registry for Recording {
        async fn heartbeat(&self, _: &EdgeId) -> Result<Liveness, RegistryError> {
            Ok(Liveness::Renewed)
        }
        async fn update(
            &self,
            _: &EdgeId,
            changes: &[InterestChange],
        ) -> Result<(), RegistryError> {
            self.calls.lock().push(Call::Update(changes.to_vec()));
            self.pass().await
        }
        async fn resync(&self, _: &EdgeId, keys: &[InterestKey]) -> Result<(), RegistryError> {
            let mut keys = keys.to_vec();
            keys.sort_by_key(|k| format!("{k:?}"));
            self.calls.lock().push(Call::Resync(keys));
            self.pass().await
        }
        async fn deregister(&self, _: &EdgeId) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn edges_for(&self, _: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
            Ok(Vec::new())
        }
        async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
            Ok(Vec::new())
        }
        async fn claim_idempotency_key(
            &self,
            _: &ProjectId,
            _: &str,
            _: Duration,
        ) -> Result<bool, RegistryError> {
            Ok(true)
        }
        async fn release_idempotency_key(
            &self,
            _: &ProjectId,
            _: &str,
        ) -> Result<(), RegistryError> {
            Ok(())
        }
    }

    fn p() -> ProjectId {
        ProjectId::new("a").expect("project")
    }
    fn user(s: &str) -> InterestKey {
        InterestKey::User(p(), UserId::new(s).expect("user"))
    }
    fn gid(s: &str) -> GroupId {
        GroupId::new(s).expect("group")
    }
    fn group(s: &str) -> InterestKey {
        InterestKey::Group(p(), gid(s))
    }

    fn start(registry: Arc<dyn Registry>, shards: usize, max: usize, users: &[&str]) -> Interest {
        start_every(registry, shards, max, Duration::ZERO, users)
    }

    fn start_every(
        registry: Arc<dyn Registry>,
        shards: usize,
        max: usize,
        interval: Duration,
        users: &[&str],
    ) -> Interest {
        let users: Vec<InterestKey> = users.iter().map(|u| user(u)).collect();
        Interest::start(
            EdgeId::new("e1").expect("edge"),
            registry,
            shards,
            max,
            interval,
            Box::new(move || users.clone()),
        )
    }

    async fn done(r: Registered) {
        tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("registered");
    }

    #[tokio::test]
    async fn changes_queued_during_a_write_go_in_the_next_batch_in_order() {
        let reg = Recording::new(false);
        let i = start(reg.clone(), 4, 100, &[]);
        let first = i.add(0, Some(user("u1")), &p(), &[gid("news")], Vec::new());
        reg.wait_calls(1).await;
        // While the first write is in flight, these wait and then go as one batch, in order.
        let second = i.add(1, Some(user("u2")), &p(), &[gid("news")], Vec::new());
        i.remove(0, Some(user("u1")), &p(), &[gid("news")], Vec::new());
        let third = i.add(2, None, &p(), &[gid("sport")], Vec::new());
        reg.gate.add_permits(1);
        done(first).await;
        let mut second = second;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "acknowledged before its write"
        );
        reg.gate.add_permits(1);
        done(second).await;
        done(third).await;
        assert_eq!(
            reg.calls(),
            vec![
                Call::Update(vec![
                    InterestChange::Add(user("u1")),
                    InterestChange::Add(group("news"))
                ]),
                // news is still held by shard 1: its shard 0 leaving changes nothing.
                Call::Update(vec![
                    InterestChange::Add(user("u2")),
                    InterestChange::Remove(user("u1")),
                    InterestChange::Add(group("sport"))
                ]),
            ]
        );
        assert!(i.has_group(&group("news")));
        assert_eq!(i.group_shards("a", "news").iter().collect::<Vec<_>>(), [1]);
    }

    #[tokio::test]
    async fn writes_start_at_most_once_per_interval() {
        let reg = Recording::new(true);
        let interval = Duration::from_secs(1);
        let i = start_every(reg.clone(), 4, 100, interval, &[]);
        let t0 = Instant::now();
        // After a quiet spell the first change is written at once.
        done(i.add(0, Some(user("u0")), &p(), &[], Vec::new())).await;
        assert_eq!(reg.calls().len(), 1);
        // Changes queued within the interval wait for its end and go as one write.
        let waiting: Vec<Registered> = (1..6)
            .map(|n| i.add(n % 4, Some(user(&format!("u{n}"))), &p(), &[], Vec::new()))
            .collect();
        for w in waiting {
            done(w).await;
        }
        assert!(
            t0.elapsed() >= interval,
            "written before the interval ended"
        );
        let calls = reg.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let Call::Update(changes) = &calls[1] else {
            panic!("not an update: {calls:?}");
        };
        assert_eq!(changes.len(), 5, "{calls:?}");
    }

    #[tokio::test]
    async fn an_overflowing_queue_becomes_one_resync() {
        let reg = Recording::new(false);
        let i = start(reg.clone(), 4, 3, &["u1", "u2"]);
        let first = i.add(0, Some(user("u0")), &p(), &[], Vec::new());
        reg.wait_calls(1).await;
        let mut waiters = Vec::new();
        for n in 0..5 {
            waiters.push(i.add(n % 4, None, &p(), &[gid(&format!("g{n}"))], Vec::new()));
        }
        assert_eq!(
            i.pending(),
            0,
            "the queued changes were dropped for a resync"
        );
        reg.gate.add_permits(2);
        done(first).await;
        for w in waiters {
            done(w).await;
        }
        let calls = reg.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let Call::Resync(keys) = &calls[1] else {
            panic!("not a resync: {calls:?}");
        };
        let mut want: Vec<InterestKey> = (0..5).map(|n| group(&format!("g{n}"))).collect();
        want.extend([user("u1"), user("u2")]);
        want.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(keys, &want);
        // After the resync, changes queue again.
        reg.gate.add_permits(1);
        done(i.add(0, None, &p(), &[gid("late")], Vec::new())).await;
        assert_eq!(
            reg.calls().last(),
            Some(&Call::Update(vec![InterestChange::Add(group("late"))]))
        );
    }

    #[tokio::test]
    async fn a_failing_write_is_given_up_for_a_queued_resync() {
        let reg = Recording::new(true);
        reg.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let i = start(reg.clone(), 4, 2, &[]);
        let first = i.add(0, Some(user("u0")), &p(), &[], Vec::new());
        reg.wait_calls(1).await;
        for n in 0..3 {
            drop(i.add(0, Some(user(&format!("v{n}"))), &p(), &[], Vec::new()));
        }
        // While the registry still fails, the writer turns from the update to the resync.
        let until = Instant::now() + Duration::from_secs(5);
        while !reg.calls().iter().any(|c| matches!(c, Call::Resync(_))) {
            assert!(Instant::now() < until, "update retried: {:?}", reg.calls());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reg.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        done(first).await;
        let Some(Call::Resync(keys)) = reg.calls().last().cloned() else {
            panic!("{:?}", reg.calls());
        };
        assert!(keys.is_empty(), "the users come from the hub: {keys:?}");
    }

    #[tokio::test]
    async fn without_a_registry_nothing_waits() {
        let i = Interest::local(4);
        done(i.add(2, Some(user("u")), &p(), &[gid("news")], Vec::new())).await;
        assert!(i.has_group(&group("news")));
        assert_eq!(i.pending(), 0);
        i.remove(2, Some(user("u")), &p(), &[gid("news")], Vec::new());
        assert!(!i.has_group(&group("news")));
        done(i.resync()).await;
    }

    #[tokio::test]
    async fn group_shards_are_exact_beyond_64_shards() {
        let reg: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        for shards in [4, 64, 65, 200] {
            let i = start(reg.clone(), shards, 100, &[]);
            let all: Vec<usize> = [0, 1, 63, 64, 130, 199]
                .into_iter()
                .filter(|s| *s < shards)
                .collect();
            for s in &all {
                drop(i.add(*s, None, &p(), &[gid("news")], Vec::new()));
            }
            assert_eq!(i.group_shards("a", "news").iter().collect::<Vec<_>>(), all);
            for (n, s) in all.iter().enumerate() {
                assert!(i.has_group(&group("news")), "{shards} shards");
                i.remove(*s, None, &p(), &[gid("news")], Vec::new());
                assert_eq!(
                    i.group_shards("a", "news").iter().collect::<Vec<_>>(),
                    all[n + 1..]
                );
            }
            assert!(!i.has_group(&group("news")));
            assert!(i.group_shards("a", "news").is_empty());
            assert!(i.group_shards("b", "news").is_empty());
        }
    }
}
