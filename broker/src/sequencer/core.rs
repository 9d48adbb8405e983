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
//!   timestamp, however long ago and across restarts, while it is retained.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use confab_codec::{raw, ErrorCode, Event, EventRecord, Frame, RoomId, Seq, UserId};
use rustc_hash::FxHashMap;
use tracing::{debug, error, warn};

use super::dedup::{DedupKey, Idempotency, Lookup};
use super::{references, room_ops, PublishReq, SeqMsg};
use crate::config::{RoomsConfig, StorageConfig};
use crate::fanout::SubscribeCmd;
use crate::rooms::membership::RoomState;
use crate::rooms::{Room, RoomRegistry};
use crate::session::ConnCtx;
use crate::stats::Stats;
use crate::storage::{Append, IdemWrite, LogBounds, MetaWrite, Original, RoomLog, StorageError};

/// The sequencer's view of a room.
#[derive(Debug)]
pub(crate) struct SeqRoom {
    pub(super) room: Arc<Room>,
    pub(super) head: u64,
    pub(super) first: u64,
    /// Record and members, for managed rooms.
    pub(super) state: Option<RoomState>,
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
    pub(super) markers: FxHashMap<Vec<u8>, u64>,
    /// An embedding service's authorization hook decided access before
    /// requests got here: the membership tables are not consulted.
    pub(super) external_authz: bool,
    /// Publishes sequenced in the batch being built (edit targets).
    pub(super) pending: references::Pending,
    /// How many managed rooms a user is a member of, for the users seen
    /// since the last failed commit (see `user_rooms`).
    pub(super) joined: FxHashMap<UserId, usize>,
}

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
            log,
            registry,
            cfg,
        }
    }

    /// Leaves access decisions to an authorization hook that the sessions
    /// consult (see `crate::embed::authz`).
    pub(crate) fn external_authz(mut self, on: bool) -> Self {
        self.external_authz = on;
        self
    }

    /// Loads a room's bounds and state the first time the room is used.
    pub(super) fn room(&mut self, id: &RoomId) -> Result<&mut SeqRoom, StorageError> {
        if !self.rooms.contains_key(id) {
            let LogBounds { head, first } = self.log.bounds(id)?;
            let room = self.registry.get_or_create(id);
            let state = RoomState::load(self.log.as_ref(), id)?;
            self.rooms.insert(
                id.clone(),
                SeqRoom {
                    room,
                    head: head.0,
                    first: first.0,
                    state,
                },
            );
        }
        Ok(self
            .rooms
            .get_mut(id)
            .expect("the room was inserted just above"))
    }

    /// Handles one group of requests at time `now` (microseconds since the
    /// epoch): sequences them, commits the group in one atomic write, and
    /// returns what must follow, in order. If the commit fails, nothing of
    /// the group is acknowledged or fanned out, and the rooms it wrote to
    /// are loaded again from storage before their next use.
    pub(crate) fn step(&mut self, batch: &mut Vec<SeqMsg>, now: u64) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        // Rooms this group writes to, with their heads before it.
        let mut old_heads: Vec<(RoomId, u64)> = Vec::new();
        for msg in batch.drain(..) {
            match msg {
                SeqMsg::Publish(req) => {
                    outcomes.push(self.sequence(req, now, &mut old_heads));
                }
                SeqMsg::Subscribe(mut cmd) => {
                    self.stamp(&mut cmd);
                    outcomes.push(Outcome::Subscribe(cmd));
                }
                SeqMsg::Unsubscribe(subs) => outcomes.push(Outcome::Unsubscribe(subs)),
                SeqMsg::RoomOp(req) => self.room_op(req, now, &mut old_heads, &mut outcomes),
                SeqMsg::Receipt(req) => self.receipt(req, &mut outcomes),
                SeqMsg::Trim {
                    room,
                    before,
                    forget,
                } => self.trim(&room, before, &forget),
                SeqMsg::Stop => {}
            }
        }

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

        if let Err(e) = committed {
            // A full disk is logged by the storage once when it begins and
            // once when it ends, not for every refused group.
            if e.is_no_space() {
                debug!(error = %e, "group commit refused: storage full");
            } else {
                error!(error = %e, "group commit failed; rejecting the batch");
            }
            let (code, message) = refusal(&e);
            // The engine may have written some or all of the group before
            // it failed (a failed fsync): rooms the group wrote to are
            // loaded again from storage before their next use, so that no
            // sequence that may be stored is ever handed out twice. Managed
            // rooms it changed are reloaded the same way.
            for (room, _) in &old_heads {
                self.rooms.remove(room);
            }
            for room in std::mem::take(&mut self.touched) {
                self.rooms.remove(&room);
            }
            // Membership counts are reloaded too.
            self.joined.clear();
            // Entries that never committed are neither fanned out nor acted on.
            outcomes = outcomes
                .into_iter()
                .filter_map(|o| match o {
                    Outcome::Stored { req, dedup, .. } => {
                        if let Some(key) = dedup {
                            self.idem.forget(&key);
                        }
                        Some(Outcome::Rejected {
                            req,
                            code,
                            message: message.clone(),
                        })
                    }
                    // A retry of a publish staged in this same group: its
                    // original was never stored, so neither is the retry.
                    Outcome::Duplicate { req, original }
                        if old_heads
                            .iter()
                            .any(|(room, head)| *room == req.room && original.seq.0 > *head) =>
                    {
                        Some(Outcome::Rejected {
                            req,
                            code,
                            message: message.clone(),
                        })
                    }
                    Outcome::Subscribe(mut cmd) => {
                        self.stamp(&mut cmd);
                        Some(Outcome::Subscribe(cmd))
                    }
                    Outcome::RoomReply {
                        conn, request_id, ..
                    } => Some(Outcome::RoomReply {
                        conn,
                        request_id,
                        reply: Err((code, message.clone())),
                    }),
                    Outcome::Internal { .. } | Outcome::Evict { .. } | Outcome::Receipt { .. } => {
                        None
                    }
                    other => Some(other),
                })
                .collect();
        }
        self.touched.clear();
        self.markers.clear();
        self.pending.clear();
        self.idem.end_group();
        outcomes
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

    fn stamp(&mut self, cmd: &mut SubscribeCmd) {
        let user = cmd.user.clone();
        let system = cmd.system;
        for item in &mut cmd.items {
            match self.room(&item.sub.room.id) {
                Ok(r) => {
                    item.bounds = LogBounds {
                        head: Seq(r.head),
                        first: Seq(r.first.min(r.head + 1).max(1)),
                    };
                    let r = &self.rooms[&item.sub.room.id];
                    item.refused = self.access(r, &user, system).err().map(|(code, _)| code);
                }
                Err(e) => {
                    warn!(room = %item.sub.room.id, error = %e, "cannot load room bounds");
                    item.bounds = LogBounds {
                        head: Seq(0),
                        first: Seq(1),
                    };
                }
            }
        }
    }

    fn sequence(
        &mut self,
        req: PublishReq,
        now: u64,
        old_heads: &mut Vec<(RoomId, u64)>,
    ) -> Outcome {
        if let Err(e) = self.room(&req.room) {
            error!(room = %req.room, error = %e, "cannot load room");
            return Outcome::Rejected {
                req,
                code: ErrorCode::Internal,
                message: "storage failure; retry".into(),
            };
        }
        if let Err((code, message)) =
            self.access(&self.rooms[&req.room], &req.conn.user, req.conn.system)
        {
            return Outcome::Rejected { req, code, message };
        }
        let r = &self.rooms[&req.room];
        let view = references::RoomView {
            id: &req.room,
            first: r.first.max(1),
            head: r.head,
            state: r.state.as_ref(),
        };
        let checked = references::check(
            self.log.as_ref(),
            &self.pending,
            &view,
            &req.conn.user,
            req.kind,
            req.refers_to,
            req.thread,
        );
        match checked {
            Ok(Ok(())) => {}
            Ok(Err((code, message))) => return Outcome::Rejected { req, code, message },
            Err(e) => {
                error!(room = %req.room, error = %e, "cannot read a referenced entry");
                return Outcome::Rejected {
                    req,
                    code: ErrorCode::Internal,
                    message: "storage failure; retry".into(),
                };
            }
        }
        let room = r.room.clone();
        let dedup = (req.client_msg_id != 0).then(|| DedupKey {
            room: room.clone(),
            sender: req.conn.sender_key.clone(),
            client_msg_id: req.client_msg_id,
        });
        let first = view.first;
        let mut fresh = false;
        if let Some(key) = &dedup {
            match self.idem.lookup(self.log.as_ref(), key, first) {
                Ok(Lookup::Duplicate(original)) => return Outcome::Duplicate { req, original },
                Ok(Lookup::New { fresh: f }) => fresh = f,
                Err(e) => {
                    error!(room = %req.room, error = %e, "cannot read the idempotency index");
                    return Outcome::Rejected {
                        req,
                        code: ErrorCode::Internal,
                        message: "storage failure; retry".into(),
                    };
                }
            }
        }
        let r = self
            .rooms
            .get_mut(&req.room)
            .expect("the room was loaded above");
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
                return Outcome::Rejected {
                    req,
                    code: ErrorCode::InvalidRequest,
                    message: e.to_string(),
                };
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
            mark = self.idem.record(
                key.clone(),
                Original {
                    seq,
                    timestamp_us: now,
                },
            );
        }
        Outcome::Stored {
            req,
            room,
            seq,
            frame,
            dedup,
            fresh,
            mark,
        }
    }
}

/// The code and message of a request refused because its group's commit
/// failed: `StorageFull` for a full disk (nothing stored; retry later with
/// the same client message id), `Internal` otherwise.
fn refusal(e: &StorageError) -> (ErrorCode, String) {
    match e.wire_code() {
        ErrorCode::StorageFull => (
            ErrorCode::StorageFull,
            "storage full: not stored; retry later".into(),
        ),
        code => (code, "storage failure; retry".into()),
    }
}
