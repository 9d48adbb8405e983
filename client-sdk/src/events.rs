//! What the SDK tells the application: room events, connection-state
//! events, and ephemeral signals (typing, presence, receipts, notices).

use bytes::Bytes;
use confab_codec::{
    DeviceId, EventRecord, GapReason, MessageKind, Notice, PresenceEntry, ReceiptEntry, RoomId,
    Seq, UserId,
};

use crate::error::{ClientError, DisconnectReason};
use crate::transport::Endpoint;

/// One message of a room, delivered exactly once and in sequence order.
///
/// ```no_run
/// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
/// use confab_client::confab_codec::MessageKind;
///
/// let mut sub = client.subscribe("general").await?;
/// while let Some(event) = sub.next().await {
///     let event = event?;
///     let text = String::from_utf8_lossy(&event.payload);
///     match event.kind {
///         MessageKind::MESSAGE if !event.replayed => println!("new: {}: {text}", event.sender),
///         MessageKind::MESSAGE => println!("earlier: {}: {text}", event.sender),
///         MessageKind::EDIT => println!("#{:?} edited: {text}", event.refers_to),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    /// The room.
    pub room: RoomId,
    /// Its sequence in the room (1, 2, 3, ... with no gaps).
    pub seq: Seq,
    /// Server commit time, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Who sent it.
    pub sender: UserId,
    /// From which device (server-chosen and meaningless for server-written
    /// kinds).
    pub device: DeviceId,
    /// The sender's client message id (0 for server-written entries).
    pub client_msg_id: u64,
    /// What it is. Unknown kinds are passed through.
    pub kind: MessageKind,
    /// The message replied to, or the target of an edit, delete or reaction.
    pub refers_to: Option<Seq>,
    /// The root of its thread.
    pub thread: Option<Seq>,
    /// The content, opaque to the SDK.
    pub payload: Bytes,
    /// True if it came from the room's log (backlog after a (re)subscribe,
    /// catch-up, gap fill, history) rather than live fan-out. Useful to
    /// avoid notifying the user about old messages.
    pub replayed: bool,
    /// The entries of the room right before this one that will never be
    /// delivered to this device, with the reason (usually none). Each
    /// range is reported once, on the first event after it, and taking
    /// this event moves the room's cursor past it, so that no resumption
    /// reports it again. The ranges are in order and end at `seq - 1`;
    /// see [`Gap`].
    pub gaps: Vec<Gap>,
}

/// Entries `from..=to` of a room that will never be delivered to this
/// device, and why.
///
/// The broker says so (protocol version 2's `Gap` frame), or, with a
/// broker of version 1, the SDK derives the range from the oldest entry
/// the broker still keeps: either way the SDK never tries to read it from
/// history. A `Trimmed` or `Deleted` range comes in
/// [`RoomEvent::gaps`] of the next event; losing access to the room ends
/// the subscription with [`ClientError::AccessLost`].
///
/// ```no_run
/// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
/// let mut sub = client.subscribe("general").await?;
/// while let Some(event) = sub.next().await {
///     let event = event?;
///     for gap in &event.gaps {
///         println!("-- messages {}..={} are unavailable ({:?}) --", gap.from, gap.to, gap.reason);
///     }
///     println!("#{} {}", event.seq, event.sender);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The room.
    pub room: RoomId,
    /// The first sequence not delivered.
    pub from: Seq,
    /// The last sequence not delivered (inclusive).
    pub to: Seq,
    /// Why: `Trimmed` (retention removed them before this device read
    /// them), `Deleted`, or `AccessLost`.
    pub reason: GapReason,
}

impl RoomEvent {
    /// Builds an event from a wire record.
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
    /// use confab_client::confab_codec::{Direction, RoomId, Seq};
    /// use confab_client::RoomEvent;
    ///
    /// let room = RoomId::new("general")?;
    /// let page = client.history_page(&room, Direction::Before, Seq(0), 10).await?;
    /// let events: Vec<RoomEvent> = page
    ///     .events
    ///     .into_iter()
    ///     .map(|record| RoomEvent::from_record(room.clone(), record, true))
    ///     .collect();
    /// # let _ = events;
    /// # Ok(()) }
    /// ```
    pub fn from_record(room: RoomId, record: EventRecord, replayed: bool) -> Self {
        RoomEvent {
            room,
            seq: record.seq,
            timestamp_us: record.timestamp_us,
            sender: record.sender,
            device: record.device,
            client_msg_id: record.client_msg_id,
            kind: record.kind,
            refers_to: record.refers_to,
            thread: record.thread,
            payload: record.payload,
            replayed,
            gaps: Vec::new(),
        }
    }
}

/// A change of the connection's state, from
/// [`Client::events`](crate::Client::events).
///
/// ```no_run
/// # async fn run(client: confab_client::Client) {
/// use confab_client::ConnectionEvent;
///
/// let mut events = client.events();
/// while let Ok(event) = events.recv().await {
///     match event {
///         ConnectionEvent::Connected { user, .. } => println!("online as {user}"),
///         ConnectionEvent::Disconnected { reason } => println!("offline ({reason}), retrying"),
///         ConnectionEvent::Reconnected { resumed, .. } => {
///             println!("online again; {} rooms resumed", resumed.len())
///         }
///         ConnectionEvent::PublishFailed { client_msg_id, error, .. } => {
///             println!("message {client_msg_id} refused: {error}")
///         }
///         ConnectionEvent::Closed { error } => {
///             println!("stopped: {error:?}");
///             break;
///         }
///         _ => {}
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// A connection attempt starts: the first one of a client, or one
    /// after a loss or a failed attempt (then after a backoff delay). While
    /// the broker is unreachable, every attempt is reported by a
    /// `Connecting` then a `Disconnected`; calls made meanwhile are queued.
    Connecting {
        /// The attempt's number since the last connection was up (or since
        /// the client started), from 1.
        attempt: u32,
        /// The endpoint this attempt goes to (one of
        /// [`ClientConfig::endpoints`](crate::ClientConfig::endpoints)).
        endpoint: Endpoint,
    },
    /// The first connection of this client is up.
    Connected {
        /// The authenticated user.
        user: UserId,
        /// The broker's id for this connection (for its logs).
        session_id: u64,
    },
    /// The connection ended, or a connection attempt failed. The client
    /// reconnects with backoff unless the reason is fatal.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// A new connection is up after a loss. Every subscribed room was
    /// resumed from its last delivered sequence + 1 and unacknowledged
    /// publishes were sent again.
    Reconnected {
        /// The broker's id for this connection.
        session_id: u64,
        /// The rooms resumed in the handshake.
        resumed: Vec<RoomId>,
    },
    /// The broker switched a room to catch-up because this device fell
    /// behind. Nothing is lost; events keep coming from the log.
    Lagging {
        /// The room.
        room: RoomId,
        /// The next sequence catch-up delivers.
        resume_from: Seq,
        /// The room's head when it switched.
        head: Seq,
    },
    /// A lagging room is live again.
    CaughtUp {
        /// The room.
        room: RoomId,
        /// The last sequence delivered by catch-up.
        seq: Seq,
    },
    /// The application does not read a subscription and its buffer is full:
    /// delivery of the room is paused. It resumes by itself, from where it
    /// stopped, once the application has drained half of the buffer.
    Paused {
        /// The room.
        room: RoomId,
    },
    /// Retention removed these messages before this client could read them;
    /// they will never be delivered. Sent when the SDK learns it; the same
    /// range comes, in order and once, in [`RoomEvent::gaps`] of the room's
    /// next event (after an application restart, an event the application
    /// had not taken is delivered again with its gap, and this notification
    /// is sent again).
    HistoryTruncated {
        /// The room.
        room: RoomId,
        /// First lost sequence.
        from: Seq,
        /// Last lost sequence.
        to: Seq,
    },
    /// A publish whose [`PendingPublish`](crate::PendingPublish) was dropped
    /// (fire-and-forget) was refused by the broker.
    PublishFailed {
        /// The room.
        room: RoomId,
        /// The publish's client message id.
        client_msg_id: u64,
        /// The refusal.
        error: ClientError,
    },
    /// The client stopped: closed by the application (`error` is `None`) or
    /// after a fatal error.
    Closed {
        /// The fatal error, if any.
        error: Option<ClientError>,
    },
}

/// Where the client stands, from [`Client::state`](crate::Client::state).
///
/// ```no_run
/// # fn run(client: confab_client::Client) {
/// use confab_client::ConnectionState;
///
/// let badge = match client.state() {
///     ConnectionState::Connected { .. } => "online",
///     ConnectionState::Connecting | ConnectionState::Reconnecting => "connecting...",
///     ConnectionState::Closed => "offline",
///     _ => "",
/// };
/// # let _ = badge;
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connection is being opened.
    Connecting,
    /// Connected and handshaken.
    Connected {
        /// The authenticated user.
        user: UserId,
        /// The broker's id for this connection.
        session_id: u64,
    },
    /// The connection was lost; reconnecting with backoff.
    Reconnecting,
    /// Stopped for good.
    Closed,
}

/// Ephemeral information pushed by the broker, from
/// [`Client::signals`](crate::Client::signals). Never stored, never
/// replayed: a client that was offline does not get the ones it missed.
///
/// ```no_run
/// # async fn run(client: confab_client::Client) {
/// use confab_client::Signal;
///
/// let mut signals = client.signals();
/// while let Ok(signal) = signals.recv().await {
///     match signal {
///         Signal::Typing { room, users } => println!("{room}: {users:?} typing"),
///         Signal::Receipts { room, entries } => println!("{room}: {} receipts", entries.len()),
///         Signal::Presence(entries) => println!("{} presence changes", entries.len()),
///         Signal::Notice(notice) => println!("notice: {notice:?}"),
///         _ => {}
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// The complete set of users typing in a room now (replaces the
    /// previous set; may include this user, typing on another device).
    Typing {
        /// The room.
        room: RoomId,
        /// Who is typing.
        users: Vec<UserId>,
    },
    /// Presence changes (after
    /// [`Client::watch_presence`](crate::Client::watch_presence)).
    Presence(Vec<PresenceEntry>),
    /// Delivered or read markers moved in a room.
    Receipts {
        /// The room.
        room: RoomId,
        /// The moved markers.
        entries: Vec<ReceiptEntry>,
    },
    /// An informational notice from the broker.
    Notice(Notice),
    /// The inbox sync the SDK ran when a connection came up (with
    /// [`ClientConfig::inbox_sync`](crate::ClientConfig::inbox_sync)): the
    /// rooms that changed since the previous one (every room the first
    /// time), before the followed rooms' backlogs arrive. Its cursor is
    /// already stored in the cursor store.
    Inbox(crate::InboxSync),
}
