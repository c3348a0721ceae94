//! MQTT client ids held on this edge: one live connection per client id and project. A newer
//! connection with the same id takes over: the older one is closed (5.0 `DISCONNECT` 0x8E, close
//! 4012) and, unless the newer one starts clean, its session (subscriptions and unacknowledged
//! QoS 1 messages) moves to the newer one. Edges do not share client ids: two connections with the
//! same id on two edges both live (docs/protocol-mqtt.md).

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::ids::ProjectId;
use parking_lot::Mutex;

use super::delivery::Outbound;
use crate::hub::ConnHandle;

/// A connection's delivery state, shared with the registry so a takeover can move it.
pub(crate) type SharedOutbound = Arc<Mutex<Outbound>>;

/// The client ids of an edge's live MQTT connections.
#[derive(Default)]
pub(crate) struct ClientIds {
    map: Mutex<HashMap<(ProjectId, Arc<str>), Holder>>,
}

struct Holder {
    handle: ConnHandle,
    state: SharedOutbound,
}

/// The connection that held a client id before.
pub(crate) struct Previous {
    /// Its place in the hub (to close it).
    pub(crate) handle: ConnHandle,
    /// Its delivery state.
    pub(crate) state: SharedOutbound,
}

impl ClientIds {
    /// Makes connection `handle` the holder of `client_id` in `project`; returns the previous
    /// holder, if any.
    pub(crate) fn claim(
        &self,
        project: &ProjectId,
        client_id: &Arc<str>,
        handle: ConnHandle,
        state: &SharedOutbound,
    ) -> Option<Previous> {
        self.map
            .lock()
            .insert(
                (project.clone(), client_id.clone()),
                Holder {
                    handle,
                    state: state.clone(),
                },
            )
            .map(|h| Previous {
                handle: h.handle,
                state: h.state,
            })
    }

    /// The connection holding `client_id` in `project`, if any.
    pub(crate) fn holder(&self, project: &ProjectId, client_id: &Arc<str>) -> Option<ConnHandle> {
        self.map
            .lock()
            .get(&(project.clone(), client_id.clone()))
            .map(|h| h.handle)
    }

    /// Forgets `client_id` if connection `number` still holds it.
    pub(crate) fn release(&self, project: &ProjectId, client_id: &Arc<str>, number: u64) {
        let mut map = self.map.lock();
        let key = (project.clone(), client_id.clone());
        if map.get(&key).is_some_and(|h| h.handle.number == number) {
            map.remove(&key);
        }
    }
}

/// A connection's hold on its client id, released when the connection ends.
pub(crate) struct Claim {
    pub(crate) ids: Arc<ClientIds>,
    pub(crate) project: ProjectId,
    pub(crate) client_id: Arc<str>,
    pub(crate) number: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.ids
            .release(&self.project, &self.client_id, self.number);
    }
}
