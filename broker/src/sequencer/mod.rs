//! The sequencer: one dedicated thread that numbers every publish and
//! writes them to the log by group commit.
//!
//! Sessions send requests over a channel. The thread takes whatever has
//! queued up (up to `storage.max_batch`), assigns each publish the next
//! sequence of its room, writes the whole group in one atomic batch, and
//! only then acknowledges the publishers and hands the events to the
//! fan-out. A single writer makes sequences gap-free without any lock; the
//! batch size grows by itself with the load, which is what keeps `fsync`
//! mode fast (one fsync per group, not per message).
//!
//! It is two layers: [`core::Core`], a state machine over the storage trait
//! that turns a group of requests into a commit and a list of outcomes
//! (tested without threads or sockets, with failing storage), and
//! [`driver::Sequencer`], the thread that feeds it and carries the outcomes
//! out (replies, fan-out, push). A driver that cannot hand events to the
//! fan-out stops: the broker must not acknowledge what nobody will deliver.
//!
//! The writer thread never reads storage: a request that needs a read
//! (a room used for the first time, a retry's original, an edit's target,
//! a marker) waits, with the requests behind it in its rooms, while reader
//! threads make the read (see [`reads`]).

mod core;
#[cfg(test)]
mod core_tests;
mod dedup;
mod driver;
mod hooks;
mod per_room;
mod queue;
mod reads;
mod references;
mod room_ops;
mod user_rooms;

pub(crate) use driver::{Readers, Sequencer};
pub(crate) use queue::{queue, SeqRx, SeqTx};
#[cfg(test)]
pub(crate) use reads::{read, Loaded, Need};
pub(crate) use room_ops::{ReceiptReq, RoomOp, RoomOpReq};

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use confab_codec::{ErrorCode, MessageKind, Publish, RoomId, Seq};
use tokio::sync::oneshot;

use crate::fanout::ConnCtx;
use crate::fanout::SubscribeCmd;
use crate::storage::MetaWrite;

/// A publish on its way to the sequencer.
#[derive(Debug)]
pub(crate) struct PublishReq {
    pub(crate) conn: Arc<ConnCtx>,
    pub(crate) request_id: u32,
    pub(crate) no_reply: bool,
    pub(crate) room: RoomId,
    pub(crate) client_msg_id: u64,
    pub(crate) kind: MessageKind,
    pub(crate) refers_to: Option<Seq>,
    pub(crate) thread: Option<Seq>,
    pub(crate) payload: Bytes,
    /// When the session received it (for the latency histograms).
    pub(crate) received: Instant,
}

impl PublishReq {
    /// The request for a decoded `Publish` frame of `conn`.
    pub(crate) fn new(
        conn: Arc<ConnCtx>,
        request_id: u32,
        no_reply: bool,
        p: Publish,
        received: Instant,
    ) -> Self {
        Self {
            conn,
            request_id,
            no_reply,
            room: p.room,
            client_msg_id: p.client_msg_id,
            kind: p.kind,
            refers_to: p.refers_to,
            thread: p.thread,
            payload: p.payload,
            received,
        }
    }
}

/// Requests to the sequencer.
#[derive(Debug)]
pub(crate) enum SeqMsg {
    Publish(PublishReq),
    /// Stamped with each room's bounds at its place in the commit order.
    Subscribe(SubscribeCmd),
    /// Ends subscriptions; forwarded to the fan-out in order.
    Unsubscribe(Vec<Arc<crate::fanout::Subscription>>),
    /// Creates a room or changes its membership or metadata.
    RoomOp(RoomOpReq),
    /// Moves a delivered or read marker.
    Receipt(ReceiptReq),
    /// Retention: delete the room's entries below `before`, and the
    /// idempotency entries of those messages, and move its `first` bound.
    Trim {
        /// The room.
        room: RoomId,
        /// The oldest sequence kept (never above the head).
        before: Seq,
        /// (sender, client message id) of the trimmed messages that carry
        /// an id.
        forget: Vec<(Arc<str>, u64)>,
    },
    /// Metadata writes that are not a room's (a last-seen time, a push
    /// registration), committed with the next group: the sequencer is the
    /// only writer of the metadata keyspace.
    Meta(MetaReq),
    /// Commit what came before, flush, stop the fan-out, and exit.
    Stop,
    /// Never sent: the core parks it after a failed commit that wrote to
    /// `room`. Once the room is read again, the entries of `events` that
    /// storage holds after all (the engine wrote them before it failed)
    /// are handed to the fan-out, before anything newer of the room.
    Recover {
        room: Arc<crate::rooms::Room>,
        events: Vec<(Seq, Bytes)>,
    },
    /// Cluster mode: committed entries of a room, as another node's writer
    /// stored them in the shared log (in order, each an `Event` frame).
    /// Those above the room's head here are handed to the fan-out and move
    /// the head; the others are already known and dropped. A gap after the
    /// head is fine: subscriptions that see one read it from the log.
    Followed {
        room: RoomId,
        events: Vec<(Seq, Bytes)>,
    },
}

/// Metadata writes and where to say how their commit went.
#[derive(Debug)]
pub(crate) struct MetaReq {
    pub(crate) writes: Vec<MetaWrite>,
    pub(crate) done: oneshot::Sender<Result<(), ErrorCode>>,
}

/// Commits `writes` through the sequencer and waits for the commit.
///
/// # Errors
/// The code to report: `StorageFull`, `Internal`, or `ShuttingDown` if the
/// sequencer is gone.
pub(crate) async fn write_meta(sequencer: &SeqTx, writes: Vec<MetaWrite>) -> Result<(), ErrorCode> {
    let (done, result) = oneshot::channel();
    sequencer
        .send(SeqMsg::Meta(MetaReq { writes, done }))
        .await
        .map_err(|_| ErrorCode::ShuttingDown)?;
    result.await.unwrap_or(Err(ErrorCode::ShuttingDown))
}
