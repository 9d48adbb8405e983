//! Counters the broker keeps about itself, read by tests, the bench and
//! (later) the metrics exporter.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Live counters, updated with relaxed atomics on the hot path.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicI64,
    pub(crate) queued_frames: AtomicI64,
    pub(crate) queued_bytes: AtomicI64,
    pub(crate) lag_switches: AtomicU64,
    pub(crate) slow_consumer_disconnects: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) commits: AtomicU64,
}

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Open sessions (after the handshake).
    pub connections: i64,
    /// Frames waiting in device outboxes.
    pub queued_frames: i64,
    /// Bytes of those frames (shared event buffers counted once per queue).
    pub queued_bytes: i64,
    /// Times a device's room was switched from live to catch-up.
    pub lag_switches: u64,
    /// Devices disconnected because their socket accepted nothing in time.
    pub slow_consumer_disconnects: u64,
    /// Messages committed.
    pub published: u64,
    /// Group commits.
    pub commits: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> BrokerStats {
        BrokerStats {
            connections: self.connections.load(Ordering::Relaxed),
            queued_frames: self.queued_frames.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
            lag_switches: self.lag_switches.load(Ordering::Relaxed),
            slow_consumer_disconnects: self.slow_consumer_disconnects.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn queued(&self, frames: i64, bytes: i64) {
        self.queued_frames.fetch_add(frames, Ordering::Relaxed);
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
