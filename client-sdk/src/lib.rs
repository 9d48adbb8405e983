//! # confab-client
//!
//! The Rust SDK of Confab, a chat message broker. Its promise: **an
//! application sees every message of every room it follows exactly once and
//! in sequence order, whatever happens to the network, to the broker process
//! or to the application itself.**
//!
//! ```no_run
//! # async fn run() -> Result<(), confab_client::ClientError> {
//! use confab_client::{Client, ClientConfig, FileCursorStore};
//!
//! let store = FileCursorStore::open("/var/lib/myapp/cursors").await?;
//! let config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone")?
//!     .cursor_store(store);
//! let client = Client::connect(config).await?;
//!
//! // Picks up where this device stopped, even days ago.
//! let mut general = client.subscribe("general").await?;
//! let ack = client.publish("general", "hello").await?;
//! println!("stored as #{}", ack.seq);
//! while let Some(event) = general.next().await {
//!     let event = event?;
//!     println!("#{} {}: {:?}", event.seq, event.sender, event.payload);
//! }
//! # Ok(()) }
//! ```
//!
//! ## How the promise is kept
//!
//! - **Sequences.** Every room numbers its messages 1, 2, 3, ... without
//!   gaps. Per room, the SDK tracks the last sequence it delivered and hands
//!   the application only the next one. Lower sequences are duplicates and
//!   are dropped; a higher one reveals a gap: it is buffered, the missing
//!   range is read from the room's history, and only then are the buffered
//!   events delivered. (The broker already promises a gap-free stream; the
//!   SDK checks instead of trusting.)
//! - **Reconnection.** A lost connection (transport error, broker shutdown
//!   or crash, a link that went silent past the dead-link timeout) is
//!   reopened with exponential backoff and full jitter. The handshake
//!   resumes every subscribed room from its last delivered sequence + 1, so
//!   the broker replays what was missed, then continues live.
//! - **Starting offline.** [`Client::start`] returns at once, network or
//!   not, and connects in the background: until then subscriptions,
//!   publishes and receipts wait as during any disconnection, and requests
//!   wait for the connection ([`Client::connect`] instead waits for the
//!   first connection and reports a failed first attempt).
//! - **Publishing.** Every publish carries a client message id, unique per
//!   device and increasing across restarts (it starts from the clock).
//!   Unacknowledged publishes are sent again after a reconnection with the
//!   same id; the broker stores each id once and acknowledges a retry with
//!   the original sequence.
//! - **Cursors.** A [`CursorStore`] keeps the last delivered sequence per
//!   room. With a [`FileCursorStore`], an application restarted after any
//!   offline span subscribes each room from its cursor and receives exactly
//!   what it missed. (After a crash, rather than a clean
//!   [`Client::close`], events delivered in the last
//!   [`FILE_FLUSH_DELAY`] may be delivered again; their sequence numbers let
//!   the application recognise them.)
//!
//! ## Policies
//!
//! - **Backpressure on publishing.** At most
//!   [`ClientConfig::outbound_queue_capacity`] publishes wait for their
//!   acknowledgement. [`Client::publish`] and [`Client::enqueue`] wait for
//!   room; [`Client::try_publish`] fails with [`ClientError::QueueFull`].
//!   Memory never grows without bound, online or offline.
//! - **Fire-and-forget.** [`Client::publish_nowait`] (or dropping a
//!   [`PendingPublish`]) only spares the caller the wait: the SDK still
//!   tracks the acknowledgement and retries like any publish, and reports a
//!   refusal as [`ConnectionEvent::PublishFailed`]. The protocol's
//!   `NO_REPLY` flag is never used, since it would make storage
//!   unverifiable.
//! - **Slow readers.** Each [`Subscription`] buffers a bounded number of
//!   events. An application that stops reading one room does not stall the
//!   others: that room is paused (and unsubscribed at the broker), then
//!   resumed from where it stopped once half of its buffer is drained.
//!   Nothing is lost or repeated.
//! - **Fatal errors.** A refused or expired token, an unsupported protocol
//!   version, or the same device connecting elsewhere stops the client
//!   ([`ClientError::Fatal`], [`ConnectionEvent::Closed`]) instead of
//!   reconnecting in a loop. Everything else is retried.
//!
//! ## Cancel safety
//!
//! | Future | Cancel-safe? |
//! |---|---|
//! | [`Subscription::next`] | Yes: no event is lost. |
//! | [`Client::enqueue`], [`Client::publish_nowait`] | Yes: dropped before completion, nothing was queued. |
//! | awaiting a [`PendingPublish`] | Yes: only the notification is lost, never the message. |
//! | [`Client::publish`], [`Client::publish_message`] | **No**: once queued, dropping the future does not unsend the message; it is still published (at most once). |
//! | [`Client::history`], [`Client::history_page`], [`Client::flush`], [`Client::wait_connected`] | Yes (read-only or waiting only). |
//! | [`Client::subscribe`], [`Client::subscribe_from`] | In effect: the dropped subscription unsubscribes the room. |
//! | room, presence, receipt and typing calls | The request may already be on its way: the broker may carry it out though the reply is lost. |
//! | [`Client::close`] | In effect: once started, the close completes in the background. |
//!
//! ## Events
//!
//! [`Client::events`] streams [`ConnectionEvent`]s (`Connected`,
//! `Disconnected{reason}`, `Reconnected{resumed}`, `Lagging`, `Paused`,
//! ...); [`Client::signals`] streams typing, presence, receipt and notice
//! [`Signal`]s; [`Client::state`] tells where the connection stands.
//!
//! ## Transports
//!
//! The URL selects the transport: `confab://host:port` (TCP),
//! `confabs://host:port` (TLS over TCP) or `confab+quic://host:port`
//! (QUIC). TLS and QUIC need [`ClientConfig::trust`]: a CA file or the
//! broker certificate's pinned SHA-256 fingerprint ([`Trust`]); there is no
//! way to accept any certificate. Everything else (reconnection, gap sync,
//! cursors, publish retries) is the same code on every transport. Over
//! QUIC, each room's events travel on their own stream, so a room waiting
//! for a lost packet does not hold back the others, and a device that
//! changes networks keeps its connection. [`Endpoint::Custom`] plugs in any
//! [`Connector`].

#![warn(missing_docs)]

mod backoff;
mod client;
mod codec;
mod config;
mod cursor;
mod driver;
mod error;
mod events;
mod ids;
mod outbox;
mod publish;
mod push;
mod rooms;
mod subscription;
#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod sync;
#[cfg(not(feature = "sim"))]
mod sync;
mod transport;
mod view;

pub use backoff::BackoffConfig;
pub use client::Client;
pub use config::{ClientConfig, MAX_ENDPOINTS};
pub use cursor::{CursorStore, FileCursorStore, MemoryCursorStore, FILE_FLUSH_DELAY};
pub use error::{ClientError, DisconnectReason};
pub use events::{ConnectionEvent, ConnectionState, Gap, RoomEvent, Signal};
pub use ids::{IntoRoomId, IntoUserId};
pub use outbox::{FileOutboxStore, OutboxStore, DEFAULT_OUTBOX_MAX_BYTES};
pub use publish::{Message, PendingPublish};
pub use rooms::InboxSync;
pub use subscription::Subscription;
pub use transport::{
    BoxByteStream, ByteStream, Connector, Endpoint, Fingerprint, Trust, ALPN, DEFAULT_PORT,
    DEFAULT_QUIC_PORT, DEFAULT_TLS_PORT,
};
pub use view::{MessageView, RoomView};

/// The application developer's guide, docs/sdk.md, compiled as
/// documentation tests so that its examples keep matching the API.
#[cfg(doctest)]
#[doc = include_str!("../../docs/sdk.md")]
pub struct SdkGuide;

/// The protocol crate, re-exported: ids ([`RoomId`](confab_codec::RoomId),
/// [`Seq`](confab_codec::Seq), ...) and the reply types of the thin calls
/// ([`PublishAck`](confab_codec::PublishAck),
/// [`RoomInfo`](confab_codec::RoomInfo), ...).
pub use confab_codec;
