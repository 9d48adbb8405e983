//! Connection lifecycle frames: handshake, heartbeats, errors, notices.

use crate::error::{CodecError, ErrorCode};
use crate::frames::messaging::SubscribeItem;
use crate::frames::sync::Features;
use crate::ids::{DeviceId, UserId};
use crate::wire::{wire_enum, wire_struct, Field, Out, Reader};

impl Field for ErrorCode {
    const MIN_LEN: usize = 2;
    fn put<O: Out>(&self, _: &'static str, out: &mut O) -> Result<(), CodecError> {
        out.put_u16(*self as u16);
        Ok(())
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        Ok(ErrorCode::from_u16(r.u16(field)?))
    }
}

wire_struct! {
    /// Client to server, first frame of every connection.
    pub struct Hello {
        /// Lowest protocol version the client speaks.
        pub min_version: u16,
        /// Highest protocol version the client speaks.
        pub max_version: u16,
        /// Authentication token (a JWT, or `user:device` in dev mode).
        pub token: String,
        /// This device's stable id.
        pub device: DeviceId,
        /// Free-form client name and version, for logs.
        pub client_name: String,
        /// Rooms to subscribe to right away, typically each from the last
        /// sequence the device has seen plus one. Answered by a
        /// `SubscribeAck` carrying the Hello's request id, after `Welcome`.
        pub resume: Vec<SubscribeItem>,
        /// Optional behaviours the client offers (appended; absent = none).
        pub features: Features,
    }
}

wire_struct! {
    /// Server to client: the handshake succeeded.
    pub struct Welcome {
        /// The protocol version chosen for this connection.
        pub version: u16,
        /// Identifies this connection in the server's logs.
        pub session_id: u64,
        /// The user the token authenticated.
        pub user: UserId,
        /// Server clock, microseconds since the Unix epoch.
        pub server_time_us: u64,
        /// Largest frame body the server accepts, in bytes.
        pub max_frame_len: u32,
        /// Largest message payload the server accepts, in bytes.
        pub max_payload_len: u32,
        /// Most rooms one connection may follow.
        pub max_rooms: u32,
        /// The client should send a Ping when it has sent nothing for this long.
        pub heartbeat_ms: u32,
        /// The server closes a connection it has heard nothing from for this long.
        pub idle_timeout_ms: u32,
        /// The offered behaviours the server accepted (appended; absent = none).
        pub features: Features,
    }
}

wire_struct! {
    /// Either side: the connection is about to close, and why.
    pub struct Goodbye {
        /// `Normal`, or the error that ends the connection.
        pub code: ErrorCode,
        /// Human-readable detail.
        pub message: String,
    }
}

wire_struct! {
    /// Either side: a heartbeat. The peer answers with a `Pong` echoing the nonce.
    pub struct Ping {
        /// Echoed in the Pong.
        pub nonce: u64,
    }
}

wire_struct! {
    /// Either side: the answer to a `Ping`.
    pub struct Pong {
        /// The nonce of the Ping being answered.
        pub nonce: u64,
    }
}

wire_struct! {
    /// Server to client: the request with the header's request id failed.
    /// Request id 0 means the error is about the connection itself.
    pub struct ErrorFrame {
        /// What went wrong.
        pub code: ErrorCode,
        /// For `RateLimited`: how long to wait before retrying, else 0.
        pub retry_after_ms: u32,
        /// Human-readable detail.
        pub message: String,
    }
}

wire_enum! {
    /// Severity of a `Notice`.
    pub enum NoticeLevel {
        /// For information.
        Info = 1,
        /// Something the user or app should know about.
        Warning = 2,
    }
}

wire_struct! {
    /// Server to client: an unsolicited message (maintenance, a limit reached).
    pub struct Notice {
        /// Severity.
        pub level: NoticeLevel,
        /// A related code, or `Normal`.
        pub code: ErrorCode,
        /// Human-readable text.
        pub text: String,
    }
}

wire_struct! {
    /// Server to client: the request with the header's request id succeeded
    /// and has no other reply.
    pub struct Ack {}
}

wire_struct! {
    /// Client to server: replace the connection's token before it expires.
    /// Answered by `Ack`, or by `Error` and a close if the token is refused.
    pub struct RefreshToken {
        /// The new token.
        pub token: String,
    }
}

wire_struct! {
    /// Client to server: register this device for offline push notifications.
    /// An empty token unregisters it. Answered by `Ack`.
    pub struct RegisterPush {
        /// Push provider, for example `apns`, `fcm` or `webpush`.
        pub provider: String,
        /// The provider's device token.
        pub token: String,
    }
}
