//! [`Subscription`]: the stream of one room's events.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use confab_codec::RoomId;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::driver::SubCtl;
use crate::error::ClientError;
use crate::events::RoomEvent;

/// Why a subscription ended, set by the connection task before it drops the
/// sending side of the channel.
pub(crate) type EndSlot = Mutex<Option<ClientError>>;

/// The events of one room, in sequence order, each exactly once, across
/// reconnections.
///
/// Use it as a [`Stream`] or through [`Subscription::next`]. Items are
/// `Ok(event)`; the stream ends with `None` when the client is closed, or
/// with one `Err` then `None` when the subscription ended for another reason
/// (the broker refused it, for example `NotMember` after the user was
/// removed from the room, or a fatal client error).
///
/// **Cursor.** Taking an event from the subscription counts as delivering
/// it: the room's cursor in the [`CursorStore`](crate::CursorStore) moves to
/// its sequence. An application restarted later resumes after that event.
/// If it crashes while handling an event, that event is not delivered
/// again; applications that need to re-process it should record their own
/// position and use [`Client::subscribe_from`].
///
/// **Slow readers.** The subscription buffers up to
/// [`ClientConfig::event_buffer_capacity`](crate::ClientConfig::event_buffer_capacity)
/// events. If the application stops reading and the buffer fills, the SDK
/// does not block the connection (other rooms keep flowing) and does not
/// drop anything: it pauses this room (unsubscribing it at the broker and
/// emitting [`ConnectionEvent::Paused`](crate::ConnectionEvent::Paused)),
/// and once the application has drained half of the buffer it resubscribes
/// from the last event it buffered + 1. Exactly-once order is kept.
///
/// **Dropping** the subscription unsubscribes the room.
///
/// ```no_run
/// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
/// let mut sub = client.subscribe("general").await?;
/// while let Some(event) = sub.next().await {
///     let event = event?;
///     println!("{} #{}: {:?}", event.sender, event.seq, event.payload);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscription {
    room: RoomId,
    id: u64,
    rx: mpsc::Receiver<RoomEvent>,
    end: Arc<EndSlot>,
    client: Client,
    finished: bool,
}

impl Subscription {
    pub(crate) fn new(
        room: RoomId,
        id: u64,
        rx: mpsc::Receiver<RoomEvent>,
        end: Arc<EndSlot>,
        client: Client,
    ) -> Self {
        Self {
            room,
            id,
            rx,
            end,
            client,
            finished: false,
        }
    }

    /// The room.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let sub = client.subscribe("general").await?;
    /// assert_eq!(sub.room().as_str(), "general");
    /// # Ok(()) }
    /// ```
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The next event, or `None` once the subscription has ended.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no event
    /// is lost; the next call returns it.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use std::time::Duration;
    ///
    /// let mut sub = client.subscribe("general").await?;
    /// // Cancel-safe, so it can sit in a select! or under a timeout.
    /// match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
    ///     Ok(Some(event)) => println!("#{}", event?.seq),
    ///     Ok(None) => println!("the client was closed"),
    ///     Err(_) => println!("nothing new for a second"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Option<Result<RoomEvent, ClientError>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Events already buffered, without waiting.
    ///
    /// ```no_run
    /// # async fn run(mut sub: confab_client::Subscription) {
    /// // Drain what is already there, e.g. to render a batch at once.
    /// let mut batch = Vec::new();
    /// while sub.buffered() > 0 {
    ///     match sub.next().await {
    ///         Some(Ok(event)) => batch.push(event),
    ///         _ => break,
    ///     }
    /// }
    /// # }
    /// ```
    pub fn buffered(&self) -> usize {
        self.rx.len()
    }

    /// Unsubscribes at the broker and waits for its acknowledgement. Events
    /// still buffered are discarded (and not marked delivered).
    ///
    /// Not cancel-safe in a useful sense: if the future is dropped, the
    /// subscription is dropped too, which also unsubscribes.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let sub = client.subscribe("general").await?;
    /// sub.unsubscribe().await?; // or just drop it
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Timeout`] or [`ClientError::Closed`]; the room is
    /// unsubscribed locally in any case.
    pub async fn unsubscribe(self) -> Result<(), ClientError> {
        self.client
            .unsubscribe_room(self.room.clone(), self.id)
            .await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RoomEvent, ClientError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                self.client.cursor_store().set(&self.room, event.seq);
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                let end = self.end.lock().unwrap_or_else(|p| p.into_inner()).take();
                Poll::Ready(end.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Stream for Subscription {
    type Item = Result<RoomEvent, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.send_ctl(SubCtl::Dropped {
            room: self.room.clone(),
            id: self.id,
        });
    }
}
