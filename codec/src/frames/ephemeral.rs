//! Typing, presence and receipts.

use crate::ids::{DeviceId, RoomId, Seq, UserId};
use crate::wire::{wire_enum, wire_struct};

wire_struct! {
    /// Client to server: the user started or stopped typing. Never stored;
    /// a start expires by itself if not refreshed. No reply.
    pub struct Typing {
        /// The room.
        pub room: RoomId,
        /// Started (true) or stopped (false).
        pub active: bool,
    }
}

wire_struct! {
    /// Server to client: who is typing in a room now (coalesced; replaces
    /// the previous set).
    pub struct TypingEvent {
        /// The room.
        pub room: RoomId,
        /// Users currently typing.
        pub users: Vec<UserId>,
    }
}

wire_enum! {
    /// A user's availability.
    pub enum PresenceStatus {
        /// At least one device is connected and active.
        Online = 1,
        /// Connected but idle.
        Away = 2,
        /// No device connected (or the user chose to appear offline).
        Offline = 3,
    }
}

wire_struct! {
    /// Client to server: set this device's availability. Answered by `Ack`.
    pub struct SetPresence {
        /// The status.
        pub status: PresenceStatus,
    }
}

wire_struct! {
    /// Client to server: receive (or stop receiving) `PresenceEvent`s about
    /// the members of rooms shared with this user. Answered by `Ack`.
    pub struct WatchPresence {
        /// On or off.
        pub enabled: bool,
    }
}

wire_struct! {
    /// Client to server: ask for some users' presence (only users sharing a
    /// room with the caller are answered). Answered by `PresenceEvent`.
    pub struct GetPresence {
        /// The users.
        pub users: Vec<UserId>,
    }
}

wire_struct! {
    /// One user's presence.
    pub struct PresenceEntry {
        /// The user.
        pub user: UserId,
        /// Aggregated over their devices.
        pub status: PresenceStatus,
        /// When they were last connected, microseconds since the Unix epoch
        /// (0 if never).
        pub last_seen_us: u64,
    }
}

wire_struct! {
    /// Server to client: presence changes (coalesced) or a `GetPresence` reply.
    pub struct PresenceEvent {
        /// The users whose presence is reported.
        pub entries: Vec<PresenceEntry>,
    }
}

wire_enum! {
    /// Which marker a receipt moves.
    pub enum ReceiptKind {
        /// This device received everything up to the sequence.
        Delivered = 1,
        /// The user read everything up to the sequence.
        Read = 2,
    }
}

wire_struct! {
    /// Client to server: move a marker forward (markers never move back).
    /// No reply unless it fails.
    pub struct Receipt {
        /// The room.
        pub room: RoomId,
        /// Delivered or read.
        pub kind: ReceiptKind,
        /// Up to and including this sequence.
        pub seq: Seq,
    }
}

wire_struct! {
    /// One marker of a `ReceiptEvent`.
    pub struct ReceiptEntry {
        /// Whose marker moved.
        pub user: UserId,
        /// The device (for delivered markers).
        pub device: DeviceId,
        /// Delivered or read.
        pub kind: ReceiptKind,
        /// The marker's new position.
        pub seq: Seq,
    }
}

wire_struct! {
    /// Server to client: markers moved in a room (coalesced), sent to the
    /// devices of users whose messages they cover.
    pub struct ReceiptEvent {
        /// The room.
        pub room: RoomId,
        /// The markers.
        pub entries: Vec<ReceiptEntry>,
    }
}

wire_struct! {
    /// Client to server: ask how far a message got. Answered by `MessageStatus`.
    pub struct GetMessageStatus {
        /// The room.
        pub room: RoomId,
        /// The message.
        pub seq: Seq,
    }
}

wire_enum! {
    /// How far a message got.
    pub enum DeliveryState {
        /// Stored in the room's log.
        Sent = 1,
        /// Delivered to at least one device of every other member.
        Delivered = 2,
        /// Read by every other member.
        Read = 3,
    }
}

wire_struct! {
    /// Server to client: a message's status.
    pub struct MessageStatus {
        /// The room.
        pub room: RoomId,
        /// The message.
        pub seq: Seq,
        /// Overall state.
        pub state: DeliveryState,
        /// Members other than the sender.
        pub recipients: u32,
        /// How many of them have a device that received it.
        pub delivered: u32,
        /// How many of them read it.
        pub read: u32,
    }
}
