//! Typed, layered, validated configuration.
//!
//! Layers, each overriding the one before: built-in defaults, then a TOML
//! file, then `CONFAB_<SECTION>__<KEY>` environment variables, then
//! command-line flags. Unknown keys are errors, so a typo never silently
//! falls back to a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod cluster;

pub use crate::storage::Durability;
pub use cluster::ClusterConfig;

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Insecure: the token is `user` or `user:device` and is believed.
    Dev,
    /// The token is a JWT verified with the keys in `auth.jwt`.
    Jwt,
    /// No way to authenticate is configured: every Hello is refused.
    Disabled,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where RocksDB keeps its files.
    pub data_dir: PathBuf,
    /// Listeners.
    pub listen: ListenConfig,
    /// Certificates for the TLS and QUIC listeners.
    pub tls: TlsConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Storage and group commit.
    pub storage: StorageConfig,
    /// Admission control and protocol limits.
    pub limits: LimitsConfig,
    /// Limits on connections that have not finished their handshake, and
    /// per client address.
    pub admission: AdmissionConfig,
    /// Per-device queues and slow consumers.
    pub delivery: DeliveryConfig,
    /// Rooms and membership.
    pub rooms: RoomsConfig,
    /// Retention of room logs (default: keep everything).
    pub retention: RetentionConfig,
    /// Offline push notifications (default: off).
    pub push: PushConfig,
    /// Logging.
    pub log: LogConfig,
    /// The operations HTTP endpoint: Prometheus metrics and health checks.
    pub metrics: MetricsConfig,
    /// The admin endpoints of a running broker.
    pub admin: AdminConfig,
    /// Per-user and per-connection rate limits.
    pub rate_limits: RateLimitsConfig,
    /// Presence.
    pub presence: PresenceConfig,
    /// The WebSocket listeners' origins and keepalive.
    pub websocket: WebSocketConfig,
    /// zstd compression of frame bodies, for clients that offer it.
    pub compression: CompressionConfig,
    /// Cluster mode on NATS JetStream (default: off, single node).
    pub cluster: ClusterConfig,
}

/// zstd compression of frame bodies (protocol 3.6), per connection, for
/// clients that offer `Features::ZSTD` in their `Hello`.
///
/// Memory is bounded by `max_contexts`: a connection granted compression
/// holds one decompressor (at most 256 KiB), and each stream that sends
/// compressed frames one compressor (at most 192 KiB; a byte stream has
/// one, QUIC one per stream used), each taking a slot. With no slot free
/// a client is not granted compression, and a stream sends uncompressed
/// until one is. CPU: compression runs in each connection's writer, per
/// device (the fan-out shares one encoded frame among subscribers; each
/// connection compresses it in its own stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Whether the broker accepts `ZSTD` when a client offers it.
    pub enabled: bool,
    /// Frame bodies shorter than this many bytes are sent uncompressed
    /// (the context is not touched): below it zstd saves less than it costs.
    pub min_bytes: u32,
    /// zstd compression level, -7 (fastest) to 9; 1 to 3 suit chat.
    pub level: i32,
    /// zstd contexts (compressors and decompressors) the broker holds at
    /// most, over all connections: at most 256 KiB each.
    pub max_contexts: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_bytes: 128,
            level: 1,
            max_contexts: 1024,
        }
    }
}

impl CompressionConfig {
    fn validate(&self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        if !confab_compress::LEVELS.contains(&self.level) || self.min_bytes > limits.max_frame_len {
            return Err(ConfigError::Invalid(
                "compression.level must be between -7 and 9 and compression.min_bytes at most limits.max_frame_len".into(),
            ));
        }
        Ok(())
    }
}

/// The operations HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, and the
/// `/admin/*` endpoints the admin CLI uses on a running broker).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve it on, or `"off"` (the default). Keep it on a
    /// loopback or private address: metrics reveal traffic levels.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
}

/// Protection of the admin endpoints (`/admin/backup`, `/admin/compact`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding a bearer token (trailing newline removed). When set,
    /// admin requests must send `Authorization: Bearer <token>` and may come
    /// from any address; when empty, only loopback peers are served.
    pub token_file: PathBuf,
}

/// Listener addresses. TLS and QUIC may be turned off with `"off"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain TCP.
    pub tcp: SocketAddr,
    /// TLS over TCP (`confabs://`); off by default.
    #[serde(with = "optional_addr")]
    pub tls: Option<SocketAddr>,
    /// QUIC (`confab+quic://`, UDP, ALPN `confab/1`).
    #[serde(with = "optional_addr")]
    pub quic: Option<SocketAddr>,
    /// WebSocket (`ws://HOST:PORT/ws`, for browsers); off by default
    /// (`scripts/serve.sh` turns it on at 127.0.0.1:7402).
    #[serde(with = "optional_addr")]
    pub websocket: Option<SocketAddr>,
    /// WebSocket over TLS (`wss://HOST:PORT/ws`), with the `[tls]`
    /// certificate; off by default.
    #[serde(with = "optional_addr")]
    pub websocket_tls: Option<SocketAddr>,
}

/// The WebSocket listeners (`listen.websocket`, `listen.websocket_tls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Web origins (`scheme://host[:port]`, as browsers send them in the
    /// `Origin` header) whose pages may connect; `"*"` allows every origin.
    /// A request from another origin gets HTTP 403 before the upgrade. A
    /// request without `Origin` (not from a browser) is accepted.
    pub allowed_origins: Vec<String>,
    /// A WebSocket ping goes out after this many milliseconds without a
    /// message from the client; a client silent for twice this long (not
    /// even a pong) is disconnected.
    pub ping_interval_ms: u64,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            allowed_origins: vec![
                "http://127.0.0.1:7403".to_owned(),
                "http://localhost:7403".to_owned(),
            ],
            ping_interval_ms: 20_000,
        }
    }
}

impl WebSocketConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(ConfigError::Invalid(format!(
                    "websocket.allowed_origins: `{origin}` is not an origin such as https://chat.example.com or \"*\""
                )));
            }
        }
        if !(1_000..=3_600_000).contains(&self.ping_interval_ms) {
            return Err(ConfigError::Invalid(
                "websocket.ping_interval_ms must be between 1000 and 3600000".into(),
            ));
        }
        Ok(())
    }

    /// Whether a page from `origin` may connect.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// `scheme://host[:port]` with an http(s) scheme and nothing after the
/// authority.
fn is_origin(s: &str) -> bool {
    let Some((scheme, authority)) = s.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', ' '])
}

/// The certificate the TLS and QUIC listeners present.
///
/// With neither path set, the broker uses a self-signed certificate kept in
/// `<data_dir>/tls/` (generated on first start) and logs its SHA-256
/// fingerprint, which clients pin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `dev` (insecure, the default for local use), `jwt` or `disabled`.
    pub mode: AuthMode,
    /// JWT verification, used when `mode = "jwt"`.
    pub jwt: JwtConfig,
    /// Back-off for addresses whose handshakes keep failing.
    pub login_backoff: LoginBackoffConfig,
}

/// Failed-login back-off per client address: after `free_failures`
/// refused tokens from one address, its next `Hello`s are refused with
/// `RateLimited` (before the token is even checked) for a delay that starts
/// at `base_delay_ms` and doubles with every further failure, up to
/// `max_delay_ms`. An address is forgotten after `forget_after_secs`
/// without a failure, or when a handshake from it succeeds. IPv6 addresses
/// are counted per /64 network. Memory: at most `max_tracked` addresses,
/// about 50 bytes each (3.2 MiB at the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginBackoffConfig {
    /// Whether failed logins slow an address down. Turn it off behind a
    /// proxy that hides the clients' addresses.
    pub enabled: bool,
    /// Refused tokens from one address before the back-off starts.
    pub free_failures: u32,
    /// The first delay, in milliseconds.
    pub base_delay_ms: u64,
    /// The longest delay, in milliseconds.
    pub max_delay_ms: u64,
    /// An address with no failure for this long starts again from zero.
    pub forget_after_secs: u64,
    /// Most addresses remembered; beyond it the stalest is dropped.
    pub max_tracked: usize,
}

impl Default for LoginBackoffConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            free_failures: 5,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            forget_after_secs: 600,
            max_tracked: 65_536,
        }
    }
}

impl LoginBackoffConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let ok = self.base_delay_ms >= 1
            && self.max_delay_ms >= self.base_delay_ms
            && self.max_delay_ms <= 86_400_000
            && self.forget_after_secs.saturating_mul(1000) >= self.max_delay_ms
            && self.max_tracked >= 1;
        if !ok {
            return Err(ConfigError::Invalid(
                "auth.login_backoff needs 1 <= base_delay_ms <= max_delay_ms <= 86400000, \
                 forget_after_secs * 1000 >= max_delay_ms and max_tracked >= 1"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Admission control before authentication: what a connection that has
/// not (yet) received `Welcome` may cost, and what one client address may
/// hold. A connection is *handshaking* from accept (before any TLS or QUIC
/// handshake) until `Welcome`; it then needs one of the
/// `limits.max_connections` session slots, which handshaking connections
/// never hold. So at most `limits.max_connections + max_handshakes` sockets
/// are open (plus, briefly, ones being refused).
///
/// When `max_handshakes` are pending and a new connection arrives (from an
/// address under its own limits), the *oldest* pending handshake is closed
/// to make room: a flood of connections that never send `Hello` cannot
/// lock new clients out, it only shortens the time each pending handshake
/// gets. From one address, a flood is refused at `max_handshakes_per_ip`
/// and never reaches the global cap. The per-address limits count IPv4
/// addresses one by one and IPv6 addresses by /64 network; 0 turns one
/// off (do that behind a proxy that hides the clients' addresses).
///
/// Memory: a handshaking connection costs about 8 KiB (task, 4 KiB read
/// buffer, socket) plus up to `max_hello_len` while its `Hello` arrives,
/// plus about 40 KiB of TLS or QUIC state on those listeners: at most
/// about `max_handshakes x (max_hello_len + 48 KiB)` (112 MiB at the
/// defaults, reached only if every pending handshake is a large, slow
/// `Hello`). The per-address table has one entry (about 64 B) per address
/// with an open socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Largest `Hello` (frame body, bytes) accepted before `Welcome`; a
    /// longer one is refused with `FrameTooLarge` from its header, unread.
    /// At least 65536 (the floor clients rely on, protocol 3.4) and at most
    /// `limits.max_frame_len`, which applies from `Welcome` on.
    pub max_hello_len: u32,
    /// Most connections handshaking at once, on all listeners together.
    pub max_handshakes: usize,
    /// Most connections handshaking at once from one address (0: no limit).
    pub max_handshakes_per_ip: usize,
    /// Most open connections (handshaking or not) from one address
    /// (0: no limit).
    pub max_connections_per_ip: usize,
    /// New connections accepted per second from one address, with a burst
    /// of four times as many (0: no limit); more are refused as they are
    /// accepted, before any handshake.
    pub connects_per_ip_per_sec: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_hello_len: confab_codec::HELLO_LEN_FLOOR,
            max_handshakes: 1024,
            max_handshakes_per_ip: 64,
            max_connections_per_ip: 1000,
            connects_per_ip_per_sec: 200,
        }
    }
}

impl AdmissionConfig {
    fn validate(&self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        if self.max_hello_len < confab_codec::HELLO_LEN_FLOOR
            || self.max_hello_len > limits.max_frame_len
        {
            return Err(ConfigError::Invalid(format!(
                "admission.max_hello_len must be between {} and limits.max_frame_len \
                 (which must then be at least as large)",
                confab_codec::HELLO_LEN_FLOOR
            )));
        }
        if self.max_handshakes < 1 || self.max_handshakes > 1 << 20 {
            return Err(ConfigError::Invalid(
                "admission.max_handshakes must be between 1 and 1048576".into(),
            ));
        }
        if self.max_handshakes_per_ip > self.max_handshakes {
            return Err(ConfigError::Invalid(
                "admission.max_handshakes_per_ip must be at most admission.max_handshakes (0: no limit)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// JWT verification keys and rules. At least one key must be set for
/// `auth.mode = "jwt"`; a token is accepted only with the algorithm of a
/// configured key (so "alg: none" and algorithm confusion are refused).
/// Empty strings mean "not set".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// File holding the HS256 shared secret (its bytes, trailing newline
    /// removed). Enables HS256.
    pub hs256_secret_file: PathBuf,
    /// PEM file of an RSA public key. Enables RS256.
    pub rs256_public_key: PathBuf,
    /// PEM file of an Ed25519 public key. Enables EdDSA.
    pub ed25519_public_key: PathBuf,
    /// Required `iss` claim, if not empty.
    pub issuer: String,
    /// Required `aud` claim, if not empty.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret_file: PathBuf::new(),
            rs256_public_key: PathBuf::new(),
            ed25519_public_key: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
        }
    }
}

/// Storage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `none`, `wal` (default) or `fsync`.
    pub durability: Durability,
    /// Most messages in one group commit.
    pub max_batch: usize,
    /// RocksDB block cache, in MiB.
    pub block_cache_mb: usize,
    /// Recent publishes kept in memory to answer retries without reading
    /// the idempotency index (at least `max_batch`). Older retries are
    /// still recognised: the index on disk keeps every retained message's.
    pub dedup_window: usize,
}

/// The smallest `limits.max_frame_len`: every reply whose size the broker
/// bounds by count (a room's member list, a typing list, a presence
/// answer) fits in it.
pub const MIN_FRAME_LEN: u32 = 256 << 10;

/// Admission control and protocol limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most simultaneous connections; more are refused with `ServerBusy`.
    pub max_connections: usize,
    /// Largest frame body accepted, in bytes.
    pub max_frame_len: u32,
    /// Largest message payload accepted, in bytes.
    pub max_payload_len: u32,
    /// Most rooms one connection may follow.
    pub max_rooms_per_connection: u32,
    /// Time allowed between accept and a valid Hello, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Heartbeat interval announced to clients, in milliseconds.
    pub heartbeat_ms: u64,
    /// A connection silent this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Most unacknowledged publishes per connection; beyond it the broker
    /// stops reading from that connection until acks go out.
    pub max_inflight_publishes: u32,
    /// Most other requests for the sequencer (subscribes, receipts, room
    /// requests) one connection may have waiting there; beyond it the
    /// broker stops reading from that connection until one is done.
    pub max_pending_requests: u32,
    /// Most client requests queued for the sequencer, all connections
    /// together; beyond it the sessions that send more wait (and stop
    /// reading from their sockets). Memory: up to this many requests, each
    /// with its payload.
    pub sequencer_queue: usize,
    /// Most storage reads made for clients at once, broker-wide: history
    /// pages, room queries and access checks, and catch-up of lagging
    /// devices. Others wait their turn (first come, first served).
    pub max_concurrent_reads: usize,
}

/// Per-device outbound queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Room events a device's live queue holds (per event lane) before its
    /// rooms switch to catch-up from the log; a live batch counts each of
    /// its events.
    pub queue_capacity: usize,
    /// A device whose connection accepts no byte for this long, while the
    /// broker has bytes for it, is cut with `Goodbye(SlowConsumer)`, in
    /// milliseconds (on QUIC, per stream). A device that reads, however
    /// slowly, is never cut: its rooms catch up from the log instead.
    pub slow_consumer_timeout_ms: u64,
    /// Most bytes written to a socket per write call; also what a lagging
    /// room may have queued before its next catch-up batch is read.
    pub write_batch_bytes: usize,
    /// Most events per catch-up or history frame.
    pub catchup_batch: usize,
    /// Unidirectional QUIC streams that carry room events to one device;
    /// each room is pinned to one of them. Each has its own queue of up to
    /// `queue_capacity` frames.
    pub quic_event_streams: usize,
    /// Most deliveries (subscribers of the rooms of one group commit,
    /// summed) that the sequencer thread makes itself when the fan-out
    /// thread is idle: one thread hand-off less per message at low rates.
    /// Larger commits, and every commit while the fan-out thread is busy,
    /// go to the fan-out thread. 0 turns it off.
    pub inline_fanout: usize,
}

/// Rooms and membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Whether a room that was never created may be used anyway, by anyone,
    /// as an open, unmanaged room (convenient for development and
    /// benchmarks). With `false`, only rooms created with `CreateRoom` exist
    /// and only their members may use them. Created rooms always enforce
    /// membership.
    pub auto_create: bool,
    /// Most members (and invitees) in one room.
    pub max_members: usize,
    /// Typing changes are published at most once per this window, in milliseconds.
    pub typing_window_ms: u64,
    /// A typing start expires after this long without a refresh, in milliseconds.
    pub typing_ttl_ms: u64,
    /// Most managed rooms one user may be a member of (created or joined;
    /// invitations do not count). `CreateRoom` and `JoinRoom` beyond it are
    /// refused with `TooManyRooms`.
    pub max_rooms_per_user: usize,
    /// A room nobody has subscribed to, typed in or written to for this
    /// long is dropped from memory (its log stays; it is read again on its
    /// next use), in milliseconds.
    pub evict_idle_ms: u64,
    /// The inbox index's epoch, in milliseconds: a room written to marks
    /// its members' inboxes once per epoch (its member count in writes), and
    /// a `SyncInbox` reads the user's rooms that changed since the start of
    /// its cursor's epoch. At least 1000.
    pub inbox_epoch_ms: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            auto_create: true,
            max_members: 10_000,
            typing_window_ms: 200,
            typing_ttl_ms: 5_000,
            max_rooms_per_user: 10_000,
            evict_idle_ms: 30_000,
            inbox_epoch_ms: 60_000,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, for example `info` or `confab_broker=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./confab-data"),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            admission: AdmissionConfig::default(),
            delivery: DeliveryConfig::default(),
            rooms: RoomsConfig::default(),
            retention: RetentionConfig::default(),
            push: PushConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            presence: PresenceConfig::default(),
            websocket: WebSocketConfig::default(),
            compression: CompressionConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            tcp: SocketAddr::from(([127, 0, 0, 1], 7400)),
            tls: None,
            quic: Some(SocketAddr::from(([127, 0, 0, 1], 7401))),
            websocket: None,
            websocket_tls: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Dev,
            jwt: JwtConfig::default(),
            login_backoff: LoginBackoffConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Wal,
            max_batch: 4096,
            block_cache_mb: 64,
            dedup_window: 32_768,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_frame_len: confab_codec::DEFAULT_MAX_FRAME_LEN,
            max_payload_len: 64 << 10,
            max_rooms_per_connection: 10_000,
            handshake_timeout_ms: 10_000,
            heartbeat_ms: 15_000,
            idle_timeout_ms: 45_000,
            max_inflight_publishes: 4096,
            max_pending_requests: 64,
            sequencer_queue: 16_384,
            max_concurrent_reads: 16,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            slow_consumer_timeout_ms: 30_000,
            write_batch_bytes: 64 << 10,
            catchup_batch: 256,
            quic_event_streams: 8,
            inline_fanout: 64,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Token buckets for what a client may send, per connection and per user
/// (shared by all of a user's connections). A bucket holds `*_burst`
/// tokens and refills at `*_per_sec`; each request takes one. The defaults
/// are far above what a person typing in a chat app sends. Memory: a few
/// dozen bytes per connection, and per user seen in the last minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Whether any rate limit applies.
    pub enabled: bool,
    /// Publishes per second, per connection.
    pub publish_per_sec: u32,
    /// Publish burst, per connection.
    pub publish_burst: u32,
    /// Publishes per second, per user (all devices together).
    pub user_publish_per_sec: u32,
    /// Publish burst, per user.
    pub user_publish_burst: u32,
    /// Typing notifications per second, per connection (excess ones are
    /// dropped silently).
    pub typing_per_sec: u32,
    /// Typing burst, per connection.
    pub typing_burst: u32,
    /// Typing notifications per second, per user (excess ones are dropped
    /// silently).
    pub user_typing_per_sec: u32,
    /// Typing burst, per user.
    pub user_typing_burst: u32,
    /// Room and presence requests (create, join, leave, invite, remove,
    /// update, set role, set/watch/get presence) per second, per connection.
    pub room_ops_per_sec: u32,
    /// Room request burst, per connection.
    pub room_ops_burst: u32,
    /// Room and presence requests per second, per user.
    pub user_room_ops_per_sec: u32,
    /// Room request burst, per user.
    pub user_room_ops_burst: u32,
    /// Rooms subscribed per second, per connection: each item of a
    /// `Subscribe` or `Hello.resume`, and each room of an `Unsubscribe`,
    /// takes one token.
    pub subscribe_per_sec: u32,
    /// Subscribe burst, per connection (at least `max_rooms_per_connection`
    /// lets a device resume all its rooms at once).
    pub subscribe_burst: u32,
    /// Rooms subscribed per second, per user.
    pub user_subscribe_per_sec: u32,
    /// Subscribe burst, per user.
    pub user_subscribe_burst: u32,
    /// `Receipt` requests per second, per connection.
    pub receipt_per_sec: u32,
    /// Receipt burst, per connection.
    pub receipt_burst: u32,
    /// `Receipt` requests per second, per user.
    pub user_receipt_per_sec: u32,
    /// Receipt burst, per user.
    pub user_receipt_burst: u32,
    /// Read requests (`HistoryRequest`, `GetRoomInfo`, `GetMessageStatus`,
    /// `ListRooms`, `RefreshToken`, `RegisterPush`) per second, per
    /// connection.
    pub query_per_sec: u32,
    /// Read request burst, per connection.
    pub query_burst: u32,
    /// Read requests per second, per user.
    pub user_query_per_sec: u32,
    /// Read request burst, per user.
    pub user_query_burst: u32,
    /// Connections a user may open per second (all devices together);
    /// a `Hello` beyond it is refused with `RateLimited`, so that a client
    /// cannot buy fresh per-connection buckets by reconnecting in a loop.
    pub user_connects_per_sec: u32,
    /// Connection burst, per user.
    pub user_connects_burst: u32,
    /// Frames of any kind read per second from one connection; beyond it
    /// the broker reads the connection's next frame only when the bucket
    /// allows (backpressure, not an error), so that no connection can
    /// take more than this share of the broker's time.
    pub frames_per_sec: u32,
    /// Frame burst, per connection.
    pub frames_burst: u32,
    /// A connection refused this many times within `flood_window_ms`
    /// (accepted requests in between do not reset the count) is closed
    /// with `RateLimited`.
    pub flood_rejections: u32,
    /// The window of `flood_rejections`, in milliseconds.
    pub flood_window_ms: u64,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            publish_per_sec: 50,
            publish_burst: 200,
            user_publish_per_sec: 100,
            user_publish_burst: 400,
            typing_per_sec: 5,
            typing_burst: 20,
            user_typing_per_sec: 10,
            user_typing_burst: 40,
            room_ops_per_sec: 10,
            room_ops_burst: 50,
            user_room_ops_per_sec: 20,
            user_room_ops_burst: 100,
            subscribe_per_sec: 1_000,
            subscribe_burst: 10_000,
            user_subscribe_per_sec: 2_000,
            user_subscribe_burst: 20_000,
            receipt_per_sec: 50,
            receipt_burst: 500,
            user_receipt_per_sec: 100,
            user_receipt_burst: 1_000,
            query_per_sec: 50,
            query_burst: 200,
            user_query_per_sec: 100,
            user_query_burst: 400,
            user_connects_per_sec: 5,
            user_connects_burst: 30,
            frames_per_sec: 1_000,
            frames_burst: 2_000,
            flood_rejections: 100,
            flood_window_ms: 10_000,
        }
    }
}

impl RateLimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let all = [
            self.publish_per_sec,
            self.publish_burst,
            self.user_publish_per_sec,
            self.user_publish_burst,
            self.typing_per_sec,
            self.typing_burst,
            self.user_typing_per_sec,
            self.user_typing_burst,
            self.room_ops_per_sec,
            self.room_ops_burst,
            self.user_room_ops_per_sec,
            self.user_room_ops_burst,
            self.subscribe_per_sec,
            self.subscribe_burst,
            self.user_subscribe_per_sec,
            self.user_subscribe_burst,
            self.receipt_per_sec,
            self.receipt_burst,
            self.user_receipt_per_sec,
            self.user_receipt_burst,
            self.query_per_sec,
            self.query_burst,
            self.user_query_per_sec,
            self.user_query_burst,
            self.frames_per_sec,
            self.frames_burst,
            self.user_connects_per_sec,
            self.user_connects_burst,
            self.flood_rejections,
        ];
        if all.contains(&0) || self.flood_window_ms == 0 {
            return Err(ConfigError::Invalid(
                "every rate_limits rate, burst, flood_rejections and flood_window_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Presence changes are pushed at most once per this window, in
    /// milliseconds; all changes of the window go out together.
    pub window_ms: u64,
    /// Most users one `GetPresence` may ask about.
    pub max_query_users: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            window_ms: 1_000,
            max_query_users: 1_000,
        }
    }
}

impl PresenceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // An answer names each user once: 138 bytes at most per user, so
        // 1,800 fit in the smallest frame limit.
        if self.window_ms < 10 || !(1..=1_800).contains(&self.max_query_users) {
            return Err(ConfigError::Invalid(
                "presence.window_ms must be at least 10 and presence.max_query_users between 1 and 1800"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("invalid configuration ({origin}): {message}")]
    Parse {
        /// Which layer (file name, environment, flag).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Builds the configuration from defaults, an optional TOML file,
    /// `CONFAB_*` environment variables and `key=value` overrides (in that
    /// order), then validates it.
    ///
    /// Environment variables are named `CONFAB_` + the key path in capitals
    /// with `__` between levels, for example `CONFAB_STORAGE__DURABILITY=fsync`
    /// or `CONFAB_DATA_DIR=/var/lib/confab`. Overrides use dotted paths:
    /// `storage.durability=fsync`.
    ///
    /// # Errors
    /// If the file cannot be read, a layer does not parse, a key is unknown or
    /// a value is out of range.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut value =
            toml::Value::try_from(Config::default()).map_err(|e| ConfigError::Parse {
                origin: "defaults".into(),
                message: e.to_string(),
            })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let file_value: toml::Value =
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
            merge(&mut value, file_value);
        }
        for (key, raw) in env {
            let Some(rest) = key.strip_prefix("CONFAB_") else {
                continue;
            };
            if rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_path(
                &mut value,
                &path,
                &raw,
                &format!("environment variable {key}"),
            )?;
        }
        for (key, raw) in overrides {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            set_path(&mut value, &path, raw, &format!("override {key}"))?;
        }
        let config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: "merged configuration".into(),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations between values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let d = &self.delivery;
        let s = &self.storage;
        let checks: [(bool, &str); 15] = [
            (
                l.max_connections >= 1,
                "limits.max_connections must be at least 1",
            ),
            (
                l.max_frame_len >= MIN_FRAME_LEN,
                "limits.max_frame_len must be at least 262144 (256 KiB)",
            ),
            (
                l.max_payload_len >= 1 && l.max_payload_len <= l.max_frame_len.saturating_sub(512),
                "limits.max_payload_len must be between 1 and max_frame_len - 512",
            ),
            (
                l.max_rooms_per_connection >= 1,
                "limits.max_rooms_per_connection must be at least 1",
            ),
            (
                l.handshake_timeout_ms >= 1,
                "limits.handshake_timeout_ms must be at least 1",
            ),
            (
                l.heartbeat_ms >= 100 && l.idle_timeout_ms > l.heartbeat_ms,
                "limits.heartbeat_ms must be at least 100 and below limits.idle_timeout_ms",
            ),
            (
                l.max_inflight_publishes >= 1,
                "limits.max_inflight_publishes must be at least 1",
            ),
            (
                d.queue_capacity >= 16,
                "delivery.queue_capacity must be at least 16",
            ),
            (
                d.slow_consumer_timeout_ms >= 100,
                "delivery.slow_consumer_timeout_ms must be at least 100",
            ),
            (
                d.write_batch_bytes >= 4096,
                "delivery.write_batch_bytes must be at least 4096",
            ),
            (
                (1..=4096).contains(&d.catchup_batch),
                "delivery.catchup_batch must be between 1 and 4096",
            ),
            (
                (1..=65_536).contains(&s.max_batch),
                "storage.max_batch must be between 1 and 65536",
            ),
            (
                s.dedup_window >= s.max_batch && s.dedup_window <= 1 << 26,
                "storage.dedup_window must be between storage.max_batch and 67108864",
            ),
            (
                (1..=64).contains(&d.quic_event_streams),
                "delivery.quic_event_streams must be between 1 and 64",
            ),
            (
                self.tls.cert_path.is_some() == self.tls.key_path.is_some(),
                "tls.cert_path and tls.key_path must be set together",
            ),
        ];
        for (ok, message) in checks {
            if !ok {
                return Err(ConfigError::Invalid(message.into()));
            }
        }
        if self.rooms.typing_window_ms < 10
            || self.rooms.typing_ttl_ms < self.rooms.typing_window_ms
        {
            return Err(ConfigError::Invalid(
                "rooms.typing_window_ms must be at least 10 and rooms.typing_ttl_ms at least the window".into(),
            ));
        }
        self.retention.validate().map_err(ConfigError::Invalid)?;
        self.push.validate().map_err(ConfigError::Invalid)?;
        self.websocket.validate()?;
        if self.rooms.max_rooms_per_user < 1 {
            return Err(ConfigError::Invalid(
                "rooms.max_rooms_per_user must be at least 1".into(),
            ));
        }
        if !(1..=1024).contains(&l.max_concurrent_reads) {
            return Err(ConfigError::Invalid(
                "limits.max_concurrent_reads must be between 1 and 1024".into(),
            ));
        }
        if l.max_pending_requests < 1 || l.sequencer_queue < s.max_batch {
            return Err(ConfigError::Invalid(
                "limits.max_pending_requests must be at least 1 and limits.sequencer_queue at least storage.max_batch".into(),
            ));
        }
        if self.rooms.inbox_epoch_ms < 1000 {
            return Err(ConfigError::Invalid(
                "rooms.inbox_epoch_ms must be at least 1000".into(),
            ));
        }
        if self.rooms.evict_idle_ms < 100 {
            return Err(ConfigError::Invalid(
                "rooms.evict_idle_ms must be at least 100".into(),
            ));
        }
        self.rate_limits.validate()?;
        self.presence.validate()?;
        self.auth.login_backoff.validate()?;
        self.admission.validate(&self.limits)?;
        self.compression.validate(&self.limits)?;
        self.cluster.validate()?;
        let jwt = &self.auth.jwt;
        if self.auth.mode == AuthMode::Jwt
            && jwt.hs256_secret_file.as_os_str().is_empty()
            && jwt.rs256_public_key.as_os_str().is_empty()
            && jwt.ed25519_public_key.as_os_str().is_empty()
        {
            return Err(ConfigError::Invalid(
                "auth.mode = \"jwt\" needs auth.jwt.hs256_secret_file, auth.jwt.rs256_public_key or auth.jwt.ed25519_public_key".into(),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.handshake_timeout_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.idle_timeout_ms)
    }

    pub(crate) fn slow_consumer_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery.slow_consumer_timeout_ms)
    }
}

/// `Option<SocketAddr>` as a string: an address, or `"off"`.
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "off" | "" => Ok(None),
            addr => addr
                .parse()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("`{addr}` is not an address or \"off\""))),
        }
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// Sets a scalar at a key path, creating it if the defaults left it out.
/// A key that does not exist in [`Config`] is then refused when the merged
/// value is deserialized (`deny_unknown_fields`), with the key's name. The
/// raw text is parsed as a TOML value when it is one (numbers, booleans,
/// arrays) and taken as a string otherwise, or always when the default is
/// a string.
fn set_path(
    root: &mut toml::Value,
    path: &[String],
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::Parse {
        origin: origin.to_owned(),
        message,
    };
    let (last, parents) = path.split_last().ok_or_else(|| bad("empty key".into()))?;
    let mut node = root;
    for p in parents {
        let table = node
            .as_table_mut()
            .ok_or_else(|| bad(format!("`{}` is not a section", path.join("."))))?;
        node = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| bad(format!("`{}` is not a section", path.join("."))))?;
    let parsed = match table.get(last.as_str()) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_owned()),
        _ => toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
    };
    table.insert(last.clone(), parsed);
    Ok(())
}

/// Retention settings: a server default plus overrides by room id prefix.
/// 0 means unlimited; with both limits at 0 (the default) nothing is ever
/// deleted and no sweep runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Entries older than this many seconds are deleted (0: no age limit).
    pub max_age_secs: u64,
    /// At most this many newest entries are kept per room (0: no count limit).
    pub max_count: u64,
    /// Time between two sweeps, in milliseconds.
    pub sweep_interval_ms: u64,
    /// Overrides for rooms whose id starts with a prefix; the longest
    /// matching prefix wins.
    pub rooms: Vec<RoomRetention>,
}

/// The retention of the rooms whose id starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRetention {
    /// Room id prefix ("" matches every room).
    pub prefix: String,
    /// As [`RetentionConfig::max_age_secs`].
    #[serde(default)]
    pub max_age_secs: u64,
    /// As [`RetentionConfig::max_count`].
    #[serde(default)]
    pub max_count: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age_secs: 0,
            max_count: 0,
            sweep_interval_ms: 60_000,
            rooms: Vec::new(),
        }
    }
}

/// What a notification may reveal about the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreviewPolicy {
    /// Only that the room has new messages.
    None,
    /// Also who sent the latest one.
    Sender,
    /// Also the latest message's payload (up to `push.max_preview_bytes`).
    Content,
}

/// Push settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Whether push is on: `RegisterPush` is served and jobs are made.
    pub enabled: bool,
    /// What a job reveals: `none`, `sender` or `content`.
    pub preview: PreviewPolicy,
    /// Largest content preview, in bytes (longer payloads are cut).
    pub max_preview_bytes: usize,
    /// The webhook's URL (`http://host:port/path`); required when push is
    /// on, unless the embedding service supplies its own notifier.
    pub webhook_url: String,
    /// Time allowed for one notifier call (connect, send, response), in
    /// milliseconds.
    pub timeout_ms: u64,
    /// Attempts per job before it goes to the dead-letter file.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; doubled per attempt.
    pub backoff_initial_ms: u64,
    /// Longest delay between retries, in milliseconds.
    pub backoff_max_ms: u64,
    /// How long a job waits for more messages of the same user and room
    /// before it is sent, in milliseconds.
    pub coalesce_ms: u64,
    /// Most (user, room) jobs pending at once; beyond it new jobs are
    /// dropped and counted (`confab_push_jobs_total{outcome="dropped"}`).
    pub queue_capacity: usize,
    /// Most notifier calls in flight at once.
    pub concurrency: usize,
    /// Where dead letters are appended (relative paths are under `data_dir`).
    pub dead_letter_file: PathBuf,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            preview: PreviewPolicy::Sender,
            max_preview_bytes: 256,
            webhook_url: String::new(),
            timeout_ms: 5_000,
            max_attempts: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            coalesce_ms: 1_000,
            queue_capacity: 100_000,
            concurrency: 8,
            dead_letter_file: PathBuf::from("push-dead-letter.jsonl"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[storage]\ndurability = \"fsync\"\nmax_batch = 100\n",
        )
        .expect("write");
        let env = vec![
            ("CONFAB_STORAGE__MAX_BATCH".to_owned(), "200".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let overrides = vec![("limits.max_connections".to_owned(), "7".to_owned())];
        let c = Config::load(Some(&file), env, &overrides).expect("valid");
        assert_eq!(c.storage.durability, Durability::Fsync);
        assert_eq!(c.storage.max_batch, 200);
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.delivery, DeliveryConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let bad_env = vec![("CONFAB_STORAGE__NOPE".to_owned(), "1".to_owned())];
        let e = Config::load(None, bad_env, &[]).expect_err("unknown key");
        assert!(e.to_string().contains("nope"), "{e}");

        let bad_value = vec![("storage.durability".to_owned(), "sometimes".to_owned())];
        let e = Config::load(None, Vec::new(), &bad_value).expect_err("bad enum");
        assert!(e.to_string().contains("durability"), "{e}");

        let out_of_range = vec![("limits.max_connections".to_owned(), "0".to_owned())];
        let e = Config::load(None, Vec::new(), &out_of_range).expect_err("range");
        assert!(e.to_string().contains("max_connections"), "{e}");
    }

    #[test]
    fn listeners_can_be_turned_off_and_certificates_set() {
        let env = vec![
            ("CONFAB_LISTEN__QUIC".to_owned(), "off".to_owned()),
            ("CONFAB_TLS__CERT_PATH".to_owned(), "/etc/c.pem".to_owned()),
        ];
        let overrides = vec![
            ("listen.tls".to_owned(), "0.0.0.0:7443".to_owned()),
            ("tls.key_path".to_owned(), "/etc/k.pem".to_owned()),
        ];
        let c = Config::load(None, env, &overrides).expect("valid");
        assert_eq!(c.listen.quic, None);
        assert_eq!(c.listen.tls, Some("0.0.0.0:7443".parse().expect("addr")));
        assert_eq!(c.tls.cert_path, Some(PathBuf::from("/etc/c.pem")));
        let back: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(back, c);

        let half = vec![("tls.cert_path".to_owned(), "/etc/c.pem".to_owned())];
        let e = Config::load(None, Vec::new(), &half).expect_err("key missing");
        assert!(e.to_string().contains("tls.key_path"), "{e}");
        let bad = vec![("listen.quic".to_owned(), "nowhere".to_owned())];
        let e = Config::load(None, Vec::new(), &bad).expect_err("bad address");
        assert!(e.to_string().contains("nowhere"), "{e}");
    }

    #[test]
    fn admission_limits_are_checked() {
        let set = |pairs: &[(&str, &str)]| {
            let overrides: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Config::load(None, Vec::new(), &overrides)
        };
        let e = set(&[("admission.max_hello_len", "1024")]).expect_err("below the floor");
        assert!(e.to_string().contains("max_hello_len"), "{e}");
        let e = set(&[
            ("limits.max_frame_len", "300000"),
            ("limits.max_payload_len", "1000"),
            ("admission.max_hello_len", "400000"),
        ])
        .expect_err("above max_frame_len");
        assert!(e.to_string().contains("max_hello_len"), "{e}");
        let e = set(&[("admission.max_handshakes_per_ip", "2000")]).expect_err("above the total");
        assert!(e.to_string().contains("max_handshakes_per_ip"), "{e}");
        let e = set(&[("admission.max_handshakes", "0")]).expect_err("zero");
        assert!(e.to_string().contains("max_handshakes"), "{e}");
        let c = set(&[
            ("admission.max_connections_per_ip", "0"),
            ("admission.max_handshakes_per_ip", "0"),
        ])
        .expect("0 turns a per-address limit off");
        assert_eq!(c.admission.max_hello_len, 65_536);
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::default();
        let text = c.to_toml();
        let back: Config = toml::from_str(&text).expect("parses");
        assert_eq!(back, c);
    }
}
