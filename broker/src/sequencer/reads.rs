//! Reads the sequencer needs, made off its thread.
//!
//! The writer thread only sequences and commits. When the core meets a
//! request that needs something it does not hold in memory (a room used for
//! the first time, a device's high-water mark, an index entry for a retry,
//! the target of an edit, a receipt marker, a user's room count), it parks
//! the request and asks for a [`Need`]; reader threads answer with a
//! [`Loaded`], and the core takes the request up again in its next step.
//!
//! Why the answers stay true until they are used: a parked request blocks
//! its rooms (later requests for them park behind it, in arrival order), so
//! nothing writes a room while a read of that room is on its way. What a
//! read keyed by something else may miss is dropped and read again (see
//! `Reads::stale`):
//! - a user's room count changes with a membership in another room;
//! - a device's mark and its index entries change with any publish of the
//!   device that is staged while the answer waits. That happens when the
//!   request that asked goes another way than the one it asked for (its
//!   mark read again after a per-room refusal in cluster mode, or dropped
//!   from the cache, judges it fresh): the answer would stay behind and
//!   answer a later retry with what storage held before the publish (found
//!   by the property test with per-room refusals).

use std::sync::Arc;

use confab_codec::{EventRecord, RoomId, Seq, UserId};
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::{FxHashMap, FxHashSet};

use super::references::Target;
use crate::rooms::membership::RoomState;
use crate::storage::meta::{self, markers::MarkerKey};
use crate::storage::{IdemKey, LogBounds, Original, RoomLog, StorageError};

/// Something the core must read before it can go on with a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Need {
    /// A room's log bounds and, for a managed room, its record and members.
    Room(RoomId),
    /// A device's high-water mark (`user \0 device`).
    Mark(Arc<str>),
    /// The original of a publish, from the idempotency index.
    Original {
        room: RoomId,
        sender: Arc<str>,
        client_msg_id: u64,
    },
    /// The sender and kind of an entry that an edit, delete or reaction
    /// targets.
    Target { room: RoomId, seq: u64 },
    /// A delivered or read marker.
    Marker(MarkerKey),
    /// How many managed rooms a user is a member of.
    Joined(UserId),
}

impl Need {
    fn kind(&self) -> &'static str {
        match self {
            Need::Room(_) => "room",
            Need::Mark(_) => "mark",
            Need::Original { .. } => "original",
            Need::Target { .. } => "target",
            Need::Marker(_) => "marker",
            Need::Joined(_) => "joined",
        }
    }
}

/// A room as read from storage.
#[derive(Debug)]
pub(crate) struct LoadedRoom {
    pub(crate) bounds: LogBounds,
    pub(crate) state: Option<RoomState>,
}

/// The answer to a [`Need`] of the same kind.
#[derive(Debug)]
pub(crate) enum Answer {
    Room(LoadedRoom),
    Mark(u64),
    Original(Option<Original>),
    Target(Option<Target>),
    Marker(u64),
    Joined(usize),
}

/// A read made: what was asked and what storage said.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) need: Need,
    pub(crate) answer: Result<Answer, StorageError>,
}

/// Makes one read.
///
/// # Errors
/// What storage says.
pub(crate) fn read(log: &dyn RoomLog, need: &Need) -> Result<Answer, StorageError> {
    metrics::counter!("confab_sequencer_reads_total", "kind" => need.kind()).increment(1);
    Ok(match need {
        Need::Room(room) => Answer::Room(LoadedRoom {
            bounds: log.bounds(room)?,
            state: RoomState::load(log, room)?,
        }),
        Need::Mark(sender) => Answer::Mark(log.high_water(sender)?),
        Need::Original {
            room,
            sender,
            client_msg_id,
        } => Answer::Original(log.original(
            room,
            IdemKey {
                sender,
                client_msg_id: *client_msg_id,
            },
        )?),
        Need::Target { room, seq } => Answer::Target(read_target(log, room, Seq(*seq))?),
        Need::Marker(key) => Answer::Marker(meta::markers::get(log, key)?),
        Need::Joined(user) => Answer::Joined(meta::rooms::joined_count(log, user)?),
    })
}

fn read_target(log: &dyn RoomLog, room: &RoomId, seq: Seq) -> Result<Option<Target>, StorageError> {
    let Some(rec) = log.read_range(room, seq, seq, 1, usize::MAX)?.pop() else {
        return Ok(None);
    };
    let ev = EventRecord::decode(rec.bytes).map_err(|_| StorageError::Corrupt {
        room: room.to_string(),
        seq: seq.0,
    })?;
    Ok(Some(Target {
        sender: ev.sender,
        kind: ev.kind,
    }))
}

/// A reader thread: answers needs until the sequencer hangs up.
///
/// # Errors
/// Never: a reader ends normally when either side of it is gone (the
/// sequencer is stopping); the type fits the supervisor.
pub(crate) fn run_reader(
    log: Arc<dyn RoomLog>,
    needs: Receiver<Need>,
    loaded: Sender<Loaded>,
) -> Result<(), std::convert::Infallible> {
    for need in needs {
        let answer = read(log.as_ref(), &need);
        if loaded.send(Loaded { need, answer }).is_err() {
            break;
        }
    }
    Ok(())
}

/// The core's side of the reads: what it asked for, and what came back.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// Asked and not answered yet; `true` once handed to the readers.
    inflight: FxHashMap<Need, bool>,
    /// Asked during the current step, to hand to the readers after its
    /// commit (so that they read what the commit wrote).
    wanted: Vec<Need>,
    /// Answers waiting for the request that asked (taken once).
    answers: FxHashMap<Need, Result<Answer, StorageError>>,
    /// Reads handed out before a write they may miss (a user's
    /// membership, a device's publish): their answers are dropped and
    /// read again.
    stale: FxHashSet<Need>,
}

impl Reads {
    /// The answer to `need` if it came, taken; otherwise asks for it (once)
    /// and returns `None`.
    pub(crate) fn take(&mut self, need: Need) -> Option<Result<Answer, StorageError>> {
        if let Some(answer) = self.answers.remove(&need) {
            return Some(answer);
        }
        if !self.inflight.contains_key(&need) {
            self.inflight.insert(need.clone(), false);
            self.wanted.push(need);
        }
        None
    }

    /// Hands the reads asked for to the readers.
    pub(crate) fn take_wanted(&mut self) -> Vec<Need> {
        for need in &self.wanted {
            self.inflight.insert(need.clone(), true);
        }
        std::mem::take(&mut self.wanted)
    }

    /// Files an answer. A user's room count that may miss a change is
    /// asked for again instead.
    pub(crate) fn supply(&mut self, loaded: Loaded) {
        self.inflight.remove(&loaded.need);
        if !self.stale.is_empty() && self.stale.remove(&loaded.need) {
            self.take(loaded.need);
            return;
        }
        self.answers.insert(loaded.need, loaded.answer);
    }

    /// Something `need` reads is about to change (staged in this step): an
    /// answer here, or a read already handed out, may miss it. The answer
    /// is dropped and read again (after this step's commit).
    fn written(&mut self, need: Need) {
        if self.inflight.get(&need) == Some(&true) {
            self.stale.insert(need.clone());
        }
        if self.answers.remove(&need).is_some() {
            self.take(need);
        }
    }

    /// A membership of `user` changed: a count of theirs already handed
    /// to the readers, or come back, may miss it.
    pub(crate) fn membership_changed(&mut self, user: &UserId) {
        self.written(Need::Joined(user.clone()));
    }

    /// A publish of `sender` with `client_msg_id` in `room` is staged: its
    /// device's mark and its index entry change.
    pub(crate) fn publish_staged(&mut self, room: &RoomId, sender: &Arc<str>, client_msg_id: u64) {
        // The common case: nothing asked, nothing waiting.
        if self.inflight.is_empty() && self.answers.is_empty() {
            return;
        }
        self.written(Need::Mark(sender.clone()));
        self.written(Need::Original {
            room: room.clone(),
            sender: sender.clone(),
            client_msg_id,
        });
    }

    /// A commit failed, perhaps after the engine wrote part of it: every
    /// room count being read may have seen it or not.
    pub(crate) fn commit_failed(&mut self) {
        for (need, handed) in &self.inflight {
            if let (Need::Joined(_), true) = (need, handed) {
                self.stale.insert(need.clone());
            }
        }
        self.answers
            .retain(|need, _| !matches!(need, Need::Joined(_)));
    }

    /// Forgets answers nobody waits for any more (called when no request
    /// is parked).
    pub(crate) fn clear_answers(&mut self) {
        self.answers.clear();
    }

    /// Gives back the memory a burst of reads left in its tables.
    pub(crate) fn shrink(&mut self) {
        self.inflight.shrink_to_fit();
        self.wanted.shrink_to_fit();
        self.answers.shrink_to_fit();
        self.stale.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(room: &RoomId, sender: &Arc<str>, id: u64) -> Need {
        Need::Original {
            room: room.clone(),
            sender: sender.clone(),
            client_msg_id: id,
        }
    }

    #[test]
    fn a_staged_publish_drops_what_was_read_before_it() {
        let room = RoomId::new("r").expect("id");
        let sender: Arc<str> = Arc::from("u\0d");
        let mut reads = Reads::default();
        // Asked, handed out, answered, then the publish is staged before
        // anyone takes the answer.
        assert!(reads.take(original(&room, &sender, 3)).is_none());
        assert!(reads.take(Need::Mark(sender.clone())).is_none());
        assert_eq!(reads.take_wanted().len(), 2);
        reads.supply(Loaded {
            need: original(&room, &sender, 3),
            answer: Ok(Answer::Original(None)),
        });
        reads.publish_staged(&room, &sender, 3);
        assert!(
            reads.take(original(&room, &sender, 3)).is_none(),
            "the old answer is dropped"
        );
        // The mark was being read when the publish was staged: its answer
        // is dropped when it comes, and read again.
        reads.supply(Loaded {
            need: Need::Mark(sender.clone()),
            answer: Ok(Answer::Mark(0)),
        });
        assert!(reads.take(Need::Mark(sender.clone())).is_none());
        let again = reads.take_wanted();
        assert!(again.contains(&Need::Mark(sender.clone())));
        assert!(again.contains(&original(&room, &sender, 3)));
        // Answers read after the commit stand.
        reads.supply(Loaded {
            need: Need::Mark(sender.clone()),
            answer: Ok(Answer::Mark(3)),
        });
        assert!(matches!(
            reads.take(Need::Mark(sender.clone())),
            Some(Ok(Answer::Mark(3)))
        ));
        // Another id or room is untouched.
        let other = original(&room, &sender, 4);
        assert!(reads.take(other.clone()).is_none());
        reads.take_wanted();
        reads.supply(Loaded {
            need: other.clone(),
            answer: Ok(Answer::Original(None)),
        });
        reads.publish_staged(&room, &sender, 5);
        assert!(reads.take(other).is_some());
    }
}
