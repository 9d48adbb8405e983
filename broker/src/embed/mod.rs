//! The embedding API behind [`crate::BrokerHandle`]: server-side
//! publishes, room management as the system principal, and in-process
//! subscriptions.
//!
//! Every request goes the way a client's does: into the sequencer's
//! channel, numbered and committed with the same group commit, and
//! answered after the commit. The system principal is a connection
//! context without a socket: the sequencer hands its reply over as a typed
//! frame, which the awaiting call reads (no bytes encoded and decoded
//! back). It bypasses membership and role checks (the
//! service is trusted), not sequencing, deduplication or durability.

pub use crate::auth::authz;
mod local;

use std::sync::Arc;

use bytes::Bytes;
use confab_codec::{
    Body, CreateRoom, DeviceId, ErrorCode, Frame, MessageKind, PublishAck, Role, RoomId, RoomInfo,
    RoomMeta, Seq, UserId,
};
use tokio::sync::{oneshot, Semaphore};

pub use local::LocalSubscription;

use crate::base::sender_key;
use crate::fanout::{ConnCtx, DirectReply, Outbox};
use crate::sequencer::{PublishReq, RoomOp, RoomOpReq, SeqMsg};
use crate::shared::Shared;

/// The user that server-side messages are sent as unless another is given.
pub const SYSTEM_USER: &str = "system";
/// The device of the system principal.
pub const SYSTEM_DEVICE: &str = "server";

/// Why an embedding call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The broker refused the request, with the code a client would get.
    #[error("{code:?}: {message}")]
    Refused {
        /// The wire code.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl EmbedError {
    fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        EmbedError::Refused {
            code,
            message: message.into(),
        }
    }

    /// The wire code, if the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            EmbedError::Refused { code, .. } => Some(*code),
            EmbedError::ShuttingDown => None,
        }
    }
}

/// A message an embedding service publishes (a bot, a system notice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemMessage {
    /// The room.
    pub room: RoomId,
    /// The sender shown to clients ([`SYSTEM_USER`] by default).
    pub sender: UserId,
    /// `MessageKind::SYSTEM` by default; any client kind or a custom one
    /// also works.
    pub kind: MessageKind,
    /// Non-zero to deduplicate retries, per sender, as for clients.
    pub client_msg_id: u64,
    /// The message this one refers to (edits, deletes, reactions).
    pub refers_to: Option<Seq>,
    /// The thread root.
    pub thread: Option<Seq>,
    /// The payload, opaque to the broker.
    pub payload: Bytes,
}

impl SystemMessage {
    /// A system notice from [`SYSTEM_USER`].
    pub fn new(room: RoomId, payload: impl Into<Bytes>) -> Self {
        Self {
            room,
            sender: UserId::new(SYSTEM_USER).expect("a valid user id"),
            kind: MessageKind::SYSTEM,
            client_msg_id: 0,
            refers_to: None,
            thread: None,
            payload: payload.into(),
        }
    }

    /// Sends it as this user instead (a bot).
    pub fn sender(mut self, user: UserId) -> Self {
        self.sender = user;
        self
    }

    /// Uses this kind.
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.kind = kind;
        self
    }

    /// Deduplicates retries with this id.
    pub fn client_msg_id(mut self, id: u64) -> Self {
        self.client_msg_id = id;
        self
    }
}

/// A committed server-side publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its sequence in the room.
    pub seq: Seq,
    /// The server's timestamp, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// True if `client_msg_id` matched an earlier publish, which this is.
    pub duplicate: bool,
}

/// A room management operation of the system principal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomChange {
    /// Adds a user directly with this role (not `Invited`), or changes it.
    Add(UserId, Role),
    /// Invites a user, who then joins.
    Invite(UserId),
    /// Removes a member (and ends their subscriptions to the room).
    Remove(UserId),
    /// Replaces the room's name, topic and avatar.
    Update(RoomMeta),
}

/// A connection context for one embedding request: the system principal
/// as `user`, whose reply the sequencer hands over typed (the receiver).
fn system_ctx(shared: &Shared, user: UserId) -> (Arc<ConnCtx>, oneshot::Receiver<Frame>) {
    let device = DeviceId::new(SYSTEM_DEVICE).expect("a valid device id");
    let (direct, reply) = DirectReply::new();
    let conn = Arc::new(ConnCtx {
        sender_key: sender_key(user.as_str(), device.as_str()),
        user,
        device,
        // Nothing is delivered to the system principal: its outbox stays
        // empty.
        outbox: Arc::new(Outbox::new(1, shared.stats.clone())),
        inflight: Semaphore::new(1),
        requests: Arc::new(Semaphore::new(1)),
        system: true,
        direct: Some(direct),
        version: confab_codec::PROTOCOL_VERSION,
    });
    (conn, reply)
}

/// Waits for the reply the sequencer hands over.
async fn reply(shared: &Shared, reply: oneshot::Receiver<Frame>) -> Result<Frame, EmbedError> {
    tokio::select! {
        frame = reply => frame.map_err(|_| EmbedError::ShuttingDown),
        _ = shared.shutdown.cancelled() => Err(EmbedError::ShuttingDown),
    }
}

fn refusal(frame: Frame) -> EmbedError {
    match frame.body {
        Body::Error(e) => EmbedError::refused(e.code, e.message),
        other => EmbedError::refused(
            ErrorCode::Internal,
            format!("unexpected reply {}", other.name()),
        ),
    }
}

/// Publishes through the sequencer and waits for the commit.
pub(crate) async fn publish(shared: &Shared, msg: SystemMessage) -> Result<Published, EmbedError> {
    let limit = shared.config.limits.max_payload_len as usize;
    if msg.payload.len() > limit {
        return Err(EmbedError::refused(
            ErrorCode::PayloadTooLarge,
            format!("payload of {} bytes exceeds {limit}", msg.payload.len()),
        ));
    }
    let kind_ok = msg.kind == MessageKind::SYSTEM || msg.kind.client_publishable();
    if !kind_ok {
        return Err(EmbedError::refused(
            ErrorCode::InvalidRequest,
            format!("kind {} is written by the broker itself", msg.kind.0),
        ));
    }
    if msg.kind.needs_reference() && msg.refers_to.is_none() {
        return Err(EmbedError::refused(
            ErrorCode::InvalidRequest,
            "edits, deletes and reactions need refers_to",
        ));
    }
    let (conn, answer) = system_ctx(shared, msg.sender);
    let req = PublishReq {
        conn,
        request_id: 1,
        no_reply: false,
        room: msg.room,
        client_msg_id: msg.client_msg_id,
        kind: msg.kind,
        refers_to: msg.refers_to,
        thread: msg.thread,
        payload: msg.payload,
        received: std::time::Instant::now(),
    };
    if shared.sequencer.send(SeqMsg::Publish(req)).await.is_err() {
        return Err(EmbedError::ShuttingDown);
    }
    match reply(shared, answer).await? {
        Frame {
            body:
                Body::PublishAck(PublishAck {
                    seq,
                    timestamp_us,
                    duplicate,
                    ..
                }),
            ..
        } => Ok(Published {
            seq,
            timestamp_us,
            duplicate,
        }),
        other => Err(refusal(other)),
    }
}

/// Runs a room operation as the system principal.
pub(crate) async fn room_op(shared: &Shared, op: RoomOp) -> Result<Option<RoomInfo>, EmbedError> {
    let (conn, answer) = system_ctx(shared, UserId::new(SYSTEM_USER).expect("a valid user id"));
    let req = RoomOpReq {
        conn,
        request_id: 1,
        op,
        held: None,
    };
    if shared.sequencer.send(SeqMsg::RoomOp(req)).await.is_err() {
        return Err(EmbedError::ShuttingDown);
    }
    let frame = reply(shared, answer).await?;
    match frame.body {
        Body::RoomInfo(info) => Ok(Some(info)),
        Body::Ack(_) => Ok(None),
        _ => Err(refusal(frame)),
    }
}

/// Creates a group room owned by no user (the system principal manages
/// it); `request.invite` users are invited.
pub(crate) async fn create_room(
    shared: &Shared,
    request: CreateRoom,
) -> Result<RoomInfo, EmbedError> {
    room_op(shared, RoomOp::Create(request))
        .await?
        .ok_or_else(|| EmbedError::refused(ErrorCode::Internal, "no RoomInfo for a new room"))
}

/// Applies a membership or metadata change.
pub(crate) async fn change_room(
    shared: &Shared,
    room: RoomId,
    change: RoomChange,
) -> Result<(), EmbedError> {
    let op = match change {
        RoomChange::Add(user, role) => RoomOp::Add(room, user, role),
        RoomChange::Invite(user) => RoomOp::Invite(room, user),
        RoomChange::Remove(user) => RoomOp::Remove(room, user),
        RoomChange::Update(meta) => RoomOp::Update(room, meta),
    };
    room_op(shared, op).await.map(|_| ())
}
