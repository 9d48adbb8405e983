//! Room management: create, membership, metadata, listing.

use crate::ids::{RoomId, Seq, UserId};
use crate::wire::{wire_enum, wire_struct};

wire_enum! {
    /// The shape of a room.
    pub enum RoomKind {
        /// A one-to-one room between two users, with a deterministic id.
        Direct = 1,
        /// A group room with metadata and roles.
        Group = 2,
    }
}

wire_enum! {
    /// Who may join a group room.
    pub enum JoinPolicy {
        /// Any authenticated user may join.
        Open = 1,
        /// Only invited users may join.
        InviteOnly = 2,
    }
}

wire_enum! {
    /// A member's role in a room.
    pub enum Role {
        /// Created the room; can do everything, including change roles.
        Owner = 1,
        /// Can invite, remove members and edit metadata.
        Admin = 2,
        /// Can read and write.
        Member = 3,
        /// Invited but not yet joined.
        Invited = 4,
    }
}

wire_struct! {
    /// A room's descriptive metadata. Empty strings mean "not set".
    pub struct RoomMeta {
        /// Display name.
        pub name: String,
        /// Topic or description.
        pub topic: String,
        /// Avatar image URL.
        pub avatar_url: String,
    }
}

wire_struct! {
    /// Client to server: create a room. Answered by `RoomInfo`.
    pub struct CreateRoom {
        /// Direct or group.
        pub kind: RoomKind,
        /// For a group: the wanted id, or absent to let the server choose.
        /// Ignored for a direct room, whose id derives from the two users.
        pub room: Option<RoomId>,
        /// For a direct room: the other user. Ignored for a group.
        pub peer: Option<UserId>,
        /// Who may join (groups).
        pub policy: JoinPolicy,
        /// Name, topic, avatar.
        pub meta: RoomMeta,
        /// Users to invite right away (groups).
        pub invite: Vec<UserId>,
    }
}

wire_struct! {
    /// A member and their role.
    pub struct Member {
        /// The user.
        pub user: UserId,
        /// Their role.
        pub role: Role,
    }
}

wire_struct! {
    /// Server to client: a room's description. Replies to `CreateRoom`,
    /// `JoinRoom`, `GetRoomInfo` and `UpdateRoom`.
    pub struct RoomInfo {
        /// The room.
        pub room: RoomId,
        /// Direct or group.
        pub kind: RoomKind,
        /// Who may join.
        pub policy: JoinPolicy,
        /// Name, topic, avatar.
        pub meta: RoomMeta,
        /// Creation time, microseconds since the Unix epoch.
        pub created_at_us: u64,
        /// Last committed sequence.
        pub head: Seq,
        /// Oldest retained sequence.
        pub first: Seq,
        /// Number of members (joined, not invited).
        pub member_count: u32,
        /// Members and invitees (may be truncated for very large rooms).
        pub members: Vec<Member>,
    }
}

wire_struct! {
    /// Client to server: join an open room, or accept an invitation.
    /// Answered by `RoomInfo`.
    pub struct JoinRoom {
        /// The room.
        pub room: RoomId,
    }
}

wire_struct! {
    /// Client to server: leave a room. Answered by `Ack`.
    pub struct LeaveRoom {
        /// The room.
        pub room: RoomId,
    }
}

wire_struct! {
    /// Client to server: invite a user (admins and owners). Answered by `Ack`.
    pub struct InviteMember {
        /// The room.
        pub room: RoomId,
        /// The invitee.
        pub user: UserId,
    }
}

wire_struct! {
    /// Client to server: remove a member (admins and owners). Answered by `Ack`.
    pub struct RemoveMember {
        /// The room.
        pub room: RoomId,
        /// The member to remove.
        pub user: UserId,
    }
}

wire_struct! {
    /// Client to server: describe a room (members only, or anyone for open
    /// rooms). Answered by `RoomInfo`.
    pub struct GetRoomInfo {
        /// The room.
        pub room: RoomId,
    }
}

wire_struct! {
    /// Client to server: change a group's metadata (admins and owners).
    /// Answered by `RoomInfo`.
    pub struct UpdateRoom {
        /// The room.
        pub room: RoomId,
        /// The new metadata (replaces the old).
        pub meta: RoomMeta,
    }
}

wire_struct! {
    /// Client to server: change a member's role (owners). Answered by `Ack`.
    pub struct SetRole {
        /// The room.
        pub room: RoomId,
        /// The member.
        pub user: UserId,
        /// The new role (not `Invited`).
        pub role: Role,
    }
}

wire_struct! {
    /// Client to server: list the rooms the user is a member of, in room id
    /// order. Answered by `RoomList`.
    pub struct ListRooms {
        /// Start after this room id (for paging), or absent to start at the beginning.
        pub after: Option<RoomId>,
        /// Most rooms wanted.
        pub limit: u16,
    }
}

wire_struct! {
    /// One room of a `RoomList`.
    pub struct RoomSummary {
        /// The room.
        pub room: RoomId,
        /// Direct or group.
        pub kind: RoomKind,
        /// Display name.
        pub name: String,
        /// Last committed sequence.
        pub head: Seq,
        /// The user's read marker.
        pub read: Seq,
        /// Messages after the read marker (head - read).
        pub unread: u64,
        /// Commit time of the last message, or 0.
        pub last_activity_us: u64,
    }
}

wire_struct! {
    /// Server to client: the user's rooms.
    pub struct RoomList {
        /// The rooms, in id order.
        pub rooms: Vec<RoomSummary>,
        /// Whether more rooms follow the last one.
        pub has_more: bool,
    }
}
