//! The sequencer's thread: takes groups of requests off the channel, steps
//! the [`Core`], and carries out what each step says (replies to the
//! connections, events to the fan-out, offline push), keeping their order.

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::BytesMut;
use confab_codec::{ErrorFrame, Frame, MessageKind, PublishAck, Seq};
use crossbeam_channel::{Receiver, Sender};
use tracing::{error, warn};

/// How often idle rooms are dropped from memory.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

use super::core::{Core, Outcome};
use super::reads::{run_reader, Loaded, Need};
use super::{PublishReq, SeqMsg, SeqRx};
use crate::base::now_us;
use crate::config::{RoomsConfig, StorageConfig};
use crate::fanout::ConnCtx;
use crate::fanout::{receipt_events, Committed, FanoutMsg, Handoff};
use crate::push::PushHub;
use crate::rooms::{Room, RoomRegistry};
use crate::stats::Stats;
use crate::storage::RoomLog;
use crate::supervise::Supervisor;

/// Reader threads: enough to overlap a few reads (a burst of rooms used
/// for the first time, retries after a restart), few enough not to compete
/// with the writer for the disk.
const READERS: usize = 2;

/// Why the sequencer stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fatal {
    /// The fan-out thread is gone: committed messages would be acknowledged
    /// and never delivered.
    #[error("the fan-out thread is gone")]
    FanoutGone,
    /// Every reader thread is gone: requests waiting for a read would
    /// wait forever.
    #[error("the storage reader threads are gone")]
    ReadersGone,
}

/// The sequencer's reader threads, seen from the sequencer: where it sends
/// what it needs read, and where the answers come back.
pub(crate) struct Readers {
    needs: Sender<Need>,
    loaded: Receiver<Loaded>,
}

impl Readers {
    /// Starts the reader threads under `supervisor` (a reader that panics
    /// stops the broker). They end when the sequencer drops its side; join
    /// them after it so that their handles on the storage are gone.
    ///
    /// # Errors
    /// If a thread cannot be started.
    pub(crate) fn spawn(
        supervisor: &Arc<Supervisor>,
        log: &Arc<dyn RoomLog>,
    ) -> std::io::Result<(Self, Vec<JoinHandle<()>>)> {
        let (needs, needs_rx) = crossbeam_channel::unbounded();
        let (loaded_tx, loaded) = crossbeam_channel::unbounded();
        let mut threads = Vec::with_capacity(READERS);
        for i in 0..READERS {
            let (log, needs_rx, loaded_tx) = (log.clone(), needs_rx.clone(), loaded_tx.clone());
            threads.push(supervisor.spawn(&format!("confab-reader-{i}"), move || {
                run_reader(log, needs_rx, loaded_tx)
            })?);
        }
        Ok((Self { needs, loaded }, threads))
    }
}

/// The sequencer thread's state: the core and where its outcomes go.
pub(crate) struct Sequencer {
    core: Core,
    fanout: Handoff,
    stats: Arc<Stats>,
    /// Offline push, when on.
    push: Option<Arc<PushHub>>,
    /// The frame limit (`limits.max_frame_len`).
    max_frame_len: usize,
}

impl Sequencer {
    pub(crate) fn new(
        log: Arc<dyn RoomLog>,
        registry: Arc<RoomRegistry>,
        cfg: StorageConfig,
        rooms_cfg: RoomsConfig,
        fanout: Handoff,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            core: Core::new(log, registry, cfg, rooms_cfg, stats.clone()),
            fanout,
            stats,
            push: None,
            max_frame_len: confab_codec::DEFAULT_MAX_FRAME_LEN as usize,
        }
    }

    /// The frame limit the frames it builds must stay within.
    pub(crate) fn max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Leaves access decisions to an authorization hook that the sessions
    /// consult (see `crate::auth::authz`).
    pub(crate) fn external_authz(mut self, on: bool) -> Self {
        self.core = self.core.external_authz(on);
        self
    }

    /// Hands committed messages of managed rooms to offline push.
    pub(crate) fn with_push(mut self, push: Option<Arc<PushHub>>) -> Self {
        self.push = push;
        self
    }

    /// Runs until told to stop or every sender is gone, then returns (after
    /// the requests waiting for reads are done, and the last group is
    /// committed and handed on).
    ///
    /// # Errors
    /// [`Fatal`] if the fan-out or the readers are gone; the caller stops
    /// the broker.
    pub(crate) fn run(mut self, queue: SeqRx, readers: Readers) -> Result<(), Fatal> {
        let rx = queue.receiver();
        let max = self.core.cfg.max_batch;
        let mut batch = Vec::with_capacity(max);
        let mut stopping = false;
        let sweeps = crossbeam_channel::tick(SWEEP_EVERY);
        let mut last_sweep = std::time::Instant::now();
        loop {
            if stopping && self.core.idle() {
                break;
            }
            // Wait for a request or the answer to a read.
            let mut next = None;
            if stopping {
                let loaded = readers.loaded.recv().map_err(|_| Fatal::ReadersGone)?;
                self.supply(loaded);
            } else {
                crossbeam_channel::select! {
                    recv(rx) -> msg => match msg {
                        Ok(msg) => next = Some(msg),
                        Err(_) => stopping = true,
                    },
                    recv(readers.loaded) -> loaded => {
                        self.supply(loaded.map_err(|_| Fatal::ReadersGone)?);
                    }
                    recv(sweeps) -> _ => {}
                }
            }
            while let Ok(loaded) = readers.loaded.try_recv() {
                self.supply(loaded);
            }
            let mut taken = usize::from(next.is_some());
            while let Some(msg) = next {
                if matches!(msg, SeqMsg::Stop) {
                    stopping = true;
                    break;
                }
                batch.push(msg);
                next = if batch.len() < max {
                    rx.try_recv().ok()
                } else {
                    None
                };
                taken += usize::from(next.is_some());
            }
            queue.release(taken);
            let now = now_us();
            // Reads go out after the commit, so that they see it.
            for need in self.step(&mut batch, now)? {
                readers.needs.send(need).map_err(|_| Fatal::ReadersGone)?;
            }
            metrics::gauge!("confab_sequencer_parked").set(self.core.parked() as f64);
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = std::time::Instant::now();
                metrics::gauge!("confab_sequencer_queue").set(queue.len() as f64);
                let dropped = self.sweep(now);
                // Rooms dropped from the sequencer's memory when idle.
                metrics::counter!("confab_rooms_evicted_total").increment(dropped as u64);
                metrics::gauge!("confab_sequencer_rooms").set(self.core.rooms.len() as f64);
            }
        }
        if let Err(e) = self.core.log.flush() {
            error!(error = %e, "final flush failed");
        }
        // The fan-out may already be gone at shutdown.
        let _ = self.fanout.send(FanoutMsg::Stop);
        Ok(())
    }

    /// One group: steps the core and carries out its outcomes (replies,
    /// fan-out, push). Returns the reads the core asked for, to be made
    /// now that the group is committed. The thread above calls it; the
    /// deterministic simulation (`crate::sim`) calls it without a thread.
    ///
    /// # Errors
    /// [`Fatal::FanoutGone`] if the fan-out is gone.
    pub(crate) fn step(&mut self, batch: &mut Vec<SeqMsg>, now: u64) -> Result<Vec<Need>, Fatal> {
        // Commit times only go forward, even if the clock steps back: the
        // inbox cursor (a commit time) relies on it. The same time stamps
        // the records and their acknowledgements.
        let now = now.max(self.core.now().saturating_add(1));
        let outcomes = self.core.step(batch, now);
        self.deliver(outcomes, now)?;
        Ok(self.core.take_needs())
    }

    /// Gives the core the answer to a read it asked for.
    pub(crate) fn supply(&mut self, loaded: Loaded) {
        self.core.supply(loaded);
    }

    /// Drops the rooms idle for `rooms.evict_idle_ms` (between steps).
    /// Returns how many were dropped.
    pub(crate) fn sweep(&mut self, now: u64) -> usize {
        let idle_us = self.core.rooms_cfg.evict_idle_ms.saturating_mul(1000);
        self.core.evict_idle(now, idle_us)
    }

    /// Requests waiting for a read, or behind one.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        self.core.parked()
    }

    fn fan_out(&mut self, msg: FanoutMsg) -> Result<(), Fatal> {
        self.fanout.send(msg).map_err(|_| Fatal::FanoutGone)
    }

    /// Acknowledges publishers and hands events and subscriptions to the
    /// fan-out, keeping their relative order.
    fn deliver(&mut self, outcomes: Vec<Outcome>, now: u64) -> Result<(), Fatal> {
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
                        self.fan_out(FanoutMsg::Committed(std::mem::take(&mut committed)))?;
                    }
                    self.fan_out(FanoutMsg::Subscribe(cmd))?;
                }
                Outcome::Recovered { room, seq, frame } => {
                    committed.push(Committed {
                        room,
                        seq,
                        frame,
                        received: std::time::Instant::now(),
                    });
                }
                Outcome::Internal {
                    room,
                    seq,
                    frame,
                    received,
                } => {
                    committed.push(Committed {
                        room,
                        seq,
                        frame,
                        received,
                    });
                }
                Outcome::RoomReply {
                    conn,
                    request_id,
                    reply,
                } => {
                    let frame = self.core.room_reply(request_id, reply);
                    replies.reply(&conn, &frame);
                }
                Outcome::Evict { room, user } => {
                    if !committed.is_empty() {
                        self.fan_out(FanoutMsg::Committed(std::mem::take(&mut committed)))?;
                    }
                    self.fan_out(FanoutMsg::Evict { room, user })?;
                }
                Outcome::Receipt { room, entry } => {
                    match receipts.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &room)) {
                        Some((_, entries)) => entries.push(entry),
                        None => receipts.push((room, vec![entry])),
                    }
                }
                Outcome::Meta { done, result } => {
                    // The writer may have stopped waiting.
                    let _ = done.send(result);
                }
                Outcome::Unsubscribe(subs) => {
                    if !committed.is_empty() {
                        self.fan_out(FanoutMsg::Committed(std::mem::take(&mut committed)))?;
                    }
                    self.fan_out(FanoutMsg::Unsubscribe(subs))?;
                }
            }
        }
        // Acknowledgements first: they wait for nothing but the commit,
        // while a hand-over to a busy fan-out may wait for room. Committed
        // messages are durable; if the fan-out is gone the broker stops
        // and devices catch up from the log after the restart.
        replies.flush();
        if !committed.is_empty() {
            self.fan_out(FanoutMsg::Committed(committed))?;
        }
        // Markers of one commit reach each room's devices as one event.
        for (room, entries) in receipts {
            for frame in receipt_events(&room.id, entries, self.max_frame_len) {
                if let Ok(frame) = frame.to_bytes() {
                    self.fan_out(FanoutMsg::Ephemeral {
                        room: room.clone(),
                        frame,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Offers push jobs for a committed message: content kinds (messages and
    /// application kinds, not edits, deletes or reactions) of managed rooms,
    /// for members with no device online.
    fn offer_push(&self, req: &PublishReq, seq: Seq) {
        let Some(push) = &self.push else { return };
        if req.kind != MessageKind::MESSAGE && req.kind < MessageKind::FIRST_CUSTOM {
            return;
        }
        let Some(state) = self
            .core
            .rooms
            .get(&req.room)
            .and_then(|r| r.state.as_ref())
        else {
            return;
        };
        let members = state
            .members
            .iter()
            .filter(|(_, role)| **role != confab_codec::Role::Invited)
            .map(|(user, _)| user);
        push.message_committed(&req.room, seq, &req.conn.user, &req.payload, members);
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
        if let Some(direct) = &conn.direct {
            direct.send(frame.clone());
            return;
        }
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
