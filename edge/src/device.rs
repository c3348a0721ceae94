//! Devices: a native client that names its device (`auth` with `device`) gets its user stream at
//! least once. The server keeps, per device of a user, the last offset of the user stream the
//! device acknowledged (`ack`), in the [`Sessions`] store beside history; at every connect the
//! device's user stream resumes from there, so what was sent and never acknowledged (and what
//! came while it was away) is sent again, each message with its offset for the client to drop
//! what it already handled.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::codes::FrameError;
use herald_core::history::{History, HistoryConfig, StreamKey, StreamTarget};
use herald_core::ids::{ProjectId, UserId};
use herald_core::sessions::{SessionKey, Sessions};

use crate::protocol::{self, Since, StreamOf};

/// How long a device's record outlives the history it points into: a day more than the
/// retention's age, as a stream's own offset and epoch do.
const GRACE: Duration = Duration::from_secs(24 * 3600);

/// A connection that is a device: where its acknowledgements go. Leaving renews the record.
pub(crate) struct Device {
    pub(crate) key: SessionKey,
    pub(crate) stream: StreamTarget,
    pub(crate) ttl: Duration,
    pub(crate) sessions: Arc<dyn Sessions>,
}

impl Drop for Device {
    fn drop(&mut self) {
        // The record lives `ttl` from the device's last connection, not its first.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (sessions, key, ttl) = (self.sessions.clone(), self.key.clone(), self.ttl);
            rt.spawn(async move {
                if let Err(e) = sessions.touch(&key, ttl).await {
                    tracing::debug!(error = %e, "device record not renewed");
                }
            });
        }
    }
}

/// Sets up the device `name` of `user` at connect: where its user stream resumes (added to
/// `resume` unless the client named the user stream itself, which wins) and its record.
/// Problems are error frames for after the welcome; the connection goes on without the device.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    name: &str,
    project: &ProjectId,
    user: &UserId,
    history_cfg: Option<&HistoryConfig>,
    history: &dyn History,
    sessions: &Arc<dyn Sessions>,
    resume: &mut Vec<Since>,
    errors: &mut Vec<Bytes>,
) -> Option<Box<Device>> {
    if let Err(e) = UserId::new(name) {
        errors.push(protocol::error(
            0,
            FrameError::BadName,
            &format!("device: {e}"),
        ));
        return None;
    }
    let stream = StreamTarget::User(user.clone());
    let Some(cfg) = history_cfg.filter(|h| h.keeps(&stream)) else {
        errors.push(protocol::error(
            0,
            FrameError::NotRecoverable,
            "this project keeps no user streams: device acknowledgements are not kept",
        ));
        return None;
    };
    let ttl = cfg.retention().ttl + GRACE;
    let key = SessionKey::device(project, user, name);
    let unavailable = |errors: &mut Vec<Bytes>, e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "device record unavailable");
        errors.push(protocol::error(
            0,
            FrameError::HistoryUnavailable,
            "history unavailable: the user stream is not resumed",
        ));
    };
    if !resume.iter().any(|s| s.stream == StreamOf::User) {
        let kept = match sessions.load(&key).await {
            Ok(r) => r.and_then(|r| r.position(&stream)),
            Err(e) => {
                unavailable(errors, &e);
                return None;
            }
        };
        let at = match kept {
            Some(p) => p,
            None => {
                // A new device: from where the stream stands now, kept at once so the next
                // connection resumes from here even without an acknowledgement.
                let sk = StreamKey {
                    project: project.clone(),
                    target: stream.clone(),
                };
                let p = match history.positions(std::slice::from_ref(&sk)).await {
                    Ok(p) => p.into_iter().next(),
                    Err(e) => {
                        unavailable(errors, &e);
                        return None;
                    }
                };
                let p = p?;
                if let Err(e) = sessions.ack(&key, &stream, p, ttl).await {
                    unavailable(errors, &e);
                    return None;
                }
                p
            }
        };
        resume.push(Since {
            stream: StreamOf::User,
            position: crate::protocol::Position {
                offset: at.offset,
                epoch: at.epoch,
            },
        });
    }
    Some(Box::new(Device {
        key,
        stream,
        ttl,
        sessions: sessions.clone(),
    }))
}

/// Why an `ack` was refused.
#[derive(Debug)]
pub(crate) enum AckRefused {
    /// The connection named no device.
    NoDevice,
    /// The store could not keep it.
    Unavailable,
}

/// Keeps that `device` handled its user stream up to `at`.
pub(crate) async fn ack_user(
    device: Option<&Device>,
    at: crate::protocol::Position,
) -> Result<(), AckRefused> {
    let Some(d) = device else {
        return Err(AckRefused::NoDevice);
    };
    let at = herald_core::history::Position {
        offset: at.offset,
        epoch: at.epoch,
    };
    match d.sessions.ack(&d.key, &d.stream, at, d.ttl).await {
        Ok(()) => {
            metrics::counter!("herald_edge_device_acks_total").increment(1);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "device acknowledgement not kept");
            Err(AckRefused::Unavailable)
        }
    }
}
