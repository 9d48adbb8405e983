//! One device's subscription to one room: a small state machine that
//! decides, for every committed event, whether it goes out live or is left
//! for catch-up from the log.
//!
//! Invariant: the device receives every sequence from `next` on exactly
//! once, in order. `seen` is the last sequence the fan-out thread has
//! considered for this subscription; everything up to it is committed and
//! readable from the log. Live delivery happens only when `next == seq`;
//! catch-up reads `next..=seen` from the log and turns live again, under
//! the same lock the fan-out takes, once `next == seen + 1`.
//!
//! On a connection of protocol version 2 the subscription also says what
//! it will not deliver, with a `Gap` frame in the room's delivery order:
//! entries retention trimmed before catch-up read them, and, when the
//! user loses access, everything from `next` on (protocol 7.8.3).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use confab_codec::{flags, raw, CaughtUp, Frame, Gap, GapReason, Lagging, RoomId, Seq};
use tracing::{debug, warn};

use super::outbox::Outbox;
use super::replay::aligned_end;
use super::Room;
use crate::storage::{LogBounds, ReadPool, RoomLog, StorageError, StoredRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Created, not yet registered by the fan-out thread.
    Pending,
    /// Events go straight into the outbox.
    Live,
    /// Events are read from the log by a catch-up task.
    CatchingUp,
    /// Unsubscribed or disconnected.
    Closed,
}

#[derive(Debug)]
struct State {
    next: u64,
    seen: u64,
    mode: Mode,
}

/// What happened to an offered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued live.
    Delivered,
    /// Not for this subscription now (already delivered, catching up, closed).
    Skipped,
    /// The outbox was full: the subscription switched to catch-up, and the
    /// caller must start a catch-up task with `lagged = true`.
    Lagged,
}

/// One device following one room.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) room: Arc<Room>,
    pub(crate) outbox: Arc<Outbox>,
    /// The user of the device, to end its subscriptions when it leaves.
    pub(crate) user: Option<confab_codec::UserId>,
    /// The outbox's event lane of this room.
    pub(crate) lane: usize,
    /// Whether the device is told about entries it will not get with `Gap`
    /// frames (connections of protocol version 2); on version 1 they are
    /// skipped silently, as that version specifies.
    gaps: bool,
    state: Mutex<State>,
}

/// What a catch-up task needs.
pub(crate) struct CatchupCtx {
    pub(crate) log: Arc<dyn RoomLog>,
    /// The broker-wide bound on client reads (a burst of lagging devices
    /// waits its turn here).
    pub(crate) reads: Arc<ReadPool>,
    /// Most events per batch frame.
    pub(crate) batch: usize,
    /// Most record bytes per batch frame.
    pub(crate) max_bytes: usize,
    /// The frame limit (`limits.max_frame_len`), for replies cut to fit.
    pub(crate) max_frame_len: usize,
    /// A lagging room reads its next batch only once its lane holds fewer
    /// bytes than this: what a slow reader costs is this plus one batch.
    pub(crate) ahead_bytes: usize,
    pub(crate) stats: Arc<crate::stats::Stats>,
}

impl Subscription {
    #[cfg(test)]
    pub(crate) fn new(room: Arc<Room>, outbox: Arc<Outbox>) -> Self {
        Self::for_user(room, outbox, None)
    }

    pub(crate) fn for_user(
        room: Arc<Room>,
        outbox: Arc<Outbox>,
        user: Option<confab_codec::UserId>,
    ) -> Self {
        Self {
            lane: outbox.lane_of(&room.id),
            room,
            outbox,
            user,
            gaps: false,
            state: Mutex::new(State {
                next: 1,
                seen: 0,
                mode: Mode::Pending,
            }),
        }
    }

    /// Reports entries that will not be delivered with `Gap` frames (a
    /// connection of protocol version 2), or not (version 1, the embedding
    /// API).
    #[must_use]
    pub(crate) fn with_gaps(mut self, gaps: bool) -> Self {
        self.gaps = gaps;
        self
    }

    /// Whether entries that will not be delivered are reported with `Gap`.
    pub(crate) fn reports_gaps(&self) -> bool {
        self.gaps
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // State is three plain fields, consistent between statements.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the fan-out thread when it registers the subscription:
    /// deliver from `next`, with everything up to `head` already committed.
    /// Returns true if a catch-up task must be started.
    pub(crate) fn register(&self, next: Seq, head: Seq) -> bool {
        let mut st = self.lock();
        if st.mode == Mode::Closed {
            return false;
        }
        st.next = next.0.max(1);
        st.seen = head.0;
        if st.next <= st.seen {
            st.mode = Mode::CatchingUp;
            true
        } else {
            st.mode = Mode::Live;
            false
        }
    }

    /// Called by the fan-out thread, in sequence order, for every committed
    /// event of the room.
    pub(crate) fn offer(&self, seq: Seq, frame: &Bytes) -> Offer {
        let mut st = self.lock();
        if seq.0 > st.seen {
            st.seen = seq.0;
        }
        match st.mode {
            Mode::Live if seq.0 == st.next => {
                if self.outbox.try_push_event(self.lane, frame) {
                    st.next += 1;
                    Offer::Delivered
                } else {
                    st.mode = Mode::CatchingUp;
                    Offer::Lagged
                }
            }
            Mode::Live if seq.0 > st.next => {
                // Cannot happen while the fan-out sees every sequence; if it
                // ever does, the log still has the events.
                warn!(room = %self.room.id, seq = seq.0, next = st.next, "gap in live delivery, catching up");
                st.mode = Mode::CatchingUp;
                Offer::Lagged
            }
            _ => Offer::Skipped,
        }
    }

    /// Called by the fan-out thread for a run of committed events
    /// `first..=last` of the room, encoded as one `frame`. `None` when the
    /// subscription is live but not at `first` (registered within the
    /// run): offer the events one by one instead.
    pub(crate) fn offer_run(&self, first: Seq, last: Seq, frame: &Bytes) -> Option<Offer> {
        let mut st = self.lock();
        let live = st.mode == Mode::Live;
        if live && first.0 != st.next {
            return None;
        }
        st.seen = st.seen.max(last.0);
        if !live {
            return Some(Offer::Skipped);
        }
        let events = u32::try_from(last.0.saturating_sub(first.0) + 1).unwrap_or(u32::MAX);
        Some(if self.outbox.try_push_events(self.lane, frame, events) {
            st.next = last.0 + 1;
            Offer::Delivered
        } else {
            st.mode = Mode::CatchingUp;
            Offer::Lagged
        })
    }

    /// Whether events are being read from the log rather than delivered
    /// live (the device lags, or replays its backlog).
    pub(crate) fn is_catching_up(&self) -> bool {
        self.lock().mode == Mode::CatchingUp
    }

    /// Whether it was refused, ended (leave, removal) or unsubscribed.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().mode == Mode::Closed
    }

    /// Stops delivery; a running catch-up task ends at its next step.
    pub(crate) fn close(&self) {
        self.lock().mode = Mode::Closed;
    }

    /// Stops delivery because the user lost access to the room (left, was
    /// removed, or a refreshed token no longer allows the room). On a
    /// version 2 connection the device is told with
    /// `Gap{from: next, to: seen, AccessLost}`: `next` is the first entry
    /// it was not sent, `seen` the last entry committed before access ended
    /// that the fan-out had handed to this subscription (for a leave or a
    /// removal, the `MEMBER_LEFT` or `MEMBER_REMOVED` entry itself, which
    /// is committed before the eviction). When everything up to `seen` was
    /// sent, the range is empty (`from == to + 1`) and the frame only says
    /// that nothing more comes. A subscription not yet registered (its
    /// `SubscribeAck` not sent) or already closed is just closed.
    pub(crate) fn end_access_lost(&self) {
        let mut st = self.lock();
        let was = st.mode;
        st.mode = Mode::Closed;
        if !self.gaps || !matches!(was, Mode::Live | Mode::CatchingUp) {
            return;
        }
        let (next, seen) = (st.next, st.seen);
        self.push_gap(next, seen, GapReason::AccessLost);
    }

    /// Queues a `Gap` frame in the room's lane (forced: it is part of the
    /// delivery order, like a catch-up batch). Called with the state lock
    /// held, so that it lands between the right entries.
    fn push_gap(&self, from: u64, to: u64, reason: GapReason) {
        match gap_frame(&self.room.id, from, to, reason) {
            Ok(frame) => self.outbox.push_event_forced(self.lane, frame),
            Err(e) => warn!(room = %self.room.id, error = %e, "cannot encode Gap"),
        }
    }

    /// Next sequence this subscription will deliver.
    #[cfg(test)]
    pub(crate) fn next_seq(&self) -> Seq {
        Seq(self.lock().next)
    }

    /// Delivers `next..=seen` from the log until the subscription is live
    /// again. With `lagged`, first tells the device with a `Lagging` notice
    /// and finishes with `CaughtUp`.
    pub(crate) async fn catch_up(self: Arc<Self>, ctx: Arc<CatchupCtx>, lagged: bool) {
        if let Err(e) = self.clone().catch_up_inner(ctx, lagged).await {
            warn!(room = %self.room.id, error = %e, "catch-up failed; closing the device's connection");
            self.close();
            self.outbox.abort();
        }
    }

    async fn catch_up_inner(
        self: Arc<Self>,
        ctx: Arc<CatchupCtx>,
        lagged: bool,
    ) -> Result<(), String> {
        if lagged {
            self.outbox.wait_event_space(self.lane).await;
            if !self.lag_notice()? {
                return Ok(());
            }
        }
        loop {
            let CatchupStep::Read { next, seen } = self.catchup_next(lagged)? else {
                return Ok(());
            };
            // At most about one batch ahead of what the device has taken:
            // a slow reader costs a bounded amount, not its whole backlog.
            self.outbox
                .wait_catchup_space(self.lane, ctx.ahead_bytes)
                .await;
            if self.outbox.is_closed() {
                return Ok(());
            }
            // Another device of the room may hold this very batch.
            match self.catchup_shared(&ctx, next, seen)? {
                Some(true) => continue,
                Some(false) => return Ok(()),
                None => {}
            }
            let turn = ctx.reads.turn().await.map_err(|e| e.to_string())?;
            // While it waited, another device may have read it.
            match self.catchup_shared(&ctx, next, seen)? {
                Some(true) => continue,
                Some(false) => return Ok(()),
                None => {}
            }
            let read_ctx = ctx.clone();
            let room = self.room.id.clone();
            let read =
                tokio::task::spawn_blocking(move || read_batch(&read_ctx, &room, next, seen))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            drop(turn);
            if !self.catchup_apply(&ctx, next, read)? {
                return Ok(());
            }
        }
    }

    /// The start of a catch-up after a lag, once the lane has room: queues
    /// the `Lagging` notice. False if the subscription was closed.
    pub(crate) fn lag_notice(&self) -> Result<bool, String> {
        let (next, seen) = {
            let st = self.lock();
            if st.mode == Mode::Closed {
                return Ok(false);
            }
            (st.next, st.seen)
        };
        debug!(room = %self.room.id, next, seen, "device lagging, switching to catch-up");
        let notice = Frame::new(Lagging {
            room: self.room.id.clone(),
            resume_from: Seq(next),
            head: Seq(seen),
        })
        .to_bytes()
        .map_err(|e| e.to_string())?;
        self.outbox.push_event_forced(self.lane, notice);
        Ok(true)
    }

    /// What the catch-up does next: read `next..=seen`, or nothing more
    /// (caught up, and live again with a `CaughtUp` notice after a lag; or
    /// closed, or taken over by a new registration).
    pub(crate) fn catchup_next(&self, lagged: bool) -> Result<CatchupStep, String> {
        let mut st = self.lock();
        match st.mode {
            Mode::CatchingUp if st.next > st.seen => {
                if lagged {
                    let frame = Frame::new(CaughtUp {
                        room: self.room.id.clone(),
                        seq: Seq(st.seen),
                    })
                    .to_bytes()
                    .map_err(|e| e.to_string())?;
                    self.outbox.push_event_forced(self.lane, frame);
                }
                st.mode = Mode::Live;
                Ok(CatchupStep::Done)
            }
            Mode::CatchingUp => Ok(CatchupStep::Read {
                next: st.next,
                seen: st.seen,
            }),
            // Closed, or re-registered or otherwise taken over.
            _ => Ok(CatchupStep::Done),
        }
    }

    /// Queues a batch read from `next` by [`read_batch`]. Returns whether
    /// the catch-up goes on (false: the subscription changed meanwhile).
    ///
    /// # Errors
    /// The log is missing `next` without having trimmed it (corruption),
    /// or the batch cannot be framed.
    pub(crate) fn catchup_apply(
        &self,
        ctx: &CatchupCtx,
        next: u64,
        (records, bounds): CatchupRead,
    ) -> Result<bool, String> {
        let first_seq = records.first().map(|r| r.seq.0);
        if first_seq != Some(next) {
            // The log no longer holds `next`: it was trimmed by retention.
            // Skip to what is retained; a version 2 device is told the
            // exact range with a `Gap`, a version 1 device learns it from
            // the jump in sequence numbers. Anything else is corruption.
            let first_retained = bounds.map(|b| b.first.0).unwrap_or(0);
            if first_retained > next {
                let mut st = self.lock();
                if st.mode == Mode::CatchingUp && st.next == next {
                    if self.gaps {
                        self.push_gap(next, first_retained - 1, GapReason::Trimmed);
                    }
                    st.next = first_retained;
                }
                return Ok(true);
            }
            return Err(format!(
                "log of room {} is missing seq {next} (have {first_seq:?})",
                self.room.id
            ));
        }
        // Records must be contiguous from `next`.
        let mut expected = next;
        let mut contiguous = Vec::with_capacity(records.len());
        for r in &records {
            if r.seq.0 != expected {
                break;
            }
            contiguous.push(r.bytes.clone());
            expected += 1;
        }
        let last = expected - 1;
        let frame = raw::event_batch_frame(0, flags::REPLAY, &self.room.id, &contiguous)
            .map_err(|e| e.to_string())?;
        let frame = self.room.replay.share(next, last, frame);
        ctx.stats
            .catchup_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.queue_batch(ctx, next, last, frame))
    }

    /// Queues a batch `next..=seen` or shorter that another device of the
    /// room read and still holds, if there is one (see `replay.rs`).
    /// `None`: there is none, read it; `Some(b)`: queued, and whether the
    /// catch-up goes on.
    ///
    /// # Errors
    /// None today; it returns the same error type as
    /// [`Subscription::catchup_apply`] so that callers treat both alike.
    pub(crate) fn catchup_shared(
        &self,
        ctx: &CatchupCtx,
        next: u64,
        seen: u64,
    ) -> Result<Option<bool>, String> {
        let Some((last, frame)) = self.room.replay.get(next, seen) else {
            return Ok(None);
        };
        ctx.stats
            .catchup_shared
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(self.queue_batch(ctx, next, last, frame)))
    }

    /// Queues the batch frame of `next..=last` if the subscription is still
    /// catching up from `next`. Returns whether the catch-up goes on.
    fn queue_batch(&self, ctx: &CatchupCtx, next: u64, last: u64, frame: Bytes) -> bool {
        let mut st = self.lock();
        if st.mode != Mode::CatchingUp || st.next != next {
            return false;
        }
        self.outbox.push_event_forced(self.lane, frame);
        st.next = last + 1;
        ctx.stats
            .delivered
            .fetch_add(last + 1 - next, std::sync::atomic::Ordering::Relaxed);
        true
    }
}

/// The `Gap` frame telling that `from..=to` of `room` will not be
/// delivered, and why.
///
/// # Errors
/// The frame cannot be encoded (it always can: its size is bounded).
pub(crate) fn gap_frame(
    room: &RoomId,
    from: u64,
    to: u64,
    reason: GapReason,
) -> Result<Bytes, confab_codec::CodecError> {
    Frame::new(Gap {
        room: room.clone(),
        from: Seq(from),
        to: Seq(to),
        reason,
    })
    .to_bytes()
}

/// What a catch-up does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchupStep {
    /// Nothing more: live again, closed, or taken over.
    Done,
    /// Read `next..=seen` from the log.
    Read { next: u64, seen: u64 },
}

/// One catch-up read: the records from `next` on, and the room's bounds
/// when the log no longer starts at `next`.
pub(crate) type CatchupRead = (Vec<StoredRecord>, Option<LogBounds>);

/// Reads one catch-up batch from `next`, up to `seen` and to the end of
/// `next`'s `ctx.batch`-aligned range (so that devices lagging together
/// read the same batches and share them; at most `ctx.batch` records and
/// about `ctx.max_bytes`), blocking: run it off the reactor.
///
/// # Errors
/// What storage says.
pub(crate) fn read_batch(
    ctx: &CatchupCtx,
    room: &RoomId,
    next: u64,
    seen: u64,
) -> Result<CatchupRead, StorageError> {
    let records = ctx.log.read_range(
        room,
        Seq(next),
        Seq(seen.min(aligned_end(next, ctx.batch))),
        ctx.batch,
        ctx.max_bytes,
    )?;
    let bounds = if records.first().map(|r| r.seq.0) == Some(next) {
        None
    } else {
        Some(ctx.log.bounds(room)?)
    };
    Ok((records, bounds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::storage::{Append, MemoryLog};
    use bytes::BytesMut;
    use confab_codec::{Body, DeviceId, EventRecord, MessageKind, RoomId, UserId};

    fn record(seq: u64) -> Bytes {
        let r = EventRecord {
            seq: Seq(seq),
            timestamp_us: seq,
            sender: UserId::new("u").expect("id"),
            device: DeviceId::new("d").expect("id"),
            client_msg_id: 0,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: Bytes::from(seq.to_be_bytes().to_vec()),
        };
        let mut b = BytesMut::new();
        r.encode(&mut b).expect("encode");
        b.freeze()
    }

    fn live_frame(room: &RoomId, seq: u64) -> Bytes {
        let rec = EventRecord::decode(record(seq)).expect("decode");
        Frame::new(rec.in_room(room.clone()))
            .to_bytes()
            .expect("encode")
    }

    fn append(log: &MemoryLog, room_id: &RoomId, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let rec = record(seq);
            log.append_batch(
                &[Append {
                    room: room_id,
                    seq: Seq(seq),
                    record: &rec,
                    idem: None,
                    timestamp_us: 0,
                }],
                Durability::Wal,
            )
            .expect("append");
        }
    }

    fn catchup_ctx(log: Arc<MemoryLog>) -> Arc<CatchupCtx> {
        Arc::new(CatchupCtx {
            log,
            reads: Arc::new(ReadPool::new(4)),
            batch: 4,
            max_bytes: 1 << 20,
            max_frame_len: 1 << 20,
            ahead_bytes: 64 << 10,
            stats: Arc::default(),
        })
    }

    /// What the device gets for the room, in order: `Ok(seq)` for an
    /// entry, `Err((from, to, reason))` for a gap.
    fn received(outbox: &Outbox) -> Vec<Result<u64, (u64, u64, GapReason)>> {
        let mut buf = BytesMut::new();
        outbox.drain_into(&mut buf, usize::MAX);
        let mut out = Vec::new();
        while let Some(f) = Frame::decode(&mut buf, 1 << 24).expect("valid") {
            match f.body {
                Body::Event(e) => out.push(Ok(e.event.seq.0)),
                Body::EventBatch(b) => out.extend(b.events.iter().map(|e| Ok(e.seq.0))),
                Body::Gap(g) => out.push(Err((g.from.0, g.to.0, g.reason))),
                _ => {}
            }
        }
        out
    }

    #[tokio::test]
    async fn catchup_over_a_trimmed_range_reports_the_exact_gap_on_version_2() {
        for gaps in [true, false] {
            let room_id = RoomId::new("r").expect("id");
            let log = Arc::new(MemoryLog::new());
            append(&log, &room_id, 1..=10);
            let outbox = Arc::new(Outbox::new(64, Arc::default()));
            let sub = Arc::new(
                Subscription::new(Arc::new(Room::new(room_id.clone())), outbox.clone())
                    .with_gaps(gaps),
            );
            assert!(sub.register(Seq(2), Seq(10)));
            // Retention trims 1..=6 before catch-up reads anything.
            log.trim(&room_id, Seq(7), &[], Durability::Wal)
                .expect("trim");
            sub.clone().catch_up(catchup_ctx(log), false).await;
            let mut expected = vec![Ok(7), Ok(8), Ok(9), Ok(10)];
            if gaps {
                expected.insert(0, Err((2, 6, GapReason::Trimmed)));
            }
            assert_eq!(received(&outbox), expected, "gaps {gaps}");
            assert_eq!(sub.next_seq(), Seq(11));
        }
    }

    #[test]
    fn access_lost_reports_from_next_to_the_last_entry_seen() {
        let room_id = RoomId::new("r").expect("id");
        let new_sub = |gaps: bool| {
            let outbox = Arc::new(Outbox::new(64, Arc::default()));
            let sub = Subscription::new(Arc::new(Room::new(room_id.clone())), outbox.clone())
                .with_gaps(gaps);
            (sub, outbox)
        };
        // Live and up to date: an empty range, only "nothing more comes".
        let (sub, outbox) = new_sub(true);
        assert!(!sub.register(Seq(1), Seq(0)));
        for seq in 1..=3 {
            assert_eq!(
                sub.offer(Seq(seq), &live_frame(&room_id, seq)),
                Offer::Delivered
            );
        }
        sub.end_access_lost();
        assert!(sub.is_closed());
        assert_eq!(
            received(&outbox),
            [Ok(1), Ok(2), Ok(3), Err((4, 3, GapReason::AccessLost))]
        );
        assert_eq!(sub.offer(Seq(4), &live_frame(&room_id, 4)), Offer::Skipped);

        // Catching up from 2 with 8 committed: 2..=8 will not come.
        let (sub, outbox) = new_sub(true);
        assert!(sub.register(Seq(2), Seq(8)));
        sub.end_access_lost();
        assert_eq!(received(&outbox), [Err((2, 8, GapReason::AccessLost))]);

        // Version 1, or not registered yet (no SubscribeAck sent): nothing.
        let (sub, outbox) = new_sub(false);
        assert!(sub.register(Seq(2), Seq(8)));
        sub.end_access_lost();
        assert!(sub.is_closed());
        assert_eq!(received(&outbox), []);
        let (sub, outbox) = new_sub(true);
        sub.end_access_lost();
        assert!(sub.is_closed());
        assert_eq!(received(&outbox), []);
    }

    /// Every delivered sequence of the room, in the order the device gets them.
    fn delivered(outbox: &Outbox) -> Vec<u64> {
        let mut buf = BytesMut::new();
        outbox.drain_into(&mut buf, usize::MAX);
        let mut seqs = Vec::new();
        while let Some(f) = Frame::decode(&mut buf, 1 << 24).expect("valid") {
            match f.body {
                Body::Event(e) => seqs.push(e.event.seq.0),
                Body::EventBatch(b) => seqs.extend(b.events.iter().map(|e| e.seq.0)),
                _ => {}
            }
        }
        seqs
    }

    #[tokio::test]
    async fn overflow_switches_to_catchup_and_loses_nothing() {
        let room_id = RoomId::new("r").expect("id");
        let log = Arc::new(MemoryLog::new());
        let room = Arc::new(Room::new(room_id.clone()));
        let outbox = Arc::new(Outbox::new(4, Arc::default()));
        let sub = Arc::new(Subscription::new(room, outbox.clone()));
        assert!(!sub.register(Seq(1), Seq(0)));
        let ctx = Arc::new(CatchupCtx {
            log: log.clone(),
            reads: Arc::new(ReadPool::new(4)),
            batch: 3,
            max_bytes: 1 << 20,
            max_frame_len: 1 << 20,
            ahead_bytes: 64 << 10,
            stats: Arc::default(),
        });

        let mut catchups = Vec::new();
        let mut all = Vec::new();
        for seq in 1..=20u64 {
            let rec = record(seq);
            log.append_batch(
                &[Append {
                    room: &room_id,
                    seq: Seq(seq),
                    record: &rec,
                    idem: None,
                    timestamp_us: 0,
                }],
                Durability::Wal,
            )
            .expect("append");
            if sub.offer(Seq(seq), &live_frame(&room_id, seq)) == Offer::Lagged {
                catchups.push(tokio::spawn(sub.clone().catch_up(ctx.clone(), true)));
            }
            if seq % 7 == 0 {
                all.extend(delivered(&outbox));
            }
        }
        // Drain until the catch-up task has turned the subscription live.
        for _ in 0..5000 {
            all.extend(delivered(&outbox));
            if catchups.iter().all(|c| c.is_finished()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        all.extend(delivered(&outbox));
        assert_eq!(all, (1..=20).collect::<Vec<_>>());
        assert_eq!(sub.next_seq(), Seq(21));
        // Live again: the next event goes straight out.
        assert_eq!(
            sub.offer(Seq(21), &live_frame(&room_id, 21)),
            Offer::Delivered
        );
    }

    #[tokio::test]
    async fn backlog_then_live_without_gap_or_duplicate() {
        let room_id = RoomId::new("r").expect("id");
        let log = Arc::new(MemoryLog::new());
        for seq in 1..=10u64 {
            let rec = record(seq);
            log.append_batch(
                &[Append {
                    room: &room_id,
                    seq: Seq(seq),
                    record: &rec,
                    idem: None,
                    timestamp_us: 0,
                }],
                Durability::Wal,
            )
            .expect("append");
        }
        let outbox = Arc::new(Outbox::new(64, Arc::default()));
        let sub = Arc::new(Subscription::new(
            Arc::new(Room::new(room_id.clone())),
            outbox.clone(),
        ));
        assert!(sub.register(Seq(4), Seq(10)));
        let ctx = Arc::new(CatchupCtx {
            log: log.clone(),
            reads: Arc::new(ReadPool::new(4)),
            batch: 4,
            max_bytes: 1 << 20,
            max_frame_len: 1 << 20,
            ahead_bytes: 64 << 10,
            stats: Arc::default(),
        });
        // Live events arrive while catching up: they are left to the log.
        let rec = record(11);
        log.append_batch(
            &[Append {
                room: &room_id,
                seq: Seq(11),
                record: &rec,
                idem: None,
                timestamp_us: 0,
            }],
            Durability::Wal,
        )
        .expect("append");
        assert_eq!(
            sub.offer(Seq(11), &live_frame(&room_id, 11)),
            Offer::Skipped
        );
        sub.clone().catch_up(ctx, false).await;
        assert_eq!(
            sub.offer(Seq(12), &live_frame(&room_id, 12)),
            Offer::Delivered
        );
        assert_eq!(delivered(&outbox), (4..=12).collect::<Vec<_>>());
    }
}
