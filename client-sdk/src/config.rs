//! Client configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::{DeviceId, Features};

use crate::backoff::BackoffConfig;
use crate::cursor::{CursorStore, MemoryCursorStore};
use crate::error::ClientError;
use crate::outbox::OutboxStore;
use crate::transport::{no_trust, Endpoint, Trust};

/// Most endpoints in [`ClientConfig::endpoints`].
pub const MAX_ENDPOINTS: usize = 64;

/// Everything a [`Client`](crate::Client) needs. Build it with
/// [`ClientConfig::new`], then adjust the public fields.
///
/// Memory: the SDK holds at most `outbound_queue_capacity` unacknowledged
/// publishes (payload included), `event_buffer_capacity` undelivered events
/// per subscription, and `max_out_of_order` events per room while a gap is
/// being filled.
///
/// ```
/// use std::time::Duration;
/// use confab_client::ClientConfig;
///
/// let mut config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone").unwrap();
/// config.heartbeat_interval = Duration::from_secs(5);
/// config.dead_link_timeout = Duration::from_secs(12);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Where the broker is, and over which transport: one endpoint, or
    /// several nodes of a cluster (at most [`MAX_ENDPOINTS`]). The client
    /// connects to the first; whenever a connection attempt fails or an
    /// established connection is lost, the next attempt goes to the next
    /// endpoint of the list (after the last, the first again). Every node
    /// of a cluster serves every room, so resuming rooms and resending
    /// publishes on another node loses and doubles nothing. To spread
    /// devices over the nodes, give each device the list in its own order.
    pub endpoints: Vec<Endpoint>,
    /// How the broker's certificate is checked on `confabs://` and
    /// `confab+quic://`: required for them, ignored otherwise. There is no
    /// default (no system roots) and no way to skip the check.
    pub trust: Option<Trust>,
    /// The name the certificate must be valid for, when it is not the
    /// endpoint's host (for example, connecting by IP address to a broker
    /// whose certificate names its DNS name). Ignored with a pinned
    /// fingerprint.
    pub server_name: Option<String>,
    /// The authentication token (`user:device` or `user` against a broker
    /// in development mode).
    pub token: String,
    /// This device's id, stable across restarts of the application.
    pub device: DeviceId,
    /// Free-form client name and version, for the broker's logs.
    pub client_name: String,
    /// Reconnection delays.
    pub backoff: BackoffConfig,
    /// A `Ping` is sent after this long without sending or receiving
    /// anything. The broker's announced `heartbeat_ms` is used instead when
    /// it is shorter. Default 15 s.
    pub heartbeat_interval: Duration,
    /// The connection is declared dead, dropped and reconnected after this
    /// long without receiving anything. Must exceed `heartbeat_interval`.
    /// Default 35 s.
    pub dead_link_timeout: Duration,
    /// Most time for opening the transport and completing the handshake.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Most time a request (history, rooms, presence, ...) waits for its
    /// reply, including time spent waiting for a connection. Publishes are
    /// not subject to it: they are retried until acknowledged. Default 30 s.
    pub request_timeout: Duration,
    /// Most publishes accepted but not yet acknowledged by the broker. When
    /// it is reached, `publish` waits and `try_publish` fails with
    /// [`ClientError::QueueFull`]. Also bounds requests waiting for a
    /// connection. Default 1024.
    pub outbound_queue_capacity: usize,
    /// Events buffered per subscription for the application. When the
    /// application does not read and the buffer fills up, delivery of that
    /// room pauses and later resumes from the cursor (see
    /// [`Subscription`](crate::Subscription)). Default 1024.
    pub event_buffer_capacity: usize,
    /// Most out-of-order events held per room while a gap is filled from
    /// history; beyond it the room is resubscribed instead. Default 4096.
    pub max_out_of_order: usize,
    /// Events per history request when filling a gap. Default 500.
    pub history_page_size: u16,
    /// How many times one publish refused with `RateLimited` is sent again,
    /// each time after the broker's `retry_after_ms` (while it waits, later
    /// publishes wait too, so that their order is kept). After that the
    /// publish fails with [`ClientError::RateLimited`]. Only refusals of a
    /// publish sent on its own count: those of a burst (a long queue sent
    /// after a reconnect) are the SDK's own doing, and it retries them,
    /// paced, until they pass. 0 turns automatic retries off: every
    /// refusal reaches the application. Default 5.
    pub rate_limit_retries: u32,
    /// Where the last delivered sequence of each room is kept. Default: in
    /// memory ([`MemoryCursorStore`]).
    pub cursor_store: Arc<dyn CursorStore>,
    /// Where unacknowledged publishes are kept so that they survive the
    /// application being killed. Default: none (in memory: they survive
    /// reconnections, not the application's death). See
    /// [`FileOutboxStore`](crate::FileOutboxStore).
    pub outbox_store: Option<Arc<dyn OutboxStore>>,
    /// Run an inbox sync (protocol version 2) on every connection, before
    /// the followed rooms are subscribed, from the cursor kept in the
    /// cursor store, and hand its result to the application as
    /// [`Signal::Inbox`](crate::Signal::Inbox). The rooms are then
    /// subscribed after the handshake instead of in the `Hello`. Nothing
    /// happens against a broker that speaks only version 1. Default: off.
    pub inbox_sync: bool,
    /// Whether to offer zstd compression of frame bodies (protocol 3.6) in
    /// the `Hello`. The broker decides; when it accepts, the SDK reads the
    /// compressed frames it sends and compresses, at zstd level 1, the
    /// frames it sends whose bodies have at least
    /// [`ClientConfig::compression_min_bytes`] bytes. Costs at most
    /// 256 KiB per stream that carries compressed frames to the SDK, and
    /// 192 KiB more for the one it sends on (zstd contexts; see
    /// `confab_compress::DECOMPRESSOR_MAX_BYTES` and `COMPRESSOR_MAX_BYTES`).
    /// Default: off (opt in where bytes cost more than CPU and memory).
    pub compression: bool,
    /// Frame bodies shorter than this are sent uncompressed. Default 128.
    pub compression_min_bytes: usize,
}

impl ClientConfig {
    /// A configuration with default settings and an in-memory cursor store.
    /// `urls` is one URL, or several separated by commas (the nodes of a
    /// cluster, tried in that order: see [`ClientConfig::endpoints`]).
    ///
    /// ```
    /// use confab_client::ClientConfig;
    ///
    /// let config = ClientConfig::new("confab://chat.example.com:7400", "alice:phone", "phone")?;
    /// assert_eq!(config.endpoints[0].to_string(), "confab://chat.example.com:7400");
    ///
    /// // Two nodes of a cluster: the second is tried when the first fails.
    /// let config = ClientConfig::new("confab://10.0.0.1:7400,confab://10.0.0.2:7400", "alice:phone", "phone")?;
    /// assert_eq!(config.endpoints.len(), 2);
    /// # Ok::<(), confab_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidConfig`] if a URL does not parse (see
    /// [`Endpoint::parse`]), there are more than [`MAX_ENDPOINTS`], or
    /// `device` is not a valid device id.
    pub fn new(urls: &str, token: impl Into<String>, device: &str) -> Result<Self, ClientError> {
        let device = DeviceId::new(device)
            .map_err(|_| ClientError::InvalidConfig(format!("bad device id `{device}`")))?;
        let endpoints = urls
            .split(',')
            .map(|url| Endpoint::parse(url.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(too_many_endpoints());
        }
        Ok(Self::with_endpoints(endpoints, token, device))
    }

    /// Like [`ClientConfig::new`] with an endpoint and device already parsed.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use confab_client::confab_codec::DeviceId;
    /// use confab_client::{ClientConfig, Endpoint};
    ///
    /// let addr: SocketAddr = "127.0.0.1:7400".parse().unwrap();
    /// let config = ClientConfig::with_endpoint(Endpoint::tcp(addr), "bob", DeviceId::new("laptop")?);
    /// assert_eq!(config.device.as_str(), "laptop");
    /// # Ok::<(), confab_client::ClientError>(())
    /// ```
    pub fn with_endpoint(endpoint: Endpoint, token: impl Into<String>, device: DeviceId) -> Self {
        Self::with_endpoints(vec![endpoint], token, device)
    }

    /// Like [`ClientConfig::with_endpoint`] with several endpoints, tried in
    /// order (see [`ClientConfig::endpoints`]). An empty list is refused by
    /// [`ClientConfig::validate`].
    ///
    /// ```
    /// use confab_client::confab_codec::DeviceId;
    /// use confab_client::{ClientConfig, Endpoint};
    ///
    /// let nodes = vec![
    ///     Endpoint::tcp("127.0.0.1:7400".parse().unwrap()),
    ///     Endpoint::tcp("127.0.0.1:7410".parse().unwrap()),
    /// ];
    /// let config = ClientConfig::with_endpoints(nodes, "bob", DeviceId::new("laptop")?);
    /// assert!(config.validate().is_ok());
    /// # Ok::<(), confab_client::ClientError>(())
    /// ```
    pub fn with_endpoints(
        endpoints: Vec<Endpoint>,
        token: impl Into<String>,
        device: DeviceId,
    ) -> Self {
        Self {
            endpoints,
            trust: None,
            server_name: None,
            token: token.into(),
            device,
            client_name: concat!("confab-client-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            backoff: BackoffConfig::default(),
            heartbeat_interval: Duration::from_secs(15),
            dead_link_timeout: Duration::from_secs(35),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            outbound_queue_capacity: 1024,
            event_buffer_capacity: 1024,
            max_out_of_order: 4096,
            history_page_size: 500,
            rate_limit_retries: 5,
            cursor_store: Arc::new(MemoryCursorStore::new()),
            outbox_store: None,
            inbox_sync: false,
            compression: false,
            compression_min_bytes: 128,
        }
    }

    /// Turns the offer of compression (protocol 3.6) on or off.
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// The optional behaviours the `Hello` offers.
    pub(crate) fn features(&self) -> Features {
        if self.compression {
            Features::ZSTD
        } else {
            Features::NONE
        }
    }

    /// Sets how the broker's certificate is checked (TLS, QUIC).
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Replaces the cursor store.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), confab_client::ClientError> {
    /// use confab_client::{ClientConfig, FileCursorStore};
    ///
    /// let store = FileCursorStore::open("/var/lib/myapp/cursors").await?;
    /// let config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone")?
    ///     .cursor_store(store);
    /// # let _ = config;
    /// # Ok(()) }
    /// ```
    pub fn cursor_store(mut self, store: impl CursorStore) -> Self {
        self.cursor_store = Arc::new(store);
        self
    }

    /// Keeps unacknowledged publishes in `store`, so that they survive the
    /// application being killed: every publishing call returns once its
    /// message is durable there, and a client started on the same store
    /// sends what an earlier run left before anything new.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), confab_client::ClientError> {
    /// use confab_client::{ClientConfig, FileOutboxStore};
    ///
    /// let config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone")?
    ///     .outbox_store(FileOutboxStore::open("/var/lib/myapp/outbox").await?);
    /// # let _ = config;
    /// # Ok(()) }
    /// ```
    pub fn outbox_store(mut self, store: impl OutboxStore) -> Self {
        self.outbox_store = Some(Arc::new(store));
        self
    }

    /// Checks ranges and relations between values.
    ///
    /// [`Client::connect`](crate::Client::connect) and
    /// [`Client::start`](crate::Client::start) call it too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use confab_client::ClientConfig;
    ///
    /// let mut config = ClientConfig::new("confab://127.0.0.1:7400", "alice", "phone")?;
    /// config.dead_link_timeout = Duration::from_secs(1); // shorter than the heartbeat
    /// assert!(config.validate().is_err());
    /// # Ok::<(), confab_client::ClientError>(())
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidConfig`] naming the first bad value, for no
    /// endpoint or more than [`MAX_ENDPOINTS`], or for a TLS or QUIC
    /// endpoint without [`ClientConfig::trust`].
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::InvalidConfig(
                "endpoints must name at least one broker".into(),
            ));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(too_many_endpoints());
        }
        let checks: [(bool, &str); 8] = [
            (
                !self.heartbeat_interval.is_zero(),
                "heartbeat_interval must be above zero",
            ),
            (
                self.dead_link_timeout > self.heartbeat_interval,
                "dead_link_timeout must exceed heartbeat_interval",
            ),
            (
                !self.connect_timeout.is_zero(),
                "connect_timeout must be above zero",
            ),
            (
                !self.request_timeout.is_zero(),
                "request_timeout must be above zero",
            ),
            (
                self.outbound_queue_capacity >= 1,
                "outbound_queue_capacity must be at least 1",
            ),
            (
                self.event_buffer_capacity >= 2,
                "event_buffer_capacity must be at least 2",
            ),
            (
                self.max_out_of_order >= 1,
                "max_out_of_order must be at least 1",
            ),
            (
                self.history_page_size >= 1,
                "history_page_size must be at least 1",
            ),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(ClientError::InvalidConfig((*msg).to_owned()));
        }
        if let Some(secure) = self.endpoints.iter().find(|e| e.is_secure()) {
            if self.trust.is_none() {
                return Err(no_trust(secure));
            }
        }
        // The semaphore behind the outbound queue has a maximum size.
        if self.outbound_queue_capacity > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ClientError::InvalidConfig(
                "outbound_queue_capacity is too large".into(),
            ));
        }
        self.backoff.validate().map_err(ClientError::InvalidConfig)
    }
}

fn too_many_endpoints() -> ClientError {
    ClientError::InvalidConfig(format!("more than {MAX_ENDPOINTS} endpoints"))
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("trust", &self.trust)
            .field("server_name", &self.server_name)
            .field("token", &"<redacted>")
            .field("device", &self.device)
            .field("client_name", &self.client_name)
            .field("backoff", &self.backoff)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("dead_link_timeout", &self.dead_link_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("outbound_queue_capacity", &self.outbound_queue_capacity)
            .field("event_buffer_capacity", &self.event_buffer_capacity)
            .field("max_out_of_order", &self.max_out_of_order)
            .field("history_page_size", &self.history_page_size)
            .field("cursor_store", &self.cursor_store)
            .field("outbox_store", &self.outbox_store.is_some())
            .field("compression", &self.compression)
            .field("compression_min_bytes", &self.compression_min_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> ClientConfig {
        ClientConfig::new("confab://localhost:7400", "alice:phone", "phone").unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(config().validate().is_ok());
        // Compression is opt-in.
        assert_eq!(config().features(), Features::NONE);
        assert_eq!(config().compression(true).features(), Features::ZSTD);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = config();
        c.dead_link_timeout = c.heartbeat_interval;
        assert!(c.validate().is_err());
        let mut c = config();
        c.outbound_queue_capacity = 0;
        assert!(c.validate().is_err());
        let mut c = config();
        c.backoff.multiplier = 0.0;
        assert!(c.validate().is_err());
        assert!(ClientConfig::new("confab://h:1", "t", "").is_err());
        assert!(ClientConfig::new("bogus://h:1", "t", "d").is_err());
        assert!(ClientConfig::new("confab://h:1,bogus://h:2", "t", "d").is_err());
        assert!(ClientConfig::new("confab://h:1,", "t", "d").is_err());
        let mut c = config();
        c.endpoints.clear();
        assert!(c.validate().is_err());
        let many = vec!["confab://h:1"; MAX_ENDPOINTS + 1].join(",");
        assert!(ClientConfig::new(&many, "t", "d").is_err());
        let mut c = config();
        c.endpoints = vec![c.endpoints[0].clone(); MAX_ENDPOINTS + 1];
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_list_of_urls_keeps_its_order() {
        let c =
            ClientConfig::new("confab://a:1, confabs://b:2 ,confab+quic://c", "t", "d").unwrap();
        let urls: Vec<String> = c.endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(
            urls,
            ["confab://a:1", "confabs://b:2", "confab+quic://c:7401"]
        );
        // A secure endpoint anywhere in the list needs a trust anchor.
        assert!(c.validate().is_err());
        assert!(c
            .trust(Trust::CaFile("/etc/ca.pem".into()))
            .validate()
            .is_ok());
    }

    #[test]
    fn tls_and_quic_need_a_trust_anchor() {
        for url in ["confabs://h:1", "confab+quic://h:1"] {
            let c = ClientConfig::new(url, "t", "d").unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains("ClientConfig::trust"), "{e}");
            let c = c.trust(Trust::CaFile("/etc/ca.pem".into()));
            assert!(c.validate().is_ok());
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let text = format!("{:?}", config());
        assert!(!text.contains("alice:phone"));
        assert!(text.contains("redacted"));
    }
}
