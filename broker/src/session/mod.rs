//! Sessions: one per connection, whatever the transport.
//!
//! - `handshake.rs`: from the first byte to `Welcome`;
//! - `connection.rs`: the session's life, its read loop and its end;
//! - `dispatch.rs`: rate limits, the rooms claim, and each frame to its
//!   handler;
//! - `requests.rs`: the requests that change state (publish, subscribe,
//!   room operations, typing, token refresh);
//! - `queries.rs`: the read side, answered from storage on blocking threads;
//! - `writer.rs`, `quic_writer.rs`: drain the device's outbox;
//! - `compression.rs`: zstd compression of frame bodies (protocol 3.6).

mod batch;
mod codec;
mod compression;
mod connection;
mod dispatch;
mod grant;
mod handshake;
mod queries;
mod quic_writer;
mod requests;
mod writer;

pub use codec::{FrameCodec, WireError};
pub(crate) use connection::{refuse, serve_connection, serve_quic};
pub(crate) use writer::tune_tcp;

pub(crate) use crate::fanout::ConnCtx;
