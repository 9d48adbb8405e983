//! The sequencer's side of retention: trimming a room's log (and moving its
//! `first` bound) in commit order.

use std::sync::Arc;

use confab_codec::{RoomId, Seq};
use tracing::warn;

use super::core::Core;
use super::dedup::DedupKey;
use crate::storage::IdemKey;

impl Core {
    /// Deletes a room's entries below `before` (one range delete) and the
    /// idempotency entries of those messages (`forget`, read by the
    /// retention sweep), and moves its `first` bound, so that subscriptions
    /// stamped after this point report the new bound. The head is never
    /// trimmed.
    pub(super) fn trim(&mut self, room: &RoomId, before: Seq, forget: &[(Arc<str>, u64)]) {
        // The sweep never asks past the head it read, and heads only grow;
        // a room not loaded here is trimmed without loading it (its bounds
        // are read from the log when it is first used).
        let before = match self.rooms.get(room) {
            Some(r) => Seq(before.0.min(r.head)),
            None => before,
        };
        let keys: Vec<IdemKey<'_>> = forget
            .iter()
            .map(|(sender, id)| IdemKey {
                sender,
                client_msg_id: *id,
            })
            .collect();
        match self.log.trim(room, before, &keys, self.cfg.durability) {
            Ok(()) => {
                // A retry of a trimmed message is a new message: the window
                // in memory forgets them too.
                if let Some(r) = self.registry.get(room) {
                    // Catch-up batches of trimmed entries are not shared again.
                    r.replay.forget_below(before.0);
                    for (sender, id) in forget {
                        self.idem.forget(&DedupKey {
                            room: r.clone(),
                            sender: sender.clone(),
                            client_msg_id: *id,
                        });
                    }
                }
                if let Some(r) = self.rooms.get_mut(room) {
                    r.first = r.first.max(before.0);
                }
                // Range deletes made by retention.
                metrics::counter!("confab_retention_trims_total").increment(1);
            }
            Err(e) => warn!(%room, error = %e, "retention: trim failed"),
        }
    }
}
