//! Outgoing messages and the handle on an unacknowledged publish.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use confab_codec::{MessageKind, PublishAck, RoomId, Seq};
use tokio::sync::oneshot;

use crate::error::ClientError;

/// A message to publish: the room, the payload and optional kind,
/// reference and thread.
///
/// ```
/// use confab_client::Message;
/// use confab_codec::{RoomId, Seq};
///
/// let room = RoomId::new("general").unwrap();
/// let reply = Message::new(room.clone(), "me too").refers_to(Seq(41));
/// let thumbs = Message::reaction(room, Seq(41), "👍");
/// # let _ = (reply, thumbs);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The room.
    pub room: RoomId,
    /// What it is (default [`MessageKind::MESSAGE`]). Clients may publish
    /// kinds 1-4 and 128-255.
    pub kind: MessageKind,
    /// For a message: the one it replies to. For an edit, delete or
    /// reaction: the target (required).
    pub refers_to: Option<Seq>,
    /// The root of the thread it belongs to.
    pub thread: Option<Seq>,
    /// The content.
    pub payload: Bytes,
}

impl Message {
    /// An ordinary message.
    ///
    /// ```
    /// use confab_client::confab_codec::{MessageKind, RoomId};
    /// use confab_client::Message;
    ///
    /// let m = Message::new(RoomId::new("general")?, "hello");
    /// assert_eq!(m.kind, MessageKind::MESSAGE);
    /// # Ok::<(), confab_client::ClientError>(())
    /// ```
    /// An ordinary message.
    pub fn new(room: RoomId, payload: impl Into<Bytes>) -> Self {
        Self {
            room,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: payload.into(),
        }
    }

    /// Replaces the payload of the message at `target`.
    pub fn edit(room: RoomId, target: Seq, payload: impl Into<Bytes>) -> Self {
        Self::new(room, payload)
            .kind(MessageKind::EDIT)
            .refers_to(target)
    }

    /// Tombstones the message at `target`.
    pub fn delete(room: RoomId, target: Seq) -> Self {
        Self::new(room, Bytes::new())
            .kind(MessageKind::DELETE)
            .refers_to(target)
    }

    /// A reaction (for example an emoji) to the message at `target`.
    pub fn reaction(room: RoomId, target: Seq, reaction: impl Into<Bytes>) -> Self {
        Self::new(room, reaction)
            .kind(MessageKind::REACTION)
            .refers_to(target)
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the reply-to or target.
    pub fn refers_to(mut self, seq: Seq) -> Self {
        self.refers_to = Some(seq);
        self
    }

    /// Sets the thread root.
    pub fn thread(mut self, seq: Seq) -> Self {
        self.thread = Some(seq);
        self
    }
}

/// A publish accepted into the outbound queue, not yet acknowledged.
///
/// Await it for the broker's [`PublishAck`] (with the message's sequence).
/// Dropping it does **not** cancel the publish: the SDK still sends it,
/// retries it after reconnections with the same client message id, and
/// tracks its acknowledgement; a refusal is then reported as
/// [`ConnectionEvent::PublishFailed`](crate::ConnectionEvent::PublishFailed).
///
/// Awaiting it is cancel-safe: dropping the future loses only the
/// notification, never the message.
///
/// ```no_run
/// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
/// use confab_client::confab_codec::RoomId;
/// use confab_client::Message;
///
/// let pending = client.enqueue(Message::new(RoomId::new("general")?, "hi")).await?;
/// // ... do something else meanwhile ...
/// let ack = pending.await?;
/// println!("stored as #{}", ack.seq);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping a PendingPublish makes the publish fire-and-forget"]
pub struct PendingPublish {
    client_msg_id: u64,
    rx: oneshot::Receiver<Result<PublishAck, ClientError>>,
}

impl PendingPublish {
    pub(crate) fn new(
        client_msg_id: u64,
        rx: oneshot::Receiver<Result<PublishAck, ClientError>>,
    ) -> Self {
        Self { client_msg_id, rx }
    }

    /// The client message id the SDK assigned; the broker stores the
    /// message at most once under it, and it is visible to every reader in
    /// [`RoomEvent::client_msg_id`](crate::RoomEvent::client_msg_id).
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::RoomId;
    /// use confab_client::Message;
    ///
    /// let pending = client.enqueue(Message::new(RoomId::new("general")?, "hi")).await?;
    /// let id = pending.client_msg_id();
    /// let ack = pending.await?;
    /// assert_eq!(ack.client_msg_id, id);
    /// # Ok(()) }
    /// ```
    pub fn client_msg_id(&self) -> u64 {
        self.client_msg_id
    }
}

impl Future for PendingPublish {
    type Output = Result<PublishAck, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// Client message ids: a starting point per client instance, then a
/// counter.
///
/// The starting point is the current Unix time in nanoseconds, so the ids
/// of one device keep increasing across restarts of the application: an
/// instance would have to publish more than one message per nanosecond of
/// its life for the next one to start below its last id. The broker's
/// deduplication index takes a fast path for an id above the device's
/// highest so far; random starting points would send half of all publishes
/// down its slow path.
///
/// A clock set back between two runs only makes the next run's ids take
/// that slow path; deduplication stays correct. Ids repeat only if the
/// clock, when a run starts, reads earlier than it did when the previous
/// run started (plus a nanosecond per id that run used); the connection
/// task logs a warning when a publish is acknowledged as a duplicate on its
/// first send, the mark of such a reuse.
///
/// Past `u64::MAX` the counter wraps around to 1 (some 1.6e19 ids after a
/// start from today's clock), skipping 0, which would disable
/// deduplication.
#[derive(Debug)]
pub(crate) struct MsgIds {
    seed: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl MsgIds {
    /// Ids starting from the current Unix time in nanoseconds (a random
    /// starting point on a clock set before 1970 or past the year 2554).
    pub(crate) fn from_clock() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
        Self::new(now.unwrap_or_else(rand::random))
    }

    /// Ids from the clock, but above `floor` (the highest id an earlier
    /// run left in the outbox store), should the clock have gone back.
    pub(crate) fn from_clock_above(floor: Option<u64>) -> Self {
        let ids = Self::from_clock();
        match floor {
            Some(f) if f >= ids.seed => Self::new(f.wrapping_add(1)),
            _ => ids,
        }
    }

    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed,
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> u64 {
        loop {
            let n = self
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = self.seed.wrapping_add(n);
            if id != 0 {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn message_builders() {
        let room = RoomId::new("r").unwrap();
        let m = Message::edit(room.clone(), Seq(3), "fixed");
        assert_eq!(m.kind, MessageKind::EDIT);
        assert_eq!(m.refers_to, Some(Seq(3)));
        let d = Message::delete(room.clone(), Seq(4));
        assert_eq!(d.kind, MessageKind::DELETE);
        assert!(d.payload.is_empty());
        let t = Message::new(room, "x").thread(Seq(1));
        assert_eq!(t.thread, Some(Seq(1)));
        assert_eq!(t.kind, MessageKind::MESSAGE);
    }

    #[test]
    fn msg_ids_are_unique_and_never_zero() {
        let ids = MsgIds::new(u64::MAX - 1);
        let got: Vec<u64> = (0..4).map(|_| ids.next()).collect();
        assert_eq!(got, vec![u64::MAX - 1, u64::MAX, 1, 2]);
    }

    #[test]
    fn msg_ids_start_from_the_clock() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let ids = MsgIds::from_clock();
        let got: Vec<u64> = (0..3).map(|_| ids.next()).collect();
        // Not below the clock when it was created: a later instance of the
        // same device (an application restart) starts above every id an
        // earlier one handed out, as long as that one published fewer ids
        // than nanoseconds passed.
        assert!(got[0] >= before, "{} < {before}", got[0]);
        assert_eq!(got, vec![got[0], got[0] + 1, got[0] + 2]);
    }

    #[tokio::test]
    async fn pending_publish_resolves() {
        let (tx, rx) = oneshot::channel();
        let p = PendingPublish::new(7, rx);
        assert_eq!(p.client_msg_id(), 7);
        drop(tx);
        assert!(matches!(p.await, Err(ClientError::Closed)));
    }
}
