//! Framing: the fixed header, the frame type registry and the top-level
//! encode and decode entry points.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::frames::ephemeral::*;
use crate::frames::messaging::*;
use crate::frames::rooms::*;
use crate::frames::session::*;
use crate::frames::sync::*;
use crate::wire::{Counter, Field, Reader, Writer};

/// Bytes in the fixed frame header.
pub const HEADER_LEN: usize = 10;

/// The newest protocol version this crate implements. Version 2 adds
/// `SyncInbox`, `InboxPage` and `Gap`; everything else is version 1's.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this crate implements.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Whether a frame type exists in protocol `version`: a type of a later
/// version received on a connection of an earlier one is an unknown type
/// there (protocol 3.3).
pub fn type_in_version(frame_type: u8, version: u16) -> bool {
    version >= 2 || !matches!(frame_type, 0x15..=0x17)
}

/// The default largest frame body, in bytes (1 MiB).
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1 << 20;

/// The smallest limit a server may set on the `Hello` body (protocol 3.4):
/// a client whose `Hello` fits in it is never refused for its size. A
/// client with more rooms to resume moves the rest into `Subscribe` frames
/// after `Welcome`.
pub const HELLO_LEN_FLOOR: u32 = 64 << 10;

/// Frame types at or above this value are optional extensions: a receiver
/// that does not know one skips it. Unknown types below it are an error.
pub const EXTENSION_TYPE_BASE: u8 = 0x80;

/// Header flag bits. Senders set unknown bits to 0; receivers ignore them.
pub mod flags {
    /// On `Publish`: do not send a `PublishAck` (errors are still sent).
    pub const NO_REPLY: u8 = 0x01;
    /// On `Event` and `EventBatch`: the events come from the log (backlog
    /// or catch-up), not from live fan-out.
    pub const REPLAY: u8 = 0x02;
    /// The body is zstd-compressed (only on connections that negotiated
    /// `Features::ZSTD`); the header's length is the compressed length.
    pub const COMPRESSED: u8 = 0x04;
}

/// The fixed 10-byte header that starts every frame.
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | body length, u32 big-endian (header excluded) |
/// | 4 | frame type |
/// | 5 | flags |
/// | 6..10 | request id, u32 big-endian (0 = none) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length in bytes.
    pub len: u32,
    /// Frame type.
    pub frame_type: u8,
    /// Flag bits, see [`flags`].
    pub flags: u8,
    /// Correlates replies with requests; 0 for unsolicited frames.
    pub request_id: u32,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes, or `None` if
    /// fewer are available.
    pub fn peek(src: &[u8]) -> Option<Header> {
        let h = src.get(..HEADER_LEN)?;
        let mut h = h;
        Some(Header {
            len: h.get_u32(),
            frame_type: h.get_u8(),
            flags: h.get_u8(),
            request_id: h.get_u32(),
        })
    }

    /// Appends the header.
    pub fn put(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.len);
        dst.put_u8(self.frame_type);
        dst.put_u8(self.flags);
        dst.put_u32(self.request_id);
    }

    /// Checks the declared body length against a limit.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] if the body exceeds `max_frame_len`.
    pub fn check(&self, max_frame_len: u32) -> Result<(), CodecError> {
        if self.len > max_frame_len {
            return Err(CodecError::FrameTooLarge {
                len: u64::from(self.len),
                max: max_frame_len,
            });
        }
        Ok(())
    }
}

macro_rules! frames {
    ($( $(#[$doc:meta])* $variant:ident($ty:ident) = $code:literal, )*) => {
        /// Frame type codes.
        pub mod frame_type {
            $(
                #[doc = concat!("Type code of `", stringify!($variant), "`.")]
                #[allow(non_upper_case_globals)]
                pub const $variant: u8 = $code;
            )*
        }

        /// A frame body: one variant per frame type.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Body {
            $( $(#[$doc])* $variant($ty), )*
            /// An optional extension frame (type 0x80 or above) this version
            /// does not know. Receivers ignore it.
            Extension {
                /// Its type.
                frame_type: u8,
                /// Its raw body.
                body: Bytes,
            },
        }

        impl Body {
            /// The frame type code.
            pub fn frame_type(&self) -> u8 {
                match self {
                    $( Body::$variant(_) => $code, )*
                    Body::Extension { frame_type, .. } => *frame_type,
                }
            }

            /// The frame type's name, for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Body::$variant(_) => stringify!($variant), )*
                    Body::Extension { .. } => "Extension",
                }
            }

            fn put<O: crate::wire::Out>(&self, out: &mut O) -> Result<(), CodecError> {
                match self {
                    $( Body::$variant(b) => Field::put(b, stringify!($variant), out), )*
                    Body::Extension { body, .. } => {
                        out.put_slice(body);
                        Ok(())
                    }
                }
            }

            fn get(frame_type: u8, body: Bytes) -> Result<Body, CodecError> {
                let mut r = Reader::new(body);
                match frame_type {
                    $( $code => Ok(Body::$variant(<$ty as Field>::get(&mut r, stringify!($variant))?)), )*
                    t if t >= EXTENSION_TYPE_BASE => Ok(Body::Extension {
                        frame_type: t,
                        body: r.rest(),
                    }),
                    t => Err(CodecError::UnknownFrameType { frame_type: t }),
                }
            }
        }

        $(
            impl From<$ty> for Body {
                fn from(b: $ty) -> Body {
                    Body::$variant(b)
                }
            }
        )*
    };
}

frames! {
    /// Client hello (handshake).
    Hello(Hello) = 0x01,
    /// Server welcome (handshake).
    Welcome(Welcome) = 0x02,
    /// Closing notice.
    Goodbye(Goodbye) = 0x03,
    /// Heartbeat.
    Ping(Ping) = 0x04,
    /// Heartbeat answer.
    Pong(Pong) = 0x05,
    /// A failed request.
    Error(ErrorFrame) = 0x06,
    /// An unsolicited notice.
    Notice(Notice) = 0x07,
    /// A request succeeded with nothing else to say.
    Ack(Ack) = 0x08,
    /// Token refresh.
    RefreshToken(RefreshToken) = 0x09,
    /// Push registration.
    RegisterPush(RegisterPush) = 0x0A,
    /// Follow rooms.
    Subscribe(Subscribe) = 0x10,
    /// Outcome of a Subscribe.
    SubscribeAck(SubscribeAck) = 0x11,
    /// Stop following rooms.
    Unsubscribe(Unsubscribe) = 0x12,
    /// Switched to catch-up.
    Lagging(Lagging) = 0x13,
    /// Back to live.
    CaughtUp(CaughtUp) = 0x14,
    /// Which of my rooms changed (version 2).
    SyncInbox(SyncInbox) = 0x15,
    /// Changed rooms (version 2).
    InboxPage(InboxPage) = 0x16,
    /// Entries that will not be delivered (version 2).
    Gap(Gap) = 0x17,
    /// Append a message.
    Publish(Publish) = 0x20,
    /// A publish was committed.
    PublishAck(PublishAck) = 0x21,
    /// One delivered message.
    Event(Event) = 0x22,
    /// Many delivered messages of one room.
    EventBatch(EventBatch) = 0x23,
    /// Read history.
    HistoryRequest(HistoryRequest) = 0x24,
    /// A page of history.
    HistoryPage(HistoryPage) = 0x25,
    /// Create a room.
    CreateRoom(CreateRoom) = 0x30,
    /// A room's description.
    RoomInfo(RoomInfo) = 0x31,
    /// Join a room.
    JoinRoom(JoinRoom) = 0x32,
    /// Leave a room.
    LeaveRoom(LeaveRoom) = 0x33,
    /// Invite a user.
    InviteMember(InviteMember) = 0x34,
    /// Remove a member.
    RemoveMember(RemoveMember) = 0x35,
    /// Describe a room.
    GetRoomInfo(GetRoomInfo) = 0x36,
    /// Change a room's metadata.
    UpdateRoom(UpdateRoom) = 0x37,
    /// Change a member's role.
    SetRole(SetRole) = 0x38,
    /// List my rooms.
    ListRooms(ListRooms) = 0x39,
    /// My rooms.
    RoomList(RoomList) = 0x3A,
    /// Typing started or stopped.
    Typing(Typing) = 0x40,
    /// Who is typing.
    TypingEvent(TypingEvent) = 0x41,
    /// Set my presence.
    SetPresence(SetPresence) = 0x42,
    /// Watch presence.
    WatchPresence(WatchPresence) = 0x43,
    /// Ask for presence.
    GetPresence(GetPresence) = 0x44,
    /// Presence changes.
    PresenceEvent(PresenceEvent) = 0x45,
    /// Move a delivered or read marker.
    Receipt(Receipt) = 0x50,
    /// Markers moved.
    ReceiptEvent(ReceiptEvent) = 0x51,
    /// Ask for a message's status.
    GetMessageStatus(GetMessageStatus) = 0x52,
    /// A message's status.
    MessageStatus(MessageStatus) = 0x53,
}

/// A whole frame: header fields plus a typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Correlates replies with requests; 0 for unsolicited frames.
    pub request_id: u32,
    /// Flag bits, see [`flags`].
    pub flags: u8,
    /// The typed body.
    pub body: Body,
}

impl Frame {
    /// A frame with no request id and no flags.
    pub fn new(body: impl Into<Body>) -> Frame {
        Frame {
            request_id: 0,
            flags: 0,
            body: body.into(),
        }
    }

    /// A request or a reply with the given request id.
    pub fn request(request_id: u32, body: impl Into<Body>) -> Frame {
        Frame {
            request_id,
            flags: 0,
            body: body.into(),
        }
    }

    /// Sets flag bits.
    pub fn with_flags(mut self, flags: u8) -> Frame {
        self.flags |= flags;
        self
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame (read
    /// more bytes and call again); nothing is consumed then. The declared
    /// length is checked against `max_frame_len` as soon as the header is
    /// in, before any buffering, so a caller that reserves at most
    /// `HEADER_LEN + max_frame_len` bytes never holds more.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] (nothing consumed), or a typed error for
    /// a malformed body (the frame's bytes are consumed). Either way the
    /// stream should be closed.
    pub fn decode(src: &mut BytesMut, max_frame_len: u32) -> Result<Option<Frame>, CodecError> {
        let Some(header) = Header::peek(src) else {
            return Ok(None);
        };
        header.check(max_frame_len)?;
        let body_len = header.len as usize;
        let Some(total) = HEADER_LEN.checked_add(body_len) else {
            return Err(CodecError::FrameTooLarge {
                len: u64::from(header.len),
                max: max_frame_len,
            });
        };
        if src.len() < total {
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        frame.advance(HEADER_LEN);
        Frame::decode_body(header, frame).map(Some)
    }

    /// Decodes a body whose header was already read.
    ///
    /// Bytes after the last field this version knows are ignored, so a later
    /// minor revision may append fields.
    ///
    /// # Errors
    /// A typed error if the body is malformed or the type is unknown.
    pub fn decode_body(header: Header, body: Bytes) -> Result<Frame, CodecError> {
        Ok(Frame {
            request_id: header.request_id,
            flags: header.flags,
            body: Body::get(header.frame_type, body)?,
        })
    }

    /// Body length of the encoded frame (header excluded).
    ///
    /// # Errors
    /// If a field is too long for its length prefix.
    pub fn body_len(&self) -> Result<usize, CodecError> {
        let mut counter = Counter::default();
        self.body.put(&mut counter)?;
        Ok(counter.0)
    }

    /// Total encoded length, header included.
    ///
    /// # Errors
    /// If a field is too long for its length prefix.
    pub fn encoded_len(&self) -> Result<usize, CodecError> {
        Ok(HEADER_LEN + self.body_len()?)
    }

    /// Appends the encoded frame. Nothing is written if it fails.
    ///
    /// # Errors
    /// If a field is too long for its length prefix or the body exceeds
    /// `u32::MAX` bytes.
    pub fn encode(&self, dst: &mut impl BufMut) -> Result<(), CodecError> {
        let body_len = self.body_len()?;
        let len = u32::try_from(body_len).map_err(|_| CodecError::FieldTooLong {
            field: "frame",
            len: body_len,
            max: u32::MAX as usize,
        })?;
        Header {
            len,
            frame_type: self.body.frame_type(),
            flags: self.flags,
            request_id: self.request_id,
        }
        .put(dst);
        self.body.put(&mut Writer(dst))
    }

    /// Encodes into a new buffer of exactly the right size.
    ///
    /// # Errors
    /// As [`Frame::encode`].
    pub fn to_bytes(&self) -> Result<Bytes, CodecError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len()?);
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }
}
