//! # confab-codec
//!
//! The Confab wire protocol, versions 1 and 2, as a sans-IO codec: it turns bytes
//! into typed [`Frame`]s and back, and does nothing else. No sockets, no
//! async runtime, no `std::io`. The broker and the client SDK wrap it in a
//! few lines of tokio-util glue.
//!
//! The protocol is specified in `docs/protocol.md`; this crate implements
//! every frame in it.
//!
//! Decoding is safe on hostile input: it never panics, it checks a frame's
//! declared length against a configured maximum before buffering anything,
//! and it never allocates more than the frame's own size.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use confab_codec::{Frame, Body, Publish, MessageKind, RoomId, DEFAULT_MAX_FRAME_LEN};
//!
//! let frame = Frame::request(7, Publish {
//!     room: RoomId::new("general").unwrap(),
//!     client_msg_id: 1,
//!     kind: MessageKind::MESSAGE,
//!     refers_to: None,
//!     thread: None,
//!     payload: Bytes::from_static(b"hello"),
//! });
//! let mut buf = BytesMut::new();
//! frame.encode(&mut buf).unwrap();
//! let decoded = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
//! assert_eq!(decoded, frame);
//! assert!(matches!(decoded.body, Body::Publish(_)));
//! ```

#![warn(missing_docs)]

mod error;
mod frame;
pub mod frames;
mod ids;
pub mod raw;
mod wire;

pub use error::{CodecError, ErrorCode};
pub use frame::{
    flags, frame_type, type_in_version, Body, Frame, Header, DEFAULT_MAX_FRAME_LEN,
    EXTENSION_TYPE_BASE, HEADER_LEN, HELLO_LEN_FLOOR, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use frames::ephemeral::*;
pub use frames::messaging::*;
pub use frames::rooms::*;
pub use frames::session::*;
pub use frames::sync::*;
pub use ids::{DeviceId, RoomId, Seq, UserId};
