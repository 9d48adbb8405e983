//! The SDK's error type.
//!
//! One enum for every public call. It wraps the codec's [`CodecError`],
//! carries the broker's own `Error` replies as [`ClientError::Server`], and
//! adds the SDK's local failures (full queue, timeout, closed client).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::{CodecError, ErrorCode};

/// Why an SDK call failed.
///
/// `Clone`, so that one failure (for example the fatal error that stopped the
/// client) can be handed to every caller waiting on it.
///
/// ```no_run
/// # async fn run(client: confab_client::Client) {
/// use confab_client::confab_codec::ErrorCode;
/// use confab_client::ClientError;
///
/// match client.publish("general", "hello").await {
///     Ok(ack) => println!("stored as #{}", ack.seq),
///     Err(ClientError::RateLimited { retry_after, .. }) => {
///         println!("slow down: retry in {retry_after:?}");
///     }
///     Err(ClientError::Server { code: ErrorCode::NotMember, .. }) => println!("join first"),
///     Err(ClientError::Closed) => println!("the client was closed"),
///     Err(e) => println!("not sent: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A frame could not be encoded or decoded.
    #[error("protocol error: {0}")]
    Codec(#[from] CodecError),
    /// The transport failed (connect, read or write).
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The broker answered the request with an `Error` frame.
    #[error("server error {}: {message}", code.as_str())]
    Server {
        /// The wire error code.
        code: ErrorCode,
        /// The broker's detail, for logs.
        message: String,
        /// For `RateLimited`: how long to wait before retrying, in
        /// milliseconds; otherwise 0.
        retry_after_ms: u32,
    },
    /// The broker refused the request under a rate limit (`Error` code
    /// `RateLimited`); it was not carried out. Wait at least `retry_after`
    /// before trying again. Publishes are first retried automatically (see
    /// [`ClientConfig::rate_limit_retries`](crate::ClientConfig::rate_limit_retries)).
    #[error("rate limited: retry in {} ms ({message})", retry_after.as_millis())]
    RateLimited {
        /// How long to wait before retrying.
        retry_after: Duration,
        /// The broker's detail.
        message: String,
    },
    /// The outbound queue is full (only from the `try_` calls, which never
    /// wait).
    #[error("the outbound queue is full")]
    QueueFull,
    /// No reply arrived within the configured request timeout.
    #[error("the request timed out")]
    Timeout,
    /// The connection was lost while the request was in flight. The request
    /// may or may not have been carried out; it was not retried.
    #[error("the connection was lost before the reply arrived")]
    ConnectionLost,
    /// The call needs a live connection and there is none right now (typing
    /// notifications, which are worthless once stale).
    #[error("not connected")]
    NotConnected,
    /// The client was closed, by [`Client::close`](crate::Client::close) or
    /// after a fatal error; no more calls are served.
    #[error("the client is closed")]
    Closed,
    /// The broker ended the session for a reason that makes reconnecting
    /// pointless (refused token, session replaced by the same device,
    /// no common protocol version). The client has stopped.
    #[error("fatal: {}: {message}", code.as_str())]
    Fatal {
        /// The code from the broker's `Error` or `Goodbye`.
        code: ErrorCode,
        /// The broker's detail.
        message: String,
    },
    /// Reconnection was abandoned after the configured number of attempts.
    #[error("gave up reconnecting after {attempts} attempts")]
    ReconnectFailed {
        /// Consecutive failed attempts.
        attempts: u32,
    },
    /// The room already has a live [`Subscription`](crate::Subscription) on
    /// this client. Drop it (or call its `unsubscribe`) first.
    #[error("room {0} is already subscribed")]
    AlreadySubscribed(String),
    /// A message payload exceeds the broker's announced `max_payload_len`;
    /// it was not sent.
    #[error("payload of {len} bytes exceeds the server limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
        /// The broker's limit.
        max: u32,
    },
    /// The broker answered with a frame that is not a valid reply to the
    /// request.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(&'static str),
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The cursor store failed to load or persist.
    #[error("cursor store: {0}")]
    CursorStore(String),
    /// The outbox store failed to load or persist a publish, or is full
    /// (see [`OutboxStore`](crate::OutboxStore)).
    #[error("outbox store: {0}")]
    Outbox(String),
    /// The user lost access to the room (left it on any device, was
    /// removed, or a refreshed token no longer allows it): the broker ended
    /// the subscription, which yields this error, then ends. Entries
    /// `from..=to` (`to` is the room's last entry when access ended,
    /// usually the membership entry that ended it) were not delivered; the
    /// range is empty (`from == to + 1`) when nothing was missing. The
    /// room's cursor stays at the last event taken, so a subscription made
    /// after access is given back starts with what was missed. Protocol
    /// version 2; with a broker of version 1 the subscription stays silent
    /// until the next reconnection ends it with `NotMember`.
    #[error("access to room {room} lost; entries {from}..={to} not delivered")]
    AccessLost {
        /// The room.
        room: confab_codec::RoomId,
        /// The first entry not delivered.
        from: confab_codec::Seq,
        /// The room's last entry when access ended.
        to: confab_codec::Seq,
    },
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl ClientError {
    /// The wire error code, for [`ClientError::Server`] and
    /// [`ClientError::Fatal`].
    ///
    /// ```no_run
    /// # async fn run(client: confab_client::Client) {
    /// use confab_client::confab_codec::ErrorCode;
    ///
    /// if let Err(e) = client.join("general").await {
    ///     if e.code() == Some(ErrorCode::Unsupported) {
    ///         println!("this broker has no room management yet");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Fatal { code, .. } => Some(*code),
            ClientError::RateLimited { .. } => Some(ErrorCode::RateLimited),
            _ => None,
        }
    }

    /// Builds a [`ClientError::Server`] (or [`ClientError::RateLimited`])
    /// from an `Error` frame.
    pub(crate) fn server(frame: &confab_codec::ErrorFrame) -> Self {
        if frame.code == ErrorCode::RateLimited {
            return ClientError::RateLimited {
                // Never zero: a client that retries at once only earns
                // another refusal.
                retry_after: Duration::from_millis(u64::from(frame.retry_after_ms.max(1))),
                message: frame.message.clone(),
            };
        }
        ClientError::Server {
            code: frame.code,
            message: frame.message.clone(),
            retry_after_ms: frame.retry_after_ms,
        }
    }
}

/// Why a connection ended, as reported in
/// [`ConnectionEvent::Disconnected`](crate::ConnectionEvent::Disconnected).
///
/// ```no_run
/// # async fn run(client: confab_client::Client) {
/// use confab_client::{ConnectionEvent, DisconnectReason};
///
/// let mut events = client.events();
/// while let Ok(event) = events.recv().await {
///     if let ConnectionEvent::Disconnected { reason } = event {
///         match reason {
///             DisconnectReason::HeartbeatTimeout => println!("network went silent"),
///             DisconnectReason::Goodbye { code, .. } => println!("broker said {}", code.as_str()),
///             other => println!("offline: {other}"),
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The transport failed or was closed by the peer without a `Goodbye`.
    Io(String),
    /// The broker sent `Goodbye` (or a connection-level `Error`).
    Goodbye {
        /// Its code (`ShuttingDown`, `SlowConsumer`, `Timeout`, ...).
        code: ErrorCode,
        /// Its detail.
        message: String,
    },
    /// Nothing was received for the configured dead-link timeout.
    HeartbeatTimeout,
    /// The broker sent something the SDK cannot accept.
    Protocol(String),
    /// A connection attempt failed before the handshake completed.
    ConnectFailed(String),
    /// The application closed the client.
    Closed,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Io(e) => write!(f, "transport: {e}"),
            DisconnectReason::Goodbye { code, message } => {
                write!(f, "goodbye {}: {message}", code.as_str())
            }
            DisconnectReason::HeartbeatTimeout => {
                f.write_str("no traffic within the dead-link timeout")
            }
            DisconnectReason::Protocol(e) => write!(f, "protocol: {e}"),
            DisconnectReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            DisconnectReason::Closed => f.write_str("closed by the application"),
        }
    }
}

/// Whether a broker close code forbids reconnecting automatically.
pub(crate) fn is_fatal_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthenticated
            | ErrorCode::TokenExpired
            | ErrorCode::UnsupportedVersion
            | ErrorCode::SessionReplaced
    )
}

/// Whether a subscription refused with this code is subscribed again
/// (after a back-off delay) instead of ended: a passing failure at the
/// broker that the protocol says may be retried (section 10): `Internal`
/// (for example a storage read error), `StorageFull`, `RateLimited`.
pub(crate) fn is_passing_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Internal | ErrorCode::StorageFull | ErrorCode::RateLimited
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_display_and_code() {
        let e = ClientError::Server {
            code: ErrorCode::NotMember,
            message: "join first".into(),
            retry_after_ms: 0,
        };
        assert_eq!(e.to_string(), "server error NotMember: join first");
        assert_eq!(e.code(), Some(ErrorCode::NotMember));
        assert_eq!(ClientError::QueueFull.code(), None);
    }

    #[test]
    fn rate_limited_is_typed_with_its_delay() {
        let frame = confab_codec::ErrorFrame {
            code: ErrorCode::RateLimited,
            retry_after_ms: 250,
            message: "slow down".into(),
        };
        let e = ClientError::server(&frame);
        assert!(matches!(
            &e,
            ClientError::RateLimited { retry_after, .. } if *retry_after == Duration::from_millis(250)
        ));
        assert_eq!(e.code(), Some(ErrorCode::RateLimited));
        let zero = confab_codec::ErrorFrame {
            retry_after_ms: 0,
            ..frame
        };
        assert!(matches!(
            ClientError::server(&zero),
            ClientError::RateLimited { retry_after, .. } if !retry_after.is_zero()
        ));
    }

    #[test]
    fn io_errors_convert_and_clone() {
        let e: ClientError = std::io::Error::other("boom").into();
        let c = e.clone();
        assert!(matches!(c, ClientError::Io(_)));
        assert!(c.to_string().contains("boom"));
    }

    #[test]
    fn fatal_codes() {
        assert!(is_fatal_code(ErrorCode::Unauthenticated));
        assert!(is_fatal_code(ErrorCode::SessionReplaced));
        assert!(!is_fatal_code(ErrorCode::ShuttingDown));
        assert!(!is_fatal_code(ErrorCode::SlowConsumer));
    }
}
