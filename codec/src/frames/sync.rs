//! Version 2 frames for devices that come back after a while: inbox sync
//! (which of my rooms changed since my cursor) and exact gaps (entries a
//! device will not get, with the range and the reason).

use crate::error::CodecError;
use crate::frames::messaging::EventRecord;
use crate::frames::rooms::Role;
use crate::ids::{RoomId, Seq};
use crate::wire::{wire_enum, wire_struct, Field, Out, Reader};

wire_struct! {
    /// Client to server (version 2): which of the user's rooms changed
    /// since `since`. Answered by one `InboxPage`. The rooms come in id
    /// order; a sync that does not fit one page goes on with the same
    /// `since` and `after` = the last room received.
    pub struct SyncInbox {
        /// The cursor of the previous sync (the first page's
        /// `InboxPage.cursor`), or 0 for every room of the user.
        pub since: u64,
        /// Continue after this room (paging), or absent for the first page.
        pub after: Option<RoomId>,
        /// Most rooms wanted in the page; the server may return fewer.
        pub limit: u16,
    }
}

wire_struct! {
    /// One changed room of an `InboxPage`.
    pub struct InboxRoom {
        /// The room.
        pub room: RoomId,
        /// `Normal`: the user is in the room (`role`) and the fields below
        /// describe it. `NotMember`: the user left or was removed (the
        /// fields below carry no information).
        pub code: crate::error::ErrorCode,
        /// The user's role; `Invited` for an invitation (then `last` is
        /// empty and the counts are 0).
        pub role: Role,
        /// When the room last changed for this user, microseconds since the
        /// Unix epoch (the server's commit clock).
        pub stamp: u64,
        /// Last committed sequence.
        pub head: Seq,
        /// Oldest retained sequence (`head + 1` if none).
        pub first: Seq,
        /// The user's read marker.
        pub read: Seq,
        /// Entries after the read marker (`head - read`).
        pub unread: u64,
        /// The first unread entry still retained, or 0 if none is unread.
        pub first_unread: Seq,
        /// The last entry (at `head`) if it is retained and `code` is
        /// `Normal` (not for an invitation); an empty list otherwise.
        pub last: Vec<EventRecord>,
    }
}

wire_struct! {
    /// Server to client (version 2): a page of changed rooms, in id order.
    pub struct InboxPage {
        /// The rooms that changed after the request's `since`, in id order.
        pub rooms: Vec<InboxRoom>,
        /// Whether more changed rooms follow: ask again with the same
        /// `since` and `after` = the last room of this page.
        pub has_more: bool,
        /// The cursor for the next sync: every change after it will be
        /// reported by a sync with `since` = it. Keep the first page's.
        pub cursor: u64,
    }
}

wire_enum! {
    /// Why entries of a room will not be delivered.
    pub enum GapReason {
        /// Retention removed them before they were delivered.
        Trimmed = 1,
        /// They were deleted (each entry of the range is a deleted message
        /// that the server no longer keeps).
        Deleted = 2,
        /// The device's user lost access to the room: nothing after `from`
        /// will be delivered on this subscription.
        AccessLost = 3,
    }
}

wire_struct! {
    /// Server to client (version 2): entries `from..=to` of `room` will
    /// not be delivered, and why. Sent in the room's delivery order: the
    /// next entry delivered after it, if any, is `to + 1`.
    pub struct Gap {
        /// The room.
        pub room: RoomId,
        /// First sequence not delivered.
        pub from: Seq,
        /// Last sequence not delivered (inclusive).
        pub to: Seq,
        /// Why.
        pub reason: GapReason,
    }
}

/// Optional behaviours a connection may use, negotiated in the handshake:
/// the client offers them in `Hello.features`, the server accepts a subset
/// in `Welcome.features`. The field is appended to both bodies (protocol
/// section 5), and it is written only when not empty, so a client or
/// server that does not know it sends and reads the same bytes as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Features(pub u32);

impl Features {
    /// No optional behaviour.
    pub const NONE: Features = Features(0);
    /// zstd compression of frame bodies (the `COMPRESSED` flag).
    pub const ZSTD: Features = Features(1);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits set in both.
    #[must_use]
    pub fn intersect(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    /// The bits set in either.
    #[must_use]
    pub fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
}

impl Field for Features {
    // Absent from bodies that do not carry it.
    const MIN_LEN: usize = 0;
    fn put<O: Out>(&self, _: &'static str, out: &mut O) -> Result<(), CodecError> {
        if self.0 != 0 {
            out.put_u32(self.0);
        }
        Ok(())
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        // Appended: absent (or cut short by an older peer's own appended
        // bytes) reads as none.
        if r.remaining() < 4 {
            return Ok(Features::NONE);
        }
        Ok(Features(r.u32(field)?))
    }
}
