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

use crate::ids::{ConnectionId, EdgeId, GroupId, ProjectId, UserId};
use crate::proto::bus as wire;
use crate::proto::bus::Envelope;
use crate::proto::v1::{ConnectionInfo, PresentUser};

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
    /// List the connections of a user or a group, in id order (edge id, then number).
    List {
        /// The project.
        project: ProjectId,
        /// Whose connections.
        of: ListOf,
        /// Only connections whose id orders after this one (a page's cursor): none of an edge
        /// whose id sorts before its edge, the numbers above its number on its edge.
        after: Option<ConnectionId>,
        /// At most this many connections, the lowest ids first; `None`: all.
        limit: Option<u32>,
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
    /// Who is in a group: its users with their connection counts, aggregated per user on the
    /// edge (never one entry per connection), in user id order.
    Presence {
        /// The project.
        project: ProjectId,
        /// The group.
        group: GroupId,
        /// Only users whose id sorts after this one (a page's cursor).
        after: Option<UserId>,
        /// At most this many users, the lowest ids first; `None`: all.
        limit: Option<u32>,
    },
    /// Connections and traffic counters per project (the console's figures).
    Stats,
    /// Subscribe connections to a group, or unsubscribe them (server-side).
    Subscribe {
        /// The project.
        project: ProjectId,
        /// Whom: one connection, or every connection of a user.
        who: DisconnectWho,
        /// The group.
        group: GroupId,
        /// True: join; false: leave.
        subscribe: bool,
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
    Connection(ConnectionId),
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
    /// A group's users on one edge.
    Presence(Presence),
    /// Connections and traffic per project id.
    Stats(HashMap<String, ProjectStats>),
    /// What a subscribe call did on one edge.
    Subscribed(Subscribed),
}

/// One project's figures on one edge: live connections and counters that only grow while the
/// edge runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectStats {
    /// Live connections.
    pub connections: u64,
    /// Envelopes of the project the edge handed to its connections (one per message and edge).
    pub messages: u64,
    /// Frames queued to the project's connections (one per recipient).
    pub deliveries: u64,
}

/// What a server-side subscribe or unsubscribe did on one edge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subscribed {
    /// Connections that joined (or left) the group.
    pub changed: u32,
    /// Connections already in (or out of) it.
    pub unchanged: u32,
    /// Connections left out: at their maximum of groups.
    pub refused: u32,
}

/// A group's users on one edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// The users after the cursor, in id order, at most the limit, with their connection counts.
    pub users: Vec<(String, u32)>,
    /// All of the group's connections on the edge.
    pub connections: u64,
    /// All of the group's distinct users on the edge.
    pub users_total: u64,
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
    /// Answers an operator call that may wait (a subscription, for the registry to hold it, a
    /// bounded time); by default [`EdgeHandler::control`].
    fn control_async<'a>(
        &'a self,
        request: &'a ControlRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ControlReply> + Send + 'a>> {
        Box::pin(std::future::ready(self.control(request)))
    }
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
    /// Asks every edge and gathers the answers that come within `deadline`; the edges of `live`
    /// (the registry's live edges) that did not answer are returned as missing.
    async fn control(
        &self,
        request: &ControlRequest,
        live: &[EdgeId],
        deadline: Duration,
    ) -> Result<ControlOutcome, BusError>;
    /// Why the bus's backend is degraded (disconnected, reconnecting), or `None` when it is fine.
    fn degraded(&self) -> Option<String> {
        None
    }
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
        live: &[EdgeId],
        _deadline: Duration,
    ) -> Result<ControlOutcome, BusError> {
        let handlers: Vec<_> = self.edges.read().clone();
        let missing = live
            .iter()
            .filter(|e| !handlers.iter().any(|(id, _)| id == *e))
            .cloned()
            .collect();
        let mut replies = Vec::with_capacity(handlers.len());
        for (id, h) in handlers {
            replies.push((id, h.control_async(request).await));
        }
        Ok(ControlOutcome { replies, missing })
    }
}

/// Why a control message from the bus was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlDecodeError {
    /// The message names no call or no result.
    #[error("empty control message")]
    Empty,
    /// An identifier in the message is invalid.
    #[error(transparent)]
    Id(#[from] crate::ids::IdError),
    /// The message's format version is unknown.
    #[error("unknown control format version {0}")]
    Version(u32),
}

/// The control format version this build writes and reads.
pub const CONTROL_VERSION: u32 = 1;

impl From<&ControlRequest> for wire::ControlRequest {
    fn from(r: &ControlRequest) -> Self {
        let call = match r {
            ControlRequest::Count { project } => {
                wire::control_request::Call::Count(wire::CountCall {
                    project: project.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                })
            }
            ControlRequest::List {
                project,
                of,
                after,
                limit,
            } => wire::control_request::Call::List(wire::ListCall {
                project: project.to_string(),
                of: Some(match of {
                    ListOf::User(u) => wire::list_call::Of::User(u.to_string()),
                    ListOf::Group(g) => wire::list_call::Of::Group(g.to_string()),
                }),
                after: after.as_ref().map(ToString::to_string).unwrap_or_default(),
                limit: limit.unwrap_or(0),
            }),
            ControlRequest::Disconnect {
                project,
                who,
                reconnect_after_ms,
            } => wire::control_request::Call::Disconnect(wire::DisconnectCall {
                project: project.to_string(),
                who: Some(match who {
                    DisconnectWho::User(u) => wire::disconnect_call::Who::User(u.to_string()),
                    DisconnectWho::Connection(c) => {
                        wire::disconnect_call::Who::ConnectionId(c.to_string())
                    }
                }),
                reconnect_after_ms: *reconnect_after_ms,
            }),
            ControlRequest::Presence {
                project,
                group,
                after,
                limit,
            } => wire::control_request::Call::Presence(wire::PresenceCall {
                project: project.to_string(),
                group: group.to_string(),
                after: after.as_ref().map(ToString::to_string).unwrap_or_default(),
                limit: limit.unwrap_or(0),
            }),
            ControlRequest::Stats => wire::control_request::Call::Stats(wire::StatsCall {}),
            ControlRequest::Subscribe {
                project,
                who,
                group,
                subscribe,
            } => wire::control_request::Call::Subscribe(wire::SubscribeCall {
                project: project.to_string(),
                who: Some(match who {
                    DisconnectWho::User(u) => wire::subscribe_call::Who::User(u.to_string()),
                    DisconnectWho::Connection(c) => {
                        wire::subscribe_call::Who::ConnectionId(c.to_string())
                    }
                }),
                group: group.to_string(),
                subscribe: *subscribe,
            }),
        };
        wire::ControlRequest {
            version: CONTROL_VERSION,
            call: Some(call),
        }
    }
}

impl TryFrom<wire::ControlRequest> for ControlRequest {
    type Error = ControlDecodeError;

    fn try_from(r: wire::ControlRequest) -> Result<Self, ControlDecodeError> {
        if r.version != CONTROL_VERSION {
            return Err(ControlDecodeError::Version(r.version));
        }
        Ok(match r.call.ok_or(ControlDecodeError::Empty)? {
            wire::control_request::Call::Count(c) => ControlRequest::Count {
                project: if c.project.is_empty() {
                    None
                } else {
                    Some(ProjectId::new(&c.project)?)
                },
            },
            wire::control_request::Call::List(l) => ControlRequest::List {
                project: ProjectId::new(&l.project)?,
                of: match l.of.ok_or(ControlDecodeError::Empty)? {
                    wire::list_call::Of::User(u) => ListOf::User(UserId::new(&u)?),
                    wire::list_call::Of::Group(g) => ListOf::Group(GroupId::new(&g)?),
                },
                after: if l.after.is_empty() {
                    None
                } else {
                    Some(l.after.parse()?)
                },
                limit: (l.limit > 0).then_some(l.limit),
            },
            wire::control_request::Call::Disconnect(d) => ControlRequest::Disconnect {
                project: ProjectId::new(&d.project)?,
                who: match d.who.ok_or(ControlDecodeError::Empty)? {
                    wire::disconnect_call::Who::User(u) => DisconnectWho::User(UserId::new(&u)?),
                    wire::disconnect_call::Who::ConnectionId(c) => {
                        DisconnectWho::Connection(c.parse()?)
                    }
                },
                reconnect_after_ms: d.reconnect_after_ms,
            },
            wire::control_request::Call::Presence(p) => ControlRequest::Presence {
                project: ProjectId::new(&p.project)?,
                group: GroupId::new(&p.group)?,
                after: if p.after.is_empty() {
                    None
                } else {
                    Some(UserId::new(&p.after)?)
                },
                limit: (p.limit > 0).then_some(p.limit),
            },
            wire::control_request::Call::Stats(wire::StatsCall {}) => ControlRequest::Stats,
            wire::control_request::Call::Subscribe(s) => ControlRequest::Subscribe {
                project: ProjectId::new(&s.project)?,
                who: match s.who.ok_or(ControlDecodeError::Empty)? {
                    wire::subscribe_call::Who::User(u) => DisconnectWho::User(UserId::new(&u)?),
                    wire::subscribe_call::Who::ConnectionId(c) => {
                        DisconnectWho::Connection(c.parse()?)
                    }
                },
                group: GroupId::new(&s.group)?,
                subscribe: s.subscribe,
            },
        })
    }
}

impl ControlReply {
    /// The wire form of this reply, from `edge`.
    pub fn to_wire(&self, edge: &EdgeId) -> wire::ControlReply {
        let result = match self {
            ControlReply::Count(counts) => wire::control_reply::Result::Count(wire::CountResult {
                connections: counts.clone(),
            }),
            ControlReply::List(list) => wire::control_reply::Result::List(wire::ListResult {
                connections: list.clone(),
            }),
            ControlReply::Disconnected(n) => wire::control_reply::Result::Disconnected(*n),
            ControlReply::Presence(p) => {
                wire::control_reply::Result::Presence(wire::PresenceResult {
                    users: p
                        .users
                        .iter()
                        .map(|(user, connections)| PresentUser {
                            user: user.clone(),
                            connections: *connections,
                        })
                        .collect(),
                    connections: p.connections,
                    users_total: p.users_total,
                })
            }
            ControlReply::Stats(projects) => {
                wire::control_reply::Result::Stats(wire::StatsResult {
                    projects: projects
                        .iter()
                        .map(|(p, s)| {
                            (
                                p.clone(),
                                wire::ProjectStats {
                                    connections: s.connections,
                                    messages: s.messages,
                                    deliveries: s.deliveries,
                                },
                            )
                        })
                        .collect(),
                })
            }
            ControlReply::Subscribed(s) => {
                wire::control_reply::Result::Subscribed(wire::SubscribeResult {
                    changed: s.changed,
                    unchanged: s.unchanged,
                    refused: s.refused,
                })
            }
        };
        wire::ControlReply {
            edge: edge.to_string(),
            result: Some(result),
        }
    }

    /// Reads a reply from the wire: the answering edge and its answer.
    pub fn from_wire(r: wire::ControlReply) -> Result<(EdgeId, Self), ControlDecodeError> {
        let edge = EdgeId::new(&r.edge)?;
        let reply = match r.result.ok_or(ControlDecodeError::Empty)? {
            wire::control_reply::Result::Count(c) => ControlReply::Count(c.connections),
            wire::control_reply::Result::List(l) => ControlReply::List(l.connections),
            wire::control_reply::Result::Disconnected(n) => ControlReply::Disconnected(n),
            wire::control_reply::Result::Presence(p) => ControlReply::Presence(Presence {
                users: p
                    .users
                    .into_iter()
                    .map(|u| (u.user, u.connections))
                    .collect(),
                connections: p.connections,
                users_total: p.users_total,
            }),
            wire::control_reply::Result::Stats(s) => ControlReply::Stats(
                s.projects
                    .into_iter()
                    .map(|(p, s)| {
                        (
                            p,
                            ProjectStats {
                                connections: s.connections,
                                messages: s.messages,
                                deliveries: s.deliveries,
                            },
                        )
                    })
                    .collect(),
            ),
            wire::control_reply::Result::Subscribed(s) => ControlReply::Subscribed(Subscribed {
                changed: s.changed,
                unchanged: s.unchanged,
                refused: s.refused,
            }),
        };
        Ok((edge, reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_survive_the_wire() {
        let p = ProjectId::new("alpha").expect("valid");
        let reqs = [
            ControlRequest::Count { project: None },
            ControlRequest::Count {
                project: Some(p.clone()),
            },
            ControlRequest::List {
                project: p.clone(),
                of: ListOf::Group(GroupId::new("news").expect("valid")),
                after: None,
                limit: None,
            },
            ControlRequest::List {
                project: p.clone(),
                of: ListOf::User(UserId::new("alice").expect("valid")),
                after: Some("edge-1-42".parse().expect("valid")),
                limit: Some(1_001),
            },
            ControlRequest::Disconnect {
                project: p.clone(),
                who: DisconnectWho::User(UserId::new("alice").expect("valid")),
                reconnect_after_ms: 7,
            },
            ControlRequest::Disconnect {
                project: p.clone(),
                who: DisconnectWho::Connection("edge-1-42".parse().expect("valid")),
                reconnect_after_ms: 0,
            },
            ControlRequest::Presence {
                project: p.clone(),
                group: GroupId::new("news").expect("valid"),
                after: None,
                limit: None,
            },
            ControlRequest::Presence {
                project: p.clone(),
                group: GroupId::new("news").expect("valid"),
                after: Some(UserId::new("bob").expect("valid")),
                limit: Some(11),
            },
            ControlRequest::Stats,
            ControlRequest::Subscribe {
                project: p.clone(),
                who: DisconnectWho::User(UserId::new("alice").expect("valid")),
                group: GroupId::new("news").expect("valid"),
                subscribe: true,
            },
            ControlRequest::Subscribe {
                project: p,
                who: DisconnectWho::Connection("edge-1-42".parse().expect("valid")),
                group: GroupId::new("news").expect("valid"),
                subscribe: false,
            },
        ];
        for r in reqs {
            let back = ControlRequest::try_from(wire::ControlRequest::from(&r)).expect("decodes");
            assert_eq!(format!("{r:?}"), format!("{back:?}"));
        }
        let bad = wire::ControlRequest {
            version: CONTROL_VERSION,
            call: Some(wire::control_request::Call::List(wire::ListCall {
                project: "alpha".into(),
                of: Some(wire::list_call::Of::User("a.*".into())),
                ..Default::default()
            })),
        };
        assert!(ControlRequest::try_from(bad).is_err());
        let e = EdgeId::new("e1").expect("valid");
        let (edge, reply) =
            ControlReply::from_wire(ControlReply::Disconnected(3).to_wire(&e)).expect("decodes");
        assert_eq!(edge, e);
        assert!(matches!(reply, ControlReply::Disconnected(3)));
        let p = Presence {
            users: vec![("alice".into(), 2), ("bob".into(), 1)],
            connections: 5,
            users_total: 3,
        };
        let (_, reply) = ControlReply::from_wire(ControlReply::Presence(p.clone()).to_wire(&e))
            .expect("decodes");
        assert!(matches!(reply, ControlReply::Presence(back) if back == p));
        let stats = HashMap::from([(
            "alpha".to_string(),
            ProjectStats {
                connections: 2,
                messages: 30,
                deliveries: 45,
            },
        )]);
        let (_, reply) = ControlReply::from_wire(ControlReply::Stats(stats.clone()).to_wire(&e))
            .expect("decodes");
        assert!(matches!(reply, ControlReply::Stats(back) if back == stats));
        let s = Subscribed {
            changed: 2,
            unchanged: 1,
            refused: 3,
        };
        let (_, reply) =
            ControlReply::from_wire(ControlReply::Subscribed(s).to_wire(&e)).expect("decodes");
        assert!(matches!(reply, ControlReply::Subscribed(back) if back == s));
    }
}
