//! The registry: which edges hold interest in which users and groups, which edges are alive, and
//! which idempotency keys were seen. The router resolves targets through it; edges write to it.
//!
//! Entries are per (key, edge), never per connection: an edge adds a key when its first local
//! connection needs it and removes it when its last one leaves.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::ids::{EdgeId, GroupId, ProjectId, UserId};
use crate::presence::PresenceSink;
use std::sync::Arc;

/// A key the registry tracks interest in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InterestKey {
    /// The devices of one user.
    User(ProjectId, UserId),
    /// The members of one group.
    Group(ProjectId, GroupId),
    /// One user among a group's members, for presence events (projects with
    /// `presence_events`): the edge holds a connection of the user in the group. Never resolved
    /// as a target; a registry that announces presence keeps, per (group, user), the edges
    /// holding it and finds who arrives first and leaves last cluster-wide.
    Member(ProjectId, GroupId, UserId),
}

/// A change of an edge's interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterestChange {
    /// The edge now holds connections for this key.
    Add(InterestKey),
    /// The edge no longer holds connections for this key.
    Remove(InterestKey),
}

/// What can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry's backend is unreachable or failed.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The edge was alive and stays so.
    Renewed,
    /// The edge was not known alive (first start, expired, or the registry lost its state), or
    /// has not written its interest since the registry began anew: it is alive now, and must
    /// write its whole interest again ([`Registry::resync`]).
    Registered,
    /// The edge was declared dead and its entries are being removed; it may not register until
    /// that is done. Try again shortly, then resync.
    Fenced,
}

/// How a target resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The registry is whole: exactly these live edges hold the key.
    Edges(Vec<EdgeId>),
    /// The registry may be missing entries (it was flushed or restarted and the edges have not
    /// all written their interest again): the target must go to every edge that may hold it,
    /// the project's broadcast path, until the registry is whole again. The text says why.
    Incomplete(String),
}

/// Where interest lies in the cluster.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Marks an edge alive (a heartbeat); the edge is forgotten when heartbeats stop.
    async fn heartbeat(&self, edge: &EdgeId) -> Result<Liveness, RegistryError>;
    /// How often an edge should heartbeat: well within the liveness TTL.
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(5)
    }
    /// Applies a batch of interest changes of one edge; returns once the registry holds them.
    async fn update(&self, edge: &EdgeId, changes: &[InterestChange]) -> Result<(), RegistryError>;
    /// Replaces everything the registry holds for `edge` with `keys`: after a registry restart,
    /// an expiry or a start, the edge writes its whole local interest again.
    async fn resync(&self, edge: &EdgeId, keys: &[InterestKey]) -> Result<(), RegistryError>;
    /// Forgets an edge that is shutting down, with its entries, at once rather than at expiry.
    async fn deregister(&self, edge: &EdgeId) -> Result<(), RegistryError>;
    /// The live edges holding interest in `key`, as the registry holds them now (whole or not).
    async fn edges_for(&self, key: &InterestKey) -> Result<Vec<EdgeId>, RegistryError>;
    /// How a target resolves: [`Route::Edges`] when the registry is known whole,
    /// [`Route::Incomplete`] while it is being rebuilt. A registry that cannot lose its state
    /// (the in-process one) is always whole.
    async fn resolve(&self, key: &InterestKey) -> Result<Route, RegistryError> {
        self.edges_for(key).await.map(Route::Edges)
    }
    /// Every live edge.
    async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError>;
    /// Why the registry's backend is degraded (unreachable, failing), or `None` when it is fine.
    fn degraded(&self) -> Option<String> {
        None
    }
    /// Where presence transitions found by this registry's writes of [`InterestKey::Member`]
    /// keys and by its cleanup of dead edges go. A registry that keeps no members (the
    /// in-process ones: a single node's hub finds its transitions itself) ignores it.
    fn set_presence_sink(&self, _sink: Arc<dyn PresenceSink>) {}
    /// Claims an idempotency key of a project for `window`. `false` means it was claimed already
    /// within the window (a repeat).
    async fn claim_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
        window: Duration,
    ) -> Result<bool, RegistryError>;
    /// Releases a claimed idempotency key, when the message it guarded could not be handed on,
    /// so that the publisher's retry is delivered.
    async fn release_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
    ) -> Result<(), RegistryError>;
}

/// The most idempotency keys the in-process registry keeps; past it, expired keys are purged and
/// then the oldest keys are forgotten first.
pub const MEMORY_IDEMPOTENCY_CAPACITY: usize = 1_000_000;

/// The in-process registry of a single-node Herald.
#[derive(Default)]
pub struct MemoryRegistry {
    interest: Mutex<HashMap<InterestKey, Edges>>,
    edges: Mutex<Vec<EdgeId>>,
    idempotency: Mutex<IdempotencyMap>,
}

/// The edges holding one key; usually one, which then needs no allocation.
#[derive(Debug)]
enum Edges {
    One(EdgeId),
    Many(Vec<EdgeId>),
}

impl Edges {
    fn add(&mut self, edge: &EdgeId) {
        match self {
            Edges::One(e) if e == edge => {}
            Edges::One(e) => *self = Edges::Many(vec![e.clone(), edge.clone()]),
            Edges::Many(v) if v.contains(edge) => {}
            Edges::Many(v) => v.push(edge.clone()),
        }
    }

    /// Removes `edge`; returns whether none is left.
    fn remove(&mut self, edge: &EdgeId) -> bool {
        match self {
            Edges::One(e) => e == edge,
            Edges::Many(v) => {
                v.retain(|e| e != edge);
                v.is_empty()
            }
        }
    }

    fn to_vec(&self) -> Vec<EdgeId> {
        match self {
            Edges::One(e) => vec![e.clone()],
            Edges::Many(v) => v.clone(),
        }
    }
}

#[derive(Default)]
struct IdempotencyMap {
    expiry: HashMap<(ProjectId, Box<str>), Instant>,
    order: std::collections::VecDeque<(Instant, ProjectId, Box<str>)>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes every entry of `edge`.
    fn forget(&self, edge: &EdgeId) {
        self.interest.lock().retain(|_, edges| !edges.remove(edge));
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn heartbeat(&self, edge: &EdgeId) -> Result<Liveness, RegistryError> {
        let mut edges = self.edges.lock();
        if edges.contains(edge) {
            Ok(Liveness::Renewed)
        } else {
            edges.push(edge.clone());
            Ok(Liveness::Registered)
        }
    }

    async fn resync(&self, edge: &EdgeId, keys: &[InterestKey]) -> Result<(), RegistryError> {
        self.forget(edge);
        let changes: Vec<_> = keys.iter().cloned().map(InterestChange::Add).collect();
        self.update(edge, &changes).await
    }

    async fn deregister(&self, edge: &EdgeId) -> Result<(), RegistryError> {
        self.forget(edge);
        self.edges.lock().retain(|e| e != edge);
        Ok(())
    }

    async fn update(&self, edge: &EdgeId, changes: &[InterestChange]) -> Result<(), RegistryError> {
        let mut interest = self.interest.lock();
        for change in changes {
            match change {
                InterestChange::Add(key) => match interest.get_mut(key) {
                    Some(edges) => edges.add(edge),
                    None => {
                        interest.insert(key.clone(), Edges::One(edge.clone()));
                    }
                },
                InterestChange::Remove(key) => {
                    if interest.get_mut(key).is_some_and(|e| e.remove(edge)) {
                        interest.remove(key);
                    }
                }
            }
        }
        Ok(())
    }

    async fn edges_for(&self, key: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
        Ok(self
            .interest
            .lock()
            .get(key)
            .map(Edges::to_vec)
            .unwrap_or_default())
    }

    async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
        Ok(self.edges.lock().clone())
    }

    async fn claim_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
        window: Duration,
    ) -> Result<bool, RegistryError> {
        let now = Instant::now();
        let mut map = self.idempotency.lock();
        let map = &mut *map;
        // Forget what expired, oldest first; past the capacity forget the oldest regardless.
        while let Some((at, _, _)) = map.order.front() {
            if *at > now && map.order.len() < MEMORY_IDEMPOTENCY_CAPACITY {
                break;
            }
            if let Some((at, p, k)) = map.order.pop_front() {
                let id = (p, k);
                if map.expiry.get(&id) == Some(&at) {
                    map.expiry.remove(&id);
                }
            }
        }
        let id = (project.clone(), Box::<str>::from(key));
        if map.expiry.get(&id).is_some_and(|at| *at > now) {
            return Ok(false);
        }
        let at = now + window;
        map.expiry.insert(id.clone(), at);
        map.order.push_back((at, id.0, id.1));
        Ok(true)
    }

    async fn release_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
    ) -> Result<(), RegistryError> {
        let id = (project.clone(), Box::<str>::from(key));
        self.idempotency.lock().expiry.remove(&id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ProjectId {
        ProjectId::new(s).expect("valid")
    }

    #[tokio::test]
    async fn idempotency_keys_repeat_within_window_only() {
        let r = MemoryRegistry::new();
        // Long enough that the second claim falls inside the window on a loaded machine too.
        let w = Duration::from_millis(500);
        let claimed = Instant::now();
        assert!(r.claim_idempotency_key(&p("a"), "k", w).await.expect("ok"));
        assert!(!r.claim_idempotency_key(&p("a"), "k", w).await.expect("ok"));
        assert!(r.claim_idempotency_key(&p("b"), "k", w).await.expect("ok"));
        // Claimable again once the window has passed, and not before.
        loop {
            if r.claim_idempotency_key(&p("a"), "k", w).await.expect("ok") {
                break;
            }
            assert!(claimed.elapsed() < w * 20, "never claimable again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(claimed.elapsed() >= w, "claimable again within the window");
    }

    #[tokio::test]
    async fn interest_is_per_key_and_edge() {
        let r = MemoryRegistry::new();
        let e1 = EdgeId::new("e1").expect("valid");
        let e2 = EdgeId::new("e2").expect("valid");
        let k = InterestKey::User(p("a"), UserId::new("u").expect("valid"));
        r.update(&e1, &[InterestChange::Add(k.clone())])
            .await
            .expect("ok");
        r.update(&e2, &[InterestChange::Add(k.clone())])
            .await
            .expect("ok");
        assert_eq!(r.edges_for(&k).await.expect("ok").len(), 2);
        r.update(&e1, &[InterestChange::Remove(k.clone())])
            .await
            .expect("ok");
        assert_eq!(r.edges_for(&k).await.expect("ok"), vec![e2]);
    }
}
