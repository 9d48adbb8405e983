//! Sessions: one per connection, whatever the transport. The handshake,
//! request dispatch and the writers that drain the device's outbox.

mod codec;
mod connection;
mod grant;
mod handshake;
mod queries;
mod quic_writer;
mod writer;

pub use codec::{FrameCodec, WireError};
pub(crate) use connection::{refuse, serve_connection, serve_quic};
pub(crate) use writer::tune_tcp;

pub(crate) use crate::fanout::ConnCtx;
