//! The sequencer: one dedicated thread that numbers every publish and
//! writes them to the log by group commit.
//!
//! Sessions send requests over a channel. The thread takes whatever has
//! queued up (up to `storage.max_batch`), assigns each publish the next
//! sequence of its room, writes the whole group in one atomic batch, and
//! only then acknowledges the publishers and hands the events to the
//! fan-out. A single writer makes sequences gap-free without any lock; the
//! batch size grows by itself with the load, which is what keeps `fsync`
//! mode fast (one fsync per group, not per message).

mod dedup;
mod hooks;
mod references;
mod room_ops;
mod user_rooms;

pub(crate) use room_ops::{ReceiptReq, RoomOp, RoomOpReq};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use confab_codec::{
    raw, ErrorCode, ErrorFrame, Event, EventRecord, Frame, MessageKind, PublishAck, RoomId, Seq,
    UserId,
};
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxHashMap;
use tracing::{error, warn};

use self::dedup::{Dedup, DedupKey, Original};
use crate::config::{RoomsConfig, StorageConfig};
use crate::fanout::{Committed, FanoutMsg, SubscribeCmd};
use crate::push::PushHub;
use crate::rooms::membership::RoomState;
use crate::rooms::{Room, RoomRegistry};
use crate::session::ConnCtx;
use crate::stats::Stats;
use crate::storage::{Append, LogBounds, MetaWrite, RoomLog, StorageError};

/// A publish on its way to the sequencer.
#[derive(Debug)]
pub(crate) struct PublishReq {
    pub(crate) conn: Arc<ConnCtx>,
    pub(crate) request_id: u32,
    pub(crate) no_reply: bool,
    pub(crate) room: RoomId,
    pub(crate) client_msg_id: u64,
    pub(crate) kind: MessageKind,
    pub(crate) refers_to: Option<Seq>,
    pub(crate) thread: Option<Seq>,
    pub(crate) payload: Bytes,
    /// When the session received it (for the latency histograms).
    pub(crate) received: Instant,
}

/// Requests to the sequencer.
#[derive(Debug)]
pub(crate) enum SeqMsg {
    Publish(PublishReq),
    /// Stamped with each room's bounds at its place in the commit order.
    Subscribe(SubscribeCmd),
    /// Ends subscriptions; forwarded to the fan-out in order.
    Unsubscribe(Vec<Arc<crate::fanout::Subscription>>),
    /// Creates a room or changes its membership or metadata.
    RoomOp(RoomOpReq),
    /// Moves a delivered or read marker.
    Receipt(ReceiptReq),
    /// Retention: delete the room's entries below `before` and move its
    /// `first` bound there.
    Trim {
        /// The room.
        room: RoomId,
        /// The oldest sequence kept (never above the head).
        before: Seq,
    },
    /// Commit what came before, flush, stop the fan-out, and exit.
    Stop,
}

/// The sequencer's view of a room.
#[derive(Debug)]
struct SeqRoom {
    room: Arc<Room>,
    head: u64,
    first: u64,
    /// Record and members, for managed rooms.
    state: Option<RoomState>,
}

enum Outcome {
    Stored {
        req: PublishReq,
        room: Arc<Room>,
        seq: Seq,
        frame: Bytes,
        dedup: Option<DedupKey>,
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

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) struct Sequencer {
    rooms: FxHashMap<RoomId, SeqRoom>,
    dedup: Dedup,
    log: Arc<dyn RoomLog>,
    registry: Arc<RoomRegistry>,
    cfg: StorageConfig,
    rooms_cfg: RoomsConfig,
    fanout: Sender<FanoutMsg>,
    stats: Arc<Stats>,
    /// Metadata writes of the batch being built.
    meta: Vec<MetaWrite>,
    /// Managed rooms whose state the batch changed (reloaded if it fails).
    touched: Vec<RoomId>,
    /// Markers written by the batch being built, by key.
    markers: FxHashMap<Vec<u8>, u64>,
    /// An embedding service's authorization hook decided access before
    /// requests got here: the membership tables are not consulted.
    external_authz: bool,
    /// Publishes sequenced in the batch being built (edit targets).
    pending: references::Pending,
    /// Offline push, when on.
    push: Option<Arc<PushHub>>,
    /// How many managed rooms a user is a member of, for the users seen
    /// since the last failed commit (see `user_rooms`).
    joined: FxHashMap<UserId, usize>,
}

impl Sequencer {
    pub(crate) fn new(
        log: Arc<dyn RoomLog>,
        registry: Arc<RoomRegistry>,
        cfg: StorageConfig,
        rooms_cfg: RoomsConfig,
        fanout: Sender<FanoutMsg>,
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
            push: None,
            joined: FxHashMap::default(),
            rooms: FxHashMap::default(),
            dedup: Dedup::new(cfg.dedup_window),
            log,
            registry,
            cfg,
            fanout,
        }
    }

    /// Leaves access decisions to an authorization hook that the sessions
    /// consult (see `crate::embed::authz`).
    pub(crate) fn external_authz(mut self, on: bool) -> Self {
        self.external_authz = on;
        self
    }

    /// Hands committed messages of managed rooms to offline push.
    pub(crate) fn with_push(mut self, push: Option<Arc<PushHub>>) -> Self {
        self.push = push;
        self
    }

    /// Runs until every sender is gone, then returns (after the last batch
    /// is committed and handed on).
    pub(crate) fn run(mut self, rx: Receiver<SeqMsg>) {
        let max = self.cfg.max_batch;
        let mut batch = Vec::with_capacity(max);
        let mut stop = false;
        while !stop {
            let Ok(first) = rx.recv() else { break };
            let mut next = Some(first);
            while let Some(msg) = next {
                if matches!(msg, SeqMsg::Stop) {
                    stop = true;
                    break;
                }
                batch.push(msg);
                next = if batch.len() < max {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.process(&mut batch);
        }
        if let Err(e) = self.log.flush() {
            error!(error = %e, "final flush failed");
        }
        let _ = self.fanout.send(FanoutMsg::Stop);
    }

    /// Loads a room's bounds (and its recent publishes, for deduplication)
    /// the first time the room is used.
    fn room(&mut self, id: &RoomId) -> Result<&mut SeqRoom, StorageError> {
        if !self.rooms.contains_key(id) {
            let LogBounds { head, first } = self.log.bounds(id)?;
            let room = self.registry.get_or_create(id);
            if head.0 > 0 && self.cfg.dedup_recovery_scan > 0 {
                let recent = self.log.read_before(
                    id,
                    head.next(),
                    self.cfg.dedup_recovery_scan,
                    usize::MAX,
                )?;
                for rec in recent {
                    let Ok(ev) = EventRecord::decode(rec.bytes) else {
                        return Err(StorageError::Corrupt {
                            room: id.to_string(),
                            seq: rec.seq.0,
                        });
                    };
                    if ev.client_msg_id != 0 {
                        self.dedup.insert(
                            DedupKey {
                                room: room.clone(),
                                sender: sender_key(ev.sender.as_str(), ev.device.as_str()),
                                client_msg_id: ev.client_msg_id,
                            },
                            Original {
                                seq: ev.seq,
                                timestamp_us: ev.timestamp_us,
                            },
                        );
                    }
                }
            }
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

    fn process(&mut self, batch: &mut Vec<SeqMsg>) {
        let now = now_us();
        let batch_started = Instant::now();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Heads before this batch, to roll back if the commit fails.
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
                SeqMsg::Trim { room, before } => self.trim(&room, before),
                SeqMsg::Stop => {}
            }
        }

        let appends: Vec<Append<'_>> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Stored {
                    room, seq, frame, ..
                }
                | Outcome::Internal { room, seq, frame } => Some(Append {
                    room: &room.id,
                    seq: *seq,
                    record: &frame[raw::event_record_range(&room.id, frame.len())],
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
            error!(error = %e, "group commit failed; rejecting the batch");
            for (room, head) in old_heads {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.head = head;
                }
            }
            // Managed rooms changed by the batch are reloaded from storage,
            // which still holds their state from before it.
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
                            self.dedup.remove(&key);
                        }
                        Some(Outcome::Rejected {
                            req,
                            code: ErrorCode::Internal,
                            message: "storage failure; retry".into(),
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
                        reply: Err((ErrorCode::Internal, "storage failure; retry".into())),
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
        self.deliver(outcomes, now, batch_started);
    }

    /// Whether `user` may read and write `room` (loaded): members of managed
    /// rooms; anyone in unmanaged rooms when `rooms.auto_create` is on.
    /// The system principal, and everyone when an authorization hook
    /// decides instead, may.
    fn access(
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
        if let Some(original) = dedup.as_ref().and_then(|k| self.dedup.get(k)) {
            return Outcome::Duplicate { req, original };
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
        if let Some(key) = &dedup {
            self.dedup.insert(
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
        }
    }

    /// Acknowledges publishers and hands events and subscriptions to the
    /// fan-out, keeping their relative order.
    fn deliver(&mut self, outcomes: Vec<Outcome>, now: u64, batch_started: Instant) {
        let mut committed = Vec::new();
        let mut receipts: Vec<(Arc<Room>, Vec<confab_codec::ReceiptEntry>)> = Vec::new();
        let mut replies = Replies::default();
        for outcome in outcomes {
            match outcome {
                Outcome::Stored {
                    req,
                    room,
                    seq,
                    frame,
                    ..
                } => {
                    replies.ack(&req, seq, now, false);
                    self.stats
                        .hist
                        .publish_ack
                        .record(req.received.elapsed().as_secs_f64());
                    self.offer_push(&req, seq);
                    committed.push(Committed {
                        room,
                        seq,
                        frame,
                        received: req.received,
                    });
                }
                Outcome::Duplicate { req, original } => {
                    replies.ack(&req, original.seq, original.timestamp_us, true);
                }
                Outcome::Rejected { req, code, message } => {
                    let frame = Frame::request(
                        req.request_id,
                        ErrorFrame {
                            code,
                            retry_after_ms: 0,
                            message,
                        },
                    );
                    replies.push(&req.conn, &frame);
                }
                Outcome::Subscribe(cmd) => {
                    if !committed.is_empty() {
                        let _ = self
                            .fanout
                            .send(FanoutMsg::Committed(std::mem::take(&mut committed)));
                    }
                    let _ = self.fanout.send(FanoutMsg::Subscribe(cmd));
                }
                Outcome::Internal { room, seq, frame } => {
                    committed.push(Committed {
                        room,
                        seq,
                        frame,
                        received: batch_started,
                    });
                }
                Outcome::RoomReply {
                    conn,
                    request_id,
                    reply,
                } => {
                    let frame = self.room_reply(request_id, reply);
                    replies.reply(&conn, &frame);
                }
                Outcome::Evict { room, user } => {
                    if !committed.is_empty() {
                        let _ = self
                            .fanout
                            .send(FanoutMsg::Committed(std::mem::take(&mut committed)));
                    }
                    let _ = self.fanout.send(FanoutMsg::Evict { room, user });
                }
                Outcome::Receipt { room, entry } => {
                    match receipts.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &room)) {
                        Some((_, entries)) => entries.push(entry),
                        None => receipts.push((room, vec![entry])),
                    }
                }
                Outcome::Unsubscribe(subs) => {
                    if !committed.is_empty() {
                        let _ = self
                            .fanout
                            .send(FanoutMsg::Committed(std::mem::take(&mut committed)));
                    }
                    let _ = self.fanout.send(FanoutMsg::Unsubscribe(subs));
                }
            }
        }
        replies.flush();
        if !committed.is_empty() {
            let _ = self.fanout.send(FanoutMsg::Committed(committed));
        }
        // Markers of one commit reach each room's devices as one event.
        for (room, entries) in receipts {
            let frame = Frame::new(confab_codec::ReceiptEvent {
                room: room.id.clone(),
                entries,
            });
            if let Ok(frame) = frame.to_bytes() {
                let _ = self.fanout.send(FanoutMsg::Ephemeral { room, frame });
            }
        }
    }
}

/// Replies of one group commit, gathered per connection so that each
/// connection gets one buffer and one wake-up, not one per publish.
#[derive(Default)]
struct Replies {
    conns: Vec<(Arc<ConnCtx>, BytesMut, usize)>,
}

impl Replies {
    fn slot(&mut self, conn: &Arc<ConnCtx>) -> &mut (Arc<ConnCtx>, BytesMut, usize) {
        // Publishes of one connection usually arrive together: look at the
        // most recent slot first.
        let idx = match self
            .conns
            .iter()
            .rposition(|(c, _, _)| Arc::ptr_eq(c, conn))
        {
            Some(i) => i,
            None => {
                self.conns.push((conn.clone(), BytesMut::new(), 0));
                self.conns.len() - 1
            }
        };
        &mut self.conns[idx]
    }

    /// Queues a reply frame and releases the publish's permit.
    fn push(&mut self, conn: &Arc<ConnCtx>, frame: &Frame) {
        self.reply(conn, frame);
        self.slot(conn).2 += 1;
    }

    /// Queues a reply frame that holds no publish permit.
    fn reply(&mut self, conn: &Arc<ConnCtx>, frame: &Frame) {
        let slot = self.slot(conn);
        if let Err(e) = frame.encode(&mut slot.1) {
            warn!(error = %e, "cannot encode a reply");
        }
    }

    fn ack(&mut self, req: &PublishReq, seq: Seq, timestamp_us: u64, duplicate: bool) {
        if req.no_reply {
            self.slot(&req.conn).2 += 1;
            return;
        }
        let frame = Frame::request(
            req.request_id,
            PublishAck {
                room: req.room.clone(),
                client_msg_id: req.client_msg_id,
                seq,
                timestamp_us,
                duplicate,
            },
        );
        self.push(&req.conn, &frame);
    }

    fn flush(self) {
        for (conn, buf, permits) in self.conns {
            if !buf.is_empty() {
                conn.outbox.push_control(buf.freeze());
            }
            conn.inflight.add_permits(permits);
        }
    }
}

/// The deduplication identity of a device: `user \0 device` (ids cannot
/// contain control characters, so this is unambiguous).
pub(crate) fn sender_key(user: &str, device: &str) -> Arc<str> {
    Arc::from(format!("{user}\0{device}"))
}
