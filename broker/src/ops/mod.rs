//! Operations: the Prometheus recorder, the metrics exported at scrape
//! time, and the HTTP endpoint that serves `/metrics`, `/healthz`,
//! `/readyz` and the admin endpoints (`metrics.listen`).
//!
//! Cost on the message path: the counters are the relaxed atomics of
//! `crate::stats`, read only when Prometheus scrapes; the latency and
//! commit histograms are handles registered once at start, each sample a
//! lock-free push that the exporter aggregates at scrape or upkeep time.
//! Gauges (rooms, subscriptions, queue depths, lagging devices) are
//! computed by walking the rooms at scrape time, not maintained per
//! message.

mod export;
mod http;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::warn;

pub(crate) use export::export;
pub(crate) use http::{bind, spawn};

/// Latency buckets, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Count buckets (batch sizes, queue depths): powers of four.
const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// The process's Prometheus recorder, installed by the first broker that
/// serves metrics; `None` if the embedding application had already
/// installed a recorder of its own (its exporter then sees our series).
static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global `metrics`
/// recorder, once, and returns its handle.
pub(crate) fn install_recorder() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("confab_commit_batch_size".into()),
                        COUNT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("confab_device_queue_depth".into()),
                        COUNT_BUCKETS,
                    )
                });
            let installed = builder.and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    warn!(error = %e, "not installing the Prometheus recorder; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// HELP lines for the series the broker exports.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "confab_connections",
        "Open sockets by transport (tcp, tls, quic), including ones still in the handshake."
    );
    describe_gauge!("confab_sessions", "Sessions past the handshake.");
    describe_gauge!(
        "confab_handshakes_pending",
        "Connections accepted and not yet welcomed (admission.max_handshakes at most)."
    );
    describe_gauge!(
        "confab_admission_addresses",
        "Client addresses (IPv6: /64 networks) with at least one open connection."
    );
    describe_counter!(
        "confab_admission_refused_total",
        "Connections refused by admission control, by reason (max_connections, per_ip_connections, per_ip_handshakes) and transport; TLS and QUIC ones before their handshake."
    );
    describe_counter!(
        "confab_handshakes_evicted_total",
        "Pending handshakes closed to make room for a newer connection when admission.max_handshakes were pending, by transport."
    );
    describe_gauge!("confab_rooms", "Rooms the broker has loaded since start.");
    describe_gauge!(
        "confab_subscriptions",
        "Device subscriptions to rooms, socket and in-process."
    );
    describe_counter!(
        "confab_messages_in_total",
        "Log entries committed (publishes and server-written entries)."
    );
    describe_counter!(
        "confab_messages_out_total",
        "Events handed to device outboxes, live or replayed from the log."
    );
    describe_counter!("confab_commits_total", "Group commits.");
    describe_counter!(
        "confab_fanout_inline_total",
        "Group commits (and receipt events) delivered by the sequencer thread itself while the fan-out thread was idle (delivery.inline_fanout)."
    );
    describe_gauge!(
        "confab_storage_full",
        "1 while the storage refuses writes because its disk is full (clients get StorageFull), else 0."
    );
    describe_counter!(
        "confab_storage_full_refusals_total",
        "Storage writes (group commits, trims, other writes) refused because the disk was full."
    );
    describe_histogram!(
        "confab_publish_ack_seconds",
        Unit::Seconds,
        "Publish received by the session to its PublishAck queued (includes the group commit)."
    );
    describe_histogram!(
        "confab_publish_deliver_seconds",
        Unit::Seconds,
        "Publish received to the event queued for every live subscriber."
    );
    describe_histogram!("confab_commit_batch_size", "Log entries per group commit.");
    describe_histogram!(
        "confab_commit_seconds",
        Unit::Seconds,
        "Storage write of one group commit (with fsync in fsync mode)."
    );
    describe_histogram!(
        "confab_device_queue_depth",
        "Frames queued per device, sampled for every subscribed device at each scrape."
    );
    describe_gauge!(
        "confab_device_queue_depth_max",
        "Deepest device queue at the last scrape."
    );
    describe_gauge!(
        "confab_lagging_devices",
        "Devices with at least one room being caught up from the log."
    );
    describe_counter!(
        "confab_lag_switches_total",
        "Times a device's room switched from live delivery to catch-up."
    );
    describe_counter!(
        "confab_slow_consumer_disconnects_total",
        "Devices cut because their connection accepted no byte for delivery.slow_consumer_timeout_ms (counted at the cut, before the Goodbye)."
    );
    describe_counter!(
        "confab_compression_bytes_in_total",
        "Bytes of frame bodies the broker compressed for clients (protocol 3.6), before compression."
    );
    describe_counter!(
        "confab_compression_bytes_out_total",
        "The same frame bodies after compression: what they took on the wire."
    );
    describe_counter!(
        "confab_decompression_bytes_in_total",
        "Bytes of compressed frame bodies received from clients."
    );
    describe_counter!(
        "confab_decompression_bytes_out_total",
        "The same frame bodies after decompression."
    );
    describe_gauge!(
        "confab_compression_contexts",
        "zstd contexts held for compressed connections (at most compression.max_contexts)."
    );
    describe_counter!(
        "confab_compression_contexts_refused_total",
        "zstd contexts asked for when compression.max_contexts were taken: a client not granted compression, or a stream's batch sent uncompressed."
    );
    describe_gauge!(
        "confab_queued_frames",
        "Frames waiting in all device outboxes."
    );
    describe_gauge!(
        "confab_queued_bytes",
        "Bytes waiting in all device outboxes."
    );
    describe_counter!("confab_disconnects_total", "Sessions ended, by reason.");
    describe_counter!(
        "confab_auth_failures_total",
        "Hello or RefreshToken tokens refused."
    );
    describe_counter!(
        "confab_cluster_typing_dropped_total",
        "Cluster mode: typing changes of this node's devices not sent to the other nodes (the relay queue was full)."
    );
    describe_counter!(
        "confab_cluster_presence_syncs_total",
        "Cluster mode: presence snapshots asked of other nodes (a node joined, restarted, or messages were lost)."
    );
    describe_counter!(
        "confab_cluster_ignored_total",
        "Cluster mode: typing or presence from other nodes ignored, by kind: undecodable messages, users beyond a node's share."
    );
}
