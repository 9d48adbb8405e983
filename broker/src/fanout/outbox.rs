//! A device's bounded outbound queue, drained by its connection's writer.
//!
//! Two kinds of lane: `control` holds replies (acks, errors, pongs, history
//! pages), bounded by the number of requests a connection may have in
//! flight; `events` holds room events, bounded by `queue_capacity` per
//! event lane. A live push into a full event lane fails instead of waiting,
//! which is what switches a room to catch-up (see `subscription.rs`).
//!
//! On a byte stream (TCP, TLS) there is one event lane and one writer that
//! drains control first, then events. On QUIC the outbox is *split*: each
//! room is pinned to one of several event lanes (by a hash of its id), each
//! lane is drained by its own writer into its own QUIC stream, and the
//! control lane by another. A lane whose stream is stalled then fills up
//! and lags on its own, without holding back the rooms of other lanes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use confab_codec::RoomId;
use tokio::sync::Notify;

use crate::stats::Stats;

/// Most event lanes an outbox can have (the wake mask is a `u64`).
pub(crate) const MAX_EVENT_LANES: usize = 64;

/// Frame handles an empty queue keeps room for when its writer goes idle
/// (larger capacity that a burst left behind is given back).
const IDLE_QUEUE_CAPACITY: usize = 32;

#[derive(Debug, Default)]
struct Lanes {
    control: VecDeque<Bytes>,
    /// Each event lane's frames, with how many room events each carries
    /// (a live `EventBatch` carries several; other frames count one).
    events: Vec<VecDeque<(Bytes, u32)>>,
    /// Events queued in each event lane: what `capacity` bounds.
    event_count: Vec<usize>,
    /// Bytes queued in each event lane, to pace catch-up by bytes.
    event_bytes: Vec<usize>,
    /// The connection's last frames (its `Error` and `Goodbye`): sent once
    /// every lane is empty.
    last: Option<Bytes>,
    closed: bool,
}

impl Lanes {
    fn push_event(&mut self, lane: usize, frame: Bytes, weight: u32) -> bool {
        let (Some(q), Some(bytes), Some(count)) = (
            self.events.get_mut(lane),
            self.event_bytes.get_mut(lane),
            self.event_count.get_mut(lane),
        ) else {
            return false;
        };
        *bytes += frame.len();
        *count += weight as usize;
        q.push_back((frame, weight));
        true
    }

    fn pop_event(&mut self, lane: usize) -> Option<Bytes> {
        let (frame, weight) = self.events.get_mut(lane)?.pop_front()?;
        if let Some(bytes) = self.event_bytes.get_mut(lane) {
            *bytes = bytes.saturating_sub(frame.len());
        }
        if let Some(count) = self.event_count.get_mut(lane) {
            *count = count.saturating_sub(weight as usize);
        }
        Some(frame)
    }

    /// Gives back the memory of queues that a burst grew and that are empty
    /// now, so that a device's memory returns to its idle size after a
    /// backlog.
    fn release_idle(&mut self) {
        fn shrink<T>(q: &mut VecDeque<T>) {
            if q.is_empty() && q.capacity() > IDLE_QUEUE_CAPACITY {
                q.shrink_to(IDLE_QUEUE_CAPACITY);
            }
        }
        shrink(&mut self.control);
        self.events.iter_mut().for_each(shrink);
    }

    /// Whether event lane `lane` holds fewer than `capacity` events (a
    /// lane that does not exist has room).
    fn below(&self, lane: usize, capacity: usize) -> bool {
        self.event_count.get(lane).is_none_or(|n| *n < capacity)
    }
}

/// One device's outbound queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    lanes: Mutex<Lanes>,
    /// Wakes the writers when frames arrive: `ready[0]` the control writer
    /// (the only writer when not split), `ready[1 + i]` the writer of event
    /// lane `i` when split.
    ready: Box<[Notify]>,
    /// Wakes producers waiting for room in a lane.
    space: Notify,
    capacity: usize,
    event_lanes: usize,
    split: bool,
    /// Bit `i` is set while a producer has pushed into event lane `i`
    /// without waking its writer yet; lets the fan-out wake each device
    /// once per commit instead of per event.
    wake_pending: AtomicU64,
    stats: Arc<Stats>,
}

/// What a drain found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Some frames were copied into the buffer.
    Frames,
    /// Nothing queued; wait for `ready`.
    Empty,
    /// Closed and fully drained: the writer should finish.
    Finished,
}

/// Which queued frames a writer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Control first, then every event lane (the single writer of a byte
    /// stream).
    All,
    /// The control lane only.
    Control,
    /// One event lane only.
    Events(usize),
}

impl Outbox {
    /// An outbox for a byte-stream transport: one event lane, one writer.
    pub(crate) fn new(capacity: usize, stats: Arc<Stats>) -> Self {
        Self::with_lanes(capacity, 1, false, stats)
    }

    /// An outbox for QUIC: `event_lanes` event lanes (at most
    /// [`MAX_EVENT_LANES`]) of `capacity` frames each, each drained
    /// separately from the control lane.
    pub(crate) fn split(capacity: usize, event_lanes: usize, stats: Arc<Stats>) -> Self {
        Self::with_lanes(capacity, event_lanes, true, stats)
    }

    fn with_lanes(capacity: usize, event_lanes: usize, split: bool, stats: Arc<Stats>) -> Self {
        let event_lanes = event_lanes.clamp(1, MAX_EVENT_LANES);
        let writers = if split { 1 + event_lanes } else { 1 };
        Self {
            stats,
            lanes: Mutex::new(Lanes {
                control: VecDeque::new(),
                events: (0..event_lanes).map(|_| VecDeque::new()).collect(),
                event_count: vec![0; event_lanes],
                event_bytes: vec![0; event_lanes],
                last: None,
                closed: false,
            }),
            ready: (0..writers).map(|_| Notify::new()).collect(),
            space: Notify::new(),
            capacity,
            event_lanes,
            split,
            wake_pending: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        // The lanes are consistent between statements, so a poisoned lock
        // (a panic elsewhere while holding it) leaves nothing half-done.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of event lanes.
    pub(crate) fn event_lanes(&self) -> usize {
        self.event_lanes
    }

    /// The event lane of a room: FNV-1a of its id, modulo the lane count.
    /// Stable, so a room's events always travel on the same lane (and QUIC
    /// stream), in order.
    pub(crate) fn lane_of(&self, room: &RoomId) -> usize {
        if self.event_lanes == 1 {
            return 0;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.as_str().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h % self.event_lanes as u64) as usize
    }

    fn notify_events(&self, lane: usize) {
        let i = if self.split { 1 + lane } else { 0 };
        if let Some(n) = self.ready.get(i) {
            n.notify_one();
        }
    }

    fn notify_all(&self) {
        for n in self.ready.iter() {
            n.notify_one();
        }
    }

    /// Queues a reply and wakes the writer. Dropped if the outbox is closed.
    pub(crate) fn push_control(&self, frame: Bytes) {
        {
            let mut l = self.lock();
            if l.closed {
                return;
            }
            self.stats.queued(1, frame.len() as i64);
            l.control.push_back(frame);
        }
        self.ready[0].notify_one();
    }

    /// Queues an unsolicited control frame (a presence push) unless the
    /// control queue already holds `max` frames or the outbox is closed;
    /// returns false if it was dropped.
    pub(crate) fn try_push_control(&self, frame: Bytes, max: usize) -> bool {
        {
            let mut l = self.lock();
            if l.closed {
                return true;
            }
            if l.control.len() >= max {
                return false;
            }
            self.stats.queued(1, frame.len() as i64);
            l.control.push_back(frame);
        }
        self.ready[0].notify_one();
        true
    }

    /// Queues a room event in `lane` if it has room, without waking the
    /// writer (call [`Outbox::wake`] or [`Outbox::mark_wake`]). Returns false
    /// if the lane is full; closed outboxes accept and drop.
    pub(crate) fn try_push_event(&self, lane: usize, frame: &Bytes) -> bool {
        self.try_push_events(lane, frame, 1)
    }

    /// Like [`Outbox::try_push_event`] for a frame that carries `events`
    /// room events (a live `EventBatch`): the lane's capacity counts events,
    /// so batching changes nothing about when a device lags.
    pub(crate) fn try_push_events(&self, lane: usize, frame: &Bytes, events: u32) -> bool {
        let mut l = self.lock();
        if l.closed {
            return true;
        }
        if !l.below(lane, self.capacity) {
            return false;
        }
        if l.push_event(lane, frame.clone(), events) {
            self.stats.queued(1, frame.len() as i64);
        }
        true
    }

    /// Like [`Outbox::try_push_event`], and wakes the lane's writer at
    /// once (for frames sent outside the fan-out's per-commit wake-ups).
    pub(crate) fn try_push_event_now(&self, lane: usize, frame: &Bytes) -> bool {
        let pushed = self.try_push_event(lane, frame);
        if pushed {
            self.notify_events(lane);
        }
        pushed
    }

    /// Queues an event-lane frame even beyond capacity: for frames that
    /// must keep their place among a room's events (Lagging, CaughtUp, and
    /// catch-up batches whose producer already waited for space).
    pub(crate) fn push_event_forced(&self, lane: usize, frame: Bytes) {
        {
            let mut l = self.lock();
            if l.closed {
                return;
            }
            let len = frame.len() as i64;
            if !l.push_event(lane, frame, 1) {
                return;
            }
            self.stats.queued(1, len);
        }
        self.notify_events(lane);
    }

    /// Queues a `SubscribeAck`. On a byte stream it goes into the (single)
    /// event lane, ahead of every event of the subscription. Split, it
    /// answers many rooms of possibly different lanes at once, so it goes
    /// on the control lane, and the client orders it (protocol section 2.1).
    pub(crate) fn push_subscribe_ack(&self, frame: Bytes) {
        if self.split {
            self.push_control(frame);
        } else {
            self.push_event_forced(0, frame);
        }
    }

    /// Returns true the first time it is called for any lane after a wake,
    /// so the caller adds this outbox to its list of outboxes to wake.
    pub(crate) fn mark_wake(&self, lane: usize) -> bool {
        let bit = 1u64 << (lane % MAX_EVENT_LANES);
        self.wake_pending.fetch_or(bit, Ordering::AcqRel) == 0
    }

    /// Wakes the writers of the lanes marked since the last wake.
    pub(crate) fn wake(&self) {
        let mut bits = self.wake_pending.swap(0, Ordering::AcqRel);
        if !self.split {
            self.ready[0].notify_one();
            return;
        }
        while bits != 0 {
            let lane = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            self.notify_events(lane);
        }
    }

    /// Waits until event lane `lane` is below capacity (or the outbox closed).
    pub(crate) async fn wait_event_space(&self, lane: usize) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_event_space(lane) {
                return;
            }
            notified.await;
        }
    }

    /// Whether event lane `lane` is below capacity (or the outbox closed).
    pub(crate) fn has_event_space(&self, lane: usize) -> bool {
        let l = self.lock();
        l.closed || l.below(lane, self.capacity)
    }

    /// Waits until event lane `lane` is below capacity and holds fewer than
    /// `max_bytes` bytes (or the outbox closed). A catch-up task waits for
    /// this before reading the next batch from the log, so that what is
    /// queued for a device that reads slowly stays under `max_bytes` plus
    /// one batch: catch-up goes at the pace the device reads, and what it
    /// costs in memory does not grow with the room's rate or backlog.
    pub(crate) async fn wait_catchup_space(&self, lane: usize, max_bytes: usize) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_catchup_space(lane, max_bytes) {
                return;
            }
            notified.await;
        }
    }

    /// Whether event lane `lane` is below capacity and holds fewer than
    /// `max_bytes` bytes (or the outbox closed).
    pub(crate) fn has_catchup_space(&self, lane: usize, max_bytes: usize) -> bool {
        let l = self.lock();
        let room = |i: usize| {
            l.below(i, self.capacity) && l.event_bytes.get(i).is_none_or(|b| *b < max_bytes)
        };
        l.closed || room(lane)
    }

    /// Frames and bytes queued in event lane `lane` (the simulation checks
    /// them against the bounds).
    #[cfg(test)]
    pub(crate) fn event_lane(&self, lane: usize) -> (usize, usize) {
        let l = self.lock();
        (
            l.events.get(lane).map_or(0, VecDeque::len),
            l.event_bytes.get(lane).copied().unwrap_or(0),
        )
    }

    /// Frames queued in the control lane.
    #[cfg(test)]
    pub(crate) fn control_len(&self) -> usize {
        self.lock().control.len()
    }

    /// Waits until the control lane holds fewer than `max` frames.
    pub(crate) async fn wait_control_below(&self, max: usize) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let l = self.lock();
                if l.closed || l.control.len() < max {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Moves frames queued in every lane into `buf`, control first, until
    /// `buf` holds at least `max_bytes` or the lanes are empty.
    pub(crate) fn drain_into(&self, buf: &mut BytesMut, max_bytes: usize) -> Drained {
        self.drain(Source::All, buf, max_bytes)
    }

    /// Moves frames queued in `source` into `buf` until `buf` holds at least
    /// `max_bytes` or the source is empty.
    pub(crate) fn drain(&self, source: Source, buf: &mut BytesMut, max_bytes: usize) -> Drained {
        let room = max_bytes.saturating_sub(buf.len());
        self.drain_with(source, room, usize::MAX, |frame| {
            buf.extend_from_slice(&frame)
        })
    }

    /// Moves the handles of up to `max_frames` frames queued in `source`
    /// onto `frames`, without copying them, until they hold at least
    /// `max_bytes` or the source is empty (for vectored writes: the frames
    /// the fan-out encoded once stay shared by every recipient until they
    /// are written).
    pub(crate) fn drain_frames(
        &self,
        source: Source,
        frames: &mut Vec<Bytes>,
        max_bytes: usize,
        max_frames: usize,
    ) -> Drained {
        self.drain_with(source, max_bytes, max_frames, |frame| frames.push(frame))
    }

    /// Pops frames of `source` into `sink` until `max_bytes` or more went,
    /// or `max_frames` did.
    fn drain_with(
        &self,
        source: Source,
        max_bytes: usize,
        max_frames: usize,
        mut sink: impl FnMut(Bytes),
    ) -> Drained {
        let mut moved = false;
        {
            let mut guard = self.lock();
            let l = &mut *guard;
            let (mut frames, mut bytes) = (0i64, 0usize);
            while bytes < max_bytes && (frames as usize) < max_frames {
                let next = match source {
                    Source::All => match l.control.pop_front() {
                        Some(frame) => Some(frame),
                        None => (0..l.events.len())
                            .find_map(|i| l.pop_event(i))
                            .or_else(|| l.last.take()),
                    },
                    // Split (QUIC): the last frames end the control stream.
                    Source::Control => l.control.pop_front().or_else(|| l.last.take()),
                    Source::Events(i) => l.pop_event(i),
                };
                let Some(frame) = next else {
                    break;
                };
                frames += 1;
                bytes += frame.len();
                sink(frame);
                moved = true;
            }
            self.stats.queued(-frames, -(bytes as i64));
            if !moved {
                // The writer goes idle: what a burst grew goes back.
                l.release_idle();
                return if l.closed {
                    Drained::Finished
                } else {
                    Drained::Empty
                };
            }
        }
        self.space.notify_waiters();
        Drained::Frames
    }

    /// Gives back the memory of empty queues that a burst grew (a drain
    /// that finds nothing to send does it too).
    #[cfg(test)]
    pub(crate) fn release_idle(&self) {
        self.lock().release_idle();
    }

    /// Waits for frames to arrive (the single writer of a byte stream).
    pub(crate) async fn ready(&self) {
        self.ready[0].notified().await;
    }

    /// Waits for frames to arrive for the writer of `source`.
    pub(crate) async fn ready_for(&self, source: Source) {
        let i = match source {
            Source::All | Source::Control => 0,
            Source::Events(lane) if self.split => 1 + lane,
            Source::Events(_) => 0,
        };
        match self.ready.get(i) {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Queues the connection's last frames (its `Error` and `Goodbye`) and
    /// closes, under one lock. They are sent after everything queued, the
    /// event lane's frames included (on a byte stream a `SubscribeAck` and
    /// the events behind it wait there), and a reply that another thread
    /// finishes at the same moment is either queued before them or
    /// dropped: nothing is sent after the `Goodbye` (protocol 6.5).
    pub(crate) fn push_last(&self, frames: Bytes) {
        {
            let mut l = self.lock();
            if !l.closed && !frames.is_empty() {
                self.stats.queued(1, frames.len() as i64);
                l.last = Some(frames);
            }
            l.closed = true;
        }
        self.notify_all();
        self.space.notify_waiters();
    }

    /// Stops accepting frames; the writers send what is queued and finish.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify_all();
        self.space.notify_waiters();
    }

    /// Drops everything queued and closes (the connection is gone).
    pub(crate) fn abort(&self) {
        {
            let mut l = self.lock();
            l.closed = true;
            let mut frames = l.control.len() as i64;
            let mut bytes: usize = l.control.iter().map(Bytes::len).sum();
            for q in &l.events {
                frames += q.len() as i64;
                bytes += q.iter().map(|(f, _)| f.len()).sum::<usize>();
            }
            if let Some(last) = l.last.take() {
                frames += 1;
                bytes += last.len();
            }
            self.stats.queued(-frames, -(bytes as i64));
            l.control.clear();
            for q in &mut l.events {
                q.clear();
            }
            l.event_bytes.iter_mut().for_each(|b| *b = 0);
            l.event_count.iter_mut().for_each(|n| *n = 0);
        }
        self.notify_all();
        self.space.notify_waiters();
    }

    /// Frames queued in every lane now (for the metrics scrape).
    pub(crate) fn depth(&self) -> usize {
        let l = self.lock();
        l.control.len()
            + l.events.iter().map(VecDeque::len).sum::<usize>()
            + usize::from(l.last.is_some())
    }

    /// Whether the outbox was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The broker's counters (the writer counts slow-consumer cuts).
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lane_is_bounded_and_control_goes_first() {
        let o = Outbox::new(2, Arc::default());
        let e = Bytes::from_static(b"e");
        assert!(o.try_push_event(0, &e));
        assert!(o.try_push_event(0, &e));
        assert!(!o.try_push_event(0, &e), "third event exceeds capacity");
        o.push_control(Bytes::from_static(b"c"));
        let mut buf = BytesMut::new();
        assert_eq!(o.drain_into(&mut buf, 1 << 20), Drained::Frames);
        assert_eq!(&buf[..], b"cee");
        assert!(o.try_push_event(0, &e));
        o.close();
        buf.clear();
        assert_eq!(o.drain_into(&mut buf, 1 << 20), Drained::Frames);
        assert_eq!(o.drain_into(&mut buf, 1 << 20), Drained::Finished);
    }

    /// A burst's queue capacity goes back once drained, and handles are
    /// drained without copying, up to the byte budget.
    #[test]
    fn drained_queues_give_back_what_a_burst_grew() {
        let o = Outbox::new(4096, Arc::default());
        let e = Bytes::from_static(&[0u8; 100]);
        for _ in 0..2000 {
            assert!(o.try_push_event(0, &e));
        }
        let mut frames = Vec::new();
        assert_eq!(
            o.drain_frames(Source::All, &mut frames, 250, 10),
            Drained::Frames
        );
        assert_eq!(frames.len(), 3, "stops once the byte budget is reached");
        frames.clear();
        assert_eq!(
            o.drain_frames(Source::All, &mut frames, 1 << 20, 2),
            Drained::Frames
        );
        assert_eq!(frames.len(), 2, "stops at the frame count");
        assert_eq!(frames[0].as_ptr(), e.as_ptr(), "a handle, not a copy");
        frames.clear();
        o.release_idle();
        assert!(o.lock().events[0].capacity() >= 1997, "not empty: kept");
        while o.drain_frames(Source::All, &mut frames, 1 << 20, 1 << 20) == Drained::Frames {}
        assert_eq!(frames.len(), 1995);
        o.release_idle();
        assert!(o.lock().events[0].capacity() <= IDLE_QUEUE_CAPACITY);
        assert_eq!(o.depth(), 0);
    }

    #[tokio::test]
    async fn waiting_for_space_wakes_on_drain() {
        let o = Arc::new(Outbox::new(1, Arc::default()));
        assert!(o.try_push_event(0, &Bytes::from_static(b"x")));
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_event_space(0).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut buf = BytesMut::new();
        o.drain_into(&mut buf, 1024);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }

    #[tokio::test]
    async fn catch_up_waits_for_the_lane_to_hold_fewer_bytes() {
        let o = Arc::new(Outbox::new(64, Arc::default()));
        let big = Bytes::from(vec![0u8; 1000]);
        o.push_event_forced(0, big.clone());
        o.push_event_forced(0, big);
        // Two frames of 64 are far below capacity, but 2000 bytes are not
        // below 1500.
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_catchup_space(0, 1500).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "waits while the lane holds 2000 bytes"
        );
        let mut buf = BytesMut::new();
        assert_eq!(o.drain_into(&mut buf, 1), Drained::Frames);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken once 1000 bytes are left")
            .expect("joined");
        o.abort();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            o.wait_catchup_space(0, 0),
        )
        .await
        .expect("a closed outbox never makes catch-up wait");
    }

    #[test]
    fn split_lanes_fill_and_drain_independently() {
        let o = Outbox::split(2, 4, Arc::default());
        let rooms: Vec<RoomId> = (0..64)
            .map(|i| RoomId::new(format!("r{i}")).expect("room"))
            .collect();
        let lanes: std::collections::HashSet<usize> = rooms.iter().map(|r| o.lane_of(r)).collect();
        assert_eq!(lanes.len(), 4, "64 rooms spread over every lane");
        let (a, b) = (0, 1);
        let e = Bytes::from_static(b"e");
        assert!(o.try_push_event(a, &e) && o.try_push_event(a, &e));
        assert!(!o.try_push_event(a, &e), "lane a is full");
        assert!(o.try_push_event(b, &e), "lane b is not affected");
        o.push_subscribe_ack(Bytes::from_static(b"s"));
        let mut buf = BytesMut::new();
        assert_eq!(o.drain(Source::Control, &mut buf, 1 << 20), Drained::Frames);
        assert_eq!(&buf[..], b"s", "split: SubscribeAck is a control frame");
        buf.clear();
        assert_eq!(
            o.drain(Source::Events(b), &mut buf, 1 << 20),
            Drained::Frames
        );
        assert_eq!(&buf[..], b"e");
        assert_eq!(
            o.drain(Source::Events(2), &mut buf, 1 << 20),
            Drained::Empty
        );
        o.close();
        assert_eq!(
            o.drain(Source::Events(b), &mut buf, 1 << 20),
            Drained::Finished
        );
        buf.clear();
        assert_eq!(
            o.drain(Source::Events(a), &mut buf, 1 << 20),
            Drained::Frames
        );
        assert_eq!(&buf[..], b"ee");
    }

    #[tokio::test]
    async fn wakes_reach_only_the_marked_lanes() {
        let o = Outbox::split(8, 2, Arc::default());
        assert!(o.try_push_event(1, &Bytes::from_static(b"x")));
        assert!(o.mark_wake(1));
        assert!(!o.mark_wake(1), "one wake per commit");
        o.wake();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            o.ready_for(Source::Events(1)),
        )
        .await
        .expect("lane 1 woken");
        let lane0 = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            o.ready_for(Source::Events(0)),
        )
        .await;
        assert!(lane0.is_err(), "lane 0 was not woken");
    }
}
