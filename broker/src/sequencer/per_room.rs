//! What the core does for a storage that writes each room on its own
//! (cluster mode, docs/cluster.md, "The seam in the broker"): a group
//! commit that fails for some rooms only, and committed entries of rooms
//! that another node's writer stored in the shared log. Single-node mode
//! never takes these paths.

use bytes::Bytes;
use confab_codec::{RoomId, Seq};

use super::core::{Core, Halt, Outcome};
use super::reads::Need;
use crate::storage::StorageError;

impl Core {
    /// After a commit that stored every room but `failed` (cluster mode,
    /// [`StorageError::Rooms`]): the outcomes of the failed rooms go through
    /// [`Self::commit_failed`] (refused, those rooms read again, their
    /// subscriptions stamped again), without recovery (another writer may
    /// have written them); every other outcome stands. The failed rooms'
    /// outcomes come last: nothing of theirs reaches the fan-out before a
    /// re-read.
    pub(super) fn rooms_failed(
        &mut self,
        e: &StorageError,
        outcomes: Vec<Outcome>,
        old_heads: &[(RoomId, u64)],
    ) -> Vec<Outcome> {
        let StorageError::Rooms { failed, .. } = e else {
            return self.commit_failed(e, outcomes, old_heads, true);
        };
        let hit = |id: &RoomId| failed.contains(id);
        let (mut kept, mine): (Vec<Outcome>, Vec<Outcome>) =
            outcomes.into_iter().partition(|o| match o {
                Outcome::Stored { req, .. }
                | Outcome::Duplicate { req, .. }
                | Outcome::Rejected { req, .. } => !hit(&req.room),
                Outcome::Internal { room, .. }
                | Outcome::Receipt { room, .. }
                | Outcome::Recovered { room, .. }
                | Outcome::Evict { room, .. } => !hit(&room.id),
                Outcome::Subscribe(cmd) => !cmd.items.iter().any(|i| hit(&i.sub.room.id)),
                Outcome::Unsubscribe(subs) => !subs.iter().any(|s| hit(&s.room.id)),
                Outcome::RoomReply { .. } | Outcome::Meta { .. } => true,
            });
        // A cluster log refuses a room whose group repeats a publish its
        // writer knows (a retry judged new with a mark from before the
        // room was taken over): the devices' marks are read again, so that
        // their retries are looked up.
        for o in &mine {
            if let Outcome::Stored {
                dedup: Some(key), ..
            } = o
            {
                self.idem.forget_mark(&key.sender);
            }
        }
        let heads: Vec<(RoomId, u64)> = old_heads
            .iter()
            .filter(|(id, _)| hit(id))
            .cloned()
            .collect();
        // The rooms of the failed part only: the others' staged state
        // (touched managed rooms, markers) is committed.
        let touched = std::mem::take(&mut self.touched);
        self.touched = touched.iter().filter(|id| hit(id)).cloned().collect();
        kept.extend(self.commit_failed(e, mine, &heads, false));
        kept
    }

    /// Hands the entries of a followed room that are above its head here
    /// to the fan-out (as `Recovered`: nothing is written) and moves the
    /// head; the others are known already and dropped. Gives the request
    /// back if the room must be read first.
    pub(super) fn followed(
        &mut self,
        room: RoomId,
        events: Vec<(Seq, Bytes)>,
        outcomes: &mut Vec<Outcome>,
    ) -> Option<(RoomId, Vec<(Seq, Bytes)>)> {
        // Following is not a use: a room nobody here follows or writes is
        // dropped when idle, and stops being followed.
        let used = self.rooms.get(&room).map(|r| r.last_used);
        let r = match self.room(&room) {
            Ok(r) => r,
            Err(Halt::Wait) => return Some((room, events)),
            // The read failed: read again, the room waits.
            Err(Halt::Refuse(..)) => {
                self.reads.take(Need::Room(room.clone()));
                return Some((room, events));
            }
        };
        if let Some(used) = used {
            r.last_used = used;
        }
        let arc = r.room.clone();
        for (seq, frame) in events {
            if seq.0 > r.head {
                r.head = seq.0;
                outcomes.push(Outcome::Recovered {
                    room: arc.clone(),
                    seq,
                    frame,
                });
            }
        }
        None
    }
}
