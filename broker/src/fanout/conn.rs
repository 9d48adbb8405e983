//! A connected device as the sequencer and the fan-out see it: who it is,
//! where its frames go, and its publish permits. Sessions make one per
//! connection; the embedding service has one for its system principal.

use std::sync::{Arc, Mutex};

use confab_codec::{DeviceId, Frame, UserId};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::Outbox;

/// A connection's permit for one request on its way through the sequencer
/// (and, for a subscribe, the fan-out); given back when the request is
/// dropped, so that no completion path can forget it. `None` for the
/// embedding API, which waits for each reply.
pub(crate) type Held = Option<OwnedSemaphorePermit>;

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
    /// Permits for its other requests waiting in the sequencer
    /// (`limits.max_pending_requests`); see [`Held`].
    pub(crate) requests: Arc<Semaphore>,
    /// The embedding service's system principal (no socket): membership
    /// and role checks do not apply to it.
    pub(crate) system: bool,
    /// For a caller without a socket (the embedding API): the reply to its
    /// one request, as a frame, instead of bytes in the outbox.
    pub(crate) direct: Option<DirectReply>,
    /// The protocol version of the connection (1 or 2): frames of a later
    /// version are not sent to it.
    pub(crate) version: u16,
}

/// The reply slot of a request made without a socket: the sequencer hands
/// over the reply itself, typed, and the caller awaits it.
#[derive(Debug)]
pub(crate) struct DirectReply(Mutex<Option<oneshot::Sender<Frame>>>);

impl DirectReply {
    /// A slot and the receiver its reply arrives on (closed without a
    /// reply if the request is dropped, as at shutdown).
    pub(crate) fn new() -> (Self, oneshot::Receiver<Frame>) {
        let (tx, rx) = oneshot::channel();
        (Self(Mutex::new(Some(tx))), rx)
    }

    /// Hands over the reply (only the first one counts).
    pub(crate) fn send(&self, frame: Frame) {
        let tx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            // The caller may have given up waiting.
            let _ = tx.send(frame);
        }
    }
}
