//! MQTT persistent sessions through history: a client that connects with `clean_session` 0
//! (3.1.1) or a Session Expiry above 0 (5.0) has its subscriptions and, per recoverable stream
//! it subscribed to at QoS 1, the last offset it acknowledged (`PUBACK`) kept in the
//! [`Sessions`] store. Coming back (`clean_session` 0 / Clean Start 0), on this edge or another,
//! it finds its subscriptions again (`CONNACK` session present) and gets what it missed from
//! history as QoS 1, from the last acknowledged offset on, then live messages.
//!
//! Nothing is allocated for a connection that does not ask for a session: the codec holds
//! `None`.

use std::sync::Arc;
use std::time::Duration;

use herald_core::history::{
    History, HistoryConfig, MAX_TTL_SECS, Position, StreamKey, StreamTarget,
};
use herald_core::ids::{GroupId, ProjectId, UserId};
use herald_core::proto::bus::TargetKind;
use herald_core::sessions::{SessionKey, SessionRecord, Sessions};

use super::delivery::{BROADCAST_TOPIC, USER_TOPIC_PREFIX};

/// How long a 3.1.1 session (which names no expiry) outlives the history it points into.
const GRACE: Duration = Duration::from_secs(24 * 3600);

/// A stream to bring up to date once the connection started.
pub(crate) struct Pending {
    pub(crate) topic: String,
    pub(crate) kind: TargetKind,
    pub(crate) name: String,
    pub(crate) key: StreamKey,
    pub(crate) since: Position,
}

/// A connection's persistent session.
pub(crate) struct Persist {
    key: SessionKey,
    ttl: Duration,
    /// Kept after the connection (false: a 5.0 session resumed with expiry 0, which ends with
    /// this connection).
    keep: bool,
    pub(crate) record: SessionRecord,
    sessions: Arc<dyn Sessions>,
    /// A record was found: the session is present.
    pub(crate) present: bool,
    /// Streams to replay once started.
    pub(crate) pending: Vec<Pending>,
    project: ProjectId,
    user: UserId,
}

impl Drop for Persist {
    fn drop(&mut self) {
        if !self.keep {
            return;
        }
        // The session lives `ttl` from the client's last connection.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (sessions, key, ttl) = (self.sessions.clone(), self.key.clone(), self.ttl);
            rt.spawn(async move {
                if let Err(e) = sessions.touch(&key, ttl).await {
                    tracing::debug!(error = %e, "mqtt session not renewed");
                }
            });
        }
    }
}

/// The stream a topic names for `user`, if any.
pub(crate) fn target_of(topic: &str, user: &UserId) -> Option<StreamTarget> {
    if topic == BROADCAST_TOPIC {
        return Some(StreamTarget::Broadcast);
    }
    if let Some(u) = topic.strip_prefix(USER_TOPIC_PREFIX) {
        return (u == user.as_str()).then(|| StreamTarget::User(user.clone()));
    }
    GroupId::new(topic).ok().map(StreamTarget::Group)
}

/// The hub's name of a stream: target kind and name.
fn hub_name(t: &StreamTarget) -> (TargetKind, String) {
    match t {
        StreamTarget::Broadcast => (TargetKind::Broadcast, String::new()),
        StreamTarget::Group(g) => (TargetKind::Group, g.as_str().to_owned()),
        StreamTarget::User(u) => (TargetKind::User, u.as_str().to_owned()),
    }
}

/// What `CONNECT` asked for.
pub(crate) struct Asked<'a> {
    pub(crate) v5: bool,
    pub(crate) clean_start: bool,
    pub(crate) session_expiry: u32,
    pub(crate) client_id: &'a str,
}

impl Asked<'_> {
    /// Whether the session outlives the connection.
    fn persistent(&self) -> bool {
        if self.v5 {
            self.session_expiry > 0
        } else {
            !self.clean_start
        }
    }

    /// How long the session outlives the connection.
    pub(crate) fn ttl(&self, history: Option<&HistoryConfig>) -> Duration {
        if self.v5 {
            Duration::from_secs(u64::from(self.session_expiry.min(MAX_TTL_SECS)))
        } else {
            Duration::from_secs(u64::from(history.map_or(3600, |h| h.ttl_secs))) + GRACE
        }
    }
}

/// Opens the session `asked` for, before the connection enters the hub: clears it on a clean
/// start, loads it otherwise. `None` when there is no session to keep or resume.
pub(crate) async fn open(
    asked: &Asked<'_>,
    project: &ProjectId,
    user: &UserId,
    history: Option<&HistoryConfig>,
    sessions: &Arc<dyn Sessions>,
) -> Option<Persist> {
    if asked.client_id.is_empty() {
        return None;
    }
    let key = SessionKey::mqtt(project, user, asked.client_id);
    let persistent = asked.persistent();
    let mut found = None;
    if asked.clean_start && !persistent {
        // A clean connection that keeps nothing: any older session goes, off the connect path
        // (most clients connect clean; their connect waits for no store).
        let sessions = sessions.clone();
        tokio::spawn(async move {
            if let Err(e) = sessions.remove(&key).await {
                tracing::warn!(error = %e, "mqtt session not cleared");
            }
        });
        return None;
    }
    if asked.clean_start {
        // Cleared before this connection's own subscriptions are saved.
        if let Err(e) = sessions.remove(&key).await {
            tracing::warn!(error = %e, "mqtt session not cleared");
        }
    } else {
        match sessions.load(&key).await {
            Ok(r) => found = r,
            Err(e) => tracing::warn!(error = %e, "mqtt session unavailable: starting a new one"),
        }
    }
    if !persistent && found.is_none() {
        return None;
    }
    if !persistent {
        // Resumed, and it ends with this connection.
        let _ = sessions.remove(&key).await;
    }
    let present = found.is_some();
    let record = found.unwrap_or_default();
    let mut pending = Vec::new();
    for (topic, qos) in &record.subscriptions {
        let Some(target) = target_of(topic, user) else {
            continue;
        };
        if *qos == 0 || !history.is_some_and(|h| h.keeps(&target)) {
            continue;
        }
        if let Some(since) = record.position(&target) {
            let (kind, name) = hub_name(&target);
            pending.push(Pending {
                topic: topic.clone(),
                kind,
                name,
                key: StreamKey {
                    project: project.clone(),
                    target,
                },
                since,
            });
        }
    }
    Some(Persist {
        key,
        ttl: asked.ttl(history),
        keep: persistent,
        record,
        sessions: sessions.clone(),
        present,
        pending,
        project: project.clone(),
        user: user.clone(),
    })
}

impl Persist {
    /// The streams whose live messages are held from the connection's start (replayed first).
    pub(crate) fn held(&self) -> Vec<(TargetKind, String)> {
        self.pending
            .iter()
            .map(|p| (p.kind, p.name.clone()))
            .collect()
    }

    /// How long the session outlives the connection, seconds (5.0 `CONNACK`); 0 when it ends
    /// with it.
    pub(crate) fn expiry_secs(&self) -> u32 {
        if self.keep {
            u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    /// Where a recoverable stream stands now, for a subscription at QoS 1 that has no position
    /// yet (read before joining: a message between the read and the join is sent again at the
    /// next resume rather than never).
    pub(crate) async fn position_now(
        &self,
        topic: &str,
        qos: u8,
        keeps: impl Fn(&StreamTarget) -> bool,
        history: &dyn History,
    ) -> Option<(StreamTarget, Position)> {
        if qos == 0 {
            return None;
        }
        let target = target_of(topic, &self.user)?;
        if !keeps(&target) || self.record.position(&target).is_some() {
            return None;
        }
        let key = StreamKey {
            project: self.project.clone(),
            target: target.clone(),
        };
        match history.positions(std::slice::from_ref(&key)).await {
            Ok(p) => p.into_iter().next().map(|p| (target, p)),
            Err(e) => {
                tracing::warn!(error = %e, "history unavailable: the subscription resumes from its first acknowledgement");
                None
            }
        }
    }

    /// A subscription granted at `qos`, starting at `from` when given.
    pub(crate) fn subscribed(
        &mut self,
        topic: &str,
        qos: u8,
        from: Option<(StreamTarget, Position)>,
    ) {
        let qos = qos.min(1);
        match self
            .record
            .subscriptions
            .iter_mut()
            .find(|(t, _)| t == topic)
        {
            Some((_, q)) => *q = qos,
            None => self.record.subscriptions.push((topic.to_owned(), qos)),
        }
        if let Some((t, p)) = from {
            self.record.advance(&t, p);
        }
    }

    /// A subscription ended (or was refused when resumed).
    pub(crate) fn unsubscribed(&mut self, topic: &str) {
        self.record.subscriptions.retain(|(t, _)| t != topic);
        if let Some(target) = target_of(topic, &self.user) {
            self.record.positions.retain(|(t, _)| *t != target);
        }
    }

    /// Writes the record (after a change of subscriptions).
    pub(crate) async fn save(&self) {
        if !self.keep {
            return;
        }
        if let Err(e) = self.sessions.save(&self.key, &self.record, self.ttl).await {
            tracing::warn!(error = %e, "mqtt session not saved");
        }
    }

    /// The client acknowledged offset `at` of the stream `kind`/`topic` (`PUBACK`, in order as
    /// MQTT requires, so everything before it too).
    pub(crate) async fn acked(&mut self, kind: TargetKind, topic: &[u8], at: Position) {
        let target = match kind {
            TargetKind::Broadcast => StreamTarget::Broadcast,
            TargetKind::User => StreamTarget::User(self.user.clone()),
            TargetKind::Group => match std::str::from_utf8(topic)
                .ok()
                .and_then(|t| GroupId::new(t).ok())
            {
                Some(g) => StreamTarget::Group(g),
                None => return,
            },
            TargetKind::Unspecified => return,
        };
        // Only streams the session follows at QoS 1 (a group of the token's, delivered at QoS 0,
        // is not acknowledged).
        if !self
            .record
            .subscriptions
            .iter()
            .any(|(t, q)| t.as_bytes() == topic && *q == 1)
        {
            return;
        }
        self.record.advance(&target, at);
        if !self.keep {
            return;
        }
        if let Err(e) = self.sessions.ack(&self.key, &target, at, self.ttl).await {
            tracing::warn!(error = %e, "mqtt acknowledgement not kept");
        } else {
            metrics::counter!("herald_edge_mqtt_session_acks_total").increment(1);
        }
    }

    /// The client ended the session (5.0 `DISCONNECT` with Session Expiry 0).
    pub(crate) async fn end(&mut self) {
        self.keep = false;
        let _ = self.sessions.remove(&self.key).await;
    }
}
