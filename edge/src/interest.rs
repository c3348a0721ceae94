//! Reference counts of this edge's interest in users and groups, written to the registry in
//! order and in batches: a key is added when its first local connection needs it and removed
//! when its last one leaves. A join is acknowledged to the client only once the registry holds
//! it, so a message published after the ack is never missed.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use herald_core::backoff::backoff;
use herald_core::ids::EdgeId;
use herald_core::registry::{InterestChange, InterestKey, Registry};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;

/// What the writer task is asked to do.
enum Batch {
    /// Apply changes; tell the waiter (if any) once the registry holds them.
    Changes(Vec<InterestChange>, Option<oneshot::Sender<()>>),
    /// Write the edge's whole interest again (after a registry restart or an expiry); tell the
    /// waiter once done.
    Resync(Option<oneshot::Sender<()>>),
}

/// This edge's interest, mirrored into the registry.
///
/// User keys need no count here: all devices of a user live in one hub shard, whose index tells
/// when the first arrives and the last leaves; the shard reports those changes under its lock.
/// Group members spread over shards, so groups are counted here.
pub struct Interest {
    state: Arc<State>,
    tx: mpsc::UnboundedSender<Batch>,
}

/// What the writer needs to take a snapshot of the whole interest.
struct State {
    group_counts: Mutex<HashMap<InterestKey, u32>>,
    hub: OnceLock<Weak<Hub>>,
}

impl State {
    /// Every key this edge holds now: users from the hub's index, groups from the counts.
    fn snapshot(&self) -> Vec<InterestKey> {
        let mut keys = self
            .hub
            .get()
            .and_then(Weak::upgrade)
            .map(|h| h.user_keys())
            .unwrap_or_default();
        keys.extend(self.group_counts.lock().keys().cloned());
        keys
    }
}

impl Interest {
    /// Starts the writer task that applies changes to `registry` in order.
    pub fn start(edge: EdgeId, registry: Arc<dyn Registry>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            group_counts: Mutex::new(HashMap::new()),
            hub: OnceLock::new(),
        });
        tokio::spawn(write_loop(edge, registry, state.clone(), rx));
        Arc::new(Self { state, tx })
    }

    /// Tells the writer where user keys live, for [`resync`](Self::resync).
    pub fn set_hub(&self, hub: &Arc<Hub>) {
        let _ = self.state.hub.set(Arc::downgrade(hub));
    }

    /// Queues a rewrite of the whole interest; the receiver resolves once the registry holds it.
    pub fn resync(&self) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        let _ = self.tx.send(Batch::Resync(Some(done)));
        wait
    }

    /// Queues `changes` plus one reference to each group key; returns a receiver that resolves
    /// once the registry holds them all. Call it under the lock that decided `changes`, so
    /// changes of one key are queued in the order they happened.
    pub fn add(
        &self,
        mut changes: Vec<InterestChange>,
        groups: impl IntoIterator<Item = InterestKey>,
    ) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        let mut counts = self.state.group_counts.lock();
        for key in groups {
            let n = counts.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                changes.push(InterestChange::Add(key));
            }
        }
        // Sent under the lock so the writer sees changes in the order counts moved; an empty
        // batch is a barrier behind any pending write of the same keys.
        let _ = self.tx.send(Batch::Changes(changes, Some(done)));
        wait
    }

    /// Queues `changes` plus dropping one reference to each group key; does not wait.
    pub fn remove(
        &self,
        mut changes: Vec<InterestChange>,
        groups: impl IntoIterator<Item = InterestKey>,
    ) {
        let mut counts = self.state.group_counts.lock();
        for key in groups {
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                    changes.push(InterestChange::Remove(key));
                }
            }
        }
        if !changes.is_empty() {
            let _ = self.tx.send(Batch::Changes(changes, None));
        }
    }

    /// Whether this edge holds a member of a group.
    pub fn has_group(&self, key: &InterestKey) -> bool {
        self.state.group_counts.lock().contains_key(key)
    }
}

/// Applies batches in order; everything queued while one write is in flight goes in the next.
///
/// A resync takes its snapshot when the writer reaches it, then writes it before any change
/// still queued. That is safe: a change queued before the snapshot is replayed after it, and for
/// every key the last change queued is the latest, so the registry ends in the hub's state.
async fn write_loop(
    edge: EdgeId,
    registry: Arc<dyn Registry>,
    state: Arc<State>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    let mut changes = Vec::new();
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut resync = false;
        let mut next = Some(first);
        while let Some(batch) = next {
            match batch {
                Batch::Changes(c, w) => {
                    changes.extend(c);
                    waiters.extend(w);
                }
                Batch::Resync(w) => {
                    resync = true;
                    waiters.extend(w);
                }
            }
            next = rx.try_recv().ok();
        }
        let mut attempt = 0;
        if resync {
            loop {
                let keys = state.snapshot();
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
        while !changes.is_empty() {
            match registry.update(&edge, &changes).await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("herald_edge_registry_retries_total").increment(1);
                    tracing::warn!(error = %e, pending = changes.len(), "registry update failed; retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
        changes.clear();
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

fn retry_delay(attempt: u32) -> Duration {
    backoff(attempt, Duration::from_millis(50), Duration::from_secs(5))
}
