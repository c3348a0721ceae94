//! The registry of a single-node Herald: one edge, whose hub is the truth. It keeps nothing per
//! connection of its own; the router's lookups ask the hub, idempotency keys are kept in memory.
//! The hub writes no registry of its own ([`Hub::new`] without one), so the two do not point at
//! each other: this registry is a view of the hub.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::ids::{EdgeId, ProjectId};
use herald_core::registry::{
    InterestChange, InterestKey, Liveness, MemoryRegistry, Registry, RegistryError,
};

use crate::hub::Hub;

/// A [`Registry`] for one edge in the same process.
pub struct LocalRegistry {
    edge: EdgeId,
    hub: Arc<Hub>,
    idempotency: MemoryRegistry,
}

impl LocalRegistry {
    /// The registry answered by `hub` (a hub built without a registry of its own).
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self {
            edge: hub.edge().clone(),
            hub,
            idempotency: MemoryRegistry::new(),
        })
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn heartbeat(&self, _edge: &EdgeId) -> Result<Liveness, RegistryError> {
        // The hub is the truth: there is never anything to write again.
        Ok(Liveness::Renewed)
    }

    async fn resync(&self, _edge: &EdgeId, _keys: &[InterestKey]) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn deregister(&self, _edge: &EdgeId) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn update(
        &self,
        _edge: &EdgeId,
        _changes: &[InterestChange],
    ) -> Result<(), RegistryError> {
        // The hub already holds every change.
        Ok(())
    }

    async fn edges_for(&self, key: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
        Ok(if self.hub.holds(key) {
            vec![self.edge.clone()]
        } else {
            Vec::new()
        })
    }

    async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
        Ok(vec![self.edge.clone()])
    }

    async fn claim_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
        window: Duration,
    ) -> Result<bool, RegistryError> {
        self.idempotency
            .claim_idempotency_key(project, key, window)
            .await
    }

    async fn release_idempotency_key(
        &self,
        project: &ProjectId,
        key: &str,
    ) -> Result<(), RegistryError> {
        self.idempotency.release_idempotency_key(project, key).await
    }
}
