//! Node membership: which broker nodes are alive, from a JetStream KV
//! bucket whose entries expire after a short TTL.
//!
//! Each node puts its key (its node id, the value its advertised address)
//! every `heartbeat`; the bucket's `max_age` is the TTL, so the key of a
//! node that stops (crash, pause, partition from NATS) expires on the
//! server, which writes a delete marker that every watcher sees. Every
//! node watches the whole bucket and keeps the live set. As a second line,
//! a node drops any entry not refreshed within the TTL by its own clock,
//! so a lost marker delays nothing.
//!
//! Membership only decides who *should* write a room (liveness). Safety
//! does not depend on it: two nodes that disagree about the live set may
//! both try to write a room, and the fenced append lets only one succeed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use confab_codec::RoomId;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::nats;
use super::names::check_name;
use super::rendezvous;
use super::ClusterError;

/// A broker node's id: 1 to 64 ASCII letters, digits, `-` or `_` (it is a
/// KV key and part of NATS subjects).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Parses a node id.
    ///
    /// # Errors
    /// [`ClusterError::Config`] if it is empty, too long or has other
    /// characters.
    pub fn new(id: impl Into<String>) -> Result<Self, ClusterError> {
        let id = id.into();
        check_name("node id", &id, false)?;
        Ok(Self(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The live nodes as one node sees them, with their advertised addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveNodes {
    nodes: BTreeMap<NodeId, String>,
}

impl LiveNodes {
    /// The live node ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.keys()
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.nodes.contains_key(id)
    }

    /// How many nodes are live.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is live.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address `id` advertises, if it is live.
    pub fn address(&self, id: &NodeId) -> Option<&str> {
        self.nodes.get(id).map(String::as_str)
    }

    /// The owner of `room` among the live nodes ([`rendezvous::owner`]).
    pub fn owner(&self, room: &RoomId) -> Option<&NodeId> {
        rendezvous::owner(room, self.nodes.keys())
    }
}

/// Membership settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// The KV bucket of node keys.
    pub bucket: String,
    /// How long a node stays live after its last heartbeat. Whole seconds,
    /// at least 1 (JetStream's delete markers count in seconds).
    pub ttl: Duration,
    /// How often a node puts its key: at most a third of the TTL, so that
    /// two lost heartbeats in a row do not make a live node look dead.
    pub heartbeat: Duration,
    /// Replicas of the bucket.
    pub replicas: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            bucket: "confab_nodes".into(),
            ttl: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            replicas: 1,
        }
    }
}

impl MembershipConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`ClusterError::Config`] naming the setting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        check_name("bucket", &self.bucket, false)?;
        if self.ttl < Duration::from_secs(1) || self.ttl.subsec_nanos() != 0 {
            return Err(ClusterError::Config(format!(
                "ttl {:?}: whole seconds, at least 1",
                self.ttl
            )));
        }
        if self.heartbeat.is_zero() || self.heartbeat * 3 > self.ttl {
            return Err(ClusterError::Config(format!(
                "heartbeat {:?}: above zero and at most a third of the ttl {:?}",
                self.heartbeat, self.ttl
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ClusterError::Config(format!(
                "replicas {}: JetStream allows 1 to 5",
                self.replicas
            )));
        }
        Ok(())
    }
}

/// This node's membership: it heartbeats its key and watches the others'.
/// Dropping it stops both without removing the key (as a crash would);
/// [`Membership::leave`] removes it.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    kv: kv::Store,
    live: watch::Receiver<Arc<LiveNodes>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Membership {
    /// Joins: opens (or creates) the bucket, puts this node's key, starts
    /// heartbeating and watching, and returns once this node sees itself
    /// live.
    ///
    /// # Errors
    /// [`ClusterError::Config`] for invalid settings; [`ClusterError::Nats`]
    /// if JetStream fails or this node does not see its own key within the
    /// TTL.
    pub async fn join(
        client: async_nats::Client,
        cfg: MembershipConfig,
        me: NodeId,
        address: String,
    ) -> Result<Self, ClusterError> {
        cfg.validate()?;
        let js = jetstream::new(client);
        let kv = open_bucket(&js, &cfg).await?;
        let value = Bytes::from(address);
        kv.put(me.as_str(), value.clone())
            .await
            .map_err(|e| nats("put the node key", e))?;
        let watcher = kv
            .watch_all()
            .await
            .map_err(|e| nats("watch the node bucket", e))?;
        let stop = CancellationToken::new();
        let (tx, live) = watch::channel(Arc::new(LiveNodes::default()));
        let tasks = vec![
            tokio::spawn(heartbeat(
                kv.clone(),
                me.clone(),
                value,
                cfg.heartbeat,
                stop.clone(),
            )),
            tokio::spawn(watch_nodes(
                kv.clone(),
                watcher,
                cfg.clone(),
                tx,
                stop.clone(),
            )),
        ];
        let this = Self {
            me,
            kv,
            live,
            stop,
            tasks,
        };
        let me = this.me.clone();
        let mut own = this.live.clone();
        let seen = tokio::time::timeout(cfg.ttl, own.wait_for(|l| l.contains(&me)))
            .await
            .is_ok_and(|r| r.is_ok());
        if !seen {
            this.stop.cancel();
            return Err(ClusterError::Nats(format!(
                "node {me} did not see its own key within {:?}",
                cfg.ttl
            )));
        }
        info!(node = %this.me, live = this.live().len(), "joined the cluster");
        Ok(this)
    }

    /// This node.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The live nodes now.
    pub fn live(&self) -> Arc<LiveNodes> {
        self.live.borrow().clone()
    }

    /// A receiver that sees every change of the live set.
    pub fn changes(&self) -> watch::Receiver<Arc<LiveNodes>> {
        self.live.clone()
    }

    /// The owner of `room` among the live nodes.
    pub fn owner(&self, room: &RoomId) -> Option<NodeId> {
        self.live().owner(room).cloned()
    }

    /// Whether this node owns `room`.
    pub fn owns(&self, room: &RoomId) -> bool {
        self.live().owner(room) == Some(&self.me)
    }

    /// Leaves in order: stops heartbeating and deletes this node's key, so
    /// the others see it gone at once instead of after the TTL.
    ///
    /// # Errors
    /// If the key cannot be deleted (it then expires after the TTL).
    pub async fn leave(mut self) -> Result<(), ClusterError> {
        self.halt().await;
        self.kv
            .delete(self.me.as_str())
            .await
            .map_err(|e| nats("delete the node key", e))
    }

    /// Stops heartbeating and watching, leaving the key to expire: what a
    /// crashed or paused node looks like to the others.
    pub async fn halt(&mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Opens the bucket, creating it if it does not exist; one created with
/// another TTL is refused (the nodes would disagree on when a node is dead).
async fn open_bucket(
    js: &jetstream::Context,
    cfg: &MembershipConfig,
) -> Result<kv::Store, ClusterError> {
    let kv = create_or_get(js, cfg).await?;
    let status = kv
        .status()
        .await
        .map_err(|e| nats("read the node bucket's settings", e))?;
    if status.max_age() != cfg.ttl {
        return Err(ClusterError::Config(format!(
            "bucket {} exists with a TTL of {:?}, not {:?}: every node must use the same TTL",
            cfg.bucket,
            status.max_age(),
            cfg.ttl
        )));
    }
    Ok(kv)
}

async fn create_or_get(
    js: &jetstream::Context,
    cfg: &MembershipConfig,
) -> Result<kv::Store, ClusterError> {
    if let Ok(kv) = js.get_key_value(cfg.bucket.clone()).await {
        return Ok(kv);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: cfg.bucket.clone(),
            history: 1,
            max_age: cfg.ttl,
            // Membership is soft state: a nats-server restart empties it
            // and every node puts its key again within a heartbeat.
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: cfg.replicas,
            // An expired key leaves a delete marker, so watchers see the
            // node go; the marker itself goes after the TTL.
            limit_markers: Some(cfg.ttl),
            ..Default::default()
        })
        .await;
    match created {
        Ok(kv) => Ok(kv),
        // Another node created it in between.
        Err(e) => js
            .get_key_value(cfg.bucket.clone())
            .await
            .map_err(|_| nats("create the node bucket", e)),
    }
}

async fn heartbeat(
    kv: kv::Store,
    me: NodeId,
    value: Bytes,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = kv.put(me.as_str(), value.clone()).await {
            warn!(node = %me, error = %e, "heartbeat failed");
        }
    }
}

/// How long ago the server stored an entry (0 if the clocks disagree).
fn age(created_unix_nanos: i128) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos(u64::try_from(now - created_unix_nanos).unwrap_or(0))
}

async fn watch_nodes(
    kv: kv::Store,
    mut watcher: kv::Watch,
    cfg: MembershipConfig,
    tx: watch::Sender<Arc<LiveNodes>>,
    stop: CancellationToken,
) {
    // Node -> (address, when its last heartbeat was stored, by our clock).
    let mut seen: BTreeMap<NodeId, (String, Instant)> = BTreeMap::new();
    let mut sweep = tokio::time::interval(cfg.heartbeat / 2);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            _ = stop.cancelled() => return,
            entry = watcher.next() => match entry {
                Some(Ok(e)) => apply(&mut seen, e, cfg.ttl),
                Some(Err(e)) => {
                    debug!(error = %e, "node watch error");
                    false
                }
                None => {
                    // The watch ended (the server went away): watch again.
                    tokio::time::sleep(cfg.heartbeat / 2).await;
                    if let Ok(w) = kv.watch_all().await {
                        watcher = w;
                    }
                    false
                }
            },
            _ = sweep.tick() => {
                let before = seen.len();
                seen.retain(|_, (_, at)| at.elapsed() < cfg.ttl);
                seen.len() != before
            }
        };
        if changed {
            let live = LiveNodes {
                nodes: seen
                    .iter()
                    .map(|(k, (a, _))| (k.clone(), a.clone()))
                    .collect(),
            };
            tx.send_if_modified(|cur| {
                if **cur == live {
                    return false;
                }
                info!(nodes = ?live.nodes.keys().map(NodeId::as_str).collect::<Vec<_>>(), "live nodes changed");
                *cur = Arc::new(live);
                true
            });
        }
    }
}

/// Applies one watched entry; whether the live set may have changed.
fn apply(seen: &mut BTreeMap<NodeId, (String, Instant)>, e: kv::Entry, ttl: Duration) -> bool {
    let Ok(id) = NodeId::new(e.key.as_str()) else {
        return false;
    };
    match e.operation {
        kv::Operation::Put => {
            let stored_ago = age(e.created.unix_timestamp_nanos()).min(ttl);
            let Some(at) = Instant::now().checked_sub(stored_ago) else {
                return false;
            };
            if stored_ago >= ttl {
                return seen.remove(&id).is_some();
            }
            let address = String::from_utf8_lossy(&e.value).into_owned();
            let before = seen.insert(id, (address.clone(), at));
            before.map(|(a, _)| a) != Some(address)
        }
        kv::Operation::Delete | kv::Operation::Purge => seen.remove(&id).is_some(),
    }
}
