//! The messages between the handle and the connection task.

use std::sync::Arc;

use confab_codec::{Body, Publish, PublishAck, RoomId, Seq};
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::events::{ConnectionEvent, ConnectionState, RoomEvent, Signal};
use crate::subscription::EndSlot;

/// A request from the application to the connection task.
pub(crate) enum Command {
    Publish(Outgoing),
    Subscribe(SubscribeCmd),
    Unsubscribe {
        room: RoomId,
        id: u64,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Request {
        body: Body,
        mode: ReqMode,
        reply: oneshot::Sender<Result<Body, ClientError>>,
    },
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// A publish entering the outbound queue, with its queue slot (none for a
/// publish restored from the outbox store beyond the queue's capacity).
pub(crate) struct Outgoing {
    pub(crate) publish: Publish,
    pub(crate) reply: oneshot::Sender<Result<PublishAck, ClientError>>,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

pub(crate) struct SubscribeCmd {
    pub(crate) room: RoomId,
    pub(crate) id: u64,
    /// `Some`: start here; `None`: from the cursor, or live.
    pub(crate) from: Option<Seq>,
    pub(crate) tx: mpsc::Sender<RoomEvent>,
    pub(crate) end: Arc<EndSlot>,
    pub(crate) reply: oneshot::Sender<Result<(), ClientError>>,
}

/// Messages from subscriptions (unbounded, but at most two per
/// subscription: one resume per pause, one drop).
#[derive(Debug)]
pub(crate) enum SubCtl {
    /// The application drained a paused subscription.
    Resume { room: RoomId, id: u64 },
    /// The application dropped a subscription.
    Dropped { room: RoomId, id: u64 },
}

/// How a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqMode {
    /// Wait for the reply frame. Queued while offline.
    Reply,
    /// No reply on success: done once handed to the connection. Queued
    /// while offline.
    NoReply,
    /// No reply on success, and pointless later: refused while offline.
    Ephemeral,
}

/// What the handle gives the task at start.
pub(crate) struct Parts {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) dialer: Arc<crate::transport::Dialer>,
    pub(crate) cmds: mpsc::Receiver<Command>,
    pub(crate) ctl: mpsc::UnboundedReceiver<SubCtl>,
    pub(crate) ctl_tx: mpsc::UnboundedSender<SubCtl>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) events: broadcast::Sender<ConnectionEvent>,
    pub(crate) signals: broadcast::Sender<Signal>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) first_connect: Option<oneshot::Sender<Result<(), ClientError>>>,
    /// Publishes an earlier run left in the outbox store.
    pub(crate) restored: Vec<Outgoing>,
    /// Set to the fatal error when the task stops for one, before any
    /// waiting call is answered.
    pub(crate) stopped: Arc<std::sync::OnceLock<ClientError>>,
}
