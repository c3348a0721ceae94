//! Presence events: a user's first connection in a group arrived, or its last one left,
//! cluster-wide (per user, never per connection), for projects that ask for them
//! (`presence_events`). Whoever finds a transition (the edge of a single node, the Redis
//! registry's writes and its cleanup of a dead edge in a cluster) hands it to a
//! [`PresenceSink`]; the [`Announcer`] sends each to the group's edges as an envelope and to
//! whatever else listens (webhooks). The layout and its limits are in `docs/cluster.md`.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::bus::{Bus, Destination};
use crate::ids::{GroupId, ProjectId, UserId};
use crate::proto::bus as wire;
use crate::proto::bus::{ENVELOPE_VERSION, Envelope};
use crate::registry::{InterestKey, Registry, Route};

/// One presence transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The project.
    pub project: ProjectId,
    /// The group.
    pub group: GroupId,
    /// The user.
    pub user: UserId,
    /// True: the user's first connection in the group arrived; false: its last one left.
    pub join: bool,
}

impl PresenceEvent {
    /// The envelope that carries this event to the group's members.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            project: self.project.to_string(),
            kind: wire::TargetKind::Group as i32,
            name: self.group.to_string(),
            presence: Some(wire::PresenceEvent {
                user: self.user.to_string(),
                join: self.join,
            }),
            ..Envelope::default()
        }
    }
}

/// Takes presence events; must not block (it is called under locks and on write paths).
pub trait PresenceSink: Send + Sync + 'static {
    /// Hands events on, or drops and counts them when full.
    fn announce(&self, events: Vec<PresenceEvent>);
}

/// Whether a project asks for presence events (read at each transition: a reload applies to
/// the next one).
pub type PresenceEnabled = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Something else that wants presence events (webhooks); must not block.
pub type PresenceTap = Arc<dyn Fn(&PresenceEvent) + Send + Sync>;

/// How many events wait to be sent at most; beyond, they are dropped and counted in
/// `herald_presence_events_dropped_total`.
pub const ANNOUNCE_QUEUE: usize = 65_536;

/// Sends presence events to the edges holding the group (resolved through the registry; by the
/// project's broadcast path while the registry is not whole), in the order they were found.
pub struct Announcer {
    tx: mpsc::Sender<PresenceEvent>,
    enabled: PresenceEnabled,
    tap: Option<PresenceTap>,
}

impl Announcer {
    /// Starts the sending task on the current Tokio runtime.
    pub fn start(
        registry: Arc<dyn Registry>,
        bus: Arc<dyn Bus>,
        enabled: PresenceEnabled,
        tap: Option<PresenceTap>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(ANNOUNCE_QUEUE);
        tokio::spawn(send_loop(registry, bus, rx));
        Arc::new(Self { tx, enabled, tap })
    }
}

impl PresenceSink for Announcer {
    fn announce(&self, events: Vec<PresenceEvent>) {
        for e in events {
            if !(self.enabled)(e.project.as_str()) {
                continue;
            }
            if let Some(tap) = &self.tap {
                tap(&e);
            }
            let label = if e.join { "join" } else { "leave" };
            match self.tx.try_send(e) {
                Ok(()) => {
                    metrics::counter!("herald_presence_events_total", "event" => label)
                        .increment(1);
                }
                Err(_) => {
                    metrics::counter!("herald_presence_events_dropped_total").increment(1);
                }
            }
        }
    }
}

async fn send_loop(
    registry: Arc<dyn Registry>,
    bus: Arc<dyn Bus>,
    mut rx: mpsc::Receiver<PresenceEvent>,
) {
    while let Some(e) = rx.recv().await {
        let env = e.envelope();
        let key = InterestKey::Group(e.project.clone(), e.group.clone());
        let sent = match registry.resolve(&key).await {
            Ok(Route::Edges(edges)) => {
                let mut r = Ok(());
                for edge in &edges {
                    if let Err(err) = bus.publish(Destination::Edge(edge), &env).await {
                        r = Err(err.to_string());
                    }
                }
                r
            }
            // Not whole, or unreachable: every edge gets it and keeps it only for local members.
            Ok(Route::Incomplete(_)) | Err(_) => bus
                .publish(Destination::Broadcast(&e.project), &env)
                .await
                .map_err(|err| err.to_string()),
        };
        if let Err(error) = sent {
            metrics::counter!("herald_presence_events_dropped_total").increment(1);
            tracing::debug!(%error, project = %e.project, group = %e.group, "presence event not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_a_group_envelope_without_payload() {
        let e = PresenceEvent {
            project: ProjectId::new("a").expect("id"),
            group: GroupId::new("news").expect("id"),
            user: UserId::new("alice").expect("id"),
            join: true,
        };
        let env = e.envelope();
        assert_eq!(env.kind(), wire::TargetKind::Group);
        assert_eq!((env.name.as_str(), env.payload.len()), ("news", 0));
        assert_eq!(
            env.presence,
            Some(wire::PresenceEvent {
                user: "alice".into(),
                join: true
            })
        );
    }
}
