//! The bus: how envelopes travel from routers to edges, and how operator calls reach every edge.
//!
//! A router publishes one envelope per edge that must receive it ([`Destination::Edge`]), or one
//! per project for a broadcast ([`Destination::Broadcast`]); never one per connection. Operator
//! calls go to every edge and come back with the edges that did not answer in time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::ids::{EdgeId, GroupId, ProjectId, UserId};
use crate::proto::bus::Envelope;
use crate::proto::v1::ConnectionInfo;

/// Where an envelope goes.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// One edge, which delivers to its local recipients.
    Edge(&'a EdgeId),
    /// Every edge, which delivers to every local connection of the project.
    Broadcast(&'a ProjectId),
}

/// An operator call addressed to every edge.
#[derive(Debug, Clone)]
pub enum ControlRequest {
    /// Count connections, of one project or of all.
    Count {
        /// The project, or `None` for all.
        project: Option<ProjectId>,
    },
    /// List the connections of a user or a group.
    List {
        /// The project.
        project: ProjectId,
        /// Whose connections.
        of: ListOf,
    },
    /// Close connections.
    Disconnect {
        /// The project.
        project: ProjectId,
        /// Whom.
        who: DisconnectWho,
        /// Hint to clients: do not reconnect before this many milliseconds.
        reconnect_after_ms: u32,
    },
}

/// Whose connections to list.
#[derive(Debug, Clone)]
pub enum ListOf {
    /// A user's devices.
    User(UserId),
    /// A group's members.
    Group(GroupId),
}

/// Whom to disconnect.
#[derive(Debug, Clone)]
pub enum DisconnectWho {
    /// One connection, by id.
    Connection(String),
    /// All devices of a user.
    User(UserId),
}

/// One edge's answer to a [`ControlRequest`].
#[derive(Debug, Clone)]
pub enum ControlReply {
    /// Connections per project id.
    Count(HashMap<String, u64>),
    /// Connections found.
    List(Vec<ConnectionInfo>),
    /// Connections closed.
    Disconnected(u32),
}

/// The answers of every edge that replied in time.
#[derive(Debug, Default)]
pub struct ControlOutcome {
    /// The answers, one per edge.
    pub replies: Vec<(EdgeId, ControlReply)>,
    /// Edges known alive that did not answer within the deadline.
    pub missing: Vec<EdgeId>,
}

/// What an edge does with what arrives on the bus.
pub trait EdgeHandler: Send + Sync + 'static {
    /// Delivers an envelope to the local recipients. Must not block.
    fn deliver(&self, envelope: &Envelope);
    /// Answers an operator call about local connections.
    fn control(&self, request: &ControlRequest) -> ControlReply;
}

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus backend is unreachable or failed.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// No edge with that id is attached.
    #[error("edge {0} is not attached")]
    UnknownEdge(EdgeId),
}

/// Carries envelopes and operator calls to edges.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands an envelope to its destination.
    async fn publish(&self, to: Destination<'_>, envelope: &Envelope) -> Result<(), BusError>;
    /// Attaches an edge: from now on what is addressed to it reaches `handler`.
    async fn attach(&self, edge: EdgeId, handler: Arc<dyn EdgeHandler>) -> Result<(), BusError>;
    /// Asks every edge and gathers the answers that come within `deadline`.
    async fn control(
        &self,
        request: &ControlRequest,
        deadline: Duration,
    ) -> Result<ControlOutcome, BusError>;
}

/// The in-process bus of a single-node Herald: a publish is a direct call into the edge's hub,
/// so messages of one publisher arrive in publish order.
#[derive(Default)]
pub struct MemoryBus {
    edges: RwLock<Vec<(EdgeId, Arc<dyn EdgeHandler>)>>,
}

impl MemoryBus {
    /// A bus with no edge attached.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, to: Destination<'_>, envelope: &Envelope) -> Result<(), BusError> {
        let edges = self.edges.read();
        match to {
            Destination::Edge(id) => {
                let (_, h) = edges
                    .iter()
                    .find(|(e, _)| e == id)
                    .ok_or_else(|| BusError::UnknownEdge(id.clone()))?;
                h.deliver(envelope);
            }
            Destination::Broadcast(_) => {
                for (_, h) in edges.iter() {
                    h.deliver(envelope);
                }
            }
        }
        Ok(())
    }

    async fn attach(&self, edge: EdgeId, handler: Arc<dyn EdgeHandler>) -> Result<(), BusError> {
        let mut edges = self.edges.write();
        edges.retain(|(e, _)| *e != edge);
        edges.push((edge, handler));
        Ok(())
    }

    async fn control(
        &self,
        request: &ControlRequest,
        _deadline: Duration,
    ) -> Result<ControlOutcome, BusError> {
        let handlers: Vec<_> = self.edges.read().clone();
        let replies = handlers
            .into_iter()
            .map(|(id, h)| (id, h.control(request)))
            .collect();
        Ok(ControlOutcome {
            replies,
            missing: Vec::new(),
        })
    }
}
