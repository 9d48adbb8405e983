//! Codec errors (local, never sent as-is) and wire error codes (sent in
//! `Error` and `Goodbye` frames).

/// Why a frame could not be decoded or encoded.
///
/// Offsets count from the first byte of the frame body (just after the
/// 10-byte header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The header declares a body longer than the configured maximum.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared body length.
        len: u64,
        /// Configured maximum body length.
        max: u32,
    },
    /// A mandatory frame type (below 0x80) this version does not know.
    #[error("unknown frame type 0x{frame_type:02x}")]
    UnknownFrameType {
        /// The type byte from the header.
        frame_type: u8,
    },
    /// A field runs past the end of the frame body.
    #[error("field `{field}` is truncated at body offset {offset}")]
    Truncated {
        /// Name of the field being read.
        field: &'static str,
        /// Body offset where the field starts.
        offset: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("field `{field}` at body offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Name of the field being read.
        field: &'static str,
        /// Body offset where the field starts.
        offset: usize,
    },
    /// A field holds a value outside its allowed set.
    #[error("field `{field}` at body offset {offset} has invalid value {value}")]
    InvalidValue {
        /// Name of the field being read.
        field: &'static str,
        /// Body offset where the field starts.
        offset: usize,
        /// The offending value.
        value: u64,
    },
    /// An identifier is empty, too long or contains control characters.
    #[error("field `{field}` is not a valid identifier")]
    InvalidId {
        /// Name of the field.
        field: &'static str,
    },
    /// A value is too long for its length prefix (when encoding).
    #[error("field `{field}` is {len} long; at most {max} fits")]
    FieldTooLong {
        /// Name of the field being written.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The largest length its prefix can carry.
        max: usize,
    },
    /// A body sent with the `COMPRESSED` flag (protocol 3.6) that does not
    /// decompress, or that flag on a connection that did not agree on
    /// compression. (A body that decompresses to more than the frame size
    /// limit is [`CodecError::FrameTooLarge`].)
    #[error("compressed body: {reason}")]
    BadCompression {
        /// What was wrong.
        reason: &'static str,
    },
}

impl CodecError {
    /// The wire error code a server sends back for this decode error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::UnknownFrameType { .. } => ErrorCode::UnknownFrameType,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, )*) => {
        /// Stable numeric error codes, sent in `Error` frames and as the
        /// reason of `Goodbye` frames. Values never change meaning; new
        /// codes may be added, and receivers map codes they do not know to
        /// [`ErrorCode::Unknown`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ErrorCode {
            /// Every defined code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// Maps a wire value to a code; values this version does not
            /// know become [`ErrorCode::Unknown`].
            pub fn from_u16(value: u16) -> ErrorCode {
                match value {
                    $( $value => ErrorCode::$name, )*
                    _ => ErrorCode::Unknown,
                }
            }

            /// A short stable name, for logs and metrics labels.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => stringify!($name), )*
                }
            }
        }
    };
}

error_codes! {
    /// Not an error: a normal close (used in `Goodbye`).
    Normal = 0,
    /// The frame could not be parsed. The connection is closed.
    MalformedFrame = 1,
    /// The frame is larger than the negotiated maximum. The connection is closed.
    FrameTooLarge = 2,
    /// No protocol version in common. The connection is closed.
    UnsupportedVersion = 3,
    /// A mandatory frame type the receiver does not know. The connection is closed.
    UnknownFrameType = 4,
    /// A frame arrived that is not valid in the current state (for example
    /// anything but `Hello` first). The connection is closed.
    ProtocolViolation = 5,
    /// A field value is not acceptable (bad id, empty batch, bad range).
    InvalidRequest = 6,
    /// The server does not offer this request (a feature that is disabled
    /// in its configuration or not available in its version).
    Unsupported = 7,
    /// The token is missing, malformed or rejected.
    Unauthenticated = 10,
    /// The token has expired; refresh it.
    TokenExpired = 11,
    /// The user may not do this (not a member, not an admin, ...).
    Forbidden = 12,
    /// The room does not exist.
    NoSuchRoom = 20,
    /// A room with that id already exists.
    RoomExists = 21,
    /// The user is not a member of the room.
    NotMember = 22,
    /// The per-connection or per-user room limit was reached.
    TooManyRooms = 23,
    /// The room has reached its member limit.
    RoomFull = 24,
    /// The requested start sequence is older than the room's retention;
    /// history before the room's first retained sequence is gone.
    HistoryTruncated = 25,
    /// The sequence does not exist in the room (yet).
    NoSuchMessage = 26,
    /// A rate limit was exceeded; `retry_after_ms` says when to retry.
    RateLimited = 30,
    /// The payload exceeds the server's message size limit.
    PayloadTooLarge = 31,
    /// The device could not keep up and was disconnected.
    SlowConsumer = 40,
    /// The handshake or a heartbeat timed out.
    Timeout = 41,
    /// The server is shutting down; reconnect later.
    ShuttingDown = 42,
    /// The server has reached its connection limit.
    ServerBusy = 43,
    /// The same device connected again; this older connection is closed.
    SessionReplaced = 44,
    /// A server-side failure (storage error). The request may be retried.
    Internal = 50,
    /// The server's storage is full: the request (a publish, a room
    /// operation, ...) was not carried out and nothing of it was stored.
    /// Retryable: retry later, with back-off, unchanged (a publish with the
    /// same client message id). Writes resume by themselves once the
    /// operator frees space; reads keep working meanwhile.
    StorageFull = 51,
    /// A code this version does not know.
    Unknown = 0xFFFF,
}
