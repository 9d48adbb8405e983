//! Counters the broker keeps about itself, read by tests, the bench and
//! the metrics exporter (see `crate::metrics`).
//!
//! Everything here is cheap on the hot path: relaxed atomics, and a few
//! histogram handles registered once at start (a lock-free push per
//! sample, no lookup, no lock). Gauges are computed at scrape time.

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
    /// Fan-out messages (a commit's events, a receipt) the sequencer
    /// carried out itself, the fan-out thread being idle.
    pub(crate) fanout_inline: AtomicU64,
    /// The time of the sequencer's last completed step (µs since the
    /// epoch): every commit stamped at or before it is visible in storage.
    /// The cursor an inbox sync hands out.
    pub(crate) committed_us: AtomicU64,
    /// Events handed to device outboxes (live and from catch-up).
    pub(crate) delivered: AtomicU64,
    /// Catch-up batches read from the log.
    pub(crate) catchup_read: AtomicU64,
    /// Catch-up batches handed over from another device of the room.
    pub(crate) catchup_shared: AtomicU64,
    /// Frame bodies the writers compressed (protocol 3.6): bytes before.
    pub(crate) compressed_in: AtomicU64,
    /// ... and after compression.
    pub(crate) compressed_out: AtomicU64,
    /// Compressed frame bodies received from clients: bytes as received.
    pub(crate) inflated_in: AtomicU64,
    /// ... and after decompression.
    pub(crate) inflated_out: AtomicU64,
    /// Open sockets per transport, indexed by [`Transport`].
    pub(crate) sockets: [AtomicI64; 5],
    /// Histograms, registered with the metrics recorder at start.
    pub(crate) hist: Histograms,
}

/// The listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp = 0,
    Tls = 1,
    Quic = 2,
    WebSocket = 3,
    WebSocketTls = 4,
}

impl Transport {
    /// Every transport, in index order.
    pub(crate) const ALL: [Transport; 5] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Quic,
        Transport::WebSocket,
        Transport::WebSocketTls,
    ];

    /// The label value in metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
            Transport::WebSocket => "ws",
            Transport::WebSocketTls => "wss",
        }
    }
}

/// Pre-registered histogram handles (no-ops until a recorder is installed
/// before the broker starts).
#[derive(Debug, Clone)]
pub(crate) struct Histograms {
    /// Publish received by the session to its ack queued, seconds.
    pub(crate) publish_ack: metrics::Histogram,
    /// Publish received to the event queued for every live subscriber.
    pub(crate) publish_deliver: metrics::Histogram,
    /// Log entries per group commit.
    pub(crate) commit_batch: metrics::Histogram,
    /// Duration of the storage write of one group commit, seconds.
    pub(crate) commit_seconds: metrics::Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            publish_ack: metrics::Histogram::noop(),
            publish_deliver: metrics::Histogram::noop(),
            commit_batch: metrics::Histogram::noop(),
            commit_seconds: metrics::Histogram::noop(),
        }
    }
}

impl Histograms {
    /// Handles from the global recorder installed now (no-ops if none is).
    pub(crate) fn register() -> Self {
        Self {
            // Session receipt of a Publish to its PublishAck queued.
            publish_ack: metrics::histogram!("confab_publish_ack_seconds"),
            // Session receipt of a Publish to the event in every live outbox.
            publish_deliver: metrics::histogram!("confab_publish_deliver_seconds"),
            // Log entries per group commit.
            commit_batch: metrics::histogram!("confab_commit_batch_size"),
            // One group commit's storage write (and fsync, in fsync mode).
            commit_seconds: metrics::histogram!("confab_commit_seconds"),
        }
    }
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
    /// Group commits (or receipt events) whose deliveries the sequencer
    /// thread made itself, the fan-out thread being idle
    /// (`delivery.inline_fanout`).
    pub fanout_inline: u64,
    /// Events handed to device outboxes, live or replayed by catch-up.
    pub delivered: u64,
    /// Catch-up batches read from the log.
    pub catchup_batches_read: u64,
    /// Catch-up batches that a device got from another device of the same
    /// room that had just read them, instead of reading the log.
    pub catchup_batches_shared: u64,
    /// Bytes of frame bodies compressed for clients, before compression.
    pub compressed_in: u64,
    /// The same bodies after compression (what went on the wire).
    pub compressed_out: u64,
    /// Bytes of compressed frame bodies received from clients.
    pub inflated_in: u64,
    /// The same bodies after decompression.
    pub inflated_out: u64,
    /// zstd contexts held now for compressed connections (at most
    /// `compression.max_contexts`).
    pub compression_contexts: u64,
    /// zstd contexts asked for while none was free, since the start.
    pub compression_contexts_refused: u64,
}

impl Stats {
    /// Counters whose histograms go to the global metrics recorder.
    pub(crate) fn with_metrics() -> Self {
        Self {
            hist: Histograms::register(),
            ..Self::default()
        }
    }

    pub(crate) fn snapshot(&self) -> BrokerStats {
        BrokerStats {
            connections: self.connections.load(Ordering::Relaxed),
            queued_frames: self.queued_frames.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
            lag_switches: self.lag_switches.load(Ordering::Relaxed),
            slow_consumer_disconnects: self.slow_consumer_disconnects.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            fanout_inline: self.fanout_inline.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            catchup_batches_read: self.catchup_read.load(Ordering::Relaxed),
            catchup_batches_shared: self.catchup_shared.load(Ordering::Relaxed),
            compressed_in: self.compressed_in.load(Ordering::Relaxed),
            compressed_out: self.compressed_out.load(Ordering::Relaxed),
            inflated_in: self.inflated_in.load(Ordering::Relaxed),
            inflated_out: self.inflated_out.load(Ordering::Relaxed),
            compression_contexts: 0,
            compression_contexts_refused: 0,
        }
    }

    pub(crate) fn queued(&self, frames: i64, bytes: i64) {
        self.queued_frames.fetch_add(frames, Ordering::Relaxed);
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts an open socket of `transport` until the guard is dropped.
    pub(crate) fn socket(self: &std::sync::Arc<Self>, transport: Transport) -> SocketGuard {
        self.sockets[transport as usize].fetch_add(1, Ordering::Relaxed);
        SocketGuard {
            stats: self.clone(),
            transport,
        }
    }
}

/// Decrements a transport's open-socket count when dropped.
#[derive(Debug)]
pub(crate) struct SocketGuard {
    stats: std::sync::Arc<Stats>,
    transport: Transport,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.stats.sockets[self.transport as usize].fetch_sub(1, Ordering::Relaxed);
    }
}
