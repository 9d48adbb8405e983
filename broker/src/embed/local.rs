//! In-process subscriptions: a room's events without a socket.
//!
//! A local subscription is an ordinary device subscription whose outbox is
//! read by [`LocalSubscription::next`] instead of a socket writer. It is
//! registered through the sequencer, so it starts at an exact point of the
//! commit order, and the fan-out treats it like any device: while the
//! reader keeps up, events are queued live; when its bounded queue
//! (`delivery.queue_capacity`) is full, it switches to catch-up from the
//! log and resumes live once it has read up. A slow reader costs memory
//! only up to its queue, and never stalls publishers or other devices.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use confab_codec::{
    Body, ErrorCode, EventRecord, Frame, RoomId, Seq, StartAt, SubscribeResult, UserId,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{EmbedError, SYSTEM_USER};
use crate::fanout::{Drained, Outbox, SubscribeCmd, SubscribeItem, Subscription};
use crate::sequencer::{SeqMsg, SeqTx};
use crate::shared::Shared;
use crate::storage::LogBounds;

/// Most bytes moved out of the outbox per read.
const READ_CHUNK: usize = 1 << 20;

/// A room's events, in sequence order, without gaps or duplicates, from
/// the point given to [`crate::BrokerHandle::subscribe`]: the same
/// sequence a socket client sees. Dropping it unsubscribes.
pub struct LocalSubscription {
    room: RoomId,
    outbox: Arc<Outbox>,
    sub: Arc<Subscription>,
    sequencer: SeqTx,
    shutdown: CancellationToken,
    buf: BytesMut,
    pending: VecDeque<EventRecord>,
    head: Seq,
    first: Seq,
    code: ErrorCode,
    ended: bool,
}

impl std::fmt::Debug for LocalSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSubscription")
            .field("room", &self.room)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl LocalSubscription {
    /// Registers the subscription and waits for the fan-out to accept it.
    pub(crate) async fn start(
        shared: &Shared,
        room: RoomId,
        start: StartAt,
    ) -> Result<LocalSubscription, EmbedError> {
        let outbox = Arc::new(Outbox::new(
            shared.config.delivery.queue_capacity,
            shared.stats.clone(),
        ));
        let sub = Arc::new(Subscription::for_user(
            shared.rooms.get_or_create(&room),
            outbox.clone(),
            None,
        ));
        let cmd = SubscribeCmd {
            outbox: outbox.clone(),
            user: UserId::new(SYSTEM_USER).expect("a valid user id"),
            system: true,
            request_id: 1,
            results: vec![SubscribeResult {
                room: room.clone(),
                code: ErrorCode::Normal,
                head: Seq(0),
                first: Seq(1),
            }],
            held: None,
            items: vec![SubscribeItem {
                index: 0,
                sub: sub.clone(),
                replaces: None,
                start,
                bounds: LogBounds::default(),
                refused: None,
            }],
        };
        if shared.sequencer.send(SeqMsg::Subscribe(cmd)).await.is_err() {
            return Err(EmbedError::ShuttingDown);
        }
        let mut local = LocalSubscription {
            room,
            outbox,
            sub,
            sequencer: shared.sequencer.clone(),
            shutdown: shared.shutdown.clone(),
            buf: BytesMut::new(),
            pending: VecDeque::new(),
            head: Seq(0),
            first: Seq(1),
            code: ErrorCode::Normal,
            ended: false,
        };
        // The SubscribeAck comes first on the (single) event lane, ahead of
        // every event of the subscription.
        loop {
            let Some(frame) = local.next_frame().await else {
                return Err(EmbedError::ShuttingDown);
            };
            if let Body::SubscribeAck(ack) = frame.body {
                let result = ack.results.into_iter().next();
                let Some(result) = result else {
                    return Err(EmbedError::refused(
                        ErrorCode::Internal,
                        "empty SubscribeAck",
                    ));
                };
                if !matches!(result.code, ErrorCode::Normal | ErrorCode::HistoryTruncated) {
                    return Err(EmbedError::refused(
                        result.code,
                        format!("cannot subscribe to {}", local.room),
                    ));
                }
                local.head = result.head;
                local.first = result.first;
                local.code = result.code;
                return Ok(local);
            }
        }
    }

    /// The room.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The room's last sequence when the subscription started.
    pub fn head_at_start(&self) -> Seq {
        self.head
    }

    /// The oldest retained sequence when the subscription started.
    pub fn first_retained(&self) -> Seq {
        self.first
    }

    /// True if the requested start was older than the retained log, so the
    /// subscription started at [`Self::first_retained`] instead.
    pub fn history_truncated(&self) -> bool {
        self.code == ErrorCode::HistoryTruncated
    }

    /// The next event, or None once the broker shuts down (or the room's
    /// log could not be read).
    pub async fn next(&mut self) -> Option<EventRecord> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let frame = self.next_frame().await?;
            match frame.body {
                Body::Event(e) => self.pending.push_back(e.event),
                Body::EventBatch(b) => self.pending.extend(b.events),
                // Lagging and CaughtUp only tell a socket client why events
                // arrive in batches; receipts and typing are ephemeral.
                _ => {}
            }
        }
    }

    /// The next frame from the outbox.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match Frame::decode(&mut self.buf, u32::MAX) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(e) => {
                    warn!(room = %self.room, error = %e, "undecodable frame in a local subscription");
                    self.ended = true;
                    self.buf.clear();
                    return None;
                }
            }
            if self.ended {
                return None;
            }
            match self.outbox.drain_into(&mut self.buf, READ_CHUNK) {
                Drained::Frames => {}
                Drained::Finished => self.ended = true,
                Drained::Empty => {
                    tokio::select! {
                        _ = self.outbox.ready() => {}
                        _ = self.shutdown.cancelled() => self.ended = true,
                    }
                }
            }
        }
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.sub.close();
        self.outbox.abort();
        let _ = self
            .sequencer
            .send_now(SeqMsg::Unsubscribe(vec![self.sub.clone()]));
    }
}
