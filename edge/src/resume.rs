//! Resume: a client that names where it stopped on a stream (a group, its user stream, the
//! broadcasts) gets the messages it missed from history, in order, then live ones, with no gap
//! and no duplicate at the seam.
//!
//! The hub holds the connection's live messages of that stream from before the first read
//! ([`Hub::begin_recovery`]); a [`Replay`] task reads history page by page, queues each page once
//! the connection's queue has room (a replay is paced by its reader, never cut as a slow
//! consumer), then joins the held live messages ([`Hub::finish_recovery`]) and answers
//! `resumed` (native clients; MQTT persistent sessions resume the same way, without an answer).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::codes::FrameError;
use herald_core::history::{History, HistoryError, Page, StreamKey, StreamTarget};
use herald_core::ids::{GroupId, IdError, ProjectId, UserId};
use herald_core::proto::bus::{Envelope, TargetKind};
use prost::Message as _;

use crate::codec::Wire;
use crate::codec::mqtt::takeover::SharedOutbound;
use crate::hub::{ConnHandle, Hub, Seam};
use crate::protocol::{self, Position, StreamOf};

/// Messages read from history at once.
const PAGE: usize = 256;
/// Tries of a history read again before a resume is answered "history unavailable".
const READ_TRIES: u32 = 4;
/// Reads of history after which held live messages that never join up go on as they are.
const MAX_ROUNDS: u32 = 10_000;

/// The hub's name of a client's stream: target kind, name, and the history's key.
pub(crate) fn stream_of(
    s: &StreamOf,
    project: &ProjectId,
    user: &UserId,
) -> Result<(TargetKind, String, StreamKey), IdError> {
    let (kind, name, target) = match s {
        StreamOf::Group(g) => {
            let id = GroupId::new(g)?;
            (TargetKind::Group, g.clone(), StreamTarget::Group(id))
        }
        StreamOf::User => (
            TargetKind::User,
            user.as_str().to_owned(),
            StreamTarget::User(user.clone()),
        ),
        StreamOf::Broadcast => (
            TargetKind::Broadcast,
            String::new(),
            StreamTarget::Broadcast,
        ),
    };
    Ok((
        kind,
        name,
        StreamKey {
            project: project.clone(),
            target,
        },
    ))
}

/// One stream of one connection to bring up to date.
pub(crate) struct Replay {
    /// The form the connection takes messages in (its protocol in its transport's framing).
    pub(crate) form: crate::codec::Form,
    pub(crate) hub: Arc<Hub>,
    pub(crate) history: Arc<dyn History>,
    pub(crate) conn: ConnHandle,
    /// The request id answered (`subscribe`'s; 0 for `auth`).
    pub(crate) id: u64,
    pub(crate) stream: StreamOf,
    pub(crate) kind: TargetKind,
    pub(crate) name: String,
    pub(crate) key: StreamKey,
    pub(crate) since: Position,
    /// Chunks of about this many bytes are queued while the connection's queue holds less than
    /// this.
    pub(crate) room: usize,
    /// How the client is told the replay's outcome (and its protocol).
    pub(crate) answer: Answer,
}

/// How a resuming client is told that its missed messages were sent.
pub(crate) enum Answer {
    /// Native: `resumed` (or `error` 4503) with the request id.
    Native,
    /// MQTT: no answer (the `CONNACK` went before). The replay also waits for room in the
    /// connection's QoS 1 window state, where rendered messages wait for acknowledgements.
    Mqtt(SharedOutbound),
    /// STOMP: the `SUBSCRIBE`'s `RECEIPT`, sent once the missed messages were, with the
    /// stream's `epoch`, the last `offset` replayed and `recovered`; nothing when the client
    /// asked for no receipt.
    Stomp {
        /// The STOMP version spoken.
        version: crate::codec::stomp::Version,
        /// The `receipt` header of the `SUBSCRIBE`.
        receipt: Option<Box<str>>,
    },
}

impl Answer {
    /// The protocol messages are encoded for.
    pub(crate) fn wire(&self) -> Wire {
        match self {
            Answer::Native => Wire::Native,
            Answer::Mqtt(_) => Wire::Mqtt,
            Answer::Stomp { .. } => Wire::Stomp,
        }
    }
}

impl Replay {
    /// Sends what the client missed, then lets live messages through.
    pub(crate) async fn run(self) {
        let mut after = self.since.offset;
        let mut first_read = true;
        let mut recovered = true;
        let mut epoch = self.since.epoch;
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                // Held messages never joined up with history: pass them on as they are.
                tracing::warn!(stream = %self.key, "resume: live messages never joined history");
                self.hub
                    .abandon_recovery(self.conn, self.kind, &self.name, None);
                return;
            }
            let page = match self.read_retrying(after).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(stream = %self.key, error = %e, "resume: history unavailable");
                    metrics::counter!("herald_edge_resumes_total", "result" => "unavailable")
                        .increment(1);
                    let answer = match &self.answer {
                        Answer::Native => Some(protocol::error(
                            self.id,
                            FrameError::HistoryUnavailable,
                            "history unavailable: live messages follow, missed ones were not sent",
                        )),
                        Answer::Mqtt(_) => None,
                        Answer::Stomp { version, receipt } => receipt.as_deref().map(|r| {
                            crate::codec::stomp::encode::receipt_resumed(*version, r, None, false)
                        }),
                    };
                    self.hub
                        .abandon_recovery(self.conn, self.kind, &self.name, answer);
                    return;
                }
            };
            if first_read {
                first_read = false;
                if page.position.epoch != self.since.epoch {
                    // Another storage: the client's offsets mean nothing here. Nothing is
                    // replayed; the client resyncs from its own source of truth, which stands
                    // for the stream up to its position now. Live messages follow from the
                    // position on: held ones at or below it are dropped (the answer names it),
                    // and a gap after it is read from history like any other seam.
                    epoch = page.position.epoch;
                    after = page.position.offset;
                    recovered = false;
                    match self.finish(after, epoch, recovered) {
                        Seam::Joined(_) | Seam::Gone => return,
                        Seam::ReadAgain(from) => {
                            after = from;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            continue;
                        }
                    }
                }
                if page.first > after + 1 {
                    // Some of the missed messages are past retention: what is kept is sent.
                    recovered = false;
                }
            }
            let full = page.messages.len() == PAGE;
            // Queued in chunks of about the room, each once there is room: a page of
            // large messages never lands at once.
            let mut frames = Vec::new();
            let mut bytes = 0;
            let last = page.messages.last().map(|m| m.0);
            for (offset, data) in page.messages {
                after = offset;
                match Envelope::decode(data) {
                    Ok(mut env) => {
                        env.seq = offset;
                        env.epoch = epoch;
                        let f = crate::codec::encode_form(self.form, &env);
                        bytes += f.len();
                        frames.push(f);
                    }
                    Err(e) => {
                        tracing::warn!(stream = %self.key, offset, error = %e, "resume: unreadable message skipped");
                    }
                }
                if bytes >= self.room || (Some(offset) == last && !frames.is_empty()) {
                    if !self.hub.push_replay(self.conn, std::mem::take(&mut frames)) {
                        return;
                    }
                    bytes = 0;
                    if (full || Some(offset) != last) && !self.wait_for_room().await {
                        return;
                    }
                }
            }
            if full {
                continue;
            }
            match self.finish(after, epoch, recovered) {
                Seam::Joined(_) | Seam::Gone => return,
                Seam::ReadAgain(from) => {
                    after = from;
                    // Let what is missing reach history (and other tasks run).
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }

    fn finish(&self, after: u64, epoch: u32, recovered: bool) -> Seam {
        let answer = self.resumed(epoch, after, recovered);
        let seam = self
            .hub
            .finish_recovery(self.conn, self.kind, &self.name, after, answer);
        if let Seam::Joined(_) = seam {
            metrics::counter!("herald_edge_resumes_total", "result" => if recovered { "recovered" } else { "lost" })
                .increment(1);
        }
        seam
    }

    /// The answer once the stream is at `offset` of `epoch`.
    fn resumed(&self, epoch: u32, offset: u64, recovered: bool) -> Option<Bytes> {
        match &self.answer {
            Answer::Native => Some(protocol::resumed(
                self.id,
                &self.stream,
                epoch,
                offset,
                recovered,
            )),
            Answer::Mqtt(_) => None,
            Answer::Stomp { version, receipt } => receipt.as_deref().map(|r| {
                crate::codec::stomp::encode::receipt_resumed(
                    *version,
                    r,
                    Some((epoch, offset)),
                    recovered,
                )
            }),
        }
    }

    /// Reads a page, trying again for about a second when history fails (a connection being
    /// re-established after a Redis restart fails its first call), so a transient error is not
    /// answered 4503.
    async fn read_retrying(&self, after: u64) -> Result<Page, HistoryError> {
        let mut tries = 0;
        loop {
            match self.history.read(&self.key, after, PAGE).await {
                Ok(p) => return Ok(p),
                Err(e) if tries >= READ_TRIES => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Waits until the connection's queue has room for another page; false once it is gone.
    async fn wait_for_room(&self) -> bool {
        loop {
            let waiting = match &self.answer {
                Answer::Mqtt(out) => out.lock().waiting_bytes(),
                _ => 0,
            };
            match self.hub.queued(self.conn) {
                None => return false,
                Some(q) if q + waiting < self.room => return true,
                Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}
