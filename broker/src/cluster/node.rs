//! A broker node in cluster mode: the parts `confab serve` builds when
//! `[cluster]` is set, in two steps around the sequencer's queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::forward::{serve_requests, start_forwarder, NodeLink};
use super::presence::{relay_tick, start_presence, PresenceLink};
use super::room_log::ClusterLog;
use super::status::{serve_status, StatusSource};
use super::typing::{start_relay, TypingLink, RELAY_QUEUE};
use super::{ClusterError, JetStreamLog, Membership};
use crate::config::Config;
use crate::fanout::RoomRegistry;
use crate::presence::PresenceHub;
use crate::rooms::typing::TypingHub;
use crate::sequencer::SeqTx;
use crate::shared::Forward;
use crate::stats::Stats;
use crate::storage::RoomLog;

/// The node's ephemeral features, which cluster mode makes cluster-wide.
#[derive(Debug)]
pub(crate) struct Ephemeral {
    /// Typing: this node's changes go to the other nodes following the
    /// room, theirs come in.
    pub(crate) typing: Arc<TypingHub>,
    /// Presence: merged over every live node.
    pub(crate) presence: Arc<PresenceHub>,
    /// The rooms in memory, where typing from other nodes goes.
    pub(crate) rooms: Arc<RoomRegistry>,
}

/// The settings of presence across nodes, from the configuration.
#[derive(Debug, Clone, Copy)]
struct PresenceSettings {
    /// `cluster.heartbeat_ms`: how often a node with nothing to say beats.
    beat: Duration,
    /// How often changes are sent (from `presence.window_ms`).
    tick: Duration,
    /// `limits.max_connections`: most users one peer may list.
    max_per_peer: usize,
}

/// A node connected to NATS, joined, with its room log open; not yet
/// serving requests of other nodes (that needs the sequencer's queue).
#[derive(Debug)]
pub(crate) struct ClusterNode {
    link: NodeLink,
    log: ClusterLog,
    membership: Membership,
    /// The address devices reach this node at (for `confab admin cluster`).
    address: String,
    presence: PresenceSettings,
}

impl ClusterNode {
    /// Connects to NATS, opens (or creates) the room stream, and joins the
    /// node bucket.
    ///
    /// # Errors
    /// If NATS cannot be reached, the stream or bucket exists with other
    /// settings, or the settings are invalid.
    pub(crate) async fn join(
        config: &Config,
        stop: CancellationToken,
    ) -> Result<Self, ClusterError> {
        let cfg = &config.cluster;
        let me = cfg.node()?;
        let client = cfg.connect().await?;
        let log = Arc::new(JetStreamLog::open(client.clone(), cfg.log_config()).await?);
        let membership = Membership::join(
            client.clone(),
            cfg.membership_config(),
            me.clone(),
            cfg.advertised_address.clone(),
        )
        .await?;
        let room_log = ClusterLog::reader(
            Handle::current(),
            client.clone(),
            log,
            me.clone(),
            membership.changes(),
            config.storage.dedup_window,
            stop,
        );
        info!(node = %me, nats = ?cfg.nats_urls, stream = %cfg.stream, "joined the cluster");
        Ok(Self {
            link: NodeLink {
                client,
                stream: cfg.stream.clone(),
                me,
                max_frame_len: config.limits.max_frame_len,
            },
            log: room_log,
            membership,
            address: cfg.advertised_address.clone(),
            presence: PresenceSettings {
                beat: Duration::from_millis(cfg.heartbeat_ms),
                tick: relay_tick(Duration::from_millis(config.presence.window_ms)),
                max_per_peer: config.limits.max_connections,
            },
        })
    }

    /// The log sessions, catch-up and presence read.
    pub(crate) fn reader_log(&self) -> Arc<dyn RoomLog> {
        Arc::new(self.log.clone())
    }

    /// The log the sequencer and its readers use.
    pub(crate) fn sequencer_log(&self) -> Arc<dyn RoomLog> {
        Arc::new(self.log.sequencer())
    }

    /// Serves other nodes' requests into `sequencer`, feeds followed rooms
    /// into it, makes typing and presence cluster-wide, and returns the
    /// router of this node's publishes. The node leaves the cluster
    /// (deletes its key) when `stop` is cancelled.
    ///
    /// # Errors
    /// If NATS refuses a subscription.
    pub(crate) async fn start(
        self,
        sequencer: SeqTx,
        stats: Arc<Stats>,
        ephemeral: Ephemeral,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Arc<dyn Forward>, ClusterError> {
        let Ephemeral {
            typing,
            presence,
            rooms,
        } = ephemeral;
        let NodeLink {
            client, stream, me, ..
        } = self.link.clone();
        let (typing_tx, typing_rx) = mpsc::channel(RELAY_QUEUE);
        typing.relay_to(typing_tx);
        start_relay(
            client.clone(),
            stream.clone(),
            me.clone(),
            typing_rx,
            tasks,
            stop.clone(),
        );
        // Before the log feeds the sequencer: every room followed from now
        // on also receives its typing.
        self.log.typing_from(Arc::new(TypingLink::new(
            client.clone(),
            stream.clone(),
            me.clone(),
            typing,
            rooms,
        )));
        start_presence(
            PresenceLink {
                client,
                stream,
                me,
                hub: presence,
                live: self.membership.changes(),
                beat: self.presence.beat,
                tick: self.presence.tick,
                max_per_peer: self.presence.max_per_peer,
            },
            tasks,
            stop.clone(),
        )
        .await?;
        self.log.feed_into(sequencer.clone());
        serve_requests(&self.link, sequencer, stats, tasks.clone(), stop.clone()).await?;
        let source = StatusSource {
            client: self.link.client.clone(),
            stream: self.link.stream.clone(),
            me: self.link.me.clone(),
            address: self.address.clone(),
            live: self.membership.changes(),
            log: self.log.clone(),
        };
        serve_status(source, tasks, stop.clone()).await?;
        let forwarder =
            start_forwarder(&self.link, self.membership.changes(), tasks, stop.clone()).await?;
        let membership = self.membership;
        tasks.spawn(async move {
            stop.cancelled().await;
            if let Err(e) = membership.leave().await {
                warn!(error = %e, "leaving the cluster failed; the node's key expires");
            }
        });
        Ok(Arc::new(forwarder))
    }
}
