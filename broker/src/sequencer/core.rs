//! The sequencer's core: a state machine over the [`RoomLog`] trait, with no
//! thread, channel or socket of its own (see the module docs of
//! [`super`] and docs/architecture.md, "The sequencer core").
//!
//! Invariants, checked by the property tests in `core_tests.rs` after every
//! step, with commits that fail at random:
//! - an acknowledgement (`Stored` or `Duplicate`) names an entry that is in
//!   the log, committed;
//! - a room's log is 1..=head with no gap, and no sequence is ever reused;
//! - a retry of a stored publish gets the original's sequence and
//!   timestamp, however long ago and across restarts, while it is retained;
//! - requests of one room are handled in the order they came, also when
//!   some of them had to wait for a read.
//!
//! The core never reads storage itself: a request that needs something not
//! in memory is parked and a [`Need`] is asked for (see [`super::reads`]);
//! the driver hands the needs to reader threads after the step's commit
//! and gives the answers back with [`Core::supply`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use confab_codec::{raw, ErrorCode, Event, EventRecord, Frame, RoomId, Seq, UserId};
use rustc_hash::{FxHashMap, FxHashSet};
use tracing::{debug, error};

use super::dedup::{DedupKey, Idempotency, Lookup};
use super::reads::{Answer, Loaded, Need, Reads};
use super::{references, room_ops, PublishReq, SeqMsg};
use crate::config::{RoomsConfig, StorageConfig};
use crate::fanout::ConnCtx;
use crate::fanout::SubscribeCmd;
use crate::rooms::membership::RoomState;
use crate::rooms::{Room, RoomRegistry};
use crate::stats::Stats;
use crate::storage::meta::markers::MarkerKey;
use crate::storage::{Append, IdemWrite, LogBounds, MetaWrite, Original, RoomLog, StorageError};

/// The sequencer's view of a room.
#[derive(Debug)]
pub(crate) struct SeqRoom {
    pub(super) room: Arc<Room>,
    pub(super) head: u64,
    pub(super) first: u64,
    /// Record and members, for managed rooms.
    pub(super) state: Option<RoomState>,
    /// When a request last used it (microseconds since the epoch).
    pub(super) last_used: u64,
}

impl SeqRoom {
    /// Nothing was ever written to it and it was never created: it was
    /// loaded for a request about a room that does not exist.
    fn is_blank(&self) -> bool {
        self.head == 0 && self.first <= 1 && self.state.is_none()
    }
}

/// What must follow a step, in order: replies, fan-out and push.
#[derive(Debug)]
pub(crate) enum Outcome {
    Stored {
        req: PublishReq,
        room: Arc<Room>,
        seq: Seq,
        frame: Bytes,
        dedup: Option<DedupKey>,
        /// The id is above every id its device stored before.
        fresh: bool,
        /// Its device's high-water mark with it.
        mark: u64,
    },
    Duplicate {
        req: PublishReq,
        original: Original,
    },
    Rejected {
        req: PublishReq,
        code: ErrorCode,
        message: String,
    },
    Subscribe(SubscribeCmd),
    Unsubscribe(Vec<Arc<crate::fanout::Subscription>>),
    /// A marker moved (pushed to the room's devices after the commit).
    Receipt {
        room: Arc<Room>,
        entry: confab_codec::ReceiptEntry,
    },
    /// An entry of a failed commit that storage holds after all: fan it
    /// out (it is not written again).
    Recovered {
        room: Arc<Room>,
        seq: Seq,
        frame: Bytes,
    },
    /// A server-written log entry (membership change).
    Internal {
        room: Arc<Room>,
        seq: Seq,
        frame: Bytes,
        /// When the group was taken (for the latency histograms).
        received: Instant,
    },
    /// The reply to a room operation, sent after the commit.
    RoomReply {
        conn: Arc<ConnCtx>,
        request_id: u32,
        reply: Result<room_ops::Reply, (ErrorCode, String)>,
    },
    /// End a user's subscriptions to a room (after leave or removal).
    Evict {
        room: Arc<Room>,
        user: UserId,
    },
    /// Say how the commit of metadata writes went.
    Meta {
        done: tokio::sync::oneshot::Sender<Result<(), ErrorCode>>,
        result: Result<(), ErrorCode>,
    },
}

/// Why a request cannot be handled now.
#[derive(Debug)]
pub(super) enum Halt {
    /// It needs a read (asked for): park it.
    Wait,
    /// Refuse it with this code and message.
    Refuse(ErrorCode, String),
}

impl From<StorageError> for Halt {
    fn from(e: StorageError) -> Self {
        let (code, message) = storage_refusal(&e);
        Halt::Refuse(code, message)
    }
}

impl From<(ErrorCode, String)> for Halt {
    fn from((code, message): (ErrorCode, String)) -> Self {
        Halt::Refuse(code, message)
    }
}

/// How a storage failure is reported to the client: `StorageFull` for a
/// full disk (nothing stored; retry later with the same client message
/// id), `Internal` otherwise. A full disk is logged by the storage once
/// when it begins and once when it ends, not for every refusal.
pub(super) fn storage_refusal(e: &StorageError) -> (ErrorCode, String) {
    match e.wire_code() {
        ErrorCode::StorageFull => (
            ErrorCode::StorageFull,
            "storage full: not stored; retry later".into(),
        ),
        // Cluster mode: the room's writer was refused or failed (logged by
        // the storage, room by room).
        code if matches!(e, StorageError::Rooms { .. }) => (
            code,
            "not stored (the room's writer changed or failed); retry".into(),
        ),
        code => {
            error!(error = %e, "storage failure");
            (code, "storage failure; retry".into())
        }
    }
}

/// A request waiting for a read, or behind one that is.
#[derive(Debug)]
struct Parked {
    msg: SeqMsg,
    /// The rooms it touches: later requests for them wait behind it.
    rooms: Vec<RoomId>,
}

/// The sequencer's state machine: it numbers publishes, applies room
/// operations and receipts, writes each group in one atomic commit, and
/// says what must happen after it (the [`Outcome`]s), without doing any of
/// it: the driver acknowledges, fans out and offers push.
pub(crate) struct Core {
    pub(super) rooms: FxHashMap<RoomId, SeqRoom>,
    pub(super) idem: Idempotency,
    pub(super) log: Arc<dyn RoomLog>,
    pub(super) registry: Arc<RoomRegistry>,
    pub(super) cfg: StorageConfig,
    pub(super) rooms_cfg: RoomsConfig,
    pub(super) stats: Arc<Stats>,
    /// Metadata writes of the batch being built.
    pub(super) meta: Vec<MetaWrite>,
    /// Managed rooms whose state the batch changed (reloaded if it fails).
    pub(super) touched: Vec<RoomId>,
    /// Markers written by the batch being built, by key.
    pub(super) markers: FxHashMap<MarkerKey, u64>,
    /// An embedding service's authorization hook decided access before
    /// requests got here: the membership tables are not consulted.
    pub(super) external_authz: bool,
    /// Publishes sequenced in the batch being built (edit targets).
    pub(super) pending: references::Pending,
    /// How many managed rooms a user is a member of, for the users seen
    /// since the last failed commit (see `user_rooms`).
    pub(super) joined: FxHashMap<UserId, usize>,
    /// Reads asked for and answers come back.
    pub(super) reads: Reads,
    /// Requests waiting for a read or behind one, in arrival order.
    parked: VecDeque<Parked>,
    /// The time of the step being taken (microseconds since the epoch).
    now: u64,
}

/// Rooms that do not exist are dropped after this long unused (not at
/// once: a device that just subscribed to an empty room is about to be in
/// its subscriber list), in microseconds.
const BLANK_IDLE_US: u64 = 1_000_000;

/// Per-user room counts kept between evictions; more are dropped at once.
const USERS_KEPT: usize = 16_384;

impl Core {
    pub(crate) fn new(
        log: Arc<dyn RoomLog>,
        registry: Arc<RoomRegistry>,
        cfg: StorageConfig,
        rooms_cfg: RoomsConfig,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            stats,
            rooms_cfg,
            meta: Vec::new(),
            touched: Vec::new(),
            markers: FxHashMap::default(),
            external_authz: false,
            pending: references::Pending::default(),
            joined: FxHashMap::default(),
            rooms: FxHashMap::default(),
            idem: Idempotency::new(cfg.dedup_window),
            reads: Reads::default(),
            parked: VecDeque::new(),
            now: 0,
            log,
            registry,
            cfg,
        }
    }

    /// Leaves access decisions to an authorization hook that the sessions
    /// consult (see `crate::auth::authz`).
    pub(crate) fn external_authz(mut self, on: bool) -> Self {
        self.external_authz = on;
        self
    }

    /// A room's bounds and state, if in memory or just read; otherwise the
    /// read is asked for.
    pub(super) fn room(&mut self, id: &RoomId) -> Result<&mut SeqRoom, Halt> {
        if !self.rooms.contains_key(id) {
            match self.reads.take(Need::Room(id.clone())) {
                None => return Err(Halt::Wait),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Answer::Room(loaded))) => {
                    let room = self.registry.get_or_create(id);
                    self.rooms.insert(
                        id.clone(),
                        SeqRoom {
                            room,
                            head: loaded.bounds.head.0,
                            first: loaded.bounds.first.0,
                            state: loaded.state,
                            last_used: self.now,
                        },
                    );
                }
                Some(Ok(other)) => return Err(mismatch(&other)),
            }
        }
        let now = self.now;
        let room = self
            .rooms
            .get_mut(id)
            .ok_or_else(|| Halt::Refuse(ErrorCode::Internal, "room state unavailable".into()))?;
        room.last_used = now;
        Ok(room)
    }

    /// Drops from memory the rooms nobody follows that no request used for
    /// `idle_us`, and at once those that do not exist (loaded only to
    /// refuse a request), then the room registry's rooms that nothing
    /// holds any more. Their logs stay: a room dropped is read again on its
    /// next use. Runs between steps, when everything before is committed,
    /// so what is dropped is exactly what storage says. Returns how many
    /// rooms the sequencer dropped.
    pub(crate) fn evict_idle(&mut self, now: u64, idle_us: u64) -> usize {
        let before = self.rooms.len();
        let parked = &self.parked;
        let waits = |id: &RoomId| parked.iter().any(|p| p.rooms.contains(id));
        let mut dropped = Vec::new();
        self.rooms.retain(|id, r| {
            let unused = now.saturating_sub(r.last_used);
            let idle = unused >= idle_us || (r.is_blank() && unused >= BLANK_IDLE_US);
            let keep = !idle || !r.room.subscribers().is_empty() || waits(id);
            if !keep {
                dropped.push(id.clone());
            }
            keep
        });
        for id in &dropped {
            self.log.room_dropped(id);
        }
        if self.rooms.capacity() > 1024 && self.rooms.len() < self.rooms.capacity() / 4 {
            self.rooms.shrink_to_fit();
        }
        // The per-user room counts are a cache of the same kind: dropping
        // it is what a failed commit does.
        if self.joined.len() > USERS_KEPT {
            self.joined = FxHashMap::default();
        }
        self.registry.evict_unused();
        // What a burst of requests left behind in the queues' capacity.
        if self.parked.is_empty() {
            self.parked.shrink_to_fit();
            self.reads.shrink();
        }
        before - self.rooms.len()
    }

    /// Files the answer of a read asked for by an earlier step.
    pub(crate) fn supply(&mut self, loaded: Loaded) {
        self.reads.supply(loaded);
    }

    /// The reads asked for by the last step, to hand to the readers now
    /// that its commit is done.
    pub(crate) fn take_needs(&mut self) -> Vec<Need> {
        self.reads.take_wanted()
    }

    /// Whether no request waits (for a read or behind one).
    pub(crate) fn idle(&self) -> bool {
        self.parked.is_empty()
    }

    /// Requests parked.
    pub(crate) fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Handles one group of requests at time `now` (microseconds since the
    /// epoch): first the parked requests that can go on, then the new ones
    /// in order; sequences them, commits the group in one atomic write, and
    /// returns what must follow, in order. A request that needs a read is
    /// parked, and so is every later request for one of its rooms. If the
    /// commit fails, nothing of the group is acknowledged or fanned out, and
    /// the rooms it wrote to are loaded again before their next use.
    pub(crate) fn step(&mut self, batch: &mut Vec<SeqMsg>, now: u64) -> Vec<Outcome> {
        self.now = now;
        let mut outcomes = Vec::with_capacity(batch.len());
        // Rooms this group writes to, with their heads before it.
        let mut old_heads: Vec<(RoomId, u64)> = Vec::new();
        // Rooms of requests still parked: later requests for them wait.
        let mut blocked: FxHashSet<RoomId> = FxHashSet::default();
        for p in std::mem::take(&mut self.parked) {
            self.take_up(p, now, &mut blocked, &mut old_heads, &mut outcomes);
        }
        for msg in batch.drain(..) {
            match msg {
                SeqMsg::Stop => {}
                // The common case, without the bookkeeping of parking.
                SeqMsg::Publish(req) if blocked.is_empty() => {
                    match self.sequence(req, now, &mut old_heads) {
                        Sequenced::Done(outcome) => outcomes.push(outcome),
                        Sequenced::Wait(req) => {
                            let p = self.rooms_of(SeqMsg::Publish(req));
                            self.park(p, &mut blocked);
                        }
                    }
                }
                msg => {
                    let p = self.rooms_of(msg);
                    self.take_up(p, now, &mut blocked, &mut old_heads, &mut outcomes);
                }
            }
        }

        self.mark_inboxes(&old_heads);

        let appends: Vec<Append<'_>> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Stored {
                    room, seq, frame, ..
                }
                | Outcome::Internal {
                    room, seq, frame, ..
                } => Some(Append {
                    room: &room.id,
                    seq: *seq,
                    record: &frame[raw::event_record_range(&room.id, frame.len())],
                    idem: match o {
                        Outcome::Stored {
                            dedup, fresh, mark, ..
                        } => dedup.as_ref().map(|key| IdemWrite {
                            key: key.idem(),
                            fresh: *fresh,
                            mark: *mark,
                        }),
                        _ => None,
                    },
                    timestamp_us: now,
                }),
                _ => None,
            })
            .collect();
        let meta = std::mem::take(&mut self.meta);
        let committed = if appends.is_empty() && meta.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let r = self.log.commit(&appends, &meta, self.cfg.durability);
            if r.is_ok() {
                let hist = &self.stats.hist;
                hist.commit_seconds.record(started.elapsed().as_secs_f64());
                hist.commit_batch.record(appends.len() as f64);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .published
                    .fetch_add(appends.len() as u64, Ordering::Relaxed);
            }
            r
        };
        drop(appends);

        match committed {
            Err(StorageError::Rooms { failed, message }) => {
                let e = StorageError::Rooms { failed, message };
                outcomes = self.rooms_failed(&e, outcomes, &old_heads);
                self.stats.committed_us.store(now, Ordering::Release);
            }
            Err(e) => outcomes = self.commit_failed(&e, outcomes, &old_heads, true),
            Ok(()) => self.stats.committed_us.store(now, Ordering::Release),
        }
        self.touched.clear();
        self.markers.clear();
        self.pending.clear();
        self.idem.end_group();
        if self.parked.is_empty() {
            self.reads.clear_answers();
        }
        outcomes
    }

    /// The inbox epoch of the step being taken.
    pub(super) fn inbox_epoch(&self) -> u64 {
        self.now / self.rooms_cfg.inbox_epoch_ms.max(1).saturating_mul(1000)
    }

    /// The time of the step being taken (µs since the epoch).
    pub(super) fn now(&self) -> u64 {
        self.now
    }

    /// Marks the managed rooms this group writes to as changed for their
    /// members, once per room per inbox epoch (see
    /// [`crate::storage::meta::inbox`]), in the group's own commit.
    fn mark_inboxes(&mut self, written: &[(RoomId, u64)]) {
        let epoch = self.inbox_epoch();
        for (id, _) in written {
            let Some(st) = self.rooms.get_mut(id).and_then(|r| r.state.as_mut()) else {
                continue;
            };
            if st.inbox_epoch >= epoch {
                continue;
            }
            let old = st.inbox_epoch;
            st.inbox_epoch = epoch;
            for user in st.members.keys() {
                if old != 0 {
                    self.meta
                        .push(crate::storage::meta::inbox::delete(user, old, id));
                }
                self.meta
                    .push(crate::storage::meta::inbox::put(user, epoch, id, self.now));
            }
            self.meta
                .push(crate::storage::meta::inbox::put_room_epoch(id, epoch));
            if !self.touched.contains(id) {
                self.touched.push(id.clone());
            }
        }
    }

    /// After a failed commit: nothing of the group is acknowledged, fanned
    /// out or acted on; subscriptions are stamped again with the bounds
    /// read back from storage (parked if that needs a read).
    ///
    /// `recover`: whether what storage may hold of the group is this
    /// group's (one engine, one writer). Cluster mode passes false for a
    /// room another writer may have written: the room's stored entries
    /// reach the fan-out from the shared log instead.
    pub(super) fn commit_failed(
        &mut self,
        e: &StorageError,
        outcomes: Vec<Outcome>,
        old_heads: &[(RoomId, u64)],
        recover: bool,
    ) -> Vec<Outcome> {
        if e.is_no_space() {
            debug!(error = %e, "group commit refused: storage full");
        } else if matches!(e, StorageError::Rooms { .. }) {
            debug!(error = %e, "rooms of the group refused; rejecting their requests");
        } else {
            error!(error = %e, "group commit failed; rejecting the batch");
        }
        let (code, message) = storage_refusal(e);
        // The engine may have written some or all of the group before it
        // failed (a failed fsync): rooms the group wrote to are loaded
        // again from storage before their next use, so that no sequence
        // that may be stored is ever handed out twice. Managed rooms it
        // changed are reloaded the same way.
        for (room, _) in old_heads {
            self.rooms.remove(room);
        }
        // What storage holds of the group must still reach the devices
        // (a retry of it is acknowledged as a duplicate): each room waits
        // for its read, then fans out the entries up to the head it finds,
        // before anything newer of the room (found by the simulation).
        let mut recovered: Vec<Parked> = Vec::new();
        for (id, _) in old_heads.iter().filter(|_| recover) {
            let mut events = Vec::new();
            let mut arc = None;
            for o in &outcomes {
                if let Outcome::Stored {
                    room, seq, frame, ..
                }
                | Outcome::Internal {
                    room, seq, frame, ..
                } = o
                {
                    if room.id == *id {
                        events.push((*seq, frame.clone()));
                        arc = Some(room.clone());
                    }
                }
            }
            if let Some(room) = arc {
                self.reads.take(Need::Room(id.clone()));
                recovered.push(Parked {
                    msg: SeqMsg::Recover { room, events },
                    rooms: vec![id.clone()],
                });
            }
        }
        for room in std::mem::take(&mut self.touched) {
            self.rooms.remove(&room);
        }
        // Membership counts are read again too.
        self.joined.clear();
        self.reads.commit_failed();
        // Subscriptions (and unsubscriptions behind them) that must wait
        // for a room to be read again; they go first in the queue: nothing
        // parked before them shares their rooms.
        let mut again: Vec<Parked> = Vec::new();
        let mut blocked: FxHashSet<RoomId> = recovered
            .iter()
            .flat_map(|p| p.rooms.iter().cloned())
            .collect();
        let mut kept = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            match o {
                Outcome::Stored { req, dedup, .. } => {
                    if let Some(key) = dedup {
                        self.idem.forget(&key);
                    }
                    kept.push(Outcome::Rejected {
                        req,
                        code,
                        message: message.clone(),
                    });
                }
                // A retry of a publish staged in this same group: its
                // original was never stored, so neither is the retry.
                Outcome::Duplicate { req, original }
                    if old_heads
                        .iter()
                        .any(|(room, head)| *room == req.room && original.seq.0 > *head) =>
                {
                    kept.push(Outcome::Rejected {
                        req,
                        code,
                        message: message.clone(),
                    });
                }
                Outcome::Subscribe(cmd) => {
                    let p = self.rooms_of(SeqMsg::Subscribe(cmd));
                    let waits = p.rooms.iter().any(|r| blocked.contains(r));
                    let SeqMsg::Subscribe(mut cmd) = p.msg else {
                        unreachable!("rooms_of keeps the request")
                    };
                    if !waits && self.stamp(&mut cmd) {
                        kept.push(Outcome::Subscribe(cmd));
                    } else {
                        blocked.extend(p.rooms.iter().cloned());
                        again.push(Parked {
                            msg: SeqMsg::Subscribe(cmd),
                            rooms: p.rooms,
                        });
                    }
                }
                Outcome::Unsubscribe(subs) => {
                    if subs.iter().any(|s| blocked.contains(&s.room.id)) {
                        again.push(self.rooms_of(SeqMsg::Unsubscribe(subs)));
                    } else {
                        kept.push(Outcome::Unsubscribe(subs));
                    }
                }
                Outcome::RoomReply {
                    conn, request_id, ..
                } => kept.push(Outcome::RoomReply {
                    conn,
                    request_id,
                    reply: Err((code, message.clone())),
                }),
                Outcome::Meta { done, .. } => kept.push(Outcome::Meta {
                    done,
                    result: Err(code),
                }),
                Outcome::Internal { .. } | Outcome::Evict { .. } | Outcome::Receipt { .. } => {}
                other => kept.push(other),
            }
        }
        for p in recovered.into_iter().chain(again).rev() {
            self.parked.push_front(p);
        }
        kept
    }

    /// Handles a request unless an earlier one waits in one of its rooms;
    /// parks it if it waits or must wait for a read.
    fn take_up(
        &mut self,
        p: Parked,
        now: u64,
        blocked: &mut FxHashSet<RoomId>,
        old_heads: &mut Vec<(RoomId, u64)>,
        outcomes: &mut Vec<Outcome>,
    ) {
        if p.rooms.iter().any(|r| blocked.contains(r)) {
            self.park(p, blocked);
            return;
        }
        let Parked { msg, rooms } = p;
        if let Some(msg) = self.handle(msg, now, old_heads, outcomes) {
            self.park(Parked { msg, rooms }, blocked);
        }
    }

    /// Parks a request behind the reads it (or a request before it) waits for.
    fn park(&mut self, p: Parked, blocked: &mut FxHashSet<RoomId>) {
        blocked.extend(p.rooms.iter().cloned());
        self.parked.push_back(p);
    }

    /// Pairs a request with the rooms it touches. A group room created
    /// without an id gets its generated id here, once, so that it keeps it
    /// while it waits.
    fn rooms_of(&self, mut msg: SeqMsg) -> Parked {
        let rooms = match &mut msg {
            SeqMsg::Publish(req) => vec![req.room.clone()],
            SeqMsg::Subscribe(cmd) => cmd.items.iter().map(|i| i.sub.room.id.clone()).collect(),
            SeqMsg::Unsubscribe(subs) => subs.iter().map(|s| s.room.id.clone()).collect(),
            SeqMsg::RoomOp(req) => room_ops::room_of(&req.conn, &mut req.op)
                .into_iter()
                .collect(),
            SeqMsg::Receipt(req) => vec![req.receipt.room.clone()],
            SeqMsg::Trim { room, .. } => vec![room.clone()],
            // Keys no request reads: nothing to keep in order with.
            SeqMsg::Recover { room, .. } => vec![room.id.clone()],
            SeqMsg::Followed { room, .. } => vec![room.clone()],
            SeqMsg::Meta(_) | SeqMsg::Stop => Vec::new(),
        };
        Parked { msg, rooms }
    }

    /// Handles one request; gives it back if it must wait for a read.
    fn handle(
        &mut self,
        msg: SeqMsg,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
        outcomes: &mut Vec<Outcome>,
    ) -> Option<SeqMsg> {
        match msg {
            SeqMsg::Publish(req) => match self.sequence(req, now, old_heads) {
                Sequenced::Done(outcome) => outcomes.push(outcome),
                Sequenced::Wait(req) => return Some(SeqMsg::Publish(req)),
            },
            SeqMsg::Subscribe(mut cmd) => {
                if !self.stamp(&mut cmd) {
                    return Some(SeqMsg::Subscribe(cmd));
                }
                outcomes.push(Outcome::Subscribe(cmd));
            }
            SeqMsg::Unsubscribe(subs) => outcomes.push(Outcome::Unsubscribe(subs)),
            SeqMsg::RoomOp(req) => {
                return self
                    .room_op(req, now, old_heads, outcomes)
                    .map(SeqMsg::RoomOp)
            }
            SeqMsg::Receipt(req) => return self.receipt(req, outcomes).map(SeqMsg::Receipt),
            SeqMsg::Trim {
                room,
                before,
                forget,
            } => self.trim(&room, before, &forget),
            SeqMsg::Meta(req) => {
                self.meta.extend(req.writes);
                outcomes.push(Outcome::Meta {
                    done: req.done,
                    result: Ok(()),
                });
            }
            SeqMsg::Recover { room, events } => {
                let head = match self.room(&room.id) {
                    Ok(r) => r.head,
                    Err(Halt::Wait) => return Some(SeqMsg::Recover { room, events }),
                    // The read failed: read again, the room waits.
                    Err(Halt::Refuse(..)) => {
                        self.reads.take(Need::Room(room.id.clone()));
                        return Some(SeqMsg::Recover { room, events });
                    }
                };
                for (seq, frame) in events {
                    if seq.0 <= head {
                        outcomes.push(Outcome::Recovered {
                            room: room.clone(),
                            seq,
                            frame,
                        });
                    }
                }
            }
            SeqMsg::Followed { room, events } => {
                return self
                    .followed(room, events, outcomes)
                    .map(|(room, events)| SeqMsg::Followed { room, events });
            }
            SeqMsg::Stop => {}
        }
        None
    }

    /// Whether `user` may read and write `room` (loaded): members of managed
    /// rooms; anyone in unmanaged rooms when `rooms.auto_create` is on.
    /// The system principal, and everyone when an authorization hook
    /// decides instead, may.
    pub(super) fn access(
        &self,
        room: &SeqRoom,
        user: &UserId,
        system: bool,
    ) -> Result<(), (ErrorCode, String)> {
        if system || self.external_authz {
            return Ok(());
        }
        match &room.state {
            Some(st) if st.is_member(user) => Ok(()),
            Some(_) => Err((
                ErrorCode::NotMember,
                format!("{user} is not a member of {}", room.room.id),
            )),
            None if self.rooms_cfg.auto_create => Ok(()),
            None => Err((ErrorCode::NoSuchRoom, format!("no room {}", room.room.id))),
        }
    }

    /// Stamps each room of a subscription with its bounds at this point of
    /// the commit order and whether the user may follow it. Returns false,
    /// stamping nothing, if a room must be read first.
    fn stamp(&mut self, cmd: &mut SubscribeCmd) -> bool {
        let mut waits = false;
        let mut failed = Vec::new();
        for (i, item) in cmd.items.iter().enumerate() {
            match self.room(&item.sub.room.id) {
                Ok(_) => {}
                Err(Halt::Wait) => waits = true,
                Err(Halt::Refuse(code, _)) => failed.push((i, code)),
            }
        }
        if waits {
            return false;
        }
        let user = cmd.user.clone();
        let system = cmd.system;
        for (i, item) in cmd.items.iter_mut().enumerate() {
            if let Some((_, code)) = failed.iter().find(|(j, _)| *j == i) {
                item.bounds = LogBounds {
                    head: Seq(0),
                    first: Seq(1),
                };
                item.refused = Some(*code);
                continue;
            }
            let Some(r) = self.rooms.get(&item.sub.room.id) else {
                continue;
            };
            item.bounds = LogBounds {
                head: Seq(r.head),
                first: Seq(r.first.min(r.head + 1).max(1)),
            };
            item.refused = self.access(r, &user, system).err().map(|(code, _)| code);
        }
        true
    }

    /// Sequences a publish, or refuses it; gives it back if it must wait
    /// for a read.
    fn sequence(
        &mut self,
        req: PublishReq,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
    ) -> Sequenced {
        let (dedup, fresh) = match self.admit(&req) {
            Ok(Admit::New { dedup, fresh }) => (dedup, fresh),
            Ok(Admit::Duplicate(original)) => {
                return Sequenced::Done(Outcome::Duplicate { req, original })
            }
            Err(Halt::Wait) => return Sequenced::Wait(req),
            Err(Halt::Refuse(code, message)) => {
                return Sequenced::Done(Outcome::Rejected { req, code, message })
            }
        };
        let Some(r) = self.rooms.get_mut(&req.room) else {
            return Sequenced::Done(Outcome::Rejected {
                req,
                code: ErrorCode::Internal,
                message: "room state unavailable".into(),
            });
        };
        let room = r.room.clone();
        if !old_heads.iter().any(|(id, _)| *id == req.room) {
            old_heads.push((req.room.clone(), r.head));
        }
        r.head += 1;
        let seq = Seq(r.head);
        let record = EventRecord {
            seq,
            timestamp_us: now,
            sender: req.conn.user.clone(),
            device: req.conn.device.clone(),
            client_msg_id: req.client_msg_id,
            kind: req.kind,
            refers_to: req.refers_to,
            thread: req.thread,
            payload: req.payload.clone(),
        };
        let frame = match Frame::new(Event {
            room: req.room.clone(),
            event: record,
        })
        .to_bytes()
        {
            Ok(f) => f,
            Err(e) => {
                r.head -= 1;
                return Sequenced::Done(Outcome::Rejected {
                    req,
                    code: ErrorCode::InvalidRequest,
                    message: e.to_string(),
                });
            }
        };
        self.pending.insert(
            (req.room.clone(), seq.0),
            references::Target {
                sender: req.conn.user.clone(),
                kind: req.kind,
            },
        );
        let mut mark = 0;
        if let Some(key) = &dedup {
            self.reads
                .publish_staged(&key.room.id, &key.sender, key.client_msg_id);
            mark = self.idem.record(
                key.clone(),
                Original {
                    seq,
                    timestamp_us: now,
                },
            );
        }
        Sequenced::Done(Outcome::Stored {
            req,
            room,
            seq,
            frame,
            dedup,
            fresh,
            mark,
        })
    }

    /// Everything a publish must pass before it gets a sequence, changing
    /// nothing: the room (loaded), access, its references, and whether it
    /// retries a stored publish.
    fn admit(&mut self, req: &PublishReq) -> Result<Admit, Halt> {
        self.room(&req.room)?;
        let r = &self.rooms[&req.room];
        self.access(r, &req.conn.user, req.conn.system)?;
        let first = r.first.max(1);
        let room = r.room.clone();
        references::check(self, req)?;
        let Some(key) = (req.client_msg_id != 0).then(|| DedupKey {
            room,
            sender: req.conn.sender_key.clone(),
            client_msg_id: req.client_msg_id,
        }) else {
            return Ok(Admit::New {
                dedup: None,
                fresh: false,
            });
        };
        match self.idem.lookup(&mut self.reads, &key, first)? {
            Lookup::Duplicate(original) => Ok(Admit::Duplicate(original)),
            Lookup::New { fresh } => Ok(Admit::New {
                dedup: Some(key),
                fresh,
            }),
        }
    }
}

/// What became of a publish.
#[derive(Debug)]
enum Sequenced {
    /// Stored, a duplicate, or refused.
    Done(Outcome),
    /// It must wait for a read: given back to be parked.
    Wait(PublishReq),
}

/// What [`Core::admit`] decided.
enum Admit {
    New {
        dedup: Option<DedupKey>,
        fresh: bool,
    },
    Duplicate(Original),
}

/// An answer of the wrong kind for its need (a bug, refused as Internal).
pub(super) fn mismatch(answer: &Answer) -> Halt {
    error!(?answer, "a read answered with the wrong kind");
    Halt::Refuse(ErrorCode::Internal, "internal error".into())
}
