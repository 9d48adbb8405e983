//! Starting, running and stopping a broker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use confab_codec::{CreateRoom, RoomId, RoomInfo, StartAt};

use crate::admission::Admission;
use crate::auth::authz::Authorizer;
use crate::auth::backoff::LoginBackoff;
use crate::auth::{Authenticator, DenyAll, DevAuth, JwtAuth};
use crate::config::{AuthMode, Config};
use crate::embed::{EmbedError, LocalSubscription, Published, RoomChange, SystemMessage};
use crate::fanout::{self, CatchupCtx};
use crate::presence::PresenceHub;
use crate::push::{Dispatcher, Notifier, PushHub, WebhookNotifier};
use crate::ratelimit::UserLimits;
use crate::rooms::typing::TypingHub;
use crate::rooms::RoomRegistry;
use crate::sequencer::{Readers, SeqMsg, Sequencer};
use crate::shared::{ContextBudget, DeviceRegistry, Shared};
use crate::stats::{BrokerStats, Stats};
use crate::storage::ReadPool;
#[cfg(feature = "rocksdb")]
use crate::storage::RocksLog;
use crate::storage::{RoomLog, StorageError};
use crate::supervise::Supervisor;
use crate::transport;
use crate::transport::tcp::Carrier;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The storage could not be opened.
    #[error("cannot open storage in {path}: {source}")]
    Storage {
        /// The data directory.
        path: PathBuf,
        /// The cause.
        source: StorageError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The authentication keys could not be loaded.
    #[error(transparent)]
    Auth(#[from] crate::auth::jwt::KeyError),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// Push is on but its notifier cannot be built (bad `push.webhook_url`).
    #[error("push: {0}")]
    Push(String),
    /// The certificate for TLS and QUIC could not be loaded or generated.
    #[error("TLS: {0}")]
    Tls(String),
    /// No storage was given ([`BrokerBuilder::storage`]) and this build of
    /// confab-broker has no RocksDB to open in `data_dir` (the `rocksdb`
    /// feature is off).
    #[error("built without RocksDB (the `rocksdb` feature of confab-broker): give the broker a log with `BrokerBuilder::storage`")]
    NoStorage,
    /// `[cluster]` turns cluster mode on, which this build of the broker
    /// (without the `cluster` feature) does not run: refused rather than
    /// started as a single node that the operator believes is clustered.
    #[error("cluster.nats_urls is set, but this build has no cluster mode (the `cluster` feature of confab-broker); remove [cluster] to run a single node")]
    ClusterNotYet,
    /// Cluster mode could not start (NATS, the stream, membership), or was
    /// asked for with a setting it does not support yet.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Group commits the fan-out may lag behind the sequencer.
pub(crate) const FANOUT_QUEUE: usize = 256;

/// How long shutdown waits for closed QUIC connections to drain.
const QUIC_IDLE_GRACE: Duration = Duration::from_secs(2);

/// Builds a broker: configuration first, then optional replacements for
/// the storage and the authenticator.
pub struct BrokerBuilder {
    config: Config,
    log: Option<Arc<dyn RoomLog>>,
    auth: Option<Arc<dyn Authenticator>>,
    authorizer: Option<Arc<dyn Authorizer>>,
    notifier: Option<Arc<dyn Notifier>>,
}

/// Entry point of the library.
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// A builder for a broker with this configuration.
    pub fn builder(config: Config) -> BrokerBuilder {
        BrokerBuilder {
            config,
            log: None,
            auth: None,
            authorizer: None,
            notifier: None,
        }
    }
}

impl BrokerBuilder {
    /// Uses this storage instead of opening RocksDB in `data_dir`. Without
    /// the `rocksdb` feature a broker needs one: [`BrokerBuilder::start`]
    /// fails with [`BrokerError::NoStorage`] otherwise.
    pub fn storage(mut self, log: Arc<dyn RoomLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// Uses this authenticator instead of the one `auth.mode` selects.
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Lets `authorizer` decide which rooms socket clients may subscribe
    /// to, publish in and read the history of, instead of the membership
    /// tables (see [`Authorizer`]).
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Uses this notifier for offline push instead of the webhook that
    /// `push.webhook_url` configures (push still needs `push.enabled`).
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Opens the storage, starts the sequencer and fan-out threads, binds
    /// the listeners and starts accepting connections.
    ///
    /// # Errors
    /// If the configuration is invalid, the storage cannot be opened or a
    /// listener cannot be bound; [`BrokerError::NoStorage`] without a log
    /// when built without the `rocksdb` feature.
    pub async fn start(self) -> Result<BrokerHandle, BrokerError> {
        let config = self.config;
        config.validate()?;
        let shutdown = CancellationToken::new();
        #[cfg(not(feature = "cluster"))]
        if config.cluster.enabled() {
            return Err(BrokerError::ClusterNotYet);
        }
        #[cfg(feature = "cluster")]
        let cluster = if config.cluster.enabled() {
            cluster_supported(&config, self.log.is_some())?;
            Some(
                crate::cluster::node::ClusterNode::join(&config, shutdown.clone())
                    .await
                    .map_err(|e| BrokerError::Cluster(e.to_string()))?,
            )
        } else {
            None
        };
        #[cfg(feature = "cluster")]
        let (log, seq_log) = match &cluster {
            Some(node) => (Some(node.reader_log()), Some(node.sequencer_log())),
            None => (self.log, None),
        };
        #[cfg(not(feature = "cluster"))]
        let (log, seq_log) = (self.log, None::<Arc<dyn RoomLog>>);
        let log: Arc<dyn RoomLog> = match log {
            Some(log) => log,
            #[cfg(not(feature = "rocksdb"))]
            None => return Err(BrokerError::NoStorage),
            #[cfg(feature = "rocksdb")]
            None => {
                let dir = config.data_dir.clone();
                let cache = config.storage.block_cache_mb << 20;
                let opened = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| StorageError::Engine(e.to_string()))?;
                    RocksLog::open(&dir, cache)
                })
                .await
                .map_err(|e| StorageError::Engine(e.to_string()));
                match opened.and_then(|r| r) {
                    Ok(log) => Arc::new(log),
                    Err(source) => {
                        return Err(BrokerError::Storage {
                            path: config.data_dir.clone(),
                            source,
                        })
                    }
                }
            }
        };
        let auth: Arc<dyn Authenticator> = match (self.auth, config.auth.mode) {
            (Some(a), _) => a,
            (None, AuthMode::Dev) => {
                warn!("INSECURE: dev authentication is on; any client can claim any user. Do not expose this broker.");
                Arc::new(DevAuth)
            }
            (None, AuthMode::Jwt) => Arc::new(JwtAuth::from_config(&config.auth.jwt)?),
            (None, AuthMode::Disabled) => Arc::new(DenyAll),
        };

        let notifier: Option<Arc<dyn Notifier>> = match (self.notifier, config.push.enabled) {
            (_, false) => None,
            (Some(n), true) => Some(n),
            (None, true) => Some(Arc::new(
                WebhookNotifier::new(&config.push.webhook_url).map_err(BrokerError::Push)?,
            )),
        };
        let push = notifier
            .as_ref()
            .map(|_| Arc::new(PushHub::new(&config.push)));

        let listeners = bind(&config).await?;
        let ops_server = match config.metrics.listen {
            None => None,
            Some(addr) => Some(
                crate::ops::bind(addr, config.admin.token_file.clone())
                    .await
                    .map_err(|source| BrokerError::Bind { addr, source })?,
            ),
        };
        // The recorder goes in before the histogram handles are registered.
        let recorder = ops_server
            .as_ref()
            .and_then(|_| crate::ops::install_recorder());

        let rooms = Arc::new(RoomRegistry::default());
        let typing = Arc::new(TypingHub::new(Duration::from_millis(
            config.rooms.typing_ttl_ms,
        )));
        let stats = Arc::new(Stats::with_metrics());
        let (seq_tx, seq_rx) = crate::sequencer::queue(config.limits.sequencer_queue);
        let tasks = TaskTracker::new();
        let ready = Arc::new(AtomicBool::new(false));
        let supervisor = Arc::new(Supervisor::new(shutdown.clone(), ready.clone()));

        // Cluster mode: the sequencer's view of the log follows and takes
        // rooms over; everyone else's only reads.
        let seq_log = seq_log.unwrap_or_else(|| log.clone());
        let reads = Arc::new(ReadPool::new(config.limits.max_concurrent_reads));
        let ctx = Arc::new(CatchupCtx {
            log: log.clone(),
            reads: reads.clone(),
            batch: config.delivery.catchup_batch,
            max_bytes: (config.limits.max_frame_len as usize).saturating_sub(1024),
            max_frame_len: config.limits.max_frame_len as usize,
            ahead_bytes: config.delivery.write_batch_bytes,
            stats: stats.clone(),
        });
        let runtime = tokio::runtime::Handle::current();
        // Bounded: when fan-out falls behind the sequencer (more deliveries
        // per second than it can make), commits wait, acks slow down, and
        // publishers feel it through their in-flight limit. While the
        // fan-out thread is idle, the sequencer makes small commits'
        // deliveries itself.
        let (fan_tx, fan_rx) = fanout::channel(FANOUT_QUEUE);
        let fan_tx = fan_tx.inline(
            ctx.clone(),
            runtime.clone(),
            tasks.clone(),
            config.delivery.inline_fanout,
        );
        let sequencer = Sequencer::new(
            seq_log.clone(),
            rooms.clone(),
            config.storage.clone(),
            config.rooms.clone(),
            fan_tx,
            stats.clone(),
        )
        .external_authz(self.authorizer.is_some())
        .max_frame_len(config.limits.max_frame_len as usize)
        .with_push(push.clone());
        let (readers, reader_threads) =
            Readers::spawn(&supervisor, &seq_log).map_err(BrokerError::Thread)?;
        let sequencer_thread = supervisor
            .spawn("confab-sequencer", move || sequencer.run(seq_rx, readers))
            .map_err(BrokerError::Thread)?;
        let fanout_tasks = tasks.clone();
        let fanout_thread = supervisor
            .spawn("confab-fanout", move || {
                fanout::run(fan_rx, ctx, runtime, fanout_tasks);
                Ok::<(), std::convert::Infallible>(())
            })
            .map_err(BrokerError::Thread)?;

        let admission = Arc::new(Admission::new(
            &config.admission,
            config.limits.max_connections,
            config.handshake_timeout(),
        ));
        let presence = Arc::new(
            PresenceHub::new(log.clone(), seq_tx.clone(), config.delivery.queue_capacity)
                .max_frame_len(config.limits.max_frame_len as usize),
        );
        let user_limits = Arc::new(UserLimits::new(&config.rate_limits));
        let login_backoff = Arc::new(LoginBackoff::new(&config.auth.login_backoff));
        let compression = Arc::new(ContextBudget::new(config.compression.max_contexts));
        #[cfg(feature = "cluster")]
        let forward = match cluster {
            Some(node) => {
                // Typing and presence reach every node (docs/cluster.md).
                let ephemeral = crate::cluster::node::Ephemeral {
                    typing: typing.clone(),
                    presence: presence.clone(),
                    rooms: rooms.clone(),
                };
                Some(
                    node.start(
                        seq_tx.clone(),
                        stats.clone(),
                        ephemeral,
                        &tasks,
                        shutdown.clone(),
                    )
                    .await
                    .map_err(|e| BrokerError::Cluster(e.to_string()))?,
                )
            }
            None => None,
        };
        #[cfg(not(feature = "cluster"))]
        let forward = None;
        let shared = Arc::new(Shared {
            forward,
            compression,
            reads,
            config,
            log,
            rooms,
            sequencer: seq_tx,
            auth,
            login_backoff: login_backoff.clone(),
            session_ids: AtomicU64::new(1),
            shutdown: shutdown.clone(),
            stats,
            devices: DeviceRegistry::default(),
            typing: typing.clone(),
            presence: presence.clone(),
            user_limits: user_limits.clone(),
            admission,
            authorizer: self.authorizer,
            push: push.clone(),
        });
        if let (Some(hub), Some(notifier)) = (push, notifier) {
            let push_cfg = &shared.config.push;
            tasks.spawn(crate::push::run_dispatcher(
                Dispatcher {
                    hub,
                    log: shared.log.clone(),
                    notifier,
                    timeout: Duration::from_millis(push_cfg.timeout_ms),
                    concurrency: push_cfg.concurrency,
                    dead_letters: shared.config.data_dir.join(&push_cfg.dead_letter_file),
                },
                tasks.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(crate::rooms::typing::run(
            typing,
            Duration::from_millis(shared.config.rooms.typing_window_ms),
            shutdown.clone(),
        ));
        if shared.config.retention.enabled() {
            tasks.spawn(crate::retention::run(
                shared.log.clone(),
                shared.config.retention.clone(),
                shared.sequencer.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(crate::presence::run(
            presence,
            Duration::from_millis(shared.config.presence.window_ms),
            shutdown.clone(),
        ));
        tasks.spawn(crate::ratelimit::run_sweeper(user_limits, shutdown.clone()));
        tasks.spawn(crate::storage::watch_space(
            shared.log.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::auth::backoff::run_sweeper(
            login_backoff,
            shutdown.clone(),
        ));
        let Listeners {
            tcp,
            tcp_addr,
            tls,
            quic,
            websocket,
            websocket_tls,
            identity,
        } = listeners;
        tasks.spawn(transport::tcp::accept_loop(
            tcp,
            None,
            Carrier::Frames,
            shared.clone(),
            tasks.clone(),
        ));
        let tls_addr = tls.as_ref().map(|(_, addr, _)| *addr);
        if let Some((listener, _, acceptor)) = tls {
            tasks.spawn(transport::tcp::accept_loop(
                listener,
                Some(acceptor),
                Carrier::Frames,
                shared.clone(),
                tasks.clone(),
            ));
        }
        let websocket_addr = websocket.as_ref().map(|(_, addr)| *addr);
        if let Some((listener, _)) = websocket {
            tasks.spawn(transport::tcp::accept_loop(
                listener,
                None,
                Carrier::WebSocket,
                shared.clone(),
                tasks.clone(),
            ));
        }
        let websocket_tls_addr = websocket_tls.as_ref().map(|(_, addr, _)| *addr);
        if let Some((listener, _, acceptor)) = websocket_tls {
            tasks.spawn(transport::tcp::accept_loop(
                listener,
                Some(acceptor),
                Carrier::WebSocket,
                shared.clone(),
                tasks.clone(),
            ));
        }
        let quic_addr = quic.as_ref().map(|(_, addr)| *addr);
        let quic_endpoint = quic.map(|(endpoint, _)| endpoint);
        if let Some(endpoint) = &quic_endpoint {
            tasks.spawn(transport::quic::accept_loop(
                endpoint.clone(),
                shared.clone(),
                tasks.clone(),
            ));
        }
        let metrics_addr = ops_server.as_ref().map(|s| s.addr);
        if let Some(server) = ops_server {
            crate::ops::spawn(server, shared.clone(), recorder, ready.clone(), &tasks);
        }
        // Every listener is bound and its accept loop spawned (unless a
        // thread has already failed).
        supervisor.mark_ready();
        info!(%tcp_addr, ?tls_addr, ?quic_addr, ?websocket_addr, ?websocket_tls_addr, ?metrics_addr, durability = ?shared.config.storage.durability, data_dir = %shared.config.data_dir.display(), "broker started");
        Ok(BrokerHandle {
            tcp_addr,
            tls_addr,
            quic_addr,
            websocket_addr,
            websocket_tls_addr,
            metrics_addr,
            ready,
            quic_endpoint,
            identity: identity.map(|id| (id.fingerprint, id.cert_path)),
            shared,
            tasks,
            // The readers end after the sequencer (which holds their
            // channel); joining them releases their handles on the storage.
            threads: [sequencer_thread, fanout_thread]
                .into_iter()
                .chain(reader_threads)
                .collect(),
            supervisor,
        })
    }
}

/// The bound listeners of a broker that is starting.
struct Listeners {
    tcp: TcpListener,
    tcp_addr: SocketAddr,
    tls: Option<(TcpListener, SocketAddr, tokio_rustls::TlsAcceptor)>,
    quic: Option<(quinn::Endpoint, SocketAddr)>,
    websocket: Option<(TcpListener, SocketAddr)>,
    websocket_tls: Option<(TcpListener, SocketAddr, tokio_rustls::TlsAcceptor)>,
    identity: Option<transport::tls::Identity>,
}

/// Binds every configured listener, loading (or generating) the
/// certificate first if TLS or QUIC is on.
async fn bind(config: &Config) -> Result<Listeners, BrokerError> {
    let bind_err = |addr| move |source| BrokerError::Bind { addr, source };
    let tcp = TcpListener::bind(config.listen.tcp)
        .await
        .map_err(bind_err(config.listen.tcp))?;
    let tcp_addr = tcp.local_addr().map_err(bind_err(config.listen.tcp))?;
    let websocket = match config.listen.websocket {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(bind_err(addr))?;
            let bound = listener.local_addr().map_err(bind_err(addr))?;
            Some((listener, bound))
        }
    };
    let l = &config.listen;
    if l.tls.is_none() && l.quic.is_none() && l.websocket_tls.is_none() {
        return Ok(Listeners {
            tcp,
            tcp_addr,
            tls: None,
            quic: None,
            websocket,
            websocket_tls: None,
            identity: None,
        });
    }
    let for_tls = config.clone();
    let identity = tokio::task::spawn_blocking(move || transport::tls::load_or_generate(&for_tls))
        .await
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .map_err(BrokerError::Tls)?;
    info!(fingerprint = %identity.fingerprint, cert = %identity.cert_path.display(), "TLS certificate (SHA-256 fingerprint, for clients to pin)");
    let mut tls_listeners = Vec::new();
    let kinds: [(_, fn(&_) -> _); 2] = [
        (config.listen.tls, transport::tls::tcp_server_config),
        (
            config.listen.websocket_tls,
            transport::tls::websocket_server_config,
        ),
    ];
    for (addr, server_config) in kinds {
        tls_listeners.push(match addr {
            None => None,
            Some(addr) => {
                let server = server_config(&identity).map_err(BrokerError::Tls)?;
                let listener = TcpListener::bind(addr).await.map_err(bind_err(addr))?;
                let bound = listener.local_addr().map_err(bind_err(addr))?;
                Some((listener, bound, tokio_rustls::TlsAcceptor::from(server)))
            }
        });
    }
    let websocket_tls = tls_listeners.pop().flatten();
    let tls = tls_listeners.pop().flatten();
    let quic = match config.listen.quic {
        None => None,
        Some(addr) => {
            // QUIC's own idle timeout stays above the protocol's, so that
            // the session closes an idle connection with a Goodbye first.
            let idle = config.idle_timeout() + Duration::from_secs(5);
            // Room for the Hello (and its header) until the session is up.
            let hello_window = config.admission.max_hello_len.saturating_add(1024);
            let server = transport::tls::quic_server_config(&identity, idle, hello_window)
                .map_err(BrokerError::Tls)?;
            let endpoint = quinn::Endpoint::server(server, addr).map_err(bind_err(addr))?;
            let bound = endpoint.local_addr().map_err(bind_err(addr))?;
            Some((endpoint, bound))
        }
    };
    Ok(Listeners {
        tcp,
        tcp_addr,
        tls,
        quic,
        websocket,
        websocket_tls,
        identity: Some(identity),
    })
}

/// A running broker.
pub struct BrokerHandle {
    tcp_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    quic_addr: Option<SocketAddr>,
    websocket_addr: Option<SocketAddr>,
    websocket_tls_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    /// Cleared when shutdown starts (`/readyz`).
    ready: Arc<AtomicBool>,
    quic_endpoint: Option<quinn::Endpoint>,
    /// The certificate's fingerprint and PEM file, when TLS or QUIC is on.
    identity: Option<(String, PathBuf)>,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    threads: Vec<JoinHandle<()>>,
    supervisor: Arc<Supervisor>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("tcp_addr", &self.tcp_addr)
            .field("tls_addr", &self.tls_addr)
            .field("websocket_addr", &self.websocket_addr)
            .field("websocket_tls_addr", &self.websocket_tls_addr)
            .field("quic_addr", &self.quic_addr)
            .finish_non_exhaustive()
    }
}

impl BrokerHandle {
    /// The address the TCP listener is bound to.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The address the TLS-over-TCP listener is bound to, if it is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address the WebSocket listener (`ws://ADDR/ws`) is bound to, if
    /// it is on.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// The address the WebSocket-over-TLS listener (`wss://ADDR/ws`) is
    /// bound to, if it is on.
    pub fn websocket_tls_addr(&self) -> Option<SocketAddr> {
        self.websocket_tls_addr
    }

    /// The UDP address the QUIC endpoint is bound to, if it is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// The SHA-256 fingerprint (64 lowercase hex digits) of the certificate
    /// the TLS and QUIC listeners present, for clients to pin; None when
    /// both are off.
    pub fn cert_fingerprint(&self) -> Option<&str> {
        self.identity.as_ref().map(|(f, _)| f.as_str())
    }

    /// The PEM file of that certificate (the configured one, or the
    /// self-signed one in `<data_dir>/tls/cert.pem`), which clients may
    /// also use as their CA file.
    pub fn cert_path(&self) -> Option<&Path> {
        self.identity.as_ref().map(|(_, p)| p.as_path())
    }

    /// The address of the operations endpoint (`/metrics`, `/healthz`,
    /// `/readyz`, `/admin/*`), if `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Brings the scrape-time series (connections, rooms, subscriptions,
    /// queue depths, message counters) up to date in the process's
    /// `metrics` recorder. The `/metrics` endpoint does this on every
    /// scrape; an embedding application that exports with a recorder of
    /// its own calls it before rendering.
    pub fn update_metrics(&self) {
        crate::ops::export(&self.shared);
    }

    /// Publishes a server-side message (a bot, a system notice): sequenced,
    /// deduplicated and committed like a client's, as durable as
    /// `storage.durability` promises when this returns, and delivered to
    /// every subscriber. Membership does not apply to the sender.
    ///
    /// # Errors
    /// [`EmbedError::Refused`] for an invalid message (payload too large, a
    /// kind only the broker writes, a missing reference, a storage
    /// failure), [`EmbedError::ShuttingDown`] after shutdown began.
    pub async fn publish(&self, message: SystemMessage) -> Result<Published, EmbedError> {
        crate::embed::publish(&self.shared, message).await
    }

    /// Creates a group room managed by the service (no user owns it unless
    /// one is added as owner); `request.invite` users are invited.
    ///
    /// # Errors
    /// [`EmbedError::Refused`] with `RoomExists`, `RoomFull` or
    /// `InvalidRequest` (direct rooms are created by their users).
    pub async fn create_room(&self, request: CreateRoom) -> Result<RoomInfo, EmbedError> {
        crate::embed::create_room(&self.shared, request).await
    }

    /// Changes a managed room's membership or metadata as the service:
    /// the same log entries (`MEMBER_JOINED`, ...) and eviction of removed
    /// members' subscriptions as a client's request, without role checks.
    ///
    /// # Errors
    /// [`EmbedError::Refused`] with `NoSuchRoom`, `NotMember`, `RoomFull`.
    pub async fn change_room(&self, room: RoomId, change: RoomChange) -> Result<(), EmbedError> {
        crate::embed::change_room(&self.shared, room, change).await
    }

    /// Follows a room in-process, from `start`, without a socket (see
    /// [`LocalSubscription`]). Any room may be followed.
    ///
    /// # Errors
    /// [`EmbedError::ShuttingDown`] after shutdown began.
    pub async fn subscribe(
        &self,
        room: RoomId,
        start: StartAt,
    ) -> Result<LocalSubscription, EmbedError> {
        LocalSubscription::start(&self.shared, room, start).await
    }

    /// Serves one connection that the application accepted itself (a Unix
    /// socket, an in-memory pipe, a transport of its own) exactly as a
    /// connection to the TCP listener: admission control for `peer`'s
    /// address (a refused stream gets `Error` and `Goodbye` with
    /// `ServerBusy`), the handshake within its timeout, then the session.
    /// It runs in a task of the broker's, so [`BrokerHandle::shutdown`]
    /// says Goodbye to it and waits for it; after shutdown began the
    /// stream is dropped unserved. `peer` is the address that admission
    /// limits and logs use; give a stable one per client origin.
    ///
    /// Returns at once; the connection is served in the background on the
    /// caller's tokio runtime.
    pub fn serve_stream<S>(&self, stream: S, peer: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        transport::tcp::serve_accepted(stream, peer, self.shared.clone(), &self.tasks);
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The broker's counters now.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            compression_contexts: self.shared.compression.live() as u64,
            compression_contexts_refused: self.shared.compression.refused() as u64,
            ..self.shared.stats.snapshot()
        }
    }

    /// A token cancelled when shutdown starts: by [`BrokerHandle::shutdown`],
    /// or by the broker itself when one of its threads failed (see
    /// [`BrokerHandle::failure`]). An application waits on it next to its
    /// own signals and then calls `shutdown`.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Why the broker stopped on its own, if it did: its sequencer or
    /// fan-out thread panicked or could not go on. It is then no longer
    /// ready, accepts no connection, and has begun to shut down; the
    /// application should call [`BrokerHandle::shutdown`] and exit with
    /// an error.
    pub fn failure(&self) -> Option<String> {
        self.supervisor.failure()
    }

    /// Stops accepting, sends Goodbye to every connection, commits and
    /// flushes what was accepted, and stops every thread. When it returns,
    /// the storage is closed.
    pub async fn shutdown(self) {
        let BrokerHandle {
            shared,
            tasks,
            threads,
            quic_endpoint,
            ready,
            ..
        } = self;
        info!("shutting down");
        ready.store(false, Ordering::Release);
        shared.shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        if let Some(endpoint) = quic_endpoint {
            // Every session said Goodbye and closed its connection; let the
            // closes reach the peers before the socket goes away.
            if tokio::time::timeout(QUIC_IDLE_GRACE, endpoint.wait_idle())
                .await
                .is_err()
            {
                debug!("QUIC connections did not drain in time");
            }
            endpoint.close(quinn::VarInt::from(0u32), b"shutdown");
        }
        let _ = shared.sequencer.send_now(SeqMsg::Stop);
        drop(shared);
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    warn!("a broker thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            warn!("could not join the broker threads");
        }
        info!("shutdown complete");
    }
}

/// Refuses settings that cluster mode does not run yet (docs/cluster.md,
/// "Status"), rather than starting a node that silently ignores them.
#[cfg(feature = "cluster")]
fn cluster_supported(config: &Config, own_log: bool) -> Result<(), BrokerError> {
    let refuse = |what: &str| {
        Err(BrokerError::Cluster(format!(
            "{what} is not available in cluster mode yet (docs/cluster.md, \"Status\")"
        )))
    };
    if own_log {
        return refuse("a storage given to the builder");
    }
    if config.retention.enabled() {
        return refuse("retention");
    }
    if config.push.enabled {
        return refuse("push");
    }
    Ok(())
}
