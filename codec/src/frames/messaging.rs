//! Subscriptions, publishing, delivered events and history.

use bytes::Bytes;

use crate::error::{CodecError, ErrorCode};
use crate::ids::{DeviceId, RoomId, Seq, UserId};
use crate::wire::{wire_enum, wire_struct, Field, Out, Reader};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartAt {
    /// Only messages committed after the subscription.
    Live,
    /// The backlog from this sequence on (inclusive), then live, with no
    /// gap and no duplicate.
    From(Seq),
}

impl Field for StartAt {
    const MIN_LEN: usize = 9;
    fn put<O: Out>(&self, _: &'static str, out: &mut O) -> Result<(), CodecError> {
        match self {
            StartAt::Live => {
                out.put_u8(0);
                out.put_u64(0);
            }
            StartAt::From(seq) => {
                out.put_u8(1);
                out.put_u64(seq.0);
            }
        }
        Ok(())
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        let offset = r.offset();
        let mode = r.u8(field)?;
        let seq = r.u64(field)?;
        match mode {
            0 => Ok(StartAt::Live),
            1 => Ok(StartAt::From(Seq(seq))),
            value => Err(CodecError::InvalidValue {
                field,
                offset,
                value: u64::from(value),
            }),
        }
    }
}

wire_struct! {
    /// One room of a `Subscribe` (or of `Hello.resume`).
    pub struct SubscribeItem {
        /// The room.
        pub room: RoomId,
        /// Live only, or from a sequence.
        pub start: StartAt,
    }
}

wire_struct! {
    /// Client to server: follow one or many rooms.
    pub struct Subscribe {
        /// The rooms, each with where to start.
        pub items: Vec<SubscribeItem>,
    }
}

wire_struct! {
    /// The outcome for one room of a `Subscribe`.
    pub struct SubscribeResult {
        /// The room.
        pub room: RoomId,
        /// `Normal` on success, else why this room was refused
        /// (`NotMember`, `NoSuchRoom`, `TooManyRooms`, `HistoryTruncated`, ...).
        pub code: ErrorCode,
        /// The room's last committed sequence when the subscription started
        /// (0 for an empty room).
        pub head: Seq,
        /// The oldest sequence still retained (head + 1 if none is).
        pub first: Seq,
    }
}

wire_struct! {
    /// Server to client: the answer to `Subscribe`, one result per room, in
    /// request order.
    pub struct SubscribeAck {
        /// Per-room outcome.
        pub results: Vec<SubscribeResult>,
    }
}

wire_struct! {
    /// Client to server: stop following rooms. Answered by `Ack`.
    pub struct Unsubscribe {
        /// The rooms.
        pub rooms: Vec<RoomId>,
    }
}

wire_struct! {
    /// Server to client: the device fell behind in this room, so live
    /// delivery was replaced by catch-up from the log. Nothing is lost: the
    /// next events of the room start at `resume_from`.
    pub struct Lagging {
        /// The room.
        pub room: RoomId,
        /// The first sequence catch-up will deliver.
        pub resume_from: Seq,
        /// The room's head when the device was switched.
        pub head: Seq,
    }
}

wire_struct! {
    /// Server to client: catch-up for this room reached the head; the room
    /// is live again.
    pub struct CaughtUp {
        /// The room.
        pub room: RoomId,
        /// The last sequence delivered by catch-up.
        pub seq: Seq,
    }
}

/// What a room message is. A one-byte open set: values 1-127 are defined by
/// the protocol, 128-255 are free for applications. Receivers pass on kinds
/// they do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKind(pub u8);

impl MessageKind {
    /// An ordinary message; the payload is the app's content.
    pub const MESSAGE: MessageKind = MessageKind(1);
    /// Replaces the payload of the message at `refers_to`.
    pub const EDIT: MessageKind = MessageKind(2);
    /// Tombstones the message at `refers_to`.
    pub const DELETE: MessageKind = MessageKind(3);
    /// A reaction (payload: the reaction, e.g. an emoji) to `refers_to`.
    pub const REACTION: MessageKind = MessageKind(4);
    /// Written by the server or an embedding service.
    pub const SYSTEM: MessageKind = MessageKind(5);
    /// Membership: the sender joined (server-written).
    pub const MEMBER_JOINED: MessageKind = MessageKind(6);
    /// Membership: the sender left (server-written).
    pub const MEMBER_LEFT: MessageKind = MessageKind(7);
    /// Membership: the payload's user was invited (server-written).
    pub const MEMBER_INVITED: MessageKind = MessageKind(8);
    /// Membership: the payload's user was removed (server-written).
    pub const MEMBER_REMOVED: MessageKind = MessageKind(9);
    /// The room's metadata changed (server-written).
    pub const ROOM_UPDATED: MessageKind = MessageKind(10);
    /// The first application-defined kind.
    pub const FIRST_CUSTOM: MessageKind = MessageKind(128);

    /// Whether a client may publish this kind itself.
    pub fn client_publishable(self) -> bool {
        matches!(self.0, 1..=4) || self >= Self::FIRST_CUSTOM
    }

    /// Whether this kind must refer to an earlier message.
    pub fn needs_reference(self) -> bool {
        matches!(self.0, 2..=4)
    }
}

impl Field for MessageKind {
    const MIN_LEN: usize = 1;
    fn put<O: Out>(&self, _: &'static str, out: &mut O) -> Result<(), CodecError> {
        out.put_u8(self.0);
        Ok(())
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        Ok(MessageKind(r.u8(field)?))
    }
}

wire_struct! {
    /// Client to server: append a message to a room. Answered by
    /// `PublishAck` (unless the header's NO_REPLY flag is set) or `Error`.
    pub struct Publish {
        /// The room.
        pub room: RoomId,
        /// Chosen by the client, unique per device; a retry with the same id
        /// is acknowledged with the original sequence and stored once.
        /// 0 disables deduplication.
        pub client_msg_id: u64,
        /// What the message is.
        pub kind: MessageKind,
        /// For a message: the one it replies to. For an edit, delete or
        /// reaction: its target. Absent is encoded as 0.
        pub refers_to: Option<Seq>,
        /// The root of the thread this message belongs to. Absent is 0.
        pub thread: Option<Seq>,
        /// Opaque content.
        pub payload: Bytes,
    }
}

wire_struct! {
    /// Server to client: a publish was committed to the room's log.
    pub struct PublishAck {
        /// The room.
        pub room: RoomId,
        /// The publish's client message id.
        pub client_msg_id: u64,
        /// The sequence the message got.
        pub seq: Seq,
        /// Server commit time, microseconds since the Unix epoch.
        pub timestamp_us: u64,
        /// True if this was a retry of an already stored publish.
        pub duplicate: bool,
    }
}

wire_struct! {
    /// One stored room message, as kept in the log and as delivered.
    pub struct EventRecord {
        /// Its sequence in the room.
        pub seq: Seq,
        /// Server commit time, microseconds since the Unix epoch.
        pub timestamp_us: u64,
        /// The user who sent it.
        pub sender: UserId,
        /// The device it was sent from.
        pub device: DeviceId,
        /// The sender's client message id (0 if none).
        pub client_msg_id: u64,
        /// What it is.
        pub kind: MessageKind,
        /// Reply-to or target, as in `Publish`.
        pub refers_to: Option<Seq>,
        /// Thread root, as in `Publish`.
        pub thread: Option<Seq>,
        /// Opaque content.
        pub payload: Bytes,
    }
}

wire_struct! {
    /// Server to client: one room message.
    pub struct Event {
        /// The room.
        pub room: RoomId,
        /// The message.
        pub event: EventRecord,
    }
}

wire_struct! {
    /// Server to client: consecutive messages of one room in one frame, in
    /// ascending sequence order.
    pub struct EventBatch {
        /// The room.
        pub room: RoomId,
        /// The messages.
        pub events: Vec<EventRecord>,
    }
}

wire_enum! {
    /// Which side of the anchor a history page reads.
    pub enum Direction {
        /// Messages with sequence below the anchor, newest first in the
        /// log but returned in ascending order. Anchor 0 means the head.
        Before = 1,
        /// Messages with sequence above the anchor, ascending.
        After = 2,
    }
}

wire_struct! {
    /// Client to server: read a page of a room's log. Answered by `HistoryPage`.
    pub struct HistoryRequest {
        /// The room.
        pub room: RoomId,
        /// Before or after the anchor.
        pub direction: Direction,
        /// The anchor sequence (exclusive).
        pub anchor: Seq,
        /// Most events wanted; the server may return fewer.
        pub limit: u16,
    }
}

wire_struct! {
    /// Server to client: a page of history, in ascending sequence order.
    pub struct HistoryPage {
        /// The room.
        pub room: RoomId,
        /// Whether more events lie beyond this page in the requested direction.
        pub has_more: bool,
        /// The oldest retained sequence of the room.
        pub first: Seq,
        /// The events.
        pub events: Vec<EventRecord>,
    }
}

/// Convenience for building events.
impl EventRecord {
    /// Wraps this record with its room into an `Event` body.
    pub fn in_room(self, room: RoomId) -> Event {
        Event { room, event: self }
    }

    /// Encoded length of the record alone.
    pub fn encoded_len(&self) -> usize {
        let mut c = crate::wire::Counter::default();
        // A record's own fields cannot overflow their prefixes except the
        // payload, which the counter does not check.
        let _ = Field::put(self, "event", &mut c);
        c.0
    }

    /// Appends the record's wire form (as stored in the log).
    ///
    /// # Errors
    /// If a field is too long for its length prefix.
    pub fn encode(&self, dst: &mut impl bytes::BufMut) -> Result<(), CodecError> {
        Field::put(self, "event", &mut crate::wire::Writer(dst))
    }

    /// Decodes one record from its stored wire form.
    ///
    /// # Errors
    /// If the bytes are not a valid record.
    pub fn decode(src: Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(src);
        <EventRecord as Field>::get(&mut r, "event")
    }
}
