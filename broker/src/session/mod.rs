//! Sessions: one per connection, whatever the transport. The handshake,
//! request dispatch and the writers that drain the device's outbox.

mod codec;
mod connection;
mod devices;
mod grant;
mod queries;
mod quic_writer;
mod writer;

use std::sync::Arc;

use confab_codec::{DeviceId, UserId};
use tokio::sync::Semaphore;

pub use codec::{FrameCodec, WireError};
pub(crate) use connection::{refuse, refuse_quic, serve_connection, serve_quic};
pub(crate) use devices::DeviceRegistry;

use crate::fanout::Outbox;

/// What the sequencer and fan-out know about a connection.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    /// `user \0 device`, the deduplication identity.
    pub(crate) sender_key: Arc<str>,
    pub(crate) outbox: Arc<Outbox>,
    /// Permits for unacknowledged publishes.
    pub(crate) inflight: Semaphore,
    /// The embedding service's system principal (no socket): membership
    /// and role checks do not apply to it.
    pub(crate) system: bool,
}
