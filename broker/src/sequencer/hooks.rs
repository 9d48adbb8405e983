//! The sequencer's side of retention and offline push: trimming a room's
//! log (and moving its `first` bound) in commit order, and offering push
//! jobs for committed messages.

use confab_codec::{MessageKind, RoomId, Seq};
use tracing::warn;

use super::{PublishReq, Sequencer};

impl Sequencer {
    /// Deletes a room's entries below `before` (one range delete) and moves
    /// its `first` bound, so that subscriptions stamped after this point
    /// report the new bound. The head is never trimmed.
    pub(super) fn trim(&mut self, room: &RoomId, before: Seq) {
        // The sweep never asks past the head it read, and heads only grow;
        // a room not loaded here is trimmed without loading it (its bounds
        // are read from the log when it is first used).
        let before = match self.rooms.get(room) {
            Some(r) => Seq(before.0.min(r.head)),
            None => before,
        };
        match self.log.trim(room, before, self.cfg.durability) {
            Ok(()) => {
                if let Some(r) = self.rooms.get_mut(room) {
                    r.first = r.first.max(before.0);
                }
                // Range deletes made by retention.
                metrics::counter!("confab_retention_trims_total").increment(1);
            }
            Err(e) => warn!(%room, error = %e, "retention: trim failed"),
        }
    }

    /// Offers push jobs for a committed message: content kinds (messages and
    /// application kinds, not edits, deletes or reactions) of managed rooms,
    /// for members with no device online.
    pub(super) fn offer_push(&self, req: &PublishReq, seq: Seq) {
        let Some(push) = &self.push else { return };
        if req.kind != MessageKind::MESSAGE && req.kind < MessageKind::FIRST_CUSTOM {
            return;
        }
        let Some(state) = self.rooms.get(&req.room).and_then(|r| r.state.as_ref()) else {
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
