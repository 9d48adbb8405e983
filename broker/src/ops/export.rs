//! Metrics computed at scrape time from the broker's counters and rooms,
//! so that the message path maintains nothing for them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use metrics::{counter, gauge, histogram};

use crate::fanout::Outbox;
use crate::shared::Shared;
use crate::stats::Transport;

/// Brings every scrape-time series up to date. Walks each loaded room's
/// subscriber list once (a lock-free snapshot per room) and takes each
/// device outbox's lock once, briefly.
pub(crate) fn export(shared: &Shared) {
    let s = &shared.stats;
    for t in Transport::ALL {
        gauge!("confab_connections", "transport" => t.label())
            .set(s.sockets[t as usize].load(Ordering::Relaxed) as f64);
    }
    gauge!("confab_sessions").set(s.connections.load(Ordering::Relaxed) as f64);
    gauge!("confab_handshakes_pending").set(shared.admission.pending() as f64);
    gauge!("confab_admission_addresses").set(shared.admission.addresses() as f64);
    counter!("confab_messages_in_total").absolute(s.published.load(Ordering::Relaxed));
    counter!("confab_messages_out_total").absolute(s.delivered.load(Ordering::Relaxed));
    counter!("confab_catchup_batches_total", "source" => "log")
        .absolute(s.catchup_read.load(Ordering::Relaxed));
    counter!("confab_catchup_batches_total", "source" => "shared")
        .absolute(s.catchup_shared.load(Ordering::Relaxed));
    counter!("confab_commits_total").absolute(s.commits.load(Ordering::Relaxed));
    counter!("confab_fanout_inline_total").absolute(s.fanout_inline.load(Ordering::Relaxed));
    counter!("confab_lag_switches_total").absolute(s.lag_switches.load(Ordering::Relaxed));
    counter!("confab_slow_consumer_disconnects_total")
        .absolute(s.slow_consumer_disconnects.load(Ordering::Relaxed));
    counter!("confab_compression_bytes_in_total").absolute(s.compressed_in.load(Ordering::Relaxed));
    counter!("confab_compression_bytes_out_total")
        .absolute(s.compressed_out.load(Ordering::Relaxed));
    counter!("confab_decompression_bytes_in_total").absolute(s.inflated_in.load(Ordering::Relaxed));
    counter!("confab_decompression_bytes_out_total")
        .absolute(s.inflated_out.load(Ordering::Relaxed));
    gauge!("confab_compression_contexts").set(shared.compression.live() as f64);
    counter!("confab_compression_contexts_refused_total")
        .absolute(shared.compression.refused() as u64);
    gauge!("confab_client_reads").set(shared.reads.busy() as f64);
    gauge!("confab_queued_frames").set(s.queued_frames.load(Ordering::Relaxed) as f64);
    gauge!("confab_queued_bytes").set(s.queued_bytes.load(Ordering::Relaxed) as f64);
    let space = shared.log.space();
    gauge!("confab_storage_full").set(if space.full { 1.0 } else { 0.0 });
    counter!("confab_storage_full_refusals_total").absolute(space.refused_writes);

    let rooms = shared.rooms.all();
    gauge!("confab_rooms").set(rooms.len() as f64);
    let mut subscriptions = 0usize;
    // Each device's outbox once, and whether any of its rooms catches up.
    let mut devices: HashMap<*const Outbox, (Arc<Outbox>, bool)> = HashMap::new();
    for room in &rooms {
        let subs = room.subscribers();
        subscriptions += subs.len();
        for sub in subs.iter() {
            let entry = devices
                .entry(Arc::as_ptr(&sub.outbox))
                .or_insert_with(|| (sub.outbox.clone(), false));
            entry.1 |= sub.is_catching_up();
        }
    }
    gauge!("confab_subscriptions").set(subscriptions as f64);
    let depth = histogram!("confab_device_queue_depth");
    let mut max = 0usize;
    let mut lagging = 0usize;
    for (outbox, catching_up) in devices.values() {
        let d = outbox.depth();
        max = max.max(d);
        depth.record(d as f64);
        lagging += usize::from(*catching_up);
    }
    gauge!("confab_device_queue_depth_max").set(max as f64);
    gauge!("confab_lagging_devices").set(lagging as f64);
}
