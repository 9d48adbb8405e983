//! The sequencer's storage seam on JetStream: [`ClusterLog`], a
//! [`RoomLog`] whose commits write each room's part as one fenced chunk
//! through the room's [`RoomWriter`], and whose reads come from the stream.
//!
//! Every method blocks on the runtime's handle. The trait's contract keeps
//! its callers off the reactor: the sequencer's thread and its readers, and
//! `spawn_blocking` for sessions and catch-up.
//!
//! Two views of one store: the sequencer's ([`ClusterLog::sequencer`]),
//! where loading a room (`bounds`) starts following it and, on the owner,
//! takes it over; and everyone else's ([`ClusterLog::reader`]), where
//! `bounds` is a plain read of the stream, so that a history query never
//! makes a node a room's writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use confab_codec::{Event, EventRecord, Frame, RoomId, Seq};
use futures_util::future::join_all;
use rustc_hash::FxHashMap;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::typing::TypingLink;
use super::{ClusterError, Follower, JetStreamLog, LiveNodes, NodeId, RoomWriter};
use crate::sequencer::{SeqMsg, SeqTx};
use crate::storage::{
    Append, Durability, IdemKey, LogBounds, MemoryLog, MetaEntry, MetaWrite, Original, RoomLog,
    StorageError, StoredRecord,
};

/// A room's writer, locked by a commit while its chunk is in flight.
type Writer = Arc<tokio::sync::Mutex<RoomWriter>>;

/// What both views share.
struct Store {
    runtime: Handle,
    client: async_nats::Client,
    log: Arc<JetStreamLog>,
    me: NodeId,
    live: watch::Receiver<Arc<LiveNodes>>,
    /// The takeover window (`storage.dedup_window`).
    window: usize,
    writers: Mutex<FxHashMap<RoomId, Writer>>,
    /// Rooms followed: the token that stops their task, and the last
    /// sequence it handed to the sequencer.
    followed: Mutex<FxHashMap<RoomId, Followed>>,
    /// Where followed entries go (set once the sequencer's queue exists).
    sequencer: OnceLock<SeqTx>,
    /// Where followed rooms' typing from other nodes goes (set at start).
    typing: OnceLock<Arc<TypingLink>>,
    /// Metadata that is not a room's (last-seen times, push
    /// registrations): kept by this node only, in memory. Room metadata
    /// (managed rooms, markers) is refused in cluster mode for now.
    meta: MemoryLog,
    takeovers: AtomicU64,
    stop: CancellationToken,
}

/// A followed room's task, as the store sees it.
struct Followed {
    stop: CancellationToken,
    /// [`Follower::applied`], updated after every step.
    applied: Arc<AtomicU64>,
}

/// What a node writes and follows, for `confab admin cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoomsHeld {
    /// Per room, in room order, at most the `max_rooms` asked for: the
    /// writer's head (`None` if it does not write the room, or its append
    /// is in flight) and the last sequence handed to the fan-out (`None`
    /// if it does not follow the room).
    pub(crate) rooms: Vec<(RoomId, RoomHeld)>,
    /// Rooms with a writer, all of them.
    pub(crate) writing: usize,
    /// Rooms followed, all of them.
    pub(crate) following: usize,
}

/// One room of [`RoomsHeld`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RoomHeld {
    /// Whether this node has a writer for the room.
    pub(crate) writer: bool,
    /// The writer's head, when it could be read without waiting.
    pub(crate) head: Option<Seq>,
    /// The last sequence handed to the fan-out, if followed.
    pub(crate) applied: Option<Seq>,
}

/// A [`RoomLog`] on JetStream (see the module docs).
#[derive(Clone)]
pub(crate) struct ClusterLog {
    store: Arc<Store>,
    /// The sequencer's view: `bounds` follows and takes over.
    sequencer: bool,
}

impl std::fmt::Debug for ClusterLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLog")
            .field("node", &self.store.me)
            .field("sequencer", &self.sequencer)
            .finish_non_exhaustive()
    }
}

/// After a follower fails (NATS reconnecting), it is opened again after
/// this long.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);

impl ClusterLog {
    /// The readers' view of a new store. `window` is how many recent
    /// sequences a takeover reads for the originals of retries.
    pub(crate) fn reader(
        runtime: Handle,
        client: async_nats::Client,
        log: Arc<JetStreamLog>,
        me: NodeId,
        live: watch::Receiver<Arc<LiveNodes>>,
        window: usize,
        stop: CancellationToken,
    ) -> Self {
        Self {
            store: Arc::new(Store {
                runtime,
                client,
                log,
                me,
                live,
                window,
                writers: Mutex::new(FxHashMap::default()),
                followed: Mutex::new(FxHashMap::default()),
                sequencer: OnceLock::new(),
                typing: OnceLock::new(),
                meta: MemoryLog::new(),
                takeovers: AtomicU64::new(0),
                stop,
            }),
            sequencer: false,
        }
    }

    /// The sequencer's view of the same store.
    pub(crate) fn sequencer(&self) -> Self {
        Self {
            store: self.store.clone(),
            sequencer: true,
        }
    }

    /// Where followed rooms' entries go: the sequencer's queue.
    pub(crate) fn feed_into(&self, tx: SeqTx) {
        let _ = self.store.sequencer.set(tx);
    }

    /// Every room followed from now on also receives its typing from the
    /// other nodes, through `link`, for as long as it is followed.
    pub(crate) fn typing_from(&self, link: Arc<TypingLink>) {
        let _ = self.store.typing.set(link);
    }

    /// The rooms this node writes and follows, at most `max_rooms` of them
    /// (the first in room order), with the counts of all. Never waits: a
    /// writer whose append is in flight is listed without its head.
    pub(crate) fn rooms_held(&self, max_rooms: usize) -> RoomsHeld {
        let mut rooms: std::collections::BTreeMap<RoomId, RoomHeld> = Default::default();
        let (writing, following);
        {
            let writers = lock(&self.store.writers);
            writing = writers.len();
            for (room, w) in writers.iter() {
                let held = rooms.entry(room.clone()).or_default();
                held.writer = true;
                held.head = w.try_lock().ok().map(|w| w.head());
            }
        }
        {
            let followed = lock(&self.store.followed);
            following = followed.len();
            for (room, f) in followed.iter() {
                rooms.entry(room.clone()).or_default().applied =
                    Some(Seq(f.applied.load(Ordering::Relaxed)));
            }
        }
        RoomsHeld {
            rooms: rooms.into_iter().take(max_rooms).collect(),
            writing,
            following,
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.store.runtime.block_on(f)
    }
}

impl Store {
    fn owns(&self, room: &RoomId) -> bool {
        self.live.borrow().owner(room) == Some(&self.me)
    }

    fn writer_if_any(&self, room: &RoomId) -> Option<Writer> {
        lock(&self.writers).get(room).cloned()
    }

    /// The room's writer, taking the room over if this node has none.
    async fn writer(&self, room: &RoomId) -> Result<Writer, ClusterError> {
        if let Some(w) = self.writer_if_any(room) {
            return Ok(w);
        }
        let n = self.takeovers.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{}-{n}", self.me, rand::random::<u64>());
        let w = RoomWriter::take_over(self.log.clone(), room.clone(), token, self.window).await?;
        let w = Arc::new(tokio::sync::Mutex::new(w));
        // Two readers may take over at once: the first one in stays, the
        // other never appended and is dropped.
        Ok(lock(&self.writers).entry(room.clone()).or_insert(w).clone())
    }

    /// Forgets a writer that failed (fenced, or its outcome unsure): the
    /// next use of the room takes it over again from the stream.
    fn drop_writer(&self, room: &RoomId, w: &Writer) {
        let mut writers = lock(&self.writers);
        if writers.get(room).is_some_and(|x| Arc::ptr_eq(x, w)) {
            writers.remove(room);
        }
    }

    /// Starts following `room` (once): subscribes to its fan-out subject,
    /// then reads its head, and feeds what is stored after that head into
    /// the sequencer, which hands it to the fan-out. Its typing from other
    /// nodes is received for as long (`cluster::typing`).
    async fn follow(self: &Arc<Self>, room: &RoomId) -> Result<(), ClusterError> {
        if lock(&self.followed).contains_key(room) {
            return Ok(());
        }
        let Some(tx) = self.sequencer.get().cloned() else {
            return Ok(());
        };
        let stop = self.stop.child_token();
        // Typing first: the follower's head read below is a round trip on
        // the same connection, after which the server has both interests.
        if let Some(link) = self.typing.get() {
            // Typing is ephemeral: a room without it still delivers.
            if let Err(e) = link.follow(room, stop.clone()).await {
                warn!(%room, error = %e, "the room's typing from other nodes is not received");
            }
        }
        let follower = match Follower::start(&self.client, self.log.clone(), room.clone()).await {
            Ok(f) => f,
            Err(e) => {
                stop.cancel();
                return Err(e);
            }
        };
        let applied = Arc::new(AtomicU64::new(follower.applied().0));
        {
            let mut followed = lock(&self.followed);
            if followed.contains_key(room) {
                stop.cancel();
                return Ok(());
            }
            followed.insert(
                room.clone(),
                Followed {
                    stop: stop.clone(),
                    applied: applied.clone(),
                },
            );
        }
        let store = self.clone();
        self.runtime.spawn(run_follower(
            store,
            room.clone(),
            follower,
            tx,
            Progress { stop, applied },
        ));
        Ok(())
    }
}

/// A follower task's stop token and where it reports its progress.
struct Progress {
    stop: CancellationToken,
    applied: Arc<AtomicU64>,
}

/// Feeds one followed room into the sequencer until stopped; opens the
/// follower again (from what it handed on) when NATS fails.
async fn run_follower(
    store: Arc<Store>,
    room: RoomId,
    mut follower: Follower,
    tx: SeqTx,
    progress: Progress,
) {
    let Progress { stop, applied } = progress;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = follower.next() => next,
        };
        match next {
            Ok(records) => {
                applied.store(follower.applied().0, Ordering::Relaxed);
                let events = frames(&room, records);
                if !events.is_empty()
                    && tx
                        .send_now(SeqMsg::Followed {
                            room: room.clone(),
                            events,
                        })
                        .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                warn!(%room, error = %e, "following the room failed; following again");
                let applied = follower.applied();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(FOLLOW_RETRY) => {}
                    }
                    match Follower::resume(&store.client, store.log.clone(), room.clone(), applied)
                        .await
                    {
                        Ok(f) => {
                            follower = f;
                            break;
                        }
                        Err(e) => debug!(%room, error = %e, "following again failed"),
                    }
                }
            }
        }
    }
}

/// Stored records as `Event` frames, as the fan-out sends them. A record
/// that does not decode is left out (and logged): the subscriptions that
/// miss it read it from the log, which reports it.
fn frames(room: &RoomId, records: Vec<StoredRecord>) -> Vec<(Seq, Bytes)> {
    records
        .into_iter()
        .filter_map(|r| {
            let seq = r.seq;
            let event = match EventRecord::decode(r.bytes) {
                Ok(e) => e,
                Err(e) => {
                    warn!(%room, seq = seq.0, error = %e, "a followed record does not decode");
                    return None;
                }
            };
            match Frame::new(Event {
                room: room.clone(),
                event,
            })
            .to_bytes()
            {
                Ok(frame) => Some((seq, frame)),
                Err(e) => {
                    warn!(%room, seq = seq.0, error = %e, "a followed record does not encode");
                    None
                }
            }
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps, consistent between statements.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unsupported(what: &str) -> StorageError {
    StorageError::Engine(format!("{what} is not available in cluster mode yet"))
}

impl RoomLog for ClusterLog {
    /// Each room's entries as one fenced chunk (or several in order, past
    /// `max_chunk_bytes`) through its writer, every room at once: the
    /// group costs the slowest room's round trip. A room that fails is
    /// reported in [`StorageError::Rooms`] and its writer is dropped (the
    /// room is taken over again from the stream on its next use); the
    /// other rooms are stored. Metadata goes to this node's memory.
    fn commit(
        &self,
        batch: &[Append<'_>],
        meta: &[MetaWrite],
        durability: Durability,
    ) -> Result<(), StorageError> {
        let store = &self.store;
        // Each room's entries, in the group's order.
        let mut rooms: Vec<(&RoomId, Vec<Append<'_>>)> = Vec::new();
        let mut index: FxHashMap<&RoomId, usize> = FxHashMap::default();
        for a in batch {
            let i = *index.entry(a.room).or_insert_with(|| {
                rooms.push((a.room, Vec::new()));
                rooms.len() - 1
            });
            rooms[i].1.push(a.clone());
        }
        let results = self.block_on(join_all(rooms.iter().map(|(room, appends)| async move {
            let w = store.writer(room).await?;
            let mut writer = w.lock().await;
            // A publish the writer knows was stored is a retry the
            // sequencer judged new (its device's mark predates this
            // takeover; see `high_water`): refused, nothing written, and
            // the sequencer reads the mark again for the retry.
            if let Some(key) = appends
                .iter()
                .filter_map(|a| a.idem.map(|i| i.key))
                .find(|k| writer.original(k.sender, k.client_msg_id).is_some())
            {
                return Err(ClusterError::InvalidAppend(format!(
                    "client message id {} of this device is stored already; retry",
                    key.client_msg_id
                )));
            }
            let result = writer.append(appends).await;
            drop(writer);
            if result.is_err() {
                store.drop_writer(room, &w);
            }
            result.map(|_| ())
        })));
        let mut failed = Vec::new();
        let mut message = String::new();
        for ((room, _), r) in rooms.iter().zip(results) {
            if let Err(e) = r {
                if message.is_empty() {
                    message = e.to_string();
                }
                if e.is_fenced() {
                    warn!(%room, error = %e, "stepped down for the room");
                } else {
                    warn!(%room, error = %e, "append failed");
                }
                failed.push((*room).clone());
            }
        }
        if !meta.is_empty() {
            store.meta.commit(&[], meta, durability)?;
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(StorageError::Rooms { failed, message })
        }
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.store.meta.meta_get(key)
    }

    fn meta_scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<MetaEntry>, StorageError> {
        self.store.meta.meta_scan(prefix, after, limit)
    }

    /// The sequencer's view: follows the room, and on its owner (or where
    /// this node already writes it) the head is the writer's, after a
    /// takeover if needed. Elsewhere, and in the readers' view: the
    /// stream's bounds.
    fn bounds(&self, room: &RoomId) -> Result<LogBounds, StorageError> {
        let store = &self.store;
        self.block_on(async {
            if self.sequencer {
                store.follow(room).await?;
                let writes = store.writer_if_any(room).is_some() || store.owns(room);
                if writes {
                    let w = store.writer(room).await?;
                    let head = w.lock().await.head();
                    return Ok(LogBounds {
                        head,
                        first: Seq(1),
                    });
                }
            }
            store.log.bounds(room).await
        })
        .map_err(StorageError::from)
    }

    fn read_range(
        &self,
        room: &RoomId,
        from: Seq,
        to: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        self.block_on(
            self.store
                .log
                .read_range(room, from, to, max_count, max_bytes),
        )
        .map_err(StorageError::from)
    }

    fn read_before(
        &self,
        room: &RoomId,
        before: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        self.block_on(
            self.store
                .log
                .read_before(room, before, max_count, max_bytes),
        )
        .map_err(StorageError::from)
    }

    fn trim(
        &self,
        _room: &RoomId,
        _before: Seq,
        _forget: &[IdemKey<'_>],
        _durability: Durability,
    ) -> Result<(), StorageError> {
        Err(unsupported("retention"))
    }

    /// From the room's writer (taken over now if this node has none: the
    /// sequencer asks only for a room it is about to write): the takeover
    /// window and everything it stored since.
    fn original(&self, room: &RoomId, key: IdemKey<'_>) -> Result<Option<Original>, StorageError> {
        let store = &self.store;
        self.block_on(async {
            let w = store.writer(room).await?;
            let original = w.lock().await.original(key.sender, key.client_msg_id);
            Ok::<_, ClusterError>(original)
        })
        .map_err(StorageError::from)
    }

    /// The highest id of the sender among the originals of the rooms this
    /// node writes (their takeover windows and what it stored since). It
    /// can be too low: the sequencer caches it, and a room taken over
    /// later may know higher ids of the device. `commit` refuses a room
    /// whose group repeats an original its writer knows, and the sequencer
    /// then reads the mark again, so the device's retry is looked up.
    fn high_water(&self, sender: &str) -> Result<u64, StorageError> {
        let writers: Vec<Writer> = lock(&self.store.writers).values().cloned().collect();
        Ok(self.block_on(async {
            let mut mark = 0;
            for w in writers {
                mark = mark.max(w.lock().await.highest(sender).unwrap_or(0));
            }
            mark
        }))
    }

    fn log_rooms(
        &self,
        _after: Option<&RoomId>,
        _limit: usize,
    ) -> Result<Vec<RoomId>, StorageError> {
        Ok(Vec::new())
    }

    /// Forgets the room's writer (its originals window) and stops following
    /// it: the sequencer dropped it, so nothing on this node delivers or
    /// writes it until its next use, which takes it over or follows it
    /// afresh (`bounds`).
    fn room_dropped(&self, room: &RoomId) {
        if !self.sequencer {
            return;
        }
        lock(&self.store.writers).remove(room);
        if let Some(f) = lock(&self.store.followed).remove(room) {
            f.stop.cancel();
        }
    }

    /// Nothing to do: every acknowledged chunk is in JetStream.
    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
