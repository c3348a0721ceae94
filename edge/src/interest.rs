//! Reference counts of this edge's interest in users and groups, written to the registry in
//! order and in batches: a key is added when its first local connection needs it and removed
//! when its last one leaves. A join is acknowledged to the client only once the registry holds
//! it, so a message published after the ack is never missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::ids::EdgeId;
use herald_core::registry::{InterestChange, InterestKey, Registry};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

type Batch = (Vec<InterestChange>, Option<oneshot::Sender<()>>);

/// This edge's interest, mirrored into the registry.
///
/// User keys need no count here: all devices of a user live in one hub shard, whose index tells
/// when the first arrives and the last leaves; the shard reports those changes under its lock.
/// Group members spread over shards, so groups are counted here.
pub struct Interest {
    group_counts: Mutex<HashMap<InterestKey, u32>>,
    tx: mpsc::UnboundedSender<Batch>,
}

impl Interest {
    /// Starts the writer task that applies changes to `registry` in order.
    pub fn start(edge: EdgeId, registry: Arc<dyn Registry>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(edge, registry, rx));
        Arc::new(Self {
            group_counts: Mutex::new(HashMap::new()),
            tx,
        })
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
        let mut counts = self.group_counts.lock();
        for key in groups {
            let n = counts.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                changes.push(InterestChange::Add(key));
            }
        }
        // Sent under the lock so the writer sees changes in the order counts moved; an empty
        // batch is a barrier behind any pending write of the same keys.
        let _ = self.tx.send((changes, Some(done)));
        wait
    }

    /// Queues `changes` plus dropping one reference to each group key; does not wait.
    pub fn remove(
        &self,
        mut changes: Vec<InterestChange>,
        groups: impl IntoIterator<Item = InterestKey>,
    ) {
        let mut counts = self.group_counts.lock();
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
            let _ = self.tx.send((changes, None));
        }
    }

    /// Whether this edge holds a member of a group.
    pub fn has_group(&self, key: &InterestKey) -> bool {
        self.group_counts.lock().contains_key(key)
    }
}

/// Applies batches in order; everything queued while one write is in flight goes in the next.
async fn write_loop(
    edge: EdgeId,
    registry: Arc<dyn Registry>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    let mut changes = Vec::new();
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some((c, w)) = next {
            changes.extend(c);
            waiters.extend(w);
            next = rx.try_recv().ok();
        }
        let mut backoff = Duration::from_millis(50);
        while !changes.is_empty() {
            match registry.update(&edge, &changes).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, pending = changes.len(), "registry update failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        changes.clear();
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}
