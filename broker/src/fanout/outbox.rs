//! A device's bounded outbound queue, drained by its connection's writer.
//!
//! Two lanes: `control` holds replies (acks, errors, pongs, history pages),
//! bounded by the number of requests a connection may have in flight;
//! `events` holds room events, bounded by `queue_capacity`. A live push
//! into a full `events` lane fails instead of waiting, which is what
//! switches a room to catch-up (see `subscription.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::stats::Stats;

#[derive(Debug, Default)]
struct Lanes {
    control: VecDeque<Bytes>,
    events: VecDeque<Bytes>,
    closed: bool,
}

/// One device's outbound queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    lanes: Mutex<Lanes>,
    /// Wakes the writer when frames arrive.
    ready: Notify,
    /// Wakes producers waiting for room in a lane.
    space: Notify,
    capacity: usize,
    /// Set while a producer has pushed without waking the writer yet; lets
    /// the fan-out wake each device once per commit instead of per event.
    wake_pending: AtomicBool,
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

impl Outbox {
    pub(crate) fn new(capacity: usize, stats: Arc<Stats>) -> Self {
        Self {
            stats,
            lanes: Mutex::new(Lanes::default()),
            ready: Notify::new(),
            space: Notify::new(),
            capacity,
            wake_pending: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        // The lanes are consistent between statements, so a poisoned lock
        // (a panic elsewhere while holding it) leaves nothing half-done.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
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
        self.ready.notify_one();
    }

    /// Queues a room event if the lane has room, without waking the writer
    /// (call [`Outbox::wake`] or [`Outbox::mark_wake`]). Returns false if the
    /// lane is full; closed outboxes accept and drop.
    pub(crate) fn try_push_event(&self, frame: &Bytes) -> bool {
        let mut l = self.lock();
        if l.closed {
            return true;
        }
        if l.events.len() >= self.capacity {
            return false;
        }
        self.stats.queued(1, frame.len() as i64);
        l.events.push_back(frame.clone());
        true
    }

    /// Queues an event-lane frame even beyond capacity: for frames that
    /// must keep their place among events (SubscribeAck, Lagging, CaughtUp,
    /// and catch-up batches whose producer already waited for space).
    pub(crate) fn push_event_forced(&self, frame: Bytes) {
        {
            let mut l = self.lock();
            if l.closed {
                return;
            }
            self.stats.queued(1, frame.len() as i64);
            l.events.push_back(frame);
        }
        self.ready.notify_one();
    }

    /// Returns true the first time it is called after a wake, so the caller
    /// adds this outbox to its list of outboxes to wake.
    pub(crate) fn mark_wake(&self) -> bool {
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Wakes the writer.
    pub(crate) fn wake(&self) {
        self.wake_pending.store(false, Ordering::Release);
        self.ready.notify_one();
    }

    /// Waits until the event lane is below capacity (or the outbox closed).
    pub(crate) async fn wait_event_space(&self) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let l = self.lock();
                if l.closed || l.events.len() < self.capacity {
                    return;
                }
            }
            notified.await;
        }
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

    /// Moves queued frames into `buf`, control first, until `buf` holds at
    /// least `max_bytes` or both lanes are empty.
    pub(crate) fn drain_into(&self, buf: &mut BytesMut, max_bytes: usize) -> Drained {
        let mut moved = false;
        {
            let mut l = self.lock();
            let (mut frames, mut bytes) = (0i64, 0i64);
            while buf.len() < max_bytes {
                let Some(frame) = l.control.pop_front().or_else(|| l.events.pop_front()) else {
                    break;
                };
                buf.extend_from_slice(&frame);
                frames += 1;
                bytes += frame.len() as i64;
                moved = true;
            }
            self.stats.queued(-frames, -bytes);
            if !moved {
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

    /// Waits for frames to arrive.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Stops accepting frames; the writer sends what is queued and finishes.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.space.notify_waiters();
    }

    /// Drops everything queued and closes (the connection is gone).
    pub(crate) fn abort(&self) {
        {
            let mut l = self.lock();
            l.closed = true;
            let frames = (l.control.len() + l.events.len()) as i64;
            let bytes: usize = l
                .control
                .iter()
                .chain(l.events.iter())
                .map(Bytes::len)
                .sum();
            self.stats.queued(-frames, -(bytes as i64));
            l.control.clear();
            l.events.clear();
        }
        self.ready.notify_one();
        self.space.notify_waiters();
    }

    /// Whether the outbox was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lane_is_bounded_and_control_goes_first() {
        let o = Outbox::new(2, Arc::default());
        let e = Bytes::from_static(b"e");
        assert!(o.try_push_event(&e));
        assert!(o.try_push_event(&e));
        assert!(!o.try_push_event(&e), "third event exceeds capacity");
        o.push_control(Bytes::from_static(b"c"));
        let mut buf = BytesMut::new();
        assert_eq!(o.drain_into(&mut buf, 1 << 20), Drained::Frames);
        assert_eq!(&buf[..], b"cee");
        assert!(o.try_push_event(&e));
        o.close();
        buf.clear();
        assert_eq!(o.drain_into(&mut buf, 1 << 20), Drained::Frames);
        assert_eq!(o.drain_into(&mut buf, 1 << 20), Drained::Finished);
    }

    #[tokio::test]
    async fn waiting_for_space_wakes_on_drain() {
        let o = Arc::new(Outbox::new(1, Arc::default()));
        assert!(o.try_push_event(&Bytes::from_static(b"x")));
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_event_space().await })
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
}
