//! Presence: per-device status aggregated per user, last-seen times, and
//! coalesced pushes to the watchers who share a room with the user.
//!
//! The shape follows typing (`rooms::typing`): device events only update
//! [`state::PresenceState`] under a short lock; a hub task wakes once per
//! `presence.window_ms`, takes the aggregates that really changed (many
//! device events of one user in a window are one change), and resolves who
//! may see them on a blocking thread, from the stored membership (two users
//! share presence when both are members, not invitees, of one managed
//! room). Each watching connection then receives at most one
//! `PresenceEvent` per window. Nothing of this runs per device event, and
//! no storage read runs on the reactor.
//!
//! Last-seen times are stored in the metadata keyspace (`S` · len(user) ·
//! user → u64 big-endian microseconds) when a user's last device
//! disconnects, through [`RoomLog::commit`] on a blocking thread.
//!
//! In cluster mode the aggregate covers the user's devices on every node:
//! the cluster layer takes what to tell the other nodes
//! ([`PresenceHub::take_relayed`]) and hands in what they say
//! ([`PresenceHub::apply_peer`], [`PresenceHub::replace_peer`],
//! [`PresenceHub::drop_peer`] when a node leaves); pushes and
//! `GetPresence` then work from the merged state as above.

mod share;
pub(crate) mod state;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use confab_codec::{PresenceEntry, PresenceStatus, RoomId, UserId};
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub(crate) use share::visible_to;
pub(crate) use state::{Departure, Peer, Relayed};

use crate::fanout::{presence_events, Outbox};
use crate::sequencer::{write_meta, SeqTx};
use crate::storage::{meta, RoomLog, StorageError};
use state::{Change, PresenceState};

/// A user's stored last-seen time (0 if never seen).
///
/// # Errors
/// If the storage fails.
pub(crate) fn stored_last_seen(log: &dyn RoomLog, user: &UserId) -> Result<u64, StorageError> {
    meta::presence::last_seen(log, user)
}

/// Most last-seen times [`PresenceHub::store_departures`] stores in one
/// commit.
const DEPARTURES_PER_WRITE: usize = 1024;

/// One connection that turned `WatchPresence` on.
#[derive(Debug, Clone)]
struct Watcher {
    session: u64,
    outbox: Arc<Outbox>,
    /// The connection token's rooms claim: only users sharing one of these
    /// rooms are pushed to it.
    only: Option<Arc<HashSet<RoomId>>>,
}

/// Where a watching connection's pushes go, and its token's rooms claim.
pub(crate) type WatchTarget = (Arc<Outbox>, Option<Arc<HashSet<RoomId>>>);

/// The running broker's presence.
pub(crate) struct PresenceHub {
    state: Mutex<PresenceState>,
    /// Watching connections, by their user.
    watchers: RwLock<FxHashMap<UserId, Vec<Watcher>>>,
    log: Arc<dyn RoomLog>,
    /// The sequencer, which stores last-seen times.
    writer: SeqTx,
    /// Most frames a watcher's control queue may hold before a push to it
    /// is dropped (it is then a slow consumer; `GetPresence` catches up).
    max_queued: usize,
    /// The frame limit: a window's changes for one watcher may take
    /// several `PresenceEvent` frames.
    max_frame_len: usize,
}

impl std::fmt::Debug for PresenceHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceHub")
            .field("users", &self.state().len())
            .finish_non_exhaustive()
    }
}

impl PresenceHub {
    /// `writer` is the sequencer's channel, through which last-seen times
    /// are stored.
    pub(crate) fn new(log: Arc<dyn RoomLog>, writer: SeqTx, max_queued: usize) -> Self {
        Self {
            state: Mutex::new(PresenceState::default()),
            watchers: RwLock::new(FxHashMap::default()),
            log,
            writer,
            max_queued,
            max_frame_len: confab_codec::DEFAULT_MAX_FRAME_LEN as usize,
        }
    }

    /// The frame limit the events it sends must stay within.
    pub(crate) fn max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PresenceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A device connected (it starts online).
    pub(crate) fn connect(&self, session: u64, user: &UserId) {
        self.state().connect(session, user);
    }

    /// A connected device set its status.
    pub(crate) fn set(&self, session: u64, user: &UserId, status: PresenceStatus) {
        self.state().set(session, user, status);
    }

    /// A device disconnected: it stops watching, and if it was the user's
    /// last device (on any node, in cluster mode) the user's last-seen
    /// time is stored (by the sequencer,
    /// the metadata's one writer; awaited, so shutdown waits for it).
    pub(crate) async fn disconnect(&self, session: u64, user: &UserId, now_us: u64) {
        self.watch(session, user, None);
        if !self.state().disconnect(session, user, now_us) {
            return;
        }
        let write = meta::presence::put_last_seen(user, now_us);
        if let Err(code) = write_meta(&self.writer, vec![write]).await {
            warn!(%user, ?code, "cannot store the last-seen time");
        }
        self.state().saved(user);
    }

    /// Turns pushes on (`Some(target)`) or off (`None`) for a connection.
    pub(crate) fn watch(&self, session: u64, user: &UserId, target: Option<WatchTarget>) {
        let mut watchers = self.watchers.write().unwrap_or_else(|p| p.into_inner());
        let list = watchers.entry(user.clone()).or_default();
        list.retain(|w| w.session != session);
        if let Some((outbox, only)) = target {
            list.push(Watcher {
                session,
                outbox,
                only,
            });
        }
        if list.is_empty() {
            watchers.remove(user);
        }
    }

    /// Cluster mode: tracks this node's devices for the other nodes from
    /// now on, and accepts at most `max_per_peer` users from each of them.
    pub(crate) fn relay(&self, max_per_peer: usize) {
        self.state().relay(max_per_peer);
    }

    /// Cluster mode: what to tell the other nodes about this node's
    /// devices: every user with a device here (`all`, a snapshot), or the
    /// changes since the last call.
    pub(crate) fn take_relayed(&self, all: bool) -> Vec<Relayed> {
        self.state().take_relayed(all)
    }

    /// Cluster mode: what `peer` says about some of its users. Returns the
    /// departures to store ([`PresenceHub::store_departures`]) and how
    /// many users were ignored (beyond the peer's share).
    pub(crate) fn apply_peer(
        &self,
        peer: &Peer,
        updates: Vec<Relayed>,
        now_us: u64,
    ) -> (Vec<Departure>, usize) {
        let mut st = self.state();
        let mut departures = Vec::new();
        let mut ignored = 0;
        for update in updates {
            let (gone, kept) = st.apply_peer(peer, update, now_us);
            departures.extend(gone);
            ignored += usize::from(!kept);
        }
        (departures, ignored)
    }

    /// Cluster mode: `users` is everything `peer` has now (a snapshot).
    /// Returns the departures to store and how many users were ignored.
    pub(crate) fn replace_peer(
        &self,
        peer: &Peer,
        users: Vec<Relayed>,
        now_us: u64,
    ) -> (Vec<Departure>, usize) {
        self.state().replace_peer(peer, users, now_us)
    }

    /// Cluster mode: `peer` left; everything it said is dropped. Returns
    /// the departures to store (users it was the last node of).
    pub(crate) fn drop_peer(&self, peer: &Peer, now_us: u64) -> Vec<Departure> {
        self.state().drop_peer(peer, now_us)
    }

    /// Stores the last-seen times of users who left through another node
    /// (by the sequencer, in batches; awaited), then lets them be
    /// forgotten.
    pub(crate) async fn store_departures(&self, departures: Vec<Departure>) {
        for batch in departures.chunks(DEPARTURES_PER_WRITE) {
            let writes = batch
                .iter()
                .map(|(user, at)| meta::presence::put_last_seen(user, *at))
                .collect();
            if let Err(code) = write_meta(&self.writer, writes).await {
                warn!(users = batch.len(), ?code, "cannot store last-seen times");
            }
            let mut st = self.state();
            for (user, _) in batch {
                st.saved(user);
            }
        }
    }

    /// The current entries of `users` (the caller checked visibility),
    /// reading stored last-seen times for the offline ones. Blocking.
    ///
    /// # Errors
    /// If the storage fails.
    pub(crate) fn entries(
        &self,
        users: Vec<UserId>,
        now_us: u64,
    ) -> Result<Vec<PresenceEntry>, StorageError> {
        let statuses: Vec<_> = {
            let st = self.state();
            users
                .into_iter()
                .map(|u| {
                    let (s, left) = (st.status(&u), st.left_at(&u));
                    (u, s, left)
                })
                .collect()
        };
        statuses
            .into_iter()
            .map(|(user, status, left)| {
                let last_seen_us = match (status, left) {
                    (PresenceStatus::Offline, Some(t)) => t,
                    (PresenceStatus::Offline, None) => stored_last_seen(self.log.as_ref(), &user)?,
                    _ => now_us,
                };
                Ok(PresenceEntry {
                    user,
                    status,
                    last_seen_us,
                })
            })
            .collect()
    }

    /// Resolves one window's changes into one frame per watching user, and
    /// queues it for each of their watching connections. Blocking.
    fn publish(&self, changes: Vec<Change>, now_us: u64) -> Result<(), StorageError> {
        let watching: Vec<UserId> = {
            let w = self.watchers.read().unwrap_or_else(|p| p.into_inner());
            if w.is_empty() {
                return Ok(());
            }
            w.keys().cloned().collect()
        };
        let mut per_watcher: FxHashMap<UserId, Vec<PresenceEntry>> = FxHashMap::default();
        for change in changes {
            let seers = share::seers(self.log.as_ref(), &change.user, &watching)?;
            if seers.is_empty() {
                continue;
            }
            let last_seen_us = match (change.status, change.left_at_us) {
                (PresenceStatus::Offline, Some(t)) => t,
                (PresenceStatus::Offline, None) => {
                    stored_last_seen(self.log.as_ref(), &change.user)?
                }
                _ => now_us,
            };
            let entry = PresenceEntry {
                user: change.user,
                status: change.status,
                last_seen_us,
            };
            for seer in seers {
                per_watcher.entry(seer).or_default().push(entry.clone());
            }
        }
        let watchers: FxHashMap<UserId, Vec<Watcher>> = {
            let w = self.watchers.read().unwrap_or_else(|p| p.into_inner());
            per_watcher
                .keys()
                .filter_map(|u| w.get(u).map(|list| (u.clone(), list.clone())))
                .collect()
        };
        for (user, entries) in per_watcher {
            let Some(list) = watchers.get(&user) else {
                continue;
            };
            let encode = |entries: Vec<PresenceEntry>| -> Vec<bytes::Bytes> {
                presence_events(entries, self.max_frame_len)
                    .into_iter()
                    .filter_map(|f| f.to_bytes().ok())
                    .collect()
            };
            let frames = encode(entries.clone());
            for w in list {
                let frames = match &w.only {
                    None => frames.clone(),
                    // A token limited to some rooms sees only the users
                    // who share one of them.
                    Some(only) => {
                        let asked: Vec<UserId> = entries.iter().map(|e| e.user.clone()).collect();
                        let visible = visible_to(self.log.as_ref(), &user, &asked, Some(only))?;
                        let narrowed: Vec<PresenceEntry> = entries
                            .iter()
                            .filter(|e| visible.contains(&e.user))
                            .cloned()
                            .collect();
                        if narrowed.is_empty() {
                            continue;
                        }
                        encode(narrowed)
                    }
                };
                for bytes in frames {
                    if !w.outbox.try_push_control(bytes, self.max_queued) {
                        // Counted: a watcher too slow to take presence pushes.
                        metrics::counter!("confab_presence_dropped_total").increment(1);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Publishes presence changes every `window` until `shutdown`.
pub(crate) async fn run(hub: Arc<PresenceHub>, window: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let changes = hub.state().take_changes();
        if changes.is_empty() {
            continue;
        }
        // Counted: aggregate changes published (after coalescing).
        metrics::counter!("confab_presence_changes_total").increment(changes.len() as u64);
        let h = hub.clone();
        let now = crate::base::now_us();
        // Awaited: a slow resolution delays the next tick, which then
        // coalesces more, instead of piling up work.
        match tokio::task::spawn_blocking(move || h.publish(changes, now)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "presence changes not published"),
            Err(e) => warn!(error = %e, "presence task failed"),
        }
    }
}
