//! [`Client`]: the application's handle.
//!
//! The handle does no IO. Every call becomes a command on a bounded channel
//! to the connection task (`driver`), which owns the socket; replies come
//! back on oneshot channels.

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use confab_codec::{
    Body, Direction, HistoryPage, HistoryRequest, Publish, PublishAck, RoomId, Seq,
};
use futures_util::FutureExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};

use crate::config::ClientConfig;
use crate::cursor::CursorStore;
use crate::driver::{self, Command, Outgoing, ReqMode, SubCtl, SubscribeCmd};
use crate::error::ClientError;
use crate::events::{ConnectionEvent, ConnectionState, RoomEvent, Signal};
use crate::ids::IntoRoomId;
use crate::outbox::OutboxStore;
use crate::publish::{Message, MsgIds, PendingPublish};
use crate::subscription::Subscription;

/// Capacity of the command channel to the connection task. Publishes are
/// bounded separately by the outbound queue.
const COMMAND_QUEUE: usize = 256;

/// Most events kept per receiver of [`Client::events`] and
/// [`Client::signals`]; a receiver that falls further behind misses some
/// (and is told so by `RecvError::Lagged`).
const BROADCAST_CAPACITY: usize = 256;

/// Most events per history request made by [`Client::history`].
const HISTORY_PAGE: u16 = 1000;

/// A connection to a Confab broker that survives network failures, broker
/// restarts and application restarts.
///
/// Cheap to clone; all clones share one connection. The connection task
/// stops when the last clone and the last [`Subscription`] are dropped, or
/// on [`Client::close`].
///
/// **Requests** (history, rooms, presence) wait for a connection while
/// offline. Those that only read (history, room info, room list, presence,
/// message status) are sent again on the next connection when the
/// connection drops before their reply. Receipts
/// ([`Client::mark_read`], [`Client::mark_delivered`]) return at once and
/// are delivered by the SDK, offline or not. Besides the broker's own
/// refusals ([`ClientError::Server`]), requests share these failures,
/// called "the common ones" in the method docs: [`ClientError::Timeout`]
/// (no reply within [`ClientConfig::request_timeout`], waiting for a
/// connection included), [`ClientError::ConnectionLost`] (the connection
/// dropped with a request that changes something in flight; it is not
/// retried, since it may have been carried out), [`ClientError::QueueFull`]
/// (too many requests waiting for a connection), [`ClientError::Closed`]
/// (or the error that stopped the client, see [`Client::closed_error`]),
/// and [`ClientError::Codec`] for an invalid id.
///
/// ```no_run
/// # async fn run() -> Result<(), confab_client::ClientError> {
/// use confab_client::{Client, ClientConfig};
///
/// let config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone")?;
/// let client = Client::connect(config).await?;
/// let mut sub = client.subscribe("general").await?;
/// let ack = client.publish("general", "hello").await?;
/// println!("stored as #{}", ack.seq);
/// let echo = sub.next().await.transpose()?;
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cmds: mpsc::Sender<Command>,
    ctl: mpsc::UnboundedSender<SubCtl>,
    permits: Arc<Semaphore>,
    msg_ids: MsgIds,
    sub_ids: AtomicU64,
    events: broadcast::Sender<ConnectionEvent>,
    signals: broadcast::Sender<Signal>,
    state: watch::Receiver<ConnectionState>,
    /// Why the connection task stopped, if for a fatal error.
    stopped: Arc<OnceLock<ClientError>>,
    config: Arc<ClientConfig>,
    /// The handles on the publishes restored from the outbox store, until
    /// the application takes them.
    restored: std::sync::Mutex<Vec<PendingPublish>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.config.endpoints)
            .field("device", &self.inner.config.device)
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the client and waits for its first connection.
    ///
    /// Cancel-safe: dropping the future stops the client it was starting.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), confab_client::ClientError> {
    /// use confab_client::{Client, ClientConfig};
    ///
    /// let config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone")?;
    /// let client = Client::connect(config).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidConfig`], or the failure of the first
    /// connection attempt (transport error, [`ClientError::Timeout`],
    /// [`ClientError::Fatal`] for a refused token). An application that
    /// must work without a network uses [`Client::start`] instead, which
    /// keeps trying in the background.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (tx, rx) = oneshot::channel();
        let client = Self::spawn(config, Some(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Starts the client without waiting for the network: the way to start
    /// an application that must work offline (a phone in a tunnel, a broker
    /// restarting). It returns at once and connects in the background, with
    /// backoff, for as long as it takes
    /// ([`BackoffConfig::max_attempts`](crate::BackoffConfig::max_attempts)
    /// aside), reporting each attempt as [`ConnectionEvent::Connecting`] and
    /// each failure as [`ConnectionEvent::Disconnected`]. Meanwhile every
    /// call works as while a connection is down: subscriptions are
    /// registered, publishes wait in the bounded outbound queue, receipts
    /// are kept, requests wait for a connection (within the request
    /// timeout). Once the broker answers, everything is sent and every room
    /// is delivered, exactly once and in order.
    ///
    /// A refused token, an unsupported protocol version, or the device
    /// taken over elsewhere still stops the client after the first
    /// attempt: [`ConnectionEvent::Closed`] with the error, and every call,
    /// [`Client::wait_connected`] included, fails with that
    /// [`ClientError::Fatal`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), confab_client::ClientError> {
    /// use confab_client::{Client, ClientConfig};
    ///
    /// let config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone")?;
    /// // Returns at once, even if the broker is unreachable right now.
    /// let client = Client::start(config)?;
    /// // Registered now, resumed from its cursor once connected.
    /// let mut general = client.subscribe("general").await?;
    /// // Queued, and sent as soon as a connection is up.
    /// let pending = client.publish_nowait("general", "written offline").await?;
    /// # let _ = (pending, general.next().await);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidConfig`] for a configuration that cannot work
    /// (bad values, a TLS or QUIC endpoint without a usable trust anchor)
    /// or outside a tokio runtime; never for the lack of a network.
    pub fn start(config: ClientConfig) -> Result<Client, ClientError> {
        Self::spawn(config, None)
    }

    fn spawn(
        config: ClientConfig,
        first: Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Result<Client, ClientError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::InvalidConfig("a client must be started inside a tokio runtime".into())
        })?;
        let dialer = Arc::new(crate::transport::Dialer::new(&config)?);
        let config = Arc::new(config);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (signals, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let permits = Arc::new(Semaphore::new(config.outbound_queue_capacity));
        let stopped = Arc::new(OnceLock::new());
        // What an earlier run left unacknowledged in the outbox store: sent
        // first, with the same ids, each in a queue slot while there are
        // slots (the store may hold more than the queue if the capacity was
        // lowered since).
        let stored = config
            .outbox_store
            .as_ref()
            .map(|s| s.restored())
            .unwrap_or_default();
        let msg_ids = MsgIds::from_clock_above(stored.iter().map(|p| p.client_msg_id).max());
        let mut restored = Vec::with_capacity(stored.len());
        let mut handles = Vec::with_capacity(stored.len());
        for publish in stored {
            let (reply, rx) = oneshot::channel();
            handles.push(PendingPublish::new(publish.client_msg_id, rx));
            restored.push(Outgoing {
                publish,
                reply,
                permit: permits.clone().try_acquire_owned().ok(),
            });
        }
        let parts = driver::Parts {
            stopped: stopped.clone(),
            config: config.clone(),
            dialer,
            cmds: cmd_rx,
            ctl: ctl_rx,
            ctl_tx: ctl_tx.clone(),
            permits: permits.clone(),
            events: events.clone(),
            signals: signals.clone(),
            state: state_tx,
            first_connect: first,
            restored,
        };
        runtime.spawn(driver::run(parts));
        Ok(Client {
            inner: Arc::new(Inner {
                cmds: cmd_tx,
                ctl: ctl_tx,
                permits,
                msg_ids,
                sub_ids: AtomicU64::new(1),
                events,
                signals,
                state: state_rx,
                stopped,
                config,
                restored: std::sync::Mutex::new(handles),
            }),
        })
    }

    // ----- subscriptions -------------------------------------------------

    /// Follows a room from where this device stopped: from its cursor + 1
    /// if the [`CursorStore`] has one (every message since is replayed,
    /// however long ago that was), else live (messages from now on).
    ///
    /// When connected, waits for the broker's answer; when offline, returns
    /// at once and the room is subscribed on connection.
    ///
    /// Cancel-safe in effect: if the future is dropped, the subscription it
    /// would have returned is dropped too, which unsubscribes the room.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let mut general = client.subscribe("general").await?;
    /// while let Some(event) = general.next().await {
    ///     let event = event?;
    ///     println!("[{}] {}: {:?}", event.seq, event.sender, event.payload);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NotMember`, `NoSuchRoom`, `TooManyRooms`),
    /// [`ClientError::AlreadySubscribed`], [`ClientError::Timeout`],
    /// [`ClientError::Closed`], or an invalid room id.
    pub async fn subscribe(&self, room: impl IntoRoomId) -> Result<Subscription, ClientError> {
        self.subscribe_at(room.into_room_id()?, None).await
    }

    /// Follows a room from sequence `from` (inclusive), whatever the cursor
    /// says: the broker replays `from..=head`, then continues live.
    /// Cancellation and errors as [`Client::subscribe`]; a `from` older
    /// than the room's retention is reported as
    /// [`ConnectionEvent::HistoryTruncated`].
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::Seq;
    ///
    /// // The whole room from its first message, then live.
    /// let mut everything = client.subscribe_from("general", Seq(1)).await?;
    /// # let _ = everything.next().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_from(
        &self,
        room: impl IntoRoomId,
        from: Seq,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_at(room.into_room_id()?, Some(from)).await
    }

    async fn subscribe_at(
        &self,
        room: RoomId,
        from: Option<Seq>,
    ) -> Result<Subscription, ClientError> {
        let id = self.inner.sub_ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.config.event_buffer_capacity);
        let end = Arc::new(std::sync::Mutex::new(None));
        // Built before sending, so that dropping this future at any point
        // unsubscribes the room (Subscription's Drop).
        let sub = Subscription::new(room.clone(), id, rx, end.clone(), self.clone());
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Subscribe(SubscribeCmd {
            room,
            id,
            from,
            tx,
            end,
            reply,
        });
        self.call(cmd, answer).await??;
        Ok(sub)
    }

    pub(crate) async fn unsubscribe_room(&self, room: RoomId, id: u64) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.call(Command::Unsubscribe { room, id, reply }, answer)
            .await?
    }

    pub(crate) fn send_ctl(&self, ctl: SubCtl) {
        // Fails only when the connection task is gone, and then there is
        // nothing left to tell.
        let _ = self.inner.ctl.send(ctl);
    }

    pub(crate) fn cursor_store(&self) -> &dyn CursorStore {
        &*self.inner.config.cursor_store
    }

    // ----- publishing ----------------------------------------------------

    /// Publishes an ordinary message and waits for the broker's
    /// acknowledgement, across reconnections if needed.
    ///
    /// **Not cancel-safe:** once the message is in the outbound queue,
    /// dropping this future does not unsend it. It is still published (at
    /// most once, thanks to its client message id) and a refusal is
    /// reported as [`ConnectionEvent::PublishFailed`]. Dropped while still
    /// waiting for queue space, nothing is sent.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let ack = client.publish("general", "hello").await?;
    /// println!("stored as #{} (a retry: {})", ack.seq, ack.duplicate);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] if the broker refuses it (`NotMember`,
    /// `PayloadTooLarge`, `RateLimited`, ...), [`ClientError::PayloadTooLarge`],
    /// [`ClientError::Closed`], or an invalid room id.
    pub async fn publish(
        &self,
        room: impl IntoRoomId,
        payload: impl Into<Bytes>,
    ) -> Result<PublishAck, ClientError> {
        self.publish_message(Message::new(room.into_room_id()?, payload))
            .await
    }

    /// Publishes any [`Message`] (replies, edits, reactions, custom kinds)
    /// and waits for the acknowledgement. Cancellation as [`Client::publish`].
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::{RoomId, Seq};
    /// use confab_client::Message;
    ///
    /// let general = RoomId::new("general")?;
    /// client.publish_message(Message::reaction(general.clone(), Seq(41), "👍")).await?;
    /// client.publish_message(Message::new(general, "agreed").refers_to(Seq(41))).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_message(&self, message: Message) -> Result<PublishAck, ClientError> {
        self.enqueue(message).await?.await
    }

    /// Puts a message in the outbound queue, waiting while the queue is full
    /// (backpressure), and returns without waiting for the acknowledgement.
    /// Await the returned [`PendingPublish`] for it, or drop it.
    ///
    /// Cancel-safe: if dropped before it completes, nothing was queued.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::RoomId;
    /// use confab_client::Message;
    ///
    /// let room = RoomId::new("general")?;
    /// // Queue a burst without waiting for each acknowledgement...
    /// let mut pending = Vec::new();
    /// for i in 0..100 {
    ///     pending.push(client.enqueue(Message::new(room.clone(), format!("#{i}"))).await?);
    /// }
    /// // ...then collect the acknowledgements.
    /// for p in pending {
    ///     let ack = p.await?;
    ///     println!("stored as #{}", ack.seq);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn enqueue(&self, message: Message) -> Result<PendingPublish, ClientError> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.closed_error())?;
        let (cmd, pending) = self.outgoing(message, permit);
        // With an outbox store: durable before it is queued, and taken out
        // of the store again if this call ends (cancelled, or the client
        // closed) before it is queued.
        let mut unstore = None;
        if let (Some(store), Command::Publish(o)) = (&self.inner.config.outbox_store, &cmd) {
            let guard = Unstore {
                store: store.as_ref(),
                client_msg_id: o.publish.client_msg_id,
                armed: true,
            };
            store.add(&o.publish).await?;
            unstore = Some(guard);
        }
        self.inner
            .cmds
            .send(cmd)
            .await
            .map_err(|_| self.closed_error())?;
        if let Some(mut guard) = unstore {
            guard.armed = false;
        }
        Ok(pending)
    }

    /// Like [`Client::enqueue`] but never waits.
    ///
    /// ```no_run
    /// # fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::RoomId;
    /// use confab_client::{ClientError, Message};
    ///
    /// let message = Message::new(RoomId::new("general")?, "hello");
    /// match client.try_publish(message) {
    ///     Ok(pending) => drop(pending), // sent in the background
    ///     Err(ClientError::QueueFull) => eprintln!("too many messages in flight; try later"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::QueueFull`] when the outbound queue is full,
    /// [`ClientError::Closed`].
    pub fn try_publish(&self, message: Message) -> Result<PendingPublish, ClientError> {
        let permit = match self.inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(ClientError::QueueFull),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(self.closed_error()),
        };
        let (cmd, pending) = self.outgoing(message, permit);
        // With an outbox store: registered now, durable shortly after (this
        // call cannot wait for the write); a refusal (the store full) is
        // reported here, and a message that is not queued leaves the store.
        let mut unstore = None;
        if let (Some(store), Command::Publish(o)) = (&self.inner.config.outbox_store, &cmd) {
            let guard = Unstore {
                store: store.as_ref(),
                client_msg_id: o.publish.client_msg_id,
                armed: true,
            };
            if let Some(Err(e)) = store.add(&o.publish).now_or_never() {
                return Err(e);
            }
            unstore = Some(guard);
        }
        self.inner.cmds.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => self.closed_error(),
        })?;
        if let Some(mut guard) = unstore {
            guard.armed = false;
        }
        Ok(pending)
    }

    /// Fire-and-forget: queues an ordinary message (waiting for queue space)
    /// and returns its client message id. The SDK still tracks the
    /// acknowledgement and retries after reconnections exactly like
    /// [`Client::publish`] (it does not use the protocol's `NO_REPLY` flag,
    /// which would make delivery unverifiable); only the caller does not
    /// wait. Refusals are reported as [`ConnectionEvent::PublishFailed`].
    /// Cancel-safe like [`Client::enqueue`].
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// let id = client.publish_nowait("general", "fire and forget").await?;
    /// println!("queued with client message id {id}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Closed`], or an invalid room id.
    pub async fn publish_nowait(
        &self,
        room: impl IntoRoomId,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let pending = self
            .enqueue(Message::new(room.into_room_id()?, payload))
            .await?;
        Ok(pending.client_msg_id())
    }

    /// The publishes an earlier run of this application left unacknowledged
    /// in the [`OutboxStore`] (see [`ClientConfig::outbox_store`]): the
    /// client sends them first, with their original client message ids, and
    /// the broker stores each once (one stored before the earlier run died
    /// is acknowledged as a duplicate with its original sequence). Await the
    /// handles for their acknowledgements, or ignore them: refusals are then
    /// reported as [`ConnectionEvent::PublishFailed`]. Returns them once;
    /// later calls return nothing.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// for pending in client.restored_publishes() {
    ///     let id = pending.client_msg_id();
    ///     let ack = pending.await?;
    ///     println!("left by the last run: {id} stored as #{}", ack.seq);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn restored_publishes(&self) -> Vec<PendingPublish> {
        std::mem::take(
            &mut *self
                .inner
                .restored
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Waits until every publish queued so far has been acknowledged or
    /// refused. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.publish_nowait("general", "bye").await?;
    /// client.flush().await?; // acknowledged (or refused) by now
    /// client.close().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the client stops first.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .cmds
            .send(Command::Flush(reply))
            .await
            .map_err(|_| self.closed_error())?;
        answer.await.map_err(|_| self.closed_error())
    }

    fn outgoing(
        &self,
        m: Message,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> (Command, PendingPublish) {
        let client_msg_id = self.inner.msg_ids.next();
        let (reply, rx) = oneshot::channel();
        let publish = Publish {
            room: m.room,
            client_msg_id,
            kind: m.kind,
            refers_to: m.refers_to,
            thread: m.thread,
            payload: m.payload,
        };
        let cmd = Command::Publish(Outgoing {
            publish,
            reply,
            permit: Some(permit),
        });
        (cmd, PendingPublish::new(client_msg_id, rx))
    }

    // ----- history -------------------------------------------------------

    /// Reads the events of `room` with sequences in `range`, in order,
    /// paging as needed (`1..=50`, `100..`). An unbounded end reads up to
    /// the head: mind the memory for large rooms. Events older than the
    /// room's retention are absent. Cancel-safe (read-only).
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// for event in client.history("general", 1..=50).await? {
    ///     println!("[{}] {}: {:?}", event.seq, event.sender, event.payload);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::history_page`].
    pub async fn history(
        &self,
        room: impl IntoRoomId,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<RoomEvent>, ClientError> {
        let room = room.into_room_id()?;
        let start = match range.start_bound() {
            Bound::Included(&s) => s.max(1),
            Bound::Excluded(&s) => s.saturating_add(1).max(1),
            Bound::Unbounded => 1,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e),
            Bound::Excluded(&e) => Some(e.saturating_sub(1)),
            Bound::Unbounded => None,
        };
        let mut anchor = start - 1;
        let mut events = Vec::new();
        loop {
            let remaining = end.map_or(u64::from(HISTORY_PAGE), |e| e.saturating_sub(anchor));
            if remaining == 0 {
                break;
            }
            let limit = u16::try_from(remaining)
                .unwrap_or(HISTORY_PAGE)
                .min(HISTORY_PAGE);
            let page = self
                .history_page(room.clone(), Direction::After, Seq(anchor), limit)
                .await?;
            let got = page.events.len();
            for record in page.events {
                if end.is_some_and(|e| record.seq.0 > e) || record.seq.0 <= anchor {
                    continue;
                }
                anchor = record.seq.0;
                events.push(RoomEvent::from_record(room.clone(), record, true));
            }
            if !page.has_more || got == 0 {
                break;
            }
        }
        Ok(events)
    }

    /// One page of history, as the protocol has it: the `limit` events
    /// after `anchor` (exclusive), or before it (`anchor` 0 = from the
    /// head), always in ascending order. `limit` 0 returns no events, and
    /// `has_more` then tells whether any exist in that direction.
    /// Cancel-safe (read-only).
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::{Direction, Seq};
    ///
    /// // The 20 latest messages, oldest first.
    /// let page = client.history_page("general", Direction::Before, Seq(0), 20).await?;
    /// for record in &page.events {
    ///     println!("[{}] {}", record.seq, record.sender);
    /// }
    /// // The page before it.
    /// if let (true, Some(oldest)) = (page.has_more, page.events.first()) {
    ///     let older = client.history_page("general", Direction::Before, oldest.seq, 20).await?;
    /// #   let _ = older;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Server`] (`NoSuchRoom`, `NotMember`),
    /// [`ClientError::Timeout`], [`ClientError::ConnectionLost`],
    /// [`ClientError::Closed`].
    pub async fn history_page(
        &self,
        room: impl IntoRoomId,
        direction: Direction,
        anchor: Seq,
        limit: u16,
    ) -> Result<HistoryPage, ClientError> {
        let body = HistoryRequest {
            room: room.into_room_id()?,
            direction,
            anchor,
            limit,
        };
        match self.request(body, ReqMode::Reply).await? {
            Body::HistoryPage(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    // ----- plumbing ------------------------------------------------------

    /// Sends a request and waits for its reply, within the request timeout.
    pub(crate) async fn request(
        &self,
        body: impl Into<Body>,
        mode: ReqMode,
    ) -> Result<Body, ClientError> {
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Request {
            body: body.into(),
            mode,
            reply,
        };
        self.call(cmd, answer).await?
    }

    /// Sends a command and waits for its answer, within the request timeout.
    async fn call<T>(&self, cmd: Command, answer: oneshot::Receiver<T>) -> Result<T, ClientError> {
        let timeout = self.inner.config.request_timeout;
        let exchange = async {
            self.inner
                .cmds
                .send(cmd)
                .await
                .map_err(|_| self.closed_error())?;
            answer.await.map_err(|_| self.closed_error())
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    // ----- state ---------------------------------------------------------

    /// A receiver of connection-state events from now on. Cancel-safe
    /// (`broadcast::Receiver::recv`). A receiver that falls more than 256
    /// events behind gets `RecvError::Lagged` and misses the oldest ones.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) {
    /// use confab_client::ConnectionEvent;
    ///
    /// let mut events = client.events();
    /// while let Ok(event) = events.recv().await {
    ///     match event {
    ///         ConnectionEvent::Disconnected { reason } => println!("offline: {reason}"),
    ///         ConnectionEvent::Reconnected { .. } => println!("back online"),
    ///         ConnectionEvent::Closed { .. } => break,
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.events.subscribe()
    }

    /// A receiver of typing, presence, receipt and notice signals from now
    /// on, with the same lag rule as [`Client::events`].
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) {
    /// use confab_client::Signal;
    ///
    /// let mut signals = client.signals();
    /// while let Ok(signal) = signals.recv().await {
    ///     if let Signal::Typing { room, users } = signal {
    ///         println!("typing in {room}: {users:?}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn signals(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }

    /// The connection's current state.
    ///
    /// ```no_run
    /// # fn run(client: confab_client::Client) {
    /// use confab_client::ConnectionState;
    ///
    /// let online = matches!(client.state(), ConnectionState::Connected { .. });
    /// # let _ = online;
    /// # }
    /// ```
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// Why the client stopped: the fatal error that stopped it
    /// ([`ClientError::Fatal`], [`ClientError::ReconnectFailed`]), or
    /// [`ClientError::Closed`] after [`Client::close`] (or while it still
    /// runs). Calls on a stopped client fail with this error.
    ///
    /// ```no_run
    /// # fn run(client: confab_client::Client) {
    /// use confab_client::{ClientError, ConnectionState};
    ///
    /// if client.state() == ConnectionState::Closed {
    ///     if let ClientError::Fatal { code, .. } = client.closed_error() {
    ///         println!("signed out by the broker ({}): sign in again", code.as_str());
    ///     }
    /// }
    /// # }
    /// ```
    pub fn closed_error(&self) -> ClientError {
        self.inner
            .stopped
            .get()
            .cloned()
            .unwrap_or(ClientError::Closed)
    }

    /// Waits until the client is connected. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use std::time::Duration;
    ///
    /// let online = tokio::time::timeout(Duration::from_secs(5), client.wait_connected()).await;
    /// if online.is_err() {
    ///     println!("still offline; messages are queued meanwhile");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// If the client stops first: the error that stopped it
    /// ([`ClientError::Fatal`] for a refused token, ...), or
    /// [`ClientError::Closed`].
    pub async fn wait_connected(&self) -> Result<(), ClientError> {
        let mut state = self.inner.state.clone();
        let s = state
            .wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected { .. } | ConnectionState::Closed
                )
            })
            .await
            .map_err(|_| self.closed_error())?;
        match *s {
            ConnectionState::Closed => Err(self.closed_error()),
            _ => Ok(()),
        }
    }

    /// The configuration in use.
    ///
    /// ```no_run
    /// # fn run(client: confab_client::Client) {
    /// println!("talking to {:?}", client.config().endpoints);
    /// # }
    /// ```
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Closes the client: says `Goodbye` to the broker, ends every
    /// subscription (their streams end with `None`), fails unacknowledged
    /// publishes with [`ClientError::Closed`] (call [`Client::flush`] first
    /// to wait for them), flushes the cursor store and waits for the
    /// connection task to stop. Affects every clone. Idempotent.
    ///
    /// Cancel-safe in effect: once started, the close completes in the
    /// background even if this future is dropped.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// client.flush().await?; // optional: wait for unacknowledged publishes
    /// client.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self.inner.cmds.send(Command::Close(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }
}

pub(crate) fn unexpected(body: &Body) -> ClientError {
    ClientError::UnexpectedReply(body.name())
}

/// Takes a publish out of the outbox store when dropped armed: the call
/// that stored it ended before the publish was queued.
struct Unstore<'a> {
    store: &'a dyn OutboxStore,
    client_msg_id: u64,
    armed: bool,
}

impl Drop for Unstore<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.remove(self.client_msg_id);
        }
    }
}
